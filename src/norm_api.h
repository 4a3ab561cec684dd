/* ======================================================================
   norms
   ====================================================================== */

/* y = (x - mean) * rstd * gamma + beta per row; mean, rstd: [rows] or NULL.
   gamma NULL means ones, beta NULL zeros. Biased variance, computed stably. */
MLKERN_DEF mlk_status mlk_layernorm_fwd(int rows, int dim, const float *x,
    const float *gamma, const float *beta, float eps,
    float *y, float *mean, float *rstd);
/* Recomputes x-hat from x, mean, rstd. dgamma/dbeta: [dim] or NULL. */
MLKERN_DEF mlk_status mlk_layernorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *mean, const float *rstd,
    const float *dy, float *dx, float *dgamma, float *dbeta);
/* y = x * rstd * gamma, rstd = 1 / sqrt(mean(x^2) + eps). */
MLKERN_DEF mlk_status mlk_rmsnorm_fwd(int rows, int dim, const float *x,
    const float *gamma, float eps, float *y, float *rstd);
MLKERN_DEF mlk_status mlk_rmsnorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *rstd, const float *dy,
    float *dx, float *dgamma);

/* ======================================================================
   norms
   ====================================================================== */

/* Layer norm over the last dimension of x [rows, dim]:
   y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps), biased
   variance as PyTorch, computed stably (a mean of 1e4 with a spread of 1e-2
   normalises to full precision). gamma NULL means ones, beta NULL zeros;
   mean / rstd [rows] are the cache for the backward pass, NULL to skip. */
MLKERN_DEF mlk_status mlk_layernorm_fwd(int rows, int dim, const float *x,
    const float *gamma, const float *beta, float eps,
    float *y, float *mean, float *rstd);
/* Gradients of layer norm from x, the forward's mean/rstd cache and dy:
   dx [rows, dim], dgamma / dbeta [dim] (NULL when frozen). dgamma/dbeta are
   summed over fixed chunks of rows: bitwise the same for any thread count. */
MLKERN_DEF mlk_status mlk_layernorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *mean, const float *rstd,
    const float *dy, float *dx, float *dgamma, float *dbeta);
/* RMS norm: y = x * rstd * gamma, rstd = 1 / sqrt(mean(x^2) + eps).
   gamma NULL means ones; rstd [rows] or NULL. */
MLKERN_DEF mlk_status mlk_rmsnorm_fwd(int rows, int dim, const float *x,
    const float *gamma, float eps, float *y, float *rstd);
/* Gradients of RMS norm from x, the forward's rstd and dy; dgamma may be NULL. */
MLKERN_DEF mlk_status mlk_rmsnorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *rstd, const float *dy,
    float *dx, float *dgamma);

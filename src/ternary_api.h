/* ======================================================================
   ternary (BitNet b1.58)
   ====================================================================== */

/* Packed ternary weights. A weight matrix is [rows, cols] (out x in, like
   nn.Linear). Each row takes mlk_ternary_row_bytes(cols) = ceil(cols / 4)
   bytes; weight (r, c) sits in byte r * row_bytes + c / 4 at bits
   2 * (c % 4) .. 2 * (c % 4) + 1, as the code q + 1: 0 = -1, 1 = 0, 2 = +1.
   Padding weights of the last byte are code 1 (zero); code 3 is invalid.
   A weight's value is scale * q with one float scale per matrix. */
#define MLK_TERNARY_EPS 1e-5f       /* smallest absmean scale */
#define MLK_TERNARY_MAX_K (1 << 22) /* longest dot product: int32 sums stay exact */

/* Bytes of one packed row: ceil(cols / 4); 0 when cols < 1. */
MLKERN_DEF size_t mlk_ternary_row_bytes(int cols);

/* Absmean quantisation: s = max(mean|w|, MLK_TERNARY_EPS) over the whole
   matrix (summed in double), q = clamp(round(w / s), -1, 1) rounding half away from zero on the
   exact quotient (q = sign(w) when |w| >= s / 2). torch.round would round
   half to even; the two differ only for |w| == s / 2 exactly. packed:
   rows * row_bytes; *scale = s. A NaN or infinite weight is MLK_ERR_VALUE. */
MLKERN_DEF mlk_status mlk_ternary_quant(int rows, int cols, const float *w,
    uint8_t *packed, float *scale);
/* Unpacks: w[r, c] = scale * q. A code 3 anywhere is MLK_ERR_VALUE. */
MLKERN_DEF mlk_status mlk_ternary_dequant(int rows, int cols, const uint8_t *packed,
    float scale, float *w);

/* Per-row absmax quantisation: xscale[r] = max|x[r, :]| / 127 and
   xq = round(x * (127 / max|x|)) rounding half away from zero, so codes are
   in [-127, 127]. A zero row gets xscale 0 and codes 0. NaN or infinite
   inputs are MLK_ERR_VALUE. */
MLKERN_DEF mlk_status mlk_act_quant_i8(int rows, int cols, const float *x,
    int8_t *xq, float *xscale);

/* y[i, j] = (xscale[i] * wscale) * sum_c xq[i, c] * q[j, c] with the sum
   exact in int32; xq [m, k], wpacked [n, row_bytes(k)], y [m, n]. Any
   m, n >= 1 and 1 <= k <= MLK_TERNARY_MAX_K (else MLK_ERR_SHAPE /
   MLK_ERR_OVERFLOW); xq may hold -128. The AVX2 path multiplies the 2-bit
   codes as bytes (never as floats) and allocates about m * k bytes per
   call for reordered activations; threads split the output columns. */
MLKERN_DEF mlk_status mlk_ternary_gemm(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y);

/* BitLinear for training, with fp32 latent weights w [n, k] and no bias:
   y [m, n] = x^ * W^T with x^ = act_quant_i8(x) dequantised and W^ =
   ternary_quant(w) dequantised. The forward runs the inference path
   (mlk_act_quant_i8, mlk_ternary_quant, mlk_ternary_gemm), so a trained
   model gives the same logits deployed. */
MLKERN_DEF mlk_status mlk_bitlinear_fwd(int m, int n, int k, const float *x,
    const float *w, float *y);
/* Straight-through estimator: the quantisers count as the identity, so
   dx [m, k] = dy * W^ and dw [n, k] = dy^T * x^ (x^, W^ recomputed from x
   and w, float matmuls through mlk_sgemm). dx or dw may be NULL. */
MLKERN_DEF mlk_status mlk_bitlinear_bwd(int m, int n, int k, const float *x,
    const float *w, const float *dy, float *dx, float *dw);

/* AdamW hyper-parameters (PyTorch's defaults: 1e-3, 0.9, 0.999, 1e-8, 1e-2). */
typedef struct mlk_adamw_config {
    float lr, beta1, beta2, eps, weight_decay;
} mlk_adamw_config;
/* One AdamW step on n parameters, as PyTorch's: p *= 1 - lr * wd
   (decoupled decay), m = beta1 m + (1 - beta1) g, v = beta2 v +
   (1 - beta2) g^2, p -= lr / (1 - beta1^t) * m /
   (sqrt(v) / sqrt(1 - beta2^t) + eps). step t >= 1 counts from 1; m and v
   start at zero. lr, eps, wd >= 0 and betas in [0, 1) (else MLK_ERR_ARG). */
MLKERN_DEF mlk_status mlk_adamw_step(int n, float *param, const float *grad,
    float *m, float *v, const mlk_adamw_config *cfg, int step);

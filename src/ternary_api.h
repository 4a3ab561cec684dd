/* ======================================================================
   ternary (BitNet b1.58)
   ====================================================================== */

MLKERN_DEF mlk_status mlk_ternary_quant(int rows, int cols, const float *w,
    uint8_t *packed, float *scale);
MLKERN_DEF mlk_status mlk_act_quant_i8(int rows, int cols, const float *x,
    int8_t *xq, float *xscale);
MLKERN_DEF mlk_status mlk_ternary_gemm(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y);

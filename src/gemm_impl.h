/* ======================================================================
   gemm (placeholder: correct, slow; the packed SIMD version replaces it)
   ====================================================================== */

MLKERN_DEF mlk_status mlk_sgemm(int trans_a, int trans_b, int m, int n, int k,
                                float alpha, const float *a, int lda,
                                const float *b, int ldb, float beta, float *c, int ldc)
{
    int i, j, p;
    if (m < 0 || n < 0 || k < 0) return MLK_ERR_SHAPE;
    if (m == 0 || n == 0) return MLK_OK;
    if (!c || (k > 0 && (!a || !b))) return MLK_ERR_NULL;
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) {
            float acc = 0;
            for (p = 0; p < k; p++) {
                float av = trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                float bv = trans_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                acc += av * bv;
            }
            c[(size_t)i * ldc + j] = alpha * acc + (beta == 0 ? 0 : beta * c[(size_t)i * ldc + j]);
        }
    return MLK_OK;
}

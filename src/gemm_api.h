/* ======================================================================
   gemm
   ====================================================================== */

/* Row-major C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T
   (trans_a / trans_b non-zero). op(A) is m x k, op(B) k x n, C m x n.
   beta == 0: C is not read (NaNs in C do not propagate). m or n == 0 is a
   no-op and k == 0 gives C = beta * C, as BLAS. */
MLKERN_DEF mlk_status mlk_sgemm(int trans_a, int trans_b, int m, int n, int k,
                                float alpha, const float *a, int lda,
                                const float *b, int ldb, float beta, float *c, int ldc);

/* ======================================================================
   gemm
   ====================================================================== */

/* Row-major C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T
   (trans_a / trans_b non-zero). op(A) is m x k, op(B) k x n, C m x n; lda,
   ldb, ldc are the row strides of A, B, C as stored (lda >= k, or >= m when
   transposed; ldb >= n, or >= k when transposed; ldc >= n; all >= 1).
   beta == 0: C is not read (NaNs in C do not propagate). m or n == 0 is a
   no-op; k == 0 or alpha == 0 gives C = beta * C without reading A or B, as
   BLAS. Negative sizes or a leading dimension too small: MLK_ERR_SHAPE;
   NULL a, b (when k > 0) or c: MLK_ERR_NULL; pack buffers: MLK_ERR_NOMEM.
   m <= 8 (decode) skips packing and reads B once, in place; it allocates
   only when both are transposed (a copy of op(A)). Bitwise identical
   results for any OpenMP thread count. */
MLKERN_DEF mlk_status mlk_sgemm(int trans_a, int trans_b, int m, int n, int k,
                                float alpha, const float *a, int lda,
                                const float *b, int ldb, float beta, float *c, int ldc);

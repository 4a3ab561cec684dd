/* ======================================================================
   gemm
   ====================================================================== */

/* BLIS/GotoBLAS structure: for each NC-wide column panel and KC-deep slice
   of k, op(B) is packed into NR-wide micro-panels, each MC-row block of op(A)
   into MR-high micro-panels, and a register-tiled MR x NR micro-kernel
   streams both from cache. Packing zero-pads the edges and absorbs
   transposes and leading dimensions, so the micro-kernel sees one layout.
   Threads each take a contiguous share of C's columns (or rows) and run the
   whole loop nest on it with private pack buffers: no barriers, and no
   packed panel bouncing between cores' caches. Every C element accumulates
   over k in the same order whatever the blocking of m and n, and only KC (a
   constant) splits k: results are bitwise identical for any thread count.

   Internal entry for other sections (attention tiles, the ternary trainer),
   callable inside their own parallel regions, single-threaded, no allocation,
   no validation:
       size_t mlk__sgemm_scratch_size(int m, int n, int k);      bytes
       void   mlk__sgemm_serial(trans_a, trans_b, m, n, k, alpha, a, lda,
                                b, ldb, beta, c, ldc, float *scratch);
   Same math as mlk_sgemm (the small-m path included) and bitwise the same
   result; scratch holds mlk__sgemm_scratch_size(m, n, k) bytes, any float
   alignment (64 is best). */

enum {
    MLK__GEMM_MR = 6,    /* micro-tile rows: 6 x 2 ymm accumulators */
    MLK__GEMM_NR = 16,   /* micro-tile columns */
    MLK__GEMM_KC = 256,  /* k slice: fixes the summation order, keep constant */
    MLK__GEMM_MC = 144,  /* rows of A per packed block (L2) */
    MLK__GEMM_NC = 4096  /* columns of B per packed panel (L3) */
};

/* op(A) element (i, p) is a[i * a_rs + p * a_cs]; op(B) element (p, j) is
   b[p * b_rs + j * b_cs]. */
typedef struct mlk__gemm_args {
    int m, n, k;
    float alpha, beta;
    const float *a, *b;
    size_t a_rs, a_cs, b_rs, b_cs;
    float *c;
    size_t ldc;
} mlk__gemm_args;

static mlk__gemm_args mlk__gemm_make_args(int trans_a, int trans_b, int m, int n, int k,
                                          float alpha, const float *a, int lda,
                                          const float *b, int ldb, float beta, float *c, int ldc)
{
    mlk__gemm_args g;
    g.m = m; g.n = n; g.k = k;
    g.alpha = alpha; g.beta = beta;
    g.a = a; g.b = b; g.c = c;
    g.a_rs = trans_a ? 1 : (size_t)lda;
    g.a_cs = trans_a ? (size_t)lda : 1;
    g.b_rs = trans_b ? 1 : (size_t)ldb;
    g.b_cs = trans_b ? (size_t)ldb : 1;
    g.ldc = (size_t)ldc;
    return g;
}

static int mlk__gemm_min(int x, int y) { return x < y ? x : y; }
static int mlk__gemm_ceil_div(int x, int y) { return x / y + (x % y != 0); }

/* Packs `width` (<= pad) lines of kc values into dst[p * pad + w], zeros in
   lines width..pad-1. Line w, step p reads src[w * w_stride + p * k_stride]:
   an MR-row sliver of op(A) or an NR-column sliver of op(B). */
static void mlk__gemm_pack_sliver(const float *src, size_t w_stride, size_t k_stride,
                                  int width, int pad, int kc, float *dst)
{
    for (int p = 0; p < kc; p++) {
        const float *s = src + (size_t)p * k_stride;
        float *d = dst + (size_t)p * pad;
        int w = 0;
        if (w_stride == 1)
            for (; w < width; w++) d[w] = s[w];
        else
            for (; w < width; w++) d[w] = s[(size_t)w * w_stride];
        for (; w < pad; w++) d[w] = 0.0f;
    }
}

/* C[MR x NR] = alpha * (A sliver . B sliver) + beta * C over kc steps;
   beta == 0 never reads C. ap: kc x MR, bp: kc x NR (packed). */
#if defined(MLK__AVX2)
static void mlk__gemm_micro(int kc, const float *ap, const float *bp, float *c, size_t ldc,
                            float alpha, float beta)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    __m256 acc[12];
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int r = 0; r < MLK__GEMM_MR; r++) { /* the C tile arrives while k runs */
        _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + (size_t)r * ldc + MLK__GEMM_NR - 1), _MM_HINT_T0);
    }
    for (int p = 0; p < kc; p++) {
        const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        __m256 a;
        a = _mm256_broadcast_ss(ap + 0);
        c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(ap + 1);
        c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(ap + 2);
        c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(ap + 3);
        c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(ap + 4);
        c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(ap + 5);
        c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
        ap += MLK__GEMM_MR;
        bp += MLK__GEMM_NR;
    }
    acc[0] = c00; acc[1] = c01; acc[2] = c10; acc[3] = c11; acc[4] = c20; acc[5] = c21;
    acc[6] = c30; acc[7] = c31; acc[8] = c40; acc[9] = c41; acc[10] = c50; acc[11] = c51;
    for (int r = 0; r < MLK__GEMM_MR; r++) {
        float *cr = c + (size_t)r * ldc;
        __m256 lo = _mm256_mul_ps(va, acc[2 * r]), hi = _mm256_mul_ps(va, acc[2 * r + 1]);
        if (beta != 0.0f) {
            lo = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), lo);
            hi = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), hi);
        }
        _mm256_storeu_ps(cr, lo);
        _mm256_storeu_ps(cr + 8, hi);
    }
}
#else
static void mlk__gemm_micro(int kc, const float *ap, const float *bp, float *c, size_t ldc,
                            float alpha, float beta)
{
    float acc[MLK__GEMM_MR * MLK__GEMM_NR];
    memset(acc, 0, sizeof acc);
    for (int p = 0; p < kc; p++) {
        for (int r = 0; r < MLK__GEMM_MR; r++) {
            const float a_rp = ap[r];
            for (int j = 0; j < MLK__GEMM_NR; j++) acc[r * MLK__GEMM_NR + j] += a_rp * bp[j];
        }
        ap += MLK__GEMM_MR;
        bp += MLK__GEMM_NR;
    }
    for (int r = 0; r < MLK__GEMM_MR; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int j = 0; j < MLK__GEMM_NR; j++) {
            const float ab = alpha * acc[r * MLK__GEMM_NR + j];
            cr[j] = beta != 0.0f ? ab + beta * cr[j] : ab;
        }
    }
}
#endif

/* One rows x cols (<= MR x NR) tile of C; edge tiles go through a full-size
   staging tile so they get exactly the arithmetic of interior ones. */
static void mlk__gemm_tile(int kc, const float *ap, const float *bp, float *c, size_t ldc,
                           int rows, int cols, float alpha, float beta)
{
    float stage[MLK__GEMM_MR * MLK__GEMM_NR];
    if (rows == MLK__GEMM_MR && cols == MLK__GEMM_NR) {
        mlk__gemm_micro(kc, ap, bp, c, ldc, alpha, beta);
        return;
    }
    if (beta != 0.0f) {
        memset(stage, 0, sizeof stage);
        for (int r = 0; r < rows; r++)
            memcpy(stage + r * MLK__GEMM_NR, c + (size_t)r * ldc, (size_t)cols * sizeof(float));
    }
    mlk__gemm_micro(kc, ap, bp, stage, MLK__GEMM_NR, alpha, beta);
    for (int r = 0; r < rows; r++)
        memcpy(c + (size_t)r * ldc, stage + r * MLK__GEMM_NR, (size_t)cols * sizeof(float));
}

/* C = beta * C (k == 0 or alpha == 0: A and B are not read, as BLAS). */
static void mlk__gemm_scale_c(int m, int n, float beta, float *c, size_t ldc)
{
    for (int i = 0; i < m; i++) {
        float *ci = c + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(ci, 0, (size_t)n * sizeof(float));
        else
            for (int j = 0; j < n; j++) ci[j] *= beta;
    }
}

/* The five loops, one thread: C = alpha op(A) op(B) + beta C with m, n, k > 0.
   b_pack holds a KC x NC panel, a_pack an MC x KC block. */
static void mlk__gemm_blocked(const mlk__gemm_args *g, float *b_pack, float *a_pack)
{
    int nc, kc, mc; /* loops step by these: jc += NC could overflow near INT_MAX */
    for (int jc = 0; jc < g->n; jc += nc) {
        nc = mlk__gemm_min(MLK__GEMM_NC, g->n - jc);
        for (int pc = 0; pc < g->k; pc += kc) {
            const float beta = pc == 0 ? g->beta : 1.0f;
            kc = mlk__gemm_min(MLK__GEMM_KC, g->k - pc);
            for (int j0 = 0; j0 < nc; j0 += MLK__GEMM_NR)
                mlk__gemm_pack_sliver(g->b + (size_t)pc * g->b_rs + (size_t)(jc + j0) * g->b_cs,
                                      g->b_cs, g->b_rs, mlk__gemm_min(MLK__GEMM_NR, nc - j0),
                                      MLK__GEMM_NR, kc, b_pack + (size_t)j0 * kc);
            for (int ic = 0; ic < g->m; ic += mc) {
                mc = mlk__gemm_min(MLK__GEMM_MC, g->m - ic);
                for (int ir = 0; ir < mc; ir += MLK__GEMM_MR)
                    mlk__gemm_pack_sliver(g->a + (size_t)(ic + ir) * g->a_rs + (size_t)pc * g->a_cs,
                                          g->a_rs, g->a_cs, mlk__gemm_min(MLK__GEMM_MR, mc - ir),
                                          MLK__GEMM_MR, kc, a_pack + (size_t)ir * kc);
                for (int j0 = 0; j0 < nc; j0 += MLK__GEMM_NR) /* B sliver stays in L1 */
                    for (int ir = 0; ir < mc; ir += MLK__GEMM_MR)
                        mlk__gemm_tile(kc, a_pack + (size_t)ir * kc, b_pack + (size_t)j0 * kc,
                                       g->c + (size_t)(ic + ir) * g->ldc + (size_t)(jc + j0), g->ldc,
                                       mlk__gemm_min(MLK__GEMM_MR, mc - ir),
                                       mlk__gemm_min(MLK__GEMM_NR, nc - j0), g->alpha, beta);
            }
        }
    }
}

/* The small-m path (decode: m = 1..MLK__GEMV_MAX_M rows of op(A)). Packing
   B costs as much as the whole product here, so op(B) is read once, straight
   from the caller's array, and each thread takes a contiguous run of C's
   columns. trans_b = 1 (B is a Linear weight [n, k]): each C element is a dot
   product of an A row with a B row, 8 B rows at a time in 8 accumulators,
   each summing 8 lanes over k (lane l takes p = l mod 8) then the lanes
   (the scalar build: in k order). trans_b = 0: C rows accumulate
   x[p] * B[p, :] for p = 0..k-1 in order in an L1-resident row buffer.
   Either order depends on k only, never on m or the thread split; it
   differs from the packed path's (256-deep k slices). */
enum {
    MLK__GEMV_MAX_M = 8,  /* m up to this takes the small path: 1.4-2x the packed
                             path at m = 8, even with it at m = 16-18 (1 thread) */
    MLK__GEMV_ROWS = 8,   /* B rows per dot block; columns per thread share */
    MLK__GEMV_ACC = 4096, /* floats of the L1 accumulator (trans_b = 0): m rows of C chunks */
    MLK__GEMV_PARALLEL = 1 << 15 /* n * k from which threads share the columns */
};

#if defined(MLK__AVX2)
/* Lanes 0..count-1 set: loads of a row's last (k mod 8) values, which read
   nothing past the row. */
static __m256i mlk__gemv_tail_mask(int count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* dots[r] = sum_p x[p] * w[r * ldw + p] for r < rows (1..8); rows past the
   last repeat it so that every B row gets the same arithmetic. */
static void mlk__gemv_dot8(int k, const float *x, const float *w, size_t ldw, int rows, float *dots)
{
    const float *w0 = w, *w1 = w + (size_t)mlk__gemm_min(1, rows - 1) * ldw;
    const float *w2 = w + (size_t)mlk__gemm_min(2, rows - 1) * ldw, *w3 = w + (size_t)mlk__gemm_min(3, rows - 1) * ldw;
    const float *w4 = w + (size_t)mlk__gemm_min(4, rows - 1) * ldw, *w5 = w + (size_t)mlk__gemm_min(5, rows - 1) * ldw;
    const float *w6 = w + (size_t)mlk__gemm_min(6, rows - 1) * ldw, *w7 = w + (size_t)mlk__gemm_min(7, rows - 1) * ldw;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    __m256 s4 = _mm256_setzero_ps(), s5 = _mm256_setzero_ps(), s6 = _mm256_setzero_ps(), s7 = _mm256_setzero_ps();
    __m256 h01, h23, h45, h67, h0123, h4567;
    int p = 0;
    for (; p + 8 <= k; p += 8) {
        const __m256 xv = _mm256_loadu_ps(x + p);
        s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w0 + p), s0);
        s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w1 + p), s1);
        s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w2 + p), s2);
        s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w3 + p), s3);
        s4 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w4 + p), s4);
        s5 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w5 + p), s5);
        s6 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w6 + p), s6);
        s7 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w7 + p), s7);
    }
    if (p < k) { /* masked lanes load 0 from x and B: no NaN * 0 from the gap */
        const __m256i mask = mlk__gemv_tail_mask(k - p);
        const __m256 xv = _mm256_maskload_ps(x + p, mask);
        s0 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w0 + p, mask), s0);
        s1 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w1 + p, mask), s1);
        s2 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w2 + p, mask), s2);
        s3 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w3 + p, mask), s3);
        s4 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w4 + p, mask), s4);
        s5 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w5 + p, mask), s5);
        s6 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w6 + p, mask), s6);
        s7 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w7 + p, mask), s7);
    }
    /* transpose-and-add: lane r of the result is the lane sum of s_r */
    h01 = _mm256_hadd_ps(s0, s1);
    h23 = _mm256_hadd_ps(s2, s3);
    h45 = _mm256_hadd_ps(s4, s5);
    h67 = _mm256_hadd_ps(s6, s7);
    h0123 = _mm256_hadd_ps(h01, h23);
    h4567 = _mm256_hadd_ps(h45, h67);
    _mm256_storeu_ps(dots, _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                         _mm256_permute2f128_ps(h0123, h4567, 0x31)));
}

/* Two A rows against four B rows (rows 1..4, clamped as in dot8), each B
   load used twice: dots[r] for x0, dots[4 + r] for x1. Lanes and the final
   add tree as in dot8, so every output gets dot8's bits. */
static void mlk__gemv_dot4x2(int k, const float *x0, const float *x1, const float *w, size_t ldw,
                             int rows, float *dots)
{
    const float *w0 = w, *w1 = w + (size_t)mlk__gemm_min(1, rows - 1) * ldw;
    const float *w2 = w + (size_t)mlk__gemm_min(2, rows - 1) * ldw, *w3 = w + (size_t)mlk__gemm_min(3, rows - 1) * ldw;
    __m256 s00 = _mm256_setzero_ps(), s01 = _mm256_setzero_ps(), s02 = _mm256_setzero_ps(), s03 = _mm256_setzero_ps();
    __m256 s10 = _mm256_setzero_ps(), s11 = _mm256_setzero_ps(), s12 = _mm256_setzero_ps(), s13 = _mm256_setzero_ps();
    __m256 h0, h1;
    int p = 0;
    for (; p + 8 <= k; p += 8) {
        const __m256 xv0 = _mm256_loadu_ps(x0 + p), xv1 = _mm256_loadu_ps(x1 + p);
        __m256 wv;
        wv = _mm256_loadu_ps(w0 + p); s00 = _mm256_fmadd_ps(xv0, wv, s00); s10 = _mm256_fmadd_ps(xv1, wv, s10);
        wv = _mm256_loadu_ps(w1 + p); s01 = _mm256_fmadd_ps(xv0, wv, s01); s11 = _mm256_fmadd_ps(xv1, wv, s11);
        wv = _mm256_loadu_ps(w2 + p); s02 = _mm256_fmadd_ps(xv0, wv, s02); s12 = _mm256_fmadd_ps(xv1, wv, s12);
        wv = _mm256_loadu_ps(w3 + p); s03 = _mm256_fmadd_ps(xv0, wv, s03); s13 = _mm256_fmadd_ps(xv1, wv, s13);
    }
    if (p < k) {
        const __m256i mask = mlk__gemv_tail_mask(k - p);
        const __m256 xv0 = _mm256_maskload_ps(x0 + p, mask), xv1 = _mm256_maskload_ps(x1 + p, mask);
        __m256 wv;
        wv = _mm256_maskload_ps(w0 + p, mask); s00 = _mm256_fmadd_ps(xv0, wv, s00); s10 = _mm256_fmadd_ps(xv1, wv, s10);
        wv = _mm256_maskload_ps(w1 + p, mask); s01 = _mm256_fmadd_ps(xv0, wv, s01); s11 = _mm256_fmadd_ps(xv1, wv, s11);
        wv = _mm256_maskload_ps(w2 + p, mask); s02 = _mm256_fmadd_ps(xv0, wv, s02); s12 = _mm256_fmadd_ps(xv1, wv, s12);
        wv = _mm256_maskload_ps(w3 + p, mask); s03 = _mm256_fmadd_ps(xv0, wv, s03); s13 = _mm256_fmadd_ps(xv1, wv, s13);
    }
    h0 = _mm256_hadd_ps(_mm256_hadd_ps(s00, s01), _mm256_hadd_ps(s02, s03));
    h1 = _mm256_hadd_ps(_mm256_hadd_ps(s10, s11), _mm256_hadd_ps(s12, s13));
    _mm256_storeu_ps(dots, _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20),
                                         _mm256_permute2f128_ps(h0, h1, 0x31)));
}

/* acc[j] += x_p * b[j] for j < cols; acc holds cols rounded up to 8. */
static void mlk__gemv_axpy(int cols, float x_p, const float *b, float *acc)
{
    const __m256 xv = _mm256_set1_ps(x_p);
    int j = 0;
    for (; j + 8 <= cols; j += 8)
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(xv, _mm256_loadu_ps(b + j), _mm256_loadu_ps(acc + j)));
    if (j < cols)
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(xv, _mm256_maskload_ps(b + j, mlk__gemv_tail_mask(cols - j)),
                                                  _mm256_loadu_ps(acc + j)));
}

/* Four B rows (b, b + ldb, ...) at once, one acc load and store for four
   FMAs, summed in row order: exactly four mlk__gemv_axpy calls. */
static void mlk__gemv_axpy4(int cols, const float *x4, const float *b, size_t ldb, float *acc)
{
    const __m256 x0 = _mm256_set1_ps(x4[0]), x1 = _mm256_set1_ps(x4[1]);
    const __m256 x2 = _mm256_set1_ps(x4[2]), x3 = _mm256_set1_ps(x4[3]);
    const float *b1 = b + ldb, *b2 = b + 2 * ldb, *b3 = b + 3 * ldb;
    int j = 0;
    for (; j + 8 <= cols; j += 8) {
        __m256 a = _mm256_loadu_ps(acc + j);
        a = _mm256_fmadd_ps(x0, _mm256_loadu_ps(b + j), a);
        a = _mm256_fmadd_ps(x1, _mm256_loadu_ps(b1 + j), a);
        a = _mm256_fmadd_ps(x2, _mm256_loadu_ps(b2 + j), a);
        a = _mm256_fmadd_ps(x3, _mm256_loadu_ps(b3 + j), a);
        _mm256_storeu_ps(acc + j, a);
    }
    if (j < cols) {
        const __m256i mask = mlk__gemv_tail_mask(cols - j);
        __m256 a = _mm256_loadu_ps(acc + j);
        a = _mm256_fmadd_ps(x0, _mm256_maskload_ps(b + j, mask), a);
        a = _mm256_fmadd_ps(x1, _mm256_maskload_ps(b1 + j, mask), a);
        a = _mm256_fmadd_ps(x2, _mm256_maskload_ps(b2 + j, mask), a);
        a = _mm256_fmadd_ps(x3, _mm256_maskload_ps(b3 + j, mask), a);
        _mm256_storeu_ps(acc + j, a);
    }
}
#else
static void mlk__gemv_dot8(int k, const float *x, const float *w, size_t ldw, int rows, float *dots)
{
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (size_t)r * ldw;
        float dot = 0.0f;
        for (int p = 0; p < k; p++) dot += x[p] * wr[p];
        dots[r] = dot;
    }
}

static void mlk__gemv_dot4x2(int k, const float *x0, const float *x1, const float *w, size_t ldw,
                             int rows, float *dots)
{
    mlk__gemv_dot8(k, x0, w, ldw, rows, dots);
    mlk__gemv_dot8(k, x1, w, ldw, rows, dots + 4);
}

static void mlk__gemv_axpy(int cols, float x_p, const float *b, float *acc)
{
    for (int j = 0; j < cols; j++) acc[j] += x_p * b[j];
}

static void mlk__gemv_axpy4(int cols, const float *x4, const float *b, size_t ldb, float *acc)
{
    for (int r = 0; r < 4; r++) mlk__gemv_axpy(cols, x4[r], b + (size_t)r * ldb, acc);
}
#endif

/* C[i, j] = alpha * sum[j] + beta * C[i, j] for one row run (beta == 0:
   C is not read). */
static void mlk__gemv_store(int cols, const float *sum, float alpha, float beta, float *c)
{
    for (int j = 0; j < cols; j++) c[j] = beta != 0.0f ? alpha * sum[j] + beta * c[j] : alpha * sum[j];
}

/* Columns [j0, j0 + cols) of C on the small path. trans_b = 1 needs op(A)'s
   rows contiguous (a_cs == 1); trans_b = 0 reads A through its strides. */
static void mlk__gemv_part(const mlk__gemm_args *g, int j0, int cols)
{
    if (g->b_rs == 1) { /* op(B)'s columns are contiguous: B^T (or one column) */
        float dots[8];
        for (int jb = 0; jb < cols; jb += MLK__GEMV_ROWS) {
            const int rows = mlk__gemm_min(MLK__GEMV_ROWS, cols - jb);
            const float *w = g->b + (size_t)(j0 + jb) * g->b_cs;
            float *c_jb = g->c + (size_t)(j0 + jb);
            int i = 0;
            for (; i + 2 <= g->m; i += 2) /* A rows in pairs; the B rows stay in L1/L2 */
                for (int half = 0; half < rows; half += 4) {
                    const int rows4 = mlk__gemm_min(4, rows - half);
                    mlk__gemv_dot4x2(g->k, g->a + (size_t)i * g->a_rs, g->a + (size_t)(i + 1) * g->a_rs,
                                     w + (size_t)half * g->b_cs, g->b_cs, rows4, dots);
                    mlk__gemv_store(rows4, dots, g->alpha, g->beta, c_jb + (size_t)i * g->ldc + half);
                    mlk__gemv_store(rows4, dots + 4, g->alpha, g->beta, c_jb + (size_t)(i + 1) * g->ldc + half);
                }
            if (i < g->m) {
                mlk__gemv_dot8(g->k, g->a + (size_t)i * g->a_rs, w, g->b_cs, rows, dots);
                mlk__gemv_store(rows, dots, g->alpha, g->beta, c_jb + (size_t)i * g->ldc);
            }
        }
    } else {
        /* chunks as wide as the accumulator allows: long runs of each B row
           keep the hardware prefetcher streaming */
        float acc[MLK__GEMV_ACC];
        const int chunk = MLK__GEMV_ACC / g->m / 8 * 8;
        for (int jc = 0; jc < cols; jc += chunk) {
            const int nb = mlk__gemm_min(chunk, cols - jc);
            memset(acc, 0, sizeof acc);
            int p = 0;
            for (; p + 4 <= g->k; p += 4) { /* B rows p..p+3, read once for all A rows */
                const float *b_rows = g->b + (size_t)p * g->b_rs + (size_t)(j0 + jc);
                for (int i = 0; i < g->m; i++) {
                    const float *a_i = g->a + (size_t)i * g->a_rs + (size_t)p * g->a_cs;
                    float x4[4];
                    for (int r = 0; r < 4; r++) x4[r] = a_i[(size_t)r * g->a_cs];
                    mlk__gemv_axpy4(nb, x4, b_rows, g->b_rs, acc + i * chunk);
                }
            }
            for (; p < g->k; p++) {
                const float *b_row = g->b + (size_t)p * g->b_rs + (size_t)(j0 + jc);
                for (int i = 0; i < g->m; i++)
                    mlk__gemv_axpy(nb, g->a[(size_t)i * g->a_rs + (size_t)p * g->a_cs], b_row, acc + i * chunk);
            }
            for (int i = 0; i < g->m; i++)
                mlk__gemv_store(nb, acc + i * chunk, g->alpha, g->beta, g->c + (size_t)i * g->ldc + (size_t)(j0 + jc));
        }
    }
}

/* Whether the dot products need op(A) copied into contiguous rows first
   (trans_a with a stride): the floats of that copy, else 0. */
static size_t mlk__gemv_a_floats(const mlk__gemm_args *g)
{
    return g->b_rs == 1 && g->a_cs != 1 ? (size_t)g->m * (size_t)g->k : 0;
}

/* Copies op(A) into a_rows (m x k, contiguous) and points g at it. */
static void mlk__gemv_copy_a(mlk__gemm_args *g, float *a_rows)
{
    for (int i = 0; i < g->m; i++)
        for (int p = 0; p < g->k; p++)
            a_rows[(size_t)i * g->k + p] = g->a[(size_t)i * g->a_rs + (size_t)p * g->a_cs];
    g->a = a_rows;
    g->a_rs = (size_t)g->k;
    g->a_cs = 1;
}

/* Floats of the packed B panel and of one packed A block. */
static size_t mlk__gemm_b_floats(int n, int k)
{
    const int nc = mlk__gemm_min(n, MLK__GEMM_NC);
    return (size_t)mlk__gemm_min(k, MLK__GEMM_KC) * (size_t)(mlk__gemm_ceil_div(nc, MLK__GEMM_NR) * MLK__GEMM_NR);
}

static size_t mlk__gemm_a_floats(int m, int k)
{
    const int mc = mlk__gemm_min(m, MLK__GEMM_MC);
    return (size_t)mlk__gemm_min(k, MLK__GEMM_KC) * (size_t)(mlk__gemm_ceil_div(mc, MLK__GEMM_MR) * MLK__GEMM_MR);
}

MLK__MAYBE_UNUSED static size_t mlk__sgemm_scratch_size(int m, int n, int k)
{
    if (m <= 0 || n <= 0 || k <= 0) return 0;
    if (m <= MLK__GEMV_MAX_M) return (size_t)m * (size_t)k * sizeof(float); /* op(A) copy, at most */
    return (mlk__gemm_b_floats(n, k) + mlk__gemm_a_floats(m, k)) * sizeof(float);
}

MLK__MAYBE_UNUSED static void mlk__sgemm_serial(int trans_a, int trans_b, int m, int n, int k,
                                                float alpha, const float *a, int lda,
                                                const float *b, int ldb, float beta,
                                                float *c, int ldc, float *scratch)
{
    mlk__gemm_args g;
    if (m <= 0 || n <= 0) return;
    if (k <= 0 || alpha == 0.0f) {
        mlk__gemm_scale_c(m, n, beta, c, (size_t)ldc);
        return;
    }
    g = mlk__gemm_make_args(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (m <= MLK__GEMV_MAX_M) {
        if (mlk__gemv_a_floats(&g) > 0) mlk__gemv_copy_a(&g, scratch);
        mlk__gemv_part(&g, 0, n);
        return;
    }
    mlk__gemm_blocked(&g, scratch, scratch + mlk__gemm_b_floats(n, k));
}

/* Part i of `parts` of `size` elements cut at multiples of `tile`:
   [*start, *start + *len), parts balanced to within one tile. */
static void mlk__gemm_split(int size, int tile, int parts, int i, int *start, int *len)
{
    const long long tiles = mlk__gemm_ceil_div(size, tile);
    const long long t0 = tiles * i / parts, t1 = tiles * (i + 1) / parts;
    const long long end = t1 * tile < size ? t1 * tile : size;
    *start = (int)(t0 * tile);
    *len = (int)(end - t0 * tile);
}

/* Thread tid's share of C: contiguous micro-tile columns (rows when C is
   taller than wide, or when there are too few columns), balanced to one
   tile. Splitting along n keeps each thread's B panel half as big. */
static mlk__gemm_args mlk__gemm_thread_part(const mlk__gemm_args *g, int tid, int team)
{
    mlk__gemm_args part = *g;
    const int mt = mlk__gemm_ceil_div(g->m, MLK__GEMM_MR), nt = mlk__gemm_ceil_div(g->n, MLK__GEMM_NR);
    int by_cols = g->n >= g->m;
    if (by_cols && nt < team && mt > nt) by_cols = 0;
    if (!by_cols && mt < team && nt > mt) by_cols = 1;
    if (by_cols) {
        int j0;
        mlk__gemm_split(g->n, MLK__GEMM_NR, team, tid, &j0, &part.n);
        part.b = g->b + (size_t)j0 * g->b_cs;
        part.c = g->c + j0;
    } else {
        int i0;
        mlk__gemm_split(g->m, MLK__GEMM_MR, team, tid, &i0, &part.m);
        part.a = g->a + (size_t)i0 * g->a_rs;
        part.c = g->c + (size_t)i0 * g->ldc;
    }
    return part;
}

static int mlk__gemm_team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* The small-m path, threaded: fixed contiguous column runs, whole 8-column
   blocks each; one thread until B is big enough (MLK__GEMV_PARALLEL floats)
   to pay for waking the team. Allocates only for a strided op(A) copy. */
static mlk_status mlk__gemv(mlk__gemm_args g)
{
    const size_t a_floats = mlk__gemv_a_floats(&g);
    float *a_rows = NULL;
    if (a_floats > 0) {
        a_rows = (float *)mlk__alloc(a_floats * sizeof(float));
        if (!a_rows) return MLK_ERR_NOMEM;
        mlk__gemv_copy_a(&g, a_rows);
    }
    MLK__OMP(omp parallel if((size_t)g.n * (size_t)g.k >= MLK__GEMV_PARALLEL))
    {
        int j0, cols;
        mlk__gemm_split(g.n, MLK__GEMV_ROWS, mlk__gemm_team_size(), mlk__thread_id(), &j0, &cols);
        if (cols > 0) mlk__gemv_part(&g, j0, cols);
    }
    mlk__free(a_rows);
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_sgemm(int trans_a, int trans_b, int m, int n, int k,
                                float alpha, const float *a, int lda,
                                const float *b, int ldb, float beta, float *c, int ldc)
{
    const int a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
    const int a_rows = trans_a ? k : m, b_rows = trans_b ? n : k;
    size_t span, b_floats, a_floats;
    long long tiles;
    int nth;
    float *pack;
    mlk__gemm_args g;
    if (m < 0 || n < 0 || k < 0) return MLK_ERR_SHAPE;
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < (n > 1 ? n : 1))
        return MLK_ERR_SHAPE;
    if (m == 0 || n == 0) return MLK_OK;
    if (!c || (k > 0 && (!a || !b))) return MLK_ERR_NULL;
    /* every element offset (rows - 1) * ld + cols must fit size_t */
    if (!mlk__mul_ok((size_t)m, (size_t)ldc, &span) || !mlk__mul_ok(span, sizeof(float), &span) ||
        !mlk__mul_ok((size_t)a_rows, (size_t)lda, &span) || !mlk__mul_ok(span, sizeof(float), &span) ||
        !mlk__mul_ok((size_t)b_rows, (size_t)ldb, &span) || !mlk__mul_ok(span, sizeof(float), &span))
        return MLK_ERR_OVERFLOW;
    if (k == 0 || alpha == 0.0f) {
        mlk__gemm_scale_c(m, n, beta, c, (size_t)ldc);
        return MLK_OK;
    }
    g = mlk__gemm_make_args(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (m <= MLK__GEMV_MAX_M) return mlk__gemv(g);
    /* one thread for small products: the team costs more than it saves */
    nth = 2.0 * m * n * k < 4e6 ? 1 : mlk__max_threads();
    tiles = (long long)mlk__gemm_ceil_div(m, MLK__GEMM_MR) * mlk__gemm_ceil_div(n, MLK__GEMM_NR);
    if (tiles < nth) nth = (int)tiles;
    b_floats = mlk__gemm_b_floats(n, k);
    a_floats = mlk__gemm_a_floats(m, k);
    pack = (float *)mlk__alloc((size_t)nth * (b_floats + a_floats) * sizeof(float));
    if (!pack) return MLK_ERR_NOMEM;
    MLK__OMP(omp parallel num_threads(nth) if(nth > 1))
    {
        const int tid = mlk__thread_id();
        mlk__gemm_args part = mlk__gemm_thread_part(&g, tid, mlk__gemm_team_size());
        float *thread_pack = pack + (size_t)tid * (b_floats + a_floats);
        if (part.m > 0 && part.n > 0) mlk__gemm_blocked(&part, thread_pack, thread_pack + b_floats);
    }
    mlk__free(pack);
    return MLK_OK;
}

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
   Same math as mlk_sgemm and bitwise the same result; scratch holds
   mlk__sgemm_scratch_size(m, n, k) bytes, any float alignment (64 is best). */

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
    /* one thread for small products: the team costs more than it saves */
    nth = 2.0 * m * n * k < 4e6 ? 1 : mlk__max_threads();
    tiles = (long long)mlk__gemm_ceil_div(m, MLK__GEMM_MR) * mlk__gemm_ceil_div(n, MLK__GEMM_NR);
    if (tiles < nth) nth = (int)tiles;
    b_floats = mlk__gemm_b_floats(n, k);
    a_floats = mlk__gemm_a_floats(m, k);
    pack = (float *)mlk__alloc((size_t)nth * (b_floats + a_floats) * sizeof(float));
    if (!pack) return MLK_ERR_NOMEM;
    g = mlk__gemm_make_args(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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

/* gemm: mlk_sgemm against a naive double triple loop; error within 2x of a
   naive float32 loop's, plus a floor (mlkt.h's tolerance rule). */
#include <stdlib.h>

/* Allocation failures on demand, to test MLK_ERR_NOMEM. */
static int gemm_fail_allocs;
static void *gemm_malloc(size_t n) { return gemm_fail_allocs ? NULL : malloc(n); }
#define MLKERN_MALLOC(n) gemm_malloc(n)
#define MLKERN_FREE(p) free(p)

#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"

#include <float.h>

/* One problem: op(A) m x k, op(B) k x n, C m x n, each stored with its
   leading dimension; the gaps past the logical columns hold NaN (A, B: must
   never be read) or a sentinel (C: must never be written). */
typedef struct gemm_problem {
    int ta, tb, m, n, k, lda, ldb, ldc;
    float alpha, beta;
    float *a, *b, *c0; /* inputs; c0 = C before the call */
} gemm_problem;

static const float c_gap = 12345.0f;

static size_t rows_a(const gemm_problem *p) { return (size_t)(p->ta ? p->k : p->m); }
static size_t rows_b(const gemm_problem *p) { return (size_t)(p->tb ? p->n : p->k); }
static int cols_a(const gemm_problem *p) { return p->ta ? p->m : p->k; }
static int cols_b(const gemm_problem *p) { return p->tb ? p->k : p->n; }
static size_t size_a(const gemm_problem *p) { return rows_a(p) * (size_t)p->lda; }
static size_t size_b(const gemm_problem *p) { return rows_b(p) * (size_t)p->ldb; }
static size_t size_c(const gemm_problem *p) { return (size_t)p->m * (size_t)p->ldc; }

static float op_a(const gemm_problem *p, int i, int l)
{
    return p->ta ? p->a[(size_t)l * p->lda + i] : p->a[(size_t)i * p->lda + l];
}

static float op_b(const gemm_problem *p, int l, int j)
{
    return p->tb ? p->b[(size_t)j * p->ldb + l] : p->b[(size_t)l * p->ldb + j];
}

static void fill_strided(float *x, size_t rows, int cols, int ld, float gap)
{
    for (size_t r = 0; r < rows; r++)
        for (int j = 0; j < ld; j++) x[r * (size_t)ld + (size_t)j] = j < cols ? (float)mlkt_uniform(-1, 1) : gap;
}

/* Random problem; pad adds that much to each leading dimension. beta == 0
   fills C with NaN (it must not propagate). */
static gemm_problem make_problem(int ta, int tb, int m, int n, int k, int pad, float alpha, float beta)
{
    gemm_problem p;
    p.ta = ta; p.tb = tb; p.m = m; p.n = n; p.k = k;
    p.alpha = alpha; p.beta = beta;
    p.lda = (cols_a(&p) > 1 ? cols_a(&p) : 1) + pad;
    p.ldb = (cols_b(&p) > 1 ? cols_b(&p) : 1) + pad;
    p.ldc = (n > 1 ? n : 1) + pad;
    p.a = mlkt_floats(size_a(&p) + 1);
    p.b = mlkt_floats(size_b(&p) + 1);
    p.c0 = mlkt_floats(size_c(&p) + 1);
    fill_strided(p.a, rows_a(&p), cols_a(&p), p.lda, NAN);
    fill_strided(p.b, rows_b(&p), cols_b(&p), p.ldb, NAN);
    fill_strided(p.c0, (size_t)m, n, p.ldc, c_gap);
    if (beta == 0.0f)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) p.c0[(size_t)i * p.ldc + j] = NAN;
    return p;
}

static void free_problem(gemm_problem *p)
{
    mlkt_free(p->a);
    mlkt_free(p->b);
    mlkt_free(p->c0);
}

static float *copy_c(const gemm_problem *p)
{
    float *c = mlkt_floats(size_c(p) + 1);
    memcpy(c, p->c0, size_c(p) * sizeof(float));
    return c;
}

/* Double reference (ref), the naive float32 loop's error against it, and
   the floor: eps times the largest |alpha| sum|a||b| + |beta c|. */
typedef struct gemm_ref { double *ref; double naive_err, floor; } gemm_ref;

static gemm_ref reference(const gemm_problem *p)
{
    gemm_ref r;
    double scale = 0;
    r.ref = (double *)malloc(((size_t)p->m * p->n + 1) * sizeof(double));
    r.naive_err = 0;
    for (int i = 0; i < p->m; i++)
        for (int j = 0; j < p->n; j++) {
            const double c_old = p->beta == 0.0f ? 0.0 : (double)p->c0[(size_t)i * p->ldc + j];
            double s = 0, s_abs = 0, want;
            float s32 = 0, naive;
            for (int l = 0; l < p->k && p->alpha != 0.0f; l++) {
                const float av = op_a(p, i, l), bv = op_b(p, l, j);
                s += (double)av * bv;
                s_abs += fabs((double)av * bv);
                s32 += av * bv;
            }
            want = (double)p->alpha * s + (double)p->beta * c_old;
            naive = p->alpha * s32 + (p->beta == 0.0f ? 0.0f : p->beta * (float)c_old);
            r.ref[(size_t)i * p->n + j] = want;
            if (fabs(naive - want) > r.naive_err) r.naive_err = fabs(naive - want);
            if (fabs(p->alpha) * s_abs + fabs(p->beta * c_old) > scale)
                scale = fabs(p->alpha) * s_abs + fabs(p->beta * c_old);
        }
    r.floor = mlkt_ulps(2, scale);
    return r;
}

/* Checks c (the result) against the reference and that the ldc gaps are
   untouched; returns the max error (inf on NaN). */
static double check_result(const gemm_problem *p, const gemm_ref *r, const float *c, const char *what)
{
    double err = 0;
    int gaps_ok = 1;
    for (int i = 0; i < p->m; i++) {
        const double e = mlkt_max_abs_err(c + (size_t)i * p->ldc, r->ref + (size_t)i * p->n, (size_t)p->n);
        if (e > err) err = e;
        for (int j = p->n; j < p->ldc; j++) gaps_ok &= c[(size_t)i * p->ldc + j] == c_gap;
    }
    CHECK_NAIVE(err, r->naive_err, r->floor, "%s ta=%d tb=%d m=%d n=%d k=%d ld=%d,%d,%d alpha=%g beta=%g",
                what, p->ta, p->tb, p->m, p->n, p->k, p->lda, p->ldb, p->ldc, p->alpha, p->beta);
    CHECKF(gaps_ok, "%s m=%d n=%d ldc=%d: C written past column n", what, p->m, p->n, p->ldc);
    return err;
}

static mlk_status run_sgemm(const gemm_problem *p, float *c)
{
    return mlk_sgemm(p->ta, p->tb, p->m, p->n, p->k, p->alpha, p->a, p->lda, p->b, p->ldb,
                     p->beta, c, p->ldc);
}

/* Runs mlk_sgemm on one problem against the reference; the digest lets
   make check compare the 1- and 2-thread results bitwise. */
static void check_problem(const gemm_problem *p)
{
    gemm_ref r = reference(p);
    float *c = copy_c(p);
    CHECK_INT(run_sgemm(p, c), MLK_OK);
    check_result(p, &r, c, "mlk_sgemm");
    mlkt_digest(c, size_c(p) * sizeof(float));
    mlkt_free(c);
    free(r.ref);
}

/* Sizes around the micro-tile (6 x 16), primes, and past MC/KC. */
static void test_shapes(void)
{
    static const int sizes[] = {1, 2, 5, 6, 7, 11, 12, 13, 16, 17, 24, 31, 33, 47, 97, 145, 257};
    const int n_sizes = (int)(sizeof sizes / sizeof sizes[0]);
    const int cases = mlkt_quick() ? 60 : 400;
    static const float alphas[] = {1.0f, -0.5f, 2.5f};
    static const float betas[] = {0.0f, 1.0f, 0.75f, -2.0f};
    for (int t = 0; t < cases; t++) {
        const int m = sizes[mlkt_int(n_sizes)], n = sizes[mlkt_int(n_sizes)], k = sizes[mlkt_int(n_sizes)];
        gemm_problem p = make_problem(t & 1, (t >> 1) & 1, m, n, k, mlkt_int(3) == 0 ? 0 : mlkt_int(9),
                                      alphas[mlkt_int(3)], betas[mlkt_int(4)]);
        check_problem(&p);
        free_problem(&p);
    }
}

/* Big enough for every blocking loop and for the OpenMP split (by columns
   when n >= m, else by rows): m spans several MC (144) blocks, k several
   KC (256, or 512 with AVX-512) slices, and n = 4200 crosses an NC (4096)
   panel boundary. */
static void test_large(void)
{
    for (int tr = 0; tr < 4; tr++) {
        gemm_problem p = make_problem(tr & 1, tr >> 1, 300, 700, tr == 0 ? 1100 : 500, tr == 3 ? 5 : 0, 1.0f,
                                      tr == 1 ? 0.5f : 0.0f);
        check_problem(&p);
        free_problem(&p);
        if (mlkt_quick()) break;
    }
    {
        gemm_problem p = make_problem(0, 1, 13, 4200, 300, 3, -1.5f, 1.0f);
        check_problem(&p);
        free_problem(&p);
    }
    {   /* a long k: twenty KC slices summed into a thin C */
        gemm_problem p = make_problem(1, 1, 3, 7, 5000, 1, 0.25f, -1.0f);
        check_problem(&p);
        free_problem(&p);
    }
    {   /* one row block, many columns */
        gemm_problem p = make_problem(0, 1, 5, 2000, 300, 2, 1.0f, 0.0f);
        check_problem(&p);
        free_problem(&p);
    }
    {   /* many rows, one column tile: the threads split the rows */
        gemm_problem p = make_problem(1, 0, 1000, 3, 600, 0, 1.0f, 0.0f);
        check_problem(&p);
        free_problem(&p);
    }
}

/* The small-m path (m <= MLK__GEMV_MAX_M) and the packed path just past it:
   every transpose, n and k off the vector width (tails of 1..7, B row
   blocks of 1..7), padded leading dimensions whose gaps hold NaN, alpha and
   beta (beta == 0 over a NaN C). n * k spans the one-thread and the
   threaded split; each (n, k) pair meets every m across the sweep. */
static void test_small_m(void)
{
    static const int sizes[] = {1, 7, 33, 1000, 4099};
    static const float alphas[] = {1.0f, -0.5f, 2.5f};
    static const float betas[] = {0.0f, 1.0f, 0.75f, -2.0f};
    for (int m = 1; m <= MLK__GEMV_MAX_M + 2; m++)
        for (int tr = 0; tr < 4; tr++)
            for (int ni = 0; ni < 5; ni++) {
                const int ki = (ni + m + tr) % 5;
                gemm_problem p;
                /* the sanitizer build keeps the 4099 x 4099 cases only for m = 1 */
                if (mlkt_quick() && m > 1 && sizes[ni] * (double)sizes[ki] > 5e6) continue;
                p = make_problem(tr & 1, tr >> 1, m, sizes[ni], sizes[ki], mlkt_int(2) * (1 + mlkt_int(9)),
                                 alphas[mlkt_int(3)], betas[mlkt_int(4)]);
                check_problem(&p);
                free_problem(&p);
            }
}

/* On the small path a row of C does not depend on the other rows of A:
   rows computed in pairs (trans_b = 1) or together (trans_b = 0) have the
   bits of the same row computed alone. */
static void test_small_m_rows(void)
{
    for (int tb = 0; tb < 2; tb++) {
        const int m = MLK__GEMV_MAX_M - 1;
        gemm_problem p = make_problem(0, tb, m, 37, 1003, 3, 1.0f, 0.0f);
        float *c = copy_c(&p), *c_row = copy_c(&p);
        int same = 1;
        CHECK_INT(run_sgemm(&p, c), MLK_OK);
        for (int i = 0; i < m; i++) {
            CHECK_INT(mlk_sgemm(0, tb, 1, p.n, p.k, 1.0f, p.a + (size_t)i * p.lda, p.lda, p.b, p.ldb, 0.0f,
                                c_row + (size_t)i * p.ldc, p.ldc), MLK_OK);
            same &= mlkt_same(c + (size_t)i * p.ldc, c_row + (size_t)i * p.ldc, (size_t)p.n * sizeof(float));
        }
        CHECKF(same, "tb=%d: rows of an m=%d product differ from m=1 products", tb, m);
        mlkt_digest(c, size_c(&p) * sizeof(float));
        mlkt_free(c);
        mlkt_free(c_row);
        free_problem(&p);
    }
}

/* The small-batch path against a Linear weight (trans_b, m past the
   small-m path: up to MLK__SKINNY_M rows, or MLK__SKINNY_MAX_M when W is
   big): against the reference, and bitwise against the packed path run on
   the same problem, whose KC-slice order it keeps. m around the tile sizes
   and the bounds of the path, n off MR, k past several KC slices and, for
   the big weights, past the k chunk; those with pad 0 have W's row stride
   a multiple of 4 KiB, which takes tiles of fewer W rows. */
static void test_skinny(void)
{
    static const int shapes[][4] = {{9, 37, 300, -1},     {31, 6, 513, -1},     {64, 100, 1000, -1},
                                    {40, 203, 1024, 0},   {65, 40, 700, -1},    {17, 1030, 2100, -1},
                                    {100, 1031, 2050, -1}, {256, 700, 3001, -1}, {257, 700, 3001, -1},
                                    {9, 61, 2048, 0},     {130, 1001, 4096, 0}};
    const int n_shapes = mlkt_quick() ? 5 : (int)(sizeof shapes / sizeof shapes[0]);
    static const float betas[] = {0.0f, 1.0f, -0.75f};
    for (int s = 0; s < n_shapes; s++)
        for (int ta = 0; ta < 2; ta++) {
            const int pad = shapes[s][3] < 0 ? mlkt_int(2) * 3 : shapes[s][3];
            gemm_problem p = make_problem(ta, 1, shapes[s][0], shapes[s][1], shapes[s][2], pad,
                                          s % 2 ? -1.25f : 1.0f, betas[(s + ta) % 3]);
            mlk__gemm_args g = mlk__gemm_make_args(p.ta, p.tb, p.m, p.n, p.k, p.alpha, p.a, p.lda, p.b, p.ldb,
                                                   p.beta, NULL, p.ldc);
            CHECKF(mlk__gemm_skinny_rows(&g) ==
                       (p.ldb % 1024 == 0 ? mlk__gemm_min(MLK__MR, MLK__SKINNY_ALIASED_ROWS) : MLK__MR),
                   "ldb=%d: W rows per tile", p.ldb);
            float *c = copy_c(&p), *c_packed = copy_c(&p);
            float *pack = mlkt_floats(mlk__gemm_b_floats(p.n, p.k) + mlk__gemm_a_floats(p.m, p.k));
            CHECKF(mlk__gemm_skinny(&g) == (p.m <= MLK__SKINNY_M || (p.m <= MLK__SKINNY_MAX_M && p.n * p.k >= MLK__SKINNY_BIG_W)),
                   "m=%d n=%d k=%d: path choice", p.m, p.n, p.k);
            check_problem(&p);
            CHECK_INT(run_sgemm(&p, c), MLK_OK);
            g.c = c_packed;
            mlk__gemm_blocked(&g, pack, pack + mlk__gemm_b_floats(p.n, p.k));
            CHECKF(mlkt_same(c, c_packed, size_c(&p) * sizeof(float)),
                   "ta=%d m=%d n=%d k=%d beta=%g: the small-batch path's bits differ from the packed path's",
                   ta, p.m, p.n, p.k, p.beta);
            mlkt_free(pack);
            mlkt_free(c);
            mlkt_free(c_packed);
            free_problem(&p);
        }
}

/* BLAS conventions: m or n == 0 is a no-op (C may be NULL), k == 0 gives
   C = beta C, alpha == 0 gives C = beta C without reading A or B. */
static void test_degenerate(void)
{
    for (int beta_zero = 0; beta_zero < 2; beta_zero++) {
        gemm_problem p = make_problem(0, 0, 7, 19, 0, 2, 1.0f, beta_zero ? 0.0f : -3.0f);
        check_problem(&p);
        free_problem(&p);
        p = make_problem(1, 1, 9, 20, 11, 1, 0.0f, beta_zero ? 0.0f : 0.5f);
        p.a[0] = NAN;
        p.b[0] = INFINITY;
        check_problem(&p);
        free_problem(&p);
    }
    {
        float c[4] = {1, 2, 3, 4}, a[4] = {1, 1, 1, 1};
        CHECK_INT(mlk_sgemm(0, 0, 0, 2, 2, 1.0f, a, 2, a, 2, 1.0f, c, 2), MLK_OK);
        CHECK_INT(mlk_sgemm(0, 0, 2, 0, 2, 1.0f, a, 2, a, 2, 1.0f, c, 2), MLK_OK);
        CHECK_INT(mlk_sgemm(0, 0, 0, 0, 0, 1.0f, NULL, 1, NULL, 1, 1.0f, NULL, 1), MLK_OK);
        CHECK_INT(mlk_sgemm(0, 0, 2, 2, 0, 1.0f, NULL, 1, NULL, 2, 2.0f, c, 2), MLK_OK);
        CHECK(c[0] == 2 && c[1] == 4 && c[2] == 6 && c[3] == 8);
    }
}

/* A NaN in A at (i0, l0) poisons exactly row i0 of C, an infinity in B at
   (l1, j1) exactly column j1 (inf + NaN stays NaN where they cross): the
   zero padding of edge tiles must not leak into real outputs. */
static void test_nonfinite(void)
{
    for (int tr = 0; tr < 8; tr++) { /* tr >= 4: the small-m path (3 rows) */
        gemm_problem p = make_problem(tr & 1, (tr >> 1) & 1, tr < 4 ? 23 : 3, 37, 29, 1, 1.0f, 0.0f);
        const int i0 = tr < 4 ? 21 : 1, l0 = 4, l1 = 28, j1 = 34;
        float *c = copy_c(&p);
        int ok = 1;
        p.a[p.ta ? (size_t)l0 * p.lda + i0 : (size_t)i0 * p.lda + l0] = NAN;
        p.b[p.tb ? (size_t)j1 * p.ldb + l1 : (size_t)l1 * p.ldb + j1] = INFINITY;
        CHECK_INT(run_sgemm(&p, c), MLK_OK);
        for (int i = 0; i < p.m; i++)
            for (int j = 0; j < p.n; j++) {
                const float v = c[(size_t)i * p.ldc + j];
                if (i == i0) ok &= v != v;
                else if (j == j1) ok &= isinf(v) || v != v;
                else ok &= isfinite(v);
            }
        CHECKF(ok, "non-finite inputs ta=%d tb=%d", p.ta, p.tb);
        mlkt_digest(c, size_c(&p) * sizeof(float));
        mlkt_free(c);
        free_problem(&p);
    }
}

/* A program may call mlk_sgemm from its own parallel region (no global
   state): concurrent calls, each on one thread there, must give the bits
   of the same call made alone, on the packed and the small-m path. */
static void test_calls_in_parallel(void)
{
    enum { jobs = 6 };
    gemm_problem p[jobs];
    float *c[jobs];
    mlk_status st[jobs];
    for (int j = 0; j < jobs; j++) {
        const int m = j < 4 ? 40 + 31 * j : 1 + 3 * (j - 4); /* jobs 4, 5: m = 1, 4 */
        p[j] = make_problem(j & 1, (j >> 1) & 1, m, 200 - 17 * j, 300 + 9 * j, j % 3, 1.0f, 0.5f);
        c[j] = copy_c(&p[j]);
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic)
#endif
    for (int j = 0; j < jobs; j++) st[j] = run_sgemm(&p[j], c[j]);
    for (int j = 0; j < jobs; j++) {
        float *c_alone = copy_c(&p[j]);
        gemm_ref r = reference(&p[j]);
        CHECK_INT(st[j], MLK_OK);
        check_result(&p[j], &r, c[j], "inside a parallel region");
        CHECK_INT(run_sgemm(&p[j], c_alone), MLK_OK);
        CHECKF(mlkt_same(c[j], c_alone, size_c(&p[j]) * sizeof(float)), "job %d: differs from the call alone", j);
        mlkt_digest(c[j], size_c(&p[j]) * sizeof(float));
        free(r.ref);
        mlkt_free(c_alone);
        mlkt_free(c[j]);
        free_problem(&p[j]);
    }
}

/* A bad call must return want and leave C exactly as it was (c0). */
static void expect_error(const char *what, mlk_status got, mlk_status want, const float *c,
                         const float *c0, size_t bytes)
{
    CHECKF(got == want, "%s: status %d, want %d", what, (int)got, (int)want);
    CHECKF(mlkt_same(c, c0, bytes), "%s: C changed", what);
}

static void test_bad_inputs(void)
{
    gemm_problem p = make_problem(0, 0, MLK__GEMV_MAX_M + 1, 9, 10, 0, 1.0f, 1.0f);
    gemm_problem pt = make_problem(1, 1, MLK__GEMV_MAX_M + 1, 9, 10, 0, 1.0f, 1.0f);
    gemm_problem big = make_problem(1, 0, 300, 200, 300, 0, 1.0f, 1.0f);
    float *c = copy_c(&p), *c_big = copy_c(&big);
    const float *a = p.a, *b = p.b, *c0 = p.c0;
    const size_t bytes = size_c(&p) * sizeof(float);
    expect_error("a NULL", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, NULL, 10, b, 9, 1.0f, c, 9), MLK_ERR_NULL, c, c0, bytes);
    expect_error("b NULL", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, a, 10, NULL, 9, 1.0f, c, 9), MLK_ERR_NULL, c, c0, bytes);
    expect_error("c NULL", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, a, 10, b, 9, 1.0f, NULL, 9), MLK_ERR_NULL, c, c0, bytes);
    expect_error("m < 0", mlk_sgemm(0, 0, -1, 9, 10, 1.0f, a, 10, b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("n < 0", mlk_sgemm(0, 0, 8, -9, 10, 1.0f, a, 10, b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("k < 0", mlk_sgemm(0, 0, 8, 9, -1, 1.0f, a, 10, b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("lda < k", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, a, 9, b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("ldb < n", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, a, 10, b, 8, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("ldc < n", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, a, 10, b, 9, 1.0f, c, 8), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("lda < m (A^T)", mlk_sgemm(1, 0, 8, 9, 10, 1.0f, pt.a, 7, b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("ldb < k (B^T)", mlk_sgemm(0, 1, 8, 9, 10, 1.0f, a, 10, pt.b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("lda 0", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, a, 0, b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("lda < 0", mlk_sgemm(0, 0, 8, 9, 10, 1.0f, a, -10, b, 9, 1.0f, c, 9), MLK_ERR_SHAPE, c, c0, bytes);
    expect_error("ldc 0, m 0", mlk_sgemm(0, 0, 0, 9, 10, 1.0f, a, 10, b, 9, 1.0f, c, 0), MLK_ERR_SHAPE, c, c0, bytes);
    /* int sizes cannot overflow a 64-bit size_t; 2^16 x 2^16 floats overflow 32 bits */
    if (sizeof(size_t) < 8)
        expect_error("overflow", mlk_sgemm(0, 0, 65536, 9, 65536, 1.0f, a, 65536, b, 9, 1.0f, c, 9),
                     MLK_ERR_OVERFLOW, c, c0, bytes);
    gemm_fail_allocs = 1;
    /* the small path copies op(A) only for A^T B^T; else it never allocates */
    expect_error("no memory, small m, A^T B^T",
                 mlk_sgemm(1, 1, 2, 9, 10, 1.0f, pt.a, 8, pt.b, 10, 1.0f, c, 9), MLK_ERR_NOMEM, c, c0, bytes);
    {
        gemm_problem small = make_problem(0, 1, 2, 9, 10, 0, 1.0f, 1.0f);
        float *c_small = copy_c(&small);
        gemm_ref r = reference(&small);
        CHECK_INT(run_sgemm(&small, c_small), MLK_OK);
        check_result(&small, &r, c_small, "small m, no allocation");
        free(r.ref);
        mlkt_free(c_small);
        free_problem(&small);
    }
    expect_error("no memory, packed", run_sgemm(&p, c), MLK_ERR_NOMEM, c, c0, bytes);
    expect_error("no memory, threaded size", run_sgemm(&big, c_big), MLK_ERR_NOMEM, c_big, big.c0,
                 size_c(&big) * sizeof(float));
    gemm_fail_allocs = 0;
    mlkt_free(c);
    mlkt_free(c_big);
    free_problem(&p);
    free_problem(&pt);
    free_problem(&big);
}

int main(void)
{
    mlkt_file = "test_gemm";
    MLKT_RUN(test_shapes, 1);
    MLKT_RUN(test_large, 2);
    MLKT_RUN(test_small_m, 7);
    MLKT_RUN(test_small_m_rows, 8);
    MLKT_RUN(test_skinny, 9);
    MLKT_RUN(test_degenerate, 3);
    MLKT_RUN(test_nonfinite, 4);
    MLKT_RUN(test_calls_in_parallel, 5);
    MLKT_RUN(test_bad_inputs, 6);
    return mlkt_finish();
}

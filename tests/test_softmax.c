/* softmax, log-softmax, top-k softmax and sampling: against double
   references (a full sort for top-k, the filtered distribution in double for
   sampling), the hard rows (ties, -inf, 1e30-range logits, k = 1 and k = n)
   and every bad input. */
#include <stdlib.h>
static int fail_alloc; /* makes the library's allocations fail (MLK_ERR_NOMEM) */
static void *test_malloc(size_t n) { return fail_alloc ? NULL : malloc(n); }
#define MLKERN_MALLOC(n) test_malloc(n)
#define MLKERN_FREE(p) free(p)
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include <float.h>
#include <limits.h>

/* ---- double references ---- */

/* softmax(x / t) of one row in double; returns 0 for a bad row */
static int ref_softmax_row(const float *x, int n, double t, double *p, double *logp)
{
    double m = -INFINITY, sum = 0;
    int i;
    for (i = 0; i < n; i++) {
        if (x[i] != x[i] || x[i] == INFINITY) return 0;
        if (x[i] > m) m = x[i];
    }
    if (m == -INFINITY) return 0;
    for (i = 0; i < n; i++) sum += exp(((double)x[i] - m) / t);
    for (i = 0; i < n; i++) {
        if (p) p[i] = exp(((double)x[i] - m) / t) / sum;
        if (logp) logp[i] = ((double)x[i] - m) / t - log(sum);
    }
    return 1;
}

/* The naive float32 softmax of one row: the error yardstick. */
static void naive_softmax_row(const float *x, int n, float t, float *p, float *logp)
{
    float m = -INFINITY, sum = 0;
    int i;
    for (i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    for (i = 0; i < n; i++) sum += expf((x[i] - m) / t);
    for (i = 0; i < n; i++) {
        if (p) p[i] = expf((x[i] - m) / t) / sum;
        if (logp) logp[i] = (x[i] - m) / t - logf(sum);
    }
}

static const float *sort_keys;

/* descending logit, ties to the lower index */
static int cmp_desc(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_keys[i] != sort_keys[j]) return sort_keys[i] > sort_keys[j] ? -1 : 1;
    return (i > j) - (i < j);
}

static void ref_order(const float *x, int n, int *order)
{
    int i;
    for (i = 0; i < n; i++) order[i] = i;
    sort_keys = x;
    qsort(order, (size_t)n, sizeof(int), cmp_desc);
}

/* mlkt.h's tolerance rule with this file's floor: 4 float ulps of the
   output's scale */
static int within_naive(double err, double naive_err, double scale)
{
    return mlkt_within_naive(err, naive_err, mlkt_ulps(4, scale > 1e-30 ? scale : 1e-30));
}

/* ---- row generators ---- */

enum { ROW_NORMAL, ROW_TIES, ROW_NEG_INF, ROW_HUGE, ROW_EXTREME, ROW_KINDS };

static void fill_row(float *x, int n, int kind)
{
    int i;
    for (i = 0; i < n; i++) {
        switch (kind) {
        case ROW_NORMAL: x[i] = (float)(3 * mlkt_normal()); break;
        case ROW_TIES: x[i] = (float)mlkt_int(4); break;                                 /* many ties */
        case ROW_NEG_INF: x[i] = mlkt_int(3) ? -INFINITY : (float)mlkt_normal(); break; /* masked tokens */
        case ROW_HUGE: x[i] = (float)mlkt_uniform(-1e30, 1e30); break;
        default: x[i] = mlkt_int(2) ? 3.0e38f : -3.0e38f; break;                          /* x - max overflows */
        }
    }
    if (kind == ROW_NEG_INF) x[mlkt_int(n)] = 1.5f; /* at least one finite logit */
}

/* ---- softmax and log-softmax ---- */

static void check_full(int rows, int n, int kind)
{
    size_t count = (size_t)(size_t)rows * (size_t)n, r;
    float *x = mlkt_floats(count), *y = mlkt_floats(count), *ly = mlkt_floats(count);
    float *naive = mlkt_floats((size_t)n), *lnaive = mlkt_floats((size_t)n);
    double *p = (double *)malloc((size_t)n * sizeof(double)), *lp = (double *)malloc((size_t)n * sizeof(double));
    for (r = 0; r < (size_t)rows; r++) fill_row(x + r * n, n, kind);
    CHECK_INT(mlk_softmax(rows, n, x, y), MLK_OK);
    CHECK_INT(mlk_log_softmax(rows, n, x, ly), MLK_OK);
    for (r = 0; r < (size_t)rows; r++) {
        double e, e_naive, le, le_naive;
        int i, finite = 1;
        CHECK(ref_softmax_row(x + r * n, n, 1.0, p, lp));
        naive_softmax_row(x + r * n, n, 1.0f, naive, lnaive);
        e = mlkt_max_abs_err(y + r * n, p, (size_t)n);
        e_naive = mlkt_max_abs_err(naive, p, (size_t)n);
        CHECK_NAIVE(e, e_naive, mlkt_ulps(4, 1.0), "softmax %dx%d kind %d", rows, n, kind);
        for (i = 0; i < n; i++) {
            /* beyond float's range (x - max of +-3e38 rows): -inf in float32 */
            if (lp[i] < -(double)FLT_MAX) lp[i] = -INFINITY;
            if (lp[i] == -INFINITY) {
                CHECK(ly[r * n + i] == -INFINITY);
                CHECK(y[r * n + i] == 0.0f);
                lp[i] = 0;
                ly[r * n + i] = lnaive[i] = 0;
                finite = 0;
            }
        }
        le = mlkt_max_abs_err(ly + r * n, lp, (size_t)n);
        le_naive = mlkt_max_abs_err(lnaive, lp, (size_t)n);
        CHECKF(within_naive(le, le_naive, 1.0 + fabs(lp[0])) || (!finite && le <= 1e-6 * (1 + fabs(lp[0]))),
               "log_softmax %dx%d kind %d: err %.3g naive %.3g", rows, n, kind, le, le_naive);
    }
    mlkt_digest(y, count * sizeof(float));
    mlkt_digest(ly, count * sizeof(float));
    free(p); free(lp);
    mlkt_free(x); mlkt_free(y); mlkt_free(ly); mlkt_free(naive); mlkt_free(lnaive);
}

static void test_softmax(void)
{
    static const int ns[] = {1, 2, 7, 63, 64, 65, 100, 1000, 4099};
    int s, kind;
    for (s = 0; s < (int)(sizeof ns / sizeof ns[0]); s++)
        for (kind = 0; kind < ROW_KINDS; kind++) check_full(3, ns[s], kind);
    check_full(mlkt_quick() ? 8 : 64, 32000, ROW_NORMAL); /* OpenMP splits the rows */
}

/* ---- top-k ---- */

static void check_topk(int rows, int n, int k, float t, int kind, int log_out)
{
    size_t out = (size_t)(size_t)rows * (size_t)k, r;
    float *x = mlkt_floats((size_t)(size_t)rows * (size_t)n), *probs = mlkt_floats(out), *naive = mlkt_floats((size_t)n);
    int32_t *idx = (int32_t *)mlkt_alloc((size_t)out * sizeof(int32_t));
    int *order = (int *)malloc((size_t)n * sizeof(int));
    double *p = (double *)malloc((size_t)n * sizeof(double)), *want = (double *)malloc((size_t)k * sizeof(double));
    float *got = (float *)malloc((size_t)k * sizeof(float)), *naive_k = (float *)malloc((size_t)k * sizeof(float));
    for (r = 0; r < (size_t)rows; r++) fill_row(x + r * n, n, kind);
    if (log_out) CHECK_INT(mlk_topk_log_softmax(rows, n, x, k, probs, idx), MLK_OK);
    else CHECK_INT(mlk_topk_softmax(rows, n, x, t, k, probs, idx), MLK_OK);
    for (r = 0; r < (size_t)rows; r++) {
        const float *xr = x + r * n;
        int j, idx_ok = 1, any_inf = 0;
        double e, e_naive;
        /* mlk_topk_log_softmax has no temperature: its reference is t = 1 */
        CHECK(ref_softmax_row(xr, n, log_out ? 1.0 : t, log_out ? NULL : p, log_out ? p : NULL));
        if (log_out) naive_softmax_row(xr, n, 1.0f, NULL, naive);
        else naive_softmax_row(xr, n, t, naive, NULL);
        ref_order(xr, n, order);
        for (j = 0; j < k; j++) {
            idx_ok &= idx[r * k + j] == order[j];
            want[j] = p[order[j]];
            /* a log-probability beyond float's range (x - max of +-3e38 rows)
               is -inf once rounded to the float32 output */
            if (fabs(want[j]) > (double)FLT_MAX) want[j] = want[j] < 0 ? -INFINITY : INFINITY;
            got[j] = probs[r * k + j];
            naive_k[j] = naive[order[j]];
            if (want[j] == -INFINITY) { /* compared exactly, then left out of the error */
                CHECK(got[j] == -INFINITY);
                any_inf = 1;
                want[j] = got[j] = naive_k[j] = 0;
            }
        }
        CHECKF(idx_ok, "top-%d of %d kind %d row %d: indices differ from the sort", k, n, kind, (int)r);
        e = mlkt_max_abs_err(got, want, (size_t)k);
        e_naive = mlkt_max_abs_err(naive_k, want, (size_t)k);
        CHECKF(within_naive(e, e_naive, log_out ? 1 + fabs(want[0]) : want[0]) || (any_inf && e <= 1e-6),
               "top-%d of %d kind %d log %d: err %.3g naive %.3g", k, n, kind, log_out, e, e_naive);
    }
    mlkt_digest(probs, out * sizeof(float));
    mlkt_digest(idx, out * sizeof(int32_t));
    free(order); free(p); free(want); free(got); free(naive_k);
    mlkt_free(x); mlkt_free(probs); mlkt_free(naive); mlkt_free(idx);
}

static void test_topk(void)
{
    static const int ns[] = {1, 5, 64, 100, 257, 2000};
    int s, kind, log_out;
    for (s = 0; s < (int)(sizeof ns / sizeof ns[0]); s++)
        for (kind = 0; kind < ROW_KINDS; kind++)
            for (log_out = 0; log_out < 2; log_out++) {
                int n = ns[s];
                check_topk(3, n, 1, 1.0f, kind, log_out);                   /* k = 1 */
                check_topk(3, n, n, 1.0f, kind, log_out);                   /* k = n */
                check_topk(3, n, n < 50 ? (n + 1) / 2 : 50, 0.7f, kind, log_out);
                check_topk(2, n, n < 10 ? n : 10, 2.5f, kind, log_out);
            }
    check_topk(mlkt_quick() ? 8 : 64, 32000, 50, 1.0f, ROW_NORMAL, 0); /* the benchmark shape */
    check_topk(4, 40000, 50, 1.0f, ROW_TIES, 0);
    for (kind = 0; kind < ROW_KINDS; kind++) { /* k above the ~100 candidates appended between selections */
        check_topk(2, mlkt_quick() ? 6000 : 20000, 700, 1.0f, kind, 0);
        check_topk(2, 64 * 160 + 17, 40, 1.3f, kind, kind % 2); /* a short last block */
    }
}

/* Fewer finite logits than k: after them the top k goes on with -inf
   logits by index, as a sort would, across several selections. */
static void test_topk_few_finite(void)
{
    int n = 5000, k = 7, i;
    float *x = mlkt_floats((size_t)n), *probs = mlkt_floats((size_t)k);
    int32_t *idx = (int32_t *)mlkt_alloc((size_t)k * sizeof(int32_t));
    for (i = 0; i < n; i++) x[i] = -INFINITY;
    x[4000] = 1.0f, x[70] = 2.0f, x[2500] = 0.5f;
    CHECK_INT(mlk_topk_softmax(1, n, x, 1.0f, k, probs, idx), MLK_OK);
    CHECK_INT(idx[0], 70);
    CHECK_INT(idx[1], 4000);
    CHECK_INT(idx[2], 2500);
    for (i = 3; i < k; i++) { /* then the lowest indices of the -inf logits */
        CHECK_INT(idx[i], i - 3);
        CHECK(probs[i] == 0.0f);
    }
    CHECK(fabs(probs[0] - 1.0 / (1.0 + exp(-1.0) + exp(-1.5))) < 1e-6);
    mlkt_digest(probs, k * sizeof(float));
    mlkt_digest(idx, k * sizeof(int32_t));
    mlkt_free(x); mlkt_free(probs); mlkt_free(idx);
}

/* A row whose logits increase: every logit is above the floor, so candidates
   are appended and selected all the time, and the max grows at every block. */
static void test_topk_increasing(void)
{
    int n = 3000, k = 37, i;
    float *x = mlkt_floats((size_t)n), *probs = mlkt_floats((size_t)k);
    int32_t *idx = (int32_t *)mlkt_alloc((size_t)k * sizeof(int32_t));
    for (i = 0; i < n; i++) x[i] = (float)i * 0.01f;
    CHECK_INT(mlk_topk_softmax(1, n, x, 1.0f, k, probs, idx), MLK_OK);
    for (i = 0; i < k; i++) CHECK_INT(idx[i], n - 1 - i);
    mlkt_digest(probs, k * sizeof(float));
    mlkt_free(x); mlkt_free(probs); mlkt_free(idx);
}

/* -0 and +0 are equal logits, so they tie and go by index, across both the
   logits taken up front and those appended later. */
static void test_topk_signed_zero(void)
{
    int n = 1000, k = 300, i, j = 0;
    float *x = mlkt_floats((size_t)n), *probs = mlkt_floats((size_t)k);
    int32_t *idx = (int32_t *)mlkt_alloc((size_t)k * sizeof(int32_t));
    for (i = 0; i < n; i++) x[i] = i % 3 == 2 ? -1.0f : i % 3 ? 0.0f : -0.0f;
    CHECK_INT(mlk_topk_softmax(1, n, x, 1.0f, k, probs, idx), MLK_OK);
    for (i = 0; i < n && j < k; i++)
        if (i % 3 != 2) CHECK_INT(idx[j++], i);
    mlkt_digest(probs, k * sizeof(float));
    mlkt_digest(idx, k * sizeof(int32_t));
    mlkt_free(x); mlkt_free(probs); mlkt_free(idx);
}

/* ---- sampling ---- */

/* splitmix64, written out again from the header's documentation */
static double doc_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

/* The target distribution in double: temperature, top_k, top_p, min_p, each
   on what the previous one left (renormalised), as HF transformers. */
static void ref_sample_dist(const float *x, int n, const mlk_sampler *s, double *q)
{
    int *order = (int *)malloc((size_t)n * sizeof(int)), i, keep;
    double sum = 0, cum = 0, pmax;
    ref_order(x, n, order);
    ref_softmax_row(x, n, s->temperature, q, NULL);
    keep = s->top_k > 0 && s->top_k < n ? s->top_k : n;
    for (i = 0; i < keep; i++) sum += q[order[i]];
    if (s->top_p < 1) {
        for (i = 0; i < keep; i++) {
            cum += q[order[i]] / sum;
            if (cum >= s->top_p) { keep = i + 1; break; }
        }
    }
    pmax = q[order[0]];
    for (i = 1; i < keep; i++)
        if (q[order[i]] < s->min_p * pmax) { keep = i; break; }
    for (i = keep; i < n; i++) q[order[i]] = 0;
    sum = 0;
    for (i = 0; i < n; i++) sum += q[i];
    for (i = 0; i < n; i++) q[i] /= sum;
    free(order);
}

static mlk_sampler sampler(float t, int top_k, float top_p, float min_p)
{
    mlk_sampler s;
    s.temperature = t;
    s.top_k = top_k;
    s.top_p = top_p;
    s.min_p = min_p;
    return s;
}

/* Empirical frequencies over many draws within 5 sigma of the binomial of
   the target distribution; excluded tokens never drawn. */
static void test_sample_frequencies(void)
{
    mlk_sampler cases[6];
    int n = 24, rows = 2000, calls = mlkt_quick() ? 10 : 50, c, i, r, call; /* rows * n: OpenMP splits */
    float *x = mlkt_floats((size_t)rows * n);
    int32_t *out = (int32_t *)mlkt_alloc((size_t)rows * sizeof(int32_t));
    long *counts = (long *)malloc((size_t)n * sizeof(long));
    double *q = (double *)malloc((size_t)n * sizeof(double));
    uint64_t rng = 42;
    cases[0] = sampler(1.0f, 0, 1.0f, 0.0f);
    cases[1] = sampler(0.7f, 5, 1.0f, 0.0f);
    cases[2] = sampler(1.0f, 0, 0.8f, 0.0f);
    cases[3] = sampler(1.3f, 0, 1.0f, 0.1f);
    cases[4] = sampler(1.0f, 10, 0.9f, 0.05f);
    cases[5] = sampler(2.0f, 30, 0.5f, 0.0f);
    for (i = 0; i < n; i++) x[i] = (float)(1.5 * mlkt_normal());
    x[3] = -INFINITY;
    for (r = 1; r < rows; r++) memcpy(x + (size_t)r * n, x, n * sizeof(float));
    for (c = 0; c < 6; c++) {
        long total = (long)rows * calls;
        int ok = 1;
        ref_sample_dist(x, n, &cases[c], q);
        memset(counts, 0, n * sizeof(long));
        for (call = 0; call < calls; call++) {
            CHECK_INT(mlk_sample(rows, n, x, &cases[c], &rng, out), MLK_OK);
            for (r = 0; r < rows; r++) counts[out[r]]++;
            if (call == 0) mlkt_digest(out, rows * sizeof(int32_t));
        }
        for (i = 0; i < n; i++) {
            double mu = total * q[i], sigma = sqrt(total * q[i] * (1 - q[i]));
            if (q[i] == 0) {
                CHECKF(counts[i] == 0, "case %d: excluded token %d drawn %ld times", c, i, counts[i]);
            } else if (fabs(counts[i] - mu) > 5 * sigma + 1) {
                ok = 0;
                CHECKF(0, "case %d token %d: %ld draws, expected %.1f +- %.1f", c, i, counts[i], mu, sigma);
            }
        }
        CHECK(ok);
    }
    free(counts); free(q);
    mlkt_free(x); mlkt_free(out);
}

/* Greedy (temperature 0) and top_k = 1 are the argmax, ties to the lower
   index; both still advance the state by one draw per row. */
static void test_sample_greedy(void)
{
    int rows = 50, n = 300, kind, r;
    float *x = mlkt_floats((size_t)rows * n);
    int32_t *out = (int32_t *)mlkt_alloc((size_t)rows * sizeof(int32_t));
    int *order = (int *)malloc((size_t)n * sizeof(int));
    for (kind = 0; kind < ROW_KINDS; kind++) {
        mlk_sampler greedy = sampler(0.0f, 0, 0.9f, 0.2f), top1 = sampler(1.0f, 1, 1.0f, 0.0f);
        uint64_t rng = 7, rng2 = 7;
        for (r = 0; r < rows; r++) fill_row(x + (size_t)r * n, n, kind);
        CHECK_INT(mlk_sample(rows, n, x, &greedy, &rng, out), MLK_OK);
        CHECK(rng == 7 + (uint64_t)rows * 0x9E3779B97F4A7C15ull);
        for (r = 0; r < rows; r++) {
            ref_order(x + (size_t)r * n, n, order);
            CHECK_INT(out[r], order[0]);
        }
        mlkt_digest(out, rows * sizeof(int32_t));
        CHECK_INT(mlk_sample(rows, n, x, &top1, &rng2, out), MLK_OK);
        CHECK(rng2 == rng);
        for (r = 0; r < rows; r++) {
            ref_order(x + (size_t)r * n, n, order);
            CHECK_INT(out[r], order[0]);
        }
    }
    free(order);
    mlkt_free(x); mlkt_free(out);
}

/* One draw per row: sampling rows one call at a time gives the same tokens
   as one call over all rows; and the documented splitmix64 picks the token
   of a two-token row by u < 1/2. */
static void test_sample_rng(void)
{
    int rows = 40, n = 50, r;
    float *x = mlkt_floats((size_t)rows * n), pair[2] = {0.0f, 0.0f};
    int32_t *all = (int32_t *)mlkt_alloc((size_t)rows * sizeof(int32_t)), one = -1;
    mlk_sampler s = sampler(0.9f, 20, 0.95f, 0.01f), plain = sampler(1.0f, 0, 1.0f, 0.0f);
    uint64_t rng_all = 123456789, rng_one = 123456789, rng_doc;
    mlkt_fill_normal(x, (size_t)rows * n, 2.0);
    CHECK_INT(mlk_sample(rows, n, x, &s, &rng_all, all), MLK_OK);
    for (r = 0; r < rows; r++) {
        CHECK_INT(mlk_sample(1, n, x + (size_t)r * n, &s, &rng_one, &one), MLK_OK);
        CHECK_INT(one, all[r]);
    }
    CHECK(rng_one == rng_all);
    rng_doc = rng_one;
    for (r = 0; r < 200; r++) {
        double u = doc_uniform(&rng_doc);
        CHECK_INT(mlk_sample(1, 2, pair, &plain, &rng_one, &one), MLK_OK);
        CHECK_INT(one, u < 0.5 ? 0 : 1);
    }
    CHECK(rng_one == rng_doc);
    mlkt_digest(all, rows * sizeof(int32_t));
    mlkt_free(x); mlkt_free(all);
}

/* top_p / min_p never return an excluded token, over many random rows. */
static void test_sample_exclusion(void)
{
    int rows = 200, n = 80, r, i, trial;
    float *x = mlkt_floats((size_t)rows * n);
    int32_t *out = (int32_t *)mlkt_alloc((size_t)rows * sizeof(int32_t));
    double *q = (double *)malloc((size_t)n * sizeof(double));
    uint64_t rng = 99;
    for (trial = 0; trial < 12; trial++) {
        mlk_sampler s = sampler((float)mlkt_uniform(0.3, 2.0), trial % 3 == 0 ? 1 + mlkt_int(n) : 0,
                                (float)mlkt_uniform(0.05, 1.0), trial % 2 ? (float)mlkt_uniform(0, 0.5) : 0.0f);
        for (i = 0; i < rows * n; i++) x[i] = (float)(3 * mlkt_normal());
        CHECK_INT(mlk_sample(rows, n, x, &s, &rng, out), MLK_OK);
        for (r = 0; r < rows; r++) {
            ref_sample_dist(x + (size_t)r * n, n, &s, q);
            CHECKF(out[r] >= 0 && out[r] < n && q[out[r]] > 0, "trial %d row %d: token %d excluded", trial, r, out[r]);
        }
        mlkt_digest(out, rows * sizeof(int32_t));
    }
    free(q);
    mlkt_free(x); mlkt_free(out);
}

/* ---- bad inputs ---- */

static void test_bad_inputs(void)
{
    const int n = 16, rows = 2;
    float *x = mlkt_floats(rows * n), *y = mlkt_floats(rows * n), *snap = mlkt_floats(rows * n);
    int32_t *idx = (int32_t *)mlkt_alloc((size_t)rows * n * sizeof(int32_t)), *isnap = (int32_t *)mlkt_alloc((size_t)rows * n * sizeof(int32_t));
    mlk_sampler ok_s = sampler(1.0f, 0, 1.0f, 0.0f), bad_s[9];
    uint64_t rng = 5;
    int i, v;
    mlkt_fill_normal(x, rows * n, 1.0);
    for (i = 0; i < rows * n; i++) { y[i] = 777.0f; idx[i] = 777; }
#define SNAP() (memcpy(snap, y, rows * n * sizeof(float)), memcpy(isnap, idx, rows * n * sizeof(int32_t)))
#define SAME() (mlkt_same(snap, y, rows * n * sizeof(float)) && mlkt_same(isnap, idx, rows * n * sizeof(int32_t)) && rng == 5)
#define CHECK_BAD(call, code) do { SNAP(); CHECK_INT(call, code); CHECK(SAME()); } while (0)
    CHECK_BAD(mlk_softmax(rows, n, NULL, y), MLK_ERR_NULL);
    CHECK_BAD(mlk_softmax(rows, n, x, NULL), MLK_ERR_NULL);
    CHECK_BAD(mlk_log_softmax(rows, n, NULL, y), MLK_ERR_NULL);
    CHECK_BAD(mlk_topk_softmax(rows, n, NULL, 1.0f, 3, y, idx), MLK_ERR_NULL);
    CHECK_BAD(mlk_topk_softmax(rows, n, x, 1.0f, 3, NULL, idx), MLK_ERR_NULL);
    CHECK_BAD(mlk_topk_softmax(rows, n, x, 1.0f, 3, y, NULL), MLK_ERR_NULL);
    CHECK_BAD(mlk_topk_log_softmax(rows, n, x, 3, y, NULL), MLK_ERR_NULL);
    CHECK_BAD(mlk_sample(rows, n, NULL, &ok_s, &rng, idx), MLK_ERR_NULL);
    CHECK_BAD(mlk_sample(rows, n, x, NULL, &rng, idx), MLK_ERR_NULL);
    CHECK_BAD(mlk_sample(rows, n, x, &ok_s, NULL, idx), MLK_ERR_NULL);
    CHECK_BAD(mlk_sample(rows, n, x, &ok_s, &rng, NULL), MLK_ERR_NULL);
    for (i = 0; i < 4; i++) {
        int r = i == 0 ? 0 : i == 1 ? -3 : rows, nn = i == 2 ? 0 : i == 3 ? INT_MIN : n;
        CHECK_BAD(mlk_softmax(r, nn, x, y), MLK_ERR_SHAPE);
        CHECK_BAD(mlk_log_softmax(r, nn, x, y), MLK_ERR_SHAPE);
        CHECK_BAD(mlk_topk_softmax(r, nn, x, 1.0f, 1, y, idx), MLK_ERR_SHAPE);
        CHECK_BAD(mlk_topk_log_softmax(r, nn, x, 1, y, idx), MLK_ERR_SHAPE);
        CHECK_BAD(mlk_sample(r, nn, x, &ok_s, &rng, idx), MLK_ERR_SHAPE);
    }
    /* k outside 1..n */
    CHECK_BAD(mlk_topk_softmax(rows, n, x, 1.0f, 0, y, idx), MLK_ERR_SHAPE);
    CHECK_BAD(mlk_topk_softmax(rows, n, x, 1.0f, n + 1, y, idx), MLK_ERR_SHAPE);
    CHECK_BAD(mlk_topk_log_softmax(rows, n, x, -1, y, idx), MLK_ERR_SHAPE);
    /* temperature */
    CHECK_BAD(mlk_topk_softmax(rows, n, x, 0.0f, 3, y, idx), MLK_ERR_ARG);
    CHECK_BAD(mlk_topk_softmax(rows, n, x, -1.0f, 3, y, idx), MLK_ERR_ARG);
    CHECK_BAD(mlk_topk_softmax(rows, n, x, NAN, 3, y, idx), MLK_ERR_ARG);
    CHECK_BAD(mlk_topk_softmax(rows, n, x, INFINITY, 3, y, idx), MLK_ERR_ARG);
    /* sampler settings */
    bad_s[0] = sampler(-0.5f, 0, 1.0f, 0.0f);
    bad_s[1] = sampler(NAN, 0, 1.0f, 0.0f);
    bad_s[2] = sampler(1.0f, -1, 1.0f, 0.0f);
    bad_s[3] = sampler(1.0f, 0, 0.0f, 0.0f);
    bad_s[4] = sampler(1.0f, 0, -0.5f, 0.0f);
    bad_s[5] = sampler(1.0f, 0, NAN, 0.0f);
    bad_s[6] = sampler(1.0f, 0, 1.0f, -0.1f);
    bad_s[7] = sampler(1.0f, 0, 1.0f, 1.5f);
    bad_s[8] = sampler(1.0f, 0, 1.0f, NAN);
    for (i = 0; i < 9; i++) CHECK_BAD(mlk_sample(rows, n, x, &bad_s[i], &rng, idx), MLK_ERR_ARG);
    /* NaN, +inf and all -inf rows (the second row is bad: the first must not be written either) */
    for (v = 0; v < 3; v++) {
        float save[16];
        memcpy(save, x + n, sizeof save);
        if (v == 0) x[n + 5] = NAN;
        if (v == 1) x[n + 15] = INFINITY;
        if (v == 2) for (i = 0; i < n; i++) x[n + i] = -INFINITY;
        CHECK_BAD(mlk_softmax(rows, n, x, y), MLK_ERR_VALUE);
        CHECK_BAD(mlk_log_softmax(rows, n, x, y), MLK_ERR_VALUE);
        CHECK_BAD(mlk_topk_softmax(rows, n, x, 1.0f, 4, y, idx), MLK_ERR_VALUE);
        CHECK_BAD(mlk_topk_log_softmax(rows, n, x, n, y, idx), MLK_ERR_VALUE);
        CHECK_BAD(mlk_sample(rows, n, x, &ok_s, &rng, idx), MLK_ERR_VALUE);
        bad_s[0] = sampler(0.0f, 0, 1.0f, 0.0f);
        CHECK_BAD(mlk_sample(rows, n, x, &bad_s[0], &rng, idx), MLK_ERR_VALUE);
        bad_s[0] = sampler(1.0f, 3, 0.5f, 0.1f);
        CHECK_BAD(mlk_sample(rows, n, x, &bad_s[0], &rng, idx), MLK_ERR_VALUE);
        memcpy(x + n, save, sizeof save);
    }
    /* scratch cannot be allocated */
    fail_alloc = 1;
    CHECK_BAD(mlk_softmax(rows, n, x, y), MLK_ERR_NOMEM);
    CHECK_BAD(mlk_topk_softmax(rows, n, x, 1.0f, 4, y, idx), MLK_ERR_NOMEM);
    CHECK_BAD(mlk_sample(rows, n, x, &ok_s, &rng, idx), MLK_ERR_NOMEM);
    fail_alloc = 0;
#undef CHECK_BAD
#undef SAME
#undef SNAP
    mlkt_free(x); mlkt_free(y); mlkt_free(snap); mlkt_free(idx); mlkt_free(isnap);
}

int main(void)
{
    mlkt_file = "test_softmax";
    MLKT_RUN(test_softmax, 1);
    MLKT_RUN(test_topk, 2);
    MLKT_RUN(test_topk_increasing, 3);
    MLKT_RUN(test_topk_few_finite, 10);
    MLKT_RUN(test_topk_signed_zero, 9);
    MLKT_RUN(test_sample_frequencies, 4);
    MLKT_RUN(test_sample_greedy, 5);
    MLKT_RUN(test_sample_rng, 6);
    MLKT_RUN(test_sample_exclusion, 7);
    MLKT_RUN(test_bad_inputs, 8);
    return mlkt_finish();
}

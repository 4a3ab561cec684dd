/* Batched sampling with per-row parameters (mlk_sample_rows): the same
   tokens as mlk_sample where the parameters coincide, penalties and bias
   against a double reference of the HF/vLLM definitions (through the
   returned log-probabilities), empirical frequencies over 1e5 draws per
   row against the filtered distribution, excluded tokens never drawn,
   top-n alternatives against a brute-force sort, a batch above the
   OpenMP threshold (its digest compared across thread counts), bad
   inputs. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define GOLDEN 0x9E3779B97F4A7C15ull

static mlk_sample_row plain_row(float temperature, int top_k, float top_p, float min_p)
{
    mlk_sample_row p;
    memset(&p, 0, sizeof p);
    p.sampler.temperature = temperature;
    p.sampler.top_k = top_k;
    p.sampler.top_p = top_p;
    p.sampler.min_p = min_p;
    return p;
}

/* ---- the one-parameter-set case is mlk_sample ---- */

static void test_same_as_sample(void)
{
    static const float temps[4] = {0.0f, 0.7f, 1.0f, 1.3f};
    const int rows = 9, n = 3000;
    float *logits = mlkt_floats((size_t)rows * n);
    for (int c = 0; c < 24; c++) {
        mlk_sampler s;
        mlk_sample_row p[9];
        uint64_t state = 1000 + (uint64_t)c, rng[9], state_after;
        int32_t a[9], b[9];
        if (c % 12 == 0) /* peaked rows, then flat ones: top_p then needs thousands of candidates */
            mlkt_fill_normal(logits, (size_t)rows * n, c < 12 ? 2.0 : 0.2);
        s.temperature = temps[c % 4];
        s.top_k = c % 3 == 0 ? 40 : 0;
        s.top_p = c % 3 == 1 ? 0.9f : 1.0f;
        s.min_p = c % 12 >= 8 ? 0.05f : 0.0f;
        for (int r = 0; r < rows; r++) {
            p[r] = plain_row(s.temperature, s.top_k, s.top_p, s.min_p);
            rng[r] = state + (uint64_t)r * GOLDEN;
        }
        state_after = state;
        CHECK_INT(mlk_sample(rows, n, logits, &s, &state_after, a), MLK_OK);
        CHECK_INT(mlk_sample_rows(rows, n, logits, p, rng, b, NULL, 0, NULL, NULL), MLK_OK);
        CHECKF(mlkt_same(a, b, sizeof a), "case %d: mlk_sample_rows differs from mlk_sample", c);
        CHECK(rng[0] == state + GOLDEN && rng[rows - 1] == state + (uint64_t)rows * GOLDEN);
        mlkt_digest(b, sizeof b);
    }
    mlkt_free(logits);
}

/* ---- penalties and bias: the log-probabilities of a double reference ---- */

/* HF/vLLM: repetition divides positive and multiplies negative logits of
   every token in the history once; presence subtracts once, frequency once
   per occurrence. The bias comes first. */
static void ref_penalised(const mlk_sample_row *p, const float *x, int n, double *y)
{
    for (int t = 0; t < n; t++) y[t] = x[t];
    for (int i = 0; i < p->n_bias; i++) y[p->bias[i].token] += p->bias[i].bias;
    for (int t = 0; t < n; t++) {
        int c = 0;
        for (int i = 0; i < p->history_len; i++) c += p->history[i] == t;
        if (c == 0) continue;
        if (p->repetition_penalty != 0) y[t] = y[t] > 0 ? y[t] / p->repetition_penalty : y[t] * p->repetition_penalty;
        y[t] -= p->presence_penalty + p->frequency_penalty * c;
    }
}

/* top_idx / top_lp [top_n] against the brute-force top_n of the reference
   logits ref [n] (ties to the lower index), as log-probabilities under
   softmax(ref * inv_t) with max m and normaliser l. */
static void check_top_n(const double *ref, int n, double m, double inv_t, double l, int top_n, const int32_t *top_idx,
                        const float *top_lp)
{
    char *used = (char *)calloc((size_t)n, 1);
    for (int j = 0; j < top_n; j++) {
        int best = -1;
        for (int t = 0; t < n; t++)
            if (!used[t] && (best < 0 || ref[t] > ref[best])) best = t;
        used[best] = 1;
        CHECK_INT(top_idx[j], best);
        CHECK_CLOSE(top_lp[j], (ref[best] - m) * inv_t - log(l), 2e-5, 2e-5);
    }
    free(used);
}

static void test_penalties_logprobs(void)
{
    const int rows = 4, n = 500, top_n = 6;
    float *logits = mlkt_floats((size_t)rows * n), lp[4], top_lp[4 * 6];
    int32_t hist[4][7] = {{3, 3, 9, 100, 3, 0, 499}, {1, 2, 3, 4, 5, 6, 7}, {42, 42, 42, 42, 42, 42, 42}, {0}};
    mlk_logit_bias bias[3] = {{10, 3.5f}, {20, -INFINITY}, {3, -1.0f}};
    mlk_sample_row p[4];
    uint64_t rng[4] = {1, 2, 3, 4};
    int32_t tok[4], top_idx[4 * 6];
    double *ref = (double *)malloc((size_t)n * sizeof(double));
    mlkt_fill_normal(logits, (size_t)rows * n, 3.0);
    p[0] = plain_row(0.8f, 0, 1.0f, 0.0f);
    p[0].repetition_penalty = 1.3f; p[0].history = hist[0]; p[0].history_len = 7;
    p[0].bias = bias; p[0].n_bias = 3;
    p[1] = plain_row(1.0f, 20, 0.95f, 0.0f);
    p[1].presence_penalty = 0.7f; p[1].frequency_penalty = 0.4f; p[1].history = hist[1]; p[1].history_len = 7;
    p[2] = plain_row(0.0f, 0, 1.0f, 0.0f); /* greedy with penalties */
    p[2].repetition_penalty = 2.0f; p[2].frequency_penalty = 0.25f; p[2].history = hist[2]; p[2].history_len = 7;
    p[3] = plain_row(1.5f, 0, 0.5f, 0.1f);
    p[3].bias = bias + 1; p[3].n_bias = 1;
    CHECK_INT(mlk_sample_rows(rows, n, logits, p, rng, tok, lp, top_n, top_idx, top_lp), MLK_OK);
    for (int r = 0; r < rows; r++) {
        const double inv_t = p[r].sampler.temperature == 0.0f ? 1.0 : 1.0 / p[r].sampler.temperature;
        double m = -INFINITY, l = 0;
        ref_penalised(&p[r], logits + (size_t)r * n, n, ref);
        for (int t = 0; t < n; t++) m = ref[t] > m ? ref[t] : m;
        for (int t = 0; t < n; t++) l += exp((ref[t] - m) * inv_t);
        CHECK_CLOSE(lp[r], (ref[tok[r]] - m) * inv_t - log(l), 2e-5, 2e-5);
        CHECKF(tok[r] != 20 || r != 3, "a banned token was drawn");
        check_top_n(ref, n, m, inv_t, l, top_n, top_idx + r * top_n, top_lp + r * top_n);
        if (r == 2) { /* greedy: the argmax of the penalised logits */
            int arg = 0;
            for (int t = 1; t < n; t++) arg = ref[t] > ref[arg] ? t : arg;
            CHECK_INT(tok[r], arg);
        }
    }
    mlkt_digest(tok, sizeof tok);
    free(ref);
    mlkt_free(logits);
}

/* ---- empirical frequencies: 1e5 draws per row against the filtered law ---- */

/* The distribution left by temperature, top_k, top_p, min_p (HF order) over
   the penalised logits, in double, from their definitions. */
static void ref_filtered(const mlk_sample_row *p, const float *x, int n, double *w)
{
    double total = 0, kept = 0, wmax = 0;
    int order[16];
    ref_penalised(p, x, n, w);
    for (int t = 0; t < n; t++) wmax = w[t] > wmax || t == 0 ? w[t] : wmax;
    for (int t = 0; t < n; t++) w[t] = exp((w[t] - wmax) / p->sampler.temperature);
    for (int t = 0; t < n; t++) order[t] = t;
    for (int a = 0; a < n; a++) /* by descending weight, ties to the lower index */
        for (int b = a + 1; b < n; b++)
            if (w[order[b]] > w[order[a]] || (w[order[b]] == w[order[a]] && order[b] < order[a])) {
                int tmp = order[a];
                order[a] = order[b];
                order[b] = tmp;
            }
    if (p->sampler.top_k > 0)
        for (int j = p->sampler.top_k; j < n; j++) w[order[j]] = 0;
    for (int t = 0; t < n; t++) total += w[t];
    if (p->sampler.top_p < 1.0f)
        for (int j = 0; j < n; j++) {
            if (j > 0 && kept >= p->sampler.top_p * total) w[order[j]] = 0;
            kept += w[order[j]];
        }
    for (int t = 0; t < n; t++) /* min_p: relative to the best weight, 1 */
        if (w[t] < p->sampler.min_p) w[t] = 0;
}

static void test_frequencies(void)
{
    const int n = 10, rows = 5, draws = mlkt_quick() ? 20000 : 100000;
    float logits[5 * 10];
    int32_t hist[4] = {2, 2, 7, 0};
    mlk_logit_bias bias[2] = {{4, 1.2f}, {9, -INFINITY}};
    mlk_sample_row p[5];
    uint64_t rng[5];
    long count[5][10];
    for (int i = 0; i < rows * n; i++) logits[i] = (float)(0.35 * (i % 7) - 0.2 * (i % 3));
    p[0] = plain_row(0.7f, 4, 1.0f, 0.0f);
    p[1] = plain_row(1.0f, 0, 0.8f, 0.0f);
    p[2] = plain_row(1.2f, 0, 1.0f, 0.3f);
    p[3] = plain_row(0.9f, 6, 0.9f, 0.1f);
    p[3].repetition_penalty = 1.5f; p[3].presence_penalty = 0.3f; p[3].frequency_penalty = 0.2f;
    p[3].history = hist; p[3].history_len = 4;
    p[4] = plain_row(1.0f, 0, 1.0f, 0.0f);
    p[4].bias = bias; p[4].n_bias = 2;
    for (int r = 0; r < rows; r++) rng[r] = 77 + (uint64_t)r * 1000003;
    memset(count, 0, sizeof count);
    for (int d = 0; d < draws; d++) {
        int32_t tok[5];
        if (mlk_sample_rows(rows, n, logits, p, rng, tok, NULL, 0, NULL, NULL) != MLK_OK) {
            CHECK(!"mlk_sample_rows failed");
            return;
        }
        for (int r = 0; r < rows; r++) count[r][tok[r]]++;
    }
    for (int r = 0; r < rows; r++) {
        double w[10], total = 0, chi2 = 0;
        int cells = 0;
        ref_filtered(&p[r], logits + r * n, n, w);
        for (int t = 0; t < n; t++) total += w[t];
        for (int t = 0; t < n; t++) {
            double want = draws * w[t] / total;
            if (w[t] == 0) {
                CHECKF(count[r][t] == 0, "row %d: excluded token %d drawn %ld times", r, t, count[r][t]);
                continue;
            }
            chi2 += (count[r][t] - want) * (count[r][t] - want) / want;
            cells++;
        }
        /* the 0.1% points of chi-square with cells - 1 degrees of freedom */
        {
            static const double crit[10] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88};
            CHECKF(cells >= 2 && chi2 < crit[cells - 1], "row %d: chi-square %.2f over %d tokens", r, chi2, cells);
        }
    }
}

/* ---- bad inputs ---- */

static void test_bad_input(void)
{
    float logits[2 * 8] = {0, 1, 2, 3, 4, 5, 6, 7, 1, 1, 1, 1, 1, 1, 1, 1};
    int32_t hist[2] = {1, 8}, out[2] = {-7, -7};
    mlk_logit_bias bias[1] = {{3, NAN}};
    mlk_sample_row p[2];
    uint64_t rng[2] = {5, 6};
    p[0] = plain_row(1.0f, 0, 1.0f, 0.0f);
    p[1] = plain_row(1.0f, 0, 1.0f, 0.0f);
    p[1].history = hist; p[1].history_len = 2; /* token 8 >= n */
    CHECK_INT(mlk_sample_rows(2, 8, logits, p, rng, out, NULL, 0, NULL, NULL), MLK_ERR_ARG);
    p[1].history_len = 1;
    p[1].bias = bias; p[1].n_bias = 1;
    CHECK_INT(mlk_sample_rows(2, 8, logits, p, rng, out, NULL, 0, NULL, NULL), MLK_ERR_ARG);
    p[1].n_bias = 0;
    p[1].repetition_penalty = -1.0f;
    CHECK_INT(mlk_sample_rows(2, 8, logits, p, rng, out, NULL, 0, NULL, NULL), MLK_ERR_ARG);
    p[1].repetition_penalty = 1.0f;
    p[1].sampler.top_p = 0.0f;
    CHECK_INT(mlk_sample_rows(2, 8, logits, p, rng, out, NULL, 0, NULL, NULL), MLK_ERR_ARG);
    p[1].sampler.top_p = 1.0f;
    logits[9] = NAN;
    CHECK_INT(mlk_sample_rows(2, 8, logits, p, rng, out, NULL, 0, NULL, NULL), MLK_ERR_VALUE);
    CHECK_INT(mlk_sample_rows(2, 8, logits, p, rng, out, NULL, 9, NULL, NULL), MLK_ERR_NULL);
    CHECK(out[0] == -7 && out[1] == -7 && rng[0] == 5 && rng[1] == 6);
    CHECK_INT(mlk_sample_rows(2, 8, logits, p, rng, out, NULL, -1, NULL, NULL), MLK_ERR_SHAPE);
}

/* ---- a batch above the OpenMP threshold, every row its own parameters ---- */

/* 64 rows x 2000 logits (128000 floats > MLK__PAR_SOFTMAX_FLOATS): the
   rows go to several threads. Logits are multiples of 1/256 and the
   penalties and biases powers of two (or sums of them), so the penalised
   row is exact in float: each row must draw what mlk_sample draws from that
   row (computed here in double) with the same state, its log-probability
   and top-n must match the double reference, banned tokens never appear,
   and every output goes into the digest (tests/check.sh compares it across
   1 to 4 threads; an OpenMP build also compares 1 and 3 threads here). */
static int threaded_call(int rows, int n, const float *logits, const mlk_sample_row *p, const uint64_t *rng0,
                         uint64_t *rng, int32_t *tok, float *lp, int top_n, int32_t *top_idx, float *top_lp)
{
    memcpy(rng, rng0, (size_t)rows * sizeof(uint64_t));
    return mlk_sample_rows(rows, n, logits, p, rng, tok, lp, top_n, top_idx, top_lp);
}

static void test_threaded_rows(void)
{
    enum { ROWS = 64, N = 2000, TOP_N = 5, HIST = 16 };
    float *logits = mlkt_floats((size_t)ROWS * N), *pen = mlkt_floats(N), lp[ROWS], top_lp[ROWS * TOP_N];
    float lp2[ROWS], top_lp2[ROWS * TOP_N];
    double *ref = (double *)malloc((size_t)N * sizeof(double));
    int32_t hist[ROWS][HIST], tok[ROWS], tok2[ROWS], top_idx[ROWS * TOP_N], top_idx2[ROWS * TOP_N], banned[ROWS];
    mlk_logit_bias bias[ROWS][3];
    mlk_sample_row p[ROWS];
    mlk_sampler all;
    uint64_t rng0[ROWS], rng[ROWS], rng2[ROWS], state;
    int32_t batch_a[ROWS], batch_b[ROWS];
    CHECK((size_t)ROWS * N > MLK__PAR_SOFTMAX_FLOATS);
    for (size_t i = 0; i < (size_t)ROWS * N; i++) logits[i] = (float)(floor(mlkt_normal() * 2.5 * 256) / 256);
    for (int r = 0; r < ROWS; r++) {
        const float *x = logits + (size_t)r * N;
        int arg = 0, kind = r % 8;
        for (int t = 1; t < N; t++) arg = x[t] > x[arg] ? t : arg;
        for (int i = 0; i < HIST; i++) hist[r][i] = i % 4 == 0 ? arg : mlkt_int(60); /* repeats, and the argmax */
        bias[r][0].token = arg; bias[r][0].bias = -INFINITY; /* the best token banned */
        bias[r][1].token = mlkt_int(N); bias[r][1].bias = 1.5f;
        bias[r][2].token = mlkt_int(N); bias[r][2].bias = -0.75f;
        banned[r] = -1;
        rng0[r] = mlkt_u64();
        switch (kind) {
        case 0: p[r] = plain_row(0.0f, 0, 1.0f, 0.0f); break;
        case 1: p[r] = plain_row(0.8f, 40, 1.0f, 0.0f); break;
        case 2: p[r] = plain_row(1.0f, 0, 0.9f, 0.0f); break;
        case 3: p[r] = plain_row(1.2f, 0, 1.0f, 0.05f); break;
        case 4:
            p[r] = plain_row(0.7f, 0, 1.0f, 0.0f);
            p[r].repetition_penalty = 2.0f;
            p[r].history = hist[r]; p[r].history_len = HIST;
            break;
        case 5:
            p[r] = plain_row(1.0f, 50, 0.95f, 0.0f);
            p[r].presence_penalty = 0.5f; p[r].frequency_penalty = 0.25f;
            p[r].history = hist[r]; p[r].history_len = HIST;
            p[r].bias = bias[r]; p[r].n_bias = 3; banned[r] = arg;
            break;
        case 6: /* greedy, the argmax banned */
            p[r] = plain_row(0.0f, 0, 1.0f, 0.0f);
            p[r].repetition_penalty = 0.5f; p[r].history = hist[r]; p[r].history_len = HIST;
            p[r].bias = bias[r]; p[r].n_bias = 3; banned[r] = arg;
            break;
        default:
            p[r] = plain_row(1.5f, 0, 0.8f, 0.02f);
            p[r].frequency_penalty = 0.125f; p[r].history = hist[r]; p[r].history_len = HIST;
            p[r].bias = bias[r]; p[r].n_bias = 3; banned[r] = arg;
            break;
        }
    }
    CHECK_INT(threaded_call(ROWS, N, logits, p, rng0, rng, tok, lp, TOP_N, top_idx, top_lp), MLK_OK);
    for (int r = 0; r < ROWS; r++) {
        const double inv_t = p[r].sampler.temperature == 0.0f ? 1.0 : 1.0 / p[r].sampler.temperature;
        double m = -INFINITY, l = 0;
        int rank = 0, inexact = 0;
        int32_t want = -1;
        uint64_t st = rng0[r];
        ref_penalised(&p[r], logits + (size_t)r * N, N, ref);
        for (int t = 0; t < N; t++) {
            pen[t] = (float)ref[t];
            inexact += (double)pen[t] != ref[t];
            m = ref[t] > m ? ref[t] : m;
        }
        CHECKF(inexact == 0, "row %d: %d penalised logits are not exact in float", r, inexact);
        for (int t = 0; t < N; t++) l += exp((ref[t] - m) * inv_t);
        CHECK_INT(mlk_sample(1, N, pen, &p[r].sampler, &st, &want), MLK_OK);
        CHECKF(tok[r] == want, "row %d (kind %d): token %d, mlk_sample on the penalised row %d", r, r % 8, tok[r], want);
        CHECK(rng[r] == rng0[r] + GOLDEN && st == rng[r]);
        CHECKF(tok[r] != banned[r], "row %d: the banned token %d was drawn", r, banned[r]);
        CHECK_CLOSE(lp[r], (ref[tok[r]] - m) * inv_t - log(l), 2e-5, 2e-5);
        for (int t = 0; t < N; t++) rank += ref[t] > ref[tok[r]] || (ref[t] == ref[tok[r]] && t < tok[r]);
        if (p[r].sampler.temperature == 0.0f) CHECK_INT(rank, 0);
        if (p[r].sampler.top_k > 0) CHECKF(rank < p[r].sampler.top_k, "row %d: rank %d", r, rank);
        check_top_n(ref, N, m, inv_t, l, TOP_N, top_idx + r * TOP_N, top_lp + r * TOP_N);
        for (int j = 0; j < TOP_N; j++) CHECK(top_idx[r * TOP_N + j] != banned[r]);
    }
    mlkt_digest(tok, sizeof tok);
    mlkt_digest(lp, sizeof lp);
    mlkt_digest(top_idx, sizeof top_idx);
    mlkt_digest(top_lp, sizeof top_lp);
    mlkt_digest(rng, sizeof rng);
#ifdef _OPENMP
    { /* the same bits on 1 and on 3 threads within this run */
        int saved = omp_get_max_threads();
        for (int nt = 1; nt <= 3; nt += 2) {
            omp_set_num_threads(nt);
            CHECK_INT(threaded_call(ROWS, N, logits, p, rng0, rng2, tok2, lp2, TOP_N, top_idx2, top_lp2), MLK_OK);
            CHECKF(mlkt_same(tok, tok2, sizeof tok) && mlkt_same(lp, lp2, sizeof lp) &&
                   mlkt_same(top_idx, top_idx2, sizeof top_idx) && mlkt_same(top_lp, top_lp2, sizeof top_lp) &&
                   mlkt_same(rng, rng2, sizeof rng), "%d threads differ from %d", nt, saved);
        }
        omp_set_num_threads(saved);
    }
#else
    (void)tok2; (void)lp2; (void)top_lp2; (void)top_idx2; (void)rng2;
#endif
    /* one sampler for the whole batch: mlk_sample_rows with rng[r] = s + r * GOLDEN is mlk_sample */
    all.temperature = 0.9f; all.top_k = 0; all.top_p = 0.95f; all.min_p = 0.01f;
    state = 4242;
    for (int r = 0; r < ROWS; r++) {
        p[r] = plain_row(all.temperature, all.top_k, all.top_p, all.min_p);
        rng[r] = 4242 + (uint64_t)r * GOLDEN;
    }
    CHECK_INT(mlk_sample(ROWS, N, logits, &all, &state, batch_a), MLK_OK);
    CHECK_INT(mlk_sample_rows(ROWS, N, logits, p, rng, batch_b, NULL, 0, NULL, NULL), MLK_OK);
    CHECK(mlkt_same(batch_a, batch_b, sizeof batch_a));
    CHECK(state == 4242 + (uint64_t)ROWS * GOLDEN);
    mlkt_digest(batch_a, sizeof batch_a);
    free(ref);
    mlkt_free(logits); mlkt_free(pen);
}

/* ---- top_p alone over a flat row: the kept set is thousands of tokens ---- */

/* The draws must fall beyond the first few hundred most probable tokens as
   often as the reference's kept set (sorted in full, in double) says. */
static void test_top_p_wide(void)
{
    const int n = 4000, draws = mlkt_quick() ? 2000 : 6000;
    float *logits = mlkt_floats((size_t)n);
    double *w = (double *)malloc((size_t)n * sizeof(double)), total = 0, kept = 0, cut, beyond_p = 0, sigma;
    int *rank = (int *)malloc((size_t)n * sizeof(int)), *order = (int *)malloc((size_t)n * sizeof(int));
    long beyond = 0;
    mlk_sample_row p = plain_row(1.0f, 0, 0.9f, 0.0f);
    uint64_t rng = 99;
    mlkt_fill_normal(logits, (size_t)n, 0.3);
    for (int t = 0; t < n; t++) { w[t] = exp((double)logits[t]); total += w[t]; order[t] = t; }
    for (int a = 1; a < n; a++) { /* insertion sort by descending weight, ties to the lower index */
        int t = order[a], b = a;
        while (b > 0 && (w[order[b - 1]] < w[t] || (w[order[b - 1]] == w[t] && order[b - 1] > t))) {
            order[b] = order[b - 1];
            b--;
        }
        order[b] = t;
    }
    for (int j = 0; j < n; j++) rank[order[j]] = j;
    for (int j = 0; j < n && (j == 0 || kept < 0.9 * total); j++) {
        kept += w[order[j]];
        if (j >= 1000) beyond_p += w[order[j]];
    }
    cut = beyond_p / kept; /* probability that a draw's rank is >= 1000 */
    CHECK(cut > 0.3);
    for (int d = 0; d < draws; d++) {
        int32_t tok;
        if (mlk_sample_rows(1, n, logits, &p, &rng, &tok, NULL, 0, NULL, NULL) != MLK_OK) {
            CHECK(!"mlk_sample_rows failed");
            break;
        }
        beyond += rank[tok] >= 1000;
    }
    sigma = sqrt(draws * cut * (1 - cut));
    CHECKF(fabs(beyond - draws * cut) < 5 * sigma, "draws of rank >= 1000: %ld, expected %.0f +- %.0f", beyond,
           draws * cut, sigma);
    free(w); free(rank); free(order);
    mlkt_free(logits);
}

int main(void)
{
    mlkt_file = "test_sampling";
    MLKT_RUN(test_same_as_sample, 1);
    MLKT_RUN(test_penalties_logprobs, 2);
    MLKT_RUN(test_frequencies, 3);
    MLKT_RUN(test_top_p_wide, 5);
    MLKT_RUN(test_threaded_rows, 6);
    MLKT_RUN(test_bad_input, 4);
    return mlkt_finish();
}

/* libFuzzer target for mlk_sample, mlk_topk_softmax, mlk_softmax and
   mlk_log_softmax: the input picks sampler settings (temperature incl. 0
   and tiny, top_k, top_p, min_p, some of them invalid) and logits with
   -inf, NaN, +inf and huge values. Every status must equal an independent
   reading of the header's rules (MLK_ERR_ARG for bad settings before
   MLK_ERR_VALUE for a NaN / +inf logit or an all -inf row), outputs and
   the rng state must be untouched on error, and on success:
   - each sampled token is one a brute-force reference (double precision,
     the filters in HF order) keeps: never a -inf logit, inside top-k, the
     top-p prefix and min-p (boundaries get a relative slack of 1e-4);
     greedy is exactly the first maximum; and, away from rounding
     boundaries, it is exactly the token the header's documented draw
     (splitmix64 uniform, walk order) picks;
   - top-k lists the k largest logits (ties to the lower index) with
     probabilities within 1e-5 + 1e-4 p of the reference, finite, summing
     to at most 1;
   - softmax rows are finite, within tolerance of the reference and sum to 1.
   Build: make build/fuzz/fuzz_sample; run: tests/extra/fuzz_sample.sh */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <stdio.h>
#include <stdlib.h>

#define MAX_ROWS 3
#define MAX_N 64

#include "fuzz_input.h"

static void fz_fail(const char *what, int row, double got, double want)
{
    fprintf(stderr, "fuzz_sample: %s (row %d: got %.9g, want %.9g)\n", what, row, got, want);
    abort();
}

static float fz_logit(fz_bytes *in)
{
    int b = fz_next(in);
    switch (b % 16) {
    case 0: return -INFINITY;
    case 1: return b == 1 ? NAN : b < 128 ? 1e30f : -1e30f;
    case 2: return b == 2 ? INFINITY : b < 128 ? FLT_MAX : -FLT_MAX;
    case 3: return 3.0f; /* ties */
    default: return (float)(b - 128) / 12.0f;
    }
}

/* The header's rules for a row: 0 fine, 1 a NaN or +inf, 2 all -inf. */
static int fz_row_bad(const float *x, int n)
{
    int all_ninf = 1;
    for (int i = 0; i < n; i++) {
        if (x[i] != x[i] || x[i] == INFINITY) return 1;
        if (x[i] != -INFINITY) all_ninf = 0;
    }
    return all_ninf ? 2 : 0;
}

/* Reference probabilities of softmax(x / t) in double. */
static void fz_probs(const float *x, int n, double t, double *p)
{
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++) {
        p[i] = x[i] == -INFINITY ? 0.0 : exp(((double)x[i] - mx) / t);
        sum += p[i];
    }
    for (int i = 0; i < n; i++) p[i] /= sum;
}

/* order[] = indices by descending logit, ties to the lower index */
static void fz_order(const float *x, int n, int *order)
{
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && (x[order[j]] > x[order[j - 1]]); j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
}

/* Whether the sampler may return token tok for row x. */
static int fz_allowed(const float *x, int n, const mlk_sampler *s, int tok)
{
    double p[MAX_N], kept = 0, total = 0, pmax;
    int order[MAX_N], pos = -1, k;
    const double slack = 1e-4;
    if (tok < 0 || tok >= n || x[tok] == -INFINITY) return 0;
    fz_order(x, n, order);
    if (s->temperature == 0.0f) return tok == order[0];
    fz_probs(x, n, s->temperature, p);
    for (int i = 0; i < n; i++)
        if (order[i] == tok) pos = i;
    k = s->top_k > 0 && s->top_k < n ? s->top_k : n;
    if (pos >= k) return 0; /* exact on logits: ties go to the lower index */
    for (int i = 0; i < k; i++) total += p[order[i]];
    if (s->top_p < 1.0f) /* the smallest prefix reaching top_p of the top-k mass */
        for (int i = 0; i < pos; i++) {
            kept += p[order[i]];
            if (kept >= (double)s->top_p * total * (1 + slack)) return 0;
        }
    pmax = p[order[0]];
    return p[tok] >= (double)s->min_p * pmax * (1 - slack) || p[tok] == pmax;
}

/* The header's uniform draw of row r: splitmix64 of state + (r + 1) * golden. */
static double fz_uniform(uint64_t state, int r)
{
    uint64_t z = state + (uint64_t)(r + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* The token the header's rules pick for draw u, in double: the kept tokens
   walked by descending probability when top_k or top_p is on (else in index
   order), the first whose running weight exceeds u times the kept total.
   Returns -1 when a filter boundary or the draw lies within rounding of a
   decision (then only fz_allowed applies). */
static int fz_expected(const float *x, int n, const mlk_sampler *s, double u)
{
    double w[MAX_N], total = 0, kept_w = 0, target, run = 0;
    int order[MAX_N], keep[MAX_N], n_keep = 0, sorted, k;
    const double tol = 1e-4;
    fz_order(x, n, order);
    if (s->temperature == 0.0f) return order[0];
    for (int i = 0; i < n; i++) w[i] = x[i] == -INFINITY ? 0.0 : exp(((double)x[i] - x[order[0]]) / s->temperature);
    k = s->top_k > 0 && s->top_k < n ? s->top_k : n;
    sorted = k < n || s->top_p < 1.0f;
    for (int i = 0; i < k; i++) total += w[order[i]];
    for (int i = 0; i < n; i++) {
        int t = sorted ? order[i] : i;
        if (sorted && i >= k) break;
        if (sorted && n_keep > 0) {
            double cut = (double)s->top_p * total;
            if (fabs(kept_w - cut) <= tol * total) return -1;
            if (kept_w >= cut) break;
        }
        if (n_keep > 0 || !sorted) {
            if (w[t] > 0 && fabs(w[t] - (double)s->min_p) <= tol) return -1;
            if (!(w[t] >= (double)s->min_p && w[t] > 0)) {
                if (sorted) break;
                continue;
            }
        }
        if (w[t] < 1e-30) return -1; /* the float weight may underflow to 0 */
        keep[n_keep++] = t;
        kept_w += w[t];
    }
    target = u * kept_w;
    for (int i = 0; i < n_keep; i++) {
        run += w[keep[i]];
        if (fabs(run - target) <= tol * kept_w) return -1;
        if (run > target) return keep[i];
    }
    return keep[n_keep - 1];
}

static int fz_sampler_bad(const mlk_sampler *s)
{
    return !(s->temperature >= 0) || s->top_k < 0 || !(s->top_p > 0) || !(s->min_p >= 0 && s->min_p <= 1);
}

/* 1 when every byte of p[0..n) is 0x7F (the sentinel every output starts as) */
static int fz_untouched(const void *p, size_t n)
{
    const uint8_t *b = (const uint8_t *)p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0x7F) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const float temps[] = {0.0f, 1e-30f, 1e-3f, 0.5f, 1.0f, 2.0f, 100.0f, -1.0f, NAN};
    static const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.1f, 0.999f, 2.0f, 0.0f, -0.5f, NAN};
    static const float min_ps[] = {0.0f, 0.05f, 0.5f, 1.0f, 0.0f, 0.2f, -0.1f, 1.5f, NAN};
    fz_bytes in;
    mlk_sampler s;
    float x[MAX_ROWS * MAX_N], y[MAX_ROWS * MAX_N], probs[MAX_ROWS * MAX_N];
    int32_t out[MAX_ROWS], idx[MAX_ROWS * MAX_N];
    int rows, n, k, bad_rows = 0, want;
    uint64_t rng, rng0;
    mlk_status st;
    in.p = data;
    in.n = size;
    rows = 1 + fz_next(&in) % MAX_ROWS;
    n = 1 + fz_next(&in) % MAX_N;
    s.temperature = temps[fz_next(&in) % 9];
    s.top_k = fz_next(&in) % (n + 3) - 1;
    s.top_p = top_ps[fz_next(&in) % 9];
    s.min_p = min_ps[fz_next(&in) % 9];
    k = fz_next(&in) % (n + 2);
    rng0 = rng = (uint64_t)fz_next(&in) * 0x100000001B3ull;
    for (int i = 0; i < rows * n; i++) x[i] = fz_logit(&in);
    for (int r = 0; r < rows; r++) bad_rows |= fz_row_bad(x + r * n, n) != 0;

    /* sampling */
    memset(out, 0x7F, sizeof out);
    st = mlk_sample(rows, n, x, &s, &rng, out);
    want = fz_sampler_bad(&s) ? MLK_ERR_ARG : bad_rows ? MLK_ERR_VALUE : MLK_OK;
    if ((int)st != want) fz_fail("mlk_sample status", -1, st, want);
    if (st != MLK_OK) {
        if (rng != rng0 || !fz_untouched(out, sizeof out)) fz_fail("mlk_sample wrote on error", -1, 0, 0);
    } else {
        if (rng != rng0 + (uint64_t)rows * 0x9E3779B97F4A7C15ull) fz_fail("rng state advance", -1, 0, 0);
        for (int r = 0; r < rows; r++) {
            int exact = fz_expected(x + r * n, n, &s, fz_uniform(rng0, r));
            if (!fz_allowed(x + r * n, n, &s, out[r])) fz_fail("sampled a token the filters exclude", r, out[r], 0);
            if (exact >= 0 && out[r] != exact) fz_fail("sampled token differs from the documented draw", r, out[r], exact);
        }
    }

    /* top-k with the sampler's temperature */
    memset(probs, 0x7F, sizeof probs);
    memset(idx, 0x7F, sizeof idx);
    st = mlk_topk_softmax(rows, n, x, s.temperature, k, probs, idx);
    want = k < 1 || k > n ? MLK_ERR_SHAPE : !(s.temperature > 0) ? MLK_ERR_ARG : bad_rows ? MLK_ERR_VALUE : MLK_OK;
    if ((int)st != want) fz_fail("mlk_topk_softmax status", -1, st, want);
    if (st != MLK_OK && (!fz_untouched(probs, sizeof probs) || !fz_untouched(idx, sizeof idx)))
        fz_fail("mlk_topk_softmax wrote on error", -1, 0, 0);
    for (int r = 0; st == MLK_OK && r < rows; r++) {
        const float *xr = x + r * n;
        double p[MAX_N], sum = 0;
        int order[MAX_N];
        fz_order(xr, n, order);
        fz_probs(xr, n, s.temperature, p);
        for (int j = 0; j < k; j++) {
            int t = idx[r * k + j];
            double got = probs[r * k + j];
            /* the j-th entry is the j-th largest logit (ties to the lower index) */
            if (t != order[j]) fz_fail("top-k index", r, t, order[j]);
            if (!(got >= 0 && got <= 1)) fz_fail("top-k probability range", r, got, p[t]);
            if (!(fabs(got - p[t]) <= 1e-5 + 1e-4 * p[t])) fz_fail("top-k probability", r, got, p[t]);
            sum += got;
        }
        if (!(sum <= 1 + 1e-5)) fz_fail("top-k probabilities sum past 1", r, sum, 1);
    }

    /* full softmax and log-softmax (temperature 1) */
    for (int log_out = 0; log_out < 2; log_out++) {
        memset(y, 0x7F, sizeof y);
        st = log_out ? mlk_log_softmax(rows, n, x, y) : mlk_softmax(rows, n, x, y);
        want = bad_rows ? MLK_ERR_VALUE : MLK_OK;
        if ((int)st != want) fz_fail(log_out ? "mlk_log_softmax status" : "mlk_softmax status", -1, st, want);
        if (st != MLK_OK && !fz_untouched(y, sizeof y)) fz_fail("softmax wrote on error", -1, 0, 0);
        for (int r = 0; st == MLK_OK && r < rows; r++) {
            double p[MAX_N], sum = 0;
            fz_probs(x + r * n, n, 1.0, p);
            for (int i = 0; i < n; i++) {
                double got = log_out ? exp((double)y[r * n + i]) : y[r * n + i];
                if (log_out ? !(y[r * n + i] <= 1e-6f) : !(got >= 0 && got <= 1))
                    fz_fail("softmax value range", r, got, p[i]);
                if (!(fabs(got - p[i]) <= 1e-5 + 1e-4 * p[i])) fz_fail("softmax value", r, got, p[i]);
                if (x[r * n + i] == -INFINITY && (log_out ? y[r * n + i] != -INFINITY : got != 0))
                    fz_fail("masked token with a probability", r, got, 0);
                sum += got;
            }
            if (!(fabs(sum - 1) <= 1e-5 * n)) fz_fail("softmax row sum", r, sum, 1);
        }
    }
    return 0;
}

/* Bad input for every public entry point of mlkern.h: NULL for each
   required pointer, non-positive sizes, size products that overflow,
   inconsistent descriptors, invalid enum values, out-of-range ids and
   NaN/inf where data is read. Each case checks the documented status AND
   that every output (a guarded buffer prefilled with 0xFF, see mlkt_alloc)
   and every KV cache (stats, lengths and loaded contents) is exactly as it
   was: the header's promise that "on error every output and cache is left
   exactly as it was".

   The cases are tables, one per function, whose first row is a valid call
   (expected MLK_OK): every required pointer is then set to NULL in turn on
   that row, so a NULL check can never pass because some other argument was
   bad. Allocations above 256 MiB fail (bi_malloc), so a size the library
   forgets to reject shows up as MLK_ERR_NOMEM instead of exhausting memory.
   Prints "badinput: N cases over M functions", then the cases of each. */
#include <stdlib.h>
static void *bi_malloc(size_t n);
#define MLKERN_MALLOC(n) bi_malloc(n)
#define MLKERN_FREE(p) free(p)
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static void *bi_malloc(size_t n)
{
    return n > ((size_t)1 << 28) ? NULL : malloc(n);
}

/* ---- the case machinery ---- */

#define BI_NOOP (-1)  /* want: MLK_OK and every output untouched (a documented no-op) */
#define BI_MAX_BUF 24
#define BI_MAX_FN 64

static void *bi_outs[BI_MAX_BUF];   /* outputs of the current case: must stay 0xFF */
static size_t bi_out_bytes[BI_MAX_BUF];
static int bi_n_out;
static void *bi_ins[BI_MAX_BUF];    /* inputs of the current case, freed at its end */
static int bi_n_in;
static const char *bi_fns[BI_MAX_FN];
static int bi_n_fns, bi_cases, bi_fn_cases[BI_MAX_FN];

/* A cache the current case must leave unchanged, and its snapshot. */
static const mlk_kv_cache *bi_cache;
static unsigned char *bi_snap;
static size_t bi_snap_bytes;

/* An output buffer of `bytes` (at least 1), 0xFF-filled between canaries. */
static void *bi_out(size_t bytes)
{
    void *p = mlkt_alloc(bytes ? bytes : 1);
    if (bi_n_out == BI_MAX_BUF) { fprintf(stderr, "badinput: too many outputs\n"); exit(2); }
    bi_outs[bi_n_out] = p;
    bi_out_bytes[bi_n_out++] = bytes ? bytes : 1;
    return p;
}

static float *bi_outf(size_t n) { return (float *)bi_out(n * sizeof(float)); }

/* n elements (1 << 20 at most; 0 means a size the call must reject before
   reading, which gets a small buffer) of finite values in [-2, 2). */
static float *bi_in(size_t n)
{
    size_t i, count = n ? n : 16;
    float *p = (float *)malloc(count * sizeof(float));
    if (!p || bi_n_in == BI_MAX_BUF) { fprintf(stderr, "badinput: inputs\n"); exit(2); }
    for (i = 0; i < count; i++) p[i] = (float)mlkt_uniform(-2, 2);
    bi_ins[bi_n_in++] = p;
    return p;
}

/* Element count a * b * c * d when every factor is in [1, 2^20] and the
   product is at most 2^20, else 0 (an invalid or huge shape). */
static size_t bi_n(long long a, long long b, long long c, long long d)
{
    long long f[4];
    size_t n = 1;
    int i;
    f[0] = a; f[1] = b; f[2] = c; f[3] = d;
    for (i = 0; i < 4; i++) {
        if (f[i] < 1 || f[i] > (1 << 20)) return 0;
        n *= (size_t)f[i];
        if (n > ((size_t)1 << 20)) return 0;
    }
    return n;
}

/* Everything observable about a fixture cache (2 layers, rows of 10
   floats, ids below 8): stats, each id's length, and the loaded K/V of every
   live sequence and layer. Returns a malloc'd blob of *bytes. */
static unsigned char *bi_kv_state(const mlk_kv_cache *c, size_t *bytes)
{
    mlk_kv_stats st;
    size_t used;
    unsigned char *blob;
    int s, l;
    memset(&st, 0, sizeof st); /* padding compares equal too */
    mlk_kv_get_stats(c, &st);
    used = sizeof st;
    blob = (unsigned char *)malloc(used + 8 * sizeof(int));
    memcpy(blob, &st, sizeof st);
    for (s = 0; s < 8; s++) {
        int len = mlk_kv_seq_len(c, s);
        memcpy(blob + used, &len, sizeof len);
        used += sizeof len;
    }
    for (s = 0; s < 8; s++) {
        int len = mlk_kv_seq_len(c, s);
        size_t n = (size_t)(len > 0 ? len : 0) * 10 * sizeof(float);
        for (l = 0; l < 2 && len > 0; l++) {
            blob = (unsigned char *)realloc(blob, used + 2 * n);
            mlk_kv_load(c, s, l, 0, len, (float *)(void *)(blob + used), (float *)(void *)(blob + used + n));
            used += 2 * n;
        }
    }
    *bytes = used;
    return blob;
}

/* The current case must leave c unchanged (on error). */
static void bi_watch(const mlk_kv_cache *c)
{
    bi_cache = c;
    bi_snap = bi_kv_state(c, &bi_snap_bytes);
}

static void bi_note_fn(const char *fn)
{
    int i;
    for (i = 0; i < bi_n_fns; i++)
        if (strcmp(bi_fns[i], fn) == 0) break;
    if (i == bi_n_fns && bi_n_fns < BI_MAX_FN) bi_fns[bi_n_fns++] = fn;
    if (i < bi_n_fns) bi_fn_cases[i]++;
}

static int bi_all_ff(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++)
        if (b[i] != 0xFF) return 0;
    return 1;
}

/* Records one check of the current case; the harness prints only its first
   30 failures, so later ones are printed here (each names its case). */
static void bi_check(int ok, const char *msg)
{
    if (!ok && mlkt_failed >= 30) fprintf(stderr, "FAIL %s\n", msg);
    mlkt_report(ok, __FILE__, __LINE__, "badinput", msg);
}

/* Ends a case: status, outputs and cache against `want`, then frees. */
static void bi_end(const char *fn, const char *what, int got, int want)
{
    char msg[256];
    int i, untouched = want != MLK_OK;
    bi_cases++;
    bi_note_fn(fn);
    snprintf(msg, sizeof msg, "%s: %s: want %s, got %s", fn, what,
             mlk_status_str((mlk_status)(want == BI_NOOP ? MLK_OK : want)), mlk_status_str((mlk_status)got));
    bi_check(got == (want == BI_NOOP ? MLK_OK : want), msg);
    for (i = 0; i < bi_n_out; i++) {
        snprintf(msg, sizeof msg, "%s: %s: output %d %s", fn, what, i,
                 mlkt_guard_ok(bi_outs[i]) ? "written" : "canaries overwritten");
        bi_check(mlkt_guard_ok(bi_outs[i]) && (!untouched || bi_all_ff(bi_outs[i], bi_out_bytes[i])), msg);
        free((unsigned char *)bi_outs[i] - 16 - MLKT_GUARD * 4);
    }
    if (bi_cache && untouched) {
        size_t n;
        unsigned char *now = bi_kv_state(bi_cache, &n);
        snprintf(msg, sizeof msg, "%s: %s: cache changed", fn, what);
        bi_check(n == bi_snap_bytes && memcmp(now, bi_snap, n) == 0, msg);
        free(now);
    }
    free(bi_snap);
    bi_snap = NULL;
    bi_cache = NULL;
    for (i = 0; i < bi_n_in; i++) free(bi_ins[i]);
    bi_n_in = bi_n_out = 0;
}

/* A check of a function that returns a value, not a status. */
static void bi_value(const char *fn, const char *what, long long got, long long want)
{
    char msg[256];
    bi_cases++;
    bi_note_fn(fn);
    snprintf(msg, sizeof msg, "%s: %s: want %lld, got %lld", fn, what, want, got);
    bi_check(got == want, msg);
}

static const char *const bi_null_names[] = {
    "NULL arg 1", "NULL arg 2", "NULL arg 3", "NULL arg 4", "NULL arg 5", "NULL arg 6",
    "NULL arg 7", "NULL arg 8", "NULL arg 9", "NULL arg 10", "NULL arg 11", "NULL arg 12"};

/* Pointer argument i (counted from 0 over the pointers of the call) is
   NULL when bit i of `nulls` is set. */
#define BI_P(nulls, i, p) (((nulls) >> (i)) & 1u ? NULL : (p))

/* Runs every row of a case table, then the NULL sweep over the valid
   first row: each bit of `required` is one pointer that must not be NULL. */
#define BI_TABLE(fn, table, runner, required) do { \
    size_t i_; unsigned b_; \
    for (i_ = 0; i_ < sizeof(table) / sizeof((table)[0]); i_++) \
        bi_end(fn, (table)[i_].what, runner(&(table)[i_], (table)[i_].nulls), (table)[i_].want); \
    for (b_ = 0; b_ < 12; b_++) \
        if (((required) >> b_) & 1u) bi_end(fn, bi_null_names[b_], runner(&(table)[0], 1u << b_), MLK_ERR_NULL); \
} while (0)

/* Data patterns for inputs that are read. */
enum { BI_FINITE, BI_NAN, BI_PINF, BI_NINF_ROW, BI_NINF_ONE, BI_HUGE };

/* Applies pattern `kind` to the last row (of n) of x. */
static void bi_pattern(float *x, size_t rows, size_t n, int kind)
{
    float *row = x + (rows - 1) * n;
    size_t i;
    if (kind == BI_NAN) row[n / 2] = NAN;
    if (kind == BI_PINF) row[n / 2] = INFINITY;
    if (kind == BI_NINF_ONE) row[n / 2] = -INFINITY;
    if (kind == BI_NINF_ROW)
        for (i = 0; i < n; i++) row[i] = -INFINITY;
    if (kind == BI_HUGE) row[n / 2] = FLT_MAX;
}

/* ---- gemm ---- */

typedef struct gemm_case {
    const char *what;
    int ta, tb, m, n, k, lda, ldb, ldc;
    unsigned nulls;
    int want;
} gemm_case;

static const gemm_case gemm_cases[] = {
    {"valid (packed path)", 0, 0, 9, 5, 4, 4, 5, 5, 0, MLK_OK},
    {"valid decode path", 0, 1, 2, 5, 4, 4, 4, 5, 0, MLK_OK},
    {"m < 0", 0, 0, -1, 5, 4, 4, 5, 5, 0, MLK_ERR_SHAPE},
    {"n < 0", 0, 0, 9, -1, 4, 4, 5, 5, 0, MLK_ERR_SHAPE},
    {"k < 0", 0, 0, 9, 5, -1, 4, 5, 5, 0, MLK_ERR_SHAPE},
    {"INT_MIN sizes", 0, 0, INT_MIN, INT_MIN, INT_MIN, 4, 5, 5, 0, MLK_ERR_SHAPE},
    {"lda < k", 0, 0, 9, 5, 4, 3, 5, 5, 0, MLK_ERR_SHAPE},
    {"lda < m transposed", 1, 0, 9, 5, 4, 8, 5, 5, 0, MLK_ERR_SHAPE},
    {"ldb < n", 0, 0, 9, 5, 4, 4, 4, 5, 0, MLK_ERR_SHAPE},
    {"ldb < k transposed", 0, 1, 9, 5, 4, 4, 3, 5, 0, MLK_ERR_SHAPE},
    {"ldc < n", 0, 0, 9, 5, 4, 4, 5, 4, 0, MLK_ERR_SHAPE},
    {"ldc 0", 0, 0, 9, 5, 4, 4, 5, 0, 0, MLK_ERR_SHAPE},
    {"lda negative", 0, 0, 9, 5, 4, -4, 5, 5, 0, MLK_ERR_SHAPE},
    {"m 0 is a no-op", 0, 0, 0, 5, 4, 4, 5, 5, 0, BI_NOOP},
    {"n 0 is a no-op", 0, 0, 9, 0, 4, 4, 1, 1, 0, BI_NOOP},
    {"k 0 reads neither A nor B", 0, 0, 9, 5, 0, 1, 5, 5, 3u, MLK_OK},
};

static mlk_status run_gemm(const gemm_case *t, unsigned nulls)
{
    size_t a_n = bi_n(t->ta ? t->k : t->m, t->lda, 1, 1), b_n = bi_n(t->tb ? t->n : t->k, t->ldb, 1, 1);
    const float *a = bi_in(a_n), *b = bi_in(b_n);
    float *c = bi_outf(bi_n(t->m, t->ldc, 1, 1));
    return mlk_sgemm(t->ta, t->tb, t->m, t->n, t->k, 1.0f, BI_P(nulls, 0, a), t->lda, BI_P(nulls, 1, b), t->ldb,
                     0.0f, BI_P(nulls, 2, c), t->ldc);
}

/* ---- norms ---- */

typedef struct norm_case {
    const char *what;
    int rows, dim;
    float eps;
    unsigned nulls;
    int want;
} norm_case;

static const norm_case norm_cases[] = {
    {"valid", 3, 7, 1e-5f, 0, MLK_OK},
    {"rows 0", 0, 7, 1e-5f, 0, MLK_ERR_SHAPE},
    {"rows < 0", -3, 7, 1e-5f, 0, MLK_ERR_SHAPE},
    {"dim 0", 3, 0, 1e-5f, 0, MLK_ERR_SHAPE},
    {"dim INT_MIN", 3, INT_MIN, 1e-5f, 0, MLK_ERR_SHAPE},
};

/* eps is read only by the forward passes */
static const norm_case norm_fwd_cases[] = {
    {"valid", 3, 7, 1e-5f, 0, MLK_OK},
    {"eps NaN", 3, 7, NAN, 0, MLK_ERR_ARG},
    {"eps < 0", 3, 7, -1.0f, 0, MLK_ERR_ARG},
    {"eps +inf", 3, 7, INFINITY, 0, MLK_ERR_ARG},
};

/* layernorm_fwd pointers: x gamma beta y mean rstd */
static mlk_status run_ln_fwd(const norm_case *t, unsigned nulls)
{
    size_t n = bi_n(t->rows, t->dim, 1, 1), r = bi_n(t->rows, 1, 1, 1), d = bi_n(t->dim, 1, 1, 1);
    return mlk_layernorm_fwd(t->rows, t->dim, BI_P(nulls, 0, bi_in(n)), BI_P(nulls, 1, bi_in(d)),
                             BI_P(nulls, 2, bi_in(d)), t->eps, BI_P(nulls, 3, bi_outf(n)),
                             BI_P(nulls, 4, bi_outf(r)), BI_P(nulls, 5, bi_outf(r)));
}

/* rstd (and mean) inputs of the backward passes must be finite positive */
static float *bi_in_rstd(size_t n)
{
    float *p = bi_in(n);
    size_t i;
    for (i = 0; i < (n ? n : 16); i++) p[i] = 1.0f + fabsf(p[i]);
    return p;
}

/* layernorm_bwd pointers: x gamma mean rstd dy dx dgamma dbeta */
static mlk_status run_ln_bwd(const norm_case *t, unsigned nulls)
{
    size_t n = bi_n(t->rows, t->dim, 1, 1), r = bi_n(t->rows, 1, 1, 1), d = bi_n(t->dim, 1, 1, 1);
    return mlk_layernorm_bwd(t->rows, t->dim, BI_P(nulls, 0, bi_in(n)), BI_P(nulls, 1, bi_in(d)),
                             BI_P(nulls, 2, bi_in(r)), BI_P(nulls, 3, bi_in_rstd(r)), BI_P(nulls, 4, bi_in(n)),
                             BI_P(nulls, 5, bi_outf(n)), BI_P(nulls, 6, bi_outf(d)), BI_P(nulls, 7, bi_outf(d)));
}

/* rmsnorm_fwd pointers: x gamma y rstd */
static mlk_status run_rms_fwd(const norm_case *t, unsigned nulls)
{
    size_t n = bi_n(t->rows, t->dim, 1, 1), r = bi_n(t->rows, 1, 1, 1), d = bi_n(t->dim, 1, 1, 1);
    return mlk_rmsnorm_fwd(t->rows, t->dim, BI_P(nulls, 0, bi_in(n)), BI_P(nulls, 1, bi_in(d)), t->eps,
                           BI_P(nulls, 2, bi_outf(n)), BI_P(nulls, 3, bi_outf(r)));
}

/* rmsnorm_bwd pointers: x gamma rstd dy dx dgamma */
static mlk_status run_rms_bwd(const norm_case *t, unsigned nulls)
{
    size_t n = bi_n(t->rows, t->dim, 1, 1), r = bi_n(t->rows, 1, 1, 1), d = bi_n(t->dim, 1, 1, 1);
    return mlk_rmsnorm_bwd(t->rows, t->dim, BI_P(nulls, 0, bi_in(n)), BI_P(nulls, 1, bi_in(d)),
                           BI_P(nulls, 2, bi_in_rstd(r)), BI_P(nulls, 3, bi_in(n)), BI_P(nulls, 4, bi_outf(n)),
                           BI_P(nulls, 5, bi_outf(d)));
}

static void test_norms(void)
{
    static const norm_case optional[] = {{"valid", 3, 7, 1e-5f, 0, MLK_OK}};
    BI_TABLE("mlk_layernorm_fwd", norm_cases, run_ln_fwd, 0x09u);
    BI_TABLE("mlk_layernorm_fwd", norm_fwd_cases, run_ln_fwd, 0u);
    /* gamma, beta, mean and rstd are optional */
    bi_end("mlk_layernorm_fwd", "optional pointers NULL", run_ln_fwd(&optional[0], 0x36u), MLK_OK);
    BI_TABLE("mlk_layernorm_bwd", norm_cases, run_ln_bwd, 0x3Du);
    bi_end("mlk_layernorm_bwd", "gamma, dgamma, dbeta NULL", run_ln_bwd(&optional[0], 0xC2u), MLK_OK);
    BI_TABLE("mlk_rmsnorm_fwd", norm_cases, run_rms_fwd, 0x05u);
    BI_TABLE("mlk_rmsnorm_fwd", norm_fwd_cases, run_rms_fwd, 0u);
    bi_end("mlk_rmsnorm_fwd", "gamma, rstd NULL", run_rms_fwd(&optional[0], 0x0Au), MLK_OK);
    BI_TABLE("mlk_rmsnorm_bwd", norm_cases, run_rms_bwd, 0x1Du);
    bi_end("mlk_rmsnorm_bwd", "gamma, dgamma NULL", run_rms_bwd(&optional[0], 0x22u), MLK_OK);
}

/* ---- softmax, top-k, sampling ---- */

typedef struct sm_case {
    const char *what;
    int rows, n, k;
    float temperature;
    int data;  /* BI_* pattern in the last row */
    unsigned nulls;
    int want;
} sm_case;

static const sm_case softmax_cases[] = {
    {"valid", 2, 9, 0, 1.0f, BI_FINITE, 0, MLK_OK},
    {"one -inf logit", 2, 9, 0, 1.0f, BI_NINF_ONE, 0, MLK_OK},
    {"rows 0", 0, 9, 0, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"rows < 0", -2, 9, 0, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n 0", 2, 0, 0, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n INT_MIN", 2, INT_MIN, 0, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"NaN in the last row", 2, 9, 0, 1.0f, BI_NAN, 0, MLK_ERR_VALUE},
    {"+inf in the last row", 2, 9, 0, 1.0f, BI_PINF, 0, MLK_ERR_VALUE},
    {"last row all -inf", 2, 9, 0, 1.0f, BI_NINF_ROW, 0, MLK_ERR_VALUE},
    {"NaN, one long row", 1, 1000, 0, 1.0f, BI_NAN, 0, MLK_ERR_VALUE},
};

static mlk_status run_softmax(const sm_case *t, unsigned nulls, int log_out)
{
    size_t n = bi_n(t->rows, t->n, 1, 1);
    float *x = bi_in(n), *y = bi_outf(n);
    if (n) bi_pattern(x, (size_t)t->rows, (size_t)t->n, t->data);
    return log_out ? mlk_log_softmax(t->rows, t->n, BI_P(nulls, 0, x), BI_P(nulls, 1, y))
                   : mlk_softmax(t->rows, t->n, BI_P(nulls, 0, x), BI_P(nulls, 1, y));
}
static mlk_status run_softmax0(const sm_case *t, unsigned nulls) { return run_softmax(t, nulls, 0); }
static mlk_status run_softmax1(const sm_case *t, unsigned nulls) { return run_softmax(t, nulls, 1); }

static const sm_case topk_cases[] = {
    {"valid", 2, 9, 3, 0.7f, BI_FINITE, 0, MLK_OK},
    {"k = n", 2, 9, 9, 0.7f, BI_FINITE, 0, MLK_OK},
    {"-inf logits", 2, 9, 9, 0.7f, BI_NINF_ONE, 0, MLK_OK},
    {"rows 0", 0, 9, 3, 0.7f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n < 0", 2, -9, 3, 0.7f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"k 0", 2, 9, 0, 0.7f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"k < 0", 2, 9, -1, 0.7f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"k > n", 2, 9, 10, 0.7f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"temperature 0", 2, 9, 3, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"temperature < 0", 2, 9, 3, -1.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"temperature NaN", 2, 9, 3, NAN, BI_FINITE, 0, MLK_ERR_ARG},
    /* the header asks only for temperature > 0: a denormal one is valid
       (it selects the argmax) */
    {"temperature 1e-40: 1/T overflows (documented bound 2.94e-39)", 2, 9, 3, 1e-40f, BI_FINITE, 0, MLK_ERR_ARG},
    {"temperature 3e-39: 1/T finite", 2, 9, 3, 3e-39f, BI_FINITE, 0, MLK_OK},
    {"temperature 1e-30", 2, 9, 3, 1e-30f, BI_FINITE, 0, MLK_OK},
    {"NaN logit", 2, 9, 3, 0.7f, BI_NAN, 0, MLK_ERR_VALUE},
    {"+inf logit", 2, 9, 3, 0.7f, BI_PINF, 0, MLK_ERR_VALUE},
    {"row all -inf", 2, 9, 3, 0.7f, BI_NINF_ROW, 0, MLK_ERR_VALUE},
};

/* the same without the temperature rows (log-softmax has none) */
static const sm_case topk_log_cases[] = {
    {"valid", 2, 9, 3, 1.0f, BI_FINITE, 0, MLK_OK},
    {"-inf logits", 2, 9, 9, 1.0f, BI_NINF_ONE, 0, MLK_OK},
    {"rows 0", 0, 9, 3, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n < 0", 2, -9, 3, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"k 0", 2, 9, 0, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"k > n", 2, 9, 10, 1.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"NaN logit", 2, 9, 3, 1.0f, BI_NAN, 0, MLK_ERR_VALUE},
    {"+inf logit", 2, 9, 3, 1.0f, BI_PINF, 0, MLK_ERR_VALUE},
    {"row all -inf", 2, 9, 3, 1.0f, BI_NINF_ROW, 0, MLK_ERR_VALUE},
};

/* topk pointers: logits probs idx */
static mlk_status run_topk(const sm_case *t, unsigned nulls, int log_out)
{
    size_t n = bi_n(t->rows, t->n, 1, 1), out = bi_n(t->rows, t->k, 1, 1);
    float *x = bi_in(n), *p = bi_outf(out);
    int32_t *idx = (int32_t *)bi_out(out * sizeof(int32_t));
    if (n) bi_pattern(x, (size_t)t->rows, (size_t)t->n, t->data);
    return log_out ? mlk_topk_log_softmax(t->rows, t->n, BI_P(nulls, 0, x), t->k, BI_P(nulls, 1, p), BI_P(nulls, 2, idx))
                   : mlk_topk_softmax(t->rows, t->n, BI_P(nulls, 0, x), t->temperature, t->k, BI_P(nulls, 1, p),
                                      BI_P(nulls, 2, idx));
}
static mlk_status run_topk0(const sm_case *t, unsigned nulls) { return run_topk(t, nulls, 0); }
static mlk_status run_topk1(const sm_case *t, unsigned nulls) { return run_topk(t, nulls, 1); }

typedef struct sample_case {
    const char *what;
    int rows, n;
    float temperature;
    int top_k;
    float top_p, min_p;
    int data;
    unsigned nulls;
    int want;
} sample_case;

static const sample_case sample_cases[] = {
    {"valid", 2, 9, 0.8f, 3, 0.9f, 0.05f, BI_FINITE, 0, MLK_OK},
    {"greedy", 2, 9, 0.0f, 0, 1.0f, 0.0f, BI_FINITE, 0, MLK_OK},
    {"top_k >= n is off", 2, 9, 0.8f, 100, 1.0f, 0.0f, BI_FINITE, 0, MLK_OK},
    {"masked tokens", 2, 9, 0.8f, 0, 1.0f, 0.0f, BI_NINF_ONE, 0, MLK_OK},
    {"min_p 1", 2, 9, 0.8f, 0, 1.0f, 1.0f, BI_FINITE, 0, MLK_OK},
    {"temperature 1e-40: 1/T overflows (documented bound 2.94e-39)", 2, 9, 1e-40f, 0, 1.0f, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"temperature 3e-39: 1/T finite", 2, 9, 3e-39f, 0, 1.0f, 0.0f, BI_FINITE, 0, MLK_OK},
    {"rows 0", 0, 9, 0.8f, 0, 1.0f, 0.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n < 0", 2, -1, 0.8f, 0, 1.0f, 0.0f, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"temperature < 0", 2, 9, -0.5f, 0, 1.0f, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"temperature NaN", 2, 9, NAN, 0, 1.0f, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"top_k < 0", 2, 9, 0.8f, -1, 1.0f, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"top_p 0", 2, 9, 0.8f, 0, 0.0f, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"top_p < 0", 2, 9, 0.8f, 0, -0.5f, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"top_p NaN", 2, 9, 0.8f, 0, NAN, 0.0f, BI_FINITE, 0, MLK_ERR_ARG},
    {"min_p < 0", 2, 9, 0.8f, 0, 1.0f, -0.1f, BI_FINITE, 0, MLK_ERR_ARG},
    {"min_p > 1", 2, 9, 0.8f, 0, 1.0f, 1.5f, BI_FINITE, 0, MLK_ERR_ARG},
    {"min_p NaN", 2, 9, 0.8f, 0, 1.0f, NAN, BI_FINITE, 0, MLK_ERR_ARG},
    {"NaN logit", 2, 9, 0.8f, 0, 1.0f, 0.0f, BI_NAN, 0, MLK_ERR_VALUE},
    {"NaN logit, greedy", 2, 9, 0.0f, 0, 1.0f, 0.0f, BI_NAN, 0, MLK_ERR_VALUE},
    {"NaN logit, top-k", 2, 9, 0.8f, 2, 1.0f, 0.0f, BI_NAN, 0, MLK_ERR_VALUE},
    {"NaN logit, top-p", 2, 9, 0.8f, 0, 0.5f, 0.0f, BI_NAN, 0, MLK_ERR_VALUE},
    {"+inf logit", 2, 9, 0.8f, 0, 1.0f, 0.0f, BI_PINF, 0, MLK_ERR_VALUE},
    {"row all -inf", 2, 9, 0.8f, 0, 1.0f, 0.0f, BI_NINF_ROW, 0, MLK_ERR_VALUE},
    {"row all -inf, greedy", 2, 9, 0.0f, 0, 1.0f, 0.0f, BI_NINF_ROW, 0, MLK_ERR_VALUE},
};

/* sample pointers: logits s rng_state out; the rng state is an output too */
static mlk_status run_sample(const sample_case *t, unsigned nulls)
{
    size_t n = bi_n(t->rows, t->n, 1, 1);
    float *x = bi_in(n);
    mlk_sampler *s = (mlk_sampler *)bi_in(4);
    uint64_t *rng = (uint64_t *)bi_out(sizeof(uint64_t));
    int32_t *out = (int32_t *)bi_out(bi_n(t->rows, 1, 1, 1) * sizeof(int32_t));
    if (n) bi_pattern(x, (size_t)t->rows, (size_t)t->n, t->data);
    s->temperature = t->temperature;
    s->top_k = t->top_k;
    s->top_p = t->top_p;
    s->min_p = t->min_p;
    return mlk_sample(t->rows, t->n, BI_P(nulls, 0, x), BI_P(nulls, 1, s), BI_P(nulls, 2, rng), BI_P(nulls, 3, out));
}

static void test_softmax(void)
{
    BI_TABLE("mlk_softmax", softmax_cases, run_softmax0, 0x3u);
    BI_TABLE("mlk_log_softmax", softmax_cases, run_softmax1, 0x3u);
    BI_TABLE("mlk_topk_softmax", topk_cases, run_topk0, 0x7u);
    BI_TABLE("mlk_topk_log_softmax", topk_log_cases, run_topk1, 0x7u);
    BI_TABLE("mlk_sample", sample_cases, run_sample, 0xFu);
}

/* ---- attention ---- */

typedef struct attn_case {
    const char *what;
    int batch, heads, kv_heads, len_q, len_kv, head_dim;
    float scale;
    int causal, window;
    float softcap;
    int kv_len0, kv_len1;   /* -100: kv_len NULL */
    int tree;               /* 0 none, 1 valid chain+branch, 2 parent[i] == i, 3 parent < -1, 4 parent[0] = 0 */
    int layout, tile_q, tile_kv;
    unsigned nulls;
    int want;
} attn_case;

#define NOKV (-100)
static const attn_case attn_cases[] = {
    {"valid", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_OK},
    {"valid: BNHD, window INT_MAX, softcap", 2, 4, 2, 5, 7, 8, 0.3f, 1, INT_MAX, 5.0f, NOKV, 0, 0, 1, 3, 2, 0, MLK_OK},
    {"valid: kv_len entries 0 and full", 2, 4, 1, 5, 7, 8, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, MLK_OK},
    {"valid: tree", 2, 4, 4, 5, 7, 8, 0, 0, 2, 0, 5, 7, 1, 0, 0, 0, 0, MLK_OK},
    {"batch 0", 0, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"batch < 0", -1, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"heads 0", 2, 0, 0, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"kv_heads < 0", 2, 4, -2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"heads % kv_heads != 0", 2, 4, 3, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"kv_heads > heads", 2, 4, 8, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"len_q 0", 2, 4, 2, 0, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"len_kv < 0", 2, 4, 2, 5, -7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"head_dim 0", 2, 4, 2, 5, 7, 0, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"tile_q < 0", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, -1, 0, 0, MLK_ERR_SHAPE},
    {"tile_kv < 0", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, -1, 0, MLK_ERR_SHAPE},
    {"layout 2", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 2, 0, 0, 0, MLK_ERR_ARG},
    {"layout -1", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, -1, 0, 0, 0, MLK_ERR_ARG},
    {"scale NaN", 2, 4, 2, 5, 7, 8, NAN, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_ARG},
    {"scale +inf", 2, 4, 2, 5, 7, 8, INFINITY, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_ARG},
    {"window < 0", 2, 4, 2, 5, 7, 8, 0, 1, -1, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_ARG},
    {"softcap NaN", 2, 4, 2, 5, 7, 8, 0, 1, 0, NAN, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_ARG},
    {"softcap < 0", 2, 4, 2, 5, 7, 8, 0, 1, 0, -1.0f, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_ARG},
    {"softcap +inf", 2, 4, 2, 5, 7, 8, 0, 1, 0, INFINITY, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_ARG},
    {"kv_len entry < 0", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, 3, -1, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"kv_len entry > len_kv", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, 8, 3, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"kv_len entry INT_MIN", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, 3, INT_MIN, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"tree parent[i] == i", 2, 4, 2, 5, 7, 8, 0, 0, 0, 0, NOKV, 0, 2, 0, 0, 0, 0, MLK_ERR_TREE},
    {"tree parent < -1", 2, 4, 2, 5, 7, 8, 0, 0, 0, 0, NOKV, 0, 3, 0, 0, 0, 0, MLK_ERR_TREE},
    {"tree parent[0] = 0", 2, 4, 2, 5, 7, 8, 0, 0, 0, 0, NOKV, 0, 4, 0, 0, 0, 0, MLK_ERR_TREE},
    {"tree with kv_len < len_q", 2, 4, 2, 5, 7, 8, 0, 0, 0, 0, 7, 4, 1, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"tree with len_kv < len_q", 2, 4, 2, 5, 3, 8, 0, 0, 0, 0, NOKV, 0, 1, 0, 0, 0, 0, MLK_ERR_SHAPE},
    /* 2^16 in each of four dimensions: the element count overflows size_t */
    {"size_t overflow of B*H*N*D", 65536, 65536, 0, 65536, 65536, 65536, 0, 0, 0, 0, NOKV, 0, 0, 0, 0, 0, 0,
     MLK_ERR_OVERFLOW},
    {"head_dim INT_MAX", 1, 1, 0, 1, 1, INT_MAX, 0, 0, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_ERR_OVERFLOW},
    /* 2^32 tasks (batch x kv heads x query tiles) overflow an int */
    {"int overflow of the task count", 65536, 65536, 0, 1, 1, 1, 0, 0, 0, 0, NOKV, 0, 0, 0, 0, 0, 0,
     MLK_ERR_OVERFLOW},
};

static void attn_desc_of(const attn_case *t, mlk_attn_desc *d, int *kv_len, int *parent)
{
    static const int tree_valid[5] = {-1, 0, 0, 1, -1};
    int i;
    memset(d, 0, sizeof *d);
    d->batch = t->batch;
    d->heads = t->heads;
    d->kv_heads = t->kv_heads;
    d->len_q = t->len_q;
    d->len_kv = t->len_kv;
    d->head_dim = t->head_dim;
    d->scale = t->scale;
    d->causal = t->causal;
    d->window = t->window;
    d->softcap = t->softcap;
    d->layout = (mlk_layout)t->layout;
    d->tile_q = t->tile_q;
    d->tile_kv = t->tile_kv;
    kv_len[0] = t->kv_len0;
    kv_len[1] = t->kv_len1;
    if (t->kv_len0 != NOKV) d->kv_len = kv_len;
    for (i = 0; i < 5; i++) parent[i] = tree_valid[i];
    if (t->tree == 2) parent[2] = 2;
    if (t->tree == 3) parent[3] = -2;
    if (t->tree == 4) parent[0] = 0;
    if (t->tree) d->tree_parent = parent;
}

/* fwd / naive pointers: d q k v o lse */
static mlk_status run_attn(const attn_case *t, unsigned nulls, int naive)
{
    mlk_attn_desc d;
    int kv_len[2], parent[5], lkv = t->len_kv ? t->len_kv : t->len_q, hkv = t->kv_heads ? t->kv_heads : t->heads;
    size_t nq = bi_n(t->batch, t->heads, t->len_q, t->head_dim), nkv = bi_n(t->batch, hkv, lkv, t->head_dim);
    float *q = bi_in(nq), *k = bi_in(nkv), *v = bi_in(nkv), *o = bi_outf(nq);
    float *lse = bi_outf(bi_n(t->batch, t->heads, t->len_q, 1));
    attn_desc_of(t, &d, kv_len, parent);
    return (naive ? mlk_attn_naive : mlk_attn_fwd)(BI_P(nulls, 0, &d), BI_P(nulls, 1, q), BI_P(nulls, 2, k),
                                                   BI_P(nulls, 3, v), BI_P(nulls, 4, o), BI_P(nulls, 5, lse));
}
static mlk_status run_attn_fwd(const attn_case *t, unsigned nulls) { return run_attn(t, nulls, 0); }
static mlk_status run_attn_naive(const attn_case *t, unsigned nulls) { return run_attn(t, nulls, 1); }

/* bwd pointers: d q k v o dout lse dq dk dv; o and lse come from a forward
   pass when the case is valid (else any finite values) */
static mlk_status run_attn_bwd(const attn_case *t, unsigned nulls)
{
    mlk_attn_desc d;
    int kv_len[2], parent[5], lkv = t->len_kv ? t->len_kv : t->len_q, hkv = t->kv_heads ? t->kv_heads : t->heads;
    size_t nq = bi_n(t->batch, t->heads, t->len_q, t->head_dim), nkv = bi_n(t->batch, hkv, lkv, t->head_dim);
    size_t nl = bi_n(t->batch, t->heads, t->len_q, 1);
    float *q = bi_in(nq), *k = bi_in(nkv), *v = bi_in(nkv), *o = bi_in(nq), *dout = bi_in(nq), *lse = bi_in(nl);
    float *dq = bi_outf(nq), *dk = bi_outf(nkv), *dv = bi_outf(nkv);
    attn_desc_of(t, &d, kv_len, parent);
    if (t->want == MLK_OK) mlk_attn_fwd(&d, q, k, v, o, lse);
    return mlk_attn_bwd(BI_P(nulls, 0, &d), BI_P(nulls, 1, q), BI_P(nulls, 2, k), BI_P(nulls, 3, v),
                        BI_P(nulls, 4, o), BI_P(nulls, 5, dout), BI_P(nulls, 6, lse), BI_P(nulls, 7, dq),
                        BI_P(nulls, 8, dk), BI_P(nulls, 9, dv));
}

/* A caller workspace: too small for one thread is MLK_ERR_ARG with nothing
   written anywhere (workspace included); one sized for threads = 1 works
   with any OpenMP thread count, stays inside workspace_bytes (guard bytes
   follow it) and gives the bits of a run without workspace. */
static float *ws_floats(size_t n)
{
    float *p = (float *)malloc(n * sizeof(float));
    mlkt_fill_uniform(p, n, -2, 2);
    return p;
}

static int ws_intact(const unsigned char *p, size_t from, size_t to)
{
    size_t i;
    for (i = from; i < to; i++)
        if (p[i] != 0xA5) return 0;
    return 1;
}

static void test_attn_workspace(void)
{
    enum { guard = 256 };
    const size_t nq = (size_t)2 * 4 * 64 * 64, nkv = (size_t)2 * 2 * 80 * 64, nl = (size_t)2 * 4 * 64;
    mlk_attn_desc d;
    size_t need1;
    unsigned char *ws;
    float *q = ws_floats(nq), *k = ws_floats(nkv), *v = ws_floats(nkv), *dout = ws_floats(nq);
    float *o_ref = ws_floats(nq), *lse_ref = ws_floats(nl), *dq_ref = ws_floats(nq), *dk_ref = ws_floats(nkv);
    float *dv_ref = ws_floats(nkv), *o = ws_floats(nq), *lse = ws_floats(nl), *dq = ws_floats(nq);
    float *dk = ws_floats(nkv), *dv = ws_floats(nkv);
    int pass;
#ifdef _OPENMP
    int threads_before = omp_get_max_threads();
#endif
    memset(&d, 0, sizeof d);
    d.batch = 2; d.heads = 4; d.kv_heads = 2; d.len_q = 64; d.len_kv = 80; d.head_dim = 64; d.causal = 1;
    d.threads = 1;
    CHECK(mlk_attn_fwd(&d, q, k, v, o_ref, lse_ref) == MLK_OK);
    CHECK(mlk_attn_bwd(&d, q, k, v, o_ref, dout, lse_ref, dq_ref, dk_ref, dv_ref) == MLK_OK);
    need1 = mlk_attn_workspace_size(&d);
    CHECK(need1 > 0);
    ws = (unsigned char *)malloc(need1 + guard);
    for (pass = 0; pass < 2; pass++) { /* half of one thread's need, then 0 bytes */
        const char *what = pass ? "workspace_bytes 0" : "workspace too small for one thread";
        memset(ws, 0xA5, need1 + guard);
        d.workspace = ws;
        d.workspace_bytes = pass ? 0 : need1 / 2;
        bi_end("mlk_attn_fwd", what, mlk_attn_fwd(&d, q, k, v, bi_outf(nq), bi_outf(nl)), MLK_ERR_ARG);
        bi_end("mlk_attn_bwd", what,
               mlk_attn_bwd(&d, q, k, v, o_ref, dout, lse_ref, bi_outf(nq), bi_outf(nkv), bi_outf(nkv)), MLK_ERR_ARG);
        bi_value("mlk_attn_fwd", "a failing call leaves the workspace alone", ws_intact(ws, 0, need1 + guard), 1);
    }
#ifdef _OPENMP
    omp_set_num_threads(4);
#endif
    memset(ws, 0xA5, need1 + guard);
    d.workspace_bytes = need1;
    d.threads = 0; /* OpenMP's maximum: more than the buffer has room for */
    bi_value("mlk_attn_fwd", "one-thread workspace, 4 threads", mlk_attn_fwd(&d, q, k, v, o, lse), MLK_OK);
    bi_value("mlk_attn_bwd", "one-thread workspace, 4 threads",
             mlk_attn_bwd(&d, q, k, v, o, dout, lse, dq, dk, dv), MLK_OK);
    bi_value("mlk_attn_fwd", "one-thread workspace: same bits",
             mlkt_same(o, o_ref, nq * 4) && mlkt_same(lse, lse_ref, nl * 4), 1);
    bi_value("mlk_attn_bwd", "one-thread workspace: same bits",
             mlkt_same(dq, dq_ref, nq * 4) && mlkt_same(dk, dk_ref, nkv * 4) && mlkt_same(dv, dv_ref, nkv * 4), 1);
    bi_value("mlk_attn_bwd", "nothing written past workspace_bytes", ws_intact(ws, need1, need1 + guard), 1);
    mlkt_digest(o, nq * 4);
    mlkt_digest(dq, nq * 4);
#ifdef _OPENMP
    omp_set_num_threads(threads_before);
#endif
    free(ws); free(q); free(k); free(v); free(dout); free(o); free(lse); free(dq); free(dk); free(dv);
    free(o_ref); free(lse_ref); free(dq_ref); free(dk_ref); free(dv_ref);
}

static void test_attention(void)
{
    size_t i;
    int kv_len[2], parent[5];
    mlk_attn_desc d;
    BI_TABLE("mlk_attn_fwd", attn_cases, run_attn_fwd, 0x1Fu);
    BI_TABLE("mlk_attn_naive", attn_cases, run_attn_naive, 0x1Fu);
    BI_TABLE("mlk_attn_bwd", attn_cases, run_attn_bwd, 0x7Fu);
    {
        static const attn_case none[] = {{"dq, dk, dv all NULL", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0,
                                          0, MLK_OK}};
        bi_end("mlk_attn_bwd", none[0].what, run_attn_bwd(&none[0], 0x380u), MLK_OK);
    }
    /* the size query is 0 exactly for the invalid descriptors, its pointed-to
       kv_len and tree_parent included */
    for (i = 0; i < sizeof attn_cases / sizeof attn_cases[0]; i++) {
        attn_desc_of(&attn_cases[i], &d, kv_len, parent);
        bi_value("mlk_attn_workspace_size", attn_cases[i].what, mlk_attn_workspace_size(&d) == 0,
                 attn_cases[i].want != MLK_OK);
    }
    bi_value("mlk_attn_workspace_size", "NULL", (long long)mlk_attn_workspace_size(NULL), 0);
    test_attn_workspace();
}

/* ---- KV cache ----
   Fixture: layers 2, kv_heads 2, head_dim 5, block 4, 6 blocks, 4 ids.
   Normal: 0 live (len 6, stored), 1 a fork of 0 (shares its 2 blocks), 2
   freed, 3 never created. Full: 0 and 1 as above, 2 live with 16 stored
   positions, 3 live and empty: every block and every id is taken. */

static mlk_kv_cache *kv_fixture(mlk_kv_type type, int full)
{
    mlk_kv_config cfg;
    mlk_kv_cache *c = NULL;
    float *k = (float *)malloc(16 * 10 * sizeof(float)), *v = (float *)malloc(16 * 10 * sizeof(float));
    int s = 0, l, i;
    cfg.layers = 2; cfg.kv_heads = 2; cfg.head_dim = 5; cfg.block_size = 4; cfg.num_blocks = 6; cfg.max_seqs = 4;
    cfg.type = type;
    for (i = 0; i < 160; i++) { k[i] = (float)mlkt_uniform(-3, 3); v[i] = (float)mlkt_uniform(-3, 3); }
    if (mlk_kv_create(&cfg, &c) != MLK_OK) { fprintf(stderr, "badinput: fixture\n"); exit(2); }
    mlk_kv_seq_new(c, &s);
    mlk_kv_append(c, s, 6);
    for (l = 0; l < 2; l++) mlk_kv_store(c, s, l, 0, 6, k, v);
    mlk_kv_seq_fork(c, 0, &s);
    mlk_kv_seq_new(c, &s);
    if (full) {
        mlk_kv_append(c, s, 16);
        for (l = 0; l < 2; l++) mlk_kv_store(c, s, l, 0, 16, k, v);
        mlk_kv_seq_new(c, &s);
    } else {
        mlk_kv_seq_free(c, s);
    }
    free(k);
    free(v);
    return c;
}

/* A KV case: a fixture, one call, op-specific arguments a..e. */
typedef struct kv_case {
    const char *what;
    int type, full;
    int seq, a, b, c, d;
    int data;
    unsigned nulls;
    int want;
} kv_case;

/* the bad ids of every sequence argument, on the normal fixture */
#define KV_BAD_IDS(a, b, c, d) \
    {"seq -1", 0, 0, -1, a, b, c, d, 0, 0, MLK_ERR_ARG}, \
    {"seq freed", 0, 0, 2, a, b, c, d, 0, 0, MLK_ERR_ARG}, \
    {"seq never created", 0, 0, 3, a, b, c, d, 0, 0, MLK_ERR_ARG}, \
    {"seq == max_seqs", 0, 0, 4, a, b, c, d, 0, 0, MLK_ERR_ARG}, \
    {"seq INT_MAX", 0, 0, INT_MAX, a, b, c, d, 0, 0, MLK_ERR_ARG}, \
    {"seq INT_MIN", 0, 0, INT_MIN, a, b, c, d, 0, 0, MLK_ERR_ARG}

/* runners: pointer 0 is always the cache */
static mlk_status run_seq_new(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    int *seq = (int *)bi_out(sizeof(int));
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_seq_new(BI_P(nulls, 0, c), BI_P(nulls, 1, seq));
    bi_end("mlk_kv_seq_new", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

static mlk_status run_seq_free(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_seq_free(BI_P(nulls, 0, c), t->seq);
    bi_end("mlk_kv_seq_free", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

static mlk_status run_seq_fork(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    int *dst = (int *)bi_out(sizeof(int));
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_seq_fork(BI_P(nulls, 0, c), t->seq, BI_P(nulls, 1, dst));
    bi_end("mlk_kv_seq_fork", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

static mlk_status run_append(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_append(BI_P(nulls, 0, c), t->seq, t->a);
    bi_end("mlk_kv_append", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

/* store / load: a = layer, b = pos, c = n */
static mlk_status run_store(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    size_t n = bi_n(t->c, 10, 1, 1);
    float *k = bi_in(n), *v = bi_in(n);
    mlk_status st;
    if (n) bi_pattern(t->data == BI_PINF ? v : k, 1, n, t->data);
    bi_watch(c);
    st = mlk_kv_store(BI_P(nulls, 0, c), t->seq, t->a, t->b, t->c, BI_P(nulls, 1, k), BI_P(nulls, 2, v));
    bi_end("mlk_kv_store", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

static mlk_status run_load(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    size_t n = bi_n(t->c, 10, 1, 1);
    float *k = bi_outf(n), *v = bi_outf(n);
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_load(BI_P(nulls, 0, c), t->seq, t->a, t->b, t->c, BI_P(nulls, 1, k), BI_P(nulls, 2, v));
    bi_end("mlk_kv_load", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

static mlk_status run_truncate(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_truncate(BI_P(nulls, 0, c), t->seq, t->a);
    bi_end("mlk_kv_truncate", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

/* compact: a = start, b = n_keep, keep list chosen by c:
   0 {0, 2, 3}, 1 {1} (moves a row), 2 {0, 2, 2}, 3 {2, 1}, 4 {-1, 0}, 5 {0, 6} */
static mlk_status run_compact(const kv_case *t, unsigned nulls)
{
    static const int lists[6][3] = {{0, 2, 3}, {1, 0, 0}, {0, 2, 2}, {2, 1, 0}, {-1, 0, 0}, {0, 6, 0}};
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_compact(BI_P(nulls, 0, c), t->seq, t->a, t->b, BI_P(nulls, 1, lists[t->c]));
    bi_end("mlk_kv_compact", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

/* prepare_compact: compact's cases, cap 4; pointers c keep copies
   n_copies moves n_moves */
static mlk_status run_prepare_compact(const kv_case *t, unsigned nulls)
{
    static const int lists[6][3] = {{0, 2, 3}, {1, 0, 0}, {0, 2, 2}, {2, 1, 0}, {-1, 0, 0}, {0, 6, 0}};
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    int *copies = (int *)bi_out(8 * sizeof(int)), *n_copies = (int *)bi_out(sizeof(int));
    int64_t *moves = (int64_t *)bi_out(6 * sizeof(int64_t));
    int *n_moves = (int *)bi_out(sizeof(int));
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_prepare_compact(BI_P(nulls, 0, c), t->seq, t->a, t->b, BI_P(nulls, 1, lists[t->c]),
                                BI_P(nulls, 2, copies), 4, BI_P(nulls, 3, n_copies), BI_P(nulls, 4, moves),
                                BI_P(nulls, 5, n_moves));
    bi_end("mlk_kv_prepare_compact", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

/* kv_attn: seq = first id, a = layer, b = n_seqs (second id 0),
   c = n_q of the first, d = heads; data: 1 tree (valid), 2 bad tree,
   3 scale NaN; pointers c seqs n_q q o */
static mlk_status run_kv_attn(const kv_case *t, unsigned nulls)
{
    static const int good_tree[3] = {-1, 0, 0}, bad_tree[3] = {-1, 1, 0};
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    int seqs[2], n_q[2];
    size_t rows = (size_t)(t->c > 0 && t->c < 64 ? t->c : 1) + 1, n = bi_n((long long)rows, t->d, 5, 1);
    float *q = bi_in(n), *o = bi_outf(n);
    mlk_status st;
    seqs[0] = t->seq; seqs[1] = 0;
    n_q[0] = t->c; n_q[1] = 1;
    bi_watch(c);
    st = mlk_kv_attn(BI_P(nulls, 0, c), t->a, t->b, BI_P(nulls, 1, seqs), BI_P(nulls, 2, n_q), BI_P(nulls, 3, q),
                     t->d, t->data == 3 ? NAN : 0.0f,
                     t->data == 1 ? good_tree : t->data == 2 ? bad_tree : NULL, BI_P(nulls, 4, o));
    bi_end("mlk_kv_attn", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

static mlk_status run_stats(const kv_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture((mlk_kv_type)t->type, t->full);
    mlk_kv_stats *st_out = (mlk_kv_stats *)bi_out(sizeof(mlk_kv_stats));
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_get_stats(BI_P(nulls, 0, c), BI_P(nulls, 1, st_out));
    bi_end("mlk_kv_get_stats", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

/* The KV runners end their own cases (the cache outlives the call's
   outputs only inside them); this runs a table and its NULL sweep. */
static void kv_table(const kv_case *table, size_t n, mlk_status (*run)(const kv_case *, unsigned), unsigned required)
{
    size_t i;
    unsigned b;
    kv_case t;
    for (i = 0; i < n; i++) run(&table[i], table[i].nulls);
    for (b = 0; b < 12; b++)
        if ((required >> b) & 1u) {
            t = table[0];
            t.what = bi_null_names[b];
            t.want = MLK_ERR_NULL;
            run(&t, 1u << b);
        }
}
#define KV_TABLE(table, run, required) kv_table(table, sizeof(table) / sizeof((table)[0]), run, required)

static const kv_case seq_new_cases[] = {
    {"valid", 0, 0, 0, 0, 0, 0, 0, 0, 0, MLK_OK},
    {"every id taken", 0, 1, 0, 0, 0, 0, 0, 0, 0, MLK_ERR_CAPACITY},
};
static const kv_case seq_free_cases[] = {
    {"valid (a forked sequence)", 0, 0, 1, 0, 0, 0, 0, 0, 0, MLK_OK},
    KV_BAD_IDS(0, 0, 0, 0),
};
static const kv_case seq_fork_cases[] = {
    {"valid", 0, 0, 0, 0, 0, 0, 0, 0, 0, MLK_OK},
    KV_BAD_IDS(0, 0, 0, 0),
    {"every id taken", 0, 1, 0, 0, 0, 0, 0, 0, 0, MLK_ERR_CAPACITY},
};
static const kv_case append_cases[] = {
    {"valid", 0, 0, 0, 3, 0, 0, 0, 0, 0, MLK_OK},
    KV_BAD_IDS(3, 0, 0, 0),
    {"n 0", 0, 0, 0, 0, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"n < 0", 0, 0, 0, -1, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"n INT_MIN", 0, 0, 0, INT_MIN, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"len + n overflows int", 0, 0, 0, INT_MAX, 0, 0, 0, 0, 0, MLK_ERR_OVERFLOW},
    {"pool too small", 0, 0, 0, 100, 0, 0, 0, 0, 0, MLK_ERR_CAPACITY},
    {"pool full", 0, 1, 0, 3, 0, 0, 0, 0, 0, MLK_ERR_CAPACITY},
};
static const kv_case store_cases[] = {
    {"valid (copies a shared block)", MLK_KV_Q8, 0, 1, 1, 2, 3, 0, BI_FINITE, 0, MLK_OK},
    KV_BAD_IDS(1, 2, 3, 0),
    {"layer -1", 0, 0, 0, -1, 2, 3, 0, BI_FINITE, 0, MLK_ERR_ARG},
    {"layer == layers", 0, 0, 0, 2, 2, 3, 0, BI_FINITE, 0, MLK_ERR_ARG},
    {"pos < 0", 0, 0, 0, 1, -1, 3, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"pos + n > len", 0, 0, 0, 1, 4, 3, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"pos INT_MAX", 0, 0, 0, 1, INT_MAX, 3, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n 0", 0, 0, 0, 1, 2, 0, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n INT_MAX", 0, 0, 0, 1, 2, INT_MAX, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"pos + n overflows int", 0, 0, 0, 1, INT_MAX, INT_MAX, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"NaN key, Q8", MLK_KV_Q8, 0, 0, 1, 2, 3, 0, BI_NAN, 0, MLK_ERR_VALUE},
    {"NaN key, Q4", MLK_KV_Q4, 0, 0, 1, 2, 3, 0, BI_NAN, 0, MLK_ERR_VALUE},
    {"+inf value, Q8", MLK_KV_Q8, 0, 0, 1, 2, 3, 0, BI_PINF, 0, MLK_ERR_VALUE},
    {"+inf value, Q4", MLK_KV_Q4, 0, 0, 1, 2, 3, 0, BI_PINF, 0, MLK_ERR_VALUE},
    {"NaN into a shared block, Q4", MLK_KV_Q4, 0, 1, 0, 0, 2, 0, BI_NAN, 0, MLK_ERR_VALUE},
    {"shared block, pool full", 0, 1, 1, 0, 0, 1, 0, BI_FINITE, 0, MLK_ERR_CAPACITY},
    {"shared block, pool full, F16", MLK_KV_F16, 1, 0, 0, 5, 1, 0, BI_FINITE, 0, MLK_ERR_CAPACITY},
};
static const kv_case load_cases[] = {
    {"valid", MLK_KV_Q4, 0, 1, 1, 2, 3, 0, 0, 0, MLK_OK},
    KV_BAD_IDS(1, 2, 3, 0),
    {"layer -1", 0, 0, 0, -1, 2, 3, 0, 0, 0, MLK_ERR_ARG},
    {"layer == layers", 0, 0, 0, 2, 2, 3, 0, 0, 0, MLK_ERR_ARG},
    {"pos < 0", 0, 0, 0, 1, -1, 3, 0, 0, 0, MLK_ERR_SHAPE},
    {"pos + n > len", 0, 0, 0, 1, 4, 3, 0, 0, 0, MLK_ERR_SHAPE},
    {"n 0", 0, 0, 0, 1, 2, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"n < 0", 0, 0, 0, 1, 2, -3, 0, 0, 0, MLK_ERR_SHAPE},
    {"pos + n overflows int", 0, 0, 0, 1, INT_MAX, INT_MAX, 0, 0, 0, MLK_ERR_SHAPE},
};
static const kv_case truncate_cases[] = {
    {"valid", 0, 0, 1, 1, 0, 0, 0, 0, 0, MLK_OK},
    KV_BAD_IDS(1, 0, 0, 0),
    {"len < 0", 0, 0, 0, -1, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"len > current", 0, 0, 0, 7, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"len INT_MAX", 0, 0, 0, INT_MAX, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
};
static const kv_case compact_cases[] = {
    {"valid", 0, 0, 0, 1, 3, 0, 0, 0, 0, MLK_OK},
    {"valid: n_keep 0, NULL keep", 0, 0, 0, 2, 0, 0, 0, 0, 2u, MLK_OK},
    KV_BAD_IDS(1, 3, 0, 0),
    {"start < 0", 0, 0, 0, -1, 3, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"start > len", 0, 0, 0, 7, 0, 0, 0, 0, 0, MLK_ERR_SHAPE},
    {"n_keep < 0", 0, 0, 0, 1, -1, 0, 0, 0, 0, MLK_ERR_ARG},
    {"n_keep > len - start", 0, 0, 0, 4, 3, 0, 0, 0, 0, MLK_ERR_ARG},
    {"keep repeats an index", 0, 0, 0, 1, 3, 2, 0, 0, 0, MLK_ERR_ARG},
    {"keep decreasing", 0, 0, 0, 1, 2, 3, 0, 0, 0, MLK_ERR_ARG},
    {"keep < 0", 0, 0, 0, 1, 2, 4, 0, 0, 0, MLK_ERR_ARG},
    {"keep >= len - start", 0, 0, 0, 1, 2, 5, 0, 0, 0, MLK_ERR_ARG},
    {"shared block, pool full", 0, 1, 1, 0, 1, 1, 0, 0, 0, MLK_ERR_CAPACITY},
};
static const kv_case kv_attn_cases[] = {
    {"valid (two sequences, GQA)", 0, 0, 1, 1, 2, 3, 4, 0, 0, MLK_OK},
    {"valid: tree", MLK_KV_Q8, 0, 0, 0, 1, 3, 2, 1, 0, MLK_OK},
    KV_BAD_IDS(1, 2, 3, 4),
    {"layer -1", 0, 0, 0, -1, 2, 3, 4, 0, 0, MLK_ERR_ARG},
    {"layer == layers", 0, 0, 0, 2, 2, 3, 4, 0, 0, MLK_ERR_ARG},
    {"n_seqs 0", 0, 0, 0, 1, 0, 3, 4, 0, 0, MLK_ERR_SHAPE},
    {"n_seqs < 0", 0, 0, 0, 1, -1, 3, 4, 0, 0, MLK_ERR_SHAPE},
    {"heads 0", 0, 0, 0, 1, 2, 3, 0, 0, 0, MLK_ERR_SHAPE},
    {"heads % kv_heads != 0", 0, 0, 0, 1, 2, 3, 3, 0, 0, MLK_ERR_SHAPE},
    {"n_q 0", 0, 0, 0, 1, 2, 0, 4, 0, 0, MLK_ERR_SHAPE},
    {"n_q > len", 0, 0, 0, 1, 2, 7, 4, 0, 0, MLK_ERR_SHAPE},
    {"n_q INT_MIN", 0, 0, 0, 1, 2, INT_MIN, 4, 0, 0, MLK_ERR_SHAPE},
    {"scale NaN", 0, 0, 0, 1, 2, 3, 4, 3, 0, MLK_ERR_ARG},
    {"tree with two sequences", 0, 0, 0, 1, 2, 3, 4, 1, 0, MLK_ERR_ARG},
    {"tree parent[1] == 1", 0, 0, 0, 1, 1, 3, 4, 2, 0, MLK_ERR_TREE},
};
static const kv_case stats_cases[] = {
    {"valid", 0, 0, 0, 0, 0, 0, 0, 0, 0, MLK_OK},
};

typedef struct kv_cfg_case {
    const char *what;
    int layers, kv_heads, head_dim, block_size, num_blocks, max_seqs, type;
    unsigned nulls;
    int want;
} kv_cfg_case;

static const kv_cfg_case kv_create_cases[] = {
    {"valid", 2, 2, 5, 4, 6, 4, MLK_KV_Q4, 0, MLK_OK},
    {"layers 0", 0, 2, 5, 4, 6, 4, 0, 0, MLK_ERR_SHAPE},
    {"kv_heads < 0", 2, -2, 5, 4, 6, 4, 0, 0, MLK_ERR_SHAPE},
    {"head_dim 0", 2, 2, 0, 4, 6, 4, 0, 0, MLK_ERR_SHAPE},
    {"block_size < 0", 2, 2, 5, -4, 6, 4, 0, 0, MLK_ERR_SHAPE},
    {"num_blocks 0", 2, 2, 5, 4, 0, 4, 0, 0, MLK_ERR_SHAPE},
    {"max_seqs 0", 2, 2, 5, 4, 6, 0, 0, 0, MLK_ERR_SHAPE},
    {"max_seqs INT_MIN", 2, 2, 5, 4, 6, INT_MIN, 0, 0, MLK_ERR_SHAPE},
    {"type 4", 2, 2, 5, 4, 6, 4, 4, 0, MLK_ERR_ARG},
    {"type -1", 2, 2, 5, 4, 6, 4, -1, 0, MLK_ERR_ARG},
    {"pool bytes overflow size_t", INT_MAX, 64, 128, INT_MAX, INT_MAX, 4, 0, 0, MLK_ERR_OVERFLOW},
    {"bytes per token overflow size_t", 1, INT_MAX, INT_MAX, 1, 1, 1, 0, 0, MLK_ERR_OVERFLOW},
    {"pool of 2^40 bytes", 1024, 8, 128, 1024, 128, 4, 0, 0, MLK_ERR_NOMEM},
    {"max_seqs INT_MAX (16 GiB of tables)", 1, 1, 1, 1, 1, INT_MAX, 0, 0, MLK_ERR_NOMEM},
};

/* create pointers: cfg out; *out must stay untouched on error */
static mlk_status run_kv_create(const kv_cfg_case *t, unsigned nulls)
{
    mlk_kv_config cfg;
    mlk_kv_cache **out = (mlk_kv_cache **)bi_out(sizeof(mlk_kv_cache *));
    mlk_kv_cache *keep;
    mlk_status st;
    cfg.layers = t->layers; cfg.kv_heads = t->kv_heads; cfg.head_dim = t->head_dim;
    cfg.block_size = t->block_size; cfg.num_blocks = t->num_blocks; cfg.max_seqs = t->max_seqs;
    cfg.type = (mlk_kv_type)t->type;
    st = mlk_kv_create(BI_P(nulls, 0, &cfg), BI_P(nulls, 1, out));
    if (st == MLK_OK) {
        memcpy(&keep, out, sizeof keep);
        mlk_kv_destroy(keep);
    }
    return st;
}

static void test_kv(void)
{
    size_t i;
    mlk_kv_config cfg;
    mlk_kv_cache *c;
    BI_TABLE("mlk_kv_create", kv_create_cases, run_kv_create, 0x3u);
    for (i = 0; i < sizeof kv_create_cases / sizeof kv_create_cases[0]; i++) {
        const kv_cfg_case *t = &kv_create_cases[i];
        size_t bpt;
        cfg.layers = t->layers; cfg.kv_heads = t->kv_heads; cfg.head_dim = t->head_dim;
        cfg.block_size = t->block_size; cfg.num_blocks = t->num_blocks; cfg.max_seqs = t->max_seqs;
        cfg.type = (mlk_kv_type)t->type;
        bpt = mlk_kv_bytes_per_token(&cfg);
        /* the header: "0 if the config is invalid or the size overflows" */
        bi_value("mlk_kv_bytes_per_token", t->what, bpt == 0,
                 t->want == MLK_ERR_SHAPE || t->want == MLK_ERR_ARG || t->kv_heads == INT_MAX);
    }
    bi_value("mlk_kv_bytes_per_token", "NULL", (long long)mlk_kv_bytes_per_token(NULL), 0);
    mlk_kv_destroy(NULL);
    bi_value("mlk_kv_destroy", "NULL is a no-op", 0, 0);
    KV_TABLE(seq_new_cases, run_seq_new, 0x3u);
    KV_TABLE(seq_free_cases, run_seq_free, 0x1u);
    KV_TABLE(seq_fork_cases, run_seq_fork, 0x3u);
    KV_TABLE(append_cases, run_append, 0x1u);
    KV_TABLE(store_cases, run_store, 0x7u);
    KV_TABLE(load_cases, run_load, 0x7u);
    KV_TABLE(truncate_cases, run_truncate, 0x1u);
    KV_TABLE(compact_cases, run_compact, 0x3u);
    KV_TABLE(compact_cases, run_prepare_compact, 0x3Fu);
    KV_TABLE(kv_attn_cases, run_kv_attn, 0x1Fu);
    KV_TABLE(stats_cases, run_stats, 0x3u);
    /* seq_len: -1 for a NULL cache and every bad id */
    c = kv_fixture(MLK_KV_F32, 0);
    bi_value("mlk_kv_seq_len", "valid", mlk_kv_seq_len(c, 1), 6);
    bi_value("mlk_kv_seq_len", "NULL cache", mlk_kv_seq_len(NULL, 0), -1);
    bi_value("mlk_kv_seq_len", "seq -1", mlk_kv_seq_len(c, -1), -1);
    bi_value("mlk_kv_seq_len", "seq freed", mlk_kv_seq_len(c, 2), -1);
    bi_value("mlk_kv_seq_len", "seq never created", mlk_kv_seq_len(c, 3), -1);
    bi_value("mlk_kv_seq_len", "seq == max_seqs", mlk_kv_seq_len(c, 4), -1);
    bi_value("mlk_kv_seq_len", "seq INT_MIN", mlk_kv_seq_len(c, INT_MIN), -1);
    mlk_kv_destroy(c);
}

/* ---- beam search ---- */

/* Mock model: logits from the last token and position; `mode` makes it
   misbehave at its third call (after the search made progress). */
typedef struct beam_mock { int vocab, calls, mode; } beam_mock;
enum { MOCK_OK, MOCK_ABORT, MOCK_NAN, MOCK_PINF, MOCK_NINF_ROW };

static int beam_model(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens,
                      float *logits)
{
    beam_mock *m = (beam_mock *)user;
    int i, j, bad = ++m->calls == 3;
    (void)parent;
    if (bad && m->mode == MOCK_ABORT) return 7;
    for (i = 0; i < n; i++)
        for (j = 0; j < m->vocab; j++) {
            float *x = &logits[(size_t)i * m->vocab + j];
            *x = (float)((seqs[i][lens[i] - 1] * 31 + j * 17 + lens[i] * 7) % 23) * 0.25f;
            if (bad && i == n - 1) {
                if (m->mode == MOCK_NAN && j == 1) *x = NAN;
                if (m->mode == MOCK_PINF && j == 1) *x = INFINITY;
                if (m->mode == MOCK_NINF_ROW) *x = -INFINITY;
            }
        }
    return 0;
}

typedef struct beam_case {
    const char *what;
    int batch, beam_width, vocab, eos_id, max_new, num_return;
    float length_penalty;
    int prompt_len1, mode;   /* prompt_len1: length of item 1's prompt; -100: NULL prompt */
    unsigned nulls;
    int want;
} beam_case;

static const beam_case beam_cases[] = {
    {"valid", 2, 3, 11, 2, 6, 2, 1.0f, 3, MOCK_OK, 0, MLK_OK},
    {"valid: no EOS, num_return = beam_width", 2, 3, 11, -1, 6, 3, 0.0f, 3, MOCK_OK, 0, MLK_OK},
    {"batch 0", 0, 3, 11, 2, 6, 2, 1.0f, 3, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"beam_width 0", 2, 0, 11, 2, 6, 0, 1.0f, 3, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"vocab 0", 2, 3, 0, -1, 6, 2, 1.0f, 3, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"max_new_tokens 0", 2, 3, 11, 2, 0, 2, 1.0f, 3, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"num_return 0", 2, 3, 11, 2, 6, 0, 1.0f, 3, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"num_return > beam_width", 2, 3, 11, 2, 6, 4, 1.0f, 3, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"eos_id < -1", 2, 3, 11, -2, 6, 2, 1.0f, 3, MOCK_OK, 0, MLK_ERR_ARG},
    {"eos_id == vocab", 2, 3, 11, 11, 6, 2, 1.0f, 3, MOCK_OK, 0, MLK_ERR_ARG},
    {"eos_id INT_MAX", 2, 3, 11, INT_MAX, 6, 2, 1.0f, 3, MOCK_OK, 0, MLK_ERR_ARG},
    {"length_penalty NaN", 2, 3, 11, 2, 6, 2, NAN, 3, MOCK_OK, 0, MLK_ERR_ARG},
    {"length_penalty +inf", 2, 3, 11, 2, 6, 2, INFINITY, 3, MOCK_OK, 0, MLK_ERR_ARG},
    {"prompts[1] NULL", 2, 3, 11, 2, 6, 2, 1.0f, -100, MOCK_OK, 0, MLK_ERR_NULL},
    {"prompt_lens[1] 0", 2, 3, 11, 2, 6, 2, 1.0f, 0, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"prompt_lens[1] < 0", 2, 3, 11, 2, 6, 2, 1.0f, -5, MOCK_OK, 0, MLK_ERR_SHAPE},
    {"prompt_len + max_new overflows int", 2, 3, 11, 2, INT_MAX, 2, 1.0f, 3, MOCK_OK, 0, MLK_ERR_OVERFLOW},
    /* beam_width x (prompt + max_new) tokens per item, two items: past
       SIZE_MAX / 4 tokens, a size computation overflows */
    {"token store overflows size_t", 2, INT_MAX, 1, -1, 1 << 30, 1, 1.0f, 3, MOCK_OK, 0, MLK_ERR_OVERFLOW},
    /* batch x beam_width x vocab logits: past SIZE_MAX / 4 */
    {"logits buffer overflows size_t", 2, INT_MAX, INT_MAX, -1, 1, 1, 1.0f, 3, MOCK_OK, 0, MLK_ERR_OVERFLOW},
    {"callback aborts at its third call", 2, 3, 11, 2, 6, 2, 1.0f, 3, MOCK_ABORT, 0, MLK_ERR_CALLBACK},
    {"NaN logit at the third call", 2, 3, 11, 2, 6, 2, 1.0f, 3, MOCK_NAN, 0, MLK_ERR_VALUE},
    {"+inf logit at the third call", 2, 3, 11, 2, 6, 2, 1.0f, 3, MOCK_PINF, 0, MLK_ERR_VALUE},
    {"all -inf row at the third call", 2, 3, 11, 2, 6, 2, 1.0f, 3, MOCK_NINF_ROW, 0, MLK_ERR_VALUE},
};

/* beam pointers: cfg prompts prompt_lens fn out_tokens out_len out_logprob out_score */
static mlk_status run_beam(const beam_case *t, unsigned nulls)
{
    static const int32_t p0[3] = {1, 4, 2}, p1[3] = {3, 0, 5};
    const int32_t *prompts[2];
    int lens[2];
    mlk_beam_config cfg;
    beam_mock m;
    size_t ret = bi_n(t->batch, t->num_return, 1, 1), toks = bi_n(t->batch, t->num_return, t->max_new, 1);
    int32_t *out_tokens = (int32_t *)bi_out(toks * sizeof(int32_t));
    int *out_len = (int *)bi_out(ret * sizeof(int));
    float *out_lp = bi_outf(ret), *out_score = bi_outf(ret);
    prompts[0] = p0;
    prompts[1] = t->prompt_len1 == -100 ? NULL : p1;
    lens[0] = 3;
    lens[1] = t->prompt_len1 == -100 ? 3 : t->prompt_len1;
    cfg.beam_width = t->beam_width; cfg.vocab = t->vocab; cfg.eos_id = t->eos_id;
    cfg.max_new_tokens = t->max_new; cfg.num_return = t->num_return; cfg.length_penalty = t->length_penalty;
    m.vocab = t->vocab; m.calls = 0; m.mode = t->mode;
    return mlk_beam_search(BI_P(nulls, 0, &cfg), t->batch, BI_P(nulls, 1, prompts), BI_P(nulls, 2, lens),
                           ((nulls >> 3) & 1u) ? (mlk_logits_fn)NULL : beam_model, &m, BI_P(nulls, 4, out_tokens),
                           BI_P(nulls, 5, out_len), BI_P(nulls, 6, out_lp), BI_P(nulls, 7, out_score));
}

static void test_beam(void)
{
    static const beam_case opt[] = {{"out_logprob, out_score NULL", 2, 3, 11, 2, 6, 2, 1.0f, 3, MOCK_OK, 0, MLK_OK}};
    BI_TABLE("mlk_beam_search", beam_cases, run_beam, 0x3Fu);
    bi_end("mlk_beam_search", opt[0].what, run_beam(&opt[0], 0xC0u), MLK_OK);
}

/* ---- tree speculative decoding ---- */

typedef struct tree_case {
    const char *what;
    int n, bad;   /* bad: 0 none, 1 parent[i] == i, 2 parent[i] > i, 3 parent < -1, 4 parent[0] = 0 */
    unsigned nulls;
    int want;
} tree_case;

static const tree_case tree_cases[] = {
    {"valid", 6, 0, 0, MLK_OK},
    {"n 0", 0, 0, 0, MLK_ERR_SHAPE},
    {"n < 0", -1, 0, 0, MLK_ERR_SHAPE},
    {"parent[i] == i", 6, 1, 0, MLK_ERR_TREE},
    {"parent[i] > i", 6, 2, 0, MLK_ERR_TREE},
    {"parent < -1", 6, 3, 0, MLK_ERR_TREE},
    {"parent[0] = 0", 6, 4, 0, MLK_ERR_TREE},
};

static const int *tree_parents(const tree_case *t, int *p)
{
    static const int base[6] = {-1, 0, 0, 1, -1, 4};
    int i;
    for (i = 0; i < 6; i++) p[i] = base[i];
    if (t->bad == 1) p[3] = 3;
    if (t->bad == 2) p[3] = 5;
    if (t->bad == 3) p[5] = -2;
    if (t->bad == 4) p[0] = 0;
    return p;
}

static mlk_status run_tree_mask(const tree_case *t, unsigned nulls)
{
    int p[6];
    uint8_t *mask = (uint8_t *)bi_out(36);
    return mlk_tree_mask(t->n, BI_P(nulls, 0, tree_parents(t, p)), BI_P(nulls, 1, mask));
}

static mlk_status run_tree_depth(const tree_case *t, unsigned nulls)
{
    int p[6];
    int *depth = (int *)bi_out(6 * sizeof(int));
    return mlk_tree_depth(t->n, BI_P(nulls, 0, tree_parents(t, p)), BI_P(nulls, 1, depth));
}

/* accept pointers: parent draft target path n_path bonus */
static mlk_status run_tree_accept(const tree_case *t, unsigned nulls)
{
    static const int32_t draft[6] = {5, 6, 7, 8, 5, 9}, target[7] = {5, 6, 1, 8, 2, 3, 4};
    int p[6];
    int *path = (int *)bi_out(6 * sizeof(int)), *n_path = (int *)bi_out(sizeof(int));
    int32_t *bonus = (int32_t *)bi_out(sizeof(int32_t));
    return mlk_tree_accept(t->n, BI_P(nulls, 0, tree_parents(t, p)), BI_P(nulls, 1, draft), BI_P(nulls, 2, target),
                           BI_P(nulls, 3, path), BI_P(nulls, 4, n_path), BI_P(nulls, 5, bonus));
}

/* Mock draft and target for mlk_spec_generate: the target's greedy token
   after a context is a hash of its last token; `mode` breaks one callback. */
typedef struct spec_mock { int mode, calls; } spec_mock;
enum { SPEC_OK, SPEC_DRAFT_ABORT, SPEC_VERIFY_ABORT, SPEC_ACCEPT_ABORT, SPEC_TOO_MANY, SPEC_NEG, SPEC_BAD_TREE };

static int32_t spec_next(int32_t last) { return (last * 7 + 3) % 13; }

static int spec_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens, int *parent,
                      int *n_nodes)
{
    spec_mock *m = (spec_mock *)user;
    int i, bad = ++m->calls == 2;
    if (bad && m->mode == SPEC_DRAFT_ABORT) return 1;
    *n_nodes = max_nodes < 3 ? max_nodes : 3;
    for (i = 0; i < *n_nodes; i++) {
        tokens[i] = i == 0 ? spec_next(ctx[ctx_len - 1]) : spec_next(tokens[i - 1]);
        parent[i] = i - 1;
    }
    if (bad && m->mode == SPEC_TOO_MANY) *n_nodes = max_nodes + 1;
    if (bad && m->mode == SPEC_NEG) *n_nodes = -1;
    if (bad && m->mode == SPEC_BAD_TREE && *n_nodes > 1) parent[1] = 1;
    return 0;
}

static int spec_verify(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                       const int *parent, int32_t *greedy)
{
    spec_mock *m = (spec_mock *)user;
    int i;
    if (m->mode == SPEC_VERIFY_ABORT && m->calls >= 2) return 1;
    greedy[0] = spec_next(ctx[ctx_len - 1]);
    for (i = 0; i < n_nodes; i++) greedy[i + 1] = spec_next(tokens[i]);
    (void)parent;
    return 0;
}

static int spec_accept(void *user, int n_path, const int *path)
{
    spec_mock *m = (spec_mock *)user;
    (void)n_path;
    (void)path;
    return m->mode == SPEC_ACCEPT_ABORT && m->calls >= 2;
}

typedef struct spec_case {
    const char *what;
    int prompt_len, max_new, max_nodes, eos_id, mode;
    unsigned nulls;
    int want;
} spec_case;

static const spec_case spec_cases[] = {
    {"valid", 2, 9, 4, -1, SPEC_OK, 0, MLK_OK},
    {"prompt_len 0", 0, 9, 4, -1, SPEC_OK, 0, MLK_ERR_SHAPE},
    {"prompt_len < 0", -2, 9, 4, -1, SPEC_OK, 0, MLK_ERR_SHAPE},
    {"max_new_tokens 0", 2, 0, 4, -1, SPEC_OK, 0, MLK_ERR_SHAPE},
    {"max_nodes 0", 2, 9, 0, -1, SPEC_OK, 0, MLK_ERR_SHAPE},
    {"max_nodes < 0", 2, 9, -4, -1, SPEC_OK, 0, MLK_ERR_SHAPE},
    {"eos_id < -1", 2, 9, 4, -2, SPEC_OK, 0, MLK_ERR_ARG},
    {"prompt_len + max_new overflows int", 2, INT_MAX, 4, -1, SPEC_OK, 0, MLK_ERR_OVERFLOW},
    {"max_nodes + 1 overflows int", 2, 9, INT_MAX, -1, SPEC_OK, 0, MLK_ERR_OVERFLOW},
    {"draft aborts", 2, 9, 4, -1, SPEC_DRAFT_ABORT, 0, MLK_ERR_CALLBACK},
    {"verify aborts", 2, 9, 4, -1, SPEC_VERIFY_ABORT, 0, MLK_ERR_CALLBACK},
    {"accept aborts", 2, 9, 4, -1, SPEC_ACCEPT_ABORT, 0, MLK_ERR_CALLBACK},
    {"draft returns more than max_nodes", 2, 9, 4, -1, SPEC_TOO_MANY, 0, MLK_ERR_ARG},
    {"draft returns n_nodes < 0", 2, 9, 4, -1, SPEC_NEG, 0, MLK_ERR_ARG},
    {"draft returns a bad tree", 2, 9, 4, -1, SPEC_BAD_TREE, 0, MLK_ERR_TREE},
};

/* spec pointers: cfg prompt out out_len stats cfg->draft cfg->verify */
static mlk_status run_spec(const spec_case *t, unsigned nulls)
{
    static const int32_t prompt[2] = {4, 9};
    mlk_spec_config cfg;
    spec_mock m;
    size_t n_out = bi_n(t->max_new, 1, 1, 1);
    int32_t *out = (int32_t *)bi_out(n_out * sizeof(int32_t));
    int *out_len = (int *)bi_out(sizeof(int));
    mlk_spec_stats *stats = (mlk_spec_stats *)bi_out(sizeof(mlk_spec_stats));
    m.mode = t->mode;
    m.calls = 0;
    cfg.max_new_tokens = t->max_new;
    cfg.max_nodes = t->max_nodes;
    cfg.eos_id = t->eos_id;
    cfg.draft = ((nulls >> 5) & 1u) ? (mlk_draft_fn)NULL : spec_draft;
    cfg.verify = ((nulls >> 6) & 1u) ? (mlk_verify_fn)NULL : spec_verify;
    cfg.accept = spec_accept;
    cfg.user = &m;
    return mlk_spec_generate(BI_P(nulls, 0, &cfg), BI_P(nulls, 1, prompt), t->prompt_len, BI_P(nulls, 2, out),
                             BI_P(nulls, 3, out_len), BI_P(nulls, 4, stats));
}

static void test_spec(void)
{
    static const spec_case opt[] = {{"stats NULL", 2, 9, 4, -1, SPEC_OK, 0, MLK_OK}};
    BI_TABLE("mlk_tree_mask", tree_cases, run_tree_mask, 0x3u);
    BI_TABLE("mlk_tree_depth", tree_cases, run_tree_depth, 0x3u);
    BI_TABLE("mlk_tree_accept", tree_cases, run_tree_accept, 0x3Fu);
    BI_TABLE("mlk_spec_generate", spec_cases, run_spec, 0x6Fu);
    bi_end("mlk_spec_generate", opt[0].what, run_spec(&opt[0], 0x10u), MLK_OK);
}

/* ---- ternary ---- */

typedef struct tern_case {
    const char *what;
    int m, n, k;
    int data;   /* BI_* pattern of the float input; for dequant / gemm BI_NAN means a code 3 */
    unsigned nulls;
    int want;
} tern_case;

static const tern_case tern_cases[] = {
    {"valid", 3, 5, 7, BI_FINITE, 0, MLK_OK},
    {"m (rows) 0", 0, 5, 7, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"m (rows) < 0", -3, 5, 7, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"k (cols) 0", 3, 5, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"k (cols) INT_MIN", 3, 5, INT_MIN, BI_FINITE, 0, MLK_ERR_SHAPE},
};
/* n is the output width of the matmuls only */
static const tern_case tern_n_cases[] = {
    {"valid", 3, 5, 7, BI_FINITE, 0, MLK_OK},
    {"n 0", 3, 0, 7, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"n < 0", 3, -5, 7, BI_FINITE, 0, MLK_ERR_SHAPE},
};
static const tern_case tern_value_cases[] = {
    {"valid", 3, 5, 7, BI_FINITE, 0, MLK_OK},
    {"NaN input", 3, 5, 7, BI_NAN, 0, MLK_ERR_VALUE},
    {"+inf input", 3, 5, 7, BI_PINF, 0, MLK_ERR_VALUE},
    {"-inf input", 3, 5, 7, BI_NINF_ONE, 0, MLK_ERR_VALUE},
    {"FLT_MAX input", 3, 5, 7, BI_HUGE, 0, MLK_OK},
};
static const tern_case tern_k_cases[] = {
    {"valid", 3, 5, 7, BI_FINITE, 0, MLK_OK},
    {"k > MLK_TERNARY_MAX_K", 1, 1, MLK_TERNARY_MAX_K + 1, BI_FINITE, 0, MLK_ERR_OVERFLOW},
    {"k INT_MAX", 1, 1, INT_MAX, BI_FINITE, 0, MLK_ERR_OVERFLOW},
};

/* quant (rows m, cols k) pointers: w packed scale */
static mlk_status run_tquant(const tern_case *t, unsigned nulls)
{
    size_t n = bi_n(t->m, t->k, 1, 1);
    float *w = bi_in(n);
    uint8_t *packed = (uint8_t *)bi_out(bi_n(t->m, ((long long)t->k + 3) / 4, 1, 1));
    float *scale = bi_outf(1);
    if (n) bi_pattern(w, (size_t)t->m, (size_t)t->k, t->data);
    return mlk_ternary_quant(t->m, t->k, BI_P(nulls, 0, w), BI_P(nulls, 1, packed), BI_P(nulls, 2, scale));
}

/* A packed [rows, cols] matrix of valid codes; `bad` puts a code 3 in the
   last byte. */
static uint8_t *tern_packed(int rows, int cols, int bad)
{
    size_t n = bi_n(rows, ((long long)cols + 3) / 4, 1, 1), i;
    uint8_t *p = (uint8_t *)bi_in(n);
    for (i = 0; i < (n ? n : 64); i++) p[i] = (uint8_t)(0x55 ^ (i % 3 == 0 ? 0x11 : 0x44 * (i % 2)));
    if (bad && n) p[n - 1] = 0x5F;
    return p;
}

/* dequant (rows m, cols k) pointers: packed w */
static mlk_status run_tdequant(const tern_case *t, unsigned nulls)
{
    uint8_t *packed = tern_packed(t->m, t->k, t->data == BI_NAN);
    float *w = bi_outf(bi_n(t->m, t->k, 1, 1));
    return mlk_ternary_dequant(t->m, t->k, BI_P(nulls, 0, packed), 0.5f, BI_P(nulls, 1, w));
}

/* act_quant (rows m, cols k) pointers: x xq xscale */
static mlk_status run_actq(const tern_case *t, unsigned nulls)
{
    size_t n = bi_n(t->m, t->k, 1, 1);
    float *x = bi_in(n);
    int8_t *xq = (int8_t *)bi_out(n);
    float *xs = bi_outf(bi_n(t->m, 1, 1, 1));
    if (n) bi_pattern(x, (size_t)t->m, (size_t)t->k, t->data);
    return mlk_act_quant_i8(t->m, t->k, BI_P(nulls, 0, x), BI_P(nulls, 1, xq), BI_P(nulls, 2, xs));
}

/* gemm pointers: xq xscale wpacked y */
static mlk_status run_tgemm(const tern_case *t, unsigned nulls)
{
    int8_t *xq = (int8_t *)bi_in(bi_n(t->m, t->k, 1, 1));
    float *xs = bi_in(bi_n(t->m, 1, 1, 1)), *y = bi_outf(bi_n(t->m, t->n, 1, 1));
    uint8_t *w = tern_packed(t->n, t->k, 0);
    return mlk_ternary_gemm(t->m, t->n, t->k, BI_P(nulls, 0, xq), BI_P(nulls, 1, xs), BI_P(nulls, 2, w), 0.5f,
                            BI_P(nulls, 3, y));
}

/* bitlinear fwd pointers: x w y; data NaN goes to x, +inf to w */
static mlk_status run_blfwd(const tern_case *t, unsigned nulls)
{
    size_t nx = bi_n(t->m, t->k, 1, 1), nw = bi_n(t->n, t->k, 1, 1);
    float *x = bi_in(nx), *w = bi_in(nw), *y = bi_outf(bi_n(t->m, t->n, 1, 1));
    if (nx && t->data != BI_PINF) bi_pattern(x, (size_t)t->m, (size_t)t->k, t->data);
    if (nw && t->data == BI_PINF) bi_pattern(w, (size_t)t->n, (size_t)t->k, t->data);
    return mlk_bitlinear_fwd(t->m, t->n, t->k, BI_P(nulls, 0, x), BI_P(nulls, 1, w), BI_P(nulls, 2, y));
}

/* bitlinear bwd pointers: x w dy dx dw; NaN goes to x (read for dw), +inf
   to w (read for dx): either must fail with neither output written */
static mlk_status run_blbwd(const tern_case *t, unsigned nulls)
{
    size_t nx = bi_n(t->m, t->k, 1, 1), nw = bi_n(t->n, t->k, 1, 1), ny = bi_n(t->m, t->n, 1, 1);
    float *x = bi_in(nx), *w = bi_in(nw), *dy = bi_in(ny), *dx = bi_outf(nx), *dw = bi_outf(nw);
    if (nx && t->data != BI_PINF) bi_pattern(x, (size_t)t->m, (size_t)t->k, t->data);
    if (nw && t->data == BI_PINF) bi_pattern(w, (size_t)t->n, (size_t)t->k, t->data);
    return mlk_bitlinear_bwd(t->m, t->n, t->k, BI_P(nulls, 0, x), BI_P(nulls, 1, w), BI_P(nulls, 2, dy),
                             BI_P(nulls, 3, dx), BI_P(nulls, 4, dw));
}

typedef struct adam_case {
    const char *what;
    int n, step;
    float lr, beta1, beta2, eps, wd;
    unsigned nulls;
    int want;
} adam_case;

static const adam_case adam_cases[] = {
    {"valid", 9, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 0, MLK_OK},
    {"valid: zeros", 9, 3, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0, MLK_OK},
    {"n 0", 0, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_SHAPE},
    {"n < 0", -9, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_SHAPE},
    {"step 0", 9, 0, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"step < 0", 9, -1, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"lr < 0", 9, 1, -1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"lr NaN", 9, 1, NAN, 0.9f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"beta1 1", 9, 1, 1e-3f, 1.0f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"beta1 < 0", 9, 1, 1e-3f, -0.1f, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"beta1 NaN", 9, 1, 1e-3f, NAN, 0.999f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"beta2 1", 9, 1, 1e-3f, 0.9f, 1.0f, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"beta2 NaN", 9, 1, 1e-3f, 0.9f, NAN, 1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"eps < 0", 9, 1, 1e-3f, 0.9f, 0.999f, -1e-8f, 1e-2f, 0, MLK_ERR_ARG},
    {"eps NaN", 9, 1, 1e-3f, 0.9f, 0.999f, NAN, 1e-2f, 0, MLK_ERR_ARG},
    {"weight_decay < 0", 9, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, -1e-2f, 0, MLK_ERR_ARG},
    {"weight_decay NaN", 9, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, NAN, 0, MLK_ERR_ARG},
};

/* adamw pointers: param grad m v cfg; param, m, v are updated in place, so
   they are the outputs (sentinel-filled) */
static mlk_status run_adam(const adam_case *t, unsigned nulls)
{
    size_t n = bi_n(t->n, 1, 1, 1);
    float *param = bi_outf(n), *grad = bi_in(n), *m = bi_outf(n), *v = bi_outf(n);
    mlk_adamw_config cfg;
    cfg.lr = t->lr; cfg.beta1 = t->beta1; cfg.beta2 = t->beta2; cfg.eps = t->eps; cfg.weight_decay = t->wd;
    return mlk_adamw_step(t->n, BI_P(nulls, 0, param), BI_P(nulls, 1, grad), BI_P(nulls, 2, m), BI_P(nulls, 3, v),
                          BI_P(nulls, 4, &cfg), t->step);
}

static void test_ternary(void)
{
    static const tern_case both_null[] = {{"dx and dw NULL is a no-op", 3, 5, 7, BI_FINITE, 0, MLK_OK}};
    /* the matmul of dw allocates packing buffers (n > 8): with dx written
       first, its failure must not leave dx half-done */
    static const tern_case bwd_big[] = {
        {"valid, n > 8", 3, 20, 7, BI_FINITE, 0, MLK_OK},
        {"NaN in x, dx and dw", 3, 20, 7, BI_NAN, 0, MLK_ERR_VALUE},
        {"+inf in w, dx and dw", 3, 20, 7, BI_PINF, 0, MLK_ERR_VALUE},
    };
    bi_value("mlk_ternary_row_bytes", "cols 0", (long long)mlk_ternary_row_bytes(0), 0);
    bi_value("mlk_ternary_row_bytes", "cols < 0", (long long)mlk_ternary_row_bytes(-7), 0);
    bi_value("mlk_ternary_row_bytes", "cols INT_MIN", (long long)mlk_ternary_row_bytes(INT_MIN), 0);
    bi_value("mlk_ternary_row_bytes", "cols INT_MAX", (long long)mlk_ternary_row_bytes(INT_MAX), (INT_MAX / 4) + 1);
    BI_TABLE("mlk_ternary_quant", tern_cases, run_tquant, 0x7u);
    BI_TABLE("mlk_ternary_quant", tern_value_cases, run_tquant, 0u);
    BI_TABLE("mlk_ternary_dequant", tern_cases, run_tdequant, 0x3u);
    bi_end("mlk_ternary_dequant", "code 3 in the last byte", run_tdequant(&tern_value_cases[1], 0), MLK_ERR_VALUE);
    BI_TABLE("mlk_act_quant_i8", tern_cases, run_actq, 0x7u);
    BI_TABLE("mlk_act_quant_i8", tern_value_cases, run_actq, 0u);
    BI_TABLE("mlk_ternary_gemm", tern_cases, run_tgemm, 0xFu);
    BI_TABLE("mlk_ternary_gemm", tern_n_cases, run_tgemm, 0u);
    BI_TABLE("mlk_ternary_gemm", tern_k_cases, run_tgemm, 0u);
    BI_TABLE("mlk_bitlinear_fwd", tern_cases, run_blfwd, 0x7u);
    BI_TABLE("mlk_bitlinear_fwd", tern_value_cases, run_blfwd, 0u);
    BI_TABLE("mlk_bitlinear_fwd", tern_n_cases, run_blfwd, 0u);
    BI_TABLE("mlk_bitlinear_fwd", tern_k_cases, run_blfwd, 0u);
    BI_TABLE("mlk_bitlinear_bwd", tern_cases, run_blbwd, 0x7u);
    BI_TABLE("mlk_bitlinear_bwd", tern_n_cases, run_blbwd, 0u);
    BI_TABLE("mlk_bitlinear_bwd", tern_k_cases, run_blbwd, 0u);
    BI_TABLE("mlk_bitlinear_bwd", bwd_big, run_blbwd, 0u);
    bi_end("mlk_bitlinear_bwd", both_null[0].what, run_blbwd(&both_null[0], 0x18u), MLK_OK);
    BI_TABLE("mlk_adamw_step", adam_cases, run_adam, 0x1Fu);
}

/* ---- second-version entry points ---- */

typedef struct v2_case {
    const char *what;
    int a, b, c;   /* sizes / ids, meaning per function */
    int data;      /* BI_* pattern or a function-specific selector */
    unsigned nulls;
    int want;
} v2_case;

/* merge (rows a, head_dim b): pointers o_a lse_a o_b lse_b o lse; data
   BI_NAN / BI_PINF goes into lse_a */
static const v2_case merge_cases[] = {
    {"valid", 3, 5, 0, BI_FINITE, 0, MLK_OK},
    {"valid: a row with both lse -inf", 3, 5, 0, BI_NINF_ONE, 0, MLK_OK},
    {"rows 0", 0, 5, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
    {"head_dim < 0", 3, -5, 0, BI_FINITE, 0, MLK_ERR_SHAPE},
};

static mlk_status run_merge(const v2_case *t, unsigned nulls)
{
    size_t no = bi_n(t->a, t->b, 1, 1), nl = bi_n(t->a, 1, 1, 1);
    float *oa = bi_in(no), *la = bi_in(nl), *ob = bi_in(no), *lb = bi_in(nl);
    if (nl && t->data == BI_NINF_ONE) la[0] = lb[0] = -INFINITY;
    return mlk_attn_merge(t->a, t->b, BI_P(nulls, 0, oa), BI_P(nulls, 1, la), BI_P(nulls, 2, ob), BI_P(nulls, 3, lb),
                          BI_P(nulls, 4, bi_outf(no)), BI_P(nulls, 5, bi_outf(nl)));
}

/* rope (rows a, heads b, head_dim 8, rot_dim c): data selects a bad field;
   pointers cfg pos x (x is in place: the output) */
enum { ROPE_OK, ROPE_THETA_1, ROPE_THETA_NAN, ROPE_STYLE, ROPE_SCALING, ROPE_FACTOR_0, ROPE_POS_NEG, ROPE_LLAMA3_BAD };
static const v2_case rope_cases[] = {
    {"valid", 3, 2, 8, ROPE_OK, 0, MLK_OK},
    {"valid: partial rotation", 3, 2, 4, ROPE_OK, 0, MLK_OK},
    {"rows 0", 0, 2, 8, ROPE_OK, 0, MLK_ERR_SHAPE},
    {"heads < 0", 3, -2, 8, ROPE_OK, 0, MLK_ERR_SHAPE},
    {"rot_dim odd", 3, 2, 5, ROPE_OK, 0, MLK_ERR_SHAPE},
    {"rot_dim 0", 3, 2, 0, ROPE_OK, 0, MLK_ERR_SHAPE},
    {"rot_dim > head_dim", 3, 2, 10, ROPE_OK, 0, MLK_ERR_SHAPE},
    {"theta 1", 3, 2, 8, ROPE_THETA_1, 0, MLK_ERR_ARG},
    {"theta NaN", 3, 2, 8, ROPE_THETA_NAN, 0, MLK_ERR_ARG},
    {"style 2", 3, 2, 8, ROPE_STYLE, 0, MLK_ERR_ARG},
    {"scaling 9", 3, 2, 8, ROPE_SCALING, 0, MLK_ERR_ARG},
    {"linear factor 0", 3, 2, 8, ROPE_FACTOR_0, 0, MLK_ERR_ARG},
    {"a position < 0", 3, 2, 8, ROPE_POS_NEG, 0, MLK_ERR_ARG},
    {"llama3 high_freq_factor <= low_freq_factor", 3, 2, 8, ROPE_LLAMA3_BAD, 0, MLK_ERR_ARG},
};

static mlk_status run_rope(const v2_case *t, unsigned nulls, int bwd)
{
    mlk_rope_config cfg;
    size_t n = bi_n(t->a, t->b, 8, 1);
    int32_t *pos = (int32_t *)bi_in(bi_n(t->a, 1, 1, 1));
    float *x = bi_outf(n);
    int i;
    memset(&cfg, 0, sizeof cfg);
    cfg.head_dim = 8;
    cfg.rot_dim = t->c;
    cfg.style = MLK_ROPE_NEOX;
    cfg.theta = t->data == ROPE_THETA_1 ? 1.0f : t->data == ROPE_THETA_NAN ? NAN : 10000.0f;
    cfg.scaling = MLK_ROPE_SCALE_NONE;
    if (t->data == ROPE_STYLE) cfg.style = (mlk_rope_style)2;
    if (t->data == ROPE_SCALING) cfg.scaling = (mlk_rope_scaling)9;
    if (t->data == ROPE_FACTOR_0) cfg.scaling = MLK_ROPE_SCALE_LINEAR;
    if (t->data == ROPE_LLAMA3_BAD) {
        cfg.scaling = MLK_ROPE_SCALE_LLAMA3;
        cfg.factor = 8.0f;
        cfg.low_freq_factor = 4.0f;
        cfg.high_freq_factor = 1.0f;
        cfg.original_max_position = 8192;
    }
    for (i = 0; i < (t->a > 0 ? t->a : 4); i++) pos[i] = i * 7;
    if (t->data == ROPE_POS_NEG) pos[t->a - 1] = -1;
    return (bwd ? mlk_rope_bwd : mlk_rope_fwd)(BI_P(nulls, 0, &cfg), t->a, t->b, BI_P(nulls, 1, pos), BI_P(nulls, 2, x));
}
static mlk_status run_rope_fwd(const v2_case *t, unsigned nulls) { return run_rope(t, nulls, 0); }
static mlk_status run_rope_bwd(const v2_case *t, unsigned nulls) { return run_rope(t, nulls, 1); }

/* sinks: attn_fwd with sinks (data: BI_NAN / BI_PINF in them) and
   sinks_grad; pointers d o dout lse dsinks */
static const v2_case sinks_cases[] = {
    {"valid", 0, 0, 0, BI_FINITE, 0, MLK_OK},
    {"valid: a sink -inf (none)", 0, 0, 0, BI_NINF_ONE, 0, MLK_OK},
    {"sink NaN", 0, 0, 0, BI_NAN, 0, MLK_ERR_ARG},
    {"sink +inf", 0, 0, 0, BI_PINF, 0, MLK_ERR_ARG},
};
/* the gradient needs them */
static const v2_case sinks_grad_cases[] = {
    {"valid", 0, 0, 0, BI_FINITE, 0, MLK_OK},
    {"sink NaN", 0, 0, 0, BI_NAN, 0, MLK_ERR_ARG},
    {"d->sinks NULL", 0, 0, 1, BI_FINITE, 0, MLK_ERR_NULL},
};

static const attn_case sink_desc[] = {{"", 2, 4, 2, 5, 7, 8, 0, 1, 0, 0, NOKV, 0, 0, 0, 0, 0, 0, MLK_OK}};

static mlk_status run_sinks_fwd(const v2_case *t, unsigned nulls)
{
    mlk_attn_desc d;
    int kv_len[2], parent[5];
    float *sinks = bi_in(4), *q = bi_in(320), *k = bi_in(224), *v = bi_in(224);
    bi_pattern(sinks, 1, 4, t->data);
    attn_desc_of(&sink_desc[0], &d, kv_len, parent);
    d.sinks = sinks;
    return mlk_attn_fwd(&d, BI_P(nulls, 0, q), k, v, bi_outf(320), bi_outf(40));
}

static mlk_status run_sinks_grad(const v2_case *t, unsigned nulls)
{
    mlk_attn_desc d;
    int kv_len[2], parent[5];
    float *sinks = bi_in(4), *o = bi_in(320), *dout = bi_in(320), *lse = bi_in(40);
    bi_pattern(sinks, 1, 4, t->data);
    attn_desc_of(&sink_desc[0], &d, kv_len, parent);
    d.sinks = t->c ? NULL : sinks;
    return mlk_attn_sinks_grad(BI_P(nulls, 0, &d), BI_P(nulls, 1, o), BI_P(nulls, 2, dout), BI_P(nulls, 3, lse),
                               BI_P(nulls, 4, bi_outf(4)));
}

/* layout / blocks / prepare_write on the KV fixture: seq, a = pos or cap,
   b = n; pointers c out... */
static const v2_case layout_cases[] = {
    {"valid", 0, 0, 0, 0, 0, MLK_OK},
    {"NULL cache", 0, 0, 0, 0, 1u, MLK_ERR_NULL},
    {"NULL layout", 0, 0, 0, 0, 2u, MLK_ERR_NULL},
};

static mlk_status run_get_layout(const v2_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture(MLK_KV_Q8, 0);
    mlk_kv_layout *lay = (mlk_kv_layout *)bi_out(sizeof(mlk_kv_layout));
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_get_layout(BI_P(nulls, 0, c), BI_P(nulls, 1, lay));
    bi_end("mlk_kv_get_layout", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

/* prepare_write: seq a, pos b, n c, cap 4 (data 1: cap 0); pointers c copies n_copies */
static const v2_case prepare_cases[] = {
    {"valid (two shared blocks)", 1, 2, 3, 0, 0, MLK_OK},
    {"seq freed", 2, 0, 1, 0, 0, MLK_ERR_ARG},
    {"seq never created", 3, 0, 1, 0, 0, MLK_ERR_ARG},
    {"seq -1", -1, 0, 1, 0, 0, MLK_ERR_ARG},
    {"pos < 0", 1, -1, 2, 0, 0, MLK_ERR_SHAPE},
    {"pos + n > len", 1, 4, 3, 0, 0, MLK_ERR_SHAPE},
    {"n 0", 1, 2, 0, 0, 0, MLK_ERR_SHAPE},
    {"more copies than cap", 1, 2, 3, 1, 0, MLK_ERR_CAPACITY},
};

static mlk_status run_prepare(const v2_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture(MLK_KV_F32, 0);
    int *copies = (int *)bi_out(8 * sizeof(int)), *n_copies = (int *)bi_out(sizeof(int));
    mlk_status st;
    bi_watch(c);
    st = mlk_kv_prepare_write(BI_P(nulls, 0, c), t->a, t->b, t->c, BI_P(nulls, 1, copies), t->data ? 1 : 4,
                              BI_P(nulls, 2, n_copies));
    bi_end("mlk_kv_prepare_write", t->what, st, t->want);
    mlk_kv_destroy(c);
    return st;
}

/* kv_attn_opt: seq a, n_q b, heads c; data selects a bad option; pointers
   c seqs n_q q opts o (lse optional) */
enum { KVO_OK, KVO_WINDOW, KVO_SOFTCAP, KVO_SINK, KVO_WS_SMALL, KVO_TREE2 };
static const v2_case kv_opt_cases[] = {
    {"valid", 1, 3, 4, KVO_OK, 0, MLK_OK},
    {"seq freed", 2, 3, 4, KVO_OK, 0, MLK_ERR_ARG},
    {"n_q > len", 1, 7, 4, KVO_OK, 0, MLK_ERR_SHAPE},
    {"heads % kv_heads != 0", 1, 3, 3, KVO_OK, 0, MLK_ERR_SHAPE},
    {"window < 0", 1, 3, 4, KVO_WINDOW, 0, MLK_ERR_ARG},
    {"softcap NaN", 1, 3, 4, KVO_SOFTCAP, 0, MLK_ERR_ARG},
    {"sink NaN", 1, 3, 4, KVO_SINK, 0, MLK_ERR_ARG},
    {"workspace too small for one thread", 1, 3, 4, KVO_WS_SMALL, 0, MLK_ERR_ARG},
    {"tree parent[1] == 1", 1, 3, 4, KVO_TREE2, 0, MLK_ERR_TREE},
};

static void kv_opts_of(const v2_case *t, mlk_kv_attn_opts *opts, float *sinks, void *ws)
{
    static const int bad_tree[3] = {-1, 1, 0};
    memset(opts, 0, sizeof *opts);
    opts->window = t->data == KVO_WINDOW ? -1 : 0;
    opts->softcap = t->data == KVO_SOFTCAP ? NAN : 0.0f;
    if (t->data == KVO_SINK) {
        sinks[1] = NAN;
        opts->sinks = sinks;
    }
    if (t->data == KVO_WS_SMALL) {
        opts->workspace = ws;
        opts->workspace_bytes = 16;
    }
    if (t->data == KVO_TREE2) opts->tree_parent = bad_tree;
}

static mlk_status run_kv_opt(const v2_case *t, unsigned nulls)
{
    mlk_kv_cache *c = kv_fixture(MLK_KV_Q4, 0);
    mlk_kv_attn_opts opts;
    int seqs[1], n_q[1];
    size_t n = bi_n(t->b > 0 && t->b < 64 ? t->b : 1, t->c > 0 ? t->c : 1, 5, 1);
    float *sinks = bi_in(8), *q = bi_in(n), *o = bi_outf(n), *lse = bi_outf(n / 5 + 1);
    unsigned char *ws = (unsigned char *)bi_out(64);
    mlk_status st;
    seqs[0] = t->a;
    n_q[0] = t->b;
    kv_opts_of(t, &opts, sinks, ws);
    size_t need = mlk_kv_attn_workspace_size(c, 1, seqs, n_q, t->c, &opts);
    bi_watch(c);
    st = mlk_kv_attn_opt(BI_P(nulls, 0, c), 1, 1, BI_P(nulls, 1, seqs), BI_P(nulls, 2, n_q), BI_P(nulls, 3, q), t->c,
                         BI_P(nulls, 4, &opts), BI_P(nulls, 5, o), lse);
    bi_end("mlk_kv_attn_opt", t->what, st, t->want);
    if (nulls == 0) /* the size query is 0 exactly when the call is invalid */
        bi_value("mlk_kv_attn_workspace_size", t->what, need == 0, t->want != MLK_OK && t->data != KVO_WS_SMALL);
    mlk_kv_destroy(c);
    return st;
}

/* sample_rows (rows 2, n 9): data selects a bad parameter; pointers
   logits params rng out (logprob, top_* optional) */
enum { SR_OK, SR_TEMP, SR_REP_NEG, SR_HIST_TOKEN, SR_BIAS_TOKEN, SR_BIAS_NAN, SR_BIAS_PINF, SR_NAN_LOGIT,
       SR_ALL_BANNED, SR_TOP_N };
static const v2_case sample_rows_cases[] = {
    {"valid", 2, 9, 3, SR_OK, 0, MLK_OK},
    {"rows 0", 0, 9, 3, SR_OK, 0, MLK_ERR_SHAPE},
    {"top_n > n", 2, 9, 10, SR_TOP_N, 0, MLK_ERR_SHAPE},
    {"temperature < 0", 2, 9, 3, SR_TEMP, 0, MLK_ERR_ARG},
    {"repetition_penalty < 0", 2, 9, 3, SR_REP_NEG, 0, MLK_ERR_ARG},
    {"history token >= n", 2, 9, 3, SR_HIST_TOKEN, 0, MLK_ERR_ARG},
    {"bias token < 0", 2, 9, 3, SR_BIAS_TOKEN, 0, MLK_ERR_ARG},
    {"bias NaN", 2, 9, 3, SR_BIAS_NAN, 0, MLK_ERR_ARG},
    {"bias +inf", 2, 9, 3, SR_BIAS_PINF, 0, MLK_ERR_ARG},
    {"NaN logit", 2, 9, 3, SR_NAN_LOGIT, 0, MLK_ERR_VALUE},
    {"every token banned by -inf bias", 2, 9, 3, SR_ALL_BANNED, 0, MLK_ERR_VALUE},
};

static mlk_status run_sample_rows(const v2_case *t, unsigned nulls)
{
    static const int32_t hist_ok[3] = {1, 4, 1}, hist_bad[2] = {2, 9};
    mlk_logit_bias bias[9];
    mlk_sample_row *params = (mlk_sample_row *)bi_in(2 * sizeof(mlk_sample_row) / sizeof(float) + 1);
    size_t n = bi_n(t->a, t->b, 1, 1), rows = bi_n(t->a, 1, 1, 1), top = bi_n(t->a, t->c, 1, 1);
    float *x = bi_in(n);
    uint64_t *rng = (uint64_t *)bi_out(2 * sizeof(uint64_t));
    int32_t *out = (int32_t *)bi_out(rows * sizeof(int32_t)), *top_idx = (int32_t *)bi_out(top * sizeof(int32_t));
    float *logprob = bi_outf(rows), *top_lp = bi_outf(top);
    int r, i;
    memset(params, 0, 2 * sizeof(mlk_sample_row));
    for (i = 0; i < 9; i++) { bias[i].token = i; bias[i].bias = -INFINITY; }
    for (r = 0; r < 2; r++) {
        mlk_sample_row *p = &params[r];
        p->sampler.temperature = t->data == SR_TEMP ? -1.0f : 0.8f;
        p->sampler.top_p = 1.0f;
        p->repetition_penalty = t->data == SR_REP_NEG ? -1.0f : 1.3f;
        p->presence_penalty = 0.5f;
        p->history = t->data == SR_HIST_TOKEN ? hist_bad : hist_ok;
        p->history_len = t->data == SR_HIST_TOKEN ? 2 : 3;
        p->bias = bias;
        p->n_bias = t->data == SR_ALL_BANNED && r == 1 ? 9 : 1;
    }
    bias[0].bias = 0.5f;
    if (t->data == SR_BIAS_TOKEN) bias[0].token = -1;
    if (t->data == SR_BIAS_NAN) bias[0].bias = NAN;
    if (t->data == SR_BIAS_PINF) bias[0].bias = INFINITY;
    if (t->data == SR_ALL_BANNED) bias[0].bias = -INFINITY;
    if (n && t->data == SR_NAN_LOGIT) bi_pattern(x, rows, (size_t)t->b, BI_NAN);
    return mlk_sample_rows(t->a, t->b, BI_P(nulls, 0, x), BI_P(nulls, 1, params), BI_P(nulls, 2, rng),
                           BI_P(nulls, 3, out), logprob, t->c, top_idx, top_lp);
}

/* spec_accept_sample (n a, vocab b): data selects bad input; pointers
   parent draft p_target p_draft rng path n_path token */
enum { SA_OK, SA_TREE, SA_TOKEN, SA_NEG_PROB, SA_NAN_PROB, SA_ZERO_TARGET };
static const v2_case accept_sample_cases[] = {
    {"valid", 4, 5, 0, SA_OK, 0, MLK_OK},
    {"n 0", 0, 5, 0, SA_OK, 0, MLK_ERR_SHAPE},
    {"vocab 0", 4, 0, 0, SA_OK, 0, MLK_ERR_SHAPE},
    {"parent[2] == 2", 4, 5, 0, SA_TREE, 0, MLK_ERR_TREE},
    {"draft token >= vocab", 4, 5, 0, SA_TOKEN, 0, MLK_ERR_ARG},
    {"negative probability", 4, 5, 0, SA_NEG_PROB, 0, MLK_ERR_VALUE},
    {"NaN probability", 4, 5, 0, SA_NAN_PROB, 0, MLK_ERR_VALUE},
    {"target row summing to 0", 4, 5, 0, SA_ZERO_TARGET, 0, MLK_ERR_VALUE},
};

static mlk_status run_accept_sample(const v2_case *t, unsigned nulls)
{
    int parent[4] = {-1, 0, 0, -1};
    int32_t draft[4] = {1, 2, 3, 4};
    float *pt = bi_in(64), *pd = bi_in(64);
    uint64_t *rng = (uint64_t *)bi_out(sizeof(uint64_t));
    int *path = (int *)bi_out(4 * sizeof(int)), *n_path = (int *)bi_out(sizeof(int));
    int32_t *token = (int32_t *)bi_out(sizeof(int32_t));
    int i;
    for (i = 0; i < 64; i++) { pt[i] = 0.2f; pd[i] = 0.2f; }
    if (t->data == SA_TREE) parent[2] = 2;
    if (t->data == SA_TOKEN) draft[3] = 5;
    if (t->data == SA_NEG_PROB) pd[7] = -0.1f;
    if (t->data == SA_NAN_PROB) pt[6] = NAN;
    if (t->data == SA_ZERO_TARGET)
        for (i = 5; i < 10; i++) pt[i] = 0.0f;
    return mlk_spec_accept_sample(t->a, BI_P(nulls, 0, parent), BI_P(nulls, 1, draft), t->b, BI_P(nulls, 2, pt),
                                  BI_P(nulls, 3, pd), BI_P(nulls, 4, rng), BI_P(nulls, 5, path), BI_P(nulls, 6, n_path),
                                  BI_P(nulls, 7, token));
}

/* spec_generate_sample: mock draft (a chain of up to 2 nodes) and target
   with uniform distributions over a vocabulary of 4; mode breaks one */
enum { SS_OK, SS_DRAFT_NAN, SS_VERIFY_NEG, SS_VERIFY_ABORT };
static int ss_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens, int *parent,
                    float *probs, int *n_nodes)
{
    const int *mode = (const int *)user;
    int i, j;
    (void)ctx;
    *n_nodes = max_nodes < 2 ? max_nodes : 2;
    for (i = 0; i < *n_nodes; i++) {
        tokens[i] = (ctx_len + i) % 4;
        parent[i] = i - 1;
        for (j = 0; j < 4; j++) probs[i * 4 + j] = 0.25f;
    }
    if (*mode == SS_DRAFT_NAN && *n_nodes > 0) probs[1] = NAN;
    return 0;
}

static int ss_verify(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                     const int *parent, float *probs)
{
    const int *mode = (const int *)user;
    int i;
    (void)ctx; (void)ctx_len; (void)tokens; (void)parent;
    if (*mode == SS_VERIFY_ABORT) return 3;
    for (i = 0; i < (n_nodes + 1) * 4; i++) probs[i] = 0.25f;
    if (*mode == SS_VERIFY_NEG) probs[2] = -1.0f;
    return 0;
}

static const v2_case spec_sample_cases[] = {
    {"valid", 2, 6, 4, SS_OK, 0, MLK_OK},
    {"prompt_len 0", 0, 6, 4, SS_OK, 0, MLK_ERR_SHAPE},
    {"max_new_tokens 0", 2, 0, 4, SS_OK, 0, MLK_ERR_SHAPE},
    {"vocab 0", 2, 6, 0, SS_OK, 0, MLK_ERR_SHAPE},
    {"NaN in a draft distribution", 2, 6, 4, SS_DRAFT_NAN, 0, MLK_ERR_VALUE},
    {"negative target probability", 2, 6, 4, SS_VERIFY_NEG, 0, MLK_ERR_VALUE},
    {"verify aborts", 2, 6, 4, SS_VERIFY_ABORT, 0, MLK_ERR_CALLBACK},
};

/* pointers: cfg sampling prompt out out_len (stats optional), then
   sampling->draft (5) and sampling->verify (6) */
static mlk_status run_spec_sample(const v2_case *t, unsigned nulls)
{
    static const int32_t prompt[2] = {1, 3};
    mlk_spec_config cfg;
    mlk_spec_sampling sm;
    int mode = t->data;
    int32_t *out = (int32_t *)bi_out(bi_n(t->b, 1, 1, 1) * sizeof(int32_t));
    int *out_len = (int *)bi_out(sizeof(int));
    mlk_spec_stats *stats = (mlk_spec_stats *)bi_out(sizeof(mlk_spec_stats));
    memset(&cfg, 0, sizeof cfg);
    cfg.max_new_tokens = t->b;
    cfg.max_nodes = 3;
    cfg.eos_id = -1;
    cfg.user = &mode;
    sm.vocab = t->c;
    sm.seed = 42;
    sm.draft = ((nulls >> 5) & 1u) ? (mlk_draft_sample_fn)NULL : ss_draft;
    sm.verify = ((nulls >> 6) & 1u) ? (mlk_verify_sample_fn)NULL : ss_verify;
    return mlk_spec_generate_sample(BI_P(nulls, 0, &cfg), BI_P(nulls, 1, &sm), BI_P(nulls, 2, prompt), t->a,
                                    BI_P(nulls, 3, out), BI_P(nulls, 4, out_len), stats);
}

static void test_v2(void)
{
    mlk_kv_cache *c = kv_fixture(MLK_KV_F32, 0);
    int blocks[4];
    mlk_kv_config cfg;
    size_t i;
    BI_TABLE("mlk_attn_merge", merge_cases, run_merge, 0x3Fu);
    BI_TABLE("mlk_rope_fwd", rope_cases, run_rope_fwd, 0x7u);
    BI_TABLE("mlk_rope_bwd", rope_cases, run_rope_bwd, 0x7u);
    BI_TABLE("mlk_attn_fwd", sinks_cases, run_sinks_fwd, 0u);
    BI_TABLE("mlk_attn_sinks_grad", sinks_grad_cases, run_sinks_grad, 0x1Fu);
    for (i = 0; i < sizeof layout_cases / sizeof layout_cases[0]; i++) run_get_layout(&layout_cases[i], layout_cases[i].nulls);
    for (i = 0; i < sizeof prepare_cases / sizeof prepare_cases[0]; i++) run_prepare(&prepare_cases[i], 0);
    for (i = 0; i < 3; i++) {
        v2_case n = prepare_cases[0];
        n.what = bi_null_names[i];
        n.want = MLK_ERR_NULL;
        run_prepare(&n, 1u << i);
    }
    for (i = 0; i < sizeof kv_opt_cases / sizeof kv_opt_cases[0]; i++) run_kv_opt(&kv_opt_cases[i], 0);
    for (i = 0; i < 6; i++) { /* opts (pointer 4) may be NULL: the defaults */
        v2_case n = kv_opt_cases[0];
        if (i == 4) continue;
        n.what = bi_null_names[i];
        n.want = MLK_ERR_NULL;
        run_kv_opt(&n, 1u << i);
    }
    /* seq_blocks: the count, -1 for bad ids, NULL blocks with cap > 0 */
    bi_value("mlk_kv_seq_blocks", "valid", mlk_kv_seq_blocks(c, 1, blocks, 4), 2);
    bi_value("mlk_kv_seq_blocks", "cap 0, NULL blocks", mlk_kv_seq_blocks(c, 0, NULL, 0), 2);
    bi_value("mlk_kv_seq_blocks", "NULL blocks, cap > 0", mlk_kv_seq_blocks(c, 0, NULL, 4), -1);
    bi_value("mlk_kv_seq_blocks", "NULL cache", mlk_kv_seq_blocks(NULL, 0, blocks, 4), -1);
    bi_value("mlk_kv_seq_blocks", "seq freed", mlk_kv_seq_blocks(c, 2, blocks, 4), -1);
    bi_value("mlk_kv_seq_blocks", "seq never created", mlk_kv_seq_blocks(c, 3, blocks, 4), -1);
    bi_value("mlk_kv_seq_blocks", "seq -1", mlk_kv_seq_blocks(c, -1, blocks, 4), -1);
    mlk_kv_destroy(c);
    /* bookkeeping-only caches: the same config checks as mlk_kv_create */
    for (i = 0; i < sizeof kv_create_cases / sizeof kv_create_cases[0]; i++) {
        const kv_cfg_case *t = &kv_create_cases[i];
        mlk_kv_cache **out = (mlk_kv_cache **)bi_out(sizeof(mlk_kv_cache *));
        mlk_status st;
        cfg.layers = t->layers; cfg.kv_heads = t->kv_heads; cfg.head_dim = t->head_dim;
        cfg.block_size = t->block_size; cfg.num_blocks = t->num_blocks; cfg.max_seqs = t->max_seqs;
        cfg.type = (mlk_kv_type)t->type;
        st = mlk_kv_create_bookkeeping(&cfg, out);
        if (st == MLK_OK) {
            mlk_kv_cache *made;
            memcpy(&made, out, sizeof made);
            mlk_kv_destroy(made);
        }
        /* without a pool, a pool of 2^40 bytes is no reason to fail */
        bi_end("mlk_kv_create_bookkeeping", t->what, st,
               strstr(t->what, "2^40") ? MLK_OK : t->want);
    }
    bi_end("mlk_kv_create_bookkeeping", "NULL cfg", mlk_kv_create_bookkeeping(NULL, &c), MLK_ERR_NULL);
    bi_end("mlk_kv_create_bookkeeping", "NULL out", mlk_kv_create_bookkeeping(&cfg, NULL), MLK_ERR_NULL);
    BI_TABLE("mlk_sample_rows", sample_rows_cases, run_sample_rows, 0xFu);
    BI_TABLE("mlk_spec_accept_sample", accept_sample_cases, run_accept_sample, 0xFFu);
    BI_TABLE("mlk_spec_generate_sample", spec_sample_cases, run_spec_sample, 0x7Fu);
}

static void test_status_str(void)
{
    int s;
    for (s = MLK_OK; s <= MLK_ERR_CUDA; s++)
        bi_value("mlk_status_str", "every code is named",
                 strcmp(mlk_status_str((mlk_status)s), "unknown status") != 0, 1);
    bi_value("mlk_status_str", "code 99", strcmp(mlk_status_str((mlk_status)99), "unknown status"), 0);
    bi_value("mlk_status_str", "code -1", strcmp(mlk_status_str((mlk_status)-1), "unknown status"), 0);
}

int main(void)
{
    mlkt_file = "test_badinput";
    MLKT_RUN(test_status_str, 1);
    MLKT_RUN(test_norms, 2);
    MLKT_RUN(test_softmax, 3);
    MLKT_RUN(test_attention, 4);
    MLKT_RUN(test_kv, 5);
    MLKT_RUN(test_beam, 6);
    MLKT_RUN(test_spec, 7);
    MLKT_RUN(test_ternary, 8);
    MLKT_RUN(test_v2, 9);
    BI_TABLE("mlk_sgemm", gemm_cases, run_gemm, 0x7u);
    printf("badinput: %d cases over %d functions\n", bi_cases, bi_n_fns);
    printf("badinput per function:");
    for (int i = 0; i < bi_n_fns; i++) printf(" %s %d", bi_fns[i] + 4, bi_fn_cases[i]); /* without "mlk_" */
    printf("\n");
    return mlkt_finish();
}

/* Regression tests for defects found by testing mlkern from outside: each
   test reproduces one report (a heap overflow through a workspace sized
   under fewer threads, a backward P off the forward's lse, long-row sum
   precision, outputs written before an allocation failed, window overflow,
   NaN in masked keys, tiny quantiser scales, documented behaviour the code
   lacked) and checks the fixed behaviour against an independent reference. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* mmap of a lazily zero-filled region, for the INT_MAX row */
#endif
#include <stdlib.h>
#include <limits.h>

/* An allocator that fails at the fail_at-th call from now (0: never). */
static long safety_calls, safety_fail_at;
static void *safety_malloc(size_t n)
{
    safety_calls++;
    if (safety_fail_at > 0 && safety_calls == safety_fail_at) return NULL;
    return malloc(n);
}
#define MLKERN_MALLOC(n) safety_malloc(n)
#define MLKERN_FREE(p) free(p)
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

static mlk_attn_desc desc(int b, int hq, int hkv, int nq, int nkv, int dim)
{
    mlk_attn_desc d;
    memset(&d, 0, sizeof d);
    d.batch = b; d.heads = hq; d.kv_heads = hkv; d.len_q = nq; d.len_kv = nkv; d.head_dim = dim;
    return d;
}

static size_t q_count(const mlk_attn_desc *d) { return (size_t)d->batch * d->heads * d->len_q * d->head_dim; }
static size_t kv_count(const mlk_attn_desc *d)
{
    return (size_t)d->batch * (d->kv_heads ? d->kv_heads : d->heads) * (d->len_kv ? d->len_kv : d->len_q) * d->head_dim;
}

static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* max |a - b| over n floats, NaN anywhere: INFINITY */
static double max_diff(const float *a, const float *b, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - b[i]);
        if (x != x) return INFINITY;
        if (x > e) e = x;
    }
    return e;
}

/* ---- 1: a workspace sized for one thread, used with more ---- */

/* The forward is 2 x 8 x 64 x 96 x 24 = 2.4M multiply-adds, above
   MLK__PAR_ATTN_MACS: it fans out, so a team larger than the buffer's room
   would run off its end (the original heap overflow). The buffer sized for
   one thread must run (on one), the one sized for four on four, with the
   same bits as a call that allocates; a buffer short of one thread's room
   is MLK_ERR_ARG with o untouched. */
static void test_workspace_threads(void)
{
    mlk_attn_desc d = desc(2, 8, 2, 64, 96, 24);
    size_t nq = q_count(&d), nkv = kv_count(&d), ws, ws_full;
    float *q = mlkt_floats(nq), *k = mlkt_floats(nkv), *v = mlkt_floats(nkv), *dout = mlkt_floats(nq);
    float *o_ref = mlkt_floats(nq), *o = mlkt_floats(nq), *o_full = mlkt_floats(nq), *lse = mlkt_floats((size_t)2 * 8 * 64);
    float *dk_ref = mlkt_floats(nkv), *dk = mlkt_floats(nkv);
    unsigned char *buf, *buf_full;
#ifdef _OPENMP
    int saved = omp_get_max_threads();
#endif
    d.causal = 1;
    CHECKF((double)d.batch * d.heads * d.len_q * d.len_kv * d.head_dim >= 2 * MLK__PAR_ATTN_MACS,
           "the forward must fan out (MLK__PAR_ATTN_MACS %.0f)", MLK__PAR_ATTN_MACS);
    mlkt_fill_normal(q, nq, 1.0); mlkt_fill_normal(k, nkv, 1.0); mlkt_fill_normal(v, nkv, 1.0);
    mlkt_fill_normal(dout, nq, 1.0);
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o_ref, lse), MLK_OK);
    CHECK_INT(mlk_attn_bwd(&d, q, k, v, o_ref, dout, lse, NULL, dk_ref, NULL), MLK_OK);
    d.threads = 1;
    ws = mlk_attn_workspace_size(&d);
    CHECK(ws > 0);
    buf = (unsigned char *)mlkt_alloc(ws);
#ifdef _OPENMP
    omp_set_num_threads(4);
#endif
    d.threads = 0; /* now as many threads as OpenMP allows: the buffer must bound them */
    ws_full = mlk_attn_workspace_size(&d);
#ifdef _OPENMP
    CHECKF(ws_full > ws, "a workspace for 4 threads (%zu bytes) is larger than for 1 (%zu)", ws_full, ws);
#endif
    buf_full = (unsigned char *)mlkt_alloc(ws_full);
    d.workspace = buf_full;
    d.workspace_bytes = ws_full;
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o_full, NULL), MLK_OK);
    CHECK(mlkt_same(o_full, o_ref, nq * sizeof(float)));
    CHECK_GUARD(buf_full);
    d.workspace = buf;
    d.workspace_bytes = ws;
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, NULL), MLK_OK);
    CHECK(mlkt_same(o, o_full, nq * sizeof(float)));
    CHECK_INT(mlk_attn_bwd(&d, q, k, v, o_ref, dout, lse, NULL, dk, NULL), MLK_OK);
    CHECK(mlkt_same(dk, dk_ref, nkv * sizeof(float)));
    CHECK_GUARD(buf);
    /* too small for one thread: an error, nothing written */
    memset(o, 0x55, nq * sizeof(float));
    memcpy(dk, o, nkv * sizeof(float) < nq * sizeof(float) ? nkv * sizeof(float) : nq * sizeof(float));
    d.workspace_bytes = 100;
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, NULL), MLK_ERR_ARG);
    {
        float pattern;
        memset(&pattern, 0x55, sizeof pattern);
        CHECK(o[0] == pattern && o[nq - 1] == pattern);
    }
    CHECK_INT(mlk_attn_bwd(&d, q, k, v, o_ref, dout, lse, NULL, dk, NULL), MLK_ERR_ARG);
    d.threads = -1;
    d.workspace = NULL;
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, NULL), MLK_ERR_ARG);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    mlkt_digest(o_ref, nq * sizeof(float));
    mlkt_free(buf); mlkt_free(buf_full);
    mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(dout); mlkt_free(o_ref); mlkt_free(o); mlkt_free(o_full);
    mlkt_free(lse); mlkt_free(dk_ref); mlkt_free(dk);
}

/* ---- 2: P = exp(S - lse) in the backward from the forward's bits ---- */

/* One key j_hot whose score is hundreds above the others: the forward gives
   l = 1 exactly, so P = 1 exactly there and dv[j_hot] = sum of the rows'
   dout exactly (one query row per kv head: dout itself). */
static void check_hot_key(int nq, int group, int dim)
{
    mlk_attn_desc d = desc(1, group, 1, nq, 40, dim);
    size_t nqe = q_count(&d), nkv = kv_count(&d);
    float *q = mlkt_floats(nqe), *k = mlkt_floats(nkv), *v = mlkt_floats(nkv), *dout = mlkt_floats(nqe);
    float *o = mlkt_floats(nqe), *lse = mlkt_floats((size_t)group * nq), *dv = mlkt_floats(nkv);
    const int j_hot = 17;
    mlkt_fill_normal(k, nkv, 1.0);
    mlkt_fill_normal(v, nkv, 1.0);
    mlkt_fill_normal(dout, nqe, 1.0);
    for (int r = 0; r < group * nq; r++) /* q = 60 k_hot + noise: s_hot ~ 60 |k|^2 / sqrt(D) */
        for (int e = 0; e < dim; e++) q[(size_t)r * dim + e] = 60.0f * k[(size_t)j_hot * dim + e] + (float)mlkt_normal();
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, lse), MLK_OK);
    CHECK_INT(mlk_attn_bwd(&d, q, k, v, o, dout, lse, NULL, NULL, dv), MLK_OK);
    for (int e = 0; e < dim; e++) {
        double want = 0; /* P = 1 for every row: dv = sum of dout over the rows */
        for (int r = 0; r < group * nq; r++) want += dout[(size_t)r * dim + e];
        CHECKF(fabs(dv[(size_t)j_hot * dim + e] - want) <= 1e-6 * (fabs(want) + 1),
               "nq %d group %d: dv %.9g want %.9g", nq, group, dv[(size_t)j_hot * dim + e], want);
    }
    if (nq == 1 && group == 1)
        CHECK(mlkt_same(dv + (size_t)j_hot * dim, dout, (size_t)dim * sizeof(float)));
    mlkt_digest(dv, nkv * sizeof(float));
    mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(dout); mlkt_free(o); mlkt_free(lse); mlkt_free(dv);
}

static void test_bwd_probs_match_fwd(void)
{
    check_hot_key(1, 1, 64);   /* decode row: the forward's typed path */
    check_hot_key(1, 4, 128);  /* a GQA group of 4 rows */
    check_hot_key(65, 1, 64);  /* a last q tile of one row */
    check_hot_key(8, 1, 32);   /* the packed tile path */
}

/* ---- 3: sums over long rows ---- */

static void test_long_row_precision(void)
{
    static const int dims[] = {65536, 262144};
    for (int t = 0; t < 2; t++) {
        int dim = dims[t];
        float *x = mlkt_floats((size_t)dim), *y = mlkt_floats((size_t)dim), rstd, mean;
        double c = 0.1f, want = 1.0 / sqrt(c * c + 1e-6), sum = 0, sum_sq = 0, m, var;
        for (int i = 0; i < dim; i++) x[i] = 0.1f;
        CHECK_INT(mlk_rmsnorm_fwd(1, dim, x, NULL, 1e-6f, y, &rstd), MLK_OK);
        CHECKF(fabs(rstd - want) <= 3e-7 * want, "rms dim %d: rstd %.9g want %.9g", dim, rstd, want);
        mlkt_fill_normal(x, (size_t)dim, 1.0);
        for (int i = 0; i < dim; i++) x[i] += 3.0f;
        for (int i = 0; i < dim; i++) sum += x[i];
        m = sum / dim;
        for (int i = 0; i < dim; i++) sum_sq += (x[i] - m) * (x[i] - m);
        var = sum_sq / dim;
        CHECK_INT(mlk_layernorm_fwd(1, dim, x, NULL, NULL, 1e-6f, y, &mean, &rstd), MLK_OK);
        CHECKF(fabs(mean - m) <= 3e-7 * fabs(m), "ln dim %d: mean %.9g want %.9g", dim, mean, m);
        CHECKF(fabs(rstd - 1.0 / sqrt(var + 1e-6)) <= 3e-7 / sqrt(var), "ln dim %d: rstd %.9g", dim, rstd);
        mlkt_free(x); mlkt_free(y);
    }
}

/* top-k over INT_MAX zero logits: every p is 1 / INT_MAX. The row is an
   8 GiB anonymous mapping that is never written (the kernel reads the zero
   page), so it costs no memory; skipped under sanitizers and off Linux. */
static void test_topk_int_max_row(void)
{
#if defined(__linux__) && !defined(MLKT_QUICK) && !defined(__SANITIZE_ADDRESS__)
    size_t bytes = (size_t)INT_MAX * sizeof(float);
    float probs[3];
    int32_t idx[3];
    void *row = mmap(NULL, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (row == MAP_FAILED) {
        printf("test_safety: INT_MAX row not run here (mmap of 8 GiB failed)\n");
        return;
    }
    CHECK_INT(mlk_topk_softmax(1, INT_MAX, (const float *)row, 1.0f, 3, probs, idx), MLK_OK);
    for (int j = 0; j < 3; j++) {
        CHECK_CLOSE(probs[j], 1.0 / INT_MAX, 1e-6, 0);
        CHECK_INT(idx[j], j);
    }
    munmap(row, bytes);
#else
    printf("test_safety: INT_MAX row not run in this configuration (sanitizer or not Linux)\n");
#endif
}

/* ---- 4: an allocation failure leaves every output untouched ---- */

static void test_bitlinear_bwd_nomem(void)
{
    const int m = 9, n = 13, k = 40;
    float *x = mlkt_floats((size_t)m * k), *w = mlkt_floats((size_t)n * k), *dy = mlkt_floats((size_t)m * n);
    float *dx = mlkt_floats((size_t)m * k), *dw = mlkt_floats((size_t)n * k);
    float *dx_ok = mlkt_floats((size_t)m * k), *dw_ok = mlkt_floats((size_t)n * k);
    mlk_status st = MLK_ERR_NOMEM;
    long fail_at;
    mlkt_fill_normal(x, (size_t)m * k, 1.0); mlkt_fill_normal(w, (size_t)n * k, 1.0);
    mlkt_fill_normal(dy, (size_t)m * n, 1.0);
    CHECK_INT(mlk_bitlinear_bwd(m, n, k, x, w, dy, dx_ok, dw_ok), MLK_OK);
    for (fail_at = 1; fail_at < 20 && st != MLK_OK; fail_at++) {
        memset(dx, 0x33, (size_t)m * k * sizeof(float));
        memset(dw, 0x33, (size_t)n * k * sizeof(float));
        safety_calls = 0;
        safety_fail_at = fail_at;
        st = mlk_bitlinear_bwd(m, n, k, x, w, dy, dx, dw);
        safety_fail_at = 0;
        if (st == MLK_OK) break;
        CHECK_INT(st, MLK_ERR_NOMEM);
        {
            float pattern;
            int untouched = 1;
            memset(&pattern, 0x33, sizeof pattern);
            for (int i = 0; i < m * k; i++) untouched &= memcmp(&dx[i], &pattern, 4) == 0;
            for (int i = 0; i < n * k; i++) untouched &= memcmp(&dw[i], &pattern, 4) == 0;
            CHECKF(untouched, "allocation %ld failed: outputs written", fail_at);
        }
    }
    CHECK_INT(st, MLK_OK);
    CHECK(fail_at > 1); /* some allocation was failed on the way */
    CHECK(mlkt_same(dx, dx_ok, (size_t)m * k * sizeof(float)));
    CHECK(mlkt_same(dw, dw_ok, (size_t)n * k * sizeof(float)));
    mlkt_free(x); mlkt_free(w); mlkt_free(dy); mlkt_free(dx); mlkt_free(dw); mlkt_free(dx_ok); mlkt_free(dw_ok);
}

/* ---- 5: window = INT_MAX means unbounded ---- */

static void test_window_int_max(void)
{
    for (int causal = 0; causal < 2; causal++) {
        mlk_attn_desc d = desc(2, 2, 1, 19, 45, 16);
        size_t nq = q_count(&d), nkv = kv_count(&d);
        float *q = mlkt_floats(nq), *k = mlkt_floats(nkv), *v = mlkt_floats(nkv);
        float *o = mlkt_floats(nq), *o_ref = mlkt_floats(nq), *o_nowin = mlkt_floats(nq);
        int kv_len[2] = {45, 30};
        mlkt_fill_normal(q, nq, 1.0); mlkt_fill_normal(k, nkv, 1.0); mlkt_fill_normal(v, nkv, 1.0);
        d.causal = causal;
        d.kv_len = kv_len;
        d.tile_kv = 8;
        CHECK_INT(mlk_attn_fwd(&d, q, k, v, o_nowin, NULL), MLK_OK);
        d.window = INT_MAX;
        CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, NULL), MLK_OK);
        CHECK_INT(mlk_attn_naive(&d, q, k, v, o_ref, NULL), MLK_OK);
        CHECKF(max_diff(o, o_ref, nq) <= 1e-5, "causal %d: fwd vs naive %.3g", causal, max_diff(o, o_ref, nq));
        CHECK(mlkt_same(o, o_nowin, nq * sizeof(float)));
        mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(o); mlkt_free(o_ref); mlkt_free(o_nowin);
    }
}

/* ---- 6: non-finite keys and values a query cannot see ---- */

/* Poisons key/value row `j` of every kv head with NaN (k) and inf (v),
   then requires every query that cannot see j to match the naive
   reference (which skips masked keys) and stay finite in o and dq. */
static void check_masked_poison(mlk_attn_desc d, int j, const char *what)
{
    size_t nq = q_count(&d), nkv = kv_count(&d), nrow = (size_t)d.batch * d.heads * d.len_q;
    int hkv = d.kv_heads ? d.kv_heads : d.heads, nkv_len = d.len_kv ? d.len_kv : d.len_q;
    float *q = mlkt_floats(nq), *k = mlkt_floats(nkv), *v = mlkt_floats(nkv), *dout = mlkt_floats(nq);
    float *o = mlkt_floats(nq), *o_ref = mlkt_floats(nq), *lse = mlkt_floats(nrow), *dq = mlkt_floats(nq);
    float *dk = mlkt_floats(nkv), *dv = mlkt_floats(nkv);
    int n_blind = 0;
    mlkt_fill_normal(q, nq, 1.0); mlkt_fill_normal(k, nkv, 1.0); mlkt_fill_normal(v, nkv, 1.0);
    mlkt_fill_normal(dout, nq, 1.0);
    for (int b = 0; b < d.batch; b++)
        for (int h = 0; h < hkv; h++)
            for (int e = 0; e < d.head_dim; e++) {
                size_t at = d.layout == MLK_BHND ? (((size_t)b * hkv + h) * nkv_len + j) * d.head_dim
                                                 : (((size_t)b * nkv_len + j) * hkv + h) * d.head_dim;
                k[at + e] = e % 2 ? NAN : INFINITY;
                v[at + e] = e % 3 ? INFINITY : NAN;
            }
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, lse), MLK_OK);
    CHECK_INT(mlk_attn_naive(&d, q, k, v, o_ref, NULL), MLK_OK);
    CHECK_INT(mlk_attn_bwd(&d, q, k, v, o, dout, lse, dq, dk, dv), MLK_OK);
    for (size_t r = 0; r < nrow; r++) {
        size_t b = r / ((size_t)d.heads * d.len_q), h = r / d.len_q % d.heads, i = r % d.len_q;
        size_t at = d.layout == MLK_BHND ? r * d.head_dim : ((b * d.len_q + i) * d.heads + h) * d.head_dim;
        if (!all_finite(o_ref + at, (size_t)d.head_dim)) continue; /* the row sees the poisoned key */
        n_blind++;
        CHECKF(max_diff(o + at, o_ref + at, (size_t)d.head_dim) <= 1e-5, "%s: row %zu o differs from naive", what, r);
        CHECKF(all_finite(dq + at, (size_t)d.head_dim), "%s: row %zu dq not finite", what, r);
    }
    CHECKF(n_blind > 0, "%s: some rows must not see key %d", what, j);
    mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(dout); mlkt_free(o); mlkt_free(o_ref); mlkt_free(lse);
    mlkt_free(dq); mlkt_free(dk); mlkt_free(dv);
}

static void test_masked_nonfinite(void)
{
    static const int parent[7] = {-1, 0, 0, 1, -1, 4, 2};
    mlk_attn_desc d = desc(1, 4, 2, 20, 20, 16);
    d.causal = 1;
    check_masked_poison(d, 13, "causal tile");
    d.tile_kv = 7;
    check_masked_poison(d, 13, "causal, key tile 7");
    d = desc(1, 4, 2, 40, 40, 64); /* value rows as wide as the padded tile: read in place where finite */
    d.causal = 1;
    check_masked_poison(d, 21, "causal tile, D 64");
    d.window = 9;
    d.tile_q = 16;
    check_masked_poison(d, 12, "window, D 64");
    d = desc(1, 2, 2, 2, 30, 16); /* two query rows per task: the typed decode path */
    d.causal = 1;
    check_masked_poison(d, 29, "typed rows, causal");
    d.window = 5;
    check_masked_poison(d, 24, "typed rows, window");
    d = desc(1, 3, 1, 7, 12, 8); /* tree: node 3's key is no ancestor of nodes 2, 4, 5, 6 */
    d.tree_parent = parent;
    d.layout = MLK_BNHD;
    check_masked_poison(d, 5 + 3, "tree");
}

/* The same through the KV cache: F32 and F16 rows read in place. */
static void test_kv_masked_nonfinite(void)
{
    static const mlk_kv_type types[2] = {MLK_KV_F32, MLK_KV_F16};
    for (int t = 0; t < 2; t++) {
        mlk_kv_config cfg;
        mlk_kv_cache *c = NULL;
        int seq = -1, n_q = 3;
        const int len = 21, hkv = 2, heads = 4, dim = 16;
        float *k = mlkt_floats((size_t)len * hkv * dim), *v = mlkt_floats((size_t)len * hkv * dim);
        float *q = mlkt_floats((size_t)n_q * heads * dim), *o = mlkt_floats((size_t)n_q * heads * dim);
        memset(&cfg, 0, sizeof cfg);
        cfg.layers = 1; cfg.kv_heads = hkv; cfg.head_dim = dim; cfg.block_size = 8; cfg.num_blocks = 4;
        cfg.max_seqs = 1; cfg.type = types[t];
        mlkt_fill_normal(k, (size_t)len * hkv * dim, 1.0);
        mlkt_fill_normal(v, (size_t)len * hkv * dim, 1.0);
        mlkt_fill_normal(q, (size_t)n_q * heads * dim, 1.0);
        for (int e = 0; e < hkv * dim; e++) { /* the newest position: only the last query sees it */
            k[(size_t)(len - 1) * hkv * dim + e] = NAN;
            v[(size_t)(len - 1) * hkv * dim + e] = NAN;
        }
        CHECK_INT(mlk_kv_create(&cfg, &c), MLK_OK);
        CHECK_INT(mlk_kv_seq_new(c, &seq), MLK_OK);
        CHECK_INT(mlk_kv_append(c, seq, len), MLK_OK);
        CHECK_INT(mlk_kv_store(c, seq, 0, 0, len, k, v), MLK_OK);
        CHECK_INT(mlk_kv_attn(c, 0, 1, &seq, &n_q, q, heads, 0.0f, NULL, o), MLK_OK);
        for (int i = 0; i < (n_q - 1) * heads * dim; i++)
            CHECKF(isfinite(o[i]), "type %d: o[%d] = %g for a query that cannot see the NaN key", t, i, o[i]);
        for (int i = (n_q - 1) * heads * dim; i < n_q * heads * dim; i++) CHECK(o[i] != o[i]);
        mlk_kv_destroy(c);
        mlkt_free(k); mlkt_free(v); mlkt_free(q); mlkt_free(o);
    }
}

/* ---- 7: quantisers down to denormals ---- */

/* codes in [-qmax, qmax], |x - q s| <= s / 2 (plus the float rounding of
   q s), and the largest |x| at |q| = qmax */
static void check_quant(const float *x, int n, const int8_t *q, float s, int qmax, const char *what)
{
    int at_max = 0;
    float amax = 0;
    for (int i = 0; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    CHECKF(s >= amax / qmax * (1 - 1e-6) && s > 0, "%s: scale %g for max %g", what, s, amax);
    for (int i = 0; i < n; i++) {
        double err = fabs((double)x[i] - (double)q[i] * s);
        CHECKF(q[i] >= -qmax && q[i] <= qmax, "%s: code %d", what, q[i]);
        CHECKF(err <= 0.5 * s * (1 + 1e-6) + 1.4e-45, "%s: x %g code %d scale %g err %g", what, x[i], q[i], s, err);
        at_max |= fabsf(x[i]) == amax && abs(q[i]) == qmax;
    }
    if (amax / qmax >= 1e-40) /* coarser scales are denormal multiples: no code reaches qmax */
        CHECKF(at_max, "%s: the largest value must take the largest code", what);
}

static void test_tiny_quant(void)
{
    static const float rows[4][4] = {{2e-37f, 0.0f, -1e-37f, 1e-38f},
                                     {3e-39f, -1e-40f, 5e-41f, 1e-45f},
                                     {1.4e-45f, 0.0f, -1.4e-45f, 0.0f},
                                     {1e-30f, -7e-31f, 3e-31f, 0.0f}};
    int8_t q[16];
    float s[4];
    CHECK_INT(mlk_act_quant_i8(4, 4, &rows[0][0], q, s), MLK_OK);
    for (int r = 0; r < 4; r++) check_quant(rows[r], 4, q + 4 * r, s[r], 127, "act_quant_i8");
    CHECK_INT(q[0], 127); /* the report's row: {127, 0, -64, 6} */
    CHECK_INT(q[1], 0);
    CHECK(q[2] == -64 || q[2] == -63);
    CHECK_INT(q[3], 6);
    for (int type = MLK_KV_Q8; type <= MLK_KV_Q4; type++) { /* the cache: load(store(x)) within the bound */
        mlk_kv_config cfg;
        mlk_kv_cache *c = NULL;
        int seq = -1;
        float x[32], kv_back[32], v_back[32];
        memset(&cfg, 0, sizeof cfg);
        cfg.layers = 1; cfg.kv_heads = 1; cfg.head_dim = 32; cfg.block_size = 4; cfg.num_blocks = 1;
        cfg.max_seqs = 1; cfg.type = (mlk_kv_type)type;
        for (int i = 0; i < 32; i++) x[i] = rows[i % 3][i % 4] * (i % 3 ? 1.0f : -1.0f);
        x[5] = -3e-37f;
        CHECK_INT(mlk_kv_create(&cfg, &c), MLK_OK);
        CHECK_INT(mlk_kv_seq_new(c, &seq), MLK_OK);
        CHECK_INT(mlk_kv_append(c, seq, 1), MLK_OK);
        CHECK_INT(mlk_kv_store(c, seq, 0, 0, 1, x, x), MLK_OK);
        CHECK_INT(mlk_kv_load(c, seq, 0, 0, 1, kv_back, v_back), MLK_OK);
        {
            int qmax = type == MLK_KV_Q8 ? 127 : 7;
            double step = 3e-37 / qmax; /* the block's max |x| is x[5] */
            for (int i = 0; i < 32; i++)
                CHECKF(fabs((double)kv_back[i] - x[i]) <= 0.5 * step * (1 + 1e-6) + 1.4e-45,
                       "type %d: x %g back %g", type, x[i], kv_back[i]);
            CHECK_CLOSE(kv_back[5], x[5], 1e-6, 1.4e-45);
        }
        mlk_kv_destroy(c);
    }
}

/* ---- 9: what the header documents ---- */

static void test_documented_behaviour(void)
{
    mlk_kv_config cfg;
    mlk_attn_desc d = desc(2, 2, 2, 4, 6, 8);
    int kv_len[2] = {6, 7}, bad_parent[4] = {-1, 0, 2, 1};
    float logits[8] = {1, 2, 3, 4, 5, 6, 7, 8}, p[2];
    int32_t idx[2], out[1];
    uint64_t rng = 1;
    mlk_sampler smp;
    memset(&cfg, 0, sizeof cfg);
    cfg.layers = 1; cfg.kv_heads = 2; cfg.head_dim = 64; cfg.block_size = 16; cfg.num_blocks = 4;
    cfg.max_seqs = 2; cfg.type = MLK_KV_Q8;
    CHECK(mlk_kv_bytes_per_token(&cfg) == 2 * 2 * (4 * 2 + 64));
    cfg.layers = 0;
    CHECK(mlk_kv_bytes_per_token(&cfg) == 0);
    cfg.layers = 1; cfg.num_blocks = -1;
    CHECK(mlk_kv_bytes_per_token(&cfg) == 0);
    cfg.num_blocks = 4; cfg.max_seqs = 0;
    CHECK(mlk_kv_bytes_per_token(&cfg) == 0);
    CHECK(mlk_attn_workspace_size(&d) > 0);
    d.kv_len = kv_len; /* 7 > len_kv */
    CHECK(mlk_attn_workspace_size(&d) == 0);
    d.kv_len = NULL;
    d.tree_parent = bad_parent;
    d.len_q = 4;
    CHECK(mlk_attn_workspace_size(&d) == 0);
    /* temperatures: positive with a finite reciprocal */
    CHECK_INT(mlk_topk_softmax(1, 8, logits, 3e-39f, 2, p, idx), MLK_OK);
    CHECK_INT(idx[0], 7);
    CHECK_INT(mlk_topk_softmax(1, 8, logits, 1e-39f, 2, p, idx), MLK_ERR_ARG);
    memset(&smp, 0, sizeof smp);
    smp.top_p = 1.0f;
    smp.temperature = 1e-39f;
    CHECK_INT(mlk_sample(1, 8, logits, &smp, &rng, out), MLK_ERR_ARG);
    smp.temperature = 3e-39f;
    CHECK_INT(mlk_sample(1, 8, logits, &smp, &rng, out), MLK_OK);
    CHECK_INT(out[0], 7);
}

static int lp_model(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens, float *logits)
{
    (void)user; (void)parent; (void)seqs; (void)lens;
    for (int i = 0; i < n * 5; i++) logits[i] = (float)(i % 5);
    return 0;
}

static void test_extreme_length_penalty(void)
{
    mlk_beam_config cfg;
    const int32_t prompt[2] = {1, 2};
    const int32_t *prompts[1] = {prompt};
    int plen = 2, out_len[2];
    int32_t toks[2 * 6];
    float score[2];
    memset(&cfg, 0, sizeof cfg);
    cfg.beam_width = 2; cfg.vocab = 5; cfg.eos_id = 4; cfg.max_new_tokens = 6; cfg.num_return = 2;
    cfg.length_penalty = -1100.0f;
    for (int i = 0; i < 12; i++) toks[i] = 77;
    CHECK_INT(mlk_beam_search(&cfg, 1, prompts, &plen, lp_model, NULL, toks, out_len, NULL, score), MLK_ERR_ARG);
    CHECK_INT(toks[0], 77);
    cfg.length_penalty = 10.0f;
    CHECK_INT(mlk_beam_search(&cfg, 1, prompts, &plen, lp_model, NULL, toks, out_len, NULL, score), MLK_OK);
    CHECK(isfinite(score[0]) && isfinite(score[1]));
}

int main(void)
{
    mlkt_file = "test_safety";
    MLKT_RUN(test_workspace_threads, 1);
    MLKT_RUN(test_bwd_probs_match_fwd, 2);
    MLKT_RUN(test_long_row_precision, 3);
    MLKT_RUN(test_topk_int_max_row, 4);
    MLKT_RUN(test_bitlinear_bwd_nomem, 5);
    MLKT_RUN(test_window_int_max, 6);
    MLKT_RUN(test_masked_nonfinite, 7);
    MLKT_RUN(test_kv_masked_nonfinite, 8);
    MLKT_RUN(test_tiny_quant, 9);
    MLKT_RUN(test_documented_behaviour, 10);
    MLKT_RUN(test_extreme_length_penalty, 11);
    return mlkt_finish();
}

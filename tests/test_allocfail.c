/* Allocation failure in every public entry point that may allocate. The
   library's MLKERN_MALLOC / MLKERN_FREE are replaced by a counting
   allocator that fails its k-th call; each call is run with k = 1, 2, 3,
   ... until it succeeds, and every failing run must return MLK_ERR_NOMEM
   with every output equal to its 0xFF sentinel (mlkt_alloc), every KV cache
   unchanged (stats, lengths, loaded contents) and no allocation left
   outstanding. The final, successful run must not leak either (checked
   after its teardown). Prints "allocfail: N cases over M sweeps" (a sweep:
   one entry point with one set of arguments, run for k = 1, 2, ...; some
   entry points are swept several times, with other shapes or options). */
#include <stdlib.h>
static void *af_malloc(size_t n);
static void af_free(void *p);
#define MLKERN_MALLOC(n) af_malloc(n)
#define MLKERN_FREE(p) af_free(p)
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"

/* ---- the failing allocator ---- */

static long af_calls;    /* MLKERN_MALLOC calls since af_arm */
static long af_fail_at;  /* the call (1-based) that returns NULL; 0: none */
static long af_live;     /* allocations not yet freed */
static int af_armed;

static void *af_malloc(size_t n)
{
    void *p = NULL;
    int fail;
#ifdef _OPENMP
#pragma omp critical(mlkt_af)
#endif
    {
        if (af_armed) af_calls++;
        fail = af_armed && af_calls == af_fail_at;
        if (!fail) p = malloc(n);
        if (p) af_live++;
    }
    return p;
}

static void af_free(void *p)
{
    if (!p) return;
#ifdef _OPENMP
#pragma omp critical(mlkt_af)
#endif
    af_live--;
    free(p);
}

/* ---- one case: outputs and caches registered by the runner ---- */

#define AF_MAX 16
static void *af_outs[AF_MAX];
static size_t af_out_bytes[AF_MAX];
static int af_n_out;
static void *af_ins[AF_MAX];
static int af_n_in;
static mlk_kv_cache *af_cache;       /* destroyed at the end of the case */
static unsigned char *af_snap;
static size_t af_snap_bytes;
static long af_live_before;          /* outstanding allocations at af_arm */
static long af_live_after;           /* ... right after the call */
static int af_cases, af_n_fns;

static void *af_out(size_t bytes)
{
    af_outs[af_n_out] = mlkt_alloc(bytes);
    af_out_bytes[af_n_out] = bytes;
    return af_outs[af_n_out++];
}

static float *af_outf(size_t n) { return (float *)af_out(n * sizeof(float)); }

/* finite inputs in [-2, 2) */
static float *af_in(size_t n)
{
    float *p = (float *)malloc(n * sizeof(float));
    mlkt_fill_uniform(p, n, -2, 2);
    af_ins[af_n_in++] = p;
    return p;
}

/* Everything observable about a cache of `layers` layers and rows of `row`
   floats, ids below 8: stats, lengths, loaded contents (a malloc'd blob). */
static unsigned char *af_kv_state(const mlk_kv_cache *c, int layers, int row, size_t *bytes)
{
    mlk_kv_stats st;
    size_t used = sizeof st;
    unsigned char *blob = (unsigned char *)malloc(sizeof st + 8 * sizeof(int));
    int s, l;
    memset(&st, 0, sizeof st);
    mlk_kv_get_stats(c, &st);
    memcpy(blob, &st, sizeof st);
    for (s = 0; s < 8; s++) {
        int len = mlk_kv_seq_len(c, s);
        memcpy(blob + used, &len, sizeof len);
        used += sizeof len;
    }
    for (s = 0; s < 8; s++) {
        int len = mlk_kv_seq_len(c, s);
        size_t n = (size_t)(len > 0 ? len : 0) * (size_t)row * sizeof(float);
        for (l = 0; l < layers && len > 0; l++) {
            blob = (unsigned char *)realloc(blob, used + 2 * n);
            mlk_kv_load(c, s, l, 0, len, (float *)(void *)(blob + used), (float *)(void *)(blob + used + n));
            used += 2 * n;
        }
    }
    *bytes = used;
    return blob;
}

static int af_kv_layers, af_kv_row;

/* A cache the case must leave unchanged when its call fails. */
static void af_watch(mlk_kv_cache *c, int layers, int row)
{
    af_cache = c;
    af_kv_layers = layers;
    af_kv_row = row;
    af_snap = af_kv_state(c, layers, row, &af_snap_bytes);
}

/* Brackets the library call: only allocations in between are counted. */
static void af_arm(void)
{
    af_live_before = af_live;
    af_calls = 0;
    af_armed = 1;
}

static void af_disarm(void)
{
    af_armed = 0;
    af_live_after = af_live;
}

static int af_all_ff(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++)
        if (b[i] != 0xFF) return 0;
    return 1;
}

/* the harness prints only its first 30 failures; later ones are printed here */
static void af_check(int ok, const char *msg)
{
    if (!ok && mlkt_failed >= 30) fprintf(stderr, "FAIL %s\n", msg);
    mlkt_report(ok, __FILE__, __LINE__, "allocfail", msg);
}

/* Checks one run that failed its k-th allocation, then tears it down. */
static void af_end(const char *fn, const char *what, long k, mlk_status st)
{
    char msg[256];
    int i;
    af_cases++;
    snprintf(msg, sizeof msg, "%s (%s): allocation %ld fails: want %s, got %s", fn, what, k,
             mlk_status_str(MLK_ERR_NOMEM), mlk_status_str(st));
    af_check(st == MLK_OK || st == MLK_ERR_NOMEM, msg);
    if (st != MLK_OK) {
        snprintf(msg, sizeof msg, "%s (%s): allocation %ld fails: %ld allocations leaked", fn, what, k,
                 af_live_after - af_live_before);
        af_check(af_live_after == af_live_before, msg);
        for (i = 0; i < af_n_out; i++) {
            snprintf(msg, sizeof msg, "%s (%s): allocation %ld fails: output %d written", fn, what, k, i);
            af_check(af_all_ff(af_outs[i], af_out_bytes[i]), msg);
        }
        if (af_cache) {
            size_t n;
            unsigned char *now = af_kv_state(af_cache, af_kv_layers, af_kv_row, &n);
            snprintf(msg, sizeof msg, "%s (%s): allocation %ld fails: cache changed", fn, what, k);
            af_check(n == af_snap_bytes && memcmp(now, af_snap, n) == 0, msg);
            free(now);
        }
    }
    for (i = 0; i < af_n_out; i++) mlkt_free(af_outs[i]);
    for (i = 0; i < af_n_in; i++) free(af_ins[i]);
    mlk_kv_destroy(af_cache);
    free(af_snap);
    af_cache = NULL;
    af_snap = NULL;
    af_n_out = af_n_in = 0;
}

/* Runs `run` with allocation k = 1, 2, ... failing until it succeeds (or
   returns something other than MLK_ERR_NOMEM). Returns the number of
   allocations the successful call made, or -1. */
static long af_sweep(const char *fn, const char *what, mlk_status (*run)(void))
{
    long k, base = af_live, made = -1;
    char msg[256];
    for (k = 1; k <= 1000; k++) {
        mlk_status st;
        af_fail_at = k;
        st = run();
        af_end(fn, what, k, st);
        snprintf(msg, sizeof msg, "%s (%s): allocation %ld fails: %ld allocations outstanding after teardown", fn,
                 what, k, af_live - base);
        af_check(af_live == base, msg);
        if (st == MLK_OK) {
            made = af_calls;
            break;
        }
        if (st != MLK_ERR_NOMEM) break; /* reported by af_end; more k cannot help */
    }
    snprintf(msg, sizeof msg, "%s (%s): never succeeded", fn, what);
    af_check(made >= 0, msg);
    af_fail_at = 0;
    af_n_fns++;
    return made;
}

/* ---- gemm ---- */

static mlk_status run_sgemm_packed(void)
{
    const float *a = af_in(20 * 16), *b = af_in(16 * 24);
    float *c = af_outf(20 * 24);
    mlk_status st;
    af_arm();
    st = mlk_sgemm(0, 0, 20, 24, 16, 1.0f, a, 16, b, 24, 0.0f, c, 24);
    af_disarm();
    return st;
}

/* m <= 8 with both transposed copies op(A) */
static mlk_status run_sgemm_tt(void)
{
    const float *a = af_in(16 * 5), *b = af_in(24 * 16);
    float *c = af_outf(5 * 24);
    mlk_status st;
    af_arm();
    st = mlk_sgemm(1, 1, 5, 24, 16, 1.0f, a, 5, b, 16, 0.0f, c, 24);
    af_disarm();
    return st;
}

/* ---- norms ---- */

static mlk_status run_layernorm_fwd(void)
{
    const float *x = af_in(40 * 33), *g = af_in(33), *b = af_in(33);
    float *y = af_outf(40 * 33), *mean = af_outf(40), *rstd = af_outf(40);
    mlk_status st;
    af_arm();
    st = mlk_layernorm_fwd(40, 33, x, g, b, 1e-5f, y, mean, rstd);
    af_disarm();
    return st;
}

static float *af_in_rstd(size_t n)
{
    float *p = af_in(n);
    size_t i;
    for (i = 0; i < n; i++) p[i] = 1.0f + fabsf(p[i]);
    return p;
}

static mlk_status run_layernorm_bwd(void)
{
    const float *x = af_in(40 * 33), *g = af_in(33), *mean = af_in(40), *rstd = af_in_rstd(40), *dy = af_in(40 * 33);
    float *dx = af_outf(40 * 33), *dg = af_outf(33), *db = af_outf(33);
    mlk_status st;
    af_arm();
    st = mlk_layernorm_bwd(40, 33, x, g, mean, rstd, dy, dx, dg, db);
    af_disarm();
    return st;
}

static mlk_status run_rmsnorm_fwd(void)
{
    const float *x = af_in(40 * 33), *g = af_in(33);
    float *y = af_outf(40 * 33), *rstd = af_outf(40);
    mlk_status st;
    af_arm();
    st = mlk_rmsnorm_fwd(40, 33, x, g, 1e-5f, y, rstd);
    af_disarm();
    return st;
}

static mlk_status run_rmsnorm_bwd(void)
{
    const float *x = af_in(40 * 33), *g = af_in(33), *rstd = af_in_rstd(40), *dy = af_in(40 * 33);
    float *dx = af_outf(40 * 33), *dg = af_outf(33);
    mlk_status st;
    af_arm();
    st = mlk_rmsnorm_bwd(40, 33, x, g, rstd, dy, dx, dg);
    af_disarm();
    return st;
}

/* ---- softmax, top-k, sampling ---- */

static mlk_status run_softmax(void)
{
    const float *x = af_in(3 * 100);
    float *y = af_outf(3 * 100);
    mlk_status st;
    af_arm();
    st = mlk_softmax(3, 100, x, y);
    af_disarm();
    return st;
}

static mlk_status run_log_softmax(void)
{
    const float *x = af_in(3 * 100);
    float *y = af_outf(3 * 100);
    mlk_status st;
    af_arm();
    st = mlk_log_softmax(3, 100, x, y);
    af_disarm();
    return st;
}

static mlk_status run_topk_softmax(void)
{
    const float *x = af_in(3 * 100);
    float *p = af_outf(3 * 5);
    int32_t *idx = (int32_t *)af_out(3 * 5 * sizeof(int32_t));
    mlk_status st;
    af_arm();
    st = mlk_topk_softmax(3, 100, x, 0.7f, 5, p, idx);
    af_disarm();
    return st;
}

static mlk_status run_topk_log_softmax(void)
{
    const float *x = af_in(3 * 100);
    float *p = af_outf(3 * 5);
    int32_t *idx = (int32_t *)af_out(3 * 5 * sizeof(int32_t));
    mlk_status st;
    af_arm();
    st = mlk_topk_log_softmax(3, 100, x, 5, p, idx);
    af_disarm();
    return st;
}

static float af_top_p = 0.9f, af_temperature = 0.8f;

static mlk_status run_sample(void)
{
    const float *x = af_in(3 * 100);
    uint64_t *rng = (uint64_t *)af_out(sizeof(uint64_t));
    int32_t *out = (int32_t *)af_out(3 * sizeof(int32_t));
    mlk_sampler s;
    mlk_status st;
    s.temperature = af_temperature;
    s.top_k = 0;
    s.top_p = af_top_p;
    s.min_p = 0.05f;
    af_arm(); /* the rng state starts as the sentinel: a failing call must not advance it */
    st = mlk_sample(3, 100, x, &s, rng, out);
    af_disarm();
    return st;
}

/* ---- attention ---- */

static const int af_tree[6] = {-1, 0, 0, 1, 3, -1};
static int af_attn_mode; /* 0 causal + kv_len, 1 tree + window, 2 caller workspace */
static unsigned char *af_ws;

static void af_attn_desc(mlk_attn_desc *d, int *kv_len)
{
    memset(d, 0, sizeof *d);
    d->batch = 2; d->heads = 4; d->kv_heads = 2; d->len_q = 6; d->len_kv = 19; d->head_dim = 16;
    kv_len[0] = 19;
    kv_len[1] = 11;
    d->kv_len = kv_len;
    if (af_attn_mode == 1) {
        d->tree_parent = af_tree;
        d->window = 9;
        d->softcap = 3.0f;
    } else {
        d->causal = 1;
    }
    if (af_attn_mode == 2) {
        d->workspace_bytes = mlk_attn_workspace_size(d);
        af_ws = (unsigned char *)realloc(af_ws, d->workspace_bytes);
        d->workspace = af_ws;
    }
}

enum { AF_NQ = 2 * 4 * 6 * 16, AF_NKV = 2 * 2 * 19 * 16, AF_NL = 2 * 4 * 6 };

static mlk_status run_attn_fwd(void)
{
    mlk_attn_desc d;
    int kv_len[2];
    const float *q = af_in(AF_NQ), *k = af_in(AF_NKV), *v = af_in(AF_NKV);
    float *o = af_outf(AF_NQ), *lse = af_outf(AF_NL);
    mlk_status st;
    af_attn_desc(&d, kv_len);
    af_arm();
    st = mlk_attn_fwd(&d, q, k, v, o, lse);
    af_disarm();
    return st;
}

static mlk_status run_attn_naive(void)
{
    mlk_attn_desc d;
    int kv_len[2];
    const float *q = af_in(AF_NQ), *k = af_in(AF_NKV), *v = af_in(AF_NKV);
    float *o = af_outf(AF_NQ), *lse = af_outf(AF_NL);
    mlk_status st;
    af_attn_desc(&d, kv_len);
    af_arm();
    st = mlk_attn_naive(&d, q, k, v, o, lse);
    af_disarm();
    return st;
}

static mlk_status run_attn_bwd(void)
{
    mlk_attn_desc d;
    int kv_len[2];
    const float *q = af_in(AF_NQ), *k = af_in(AF_NKV), *v = af_in(AF_NKV), *dout = af_in(AF_NQ);
    float *o = af_in(AF_NQ), *lse = af_in(AF_NL);
    float *dq = af_outf(AF_NQ), *dk = af_outf(AF_NKV), *dv = af_outf(AF_NKV);
    mlk_status st;
    af_attn_desc(&d, kv_len);
    st = mlk_attn_fwd(&d, q, k, v, o, lse);
    if (st != MLK_OK) return st; /* allocation not armed: never fails here */
    af_arm();
    st = mlk_attn_bwd(&d, q, k, v, o, dout, lse, dq, dk, dv);
    af_disarm();
    return st;
}

/* ---- KV cache: layers 2, kv_heads 2, head_dim 37, block 2, 16 blocks.
   Sequence 0 has 5 stored positions, 1 is its fork (3 shared blocks). ---- */

enum { AF_ROW = 2 * 37 };
static mlk_kv_type af_kv_type = MLK_KV_Q4;

static mlk_kv_config af_kv_cfg(void)
{
    mlk_kv_config cfg;
    cfg.layers = 2; cfg.kv_heads = 2; cfg.head_dim = 37; cfg.block_size = 2; cfg.num_blocks = 16; cfg.max_seqs = 4;
    cfg.type = af_kv_type;
    return cfg;
}

/* built unarmed, so its own allocations never fail */
static mlk_kv_cache *af_kv_fixture(void)
{
    mlk_kv_config cfg = af_kv_cfg();
    mlk_kv_cache *c = NULL;
    float *k = af_in(5 * AF_ROW), *v = af_in(5 * AF_ROW);
    int s = 0, l;
    if (mlk_kv_create(&cfg, &c) != MLK_OK) { fprintf(stderr, "allocfail: fixture\n"); exit(2); }
    mlk_kv_seq_new(c, &s);
    mlk_kv_append(c, s, 5);
    for (l = 0; l < 2; l++) mlk_kv_store(c, s, l, 0, 5, k, v);
    mlk_kv_seq_fork(c, 0, &s);
    af_watch(c, 2, AF_ROW);
    return c;
}

static mlk_status run_kv_create(void)
{
    mlk_kv_config cfg = af_kv_cfg();
    mlk_kv_cache **out = (mlk_kv_cache **)af_out(sizeof(mlk_kv_cache *));
    mlk_kv_cache *c;
    mlk_status st;
    af_arm();
    st = mlk_kv_create(&cfg, out);
    af_disarm();
    if (st == MLK_OK) {
        memcpy(&c, out, sizeof c);
        mlk_kv_destroy(c);
    }
    return st;
}

static mlk_status run_kv_fork(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    int *dst = (int *)af_out(sizeof(int));
    mlk_status st;
    af_arm();
    st = mlk_kv_seq_fork(c, 0, dst);
    af_disarm();
    return st;
}

static mlk_status run_kv_new(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    int *seq = (int *)af_out(sizeof(int));
    mlk_status st;
    af_arm();
    st = mlk_kv_seq_new(c, seq);
    af_disarm();
    return st;
}

/* 11 more positions need 8 blocks: the block table grows */
static mlk_status run_kv_append(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    mlk_status st;
    af_arm();
    st = mlk_kv_append(c, 1, 11);
    af_disarm();
    return st;
}

/* a write into shared blocks (copy-on-write) */
static mlk_status run_kv_store(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    const float *k = af_in(3 * AF_ROW), *v = af_in(3 * AF_ROW);
    mlk_status st;
    af_arm();
    st = mlk_kv_store(c, 1, 1, 1, 3, k, v);
    af_disarm();
    return st;
}

static mlk_status run_kv_load(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    float *k = af_outf(4 * AF_ROW), *v = af_outf(4 * AF_ROW);
    mlk_status st;
    af_arm();
    st = mlk_kv_load(c, 1, 1, 1, 4, k, v);
    af_disarm();
    return st;
}

static mlk_status run_kv_compact(void)
{
    static const int keep[2] = {1, 3};
    mlk_kv_cache *c = af_kv_fixture();
    mlk_status st;
    af_arm();
    st = mlk_kv_compact(c, 1, 1, 2, keep);
    af_disarm();
    return st;
}

static mlk_status run_kv_truncate(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    mlk_status st;
    af_arm();
    st = mlk_kv_truncate(c, 0, 1);
    af_disarm();
    return st;
}

static mlk_status run_kv_free(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    mlk_status st;
    af_arm();
    st = mlk_kv_seq_free(c, 0);
    af_disarm();
    return st;
}

static mlk_status run_kv_attn(void)
{
    static const int seqs[2] = {1, 0}, n_q[2] = {3, 1}, n_tree[1] = {4}, tree[4] = {-1, 0, 0, 2};
    mlk_kv_cache *c = af_kv_fixture();
    const float *q = af_in(4 * 4 * 37);
    float *o = af_outf(4 * 4 * 37);
    mlk_status st;
    af_arm();
    st = af_attn_mode == 1 ? mlk_kv_attn(c, 1, 1, seqs, n_tree, q, 4, 0.0f, tree, o)
                           : mlk_kv_attn(c, 1, 2, seqs, n_q, q, 4, 0.0f, NULL, o);
    af_disarm();
    return st;
}

static mlk_status run_kv_stats(void)
{
    mlk_kv_cache *c = af_kv_fixture();
    mlk_kv_stats *st_out = (mlk_kv_stats *)af_out(sizeof(mlk_kv_stats));
    mlk_status st;
    af_arm();
    st = mlk_kv_get_stats(c, st_out);
    af_disarm();
    return st;
}

/* ---- beam search: a mock model over a vocabulary of 13 ---- */

static int af_beam_model(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens,
                         float *logits)
{
    int i, j;
    (void)user;
    (void)parent;
    for (i = 0; i < n; i++)
        for (j = 0; j < 13; j++)
            logits[i * 13 + j] = (float)((seqs[i][lens[i] - 1] * 5 + j * 11 + lens[i] * 3) % 17) * 0.3f;
    return 0;
}

static mlk_status run_beam(void)
{
    static const int32_t p0[2] = {1, 2}, p1[3] = {4, 5, 6};
    const int32_t *prompts[2];
    int lens[2];
    mlk_beam_config cfg;
    int32_t *toks = (int32_t *)af_out(2 * 3 * 5 * sizeof(int32_t));
    int *out_len = (int *)af_out(2 * 3 * sizeof(int));
    float *lp = af_outf(2 * 3), *score = af_outf(2 * 3);
    mlk_status st;
    prompts[0] = p0; prompts[1] = p1;
    lens[0] = 2; lens[1] = 3;
    cfg.beam_width = 4; cfg.vocab = 13; cfg.eos_id = 3; cfg.max_new_tokens = 5; cfg.num_return = 3;
    cfg.length_penalty = 1.0f;
    af_arm();
    st = mlk_beam_search(&cfg, 2, prompts, lens, af_beam_model, NULL, toks, out_len, lp, score);
    af_disarm();
    return st;
}

/* ---- speculative decoding: target greedy = hash of the last token ---- */

static int32_t af_next(int32_t t) { return (t * 5 + 1) % 11; }

static int af_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens, int *parent,
                    int *n_nodes)
{
    int i;
    (void)user;
    *n_nodes = max_nodes < 4 ? max_nodes : 4;
    for (i = 0; i < *n_nodes; i++) {
        parent[i] = i == 3 ? 0 : i - 1;
        tokens[i] = af_next(i == 0 ? ctx[ctx_len - 1] : tokens[parent[i]]) + (i == 2);
    }
    return 0;
}

static int af_verify(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                     const int *parent, int32_t *greedy)
{
    int i;
    (void)user;
    (void)parent;
    greedy[0] = af_next(ctx[ctx_len - 1]);
    for (i = 0; i < n_nodes; i++) greedy[i + 1] = af_next(tokens[i]);
    return 0;
}

static mlk_status run_spec(void)
{
    static const int32_t prompt[3] = {2, 7, 1};
    mlk_spec_config cfg;
    int32_t *out = (int32_t *)af_out(12 * sizeof(int32_t));
    int *out_len = (int *)af_out(sizeof(int));
    mlk_spec_stats *stats = (mlk_spec_stats *)af_out(sizeof(mlk_spec_stats));
    mlk_status st;
    cfg.max_new_tokens = 12; cfg.max_nodes = 4; cfg.eos_id = -1;
    cfg.draft = af_draft; cfg.verify = af_verify; cfg.accept = NULL; cfg.user = NULL;
    af_arm();
    st = mlk_spec_generate(&cfg, prompt, 3, out, out_len, stats);
    af_disarm();
    return st;
}

static mlk_status run_tree(void)
{
    static const int parent[5] = {-1, 0, 0, 1, -1};
    static const int32_t draft[5] = {3, 4, 5, 6, 3}, target[6] = {3, 4, 9, 6, 1, 1};
    uint8_t *mask = (uint8_t *)af_out(25);
    int *depth = (int *)af_out(5 * sizeof(int)), *path = (int *)af_out(5 * sizeof(int));
    int *n_path = (int *)af_out(sizeof(int));
    int32_t *bonus = (int32_t *)af_out(sizeof(int32_t));
    mlk_status st;
    af_arm();
    st = mlk_tree_mask(5, parent, mask);
    if (st == MLK_OK) st = mlk_tree_depth(5, parent, depth);
    if (st == MLK_OK) st = mlk_tree_accept(5, parent, draft, target, path, n_path, bonus);
    af_disarm();
    return st;
}

/* ---- ternary ---- */

static int af_m = 3, af_n = 20, af_k = 37;

static mlk_status run_tquant(void)
{
    const float *w = af_in((size_t)af_n * af_k);
    uint8_t *packed = (uint8_t *)af_out((size_t)af_n * mlk_ternary_row_bytes(af_k));
    float *scale = af_outf(1);
    mlk_status st;
    af_arm();
    st = mlk_ternary_quant(af_n, af_k, w, packed, scale);
    af_disarm();
    return st;
}

static mlk_status run_tdequant(void)
{
    uint8_t *packed = (uint8_t *)af_in((size_t)af_n * af_k);
    float *w = af_outf((size_t)af_n * af_k);
    size_t i;
    mlk_status st;
    for (i = 0; i < (size_t)af_n * mlk_ternary_row_bytes(af_k); i++) packed[i] = (uint8_t)(i % 2 ? 0x52 : 0x15);
    af_arm();
    st = mlk_ternary_dequant(af_n, af_k, packed, 0.25f, w);
    af_disarm();
    return st;
}

static mlk_status run_actq(void)
{
    const float *x = af_in((size_t)af_m * af_k);
    int8_t *xq = (int8_t *)af_out((size_t)af_m * af_k);
    float *xs = af_outf((size_t)af_m);
    mlk_status st;
    af_arm();
    st = mlk_act_quant_i8(af_m, af_k, x, xq, xs);
    af_disarm();
    return st;
}

static mlk_status run_tgemm(void)
{
    int8_t *xq = (int8_t *)af_in((size_t)af_m * af_k);
    const float *xs = af_in((size_t)af_m);
    uint8_t *w = (uint8_t *)af_in((size_t)af_n * af_k);
    float *y = af_outf((size_t)af_m * af_n);
    size_t i;
    mlk_status st;
    for (i = 0; i < (size_t)af_m * af_k; i++) xq[i] = (int8_t)((int)(i * 37 % 255) - 127);
    for (i = 0; i < (size_t)af_n * mlk_ternary_row_bytes(af_k); i++) w[i] = (uint8_t)(i % 3 ? 0x46 : 0x19);
    af_arm();
    st = mlk_ternary_gemm(af_m, af_n, af_k, xq, xs, w, 0.5f, y);
    af_disarm();
    return st;
}

static mlk_status run_blfwd(void)
{
    const float *x = af_in((size_t)af_m * af_k), *w = af_in((size_t)af_n * af_k);
    float *y = af_outf((size_t)af_m * af_n);
    mlk_status st;
    af_arm();
    st = mlk_bitlinear_fwd(af_m, af_n, af_k, x, w, y);
    af_disarm();
    return st;
}

static mlk_status run_blbwd(void)
{
    const float *x = af_in((size_t)af_m * af_k), *w = af_in((size_t)af_n * af_k), *dy = af_in((size_t)af_m * af_n);
    float *dx = af_outf((size_t)af_m * af_k), *dw = af_outf((size_t)af_n * af_k);
    mlk_status st;
    af_arm();
    st = mlk_bitlinear_bwd(af_m, af_n, af_k, x, w, dy, dx, dw);
    af_disarm();
    return st;
}

static mlk_status run_adamw(void)
{
    const float *g = af_in(50);
    float *p = af_outf(50), *m = af_outf(50), *v = af_outf(50);
    mlk_adamw_config cfg;
    mlk_status st;
    cfg.lr = 1e-3f; cfg.beta1 = 0.9f; cfg.beta2 = 0.999f; cfg.eps = 1e-8f; cfg.weight_decay = 0.01f;
    af_arm();
    st = mlk_adamw_step(50, p, g, m, v, &cfg, 1);
    af_disarm();
    return st;
}

/* ---- second-version entry points ---- */

static mlk_status run_kv_bookkeeping(void)
{
    mlk_kv_config cfg = af_kv_cfg();
    mlk_kv_cache **out = (mlk_kv_cache **)af_out(sizeof(mlk_kv_cache *));
    mlk_kv_cache *c;
    mlk_status st;
    af_arm();
    st = mlk_kv_create_bookkeeping(&cfg, out);
    af_disarm();
    if (st == MLK_OK) {
        memcpy(&c, out, sizeof c);
        mlk_kv_destroy(c);
    }
    return st;
}

/* window, softcap, sinks and an lse output over two sequences */
static mlk_status run_kv_attn_opt(void)
{
    static const int seqs[2] = {1, 0}, n_q[2] = {3, 1};
    mlk_kv_cache *c = af_kv_fixture();
    const float *q = af_in(4 * 4 * 37), *sinks = af_in(4);
    float *o = af_outf(4 * 4 * 37), *lse = af_outf(4 * 4);
    mlk_kv_attn_opts opts;
    mlk_status st;
    memset(&opts, 0, sizeof opts);
    opts.window = 3;
    opts.softcap = 5.0f;
    opts.sinks = sinks;
    af_arm();
    st = mlk_kv_attn_opt(c, 0, 2, seqs, n_q, q, 4, &opts, o, lse);
    af_disarm();
    return st;
}

static mlk_status run_sinks_grad(void)
{
    mlk_attn_desc d;
    int kv_len[2];
    const float *sinks = af_in(4), *q = af_in(AF_NQ), *k = af_in(AF_NKV), *v = af_in(AF_NKV), *dout = af_in(AF_NQ);
    float *o = af_in(AF_NQ), *lse = af_in(AF_NL), *ds = af_outf(4);
    mlk_status st;
    af_attn_desc(&d, kv_len);
    d.sinks = sinks;
    if ((st = mlk_attn_fwd(&d, q, k, v, o, lse)) != MLK_OK) return st;
    af_arm();
    st = mlk_attn_sinks_grad(&d, o, dout, lse, ds);
    af_disarm();
    return st;
}

static mlk_status run_merge(void)
{
    const float *oa = af_in(6 * 16), *la = af_in(6), *ob = af_in(6 * 16), *lb = af_in(6);
    float *o = af_outf(6 * 16), *lse = af_outf(6);
    mlk_status st;
    af_arm();
    st = mlk_attn_merge(6, 16, oa, la, ob, lb, o, lse);
    af_disarm();
    return st;
}

static mlk_status run_rope(void)
{
    static const int32_t pos[5] = {0, 3, 9, 100, 4000};
    mlk_rope_config cfg;
    float *x = af_outf(5 * 2 * 16);
    mlk_status st;
    memset(&cfg, 0, sizeof cfg);
    cfg.head_dim = 16; cfg.rot_dim = 12; cfg.style = MLK_ROPE_GPTJ; cfg.theta = 10000.0f;
    cfg.scaling = MLK_ROPE_SCALE_YARN; cfg.factor = 4.0f; cfg.original_max_position = 2048;
    af_arm(); /* in place on the sentinel: a failing call must leave it */
    st = mlk_rope_fwd(&cfg, 5, 2, pos, x);
    af_disarm();
    return st;
}

static mlk_status run_sample_rows(void)
{
    static const int32_t hist[4] = {3, 3, 7, 1};
    mlk_logit_bias bias[2];
    mlk_sample_row params[3];
    const float *x = af_in(3 * 100);
    uint64_t *rng = (uint64_t *)af_out(3 * sizeof(uint64_t));
    int32_t *out = (int32_t *)af_out(3 * sizeof(int32_t)), *top_idx = (int32_t *)af_out(3 * 4 * sizeof(int32_t));
    float *lp = af_outf(3), *top_lp = af_outf(3 * 4);
    int r;
    mlk_status st;
    bias[0].token = 5; bias[0].bias = 2.0f;
    bias[1].token = 9; bias[1].bias = -INFINITY;
    memset(params, 0, sizeof params);
    for (r = 0; r < 3; r++) {
        params[r].sampler.temperature = r == 2 ? 0.0f : 0.9f;
        params[r].sampler.top_k = r == 1 ? 10 : 0;
        params[r].sampler.top_p = r == 0 ? 0.8f : 1.0f;
        params[r].repetition_penalty = 1.2f;
        params[r].frequency_penalty = 0.1f;
        params[r].history = hist;
        params[r].history_len = 4;
        params[r].bias = bias;
        params[r].n_bias = 2;
    }
    af_arm();
    st = mlk_sample_rows(3, 100, x, params, rng, out, lp, 4, top_idx, top_lp);
    af_disarm();
    return st;
}

static mlk_status run_accept_sample(void)
{
    static const int parent[4] = {-1, 0, 0, 1};
    static const int32_t draft[4] = {1, 2, 0, 3};
    float *pt = af_in(5 * 4), *pd = af_in(4 * 4);
    uint64_t *rng = (uint64_t *)af_out(sizeof(uint64_t));
    int *path = (int *)af_out(4 * sizeof(int)), *n_path = (int *)af_out(sizeof(int));
    int32_t *token = (int32_t *)af_out(sizeof(int32_t));
    int i;
    mlk_status st;
    for (i = 0; i < 20; i++) pt[i] = 0.1f + (float)(i % 3) * 0.2f;
    for (i = 0; i < 16; i++) pd[i] = 0.25f;
    af_arm();
    st = mlk_spec_accept_sample(4, parent, draft, 4, pt, pd, rng, path, n_path, token);
    af_disarm();
    return st;
}

static int af_draft_sample(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens,
                           int *parent, float *probs, int *n_nodes)
{
    int i, j;
    (void)user;
    *n_nodes = max_nodes < 3 ? max_nodes : 3;
    for (i = 0; i < *n_nodes; i++) {
        parent[i] = i == 2 ? 0 : i - 1;
        tokens[i] = (ctx[ctx_len - 1] + i + 1) % 5;
        for (j = 0; j < 5; j++) probs[i * 5 + j] = j == tokens[i] ? 0.6f : 0.1f;
    }
    return 0;
}

static int af_verify_sample(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                            const int *parent, float *probs)
{
    int i, j;
    (void)user; (void)ctx; (void)parent;
    for (i = 0; i <= n_nodes; i++)
        for (j = 0; j < 5; j++)
            probs[i * 5 + j] = (j == ((i ? tokens[i - 1] : ctx_len) + 1) % 5) ? 0.7f : 0.075f;
    return 0;
}

static mlk_status run_spec_sample(void)
{
    static const int32_t prompt[2] = {2, 4};
    mlk_spec_config cfg;
    mlk_spec_sampling sm;
    int32_t *out = (int32_t *)af_out(10 * sizeof(int32_t));
    int *out_len = (int *)af_out(sizeof(int));
    mlk_spec_stats *stats = (mlk_spec_stats *)af_out(sizeof(mlk_spec_stats));
    mlk_status st;
    memset(&cfg, 0, sizeof cfg);
    cfg.max_new_tokens = 10; cfg.max_nodes = 3; cfg.eos_id = -1;
    sm.vocab = 5; sm.seed = 7; sm.draft = af_draft_sample; sm.verify = af_verify_sample;
    af_arm();
    st = mlk_spec_generate_sample(&cfg, &sm, prompt, 2, out, out_len, stats);
    af_disarm();
    return st;
}

static void test_v2(void)
{
    int t;
    for (t = 0; t < 4; t++) {
        af_kv_type = (mlk_kv_type)t;
        af_sweep("mlk_kv_create_bookkeeping", "", run_kv_bookkeeping);
        af_sweep("mlk_kv_attn_opt", "window, softcap, sinks, lse", run_kv_attn_opt);
    }
    af_sweep("mlk_attn_sinks_grad", "", run_sinks_grad);
    af_sweep("mlk_attn_merge", "", run_merge);
    af_sweep("mlk_rope_fwd", "YaRN, GPT-J", run_rope);
    af_sweep("mlk_sample_rows", "penalties, bias, top-n", run_sample_rows);
    af_sweep("mlk_spec_accept_sample", "", run_accept_sample);
    af_sweep("mlk_spec_generate_sample", "", run_spec_sample);
}

static void test_dense(void)
{
    af_sweep("mlk_sgemm", "packed 20x24x16", run_sgemm_packed);
    af_sweep("mlk_sgemm", "m 5, both transposed", run_sgemm_tt);
    af_sweep("mlk_layernorm_fwd", "40x33", run_layernorm_fwd);
    af_sweep("mlk_layernorm_bwd", "40x33, dgamma and dbeta", run_layernorm_bwd);
    af_sweep("mlk_rmsnorm_fwd", "40x33", run_rmsnorm_fwd);
    af_sweep("mlk_rmsnorm_bwd", "40x33, dgamma", run_rmsnorm_bwd);
    af_sweep("mlk_softmax", "3x100", run_softmax);
    af_sweep("mlk_log_softmax", "3x100", run_log_softmax);
    af_sweep("mlk_topk_softmax", "3x100, k 5", run_topk_softmax);
    af_sweep("mlk_topk_log_softmax", "3x100, k 5", run_topk_log_softmax);
    af_sweep("mlk_sample", "top-p 0.9, min-p", run_sample);
    af_top_p = 1.0f;
    af_sweep("mlk_sample", "min-p only", run_sample);
    af_temperature = 0.0f;
    af_sweep("mlk_sample", "greedy", run_sample);
}

static void test_attention(void)
{
    long made;
    for (af_attn_mode = 0; af_attn_mode < 3; af_attn_mode++) {
        const char *what = af_attn_mode == 0 ? "causal, kv_len" : af_attn_mode == 1 ? "tree, window, softcap"
                                                                                   : "caller workspace";
        made = af_sweep("mlk_attn_fwd", what, run_attn_fwd);
        if (af_attn_mode == 2) CHECKF(made == 0, "mlk_attn_fwd with a workspace made %ld allocations", made);
        af_sweep("mlk_attn_naive", what, run_attn_naive); /* the reference may allocate: not a kernel */
        made = af_sweep("mlk_attn_bwd", what, run_attn_bwd);
        if (af_attn_mode == 2) CHECKF(made == 0, "mlk_attn_bwd with a workspace made %ld allocations", made);
    }
    free(af_ws);
    af_ws = NULL;
    af_attn_mode = 0;
}

static void test_kv(void)
{
    int t;
    for (t = 0; t < 4; t++) {
        af_kv_type = (mlk_kv_type)t;
        af_sweep("mlk_kv_create", "2 layers", run_kv_create);
        af_sweep("mlk_kv_seq_new", "", run_kv_new);
        af_sweep("mlk_kv_seq_fork", "3 blocks", run_kv_fork);
        af_sweep("mlk_kv_append", "table grows", run_kv_append);
        af_sweep("mlk_kv_store", "copy-on-write", run_kv_store);
        af_sweep("mlk_kv_load", "", run_kv_load);
        af_sweep("mlk_kv_compact", "shared blocks", run_kv_compact);
        af_sweep("mlk_kv_truncate", "", run_kv_truncate);
        af_sweep("mlk_kv_seq_free", "", run_kv_free);
        af_attn_mode = 0;
        af_sweep("mlk_kv_attn", "two sequences", run_kv_attn);
        af_attn_mode = 1;
        af_sweep("mlk_kv_attn", "tree", run_kv_attn);
        af_attn_mode = 0;
        af_sweep("mlk_kv_get_stats", "", run_kv_stats);
    }
}

static void test_search(void)
{
    af_sweep("mlk_beam_search", "2 items, beam 4", run_beam);
    af_sweep("mlk_spec_generate", "tree drafts", run_spec);
    af_sweep("mlk_tree_mask/depth/accept", "", run_tree);
}

static void test_ternary(void)
{
    int shape;
    /* m 3: dx's matmul is a gemv (no allocation), dw's (n 20 rows) packs;
       m 12: both pack */
    for (shape = 0; shape < 2; shape++) {
        af_m = shape ? 12 : 3;
        af_sweep("mlk_ternary_quant", "", run_tquant);
        af_sweep("mlk_ternary_dequant", "", run_tdequant);
        af_sweep("mlk_act_quant_i8", "", run_actq);
        af_sweep("mlk_ternary_gemm", "", run_tgemm);
        af_sweep("mlk_bitlinear_fwd", "", run_blfwd);
        af_sweep("mlk_bitlinear_bwd", shape ? "m 12, dx and dw" : "m 3, dx and dw", run_blbwd);
        af_sweep("mlk_adamw_step", "", run_adamw);
    }
}

int main(void)
{
    mlkt_file = "test_allocfail";
    MLKT_RUN(test_dense, 1);
    MLKT_RUN(test_attention, 2);
    MLKT_RUN(test_kv, 3);
    MLKT_RUN(test_search, 4);
    MLKT_RUN(test_ternary, 5);
    MLKT_RUN(test_v2, 6);
    printf("allocfail: %d cases over %d sweeps\n", af_cases, af_n_fns);
    return mlkt_finish();
}

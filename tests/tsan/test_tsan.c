/* Thread safety: every kernel called concurrently from 4 pthreads, each on
   its own outputs, all reading the same inputs, plus concurrent mlk_kv_attn
   / mlk_kv_load readers on one shared cache (and on a forked sequence in
   it). Each thread's results must equal, bitwise, those of a
   single-threaded run made first. Built with clang -fsanitize=thread and
   without OpenMP (libgomp is not TSan-clean) by tests/extra/tsan.sh, which
   fails on any data race TSan reports. Not a tests/test_*.c file: the six
   regular configurations do not build it. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include <pthread.h>

#define THREADS 4
#define ROUNDS 2
#define REGION 16384 /* floats of output per job */

/* ---- shared, read-only inputs (filled before any thread starts) ---- */

enum { GM = 33, GN = 40, GK = 24, NR = 16, ND = 96, SR = 4, SN = 300 };
enum { AB = 2, AH = 4, AHKV = 2, AN = 24, AD = 32 };
enum { KM = 5, KN = 20, KK = 64 };

static float in_a[GM * GK], in_b[GK * GN];
static float in_x[NR * ND], in_gamma[ND], in_beta[ND], in_dy[NR * ND], in_mean[NR], in_rstd[NR];
static float in_logits[SR * SN];
static float in_q[AB * AH * AN * AD], in_k[AB * AHKV * AN * AD], in_v[AB * AHKV * AN * AD];
static float in_dout[AB * AH * AN * AD], in_o[AB * AH * AN * AD], in_lse[AB * AH * AN];
static float in_tx[KM * KK], in_tw[KN * KK], in_tdy[KM * KN], in_grad[500], in_param[500];
static mlk_kv_cache *kv;        /* seq 0: 40 positions; seq 1: its fork plus 6 own */
static float in_kvq[(1 + 6) * 4 * 40];
static const int tree_parent[6] = {-1, 0, 0, 1, -1, 4};

static mlk_attn_desc attn_desc(void)
{
    mlk_attn_desc d;
    memset(&d, 0, sizeof d);
    d.batch = AB; d.heads = AH; d.kv_heads = AHKV; d.len_q = AN; d.len_kv = AN; d.head_dim = AD;
    d.causal = 1;
    d.window = 17;
    d.softcap = 8.0f;
    return d;
}

/* ---- the jobs: each writes only into its region ---- */

typedef mlk_status (*job_fn)(float *out);

static mlk_status job_sgemm(float *out)
{
    return mlk_sgemm(0, 0, GM, GN, GK, 1.0f, in_a, GK, in_b, GN, 0.0f, out, GN);
}

static mlk_status job_layernorm(float *out)
{
    mlk_status st = mlk_layernorm_fwd(NR, ND, in_x, in_gamma, in_beta, 1e-5f, out, out + NR * ND, out + NR * ND + NR);
    if (st == MLK_OK)
        st = mlk_layernorm_bwd(NR, ND, in_x, in_gamma, in_mean, in_rstd, in_dy, out + 2 * NR * ND, out + 3 * NR * ND,
                               out + 3 * NR * ND + ND);
    return st;
}

static mlk_status job_rmsnorm(float *out)
{
    mlk_status st = mlk_rmsnorm_fwd(NR, ND, in_x, in_gamma, 1e-5f, out, out + NR * ND);
    if (st == MLK_OK)
        st = mlk_rmsnorm_bwd(NR, ND, in_x, in_gamma, in_rstd, in_dy, out + 2 * NR * ND, out + 3 * NR * ND);
    return st;
}

static mlk_status job_softmax(float *out)
{
    mlk_status st = mlk_softmax(SR, SN, in_logits, out);
    if (st == MLK_OK) st = mlk_log_softmax(SR, SN, in_logits, out + SR * SN);
    if (st == MLK_OK) st = mlk_topk_softmax(SR, SN, in_logits, 0.7f, 10, out + 2 * SR * SN, (int32_t *)(out + 2 * SR * SN + 40));
    if (st == MLK_OK)
        st = mlk_topk_log_softmax(SR, SN, in_logits, 10, out + 2 * SR * SN + 80, (int32_t *)(out + 2 * SR * SN + 120));
    return st;
}

static mlk_status job_sample(float *out)
{
    mlk_sampler s;
    uint64_t rng = 12345;
    mlk_status st;
    int i;
    s.temperature = 0.9f; s.top_k = 0; s.top_p = 1.0f; s.min_p = 0.0f;
    for (i = 0; i < 3; i++) { /* plain, top-k + top-p, greedy */
        if (i == 1) { s.top_k = 20; s.top_p = 0.8f; s.min_p = 0.1f; }
        if (i == 2) s.temperature = 0.0f;
        st = mlk_sample(SR, SN, in_logits, &s, &rng, (int32_t *)out + i * SR);
        if (st != MLK_OK) return st;
    }
    memcpy(out + 3 * SR, &rng, sizeof rng);
    return MLK_OK;
}

static mlk_status job_attn_fwd(float *out)
{
    mlk_attn_desc d = attn_desc();
    return mlk_attn_fwd(&d, in_q, in_k, in_v, out, out + AB * AH * AN * AD);
}

static mlk_status job_attn_bwd(float *out)
{
    mlk_attn_desc d = attn_desc();
    return mlk_attn_bwd(&d, in_q, in_k, in_v, in_o, in_dout, in_lse, out, out + AB * AH * AN * AD,
                        out + AB * AH * AN * AD + AB * AHKV * AN * AD);
}

static mlk_status job_attn_naive(float *out)
{
    mlk_attn_desc d = attn_desc();
    d.tree_parent = tree_parent;
    d.len_q = 6;
    d.causal = 0;
    return mlk_attn_naive(&d, in_q, in_k, in_v, out, out + AB * AH * 6 * AD);
}

/* decode on seq 0 with a 4-position chunk of seq 1 in the same call, then
   the tree over seq 1's last 6 positions */
static mlk_status job_kv_attn(float *out)
{
    static const int seqs[2] = {0, 1}, n_q[2] = {1, 4}, one[1] = {1}, six[1] = {6};
    mlk_status st = mlk_kv_attn(kv, 1, 2, seqs, n_q, in_kvq, 4, 0.0f, NULL, out);
    if (st == MLK_OK) st = mlk_kv_attn(kv, 0, 1, one, six, in_kvq, 4, 0.0f, tree_parent, out + 5 * 4 * 40);
    return st;
}

static mlk_status job_kv_read(float *out)
{
    mlk_kv_stats stats;
    mlk_status st = mlk_kv_load(kv, 1, 1, 0, 46, out, out + 46 * 2 * 40);
    if (st == MLK_OK) st = mlk_kv_load(kv, 0, 0, 10, 30, out + 2 * 46 * 2 * 40, out + 2 * 46 * 2 * 40 + 30 * 2 * 40);
    if (st == MLK_OK) st = mlk_kv_get_stats(kv, &stats);
    if (st == MLK_OK) {
        int lens[2];
        lens[0] = mlk_kv_seq_len(kv, 0);
        lens[1] = mlk_kv_seq_len(kv, 1);
        memcpy(out + 4 * 46 * 2 * 40, lens, sizeof lens);
        memcpy(out + 4 * 46 * 2 * 40 + 2, &stats.blocks_used, sizeof stats.blocks_used);
    }
    return st;
}

/* mock LM for beam search: logits from the last token and the length; the
   state it needs lives in the call (user is unused), so threads share nothing */
static int beam_model(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens,
                      float *logits)
{
    int i, j;
    (void)user;
    (void)parent;
    for (i = 0; i < n; i++)
        for (j = 0; j < 17; j++) logits[i * 17 + j] = (float)((seqs[i][lens[i] - 1] * 7 + j * 5 + lens[i]) % 13) * 0.4f;
    return 0;
}

static mlk_status job_beam(float *out)
{
    static const int32_t p0[2] = {1, 2}, p1[3] = {3, 4, 5};
    const int32_t *prompts[2];
    int lens[2];
    mlk_beam_config cfg;
    prompts[0] = p0; prompts[1] = p1;
    lens[0] = 2; lens[1] = 3;
    cfg.beam_width = 4; cfg.vocab = 17; cfg.eos_id = 2; cfg.max_new_tokens = 6; cfg.num_return = 3;
    cfg.length_penalty = 1.0f;
    return mlk_beam_search(&cfg, 2, prompts, lens, beam_model, NULL, (int32_t *)out, (int *)(out + 36), out + 42,
                           out + 48);
}

static int32_t spec_next(int32_t t) { return (t * 3 + 1) % 7; }

static int spec_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens, int *parent,
                      int *n_nodes)
{
    int i;
    (void)user;
    *n_nodes = max_nodes < 3 ? max_nodes : 3;
    for (i = 0; i < *n_nodes; i++) {
        parent[i] = i == 2 ? 0 : i - 1;
        tokens[i] = spec_next(i == 0 ? ctx[ctx_len - 1] : tokens[parent[i]]) ^ (i == 1);
    }
    return 0;
}

static int spec_verify(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                       const int *parent, int32_t *greedy)
{
    int i;
    (void)user;
    (void)parent;
    greedy[0] = spec_next(ctx[ctx_len - 1]);
    for (i = 0; i < n_nodes; i++) greedy[i + 1] = spec_next(tokens[i]);
    return 0;
}

static mlk_status job_spec(float *out)
{
    static const int32_t prompt[2] = {4, 1};
    static const int32_t draft[6] = {1, 2, 3, 2, 1, 0}, target[7] = {1, 2, 0, 3, 4, 1, 0};
    mlk_spec_config cfg;
    mlk_spec_stats stats;
    mlk_status st;
    cfg.max_new_tokens = 20; cfg.max_nodes = 3; cfg.eos_id = -1;
    cfg.draft = spec_draft; cfg.verify = spec_verify; cfg.accept = NULL; cfg.user = NULL;
    st = mlk_spec_generate(&cfg, prompt, 2, (int32_t *)out, (int *)(out + 20), &stats);
    if (st == MLK_OK) st = mlk_tree_mask(6, tree_parent, (uint8_t *)(out + 30));
    if (st == MLK_OK) st = mlk_tree_depth(6, tree_parent, (int *)(out + 40));
    if (st == MLK_OK)
        st = mlk_tree_accept(6, tree_parent, draft, target, (int *)(out + 50), (int *)(out + 56), (int32_t *)(out + 57));
    memcpy(out + 60, &stats.target_calls, sizeof stats.target_calls);
    return st;
}

static mlk_status job_ternary(float *out)
{
    uint8_t *packed = (uint8_t *)(out + 2 * KN * KK);
    int8_t *xq = (int8_t *)(out + 3 * KN * KK);
    float *scale = out + 4 * KN * KK, *xscale = scale + 1;
    mlk_status st = mlk_ternary_quant(KN, KK, in_tw, packed, scale);
    if (st == MLK_OK) st = mlk_ternary_dequant(KN, KK, packed, *scale, out);
    if (st == MLK_OK) st = mlk_act_quant_i8(KM, KK, in_tx, xq, xscale);
    if (st == MLK_OK) st = mlk_ternary_gemm(KM, KN, KK, xq, xscale, packed, *scale, out + KN * KK);
    return st;
}

static mlk_status job_bitlinear(float *out)
{
    mlk_status st = mlk_bitlinear_fwd(KM, KN, KK, in_tx, in_tw, out);
    if (st == MLK_OK) st = mlk_bitlinear_bwd(KM, KN, KK, in_tx, in_tw, in_tdy, out + KM * KN, out + KM * KN + KM * KK);
    return st;
}

static mlk_status job_adamw(float *out)
{
    mlk_adamw_config cfg;
    int t;
    mlk_status st = MLK_OK;
    cfg.lr = 1e-2f; cfg.beta1 = 0.9f; cfg.beta2 = 0.99f; cfg.eps = 1e-8f; cfg.weight_decay = 0.1f;
    memcpy(out, in_param, sizeof in_param);
    memset(out + 500, 0, 1000 * sizeof(float));
    for (t = 1; t <= 3 && st == MLK_OK; t++) st = mlk_adamw_step(500, out, in_grad, out + 500, out + 1000, &cfg, t);
    return st;
}

static mlk_status job_rope(float *out)
{
    static const int32_t pos[NR] = {0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987};
    mlk_rope_config cfg;
    mlk_status st;
    memset(&cfg, 0, sizeof cfg);
    cfg.head_dim = 32; cfg.rot_dim = 24; cfg.style = MLK_ROPE_NEOX; cfg.theta = 500000.0f;
    cfg.scaling = MLK_ROPE_SCALE_LLAMA3; cfg.factor = 8.0f; cfg.low_freq_factor = 1.0f;
    cfg.high_freq_factor = 4.0f; cfg.original_max_position = 64;
    memcpy(out, in_x, sizeof in_x); /* [16, 3, 32] */
    st = mlk_rope_fwd(&cfg, NR, 3, pos, out);
    if (st == MLK_OK) st = mlk_rope_bwd(&cfg, NR, 3, pos, out);
    return st;
}

/* the forward's two halves of the keys, merged */
static mlk_status job_merge(float *out)
{
    enum { ROWS = AB * AH * AN };
    return mlk_attn_merge(ROWS, AD, in_o, in_lse, in_dout, in_lse, out, out + ROWS * AD);
}

static mlk_status job_sample_rows(float *out)
{
    static const int32_t hist[5] = {1, 7, 7, 20, 299};
    mlk_logit_bias bias[2];
    mlk_sample_row params[SR];
    uint64_t rng[SR];
    int r;
    bias[0].token = 3; bias[0].bias = 1.5f;
    bias[1].token = 4; bias[1].bias = -INFINITY;
    memset(params, 0, sizeof params);
    for (r = 0; r < SR; r++) {
        params[r].sampler.temperature = r == 3 ? 0.0f : 0.8f;
        params[r].sampler.top_k = r == 1 ? 12 : 0;
        params[r].sampler.top_p = r == 2 ? 0.7f : 1.0f;
        params[r].repetition_penalty = 1.1f;
        params[r].presence_penalty = 0.2f;
        params[r].history = hist;
        params[r].history_len = 5;
        params[r].bias = bias;
        params[r].n_bias = 2;
        rng[r] = 99 + (uint64_t)r;
    }
    return mlk_sample_rows(SR, SN, in_logits, params, rng, (int32_t *)out, out + SR, 5, (int32_t *)(out + 2 * SR),
                           out + 2 * SR + 5 * SR);
}

/* the options path: window, softcap, sinks and lse over the shared cache */
static mlk_status job_kv_attn_opt(float *out)
{
    static const int seqs[2] = {1, 0}, n_q[2] = {5, 1};
    static const float sinks[4] = {0.5f, -1.0f, 2.0f, -INFINITY};
    mlk_kv_attn_opts opts;
    memset(&opts, 0, sizeof opts);
    opts.window = 20;
    opts.softcap = 6.0f;
    opts.sinks = sinks;
    return mlk_kv_attn_opt(kv, 1, 2, seqs, n_q, in_kvq, 4, &opts, out, out + 6 * 4 * 40);
}

static mlk_status job_accept_sample(float *out)
{
    float pt[7 * 8], pd[6 * 8];
    static const int32_t draft[6] = {1, 2, 3, 4, 5, 6};
    uint64_t rng = 5;
    int i;
    for (i = 0; i < 7 * 8; i++) pt[i] = (float)(1 + (i * 7) % 5);
    for (i = 0; i < 6 * 8; i++) pd[i] = (float)(1 + (i * 3) % 4);
    return mlk_spec_accept_sample(6, tree_parent, draft, 8, pt, pd, &rng, (int *)out, (int *)(out + 6),
                                  (int32_t *)(out + 7));
}

static const struct { const char *name; job_fn fn; } jobs[] = {
    {"mlk_sgemm", job_sgemm},
    {"mlk_layernorm_fwd/bwd", job_layernorm},
    {"mlk_rmsnorm_fwd/bwd", job_rmsnorm},
    {"softmax, top-k", job_softmax},
    {"mlk_sample", job_sample},
    {"mlk_attn_fwd", job_attn_fwd},
    {"mlk_attn_bwd", job_attn_bwd},
    {"mlk_attn_naive (tree)", job_attn_naive},
    {"mlk_kv_attn (shared cache, fork, tree)", job_kv_attn},
    {"mlk_kv_load / stats (shared cache)", job_kv_read},
    {"mlk_beam_search", job_beam},
    {"mlk_spec_generate, tree", job_spec},
    {"ternary quant / gemm", job_ternary},
    {"mlk_bitlinear_fwd/bwd", job_bitlinear},
    {"mlk_adamw_step", job_adamw},
    {"mlk_rope_fwd/bwd", job_rope},
    {"mlk_attn_merge", job_merge},
    {"mlk_sample_rows", job_sample_rows},
    {"mlk_kv_attn_opt (shared cache)", job_kv_attn_opt},
    {"mlk_spec_accept_sample", job_accept_sample},
};
#define N_JOBS ((int)(sizeof jobs / sizeof jobs[0]))

static float *results[THREADS + 1]; /* [slot][job][REGION]; slot 0 is the single-threaded run */
static mlk_status statuses[THREADS + 1][N_JOBS];

/* Runs every job ROUNDS times into its slot, starting at a different job
   per thread so that different kernels overlap too. */
static void *worker(void *arg)
{
    int slot = (int)(intptr_t)arg, r, j;
    for (r = 0; r < ROUNDS; r++)
        for (j = 0; j < N_JOBS; j++) {
            int job = (j + slot * 3) % N_JOBS;
            statuses[slot][job] = jobs[job].fn(results[slot] + (size_t)job * REGION);
        }
    return NULL;
}

static void setup(void)
{
    mlk_kv_config cfg;
    mlk_attn_desc d = attn_desc();
    float *kbuf = (float *)malloc(46 * 2 * 40 * sizeof(float)), *vbuf = (float *)malloc(46 * 2 * 40 * sizeof(float));
    int s, l, i;
    mlkt_fill_normal(in_a, GM * GK, 1);
    mlkt_fill_normal(in_b, GK * GN, 1);
    mlkt_fill_normal(in_x, NR * ND, 2);
    mlkt_fill_normal(in_gamma, ND, 1);
    mlkt_fill_normal(in_beta, ND, 1);
    mlkt_fill_normal(in_dy, NR * ND, 1);
    mlkt_fill_normal(in_logits, SR * SN, 3);
    mlkt_fill_normal(in_q, sizeof in_q / sizeof(float), 1);
    mlkt_fill_normal(in_k, sizeof in_k / sizeof(float), 1);
    mlkt_fill_normal(in_v, sizeof in_v / sizeof(float), 1);
    mlkt_fill_normal(in_dout, sizeof in_dout / sizeof(float), 1);
    mlkt_fill_normal(in_tx, KM * KK, 1);
    mlkt_fill_normal(in_tw, KN * KK, 0.1);
    mlkt_fill_normal(in_tdy, KM * KN, 1);
    mlkt_fill_normal(in_grad, 500, 1);
    mlkt_fill_normal(in_param, 500, 1);
    mlkt_fill_normal(in_kvq, sizeof in_kvq / sizeof(float), 1);
    CHECK(mlk_layernorm_fwd(NR, ND, in_x, NULL, NULL, 1e-5f, in_dout, in_mean, in_rstd) == MLK_OK);
    CHECK(mlk_attn_fwd(&d, in_q, in_k, in_v, in_o, in_lse) == MLK_OK);
    mlkt_fill_normal(in_dout, sizeof in_dout / sizeof(float), 1);
    /* the shared cache: layers 2, kv_heads 2, head_dim 40, Q8, blocks of 8 */
    cfg.layers = 2; cfg.kv_heads = 2; cfg.head_dim = 40; cfg.block_size = 8; cfg.num_blocks = 16; cfg.max_seqs = 4;
    cfg.type = MLK_KV_Q8;
    CHECK(mlk_kv_create(&cfg, &kv) == MLK_OK);
    mlkt_fill_normal(kbuf, 46 * 2 * 40, 1);
    mlkt_fill_normal(vbuf, 46 * 2 * 40, 1);
    CHECK(mlk_kv_seq_new(kv, &s) == MLK_OK && s == 0);
    CHECK(mlk_kv_append(kv, 0, 40) == MLK_OK);
    for (l = 0; l < 2; l++) CHECK(mlk_kv_store(kv, 0, l, 0, 40, kbuf, vbuf) == MLK_OK);
    CHECK(mlk_kv_seq_fork(kv, 0, &s) == MLK_OK && s == 1);
    CHECK(mlk_kv_append(kv, 1, 6) == MLK_OK);
    for (l = 0; l < 2; l++) CHECK(mlk_kv_store(kv, 1, l, 38, 8, kbuf + 30 * 80, vbuf + 30 * 80) == MLK_OK);
    for (i = 0; i <= THREADS; i++) results[i] = (float *)calloc((size_t)N_JOBS * REGION, sizeof(float));
    free(kbuf);
    free(vbuf);
}

int main(void)
{
    pthread_t th[THREADS];
    int t, j;
    mlkt_file = "test_tsan";
    mlkt_seed(1);
    setup();
    worker((void *)(intptr_t)0); /* the single-threaded reference */
    for (t = 1; t <= THREADS; t++) CHECK(pthread_create(&th[t - 1], NULL, worker, (void *)(intptr_t)t) == 0);
    for (t = 1; t <= THREADS; t++) CHECK(pthread_join(th[t - 1], NULL) == 0);
    for (j = 0; j < N_JOBS; j++) {
        CHECKF(statuses[0][j] == MLK_OK, "%s: %s", jobs[j].name, mlk_status_str(statuses[0][j]));
        for (t = 1; t <= THREADS; t++) {
            CHECKF(statuses[t][j] == statuses[0][j], "%s, thread %d: %s", jobs[j].name, t, mlk_status_str(statuses[t][j]));
            CHECKF(mlkt_same(results[t] + (size_t)j * REGION, results[0] + (size_t)j * REGION, REGION * sizeof(float)),
                   "%s, thread %d: results differ from the single-threaded run", jobs[j].name, t);
        }
    }
    printf("tsan: %d kernels x %d threads x %d rounds\n", N_JOBS, THREADS, ROUNDS);
    mlk_kv_destroy(kv);
    for (t = 0; t <= THREADS; t++) free(results[t]);
    return mlkt_finish();
}

/* tinylm.h - a tiny decoder-only transformer with random weights, built
   from mlkern kernels: embedding, RMSNorm, grouped-query attention with RoPE
   over the paged KV cache, a SwiGLU MLP and a head tied to the embedding.
   Deterministic from a seed; no weight files. Shared by examples/generate.c,
   bench/bench_decode.c and tests/test_tree.c.

   Include after mlkern.h (with its implementation in some file). One
   tinylm_forward call runs tokens of one or more sequences through the first
   n_layers layers, appending them to each sequence's cache: a prefill chunk,
   a batch of decode steps, or (one sequence) a draft tree. A model truncated
   to fewer layers is its own cheap draft: the later layers are scaled down
   (tail_scale), so the residual stream after layer 0 decides most tokens. */
#ifndef TINYLM_H
#define TINYLM_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Every function is static; a program may use only some. */
#if defined(__GNUC__) || defined(__clang__)
#define TINYLM_FN static __attribute__((unused))
#else
#define TINYLM_FN static
#endif

typedef struct tinylm_config {
    int vocab, dim, layers, heads, kv_heads, head_dim, ffn;
    int max_ctx;    /* positions per sequence */
    int max_tokens; /* tokens per forward call, all sequences together */
    int max_seqs;   /* sequences in the cache at once */
    float first_scale; /* output scale of layer 0: it must outweigh the token's own
                          embedding, or the tied head repeats the input token */
    float tail_scale;  /* output scale of layers 1.. (the draft skips them) */
    float logit_scale; /* head multiplier: logits = logit_scale * embed . norm(x) */
    uint64_t seed;
} tinylm_config;

typedef struct tinylm_layer {
    /* nn.Linear layout [out, in]: wq [heads*hd, dim], wo [dim, heads*hd] */
    float *attn_norm, *wq, *wk, *wv, *wo;
    float *mlp_norm, *w_gate, *w_up, *w_down; /* w_gate, w_up [ffn, dim], w_down [dim, ffn] */
} tinylm_layer;

typedef struct tinylm {
    tinylm_config cfg;
    float *embed, *final_norm;  /* embed [vocab, dim], also the head */
    tinylm_layer *layer;
    float *rope_cos, *rope_sin; /* [max_ctx, head_dim / 2] */
    mlk_kv_cache *kv;
    /* activations of one forward call, [max_tokens, ...] */
    float *x, *h, *q, *k, *v, *att, *gate, *up;
    int *pos, *tree;
} tinylm;

TINYLM_FN uint64_t tinylm_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n floats uniform with standard deviation std (mean zero). */
TINYLM_FN float *tinylm_param(size_t n, float std, uint64_t *rng)
{
    float *w = (float *)malloc(n * sizeof(float));
    if (!w) return NULL;
    for (size_t i = 0; i < n; i++) {
        double u = (double)(tinylm_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
        w[i] = (float)((2.0 * u - 1.0) * 1.7320508 * std);
    }
    return w;
}

TINYLM_FN float *tinylm_ones(size_t n)
{
    float *w = (float *)malloc(n * sizeof(float));
    if (w) for (size_t i = 0; i < n; i++) w[i] = 1.0f;
    return w;
}

TINYLM_FN void tinylm_free(tinylm *m)
{
    if (m->layer)
        for (int l = 0; l < m->cfg.layers; l++) {
            tinylm_layer *L = &m->layer[l];
            free(L->attn_norm); free(L->wq); free(L->wk); free(L->wv); free(L->wo);
            free(L->mlp_norm); free(L->w_gate); free(L->w_up); free(L->w_down);
        }
    free(m->layer); free(m->embed); free(m->final_norm); free(m->rope_cos); free(m->rope_sin);
    free(m->x); free(m->h); free(m->q); free(m->k); free(m->v); free(m->att);
    free(m->gate); free(m->up); free(m->pos); free(m->tree);
    mlk_kv_destroy(m->kv);
    memset(m, 0, sizeof *m);
}

TINYLM_FN mlk_status tinylm_init(tinylm *m, const tinylm_config *cfg)
{
    uint64_t rng = cfg->seed;
    int d = cfg->dim, qd = cfg->heads * cfg->head_dim, kvd = cfg->kv_heads * cfg->head_dim, f = cfg->ffn;
    size_t T = (size_t)cfg->max_tokens;
    int ok = 1, half = cfg->head_dim / 2;
    mlk_kv_config kc;
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->embed = tinylm_param((size_t)cfg->vocab * d, 1.0f, &rng);
    m->final_norm = tinylm_ones((size_t)d);
    m->layer = (tinylm_layer *)calloc((size_t)cfg->layers, sizeof(tinylm_layer));
    ok = m->embed && m->final_norm && m->layer;
    for (int l = 0; ok && l < cfg->layers; l++) {
        tinylm_layer *L = &m->layer[l];
        float out_scale = l == 0 ? cfg->first_scale : cfg->tail_scale;
        L->attn_norm = tinylm_ones((size_t)d);
        L->mlp_norm = tinylm_ones((size_t)d);
        L->wq = tinylm_param((size_t)d * qd, 1.0f / sqrtf((float)d), &rng);
        L->wk = tinylm_param((size_t)d * kvd, 1.0f / sqrtf((float)d), &rng);
        L->wv = tinylm_param((size_t)d * kvd, 1.0f / sqrtf((float)d), &rng);
        L->wo = tinylm_param((size_t)qd * d, out_scale / sqrtf((float)qd), &rng);
        L->w_gate = tinylm_param((size_t)d * f, 1.0f / sqrtf((float)d), &rng);
        L->w_up = tinylm_param((size_t)d * f, 1.0f / sqrtf((float)d), &rng);
        L->w_down = tinylm_param((size_t)f * d, 2.0f * out_scale / sqrtf((float)f), &rng);
        ok = L->attn_norm && L->mlp_norm && L->wq && L->wk && L->wv && L->wo && L->w_gate && L->w_up && L->w_down;
    }
    m->rope_cos = (float *)malloc((size_t)cfg->max_ctx * half * sizeof(float));
    m->rope_sin = (float *)malloc((size_t)cfg->max_ctx * half * sizeof(float));
    m->x = (float *)malloc(T * d * sizeof(float));
    m->h = (float *)malloc(T * d * sizeof(float));
    m->q = (float *)malloc(T * qd * sizeof(float));
    m->k = (float *)malloc(T * kvd * sizeof(float));
    m->v = (float *)malloc(T * kvd * sizeof(float));
    m->att = (float *)malloc(T * qd * sizeof(float));
    m->gate = (float *)malloc(T * f * sizeof(float));
    m->up = (float *)malloc(T * f * sizeof(float));
    m->pos = (int *)malloc(T * sizeof(int));
    m->tree = (int *)malloc(T * sizeof(int));
    ok = ok && m->rope_cos && m->rope_sin && m->x && m->h && m->q && m->k && m->v && m->att &&
         m->gate && m->up && m->pos && m->tree;
    if (!ok) { tinylm_free(m); return MLK_ERR_NOMEM; }
    for (int p = 0; p < cfg->max_ctx; p++)
        for (int i = 0; i < half; i++) {
            double theta = p * pow(10000.0, -2.0 * i / cfg->head_dim);
            m->rope_cos[(size_t)p * half + i] = (float)cos(theta);
            m->rope_sin[(size_t)p * half + i] = (float)sin(theta);
        }
    kc.layers = cfg->layers;
    kc.kv_heads = cfg->kv_heads;
    kc.head_dim = cfg->head_dim;
    kc.block_size = 16;
    kc.num_blocks = cfg->max_seqs * ((cfg->max_ctx + 15) / 16);
    kc.max_seqs = cfg->max_seqs;
    kc.type = MLK_KV_F32;
    {
        mlk_status st = mlk_kv_create(&kc, &m->kv);
        if (st != MLK_OK) { tinylm_free(m); return st; }
    }
    return MLK_OK;
}

/* Rotates pairs (2i, 2i+1) of every head of rows x [n, heads, head_dim] by
   pos[row] * 10000^(-2i / head_dim). */
TINYLM_FN void tinylm_rope(const tinylm *m, float *x, int n, int heads)
{
    int hd = m->cfg.head_dim, half = hd / 2;
    for (int r = 0; r < n; r++) {
        const float *c = m->rope_cos + (size_t)m->pos[r] * half, *s = m->rope_sin + (size_t)m->pos[r] * half;
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)r * heads + h) * hd;
            for (int i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }
}

/* y [n, out] = x [n, in] * w^T with w [out, in] (+ y when accumulate). The
   transposed layout is sgemm's faster small-m case: decode steps and trees of
   up to 8 rows read each weight once (8 rows cost 2.5x one row with
   cache-resident weights, vs 3x untransposed). */
TINYLM_FN mlk_status tinylm_matmul(int n, int in, int out, const float *x, const float *w, float *y, int accumulate)
{
    return mlk_sgemm(0, 1, n, out, in, 1.0f, x, in, w, in, accumulate ? 1.0f : 0.0f, y, out);
}

/* Runs tokens through layers [0, n_layers) and the tied head. n_seqs
   sequences, n_q[s] tokens each (concatenated in tokens), are appended to
   their caches at positions len, len + 1, ...; with tree_parent (one
   sequence) the tokens form a tree whose node i sits at position
   len + depth(i) and sees its ancestors only. logits: [sum n_q, vocab]. */
TINYLM_FN mlk_status tinylm_forward(tinylm *m, int n_layers, int n_seqs, const int *seqs, const int *n_q,
                                 const int32_t *tokens, const int *tree_parent, float *logits)
{
    const tinylm_config *c = &m->cfg;
    int d = c->dim, qd = c->heads * c->head_dim, kvd = c->kv_heads * c->head_dim, f = c->ffn, n = 0;
    mlk_status st = MLK_OK;
    for (int s = 0; s < n_seqs; s++) n += n_q[s];
    if (n > c->max_tokens || (tree_parent && n_seqs != 1)) return MLK_ERR_SHAPE;
    if (tree_parent && (st = mlk_tree_depth(n, tree_parent, m->tree)) != MLK_OK) return st;
    for (int s = 0, r = 0; s < n_seqs; s++) {
        int len = mlk_kv_seq_len(m->kv, seqs[s]);
        if (len < 0 || len + n_q[s] > c->max_ctx) return MLK_ERR_CAPACITY;
        if ((st = mlk_kv_append(m->kv, seqs[s], n_q[s])) != MLK_OK) return st;
        for (int i = 0; i < n_q[s]; i++, r++) m->pos[r] = len + (tree_parent ? m->tree[i] : i);
    }
    for (int r = 0; r < n; r++) memcpy(m->x + (size_t)r * d, m->embed + (size_t)tokens[r] * d, (size_t)d * sizeof(float));
    for (int l = 0; l < n_layers && st == MLK_OK; l++) {
        const tinylm_layer *L = &m->layer[l];
        mlk_rmsnorm_fwd(n, d, m->x, L->attn_norm, 1e-5f, m->h, NULL);
        tinylm_matmul(n, d, qd, m->h, L->wq, m->q, 0);
        tinylm_matmul(n, d, kvd, m->h, L->wk, m->k, 0);
        tinylm_matmul(n, d, kvd, m->h, L->wv, m->v, 0);
        tinylm_rope(m, m->q, n, c->heads);
        tinylm_rope(m, m->k, n, c->kv_heads);
        for (int s = 0, r = 0; s < n_seqs && st == MLK_OK; r += n_q[s], s++) {
            int len = mlk_kv_seq_len(m->kv, seqs[s]);
            st = mlk_kv_store(m->kv, seqs[s], l, len - n_q[s], n_q[s], m->k + (size_t)r * kvd, m->v + (size_t)r * kvd);
        }
        if (st == MLK_OK) st = mlk_kv_attn(m->kv, l, n_seqs, seqs, n_q, m->q, c->heads, 0.0f, tree_parent, m->att);
        tinylm_matmul(n, qd, d, m->att, L->wo, m->x, 1);
        mlk_rmsnorm_fwd(n, d, m->x, L->mlp_norm, 1e-5f, m->h, NULL);
        tinylm_matmul(n, d, f, m->h, L->w_gate, m->gate, 0);
        tinylm_matmul(n, d, f, m->h, L->w_up, m->up, 0);
        for (size_t i = 0; i < (size_t)n * f; i++) /* SwiGLU: silu(gate) * up */
            m->gate[i] = m->gate[i] / (1.0f + expf(-m->gate[i])) * m->up[i];
        tinylm_matmul(n, f, d, m->gate, L->w_down, m->x, 1);
    }
    if (st != MLK_OK) return st;
    mlk_rmsnorm_fwd(n, d, m->x, m->final_norm, 1e-5f, m->h, NULL);
    return mlk_sgemm(0, 1, n, c->vocab, d, c->logit_scale, m->h, d, m->embed, d, 0.0f, logits, c->vocab);
}

/* Greedy tokens of rows logits [rows, vocab] (argmax, ties to the lower id). */
TINYLM_FN void tinylm_argmax(const tinylm *m, int rows, const float *logits, int32_t *out)
{
    mlk_sampler greedy;
    uint64_t rng = 0;
    greedy.temperature = 0; greedy.top_k = 0; greedy.top_p = 1; greedy.min_p = 0;
    mlk_sample(rows, m->cfg.vocab, logits, &greedy, &rng, out);
}

/* Prompt prefill in chunks of `chunk` tokens (causal over the cache, so the
   result equals one full pass); last_logits gets the prompt's last row. */
TINYLM_FN mlk_status tinylm_prefill(tinylm *m, int n_layers, int seq, const int32_t *prompt, int len, int chunk,
                                 float *logits_buf, float *last_logits)
{
    mlk_status st = MLK_OK;
    for (int at = 0; at < len && st == MLK_OK; at += chunk) {
        int n = len - at < chunk ? len - at : chunk;
        st = tinylm_forward(m, n_layers, 1, &seq, &n, prompt + at, NULL, logits_buf);
        if (st == MLK_OK && at + n == len)
            memcpy(last_logits, logits_buf + (size_t)(n - 1) * m->cfg.vocab, (size_t)m->cfg.vocab * sizeof(float));
    }
    return st;
}

/* Plain greedy decoding with all layers, one forward per token: up to
   max_new tokens into out, stopping after eos (-1: never). logits is scratch
   of [max_tokens + 1, vocab]. Returns the count, or -1 on an error. */
TINYLM_FN int tinylm_greedy(tinylm *m, const int32_t *prompt, int len, int chunk, int max_new, int eos,
                         float *logits, int32_t *out)
{
    int seq, n = 0, one = 1;
    float *last = logits + (size_t)m->cfg.max_tokens * m->cfg.vocab;
    if (mlk_kv_seq_new(m->kv, &seq) != MLK_OK) return -1;
    if (tinylm_prefill(m, m->cfg.layers, seq, prompt, len, chunk, logits, last) != MLK_OK) n = -1;
    while (n >= 0 && n < max_new) {
        tinylm_argmax(m, 1, last, &out[n]);
        if (out[n++] == eos || n == max_new) break;
        if (tinylm_forward(m, m->cfg.layers, 1, &seq, &one, &out[n - 1], NULL, last) != MLK_OK) n = -1;
    }
    mlk_kv_seq_free(m->kv, seq);
    return n;
}

/* ---- speculative decoding: the truncated model drafts, the full model
   verifies a tree (see mlk_spec_generate) ---- */

typedef struct tinylm_spec {
    tinylm *m;
    int draft_layers, depth, chunk; /* draft: a chain of `depth`, runner-up leaves while max_nodes allows */
    int target_seq, draft_seq;
    int target_len;                 /* rows of ctx the target cache holds (after accept) */
    int draft_len;                  /* rows of ctx the draft cache holds */
    int32_t chain[64];              /* the draft's last chain, cached past draft_len */
    int chain_len;
    int32_t tree_tokens[129];       /* verify: the last ctx token, then the draft tree */
    int tree_parent[129];
    float *logits;                  /* [max_tokens + 1, vocab] */
} tinylm_spec;

/* Brings a cache up to ctx[0, ctx_len - 1): truncate to the rows that are
   still right, prefill the rest; leaves the last ctx token to the caller. */
TINYLM_FN mlk_status tinylm_catch_up(tinylm *m, int n_layers, int seq, int *have, const int32_t *ctx, int ctx_len,
                                  int chunk, float *logits)
{
    mlk_status st = mlk_kv_truncate(m->kv, seq, *have);
    float *last = logits + (size_t)m->cfg.max_tokens * m->cfg.vocab;
    if (st == MLK_OK && *have < ctx_len - 1)
        st = tinylm_prefill(m, n_layers, seq, ctx + *have, ctx_len - 1 - *have, chunk, logits, last);
    if (st == MLK_OK) *have = ctx_len - 1;
    return st;
}

TINYLM_FN int tinylm_spec_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens,
                             int *parent, int *n_nodes)
{
    tinylm_spec *sp = (tinylm_spec *)user;
    tinylm *m = sp->m;
    int n = 0, one = 1, keep = 0;
    int32_t tok = ctx[ctx_len - 1];
    /* rows of the last chain stay valid where ctx took the same tokens */
    while (keep < sp->chain_len && sp->draft_len + keep < ctx_len - 1 &&
           sp->chain[keep] == ctx[sp->draft_len + keep]) keep++;
    sp->draft_len += keep;
    if (tinylm_catch_up(m, sp->draft_layers, sp->draft_seq, &sp->draft_len, ctx, ctx_len, sp->chunk, sp->logits) != MLK_OK)
        return 1;
    sp->chain_len = 0;
    for (int level = 0; level < sp->depth && n < max_nodes; level++) {
        mlk_status st = tinylm_forward(m, sp->draft_layers, 1, &sp->draft_seq, &one, &tok, NULL, sp->logits);
        float lp[2];
        int32_t best[2];
        if (st != MLK_OK || mlk_topk_log_softmax(1, m->cfg.vocab, sp->logits, 2, lp, best) != MLK_OK) return 1;
        if (level == 0) sp->draft_len = ctx_len;
        else sp->chain[sp->chain_len++] = tok;
        parent[n] = n >= 2 ? n - 2 : -1; /* the chain node of the previous level */
        tokens[n++] = best[0];
        if (n < max_nodes) {
            parent[n] = parent[n - 1];
            tokens[n++] = best[1];
        }
        tok = best[0];
    }
    *n_nodes = n;
    return 0;
}

TINYLM_FN int tinylm_spec_verify(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                              const int *parent, int32_t *greedy)
{
    tinylm_spec *sp = (tinylm_spec *)user;
    tinylm *m = sp->m;
    int n = n_nodes + 1;
    /* the last ctx token is the tree's root, the draft's roots its children */
    if (tinylm_catch_up(m, m->cfg.layers, sp->target_seq, &sp->target_len, ctx, ctx_len, sp->chunk, sp->logits) != MLK_OK)
        return 1;
    if (n > 129) return 1;
    sp->tree_tokens[0] = ctx[ctx_len - 1];
    sp->tree_parent[0] = -1;
    for (int i = 0; i < n_nodes; i++) {
        sp->tree_tokens[1 + i] = tokens[i];
        sp->tree_parent[1 + i] = parent[i] + 1;
    }
    if (tinylm_forward(m, m->cfg.layers, 1, &sp->target_seq, &n, sp->tree_tokens, sp->tree_parent, sp->logits) != MLK_OK)
        return 1;
    tinylm_argmax(m, n, sp->logits, greedy);
    return 0;
}

/* Keep the root (the last ctx token) and the accepted nodes' rows: node i
   sits right after the root at row target_len + 1 + i. */
TINYLM_FN int tinylm_spec_accept(void *user, int n_path, const int *path)
{
    tinylm_spec *sp = (tinylm_spec *)user;
    if (mlk_kv_compact(sp->m->kv, sp->target_seq, sp->target_len + 1, n_path, path) != MLK_OK) return 1;
    sp->target_len += 1 + n_path;
    return 0;
}

/* Speculative generation with the model truncated to draft_layers as the
   draft; out as mlk_spec_generate. */
TINYLM_FN mlk_status tinylm_speculate(tinylm *m, int draft_layers, int depth, const int32_t *prompt, int len,
                                   int chunk, int max_new, int eos, float *logits, int32_t *out, int *out_len,
                                   mlk_spec_stats *stats)
{
    tinylm_spec sp;
    mlk_spec_config sc;
    mlk_status st;
    memset(&sp, 0, sizeof sp);
    sp.m = m;
    sp.draft_layers = draft_layers;
    sp.depth = depth < 64 ? depth : 64;
    sp.chunk = chunk;
    sp.logits = logits;
    if ((st = mlk_kv_seq_new(m->kv, &sp.target_seq)) != MLK_OK) return st;
    if ((st = mlk_kv_seq_new(m->kv, &sp.draft_seq)) != MLK_OK) {
        mlk_kv_seq_free(m->kv, sp.target_seq);
        return st;
    }
    sc.max_new_tokens = max_new;
    /* root + nodes <= 8 rows keeps the verify call on sgemm's small-m path */
    sc.max_nodes = 2 * sp.depth < 7 ? 2 * sp.depth : 7;
    sc.eos_id = eos;
    sc.draft = tinylm_spec_draft;
    sc.verify = tinylm_spec_verify;
    sc.accept = tinylm_spec_accept;
    sc.user = &sp;
    st = mlk_spec_generate(&sc, prompt, len, out, out_len, stats);
    mlk_kv_seq_free(m->kv, sp.target_seq);
    mlk_kv_seq_free(m->kv, sp.draft_seq);
    return st;
}

/* ---- beam search: one KV sequence per live beam (mlk_logits_fn) ---- */

#define TINYLM_MAX_BEAMS 64

typedef struct tinylm_beam {
    tinylm *m;
    float *logits;                      /* scratch, [max_tokens + 1, vocab] */
    int n_live;
    int seq_of[TINYLM_MAX_BEAMS];       /* kv sequence of each sequence of the last call */
    int next_seq[TINYLM_MAX_BEAMS], n_q[TINYLM_MAX_BEAMS];
    int32_t last_tok[TINYLM_MAX_BEAMS];
} tinylm_beam;

/* Each new beam takes over its parent's sequence or forks it (blocks are
   shared copy-on-write); parents nobody extends are freed. The first call
   prefills the prompts; later ones run every beam's newest token in one
   forward. */
TINYLM_FN int tinylm_beam_logits(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens,
                              float *logits)
{
    tinylm_beam *bm = (tinylm_beam *)user;
    tinylm *m = bm->m;
    int vocab = m->cfg.vocab, used[TINYLM_MAX_BEAMS] = {0};
    if (n > TINYLM_MAX_BEAMS) return 1;
    for (int i = 0; i < n; i++) {
        int p = parent[i];
        mlk_status st = MLK_OK;
        if (p < 0) st = mlk_kv_seq_new(m->kv, &bm->next_seq[i]);
        else if (!used[p]) bm->next_seq[i] = bm->seq_of[p];
        else st = mlk_kv_seq_fork(m->kv, bm->seq_of[p], &bm->next_seq[i]);
        if (st != MLK_OK) return 1;
        if (p >= 0) used[p] = 1;
        bm->n_q[i] = 1;
        bm->last_tok[i] = seqs[i][lens[i] - 1];
    }
    for (int p = 0; p < bm->n_live; p++)
        if (!used[p]) mlk_kv_seq_free(m->kv, bm->seq_of[p]);
    memcpy(bm->seq_of, bm->next_seq, (size_t)n * sizeof(int));
    bm->n_live = n;
    if (parent[0] < 0) {
        for (int i = 0; i < n; i++)
            if (tinylm_prefill(m, m->cfg.layers, bm->seq_of[i], seqs[i], lens[i], m->cfg.max_tokens, bm->logits,
                               logits + (size_t)i * vocab) != MLK_OK) return 1;
        return 0;
    }
    if (tinylm_forward(m, m->cfg.layers, n, bm->seq_of, bm->n_q, bm->last_tok, NULL, bm->logits) != MLK_OK) return 1;
    memcpy(logits, bm->logits, (size_t)n * vocab * sizeof(float));
    return 0;
}

/* Frees the sequences of the last call's beams. */
TINYLM_FN void tinylm_beam_done(tinylm_beam *bm)
{
    for (int i = 0; i < bm->n_live; i++) mlk_kv_seq_free(bm->m->kv, bm->seq_of[i]);
    bm->n_live = 0;
}

#endif

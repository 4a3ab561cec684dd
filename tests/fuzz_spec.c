/* libFuzzer target for tree speculative decoding.
   Part 1: mlk_tree_accept on a random parent array (sometimes invalid) with
   draft / target tokens over a small alphabet, against a brute-force walk:
   from the prefix, repeatedly take the lowest-index child whose draft token
   equals the target's prediction for its parent. Invalid trees are
   MLK_ERR_TREE with outputs untouched.
   Part 2: mlk_spec_generate with a mock target (greedy token = a hash of
   the last two context tokens) and a draft callback that proposes random
   trees (some nodes right, some wrong, sizes 0..max_nodes) from the input
   bytes; sometimes it misbehaves (too many nodes, a bad parent, an abort).
   The output must equal plain greedy decoding of the target (EOS
   included), verify must always see the context that greedy decoding has
   produced so far, stats must add up, and misbehaving callbacks give
   MLK_ERR_ARG / MLK_ERR_TREE / MLK_ERR_CALLBACK with outputs untouched.
   Build: make build/fuzz/fuzz_spec; run: tests/extra/fuzz_spec.sh */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <stdio.h>
#include <stdlib.h>

#define MAX_N 24
#define MAX_NEW 40
#define MAX_CTX (4 + MAX_NEW)

#include "fuzz_input.h"

static void fz_fail(const char *what, double got, double want)
{
    fprintf(stderr, "fuzz_spec: %s (got %.9g, want %.9g)\n", what, got, want);
    abort();
}

/* ---- part 1 ---- */

static void fz_accept(fz_bytes *in)
{
    int n = 1 + fz_next(in) % MAX_N, parent[MAX_N], path[MAX_N], n_path = -7, valid = 1, cur = -1, len = 0;
    int want_path[MAX_N];
    int32_t draft[MAX_N], target[MAX_N + 1], bonus = -7;
    mlk_status st;
    for (int i = 0; i < n; i++) {
        int b = fz_next(in);
        parent[i] = b == 255 ? i : b == 254 ? -2 : b % (i + 1) - 1;
        valid &= parent[i] >= -1 && parent[i] < i;
        draft[i] = fz_next(in) % 3;
        target[i] = fz_next(in) % 3;
    }
    target[n] = fz_next(in) % 3;
    for (int i = 0; i < MAX_N; i++) path[i] = -7;
    st = mlk_tree_accept(n, parent, draft, target, path, &n_path, &bonus);
    if (!valid) {
        if (st != MLK_ERR_TREE) fz_fail("tree_accept status of a bad tree", st, MLK_ERR_TREE);
        if (n_path != -7 || bonus != -7 || path[0] != -7) fz_fail("tree_accept wrote on error", 0, 0);
        return;
    }
    if (st != MLK_OK) fz_fail("tree_accept status", st, MLK_OK);
    for (;;) { /* brute force: scan all nodes for the lowest matching child */
        int next = -1;
        for (int c = 0; c < n && next < 0; c++)
            if (parent[c] == cur && draft[c] == target[cur + 1]) next = c;
        if (next < 0) break;
        want_path[len++] = next;
        cur = next;
    }
    if (n_path != len) fz_fail("accepted path length", n_path, len);
    for (int i = 0; i < len; i++)
        if (path[i] != want_path[i]) fz_fail("accepted node", path[i], want_path[i]);
    if (bonus != target[cur + 1]) fz_fail("bonus token", bonus, target[cur + 1]);
}

/* ---- part 2 ---- */

typedef struct fz_spec {
    const uint8_t *bytes; /* the draft's choices, cycled */
    size_t n_bytes, at;
    int vocab, calls, bad_call, bad_kind; /* bad_kind: 0 none, 1 too many, 2 bad parent, 3-5 abort draft/verify/accept */
    int32_t ref[MAX_CTX];                 /* prompt + greedy decoding */
    int ref_len, prompt_len;
    int32_t last_tokens[MAX_N];           /* the tree the draft returned last */
    int last_parent[MAX_N], last_n;
    int misbehaved;                       /* the draft returned a bad tree or size */
} fz_spec;

static int fz_byte(fz_spec *s)
{
    int b = s->n_bytes ? s->bytes[s->at % s->n_bytes] : 0;
    s->at++;
    return b;
}

/* the target's greedy token after ctx[0..len) */
static int32_t fz_target(const fz_spec *s, const int32_t *ctx, int len)
{
    int32_t a = len > 1 ? ctx[len - 2] : 0, b = ctx[len - 1];
    return (int32_t)(((uint32_t)a * 31u + (uint32_t)b * 17u + 5u) % (uint32_t)s->vocab);
}

/* ctx followed by the tokens of node i's ancestors-or-self; returns the length */
static int fz_path_ctx(const int32_t *ctx, int ctx_len, const int32_t *tokens, const int *parent, int i,
                       int32_t *out)
{
    int chain[MAX_N], depth = 0;
    memcpy(out, ctx, (size_t)ctx_len * sizeof(int32_t));
    for (int j = i; j >= 0; j = parent[j]) chain[depth++] = j;
    for (int d = 0; d < depth; d++) out[ctx_len + d] = tokens[chain[depth - 1 - d]];
    return ctx_len + depth;
}

static int fz_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens, int *parent,
                    int *n_nodes)
{
    fz_spec *s = (fz_spec *)user;
    int call = s->calls++, n = fz_byte(s) % (max_nodes + 1);
    int32_t buf[MAX_CTX + MAX_N];
    if (max_nodes < 1 || max_nodes > MAX_N) fz_fail("draft max_nodes", max_nodes, MAX_N);
    if (call == s->bad_call && s->bad_kind == 3) return 1;
    for (int i = 0; i < n; i++) {
        int b = fz_byte(s);
        parent[i] = b % (i + 1) - 1;
        tokens[i] = 0;
        /* half the nodes carry the target's token after their parent's path */
        if (b & 0x80) {
            int len = parent[i] < 0 ? ctx_len : fz_path_ctx(ctx, ctx_len, tokens, parent, parent[i], buf);
            tokens[i] = fz_target(s, parent[i] < 0 ? ctx : buf, len);
        } else {
            tokens[i] = (b >> 3) % s->vocab;
        }
    }
    if (call == s->bad_call && s->bad_kind == 2 && n > 0) {
        parent[n - 1] = n - 1;
        s->misbehaved = 1;
    }
    if (call == s->bad_call && s->bad_kind == 1) {
        n = max_nodes + 1;
        s->misbehaved = 1;
    }
    memcpy(s->last_tokens, tokens, (size_t)(n < MAX_N ? n : MAX_N) * sizeof(int32_t));
    memcpy(s->last_parent, parent, (size_t)(n < MAX_N ? n : MAX_N) * sizeof(int));
    s->last_n = n;
    *n_nodes = n;
    return 0;
}

static int fz_verify(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                     const int *parent, int32_t *greedy)
{
    fz_spec *s = (fz_spec *)user;
    int32_t buf[MAX_CTX + MAX_N];
    /* the context is always the greedy decoding so far */
    if (ctx_len > s->ref_len || memcmp(ctx, s->ref, (size_t)ctx_len * sizeof(int32_t)) != 0)
        fz_fail("verify saw a context greedy decoding does not produce", ctx_len, s->ref_len);
    if (n_nodes != s->last_n)
        fz_fail("verify got a different tree size", n_nodes, s->last_n);
    if (n_nodes > 0 && (memcmp(tokens, s->last_tokens, (size_t)n_nodes * sizeof(int32_t)) != 0 ||
                        memcmp(parent, s->last_parent, (size_t)n_nodes * sizeof(int)) != 0))
        fz_fail("verify got a different tree", 0, 0);
    if (s->bad_kind == 4 && s->calls > s->bad_call) return 1;
    greedy[0] = fz_target(s, ctx, ctx_len);
    for (int i = 0; i < n_nodes; i++) greedy[i + 1] = fz_target(s, buf, fz_path_ctx(ctx, ctx_len, tokens, parent, i, buf));
    s->last_n = 0; /* a draft skipped next time (no room) means an empty tree */
    return 0;
}

static int fz_accept_cb(void *user, int n_path, const int *path)
{
    fz_spec *s = (fz_spec *)user;
    (void)path;
    if (n_path < 0 || n_path > MAX_N) fz_fail("accept n_path", n_path, MAX_N);
    return s->bad_kind == 5 && s->calls > s->bad_call;
}

static void fz_generate(fz_bytes *in)
{
    fz_spec s;
    mlk_spec_config cfg;
    mlk_spec_stats stats;
    int32_t prompt[4], out[MAX_NEW];
    int out_len = -7, want_len = 0, want;
    mlk_status st;
    memset(&s, 0, sizeof s);
    s.vocab = 2 + fz_next(in) % 5;
    s.prompt_len = 1 + fz_next(in) % 4;
    cfg.max_new_tokens = 1 + fz_next(in) % MAX_NEW;
    cfg.max_nodes = 1 + fz_next(in) % MAX_N;
    cfg.eos_id = fz_next(in) % (s.vocab + 1) - 1;
    s.bad_call = fz_next(in) % 8;
    s.bad_kind = fz_next(in) % 16;
    if (s.bad_kind > 5) s.bad_kind = 0;
    for (int i = 0; i < s.prompt_len; i++) prompt[i] = fz_next(in) % s.vocab;
    s.bytes = in->p;
    s.n_bytes = in->n;
    /* the reference: plain greedy decoding */
    memcpy(s.ref, prompt, (size_t)s.prompt_len * sizeof(int32_t));
    s.ref_len = s.prompt_len;
    while (want_len < cfg.max_new_tokens) {
        int32_t t = fz_target(&s, s.ref, s.ref_len);
        s.ref[s.ref_len++] = t;
        want_len++;
        if (t == cfg.eos_id) break;
    }
    cfg.draft = fz_draft;
    cfg.verify = fz_verify;
    cfg.accept = fz_accept_cb;
    cfg.user = &s;
    memset(out, 0x7F, sizeof out);
    memset(&stats, 0x7F, sizeof stats);
    st = mlk_spec_generate(&cfg, prompt, s.prompt_len, out, &out_len, &stats);
    want = MLK_OK;
    if (s.misbehaved) want = s.bad_kind == 1 ? MLK_ERR_ARG : MLK_ERR_TREE;
    if (s.bad_kind >= 3 && s.calls > s.bad_call) want = MLK_ERR_CALLBACK; /* the aborting call happened */
    if ((int)st != want) fz_fail("spec_generate status", st, want);
    if (st != MLK_OK) {
        if (out_len != -7 || out[0] != 0x7F7F7F7F || stats.target_calls != 0x7F7F7F7F)
            fz_fail("spec_generate wrote on error", 0, 0);
        return;
    }
    if (out_len != want_len) fz_fail("output length", out_len, want_len);
    for (int i = 0; i < cfg.max_new_tokens; i++)
        if (out[i] != (i < want_len ? s.ref[s.prompt_len + i] : -1)) fz_fail("output differs from greedy decoding", i, out[i]);
    if (stats.accepted > stats.drafted || stats.accepted < 0 || out_len > stats.accepted + stats.target_calls ||
        stats.target_calls < 1)
        fz_fail("stats", stats.accepted, stats.target_calls);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_bytes in;
    in.p = data;
    in.n = size;
    if (fz_next(&in) & 1) fz_accept(&in);
    else fz_generate(&in);
    return 0;
}

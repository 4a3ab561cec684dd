/* tree speculative decoding: hand-built trees where positional or depth
   indexing would differ from parent indexing, random trees against a
   brute-force walk over every root-to-node path, bad parent arrays, and
   mlk_spec_generate against greedy decoding of a mock target. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include "examples/tinylm.h"

#define MAX_N 64

/* Brute force: root-to-node path of node i (indices, root first). */
static int path_of(const int *parent, int i, int *out)
{
    int rev[MAX_N], n = 0;
    for (int j = i; j >= 0; j = parent[j]) rev[n++] = j;
    for (int j = 0; j < n; j++) out[j] = rev[n - 1 - j];
    return n;
}

/* Node valid: every node on its path matches its parent's prediction. */
static int node_valid(const int *parent, const int32_t *draft, const int32_t *target, int i)
{
    int p[MAX_N], n = path_of(parent, i, p);
    for (int j = 0; j < n; j++)
        if (draft[p[j]] != target[j ? p[j - 1] + 1 : 0]) return 0;
    return 1;
}

/* The walk's answer, by brute force: the valid path that, at its first
   difference from any other valid path, holds the lower index, and that no
   valid path extends. */
static int brute_accept(int n, const int *parent, const int32_t *draft, const int32_t *target,
                        int *path, int32_t *bonus)
{
    int best_len = 0, p[MAX_N], q[MAX_N];
    for (int i = 0; i < n; i++) {
        int len, ok = 1;
        if (!node_valid(parent, draft, target, i)) continue;
        len = path_of(parent, i, p);
        for (int j = 0; j < n && ok; j++) {
            int lq, d = 0;
            if (j == i || !node_valid(parent, draft, target, j)) continue;
            lq = path_of(parent, j, q);
            while (d < len && d < lq && p[d] == q[d]) d++;
            if (d == len) ok = 0;                 /* j extends i */
            else if (d < lq && q[d] < p[d]) ok = 0; /* j branches off lower */
        }
        if (ok) { best_len = len; memcpy(path, p, (size_t)len * sizeof(int)); break; }
    }
    *bonus = target[best_len ? path[best_len - 1] + 1 : 0];
    return best_len;
}

static void check_accept(int n, const int *parent, const int32_t *draft, const int32_t *target,
                         int want_len, const int *want_path, int32_t want_bonus, const char *what)
{
    int *path = (int *)mlkt_alloc((size_t)n * sizeof(int)), n_path = -5;
    int32_t bonus = -5;
    CHECK_INT(mlk_tree_accept(n, parent, draft, target, path, &n_path, &bonus), MLK_OK);
    CHECKF(n_path == want_len && bonus == want_bonus &&
           memcmp(path, want_path, (size_t)want_len * sizeof(int)) == 0,
           "%s: n_path %d (want %d), bonus %d (want %d)", what, n_path, want_len, (int)bonus, (int)want_bonus);
    mlkt_digest(path, (size_t)n_path * sizeof(int));
    mlkt_free(path);
}

static void test_hand_trees(void)
{
    /* Two correct roots, each with a correct child: the lowest root wins and
       its child (node 2) is checked against target[1], the prediction after
       node 0; positional indexing would compare node 2 with target[2]. */
    {
        int parent[4] = {-1, -1, 0, 1}, path[2] = {0, 2};
        int32_t draft[4] = {5, 5, 7, 9}, target[5] = {5, 7, 9, 3, 4};
        check_accept(4, parent, draft, target, 2, path, 3, "two correct roots");
    }
    /* A wrong root whose child would match if checked on its own. */
    {
        int parent[2] = {-1, 0}, path[1] = {0};
        int32_t draft[2] = {1, 2}, target[3] = {9, 2, 6};
        check_accept(2, parent, draft, target, 0, path, 9, "wrong root");
    }
    /* Siblings where only the second matches: node 2 against target[1];
       depth indexing (target[depth + 1] = target[2]) would reject it. */
    {
        int parent[3] = {-1, 0, 0}, path[2] = {0, 2};
        int32_t draft[3] = {3, 4, 5}, target[4] = {3, 5, 7, 8};
        check_accept(3, parent, draft, target, 2, path, 8, "second sibling");
    }
    /* Several roots, the third matches; then its child chain. */
    {
        int parent[5] = {-1, -1, -1, 2, 3}, path[3] = {2, 3, 4};
        int32_t draft[5] = {1, 2, 3, 4, 5}, target[6] = {3, 0, 0, 4, 5, 6};
        check_accept(5, parent, draft, target, 3, path, 6, "third root, full chain");
    }
    /* A rejected node invalidates its subtree even if the subtree matches;
       duplicate siblings: the lowest index wins, no backtracking into 1. */
    {
        int parent[5] = {-1, -1, 0, 1, 2}, path[1] = {0};
        int32_t draft[5] = {7, 7, 1, 2, 9}, target[6] = {7, 5, 2, 9, 0, 4};
        check_accept(5, parent, draft, target, 1, path, 5, "duplicate siblings");
    }
    /* mask and depth of the branching tree {-1, 0, 0, 1, -1, 4} */
    {
        int parent[6] = {-1, 0, 0, 1, -1, 4}, depth[6];
        int want_depth[6] = {0, 1, 1, 2, 0, 1};
        static const uint8_t want_mask[36] = {
            1, 0, 0, 0, 0, 0,
            1, 1, 0, 0, 0, 0,
            1, 0, 1, 0, 0, 0,
            1, 1, 0, 1, 0, 0,
            0, 0, 0, 0, 1, 0,
            0, 0, 0, 0, 1, 1};
        uint8_t *mask = (uint8_t *)mlkt_alloc(36);
        CHECK_INT(mlk_tree_mask(6, parent, mask), MLK_OK);
        CHECK(memcmp(mask, want_mask, 36) == 0);
        CHECK_INT(mlk_tree_depth(6, parent, depth), MLK_OK);
        CHECK(memcmp(depth, want_depth, sizeof depth) == 0);
        mlkt_digest(mask, 36);
        mlkt_free(mask);
    }
}

static void random_tree(int n, int *parent)
{
    int style = mlkt_int(3); /* 0: bushy, 1: chains, 2: mixed */
    for (int i = 0; i < n; i++) {
        int r = mlkt_int(10);
        if (i == 0 || (style == 0 && r < 2) || (style == 2 && r < 1)) parent[i] = -1;
        else if (style == 1 && r < 8) parent[i] = i - 1;
        else parent[i] = mlkt_int(i);
    }
}

/* Mock target: a deterministic greedy next token of a context. */
static int32_t mock_next(const int32_t *ctx, int len, int vocab)
{
    uint64_t h = 0x9E3779B97F4A7C15ull * (uint64_t)(len + 1);
    for (int i = len - 3 < 0 ? 0 : len - 3; i < len; i++) {
        h ^= (uint64_t)(uint32_t)ctx[i] + 0x632BE59BD9B4E019ull;
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
    }
    return (int32_t)(h % (uint64_t)vocab);
}

/* target[0] after ctx, target[1 + i] after ctx + node i's path, as the
   target model would produce with tree attention. */
static void mock_verify_tree(const int32_t *ctx, int ctx_len, int n, const int32_t *tokens,
                             const int *parent, int vocab, int32_t *target)
{
    int32_t buf[256];
    int p[MAX_N];
    memcpy(buf, ctx, (size_t)ctx_len * sizeof(int32_t));
    target[0] = mock_next(buf, ctx_len, vocab);
    for (int i = 0; i < n; i++) {
        int len = path_of(parent, i, p);
        for (int j = 0; j < len; j++) buf[ctx_len + j] = tokens[p[j]];
        target[1 + i] = mock_next(buf, ctx_len + len, vocab);
    }
}

static void test_random_trees(void)
{
    int reps = mlkt_quick() ? 300 : 2000;
    for (int rep = 0; rep < reps; rep++) {
        int n = 1 + mlkt_int(rep % 4 ? 12 : MAX_N), vocab = 2 + mlkt_int(3);
        int parent[MAX_N], depth[MAX_N], want_path[MAX_N], path[MAX_N], n_path, want_len;
        int32_t draft[MAX_N], target[MAX_N + 1], bonus, want_bonus, ctx[8], greedy[MAX_N + 8];
        uint8_t mask[MAX_N * MAX_N];
        int ctx_len = 1 + mlkt_int(8), pp[MAX_N];
        random_tree(n, parent);
        for (int i = 0; i < 8; i++) ctx[i] = mlkt_int(vocab);
        if (rep % 2) { /* random target */
            for (int i = 0; i < n; i++) draft[i] = mlkt_int(vocab);
            for (int i = 0; i <= n; i++) target[i] = mlkt_int(vocab);
        } else {       /* a mock model's target, drafts right 70% of the time */
            mock_verify_tree(ctx, ctx_len, 0, draft, parent, vocab, target);
            for (int i = 0; i < n; i++) { /* the node's correct token is its parent's prediction */
                int32_t t[MAX_N + 1];
                mock_verify_tree(ctx, ctx_len, i, draft, parent, vocab, t);
                draft[i] = mlkt_int(10) < 7 ? t[parent[i] + 1] : mlkt_int(vocab);
            }
            mock_verify_tree(ctx, ctx_len, n, draft, parent, vocab, target);
        }
        want_len = brute_accept(n, parent, draft, target, want_path, &want_bonus);
        CHECK_INT(mlk_tree_accept(n, parent, draft, target, path, &n_path, &bonus), MLK_OK);
        CHECKF(n_path == want_len && bonus == want_bonus &&
               memcmp(path, want_path, (size_t)want_len * sizeof(int)) == 0, "rep %d n %d", rep, n);
        if (rep % 2 == 0) { /* path + bonus = greedy decoding of the mock */
            int32_t buf[256];
            memcpy(buf, ctx, (size_t)ctx_len * sizeof(int32_t));
            for (int j = 0; j <= n_path; j++) {
                greedy[j] = mock_next(buf, ctx_len + j, vocab);
                buf[ctx_len + j] = greedy[j];
            }
            for (int j = 0; j < n_path; j++) CHECK_INT(draft[path[j]], greedy[j]);
            CHECK_INT(bonus, greedy[n_path]);
        }
        CHECK_INT(mlk_tree_depth(n, parent, depth), MLK_OK);
        CHECK_INT(mlk_tree_mask(n, parent, mask), MLK_OK);
        for (int i = 0; i < n; i++) {
            int len = path_of(parent, i, pp), row_ok = 1;
            CHECK_INT(depth[i], len - 1);
            for (int j = 0; j < n; j++) {
                int anc = 0;
                for (int a = 0; a < len; a++) anc |= pp[a] == j;
                row_ok &= mask[i * n + j] == anc;
            }
            CHECKF(row_ok, "mask row %d, rep %d", i, rep);
        }
        mlkt_digest(path, (size_t)n_path * sizeof(int));
        mlkt_digest(mask, (size_t)n * n);
    }
}

/* Bad inputs: right code, outputs untouched; arbitrary parent arrays are
   accepted exactly when every parent lies in [-1, i). */
static void test_bad_trees(void)
{
    int parent[8] = {-1, 0, 1, -1, 3, 2, 0, 6}, depth[8], path[8], n_path = 42;
    int32_t draft[8] = {0}, target[9] = {0}, bonus = 43;
    uint8_t mask[64];
    int reps = mlkt_quick() ? 2000 : 20000;
    memset(mask, 0xAB, sizeof mask);
    memset(depth, 0xAB, sizeof depth);
    memset(path, 0xAB, sizeof path);
#define UNTOUCHED() do { int k_; for (k_ = 0; k_ < 64; k_++) CHECK(mask[k_] == 0xAB); \
        CHECK(depth[0] == (int)0xABABABAB && depth[7] == (int)0xABABABAB && path[0] == (int)0xABABABAB); \
        CHECK(n_path == 42 && bonus == 43); } while (0)
    CHECK_INT(mlk_tree_mask(8, NULL, mask), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_mask(8, parent, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_mask(0, parent, mask), MLK_ERR_SHAPE);
    CHECK_INT(mlk_tree_mask(-3, parent, mask), MLK_ERR_SHAPE);
    CHECK_INT(mlk_tree_depth(8, NULL, depth), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_depth(8, parent, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_depth(0, parent, depth), MLK_ERR_SHAPE);
    CHECK_INT(mlk_tree_accept(8, NULL, draft, target, path, &n_path, &bonus), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_accept(8, parent, NULL, target, path, &n_path, &bonus), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_accept(8, parent, draft, NULL, path, &n_path, &bonus), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_accept(8, parent, draft, target, NULL, &n_path, &bonus), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_accept(8, parent, draft, target, path, NULL, &bonus), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_accept(8, parent, draft, target, path, &n_path, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_tree_accept(0, parent, draft, target, path, &n_path, &bonus), MLK_ERR_SHAPE);
    UNTOUCHED();
    for (int rep = 0; rep < reps; rep++) {
        int n = 1 + mlkt_int(8), bad[8], valid = 1;
        for (int i = 0; i < n; i++) {
            bad[i] = mlkt_int(4) ? (i ? mlkt_int(i + 1) - 1 : -1) : mlkt_int(n + 5) - 3;
            valid &= bad[i] >= -1 && bad[i] < i;
        }
        if (rep % 4 == 0 && valid) { /* force one bad entry at a random place */
            int at = mlkt_int(n);
            bad[at] = mlkt_int(2) ? at + mlkt_int(3) : -2 - mlkt_int(INT_MAX - 2);
            valid = 0;
        }
        if (valid) continue;
        CHECKF(mlk_tree_mask(n, bad, mask) == MLK_ERR_TREE, "rep %d", rep);
        CHECK(mlk_tree_depth(n, bad, depth) == MLK_ERR_TREE);
        CHECK(mlk_tree_accept(n, bad, draft, target, path, &n_path, &bonus) == MLK_ERR_TREE);
    }
    UNTOUCHED();
#undef UNTOUCHED
}

/* ---- mlk_spec_generate on the mock target ---- */

enum { DRAFT_WRONG, DRAFT_RIGHT, DRAFT_RANDOM, DRAFT_NONE };

typedef struct spec_mock {
    int vocab, mode, abort_draft_at, abort_verify_at, abort_accept_at, bad_tree, too_many;
    int draft_calls, verify_calls, accept_calls, protocol_errors;
    int last_ctx_len, last_n, last_parent[MAX_N];
    int32_t last_tokens[MAX_N], last_greedy[MAX_N + 1];
} spec_mock;

static int spec_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens,
                      int *parent, int *n_nodes)
{
    spec_mock *m = (spec_mock *)user;
    int n = 1 + mlkt_int(MAX_N);
    m->draft_calls++;
    if (m->abort_draft_at == m->draft_calls) return 1;
    if (max_nodes < 1) m->protocol_errors++;
    if (m->mode == DRAFT_NONE) { *n_nodes = 0; return 0; }
    if (n > max_nodes || m->mode == DRAFT_RIGHT) n = max_nodes;
    if (m->mode == DRAFT_RANDOM) random_tree(n, parent);
    else for (int i = 0; i < n; i++) parent[i] = m->mode == DRAFT_RIGHT || mlkt_int(4) ? i - 1 : mlkt_int(i + 1) - 1;
    for (int i = 0; i < n; i++) {
        int32_t t[MAX_N + 1], right;
        mock_verify_tree(ctx, ctx_len, i, tokens, parent, m->vocab, t);
        right = t[parent[i] + 1];
        if (m->mode == DRAFT_WRONG) tokens[i] = (right + 1) % m->vocab;
        else if (m->mode == DRAFT_RIGHT) tokens[i] = right;
        else tokens[i] = mlkt_int(2) ? right : mlkt_int(m->vocab);
    }
    if (m->bad_tree && m->draft_calls == 2) parent[n - 1] = n - 1;
    *n_nodes = m->too_many && m->draft_calls == 2 ? max_nodes + 1 : n;
    return 0;
}

static int spec_verify(void *user, const int32_t *ctx, int ctx_len, int n, const int32_t *tokens,
                       const int *parent, int32_t *greedy)
{
    spec_mock *m = (spec_mock *)user;
    m->verify_calls++;
    if (m->abort_verify_at == m->verify_calls) return 1;
    if (n < 0 || n > MAX_N) { m->protocol_errors++; return 1; }
    mock_verify_tree(ctx, ctx_len, n, tokens, parent, m->vocab, greedy);
    m->last_ctx_len = ctx_len;
    m->last_n = n;
    memcpy(m->last_parent, parent, (size_t)n * sizeof(int));
    memcpy(m->last_tokens, tokens, (size_t)n * sizeof(int32_t));
    memcpy(m->last_greedy, greedy, (size_t)(n + 1) * sizeof(int32_t));
    return 0;
}

/* The accepted path must be a chain of the last tree, each node matching. */
static int spec_accept(void *user, int n_path, const int *path)
{
    spec_mock *m = (spec_mock *)user;
    m->accept_calls++;
    if (m->abort_accept_at == m->accept_calls) return 1;
    for (int j = 0; j < n_path; j++) {
        int node = path[j], want_parent = j ? path[j - 1] : -1;
        if (node < 0 || node >= m->last_n || m->last_parent[node] != want_parent ||
            m->last_tokens[node] != m->last_greedy[want_parent + 1])
            m->protocol_errors++;
    }
    return 0;
}

static mlk_spec_config spec_cfg(spec_mock *m, int max_new, int max_nodes, int eos)
{
    mlk_spec_config c;
    c.max_new_tokens = max_new; c.max_nodes = max_nodes; c.eos_id = eos;
    c.draft = spec_draft; c.verify = spec_verify; c.accept = spec_accept; c.user = m;
    return c;
}

static void test_spec_mock(void)
{
    int reps = mlkt_quick() ? 40 : 200;
    for (int rep = 0; rep < reps; rep++) {
        spec_mock m;
        int vocab = 2 + mlkt_int(rep % 2 ? 3 : 40), plen = 1 + mlkt_int(8), max_new = 1 + mlkt_int(48);
        int max_nodes = 1 + mlkt_int(16), eos = mlkt_int(3) ? -1 : mlkt_int(vocab), want_len = 0, out_len = -1;
        int32_t prompt[8], buf[128], *out = (int32_t *)mlkt_alloc((size_t)max_new * sizeof(int32_t));
        mlk_spec_stats st;
        mlk_spec_config cfg;
        memset(&st, 0, sizeof st);
        memset(&m, 0, sizeof m);
        m.vocab = vocab;
        m.mode = rep % 4;
        cfg = spec_cfg(&m, max_new, max_nodes, eos);
        for (int i = 0; i < plen; i++) prompt[i] = buf[i] = mlkt_int(vocab);
        while (want_len < max_new) {
            buf[plen + want_len] = mock_next(buf, plen + want_len, vocab);
            if (buf[plen + want_len++] == eos) break;
        }
        CHECK_INT(mlk_spec_generate(&cfg, prompt, plen, out, &out_len, &st), MLK_OK);
        CHECK_INT(out_len, want_len);
        CHECKF(memcmp(out, buf + plen, (size_t)want_len * sizeof(int32_t)) == 0, "rep %d mode %d", rep, m.mode);
        for (int t = want_len; t < max_new; t++) CHECK_INT(out[t], -1);
        CHECK_INT(m.protocol_errors, 0);
        CHECK_INT(st.target_calls, m.verify_calls);
        CHECK_INT(m.accept_calls, m.verify_calls);
        /* each call emits its path, then the bonus, unless EOS came first */
        CHECK(out_len == st.accepted + st.target_calls ||
              (buf[plen + out_len - 1] == eos && out_len == st.accepted + st.target_calls - 1));
        CHECK(st.accepted <= st.drafted);
        CHECK_CLOSE(st.mean_accepted, (double)st.accepted / st.target_calls, 1e-6, 0);
        if (m.mode == DRAFT_WRONG || m.mode == DRAFT_NONE) CHECK_INT(st.accepted, 0);
        if (m.mode == DRAFT_RIGHT && eos < 0) /* a right chain as long as allowed */
            CHECK_INT(st.target_calls, (max_new + max_nodes) / (max_nodes + 1));
        mlkt_digest(out, (size_t)max_new * sizeof(int32_t));
        mlkt_free(out);
    }
}

static void test_spec_errors(void)
{
    spec_mock m;
    int32_t prompt[3] = {1, 2, 3}, out[16], before[16];
    int out_len = 99;
    mlk_spec_stats st, st_before;
    mlk_spec_config cfg, c;
    memset(&m, 0, sizeof m);
    m.vocab = 5;
    m.mode = DRAFT_RANDOM;
    cfg = spec_cfg(&m, 16, 4, -1);
    for (int i = 0; i < 16; i++) out[i] = before[i] = 1000 + i;
    memset(&st, 0x5A, sizeof st);
    st_before = st;
#define EXPECT(call, code) do { CHECK_INT(call, code); CHECK(memcmp(out, before, sizeof out) == 0); \
        CHECK(out_len == 99 && memcmp(&st, &st_before, sizeof st) == 0); } while (0)
    EXPECT(mlk_spec_generate(NULL, prompt, 3, out, &out_len, &st), MLK_ERR_NULL);
    EXPECT(mlk_spec_generate(&cfg, NULL, 3, out, &out_len, &st), MLK_ERR_NULL);
    EXPECT(mlk_spec_generate(&cfg, prompt, 3, NULL, &out_len, &st), MLK_ERR_NULL);
    EXPECT(mlk_spec_generate(&cfg, prompt, 3, out, NULL, &st), MLK_ERR_NULL);
    c = cfg; c.draft = NULL;
    EXPECT(mlk_spec_generate(&c, prompt, 3, out, &out_len, &st), MLK_ERR_NULL);
    c = cfg; c.verify = NULL;
    EXPECT(mlk_spec_generate(&c, prompt, 3, out, &out_len, &st), MLK_ERR_NULL);
    EXPECT(mlk_spec_generate(&cfg, prompt, 0, out, &out_len, &st), MLK_ERR_SHAPE);
    c = cfg; c.max_new_tokens = 0;
    EXPECT(mlk_spec_generate(&c, prompt, 3, out, &out_len, &st), MLK_ERR_SHAPE);
    c = cfg; c.max_nodes = -1;
    EXPECT(mlk_spec_generate(&c, prompt, 3, out, &out_len, &st), MLK_ERR_SHAPE);
    c = cfg; c.eos_id = -2;
    EXPECT(mlk_spec_generate(&c, prompt, 3, out, &out_len, &st), MLK_ERR_ARG);
    EXPECT(mlk_spec_generate(&cfg, prompt, INT_MAX - 4, out, &out_len, &st), MLK_ERR_OVERFLOW);
    CHECK_INT(m.draft_calls + m.verify_calls, 0);
    m.abort_draft_at = 2;
    EXPECT(mlk_spec_generate(&cfg, prompt, 3, out, &out_len, &st), MLK_ERR_CALLBACK);
    m.abort_draft_at = 0; m.draft_calls = m.verify_calls = 0; m.abort_verify_at = 3;
    EXPECT(mlk_spec_generate(&cfg, prompt, 3, out, &out_len, &st), MLK_ERR_CALLBACK);
    m.abort_verify_at = 0; m.accept_calls = 0; m.abort_accept_at = 1;
    EXPECT(mlk_spec_generate(&cfg, prompt, 3, out, &out_len, &st), MLK_ERR_CALLBACK);
    m.abort_accept_at = 0; m.draft_calls = 0; m.bad_tree = 1;
    EXPECT(mlk_spec_generate(&cfg, prompt, 3, out, &out_len, &st), MLK_ERR_TREE);
    m.bad_tree = 0; m.draft_calls = 0; m.too_many = 1;
    EXPECT(mlk_spec_generate(&cfg, prompt, 3, out, &out_len, &st), MLK_ERR_ARG);
#undef EXPECT
    /* stats and accept are optional */
    m.too_many = 0;
    c = cfg; c.accept = NULL;
    CHECK_INT(mlk_spec_generate(&c, prompt, 3, out, &out_len, NULL), MLK_OK);
    CHECK_INT(out_len, 16);
    mlkt_digest(out, sizeof out);
}

/* ---- tree attention over the KV cache ----
   Every node's output equals attention of its query over the prefix and its
   root-to-node path laid out as a plain causal sequence. Both are checked
   against a double reference, within 2x the naive float error + a floor. */
static void test_tree_attention(void)
{
    int reps = mlkt_quick() ? 4 : 12;
    for (int rep = 0; rep < reps; rep++) {
        int hkv = 1 + mlkt_int(2), heads = hkv * (1 + mlkt_int(3)), d = 8 * (1 + mlkt_int(4));
        int prefix = 1 + mlkt_int(rep % 3 ? 40 : 300), n = 1 + mlkt_int(24), tree_seq = -1, path_seq = -1;
        int parent[32], p[32];
        size_t rows = (size_t)prefix + n, kvd = (size_t)hkv * d, qd = (size_t)heads * d;
        float *k = mlkt_floats(rows * kvd), *v = mlkt_floats(rows * kvd), *q = mlkt_floats((size_t)n * qd);
        float *o_tree = mlkt_floats((size_t)n * qd), *o_path = mlkt_floats(qd), *kp, *vp;
        mlk_kv_config kc;
        mlk_kv_cache *c;
        kc.layers = 1; kc.kv_heads = hkv; kc.head_dim = d; kc.block_size = 16;
        kc.num_blocks = 2 * (int)(rows / 16 + 2); kc.max_seqs = 2; kc.type = MLK_KV_F32;
        CHECK_INT(mlk_kv_create(&kc, &c), MLK_OK);
        random_tree(n, parent);
        mlkt_fill_normal(k, rows * kvd, 1.0);
        mlkt_fill_normal(v, rows * kvd, 1.0);
        mlkt_fill_normal(q, (size_t)n * qd, 1.0);
        CHECK_INT(mlk_kv_seq_new(c, &tree_seq), MLK_OK);
        CHECK_INT(mlk_kv_append(c, tree_seq, (int)rows), MLK_OK);
        CHECK_INT(mlk_kv_store(c, tree_seq, 0, 0, (int)rows, k, v), MLK_OK);
        CHECK_INT(mlk_kv_attn(c, 0, 1, &tree_seq, &n, q, heads, 0.0f, parent, o_tree), MLK_OK);
        kp = mlkt_floats(rows * kvd);
        vp = mlkt_floats(rows * kvd);
        for (int i = 0; i < n; i++) {
            int len = path_of(parent, i, p), total = prefix + len, one = 1;
            double worst = 0, worst_naive = 0, worst_path = 0;
            memcpy(kp, k, (size_t)prefix * kvd * sizeof(float));
            memcpy(vp, v, (size_t)prefix * kvd * sizeof(float));
            for (int j = 0; j < len; j++) {
                memcpy(kp + (size_t)(prefix + j) * kvd, k + (size_t)(prefix + p[j]) * kvd, kvd * sizeof(float));
                memcpy(vp + (size_t)(prefix + j) * kvd, v + (size_t)(prefix + p[j]) * kvd, kvd * sizeof(float));
            }
            CHECK_INT(mlk_kv_seq_new(c, &path_seq), MLK_OK);
            CHECK_INT(mlk_kv_append(c, path_seq, total), MLK_OK);
            CHECK_INT(mlk_kv_store(c, path_seq, 0, 0, total, kp, vp), MLK_OK);
            CHECK_INT(mlk_kv_attn(c, 0, 1, &path_seq, &one, q + (size_t)i * qd, heads, 0.0f, NULL, o_path), MLK_OK);
            mlk_kv_seq_free(c, path_seq);
            for (int h = 0; h < heads; h++) {
                const float *qh = q + (size_t)i * qd + (size_t)h * d;
                int g = h / (heads / hkv);
                double mx = -INFINITY, sum = 0, acc[32] = {0};
                float fmx = -INFINITY, fsum = 0, facc[32] = {0};
                double sc[512];
                float fsc[512];
                for (int j = 0; j < total; j++) {
                    double dot = 0;
                    float fdot = 0;
                    for (int e = 0; e < d; e++) {
                        dot += (double)qh[e] * kp[(size_t)j * kvd + (size_t)g * d + e];
                        fdot += qh[e] * kp[(size_t)j * kvd + (size_t)g * d + e];
                    }
                    sc[j] = dot / sqrt((double)d);
                    fsc[j] = fdot / sqrtf((float)d);
                    if (sc[j] > mx) mx = sc[j];
                    if (fsc[j] > fmx) fmx = fsc[j];
                }
                for (int j = 0; j < total; j++) {
                    double w = exp(sc[j] - mx);
                    float fw = expf(fsc[j] - fmx);
                    sum += w;
                    fsum += fw;
                    for (int e = 0; e < d; e++) {
                        acc[e] += w * vp[(size_t)j * kvd + (size_t)g * d + e];
                        facc[e] += fw * vp[(size_t)j * kvd + (size_t)g * d + e];
                    }
                }
                for (int e = 0; e < d; e++) {
                    double ref = acc[e] / sum;
                    double et = fabs(o_tree[(size_t)i * qd + (size_t)h * d + e] - ref);
                    double ep = fabs(o_path[(size_t)h * d + e] - ref);
                    double en = fabs((double)(facc[e] / fsum) - ref);
                    if (!(et <= worst)) worst = et; /* a NaN sticks and fails */
                    if (!(ep <= worst_path)) worst_path = ep;
                    if (en > worst_naive) worst_naive = en;
                }
            }
            CHECK_NAIVE(worst, worst_naive, 1e-6, "tree node %d", i);
            CHECK_NAIVE(worst_path, worst_naive, 1e-6, "path of node %d", i);
        }
        mlkt_digest(o_tree, (size_t)n * qd * sizeof(float));
        mlk_kv_destroy(c);
        mlkt_free(k); mlkt_free(v); mlkt_free(q); mlkt_free(o_tree); mlkt_free(o_path); mlkt_free(kp); mlkt_free(vp);
    }
}

/* ---- mlk_spec_generate on the example model ----
   Drafts that are always right, always wrong, or random trees with right
   tokens scattered in: the output must be the model's greedy decoding. */
typedef struct model_draft {
    tinylm_spec sp;          /* first: the model's verify/accept take the same user pointer */
    const int32_t *greedy;   /* the reference continuation */
    int plen, n_greedy, mode, protocol_errors;
} model_draft;

static int model_draft_fn(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens,
                          int *parent, int *n_nodes)
{
    model_draft *md = (model_draft *)user;
    int gen = ctx_len - md->plen, n = 1 + mlkt_int(max_nodes), vocab = md->sp.m->cfg.vocab;
    if (gen < 0 || gen > md->n_greedy || memcmp(ctx + md->plen, md->greedy, (size_t)gen * sizeof(int32_t)) != 0)
        md->protocol_errors++;
    if (md->mode == DRAFT_RANDOM) random_tree(n, parent);
    else for (int i = 0; i < n; i++) parent[i] = i - 1;
    for (int i = 0; i < n; i++) {
        int p[MAX_N], len = path_of(parent, i, p), on_greedy = 1;
        int32_t right;
        for (int j = 0; j + 1 < len; j++) on_greedy &= tokens[p[j]] == md->greedy[gen + j];
        right = gen + len - 1 < md->n_greedy ? md->greedy[gen + len - 1] : 0;
        if (md->mode == DRAFT_RIGHT) tokens[i] = right;
        else if (md->mode == DRAFT_WRONG) tokens[i] = (right + 1) % vocab;
        else tokens[i] = on_greedy && mlkt_int(3) ? right : mlkt_int(vocab);
    }
    *n_nodes = n;
    return 0;
}

static void test_spec_model(void)
{
    int seeds = mlkt_quick() ? 6 : 40;
    tinylm_config cfg;
    cfg.vocab = 96; cfg.dim = 48; cfg.layers = 3; cfg.heads = 4; cfg.kv_heads = 2; cfg.head_dim = 12;
    cfg.ffn = 96; cfg.max_ctx = 128; cfg.max_tokens = 48; cfg.max_seqs = 4;
    cfg.first_scale = 16.0f; cfg.tail_scale = 0.5f; cfg.logit_scale = 0.25f;
    for (int s = 0; s < seeds; s++) {
        tinylm m;
        int32_t prompt[16], greedy[40], out[40];
        int plen = 1 + mlkt_int(16), max_new = 8 + mlkt_int(32), n_greedy, n_out = -1;
        float *logits;
        cfg.seed = 100 + (uint64_t)s;
        CHECK_INT(tinylm_init(&m, &cfg), MLK_OK);
        logits = (float *)malloc((size_t)(cfg.max_tokens + 1) * cfg.vocab * sizeof(float));
        for (int i = 0; i < plen; i++) prompt[i] = mlkt_int(cfg.vocab);
        n_greedy = tinylm_greedy(&m, prompt, plen, 1 + mlkt_int(8), max_new, -1, logits, greedy);
        CHECK_INT(n_greedy, max_new);
        for (int mode = DRAFT_WRONG; mode <= DRAFT_RANDOM; mode++) {
            model_draft md;
            mlk_spec_config sc;
            mlk_spec_stats st;
            memset(&st, 0, sizeof st);
            memset(&md, 0, sizeof md);
            md.sp.m = &m;
            md.sp.draft_layers = 1;
            md.sp.chunk = 1 + mlkt_int(8);
            md.sp.logits = logits;
            md.greedy = greedy;
            md.plen = plen;
            md.n_greedy = n_greedy;
            md.mode = mode;
            CHECK_INT(mlk_kv_seq_new(m.kv, &md.sp.target_seq), MLK_OK);
            sc.max_new_tokens = max_new; sc.max_nodes = 1 + mlkt_int(24); sc.eos_id = -1;
            sc.draft = model_draft_fn; sc.verify = tinylm_spec_verify; sc.accept = tinylm_spec_accept;
            sc.user = &md;
            CHECK_INT(mlk_spec_generate(&sc, prompt, plen, out, &n_out, &st), MLK_OK);
            CHECK_INT(n_out, n_greedy);
            CHECKF(memcmp(out, greedy, (size_t)n_greedy * sizeof(int32_t)) == 0, "seed %d mode %d", s, mode);
            if (mode == DRAFT_WRONG) CHECK_INT(st.accepted, 0);
            if (mode == DRAFT_RIGHT) CHECK_INT(st.accepted + st.target_calls, n_greedy);
            CHECK_INT(mlk_kv_seq_len(m.kv, md.sp.target_seq), md.sp.target_len);
            CHECK_INT(md.protocol_errors, 0);
            mlk_kv_seq_free(m.kv, md.sp.target_seq);
            mlkt_digest(out, (size_t)n_out * sizeof(int32_t));
        }
        /* the example's own truncated-model draft */
        {
            mlk_spec_stats st;
            memset(&st, 0, sizeof st);
            CHECK_INT(tinylm_speculate(&m, 1, 1 + mlkt_int(6), prompt, plen, 4, max_new, -1, logits, out, &n_out, &st),
                      MLK_OK);
            CHECKF(n_out == n_greedy && memcmp(out, greedy, (size_t)n_greedy * sizeof(int32_t)) == 0, "seed %d", s);
        }
        free(logits);
        tinylm_free(&m);
    }
}

int main(void)
{
    mlkt_file = "test_tree";
    MLKT_RUN(test_hand_trees, 1);
    MLKT_RUN(test_random_trees, 2);
    MLKT_RUN(test_bad_trees, 3);
    MLKT_RUN(test_spec_mock, 4);
    MLKT_RUN(test_spec_errors, 5);
    MLKT_RUN(test_tree_attention, 6);
    MLKT_RUN(test_spec_model, 7);
    return mlkt_finish();
}

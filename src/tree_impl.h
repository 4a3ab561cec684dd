/* ======================================================================
   tree speculative decoding
   ====================================================================== */

#ifdef __cplusplus
extern "C" {
#endif

/* Topological order with -1 for roots is what every tree function relies on. */
static mlk_status mlk__tree_check(int n, const int *parent)
{
    for (int i = 0; i < n; i++)
        if (parent[i] < -1 || parent[i] >= i) return MLK_ERR_TREE;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_tree_mask(int n, const int *parent, uint8_t *mask)
{
    size_t nn;
    mlk_status st;
    if (!parent || !mask) return MLK_ERR_NULL;
    if (n < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(n, n, 1, 1, 1, &nn)) return MLK_ERR_OVERFLOW;
    st = mlk__tree_check(n, parent);
    if (st != MLK_OK) return st;
    /* A node's row is its parent's row plus itself. */
    for (int i = 0; i < n; i++) {
        uint8_t *row = mask + (size_t)i * n;
        if (parent[i] >= 0) memcpy(row, mask + (size_t)parent[i] * n, (size_t)n);
        else memset(row, 0, (size_t)n);
        memset(row + i, 0, (size_t)(n - i));
        row[i] = 1;
    }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_tree_depth(int n, const int *parent, int *depth)
{
    mlk_status st;
    if (!parent || !depth) return MLK_ERR_NULL;
    if (n < 1) return MLK_ERR_SHAPE;
    st = mlk__tree_check(n, parent);
    if (st != MLK_OK) return st;
    for (int i = 0; i < n; i++) depth[i] = parent[i] < 0 ? 0 : depth[parent[i]] + 1;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_tree_accept(int n, const int *parent, const int32_t *draft,
    const int32_t *target, int *path, int *n_path, int32_t *bonus)
{
    int cur = -1, len = 0;
    mlk_status st;
    if (!parent || !draft || !target || !path || !n_path || !bonus) return MLK_ERR_NULL;
    if (n < 1) return MLK_ERR_SHAPE;
    st = mlk__tree_check(n, parent);
    if (st != MLK_OK) return st;
    /* Children of cur have larger indices, so one forward scan finds the
       lowest-index matching child of each accepted node in turn. */
    for (int i = 0; i < n; i++) {
        if (parent[i] == cur && draft[i] == target[cur + 1]) {
            path[len++] = i;
            cur = i;
        }
    }
    *n_path = len;
    *bonus = target[cur + 1];
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_spec_generate(const mlk_spec_config *cfg,
    const int32_t *prompt, int prompt_len, int32_t *out, int *out_len,
    mlk_spec_stats *stats)
{
    int max_new, max_nodes, ctx_len, gen = 0, done = 0;
    mlk_spec_stats s;
    size_t need = 0;
    mlk__arena arena;
    int32_t *ctx, *tokens, *greedy;
    int *parent, *path;
    mlk_status st;

    if (!cfg || !prompt || !out || !out_len || !cfg->draft || !cfg->verify) return MLK_ERR_NULL;
    max_new = cfg->max_new_tokens;
    max_nodes = cfg->max_nodes;
    if (prompt_len < 1 || max_new < 1 || max_nodes < 1) return MLK_ERR_SHAPE;
    if (cfg->eos_id < -1) return MLK_ERR_ARG;
    if (prompt_len > INT_MAX - max_new || max_nodes == INT_MAX) return MLK_ERR_OVERFLOW;
    need = mlk__arena_need(need, ((size_t)prompt_len + (size_t)max_new) * sizeof(int32_t));
    need = mlk__arena_need(need, (size_t)max_nodes * sizeof(int32_t));
    need = mlk__arena_need(need, ((size_t)max_nodes + 1) * sizeof(int32_t));
    need = mlk__arena_need(need, (size_t)max_nodes * sizeof(int));
    need = mlk__arena_need(need, (size_t)max_nodes * sizeof(int));
    st = mlk__arena_init(&arena, NULL, need);
    if (st != MLK_OK) return st;
    ctx = (int32_t *)mlk__arena_take(&arena, ((size_t)prompt_len + (size_t)max_new) * sizeof(int32_t));
    tokens = (int32_t *)mlk__arena_take(&arena, (size_t)max_nodes * sizeof(int32_t));
    greedy = (int32_t *)mlk__arena_take(&arena, ((size_t)max_nodes + 1) * sizeof(int32_t));
    parent = (int *)mlk__arena_take(&arena, (size_t)max_nodes * sizeof(int));
    path = (int *)mlk__arena_take(&arena, (size_t)max_nodes * sizeof(int));
    memcpy(ctx, prompt, (size_t)prompt_len * sizeof(int32_t));
    ctx_len = prompt_len;
    memset(&s, 0, sizeof s);

    while (!done && gen < max_new) {
        /* Only remaining - 1 draft tokens can be emitted before the bonus. */
        int room = max_new - gen - 1 < max_nodes ? max_new - gen - 1 : max_nodes;
        int n = 0, n_path = 0;
        int32_t bonus;
        if (room > 0 && cfg->draft(cfg->user, ctx, ctx_len, room, tokens, parent, &n) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        if (n < 0 || n > room) { st = MLK_ERR_ARG; break; }
        st = mlk__tree_check(n, parent);
        if (st != MLK_OK) break;
        if (cfg->verify(cfg->user, ctx, ctx_len, n, tokens, parent, greedy) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        s.target_calls++;
        s.drafted += n;
        bonus = greedy[0];
        if (n > 0) /* cannot fail: the tree was checked above */
            mlk_tree_accept(n, parent, tokens, greedy, path, &n_path, &bonus);
        if (cfg->accept && cfg->accept(cfg->user, n_path, path) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        for (int j = 0; j <= n_path && !done && gen < max_new; j++) {
            int32_t tok = j < n_path ? tokens[path[j]] : bonus;
            ctx[ctx_len++] = tok;
            gen++;
            if (j < n_path) s.accepted++;
            done = tok == cfg->eos_id;
        }
    }
    if (st == MLK_OK) {
        memcpy(out, ctx + prompt_len, (size_t)gen * sizeof(int32_t));
        for (int t = gen; t < max_new; t++) out[t] = -1;
        *out_len = gen;
        s.mean_accepted = s.target_calls ? (float)s.accepted / (float)s.target_calls : 0.0f;
        if (stats) *stats = s;
    }
    mlk__arena_done(&arena);
    return st;
}

#ifdef __cplusplus
}
#endif

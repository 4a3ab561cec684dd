/* ======================================================================
   tree speculative decoding
   ====================================================================== */

/* A draft tree of n nodes in topological order: parent[i] < i, -1 for a
   root. mask [n, n]: mask[i*n + j] = 1 iff node j is an ancestor-or-self of i. */
MLKERN_DEF mlk_status mlk_tree_mask(int n, const int *parent, uint8_t *mask);
/* depth [n]: 0 for roots; node i sits at position prefix_len + depth[i]. */
MLKERN_DEF mlk_status mlk_tree_depth(int n, const int *parent, int *depth);
/* Verifies draft [n] against target [n + 1] (target[0]: greedy token after the
   prefix, target[1 + i]: after node i). Node i is checked against
   target[parent[i] + 1]; the walk takes the lowest-index matching child per
   level. path [n] gets the accepted nodes (*n_path of them), *bonus the
   target's token after the last one. */
MLKERN_DEF mlk_status mlk_tree_accept(int n, const int *parent, const int32_t *draft,
    const int32_t *target, int *path, int *n_path, int32_t *bonus);

/* Callbacks of mlk_spec_generate; each returns 0, or non-zero to abort.
   draft: propose at most max_nodes tokens after ctx [ctx_len] as a tree
   (tokens, parent as above); *n_nodes may be 0. */
typedef int (*mlk_draft_fn)(void *user, const int32_t *ctx, int ctx_len,
    int max_nodes, int32_t *tokens, int *parent, int *n_nodes);
/* verify: one target pass over ctx and the tree (tree attention, node i at
   position ctx_len + depth[i]): greedy[0] = the target's argmax after ctx,
   greedy[1 + i] after node i. */
typedef int (*mlk_verify_fn)(void *user, const int32_t *ctx, int ctx_len,
    int n_nodes, const int32_t *tokens, const int *parent, int32_t *greedy);
/* accept (optional): the nodes of the last verified tree that were kept, so a
   stateful target keeps their KV rows (mlk_kv_compact) and drops the rest. */
typedef int (*mlk_accept_fn)(void *user, int n_path, const int *path);

typedef struct mlk_spec_config {
    int max_new_tokens, max_nodes; /* >= 1; max_nodes bounds each draft tree */
    int eos_id;                    /* stop after emitting it; -1: none */
    mlk_draft_fn draft;
    mlk_verify_fn verify;
    mlk_accept_fn accept;          /* NULL: not needed */
    void *user;                    /* passed to the three callbacks */
} mlk_spec_config;
typedef struct mlk_spec_stats {
    int target_calls;    /* verify calls */
    int drafted;         /* draft tokens proposed */
    int accepted;        /* draft tokens accepted and emitted */
    float mean_accepted; /* accepted / target_calls (each call also emits a bonus token) */
} mlk_spec_stats;
/* Tree speculative decoding: draft, verify, accept path + bonus, until
   max_new_tokens or EOS. out [max_new_tokens] (-1 past *out_len) equals the
   target's greedy decoding for any draft. stats may be NULL. */
MLKERN_DEF mlk_status mlk_spec_generate(const mlk_spec_config *cfg,
    const int32_t *prompt, int prompt_len, int32_t *out, int *out_len,
    mlk_spec_stats *stats);

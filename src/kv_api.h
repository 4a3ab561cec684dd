/* ======================================================================
   KV cache
   ====================================================================== */

typedef enum mlk_kv_type { MLK_KV_F32, MLK_KV_F16, MLK_KV_Q8, MLK_KV_Q4 } mlk_kv_type;
typedef struct mlk_kv_config {
    int layers, kv_heads, head_dim;
    int block_size, num_blocks, max_seqs;
    mlk_kv_type type;
} mlk_kv_config;
typedef struct mlk_kv_cache mlk_kv_cache;

MLKERN_DEF mlk_status mlk_kv_create(const mlk_kv_config *cfg, mlk_kv_cache **out);
MLKERN_DEF void       mlk_kv_destroy(mlk_kv_cache *c);
MLKERN_DEF mlk_status mlk_kv_seq_new(mlk_kv_cache *c, int *seq);
MLKERN_DEF mlk_status mlk_kv_seq_free(mlk_kv_cache *c, int seq);
MLKERN_DEF mlk_status mlk_kv_seq_fork(mlk_kv_cache *c, int src, int *dst);
MLKERN_DEF int        mlk_kv_seq_len(const mlk_kv_cache *c, int seq);
MLKERN_DEF mlk_status mlk_kv_append(mlk_kv_cache *c, int seq, int n);
MLKERN_DEF mlk_status mlk_kv_store(mlk_kv_cache *c, int seq, int layer, int pos,
    int n, const float *k, const float *v);
MLKERN_DEF mlk_status mlk_kv_load(const mlk_kv_cache *c, int seq, int layer, int pos,
    int n, float *k, float *v);
MLKERN_DEF mlk_status mlk_kv_truncate(mlk_kv_cache *c, int seq, int len);
MLKERN_DEF mlk_status mlk_kv_compact(mlk_kv_cache *c, int seq, int start,
    int n_keep, const int *keep);
MLKERN_DEF mlk_status mlk_kv_attn(const mlk_kv_cache *c, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads,
    float scale, const int *tree_parent, float *o);
typedef struct mlk_kv_stats {
    size_t bytes_total, bytes_used;
    int blocks_total, blocks_used, seqs;
} mlk_kv_stats;
MLKERN_DEF mlk_status mlk_kv_get_stats(const mlk_kv_cache *c, mlk_kv_stats *st);

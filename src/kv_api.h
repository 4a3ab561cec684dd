/* ======================================================================
   KV cache
   ====================================================================== */

/* A pool of num_blocks blocks; a block holds block_size positions of every
   layer and kv head, keys and values. Sequences own block tables into the
   pool; forks share blocks and copy one on its first write (copy-on-write).
   A contiguous cache is block_size = the longest context.

   Storage and bytes per token per layer (both K and V, Hkv kv heads, head
   dim D, nb = ceil(D / 32) quantisation blocks of one float scale each):
       MLK_KV_F32  2 * Hkv * 4 * D                          (D=128: 1024 B/head)
       MLK_KV_F16  2 * Hkv * 2 * D                          (D=128:  512 B/head)
       MLK_KV_Q8   2 * Hkv * (4 * nb + D rounded up to 4)       (D=128: 288 B/head)
       MLK_KV_Q4   2 * Hkv * (4 * nb + D/2 rounded up to 4)     (D=128: 160 B/head)
   mlk_kv_bytes_per_token computes it. F16 rounds to nearest even and
   saturates at +-65504; Q8/Q4 are symmetric (scale = max|x| / 127 or / 7)
   with every element within half a step of its input. */
typedef enum mlk_kv_type { MLK_KV_F32, MLK_KV_F16, MLK_KV_Q8, MLK_KV_Q4 } mlk_kv_type;
typedef struct mlk_kv_config {
    int layers, kv_heads, head_dim;
    int block_size, num_blocks, max_seqs;
    mlk_kv_type type;
} mlk_kv_config;
typedef struct mlk_kv_cache mlk_kv_cache;

/* Bytes one position takes in one layer (K and V, all kv heads); 0 if the
   config is invalid or the size overflows. Pool bytes = this * layers *
   block_size * num_blocks. */
MLKERN_DEF size_t     mlk_kv_bytes_per_token(const mlk_kv_config *cfg);
/* Allocates the pool and tables; every size >= 1, type one of mlk_kv_type
   (else MLK_ERR_ARG). *out is written only on success. */
MLKERN_DEF mlk_status mlk_kv_create(const mlk_kv_config *cfg, mlk_kv_cache **out);
/* Frees the cache and every sequence in it; NULL is a no-op. */
MLKERN_DEF void       mlk_kv_destroy(mlk_kv_cache *c);
/* A new empty sequence: the lowest free id in [0, max_seqs), or
   MLK_ERR_CAPACITY when max_seqs sequences exist. */
MLKERN_DEF mlk_status mlk_kv_seq_new(mlk_kv_cache *c, int *seq);
/* Releases the sequence; blocks shared with a fork stay with the fork. */
MLKERN_DEF mlk_status mlk_kv_seq_free(mlk_kv_cache *c, int seq);
/* A new sequence sharing every block of src (no copy); the first write by
   either side into a shared block copies exactly that block. */
MLKERN_DEF mlk_status mlk_kv_seq_fork(mlk_kv_cache *c, int src, int *dst);
/* Number of positions of the sequence; -1 for a NULL cache or a bad id. */
MLKERN_DEF int        mlk_kv_seq_len(const mlk_kv_cache *c, int seq);
/* Grows the sequence by n >= 1 positions (contents unspecified until
   stored). MLK_ERR_CAPACITY, with nothing changed, if the pool lacks blocks. */
MLKERN_DEF mlk_status mlk_kv_append(mlk_kv_cache *c, int seq, int n);
/* Writes positions [pos, pos + n) of one layer; k, v: [n, kv_heads, head_dim].
   The range must lie inside the sequence (MLK_ERR_SHAPE). Quantised types
   need finite inputs (MLK_ERR_VALUE). Shared blocks are copied first; when
   the pool cannot hold the copies: MLK_ERR_CAPACITY, nothing changed. */
MLKERN_DEF mlk_status mlk_kv_store(mlk_kv_cache *c, int seq, int layer, int pos,
    int n, const float *k, const float *v);
/* Dequantised copy of positions [pos, pos + n) of one layer into k, v. */
MLKERN_DEF mlk_status mlk_kv_load(const mlk_kv_cache *c, int seq, int layer, int pos,
    int n, float *k, float *v);
/* Shortens the sequence to len (0 <= len <= current length); blocks past
   the new end are released. */
MLKERN_DEF mlk_status mlk_kv_truncate(mlk_kv_cache *c, int seq, int len);
/* Keeps accepted speculative rows: position start + keep[i] moves to
   start + i (every layer), then the length becomes start + n_keep. keep is
   strictly increasing inside [0, len - start) (else MLK_ERR_ARG); n_keep may
   be 0. Shared blocks it rewrites are copied (MLK_ERR_CAPACITY if it can't). */
MLKERN_DEF mlk_status mlk_kv_compact(mlk_kv_cache *c, int seq, int start,
    int n_keep, const int *keep);
/* Attention of each listed sequence's n_q[s] newest positions (already
   stored) over its whole cache in one layer. q, o: for each sequence in
   order, [n_q[s], heads, head_dim]; heads a multiple of kv_heads (GQA).
   Causal, bottom-right aligned; with tree_parent (one sequence only) the
   last n_q positions are a tree: a node sees the prefix, its ancestors and
   itself (a bad parent array is MLK_ERR_TREE). scale 0 means
   1/sqrt(head_dim). Scratch: one allocation per call, about 0.4 MiB per
   thread at head_dim 128. Bitwise identical for any thread count. */
MLKERN_DEF mlk_status mlk_kv_attn(const mlk_kv_cache *c, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads,
    float scale, const int *tree_parent, float *o);
typedef struct mlk_kv_stats {
    size_t bytes_total, bytes_used;   /* pool bytes; bytes in used blocks */
    int blocks_total, blocks_used, seqs;
} mlk_kv_stats;
/* Pool occupancy: a block shared by several sequences counts once. */
MLKERN_DEF mlk_status mlk_kv_get_stats(const mlk_kv_cache *c, mlk_kv_stats *st);

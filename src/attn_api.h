/* ======================================================================
   attention
   ====================================================================== */

/* Flash attention, forward and backward, float32, on plain arrays.

   Visibility of key j to query i in batch item b (n_b = kv_len[b] or len_kv,
   off = n_b - len_q: bottom-right alignment as FlashAttention >= 2.1, not
   PyTorch's top-left is_causal):
     - always j < n_b;
     - causal: j <= i + off (decode, len_q = 1, sees every key);
     - tree_parent (replaces causal): the first P = n_b - len_q keys are the
       prefix, the last len_q are the queries' tree nodes; query i sees the
       prefix and the key of each ancestor-or-self; node i sits at position
       P + depth(i);
     - window > 0: with causal or a tree, pos(j) > pos(i) - window;
       without, |pos(j) - pos(i)| < window.
   Score s = scale * q.k, then softcap, then the mask. A row that sees no
   key gets o = 0, lse = -inf and zero gradients. */
typedef enum mlk_layout { MLK_BHND = 0, MLK_BNHD = 1 } mlk_layout;

typedef struct mlk_attn_desc {
    int batch, heads, kv_heads;   /* kv_heads 0 => heads; heads % kv_heads == 0 */
    int len_q, len_kv;            /* len_kv 0 => len_q */
    int head_dim;
    float scale;                  /* 0 => 1/sqrt(head_dim) */
    int causal;                   /* bottom-right aligned */
    int window;                   /* > 0: sliding window, in positions */
    float softcap;                /* > 0: s = softcap * tanh(s / softcap) */
    const int *kv_len;            /* NULL or [batch]: valid keys per item */
    const int *tree_parent;       /* NULL or [len_q]: tree mask */
    mlk_layout layout;            /* of q, k, v, o and their gradients */
    int tile_q, tile_kv;          /* 0 => tuned defaults */
    void *workspace;              /* NULL or mlk_attn_workspace_size(d) bytes */
} mlk_attn_desc;

/* Bytes of scratch mlk_attn_fwd and mlk_attn_bwd need for d at the current
   OpenMP thread count (0 if d is invalid). Pass a buffer that large as
   d->workspace to run without allocating. */
MLKERN_DEF size_t mlk_attn_workspace_size(const mlk_attn_desc *d);
/* o = softmax(mask(scale q k^T)) v, tiled with the online softmax; never
   materialises len_q x len_kv. q, o: [B,Hq,Nq,D] or [B,Nq,Hq,D]; k, v: the
   same with Hkv, Nkv. lse: NULL or [B,Hq,Nq] log-sum-exp of each row. */
MLKERN_DEF mlk_status mlk_attn_fwd(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, float *o, float *lse);
/* Gradients from the forward's o and lse: FlashAttention-2 with
   D = rowsum(dout * o). dk, dv are summed over the query heads of a group.
   Any of dq, dk, dv may be NULL. Deterministic for any thread count. */
MLKERN_DEF mlk_status mlk_attn_bwd(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, const float *o, const float *dout,
    const float *lse, float *dq, float *dk, float *dv);
/* Reference: the same semantics with materialised scores, accumulated in
   double. Slow; for tests and for checking an engine. */
MLKERN_DEF mlk_status mlk_attn_naive(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, float *o, float *lse);

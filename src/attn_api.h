/* ======================================================================
   attention
   ====================================================================== */

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

MLKERN_DEF size_t mlk_attn_workspace_size(const mlk_attn_desc *d);
MLKERN_DEF mlk_status mlk_attn_fwd(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, float *o, float *lse);
MLKERN_DEF mlk_status mlk_attn_bwd(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, const float *o, const float *dout,
    const float *lse, float *dq, float *dk, float *dv);
MLKERN_DEF mlk_status mlk_attn_naive(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, float *o, float *lse);

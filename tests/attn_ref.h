/* attn_ref.h - indexing and tree helpers of the attention tests' double
   references (tests/test_attn.c, test_decode.c, cuda/test_attn*.cu),
   written from mlkern.h's definitions, never from the kernels. Include
   after mlkern.h and mlkt.h. */
#ifndef MLK_ATTN_REF_H
#define MLK_ATTN_REF_H

/* element (b, h, i, 0) of a [B, H, N, D] (BHND) or [B, N, H, D] tensor */
MLKT_FN size_t attn_ref_at(const mlk_attn_desc *d, int heads, int n, int b, int h, int i)
{
    if (d->layout == MLK_BHND) return (((size_t)b * heads + h) * n + i) * d->head_dim;
    return (((size_t)b * n + i) * heads + h) * d->head_dim;
}

/* a tree node's depth: 0 for roots */
MLKT_FN int attn_ref_depth(const int *parent, int i)
{
    int depth = 0;
    for (int x = parent[i]; x >= 0; x = parent[x]) depth++;
    return depth;
}

/* 1 iff node a is node i or one of its ancestors */
MLKT_FN int attn_ref_is_ancestor_or_self(const int *parent, int a, int i)
{
    for (int x = i; x >= 0; x = parent[x])
        if (x == a) return 1;
    return 0;
}

#endif

/* ======================================================================
   tree speculative decoding
   ====================================================================== */

MLKERN_DEF mlk_status mlk_tree_mask(int n, const int *parent, uint8_t *mask);
MLKERN_DEF mlk_status mlk_tree_depth(int n, const int *parent, int *depth);
MLKERN_DEF mlk_status mlk_tree_accept(int n, const int *parent, const int32_t *draft,
    const int32_t *target, int *path, int *n_path, int32_t *bonus);

/* ======================================================================
   attention: implementation
   ====================================================================== */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- streaming interface: the one attention kernel ------------------------

   mlk_attn_fwd and the KV cache's mlk_kv_attn both drive these helpers, so
   masking and the online softmax exist once. To attend nq queries times
   `group` query heads (all sharing one kv head) over keys 0..n_keys-1:

       mlk__attn_mask m;               (visibility of one batch item)
       m.n_keys = n_keys;  m.n_q = n_q_total;  m.causal = 1;  m.window = 0;
       m.tree_parent = parent or NULL; m.tree_depth = depth (filled by
       mlk__attn_tree_depth(n_q_total, parent, depth), which also validates);

       bytes = mlk__attn_rows_scratch(nq * group, head_dim, tile_kv);
       mlk__attn_rows st;
       mlk__attn_rows_init(&st, &m, q0, nq, group, head_dim, tile_kv, scale,
                           softcap, q, q_head_stride, q_query_stride, scratch);
       mlk__attn_key_range(&m, q0, q0 + nq, &lo, &hi);
       for (kv0 = lo; kv0 < hi; kv0 += nk) {
           nk = min(tile_kv, hi - kv0);
           if (mlk__attn_rows_typed(&st)) {      (decode: few rows)
               st.k_row[j] = key kv0 + j, st.v_row[j] likewise (j < nk);
               mlk__attn_rows_update_typed(&st, kv0, nk, type);
           } else {
               mlk__attn_rows_update(&st, kv0, nk, k_rows, ldk, v_rows, ldv);
           }
       }
       mlk__attn_rows_finish(&st, o, o_head_stride, o_query_stride,
                             lse_or_NULL, lse_head_stride, lse_query_stride);

   q points at query q0 of the group's first head; row r of the task is query
   q0 + r / group of head r % group. k_rows / v_rows point at key kv0 (row j
   of the tile at k_rows + j * ldk, any float memory: a dequantised cache
   tile works). Strides are in floats. Typed rows are rows of any
   mlk_kv_type layout (a cache block's rows, read in place). scale is
   applied as given (resolve the 0 default before). scratch: pointer-aligned
   memory of the returned size; nothing is allocated. Rows that see no key
   get o = 0, lse = -inf. */

/* Visibility of keys to the queries of one batch item (DESIGN.md): query i
   sits at position i + off, off = n_keys - n_q (bottom-right alignment). */
typedef struct mlk__attn_mask {
    int n_keys;             /* valid keys: 0 .. n_keys-1 (kv_len of the item) */
    int n_q;                /* queries of the item (all of them, not a tile) */
    int causal;             /* key j visible to query i iff j <= i + off */
    int window;             /* > 0: sliding window in positions */
    const int *tree_parent; /* NULL or [n_q]: replaces causal; key off + t is node t */
    const int *tree_depth;  /* [n_q] when tree_parent is set */
} mlk__attn_mask;

/* Validates parent (parent[i] in [-1, i)) and writes each node's depth
   (roots 0). Returns MLK_ERR_TREE for a bad array. */
static mlk_status mlk__attn_tree_depth(int n, const int *parent, int *depth)
{
    for (int i = 0; i < n; i++)
        if (parent[i] < -1 || parent[i] >= i) return MLK_ERR_TREE;
    for (int i = 0; i < n; i++) depth[i] = parent[i] < 0 ? 0 : depth[parent[i]] + 1;
    return MLK_OK;
}

static int mlk__attn_key_pos(const mlk__attn_mask *m, int j)
{
    int off = m->n_keys - m->n_q;
    return (m->tree_parent && j >= off) ? off + m->tree_depth[j - off] : j;
}

static int mlk__attn_query_pos(const mlk__attn_mask *m, int i)
{
    int off = m->n_keys - m->n_q;
    return m->tree_parent ? off + m->tree_depth[i] : i + off;
}

/* 1 when query i sees key j: the rules of DESIGN.md, one pair at a time. */
static int mlk__attn_visible(const mlk__attn_mask *m, int i, int j)
{
    int off = m->n_keys - m->n_q;
    if (j < 0 || j >= m->n_keys) return 0;
    if (m->tree_parent) {
        if (j >= off) { /* a tree key: visible iff node j - off is an ancestor-or-self */
            int node = i, t = j - off;
            while (node > t) node = m->tree_parent[node];
            if (node != t) return 0;
        }
    } else if (m->causal && j > i + off) {
        return 0;
    }
    if (m->window > 0) {
        int pq = mlk__attn_query_pos(m, i), pk = mlk__attn_key_pos(m, j);
        if (m->causal || m->tree_parent) return pk > pq - m->window;
        return pk - pq < m->window && pq - pk < m->window;
    }
    return 1;
}

/* Keys [*lo, *hi) that contain every key some query in [qa, qb) can see;
   callers skip all tiles outside it (empty when *hi == *lo). */
static void mlk__attn_key_range(const mlk__attn_mask *m, int qa, int qb, int *lo, int *hi)
{
    int off = m->n_keys - m->n_q, l = 0, h = m->n_keys;
    if (m->tree_parent) {
        h = off + qb < h ? off + qb : h;  /* node qb-1's own key is the last one */
        if (m->window > 0) l = off - m->window + 1; /* depth >= 0: conservative */
    } else {
        if (m->causal && qb + off < h) h = qb + off;
        if (m->window > 0) {
            l = qa + off - m->window + 1;
            if (!m->causal && qb - 1 + off + m->window < h) h = qb - 1 + off + m->window;
        }
    }
    if (l < 0) l = 0;
    if (h < l) h = l;
    *lo = l;
    *hi = h;
}

/* 1 when every query in [qa, qb) sees every key in [k0, k1): no masking. */
static int mlk__attn_tile_full(const mlk__attn_mask *m, int qa, int qb, int k0, int k1)
{
    int off = m->n_keys - m->n_q;
    if (k0 < 0 || k1 > m->n_keys) return 0;
    if (m->tree_parent) return k1 <= off && m->window <= 0;
    if (m->causal && k1 - 1 > qa + off) return 0;
    if (m->window > 0) {
        if (k0 <= qb - 1 + off - m->window) return 0;
        if (!m->causal && k1 - 1 >= qa + off + m->window) return 0;
    }
    return 1;
}

/* Sets s[j] = -inf for the keys kv0 + j (j < nk) that query i does not see. */
static void mlk__attn_mask_row(const mlk__attn_mask *m, int i, int kv0, int nk, float *s)
{
    int lo, hi;
    mlk__attn_key_range(m, i, i + 1, &lo, &hi);
    for (int j = 0; j < nk; j++) {
        int key = kv0 + j;
        if (key < lo || key >= hi || (m->tree_parent && !mlk__attn_visible(m, i, key)))
            s[j] = -INFINITY;
    }
}

/* ---- tile matmuls ----
   C[m x n] (+)= A[m x k] B[k x n], row-major, n a multiple of MLK__ATTN_NR
   (B and C padded to it). The micro-kernel keeps an MR x 16 block of C in
   registers (12 accumulators on AVX2) and streams a 16-wide sliver of B. */

#define MLK__ATTN_MR 6
#define MLK__ATTN_NR 16

static int mlk__attn_pad(int n) { return (n + MLK__ATTN_NR - 1) / MLK__ATTN_NR * MLK__ATTN_NR; }

#if defined(MLK__AVX2)
/* Rows past mr (1..6) are neither read nor written. Named accumulators, not
   an array, keep the block in registers; for mr = 6 the guards fold away. */
static inline void mlk__attn_kernel(int mr, int k, const float *a, int lda, const float *b, int ldb,
                                    float *c, int ldc, int accumulate)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a1 = a + lda, *a2 = a1 + lda, *a3 = a2 + lda, *a4 = a3 + lda, *a5 = a4 + lda;
    float *r0 = c, *r1 = c + ldc, *r2 = r1 + ldc, *r3 = r2 + ldc, *r4 = r3 + ldc, *r5 = r4 + ldc;
    if (accumulate) {
        c00 = _mm256_loadu_ps(r0), c01 = _mm256_loadu_ps(r0 + 8);
        if (mr > 1) c10 = _mm256_loadu_ps(r1), c11 = _mm256_loadu_ps(r1 + 8);
        if (mr > 2) c20 = _mm256_loadu_ps(r2), c21 = _mm256_loadu_ps(r2 + 8);
        if (mr > 3) c30 = _mm256_loadu_ps(r3), c31 = _mm256_loadu_ps(r3 + 8);
        if (mr > 4) c40 = _mm256_loadu_ps(r4), c41 = _mm256_loadu_ps(r4 + 8);
        if (mr > 5) c50 = _mm256_loadu_ps(r5), c51 = _mm256_loadu_ps(r5 + 8);
    }
    for (int p = 0; p < k; p++, b += ldb) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), ar;
        ar = _mm256_broadcast_ss(a0 + p), c00 = _mm256_fmadd_ps(ar, b0, c00), c01 = _mm256_fmadd_ps(ar, b1, c01);
        if (mr > 1) ar = _mm256_broadcast_ss(a1 + p), c10 = _mm256_fmadd_ps(ar, b0, c10), c11 = _mm256_fmadd_ps(ar, b1, c11);
        if (mr > 2) ar = _mm256_broadcast_ss(a2 + p), c20 = _mm256_fmadd_ps(ar, b0, c20), c21 = _mm256_fmadd_ps(ar, b1, c21);
        if (mr > 3) ar = _mm256_broadcast_ss(a3 + p), c30 = _mm256_fmadd_ps(ar, b0, c30), c31 = _mm256_fmadd_ps(ar, b1, c31);
        if (mr > 4) ar = _mm256_broadcast_ss(a4 + p), c40 = _mm256_fmadd_ps(ar, b0, c40), c41 = _mm256_fmadd_ps(ar, b1, c41);
        if (mr > 5) ar = _mm256_broadcast_ss(a5 + p), c50 = _mm256_fmadd_ps(ar, b0, c50), c51 = _mm256_fmadd_ps(ar, b1, c51);
    }
    _mm256_storeu_ps(r0, c00), _mm256_storeu_ps(r0 + 8, c01);
    if (mr > 1) _mm256_storeu_ps(r1, c10), _mm256_storeu_ps(r1 + 8, c11);
    if (mr > 2) _mm256_storeu_ps(r2, c20), _mm256_storeu_ps(r2 + 8, c21);
    if (mr > 3) _mm256_storeu_ps(r3, c30), _mm256_storeu_ps(r3 + 8, c31);
    if (mr > 4) _mm256_storeu_ps(r4, c40), _mm256_storeu_ps(r4 + 8, c41);
    if (mr > 5) _mm256_storeu_ps(r5, c50), _mm256_storeu_ps(r5 + 8, c51);
}
#else
static void mlk__attn_kernel(int mr, int k, const float *a, int lda, const float *b, int ldb,
                             float *c, int ldc, int accumulate)
{
    float acc[MLK__ATTN_MR][MLK__ATTN_NR];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < MLK__ATTN_NR; j++) acc[r][j] = accumulate ? c[(size_t)r * ldc + j] : 0.0f;
    for (int p = 0; p < k; p++)
        for (int r = 0; r < mr; r++) {
            float ar = a[(size_t)r * lda + p];
            for (int j = 0; j < MLK__ATTN_NR; j++) acc[r][j] += ar * b[(size_t)p * ldb + j];
        }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < MLK__ATTN_NR; j++) c[(size_t)r * ldc + j] = acc[r][j];
}
#endif

static void mlk__attn_mm(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                         float *c, int ldc, int accumulate)
{
    for (int j = 0; j < n; j += MLK__ATTN_NR) {
        int i = 0;
        for (; i + MLK__ATTN_MR <= m; i += MLK__ATTN_MR)
            mlk__attn_kernel(MLK__ATTN_MR, k, a + (size_t)i * lda, lda, b + j, ldb,
                             c + (size_t)i * ldc + j, ldc, accumulate);
        if (i < m) /* the last m % 6 rows (all of a 4-row decode group) in one pass */
            mlk__attn_kernel(m - i, k, a + (size_t)i * lda, lda, b + j, ldb, c + (size_t)i * ldc + j, ldc,
                             accumulate);
    }
}

#if defined(MLK__AVX2)
/* One 8 x 8 block of mlk__attn_transpose in registers. */
static void mlk__attn_transpose8(const float *src, size_t ld_src, float *dst, int ld_dst)
{
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld_src), r2 = _mm256_loadu_ps(src + 2 * ld_src);
    __m256 r3 = _mm256_loadu_ps(src + 3 * ld_src), r4 = _mm256_loadu_ps(src + 4 * ld_src);
    __m256 r5 = _mm256_loadu_ps(src + 5 * ld_src), r6 = _mm256_loadu_ps(src + 6 * ld_src);
    __m256 r7 = _mm256_loadu_ps(src + 7 * ld_src);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3);
    __m256 t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ld_dst, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ld_dst, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ld_dst, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ld_dst, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ld_dst, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ld_dst, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ld_dst, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

/* dst[d * ld_dst + j] = src[j * ld_src + d]: rows x cols -> cols x rows. */
static void mlk__attn_transpose(int rows, int cols, const float *src, size_t ld_src, float *dst, int ld_dst)
{
    for (int j0 = 0; j0 < rows; j0 += 8) {
        int d0 = 0;
#if defined(MLK__AVX2)
        for (; j0 + 8 <= rows && d0 + 8 <= cols; d0 += 8)
            mlk__attn_transpose8(src + (size_t)j0 * ld_src + d0, ld_src, dst + (size_t)d0 * ld_dst + j0, ld_dst);
#endif
        for (int d = d0; d < cols; d++)
            for (int j = j0; j < j0 + 8 && j < rows; j++) dst[(size_t)d * ld_dst + j] = src[(size_t)j * ld_src + d];
    }
}

/* dst row j = src row j (cols floats), zero-padded to ld_dst. */
static void mlk__attn_copy_rows(int rows, int cols, const float *src, size_t ld_src, float *dst, int ld_dst)
{
    for (int j = 0; j < rows; j++) {
        memcpy(dst + (size_t)j * ld_dst, src + (size_t)j * ld_src, (size_t)cols * sizeof(float));
        memset(dst + (size_t)j * ld_dst + cols, 0, (size_t)(ld_dst - cols) * sizeof(float));
    }
}

/* ---- typed key/value rows: the decode path ----
   With a handful of query rows per task (decode: the GQA group of one
   token) attention is bound by reading K and V, so the rows are consumed
   where they lie, in any mlk_kv_type layout, instead of being written to a
   float tile and read back. F32/F16 rows hold the values; Q8/Q4 rows hold
   ceil(D / 32) float scales, then int8 values or 4-bit values biased by 8
   (element e in byte e / 2, low nibble first). */

#define MLK__ATTN_QBLOCK 32 /* quantisation block along head_dim */
#define MLK__ATTN_GROUP_ROWS 4 /* query rows sharing each K/V row load */
#define MLK__ATTN_PREFETCH 8    /* key rows between a prefetch and its use */

static int mlk__attn_qblocks(int dim) { return dim / MLK__ATTN_QBLOCK + (dim % MLK__ATTN_QBLOCK != 0); }

/* Bytes of one row of dim values stored as type. */
static size_t mlk__attn_row_bytes(mlk_kv_type type, int dim)
{
    size_t nb = (size_t)mlk__attn_qblocks(dim), n = (size_t)dim;
    switch (type) {
    case MLK_KV_F32: return 4 * n;
    case MLK_KV_F16: return 2 * n;
    case MLK_KV_Q8: return 4 * nb + (n + 3) / 4 * 4;
    case MLK_KV_Q4: return 4 * nb + ((n + 1) / 2 + 3) / 4 * 4;
    }
    return 0;
}

static float mlk__attn_f32_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    float f;
    if (e == 0) {
        f = (float)m * 5.9604644775390625e-08f; /* m * 2^-24 */
        return sign ? -f : f;
    }
    x = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    memcpy(&f, &x, 4);
    return f;
}

/* Element e of a row of dim values stored as type. */
static float mlk__attn_row_get(mlk_kv_type type, int dim, const unsigned char *row, int e)
{
    const unsigned char *data = row + 4 * (size_t)mlk__attn_qblocks(dim);
    float scale, x;
    uint16_t h;
    if (type == MLK_KV_F32) {
        memcpy(&x, row + 4 * (size_t)e, 4);
        return x;
    }
    if (type == MLK_KV_F16) {
        memcpy(&h, row + 2 * (size_t)e, 2);
        return mlk__attn_f32_from_f16(h);
    }
    memcpy(&scale, row + 4 * (size_t)(e / MLK__ATTN_QBLOCK), 4);
    if (type == MLK_KV_Q8) return scale * (float)(signed char)data[e];
    return scale * (float)(((data[e >> 1] >> ((e & 1) * 4)) & 15) - 8);
}

#if defined(MLK__AVX2)
/* Elements e .. e+15 of a row (e a multiple of 16, e + 16 <= dim) in two
   registers; data points past the nb scales of a quantised row (16
   elements never straddle two 32-blocks). Inlined with a constant type, the
   switch folds away. */
static inline void mlk__attn_row_load16(mlk_kv_type type, const unsigned char *row, const unsigned char *data, int e,
                                        __m256 *lo8, __m256 *hi8)
{
    __m256 scale;
    __m128i bytes, lo, hi;
    switch (type) {
    case MLK_KV_F16:
#if defined(__F16C__)
        *lo8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * (size_t)e)));
        *hi8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * (size_t)e + 16)));
#else
    {
        float x[16];
        for (int i = 0; i < 16; i++) {
            uint16_t h;
            memcpy(&h, row + 2 * (size_t)(e + i), 2);
            x[i] = mlk__attn_f32_from_f16(h);
        }
        *lo8 = _mm256_loadu_ps(x);
        *hi8 = _mm256_loadu_ps(x + 8);
    }
#endif
        return;
    case MLK_KV_Q8: /* two 8-byte loads fold into the sign extensions */
        scale = _mm256_broadcast_ss((const float *)(const void *)row + e / MLK__ATTN_QBLOCK);
        *lo8 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(data + e))));
        *hi8 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(data + e + 8))));
        *lo8 = _mm256_mul_ps(*lo8, scale);
        *hi8 = _mm256_mul_ps(*hi8, scale);
        return;
    case MLK_KV_Q4: /* 8 bytes -> 16 nibbles in element order, minus the bias */
        scale = _mm256_broadcast_ss((const float *)(const void *)row + e / MLK__ATTN_QBLOCK);
        bytes = _mm_loadl_epi64((const __m128i *)(const void *)(data + e / 2));
        lo = _mm_and_si128(bytes, _mm_set1_epi8(15));
        hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(15));
        bytes = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), _mm_set1_epi8(8));
        break;
    default:
        *lo8 = _mm256_loadu_ps((const float *)(const void *)row + e);
        *hi8 = _mm256_loadu_ps((const float *)(const void *)row + e + 8);
        return;
    }
    *lo8 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), scale);
    *hi8 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8))), scale);
}

/* Clears the upper register halves before a scalar tail: gcc omits the
   vzeroupper before calls to local functions (mlk__attn_row_get), and the
   dirty state then slows every legacy-SSE instruction after the return
   (libm's exp: 6x on this machine). */
static inline void mlk__attn_avx_done(void) { _mm256_zeroupper(); }

/* Asks for a row's cache lines ahead of use: cache rows come in short runs
   (one block's positions), too short for the hardware prefetcher to ramp up. */
static inline void mlk__attn_prefetch_row(const unsigned char *row, int lines)
{
    for (int i = 0; i < lines; i++) _mm_prefetch((const char *)row + 64 * i, _MM_HINT_T0);
}
#endif

/* x[e] = element e of a typed row, e < dim. */
static void mlk__attn_row_decode(mlk_kv_type type, int dim, const unsigned char *row, float *x)
{
    int e = 0;
#if defined(MLK__AVX2)
    const unsigned char *data = row + 4 * (size_t)mlk__attn_qblocks(dim);
    for (; e + 16 <= dim; e += 16) {
        __m256 lo8, hi8;
        mlk__attn_row_load16(type, row, data, e, &lo8, &hi8);
        _mm256_storeu_ps(x + e, lo8);
        _mm256_storeu_ps(x + e + 8, hi8);
    }
    if (e < dim) mlk__attn_avx_done();
#endif
    for (; e < dim; e++) x[e] = mlk__attn_row_get(type, dim, row, e);
}

/* s[r][j] = q[r] . k_row[j] for the 4 rows q[0..3] (the caller repeats its
   last row to fill 4; repeated rows compute and store identical values).
   Keys go in pairs so 8 independent FMA chains hide the FMA latency, and
   the 8 dot products are reduced together by two rounds of hadd. Meanwhile
   the keys MLK__ATTN_PREFETCH ahead and the values of the P V pass that
   follows are prefetched. */
static inline void mlk__attn_dot_group(mlk_kv_type type, int dim, int nk, const unsigned char *const *k_row,
                                       const unsigned char *const *v_row, const float *const *q, float *const *s)
{
    int nb = mlk__attn_qblocks(dim), vec_end = 0;
#if defined(MLK__AVX2)
    int lines = (int)((mlk__attn_row_bytes(type, dim) + 63) / 64);
    vec_end = dim / 16 * 16;
#else
    (void)v_row;
#endif
    (void)nb;
    for (int j = 0; j < nk; j += 2) {
        int j1 = j + 1 < nk ? j + 1 : j;
        const unsigned char *ka = k_row[j], *kb = k_row[j1];
        float dot[8]; /* dot[2 r] = q[r] . ka, dot[2 r + 1] = q[r] . kb */
#if defined(MLK__AVX2)
        const unsigned char *da = ka + 4 * (size_t)nb, *db = kb + 4 * (size_t)nb;
        __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
        __m256 h0, h1, h2, h3;
        int ahead = j + MLK__ATTN_PREFETCH < nk ? j + MLK__ATTN_PREFETCH : nk - 1;
        mlk__attn_prefetch_row(k_row[ahead], lines);
        mlk__attn_prefetch_row(k_row[ahead + 1 < nk ? ahead + 1 : ahead], lines);
        mlk__attn_prefetch_row(v_row[j], lines);
        mlk__attn_prefetch_row(v_row[j1], lines);
        for (int e = 0; e < vec_end; e += 16) {
            __m256 xa, xb, ya, yb, qe;
            mlk__attn_row_load16(type, ka, da, e, &xa, &xb);
            mlk__attn_row_load16(type, kb, db, e, &ya, &yb);
            qe = _mm256_loadu_ps(q[0] + e), a0 = _mm256_fmadd_ps(qe, xa, a0), b0 = _mm256_fmadd_ps(qe, ya, b0);
            qe = _mm256_loadu_ps(q[1] + e), a1 = _mm256_fmadd_ps(qe, xa, a1), b1 = _mm256_fmadd_ps(qe, ya, b1);
            qe = _mm256_loadu_ps(q[2] + e), a2 = _mm256_fmadd_ps(qe, xa, a2), b2 = _mm256_fmadd_ps(qe, ya, b2);
            qe = _mm256_loadu_ps(q[3] + e), a3 = _mm256_fmadd_ps(qe, xa, a3), b3 = _mm256_fmadd_ps(qe, ya, b3);
            qe = _mm256_loadu_ps(q[0] + e + 8), a0 = _mm256_fmadd_ps(qe, xb, a0), b0 = _mm256_fmadd_ps(qe, yb, b0);
            qe = _mm256_loadu_ps(q[1] + e + 8), a1 = _mm256_fmadd_ps(qe, xb, a1), b1 = _mm256_fmadd_ps(qe, yb, b1);
            qe = _mm256_loadu_ps(q[2] + e + 8), a2 = _mm256_fmadd_ps(qe, xb, a2), b2 = _mm256_fmadd_ps(qe, yb, b2);
            qe = _mm256_loadu_ps(q[3] + e + 8), a3 = _mm256_fmadd_ps(qe, xb, a3), b3 = _mm256_fmadd_ps(qe, yb, b3);
        }
        h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, b0), _mm256_hadd_ps(a1, b1)); /* rows 0, 1 by 128-bit half */
        h1 = _mm256_hadd_ps(_mm256_hadd_ps(a2, b2), _mm256_hadd_ps(a3, b3));
        h2 = _mm256_castps128_ps256(_mm_add_ps(_mm256_castps256_ps128(h0), _mm256_extractf128_ps(h0, 1)));
        h3 = _mm256_castps128_ps256(_mm_add_ps(_mm256_castps256_ps128(h1), _mm256_extractf128_ps(h1, 1)));
        _mm256_storeu_ps(dot, _mm256_insertf128_ps(h2, _mm256_castps256_ps128(h3), 1));
        if (vec_end < dim) mlk__attn_avx_done();
#else
        for (int i = 0; i < 8; i++) dot[i] = 0.0f;
#endif
        for (int e = vec_end; e < dim; e++) {
            float xa = mlk__attn_row_get(type, dim, ka, e), xb = mlk__attn_row_get(type, dim, kb, e);
            for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) {
                dot[2 * r] += q[r][e] * xa;
                dot[2 * r + 1] += q[r][e] * xb;
            }
        }
        for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) {
            s[r][j] = dot[2 * r];
            if (j + 1 < nk) s[r][j + 1] = dot[2 * r + 1];
        }
    }
}

/* acc[r] += sum_j p[r][j] v_row[j] for the first n_rows <= 4 of the rows
   (p and acc repeat the last real row to fill 4). 16 columns at a time:
   8 accumulators stay in registers across the key loop. */
static inline void mlk__attn_pv_group(mlk_kv_type type, int dim, int nk, const unsigned char *const *v_row,
                                      int n_rows, const float *const *p, float *const *acc)
{
    int nb = mlk__attn_qblocks(dim), e0 = 0;
    (void)nb;
#if defined(MLK__AVX2)
    for (; e0 + 16 <= dim; e0 += 16) {
        __m256 a0 = _mm256_loadu_ps(acc[0] + e0), b0 = _mm256_loadu_ps(acc[0] + e0 + 8);
        __m256 a1 = _mm256_loadu_ps(acc[1] + e0), b1 = _mm256_loadu_ps(acc[1] + e0 + 8);
        __m256 a2 = _mm256_loadu_ps(acc[2] + e0), b2 = _mm256_loadu_ps(acc[2] + e0 + 8);
        __m256 a3 = _mm256_loadu_ps(acc[3] + e0), b3 = _mm256_loadu_ps(acc[3] + e0 + 8);
        for (int j = 0; j < nk; j++) {
            const unsigned char *vj = v_row[j];
            __m256 x, y, pr;
            mlk__attn_row_load16(type, vj, vj + 4 * (size_t)nb, e0, &x, &y);
            pr = _mm256_broadcast_ss(p[0] + j), a0 = _mm256_fmadd_ps(pr, x, a0), b0 = _mm256_fmadd_ps(pr, y, b0);
            pr = _mm256_broadcast_ss(p[1] + j), a1 = _mm256_fmadd_ps(pr, x, a1), b1 = _mm256_fmadd_ps(pr, y, b1);
            pr = _mm256_broadcast_ss(p[2] + j), a2 = _mm256_fmadd_ps(pr, x, a2), b2 = _mm256_fmadd_ps(pr, y, b2);
            pr = _mm256_broadcast_ss(p[3] + j), a3 = _mm256_fmadd_ps(pr, x, a3), b3 = _mm256_fmadd_ps(pr, y, b3);
        }
        _mm256_storeu_ps(acc[0] + e0, a0), _mm256_storeu_ps(acc[0] + e0 + 8, b0);
        _mm256_storeu_ps(acc[1] + e0, a1), _mm256_storeu_ps(acc[1] + e0 + 8, b1);
        _mm256_storeu_ps(acc[2] + e0, a2), _mm256_storeu_ps(acc[2] + e0 + 8, b2);
        _mm256_storeu_ps(acc[3] + e0, a3), _mm256_storeu_ps(acc[3] + e0 + 8, b3);
    }
    if (e0 < dim) mlk__attn_avx_done();
#endif
    for (int j = 0; j < nk; j++)
        for (int e = e0; e < dim; e++) {
            float x = mlk__attn_row_get(type, dim, v_row[j], e);
            for (int r = 0; r < n_rows; r++) acc[r][e] += p[r][j] * x;
        }
}

/* ---- row-wise vector helpers of the softmax ---- */

static float mlk__attn_row_max(const float *s, int n)
{
    float m = -INFINITY;
    int j = 0;
#if defined(MLK__AVX2)
    __m256 vm = _mm256_set1_ps(-INFINITY);
    float lanes[8];
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
    _mm256_storeu_ps(lanes, vm);
    for (int l = 0; l < 8; l++) m = lanes[l] > m ? lanes[l] : m;
#endif
    for (; j < n; j++) m = s[j] > m ? s[j] : m;
    return m;
}

/* s[j] = exp(s[j] - shift) for j < n (shift finite); returns the sum. */
static float mlk__attn_exp_sum(float *s, int n, float shift)
{
    float sum = 0.0f;
    int j = 0;
#if defined(MLK__AVX2)
    __m256 vshift = _mm256_set1_ps(shift), vsum = _mm256_setzero_ps();
    float lanes[8];
    for (; j + 8 <= n; j += 8) {
        __m256 e = mlk__exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vshift));
        _mm256_storeu_ps(s + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    _mm256_storeu_ps(lanes, vsum);
    for (int l = 0; l < 8; l++) sum += lanes[l];
#endif
    for (; j < n; j++) {
        s[j] = mlk__expf(s[j] - shift);
        sum += s[j];
    }
    return sum;
}

static void mlk__attn_scale_row(float *x, int n, float f)
{
    for (int j = 0; j < n; j++) x[j] *= f;
}

/* softcap: s = cap * tanh(s / cap) */
static void mlk__attn_softcap_row(float *s, int n, float cap)
{
    for (int j = 0; j < n; j++) s[j] = cap * tanhf(s[j] / cap);
}

/* ---- per-task state of the forward pass ---- */

typedef struct mlk__attn_rows {
    const mlk__attn_mask *mask;
    int q0, n_q, group, n_rows, head_dim, dpad, kv_pad;
    float softcap;
    const unsigned char **k_row, **v_row; /* [kv_pad] typed rows of the tile (decode path) */
    float *q_pack;  /* [n_rows][dpad] scale * q */
    float *acc;     /* [n_rows][dpad] unnormalised output */
    float *scores;  /* [n_rows][kv_pad] scores, then probabilities */
    float *k_t;     /* [head_dim][kv_pad] key tile, transposed */
    float *v_pack;  /* [kv_pad][dpad] value tile */
    float *row_max, *l_sum; /* [n_rows] */
} mlk__attn_rows;

static size_t mlk__attn_rows_scratch(int n_rows, int head_dim, int tile_kv)
{
    size_t dp = (size_t)mlk__attn_pad(head_dim), kp = (size_t)mlk__attn_pad(tile_kv), r = (size_t)n_rows;
    return 2 * kp * sizeof(const unsigned char *) +
           (2 * r * dp + r * kp + (size_t)head_dim * kp + kp * dp + 2 * r) * sizeof(float);
}

/* 1 when the task takes its tiles as typed rows (mlk__attn_rows_update_typed):
   fewer rows than the tile micro-kernel's height, so reading K and V
   dominates and packing them would cost as much as the products. */
static int mlk__attn_rows_typed(const mlk__attn_rows *st) { return st->n_rows < MLK__ATTN_MR; }

static void mlk__attn_rows_init(mlk__attn_rows *st, const mlk__attn_mask *mask, int q0, int n_q, int group,
                                int head_dim, int tile_kv, float scale, float softcap, const float *q,
                                size_t q_head, size_t q_tok, void *scratch)
{
    float *f;
    st->mask = mask;
    st->q0 = q0;
    st->n_q = n_q;
    st->group = group;
    st->n_rows = n_q * group;
    st->head_dim = head_dim;
    st->dpad = mlk__attn_pad(head_dim);
    st->kv_pad = mlk__attn_pad(tile_kv);
    st->softcap = softcap;
    st->k_row = (const unsigned char **)scratch;
    st->v_row = st->k_row + st->kv_pad;
    f = (float *)(void *)(st->v_row + st->kv_pad);
    st->q_pack = f;
    st->acc = st->q_pack + (size_t)st->n_rows * st->dpad;
    st->scores = st->acc + (size_t)st->n_rows * st->dpad;
    st->k_t = st->scores + (size_t)st->n_rows * st->kv_pad;
    st->v_pack = st->k_t + (size_t)head_dim * st->kv_pad;
    st->row_max = st->v_pack + (size_t)st->kv_pad * st->dpad;
    st->l_sum = st->row_max + st->n_rows;
    for (int r = 0; r < st->n_rows; r++) {
        const float *qr = q + (size_t)(r / group) * q_tok + (size_t)(r % group) * q_head;
        float *dst = st->q_pack + (size_t)r * st->dpad;
        for (int d = 0; d < head_dim; d++) dst[d] = scale * qr[d];
        memset(dst + head_dim, 0, (size_t)(st->dpad - head_dim) * sizeof(float));
        memset(st->acc + (size_t)r * st->dpad, 0, (size_t)st->dpad * sizeof(float));
        st->row_max[r] = -INFINITY;
        st->l_sum[r] = 0.0f;
    }
}

/* The online softmax on the scores of keys kv0 .. kv0+nk-1: mask,
   m_new = max(m, rowmax S), p = exp(S - m_new), l = l exp(m - m_new) + sum p,
   acc *= exp(m - m_new). A row whose running max is still -inf (no visible
   key yet) gets p = 0, so exp(-inf - -inf) never occurs. */
static void mlk__attn_rows_softmax(mlk__attn_rows *st, int kv0, int nk)
{
    const mlk__attn_mask *m = st->mask;
    int full = mlk__attn_tile_full(m, st->q0, st->q0 + st->n_q, kv0, kv0 + nk);
    for (int r = 0; r < st->n_rows; r++) {
        float *s = st->scores + (size_t)r * st->kv_pad, m_new, alpha;
        if (st->softcap > 0) mlk__attn_softcap_row(s, nk, st->softcap);
        if (!full) mlk__attn_mask_row(m, st->q0 + r / st->group, kv0, nk, s);
        m_new = mlk__attn_row_max(s, nk);
        if (m_new < st->row_max[r]) m_new = st->row_max[r];
        if (m_new == -INFINITY) { /* nothing visible yet: p = 0 */
            memset(s, 0, (size_t)nk * sizeof(float));
            continue;
        }
        alpha = st->row_max[r] == -INFINITY ? 0.0f : mlk__expf(st->row_max[r] - m_new);
        st->l_sum[r] = st->l_sum[r] * alpha + mlk__attn_exp_sum(s, nk, m_new);
        st->row_max[r] = m_new;
        if (alpha != 1.0f) mlk__attn_scale_row(st->acc + (size_t)r * st->dpad, st->dpad, alpha);
    }
}

/* Folds keys kv0 .. kv0+nk-1 (nk <= tile_kv), given as float rows, into
   every row through packed tiles: S = Q K^T, softmax, acc += P V. */
static void mlk__attn_rows_update(mlk__attn_rows *st, int kv0, int nk, const float *k, size_t ldk,
                                  const float *v, size_t ldv)
{
    mlk__attn_copy_rows(nk, st->head_dim, v, ldv, st->v_pack, st->dpad);
    mlk__attn_transpose(nk, st->head_dim, k, ldk, st->k_t, st->kv_pad);
    mlk__attn_mm(st->n_rows, mlk__attn_pad(nk), st->head_dim, st->q_pack, st->dpad, st->k_t, st->kv_pad, st->scores,
                 st->kv_pad, 0);
    mlk__attn_rows_softmax(st, kv0, nk);
    mlk__attn_mm(st->n_rows, st->dpad, nk, st->scores, st->kv_pad, st->v_pack, st->dpad, st->acc, st->dpad, 1);
}

/* One group of up to 4 rows of a typed tile: scores, then (after the
   caller's softmax) acc += P V. Split by phase; called with a constant type
   so the row loads inline to straight-line code. */
static void mlk__attn_typed_phase(mlk_kv_type type, int pv, const mlk__attn_rows *st, int nk, int r0)
{
    const float *q[MLK__ATTN_GROUP_ROWS], *p[MLK__ATTN_GROUP_ROWS];
    float *s[MLK__ATTN_GROUP_ROWS], *acc[MLK__ATTN_GROUP_ROWS];
    int n = st->n_rows - r0 < MLK__ATTN_GROUP_ROWS ? st->n_rows - r0 : MLK__ATTN_GROUP_ROWS;
    for (int i = 0; i < MLK__ATTN_GROUP_ROWS; i++) { /* short groups repeat their last row */
        size_t r = (size_t)(r0 + (i < n ? i : n - 1));
        q[i] = st->q_pack + r * st->dpad;
        s[i] = st->scores + r * st->kv_pad;
        p[i] = s[i];
        acc[i] = st->acc + r * st->dpad;
    }
    if (pv)
        mlk__attn_pv_group(type, st->head_dim, nk, st->v_row, n, p, acc);
    else
        mlk__attn_dot_group(type, st->head_dim, nk, st->k_row, st->v_row, q, s);
}

static void mlk__attn_typed_pass(mlk_kv_type type, int pv, const mlk__attn_rows *st, int nk)
{
    for (int r0 = 0; r0 < st->n_rows; r0 += MLK__ATTN_GROUP_ROWS) switch (type) {
        case MLK_KV_F32: mlk__attn_typed_phase(MLK_KV_F32, pv, st, nk, r0); break;
        case MLK_KV_F16: mlk__attn_typed_phase(MLK_KV_F16, pv, st, nk, r0); break;
        case MLK_KV_Q8: mlk__attn_typed_phase(MLK_KV_Q8, pv, st, nk, r0); break;
        case MLK_KV_Q4: mlk__attn_typed_phase(MLK_KV_Q4, pv, st, nk, r0); break;
        }
}

/* The decode form of mlk__attn_rows_update (when mlk__attn_rows_typed):
   keys kv0 .. kv0+nk-1 are the rows st->k_row[j] / st->v_row[j], which the
   caller fills, stored as type; each is read once per group of 4 rows and
   never copied. */
static void mlk__attn_rows_update_typed(mlk__attn_rows *st, int kv0, int nk, mlk_kv_type type)
{
    mlk__attn_typed_pass(type, 0, st, nk);
    mlk__attn_rows_softmax(st, kv0, nk);
    mlk__attn_typed_pass(type, 1, st, nk);
}

/* o = acc / l (0 for rows that saw nothing); lse = m + log(l) or -inf. */
static void mlk__attn_rows_finish(const mlk__attn_rows *st, float *o, size_t o_head, size_t o_tok, float *lse,
                                  size_t lse_head, size_t lse_tok)
{
    for (int r = 0; r < st->n_rows; r++) {
        size_t qi = (size_t)(r / st->group), h = (size_t)(r % st->group);
        float *orow = o + qi * o_tok + h * o_head, l = st->l_sum[r];
        const float *a = st->acc + (size_t)r * st->dpad;
        float inv = l > 0 ? 1.0f / l : 0.0f;
        for (int d = 0; d < st->head_dim; d++) orow[d] = a[d] * inv;
        if (lse) lse[qi * lse_tok + h * lse_head] = l > 0 ? st->row_max[r] + logf(l) : -INFINITY;
    }
}

/* ---- descriptor ---- */

/* A validated descriptor with defaults resolved and element strides. */
typedef struct mlk__attn_geom {
    int batch, heads, kv_heads, group, len_q, len_kv, head_dim;
    int tile_q, tile_kv, bwd_tile_kv, n_q_tiles;
    float scale, softcap;
    size_t q_batch, q_head, q_tok, kv_batch, kv_head, kv_tok;
    size_t fwd_thread_bytes, bwd_thread_bytes; /* scratch of one task */
    size_t fwd_cap, bwd_cap;                   /* arena bytes of each pass */
} mlk__attn_geom;

static int mlk__attn_item_len(const mlk_attn_desc *d, const mlk__attn_geom *g, int b)
{
    return d->kv_len ? d->kv_len[b] : g->len_kv;
}

static void mlk__attn_item_mask(const mlk_attn_desc *d, const mlk__attn_geom *g, int b, const int *depth,
                                mlk__attn_mask *m)
{
    m->n_keys = mlk__attn_item_len(d, g, b);
    m->n_q = g->len_q;
    m->causal = d->causal != 0;
    m->window = d->window;
    m->tree_parent = d->tree_parent;
    m->tree_depth = depth;
}


/* Checks everything that does not need the tree depths and fills g. */
static mlk_status mlk__attn_geom_init(const mlk_attn_desc *d, mlk__attn_geom *g)
{
    size_t nq_el, nkv_el, rows, dp, kp, t, threads = (size_t)mlk__max_threads();
    if (!d) return MLK_ERR_NULL;
    g->batch = d->batch;
    g->heads = d->heads;
    g->kv_heads = d->kv_heads ? d->kv_heads : d->heads;
    g->len_q = d->len_q;
    g->len_kv = d->len_kv ? d->len_kv : d->len_q;
    g->head_dim = d->head_dim;
    if (g->batch < 1 || g->heads < 1 || g->kv_heads < 1 || g->len_q < 1 || g->len_kv < 1 || g->head_dim < 1 ||
        d->len_kv < 0 || d->kv_heads < 0 || d->tile_q < 0 || d->tile_kv < 0 || g->heads % g->kv_heads != 0)
        return MLK_ERR_SHAPE;
    if (!(d->scale == d->scale) || !(fabsf(d->scale) <= FLT_MAX) || !(d->softcap >= 0) ||
        !(d->softcap <= FLT_MAX) || d->window < 0 || (d->layout != MLK_BHND && d->layout != MLK_BNHD))
        return MLK_ERR_ARG;
    if (!mlk__count4(g->batch, g->heads, g->len_q, g->head_dim, sizeof(float), &nq_el) ||
        !mlk__count4(g->batch, g->kv_heads, g->len_kv, g->head_dim, sizeof(float), &nkv_el) ||
        g->head_dim > INT_MAX - MLK__ATTN_NR)
        return MLK_ERR_OVERFLOW;
    g->group = g->heads / g->kv_heads;
    g->scale = d->scale != 0 ? d->scale : 1.0f / sqrtf((float)g->head_dim);
    g->softcap = d->softcap;
    /* default tiles: about 64 rows (queries x grouped heads) by 128 keys */
    g->tile_q = d->tile_q ? d->tile_q : (g->group >= 64 ? 1 : 64 / g->group);
    g->tile_kv = d->tile_kv ? d->tile_kv : 128;
    /* the backward keeps ~5 tiles of kv rows live (K, V both ways, dK, dV):
       64 keys keep them in L2 and its workspace under 1% of N x N at N = 4096 */
    g->bwd_tile_kv = d->tile_kv ? d->tile_kv : 64;
    if (g->bwd_tile_kv > g->len_kv) g->bwd_tile_kv = g->len_kv;
    if (g->tile_q > g->len_q) g->tile_q = g->len_q;
    if (g->tile_kv > g->len_kv) g->tile_kv = g->len_kv;
    if ((size_t)g->tile_q * (size_t)g->group > (size_t)INT_MAX / 64) return MLK_ERR_OVERFLOW;
    g->n_q_tiles = (g->len_q + g->tile_q - 1) / g->tile_q;
    if (d->layout == MLK_BHND) {
        g->q_head = (size_t)g->len_q * g->head_dim;
        g->q_tok = (size_t)g->head_dim;
        g->kv_head = (size_t)g->len_kv * g->head_dim;
        g->kv_tok = (size_t)g->head_dim;
    } else {
        g->q_head = (size_t)g->head_dim;
        g->q_tok = (size_t)g->heads * g->head_dim;
        g->kv_head = (size_t)g->head_dim;
        g->kv_tok = (size_t)g->kv_heads * g->head_dim;
    }
    g->q_batch = (size_t)g->heads * g->len_q * g->head_dim;
    g->kv_batch = (size_t)g->kv_heads * g->len_kv * g->head_dim;
    rows = (size_t)g->tile_q * g->group;
    dp = (size_t)mlk__attn_pad(g->head_dim);
    g->fwd_thread_bytes = mlk__attn_rows_scratch((int)rows, g->head_dim, g->tile_kv);
    kp = (size_t)mlk__attn_pad(g->bwd_tile_kv);
    /* backward: k_t, v_t [D][kp]; k_pack, dk_acc, dv_acc [kp][dp]; q, dout,
       dq tile [rows][dp]; p, ds [rows][kp]; p^T [kp][rows]; lse, D [rows] */
    t = 2 * (size_t)g->head_dim * kp + 3 * kp * dp + 3 * rows * dp + 3 * rows * kp + 2 * rows;
    g->bwd_thread_bytes = t * sizeof(float);
    /* arena caps: tree depths [Nq] ints, then (backward) D = rowsum(dO o O)
       [B, Hq, Nq] floats, then one slab per thread */
    g->fwd_cap = mlk__arena_need(0, (size_t)g->len_q * sizeof(int));
    g->bwd_cap = mlk__arena_need(g->fwd_cap, nq_el / (size_t)g->head_dim * sizeof(float));
    if (!mlk__mul_ok(threads, mlk__arena_need(0, g->fwd_thread_bytes), &t)) return MLK_ERR_OVERFLOW;
    g->fwd_cap = mlk__arena_need(g->fwd_cap, t);
    if (!mlk__mul_ok(threads, mlk__arena_need(0, g->bwd_thread_bytes), &t)) return MLK_ERR_OVERFLOW;
    g->bwd_cap = mlk__arena_need(g->bwd_cap, t);
    if (g->fwd_cap == SIZE_MAX || g->bwd_cap >= SIZE_MAX - MLK__ALIGN) return MLK_ERR_OVERFLOW;
    return MLK_OK;
}

/* Validates d against the pointers' contents (kv_len, tree_parent) too. */
static mlk_status mlk__attn_validate(const mlk_attn_desc *d, mlk__attn_geom *g)
{
    mlk_status st = mlk__attn_geom_init(d, g);
    if (st != MLK_OK) return st;
    if ((size_t)g->batch * (size_t)g->kv_heads * (size_t)g->n_q_tiles > (size_t)INT_MAX) return MLK_ERR_OVERFLOW;
    for (int b = 0; b < g->batch; b++) {
        int n_b = mlk__attn_item_len(d, g, b);
        if (n_b < 0 || n_b > g->len_kv || (d->tree_parent && n_b < g->len_q)) return MLK_ERR_SHAPE;
    }
    if (d->tree_parent)
        for (int i = 0; i < g->len_q; i++)
            if (d->tree_parent[i] < -1 || d->tree_parent[i] >= i) return MLK_ERR_TREE;
    return MLK_OK;
}

/* Workspace arena of cap bytes (the caller's, or one allocation) holding
   the tree depths first. */
static mlk_status mlk__attn_arena(mlk__arena *ar, const mlk_attn_desc *d, const mlk__attn_geom *g, size_t cap,
                                  int **depth)
{
    mlk_status st = mlk__arena_init(ar, d->workspace, cap);
    if (st != MLK_OK) return st;
    *depth = (int *)mlk__arena_take(ar, (size_t)g->len_q * sizeof(int));
    if (d->tree_parent) mlk__attn_tree_depth(g->len_q, d->tree_parent, *depth);
    return MLK_OK;
}

MLKERN_DEF size_t mlk_attn_workspace_size(const mlk_attn_desc *d)
{
    mlk__attn_geom g;
    if (mlk__attn_geom_init(d, &g) != MLK_OK) return 0;
    return (g.fwd_cap > g.bwd_cap ? g.fwd_cap : g.bwd_cap) + MLK__ALIGN;
}

/* 1 when a call of about `macs` multiply-adds is worth waking the OpenMP
   team: below ~1M (a short decode step) the wake-up costs more than it saves. */
MLK__MAYBE_UNUSED static int mlk__attn_fan_out(double macs) { return macs >= 1048576.0; }

/* One forward task: tile_q queries of the `group` heads sharing kv head kvh. */
static void mlk__attn_fwd_task(const mlk_attn_desc *d, const mlk__attn_geom *g, const int *depth, int task,
                               const float *q, const float *k, const float *v, float *o, float *lse, void *scratch)
{
    int qt = task % g->n_q_tiles, kvh = task / g->n_q_tiles % g->kv_heads, b = task / g->n_q_tiles / g->kv_heads;
    int q0 = qt * g->tile_q, nq = g->len_q - q0 < g->tile_q ? g->len_q - q0 : g->tile_q;
    int h0 = kvh * g->group, lo, hi;
    size_t q_off = (size_t)b * g->q_batch + (size_t)h0 * g->q_head + (size_t)q0 * g->q_tok;
    size_t kv_off = (size_t)b * g->kv_batch + (size_t)kvh * g->kv_head;
    mlk__attn_mask m;
    mlk__attn_rows st;
    mlk__attn_item_mask(d, g, b, depth, &m);
    mlk__attn_rows_init(&st, &m, q0, nq, g->group, g->head_dim, g->tile_kv, g->scale, g->softcap, q + q_off,
                        g->q_head, g->q_tok, scratch);
    mlk__attn_key_range(&m, q0, q0 + nq, &lo, &hi);
    for (int kv0 = lo; kv0 < hi; kv0 += g->tile_kv) {
        int nk = hi - kv0 < g->tile_kv ? hi - kv0 : g->tile_kv;
        size_t at = kv_off + (size_t)kv0 * g->kv_tok;
        if (!mlk__attn_rows_typed(&st)) {
            mlk__attn_rows_update(&st, kv0, nk, k + at, g->kv_tok, v + at, g->kv_tok);
            continue;
        }
        for (int j = 0; j < nk; j++) {
            st.k_row[j] = (const unsigned char *)(const void *)(k + at + (size_t)j * g->kv_tok);
            st.v_row[j] = (const unsigned char *)(const void *)(v + at + (size_t)j * g->kv_tok);
        }
        mlk__attn_rows_update_typed(&st, kv0, nk, MLK_KV_F32);
    }
    mlk__attn_rows_finish(&st, o + q_off, g->q_head, g->q_tok,
                          lse ? lse + ((size_t)b * g->heads + (size_t)h0) * g->len_q + (size_t)q0 : NULL,
                          (size_t)g->len_q, 1);
}

MLKERN_DEF mlk_status mlk_attn_fwd(const mlk_attn_desc *d, const float *q, const float *k, const float *v,
                                   float *o, float *lse)
{
    mlk__attn_geom g;
    mlk__arena ar;
    mlk_status st;
    int *depth, n_tasks;
    size_t slab;
    unsigned char *slabs;
    if (!d || !q || !k || !v || !o) return MLK_ERR_NULL;
    if ((st = mlk__attn_validate(d, &g)) != MLK_OK) return st;
    if ((st = mlk__attn_arena(&ar, d, &g, g.fwd_cap, &depth)) != MLK_OK) return st;
    slab = mlk__arena_need(0, g.fwd_thread_bytes);
    slabs = (unsigned char *)mlk__arena_take(&ar, slab * (size_t)mlk__max_threads());
    n_tasks = g.batch * g.kv_heads * g.n_q_tiles;
    /* tasks are independent (no reduction), so dynamic scheduling balances
       causal work without touching determinism */
    MLK__OMP(omp parallel for schedule(dynamic, 1)
             if(mlk__attn_fan_out((double)g.batch * g.heads * g.len_q * (double)g.len_kv * g.head_dim)))
    for (int t = 0; t < n_tasks; t++)
        mlk__attn_fwd_task(d, &g, depth, t, q, k, v, o, lse, slabs + slab * (size_t)mlk__thread_id());
    mlk__arena_done(&ar);
    return MLK_OK;
}

/* ---- reference: materialised scores in double, one query row at a time ---- */

MLKERN_DEF mlk_status mlk_attn_naive(const mlk_attn_desc *d, const float *q, const float *k, const float *v,
                                     float *o, float *lse)
{
    mlk__attn_geom g;
    mlk__arena ar;
    mlk_status st;
    int *depth;
    double *s;
    if (!d || !q || !k || !v || !o) return MLK_ERR_NULL;
    if ((st = mlk__attn_validate(d, &g)) != MLK_OK) return st;
    if ((st = mlk__attn_arena(&ar, d, &g, mlk__arena_need(g.fwd_cap, (size_t)g.len_kv * sizeof(double)), &depth)) !=
        MLK_OK)
        return st;
    s = (double *)mlk__arena_take(&ar, (size_t)g.len_kv * sizeof(double));
    for (int b = 0; b < g.batch; b++) {
        mlk__attn_mask m;
        mlk__attn_item_mask(d, &g, b, depth, &m);
        for (int h = 0; h < g.heads; h++)
            for (int i = 0; i < g.len_q; i++) {
                size_t qo = (size_t)b * g.q_batch + (size_t)h * g.q_head + (size_t)i * g.q_tok;
                size_t kvo = (size_t)b * g.kv_batch + (size_t)(h / g.group) * g.kv_head;
                double row_max = -INFINITY, l_sum = 0;
                for (int j = 0; j < g.len_kv; j++) {
                    double dot = 0;
                    if (!mlk__attn_visible(&m, i, j)) { s[j] = -INFINITY; continue; }
                    for (int e = 0; e < g.head_dim; e++) dot += (double)q[qo + e] * k[kvo + (size_t)j * g.kv_tok + e];
                    s[j] = dot * g.scale;
                    if (g.softcap > 0) s[j] = g.softcap * tanh(s[j] / g.softcap);
                    if (s[j] > row_max) row_max = s[j];
                }
                for (int e = 0; e < g.head_dim; e++) o[qo + e] = 0;
                if (row_max == -INFINITY) { /* sees nothing */
                    if (lse) lse[((size_t)b * g.heads + h) * g.len_q + i] = -INFINITY;
                    continue;
                }
                for (int j = 0; j < g.len_kv; j++) l_sum += s[j] == -INFINITY ? 0 : exp(s[j] - row_max);
                for (int e = 0; e < g.head_dim; e++) {
                    double acc = 0;
                    for (int j = 0; j < g.len_kv; j++)
                        if (s[j] != -INFINITY) acc += exp(s[j] - row_max) * v[kvo + (size_t)j * g.kv_tok + e];
                    o[qo + e] = (float)(acc / l_sum);
                }
                if (lse) lse[((size_t)b * g.heads + h) * g.len_q + i] = (float)(row_max + log(l_sum));
            }
    }
    mlk__arena_done(&ar);
    return MLK_OK;
}

/* ---- backward (FlashAttention-2 order) ----
   With P = exp(S - lse), D_i = rowsum(dO_i o O_i):
       dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D),  dK = dS^T (scale Q),
       dQ = scale dS K   (softcap: dS *= 1 - (s / cap)^2).
   One task per (batch, kv head): KV tiles outer with dK, dV accumulated
   locally, q tiles of every grouped head inside. The task owns dq of its
   heads, summed over KV tiles in a fixed order: no cross-thread reduction. */

typedef struct mlk__attn_bwd_io {
    const float *q, *k, *v, *dout, *lse, *row_d;
    float *dq, *dk, *dv;
} mlk__attn_bwd_io;

/* P and dS of one q tile against one KV tile, already holding S in p and
   dP in ds (rows x nk, row stride ld). With a softcap, d(cap tanh(u/cap))/du
   = 1 / cosh^2(u/cap) is taken from u (1 - tanh^2 would cancel where tanh
   saturates) and parked in cap_grad. */
static void mlk__attn_bwd_probs(const mlk__attn_geom *g, const mlk__attn_mask *m, int q0, int kv0, int nk, int full,
                                int n_rows, const float *lse_r, const float *d_r, float *p, float *ds, int ld,
                                float *cap_grad)
{
    for (int r = 0; r < n_rows; r++) {
        float *s = p + (size_t)r * ld, *dsr = ds + (size_t)r * ld, *cg = cap_grad + (size_t)r * ld;
        if (g->softcap > 0)
            for (int j = 0; j < nk; j++) {
                float ch = coshf(s[j] / g->softcap);
                cg[j] = 1.0f / (ch * ch);
                s[j] = g->softcap * tanhf(s[j] / g->softcap);
            }
        if (!full) mlk__attn_mask_row(m, q0 + r / g->group, kv0, nk, s);
        if (lse_r[r] == -INFINITY) { /* the row sees nothing: no gradient */
            memset(s, 0, (size_t)nk * sizeof(float));
            memset(dsr, 0, (size_t)nk * sizeof(float));
            continue;
        }
        mlk__attn_exp_sum(s, nk, lse_r[r]);
        for (int j = 0; j < nk; j++) dsr[j] = s[j] * (dsr[j] - d_r[r]);
        if (g->softcap > 0)
            for (int j = 0; j < nk; j++) dsr[j] *= cg[j];
    }
}

static void mlk__attn_bwd_task(const mlk_attn_desc *d, const mlk__attn_geom *g, const int *depth, int task,
                               const mlk__attn_bwd_io *io, void *scratch)
{
    int b = task / g->kv_heads, kvh = task % g->kv_heads, h0 = kvh * g->group, dim = g->head_dim;
    int dp = mlk__attn_pad(dim), kp = mlk__attn_pad(g->bwd_tile_kv), max_rows = g->tile_q * g->group;
    size_t q_off = (size_t)b * g->q_batch + (size_t)h0 * g->q_head;
    size_t kv_off = (size_t)b * g->kv_batch + (size_t)kvh * g->kv_head;
    size_t lse_off = ((size_t)b * g->heads + (size_t)h0) * g->len_q;
    float *k_t = (float *)scratch, *v_t = k_t + (size_t)dim * kp, *k_pack = v_t + (size_t)dim * kp;
    float *dk_acc = k_pack + (size_t)kp * dp, *dv_acc = dk_acc + (size_t)kp * dp;
    float *q_pack = dv_acc + (size_t)kp * dp, *do_pack = q_pack + (size_t)max_rows * dp;
    float *dq_tile = do_pack + (size_t)max_rows * dp, *p = dq_tile + (size_t)max_rows * dp;
    float *ds = p + (size_t)max_rows * kp, *p_t = ds + (size_t)max_rows * kp, *lse_r = p_t + (size_t)kp * max_rows;
    float *d_r = lse_r + max_rows;
    mlk__attn_mask m;
    mlk__attn_item_mask(d, g, b, depth, &m);
    if (io->dq)
        for (int h = 0; h < g->group; h++)
            for (int i = 0; i < g->len_q; i++)
                memset(io->dq + q_off + (size_t)h * g->q_head + (size_t)i * g->q_tok, 0, (size_t)dim * sizeof(float));
    for (int kv0 = 0; kv0 < g->len_kv; kv0 += g->bwd_tile_kv) {
        int nk_tile = g->len_kv - kv0 < g->bwd_tile_kv ? g->len_kv - kv0 : g->bwd_tile_kv;
        int nk = m.n_keys - kv0 < nk_tile ? m.n_keys - kv0 : nk_tile; /* keys past kv_len get 0 */
        const float *kt = io->k + kv_off + (size_t)kv0 * g->kv_tok, *vt = io->v + kv_off + (size_t)kv0 * g->kv_tok;
        if (nk < 0) nk = 0;
        memset(dk_acc, 0, (size_t)nk_tile * dp * sizeof(float));
        memset(dv_acc, 0, (size_t)nk_tile * dp * sizeof(float));
        if (nk > 0) {
            mlk__attn_transpose(nk, dim, kt, g->kv_tok, k_t, kp);
            mlk__attn_transpose(nk, dim, vt, g->kv_tok, v_t, kp);
            mlk__attn_copy_rows(nk, dim, kt, g->kv_tok, k_pack, dp);
        }
        for (int q0 = 0; nk > 0 && q0 < g->len_q; q0 += g->tile_q) {
            int nq = g->len_q - q0 < g->tile_q ? g->len_q - q0 : g->tile_q, n_rows = nq * g->group, lo, hi;
            mlk__attn_key_range(&m, q0, q0 + nq, &lo, &hi);
            if (hi <= kv0 || lo >= kv0 + nk) continue;
            for (int r = 0; r < n_rows; r++) {
                size_t at = q_off + (size_t)(r % g->group) * g->q_head + (size_t)(q0 + r / g->group) * g->q_tok;
                size_t li = lse_off + (size_t)(r % g->group) * g->len_q + (size_t)(q0 + r / g->group);
                for (int e = 0; e < dim; e++) q_pack[(size_t)r * dp + e] = g->scale * io->q[at + e];
                memset(q_pack + (size_t)r * dp + dim, 0, (size_t)(dp - dim) * sizeof(float));
                mlk__attn_copy_rows(1, dim, io->dout + at, 0, do_pack + (size_t)r * dp, dp);
                lse_r[r] = io->lse[li];
                d_r[r] = io->row_d[li];
            }
            mlk__attn_mm(n_rows, mlk__attn_pad(nk), dim, q_pack, dp, k_t, kp, p, kp, 0);
            mlk__attn_mm(n_rows, mlk__attn_pad(nk), dim, do_pack, dp, v_t, kp, ds, kp, 0);
            mlk__attn_bwd_probs(g, &m, q0, kv0, nk, mlk__attn_tile_full(&m, q0, q0 + nq, kv0, kv0 + nk), n_rows,
                                lse_r, d_r, p, ds, kp, p_t);
            mlk__attn_transpose(n_rows, nk, p, (size_t)kp, p_t, n_rows);
            mlk__attn_mm(nk, dp, n_rows, p_t, n_rows, do_pack, dp, dv_acc, dp, 1);
            mlk__attn_transpose(n_rows, nk, ds, (size_t)kp, p_t, n_rows);
            mlk__attn_mm(nk, dp, n_rows, p_t, n_rows, q_pack, dp, dk_acc, dp, 1);
            if (!io->dq) continue;
            mlk__attn_mm(n_rows, dp, nk, ds, kp, k_pack, dp, dq_tile, dp, 0);
            for (int r = 0; r < n_rows; r++) {
                float *dst = io->dq + q_off + (size_t)(r % g->group) * g->q_head + (size_t)(q0 + r / g->group) * g->q_tok;
                const float *src = dq_tile + (size_t)r * dp;
                for (int e = 0; e < dim; e++) dst[e] += g->scale * src[e];
            }
        }
        for (int j = 0; j < nk_tile; j++) {
            size_t at = kv_off + (size_t)(kv0 + j) * g->kv_tok;
            if (io->dk) memcpy(io->dk + at, dk_acc + (size_t)j * dp, (size_t)dim * sizeof(float));
            if (io->dv) memcpy(io->dv + at, dv_acc + (size_t)j * dp, (size_t)dim * sizeof(float));
        }
    }
}

MLKERN_DEF mlk_status mlk_attn_bwd(const mlk_attn_desc *d, const float *q, const float *k, const float *v,
                                   const float *o, const float *dout, const float *lse, float *dq, float *dk, float *dv)
{
    mlk__attn_geom g;
    mlk__arena ar;
    mlk_status st;
    mlk__attn_bwd_io io;
    int *depth, n_rowsets;
    size_t slab;
    float *row_d;
    unsigned char *slabs;
    if (!d || !q || !k || !v || !o || !dout || !lse) return MLK_ERR_NULL;
    if ((st = mlk__attn_validate(d, &g)) != MLK_OK) return st;
    if (!dq && !dk && !dv) return MLK_OK;
    if ((st = mlk__attn_arena(&ar, d, &g, g.bwd_cap, &depth)) != MLK_OK) return st;
    row_d = (float *)mlk__arena_take(&ar, (size_t)g.batch * g.heads * g.len_q * sizeof(float));
    slab = mlk__arena_need(0, g.bwd_thread_bytes);
    slabs = (unsigned char *)mlk__arena_take(&ar, slab * (size_t)mlk__max_threads());
    n_rowsets = g.batch * g.heads;
    MLK__OMP(omp parallel for schedule(static))
    for (int bh = 0; bh < n_rowsets; bh++)
        for (int i = 0; i < g.len_q; i++) { /* D_i = rowsum(dO_i o O_i) */
            size_t at = (size_t)(bh / g.heads) * g.q_batch + (size_t)(bh % g.heads) * g.q_head + (size_t)i * g.q_tok;
            float sum = 0;
            for (int e = 0; e < g.head_dim; e++) sum += dout[at + e] * o[at + e];
            row_d[(size_t)bh * g.len_q + i] = sum;
        }
    io.q = q; io.k = k; io.v = v; io.dout = dout; io.lse = lse; io.row_d = row_d;
    io.dq = dq; io.dk = dk; io.dv = dv;
    MLK__OMP(omp parallel for schedule(dynamic, 1))
    for (int t = 0; t < g.batch * g.kv_heads; t++)
        mlk__attn_bwd_task(d, &g, depth, t, &io, slabs + slab * (size_t)mlk__thread_id());
    mlk__arena_done(&ar);
    return MLK_OK;
}

#ifdef __cplusplus
}
#endif

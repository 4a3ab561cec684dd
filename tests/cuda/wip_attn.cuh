/* wip_attn.cuh - attention forward on the device: mlk_cuda_attn_fwd (dense
   q/k/v, the twin of mlk_attn_fwd) and mlk_cuda_kv_attn (the paged KV pool,
   the twin of mlk_kv_attn_opt), one kernel family behind both. Written as
   the attention section of mlkern_cuda.cuh and to be pasted there: include
   it after mlkern_cuda.cuh (tests: right after mlkct.h, with
   MLKCT_HEADER_IMPL defined so an nvcc build compiles the implementation).

   ---- manual text for the top of mlkern_cuda.cuh (KERNELS) ----

   Attention forward, fp32 SIMT: one block of 4 warps per (batch item or
   sequence, kv head, tile of 16 query rows (8 at head_dim > 128), run of
   keys). A tile's rows are the (query, head) pairs of the kv head's query
   heads, query-major, so a decode step of a GQA model reads each key once
   for the whole group. Keys come in tiles of 32, one per lane: scores in
   fp32, the online softmax in base 2 (log2(e) folded into the scale),
   then P V with each lane owning head_dim / 32 output columns. Masks are
   computed, never stored: causal bottom-right with per-item lengths,
   sliding window, tree ancestors (walked up the parent array per tile);
   masked keys are skipped, so a NaN or inf in a key or value a query
   cannot see never reaches it. A launch of fewer than 512 blocks (decode,
   short prefill chunks) splits its key ranges into runs of
   MLK_CUDA_ATTN_SPLIT (512) keys, one block each, whose partial (o, lse)
   a second kernel merges in run order: the split depends on the shapes
   only, never on the GPU, and a call gives the same bits every time.
       template <typename T> mlk_status mlk_cuda_attn_fwd(
           const mlk_attn_desc *d (host), const T *q, const T *k,
           const T *v, T *o, float *lse, void *workspace,
           size_t workspace_bytes, cudaStream_t stream);
       size_t mlk_cuda_attn_fwd_workspace_size(const mlk_attn_desc *d);
   mlk_attn_desc as on the CPU (layouts, GQA/MQA, causal, window, softcap,
   sinks, kv_len, tree_parent); its pointers kv_len, tree_parent and sinks
   are HOST arrays, checked on the host and copied into the workspace;
   head_dim 1..256 (else MLK_ERR_SHAPE). q, k, v, o are T (float, bf16,
   fp16), accumulation and lse [B, Hq, Nq] (or NULL) fp32. tile_q / tile_kv
   are checked as on the CPU but the tiles are the kernel's own;
   d->workspace, workspace_bytes and threads are the CPU's and ignored.
   A row that sees nothing gets o = 0 and lse = -inf (its sink if any).
       mlk_status mlk_cuda_kv_attn(const mlk_kv_cache *c (host),
           const void *pool, int layer, int n_seqs, const int *seqs (host),
           const int *n_q (host), const float *q, int heads,
           const mlk_kv_attn_opts *opts (host), float *o, float *lse,
           void *workspace, size_t workspace_bytes, cudaStream_t stream);
       size_t mlk_cuda_kv_attn_workspace_size(const mlk_kv_cache *c,
           int n_seqs, const int *seqs, const int *n_q, int heads,
           const mlk_kv_attn_opts *opts);
   mlk_kv_attn_opt on a device copy of the pool: c holds the bookkeeping
   (mlk_kv_create_bookkeeping, or a cache with storage), pool the bytes on
   the device in exactly mlk_kv_get_layout's layout; F32/F16/Q8/Q4 rows
   are decoded in registers in the CPU's row formats. q, o [sum n_q,
   heads, head_dim] and lse [sum n_q, heads] (or NULL) are device float
   arrays; decode, chunked prefill, tree verification (opts->tree_parent,
   one sequence), window, softcap, sinks (host [heads]) as on the CPU.
   The launcher copies the block tables into the workspace
   (cudaMemcpyAsync from a host buffer it allocates and frees in the call;
   the cache may change once the call returns). opts->workspace,
   workspace_bytes and threads are ignored.

   ---- attention common: the device helpers the backward reuses ----
   Names and meanings are stable; the backward (mlk_cuda_attn_bwd) builds
   on them so masks and scores exist once.
   mlk_cuda__attn_mask            one item's visibility: n_keys (its kv
                                  length), n_q, causal, window, and device
                                  tree_parent / tree_depth [n_q] or NULL.
   mlk_cuda__attn_key_range(m, qa, qb, &lo, &hi)
                                  keys [lo, hi) holding every key some
                                  query in [qa, qb) sees (mlk__attn_key_range).
   mlk_cuda__attn_tree_bits(m, i, k0)
                                  bit t set when key k0 + t is the tree key
                                  of an ancestor-or-self of query i (a
                                  32-key tile's ancestor bitset; 0 without
                                  a tree; walks i's parents once).
   mlk_cuda__attn_visible(m, i, j, anc_bit)
                                  the visibility rule for query i, key j
                                  (anc_bit: bit j - k0 of the tile's bits).
   mlk_cuda__attn_logits          scale and softcap resolved for base 2:
   mlk_cuda__attn_logits_of(scale, softcap), .q_scale (multiply q by it),
   mlk_cuda__attn_logit2(lg, dot) the base-2 logit of dot = (q_scale q).k:
                                  s * log2(e) with s the CPU's score
                                  (softcap as tanh), so p = exp2(logit2 -
                                  lse * log2(e)).
   mlk_cuda__attn_online          one row's running max m (base 2) and
                                  this lane's share l of the sum:
   mlk_cuda__attn_online_start(sink)  the row before any key (sink: the
                                  head's logit or -inf; lane 0 holds its 1),
   mlk_cuda__attn_online_rescale(&st, tile_max)
                                  moves m to max(m, tile_max) and returns
                                  the factor exp2(m_old - m_new) for l and
                                  the accumulators (never NaN: 0 from an
                                  empty row, 1 while the row stays empty),
   mlk_cuda__attn_online_lse(m, l) the natural-log lse from m and the
                                  row's whole sum (-inf when l is 0).
   mlk_cuda__attn_warp_max / mlk_cuda__attn_warp_sum
                                  butterflies: every lane gets the same bits.
   mlk_cuda__attn_dense<T>, mlk_cuda__attn_paged<TYPE>
                                  the front ends: row(kv, item, kvh, key)
                                  and elem(row, e) fetch element e of a key
                                  (kv 0) or value (kv 1) row (strided T
                                  rows, or a pool row decoded); q_elem,
                                  store_o and lse_at address queries and
                                  outputs; mlk_cuda__attn_task_of(f, block,
                                  run) gives a block's rows and keys.
*/

/* ---- declarations ---- */
#ifndef MLKERN_CUDA_ATTN_CUH
#define MLKERN_CUDA_ATTN_CUH

/* Keys per run of a split key range (see the manual above). */
#define MLK_CUDA_ATTN_SPLIT 512

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *d, const T *q, const T *k, const T *v, T *o,
    float *lse, void *workspace, size_t workspace_bytes, cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_attn_fwd_workspace_size(const mlk_attn_desc *d);
MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_attn(const mlk_kv_cache *c, const void *pool, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads, const mlk_kv_attn_opts *opts, float *o,
    float *lse, void *workspace, size_t workspace_bytes, cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_kv_attn_workspace_size(const mlk_kv_cache *c, int n_seqs, const int *seqs,
    const int *n_q, int heads, const mlk_kv_attn_opts *opts);

#endif /* MLKERN_CUDA_ATTN_CUH */

/* ---- implementation ---- */
#ifdef MLKERN_CUDA_IMPLEMENTATION
#ifndef MLKERN_CUDA_ATTN_IMPLEMENTATION_DONE
#define MLKERN_CUDA_ATTN_IMPLEMENTATION_DONE

/* ======================================================================
   attention common: visibility, logits, online softmax
   ====================================================================== */

#define MLK_CUDA__LOG2E 1.4426950408889634f
#define MLK_CUDA__LN2 0.6931471805599453f

/* Visibility of one item's keys to its queries: query i sits at position
   i + off, off = n_keys - n_q (bottom-right alignment); with a tree the
   last n_q keys are the nodes and node i sits at off + depth(i). */
struct mlk_cuda__attn_mask {
    int n_keys, n_q, causal, window;
    const int *tree_parent, *tree_depth; /* device [n_q], or NULL */
};

/* Positions are long long: a window of INT_MAX plus a position must not overflow. */
static __device__ __forceinline__ long long mlk_cuda__attn_query_pos(const mlk_cuda__attn_mask &m, int i)
{
    long long off = (long long)m.n_keys - m.n_q;
    return m.tree_parent ? off + m.tree_depth[i] : off + i;
}

static __device__ __forceinline__ long long mlk_cuda__attn_key_pos(const mlk_cuda__attn_mask &m, int j)
{
    int off = m.n_keys - m.n_q;
    return m.tree_parent && j >= off ? (long long)off + m.tree_depth[j - off] : (long long)j;
}

static __device__ __forceinline__ void mlk_cuda__attn_key_range(const mlk_cuda__attn_mask &m, int qa, int qb,
                                                                int *lo, int *hi)
{
    long long off = (long long)m.n_keys - m.n_q, l = 0, h = m.n_keys;
    if (m.tree_parent) {
        h = off + qb < h ? off + qb : h; /* node qb-1's own key is the last one */
        if (m.window > 0) l = off - m.window + 1; /* depth >= 0: conservative */
    } else {
        if (m.causal && qb + off < h) h = qb + off;
        if (m.window > 0) {
            l = qa + off - m.window + 1;
            if (!m.causal && qb - 1 + off + m.window < h) h = qb - 1 + off + m.window;
        }
    }
    if (l < 0) l = 0;
    if (h < l) h = l;
    *lo = (int)l;
    *hi = (int)h;
}

static __device__ __forceinline__ unsigned mlk_cuda__attn_tree_bits(const mlk_cuda__attn_mask &m, int i, int k0)
{
    unsigned bits = 0;
    int t0 = k0 - (m.n_keys - m.n_q); /* node of key k0 (negative: a prefix key) */
    if (!m.tree_parent || t0 + 32 <= 0) return 0; /* no tree, or a tile of prefix keys */
    for (int node = i; node >= 0 && node >= t0; node = m.tree_parent[node])
        if (node < t0 + 32) bits |= 1u << (node - t0);
    return bits;
}

static __device__ __forceinline__ bool mlk_cuda__attn_visible(const mlk_cuda__attn_mask &m, int i, int j,
                                                              bool anc_bit)
{
    int off = m.n_keys - m.n_q;
    if (j < 0 || j >= m.n_keys) return false;
    if (m.tree_parent) {
        if (j >= off && !anc_bit) return false;
    } else if (m.causal && j > i + off) {
        return false;
    }
    if (m.window > 0) {
        long long pq = mlk_cuda__attn_query_pos(m, i), pk = mlk_cuda__attn_key_pos(m, j);
        if (m.causal || m.tree_parent) return pk > pq - m.window;
        return pk - pq < m.window && pq - pk < m.window;
    }
    return true;
}

/* Scores in base 2. Without softcap log2(e) rides in q_scale; with it the
   tanh needs the CPU's score s = scale q.k, so log2(e) comes after it. */
struct mlk_cuda__attn_logits {
    float q_scale, cap, cap_log2; /* cap 0: no softcap */
};

static inline mlk_cuda__attn_logits mlk_cuda__attn_logits_of(float scale, float softcap)
{
    mlk_cuda__attn_logits lg;
    lg.cap = softcap > 0.0f ? softcap : 0.0f;
    lg.q_scale = lg.cap > 0.0f ? scale : scale * MLK_CUDA__LOG2E;
    lg.cap_log2 = lg.cap * MLK_CUDA__LOG2E;
    return lg;
}

static __device__ __forceinline__ float mlk_cuda__attn_logit2(const mlk_cuda__attn_logits &lg, float dot)
{
    return lg.cap > 0.0f ? lg.cap_log2 * tanhf(dot / lg.cap) : dot;
}

struct mlk_cuda__attn_online {
    float m, l;
};

static __device__ __forceinline__ mlk_cuda__attn_online mlk_cuda__attn_online_start(float sink)
{
    mlk_cuda__attn_online st;
    st.m = sink > -INFINITY ? sink * MLK_CUDA__LOG2E : -INFINITY;
    st.l = sink > -INFINITY && threadIdx.x % 32 == 0 ? 1.0f : 0.0f;
    return st;
}

static __device__ __forceinline__ float mlk_cuda__attn_online_rescale(mlk_cuda__attn_online *st, float tile_max)
{
    float m_new = fmaxf(st->m, tile_max);
    if (m_new == -INFINITY) return 1.0f; /* still empty: -inf - -inf would be NaN */
    float alpha = st->m == -INFINITY ? 0.0f : exp2f(st->m - m_new);
    st->m = m_new;
    return alpha;
}

static __device__ __forceinline__ float mlk_cuda__attn_online_lse(float m, float l)
{
    return l != 0.0f ? (m + log2f(l)) * MLK_CUDA__LN2 : -INFINITY;
}

static __device__ __forceinline__ float mlk_cuda__attn_warp_max(float v)
{
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, off));
    return v;
}

static __device__ __forceinline__ float mlk_cuda__attn_warp_sum(float v)
{
    float s[1] = {v};
    mlk_cuda__warp_sum<1>(s);
    return s[0];
}


/* ======================================================================
   attention forward: one kernel, two front ends (dense, paged)
   ====================================================================== */

/* A block is MLK_CUDA__ATTN_WARPS warps; a key tile is 32 keys, one per
   lane. Row tiles hold 4 * RW rows, RW per warp (rows w, w + 4, ...). */
#define MLK_CUDA__ATTN_WARPS 4
#define MLK_CUDA__ATTN_TILE_KV 32
/* Below this many (item, kv head, row tile) blocks a launch splits its key
   ranges: fewer blocks than a GPU has SMs (x a few) leave it idle. */
#define MLK_CUDA__ATTN_FEW_BLOCKS 512

/* What both front ends share: the head geometry, the mask options, the
   logits, and where split runs leave their partial state. */
struct mlk_cuda__attn_common {
    int head_dim, group, kv_heads, heads, causal, window;
    int n_tiles;                         /* (item, row tile) pairs: blockIdx.x / kv_heads */
    int split_len;                       /* 0: unsplit; else keys per run */
    mlk_cuda__attn_logits lg;
    const int *tree_parent, *tree_depth; /* device [n_q] or NULL */
    const float *sinks;                  /* device [heads] or NULL */
    float *part_o, *part_lse;            /* split: [run][block][rows][head_dim], [run][block][rows] */
};

/* The rows and keys one block works on. */
struct mlk_cuda__attn_task {
    int item, kvh, v0, n_rows; /* rows v0 .. v0+n_rows-1 of the item's n_q x group (query-major) */
    int lo, hi, n_runs;        /* keys [lo, hi), in n_runs runs when split */
    mlk_cuda__attn_mask m;
};

/* Rows per warp for DV output columns per lane (head_dim <= 32 DV): 4,
   or 2 at head_dim > 128 so that q, a tile and p fit in 48 KiB of smem. */
__host__ __device__ constexpr int mlk_cuda__attn_rw(int dv) { return dv <= 4 ? 4 : 2; }
template <int DV> struct mlk_cuda__attn_shape {
    static const int RW = mlk_cuda__attn_rw(DV), ROWS = MLK_CUDA__ATTN_WARPS * RW;
};

/* Dense front end: q, k, v, o of type T in BHND or BNHD, one item per batch entry. */
template <typename T> struct mlk_cuda__attn_dense {
    mlk_cuda__attn_common c;
    const T *q, *k, *v;
    T *o;
    float *lse;
    const int *kv_len; /* device [batch] or NULL */
    int len_q, len_kv, tiles_per_item;
    size_t q_batch, q_head, q_tok, kv_batch, kv_head, kv_tok;

    __device__ __forceinline__ int item_of(int tile, int *tile_in_item) const
    {
        *tile_in_item = tile % tiles_per_item;
        return tile / tiles_per_item;
    }
    __device__ __forceinline__ void mask_of(int item, mlk_cuda__attn_mask *m) const
    {
        m->n_keys = kv_len ? kv_len[item] : len_kv;
        m->n_q = len_q;
    }
    __device__ __forceinline__ size_t q_at(int item, int i, int h) const
    {
        return (size_t)item * q_batch + (size_t)h * q_head + (size_t)i * q_tok;
    }
    __device__ __forceinline__ float q_elem(int item, int i, int h, int e) const
    {
        return mlk_cuda__to_float(q[q_at(item, i, h) + e]);
    }
    __device__ __forceinline__ void store_o(int item, int i, int h, int e, float x) const
    {
        o[q_at(item, i, h) + e] = mlk_cuda__from_float<T>(x);
    }
    __device__ __forceinline__ float *lse_at(int item, int i, int h) const
    {
        return lse ? lse + ((size_t)item * c.heads + h) * len_q + i : NULL;
    }
    /* the row fetch: key `key` of kv head kvh, K (kv 0) or V (kv 1) */
    typedef const T *row_t;
    __device__ __forceinline__ row_t row(int kv, int item, int kvh, int key) const
    {
        return (kv ? v : k) + (size_t)item * kv_batch + (size_t)kvh * kv_head + (size_t)key * kv_tok;
    }
    __device__ __forceinline__ float elem(row_t r, int e) const { return mlk_cuda__to_float(r[e]); }
};

/* One sequence of a paged call, as the kernel sees it. */
struct mlk_cuda__kv_seq {
    int n_keys, n_q, table_at, tile0; /* its block table starts at tables[table_at]; its first row tile */
    size_t row0;                      /* its first row of q / o: [row0 + i, heads, head_dim] */
};

/* Element e of a typed row (mlkern.h's row formats): F32 / F16 values;
   Q8 / Q4 nb float scales, then int8 codes or 4-bit codes biased by 8
   (element e in byte e / 2, low nibble first). */
template <int TYPE> static __device__ __forceinline__ float mlk_cuda__kv_elem(const unsigned char *row, int nb, int e)
{
    if (TYPE == MLK_KV_F32) return ((const float *)row)[e];
    if (TYPE == MLK_KV_F16) return __half2float(((const __half *)row)[e]);
    float scale = ((const float *)row)[e / 32];
    if (TYPE == MLK_KV_Q8) return scale * (float)(signed char)row[4 * nb + e];
    return scale * (float)((row[4 * nb + e / 2] >> (e & 1) * 4 & 15) - 8);
}

/* Paged front end: float q / o, keys from the device pool through block tables. */
template <int TYPE> struct mlk_cuda__attn_paged {
    mlk_cuda__attn_common c;
    const float *q;
    float *o, *lse;
    const unsigned char *pool;
    const mlk_cuda__kv_seq *seqs; /* device [n_seqs] */
    const int *tables;            /* device: the sequences' block tables, concatenated */
    int n_seqs, block_size, nb;
    size_t block_bytes, layer_off, kv_stride, head_stride, row_bytes;

    __device__ __forceinline__ int item_of(int tile, int *tile_in_item) const
    {
        int lo = 0, hi = n_seqs;
        while (hi - lo > 1) { /* the last sequence whose first tile is <= tile */
            int mid = (lo + hi) / 2;
            if (seqs[mid].tile0 <= tile) lo = mid;
            else hi = mid;
        }
        *tile_in_item = tile - seqs[lo].tile0;
        return lo;
    }
    __device__ __forceinline__ void mask_of(int item, mlk_cuda__attn_mask *m) const
    {
        m->n_keys = seqs[item].n_keys;
        m->n_q = seqs[item].n_q;
    }
    __device__ __forceinline__ size_t row_at(int item, int i, int h) const
    {
        return (seqs[item].row0 + (size_t)i) * c.heads + (size_t)h;
    }
    __device__ __forceinline__ float q_elem(int item, int i, int h, int e) const
    {
        return q[row_at(item, i, h) * c.head_dim + e];
    }
    __device__ __forceinline__ void store_o(int item, int i, int h, int e, float x) const
    {
        o[row_at(item, i, h) * c.head_dim + e] = x;
    }
    __device__ __forceinline__ float *lse_at(int item, int i, int h) const
    {
        return lse ? lse + row_at(item, i, h) : NULL;
    }
    typedef const unsigned char *row_t;
    __device__ __forceinline__ row_t row(int kv, int item, int kvh, int key) const
    {
        int block = tables[seqs[item].table_at + key / block_size];
        return pool + (size_t)block * block_bytes + layer_off + (size_t)kv * kv_stride + (size_t)kvh * head_stride +
               (size_t)(key % block_size) * row_bytes;
    }
    __device__ __forceinline__ float elem(row_t r, int e) const { return mlk_cuda__kv_elem<TYPE>(r, nb, e); }
};

/* The block's task: its item, rows, and keys (its run's, when split);
   n_runs 0 for a run index past the task's runs (the block has nothing to do). */
template <class F, int ROWS>
static __device__ __forceinline__ mlk_cuda__attn_task mlk_cuda__attn_task_of(const F &f, int block, int run)
{
    const mlk_cuda__attn_common &c = f.c;
    mlk_cuda__attn_task t;
    int tile;
    t.kvh = block % c.kv_heads;
    t.item = f.item_of(block / c.kv_heads, &tile);
    f.mask_of(t.item, &t.m);
    t.m.causal = c.causal;
    t.m.window = c.window;
    t.m.tree_parent = c.tree_parent;
    t.m.tree_depth = c.tree_depth;
    t.v0 = tile * ROWS;
    t.n_rows = t.m.n_q * c.group - t.v0 < ROWS ? t.m.n_q * c.group - t.v0 : ROWS;
    mlk_cuda__attn_key_range(t.m, t.v0 / c.group, (t.v0 + t.n_rows - 1) / c.group + 1, &t.lo, &t.hi);
    t.n_runs = 1;
    if (c.split_len) {
        t.n_runs = t.hi - t.lo > c.split_len ? (t.hi - t.lo - 1) / c.split_len + 1 : 1;
        t.lo += run * c.split_len;
        if (t.hi - t.lo > c.split_len) t.hi = t.lo + c.split_len;
    }
    if (run >= t.n_runs) t.n_runs = 0;
    return t;
}

/* One tile of K or V rows into smem (row j at dst + j * ld), a warp per row. */
template <class F>
static __device__ __forceinline__ void mlk_cuda__attn_load_tile(const F &f, int kv, const mlk_cuda__attn_task &t,
                                                                int k0, int nk, float *dst, int ld)
{
    int lane = threadIdx.x % 32, d = f.c.head_dim;
    for (int j = threadIdx.x / 32; j < nk; j += MLK_CUDA__ATTN_WARPS) {
        typename F::row_t r = f.row(kv, t.item, t.kvh, k0 + j);
        for (int e = lane; e < d; e += 32) dst[j * ld + e] = f.elem(r, e);
    }
}

/* Writes one row's result: o (the lane's DV columns) and lse (lane 0). */
template <class F, int DV>
static __device__ __forceinline__ void mlk_cuda__attn_store_row(const F &f, const mlk_cuda__attn_task &t, int r,
                                                                const float (&o)[DV], float lse)
{
    int lane = threadIdx.x % 32, i = (t.v0 + r) / f.c.group, h = t.kvh * f.c.group + (t.v0 + r) % f.c.group;
#pragma unroll
    for (int c = 0; c < DV; c++)
        if (lane + 32 * c < f.c.head_dim) f.store_o(t.item, i, h, lane + 32 * c, o[c]);
    float *l = f.lse_at(t.item, i, h);
    if (l && lane == 0) *l = lse;
}

/* The forward: block x = (item, row tile) * kv_heads + kv head, y = run.
   Dynamic smem: q [ROWS][head_dim] (scaled), a K or V tile [32][head_dim + 1]
   (odd stride: lane j reading row j is conflict-free), p [ROWS][32]. */
template <class F, int DV>
__global__ void __launch_bounds__(32 * MLK_CUDA__ATTN_WARPS, 4) /* <= 128 registers: ptxas's own pick spills */
mlk_cuda__attn_fwd_kernel(F f)
{
    const int RW = mlk_cuda__attn_shape<DV>::RW, ROWS = mlk_cuda__attn_shape<DV>::ROWS;
    const mlk_cuda__attn_common &c = f.c;
    const int d = c.head_dim, ld = d + 1, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    mlk_cuda__attn_task t = mlk_cuda__attn_task_of<F, ROWS>(f, (int)blockIdx.x, (int)blockIdx.y);
    if (t.n_runs == 0) return; /* the whole block */
    float *q_s = (float *)mlk_cuda__dynamic_smem(), *kv_s = q_s + ROWS * d, *p_s = kv_s + MLK_CUDA__ATTN_TILE_KV * ld;
    for (int x = threadIdx.x; x < ROWS * d; x += blockDim.x) {
        int r = x / d, v = t.v0 + r;
        q_s[x] = r < t.n_rows ? c.lg.q_scale * f.q_elem(t.item, v / c.group, t.kvh * c.group + v % c.group, x % d)
                              : 0.0f;
    }
    const int live = (t.n_rows - warp + MLK_CUDA__ATTN_WARPS - 1) / MLK_CUDA__ATTN_WARPS; /* rows of this warp */
    float acc[RW][DV];
    mlk_cuda__attn_online st[RW];
#pragma unroll
    for (int rr = 0; rr < RW; rr++) {
        int r = warp + MLK_CUDA__ATTN_WARPS * rr, h = t.kvh * c.group + (t.v0 + r) % c.group;
        bool sink = c.sinks && blockIdx.y == 0 && r < t.n_rows; /* the first run counts the sink */
        st[rr] = mlk_cuda__attn_online_start(sink ? c.sinks[h] : -INFINITY);
#pragma unroll
        for (int e = 0; e < DV; e++) acc[rr][e] = 0.0f;
    }
    for (int k0 = t.lo; k0 < t.hi; k0 += MLK_CUDA__ATTN_TILE_KV) {
        int nk = t.hi - k0 < MLK_CUDA__ATTN_TILE_KV ? t.hi - k0 : MLK_CUDA__ATTN_TILE_KV, key = k0 + lane;
        unsigned seen[RW], seen_any = 0;
        float dot[RW];
        __syncthreads(); /* q is in; the previous tile's V is done with */
        mlk_cuda__attn_load_tile(f, 0, t, k0, nk, kv_s, ld);
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < RW; rr++) dot[rr] = 0.0f;
        if (lane < nk) /* lane j: key k0 + j against the warp's live rows, each key element read once */
            for (int e = 0; e < d; e++) {
                float kx = kv_s[lane * ld + e];
#pragma unroll
                for (int rr = 0; rr < RW; rr++)
                    if (rr < live) dot[rr] += q_s[(warp + MLK_CUDA__ATTN_WARPS * rr) * d + e] * kx;
            }
#pragma unroll
        for (int rr = 0; rr < RW; rr++) {
            int r = warp + MLK_CUDA__ATTN_WARPS * rr, i = (t.v0 + r) / c.group;
            bool vis = r < t.n_rows && lane < nk &&
                       mlk_cuda__attn_visible(t.m, i, key, mlk_cuda__attn_tree_bits(t.m, i, k0) >> lane & 1u);
            float logit = vis ? mlk_cuda__attn_logit2(c.lg, dot[rr]) : -INFINITY;
            float alpha = mlk_cuda__attn_online_rescale(&st[rr], mlk_cuda__attn_warp_max(logit));
            float p = vis && st[rr].m > -INFINITY ? exp2f(logit - st[rr].m) : 0.0f;
            st[rr].l = st[rr].l * alpha + p;
#pragma unroll
            for (int e = 0; e < DV; e++) acc[rr][e] *= alpha;
            seen[rr] = __ballot_sync(0xFFFFFFFFu, vis);
            seen_any |= seen[rr];
            p_s[r * 32 + lane] = p;
        }
        __syncthreads(); /* every warp is done with K */
        mlk_cuda__attn_load_tile(f, 1, t, k0, nk, kv_s, ld);
        __syncthreads();
        for (unsigned b = seen_any; b; b &= b - 1) { /* keys some row of the warp sees, in order */
            int j = __ffs((int)b) - 1;
            float vx[DV];
#pragma unroll
            for (int e = 0; e < DV; e++) vx[e] = lane + 32 * e < d ? kv_s[j * ld + lane + 32 * e] : 0.0f;
#pragma unroll
            for (int rr = 0; rr < RW; rr++) {
                if (!(seen[rr] >> j & 1u)) continue; /* masked: never multiplied, so its NaN or inf stays out */
                float p = p_s[(warp + MLK_CUDA__ATTN_WARPS * rr) * 32 + j];
#pragma unroll
                for (int e = 0; e < DV; e++) acc[rr][e] += p * vx[e];
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < RW; rr++) {
        int r = warp + MLK_CUDA__ATTN_WARPS * rr;
        float l = mlk_cuda__attn_warp_sum(st[rr].l), inv = 1.0f / l;
        if (r >= t.n_rows) continue;
        /* l is 0 only for a row that saw nothing: o = 0, lse = -inf */
#pragma unroll
        for (int e = 0; e < DV; e++) acc[rr][e] = l != 0.0f ? acc[rr][e] * inv : 0.0f;
        float lse = mlk_cuda__attn_online_lse(st[rr].m, l);
        if (!c.split_len) {
            mlk_cuda__attn_store_row<F, DV>(f, t, r, acc[rr], lse);
            continue;
        }
        size_t at = ((size_t)blockIdx.y * gridDim.x + blockIdx.x) * ROWS + r;
#pragma unroll
        for (int e = 0; e < DV; e++)
            if (lane + 32 * e < d) c.part_o[at * d + lane + 32 * e] = acc[rr][e];
        if (lane == 0) c.part_lse[at] = lse;
    }
}

/* Merges the runs of a split launch in run order (mlk_attn_merge's
   arithmetic): lse = m + log(sum w), o = sum w o_run / sum w with
   m = max lse_run and w = exp(lse_run - m); a run with lse -inf weighs
   nothing, and rows whose runs all saw nothing get o = 0, lse = -inf.
   Grid: the forward's blocks. */
template <class F, int DV>
__global__ void __launch_bounds__(32 * MLK_CUDA__ATTN_WARPS)
mlk_cuda__attn_merge_kernel(F f)
{
    const int RW = mlk_cuda__attn_shape<DV>::RW, ROWS = mlk_cuda__attn_shape<DV>::ROWS;
    const mlk_cuda__attn_common &c = f.c;
    const int d = c.head_dim, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    mlk_cuda__attn_task t = mlk_cuda__attn_task_of<F, ROWS>(f, (int)blockIdx.x, 0);
    const size_t run_stride = (size_t)gridDim.x * ROWS;
    for (int rr = 0; rr < RW; rr++) {
        int r = warp + MLK_CUDA__ATTN_WARPS * rr;
        if (r >= t.n_rows) break;
        size_t at = (size_t)blockIdx.x * ROWS + r;
        float m = -INFINITY, wsum = 0.0f, o[DV];
        bool nan = false; /* a run that saw a NaN score: the row is NaN, as unsplit */
        for (int s = 0; s < t.n_runs; s++) {
            float l = c.part_lse[at + s * run_stride];
            m = fmaxf(m, l);
            nan |= l != l;
        }
#pragma unroll
        for (int e = 0; e < DV; e++) o[e] = 0.0f;
        for (int s = 0; m > -INFINITY && s < t.n_runs; s++) {
            size_t rs = at + s * run_stride;
            float w = expf(c.part_lse[rs] - m);
            if (!(w > 0.0f)) continue; /* a run that saw nothing adds nothing, not even 0 * NaN */
            wsum += w;
#pragma unroll
            for (int e = 0; e < DV; e++)
                if (lane + 32 * e < d) o[e] += w * c.part_o[rs * d + lane + 32 * e];
        }
        float inv = 1.0f / wsum, lse = nan ? NAN : m > -INFINITY ? m + logf(wsum) : -INFINITY;
#pragma unroll
        for (int e = 0; e < DV; e++) o[e] = nan ? NAN : m > -INFINITY ? o[e] * inv : 0.0f;
        mlk_cuda__attn_store_row<F, DV>(f, t, r, o, lse);
    }
}

/* ---- host side: plans, staging, launches ---- */

/* Output columns per lane: head_dim 1..256 in classes of 32, 64, 128, 256. */
static inline int mlk_cuda__attn_dv(int head_dim) { return head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : 8; }
static inline int mlk_cuda__attn_rows(int dv) { return MLK_CUDA__ATTN_WARPS * mlk_cuda__attn_rw(dv); }

static inline size_t mlk_cuda__attn_smem(int head_dim)
{
    int rows = mlk_cuda__attn_rows(mlk_cuda__attn_dv(head_dim));
    return ((size_t)rows * head_dim + (size_t)MLK_CUDA__ATTN_TILE_KV * (head_dim + 1) + (size_t)rows * 32) *
           sizeof(float);
}

/* How a call covers its rows: blocks (row tiles x kv heads), key runs. */
struct mlk_cuda__attn_plan {
    int dv, rows, blocks, runs, split_len;
};

/* n_tiles row tiles; max_keys the longest item. Splits when there are few
   blocks: a fixed run length, so the split depends on the shapes alone. */
static inline bool mlk_cuda__attn_planning(int head_dim, int kv_heads, long long n_tiles, int max_keys,
                                           mlk_cuda__attn_plan *p)
{
    p->dv = mlk_cuda__attn_dv(head_dim);
    p->rows = mlk_cuda__attn_rows(p->dv);
    if (n_tiles > INT_MAX || n_tiles * kv_heads > INT_MAX) return false;
    p->blocks = (int)(n_tiles * kv_heads);
    long long runs = ((long long)max_keys + MLK_CUDA_ATTN_SPLIT - 1) / MLK_CUDA_ATTN_SPLIT;
    bool split = p->blocks < MLK_CUDA__ATTN_FEW_BLOCKS && runs > 1 && runs <= 65535;
    p->runs = split ? (int)runs : 1;
    p->split_len = split ? MLK_CUDA_ATTN_SPLIT : 0;
    return true;
}

/* Bytes of the split runs' partial states. */
static inline size_t mlk_cuda__attn_part_bytes(const mlk_cuda__attn_plan &p, int head_dim)
{
    if (!p.split_len) return 0;
    size_t rows = (size_t)p.runs * p.blocks * p.rows;
    return mlk_cuda__round(rows * head_dim * sizeof(float)) + mlk_cuda__round(rows * sizeof(float));
}

static inline void mlk_cuda__attn_carve_parts(mlk_cuda__scratch *sc, const mlk_cuda__attn_plan &p, int head_dim,
                                              mlk_cuda__attn_common *c)
{
    size_t rows = (size_t)p.runs * p.blocks * p.rows;
    c->split_len = p.split_len;
    c->part_o = p.split_len ? mlk_cuda__take<float>(sc, rows * head_dim) : NULL;
    c->part_lse = p.split_len ? mlk_cuda__take<float>(sc, rows) : NULL;
}

/* Host arrays the kernels read (lengths, trees, sinks, block tables) are
   carved from the front of the scratch and sent in one copy from a host
   mirror of the same layout. */
struct mlk_cuda__staging {
    unsigned char *host;
    size_t bytes;
};

template <typename U>
static inline U *mlk_cuda__stage(mlk_cuda__scratch *sc, const mlk_cuda__staging &hs, size_t count, U **host_view)
{
    *host_view = count ? (U *)(hs.host + sc->used) : NULL;
    return count ? mlk_cuda__take<U>(sc, count) : NULL;
}

/* Sends the staged bytes (pageable memory: staged by the driver before
   the call returns, so the mirror can go at once). */
static inline cudaError_t mlk_cuda__stage_send(mlk_cuda__scratch *sc, mlk_cuda__staging &hs, cudaStream_t stream)
{
    cudaError_t e = hs.bytes ? cudaMemcpyAsync(sc->base, hs.host, hs.bytes, cudaMemcpyHostToDevice, stream)
                             : cudaSuccess;
    free(hs.host);
    hs.host = NULL;
    return e;
}

/* Tree parents and depths of n nodes into staged arrays. */
static inline void mlk_cuda__stage_tree(int n, const int *parent, int *parent_h, int *depth_h)
{
    for (int i = 0; i < n; i++) {
        parent_h[i] = parent[i];
        depth_h[i] = parent[i] < 0 ? 0 : depth_h[parent[i]] + 1;
    }
}

static inline mlk_status mlk_cuda__tree_check(int n, const int *parent)
{
    for (int i = 0; i < n; i++)
        if (parent[i] < -1 || parent[i] >= i) return MLK_ERR_TREE;
    return MLK_OK;
}

static inline mlk_status mlk_cuda__sinks_check(int heads, const float *sinks)
{
    if (sinks)
        for (int h = 0; h < heads; h++)
            if (!(sinks[h] < INFINITY)) return MLK_ERR_ARG; /* NaN or +inf */
    return MLK_OK;
}

template <class F, int DV>
static inline cudaError_t mlk_cuda__attn_run(const F &f, const mlk_cuda__attn_plan &p, cudaStream_t stream)
{
    cudaError_t e = mlk_cuda__launch(mlk_cuda__attn_fwd_kernel<F, DV>, dim3((unsigned)p.blocks, (unsigned)p.runs),
                                     dim3(32 * MLK_CUDA__ATTN_WARPS), mlk_cuda__attn_smem(f.c.head_dim), stream, f);
    if (e == cudaSuccess && p.split_len)
        e = mlk_cuda__launch(mlk_cuda__attn_merge_kernel<F, DV>, dim3((unsigned)p.blocks),
                             dim3(32 * MLK_CUDA__ATTN_WARPS), 0, stream, f);
    return e;
}

template <class F> static inline cudaError_t mlk_cuda__attn_launch(const F &f, const mlk_cuda__attn_plan &p,
                                                                   cudaStream_t stream)
{
    switch (p.dv) {
    case 1: return mlk_cuda__attn_run<F, 1>(f, p, stream);
    case 2: return mlk_cuda__attn_run<F, 2>(f, p, stream);
    case 4: return mlk_cuda__attn_run<F, 4>(f, p, stream);
    default: return mlk_cuda__attn_run<F, 8>(f, p, stream);
    }
}

/* ---- dense: mlk_cuda_attn_fwd ---- */

/* A checked descriptor with defaults resolved, its plan and workspace. */
struct mlk_cuda__attn_desc {
    int batch, heads, kv_heads, group, len_q, len_kv, head_dim;
    float scale;
    mlk_cuda__attn_plan plan;
    size_t staged_bytes, bytes;
};

/* a * b * c * d elements of elem bytes fit in size_t (all >= 0) */
static inline bool mlk_cuda__count4(int a, int b, int c, int d, size_t elem)
{
    size_t n = elem;
    const int f[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++) {
        if (f[i] && n > SIZE_MAX / (size_t)f[i]) return false;
        n *= (size_t)f[i];
    }
    return true;
}

/* mlk_attn_fwd's checks in its order, plus head_dim <= 256. */
static inline mlk_status mlk_cuda__attn_check(const mlk_attn_desc *d, mlk_cuda__attn_desc *g)
{
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
        !(d->softcap <= FLT_MAX) || d->window < 0 || d->threads < 0 || (d->layout != MLK_BHND && d->layout != MLK_BNHD))
        return MLK_ERR_ARG;
    if (!mlk_cuda__count4(g->batch, g->heads, g->len_q, g->head_dim, sizeof(float)) ||
        !mlk_cuda__count4(g->batch, g->kv_heads, g->len_kv, g->head_dim, sizeof(float)) || g->len_q > (1 << 30) ||
        g->len_kv > (1 << 30))
        return MLK_ERR_OVERFLOW;
    if (g->head_dim > 256) return MLK_ERR_SHAPE;
    g->group = g->heads / g->kv_heads;
    g->scale = d->scale != 0 ? d->scale : 1.0f / sqrtf((float)g->head_dim);
    for (int b = 0; b < g->batch; b++) {
        int n_b = d->kv_len ? d->kv_len[b] : g->len_kv;
        if (n_b < 0 || n_b > g->len_kv || (d->tree_parent && n_b < g->len_q)) return MLK_ERR_SHAPE;
    }
    mlk_status st = mlk_cuda__sinks_check(g->heads, d->sinks);
    if (st != MLK_OK) return st;
    if (d->tree_parent && (st = mlk_cuda__tree_check(g->len_q, d->tree_parent)) != MLK_OK) return st;
    long long rows = (long long)g->len_q * g->group, tiles;
    int per_row_tile = mlk_cuda__attn_rows(mlk_cuda__attn_dv(g->head_dim));
    if (rows > INT_MAX) return MLK_ERR_OVERFLOW; /* an item's rows are indexed in int on the device */
    tiles = (rows + per_row_tile - 1) / per_row_tile * g->batch;
    if (!mlk_cuda__attn_planning(g->head_dim, g->kv_heads, tiles, g->len_kv, &g->plan)) return MLK_ERR_OVERFLOW;
    g->staged_bytes = mlk_cuda__round(d->kv_len ? (size_t)g->batch * sizeof(int) : 0) +
                      2 * mlk_cuda__round(d->tree_parent ? (size_t)g->len_q * sizeof(int) : 0) +
                      mlk_cuda__round(d->sinks ? (size_t)g->heads * sizeof(float) : 0);
    g->bytes = g->staged_bytes + mlk_cuda__attn_part_bytes(g->plan, g->head_dim);
    return MLK_OK;
}

MLKERN_CUDA_DEF size_t mlk_cuda_attn_fwd_workspace_size(const mlk_attn_desc *d)
{
    mlk_cuda__attn_desc g;
    return mlk_cuda__attn_check(d, &g) == MLK_OK ? g.bytes : 0;
}

/* The mask options, logits and sinks shared by both front ends. */
static inline void mlk_cuda__attn_common_init(mlk_cuda__attn_common *c, int head_dim, int heads, int kv_heads,
                                              int causal, int window, float scale, float softcap,
                                              const mlk_cuda__attn_plan &p)
{
    c->head_dim = head_dim;
    c->heads = heads;
    c->kv_heads = kv_heads;
    c->group = heads / kv_heads;
    c->causal = causal;
    c->window = window;
    c->n_tiles = p.blocks / kv_heads;
    c->lg = mlk_cuda__attn_logits_of(scale, softcap);
    c->tree_parent = c->tree_depth = NULL;
    c->sinks = NULL;
    c->split_len = 0;
    c->part_o = c->part_lse = NULL;
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *d, const T *q, const T *k, const T *v, T *o,
    float *lse, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__attn_desc g;
    mlk_cuda__scratch sc;
    if (!d || !q || !k || !v || !o) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__attn_check(d, &g);
    if (st != MLK_OK) return st;
    mlk_cuda__staging hs = {NULL, g.staged_bytes};
    if (hs.bytes && !(hs.host = (unsigned char *)malloc(hs.bytes))) return MLK_ERR_NOMEM;
    st = mlk_cuda__scratch_init(&sc, workspace, workspace_bytes, g.bytes, stream);
    if (st != MLK_OK) {
        free(hs.host);
        return st;
    }
    mlk_cuda__attn_dense<T> f;
    mlk_cuda__attn_common_init(&f.c, g.head_dim, g.heads, g.kv_heads, d->causal != 0, d->window, g.scale,
                               d->softcap, g.plan);
    int *kv_len_h, *parent_h, *depth_h;
    float *sinks_h;
    f.kv_len = mlk_cuda__stage<int>(&sc, hs, d->kv_len ? (size_t)g.batch : 0, &kv_len_h);
    if (d->kv_len) memcpy(kv_len_h, d->kv_len, (size_t)g.batch * sizeof(int));
    f.c.tree_parent = mlk_cuda__stage<int>(&sc, hs, d->tree_parent ? (size_t)g.len_q : 0, &parent_h);
    f.c.tree_depth = mlk_cuda__stage<int>(&sc, hs, d->tree_parent ? (size_t)g.len_q : 0, &depth_h);
    if (d->tree_parent) mlk_cuda__stage_tree(g.len_q, d->tree_parent, parent_h, depth_h);
    f.c.sinks = mlk_cuda__stage<float>(&sc, hs, d->sinks ? (size_t)g.heads : 0, &sinks_h);
    if (d->sinks) memcpy(sinks_h, d->sinks, (size_t)g.heads * sizeof(float));
    mlk_cuda__attn_carve_parts(&sc, g.plan, g.head_dim, &f.c);
    f.q = q;
    f.k = k;
    f.v = v;
    f.o = o;
    f.lse = lse;
    f.len_q = g.len_q;
    f.len_kv = g.len_kv;
    f.tiles_per_item = f.c.n_tiles / g.batch;
    f.q_batch = (size_t)g.heads * g.len_q * g.head_dim;
    f.kv_batch = (size_t)g.kv_heads * g.len_kv * g.head_dim;
    bool bhnd = d->layout == MLK_BHND;
    f.q_head = bhnd ? (size_t)g.len_q * g.head_dim : (size_t)g.head_dim;
    f.q_tok = bhnd ? (size_t)g.head_dim : (size_t)g.heads * g.head_dim;
    f.kv_head = bhnd ? (size_t)g.len_kv * g.head_dim : (size_t)g.head_dim;
    f.kv_tok = bhnd ? (size_t)g.head_dim : (size_t)g.kv_heads * g.head_dim;
    cudaError_t e = mlk_cuda__stage_send(&sc, hs, stream);
    if (e == cudaSuccess) e = mlk_cuda__attn_launch(f, g.plan, stream);
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

/* ---- paged: mlk_cuda_kv_attn ---- */

/* A checked paged call: the pool layout, its plan and workspace. */
struct mlk_cuda__kv_call {
    mlk_kv_layout lay;
    int group, max_keys, n_blocks; /* n_blocks: block table entries of all listed sequences */
    float scale;
    long long n_tiles;
    mlk_cuda__attn_plan plan;
    size_t staged_bytes, bytes;
};

/* mlk_kv_attn_opt's checks in its order, plus head_dim <= 256. */
static inline mlk_status mlk_cuda__kv_check(const mlk_kv_cache *c, int layer, int n_seqs, const int *seqs,
                                            const int *n_q, int heads, const mlk_kv_attn_opts *opts,
                                            mlk_cuda__kv_call *k)
{
    mlk_kv_attn_opts op;
    memset(&op, 0, sizeof op);
    if (opts) op = *opts;
    mlk_status st = mlk_kv_get_layout(c, &k->lay);
    if (st != MLK_OK) return st;
    if (layer < 0 || layer >= k->lay.layers) return MLK_ERR_ARG;
    if (n_seqs < 1 || heads < 1 || heads % k->lay.kv_heads != 0) return MLK_ERR_SHAPE;
    if (!(fabsf(op.scale) <= FLT_MAX) || op.window < 0 || !(op.softcap >= 0) || !(op.softcap <= FLT_MAX) ||
        op.threads < 0 || (op.tree_parent && n_seqs != 1))
        return MLK_ERR_ARG;
    if ((st = mlk_cuda__sinks_check(heads, op.sinks)) != MLK_OK) return st;
    for (int s = 0; s < n_seqs; s++)
        if (mlk_kv_seq_len(c, seqs[s]) < 0) return MLK_ERR_ARG;
    for (int s = 0; s < n_seqs; s++)
        if (n_q[s] < 1 || n_q[s] > mlk_kv_seq_len(c, seqs[s])) return MLK_ERR_SHAPE;
    if (k->lay.head_dim > 256) return MLK_ERR_SHAPE;
    k->group = heads / k->lay.kv_heads;
    k->scale = op.scale != 0 ? op.scale : 1.0f / sqrtf((float)k->lay.head_dim);
    int rows_per_tile = mlk_cuda__attn_rows(mlk_cuda__attn_dv(k->lay.head_dim));
    long long q_rows = 0, blocks = 0;
    k->max_keys = 0;
    k->n_tiles = 0;
    for (int s = 0; s < n_seqs; s++) {
        int len = mlk_kv_seq_len(c, seqs[s]);
        if ((long long)n_q[s] * k->group > INT_MAX) return MLK_ERR_OVERFLOW;
        q_rows += n_q[s];
        k->n_tiles += ((long long)n_q[s] * k->group + rows_per_tile - 1) / rows_per_tile;
        blocks += mlk_kv_seq_blocks(c, seqs[s], NULL, 0);
        k->max_keys = len > k->max_keys ? len : k->max_keys;
    }
    if (q_rows > INT_MAX || blocks > INT_MAX || !mlk_cuda__count4((int)q_rows, heads, k->lay.head_dim, 1, sizeof(float)) ||
        !mlk_cuda__attn_planning(k->lay.head_dim, k->lay.kv_heads, k->n_tiles, k->max_keys, &k->plan))
        return MLK_ERR_OVERFLOW;
    k->n_blocks = (int)blocks;
    if (op.tree_parent && (st = mlk_cuda__tree_check(n_q[0], op.tree_parent)) != MLK_OK) return st;
    k->staged_bytes = mlk_cuda__round((size_t)n_seqs * sizeof(mlk_cuda__kv_seq)) +
                      mlk_cuda__round((size_t)k->n_blocks * sizeof(int)) +
                      2 * mlk_cuda__round(op.tree_parent ? (size_t)n_q[0] * sizeof(int) : 0) +
                      mlk_cuda__round(op.sinks ? (size_t)heads * sizeof(float) : 0);
    k->bytes = k->staged_bytes + mlk_cuda__attn_part_bytes(k->plan, k->lay.head_dim);
    return MLK_OK;
}

MLKERN_CUDA_DEF size_t mlk_cuda_kv_attn_workspace_size(const mlk_kv_cache *c, int n_seqs, const int *seqs,
    const int *n_q, int heads, const mlk_kv_attn_opts *opts)
{
    mlk_cuda__kv_call k;
    if (!c || !seqs || !n_q || mlk_cuda__kv_check(c, 0, n_seqs, seqs, n_q, heads, opts, &k) != MLK_OK) return 0;
    return k.bytes;
}

/* The paged front end over the device pool (every type addresses it alike), launched. */
template <int TYPE>
static inline cudaError_t mlk_cuda__kv_run(const mlk_cuda__kv_call &k, const mlk_cuda__attn_common &cm, int layer,
                                           const void *pool, const mlk_cuda__kv_seq *seqs_d, const int *tables_d,
                                           int n_seqs, const float *q, float *o, float *lse, cudaStream_t stream)
{
    mlk_cuda__attn_paged<TYPE> f;
    f.c = cm;
    f.q = q;
    f.o = o;
    f.lse = lse;
    f.pool = (const unsigned char *)pool;
    f.seqs = seqs_d;
    f.tables = tables_d;
    f.n_seqs = n_seqs;
    f.block_size = k.lay.block_size;
    f.nb = (k.lay.head_dim + 31) / 32;
    f.block_bytes = k.lay.block_bytes;
    f.layer_off = (size_t)layer * k.lay.layer_stride;
    f.kv_stride = k.lay.kv_stride;
    f.head_stride = k.lay.head_stride;
    f.row_bytes = k.lay.row_bytes;
    return mlk_cuda__attn_launch(f, k.plan, stream);
}

MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_attn(const mlk_kv_cache *c, const void *pool, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads, const mlk_kv_attn_opts *opts, float *o,
    float *lse, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__kv_call k;
    mlk_cuda__scratch sc;
    if (!c || !pool || !seqs || !n_q || !q || !o) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__kv_check(c, layer, n_seqs, seqs, n_q, heads, opts, &k);
    if (st != MLK_OK) return st;
    mlk_cuda__staging hs = {NULL, k.staged_bytes};
    if (!(hs.host = (unsigned char *)malloc(hs.bytes))) return MLK_ERR_NOMEM;
    st = mlk_cuda__scratch_init(&sc, workspace, workspace_bytes, k.bytes, stream);
    if (st != MLK_OK) {
        free(hs.host);
        return st;
    }
    const int *parent = opts ? opts->tree_parent : NULL;
    const float *sinks = opts ? opts->sinks : NULL;
    mlk_cuda__kv_seq *seqs_h;
    int *tables_h, *parent_h, *depth_h;
    float *sinks_h;
    mlk_cuda__attn_common cm;
    mlk_cuda__attn_common_init(&cm, k.lay.head_dim, heads, k.lay.kv_heads, 1, opts ? opts->window : 0, k.scale,
                               opts ? opts->softcap : 0.0f, k.plan);
    const mlk_cuda__kv_seq *seqs_d = mlk_cuda__stage<mlk_cuda__kv_seq>(&sc, hs, (size_t)n_seqs, &seqs_h);
    const int *tables_d = mlk_cuda__stage<int>(&sc, hs, (size_t)k.n_blocks, &tables_h);
    int rows_per_tile = k.plan.rows, table_at = 0, tile0 = 0;
    size_t row0 = 0;
    for (int s = 0; s < n_seqs; s++) {
        mlk_cuda__kv_seq &sq = seqs_h[s];
        sq.n_keys = mlk_kv_seq_len(c, seqs[s]);
        sq.n_q = n_q[s];
        sq.table_at = table_at;
        sq.tile0 = tile0;
        sq.row0 = row0;
        table_at += mlk_kv_seq_blocks(c, seqs[s], tables_h + table_at, k.n_blocks - table_at);
        tile0 += (n_q[s] * k.group + rows_per_tile - 1) / rows_per_tile;
        row0 += (size_t)n_q[s];
    }
    cm.tree_parent = mlk_cuda__stage<int>(&sc, hs, parent ? (size_t)n_q[0] : 0, &parent_h);
    cm.tree_depth = mlk_cuda__stage<int>(&sc, hs, parent ? (size_t)n_q[0] : 0, &depth_h);
    if (parent) mlk_cuda__stage_tree(n_q[0], parent, parent_h, depth_h);
    cm.sinks = mlk_cuda__stage<float>(&sc, hs, sinks ? (size_t)heads : 0, &sinks_h);
    if (sinks) memcpy(sinks_h, sinks, (size_t)heads * sizeof(float));
    mlk_cuda__attn_carve_parts(&sc, k.plan, k.lay.head_dim, &cm);
    cudaError_t e = mlk_cuda__stage_send(&sc, hs, stream);
    if (e == cudaSuccess) switch (k.lay.type) {
        case MLK_KV_F32: e = mlk_cuda__kv_run<MLK_KV_F32>(k, cm, layer, pool, seqs_d, tables_d, n_seqs, q, o, lse, stream); break;
        case MLK_KV_F16: e = mlk_cuda__kv_run<MLK_KV_F16>(k, cm, layer, pool, seqs_d, tables_d, n_seqs, q, o, lse, stream); break;
        case MLK_KV_Q8: e = mlk_cuda__kv_run<MLK_KV_Q8>(k, cm, layer, pool, seqs_d, tables_d, n_seqs, q, o, lse, stream); break;
        case MLK_KV_Q4: e = mlk_cuda__kv_run<MLK_KV_Q4>(k, cm, layer, pool, seqs_d, tables_d, n_seqs, q, o, lse, stream); break;
        }
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

/* the public templates, instantiated for float, bf16 and fp16 */
template mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *, const float *, const float *, const float *, float *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *, const __nv_bfloat16 *, const __nv_bfloat16 *,
    const __nv_bfloat16 *, __nv_bfloat16 *, float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *, const __half *, const __half *, const __half *, __half *,
    float *, void *, size_t, cudaStream_t);

#endif /* MLKERN_CUDA_ATTN_IMPLEMENTATION_DONE */
#endif /* MLKERN_CUDA_IMPLEMENTATION */

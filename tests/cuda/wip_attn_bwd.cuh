/* wip_attn_bwd.cuh - attention backward on the device, fp32 SIMT: the
   twin of mlk_attn_bwd and mlk_attn_sinks_grad. Written as the part of
   mlkern_cuda.cuh's attention section that follows the forward
   (tests/cuda/wip_attn.cuh, whose "attention common" helpers it uses:
   the mask, key ranges, tree bits, base-2 logits, the checks and the
   staging of host arrays), to be pasted there after it. Tests include it
   after mlkct.h and wip_attn.cuh, with MLKCT_HEADER_IMPL defined.

   ---- manual text for the top of mlkern_cuda.cuh (KERNELS) ----

   Attention backward, fp32 SIMT, FlashAttention-2 order from the
   forward's lse: a small kernel forms D = rowsum(dout * o); then one
   block per (batch, kv head, tile of keys) keeps that tile's dK and dV in
   registers while it walks the q tiles of every query head of the group
   (heads in order, then tiles), and one block per (batch, head, q tile)
   keeps dQ in registers over the key tiles in order. Both rebuild
   P = exp(S - lse) and dS = P (dP - D) tile by tile (softcap: times
   1 / cosh^2 of the raw score); no atomics and no partial sums, so a call
   gives the same bits every run. Tiles: 32 x 32 up to head_dim 64,
   16 x 16 up to 128, 8 x 8 up to 256.
       template <typename T> mlk_status mlk_cuda_attn_bwd(
           const mlk_attn_desc *d (host), const T *q, const T *k,
           const T *v, const T *o, const T *dout, const float *lse,
           T *dq, T *dk, T *dv, void *workspace, size_t workspace_bytes,
           cudaStream_t stream);
       template <typename T> mlk_status mlk_cuda_attn_sinks_grad(
           const mlk_attn_desc *d (host), const T *o, const T *dout,
           const float *lse, float *dsinks, void *workspace,
           size_t workspace_bytes, cudaStream_t stream);
       size_t mlk_cuda_attn_bwd_workspace_size(const mlk_attn_desc *d);
   The descriptor and its checks are mlk_cuda_attn_fwd's (host kv_len,
   tree_parent and sinks, head_dim 1..256); q, k, v, o, dout and the
   gradients are T, lse [B, Hq, Nq] fp32 as the forward writes it. Any of
   dq, dk, dv may be NULL (all three: nothing runs). dk and dv are summed
   over the query heads of a group; rows with lse = -inf contribute
   nothing and keys no query sees (past kv_len, masked) get 0, whatever
   their values. mlk_cuda_attn_sinks_grad is mlk_attn_sinks_grad: dsinks
   (device [Hq]) = -sum over the head's rows of exp(sinks[h] - lse) * D,
   summed in double in a fixed order. Both take the workspace
   mlk_cuda_attn_bwd_workspace_size gives (the staged arrays and D), or
   NULL to allocate on the stream.
*/

/* ---- declarations ---- */
#ifndef MLKERN_CUDA_ATTN_BWD_CUH
#define MLKERN_CUDA_ATTN_BWD_CUH

MLKERN_CUDA_DEF size_t mlk_cuda_attn_bwd_workspace_size(const mlk_attn_desc *d);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_bwd(const mlk_attn_desc *d, const T *q, const T *k, const T *v, const T *o,
    const T *dout, const float *lse, T *dq, T *dk, T *dv, void *workspace, size_t workspace_bytes,
    cudaStream_t stream);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_sinks_grad(const mlk_attn_desc *d, const T *o, const T *dout,
    const float *lse, float *dsinks, void *workspace, size_t workspace_bytes, cudaStream_t stream);

#endif /* MLKERN_CUDA_ATTN_BWD_CUH */

/* ---- implementation ---- */
#ifdef MLKERN_CUDA_IMPLEMENTATION
#ifndef MLKERN_CUDA_ATTN_BWD_DONE
#define MLKERN_CUDA_ATTN_BWD_DONE

/* What the backward kernels take by value: the geometry, the mask
   options and the logits of a checked descriptor, with the staged arrays. */
struct mlk_cuda__attn_bwd_geom {
    int batch, heads, kv_heads, group, len_q, len_kv, head_dim, causal, window;
    float scale;
    mlk_cuda__attn_logits lg;
    size_t q_batch, q_head, q_tok, kv_batch, kv_head, kv_tok;
    const int *kv_len, *tree_parent, *tree_depth; /* device copies, or NULL */
    const float *sinks;
};

static __device__ __forceinline__ mlk_cuda__attn_mask mlk_cuda__attn_bwd_mask(const mlk_cuda__attn_bwd_geom &g, int b)
{
    mlk_cuda__attn_mask m;
    m.n_keys = g.kv_len ? g.kv_len[b] : g.len_kv;
    m.n_q = g.len_q;
    m.causal = g.causal;
    m.window = g.window;
    m.tree_parent = g.tree_parent;
    m.tree_depth = g.tree_depth;
    return m;
}

/* Element (b, h, i, 0) of q-shaped and kv-shaped tensors. */
static __device__ __forceinline__ size_t mlk_cuda__attn_bwd_q_at(const mlk_cuda__attn_bwd_geom &g, int b, int h, int i)
{
    return (size_t)b * g.q_batch + (size_t)h * g.q_head + (size_t)i * g.q_tok;
}

static __device__ __forceinline__ size_t mlk_cuda__attn_bwd_kv_at(const mlk_cuda__attn_bwd_geom &g, int b, int h, int j)
{
    return (size_t)b * g.kv_batch + (size_t)h * g.kv_head + (size_t)j * g.kv_tok;
}

/* Checks d as the forward does (mlk_cuda__attn_check: the CPU's checks
   in its order, head_dim <= 256) and resolves g; the staged arrays come
   later (mlk_cuda__attn_bwd_stage). */
static inline mlk_status mlk_cuda__attn_bwd_prepare(const mlk_attn_desc *d, mlk_cuda__attn_bwd_geom *g,
                                                   mlk_cuda__attn_desc *checked)
{
    mlk_status st = mlk_cuda__attn_check(d, checked);
    if (st != MLK_OK) return st;
    g->batch = checked->batch;
    g->heads = checked->heads;
    g->kv_heads = checked->kv_heads;
    g->group = checked->group;
    g->len_q = checked->len_q;
    g->len_kv = checked->len_kv;
    g->head_dim = checked->head_dim;
    g->causal = d->causal != 0;
    g->window = d->window;
    g->scale = checked->scale;
    g->lg = mlk_cuda__attn_logits_of(checked->scale, d->softcap);
    bool bhnd = d->layout == MLK_BHND;
    g->q_batch = (size_t)g->heads * g->len_q * g->head_dim;
    g->kv_batch = (size_t)g->kv_heads * g->len_kv * g->head_dim;
    g->q_head = bhnd ? (size_t)g->len_q * g->head_dim : (size_t)g->head_dim;
    g->q_tok = bhnd ? (size_t)g->head_dim : (size_t)g->heads * g->head_dim;
    g->kv_head = bhnd ? (size_t)g->len_kv * g->head_dim : (size_t)g->head_dim;
    g->kv_tok = bhnd ? (size_t)g->head_dim : (size_t)g->kv_heads * g->head_dim;
    g->kv_len = g->tree_parent = g->tree_depth = NULL;
    g->sinks = NULL;
    return MLK_OK;
}

/* Carves the staged arrays (kv_len, tree, sinks) from the front of the
   scratch in the forward's staging layout, fills the host mirror and sends
   it. */
static inline cudaError_t mlk_cuda__attn_bwd_stage(const mlk_attn_desc *d, mlk_cuda__attn_bwd_geom *g,
                                                  mlk_cuda__scratch *sc, mlk_cuda__staging &hs, cudaStream_t stream)
{
    int *kv_len_h, *parent_h, *depth_h;
    float *sinks_h;
    g->kv_len = mlk_cuda__stage<int>(sc, hs, d->kv_len ? (size_t)g->batch : 0, &kv_len_h);
    if (d->kv_len) memcpy(kv_len_h, d->kv_len, (size_t)g->batch * sizeof(int));
    g->tree_parent = mlk_cuda__stage<int>(sc, hs, d->tree_parent ? (size_t)g->len_q : 0, &parent_h);
    g->tree_depth = mlk_cuda__stage<int>(sc, hs, d->tree_parent ? (size_t)g->len_q : 0, &depth_h);
    if (d->tree_parent) mlk_cuda__stage_tree(g->len_q, d->tree_parent, parent_h, depth_h);
    g->sinks = mlk_cuda__stage<float>(sc, hs, d->sinks ? (size_t)g->heads : 0, &sinks_h);
    if (d->sinks) memcpy(sinks_h, d->sinks, (size_t)g->heads * sizeof(float));
    return mlk_cuda__stage_send(sc, hs, stream);
}

/* ---- backward ----
   With P = exp(S - lse) rebuilt from the forward's lse and D = rowsum(dO o O):
       dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D),  dK = scale dS^T Q,
       dQ = scale dS K   (softcap: dS *= 1 / cosh^2(u / cap), u = scale q.k).
   Two passes over the score tiles, each summing in an order fixed by the
   shapes: the dK/dV kernel (KV tile outer; inner, the q tiles of each head
   of the group, heads in order) and the dQ kernel (q tile outer, KV tiles
   inner); both rebuild P and dS with mlk_cuda__attn_bwd_scores. */

/* Tiles per head_dim class DB (head_dim <= DB): BQ queries x BKV keys (at
   most 32: one tree-ancestor word per row), NT threads. Four [rows][DB + 4]
   float tiles, read as float4 (rows 16-byte aligned, and the stride's odd
   number of 16-byte chunks keeps 8 rows on distinct banks), plus P and dS
   fit the default 48 KiB of shared memory. An owner of gradient entries
   (L threads per key or row) holds the 16-byte chunks t % L + j L of its
   row: a warp's reads of one row are consecutive chunks. Both kernels ask
   for two blocks per SM: left to itself ptxas picks fewer registers for
   the dQ kernel and spills. */
template <int DB> struct mlk_cuda__attn_bwd_tiles {
    static constexpr int BQ = DB <= 64 ? 32 : DB <= 128 ? 16 : 8, BKV = BQ, NT = DB <= 128 ? 256 : 128;
    static constexpr int LD = DB + 4, LDS = BKV + 1;
    static constexpr size_t SMEM = ((size_t)(2 * BQ + 2 * BKV) * LD + 2 * (size_t)BQ * LDS + 2 * BQ) * sizeof(float);
    static_assert(SMEM <= 48 * 1024 && BKV <= 32, "a block fits the default shared memory; one ancestor word");
    static_assert(NT % BKV == 0 && DB % (4 * (NT / BKV)) == 0, "owners split the head dim in float4s");
};

/* D of one row: a warp-collective dot product, every lane gets the sum. */
template <typename T>
static __device__ __forceinline__ float mlk_cuda__attn_row_d(const T *o, const T *dout, int dim)
{
    float s = 0.0f;
    for (int e = threadIdx.x % 32; e < dim; e += 32) s += mlk_cuda__to_float(dout[e]) * mlk_cuda__to_float(o[e]);
    return mlk_cuda__attn_warp_sum(s);
}

/* D [B, Hq, Nq] (lse's layout), one warp per row. */
template <typename T>
__global__ void __launch_bounds__(256)
mlk_cuda__attn_bwd_d_kernel(mlk_cuda__attn_bwd_geom g, const T *__restrict__ o, const T *__restrict__ dout,
                            float *__restrict__ row_d)
{
    size_t row = (size_t)blockIdx.x * 8 + threadIdx.x / 32, rows = (size_t)g.batch * g.heads * g.len_q;
    if (row >= rows) return; /* a whole warp: warps never meet at a barrier */
    int i = (int)(row % g.len_q), bh = (int)(row / g.len_q);
    size_t at = mlk_cuda__attn_bwd_q_at(g, bh / g.heads, bh % g.heads, i);
    float dsum = mlk_cuda__attn_row_d(o + at, dout + at, g.head_dim);
    if (threadIdx.x % 32 == 0) row_d[row] = dsum;
}

/* Rows [0, n_rows) (tok apart), columns [0, dim) of a head into a
   [ROWS][DB + 4] float tile, zeros elsewhere (products over DB stay exact). */
template <typename T, int ROWS, int DB, int NT>
static __device__ __forceinline__ void mlk_cuda__attn_bwd_load(float *tile, const T *__restrict__ rows, size_t tok,
                                                               int n_rows, int dim)
{
    for (int at = threadIdx.x; at < ROWS * DB; at += NT) {
        int r = at / DB, e = at % DB;
        tile[r * (DB + 4) + e] = r < n_rows && e < dim ? mlk_cuda__to_float(rows[(size_t)r * tok + e]) : 0.0f;
    }
}

/* lse * log2(e) and D of rows [q0, q0 + BQ) of row set bh = b * heads + h;
   rows past len_q get lse = -inf (no gradient). */
template <int BQ>
static __device__ __forceinline__ void mlk_cuda__attn_bwd_load_rows(float *lse2_s, float *d_s,
    const float *__restrict__ lse, const float *__restrict__ row_d, const mlk_cuda__attn_bwd_geom &g, int bh, int q0)
{
    for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
        size_t at = (size_t)bh * g.len_q + q0 + r;
        lse2_s[r] = q0 + r < g.len_q ? lse[at] * MLK_CUDA__LOG2E : -INFINITY;
        d_s[r] = q0 + r < g.len_q ? row_d[at] : 0.0f;
    }
}

static __device__ __forceinline__ float4 mlk_cuda__attn_bwd_ld4(const float *p) { return *(const float4 *)p; }

/* acc[0..3] += w * x[0..3] */
static __device__ __forceinline__ void mlk_cuda__attn_bwd_axpy4(float *acc, float w, float4 x)
{
    acc[0] += w * x.x;
    acc[1] += w * x.y;
    acc[2] += w * x.z;
    acc[3] += w * x.w;
}

/* dS and P (with VIS: 1 for a visible pair, else 0) of the BQ x BKV tile
   of queries q0.. and keys kv0.. from the Q, dO, K, V tiles, in the
   forward's base-2 logits. A thread takes PER_THREAD pairs of one key
   (rows RSTEP apart: each K and V load serves all of them); SPLIT
   adjacent threads share the pairs when the tile has fewer pairs than
   the block has threads. */
template <int DB, bool VIS>
static __device__ __forceinline__ void mlk_cuda__attn_bwd_scores(const float *qs, const float *dos, const float *ks,
    const float *vs, const float *lse2_s, const float *d_s, const mlk_cuda__attn_mask &m,
    const mlk_cuda__attn_bwd_geom &g, int q0, int kv0, float *ps, float *dss)
{
    typedef mlk_cuda__attn_bwd_tiles<DB> tl;
    constexpr int PAIRS = tl::BQ * tl::BKV, SPLIT = tl::NT > PAIRS ? tl::NT / PAIRS : 1;
    constexpr int PER_THREAD = PAIRS * SPLIT / tl::NT, RSTEP = tl::NT / SPLIT / tl::BKV;
    static_assert(tl::NT / SPLIT % tl::BKV == 0, "a thread's pairs share their key");
    const int part = threadIdx.x % SPLIT, c = threadIdx.x / SPLIT % tl::BKV, r0 = threadIdx.x / SPLIT / tl::BKV;
    const float *kc = ks + c * tl::LD, *vc = vs + c * tl::LD;
    float s[PER_THREAD], dp[PER_THREAD];
#pragma unroll
    for (int n = 0; n < PER_THREAD; n++) s[n] = dp[n] = 0.0f;
#pragma unroll 2
    for (int e = 4 * part; e < g.head_dim; e += 4 * SPLIT) { /* the zero columns past head_dim add nothing */
        float4 k4 = mlk_cuda__attn_bwd_ld4(kc + e), v4 = mlk_cuda__attn_bwd_ld4(vc + e);
#pragma unroll
        for (int n = 0; n < PER_THREAD; n++) {
            float4 q4 = mlk_cuda__attn_bwd_ld4(qs + (r0 + n * RSTEP) * tl::LD + e);
            float4 o4 = mlk_cuda__attn_bwd_ld4(dos + (r0 + n * RSTEP) * tl::LD + e);
            s[n] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
            dp[n] += o4.x * v4.x + o4.y * v4.y + o4.z * v4.z + o4.w * v4.w;
        }
    }
#pragma unroll
    for (int n = 0; n < PER_THREAD; n++) {
#pragma unroll
        for (int off = SPLIT / 2; off > 0; off >>= 1) {
            s[n] += __shfl_xor_sync(0xFFFFFFFFu, s[n], off);
            dp[n] += __shfl_xor_sync(0xFFFFFFFFu, dp[n], off);
        }
        if (part) continue;
        int r = r0 + n * RSTEP, i = q0 + r;
        float dot = g.lg.q_scale * s[n], cap_grad = 1.0f;
        bool seen = lse2_s[r] > -INFINITY &&
                    mlk_cuda__attn_visible(m, i, kv0 + c, mlk_cuda__attn_tree_bits(m, i, kv0) >> c & 1u);
        if (g.lg.cap > 0.0f) { /* 1 / cosh^2, not 1 - tanh^2, which cancels where tanh saturates */
            float ch = coshf(dot / g.lg.cap);
            cap_grad = 1.0f / (ch * ch);
        }
        float p = seen ? exp2f(mlk_cuda__attn_logit2(g.lg, dot) - lse2_s[r]) : 0.0f;
        /* p = 0 gives dS = 0 even where a masked value made dP NaN */
        dss[r * tl::LDS + c] = p != 0.0f ? p * (dp[n] - d_s[r]) * cap_grad : 0.0f;
        ps[r * tl::LDS + c] = VIS ? (seen ? 1.0f : 0.0f) : p;
    }
}

/* One block per (batch, kv head, KV tile): dK, dV of BKV keys in
   registers, thread t owning key t / L and the columns of chunks
   t % L + j L (acc[4 j ..]). */
template <typename T, int DB>
__global__ void __launch_bounds__(mlk_cuda__attn_bwd_tiles<DB>::NT, 2)
mlk_cuda__attn_bwd_dkdv_kernel(mlk_cuda__attn_bwd_geom g, const T *__restrict__ q, const T *__restrict__ k,
                               const T *__restrict__ v, const T *__restrict__ dout, const float *__restrict__ lse,
                               const float *__restrict__ row_d, T *__restrict__ dk, T *__restrict__ dv)
{
    typedef mlk_cuda__attn_bwd_tiles<DB> tl;
    constexpr int L = tl::NT / tl::BKV, PER = DB / L;
    float *ks = (float *)mlk_cuda__dynamic_smem(), *vs = ks + tl::BKV * tl::LD, *qs = vs + tl::BKV * tl::LD;
    float *dos = qs + tl::BQ * tl::LD, *ps = dos + tl::BQ * tl::LD, *dss = ps + tl::BQ * tl::LDS;
    float *lse2_s = dss + tl::BQ * tl::LDS, *d_s = lse2_s + tl::BQ;
    /* the first KV tiles first: under a causal mask the most queries see them */
    int n_tiles = (g.len_kv + tl::BKV - 1) / tl::BKV, tile = (int)(blockIdx.x % n_tiles);
    int kvh = (int)(blockIdx.x / n_tiles % g.kv_heads), b = (int)(blockIdx.x / n_tiles / g.kv_heads);
    int kv0 = tile * tl::BKV, nk = g.len_kv - kv0 < tl::BKV ? g.len_kv - kv0 : tl::BKV;
    int c = threadIdx.x / L, e0 = 4 * (threadIdx.x % L);
    float acc_dk[PER], acc_dv[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) acc_dk[j] = acc_dv[j] = 0.0f;
    mlk_cuda__attn_mask m = mlk_cuda__attn_bwd_mask(g, b);
    if (kv0 < m.n_keys) { /* a tile past kv_len: no query sees it, its gradients are 0 */
        size_t kv_at = mlk_cuda__attn_bwd_kv_at(g, b, kvh, kv0);
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(ks, k + kv_at, g.kv_tok, nk, g.head_dim);
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(vs, v + kv_at, g.kv_tok, nk, g.head_dim);
        for (int h = kvh * g.group; h < (kvh + 1) * g.group; h++)
            for (int q0 = 0; q0 < g.len_q; q0 += tl::BQ) {
                int lo, hi, nq = g.len_q - q0 < tl::BQ ? g.len_q - q0 : tl::BQ;
                mlk_cuda__attn_key_range(m, q0, q0 + nq, &lo, &hi);
                if (hi <= kv0 || lo >= kv0 + nk) continue; /* the same for the whole block */
                size_t q_at = mlk_cuda__attn_bwd_q_at(g, b, h, q0);
                mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(qs, q + q_at, g.q_tok, nq, g.head_dim);
                mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(dos, dout + q_at, g.q_tok, nq, g.head_dim);
                mlk_cuda__attn_bwd_load_rows<tl::BQ>(lse2_s, d_s, lse, row_d, g, b * g.heads + h, q0);
                __syncthreads();
                mlk_cuda__attn_bwd_scores<DB, false>(qs, dos, ks, vs, lse2_s, d_s, m, g, q0, kv0, ps, dss);
                __syncthreads();
                for (int r = 0; r < tl::BQ; r++) {
                    float p = ps[r * tl::LDS + c], ds = dss[r * tl::LDS + c];
#pragma unroll
                    for (int j = 0; j < PER; j += 4) {
                        mlk_cuda__attn_bwd_axpy4(acc_dv + j, p, mlk_cuda__attn_bwd_ld4(dos + r * tl::LD + e0 + j * L));
                        mlk_cuda__attn_bwd_axpy4(acc_dk + j, ds, mlk_cuda__attn_bwd_ld4(qs + r * tl::LD + e0 + j * L));
                    }
                }
                __syncthreads(); /* every owner has read the tiles before the next load */
            }
    }
    if (c >= nk) return;
    size_t at = mlk_cuda__attn_bwd_kv_at(g, b, kvh, kv0 + c);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int e = e0 + j / 4 * 4 * L + j % 4;
        if (e >= g.head_dim) continue;
        if (dk) dk[at + e] = mlk_cuda__from_float<T>(g.scale * acc_dk[j]);
        if (dv) dv[at + e] = mlk_cuda__from_float<T>(acc_dv[j]);
    }
}

/* One block per (batch, head, q tile): dQ of BQ rows in registers, thread
   t owning row t / L and the columns of chunks t % L + j L, over the KV
   tiles in order. */
template <typename T, int DB>
__global__ void __launch_bounds__(mlk_cuda__attn_bwd_tiles<DB>::NT, 2)
mlk_cuda__attn_bwd_dq_kernel(mlk_cuda__attn_bwd_geom g, const T *__restrict__ q, const T *__restrict__ k,
                             const T *__restrict__ v, const T *__restrict__ dout, const float *__restrict__ lse,
                             const float *__restrict__ row_d, T *__restrict__ dq)
{
    typedef mlk_cuda__attn_bwd_tiles<DB> tl;
    constexpr int L = tl::NT / tl::BQ, PER = DB / L;
    float *ks = (float *)mlk_cuda__dynamic_smem(), *vs = ks + tl::BKV * tl::LD, *qs = vs + tl::BKV * tl::LD;
    float *dos = qs + tl::BQ * tl::LD, *vis = dos + tl::BQ * tl::LD, *dss = vis + tl::BQ * tl::LDS;
    float *lse2_s = dss + tl::BQ * tl::LDS, *d_s = lse2_s + tl::BQ;
    /* the last q tiles first: under a causal mask they see the most keys */
    int n_tiles = (g.len_q + tl::BQ - 1) / tl::BQ, tile = n_tiles - 1 - (int)(blockIdx.x % n_tiles);
    int h = (int)(blockIdx.x / n_tiles % g.heads), b = (int)(blockIdx.x / n_tiles / g.heads);
    int q0 = tile * tl::BQ, nq = g.len_q - q0 < tl::BQ ? g.len_q - q0 : tl::BQ, lo, hi;
    int r = threadIdx.x / L, e0 = 4 * (threadIdx.x % L), kvh = h / g.group;
    float acc[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) acc[j] = 0.0f;
    mlk_cuda__attn_mask m = mlk_cuda__attn_bwd_mask(g, b);
    size_t q_at = mlk_cuda__attn_bwd_q_at(g, b, h, q0);
    mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(qs, q + q_at, g.q_tok, nq, g.head_dim);
    mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(dos, dout + q_at, g.q_tok, nq, g.head_dim);
    mlk_cuda__attn_bwd_load_rows<tl::BQ>(lse2_s, d_s, lse, row_d, g, b * g.heads + h, q0);
    mlk_cuda__attn_key_range(m, q0, q0 + nq, &lo, &hi);
    for (int kv0 = lo; kv0 < hi; kv0 += tl::BKV) {
        int nk = hi - kv0 < tl::BKV ? hi - kv0 : tl::BKV;
        size_t kv_at = mlk_cuda__attn_bwd_kv_at(g, b, kvh, kv0);
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(ks, k + kv_at, g.kv_tok, nk, g.head_dim);
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(vs, v + kv_at, g.kv_tok, nk, g.head_dim);
        __syncthreads();
        mlk_cuda__attn_bwd_scores<DB, true>(qs, dos, ks, vs, lse2_s, d_s, m, g, q0, kv0, vis, dss);
        __syncthreads();
        /* visible keys only: a masked key's non-finite K row must not turn
           dS = 0 into NaN */
        for (int c = 0; c < tl::BKV; c++) {
            if (vis[r * tl::LDS + c] == 0.0f) continue;
            float ds = dss[r * tl::LDS + c];
#pragma unroll
            for (int j = 0; j < PER; j += 4)
                mlk_cuda__attn_bwd_axpy4(acc + j, ds, mlk_cuda__attn_bwd_ld4(ks + c * tl::LD + e0 + j * L));
        }
        __syncthreads(); /* every owner has read K before the next load */
    }
    if (r >= nq) return;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int e = e0 + j / 4 * 4 * L + j % 4;
        if (e < g.head_dim) dq[q_at + (size_t)r * g.q_tok + e] = mlk_cuda__from_float<T>(g.scale * acc[j]);
    }
}

/* Scratch: the staged arrays, then D [B, Hq, Nq]. */
static inline size_t mlk_cuda__attn_bwd_bytes(const mlk_cuda__attn_desc &checked)
{
    return checked.staged_bytes +
           mlk_cuda__round((size_t)checked.batch * checked.heads * checked.len_q * sizeof(float));
}

MLKERN_CUDA_DEF size_t mlk_cuda_attn_bwd_workspace_size(const mlk_attn_desc *d)
{
    mlk_cuda__attn_bwd_geom g;
    mlk_cuda__attn_desc checked;
    return mlk_cuda__attn_bwd_prepare(d, &g, &checked) == MLK_OK ? mlk_cuda__attn_bwd_bytes(checked) : 0;
}

template <typename T, int DB>
static inline cudaError_t mlk_cuda__attn_bwd_launch(const mlk_cuda__attn_bwd_geom &g, const T *q, const T *k,
    const T *v, const T *dout, const float *lse, const float *row_d, T *dq, T *dk, T *dv, cudaStream_t stream)
{
    typedef mlk_cuda__attn_bwd_tiles<DB> tl;
    cudaError_t e = cudaSuccess;
    if (dk || dv) {
        size_t blocks = (size_t)g.batch * g.kv_heads * ((g.len_kv + tl::BKV - 1) / tl::BKV);
        e = mlk_cuda__launch(mlk_cuda__attn_bwd_dkdv_kernel<T, DB>, dim3((unsigned)blocks), dim3(tl::NT), tl::SMEM,
                             stream, g, q, k, v, dout, lse, row_d, dk, dv);
    }
    if (dq && e == cudaSuccess) {
        size_t blocks = (size_t)g.batch * g.heads * ((g.len_q + tl::BQ - 1) / tl::BQ);
        e = mlk_cuda__launch(mlk_cuda__attn_bwd_dq_kernel<T, DB>, dim3((unsigned)blocks), dim3(tl::NT), tl::SMEM,
                             stream, g, q, k, v, dout, lse, row_d, dq);
    }
    return e;
}

/* Shared by both launchers: checks, the scratch, the staged arrays (D's
   room follows them). */
static inline mlk_status mlk_cuda__attn_bwd_begin(const mlk_attn_desc *d, mlk_cuda__attn_bwd_geom *g,
    mlk_cuda__scratch *sc, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__attn_desc checked;
    mlk_status st = mlk_cuda__attn_bwd_prepare(d, g, &checked);
    if (st != MLK_OK) return st;
    /* the grids: at least 8 rows or keys per block */
    if ((size_t)g->batch * g->heads * ((g->len_q + 7) / 8) > (size_t)INT_MAX ||
        (size_t)g->batch * g->kv_heads * ((g->len_kv + 7) / 8) > (size_t)INT_MAX)
        return MLK_ERR_OVERFLOW;
    mlk_cuda__staging hs = {NULL, checked.staged_bytes};
    if (hs.bytes && !(hs.host = (unsigned char *)malloc(hs.bytes))) return MLK_ERR_NOMEM;
    st = mlk_cuda__scratch_init(sc, workspace, workspace_bytes, mlk_cuda__attn_bwd_bytes(checked), stream);
    if (st != MLK_OK) {
        free(hs.host);
        return st;
    }
    cudaError_t e = mlk_cuda__attn_bwd_stage(d, g, sc, hs, stream);
    return e == cudaSuccess ? MLK_OK : mlk_cuda__scratch_done(sc, mlk_cuda__fail(e), stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_bwd(const mlk_attn_desc *d, const T *q, const T *k, const T *v, const T *o,
    const T *dout, const float *lse, T *dq, T *dk, T *dv, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__attn_bwd_geom g;
    mlk_cuda__scratch sc;
    if (!d || !q || !k || !v || !o || !dout || !lse) return MLK_ERR_NULL;
    if (!dq && !dk && !dv) {
        mlk_cuda__attn_desc checked;
        return mlk_cuda__attn_bwd_prepare(d, &g, &checked);
    }
    mlk_status st = mlk_cuda__attn_bwd_begin(d, &g, &sc, workspace, workspace_bytes, stream);
    if (st != MLK_OK) return st;
    size_t rows = (size_t)g.batch * g.heads * g.len_q;
    float *row_d = mlk_cuda__take<float>(&sc, rows);
    cudaError_t e = mlk_cuda__launch(mlk_cuda__attn_bwd_d_kernel<T>, dim3((unsigned)((rows + 7) / 8)), dim3(256), 0,
                                     stream, g, o, dout, row_d);
    if (e == cudaSuccess) {
        auto launch = g.head_dim <= 32 ? mlk_cuda__attn_bwd_launch<T, 32>
                      : g.head_dim <= 64 ? mlk_cuda__attn_bwd_launch<T, 64>
                      : g.head_dim <= 128 ? mlk_cuda__attn_bwd_launch<T, 128>
                                          : mlk_cuda__attn_bwd_launch<T, 256>;
        e = launch(g, q, k, v, dout, lse, row_d, dq, dk, dv, stream);
    }
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

/* dsinks[h]: one block of MLK_CUDA__SINK_WARPS warps per head; warp w
   takes rows w, w + MLK_CUDA__SINK_WARPS, ... of the head (batch items,
   then queries), its lane 0 sums them in double, then thread 0 the warps
   in order. */
#define MLK_CUDA__SINK_WARPS 32
template <typename T>
__global__ void __launch_bounds__(32 * MLK_CUDA__SINK_WARPS)
mlk_cuda__attn_sinks_grad_kernel(mlk_cuda__attn_bwd_geom g, const T *__restrict__ o, const T *__restrict__ dout,
                                 const float *__restrict__ lse, float *__restrict__ dsinks)
{
    __shared__ double part[MLK_CUDA__SINK_WARPS];
    int h = blockIdx.x, warp = threadIdx.x / 32;
    double sum = 0.0;
    for (size_t row = warp; row < (size_t)g.batch * g.len_q; row += MLK_CUDA__SINK_WARPS) { /* warp-uniform */
        int b = (int)(row / g.len_q), i = (int)(row % g.len_q);
        size_t at = mlk_cuda__attn_bwd_q_at(g, b, h, i);
        float dsum = mlk_cuda__attn_row_d(o + at, dout + at, g.head_dim);
        float l = lse[((size_t)b * g.heads + h) * g.len_q + i];
        if (l > -INFINITY) sum += exp((double)g.sinks[h] - (double)l) * (double)dsum;
    }
    if (threadIdx.x % 32 == 0) part[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < MLK_CUDA__SINK_WARPS; w++) total += part[w];
        dsinks[h] = (float)-total;
    }
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_sinks_grad(const mlk_attn_desc *d, const T *o, const T *dout,
    const float *lse, float *dsinks, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__attn_bwd_geom g;
    mlk_cuda__scratch sc;
    if (!d || !o || !dout || !lse || !dsinks || !d->sinks) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__attn_bwd_begin(d, &g, &sc, workspace, workspace_bytes, stream);
    if (st != MLK_OK) return st;
    cudaError_t e = mlk_cuda__launch(mlk_cuda__attn_sinks_grad_kernel<T>, dim3((unsigned)g.heads),
                                     dim3(32 * MLK_CUDA__SINK_WARPS), 0, stream, g, o, dout, lse, dsinks);
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

#define MLK_CUDA__ATTN_BWD_INSTANTIATE(T)                                                                         \
    template mlk_status mlk_cuda_attn_bwd(const mlk_attn_desc *, const T *, const T *, const T *, const T *,      \
                                          const T *, const float *, T *, T *, T *, void *, size_t, cudaStream_t); \
    template mlk_status mlk_cuda_attn_sinks_grad(const mlk_attn_desc *, const T *, const T *, const float *,      \
                                                 float *, void *, size_t, cudaStream_t);
MLK_CUDA__ATTN_BWD_INSTANTIATE(float)
MLK_CUDA__ATTN_BWD_INSTANTIATE(__nv_bfloat16)
MLK_CUDA__ATTN_BWD_INSTANTIATE(__half)
#undef MLK_CUDA__ATTN_BWD_INSTANTIATE

#endif /* MLKERN_CUDA_ATTN_BWD_DONE */
#endif /* MLKERN_CUDA_IMPLEMENTATION */

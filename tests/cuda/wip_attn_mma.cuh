/* wip_attn_mma.cuh - the bf16 / fp16 tensor-core attention forward: a
   second kernel behind mlk_cuda_attn_fwd (wip_attn.cuh) for dense q, k, v
   of 16-bit types. Written as a part of the attention section of
   mlkern_cuda.cuh and to be pasted there after the SIMT forward; include
   it after wip_attn.cuh (tests: with MLKCT_HEADER_IMPL defined).

   ---- manual text for the top of mlkern_cuda.cuh (KERNELS, attention) ----

   bf16 / fp16 tensors of head_dim 64, 96 or 128 without a tree mask run
   on tensor cores (mma.sync m16n8k16, fp32 accumulators), FlashAttention-2
   style: a block of 4 warps takes 64 rows of a kv head's (query, head)
   rows, query-major as the SIMT kernel's, each warp 16 rows whose Q
   fragments stay in registers; K and V tiles of 32 keys stream through two
   shared buffers by cp.async, the next tile's copies in flight while the
   current one is multiplied. S = Q K^T, the mask, and the online softmax
   in base 2 (log2(e) folded into the scale) run on the accumulator
   fragments in registers; P, rounded to T in registers, is the A operand
   of P V (V through ldmatrix.trans). Only the keys some row of the block
   sees are visited (the SIMT kernel's key range); tiles inside the band
   skip the per-element mask. Other calls take the SIMT kernel: q / k / v
   not 16-byte aligned, and decode steps (fewer than 16 rows per kv head,
   where the SIMT kernel's split key ranges keep the GPU busy). Differences from it: P is rounded to T
   before P V (as FlashAttention does; the error stays within twice that
   of a bf16 / fp16 matmul-softmax-matmul), and a value row holding inf or
   NaN that one row of a block sees makes the block's other rows NaN too
   (0 * inf in the product), where the SIMT kernel skips keys a row cannot
   see.

   ---- internal interface (for the front end in wip_attn.cuh) ----
   mlk_cuda__attn_fwd_mma_supported<T>(d, q, k, v)
                                  true when this kernel takes the call
                                  (d already checked by mlk_cuda__attn_check)
   mlk_cuda__attn_fwd_mma(f, batch, stream)
                                  launches it for the dense front end f as
                                  mlk_cuda_attn_fwd builds it (its own row
                                  tiles; never split, so no partial state)
*/

#ifdef MLKERN_CUDA_IMPLEMENTATION
#ifndef MLKERN_CUDA_ATTN_MMA_IMPLEMENTATION_DONE
#define MLKERN_CUDA_ATTN_MMA_IMPLEMENTATION_DONE

/* ======================================================================
   attention forward on tensor cores (bf16 / fp16, head_dim 64, 96, 128)
   ====================================================================== */

#define MLK_CUDA__MMA_ROWS 64 /* rows per block: 16 per warp */
#define MLK_CUDA__MMA_KEYS 32 /* keys per K / V tile */

/* Shared rows are D + 8 elements: the 8 rows an ldmatrix reads fall on
   distinct banks. Layout: K [2][32][pitch], then V [2][32][pitch]; the Q
   tile [64][pitch] is staged over the K buffers before the first tile. */
template <int D> struct mlk_cuda__mma_geom {
    static const int PITCH = D + 8, CHUNKS = D / 8; /* 16-byte chunks per row */
    static const int BUF = MLK_CUDA__MMA_KEYS * PITCH;
    static constexpr size_t SMEM = 4 * (size_t)BUF * 2;
};

/* Two floats as one register of T pairs, the first in the low half. */
template <typename T> static __device__ __forceinline__ uint32_t mlk_cuda__pack2(float lo, float hi)
{
    T h[2] = {mlk_cuda__from_float<T>(lo), mlk_cuda__from_float<T>(hi)};
    uint32_t u;
    memcpy(&u, h, sizeof u);
    return u;
}

/* Keys k0 .. k0+31 of the task's kv head into one K and one V buffer;
   keys at or past t.hi are zero-filled (never NaN in P V). */
template <typename T, int D>
static __device__ __forceinline__ void mlk_cuda__mma_load_kv(const mlk_cuda__attn_dense<T> &f,
                                                             const mlk_cuda__attn_task &t, int k0, T *k_dst,
                                                             T *v_dst)
{
    typedef mlk_cuda__mma_geom<D> G;
    for (int x = threadIdx.x; x < MLK_CUDA__MMA_KEYS * G::CHUNKS; x += blockDim.x) {
        int j = x / G::CHUNKS, e = x % G::CHUNKS * 8;
        bool in = k0 + j < t.hi;
        mlk_cuda__cp_async16_zfill(k_dst + j * G::PITCH + e, in ? f.row(0, t.item, t.kvh, k0 + j) + e : f.k,
                                   in ? 16 : 0);
        mlk_cuda__cp_async16_zfill(v_dst + j * G::PITCH + e, in ? f.row(1, t.item, t.kvh, k0 + j) + e : f.v,
                                   in ? 16 : 0);
    }
}

/* A row's online state before any key: the sink's share of the sum sits
   on the first lane of the row's quad (a row's sum is spread over 4 lanes). */
static __device__ __forceinline__ mlk_cuda__attn_online mlk_cuda__mma_row_start(const mlk_cuda__attn_common &c,
                                                                               int h, bool valid)
{
    mlk_cuda__attn_online st = mlk_cuda__attn_online_start(valid && c.sinks ? c.sinks[h] : -INFINITY);
    st.l = st.m > -INFINITY && threadIdx.x % 4 == 0 ? 1.0f : 0.0f;
    return st;
}

static __device__ __forceinline__ float mlk_cuda__quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, 2));
}

static __device__ __forceinline__ float mlk_cuda__quad_sum(float v)
{
    v += __shfl_xor_sync(0xFFFFFFFFu, v, 1);
    return v + __shfl_xor_sync(0xFFFFFFFFu, v, 2);
}

/* Block x = (item, 64-row tile) * kv_heads + kv head. Lane l of warp w
   holds rows w * 16 + l / 4 and that + 8 of the tile (half 0 and 1 of
   every accumulator fragment), columns 2 (l % 4) and the next of each
   8-wide piece of S (keys) and O (head_dim). */
template <typename T, int D>
__global__ void __launch_bounds__(128) mlk_cuda__attn_mma_kernel(mlk_cuda__attn_dense<T> f)
{
    typedef mlk_cuda__mma_geom<D> G;
    const int KT = MLK_CUDA__MMA_KEYS, P = G::PITCH;
    const mlk_cuda__attn_common &c = f.c;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, quad = lane % 4;
    mlk_cuda__attn_task t = mlk_cuda__attn_task_of<mlk_cuda__attn_dense<T>, MLK_CUDA__MMA_ROWS>(f, (int)blockIdx.x, 0);
    T *k_s = (T *)mlk_cuda__dynamic_smem(), *v_s = k_s + 2 * G::BUF;

    /* the Q tile: global -> shared (over the K buffers) -> A fragments, kept in registers */
    for (int x = threadIdx.x; x < MLK_CUDA__MMA_ROWS * G::CHUNKS; x += blockDim.x) {
        int r = x / G::CHUNKS, e = x % G::CHUNKS * 8, v = t.v0 + r;
        bool in = r < t.n_rows;
        const T *src = in ? f.q + f.q_at(t.item, v / c.group, t.kvh * c.group + v % c.group) + e : f.q;
        mlk_cuda__cp_async16_zfill(k_s + r * P + e, src, in ? 16 : 0);
    }
    mlk_cuda__cp_async_commit();
    mlk_cuda__cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++)
        mlk_cuda__ldmatrix_x4(qf[kc], k_s + (warp * 16 + lane % 16) * P + kc * 16 + 8 * (lane / 16));
    __syncthreads(); /* the K tiles overwrite the staged Q */

    int row[2], query[2];
    bool valid[2];
    mlk_cuda__attn_online st[2];
#pragma unroll
    for (int half = 0; half < 2; half++) {
        row[half] = warp * 16 + lane / 4 + 8 * half;
        int v = t.v0 + row[half];
        query[half] = v / c.group;
        valid[half] = row[half] < t.n_rows;
        st[half] = mlk_cuda__mma_row_start(c, t.kvh * c.group + v % c.group, valid[half]);
    }
    const int first_query = (t.v0 + warp * 16) / c.group, off = t.m.n_keys - t.m.n_q;
    float o_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
        for (int i = 0; i < 4; i++) o_acc[dt][i] = 0.0f;

    const int n_tiles = (t.hi - t.lo + KT - 1) / KT;
    if (n_tiles > 0) mlk_cuda__mma_load_kv<T, D>(f, t, t.lo, k_s, v_s);
    mlk_cuda__cp_async_commit();
    for (int j = 0; j < n_tiles; j++) {
        const int k0 = t.lo + j * KT, buf = j & 1;
        if (j + 1 < n_tiles)
            mlk_cuda__mma_load_kv<T, D>(f, t, k0 + KT, k_s + (buf ^ 1) * G::BUF, v_s + (buf ^ 1) * G::BUF);
        mlk_cuda__cp_async_commit(); /* perhaps empty: wait<1> then always means "tile j is here" */
        mlk_cuda__cp_async_wait<1>();
        __syncthreads();
        const T *ks = k_s + buf * G::BUF, *vs = v_s + buf * G::BUF;

        float s[KT / 8][4];
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++)
            for (int i = 0; i < 4; i++) s[nt][i] = 0.0f;
#pragma unroll
        for (int kc = 0; kc < D / 16; kc++)
#pragma unroll
            for (int np = 0; np < KT / 16; np++) { /* keys 16 np .. 16 np + 15: two n8 pieces */
                uint32_t r[4];
                int key = np * 16 + lane % 8 + 8 * (lane / 16), col = kc * 16 + 8 * (lane / 8 % 2);
                mlk_cuda__ldmatrix_x4(r, ks + key * P + col);
                mlk_cuda__mma_m16n8k16<T>(s[2 * np], qf[kc], r);
                mlk_cuda__mma_m16n8k16<T>(s[2 * np + 1], qf[kc], r + 2);
            }

        /* inside the band for every row of the warp: no per-key test */
        bool full = k0 + KT <= t.hi && c.window == 0 && (!c.causal || k0 + KT - 1 <= first_query + off);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < KT / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int key = k0 + nt * 8 + 2 * quad + e;
                    float &x = s[nt][2 * half + e];
                    bool vis = valid[half] &&
                               (full ? key < t.hi : mlk_cuda__attn_visible(t.m, query[half], key, false));
                    x = vis ? mlk_cuda__attn_logit2(c.lg, x * c.lg.q_scale) : -INFINITY;
                    mx = fmaxf(mx, x);
                }
            float alpha = mlk_cuda__attn_online_rescale(&st[half], mlk_cuda__quad_max(mx)), sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < KT / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = s[nt][2 * half + e];
                    x = x > -INFINITY ? exp2f(x - st[half].m) : 0.0f;
                    sum += x;
                }
            st[half].l = st[half].l * alpha + sum;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                o_acc[dt][2 * half] *= alpha;
                o_acc[dt][2 * half + 1] *= alpha;
            }
        }

        /* P's accumulator pieces 2kc and 2kc+1 are the A fragment of keys 16kc .. 16kc+15 */
#pragma unroll
        for (int kc = 0; kc < KT / 16; kc++) {
            uint32_t pa[4] = {mlk_cuda__pack2<T>(s[2 * kc][0], s[2 * kc][1]),
                              mlk_cuda__pack2<T>(s[2 * kc][2], s[2 * kc][3]),
                              mlk_cuda__pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                              mlk_cuda__pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) { /* columns 16 dp .. 16 dp + 15: two n8 pieces */
                uint32_t r[4];
                mlk_cuda__ldmatrix_x4_trans(r, vs + (kc * 16 + lane % 16) * P + dp * 16 + 8 * (lane / 16));
                mlk_cuda__mma_m16n8k16<T>(o_acc[2 * dp], pa, r);
                mlk_cuda__mma_m16n8k16<T>(o_acc[2 * dp + 1], pa, r + 2);
            }
        }
        __syncthreads(); /* the next tile's copies overwrite this buffer */
    }

#pragma unroll
    for (int half = 0; half < 2; half++) {
        float l = mlk_cuda__quad_sum(st[half].l);
        if (!valid[half]) continue;
        /* l is 0 only for a row that saw nothing: o = 0, lse = -inf */
        float inv = l != 0.0f ? 1.0f / l : 0.0f;
        int v = t.v0 + row[half], h = t.kvh * c.group + v % c.group;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            f.store_o(t.item, query[half], h, dt * 8 + 2 * quad, o_acc[dt][2 * half] * inv);
            f.store_o(t.item, query[half], h, dt * 8 + 2 * quad + 1, o_acc[dt][2 * half + 1] * inv);
        }
        float *lse = f.lse_at(t.item, query[half], h);
        if (lse && quad == 0) *lse = mlk_cuda__attn_online_lse(st[half].m, l);
    }
}

template <typename T>
static inline bool mlk_cuda__attn_fwd_mma_supported(const mlk_attn_desc *d, const T *q, const T *k, const T *v)
{
    if (!std::is_same<T, __nv_bfloat16>::value && !std::is_same<T, __half>::value) return false;
    if (d->tree_parent || (d->head_dim != 64 && d->head_dim != 96 && d->head_dim != 128)) return false;
    int kv_heads = d->kv_heads ? d->kv_heads : d->heads;
    if ((long long)d->len_q * (d->heads / kv_heads) < 16) return false; /* decode: SIMT, which splits keys */
    return mlk_cuda__aligned16(q) && mlk_cuda__aligned16(k) && mlk_cuda__aligned16(v);
}

template <typename T, int D>
static inline cudaError_t mlk_cuda__attn_mma_run(const mlk_cuda__attn_dense<T> &f, unsigned blocks,
                                                 cudaStream_t stream)
{
    return mlk_cuda__launch(mlk_cuda__attn_mma_kernel<T, D>, dim3(blocks), dim3(128), mlk_cuda__mma_geom<D>::SMEM,
                            stream, f);
}

/* f as mlk_cuda_attn_fwd builds it for the SIMT kernel; this kernel's row
   tiles are its own, and it never splits a key range. */
template <typename T>
static inline cudaError_t mlk_cuda__attn_fwd_mma(const mlk_cuda__attn_dense<T> &f_simt, int batch,
                                                 cudaStream_t stream)
{
    if constexpr (!std::is_same<T, __nv_bfloat16>::value && !std::is_same<T, __half>::value) {
        return cudaErrorInvalidValue; /* mlk_cuda__attn_fwd_mma_supported says no */
    } else {
        mlk_cuda__attn_dense<T> f = f_simt;
        f.tiles_per_item = (f.len_q * f.c.group + MLK_CUDA__MMA_ROWS - 1) / MLK_CUDA__MMA_ROWS;
        f.c.n_tiles = f.tiles_per_item * batch;
        f.c.split_len = 0;
        unsigned blocks = (unsigned)((size_t)f.c.n_tiles * f.c.kv_heads);
        switch (f.c.head_dim) {
        case 64: return mlk_cuda__attn_mma_run<T, 64>(f, blocks, stream);
        case 96: return mlk_cuda__attn_mma_run<T, 96>(f, blocks, stream);
        default: return mlk_cuda__attn_mma_run<T, 128>(f, blocks, stream);
        }
    }
}

#endif /* MLKERN_CUDA_ATTN_MMA_IMPLEMENTATION_DONE */
#endif /* MLKERN_CUDA_IMPLEMENTATION */

/* wip_kvstore.cuh - device writes of the paged KV cache, to move into
   mlkern_cuda.cuh. Manual text for the top of mlkern_cuda.cuh:

   Paged KV cache: the bookkeeping stays in a host cache without storage
   (mlk_kv_create_bookkeeping), the rows in a device pool of
   layout.num_blocks * layout.block_bytes bytes in exactly the CPU's layout
   (mlk_kv_get_layout of that cache), so the bytes equal those a host cache
   fed the same calls would hold. Zero the pool once after allocating it
   (cudaMemset): row padding is never written, as on the CPU. A slot is a
   pool position, block * block_size + offset, with block from the
   sequence's table (mlk_kv_seq_blocks). Block copies are the host's
   (source, new block) pairs, done in order before anything else.
       template <typename T> mlk_status mlk_cuda_kv_store(
           const mlk_kv_layout *layout (host), void *pool, int n_copies,
           const int *copies (host), int layer, int n,
           const int64_t *slots, const T *k, const T *v, int *status,
           void *workspace, size_t workspace_bytes, cudaStream_t stream);
       size_t mlk_cuda_kv_store_workspace_size(const mlk_kv_layout *layout);
   mlk_kv_store's device twin, one call per layer: copies are the pairs
   mlk_kv_prepare_write reported for the rows' sequences (pass them with
   the first layer's call, n_copies 0 after), then n rows (any mix of
   sequences: row i goes to slots[i]) of k, v [n, kv_heads, head_dim]
   (float, bf16 or fp16, the CPU twin taking their float values) are
   written in the pool's row format: bitwise mlk_kv_store's encoding (F16
   rounding to nearest even and saturating at +-65504, Q8/Q4 scales and
   codes, Q4's low nibble first). Found on the device (*status, as the
   softmax family's): a NaN or inf into a Q8/Q4 pool (MLK_ERR_VALUE) or a
   slot outside the pool (MLK_ERR_ARG); then no row is written, while the
   block copies, which the host's bookkeeping already counts on, are made.
       mlk_status mlk_cuda_kv_compact(const mlk_kv_layout *layout (host),
           void *pool, int n_copies, const int *copies (host), int n_moves,
           const int64_t *moves (host), cudaStream_t stream);
   The device side of mlk_kv_prepare_compact: its block copies, then its
   row moves (source slot, destination slot) in order, each over every
   layer, K and V and kv head.
   Both check on the host that the layout is self-consistent, the pool
   16-byte aligned (cudaMalloc's is), layer and every block and slot they
   are given inside the pool (else MLK_ERR_ARG) and n >= 1 (MLK_ERR_SHAPE);
   nothing is enqueued on error. Device helpers shared with paged attention:
   mlk_cuda__row_f16_from_f32 and mlk_cuda__row_encode (one warp encodes
   one row). */

/* ---- declarations ---- */
#ifndef MLKERN_CUDA_KVSTORE_CUH
#define MLKERN_CUDA_KVSTORE_CUH

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_store(const mlk_kv_layout *layout, void *pool, int n_copies, const int *copies,
    int layer, int n, const int64_t *slots, const T *k, const T *v, int *status, void *workspace,
    size_t workspace_bytes, cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_kv_store_workspace_size(const mlk_kv_layout *layout);
MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_compact(const mlk_kv_layout *layout, void *pool, int n_copies,
    const int *copies, int n_moves, const int64_t *moves, cudaStream_t stream);

#endif /* MLKERN_CUDA_KVSTORE_CUH */

/* ---- implementation ---- */
#ifdef MLKERN_CUDA_IMPLEMENTATION
#ifndef MLKERN_CUDA_KVSTORE_DONE
#define MLKERN_CUDA_KVSTORE_DONE

/* ---- KV row formats (mlkern.h's mlk__row_*): one row = head_dim values
   of one head; Q8/Q4 rows hold ceil(head_dim / 32) float scales, then the
   codes. */
#define MLK_CUDA__ROW_QBLOCK 32
#define MLK_CUDA__QUANT_TINY 7.888609052210118e-31f /* mlkern.h's MLK__QUANT_TINY, 2^-100 */

/* f32 -> f16 bits, mlkern.h's scalar conversion step for step: round to
   nearest even, clamped to +-65504, NaN to the quiet NaN 0x7e00 (sign kept). */
static __device__ __forceinline__ unsigned short mlk_cuda__row_f16_from_f32(float f)
{
    if (f > 65504.0f) f = 65504.0f;
    if (f < -65504.0f) f = -65504.0f;
    unsigned x = __float_as_uint(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
    if (x >= 0x38800000u) { /* a normal half: rebias the exponent, round off 13 bits */
        x -= 0x38000000u;
        return (unsigned short)(sign | ((x + 0xfffu + ((x >> 13) & 1u)) >> 13));
    }
    if (x < 0x33000000u) return (unsigned short)sign; /* below half the smallest subnormal */
    unsigned mant = (x & 0x7fffffu) | 0x800000u;      /* value = mant * 2^(e - 150) */
    int shift = 126 - (int)(x >> 23);                 /* in units of 2^-24 */
    unsigned q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (unsigned short)(sign | q);
}

/* mlkern.h's mlk__quant_sym for one element of a block of finite values
   with max |x| = amax: its code in [-qmax, qmax], rounding half away from
   zero; *scale gets the block's scale. The same operations, unfused. */
static __device__ __forceinline__ int mlk_cuda__quant_sym(float x, float amax, int qmax, float *scale)
{
    if (amax == 0.0f) {
        *scale = 0.0f;
        return 0;
    }
    if (amax >= MLK_CUDA__QUANT_TINY) {
        float v = __fmul_rn(x, __fdiv_rn((float)qmax, amax));
        int t = (int)v;
        float frac = __fsub_rn(v, (float)t);
        t += (frac >= 0.5f) - (frac <= -0.5f);
        *scale = __fdiv_rn(amax, (float)qmax);
        return t > qmax ? qmax : (t < -qmax ? -qmax : t);
    }
    /* tiny blocks in double, the scale rounded up so that no code clamps */
    double exact = (double)amax / qmax;
    float s = (float)exact;
    if ((double)s < exact) s = nextafterf(s, INFINITY);
    double v = (double)x / (double)s;
    *scale = s;
    return (int)(v >= 0 ? floor(v + 0.5) : -floor(0.5 - v));
}

/* The 32 lanes of a warp encode the d values x (any dtype) into row, in
   the row format of type: bitwise mlkern.h's mlk__row_encode. Lane l
   takes element 32 c + l of each quantisation block c. */
template <typename T>
static __device__ __forceinline__ void mlk_cuda__row_encode(mlk_kv_type type, int d, const T *__restrict__ x,
                                                            unsigned char *__restrict__ row)
{
    int lane = threadIdx.x % 32, nb = (d + MLK_CUDA__ROW_QBLOCK - 1) / MLK_CUDA__ROW_QBLOCK;
    unsigned char *data = row + 4 * (size_t)nb;
    for (int b0 = 0; b0 < d; b0 += MLK_CUDA__ROW_QBLOCK) { /* the same trip count for the whole warp */
        int e = b0 + lane;
        float v = e < d ? mlk_cuda__to_float(x[e]) : 0.0f;
        if (type == MLK_KV_F32) {
            if (e < d) ((float *)row)[e] = v;
            continue;
        }
        if (type == MLK_KV_F16) {
            if (e < d) ((unsigned short *)row)[e] = mlk_cuda__row_f16_from_f32(v);
            continue;
        }
        float amax = fabsf(v), scale;
        for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
        int q = mlk_cuda__quant_sym(v, amax, type == MLK_KV_Q8 ? 127 : 7, &scale);
        int q_next = __shfl_down_sync(0xFFFFFFFFu, q, 1);
        if (lane == 0) ((float *)row)[b0 / MLK_CUDA__ROW_QBLOCK] = scale;
        if (type == MLK_KV_Q8) {
            if (e < d) data[e] = (unsigned char)(signed char)q;
        } else if (lane % 2 == 0 && e < d) { /* b0 is even: an element pair shares a byte */
            data[e / 2] = (unsigned char)((q + 8) | (e + 1 < d ? (q_next + 8) << 4 : 0));
        }
    }
}

/* ---- pool addressing ---- */

/* The layout's strides as the kernels take them. */
struct mlk_cuda__kv_geom {
    long long total_slots;
    size_t row_bytes, block_bytes, layer_stride, kv_stride, head_stride;
    int block_size, kv_heads, head_dim, layers;
    mlk_kv_type type;
};

static __device__ __forceinline__ size_t mlk_cuda__kv_slot_off(const mlk_cuda__kv_geom &g, long long slot)
{
    return (size_t)(slot / g.block_size) * g.block_bytes + (size_t)(slot % g.block_size) * g.row_bytes;
}

/* Up to MLK_CUDA__KV_PAIRS (source, destination) pairs per launch, by
   value: block ids for copies, slots for moves. */
#define MLK_CUDA__KV_PAIRS 64
struct mlk_cuda__kv_pairs {
    int n;
    long long src[MLK_CUDA__KV_PAIRS], dst[MLK_CUDA__KV_PAIRS];
};

/* Pair i, in order, copies pool block src to block dst (unit_words words
   W each). A thread copies the same words in every pair, so a pair that
   reads what an earlier one wrote sees it, with no barrier. */
template <typename W>
__global__ void __launch_bounds__(256)
mlk_cuda__kv_copy_kernel(size_t unit_words, mlk_cuda__kv_pairs pairs, W *pool)
{
    for (size_t w = (size_t)blockIdx.x * blockDim.x + threadIdx.x; w < unit_words; w += (size_t)gridDim.x * blockDim.x)
        for (int i = 0; i < pairs.n; i++) pool[(size_t)pairs.dst[i] * unit_words + w] = pool[(size_t)pairs.src[i] * unit_words + w];
}

/* Move i, in order, copies the rows of slot src to slot dst in every
   plane (layer, K / V, head); thread t owns word t % row_words of plane
   t / row_words in every move, so moves stay ordered as in
   mlk_kv_compact without a barrier. */
template <typename W>
__global__ void __launch_bounds__(256)
mlk_cuda__kv_move_kernel(mlk_cuda__kv_geom g, mlk_cuda__kv_pairs moves, unsigned char *pool)
{
    size_t row_words = g.row_bytes / sizeof(W), t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t planes = (size_t)g.layers * 2 * g.kv_heads;
    if (t >= planes * row_words) return;
    size_t plane = t / row_words, word = t % row_words;
    size_t base = (plane / (2 * (size_t)g.kv_heads)) * g.layer_stride +
                  (plane / g.kv_heads % 2) * g.kv_stride + (plane % g.kv_heads) * g.head_stride;
    for (int i = 0; i < moves.n; i++) {
        const W *src = (const W *)(pool + base + mlk_cuda__kv_slot_off(g, moves.src[i]));
        W *dst = (W *)(pool + base + mlk_cuda__kv_slot_off(g, moves.dst[i]));
        dst[word] = src[word];
    }
}

/* ---- store ---- */

#define MLK_CUDA__KV_BAD_VALUE 1 /* a NaN or inf into a quantised pool */
#define MLK_CUDA__KV_BAD_SLOT 2

/* Flags what the host cannot see: slots outside the pool, non-finite
   values for Q8/Q4. */
template <typename T>
__global__ void __launch_bounds__(256)
mlk_cuda__kv_store_check_kernel(mlk_cuda__kv_geom g, int n, const int64_t *__restrict__ slots,
                                const T *__restrict__ k, const T *__restrict__ v, int *__restrict__ flag)
{
    size_t count = (size_t)n * g.kv_heads * g.head_dim, stride = (size_t)gridDim.x * blockDim.x;
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int bad = 0;
    for (size_t i = t; i < (size_t)n; i += stride)
        if (!(slots[i] >= 0 && slots[i] < g.total_slots)) bad |= MLK_CUDA__KV_BAD_SLOT;
    if (g.type == MLK_KV_Q8 || g.type == MLK_KV_Q4)
        for (size_t i = t; i < count; i += stride)
            if (!(fabsf(mlk_cuda__to_float(k[i])) < INFINITY && fabsf(mlk_cuda__to_float(v[i])) < INFINITY))
                bad |= MLK_CUDA__KV_BAD_VALUE;
    if (bad) atomicOr(flag, bad);
}

/* One warp per row (token i, K or V, head h) into its slot of the layer. */
#define MLK_CUDA__KV_WARPS 4
template <typename T>
__global__ void __launch_bounds__(32 * MLK_CUDA__KV_WARPS)
mlk_cuda__kv_store_kernel(mlk_cuda__kv_geom g, int layer, int n, const int64_t *__restrict__ slots,
                          const T *__restrict__ k, const T *__restrict__ v, const int *__restrict__ flag,
                          int *__restrict__ status, unsigned char *__restrict__ pool)
{
    if (status && blockIdx.x == 0 && threadIdx.x == 0)
        *status = (*flag & MLK_CUDA__KV_BAD_SLOT) ? (int)MLK_ERR_ARG : *flag ? (int)MLK_ERR_VALUE : (int)MLK_OK;
    size_t r = (size_t)blockIdx.x * MLK_CUDA__KV_WARPS + threadIdx.x / 32;
    if (*flag || r >= (size_t)n * 2 * g.kv_heads) return; /* a whole warp */
    size_t i = r / (2 * (size_t)g.kv_heads);
    int kv = (int)(r / g.kv_heads % 2), h = (int)(r % g.kv_heads);
    const T *x = (kv ? v : k) + (i * g.kv_heads + h) * g.head_dim;
    unsigned char *row = pool + mlk_cuda__kv_slot_off(g, slots[i]) + (size_t)layer * g.layer_stride +
                         (size_t)kv * g.kv_stride + (size_t)h * g.head_stride;
    mlk_cuda__row_encode<T>(g.type, g.head_dim, x, row);
}

/* ---- host side ---- */

/* The layout as the CPU cache exports it: every size >= 1, a known type,
   row bytes as mlk_kv_bytes_per_token counts them and mlk__kv_row's
   strides. */
static inline mlk_status mlk_cuda__kv_geometry(const mlk_kv_layout *l, mlk_cuda__kv_geom *g)
{
    mlk_kv_config cfg;
    size_t pair_bytes;
    cfg.layers = l->layers;
    cfg.kv_heads = l->kv_heads;
    cfg.head_dim = l->head_dim;
    cfg.block_size = l->block_size;
    cfg.num_blocks = l->num_blocks;
    cfg.max_seqs = 1;
    cfg.type = l->type;
    pair_bytes = mlk_kv_bytes_per_token(&cfg); /* 0 for a bad size or type */
    if (!pair_bytes || l->row_bytes * 2 * (size_t)l->kv_heads != pair_bytes ||
        l->head_stride != l->row_bytes * (size_t)l->block_size ||
        l->kv_stride != l->head_stride * (size_t)l->kv_heads || l->layer_stride != 2 * l->kv_stride ||
        l->block_bytes != l->layer_stride * (size_t)l->layers ||
        (size_t)l->num_blocks > SIZE_MAX / l->block_bytes)
        return MLK_ERR_ARG;
    g->total_slots = (long long)l->num_blocks * l->block_size;
    g->row_bytes = l->row_bytes;
    g->block_bytes = l->block_bytes;
    g->layer_stride = l->layer_stride;
    g->kv_stride = l->kv_stride;
    g->head_stride = l->head_stride;
    g->block_size = l->block_size;
    g->kv_heads = l->kv_heads;
    g->head_dim = l->head_dim;
    g->layers = l->layers;
    g->type = l->type;
    return MLK_OK;
}

/* pairs[2 i], pairs[2 i + 1] all in [0, limit) */
template <typename I> static inline bool mlk_cuda__kv_pairs_in(int count, const I *pairs, long long limit)
{
    for (int i = 0; i < 2 * count; i++)
        if (pairs[i] < 0 || (long long)pairs[i] >= limit) return false;
    return true;
}

/* Enqueues the pairs in launches of MLK_CUDA__KV_PAIRS, in order. */
template <typename I, typename F>
static inline cudaError_t mlk_cuda__kv_each_pairs(int count, const I *pairs, F launch)
{
    for (int at = 0; at < count; at += MLK_CUDA__KV_PAIRS) {
        mlk_cuda__kv_pairs p;
        p.n = count - at < MLK_CUDA__KV_PAIRS ? count - at : MLK_CUDA__KV_PAIRS;
        for (int i = 0; i < p.n; i++) {
            p.src[i] = (long long)pairs[2 * (at + i)];
            p.dst[i] = (long long)pairs[2 * (at + i) + 1];
        }
        cudaError_t e = launch(p);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

/* Blocks of 256 for a grid-stride loop over `threads` items: at most 1024. */
static inline unsigned mlk_cuda__kv_grid(size_t threads)
{
    size_t blocks = (threads + 255) / 256;
    return (unsigned)(blocks < 1024 ? blocks : 1024);
}

/* The block copies, in 16- or 4-byte words (blocks are whole words of 4). */
static inline cudaError_t mlk_cuda__kv_copy_blocks(const mlk_cuda__kv_geom &g, void *pool, int n_copies,
                                                   const int *copies, cudaStream_t stream)
{
    bool wide = g.block_bytes % 16 == 0;
    size_t words = g.block_bytes / (wide ? 16 : 4);
    dim3 grid(mlk_cuda__kv_grid(words)), block(256);
    return mlk_cuda__kv_each_pairs(n_copies, copies, [&](const mlk_cuda__kv_pairs &p) {
        return wide ? mlk_cuda__launch(mlk_cuda__kv_copy_kernel<uint4>, grid, block, 0, stream, words, p, (uint4 *)pool)
                    : mlk_cuda__launch(mlk_cuda__kv_copy_kernel<unsigned>, grid, block, 0, stream, words, p,
                                       (unsigned *)pool);
    });
}

MLKERN_CUDA_DEF size_t mlk_cuda_kv_store_workspace_size(const mlk_kv_layout *layout)
{
    mlk_cuda__kv_geom g;
    return layout && mlk_cuda__kv_geometry(layout, &g) == MLK_OK ? 256 : 0;
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_store(const mlk_kv_layout *layout, void *pool, int n_copies, const int *copies,
    int layer, int n, const int64_t *slots, const T *k, const T *v, int *status, void *workspace,
    size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__kv_geom g;
    mlk_cuda__scratch sc;
    if (!layout || !pool || !slots || !k || !v || (n_copies > 0 && !copies)) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__kv_geometry(layout, &g);
    if (st != MLK_OK) return st;
    if (layer < 0 || layer >= g.layers || n_copies < 0 || (uintptr_t)pool % 16) return MLK_ERR_ARG;
    if (n < 1) return MLK_ERR_SHAPE;
    size_t token_elems = (size_t)g.kv_heads * g.head_dim, rows = (size_t)n * 2 * g.kv_heads;
    if (token_elems > SIZE_MAX / sizeof(T) / (size_t)n || rows / MLK_CUDA__KV_WARPS >= 0x7FFFFFFFu)
        return MLK_ERR_OVERFLOW;
    if (!mlk_cuda__kv_pairs_in(n_copies, copies, layout->num_blocks)) return MLK_ERR_ARG;
    st = mlk_cuda__scratch_init(&sc, workspace, workspace_bytes, 256, stream);
    if (st != MLK_OK) return st;
    int *flag = mlk_cuda__take<int>(&sc, 1);
    cudaError_t e = mlk_cuda__kv_copy_blocks(g, pool, n_copies, copies, stream);
    if (e == cudaSuccess) e = cudaMemsetAsync(flag, 0, sizeof(int), stream);
    if (e == cudaSuccess)
        e = mlk_cuda__launch(mlk_cuda__kv_store_check_kernel<T>, dim3(mlk_cuda__kv_grid(token_elems * n)),
                             dim3(256), 0, stream, g, n, slots, k, v, flag);
    if (e == cudaSuccess)
        e = mlk_cuda__launch(mlk_cuda__kv_store_kernel<T>, dim3((unsigned)((rows + MLK_CUDA__KV_WARPS - 1) / MLK_CUDA__KV_WARPS)),
                             dim3(32 * MLK_CUDA__KV_WARPS), 0, stream, g, layer, n, slots, k, v, (const int *)flag,
                             status, (unsigned char *)pool);
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_compact(const mlk_kv_layout *layout, void *pool, int n_copies,
    const int *copies, int n_moves, const int64_t *moves, cudaStream_t stream)
{
    mlk_cuda__kv_geom g;
    if (!layout || !pool || (n_copies > 0 && !copies) || (n_moves > 0 && !moves)) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__kv_geometry(layout, &g);
    if (st != MLK_OK) return st;
    if (n_copies < 0 || n_moves < 0 || (uintptr_t)pool % 16 || !mlk_cuda__kv_pairs_in(n_copies, copies, layout->num_blocks) ||
        !mlk_cuda__kv_pairs_in(n_moves, moves, g.total_slots))
        return MLK_ERR_ARG;
    cudaError_t e = mlk_cuda__kv_copy_blocks(g, pool, n_copies, copies, stream);
    size_t align = g.row_bytes % 16 == 0 ? 16 : g.row_bytes % 4 == 0 ? 4 : 2;
    size_t threads = (size_t)g.layers * 2 * g.kv_heads * (g.row_bytes / align);
    dim3 grid((unsigned)((threads + 255) / 256)), block(256);
    unsigned char *bytes = (unsigned char *)pool;
    if (e == cudaSuccess)
        e = mlk_cuda__kv_each_pairs(n_moves, moves, [&](const mlk_cuda__kv_pairs &p) {
            if (align == 16) return mlk_cuda__launch(mlk_cuda__kv_move_kernel<uint4>, grid, block, 0, stream, g, p, bytes);
            if (align == 4) return mlk_cuda__launch(mlk_cuda__kv_move_kernel<unsigned>, grid, block, 0, stream, g, p, bytes);
            return mlk_cuda__launch(mlk_cuda__kv_move_kernel<unsigned short>, grid, block, 0, stream, g, p, bytes);
        });
    return mlk_cuda__launched(e);
}

template mlk_status mlk_cuda_kv_store(const mlk_kv_layout *, void *, int, const int *, int, int, const int64_t *,
    const float *, const float *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_kv_store(const mlk_kv_layout *, void *, int, const int *, int, int, const int64_t *,
    const __nv_bfloat16 *, const __nv_bfloat16 *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_kv_store(const mlk_kv_layout *, void *, int, const int *, int, int, const int64_t *,
    const __half *, const __half *, int *, void *, size_t, cudaStream_t);

#endif /* MLKERN_CUDA_KVSTORE_DONE */
#endif /* MLKERN_CUDA_IMPLEMENTATION */

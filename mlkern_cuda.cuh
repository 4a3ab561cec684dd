/* mlkern_cuda.cuh - CUDA versions of mlkern's hot kernels.
   The CUDA companion of mlkern.h, same licence (end of mlkern.h).
                                                            version 0.1.0
   WHAT IT IS
   Device kernels with host launchers for layer norm and RMS norm (forward
   and backward), softmax, log-softmax, fused top-k softmax / log-softmax,
   sampling with mlk_sample's semantics and random numbers, and the ternary
   (BitNet b1.58) GEMV/GEMM on mlkern's packed 2-bit weights. Each launcher
   mirrors its CPU twin in mlkern.h: the same arguments as device pointers,
   the same validation and status codes, plus a trailing cudaStream_t.
   Depends on the CUDA runtime and cuda_bf16.h / cuda_fp16.h only.

   HOW TO USE IT
   In exactly one .cu file of the program:

       #include "mlkern.h"
       #define MLKERN_CUDA_IMPLEMENTATION
       #include "mlkern_cuda.cuh"

   (other files include both headers without the define, for the
   declarations), then compile with nvcc, e.g.
       nvcc -O3 -std=c++17 -arch=sm_80 app.cu -o app
   Any architecture from sm_80 (A100) on; tested for sm_80 and sm_90.
   MLKERN_STATIC makes the launchers static, as for mlkern.h.

   CONVENTIONS
   - Pointers are device pointers unless a parameter says host; sizes and
     scalars are host values. Launchers enqueue work on the given stream and
     return at once: they never synchronise, so results are ready when the
     stream reaches that point (cudaStreamSynchronize, an event, ...).
   - Arguments are validated on the host before anything is enqueued, with
     the CPU's codes (MLK_ERR_NULL, MLK_ERR_SHAPE, MLK_ERR_OVERFLOW,
     MLK_ERR_ARG): on error nothing is launched and nothing is written.
   - A failing CUDA runtime call gives MLK_ERR_CUDA (MLK_ERR_NOMEM for
     cudaErrorMemoryAllocation); mlk_cuda_last_error() returns the last
     failed call's cudaError_t and message (kept per host thread;
     cudaSuccess and "no error" when none failed).
   - Errors that depend on the data (a NaN or +inf logit, a row all -inf)
     are found on the device, so the launcher cannot return them: such a
     launcher takes `int *status`, a device int (or NULL) that receives
     MLK_OK or MLK_ERR_VALUE when the stream gets there. On MLK_ERR_VALUE
     the outputs are untouched, as on the CPU.
   - Scratch: a launcher that needs it takes (workspace, workspace_bytes)
     before the stream; size it with the matching mlk_cuda_*_workspace_size.
     workspace NULL means cudaMallocAsync / cudaFreeAsync on the stream.
     A buffer smaller than needed, or not 256-byte aligned (cudaMalloc's
     are), is MLK_ERR_ARG.
   - Dtypes: T is float, __nv_bfloat16 or __half (explicit instantiations);
     arithmetic is float32, statistics (mean, rstd, gamma, beta and their
     gradients, probabilities) are float32.
   - Deterministic: no floating-point atomics; every sum is taken in an
     order fixed by the shapes, so a call gives the same bits every time.

   KERNELS
   Norms: one warp per row up to a few thousand elements, else one block
   per row; the row lives in registers between its passes; 16-byte vector
   loads when dim and the pointers allow. Same algorithm as the CPU (the
   corrected two-pass variance), so a row with mean 1e4 and spread 1e-2
   normalises to full precision. dgamma / dbeta: per-chunk partial sums in
   the workspace, then one sum per column over the chunks in order.
       template <typename T> mlk_status mlk_cuda_layernorm_fwd(int rows,
           int dim, const T *x, const float *gamma, const float *beta,
           float eps, T *y, float *mean, float *rstd, cudaStream_t stream);
       template <typename T> mlk_status mlk_cuda_layernorm_bwd(int rows,
           int dim, const T *x, const float *gamma, const float *mean,
           const float *rstd, const T *dy, T *dx, float *dgamma,
           float *dbeta, void *workspace, size_t workspace_bytes,
           cudaStream_t stream);
       template <typename T> mlk_status mlk_cuda_rmsnorm_fwd(int rows,
           int dim, const T *x, const float *gamma, float eps, T *y,
           float *rstd, cudaStream_t stream);
       template <typename T> mlk_status mlk_cuda_rmsnorm_bwd(int rows,
           int dim, const T *x, const float *gamma, const float *rstd,
           const T *dy, T *dx, float *dgamma, void *workspace,
           size_t workspace_bytes, cudaStream_t stream);
       size_t mlk_cuda_norm_bwd_workspace_size(int rows, int dim);
   gamma NULL means ones, beta NULL zeros, mean / rstd / dgamma / dbeta
   may be NULL as on the CPU (the backward needs rstd, and mean for layer
   norm).

   Softmax family: rows are cut into segments of MLK_CUDA_SEGMENT logits,
   one block each, so a row of 262144 spreads over 64 blocks. A block reads
   its segment once: running max and sum (the online softmax) and, for
   top-k, the segment's k best (value, index) keys sorted in shared
   memory. The segments' states merge in a fixed order; top-k merges the
   segments' sorted lists pairwise (a merge-path search per key, keeping
   the best k) until they fit one block. Ties go to the lower index, as on
   the CPU. Any k from 1 to n; the workspace holds about 3 x 8 bytes per
   candidate key (min(k, MLK_CUDA_SEGMENT) per segment).
       template <typename T> mlk_status mlk_cuda_softmax(int rows, int n,
           const T *x, T *y, int *status, void *workspace,
           size_t workspace_bytes, cudaStream_t stream);
       template <typename T> mlk_status mlk_cuda_log_softmax(...same...);
       size_t mlk_cuda_softmax_workspace_size(int rows, int n);
       template <typename T> mlk_status mlk_cuda_topk_softmax(int rows,
           int n, const T *logits, float temperature, int k, float *probs,
           int32_t *idx, int *status, void *workspace,
           size_t workspace_bytes, cudaStream_t stream);
       template <typename T> mlk_status mlk_cuda_topk_log_softmax(int rows,
           int n, const T *logits, int k, float *logprobs, int32_t *idx,
           int *status, void *workspace, size_t workspace_bytes,
           cudaStream_t stream);
       size_t mlk_cuda_topk_workspace_size(int rows, int n, int k);
   k is 1..n (else MLK_ERR_SHAPE), for any n.

   Sampling: mlk_sample's filters, order and draw (splitmix64 from
   *rng_state, one draw per row). The same state gives the same tokens as
   mlk_sample except when a draw lands within rounding of a boundary of the
   cumulative weights (the two sum in different orders; the tests measure
   the agreement). top_k and greedy draw from the top-k candidates, any
   k. top_p alone sorts a whole row only when it must: a row of one
   segment is its own candidate set; a longer one merges its best 1024
   candidates first and walks them against the whole row's mass (summed
   in another order than the CPU's, so a draw within rounding of the top_p
   boundary may differ); only rows whose kept prefix reaches past those
   merge all of their keys (the CPU grows its candidate set the same way)
   and walk them with a whole block. Its workspace is about 24 bytes per
   logit.
       template <typename T> mlk_status mlk_cuda_sample(int rows, int n,
           const T *logits, const mlk_sampler *s (host),
           uint64_t *rng_state, int32_t *out, int *status,
           void *workspace, size_t workspace_bytes, cudaStream_t stream);
       size_t mlk_cuda_sample_workspace_size(int rows, int n,
           const mlk_sampler *s);
   *rng_state (device) advances by rows * 0x9E3779B97F4A7C15 on success.

   Ternary: y[i, j] = (xscale[i] * wscale) * sum_c xq[i, c] * q[j, c],
   int8 activations, the CPU's packed 2-bit weights, exact int32 sums with
   dp4a, the same float epilogue: bitwise the CPU's result. One warp per
   output column and group of four activation rows.
       mlk_status mlk_cuda_ternary_gemm(int m, int n, int k,
           const int8_t *xq, const float *xscale, const uint8_t *wpacked,
           float wscale (host), float *y, cudaStream_t stream);

   Errors:
       cudaError_t mlk_cuda_last_error(const char **message);

   EXAMPLE: layer norm then the five likeliest tokens, on a stream
       float *x, *h, *logits, *p;  int32_t *tok;  int *st;   (device)
       mlk_cuda_layernorm_fwd(rows, 4096, x, NULL, NULL, 1e-5f, h,
                              NULL, NULL, stream);
       ... an LM head writes logits [rows, vocab] ...
       if (mlk_cuda_topk_softmax(rows, vocab, logits, 1.0f, 5, p, tok, st,
                                 NULL, 0, stream) != MLK_OK) {
           const char *why;
           mlk_cuda_last_error(&why);  ...
       }
       cudaStreamSynchronize(stream);   then read *st, p and tok

   TESTING WITHOUT A GPU
   The header is plain CUDA except a few small functions that the test
   suite's host emulator replaces when it defines MLKERN_CUDA_SIMT:
   mlk_cuda__launch (the <<<>>> launch), mlk_cuda__dynamic_smem (extern
   __shared__) and the tensor-core primitives, one inline-PTX instruction
   each (section "tensor-core primitives" gives their fragment layouts):
       mlk_cuda__mma_m16n8k16_bf16 / _f16 (float c[4], const uint32_t a[4],
           const uint32_t b[2])               c += A B, f32 accumulators
           (mlk_cuda__mma_m16n8k16<T> picks one by element type)
       mlk_cuda__ldmatrix_x2 / _x2_trans (uint32_t r[2], const void *row)
       mlk_cuda__ldmatrix_x4 / _x4_trans (uint32_t r[4], const void *row)
       mlk_cuda__cp_async16 (void *smem, const void *gmem)
       mlk_cuda__cp_async16_zfill (void *smem, const void *gmem, int src_bytes)
       mlk_cuda__cp_async_commit (), mlk_cuda__cp_async_wait<N> ()
   The emulator's twins follow the PTX ISA manual; its cp.async lands a
   copy only at the wait that covers it (the destination holds 0xFF bytes
   until then), so a kernel that reads shared memory before waiting fails
   its test there.
*/
#ifndef MLKERN_CUDA_CUH
#define MLKERN_CUDA_CUH

#ifndef MLKERN_H
#error "include mlkern.h before mlkern_cuda.cuh"
#endif

#ifndef MLKERN_CUDA_SIMT
#include <cuda_runtime.h>
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifdef MLKERN_STATIC
#define MLKERN_CUDA_DEF static __attribute__((unused))
#else
#define MLKERN_CUDA_DEF
#endif

/* Logits per block in the softmax family (the top-k keys of a segment fill
   32 KiB of shared memory). */
#define MLK_CUDA_SEGMENT 4096

MLKERN_CUDA_DEF cudaError_t mlk_cuda_last_error(const char **message);

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_layernorm_fwd(int rows, int dim, const T *x, const float *gamma,
    const float *beta, float eps, T *y, float *mean, float *rstd, cudaStream_t stream);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_layernorm_bwd(int rows, int dim, const T *x, const float *gamma,
    const float *mean, const float *rstd, const T *dy, T *dx, float *dgamma, float *dbeta,
    void *workspace, size_t workspace_bytes, cudaStream_t stream);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_rmsnorm_fwd(int rows, int dim, const T *x, const float *gamma,
    float eps, T *y, float *rstd, cudaStream_t stream);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_rmsnorm_bwd(int rows, int dim, const T *x, const float *gamma,
    const float *rstd, const T *dy, T *dx, float *dgamma, void *workspace, size_t workspace_bytes,
    cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_norm_bwd_workspace_size(int rows, int dim);

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_softmax(int rows, int n, const T *x, T *y, int *status,
    void *workspace, size_t workspace_bytes, cudaStream_t stream);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_log_softmax(int rows, int n, const T *x, T *y, int *status,
    void *workspace, size_t workspace_bytes, cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_softmax_workspace_size(int rows, int n);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_topk_softmax(int rows, int n, const T *logits, float temperature,
    int k, float *probs, int32_t *idx, int *status, void *workspace, size_t workspace_bytes,
    cudaStream_t stream);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_topk_log_softmax(int rows, int n, const T *logits, int k,
    float *logprobs, int32_t *idx, int *status, void *workspace, size_t workspace_bytes,
    cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_topk_workspace_size(int rows, int n, int k);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_sample(int rows, int n, const T *logits, const mlk_sampler *s,
    uint64_t *rng_state, int32_t *out, int *status, void *workspace, size_t workspace_bytes,
    cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_sample_workspace_size(int rows, int n, const mlk_sampler *s);

MLKERN_CUDA_DEF mlk_status mlk_cuda_ternary_gemm(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y, cudaStream_t stream);

#endif /* MLKERN_CUDA_CUH */

/* ====================================================================== */
#ifdef MLKERN_CUDA_IMPLEMENTATION
#ifndef MLKERN_CUDA_IMPLEMENTATION_DONE
#define MLKERN_CUDA_IMPLEMENTATION_DONE

#include <math.h>
#include <stdint.h>
#include <type_traits>

/* ======================================================================
   common: errors, launches, workspace, element access, reductions
   ====================================================================== */

static thread_local cudaError_t mlk_cuda__err = cudaSuccess;

MLKERN_CUDA_DEF cudaError_t mlk_cuda_last_error(const char **message)
{
    if (message) *message = mlk_cuda__err == cudaSuccess ? "no error" : cudaGetErrorString(mlk_cuda__err);
    return mlk_cuda__err;
}

/* Records a failed runtime call and maps it to a status. */
static inline mlk_status mlk_cuda__fail(cudaError_t e)
{
    mlk_cuda__err = e;
    return e == cudaErrorMemoryAllocation ? MLK_ERR_NOMEM : MLK_ERR_CUDA;
}

#ifndef MLKERN_CUDA_SIMT
/* Every launch goes through here (the emulator supplies its own). */
template <typename... P, typename... A>
static inline cudaError_t mlk_cuda__launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                                           cudaStream_t stream, A... args)
{
    kernel<<<grid, block, smem, stream>>>(args...);
    return cudaGetLastError();
}

/* The block's dynamic shared memory. */
static __device__ __forceinline__ unsigned char *mlk_cuda__dynamic_smem()
{
    extern __shared__ __align__(16) unsigned char mlk_cuda__smem[];
    return mlk_cuda__smem;
}
#endif

/* Scratch for one call: the caller's buffer, or one cudaMallocAsync on the
   stream that done() frees there (stream-ordered, no synchronisation). */
struct mlk_cuda__scratch {
    unsigned char *base;
    size_t used;
    bool owned;
};

static inline size_t mlk_cuda__round(size_t bytes) { return (bytes + 255) / 256 * 256; }

static inline mlk_status mlk_cuda__scratch_init(mlk_cuda__scratch *sc, void *workspace, size_t workspace_bytes,
                                                size_t need, cudaStream_t stream)
{
    sc->used = 0;
    sc->owned = false;
    sc->base = (unsigned char *)workspace;
    if (workspace) return workspace_bytes >= need && (uintptr_t)workspace % 256 == 0 ? MLK_OK : MLK_ERR_ARG;
    if (need == 0) return MLK_OK;
    cudaError_t e = cudaMallocAsync((void **)&sc->base, need, stream);
    if (e != cudaSuccess) return mlk_cuda__fail(e);
    sc->owned = true;
    return MLK_OK;
}

template <typename U> static U *mlk_cuda__take(mlk_cuda__scratch *sc, size_t count)
{
    U *p = (U *)(sc->base + sc->used);
    sc->used += mlk_cuda__round(count * sizeof(U));
    return p;
}

/* Frees owned scratch; returns st, or the status of a failed free. */
static inline mlk_status mlk_cuda__scratch_done(mlk_cuda__scratch *sc, mlk_status st, cudaStream_t stream)
{
    if (sc->owned) {
        cudaError_t e = cudaFreeAsync(sc->base, stream);
        if (e != cudaSuccess && st == MLK_OK) return mlk_cuda__fail(e);
    }
    return st;
}

static inline mlk_status mlk_cuda__launched(cudaError_t e)
{
    return e == cudaSuccess ? MLK_OK : mlk_cuda__fail(e);
}

/* n = a * b elements of elem bytes without size_t overflow */
static inline bool mlk_cuda__count(int a, int b, size_t elem, size_t *n)
{
    size_t t = (size_t)a * (size_t)b;
    if (a < 0 || b < 0 || (a && t / (size_t)a != (size_t)b) || (t && elem > SIZE_MAX / t)) return false;
    *n = t;
    return true;
}

static inline bool mlk_cuda__aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

/* ---- element access: every dtype loads to and stores from float ---- */

static __device__ __forceinline__ float mlk_cuda__to_float(float v) { return v; }
static __device__ __forceinline__ float mlk_cuda__to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ float mlk_cuda__to_float(__half v) { return __half2float(v); }

template <typename T> static __device__ __forceinline__ T mlk_cuda__from_float(float v);
template <> __device__ __forceinline__ float mlk_cuda__from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 mlk_cuda__from_float<__nv_bfloat16>(float v)
{
    return __float2bfloat16(v);
}
template <> __device__ __forceinline__ __half mlk_cuda__from_float<__half>(float v) { return __float2half(v); }


/* VEC consecutive elements as one load: a 16-byte uint4 when VEC *
   sizeof(T) == 16 (the address then 16-byte aligned), else one T. */
template <typename T, int VEC> struct mlk_cuda__pack {
    typedef typename std::conditional<VEC * sizeof(T) == 16, uint4, T>::type raw;
    static_assert(VEC == 1 || VEC * sizeof(T) == 16, "a vector is one element or 16 bytes");
};

template <typename T, int VEC>
static __device__ __forceinline__ typename mlk_cuda__pack<T, VEC>::raw mlk_cuda__load_raw(const T *p)
{
    return __ldg((const typename mlk_cuda__pack<T, VEC>::raw *)p);
}

template <typename T, int VEC>
static __device__ __forceinline__ void mlk_cuda__unpack(const typename mlk_cuda__pack<T, VEC>::raw &raw,
                                                        float (&v)[VEC])
{
    const T *e = (const T *)&raw;
#pragma unroll
    for (int i = 0; i < VEC; i++) v[i] = mlk_cuda__to_float(e[i]);
}

template <typename T, int VEC>
static __device__ __forceinline__ void mlk_cuda__load(const T *p, float (&v)[VEC])
{
    mlk_cuda__unpack<T, VEC>(mlk_cuda__load_raw<T, VEC>(p), v);
}

template <typename T, int VEC>
static __device__ __forceinline__ void mlk_cuda__store(T *p, const float (&v)[VEC])
{
    typename mlk_cuda__pack<T, VEC>::raw raw;
    T *e = (T *)&raw;
#pragma unroll
    for (int i = 0; i < VEC; i++) e[i] = mlk_cuda__from_float<T>(v[i]);
    *(typename mlk_cuda__pack<T, VEC>::raw *)p = raw;
}

/* gamma / beta at VEC columns from c (float; NULL: all `fill`); their
   vector loads are 16-byte ones only for float rows (VEC == 4). */
template <int VEC>
static __device__ __forceinline__ void mlk_cuda__load_param(const float *p, int c, float fill, float (&v)[VEC])
{
    if (!p) {
#pragma unroll
        for (int i = 0; i < VEC; i++) v[i] = fill;
    } else if constexpr (VEC == 4) {
        float4 q = __ldg((const float4 *)(p + c));
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    } else {
#pragma unroll
        for (int i = 0; i < VEC; i++) v[i] = __ldg(p + c + i);
    }
}

/* ---- reductions: butterflies, so every lane ends with the same bits ---- */

template <int N> static __device__ __forceinline__ void mlk_cuda__warp_sum(float (&v)[N])
{
    for (int off = 16; off > 0; off >>= 1)
        for (int i = 0; i < N; i++) v[i] += __shfl_xor_sync(0xFFFFFFFFu, v[i], off);
}

/* Sum over the block (blockDim.x a multiple of 32); every thread gets the
   result. smem: 32 * N floats. The second barrier keeps a fast warp from
   overwriting smem for the next reduction while a slow one still reads. */
template <int N> static __device__ __forceinline__ void mlk_cuda__block_sum(float (&v)[N], float *smem)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    mlk_cuda__warp_sum<N>(v);
    if (lane == 0)
        for (int i = 0; i < N; i++) smem[i * 32 + warp] = v[i];
    __syncthreads();
    for (int i = 0; i < N; i++) v[i] = lane < n_warps ? smem[i * 32 + lane] : 0.0f;
    mlk_cuda__warp_sum<N>(v);
    __syncthreads();
}

/* ======================================================================
   tensor-core primitives: mma.sync, ldmatrix, cp.async (sm_80 on)
   ====================================================================== */

/* One PTX instruction each; the emulator (tests/cuda/simt.h) supplies
   twins with the same names that implement the PTX ISA's layouts, and
   tests/cuda/test_primitives.cu holds both to the same host reference.
   Fragments of lane l, with g = l / 4 and t = l % 4; a 32-bit register
   holds two 16-bit elements, the lower column (or row) in its low half:
     A, 16 x 16, row-major:  a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]
                             a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
     B, 16 x 8 (k x n):      b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]
     C, 16 x 8, float:       c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
   mma: c += A B, every lane of the warp taking part (warp-collective).
   ldmatrix xN loads N 8 x 8 matrices of 16-bit elements from shared
   memory: lanes 8i .. 8i+7 give the addresses of the rows of matrix i
   (16 bytes each, 16-byte aligned; the other lanes' addresses are
   ignored), and r[i] of lane l gets row l / 4, columns 2(l % 4) and
   2(l % 4) + 1 of matrix i, or of its transpose with _trans. So x4 on
   the four 8 x 8 quarters of a row-major 16 x 16 tile (top-left,
   bottom-left, top-right, bottom-right) is an A fragment, x2 on an n x k
   tile (8 rows of 16) is a B fragment, and x2_trans on a k x n tile
   (16 rows of 8) is one too.
   cp.async copies 16 bytes global -> shared without a register (.cg:
   cached in L2 only, for data a block reads once); _zfill copies the
   first src_bytes (0..16) and zero-fills the rest, for tails, and reads
   nothing when src_bytes is 0. Copies land only by
   mlk_cuda__cp_async_wait<N>(): the issuing thread waits until at most N
   of its committed groups are pending; other threads see the data after
   a __syncthreads that follows the wait. */
#ifndef MLKERN_CUDA_SIMT
static __device__ __forceinline__ void mlk_cuda__mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

static __device__ __forceinline__ void mlk_cuda__mma_m16n8k16_f16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

static __device__ __forceinline__ uint32_t mlk_cuda__smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void mlk_cuda__ldmatrix_x2(uint32_t r[2], const void *smem_row_ptr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(mlk_cuda__smem_addr(smem_row_ptr))
                 : "memory");
}

static __device__ __forceinline__ void mlk_cuda__ldmatrix_x2_trans(uint32_t r[2], const void *smem_row_ptr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(mlk_cuda__smem_addr(smem_row_ptr))
                 : "memory");
}

static __device__ __forceinline__ void mlk_cuda__ldmatrix_x4(uint32_t r[4], const void *smem_row_ptr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(mlk_cuda__smem_addr(smem_row_ptr))
                 : "memory");
}

static __device__ __forceinline__ void mlk_cuda__ldmatrix_x4_trans(uint32_t r[4], const void *smem_row_ptr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(mlk_cuda__smem_addr(smem_row_ptr))
                 : "memory");
}

static __device__ __forceinline__ void mlk_cuda__cp_async16(void *smem, const void *gmem)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(mlk_cuda__smem_addr(smem)), "l"(gmem)
                 : "memory");
}

static __device__ __forceinline__ void mlk_cuda__cp_async16_zfill(void *smem, const void *gmem, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(mlk_cuda__smem_addr(smem)), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
}

static __device__ __forceinline__ void mlk_cuda__cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N> static __device__ __forceinline__ void mlk_cuda__cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

/* The mma for T's element type: __nv_bfloat16 or __half. */
template <typename T>
static __device__ __forceinline__ void mlk_cuda__mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value, "bf16 or fp16");
    if constexpr (std::is_same<T, __half>::value) mlk_cuda__mma_m16n8k16_f16(c, a, b);
    else mlk_cuda__mma_m16n8k16_bf16(c, a, b);
}

/* ======================================================================
   norms
   ====================================================================== */

/* A row belongs to a group of G threads: one warp (G = 32, four rows per
   block) or the whole block. Thread t owns the VEC-element vectors t,
   t + G, t + 2G, ... of the row. CACHED: at most VPT of
   them per thread, kept in registers (as loaded, so bf16 takes half the
   registers) between the passes; otherwise each pass reads the row again.
   Warp mode asks for four blocks of 128 per SM, which bounds registers at
   128 without spilling (ptxas's own choice spilled a few bytes). */
#define MLK_CUDA__NORM_VPT 8     /* forward: one row in registers */
#define MLK_CUDA__NORM_BWD_VPT 4 /* backward: x and dy, within 128 registers at 512 threads */
#define MLK_CUDA__NORM_BLOCK 512

template <typename T, int VEC, int G, bool CACHED, int VPT> struct mlk_cuda__row {
    typename mlk_cuda__pack<T, VEC>::raw raw[CACHED ? VPT : 1];
    const T *base;
    int t, n_vec, iters;

    __device__ __forceinline__ mlk_cuda__row(const T *row, int dim)
    {
        base = row;
        t = G == 32 ? threadIdx.x % 32 : threadIdx.x;
        n_vec = dim / VEC;
        iters = (n_vec + G - 1) / G;
        if constexpr (CACHED) {
#pragma unroll
            for (int j = 0; j < VPT; j++)
                if (has(j)) raw[j] = mlk_cuda__load_raw<T, VEC>(row + col(j));
        }
    }
    /* Loops run j over [0, bound()) and skip j without has(j): the bound
       is a constant when cached, so unrolling indexes raw[] by constants. */
    __device__ __forceinline__ int bound() const { return CACHED ? VPT : iters; }
    __device__ __forceinline__ bool has(int j) const { return j < iters && t + j * G < n_vec; }
    __device__ __forceinline__ int col(int j) const { return (t + j * G) * VEC; }
    /* the j-th vector of this thread */
    __device__ __forceinline__ void get(int j, float (&v)[VEC]) const
    {
        if constexpr (CACHED) mlk_cuda__unpack<T, VEC>(raw[j], v);
        else mlk_cuda__load<T, VEC>(base + col(j), v);
    }
};

template <int G, int N> static __device__ __forceinline__ void mlk_cuda__group_sum(float (&v)[N], float *smem)
{
    if (G == 32) mlk_cuda__warp_sum<N>(v);
    else mlk_cuda__block_sum<N>(v, smem);
}

static __device__ __forceinline__ int mlk_cuda__group_row(int G)
{
    return G == 32 ? (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) : (int)blockIdx.x;
}

/* Forward, one row per group, the CPU's corrected two-pass moments:
     m1 = sum(x) / dim,  delta = sum(x - m1) / dim,
     var = sum((x - m1)^2) / dim - delta^2,
     y = ((x - m1) - delta) * rstd * gamma + beta,  mean = m1 + delta
   (RMS: var = sum(x^2) / dim, m1 = delta = 0). */
template <typename T, int VEC, int G, bool CACHED, bool CENTER>
__global__ void __launch_bounds__(G == 32 ? 128 : G, G == 32 ? 4 : 1)
mlk_cuda__norm_fwd_kernel(int rows, int dim, const T *__restrict__ x, const float *__restrict__ gamma,
                          const float *__restrict__ beta, float eps, T *__restrict__ y,
                          float *__restrict__ mean, float *__restrict__ rstd)
{
    __shared__ float smem[32 * 2];
    int r = mlk_cuda__group_row(G);
    if (r >= rows) return; /* only in warp mode, where warps never meet at a barrier */
    mlk_cuda__row<T, VEC, G, CACHED, MLK_CUDA__NORM_VPT> row(x + (size_t)r * dim, dim);
    float m1 = 0.0f, delta = 0.0f, var;
    if (CENTER) {
        float s[1] = {0.0f};
#pragma unroll
        for (int j = 0; j < row.bound(); j++) {
            if (!row.has(j)) continue;
            float v[VEC];
            row.get(j, v);
#pragma unroll
            for (int i = 0; i < VEC; i++) s[0] += v[i];
        }
        mlk_cuda__group_sum<G, 1>(s, smem);
        m1 = s[0] / (float)dim;
    }
    float s[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < row.bound(); j++) {
        if (!row.has(j)) continue;
        float v[VEC];
        row.get(j, v);
#pragma unroll
        for (int i = 0; i < VEC; i++) {
            float d = v[i] - m1;
            s[0] += d;
            s[1] += d * d;
        }
    }
    mlk_cuda__group_sum<G, 2>(s, smem);
    var = s[1] / (float)dim;
    if (CENTER) {
        delta = s[0] / (float)dim;
        var = fmaxf(var - delta * delta, 0.0f);
    }
    float row_rstd = 1.0f / sqrtf(var + eps);
    if (row.t == 0) {
        if (mean) mean[r] = m1 + delta;
        if (rstd) rstd[r] = row_rstd;
    }
    T *yr = y + (size_t)r * dim;
#pragma unroll
    for (int j = 0; j < row.bound(); j++) {
        if (!row.has(j)) continue;
        float v[VEC], g[VEC], b[VEC];
        int c = row.col(j);
        row.get(j, v);
        mlk_cuda__load_param<VEC>(gamma, c, 1.0f, g);
        mlk_cuda__load_param<VEC>(beta, c, 0.0f, b);
#pragma unroll
        for (int i = 0; i < VEC; i++) v[i] = ((v[i] - m1) - delta) * row_rstd * g[i] + b[i];
        mlk_cuda__store<T, VEC>(yr + c, v);
    }
}

/* Backward, one row per group, as the CPU: g = gamma * dy,
   x-hat = ((x - mean) - delta) * rstd with delta = mean(x - mean) (the
   rounding of the cached mean; 0 for RMS), and
     dx = rstd * (g - mean(g) - x-hat * mean(g * x-hat))   (RMS: no mean(g)),
   mean(g * x-hat) = rstd * (mean(g * (x - mean)) - delta * mean(g)).
   delta_out (NULL when no parameter gradient is wanted) keeps delta for
   the dgamma / dbeta kernel, which must form x-hat the same way. */
template <typename T, int VEC, int G, bool CACHED, bool CENTER>
__global__ void __launch_bounds__(G == 32 ? 128 : G, G == 32 ? 4 : 1)
mlk_cuda__norm_bwd_kernel(int rows, int dim, const T *__restrict__ x, const float *__restrict__ gamma,
                          const float *__restrict__ mean, const float *__restrict__ rstd,
                          const T *__restrict__ dy, T *__restrict__ dx, float *__restrict__ delta_out)
{
    __shared__ float smem[32 * 3];
    int r = mlk_cuda__group_row(G);
    if (r >= rows) return;
    mlk_cuda__row<T, VEC, G, CACHED, MLK_CUDA__NORM_BWD_VPT> xrow(x + (size_t)r * dim, dim);
    mlk_cuda__row<T, VEC, G, CACHED, MLK_CUDA__NORM_BWD_VPT> dyrow(dy + (size_t)r * dim, dim);
    float mu = CENTER ? mean[r] : 0.0f, rs = rstd[r];
    float s[3] = {0.0f, 0.0f, 0.0f}; /* sum(x - mean), sum(g), sum(g * (x - mean)) */
#pragma unroll
    for (int j = 0; j < xrow.bound(); j++) {
        if (!xrow.has(j)) continue;
        float v[VEC], d[VEC], g[VEC];
        xrow.get(j, v);
        dyrow.get(j, d);
        mlk_cuda__load_param<VEC>(gamma, xrow.col(j), 1.0f, g);
#pragma unroll
        for (int i = 0; i < VEC; i++) {
            float c = v[i] - mu, gi = g[i] * d[i];
            s[0] += c;
            s[1] += gi;
            s[2] += gi * c;
        }
    }
    mlk_cuda__group_sum<G, 3>(s, smem);
    float delta = CENTER ? s[0] / (float)dim : 0.0f, mean_g = CENTER ? s[1] / (float)dim : 0.0f;
    float mean_gx = rs * (s[2] - delta * s[1]) / (float)dim;
    T *dxr = dx + (size_t)r * dim;
#pragma unroll
    for (int j = 0; j < xrow.bound(); j++) {
        if (!xrow.has(j)) continue;
        float v[VEC], d[VEC], g[VEC];
        int c = xrow.col(j);
        xrow.get(j, v);
        dyrow.get(j, d);
        mlk_cuda__load_param<VEC>(gamma, c, 1.0f, g);
#pragma unroll
        for (int i = 0; i < VEC; i++) {
            float xh = ((v[i] - mu) - delta) * rs;
            v[i] = (g[i] * d[i] - mean_g - xh * mean_gx) * rs;
        }
        mlk_cuda__store<T, VEC>(dxr + c, v);
    }
    if (delta_out && xrow.t == 0) delta_out[r] = delta;
}

/* dgamma / dbeta, stage 1: a block of 32 x 8 threads sums 32 columns over
   chunks of MLK_CUDA__NORM_CHUNK rows (rows ty, ty + 8, ... per thread),
   then the 8 partials in order; writes part_gamma / part_beta [chunk, dim].
   The chunking depends on rows only, so the sums do too. */
#define MLK_CUDA__NORM_CHUNK 64
template <typename T, bool CENTER>
__global__ void __launch_bounds__(256)
mlk_cuda__norm_param_partial_kernel(int rows, int dim, const T *__restrict__ x, const float *__restrict__ mean,
                                    const float *__restrict__ rstd, const float *__restrict__ delta,
                                    const T *__restrict__ dy, float *__restrict__ part_gamma,
                                    float *__restrict__ part_beta)
{
    __shared__ float acc[2][8][33];
    int tx = threadIdx.x % 32, ty = threadIdx.x / 32, col = blockIdx.x * 32 + tx;
    int n_chunks = (rows + MLK_CUDA__NORM_CHUNK - 1) / MLK_CUDA__NORM_CHUNK;
    for (int chunk = blockIdx.y; chunk < n_chunks; chunk += gridDim.y) { /* the same trip count block-wide */
        int r_end = (chunk + 1) * MLK_CUDA__NORM_CHUNK < rows ? (chunk + 1) * MLK_CUDA__NORM_CHUNK : rows;
        float sg = 0.0f, sb = 0.0f;
        if (col < dim)
            for (int r = chunk * MLK_CUDA__NORM_CHUNK + ty; r < r_end; r += 8) {
                size_t at = (size_t)r * dim + col;
                float d = mlk_cuda__to_float(dy[at]), v = mlk_cuda__to_float(x[at]);
                float mu = CENTER ? mean[r] : 0.0f, dl = CENTER ? delta[r] : 0.0f;
                float xh = ((v - mu) - dl) * rstd[r];
                sg += d * xh;
                sb += d;
            }
        acc[0][ty][tx] = sg;
        acc[1][ty][tx] = sb;
        __syncthreads();
        if (ty == 0 && col < dim) {
            for (int i = 1; i < 8; i++) {
                sg += acc[0][i][tx];
                sb += acc[1][i][tx];
            }
            if (part_gamma) part_gamma[(size_t)chunk * dim + col] = sg;
            if (part_beta) part_beta[(size_t)chunk * dim + col] = sb;
        }
        __syncthreads(); /* row 0 has read acc before the next chunk overwrites it */
    }
}

/* Stage 2: each column sums its chunks in order, in double. */
__global__ void __launch_bounds__(256)
mlk_cuda__norm_param_final_kernel(int dim, int n_chunks, const float *__restrict__ part, float *__restrict__ out)
{
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= dim) return;
    double s = 0.0;
    for (int c = 0; c < n_chunks; c++) s += part[(size_t)c * dim + col];
    out[col] = (float)s;
}

/* How a norm launch covers a row: vector width, group, registers or not. */
struct mlk_cuda__norm_plan {
    int vec, group;
    bool cached;
};

template <typename T>
static inline mlk_cuda__norm_plan mlk_cuda__plan_norm(int dim, int vpt, const void *const *ptrs, int n_ptrs,
                                                      const float *gamma, const float *beta)
{
    mlk_cuda__norm_plan p;
    const int wide = 16 / (int)sizeof(T);
    bool ok = dim % wide == 0 && (!gamma || mlk_cuda__aligned16(gamma)) && (!beta || mlk_cuda__aligned16(beta));
    for (int i = 0; i < n_ptrs; i++) ok = ok && (!ptrs[i] || mlk_cuda__aligned16(ptrs[i]));
    p.vec = ok ? wide : 1;
    int n_vec = dim / p.vec;
    p.group = n_vec <= 32 * vpt ? 32 : MLK_CUDA__NORM_BLOCK;
    p.cached = n_vec <= p.group * vpt;
    return p;
}

static inline dim3 mlk_cuda__norm_grid(int rows, int group)
{
    return dim3(group == 32 ? (unsigned)((rows + 3) / 4) : (unsigned)rows);
}

/* The five shapes a norm kernel comes in (warp or block, vector or scalar,
   cached or streaming): picks the instantiation for the plan. */
template <typename T, bool CENTER>
static inline cudaError_t mlk_cuda__norm_fwd_launch(const mlk_cuda__norm_plan &p, int rows, int dim, const T *x,
    const float *gamma, const float *beta, float eps, T *y, float *mean, float *rstd, cudaStream_t st)
{
    const int W = 16 / sizeof(T), B = MLK_CUDA__NORM_BLOCK;
    dim3 grid = mlk_cuda__norm_grid(rows, p.group), block(p.group == 32 ? 128 : B);
    if (p.vec == 1 && p.group == 32)
        return mlk_cuda__launch(mlk_cuda__norm_fwd_kernel<T, 1, 32, true, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, beta, eps, y, mean, rstd);
    if (p.vec == 1)
        return mlk_cuda__launch(mlk_cuda__norm_fwd_kernel<T, 1, B, false, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, beta, eps, y, mean, rstd);
    if (p.group == 32)
        return mlk_cuda__launch(mlk_cuda__norm_fwd_kernel<T, W, 32, true, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, beta, eps, y, mean, rstd);
    if (p.cached)
        return mlk_cuda__launch(mlk_cuda__norm_fwd_kernel<T, W, B, true, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, beta, eps, y, mean, rstd);
    return mlk_cuda__launch(mlk_cuda__norm_fwd_kernel<T, W, B, false, CENTER>, grid, block, 0, st,
                            rows, dim, x, gamma, beta, eps, y, mean, rstd);
}

template <typename T, bool CENTER>
static inline cudaError_t mlk_cuda__norm_bwd_launch(const mlk_cuda__norm_plan &p, int rows, int dim, const T *x,
    const float *gamma, const float *mean, const float *rstd, const T *dy, T *dx, float *delta,
    cudaStream_t st)
{
    const int W = 16 / sizeof(T), B = MLK_CUDA__NORM_BLOCK;
    dim3 grid = mlk_cuda__norm_grid(rows, p.group), block(p.group == 32 ? 128 : B);
    if (p.vec == 1 && p.group == 32)
        return mlk_cuda__launch(mlk_cuda__norm_bwd_kernel<T, 1, 32, true, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, mean, rstd, dy, dx, delta);
    if (p.vec == 1)
        return mlk_cuda__launch(mlk_cuda__norm_bwd_kernel<T, 1, B, false, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, mean, rstd, dy, dx, delta);
    if (p.group == 32)
        return mlk_cuda__launch(mlk_cuda__norm_bwd_kernel<T, W, 32, true, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, mean, rstd, dy, dx, delta);
    if (p.cached)
        return mlk_cuda__launch(mlk_cuda__norm_bwd_kernel<T, W, B, true, CENTER>, grid, block, 0, st,
                                rows, dim, x, gamma, mean, rstd, dy, dx, delta);
    return mlk_cuda__launch(mlk_cuda__norm_bwd_kernel<T, W, B, false, CENTER>, grid, block, 0, st,
                            rows, dim, x, gamma, mean, rstd, dy, dx, delta);
}

/* The CPU's checks, in the CPU's order. */
static inline mlk_status mlk_cuda__norm_check(int rows, int dim, size_t elem)
{
    size_t count;
    if (rows < 1 || dim < 1) return MLK_ERR_SHAPE;
    if (!mlk_cuda__count(rows, dim, elem, &count)) return MLK_ERR_OVERFLOW;
    return MLK_OK;
}

template <typename T, bool CENTER>
static inline mlk_status mlk_cuda__norm_fwd(int rows, int dim, const T *x, const float *gamma, const float *beta,
                                     float eps, T *y, float *mean, float *rstd, cudaStream_t stream)
{
    if (!x || !y) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__norm_check(rows, dim, sizeof(T));
    if (st != MLK_OK) return st;
    if (!(eps >= 0.0f) || eps == INFINITY) return MLK_ERR_ARG;
    const void *ptrs[2] = {x, y};
    mlk_cuda__norm_plan p = mlk_cuda__plan_norm<T>(dim, MLK_CUDA__NORM_VPT, ptrs, 2, gamma, beta);
    return mlk_cuda__launched(mlk_cuda__norm_fwd_launch<T, CENTER>(p, rows, dim, x, gamma, beta, eps, y, mean,
                                                                   rstd, stream));
}

static inline int mlk_cuda__norm_chunks(int rows) { return (rows + MLK_CUDA__NORM_CHUNK - 1) / MLK_CUDA__NORM_CHUNK; }

MLKERN_CUDA_DEF size_t mlk_cuda_norm_bwd_workspace_size(int rows, int dim)
{
    size_t count;
    if (rows < 1 || dim < 1 || !mlk_cuda__count(mlk_cuda__norm_chunks(rows), dim, 2 * sizeof(float), &count))
        return 0;
    return mlk_cuda__round((size_t)rows * sizeof(float)) + 2 * mlk_cuda__round(count * sizeof(float));
}

template <typename T, bool CENTER>
static inline mlk_status mlk_cuda__norm_bwd(int rows, int dim, const T *x, const float *gamma, const float *mean,
                                     const float *rstd, const T *dy, T *dx, float *dgamma, float *dbeta,
                                     void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    if (!x || !rstd || !dy || !dx || (CENTER && !mean)) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__norm_check(rows, dim, sizeof(T));
    if (st != MLK_OK) return st;
    const void *ptrs[3] = {x, dy, dx};
    mlk_cuda__norm_plan p = mlk_cuda__plan_norm<T>(dim, MLK_CUDA__NORM_BWD_VPT, ptrs, 3, gamma, NULL);
    bool params = dgamma || dbeta;
    mlk_cuda__scratch sc;
    st = mlk_cuda__scratch_init(&sc, workspace, workspace_bytes,
                                params ? mlk_cuda_norm_bwd_workspace_size(rows, dim) : 0, stream);
    if (st != MLK_OK) return st;
    int n_chunks = mlk_cuda__norm_chunks(rows);
    float *delta = params ? mlk_cuda__take<float>(&sc, (size_t)rows) : NULL;
    float *part_g = params ? mlk_cuda__take<float>(&sc, (size_t)n_chunks * dim) : NULL;
    float *part_b = params ? mlk_cuda__take<float>(&sc, (size_t)n_chunks * dim) : NULL;
    cudaError_t e = mlk_cuda__norm_bwd_launch<T, CENTER>(p, rows, dim, x, gamma, mean, rstd, dy, dx, delta, stream);
    if (e == cudaSuccess && params)
        e = mlk_cuda__launch(mlk_cuda__norm_param_partial_kernel<T, CENTER>,
                             dim3((unsigned)((dim + 31) / 32), (unsigned)(n_chunks < 65535 ? n_chunks : 65535)),
                             dim3(256), 0, stream, rows, dim,
                             x, mean, rstd, (const float *)delta, dy, dgamma ? part_g : NULL, dbeta ? part_b : NULL);
    if (e == cudaSuccess && dgamma)
        e = mlk_cuda__launch(mlk_cuda__norm_param_final_kernel, dim3((unsigned)((dim + 255) / 256)), dim3(256), 0,
                             stream, dim, n_chunks, (const float *)part_g, dgamma);
    if (e == cudaSuccess && dbeta)
        e = mlk_cuda__launch(mlk_cuda__norm_param_final_kernel, dim3((unsigned)((dim + 255) / 256)), dim3(256), 0,
                             stream, dim, n_chunks, (const float *)part_b, dbeta);
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_layernorm_fwd(int rows, int dim, const T *x, const float *gamma,
    const float *beta, float eps, T *y, float *mean, float *rstd, cudaStream_t stream)
{
    return mlk_cuda__norm_fwd<T, true>(rows, dim, x, gamma, beta, eps, y, mean, rstd, stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_rmsnorm_fwd(int rows, int dim, const T *x, const float *gamma, float eps,
    T *y, float *rstd, cudaStream_t stream)
{
    return mlk_cuda__norm_fwd<T, false>(rows, dim, x, gamma, NULL, eps, y, NULL, rstd, stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_layernorm_bwd(int rows, int dim, const T *x, const float *gamma,
    const float *mean, const float *rstd, const T *dy, T *dx, float *dgamma, float *dbeta,
    void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    return mlk_cuda__norm_bwd<T, true>(rows, dim, x, gamma, mean, rstd, dy, dx, dgamma, dbeta, workspace,
                                       workspace_bytes, stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_rmsnorm_bwd(int rows, int dim, const T *x, const float *gamma,
    const float *rstd, const T *dy, T *dx, float *dgamma, void *workspace, size_t workspace_bytes,
    cudaStream_t stream)
{
    return mlk_cuda__norm_bwd<T, false>(rows, dim, x, gamma, NULL, rstd, dy, dx, dgamma, NULL, workspace,
                                        workspace_bytes, stream);
}

/* ======================================================================
   softmax, top-k, sampling
   ====================================================================== */

/* A row of n logits is cut into n_seg = ceil(n / MLK_CUDA_SEGMENT)
   segments, one block of MLK_CUDA__SM_THREADS threads each (block index
   row * n_seg + seg). The scan kernel reads a segment once: its max m and
   sum l of exp((x - m) / T) (the online-softmax state), whether it holds a
   NaN or +inf, and for top-k its best keys, sorted in shared memory. The
   check kernel merges each row's segment states in order (m = max m_s,
   l = sum l_s exp((m_s - m) / T)) and flags all -inf rows; every later
   kernel reads the flag first, so a bad row anywhere leaves every output
   untouched, as on the CPU. */
#define MLK_CUDA__SM_THREADS 256
#define MLK_CUDA__SM_PER_THREAD (MLK_CUDA_SEGMENT / MLK_CUDA__SM_THREADS)

/* (logit, index) in one 64-bit key ordered as the output: the float's bits
   mapped to an unsigned order (-0 as +0) above the complemented index, so
   a larger key is a larger logit or, for equal logits, the lower index
   (mlkern.h's mlk__sm_key). Key 0 sits below every real key: padding. */
static __device__ __forceinline__ unsigned long long mlk_cuda__key(float v, int idx)
{
    unsigned u = __float_as_uint(v + 0.0f);
    u ^= (u >> 31) ? 0xFFFFFFFFu : 0x80000000u;
    return (unsigned long long)u << 32 | (unsigned)~(unsigned)idx;
}

static __device__ __forceinline__ float mlk_cuda__key_val(unsigned long long key)
{
    unsigned u = (unsigned)(key >> 32);
    return __uint_as_float((u & 0x80000000u) ? u & 0x7FFFFFFFu : ~u);
}

static __device__ __forceinline__ int mlk_cuda__key_idx(unsigned long long key) { return (int)~(unsigned)key; }

/* Bitonic sort of key[0, p) into descending order, p a power of two; the
   whole block takes part. */
static __device__ __forceinline__ void mlk_cuda__sort_keys(unsigned long long *key, int p)
{
    for (int size = 2; size <= p; size <<= 1)
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < p / 2; i += blockDim.x) {
                int lo = 2 * stride * (i / stride) + i % stride, hi = lo + stride;
                unsigned long long a = key[lo], b = key[hi];
                bool descending = (lo & size) == 0;
                if ((a < b) == descending) {
                    key[lo] = b;
                    key[hi] = a;
                }
            }
            __syncthreads();
        }
}

static __device__ __forceinline__ int mlk_cuda__pow2_at_least(int n)
{
    int p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* Loads count keys (padded with zeros to a power of two >= count and
   >= min_p) into shared memory and sorts them; returns the padded length. */
static __device__ __forceinline__ int mlk_cuda__load_sort(const unsigned long long *in, int count, int min_p,
                                                          unsigned long long *key)
{
    int p = mlk_cuda__pow2_at_least(count > min_p ? count : min_p);
    for (int i = threadIdx.x; i < p; i += blockDim.x) key[i] = i < count ? in[i] : 0ull;
    __syncthreads();
    mlk_cuda__sort_keys(key, p);
    return p;
}

/* The online-softmax state of a set of logits, and its merge (symmetric,
   so a butterfly leaves every lane with the same bits). */
struct mlk_cuda__ml {
    float m, l;
};

static __device__ __forceinline__ mlk_cuda__ml mlk_cuda__ml_merge(mlk_cuda__ml a, mlk_cuda__ml b, float inv_t)
{
    mlk_cuda__ml r;
    r.m = fmaxf(a.m, b.m);
    if (r.m == -INFINITY) { /* both empty: -inf - -inf would be NaN */
        r.l = 0.0f;
        return r;
    }
    r.l = a.l * expf((a.m - r.m) * inv_t) + b.l * expf((b.m - r.m) * inv_t);
    return r;
}

/* Merges the block's states; every thread gets the result. smem: 64 floats. */
static __device__ __forceinline__ mlk_cuda__ml mlk_cuda__block_ml(mlk_cuda__ml v, float inv_t, float *smem)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    for (int off = 16; off > 0; off >>= 1) {
        mlk_cuda__ml o = {__shfl_xor_sync(0xFFFFFFFFu, v.m, off), __shfl_xor_sync(0xFFFFFFFFu, v.l, off)};
        v = mlk_cuda__ml_merge(v, o, inv_t);
    }
    if (lane == 0) {
        smem[warp] = v.m;
        smem[32 + warp] = v.l;
    }
    __syncthreads();
    v.m = lane < n_warps ? smem[lane] : -INFINITY;
    v.l = lane < n_warps ? smem[32 + lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) {
        mlk_cuda__ml o = {__shfl_xor_sync(0xFFFFFFFFu, v.m, off), __shfl_xor_sync(0xFFFFFFFFu, v.l, off)};
        v = mlk_cuda__ml_merge(v, o, inv_t);
    }
    __syncthreads();
    return v;
}

/* Scan of one segment: state -> seg_ml, NaN / +inf -> *flag, and with
   KEYS its best n_keys keys, sorted, -> seg_keys (zero keys pad a segment
   shorter than n_keys). Dynamic shared memory: MLK_CUDA_SEGMENT keys. */
template <typename T, bool KEYS>
__global__ void __launch_bounds__(MLK_CUDA__SM_THREADS, 4) /* 4 blocks per SM: fits 64 registers, no spills */
mlk_cuda__sm_scan_kernel(int n, int n_seg, const T *__restrict__ x, float inv_t, int n_keys,
                         mlk_cuda__ml *__restrict__ seg_ml, unsigned long long *__restrict__ seg_keys,
                         int *__restrict__ flag)
{
    __shared__ float smem[64];
    int row = blockIdx.x / n_seg, seg = blockIdx.x % n_seg, base = seg * MLK_CUDA_SEGMENT;
    int len = n - base < MLK_CUDA_SEGMENT ? n - base : MLK_CUDA_SEGMENT;
    const T *xs = x + (size_t)row * n + base;
    float v[MLK_CUDA__SM_PER_THREAD];
    mlk_cuda__ml st = {-INFINITY, 0.0f};
    bool bad = false;
#pragma unroll
    for (int i = 0; i < MLK_CUDA__SM_PER_THREAD; i++) { /* coalesced: element i * threads + t */
        int e = i * MLK_CUDA__SM_THREADS + threadIdx.x;
        v[i] = e < len ? mlk_cuda__to_float(xs[e]) : -INFINITY;
        bad |= !(v[i] < INFINITY); /* NaN or +inf */
        st.m = fmaxf(st.m, v[i]);
    }
    if (st.m > -INFINITY)
#pragma unroll
        for (int i = 0; i < MLK_CUDA__SM_PER_THREAD; i++) st.l += expf((v[i] - st.m) * inv_t);
    st = mlk_cuda__block_ml(st, inv_t, smem);
    bad = __syncthreads_or(bad);
    if (KEYS) {
        unsigned long long *key = (unsigned long long *)mlk_cuda__dynamic_smem();
        int p = mlk_cuda__pow2_at_least(len > n_keys ? len : n_keys);
#pragma unroll
        for (int i = 0; i < MLK_CUDA__SM_PER_THREAD; i++) {
            int e = i * MLK_CUDA__SM_THREADS + threadIdx.x;
            if (e < p) key[e] = e < len ? mlk_cuda__key(v[i], base + e) : 0ull;
        }
        __syncthreads();
        mlk_cuda__sort_keys(key, p);
        for (int j = threadIdx.x; j < n_keys; j += blockDim.x) seg_keys[(size_t)blockIdx.x * n_keys + j] = key[j];
    }
    if (threadIdx.x == 0) {
        seg_ml[blockIdx.x] = st;
        if (bad) atomicOr(flag, 1);
    }
}

/* One thread per row: merges the row's segment states in order into
   row_ml, and flags a row that is all -inf. */
__global__ void __launch_bounds__(256)
mlk_cuda__sm_check_kernel(int rows, int n_seg, float inv_t, const mlk_cuda__ml *__restrict__ seg_ml,
                          mlk_cuda__ml *__restrict__ row_ml, int *__restrict__ flag)
{
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    mlk_cuda__ml st = seg_ml[(size_t)row * n_seg];
    for (int s = 1; s < n_seg; s++) st = mlk_cuda__ml_merge(st, seg_ml[(size_t)row * n_seg + s], inv_t);
    row_ml[row] = st;
    if (!(st.m > -INFINITY)) atomicOr(flag, 1);
}

/* Block 0 reports the flag: MLK_OK or MLK_ERR_VALUE. */
static __device__ __forceinline__ void mlk_cuda__report(const int *flag, int *status)
{
    if (status && blockIdx.x == 0 && threadIdx.x == 0) *status = *flag ? (int)MLK_ERR_VALUE : (int)MLK_OK;
}

/* Softmax / log-softmax output of one segment, from the row's state. */
template <typename T, bool LOG>
__global__ void __launch_bounds__(MLK_CUDA__SM_THREADS)
mlk_cuda__sm_write_kernel(int n, int n_seg, const T *__restrict__ x, const mlk_cuda__ml *__restrict__ row_ml,
                          const int *__restrict__ flag, int *__restrict__ status, T *__restrict__ y)
{
    mlk_cuda__report(flag, status);
    if (*flag) return;
    int row = blockIdx.x / n_seg, base = (blockIdx.x % n_seg) * MLK_CUDA_SEGMENT;
    int len = n - base < MLK_CUDA_SEGMENT ? n - base : MLK_CUDA_SEGMENT;
    mlk_cuda__ml st = row_ml[row];
    float log_l = logf(st.l);
    size_t off = (size_t)row * n + base;
    for (int e = threadIdx.x; e < len; e += blockDim.x) {
        float d = mlk_cuda__to_float(x[off + e]) - st.m;
        y[off + e] = mlk_cuda__from_float<T>(LOG ? d - log_l : expf(d) / st.l);
    }
}

/* A level of the top-k merge: output list o of a row holds the best
   out_len keys of input lists 2o and 2o + 1 (each sorted, zero keys
   padding; an odd last list has no partner), one key per thread, found
   by a co-rank search (how many of the first j outputs come from list
   2o, ties to it), so the result is sorted too. Outputs past cap, and
   rows with only[row] == 0 (only non-NULL), are left unwritten; an
   output reads input keys before its own position only, so a capped
   level feeds the next one. */
__global__ void __launch_bounds__(MLK_CUDA__SM_THREADS)
mlk_cuda__topk_merge_kernel(int n_in, int in_len, int n_out, int out_len, int chunks, int cap,
                            const int *__restrict__ only, const unsigned long long *__restrict__ in,
                            unsigned long long *__restrict__ out)
{
    int chunk = blockIdx.x % chunks, list = blockIdx.x / chunks % n_out, row = blockIdx.x / chunks / n_out;
    int j = chunk * MLK_CUDA__SM_THREADS + threadIdx.x;
    if (j >= out_len || j >= cap || (only && !only[row])) return;
    const unsigned long long *a = in + ((size_t)row * n_in + 2 * (size_t)list) * in_len, *b = a + in_len;
    int la = in_len, lb = 2 * list + 1 < n_in ? in_len : 0;
    unsigned long long *o = out + ((size_t)row * n_out + list) * out_len;
    if (j >= la + lb) { /* past an unpartnered list: padding */
        o[j] = 0ull;
        return;
    }
    int lo = j - lb > 0 ? j - lb : 0, hi = j < la ? j : la;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (a[mid] >= b[j - 1 - mid]) lo = mid + 1;
        else hi = mid;
    }
    int from_b = j - lo;
    o[j] = lo < la && (from_b >= lb || a[lo] >= b[from_b]) ? a[lo] : b[from_b];
}

/* A row's candidates, best first: the last merge level's count keys,
   sorted in shared memory (padded to at least `at_least`) when they fit
   one block; more than that is a single list, sorted already. */
static __device__ __forceinline__ const unsigned long long *mlk_cuda__row_cands(const unsigned long long *in, int count,
                                                                                int at_least, unsigned long long *smem)
{
    if (count > MLK_CUDA_SEGMENT) return in;
    mlk_cuda__load_sort(in, count, at_least, smem);
    return smem;
}

/* Last step: the row's best k keys become probabilities (or log-probabilities)
   of softmax(x / T) over the whole row, and indices. */
template <bool LOG>
__global__ void __launch_bounds__(MLK_CUDA__SM_THREADS)
mlk_cuda__topk_final_kernel(int count, int k, float inv_t, const unsigned long long *__restrict__ in,
                            const mlk_cuda__ml *__restrict__ row_ml, const int *__restrict__ flag,
                            int *__restrict__ status, float *__restrict__ out, int32_t *__restrict__ idx)
{
    mlk_cuda__report(flag, status);
    if (*flag) return;
    int row = blockIdx.x;
    const unsigned long long *key = mlk_cuda__row_cands(in + (size_t)row * count, count, k,
                                                        (unsigned long long *)mlk_cuda__dynamic_smem());
    mlk_cuda__ml st = row_ml[row];
    float log_l = logf(st.l);
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        float d = (mlk_cuda__key_val(key[j]) - st.m) * inv_t;
        out[(size_t)row * k + j] = LOG ? d - log_l : expf(d) / st.l;
        idx[(size_t)row * k + j] = mlk_cuda__key_idx(key[j]);
    }
}

/* ---- host side ---- */

/* What a softmax-family call needs: segments, the top-k merge levels, and
   the workspace carved from them. Level 0 is the scan's: a sorted list of
   seg_keys keys per segment; level r holds the best level_len(r) keys of
   2^r segments in each of level_lists(r) lists. The merge stops at the
   first level whose keys fit one block (or that is one list). */
struct mlk_cuda__sm_plan {
    int n_seg, keys, seg_keys, rounds; /* keys: candidates per row, 0 for none */
    size_t level_keys;                 /* per row, the most of any level past 0 */
    size_t bytes;
};

static inline int mlk_cuda__n_seg(int n) { return (n + MLK_CUDA_SEGMENT - 1) / MLK_CUDA_SEGMENT; }

static inline int mlk_cuda__level_lists(const mlk_cuda__sm_plan &p, int r) { return ((p.n_seg - 1) >> r) + 1; }

static inline int mlk_cuda__level_len(const mlk_cuda__sm_plan &p, int r)
{
    long long len = (long long)p.seg_keys << r;
    return len < p.keys ? (int)len : p.keys;
}

/* keys = 0: no top-k. Returns false on size overflow. */
static inline bool mlk_cuda__sm_planning(int rows, int n, int keys, mlk_cuda__sm_plan *p)
{
    size_t a, level0 = 0, level, blocks;
    p->n_seg = mlk_cuda__n_seg(n);
    p->keys = keys < n ? keys : n;
    p->seg_keys = p->keys < MLK_CUDA_SEGMENT ? p->keys : MLK_CUDA_SEGMENT;
    p->rounds = 0;
    p->level_keys = 0;
    if (!mlk_cuda__count(rows, p->n_seg, sizeof(mlk_cuda__ml), &a)) return false;
    p->bytes = 256 + mlk_cuda__round(a * sizeof(mlk_cuda__ml)) + mlk_cuda__round((size_t)rows * sizeof(mlk_cuda__ml));
    if (keys) {
        if (!mlk_cuda__count(rows, p->n_seg * p->seg_keys, sizeof(unsigned long long), &level0)) return false;
        for (int r = 0; mlk_cuda__level_lists(*p, r) > 1 &&
                        (size_t)mlk_cuda__level_lists(*p, r) * mlk_cuda__level_len(*p, r) > MLK_CUDA_SEGMENT;) {
            p->rounds = ++r;
            level = (size_t)mlk_cuda__level_lists(*p, r) * mlk_cuda__level_len(*p, r);
            /* one merge thread per key, and block indices within a grid */
            if (!mlk_cuda__count(rows, (int)(level / MLK_CUDA__SM_THREADS + mlk_cuda__level_lists(*p, r)),
                                 1, &blocks) || blocks > 0x7FFFFFFFu)
                return false;
            p->level_keys = level > p->level_keys ? level : p->level_keys;
        }
        /* level 0, then levels 1, 3, ... and 2, 4, ... in turn */
        p->bytes += mlk_cuda__round(level0 * sizeof(unsigned long long)) +
                    (p->rounds > 0) * mlk_cuda__round((size_t)rows * p->level_keys * sizeof(unsigned long long)) +
                    (p->rounds > 1) * mlk_cuda__round((size_t)rows * p->level_keys * sizeof(unsigned long long));
    }
    p->bytes += 256; /* the sampler's copy of the rng state */
    return true;
}

/* The pieces of the workspace, in the order mlk_cuda__sm_planning counted them. */
struct mlk_cuda__sm_ws {
    int *flag;
    mlk_cuda__ml *seg_ml, *row_ml;
    unsigned long long *keys[3], *rng;
};

static inline mlk_cuda__sm_ws mlk_cuda__sm_carve(mlk_cuda__scratch *sc, int rows, const mlk_cuda__sm_plan &p)
{
    mlk_cuda__sm_ws w;
    w.flag = mlk_cuda__take<int>(sc, 64);
    w.seg_ml = mlk_cuda__take<mlk_cuda__ml>(sc, (size_t)rows * p.n_seg);
    w.row_ml = mlk_cuda__take<mlk_cuda__ml>(sc, (size_t)rows);
    w.keys[0] = p.keys ? mlk_cuda__take<unsigned long long>(sc, (size_t)rows * p.n_seg * p.seg_keys) : NULL;
    w.keys[1] = p.rounds > 0 ? mlk_cuda__take<unsigned long long>(sc, (size_t)rows * p.level_keys) : NULL;
    w.keys[2] = p.rounds > 1 ? mlk_cuda__take<unsigned long long>(sc, (size_t)rows * p.level_keys) : NULL;
    w.rng = mlk_cuda__take<unsigned long long>(sc, 32);
    return w;
}

static inline unsigned long long *mlk_cuda__level_keys(const mlk_cuda__sm_ws &w, int r)
{
    return r == 0 ? w.keys[0] : w.keys[2 - r % 2];
}

/* The last level: where each row's candidates are, and how many. */
static inline const unsigned long long *mlk_cuda__cands(const mlk_cuda__sm_plan &p, const mlk_cuda__sm_ws &w,
                                                        int *count)
{
    *count = mlk_cuda__level_lists(p, p.rounds) * mlk_cuda__level_len(p, p.rounds);
    return mlk_cuda__level_keys(w, p.rounds);
}

static const size_t mlk_cuda__key_smem = MLK_CUDA_SEGMENT * sizeof(unsigned long long);

/* Clears the flag, scans every segment and checks every row. */
template <typename T>
static inline cudaError_t mlk_cuda__sm_scan(int rows, int n, const T *x, float inv_t, const mlk_cuda__sm_plan &p,
                                            const mlk_cuda__sm_ws &w, cudaStream_t stream)
{
    cudaError_t e = cudaMemsetAsync(w.flag, 0, sizeof(int), stream);
    unsigned blocks = (unsigned)((size_t)rows * p.n_seg);
    if (e != cudaSuccess) return e;
    if (p.keys)
        e = mlk_cuda__launch(mlk_cuda__sm_scan_kernel<T, true>, dim3(blocks), dim3(MLK_CUDA__SM_THREADS),
                             mlk_cuda__key_smem, stream, n, p.n_seg, x, inv_t, p.seg_keys, w.seg_ml, w.keys[0], w.flag);
    else
        e = mlk_cuda__launch(mlk_cuda__sm_scan_kernel<T, false>, dim3(blocks), dim3(MLK_CUDA__SM_THREADS), 0, stream,
                             n, p.n_seg, x, inv_t, 0, w.seg_ml, (unsigned long long *)NULL, w.flag);
    if (e != cudaSuccess) return e;
    return mlk_cuda__launch(mlk_cuda__sm_check_kernel, dim3((unsigned)((rows + 255) / 256)), dim3(256), 0, stream,
                            rows, p.n_seg, inv_t, (const mlk_cuda__ml *)w.seg_ml, w.row_ml, w.flag);
}

/* Runs the merge levels; cap and only as mlk_cuda__topk_merge_kernel's. */
static inline cudaError_t mlk_cuda__topk_rounds(int rows, const mlk_cuda__sm_plan &p, const mlk_cuda__sm_ws &w, int cap,
                                                const int *only, cudaStream_t stream)
{
    for (int r = 1; r <= p.rounds; r++) {
        int lists = mlk_cuda__level_lists(p, r), len = mlk_cuda__level_len(p, r);
        int chunks = (len + MLK_CUDA__SM_THREADS - 1) / MLK_CUDA__SM_THREADS;
        cudaError_t e = mlk_cuda__launch(mlk_cuda__topk_merge_kernel, dim3((unsigned)((size_t)rows * lists * chunks)),
                                         dim3(MLK_CUDA__SM_THREADS), 0, stream, mlk_cuda__level_lists(p, r - 1),
                                         mlk_cuda__level_len(p, r - 1), lists, len, chunks, cap, only,
                                         (const unsigned long long *)mlk_cuda__level_keys(w, r - 1),
                                         mlk_cuda__level_keys(w, r));
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

MLKERN_CUDA_DEF size_t mlk_cuda_softmax_workspace_size(int rows, int n)
{
    mlk_cuda__sm_plan p;
    if (rows < 1 || n < 1 || !mlk_cuda__sm_planning(rows, n, 0, &p)) return 0;
    return p.bytes;
}

MLKERN_CUDA_DEF size_t mlk_cuda_topk_workspace_size(int rows, int n, int k)
{
    mlk_cuda__sm_plan p;
    if (rows < 1 || n < 1 || k < 1 || k > n || !mlk_cuda__sm_planning(rows, n, k, &p)) return 0;
    return p.bytes;
}

static inline mlk_status mlk_cuda__sm_sizes(int rows, int n)
{
    size_t count;
    if (rows < 1 || n < 1) return MLK_ERR_SHAPE;
    if (!mlk_cuda__count(rows, n, sizeof(float), &count) || (size_t)rows * mlk_cuda__n_seg(n) > 0x7FFFFFFFu)
        return MLK_ERR_OVERFLOW;
    return MLK_OK;
}

template <typename T, bool LOG>
static inline mlk_status mlk_cuda__sm_full(int rows, int n, const T *x, T *y, int *status, void *workspace,
                                           size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__sm_plan p;
    mlk_cuda__scratch sc;
    if (!x || !y) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__sm_sizes(rows, n);
    if (st != MLK_OK) return st;
    if (!mlk_cuda__sm_planning(rows, n, 0, &p)) return MLK_ERR_OVERFLOW;
    st = mlk_cuda__scratch_init(&sc, workspace, workspace_bytes, p.bytes, stream);
    if (st != MLK_OK) return st;
    mlk_cuda__sm_ws w = mlk_cuda__sm_carve(&sc, rows, p);
    cudaError_t e = mlk_cuda__sm_scan<T>(rows, n, x, 1.0f, p, w, stream);
    if (e == cudaSuccess)
        e = mlk_cuda__launch(mlk_cuda__sm_write_kernel<T, LOG>, dim3((unsigned)((size_t)rows * p.n_seg)),
                             dim3(MLK_CUDA__SM_THREADS), 0, stream, n, p.n_seg, x, (const mlk_cuda__ml *)w.row_ml,
                             (const int *)w.flag, status, y);
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_softmax(int rows, int n, const T *x, T *y, int *status, void *workspace,
    size_t workspace_bytes, cudaStream_t stream)
{
    return mlk_cuda__sm_full<T, false>(rows, n, x, y, status, workspace, workspace_bytes, stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_log_softmax(int rows, int n, const T *x, T *y, int *status, void *workspace,
    size_t workspace_bytes, cudaStream_t stream)
{
    return mlk_cuda__sm_full<T, true>(rows, n, x, y, status, workspace, workspace_bytes, stream);
}

template <typename T, bool LOG>
static inline mlk_status mlk_cuda__topk(int rows, int n, const T *logits, float temperature, int k, float *out,
                                        int32_t *idx, int *status, void *workspace, size_t workspace_bytes,
                                        cudaStream_t stream)
{
    mlk_cuda__sm_plan p;
    mlk_cuda__scratch sc;
    size_t out_count;
    if (!logits || !out || !idx) return MLK_ERR_NULL;
    if (rows < 1 || n < 1 || k < 1 || k > n) return MLK_ERR_SHAPE;
    mlk_status st = mlk_cuda__sm_sizes(rows, n);
    if (st != MLK_OK) return st;
    if (!mlk_cuda__count(rows, k, sizeof(float), &out_count)) return MLK_ERR_OVERFLOW;
    if (!(temperature > 0.0f && 1.0f / temperature < INFINITY) || temperature == INFINITY) return MLK_ERR_ARG;
    if (!mlk_cuda__sm_planning(rows, n, k, &p)) return MLK_ERR_OVERFLOW;
    st = mlk_cuda__scratch_init(&sc, workspace, workspace_bytes, p.bytes, stream);
    if (st != MLK_OK) return st;
    mlk_cuda__sm_ws w = mlk_cuda__sm_carve(&sc, rows, p);
    float inv_t = 1.0f / temperature;
    int count;
    const unsigned long long *cand = mlk_cuda__cands(p, w, &count);
    cudaError_t e = mlk_cuda__sm_scan<T>(rows, n, logits, inv_t, p, w, stream);
    if (e == cudaSuccess) e = mlk_cuda__topk_rounds(rows, p, w, k, NULL, stream);
    if (e == cudaSuccess)
        e = mlk_cuda__launch(mlk_cuda__topk_final_kernel<LOG>, dim3((unsigned)rows), dim3(MLK_CUDA__SM_THREADS),
                             mlk_cuda__key_smem, stream, count, k, inv_t, cand, (const mlk_cuda__ml *)w.row_ml,
                             (const int *)w.flag, status, out, idx);
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_topk_softmax(int rows, int n, const T *logits, float temperature, int k,
    float *probs, int32_t *idx, int *status, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    return mlk_cuda__topk<T, false>(rows, n, logits, temperature, k, probs, idx, status, workspace, workspace_bytes,
                                    stream);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_topk_log_softmax(int rows, int n, const T *logits, int k, float *logprobs,
    int32_t *idx, int *status, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    return mlk_cuda__topk<T, true>(rows, n, logits, 1.0f, k, logprobs, idx, status, workspace, workspace_bytes,
                                   stream);
}

/* ---- sampling ---- */

/* mlkern.h's mlk__expf, operation for operation (no fused multiply-adds:
   the CPU's scalar code has none), so the sampler's weights are the CPU's
   bits. */
static __device__ __forceinline__ float mlk_cuda__expf_cpu(float x)
{
    if (!(x > -87.33654f)) return (x != x) ? x : 0.0f;
    if (x > 88.72283f) return INFINITY;
    float n = floorf(__fadd_rn(__fmul_rn(x, 1.44269504f), 0.5f));
    float r = __fsub_rn(x, __fmul_rn(n, 0.693145752f));
    r = __fsub_rn(r, __fmul_rn(n, 1.42860677e-6f));
    float p = 1.0f / 720;
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 120);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 24);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 6);
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    return __fmul_rn(p, __int_as_float(((int)n + 127) << 23));
}

/* mlk_sample's draw for row r: splitmix64 number r + 1 after the state. */
static __device__ __forceinline__ double mlk_cuda__uniform(unsigned long long state, unsigned long long r)
{
    unsigned long long z = state + (r + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* Host-side sampler settings, as the kernels take them. */
struct mlk_cuda__sampler {
    float inv_t, top_p, min_p;
    int greedy;
};

/* Block 0 reports and, on success, advances *rng_state by rows draws. */
static __device__ __forceinline__ void mlk_cuda__sample_done(int rows, const int *flag, int *status,
                                                             const unsigned long long *state_copy,
                                                             unsigned long long *rng_state)
{
    mlk_cuda__report(flag, status);
    if (blockIdx.x == 0 && threadIdx.x == 0 && !*flag)
        *rng_state = *state_copy + (unsigned long long)rows * 0x9E3779B97F4A7C15ull;
}

/* mlk_sample's weight of logit v: exp((v - max) / T), the CPU's bits. */
static __device__ __forceinline__ float mlk_cuda__weight(float v, float m, float inv_t)
{
    return mlk_cuda__expf_cpu(__fmul_rn(__fsub_rn(v, m), inv_t));
}

/* The whole row's mass from its segments' masses ([rows, n_seg]), in order. */
static __device__ __forceinline__ double mlk_cuda__row_total(const double *seg_total, int n_seg, int row)
{
    double total = 0.0;
    for (int g = 0; g < n_seg; g++) total += seg_total[(size_t)row * n_seg + g];
    return total;
}

/* With candidates (top_k, top_p or greedy): one block per row gets the
   row's candidates in order (mlk_cuda__row_cands); thread 0 then runs
   mlk_sample's walk over the first len of them in the CPU's order, so the
   double sums are the CPU's too. The walk's total is the candidates' mass
   (top_k, or a whole row), else seg_total's (top_p alone over a longer
   row: the whole row's, in another order than the CPU's). more: NULL, or
   a first look at the best len < n candidates: a row whose kept prefix
   may not end inside them gets more[row] = 1 and no draw yet (else 0);
   the call without `more` reports the status and advances the state. */
__global__ void __launch_bounds__(MLK_CUDA__SM_THREADS)
mlk_cuda__sample_cand_kernel(int rows, int n, int count, int len, mlk_cuda__sampler s,
                             const unsigned long long *__restrict__ in, const double *__restrict__ seg_total, int n_seg,
                             const mlk_cuda__ml *__restrict__ row_ml, const int *__restrict__ flag,
                             int *__restrict__ more, int *__restrict__ status,
                             const unsigned long long *__restrict__ state_copy, unsigned long long *rng_state,
                             int32_t *__restrict__ out)
{
    int row = blockIdx.x;
    if (!more) mlk_cuda__sample_done(rows, flag, status, state_copy, rng_state);
    if (more && threadIdx.x == 0) more[row] = 0;
    if (*flag) return;
    const unsigned long long *key = mlk_cuda__row_cands(in + (size_t)row * count, count, len,
                                                        (unsigned long long *)mlk_cuda__dynamic_smem());
    if (threadIdx.x != 0) return;
    if (s.greedy) {
        out[row] = mlk_cuda__key_idx(key[0]);
        return;
    }
    float m = row_ml[row].m;
    double total = 0.0, kept = 0.0, target;
    int n_keep = 0;
    if (seg_total) total = mlk_cuda__row_total(seg_total, n_seg, row);
    else
        for (int j = 0; j < len; j++) total += mlk_cuda__weight(mlk_cuda__key_val(key[j]), m, s.inv_t);
    for (;;) {
        if (n_keep == len) break;
        float w = mlk_cuda__weight(mlk_cuda__key_val(key[n_keep]), m, s.inv_t);
        if (n_keep > 0 && !(kept < (double)s.top_p * total && w >= s.min_p && w > 0.0f)) break;
        kept += w;
        n_keep++;
    }
    if (more && n_keep == len && len < n) {
        more[row] = 1;
        return;
    }
    target = mlk_cuda__uniform(*state_copy, (unsigned long long)row) * kept;
    for (int j = 0; j < n_keep - 1; j++) {
        target -= mlk_cuda__weight(mlk_cuda__key_val(key[j]), m, s.inv_t);
        if (target < 0.0) {
            out[row] = mlk_cuda__key_idx(key[j]);
            return;
        }
    }
    out[row] = mlk_cuda__key_idx(key[n_keep - 1]);
}

/* top_p alone, the rows (only[row] != 0) whose kept prefix reaches past
   the first candidates: all n of their sorted keys, walked by the whole
   block. Thread t takes the run of keys [t * run, (t + 1) * run): it sums
   their weights, a scan of the sums in thread order gives each run the
   mass before it, and the first run where the walk stops (the kept mass
   reaching top_p, or min_p) gives the kept prefix; the draw finds its
   token the same way. The sums run in another order than the CPU's, as
   the row's mass already does. Reports the status, advances the state. */
__global__ void __launch_bounds__(MLK_CUDA__SM_THREADS)
mlk_cuda__sample_wide_kernel(int rows, int n, mlk_cuda__sampler s, const unsigned long long *__restrict__ in,
                             const double *__restrict__ seg_total, int n_seg, const mlk_cuda__ml *__restrict__ row_ml,
                             const int *__restrict__ flag, const int *__restrict__ only, int *__restrict__ status,
                             const unsigned long long *__restrict__ state_copy, unsigned long long *rng_state,
                             int32_t *__restrict__ out)
{
    __shared__ double before[MLK_CUDA__SM_THREADS], kept;
    __shared__ int stop, hit;
    int row = blockIdx.x, t = threadIdx.x;
    mlk_cuda__sample_done(rows, flag, status, state_copy, rng_state);
    if (*flag || !only[row]) return; /* the same for the whole block */
    const unsigned long long *key = in + (size_t)row * n;
    float m = row_ml[row].m;
    int run = (n + MLK_CUDA__SM_THREADS - 1) / MLK_CUDA__SM_THREADS, lo = t * run, hi = lo + run < n ? lo + run : n;
    double mass = 0.0;
    for (int j = lo; j < hi; j++) mass += mlk_cuda__weight(mlk_cuda__key_val(key[j]), m, s.inv_t);
    before[t] = mass;
    __syncthreads();
    if (t == 0) {
        double acc = 0.0;
        for (int i = 0; i < MLK_CUDA__SM_THREADS; i++) {
            double run_mass = before[i];
            before[i] = acc;
            acc += run_mass;
        }
        kept = acc; /* every key, unless the walk stops before the end */
        stop = hit = n;
    }
    __syncthreads();
    double limit = (double)s.top_p * mlk_cuda__row_total(seg_total, n_seg, row);
    int my_stop = n;
    mass = before[t];
    for (int j = lo; j < hi; j++) {
        float w = mlk_cuda__weight(mlk_cuda__key_val(key[j]), m, s.inv_t);
        if (j > 0 && !(mass < limit && w >= s.min_p && w > 0.0f)) {
            my_stop = j;
            break;
        }
        mass += w;
    }
    if (my_stop < n) atomicMin(&stop, my_stop);
    __syncthreads();
    if (my_stop == stop && my_stop < n) kept = mass; /* the one run holding the stop */
    __syncthreads();
    int n_keep = stop;
    double target = mlk_cuda__uniform(*state_copy, (unsigned long long)row) * kept - before[t];
    for (int j = lo; j < hi && j < n_keep - 1; j++) {
        target -= mlk_cuda__weight(mlk_cuda__key_val(key[j]), m, s.inv_t);
        if (target < 0.0) {
            atomicMin(&hit, j);
            break;
        }
    }
    __syncthreads();
    if (t == 0) out[row] = mlk_cuda__key_idx(key[hit < n_keep - 1 ? hit : n_keep - 1]);
}

/* The kept weight of logit v: w = exp((v - m) / T) if w >= min_p, else 0. */
static __device__ __forceinline__ float mlk_cuda__kept_weight(float v, float m, const mlk_cuda__sampler &s)
{
    float w = mlk_cuda__weight(v, m, s.inv_t);
    return w >= s.min_p && w > 0.0f ? w : 0.0f;
}

/* Without candidates: each segment's kept mass, in double, summed in an
   order fixed by the block shape. */
template <typename T>
__global__ void __launch_bounds__(MLK_CUDA__SM_THREADS)
mlk_cuda__sample_mass_kernel(int n, int n_seg, const T *__restrict__ x, mlk_cuda__sampler s,
                             const mlk_cuda__ml *__restrict__ row_ml, const int *__restrict__ flag,
                             double *__restrict__ seg_mass)
{
    __shared__ double part[MLK_CUDA__SM_THREADS];
    if (*flag) return;
    int row = blockIdx.x / n_seg, base = (blockIdx.x % n_seg) * MLK_CUDA_SEGMENT;
    int len = n - base < MLK_CUDA_SEGMENT ? n - base : MLK_CUDA_SEGMENT;
    float m = row_ml[row].m;
    const T *xs = x + (size_t)row * n + base;
    double acc = 0.0;
    for (int e = threadIdx.x; e < len; e += blockDim.x) acc += mlk_cuda__kept_weight(mlk_cuda__to_float(xs[e]), m, s);
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int half = MLK_CUDA__SM_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) seg_mass[blockIdx.x] = part[0];
}

/* ... then one thread per row draws: it finds the segment where the running
   mass passes u * kept, then the token inside it, in index order. */
template <typename T>
__global__ void __launch_bounds__(32)
mlk_cuda__sample_walk_kernel(int rows, int n, int n_seg, const T *__restrict__ x, mlk_cuda__sampler s,
                             const mlk_cuda__ml *__restrict__ row_ml, const double *__restrict__ seg_mass,
                             const int *__restrict__ flag, int *__restrict__ status,
                             const unsigned long long *__restrict__ state_copy, unsigned long long *rng_state,
                             int32_t *__restrict__ out)
{
    mlk_cuda__sample_done(rows, flag, status, state_copy, rng_state);
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (*flag || row >= rows) return;
    const double *mass = seg_mass + (size_t)row * n_seg;
    const T *xr = x + (size_t)row * n;
    float m = row_ml[row].m;
    double kept = 0.0, target;
    int last_seg = 0;
    for (int g = 0; g < n_seg; g++) {
        kept += mass[g];
        if (mass[g] > 0.0) last_seg = g;
    }
    target = mlk_cuda__uniform(*state_copy, (unsigned long long)row) * kept;
    for (int g = 0; g < n_seg; g++) {
        if (!(target - mass[g] < 0.0)) {
            target -= mass[g];
            continue;
        }
        int end = n - g * MLK_CUDA_SEGMENT < MLK_CUDA_SEGMENT ? n : (g + 1) * MLK_CUDA_SEGMENT;
        for (int i = g * MLK_CUDA_SEGMENT; i < end; i++) {
            float w = mlk_cuda__kept_weight(mlk_cuda__to_float(xr[i]), m, s);
            if (w == 0.0f) continue;
            target -= w;
            if (target < 0.0) {
                out[row] = i;
                return;
            }
        }
    }
    /* rounding left the target unspent: the last kept token, as the CPU */
    int end = n - last_seg * MLK_CUDA_SEGMENT < MLK_CUDA_SEGMENT ? n : (last_seg + 1) * MLK_CUDA_SEGMENT;
    for (int i = end - 1; i >= last_seg * MLK_CUDA_SEGMENT; i--)
        if (mlk_cuda__kept_weight(mlk_cuda__to_float(xr[i]), m, s) != 0.0f) {
            out[row] = i;
            return;
        }
}

/* Candidates a sampler needs per row: 1 (greedy), top_k, the whole row
   (top_p alone), or 0 (neither: the mass-and-walk path). */
static inline int mlk_cuda__sample_cap(int n, const mlk_sampler *s)
{
    if (s->temperature == 0.0f) return 1;
    if (s->top_k > 0 && s->top_k < n) return s->top_k;
    return s->top_p < 1.0f ? n : 0;
}

/* top_p alone over more than one segment first merges only this many
   best candidates per row, then all of them for the rows whose kept
   prefix does not end inside those (as mlk_sample grows its candidate set). */
#define MLK_CUDA__TOP_P_FIRST 1024

static inline bool mlk_cuda__top_p_grows(int n, int cap, const mlk_cuda__sm_plan &p) { return cap == n && p.rounds > 0; }

static inline bool mlk_cuda__sample_bytes(int rows, int n, const mlk_sampler *s, size_t *bytes)
{
    mlk_cuda__sm_plan p;
    size_t mass;
    if (!mlk_cuda__sm_planning(rows, n, mlk_cuda__sample_cap(n, s), &p) ||
        !mlk_cuda__count(rows, p.n_seg, sizeof(double), &mass))
        return false;
    *bytes = p.bytes + mlk_cuda__round(mass * sizeof(double)) + mlk_cuda__round((size_t)rows * sizeof(int));
    return true;
}

static inline mlk_status mlk_cuda__sample_check(int rows, int n, const mlk_sampler *s)
{
    mlk_status st = mlk_cuda__sm_sizes(rows, n);
    if (st != MLK_OK) return st;
    if (!(s->temperature == 0.0f || 1.0f / s->temperature < INFINITY) || !(s->temperature >= 0.0f) ||
        s->temperature == INFINITY || s->top_k < 0 || !(s->top_p > 0.0f) || !(s->min_p >= 0.0f && s->min_p <= 1.0f))
        return MLK_ERR_ARG;
    return MLK_OK;
}

MLKERN_CUDA_DEF size_t mlk_cuda_sample_workspace_size(int rows, int n, const mlk_sampler *s)
{
    size_t bytes;
    if (!s || mlk_cuda__sample_check(rows, n, s) != MLK_OK || !mlk_cuda__sample_bytes(rows, n, s, &bytes)) return 0;
    return bytes;
}

/* The candidate paths: top_k or greedy in one walk; top_p alone over one
   segment the same; over more, the row's mass first, a walk over the best
   MLK_CUDA__TOP_P_FIRST, then the full merge and the block-wide walk for
   the rows that need it. */
static inline cudaError_t mlk_cuda__sample_cands(int rows, int n, int cap, const mlk_cuda__sampler &ks,
                                                 const mlk_cuda__sm_plan &p, const mlk_cuda__sm_ws &w,
                                                 const double *seg_total, int *more, int *status,
                                                 unsigned long long *state, int32_t *out, cudaStream_t stream)
{
    int count;
    const unsigned long long *cand = mlk_cuda__cands(p, w, &count);
    bool grow = mlk_cuda__top_p_grows(n, cap, p);
    int first = grow ? MLK_CUDA__TOP_P_FIRST : cap;
    cudaError_t e = mlk_cuda__topk_rounds(rows, p, w, first, NULL, stream);
    if (e == cudaSuccess)
        e = mlk_cuda__launch(mlk_cuda__sample_cand_kernel, dim3((unsigned)rows), dim3(MLK_CUDA__SM_THREADS),
                             mlk_cuda__key_smem, stream, rows, n, count, first, ks, cand, grow ? seg_total : NULL,
                             p.n_seg, (const mlk_cuda__ml *)w.row_ml, (const int *)w.flag, grow ? more : NULL,
                             status, (const unsigned long long *)w.rng, state, out);
    if (!grow || e != cudaSuccess) return e;
    e = mlk_cuda__topk_rounds(rows, p, w, n, more, stream);
    if (e != cudaSuccess) return e;
    return mlk_cuda__launch(mlk_cuda__sample_wide_kernel, dim3((unsigned)rows), dim3(MLK_CUDA__SM_THREADS), 0, stream,
                            rows, n, ks, cand, seg_total, p.n_seg, (const mlk_cuda__ml *)w.row_ml,
                            (const int *)w.flag, (const int *)more, status, (const unsigned long long *)w.rng, state,
                            out);
}

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_sample(int rows, int n, const T *logits, const mlk_sampler *s,
    uint64_t *rng_state, int32_t *out, int *status, void *workspace, size_t workspace_bytes, cudaStream_t stream)
{
    mlk_cuda__sm_plan p;
    mlk_cuda__scratch sc;
    size_t bytes;
    if (!logits || !s || !rng_state || !out) return MLK_ERR_NULL;
    mlk_status st = mlk_cuda__sample_check(rows, n, s);
    if (st != MLK_OK) return st;
    int cap = mlk_cuda__sample_cap(n, s);
    if (!mlk_cuda__sm_planning(rows, n, cap, &p) || !mlk_cuda__sample_bytes(rows, n, s, &bytes)) return MLK_ERR_OVERFLOW;
    st = mlk_cuda__scratch_init(&sc, workspace, workspace_bytes, bytes, stream);
    if (st != MLK_OK) return st;
    mlk_cuda__sm_ws w = mlk_cuda__sm_carve(&sc, rows, p);
    double *seg_mass = mlk_cuda__take<double>(&sc, (size_t)rows * p.n_seg);
    int *more = mlk_cuda__take<int>(&sc, (size_t)rows);
    mlk_cuda__sampler ks;
    ks.greedy = s->temperature == 0.0f;
    ks.inv_t = ks.greedy ? 1.0f : 1.0f / s->temperature;
    ks.top_p = s->top_p;
    ks.min_p = s->min_p;
    /* top_p alone over several segments needs the whole row's mass: every weight counts */
    mlk_cuda__sampler mass_of = ks;
    if (mlk_cuda__top_p_grows(n, cap, p)) mass_of.min_p = 0.0f;
    unsigned long long *state = (unsigned long long *)rng_state;
    cudaError_t e = cudaMemcpyAsync(w.rng, state, sizeof *state, cudaMemcpyDeviceToDevice, stream);
    if (e == cudaSuccess) e = mlk_cuda__sm_scan<T>(rows, n, logits, ks.inv_t, p, w, stream);
    if (e == cudaSuccess && (!cap || mlk_cuda__top_p_grows(n, cap, p)))
        e = mlk_cuda__launch(mlk_cuda__sample_mass_kernel<T>, dim3((unsigned)((size_t)rows * p.n_seg)),
                             dim3(MLK_CUDA__SM_THREADS), 0, stream, n, p.n_seg, logits, mass_of,
                             (const mlk_cuda__ml *)w.row_ml, (const int *)w.flag, seg_mass);
    if (cap) {
        if (e == cudaSuccess)
            e = mlk_cuda__sample_cands(rows, n, cap, ks, p, w, seg_mass, more, status, state, out, stream);
    } else {
        if (e == cudaSuccess)
            e = mlk_cuda__launch(mlk_cuda__sample_walk_kernel<T>, dim3((unsigned)((rows + 31) / 32)), dim3(32), 0,
                                 stream, rows, n, p.n_seg, logits, ks, (const mlk_cuda__ml *)w.row_ml,
                                 (const double *)seg_mass, (const int *)w.flag, status,
                                 (const unsigned long long *)w.rng, state, out);
    }
    return mlk_cuda__scratch_done(&sc, mlk_cuda__launched(e), stream);
}

/* ======================================================================
   ternary GEMV / GEMM
   ====================================================================== */

/* One warp computes output column j (weight row j) for a group of
   MLK_CUDA__TERN_MR activation rows, so each weight byte is read once per
   group. A weight byte holds four 2-bit codes c = q + 1 in {0, 1, 2};
   spread into the four bytes of a word they meet four int8 activations in
   one dp4a, and sum q x = sum c x - sum x (the second dp4a, against ones),
   exact in int32 as on the CPU (|sum| <= 2 * 128 * MLK_TERNARY_MAX_K). */
#define MLK_CUDA__TERN_MR 4
#define MLK_CUDA__TERN_WARPS 4

/* byte b0 b1 b2 b3 (2 bits each, b0 lowest) -> word with byte i = code i */
static __device__ __forceinline__ int mlk_cuda__tern_spread(unsigned byte)
{
    return (int)((byte & 3u) | (byte & 0xCu) << 6 | (byte & 0x30u) << 12 | (byte & 0xC0u) << 18);
}

/* Four activations from c (zero past k), packed as dp4a wants them. */
static __device__ __forceinline__ int mlk_cuda__tern_x4(const int8_t *x, int c, int k)
{
    unsigned w = 0;
    for (int i = 0; i < 4; i++)
        if (c + i < k) w |= (unsigned)(uint8_t)x[c + i] << 8 * i;
    return (int)w;
}

/* WORDS: k % 16 == 0 and 4-byte aligned rows, so weights are read 16 at a
   time and activations 4 at a time; otherwise a byte at a time. */
template <bool WORDS>
__global__ void __launch_bounds__(32 * MLK_CUDA__TERN_WARPS)
mlk_cuda__ternary_kernel(int m, int n, int k, const int8_t *__restrict__ xq, const float *__restrict__ xscale,
                         const uint8_t *__restrict__ wpacked, float wscale, float *__restrict__ y)
{
    int j = blockIdx.x * MLK_CUDA__TERN_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (j >= n) return; /* a whole warp; warps never meet at a barrier */
    int row_bytes = (k + 3) / 4, groups = (m + MLK_CUDA__TERN_MR - 1) / MLK_CUDA__TERN_MR;
    const uint8_t *wrow = wpacked + (size_t)j * row_bytes;
    for (int grp = blockIdx.y; grp < groups; grp += gridDim.y) {
        int i0 = grp * MLK_CUDA__TERN_MR, n_rows = m - i0 < MLK_CUDA__TERN_MR ? m - i0 : MLK_CUDA__TERN_MR;
        int acc[MLK_CUDA__TERN_MR], xsum[MLK_CUDA__TERN_MR];
        const int8_t *x0 = xq + (size_t)i0 * k;
#pragma unroll
        for (int r = 0; r < MLK_CUDA__TERN_MR; r++) acc[r] = xsum[r] = 0;
        if (WORDS) {
            for (int w = lane; w < row_bytes / 4; w += 32) {
                unsigned word = __ldg((const unsigned *)wrow + w);
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    int codes = mlk_cuda__tern_spread(word >> 8 * b & 0xFFu);
#pragma unroll
                    for (int r = 0; r < MLK_CUDA__TERN_MR; r++)
                        if (r < n_rows) {
                            int xv = __ldg((const int *)(x0 + (size_t)r * k) + 4 * w + b);
                            acc[r] = __dp4a(codes, xv, acc[r]);
                            xsum[r] = __dp4a(0x01010101, xv, xsum[r]);
                        }
                }
            }
        } else {
            for (int b = lane; b < row_bytes; b += 32) {
                int codes = mlk_cuda__tern_spread(__ldg(wrow + b));
#pragma unroll
                for (int r = 0; r < MLK_CUDA__TERN_MR; r++)
                    if (r < n_rows) {
                        int xv = mlk_cuda__tern_x4(x0 + (size_t)r * k, 4 * b, k);
                        acc[r] = __dp4a(codes, xv, acc[r]);
                        xsum[r] = __dp4a(0x01010101, xv, xsum[r]);
                    }
            }
        }
#pragma unroll
        for (int r = 0; r < MLK_CUDA__TERN_MR; r++)
            for (int off = 16; off > 0; off >>= 1) {
                acc[r] += __shfl_xor_sync(0xFFFFFFFFu, acc[r], off);
                xsum[r] += __shfl_xor_sync(0xFFFFFFFFu, xsum[r], off);
            }
        /* the CPU's epilogue, unfused: (float)dot * (xscale * wscale) */
        if (lane == 0)
            for (int r = 0; r < n_rows; r++)
                y[(size_t)(i0 + r) * n + j] = __fmul_rn((float)(acc[r] - xsum[r]), __fmul_rn(xscale[i0 + r], wscale));
    }
}

MLKERN_CUDA_DEF mlk_status mlk_cuda_ternary_gemm(int m, int n, int k, const int8_t *xq, const float *xscale,
    const uint8_t *wpacked, float wscale, float *y, cudaStream_t stream)
{
    size_t x_count, y_count, w_bytes;
    if (m < 1 || n < 1 || k < 1) return MLK_ERR_SHAPE;
    if (!xq || !xscale || !wpacked || !y) return MLK_ERR_NULL;
    if (k > MLK_TERNARY_MAX_K || !mlk_cuda__count(m, k, 1, &x_count) || !mlk_cuda__count(m, n, sizeof(float), &y_count) ||
        !mlk_cuda__count(n, (k + 3) / 4, 1, &w_bytes))
        return MLK_ERR_OVERFLOW;
    int groups = (m + MLK_CUDA__TERN_MR - 1) / MLK_CUDA__TERN_MR;
    dim3 grid((unsigned)((n + MLK_CUDA__TERN_WARPS - 1) / MLK_CUDA__TERN_WARPS), (unsigned)(groups < 65535 ? groups : 65535));
    dim3 block(32 * MLK_CUDA__TERN_WARPS);
    bool words = k % 16 == 0 && (uintptr_t)xq % 4 == 0 && (uintptr_t)wpacked % 4 == 0;
    cudaError_t e = words ? mlk_cuda__launch(mlk_cuda__ternary_kernel<true>, grid, block, 0, stream, m, n, k, xq, xscale,
                                             wpacked, wscale, y)
                          : mlk_cuda__launch(mlk_cuda__ternary_kernel<false>, grid, block, 0, stream, m, n, k, xq,
                                             xscale, wpacked, wscale, y);
    return mlk_cuda__launched(e);
}

/* ======================================================================
   the public templates, instantiated for float, bf16 and fp16
   ====================================================================== */

template mlk_status mlk_cuda_layernorm_fwd(int, int, const float *, const float *, const float *, float, float *, float *, float *, cudaStream_t);
template mlk_status mlk_cuda_rmsnorm_fwd(int, int, const float *, const float *, float, float *, float *, cudaStream_t);
template mlk_status mlk_cuda_layernorm_bwd(int, int, const float *, const float *, const float *, const float *,
    const float *, float *, float *, float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_rmsnorm_bwd(int, int, const float *, const float *, const float *, const float *, float *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_layernorm_fwd(int, int, const __nv_bfloat16 *, const float *, const float *, float, __nv_bfloat16 *, float *, float *, cudaStream_t);
template mlk_status mlk_cuda_rmsnorm_fwd(int, int, const __nv_bfloat16 *, const float *, float, __nv_bfloat16 *, float *, cudaStream_t);
template mlk_status mlk_cuda_layernorm_bwd(int, int, const __nv_bfloat16 *, const float *, const float *, const float *,
    const __nv_bfloat16 *, __nv_bfloat16 *, float *, float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_rmsnorm_bwd(int, int, const __nv_bfloat16 *, const float *, const float *, const __nv_bfloat16 *, __nv_bfloat16 *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_layernorm_fwd(int, int, const __half *, const float *, const float *, float, __half *, float *, float *, cudaStream_t);
template mlk_status mlk_cuda_rmsnorm_fwd(int, int, const __half *, const float *, float, __half *, float *, cudaStream_t);
template mlk_status mlk_cuda_layernorm_bwd(int, int, const __half *, const float *, const float *, const float *,
    const __half *, __half *, float *, float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_rmsnorm_bwd(int, int, const __half *, const float *, const float *, const __half *, __half *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_softmax(int, int, const float *, float *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_log_softmax(int, int, const float *, float *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_topk_softmax(int, int, const float *, float, int, float *, int32_t *, int *, void *,
    size_t, cudaStream_t);
template mlk_status mlk_cuda_topk_log_softmax(int, int, const float *, int, float *, int32_t *, int *, void *, size_t,
    cudaStream_t);
template mlk_status mlk_cuda_softmax(int, int, const __nv_bfloat16 *, __nv_bfloat16 *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_log_softmax(int, int, const __nv_bfloat16 *, __nv_bfloat16 *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_topk_softmax(int, int, const __nv_bfloat16 *, float, int, float *, int32_t *, int *, void *,
    size_t, cudaStream_t);
template mlk_status mlk_cuda_topk_log_softmax(int, int, const __nv_bfloat16 *, int, float *, int32_t *, int *, void *, size_t,
    cudaStream_t);
template mlk_status mlk_cuda_softmax(int, int, const __half *, __half *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_log_softmax(int, int, const __half *, __half *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_topk_softmax(int, int, const __half *, float, int, float *, int32_t *, int *, void *,
    size_t, cudaStream_t);
template mlk_status mlk_cuda_topk_log_softmax(int, int, const __half *, int, float *, int32_t *, int *, void *, size_t,
    cudaStream_t);
template mlk_status mlk_cuda_sample(int, int, const float *, const mlk_sampler *, uint64_t *, int32_t *, int *,
    void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_sample(int, int, const __nv_bfloat16 *, const mlk_sampler *, uint64_t *, int32_t *, int *,
    void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_sample(int, int, const __half *, const mlk_sampler *, uint64_t *, int32_t *, int *,
    void *, size_t, cudaStream_t);

#endif /* MLKERN_CUDA_IMPLEMENTATION_DONE */
#endif /* MLKERN_CUDA_IMPLEMENTATION */

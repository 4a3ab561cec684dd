/* mlkern_cuda.cuh - CUDA versions of mlkern's hot kernels.
   The CUDA companion of mlkern.h, same licence (end of mlkern.h).
                                                            version 0.1.0
   WHAT IT IS
   Device kernels with host launchers for layer norm and RMS norm (forward
   and backward), softmax, log-softmax, fused top-k softmax / log-softmax,
   sampling with mlk_sample's semantics and random numbers, flash attention
   forward and backward (fp32 SIMT, and bf16 / fp16 on tensor cores),
   attention over a device copy of mlkern's paged KV pool and
   the writes into it, and the ternary (BitNet b1.58) GEMV/GEMM on
   mlkern's packed 2-bit weights. Each launcher
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
   one row).


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
   The calls the forward runs on tensor cores (bf16 / fp16, head_dim 64,
   96 or 128, no tree, at least 16 rows per kv head, q / k / v and dout
   16-byte aligned) run the backward there too, in the same two passes
   and fixed orders over the forward's (query, head) rows of a kv head: a
   block per (batch, kv head, 64 keys; 32 at head_dim 128) keeps dK and dV
   in fp32 registers, 16 keys a warp, while the row tiles that see its keys
   (32 rows to head_dim 64, else 16; Q, dO, lse and D by cp.async through
   two buffers) pass: S^T = K Q^T, P from the lse, dV += P^T dO, dP^T =
   V dO^T, dS, dK += dS^T Q, all mma.sync m16n8k16 from ldmatrix
   fragments; a block per 64 rows keeps dQ while the key tiles of its band
   pass (dQ += dS K). Row tiles outside a key tile's band and key tiles
   outside a row tile's are never loaded. P and dS are rounded to T before
   their products, as FlashAttention-2 does: the error stays within twice
   that of a plain bf16 / fp16 backward with fp32 sums.
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

template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_store(const mlk_kv_layout *layout, void *pool, int n_copies, const int *copies,
    int layer, int n, const int64_t *slots, const T *k, const T *v, int *status, void *workspace,
    size_t workspace_bytes, cudaStream_t stream);
MLKERN_CUDA_DEF size_t mlk_cuda_kv_store_workspace_size(const mlk_kv_layout *layout);
MLKERN_CUDA_DEF mlk_status mlk_cuda_kv_compact(const mlk_kv_layout *layout, void *pool, int n_copies,
    const int *copies, int n_moves, const int64_t *moves, cudaStream_t stream);

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

MLKERN_CUDA_DEF size_t mlk_cuda_attn_bwd_workspace_size(const mlk_attn_desc *d);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_bwd(const mlk_attn_desc *d, const T *q, const T *k, const T *v, const T *o,
    const T *dout, const float *lse, T *dq, T *dk, T *dv, void *workspace, size_t workspace_bytes,
    cudaStream_t stream);
template <typename T>
MLKERN_CUDA_DEF mlk_status mlk_cuda_attn_sinks_grad(const mlk_attn_desc *d, const T *o, const T *dout,
    const float *lse, float *dsinks, void *workspace, size_t workspace_bytes, cudaStream_t stream);

#endif /* MLKERN_CUDA_CUH */

/* ====================================================================== */
#ifdef MLKERN_CUDA_IMPLEMENTATION
#ifndef MLKERN_CUDA_IMPLEMENTATION_DONE
#define MLKERN_CUDA_IMPLEMENTATION_DONE

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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

/* The kernel families the launcher picks from: kernel<T, VEC, G, CACHED,
   CENTER>() is the instantiation. */
struct mlk_cuda__norm_fwd_kernels {
    template <typename T, int VEC, int G, bool CACHED, bool CENTER> static constexpr auto kernel()
    {
        return &mlk_cuda__norm_fwd_kernel<T, VEC, G, CACHED, CENTER>;
    }
};
struct mlk_cuda__norm_bwd_kernels {
    template <typename T, int VEC, int G, bool CACHED, bool CENTER> static constexpr auto kernel()
    {
        return &mlk_cuda__norm_bwd_kernel<T, VEC, G, CACHED, CENTER>;
    }
};

/* The five shapes a norm kernel comes in (warp or block, vector or scalar,
   cached or streaming): launches Kernels' instantiation for the plan with
   the kernel's arguments. */
template <class Kernels, typename T, bool CENTER, typename... A>
static inline cudaError_t mlk_cuda__norm_launch(const mlk_cuda__norm_plan &p, int rows, cudaStream_t st, A... args)
{
    constexpr int W = 16 / sizeof(T), B = MLK_CUDA__NORM_BLOCK;
    const dim3 grid = mlk_cuda__norm_grid(rows, p.group), block(p.group == 32 ? 128 : B);
    if (p.vec == 1 && p.group == 32)
        return mlk_cuda__launch(Kernels::template kernel<T, 1, 32, true, CENTER>(), grid, block, 0, st, args...);
    if (p.vec == 1)
        return mlk_cuda__launch(Kernels::template kernel<T, 1, B, false, CENTER>(), grid, block, 0, st, args...);
    if (p.group == 32)
        return mlk_cuda__launch(Kernels::template kernel<T, W, 32, true, CENTER>(), grid, block, 0, st, args...);
    if (p.cached)
        return mlk_cuda__launch(Kernels::template kernel<T, W, B, true, CENTER>(), grid, block, 0, st, args...);
    return mlk_cuda__launch(Kernels::template kernel<T, W, B, false, CENTER>(), grid, block, 0, st, args...);
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
    return mlk_cuda__launched(mlk_cuda__norm_launch<mlk_cuda__norm_fwd_kernels, T, CENTER>(
        p, rows, stream, rows, dim, x, gamma, beta, eps, y, mean, rstd));
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
    cudaError_t e = mlk_cuda__norm_launch<mlk_cuda__norm_bwd_kernels, T, CENTER>(p, rows, stream, rows, dim, x,
                                                                                  gamma, mean, rstd, dy, dx, delta);
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
    float p = 8.290272143e-03f;
    p = __fadd_rn(__fmul_rn(p, r), 4.189815983e-02f);
    p = __fadd_rn(__fmul_rn(p, r), 1.666763813e-01f);
    p = __fadd_rn(__fmul_rn(p, r), 4.999914784e-01f);
    p = __fadd_rn(__fmul_rn(p, r), 9.999997063e-01f);
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

/* ======================================================================
   attention common: visibility, logits, online softmax
   ====================================================================== */

/* The helpers the forward, the tensor-core forward and the backward share,
   so masks and scores exist once:
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
                                  run) gives a block's rows and keys. */

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

/* Element strides of q / o and of k / v by (batch item, head, token) in
   the descriptor's layout. */
struct mlk_cuda__attn_strides {
    size_t q_batch, q_head, q_tok, kv_batch, kv_head, kv_tok;
};

/* Dense front end: q, k, v, o of type T in BHND or BNHD, one item per batch entry. */
template <typename T> struct mlk_cuda__attn_dense {
    mlk_cuda__attn_common c;
    const T *q, *k, *v;
    T *o;
    float *lse;
    const int *kv_len; /* device [batch] or NULL */
    int len_q, len_kv, tiles_per_item;
    mlk_cuda__attn_strides s;

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
        return (size_t)item * s.q_batch + (size_t)h * s.q_head + (size_t)i * s.q_tok;
    }
    __device__ __forceinline__ float q_elem(int item, int i, int h, int e) const
    {
        return mlk_cuda__to_float(q[q_at(item, i, h) + e]);
    }
    __device__ __forceinline__ void store_o(int item, int i, int h, int e, float x) const
    {
        o[q_at(item, i, h) + e] = mlk_cuda__from_float<T>(x);
    }
    /* row (item, h, i) of lse-shaped [batch, heads, len_q] arrays */
    __device__ __forceinline__ size_t row_at(int item, int i, int h) const
    {
        return ((size_t)item * c.heads + h) * len_q + i;
    }
    __device__ __forceinline__ float *lse_at(int item, int i, int h) const
    {
        return lse ? lse + row_at(item, i, h) : NULL;
    }
    /* element 0 of key `key` of kv head kvh in k-shaped tensors */
    __device__ __forceinline__ size_t kv_at(int item, int kvh, int key) const
    {
        return (size_t)item * s.kv_batch + (size_t)kvh * s.kv_head + (size_t)key * s.kv_tok;
    }
    /* the row fetch: key `key` of kv head kvh, K (kv 0) or V (kv 1) */
    typedef const T *row_t;
    __device__ __forceinline__ row_t row(int kv, int item, int kvh, int key) const
    {
        return (kv ? v : k) + kv_at(item, kvh, key);
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

/* Keys [lo, hi) holding every key rows v0 .. v0+n-1 (n >= 1) of an item's
   n_q x group rows see (row v: query v / group, head v % group of the kv
   head's group). lo and hi never decrease as v0 grows. */
static __device__ __forceinline__ void mlk_cuda__attn_rows_keys(const mlk_cuda__attn_mask &m, int group, int v0, int n,
                                                                int *lo, int *hi)
{
    mlk_cuda__attn_key_range(m, v0 / group, (v0 + n - 1) / group + 1, lo, hi);
}

/* A task's item, kv head and mask. */
template <class F>
static __device__ __forceinline__ void mlk_cuda__attn_task_at(const F &f, int item, int kvh, mlk_cuda__attn_task *t)
{
    t->item = item;
    t->kvh = kvh;
    f.mask_of(item, &t->m);
    t->m.causal = f.c.causal;
    t->m.window = f.c.window;
    t->m.tree_parent = f.c.tree_parent;
    t->m.tree_depth = f.c.tree_depth;
}

/* The block's task: its item, rows, and keys (its run's, when split);
   n_runs 0 for a run index past the task's runs (the block has nothing to do). */
template <class F, int ROWS>
static __device__ __forceinline__ mlk_cuda__attn_task mlk_cuda__attn_task_of(const F &f, int block, int run)
{
    const mlk_cuda__attn_common &c = f.c;
    mlk_cuda__attn_task t;
    int tile, item = f.item_of(block / c.kv_heads, &tile);
    mlk_cuda__attn_task_at(f, item, block % c.kv_heads, &t);
    t.v0 = tile * ROWS;
    t.n_rows = t.m.n_q * c.group - t.v0 < ROWS ? t.m.n_q * c.group - t.v0 : ROWS;
    mlk_cuda__attn_rows_keys(t.m, c.group, t.v0, t.n_rows, &t.lo, &t.hi);
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

/* ======================================================================
   attention forward on tensor cores (bf16 / fp16, head_dim 64, 96, 128)
   ====================================================================== */

/* Used by mlk_cuda_attn_fwd below:
   mlk_cuda__attn_fwd_mma_supported<T>(d, q, k, v)
                                  true when this kernel takes the call
                                  (d already checked by mlk_cuda__attn_check)
   mlk_cuda__attn_fwd_mma(f, batch, stream)
                                  launches it for the dense front end f as
                                  mlk_cuda_attn_fwd builds it (its own row
                                  tiles; never split, so no partial state)
   The tiles' loads, fragment products (mlk_cuda__mma_abt: A B^T with B
   rows in shared memory; mlk_cuda__mma_pb: an accumulator rounded to T
   times B rows), the key-tile pipeline and the band test serve the
   tensor-core backward too. */

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

/* Rows t.v0 .. t.v0+ROWS-1 of a q-shaped tensor (q, dO) into dst; rows
   at or past t.n_rows are zero-filled. */
template <typename T, int D, int ROWS>
static __device__ __forceinline__ void mlk_cuda__mma_load_rows(const mlk_cuda__attn_dense<T> &f,
                                                               const mlk_cuda__attn_task &t, const T *src, T *dst)
{
    typedef mlk_cuda__mma_geom<D> G;
    const int group = f.c.group;
    for (int x = threadIdx.x; x < ROWS * G::CHUNKS; x += blockDim.x) {
        int r = x / G::CHUNKS, e = x % G::CHUNKS * 8, v = t.v0 + r;
        bool in = r < t.n_rows;
        const T *at = in ? src + f.q_at(t.item, v / group, t.kvh * group + v % group) + e : src;
        mlk_cuda__cp_async16_zfill(dst + r * G::PITCH + e, at, in ? 16 : 0);
    }
}

/* The A fragment of columns 16 kc .. 16 kc + 15 of the 16 rows at rows. */
template <int D, typename T>
static __device__ __forceinline__ void mlk_cuda__mma_a_frag(const T *rows, int kc, uint32_t (&a)[4])
{
    int lane = threadIdx.x % 32;
    mlk_cuda__ldmatrix_x4(a, rows + (lane % 16) * mlk_cuda__mma_geom<D>::PITCH + kc * 16 + 8 * (lane / 16));
}

/* acc (16 x N) += A B^T over columns 16 kc .. 16 kc + 15: a the A
   fragment of those columns, b N rows in shared memory (as K or dO rows). */
template <typename T, int D, int N>
static __device__ __forceinline__ void mlk_cuda__mma_abt(float (&acc)[N / 8][4], const uint32_t (&a)[4], const T *b,
                                                         int kc)
{
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int np = 0; np < N / 16; np++) { /* rows 16 np .. 16 np + 15 of b: two n8 pieces */
        uint32_t r[4];
        int n = np * 16 + lane % 8 + 8 * (lane / 16), col = kc * 16 + 8 * (lane / 8 % 2);
        mlk_cuda__ldmatrix_x4(r, b + n * mlk_cuda__mma_geom<D>::PITCH + col);
        mlk_cuda__mma_m16n8k16<T>(acc[2 * np], a, r);
        mlk_cuda__mma_m16n8k16<T>(acc[2 * np + 1], a, r + 2);
    }
}

/* acc (16 x D) += P B: p a 16 x K accumulator (rounded to T here), b K
   rows of D columns in shared memory (as V rows). An accumulator's pieces
   2 kc and 2 kc + 1 are the A fragment of its columns 16 kc .. 16 kc + 15. */
template <typename T, int D, int K>
static __device__ __forceinline__ void mlk_cuda__mma_pb(float (&acc)[D / 8][4], const float (&p)[K / 8][4], const T *b)
{
    int lane = threadIdx.x % 32;
#pragma unroll
    for (int kc = 0; kc < K / 16; kc++) {
        uint32_t pa[4] = {mlk_cuda__pack2<T>(p[2 * kc][0], p[2 * kc][1]), mlk_cuda__pack2<T>(p[2 * kc][2], p[2 * kc][3]),
                          mlk_cuda__pack2<T>(p[2 * kc + 1][0], p[2 * kc + 1][1]),
                          mlk_cuda__pack2<T>(p[2 * kc + 1][2], p[2 * kc + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) { /* columns 16 dp .. 16 dp + 15: two n8 pieces */
            uint32_t r[4];
            mlk_cuda__ldmatrix_x4_trans(r, b + (kc * 16 + lane % 16) * mlk_cuda__mma_geom<D>::PITCH + dp * 16 +
                                               8 * (lane / 16));
            mlk_cuda__mma_m16n8k16<T>(acc[2 * dp], pa, r);
            mlk_cuda__mma_m16n8k16<T>(acc[2 * dp + 1], pa, r + 2);
        }
    }
}

template <int N> static __device__ __forceinline__ void mlk_cuda__mma_zero(float (&acc)[N][4])
{
#pragma unroll
    for (int n = 0; n < N; n++)
        for (int i = 0; i < 4; i++) acc[n][i] = 0.0f;
}

/* Half `half` of a lane's row of a 16 x D accumulator (row lane / 4 + 8
   half, columns 2 (lane % 4) and the next of each 8-wide piece), times w,
   into the T row dst. */
template <typename T, int D>
static __device__ __forceinline__ void mlk_cuda__mma_store_row(T *dst, const float (&acc)[D / 8][4], int half, float w)
{
    int col = 2 * (threadIdx.x % 4);
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        dst[dt * 8 + col] = mlk_cuda__from_float<T>(acc[dt][2 * half] * w);
        dst[dt * 8 + col + 1] = mlk_cuda__from_float<T>(acc[dt][2 * half + 1] * w);
    }
}

/* Every key k0 .. k0+nk-1 is visible to every row at or past query
   first_query: a tile that needs no per-key test. */
static __device__ __forceinline__ bool mlk_cuda__mma_tile_inside(const mlk_cuda__attn_common &c,
                                                                const mlk_cuda__attn_task &t, int k0, int nk,
                                                                int first_query)
{
    int off = t.m.n_keys - t.m.n_q;
    return k0 + nk <= t.hi && c.window == 0 && (!c.causal || k0 + nk - 1 <= first_query + off);
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

/* Tiles 0 .. n-1 through two shared-memory buffers: load(j, buf) issues
   tile j's cp.async copies (and any plain stores) into buffer buf, body(j,
   buf) runs once they have landed and every thread sees them. Tile j + 1
   is in flight while tile j's body runs. */
template <class L, class B>
static __device__ __forceinline__ void mlk_cuda__double_buffer(int n, const L &load, const B &body)
{
    if (n > 0) load(0, 0);
    mlk_cuda__cp_async_commit();
    for (int j = 0; j < n; j++) {
        if (j + 1 < n) load(j + 1, (j + 1) & 1);
        mlk_cuda__cp_async_commit(); /* perhaps empty: wait<1> then always means "tile j is here" */
        mlk_cuda__cp_async_wait<1>();
        __syncthreads();
        body(j, j & 1);
        __syncthreads(); /* the next tile's copies overwrite this buffer */
    }
}

/* The task's key tiles k0 = t.lo, t.lo + 32, ... through the two K and V
   buffers: body(k0, ks, vs) once tile k0 is in shared memory. */
template <typename T, int D, class B>
static __device__ __forceinline__ void mlk_cuda__mma_key_tiles(const mlk_cuda__attn_dense<T> &f,
                                                               const mlk_cuda__attn_task &t, T *k_s, T *v_s,
                                                               const B &body)
{
    typedef mlk_cuda__mma_geom<D> G;
    const int KT = MLK_CUDA__MMA_KEYS;
    auto load = [&](int j, int buf) {
        mlk_cuda__mma_load_kv<T, D>(f, t, t.lo + j * KT, k_s + buf * G::BUF, v_s + buf * G::BUF);
    };
    mlk_cuda__double_buffer((t.hi - t.lo + KT - 1) / KT, load, [&](int j, int buf) {
        body(t.lo + j * KT, k_s + buf * G::BUF, v_s + buf * G::BUF);
    });
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
    mlk_cuda__mma_load_rows<T, D, MLK_CUDA__MMA_ROWS>(f, t, f.q, k_s);
    mlk_cuda__cp_async_commit();
    mlk_cuda__cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++) mlk_cuda__mma_a_frag<D>(k_s + warp * 16 * P, kc, qf[kc]);
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
    const int first_query = (t.v0 + warp * 16) / c.group;
    float o_acc[D / 8][4];
    mlk_cuda__mma_zero(o_acc);

    mlk_cuda__mma_key_tiles<T, D>(f, t, k_s, v_s, [&](int k0, const T *ks, const T *vs) {
        float s[KT / 8][4];
        mlk_cuda__mma_zero(s);
#pragma unroll
        for (int kc = 0; kc < D / 16; kc++) mlk_cuda__mma_abt<T, D, KT>(s, qf[kc], ks, kc);

        const bool inside = mlk_cuda__mma_tile_inside(c, t, k0, KT, first_query);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < KT / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int key = k0 + nt * 8 + 2 * quad + e;
                    float &x = s[nt][2 * half + e];
                    bool vis = valid[half] && (inside || mlk_cuda__attn_visible(t.m, query[half], key, false));
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
        mlk_cuda__mma_pb<T, D, KT>(o_acc, s, vs);
    });

#pragma unroll
    for (int half = 0; half < 2; half++) {
        float l = mlk_cuda__quad_sum(st[half].l);
        if (!valid[half]) continue;
        /* l is 0 only for a row that saw nothing: o = 0, lse = -inf */
        int h = t.kvh * c.group + (t.v0 + row[half]) % c.group;
        mlk_cuda__mma_store_row<T, D>(f.o + f.q_at(t.item, query[half], h), o_acc, half, l != 0.0f ? 1.0f / l : 0.0f);
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

static inline mlk_cuda__attn_strides mlk_cuda__attn_strides_of(const mlk_attn_desc *d, const mlk_cuda__attn_desc &g)
{
    const bool bhnd = d->layout == MLK_BHND;
    mlk_cuda__attn_strides st;
    st.q_batch = (size_t)g.heads * g.len_q * g.head_dim;
    st.kv_batch = (size_t)g.kv_heads * g.len_kv * g.head_dim;
    st.q_head = bhnd ? (size_t)g.len_q * g.head_dim : (size_t)g.head_dim;
    st.q_tok = bhnd ? (size_t)g.head_dim : (size_t)g.heads * g.head_dim;
    st.kv_head = bhnd ? (size_t)g.len_kv * g.head_dim : (size_t)g.head_dim;
    st.kv_tok = bhnd ? (size_t)g.head_dim : (size_t)g.kv_heads * g.head_dim;
    return st;
}

/* The descriptor's host arrays (kv_len, tree_parent with its depths,
   sinks) into the staging area at the front of the scratch; their device
   addresses land in the out arguments (NULL where d has none). */
static inline void mlk_cuda__attn_stage_arrays(const mlk_attn_desc *d, const mlk_cuda__attn_desc &g,
                                               mlk_cuda__scratch *sc, const mlk_cuda__staging &hs,
                                               const int **kv_len, const int **tree_parent,
                                               const int **tree_depth, const float **sinks)
{
    int *kv_len_h, *parent_h, *depth_h;
    float *sinks_h;
    *kv_len = mlk_cuda__stage<int>(sc, hs, d->kv_len ? (size_t)g.batch : 0, &kv_len_h);
    if (d->kv_len) memcpy(kv_len_h, d->kv_len, (size_t)g.batch * sizeof(int));
    *tree_parent = mlk_cuda__stage<int>(sc, hs, d->tree_parent ? (size_t)g.len_q : 0, &parent_h);
    *tree_depth = mlk_cuda__stage<int>(sc, hs, d->tree_parent ? (size_t)g.len_q : 0, &depth_h);
    if (d->tree_parent) mlk_cuda__stage_tree(g.len_q, d->tree_parent, parent_h, depth_h);
    *sinks = mlk_cuda__stage<float>(sc, hs, d->sinks ? (size_t)g.heads : 0, &sinks_h);
    if (d->sinks) memcpy(sinks_h, d->sinks, (size_t)g.heads * sizeof(float));
}

MLKERN_CUDA_DEF size_t mlk_cuda_attn_fwd_workspace_size(const mlk_attn_desc *d)
{
    mlk_cuda__attn_desc g;
    return mlk_cuda__attn_check(d, &g) == MLK_OK ? g.bytes : 0;
}

/* The dense front end's tensors and their geometry. */
template <typename T>
static inline void mlk_cuda__attn_dense_tensors(mlk_cuda__attn_dense<T> *f, const T *q, const T *k, const T *v, T *o,
                                                float *lse, int len_q, int len_kv, int tiles_per_item,
                                                const mlk_cuda__attn_strides &s)
{
    f->q = q;
    f->k = k;
    f->v = v;
    f->o = o;
    f->lse = lse;
    f->len_q = len_q;
    f->len_kv = len_kv;
    f->tiles_per_item = tiles_per_item;
    f->s = s;
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
    mlk_cuda__attn_stage_arrays(d, g, &sc, hs, &f.kv_len, &f.c.tree_parent, &f.c.tree_depth, &f.c.sinks);
    mlk_cuda__attn_carve_parts(&sc, g.plan, g.head_dim, &f.c);
    mlk_cuda__attn_dense_tensors(&f, q, k, v, o, lse, g.len_q, g.len_kv, f.c.n_tiles / g.batch,
                                 mlk_cuda__attn_strides_of(d, g));
    cudaError_t e = mlk_cuda__stage_send(&sc, hs, stream);
    if (e == cudaSuccess)
        e = mlk_cuda__attn_fwd_mma_supported(d, q, k, v) ? mlk_cuda__attn_fwd_mma(f, g.batch, stream)
                                                         : mlk_cuda__attn_launch(f, g.plan, stream);
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

/* What the backward kernels take by value: the geometry, the mask
   options and the logits of a checked descriptor, with the staged arrays. */
struct mlk_cuda__attn_bwd_geom {
    int batch, heads, kv_heads, group, len_q, len_kv, head_dim, causal, window;
    float scale;
    mlk_cuda__attn_logits lg;
    mlk_cuda__attn_strides s;
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
    return (size_t)b * g.s.q_batch + (size_t)h * g.s.q_head + (size_t)i * g.s.q_tok;
}

static __device__ __forceinline__ size_t mlk_cuda__attn_bwd_kv_at(const mlk_cuda__attn_bwd_geom &g, int b, int h, int j)
{
    return (size_t)b * g.s.kv_batch + (size_t)h * g.s.kv_head + (size_t)j * g.s.kv_tok;
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
    g->s = mlk_cuda__attn_strides_of(d, *checked);
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
    mlk_cuda__attn_desc sizes;
    sizes.batch = g->batch;
    sizes.heads = g->heads;
    sizes.len_q = g->len_q;
    mlk_cuda__attn_stage_arrays(d, sizes, sc, hs, &g->kv_len, &g->tree_parent, &g->tree_depth, &g->sinks);
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

/* P and dS of one score from dot = (q_scale q).k and dp = dO.v, with the
   row's lse2 = lse * log2(e) and D: P = 0 where the key is not visible or
   the row sees nothing (lse -inf). */
static __device__ __forceinline__ float mlk_cuda__attn_bwd_p_ds(const mlk_cuda__attn_logits &lg, float dot, float dp,
                                                                float lse2, float row_d, bool vis, float *ds)
{
    float cap_grad = 1.0f;
    if (lg.cap > 0.0f) { /* 1 / cosh^2, not 1 - tanh^2, which cancels where tanh saturates */
        float ch = coshf(dot / lg.cap);
        cap_grad = 1.0f / (ch * ch);
    }
    float p = vis && lse2 > -INFINITY ? exp2f(mlk_cuda__attn_logit2(lg, dot) - lse2) : 0.0f;
    /* p = 0 gives dS = 0 even where a masked value made dP NaN */
    *ds = p != 0.0f ? p * (dp - row_d) * cap_grad : 0.0f;
    return p;
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
        bool seen = lse2_s[r] > -INFINITY && /* first: rows past len_q have no tree node */
                    mlk_cuda__attn_visible(m, i, kv0 + c, mlk_cuda__attn_tree_bits(m, i, kv0) >> c & 1u);
        float ds, p = mlk_cuda__attn_bwd_p_ds(g.lg, g.lg.q_scale * s[n], dp[n], lse2_s[r], d_s[r], seen, &ds);
        dss[r * tl::LDS + c] = ds;
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
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(ks, k + kv_at, g.s.kv_tok, nk, g.head_dim);
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(vs, v + kv_at, g.s.kv_tok, nk, g.head_dim);
        for (int h = kvh * g.group; h < (kvh + 1) * g.group; h++)
            for (int q0 = 0; q0 < g.len_q; q0 += tl::BQ) {
                int lo, hi, nq = g.len_q - q0 < tl::BQ ? g.len_q - q0 : tl::BQ;
                mlk_cuda__attn_key_range(m, q0, q0 + nq, &lo, &hi);
                if (hi <= kv0 || lo >= kv0 + nk) continue; /* the same for the whole block */
                size_t q_at = mlk_cuda__attn_bwd_q_at(g, b, h, q0);
                mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(qs, q + q_at, g.s.q_tok, nq, g.head_dim);
                mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(dos, dout + q_at, g.s.q_tok, nq, g.head_dim);
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
    mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(qs, q + q_at, g.s.q_tok, nq, g.head_dim);
    mlk_cuda__attn_bwd_load<T, tl::BQ, DB, tl::NT>(dos, dout + q_at, g.s.q_tok, nq, g.head_dim);
    mlk_cuda__attn_bwd_load_rows<tl::BQ>(lse2_s, d_s, lse, row_d, g, b * g.heads + h, q0);
    mlk_cuda__attn_key_range(m, q0, q0 + nq, &lo, &hi);
    for (int kv0 = lo; kv0 < hi; kv0 += tl::BKV) {
        int nk = hi - kv0 < tl::BKV ? hi - kv0 : tl::BKV;
        size_t kv_at = mlk_cuda__attn_bwd_kv_at(g, b, kvh, kv0);
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(ks, k + kv_at, g.s.kv_tok, nk, g.head_dim);
        mlk_cuda__attn_bwd_load<T, tl::BKV, DB, tl::NT>(vs, v + kv_at, g.s.kv_tok, nk, g.head_dim);
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
        if (e < g.head_dim) dq[q_at + (size_t)r * g.s.q_tok + e] = mlk_cuda__from_float<T>(g.scale * acc[j]);
    }
}

/* ---- backward on tensor cores (bf16 / fp16, head_dim 64, 96, 128) ----
   The same two passes and summation orders fixed by the shapes, over the
   tensor-core forward's rows: an item's n_q x group (query, head) pairs of
   one kv head, query-major, so a key tile serves every head of its group.
   P and dS are rounded to T for their mma, as FlashAttention-2 does;
   every product sums in fp32.
   dK / dV: a block per (item, kv head, key tile of 16 keys per warp). Over
   the row tiles that see the key tile (the band; the rest are never
   loaded), a warp takes S^T = K Q^T and dP^T = V dO^T for its keys, then
   dV += P^T dO and dK += dS^T Q, in registers until the end. The row
   tiles' Q, dO, lse and D are double-buffered.
   dQ: a block per 64-row tile, as the forward's, over the key tiles of its
   band: S = Q K^T, dP = dO V^T, dQ += dS K. */

/* dK / dV tiles within the default 48 KiB of shared memory: K and V of
   KEYS keys, two buffers of ROWS rows of Q and dO, lse2 and D. */
template <int D> struct mlk_cuda__mma_bwd_geom {
    static const int WARPS = D <= 96 ? 4 : 2, KEYS = 16 * WARPS, ROWS = D <= 64 ? 32 : 16;
    static const int PITCH = mlk_cuda__mma_geom<D>::PITCH, KV_TILE = KEYS * PITCH, ROW_TILE = ROWS * PITCH;
    static constexpr size_t SMEM = (2 * (size_t)KV_TILE + 4 * (size_t)ROW_TILE) * 2 + 4 * ROWS * sizeof(float);
    static_assert(SMEM <= 48 * 1024 && KEYS % MLK_CUDA__MMA_KEYS == 0, "default shared memory; whole K / V loads");
};

/* What both kernels take: the dense front end over q, k, v and lse (its o
   unused), dO, D (lse's layout) and the gradients (NULL: not wanted). */
template <typename T> struct mlk_cuda__attn_mma_bwd {
    mlk_cuda__attn_dense<T> f;
    const T *dout;
    const float *row_d;
    T *dq, *dk, *dv;
    float scale;
};

/* Row tiles [*first, *end) of ROWS rows that see a key of [k0, k1): the
   key ranges of row tiles never move back, so two bisections find them. */
template <int ROWS>
static __device__ __forceinline__ void mlk_cuda__attn_row_band(const mlk_cuda__attn_mask &m, int group, int k0, int k1,
                                                               int *first, int *end)
{
    const int n_rows = m.n_q * group;
    int a = 0;
    for (int side = 0; side < 2; side++) { /* the first tile whose keys reach past k0, then the first past k1 */
        int b = (n_rows + ROWS - 1) / ROWS;
        while (a < b) {
            int mid = (a + b) / 2, v0 = mid * ROWS, lo, hi;
            mlk_cuda__attn_rows_keys(m, group, v0, n_rows - v0 < ROWS ? n_rows - v0 : ROWS, &lo, &hi);
            if (side ? lo >= k1 : hi > k0) b = mid;
            else a = mid + 1;
        }
        *(side ? end : first) = a;
    }
}

/* lse2 = lse * log2(e) and D of a row (v its index in the task's rows);
   a row past them gets -inf and 0: no gradient. */
template <typename T>
static __device__ __forceinline__ void mlk_cuda__mma_bwd_row_stats(const mlk_cuda__attn_mma_bwd<T> &a,
                                                                   const mlk_cuda__attn_task &t, int v, bool valid,
                                                                   float *lse2, float *row_d)
{
    const int group = a.f.c.group;
    size_t at = valid ? a.f.row_at(t.item, v / group, t.kvh * group + v % group) : 0;
    *lse2 = valid ? a.f.lse[at] * MLK_CUDA__LOG2E : -INFINITY;
    *row_d = valid ? a.row_d[at] : 0.0f;
}

template <typename T, int D>
__global__ void __launch_bounds__(32 * mlk_cuda__mma_bwd_geom<D>::WARPS)
mlk_cuda__attn_bwd_dkdv_mma_kernel(mlk_cuda__attn_mma_bwd<T> a)
{
    typedef mlk_cuda__mma_bwd_geom<D> G;
    const int BQ = G::ROWS, P = G::PITCH;
    const mlk_cuda__attn_dense<T> &f = a.f;
    const mlk_cuda__attn_common &c = f.c;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, quad = lane % 4;
    /* block x = (item * kv_heads + kv head) * key tiles + key tile */
    const int n_kt = (f.len_kv + G::KEYS - 1) / G::KEYS, k0 = (int)(blockIdx.x % n_kt) * G::KEYS;
    mlk_cuda__attn_task t;
    mlk_cuda__attn_task_at(f, (int)(blockIdx.x / n_kt / c.kv_heads), (int)(blockIdx.x / n_kt % c.kv_heads), &t);
    t.lo = k0;
    t.hi = t.m.n_keys; /* keys past kv_len load as zeros */
    const int n_rows = t.m.n_q * c.group, kw = k0 + warp * 16; /* the warp's keys kw .. kw+15 */
    T *k_s = (T *)mlk_cuda__dynamic_smem(), *v_s = k_s + G::KV_TILE, *q_s = v_s + G::KV_TILE;
    T *do_s = q_s + 2 * G::ROW_TILE;
    float *lse2_s = (float *)(do_s + 2 * G::ROW_TILE), *d_s = lse2_s + 2 * BQ;
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
    mlk_cuda__mma_zero(dk_acc);
    mlk_cuda__mma_zero(dv_acc);

    int first = 0, end = 0;
    if (k0 < t.m.n_keys) /* else no row sees the tile: its gradients are 0 */
        mlk_cuda__attn_row_band<BQ>(t.m, c.group, k0, k0 + G::KEYS < t.m.n_keys ? k0 + G::KEYS : t.m.n_keys,
                                    &first, &end);
    if (first < end) /* with the first row tile's copies */
        for (int j = 0; j < G::KEYS; j += MLK_CUDA__MMA_KEYS)
            mlk_cuda__mma_load_kv<T, D>(f, t, k0 + j, k_s + j * P, v_s + j * P);
    auto load = [&](int j, int buf) {
        t.v0 = (first + j) * BQ;
        t.n_rows = n_rows - t.v0 < BQ ? n_rows - t.v0 : BQ;
        mlk_cuda__mma_load_rows<T, D, BQ>(f, t, f.q, q_s + buf * G::ROW_TILE);
        mlk_cuda__mma_load_rows<T, D, BQ>(f, t, a.dout, do_s + buf * G::ROW_TILE);
        for (int r = threadIdx.x; r < BQ; r += blockDim.x)
            mlk_cuda__mma_bwd_row_stats(a, t, t.v0 + r, r < t.n_rows, lse2_s + buf * BQ + r, d_s + buf * BQ + r);
    };
    mlk_cuda__double_buffer(end - first, load, [&](int j, int buf) {
        const int v0 = (first + j) * BQ, n = n_rows - v0 < BQ ? n_rows - v0 : BQ;
        const T *qs = q_s + buf * G::ROW_TILE, *dos = do_s + buf * G::ROW_TILE;
        const float *lse2 = lse2_s + buf * BQ, *row_d = d_s + buf * BQ;
        float s[BQ / 8][4], dp[BQ / 8][4]; /* S^T and dP^T: the warp's 16 keys x the tile's rows */
        mlk_cuda__mma_zero(s);
        mlk_cuda__mma_zero(dp);
#pragma unroll
        for (int kc = 0; kc < D / 16; kc++) {
            uint32_t x[4];
            mlk_cuda__mma_a_frag<D>(k_s + warp * 16 * P, kc, x);
            mlk_cuda__mma_abt<T, D, BQ>(s, x, qs, kc);
            mlk_cuda__mma_a_frag<D>(v_s + warp * 16 * P, kc, x);
            mlk_cuda__mma_abt<T, D, BQ>(dp, x, dos, kc);
        }
        const bool inside = n == BQ && mlk_cuda__mma_tile_inside(c, t, kw, 16, v0 / c.group);
#pragma unroll
        for (int nt = 0; nt < BQ / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int r = nt * 8 + 2 * quad + (i & 1), key = kw + lane / 4 + 8 * (i >> 1);
                bool vis = inside || (r < n && mlk_cuda__attn_visible(t.m, (v0 + r) / c.group, key, false));
                s[nt][i] = mlk_cuda__attn_bwd_p_ds(c.lg, s[nt][i] * c.lg.q_scale, dp[nt][i], lse2[r], row_d[r], vis,
                                                   &dp[nt][i]);
            }
        mlk_cuda__mma_pb<T, D, BQ>(dv_acc, s, dos);
        mlk_cuda__mma_pb<T, D, BQ>(dk_acc, dp, qs);
    });

#pragma unroll
    for (int half = 0; half < 2; half++) {
        int key = kw + lane / 4 + 8 * half;
        if (key >= f.len_kv) continue;
        size_t at = f.kv_at(t.item, t.kvh, key);
        if (a.dk) mlk_cuda__mma_store_row<T, D>(a.dk + at, dk_acc, half, a.scale);
        if (a.dv) mlk_cuda__mma_store_row<T, D>(a.dv + at, dv_acc, half, 1.0f);
    }
}

/* Block x = (item, 64-row tile) * kv_heads + kv head, lanes holding rows
   as in the forward; Q and dO stay in registers as A fragments. */
template <typename T, int D>
__global__ void __launch_bounds__(128) mlk_cuda__attn_bwd_dq_mma_kernel(mlk_cuda__attn_mma_bwd<T> a)
{
    typedef mlk_cuda__mma_geom<D> G;
    const int KT = MLK_CUDA__MMA_KEYS, P = G::PITCH;
    const mlk_cuda__attn_dense<T> &f = a.f;
    const mlk_cuda__attn_common &c = f.c;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, quad = lane % 4;
    mlk_cuda__attn_task t = mlk_cuda__attn_task_of<mlk_cuda__attn_dense<T>, MLK_CUDA__MMA_ROWS>(f, (int)blockIdx.x, 0);
    T *k_s = (T *)mlk_cuda__dynamic_smem(), *v_s = k_s + 2 * G::BUF;

    /* Q and dO staged over the K and V buffers */
    mlk_cuda__mma_load_rows<T, D, MLK_CUDA__MMA_ROWS>(f, t, f.q, k_s);
    mlk_cuda__mma_load_rows<T, D, MLK_CUDA__MMA_ROWS>(f, t, a.dout, v_s);
    mlk_cuda__cp_async_commit();
    mlk_cuda__cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[D / 16][4], dof[D / 16][4];
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++) {
        mlk_cuda__mma_a_frag<D>(k_s + warp * 16 * P, kc, qf[kc]);
        mlk_cuda__mma_a_frag<D>(v_s + warp * 16 * P, kc, dof[kc]);
    }
    __syncthreads(); /* the K and V tiles overwrite them */

    int query[2];
    bool valid[2];
    float lse2[2], row_d[2];
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int row = warp * 16 + lane / 4 + 8 * half;
        query[half] = (t.v0 + row) / c.group;
        valid[half] = row < t.n_rows;
        mlk_cuda__mma_bwd_row_stats(a, t, t.v0 + row, valid[half], &lse2[half], &row_d[half]);
    }
    const int first_query = (t.v0 + warp * 16) / c.group;
    float acc[D / 8][4];
    mlk_cuda__mma_zero(acc);

    mlk_cuda__mma_key_tiles<T, D>(f, t, k_s, v_s, [&](int k0, const T *ks, const T *vs) {
        float s[KT / 8][4], dp[KT / 8][4];
        mlk_cuda__mma_zero(s);
        mlk_cuda__mma_zero(dp);
#pragma unroll
        for (int kc = 0; kc < D / 16; kc++) {
            mlk_cuda__mma_abt<T, D, KT>(s, qf[kc], ks, kc);
            mlk_cuda__mma_abt<T, D, KT>(dp, dof[kc], vs, kc);
        }
        const bool inside = mlk_cuda__mma_tile_inside(c, t, k0, KT, first_query);
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) { /* dS over S */
                int half = i >> 1, key = k0 + nt * 8 + 2 * quad + (i & 1);
                bool vis = valid[half] && (inside || mlk_cuda__attn_visible(t.m, query[half], key, false));
                mlk_cuda__attn_bwd_p_ds(c.lg, s[nt][i] * c.lg.q_scale, dp[nt][i], lse2[half], row_d[half], vis,
                                        &s[nt][i]);
            }
        mlk_cuda__mma_pb<T, D, KT>(acc, s, ks);
    });

#pragma unroll
    for (int half = 0; half < 2; half++) {
        if (!valid[half]) continue;
        int h = t.kvh * c.group + (t.v0 + warp * 16 + lane / 4 + 8 * half) % c.group;
        mlk_cuda__mma_store_row<T, D>(a.dq + f.q_at(t.item, query[half], h), acc, half, a.scale);
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

/* The tensor-core backward takes the calls the tensor-core forward takes
   (the same rule: a training step's two halves run on the same units),
   dO 16-byte aligned too. */
template <typename T>
static inline bool mlk_cuda__attn_bwd_mma_supported(const mlk_attn_desc *d, const T *q, const T *k, const T *v,
                                                    const T *dout)
{
    return mlk_cuda__attn_fwd_mma_supported(d, q, k, v) && mlk_cuda__aligned16(dout);
}

template <typename T, int D>
static inline cudaError_t mlk_cuda__attn_bwd_mma_run(const mlk_cuda__attn_mma_bwd<T> &a, int batch, cudaStream_t stream)
{
    typedef mlk_cuda__mma_bwd_geom<D> G;
    const mlk_cuda__attn_common &c = a.f.c;
    cudaError_t e = cudaSuccess;
    if (a.dk || a.dv) {
        size_t blocks = (size_t)batch * c.kv_heads * ((a.f.len_kv + G::KEYS - 1) / G::KEYS);
        e = mlk_cuda__launch(mlk_cuda__attn_bwd_dkdv_mma_kernel<T, D>, dim3((unsigned)blocks), dim3(32 * G::WARPS),
                             G::SMEM, stream, a);
    }
    if (a.dq && e == cudaSuccess)
        e = mlk_cuda__launch(mlk_cuda__attn_bwd_dq_mma_kernel<T, D>, dim3((unsigned)((size_t)c.n_tiles * c.kv_heads)),
                             dim3(128), mlk_cuda__mma_geom<D>::SMEM, stream, a);
    return e;
}

/* After the D kernel, for a call mlk_cuda__attn_bwd_mma_supported takes. */
template <typename T>
static inline cudaError_t mlk_cuda__attn_bwd_mma(const mlk_cuda__attn_bwd_geom &g, const T *q, const T *k,
    const T *v, const T *dout, const float *lse, const float *row_d, T *dq, T *dk, T *dv, cudaStream_t stream)
{
    if constexpr (!std::is_same<T, __nv_bfloat16>::value && !std::is_same<T, __half>::value) {
        return cudaErrorInvalidValue; /* mlk_cuda__attn_bwd_mma_supported says no */
    } else {
        mlk_cuda__attn_mma_bwd<T> a;
        mlk_cuda__attn_dense<T> &f = a.f;
        int tiles = (g.len_q * g.group + MLK_CUDA__MMA_ROWS - 1) / MLK_CUDA__MMA_ROWS;
        mlk_cuda__attn_plan plan = {0, MLK_CUDA__MMA_ROWS, tiles * g.batch * g.kv_heads, 1, 0};
        mlk_cuda__attn_common_init(&f.c, g.head_dim, g.heads, g.kv_heads, g.causal, g.window, g.scale, g.lg.cap,
                                   plan);
        mlk_cuda__attn_dense_tensors<T>(&f, q, k, v, NULL, const_cast<float *>(lse) /* read only */, g.len_q,
                                        g.len_kv, tiles, g.s);
        f.kv_len = g.kv_len;
        a.dout = dout;
        a.row_d = row_d;
        a.dq = dq;
        a.dk = dk;
        a.dv = dv;
        a.scale = g.scale;
        switch (g.head_dim) {
        case 64: return mlk_cuda__attn_bwd_mma_run<T, 64>(a, g.batch, stream);
        case 96: return mlk_cuda__attn_bwd_mma_run<T, 96>(a, g.batch, stream);
        default: return mlk_cuda__attn_bwd_mma_run<T, 128>(a, g.batch, stream);
        }
    }
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
    if (e == cudaSuccess && mlk_cuda__attn_bwd_mma_supported(d, q, k, v, dout)) {
        e = mlk_cuda__attn_bwd_mma(g, q, k, v, dout, lse, row_d, dq, dk, dv, stream);
    } else if (e == cudaSuccess) {
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

template mlk_status mlk_cuda_kv_store(const mlk_kv_layout *, void *, int, const int *, int, int, const int64_t *,
    const float *, const float *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_kv_store(const mlk_kv_layout *, void *, int, const int *, int, int, const int64_t *,
    const __nv_bfloat16 *, const __nv_bfloat16 *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_kv_store(const mlk_kv_layout *, void *, int, const int *, int, int, const int64_t *,
    const __half *, const __half *, int *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *, const float *, const float *, const float *, float *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *, const __nv_bfloat16 *, const __nv_bfloat16 *,
    const __nv_bfloat16 *, __nv_bfloat16 *, float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_fwd(const mlk_attn_desc *, const __half *, const __half *, const __half *, __half *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_bwd(const mlk_attn_desc *, const float *, const float *, const float *, const float *,
    const float *, const float *, float *, float *, float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_sinks_grad(const mlk_attn_desc *, const float *, const float *, const float *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_bwd(const mlk_attn_desc *, const __nv_bfloat16 *, const __nv_bfloat16 *, const __nv_bfloat16 *, const __nv_bfloat16 *,
    const __nv_bfloat16 *, const float *, __nv_bfloat16 *, __nv_bfloat16 *, __nv_bfloat16 *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_sinks_grad(const mlk_attn_desc *, const __nv_bfloat16 *, const __nv_bfloat16 *, const float *,
    float *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_bwd(const mlk_attn_desc *, const __half *, const __half *, const __half *, const __half *,
    const __half *, const float *, __half *, __half *, __half *, void *, size_t, cudaStream_t);
template mlk_status mlk_cuda_attn_sinks_grad(const mlk_attn_desc *, const __half *, const __half *, const float *,
    float *, void *, size_t, cudaStream_t);

#endif /* MLKERN_CUDA_IMPLEMENTATION_DONE */
#endif /* MLKERN_CUDA_IMPLEMENTATION */

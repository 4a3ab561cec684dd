/* mlkern.h - the kernels LLM inference and training engines are built from.
   A single-header C99 library (stb style), MIT licence (end of file).
                                                            version 0.1.0
   WHAT IT IS
   Plain C functions on plain float arrays: a packed SIMD sgemm, layer and RMS
   norm forward/backward, softmax with fused one-pass top-k and sampling,
   flash attention forward/backward (bottom-right causal, GQA/MQA, sliding
   window, softcap, attention sinks, variable kv lengths, tree masks, two
   layouts) and the merge of partial attention states, rotary embeddings,
   a paged KV cache (copy-on-write forks, f32/f16/int8/int4 storage,
   attention over it for decode with split-KV and shared-prefix cascades,
   chunked prefill and tree verification, an exported layout), batched
   sampling with per-row parameters and penalties, batched beam search
   whose finished hypotheses keep competing, tree speculative decoding that
   is exactly greedy decoding or exactly the target's sampling, and ternary
   (BitNet b1.58) quantisation, packed ternary GEMM and straight-through
   training.
   No dependencies beyond libm, no global state, no hidden threads.

   HOW TO USE IT
   Include it anywhere for the declarations; in exactly one C or C++ file
   write

       #define MLKERN_IMPLEMENTATION
       #include "mlkern.h"

   and link with -lm; compile it with optimisation (-O2 or -O3: at -O0 the
   kernels are many times slower). Add -fopenmp to run the kernels on several threads:
   results are bitwise identical for any thread count. With -march=native
   (or -mavx2 -mfma -mf16c) the AVX2+FMA paths are compiled in, and on an
   AVX-512 machine (or -march=x86-64-v4) the AVX-512 ones too.

   CONFIGURATION (define before the implementation include)
       MLKERN_STATIC     every function static (private to that file)
       MLKERN_DEF        the linkage of every function (default extern)
       MLKERN_MALLOC(n)  MLKERN_FREE(p)   allocation, both or neither
                         (default malloc/free)
       MLKERN_ASSERT(x)  debug checks (default assert); the checks that
                         guard memory stay on in release builds
       MLKERN_NO_SIMD    force the portable scalar path
   SIMD, chosen at compile time: AVX2+FMA (x86-64); AVX-512 on top of it
   (the 12 x 32 micro-kernel under sgemm and the attention tiles, 16-lane exp
   and row scans in attention and softmax/top-k, VNNI in the ternary GEMM);
   NEON (aarch64: the micro-kernel, exp, the attention softmax rows, norm
   sums, the softmax/top-k scan, KV row decode; the rest is scalar there);
   or scalar. Results are bitwise identical for any thread count within a
   build; builds for different SIMD levels may differ in the last bits.

   ERRORS
   Every fallible function returns mlk_status (MLK_OK == 0; mlk_status_str
   names each code). Arguments are validated before any output is written,
   and every allocation is made before the first output is written: on
   error every output and cache is left exactly as it was. Caller scratch
   (mlk_attn_desc.workspace) comes with its size and is never overrun.

   THREADS
   Kernels may run concurrently on different outputs. A KV cache allows
   concurrent readers or one writer (see the KV cache section).

   EXAMPLE: the three likeliest next tokens of a toy LM head
       float x[2 * 64], h[2 * 64], w[1000 * 64], logits[2 * 1000], p[2 * 3];
       int32_t tok[2 * 3];
       ... fill x (2 x 64) and w (1000 x 64) ...
       mlk_layernorm_fwd(2, 64, x, NULL, NULL, 1e-5f, h, NULL, NULL);
       mlk_sgemm(0, 1, 2, 1000, 64, 1.0f, h, 64, w, 64, 0.0f, logits, 1000);
       if (mlk_topk_softmax(2, 1000, logits, 1.0f, 3, p, tok) != MLK_OK) ...
       for (int t = 0; t < 2; t++)
           printf("%d (p=%.3f)\n", tok[t * 3], p[t * 3]);

   SECTIONS (declarations below in this order, each with its own notes)
       common       mlk_status, mlk_status_str
       gemm         mlk_sgemm
       norms        mlk_layernorm_fwd/bwd, mlk_rmsnorm_fwd/bwd
       softmax      mlk_softmax, mlk_log_softmax, mlk_topk_softmax,
                    mlk_topk_log_softmax, mlk_sample, mlk_sample_rows
       attention    mlk_attn_fwd, mlk_attn_bwd, mlk_attn_naive,
                    mlk_attn_workspace_size, mlk_attn_sinks_grad,
                    mlk_attn_merge
       rope         mlk_rope_fwd, mlk_rope_bwd (mlk_rope_config)
       KV cache     mlk_kv_create(_bookkeeping) ... mlk_kv_attn_opt,
                    mlk_kv_attn_workspace_size, mlk_kv_attn,
                    mlk_kv_get_stats, mlk_kv_get_layout, mlk_kv_seq_blocks,
                    mlk_kv_prepare_write, mlk_kv_prepare_compact
       beam search  mlk_beam_search
       speculative  mlk_tree_mask, mlk_tree_depth, mlk_tree_accept,
                    mlk_spec_accept_sample, mlk_spec_generate,
                    mlk_spec_generate_sample
       ternary      mlk_ternary_quant/dequant, mlk_act_quant_i8,
                    mlk_ternary_gemm, mlk_bitlinear_fwd/bwd
       optimiser    mlk_adamw_step
   README.md has the tour, the semantics that differ from PyTorch/HF and the
   measured speed.

   INSIDE (the implementation, top-down; each part uses only what precedes it)
       common          status names, size and overflow checks, the arena
                       (one table of pieces sizes and carves a call's
                       scratch), OpenMP thresholds, exp, SIMD helpers,
                       symmetric quantisation
       shared kernels  the 6 x 16 FMA micro-kernel (sgemm and the attention
                       tiles), tree checks and depths, the KV row formats
       families        in the order of the declarations above, each under a
                       banner of the same form, AdamW last
   ADDING A KERNEL
   Declare it in its family's block above with a comment that states its
   contract (shapes, NULL rules, status codes, determinism); implement it
   under that family's banner below, validating NULLs, then sizes, then
   values, and taking scratch from one mlk__piece table; reuse the shared
   pieces (mlk__micro, mlk__tree_check, mlk__row_*, mlk__quant_sym,
   mlk__exp8, the MLK__PAR_* thresholds) instead of writing new ones. Test
   it in tests/test_<family>.c against an independent double-precision
   reference (plus bad inputs, allocation failure and thread counts), add a
   benchmark to bench/bench_<family>.c with its roofline ratio, and a
   README entry with the command and machine of every figure.
*/
#ifndef MLKERN_H
#define MLKERN_H

#include <stddef.h>
#include <stdint.h>

#define MLKERN_VERSION_MAJOR 0
#define MLKERN_VERSION_MINOR 1
#define MLKERN_VERSION_PATCH 0

#ifndef MLKERN_DEF
#ifdef MLKERN_STATIC
#if defined(__GNUC__) || defined(__clang__)
#define MLKERN_DEF static __attribute__((unused)) /* a file uses only some */
#else
#define MLKERN_DEF static
#endif
#else
#define MLKERN_DEF extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================
   common
   ====================================================================== */

typedef enum mlk_status {
    MLK_OK = 0,
    MLK_ERR_NULL,     /* a required pointer is NULL */
    MLK_ERR_SHAPE,    /* non-positive or inconsistent sizes */
    MLK_ERR_OVERFLOW, /* a size computation would overflow */
    MLK_ERR_NOMEM,    /* allocation failed */
    MLK_ERR_CAPACITY, /* cache, pool or sequence table full */
    MLK_ERR_TREE,     /* bad parent array */
    MLK_ERR_VALUE,    /* NaN logits, all -inf row, ... */
    MLK_ERR_CALLBACK, /* a user callback returned non-zero */
    MLK_ERR_ARG,      /* any other bad argument (a workspace too small, ...) */
    MLK_ERR_CUDA      /* a CUDA runtime call failed (mlkern_cuda.cuh: mlk_cuda_last_error) */
} mlk_status;

MLKERN_DEF const char *mlk_status_str(mlk_status s);

/* ======================================================================
   gemm
   ====================================================================== */

/* Row-major C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T
   (trans_a / trans_b non-zero). op(A) is m x k, op(B) k x n, C m x n; lda,
   ldb, ldc are the row strides of A, B, C as stored (lda >= k, or >= m when
   transposed; ldb >= n, or >= k when transposed; ldc >= n; all >= 1).
   beta == 0: C is not read (NaNs in C do not propagate). m or n == 0 is a
   no-op; k == 0 or alpha == 0 gives C = beta * C without reading A or B, as
   BLAS. Negative sizes or a leading dimension too small: MLK_ERR_SHAPE;
   NULL a, b (when k > 0) or c: MLK_ERR_NULL; pack buffers: MLK_ERR_NOMEM.
   m <= 8 (decode) skips packing and reads B once, in place; it allocates
   only when both are transposed (a copy of op(A)). Bitwise identical
   results for any OpenMP thread count. */
MLKERN_DEF mlk_status mlk_sgemm(int trans_a, int trans_b, int m, int n, int k,
                                float alpha, const float *a, int lda,
                                const float *b, int ldb, float beta, float *c, int ldc);
/* ======================================================================
   norms
   ====================================================================== */

/* Layer norm over the last dimension of x [rows, dim]:
   y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps), biased
   variance as PyTorch, computed stably (a mean of 1e4 with a spread of 1e-2
   normalises to full precision). gamma NULL means ones, beta NULL zeros;
   mean / rstd [rows] are the cache for the backward pass, NULL to skip. */
MLKERN_DEF mlk_status mlk_layernorm_fwd(int rows, int dim, const float *x,
    const float *gamma, const float *beta, float eps,
    float *y, float *mean, float *rstd);
/* Gradients of layer norm from x, the forward's mean/rstd cache and dy:
   dx [rows, dim], dgamma / dbeta [dim] (NULL when frozen). dgamma/dbeta are
   summed over fixed chunks of rows: bitwise the same for any thread count. */
MLKERN_DEF mlk_status mlk_layernorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *mean, const float *rstd,
    const float *dy, float *dx, float *dgamma, float *dbeta);
/* RMS norm: y = x * rstd * gamma, rstd = 1 / sqrt(mean(x^2) + eps).
   gamma NULL means ones; rstd [rows] or NULL. */
MLKERN_DEF mlk_status mlk_rmsnorm_fwd(int rows, int dim, const float *x,
    const float *gamma, float eps, float *y, float *rstd);
/* Gradients of RMS norm from x, the forward's rstd and dy; dgamma may be NULL. */
MLKERN_DEF mlk_status mlk_rmsnorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *rstd, const float *dy,
    float *dx, float *dgamma);
/* ======================================================================
   softmax, top-k, sampling
   ====================================================================== */

/* Row-wise softmax / log-softmax of x [rows, n] into y. -inf entries give 0
   (log: -inf); a row with a NaN or +inf, or all -inf, is MLK_ERR_VALUE and
   then y is untouched. */
MLKERN_DEF mlk_status mlk_softmax(int rows, int n, const float *x, float *y);
MLKERN_DEF mlk_status mlk_log_softmax(int rows, int n, const float *x, float *y);
/* The k (1..n) most probable tokens of softmax(logits / temperature) over the
   full row, in one pass over the logits: probs / idx [rows, k], sorted by
   descending probability, ties to the lower index. temperature must be
   positive with 1 / temperature finite (>= 2.94e-39, about 1 / FLT_MAX;
   else MLK_ERR_ARG). Rows up to n = INT_MAX keep an accurate sum. */
MLKERN_DEF mlk_status mlk_topk_softmax(int rows, int n, const float *logits,
    float temperature, int k, float *probs, int32_t *idx);
/* The same with log-probabilities (temperature 1). */
MLKERN_DEF mlk_status mlk_topk_log_softmax(int rows, int n, const float *logits,
    int k, float *logprobs, int32_t *idx);

/* Sampler settings, applied in this order, each on what the previous left. */
typedef struct mlk_sampler {
    float temperature; /* 0 = greedy (argmax, ties to the lower index); else
                          1 / temperature finite (>= 2.94e-39), else MLK_ERR_ARG */
    int top_k;         /* keep the k most probable; 0 (or >= n) = off */
    float top_p;       /* keep the fewest most probable tokens reaching top_p of the mass; >= 1 = off */
    float min_p;       /* keep tokens with p >= min_p * p_max; 0 = off */
} mlk_sampler;
/* Draws one token per row of logits [rows, n] into out [rows]. The PRNG is
   splitmix64: row r uses z = mix(*rng_state + (r + 1) * 0x9E3779B97F4A7C15),
   mix(z) = z ^= z >> 30, z *= 0xBF58476D1CE4E5B9, z ^= z >> 27,
   z *= 0x94D049BB133111EB, z ^= z >> 31, and u = (z >> 11) * 2^-53; on
   success *rng_state advances by rows * 0x9E3779B97F4A7C15 (one draw per
   row, greedy too). The token is the first whose running weight exceeds u
   times the kept total, walking the kept tokens by descending probability
   (ties: lower index) when top_k or top_p is on, else in index order. */
MLKERN_DEF mlk_status mlk_sample(int rows, int n, const float *logits,
    const mlk_sampler *s, uint64_t *rng_state, int32_t *out);

/* A sparse logit bias entry: logits[token] += bias (-inf bans the token). */
typedef struct mlk_logit_bias { int32_t token; float bias; } mlk_logit_bias;
/* One row's parameters of mlk_sample_rows; all zero but the sampler means
   no penalties and no bias. */
typedef struct mlk_sample_row {
    mlk_sampler sampler;          /* temperature, top_k, top_p, min_p, as mlk_sample */
    float repetition_penalty;     /* > 0, 1 or 0 = off: logits of history tokens are divided by
                                     it when positive, multiplied when negative (HF, vLLM) */
    float presence_penalty;       /* subtracted once from each token in the history (vLLM) */
    float frequency_penalty;      /* subtracted once per occurrence in the history (vLLM) */
    const int32_t *history;       /* NULL or [history_len] tokens the penalties look at */
    int history_len;
    const mlk_logit_bias *bias;   /* NULL or [n_bias] */
    int n_bias;
} mlk_sample_row;
/* mlk_sample with per-row parameters: row r adds its bias, then applies
   its repetition, then presence and frequency penalties, then samples as
   mlk_sample does with its sampler, drawing u from rng[r] (one draw:
   rng[r] advances by 0x9E3779B97F4A7C15 on success), so rows with
   rng[r] = s + r * 0x9E3779B97F4A7C15 and equal parameters draw what
   mlk_sample(rows, ..., &s) draws. logprob (NULL or [rows]) gets the
   sampled token's log-probability and top_idx / top_logprob (NULL when
   top_n is 0, else [rows, top_n]) the top_n most probable tokens (ties:
   lower index), all under softmax(penalised logits / temperature) before
   top-k/top-p/min-p (temperature 0: 1). Bitwise identical for any thread
   count. Bad parameters, a history or bias token outside [0, n) or a
   +inf/NaN bias are MLK_ERR_ARG; a row left without a finite logit is
   MLK_ERR_VALUE; nothing is written on error. */
MLKERN_DEF mlk_status mlk_sample_rows(int rows, int n, const float *logits, const mlk_sample_row *params,
    uint64_t *rng, int32_t *out, float *logprob, int top_n, int32_t *top_idx, float *top_logprob);
/* ======================================================================
   attention
   ====================================================================== */

/* Flash attention, forward and backward, float32, on plain arrays.

   Visibility of key j to query i in batch item b (n_b = kv_len[b] or len_kv,
   off = n_b - len_q: bottom-right alignment as FlashAttention >= 2.1, not
   PyTorch's top-left is_causal):
     - always j < n_b;
     - causal: j <= i + off (decode, len_q = 1, sees every key);
     - tree_parent (replaces causal): the first P = n_b - len_q keys are the
       prefix, the last len_q are the queries' tree nodes; query i sees the
       prefix and the key of each ancestor-or-self; node i sits at position
       P + depth(i);
     - window > 0: with causal or a tree, pos(j) > pos(i) - window;
       without, |pos(j) - pos(i)| < window.
   Score s = scale * q.k, then softcap, then the mask. A row that sees no
   key gets o = 0, lse = -inf and zero gradients.
   Sinks (gpt-oss, StreamingLLM): sinks[h] is a logit that joins the softmax
   denominator of every row of query head h, as one more key that carries
   no value and is never masked or softcapped: p_j = exp(s_j) / (exp(sink)
   + sum_k exp(s_k)), lse includes it (a row that sees no key then has
   o = 0 and lse = sinks[h]). -inf means no sink; NaN or +inf is
   MLK_ERR_ARG. mlk_attn_sinks_grad gives their gradient. */
typedef enum mlk_layout { MLK_BHND = 0, MLK_BNHD = 1 } mlk_layout;

/* Zero-initialise it (mlk_attn_desc d = {0};) and set what you need: every
   field's zero is its default, including fields later versions add. */
typedef struct mlk_attn_desc {
    int batch, heads, kv_heads;   /* kv_heads 0 => heads; heads % kv_heads == 0 */
    int len_q, len_kv;            /* len_kv 0 => len_q */
    int head_dim;
    float scale;                  /* 0 => 1/sqrt(head_dim) */
    int causal;                   /* bottom-right aligned */
    int window;                   /* > 0: sliding window, in positions */
    float softcap;                /* > 0: s = softcap * tanh(s / softcap) */
    const float *sinks;           /* NULL or [heads]: attention-sink logits */
    const int *kv_len;            /* NULL or [batch]: valid keys per item */
    const int *tree_parent;       /* NULL or [len_q]: tree mask */
    mlk_layout layout;            /* of q, k, v, o and their gradients */
    int tile_q, tile_kv;          /* 0 => tuned defaults */
    void *workspace;              /* NULL (allocate per call) or a caller buffer */
    size_t workspace_bytes;       /* size of workspace; checked, never exceeded */
    int threads;                  /* most threads to use; 0 => OpenMP's maximum */
} mlk_attn_desc;

/* Bytes of scratch mlk_attn_fwd and mlk_attn_bwd need to run d on
   d->threads threads (0: omp_get_max_threads() at the time of this call),
   or 0 if d is invalid (its pointed-to kv_len and tree_parent included).
   Pass a buffer of that size as d->workspace with d->workspace_bytes set to
   run without allocating. A call never writes past workspace_bytes: it runs
   on as many threads as the buffer has room for, and a buffer too small for
   one thread is MLK_ERR_ARG with nothing written. */
MLKERN_DEF size_t mlk_attn_workspace_size(const mlk_attn_desc *d);
/* o = softmax(mask(scale q k^T)) v, tiled with the online softmax; never
   materialises len_q x len_kv. q, o: [B,Hq,Nq,D] or [B,Nq,Hq,D]; k, v: the
   same with Hkv, Nkv. lse: NULL or [B,Hq,Nq] log-sum-exp of each row. */
MLKERN_DEF mlk_status mlk_attn_fwd(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, float *o, float *lse);
/* Gradients from the forward's o and lse: FlashAttention-2 with
   D = rowsum(dout * o). dk, dv are summed over the query heads of a group.
   Any of dq, dk, dv may be NULL. Deterministic for any thread count. */
MLKERN_DEF mlk_status mlk_attn_bwd(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, const float *o, const float *dout,
    const float *lse, float *dq, float *dk, float *dv);
/* Reference: the same semantics with materialised scores, accumulated in
   double. Slow; for tests and for checking an engine. */
MLKERN_DEF mlk_status mlk_attn_naive(const mlk_attn_desc *d, const float *q,
    const float *k, const float *v, float *o, float *lse);
/* Gradient of the loss with respect to d->sinks (required): dsinks[h] =
   -sum over batch items and queries of p_sink * D, with p_sink =
   exp(sinks[h] - lse) and D = rowsum(dout * o), summed in a fixed order. */
MLKERN_DEF mlk_status mlk_attn_sinks_grad(const mlk_attn_desc *d, const float *o, const float *dout,
    const float *lse, float *dsinks);
/* Merges two partial attention states over disjoint key sets into the
   state of their union, as one pass over both would give it: for each of
   rows rows, o = (w_a o_a + w_b o_b) / (w_a + w_b) with w = exp(lse - max),
   lse = max + log(w_a + w_b); both -inf gives o = 0, lse = -inf. o_* are
   [rows, head_dim] and lse_* [rows] in the same row order (mlk_kv_attn's
   o and lse; mlk_attn_fwd's in the BHND layout). o and lse may alias a's
   or b's. Split-KV and shared-prefix (cascade) decoding build on it. */
MLKERN_DEF mlk_status mlk_attn_merge(int rows, int head_dim, const float *o_a, const float *lse_a,
    const float *o_b, const float *lse_b, float *o, float *lse);
/* ======================================================================
   rotary position embedding
   ====================================================================== */

/* RoPE in place on x [rows, heads, head_dim] (row r: one token, all its
   heads, at position pos[r] >= 0). Pair i < rot_dim / 2 of the first
   rot_dim dims turns by angle pos * inv_freq[i]; dims past rot_dim pass
   through untouched:
       (a, b) -> (a cos - b sin, b cos + a sin)
   MLK_ROPE_NEOX (NeoX / Llama, HF's rotate_half): pair i is dims (i,
   i + rot_dim / 2); MLK_ROPE_GPTJ (interleaved): dims (2i, 2i + 1).
   inv_freq[i] = theta^(-2i / rot_dim), then the scaling (as HF's
   _compute_*_parameters, in double):
     MLK_ROPE_SCALE_NONE    as is;
     MLK_ROPE_SCALE_LINEAR  inv_freq / factor (positions / factor);
     MLK_ROPE_SCALE_LLAMA3  Llama 3.1: wavelength w = 2 pi / inv_freq and
         L = original_max_position; w < L / high_freq_factor kept, w >
         L / low_freq_factor divided by factor, in between blended:
         (1 - s) inv_freq / factor + s inv_freq, s = (L / w - low) / (high - low);
     MLK_ROPE_SCALE_YARN    YaRN: d(b) = rot_dim ln(L / (2 pi b)) /
         (2 ln theta), lo = max(floor(d(beta_fast)), 0), hi =
         min(ceil(d(beta_slow)), rot_dim - 1) (hi += 0.001 if equal),
         ramp = clamp((i - lo) / (hi - lo), 0, 1), inv_freq = ramp *
         inv_freq / factor + (1 - ramp) * inv_freq; cos and sin are both
         multiplied by attn_factor (0: HF's 0.1 ln(factor) + 1, or 1 when
         factor <= 1).
   Angles and cos/sin are computed in double (long positions keep their
   digits: pos 1 << 20 is as accurate as pos 10), once per row and reused
   across the heads; no allocation. Fields a scaling does not use are
   ignored. Bitwise identical for any OpenMP thread count. */
typedef enum mlk_rope_style { MLK_ROPE_NEOX = 0, MLK_ROPE_GPTJ = 1 } mlk_rope_style;
typedef enum mlk_rope_scaling {
    MLK_ROPE_SCALE_NONE = 0, MLK_ROPE_SCALE_LINEAR, MLK_ROPE_SCALE_LLAMA3, MLK_ROPE_SCALE_YARN
} mlk_rope_scaling;
typedef struct mlk_rope_config {
    int head_dim;              /* >= 1 */
    int rot_dim;               /* even, 2 <= rot_dim <= head_dim */
    mlk_rope_style style;
    float theta;               /* base, > 1 (10000, 500000, ...) */
    mlk_rope_scaling scaling;
    float factor;              /* LINEAR, LLAMA3, YARN: > 0 */
    float low_freq_factor;     /* LLAMA3: > 0 (Llama 3.1: 1) */
    float high_freq_factor;    /* LLAMA3: > low_freq_factor (Llama 3.1: 4) */
    int original_max_position; /* LLAMA3, YARN: >= 1 (Llama 3.1: 8192) */
    float beta_fast;           /* YARN: > 0, 0 => 32 */
    float beta_slow;           /* YARN: > 0, 0 => 1 */
    float attn_factor;         /* YARN: > 0, 0 => the default above */
} mlk_rope_config;

/* Rotates x [rows, heads, cfg->head_dim] in place by the angles of
   pos [rows]. Checks NULLs (MLK_ERR_NULL), then sizes (rows, heads >= 1,
   head_dim >= 1, rot_dim even in [2, head_dim]: MLK_ERR_SHAPE; the element
   count: MLK_ERR_OVERFLOW), then values (theta > 1 and every used factor
   finite and positive, known enums, every pos >= 0: MLK_ERR_ARG); on error
   x is untouched. */
MLKERN_DEF mlk_status mlk_rope_fwd(const mlk_rope_config *cfg, int rows, int heads,
    const int32_t *pos, float *x);
/* The backward pass on dy [rows, heads, head_dim] in place: the transpose
   of the forward, rotation by -angle (times attn_factor for YaRN, so for
   YaRN it is attn_factor^2 times the inverse; otherwise the inverse).
   Same checks as mlk_rope_fwd. */
MLKERN_DEF mlk_status mlk_rope_bwd(const mlk_rope_config *cfg, int rows, int heads,
    const int32_t *pos, float *dy);
/* ======================================================================
   KV cache
   ====================================================================== */

/* A pool of num_blocks blocks; a block holds block_size positions of every
   layer and kv head, keys and values. Sequences own block tables into the
   pool; forks share blocks and copy one on its first write (copy-on-write).
   A contiguous cache is block_size = the longest context.

   Threads: calls that only read a cache (mlk_kv_load, mlk_kv_attn,
   mlk_kv_attn_opt, mlk_kv_attn_workspace_size, mlk_kv_seq_len,
   mlk_kv_get_stats, mlk_kv_get_layout, mlk_kv_seq_blocks) may run
   concurrently with each other; every other call changes it and needs
   exclusive access (no reader or writer at the same time), as with any
   container. Distinct caches are independent.

   Storage and bytes per token per layer (both K and V, Hkv kv heads, head
   dim D, nb = ceil(D / 32) quantisation blocks of one float scale each):
       MLK_KV_F32  2 * Hkv * 4 * D                          (D=128: 1024 B/head)
       MLK_KV_F16  2 * Hkv * 2 * D                          (D=128:  512 B/head)
       MLK_KV_Q8   2 * Hkv * (4 * nb + D rounded up to 4)       (D=128: 288 B/head)
       MLK_KV_Q4   2 * Hkv * (4 * nb + D/2 rounded up to 4)     (D=128: 160 B/head)
   mlk_kv_bytes_per_token computes it. F16 rounds to nearest even and
   saturates at +-65504; Q8/Q4 are symmetric (scale = max|x| / 127 or / 7,
   rounded up for blocks below 2^-100) with every element within half a
   step (scale / 2) of its input, up to one float rounding of q * scale. */
typedef enum mlk_kv_type { MLK_KV_F32, MLK_KV_F16, MLK_KV_Q8, MLK_KV_Q4 } mlk_kv_type;
typedef struct mlk_kv_config {
    int layers, kv_heads, head_dim;
    int block_size, num_blocks, max_seqs;
    mlk_kv_type type;
} mlk_kv_config;
typedef struct mlk_kv_cache mlk_kv_cache;

/* Bytes one position takes in one layer (K and V, all kv heads); 0 if any
   field of the config is invalid (a size < 1, an unknown type) or the size
   overflows. Pool bytes = this * layers *
   block_size * num_blocks. */
MLKERN_DEF size_t     mlk_kv_bytes_per_token(const mlk_kv_config *cfg);
/* Allocates the pool and tables; every size >= 1 (else MLK_ERR_SHAPE), type
   one of mlk_kv_type (else MLK_ERR_ARG). *out is written only on success. */
MLKERN_DEF mlk_status mlk_kv_create(const mlk_kv_config *cfg, mlk_kv_cache **out);
/* The same cache without its pool: bookkeeping only (block tables, forks,
   copy-on-write, truncation), for rows kept elsewhere, such as a device
   copy of the pool in the layout mlk_kv_get_layout describes. Store, load,
   compact and attention are then MLK_ERR_ARG, and mlk_kv_prepare_write
   reports the block copies a write needs. */
MLKERN_DEF mlk_status mlk_kv_create_bookkeeping(const mlk_kv_config *cfg, mlk_kv_cache **out);
/* Frees the cache and every sequence in it; NULL is a no-op. */
MLKERN_DEF void       mlk_kv_destroy(mlk_kv_cache *c);
/* A new empty sequence: the lowest free id in [0, max_seqs), or
   MLK_ERR_CAPACITY when max_seqs sequences exist. */
MLKERN_DEF mlk_status mlk_kv_seq_new(mlk_kv_cache *c, int *seq);
/* Releases the sequence; blocks shared with a fork stay with the fork. */
MLKERN_DEF mlk_status mlk_kv_seq_free(mlk_kv_cache *c, int seq);
/* A new sequence sharing every block of src (no copy); the first write by
   either side into a shared block copies exactly that block. */
MLKERN_DEF mlk_status mlk_kv_seq_fork(mlk_kv_cache *c, int src, int *dst);
/* Number of positions of the sequence; -1 for a NULL cache or a bad id. */
MLKERN_DEF int        mlk_kv_seq_len(const mlk_kv_cache *c, int seq);
/* Grows the sequence by n >= 1 positions (zeros until stored). MLK_ERR_CAPACITY, with nothing changed, if the pool lacks blocks. */
MLKERN_DEF mlk_status mlk_kv_append(mlk_kv_cache *c, int seq, int n);
/* Writes positions [pos, pos + n) of one layer; k, v: [n, kv_heads, head_dim].
   The range must lie inside the sequence (MLK_ERR_SHAPE). Quantised types
   need finite inputs (MLK_ERR_VALUE). Shared blocks are copied first; when
   the pool cannot hold the copies: MLK_ERR_CAPACITY, nothing changed. */
MLKERN_DEF mlk_status mlk_kv_store(mlk_kv_cache *c, int seq, int layer, int pos,
    int n, const float *k, const float *v);
/* Makes the blocks of positions [pos, pos + n) of seq private before a
   write (copy-on-write), as mlk_kv_store does, and lists each block copy it
   made as a pair (source block, new block) in copies [2 * cap] (*n_copies
   pairs): a bookkeeping-only cache leaves the copying of those blocks'
   bytes to whoever holds them. More pairs than cap: MLK_ERR_CAPACITY with nothing
   changed, as when the pool lacks blocks. */
MLKERN_DEF mlk_status mlk_kv_prepare_write(mlk_kv_cache *c, int seq, int pos, int n, int *copies, int cap,
    int *n_copies);
/* Dequantised copy of positions [pos, pos + n) of one layer into k, v. */
MLKERN_DEF mlk_status mlk_kv_load(const mlk_kv_cache *c, int seq, int layer, int pos,
    int n, float *k, float *v);
/* Shortens the sequence to len (0 <= len <= current length); blocks past
   the new end are released. */
MLKERN_DEF mlk_status mlk_kv_truncate(mlk_kv_cache *c, int seq, int len);
/* Keeps accepted speculative rows: position start + keep[i] moves to
   start + i (every layer), then the length becomes start + n_keep. keep is
   strictly increasing inside [0, len - start) (else MLK_ERR_ARG); n_keep may
   be 0. Shared blocks it rewrites are copied (MLK_ERR_CAPACITY if it can't). */
MLKERN_DEF mlk_status mlk_kv_compact(mlk_kv_cache *c, int seq, int start,
    int n_keep, const int *keep);
/* mlk_kv_compact for rows kept elsewhere: the same checks and bookkeeping
   on any cache (one with storage moves its rows too), reporting what the
   holder of the rows must do, in this order: the block copies, pairs
   (source block, new block) in copies [2 * cap] (*n_copies pairs) as
   mlk_kv_prepare_write reports them; then the row moves, one after
   another, pairs (source slot, destination slot) in moves [2 * n_keep]
   (*n_moves pairs), a slot being the pool position block * block_size +
   offset, each move covering every layer, K and V and kv head. More copies
   than cap: MLK_ERR_CAPACITY with nothing changed, as when the pool lacks
   blocks. */
MLKERN_DEF mlk_status mlk_kv_prepare_compact(mlk_kv_cache *c, int seq, int start, int n_keep, const int *keep,
    int *copies, int cap, int *n_copies, int64_t *moves, int *n_moves);
/* Options of mlk_kv_attn_opt; all zero is plain causal attention. The
   window, softcap and sink rules are mlk_attn_desc's, with a sequence's
   positions as the key positions and its n_q newest as the queries. */
typedef struct mlk_kv_attn_opts {
    float scale;            /* 0 => 1/sqrt(head_dim) */
    int window;             /* > 0: sliding window, in positions */
    float softcap;          /* > 0: s = softcap * tanh(s / softcap) */
    const float *sinks;     /* NULL or [heads]: attention-sink logits */
    const int *tree_parent; /* NULL or [n_q[0]] (one sequence): the last n_q positions are a tree */
    void *workspace;        /* NULL (allocate per call) or a caller buffer */
    size_t workspace_bytes; /* its size: checked, never exceeded */
    int threads;            /* most threads to use; 0 => OpenMP's maximum */
} mlk_kv_attn_opts;
/* Attention of each listed sequence's n_q[s] newest positions (already
   stored) over its whole cache in one layer. q, o: for each sequence in
   order, [n_q[s], heads, head_dim]; heads a multiple of kv_heads (GQA);
   lse: NULL or [sum n_q, heads] in o's row order (mlk_attn_merge takes
   both). Causal, bottom-right aligned; with a tree (one sequence only) a
   node sees the prefix, its ancestors and itself (a bad parent array is
   MLK_ERR_TREE). The result equals mlk_attn_fwd on the same keys with the
   same options. A decode step (n_q * heads / kv_heads < 6 rows per kv
   head) over more than 4096 keys is split into runs of 4096 keys attended
   in parallel and merged in a fixed order. Scratch: opts->workspace (the
   call runs on as many threads as it has room for; too small for one is
   MLK_ERR_ARG) or one allocation per call, about 0.4 MiB per thread at
   head_dim 128. Bitwise identical for any thread count. */
MLKERN_DEF mlk_status mlk_kv_attn_opt(const mlk_kv_cache *c, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads,
    const mlk_kv_attn_opts *opts, float *o, float *lse);
/* Workspace bytes of that call on opts->threads threads (0: OpenMP's
   maximum now); 0 if the arguments are invalid. */
MLKERN_DEF size_t mlk_kv_attn_workspace_size(const mlk_kv_cache *c, int n_seqs, const int *seqs,
    const int *n_q, int heads, const mlk_kv_attn_opts *opts);
/* mlk_kv_attn_opt with only scale and tree_parent set, and no lse. */
MLKERN_DEF mlk_status mlk_kv_attn(const mlk_kv_cache *c, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads,
    float scale, const int *tree_parent, float *o);
typedef struct mlk_kv_stats {
    size_t bytes_total, bytes_used;   /* pool bytes; bytes in used blocks */
    int blocks_total, blocks_used, seqs;
} mlk_kv_stats;
/* Pool occupancy: a block shared by several sequences counts once. */
MLKERN_DEF mlk_status mlk_kv_get_stats(const mlk_kv_cache *c, mlk_kv_stats *st);
/* The pool's byte layout, so an engine (or a device copy of the pool) can
   address rows directly: the row of (layer, kv = 0 for K / 1 for V, head,
   position p) of a sequence lives in block b = blocks[p / block_size] at
   pool + b * block_bytes + layer * layer_stride + kv * kv_stride +
   head * head_stride + (p % block_size) * row_bytes, in the row format of
   `type` (F32/F16 values; Q8/Q4: ceil(head_dim / 32) float scales, then
   int8 codes or 4-bit codes biased by 8, element e in byte e / 2, low
   nibble first). */
typedef struct mlk_kv_layout {
    mlk_kv_type type;
    int layers, kv_heads, head_dim, block_size, num_blocks;
    size_t row_bytes, block_bytes, layer_stride, kv_stride, head_stride;
    const unsigned char *pool; /* the host pool */
} mlk_kv_layout;
MLKERN_DEF mlk_status mlk_kv_get_layout(const mlk_kv_cache *c, mlk_kv_layout *layout);
/* A sequence's block table: writes its first min(n, cap) block ids into
   blocks (NULL when cap is 0) and returns n, the blocks it uses; -1 for a
   NULL cache, a bad id or blocks NULL with cap > 0. */
MLKERN_DEF int        mlk_kv_seq_blocks(const mlk_kv_cache *c, int seq, int *blocks, int cap);
/* ======================================================================
   beam search
   ====================================================================== */

/* Model callback of mlk_beam_search: fill logits [n, vocab] for n live
   sequences (seqs[i]: prompt + generated tokens, lens[i] long). parent[i] is
   the index, in the previous call, of the sequence that seqs[i] extends (-1
   at the first call), so a stateful model can fork its KV cache. Return 0,
   or non-zero to abort the search. */
typedef int (*mlk_logits_fn)(void *user, int n, const int *parent,
    const int32_t *const *seqs, const int *lens, float *logits);
/* eos_id: the end token in [0, vocab), or -1 for none. num_return <= beam_width.
   score = logprob / len^length_penalty, len counting generated tokens with EOS;
   max_new_tokens^length_penalty must lie in [2^-200, 2^200] (any sane
   penalty; else MLK_ERR_ARG) so that every score is finite. */
typedef struct mlk_beam_config {
    int beam_width, vocab, eos_id, max_new_tokens, num_return;
    float length_penalty;
} mlk_beam_config;
/* Pool beam search: finished hypotheses keep competing on their frozen score;
   each step keeps the beam_width best of finished + expansions. One callback
   call per step covers the live beams of every item, grouped by item.
   Outputs, ranked per item: out_tokens [batch, num_return, max_new_tokens]
   (-1 past out_len), out_len [batch, num_return]; out_logprob, out_score
   [batch, num_return] or NULL (-inf for missing hypotheses). */
MLKERN_DEF mlk_status mlk_beam_search(const mlk_beam_config *cfg, int batch,
    const int32_t *const *prompts, const int *prompt_lens,
    mlk_logits_fn fn, void *user, int32_t *out_tokens, int *out_len,
    float *out_logprob, float *out_score);
/* ======================================================================
   tree speculative decoding
   ====================================================================== */

/* A draft tree of n nodes in topological order: parent[i] < i, -1 for a
   root. mask [n, n]: mask[i*n + j] = 1 iff node j is an ancestor-or-self of i. */
MLKERN_DEF mlk_status mlk_tree_mask(int n, const int *parent, uint8_t *mask);
/* depth [n]: 0 for roots, else the parent's depth + 1; after a prefix of P
   positions, node i sits at position P + depth[i]. */
MLKERN_DEF mlk_status mlk_tree_depth(int n, const int *parent, int *depth);
/* Verifies draft [n] against target [n + 1] (target[0]: greedy token after the
   prefix, target[1 + i]: after node i). Node i is checked against
   target[parent[i] + 1]; the walk takes the lowest-index matching child per
   level. path [n] gets the accepted nodes (*n_path of them), *bonus the
   target's token after the last one. */
MLKERN_DEF mlk_status mlk_tree_accept(int n, const int *parent, const int32_t *draft,
    const int32_t *target, int *path, int *n_path, int32_t *bonus);

/* Speculative sampling: verifies a draft tree whose tokens were sampled from
   the draft model so that the emitted tokens are distributed exactly as
   sampling from the target (Leviathan et al. 2023 for a chain; SpecInfer's
   recursion over siblings for a tree). p_target [n + 1, vocab]: row 0 the
   target's distribution after the prefix, row 1 + i after node i; p_draft
   [n, vocab]: row i the distribution node i's token was drawn from. From
   the roots, the children of the current node are tried in index order:
   child c is accepted with probability min(1, p(x_c) / q_c(x_c)), else p
   becomes the residual max(0, p - q_c) (normalised) and the next sibling is
   tried; when every child is rejected, *token is drawn from the residual
   (the correction), and after an accepted leaf from its target row (the
   bonus). path [n] gets the accepted nodes (*n_path of them). Rows hold
   finite probabilities >= 0 (each target row with a positive sum, else
   MLK_ERR_VALUE); draft tokens lie in [0, vocab). Uniform draws come from
   the splitmix64 stream of *rng_state (as mlk_sample's), which advances by
   the draws used. With one-hot (greedy) target rows it accepts exactly
   what mlk_tree_accept accepts. */
MLKERN_DEF mlk_status mlk_spec_accept_sample(int n, const int *parent, const int32_t *draft, int vocab,
    const float *p_target, const float *p_draft, uint64_t *rng_state, int *path, int *n_path, int32_t *token);

/* Callbacks of mlk_spec_generate; each returns 0, or non-zero to abort.
   draft: propose at most max_nodes tokens after ctx [ctx_len] as a tree
   (tokens, parent as above); *n_nodes may be 0. */
typedef int (*mlk_draft_fn)(void *user, const int32_t *ctx, int ctx_len,
    int max_nodes, int32_t *tokens, int *parent, int *n_nodes);
/* verify: one target pass over ctx and the tree (tree attention, node i at
   position ctx_len + depth[i]): greedy[0] = the target's argmax after ctx,
   greedy[1 + i] after node i. */
typedef int (*mlk_verify_fn)(void *user, const int32_t *ctx, int ctx_len,
    int n_nodes, const int32_t *tokens, const int *parent, int32_t *greedy);
/* accept (optional): the nodes of the last verified tree that were kept, so a
   stateful target keeps their KV rows (mlk_kv_compact) and drops the rest. */
typedef int (*mlk_accept_fn)(void *user, int n_path, const int *path);
/* The sampling mode's callbacks: draft_sample proposes a tree as draft does
   and fills probs [max_nodes, vocab] (row i: the distribution node i's token
   was drawn from); verify_sample fills probs [n_nodes + 1, vocab] with the
   target's distributions after ctx (row 0) and after each node. */
typedef int (*mlk_draft_sample_fn)(void *user, const int32_t *ctx, int ctx_len,
    int max_nodes, int32_t *tokens, int *parent, float *probs, int *n_nodes);
typedef int (*mlk_verify_sample_fn)(void *user, const int32_t *ctx, int ctx_len,
    int n_nodes, const int32_t *tokens, const int *parent, float *probs);

typedef struct mlk_spec_config {
    int max_new_tokens, max_nodes; /* >= 1; max_nodes bounds each draft tree */
    int eos_id;                    /* stop after emitting it; -1: none */
    mlk_draft_fn draft;
    mlk_verify_fn verify;
    mlk_accept_fn accept;          /* NULL: not needed */
    void *user;                    /* passed to the callbacks */
} mlk_spec_config;
/* The sampling mode of mlk_spec_generate_sample. */
typedef struct mlk_spec_sampling {
    int vocab;                     /* >= 1 */
    uint64_t seed;                 /* mlk_spec_accept_sample's RNG stream */
    mlk_draft_sample_fn draft;     /* replace cfg->draft and cfg->verify */
    mlk_verify_sample_fn verify;
} mlk_spec_sampling;
typedef struct mlk_spec_stats {
    int target_calls;    /* verify calls */
    int drafted;         /* draft tokens proposed */
    int accepted;        /* draft tokens accepted and emitted */
    float mean_accepted; /* accepted / target_calls (each call also emits a bonus token) */
} mlk_spec_stats;
/* Tree speculative decoding: draft, verify, accept path + bonus, until
   max_new_tokens or EOS. out [max_new_tokens] (-1 past *out_len) equals the
   target's greedy decoding for any draft. stats may be NULL. */
MLKERN_DEF mlk_status mlk_spec_generate(const mlk_spec_config *cfg,
    const int32_t *prompt, int prompt_len, int32_t *out, int *out_len,
    mlk_spec_stats *stats);
/* The same with sampling: the callbacks of *sampling give distributions and
   each tree is verified by mlk_spec_accept_sample, so out is distributed
   exactly as sampling from the target (cfg->draft and cfg->verify are not
   used). Bad probabilities from a callback are MLK_ERR_VALUE. */
MLKERN_DEF mlk_status mlk_spec_generate_sample(const mlk_spec_config *cfg, const mlk_spec_sampling *sampling,
    const int32_t *prompt, int prompt_len, int32_t *out, int *out_len, mlk_spec_stats *stats);
/* ======================================================================
   ternary (BitNet b1.58)
   ====================================================================== */

/* Packed ternary weights. A weight matrix is [rows, cols] (out x in, like
   nn.Linear). Each row takes mlk_ternary_row_bytes(cols) = ceil(cols / 4)
   bytes; weight (r, c) sits in byte r * row_bytes + c / 4 at bits
   2 * (c % 4) .. 2 * (c % 4) + 1, as the code q + 1: 0 = -1, 1 = 0, 2 = +1.
   Padding weights of the last byte are code 1 (zero); code 3 is invalid.
   A weight's value is scale * q with one float scale per matrix. */
#define MLK_TERNARY_EPS 1e-5f       /* smallest absmean scale */
#define MLK_TERNARY_MAX_K (1 << 22) /* longest dot product: int32 sums stay exact */

/* Bytes of one packed row: ceil(cols / 4); 0 when cols < 1. */
MLKERN_DEF size_t mlk_ternary_row_bytes(int cols);

/* Absmean quantisation: s = max(mean|w|, MLK_TERNARY_EPS) over the whole
   matrix (summed in double), q = clamp(round(w / s), -1, 1) rounding half away from zero on the
   exact quotient (q = sign(w) when |w| >= s / 2). torch.round would round
   half to even; the two differ only for |w| == s / 2 exactly. packed:
   rows * row_bytes; *scale = s. A NaN or infinite weight is MLK_ERR_VALUE. */
MLKERN_DEF mlk_status mlk_ternary_quant(int rows, int cols, const float *w,
    uint8_t *packed, float *scale);
/* Unpacks: w[r, c] = scale * q. A code 3 anywhere is MLK_ERR_VALUE. */
MLKERN_DEF mlk_status mlk_ternary_dequant(int rows, int cols, const uint8_t *packed,
    float scale, float *w);

/* Per-row absmax quantisation: xscale[r] = max|x[r, :]| / 127 and
   xq = round(x * (127 / max|x|)) rounding half away from zero, so codes are
   in [-127, 127] and |x - xq * xscale| <= xscale / 2 up to float rounding.
   Rows with max|x| below 2^-100 are quantised in double against xscale
   rounded up, so the codes and that bound hold down to denormals. A zero
   row gets xscale 0 and codes 0. NaN or infinite inputs are MLK_ERR_VALUE. */
MLKERN_DEF mlk_status mlk_act_quant_i8(int rows, int cols, const float *x,
    int8_t *xq, float *xscale);

/* y[i, j] = (xscale[i] * wscale) * sum_c xq[i, c] * q[j, c] with the sum
   exact in int32; xq [m, k], wpacked [n, row_bytes(k)], y [m, n]. Any
   m, n >= 1 and 1 <= k <= MLK_TERNARY_MAX_K (else MLK_ERR_SHAPE /
   MLK_ERR_OVERFLOW); xq may hold -128. The AVX2 path multiplies the 2-bit
   codes as bytes (never as floats) and allocates about m * k bytes per
   call for reordered activations; threads split the output columns. */
MLKERN_DEF mlk_status mlk_ternary_gemm(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y);

/* BitLinear for training, with fp32 latent weights w [n, k] and no bias:
   y [m, n] = x^ * W^T with x^ = act_quant_i8(x) dequantised and W^ =
   ternary_quant(w) dequantised. The forward runs the inference path
   (mlk_act_quant_i8, mlk_ternary_quant, mlk_ternary_gemm), so a trained
   model gives the same logits deployed. */
MLKERN_DEF mlk_status mlk_bitlinear_fwd(int m, int n, int k, const float *x,
    const float *w, float *y);
/* Straight-through estimator: the quantisers count as the identity, so
   dx [m, k] = dy * W^ and dw [n, k] = dy^T * x^ (x^, W^ recomputed from x
   and w, float matmuls through mlk_sgemm). dx or dw may be NULL. */
MLKERN_DEF mlk_status mlk_bitlinear_bwd(int m, int n, int k, const float *x,
    const float *w, const float *dy, float *dx, float *dw);

/* ======================================================================
   optimiser
   ====================================================================== */

/* AdamW hyper-parameters (PyTorch's defaults: 1e-3, 0.9, 0.999, 1e-8, 1e-2). */
typedef struct mlk_adamw_config {
    float lr, beta1, beta2, eps, weight_decay;
} mlk_adamw_config;
/* One AdamW step on n parameters, as PyTorch's: p *= 1 - lr * wd
   (decoupled decay), m = beta1 m + (1 - beta1) g, v = beta2 v +
   (1 - beta2) g^2, p -= lr / (1 - beta1^t) * m /
   (sqrt(v) / sqrt(1 - beta2^t) + eps). step t >= 1 counts from 1; m and v
   start at zero. lr, eps, wd >= 0 and betas in [0, 1) (else MLK_ERR_ARG). */
MLKERN_DEF mlk_status mlk_adamw_step(int n, float *param, const float *grad,
    float *m, float *v, const mlk_adamw_config *cfg, int step);

#ifdef __cplusplus
}
#endif

#endif /* MLKERN_H */

/* ====================================================================== */
#ifdef MLKERN_IMPLEMENTATION
#ifndef MLKERN_IMPLEMENTATION_DONE
#define MLKERN_IMPLEMENTATION_DONE

#include <math.h>
#include <string.h>
#include <float.h>
#include <limits.h>

#include <stdlib.h> /* malloc/free unless overridden; abort */
#if defined(MLKERN_MALLOC) != defined(MLKERN_FREE)
#error "mlkern.h: define both MLKERN_MALLOC and MLKERN_FREE, or neither"
#endif
#ifndef MLKERN_MALLOC
#define MLKERN_MALLOC(n) malloc(n)
#endif
#ifndef MLKERN_FREE
#define MLKERN_FREE(p) free(p)
#endif
#ifndef MLKERN_ASSERT
#include <assert.h>
#define MLKERN_ASSERT(x) assert(x)
#endif

/* SIMD selection, at compile time. */
#if !defined(MLKERN_NO_SIMD) && defined(__AVX2__) && defined(__FMA__)
#define MLK__AVX2 1
#include <immintrin.h>
#if defined(__AVX512F__)
#define MLK__AVX512 1 /* on top of AVX2: the paths that gain from 16 lanes */
#if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
/* g++ before 13 warns inside its own AVX-512 intrinsics (their
   self-initialised "undefined" operands, GCC bug 105593) wherever they
   are inlined; popped at the end of the implementation */
#define MLK__GXX_AVX512_QUIET 1
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif
#elif !defined(MLKERN_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define MLK__NEON 1
#include <arm_neon.h>
#endif

/* OpenMP only through pragmas; MLK__OMP(omp parallel for) is nothing
   without -fopenmp, so -Wunknown-pragmas stays quiet. */
#ifdef _OPENMP
#include <omp.h>
#define MLK__OMP(x) _Pragma(#x)
#else
#define MLK__OMP(x)
#endif

/* Internal helpers a given configuration may not call (the scalar exp under
   AVX2, say) are marked so that -Wunused-function stays quiet. */
#if defined(__GNUC__) || defined(__clang__)
#define MLK__MAYBE_UNUSED __attribute__((unused))
#else
#define MLK__MAYBE_UNUSED
#endif

/* The micro-kernel must be inlined into its callers: with the tile height
   a constant there, its row guards fold away; compilers' size heuristics
   otherwise keep the 12-row AVX-512 tile out of line. */
#if defined(__GNUC__) || defined(__clang__)
#define MLK__INLINE_ALWAYS inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define MLK__INLINE_ALWAYS __forceinline
#else
#define MLK__INLINE_ALWAYS inline
#endif

#ifdef __cplusplus
extern "C" {
#endif


MLKERN_DEF const char *mlk_status_str(mlk_status s)
{
    switch (s) {
    case MLK_OK: return "ok";
    case MLK_ERR_NULL: return "null pointer";
    case MLK_ERR_SHAPE: return "bad shape";
    case MLK_ERR_OVERFLOW: return "size overflow";
    case MLK_ERR_NOMEM: return "out of memory";
    case MLK_ERR_CAPACITY: return "capacity exhausted";
    case MLK_ERR_TREE: return "bad tree parent array";
    case MLK_ERR_VALUE: return "bad value (NaN or all -inf)";
    case MLK_ERR_CALLBACK: return "callback aborted";
    case MLK_ERR_ARG: return "bad argument";
    case MLK_ERR_CUDA: return "CUDA runtime error";
    }
    return "unknown status";
}

/* ---- sizes: every element count goes through these (0 on overflow) ---- */

MLK__MAYBE_UNUSED static int mlk__mul_ok(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* *n = a*b*c*d elements (all factors >= 0); returns 0 if that count or
   count * elem_bytes overflows size_t. */
MLK__MAYBE_UNUSED static int mlk__count4(int a, int b, int c, int d, size_t elem_bytes, size_t *n)
{
    size_t t, bytes;
    if (a < 0 || b < 0 || c < 0 || d < 0) return 0;
    if (!mlk__mul_ok((size_t)a, (size_t)b, &t)) return 0;
    if (!mlk__mul_ok(t, (size_t)c, &t)) return 0;
    if (!mlk__mul_ok(t, (size_t)d, &t)) return 0;
    if (!mlk__mul_ok(t, elem_bytes, &bytes)) return 0;
    *n = t;
    return 1;
}

/* ---- memory: 64-byte aligned blocks on top of MLKERN_MALLOC ---- */

#define MLK__ALIGN 64

MLK__MAYBE_UNUSED static void *mlk__alloc(size_t bytes)
{
    unsigned char *raw, *p;
    if (bytes > SIZE_MAX - MLK__ALIGN - sizeof(void *)) return NULL;
    raw = (unsigned char *)MLKERN_MALLOC(bytes + MLK__ALIGN + sizeof(void *));
    if (!raw) return NULL;
    p = raw + sizeof(void *);
    p += (MLK__ALIGN - ((uintptr_t)p % MLK__ALIGN)) % MLK__ALIGN;
    memcpy(p - sizeof(void *), &raw, sizeof(void *));
    return p;
}

MLK__MAYBE_UNUSED static void mlk__free(void *p)
{
    void *raw;
    if (!p) return;
    memcpy(&raw, (unsigned char *)p - sizeof(void *), sizeof(void *));
    MLKERN_FREE(raw);
}

/* Scratch arena: carves aligned pieces out of a caller's workspace or out of
   one allocation made per call. Size it with mlk__arena_need first. */
typedef struct mlk__arena { unsigned char *base; size_t used, cap; void *owned; } mlk__arena;

MLK__MAYBE_UNUSED static size_t mlk__arena_need(size_t total, size_t bytes)
{
    size_t r = (bytes + MLK__ALIGN - 1) / MLK__ALIGN * MLK__ALIGN;
    if (r < bytes || total > SIZE_MAX - r) return SIZE_MAX;
    return total + r;
}

/* cap from mlk__arena_need; workspace may be NULL (then one allocation). */
MLK__MAYBE_UNUSED static mlk_status mlk__arena_init(mlk__arena *a, void *workspace, size_t cap)
{
    a->used = 0;
    a->cap = cap;
    a->owned = NULL;
    if (cap == SIZE_MAX) return MLK_ERR_OVERFLOW;
    if (workspace && ((uintptr_t)workspace % MLK__ALIGN) == 0) {
        a->base = (unsigned char *)workspace;
        return MLK_OK;
    }
    if (workspace) { /* unaligned caller buffer: its size includes MLK__ALIGN slack */
        uintptr_t pad = (MLK__ALIGN - ((uintptr_t)workspace % MLK__ALIGN)) % MLK__ALIGN;
        a->base = (unsigned char *)workspace + pad;
        return MLK_OK;
    }
    a->owned = mlk__alloc(cap ? cap : 1);
    a->base = (unsigned char *)a->owned;
    return a->base ? MLK_OK : MLK_ERR_NOMEM;
}

/* The next aligned piece. Overrunning the arena would write past a caller's
   workspace, so the check stays in release builds (a bug, never input). */
MLK__MAYBE_UNUSED static void *mlk__arena_take(mlk__arena *a, size_t bytes)
{
    size_t r = (bytes + MLK__ALIGN - 1) / MLK__ALIGN * MLK__ALIGN;
    void *p = a->base + a->used;
    if (r < bytes || r > a->cap - a->used) {
        MLKERN_ASSERT(!"mlkern: arena overrun");
        abort();
    }
    a->used += r;
    return p;
}

MLK__MAYBE_UNUSED static void mlk__arena_done(mlk__arena *a)
{
    mlk__free(a->owned);
    a->owned = NULL;
}

/* One piece of a call's scratch: its size in, its address out. A call lists
   its pieces once; mlk__arena_carve sizes the arena from that list and hands
   the pieces out in order, so the sizes and the carving cannot drift apart. */
typedef struct mlk__piece { size_t bytes; void *ptr; } mlk__piece;

/* Arena bytes of n pieces; SIZE_MAX on overflow. */
MLK__MAYBE_UNUSED static size_t mlk__pieces_bytes(const mlk__piece *p, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++) total = mlk__arena_need(total, p[i].bytes);
    return total;
}

/* Sets up the arena for the pieces (in workspace, or one allocation when it
   is NULL) and fills in their addresses. */
MLK__MAYBE_UNUSED static mlk_status mlk__arena_carve(mlk__arena *a, void *workspace, mlk__piece *p, int n)
{
    mlk_status st = mlk__arena_init(a, workspace, mlk__pieces_bytes(p, n));
    if (st != MLK_OK) return st;
    for (int i = 0; i < n; i++) p[i].ptr = mlk__arena_take(a, p[i].bytes);
    return MLK_OK;
}

/* A pieces table entry, for the table initialisers. */
MLK__MAYBE_UNUSED static mlk__piece mlk__piece_of(size_t bytes)
{
    mlk__piece p;
    p.bytes = bytes;
    p.ptr = NULL;
    return p;
}

/* ---- threading ---- */

MLK__MAYBE_UNUSED static int mlk__max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

MLK__MAYBE_UNUSED static int mlk__thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* When a call is worth waking the OpenMP team. Starting a team costs
   microseconds; below these sizes one thread is done first (measured with
   make bench on the development machines; each is a size of the work, so
   results never depend on it). */
#define MLK__PAR_NORM_FLOATS 16384        /* norms: x elements; rows are memory-bound */
#define MLK__PAR_SOFTMAX_FLOATS 32768     /* softmax, top-k, sampling: logits read */
#define MLK__PAR_GEMV_FLOATS 32768        /* sgemm, m <= 8: elements of B, read once */
#define MLK__PAR_GEMM_FLOPS 4e6           /* sgemm, packed path: 2 m n k */
#define MLK__PAR_ATTN_MACS 1048576.0      /* attention: multiply-adds of Q K^T (a short decode step is less) */
#define MLK__PAR_ELEMS ((size_t)1 << 16)  /* element-wise passes: RoPE, ternary quantisers, AdamW */
#define MLK__PAR_TERN_MACS 1048576.0      /* ternary GEMM: m n k */

/* ---- exp: e^x = 2^n * e^r, x = n ln2 + r, |r| <= ln2/2; a degree-5
   polynomial for e^r, minimax in relative error with p(0) = 1 exactly
   (9.2e-8 on the interval; 1.7e-7 in float, tested). -inf and x < -87.3
   give 0. The scalar version gives inf for x > 88.38 (2^128, a little
   early) and keeps NaN; the vector versions give 0 for NaN and take
   x <= 88 only (their callers pass x <= 0: a logit or score minus a
   maximum), which saves a clamp per vector (3-4% of top-k). ---- */

#define MLK__EXP_C1 9.999997063e-01f
#define MLK__EXP_C2 4.999914784e-01f
#define MLK__EXP_C3 1.666763813e-01f
#define MLK__EXP_C4 4.189815983e-02f
#define MLK__EXP_C5 8.290272143e-03f

/* a * b + c, rounded once where the build has FMA: the scalar exp then takes
   the vector versions' steps, so a value's bits do not depend on whether it
   falls in a vector or in a tail */
static float mlk__fmaf(float a, float b, float c)
{
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    return fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

MLK__MAYBE_UNUSED static float mlk__expf(float x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23: t - shifter = round(x / ln2) */
    float t, n, r, p, bits_f;
    int32_t e;
    if (!(x > -87.33654f)) return (x != x) ? x : 0.0f;
    if (x > 88.72283f) return INFINITY;
    t = mlk__fmaf(x, 1.44269504f, shifter);
    n = t - shifter;
    r = mlk__fmaf(-n, 0.693145752f, x);
    r = mlk__fmaf(-n, 1.42860677e-6f, r);
    p = MLK__EXP_C5;
    p = mlk__fmaf(p, r, MLK__EXP_C4);
    p = mlk__fmaf(p, r, MLK__EXP_C3);
    p = mlk__fmaf(p, r, MLK__EXP_C2);
    p = mlk__fmaf(p, r, MLK__EXP_C1);
    p = mlk__fmaf(p, r, 1.0f);
    e = ((int32_t)n + 127) << 23;
    memcpy(&bits_f, &e, sizeof e);
    return p * bits_f;
}

/* The side of the blocks that transposes move through registers. */
enum {
#if defined(MLK__AVX512)
    MLK__TRANSPOSE_BLOCK = 16
#else
    MLK__TRANSPOSE_BLOCK = 8
#endif
};

#if defined(MLK__AVX2)
/* 8 lanes of mlk__expf. n = round(x / ln2) comes from adding 1.5 * 2^23
   (plus the exponent bias): the sum's low mantissa bits are then n + 127,
   already placed to be shifted into an exponent field, and t - shifter is
   n as a float (two operations, where a round and a conversion took four). */
MLK__MAYBE_UNUSED static __m256 mlk__exp8(__m256 x)
{
    const __m256 shifter = _mm256_set1_ps(12583039.0f); /* 1.5 * 2^23 + 127 */
    const __m256 valid = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_GT_OQ);
    __m256 t, n, r, p;
    t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504f), shifter);
    n = _mm256_sub_ps(t, shifter);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    p = _mm256_set1_ps(MLK__EXP_C5);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MLK__EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MLK__EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MLK__EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MLK__EXP_C1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
    return _mm256_and_ps(p, valid); /* x <= -87.3, -inf or NaN -> 0 */
}

#if defined(MLK__AVX512)
/* 16 lanes of mlk__expf: n as mlk__exp8 finds it, and scalef multiplies by
   2^n without building an exponent field, so the mask of valid lanes folds
   into it. */
MLK__MAYBE_UNUSED static __m512 mlk__exp16(__m512 x)
{
    const __m512 shifter = _mm512_set1_ps(12582912.0f); /* 1.5 * 2^23 */
    const __mmask16 valid = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_GT_OQ);
    __m512 t, n, r, p;
    t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), shifter);
    n = _mm512_sub_ps(t, shifter);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    p = _mm512_set1_ps(MLK__EXP_C5);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MLK__EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MLK__EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MLK__EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MLK__EXP_C1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(valid, p, n); /* x <= -87.3, -inf or NaN -> 0 */
}
#endif

/* Clears the upper register halves before a scalar tail: gcc omits the
   vzeroupper before calls to local functions (mlk__row_get), and the dirty
   state then slows every legacy-SSE instruction after the return (libm's
   exp: 6x on the development machine). */
static inline void mlk__avx_done(void) { _mm256_zeroupper(); }

/* Lanes 0..count-1 set: masked loads and stores of a row's last values,
   which touch nothing past the row. */
static __m256i mlk__mask8(int count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* The sum and the max of the 8 lanes (pairwise). */
static float mlk__hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

MLK__MAYBE_UNUSED static float mlk__hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* r[j] <- column j of the 8 x 8 block whose row i is r[i]. */
MLK__MAYBE_UNUSED static void mlk__transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 8; g += 4) { /* u[g + c], half h: rows g..g+3 of column 4h + c */
        u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

#if defined(MLK__AVX512)
/* r[j] <- column j of the 16 x 16 block whose row i is r[i]: pairs of rows
   interleave, then pairs of pairs, then 128-bit lanes twice. */
MLK__MAYBE_UNUSED static void mlk__transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) { /* u[g + c], lane l: rows g..g+3 of column 4l + c */
        u[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        const __m512 top_even = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);  /* columns c, 8 + c */
        const __m512 top_odd = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);   /* 4 + c, 12 + c */
        const __m512 low_even = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        const __m512 low_odd = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(top_even, low_even, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(top_even, low_even, 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(top_odd, low_odd, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(top_odd, low_odd, 0xDD);
    }
}
#endif

/* dst row i = column i of the square block at src, MLK__TRANSPOSE_BLOCK
   floats a side (row strides ld_src, ld_dst). */

MLK__MAYBE_UNUSED static void mlk__transpose_block(const float *src, size_t ld_src, float *dst, size_t ld_dst)
{
#if defined(MLK__AVX512)
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)i * ld_src);
    mlk__transpose16(r);
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + (size_t)i * ld_dst, r[i]);
#else
    __m256 r[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)i * ld_src);
    mlk__transpose8(r);
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (size_t)i * ld_dst, r[i]);
#endif
}
#elif defined(MLK__NEON)
/* 4 lanes of mlk__expf, the operations and range rules of mlk__exp8. */
MLK__MAYBE_UNUSED static float32x4_t mlk__exp4(float32x4_t x)
{
    const float32x4_t shifter = vdupq_n_f32(12583039.0f); /* 1.5 * 2^23 + 127 */
    const uint32x4_t valid = vcgtq_f32(x, vdupq_n_f32(-87.33654f)); /* false for NaN */
    float32x4_t t, n, r, p;
    t = vfmaq_f32(shifter, x, vdupq_n_f32(1.44269504f));
    n = vsubq_f32(t, shifter);
    r = vfmsq_f32(x, n, vdupq_n_f32(0.693145752f));
    r = vfmsq_f32(r, n, vdupq_n_f32(1.42860677e-6f));
    p = vdupq_n_f32(MLK__EXP_C5);
    p = vfmaq_f32(vdupq_n_f32(MLK__EXP_C4), p, r);
    p = vfmaq_f32(vdupq_n_f32(MLK__EXP_C3), p, r);
    p = vfmaq_f32(vdupq_n_f32(MLK__EXP_C2), p, r);
    p = vfmaq_f32(vdupq_n_f32(MLK__EXP_C1), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vmulq_f32(p, vreinterpretq_f32_s32(vshlq_n_s32(vreinterpretq_s32_f32(t), 23)));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(p), valid));
}
#endif

/* ---- symmetric quantisation (KV cache Q8/Q4 rows, int8 activations) ---- */

/* max |x[i]| over n values */
MLK__MAYBE_UNUSED static float mlk__absmax(const float *x, int n)
{
    float amax = 0;
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 vmax = _mm256_setzero_ps();
    for (; i <= n - 8; i += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
    amax = mlk__hmax8(vmax);
#endif
    for (; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    return amax;
}

/* Blocks whose max|x| is below this quantise in double: qmax / amax would
   overflow float near 1e-38, and the scale loses digits among denormals. */
#define MLK__QUANT_TINY 7.888609052210118e-31f /* 2^-100 */

/* Symmetric quantisation of n finite values with max |x| = amax to codes
   in [-qmax, qmax], rounding half away from zero; returns the scale (0 for
   an all-zero block). |x - q * scale| <= scale / 2 up to one float rounding
   of the product. The scale is amax / qmax, rounded up for tiny blocks so
   that no code needs clamping and the bound holds down to denormals. */
MLK__MAYBE_UNUSED static float mlk__quant_sym(int n, int qmax, float amax, const float *x, int8_t *q)
{
    if (amax == 0.0f) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    if (amax >= MLK__QUANT_TINY) {
        /* t truncates v and v - t is exact, so the halves are decided
           exactly (and the loop vectorises, unlike roundf) */
        const float inv = (float)qmax / amax;
        for (int i = 0; i < n; i++) {
            float v = x[i] * inv, frac;
            int t = (int)v;
            frac = v - (float)t;
            t += (frac >= 0.5f) - (frac <= -0.5f);
            q[i] = (int8_t)(t > qmax ? qmax : (t < -qmax ? -qmax : t));
        }
        return amax / (float)qmax;
    } else {
        double exact = (double)amax / qmax, scale_d;
        float scale = (float)exact;
        if ((double)scale < exact) scale = nextafterf(scale, INFINITY);
        scale_d = scale;
        for (int i = 0; i < n; i++) {
            double v = (double)x[i] / scale_d; /* |v| <= qmax */
            q[i] = (int8_t)(v >= 0 ? floor(v + 0.5) : -floor(0.5 - v));
        }
        return scale;
    }
}


/* ======================================================================
   shared kernels: the micro-kernel, tree checks and the KV row formats,
   used by several families below
   ====================================================================== */

/* ---- the register-tiled micro-kernel of sgemm and the attention tiles ----
   C[mr x NR] = alpha * sum_p A[:, p] B[p, :] + beta * C, p < k (beta == 0:
   C is not read, its NaNs do not propagate). Row r of A is read at
   a + r * a_rs, step p at + p * a_ks: a packed sliver of sgemm has a_rs = 1,
   a_ks = MR; an attention tile in rows has a_rs = lda, a_ks = 1. Row p of B
   is the NR floats at b + p * ldb. Rows past mr (<= MR) are neither read nor
   written. Every C element is one FMA chain over p in order, so the result
   depends on k only, never on how callers block m and n. b_ahead > 0: the
   AVX-512 loop prefetches B that many rows ahead, for sgemm, whose 64 KiB B
   sliver falls out of L1 between calls (2048^3 +3-4%); attention's tiles
   stay in L1 and lose 4% to it (0). */

enum {
#if defined(MLK__AVX512)
    MLK__MR = 12, /* micro-tile rows: 12 x 2 vector accumulators */
    MLK__NR = 32, /* micro-tile columns: two zmm */
    MLK__MICRO_PREFETCH = 8 /* B rows ahead that the k loop prefetches */
#else
    MLK__MR = 6, /* micro-tile rows: 6 x 2 vector accumulators */
    MLK__NR = 16, /* micro-tile columns: two ymm, or four NEON quads */
    MLK__MICRO_PREFETCH = 0 /* its 16 KiB B sliver stays in L1 */
#endif
};

#if defined(MLK__AVX512)
/* One row of the AVX-512 tile: acc += a_r * B[p, 0..31]. */
static MLK__INLINE_ALWAYS void mlk__micro_row(const float *a_r, __m512 b0, __m512 b1, __m512 *lo, __m512 *hi)
{
    const __m512 ar = _mm512_set1_ps(*a_r);
    *lo = _mm512_fmadd_ps(ar, b0, *lo);
    *hi = _mm512_fmadd_ps(ar, b1, *hi);
}

/* C row = alpha * acc (+ beta * C row). */
static MLK__INLINE_ALWAYS void mlk__micro_store(float *c_r, __m512 lo, __m512 hi, __m512 va, __m512 vb, int read_c)
{
    lo = _mm512_mul_ps(va, lo);
    hi = _mm512_mul_ps(va, hi);
    if (read_c) {
        lo = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c_r), lo);
        hi = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c_r + 16), hi);
    }
    _mm512_storeu_ps(c_r, lo);
    _mm512_storeu_ps(c_r + 16, hi);
}

/* 12 rows x two zmm: 24 of the 32 registers accumulate, so each B row
   loaded feeds 24 FMAs (a 6-row tile: 12, and B's loads from L2 bound it:
   2048^3 1.15x on one thread). Named accumulators, not an array: compilers
   keep them in registers without unrolling hints. */
static MLK__INLINE_ALWAYS void mlk__micro(int mr, int k, const float *a, size_t a_rs, size_t a_ks, const float *b,
                                          size_t ldb, int b_ahead, float *c, size_t ldc, float alpha, float beta)
{
    __m512 l0 = _mm512_setzero_ps(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0;
    __m512 l4 = l0, h4 = l0, l5 = l0, h5 = l0, l6 = l0, h6 = l0, l7 = l0, h7 = l0;
    __m512 l8 = l0, h8 = l0, l9 = l0, h9 = l0, l10 = l0, h10 = l0, l11 = l0, h11 = l0;
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const int read_c = beta != 0.0f;
    for (int r = 0; r < mr; r++) { /* the C tile arrives while k runs */
        _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + (size_t)r * ldc + MLK__NR - 1), _MM_HINT_T0);
    }
    for (int p = 0; p < k; p++, a += a_ks, b += ldb) {
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        if (b_ahead > 0) { /* an address, never dereferenced */
            const uintptr_t ahead = (uintptr_t)(b + 16) + (size_t)b_ahead * ldb * sizeof(float);
            _mm_prefetch((const char *)(ahead - 64), _MM_HINT_T0);
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
        }
        mlk__micro_row(a, b0, b1, &l0, &h0);
        if (mr > 1) mlk__micro_row(a + a_rs, b0, b1, &l1, &h1);
        if (mr > 2) mlk__micro_row(a + 2 * a_rs, b0, b1, &l2, &h2);
        if (mr > 3) mlk__micro_row(a + 3 * a_rs, b0, b1, &l3, &h3);
        if (mr > 4) mlk__micro_row(a + 4 * a_rs, b0, b1, &l4, &h4);
        if (mr > 5) mlk__micro_row(a + 5 * a_rs, b0, b1, &l5, &h5);
        if (mr > 6) mlk__micro_row(a + 6 * a_rs, b0, b1, &l6, &h6);
        if (mr > 7) mlk__micro_row(a + 7 * a_rs, b0, b1, &l7, &h7);
        if (mr > 8) mlk__micro_row(a + 8 * a_rs, b0, b1, &l8, &h8);
        if (mr > 9) mlk__micro_row(a + 9 * a_rs, b0, b1, &l9, &h9);
        if (mr > 10) mlk__micro_row(a + 10 * a_rs, b0, b1, &l10, &h10);
        if (mr > 11) mlk__micro_row(a + 11 * a_rs, b0, b1, &l11, &h11);
    }
    mlk__micro_store(c, l0, h0, va, vb, read_c);
    if (mr > 1) mlk__micro_store(c + ldc, l1, h1, va, vb, read_c);
    if (mr > 2) mlk__micro_store(c + 2 * ldc, l2, h2, va, vb, read_c);
    if (mr > 3) mlk__micro_store(c + 3 * ldc, l3, h3, va, vb, read_c);
    if (mr > 4) mlk__micro_store(c + 4 * ldc, l4, h4, va, vb, read_c);
    if (mr > 5) mlk__micro_store(c + 5 * ldc, l5, h5, va, vb, read_c);
    if (mr > 6) mlk__micro_store(c + 6 * ldc, l6, h6, va, vb, read_c);
    if (mr > 7) mlk__micro_store(c + 7 * ldc, l7, h7, va, vb, read_c);
    if (mr > 8) mlk__micro_store(c + 8 * ldc, l8, h8, va, vb, read_c);
    if (mr > 9) mlk__micro_store(c + 9 * ldc, l9, h9, va, vb, read_c);
    if (mr > 10) mlk__micro_store(c + 10 * ldc, l10, h10, va, vb, read_c);
    if (mr > 11) mlk__micro_store(c + 11 * ldc, l11, h11, va, vb, read_c);
}
#elif defined(MLK__AVX2)
/* Named accumulators, not an array, keep the block in registers; inlined
   with mr = MR (sgemm) the row guards fold away. Always inlined, and C's
   pointers and alpha, beta made after the k loop: otherwise, in some
   callers, gcc kept those live across the loop, past the 16 registers its
   15 values need, and spilled an accumulator (sgemm at 0.65-0.75x). */
static MLK__INLINE_ALWAYS void mlk__micro(int mr, int k, const float *a, size_t a_rs, size_t a_ks, const float *b,
                                          size_t ldb, int b_ahead, float *c, size_t ldc, float alpha, float beta)
{
    (void)b_ahead;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const size_t o1 = a_rs, o2 = 2 * a_rs, o3 = 3 * a_rs, o4 = 4 * a_rs, o5 = 5 * a_rs; /* A row offsets */
    float *r0, *r1, *r2, *r3, *r4, *r5;
    __m256 va, vb;
    for (int r = 0; r < mr; r++) { /* the C tile arrives while k runs */
        _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + (size_t)r * ldc + MLK__NR - 1), _MM_HINT_T0);
    }
    for (int p = 0; p < k; p++, a += a_ks, b += ldb) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), ar;
        ar = _mm256_broadcast_ss(a), c00 = _mm256_fmadd_ps(ar, b0, c00), c01 = _mm256_fmadd_ps(ar, b1, c01);
        if (mr > 1) ar = _mm256_broadcast_ss(a + o1), c10 = _mm256_fmadd_ps(ar, b0, c10), c11 = _mm256_fmadd_ps(ar, b1, c11);
        if (mr > 2) ar = _mm256_broadcast_ss(a + o2), c20 = _mm256_fmadd_ps(ar, b0, c20), c21 = _mm256_fmadd_ps(ar, b1, c21);
        if (mr > 3) ar = _mm256_broadcast_ss(a + o3), c30 = _mm256_fmadd_ps(ar, b0, c30), c31 = _mm256_fmadd_ps(ar, b1, c31);
        if (mr > 4) ar = _mm256_broadcast_ss(a + o4), c40 = _mm256_fmadd_ps(ar, b0, c40), c41 = _mm256_fmadd_ps(ar, b1, c41);
        if (mr > 5) ar = _mm256_broadcast_ss(a + o5), c50 = _mm256_fmadd_ps(ar, b0, c50), c51 = _mm256_fmadd_ps(ar, b1, c51);
    }
    r0 = c, r1 = c + ldc, r2 = r1 + ldc, r3 = r2 + ldc, r4 = r3 + ldc, r5 = r4 + ldc;
    va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (beta != 0.0f) {
        c00 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r0), _mm256_mul_ps(va, c00));
        c01 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r0 + 8), _mm256_mul_ps(va, c01));
        if (mr > 1) c10 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r1), _mm256_mul_ps(va, c10)),
                    c11 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r1 + 8), _mm256_mul_ps(va, c11));
        if (mr > 2) c20 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r2), _mm256_mul_ps(va, c20)),
                    c21 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r2 + 8), _mm256_mul_ps(va, c21));
        if (mr > 3) c30 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r3), _mm256_mul_ps(va, c30)),
                    c31 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r3 + 8), _mm256_mul_ps(va, c31));
        if (mr > 4) c40 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r4), _mm256_mul_ps(va, c40)),
                    c41 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r4 + 8), _mm256_mul_ps(va, c41));
        if (mr > 5) c50 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r5), _mm256_mul_ps(va, c50)),
                    c51 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r5 + 8), _mm256_mul_ps(va, c51));
    } else {
        c00 = _mm256_mul_ps(va, c00), c01 = _mm256_mul_ps(va, c01), c10 = _mm256_mul_ps(va, c10);
        c11 = _mm256_mul_ps(va, c11), c20 = _mm256_mul_ps(va, c20), c21 = _mm256_mul_ps(va, c21);
        c30 = _mm256_mul_ps(va, c30), c31 = _mm256_mul_ps(va, c31), c40 = _mm256_mul_ps(va, c40);
        c41 = _mm256_mul_ps(va, c41), c50 = _mm256_mul_ps(va, c50), c51 = _mm256_mul_ps(va, c51);
    }
    _mm256_storeu_ps(r0, c00), _mm256_storeu_ps(r0 + 8, c01);
    if (mr > 1) _mm256_storeu_ps(r1, c10), _mm256_storeu_ps(r1 + 8, c11);
    if (mr > 2) _mm256_storeu_ps(r2, c20), _mm256_storeu_ps(r2 + 8, c21);
    if (mr > 3) _mm256_storeu_ps(r3, c30), _mm256_storeu_ps(r3 + 8, c31);
    if (mr > 4) _mm256_storeu_ps(r4, c40), _mm256_storeu_ps(r4 + 8, c41);
    if (mr > 5) _mm256_storeu_ps(r5, c50), _mm256_storeu_ps(r5 + 8, c51);
}
#elif defined(MLK__NEON)
/* 6 x 4 quad accumulators of the 32 NEON registers; rows past mr are
   neither read nor written. */
static inline void mlk__micro(int mr, int k, const float *a, size_t a_rs, size_t a_ks, const float *b, size_t ldb,
                              int b_ahead, float *c, size_t ldc, float alpha, float beta)
{
    (void)b_ahead;
    float32x4_t acc[MLK__MR][4];
    for (int r = 0; r < MLK__MR; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_f32(0.0f);
    for (int p = 0; p < k; p++, a += a_ks, b += ldb) {
        const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8), b3 = vld1q_f32(b + 12);
        for (int r = 0; r < MLK__MR; r++) {
            float32x4_t ar;
            if (r >= mr) break;
            ar = vdupq_n_f32(a[(size_t)r * a_rs]);
            acc[r][0] = vfmaq_f32(acc[r][0], ar, b0);
            acc[r][1] = vfmaq_f32(acc[r][1], ar, b1);
            acc[r][2] = vfmaq_f32(acc[r][2], ar, b2);
            acc[r][3] = vfmaq_f32(acc[r][3], ar, b3);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < 4; q++) {
            float *cq = c + (size_t)r * ldc + 4 * q;
            float32x4_t y = vmulq_n_f32(acc[r][q], alpha);
            if (beta != 0.0f) y = vfmaq_n_f32(y, vld1q_f32(cq), beta);
            vst1q_f32(cq, y);
        }
}
#else
static void mlk__micro(int mr, int k, const float *a, size_t a_rs, size_t a_ks, const float *b, size_t ldb, int b_ahead,
                       float *c, size_t ldc, float alpha, float beta)
{
    (void)b_ahead;
    float acc[MLK__MR][MLK__NR];
    memset(acc, 0, sizeof acc);
    for (int p = 0; p < k; p++)
        for (int r = 0; r < mr; r++) {
            const float a_rp = a[(size_t)r * a_rs + (size_t)p * a_ks];
            for (int j = 0; j < MLK__NR; j++) acc[r][j] += a_rp * b[(size_t)p * ldb + j];
        }
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int j = 0; j < MLK__NR; j++) cr[j] = beta != 0.0f ? alpha * acc[r][j] + beta * cr[j] : alpha * acc[r][j];
    }
}
#endif

/* ---- trees: draft trees in topological order ----
   parent[i] is -1 for a root, else an index < i. Attention's tree mask, the
   KV cache's tree attention and the speculative-decoding section all take
   trees in this form, checked and measured here once. */

/* MLK_ERR_TREE unless every parent[i] lies in [-1, i). */
static mlk_status mlk__tree_check(int n, const int *parent)
{
    for (int i = 0; i < n; i++)
        if (parent[i] < -1 || parent[i] >= i) return MLK_ERR_TREE;
    return MLK_OK;
}

/* depth[i]: 0 for a root, else its parent's depth + 1 (a checked tree). */
static void mlk__tree_depths(int n, const int *parent, int *depth)
{
    for (int i = 0; i < n; i++) depth[i] = parent[i] < 0 ? 0 : depth[parent[i]] + 1;
}

/* ---- KV row formats: one row = head_dim values of one head ----
   The KV cache stores rows in these formats and attention reads them in
   place ("typed rows"), so encoding and decoding live here, once.
   F32/F16: the values. Q8/Q4: ceil(D / 32) float scales, then int8 values
   or 4-bit values biased by 8 (element e in byte e / 2, low nibble first). */

#define MLK__ROW_QBLOCK 32 /* quantisation block along head_dim */

static int mlk__row_qblocks(int dim) { return dim / MLK__ROW_QBLOCK + (dim % MLK__ROW_QBLOCK != 0); }

/* Bytes of one row of dim values stored as type. */
static size_t mlk__row_bytes(mlk_kv_type type, int dim)
{
    size_t nb = (size_t)mlk__row_qblocks(dim), n = (size_t)dim;
    switch (type) {
    case MLK_KV_F32: return 4 * n;
    case MLK_KV_F16: return 2 * n;
    case MLK_KV_Q8: return 4 * nb + (n + 3) / 4 * 4;
    case MLK_KV_Q4: return 4 * nb + ((n + 1) / 2 + 3) / 4 * 4;
    }
    return 0;
}

static float mlk__row_f16_to_f32(uint16_t h)
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
static float mlk__row_get(mlk_kv_type type, int dim, const unsigned char *row, int e)
{
    const unsigned char *data = row + 4 * (size_t)mlk__row_qblocks(dim);
    float scale, x;
    uint16_t h;
    if (type == MLK_KV_F32) {
        memcpy(&x, row + 4 * (size_t)e, 4);
        return x;
    }
    if (type == MLK_KV_F16) {
        memcpy(&h, row + 2 * (size_t)e, 2);
        return mlk__row_f16_to_f32(h);
    }
    memcpy(&scale, row + 4 * (size_t)(e / MLK__ROW_QBLOCK), 4);
    if (type == MLK_KV_Q8) return scale * (float)(signed char)data[e];
    return scale * (float)(((data[e >> 1] >> ((e & 1) * 4)) & 15) - 8);
}

#if defined(MLK__AVX2)
/* 8 bytes of a Q4 row -> its 16 elements e .. e+15 as int8, in element
   order, minus the bias. */
static inline __m128i mlk__row_q4_bytes16(const unsigned char *data, int e)
{
    const __m128i packed = _mm_loadl_epi64((const __m128i *)(const void *)(data + e / 2));
    const __m128i lo = _mm_and_si128(packed, _mm_set1_epi8(15));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(15));
    return _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), _mm_set1_epi8(8));
}

/* Elements e .. e+15 of a row (e a multiple of 16, e + 16 <= dim) in two
   registers; data points past the nb scales of a quantised row (16
   elements never straddle two 32-blocks). Inlined with a constant type, the
   switch folds away. */
static inline void mlk__row_load16(mlk_kv_type type, const unsigned char *row, const unsigned char *data, int e,
                                        __m256 *lo8, __m256 *hi8)
{
    __m256 scale;
    __m128i bytes;
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
            x[i] = mlk__row_f16_to_f32(h);
        }
        *lo8 = _mm256_loadu_ps(x);
        *hi8 = _mm256_loadu_ps(x + 8);
    }
#endif
        return;
    case MLK_KV_Q8: /* two 8-byte loads fold into the sign extensions */
        scale = _mm256_broadcast_ss((const float *)(const void *)row + e / MLK__ROW_QBLOCK);
        *lo8 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(data + e))));
        *hi8 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(data + e + 8))));
        *lo8 = _mm256_mul_ps(*lo8, scale);
        *hi8 = _mm256_mul_ps(*hi8, scale);
        return;
    case MLK_KV_Q4:
        scale = _mm256_broadcast_ss((const float *)(const void *)row + e / MLK__ROW_QBLOCK);
        bytes = mlk__row_q4_bytes16(data, e);
        break;
    default:
        *lo8 = _mm256_loadu_ps((const float *)(const void *)row + e);
        *hi8 = _mm256_loadu_ps((const float *)(const void *)row + e + 8);
        return;
    }
    *lo8 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), scale);
    *hi8 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8))), scale);
}

#if defined(MLK__AVX512)
/* The two halves of a zmm added: 8 partial sums. */
static inline __m256 mlk__fold16(__m512 v)
{
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
}

/* The same 16 elements in one zmm: half the conversions and FMAs of the
   decode's row loops. */
static inline __m512 mlk__row_load16_wide(mlk_kv_type type, const unsigned char *row, const unsigned char *data, int e)
{
    __m128i bytes;
    switch (type) {
    case MLK_KV_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * (size_t)e)));
    case MLK_KV_Q8:
        bytes = _mm_loadu_si128((const __m128i *)(const void *)(data + e));
        break;
    case MLK_KV_Q4:
        bytes = mlk__row_q4_bytes16(data, e);
        break;
    default:
        return _mm512_loadu_ps((const float *)(const void *)row + e);
    }
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)),
                         _mm512_set1_ps(((const float *)(const void *)row)[e / MLK__ROW_QBLOCK]));
}

/* Elements e .. e+31 (e a multiple of 32, e + 32 <= dim: one quantisation
   block) in two zmm, the same values as two mlk__row_load16_wide. A Q4
   block is a table lookup: the 16 values scale * (n - 8) are one zmm, and
   vpermps picks a lane by the low 4 bits of each index, so a byte and the
   same byte shifted right by 4 index the low and high nibble without masks
   or int -> float conversions (the products are the same roundings as
   (float)(n - 8) * scale). 8 instructions instead of 13: the Q4 decode
   1.08-1.12x on Zen 4, from cache and from DRAM. */
static inline void mlk__row_load32_wide(mlk_kv_type type, const unsigned char *row, const unsigned char *data, int e,
                                        __m512 *x, __m512 *y)
{
    if (type == MLK_KV_Q4) {
        const __m128i packed = _mm_loadu_si128((const __m128i *)(const void *)(data + e / 2));
        const __m128i shifted = _mm_srli_epi16(packed, 4); /* low 4 bits: the high nibble */
        const __m512 table = _mm512_mul_ps(_mm512_set1_ps(((const float *)(const void *)row)[e / MLK__ROW_QBLOCK]),
                                           _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7));
        *x = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(packed, shifted)), table);
        *y = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(packed, shifted)), table);
        return;
    }
    *x = mlk__row_load16_wide(type, row, data, e);
    *y = mlk__row_load16_wide(type, row, data, e + 16);
}
#endif
#elif defined(MLK__NEON)
/* The same 16 elements in four quads (x[0] holds e .. e+3). */
static inline void mlk__row_load16(mlk_kv_type type, const unsigned char *row, const unsigned char *data, int e,
                                   float32x4_t *x)
{
    int8x16_t q;
    float scale;
    switch (type) {
    case MLK_KV_F16:
        for (int i = 0; i < 4; i++)
            x[i] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(const void *)row + e + 4 * i)));
        return;
    case MLK_KV_Q8:
        q = vld1q_s8((const int8_t *)(const void *)(data + e));
        break;
    case MLK_KV_Q4: { /* 8 bytes -> 16 nibbles in element order, minus the bias */
        uint8x8_t bytes = vld1_u8(data + e / 2);
        uint8x8x2_t pairs = vzip_u8(vand_u8(bytes, vdup_n_u8(15)), vshr_n_u8(bytes, 4));
        q = vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(pairs.val[0], pairs.val[1])), vdupq_n_s8(8));
        break;
    }
    default:
        for (int i = 0; i < 4; i++) x[i] = vld1q_f32((const float *)(const void *)row + e + 4 * i);
        return;
    }
    memcpy(&scale, row + 4 * (size_t)(e / MLK__ROW_QBLOCK), 4);
    {
        int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
        x[0] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), scale);
        x[1] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), scale);
        x[2] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), scale);
        x[3] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), scale);
    }
}
#endif

/* x[e] = element e of a typed row, e < dim. */
static void mlk__row_decode(mlk_kv_type type, int dim, const unsigned char *row, float *x)
{
    int e = 0;
#if defined(MLK__AVX2)
    const unsigned char *data = row + 4 * (size_t)mlk__row_qblocks(dim);
    for (; e <= dim - 16; e += 16) {
        __m256 lo8, hi8;
        mlk__row_load16(type, row, data, e, &lo8, &hi8);
        _mm256_storeu_ps(x + e, lo8);
        _mm256_storeu_ps(x + e + 8, hi8);
    }
    if (e < dim) mlk__avx_done();
#elif defined(MLK__NEON)
    const unsigned char *data = row + 4 * (size_t)mlk__row_qblocks(dim);
    for (; e <= dim - 16; e += 16) {
        float32x4_t quads[4];
        mlk__row_load16(type, row, data, e, quads);
        for (int i = 0; i < 4; i++) vst1q_f32(x + e + 4 * i, quads[i]);
    }
#endif
    for (; e < dim; e++) x[e] = mlk__row_get(type, dim, row, e);
}

/* f32 -> f16, round to nearest even, clamped to +-65504 (NaN stays NaN). */
static uint16_t mlk__row_f16_from_f32(float f)
{
    uint32_t x, sign, mant, q, rem, half;
    int shift;
    if (f > 65504.0f) f = 65504.0f;
    if (f < -65504.0f) f = -65504.0f;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (x >= 0x38800000u) { /* normal half: rebias the exponent, round 13 bits */
        x -= 0x38000000u;
        return (uint16_t)(sign | ((x + 0xfffu + ((x >> 13) & 1u)) >> 13));
    }
    if (x < 0x33000000u) return (uint16_t)sign; /* below half the smallest subnormal */
    mant = (x & 0x7fffffu) | 0x800000u;          /* value = mant * 2^(e-150) */
    shift = 126 - (int)(x >> 23);                /* in units of 2^-24 */
    q = mant >> shift;
    rem = mant & ((1u << shift) - 1u);
    half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

static void mlk__row_f16_encode(int d, const float *x, uint16_t *h)
{
    int j = 0;
#if defined(MLK__AVX2) && defined(__F16C__)
    const __m256 lo = _mm256_set1_ps(-65504.0f), hi = _mm256_set1_ps(65504.0f);
    for (; j <= d - 8; j += 8) { /* min/max return their 2nd operand on NaN: NaN survives */
        __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(x + j)));
        _mm_storeu_si128((__m128i *)(h + j), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
#endif
    for (; j < d; j++) h[j] = mlk__row_f16_from_f32(x[j]);
}

static void mlk__row_encode(mlk_kv_type type, int d, const float *x, unsigned char *row)
{
    float *scales = (float *)(void *)row;
    unsigned char *data = row + 4 * mlk__row_qblocks(d);
    int8_t qb[MLK__ROW_QBLOCK];
    if (type == MLK_KV_F32) {
        memcpy(row, x, (size_t)d * 4);
        return;
    }
    if (type == MLK_KV_F16) {
        mlk__row_f16_encode(d, x, (uint16_t *)(void *)row);
        return;
    }
    for (int b0 = 0; b0 < d; b0 += MLK__ROW_QBLOCK) {
        int n = d - b0 < MLK__ROW_QBLOCK ? d - b0 : MLK__ROW_QBLOCK;
        scales[b0 / MLK__ROW_QBLOCK] = mlk__quant_sym(n, type == MLK_KV_Q8 ? 127 : 7, mlk__absmax(x + b0, n), x + b0, qb);
        if (type == MLK_KV_Q8) {
            memcpy(data + b0, qb, (size_t)n);
            continue;
        }
        for (int j = 0; j < n; j += 2) /* b0 is even: element pairs share a byte */
            data[(b0 + j) / 2] = (unsigned char)((qb[j] + 8) | (j + 1 < n ? (qb[j + 1] + 8) << 4 : 0));
    }
}

/* Decodes n consecutive rows (row_bytes apart) into n * d floats. */
static void mlk__row_decode_run(mlk_kv_type type, int d, size_t row_bytes, int n, const unsigned char *row, float *x)
{
    for (int i = 0; i < n; i++, row += row_bytes, x += d) mlk__row_decode(type, d, row, x);
}


/* ======================================================================
   gemm
   ====================================================================== */

/* BLIS/GotoBLAS structure: for each NC-wide column panel and KC-deep slice
   of k, op(B) is packed into NR-wide micro-panels, each MC-row block of op(A)
   into MR-high micro-panels, and a register-tiled MR x NR micro-kernel
   streams both from cache. Packing zero-pads the edges and absorbs
   transposes and leading dimensions, so the micro-kernel sees one layout.
   Threads each take a contiguous share of C's columns (or rows) and run the
   whole loop nest on it with private pack buffers: no barriers, and no
   packed panel bouncing between cores' caches. Every C element accumulates
   over k in the same order whatever the blocking of m and n, and only KC (a
   constant) splits k: results are bitwise identical for any thread count.

   Internal entry for sections that must allocate everything before writing
   any output (the ternary trainer): mlk__sgemm_plan sizes the scratch of a
   validated product, mlk__sgemm_run computes it in that scratch. */

/* KC, the k slice, fixes the summation order: a constant of the build. The
   AVX-512 build takes it twice as deep, so C's tiles travel half as often
   (2048^3 at 1.2x); AVX2's 16-wide B sliver fills L1 at 256. */
enum {
#if defined(MLK__AVX512)
    MLK__GEMM_KC = 512,
#else
    MLK__GEMM_KC = 256,
#endif
    MLK__GEMM_MC = 144,  /* rows of A per packed block (L2) */
    MLK__GEMM_NC = 4096  /* columns of B per packed panel (L3) */
};

/* op(A) element (i, p) is a[i * a_rs + p * a_cs]; op(B) element (p, j) is
   b[p * b_rs + j * b_cs]. */
typedef struct mlk__gemm_args {
    int m, n, k;
    float alpha, beta;
    const float *a, *b;
    size_t a_rs, a_cs, b_rs, b_cs;
    float *c;
    size_t ldc;
} mlk__gemm_args;

static mlk__gemm_args mlk__gemm_make_args(int trans_a, int trans_b, int m, int n, int k,
                                          float alpha, const float *a, int lda,
                                          const float *b, int ldb, float beta, float *c, int ldc)
{
    mlk__gemm_args g;
    g.m = m; g.n = n; g.k = k;
    g.alpha = alpha; g.beta = beta;
    g.a = a; g.b = b; g.c = c;
    g.a_rs = trans_a ? 1 : (size_t)lda;
    g.a_cs = trans_a ? (size_t)lda : 1;
    g.b_rs = trans_b ? 1 : (size_t)ldb;
    g.b_cs = trans_b ? (size_t)ldb : 1;
    g.ldc = (size_t)ldc;
    return g;
}

static int mlk__gemm_min(int x, int y) { return x < y ? x : y; }
static int mlk__gemm_max(int x, int y) { return x > y ? x : y; }
static int mlk__gemm_ceil_div(int x, int y) { return x / y + (x % y != 0); }

#if defined(MLK__AVX512)
/* The vector part of mlk__gemm_pack_sliver: lines contiguous along k (op(A)
   rows, a transposed B) go 16 steps at a time through 16 x 16 transposes,
   lines side by side (w_stride 1) one step at a time as masked row copies.
   Returns the steps packed. Packing is 7-12% of a 1024^3 product, mostly
   A and B read from L3; from L2 this packs 0.13 ns a float, the scalar loop
   0.20. */
static int mlk__gemm_pack_vec(const float *src, size_t w_stride, size_t k_stride, int width, int pad, int kc,
                              float *dst)
{
    int p = 0;
    if (k_stride == 1) {
        for (; p + 16 <= kc; p += 16)
            for (int w0 = 0; w0 < pad; w0 += 16) {
                const __mmask16 keep = (__mmask16)((1u << mlk__gemm_min(16, pad - w0)) - 1);
                __m512 r[16];
                for (int w = 0; w < 16; w++)
                    r[w] = w0 + w < width ? _mm512_loadu_ps(src + (size_t)(w0 + w) * w_stride + p)
                                          : _mm512_setzero_ps();
                mlk__transpose16(r);
                for (int j = 0; j < 16; j++) _mm512_mask_storeu_ps(dst + (size_t)(p + j) * pad + w0, keep, r[j]);
            }
    } else if (w_stride == 1) {
        for (; p < kc; p++)
            for (int w0 = 0; w0 < pad; w0 += 16) {
                const __mmask16 keep = (__mmask16)((1u << mlk__gemm_min(16, pad - w0)) - 1);
                const __mmask16 valid = (__mmask16)((1u << mlk__gemm_max(0, mlk__gemm_min(16, width - w0))) - 1);
                _mm512_mask_storeu_ps(dst + (size_t)p * pad + w0, keep,
                                      _mm512_maskz_loadu_ps(valid, src + (size_t)p * k_stride + w0));
            }
    }
    return p;
}
#elif defined(MLK__AVX2)
/* Stores lanes 0..n-1 (n <= 8) of v with plain stores: AVX masked stores
   are microcoded on AMD (42 uops on Zen 3). */
static void mlk__store_lanes8(float *d, __m256 v, int n)
{
    __m128 part = _mm256_castps256_ps128(v);
    if (n == 8) {
        _mm256_storeu_ps(d, v);
        return;
    }
    if (n >= 4) {
        _mm_storeu_ps(d, part);
        part = _mm256_extractf128_ps(v, 1);
        d += 4, n -= 4;
    }
    if (n >= 2) {
        _mm_store_sd((double *)(void *)d, _mm_castps_pd(part));
        part = _mm_movehl_ps(part, part);
        d += 2, n -= 2;
    }
    if (n == 1) _mm_store_ss(d, part);
}

/* mlk__gemm_pack_sliver's vector part, as the AVX-512 one with 8 x 8 blocks. */
static int mlk__gemm_pack_vec(const float *src, size_t w_stride, size_t k_stride, int width, int pad, int kc,
                              float *dst)
{
    int p = 0;
    if (k_stride == 1) {
        for (; p + 8 <= kc; p += 8)
            for (int w0 = 0; w0 < pad; w0 += 8) {
                const int lanes = mlk__gemm_min(8, pad - w0);
                __m256 r[8];
                for (int w = 0; w < 8; w++)
                    r[w] = w0 + w < width ? _mm256_loadu_ps(src + (size_t)(w0 + w) * w_stride + p)
                                          : _mm256_setzero_ps();
                mlk__transpose8(r);
                for (int j = 0; j < 8; j++) mlk__store_lanes8(dst + (size_t)(p + j) * pad + w0, r[j], lanes);
            }
    } else if (w_stride == 1) {
        for (; p < kc; p++)
            for (int w0 = 0; w0 < pad; w0 += 8) {
                const __m256i valid = mlk__mask8(mlk__gemm_max(0, mlk__gemm_min(8, width - w0)));
                const __m256 line = _mm256_maskload_ps(src + (size_t)p * k_stride + w0, valid);
                mlk__store_lanes8(dst + (size_t)p * pad + w0, line, mlk__gemm_min(8, pad - w0));
            }
    }
    return p;
}
#endif

/* Packs `width` (<= pad) lines of kc values into dst[p * pad + w], zeros in
   lines width..pad-1. Line w, step p reads src[w * w_stride + p * k_stride]:
   an MR-row sliver of op(A) or an NR-column sliver of op(B). */
static void mlk__gemm_pack_sliver(const float *src, size_t w_stride, size_t k_stride,
                                  int width, int pad, int kc, float *dst)
{
    int p = 0;
#if defined(MLK__AVX2)
    p = mlk__gemm_pack_vec(src, w_stride, k_stride, width, pad, kc, dst);
#endif
    for (; p < kc; p++) {
        const float *s = src + (size_t)p * k_stride;
        float *d = dst + (size_t)p * pad;
        int w = 0;
        if (w_stride == 1)
            for (; w < width; w++) d[w] = s[w];
        else
            for (; w < width; w++) d[w] = s[(size_t)w * w_stride];
        for (; w < pad; w++) d[w] = 0.0f;
    }
}

/* One rows x cols (<= MR x NR) tile of C; edge tiles go through a full-size
   staging tile so they get exactly the arithmetic of interior ones. */
static void mlk__gemm_tile(int kc, const float *ap, const float *bp, float *c, size_t ldc,
                           int rows, int cols, float alpha, float beta)
{
    float stage[MLK__MR * MLK__NR];
    if (rows == MLK__MR && cols == MLK__NR) {
        mlk__micro(MLK__MR, kc, ap, 1, MLK__MR, bp, MLK__NR, MLK__MICRO_PREFETCH, c, ldc, alpha, beta);
        return;
    }
    if (beta != 0.0f) {
        memset(stage, 0, sizeof stage);
        for (int r = 0; r < rows; r++)
            memcpy(stage + r * MLK__NR, c + (size_t)r * ldc, (size_t)cols * sizeof(float));
    }
    mlk__micro(MLK__MR, kc, ap, 1, MLK__MR, bp, MLK__NR, MLK__MICRO_PREFETCH, stage, MLK__NR, alpha, beta);
    for (int r = 0; r < rows; r++)
        memcpy(c + (size_t)r * ldc, stage + r * MLK__NR, (size_t)cols * sizeof(float));
}

/* C = beta * C (k == 0 or alpha == 0: A and B are not read, as BLAS). */
static void mlk__gemm_scale_c(int m, int n, float beta, float *c, size_t ldc)
{
    for (int i = 0; i < m; i++) {
        float *ci = c + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(ci, 0, (size_t)n * sizeof(float));
        else
            for (int j = 0; j < n; j++) ci[j] *= beta;
    }
}

/* The five loops, one thread: C = alpha op(A) op(B) + beta C with m, n, k > 0.
   b_pack holds a KC x NC panel, a_pack an MC x KC block. */
static void mlk__gemm_blocked(const mlk__gemm_args *g, float *b_pack, float *a_pack)
{
    int nc, kc, mc; /* loops step by these: jc += NC could overflow near INT_MAX */
    for (int jc = 0; jc < g->n; jc += nc) {
        nc = mlk__gemm_min(MLK__GEMM_NC, g->n - jc);
        for (int pc = 0; pc < g->k; pc += kc) {
            const float beta = pc == 0 ? g->beta : 1.0f;
            kc = mlk__gemm_min(MLK__GEMM_KC, g->k - pc);
            for (int j0 = 0; j0 < nc; j0 += MLK__NR)
                mlk__gemm_pack_sliver(g->b + (size_t)pc * g->b_rs + (size_t)(jc + j0) * g->b_cs,
                                      g->b_cs, g->b_rs, mlk__gemm_min(MLK__NR, nc - j0),
                                      MLK__NR, kc, b_pack + (size_t)j0 * kc);
            for (int ic = 0; ic < g->m; ic += mc) {
                mc = mlk__gemm_min(MLK__GEMM_MC, g->m - ic);
                for (int ir = 0; ir < mc; ir += MLK__MR)
                    mlk__gemm_pack_sliver(g->a + (size_t)(ic + ir) * g->a_rs + (size_t)pc * g->a_cs,
                                          g->a_rs, g->a_cs, mlk__gemm_min(MLK__MR, mc - ir),
                                          MLK__MR, kc, a_pack + (size_t)ir * kc);
                for (int j0 = 0; j0 < nc; j0 += MLK__NR) /* B sliver stays in L1 */
                    for (int ir = 0; ir < mc; ir += MLK__MR)
                        mlk__gemm_tile(kc, a_pack + (size_t)ir * kc, b_pack + (size_t)j0 * kc,
                                       g->c + (size_t)(ic + ir) * g->ldc + (size_t)(jc + j0), g->ldc,
                                       mlk__gemm_min(MLK__MR, mc - ir),
                                       mlk__gemm_min(MLK__NR, nc - j0), g->alpha, beta);
            }
        }
    }
}

/* The small-m path (decode: m = 1..MLK__GEMV_MAX_M rows of op(A)). Packing
   B costs as much as the whole product here, so op(B) is read once, straight
   from the caller's array, and each thread takes a contiguous run of C's
   columns. trans_b = 1 (B is a Linear weight [n, k]): each C element is a dot
   product of an A row with a B row, 8 B rows at a time in 8 accumulators,
   each summing 8 lanes over k (lane l takes p = l mod 8) then the lanes
   (the scalar build: in k order). trans_b = 0: C rows accumulate
   x[p] * B[p, :] for p = 0..k-1 in order in an L1-resident row buffer.
   Either order depends on k only, never on m or the thread split; it
   differs from the packed path's (256-deep k slices). */
enum {
    MLK__GEMV_MAX_M = 8,  /* m up to this takes the small path: 1.4-2x the packed
                             path at m = 8, even with it at m = 16-18 (1 thread) */
    MLK__GEMV_ROWS = 8,   /* B rows per dot block; columns per thread share */
    MLK__GEMV_ACC = 4096  /* floats of the L1 accumulator (trans_b = 0): m rows of C chunks */
};

#if defined(MLK__AVX2)
/* dots[r] = sum_p x[p] * w[r * ldw + p] for r < rows (1..8); rows past the
   last repeat it so that every B row gets the same arithmetic. */
static void mlk__gemv_dot8(int k, const float *x, const float *w, size_t ldw, int rows, float *dots)
{
    const float *w0 = w, *w1 = w + (size_t)mlk__gemm_min(1, rows - 1) * ldw;
    const float *w2 = w + (size_t)mlk__gemm_min(2, rows - 1) * ldw, *w3 = w + (size_t)mlk__gemm_min(3, rows - 1) * ldw;
    const float *w4 = w + (size_t)mlk__gemm_min(4, rows - 1) * ldw, *w5 = w + (size_t)mlk__gemm_min(5, rows - 1) * ldw;
    const float *w6 = w + (size_t)mlk__gemm_min(6, rows - 1) * ldw, *w7 = w + (size_t)mlk__gemm_min(7, rows - 1) * ldw;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    __m256 s4 = _mm256_setzero_ps(), s5 = _mm256_setzero_ps(), s6 = _mm256_setzero_ps(), s7 = _mm256_setzero_ps();
    __m256 h01, h23, h45, h67, h0123, h4567;
    int p = 0;
    for (; p <= k - 8; p += 8) {
        const __m256 xv = _mm256_loadu_ps(x + p);
        s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w0 + p), s0);
        s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w1 + p), s1);
        s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w2 + p), s2);
        s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w3 + p), s3);
        s4 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w4 + p), s4);
        s5 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w5 + p), s5);
        s6 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w6 + p), s6);
        s7 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w7 + p), s7);
    }
    if (p < k) { /* masked lanes load 0 from x and B: no NaN * 0 from the gap */
        const __m256i mask = mlk__mask8(k - p);
        const __m256 xv = _mm256_maskload_ps(x + p, mask);
        s0 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w0 + p, mask), s0);
        s1 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w1 + p, mask), s1);
        s2 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w2 + p, mask), s2);
        s3 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w3 + p, mask), s3);
        s4 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w4 + p, mask), s4);
        s5 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w5 + p, mask), s5);
        s6 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w6 + p, mask), s6);
        s7 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(w7 + p, mask), s7);
    }
    /* transpose-and-add: lane r of the result is the lane sum of s_r */
    h01 = _mm256_hadd_ps(s0, s1);
    h23 = _mm256_hadd_ps(s2, s3);
    h45 = _mm256_hadd_ps(s4, s5);
    h67 = _mm256_hadd_ps(s6, s7);
    h0123 = _mm256_hadd_ps(h01, h23);
    h4567 = _mm256_hadd_ps(h45, h67);
    _mm256_storeu_ps(dots, _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                         _mm256_permute2f128_ps(h0123, h4567, 0x31)));
}

/* Two A rows against four B rows (rows 1..4, clamped as in dot8), each B
   load used twice: dots[r] for x0, dots[4 + r] for x1. Lanes and the final
   add tree as in dot8, so every output gets dot8's bits. */
static void mlk__gemv_dot4x2(int k, const float *x0, const float *x1, const float *w, size_t ldw,
                             int rows, float *dots)
{
    const float *w0 = w, *w1 = w + (size_t)mlk__gemm_min(1, rows - 1) * ldw;
    const float *w2 = w + (size_t)mlk__gemm_min(2, rows - 1) * ldw, *w3 = w + (size_t)mlk__gemm_min(3, rows - 1) * ldw;
    __m256 s00 = _mm256_setzero_ps(), s01 = _mm256_setzero_ps(), s02 = _mm256_setzero_ps(), s03 = _mm256_setzero_ps();
    __m256 s10 = _mm256_setzero_ps(), s11 = _mm256_setzero_ps(), s12 = _mm256_setzero_ps(), s13 = _mm256_setzero_ps();
    __m256 h0, h1;
    int p = 0;
    for (; p <= k - 8; p += 8) {
        const __m256 xv0 = _mm256_loadu_ps(x0 + p), xv1 = _mm256_loadu_ps(x1 + p);
        __m256 wv;
        wv = _mm256_loadu_ps(w0 + p); s00 = _mm256_fmadd_ps(xv0, wv, s00); s10 = _mm256_fmadd_ps(xv1, wv, s10);
        wv = _mm256_loadu_ps(w1 + p); s01 = _mm256_fmadd_ps(xv0, wv, s01); s11 = _mm256_fmadd_ps(xv1, wv, s11);
        wv = _mm256_loadu_ps(w2 + p); s02 = _mm256_fmadd_ps(xv0, wv, s02); s12 = _mm256_fmadd_ps(xv1, wv, s12);
        wv = _mm256_loadu_ps(w3 + p); s03 = _mm256_fmadd_ps(xv0, wv, s03); s13 = _mm256_fmadd_ps(xv1, wv, s13);
    }
    if (p < k) {
        const __m256i mask = mlk__mask8(k - p);
        const __m256 xv0 = _mm256_maskload_ps(x0 + p, mask), xv1 = _mm256_maskload_ps(x1 + p, mask);
        __m256 wv;
        wv = _mm256_maskload_ps(w0 + p, mask); s00 = _mm256_fmadd_ps(xv0, wv, s00); s10 = _mm256_fmadd_ps(xv1, wv, s10);
        wv = _mm256_maskload_ps(w1 + p, mask); s01 = _mm256_fmadd_ps(xv0, wv, s01); s11 = _mm256_fmadd_ps(xv1, wv, s11);
        wv = _mm256_maskload_ps(w2 + p, mask); s02 = _mm256_fmadd_ps(xv0, wv, s02); s12 = _mm256_fmadd_ps(xv1, wv, s12);
        wv = _mm256_maskload_ps(w3 + p, mask); s03 = _mm256_fmadd_ps(xv0, wv, s03); s13 = _mm256_fmadd_ps(xv1, wv, s13);
    }
    h0 = _mm256_hadd_ps(_mm256_hadd_ps(s00, s01), _mm256_hadd_ps(s02, s03));
    h1 = _mm256_hadd_ps(_mm256_hadd_ps(s10, s11), _mm256_hadd_ps(s12, s13));
    _mm256_storeu_ps(dots, _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20),
                                         _mm256_permute2f128_ps(h0, h1, 0x31)));
}

/* acc[j] += x_p * b[j] for j < cols; acc holds cols rounded up to 8. */
static void mlk__gemv_axpy(int cols, float x_p, const float *b, float *acc)
{
    const __m256 xv = _mm256_set1_ps(x_p);
    int j = 0;
    for (; j <= cols - 8; j += 8)
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(xv, _mm256_loadu_ps(b + j), _mm256_loadu_ps(acc + j)));
    if (j < cols)
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(xv, _mm256_maskload_ps(b + j, mlk__mask8(cols - j)),
                                                  _mm256_loadu_ps(acc + j)));
}

/* Four B rows (b, b + ldb, ...) at once, one acc load and store for four
   FMAs, summed in row order: exactly four mlk__gemv_axpy calls. */
static void mlk__gemv_axpy4(int cols, const float *x4, const float *b, size_t ldb, float *acc)
{
    const __m256 x0 = _mm256_set1_ps(x4[0]), x1 = _mm256_set1_ps(x4[1]);
    const __m256 x2 = _mm256_set1_ps(x4[2]), x3 = _mm256_set1_ps(x4[3]);
    const float *b1 = b + ldb, *b2 = b + 2 * ldb, *b3 = b + 3 * ldb;
    int j = 0;
    for (; j <= cols - 8; j += 8) {
        __m256 a = _mm256_loadu_ps(acc + j);
        a = _mm256_fmadd_ps(x0, _mm256_loadu_ps(b + j), a);
        a = _mm256_fmadd_ps(x1, _mm256_loadu_ps(b1 + j), a);
        a = _mm256_fmadd_ps(x2, _mm256_loadu_ps(b2 + j), a);
        a = _mm256_fmadd_ps(x3, _mm256_loadu_ps(b3 + j), a);
        _mm256_storeu_ps(acc + j, a);
    }
    if (j < cols) {
        const __m256i mask = mlk__mask8(cols - j);
        __m256 a = _mm256_loadu_ps(acc + j);
        a = _mm256_fmadd_ps(x0, _mm256_maskload_ps(b + j, mask), a);
        a = _mm256_fmadd_ps(x1, _mm256_maskload_ps(b1 + j, mask), a);
        a = _mm256_fmadd_ps(x2, _mm256_maskload_ps(b2 + j, mask), a);
        a = _mm256_fmadd_ps(x3, _mm256_maskload_ps(b3 + j, mask), a);
        _mm256_storeu_ps(acc + j, a);
    }
}
#else
static void mlk__gemv_dot8(int k, const float *x, const float *w, size_t ldw, int rows, float *dots)
{
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (size_t)r * ldw;
        float dot = 0.0f;
        for (int p = 0; p < k; p++) dot += x[p] * wr[p];
        dots[r] = dot;
    }
}

static void mlk__gemv_dot4x2(int k, const float *x0, const float *x1, const float *w, size_t ldw,
                             int rows, float *dots)
{
    mlk__gemv_dot8(k, x0, w, ldw, rows, dots);
    mlk__gemv_dot8(k, x1, w, ldw, rows, dots + 4);
}

static void mlk__gemv_axpy(int cols, float x_p, const float *b, float *acc)
{
    for (int j = 0; j < cols; j++) acc[j] += x_p * b[j];
}

static void mlk__gemv_axpy4(int cols, const float *x4, const float *b, size_t ldb, float *acc)
{
    for (int r = 0; r < 4; r++) mlk__gemv_axpy(cols, x4[r], b + (size_t)r * ldb, acc);
}
#endif

/* C[i, j] = alpha * sum[j] + beta * C[i, j] for one row run (beta == 0:
   C is not read). */
static void mlk__gemv_store(int cols, const float *sum, float alpha, float beta, float *c)
{
    for (int j = 0; j < cols; j++) c[j] = beta != 0.0f ? alpha * sum[j] + beta * c[j] : alpha * sum[j];
}

/* Columns [j0, j0 + cols) of C on the small path. trans_b = 1 needs op(A)'s
   rows contiguous (a_cs == 1); trans_b = 0 reads A through its strides. */
static void mlk__gemv_part(const mlk__gemm_args *g, int j0, int cols)
{
    if (g->b_rs == 1) { /* op(B)'s columns are contiguous: B^T (or one column) */
        float dots[8];
        for (int jb = 0, rows; jb < cols; jb += rows) {
            rows = mlk__gemm_min(MLK__GEMV_ROWS, cols - jb);
            const float *w = g->b + (size_t)(j0 + jb) * g->b_cs;
            float *c_jb = g->c + (size_t)(j0 + jb);
            int i = 0;
            for (; i <= g->m - 2; i += 2) /* A rows in pairs; the B rows stay in L1/L2 */
                for (int half = 0; half < rows; half += 4) {
                    const int rows4 = mlk__gemm_min(4, rows - half);
                    mlk__gemv_dot4x2(g->k, g->a + (size_t)i * g->a_rs, g->a + (size_t)(i + 1) * g->a_rs,
                                     w + (size_t)half * g->b_cs, g->b_cs, rows4, dots);
                    mlk__gemv_store(rows4, dots, g->alpha, g->beta, c_jb + (size_t)i * g->ldc + half);
                    mlk__gemv_store(rows4, dots + 4, g->alpha, g->beta, c_jb + (size_t)(i + 1) * g->ldc + half);
                }
            if (i < g->m) {
                mlk__gemv_dot8(g->k, g->a + (size_t)i * g->a_rs, w, g->b_cs, rows, dots);
                mlk__gemv_store(rows, dots, g->alpha, g->beta, c_jb + (size_t)i * g->ldc);
            }
        }
    } else {
        /* chunks as wide as the accumulator allows: long runs of each B row
           keep the hardware prefetcher streaming */
        float acc[MLK__GEMV_ACC];
        const int chunk = MLK__GEMV_ACC / g->m / 8 * 8;
        for (int jc = 0; jc < cols; jc += chunk) {
            const int nb = mlk__gemm_min(chunk, cols - jc);
            memset(acc, 0, sizeof acc);
            int p = 0;
            for (; p <= g->k - 4; p += 4) { /* B rows p..p+3, read once for all A rows */
                const float *b_rows = g->b + (size_t)p * g->b_rs + (size_t)(j0 + jc);
                for (int i = 0; i < g->m; i++) {
                    const float *a_i = g->a + (size_t)i * g->a_rs + (size_t)p * g->a_cs;
                    float x4[4];
                    for (int r = 0; r < 4; r++) x4[r] = a_i[(size_t)r * g->a_cs];
                    mlk__gemv_axpy4(nb, x4, b_rows, g->b_rs, acc + i * chunk);
                }
            }
            for (; p < g->k; p++) {
                const float *b_row = g->b + (size_t)p * g->b_rs + (size_t)(j0 + jc);
                for (int i = 0; i < g->m; i++)
                    mlk__gemv_axpy(nb, g->a[(size_t)i * g->a_rs + (size_t)p * g->a_cs], b_row, acc + i * chunk);
            }
            for (int i = 0; i < g->m; i++)
                mlk__gemv_store(nb, acc + i * chunk, g->alpha, g->beta, g->c + (size_t)i * g->ldc + (size_t)(j0 + jc));
        }
    }
}

/* Whether the dot products need op(A) copied into contiguous rows first
   (trans_a with a stride): the floats of that copy, else 0. */
static size_t mlk__gemv_a_floats(const mlk__gemm_args *g)
{
    return g->b_rs == 1 && g->a_cs != 1 ? (size_t)g->m * (size_t)g->k : 0;
}

/* Copies op(A) into a_rows (m x k, contiguous) and points g at it. */
static void mlk__gemv_copy_a(mlk__gemm_args *g, float *a_rows)
{
    for (int i = 0; i < g->m; i++)
        for (int p = 0; p < g->k; p++)
            a_rows[(size_t)i * g->k + p] = g->a[(size_t)i * g->a_rs + (size_t)p * g->a_cs];
    g->a = a_rows;
    g->a_rs = (size_t)g->k;
    g->a_cs = 1;
}

/* Few rows against a Linear weight (trans_b, MLK__GEMV_MAX_M < m <=
   MLK__SKINNY_MAX_M: batched decode, small-batch layers). Packing the big
   weight would cost more than the product, so the product runs transposed,
   C^T = W op(A)^T: W's rows are the micro-kernel's row-major A tile, read
   in place (a_rs = ldb, a_ks = 1) and once from memory, and op(A)^T is
   packed once as its B panels (at_pack: NR columns of op(A)^T by k, panel
   after panel). k goes in chunks whose share of at_pack stays in L2 while
   W streams by in runs of the chunk; C^T accumulates in ct (this part's MR x
   NR tiles), KC-deep slices with beta at the first and 1 after, as in the
   packed path: the same FMA chain per element, so the same bits. A tile
   takes MR rows of W, or MLK__SKINNY_ALIASED_ROWS when W's row stride is a
   multiple of 4 KiB (k = 2048, 4096, 14336, ...): those rows all fall in
   one L1 set, and twelve of them evict each other in an 8-way L1 at every
   k step (Zen 4, two threads, m = 64 against 4096 x 4096: 12 rows 118-168
   GFLOP/s, mostly under 130, 8 rows 167-185; at stride 4112 12 rows
   174-189, 8 rows 158-167). */
enum {
    MLK__SKINNY_M = 64,             /* m up to this takes this path (measured: 1.2-3x packed) */
    MLK__SKINNY_MAX_M = 256,        /* and up to this when W is too big for the caches: */
    MLK__SKINNY_BIG_W = 1 << 21,    /*   floats of W (n k); a cached W packs cheaply */
    MLK__SKINNY_L2 = 512 * 1024 / 4, /* floats of at_pack per k chunk */
    MLK__SKINNY_ALIASED_ROWS = 8     /* L1 ways (Zen 4; Intel's 12-way L1 is unmeasured) */
};

static int mlk__gemm_skinny(const mlk__gemm_args *g)
{
    const int rows_fit = g->m <= MLK__SKINNY_M ||
                         (g->m <= MLK__SKINNY_MAX_M && (double)g->n * g->k >= MLK__SKINNY_BIG_W);
    return g->b_rs == 1 && g->m > MLK__GEMV_MAX_M && rows_fit;
}

static int mlk__gemm_skinny_pad(int m) { return mlk__gemm_ceil_div(m, MLK__NR) * MLK__NR; }

/* W rows per tile. */
static int mlk__gemm_skinny_rows(const mlk__gemm_args *g)
{
    return (g->b_cs * sizeof(float)) % 4096 == 0 ? mlk__gemm_min(MLK__MR, MLK__SKINNY_ALIASED_ROWS) : MLK__MR;
}

/* Floats of ct for a part of `cols` columns of C, tiles of `rows` rows. */
static size_t mlk__gemm_skinny_ct_floats(int cols, int rows, int m)
{
    return (size_t)mlk__gemm_ceil_div(cols, rows) * rows * (size_t)mlk__gemm_skinny_pad(m);
}

static void mlk__gemm_skinny_pack(const mlk__gemm_args *g, float *at_pack)
{
    for (int i0 = 0; i0 < g->m; i0 += MLK__NR)
        mlk__gemm_pack_sliver(g->a + (size_t)i0 * g->a_rs, g->a_rs, g->a_cs, mlk__gemm_min(MLK__NR, g->m - i0),
                              MLK__NR, g->k, at_pack + (size_t)i0 * g->k);
}

/* Copies between C's columns [j0, j0 + cols) and ct's tiles. */
static void mlk__gemm_skinny_ct_copy(const mlk__gemm_args *g, int j0, int cols, float *ct, int to_c)
{
    const int tiles = mlk__gemm_skinny_pad(g->m) / MLK__NR, rows = mlk__gemm_skinny_rows(g);
    for (int jr = 0; jr < cols; jr++)
        for (int i = 0; i < g->m; i++) {
            float *t = ct + ((size_t)(jr / rows) * tiles + i / MLK__NR) * (size_t)(rows * MLK__NR) +
                       jr % rows * MLK__NR + i % MLK__NR;
            float *e = g->c + (size_t)i * g->ldc + j0 + jr;
            if (to_c)
                *e = *t;
            else
                *t = *e;
        }
}

/* C's columns [j0, j0 + cols); ct holds mlk__gemm_skinny_ct_floats(cols,
   mlk__gemm_skinny_rows(g), m). */
static void mlk__gemm_skinny_part(const mlk__gemm_args *g, int j0, int cols, const float *at_pack, float *ct)
{
    const int tiles = mlk__gemm_skinny_pad(g->m) / MLK__NR, tile_rows = mlk__gemm_skinny_rows(g);
    const int chunk = mlk__gemm_min(g->k, MLK__GEMM_KC * mlk__gemm_max(1, MLK__SKINNY_L2 / (tiles * MLK__NR) / MLK__GEMM_KC));
    if (g->beta != 0.0f) {
        memset(ct, 0, mlk__gemm_skinny_ct_floats(cols, tile_rows, g->m) * sizeof(float));
        mlk__gemm_skinny_ct_copy(g, j0, cols, ct, 0);
    }
    for (int p0 = 0; p0 < g->k; p0 += chunk) {
        const int p1 = mlk__gemm_min(g->k, p0 + chunk);
        for (int jr = 0; jr < cols; jr += tile_rows) {
            const int rows = mlk__gemm_min(tile_rows, cols - jr);
            const float *w_rows = g->b + (size_t)(j0 + jr) * g->b_cs;
            for (int t = 0; t < tiles; t++) {
                const float *panel = at_pack + (size_t)t * MLK__NR * g->k;
                float *tile = ct + ((size_t)(jr / tile_rows) * tiles + t) * (size_t)(tile_rows * MLK__NR);
                for (int pc = p0, kc; pc < p1; pc += kc) {
                    kc = mlk__gemm_min(MLK__GEMM_KC, p1 - pc);
                    mlk__micro(rows, kc, w_rows + pc, g->b_cs, 1, panel + (size_t)pc * MLK__NR, MLK__NR, 0, tile,
                               MLK__NR, g->alpha, pc == 0 ? g->beta : 1.0f);
                }
            }
        }
    }
    mlk__gemm_skinny_ct_copy(g, j0, cols, ct, 1);
}

/* Floats of the packed B panel and of one packed A block. */
static size_t mlk__gemm_b_floats(int n, int k)
{
    const int nc = mlk__gemm_min(n, MLK__GEMM_NC);
    return (size_t)mlk__gemm_min(k, MLK__GEMM_KC) * (size_t)(mlk__gemm_ceil_div(nc, MLK__NR) * MLK__NR);
}

static size_t mlk__gemm_a_floats(int m, int k)
{
    const int mc = mlk__gemm_min(m, MLK__GEMM_MC);
    return (size_t)mlk__gemm_min(k, MLK__GEMM_KC) * (size_t)(mlk__gemm_ceil_div(mc, MLK__MR) * MLK__MR);
}

/* Part i of `parts` of `size` elements cut at multiples of `tile`:
   [*start, *start + *len), parts balanced to within one tile. */
static void mlk__gemm_split(int size, int tile, int parts, int i, int *start, int *len)
{
    const long long tiles = mlk__gemm_ceil_div(size, tile);
    const long long t0 = tiles * i / parts, t1 = tiles * (i + 1) / parts;
    const long long end = t1 * tile < size ? t1 * tile : size;
    *start = (int)(t0 * tile);
    *len = (int)(end - t0 * tile);
}

/* Thread tid's share of C: contiguous micro-tile columns (rows when C is
   taller than wide, or when there are too few columns), balanced to one
   tile. Splitting along n keeps each thread's B panel half as big. */
static mlk__gemm_args mlk__gemm_thread_part(const mlk__gemm_args *g, int tid, int team)
{
    mlk__gemm_args part = *g;
    const int mt = mlk__gemm_ceil_div(g->m, MLK__MR), nt = mlk__gemm_ceil_div(g->n, MLK__NR);
    int by_cols = g->n >= g->m;
    if (by_cols && nt < team && mt > nt) by_cols = 0;
    if (!by_cols && mt < team && nt > mt) by_cols = 1;
    if (by_cols) {
        int j0;
        mlk__gemm_split(g->n, MLK__NR, team, tid, &j0, &part.n);
        part.b = g->b + (size_t)j0 * g->b_cs;
        part.c = g->c + j0;
    } else {
        int i0;
        mlk__gemm_split(g->m, MLK__MR, team, tid, &i0, &part.m);
        part.a = g->a + (size_t)i0 * g->a_rs;
        part.c = g->c + (size_t)i0 * g->ldc;
    }
    return part;
}

static int mlk__gemm_team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* A validated product with its thread count and scratch size. */
typedef struct mlk__sgemm_plan {
    mlk__gemm_args g;
    int nth;              /* threads of the packed path */
    size_t b_floats, a_floats;
    size_t scratch_bytes; /* of the whole call */
} mlk__sgemm_plan;

/* Checks the arguments as mlk_sgemm documents and sizes the call. Returns
   MLK_OK with p->scratch_bytes set (p->g.m == 0: nothing to do). */
static mlk_status mlk__sgemm_plan_make(int trans_a, int trans_b, int m, int n, int k, float alpha,
                                       const float *a, int lda, const float *b, int ldb, float beta, float *c,
                                       int ldc, mlk__sgemm_plan *p)
{
    const int a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
    const int a_rows = trans_a ? k : m, b_rows = trans_b ? n : k;
    size_t span;
    long long tiles;
    if (m < 0 || n < 0 || k < 0) return MLK_ERR_SHAPE;
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < (n > 1 ? n : 1))
        return MLK_ERR_SHAPE;
    memset(p, 0, sizeof *p);
    if (m == 0 || n == 0) return MLK_OK;
    if (!c || (k > 0 && (!a || !b))) return MLK_ERR_NULL;
    /* every element offset (rows - 1) * ld + cols must fit size_t */
    if (!mlk__mul_ok((size_t)m, (size_t)ldc, &span) || !mlk__mul_ok(span, sizeof(float), &span) ||
        !mlk__mul_ok((size_t)a_rows, (size_t)lda, &span) || !mlk__mul_ok(span, sizeof(float), &span) ||
        !mlk__mul_ok((size_t)b_rows, (size_t)ldb, &span) || !mlk__mul_ok(span, sizeof(float), &span))
        return MLK_ERR_OVERFLOW;
    p->g = mlk__gemm_make_args(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (k == 0 || alpha == 0.0f) return MLK_OK;
    if (m <= MLK__GEMV_MAX_M) { /* at most a copy of a strided op(A) */
        p->scratch_bytes = mlk__gemv_a_floats(&p->g) * sizeof(float);
        return MLK_OK;
    }
    /* one thread for small products: the team costs more than it saves */
    p->nth = 2.0 * m * n * k < MLK__PAR_GEMM_FLOPS ? 1 : mlk__max_threads();
    if (mlk__gemm_skinny(&p->g)) { /* op(A)^T packed once, then each part's C^T tiles */
        const int tile_rows = mlk__gemm_skinny_rows(&p->g);
        size_t at_bytes;
        tiles = mlk__gemm_ceil_div(n, tile_rows);
        if (tiles < p->nth) p->nth = (int)tiles;
        if (!mlk__mul_ok((size_t)k, (size_t)mlk__gemm_skinny_pad(m) * sizeof(float), &at_bytes))
            return MLK_ERR_OVERFLOW;
        p->b_floats = at_bytes / sizeof(float);
        p->a_floats = mlk__gemm_skinny_ct_floats(mlk__gemm_ceil_div((int)tiles, p->nth) * tile_rows, tile_rows, m);
        p->scratch_bytes = at_bytes + (size_t)p->nth * p->a_floats * sizeof(float);
        return MLK_OK;
    }
    tiles = (long long)mlk__gemm_ceil_div(m, MLK__MR) * mlk__gemm_ceil_div(n, MLK__NR);
    if (tiles < p->nth) p->nth = (int)tiles;
    p->b_floats = mlk__gemm_b_floats(n, k);
    p->a_floats = mlk__gemm_a_floats(m, k);
    p->scratch_bytes = (size_t)p->nth * (p->b_floats + p->a_floats) * sizeof(float);
    return MLK_OK;
}

/* Computes a planned product; scratch holds p->scratch_bytes. */
static void mlk__sgemm_run(const mlk__sgemm_plan *p, float *scratch)
{
    mlk__gemm_args g = p->g;
    if (g.m == 0 || g.n == 0) return;
    if (g.k == 0 || g.alpha == 0.0f) {
        mlk__gemm_scale_c(g.m, g.n, g.beta, g.c, g.ldc);
        return;
    }
    if (g.m <= MLK__GEMV_MAX_M) {
        /* fixed contiguous column runs, whole 8-column blocks each; one thread
           until B is big enough (MLK__PAR_GEMV_FLOATS) to pay for waking the team */
        if (mlk__gemv_a_floats(&g) > 0) mlk__gemv_copy_a(&g, scratch);
        MLK__OMP(omp parallel if((size_t)g.n * (size_t)g.k >= MLK__PAR_GEMV_FLOATS))
        {
            int j0, cols;
            mlk__gemm_split(g.n, MLK__GEMV_ROWS, mlk__gemm_team_size(), mlk__thread_id(), &j0, &cols);
            if (cols > 0) mlk__gemv_part(&g, j0, cols);
        }
        return;
    }
    if (mlk__gemm_skinny(&g)) {
        mlk__gemm_skinny_pack(&g, scratch);
        MLK__OMP(omp parallel num_threads(p->nth) if(p->nth > 1))
        { /* the planned parts, whatever team OpenMP gives: ct is sized per part */
            for (int part = mlk__thread_id(); part < p->nth; part += mlk__gemm_team_size()) {
                int j0, cols;
                mlk__gemm_split(g.n, mlk__gemm_skinny_rows(&g), p->nth, part, &j0, &cols);
                if (cols > 0)
                    mlk__gemm_skinny_part(&g, j0, cols, scratch, scratch + p->b_floats + (size_t)part * p->a_floats);
            }
        }
        return;
    }
    MLK__OMP(omp parallel num_threads(p->nth) if(p->nth > 1))
    {
        const int tid = mlk__thread_id();
        mlk__gemm_args part = mlk__gemm_thread_part(&g, tid, mlk__gemm_team_size());
        float *thread_pack = scratch + (size_t)tid * (p->b_floats + p->a_floats);
        if (part.m > 0 && part.n > 0) mlk__gemm_blocked(&part, thread_pack, thread_pack + p->b_floats);
    }
}

MLKERN_DEF mlk_status mlk_sgemm(int trans_a, int trans_b, int m, int n, int k,
                                float alpha, const float *a, int lda,
                                const float *b, int ldb, float beta, float *c, int ldc)
{
    mlk__sgemm_plan plan;
    float *scratch = NULL;
    mlk_status st = mlk__sgemm_plan_make(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, &plan);
    if (st != MLK_OK) return st;
    if (plan.scratch_bytes > 0 && !(scratch = (float *)mlk__alloc(plan.scratch_bytes))) return MLK_ERR_NOMEM;
    mlk__sgemm_run(&plan, scratch);
    mlk__free(scratch);
    return MLK_OK;
}
/* ======================================================================
   norms
   ====================================================================== */

/* Forward, per row (the row stays in L1 after the first read), the
   corrected two-pass algorithm (Chan, Golub and LeVeque 1983):
     m1    = sum(x) / dim
     delta = sum(x - m1) / dim,  var = sum((x - m1)^2) / dim - delta^2
     y     = (x - m1 - delta) * rstd * gamma + beta,  mean = m1 + delta
   delta repairs the rounding of m1, so a row with mean 1e4 and spread 1e-2
   normalises to full precision. RMSNorm is one pass: var = sum(x^2) / dim.
   x and y cross memory once. The cached mean is rounded to float (by up to
   half an ulp of 1e4 in that example); the backward pass uses it as m1 and
   re-derives delta from x, so it keeps full precision too. */

/* Row sums are taken in blocks of MLK__NORM_BLOCK values, each summed in
   float lanes and the block sums added in double: the rounding error of a
   sum then stays that of one block, however long the row (one float
   accumulator per lane would lose digits linearly with the row length). */
#define MLK__NORM_BLOCK 128

#if !defined(MLK__AVX2)
/* pairwise sum of 8 lanes */
static float mlk__norm_sum8(const float *v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }
#endif

/* Length of the block at i of a row of n: no i + BLOCK that could overflow. */
static int mlk__norm_block_len(int n, int i) { return n - i < MLK__NORM_BLOCK ? n - i : MLK__NORM_BLOCK; }

/* s1 = sum(x - c), s2 = sum((x - c)^2) over one block of n <= MLK__NORM_BLOCK */
static void mlk__norm_block_moments(const float *x, int n, float c, float *s1, float *s2)
{
    float sum = 0.0f, sum_sq = 0.0f;
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 cv = _mm256_set1_ps(c);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 sq0 = _mm256_setzero_ps(), sq1 = _mm256_setzero_ps();
    for (; i <= n - 16; i += 16) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), cv);
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), cv);
        acc0 = _mm256_add_ps(acc0, d0);
        acc1 = _mm256_add_ps(acc1, d1);
        sq0 = _mm256_fmadd_ps(d0, d0, sq0);
        sq1 = _mm256_fmadd_ps(d1, d1, sq1);
    }
    sum = mlk__hsum8(_mm256_add_ps(acc0, acc1));
    sum_sq = mlk__hsum8(_mm256_add_ps(sq0, sq1));
#elif defined(MLK__NEON)
    const float32x4_t cv = vdupq_n_f32(c);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, sq0 = acc0, sq1 = acc0;
    for (; i <= n - 8; i += 8) {
        float32x4_t d0 = vsubq_f32(vld1q_f32(x + i), cv), d1 = vsubq_f32(vld1q_f32(x + i + 4), cv);
        acc0 = vaddq_f32(acc0, d0);
        acc1 = vaddq_f32(acc1, d1);
        sq0 = vfmaq_f32(sq0, d0, d0);
        sq1 = vfmaq_f32(sq1, d1, d1);
    }
    sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    sum_sq = vaddvq_f32(vaddq_f32(sq0, sq1));
#else
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sq[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; i <= n - 8; i += 8) /* eight lanes, as the vector path: short add chains */
        for (int l = 0; l < 8; l++) {
            float d = x[i + l] - c;
            acc[l] += d;
            sq[l] += d * d;
        }
    sum = mlk__norm_sum8(acc);
    sum_sq = mlk__norm_sum8(sq);
#endif
    for (; i < n; i++) {
        float d = x[i] - c;
        sum += d;
        sum_sq += d * d;
    }
    *s1 = sum;
    *s2 = sum_sq;
}

/* *s1 = sum(x - c), *s2 = sum((x - c)^2) over a row, in blocks */
static void mlk__norm_moments(const float *x, int n, float c, double *s1, double *s2)
{
    double sum = 0.0, sum_sq = 0.0;
    for (int i = 0, len; i < n; i += len) {
        float b1, b2;
        len = mlk__norm_block_len(n, i);
        mlk__norm_block_moments(x + i, len, c, &b1, &b2);
        sum += b1;
        sum_sq += b2;
    }
    *s1 = sum;
    *s2 = sum_sq;
}

#if defined(MLK__AVX2)
/* The second pass over a row goes in groups of 8 with the same vector
   arithmetic for every element (partial groups through masks), so results
   do not depend on where the group boundaries fall. The first group is cut
   short when that makes the output 32-byte aligned for streaming. */
static int mlk__norm_first_group(const float *out, int n, int stream)
{
    int head = (int)((32 - (uintptr_t)out % 32) % 32 / sizeof(float));
    if (!stream || head == 0 || (uintptr_t)out % sizeof(float)) return n < 8 ? n : 8;
    return head < n ? head : n;
}

static __m256 mlk__norm_load(const float *p, int len)
{
    return len == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mlk__mask8(len));
}

/* stream: non-temporal store, for a full group at a 32-byte aligned address */
static void mlk__norm_store(float *p, __m256 v, int len, int stream)
{
    if (len < 8) _mm256_maskstore_ps(p, mlk__mask8(len), v);
    else if (stream && (uintptr_t)p % 32 == 0) _mm256_stream_ps(p, v);
    else _mm256_storeu_ps(p, v);
}
#endif

/* y = (x - c - delta) * rstd * gamma + beta; gamma / beta NULL: ones / zeros.
   stream: y is large and will not be read soon, so AVX2 writes it with
   non-temporal stores (no read-for-ownership: a third less memory traffic). */
static void mlk__norm_apply(const float *x, int n, float c, float delta, float rstd,
                            const float *gamma, const float *beta, float *y, int stream)
{
#if defined(MLK__AVX2)
    const __m256 cv = _mm256_set1_ps(c), dv = _mm256_set1_ps(delta), rv = _mm256_set1_ps(rstd);
    for (int i = 0, len = mlk__norm_first_group(y, n, stream); i < n; i += len, len = n - i < 8 ? n - i : 8) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(mlk__norm_load(x + i, len), cv), dv), rv);
        if (gamma) v = _mm256_mul_ps(v, mlk__norm_load(gamma + i, len));
        if (beta) v = _mm256_add_ps(v, mlk__norm_load(beta + i, len));
        mlk__norm_store(y + i, v, len, stream);
    }
    if (stream) _mm_sfence();
#else
    (void)stream;
    for (int i = 0; i < n; i++) {
        float v = ((x[i] - c) - delta) * rstd;
        if (gamma) v *= gamma[i];
        if (beta) v += beta[i];
        y[i] = v;
    }
#endif
}

/* Starts loading a row into L1 while the current one is processed from L1:
   the first pass over a row then finds it (partly) there. */
static void mlk__norm_prefetch(const float *row, int n)
{
#if defined(MLK__AVX2)
    for (size_t i = 0; i < (size_t)n; i += 16) _mm_prefetch((const char *)(row + i), _MM_HINT_T0);
#else
    (void)row;
    (void)n;
#endif
}

/* Outputs of at least this many floats (16 MiB) bypass the caches. */
static int mlk__norm_stream(size_t count) { return count >= ((size_t)4 << 20); }

/* Shared by both forward passes: center = 0 is RMSNorm. */
static mlk_status mlk__norm_fwd(int rows, int dim, const float *x, const float *gamma,
                                const float *beta, float eps, int center,
                                float *y, float *mean, float *rstd)
{
    size_t count;
    if (!x || !y) return MLK_ERR_NULL;
    if (rows < 1 || dim < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, dim, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    if (!(eps >= 0.0f) || eps == INFINITY) return MLK_ERR_ARG;
    MLK__OMP(omp parallel for schedule(static) if (count > MLK__PAR_NORM_FLOATS))
    for (int r = 0; r < rows; r++) {
        const float *x_row = x + (size_t)r * (size_t)dim;
        float m1 = 0.0f, delta = 0.0f, row_rstd;
        double s1, s2, var;
        if (r + 1 < rows) mlk__norm_prefetch(x_row + dim, dim);
        mlk__norm_moments(x_row, dim, 0.0f, &s1, &s2);
        var = s2 / dim;
        if (center) {
            m1 = (float)(s1 / dim);
            mlk__norm_moments(x_row, dim, m1, &s1, &s2);
            delta = (float)(s1 / dim);
            var = s2 / dim - (double)delta * delta;
            if (var < 0.0) var = 0.0;
        }
        row_rstd = (float)(1.0 / sqrt(var + eps));
        mlk__norm_apply(x_row, dim, m1, delta, row_rstd, gamma, beta, y + (size_t)r * (size_t)dim,
                        mlk__norm_stream(count));
        if (mean) mean[r] = m1 + delta;
        if (rstd) rstd[r] = row_rstd;
    }
    return MLK_OK;
}

/* One row of the backward pass, g = gamma * dy, x-hat = (x - mean - delta) * rstd:
     dx = rstd * (g - mean(g) - x-hat * mean(g * x-hat))   (RMSNorm: no mean(g) term)
   and dgamma_acc += dy * x-hat, dbeta_acc += dy (either may be NULL).
   Two passes: the first reads x and dy from memory for the sums, using
   mean(g * x-hat) = rstd * (mean(g * (x - mean)) - delta * mean(g)), where
   delta = mean(x - mean) repairs the float rounding of the cached mean (0
   for RMSNorm); the second runs from L1. stream as in mlk__norm_apply. */
/* The backward's sums over one block of n <= MLK__NORM_BLOCK:
   sum_d = sum(x - mean), sum_g = sum(g), sum_gd = sum(g * (x - mean)). */
static void mlk__norm_block_bwd_sums(const float *x, const float *dy, const float *gamma, int n, float mean,
                                     float *sum_d, float *sum_g, float *sum_gd)
{
    float s_d = 0.0f, s_g = 0.0f, s_gd = 0.0f;
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 mv = _mm256_set1_ps(mean);
    __m256 acc_d = _mm256_setzero_ps(), acc_g = _mm256_setzero_ps(), acc_gd = _mm256_setzero_ps();
    for (; i <= n - 8; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), mv), g = _mm256_loadu_ps(dy + i);
        if (gamma) g = _mm256_mul_ps(g, _mm256_loadu_ps(gamma + i));
        acc_d = _mm256_add_ps(acc_d, d);
        acc_g = _mm256_add_ps(acc_g, g);
        acc_gd = _mm256_fmadd_ps(g, d, acc_gd);
    }
    s_d = mlk__hsum8(acc_d);
    s_g = mlk__hsum8(acc_g);
    s_gd = mlk__hsum8(acc_gd);
#else
    float acc_d[8] = {0, 0, 0, 0, 0, 0, 0, 0}, acc_g[8] = {0, 0, 0, 0, 0, 0, 0, 0}, acc_gd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; i <= n - 8; i += 8)
        for (int l = 0; l < 8; l++) {
            float d = x[i + l] - mean, g = gamma ? gamma[i + l] * dy[i + l] : dy[i + l];
            acc_d[l] += d;
            acc_g[l] += g;
            acc_gd[l] += g * d;
        }
    s_d = mlk__norm_sum8(acc_d);
    s_g = mlk__norm_sum8(acc_g);
    s_gd = mlk__norm_sum8(acc_gd);
#endif
    for (; i < n; i++) {
        float d = x[i] - mean, g = gamma ? gamma[i] * dy[i] : dy[i];
        s_d += d;
        s_g += g;
        s_gd += g * d;
    }
    *sum_d = s_d;
    *sum_g = s_g;
    *sum_gd = s_gd;
}

static void mlk__norm_bwd_row(const float *x, const float *dy, const float *gamma, int n,
                              float mean, float rstd, int center, float *dx,
                              float *dgamma_acc, float *dbeta_acc, int stream)
{
    double sum_d = 0.0, sum_g = 0.0, sum_gd = 0.0;
    float delta, mean_g, mean_gx;
    for (int i = 0, len; i < n; i += len) {
        float b_d, b_g, b_gd;
        len = mlk__norm_block_len(n, i);
        mlk__norm_block_bwd_sums(x + i, dy + i, gamma ? gamma + i : NULL, len, mean, &b_d, &b_g, &b_gd);
        sum_d += b_d;
        sum_g += b_g;
        sum_gd += b_gd;
    }
    delta = center ? (float)(sum_d / n) : 0.0f;
    mean_g = center ? (float)(sum_g / n) : 0.0f;
    mean_gx = (float)(rstd * (sum_gd - (double)delta * sum_g) / n);
#if defined(MLK__AVX2)
    {
        const __m256 mv = _mm256_set1_ps(mean), dv = _mm256_set1_ps(delta), rv = _mm256_set1_ps(rstd);
        const __m256 mg = _mm256_set1_ps(mean_g), mgx = _mm256_set1_ps(mean_gx);
        for (int j = 0, len = mlk__norm_first_group(dx, n, stream); j < n; j += len, len = n - j < 8 ? n - j : 8) {
            __m256 d = mlk__norm_load(dy + j, len);
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(mlk__norm_load(x + j, len), mv), dv), rv);
            __m256 g = gamma ? _mm256_mul_ps(d, mlk__norm_load(gamma + j, len)) : d;
            if (dgamma_acc) mlk__norm_store(dgamma_acc + j, _mm256_fmadd_ps(d, xh, mlk__norm_load(dgamma_acc + j, len)), len, 0);
            if (dbeta_acc) mlk__norm_store(dbeta_acc + j, _mm256_add_ps(d, mlk__norm_load(dbeta_acc + j, len)), len, 0);
            mlk__norm_store(dx + j, _mm256_mul_ps(_mm256_fnmadd_ps(xh, mgx, _mm256_sub_ps(g, mg)), rv), len, stream);
        }
        if (stream) _mm_sfence();
    }
#else
    (void)stream;
    for (int j = 0; j < n; j++) {
        float xh = ((x[j] - mean) - delta) * rstd, g = gamma ? gamma[j] * dy[j] : dy[j];
        if (dgamma_acc) dgamma_acc[j] += dy[j] * xh;
        if (dbeta_acc) dbeta_acc[j] += dy[j];
        dx[j] = (g - mean_g - xh * mean_gx) * rstd;
    }
#endif
}

/* dgamma/dbeta are summed over fixed chunks of rows, each into its own
   partial, then the partials in chunk order: the chunking depends on rows
   only, so the result is the same for any thread count. */
static int mlk__norm_chunk_rows(int rows)
{
    int per_chunk = rows / 256 + 1;
    return per_chunk < 16 ? 16 : per_chunk;
}

/* Shared by both backward passes: mean NULL is RMSNorm. */
static mlk_status mlk__norm_bwd(int rows, int dim, const float *x, const float *gamma,
                                const float *mean, const float *rstd, const float *dy,
                                float *dx, float *dgamma, float *dbeta)
{
    size_t count, part_count;
    int chunk_rows, n_chunks, n_parts = (dgamma != NULL) + (dbeta != NULL);
    float *parts = NULL;
    if (!x || !rstd || !dy || !dx) return MLK_ERR_NULL;
    if (rows < 1 || dim < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, dim, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    chunk_rows = mlk__norm_chunk_rows(rows);
    n_chunks = (rows + chunk_rows - 1) / chunk_rows;
    if (n_parts) {
        if (!mlk__count4(n_chunks, n_parts, dim, 1, sizeof(float), &part_count)) return MLK_ERR_OVERFLOW;
        parts = (float *)mlk__alloc(part_count * sizeof(float));
        if (!parts) return MLK_ERR_NOMEM;
    }
    MLK__OMP(omp parallel for schedule(static) if (count > MLK__PAR_NORM_FLOATS))
    for (int c = 0; c < n_chunks; c++) {
        float *dgamma_acc = NULL, *dbeta_acc = NULL;
        int r_end = (c + 1) * chunk_rows < rows ? (c + 1) * chunk_rows : rows;
        if (dgamma) dgamma_acc = parts + (size_t)c * n_parts * dim;
        if (dbeta) dbeta_acc = parts + ((size_t)c * n_parts + (dgamma != NULL)) * dim;
        if (parts) memset(parts + (size_t)c * n_parts * dim, 0, (size_t)n_parts * dim * sizeof(float));
        for (int r = c * chunk_rows; r < r_end; r++) {
            size_t off = (size_t)r * (size_t)dim;
            if (r + 1 < rows) {
                mlk__norm_prefetch(x + off + dim, dim);
                mlk__norm_prefetch(dy + off + dim, dim);
            }
            mlk__norm_bwd_row(x + off, dy + off, gamma, dim, mean ? mean[r] : 0.0f, rstd[r],
                              mean != NULL, dx + off, dgamma_acc, dbeta_acc, mlk__norm_stream(count));
        }
    }
    if (parts) { /* column blocks in parallel, chunks in order within each */
        int n_cols = n_parts * dim, n_blocks = (n_cols + 63) / 64;
        MLK__OMP(omp parallel for schedule(static) if (count > MLK__PAR_NORM_FLOATS))
        for (int blk = 0; blk < n_blocks; blk++) {
            double col_sum[64];
            int j0 = blk * 64, width = n_cols - j0 < 64 ? n_cols - j0 : 64;
            for (int j = 0; j < width; j++) col_sum[j] = 0.0;
            for (int c = 0; c < n_chunks; c++) {
                const float *part = parts + (size_t)c * n_cols + j0;
                for (int j = 0; j < width; j++) col_sum[j] += part[j];
            }
            for (int j = 0; j < width; j++) {
                int col = (j0 + j) % dim;
                if (j0 + j < dim && dgamma) dgamma[col] = (float)col_sum[j];
                else dbeta[col] = (float)col_sum[j];
            }
        }
        mlk__free(parts);
    }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_layernorm_fwd(int rows, int dim, const float *x,
    const float *gamma, const float *beta, float eps,
    float *y, float *mean, float *rstd)
{
    return mlk__norm_fwd(rows, dim, x, gamma, beta, eps, 1, y, mean, rstd);
}

MLKERN_DEF mlk_status mlk_layernorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *mean, const float *rstd,
    const float *dy, float *dx, float *dgamma, float *dbeta)
{
    if (!mean) return MLK_ERR_NULL;
    return mlk__norm_bwd(rows, dim, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
}

MLKERN_DEF mlk_status mlk_rmsnorm_fwd(int rows, int dim, const float *x,
    const float *gamma, float eps, float *y, float *rstd)
{
    return mlk__norm_fwd(rows, dim, x, gamma, NULL, eps, 0, y, NULL, rstd);
}

MLKERN_DEF mlk_status mlk_rmsnorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *rstd, const float *dy,
    float *dx, float *dgamma)
{
    return mlk__norm_bwd(rows, dim, x, gamma, NULL, rstd, dy, dx, dgamma, NULL);
}
/* ======================================================================
   softmax, top-k, sampling
   ====================================================================== */

/* mlk__softmax_scan reads a row once: a running max m and a running sum l of
   exp((x - m) / T), rescaled by exp((m_old - m_new) / T) when the max grows,
   while a candidate buffer keeps the k largest logits. The scan goes in
   blocks of 64 logits; after warm-up almost no block holds a logit above the
   buffer's floor, so the buffer is touched rarely. Top-k is that one pass;
   softmax and sampling without top_k/top_p add a pass that writes or draws. */

/* (logit, index) pairs packed in one 64-bit key that orders them as the
   output does: the float's bits mapped to an unsigned order (-0 taken as +0)
   above the complemented index, so a larger key is a larger logit or, for
   equal logits, the lower index. Keys are unique, as indices are. */
static uint64_t mlk__softmax_key(float v, int32_t idx)
{
    uint32_t u, negative;
    v += 0.0f; /* -0 becomes +0 */
    memcpy(&u, &v, sizeof u);
    negative = (uint32_t)0 - (u >> 31); /* branch-free: keys are made for lanes not kept too */
    u ^= negative | 0x80000000u;
    return (uint64_t)u << 32 | (uint32_t)~(uint32_t)idx;
}

static float mlk__softmax_key_val(uint64_t key)
{
    uint32_t u = (uint32_t)(key >> 32);
    float v;
    u = (u & 0x80000000u) ? u & 0x7FFFFFFFu : ~u;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* The cap best keys seen so far plus unsorted candidates, room in all.
   Candidates above floor_val (the cap-th best logit at the last flush) are
   appended without comparisons among themselves; when the buffer fills, a
   selection keeps the cap best and raises the floor. A later logit equal to
   floor_val has a higher index, so it loses to the floor's key: '>' is exact.
   A heap would pay a branchy sift-down for each of the ~k(1 + ln(n/k)) logits
   above its minimum, the larger part of the time on 32000-logit rows.
   The floor never drops below gate, a bound on the cap-th best logit known
   before the scan (mlk__softmax_best_start), so few logits are appended. */
typedef struct mlk__softmax_best { uint64_t *key; int size, cap, room; float floor_val, gate; } mlk__softmax_best;

/* Buffer length for cap kept keys of a row of n: room to append about a
   hundred candidates (or cap, if more), and a whole block
   (MLK__SOFTMAX_BLOCK) more, between two selections; never more than n, as
   only the n - cap later logits are appended. The floor rises at each
   selection, so selecting more often appends fewer candidates: 96 rather
   than 448 made k = 50 over 32000-262144 logits 5-9% faster. */
static int mlk__softmax_room(int cap, int n)
{
    int more = cap > 96 ? cap : 96;
    return n - cap - 64 > more ? cap + more + 64 : n;
}

/* Quickselect: reorders key[0..size) so key[0..k) are the k largest and
   key[k - 1] is the k-th largest. Median-of-3 pivots; keys are distinct.
   The partition swaps unconditionally and moves its boundary by the
   comparison, so random keys cost no mispredicted branches. */
static void mlk__softmax_select(uint64_t *key, int size, int k)
{
    int lo = 0, hi = size - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, pos;
        uint64_t a = key[lo], b = key[mid], c = key[hi], pivot;
        int at = a < b ? (b < c ? mid : a < c ? hi : lo) : (a < c ? lo : b < c ? hi : mid);
        pivot = key[at];
        key[at] = key[hi];
        key[hi] = pivot;
        pos = lo;
        for (int i = lo; i < hi; i++) { /* descending: [lo, pos) > pivot */
            uint64_t moving = key[i];
            key[i] = key[pos];
            key[pos] = moving;
            pos += moving > pivot;
        }
        key[hi] = key[pos];
        key[pos] = pivot;
        if (pos == k - 1) break;
        if (pos > k - 1) hi = pos - 1;
        else lo = pos + 1;
    }
}

/* Keeps the cap best keys and raises the floor to the worst of them. */
static void mlk__softmax_best_flush(mlk__softmax_best *b)
{
    mlk__softmax_select(b->key, b->size, b->cap);
    b->size = b->cap;
    b->floor_val = mlk__softmax_key_val(b->key[b->cap - 1]);
    b->floor_val = b->floor_val > b->gate ? b->floor_val : b->gate;
}

/* max of s[0..n) (-inf for n = 0; a NaN may or may not come through:
   callers find NaN rows apart) */
static float mlk__row_max(const float *s, int n)
{
    float m = -INFINITY;
    int j = 0;
#if defined(MLK__AVX512)
    {
        __m512 vm = _mm512_set1_ps(-INFINITY);
        for (; j <= n - 16; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(s + j));
        m = _mm512_reduce_max_ps(vm);
    }
#endif
#if defined(MLK__AVX2)
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (; j <= n - 8; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
    {
        const float m8 = mlk__hmax8(vm);
        m = m8 > m ? m8 : m;
    }
#elif defined(MLK__NEON)
    float32x4_t vm = vdupq_n_f32(-INFINITY);
    for (; j <= n - 4; j += 4) vm = vmaxq_f32(vm, vld1q_f32(s + j));
    m = vmaxvq_f32(vm);
#endif
    for (; j < n; j++) m = s[j] > m ? s[j] : m;
    return m;
}

/* A lower bound on the cap-th largest of x[0..n): the rows split into
   groups, each group's maximum is a distinct logit, so at least cap logits
   reach the cap-th largest of the group maxima. With 2 cap groups (of 64
   logits or more) about 1.4 cap logits reach it, against ~cap (1 + ln(n /
   cap)) above a floor that rises from the first cap logits. Ties at the
   bound must still be appended, so the gate is the float just below it.
   It costs a read of the row, which then stays in L2 for the scan up to
   MLK__SOFTMAX_GATE_MAX logits; on longer rows the second read from L3
   costs more than the gate saves (k = 50: 64 x 32000 0.85-0.92x the time
   without it, 64 x 128256 1.24x, 8 x 262144 1.11-1.14x on Zen 3). -inf
   (no gate) there and when the row is too short for cap groups. The group
   keys use the key buffer, which holds room >= 2 cap keys (or n, more than
   n / 64). */
#define MLK__SOFTMAX_GATE_MAX 65536

static float mlk__softmax_gate(mlk__softmax_best *b, const float *x, int n)
{
    const int groups = n / 64 < 2 * b->cap ? n / 64 : 2 * b->cap;
    if (groups < b->cap || n > MLK__SOFTMAX_GATE_MAX) return -INFINITY;
    for (int g = 0; g < groups; g++) {
        const int lo = (int)((long long)n * g / groups), hi = (int)((long long)n * (g + 1) / groups);
        b->key[g] = mlk__softmax_key(mlk__row_max(x + lo, hi - lo), g);
    }
    mlk__softmax_select(b->key, groups, b->cap);
    return nextafterf(mlk__softmax_key_val(b->key[b->cap - 1]), -INFINITY);
}

/* Starts the buffer with the first cap logits, all kept whatever their
   value, and the gate of the row x[0..n). */
static void mlk__softmax_best_start(mlk__softmax_best *b, const float *x, int n)
{
    uint64_t worst = ~(uint64_t)0;
    b->gate = mlk__softmax_gate(b, x, n);
    for (int i = 0; i < b->cap; i++) {
        b->key[i] = mlk__softmax_key(x[i], i);
        worst = b->key[i] < worst ? b->key[i] : worst;
    }
    b->size = b->cap;
    b->floor_val = mlk__softmax_key_val(worst);
    b->floor_val = b->floor_val > b->gate ? b->floor_val : b->gate;
}

static void mlk__softmax_sift_down(uint64_t *key, int pos, int size)
{
    uint64_t moving = key[pos];
    for (;;) {
        int child = 2 * pos + 1;
        if (child >= size) break;
        child += (child + 1 < size) & (key[child + 1 < size ? child + 1 : child] < key[child]); /* no branch */
        if (key[child] >= moving) break;
        key[pos] = key[child];
        pos = child;
    }
    key[pos] = moving;
}

/* Selects the cap best, heapsorts them (a min-heap, so the worst ends last)
   and unpacks the keys into val/idx from best to worst. */
static void mlk__softmax_best_sort(mlk__softmax_best *b, float *val, int32_t *idx)
{
    if (b->size > b->cap) mlk__softmax_best_flush(b);
    for (int pos = b->size / 2 - 1; pos >= 0; pos--) mlk__softmax_sift_down(b->key, pos, b->size);
    for (int end = b->size - 1; end > 0; end--) {
        uint64_t worst = b->key[0];
        b->key[0] = b->key[end];
        b->key[end] = worst;
        mlk__softmax_sift_down(b->key, 0, end);
    }
    for (int j = 0; j < b->size; j++) {
        val[j] = mlk__softmax_key_val(b->key[j]);
        idx[j] = (int32_t)~(uint32_t)b->key[j];
    }
}

#define MLK__SOFTMAX_BLOCK 64

#if defined(MLK__AVX2) || defined(MLK__NEON)
/* Position of the lowest set bit of a nonzero word (de Bruijn multiply). */
static int mlk__softmax_lowest_bit(uint64_t word)
{
    static const unsigned char pos[64] = {
        0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24,
        18, 12, 5, 63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11, 46, 26, 40, 15, 34, 20, 31, 10, 25,
        14, 19, 9, 13, 8, 7, 6};
    return pos[((word & (0 - word)) * 0x03F79D71B4CB0A89ull) >> 58];
}
#endif

/* One pass over a row: *row_max = max x, *l_sum = sum exp((x - max) * inv_t);
   best (NULL: none) ends up holding the cap largest logits among its keys.
   Returns 0 for a NaN or +inf logit or a row that is all -inf. Each block's
   sum is taken in float and added to l in double, so l keeps growing (and
   stays accurate) on rows of any length up to INT_MAX. */
static int mlk__softmax_scan(const float *x, int n, float inv_t, mlk__softmax_best *best,
                        float *row_max, double *l_sum)
{
    float m = -INFINITY;
    double l = 0.0;
    int bad = 0;
    if (best) mlk__softmax_best_start(best, x, n);
#if defined(MLK__AVX512)
    { /* the AVX2 scan below on 16 lanes: a block is 4 vectors */
        const __m512 inv = _mm512_set1_ps(inv_t), pinf = _mm512_set1_ps(INFINITY);
        __m512 m16 = _mm512_set1_ps(-INFINITY);
        __m512d l_lo = _mm512_setzero_pd(), l_hi = _mm512_setzero_pd(); /* lanes 0-7, 8-15 */
        __mmask16 bad16 = 0;
        float lane_m[16], tail[MLK__SOFTMAX_BLOCK];
        double lane_l[16];
        for (int i = 0, len; i < n; i += len) {
            const float *block = x + i;
            __m512 v[4], block_max;
            len = n - i < MLK__SOFTMAX_BLOCK ? n - i : MLK__SOFTMAX_BLOCK;
            if (len < MLK__SOFTMAX_BLOCK) {
                for (int j = 0; j < MLK__SOFTMAX_BLOCK; j++) tail[j] = j < len ? block[j] : -INFINITY;
                block = tail;
            }
            for (int j = 0; j < 4; j++) v[j] = _mm512_loadu_ps(block + 16 * j);
            block_max = _mm512_max_ps(_mm512_max_ps(v[0], v[1]), _mm512_max_ps(v[2], v[3]));
            bad16 |= _mm512_cmp_ps_mask(block_max, pinf, _CMP_EQ_OQ) | _mm512_cmp_ps_mask(v[0], v[1], _CMP_UNORD_Q) |
                     _mm512_cmp_ps_mask(v[2], v[3], _CMP_UNORD_Q);
            if (best && i + len > best->cap &&
                _mm512_cmp_ps_mask(block_max, _mm512_set1_ps(best->floor_val), _CMP_GT_OQ)) {
                __m512 floor16;
                uint64_t above = 0;
                if (best->size > best->room - MLK__SOFTMAX_BLOCK) mlk__softmax_best_flush(best);
                floor16 = _mm512_set1_ps(best->floor_val);
                for (int j = 0; j < 4; j++)
                    above |= (uint64_t)_mm512_cmp_ps_mask(v[j], floor16, _CMP_GT_OQ) << 16 * j;
                if (i < best->cap) above &= ~(uint64_t)0 << (best->cap - i);
                for (; above; above &= above - 1) {
                    int b = mlk__softmax_lowest_bit(above);
                    best->key[best->size++] = mlk__softmax_key(block[b], i + b);
                }
            }
            if (_mm512_cmp_ps_mask(block_max, m16, _CMP_GT_OQ)) {
                __m512 new_m = _mm512_max_ps(m16, block_max);
                __m512 f = mlk__exp16(_mm512_mul_ps(_mm512_sub_ps(m16, new_m), inv));
                l_lo = _mm512_mul_pd(l_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(f)));
                l_hi = _mm512_mul_pd(l_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1))));
                m16 = new_m;
            }
            {
                __m512 e0 = _mm512_add_ps(mlk__exp16(_mm512_mul_ps(_mm512_sub_ps(v[0], m16), inv)),
                                          mlk__exp16(_mm512_mul_ps(_mm512_sub_ps(v[1], m16), inv)));
                __m512 e1 = _mm512_add_ps(mlk__exp16(_mm512_mul_ps(_mm512_sub_ps(v[2], m16), inv)),
                                          mlk__exp16(_mm512_mul_ps(_mm512_sub_ps(v[3], m16), inv)));
                __m512 block_l = _mm512_add_ps(e0, e1);
                l_lo = _mm512_add_pd(l_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(block_l)));
                l_hi = _mm512_add_pd(l_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(block_l), 1))));
            }
        }
        bad = bad16 != 0;
        _mm512_storeu_ps(lane_m, m16);
        _mm512_storeu_pd(lane_l, l_lo);
        _mm512_storeu_pd(lane_l + 8, l_hi);
        for (int j = 0; j < 16; j++) m = lane_m[j] > m ? lane_m[j] : m;
        if (m > -INFINITY)
            for (int j = 0; j < 16; j++)
                if (lane_m[j] > -INFINITY) l += lane_l[j] * mlk__expf((lane_m[j] - m) * inv_t);
    }
#elif defined(MLK__AVX2)
    {
        const __m256 inv = _mm256_set1_ps(inv_t), pinf = _mm256_set1_ps(INFINITY);
        __m256 m8 = _mm256_set1_ps(-INFINITY), bad8 = _mm256_setzero_ps();
        __m256d l_lo = _mm256_setzero_pd(), l_hi = _mm256_setzero_pd(); /* lanes 0-3, 4-7 */
        float lane_m[8], tail[MLK__SOFTMAX_BLOCK];
        double lane_l[8];
        for (int i = 0, len; i < n; i += len) {
            const float *block = x + i;
            __m256 v[8], block_max;
            len = n - i < MLK__SOFTMAX_BLOCK ? n - i : MLK__SOFTMAX_BLOCK;
            if (len < MLK__SOFTMAX_BLOCK) {
                for (int j = 0; j < MLK__SOFTMAX_BLOCK; j++) tail[j] = j < len ? block[j] : -INFINITY;
                block = tail;
            }
            for (int j = 0; j < 8; j++) v[j] = _mm256_loadu_ps(block + 8 * j);
            block_max = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])),
                                      _mm256_max_ps(_mm256_max_ps(v[4], v[5]), _mm256_max_ps(v[6], v[7])));
            /* NaN anywhere (max_ps may drop it, so pairwise), or +inf in the max */
            bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(block_max, pinf, _CMP_EQ_OQ));
            for (int j = 0; j < 8; j += 2) bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(v[j], v[j + 1], _CMP_UNORD_Q));
            /* candidates before the exps, so the block's vectors die with
               them rather than living across them (spilled: 10% slower) */
            if (best && i + len > best->cap &&
                _mm256_movemask_ps(_mm256_cmp_ps(block_max, _mm256_set1_ps(best->floor_val), _CMP_GT_OQ))) {
                __m256 floor8;
                uint64_t above = 0; /* bit b: logit i + b is above the floor (tail lanes are -inf) */
                if (best->size > best->room - MLK__SOFTMAX_BLOCK) mlk__softmax_best_flush(best);
                floor8 = _mm256_set1_ps(best->floor_val);
                for (int j = 0; j < 8; j++)
                    above |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v[j], floor8, _CMP_GT_OQ)) << 8 * j;
                if (i < best->cap) above &= ~(uint64_t)0 << (best->cap - i);
                for (; above; above &= above - 1) { /* one branch per block, not per lane */
                    int b = mlk__softmax_lowest_bit(above);
                    best->key[best->size++] = mlk__softmax_key(block[b], i + b);
                }
            }
            if (_mm256_movemask_ps(_mm256_cmp_ps(block_max, m8, _CMP_GT_OQ))) {
                __m256 new_m = _mm256_max_ps(m8, block_max); /* -inf - -inf is NaN: exp8 gives 0 */
                __m256 f = mlk__exp8(_mm256_mul_ps(_mm256_sub_ps(m8, new_m), inv));
                l_lo = _mm256_mul_pd(l_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
                l_hi = _mm256_mul_pd(l_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
                m8 = new_m;
            }
            { /* the block's sum as a tree: shorter add chains, smaller rounding error */
                __m256 e[4], block_l;
                for (int j = 0; j < 4; j++)
                    e[j] = _mm256_add_ps(mlk__exp8(_mm256_mul_ps(_mm256_sub_ps(v[2 * j], m8), inv)),
                                         mlk__exp8(_mm256_mul_ps(_mm256_sub_ps(v[2 * j + 1], m8), inv)));
                block_l = _mm256_add_ps(_mm256_add_ps(e[0], e[1]), _mm256_add_ps(e[2], e[3]));
                l_lo = _mm256_add_pd(l_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(block_l)));
                l_hi = _mm256_add_pd(l_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(block_l, 1)));
            }
        }
        bad = _mm256_movemask_ps(bad8) != 0;
        _mm256_storeu_ps(lane_m, m8);
        _mm256_storeu_pd(lane_l, l_lo);
        _mm256_storeu_pd(lane_l + 4, l_hi);
        for (int j = 0; j < 8; j++) m = lane_m[j] > m ? lane_m[j] : m;
        if (m > -INFINITY)
            for (int j = 0; j < 8; j++)
                if (lane_m[j] > -INFINITY) l += lane_l[j] * mlk__expf((lane_m[j] - m) * inv_t);
    }
#elif defined(MLK__NEON)
    { /* the AVX2 scan above on 4 lanes: a block is 16 quads. NEON's max
         keeps NaN, so one compare of the block max finds NaN and +inf. */
        const float32x4_t pinf = vdupq_n_f32(INFINITY);
        const uint32x4_t lane_bit = {1, 2, 4, 8};
        float32x4_t m4 = vdupq_n_f32(-INFINITY);
        float64x2_t l_lo = vdupq_n_f64(0.0), l_hi = l_lo; /* lanes 0-1, 2-3 */
        uint32x4_t bad4 = vdupq_n_u32(0);
        float lane_m[4], tail[MLK__SOFTMAX_BLOCK];
        double lane_l[4];
        for (int i = 0, len; i < n; i += len) {
            const float *block = x + i;
            float32x4_t v[16], block_max, block_l;
            len = n - i < MLK__SOFTMAX_BLOCK ? n - i : MLK__SOFTMAX_BLOCK;
            if (len < MLK__SOFTMAX_BLOCK) {
                for (int j = 0; j < MLK__SOFTMAX_BLOCK; j++) tail[j] = j < len ? block[j] : -INFINITY;
                block = tail;
            }
            for (int j = 0; j < 16; j++) v[j] = vld1q_f32(block + 4 * j);
            block_max = v[0];
            for (int j = 1; j < 16; j++) block_max = vmaxq_f32(block_max, v[j]);
            bad4 = vorrq_u32(bad4, vmvnq_u32(vcltq_f32(block_max, pinf)));
            if (best && i + len > best->cap && vmaxvq_u32(vcgtq_f32(block_max, vdupq_n_f32(best->floor_val)))) {
                float32x4_t floor4;
                uint64_t above = 0;
                if (best->size > best->room - MLK__SOFTMAX_BLOCK) mlk__softmax_best_flush(best);
                floor4 = vdupq_n_f32(best->floor_val);
                for (int j = 0; j < 16; j++)
                    above |= (uint64_t)vaddvq_u32(vandq_u32(vcgtq_f32(v[j], floor4), lane_bit)) << 4 * j;
                if (i < best->cap) above &= ~(uint64_t)0 << (best->cap - i);
                for (; above; above &= above - 1) {
                    int b = mlk__softmax_lowest_bit(above);
                    best->key[best->size++] = mlk__softmax_key(block[b], i + b);
                }
            }
            if (vmaxvq_u32(vcgtq_f32(block_max, m4))) {
                float32x4_t new_m = vmaxq_f32(m4, block_max); /* -inf - -inf is NaN: exp4 gives 0 */
                float32x4_t f = mlk__exp4(vmulq_n_f32(vsubq_f32(m4, new_m), inv_t));
                l_lo = vmulq_f64(l_lo, vcvt_f64_f32(vget_low_f32(f)));
                l_hi = vmulq_f64(l_hi, vcvt_high_f64_f32(f));
                m4 = new_m;
            }
            { /* the block's sum as a tree */
                float32x4_t e[8];
                for (int j = 0; j < 8; j++)
                    e[j] = vaddq_f32(mlk__exp4(vmulq_n_f32(vsubq_f32(v[2 * j], m4), inv_t)),
                                     mlk__exp4(vmulq_n_f32(vsubq_f32(v[2 * j + 1], m4), inv_t)));
                block_l = vaddq_f32(vaddq_f32(vaddq_f32(e[0], e[1]), vaddq_f32(e[2], e[3])),
                                    vaddq_f32(vaddq_f32(e[4], e[5]), vaddq_f32(e[6], e[7])));
                l_lo = vaddq_f64(l_lo, vcvt_f64_f32(vget_low_f32(block_l)));
                l_hi = vaddq_f64(l_hi, vcvt_high_f64_f32(block_l));
            }
        }
        bad = vmaxvq_u32(bad4) != 0;
        vst1q_f32(lane_m, m4);
        vst1q_f64(lane_l, l_lo);
        vst1q_f64(lane_l + 2, l_hi);
        for (int j = 0; j < 4; j++) m = lane_m[j] > m ? lane_m[j] : m;
        if (m > -INFINITY)
            for (int j = 0; j < 4; j++)
                if (lane_m[j] > -INFINITY) l += lane_l[j] * mlk__expf((lane_m[j] - m) * inv_t);
    }
#else
    for (int i = 0, len; i < n; i += len) {
        const float *block = x + i;
        float block_max = -INFINITY;
        len = n - i < MLK__SOFTMAX_BLOCK ? n - i : MLK__SOFTMAX_BLOCK;
        for (int j = 0; j < len; j++) {
            if (!(block[j] < INFINITY)) bad = 1;
            if (block[j] > block_max) block_max = block[j];
        }
        if (bad) break;
        if (block_max > m) {
            if (m > -INFINITY) l *= mlk__expf((m - block_max) * inv_t);
            m = block_max;
        }
        if (m > -INFINITY) {
            float block_l = 0.0f; /* a sum per block keeps the rounding error of l small */
            for (int j = 0; j < len; j++) block_l += mlk__expf((block[j] - m) * inv_t);
            l += block_l;
        }
        if (best && i + len > best->cap && block_max > best->floor_val)
            for (int j = 0; j < len; j++) /* the first cap indices were taken up front */
                if (i + j >= best->cap && block[j] > best->floor_val) {
                    if (best->size == best->room) mlk__softmax_best_flush(best);
                    best->key[best->size++] = mlk__softmax_key(block[j], i + j);
                }
    }
#endif
    *row_max = m;
    *l_sum = l;
    return !bad && m > -INFINITY;
}

/* splitmix64 draw number `draw` (0, 1, ...) after *state, as a double in [0, 1) */
static double mlk__softmax_uniform(uint64_t state, uint64_t draw)
{
    uint64_t z = state + (draw + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* Row-wise mlk__softmax_scan into row_max / l_sum; returns MLK_ERR_VALUE if any row is bad. */
static mlk_status mlk__softmax_scan_rows(int rows, int n, const float *x, float *row_max, double *l_sum)
{
    int n_bad = 0;
    MLK__OMP(omp parallel for schedule(static) if ((size_t)rows * n > MLK__PAR_SOFTMAX_FLOATS) reduction(+:n_bad))
    for (int r = 0; r < rows; r++)
        n_bad += !mlk__softmax_scan(x + (size_t)r * (size_t)n, n, 1.0f, NULL, &row_max[r], &l_sum[r]);
    return n_bad ? MLK_ERR_VALUE : MLK_OK;
}

/* Softmax needs every row's max and sum before it writes (a NaN row must
   leave y untouched), so it reads x twice: once to scan, once to write. */
static mlk_status mlk__softmax_full(int rows, int n, const float *x, float *y, int log_out)
{
    size_t count;
    double *l_sums;
    float *row_maxes;
    mlk_status st;
    if (!x || !y) return MLK_ERR_NULL;
    if (rows < 1 || n < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, n, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    l_sums = (double *)mlk__alloc((size_t)rows * (sizeof(double) + sizeof(float)));
    if (!l_sums) return MLK_ERR_NOMEM;
    row_maxes = (float *)(void *)(l_sums + rows);
    st = mlk__softmax_scan_rows(rows, n, x, row_maxes, l_sums);
    if (st == MLK_OK) {
        MLK__OMP(omp parallel for schedule(static) if (count > MLK__PAR_SOFTMAX_FLOATS))
        for (int r = 0; r < rows; r++) {
            const float *x_row = x + (size_t)r * (size_t)n;
            float *y_row = y + (size_t)r * (size_t)n;
            float row_max = row_maxes[r], l_sum = (float)l_sums[r], log_l = (float)log(l_sums[r]);
            int i = 0;
#if defined(MLK__AVX2)
            const __m256 mv = _mm256_set1_ps(row_max), lv = _mm256_set1_ps(log_out ? log_l : l_sum);
            for (; i <= n - 8; i += 8) {
                __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x_row + i), mv);
                _mm256_storeu_ps(y_row + i, log_out ? _mm256_sub_ps(d, lv) : _mm256_div_ps(mlk__exp8(d), lv));
            }
#endif
            for (; i < n; i++) {
                float d = x_row[i] - row_max;
                y_row[i] = log_out ? d - log_l : mlk__expf(d) / l_sum;
            }
        }
    }
    mlk__free(l_sums);
    return st;
}

MLKERN_DEF mlk_status mlk_softmax(int rows, int n, const float *x, float *y)
{
    return mlk__softmax_full(rows, n, x, y, 0);
}

MLKERN_DEF mlk_status mlk_log_softmax(int rows, int n, const float *x, float *y)
{
    return mlk__softmax_full(rows, n, x, y, 1);
}

/* Both top-k kernels: results go to scratch first and are copied out only
   when every row was valid (outputs untouched on MLK_ERR_VALUE). */
static mlk_status mlk__softmax_topk(int rows, int n, const float *logits, float temperature,
                               int k, float *out, int32_t *idx, int log_out)
{
    size_t count, out_count, need;
    mlk__arena arena;
    mlk__piece pc[3];
    int threads = mlk__max_threads(), room;
    uint64_t *keys;
    float *top_val;
    int32_t *top_idx;
    int n_bad = 0;
    mlk_status st;
    if (!logits || !out || !idx) return MLK_ERR_NULL;
    if (rows < 1 || n < 1 || k < 1 || k > n) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, n, 1, 1, sizeof(float), &count) ||
        !mlk__count4(rows, k, 1, 1, sizeof(float), &out_count)) return MLK_ERR_OVERFLOW;
    if (!(temperature > 0.0f && 1.0f / temperature < INFINITY) || temperature == INFINITY) return MLK_ERR_ARG;
    room = mlk__softmax_room(k, n);
    if (!mlk__count4(threads, room, 1, 1, sizeof(uint64_t), &need)) return MLK_ERR_OVERFLOW;
    pc[0] = mlk__piece_of(need * sizeof(uint64_t)); /* candidate keys, one buffer per thread */
    pc[1] = mlk__piece_of(out_count * sizeof(float));
    pc[2] = mlk__piece_of(out_count * sizeof(int32_t));
    if ((st = mlk__arena_carve(&arena, NULL, pc, 3)) != MLK_OK) return st;
    keys = (uint64_t *)pc[0].ptr;
    top_val = (float *)pc[1].ptr;
    top_idx = (int32_t *)pc[2].ptr;
    MLK__OMP(omp parallel for schedule(static) num_threads(threads) if (count > MLK__PAR_SOFTMAX_FLOATS) reduction(+:n_bad))
    for (int r = 0; r < rows; r++) {
        mlk__softmax_best best;
        float row_max, inv_t = 1.0f / temperature, log_l, *val = top_val + (size_t)r * k;
        double l_sum;
        best.key = keys + (size_t)mlk__thread_id() * room;
        best.cap = k;
        best.room = room;
        if (!mlk__softmax_scan(logits + (size_t)r * (size_t)n, n, inv_t, &best, &row_max, &l_sum)) {
            n_bad++;
            continue;
        }
        mlk__softmax_best_sort(&best, val, top_idx + (size_t)r * k);
        log_l = (float)log(l_sum);
        for (int j = 0; j < k; j++) {
            float d = (val[j] - row_max) * inv_t;
            val[j] = log_out ? d - log_l : (float)(exp((double)d) / l_sum);
        }
    }
    if (n_bad == 0) {
        memcpy(out, top_val, out_count * sizeof(float));
        memcpy(idx, top_idx, out_count * sizeof(int32_t));
    }
    mlk__arena_done(&arena);
    return n_bad ? MLK_ERR_VALUE : MLK_OK;
}

MLKERN_DEF mlk_status mlk_topk_softmax(int rows, int n, const float *logits,
    float temperature, int k, float *probs, int32_t *idx)
{
    return mlk__softmax_topk(rows, n, logits, temperature, k, probs, idx, 0);
}

MLKERN_DEF mlk_status mlk_topk_log_softmax(int rows, int n, const float *logits,
    int k, float *logprobs, int32_t *idx)
{
    return mlk__softmax_topk(rows, n, logits, 1.0f, k, logprobs, idx, 1);
}

/* top_p without top_k first takes this many candidates (then 4x as many,
   ...) until they hold top_p of the mass: the kept prefix is the same as a
   sort of the whole row would give, at the cost of a selection. */
#define MLK__SOFTMAX_TOP_P_CANDIDATES 256

/* One row of mlk_sample with uniform draw u; best has best->room keys, val
   and idx room for best->cap candidates (the whole row for top_p alone). Weights are w = exp((x - max) / T),
   so the most probable token has w = 1 and min_p keeps w >= min_p. Returns
   -1 for a bad row. */
static int32_t mlk__softmax_sample_row(const float *x, int n, const mlk_sampler *s, double u,
                                  mlk__softmax_best *best, float *val, int32_t *idx)
{
    float row_max, inv_t;
    double l_sum;
    int top_k = s->top_k > 0 && s->top_k < n ? s->top_k : 0;
    if (s->temperature == 0.0f) { /* greedy: the best one is the argmax, ties to the lower index */
        best->cap = 1;
        if (!mlk__softmax_scan(x, n, 1.0f, best, &row_max, &l_sum)) return -1;
        mlk__softmax_best_sort(best, val, idx);
        return idx[0];
    }
    inv_t = 1.0f / s->temperature;
    if (top_k || s->top_p < 1.0f) {
        /* candidates sorted by probability; top_p keeps the shortest prefix
           reaching top_p of the mass, min_p a further prefix */
        double total = 0.0, kept = 0.0, target;
        int n_keep = 0;
        if (top_k) {
            best->cap = top_k;
            if (!mlk__softmax_scan(x, n, inv_t, best, &row_max, &l_sum)) return -1;
            mlk__softmax_best_sort(best, val, idx);
            for (int j = 0; j < best->size; j++) total += val[j] = mlk__expf((val[j] - row_max) * inv_t);
        } else { /* top_p alone: the most probable MLK__SOFTMAX_TOP_P_CANDIDATES, more only if their mass falls short */
            double cand = 0.0;
            if (!mlk__softmax_scan(x, n, inv_t, NULL, &row_max, &l_sum)) return -1;
            for (int i = 0; i < n; i++) total += mlk__expf((x[i] - row_max) * inv_t);
            for (best->cap = n < MLK__SOFTMAX_TOP_P_CANDIDATES ? n : MLK__SOFTMAX_TOP_P_CANDIDATES;;
                 best->cap = best->cap > n / 4 ? n : best->cap * 4) {
                best->room = mlk__softmax_room(best->cap, n);
                mlk__softmax_scan(x, n, inv_t, best, &row_max, &l_sum);
                mlk__softmax_best_sort(best, val, idx);
                cand = 0.0;
                for (int j = 0; j < best->size; j++) cand += val[j] = mlk__expf((val[j] - row_max) * inv_t);
                if (cand >= (double)s->top_p * total || best->cap == n) break;
            }
        }
        while (n_keep < best->size && (n_keep == 0 || (kept < (double)s->top_p * total &&
               val[n_keep] >= s->min_p && val[n_keep] > 0.0f)))
            kept += val[n_keep++];
        target = u * kept;
        for (int j = 0; j < n_keep - 1; j++) {
            target -= val[j];
            if (target < 0.0) return idx[j];
        }
        return idx[n_keep - 1];
    } else {
        /* no sorting needed: draw over the tokens with w >= min_p in index order */
        double kept = 0.0, target;
        int32_t last = -1;
        if (!mlk__softmax_scan(x, n, inv_t, NULL, &row_max, &l_sum)) return -1;
        for (int i = 0; i < n; i++) {
            float w = mlk__expf((x[i] - row_max) * inv_t);
            if (w >= s->min_p && w > 0.0f) kept += w;
        }
        target = u * kept;
        for (int i = 0; i < n; i++) {
            float w = mlk__expf((x[i] - row_max) * inv_t);
            if (w >= s->min_p && w > 0.0f) {
                last = i;
                target -= w;
                if (target < 0.0) return i;
            }
        }
        return last;
    }
}

/* The documented ranges of a sampler. */
static int mlk__sampler_ok(const mlk_sampler *s)
{
    return (s->temperature == 0.0f || 1.0f / s->temperature < INFINITY) && s->temperature >= 0.0f &&
           s->temperature != INFINITY && s->top_k >= 0 && s->top_p > 0.0f && s->min_p >= 0.0f && s->min_p <= 1.0f;
}

/* Candidates a row needs: the top_k, or the whole row for top_p alone. */
static int mlk__sampler_candidates(const mlk_sampler *s, int n)
{
    return s->temperature == 0.0f ? 1 : s->top_k > 0 && s->top_k < n ? s->top_k : s->top_p < 1.0f ? n : 1;
}

MLKERN_DEF mlk_status mlk_sample(int rows, int n, const float *logits,
    const mlk_sampler *s, uint64_t *rng_state, int32_t *out)
{
    size_t count, need;
    mlk__arena arena;
    mlk__piece pc[4];
    int threads = mlk__max_threads(), cand_cap, room, n_bad = 0;
    uint64_t *cand_key;
    float *cand_val;
    int32_t *cand_idx, *tokens;
    mlk_status st;
    if (!logits || !s || !rng_state || !out) return MLK_ERR_NULL;
    if (rows < 1 || n < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, n, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    if (!mlk__sampler_ok(s)) return MLK_ERR_ARG;
    cand_cap = mlk__sampler_candidates(s, n);
    room = mlk__softmax_room(cand_cap, n);
    if (!mlk__count4(threads, room, 1, 1, sizeof(uint64_t), &need)) return MLK_ERR_OVERFLOW;
    pc[0] = mlk__piece_of(need * sizeof(uint64_t)); /* per thread: candidate keys, values, indices */
    pc[1] = mlk__piece_of((size_t)threads * cand_cap * sizeof(float));
    pc[2] = mlk__piece_of((size_t)threads * cand_cap * sizeof(int32_t));
    pc[3] = mlk__piece_of((size_t)rows * sizeof(int32_t));
    if ((st = mlk__arena_carve(&arena, NULL, pc, 4)) != MLK_OK) return st;
    cand_key = (uint64_t *)pc[0].ptr;
    cand_val = (float *)pc[1].ptr;
    cand_idx = (int32_t *)pc[2].ptr;
    tokens = (int32_t *)pc[3].ptr;
    MLK__OMP(omp parallel for schedule(static) num_threads(threads) if (count > MLK__PAR_SOFTMAX_FLOATS) reduction(+:n_bad))
    for (int r = 0; r < rows; r++) {
        mlk__softmax_best best;
        size_t slot = (size_t)mlk__thread_id() * cand_cap;
        best.key = cand_key + (size_t)mlk__thread_id() * room;
        best.room = room;
        tokens[r] = mlk__softmax_sample_row(logits + (size_t)r * (size_t)n, n, s,
                                       mlk__softmax_uniform(*rng_state, (uint64_t)r), &best,
                                       cand_val + slot, cand_idx + slot);
        n_bad += tokens[r] < 0;
    }
    if (n_bad == 0) {
        memcpy(out, tokens, (size_t)rows * sizeof(int32_t));
        *rng_state += (uint64_t)rows * 0x9E3779B97F4A7C15ull;
    }
    mlk__arena_done(&arena);
    return n_bad ? MLK_ERR_VALUE : MLK_OK;
}

/* Checks one row's parameters of mlk_sample_rows. */
static int mlk__sample_row_ok(const mlk_sample_row *p, int n)
{
    if (!mlk__sampler_ok(&p->sampler) || !(p->repetition_penalty >= 0.0f && p->repetition_penalty <= FLT_MAX) ||
        !(fabsf(p->presence_penalty) <= FLT_MAX) || !(fabsf(p->frequency_penalty) <= FLT_MAX) ||
        p->history_len < 0 || p->n_bias < 0 || (p->history_len > 0 && !p->history) || (p->n_bias > 0 && !p->bias))
        return 0;
    for (int i = 0; i < p->history_len; i++)
        if (p->history[i] < 0 || p->history[i] >= n) return 0;
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias[i].token < 0 || p->bias[i].token >= n || !(p->bias[i].bias < INFINITY)) return 0;
    return 1;
}

/* The row's logits with its bias and penalties applied, in y (counts: n
   ints of scratch, any contents). */
static void mlk__sample_row_logits(const mlk_sample_row *p, const float *x, int n, float *y, int32_t *counts)
{
    const float rp = p->repetition_penalty == 0.0f ? 1.0f : p->repetition_penalty;
    memcpy(y, x, (size_t)n * sizeof(float));
    for (int i = 0; i < p->n_bias; i++) y[p->bias[i].token] += p->bias[i].bias;
    for (int i = 0; i < p->history_len; i++) counts[p->history[i]] = 0;
    for (int i = 0; i < p->history_len; i++) counts[p->history[i]]++;
    for (int i = 0; i < p->history_len; i++) { /* once per distinct token */
        int32_t t = p->history[i];
        float v = y[t];
        if (counts[t] == 0) continue;
        v = v > 0 ? v / rp : v * rp;
        y[t] = v - p->presence_penalty - p->frequency_penalty * (float)counts[t];
        counts[t] = 0;
    }
}

MLKERN_DEF mlk_status mlk_sample_rows(int rows, int n, const float *logits, const mlk_sample_row *params,
    uint64_t *rng, int32_t *out, float *logprob, int top_n, int32_t *top_idx, float *top_logprob)
{
    size_t count, need, tops;
    mlk__arena arena;
    mlk__piece pc[8];
    int threads = mlk__max_threads(), cand_cap = 1, room, n_bad = 0;
    uint64_t *cand_key;
    float *cand_val, *row_buf, *lp_buf, *top_lp_buf;
    int32_t *cand_idx, *tokens, *counts, *top_idx_buf;
    mlk_status st;
    if (!logits || !params || !rng || !out || (top_n > 0 && (!top_idx || !top_logprob))) return MLK_ERR_NULL;
    if (rows < 1 || n < 1 || top_n < 0 || top_n > n) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, n, 1, 1, sizeof(float), &count) ||
        !mlk__count4(rows, top_n, 1, 1, sizeof(float) + sizeof(int32_t), &tops) ||
        !mlk__count4(threads, n, 2, 1, sizeof(float), &need))
        return MLK_ERR_OVERFLOW;
    for (int r = 0; r < rows; r++) {
        int cap = mlk__sampler_candidates(&params[r].sampler, n);
        if (!mlk__sample_row_ok(&params[r], n)) return MLK_ERR_ARG;
        cand_cap = cap > cand_cap ? cap : cand_cap;
    }
    cand_cap = top_n > cand_cap ? top_n : cand_cap;
    room = mlk__softmax_room(cand_cap, n);
    pc[0] = mlk__piece_of((size_t)threads * room * sizeof(uint64_t)); /* per thread: candidates */
    pc[1] = mlk__piece_of((size_t)threads * cand_cap * sizeof(float));
    pc[2] = mlk__piece_of((size_t)threads * cand_cap * sizeof(int32_t));
    pc[3] = mlk__piece_of((size_t)threads * n * sizeof(float));   /* per thread: the penalised row */
    pc[4] = mlk__piece_of((size_t)threads * n * sizeof(int32_t)); /* per thread: history counts */
    pc[5] = mlk__piece_of((size_t)rows * (sizeof(int32_t) + sizeof(float))); /* tokens, logprobs */
    pc[6] = mlk__piece_of(tops * sizeof(int32_t));
    pc[7] = mlk__piece_of(tops * sizeof(float));
    if ((st = mlk__arena_carve(&arena, NULL, pc, 8)) != MLK_OK) return st;
    cand_key = (uint64_t *)pc[0].ptr;
    cand_val = (float *)pc[1].ptr;
    cand_idx = (int32_t *)pc[2].ptr;
    row_buf = (float *)pc[3].ptr;
    counts = (int32_t *)pc[4].ptr;
    tokens = (int32_t *)pc[5].ptr;
    lp_buf = (float *)(void *)(tokens + rows);
    top_idx_buf = (int32_t *)pc[6].ptr;
    top_lp_buf = (float *)pc[7].ptr;
    MLK__OMP(omp parallel for schedule(static) num_threads(threads) if (count > MLK__PAR_SOFTMAX_FLOATS) reduction(+:n_bad))
    for (int r = 0; r < rows; r++) {
        const mlk_sample_row *p = &params[r];
        const int tid = mlk__thread_id();
        const float *x = logits + (size_t)r * (size_t)n;
        float *val = cand_val + (size_t)tid * cand_cap, row_max;
        int32_t *idx = cand_idx + (size_t)tid * cand_cap;
        mlk__softmax_best best;
        double l_sum;
        best.key = cand_key + (size_t)tid * room;
        best.room = room;
        if (p->n_bias > 0 || p->history_len > 0) {
            mlk__sample_row_logits(p, x, n, row_buf + (size_t)tid * n, counts + (size_t)tid * n);
            x = row_buf + (size_t)tid * n;
        }
        tokens[r] = mlk__softmax_sample_row(x, n, &p->sampler, mlk__softmax_uniform(rng[r], 0), &best, val, idx);
        if (tokens[r] < 0) {
            n_bad++;
            continue;
        }
        if (logprob || top_n > 0) { /* log-probabilities under softmax(x / T), before the filters */
            const float inv_t = p->sampler.temperature == 0.0f ? 1.0f : 1.0f / p->sampler.temperature;
            double log_l;
            best.cap = top_n > 0 ? top_n : 1;
            best.room = room;
            mlk__softmax_scan(x, n, inv_t, top_n > 0 ? &best : NULL, &row_max, &l_sum);
            log_l = log(l_sum);
            lp_buf[r] = (float)(((double)x[tokens[r]] - row_max) * inv_t - log_l);
            if (top_n > 0) {
                mlk__softmax_best_sort(&best, val, idx);
                for (int j = 0; j < top_n; j++) {
                    top_idx_buf[(size_t)r * top_n + j] = idx[j];
                    top_lp_buf[(size_t)r * top_n + j] = (float)(((double)val[j] - row_max) * inv_t - log_l);
                }
            }
        }
    }
    if (n_bad == 0) {
        memcpy(out, tokens, (size_t)rows * sizeof(int32_t));
        if (logprob) memcpy(logprob, lp_buf, (size_t)rows * sizeof(float));
        if (top_n > 0) {
            memcpy(top_idx, top_idx_buf, (size_t)rows * top_n * sizeof(int32_t));
            memcpy(top_logprob, top_lp_buf, (size_t)rows * top_n * sizeof(float));
        }
        for (int r = 0; r < rows; r++) rng[r] += 0x9E3779B97F4A7C15ull;
    }
    mlk__arena_done(&arena);
    return n_bad ? MLK_ERR_VALUE : MLK_OK;
}
/* ======================================================================
   attention
   ====================================================================== */


/* ---- streaming interface: the one attention kernel ------------------------

   mlk_attn_fwd and the KV cache's mlk_kv_attn both drive these helpers, so
   masking and the online softmax exist once. To attend nq queries times
   `group` query heads (all sharing one kv head) over keys 0..n_keys-1:

       mlk__attn_mask m;               (visibility of one batch item)
       m.n_keys = n_keys;  m.n_q = n_q_total;  m.causal = 1;  m.window = 0;
       m.tree_parent = parent or NULL; m.tree_depth = depth (checked by
       mlk__tree_check, filled by mlk__tree_depths);

       bytes = mlk__attn_rows_scratch(nq * group, head_dim, tile_kv);
       mlk__attn_rows st;
       mlk__attn_rows_init(&st, &m, q0, nq, group, head_dim, tile_kv, scale,
                           softcap, q, q_head_stride, q_query_stride, scratch);
       mlk__attn_key_range(&m, q0, q0 + nq, &lo, &hi);
       for (kv0 = lo; kv0 < hi; kv0 += nk) {
           nk = min(tile_kv, hi - kv0);
           if (mlk__attn_rows_typed(&st)) {      (decode: few rows)
               st.k_row[j] = key kv0 + j, st.v_row[j] likewise (j < nk);
               st.k_next[j] = key kv0 + nk + j (j < st.nk_next, which may
               stay 0): prefetched while P V computes;
               mlk__attn_rows_update_typed(&st, kv0, nk, type);
           } else {
               mlk__attn_rows_update(&st, kv0, nk, k_rows, ldk, v_rows, ldv, NULL);
           }
       }
       mlk__attn_rows_finish(&st, o, o_head_stride, o_query_stride,
                             lse_or_NULL, lse_head_stride, lse_query_stride);

   q points at query q0 of the group's first head; row r of the task is query
   q0 + r / group of head r % group. k_rows / v_rows point at key kv0 (row j
   of the tile at k_rows + j * ldk, any float memory: a dequantised cache
   tile works); the last argument may instead give the tile's keys already
   transposed ([head_dim][mlk__attn_pad(tile_kv)], key j in column j).
   Strides are in floats. Typed rows are rows of any
   mlk_kv_type layout (a cache block's rows, read in place). scale is
   applied as given (resolve the 0 default before). scratch: pointer-aligned
   memory of the returned size; nothing is allocated. Rows that see no key
   get o = 0, lse = -inf. */

/* Visibility of keys to the queries of one batch item (the rules of the
   attention declarations): query i sits at position i + off,
   off = n_keys - n_q (bottom-right alignment). */
typedef struct mlk__attn_mask {
    int n_keys;             /* valid keys: 0 .. n_keys-1 (kv_len of the item) */
    int n_q;                /* queries of the item (all of them, not a tile) */
    int causal;             /* key j visible to query i iff j <= i + off */
    int window;             /* > 0: sliding window in positions */
    const int *tree_parent; /* NULL or [n_q]: replaces causal; key off + t is node t */
    const int *tree_depth;  /* [n_q] when tree_parent is set */
} mlk__attn_mask;

/* Positions and bounds are long long: a window of INT_MAX ("unbounded")
   plus a position must not overflow. */
static long long mlk__attn_key_pos(const mlk__attn_mask *m, int j)
{
    int off = m->n_keys - m->n_q;
    return (m->tree_parent && j >= off) ? (long long)off + m->tree_depth[j - off] : j;
}

static long long mlk__attn_query_pos(const mlk__attn_mask *m, int i)
{
    long long off = (long long)m->n_keys - m->n_q;
    return m->tree_parent ? off + m->tree_depth[i] : i + off;
}

/* 1 when query i sees key j: the visibility rules, one pair at a time. */
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
        long long pq = mlk__attn_query_pos(m, i), pk = mlk__attn_key_pos(m, j);
        if (m->causal || m->tree_parent) return pk > pq - m->window;
        return pk - pq < m->window && pq - pk < m->window;
    }
    return 1;
}

/* Keys [*lo, *hi) that contain every key some query in [qa, qb) can see;
   callers skip all tiles outside it (empty when *hi == *lo). */
static void mlk__attn_key_range(const mlk__attn_mask *m, int qa, int qb, int *lo, int *hi)
{
    long long off = (long long)m->n_keys - m->n_q, l = 0, h = m->n_keys;
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
    *lo = (int)l; /* 0 <= l <= h <= n_keys */
    *hi = (int)h;
}

/* 1 when every query in [qa, qb) sees every key in [k0, k1): no masking. */
static int mlk__attn_tile_full(const mlk__attn_mask *m, int qa, int qb, int k0, int k1)
{
    long long off = (long long)m->n_keys - m->n_q;
    if (k0 < 0 || k1 > m->n_keys) return 0;
    if (m->tree_parent) return k1 <= off && m->window <= 0;
    if (m->causal && k1 - 1 > qa + off) return 0;
    if (m->window > 0) {
        if (k0 <= qb - 1 + off - m->window) return 0;
        if (!m->causal && k1 - 1 >= qa + off + m->window) return 0;
    }
    return 1;
}

/* Sets s[j] = -inf for the keys kv0 + j (j < nk) that query i does not see.
   One query's key range is exact except in a tree, whose keys inside it
   are checked one by one. */
static void mlk__attn_mask_row(const mlk__attn_mask *m, int i, int kv0, int nk, float *s)
{
    int lo, hi;
    mlk__attn_key_range(m, i, i + 1, &lo, &hi);
    lo = lo - kv0 < 0 ? 0 : lo - kv0 > nk ? nk : lo - kv0;
    hi = hi - kv0 < lo ? lo : hi - kv0 > nk ? nk : hi - kv0;
    for (int j = 0; j < lo; j++) s[j] = -INFINITY;
    for (int j = hi; j < nk; j++) s[j] = -INFINITY;
    if (m->tree_parent)
        for (int j = lo; j < hi; j++)
            if (!mlk__attn_visible(m, i, kv0 + j)) s[j] = -INFINITY;
}

/* The keys [*lo, *hi) of the tile kv0 .. kv0+nk-1, counted from kv0, that
   rows r0 .. r0+rows-1 of a tile (row r: query q0 + r / group) may see:
   each other key of the tile is masked for all of them. */
static void mlk__attn_block_keys(const mlk__attn_mask *m, int q0, int group, int r0, int rows, int kv0, int nk,
                                 int *lo, int *hi)
{
    int l, h;
    mlk__attn_key_range(m, q0 + r0 / group, q0 + (r0 + rows - 1) / group + 1, &l, &h);
    l -= kv0;
    h -= kv0;
    *lo = l < 0 ? 0 : l > nk ? nk : l;
    *hi = h < *lo ? *lo : h > nk ? nk : h;
}

/* ---- tile matmuls ----
   C[m x n] (+)= A[m x k] B[k x n], row-major, n a multiple of MLK__NR (B
   and C padded to it), through the shared micro-kernel: A element (i, p) is
   a[i * a_rs + p * a_ks], a row-major tile (lda, 1) or the transpose of one
   read in place (1, lda); B rows are ldb apart. */

static int mlk__attn_pad(int n) { return (n + MLK__NR - 1) / MLK__NR * MLK__NR; }

static int mlk__attn_block_rows(int m, int i0) { return m - i0 < MLK__MR ? m - i0 : MLK__MR; }

/* One block of at most MR rows of a tile product: the micro-kernel, inlined
   once for full blocks and once for a last, shorter one (all of a 4-row
   decode group). */
static void mlk__attn_mm_block(int rows, int k, const float *a, size_t a_rs, size_t a_ks, const float *b, size_t ldb,
                               float *c, int ldc, float beta)
{
    if (rows == MLK__MR)
        mlk__micro(MLK__MR, k, a, a_rs, a_ks, b, ldb, 0, c, (size_t)ldc, 1.0f, beta);
    else
        mlk__micro(rows, k, a, a_rs, a_ks, b, ldb, 0, c, (size_t)ldc, 1.0f, beta);
}

static void mlk__attn_mm(int m, int n, int k, const float *a, size_t a_rs, size_t a_ks, const float *b, size_t ldb,
                         float *c, int ldc, int accumulate)
{
    for (int j = 0; j < n; j += MLK__NR)
        for (int i0 = 0; i0 < m; i0 += MLK__MR)
            mlk__attn_mm_block(mlk__attn_block_rows(m, i0), k, a + (size_t)i0 * a_rs, a_rs, a_ks, b + j, ldb,
                               c + (size_t)i0 * ldc + j, ldc, accumulate ? 1.0f : 0.0f);
}

/* Row block i of a masked tile (rows i * MR .. i * MR + MR - 1) sees only
   the keys [lo[i], hi[i]): the two products below skip the rest (masked
   scores, zero probabilities) block by block, in mlk__attn_mm's order, so
   B's column slice stays in L1 across the row blocks (a product per row
   block instead, which streams all of B for each, was 1-3% slower on the
   backward).
   Scores: mlk__attn_mm with accumulate 0 and a row-major A, but row block
   i only over the NR column blocks that meet [lo[i], hi[i]). */
static void mlk__attn_mm_cols(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                              int ldc, const int *lo, const int *hi)
{
    for (int j = 0; j < n; j += MLK__NR)
        for (int i0 = 0; i0 < m; i0 += MLK__MR) {
            const int blk = i0 / MLK__MR;
            if (j + MLK__NR <= lo[blk] || j >= hi[blk]) continue;
            mlk__attn_mm_block(mlk__attn_block_rows(m, i0), k, a + (size_t)i0 * lda, lda, 1, b + j, ldb,
                               c + (size_t)i0 * ldc + j, ldc, 0.0f);
        }
}

/* C (+)= A B as mlk__attn_mm, but row block i sums only over k in
   [lo[i], hi[i]) (none: C's rows are zeroed, or kept when accumulating). */
static void mlk__attn_mm_krange(int m, int n, const float *a, size_t a_rs, size_t a_ks, const float *b, size_t ldb,
                                float *c, int ldc, int accumulate, const int *lo, const int *hi)
{
    for (int j = 0; j < n; j += MLK__NR)
        for (int i0 = 0; i0 < m; i0 += MLK__MR) {
            const int blk = i0 / MLK__MR, k0 = lo[blk], kk = hi[blk] > k0 ? hi[blk] - k0 : 0;
            if (kk == 0 && accumulate) continue;
            mlk__attn_mm_block(mlk__attn_block_rows(m, i0), kk, a + (size_t)i0 * a_rs + (size_t)k0 * a_ks, a_rs, a_ks,
                               b + (size_t)k0 * ldb + j, ldb, c + (size_t)i0 * ldc + j, ldc, accumulate ? 1.0f : 0.0f);
        }
}

/* dst[d * ld_dst + j] = src[j * ld_src + d]: rows x cols -> cols x rows. */
static void mlk__attn_transpose(int rows, int cols, const float *src, size_t ld_src, float *dst, int ld_dst)
{
    for (int j0 = 0; j0 < rows; j0 += MLK__TRANSPOSE_BLOCK) {
        int d0 = 0;
#if defined(MLK__AVX2)
        for (; j0 + MLK__TRANSPOSE_BLOCK <= rows && d0 + MLK__TRANSPOSE_BLOCK <= cols; d0 += MLK__TRANSPOSE_BLOCK)
            mlk__transpose_block(src + (size_t)j0 * ld_src + d0, ld_src, dst + (size_t)d0 * ld_dst + j0,
                                 (size_t)ld_dst);
#endif
        for (int d = d0; d < cols; d++)
            for (int j = j0; j < j0 + MLK__TRANSPOSE_BLOCK && j < rows; j++)
                dst[(size_t)d * ld_dst + j] = src[(size_t)j * ld_src + d];
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

#define MLK__ATTN_GROUP_ROWS 4 /* query rows sharing each K/V row load */
#define MLK__ATTN_PREFETCH 8    /* key rows between a prefetch and its use */

#if defined(MLK__AVX2)
/* Asks for a row's cache lines ahead of use: cache rows come in short runs
   (one block's positions), too short for the hardware prefetcher to ramp up.
   Into L2 (T1), not L1: on Zen 4, the first AMD core where T1 stops at L2,
   prefetches into L1 hold the few L1 miss buffers until DRAM answers, and
   the F32/F16 decode reads 1.4-1.7x faster with T1 (Zen 3 treats T1 as T0). */
static inline void mlk__attn_prefetch_row(const unsigned char *row, int lines)
{
    for (int i = 0; i < lines; i++) _mm_prefetch((const char *)row + 64 * i, _MM_HINT_T1);
}
#endif

/* s[r][j] = q[r] . k_row[j] for the 4 rows q[0..3] (the caller repeats its
   last row to fill 4; repeated rows compute and store identical values).
   Keys go in pairs so 8 independent FMA chains hide the FMA latency, and
   the 8 dot products are reduced together by two rounds of hadd. Meanwhile
   the keys MLK__ATTN_PREFETCH ahead and the values of the P V pass that
   follows are prefetched, so that K and V stream from memory together. */
static inline void mlk__attn_dot_group(mlk_kv_type type, int dim, int nk, const unsigned char *const *k_row,
                                       const unsigned char *const *v_row, const float *const *q, float *const *s)
{
    int nb = mlk__row_qblocks(dim), vec_end = 0;
#if defined(MLK__AVX2)
    int lines = (int)((mlk__row_bytes(type, dim) + 63) / 64);
    vec_end = dim / 16 * 16;
#else
    (void)v_row;
#if defined(MLK__NEON)
    vec_end = dim / 16 * 16;
#endif
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
#if defined(MLK__AVX512)
        { /* 16 elements a zmm; the halves then fold into the ymm sums */
            __m512 za[MLK__ATTN_GROUP_ROWS], zb[MLK__ATTN_GROUP_ROWS];
            for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) za[r] = zb[r] = _mm512_setzero_ps();
            int e = 0;
            for (; e <= dim - 32; e += 32) { /* the same FMA order as 16 at a time */
                __m512 xa0, xa1, xb0, xb1;
                mlk__row_load32_wide(type, ka, da, e, &xa0, &xa1);
                mlk__row_load32_wide(type, kb, db, e, &xb0, &xb1);
                for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) {
                    const __m512 q0 = _mm512_loadu_ps(q[r] + e), q1 = _mm512_loadu_ps(q[r] + e + 16);
                    za[r] = _mm512_fmadd_ps(q0, xa0, za[r]);
                    zb[r] = _mm512_fmadd_ps(q0, xb0, zb[r]);
                    za[r] = _mm512_fmadd_ps(q1, xa1, za[r]);
                    zb[r] = _mm512_fmadd_ps(q1, xb1, zb[r]);
                }
            }
            for (; e < vec_end; e += 16) {
                const __m512 xa = mlk__row_load16_wide(type, ka, da, e), xb = mlk__row_load16_wide(type, kb, db, e);
                for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) {
                    const __m512 qe = _mm512_loadu_ps(q[r] + e);
                    za[r] = _mm512_fmadd_ps(qe, xa, za[r]);
                    zb[r] = _mm512_fmadd_ps(qe, xb, zb[r]);
                }
            }
            a0 = mlk__fold16(za[0]), b0 = mlk__fold16(zb[0]), a1 = mlk__fold16(za[1]), b1 = mlk__fold16(zb[1]);
            a2 = mlk__fold16(za[2]), b2 = mlk__fold16(zb[2]), a3 = mlk__fold16(za[3]), b3 = mlk__fold16(zb[3]);
        }
#else
        for (int e = 0; e < vec_end; e += 16) {
            __m256 xa, xb, ya, yb, qe;
            mlk__row_load16(type, ka, da, e, &xa, &xb);
            mlk__row_load16(type, kb, db, e, &ya, &yb);
            qe = _mm256_loadu_ps(q[0] + e), a0 = _mm256_fmadd_ps(qe, xa, a0), b0 = _mm256_fmadd_ps(qe, ya, b0);
            qe = _mm256_loadu_ps(q[1] + e), a1 = _mm256_fmadd_ps(qe, xa, a1), b1 = _mm256_fmadd_ps(qe, ya, b1);
            qe = _mm256_loadu_ps(q[2] + e), a2 = _mm256_fmadd_ps(qe, xa, a2), b2 = _mm256_fmadd_ps(qe, ya, b2);
            qe = _mm256_loadu_ps(q[3] + e), a3 = _mm256_fmadd_ps(qe, xa, a3), b3 = _mm256_fmadd_ps(qe, ya, b3);
            qe = _mm256_loadu_ps(q[0] + e + 8), a0 = _mm256_fmadd_ps(qe, xb, a0), b0 = _mm256_fmadd_ps(qe, yb, b0);
            qe = _mm256_loadu_ps(q[1] + e + 8), a1 = _mm256_fmadd_ps(qe, xb, a1), b1 = _mm256_fmadd_ps(qe, yb, b1);
            qe = _mm256_loadu_ps(q[2] + e + 8), a2 = _mm256_fmadd_ps(qe, xb, a2), b2 = _mm256_fmadd_ps(qe, yb, b2);
            qe = _mm256_loadu_ps(q[3] + e + 8), a3 = _mm256_fmadd_ps(qe, xb, a3), b3 = _mm256_fmadd_ps(qe, yb, b3);
        }
#endif
        h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, b0), _mm256_hadd_ps(a1, b1)); /* rows 0, 1 by 128-bit half */
        h1 = _mm256_hadd_ps(_mm256_hadd_ps(a2, b2), _mm256_hadd_ps(a3, b3));
        h2 = _mm256_castps128_ps256(_mm_add_ps(_mm256_castps256_ps128(h0), _mm256_extractf128_ps(h0, 1)));
        h3 = _mm256_castps128_ps256(_mm_add_ps(_mm256_castps256_ps128(h1), _mm256_extractf128_ps(h1, 1)));
        _mm256_storeu_ps(dot, _mm256_insertf128_ps(h2, _mm256_castps256_ps128(h3), 1));
        if (vec_end < dim) mlk__avx_done();
#elif defined(MLK__NEON)
        const unsigned char *da = ka + 4 * (size_t)nb, *db = kb + 4 * (size_t)nb;
        float32x4_t a[MLK__ATTN_GROUP_ROWS], b[MLK__ATTN_GROUP_ROWS];
        for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) a[r] = b[r] = vdupq_n_f32(0.0f);
        for (int e = 0; e < vec_end; e += 16) {
            float32x4_t xa[4], xb[4];
            mlk__row_load16(type, ka, da, e, xa);
            mlk__row_load16(type, kb, db, e, xb);
            for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++)
                for (int i = 0; i < 4; i++) {
                    float32x4_t qe = vld1q_f32(q[r] + e + 4 * i);
                    a[r] = vfmaq_f32(a[r], qe, xa[i]);
                    b[r] = vfmaq_f32(b[r], qe, xb[i]);
                }
        }
        for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) dot[2 * r] = vaddvq_f32(a[r]), dot[2 * r + 1] = vaddvq_f32(b[r]);
#else
        for (int i = 0; i < 8; i++) dot[i] = 0.0f;
#endif
        for (int e = vec_end; e < dim; e++) {
            float xa = mlk__row_get(type, dim, ka, e), xb = mlk__row_get(type, dim, kb, e);
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
   8 accumulators stay in registers across the key loop. The first pass
   over the keys prefetches the n_ahead rows `ahead` (the next tile's keys),
   so memory stays busy while this pass computes from cache: worth 3-9% for
   F32/F16 rows on Zen 3 and 10% for Q8 on Zen 4; the Q4 decode is bound by
   its unpacking, not memory, so its callers pass none. */
static inline void mlk__attn_pv_group(mlk_kv_type type, int dim, int nk, const unsigned char *const *v_row,
                                      int n_rows, const float *const *p, float *const *acc,
                                      const unsigned char *const *ahead, int n_ahead)
{
    int nb = mlk__row_qblocks(dim), e0 = 0;
#if defined(MLK__AVX2)
    const int lines = (int)((mlk__row_bytes(type, dim) + 63) / 64);
#else
    (void)ahead, (void)n_ahead;
#endif
    (void)nb;
#if defined(MLK__AVX512)
    for (; e0 <= dim - 32; e0 += 32) { /* 32 columns: 8 zmm accumulators */
        __m512 lo[MLK__ATTN_GROUP_ROWS], hi[MLK__ATTN_GROUP_ROWS];
        for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) {
            lo[r] = _mm512_loadu_ps(acc[r] + e0);
            hi[r] = _mm512_loadu_ps(acc[r] + e0 + 16);
        }
        for (int j = 0; j < nk; j++) {
            const unsigned char *vj = v_row[j], *data = vj + 4 * (size_t)nb;
            __m512 x, y;
            mlk__row_load32_wide(type, vj, data, e0, &x, &y);
            if (j < n_ahead) mlk__attn_prefetch_row(ahead[j], lines);
            for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) {
                const __m512 pr = _mm512_set1_ps(p[r][j]);
                lo[r] = _mm512_fmadd_ps(pr, x, lo[r]);
                hi[r] = _mm512_fmadd_ps(pr, y, hi[r]);
            }
        }
        for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++) {
            _mm512_storeu_ps(acc[r] + e0, lo[r]);
            _mm512_storeu_ps(acc[r] + e0 + 16, hi[r]);
        }
        n_ahead = 0;
    }
#endif
#if defined(MLK__AVX2)
    for (; e0 <= dim - 16; e0 += 16) {
        __m256 a0 = _mm256_loadu_ps(acc[0] + e0), b0 = _mm256_loadu_ps(acc[0] + e0 + 8);
        __m256 a1 = _mm256_loadu_ps(acc[1] + e0), b1 = _mm256_loadu_ps(acc[1] + e0 + 8);
        __m256 a2 = _mm256_loadu_ps(acc[2] + e0), b2 = _mm256_loadu_ps(acc[2] + e0 + 8);
        __m256 a3 = _mm256_loadu_ps(acc[3] + e0), b3 = _mm256_loadu_ps(acc[3] + e0 + 8);
        for (int j = 0; j < nk; j++) {
            const unsigned char *vj = v_row[j];
            __m256 x, y, pr;
            mlk__row_load16(type, vj, vj + 4 * (size_t)nb, e0, &x, &y);
            if (j < n_ahead) mlk__attn_prefetch_row(ahead[j], lines);
            pr = _mm256_broadcast_ss(p[0] + j), a0 = _mm256_fmadd_ps(pr, x, a0), b0 = _mm256_fmadd_ps(pr, y, b0);
            pr = _mm256_broadcast_ss(p[1] + j), a1 = _mm256_fmadd_ps(pr, x, a1), b1 = _mm256_fmadd_ps(pr, y, b1);
            pr = _mm256_broadcast_ss(p[2] + j), a2 = _mm256_fmadd_ps(pr, x, a2), b2 = _mm256_fmadd_ps(pr, y, b2);
            pr = _mm256_broadcast_ss(p[3] + j), a3 = _mm256_fmadd_ps(pr, x, a3), b3 = _mm256_fmadd_ps(pr, y, b3);
        }
        _mm256_storeu_ps(acc[0] + e0, a0), _mm256_storeu_ps(acc[0] + e0 + 8, b0);
        _mm256_storeu_ps(acc[1] + e0, a1), _mm256_storeu_ps(acc[1] + e0 + 8, b1);
        _mm256_storeu_ps(acc[2] + e0, a2), _mm256_storeu_ps(acc[2] + e0 + 8, b2);
        _mm256_storeu_ps(acc[3] + e0, a3), _mm256_storeu_ps(acc[3] + e0 + 8, b3);
        n_ahead = 0;
    }
    if (e0 < dim) mlk__avx_done();
#elif defined(MLK__NEON)
    for (; e0 <= dim - 16; e0 += 16) {
        float32x4_t a[MLK__ATTN_GROUP_ROWS][4];
        for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++)
            for (int i = 0; i < 4; i++) a[r][i] = vld1q_f32(acc[r] + e0 + 4 * i);
        for (int j = 0; j < nk; j++) {
            const unsigned char *vj = v_row[j];
            float32x4_t x[4];
            mlk__row_load16(type, vj, vj + 4 * (size_t)nb, e0, x);
            for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++)
                for (int i = 0; i < 4; i++) a[r][i] = vfmaq_n_f32(a[r][i], x[i], p[r][j]);
        }
        for (int r = 0; r < MLK__ATTN_GROUP_ROWS; r++)
            for (int i = 0; i < 4; i++) vst1q_f32(acc[r] + e0 + 4 * i, a[r][i]);
    }
#endif
    for (int j = 0; j < nk; j++)
        for (int e = e0; e < dim; e++) {
            float x = mlk__row_get(type, dim, v_row[j], e);
            for (int r = 0; r < n_rows; r++) acc[r][e] += p[r][j] * x;
        }
}

/* ---- row-wise vector helpers of the softmax ---- */

/* s[j] = exp(s[j] - shift) for j < n (shift finite); returns the sum. */
static float mlk__attn_exp_sum(float *s, int n, float shift)
{
    float sum = 0.0f;
    int j = 0;
#if defined(MLK__AVX512)
    {
        __m512 vshift = _mm512_set1_ps(shift), vsum = _mm512_setzero_ps();
        for (; j <= n - 16; j += 16) {
            __m512 e = mlk__exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), vshift));
            _mm512_storeu_ps(s + j, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        sum = _mm512_reduce_add_ps(vsum);
    }
#endif
#if defined(MLK__AVX2)
    __m256 vshift = _mm256_set1_ps(shift), vsum = _mm256_setzero_ps();
    for (; j <= n - 8; j += 8) {
        __m256 e = mlk__exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vshift));
        _mm256_storeu_ps(s + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    sum += mlk__hsum8(vsum);
#elif defined(MLK__NEON)
    float32x4_t vshift = vdupq_n_f32(shift), vsum = vdupq_n_f32(0.0f);
    for (; j <= n - 4; j += 4) {
        float32x4_t e = mlk__exp4(vsubq_f32(vld1q_f32(s + j), vshift));
        vst1q_f32(s + j, e);
        vsum = vaddq_f32(vsum, e);
    }
    sum = vaddvq_f32(vsum);
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
    const unsigned char **k_next; /* [kv_pad] the next tile's key rows, nk_next of them: prefetched in P V */
    int nk_next;
    float *q_pack;  /* [n_rows][dpad] scale * q */
    float *acc;     /* [n_rows][dpad] unnormalised output */
    float *scores;  /* [n_rows][kv_pad] scores, then probabilities */
    float *k_t;     /* [head_dim][kv_pad] key tile, transposed */
    float *v_pack;  /* [kv_pad][dpad] value tile */
    float *row_max, *l_sum; /* [n_rows] */
    float *zero_row; /* [dpad] zeros: stands in for a masked non-finite value row */
    int *bad;        /* [kv_pad] keys of the tile whose value row is not finite */
    int *blk_lo, *blk_hi; /* [row blocks] a masked tile's keys seen by each block of MLK__MR rows */
} mlk__attn_rows;

static int mlk__attn_row_blocks(int n_rows) { return (n_rows + MLK__MR - 1) / MLK__MR; }

static size_t mlk__attn_rows_scratch(int n_rows, int head_dim, int tile_kv)
{
    size_t dp = (size_t)mlk__attn_pad(head_dim), kp = (size_t)mlk__attn_pad(tile_kv), r = (size_t)n_rows;
    return 3 * kp * sizeof(const unsigned char *) +
           (2 * r * dp + r * kp + (size_t)head_dim * kp + kp * dp + 2 * r + dp) * sizeof(float) +
           (kp + 2 * (size_t)mlk__attn_row_blocks(n_rows)) * sizeof(int);
}

/* Tasks of fewer rows than this take their tiles as typed rows
   (mlk__attn_rows_update_typed): reading K and V dominates there, and
   packing them would cost as much as the products. A constant, not the
   micro-kernel's height, so every build picks the same path. */
enum { MLK__ATTN_TYPED_ROWS = 6 };

static int mlk__attn_rows_typed(const mlk__attn_rows *st) { return st->n_rows < MLK__ATTN_TYPED_ROWS; }

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
    st->k_next = st->v_row + st->kv_pad;
    st->nk_next = 0;
    f = (float *)(void *)(st->k_next + st->kv_pad);
    st->q_pack = f;
    st->acc = st->q_pack + (size_t)st->n_rows * st->dpad;
    st->scores = st->acc + (size_t)st->n_rows * st->dpad;
    st->k_t = st->scores + (size_t)st->n_rows * st->kv_pad;
    st->v_pack = st->k_t + (size_t)head_dim * st->kv_pad;
    st->row_max = st->v_pack + (size_t)st->kv_pad * st->dpad;
    st->l_sum = st->row_max + st->n_rows;
    st->zero_row = st->l_sum + st->n_rows;
    st->bad = (int *)(void *)(st->zero_row + st->dpad);
    st->blk_lo = st->bad + st->kv_pad;
    st->blk_hi = st->blk_lo + mlk__attn_row_blocks(st->n_rows);
    memset(st->zero_row, 0, (size_t)st->dpad * sizeof(float));
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

/* Masked scores give p = 0 exactly, but 0 * NaN is NaN: a NaN or inf in a
   key or value row that some query cannot see would poison that query
   through the products. So in tiles with masking, such rows are zeroed
   (listed in bad) before the product and their products added back, after
   it, only for the queries that see them (mlk__attn_add_rows). */
static int mlk__attn_finite_row(const float *x, int n)
{
    uint32_t bad = 0;
    for (int e = 0; e < n; e++) { /* an all-ones exponent: inf or NaN (integer ops, so it vectorises) */
        uint32_t u;
        memcpy(&u, x + e, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

/* Lists in bad the rows j < n of x (row stride ld, cols values) that are
   not finite; returns how many. */
static int mlk__attn_list_bad_rows(int n, int cols, const float *x, size_t ld, int *bad)
{
    int n_bad = 0;
    for (int j = 0; j < n; j++)
        if (!mlk__attn_finite_row(x + (size_t)j * ld, cols)) bad[n_bad++] = j;
    return n_bad;
}

/* Zeroes the listed rows of x (the first cols values of each). */
static void mlk__attn_zero_rows(float *x, size_t ld, int cols, const int *rows, int n_rows)
{
    for (int b = 0; b < n_rows; b++) memset(x + (size_t)rows[b] * ld, 0, (size_t)cols * sizeof(float));
}

/* Zeroes the rows j < n of x that are not finite and lists them in bad;
   returns how many. */
static int mlk__attn_zero_bad_rows(int n, int cols, float *x, int ld, int *bad)
{
    int n_bad = mlk__attn_list_bad_rows(n, cols, x, (size_t)ld, bad);
    mlk__attn_zero_rows(x, (size_t)ld, cols, bad, n_bad);
    return n_bad;
}

/* c[r] += a[r][j] * x_j (cols values) for each listed key kv0 + j and each
   row r (query q0 + r / group) that sees it. */
static void mlk__attn_add_rows(const mlk__attn_mask *m, int q0, int group, int n_rows, int kv0, int n_bad,
                               const int *bad, const float *a, size_t lda, const float *x, size_t ldx, int cols,
                               float *c, size_t ldc)
{
    for (int b = 0; b < n_bad; b++)
        for (int r = 0; r < n_rows; r++)
            if (mlk__attn_visible(m, q0 + r / group, kv0 + bad[b])) {
                const float a_rj = a[(size_t)r * lda + bad[b]], *xj = x + (size_t)bad[b] * ldx;
                float *cr = c + (size_t)r * ldc;
                for (int e = 0; e < cols; e++) cr[e] += a_rj * xj[e];
            }
}

/* Starts row r's softmax with the sink of its head (sinks[r % group]): the
   running max is the sink logit and the running sum exp(0) = 1. */
static void mlk__attn_rows_sinks(mlk__attn_rows *st, const float *sinks)
{
    for (int r = 0; r < st->n_rows; r++) {
        float sink = sinks[r % st->group];
        st->row_max[r] = sink;
        st->l_sum[r] = sink > -INFINITY ? 1.0f : 0.0f;
    }
}

/* The online softmax on the scores of keys kv0 .. kv0+nk-1: mask,
   m_new = max(m, rowmax S), p = exp(S - m_new), l = l exp(m - m_new) + sum p,
   acc *= exp(m - m_new). A row whose running max is still -inf (no visible
   key yet) gets p = 0, so exp(-inf - -inf) never occurs. Rows go in groups
   of MLK__ATTN_SOFTMAX_ROWS, the maxima of the group first, so that the
   rows' reductions overlap instead of each row waiting on its own (1.05x
   on the forward at N = 4096, D = 64). */
enum { MLK__ATTN_SOFTMAX_ROWS = 16 };

static void mlk__attn_rows_softmax(mlk__attn_rows *st, int kv0, int nk)
{
    const mlk__attn_mask *m = st->mask;
    const int full = mlk__attn_tile_full(m, st->q0, st->q0 + st->n_q, kv0, kv0 + nk);
    for (int r0 = 0; r0 < st->n_rows; r0 += MLK__ATTN_SOFTMAX_ROWS) {
        const int rows = st->n_rows - r0 < MLK__ATTN_SOFTMAX_ROWS ? st->n_rows - r0 : MLK__ATTN_SOFTMAX_ROWS;
        float m_new[MLK__ATTN_SOFTMAX_ROWS];
        int lo[MLK__ATTN_SOFTMAX_ROWS], hi[MLK__ATTN_SOFTMAX_ROWS];
        for (int i = 0; i < rows; i++) { /* a masked tile: only keys [lo, hi) of the row are read */
            const int r = r0 + i;
            float *s = st->scores + (size_t)r * st->kv_pad;
            lo[i] = 0;
            hi[i] = nk;
            if (!full) mlk__attn_block_keys(m, st->q0, st->group, r, 1, kv0, nk, &lo[i], &hi[i]);
            if (st->softcap > 0) mlk__attn_softcap_row(s + lo[i], hi[i] - lo[i], st->softcap);
            if (!full && m->tree_parent) /* elsewhere [lo, hi) is the row's mask (mlk__attn_mask_row) */
                mlk__attn_mask_row(m, st->q0 + r / st->group, kv0 + lo[i], hi[i] - lo[i], s + lo[i]);
            m_new[i] = mlk__row_max(s + lo[i], hi[i] - lo[i]);
            if (m_new[i] < st->row_max[r]) m_new[i] = st->row_max[r];
        }
        for (int i = 0; i < rows; i++) {
            const int r = r0 + i;
            float *s = st->scores + (size_t)r * st->kv_pad, alpha;
            if (m_new[i] == -INFINITY) { /* nothing visible yet: p = 0 */
                memset(s, 0, (size_t)nk * sizeof(float));
                continue;
            }
            alpha = st->row_max[r] == m_new[i] ? 1.0f : st->row_max[r] == -INFINITY ? 0.0f
                                                            : mlk__expf(st->row_max[r] - m_new[i]);
            st->l_sum[r] = st->l_sum[r] * alpha + mlk__attn_exp_sum(s + lo[i], hi[i] - lo[i], m_new[i]);
            if (!full) {
                memset(s, 0, (size_t)lo[i] * sizeof(float));
                memset(s + hi[i], 0, (size_t)(nk - hi[i]) * sizeof(float));
            }
            st->row_max[r] = m_new[i];
            if (alpha != 1.0f) mlk__attn_scale_row(st->acc + (size_t)r * st->dpad, st->dpad, alpha);
        }
    }
}

/* Folds keys kv0 .. kv0+nk-1 (nk <= tile_kv), given as float rows, into
   every row through packed tiles: S = Q K^T, softmax, acc += P V. k_t:
   NULL, or the keys already transposed (row stride kv_pad). */
static void mlk__attn_rows_update(mlk__attn_rows *st, int kv0, int nk, const float *k, size_t ldk,
                                  const float *v, size_t ldv, const float *k_t)
{
    /* value rows exactly MLK__NR-aligned wide need no copy: P V reads them
       where they lie, unless the tile is masked and one of them must be
       zeroed (mlk__attn_finite_row) */
    const int full = mlk__attn_tile_full(st->mask, st->q0, st->q0 + st->n_q, kv0, kv0 + nk);
    const int n_bad = full ? 0 : mlk__attn_list_bad_rows(nk, st->head_dim, v, ldv, st->bad);
    const int v_in_place = n_bad == 0 && st->head_dim == st->dpad;
    const float *v_tile = v_in_place ? v : st->v_pack;
    const size_t ld_tile = v_in_place ? ldv : (size_t)st->dpad;
    if (!v_in_place) {
        mlk__attn_copy_rows(nk, st->head_dim, v, ldv, st->v_pack, st->dpad);
        mlk__attn_zero_rows(st->v_pack, (size_t)st->dpad, st->head_dim, st->bad, n_bad);
    }
    if (!k_t) {
        mlk__attn_transpose(nk, st->head_dim, k, ldk, st->k_t, st->kv_pad);
        k_t = st->k_t;
    }
    if (full) {
        mlk__attn_mm(st->n_rows, mlk__attn_pad(nk), st->head_dim, st->q_pack, (size_t)st->dpad, 1, k_t,
                     (size_t)st->kv_pad, st->scores, st->kv_pad, 0);
        mlk__attn_rows_softmax(st, kv0, nk);
        mlk__attn_mm(st->n_rows, st->dpad, nk, st->scores, (size_t)st->kv_pad, 1, v_tile, ld_tile, st->acc,
                     st->dpad, 1);
    } else { /* each block of micro-kernel rows only over the keys it may see */
        for (int r0 = 0; r0 < st->n_rows; r0 += MLK__MR)
            mlk__attn_block_keys(st->mask, st->q0, st->group, r0, mlk__attn_block_rows(st->n_rows, r0), kv0, nk,
                                 &st->blk_lo[r0 / MLK__MR], &st->blk_hi[r0 / MLK__MR]);
        mlk__attn_mm_cols(st->n_rows, mlk__attn_pad(nk), st->head_dim, st->q_pack, (size_t)st->dpad, k_t,
                          (size_t)st->kv_pad, st->scores, st->kv_pad, st->blk_lo, st->blk_hi);
        mlk__attn_rows_softmax(st, kv0, nk);
        mlk__attn_mm_krange(st->n_rows, st->dpad, st->scores, (size_t)st->kv_pad, 1, v_tile, ld_tile, st->acc,
                            st->dpad, 1, st->blk_lo, st->blk_hi); /* p is 0 outside [lo, hi) */
        mlk__attn_add_rows(st->mask, st->q0, st->group, st->n_rows, kv0, n_bad, st->bad, st->scores,
                           (size_t)st->kv_pad, v, ldv, st->head_dim, st->acc, (size_t)st->dpad);
    }
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
        acc[i] = pv ? st->acc + r * st->dpad : NULL; /* the score phase has no accumulator */
    }
    if (pv)
        mlk__attn_pv_group(type, st->head_dim, nk, st->v_row, n, p, acc, st->k_next,
                           r0 == 0 && type != MLK_KV_Q4 ? st->nk_next : 0);
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

/* Scores of a typed tile into st->scores (the first phase of
   mlk__attn_rows_update_typed). The backward recomputes the scores of such
   a tile through this too (needing only n_rows, head_dim, dpad, kv_pad,
   q_pack, scores, k_row, v_row), so P = exp(S - lse) gets the forward's bits. */
static void mlk__attn_typed_scores(mlk__attn_rows *st, int nk, mlk_kv_type type)
{
    mlk__attn_typed_pass(type, 0, st, nk);
}

/* The typed form of mlk__attn_zero_bad_rows: F32/F16 value rows that are
   not finite point at the zero row (quantised rows are finite by
   construction); their products are added back after P V. */
static int mlk__attn_typed_bad_rows(mlk__attn_rows *st, int nk, mlk_kv_type type)
{
    int n_bad = 0;
    if (type != MLK_KV_F32 && type != MLK_KV_F16) return 0;
    for (int j = 0; j < nk; j++) {
        int ok = 1;
        if (type == MLK_KV_F32) {
            ok = mlk__attn_finite_row((const float *)(const void *)st->v_row[j], st->head_dim);
        } else {
            for (int e = 0; e < st->head_dim && ok; e++) {
                uint16_t h;
                memcpy(&h, st->v_row[j] + 2 * (size_t)e, 2);
                ok = (h & 0x7c00u) != 0x7c00u;
            }
        }
        if (!ok) {
            st->bad[n_bad++] = j;
            st->k_row[j] = st->v_row[j]; /* k_row is done with: keeps the real row for the fix-up */
            st->v_row[j] = (const unsigned char *)(const void *)st->zero_row;
        }
    }
    return n_bad;
}

/* The decode form of mlk__attn_rows_update (when mlk__attn_rows_typed):
   keys kv0 .. kv0+nk-1 are the rows st->k_row[j] / st->v_row[j], which the
   caller fills, stored as type; each is read once per group of 4 rows and
   never copied. */
static void mlk__attn_rows_update_typed(mlk__attn_rows *st, int kv0, int nk, mlk_kv_type type)
{
    int n_bad = 0;
    mlk__attn_typed_scores(st, nk, type);
    mlk__attn_rows_softmax(st, kv0, nk);
    if (!mlk__attn_tile_full(st->mask, st->q0, st->q0 + st->n_q, kv0, kv0 + nk))
        n_bad = mlk__attn_typed_bad_rows(st, nk, type);
    mlk__attn_typed_pass(type, 1, st, nk);
    for (int b = 0; b < n_bad; b++) {
        const int j = st->bad[b];
        for (int r = 0; r < st->n_rows; r++)
            if (mlk__attn_visible(st->mask, st->q0 + r / st->group, kv0 + j)) {
                float p_rj = st->scores[(size_t)r * st->kv_pad + j], *acc = st->acc + (size_t)r * st->dpad;
                for (int e = 0; e < st->head_dim; e++) acc[e] += p_rj * mlk__row_get(type, st->head_dim, st->k_row[j], e);
            }
    }
}

/* o = acc / l (0 for rows that saw nothing); lse = m + log(l) or -inf. */
static void mlk__attn_rows_finish(const mlk__attn_rows *st, float *o, size_t o_head, size_t o_tok, float *lse,
                                  size_t lse_head, size_t lse_tok)
{
    for (int r = 0; r < st->n_rows; r++) {
        size_t qi = (size_t)(r / st->group), h = (size_t)(r % st->group);
        float *orow = o + qi * o_tok + h * o_head, l = st->l_sum[r];
        const float *a = st->acc + (size_t)r * st->dpad;
        float inv = 1.0f / l; /* l is 0 only for a row that saw nothing: o = 0, even over 0 * inf; NaN stays */
        for (int d = 0; d < st->head_dim; d++) orow[d] = l != 0.0f ? a[d] * inv : 0.0f;
        if (lse) lse[qi * lse_tok + h * lse_head] = l != 0.0f ? st->row_max[r] + logf(l) : -INFINITY;
    }
}

/* ---- descriptor ---- */

/* A validated descriptor with defaults resolved and element strides. */
typedef struct mlk__attn_geom {
    int batch, heads, kv_heads, group, len_q, len_kv, head_dim;
    int tile_q, tile_kv, bwd_tile_q, bwd_tile_kv, n_q_tiles; /* n_q_tiles: the forward's */
    int threads;                               /* d->threads resolved */
    float scale, softcap;
    size_t q_batch, q_head, q_tok, kv_batch, kv_head, kv_tok;
    size_t fwd_thread_bytes, bwd_thread_bytes; /* arena bytes of one task's slab */
    size_t fwd_rows_bytes, kt_cache_bytes;     /* the forward slab: rows scratch, then key tile cache (0: none) */
    size_t fwd_cap, bwd_cap;                   /* arena bytes of each pass on `threads` threads */
    mlk__piece pc[3];                          /* a pass's scratch table (mlk__attn_pieces) */
} mlk__attn_geom;

/* Longest len_q / len_kv / tile: sums of two of them stay inside int. */
#define MLK__ATTN_MAX_LEN (1 << 30)

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


/* The scratch table of a pass on `threads` threads: tree depths [Nq] ints,
   the backward's D = rowsum(dO o O) [B, Hq, Nq] floats, one slab per
   thread. Returns the number of pieces. */
static int mlk__attn_pieces(const mlk__attn_geom *g, int backward, int threads, mlk__piece *pc)
{
    pc[0] = mlk__piece_of((size_t)g->len_q * sizeof(int));
    pc[1] = mlk__piece_of(backward ? (size_t)g->batch * g->heads * g->len_q * sizeof(float) : 0);
    pc[2] = mlk__piece_of((size_t)threads * (backward ? g->bwd_thread_bytes : g->fwd_thread_bytes));
    return 3;
}

/* The forward's key tile cache, one per thread: the transposed key tiles
   of the kv head the thread last worked on. A thread's tasks mostly come
   in q tile order within a head, so each key tile is transposed once per
   thread and head rather than once per q tile (the transposes were 6% of
   the forward at N = 4096, D = 64). Tiles lie at multiples of tile_kv;
   ready[t] is how many keys of tile t hold. Kept to 4 MiB per thread;
   longer sequences transpose every tile as it comes, and geometries whose
   tasks all take typed rows (decode) have none. */
typedef struct mlk__attn_kt_cache {
    long long owner; /* batch item * kv_heads + kv head; -1: none yet */
    int *ready;      /* [n_tiles] */
    float *tiles;    /* [n_tiles][head_dim][kv_pad] */
} mlk__attn_kt_cache;

enum { MLK__ATTN_KT_CACHE_MAX = 4 << 20 };

static size_t mlk__attn_kt_tiles(const mlk__attn_geom *g) { return (size_t)(g->len_kv + g->tile_kv - 1) / g->tile_kv; }

static size_t mlk__attn_kt_cache_bytes(const mlk__attn_geom *g)
{
    size_t n_tiles = mlk__attn_kt_tiles(g);
    size_t tile_floats = (size_t)g->head_dim * (size_t)mlk__attn_pad(g->tile_kv), bytes;
    if (n_tiles < 2 || (size_t)g->tile_q * g->group < MLK__ATTN_TYPED_ROWS ||
        tile_floats > MLK__ATTN_KT_CACHE_MAX / sizeof(float) / n_tiles)
        return 0;
    bytes = mlk__arena_need(0, sizeof(mlk__attn_kt_cache));
    bytes = mlk__arena_need(bytes, n_tiles * sizeof(int));
    return mlk__arena_need(bytes, n_tiles * tile_floats * sizeof(float));
}

/* The cache in a forward slab; NULL when the geometry has none. */
static mlk__attn_kt_cache *mlk__attn_kt_cache_at(const mlk__attn_geom *g, unsigned char *slab)
{
    mlk__attn_kt_cache *c;
    if (!g->kt_cache_bytes) return NULL;
    c = (mlk__attn_kt_cache *)(void *)(slab + g->fwd_rows_bytes);
    c->ready = (int *)(void *)((unsigned char *)c + mlk__arena_need(0, sizeof *c));
    c->tiles = (float *)(void *)((unsigned char *)c->ready + mlk__arena_need(0, mlk__attn_kt_tiles(g) * sizeof(int)));
    return c;
}

/* Key tile kv0 .. kv0+nk-1 of kv head `owner`, transposed: from the cache
   when it holds it, else transposed into it (NULL: no cache, or a tile off
   the grid, which the caller transposes itself). */
static const float *mlk__attn_kt_tile(const mlk__attn_geom *g, mlk__attn_kt_cache *c, long long owner, int kv0,
                                      int nk, const float *k)
{
    const int kv_pad = mlk__attn_pad(g->tile_kv), t = kv0 / g->tile_kv;
    float *tile;
    if (!c || kv0 % g->tile_kv != 0) return NULL;
    if (c->owner != owner) {
        memset(c->ready, 0, mlk__attn_kt_tiles(g) * sizeof(int));
        c->owner = owner;
    }
    tile = c->tiles + (size_t)t * g->head_dim * kv_pad;
    if (c->ready[t] < nk) {
        mlk__attn_transpose(nk, g->head_dim, k, g->kv_tok, tile, kv_pad);
        c->ready[t] = nk;
    }
    return tile;
}

/* Checks everything that does not need the tree depths and fills g. */
static mlk_status mlk__attn_geom_init(const mlk_attn_desc *d, mlk__attn_geom *g)
{
    size_t nq_el, nkv_el, rows, dp, kp, t;
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
        !(d->softcap <= FLT_MAX) || d->window < 0 || d->threads < 0 ||
        (d->layout != MLK_BHND && d->layout != MLK_BNHD))
        return MLK_ERR_ARG;
    if (!mlk__count4(g->batch, g->heads, g->len_q, g->head_dim, sizeof(float), &nq_el) ||
        !mlk__count4(g->batch, g->kv_heads, g->len_kv, g->head_dim, sizeof(float), &nkv_el) ||
        g->head_dim > MLK__ATTN_MAX_LEN || g->len_q > MLK__ATTN_MAX_LEN || g->len_kv > MLK__ATTN_MAX_LEN)
        return MLK_ERR_OVERFLOW;
    g->group = g->heads / g->kv_heads;
    g->scale = d->scale != 0 ? d->scale : 1.0f / sqrtf((float)g->head_dim);
    g->softcap = d->softcap;
    g->threads = d->threads ? d->threads : mlk__max_threads();
    /* default tiles: the backward's about 64 rows (queries x grouped
       heads), the forward's two of those by 128 keys: a key tile is
       transposed and packed once per q tile, and taller q tiles amortise
       that (1.09-1.13x at 128 rows; 192 gains no more at N = 4096 and
       loses at N = 1024). Every backward tile lies inside one forward
       tile, so the backward knows which tiles the forward took as typed
       rows (mlk__attn_fwd_tile_rows). */
    g->bwd_tile_q = d->tile_q ? d->tile_q : (g->group >= 64 ? 1 : 64 / g->group);
    g->tile_q = d->tile_q ? d->tile_q : 2 * g->bwd_tile_q;
    g->tile_kv = d->tile_kv ? d->tile_kv : 128;
    /* the backward keeps ~5 tiles of kv rows live (K, V both ways, dK, dV)
       and reads every Q and dO row again for each: 128 keys keep the five
       in L2 (160 KiB at D = 64) and halve the re-reads of 64 (1.05x at
       N = 4096, D = 64 causal; 1.13x at N = 1024, D = 128); the workspace
       is ~1.1% of N x N floats at N = 4096 */
    g->bwd_tile_kv = d->tile_kv ? d->tile_kv : 128;
    if (g->bwd_tile_kv > g->len_kv) g->bwd_tile_kv = g->len_kv;
    if (g->tile_q > g->len_q) g->tile_q = g->len_q;
    if (g->bwd_tile_q > g->len_q) g->bwd_tile_q = g->len_q;
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
    g->fwd_rows_bytes = mlk__arena_need(0, mlk__attn_rows_scratch((int)rows, g->head_dim, g->tile_kv));
    g->kt_cache_bytes = mlk__attn_kt_cache_bytes(g);
    g->fwd_thread_bytes = mlk__arena_need(g->fwd_rows_bytes, g->kt_cache_bytes);
    kp = (size_t)mlk__attn_pad(g->bwd_tile_kv);
    rows = (size_t)g->bwd_tile_q * g->group;
    /* backward: k_t, v_t [D][kp]; k_pack, dk_acc, dv_acc [kp][dp]; q, dout,
       dq tile [rows][dp]; p, ds [rows][kp]; p^T [kp][rows]; lse, D [rows];
       then the typed row pointers of the forward's score path [2 kp], the
       non-finite key rows of the tile [kp] ints and the column range of
       each row block and row range of each key block (2 ints each) */
    t = 2 * (size_t)g->head_dim * kp + 3 * kp * dp + 3 * rows * dp + 3 * rows * kp + 2 * rows;
    g->bwd_thread_bytes = mlk__arena_need(0, t * sizeof(float) + 2 * kp * sizeof(const unsigned char *) +
                                             (kp + 2 * (size_t)mlk__attn_row_blocks((int)rows) +
                                              2 * (size_t)mlk__attn_row_blocks((int)kp)) * sizeof(int));
    if (!mlk__mul_ok((size_t)g->threads, g->fwd_thread_bytes > g->bwd_thread_bytes ? g->fwd_thread_bytes
                     : g->bwd_thread_bytes, &t)) return MLK_ERR_OVERFLOW;
    g->fwd_cap = mlk__pieces_bytes(g->pc, mlk__attn_pieces(g, 0, g->threads, g->pc));
    g->bwd_cap = mlk__pieces_bytes(g->pc, mlk__attn_pieces(g, 1, g->threads, g->pc));
    if (g->fwd_cap >= SIZE_MAX - MLK__ALIGN || g->bwd_cap >= SIZE_MAX - MLK__ALIGN) return MLK_ERR_OVERFLOW;
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
    if (d->sinks)
        for (int h = 0; h < g->heads; h++)
            if (!(d->sinks[h] < INFINITY)) return MLK_ERR_ARG; /* NaN or +inf */
    return d->tree_parent ? mlk__tree_check(g->len_q, d->tree_parent) : MLK_OK;
}

/* The call's arena (the caller's workspace or one allocation) from the
   pass's scratch table, for as many threads as fit in workspace_bytes
   (*team; a workspace without room for one is MLK_ERR_ARG). g->pc then
   holds the depths (filled), D and the slabs. */
static mlk_status mlk__attn_arena(mlk__arena *ar, const mlk_attn_desc *d, mlk__attn_geom *g, int backward, int *team)
{
    mlk_status st;
    int threads = g->threads < mlk__max_threads() ? g->threads : mlk__max_threads();
    if (d->workspace) {
        size_t pad = (MLK__ALIGN - (uintptr_t)d->workspace % MLK__ALIGN) % MLK__ALIGN;
        size_t usable = d->workspace_bytes > pad ? d->workspace_bytes - pad : 0;
        size_t slab = backward ? g->bwd_thread_bytes : g->fwd_thread_bytes, shared, fit;
        mlk__attn_pieces(g, backward, 0, g->pc);
        shared = mlk__pieces_bytes(g->pc, 3);
        fit = usable >= shared ? (usable - shared) / slab : 0;
        if (fit < 1) return MLK_ERR_ARG;
        if (fit < (size_t)threads) threads = (int)fit;
    }
    if ((st = mlk__arena_carve(ar, d->workspace, g->pc, mlk__attn_pieces(g, backward, threads, g->pc))) != MLK_OK)
        return st;
    if (d->tree_parent) mlk__tree_depths(g->len_q, d->tree_parent, (int *)g->pc[0].ptr);
    *team = threads;
    return MLK_OK;
}

MLKERN_DEF size_t mlk_attn_workspace_size(const mlk_attn_desc *d)
{
    mlk__attn_geom g;
    if (mlk__attn_validate(d, &g) != MLK_OK) return 0;
    return (g.fwd_cap > g.bwd_cap ? g.fwd_cap : g.bwd_cap) + MLK__ALIGN;
}

/* 1 when a call of about `macs` multiply-adds is worth waking the team. */
MLK__MAYBE_UNUSED static int mlk__attn_fan_out(double macs) { return macs >= MLK__PAR_ATTN_MACS; }

/* One forward task: tile_q queries of the `group` heads sharing kv head kvh. */
static void mlk__attn_fwd_task(const mlk_attn_desc *d, const mlk__attn_geom *g, const int *depth, int task,
                               const float *q, const float *k, const float *v, float *o, float *lse, void *scratch)
{
    /* a head's q tiles last to first: under causal masking the costliest
       go first and the cheapest fill the threads' ends */
    int qt = g->n_q_tiles - 1 - task % g->n_q_tiles, kvh = task / g->n_q_tiles % g->kv_heads;
    int b = task / g->n_q_tiles / g->kv_heads;
    int q0 = qt * g->tile_q, nq = g->len_q - q0 < g->tile_q ? g->len_q - q0 : g->tile_q;
    int h0 = kvh * g->group, lo, hi;
    size_t q_off = (size_t)b * g->q_batch + (size_t)h0 * g->q_head + (size_t)q0 * g->q_tok;
    size_t kv_off = (size_t)b * g->kv_batch + (size_t)kvh * g->kv_head;
    mlk__attn_kt_cache *kt_cache = mlk__attn_kt_cache_at(g, (unsigned char *)scratch);
    mlk__attn_mask m;
    mlk__attn_rows st;
    mlk__attn_item_mask(d, g, b, depth, &m);
    mlk__attn_rows_init(&st, &m, q0, nq, g->group, g->head_dim, g->tile_kv, g->scale, g->softcap, q + q_off,
                        g->q_head, g->q_tok, scratch);
    if (d->sinks) mlk__attn_rows_sinks(&st, d->sinks + h0);
    mlk__attn_key_range(&m, q0, q0 + nq, &lo, &hi);
    for (int kv0 = lo; kv0 < hi; kv0 += g->tile_kv) {
        int nk = hi - kv0 < g->tile_kv ? hi - kv0 : g->tile_kv;
        size_t at = kv_off + (size_t)kv0 * g->kv_tok;
        if (!mlk__attn_rows_typed(&st)) {
            const float *k_t = mlk__attn_kt_tile(g, kt_cache, (long long)b * g->kv_heads + kvh, kv0, nk, k + at);
            mlk__attn_rows_update(&st, kv0, nk, k + at, g->kv_tok, v + at, g->kv_tok, k_t);
            continue;
        }
        for (int j = 0; j < nk; j++) {
            st.k_row[j] = (const unsigned char *)(const void *)(k + at + (size_t)j * g->kv_tok);
            st.v_row[j] = (const unsigned char *)(const void *)(v + at + (size_t)j * g->kv_tok);
        }
        st.nk_next = hi - (kv0 + nk) < g->tile_kv ? hi - (kv0 + nk) : g->tile_kv;
        for (int j = 0; j < st.nk_next; j++)
            st.k_next[j] = (const unsigned char *)(const void *)(k + at + (size_t)(nk + j) * g->kv_tok);
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
    int *depth, n_tasks, team;
    unsigned char *slabs;
    if (!d || !q || !k || !v || !o) return MLK_ERR_NULL;
    if ((st = mlk__attn_validate(d, &g)) != MLK_OK) return st;
    if ((st = mlk__attn_arena(&ar, d, &g, 0, &team)) != MLK_OK) return st;
    depth = (int *)g.pc[0].ptr;
    slabs = (unsigned char *)g.pc[2].ptr;
    n_tasks = g.batch * g.kv_heads * g.n_q_tiles;
    for (int t = 0; t < team; t++) {
        mlk__attn_kt_cache *c = mlk__attn_kt_cache_at(&g, slabs + g.fwd_thread_bytes * (size_t)t);
        if (c) c->owner = -1;
    }
    /* tasks are independent (no reduction), so dynamic scheduling balances
       causal work without touching determinism */
    MLK__OMP(omp parallel for schedule(dynamic, 1) num_threads(team)
             if(mlk__attn_fan_out((double)g.batch * g.heads * g.len_q * (double)g.len_kv * g.head_dim)))
    for (int t = 0; t < n_tasks; t++)
        mlk__attn_fwd_task(d, &g, depth, t, q, k, v, o, lse, slabs + g.fwd_thread_bytes * (size_t)mlk__thread_id());
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
    unsigned char *seen; /* [len_kv]: key j visible to the current query */
    if (!d || !q || !k || !v || !o) return MLK_ERR_NULL;
    if ((st = mlk__attn_validate(d, &g)) != MLK_OK) return st;
    /* the reference never uses the caller's workspace (not sized for it) */
    g.pc[0] = mlk__piece_of((size_t)g.len_q * sizeof(int));
    g.pc[1] = mlk__piece_of((size_t)g.len_kv * sizeof(double));
    g.pc[2] = mlk__piece_of((size_t)g.len_kv);
    if ((st = mlk__arena_carve(&ar, NULL, g.pc, 3)) != MLK_OK) return st;
    depth = (int *)g.pc[0].ptr;
    if (d->tree_parent) mlk__tree_depths(g.len_q, d->tree_parent, depth);
    s = (double *)g.pc[1].ptr;
    seen = (unsigned char *)g.pc[2].ptr;
    for (int b = 0; b < g.batch; b++) {
        mlk__attn_mask m;
        mlk__attn_item_mask(d, &g, b, depth, &m);
        for (int h = 0; h < g.heads; h++)
            for (int i = 0; i < g.len_q; i++) {
                size_t qo = (size_t)b * g.q_batch + (size_t)h * g.q_head + (size_t)i * g.q_tok;
                size_t kvo = (size_t)b * g.kv_batch + (size_t)(h / g.group) * g.kv_head;
                double sink = d->sinks ? (double)d->sinks[h] : -INFINITY, row_max = sink, l_sum = 0;
                int saw_nan = 0;
                for (int j = 0; j < g.len_kv; j++) {
                    double dot = 0;
                    seen[j] = (unsigned char)mlk__attn_visible(&m, i, j);
                    if (!seen[j]) continue; /* masked: contributes nothing at all */
                    for (int e = 0; e < g.head_dim; e++) dot += (double)q[qo + e] * k[kvo + (size_t)j * g.kv_tok + e];
                    s[j] = dot * g.scale;
                    if (g.softcap > 0) s[j] = g.softcap * tanh(s[j] / g.softcap);
                    saw_nan |= s[j] != s[j];
                    if (s[j] > row_max) row_max = s[j];
                }
                for (int e = 0; e < g.head_dim; e++) o[qo + e] = saw_nan ? NAN : 0.0f;
                if (saw_nan || row_max == -INFINITY) { /* a NaN score poisons the row; or it sees nothing */
                    if (lse) lse[((size_t)b * g.heads + h) * g.len_q + i] = saw_nan ? NAN : -INFINITY;
                    continue;
                }
                l_sum = sink > -INFINITY ? exp(sink - row_max) : 0;
                for (int j = 0; j < g.len_kv; j++) l_sum += seen[j] ? exp(s[j] - row_max) : 0;
                for (int e = 0; e < g.head_dim; e++) {
                    double acc = 0; /* a visible key of weight 0 still multiplies its value (0 * inf is NaN) */
                    for (int j = 0; j < g.len_kv; j++)
                        if (seen[j]) acc += exp(s[j] - row_max) * v[kvo + (size_t)j * g.kv_tok + e];
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

/* P and dS of rows r0 .. r0+rows-1 of a q tile against keys kv0 ..
   kv0+nk-1, already holding S in p and dP in ds (row stride ld). With a
   softcap, d(cap tanh(u/cap))/du = 1 / cosh^2(u/cap) is taken from u
   (1 - tanh^2 would cancel where tanh saturates) and parked in cap_grad. */
static void mlk__attn_bwd_probs(const mlk__attn_geom *g, const mlk__attn_mask *m, int q0, int kv0, int nk, int full,
                                int r0, int rows, const float *lse_r, const float *d_r, float *p, float *ds, int ld,
                                float *cap_grad)
{
    for (int r = r0; r < r0 + rows; r++) {
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
        /* p = 0 (masked) gives dS = 0 even where a masked value made dP NaN */
        for (int j = 0; j < nk; j++) { /* both computed, then a select: it vectorises */
            const float ds_j = s[j] * (dsr[j] - d_r[r]);
            dsr[j] = s[j] != 0.0f ? ds_j : 0.0f;
        }
        if (g->softcap > 0)
            for (int j = 0; j < nk; j++) dsr[j] *= cg[j];
    }
}

/* x[j] = 0 for j in [a, b) and [c, d) (a <= b <= c <= d). */
static void mlk__attn_zero_span(float *x, int a, int b, int c, int d)
{
    if (b > a) memset(x + a, 0, (size_t)(b - a) * sizeof(float));
    if (d > c) memset(x + c, 0, (size_t)(d - c) * sizeof(float));
}

/* The columns [*c0, *c1) of a pair's visible columns [j0, j1) that rows
   r0 .. r0+rows-1 of q tile q0 may see (c0 = c1 = j0: none). */
static void mlk__attn_bwd_cols(const mlk__attn_mask *m, int group, int q0, int kv0, int r0, int rows, int j0, int j1,
                               int *c0, int *c1)
{
    int lo, hi;
    mlk__attn_block_keys(m, q0, group, r0, rows, kv0, j1, &lo, &hi);
    lo = lo < j0 ? j0 : lo;
    if (hi <= lo) lo = hi = j0;
    *c0 = lo;
    *c1 = hi;
}

/* Rows (queries x grouped heads) of the forward's q tile holding query q0. */
static int mlk__attn_fwd_tile_rows(const mlk__attn_geom *g, int q0)
{
    const int start = q0 / g->tile_q * g->tile_q;
    return (g->len_q - start < g->tile_q ? g->len_q - start : g->tile_q) * g->group;
}

static void mlk__attn_bwd_task(const mlk_attn_desc *d, const mlk__attn_geom *g, const int *depth, int task,
                               const mlk__attn_bwd_io *io, void *scratch)
{
    int b = task / g->kv_heads, kvh = task % g->kv_heads, h0 = kvh * g->group, dim = g->head_dim;
    int dp = mlk__attn_pad(dim), kp = mlk__attn_pad(g->bwd_tile_kv), max_rows = g->bwd_tile_q * g->group;
    size_t q_off = (size_t)b * g->q_batch + (size_t)h0 * g->q_head;
    size_t kv_off = (size_t)b * g->kv_batch + (size_t)kvh * g->kv_head;
    size_t lse_off = ((size_t)b * g->heads + (size_t)h0) * g->len_q;
    float *k_t = (float *)scratch, *v_t = k_t + (size_t)dim * kp, *k_pack = v_t + (size_t)dim * kp;
    float *dk_acc = k_pack + (size_t)kp * dp, *dv_acc = dk_acc + (size_t)kp * dp;
    float *q_pack = dv_acc + (size_t)kp * dp, *do_pack = q_pack + (size_t)max_rows * dp;
    float *dq_tile = do_pack + (size_t)max_rows * dp, *p = dq_tile + (size_t)max_rows * dp;
    float *ds = p + (size_t)max_rows * kp, *cap_grad = ds + (size_t)max_rows * kp, *lse_r = cap_grad + (size_t)kp * max_rows;
    float *d_r = lse_r + max_rows;
    const unsigned char **k_row = (const unsigned char **)(void *)(d_r + max_rows), **v_row = k_row + kp;
    int *k_bad = (int *)(void *)(v_row + kp), n_k_bad = 0;
    int *blk_lo = k_bad + kp, *blk_hi = blk_lo + mlk__attn_row_blocks(max_rows); /* per row block: its columns */
    int *key_lo = blk_hi + mlk__attn_row_blocks(max_rows), *key_hi = key_lo + mlk__attn_row_blocks(kp); /* its rows */
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
            n_k_bad = mlk__attn_zero_bad_rows(nk, dim, k_pack, dp, k_bad); /* dq = dS K: see mlk__attn_add_rows */
        }
        for (int q0 = 0; nk > 0 && q0 < g->len_q; q0 += g->bwd_tile_q) {
            int nq = g->len_q - q0 < g->bwd_tile_q ? g->len_q - q0 : g->bwd_tile_q, n_rows = nq * g->group, lo, hi;
            mlk__attn_key_range(&m, q0, q0 + nq, &lo, &hi);
            if (hi <= kv0 || lo >= kv0 + nk) continue;
            /* only keys j0 .. j1-1 of the tile are seen by a query of this q
               tile (j0 down to an NR block): the rest, the masked columns of
               a causal diagonal tile, are left out of all five products; they
               only ever added zeros */
            const int j0 = lo - kv0 <= 0 ? 0 : (lo - kv0) / MLK__NR * MLK__NR;
            const int j1 = hi - kv0 < nk ? hi - kv0 : nk, n_vis = j1 - j0;
            const int full = mlk__attn_tile_full(&m, q0, q0 + nq, kv0, kv0 + nk);
            const int typed = mlk__attn_fwd_tile_rows(g, q0) < MLK__ATTN_TYPED_ROWS;
            for (int r = 0; r < n_rows; r++) {
                size_t at = q_off + (size_t)(r % g->group) * g->q_head + (size_t)(q0 + r / g->group) * g->q_tok;
                size_t li = lse_off + (size_t)(r % g->group) * g->len_q + (size_t)(q0 + r / g->group);
                for (int e = 0; e < dim; e++) q_pack[(size_t)r * dp + e] = g->scale * io->q[at + e];
                memset(q_pack + (size_t)r * dp + dim, 0, (size_t)(dp - dim) * sizeof(float));
                mlk__attn_copy_rows(1, dim, io->dout + at, 0, do_pack + (size_t)r * dp, dp);
                lse_r[r] = io->lse[li];
                d_r[r] = io->row_d[li];
            }
            if (typed) { /* the forward took it as typed rows */
                mlk__attn_rows view;
                memset(&view, 0, sizeof view);
                view.n_rows = n_rows;
                view.head_dim = dim;
                view.dpad = dp;
                view.kv_pad = kp;
                view.q_pack = q_pack;
                view.scores = p + j0;
                view.k_row = k_row;
                view.v_row = v_row;
                for (int j = 0; j < n_vis; j++) {
                    k_row[j] = (const unsigned char *)(const void *)(kt + (size_t)(j0 + j) * g->kv_tok);
                    v_row[j] = (const unsigned char *)(const void *)(vt + (size_t)(j0 + j) * g->kv_tok);
                }
                mlk__attn_typed_scores(&view, n_vis, MLK_KV_F32);
            }
            /* S, dP, P and dS of each block of micro-kernel rows only over
               the columns [c0, c1) it sees; zeros fill the rest of [j0, j1),
               so the products that follow may sum over any range that
               holds what is seen (left-out terms only added zeros) */
            for (int r0 = 0; r0 < n_rows; r0 += MLK__MR)
                mlk__attn_bwd_cols(&m, g->group, q0, kv0, r0, mlk__attn_block_rows(n_rows, r0), j0, j1,
                                   &blk_lo[r0 / MLK__MR], &blk_hi[r0 / MLK__MR]);
            if (!typed)
                mlk__attn_mm_cols(n_rows, mlk__attn_pad(j1), dim, q_pack, (size_t)dp, k_t, kp, p, kp, blk_lo, blk_hi);
            mlk__attn_mm_cols(n_rows, mlk__attn_pad(j1), dim, do_pack, (size_t)dp, v_t, kp, ds, kp, blk_lo, blk_hi);
            for (int r0 = 0; r0 < n_rows; r0 += MLK__MR) {
                const int rows = mlk__attn_block_rows(n_rows, r0), c0 = blk_lo[r0 / MLK__MR], c1 = blk_hi[r0 / MLK__MR];
                if (c1 > c0)
                    mlk__attn_bwd_probs(g, &m, q0, kv0 + c0, c1 - c0, full, r0, rows, lse_r, d_r, p + c0, ds + c0,
                                        kp, cap_grad + c0);
                for (int r = r0; r < r0 + rows; r++) {
                    mlk__attn_zero_span(p + (size_t)r * kp, j0, c0, c1, j1);
                    mlk__attn_zero_span(ds + (size_t)r * kp, j0, c0, c1, j1);
                }
            }
            /* dV += P^T dO, dK += dS^T Q (P and dS read as their
               transposes): each block of keys over the row blocks that see it */
            for (int jb = j0; jb < j1; jb += MLK__MR) {
                const int kb = (jb - j0) / MLK__MR;
                key_lo[kb] = n_rows;
                key_hi[kb] = 0;
                for (int r0 = 0; r0 < n_rows; r0 += MLK__MR)
                    if (blk_lo[r0 / MLK__MR] < jb + MLK__MR && blk_hi[r0 / MLK__MR] > jb) {
                        key_lo[kb] = r0 < key_lo[kb] ? r0 : key_lo[kb];
                        key_hi[kb] = r0 + mlk__attn_block_rows(n_rows, r0);
                    }
            }
            mlk__attn_mm_krange(n_vis, dp, p + j0, 1, (size_t)kp, do_pack, dp, dv_acc + (size_t)j0 * dp, dp, 1,
                                key_lo, key_hi);
            mlk__attn_mm_krange(n_vis, dp, ds + j0, 1, (size_t)kp, q_pack, dp, dk_acc + (size_t)j0 * dp, dp, 1,
                                key_lo, key_hi);
            if (!io->dq) continue;
            mlk__attn_mm_krange(n_rows, dp, ds, (size_t)kp, 1, k_pack, dp, dq_tile, dp, 0, blk_lo, blk_hi);
            mlk__attn_add_rows(&m, q0, g->group, n_rows, kv0, n_k_bad, k_bad, ds, (size_t)kp, kt, g->kv_tok, dim,
                               dq_tile, (size_t)dp);
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

/* D_i = rowsum(dO_i o O_i) of query i of row set bh = b * heads + h. */
static float mlk__attn_row_d(const mlk__attn_geom *g, const float *o, const float *dout, int bh, int i)
{
    size_t at = (size_t)(bh / g->heads) * g->q_batch + (size_t)(bh % g->heads) * g->q_head + (size_t)i * g->q_tok;
    float sum = 0;
    for (int e = 0; e < g->head_dim; e++) sum += dout[at + e] * o[at + e];
    return sum;
}

MLKERN_DEF mlk_status mlk_attn_bwd(const mlk_attn_desc *d, const float *q, const float *k, const float *v,
                                   const float *o, const float *dout, const float *lse, float *dq, float *dk, float *dv)
{
    mlk__attn_geom g;
    mlk__arena ar;
    mlk_status st;
    mlk__attn_bwd_io io;
    int *depth, n_rowsets, team;
    float *row_d;
    unsigned char *slabs;
    if (!d || !q || !k || !v || !o || !dout || !lse) return MLK_ERR_NULL;
    if ((st = mlk__attn_validate(d, &g)) != MLK_OK) return st;
    if (!dq && !dk && !dv) return MLK_OK;
    if ((st = mlk__attn_arena(&ar, d, &g, 1, &team)) != MLK_OK) return st;
    depth = (int *)g.pc[0].ptr;
    row_d = (float *)g.pc[1].ptr;
    slabs = (unsigned char *)g.pc[2].ptr;
    n_rowsets = g.batch * g.heads;
    MLK__OMP(omp parallel for schedule(static) num_threads(team))
    for (int bh = 0; bh < n_rowsets; bh++)
        for (int i = 0; i < g.len_q; i++) row_d[(size_t)bh * g.len_q + i] = mlk__attn_row_d(&g, o, dout, bh, i);
    io.q = q; io.k = k; io.v = v; io.dout = dout; io.lse = lse; io.row_d = row_d;
    io.dq = dq; io.dk = dk; io.dv = dv;
    MLK__OMP(omp parallel for schedule(dynamic, 1) num_threads(team))
    for (int t = 0; t < g.batch * g.kv_heads; t++)
        mlk__attn_bwd_task(d, &g, depth, t, &io, slabs + g.bwd_thread_bytes * (size_t)mlk__thread_id());
    mlk__arena_done(&ar);
    return MLK_OK;
}

/* The sink is a key whose value is 0: dS_sink = p_sink (dP_sink - D) with
   dP_sink = 0, summed over every row of the head. */
MLKERN_DEF mlk_status mlk_attn_sinks_grad(const mlk_attn_desc *d, const float *o, const float *dout,
    const float *lse, float *dsinks)
{
    mlk__attn_geom g;
    mlk_status st;
    if (!d || !o || !dout || !lse || !dsinks || !d->sinks) return MLK_ERR_NULL;
    if ((st = mlk__attn_validate(d, &g)) != MLK_OK) return st;
    for (int h = 0; h < g.heads; h++) {
        double sum = 0;
        for (int b = 0; b < g.batch; b++)
            for (int i = 0; i < g.len_q; i++) {
                size_t row = ((size_t)b * g.heads + h) * g.len_q + i;
                if (lse[row] > -INFINITY)
                    sum += exp((double)d->sinks[h] - lse[row]) * mlk__attn_row_d(&g, o, dout, b * g.heads + h, i);
            }
        dsinks[h] = (float)-sum;
    }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_attn_merge(int rows, int head_dim, const float *o_a, const float *lse_a,
    const float *o_b, const float *lse_b, float *o, float *lse)
{
    size_t count;
    if (!o_a || !lse_a || !o_b || !lse_b || !o || !lse) return MLK_ERR_NULL;
    if (rows < 1 || head_dim < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, head_dim, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    MLK__OMP(omp parallel for schedule(static) if (count > MLK__PAR_NORM_FLOATS))
    for (int r = 0; r < rows; r++) {
        const double la = lse_a[r], lb = lse_b[r], m = la > lb ? la : lb;
        const float *xa = o_a + (size_t)r * head_dim, *xb = o_b + (size_t)r * head_dim;
        float *y = o + (size_t)r * head_dim;
        double wa, wb;
        if (m == -INFINITY) { /* neither side saw a key */
            for (int e = 0; e < head_dim; e++) y[e] = 0.0f;
            lse[r] = -INFINITY;
            continue;
        }
        wa = la > -INFINITY ? exp(la - m) : 0.0;
        wb = lb > -INFINITY ? exp(lb - m) : 0.0;
        for (int e = 0; e < head_dim; e++) /* a side with weight 0 contributes nothing, even NaN */
            y[e] = (float)(((wa > 0 ? wa * xa[e] : 0.0) + (wb > 0 ? wb * xb[e] : 0.0)) / (wa + wb));
        lse[r] = (float)(m + log(wa + wb));
    }
    return MLK_OK;
}

/* ======================================================================
   rope
   ====================================================================== */

/* Per row, the cos / sin of every pair come from one double-precision
   angle pos * inv_freq[i] (float32 would keep only 24 bits of a long
   position's angle); then each head's pairs turn in float, 8 lanes at a
   time. Pairs go in chunks of MLK__ROPE_CHUNK: the chunk's inv_freq lives
   on the caller's stack, its cos/sin on each thread's, so nothing is
   allocated. rot_dim <= 2 * MLK__ROPE_CHUNK is one pass over x; wider
   rotations take one pass per chunk. */
#define MLK__ROPE_CHUNK 256
#define MLK__ROPE_2PI 6.283185307179586

static int mlk__rope_positive(float v) { return v > 0.0f && v <= FLT_MAX; }

/* NULLs, sizes, then values, as the declarations list them. */
static mlk_status mlk__rope_check(const mlk_rope_config *cfg, int rows, int heads, const int32_t *pos,
                                  const float *x, size_t *count)
{
    if (!cfg || !pos || !x) return MLK_ERR_NULL;
    if (rows < 1 || heads < 1 || cfg->head_dim < 1 || cfg->rot_dim < 2 || cfg->rot_dim > cfg->head_dim ||
        cfg->rot_dim % 2 != 0)
        return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, heads, cfg->head_dim, 1, sizeof(float), count)) return MLK_ERR_OVERFLOW;
    if (!mlk__rope_positive(cfg->theta) || !(cfg->theta > 1.0f)) return MLK_ERR_ARG;
    if (cfg->style != MLK_ROPE_NEOX && cfg->style != MLK_ROPE_GPTJ) return MLK_ERR_ARG;
    switch (cfg->scaling) {
    case MLK_ROPE_SCALE_NONE: break;
    case MLK_ROPE_SCALE_LINEAR:
        if (!mlk__rope_positive(cfg->factor)) return MLK_ERR_ARG;
        break;
    case MLK_ROPE_SCALE_LLAMA3:
        if (!mlk__rope_positive(cfg->factor) || !mlk__rope_positive(cfg->low_freq_factor) ||
            !mlk__rope_positive(cfg->high_freq_factor) || !(cfg->low_freq_factor < cfg->high_freq_factor) ||
            cfg->original_max_position < 1)
            return MLK_ERR_ARG;
        break;
    case MLK_ROPE_SCALE_YARN:
        if (!mlk__rope_positive(cfg->factor) || cfg->original_max_position < 1 ||
            !(cfg->beta_fast == 0.0f || mlk__rope_positive(cfg->beta_fast)) ||
            !(cfg->beta_slow == 0.0f || mlk__rope_positive(cfg->beta_slow)) ||
            !(cfg->attn_factor == 0.0f || mlk__rope_positive(cfg->attn_factor)))
            return MLK_ERR_ARG;
        break;
    default: return MLK_ERR_ARG;
    }
    for (int r = 0; r < rows; r++)
        if (pos[r] < 0) return MLK_ERR_ARG;
    return MLK_OK;
}

/* YaRN's pair index with `rotations` turns over the original context:
   d = rot_dim ln(L / (2 pi rotations)) / (2 ln theta) (HF's find_correction_dim). */
static double mlk__rope_yarn_dim(const mlk_rope_config *cfg, double rotations)
{
    return cfg->rot_dim * log(cfg->original_max_position / (rotations * MLK__ROPE_2PI)) /
           (2.0 * log((double)cfg->theta));
}

/* inv_freq of pair i: theta^(-2i / rot_dim), then the scaling's blend of
   the original (extrapolated) and the divided-by-factor (interpolated) one. */
static double mlk__rope_inv_freq(const mlk_rope_config *cfg, int i)
{
    double inv = 1.0 / pow((double)cfg->theta, 2.0 * i / cfg->rot_dim), factor = cfg->factor;
    double len = cfg->original_max_position, blend;
    if (cfg->scaling == MLK_ROPE_SCALE_LINEAR) return inv / factor;
    if (cfg->scaling == MLK_ROPE_SCALE_LLAMA3) { /* by wavelength against the original context */
        double wave = MLK__ROPE_2PI / inv, lo = cfg->low_freq_factor, hi = cfg->high_freq_factor;
        if (wave < len / hi) return inv;
        if (wave > len / lo) return inv / factor;
        blend = (len / wave - lo) / (hi - lo);
        return (1.0 - blend) * inv / factor + blend * inv;
    }
    if (cfg->scaling == MLK_ROPE_SCALE_YARN) { /* by pair index: a linear ramp from lo to hi */
        double lo = floor(mlk__rope_yarn_dim(cfg, cfg->beta_fast > 0 ? cfg->beta_fast : 32.0));
        double hi = ceil(mlk__rope_yarn_dim(cfg, cfg->beta_slow > 0 ? cfg->beta_slow : 1.0));
        lo = lo > 0 ? lo : 0;
        hi = hi < cfg->rot_dim - 1 ? hi : cfg->rot_dim - 1;
        if (lo == hi) hi += 0.001;
        blend = (i - lo) / (hi - lo);
        blend = blend < 0 ? 0 : (blend > 1 ? 1 : blend);
        return blend * inv / factor + (1.0 - blend) * inv;
    }
    return inv;
}

/* The factor on cos and sin: YaRN's attention factor, else 1. */
static double mlk__rope_mscale(const mlk_rope_config *cfg)
{
    if (cfg->scaling != MLK_ROPE_SCALE_YARN) return 1.0;
    if (cfg->attn_factor > 0) return cfg->attn_factor;
    return cfg->factor > 1 ? 0.1 * log((double)cfg->factor) + 1.0 : 1.0;
}

/* cos / sin of a >= 0 in double: a = k pi/2 + r, |r| <= pi/4, with pi/2 in
   two parts (the first has 31 bits: k * P1 is exact for k < 2^22, a < 6.6e6;
   past that it rounds by half an ulp of a, as a did); Taylor series to r^11
   and r^12 (truncation < 1e-11); the quadrant k mod 4 swaps and negates. */
#define MLK__ROPE_P1 1.57079632673412561417
#define MLK__ROPE_P2 6.077100506506192e-11
#define MLK__ROPE_2_OVER_PI 0.6366197723675814
static const double mlk__rope_sin_poly[5] = {-1.0 / 39916800, 1.0 / 362880, -1.0 / 5040, 1.0 / 120, -1.0 / 6};
static const double mlk__rope_cos_poly[7] = {1.0 / 479001600, -1.0 / 3628800, 1.0 / 40320, -1.0 / 720,
                                             1.0 / 24, -0.5, 1.0};

#if defined(MLK__AVX2)
static __m256d mlk__rope_horner4(__m256d x, const double *coef, int n)
{
    __m256d p = _mm256_set1_pd(coef[0]);
    for (int i = 1; i < n; i++) p = _mm256_add_pd(_mm256_mul_pd(p, x), _mm256_set1_pd(coef[i]));
    return p;
}
#else
static double mlk__rope_horner1(double x, const double *coef, int n)
{
    double p = coef[0];
    for (int i = 1; i < n; i++) p = p * x + coef[i];
    return p;
}
#endif

/* co[i], si[i] of the angles p * inv[i], i < n (n a multiple of 4). */
static void mlk__rope_sincos(const double *inv, int n, double p, double *co, double *si)
{
#if defined(MLK__AVX2)
    const __m256d neg = _mm256_set1_pd(-0.0), two = _mm256_set1_pd(2.0), half = _mm256_set1_pd(0.5);
    for (int i = 0; i < n; i += 4) {
        __m256d a = _mm256_mul_pd(_mm256_set1_pd(p), _mm256_loadu_pd(inv + i));
        __m256d k = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(a, _mm256_set1_pd(MLK__ROPE_2_OVER_PI)), half));
        __m256d r = _mm256_sub_pd(_mm256_sub_pd(a, _mm256_mul_pd(k, _mm256_set1_pd(MLK__ROPE_P1))),
                                  _mm256_mul_pd(k, _mm256_set1_pd(MLK__ROPE_P2)));
        __m256d r2 = _mm256_mul_pd(r, r);
        __m256d s = _mm256_add_pd(r, _mm256_mul_pd(_mm256_mul_pd(r, r2), mlk__rope_horner4(r2, mlk__rope_sin_poly, 5)));
        __m256d c = mlk__rope_horner4(r2, mlk__rope_cos_poly, 7);
        __m256d q = _mm256_sub_pd(k, _mm256_mul_pd(_mm256_set1_pd(4.0), _mm256_floor_pd(_mm256_mul_pd(k, _mm256_set1_pd(0.25)))));
        __m256d odd = _mm256_cmp_pd(_mm256_sub_pd(q, _mm256_mul_pd(two, _mm256_floor_pd(_mm256_mul_pd(q, half)))),
                                    _mm256_set1_pd(1.0), _CMP_EQ_OQ);
        __m256d upper = _mm256_cmp_pd(q, two, _CMP_GE_OQ); /* q = 2, 3: sin < 0; q = 1, 2: cos < 0 */
        _mm256_storeu_pd(co + i, _mm256_xor_pd(_mm256_blendv_pd(c, s, odd), _mm256_and_pd(_mm256_xor_pd(odd, upper), neg)));
        _mm256_storeu_pd(si + i, _mm256_xor_pd(_mm256_blendv_pd(s, c, odd), _mm256_and_pd(upper, neg)));
    }
#else
    for (int i = 0; i < n; i++) {
        double a = p * inv[i], k = floor(a * MLK__ROPE_2_OVER_PI + 0.5);
        double r = (a - k * MLK__ROPE_P1) - k * MLK__ROPE_P2, r2 = r * r, q = k - 4.0 * floor(k * 0.25);
        double s = r + r * r2 * mlk__rope_horner1(r2, mlk__rope_sin_poly, 5);
        double c = mlk__rope_horner1(r2, mlk__rope_cos_poly, 7);
        co[i] = q == 0 ? c : q == 1 ? -s : q == 2 ? -c : s;
        si[i] = q == 0 ? s : q == 1 ? c : q == 2 ? -s : -c;
    }
#endif
}

/* NeoX pairs (x1[i], x2[i]), i < n: x1 c - x2 s, x2 c + x1 s. */
static void mlk__rope_rot_neox(float *x1, float *x2, const float *c, const float *s, int n)
{
#if defined(MLK__AVX2)
    int i = 0;
    for (; i <= n - 8; i += 8) {
        __m256 a = _mm256_loadu_ps(x1 + i), b = _mm256_loadu_ps(x2 + i);
        __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
        _mm256_storeu_ps(x1 + i, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)));
        _mm256_storeu_ps(x2 + i, _mm256_add_ps(_mm256_mul_ps(b, cv), _mm256_mul_ps(a, sv)));
    }
    if (i < n) { /* the last n - i pairs, masked: the same arithmetic */
        __m256i m = mlk__mask8(n - i);
        __m256 a = _mm256_maskload_ps(x1 + i, m), b = _mm256_maskload_ps(x2 + i, m);
        __m256 cv = _mm256_maskload_ps(c + i, m), sv = _mm256_maskload_ps(s + i, m);
        _mm256_maskstore_ps(x1 + i, m, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)));
        _mm256_maskstore_ps(x2 + i, m, _mm256_add_ps(_mm256_mul_ps(b, cv), _mm256_mul_ps(a, sv)));
    }
#else
    for (int i = 0; i < n; i++) {
        float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
    }
#endif
}

/* GPT-J pairs (x[2i], x[2i+1]) over n floats, with c = (cos, cos) and
   s = (-sin, sin) per pair: x c + swap(x) s, swap exchanging each pair. */
static void mlk__rope_rot_gptj(float *x, const float *c, const float *s, int n)
{
#if defined(MLK__AVX2)
    int i = 0;
    for (; i <= n - 8; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(c + i)),
                                              _mm256_mul_ps(_mm256_permute_ps(v, 0xB1), _mm256_loadu_ps(s + i))));
    }
    if (i < n) { /* the last pairs, masked */
        __m256i m = mlk__mask8(n - i);
        __m256 v = _mm256_maskload_ps(x + i, m);
        __m256 y = _mm256_add_ps(_mm256_mul_ps(v, _mm256_maskload_ps(c + i, m)),
                                 _mm256_mul_ps(_mm256_permute_ps(v, 0xB1), _mm256_maskload_ps(s + i, m)));
        _mm256_maskstore_ps(x + i, m, y);
    }
#else
    for (int i = 0; i < n; i += 2) {
        float a = x[i], b = x[i + 1];
        x[i] = a * c[i] + b * s[i];
        x[i + 1] = b * c[i + 1] + a * s[i + 1];
    }
#endif
}

/* One row (all heads), pairs [p0, p0 + n) of the chunk whose inv_freq is
   inv: the cos/sin table once, then every head. sign -1 turns by -angle. */
static void mlk__rope_row(const mlk_rope_config *cfg, int heads, float *row, int32_t p, const double *inv,
                          int p0, int n, double mscale, double sign)
{
    double co[MLK__ROPE_CHUNK], si[MLK__ROPE_CHUNK];
    float c[2 * MLK__ROPE_CHUNK], s[2 * MLK__ROPE_CHUNK];
    int gptj = cfg->style == MLK_ROPE_GPTJ, half = cfg->rot_dim / 2;
    mlk__rope_sincos(inv, (n + 3) / 4 * 4, (double)p, co, si);
    for (int i = 0; i < n; i++) {
        float cv = (float)(mscale * co[i]), sv = (float)(sign * mscale * si[i]);
        if (gptj) {
            c[2 * i] = c[2 * i + 1] = cv;
            s[2 * i] = -sv;
            s[2 * i + 1] = sv;
        } else {
            c[i] = cv;
            s[i] = sv;
        }
    }
    for (int h = 0; h < heads; h++) {
        float *xh = row + (size_t)h * (size_t)cfg->head_dim;
        if (gptj) mlk__rope_rot_gptj(xh + 2 * p0, c, s, 2 * n);
        else mlk__rope_rot_neox(xh + p0, xh + half + p0, c, s, n);
    }
}

/* Both directions: sign +1 forward, -1 backward. */
static mlk_status mlk__rope(const mlk_rope_config *cfg, int rows, int heads, const int32_t *pos, float *x,
                            double sign)
{
    double inv[MLK__ROPE_CHUNK], mscale;
    size_t count;
    int half;
    mlk_status st = mlk__rope_check(cfg, rows, heads, pos, x, &count);
    if (st != MLK_OK) return st;
    half = cfg->rot_dim / 2;
    mscale = mlk__rope_mscale(cfg);
    for (int p0 = 0; p0 < half; p0 += MLK__ROPE_CHUNK) {
        int n = half - p0 < MLK__ROPE_CHUNK ? half - p0 : MLK__ROPE_CHUNK;
        for (int i = 0; i < MLK__ROPE_CHUNK; i++) inv[i] = i < n ? mlk__rope_inv_freq(cfg, p0 + i) : 0.0;
        MLK__OMP(omp parallel for schedule(static) if (count > MLK__PAR_ELEMS))
        for (int r = 0; r < rows; r++)
            mlk__rope_row(cfg, heads, x + (size_t)r * (size_t)heads * (size_t)cfg->head_dim, pos[r], inv, p0, n,
                          mscale, sign);
    }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_rope_fwd(const mlk_rope_config *cfg, int rows, int heads, const int32_t *pos, float *x)
{
    return mlk__rope(cfg, rows, heads, pos, x, 1.0);
}

MLKERN_DEF mlk_status mlk_rope_bwd(const mlk_rope_config *cfg, int rows, int heads, const int32_t *pos, float *dy)
{
    return mlk__rope(cfg, rows, heads, pos, dy, -1.0);
}

/* ======================================================================
   KV cache
   ====================================================================== */


struct mlk_kv_cache {
    mlk_kv_config cfg;
    size_t row_bytes;   /* one position of one head, K or V */
    size_t block_bytes; /* layers * 2 * kv_heads * block_size rows */
    unsigned char *pool;
    int *refcount;      /* [num_blocks]; 0 = on the free list */
    int *free_list;     /* stack of free block ids */
    int free_count;
    int *seq_len;       /* [max_seqs]; -1 = unused slot */
    int **table;        /* [max_seqs] block ids, table_cap[s] entries */
    int *table_cap;
    int live_seqs;
};

/* ---- pool and block tables ---- */

MLKERN_DEF size_t mlk_kv_bytes_per_token(const mlk_kv_config *cfg)
{
    size_t row, n;
    if (!cfg || cfg->layers < 1 || cfg->kv_heads < 1 || cfg->head_dim < 1 || cfg->block_size < 1 ||
        cfg->num_blocks < 1 || cfg->max_seqs < 1)
        return 0;
    if (cfg->type != MLK_KV_F32 && cfg->type != MLK_KV_F16 && cfg->type != MLK_KV_Q8 &&
        cfg->type != MLK_KV_Q4)
        return 0;
    row = mlk__row_bytes(cfg->type, cfg->head_dim);
    if (!mlk__count4(2, cfg->kv_heads, 1, 1, row, &n)) return 0;
    return n * row;
}

/* Both creators: `storage` 0 leaves the pool out. */
static mlk_status mlk__kv_create(const mlk_kv_config *cfg, int storage, mlk_kv_cache **out)
{
    mlk_kv_cache *c;
    size_t tok, positions, pool_bytes;
    if (!cfg || !out) return MLK_ERR_NULL;
    if (cfg->layers < 1 || cfg->kv_heads < 1 || cfg->head_dim < 1 || cfg->block_size < 1 ||
        cfg->num_blocks < 1 || cfg->max_seqs < 1)
        return MLK_ERR_SHAPE;
    if (cfg->type != MLK_KV_F32 && cfg->type != MLK_KV_F16 && cfg->type != MLK_KV_Q8 &&
        cfg->type != MLK_KV_Q4)
        return MLK_ERR_ARG;
    tok = mlk_kv_bytes_per_token(cfg);
    if (!tok || !mlk__count4(cfg->layers, cfg->block_size, 1, 1, tok, &positions) ||
        !mlk__mul_ok(positions * tok, (size_t)cfg->num_blocks, &pool_bytes) ||
        (size_t)cfg->max_seqs > SIZE_MAX / sizeof(int *))
        return MLK_ERR_OVERFLOW;
    c = (mlk_kv_cache *)MLKERN_MALLOC(sizeof *c);
    if (!c) return MLK_ERR_NOMEM;
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    c->row_bytes = mlk__row_bytes(cfg->type, cfg->head_dim);
    c->block_bytes = positions * tok;
    c->pool = storage ? (unsigned char *)mlk__alloc(pool_bytes) : NULL;
    c->refcount = (int *)MLKERN_MALLOC((size_t)cfg->num_blocks * sizeof(int));
    c->free_list = (int *)MLKERN_MALLOC((size_t)cfg->num_blocks * sizeof(int));
    c->seq_len = (int *)MLKERN_MALLOC((size_t)cfg->max_seqs * sizeof(int));
    c->table = (int **)MLKERN_MALLOC((size_t)cfg->max_seqs * sizeof(int *));
    c->table_cap = (int *)MLKERN_MALLOC((size_t)cfg->max_seqs * sizeof(int));
    if ((!c->pool && storage) || !c->refcount || !c->free_list || !c->seq_len || !c->table ||
        !c->table_cap) {
        if (c->table) memset(c->table, 0, (size_t)cfg->max_seqs * sizeof(int *));
        mlk_kv_destroy(c);
        return MLK_ERR_NOMEM;
    }
    for (int b = 0; b < cfg->num_blocks; b++) { /* pop order 0, 1, 2, ... */
        c->refcount[b] = 0;
        c->free_list[b] = cfg->num_blocks - 1 - b;
    }
    c->free_count = cfg->num_blocks;
    for (int s = 0; s < cfg->max_seqs; s++) {
        c->seq_len[s] = -1;
        c->table[s] = NULL;
        c->table_cap[s] = 0;
    }
    *out = c;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_create(const mlk_kv_config *cfg, mlk_kv_cache **out)
{
    return mlk__kv_create(cfg, 1, out);
}

MLKERN_DEF mlk_status mlk_kv_create_bookkeeping(const mlk_kv_config *cfg, mlk_kv_cache **out)
{
    return mlk__kv_create(cfg, 0, out);
}

MLKERN_DEF void mlk_kv_destroy(mlk_kv_cache *c)
{
    if (!c) return;
    if (c->table)
        for (int s = 0; s < c->cfg.max_seqs; s++) MLKERN_FREE(c->table[s]);
    mlk__free(c->pool);
    MLKERN_FREE(c->refcount);
    MLKERN_FREE(c->free_list);
    MLKERN_FREE(c->seq_len);
    MLKERN_FREE(c->table);
    MLKERN_FREE(c->table_cap);
    MLKERN_FREE(c);
}

static int mlk__kv_valid_seq(const mlk_kv_cache *c, int seq)
{
    return seq >= 0 && seq < c->cfg.max_seqs && c->seq_len[seq] >= 0;
}

static int mlk__kv_blocks_for(const mlk_kv_cache *c, int len)
{
    return (int)(((long long)len + c->cfg.block_size - 1) / c->cfg.block_size);
}

/* Makes room for n block ids in the table of seq, keeping its first `kept`
   entries; 0 on allocation failure (the table is unchanged then). */
static int mlk__kv_reserve(mlk_kv_cache *c, int seq, int n, int kept)
{
    int cap = c->table_cap[seq], *t;
    if (n <= cap) return 1;
    cap = cap < 4 ? 4 : cap;
    while (cap < n) cap = cap > c->cfg.num_blocks / 2 ? c->cfg.num_blocks : cap * 2;
    t = (int *)MLKERN_MALLOC((size_t)cap * sizeof(int));
    if (!t) return 0;
    if (kept > 0) memcpy(t, c->table[seq], (size_t)kept * sizeof(int));
    MLKERN_FREE(c->table[seq]);
    c->table[seq] = t;
    c->table_cap[seq] = cap;
    return 1;
}

static void mlk__kv_release(mlk_kv_cache *c, int block)
{
    if (--c->refcount[block] == 0) c->free_list[c->free_count++] = block;
}

static int mlk__kv_take_block(mlk_kv_cache *c)
{
    int b = c->free_list[--c->free_count];
    c->refcount[b] = 1;
    return b;
}

/* Shortens seq to len, releasing the blocks past the new end. */
static void mlk__kv_shrink(mlk_kv_cache *c, int seq, int len)
{
    int keep = mlk__kv_blocks_for(c, len), have = mlk__kv_blocks_for(c, c->seq_len[seq]);
    for (int b = keep; b < have; b++) mlk__kv_release(c, c->table[seq][b]);
    c->seq_len[seq] = len;
}

/* Number of shared blocks among table entries [b0, b1] of seq. */
static int mlk__kv_shared_in(const mlk_kv_cache *c, int seq, int b0, int b1)
{
    int n = 0;
    for (int b = b0; b <= b1; b++) n += c->refcount[c->table[seq][b]] > 1;
    return n;
}

/* Copy-on-write: gives seq a private copy of its table entry bi (the bytes
   too when the cache holds them). Returns the new block, or -1 when the
   entry was private already. The caller has checked that enough blocks
   are free. */
static int mlk__kv_make_private(mlk_kv_cache *c, int seq, int bi)
{
    int old = c->table[seq][bi], fresh;
    if (c->refcount[old] == 1) return -1;
    fresh = mlk__kv_take_block(c);
    if (c->pool)
        memcpy(c->pool + (size_t)fresh * c->block_bytes, c->pool + (size_t)old * c->block_bytes, c->block_bytes);
    c->refcount[old]--;
    c->table[seq][bi] = fresh;
    return fresh;
}

/* Row of (layer, kv 0 = K / 1 = V, head) at position pos of seq. */
static unsigned char *mlk__kv_row(const mlk_kv_cache *c, int seq, int layer, int kv, int head, int pos)
{
    int bs = c->cfg.block_size, block = c->table[seq][pos / bs];
    size_t plane = ((size_t)layer * 2 + (size_t)kv) * (size_t)c->cfg.kv_heads + (size_t)head;
    return c->pool + (size_t)block * c->block_bytes + (plane * (size_t)bs + (size_t)(pos % bs)) * c->row_bytes;
}

MLKERN_DEF mlk_status mlk_kv_seq_new(mlk_kv_cache *c, int *seq)
{
    if (!c || !seq) return MLK_ERR_NULL;
    for (int s = 0; s < c->cfg.max_seqs; s++) {
        if (c->seq_len[s] >= 0) continue;
        c->seq_len[s] = 0;
        c->live_seqs++;
        *seq = s;
        return MLK_OK;
    }
    return MLK_ERR_CAPACITY;
}

MLKERN_DEF mlk_status mlk_kv_seq_free(mlk_kv_cache *c, int seq)
{
    if (!c) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq)) return MLK_ERR_ARG;
    mlk__kv_shrink(c, seq, 0);
    c->seq_len[seq] = -1;
    c->live_seqs--;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_seq_fork(mlk_kv_cache *c, int src, int *dst)
{
    int s, nb;
    if (!c || !dst) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, src)) return MLK_ERR_ARG;
    for (s = 0; s < c->cfg.max_seqs && c->seq_len[s] >= 0; s++) {}
    if (s == c->cfg.max_seqs) return MLK_ERR_CAPACITY;
    nb = mlk__kv_blocks_for(c, c->seq_len[src]);
    if (!mlk__kv_reserve(c, s, nb, 0)) return MLK_ERR_NOMEM;
    for (int b = 0; b < nb; b++) {
        c->table[s][b] = c->table[src][b];
        c->refcount[c->table[src][b]]++;
    }
    c->seq_len[s] = c->seq_len[src];
    c->live_seqs++;
    *dst = s;
    return MLK_OK;
}

MLKERN_DEF int mlk_kv_seq_len(const mlk_kv_cache *c, int seq)
{
    return c && mlk__kv_valid_seq(c, seq) ? c->seq_len[seq] : -1;
}

MLKERN_DEF mlk_status mlk_kv_append(mlk_kv_cache *c, int seq, int n)
{
    int len, have, need;
    if (!c) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq)) return MLK_ERR_ARG;
    if (n < 1) return MLK_ERR_SHAPE;
    len = c->seq_len[seq];
    if (n > INT_MAX - len) return MLK_ERR_OVERFLOW;
    have = mlk__kv_blocks_for(c, len);
    need = mlk__kv_blocks_for(c, len + n);
    if (need - have > c->free_count) return MLK_ERR_CAPACITY;
    if (!mlk__kv_reserve(c, seq, need, have)) return MLK_ERR_NOMEM;
    for (int b = have; b < need; b++) { /* fresh blocks read as zeros until stored */
        c->table[seq][b] = mlk__kv_take_block(c);
        if (c->pool) memset(c->pool + (size_t)c->table[seq][b] * c->block_bytes, 0, c->block_bytes);
    }
    c->seq_len[seq] = len + n;
    return MLK_OK;
}

/* Checks seq, layer and the range [pos, pos + n) shared by store and load. */
static mlk_status mlk__kv_check_range(const mlk_kv_cache *c, int seq, int layer, int pos, int n)
{
    if (!mlk__kv_valid_seq(c, seq) || layer < 0 || layer >= c->cfg.layers) return MLK_ERR_ARG;
    if (n < 1 || pos < 0 || pos > c->seq_len[seq] - n) return MLK_ERR_SHAPE;
    return MLK_OK;
}

static int mlk__kv_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) <= FLT_MAX)) return 0;
    return 1;
}

MLKERN_DEF mlk_status mlk_kv_prepare_write(mlk_kv_cache *c, int seq, int pos, int n, int *copies, int cap,
    int *n_copies)
{
    int b0, b1, shared, made = 0;
    if (!c || !n_copies || (cap > 0 && !copies)) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq) || cap < 0) return MLK_ERR_ARG;
    if (n < 1 || pos < 0 || pos > c->seq_len[seq] - n) return MLK_ERR_SHAPE;
    b0 = pos / c->cfg.block_size;
    b1 = (pos + n - 1) / c->cfg.block_size;
    shared = mlk__kv_shared_in(c, seq, b0, b1);
    if (shared > c->free_count || shared > cap) return MLK_ERR_CAPACITY;
    for (int b = b0; b <= b1; b++) {
        int old = c->table[seq][b], fresh = mlk__kv_make_private(c, seq, b);
        if (fresh < 0) continue;
        copies[2 * made] = old;
        copies[2 * made + 1] = fresh;
        made++;
    }
    *n_copies = made;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_store(mlk_kv_cache *c, int seq, int layer, int pos,
    int n, const float *k, const float *v)
{
    int hkv, d, bs, b0, b1;
    size_t count;
    mlk_status st;
    if (!c || !k || !v) return MLK_ERR_NULL;
    if ((st = mlk__kv_check_range(c, seq, layer, pos, n)) != MLK_OK) return st;
    if (!c->pool) return MLK_ERR_ARG;
    hkv = c->cfg.kv_heads;
    d = c->cfg.head_dim;
    bs = c->cfg.block_size;
    if (!mlk__count4(n, hkv, d, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    if ((c->cfg.type == MLK_KV_Q8 || c->cfg.type == MLK_KV_Q4) &&
        (!mlk__kv_all_finite(k, count) || !mlk__kv_all_finite(v, count)))
        return MLK_ERR_VALUE;
    b0 = pos / bs;
    b1 = (pos + n - 1) / bs;
    if (mlk__kv_shared_in(c, seq, b0, b1) > c->free_count) return MLK_ERR_CAPACITY;
    for (int b = b0; b <= b1; b++) mlk__kv_make_private(c, seq, b);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < hkv; h++) {
            size_t off = ((size_t)i * (size_t)hkv + (size_t)h) * (size_t)d;
            mlk__row_encode(c->cfg.type, d, k + off, mlk__kv_row(c, seq, layer, 0, h, pos + i));
            mlk__row_encode(c->cfg.type, d, v + off, mlk__kv_row(c, seq, layer, 1, h, pos + i));
        }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_load(const mlk_kv_cache *c, int seq, int layer, int pos,
    int n, float *k, float *v)
{
    int hkv, d;
    size_t count;
    mlk_status st;
    if (!c || !k || !v) return MLK_ERR_NULL;
    if ((st = mlk__kv_check_range(c, seq, layer, pos, n)) != MLK_OK) return st;
    if (!c->pool) return MLK_ERR_ARG;
    hkv = c->cfg.kv_heads;
    d = c->cfg.head_dim;
    if (!mlk__count4(n, hkv, d, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < hkv; h++) {
            size_t off = ((size_t)i * (size_t)hkv + (size_t)h) * (size_t)d;
            mlk__row_decode_run(c->cfg.type, d, c->row_bytes, 1, mlk__kv_row(c, seq, layer, 0, h, pos + i), k + off);
            mlk__row_decode_run(c->cfg.type, d, c->row_bytes, 1, mlk__kv_row(c, seq, layer, 1, h, pos + i), v + off);
        }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_truncate(mlk_kv_cache *c, int seq, int len)
{
    if (!c) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq)) return MLK_ERR_ARG;
    if (len < 0 || len > c->seq_len[seq]) return MLK_ERR_SHAPE;
    mlk__kv_shrink(c, seq, len);
    return MLK_OK;
}

/* The checks of a compact after the cache and sequence; *shared: the
   shared blocks it rewrites, each needing a copy. */
static mlk_status mlk__kv_compact_check(const mlk_kv_cache *c, int seq, int start, int n_keep, const int *keep,
                                        int *shared)
{
    int len = c->seq_len[seq], bs = c->cfg.block_size, last_block = -1;
    if (start < 0 || start > len) return MLK_ERR_SHAPE;
    if (n_keep < 0 || n_keep > len - start) return MLK_ERR_ARG;
    for (int i = 0; i < n_keep; i++)
        if (keep[i] < 0 || keep[i] >= len - start || (i > 0 && keep[i] <= keep[i - 1])) return MLK_ERR_ARG;
    /* Only destinations whose row changes are written; keep increasing
       means destinations are visited in block order. */
    *shared = 0;
    for (int i = 0; i < n_keep; i++) {
        int b = (start + i) / bs;
        if (keep[i] == i || b == last_block) continue;
        *shared += c->refcount[c->table[seq][b]] > 1;
        last_block = b;
    }
    return MLK_OK;
}

/* Pool position of position pos of seq. */
static int64_t mlk__kv_slot(const mlk_kv_cache *c, int seq, int pos)
{
    int bs = c->cfg.block_size;
    return (int64_t)c->table[seq][pos / bs] * bs + pos % bs;
}

/* A checked compact: makes the rewritten blocks private, moves the rows
   the cache holds, shortens the sequence; copies and moves (NULL: not
   wanted) receive the pairs, *n_copies and *n_moves their counts. */
static void mlk__kv_compact_apply(mlk_kv_cache *c, int seq, int start, int n_keep, const int *keep, int *copies,
                                  int *n_copies, int64_t *moves, int *n_moves)
{
    int bs = c->cfg.block_size, made = 0, moved = 0;
    for (int i = 0; i < n_keep; i++) {
        int b = (start + i) / bs, old = c->table[seq][b], fresh;
        if (keep[i] == i) continue;
        fresh = mlk__kv_make_private(c, seq, b);
        if (fresh >= 0 && copies) {
            copies[2 * made] = old;
            copies[2 * made + 1] = fresh;
        }
        made += fresh >= 0;
        if (moves) {
            moves[2 * moved] = mlk__kv_slot(c, seq, start + keep[i]);
            moves[2 * moved + 1] = mlk__kv_slot(c, seq, start + i);
        }
        moved++;
        if (c->pool)
            for (int layer = 0; layer < c->cfg.layers; layer++)
                for (int kv = 0; kv < 2; kv++)
                    for (int h = 0; h < c->cfg.kv_heads; h++)
                        memcpy(mlk__kv_row(c, seq, layer, kv, h, start + i),
                               mlk__kv_row(c, seq, layer, kv, h, start + keep[i]), c->row_bytes);
    }
    mlk__kv_shrink(c, seq, start + n_keep);
    if (n_copies) *n_copies = made;
    if (n_moves) *n_moves = moved;
}

MLKERN_DEF mlk_status mlk_kv_compact(mlk_kv_cache *c, int seq, int start,
    int n_keep, const int *keep)
{
    int shared;
    mlk_status st;
    if (!c || (n_keep > 0 && !keep)) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq) || !c->pool) return MLK_ERR_ARG;
    if ((st = mlk__kv_compact_check(c, seq, start, n_keep, keep, &shared)) != MLK_OK) return st;
    if (shared > c->free_count) return MLK_ERR_CAPACITY;
    mlk__kv_compact_apply(c, seq, start, n_keep, keep, NULL, NULL, NULL, NULL);
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_prepare_compact(mlk_kv_cache *c, int seq, int start, int n_keep, const int *keep,
    int *copies, int cap, int *n_copies, int64_t *moves, int *n_moves)
{
    int shared;
    mlk_status st;
    if (!c || (n_keep > 0 && (!keep || !moves)) || (cap > 0 && !copies) || !n_copies || !n_moves) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq) || cap < 0) return MLK_ERR_ARG;
    if ((st = mlk__kv_compact_check(c, seq, start, n_keep, keep, &shared)) != MLK_OK) return st;
    if (shared > c->free_count || shared > cap) return MLK_ERR_CAPACITY;
    mlk__kv_compact_apply(c, seq, start, n_keep, keep, copies, n_copies, moves, n_moves);
    return MLK_OK;
}

/* ---- attention over the cache ----
   One task = one sequence x one kv head x a chunk of its query positions,
   with every query head of the GQA group as rows of the task. The cache is
   walked in key tiles of MLK__KV_TILE positions and fed to the attention
   section's streaming kernel (mlk__attn_rows_*), so the masking rules and
   the online softmax exist once. Decode-sized tasks hand it the rows in
   place, in their stored format (mlk__attn_rows_update_typed); larger ones
   get each tile dequantised into per-thread scratch (F32 rows inside one
   block are read in place) for the packed micro-kernel. */

#define MLK__KV_TILE 128

/* Keys per split of a long decode step: its tasks attend to fixed runs of
   keys in parallel and their partial (o, lse) are merged in order, so a
   single long sequence uses every thread; fixed, so results depend on the
   sequence alone, never on the thread count. */
#define MLK__KV_SPLIT 4096

typedef struct mlk__kv_attn_job {
    const mlk_kv_cache *c;
    mlk_kv_attn_opts opt; /* scale resolved */
    int layer, heads, group, q_chunk, n_seqs;
    const int *seqs, *n_q, *tree_depth;
    size_t *q_off;   /* [n_seqs]: first float of each sequence's q and o */
    int *task_base;  /* [n_seqs + 1]: first task of each sequence */
    int *splits;     /* [n_seqs]: key runs of each of the sequence's tasks (1: unsplit) */
    float *parts;    /* [tasks][MLK__ATTN_TYPED_ROWS][head_dim + 1]: partial o and lse of split tasks */
    int tasks;
    /* shared-prefix (cascade) decode: the first `prefix` positions are the
       same blocks in every listed sequence; pre_tasks tasks attend all
       pre_rows query rows of a kv head to them at once, into pre_o/pre_lse
       ([kv_heads][pre_rows] rows), merged with each sequence's own keys */
    int prefix, pre_rows, pre_chunk, pre_tasks; /* pre_chunk: queries (x group rows) per prefix task */
    float *pre_o, *pre_lse, *lse_out; /* lse_out: the caller's lse, or scratch for the merge */
    size_t lse_rows;                  /* sum of n_q * heads */
    size_t slab_bytes, rows_bytes;
    double macs;     /* multiply-adds of the call, for the OpenMP threshold */
} mlk__kv_attn_job;

/* Keys [kv0, kv0 + nk) of one head as float rows of stride head_dim: F32
   rows inside one block are read in place; otherwise each block's run of
   rows (contiguous in the pool) is decoded into the buffers. */
static void mlk__kv_tile(const mlk_kv_cache *c, int seq, int layer, int head, int kv0, int nk,
                         float *k_buf, float *v_buf, const float **k_rows, const float **v_rows)
{
    int bs = c->cfg.block_size, d = c->cfg.head_dim;
    if (c->cfg.type == MLK_KV_F32 && kv0 / bs == (kv0 + nk - 1) / bs) {
        *k_rows = (const float *)(const void *)mlk__kv_row(c, seq, layer, 0, head, kv0);
        *v_rows = (const float *)(const void *)mlk__kv_row(c, seq, layer, 1, head, kv0);
        return;
    }
    for (int j = 0, run; j < nk; j += run) {
        run = bs - (kv0 + j) % bs;
        run = run < nk - j ? run : nk - j;
        mlk__row_decode_run(c->cfg.type, d, c->row_bytes, run, mlk__kv_row(c, seq, layer, 0, head, kv0 + j),
                            k_buf + (size_t)j * d);
        mlk__row_decode_run(c->cfg.type, d, c->row_bytes, run, mlk__kv_row(c, seq, layer, 1, head, kv0 + j),
                            v_buf + (size_t)j * d);
    }
    *k_rows = k_buf;
    *v_rows = v_buf;
}

/* Row pointers of keys [kv0, kv0 + nk) of one head, K and V (v_row NULL:
   K only): one table lookup per block, then consecutive rows. */
static void mlk__kv_tile_rows(const mlk_kv_cache *c, int seq, int layer, int head, int kv0, int nk,
                              const unsigned char **k_row, const unsigned char **v_row)
{
    int bs = c->cfg.block_size;
    for (int j = 0, run; j < nk; j += run) {
        const unsigned char *k = mlk__kv_row(c, seq, layer, 0, head, kv0 + j);
        run = bs - (kv0 + j) % bs;
        run = run < nk - j ? run : nk - j;
        for (int i = 0; i < run; i++, k += c->row_bytes) k_row[j + i] = k;
        if (v_row) {
            const unsigned char *v = mlk__kv_row(c, seq, layer, 1, head, kv0 + j);
            for (int i = 0; i < run; i++, v += c->row_bytes) v_row[j + i] = v;
        }
    }
}

/* The typed rows of tile [kv0, kv0 + nk) of keys below key_hi, and the key
   rows of the tile after it for the prefetch. */
static void mlk__kv_typed_tile(const mlk_kv_cache *c, int seq, int layer, int head, int kv0, int nk, int key_hi,
                               mlk__attn_rows *st)
{
    const int next = kv0 + nk;
    mlk__kv_tile_rows(c, seq, layer, head, kv0, nk, st->k_row, st->v_row);
    st->nk_next = key_hi - next < MLK__KV_TILE ? key_hi - next : MLK__KV_TILE;
    mlk__kv_tile_rows(c, seq, layer, head, next, st->nk_next, st->k_next, NULL);
}

/* Visibility of the keys of listed sequence s to its queries. */
static void mlk__kv_attn_mask(const mlk__kv_attn_job *job, int s, mlk__attn_mask *mask)
{
    mask->n_keys = job->c->seq_len[job->seqs[s]];
    mask->n_q = job->n_q[s];
    mask->causal = 1;
    mask->window = job->opt.window;
    mask->tree_parent = job->opt.tree_parent;
    mask->tree_depth = job->tree_depth;
}

/* Key runs of sequence s: a decode-sized sequence (one task per kv head,
   typed rows) longer than MLK__KV_SPLIT keys is split. */
static int mlk__kv_attn_splits(const mlk__kv_attn_job *job, int s)
{
    mlk__attn_mask mask;
    int lo, hi;
    if (job->n_q[s] * job->group >= MLK__ATTN_TYPED_ROWS) return 1;
    mlk__kv_attn_mask(job, s, &mask);
    mlk__attn_key_range(&mask, 0, job->n_q[s], &lo, &hi);
    if (lo < job->prefix) lo = job->prefix < hi ? job->prefix : hi;
    return hi - lo > MLK__KV_SPLIT ? (hi - lo - 1) / MLK__KV_SPLIT + 1 : 1;
}

/* Where the partial state of task t goes: MLK__ATTN_TYPED_ROWS rows of head_dim, then their lse. */
static float *mlk__kv_attn_part(const mlk__kv_attn_job *job, int t)
{
    return job->parts + (size_t)t * MLK__ATTN_TYPED_ROWS * ((size_t)job->c->cfg.head_dim + 1);
}

static void mlk__kv_attn_task(const mlk__kv_attn_job *job, int task, const float *q, float *o, float *lse,
                              unsigned char *slab)
{
    const mlk_kv_cache *c = job->c;
    int lo = 0, hi = job->n_seqs, s, hkv = c->cfg.kv_heads, d = c->cfg.head_dim;
    int head, q0, nq, key_lo, key_hi, local, split, n_split;
    size_t at;
    float *k_buf = (float *)(void *)(slab + job->rows_bytes), *v_buf = k_buf + (size_t)MLK__KV_TILE * d;
    mlk__attn_mask mask;
    mlk__attn_rows st;
    while (hi - lo > 1) { /* the sequence whose tasks contain `task` */
        int mid = (lo + hi) / 2;
        if (job->task_base[mid] <= task) lo = mid; else hi = mid;
    }
    s = lo;
    n_split = job->splits[s];
    local = task - job->task_base[s];
    split = local % n_split;
    head = local / n_split % hkv;
    q0 = local / n_split / hkv * job->q_chunk;
    nq = job->n_q[s] - q0 < job->q_chunk ? job->n_q[s] - q0 : job->q_chunk;
    mlk__kv_attn_mask(job, s, &mask);
    at = job->q_off[s] + ((size_t)q0 * (size_t)job->heads + (size_t)head * (size_t)job->group) * (size_t)d;
    mlk__attn_rows_init(&st, &mask, q0, nq, job->group, d, MLK__KV_TILE, job->opt.scale, job->opt.softcap, q + at,
                        (size_t)d, (size_t)job->heads * (size_t)d, slab);
    if (job->opt.sinks && split == 0 && !job->prefix) /* with a prefix, its pass counts the sink */
        mlk__attn_rows_sinks(&st, job->opt.sinks + (size_t)head * job->group);
    mlk__attn_key_range(&mask, q0, q0 + nq, &key_lo, &key_hi);
    if (key_lo < job->prefix) key_lo = job->prefix < key_hi ? job->prefix : key_hi;
    if (n_split > 1) { /* this task's run of keys */
        key_lo += split * MLK__KV_SPLIT;
        key_hi = key_hi - key_lo < MLK__KV_SPLIT ? key_hi : key_lo + MLK__KV_SPLIT;
    }
    for (int kv0 = key_lo, nk; kv0 < key_hi; kv0 += nk) {
        const float *k_rows, *v_rows;
        nk = key_hi - kv0 < MLK__KV_TILE ? key_hi - kv0 : MLK__KV_TILE;
        if (mlk__attn_rows_typed(&st)) { /* decode: the kernel reads the blocks in place */
            mlk__kv_typed_tile(c, job->seqs[s], job->layer, head, kv0, nk, key_hi, &st);
            mlk__attn_rows_update_typed(&st, kv0, nk, c->cfg.type);
            continue;
        }
        mlk__kv_tile(c, job->seqs[s], job->layer, head, kv0, nk, k_buf, v_buf, &k_rows, &v_rows);
        mlk__attn_rows_update(&st, kv0, nk, k_rows, (size_t)d, v_rows, (size_t)d, NULL);
    }
    if (n_split > 1) { /* rows r = query * group + head, contiguous */
        float *part = mlk__kv_attn_part(job, task);
        mlk__attn_rows_finish(&st, part, (size_t)d, (size_t)job->group * d,
                              part + (size_t)MLK__ATTN_TYPED_ROWS * d, 1, (size_t)job->group);
        return;
    }
    mlk__attn_rows_finish(&st, o + at, (size_t)d, (size_t)job->heads * (size_t)d,
                          lse ? lse + at / (size_t)d : NULL, 1, (size_t)job->heads);
}

/* Prefix task pt: a chunk of the pre_rows rows of one kv head (the query
   rows of every sequence, in order) against the shared prefix keys, all
   of which every one of them sees; read once for all the sequences. */
static void mlk__kv_attn_prefix_task(const mlk__kv_attn_job *job, int pt, const float *q, unsigned char *slab)
{
    const mlk_kv_cache *c = job->c;
    const int hkv = c->cfg.kv_heads, d = c->cfg.head_dim, head = pt % hkv, n_virtual = job->pre_rows / job->group;
    const int q0 = pt / hkv * job->pre_chunk, nq = n_virtual - q0 < job->pre_chunk ? n_virtual - q0 : job->pre_chunk;
    const size_t at = ((size_t)q0 * job->heads + (size_t)head * job->group) * (size_t)d;
    const size_t row0 = (size_t)head * job->pre_rows + (size_t)q0 * job->group;
    float *k_buf = (float *)(void *)(slab + job->rows_bytes), *v_buf = k_buf + (size_t)MLK__KV_TILE * d;
    mlk__attn_mask mask;
    mlk__attn_rows st;
    memset(&mask, 0, sizeof mask); /* no causal or window mask: the prefix precedes every query */
    mask.n_keys = job->prefix;
    mask.n_q = n_virtual;
    mlk__attn_rows_init(&st, &mask, q0, nq, job->group, d, MLK__KV_TILE, job->opt.scale, job->opt.softcap, q + at,
                        (size_t)d, (size_t)job->heads * (size_t)d, slab);
    if (job->opt.sinks) mlk__attn_rows_sinks(&st, job->opt.sinks + (size_t)head * job->group);
    for (int kv0 = 0, nk; kv0 < job->prefix; kv0 += nk) {
        const float *k_rows, *v_rows;
        nk = job->prefix - kv0 < MLK__KV_TILE ? job->prefix - kv0 : MLK__KV_TILE;
        if (mlk__attn_rows_typed(&st)) {
            mlk__kv_typed_tile(c, job->seqs[0], job->layer, head, kv0, nk, job->prefix, &st);
            mlk__attn_rows_update_typed(&st, kv0, nk, c->cfg.type);
            continue;
        }
        mlk__kv_tile(c, job->seqs[0], job->layer, head, kv0, nk, k_buf, v_buf, &k_rows, &v_rows);
        mlk__attn_rows_update(&st, kv0, nk, k_rows, (size_t)d, v_rows, (size_t)d, NULL);
    }
    mlk__attn_rows_finish(&st, job->pre_o + row0 * d, (size_t)d, (size_t)job->group * d, job->pre_lse + row0, 1,
                          (size_t)job->group);
}

/* Folds the prefix pass of sequence s, kv head `head` into its rows of o. */
static void mlk__kv_attn_merge_prefix(const mlk__kv_attn_job *job, int s, int head, float *o)
{
    const int d = job->c->cfg.head_dim, n_q = job->n_q[s];
    for (int r = 0; r < n_q * job->group; r++) {
        const size_t row = (size_t)((r / job->group) * job->heads + head * job->group + r % job->group);
        const size_t at = job->q_off[s] / (size_t)d + row;
        const size_t pre = (size_t)head * job->pre_rows + (size_t)s * n_q * job->group + (size_t)r;
        mlk_attn_merge(1, d, o + at * d, job->lse_out + at, job->pre_o + pre * d, job->pre_lse + pre, o + at * d,
                       job->lse_out + at);
    }
}

/* The shared prefix of the listed sequences, in positions: the leading
   blocks that every table holds (the same ids), when cascading pays and
   its rules hold: several sequences with the same n_q, all of whose
   queries come after the prefix, no window and no tree. */
static int mlk__kv_attn_shared_prefix(const mlk_kv_cache *c, int n_seqs, const int *seqs, const int *n_q,
                                      const mlk__kv_attn_job *job)
{
    int blocks = INT_MAX, bs = c->cfg.block_size;
    if (n_seqs < 2 || job->opt.window > 0 || job->opt.tree_parent ||
        n_seqs * n_q[0] * job->group < MLK__ATTN_TYPED_ROWS)
        return 0;
    for (int s = 0; s < n_seqs; s++) {
        int shared = 0, limit = (c->seq_len[seqs[s]] - n_q[s]) / bs; /* whole blocks before its queries */
        if (n_q[s] != n_q[0]) return 0;
        while (shared < limit && shared < blocks && c->table[seqs[s]][shared] == c->table[seqs[0]][shared]) shared++;
        blocks = shared;
    }
    return blocks * bs >= MLK__KV_TILE ? blocks * bs : 0;
}

/* Folds the split tasks of sequence s, kv head `head`, in split order into
   o and lse (mlk_attn_merge's arithmetic, one row at a time). */
static void mlk__kv_attn_merge_splits(const mlk__kv_attn_job *job, int s, int head, float *o, float *lse)
{
    const int d = job->c->cfg.head_dim, n_split = job->splits[s], rows = job->n_q[s] * job->group;
    const int t0 = job->task_base[s] + head * n_split;
    float *acc = mlk__kv_attn_part(job, t0), *acc_lse = acc + (size_t)MLK__ATTN_TYPED_ROWS * d;
    for (int sp = 1; sp < n_split; sp++) {
        const float *part = mlk__kv_attn_part(job, t0 + sp);
        mlk_attn_merge(rows, d, acc, acc_lse, part, part + (size_t)MLK__ATTN_TYPED_ROWS * d, acc, acc_lse);
    }
    for (int r = 0; r < rows; r++) {
        size_t at = job->q_off[s] + ((size_t)(r / job->group) * job->heads + (size_t)head * job->group +
                                     (size_t)(r % job->group)) * (size_t)d;
        memcpy(o + at, acc + (size_t)r * d, (size_t)d * sizeof(float));
        if (lse) lse[at / (size_t)d] = acc_lse[r];
    }
}

/* Checks the call, resolves the options into job and fills the scratch
   table pc (7 pieces) for `threads` threads. */
static mlk_status mlk__kv_attn_plan(const mlk_kv_cache *c, int n_seqs, const int *seqs, const int *n_q, int heads,
                                    const mlk_kv_attn_opts *opts, int threads, mlk__kv_attn_job *job, mlk__piece *pc)
{
    size_t q_floats = 0, row, slabs;
    long long tasks = 0, split_tasks = 0;
    memset(job, 0, sizeof *job);
    if (opts) job->opt = *opts;
    if (n_seqs < 1 || heads < 1 || heads % c->cfg.kv_heads != 0) return MLK_ERR_SHAPE;
    if (!(fabsf(job->opt.scale) <= FLT_MAX) || job->opt.window < 0 || !(job->opt.softcap >= 0) ||
        !(job->opt.softcap <= FLT_MAX) || job->opt.threads < 0 || (job->opt.tree_parent && n_seqs != 1))
        return MLK_ERR_ARG;
    if (job->opt.sinks)
        for (int h = 0; h < heads; h++)
            if (!(job->opt.sinks[h] < INFINITY)) return MLK_ERR_ARG;
    for (int s = 0; s < n_seqs; s++)
        if (!mlk__kv_valid_seq(c, seqs[s])) return MLK_ERR_ARG;
    for (int s = 0; s < n_seqs; s++)
        if (n_q[s] < 1 || n_q[s] > c->seq_len[seqs[s]]) return MLK_ERR_SHAPE;
    job->c = c;
    job->heads = heads;
    job->group = heads / c->cfg.kv_heads;
    job->q_chunk = job->group >= 64 ? 1 : 64 / job->group; /* about 64 rows per task */
    job->opt.scale = job->opt.scale != 0 ? job->opt.scale : 1.0f / sqrtf((float)c->cfg.head_dim);
    job->n_seqs = n_seqs;
    job->seqs = seqs;
    job->n_q = n_q;
    job->prefix = mlk__kv_attn_shared_prefix(c, n_seqs, seqs, n_q, job);
    if (job->prefix) {
        job->pre_rows = n_seqs * n_q[0] * job->group; /* < INT_MAX: n_seqs * n_q * heads floats fit below */
        job->pre_chunk = 2 * job->q_chunk; /* ~128 rows: each key tile decoded and packed once per 128 rows */
        job->pre_tasks = (n_seqs * n_q[0] + job->pre_chunk - 1) / job->pre_chunk * c->cfg.kv_heads;
    }
    if (!mlk__count4(1, heads, c->cfg.head_dim, 1, sizeof(float), &row)) return MLK_ERR_OVERFLOW;
    for (int s = 0; s < n_seqs; s++) {
        size_t part;
        int n_split = mlk__kv_attn_splits(job, s);
        if (!mlk__mul_ok((size_t)n_q[s], row, &part) || q_floats > SIZE_MAX / sizeof(float) - part)
            return MLK_ERR_OVERFLOW;
        q_floats += part;
        job->macs += (double)n_q[s] * c->seq_len[seqs[s]] * heads * c->cfg.head_dim;
        tasks += (long long)((n_q[s] + job->q_chunk - 1) / job->q_chunk) * c->cfg.kv_heads * n_split;
        if (n_split > 1) split_tasks = tasks;
        if (tasks > INT_MAX) return MLK_ERR_OVERFLOW;
    }
    job->tasks = (int)tasks;
    job->rows_bytes = mlk__arena_need(0, mlk__attn_rows_scratch((job->prefix ? job->pre_chunk : job->q_chunk) *
                                                                     job->group, c->cfg.head_dim, MLK__KV_TILE));
    job->slab_bytes = mlk__arena_need(job->rows_bytes, 2 * sizeof(float) * (size_t)MLK__KV_TILE * c->cfg.head_dim);
    if (job->slab_bytes == SIZE_MAX || !mlk__mul_ok(job->slab_bytes, (size_t)threads, &slabs))
        return MLK_ERR_OVERFLOW;
    pc[0] = mlk__piece_of(job->opt.tree_parent ? (size_t)n_q[0] * sizeof(int) : 0);
    pc[1] = mlk__piece_of((size_t)n_seqs * sizeof(size_t));
    pc[2] = mlk__piece_of(((size_t)n_seqs * 2 + 1) * sizeof(int)); /* task_base, splits */
    pc[3] = mlk__piece_of(split_tasks ? (size_t)tasks * MLK__ATTN_TYPED_ROWS * ((size_t)c->cfg.head_dim + 1) *
                                            sizeof(float) : 0);
    pc[4] = mlk__piece_of(slabs);
    job->lse_rows = q_floats / (size_t)c->cfg.head_dim;
    pc[5] = mlk__piece_of(job->prefix ? q_floats * sizeof(float) : 0);              /* pre_o */
    pc[6] = mlk__piece_of(job->prefix ? 2 * job->lse_rows * sizeof(float) : 0); /* pre_lse, lse scratch */
    if (tasks + job->pre_tasks > INT_MAX) return MLK_ERR_OVERFLOW;
    return MLK_OK;
}

MLKERN_DEF size_t mlk_kv_attn_workspace_size(const mlk_kv_cache *c, int n_seqs, const int *seqs, const int *n_q,
                                             int heads, const mlk_kv_attn_opts *opts)
{
    mlk__kv_attn_job job;
    mlk__piece pc[7];
    int threads = opts && opts->threads > 0 ? opts->threads : mlk__max_threads();
    if (!c || !seqs || !n_q || mlk__kv_attn_plan(c, n_seqs, seqs, n_q, heads, opts, threads, &job, pc) != MLK_OK)
        return 0;
    if (job.opt.tree_parent && mlk__tree_check(n_q[0], job.opt.tree_parent) != MLK_OK) return 0;
    return mlk__pieces_bytes(pc, 7) + MLK__ALIGN;
}

MLKERN_DEF mlk_status mlk_kv_attn_opt(const mlk_kv_cache *c, int layer, int n_seqs, const int *seqs,
    const int *n_q, const float *q, int heads, const mlk_kv_attn_opts *opts, float *o, float *lse)
{
    mlk__kv_attn_job job;
    mlk__arena ar;
    mlk_status st;
    mlk__piece pc[7];
    int team = mlk__max_threads();
    unsigned char *slab0;
    if (!c || !seqs || !n_q || !q || !o) return MLK_ERR_NULL;
    if (layer < 0 || layer >= c->cfg.layers || !c->pool) return MLK_ERR_ARG;
    if (opts && opts->threads > 0 && opts->threads < team) team = opts->threads;
    if ((st = mlk__kv_attn_plan(c, n_seqs, seqs, n_q, heads, opts, team, &job, pc)) != MLK_OK) return st;
    if (job.opt.tree_parent && (st = mlk__tree_check(n_q[0], job.opt.tree_parent)) != MLK_OK) return st;
    if (job.opt.workspace) { /* as many threads as the buffer has slabs for */
        size_t pad = (MLK__ALIGN - (uintptr_t)job.opt.workspace % MLK__ALIGN) % MLK__ALIGN;
        size_t usable = job.opt.workspace_bytes > pad ? job.opt.workspace_bytes - pad : 0, shared, fit;
        pc[4].bytes = 0;
        shared = mlk__pieces_bytes(pc, 7);
        fit = usable >= shared ? (usable - shared) / job.slab_bytes : 0;
        if (fit < 1) return MLK_ERR_ARG;
        if (fit < (size_t)team) team = (int)fit;
        pc[4].bytes = job.slab_bytes * (size_t)team;
    }
    job.layer = layer;
    if ((st = mlk__arena_carve(&ar, job.opt.workspace, pc, 7)) != MLK_OK) return st;
    job.tree_depth = (const int *)pc[0].ptr;
    job.q_off = (size_t *)pc[1].ptr;
    job.task_base = (int *)pc[2].ptr;
    job.splits = job.task_base + n_seqs + 1;
    job.parts = (float *)pc[3].ptr;
    slab0 = (unsigned char *)pc[4].ptr;
    job.pre_o = (float *)pc[5].ptr;
    job.pre_lse = (float *)pc[6].ptr;
    job.lse_out = lse ? lse : job.pre_lse + job.lse_rows;
    if (job.opt.tree_parent) mlk__tree_depths(n_q[0], job.opt.tree_parent, (int *)pc[0].ptr);
    job.q_off[0] = 0;
    job.task_base[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        job.splits[s] = mlk__kv_attn_splits(&job, s);
        if (s > 0) job.q_off[s] = job.q_off[s - 1] + (size_t)n_q[s - 1] * heads * c->cfg.head_dim;
        job.task_base[s + 1] = job.task_base[s] + (n_q[s] + job.q_chunk - 1) / job.q_chunk * c->cfg.kv_heads *
                                                       job.splits[s];
    }
    /* tasks write disjoint rows of o (or their own partial state): any schedule gives the same bits */
    MLK__OMP(omp parallel num_threads(team) if(mlk__attn_fan_out(job.macs)))
    {
        MLK__OMP(omp for schedule(dynamic, 1))
        for (int t = 0; t < job.tasks + job.pre_tasks; t++) {
            unsigned char *slab = slab0 + job.slab_bytes * (size_t)mlk__thread_id();
            if (t < job.tasks) mlk__kv_attn_task(&job, t, q, o, job.prefix ? job.lse_out : lse, slab);
            else mlk__kv_attn_prefix_task(&job, t - job.tasks, q, slab);
        }
        MLK__OMP(omp for schedule(static))
        for (int sh = 0; sh < n_seqs * c->cfg.kv_heads; sh++) {
            if (job.splits[sh / c->cfg.kv_heads] > 1)
                mlk__kv_attn_merge_splits(&job, sh / c->cfg.kv_heads, sh % c->cfg.kv_heads, o,
                                          job.prefix ? job.lse_out : lse);
            if (job.prefix) mlk__kv_attn_merge_prefix(&job, sh / c->cfg.kv_heads, sh % c->cfg.kv_heads, o);
        }
    }
    mlk__arena_done(&ar);
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_attn(const mlk_kv_cache *c, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads,
    float scale, const int *tree_parent, float *o)
{
    mlk_kv_attn_opts opts;
    memset(&opts, 0, sizeof opts);
    opts.scale = scale;
    opts.tree_parent = tree_parent;
    return mlk_kv_attn_opt(c, layer, n_seqs, seqs, n_q, q, heads, &opts, o, NULL);
}

MLKERN_DEF mlk_status mlk_kv_get_layout(const mlk_kv_cache *c, mlk_kv_layout *layout)
{
    size_t plane;
    if (!c || !layout) return MLK_ERR_NULL;
    plane = (size_t)c->cfg.block_size * c->row_bytes; /* mlk__kv_row's arithmetic */
    layout->type = c->cfg.type;
    layout->layers = c->cfg.layers;
    layout->kv_heads = c->cfg.kv_heads;
    layout->head_dim = c->cfg.head_dim;
    layout->block_size = c->cfg.block_size;
    layout->num_blocks = c->cfg.num_blocks;
    layout->row_bytes = c->row_bytes;
    layout->block_bytes = c->block_bytes;
    layout->head_stride = plane;
    layout->kv_stride = plane * (size_t)c->cfg.kv_heads;
    layout->layer_stride = 2 * layout->kv_stride;
    layout->pool = c->pool;
    return MLK_OK;
}

MLKERN_DEF int mlk_kv_seq_blocks(const mlk_kv_cache *c, int seq, int *blocks, int cap)
{
    int n;
    if (!c || !mlk__kv_valid_seq(c, seq) || cap < 0 || (cap > 0 && !blocks)) return -1;
    n = mlk__kv_blocks_for(c, c->seq_len[seq]);
    if (n > 0 && cap > 0) memcpy(blocks, c->table[seq], (size_t)(n < cap ? n : cap) * sizeof(int));
    return n;
}

MLKERN_DEF mlk_status mlk_kv_get_stats(const mlk_kv_cache *c, mlk_kv_stats *st)
{
    if (!c || !st) return MLK_ERR_NULL;
    st->blocks_total = c->cfg.num_blocks;
    st->blocks_used = c->cfg.num_blocks - c->free_count;
    st->bytes_total = (size_t)st->blocks_total * c->block_bytes;
    st->bytes_used = (size_t)st->blocks_used * c->block_bytes;
    st->seqs = c->live_seqs;
    return MLK_OK;
}

/* ======================================================================
   beam search
   ====================================================================== */


/* One hypothesis of an item's pool; the pool is kept sorted, so a slot's
   index is its rank. */
typedef struct mlk__beam_hyp {
    double logprob, score;
    int len;         /* generated tokens, EOS included */
    int finished;
    int parent_call; /* index, in the previous callback call, of the sequence it extends */
    int call_idx;    /* its own index in the current call (live hypotheses only) */
} mlk__beam_hyp;

/* A candidate for the next pool: a finished hypothesis kept as it is
   (token -1) or the expansion of live hypothesis `rank` by `token`. */
typedef struct mlk__beam_cand {
    double logprob, score;
    int finished, rank, token;
} mlk__beam_cand;

/* The contract's order: higher score, then finished, then lower parent rank,
   then lower token id. */
static int mlk__beam_better(const mlk__beam_cand *a, const mlk__beam_cand *b)
{
    if (a->score != b->score) return a->score > b->score;
    if (a->finished != b->finished) return a->finished;
    if (a->rank != b->rank) return a->rank < b->rank;
    return a->token < b->token;
}

/* Inserts c into best[0..*n) (sorted, at most cap entries) if it makes the cut. */
static void mlk__beam_offer(mlk__beam_cand *best, int *n, int cap, const mlk__beam_cand *c)
{
    int pos = *n;
    while (pos > 0 && mlk__beam_better(c, &best[pos - 1])) pos--;
    if (pos >= cap) return;
    if (*n < cap) (*n)++;
    memmove(best + pos + 1, best + pos, (size_t)(*n - 1 - pos) * sizeof *best);
    best[pos] = *c;
}

/* Offers the k best expansions of live hypothesis h (rank r): lp, idx from
   mlk_topk_log_softmax over its logits row. */
static void mlk__beam_expand(mlk__beam_cand *best, int *n_best, int bw, const mlk__beam_hyp *h, int r,
                             const float *lp, const int32_t *idx, int k, const float *logits, int vocab,
                             int eos_id, double len_pen)
{
    mlk__beam_cand c;
    int eos_seen = 0;
    c.rank = r;
    for (int j = 0; j < k && lp[j] != -INFINITY; j++) { /* -inf: masked, impossible */
        c.token = idx[j];
        c.logprob = h->logprob + (double)lp[j];
        c.score = c.logprob / len_pen;
        c.finished = c.token == eos_id;
        eos_seen |= c.finished;
        mlk__beam_offer(best, n_best, bw, &c);
    }
    /* top-k breaks ties by lower index, the search by finished first: an EOS
       tied with the last of the k is a candidate too. */
    if (eos_id >= 0 && !eos_seen && k < vocab && lp[k - 1] != -INFINITY &&
        logits[eos_id] == logits[idx[k - 1]]) {
        c.token = eos_id;
        c.logprob = h->logprob + (double)lp[k - 1];
        c.score = c.logprob / len_pen;
        c.finished = 1;
        mlk__beam_offer(best, n_best, bw, &c);
    }
}

/* Everything a search keeps, carved from one allocation. Pools are
   double-buffered (cur, 1 - cur); slot r of item b holds prompt + generated
   tokens at seq[x] + item_off[b] + r * (prompt_lens[b] + max_new). */
typedef struct mlk__beam_state {
    const mlk_beam_config *cfg;
    int batch, k;
    const int *prompt_lens;
    size_t *item_off;
    int32_t *seq[2];
    mlk__beam_hyp *hyp[2];     /* [batch * beam_width], sorted per item */
    int *pool_n[2];            /* [batch]: hypotheses in each item's pool */
    const int32_t **live_seqs; /* the callback's arguments, [batch * beam_width] */
    int *live_lens, *live_parent;
    float *logits;             /* [live, vocab], filled by the callback */
    float *top_lp;             /* [live, k] */
    int32_t *top_idx;
    mlk__beam_cand *best;      /* [beam_width] */
} mlk__beam_state;

static int32_t *mlk__beam_slot(const mlk__beam_state *s, int x, int b, int r)
{
    size_t stride = (size_t)s->prompt_lens[b] + (size_t)s->cfg->max_new_tokens;
    return s->seq[x] + s->item_off[b] + (size_t)r * stride;
}

/* Lists the unfinished hypotheses of every item as this step's callback
   arguments; returns how many. */
static int mlk__beam_gather(mlk__beam_state *s, int cur)
{
    int n_live = 0, bw = s->cfg->beam_width;
    for (int b = 0; b < s->batch; b++)
        for (int r = 0; r < s->pool_n[cur][b]; r++) {
            mlk__beam_hyp *h = &s->hyp[cur][(size_t)b * bw + r];
            if (h->finished) continue;
            h->call_idx = n_live;
            s->live_parent[n_live] = h->parent_call;
            s->live_seqs[n_live] = mlk__beam_slot(s, cur, b, r);
            s->live_lens[n_live] = s->prompt_lens[b] + h->len;
            n_live++;
        }
    return n_live;
}

/* Item b's next pool: the beam_width best of its finished hypotheses and
   the expansions of its live ones, written sorted into buffer 1 - cur. */
static void mlk__beam_select(mlk__beam_state *s, int cur, int b, double len_pen)
{
    int bw = s->cfg->beam_width, k = s->k, vocab = s->cfg->vocab, nxt = 1 - cur, n_best = 0;
    const mlk__beam_hyp *pool = s->hyp[cur] + (size_t)b * bw;
    for (int r = 0; r < s->pool_n[cur][b]; r++) {
        if (pool[r].finished) { /* competes with its frozen score */
            mlk__beam_cand c;
            c.logprob = pool[r].logprob;
            c.score = pool[r].score;
            c.finished = 1;
            c.rank = r;
            c.token = -1;
            mlk__beam_offer(s->best, &n_best, bw, &c);
        } else {
            size_t row = (size_t)pool[r].call_idx;
            mlk__beam_expand(s->best, &n_best, bw, &pool[r], r, s->top_lp + row * k, s->top_idx + row * k, k,
                             s->logits + row * vocab, vocab, s->cfg->eos_id, len_pen);
        }
    }
    for (int q = 0; q < n_best; q++) {
        const mlk__beam_cand *c = &s->best[q];
        const mlk__beam_hyp *src = &pool[c->rank];
        mlk__beam_hyp *dst = &s->hyp[nxt][(size_t)b * bw + q];
        int32_t *gen = mlk__beam_slot(s, nxt, b, q) + s->prompt_lens[b];
        memcpy(gen, mlk__beam_slot(s, cur, b, c->rank) + s->prompt_lens[b], (size_t)src->len * sizeof(int32_t));
        dst->logprob = c->logprob;
        dst->score = c->score;
        dst->finished = c->finished;
        dst->len = src->len;
        dst->parent_call = c->token < 0 ? -1 : src->call_idx;
        if (c->token >= 0) gen[dst->len++] = c->token;
    }
    s->pool_n[nxt][b] = n_best;
}

/* The state's one allocation, from one table of its pieces. */
static mlk_status mlk__beam_carve(mlk__beam_state *s, mlk__arena *a, size_t seq_total, size_t slots, size_t n_logits)
{
    mlk__piece pc[14];
    mlk_status st;
    pc[0] = mlk__piece_of(seq_total * sizeof(int32_t));
    pc[1] = mlk__piece_of(seq_total * sizeof(int32_t));
    pc[2] = mlk__piece_of((size_t)s->batch * sizeof(size_t));
    pc[3] = mlk__piece_of((size_t)s->batch * sizeof(int));
    pc[4] = mlk__piece_of((size_t)s->batch * sizeof(int));
    pc[5] = mlk__piece_of(slots * sizeof(mlk__beam_hyp));
    pc[6] = mlk__piece_of(slots * sizeof(mlk__beam_hyp));
    pc[7] = mlk__piece_of(slots * sizeof(int32_t *));
    pc[8] = mlk__piece_of(slots * sizeof(int));
    pc[9] = mlk__piece_of(slots * sizeof(int));
    pc[10] = mlk__piece_of(n_logits * sizeof(float));
    pc[11] = mlk__piece_of(slots * (size_t)s->k * sizeof(float));
    pc[12] = mlk__piece_of(slots * (size_t)s->k * sizeof(int32_t));
    pc[13] = mlk__piece_of((size_t)s->cfg->beam_width * sizeof(mlk__beam_cand));
    if ((st = mlk__arena_carve(a, NULL, pc, 14)) != MLK_OK) return st;
    s->seq[0] = (int32_t *)pc[0].ptr;
    s->seq[1] = (int32_t *)pc[1].ptr;
    s->item_off = (size_t *)pc[2].ptr;
    s->pool_n[0] = (int *)pc[3].ptr;
    s->pool_n[1] = (int *)pc[4].ptr;
    s->hyp[0] = (mlk__beam_hyp *)pc[5].ptr;
    s->hyp[1] = (mlk__beam_hyp *)pc[6].ptr;
    s->live_seqs = (const int32_t **)pc[7].ptr;
    s->live_lens = (int *)pc[8].ptr;
    s->live_parent = (int *)pc[9].ptr;
    s->logits = (float *)pc[10].ptr;
    s->top_lp = (float *)pc[11].ptr;
    s->top_idx = (int32_t *)pc[12].ptr;
    s->best = (mlk__beam_cand *)pc[13].ptr;
    return MLK_OK;
}

/* Each item's pool starts as its prompt alone. Every slot of both buffers
   gets the prompt, so a step copies only generated tokens. */
static void mlk__beam_start(mlk__beam_state *s, const int32_t *const *prompts)
{
    int bw = s->cfg->beam_width, max_new = s->cfg->max_new_tokens;
    for (int b = 0; b < s->batch; b++) {
        mlk__beam_hyp *h = &s->hyp[0][(size_t)b * bw];
        s->item_off[b] = b ? s->item_off[b - 1] + (size_t)bw * ((size_t)s->prompt_lens[b - 1] + (size_t)max_new) : 0;
        for (int r = 0; r < bw; r++)
            for (int x = 0; x < 2; x++)
                memcpy(mlk__beam_slot(s, x, b, r), prompts[b], (size_t)s->prompt_lens[b] * sizeof(int32_t));
        s->pool_n[0][b] = 1;
        h->logprob = 0;
        h->score = 0;
        h->len = 0;
        h->finished = 0;
        h->parent_call = -1;
    }
}

static void mlk__beam_output(const mlk__beam_state *s, int cur, int32_t *out_tokens, int *out_len,
                             float *out_logprob, float *out_score)
{
    int bw = s->cfg->beam_width, max_new = s->cfg->max_new_tokens, n_ret = s->cfg->num_return;
    for (int b = 0; b < s->batch; b++)
        for (int q = 0; q < n_ret; q++) {
            size_t o = (size_t)b * n_ret + q;
            int32_t *toks = out_tokens + o * (size_t)max_new;
            int len = 0;
            if (q < s->pool_n[cur][b]) {
                const mlk__beam_hyp *h = &s->hyp[cur][(size_t)b * bw + q];
                len = h->len;
                memcpy(toks, mlk__beam_slot(s, cur, b, q) + s->prompt_lens[b], (size_t)len * sizeof(int32_t));
                if (out_logprob) out_logprob[o] = (float)h->logprob;
                if (out_score) out_score[o] = (float)h->score;
            } else {
                if (out_logprob) out_logprob[o] = -INFINITY;
                if (out_score) out_score[o] = -INFINITY;
            }
            for (int t = len; t < max_new; t++) toks[t] = -1;
            out_len[o] = len;
        }
}

MLKERN_DEF mlk_status mlk_beam_search(const mlk_beam_config *cfg, int batch,
    const int32_t *const *prompts, const int *prompt_lens,
    mlk_logits_fn fn, void *user, int32_t *out_tokens, int *out_len,
    float *out_logprob, float *out_score)
{
    int bw, vocab, max_new, cur = 0;
    size_t slots, n_logits, n_check, seq_total = 0;
    mlk__beam_state s;
    mlk__arena arena;
    mlk_status st;

    if (!cfg || !prompts || !prompt_lens || !fn || !out_tokens || !out_len) return MLK_ERR_NULL;
    bw = cfg->beam_width;
    vocab = cfg->vocab;
    max_new = cfg->max_new_tokens;
    if (batch < 1 || bw < 1 || vocab < 1 || max_new < 1 || cfg->num_return < 1 || cfg->num_return > bw)
        return MLK_ERR_SHAPE;
    if (cfg->eos_id < -1 || cfg->eos_id >= vocab || !isfinite(cfg->length_penalty)) return MLK_ERR_ARG;
    {
        double pen_max = pow((double)max_new, (double)cfg->length_penalty); /* len^p is monotonic in len >= 1 */
        if (!(pen_max >= ldexp(1.0, -200) && pen_max <= ldexp(1.0, 200))) return MLK_ERR_ARG;
    }
    for (int b = 0; b < batch; b++) {
        size_t item;
        if (!prompts[b]) return MLK_ERR_NULL;
        if (prompt_lens[b] < 1) return MLK_ERR_SHAPE;
        if (prompt_lens[b] > INT_MAX - max_new) return MLK_ERR_OVERFLOW;
        if (!mlk__mul_ok((size_t)bw, (size_t)(prompt_lens[b] + max_new), &item) ||
            item > SIZE_MAX / sizeof(int32_t) / 2 || seq_total > SIZE_MAX / sizeof(int32_t) / 2 - item)
            return MLK_ERR_OVERFLOW;
        seq_total += item;
    }
    s.cfg = cfg;
    s.batch = batch;
    s.prompt_lens = prompt_lens;
    /* Under pool semantics the best beam_width expansions of each beam are
       enough: expansions of one beam share a length, so a beam's later tokens
       lose to its earlier ones (HF takes 2x because it drops EOS candidates);
       mlk__beam_expand adds an EOS that ties with the last. */
    s.k = bw < vocab ? bw : vocab;
    if (!mlk__count4(batch, bw, 1, 1, sizeof(mlk__beam_hyp) + 2 * sizeof(int) + sizeof(int32_t *), &slots) ||
        !mlk__count4(batch, bw, vocab, 1, sizeof(float), &n_logits) ||
        !mlk__count4(batch, bw, s.k, 1, sizeof(float) + sizeof(int32_t), &n_check) ||
        !mlk__count4(batch, cfg->num_return, max_new, 1, sizeof(int32_t), &n_check))
        return MLK_ERR_OVERFLOW;
    if ((st = mlk__beam_carve(&s, &arena, seq_total, slots, n_logits)) != MLK_OK) return st;
    mlk__beam_start(&s, prompts);

    for (int step = 0; step < max_new; step++) {
        double len_pen = pow((double)(step + 1), (double)cfg->length_penalty);
        int n_live = mlk__beam_gather(&s, cur);
        if (n_live == 0) break; /* every kept hypothesis is finished */
        if (fn(user, n_live, s.live_parent, s.live_seqs, s.live_lens, s.logits) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        st = mlk_topk_log_softmax(n_live, vocab, s.logits, s.k, s.top_lp, s.top_idx); /* NaN, +inf: MLK_ERR_VALUE */
        if (st != MLK_OK) break;
        for (int b = 0; b < batch; b++) mlk__beam_select(&s, cur, b, len_pen);
        cur = 1 - cur;
    }
    if (st == MLK_OK) mlk__beam_output(&s, cur, out_tokens, out_len, out_logprob, out_score);
    mlk__arena_done(&arena);
    return st;
}

/* ======================================================================
   tree speculative decoding
   ====================================================================== */


MLKERN_DEF mlk_status mlk_tree_mask(int n, const int *parent, uint8_t *mask)
{
    size_t nn;
    mlk_status st;
    if (!parent || !mask) return MLK_ERR_NULL;
    if (n < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(n, n, 1, 1, 1, &nn)) return MLK_ERR_OVERFLOW;
    st = mlk__tree_check(n, parent);
    if (st != MLK_OK) return st;
    /* A node's row is its parent's row plus itself. */
    for (int i = 0; i < n; i++) {
        uint8_t *row = mask + (size_t)i * n;
        if (parent[i] >= 0) memcpy(row, mask + (size_t)parent[i] * n, (size_t)n);
        else memset(row, 0, (size_t)n);
        memset(row + i, 0, (size_t)(n - i));
        row[i] = 1;
    }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_tree_depth(int n, const int *parent, int *depth)
{
    mlk_status st;
    if (!parent || !depth) return MLK_ERR_NULL;
    if (n < 1) return MLK_ERR_SHAPE;
    st = mlk__tree_check(n, parent);
    if (st == MLK_OK) mlk__tree_depths(n, parent, depth);
    return st;
}

MLKERN_DEF mlk_status mlk_tree_accept(int n, const int *parent, const int32_t *draft,
    const int32_t *target, int *path, int *n_path, int32_t *bonus)
{
    int cur = -1, len = 0;
    mlk_status st;
    if (!parent || !draft || !target || !path || !n_path || !bonus) return MLK_ERR_NULL;
    if (n < 1) return MLK_ERR_SHAPE;
    st = mlk__tree_check(n, parent);
    if (st != MLK_OK) return st;
    /* Children of cur have larger indices, so one forward scan finds the
       lowest-index matching child of each accepted node in turn. */
    for (int i = 0; i < n; i++) {
        if (parent[i] == cur && draft[i] == target[cur + 1]) {
            path[len++] = i;
            cur = i;
        }
    }
    *n_path = len;
    *bonus = target[cur + 1];
    return MLK_OK;
}

/* Index drawn from weights w [vocab] (sum total > 0) by the uniform u. */
static int32_t mlk__spec_draw(const double *w, int vocab, double total, double u)
{
    double target = u * total;
    int32_t last = 0;
    for (int32_t t = 0; t < vocab; t++) {
        if (w[t] <= 0) continue;
        last = t;
        target -= w[t];
        if (target < 0) return t;
    }
    return last; /* rounding left a sliver: the last token with weight */
}

/* 1 when every entry of the row is finite and >= 0 (and, for a target
   row, some entry is positive). */
static int mlk__spec_row_ok(const float *row, int vocab, int need_mass)
{
    int mass = 0;
    for (int t = 0; t < vocab; t++) {
        if (!(row[t] >= 0.0f && row[t] <= FLT_MAX)) return 0;
        mass |= row[t] > 0.0f;
    }
    return mass || !need_mass;
}

/* Checks a draft tree of n >= 0 nodes (checked parents) and its rows. */
static mlk_status mlk__spec_check(int n, const int32_t *draft, int vocab, const float *p_target,
                                  const float *p_draft)
{
    for (int i = 0; i < n; i++)
        if (draft[i] < 0 || draft[i] >= vocab) return MLK_ERR_ARG;
    for (int i = 0; i <= n; i++)
        if (!mlk__spec_row_ok(p_target + (size_t)i * vocab, vocab, 1) ||
            (i < n && !mlk__spec_row_ok(p_draft + (size_t)i * vocab, vocab, 0)))
            return MLK_ERR_VALUE;
    return MLK_OK;
}

/* mlk_spec_accept_sample on checked inputs (n may be 0: a draw from row 0),
   with p: vocab doubles of scratch. */
static void mlk__spec_accept(int n, const int *parent, const int32_t *draft, int vocab, const float *p_target,
                             const float *p_draft, uint64_t *rng_state, double *p, int *path, int *n_path,
                             int32_t *token)
{
    double total = 0;
    uint64_t draws = 0;
    int cur = -1, len = 0, i;
    for (;;) {
        const float *row = p_target + (size_t)(cur + 1) * vocab;
        int accepted = -1;
        total = 0;
        for (int t = 0; t < vocab; t++) total += p[t] = row[t];
        for (i = cur + 1; i < n && accepted < 0; i++) { /* children of cur, in index order */
            const float *q = p_draft + (size_t)i * vocab;
            double px, qx, residual = 0;
            if (parent[i] != cur) continue;
            px = p[draft[i]] / total;
            qx = q[draft[i]];
            if (qx > 0 && mlk__softmax_uniform(*rng_state, draws++) * qx < px) { /* u < p / q */
                accepted = i;
                break;
            }
            for (int t = 0; t < vocab; t++) { /* rejected: p <- max(0, p - q) */
                double r = p[t] / total - q[t];
                residual += r > 0 ? r : 0;
            }
            if (residual <= 0) continue; /* p <= q everywhere: p == q, keep p */
            for (int t = 0; t < vocab; t++) {
                double r = p[t] / total - q[t];
                p[t] = r > 0 ? r : 0;
            }
            total = residual;
        }
        if (accepted < 0) break;
        path[len++] = accepted;
        cur = accepted;
    }
    *token = mlk__spec_draw(p, vocab, total, mlk__softmax_uniform(*rng_state, draws++));
    *n_path = len;
    *rng_state += draws * 0x9E3779B97F4A7C15ull;
}

MLKERN_DEF mlk_status mlk_spec_accept_sample(int n, const int *parent, const int32_t *draft, int vocab,
    const float *p_target, const float *p_draft, uint64_t *rng_state, int *path, int *n_path, int32_t *token)
{
    mlk__arena arena;
    mlk__piece pc[1];
    mlk_status st;
    if (!parent || !draft || !p_target || !p_draft || !rng_state || !path || !n_path || !token) return MLK_ERR_NULL;
    if (n < 1 || vocab < 1) return MLK_ERR_SHAPE;
    if ((st = mlk__tree_check(n, parent)) != MLK_OK) return st;
    if ((st = mlk__spec_check(n, draft, vocab, p_target, p_draft)) != MLK_OK) return st;
    pc[0] = mlk__piece_of((size_t)vocab * sizeof(double)); /* the current (residual) target distribution */
    if ((st = mlk__arena_carve(&arena, NULL, pc, 1)) != MLK_OK) return st;
    mlk__spec_accept(n, parent, draft, vocab, p_target, p_draft, rng_state, (double *)pc[0].ptr, path, n_path, token);
    mlk__arena_done(&arena);
    return MLK_OK;
}

/* Both modes of speculative decoding: greedy when sm is NULL. */
static mlk_status mlk__spec_generate(const mlk_spec_config *cfg, const mlk_spec_sampling *sm,
    const int32_t *prompt, int prompt_len, int32_t *out, int *out_len, mlk_spec_stats *stats)
{
    int max_new, max_nodes, ctx_len, gen = 0, done = 0, sampling = sm != NULL, vocab;
    mlk_spec_stats s;
    mlk__piece pc[8];
    mlk__arena arena;
    int32_t *ctx, *tokens, *greedy;
    int *parent, *path;
    float *p_target, *p_draft;
    double *residual;
    uint64_t rng;
    size_t rows_bytes;
    mlk_status st;

    if (!cfg || !prompt || !out || !out_len) return MLK_ERR_NULL;
    if (sampling ? !sm->draft || !sm->verify : !cfg->draft || !cfg->verify) return MLK_ERR_NULL;
    max_new = cfg->max_new_tokens;
    max_nodes = cfg->max_nodes;
    vocab = sampling ? sm->vocab : 0;
    if (prompt_len < 1 || max_new < 1 || max_nodes < 1 || (sampling && vocab < 1)) return MLK_ERR_SHAPE;
    if (cfg->eos_id < -1) return MLK_ERR_ARG;
    if (prompt_len > INT_MAX - max_new || max_nodes == INT_MAX ||
        !mlk__count4(max_nodes + 1, vocab, 1, 1, sizeof(double), &rows_bytes))
        return MLK_ERR_OVERFLOW;
    pc[0] = mlk__piece_of(((size_t)prompt_len + (size_t)max_new) * sizeof(int32_t));
    pc[1] = mlk__piece_of((size_t)max_nodes * sizeof(int32_t));
    pc[2] = mlk__piece_of(((size_t)max_nodes + 1) * sizeof(int32_t));
    pc[3] = mlk__piece_of((size_t)max_nodes * sizeof(int));
    pc[4] = mlk__piece_of((size_t)max_nodes * sizeof(int));
    pc[5] = mlk__piece_of(rows_bytes * sizeof(float));                   /* target rows */
    pc[6] = mlk__piece_of(rows_bytes * sizeof(float));                   /* draft rows */
    pc[7] = mlk__piece_of((size_t)vocab * sizeof(double));               /* the residual */
    if ((st = mlk__arena_carve(&arena, NULL, pc, 8)) != MLK_OK) return st;
    ctx = (int32_t *)pc[0].ptr;
    tokens = (int32_t *)pc[1].ptr;
    greedy = (int32_t *)pc[2].ptr;
    parent = (int *)pc[3].ptr;
    path = (int *)pc[4].ptr;
    p_target = (float *)pc[5].ptr;
    p_draft = (float *)pc[6].ptr;
    residual = (double *)pc[7].ptr;
    rng = sampling ? sm->seed : 0;
    memcpy(ctx, prompt, (size_t)prompt_len * sizeof(int32_t));
    ctx_len = prompt_len;
    memset(&s, 0, sizeof s);

    while (!done && gen < max_new) {
        /* Only remaining - 1 draft tokens can be emitted before the bonus. */
        int room = max_new - gen - 1 < max_nodes ? max_new - gen - 1 : max_nodes;
        int n = 0, n_path = 0;
        int32_t bonus;
        if (room > 0 && (sampling ? sm->draft(cfg->user, ctx, ctx_len, room, tokens, parent, p_draft, &n)
                                  : cfg->draft(cfg->user, ctx, ctx_len, room, tokens, parent, &n)) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        if (n < 0 || n > room) { st = MLK_ERR_ARG; break; }
        st = mlk__tree_check(n, parent);
        if (st != MLK_OK) break;
        if ((sampling ? sm->verify(cfg->user, ctx, ctx_len, n, tokens, parent, p_target)
                      : cfg->verify(cfg->user, ctx, ctx_len, n, tokens, parent, greedy)) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        s.target_calls++;
        s.drafted += n;
        if (sampling) {
            if ((st = mlk__spec_check(n, tokens, vocab, p_target, p_draft)) != MLK_OK) break;
            mlk__spec_accept(n, parent, tokens, vocab, p_target, p_draft, &rng, residual, path, &n_path, &bonus);
        } else {
            bonus = greedy[0];
            if (n > 0) /* cannot fail: the tree was checked above */
                mlk_tree_accept(n, parent, tokens, greedy, path, &n_path, &bonus);
        }
        if (cfg->accept && cfg->accept(cfg->user, n_path, path) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        for (int j = 0; j <= n_path && !done && gen < max_new; j++) {
            int32_t tok = j < n_path ? tokens[path[j]] : bonus;
            ctx[ctx_len++] = tok;
            gen++;
            if (j < n_path) s.accepted++;
            done = tok == cfg->eos_id;
        }
    }
    if (st == MLK_OK) {
        memcpy(out, ctx + prompt_len, (size_t)gen * sizeof(int32_t));
        for (int t = gen; t < max_new; t++) out[t] = -1;
        *out_len = gen;
        s.mean_accepted = s.target_calls ? (float)s.accepted / (float)s.target_calls : 0.0f;
        if (stats) *stats = s;
    }
    mlk__arena_done(&arena);
    return st;
}

MLKERN_DEF mlk_status mlk_spec_generate(const mlk_spec_config *cfg,
    const int32_t *prompt, int prompt_len, int32_t *out, int *out_len,
    mlk_spec_stats *stats)
{
    return mlk__spec_generate(cfg, NULL, prompt, prompt_len, out, out_len, stats);
}

MLKERN_DEF mlk_status mlk_spec_generate_sample(const mlk_spec_config *cfg, const mlk_spec_sampling *sampling,
    const int32_t *prompt, int prompt_len, int32_t *out, int *out_len, mlk_spec_stats *stats)
{
    if (!sampling) return MLK_ERR_NULL;
    return mlk__spec_generate(cfg, sampling, prompt, prompt_len, out, out_len, stats);
}

/* ======================================================================
   ternary (BitNet b1.58)
   ====================================================================== */


MLKERN_DEF size_t mlk_ternary_row_bytes(int cols)
{
    return cols > 0 ? ((size_t)cols + 3) / 4 : 0;
}

/* ---- weight quantisation ---- */

/* Sum of |w| in double over fixed chunks (independent of the thread
   count), summed in chunk order; *finite = 0 if any weight is NaN or inf. */
#define MLK__TERNARY_CHUNKS 64
static double mlk__ternary_abs_sum(const float *w, size_t count, int *finite)
{
    double chunk_sum[MLK__TERNARY_CHUNKS], total = 0;
    int chunk_ok[MLK__TERNARY_CHUNKS], ok = 1;
    size_t per = (count + MLK__TERNARY_CHUNKS - 1) / MLK__TERNARY_CHUNKS;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__PAR_ELEMS))
    for (int ch = 0; ch < MLK__TERNARY_CHUNKS; ch++) {
        size_t lo = (size_t)ch * per, hi = lo + per;
        double s = 0;
        int good = 1;
        if (lo > count) lo = count;
        if (hi > count) hi = count;
        for (size_t i = lo; i < hi; i++) {
            float a = fabsf(w[i]);
            if (!(a <= FLT_MAX)) good = 0;
            s += a;
        }
        chunk_sum[ch] = s;
        chunk_ok[ch] = good;
    }
    for (int ch = 0; ch < MLK__TERNARY_CHUNKS; ch++) {
        total += chunk_sum[ch];
        ok &= chunk_ok[ch];
    }
    *finite = ok;
    return total;
}

/* Code q + 1 of one weight; half = s / 2 is exact, so this is round half
   away from zero of the exact quotient w / s, clamped to [-1, 1]. */
static unsigned mlk__ternary_code(float w, float half)
{
    return w >= half ? 2u : (w <= -half ? 0u : 1u);
}

static void mlk__ternary_pack_row(const float *w, int cols, float half, uint8_t *out)
{
    size_t row_bytes = mlk_ternary_row_bytes(cols);
    for (size_t b = 0; b < row_bytes; b++) {
        unsigned byte = 0;
        for (int j = 0; j < 4; j++) {
            size_t c = 4 * b + (size_t)j;
            unsigned code = c < (size_t)cols ? mlk__ternary_code(w[c], half) : 1u;
            byte |= code << (2 * j);
        }
        out[b] = (uint8_t)byte;
    }
}

MLKERN_DEF mlk_status mlk_ternary_quant(int rows, int cols, const float *w,
    uint8_t *packed, float *scale)
{
    size_t count, row_bytes = mlk_ternary_row_bytes(cols), packed_bytes;
    double abs_sum;
    float s, half;
    int finite;
    if (!w || !packed || !scale) return MLK_ERR_NULL;
    if (rows < 1 || cols < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, cols, 1, 1, sizeof(float), &count) ||
        !mlk__mul_ok((size_t)rows, row_bytes, &packed_bytes))
        return MLK_ERR_OVERFLOW;
    abs_sum = mlk__ternary_abs_sum(w, count, &finite);
    if (!finite) return MLK_ERR_VALUE;
    s = (float)(abs_sum / (double)count);
    if (!(s >= MLK_TERNARY_EPS)) s = MLK_TERNARY_EPS;
    half = 0.5f * s;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__PAR_ELEMS))
    for (int r = 0; r < rows; r++)
        mlk__ternary_pack_row(w + (size_t)r * cols, cols, half, packed + (size_t)r * row_bytes);
    *scale = s;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_ternary_dequant(int rows, int cols, const uint8_t *packed,
    float scale, float *w)
{
    size_t count, row_bytes = mlk_ternary_row_bytes(cols), packed_bytes;
    if (!packed || !w) return MLK_ERR_NULL;
    if (rows < 1 || cols < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, cols, 1, 1, sizeof(float), &count) ||
        !mlk__mul_ok((size_t)rows, row_bytes, &packed_bytes))
        return MLK_ERR_OVERFLOW;
    for (size_t b = 0; b < packed_bytes; b++) /* a code 3 has both bits of a pair set */
        if (packed[b] & (packed[b] >> 1) & 0x55) return MLK_ERR_VALUE;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__PAR_ELEMS))
    for (int r = 0; r < rows; r++) {
        const uint8_t *row = packed + (size_t)r * row_bytes;
        float *out = w + (size_t)r * cols;
        for (int c = 0; c < cols; c++)
            out[c] = scale * (float)((int)((row[c >> 2] >> (2 * (c & 3))) & 3) - 1);
    }
    return MLK_OK;
}

/* ---- activation quantisation ---- */

MLKERN_DEF mlk_status mlk_act_quant_i8(int rows, int cols, const float *x,
    int8_t *xq, float *xscale)
{
    size_t count;
    int finite = 1;
    if (!x || !xq || !xscale) return MLK_ERR_NULL;
    if (rows < 1 || cols < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, cols, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    for (size_t i = 0; i < count; i++)
        finite &= fabsf(x[i]) <= FLT_MAX;
    if (!finite) return MLK_ERR_VALUE;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__PAR_ELEMS))
    for (int r = 0; r < rows; r++) {
        const float *x_row = x + (size_t)r * cols;
        xscale[r] = mlk__quant_sym(cols, 127, mlk__absmax(x_row, cols), x_row, xq + (size_t)r * cols);
    }
    return MLK_OK;
}

/* ---- ternary GEMM ---- */

/* Whether an m x n x k ternary GEMM is worth a thread team (OpenMP only). */
MLK__MAYBE_UNUSED static int mlk__ternary_parallel(int m, int n, int k)
{
    return (double)m * n * k >= MLK__PAR_TERN_MACS;
}

static float mlk__ternary_output(int32_t dot, float xscale, float wscale)
{
    return (float)dot * (xscale * wscale);
}

/* Reference dot product of one int8 row with one packed row: exact int32,
   a byte (four weights) at a time, then the last partial byte. */
MLK__MAYBE_UNUSED static int32_t mlk__ternary_dot_ref(const int8_t *x, const uint8_t *wrow, int k)
{
    int32_t acc = 0;
    for (int b = 0; b < k / 4; b++) {
        const int8_t *x4 = x + 4 * b;
        unsigned byte = wrow[b];
        acc += x4[0] * ((int32_t)(byte & 3) - 1) + x4[1] * ((int32_t)((byte >> 2) & 3) - 1) +
               x4[2] * ((int32_t)((byte >> 4) & 3) - 1) + x4[3] * ((int32_t)(byte >> 6) - 1);
    }
    for (int c = k / 4 * 4; c < k; c++)
        acc += (int32_t)x[c] * ((int32_t)((wrow[c >> 2] >> (2 * (c & 3))) & 3) - 1);
    return acc;
}

/* Reference GEMM: one output column (weight row) per iteration. */
MLK__MAYBE_UNUSED static void mlk__ternary_gemm_ref(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y)
{
    size_t row_bytes = mlk_ternary_row_bytes(k);
    MLK__OMP(omp parallel for schedule(static) if (mlk__ternary_parallel(m, n, k)))
    for (int j = 0; j < n; j++) {
        const uint8_t *wrow = wpacked + (size_t)j * row_bytes;
        for (int i = 0; i < m; i++)
            y[(size_t)i * n + j] = mlk__ternary_output(
                mlk__ternary_dot_ref(xq + (size_t)i * k, wrow, k), xscale[i], wscale);
    }
}

#if defined(MLK__AVX2)
/* AVX2: 32 packed bytes hold 128 weights; byte j of a 128-block holds
   weights 4j .. 4j+3, so shifting the bytes by 0, 2, 4, 6 gives four
   vectors of codes {0,1,2} for weights 4j + s. The activations are permuted
   once per call to match (xp[128t + 32s + j] = x[128t + 4j + s], zero
   padded), then maddubs(codes as u8, x as s8) gives exact int16 pair sums
   (|c0 x0 + c1 x1| <= 512), and sum c * x - sum x = sum q * x.
   Four pair sums per block and MLK__TERNARY_WIDEN blocks per int16 lane stay
   within 8 * 4 * 512 = 16384 < 32767 even for x = -128, then widen. */
#define MLK__TERNARY_MR 4     /* activation rows per micro-kernel call */
#define MLK__TERNARY_WIDEN 8  /* 128-weight blocks summed in int16 lanes */
#define MLK__TERNARY_NCHUNK 16 /* weight rows per thread task */

/* Permutes one 128-byte block: out[32s + j] = x[4j + s]. Within each
   16-byte lane, pshufb groups the bytes by s (dword s holds s of 4 j's);
   permd orders the dwords to qwords (s0 s1 s2 s3) of 8 j's each; a 4 x 4
   qword transpose then gathers qword s of every vector into out_s. */
static void mlk__ternary_permute_block(const int8_t *x, int8_t *out)
{
    const __m256i by_s = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                          0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i dword_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i v[4], lo01, hi01, lo23, hi23;
    for (int q = 0; q < 4; q++)
        v[q] = _mm256_permutevar8x32_epi32(
            _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(x + 32 * q)), by_s), dword_order);
    lo01 = _mm256_unpacklo_epi64(v[0], v[1]); /* q0 of v0 v1 | q2 of v0 v1 */
    hi01 = _mm256_unpackhi_epi64(v[0], v[1]); /* q1 | q3 */
    lo23 = _mm256_unpacklo_epi64(v[2], v[3]);
    hi23 = _mm256_unpackhi_epi64(v[2], v[3]);
    _mm256_storeu_si256((__m256i *)out, _mm256_permute2x128_si256(lo01, lo23, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 32), _mm256_permute2x128_si256(hi01, hi23, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 64), _mm256_permute2x128_si256(lo01, lo23, 0x31));
    _mm256_storeu_si256((__m256i *)(out + 96), _mm256_permute2x128_si256(hi01, hi23, 0x31));
}

/* One activation row into the kernel's order (zero padded to kpad), and
   its sum. */
static void mlk__ternary_permute_x(const int8_t *x, int k, size_t kpad, int8_t *xp, int32_t *row_sum)
{
    size_t full = (size_t)k / 128 * 128;
    int8_t last[128];
    int32_t sum = 0;
    for (int c = 0; c < k; c++) sum += x[c];
    *row_sum = sum;
    for (size_t t = 0; t < full; t += 128) mlk__ternary_permute_block(x + t, xp + t);
    if (full < kpad) {
        memset(last, 0, sizeof last);
        memcpy(last, x + full, (size_t)k - full);
        mlk__ternary_permute_block(last, xp + full);
    }
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__)
/* VNNI: vpdpbusd adds the four u8 x s8 products of each int32 lane into it
   in one instruction, exactly (no int16 stage, nothing to widen). */
#define MLK__VNNI 1
static inline __m256i mlk__dpbusd(__m256i acc, __m256i u8, __m256i s8)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u8, s8);
#else
    return _mm256_dpbusd_avx_epi32(acc, u8, s8);
#endif
}
#endif

/* Adds one 128-weight block for rows r < rows: int16 pair sums into
   acc[r], or with VNNI int32 quad sums into acc[4r + s] for shift s. */
static inline void mlk__ternary_block(__m256i wbytes, const int8_t *xp, size_t x_stride,
                                   int rows, __m256i *acc)
{
    const __m256i mask = _mm256_set1_epi8(3);
    __m256i c0 = _mm256_and_si256(wbytes, mask);
    __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(wbytes, 2), mask);
    __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(wbytes, 4), mask);
    __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(wbytes, 6), mask);
    for (int r = 0; r < rows; r++) {
        const int8_t *xr = xp + (size_t)r * x_stride;
#if defined(MLK__VNNI)
        __m256i *a = acc + 4 * r; /* one accumulator per shift: four independent chains */
        a[0] = mlk__dpbusd(a[0], c0, _mm256_loadu_si256((const __m256i *)xr));
        a[1] = mlk__dpbusd(a[1], c1, _mm256_loadu_si256((const __m256i *)(xr + 32)));
        a[2] = mlk__dpbusd(a[2], c2, _mm256_loadu_si256((const __m256i *)(xr + 64)));
        a[3] = mlk__dpbusd(a[3], c3, _mm256_loadu_si256((const __m256i *)(xr + 96)));
#else
        __m256i s01 = _mm256_add_epi16(
            _mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i *)xr)),
            _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i *)(xr + 32))));
        __m256i s23 = _mm256_add_epi16(
            _mm256_maddubs_epi16(c2, _mm256_loadu_si256((const __m256i *)(xr + 64))),
            _mm256_maddubs_epi16(c3, _mm256_loadu_si256((const __m256i *)(xr + 96))));
        acc[r] = _mm256_add_epi16(acc[r], _mm256_add_epi16(s01, s23));
#endif
    }
}

/* dot[r] = sum of the 8 int32 lanes of acc[r], r < rows. */
static inline void mlk__ternary_hsum(const __m256i *acc, int rows, int32_t *dot)
{
    if (rows == 4) { /* four rows at once: two rounds of pairwise adds */
        __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
        _mm_storeu_si128((__m128i *)dot, _mm_add_epi32(_mm256_castsi256_si128(s),
                                                       _mm256_extracti128_si256(s, 1)));
        return;
    }
    for (int r = 0; r < rows; r++) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[r]), _mm256_extracti128_si256(acc[r], 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
        dot[r] = _mm_cvtsi128_si32(s);
    }
}

/* dot[r] = sum_c code(c) * x_r(c) of one packed weight row (`full` whole
   32-byte blocks, then `tail`: NULL or the zero-padded last block) with
   `rows` permuted activation rows (1 .. MLK__TERNARY_MR; inlined per constant). */
static inline void mlk__ternary_dot_avx2(const uint8_t *wrow, size_t full, const uint8_t *tail,
                                      const int8_t *xp, size_t x_stride, int rows, int32_t *dot)
{
    __m256i acc32[MLK__TERNARY_MR];
#if defined(MLK__VNNI)
    __m256i acc4[4 * MLK__TERNARY_MR];
    for (int r = 0; r < 4 * rows; r++) acc4[r] = _mm256_setzero_si256();
    for (size_t b = 0; b < full; b++)
        mlk__ternary_block(_mm256_loadu_si256((const __m256i *)(wrow + 32 * b)), xp + 128 * b, x_stride, rows, acc4);
    if (tail) mlk__ternary_block(_mm256_loadu_si256((const __m256i *)tail), xp + 128 * full, x_stride, rows, acc4);
    for (int r = 0; r < rows; r++)
        acc32[r] = _mm256_add_epi32(_mm256_add_epi32(acc4[4 * r], acc4[4 * r + 1]),
                                    _mm256_add_epi32(acc4[4 * r + 2], acc4[4 * r + 3]));
#else
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc16[MLK__TERNARY_MR];
    for (int r = 0; r < rows; r++) {
        acc16[r] = _mm256_setzero_si256();
        acc32[r] = _mm256_setzero_si256();
    }
    for (size_t b0 = 0; b0 < full; b0 += MLK__TERNARY_WIDEN) {
        size_t b1 = b0 + MLK__TERNARY_WIDEN < full ? b0 + MLK__TERNARY_WIDEN : full;
        for (size_t b = b0; b < b1; b++)
            mlk__ternary_block(_mm256_loadu_si256((const __m256i *)(wrow + 32 * b)), xp + 128 * b,
                            x_stride, rows, acc16);
        for (int r = 0; r < rows; r++) {
            acc32[r] = _mm256_add_epi32(acc32[r], _mm256_madd_epi16(acc16[r], ones));
            acc16[r] = _mm256_setzero_si256();
        }
    }
    if (tail) {
        mlk__ternary_block(_mm256_loadu_si256((const __m256i *)tail), xp + 128 * full, x_stride,
                        rows, acc16);
        for (int r = 0; r < rows; r++)
            acc32[r] = _mm256_add_epi32(acc32[r], _mm256_madd_epi16(acc16[r], ones));
    }
#endif
    mlk__ternary_hsum(acc32, rows, dot);
}

/* The GEMM on permuted activations: threads take chunks of weight rows
   (output columns); within one, MLK__TERNARY_MR activation rows at a time. */
static void mlk__ternary_gemm_panels(int m, int n, int k, const int8_t *xp, size_t kpad,
    const int32_t *row_sum, const float *xscale, const uint8_t *wpacked, float wscale, float *y)
{
    size_t row_bytes = mlk_ternary_row_bytes(k), full = row_bytes / 32, tail = row_bytes % 32;
    int n_chunks = (n + MLK__TERNARY_NCHUNK - 1) / MLK__TERNARY_NCHUNK;
    MLK__OMP(omp parallel for schedule(static) if (mlk__ternary_parallel(m, n, k)))
    for (int ch = 0; ch < n_chunks; ch++) {
        int j0 = ch * MLK__TERNARY_NCHUNK, j1 = j0 + MLK__TERNARY_NCHUNK < n ? j0 + MLK__TERNARY_NCHUNK : n;
        int i = 0;
        int32_t dot[MLK__TERNARY_MR];
        uint8_t tails[MLK__TERNARY_NCHUNK][32]; /* each row's last bytes, zero padded */
        for (int j = j0; tail && j < j1; j++) {
            memset(tails[j - j0], 0, 32);
            memcpy(tails[j - j0], wpacked + (size_t)j * row_bytes + 32 * full, tail);
        }
        for (; i <= m - MLK__TERNARY_MR; i += MLK__TERNARY_MR)
            for (int j = j0; j < j1; j++) {
                mlk__ternary_dot_avx2(wpacked + (size_t)j * row_bytes, full, tail ? tails[j - j0] : NULL,
                                   xp + (size_t)i * kpad, kpad, MLK__TERNARY_MR, dot);
                for (int r = 0; r < MLK__TERNARY_MR; r++)
                    y[(size_t)(i + r) * n + j] =
                        mlk__ternary_output(dot[r] - row_sum[i + r], xscale[i + r], wscale);
            }
        for (; i < m; i++)
            for (int j = j0; j < j1; j++) {
                mlk__ternary_dot_avx2(wpacked + (size_t)j * row_bytes, full, tail ? tails[j - j0] : NULL,
                                   xp + (size_t)i * kpad, kpad, 1, dot);
                y[(size_t)i * n + j] = mlk__ternary_output(dot[0] - row_sum[i], xscale[i], wscale);
            }
    }
}

/* Permutes the activations into scratch, then runs the panels. */
static mlk_status mlk__ternary_gemm_avx2(int m, int n, int k, const int8_t *xq, const float *xscale,
                                      const uint8_t *wpacked, float wscale, float *y)
{
    size_t kpad = ((size_t)k + 127) / 128 * 128, xp_bytes;
    mlk__arena arena;
    mlk__piece pc[2];
    int8_t *xp;
    int32_t *row_sum;
    mlk_status st;
    if (!mlk__mul_ok((size_t)m, kpad, &xp_bytes)) return MLK_ERR_OVERFLOW;
    pc[0] = mlk__piece_of(xp_bytes);
    pc[1] = mlk__piece_of((size_t)m * sizeof(int32_t));
    if ((st = mlk__arena_carve(&arena, NULL, pc, 2)) != MLK_OK) return st;
    xp = (int8_t *)pc[0].ptr;
    row_sum = (int32_t *)pc[1].ptr;
    MLK__OMP(omp parallel for schedule(static) if (xp_bytes >= MLK__PAR_ELEMS))
    for (int i = 0; i < m; i++)
        mlk__ternary_permute_x(xq + (size_t)i * k, k, kpad, xp + (size_t)i * kpad, row_sum + i);
    mlk__ternary_gemm_panels(m, n, k, xp, kpad, row_sum, xscale, wpacked, wscale, y);
    mlk__arena_done(&arena);
    return MLK_OK;
}
#endif

MLKERN_DEF mlk_status mlk_ternary_gemm(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y)
{
    size_t x_count, y_count, w_bytes, row_bytes = mlk_ternary_row_bytes(k);
    if (!xq || !xscale || !wpacked || !y) return MLK_ERR_NULL;
    if (m < 1 || n < 1 || k < 1) return MLK_ERR_SHAPE;
    if (k > MLK_TERNARY_MAX_K || !mlk__count4(m, k, 1, 1, 1, &x_count) ||
        !mlk__count4(m, n, 1, 1, sizeof(float), &y_count) ||
        !mlk__mul_ok((size_t)n, row_bytes, &w_bytes))
        return MLK_ERR_OVERFLOW;
#if defined(MLK__AVX2)
    return mlk__ternary_gemm_avx2(m, n, k, xq, xscale, wpacked, wscale, y);
#else
    mlk__ternary_gemm_ref(m, n, k, xq, xscale, wpacked, wscale, y);
    return MLK_OK;
#endif
}

/* ---- BitLinear training ---- */

/* Sizes shared by the BitLinear entry points: x [m, k], w [n, k], y [m, n]. */
static mlk_status mlk__bitlinear_sizes(int m, int n, int k, size_t *x_count, size_t *w_count)
{
    size_t y_count;
    if (m < 1 || n < 1 || k < 1) return MLK_ERR_SHAPE;
    if (k > MLK_TERNARY_MAX_K || !mlk__count4(m, k, 1, 1, sizeof(float), x_count) ||
        !mlk__count4(n, k, 1, 1, sizeof(float), w_count) ||
        !mlk__count4(m, n, 1, 1, sizeof(float), &y_count))
        return MLK_ERR_OVERFLOW;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_bitlinear_fwd(int m, int n, int k, const float *x,
    const float *w, float *y)
{
    size_t x_count, w_count, w_bytes;
    mlk__arena arena;
    mlk__piece pc[3];
    int8_t *xq;
    float *xscale, wscale;
    uint8_t *wpacked;
    mlk_status st;
    if (!x || !w || !y) return MLK_ERR_NULL;
    if ((st = mlk__bitlinear_sizes(m, n, k, &x_count, &w_count)) != MLK_OK) return st;
    w_bytes = (size_t)n * mlk_ternary_row_bytes(k);
    pc[0] = mlk__piece_of(x_count);
    pc[1] = mlk__piece_of((size_t)m * sizeof(float));
    pc[2] = mlk__piece_of(w_bytes);
    if ((st = mlk__arena_carve(&arena, NULL, pc, 3)) != MLK_OK) return st;
    xq = (int8_t *)pc[0].ptr;
    xscale = (float *)pc[1].ptr;
    wpacked = (uint8_t *)pc[2].ptr;
    st = mlk_act_quant_i8(m, k, x, xq, xscale);
    if (st == MLK_OK) st = mlk_ternary_quant(n, k, w, wpacked, &wscale);
    if (st == MLK_OK) st = mlk_ternary_gemm(m, n, k, xq, xscale, wpacked, wscale, y);
    mlk__arena_done(&arena);
    return st;
}

MLKERN_DEF mlk_status mlk_bitlinear_bwd(int m, int n, int k, const float *x,
    const float *w, const float *dy, float *dx, float *dw)
{
    size_t x_count, w_count, w_bytes;
    mlk__arena arena;
    mlk__piece pc[7];
    mlk__sgemm_plan dx_plan, dw_plan;
    int8_t *xq;
    float *xscale, *x_hat, *w_hat, *dx_scratch, *dw_scratch, wscale = 0;
    uint8_t *wpacked;
    mlk_status st;
    if (!x || !w || !dy) return MLK_ERR_NULL;
    if ((st = mlk__bitlinear_sizes(m, n, k, &x_count, &w_count)) != MLK_OK) return st;
    if (!dx && !dw) return MLK_OK;
    w_bytes = (size_t)n * mlk_ternary_row_bytes(k);
    /* both products are planned (with w and x standing in for W^ and x^) and
       all scratch is taken up front: nothing can fail once dx is written */
    memset(&dx_plan, 0, sizeof dx_plan);
    memset(&dw_plan, 0, sizeof dw_plan);
    if (dx && (st = mlk__sgemm_plan_make(0, 0, m, k, n, 1.0f, dy, n, w, k, 0.0f, dx, k, &dx_plan)) != MLK_OK)
        return st; /* dx [m, k] = dy [m, n] * W^ [n, k] */
    if (dw && (st = mlk__sgemm_plan_make(1, 0, n, k, m, 1.0f, dy, n, x, k, 0.0f, dw, k, &dw_plan)) != MLK_OK)
        return st; /* dw [n, k] = dy^T [n, m] * x^ [m, k] */
    pc[0] = mlk__piece_of(dx ? w_bytes : 0);                   /* packed W */
    pc[1] = mlk__piece_of(dx ? w_count * sizeof(float) : 0);   /* W^ */
    pc[2] = mlk__piece_of(dx_plan.scratch_bytes);
    pc[3] = mlk__piece_of(dw ? x_count : 0);                   /* int8 x */
    pc[4] = mlk__piece_of(dw ? (size_t)m * sizeof(float) : 0); /* its row scales */
    pc[5] = mlk__piece_of(dw ? x_count * sizeof(float) : 0);   /* x^ */
    pc[6] = mlk__piece_of(dw_plan.scratch_bytes);
    if ((st = mlk__arena_carve(&arena, NULL, pc, 7)) != MLK_OK) return st;
    wpacked = (uint8_t *)pc[0].ptr;
    w_hat = (float *)pc[1].ptr;
    dx_scratch = (float *)pc[2].ptr;
    xq = (int8_t *)pc[3].ptr;
    xscale = (float *)pc[4].ptr;
    x_hat = (float *)pc[5].ptr;
    dw_scratch = (float *)pc[6].ptr;
    dx_plan.g.b = w_hat;
    dw_plan.g.b = x_hat;
    /* quantise both first: a bad value fails before any output is written */
    if (dx) {
        st = mlk_ternary_quant(n, k, w, wpacked, &wscale);
        if (st == MLK_OK) st = mlk_ternary_dequant(n, k, wpacked, wscale, w_hat);
    }
    if (dw && st == MLK_OK) {
        st = mlk_act_quant_i8(m, k, x, xq, xscale);
        if (st == MLK_OK)
            for (size_t i = 0; i < x_count; i++) x_hat[i] = (float)xq[i] * xscale[i / (size_t)k];
    }
    if (st == MLK_OK) {
        if (dx) mlk__sgemm_run(&dx_plan, dx_scratch);
        if (dw) mlk__sgemm_run(&dw_plan, dw_scratch);
    }
    mlk__arena_done(&arena);
    return st;
}

/* ======================================================================
   optimiser
   ====================================================================== */

/* AdamW, as torch.optim.AdamW: decoupled weight decay, bias-corrected moments. */

MLKERN_DEF mlk_status mlk_adamw_step(int n, float *param, const float *grad,
    float *m, float *v, const mlk_adamw_config *cfg, int step)
{
    float decay, step_size, bc2_sqrt, beta1, beta2, eps;
    if (!param || !grad || !m || !v || !cfg) return MLK_ERR_NULL;
    if (n < 1) return MLK_ERR_SHAPE;
    if (step < 1 || !(cfg->lr >= 0 && cfg->lr <= FLT_MAX) || !(cfg->eps >= 0 && cfg->eps <= FLT_MAX) ||
        !(cfg->weight_decay >= 0 && cfg->weight_decay <= FLT_MAX) ||
        !(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1))
        return MLK_ERR_ARG;
    beta1 = cfg->beta1;
    beta2 = cfg->beta2;
    eps = cfg->eps;
    /* scalars in double as PyTorch's Python floats, then used in float */
    decay = (float)(1.0 - (double)cfg->lr * cfg->weight_decay);
    step_size = (float)((double)cfg->lr / (1.0 - pow((double)beta1, (double)step)));
    bc2_sqrt = (float)sqrt(1.0 - pow((double)beta2, (double)step));
    MLK__OMP(omp parallel for schedule(static) if ((size_t)n >= MLK__PAR_ELEMS))
    for (int i = 0; i < n; i++) {
        float g = grad[i], p = param[i] * decay;
        float m1 = beta1 * m[i] + (1.0f - beta1) * g;
        float v1 = v[i] * beta2 + (1.0f - beta2) * g * g;
        m[i] = m1;
        v[i] = v1;
        param[i] = p - step_size * (m1 / (sqrtf(v1) / bc2_sqrt + eps));
    }
    return MLK_OK;
}


#ifdef __cplusplus
}
#endif

#ifdef MLK__GXX_AVX512_QUIET
#pragma GCC diagnostic pop
#endif

#endif /* MLKERN_IMPLEMENTATION_DONE */
#endif /* MLKERN_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
This software is available under the MIT License.
Copyright (c) 2026 the mlkern authors.
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
*/

/* mlkern.h - the kernels LLM inference and training engines are built from.
   A single-header C99 library (stb style), MIT licence (end of file).
                                                            version 0.1.0
   WHAT IT IS
   Plain C functions on plain float arrays: a packed SIMD sgemm, layer and RMS
   norm forward/backward, softmax with fused one-pass top-k and sampling,
   flash attention forward/backward (bottom-right causal, GQA/MQA, sliding
   window, softcap, variable kv lengths, tree masks, two layouts), a paged
   KV cache (copy-on-write forks, f32/f16/int8/int4 storage, attention over
   it for decode, chunked prefill and tree verification), batched beam
   search whose finished hypotheses keep competing, tree speculative
   decoding that is exactly greedy decoding, and ternary (BitNet b1.58)
   quantisation, packed ternary GEMM and straight-through training.
   No dependencies beyond libm, no global state, no hidden threads.

   HOW TO USE IT
   Include it anywhere for the declarations; in exactly one C or C++ file
   write

       #define MLKERN_IMPLEMENTATION
       #include "mlkern.h"

   and link with -lm. Add -fopenmp to run the kernels on several threads:
   results are bitwise identical for any thread count. With -march=native
   (or -mavx2 -mfma -mf16c) the AVX2+FMA paths are compiled in.

   CONFIGURATION (define before the implementation include)
       MLKERN_STATIC     every function static (private to that file)
       MLKERN_MALLOC(n)  MLKERN_FREE(p)   allocation (default malloc/free)
       MLKERN_ASSERT(x)  internal invariants (default assert)
       MLKERN_NO_SIMD    force the portable scalar path
   SIMD: AVX2+FMA (x86-64) or scalar, chosen at compile time.

   ERRORS
   Every fallible function returns mlk_status (MLK_OK == 0; mlk_status_str
   names each code). Arguments are validated before any output is written:
   on error every output and cache is left exactly as it was.

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
                    mlk_topk_log_softmax, mlk_sample
       attention    mlk_attn_fwd, mlk_attn_bwd, mlk_attn_naive,
                    mlk_attn_workspace_size
       KV cache     mlk_kv_create ... mlk_kv_attn, mlk_kv_get_stats
       beam search  mlk_beam_search
       speculative  mlk_tree_mask, mlk_tree_depth, mlk_tree_accept,
                    mlk_spec_generate
       ternary      mlk_ternary_quant/dequant, mlk_act_quant_i8,
                    mlk_ternary_gemm, mlk_bitlinear_fwd/bwd, mlk_adamw_step
   README.md has the tour, the semantics that differ from PyTorch/HF and the
   measured speed.
*/
#ifndef MLKERN_H
#define MLKERN_H

#include <stddef.h>
#include <stdint.h>

#define MLKERN_VERSION_MAJOR 0
#define MLKERN_VERSION_MINOR 1
#define MLKERN_VERSION_PATCH 0

#ifdef MLKERN_STATIC
#if defined(__GNUC__) || defined(__clang__)
#define MLKERN_DEF static __attribute__((unused)) /* a file uses only some */
#else
#define MLKERN_DEF static
#endif
#else
#define MLKERN_DEF extern
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
    MLK_ERR_ARG       /* any other bad argument */
} mlk_status;

MLKERN_DEF const char *mlk_status_str(mlk_status s);

#include "src/gemm_api.h"
#include "src/norm_api.h"
#include "src/softmax_api.h"
#include "src/attn_api.h"
#include "src/kv_api.h"
#include "src/beam_api.h"
#include "src/tree_api.h"
#include "src/ternary_api.h"

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

#if !defined(MLKERN_MALLOC) || !defined(MLKERN_FREE)
#include <stdlib.h>
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

MLK__MAYBE_UNUSED static void *mlk__arena_take(mlk__arena *a, size_t bytes)
{
    size_t r = (bytes + MLK__ALIGN - 1) / MLK__ALIGN * MLK__ALIGN;
    void *p = a->base + a->used;
    MLKERN_ASSERT(a->used + r <= a->cap);
    a->used += r;
    return p;
}

MLK__MAYBE_UNUSED static void mlk__arena_done(mlk__arena *a)
{
    mlk__free(a->owned);
    a->owned = NULL;
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

/* ---- exp: e^x = 2^n * e^r, x = n ln2 + r, |r| <= ln2/2; degree-6
   polynomial for e^r (rel. error ~2e-7). -inf and x < -87.3 give 0. ---- */

MLK__MAYBE_UNUSED static float mlk__expf(float x)
{
    float n, r, p, bits_f;
    int32_t e;
    if (!(x > -87.33654f)) return (x != x) ? x : 0.0f;
    if (x > 88.72283f) return INFINITY;
    n = floorf(x * 1.44269504f + 0.5f);
    r = x - n * 0.693145752f;
    r = r - n * 1.42860677e-6f;
    p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    e = ((int32_t)n + 127) << 23;
    memcpy(&bits_f, &e, sizeof e);
    return p * bits_f;
}

#if defined(MLK__AVX2)
/* 8 lanes of mlk__expf, same polynomial. */
MLK__MAYBE_UNUSED static __m256 mlk__exp8(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.72283f);
    __m256 valid = _mm256_cmp_ps(x, lo, _CMP_GT_OQ);
    __m256 n, r, p;
    __m256i e;
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_and_ps(p, valid); /* x <= -87.3, -inf or NaN -> 0 */
}
#endif

#ifdef __cplusplus
}
#endif

#include "src/gemm_impl.h"
#include "src/norm_impl.h"
#include "src/softmax_impl.h"
#include "src/attn_impl.h"
#include "src/kv_impl.h"
#include "src/beam_impl.h"
#include "src/tree_impl.h"
#include "src/ternary_impl.h"

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

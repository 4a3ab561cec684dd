/* Times mlkern_cuda.cuh's kernels on the GPU at the shapes that
   tests/cuda/bench_torch.py times PyTorch at; one CSV line per case:
       bench,kernel,dtype,shape,ms,GB/s
   (median of 20 runs after 3 warm-ups, cudaEvent timing; GB/s counts the
   bytes each kernel must move at least). Run by `make cuda-bench`. */
#include <cuda_runtime.h>
#define MLKERN_IMPLEMENTATION /* the CPU side: mlk_status_str, mlk_ternary_row_bytes */
#include "mlkern.h"
#include "mlkern_cuda.cuh"

#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

static void cuda_ok(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "bench_cuda: %s: %s\n", what, cudaGetErrorString(e));
        exit(2);
    }
}

static void status_ok(mlk_status s, const char *what)
{
    if (s != MLK_OK) {
        fprintf(stderr, "bench_cuda: %s: %s\n", what, mlk_status_str(s));
        exit(2);
    }
}

template <typename F> static double time_ms(F run)
{
    cudaEvent_t a, b;
    std::vector<float> t;
    cuda_ok(cudaEventCreate(&a), "event");
    cuda_ok(cudaEventCreate(&b), "event");
    for (int i = 0; i < 23; i++) {
        cuda_ok(cudaEventRecord(a, 0), "record");
        run();
        cuda_ok(cudaEventRecord(b, 0), "record");
        cuda_ok(cudaEventSynchronize(b), "sync");
        float ms = 0;
        cuda_ok(cudaEventElapsedTime(&ms, a, b), "elapsed");
        if (i >= 3) t.push_back(ms);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

static void *dev(size_t bytes, int fill)
{
    void *p = NULL;
    cuda_ok(cudaMalloc(&p, bytes), "cudaMalloc");
    cuda_ok(cudaMemset(p, fill, bytes), "cudaMemset");
    return p;
}

static void report(const char *kernel, const char *dtype, const char *shape, double ms, double bytes)
{
    printf("bench,%s,%s,%s,%.4f,%.1f\n", kernel, dtype, shape, ms, bytes / (ms * 1e-3) / 1e9);
}

/* small random values: normal-looking rows, no NaN */
template <typename T> static T *dev_random(size_t n)
{
    std::vector<T> h(n);
    uint64_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)((s >> 40) & 0xFFFF) / 32768.0f - 1.0f;
        h[i] = (T)v;
    }
    T *p = (T *)dev(n * sizeof(T), 0);
    cuda_ok(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload");
    return p;
}

template <typename T> static void bench_layernorm(int rows, int dim, const char *dtype)
{
    size_t n = (size_t)rows * dim;
    T *x = dev_random<T>(n), *y = (T *)dev(n * sizeof(T), 0), *dy = dev_random<T>(n), *dx = (T *)dev(n * sizeof(T), 0);
    float *gamma = (float *)dev(dim * sizeof(float), 0), *beta = (float *)dev(dim * sizeof(float), 0);
    float *mean = (float *)dev(rows * sizeof(float), 0), *rstd = (float *)dev(rows * sizeof(float), 0);
    float *dg = (float *)dev(dim * sizeof(float), 0), *db = (float *)dev(dim * sizeof(float), 0);
    size_t ws_bytes = mlk_cuda_norm_bwd_workspace_size(rows, dim);
    void *ws = dev(ws_bytes, 0);
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%d", rows, dim);
    double ms = time_ms([&]() {
        status_ok(mlk_cuda_layernorm_fwd<T>(rows, dim, x, gamma, beta, 1e-5f, y, mean, rstd, 0), "layernorm_fwd");
    });
    report("layernorm_fwd", dtype, shape, ms, 2.0 * n * sizeof(T));
    ms = time_ms([&]() {
        status_ok(mlk_cuda_layernorm_bwd<T>(rows, dim, x, gamma, mean, rstd, dy, dx, dg, db, ws, ws_bytes, 0),
                  "layernorm_bwd");
    });
    report("layernorm_bwd", dtype, shape, ms, 3.0 * n * sizeof(T));
    cudaFree(x); cudaFree(y); cudaFree(dy); cudaFree(dx); cudaFree(gamma); cudaFree(beta);
    cudaFree(mean); cudaFree(rstd); cudaFree(dg); cudaFree(db); cudaFree(ws);
}

static void bench_topk(int rows, int n, int k)
{
    size_t count = (size_t)rows * n;
    float *x = dev_random<float>(count), *p = (float *)dev((size_t)rows * k * sizeof(float), 0);
    int32_t *idx = (int32_t *)dev((size_t)rows * k * sizeof(int32_t), 0);
    int *st = (int *)dev(sizeof(int), 0);
    size_t ws_bytes = mlk_cuda_topk_workspace_size(rows, n, k);
    void *ws = dev(ws_bytes, 0);
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%d_k%d", rows, n, k);
    double ms = time_ms([&]() {
        status_ok(mlk_cuda_topk_softmax<float>(rows, n, x, 1.0f, k, p, idx, st, ws, ws_bytes, 0), "topk_softmax");
    });
    report("topk_softmax", "f32", shape, ms, (double)count * sizeof(float));
    cudaFree(x); cudaFree(p); cudaFree(idx); cudaFree(st); cudaFree(ws);
}

/* mlk_cuda_sample over uniform logits in [-1, 1): T 0.005 keeps top_p
   inside the first candidates, T 1 needs the whole row. */
static void bench_sample(int rows, int n, mlk_sampler s, const char *what)
{
    size_t count = (size_t)rows * n;
    float *x = dev_random<float>(count);
    int32_t *tok = (int32_t *)dev((size_t)rows * sizeof(int32_t), 0);
    int *st = (int *)dev(sizeof(int), 0);
    uint64_t *rng = (uint64_t *)dev(sizeof(uint64_t), 0);
    size_t ws_bytes = mlk_cuda_sample_workspace_size(rows, n, &s);
    void *ws = dev(ws_bytes, 0);
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%d_%s", rows, n, what);
    double ms = time_ms([&]() { status_ok(mlk_cuda_sample<float>(rows, n, x, &s, rng, tok, st, ws, ws_bytes, 0), "sample"); });
    report("sample", "f32", shape, ms, (double)count * sizeof(float));
    cudaFree(x); cudaFree(tok); cudaFree(st); cudaFree(rng); cudaFree(ws);
}

static void bench_ternary(int m, int n, int k)
{
    size_t row_bytes = mlk_ternary_row_bytes(k);
    int8_t *xq = (int8_t *)dev((size_t)m * k, 1);
    uint8_t *w = (uint8_t *)dev((size_t)n * row_bytes, 0x66);
    float *xs = (float *)dev(m * sizeof(float), 0), *y = (float *)dev((size_t)m * n * sizeof(float), 0);
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%dx%d", m, n, k);
    double ms = time_ms([&]() { status_ok(mlk_cuda_ternary_gemm(m, n, k, xq, xs, w, 1.0f, y, 0), "ternary_gemm"); });
    report("ternary_gemm", "i8xt2", shape, ms, (double)n * row_bytes + (double)m * k);
    cudaFree(xq); cudaFree(w); cudaFree(xs); cudaFree(y);
}

/* Paged decode: n_seqs sequences of len positions each, one query each;
   GB/s counts the K and V rows read (and q, o). The pool's bytes are 0x3C
   (F16 1.06; Q8 scales 0.0115, codes 60): finite, as a real cache. */
static void bench_kv_decode(mlk_kv_type type, const char *dtype, int n_seqs, int len, int heads, int kv_heads, int d)
{
    mlk_kv_config cfg = {1, kv_heads, d, 16, n_seqs * ((len + 15) / 16), n_seqs, type};
    mlk_kv_cache *c = NULL;
    mlk_kv_layout lay;
    status_ok(mlk_kv_create_bookkeeping(&cfg, &c), "kv_create_bookkeeping");
    std::vector<int> seqs(n_seqs), n_q(n_seqs, 1);
    for (int s = 0; s < n_seqs; s++) {
        status_ok(mlk_kv_seq_new(c, &seqs[s]), "kv_seq_new");
        status_ok(mlk_kv_append(c, seqs[s], len), "kv_append");
    }
    status_ok(mlk_kv_get_layout(c, &lay), "kv_get_layout");
    void *pool = dev(lay.block_bytes * (size_t)lay.num_blocks, 0x3C);
    size_t qn = (size_t)n_seqs * heads * d;
    float *q = dev_random<float>(qn), *o = (float *)dev(qn * sizeof(float), 0);
    float *lse = (float *)dev((size_t)n_seqs * heads * sizeof(float), 0);
    size_t ws_bytes = mlk_cuda_kv_attn_workspace_size(c, n_seqs, seqs.data(), n_q.data(), heads, NULL);
    void *ws = dev(ws_bytes, 0);
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%d_h%d/%d_d%d", n_seqs, len, heads, kv_heads, d);
    double ms = time_ms([&]() {
        status_ok(mlk_cuda_kv_attn(c, pool, 0, n_seqs, seqs.data(), n_q.data(), q, heads, NULL, o, lse, ws, ws_bytes, 0),
                  "kv_attn");
    });
    report("kv_attn_decode", dtype, shape, ms,
           (double)n_seqs * len * mlk_kv_bytes_per_token(&cfg) + 2.0 * qn * sizeof(float));
    cudaFree(pool); cudaFree(q); cudaFree(o); cudaFree(lse); cudaFree(ws);
    mlk_kv_destroy(c);
}

/* Attention forward over (b, h, n, d) BHND, kv_heads / len_kv for GQA
   decode shapes (0: h, n); GB/s counts q, k, v, o once. */
template <typename T>
static void bench_attn_fwd(int b, int h, int n, int d, int causal, const char *dtype, int kv_heads = 0, int len_kv = 0)
{
    mlk_attn_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.batch = b;
    desc.heads = h;
    desc.kv_heads = kv_heads;
    desc.len_q = n;
    desc.len_kv = len_kv;
    desc.head_dim = d;
    desc.causal = causal;
    size_t nq = (size_t)b * h * n * d, nkv = (size_t)b * (kv_heads ? kv_heads : h) * (len_kv ? len_kv : n) * d;
    size_t ws_bytes = mlk_cuda_attn_fwd_workspace_size(&desc);
    T *q = dev_random<T>(nq), *k = dev_random<T>(nkv), *v = dev_random<T>(nkv);
    T *o = (T *)dev(nq * sizeof(T), 0);
    float *lse = (float *)dev((size_t)b * h * n * sizeof(float), 0);
    void *ws = ws_bytes ? dev(ws_bytes, 0) : NULL;
    char shape[64];
    if (len_kv)
        snprintf(shape, sizeof shape, "%dx%dx%dx%d_kv%dx%d", b, h, n, d, kv_heads, len_kv);
    else
        snprintf(shape, sizeof shape, "%dx%dx%dx%d%s", b, h, n, d, causal ? "_causal" : "");
    double ms = time_ms([&]() { status_ok(mlk_cuda_attn_fwd<T>(&desc, q, k, v, o, lse, ws, ws_bytes, 0), "attn_fwd"); });
    report("attn_fwd", dtype, shape, ms, (2.0 * nq + 2.0 * nkv) * sizeof(T));
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(lse); cudaFree(ws);
}

/* Attention backward (D, dK/dV, dQ) from the forward's o and lse; GB/s
   counts q, k, v, o, dout read and dq, dk, dv written once. */
template <typename T> static void bench_attn_bwd(int b, int h, int n, int d, int causal, const char *dtype)
{
    mlk_attn_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.batch = b;
    desc.heads = h;
    desc.len_q = n;
    desc.head_dim = d;
    desc.causal = causal;
    size_t count = (size_t)b * h * n * d;
    T *q = dev_random<T>(count), *k = dev_random<T>(count), *v = dev_random<T>(count);
    T *dout = dev_random<T>(count), *o = (T *)dev(count * sizeof(T), 0);
    T *dq = (T *)dev(count * sizeof(T), 0), *dk = (T *)dev(count * sizeof(T), 0);
    T *dv = (T *)dev(count * sizeof(T), 0);
    float *lse = (float *)dev((size_t)b * h * n * sizeof(float), 0);
    size_t ws_bytes = mlk_cuda_attn_bwd_workspace_size(&desc);
    void *ws = dev(ws_bytes, 0);
    status_ok(mlk_cuda_attn_fwd<T>(&desc, q, k, v, o, lse, NULL, 0, 0), "attn_fwd");
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d%s", b, h, n, d, causal ? "_causal" : "");
    double ms = time_ms([&]() {
        status_ok(mlk_cuda_attn_bwd<T>(&desc, q, k, v, o, dout, lse, dq, dk, dv, ws, ws_bytes, 0), "attn_bwd");
    });
    report("attn_bwd", dtype, shape, ms, 8.0 * count * sizeof(T));
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(dout); cudaFree(o);
    cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(lse); cudaFree(ws);
}

int main(void)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("bench_cuda: no CUDA device: nothing timed\n");
        return 1;
    }
    bench_layernorm<float>(32768, 1024, "f32");
    bench_layernorm<float>(8192, 4096, "f32");
    bench_layernorm<__nv_bfloat16>(32768, 1024, "bf16");
    bench_layernorm<__nv_bfloat16>(8192, 4096, "bf16");
    bench_topk(64, 128256, 50);
    bench_topk(512, 128256, 50);
    bench_topk(8, 262144, 50);
    bench_topk(8, 262144, 4096);
    bench_sample(64, 128256, mlk_sampler{0.005f, 0, 0.9f, 0.0f}, "top_p0.9_T0.005");
    bench_sample(64, 128256, mlk_sampler{1.0f, 0, 0.9f, 0.0f}, "top_p0.9_T1");
    bench_sample(64, 128256, mlk_sampler{1.0f, 4096, 1.0f, 0.0f}, "top_k4096");
    bench_ternary(1, 4096, 4096);
    bench_kv_decode(MLK_KV_F16, "f16", 32, 4096, 32, 8, 128);
    bench_kv_decode(MLK_KV_Q8, "q8", 32, 4096, 32, 8, 128);
    bench_attn_fwd<__nv_bfloat16>(4, 16, 4096, 64, 1, "bf16");
    bench_attn_fwd<__nv_bfloat16>(4, 16, 4096, 64, 0, "bf16");
    bench_attn_fwd<__nv_bfloat16>(2, 16, 8192, 128, 1, "bf16");
    bench_attn_fwd<__nv_bfloat16>(8, 32, 1024, 128, 1, "bf16");
    bench_attn_fwd<float>(4, 16, 4096, 64, 1, "f32");
    bench_attn_fwd<__nv_bfloat16>(1, 32, 1, 128, 0, "bf16", 8, 4096);
    bench_attn_fwd<__nv_bfloat16>(1, 32, 1, 128, 0, "bf16", 8, 32768);
    /* bf16 at head_dim 64 / 128 (cudaMalloc'd, so aligned): the tensor-core backward; f32: SIMT */
    bench_attn_bwd<__nv_bfloat16>(4, 16, 4096, 64, 1, "bf16");
    bench_attn_bwd<__nv_bfloat16>(4, 16, 4096, 64, 0, "bf16");
    bench_attn_bwd<__nv_bfloat16>(2, 16, 8192, 128, 1, "bf16");
    bench_attn_bwd<__nv_bfloat16>(8, 32, 1024, 128, 1, "bf16");
    bench_attn_bwd<float>(4, 16, 4096, 64, 1, "f32");
    return 0;
}

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
    bench_ternary(1, 4096, 4096);
    return 0;
}

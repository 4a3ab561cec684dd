/* mlkct.h - the harness of the CUDA tests (tests/cuda/test_*.cu).

   One source, two builds: nvcc for a GPU, or g++ / clang++ with
   -DMLKCT_EMULATE, which runs the kernels on the host through simt.h. A
   test includes this file only; it brings mlkern.h with its
   implementation (the CPU twins), tests/mlkt.h (checks, seeds, the final
   "N passed, M failed" line) and mlkern_cuda.cuh with its implementation.

   Device buffers sit between canaries and start filled with 0xFF bytes (a
   NaN for floats, -1 for integers), so a kernel that writes out of bounds
   or forgets an element fails. Under the emulator every kernel call of a
   test goes through mlkct_orders(), which runs it in each thread order and
   requires bitwise-identical outputs; mlkct_launches() counts kernel
   launches and mlkct_launches_of(kernel) those of one kernel (on a GPU
   both return -1: not observable). */
#ifndef MLKCT_H
#define MLKCT_H

#ifdef MLKCT_EMULATE
#include "simt.h"
#else
#include <cuda_runtime.h>
#endif

#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
/* The emulator build is one translation unit (simt.h defines the runtime);
   an nvcc build links tests/cuda/mlkern_cuda_impl.cu instead, unless the
   test needs the header's internals (MLKCT_HEADER_IMPL). */
#if defined(MLKCT_EMULATE) || defined(MLKCT_HEADER_IMPL)
#define MLKERN_CUDA_IMPLEMENTATION
#endif
#include "mlkern_cuda.cuh"

#include <vector>

#ifdef MLKCT_EMULATE
static const int mlkct_n_orders = 3;
static inline void mlkct_set_order(int i) { simt_set_order(i, 0x5EED0000ull + (uint64_t)i); }
static inline long mlkct_launches(void) { return simt_launches(); }
template <typename K> static inline long mlkct_launches_of(K kernel) { return simt_launches_of(kernel); }
#else
static const int mlkct_n_orders = 1;
static inline void mlkct_set_order(int) {}
static inline long mlkct_launches(void) { return -1; }
template <typename K> static inline long mlkct_launches_of(K) { return -1; }
/* Before main: without a device the test says so and exits 77 (ctest's
   "skipped"), never reporting a pass. */
[[maybe_unused]] static int mlkct_device_probe = []() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("no CUDA device: the GPU build of this test was not run\n");
        exit(77);
    }
    return n;
}();
#endif

/* Small sweeps: under the emulator, and on a GPU when MLKCT_SMALL is set
   (compute-sanitizer runs); never drops a hard case, only repetitions. */
static inline bool mlkct_small(void) { return mlkct_n_orders > 1 || getenv("MLKCT_SMALL") != NULL; }

/* Aborts on a failed runtime call of the harness itself. */
static inline void mlkct_cuda(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
        exit(2);
    }
}

/* ---- guarded device buffers ---- */

#define MLKCT_GUARD 64 /* bytes of canary on each side */

template <typename T> struct dbuf {
    T *p;           /* the payload: n elements */
    size_t n;
    unsigned char *raw;
};

template <typename T> static inline dbuf<T> dbuf_new(size_t n)
{
    dbuf<T> b;
    size_t bytes = n * sizeof(T) + 2 * MLKCT_GUARD;
    std::vector<unsigned char> fill(bytes, 0xFF);
    for (size_t i = 0; i < MLKCT_GUARD; i++) fill[i] = fill[bytes - 1 - i] = 0xA5;
    mlkct_cuda(cudaMalloc((void **)&b.raw, bytes), "cudaMalloc");
    mlkct_cuda(cudaMemcpy(b.raw, fill.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    b.p = (T *)(b.raw + MLKCT_GUARD);
    b.n = n;
    return b;
}

template <typename T> static inline dbuf<T> dbuf_from(const T *host, size_t n)
{
    dbuf<T> b = dbuf_new<T>(n);
    if (n) mlkct_cuda(cudaMemcpy(b.p, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
    return b;
}

template <typename T> static inline std::vector<T> dbuf_get(const dbuf<T> &b)
{
    std::vector<T> h(b.n);
    mlkct_cuda(cudaDeviceSynchronize(), "kernel");
    if (b.n) mlkct_cuda(cudaMemcpy(h.data(), b.p, b.n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return h;
}

template <typename T> static inline void dbuf_put(dbuf<T> &b, const T *host)
{
    if (b.n) mlkct_cuda(cudaMemcpy(b.p, host, b.n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
}

/* Refills the payload with 0xFF (NaN / -1). */
template <typename T> static inline void dbuf_poison(dbuf<T> &b)
{
    if (b.n) mlkct_cuda(cudaMemset(b.p, 0xFF, b.n * sizeof(T)), "cudaMemset");
}

template <typename T> static inline int dbuf_guard_ok(const dbuf<T> &b)
{
    size_t bytes = b.n * sizeof(T) + 2 * MLKCT_GUARD;
    std::vector<unsigned char> h(bytes);
    mlkct_cuda(cudaDeviceSynchronize(), "kernel");
    mlkct_cuda(cudaMemcpy(h.data(), b.raw, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
    for (size_t i = 0; i < MLKCT_GUARD; i++)
        if (h[i] != 0xA5 || h[bytes - 1 - i] != 0xA5) return 0;
    return 1;
}

template <typename T> static inline void dbuf_free(dbuf<T> &b)
{
    if (!b.raw) return;
    mlkt_report(dbuf_guard_ok(b), __FILE__, __LINE__, "device canaries intact", NULL);
    mlkct_cuda(cudaFree(b.raw), "cudaFree");
    b.raw = NULL;
    b.p = NULL;
}

/* ---- every thread order gives the same bits ----
   run() launches the kernels under test and returns their outputs as
   bytes; it is called once per order (after resetting the outputs it
   reads back) and must return MLK_OK-equal bytes every time. Returns the
   first order's bytes. */
template <typename F> static inline std::vector<unsigned char> mlkct_orders(const char *what, F run)
{
    std::vector<unsigned char> first;
    for (int o = 0; o < mlkct_n_orders; o++) {
        mlkct_set_order(o);
        std::vector<unsigned char> got = run();
        if (o == 0) first = got;
        else
            CHECKF(got == first, "%s: thread order %d gives other bits than order 0", what, o);
    }
    mlkct_set_order(0);
    return first;
}

/* Appends a device buffer's payload to a byte vector (for mlkct_orders). */
template <typename T> static inline void mlkct_append(std::vector<unsigned char> &out, const dbuf<T> &b)
{
    std::vector<T> h = dbuf_get(b);
    const unsigned char *p = (const unsigned char *)h.data();
    out.insert(out.end(), p, p + h.size() * sizeof(T));
}

/* ---- bf16 / fp16 on the host, with the device's rounding ---- */

static inline float mlkct_to_float(float v) { return v; }
static inline float mlkct_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
static inline float mlkct_to_float(__half v) { return __half2float(v); }
template <typename T> static inline T mlkct_from_float(float v);
template <> inline float mlkct_from_float<float>(float v) { return v; }
template <> inline __nv_bfloat16 mlkct_from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> inline __half mlkct_from_float<__half>(float v) { return __float2half(v); }

/* unit roundoff of T: the error of one rounding to T, relative */
template <typename T> static inline double mlkct_unit(void);
template <> inline double mlkct_unit<float>(void) { return 5.960464477539063e-08; }
template <> inline double mlkct_unit<__nv_bfloat16>(void) { return 3.90625e-03; }
template <> inline double mlkct_unit<__half>(void) { return 4.8828125e-04; }

/* half the smallest subnormal of T: the absolute rounding error near zero */
template <typename T> static inline double mlkct_tiny(void);
template <> inline double mlkct_tiny<float>(void) { return 0.0; }
template <> inline double mlkct_tiny<__nv_bfloat16>(void) { return 0x1p-134; }
template <> inline double mlkct_tiny<__half>(void) { return 0x1p-25; }

/* what rounding v to T may cost */
template <typename T> static inline double mlkct_rounding(double v)
{
    return sizeof(T) == 4 ? 0.0 : mlkct_unit<T>() * fabs(v) + mlkct_tiny<T>();
}

template <typename T> static inline const char *mlkct_type_name(void);
template <> inline const char *mlkct_type_name<float>(void) { return "f32"; }
template <> inline const char *mlkct_type_name<__nv_bfloat16>(void) { return "bf16"; }
template <> inline const char *mlkct_type_name<__half>(void) { return "f16"; }

/* Rounds host floats to T (the test's inputs are then exactly representable). */
template <typename T> static inline std::vector<T> mlkct_round(const float *x, size_t n, std::vector<float> *as_float)
{
    std::vector<T> out(n);
    if (as_float) as_float->resize(n);
    for (size_t i = 0; i < n; i++) {
        out[i] = mlkct_from_float<T>(x[i]);
        if (as_float) (*as_float)[i] = mlkct_to_float(out[i]);
    }
    return out;
}

/* ---- the tolerance rule for T outputs ----
   Max over elements of |got - ref| minus the rounding of ref to T (unit *
   |ref|, zero for float): what is left is the float32 computation's error,
   which the tests hold to 2x the naive float32 error plus a floor. */
template <typename T> static inline double mlkct_err(const T *got, const double *ref, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double g = mlkct_to_float(got[i]), d = fabs(g - ref[i]) - mlkct_rounding<T>(ref[i]);
        if (g != g) return INFINITY;
        if (d > e) e = d;
    }
    return e;
}

/* mlkct_err for a result already rounded to T, kept in double (a naive
   T computation's, the yardstick of a tensor-core kernel) */
template <typename T> static inline double mlkct_err_rounded(const double *got, const double *ref, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs(got[i] - ref[i]) - mlkct_rounding<T>(ref[i]);
        e = x > e ? x : e;
    }
    return e;
}

static inline double mlkct_max_abs(const double *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* Ends the program: "<name>: N passed, M failed" (the runner prefixes the backend). */
static inline int mlkct_finish(const char *name)
{
    mlkt_file = name;
    return mlkt_finish();
}

#endif

/* simt.h - runs CUDA kernels on the host, for testing (not part of mlkern).

   A .cu file compiled by g++ or clang++ as C++17 with -DMLKCT_EMULATE
   includes this instead of cuda_runtime.h. Kernels then run on the CPU:
   the blocks of a grid one after another, the threads of a block as
   coroutines (one stack each) that switch only where a real GPU would make
   them wait for each other: __syncthreads (and its _or / _count forms),
   __syncwarp, the warp shuffles and votes. __shared__ variables are function statics (blocks run one at a
   time, so one copy serves every block), dynamic shared memory is a buffer
   refilled with 0xFF bytes (NaN) before each block, device memory is host
   memory, streams and events are no-ops and every call completes at once.

   The order in which a block's runnable threads run between two such
   points is a parameter (simt_set_order): forward, reverse, or a seeded
   shuffle drawn afresh at every phase; reverse and shuffle also reverse or
   shuffle the order of the blocks. A kernel that is correct gives bitwise
   the same result in every order; a missing barrier lets one thread read
   shared memory before or after another writes it, depending on the
   order, and shows up as a difference. The emulator is strict where a GPU
   is undefined: __syncthreads after some threads of the block returned, a
   warp operation whose mask names an exited lane or lanes waiting at
   different operations, and a shuffle reading a lane outside the mask all
   abort with a message.

   mlkern_cuda.cuh keeps what cannot compile here behind two functions that
   this file defines instead (MLKERN_CUDA_SIMT): mlk_cuda__launch (the
   <<<>>> launch) and mlk_cuda__dynamic_smem (extern __shared__). The
   bf16/fp16 types and conversions are the CUDA toolkit's own host code, so
   rounding matches the device. Device math functions are the host's libm:
   results may differ from a GPU's in the last bits (tests use tolerances
   for floats, and bitwise checks only where integer arithmetic decides).

   x86-64 switches stacks with a few instructions of assembly; other
   machines use ucontext (slower, same semantics). */
#ifndef SIMT_H
#define SIMT_H

#define MLKERN_CUDA_SIMT 1

/* Storage classes first: CUDA's host_defines.h keeps definitions made
   before it. A static local is shared by every coroutine of a block. */
#define __shared__ static
#define __constant__ static const
#define __launch_bounds__(...)

#include <vector_types.h>
#include <driver_types.h>
#include <cuda_fp16.h> /* brings vector_functions.h and the runtime API declarations */
#include <cuda_bf16.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <functional>
#include <map>
#include <tuple>
#include <vector>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace simt {

enum order { FORWARD = 0, REVERSE = 1, SHUFFLE = 2 };
enum state { RUNNABLE, AT_BARRIER, AT_WARP, DONE };
enum warp_op { OP_SYNC, OP_SHFL, OP_SHFL_XOR, OP_SHFL_UP, OP_SHFL_DOWN, OP_BALLOT, OP_ANY, OP_ALL };

static const char *op_name(int op)
{
    static const char *names[] = {"__syncwarp", "__shfl_sync", "__shfl_xor_sync", "__shfl_up_sync",
                                  "__shfl_down_sync", "__ballot_sync", "__any_sync", "__all_sync"};
    return names[op];
}

struct thread {
    uint3 tid;
    int linear, lane, warp;
    state st;
    void *sp;                 /* saved stack pointer (x86-64) */
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    unsigned char *stack;
    /* the warp operation this thread waits at */
    int op, arg, width;
    unsigned mask;
    uint64_t value, result;
};

struct run_state {
    order ord = FORWARD;
    uint64_t seed = 1;
    size_t stack_bytes = (size_t)256 << 10;
    long launches = 0;        /* kernel launches so far (tests check "nothing launched") */
    cudaError_t sticky = cudaSuccess;
    dim3 grid, block;
    uint3 bid;
    std::vector<thread> threads;
    std::vector<unsigned char> dyn_smem;
    size_t dyn_bytes = 0;
    const std::function<void()> *body = nullptr;
    thread *cur = nullptr;
    void *sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_uc;
#endif
    uint64_t rng = 0;
    std::map<void *, size_t> allocations;
};

inline run_state &g()
{
    static run_state s;
    return s;
}

[[noreturn]] inline void fail(const char *what)
{
    run_state &s = g();
    fprintf(stderr, "simt: %s (block %u,%u,%u thread %d, order %d)\n", what, s.bid.x, s.bid.y, s.bid.z,
            s.cur ? s.cur->linear : -1, (int)s.ord);
    abort();
}

inline uint64_t next_rand()
{
    uint64_t z = (g().rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n indices in the current order (a fresh shuffle at every call) */
inline void make_order(std::vector<int> &idx, int n)
{
    idx.resize((size_t)n);
    for (int i = 0; i < n; i++) idx[(size_t)i] = g().ord == REVERSE ? n - 1 - i : i;
    if (g().ord == SHUFFLE)
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(next_rand() % (uint64_t)(i + 1));
            int t = idx[(size_t)i];
            idx[(size_t)i] = idx[(size_t)j];
            idx[(size_t)j] = t;
        }
}

/* ---- stack switching ---- */

#if defined(__x86_64__)
extern "C" void simt_swap_stack(void **save_sp, void *load_sp);
__asm__(".text\n"
        ".globl simt_swap_stack\n"
        ".type simt_swap_stack,@function\n"
        "simt_swap_stack:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size simt_swap_stack, .-simt_swap_stack\n");
#endif

inline void to_scheduler()
{
    run_state &s = g();
#if defined(__x86_64__)
    simt_swap_stack(&s.cur->sp, s.sched_sp);
#else
    swapcontext(&s.cur->uc, &s.sched_uc);
#endif
}

inline void to_thread(thread *t)
{
    run_state &s = g();
    s.cur = t;
#if defined(__x86_64__)
    simt_swap_stack(&s.sched_sp, t->sp);
#else
    swapcontext(&s.sched_uc, &t->uc);
#endif
    s.cur = nullptr;
}

[[noreturn]] inline void thread_main()
{
    (*g().body)();
    g().cur->st = DONE;
    to_scheduler();
    fail("a finished thread resumed");
}

#if defined(__x86_64__)
extern "C" inline void simt_thread_entry() { thread_main(); }
#else
inline void simt_thread_entry_uc() { thread_main(); }
#endif

inline void start_thread(thread *t)
{
    unsigned char *top = t->stack + g().stack_bytes;
#if defined(__x86_64__)
    /* what simt_swap_stack pops: six registers, then the entry as return
       address; above it a zero "return address" of the entry itself, so the
       entry starts with the stack aligned as after a call */
    uint64_t *sp = (uint64_t *)((uintptr_t)top & ~(uintptr_t)15);
    *--sp = 0;
    *--sp = (uint64_t)(uintptr_t)&simt_thread_entry;
    for (int i = 0; i < 6; i++) *--sp = 0;
    t->sp = sp;
#else
    getcontext(&t->uc);
    t->uc.uc_stack.ss_sp = t->stack;
    t->uc.uc_stack.ss_size = g().stack_bytes;
    t->uc.uc_link = nullptr;
    makecontext(&t->uc, (void (*)())simt_thread_entry_uc, 0);
#endif
}

/* ---- the warp operations, resolved when every lane of the mask waits ---- */

inline int lane_exists(int warp, int lane)
{
    return (size_t)(warp * 32 + lane) < g().threads.size();
}

/* Source lane of a shuffle for `lane`, or -1 when it keeps its own value. */
inline int shfl_source(const thread &t)
{
    int w = t.width, base = t.lane & ~(w - 1), src;
    switch (t.op) {
    case OP_SHFL: src = base + (t.arg & (w - 1)); break;
    case OP_SHFL_XOR: src = t.lane ^ t.arg; if (src < base || src >= base + w) src = -1; break;
    case OP_SHFL_UP: src = (t.lane - base) >= t.arg ? t.lane - t.arg : -1; break;
    default: src = (t.lane - base) + t.arg < w ? t.lane + t.arg : -1; break;
    }
    return src;
}

/* Resolves the warp operations that can complete; returns how many lanes
   were released. */
inline int resolve_warps()
{
    run_state &s = g();
    int released = 0, n_warps = (int)((s.threads.size() + 31) / 32);
    for (int w = 0; w < n_warps; w++) {
        thread *lanes = &s.threads[(size_t)w * 32];
        int first = -1;
        for (int l = 0; l < 32 && lane_exists(w, l); l++)
            if (lanes[l].st == AT_WARP) { first = l; break; }
        if (first < 0) continue;
        unsigned mask = lanes[first].mask;
        int op = lanes[first].op, ready = 1;
        if (!(mask >> first & 1)) fail("warp operation by a lane outside its own mask");
        for (int l = 0; l < 32; l++) {
            if (!(mask >> l & 1)) continue;
            if (!lane_exists(w, l)) fail("warp mask names a lane that does not exist");
            thread &t = lanes[l];
            if (t.st == DONE) fail("warp mask names a lane that has exited");
            if (t.st != AT_WARP) { ready = 0; continue; }
            if (t.op != op || t.mask != mask) {
                char msg[160];
                snprintf(msg, sizeof msg, "lanes of warp %d wait at different warp operations (%s mask %08x, %s mask %08x)",
                         w, op_name(op), mask, op_name(t.op), t.mask);
                fail(msg);
            }
        }
        if (!ready) continue;
        uint64_t votes = 0;
        int all = 1;
        for (int l = 0; l < 32; l++)
            if (mask >> l & 1) {
                votes |= (uint64_t)(lanes[l].value != 0) << l;
                all &= lanes[l].value != 0;
            }
        for (int l = 0; l < 32; l++) {
            if (!(mask >> l & 1)) continue;
            thread &t = lanes[l];
            switch (op) {
            case OP_SYNC: t.result = 0; break;
            case OP_BALLOT: t.result = votes; break;
            case OP_ANY: t.result = votes != 0; break;
            case OP_ALL: t.result = (uint64_t)all; break;
            default: {
                int src = shfl_source(t);
                if (src >= 0 && !(mask >> src & 1)) fail("shuffle reads a lane outside the mask");
                t.result = src < 0 ? t.value : lanes[src].value;
            }
            }
            t.st = RUNNABLE;
            released++;
        }
    }
    return released;
}

/* Runs one block to completion. */
inline void run_block()
{
    run_state &s = g();
    std::vector<int> idx;
    for (thread &t : s.threads) {
        t.st = RUNNABLE;
        start_thread(&t);
    }
    std::fill(s.dyn_smem.begin(), s.dyn_smem.end(), (unsigned char)0xFF);
    for (;;) {
        make_order(idx, (int)s.threads.size());
        for (int i : idx) {
            thread *t = &s.threads[(size_t)i];
            if (t->st == RUNNABLE) to_thread(t);
        }
        if (resolve_warps()) continue;
        size_t done = 0, warp = 0;
        for (const thread &t : s.threads) {
            done += t.st == DONE;
            warp += t.st == AT_WARP;
        }
        if (done == s.threads.size()) return;
        if (warp) fail("deadlock: a warp operation waits for lanes that wait at __syncthreads");
        if (done) fail("__syncthreads reached after some threads of the block returned");
        uint64_t count = 0; /* __syncthreads_or / _count: every thread's predicate */
        for (const thread &t : s.threads) count += t.value != 0;
        for (thread &t : s.threads) {
            t.result = count;
            t.st = RUNNABLE;
        }
    }
}

/* Runs a grid: blocks in the current order, each block's threads as coroutines. */
inline cudaError_t launch(dim3 grid, dim3 block, size_t smem, const std::function<void()> &body)
{
    run_state &s = g();
    size_t n_threads = (size_t)block.x * block.y * block.z;
    if (n_threads == 0 || n_threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 0x7FFFFFFFu)
        return cudaErrorInvalidConfiguration; /* consumed, as cudaGetLastError after <<<>>> does */
    if (smem > (size_t)48 << 10) return cudaErrorInvalidValue; /* no opt-in attribute here */
    s.launches++;
    s.grid = grid;
    s.block = block;
    s.body = &body;
    s.dyn_smem.assign(smem ? smem : 1, 0xFF);
    s.dyn_bytes = smem;
    if (s.threads.size() != n_threads) {
        for (thread &t : s.threads) munmap(t.stack, s.stack_bytes);
        s.threads.assign(n_threads, thread());
        for (thread &t : s.threads) {
            t.stack = (unsigned char *)mmap(nullptr, s.stack_bytes, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (t.stack == MAP_FAILED) fail("no memory for thread stacks");
        }
    }
    for (size_t i = 0; i < n_threads; i++) {
        thread &t = s.threads[i];
        t.linear = (int)i;
        t.tid.x = (unsigned)(i % block.x);
        t.tid.y = (unsigned)(i / block.x % block.y);
        t.tid.z = (unsigned)(i / ((size_t)block.x * block.y));
        t.lane = (int)(i % 32);
        t.warp = (int)(i / 32);
    }
    size_t n_blocks = (size_t)grid.x * grid.y * grid.z;
    std::vector<int> border;
    if (n_blocks <= 0x7FFFFFFF) make_order(border, (int)n_blocks);
    for (size_t b = 0; b < n_blocks; b++) {
        size_t lin = border.empty() ? b : (size_t)border[b];
        s.bid.x = (unsigned)(lin % grid.x);
        s.bid.y = (unsigned)(lin / grid.x % grid.y);
        s.bid.z = (unsigned)(lin / ((size_t)grid.x * grid.y));
        run_block();
    }
    return cudaSuccess;
}

/* A coroutine waits at a barrier (with its predicate; returns how many
   threads of the block had theirs non-zero) or at a warp operation. */
inline uint64_t wait_block(int pred)
{
    if (!g().cur) fail("__syncthreads outside a kernel");
    g().cur->value = pred != 0;
    g().cur->st = AT_BARRIER;
    to_scheduler();
    return g().cur->result;
}

inline uint64_t wait_warp(int op, unsigned mask, uint64_t value, int arg, int width)
{
    thread *t = g().cur;
    if (!t) fail("warp operation outside a kernel");
    if (width < 1 || width > 32 || (width & (width - 1))) fail("shuffle width not a power of two <= 32");
    t->op = op;
    t->mask = mask;
    t->value = value;
    t->arg = arg;
    t->width = width;
    t->st = AT_WARP;
    to_scheduler();
    return g().cur->result;
}

template <typename T> uint64_t bits_of(T v)
{
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}

template <typename T> T from_bits(uint64_t u)
{
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}

} /* namespace simt */

/* ---- what a kernel sees ---- */

#define threadIdx (simt::g().cur->tid)
#define blockIdx (simt::g().bid)
#define blockDim (simt::g().block)
#define gridDim (simt::g().grid)
#define warpSize 32

inline void simt_set_order(int ord, uint64_t seed)
{
    simt::g().ord = (simt::order)ord;
    simt::g().seed = seed;
    simt::g().rng = seed * 0x9E3779B97F4A7C15ull;
}
inline long simt_launches() { return simt::g().launches; }

inline void __syncthreads() { simt::wait_block(0); }
inline int __syncthreads_or(int pred) { return simt::wait_block(pred) != 0; }
inline int __syncthreads_count(int pred) { return (int)simt::wait_block(pred); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { simt::wait_warp(simt::OP_SYNC, mask, 0, 0, 32); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T> T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    return simt::from_bits<T>(simt::wait_warp(simt::OP_SHFL, mask, simt::bits_of(v), src, width));
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    return simt::from_bits<T>(simt::wait_warp(simt::OP_SHFL_XOR, mask, simt::bits_of(v), lane_mask, width));
}
template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return simt::from_bits<T>(simt::wait_warp(simt::OP_SHFL_UP, mask, simt::bits_of(v), (int)delta, width));
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return simt::from_bits<T>(simt::wait_warp(simt::OP_SHFL_DOWN, mask, simt::bits_of(v), (int)delta, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred)
{
    return (unsigned)simt::wait_warp(simt::OP_BALLOT, mask, pred != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int pred) { return (int)simt::wait_warp(simt::OP_ANY, mask, pred != 0, 0, 32); }
inline int __all_sync(unsigned mask, int pred) { return (int)simt::wait_warp(simt::OP_ALL, mask, pred != 0, 0, 32); }

/* Atomics: a block's threads never run at the same time, so plain code is atomic. */
template <typename T> T atomicAdd(T *p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> T atomicOr(T *p, T v) { T old = *p; *p = old | v; return old; }
template <typename T> T atomicMax(T *p, T v) { T old = *p; *p = old > v ? old : v; return old; }
template <typename T> T atomicMin(T *p, T v) { T old = *p; *p = old < v ? old : v; return old; }
template <typename T> T atomicExch(T *p, T v) { T old = *p; *p = v; return old; }
template <typename T> T atomicCAS(T *p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

/* Intrinsics the header uses. */
template <typename T> T __ldg(const T *p) { return *p; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
inline int __float_as_int(float x) { int u; memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int u) { float x; memcpy(&x, &u, 4); return x; }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __dp4a(int a, int b, int c)
{
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> 8 * i) * (int)(int8_t)(b >> 8 * i);
    return c;
}

/* ---- the host side of the runtime ----
   cuda_fp16.h declares the runtime API (with C linkage); these are the
   definitions, for the one translation unit of a test program. */

extern "C" {
const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    default: return "unknown error";
    }
}
const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    default: return "cudaErrorUnknown";
    }
}
cudaError_t cudaGetLastError(void)
{
    cudaError_t e = simt::g().sticky;
    simt::g().sticky = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return simt::g().sticky; }
cudaError_t cudaMalloc(void **p, size_t bytes)
{
    void *q = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    if (!q) return cudaErrorMemoryAllocation;
    simt::g().allocations[q] = bytes;
    *p = q;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    if (!simt::g().allocations.erase(p)) return cudaErrorInvalidDevicePointer;
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeAsync(void *p, cudaStream_t) { return cudaFree(p); }
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind)
{
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind k, cudaStream_t)
{
    return cudaMemcpy(dst, src, n, k);
}
cudaError_t cudaMemset(void *p, int v, size_t n)
{
    if (n) memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamCreate(cudaStream_t *s) { *s = nullptr; return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = nullptr; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t) { *ms = 0; return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr attr, int)
{
    /* an H100's figures, so launch geometry matches a real device */
    *v = attr == cudaDevAttrMultiProcessorCount ? 132 : attr == cudaDevAttrMaxSharedMemoryPerBlock ? 49152 : 0;
    return cudaSuccess;
}
} /* extern "C" */

/* The two functions mlkern_cuda.cuh leaves to the emulator. */
template <typename... P, typename... A>
cudaError_t mlk_cuda__launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t, A... args)
{
    std::tuple<P...> params(args...);
    std::function<void()> body = [&]() { std::apply(kernel, params); };
    return simt::launch(grid, block, smem, body);
}
inline unsigned char *mlk_cuda__dynamic_smem() { return simt::g().dyn_smem.data(); }

#endif /* SIMT_H */

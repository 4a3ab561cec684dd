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
   order, and shows up as a difference. Reverse and shuffle also let a
   warp whose warp operation completes run on at once, as far as it can
   alone, so warps drift apart as far as their barriers allow (forward
   keeps them in step): a warp that reads what another has not written
   yet, or overwrites what another still reads, differs between the
   orders. The emulator is strict where a GPU
   is undefined: __syncthreads after some threads of the block returned, a
   warp operation whose mask names an exited lane or lanes waiting at
   different operations, and a shuffle reading a lane outside the mask all
   abort with a message.

   mlkern_cuda.cuh keeps what cannot compile here behind functions that
   this file defines instead (MLKERN_CUDA_SIMT): mlk_cuda__launch (the
   <<<>>> launch), mlk_cuda__dynamic_smem (extern __shared__) and the
   tensor-core primitives, one PTX instruction each. mma and ldmatrix are
   warp-collective, as on the GPU: each lane parks pointers to its
   registers and, once all 32 wait, the warp's matrices are gathered from
   every lane's fragments in the PTX ISA's layouts and the results
   scattered back (the mma sums in double and rounds once to float; a
   tensor core may differ in the last bits). cp.async is stricter than
   the GPU: the source is read at issue, the destination turns to 0xFF
   bytes at issue and receives the data only at the cp.async wait_group
   that covers it (copies still pending when the thread exits are
   dropped), so a kernel that reads before waiting, or lets another
   thread read before a barrier that follows the wait, reads garbage. The
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
#include <deque>
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
/* OP_MMA_BF16 and later: warp-collective instructions (every lane's
   operands at once; `arg` names the variant and must agree) */
enum warp_op { OP_SYNC, OP_SHFL, OP_SHFL_XOR, OP_SHFL_UP, OP_SHFL_DOWN, OP_BALLOT, OP_ANY, OP_ALL,
               OP_MMA_BF16, OP_MMA_F16, OP_LDMATRIX };

static const char *op_name(int op)
{
    static const char *names[] = {"__syncwarp", "__shfl_sync", "__shfl_xor_sync", "__shfl_up_sync",
                                  "__shfl_down_sync", "__ballot_sync", "__any_sync", "__all_sync",
                                  "mma.m16n8k16.bf16", "mma.m16n8k16.f16", "ldmatrix"};
    return names[op];
}

/* A cp.async in flight: the source's bytes, read at issue. */
struct async_copy {
    unsigned char *dst;
    unsigned char bytes[16];
};

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
    void *operands; /* a collective's: mma_operands or ldmatrix_operands */
    std::vector<async_copy> uncommitted;
    std::deque<std::vector<async_copy>> committed; /* oldest group first */
};

struct run_state {
    order ord = FORWARD;
    uint64_t seed = 1;
    size_t stack_bytes = (size_t)256 << 10;
    long launches = 0;        /* kernel launches so far (tests check "nothing launched") */
    std::map<void (*)(), long> launches_of; /* the same per kernel (tests check which path ran) */
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

/* ---- the warp-collective instructions ---- */

struct mma_operands {
    float *c;
    const uint32_t *a, *b;
};

struct ldmatrix_operands {
    uint32_t *r;
    const void *row;
};

inline double half_bits(uint32_t h, bool bf16)
{
    if (bf16) {
        uint32_t u = h << 16;
        float f;
        memcpy(&f, &u, 4);
        return (double)f;
    }
    __half_raw r;
    r.x = (unsigned short)h;
    return (double)__half2float(__half(r));
}

/* D = A B + C for one warp's m16n8k16 fragments (lane l: g = l / 4, t = l % 4). */
inline void collective_mma(thread *lanes, bool bf16)
{
    double a[16][16], b[16][8], c[16][8];
    for (int l = 0; l < 32; l++) {
        const mma_operands *o = (const mma_operands *)lanes[l].operands;
        int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++) /* a[i]: rows g, g+8, g, g+8; columns 2t, 2t, 2t+8, 2t+8 */
            for (int h = 0; h < 2; h++)
                a[g + 8 * (i & 1)][2 * t + 8 * (i >> 1) + h] = half_bits(o->a[i] >> 16 * h & 0xFFFF, bf16);
        for (int i = 0; i < 2; i++) /* b[i]: k rows 2t + 8i and the next, column g */
            for (int h = 0; h < 2; h++) b[2 * t + 8 * i + h][g] = half_bits(o->b[i] >> 16 * h & 0xFFFF, bf16);
        for (int i = 0; i < 4; i++) c[g + 8 * (i >> 1)][2 * t + (i & 1)] = (double)o->c[i];
    }
    for (int l = 0; l < 32; l++) {
        const mma_operands *o = (const mma_operands *)lanes[l].operands;
        int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++) {
            int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            double d = c[row][col];
            for (int k = 0; k < 16; k++) d += a[row][k] * b[k][col];
            o->c[i] = (float)d;
        }
    }
}

/* ldmatrix .x1/.x2/.x4 (count), .trans: lanes 8i..8i+7 address matrix i's rows. */
inline void collective_ldmatrix(thread *lanes, int count, bool trans)
{
    uint16_t m[4][8][8];
    for (int i = 0; i < count; i++)
        for (int j = 0; j < 8; j++) {
            const void *row = ((const ldmatrix_operands *)lanes[8 * i + j].operands)->row;
            if ((uintptr_t)row % 16) fail("ldmatrix row address not 16-byte aligned");
            memcpy(m[i][j], row, 16);
        }
    for (int l = 0; l < 32; l++) {
        const ldmatrix_operands *o = (const ldmatrix_operands *)lanes[l].operands;
        int r = l / 4, c = 2 * (l % 4);
        for (int i = 0; i < count; i++) {
            uint32_t lo = trans ? m[i][c][r] : m[i][r][c], hi = trans ? m[i][c + 1][r] : m[i][r][c + 1];
            o->r[i] = lo | hi << 16;
        }
    }
}

inline void run_collective(int op, int arg, thread *lanes, unsigned mask)
{
    if (mask != 0xFFFFFFFFu) fail("a warp-collective instruction (mma, ldmatrix) needs all 32 lanes");
    if (op == OP_LDMATRIX) collective_ldmatrix(lanes, arg & 7, arg >> 3 & 1);
    else collective_mma(lanes, op == OP_MMA_BF16);
}

/* Completes warp w's pending operation if every lane of its mask waits
   at it; returns how many lanes were released. */
inline int resolve_warp(int w)
{
    thread *lanes = &g().threads[(size_t)w * 32];
    int first = -1, released = 0;
    for (int l = 0; l < 32 && lane_exists(w, l); l++)
        if (lanes[l].st == AT_WARP) { first = l; break; }
    if (first < 0) return 0;
    unsigned mask = lanes[first].mask;
    int op = lanes[first].op, arg = lanes[first].arg, ready = 1;
    if (!(mask >> first & 1)) fail("warp operation by a lane outside its own mask");
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1)) continue;
        if (!lane_exists(w, l)) fail("warp mask names a lane that does not exist");
        thread &t = lanes[l];
        if (t.st == DONE) fail("warp mask names a lane that has exited");
        if (t.st != AT_WARP) { ready = 0; continue; }
        if (t.op != op || t.mask != mask || (op >= OP_MMA_BF16 && t.arg != arg)) {
            char msg[160];
            snprintf(msg, sizeof msg, "lanes of warp %d wait at different warp operations (%s mask %08x, %s mask %08x)",
                     w, op_name(op), mask, op_name(t.op), t.mask);
            fail(msg);
        }
    }
    if (!ready) return 0;
    if (op >= OP_MMA_BF16) run_collective(op, arg, lanes, mask);
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
        case OP_SYNC: case OP_MMA_BF16: case OP_MMA_F16: case OP_LDMATRIX: t.result = 0; break;
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
    return released;
}

inline int resolve_warps()
{
    int released = 0, n_warps = (int)((g().threads.size() + 31) / 32);
    for (int w = 0; w < n_warps; w++) released += resolve_warp(w);
    return released;
}

/* Away from FORWARD, a warp whose operation completes runs on at once,
   until it waits for lanes or threads that have not arrived: warps drift
   apart as far as their barriers allow (FORWARD keeps them in step), so a
   warp that reads shared memory another warp fills, or overwrites what
   another still reads, without a __syncthreads between the two gives
   other bits in another order. */
inline void run_ahead(thread *t)
{
    run_state &s = g();
    if (s.ord == FORWARD || t->st != AT_WARP) return;
    thread *lanes = &s.threads[(size_t)t->warp * 32];
    int n = (int)std::min<size_t>(32, s.threads.size() - (size_t)t->warp * 32);
    std::vector<int> idx;
    while (resolve_warp(t->warp)) {
        make_order(idx, n);
        for (int l : idx)
            if (lanes[l].st == RUNNABLE) to_thread(&lanes[l]);
    }
}

/* Runs one block to completion. */
inline void run_block()
{
    run_state &s = g();
    std::vector<int> idx;
    for (thread &t : s.threads) {
        t.st = RUNNABLE;
        t.uncommitted.clear();
        t.committed.clear();
        start_thread(&t);
    }
    std::fill(s.dyn_smem.begin(), s.dyn_smem.end(), (unsigned char)0xFF);
    for (;;) {
        make_order(idx, (int)s.threads.size());
        for (int i : idx) {
            thread *t = &s.threads[(size_t)i];
            if (t->st == RUNNABLE) {
                to_thread(t);
                run_ahead(t);
            }
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

inline void wait_collective(int op, int arg, void *operands)
{
    if (!g().cur) fail("warp-collective instruction outside a kernel");
    g().cur->operands = operands;
    wait_warp(op, 0xFFFFFFFFu, 0, arg, 32);
}

inline void cp_async(void *smem, const void *gmem, int src_bytes)
{
    thread *t = g().cur;
    if (!t) fail("cp.async outside a kernel");
    if (src_bytes < 0 || src_bytes > 16) fail("cp.async src-size outside 0..16");
    if ((uintptr_t)smem % 16 || (uintptr_t)gmem % 16) fail("cp.async address not 16-byte aligned");
    async_copy c;
    c.dst = (unsigned char *)smem;
    memset(c.bytes, 0, sizeof c.bytes);
    if (src_bytes) memcpy(c.bytes, gmem, (size_t)src_bytes);
    memset(c.dst, 0xFF, sizeof c.bytes);
    t->uncommitted.push_back(c);
}

inline void cp_async_commit()
{
    thread *t = g().cur;
    if (!t) fail("cp.async.commit_group outside a kernel");
    t->committed.push_back(std::move(t->uncommitted));
    t->uncommitted.clear();
}

inline void cp_async_wait(int pending)
{
    thread *t = g().cur;
    if (!t) fail("cp.async.wait_group outside a kernel");
    while (t->committed.size() > (size_t)pending) {
        for (const async_copy &c : t->committed.front()) memcpy(c.dst, c.bytes, sizeof c.bytes);
        t->committed.pop_front();
    }
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
template <typename... P> inline long simt_launches_of(void (*kernel)(P...))
{
    auto it = simt::g().launches_of.find(reinterpret_cast<void (*)()>(kernel));
    return it == simt::g().launches_of.end() ? 0 : it->second;
}

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

/* The tensor-core primitives of mlkern_cuda.cuh (its section gives the layouts). */
inline void mlk_cuda__mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    simt::mma_operands o = {c, a, b};
    simt::wait_collective(simt::OP_MMA_BF16, 0, &o);
}
inline void mlk_cuda__mma_m16n8k16_f16(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    simt::mma_operands o = {c, a, b};
    simt::wait_collective(simt::OP_MMA_F16, 0, &o);
}
inline void mlk_cuda__ldmatrix_x2(uint32_t r[2], const void *smem_row_ptr)
{
    simt::ldmatrix_operands o = {r, smem_row_ptr};
    simt::wait_collective(simt::OP_LDMATRIX, 2, &o);
}
inline void mlk_cuda__ldmatrix_x2_trans(uint32_t r[2], const void *smem_row_ptr)
{
    simt::ldmatrix_operands o = {r, smem_row_ptr};
    simt::wait_collective(simt::OP_LDMATRIX, 2 | 8, &o);
}
inline void mlk_cuda__ldmatrix_x4(uint32_t r[4], const void *smem_row_ptr)
{
    simt::ldmatrix_operands o = {r, smem_row_ptr};
    simt::wait_collective(simt::OP_LDMATRIX, 4, &o);
}
inline void mlk_cuda__ldmatrix_x4_trans(uint32_t r[4], const void *smem_row_ptr)
{
    simt::ldmatrix_operands o = {r, smem_row_ptr};
    simt::wait_collective(simt::OP_LDMATRIX, 4 | 8, &o);
}
inline void mlk_cuda__cp_async16(void *smem, const void *gmem) { simt::cp_async(smem, gmem, 16); }
inline void mlk_cuda__cp_async16_zfill(void *smem, const void *gmem, int src_bytes)
{
    simt::cp_async(smem, gmem, src_bytes);
}
inline void mlk_cuda__cp_async_commit() { simt::cp_async_commit(); }
template <int N> inline void mlk_cuda__cp_async_wait() { simt::cp_async_wait(N); }

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
    cudaError_t e = simt::launch(grid, block, smem, body);
    if (e == cudaSuccess) simt::g().launches_of[reinterpret_cast<void (*)()>(kernel)]++;
    return e;
}
inline unsigned char *mlk_cuda__dynamic_smem() { return simt::g().dyn_smem.data(); }

#endif /* SIMT_H */

/* The emulator itself: warp shuffles and votes against their definitions
   (on a GPU this checks the emulator's semantics against the hardware),
   barriers, dynamic shared memory, and the proof that running a block's
   threads in several orders catches a missing __syncthreads or __syncwarp. */
#define MLKCT_HEADER_IMPL /* mlk_cuda__launch, mlk_cuda__block_sum, mlk_cuda__dynamic_smem */
#include "mlkct.h"

/* ---- shuffles and votes: each lane writes what it received ---- */

__global__ void shuffle_kernel(int *out)
{
    int lane = threadIdx.x % 32, base = (int)threadIdx.x * 8;
    int v = 100 * (int)threadIdx.x + 7;
    out[base + 0] = __shfl_xor_sync(0xFFFFFFFFu, v, 5);
    out[base + 1] = __shfl_down_sync(0xFFFFFFFFu, v, 3);
    out[base + 2] = __shfl_up_sync(0xFFFFFFFFu, v, 2);
    out[base + 3] = __shfl_sync(0xFFFFFFFFu, v, 31 - lane);
    out[base + 4] = __shfl_xor_sync(0xFFFFFFFFu, v, 4, 8);  /* width 8: stays in its group of 8 */
    out[base + 5] = (int)__ballot_sync(0xFFFFFFFFu, lane % 3 == 0);
    out[base + 6] = __any_sync(0xFFFFFFFFu, lane == 17) + 2 * __all_sync(0xFFFFFFFFu, lane < 31);
    out[base + 7] = __shfl_down_sync(0xFFFFFFFFu, (long long)v << 33, 1) >> 33 == v + 100 ? 1 : 0;
}

static void test_shuffles(void)
{
    const int n = 64;
    dbuf<int> out = dbuf_new<int>(n * 8);
    std::vector<unsigned char> bytes = mlkct_orders("shuffles", [&]() {
        dbuf_poison(out);
        CHECK(mlk_cuda__launch(shuffle_kernel, dim3(1), dim3(n), 0, (cudaStream_t)0, out.p) == cudaSuccess);
        std::vector<unsigned char> b;
        mlkct_append(b, out);
        return b;
    });
    const int *got = (const int *)bytes.data();
    int bad = 0;
    for (int t = 0; t < n; t++) {
        int lane = t % 32, w0 = t - lane;
        int val = 100 * t + 7, want[8];
        want[0] = 100 * (w0 + (lane ^ 5)) + 7;
        want[1] = lane + 3 < 32 ? val + 300 : val;
        want[2] = lane >= 2 ? val - 200 : val;
        want[3] = 100 * (w0 + 31 - lane) + 7;
        want[4] = 100 * (w0 + (lane ^ 4)) + 7;
        want[5] = 0;
        for (int l = 0; l < 32; l += 3) want[5] |= 1 << l;
        want[6] = 1;
        want[7] = lane < 31 ? 1 : 0;
        for (int i = 0; i < 8; i++) bad += got[t * 8 + i] != want[i];
    }
    CHECKF(bad == 0, "%d shuffle/vote results differ from their definition", bad);
    dbuf_free(out);
}

/* ---- barriers: a block sum through shared memory, with and without them ---- */

/* Each thread stores its value, then reads its neighbour's. With the
   barrier that is the neighbour's new value in every order; without it,
   whether the neighbour has stored yet depends on who ran first. */
template <bool BARRIER> __global__ void neighbour_kernel(const int *in, int *out)
{
    __shared__ int buf[256];
    int t = threadIdx.x;
    buf[t] = in[blockIdx.x * blockDim.x + t];
    if (BARRIER) __syncthreads();
    out[blockIdx.x * blockDim.x + t] = buf[(t + 1) % blockDim.x];
    if (BARRIER) __syncthreads(); /* the next block's stores must wait for this block's reads */
}

/* The same inside one warp: a store, then a read of the next lane, with
   or without __syncwarp (lanes of a warp are not in lockstep since Volta). */
template <bool SYNC> __global__ void warp_neighbour_kernel(const int *in, int *out)
{
    __shared__ int buf[64];
    int t = threadIdx.x, lane = t % 32;
    buf[t] = in[t];
    if (SYNC) __syncwarp();
    out[t] = buf[t - lane + (lane + 1) % 32];
}

template <typename K> static std::vector<std::vector<int>> run_each_order(K kernel, int blocks, int threads)
{
    std::vector<int> in((size_t)blocks * threads);
    for (size_t i = 0; i < in.size(); i++) in[i] = (int)(i * 7 + 3);
    dbuf<int> din = dbuf_from(in.data(), in.size()), dout = dbuf_new<int>(in.size());
    std::vector<std::vector<int>> outs;
    for (int o = 0; o < mlkct_n_orders; o++) {
        mlkct_set_order(o);
        dbuf_poison(dout);
        CHECK(mlk_cuda__launch(kernel, dim3(blocks), dim3(threads), 0, (cudaStream_t)0, (const int *)din.p, dout.p) ==
              cudaSuccess);
        outs.push_back(dbuf_get(dout));
    }
    mlkct_set_order(0);
    dbuf_free(din);
    dbuf_free(dout);
    return outs;
}

static void test_missing_barrier_is_caught(void)
{
#ifdef MLKCT_EMULATE
    std::vector<std::vector<int>> good = run_each_order(neighbour_kernel<true>, 3, 256);
    std::vector<std::vector<int>> bad = run_each_order(neighbour_kernel<false>, 3, 256);
    int correct = 1;
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < 256; t++) correct &= good[0][(size_t)(b * 256 + t)] == (b * 256 + (t + 1) % 256) * 7 + 3;
    CHECKF(correct, "the barrier kernel computes the neighbour's value");
    for (int o = 1; o < mlkct_n_orders; o++) {
        CHECKF(good[(size_t)o] == good[0], "with __syncthreads, order %d agrees with order 0", o);
        CHECKF(bad[(size_t)o] != bad[0], "without __syncthreads, order %d differs from order 0 (race caught)", o);
    }
    std::vector<std::vector<int>> wgood = run_each_order(warp_neighbour_kernel<true>, 1, 64);
    std::vector<std::vector<int>> wbad = run_each_order(warp_neighbour_kernel<false>, 1, 64);
    for (int o = 1; o < mlkct_n_orders; o++) {
        CHECKF(wgood[(size_t)o] == wgood[0], "with __syncwarp, order %d agrees", o);
        CHECKF(wbad[(size_t)o] != wbad[0], "without __syncwarp, order %d differs (race caught)", o);
    }
#else
    printf("test_simt: the missing-barrier proof needs the emulator's thread orders; not run on a GPU\n");
#endif
}

/* ---- dynamic shared memory and a block reduction through the header's helper ---- */

__global__ void block_sum_kernel(const float *in, float *out)
{
    float *stage = (float *)mlk_cuda__dynamic_smem();
    float v[1] = {in[blockIdx.x * blockDim.x + threadIdx.x]};
    stage[threadIdx.x] = v[0] * 2.0f;
    __syncthreads();
    float w[1] = {stage[blockDim.x - 1 - threadIdx.x]};
    mlk_cuda__block_sum<1>(w, stage + blockDim.x);
    if (threadIdx.x == 0) out[blockIdx.x] = w[0];
}

static void test_block_sum(void)
{
    const int blocks = 5, threads = 384;
    std::vector<float> in((size_t)blocks * threads);
    for (size_t i = 0; i < in.size(); i++) in[i] = (float)(i % 97) * 0.25f;
    dbuf<float> din = dbuf_from(in.data(), in.size()), dout = dbuf_new<float>(blocks);
    std::vector<unsigned char> bytes = mlkct_orders("block sum", [&]() {
        dbuf_poison(dout);
        CHECK(mlk_cuda__launch(block_sum_kernel, dim3(blocks), dim3(threads), (threads + 32) * sizeof(float),
                               (cudaStream_t)0, (const float *)din.p, dout.p) == cudaSuccess);
        std::vector<unsigned char> b;
        mlkct_append(b, dout);
        return b;
    });
    const float *got = (const float *)bytes.data();
    for (int b = 0; b < blocks; b++) {
        double want = 0;
        for (int t = 0; t < threads; t++) want += 2.0 * in[(size_t)(b * threads + t)];
        CHECK_CLOSE(got[b], want, 1e-6, 0);
    }
    dbuf_free(din);
    dbuf_free(dout);
}

/* ---- barriers with a predicate ---- */

__global__ void barrier_vote_kernel(int *out)
{
    int t = threadIdx.x;
    int any = __syncthreads_or(t == 77);
    int none = __syncthreads_or(0);
    int count = __syncthreads_count(t % 5 == 0);
    if (t == 0) {
        out[0] = any;
        out[1] = none;
        out[2] = count;
    }
}

static void test_barrier_votes(void)
{
    dbuf<int> out = dbuf_new<int>(3);
    std::vector<unsigned char> bytes = mlkct_orders("barrier votes", [&]() {
        dbuf_poison(out);
        CHECK(mlk_cuda__launch(barrier_vote_kernel, dim3(2), dim3(160), 0, (cudaStream_t)0, out.p) == cudaSuccess);
        std::vector<unsigned char> b;
        mlkct_append(b, out);
        return b;
    });
    const int *got = (const int *)bytes.data();
    CHECKF(got[0] != 0 && got[1] == 0 && got[2] == 32, "__syncthreads_or / _count: %d %d %d", got[0], got[1], got[2]);
    dbuf_free(out);
}

/* ---- launch errors are returned, not ignored ---- */

static void test_bad_launch(void)
{
    dbuf<float> d = dbuf_new<float>(4);
    CHECK(mlk_cuda__launch(block_sum_kernel, dim3(1), dim3(2048), 0, (cudaStream_t)0, (const float *)d.p, d.p) !=
          cudaSuccess);
    CHECK(cudaGetLastError() == cudaSuccess); /* the error was consumed by the launch */
    dbuf_free(d);
}

int main(void)
{
    MLKT_RUN(test_shuffles, 1);
    MLKT_RUN(test_missing_barrier_is_caught, 2);
    MLKT_RUN(test_block_sum, 3);
    MLKT_RUN(test_barrier_votes, 5);
    MLKT_RUN(test_bad_launch, 4);
    return mlkct_finish("test_simt");
}

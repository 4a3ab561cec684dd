/* The tensor-core primitives of mlkern_cuda.cuh (mma.m16n8k16 bf16 / f16,
   ldmatrix x2 / x4 with and without .trans, cp.async with commit / wait
   and zero-filled tails) against host references written from the PTX ISA
   manual's fragment descriptions, never from the emulator's code. Under
   the emulator this checks simt.h's twins; on a GPU the same test checks
   the real instructions, which is what validates the twins. Patterns:
   identities that reveal a permuted or transposed fragment, elements that
   encode their (row, column), small integers (exact in bf16 / f16 and in
   float sums, so bitwise checks), random values (a rounding tolerance).
   Last, a tensor-core GEMM (cp.async -> shared -> ldmatrix -> mma, four
   warps, double-buffered K tiles, ragged M, N and K) against mlk_sgemm on
   the same rounded inputs: the primitives compose. */
#define MLKCT_HEADER_IMPL /* the primitives are the header's internals */
#include "mlkct.h"

template <typename T> static uint16_t bits_of(float v)
{
    T h = mlkct_from_float<T>(v);
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

template <typename T> static float value_of(uint16_t u)
{
    T h;
    memcpy((void *)&h, &u, 2);
    return mlkct_to_float(h);
}

/* ---- mma: one warp, fragments gathered from global memory by the PTX
   ISA's element formulas (a_i, b_i, c_i of "Matrix Fragments for
   mma.m16n8k16 with floating point type") ---- */

static __device__ __forceinline__ void put_half(uint32_t *regs, int i, uint16_t v)
{
    int shift = 16 * (i & 1);
    regs[i / 2] = (regs[i / 2] & ~(0xFFFFu << shift)) | (uint32_t)v << shift;
}

/* a: 16 x 16 row-major, b: 16 x 8 (k x n) row-major, c and d: 16 x 8 */
template <typename T>
__global__ void mma_kernel(const uint16_t *a, const uint16_t *b, const float *c, float *d)
{
    int lane = threadIdx.x, group = lane >> 2, tig = lane % 4;
    uint32_t fa[4] = {0, 0, 0, 0}, fb[2] = {0, 0};
    float acc[4];
    for (int i = 0; i < 8; i++) {
        int row = i < 2 || (i >= 4 && i < 6) ? group : group + 8;
        int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        put_half(fa, i, a[row * 16 + col]);
    }
    for (int i = 0; i < 4; i++) {
        int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
        put_half(fb, i, b[row * 8 + group]);
    }
    for (int i = 0; i < 4; i++) acc[i] = c[(i < 2 ? group : group + 8) * 8 + tig * 2 + (i & 1)];
    mlk_cuda__mma_m16n8k16<T>(acc, fa, fb);
    for (int i = 0; i < 4; i++) d[(i < 2 ? group : group + 8) * 8 + tig * 2 + (i & 1)] = acc[i];
}

/* A (16 x 16), B (16 x 8), C (16 x 8) of one case, as floats exactly representable in T */
struct mma_case {
    const char *name;
    float a[256], b[128], c[128];
    bool exact; /* integer sums: the result must be bitwise A B + C */
};

template <typename T> static void run_mma_case(const mma_case &mc)
{
    std::vector<uint16_t> ha(256), hb(128);
    for (int i = 0; i < 256; i++) ha[(size_t)i] = bits_of<T>(mc.a[i]);
    for (int i = 0; i < 128; i++) hb[(size_t)i] = bits_of<T>(mc.b[i]);
    dbuf<uint16_t> da = dbuf_from(ha.data(), 256), db = dbuf_from(hb.data(), 128);
    dbuf<float> dc = dbuf_from(mc.c, 128), dd = dbuf_new<float>(128);
    std::vector<unsigned char> bytes = mlkct_orders("mma", [&]() {
        dbuf_poison(dd);
        CHECK(mlk_cuda__launch(mma_kernel<T>, dim3(1), dim3(32), 0, (cudaStream_t)0, (const uint16_t *)da.p,
                               (const uint16_t *)db.p, (const float *)dc.p, dd.p) == cudaSuccess);
        std::vector<unsigned char> out;
        mlkct_append(out, dd);
        return out;
    });
    const float *got = (const float *)bytes.data();
    int bad = 0;
    double worst = 0;
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double want = mc.c[m * 8 + n], mag = fabs(want);
            for (int k = 0; k < 16; k++) {
                double p = (double)value_of<T>(ha[(size_t)(m * 16 + k)]) * value_of<T>(hb[(size_t)(k * 8 + n)]);
                want += p;
                mag += fabs(p);
            }
            double err = fabs(got[m * 8 + n] - want);
            if (mc.exact) bad += got[m * 8 + n] != (float)want;
            else bad += !(err <= 18 * 0x1p-24 * mag); /* a float32 rounding per product and sum */
            worst = err > worst ? err : worst;
        }
    CHECKF(bad == 0, "mma %s %s: %d of 128 outputs wrong (largest error %g)", mlkct_type_name<T>(), mc.name, bad,
           worst);
    dbuf_free(da);
    dbuf_free(db);
    dbuf_free(dc);
    dbuf_free(dd);
}

template <typename T> static void test_mma(void)
{
    static mma_case mc;
    /* A = I: D = B, every B element lands on its own output */
    mc.name = "A = I";
    mc.exact = true;
    for (int i = 0; i < 256; i++) mc.a[i] = i / 16 == i % 16 ? 1.0f : 0.0f;
    for (int i = 0; i < 128; i++) mc.b[i] = (float)(i - 64), mc.c[i] = 0.0f;
    run_mma_case<T>(mc);
    /* B picks column n (then n + 8) of A: D = the left (right) half of A */
    for (int half = 0; half < 2; half++) {
        mc.name = half ? "B picks A's columns 8..15" : "B picks A's columns 0..7";
        for (int i = 0; i < 256; i++) mc.a[i] = (float)(i % 251 - 125);
        for (int k = 0; k < 16; k++)
            for (int n = 0; n < 8; n++) mc.b[k * 8 + n] = k == n + 8 * half ? 1.0f : 0.0f;
        run_mma_case<T>(mc);
    }
    /* small distinct integers everywhere, C included: exact sums */
    mc.name = "integers";
    for (int i = 0; i < 256; i++) mc.a[i] = (float)((i / 16 * 7 + i % 16 * 3) % 17 - 8);
    for (int i = 0; i < 128; i++) {
        mc.b[i] = (float)((i / 8 * 5 + i % 8 * 11) % 13 - 6);
        mc.c[i] = (float)(i * 3 - 200);
    }
    run_mma_case<T>(mc);
    /* random values: rounding, not layout */
    mc.name = "random";
    mc.exact = false;
    for (int i = 0; i < 256; i++) mc.a[i] = mlkct_to_float(mlkct_from_float<T>((float)mlkt_normal()));
    for (int i = 0; i < 128; i++) {
        mc.b[i] = mlkct_to_float(mlkct_from_float<T>((float)mlkt_normal()));
        mc.c[i] = (float)mlkt_normal();
    }
    run_mma_case<T>(mc);
}

static void test_mma_bf16(void) { test_mma<__nv_bfloat16>(); }
static void test_mma_f16(void) { test_mma<__half>(); }

/* ---- ldmatrix: a 32 x 24 tile whose elements are 64 row + column; each
   lane names the row (and column offset) its address points at ---- */

#define LDM_ROWS 32
#define LDM_STRIDE 24 /* elements per row: 48 bytes, rows stay 16-byte aligned */

template <int N, bool TRANS>
__global__ void ldmatrix_kernel(const uint16_t *src, const int *lane_row, const int *lane_col, uint32_t *out)
{
    __shared__ __align__(16) uint16_t tile[LDM_ROWS * LDM_STRIDE];
    int lane = threadIdx.x;
    for (int i = lane; i < LDM_ROWS * LDM_STRIDE; i += 32) tile[i] = src[i];
    __syncwarp();
    uint32_t r[N];
    const uint16_t *row = &tile[lane_row[lane] * LDM_STRIDE + lane_col[lane]];
    if constexpr (N == 2 && TRANS) mlk_cuda__ldmatrix_x2_trans(r, row);
    if constexpr (N == 2 && !TRANS) mlk_cuda__ldmatrix_x2(r, row);
    if constexpr (N == 4 && TRANS) mlk_cuda__ldmatrix_x4_trans(r, row);
    if constexpr (N == 4 && !TRANS) mlk_cuda__ldmatrix_x4(r, row);
    for (int i = 0; i < N; i++) out[lane * N + i] = r[i];
}

/* Matrix i's row j starts at the address of lane 8i + j. A lane's register
   i holds row l / 4, columns 2 (l % 4) and the next, of matrix i (of its
   transpose with .trans), the lower column in the low half. */
template <int N, bool TRANS> static void check_ldmatrix(const char *pattern, const int *lane_row, const int *lane_col)
{
    std::vector<uint16_t> src(LDM_ROWS * LDM_STRIDE);
    for (int r = 0; r < LDM_ROWS; r++)
        for (int c = 0; c < LDM_STRIDE; c++) src[(size_t)(r * LDM_STRIDE + c)] = (uint16_t)(64 * r + c);
    dbuf<uint16_t> dsrc = dbuf_from(src.data(), src.size());
    dbuf<int> drow = dbuf_from(lane_row, 32), dcol = dbuf_from(lane_col, 32);
    dbuf<uint32_t> dout = dbuf_new<uint32_t>(32 * N);
    std::vector<unsigned char> bytes = mlkct_orders("ldmatrix", [&]() {
        dbuf_poison(dout);
        CHECK(mlk_cuda__launch(ldmatrix_kernel<N, TRANS>, dim3(1), dim3(32), 0, (cudaStream_t)0,
                               (const uint16_t *)dsrc.p, (const int *)drow.p, (const int *)dcol.p,
                               dout.p) == cudaSuccess);
        std::vector<unsigned char> out;
        mlkct_append(out, dout);
        return out;
    });
    const uint32_t *got = (const uint32_t *)bytes.data();
    auto element = [&](int matrix, int row, int col) {
        int lane = 8 * matrix + row;
        return (uint32_t)(64 * lane_row[lane] + lane_col[lane] + col);
    };
    int bad = 0;
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < N; i++) {
            int r = l / 4, c = 2 * (l % 4);
            uint32_t lo = TRANS ? element(i, c, r) : element(i, r, c);
            uint32_t hi = TRANS ? element(i, c + 1, r) : element(i, r, c + 1);
            bad += got[l * N + i] != (lo | hi << 16);
        }
    CHECKF(bad == 0, "ldmatrix x%d%s, %s rows: %d of %d registers wrong", N, TRANS ? ".trans" : "", pattern, bad,
           32 * N);
    dbuf_free(dsrc);
    dbuf_free(drow);
    dbuf_free(dcol);
    dbuf_free(dout);
}

template <int N, bool TRANS> static void ldmatrix_patterns(void)
{
    int row[32], col[32];
    for (int l = 0; l < 32; l++) { /* the quarters of a 16 x 16 tile, as for an A fragment */
        row[l] = l % 16;
        col[l] = 8 * (l / 16);
    }
    check_ldmatrix<N, TRANS>("tile quarters", row, col);
    for (int l = 0; l < 32; l++) { /* scattered rows and column offsets */
        row[l] = (l * 11 + 5) % LDM_ROWS;
        col[l] = 8 * ((l * 5 / 3) % 3);
    }
    check_ldmatrix<N, TRANS>("scattered", row, col);
}

static void test_ldmatrix(void)
{
    ldmatrix_patterns<2, false>();
    ldmatrix_patterns<2, true>();
    ldmatrix_patterns<4, false>();
    ldmatrix_patterns<4, true>();
}

/* ---- cp.async: two groups, a zero-filled tail in the first ----
   Each of 64 threads copies chunk t of the source into buffer 0 (the first
   src_bytes[t] bytes, the rest zero) and chunk 64 + t into buffer 1, each
   buffer its own group, then reads its neighbour's chunks: buffer 0 after
   wait_group 1 (its group complete, the other maybe not) and a barrier,
   buffer 1 after wait_group 0. MODE 1 leaves out both waits, MODE 2 the
   second: kernels the emulator must catch. */
#define CPA_THREADS 64

template <int MODE> __global__ void cp_async_kernel(const unsigned char *src, const int *src_bytes, unsigned char *out)
{
    __shared__ __align__(16) unsigned char buf[2][CPA_THREADS * 16];
    int t = threadIdx.x, next = (t + 1) % CPA_THREADS;
    mlk_cuda__cp_async16_zfill(&buf[0][t * 16], src + t * 16, src_bytes[t]);
    mlk_cuda__cp_async_commit();
    mlk_cuda__cp_async16(&buf[1][t * 16], src + (CPA_THREADS + t) * 16);
    mlk_cuda__cp_async_commit();
    if (MODE != 1) mlk_cuda__cp_async_wait<1>();
    __syncthreads();
    for (int i = 0; i < 16; i++) out[t * 16 + i] = buf[0][next * 16 + i];
    if (MODE == 0) mlk_cuda__cp_async_wait<0>();
    __syncthreads();
    for (int i = 0; i < 16; i++) out[(CPA_THREADS + t) * 16 + i] = buf[1][next * 16 + i];
}

template <int MODE>
static std::vector<unsigned char> run_cp_async(const dbuf<unsigned char> &dsrc, const dbuf<int> &dbytes,
                                               dbuf<unsigned char> &dout)
{
    return mlkct_orders("cp.async", [&]() {
        dbuf_poison(dout);
        CHECK(mlk_cuda__launch(cp_async_kernel<MODE>, dim3(3), dim3(CPA_THREADS), 0, (cudaStream_t)0,
                               (const unsigned char *)dsrc.p, (const int *)dbytes.p, dout.p) == cudaSuccess);
        std::vector<unsigned char> out;
        mlkct_append(out, dout);
        return out;
    });
}

static void test_cp_async(void)
{
    const size_t n = 2 * CPA_THREADS * 16;
    std::vector<unsigned char> src(n), want(n);
    std::vector<int> bytes(CPA_THREADS);
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 37 + 11);
    for (int t = 0; t < CPA_THREADS; t++) bytes[(size_t)t] = t % 17; /* 0 (nothing read) .. 16 */
    for (int t = 0; t < CPA_THREADS; t++) {
        int next = (t + 1) % CPA_THREADS;
        for (int i = 0; i < 16; i++) {
            want[(size_t)(t * 16 + i)] = i < bytes[(size_t)next] ? src[(size_t)(next * 16 + i)] : 0;
            want[(size_t)((CPA_THREADS + t) * 16 + i)] = src[(size_t)((CPA_THREADS + next) * 16 + i)];
        }
    }
    dbuf<unsigned char> dsrc = dbuf_from(src.data(), n), dout = dbuf_new<unsigned char>(n);
    dbuf<int> dbytes = dbuf_from(bytes.data(), bytes.size());
    std::vector<unsigned char> got = run_cp_async<0>(dsrc, dbytes, dout);
    CHECKF(got == want, "cp.async with commit / wait_group: the copies (and zero-filled tails) arrive");
#ifdef MLKCT_EMULATE
    std::vector<unsigned char> no_wait = run_cp_async<1>(dsrc, dbytes, dout);
    std::vector<unsigned char> half_wait = run_cp_async<2>(dsrc, dbytes, dout);
    CHECKF(memcmp(no_wait.data(), want.data(), n / 2) != 0, "reading before any wait is caught (stale bytes)");
    CHECKF(memcmp(half_wait.data(), want.data(), n / 2) == 0 &&
               memcmp(half_wait.data() + n / 2, want.data() + n / 2, n / 2) != 0,
           "wait_group 1 completes the older group only; the newer one is caught as stale");
#else
    printf("test_primitives: the missing-wait proof needs the emulator; not run on a GPU\n");
#endif
    dbuf_free(dsrc);
    dbuf_free(dout);
    dbuf_free(dbytes);
}

/* ---- a tensor-core GEMM: C = A B^T (B n x k) or A B (B k x n) ----
   64 x 64 tiles per block of four warps (each 32 x 32: two m16 by four n8
   mma tiles), K in tiles of 32, two shared buffers filled by cp.async
   while the other is multiplied; rows and columns past the matrix are
   zero-filled. k (B n x k) or n (B k x n) a multiple of 8, so each row is
   whole 16-byte chunks. RACE 1 leaves out the barrier between the copies'
   wait and the reads of other threads' chunks, RACE 2 the one before the
   copies that overwrite a buffer other warps still read: kernels the
   emulator must catch. */
#define GT_TILE 64
#define GT_K 32
#define GT_PITCH (GT_K + 8) /* padded rows: ldmatrix rows of a warp fall on different banks */
#define GT_KN_PITCH (GT_TILE + 8)

/* chunk `c` of 8 elements of a rows x 32 (or 32 x 64) tile: 16 bytes, or
   the valid part of them, zero-filled */
template <typename T>
static __device__ __forceinline__ void gemm_chunk(T *dst, const T *base, int row, int rows, int col, int cols,
                                                  int ld)
{
    int left = cols - col, valid = row >= rows || left <= 0 ? 0 : left < 8 ? left : 8;
    mlk_cuda__cp_async16_zfill(dst, valid ? base + (size_t)row * ld + col : base, valid * (int)sizeof(T));
}

template <typename T, bool B_KN> struct gemm_smem {
    T a[2][GT_TILE][GT_PITCH];
    T b[2][B_KN ? GT_K : GT_TILE][B_KN ? GT_KN_PITCH : GT_PITCH];
};

template <typename T, bool B_KN>
static __device__ __forceinline__ void gemm_load(gemm_smem<T, B_KN> &sm, int buf, int m, int n, int k, int m0, int n0,
                                                 int k0, const T *a, const T *b)
{
    for (int c = threadIdx.x; c < GT_TILE * GT_K / 8; c += blockDim.x) {
        int r = c / (GT_K / 8), kc = c % (GT_K / 8) * 8;
        gemm_chunk(&sm.a[buf][r][kc], a, m0 + r, m, k0 + kc, k, k);
        if (B_KN) {
            int kr = c / (GT_TILE / 8), nc = c % (GT_TILE / 8) * 8;
            gemm_chunk(&sm.b[buf][kr][nc], b, k0 + kr, k, n0 + nc, n, n);
        } else {
            gemm_chunk(&sm.b[buf][r][kc], b, n0 + r, n, k0 + kc, k, k);
        }
    }
}

template <typename T, bool B_KN, int RACE = 0>
__global__ void __launch_bounds__(128) gemm_kernel(int m, int n, int k, const T *a, const T *b, float *c)
{
    __shared__ __align__(16) gemm_smem<T, B_KN> sm;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int m0 = blockIdx.y * GT_TILE, n0 = blockIdx.x * GT_TILE;
    int wm = warp / 2 * 32, wn = warp % 2 * 32;
    float acc[2][4][4] = {};
    int k_tiles = (k + GT_K - 1) / GT_K;
    gemm_load(sm, 0, m, n, k, m0, n0, 0, a, b);
    mlk_cuda__cp_async_commit();
    for (int kt = 0; kt < k_tiles; kt++) {
        int buf = kt & 1;
        if (kt + 1 < k_tiles) gemm_load(sm, buf ^ 1, m, n, k, m0, n0, (kt + 1) * GT_K, a, b);
        mlk_cuda__cp_async_commit(); /* perhaps empty: then wait<1> always means "tile kt is here" */
        mlk_cuda__cp_async_wait<1>();
        if (RACE != 1) __syncthreads();
        for (int kk = 0; kk < GT_K; kk += 16) {
            uint32_t fa[2][4], fb[4][2];
            for (int mi = 0; mi < 2; mi++)
                mlk_cuda__ldmatrix_x4(fa[mi], &sm.a[buf][wm + mi * 16 + lane % 16][kk + 8 * (lane / 16)]);
            for (int nj = 0; nj < 2; nj++) { /* two n8 tiles per ldmatrix.x4 */
                uint32_t r[4];
                if (B_KN)
                    mlk_cuda__ldmatrix_x4_trans(r, &sm.b[buf][kk + lane % 16][wn + nj * 16 + 8 * (lane / 16)]);
                else
                    mlk_cuda__ldmatrix_x4(r, &sm.b[buf][wn + nj * 16 + lane % 8 + 8 * (lane / 16)]
                                                   [kk + 8 * (lane / 8 % 2)]);
                fb[2 * nj][0] = r[0];
                fb[2 * nj][1] = r[1];
                fb[2 * nj + 1][0] = r[2];
                fb[2 * nj + 1][1] = r[3];
            }
            for (int mi = 0; mi < 2; mi++)
                for (int ni = 0; ni < 4; ni++) mlk_cuda__mma_m16n8k16<T>(acc[mi][ni], fa[mi], fb[ni]);
        }
        if (RACE != 2) __syncthreads(); /* the next iteration's copies overwrite this buffer */
    }
    int group = lane / 4, tig = lane % 4;
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int i = 0; i < 4; i++) {
                int row = m0 + wm + mi * 16 + group + 8 * (i / 2), col = n0 + wn + ni * 8 + 2 * tig + i % 2;
                if (row < m && col < n) c[(size_t)row * n + col] = acc[mi][ni][i];
            }
}

template <typename T, bool B_KN> static void check_gemm(int m, int n, int k)
{
    std::vector<float> fa((size_t)m * k), fb((size_t)n * k), ra, rb, cpu((size_t)m * n);
    mlkt_fill_normal(fa.data(), fa.size(), 1.0);
    mlkt_fill_normal(fb.data(), fb.size(), 1.0);
    std::vector<T> ha = mlkct_round<T>(fa.data(), fa.size(), &ra), hb = mlkct_round<T>(fb.data(), fb.size(), &rb);
    /* B_KN: b is k x n (ldb n), else n x k (ldb k) */
    CHECK_INT(mlk_sgemm(0, B_KN ? 0 : 1, m, n, k, 1.0f, ra.data(), k, rb.data(), B_KN ? n : k, 0.0f, cpu.data(), n),
              MLK_OK);
    dbuf<T> da = dbuf_from(ha.data(), ha.size()), db = dbuf_from(hb.data(), hb.size());
    dbuf<float> dc = dbuf_new<float>((size_t)m * n);
    dim3 grid((unsigned)((n + GT_TILE - 1) / GT_TILE), (unsigned)((m + GT_TILE - 1) / GT_TILE));
    std::vector<unsigned char> bytes = mlkct_orders("gemm", [&]() {
        dbuf_poison(dc);
        CHECK(mlk_cuda__launch(gemm_kernel<T, B_KN>, grid, dim3(128), 0, (cudaStream_t)0, m, n, k,
                               (const T *)da.p, (const T *)db.p, dc.p) == cudaSuccess);
        std::vector<unsigned char> out;
        mlkct_append(out, dc);
        return out;
    });
    const float *got = (const float *)bytes.data();
    std::vector<double> ref((size_t)m * n);
    double scale = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0, mag = 0;
            for (int x = 0; x < k; x++) {
                double p = (double)ra[(size_t)i * k + x] * rb[B_KN ? (size_t)x * n + j : (size_t)j * k + x];
                s += p;
                mag += fabs(p);
            }
            ref[(size_t)i * n + j] = s;
            scale = mag > scale ? mag : scale;
        }
    double err = mlkt_max_abs_err(got, ref.data(), ref.size());
    double cpu_err = mlkt_max_abs_err(cpu.data(), ref.data(), ref.size());
    /* floor: a tensor core truncates its partial sums, a few ulps per k16 step */
    CHECK_NAIVE(err, cpu_err, mlkt_ulps(4 * (k / 16 + 2), scale), "gemm %s %s m %d n %d k %d", mlkct_type_name<T>(),
                B_KN ? "A B" : "A B^T", m, n, k);
    CHECK(dbuf_guard_ok(dc));
    mlkt_digest(bytes.data(), bytes.size());
    dbuf_free(da);
    dbuf_free(db);
    dbuf_free(dc);
}

/* Each race, in every order: some order must give other bits than the
   correct kernel (the emulator's cp.async lands late, its warps drift). */
template <int RACE> static void check_gemm_race(void)
{
#ifdef MLKCT_EMULATE
    const int m = 64, n = 64, k = 96;
    std::vector<float> fa((size_t)m * k), fb((size_t)n * k);
    mlkt_fill_normal(fa.data(), fa.size(), 1.0);
    mlkt_fill_normal(fb.data(), fb.size(), 1.0);
    std::vector<__nv_bfloat16> ha = mlkct_round<__nv_bfloat16>(fa.data(), fa.size(), NULL),
                               hb = mlkct_round<__nv_bfloat16>(fb.data(), fb.size(), NULL);
    dbuf<__nv_bfloat16> da = dbuf_from(ha.data(), ha.size()), db = dbuf_from(hb.data(), hb.size());
    dbuf<float> dc = dbuf_new<float>((size_t)m * n);
    std::vector<std::vector<float>> outs;
    for (int o = 0; o < 2 * mlkct_n_orders; o++) {
        mlkct_set_order(o % mlkct_n_orders);
        dbuf_poison(dc);
        if (o < mlkct_n_orders)
            mlk_cuda__launch(gemm_kernel<__nv_bfloat16, false>, dim3(1), dim3(128), 0, (cudaStream_t)0, m, n, k,
                             (const __nv_bfloat16 *)da.p, (const __nv_bfloat16 *)db.p, dc.p);
        else
            mlk_cuda__launch(gemm_kernel<__nv_bfloat16, false, RACE>, dim3(1), dim3(128), 0, (cudaStream_t)0, m, n, k,
                             (const __nv_bfloat16 *)da.p, (const __nv_bfloat16 *)db.p, dc.p);
        outs.push_back(dbuf_get(dc));
    }
    mlkct_set_order(0);
    int caught = 0;
    for (int o = 0; o < mlkct_n_orders; o++)
        caught |= outs[(size_t)(mlkct_n_orders + o)] != outs[0];
    CHECKF(caught, "gemm without the %s barrier: some thread order gives other bits (race caught)",
           RACE == 1 ? "after-the-wait" : "before-the-overwrite");
    dbuf_free(da);
    dbuf_free(db);
    dbuf_free(dc);
#endif
}

template <typename T> static void gemm_shapes(void)
{
    const int shapes[][3] = {{64, 64, 32}, {16, 8, 8}, {100, 72, 40}, {130, 136, 96}};
    for (const auto &s : shapes) {
        check_gemm<T, false>(s[0], s[1], s[2]);
        check_gemm<T, true>(s[0], s[1], s[2]);
    }
}

static void test_gemm(void)
{
    gemm_shapes<__nv_bfloat16>();
    gemm_shapes<__half>();
    check_gemm_race<1>();
    check_gemm_race<2>();
}

int main(void)
{
    MLKT_RUN(test_mma_bf16, 1);
    MLKT_RUN(test_mma_f16, 2);
    MLKT_RUN(test_ldmatrix, 3);
    MLKT_RUN(test_cp_async, 4);
    MLKT_RUN(test_gemm, 5);
    return mlkct_finish("test_primitives");
}

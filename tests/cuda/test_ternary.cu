/* CUDA ternary GEMV / GEMM: bitwise equal to mlk_ternary_gemm on the same
   packed weights and int8 activations (both are exact integer sums with the
   same float epilogue), and to an independent int64 reference; the -128
   code, k not a multiple of 4 or 16, unaligned rows, and bad arguments. */
#include "mlkct.h"

static void check_gemm(int m, int n, int k, bool offset_rows)
{
    std::vector<float> w((size_t)n * k), x((size_t)m * k), y_cpu((size_t)m * n), xscale(m);
    mlkt_fill_normal(w.data(), w.size(), 1.0);
    mlkt_fill_normal(x.data(), x.size(), 2.0);
    size_t row_bytes = mlk_ternary_row_bytes(k);
    std::vector<uint8_t> packed((size_t)n * row_bytes + 1);
    std::vector<int8_t> xq((size_t)m * k + 1);
    float wscale = 0;
    CHECK_INT(mlk_ternary_quant(n, k, w.data(), packed.data(), &wscale), MLK_OK);
    CHECK_INT(mlk_act_quant_i8(m, k, x.data(), xq.data(), xscale.data()), MLK_OK);
    for (int i = 0; i < m; i++) xq[(size_t)i * k + (size_t)(i * 7 % k)] = -128; /* the code the quantiser never makes */
    CHECK_INT(mlk_ternary_gemm(m, n, k, xq.data(), xscale.data(), packed.data(), wscale, y_cpu.data()), MLK_OK);
    /* offset_rows: the device copies start one byte in, so nothing is 4-byte aligned */
    size_t off = offset_rows ? 1 : 0;
    std::vector<uint8_t> pw(off + packed.size());
    std::vector<int8_t> px(off + xq.size());
    memcpy(pw.data() + off, packed.data(), packed.size());
    memcpy(px.data() + off, xq.data(), xq.size());
    dbuf<uint8_t> dw = dbuf_from(pw.data(), pw.size());
    dbuf<int8_t> dx = dbuf_from(px.data(), px.size());
    dbuf<float> ds = dbuf_from(xscale.data(), m), dy = dbuf_new<float>((size_t)m * n);
    std::vector<unsigned char> out = mlkct_orders("ternary", [&]() {
        dbuf_poison(dy);
        CHECK_INT(mlk_cuda_ternary_gemm(m, n, k, dx.p + off, ds.p, dw.p + off, wscale, dy.p, 0), MLK_OK);
        std::vector<unsigned char> b;
        mlkct_append(b, dy);
        return b;
    });
    const float *y = (const float *)out.data();
    CHECKF(memcmp(y, y_cpu.data(), y_cpu.size() * sizeof(float)) == 0, "m %d n %d k %d offset %d: not bitwise the CPU's",
           m, n, k, (int)off);
    int far = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            long long dot = 0;
            for (int c = 0; c < k; c++) {
                int code = packed[(size_t)j * row_bytes + c / 4] >> (2 * (c % 4)) & 3;
                dot += (long long)xq[(size_t)i * k + c] * (code - 1);
            }
            float want = (float)dot * (xscale[i] * wscale);
            far += y[(size_t)i * n + j] != want;
        }
    CHECKF(far == 0, "m %d n %d k %d: %d outputs differ from the int64 reference", m, n, k, far);
    mlkt_digest(out.data(), out.size());
    dbuf_free(dw);
    dbuf_free(dx);
    dbuf_free(ds);
    dbuf_free(dy);
}

static void test_shapes(void)
{
    const int ks[] = {1, 3, 4, 15, 16, 17, 64, 129, 1000, 4096};
    const int ms[] = {1, 3, 4, 5, 9};
    const int ns[] = {1, 7, 33};
    for (int k : ks)
        for (int m : ms)
            for (int n : ns) check_gemm(m, n, k, false);
    check_gemm(1, 512, 4096, false); /* a decode GEMV */
    check_gemm(6, 40, 1024, true);   /* unaligned: the byte path on a multiple of 16 */
    check_gemm(2, 5, 33, true);
}

static void test_bad_arguments(void)
{
    dbuf<int8_t> x = dbuf_new<int8_t>(64);
    dbuf<uint8_t> w = dbuf_new<uint8_t>(64);
    dbuf<float> s = dbuf_new<float>(4), y = dbuf_new<float>(64);
    std::vector<int8_t> hx(64, 1);
    std::vector<uint8_t> hw(64, 0x55);
    std::vector<float> hs(4, 1.0f), hy(64);
    long launches = mlkct_launches();
    struct { int m, n, k; } shapes[] = {{0, 4, 4}, {4, 0, 4}, {4, 4, 0}, {-1, 4, 4}, {1, 1, MLK_TERNARY_MAX_K + 1}};
    for (const auto &c : shapes)
        CHECK_INT(mlk_cuda_ternary_gemm(c.m, c.n, c.k, x.p, s.p, w.p, 1.0f, y.p, 0),
                  mlk_ternary_gemm(c.m, c.n, c.k, hx.data(), hs.data(), hw.data(), 1.0f, hy.data()));
    CHECK_INT(mlk_cuda_ternary_gemm(2, 2, 4, NULL, s.p, w.p, 1.0f, y.p, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_ternary_gemm(2, 2, 4, x.p, NULL, w.p, 1.0f, y.p, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_ternary_gemm(2, 2, 4, x.p, s.p, NULL, 1.0f, y.p, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_ternary_gemm(2, 2, 4, x.p, s.p, w.p, 1.0f, NULL, 0), MLK_ERR_NULL);
    if (launches >= 0) CHECKF(mlkct_launches() == launches, "a rejected call launched a kernel");
    std::vector<float> after = dbuf_get(y);
    int touched = 0;
    for (float v : after) touched += v == v;
    CHECKF(touched == 0, "%d outputs written by rejected calls", touched);
    dbuf_free(x);
    dbuf_free(w);
    dbuf_free(s);
    dbuf_free(y);
}

int main(void)
{
    MLKT_RUN(test_shapes, 1);
    MLKT_RUN(test_bad_arguments, 2);
    return mlkct_finish("test_ternary");
}

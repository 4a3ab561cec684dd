/* CUDA softmax family: softmax and log-softmax (float32, bf16, fp16 rows),
   top-k softmax / log-softmax (k from 1 to n, ties, rows split over many
   blocks, k past a segment on long rows), and sampling with the same
   random numbers as mlk_sample (top_k and top_p alone on vocabularies of
   128256 and 262144); against the CPU kernels on the same inputs and double
   references, the CPU's error rules (NaN, +inf, all -inf rows: status
   MLK_ERR_VALUE and nothing written) and every bad argument. */
#include "mlkct.h"

#include <algorithm>

static bool is_fill(const void *p, size_t bytes) /* still the 0xFF fill */
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < bytes; i++)
        if (b[i] != 0xFF) return false;
    return true;
}

/* Logits of one kind: 0 normal, 1 with masked (-inf) entries, 2 many ties
   (small integers), 3 large magnitudes; count = rows * n. */
static void fill_logits(float *x, size_t count, int kind, int n = 1 << 30)
{
    for (size_t i = 0; i < count; i++) {
        double v = 3.0 * mlkt_normal();
        if (kind == 1 && mlkt_int(4) == 0) v = -INFINITY;
        if (kind == 2) v = (double)mlkt_int(5);
        if (kind == 3) v = 200.0 * mlkt_normal();
        x[i] = (float)v;
    }
    if (kind == 1) /* never a whole row masked */
        for (size_t r = 0; r * n < count; r++) x[r * n + (count - r * n < (size_t)n ? count - r * n : (size_t)n) / 2] = 1.0f;
}

/* ---- softmax / log-softmax ---- */

static void ref_softmax_row(const float *x, int n, bool log_out, double *y)
{
    double m = -INFINITY, l = 0;
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) l += exp((double)x[i] - m);
    for (int i = 0; i < n; i++) y[i] = log_out ? (double)x[i] - m - log(l) : exp((double)x[i] - m) / l;
}

static void naive_softmax_row(const float *x, int n, bool log_out, float *y)
{
    float m = -INFINITY, l = 0;
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) l += expf(x[i] - m);
    for (int i = 0; i < n; i++) y[i] = log_out ? x[i] - m - logf(l) : expf(x[i] - m) / l;
}

/* log-softmax outputs of masked tokens are -inf on both sides: equal, not an error */
static double err_finite(const float *got, const double *ref, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        if (isinf(ref[i]) && got[i] == ref[i]) continue;
        double d = fabs(got[i] - ref[i]);
        if (d != d) return INFINITY;
        e = d > e ? d : e;
    }
    return e;
}

template <typename T> static void check_softmax(int rows, int n, int kind, bool log_out)
{
    size_t count = (size_t)rows * n;
    std::vector<float> x0(count), xf, y_cpu(count), naive(count);
    std::vector<double> ref(count);
    fill_logits(x0.data(), count, kind, n);
    std::vector<T> xt = mlkct_round<T>(x0.data(), count, &xf);
    CHECK_INT(log_out ? mlk_log_softmax(rows, n, xf.data(), y_cpu.data()) : mlk_softmax(rows, n, xf.data(), y_cpu.data()),
              MLK_OK);
    for (int r = 0; r < rows; r++) {
        ref_softmax_row(xf.data() + (size_t)r * n, n, log_out, ref.data() + (size_t)r * n);
        naive_softmax_row(xf.data() + (size_t)r * n, n, log_out, naive.data() + (size_t)r * n);
    }
    dbuf<T> dx = dbuf_from(xt.data(), count), dy = dbuf_new<T>(count);
    dbuf<int> dst = dbuf_new<int>(1);
    std::vector<unsigned char> out = mlkct_orders("softmax", [&]() {
        dbuf_poison(dy);
        dbuf_poison(dst);
        CHECK_INT(log_out ? mlk_cuda_log_softmax<T>(rows, n, dx.p, dy.p, dst.p, NULL, 0, 0)
                          : mlk_cuda_softmax<T>(rows, n, dx.p, dy.p, dst.p, NULL, 0, 0),
                  MLK_OK);
        std::vector<unsigned char> b;
        mlkct_append(b, dy);
        mlkct_append(b, dst);
        return b;
    });
    std::vector<float> y(count);
    for (size_t i = 0; i < count; i++) y[i] = mlkct_to_float(((const T *)out.data())[i]);
    CHECK_INT(*(const int *)(out.data() + count * sizeof(T)), MLK_OK);
    /* the output's own rounding to T is allowed on top of the float32 rule */
    std::vector<double> slack(count);
    double e = 0, e_naive = err_finite(naive.data(), ref.data(), count), e_cpu = err_finite(y_cpu.data(), ref.data(), count);
    for (size_t i = 0; i < count; i++) {
        if (isinf(ref[i]) && y[i] == ref[i]) continue;
        double d = fabs(y[i] - ref[i]) - mlkct_rounding<T>(ref[i]);
        if (d != d) d = INFINITY;
        e = d > e ? d : e;
    }
    double scale = log_out ? 1.0 : 1.0 / n;
    for (size_t i = 0; i < count; i++) scale = !isinf(ref[i]) && fabs(ref[i]) > scale ? fabs(ref[i]) : scale;
    CHECK_NAIVE(e, e_naive, mlkt_ulps(8, scale), "%s %s rows %d n %d kind %d", mlkct_type_name<T>(),
                log_out ? "log_softmax" : "softmax", rows, n, kind);
    CHECK_NAIVE(e_cpu, e_naive, mlkt_ulps(8, scale), "the CPU twin, same inputs");
    mlkt_digest(out.data(), out.size());
    dbuf_free(dx);
    dbuf_free(dy);
    dbuf_free(dst);
}

template <typename T> static void test_softmax_shapes(void)
{
    const int ns[] = {1, 5, 64, 1000, 4096, 4097, 9000};
    for (int log_out = 0; log_out < 2; log_out++)
        for (int n : ns)
            for (int kind = 0; kind < 4; kind++) check_softmax<T>(n > 4096 ? 2 : 3, n, kind, log_out);
    check_softmax<T>(1, 262144 + 3, 0, false); /* 65 blocks for one row */
}

/* NaN, +inf or an all -inf row anywhere: MLK_ERR_VALUE on the device, every
   output untouched; the CPU says the same. */
static void test_softmax_bad_rows(void)
{
    const int rows = 3;
    const int ns[] = {7, 5000};
    for (int n : ns)
        for (int bad = 0; bad < 3; bad++) {
            size_t count = (size_t)rows * n;
            std::vector<float> x(count), y(count);
            fill_logits(x.data(), count, 0);
            float *row1 = x.data() + n;
            if (bad == 0) row1[n - 1] = NAN;
            if (bad == 1) row1[0] = INFINITY;
            if (bad == 2) for (int i = 0; i < n; i++) row1[i] = -INFINITY;
            CHECK_INT(mlk_softmax(rows, n, x.data(), y.data()), MLK_ERR_VALUE);
            dbuf<float> dx = dbuf_from(x.data(), count), dy = dbuf_new<float>(count);
            dbuf<float> dp = dbuf_new<float>((size_t)rows * 3);
            dbuf<int32_t> di = dbuf_new<int32_t>((size_t)rows * 3), dout = dbuf_new<int32_t>(rows);
            dbuf<int> dst = dbuf_new<int>(5);
            uint64_t seed = 42;
            dbuf<uint64_t> drng = dbuf_from(&seed, 1);
            mlk_sampler smp = {0.7f, 0, 1.0f, 0.0f}, top_p = {1.0f, 0, 0.9f, 0.0f};
            CHECK_INT(mlk_cuda_softmax<float>(rows, n, dx.p, dy.p, dst.p, NULL, 0, 0), MLK_OK);
            CHECK_INT(mlk_cuda_log_softmax<float>(rows, n, dx.p, dy.p, dst.p + 1, NULL, 0, 0), MLK_OK);
            CHECK_INT(mlk_cuda_topk_softmax<float>(rows, n, dx.p, 1.0f, 3, dp.p, di.p, dst.p + 2, NULL, 0, 0), MLK_OK);
            CHECK_INT(mlk_cuda_sample<float>(rows, n, dx.p, &smp, drng.p, dout.p, dst.p + 3, NULL, 0, 0), MLK_OK);
            CHECK_INT(mlk_cuda_sample<float>(rows, n, dx.p, &top_p, drng.p, dout.p, dst.p + 4, NULL, 0, 0), MLK_OK);
            std::vector<int> st = dbuf_get(dst);
            for (int i = 0; i < 5; i++) CHECKF(st[(size_t)i] == MLK_ERR_VALUE, "bad row kind %d n %d: call %d status %d", bad, n, i, st[(size_t)i]);
            std::vector<float> hy = dbuf_get(dy), hp = dbuf_get(dp);
            std::vector<int32_t> hi = dbuf_get(di), ho = dbuf_get(dout);
            std::vector<uint64_t> hr = dbuf_get(drng);
            CHECK(is_fill(hy.data(), hy.size() * 4) && is_fill(hp.data(), hp.size() * 4));
            CHECK(is_fill(hi.data(), hi.size() * 4) && is_fill(ho.data(), ho.size() * 4));
            CHECKF(hr[0] == 42, "the rng state must not advance on an error");
            dbuf_free(dx);
            dbuf_free(dy);
            dbuf_free(dp);
            dbuf_free(di);
            dbuf_free(dout);
            dbuf_free(dst);
            dbuf_free(drng);
        }
}

/* ---- top-k ---- */

template <typename T> static void check_topk(int rows, int n, int k, float temp, int kind, bool log_out)
{
    size_t count = (size_t)rows * n, out_count = (size_t)rows * k;
    std::vector<float> x0(count), xf, p_cpu(out_count);
    std::vector<int32_t> i_cpu(out_count);
    fill_logits(x0.data(), count, kind, n);
    std::vector<T> xt = mlkct_round<T>(x0.data(), count, &xf);
    CHECK_INT(log_out ? mlk_topk_log_softmax(rows, n, xf.data(), k, p_cpu.data(), i_cpu.data())
                      : mlk_topk_softmax(rows, n, xf.data(), temp, k, p_cpu.data(), i_cpu.data()),
              MLK_OK);
    dbuf<T> dx = dbuf_from(xt.data(), count);
    dbuf<float> dp = dbuf_new<float>(out_count);
    dbuf<int32_t> di = dbuf_new<int32_t>(out_count);
    dbuf<int> dst = dbuf_new<int>(1);
    size_t ws_bytes = mlk_cuda_topk_workspace_size(rows, n, k);
    CHECK(ws_bytes > 0);
    dbuf<unsigned char> ws = dbuf_new<unsigned char>(ws_bytes + 256);
    void *wsp = (void *)(((uintptr_t)ws.p + 255) / 256 * 256);
    std::vector<unsigned char> out = mlkct_orders("topk", [&]() {
        dbuf_poison(dp);
        dbuf_poison(di);
        CHECK_INT(log_out ? mlk_cuda_topk_log_softmax<T>(rows, n, dx.p, k, dp.p, di.p, dst.p, wsp, ws_bytes, 0)
                          : mlk_cuda_topk_softmax<T>(rows, n, dx.p, temp, k, dp.p, di.p, dst.p, wsp, ws_bytes, 0),
                  MLK_OK);
        std::vector<unsigned char> b;
        mlkct_append(b, dp);
        mlkct_append(b, di);
        mlkct_append(b, dst);
        return b;
    });
    const float *p = (const float *)out.data();
    const int32_t *idx = (const int32_t *)(p + out_count);
    CHECK_INT(*(const int *)(idx + out_count), MLK_OK);
    int idx_diff = 0;
    for (size_t i = 0; i < out_count; i++) idx_diff += idx[i] != i_cpu[i];
    CHECKF(idx_diff == 0, "%s rows %d n %d k %d kind %d: %d indices differ from the CPU's", mlkct_type_name<T>(), rows,
           n, k, kind, idx_diff);
    /* probabilities against double, naive float32 as the yardstick */
    double e = 0, e_naive = 0, scale = log_out ? 1.0 : 0.0;
    for (int r = 0; r < rows; r++) {
        const float *xr = xf.data() + (size_t)r * n;
        double m = -INFINITY, l = 0;
        float mf = -INFINITY, lf = 0;
        for (int i = 0; i < n; i++) m = xr[i] > m ? xr[i] : m;
        for (int i = 0; i < n; i++) l += exp(((double)xr[i] - m) / temp);
        mf = (float)m;
        for (int i = 0; i < n; i++) lf += expf((xr[i] - mf) / temp);
        for (int j = 0; j < k; j++) {
            size_t o = (size_t)r * k + j;
            int32_t id = idx[o] >= 0 && idx[o] < n ? idx[o] : 0;
            double want = log_out ? ((double)xr[id] - m) / temp - log(l) : exp(((double)xr[id] - m) / temp) / l;
            float naive = log_out ? (xr[id] - mf) / temp - logf(lf) : expf((xr[id] - mf) / temp) / lf;
            if (isinf(want) && p[o] == want) continue;
            double d = fabs(p[o] - want);
            e = d == d && d > e ? d : (d != d ? INFINITY : e);
            e_naive = fabs(naive - want) > e_naive ? fabs(naive - want) : e_naive;
            scale = !isinf(want) && fabs(want) > scale ? fabs(want) : scale;
        }
    }
    CHECK_NAIVE(e, e_naive, mlkt_ulps(8, scale), "%s topk%s rows %d n %d k %d kind %d", mlkct_type_name<T>(),
                log_out ? " log" : "", rows, n, k, kind);
    mlkt_digest(out.data(), out.size());
    dbuf_free(dx);
    dbuf_free(dp);
    dbuf_free(di);
    dbuf_free(dst);
    dbuf_free(ws);
}

static void test_topk_shapes(void)
{
    struct { int rows, n, k; } cases[] = {
        {3, 1, 1}, {3, 10, 1}, {3, 10, 10}, {2, 100, 37}, {2, 4096, 1024}, {2, 4096, 4096}, {2, 4097, 50},
        {2, 4097, 2048}, {2, 9000, 1024}, {1, 32000, 50}, {1, 32000, 1024}, {1, 262144, 50}, {1, 128256 + 1, 1000},
        /* k past the old limits: past half a segment, a whole one, the whole row */
        {2, 9000, 3000}, {2, 4097, 4097}, {1, 20000, 4096}, {1, 20000, 20000}, {1, 128256, 4096}, {1, 262144, 5000}};
    for (const auto &c : cases)
        for (int kind = 0; kind < 4; kind++) {
            if (c.n > 20000 && kind != 2) continue; /* the long rows once, with ties */
            check_topk<float>(c.rows, c.n, c.k, kind == 3 ? 2.5f : 1.0f, kind, false);
        }
    check_topk<float>(2, 5000, 77, 1.0f, 1, true);
    check_topk<float>(2, 50, 50, 1.0f, 2, true);
    check_topk<__nv_bfloat16>(2, 5000, 64, 0.7f, 2, false);
    check_topk<__half>(2, 300, 17, 1.0f, 0, true);
}

/* ---- sampling ---- */

/* Draws the same rows on CPU and GPU from the same state. With candidates
   (top_k, greedy, top_p alone within one segment) the walk is the CPU's,
   sum for sum: every token must agree. Without, or top_p alone over longer
   rows (the row's mass), a sum runs in another order, so a draw within
   rounding of a boundary may differ: measured, and held to 1 in 1000. */
template <typename T> static void check_sample(int rows, int n, mlk_sampler s, int kind, uint64_t seed)
{
    size_t count = (size_t)rows * n;
    std::vector<float> x0(count), xf;
    fill_logits(x0.data(), count, kind, n);
    std::vector<T> xt = mlkct_round<T>(x0.data(), count, &xf);
    std::vector<int32_t> cpu(rows);
    uint64_t cpu_state = seed;
    CHECK_INT(mlk_sample(rows, n, xf.data(), &s, &cpu_state, cpu.data()), MLK_OK);
    dbuf<T> dx = dbuf_from(xt.data(), count);
    dbuf<int32_t> dout = dbuf_new<int32_t>(rows);
    dbuf<int> dst = dbuf_new<int>(1);
    dbuf<uint64_t> drng = dbuf_new<uint64_t>(1);
    std::vector<unsigned char> out = mlkct_orders("sample", [&]() {
        dbuf_put(drng, &seed);
        dbuf_poison(dout);
        CHECK_INT(mlk_cuda_sample<T>(rows, n, dx.p, &s, drng.p, dout.p, dst.p, NULL, 0, 0), MLK_OK);
        std::vector<unsigned char> b;
        mlkct_append(b, dout);
        mlkct_append(b, drng);
        mlkct_append(b, dst);
        return b;
    });
    const int32_t *tok = (const int32_t *)out.data();
    uint64_t gpu_state;
    memcpy(&gpu_state, out.data() + rows * sizeof(int32_t), 8);
    CHECK_INT(*(const int *)(out.data() + rows * sizeof(int32_t) + 8), MLK_OK);
    CHECKF(gpu_state == cpu_state, "the rng state advances as on the CPU");
    int differ = 0, valid = 1;
    for (int r = 0; r < rows; r++) {
        differ += tok[r] != cpu[r];
        valid &= tok[r] >= 0 && tok[r] < n && xf[(size_t)r * n + tok[r]] > -INFINITY;
    }
    /* top_p alone past one segment walks against the row's mass summed in another order */
    bool exact = s.temperature == 0.0f || (s.top_k > 0 && s.top_k < n) || (s.top_p < 1.0f && n <= MLK_CUDA_SEGMENT);
    CHECKF(valid, "sampled tokens are valid, unmasked indices");
    CHECKF(exact ? differ == 0 : differ * 1000 <= rows, "%s rows %d n %d T %g top_k %d top_p %g min_p %g: %d of %d tokens differ from mlk_sample",
           mlkct_type_name<T>(), rows, n, s.temperature, s.top_k, s.top_p, s.min_p, differ, rows);
    if (differ) printf("test_softmax: sampling n %d, %s path: %d of %d draws differ from the CPU (boundary rounding)\n", n,
                       s.top_p < 1.0f ? "top_p" : "plain", differ, rows);
    mlkt_digest(out.data(), out.size());
    dbuf_free(dx);
    dbuf_free(dout);
    dbuf_free(dst);
    dbuf_free(drng);
}

static void test_sample_agreement(void)
{
    /* rows per case: enough to measure agreement, few enough for the emulator */
    const int many = mlkct_small() ? 300 : 100000;
    mlk_sampler settings[] = {{0.0f, 0, 1.0f, 0.0f},  {1.0f, 0, 1.0f, 0.0f},   {0.8f, 40, 1.0f, 0.0f},
                              {1.0f, 0, 0.9f, 0.0f},  {1.2f, 50, 0.95f, 0.05f}, {0.7f, 0, 1.0f, 0.1f},
                              {1.0f, 1, 1.0f, 0.0f}};
    for (const mlk_sampler &s : settings) {
        check_sample<float>(many, 200, s, 0, 1234);
        check_sample<float>(7, 1000, s, 1, 99);
        check_sample<float>(5, 50, s, 2, 7); /* ties */
        if (s.top_p >= 1.0f || s.top_k) check_sample<float>(4, 9000, s, 0, 5); /* several segments per row */
    }
    check_sample<__nv_bfloat16>(20, 3000, settings[4], 0, 11);
    check_sample<__half>(20, 3000, settings[1], 0, 12);
}

/* Long rows: top_p alone (normal logits: the first 1024 candidates hold
   the kept prefix; ties and a high temperature: they do not, and the
   whole row is merged), top_k past a segment, real vocabulary sizes. */
static void test_sample_long_rows(void)
{
    const int rows = mlkct_small() ? 3 : 2000;
    mlk_sampler top_p = {1.0f, 0, 0.9f, 0.0f}, top_p_hot = {3.0f, 0, 0.95f, 0.0f}, top_p_min = {1.0f, 0, 0.8f, 0.02f};
    mlk_sampler top_k = {1.0f, 4096, 1.0f, 0.0f}, top_kp = {0.9f, 3000, 0.9f, 0.0f};
    check_sample<float>(rows, 9000, top_p, 0, 21);
    check_sample<float>(rows, 9000, top_p, 2, 22);
    check_sample<float>(rows, 9000, top_p_hot, 1, 23);
    check_sample<float>(rows, 9000, top_p_min, 0, 24);
    check_sample<float>(rows, 9000, top_k, 0, 25);
    check_sample<float>(rows, 9000, top_kp, 2, 26);
    check_sample<float>(2, 128256, top_p, 0, 27);
    check_sample<float>(2, 128256, top_p_hot, 0, 28);
    check_sample<float>(2, 128256, top_k, 0, 29);
    check_sample<float>(1, 262144, top_p, 2, 30);
    check_sample<float>(1, 262144, top_kp, 0, 31);
    check_sample<__nv_bfloat16>(2, 128256, top_p, 0, 32);
}

/* ---- bad arguments: the CPU's status, nothing written, nothing launched ---- */

static void test_bad_arguments(void)
{
    const int rows = 2, n = 16;
    std::vector<float> hx((size_t)rows * n, 0.5f), hy((size_t)rows * n), hp(64);
    std::vector<int32_t> hi(64);
    dbuf<float> x = dbuf_from(hx.data(), hx.size()), y = dbuf_new<float>(hx.size()), p = dbuf_new<float>(64);
    dbuf<int32_t> idx = dbuf_new<int32_t>(64);
    dbuf<int> st = dbuf_new<int>(1);
    uint64_t seed = 5, host_state = 5;
    dbuf<uint64_t> rng = dbuf_from(&seed, 1);
    long launches = mlkct_launches();
    struct { int rows, n; bool null; } shapes[] = {{0, n, false}, {rows, 0, false}, {-3, n, false}, {rows, n, true}};
    for (const auto &c : shapes) {
        const float *gx = c.null ? NULL : x.p, *cx = c.null ? NULL : hx.data();
        CHECK_INT(mlk_cuda_softmax<float>(c.rows, c.n, gx, y.p, st.p, NULL, 0, 0), mlk_softmax(c.rows, c.n, cx, hy.data()));
        CHECK_INT(mlk_cuda_log_softmax<float>(c.rows, c.n, gx, y.p, st.p, NULL, 0, 0), mlk_log_softmax(c.rows, c.n, cx, hy.data()));
        CHECK_INT(mlk_cuda_topk_softmax<float>(c.rows, c.n, gx, 1.0f, 2, p.p, idx.p, st.p, NULL, 0, 0),
                  mlk_topk_softmax(c.rows, c.n, cx, 1.0f, 2, hp.data(), hi.data()));
        CHECK_INT(mlk_cuda_topk_log_softmax<float>(c.rows, c.n, gx, 2, p.p, idx.p, st.p, NULL, 0, 0),
                  mlk_topk_log_softmax(c.rows, c.n, cx, 2, hp.data(), hi.data()));
        mlk_sampler s = {1.0f, 0, 1.0f, 0.0f};
        CHECK_INT(mlk_cuda_sample<float>(c.rows, c.n, gx, &s, rng.p, idx.p, st.p, NULL, 0, 0),
                  mlk_sample(c.rows, c.n, cx, &s, &host_state, hi.data()));
    }
    CHECK_INT(mlk_cuda_softmax<float>(rows, n, x.p, NULL, st.p, NULL, 0, 0), MLK_ERR_NULL);
    const int ks[] = {0, -1, n + 1};
    for (int k : ks) {
        CHECK_INT(mlk_cuda_topk_softmax<float>(rows, n, x.p, 1.0f, k, p.p, idx.p, st.p, NULL, 0, 0),
                  mlk_topk_softmax(rows, n, hx.data(), 1.0f, k, hp.data(), hi.data()));
        CHECK_INT(mlk_cuda_topk_log_softmax<float>(rows, n, x.p, k, p.p, idx.p, st.p, NULL, 0, 0), MLK_ERR_SHAPE);
    }
    CHECK_INT(mlk_cuda_topk_softmax<float>(rows, n, x.p, 1.0f, 2, NULL, idx.p, st.p, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_topk_softmax<float>(rows, n, x.p, 1.0f, 2, p.p, NULL, st.p, NULL, 0, 0), MLK_ERR_NULL);
    const float temps[] = {0.0f, -1.0f, NAN, INFINITY, 1e-45f};
    for (float t : temps)
        CHECK_INT(mlk_cuda_topk_softmax<float>(rows, n, x.p, t, 2, p.p, idx.p, st.p, NULL, 0, 0),
                  mlk_topk_softmax(rows, n, hx.data(), t, 2, hp.data(), hi.data()));
    /* long rows take any k up to n, and no more */
    CHECK(mlk_cuda_topk_workspace_size(1, 262144, 262144) > 0);
    CHECK(mlk_cuda_topk_workspace_size(1, 262144, 262145) == 0);
    mlk_sampler bad[] = {{-1.0f, 0, 1.0f, 0.0f}, {NAN, 0, 1.0f, 0.0f}, {INFINITY, 0, 1.0f, 0.0f},
                         {1.0f, -1, 1.0f, 0.0f}, {1.0f, 0, 0.0f, 0.0f}, {1.0f, 0, NAN, 0.0f},
                         {1.0f, 0, 1.0f, -0.1f}, {1.0f, 0, 1.0f, 1.5f}, {1e-45f, 0, 1.0f, 0.0f}};
    for (const mlk_sampler &s : bad)
        CHECK_INT(mlk_cuda_sample<float>(rows, n, x.p, &s, rng.p, idx.p, st.p, NULL, 0, 0),
                  mlk_sample(rows, n, hx.data(), &s, &host_state, hi.data()));
    mlk_sampler ok = {1.0f, 0, 1.0f, 0.0f};
    CHECK_INT(mlk_cuda_sample<float>(rows, n, x.p, NULL, rng.p, idx.p, st.p, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_sample<float>(rows, n, x.p, &ok, NULL, idx.p, st.p, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_sample<float>(rows, n, x.p, &ok, rng.p, NULL, st.p, NULL, 0, 0), MLK_ERR_NULL);
    mlk_sampler top_p_long = {1.0f, 0, 0.9f, 0.0f}, top_k_long = {1.0f, 100000, 1.0f, 0.0f};
    CHECK(mlk_cuda_sample_workspace_size(1, 262144, &top_p_long) > 0);
    CHECK(mlk_cuda_sample_workspace_size(1, 262144, &top_k_long) > 0);
    /* workspaces: too small or misaligned */
    size_t need = mlk_cuda_softmax_workspace_size(rows, n);
    dbuf<unsigned char> ws = dbuf_new<unsigned char>(need + 512);
    unsigned char *aligned = (unsigned char *)(((uintptr_t)ws.p + 255) / 256 * 256);
    CHECK_INT(mlk_cuda_softmax<float>(rows, n, x.p, y.p, st.p, aligned, need - 1, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_softmax<float>(rows, n, x.p, y.p, st.p, aligned + 8, need, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_topk_softmax<float>(rows, n, x.p, 1.0f, 2, p.p, idx.p, st.p, aligned, 16, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_sample<float>(rows, n, x.p, &ok, rng.p, idx.p, st.p, aligned, 16, 0), MLK_ERR_ARG);
    if (launches >= 0) CHECKF(mlkct_launches() == launches, "rejected calls launched %ld kernels", mlkct_launches() - launches);
    std::vector<float> hy2 = dbuf_get(y), hp2 = dbuf_get(p);
    std::vector<int32_t> hi2 = dbuf_get(idx);
    std::vector<int> hs = dbuf_get(st);
    std::vector<uint64_t> hr = dbuf_get(rng);
    CHECK(is_fill(hy2.data(), hy2.size() * 4) && is_fill(hp2.data(), hp2.size() * 4));
    CHECK(is_fill(hi2.data(), hi2.size() * 4) && is_fill(hs.data(), 4) && hr[0] == 5);
    dbuf_free(x);
    dbuf_free(y);
    dbuf_free(p);
    dbuf_free(idx);
    dbuf_free(st);
    dbuf_free(rng);
    dbuf_free(ws);
}

int main(void)
{
    MLKT_RUN(test_softmax_shapes<float>, 1);
    MLKT_RUN(test_softmax_shapes<__nv_bfloat16>, 2);
    MLKT_RUN(test_softmax_shapes<__half>, 3);
    MLKT_RUN(test_softmax_bad_rows, 4);
    MLKT_RUN(test_topk_shapes, 5);
    MLKT_RUN(test_sample_agreement, 6);
    MLKT_RUN(test_sample_long_rows, 8);
    MLKT_RUN(test_bad_arguments, 7);
    return mlkct_finish("test_softmax");
}

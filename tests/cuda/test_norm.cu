/* CUDA norms: layer norm and RMS norm, forward and backward, float32,
   bf16 and fp16 rows, against the CPU kernels on the same inputs and a
   double reference; every launch geometry (warp or block per row, vector
   or scalar, cached or streaming), the hard rows (mean 1e4, spread 1e-2),
   dim 1, and every bad argument. */
#include "mlkct.h"

/* ---- double references (independent of both kernels) ---- */

static void ref_fwd_row(const float *x, int n, const float *gamma, const float *beta, double eps, bool center,
                        double *y, double *mean_out, double *rstd_out)
{
    double mean = 0, var = 0;
    if (center) {
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (int i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    double rstd = 1.0 / sqrt(var / n + eps);
    for (int i = 0; i < n; i++)
        y[i] = ((double)x[i] - mean) * rstd * (gamma ? gamma[i] : 1.0) + (beta ? beta[i] : 0.0);
    *mean_out = mean;
    *rstd_out = rstd;
}

static void naive_fwd_row(const float *x, int n, const float *gamma, const float *beta, float eps, bool center,
                          float *y)
{
    float mean = 0, var = 0;
    if (center) {
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= (float)n;
    }
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float rstd = 1.0f / sqrtf(var / (float)n + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] - mean) * rstd * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
}

/* dx of one row in double, from x itself (exact mean and rstd) */
static void ref_bwd_row(const float *x, const float *dy, const float *gamma, int n, double eps, bool center,
                        double *dx, double *xhat)
{
    double mean = 0, var = 0, sg = 0, sgx = 0;
    if (center) {
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (int i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    double rstd = 1.0 / sqrt(var / n + eps);
    for (int i = 0; i < n; i++) {
        double g = (gamma ? gamma[i] : 1.0) * dy[i];
        xhat[i] = ((double)x[i] - mean) * rstd;
        sg += g;
        sgx += g * xhat[i];
    }
    for (int i = 0; i < n; i++) {
        double g = (gamma ? gamma[i] : 1.0) * dy[i];
        dx[i] = rstd * (g - (center ? sg / n : 0.0) - xhat[i] * sgx / n);
    }
}

/* the same in float32, straight from the cached mean / rstd: the yardstick */
static void naive_bwd_row(const float *x, const float *dy, const float *gamma, int n, float mean, float rstd,
                          bool center, float *dx)
{
    float sg = 0, sgx = 0;
    for (int i = 0; i < n; i++) {
        float g = (gamma ? gamma[i] : 1.0f) * dy[i];
        sg += g;
        sgx += g * (x[i] - mean) * rstd;
    }
    for (int i = 0; i < n; i++) {
        float g = (gamma ? gamma[i] : 1.0f) * dy[i], xh = (x[i] - mean) * rstd;
        dx[i] = rstd * (g - (center ? sg / (float)n : 0.0f) - xh * sgx / (float)n);
    }
}

static double norm_floor(double scale) { return mlkt_ulps(4, scale > 1 ? scale : 1); }

/* The rule as a predicate, so the harness can show it rejects a bad output. */
template <typename T> static bool within_rule(const T *got, const double *ref, size_t n, double naive_err)
{
    return mlkt_within_naive(mlkct_err(got, ref, n), naive_err, norm_floor(mlkct_max_abs(ref, n)));
}

/* ---- forward ---- */

template <typename T>
static void check_fwd(int rows, int dim, bool center, bool with_gamma, bool with_beta, double shift, double spread,
                      bool perturb_probe = false)
{
    size_t count = (size_t)rows * dim;
    std::vector<float> x0(count), xf, gamma(dim), beta(dim), y_cpu(count), naive(count), mean_cpu(rows), rstd_cpu(rows);
    std::vector<double> ref(count), ref_mean(rows), ref_rstd(rows);
    for (size_t i = 0; i < count; i++) x0[i] = (float)(shift + spread * mlkt_normal());
    mlkt_fill_uniform(gamma.data(), dim, 0.5, 1.5);
    mlkt_fill_uniform(beta.data(), dim, -1, 1);
    std::vector<T> xt = mlkct_round<T>(x0.data(), count, &xf);
    const float *g = with_gamma ? gamma.data() : NULL, *b = with_beta && center ? beta.data() : NULL;
    const float eps = 1e-5f;
    mlk_status cpu = center ? mlk_layernorm_fwd(rows, dim, xf.data(), g, b, eps, y_cpu.data(), mean_cpu.data(), rstd_cpu.data())
                            : mlk_rmsnorm_fwd(rows, dim, xf.data(), g, eps, y_cpu.data(), rstd_cpu.data());
    CHECK_INT(cpu, MLK_OK);
    for (int r = 0; r < rows; r++) {
        ref_fwd_row(xf.data() + (size_t)r * dim, dim, g, b, eps, center, ref.data() + (size_t)r * dim, &ref_mean[r],
                    &ref_rstd[r]);
        naive_fwd_row(xf.data() + (size_t)r * dim, dim, g, b, eps, center, naive.data() + (size_t)r * dim);
    }
    dbuf<T> dx = dbuf_from(xt.data(), count), dy = dbuf_new<T>(count);
    dbuf<float> dg = dbuf_from(gamma.data(), dim), db = dbuf_from(beta.data(), dim);
    dbuf<float> dmean = dbuf_new<float>(rows), drstd = dbuf_new<float>(rows);
    std::vector<unsigned char> out = mlkct_orders("norm fwd", [&]() {
        dbuf_poison(dy);
        dbuf_poison(dmean);
        dbuf_poison(drstd);
        mlk_status st = center ? mlk_cuda_layernorm_fwd<T>(rows, dim, dx.p, g ? dg.p : NULL, b ? db.p : NULL, eps, dy.p,
                                                           dmean.p, drstd.p, 0)
                               : mlk_cuda_rmsnorm_fwd<T>(rows, dim, dx.p, g ? dg.p : NULL, eps, dy.p, drstd.p, 0);
        CHECK_INT(st, MLK_OK);
        std::vector<unsigned char> bytes;
        mlkct_append(bytes, dy);
        mlkct_append(bytes, dmean);
        mlkct_append(bytes, drstd);
        return bytes;
    });
    const T *y = (const T *)out.data();
    const float *mean = (const float *)(out.data() + count * sizeof(T)), *rstd = mean + rows;
    double e_naive = mlkt_max_abs_err(naive.data(), ref.data(), count), e_cpu = mlkt_max_abs_err(y_cpu.data(), ref.data(), count);
    double e = mlkct_err(y, ref.data(), count), scale = mlkct_max_abs(ref.data(), count);
    CHECK_NAIVE(e, e_naive, norm_floor(scale), "%s rows %d dim %d center %d", mlkct_type_name<T>(), rows, dim, center);
    if (shift != 0) /* the hard rows: as good as the CPU kernel, not merely as the naive one */
        CHECKF(e <= 2 * e_cpu + norm_floor(scale), "%s mean %g spread %g dim %d: err %.3g, CPU %.3g",
               mlkct_type_name<T>(), shift, spread, dim, e, e_cpu);
    int bad_stats = 0;
    for (int r = 0; r < rows; r++) {
        bad_stats += !mlkt_close(rstd[r], rstd_cpu[r], 2e-5, 0) || !mlkt_close(rstd[r], ref_rstd[r], 2e-5, 0);
        if (center)
            bad_stats += !mlkt_close(mean[r], ref_mean[r], 0, 8 * fabs(mean_cpu[r] - ref_mean[r]) +
                                                                    norm_floor(fabs(ref_mean[r]) + 1.0 / ref_rstd[r]));
        else
            bad_stats += ((const uint32_t *)mean)[r] != 0xFFFFFFFFu; /* RMS writes no mean */
    }
    CHECKF(bad_stats == 0, "%s rows %d dim %d: %d mean / rstd entries off", mlkct_type_name<T>(), rows, dim, bad_stats);
    if (perturb_probe) { /* the rule must reject an output with one element off by 3% of the scale */
        std::vector<T> bad(y, y + count);
        bad[count / 2] = mlkct_from_float<T>(mlkct_to_float(bad[count / 2]) + (float)(0.03 * scale));
        CHECK(within_rule(y, ref.data(), count, e_naive));
        CHECKF(!within_rule(bad.data(), ref.data(), count, e_naive), "a perturbed output passes the tolerance rule");
    }
    mlkt_digest(out.data(), out.size());
    dbuf_free(dx);
    dbuf_free(dy);
    dbuf_free(dg);
    dbuf_free(db);
    dbuf_free(dmean);
    dbuf_free(drstd);
}

/* dims that reach each launch shape: warp + vector, warp + scalar (odd),
   block + vector cached, block + scalar streaming, block + vector streaming */
template <typename T> static void test_fwd_shapes(void)
{
    const int W = 16 / (int)sizeof(T);
    const int dims[] = {1, 3, W, 33, 64, 250, 32 * W * 8, 32 * W * 8 + W, 3000 + (W == 4 ? 2 : 1), 5 * W * 512,
                        512 * W * 8 + W};
    for (int center = 0; center < 2; center++)
        for (int d : dims) {
            int rows = d > 10000 ? 2 : 5;
            check_fwd<T>(rows, d, center, d % 2 == 0, d % 3 != 0, 0.3, 1.0, d == 33 && center);
        }
}

static void test_fwd_hard_rows(void)
{
    for (int center = 0; center < 2; center++) {
        check_fwd<float>(8, 768, center, true, true, 1e4, 1e-2);
        check_fwd<float>(3, 1000, center, false, false, -3e4, 5e-2);
        check_fwd<float>(4, 9, center, true, false, 1e4, 1e-2);
        check_fwd<float>(2, 4096, center, true, true, 1e4, 1e-2);
    }
}

/* ---- backward ---- */

template <typename T> static void check_bwd(int rows, int dim, bool center, bool with_gamma, bool want_params)
{
    size_t count = (size_t)rows * dim;
    std::vector<float> x0(count), dy0(count), xf, dyf, gamma(dim), y(count), mean(rows), rstd(rows);
    std::vector<float> dx_cpu(count), dg_cpu(dim), db_cpu(dim), naive(count), naive_dg(dim, 0.0f), naive_db(dim, 0.0f);
    std::vector<double> ref(count), xhat(count), ref_dg(dim, 0.0), ref_db(dim, 0.0);
    for (size_t i = 0; i < count; i++) x0[i] = (float)(0.5 + mlkt_normal());
    mlkt_fill_normal(dy0.data(), count, 1.0);
    mlkt_fill_uniform(gamma.data(), dim, 0.5, 1.5);
    std::vector<T> xt = mlkct_round<T>(x0.data(), count, &xf), dyt = mlkct_round<T>(dy0.data(), count, &dyf);
    const float *g = with_gamma ? gamma.data() : NULL, eps = 1e-5f;
    CHECK_INT(center ? mlk_layernorm_fwd(rows, dim, xf.data(), g, NULL, eps, y.data(), mean.data(), rstd.data())
                     : mlk_rmsnorm_fwd(rows, dim, xf.data(), g, eps, y.data(), rstd.data()),
              MLK_OK);
    CHECK_INT(center ? mlk_layernorm_bwd(rows, dim, xf.data(), g, mean.data(), rstd.data(), dyf.data(), dx_cpu.data(),
                                         dg_cpu.data(), db_cpu.data())
                     : mlk_rmsnorm_bwd(rows, dim, xf.data(), g, rstd.data(), dyf.data(), dx_cpu.data(), dg_cpu.data()),
              MLK_OK);
    for (int r = 0; r < rows; r++) {
        size_t o = (size_t)r * dim;
        ref_bwd_row(xf.data() + o, dyf.data() + o, g, dim, eps, center, ref.data() + o, xhat.data() + o);
        naive_bwd_row(xf.data() + o, dyf.data() + o, g, dim, center ? mean[r] : 0.0f, rstd[r], center, naive.data() + o);
        for (int c = 0; c < dim; c++) {
            ref_dg[c] += dyf[o + c] * xhat[o + c];
            ref_db[c] += dyf[o + c];
            naive_dg[c] += dyf[o + c] * ((xf[o + c] - (center ? mean[r] : 0.0f)) * rstd[r]);
            naive_db[c] += dyf[o + c];
        }
    }
    dbuf<T> dx = dbuf_from(xt.data(), count), ddy = dbuf_from(dyt.data(), count), ddx = dbuf_new<T>(count);
    dbuf<float> dgam = dbuf_from(gamma.data(), dim), dmean = dbuf_from(mean.data(), rows), drstd = dbuf_from(rstd.data(), rows);
    dbuf<float> ddg = dbuf_new<float>(dim), ddb = dbuf_new<float>(dim);
    size_t ws_bytes = mlk_cuda_norm_bwd_workspace_size(rows, dim);
    dbuf<unsigned char> ws = dbuf_new<unsigned char>(ws_bytes + 256);
    unsigned char *ws_aligned = (unsigned char *)(((uintptr_t)ws.p + 255) / 256 * 256);
    std::vector<unsigned char> out = mlkct_orders("norm bwd", [&]() {
        dbuf_poison(ddx);
        dbuf_poison(ddg);
        dbuf_poison(ddb);
        float *pg = want_params ? ddg.p : NULL, *pb = want_params && center ? ddb.p : NULL;
        /* the caller's workspace on one call, the library's own allocation on the other */
        void *w = rows % 2 ? (void *)ws_aligned : NULL;
        mlk_status st = center ? mlk_cuda_layernorm_bwd<T>(rows, dim, dx.p, g ? dgam.p : NULL, dmean.p, drstd.p, ddy.p,
                                                           ddx.p, pg, pb, w, ws_bytes, 0)
                               : mlk_cuda_rmsnorm_bwd<T>(rows, dim, dx.p, g ? dgam.p : NULL, drstd.p, ddy.p, ddx.p, pg,
                                                         w, ws_bytes, 0);
        CHECK_INT(st, MLK_OK);
        std::vector<unsigned char> bytes;
        mlkct_append(bytes, ddx);
        mlkct_append(bytes, ddg);
        mlkct_append(bytes, ddb);
        return bytes;
    });
    const T *dxg = (const T *)out.data();
    const float *dgg = (const float *)(out.data() + count * sizeof(T)), *dbg = dgg + dim;
    double e_naive = mlkt_max_abs_err(naive.data(), ref.data(), count);
    CHECK_NAIVE(mlkct_err(dxg, ref.data(), count), e_naive, norm_floor(mlkct_max_abs(ref.data(), count)),
                "%s dx rows %d dim %d center %d", mlkct_type_name<T>(), rows, dim, center);
    CHECK_NAIVE(mlkt_max_abs_err(dx_cpu.data(), ref.data(), count), e_naive, norm_floor(mlkct_max_abs(ref.data(), count)),
                "CPU dx (the twin, same inputs)");
    if (want_params) {
        CHECK_NAIVE(mlkt_max_abs_err(dgg, ref_dg.data(), dim), mlkt_max_abs_err(naive_dg.data(), ref_dg.data(), dim),
                    norm_floor(mlkct_max_abs(ref_dg.data(), dim)), "%s dgamma rows %d dim %d", mlkct_type_name<T>(), rows, dim);
        if (center)
            CHECK_NAIVE(mlkt_max_abs_err(dbg, ref_db.data(), dim), mlkt_max_abs_err(naive_db.data(), ref_db.data(), dim),
                        norm_floor(mlkct_max_abs(ref_db.data(), dim)), "%s dbeta rows %d dim %d", mlkct_type_name<T>(), rows, dim);
        int far = 0;
        for (int c = 0; c < dim; c++) far += !mlkt_close(dgg[c], dg_cpu[c], 1e-4, 1e-4 * mlkct_max_abs(ref_dg.data(), dim));
        CHECKF(far == 0, "%d dgamma columns far from the CPU's", far);
    }
    if (!want_params || !center) CHECK(((const uint32_t *)dbg)[0] == 0xFFFFFFFFu); /* not asked for: untouched */
    if (!want_params) CHECK(((const uint32_t *)dgg)[0] == 0xFFFFFFFFu);
    mlkt_digest(out.data(), out.size());
    dbuf_free(dx);
    dbuf_free(ddy);
    dbuf_free(ddx);
    dbuf_free(dgam);
    dbuf_free(dmean);
    dbuf_free(drstd);
    dbuf_free(ddg);
    dbuf_free(ddb);
    dbuf_free(ws);
}

template <typename T> static void test_bwd_shapes(void)
{
    const int W = 16 / (int)sizeof(T);
    const int dims[] = {1, 7, W * 8, 100, 32 * W * 8 + W, 3001, 512 * W * 8 + W};
    for (int center = 0; center < 2; center++)
        for (int d : dims) {
            int rows = d > 10000 ? 2 : d > 1000 ? 5 : 131; /* 131 rows: three chunks of dgamma partials */
            check_bwd<T>(rows, d, center, d % 2 == 1, d != 7);
        }
}

/* ---- bad arguments: the CPU's status, nothing written, nothing launched ---- */

static void test_bad_arguments(void)
{
    const int rows = 4, dim = 8;
    dbuf<float> x = dbuf_new<float>(rows * dim), y = dbuf_new<float>(rows * dim), st = dbuf_new<float>(rows);
    std::vector<float> hx(rows * dim, 1.0f), hy(rows * dim), hs(rows);
    dbuf_put(x, hx.data());
    struct bad_case {
        int rows, dim;
        bool null_x;
        float eps;
    } cases[] = {{0, dim, false, 1e-5f}, {rows, 0, false, 1e-5f}, {-1, dim, false, 1e-5f}, {rows, dim, true, 1e-5f},
                 {rows, dim, false, -1.0f}, {rows, dim, false, NAN}, {rows, dim, false, INFINITY}};
    for (const bad_case &c : cases) {
        long launches = mlkct_launches();
        const float *px = c.null_x ? NULL : x.p;
        mlk_status cpu = mlk_layernorm_fwd(c.rows, c.dim, c.null_x ? NULL : hx.data(), NULL, NULL, c.eps, hy.data(),
                                           NULL, hs.data());
        mlk_status gpu = mlk_cuda_layernorm_fwd<float>(c.rows, c.dim, px, NULL, NULL, c.eps, y.p, NULL, st.p, 0);
        CHECKF(gpu == cpu && gpu != MLK_OK, "layernorm_fwd rows %d dim %d: %d, CPU %d", c.rows, c.dim, gpu, cpu);
        cpu = mlk_rmsnorm_fwd(c.rows, c.dim, c.null_x ? NULL : hx.data(), NULL, c.eps, hy.data(), hs.data());
        gpu = mlk_cuda_rmsnorm_fwd<float>(c.rows, c.dim, px, NULL, c.eps, y.p, st.p, 0);
        CHECKF(gpu == cpu && gpu != MLK_OK, "rmsnorm_fwd rows %d dim %d: %d, CPU %d", c.rows, c.dim, gpu, cpu);
        if (c.eps == 1e-5f) { /* the backward has no eps */
            cpu = mlk_layernorm_bwd(c.rows, c.dim, c.null_x ? NULL : hx.data(), NULL, hs.data(), hs.data(), hx.data(),
                                    hy.data(), NULL, NULL);
            gpu = mlk_cuda_layernorm_bwd<float>(c.rows, c.dim, px, NULL, st.p, st.p, x.p, y.p, NULL, NULL, NULL, 0, 0);
            CHECKF(gpu == cpu && gpu != MLK_OK, "layernorm_bwd rows %d dim %d: %d, CPU %d", c.rows, c.dim, gpu, cpu);
            cpu = mlk_rmsnorm_bwd(c.rows, c.dim, c.null_x ? NULL : hx.data(), NULL, hs.data(), hx.data(), hy.data(), NULL);
            gpu = mlk_cuda_rmsnorm_bwd<float>(c.rows, c.dim, px, NULL, st.p, x.p, y.p, NULL, NULL, 0, 0);
            CHECKF(gpu == cpu && gpu != MLK_OK, "rmsnorm_bwd rows %d dim %d: %d, CPU %d", c.rows, c.dim, gpu, cpu);
        }
        if (launches >= 0) CHECKF(mlkct_launches() == launches, "a rejected call launched a kernel");
    }
    /* the backward's other required pointers, and its workspace */
    long launches = mlkct_launches();
    CHECK_INT(mlk_cuda_layernorm_bwd<float>(rows, dim, x.p, NULL, NULL, st.p, x.p, y.p, NULL, NULL, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_layernorm_bwd<float>(rows, dim, x.p, NULL, st.p, NULL, x.p, y.p, NULL, NULL, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_rmsnorm_bwd<float>(rows, dim, x.p, NULL, st.p, NULL, y.p, NULL, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_rmsnorm_bwd<float>(rows, dim, x.p, NULL, st.p, x.p, NULL, NULL, NULL, 0, 0), MLK_ERR_NULL);
    size_t need = mlk_cuda_norm_bwd_workspace_size(rows, dim);
    CHECK(need > 0);
    CHECK(mlk_cuda_norm_bwd_workspace_size(0, dim) == 0);
    dbuf<unsigned char> ws = dbuf_new<unsigned char>(need + 512);
    unsigned char *aligned = (unsigned char *)(((uintptr_t)ws.p + 255) / 256 * 256);
    CHECK_INT(mlk_cuda_layernorm_bwd<float>(rows, dim, x.p, NULL, st.p, st.p, x.p, y.p, st.p, NULL, aligned, need - 1, 0),
              MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_layernorm_bwd<float>(rows, dim, x.p, NULL, st.p, st.p, x.p, y.p, st.p, NULL, aligned + 4, need, 0),
              MLK_ERR_ARG);
    if (launches >= 0) CHECKF(mlkct_launches() == launches, "a rejected call launched a kernel");
    std::vector<float> after = dbuf_get(y);
    int touched = 0;
    for (float v : after) touched += v == v; /* still the NaN fill */
    CHECKF(touched == 0, "%d output elements written by rejected calls", touched);
    /* a workspace the device cannot give: NOMEM, the runtime's error kept for mlk_cuda_last_error */
    const char *msg = NULL;
    mlk_status big = mlk_cuda_layernorm_bwd<float>(1 << 30, 1 << 24, x.p, NULL, st.p, st.p, x.p, y.p, st.p, NULL, NULL, 0, 0);
    CHECK_INT(big, MLK_ERR_NOMEM);
    CHECK(mlk_cuda_last_error(&msg) == cudaErrorMemoryAllocation && msg && msg[0]);
    if (launches >= 0) CHECKF(mlkct_launches() == launches, "a failed allocation launched a kernel");
    dbuf_free(x);
    dbuf_free(y);
    dbuf_free(st);
    dbuf_free(ws);
}

int main(void)
{
    MLKT_RUN(test_fwd_shapes<float>, 1);
    MLKT_RUN(test_fwd_shapes<__nv_bfloat16>, 2);
    MLKT_RUN(test_fwd_shapes<__half>, 3);
    MLKT_RUN(test_fwd_hard_rows, 4);
    MLKT_RUN(test_bwd_shapes<float>, 5);
    MLKT_RUN(test_bwd_shapes<__nv_bfloat16>, 6);
    MLKT_RUN(test_bwd_shapes<__half>, 7);
    MLKT_RUN(test_bad_arguments, 8);
    return mlkct_finish("test_norm");
}

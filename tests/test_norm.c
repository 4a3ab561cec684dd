/* norms: layer norm and RMS norm, forward and backward, against double
   references (a direct forward, central finite differences, and the full
   Jacobian written out), the hard rows (mean 1e4 with spread 1e-2, dim 1,
   constant rows), and every bad input. */
#include <stdlib.h>
static int fail_alloc; /* makes the library's allocations fail (MLK_ERR_NOMEM) */
static void *test_malloc(size_t n) { return fail_alloc ? NULL : malloc(n); }
#define MLKERN_MALLOC(n) test_malloc(n)
#define MLKERN_FREE(p) free(p)
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include <float.h>
#include <limits.h>

/* ---- double references ---- */

/* One row of either norm in double: y, and the row's mean and rstd. */
static void ref_norm_row(const float *x, int n, const float *gamma, const float *beta,
                         double eps, int center, double *y, double *mean_out, double *rstd_out)
{
    double mean = 0, var = 0, rstd;
    int i;
    if (center) {
        for (i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    rstd = 1.0 / sqrt(var / n + eps);
    for (i = 0; i < n; i++)
        y[i] = ((double)x[i] - mean) * rstd * (gamma ? gamma[i] : 1.0) + (beta ? beta[i] : 0.0);
    if (mean_out) *mean_out = mean;
    if (rstd_out) *rstd_out = rstd;
}

/* The naive float32 computation of the same row: the error yardstick. */
static void naive_norm_row(const float *x, int n, const float *gamma, const float *beta,
                           float eps, int center, float *y)
{
    float mean = 0, var = 0, rstd;
    int i;
    if (center) {
        for (i = 0; i < n; i++) mean += x[i];
        mean /= (float)n;
    }
    for (i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    rstd = 1.0f / sqrtf(var / (float)n + eps);
    for (i = 0; i < n; i++) y[i] = (x[i] - mean) * rstd * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
}

/* dx of one row from the Jacobian written out element by element (not the
   factored formula the kernel uses): d xhat_i / d x_j =
   rstd (delta_ij - center/n - xhat_i xhat_j / n). Rows longer than 512 use
   the factored form in double (the full Jacobian would take minutes). */
static void ref_bwd_row(const float *x, const float *dy, const float *gamma, int n, double eps,
                        int center, double *dx)
{
    double mean = 0, var = 0, rstd;
    int i, j;
    if (center) {
        for (i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    rstd = 1.0 / sqrt(var / n + eps);
    if (n > 512) {
        double mean_g = 0, mean_gx = 0;
        for (i = 0; i < n; i++) {
            double g = dy[i] * (gamma ? gamma[i] : 1.0);
            mean_g += g / n;
            mean_gx += g * (x[i] - mean) * rstd / n;
        }
        for (i = 0; i < n; i++)
            dx[i] = rstd * (dy[i] * (gamma ? gamma[i] : 1.0) - (center ? mean_g : 0) - (x[i] - mean) * rstd * mean_gx);
        return;
    }
    for (j = 0; j < n; j++) {
        double xh_j = (x[j] - mean) * rstd, acc = 0;
        for (i = 0; i < n; i++) {
            double xh_i = (x[i] - mean) * rstd;
            double jac = rstd * ((i == j) - (center ? 1.0 / n : 0.0) - xh_i * xh_j / n);
            acc += dy[i] * (gamma ? gamma[i] : 1.0) * jac;
        }
        dx[j] = acc;
    }
}

static double max_abs(const double *a, size_t n)
{
    double m = 0;
    size_t i;
    for (i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* max |a - ref| when a is float */
static double err_f(const float *a, const double *ref, size_t n) { return mlkt_max_abs_err(a, ref, n); }

/* The floor of mlkt.h's tolerance rule here: 4 float ulps of the
   output's scale (at least 1). */
static double norm_floor(double scale) { return mlkt_ulps(4, scale > 1 ? scale : 1); }

/* ---- forward ---- */

static void check_fwd(int rows, int dim, int center, int with_gamma, int with_beta, double mean_shift,
                      double spread, float eps)
{
    size_t count = (size_t)(size_t)rows * (size_t)dim, r;
    float *x = mlkt_floats(count), *y = mlkt_floats(count), *naive = mlkt_floats(count);
    float *gamma = mlkt_floats((size_t)dim), *beta = mlkt_floats((size_t)dim);
    float *mean = mlkt_floats((size_t)rows), *rstd = mlkt_floats((size_t)rows);
    double *ref = (double *)malloc((size_t)count * sizeof(double)), *ref_mean = (double *)malloc((size_t)rows * sizeof(double));
    double *ref_rstd = (double *)malloc((size_t)rows * sizeof(double)), e, e_naive;
    const float *g = with_gamma ? gamma : NULL, *b = with_beta && center ? beta : NULL;
    mlk_status st;
    for (r = 0; r < count; r++) x[r] = (float)(mean_shift + spread * mlkt_normal());
    mlkt_fill_uniform(gamma, (size_t)dim, 0.5, 1.5);
    mlkt_fill_uniform(beta, (size_t)dim, -1, 1);
    st = center ? mlk_layernorm_fwd(rows, dim, x, g, b, eps, y, mean, rstd)
                : mlk_rmsnorm_fwd(rows, dim, x, g, eps, y, rstd);
    CHECK_INT(st, MLK_OK);
    for (r = 0; r < (size_t)rows; r++) {
        ref_norm_row(x + r * dim, dim, g, b, eps, center, ref + r * dim, ref_mean + r, ref_rstd + r);
        naive_norm_row(x + r * dim, dim, g, b, eps, center, naive + r * dim);
    }
    e = err_f(y, ref, count);
    e_naive = err_f(naive, ref, count);
    CHECK_NAIVE(e, e_naive, norm_floor(max_abs(ref, count)), "rows %d dim %d center %d", rows, dim, center);
    if (mean_shift != 0) /* the hard rows: must normalise correctly, not just as well as naive */
        CHECKF(e <= 1e-4 * max_abs(ref, count), "mean %g spread %g: err %.3g (naive %.3g)",
               mean_shift, spread, e, e_naive);
    for (r = 0; r < (size_t)rows; r++) {
        CHECK_CLOSE(rstd[r], ref_rstd[r], 1e-5, 0);
        if (center) {
            float naive_mean = 0;
            size_t i;
            for (i = 0; i < (size_t)dim; i++) naive_mean += x[r * dim + i];
            naive_mean /= (float)dim;
            /* the scale of a mean's rounding is the row's |mean| + std */
            CHECK_NAIVE(fabs(mean[r] - ref_mean[r]), fabs(naive_mean - ref_mean[r]),
                        norm_floor(fabs(ref_mean[r]) + 1.0 / ref_rstd[r]),
                        "mean of row %d: %.9g, want %.9g", (int)r, mean[r], ref_mean[r]);
        }
    }
    if (!center) CHECK(((const uint32_t *)(const void *)mean)[0] == 0xFFFFFFFFu); /* untouched */
    mlkt_digest(y, count * sizeof(float));
    mlkt_digest(rstd, rows * sizeof(float));
    free(ref); free(ref_mean); free(ref_rstd);
    mlkt_free(x); mlkt_free(y); mlkt_free(naive); mlkt_free(gamma); mlkt_free(beta);
    mlkt_free(mean); mlkt_free(rstd);
}

static void test_fwd_shapes(void)
{
    static const int shapes[][2] = {{1, 1}, {3, 2}, {5, 7}, {4, 8}, {6, 15}, {2, 16}, {17, 33},
                                    {9, 100}, {64, 768}, {300, 1000}, {1000, 130}};
    int s, center, combo;
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (center = 0; center < 2; center++)
            for (combo = 0; combo < 4; combo++) {
                if (mlkt_quick() && shapes[s][0] * shapes[s][1] > 70000 && combo) continue;
                check_fwd(shapes[s][0], shapes[s][1], center, combo & 1, combo >> 1, 0.0, 1.0 + s, 1e-5f);
            }
}

static void test_fwd_hard_rows(void)
{
    int center;
    for (center = 0; center < 2; center++) {
        check_fwd(8, 768, center, 1, 1, 1e4, 1e-2, 1e-12f); /* mean 1e4, spread 1e-2 */
        check_fwd(3, 1000, center, 0, 0, -3e4, 5e-2, 1e-12f);
        check_fwd(4, 9, center, 1, 0, 1e4, 1e-2, 1e-12f);
    }
}

/* dim = 1 and constant rows: x - mean is exactly 0, so y is beta exactly
   (0 without beta), mean is the value and rstd 1/sqrt(eps). */
static void test_fwd_constant_rows(void)
{
    static const int dims[3] = {1, 8, 77};
    int d, i, r;
    for (d = 0; d < 3; d++) {
        int dim = dims[d], rows = 5;
        float *x = mlkt_floats((size_t)rows * dim), *y = mlkt_floats((size_t)rows * dim);
        float *beta = mlkt_floats((size_t)dim), *gamma = mlkt_floats((size_t)dim);
        float *mean = mlkt_floats((size_t)rows), *rstd = mlkt_floats((size_t)rows);
        mlkt_fill_uniform(beta, (size_t)dim, -1, 1);
        mlkt_fill_uniform(gamma, (size_t)dim, 0.5, 2);
        for (r = 0; r < rows; r++)
            for (i = 0; i < dim; i++) x[r * dim + i] = (float)(r * 1000.25 - 1234.5);
        CHECK_INT(mlk_layernorm_fwd(rows, dim, x, gamma, beta, 1e-5f, y, mean, rstd), MLK_OK);
        for (r = 0; r < rows; r++) {
            CHECK(mean[r] == x[r * dim]);
            CHECK_CLOSE(rstd[r], 1.0 / sqrt((double)1e-5f), 1e-6, 0);
            for (i = 0; i < dim; i++) CHECK(y[r * dim + i] == beta[i]);
        }
        CHECK_INT(mlk_layernorm_fwd(rows, dim, x, NULL, NULL, 1e-5f, y, NULL, NULL), MLK_OK);
        for (i = 0; i < rows * dim; i++) CHECK(y[i] == 0.0f);
        mlkt_digest(y, (size_t)rows * dim * sizeof(float));
        mlkt_free(x); mlkt_free(y); mlkt_free(beta); mlkt_free(gamma); mlkt_free(mean); mlkt_free(rstd);
    }
}

/* ---- backward ---- */

typedef struct fd_ctx { int n, center; const double *w; double eps; } fd_ctx;

/* loss = sum_i w_i * y_i of one row, params = [x(n), gamma(n), beta(n)] in double */
static double fd_loss(void *p, const double *params)
{
    const fd_ctx *c = (const fd_ctx *)p;
    double mean = 0, var = 0, rstd, loss = 0;
    int i;
    if (c->center) {
        for (i = 0; i < c->n; i++) mean += params[i];
        mean /= c->n;
    }
    for (i = 0; i < c->n; i++) var += (params[i] - mean) * (params[i] - mean);
    rstd = 1.0 / sqrt(var / c->n + c->eps);
    for (i = 0; i < c->n; i++)
        loss += c->w[i] * ((params[i] - mean) * rstd * params[c->n + i] + (c->center ? params[2 * c->n + i] : 0));
    return loss;
}

/* Gradients of a few single rows by central differences in double; the
   kernel runs on the float-rounded inputs, so the check is at float level. */
static void test_bwd_finite_diff(void)
{
    static const int dims[4] = {1, 5, 8, 19};
    int d, center, i;
    for (center = 0; center < 2; center++)
        for (d = 0; d < 4; d++) {
            int n = dims[d];
            float *x = mlkt_floats((size_t)n), *gamma = mlkt_floats((size_t)n), *dy = mlkt_floats((size_t)n);
            float *y = mlkt_floats((size_t)n), *dx = mlkt_floats((size_t)n), *dgamma = mlkt_floats((size_t)n);
            float *dbeta = mlkt_floats((size_t)n), mean, rstd;
            double params[3 * 19], w[19]; /* 19: the largest dim above */
            double scale = 0;
            fd_ctx ctx;
            mlkt_fill_normal(x, (size_t)n, 1.0);
            mlkt_fill_uniform(gamma, (size_t)n, 0.5, 1.5);
            mlkt_fill_normal(dy, (size_t)n, 1.0);
            for (i = 0; i < n; i++) {
                params[i] = x[i];
                params[n + i] = gamma[i];
                params[2 * n + i] = 0;
                w[i] = dy[i];
            }
            ctx.n = n; ctx.center = center; ctx.w = w; ctx.eps = 1e-3f;
            if (center) {
                CHECK_INT(mlk_layernorm_fwd(1, n, x, gamma, NULL, 1e-3f, y, &mean, &rstd), MLK_OK);
                CHECK_INT(mlk_layernorm_bwd(1, n, x, gamma, &mean, &rstd, dy, dx, dgamma, dbeta), MLK_OK);
            } else {
                CHECK_INT(mlk_rmsnorm_fwd(1, n, x, gamma, 1e-3f, y, &rstd), MLK_OK);
                CHECK_INT(mlk_rmsnorm_bwd(1, n, x, gamma, &rstd, dy, dx, dgamma), MLK_OK);
            }
            for (i = 0; i < n; i++) scale = fabs(dy[i]) * rstd > scale ? fabs(dy[i]) * rstd : scale;
            for (i = 0; i < n; i++) {
                CHECK_CLOSE(dx[i], mlkt_fd(fd_loss, &ctx, params, (size_t)i, 1e-5), 0, 1e-5 * scale);
                CHECK_CLOSE(dgamma[i], mlkt_fd(fd_loss, &ctx, params, (size_t)(n + i), 1e-5), 1e-5, 1e-6);
                if (center) CHECK_CLOSE(dbeta[i], mlkt_fd(fd_loss, &ctx, params, (size_t)(2 * n + i), 1e-5), 1e-6, 1e-7);
            }
            mlkt_digest(dx, n * sizeof(float));
            mlkt_free(x); mlkt_free(gamma); mlkt_free(dy); mlkt_free(y); mlkt_free(dx);
            mlkt_free(dgamma); mlkt_free(dbeta);
        }
}

/* The naive float32 backward (factored formula, sequential sums, the float
   cache): the error yardstick for dx. */
static void naive_bwd_row(const float *x, const float *dy, const float *gamma, int n, float mean,
                          float rstd, int center, float *dx)
{
    float sum_g = 0, sum_gx = 0;
    int i;
    for (i = 0; i < n; i++) {
        float g = dy[i] * (gamma ? gamma[i] : 1.0f);
        sum_g += g;
        sum_gx += g * (x[i] - mean) * rstd;
    }
    for (i = 0; i < n; i++) {
        float g = dy[i] * (gamma ? gamma[i] : 1.0f);
        dx[i] = rstd * (g - (center ? sum_g / (float)n : 0.0f) - (x[i] - mean) * rstd * sum_gx / (float)n);
    }
}

/* dx against the written-out Jacobian, dgamma / dbeta against double sums. */
static void check_bwd(int rows, int dim, int center, int with_gamma, int want_dgamma, int want_dbeta,
                      double mean_shift, double spread)
{
    size_t count = (size_t)(size_t)rows * (size_t)dim, r, i;
    float *x = mlkt_floats(count), *dy = mlkt_floats(count), *dx = mlkt_floats(count), *y = mlkt_floats(count);
    float *naive = mlkt_floats(count), *gamma = mlkt_floats((size_t)dim), *dgamma = mlkt_floats((size_t)dim);
    float *dbeta = mlkt_floats((size_t)dim), *mean = mlkt_floats((size_t)rows), *rstd = mlkt_floats((size_t)rows);
    double *ref = (double *)malloc((size_t)count * sizeof(double)), *ref_dg = (double *)calloc((size_t)dim, sizeof(double));
    double *ref_db = (double *)calloc((size_t)dim, sizeof(double)), e, e_naive;
    float *naive_dg = (float *)calloc((size_t)dim, sizeof(float)), *naive_db = (float *)calloc((size_t)dim, sizeof(float));
    const float *g = with_gamma ? gamma : NULL;
    float *dg = want_dgamma ? dgamma : NULL, *db = want_dbeta && center ? dbeta : NULL;
    const float eps = 1e-5f;
    mlk_status st;
    for (i = 0; i < count; i++) x[i] = (float)(mean_shift + spread * mlkt_normal());
    mlkt_fill_normal(dy, count, 1.0);
    mlkt_fill_uniform(gamma, (size_t)dim, 0.5, 1.5);
    if (center) {
        CHECK_INT(mlk_layernorm_fwd(rows, dim, x, g, NULL, eps, y, mean, rstd), MLK_OK);
        st = mlk_layernorm_bwd(rows, dim, x, g, mean, rstd, dy, dx, dg, db);
    } else {
        CHECK_INT(mlk_rmsnorm_fwd(rows, dim, x, g, eps, y, rstd), MLK_OK);
        st = mlk_rmsnorm_bwd(rows, dim, x, g, rstd, dy, dx, dg);
    }
    CHECK_INT(st, MLK_OK);
    for (r = 0; r < (size_t)rows; r++) {
        double m = 0, rs, var = 0;
        ref_bwd_row(x + r * dim, dy + r * dim, g, dim, eps, center, ref + r * dim);
        /* RMS norm leaves mean[] unwritten (NaN): its naive yardstick uses 0 */
        const float mean_f = center ? mean[r] : 0.0f;
        naive_bwd_row(x + r * dim, dy + r * dim, g, dim, mean_f, rstd[r], center, naive + r * dim);
        if (center) {
            for (i = 0; i < (size_t)dim; i++) m += x[r * dim + i];
            m /= dim;
        }
        for (i = 0; i < (size_t)dim; i++) var += (x[r * dim + i] - m) * (x[r * dim + i] - m);
        rs = 1.0 / sqrt(var / dim + eps);
        for (i = 0; i < (size_t)dim; i++) {
            ref_dg[i] += dy[r * dim + i] * (x[r * dim + i] - m) * rs;
            ref_db[i] += dy[r * dim + i];
            naive_dg[i] += dy[r * dim + i] * (x[r * dim + i] - mean_f) * rstd[r];
            naive_db[i] += dy[r * dim + i];
        }
    }
    e = err_f(dx, ref, count);
    e_naive = err_f(naive, ref, count);
    if (mean_shift != 0) /* the cached mean is rounded; the kernel must not inherit that */
        CHECKF(e <= 1e-4 * max_abs(ref, count), "bwd mean %g: err %.3g (naive %.3g)", mean_shift, e, e_naive);
    else
        CHECK_NAIVE(e, e_naive, norm_floor(max_abs(ref, count)), "bwd %dx%d center %d", rows, dim, center);
    if (dg) {
        CHECKF(err_f(dgamma, ref_dg, (size_t)dim) <= 1e-5 * (max_abs(ref_dg, (size_t)dim) + sqrt((double)rows)),
               "dgamma %dx%d: err %.3g", rows, dim, err_f(dgamma, ref_dg, (size_t)dim));
        if (mean_shift == 0) /* and the tolerance rule against float32 sums over the rows */
            CHECK_NAIVE(err_f(dgamma, ref_dg, (size_t)dim), err_f(naive_dg, ref_dg, (size_t)dim),
                        norm_floor(max_abs(ref_dg, (size_t)dim)), "dgamma %dx%d center %d", rows, dim, center);
        mlkt_digest(dgamma, dim * sizeof(float));
    } else {
        CHECK(((const uint32_t *)(const void *)dgamma)[0] == 0xFFFFFFFFu);
    }
    if (db) {
        CHECKF(err_f(dbeta, ref_db, (size_t)dim) <= 1e-5 * (max_abs(ref_db, (size_t)dim) + sqrt((double)rows)),
               "dbeta %dx%d: err %.3g", rows, dim, err_f(dbeta, ref_db, (size_t)dim));
        CHECK_NAIVE(err_f(dbeta, ref_db, (size_t)dim), err_f(naive_db, ref_db, (size_t)dim),
                    norm_floor(max_abs(ref_db, (size_t)dim)), "dbeta %dx%d", rows, dim);
        mlkt_digest(dbeta, dim * sizeof(float));
    }
    mlkt_digest(dx, count * sizeof(float));
    free(ref); free(ref_dg); free(ref_db); free(naive_dg); free(naive_db);
    mlkt_free(x); mlkt_free(dy); mlkt_free(dx); mlkt_free(y); mlkt_free(naive); mlkt_free(gamma);
    mlkt_free(dgamma); mlkt_free(dbeta); mlkt_free(mean); mlkt_free(rstd);
}

static void test_bwd_formula(void)
{
    static const int shapes[][2] = {{1, 1}, {4, 1}, {3, 7}, {5, 16}, {7, 33}, {40, 64}, {33, 129}, {20, 300}};
    int s, center, combo;
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (center = 0; center < 2; center++)
            for (combo = 0; combo < 8; combo++)
                check_bwd(shapes[s][0], shapes[s][1], center, combo & 1, (combo >> 1) & 1, combo >> 2, 0.0, 1.0);
    for (center = 0; center < 2; center++) {
        check_bwd(6, 256, center, 1, 1, 1, 1e4, 1e-2);
        check_bwd(3, 9, center, 0, 1, 1, -2e4, 3e-2);
    }
}

/* Enough rows for several chunks of the dgamma reduction and for OpenMP to
   split the work: the digest must not depend on the thread count. */
static void test_bwd_large(void)
{
    int center;
    for (center = 0; center < 2; center++) {
        /* outputs of 4M floats or more take the non-temporal store path:
           with dim 1030 the rows start at every alignment */
        check_fwd(4100, 1030, center, 1, 1, 0.0, 1.0, 1e-5f);
        check_bwd(4100, 1030, center, 1, 1, 1, 0.0, 1.0);
        check_bwd(mlkt_quick() ? 300 : 1000, 160, center, 1, 1, 1, 0.0, 1.0);
        if (!mlkt_quick()) check_bwd(4500, 96, center, 1, 1, 1, 0.0, 2.0);
    }
}

/* Results must not depend on where the output buffers sit (the streaming
   path aligns its stores): outputs at two different offsets, bitwise equal. */
static void test_alignment(void)
{
    const int rows = 4100, dim = 1030; /* past the 4M-float streaming threshold */
    size_t count = (size_t)rows * dim;
    float *x = mlkt_floats(count), *dy = mlkt_floats(count), *mean = mlkt_floats((size_t)rows), *rstd = mlkt_floats((size_t)rows);
    float *y = mlkt_floats(count + 8), *dx = mlkt_floats(count + 8), *dg = mlkt_floats((size_t)dim + 8), *db = mlkt_floats((size_t)dim + 8);
    float *y0 = mlkt_floats(count), *dx0 = mlkt_floats(count), *dg0 = mlkt_floats((size_t)dim), *db0 = mlkt_floats((size_t)dim);
    int shift;
    mlkt_fill_normal(x, count, 2.0);
    mlkt_fill_normal(dy, count, 1.0);
    CHECK_INT(mlk_layernorm_fwd(rows, dim, x, NULL, NULL, 1e-5f, y0, mean, rstd), MLK_OK);
    CHECK_INT(mlk_layernorm_bwd(rows, dim, x, NULL, mean, rstd, dy, dx0, dg0, db0), MLK_OK);
    for (shift = 1; shift < 8; shift += 4) {
        CHECK_INT(mlk_layernorm_fwd(rows, dim, x, NULL, NULL, 1e-5f, y + shift, NULL, NULL), MLK_OK);
        CHECK_INT(mlk_layernorm_bwd(rows, dim, x, NULL, mean, rstd, dy, dx + shift, dg + shift, db + shift), MLK_OK);
        CHECKF(mlkt_same(y + shift, y0, count * sizeof(float)), "y at offset %d", shift);
        CHECKF(mlkt_same(dx + shift, dx0, count * sizeof(float)), "dx at offset %d", shift);
        CHECKF(mlkt_same(dg + shift, dg0, dim * sizeof(float)) && mlkt_same(db + shift, db0, dim * sizeof(float)),
               "dgamma/dbeta at offset %d", shift);
    }
    mlkt_digest(y0, count * sizeof(float));
    mlkt_digest(dx0, count * sizeof(float));
    mlkt_free(x); mlkt_free(dy); mlkt_free(mean); mlkt_free(rstd); mlkt_free(y); mlkt_free(dx);
    mlkt_free(dg); mlkt_free(db); mlkt_free(y0); mlkt_free(dx0); mlkt_free(dg0); mlkt_free(db0);
}

/* ---- bad inputs: the right code, and nothing written ---- */

#define NB 64 /* every output buffer below holds NB floats */

static float *bad_x, *bad_g, *bad_y, *bad_m, *bad_r, *bad_dy, *bad_dx, *bad_dg, *bad_db, *snap;

static void snap_outputs(void)
{
    memcpy(snap, bad_y, NB * sizeof(float));
    memcpy(snap + NB, bad_m, NB * sizeof(float));
    memcpy(snap + 2 * NB, bad_r, NB * sizeof(float));
    memcpy(snap + 3 * NB, bad_dx, NB * sizeof(float));
    memcpy(snap + 4 * NB, bad_dg, NB * sizeof(float));
    memcpy(snap + 5 * NB, bad_db, NB * sizeof(float));
}

static int outputs_untouched(void)
{
    return mlkt_same(snap, bad_y, NB * sizeof(float)) && mlkt_same(snap + NB, bad_m, NB * sizeof(float)) &&
           mlkt_same(snap + 2 * NB, bad_r, NB * sizeof(float)) && mlkt_same(snap + 3 * NB, bad_dx, NB * sizeof(float)) &&
           mlkt_same(snap + 4 * NB, bad_dg, NB * sizeof(float)) && mlkt_same(snap + 5 * NB, bad_db, NB * sizeof(float));
}

#define CHECK_BAD(call, code) do { snap_outputs(); CHECK_INT(call, code); CHECK(outputs_untouched()); } while (0)

static void test_bad_inputs(void)
{
    int i;
    bad_x = mlkt_floats(NB); bad_g = mlkt_floats(NB); bad_y = mlkt_floats(NB); bad_m = mlkt_floats(NB);
    bad_r = mlkt_floats(NB); bad_dy = mlkt_floats(NB); bad_dx = mlkt_floats(NB); bad_dg = mlkt_floats(NB);
    bad_db = mlkt_floats(NB); snap = mlkt_floats(6 * NB);
    mlkt_fill_normal(bad_x, NB, 1.0);
    mlkt_fill_normal(bad_dy, NB, 1.0);
    for (i = 0; i < NB; i++) { bad_g[i] = 1.0f; bad_m[i] = 0.0f; bad_r[i] = 1.0f; bad_y[i] = bad_dx[i] = bad_dg[i] = bad_db[i] = 12345.0f; }
    /* NULL pointers */
    CHECK_BAD(mlk_layernorm_fwd(4, 8, NULL, bad_g, bad_g, 1e-5f, bad_y, bad_m, bad_r), MLK_ERR_NULL);
    CHECK_BAD(mlk_layernorm_fwd(4, 8, bad_x, bad_g, bad_g, 1e-5f, NULL, bad_m, bad_r), MLK_ERR_NULL);
    CHECK_BAD(mlk_rmsnorm_fwd(4, 8, NULL, bad_g, 1e-5f, bad_y, bad_r), MLK_ERR_NULL);
    CHECK_BAD(mlk_rmsnorm_fwd(4, 8, bad_x, bad_g, 1e-5f, NULL, bad_r), MLK_ERR_NULL);
    CHECK_BAD(mlk_layernorm_bwd(4, 8, NULL, bad_g, bad_m, bad_r, bad_dy, bad_dx, bad_dg, bad_db), MLK_ERR_NULL);
    CHECK_BAD(mlk_layernorm_bwd(4, 8, bad_x, bad_g, NULL, bad_r, bad_dy, bad_dx, bad_dg, bad_db), MLK_ERR_NULL);
    CHECK_BAD(mlk_layernorm_bwd(4, 8, bad_x, bad_g, bad_m, NULL, bad_dy, bad_dx, bad_dg, bad_db), MLK_ERR_NULL);
    CHECK_BAD(mlk_layernorm_bwd(4, 8, bad_x, bad_g, bad_m, bad_r, NULL, bad_dx, bad_dg, bad_db), MLK_ERR_NULL);
    CHECK_BAD(mlk_layernorm_bwd(4, 8, bad_x, bad_g, bad_m, bad_r, bad_dy, NULL, bad_dg, bad_db), MLK_ERR_NULL);
    CHECK_BAD(mlk_rmsnorm_bwd(4, 8, NULL, bad_g, bad_r, bad_dy, bad_dx, bad_dg), MLK_ERR_NULL);
    CHECK_BAD(mlk_rmsnorm_bwd(4, 8, bad_x, bad_g, NULL, bad_dy, bad_dx, bad_dg), MLK_ERR_NULL);
    CHECK_BAD(mlk_rmsnorm_bwd(4, 8, bad_x, bad_g, bad_r, NULL, bad_dx, bad_dg), MLK_ERR_NULL);
    CHECK_BAD(mlk_rmsnorm_bwd(4, 8, bad_x, bad_g, bad_r, bad_dy, NULL, bad_dg), MLK_ERR_NULL);
    /* zero and negative sizes */
    for (i = 0; i < 4; i++) {
        int rows = i == 0 ? 0 : i == 1 ? -1 : 4, dim = i == 2 ? 0 : i == 3 ? INT_MIN : 8;
        CHECK_BAD(mlk_layernorm_fwd(rows, dim, bad_x, bad_g, bad_g, 1e-5f, bad_y, bad_m, bad_r), MLK_ERR_SHAPE);
        CHECK_BAD(mlk_rmsnorm_fwd(rows, dim, bad_x, bad_g, 1e-5f, bad_y, bad_r), MLK_ERR_SHAPE);
        CHECK_BAD(mlk_layernorm_bwd(rows, dim, bad_x, bad_g, bad_m, bad_r, bad_dy, bad_dx, bad_dg, bad_db), MLK_ERR_SHAPE);
        CHECK_BAD(mlk_rmsnorm_bwd(rows, dim, bad_x, bad_g, bad_r, bad_dy, bad_dx, bad_dg), MLK_ERR_SHAPE);
    }
    /* bad eps */
    CHECK_BAD(mlk_layernorm_fwd(4, 8, bad_x, NULL, NULL, -1e-5f, bad_y, bad_m, bad_r), MLK_ERR_ARG);
    CHECK_BAD(mlk_layernorm_fwd(4, 8, bad_x, NULL, NULL, NAN, bad_y, bad_m, bad_r), MLK_ERR_ARG);
    CHECK_BAD(mlk_rmsnorm_fwd(4, 8, bad_x, NULL, INFINITY, bad_y, bad_r), MLK_ERR_ARG);
    /* the dgamma/dbeta partials cannot be allocated */
    fail_alloc = 1;
    CHECK_BAD(mlk_layernorm_bwd(4, 8, bad_x, bad_g, bad_m, bad_r, bad_dy, bad_dx, bad_dg, bad_db), MLK_ERR_NOMEM);
    CHECK_BAD(mlk_rmsnorm_bwd(4, 8, bad_x, bad_g, bad_r, bad_dy, bad_dx, bad_dg), MLK_ERR_NOMEM);
    CHECK_INT(mlk_layernorm_bwd(4, 8, bad_x, bad_g, bad_m, bad_r, bad_dy, bad_dx, NULL, NULL), MLK_OK); /* needs none */
    fail_alloc = 0;
    mlkt_free(bad_x); mlkt_free(bad_g); mlkt_free(bad_y); mlkt_free(bad_m); mlkt_free(bad_r);
    mlkt_free(bad_dy); mlkt_free(bad_dx); mlkt_free(bad_dg); mlkt_free(bad_db); mlkt_free(snap);
}

int main(void)
{
    mlkt_file = "test_norm";
    MLKT_RUN(test_fwd_shapes, 1);
    MLKT_RUN(test_fwd_hard_rows, 2);
    MLKT_RUN(test_fwd_constant_rows, 3);
    MLKT_RUN(test_bwd_finite_diff, 4);
    MLKT_RUN(test_bwd_formula, 5);
    MLKT_RUN(test_bwd_large, 6);
    MLKT_RUN(test_alignment, 8);
    MLKT_RUN(test_bad_inputs, 7);
    return mlkt_finish();
}

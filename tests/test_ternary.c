/* ternary section: quantisers, packed ternary GEMM, BitLinear STE, AdamW.
   References are independent double-precision code (naive loops, int64
   sums), never the library's own code path. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include <float.h>

/* The documented layout, decoded independently: q of weight (r, c). */
static int tq_code(const uint8_t *packed, int cols, int r, int c)
{
    size_t row_bytes = ((size_t)cols + 3) / 4;
    return (packed[(size_t)r * row_bytes + (size_t)c / 4] >> (2 * (c % 4))) & 3;
}

/* Reference absmean quantisation in double; returns the scale. */
static double tq_ref_scale(const float *w, size_t count)
{
    double s = 0;
    size_t i;
    for (i = 0; i < count; i++) s += fabs((double)w[i]);
    s /= (double)count;
    return s < 1e-5 ? (double)MLK_TERNARY_EPS : s;
}

/* round(w / s) half away from zero, clamped, on the exact quotient. */
static int tq_ref_q(double w, double s)
{
    double r = w / s;
    if (r >= 0.5) return 1;
    if (r <= -0.5) return -1;
    return 0;
}

static void check_quant_case(int rows, int cols, const float *w)
{
    size_t count = (size_t)rows * cols, row_bytes = ((size_t)cols + 3) / 4;
    uint8_t *packed = (uint8_t *)mlkt_alloc((size_t)rows * row_bytes);
    float *deq = mlkt_floats(count), *scale = mlkt_floats(1);
    double s_ref = tq_ref_scale(w, count);
    int r, c, bad_code = 0, bad_pad = 0, bad_deq = 0;
    CHECK_INT(mlk_ternary_quant(rows, cols, w, packed, scale), MLK_OK);
    CHECK_CLOSE(scale[0], s_ref, 1e-6, 0);
    CHECK_INT(mlk_ternary_dequant(rows, cols, packed, scale[0], deq), MLK_OK);
    for (r = 0; r < rows; r++) {
        for (c = 0; c < cols; c++) {
            size_t at = (size_t)r * cols + c;
            /* the boundary is decided on the kernel's own float scale */
            int q = tq_ref_q(w[at], scale[0]);
            if (tq_code(packed, cols, r, c) != q + 1) bad_code++;
            if ((double)deq[at] != (double)scale[0] * q) bad_deq++;
        }
        for (c = cols; c < (int)(row_bytes * 4); c++)
            if (tq_code(packed, cols, r, c) != 1) bad_pad++;
    }
    CHECKF(bad_code == 0, "rows %d cols %d: %d codes differ", rows, cols, bad_code);
    CHECKF(bad_pad == 0, "rows %d cols %d: %d padding codes not 1", rows, cols, bad_pad);
    CHECKF(bad_deq == 0, "rows %d cols %d: %d dequantised values differ", rows, cols, bad_deq);
    mlkt_digest(packed, (size_t)rows * row_bytes);
    mlkt_digest(deq, count * sizeof(float));
    mlkt_free(packed);
    mlkt_free(deq);
    mlkt_free(scale);
}

static void test_quant_round_trip(void)
{
    static const int sizes[] = { 1, 2, 3, 4, 5, 7, 33, 130 };
    int a, b;
    for (a = 0; a < 8; a++)
        for (b = 0; b < 8; b++) {
            int rows = sizes[a] > 33 ? 9 : sizes[a], cols = sizes[b];
            size_t count = (size_t)rows * cols;
            float *w = (float *)malloc(count * sizeof(float));
            mlkt_fill_normal(w, count, 0.02);
            if (rows > 2) memset(w + cols, 0, (size_t)cols * sizeof(float)); /* a zero row */
            check_quant_case(rows, cols, w);
            free(w);
        }
    { /* a large matrix: the parallel absmean sum */
        int rows = 300, cols = 1001;
        float *w = (float *)malloc((size_t)rows * cols * sizeof(float));
        mlkt_fill_uniform(w, (size_t)rows * cols, -1, 1);
        check_quant_case(rows, cols, w);
        free(w);
    }
    { /* all zeros: scale is the eps, every code is 0 */
        float w[10] = { 0 };
        uint8_t packed[9];
        float scale = 0;
        int c;
        CHECK_INT(mlk_ternary_quant(3, 3, w, packed, &scale), MLK_OK);
        CHECK(scale == MLK_TERNARY_EPS);
        for (c = 0; c < 9; c++) CHECK_INT(tq_code(packed, 3, c / 3, c % 3), 1);
        check_quant_case(2, 5, w);
    }
}

/* Values exactly at and one ulp either side of s / 2 with s = mean|w| = 1
   exactly: a = 0.5 - 2^-25 (just below), b = 0.5 + 2^-24 (just above). */
static void test_quant_rounding_boundary(void)
{
    const float a = 0.5f - 1.0f / 33554432.0f, b = 0.5f + 1.0f / 16777216.0f;
    float w[8];
    static const int want[8] = { 0, 0, 1, 1, -1, 1, -1, 1 };
    static const int shapes[3][2] = { { 1, 8 }, { 2, 4 }, { 8, 1 } };
    int sh, i;
    w[0] = a; w[1] = -a; w[2] = b; w[3] = 0.5f; w[4] = -0.5f;
    w[5] = 2.0f; w[6] = -2.0f; w[7] = 1.5f;
    for (sh = 0; sh < 3; sh++) {
        int rows = shapes[sh][0], cols = shapes[sh][1];
        uint8_t packed[8];
        float scale = 0;
        CHECK_INT(mlk_ternary_quant(rows, cols, w, packed, &scale), MLK_OK);
        CHECK(scale == 1.0f);
        for (i = 0; i < 8; i++) CHECK_INT(tq_code(packed, cols, i / cols, i % cols) - 1, want[i]);
        mlkt_digest(packed, (size_t)rows * (((size_t)cols + 3) / 4));
    }
}

/* Reference act quant: accepts either neighbour when x * 127 / amax is
   within 1e-4 of a rounding boundary (the kernel's float product may land
   on either side). */
static void check_act_quant(int rows, int cols, const float *x)
{
    size_t count = (size_t)rows * cols;
    int8_t *xq = (int8_t *)mlkt_alloc(count);
    float *xscale = mlkt_floats((size_t)rows);
    int r, c, bad = 0;
    CHECK_INT(mlk_act_quant_i8(rows, cols, x, xq, xscale), MLK_OK);
    for (r = 0; r < rows; r++) {
        double amax = 0;
        for (c = 0; c < cols; c++) amax = fmax(amax, fabs((double)x[(size_t)r * cols + c]));
        CHECK_CLOSE(xscale[r], amax / 127, 1.2e-7, 0);
        for (c = 0; c < cols; c++) {
            double v = amax > 0 ? (double)x[(size_t)r * cols + c] * 127 / amax : 0;
            double lo = floor(fabs(v)), frac = fabs(v) - lo;
            int got = xq[(size_t)r * cols + c], want = (int)(v < 0 ? -floor(fabs(v) + 0.5) : floor(v + 0.5));
            if (fabs(frac - 0.5) < 1e-4) {
                int other = v < 0 ? -(int)lo : (int)lo;
                if (got != want && got != other) bad++;
            } else if (got != want) {
                bad++;
            }
            if (got < -127 || got > 127) bad++;
        }
    }
    CHECKF(bad == 0, "rows %d cols %d: %d codes wrong", rows, cols, bad);
    mlkt_digest(xq, count);
    mlkt_digest(xscale, (size_t)rows * sizeof(float));
    mlkt_free(xq);
    mlkt_free(xscale);
}

static void test_act_quant(void)
{
    static const int cols_list[] = { 1, 5, 33, 300, 4099 };
    int i;
    for (i = 0; i < 5; i++) {
        int cols = cols_list[i], rows = cols > 4000 ? 64 : 6; /* 64 x 4099: threads split it */
        float *x = (float *)malloc((size_t)rows * cols * sizeof(float));
        mlkt_fill_normal(x, (size_t)rows * cols, 3.0);
        memset(x + 2 * (size_t)cols, 0, (size_t)cols * sizeof(float)); /* zero row */
        x[4 * (size_t)cols] = -1e-30f;                                   /* tiny row */
        check_act_quant(rows, cols, x);
        free(x);
    }
    { /* halves round away from zero; zero row: scale 0, codes 0 */
        const float x[10] = { 127, 63.5f, -63.5f, 0.5f, -0.5f, 0, 0, 0, 0, 0 };
        int8_t xq[10];
        float xscale[2];
        static const int want[5] = { 127, 64, -64, 1, -1 };
        CHECK_INT(mlk_act_quant_i8(2, 5, x, xq, xscale), MLK_OK);
        for (i = 0; i < 5; i++) CHECK_INT(xq[i], want[i]);
        for (i = 5; i < 10; i++) CHECK_INT(xq[i], 0);
        CHECK(xscale[0] == 1.0f && xscale[1] == 0.0f);
    }
}

/* ---- ternary GEMM vs an int64 reference ---- */

static uint8_t *tq_random_weights(int n, int k)
{
    size_t bytes = (size_t)(unsigned)n * (((size_t)(unsigned)k + 3) / 4), i;
    uint8_t *w = (uint8_t *)mlkt_alloc(bytes);
    for (i = 0; i < bytes; i++) { /* codes 0..2 everywhere, padding included */
        int j, byte = 0;
        for (j = 0; j < 4; j++) byte |= mlkt_int(3) << (2 * j);
        w[i] = (uint8_t)byte;
    }
    return w;
}

static int64_t tq_ref_dot(const int8_t *x, const uint8_t *w, int k, int j)
{
    int64_t acc = 0;
    int c;
    for (c = 0; c < k; c++) acc += (int64_t)x[c] * (tq_code(w, k, j, c) - 1);
    return acc;
}

/* Checks `samples` entries (all when <= 0); xscale = wscale = 1 makes the
   result the exact integer (|dot| < 2^24 here), then a scaled call. */
static void check_gemm(int m, int n, int k, int x_lo, int x_hi, int samples)
{
    size_t mk = (unsigned)(m * k), mn = (unsigned)(m * n); /* small here; keeps gcc's range analysis calm */
    int8_t *xq = (int8_t *)mlkt_alloc(mk);
    float *ones = mlkt_floats((unsigned)m), *xscale = mlkt_floats((unsigned)m);
    float *y = mlkt_floats(mn), *ys = mlkt_floats(mn);
    uint8_t *wp = tq_random_weights(n, k);
    float wscale = (float)mlkt_uniform(0.01, 2);
    size_t i;
    int s, total = samples > 0 ? samples : m * n, bad = 0, bad_scaled = 0;
    for (i = 0; i < (size_t)m * k; i++) xq[i] = (int8_t)(x_lo + mlkt_int(x_hi - x_lo + 1));
    for (i = 0; i < (size_t)m; i++) { ones[i] = 1; xscale[i] = (float)mlkt_uniform(0.001, 1); }
    CHECK_INT(mlk_ternary_gemm(m, n, k, xq, ones, wp, 1.0f, y), MLK_OK);
    CHECK_INT(mlk_ternary_gemm(m, n, k, xq, xscale, wp, wscale, ys), MLK_OK);
    for (s = 0; s < total; s++) {
        int at = samples > 0 ? mlkt_int(m * n) : s, r = at / n, j = at % n;
        int64_t want = tq_ref_dot(xq + (size_t)r * k, wp, k, j);
        double want_scaled = (double)xscale[r] * wscale * (double)want;
        if ((double)y[at] != (double)want) bad++;
        /* two float roundings: the product of scales and the final one */
        if (!mlkt_close(ys[at], want_scaled, 3e-7, 1e-30)) bad_scaled++;
    }
    CHECKF(bad == 0, "m %d n %d k %d: %d of %d dots differ", m, n, k, bad, total);
    CHECKF(bad_scaled == 0, "m %d n %d k %d: %d scaled outputs off", m, n, k, bad_scaled);
    mlkt_digest(y, (size_t)m * n * sizeof(float));
    mlkt_digest(ys, (size_t)m * n * sizeof(float));
    mlkt_free(xq); mlkt_free(ones); mlkt_free(xscale); mlkt_free(y); mlkt_free(ys); mlkt_free(wp);
}

static void test_gemm_shapes(void)
{
    static const int ms[] = { 1, 3, 64 }, nks[] = { 1, 5, 33, 127, 128, 129, 4096 };
    int a, b, c;
    for (a = 0; a < 3; a++)
        for (b = 0; b < 7; b++)
            for (c = 0; c < 7; c++) {
                int m = ms[a], n = nks[b], k = nks[c];
                double work = (double)m * n * k;
                /* big shapes: every entry outside quick mode up to 1e8, else a sample */
                int samples = work > (mlkt_quick() ? 2e6 : 1.2e8) ? 3000 : 0;
                check_gemm(m, n, k, -127, 127, samples);
            }
    check_gemm(7, 11008 / 8, 4096 + 96, -128, 127, mlkt_quick() ? 500 : 0);
}

/* +-127 (and -128) everywhere with all-+1 or all--1 weights: the largest
   sums, which must not saturate int16 pair sums or int32 lanes. */
static void test_gemm_extremes(void)
{
    static const int ks[] = { 4096, 4097, 65536 + 3, MLK_TERNARY_MAX_K };
    int i, sign, xv;
    for (i = 0; i < 4; i++)
        for (sign = 0; sign < 2; sign++)
            for (xv = 0; xv < 3; xv++) {
                int m = i == 3 ? 1 : 5, n = i == 3 ? 2 : 3, k = ks[i];
                int x_val = xv == 0 ? 127 : (xv == 1 ? -127 : -128);
                size_t row_bytes = ((size_t)k + 3) / 4, e;
                uint8_t *w = (uint8_t *)mlkt_alloc((size_t)n * row_bytes);
                int8_t *xq = (int8_t *)mlkt_alloc((size_t)m * k);
                float *xscale = mlkt_floats((size_t)m), *y = mlkt_floats((size_t)m * n);
                int r, bad = 0;
                if (i == 3 && mlkt_quick() && xv != 2) { mlkt_free(w); mlkt_free(xq); mlkt_free(xscale); mlkt_free(y); continue; }
                memset(w, sign ? 0x00 : 0xAA, (size_t)n * row_bytes); /* all -1 / all +1 */
                memset(xq, x_val & 0xFF, (size_t)m * k);
                for (r = 0; r < m; r++) xscale[r] = 1;
                CHECK_INT(mlk_ternary_gemm(m, n, k, xq, xscale, w, 1.0f, y), MLK_OK);
                for (e = 0; e < (size_t)m * n; e++)
                    if ((double)y[e] != (double)x_val * (sign ? -1 : 1) * k) bad++;
                CHECKF(bad == 0, "k %d x %d sign %d: %d outputs wrong", k, x_val, sign, bad);
                mlkt_digest(y, (size_t)m * n * sizeof(float));
                mlkt_free(w); mlkt_free(xq); mlkt_free(xscale); mlkt_free(y);
            }
}

/* ---- BitLinear: the STE formulas in double ----
   The straight-through gradients are linear in dy by definition, so a
   finite difference of a surrogate would only restate the formula; the
   check is the kernel's dx, dw against the formula evaluated in double on
   independently quantised x^ and W^ (tolerance: mlkt.h's rule). */

typedef struct tq_bitlinear_ref {
    int m, n, k;
    double *x_hat, *w_hat; /* fake-quantised x [m, k] and W [n, k] */
} tq_bitlinear_ref;

static void tq_ref_fake_quant(int m, int n, int k, const float *x, const float *w, tq_bitlinear_ref *ref)
{
    size_t i;
    int r, c;
    double s = tq_ref_scale(w, (size_t)n * k);
    ref->m = m; ref->n = n; ref->k = k;
    ref->x_hat = (double *)malloc((size_t)m * k * sizeof(double));
    ref->w_hat = (double *)malloc((size_t)n * k * sizeof(double));
    for (i = 0; i < (size_t)n * k; i++) ref->w_hat[i] = s * tq_ref_q(w[i], s);
    for (r = 0; r < m; r++) {
        double amax = 0;
        for (c = 0; c < k; c++) amax = fmax(amax, fabs((double)x[(size_t)r * k + c]));
        for (c = 0; c < k; c++) {
            double v = amax > 0 ? x[(size_t)r * k + c] * 127.0 / amax : 0;
            double q = v < 0 ? -floor(-v + 0.5) : floor(v + 0.5);
            ref->x_hat[(size_t)r * k + c] = q * amax / 127.0;
        }
    }
}

/* max error of the naive float32 product a [rows, inner] * b [inner, cols]
   (strided) against double, and of the kernel's result, both vs ref. */
static void tq_compare_matmul(const char *what, int rows, int cols, int inner, const float *got,
                              const double *ref, const float *a, size_t a_r, size_t a_i,
                              const float *b, size_t b_i, size_t b_c)
{
    double naive_err = 0, got_err = 0, ref_max = 0;
    int r, c, p;
    for (r = 0; r < rows; r++)
        for (c = 0; c < cols; c++) {
            float acc = 0;
            double want = ref[(size_t)r * cols + c];
            for (p = 0; p < inner; p++) acc += a[r * a_r + p * a_i] * b[p * b_i + c * b_c];
            naive_err = fmax(naive_err, fabs((double)acc - want));
            got_err = fmax(got_err, fabs((double)got[(size_t)r * cols + c] - want));
            if (got[(size_t)r * cols + c] != got[(size_t)r * cols + c]) got_err = INFINITY;
            ref_max = fmax(ref_max, fabs(want));
        }
    CHECK_NAIVE(got_err, naive_err, 1e-6 * ref_max + 1e-30, "%s %dx%d (inner %d)", what, rows, cols, inner);
}

static void check_bitlinear(int m, int n, int k)
{
    size_t xc = (size_t)m * k, wc = (size_t)n * k, yc = (size_t)m * n, i;
    float *x = mlkt_floats(xc), *w = mlkt_floats(wc), *dy = mlkt_floats(yc);
    float *y = mlkt_floats(yc), *dx = mlkt_floats(xc), *dw = mlkt_floats(wc);
    float *dx_only = mlkt_floats(xc), *dw_only = mlkt_floats(wc);
    float *x_hat_f = (float *)malloc(xc * sizeof(float)), *w_hat_f = (float *)malloc(wc * sizeof(float));
    double *y_ref = (double *)calloc(yc, sizeof(double)), *dx_ref = (double *)calloc(xc, sizeof(double));
    double *dw_ref = (double *)calloc(wc, sizeof(double));
    tq_bitlinear_ref ref;
    int r, j, c;
    mlkt_fill_normal(x, xc, 1.0);
    mlkt_fill_normal(w, wc, 0.05);
    mlkt_fill_normal(dy, yc, 1.0);
    tq_ref_fake_quant(m, n, k, x, w, &ref);
    for (i = 0; i < xc; i++) x_hat_f[i] = (float)ref.x_hat[i];
    for (i = 0; i < wc; i++) w_hat_f[i] = (float)ref.w_hat[i];
    for (r = 0; r < m; r++)
        for (j = 0; j < n; j++)
            for (c = 0; c < k; c++) {
                double xh = ref.x_hat[(size_t)r * k + c], wh = ref.w_hat[(size_t)j * k + c];
                double g = dy[(size_t)r * n + j];
                y_ref[(size_t)r * n + j] += xh * wh;
                dx_ref[(size_t)r * k + c] += g * wh;
                dw_ref[(size_t)j * k + c] += g * xh;
            }
    CHECK_INT(mlk_bitlinear_fwd(m, n, k, x, w, y), MLK_OK);
    CHECK_INT(mlk_bitlinear_bwd(m, n, k, x, w, dy, dx, dw), MLK_OK);
    CHECK_INT(mlk_bitlinear_bwd(m, n, k, x, w, dy, dx_only, NULL), MLK_OK);
    CHECK_INT(mlk_bitlinear_bwd(m, n, k, x, w, dy, NULL, dw_only), MLK_OK);
    tq_compare_matmul("y", m, n, k, y, y_ref, x_hat_f, (size_t)k, 1, w_hat_f, 1, (size_t)k);
    tq_compare_matmul("dx", m, k, n, dx, dx_ref, dy, (size_t)n, 1, w_hat_f, (size_t)k, 1);
    tq_compare_matmul("dw", n, k, m, dw, dw_ref, dy, 1, (size_t)n, x_hat_f, (size_t)k, 1);
    CHECK(mlkt_same(dx, dx_only, xc * sizeof(float)));
    CHECK(mlkt_same(dw, dw_only, wc * sizeof(float)));
    mlkt_digest(y, yc * sizeof(float));
    mlkt_digest(dx, xc * sizeof(float));
    mlkt_digest(dw, wc * sizeof(float));
    free(ref.x_hat); free(ref.w_hat); free(x_hat_f); free(w_hat_f);
    free(y_ref); free(dx_ref); free(dw_ref);
    mlkt_free(x); mlkt_free(w); mlkt_free(dy); mlkt_free(y); mlkt_free(dx); mlkt_free(dw);
    mlkt_free(dx_only); mlkt_free(dw_only);
}

static void test_bitlinear(void)
{
    check_bitlinear(3, 5, 7);
    check_bitlinear(4, 6, 33);
    check_bitlinear(1, 1, 1);
    check_bitlinear(16, 70, 130);
    if (!mlkt_quick()) check_bitlinear(64, 256, 300);
}

/* ---- AdamW vs a double reference ---- */

static void check_adamw(int n, const mlk_adamw_config *cfg, int steps)
{
    float *p = mlkt_floats((size_t)n), *g = mlkt_floats((size_t)n);
    float *m = mlkt_floats((size_t)n), *v = mlkt_floats((size_t)n);
    double *pd = (double *)malloc((size_t)n * sizeof(double));
    double *md = (double *)calloc((size_t)n, sizeof(double)), *vd = (double *)calloc((size_t)n, sizeof(double));
    double *m_mag = (double *)calloc((size_t)n, sizeof(double)); /* m with |g|: its rounding scale */
    const double ulp = FLT_EPSILON;
    int t, i, bad = 0;
    mlkt_fill_normal(p, (size_t)n, 1.0);
    for (i = 0; i < n; i++) { pd[i] = p[i]; m[i] = 0; v[i] = 0; }
    for (t = 1; t <= steps; t++) {
        double bc1 = 1 - pow(cfg->beta1, t), bc2 = 1 - pow(cfg->beta2, t);
        mlkt_fill_normal(g, (size_t)n, 0.1);
        if (t == 2) for (i = 0; i < n; i += 7) g[i] = 0;
        CHECK_INT(mlk_adamw_step(n, p, g, m, v, cfg, t), MLK_OK);
        for (i = 0; i < n; i++) {
            double denom, m_tol;
            pd[i] *= 1 - (double)cfg->lr * cfg->weight_decay;
            md[i] = cfg->beta1 * md[i] + (1 - (double)cfg->beta1) * g[i];
            m_mag[i] = cfg->beta1 * m_mag[i] + (1 - (double)cfg->beta1) * fabs((double)g[i]);
            vd[i] = cfg->beta2 * vd[i] + (1 - (double)cfg->beta2) * (double)g[i] * g[i];
            denom = sqrt(vd[i] / bc2) + cfg->eps;
            pd[i] -= cfg->lr * (md[i] / bc1) / denom;
            /* m may cancel: a few ulps of the magnitudes that were summed;
               p: a few ulps of p plus the update's error that m's causes */
            m_tol = 4 * ulp * m_mag[i] * t;
            if (!mlkt_close(m[i], md[i], 0, m_tol + 1e-30)) bad++;
            if (!mlkt_close(v[i], vd[i], 8 * ulp * t, 1e-30)) bad++;
            if (!mlkt_close(p[i], pd[i], 4 * ulp * t, cfg->lr * t * (8 * ulp + m_tol / bc1 / denom))) bad++;
        }
    }
    CHECKF(bad == 0, "n %d: %d values off after %d steps", n, bad, steps);
    mlkt_digest(p, (size_t)n * sizeof(float));
    mlkt_digest(m, (size_t)n * sizeof(float));
    mlkt_digest(v, (size_t)n * sizeof(float));
    free(pd); free(md); free(vd); free(m_mag);
    mlkt_free(p); mlkt_free(g); mlkt_free(m); mlkt_free(v);
}

static void test_adamw(void)
{
    mlk_adamw_config cfg;
    cfg.lr = 1e-3f; cfg.beta1 = 0.9f; cfg.beta2 = 0.999f; cfg.eps = 1e-8f; cfg.weight_decay = 1e-2f;
    check_adamw(1, &cfg, 5);
    check_adamw(1000, &cfg, 6);
    check_adamw(mlkt_quick() ? 20000 : 200000, &cfg, 4);
    cfg.lr = 3e-2f; cfg.beta1 = 0.5f; cfg.beta2 = 0.9f; cfg.eps = 1e-6f; cfg.weight_decay = 0.1f;
    check_adamw(777, &cfg, 8);
    cfg.beta1 = 0; cfg.beta2 = 0; cfg.weight_decay = 0;
    check_adamw(50, &cfg, 3);
}

/* ---- bad inputs: the right code and outputs untouched ---- */

#define TQ_SENTINEL 0x5A

static void test_bad_inputs(void)
{
    float w[40], x[40], dy[40], out[40], out2[40], before[40], scale = 7, xs[8];
    uint8_t packed[40], packed_before[40];
    int8_t xq[40];
    mlk_adamw_config cfg;
    int i;
    for (i = 0; i < 40; i++) { w[i] = (float)(i % 5) - 2; x[i] = (float)(i % 3); dy[i] = 1; xq[i] = (int8_t)i; }
    for (i = 0; i < 8; i++) xs[i] = 1;
    memset(packed, TQ_SENTINEL, sizeof packed);
    memcpy(packed_before, packed, sizeof packed);
    memset(out, TQ_SENTINEL, sizeof out);
    memset(out2, TQ_SENTINEL, sizeof out2);
    memcpy(before, out, sizeof out);

    CHECK_INT(mlk_ternary_quant(0, 4, w, packed, &scale), MLK_ERR_SHAPE);
    CHECK_INT(mlk_ternary_quant(4, -1, w, packed, &scale), MLK_ERR_SHAPE);
    CHECK_INT(mlk_ternary_quant(4, 4, NULL, packed, &scale), MLK_ERR_NULL);
    CHECK_INT(mlk_ternary_quant(4, 4, w, NULL, &scale), MLK_ERR_NULL);
    CHECK_INT(mlk_ternary_quant(4, 4, w, packed, NULL), MLK_ERR_NULL);
    w[13] = NAN;
    CHECK_INT(mlk_ternary_quant(4, 4, w, packed, &scale), MLK_ERR_VALUE);
    w[13] = -INFINITY;
    CHECK_INT(mlk_ternary_quant(4, 4, w, packed, &scale), MLK_ERR_VALUE);
    w[13] = 1;
    CHECK(mlkt_same(packed, packed_before, sizeof packed) && scale == 7);

    CHECK_INT(mlk_ternary_dequant(0, 4, packed, 1, out), MLK_ERR_SHAPE);
    CHECK_INT(mlk_ternary_dequant(2, 4, NULL, 1, out), MLK_ERR_NULL);
    CHECK_INT(mlk_ternary_dequant(2, 4, packed, 1, NULL), MLK_ERR_NULL);
    packed[0] = 0x01; packed[1] = 0x30; /* code 3 in the second row's byte */
    CHECK_INT(mlk_ternary_dequant(2, 4, packed, 1, out), MLK_ERR_VALUE);
    CHECK(mlkt_same(out, before, sizeof out));

    CHECK_INT(mlk_act_quant_i8(0, 4, x, xq, xs), MLK_ERR_SHAPE);
    CHECK_INT(mlk_act_quant_i8(2, 0, x, xq, xs), MLK_ERR_SHAPE);
    CHECK_INT(mlk_act_quant_i8(2, 4, NULL, xq, xs), MLK_ERR_NULL);
    CHECK_INT(mlk_act_quant_i8(2, 4, x, NULL, xs), MLK_ERR_NULL);
    CHECK_INT(mlk_act_quant_i8(2, 4, x, xq, NULL), MLK_ERR_NULL);
    {
        int8_t xq_before[40];
        float xs_before[8];
        memcpy(xq_before, xq, sizeof xq);
        memcpy(xs_before, xs, sizeof xs);
        x[6] = INFINITY;
        CHECK_INT(mlk_act_quant_i8(2, 4, x, xq, xs), MLK_ERR_VALUE);
        x[6] = NAN;
        CHECK_INT(mlk_act_quant_i8(2, 4, x, xq, xs), MLK_ERR_VALUE);
        x[6] = 0;
        CHECK(mlkt_same(xq, xq_before, sizeof xq) && mlkt_same(xs, xs_before, sizeof xs));
    }

    memset(packed, 0x55, sizeof packed);
    CHECK_INT(mlk_ternary_gemm(0, 2, 4, xq, xs, packed, 1, out), MLK_ERR_SHAPE);
    CHECK_INT(mlk_ternary_gemm(2, 0, 4, xq, xs, packed, 1, out), MLK_ERR_SHAPE);
    CHECK_INT(mlk_ternary_gemm(2, 2, -4, xq, xs, packed, 1, out), MLK_ERR_SHAPE);
    CHECK_INT(mlk_ternary_gemm(2, 2, 4, NULL, xs, packed, 1, out), MLK_ERR_NULL);
    CHECK_INT(mlk_ternary_gemm(2, 2, 4, xq, NULL, packed, 1, out), MLK_ERR_NULL);
    CHECK_INT(mlk_ternary_gemm(2, 2, 4, xq, xs, NULL, 1, out), MLK_ERR_NULL);
    CHECK_INT(mlk_ternary_gemm(2, 2, 4, xq, xs, packed, 1, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_ternary_gemm(2, 2, MLK_TERNARY_MAX_K + 1, xq, xs, packed, 1, out), MLK_ERR_OVERFLOW);
    CHECK(mlkt_same(out, before, sizeof out));

    CHECK_INT(mlk_bitlinear_fwd(0, 2, 4, x, w, out), MLK_ERR_SHAPE);
    CHECK_INT(mlk_bitlinear_fwd(2, 2, 4, NULL, w, out), MLK_ERR_NULL);
    CHECK_INT(mlk_bitlinear_fwd(2, 2, 4, x, NULL, out), MLK_ERR_NULL);
    CHECK_INT(mlk_bitlinear_fwd(2, 2, 4, x, w, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_bitlinear_fwd(2, 2, MLK_TERNARY_MAX_K + 1, x, w, out), MLK_ERR_OVERFLOW);
    w[3] = NAN;
    CHECK_INT(mlk_bitlinear_fwd(2, 2, 4, x, w, out), MLK_ERR_VALUE);
    CHECK_INT(mlk_bitlinear_bwd(2, 2, 4, x, w, dy, out, out2), MLK_ERR_VALUE);
    w[3] = 1;
    x[2] = NAN;
    CHECK_INT(mlk_bitlinear_fwd(2, 2, 4, x, w, out), MLK_ERR_VALUE);
    CHECK_INT(mlk_bitlinear_bwd(2, 2, 4, x, w, dy, out, out2), MLK_ERR_VALUE);
    x[2] = 1;
    CHECK_INT(mlk_bitlinear_bwd(2, 2, 4, x, w, NULL, out, out2), MLK_ERR_NULL);
    CHECK_INT(mlk_bitlinear_bwd(2, 0, 4, x, w, dy, out, out2), MLK_ERR_SHAPE);
    CHECK_INT(mlk_bitlinear_bwd(2, 2, MLK_TERNARY_MAX_K + 1, x, w, dy, out, out2), MLK_ERR_OVERFLOW);
    CHECK(mlkt_same(out, before, sizeof out) && mlkt_same(out2, before, sizeof out2));

    cfg.lr = 1e-3f; cfg.beta1 = 0.9f; cfg.beta2 = 0.999f; cfg.eps = 1e-8f; cfg.weight_decay = 0;
    memcpy(out2, before, sizeof out2);
    CHECK_INT(mlk_adamw_step(0, out, dy, out2, out2, &cfg, 1), MLK_ERR_SHAPE);
    CHECK_INT(mlk_adamw_step(4, NULL, dy, out2, out2, &cfg, 1), MLK_ERR_NULL);
    CHECK_INT(mlk_adamw_step(4, out, dy, out2, out2, NULL, 1), MLK_ERR_NULL);
    CHECK_INT(mlk_adamw_step(4, out, dy, out2, out2, &cfg, 0), MLK_ERR_ARG);
    cfg.beta1 = 1.0f;
    CHECK_INT(mlk_adamw_step(4, out, dy, out2, out2, &cfg, 1), MLK_ERR_ARG);
    cfg.beta1 = 0.9f; cfg.beta2 = -0.1f;
    CHECK_INT(mlk_adamw_step(4, out, dy, out2, out2, &cfg, 1), MLK_ERR_ARG);
    cfg.beta2 = 0.999f; cfg.lr = NAN;
    CHECK_INT(mlk_adamw_step(4, out, dy, out2, out2, &cfg, 1), MLK_ERR_ARG);
    cfg.lr = 1e-3f; cfg.weight_decay = -1;
    CHECK_INT(mlk_adamw_step(4, out, dy, out2, out2, &cfg, 1), MLK_ERR_ARG);
    CHECK(mlkt_same(out, before, sizeof out) && mlkt_same(out2, before, sizeof out2));
    CHECK_INT((int)mlk_ternary_row_bytes(0), 0);
    CHECK_INT((int)mlk_ternary_row_bytes(5), 2);
}

int main(void)
{
    mlkt_file = "test_ternary";
    MLKT_RUN(test_quant_round_trip, 1);
    MLKT_RUN(test_quant_rounding_boundary, 2);
    MLKT_RUN(test_act_quant, 3);
    MLKT_RUN(test_gemm_shapes, 4);
    MLKT_RUN(test_gemm_extremes, 5);
    MLKT_RUN(test_bitlinear, 6);
    MLKT_RUN(test_adamw, 7);
    MLKT_RUN(test_bad_inputs, 8);
    return mlkt_finish();
}

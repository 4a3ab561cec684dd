/* rope: rotary position embedding, forward and backward, against a double
   reference written from HF transformers' definitions (rotate_half for
   NeoX, rotate_every_two for GPT-J, the inv_freq of
   _compute_default/linear/llama3/yarn_parameters and YaRN's attention
   factor), the backward by central finite differences, bwd(fwd(x)) = x,
   exact pass-through of the dims past rot_dim, long positions, and every
   bad input. */
#include <stdlib.h>
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include <float.h>
#include <limits.h>

#define PI_D 3.14159265358979323846

/* ---- the double reference, following HF's code path ---- */

/* get_mscale: 0.1 ln(factor) + 1, 1 for factor <= 1 */
static double ref_get_mscale(double factor) { return factor <= 1 ? 1.0 : 0.1 * log(factor) + 1.0; }

/* find_correction_dim */
static double ref_correction_dim(double num_rotations, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (num_rotations * 2 * PI_D))) / (2 * log(base));
}

/* inv_freq[dim / 2] and the attention factor of a config */
static double ref_inv_freq(const mlk_rope_config *cfg, double *inv)
{
    int dim = cfg->rot_dim, half = dim / 2, i;
    double base = cfg->theta, factor = cfg->factor;
    for (i = 0; i < half; i++) inv[i] = 1.0 / pow(base, (double)(2 * i) / dim); /* 1 / base^(arange(0, dim, 2) / dim) */
    if (cfg->scaling == MLK_ROPE_SCALE_LINEAR)
        for (i = 0; i < half; i++) inv[i] /= factor;
    if (cfg->scaling == MLK_ROPE_SCALE_LLAMA3) {
        double old_len = cfg->original_max_position, lff = cfg->low_freq_factor, hff = cfg->high_freq_factor;
        double low_wavelen = old_len / lff, high_wavelen = old_len / hff;
        for (i = 0; i < half; i++) {
            double wavelen = 2 * PI_D / inv[i];
            double llama = wavelen > low_wavelen ? inv[i] / factor : inv[i];
            double smooth = (old_len / wavelen - lff) / (hff - lff);
            double smoothed = (1 - smooth) * llama / factor + smooth * llama;
            int medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
            inv[i] = medium ? smoothed : llama;
        }
    }
    if (cfg->scaling == MLK_ROPE_SCALE_YARN) {
        double beta_fast = cfg->beta_fast != 0 ? cfg->beta_fast : 32, beta_slow = cfg->beta_slow != 0 ? cfg->beta_slow : 1;
        double low = floor(ref_correction_dim(beta_fast, dim, base, cfg->original_max_position));
        double high = ceil(ref_correction_dim(beta_slow, dim, base, cfg->original_max_position));
        if (low < 0) low = 0;
        if (high > dim - 1) high = dim - 1;
        if (low == high) high += 0.001;
        for (i = 0; i < half; i++) {
            double pos_freq = pow(base, (double)(2 * i) / dim);
            double extrapolation = 1.0 / pos_freq, interpolation = 1.0 / (factor * pos_freq);
            double ramp = (i - low) / (high - low), extrapolation_factor;
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            extrapolation_factor = 1 - ramp;
            inv[i] = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
        }
        return cfg->attn_factor != 0 ? cfg->attn_factor : ref_get_mscale(factor);
    }
    return 1.0;
}

/* y = x * cos + rotate(x) * sin over the first rot_dim dims of every head,
   cos/sin of pos * inv_freq (sign -1: of -angle), times the attention
   factor; HF: cos = cat(freqs, freqs).cos() and rotate_half(x) =
   cat(-x2, x1) for NeoX, cos = freqs.repeat_interleave(2).cos() and
   rotate_every_two(x) = stack(-x[1::2], x[::2]) for GPT-J. */
static void ref_rope(const mlk_rope_config *cfg, int rows, int heads, const int32_t *pos, const double *x,
                     double sign, double *y)
{
    int D = cfg->head_dim, R = cfg->rot_dim, half = R / 2, r, h, e;
    double *inv = (double *)malloc(sizeof(double) * (size_t)half), *cosv = (double *)malloc(sizeof(double) * (size_t)R);
    double *sinv = (double *)malloc(sizeof(double) * (size_t)R), *rot = (double *)malloc(sizeof(double) * (size_t)R);
    double att = ref_inv_freq(cfg, inv);
    for (r = 0; r < rows; r++) {
        for (e = 0; e < R; e++) {
            int i = cfg->style == MLK_ROPE_NEOX ? e % half : e / 2;
            double freq = (double)pos[r] * inv[i];
            cosv[e] = cos(freq) * att;
            sinv[e] = sign * sin(freq) * att;
        }
        for (h = 0; h < heads; h++) {
            const double *xh = x + ((size_t)r * heads + h) * D;
            double *yh = y + ((size_t)r * heads + h) * D;
            for (e = 0; e < R; e++) {
                if (cfg->style == MLK_ROPE_NEOX) rot[e] = e < half ? -xh[e + half] : xh[e - half];
                else rot[e] = e % 2 == 0 ? -xh[e + 1] : xh[e - 1];
            }
            for (e = 0; e < R; e++) yh[e] = xh[e] * cosv[e] + rot[e] * sinv[e];
            for (e = R; e < D; e++) yh[e] = xh[e];
        }
    }
    free(inv); free(cosv); free(sinv); free(rot);
}

/* The naive float32 computation: the error yardstick (angles in float). */
static void naive_rope(const mlk_rope_config *cfg, int rows, int heads, const int32_t *pos, float *x, float sign)
{
    int D = cfg->head_dim, R = cfg->rot_dim, half = R / 2, r, h, i;
    double *invd = (double *)malloc(sizeof(double) * (size_t)half);
    float att = (float)ref_inv_freq(cfg, invd);
    for (r = 0; r < rows; r++)
        for (i = 0; i < half; i++) {
            float freq = (float)pos[r] * (float)invd[i];
            float c = cosf(freq) * att, s = sign * sinf(freq) * att;
            for (h = 0; h < heads; h++) {
                float *xh = x + ((size_t)r * heads + h) * D;
                int i1 = cfg->style == MLK_ROPE_NEOX ? i : 2 * i, i2 = cfg->style == MLK_ROPE_NEOX ? i + half : 2 * i + 1;
                float a = xh[i1], b = xh[i2];
                xh[i1] = a * c - b * s;
                xh[i2] = b * c + a * s;
            }
        }
    free(invd);
}

static double max_abs(const double *a, size_t n)
{
    double m = 0;
    size_t i;
    for (i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* 4 float ulps of the output's scale (at least 1) */
static double rope_floor(double scale) { return mlkt_ulps(4, scale > 1 ? scale : 1); }

/* ---- configs ---- */

#define N_CFG 9
static mlk_rope_config make_cfg(int which, int style, int head_dim, int rot_dim)
{
    mlk_rope_config c;
    memset(&c, 0, sizeof c);
    c.head_dim = head_dim;
    c.rot_dim = rot_dim;
    c.style = style ? MLK_ROPE_GPTJ : MLK_ROPE_NEOX;
    c.theta = 10000.0f;
    switch (which) {
    case 0: break;                                                   /* plain, Llama 2 */
    case 1: c.theta = 1e6f; break;                                   /* Qwen's base */
    case 2: c.scaling = MLK_ROPE_SCALE_LINEAR; c.factor = 4.0f; break;
    case 3: /* Llama 3.1 */
        c.theta = 500000.0f; c.scaling = MLK_ROPE_SCALE_LLAMA3; c.factor = 8.0f;
        c.low_freq_factor = 1.0f; c.high_freq_factor = 4.0f; c.original_max_position = 8192; break;
    case 4: /* Llama 3.1's formula with a short original context: every band on small dims */
        c.theta = 500000.0f; c.scaling = MLK_ROPE_SCALE_LLAMA3; c.factor = 32.0f;
        c.low_freq_factor = 1.0f; c.high_freq_factor = 4.0f; c.original_max_position = 1024; break;
    case 5: /* YaRN with HF's defaults (beta 32 / 1, attention factor 0.1 ln 4 + 1) */
        c.scaling = MLK_ROPE_SCALE_YARN; c.factor = 4.0f; c.original_max_position = 4096; break;
    case 6: /* YaRN, everything given (DeepSeek-like) */
        c.theta = 1e6f; c.scaling = MLK_ROPE_SCALE_YARN; c.factor = 40.0f; c.original_max_position = 2048;
        c.beta_fast = 24.0f; c.beta_slow = 2.0f; c.attn_factor = 1.25f; break;
    case 7: /* YaRN with factor < 1: attention factor 1 */
        c.scaling = MLK_ROPE_SCALE_YARN; c.factor = 0.5f; c.original_max_position = 512; break;
    default: c.scaling = MLK_ROPE_SCALE_LINEAR; c.factor = 0.25f; break; /* extrapolation */
    }
    return c;
}

/* ---- forward against the reference ---- */

static void check_fwd(const mlk_rope_config *cfg, int rows, int heads, const int32_t *pos, double abs_ulps)
{
    size_t count = (size_t)rows * heads * cfg->head_dim, i;
    float *x = mlkt_floats(count), *y = mlkt_floats(count), *naive = mlkt_floats(count);
    double *xd = (double *)calloc(count, sizeof(double)), *ref = (double *)calloc(count, sizeof(double));
    double e, e_naive, scale;
    int pass_ok = 1;
    mlkt_fill_normal(x, count, 1.0);
    for (i = 0; i < count; i++) xd[i] = x[i];
    memcpy(y, x, count * sizeof(float));
    memcpy(naive, x, count * sizeof(float));
    CHECK_INT(mlk_rope_fwd(cfg, rows, heads, pos, y), MLK_OK);
    ref_rope(cfg, rows, heads, pos, xd, 1.0, ref);
    naive_rope(cfg, rows, heads, pos, naive, 1.0f);
    e = mlkt_max_abs_err(y, ref, count);
    e_naive = mlkt_max_abs_err(naive, ref, count);
    scale = max_abs(ref, count);
    CHECK_NAIVE(e, e_naive, rope_floor(scale), "fwd %dx%dx%d rot %d style %d scaling %d", rows, heads,
                cfg->head_dim, cfg->rot_dim, (int)cfg->style, (int)cfg->scaling);
    if (abs_ulps > 0) /* long positions: accurate, not just as good as float angles */
        CHECKF(e <= mlkt_ulps(abs_ulps, scale), "long positions: err %.3g (naive %.3g), scale %.3g", e, e_naive, scale);
    for (i = 0; i < count; i++) /* past rot_dim: the same bits */
        if ((int)(i % cfg->head_dim) >= cfg->rot_dim && memcmp(&x[i], &y[i], sizeof(float)) != 0) pass_ok = 0;
    CHECK(pass_ok);
    mlkt_digest(y, count * sizeof(float));
    free(xd); free(ref);
    mlkt_free(x); mlkt_free(y); mlkt_free(naive);
}

static int32_t *random_positions(int rows, int max_pos)
{
    int32_t *pos = (int32_t *)mlkt_alloc((size_t)rows * sizeof(int32_t));
    int r;
    for (r = 0; r < rows; r++) pos[r] = (int32_t)mlkt_int(max_pos);
    if (rows > 1) pos[0] = 0;
    return pos;
}

static void test_fwd_shapes(void)
{
    /* rows, heads, head_dim, rot_dim */
    static const int shapes[][4] = {{1, 1, 2, 2}, {3, 2, 3, 2}, {4, 3, 6, 6}, {5, 2, 6, 4}, {3, 3, 10, 10},
                                    {4, 2, 10, 6}, {6, 5, 64, 64}, {3, 4, 64, 32}, {9, 4, 128, 128},
                                    {5, 2, 128, 64}, {2, 3, 80, 20}, {2, 2, 520, 520}, {2, 1, 1034, 1030}};
    int s, w, style;
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (w = 0; w < N_CFG; w++)
            for (style = 0; style < 2; style++) {
                mlk_rope_config cfg = make_cfg(w, style, shapes[s][2], shapes[s][3]);
                int32_t *pos = random_positions(shapes[s][0], 8192);
                if (mlkt_quick() && shapes[s][2] > 500 && w > 1) { mlkt_free(pos); continue; }
                check_fwd(&cfg, shapes[s][0], shapes[s][1], pos, 0);
                mlkt_free(pos);
            }
}

/* Positions to 1 << 20 and past: the double angles keep every digit, so the
   error stays a few ulps while float angles lose all of them; INT32_MAX is
   valid too. */
static void test_long_positions(void)
{
    static const int32_t longs[] = {131072, 131071, 1 << 20, (1 << 20) - 1, 1000003, 524289, 65537, 8191, 1 << 22,
                                    (1 << 24) + 1};
    int rows = (int)(sizeof longs / sizeof longs[0]), w, style, d;
    static const int dims[3][2] = {{128, 128}, {64, 64}, {10, 6}};
    for (d = 0; d < 3; d++)
        for (w = 0; w < N_CFG; w++)
            for (style = 0; style < 2; style++) {
                mlk_rope_config cfg = make_cfg(w, style, dims[d][0], dims[d][1]);
                check_fwd(&cfg, rows, 3, longs, 4);
            }
    {
        static const int32_t huge[] = {INT32_MAX, INT32_MAX - 1, 1 << 30, 0};
        mlk_rope_config cfg = make_cfg(0, 0, 64, 64);
        check_fwd(&cfg, 4, 2, huge, 4);
        cfg = make_cfg(0, 1, 64, 64);
        check_fwd(&cfg, 4, 2, huge, 4);
    }
}

/* ---- backward ---- */

/* bwd(fwd(x)) = x (times attn_factor^2 for YaRN), past rot_dim bitwise. */
static void test_inverse(void)
{
    static const int shapes[][4] = {{3, 2, 6, 6}, {4, 3, 10, 6}, {5, 4, 64, 64}, {7, 3, 128, 128}, {3, 2, 128, 96},
                                    {2, 2, 600, 600}};
    int s, w, style;
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (w = 0; w < N_CFG; w++)
            for (style = 0; style < 2; style++) {
                mlk_rope_config cfg = make_cfg(w, style, shapes[s][2], shapes[s][3]);
                int rows = shapes[s][0], heads = shapes[s][1];
                size_t count = (size_t)rows * heads * cfg.head_dim, i;
                int32_t *pos = random_positions(rows, 1 << 20);
                float *x = mlkt_floats(count), *y = mlkt_floats(count);
                double *want = (double *)malloc(count * sizeof(double)), att, *inv;
                int pass_ok = 1;
                inv = (double *)malloc(sizeof(double) * (size_t)(cfg.rot_dim / 2));
                att = ref_inv_freq(&cfg, inv);
                mlkt_fill_normal(x, count, 1.0);
                memcpy(y, x, count * sizeof(float));
                CHECK_INT(mlk_rope_fwd(&cfg, rows, heads, pos, y), MLK_OK);
                CHECK_INT(mlk_rope_bwd(&cfg, rows, heads, pos, y), MLK_OK);
                for (i = 0; i < count; i++) {
                    int e = (int)(i % cfg.head_dim);
                    want[i] = e < cfg.rot_dim ? x[i] * att * att : x[i];
                    if (e >= cfg.rot_dim && memcmp(&x[i], &y[i], sizeof(float)) != 0) pass_ok = 0;
                }
                CHECKF(mlkt_max_abs_err(y, want, count) <= mlkt_ulps(6, att * att * max_abs(want, count)),
                       "bwd(fwd(x)) shape %d cfg %d style %d: err %.3g", s, w, style, mlkt_max_abs_err(y, want, count));
                CHECK(pass_ok);
                mlkt_digest(y, count * sizeof(float));
                free(want); free(inv);
                mlkt_free(x); mlkt_free(y); mlkt_free(pos);
            }
}

typedef struct fd_ctx {
    const mlk_rope_config *cfg;
    int rows, heads;
    const int32_t *pos;
    const double *w;
    double *y;
} fd_ctx;

/* L = sum(w * rope(x)) in double */
static double fd_loss(void *p, const double *x)
{
    fd_ctx *c = (fd_ctx *)p;
    size_t count = (size_t)c->rows * c->heads * c->cfg->head_dim, i;
    double l = 0;
    ref_rope(c->cfg, c->rows, c->heads, c->pos, x, 1.0, c->y);
    for (i = 0; i < count; i++) l += c->w[i] * c->y[i];
    return l;
}

/* dL/dx by central differences against mlk_rope_bwd(w) (and the naive
   float32 backward as the yardstick). */
static void test_bwd_finite_diff(void)
{
    static const int shapes[][4] = {{2, 2, 6, 6}, {3, 2, 10, 6}, {2, 3, 16, 16}, {2, 2, 64, 48}};
    int s, w, style;
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (w = 0; w < N_CFG; w++)
            for (style = 0; style < 2; style++) {
                mlk_rope_config cfg = make_cfg(w, style, shapes[s][2], shapes[s][3]);
                int rows = shapes[s][0], heads = shapes[s][1];
                size_t count = (size_t)rows * heads * cfg.head_dim, i;
                int32_t *pos = random_positions(rows, 100000);
                float *g = mlkt_floats(count), *naive = mlkt_floats(count);
                double *x = (double *)malloc(count * sizeof(double)), *wd = (double *)malloc(count * sizeof(double));
                double *fd = (double *)malloc(count * sizeof(double)), *ybuf = (double *)malloc(count * sizeof(double));
                fd_ctx ctx;
                mlkt_fill_normal(g, count, 1.0);
                for (i = 0; i < count; i++) {
                    wd[i] = g[i];
                    x[i] = mlkt_normal();
                }
                memcpy(naive, g, count * sizeof(float));
                ctx.cfg = &cfg; ctx.rows = rows; ctx.heads = heads; ctx.pos = pos; ctx.w = wd; ctx.y = ybuf;
                for (i = 0; i < count; i++) fd[i] = mlkt_fd(fd_loss, &ctx, x, i, 1e-3);
                CHECK_INT(mlk_rope_bwd(&cfg, rows, heads, pos, g), MLK_OK);
                naive_rope(&cfg, rows, heads, pos, naive, -1.0f);
                CHECK_NAIVE(mlkt_max_abs_err(g, fd, count), mlkt_max_abs_err(naive, fd, count),
                            rope_floor(max_abs(fd, count)), "bwd shape %d cfg %d style %d", s, w, style);
                mlkt_digest(g, count * sizeof(float));
                free(x); free(wd); free(fd); free(ybuf);
                mlkt_free(g); mlkt_free(naive); mlkt_free(pos);
            }
}

/* Large enough to run on several threads (MLK__PAR_ELEMS): tests/check.sh
   compares the digest of 1, 2, 3 and 4 threads. */
static void test_threads(void)
{
    int style, w;
    for (style = 0; style < 2; style++)
        for (w = 0; w < N_CFG; w += 3) {
            int rows = mlkt_quick() ? 40 : 200, heads = 8;
            mlk_rope_config cfg = make_cfg(w, style, 128, 128);
            int32_t *pos = random_positions(rows, 1 << 17);
            check_fwd(&cfg, rows, heads, pos, 0);
            mlkt_free(pos);
        }
}

/* ---- bad inputs: the status, and x untouched ---- */

#define NB 4096
static float *bad_x, *snap;

#define CHECK_BAD(call, code) do { memcpy(snap, bad_x, NB * sizeof(float)); CHECK_INT(call, code); \
    CHECK(mlkt_same(snap, bad_x, NB * sizeof(float))); } while (0)
#define CHECK_BAD2(cfg, rows, heads, pos, code) do { CHECK_BAD(mlk_rope_fwd(cfg, rows, heads, pos, bad_x), code); \
    CHECK_BAD(mlk_rope_bwd(cfg, rows, heads, pos, bad_x), code); } while (0)

static void test_bad_inputs(void)
{
    int32_t pos[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    mlk_rope_config good = make_cfg(0, 0, 8, 8), c;
    int i;
    bad_x = mlkt_floats(NB);
    snap = mlkt_floats(NB);
    mlkt_fill_normal(bad_x, NB, 1.0);
    /* NULLs */
    CHECK_BAD2(NULL, 4, 2, pos, MLK_ERR_NULL);
    CHECK_BAD2(&good, 4, 2, NULL, MLK_ERR_NULL);
    CHECK_INT(mlk_rope_fwd(&good, 4, 2, pos, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_rope_bwd(&good, 4, 2, pos, NULL), MLK_ERR_NULL);
    c = good; c.theta = NAN; /* NULL comes before values */
    CHECK_INT(mlk_rope_fwd(&c, 4, 2, NULL, bad_x), MLK_ERR_NULL);
    /* sizes, before values */
    CHECK_BAD2(&good, 0, 2, pos, MLK_ERR_SHAPE);
    CHECK_BAD2(&good, -1, 2, pos, MLK_ERR_SHAPE);
    CHECK_BAD2(&good, 4, 0, pos, MLK_ERR_SHAPE);
    CHECK_BAD2(&good, 4, INT_MIN, pos, MLK_ERR_SHAPE);
    {
        static const int bad_dims[][2] = {{0, 0}, {1, 1}, {1, 2}, {2, 0}, {3, 3}, {3, 1}, {8, 7}, {8, 10}, {-8, 8},
                                          {8, -2}, {6, 5}};
        for (i = 0; i < (int)(sizeof bad_dims / sizeof bad_dims[0]); i++) {
            c = good;
            c.head_dim = bad_dims[i][0];
            c.rot_dim = bad_dims[i][1];
            c.theta = 0.5f; /* a bad value too: the shape is reported */
            CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_SHAPE);
        }
    }
    c = good;
    c.head_dim = INT_MAX; c.rot_dim = 2;
    CHECK_BAD2(&c, INT_MAX, INT_MAX, pos, MLK_ERR_OVERFLOW);
    /* values */
    {
        static const float bad_theta[] = {1.0f, 0.5f, 0.0f, -10.0f, NAN, INFINITY};
        for (i = 0; i < 6; i++) {
            c = good;
            c.theta = bad_theta[i];
            CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
        }
    }
    c = good; c.style = (mlk_rope_style)2; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
    c = good; c.style = (mlk_rope_style)-1; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
    c = good; c.scaling = (mlk_rope_scaling)4; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
    c = good; c.scaling = (mlk_rope_scaling)-1; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
    {
        static const float bad_f[] = {0.0f, -1.0f, NAN, INFINITY, -INFINITY};
        for (i = 0; i < 5; i++) {
            float f = bad_f[i];
            c = make_cfg(2, 0, 8, 8); c.factor = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
            c = make_cfg(3, 0, 8, 8); c.factor = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
            c = make_cfg(3, 1, 8, 8); c.low_freq_factor = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
            c = make_cfg(3, 0, 8, 8); c.high_freq_factor = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
            c = make_cfg(5, 0, 8, 8); c.factor = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
            if (f != 0.0f) { /* 0 means the default for these */
                c = make_cfg(5, 1, 8, 8); c.beta_fast = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
                c = make_cfg(5, 0, 8, 8); c.beta_slow = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
                c = make_cfg(5, 0, 8, 8); c.attn_factor = f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
            }
        }
    }
    c = make_cfg(3, 0, 8, 8); c.low_freq_factor = 4.0f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG); /* low == high */
    c = make_cfg(3, 0, 8, 8); c.low_freq_factor = 5.0f; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
    c = make_cfg(3, 0, 8, 8); c.original_max_position = 0; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
    c = make_cfg(5, 0, 8, 8); c.original_max_position = -5; CHECK_BAD2(&c, 4, 2, pos, MLK_ERR_ARG);
    /* positions: a negative one anywhere, the last row included */
    pos[3] = -1;
    CHECK_BAD2(&good, 4, 2, pos, MLK_ERR_ARG);
    pos[3] = INT32_MIN;
    CHECK_BAD2(&good, 4, 2, pos, MLK_ERR_ARG);
    CHECK_BAD2(&good, 8, 2, pos, MLK_ERR_ARG);
    pos[3] = 3;
    CHECK_INT(mlk_rope_fwd(&good, 3, 2, pos, bad_x), MLK_OK); /* the negative row is not read */
    pos[3] = -1;
    CHECK_INT(mlk_rope_fwd(&good, 3, 2, pos, bad_x), MLK_OK);
    /* fields a scaling does not use are ignored */
    c = good; c.factor = NAN; c.low_freq_factor = -1.0f; c.original_max_position = -3; c.attn_factor = -2.0f;
    CHECK_INT(mlk_rope_fwd(&c, 4, 2, pos + 4, bad_x), MLK_OK);
    c = make_cfg(2, 0, 8, 8); c.beta_fast = NAN; c.high_freq_factor = -1.0f;
    CHECK_INT(mlk_rope_bwd(&c, 4, 2, pos + 4, bad_x), MLK_OK);
    /* the smallest valid shapes: head_dim 2 and 3 (rot_dim 2) */
    c = make_cfg(0, 1, 2, 2); CHECK_INT(mlk_rope_fwd(&c, 1, 1, pos, bad_x), MLK_OK);
    c = make_cfg(0, 0, 3, 2); CHECK_INT(mlk_rope_fwd(&c, 1, 1, pos, bad_x), MLK_OK);
    mlkt_free(bad_x); mlkt_free(snap);
}

int main(void)
{
    mlkt_file = "test_rope";
    MLKT_RUN(test_fwd_shapes, 1);
    MLKT_RUN(test_long_positions, 2);
    MLKT_RUN(test_inverse, 3);
    MLKT_RUN(test_bwd_finite_diff, 4);
    MLKT_RUN(test_threads, 5);
    MLKT_RUN(test_bad_inputs, 6);
    return mlkt_finish();
}

/* Decode-time attention: attention sinks (forward against the double
   reference, their gradient and the other gradients against finite
   differences of an independent double implementation; with windows,
   softcap, kv_len and tree masks against sref_forward), mlk_attn_merge
   against one pass over the union of the keys, mlk_kv_attn_opt against
   mlk_attn_fwd and sref_forward on the same keys for every option and row
   type, split-KV decode of long sequences, shared-prefix (cascade) decode,
   caller workspaces under a call that fans out, speculative sampling. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include "attn_ref.h"

static float *random_floats(size_t n, double stddev)
{
    float *x = mlkt_floats(n);
    mlkt_fill_normal(x, n, stddev);
    return x;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d != d) return INFINITY;
        if (d > e) e = d;
    }
    return e;
}

/* ---- an independent double forward: BHND, causal or full, sinks, one batch item ---- */

typedef struct ref_case {
    int hq, hkv, nq, nkv, dim, causal;
    double scale;
    const double *q, *k, *v, *sinks; /* sinks NULL: none */
} ref_case;

/* o [hq, nq, dim] and lse [hq, nq] in double */
static void ref_forward(const ref_case *c, double *o, double *lse)
{
    int group = c->hq / c->hkv, off = c->nkv - c->nq;
    double *s = (double *)malloc((size_t)c->nkv * sizeof(double));
    for (int h = 0; h < c->hq; h++)
        for (int i = 0; i < c->nq; i++) {
            const double *qi = c->q + ((size_t)h * c->nq + i) * c->dim;
            const double *kh = c->k + (size_t)(h / group) * c->nkv * c->dim, *vh = c->v + (size_t)(h / group) * c->nkv * c->dim;
            double m = c->sinks ? c->sinks[h] : -INFINITY, l = 0;
            double *oi = o + ((size_t)h * c->nq + i) * c->dim;
            int n_vis = c->causal ? i + off + 1 : c->nkv;
            if (n_vis > c->nkv) n_vis = c->nkv;
            for (int j = 0; j < n_vis; j++) {
                double dot = 0;
                for (int e = 0; e < c->dim; e++) dot += qi[e] * kh[(size_t)j * c->dim + e];
                s[j] = dot * c->scale;
                if (s[j] > m) m = s[j];
            }
            for (int e = 0; e < c->dim; e++) oi[e] = 0;
            if (m == -INFINITY) {
                lse[(size_t)h * c->nq + i] = -INFINITY;
                continue;
            }
            if (c->sinks && c->sinks[h] > -INFINITY) l = exp(c->sinks[h] - m);
            for (int j = 0; j < n_vis; j++) {
                double p = exp(s[j] - m);
                l += p;
                for (int e = 0; e < c->dim; e++) oi[e] += p * vh[(size_t)j * c->dim + e];
            }
            for (int e = 0; e < c->dim; e++) oi[e] /= l;
            lse[(size_t)h * c->nq + i] = m + log(l);
        }
    free(s);
}

typedef struct fd_ctx { ref_case c; const double *dout; double *o, *lse; double *which; } fd_ctx;

/* L = sum(dout * o), a function of the array `which` points into (x) */
static double fd_loss(void *ctx_, const double *x)
{
    fd_ctx *ctx = (fd_ctx *)ctx_;
    double L = 0;
    size_t n = (size_t)ctx->c.hq * ctx->c.nq * ctx->c.dim;
    (void)x;
    ref_forward(&ctx->c, ctx->o, ctx->lse);
    for (size_t i = 0; i < n; i++) L += ctx->dout[i] * ctx->o[i];
    return L;
}

static double *to_double(const float *x, size_t n)
{
    double *y = (double *)malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

/* ---- an independent forward of every rule of mlk_attn_desc, with sinks ----
   Any batch, either layout, kv_len, causal (bottom-right), window, softcap
   (s = c tanh(s / c)), a tree_parent mask and sinks (one more term of the
   denominator, never masked nor softcapped), from the definitions in
   mlkern.h. In double, or with every operation rounded to float (f32 = 1):
   the naive float32 computation that CHECK_NAIVE measures against. */

static int sref_sees(const mlk_attn_desc *d, int n_b, int i, int j)
{
    int off = n_b - d->len_q;
    long pi = i + off, pj = j;
    if (j >= n_b) return 0;
    if (d->tree_parent) {
        if (j >= off) { /* a tree node: ancestor-or-self only */
            int x = i;
            while (x >= 0 && x != j - off) x = d->tree_parent[x];
            if (x < 0) return 0;
            pj = off + attn_ref_depth(d->tree_parent, j - off);
        }
        pi = off + attn_ref_depth(d->tree_parent, i);
    } else if (d->causal && j > i + off) {
        return 0;
    }
    if (d->window > 0) return d->causal || d->tree_parent ? pj > pi - d->window : labs(pj - pi) < d->window;
    return 1;
}

static double sref_round(double x, int f32) { return f32 ? (double)(float)x : x; }

/* o in d's layout, lse [B, Hq, Nq]; sinks: NULL or [heads] (-inf: none) */
static void sref_forward(const mlk_attn_desc *d, const double *q, const double *k, const double *v,
                         const double *sinks, double *o, double *lse, int f32)
{
    const int hkv = d->kv_heads ? d->kv_heads : d->heads, nkv = d->len_kv ? d->len_kv : d->len_q;
    const double scale = d->scale != 0 ? (double)d->scale : 1.0 / sqrt((double)d->head_dim);
    double *s = (double *)malloc((size_t)nkv * sizeof(double)), *p = (double *)malloc((size_t)nkv * sizeof(double));
    for (int b = 0; b < d->batch; b++)
        for (int h = 0; h < d->heads; h++)
            for (int i = 0; i < d->len_q; i++) {
                const int kvh = h / (d->heads / hkv), n_b = d->kv_len ? d->kv_len[b] : nkv;
                const size_t qi = attn_ref_at(d, d->heads, d->len_q, b, h, i), li = ((size_t)b * d->heads + h) * d->len_q + i;
                const double sink = sinks ? sinks[h] : -INFINITY;
                double m = sink, l = 0;
                for (int j = 0; j < nkv; j++) {
                    const double *kj = k + attn_ref_at(d, hkv, nkv, b, kvh, j);
                    double dot = 0;
                    s[j] = -INFINITY;
                    if (!sref_sees(d, n_b, i, j)) continue;
                    for (int e = 0; e < d->head_dim; e++) dot = sref_round(dot + sref_round(q[qi + e] * kj[e], f32), f32);
                    s[j] = sref_round(dot * scale, f32);
                    if (d->softcap > 0) s[j] = sref_round(d->softcap * tanh(s[j] / d->softcap), f32);
                    m = s[j] > m ? s[j] : m;
                }
                for (int e = 0; e < d->head_dim; e++) o[qi + e] = 0;
                lse[li] = -INFINITY;
                if (m == -INFINITY) continue;
                if (sink > -INFINITY) l = sref_round(exp(sink - m), f32);
                for (int j = 0; j < nkv; j++) {
                    p[j] = s[j] == -INFINITY ? 0 : sref_round(exp(s[j] - m), f32);
                    l = sref_round(l + p[j], f32);
                }
                for (int j = 0; j < nkv; j++) { /* o accumulates sum_j p_j v_j in key order, then / l */
                    const double *vj = v + attn_ref_at(d, hkv, nkv, b, kvh, j);
                    if (p[j] == 0) continue;
                    for (int e = 0; e < d->head_dim; e++)
                        o[qi + e] = sref_round(o[qi + e] + sref_round(p[j] * vj[e], f32), f32);
                }
                for (int e = 0; e < d->head_dim; e++) o[qi + e] = sref_round(o[qi + e] / l, f32);
                lse[li] = sref_round(m + log(l), f32);
            }
    free(s);
    free(p);
}

static double sref_max_abs(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) < INFINITY && fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

/* sref_forward of d over float inputs in double (o, lse), and the bounds of
   the naive float32 rule for them: the float-rounded reference's error and
   a floor of 8 ulps of the largest value. */
typedef struct sref_bounds {
    double *o, *lse;
    double naive_o, naive_lse, floor_o, floor_lse;
} sref_bounds;

static void sref_bounds_make(const mlk_attn_desc *d, const float *q, const float *k, const float *v, sref_bounds *b)
{
    const size_t nqe = (size_t)d->batch * d->len_q * d->heads * d->head_dim;
    const size_t nkve = (size_t)d->batch * d->len_kv * d->kv_heads * d->head_dim, nrow = nqe / d->head_dim;
    double *qd = to_double(q, nqe), *kd = to_double(k, nkve), *vd = to_double(v, nkve);
    double *sd = d->sinks ? to_double(d->sinks, (size_t)d->heads) : NULL;
    double *o_nv = (double *)malloc(nqe * sizeof(double)), *lse_nv = (double *)malloc(nrow * sizeof(double));
    b->o = (double *)malloc(nqe * sizeof(double));
    b->lse = (double *)malloc(nrow * sizeof(double));
    sref_forward(d, qd, kd, vd, sd, b->o, b->lse, 0);
    sref_forward(d, qd, kd, vd, sd, o_nv, lse_nv, 1);
    b->naive_o = mlkt_max_abs_err_d(o_nv, b->o, nqe);
    b->naive_lse = mlkt_max_abs_err_d(lse_nv, b->lse, nrow);
    b->floor_o = mlkt_ulps(8, 1 + sref_max_abs(b->o, nqe));
    b->floor_lse = mlkt_ulps(8, 1 + sref_max_abs(b->lse, nrow));
    free(qd); free(kd); free(vd); free(sd); free(o_nv); free(lse_nv);
}

static void sref_bounds_free(sref_bounds *b)
{
    free(b->o);
    free(b->lse);
}

/* ---- sinks: forward vs the double references, gradients vs finite differences ---- */

static void check_sinks_case(int hq, int hkv, int nq, int nkv, int dim, int causal, int minus_inf_sink)
{
    mlk_attn_desc d;
    size_t nqe = (size_t)hq * nq * dim, nkve = (size_t)hkv * nkv * dim, nrow = (size_t)hq * nq;
    float *q = random_floats(nqe, 1.0), *k = random_floats(nkve, 1.0), *v = random_floats(nkve, 1.0);
    float *dout = random_floats(nqe, 1.0), *sinks = random_floats((size_t)hq, 1.5);
    float *o = mlkt_floats(nqe), *lse = mlkt_floats(nrow), *o_naive = mlkt_floats(nqe), *lse_naive = mlkt_floats(nrow);
    float *dq = mlkt_floats(nqe), *dk = mlkt_floats(nkve), *dv = mlkt_floats(nkve), *dsinks = mlkt_floats((size_t)hq);
    double *o_ref = (double *)malloc(nqe * sizeof(double)), *lse_ref = (double *)malloc(nrow * sizeof(double));
    double *qd, *kd, *vd, *sd, *doutd, err_o, err_lse;
    fd_ctx ctx;
    if (minus_inf_sink) sinks[0] = -INFINITY;
    memset(&d, 0, sizeof d);
    d.batch = 1; d.heads = hq; d.kv_heads = hkv; d.len_q = nq; d.len_kv = nkv; d.head_dim = dim;
    d.causal = causal; d.sinks = sinks; d.tile_kv = 5;
    qd = to_double(q, nqe); kd = to_double(k, nkve); vd = to_double(v, nkve); sd = to_double(sinks, (size_t)hq);
    doutd = to_double(dout, nqe);
    ctx.c.hq = hq; ctx.c.hkv = hkv; ctx.c.nq = nq; ctx.c.nkv = nkv; ctx.c.dim = dim; ctx.c.causal = causal;
    ctx.c.scale = (double)(1.0f / sqrtf((float)dim));
    ctx.c.q = qd; ctx.c.k = kd; ctx.c.v = vd; ctx.c.sinks = sd;
    ctx.dout = doutd; ctx.o = o_ref; ctx.lse = lse_ref;
    ref_forward(&ctx.c, o_ref, lse_ref);
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, lse), MLK_OK);
    CHECK_INT(mlk_attn_naive(&d, q, k, v, o_naive, lse_naive), MLK_OK);
    err_o = mlkt_max_abs_err(o, o_ref, nqe);
    err_lse = mlkt_max_abs_err(lse, lse_ref, nrow);
    CHECKF(err_o <= 2e-6 * sqrt((double)nkv), "sinks fwd o: err %.3g", err_o);
    CHECKF(err_lse <= 4e-6, "sinks fwd lse: err %.3g", err_lse);
    CHECKF(mlkt_max_abs_err(o_naive, o_ref, nqe) <= 1e-6, "naive with sinks");
    CHECKF(mlkt_max_abs_err(lse_naive, lse_ref, nrow) <= 1e-6, "naive lse with sinks");
    CHECK_INT(mlk_attn_bwd(&d, q, k, v, o, dout, lse, dq, dk, dv), MLK_OK);
    CHECK_INT(mlk_attn_sinks_grad(&d, o, dout, lse, dsinks), MLK_OK);
    for (int h = 0; h < hq; h++) { /* d L / d sink by central differences */
        double fd;
        if (sd[h] == -INFINITY) {
            CHECK(dsinks[h] == 0.0f);
            continue;
        }
        fd = mlkt_fd(fd_loss, &ctx, sd, (size_t)h, 1e-4);
        CHECKF(fabs(dsinks[h] - fd) <= 2e-4 * (fabs(fd) + 1e-2), "dsink[%d] %.7g fd %.7g", h, dsinks[h], fd);
    }
    for (int t = 0; t < 6; t++) { /* a few elements of dq, dk, dv */
        size_t iq = (size_t)mlkt_int((int)nqe), ik = (size_t)mlkt_int((int)nkve);
        double fq = mlkt_fd(fd_loss, &ctx, qd, iq, 1e-4), fk = mlkt_fd(fd_loss, &ctx, kd, ik, 1e-4);
        double fv = mlkt_fd(fd_loss, &ctx, vd, ik, 1e-4);
        CHECKF(fabs(dq[iq] - fq) <= 2e-4 * (fabs(fq) + 1e-2), "dq[%zu] %.7g fd %.7g", iq, dq[iq], fq);
        CHECKF(fabs(dk[ik] - fk) <= 2e-4 * (fabs(fk) + 1e-2), "dk[%zu] %.7g fd %.7g", ik, dk[ik], fk);
        CHECKF(fabs(dv[ik] - fv) <= 2e-4 * (fabs(fv) + 1e-2), "dv[%zu] %.7g fd %.7g", ik, dv[ik], fv);
    }
    mlkt_digest(o, nqe * sizeof(float));
    mlkt_digest(dq, nqe * sizeof(float));
    mlkt_digest(dsinks, (size_t)hq * sizeof(float));
    free(o_ref); free(lse_ref); free(qd); free(kd); free(vd); free(sd); free(doutd);
    mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(dout); mlkt_free(sinks); mlkt_free(o); mlkt_free(lse);
    mlkt_free(o_naive); mlkt_free(lse_naive); mlkt_free(dq); mlkt_free(dk); mlkt_free(dv); mlkt_free(dsinks);
}

static void test_sinks(void)
{
    check_sinks_case(4, 2, 7, 11, 8, 1, 0);  /* GQA, causal, Nq != Nkv */
    check_sinks_case(3, 1, 1, 20, 16, 1, 1); /* decode row (typed path), one sink -inf */
    check_sinks_case(2, 2, 9, 9, 5, 0, 0);   /* full attention */
}

/* ---- sinks with every mask: the forward vs sref_forward, the sink gradient vs its finite differences ---- */

typedef struct sinks_fd { const mlk_attn_desc *d; const double *q, *k, *v, *dout; double *o, *lse; size_t n_o; } sinks_fd;

/* L = sum(dout * o) as a function of the sinks */
static double sinks_fd_loss(void *ctx_, const double *sinks)
{
    sinks_fd *c = (sinks_fd *)ctx_;
    double L = 0;
    sref_forward(c->d, c->q, c->k, c->v, sinks, c->o, c->lse, 0);
    for (size_t i = 0; i < c->n_o; i++) L += c->dout[i] * c->o[i];
    return L;
}

/* d: everything but the sinks (random here, head 1's -inf when there are
   three heads or more). A row that sees no key must give o = 0 and
   lse = its sink exactly. */
static void check_sinks_masks(const char *what, mlk_attn_desc d)
{
    const int hkv = d.kv_heads ? d.kv_heads : d.heads, nkv = d.len_kv ? d.len_kv : d.len_q;
    const size_t nqe = (size_t)d.batch * d.heads * d.len_q * d.head_dim, nkve = (size_t)d.batch * hkv * nkv * d.head_dim;
    const size_t nrow = (size_t)d.batch * d.heads * d.len_q;
    float *q = random_floats(nqe, 1.0), *k = random_floats(nkve, 1.0), *v = random_floats(nkve, 1.0);
    float *dout = random_floats(nqe, 1.0), *sinks = random_floats((size_t)d.heads, 1.5);
    float *o = mlkt_floats(nqe), *lse = mlkt_floats(nrow), *dsinks = mlkt_floats((size_t)d.heads);
    double *qd = to_double(q, nqe), *kd = to_double(k, nkve), *vd = to_double(v, nkve), *doutd = to_double(dout, nqe);
    double *o_ref = (double *)malloc(nqe * sizeof(double)), *lse_ref = (double *)malloc(nrow * sizeof(double));
    double *o_nv = (double *)malloc(nqe * sizeof(double)), *lse_nv = (double *)malloc(nrow * sizeof(double)), *sd;
    int empty_rows = 0;
    sinks_fd ctx;
    if (d.heads >= 3) sinks[1] = -INFINITY;
    sd = to_double(sinks, (size_t)d.heads);
    d.sinks = sinks;
    sref_forward(&d, qd, kd, vd, sd, o_ref, lse_ref, 0);
    sref_forward(&d, qd, kd, vd, sd, o_nv, lse_nv, 1);
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, lse), MLK_OK);
    CHECK_NAIVE(mlkt_max_abs_err(o, o_ref, nqe), mlkt_max_abs_err_d(o_nv, o_ref, nqe),
                mlkt_ulps(8, 1 + sref_max_abs(o_ref, nqe)), "%s: o", what);
    CHECK_NAIVE(mlkt_max_abs_err(lse, lse_ref, nrow), mlkt_max_abs_err_d(lse_nv, lse_ref, nrow),
                mlkt_ulps(8, 1 + sref_max_abs(lse_ref, nrow)), "%s: lse", what);
    for (int b = 0; b < d.batch; b++) /* rows that see no key: exactly o = 0, lse = sink */
        for (int i = 0; i < d.len_q; i++) {
            const int n_b = d.kv_len ? d.kv_len[b] : nkv;
            int seen = 0;
            for (int j = 0; j < nkv; j++) seen += sref_sees(&d, n_b, i, j);
            if (seen) continue;
            for (int h = 0; h < d.heads; h++) {
                const size_t at = attn_ref_at(&d, d.heads, d.len_q, b, h, i);
                int zero = 1;
                for (int e = 0; e < d.head_dim; e++) zero &= o[at + e] == 0.0f;
                CHECKF(zero && lse[((size_t)b * d.heads + h) * d.len_q + i] == sinks[h],
                       "%s: batch %d query %d head %d sees no key: lse %g, sink %g", what, b, i, h,
                       lse[((size_t)b * d.heads + h) * d.len_q + i], sinks[h]);
                empty_rows++;
            }
        }
    if (d.kv_len && !d.tree_parent) CHECKF(empty_rows > 0, "%s: no row without keys", what); /* kv_len 0 */
    CHECK_INT(mlk_attn_sinks_grad(&d, o, dout, lse, dsinks), MLK_OK);
    ctx.d = &d; ctx.q = qd; ctx.k = kd; ctx.v = vd; ctx.dout = doutd; ctx.o = o_ref; ctx.lse = lse_ref; ctx.n_o = nqe;
    for (int h = 0; h < d.heads; h++) {
        double fd;
        if (sd[h] == -INFINITY) {
            CHECK(dsinks[h] == 0.0f);
            continue;
        }
        fd = mlkt_fd(sinks_fd_loss, &ctx, sd, (size_t)h, 1e-4);
        CHECKF(fabs(dsinks[h] - fd) <= 2e-4 * (fabs(fd) + 1e-2), "%s: dsink[%d] %.7g fd %.7g", what, h, dsinks[h], fd);
    }
    mlkt_digest(o, nqe * sizeof(float));
    mlkt_digest(lse, nrow * sizeof(float));
    mlkt_digest(dsinks, (size_t)d.heads * sizeof(float));
    free(qd); free(kd); free(vd); free(doutd); free(sd); free(o_ref); free(lse_ref); free(o_nv); free(lse_nv);
    mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(dout); mlkt_free(sinks); mlkt_free(o); mlkt_free(lse);
    mlkt_free(dsinks);
}

static void test_sinks_masks(void)
{
    static const int parent[7] = {-1, 0, 0, 1, -1, 4, 2}; /* two roots */
    int kv_a[3] = {0, 4, 17}, kv_b[2] = {12, 0}, kv_c[2] = {7, 20}, kv_d[2] = {0, 30};
    mlk_attn_desc d;
    memset(&d, 0, sizeof d); /* causal, window, softcap, kv_len: empty, shorter than len_q (rows without keys), full */
    d.batch = 3; d.heads = 4; d.kv_heads = 2; d.len_q = 6; d.len_kv = 17; d.head_dim = 8;
    d.causal = 1; d.window = 5; d.softcap = 8.0f; d.kv_len = kv_a; d.tile_kv = 4;
    check_sinks_masks("causal + window + softcap + kv_len", d);
    memset(&d, 0, sizeof d); /* no causal mask: |i - j| < window; BNHD */
    d.batch = 2; d.heads = 2; d.kv_heads = 1; d.len_q = 3; d.len_kv = 12; d.head_dim = 5;
    d.window = 4; d.kv_len = kv_b; d.layout = MLK_BNHD;
    check_sinks_masks("window (not causal) + kv_len", d);
    memset(&d, 0, sizeof d); /* a two-root tree, one item without prefix */
    d.batch = 2; d.heads = 3; d.kv_heads = 1; d.len_q = 7; d.len_kv = 20; d.head_dim = 8;
    d.tree_parent = parent; d.softcap = 5.0f; d.kv_len = kv_c; d.layout = MLK_BNHD;
    check_sinks_masks("tree + softcap + kv_len", d);
    d.window = 3; d.kv_len = NULL; d.softcap = 0;
    check_sinks_masks("tree + window", d);
    memset(&d, 0, sizeof d); /* decode rows (the typed path) */
    d.batch = 2; d.heads = 4; d.kv_heads = 2; d.len_q = 1; d.len_kv = 30; d.head_dim = 16;
    d.causal = 1; d.window = 7; d.softcap = 10.0f; d.kv_len = kv_d;
    check_sinks_masks("decode + window + softcap + kv_len", d);
}

/* A row that sees no key has o = 0 and lse = its sink; bad sinks are refused. */
static void test_sinks_edges(void)
{
    mlk_attn_desc d;
    int kv_len[2] = {0, 6};
    float sinks[2] = {0.75f, -2.0f}, q[2 * 2 * 3 * 4], k[2 * 2 * 6 * 4], o[2 * 2 * 3 * 4], lse[2 * 2 * 3];
    memset(&d, 0, sizeof d);
    d.batch = 2; d.heads = 2; d.len_q = 3; d.len_kv = 6; d.head_dim = 4; d.kv_len = kv_len; d.sinks = sinks;
    d.causal = 1;
    mlkt_fill_normal(q, sizeof q / sizeof q[0], 1.0);
    mlkt_fill_normal(k, sizeof k / sizeof k[0], 1.0);
    CHECK_INT(mlk_attn_fwd(&d, q, k, k, o, lse), MLK_OK);
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 3; i++) {
            CHECK(lse[h * 3 + i] == sinks[h]);
            for (int e = 0; e < 4; e++) CHECK(o[(h * 3 + i) * 4 + e] == 0.0f);
        }
    sinks[1] = NAN;
    CHECK_INT(mlk_attn_fwd(&d, q, k, k, o, lse), MLK_ERR_ARG);
    sinks[1] = INFINITY;
    CHECK_INT(mlk_attn_naive(&d, q, k, k, o, lse), MLK_ERR_ARG);
    d.sinks = NULL;
    CHECK_INT(mlk_attn_sinks_grad(&d, o, o, lse, sinks), MLK_ERR_NULL);
}

/* ---- merge: two halves of the keys give the state of all of them ---- */

static void test_merge(void)
{
    const int hq = 3, nq = 5, nkv = 23, dim = 12, split = 9;
    mlk_attn_desc d;
    size_t nqe = (size_t)hq * nq * dim, nrow = (size_t)hq * nq;
    float *q = random_floats(nqe, 1.0), *k = random_floats((size_t)hq * nkv * dim, 1.0);
    float *v = random_floats((size_t)hq * nkv * dim, 1.0);
    float *ka = mlkt_floats((size_t)hq * split * dim), *va = mlkt_floats((size_t)hq * split * dim);
    float *kb = mlkt_floats((size_t)hq * (nkv - split) * dim), *vb = mlkt_floats((size_t)hq * (nkv - split) * dim);
    float *oa = mlkt_floats(nqe), *ob = mlkt_floats(nqe), *o_all = mlkt_floats(nqe), *o = mlkt_floats(nqe);
    float *la = mlkt_floats(nrow), *lb = mlkt_floats(nrow), *l_all = mlkt_floats(nrow), *l = mlkt_floats(nrow);
    for (int h = 0; h < hq; h++) { /* keys [0, split) and [split, nkv) of each head */
        memcpy(ka + (size_t)h * split * dim, k + (size_t)h * nkv * dim, (size_t)split * dim * sizeof(float));
        memcpy(va + (size_t)h * split * dim, v + (size_t)h * nkv * dim, (size_t)split * dim * sizeof(float));
        memcpy(kb + (size_t)h * (nkv - split) * dim, k + ((size_t)h * nkv + split) * dim,
               (size_t)(nkv - split) * dim * sizeof(float));
        memcpy(vb + (size_t)h * (nkv - split) * dim, v + ((size_t)h * nkv + split) * dim,
               (size_t)(nkv - split) * dim * sizeof(float));
    }
    memset(&d, 0, sizeof d);
    d.batch = 1; d.heads = hq; d.len_q = nq; d.head_dim = dim;
    d.len_kv = nkv;
    CHECK_INT(mlk_attn_naive(&d, q, k, v, o_all, l_all), MLK_OK);
    d.len_kv = split;
    CHECK_INT(mlk_attn_fwd(&d, q, ka, va, oa, la), MLK_OK);
    d.len_kv = nkv - split;
    CHECK_INT(mlk_attn_fwd(&d, q, kb, vb, ob, lb), MLK_OK);
    CHECK_INT(mlk_attn_merge((int)nrow, dim, oa, la, ob, lb, o, l), MLK_OK);
    CHECKF(max_abs_diff(o, o_all, nqe) <= 1e-5, "merged o %.3g", max_abs_diff(o, o_all, nqe));
    CHECKF(max_abs_diff(l, l_all, nrow) <= 1e-5, "merged lse %.3g", max_abs_diff(l, l_all, nrow));
    /* in place, one side empty (-inf, any o: even NaN contributes nothing), both empty */
    for (int e = 0; e < dim; e++) ob[e] = NAN;
    lb[0] = -INFINITY;
    la[1] = lb[1] = -INFINITY;
    memcpy(o, oa, nqe * sizeof(float));
    memcpy(l, la, nrow * sizeof(float));
    CHECK_INT(mlk_attn_merge((int)nrow, dim, o, l, ob, lb, o, l), MLK_OK);
    CHECK(mlkt_same(o, oa, (size_t)dim * sizeof(float)) && l[0] == la[0]);
    CHECK(l[1] == -INFINITY);
    for (int e = 0; e < dim; e++) CHECK(o[dim + e] == 0.0f);
    CHECK_INT(mlk_attn_merge(0, dim, oa, la, ob, lb, o, l), MLK_ERR_SHAPE);
    CHECK_INT(mlk_attn_merge((int)nrow, dim, NULL, la, ob, lb, o, l), MLK_ERR_NULL);
    mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(ka); mlkt_free(va); mlkt_free(kb); mlkt_free(vb);
    mlkt_free(oa); mlkt_free(ob); mlkt_free(o_all); mlkt_free(o); mlkt_free(la); mlkt_free(lb); mlkt_free(l_all);
    mlkt_free(l);
}

/* ---- mlk_kv_attn_opt against mlk_attn_fwd on the same keys ---- */

typedef struct kv_fixture {
    mlk_kv_cache *c;
    int seq, len, hkv, dim;
    float *k, *v; /* the cache's contents as stored (dequantised), [len, hkv, dim] */
} kv_fixture;

static void kv_fixture_make(kv_fixture *f, mlk_kv_type type, int len, int hkv, int dim, int block)
{
    mlk_kv_config cfg;
    size_t n = (size_t)len * hkv * dim;
    float *k = random_floats(n, 1.0), *v = random_floats(n, 1.0);
    memset(&cfg, 0, sizeof cfg);
    cfg.layers = 2; cfg.kv_heads = hkv; cfg.head_dim = dim; cfg.block_size = block;
    cfg.num_blocks = (len + block - 1) / block + 1; cfg.max_seqs = 2; cfg.type = type;
    f->c = NULL;
    f->len = len; f->hkv = hkv; f->dim = dim;
    CHECK_INT(mlk_kv_create(&cfg, &f->c), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(f->c, &f->seq), MLK_OK);
    CHECK_INT(mlk_kv_append(f->c, f->seq, len), MLK_OK);
    CHECK_INT(mlk_kv_store(f->c, f->seq, 1, 0, len, k, v), MLK_OK);
    f->k = mlkt_floats(n);
    f->v = mlkt_floats(n);
    CHECK_INT(mlk_kv_load(f->c, f->seq, 1, 0, len, f->k, f->v), MLK_OK);
    mlkt_free(k); mlkt_free(v);
}

static void kv_fixture_free(kv_fixture *f)
{
    mlk_kv_destroy(f->c);
    mlkt_free(f->k); mlkt_free(f->v);
}

/* One call of mlk_kv_attn_opt and the same attention by mlk_attn_fwd (BNHD
   over the loaded keys: for F16, Q8 and Q4 the dequantised values the
   kernel reads), both against sref_forward over those keys in double: o,
   lse, and their difference, each within the naive float32 rule. */
static void check_kv_parity(kv_fixture *f, int heads, int n_q, const mlk_kv_attn_opts *opts, const char *what)
{
    mlk_attn_desc d;
    sref_bounds ref;
    size_t nqe = (size_t)n_q * heads * f->dim, nrow = (size_t)n_q * heads;
    float *q = random_floats(nqe, 1.0), *o = mlkt_floats(nqe), *o_ref = mlkt_floats(nqe);
    float *lse = mlkt_floats(nrow), *lse_ref = mlkt_floats(nrow), *lse_t = mlkt_floats(nrow);
    memset(&d, 0, sizeof d);
    d.batch = 1; d.heads = heads; d.kv_heads = f->hkv; d.len_q = n_q; d.len_kv = f->len; d.head_dim = f->dim;
    d.layout = MLK_BNHD; d.causal = 1; d.scale = opts->scale; d.window = opts->window; d.softcap = opts->softcap;
    d.sinks = opts->sinks; d.tree_parent = opts->tree_parent;
    if (d.tree_parent) d.causal = 0;
    sref_bounds_make(&d, q, f->k, f->v, &ref);
    CHECK_INT(mlk_attn_fwd(&d, q, f->k, f->v, o_ref, lse_ref), MLK_OK);
    CHECK_INT(mlk_kv_attn_opt(f->c, 1, 1, &f->seq, &n_q, q, heads, opts, o, lse), MLK_OK);
    for (int i = 0; i < n_q; i++) /* lse: kv [n_q, heads], attn_fwd [heads, n_q] */
        for (int h = 0; h < heads; h++) lse_t[(size_t)h * n_q + i] = lse[(size_t)i * heads + h];
    CHECK_NAIVE(mlkt_max_abs_err(o, ref.o, nqe), ref.naive_o, ref.floor_o, "%s: o", what);
    CHECK_NAIVE(mlkt_max_abs_err(o_ref, ref.o, nqe), ref.naive_o, ref.floor_o, "%s: mlk_attn_fwd o", what);
    CHECK_NAIVE(max_abs_diff(o, o_ref, nqe), ref.naive_o, ref.floor_o, "%s: o vs mlk_attn_fwd", what);
    CHECK_NAIVE(mlkt_max_abs_err(lse_t, ref.lse, nrow), ref.naive_lse, ref.floor_lse, "%s: lse", what);
    CHECK_NAIVE(max_abs_diff(lse_t, lse_ref, nrow), ref.naive_lse, ref.floor_lse, "%s: lse vs mlk_attn_fwd", what);
    mlkt_digest(o, nqe * sizeof(float));
    sref_bounds_free(&ref);
    mlkt_free(q); mlkt_free(o); mlkt_free(o_ref); mlkt_free(lse); mlkt_free(lse_ref); mlkt_free(lse_t);
}

static void test_kv_opts_parity(void)
{
    static const mlk_kv_type types[4] = {MLK_KV_F32, MLK_KV_F16, MLK_KV_Q8, MLK_KV_Q4};
    static const int parent[5] = {-1, 0, 0, 1, -1};
    float sinks[8];
    mlkt_fill_normal(sinks, 8, 1.0);
    for (int t = 0; t < 4; t++) {
        kv_fixture f;
        mlk_kv_attn_opts opts;
        kv_fixture_make(&f, types[t], 300, 2, 24, 16);
        memset(&opts, 0, sizeof opts);
        check_kv_parity(&f, 8, 1, &opts, "plain decode");
        check_kv_parity(&f, 8, 37, &opts, "chunk of 37");
        opts.window = 50; /* Mistral */
        check_kv_parity(&f, 8, 1, &opts, "window decode");
        check_kv_parity(&f, 8, 37, &opts, "window chunk");
        opts.softcap = 30.0f; /* Gemma-2: window + softcap */
        opts.scale = 0.3f;
        check_kv_parity(&f, 8, 3, &opts, "window + softcap");
        opts.window = 0; /* softcap alone (a large scale: it bites) */
        opts.softcap = 5.0f;
        opts.scale = 0.8f;
        check_kv_parity(&f, 8, 1, &opts, "softcap decode");
        check_kv_parity(&f, 8, 20, &opts, "softcap chunk");
        opts.sinks = sinks;
        check_kv_parity(&f, 8, 4, &opts, "softcap + sinks");
        opts.window = 40;
        check_kv_parity(&f, 8, 37, &opts, "window + softcap + sinks");
        opts.window = 0; opts.softcap = 0; opts.scale = 0;
        opts.sinks = sinks; /* gpt-oss */
        check_kv_parity(&f, 8, 1, &opts, "sinks decode");
        check_kv_parity(&f, 4, 70, &opts, "sinks chunk");
        opts.window = 64;
        check_kv_parity(&f, 8, 2, &opts, "sinks + window");
        opts.window = 0; opts.sinks = NULL; opts.tree_parent = parent;
        check_kv_parity(&f, 8, 5, &opts, "tree");
        opts.softcap = 4.0f; opts.scale = 0.6f;
        check_kv_parity(&f, 8, 5, &opts, "tree + softcap");
        opts.softcap = 0; opts.scale = 0;
        opts.window = 3; opts.sinks = sinks;
        check_kv_parity(&f, 8, 5, &opts, "tree + window + sinks");
        kv_fixture_free(&f);
    }
}

/* ---- split-KV decode: a long sequence in runs, merged in order ---- */

static void test_split_kv(void)
{
    kv_fixture f;
    mlk_kv_attn_opts opts;
    const int heads = 4, n_q = 1;
    float sinks[4] = {0.5f, -1.0f, 2.0f, -INFINITY};
    float *q, *o1, *o2, *lse1, *lse2;
    size_t nqe = (size_t)heads * 32;
    kv_fixture_make(&f, MLK_KV_F16, 9001, 2, 32, 64); /* three runs of keys, the last short */
    memset(&opts, 0, sizeof opts);
    check_kv_parity(&f, heads, n_q, &opts, "split decode");
    opts.sinks = sinks; /* counted once, not once per run */
    check_kv_parity(&f, heads, n_q, &opts, "split decode + sinks");
    opts.window = 5000; /* runs start at the window's first key */
    check_kv_parity(&f, heads, n_q, &opts, "split decode + window");
    /* any thread count: the same bits */
    q = random_floats(nqe, 1.0);
    o1 = mlkt_floats(nqe); o2 = mlkt_floats(nqe); lse1 = mlkt_floats((size_t)heads); lse2 = mlkt_floats((size_t)heads);
    opts.threads = 1;
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o1, lse1), MLK_OK);
    opts.threads = 0;
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o2, lse2), MLK_OK);
    CHECK(mlkt_same(o1, o2, nqe * sizeof(float)) && mlkt_same(lse1, lse2, (size_t)heads * sizeof(float)));
    mlkt_digest(o1, nqe * sizeof(float));
    mlkt_free(q); mlkt_free(o1); mlkt_free(o2); mlkt_free(lse1); mlkt_free(lse2);
    kv_fixture_free(&f);
}

/* ---- a caller workspace: sized once, never overrun, checked ---- */

/* 3 queries x 8 heads over 5000 Q4 keys, dim 16: 1.9M multiply-adds, above
   MLK__PAR_ATTN_MACS, so the call fans out and a team larger than the
   buffer's room would run off its end. A buffer sized for one thread runs
   (on one), one sized for every thread on all of them, both with the bits
   of a call that allocates; half a slab short of one thread's size is
   MLK_ERR_ARG with o untouched. */
static void test_kv_workspace(void)
{
    kv_fixture f;
    mlk_kv_attn_opts opts;
    const int heads = 8, n_q = 3;
    size_t nqe = (size_t)n_q * heads * 16, ws, ws2, ws_full, slab;
    float *q, *o1, *o2, *o3;
    unsigned char *buf, *buf_full;
    kv_fixture_make(&f, MLK_KV_Q4, 5000, 2, 16, 32);
    CHECKF((double)n_q * 5000 * heads * 16 >= 1.5 * MLK__PAR_ATTN_MACS, "the call must fan out");
    q = random_floats(nqe, 1.0);
    o1 = mlkt_floats(nqe);
    o2 = mlkt_floats(nqe);
    o3 = mlkt_floats(nqe);
    memset(&opts, 0, sizeof opts);
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o1, NULL), MLK_OK);
    ws_full = mlk_kv_attn_workspace_size(f.c, 1, &f.seq, &n_q, heads, &opts);
    opts.threads = 1;
    ws = mlk_kv_attn_workspace_size(f.c, 1, &f.seq, &n_q, heads, &opts);
    opts.threads = 2;
    ws2 = mlk_kv_attn_workspace_size(f.c, 1, &f.seq, &n_q, heads, &opts);
    CHECK(ws > 0 && ws2 > ws && ws_full >= ws);
    slab = ws2 - ws; /* one thread's share */
    buf_full = (unsigned char *)mlkt_alloc(ws_full);
    opts.threads = 0;
    opts.workspace = buf_full;
    opts.workspace_bytes = ws_full;
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o3, NULL), MLK_OK);
    CHECK(mlkt_same(o1, o3, nqe * sizeof(float)));
    CHECK_GUARD(buf_full);
    buf = (unsigned char *)mlkt_alloc(ws);
    opts.workspace = buf + 1; /* unaligned; more threads than the buffer was sized for: they share what fits */
    opts.workspace_bytes = ws - 1;
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o2, NULL), MLK_OK);
    CHECK(mlkt_same(o1, o2, nqe * sizeof(float)));
    CHECK_GUARD(buf);
    memset(o2, 0x5a, nqe * sizeof(float));
    opts.workspace = buf;
    opts.workspace_bytes = ws - slab / 2;
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o2, NULL), MLK_ERR_ARG);
    opts.workspace_bytes = 64;
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o2, NULL), MLK_ERR_ARG);
    CHECK(((unsigned char *)o2)[0] == 0x5a && ((unsigned char *)o2)[nqe * sizeof(float) - 1] == 0x5a);
    opts.workspace = NULL;
    opts.window = -1;
    CHECK_INT(mlk_kv_attn_opt(f.c, 1, 1, &f.seq, &n_q, q, heads, &opts, o2, NULL), MLK_ERR_ARG);
    CHECK(mlk_kv_attn_workspace_size(f.c, 1, &f.seq, &n_q, heads, &opts) == 0);
    mlkt_digest(o1, nqe * sizeof(float));
    mlkt_free(buf); mlkt_free(buf_full); mlkt_free(q); mlkt_free(o1); mlkt_free(o2); mlkt_free(o3);
    kv_fixture_free(&f);
}

/* ---- the exported layout addresses exactly the rows mlk_kv_load returns ---- */

static void test_kv_layout(void)
{
    static const mlk_kv_type types[4] = {MLK_KV_F32, MLK_KV_F16, MLK_KV_Q8, MLK_KV_Q4};
    for (int t = 0; t < 4; t++) {
        kv_fixture f;
        mlk_kv_layout lay;
        int blocks[8], n, fork = -1, n_fork;
        float row[20];
        kv_fixture_make(&f, types[t], 70, 3, 20, 16);
        memset(&lay, 0, sizeof lay);
        CHECK_INT(mlk_kv_get_layout(f.c, &lay), MLK_OK);
        n = mlk_kv_seq_blocks(f.c, f.seq, blocks, 8);
        CHECK_INT(n, 5);
        CHECK_INT(mlk_kv_seq_blocks(f.c, f.seq, NULL, 0), 5);
        CHECK_INT(mlk_kv_seq_blocks(f.c, 1, blocks, 8), -1);
        CHECK_INT(lay.type, types[t]);
        for (int p = 0; p < 70; p += 9)
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < 3; h++) { /* decode the row found through the layout, independently */
                    const unsigned char *r = lay.pool + (size_t)blocks[p / lay.block_size] * lay.block_bytes +
                                             1 * lay.layer_stride + (size_t)kv * lay.kv_stride +
                                             (size_t)h * lay.head_stride + (size_t)(p % lay.block_size) * lay.row_bytes;
                    const float *want = (kv ? f.v : f.k) + ((size_t)p * 3 + h) * 20;
                    for (int e = 0; e < 20; e++) {
                        float scale;
                        if (types[t] == MLK_KV_F32) {
                            memcpy(&row[e], r + 4 * e, 4);
                            continue;
                        }
                        if (types[t] == MLK_KV_F16) {
                            uint16_t hbits;
                            int ex, mant;
                            memcpy(&hbits, r + 2 * e, 2);
                            ex = (hbits >> 10) & 31;
                            mant = hbits & 1023;
                            row[e] = (float)((ex ? ldexp(1024 + mant, ex - 25) : ldexp(mant, -24)) * (hbits & 0x8000 ? -1 : 1));
                            continue;
                        }
                        memcpy(&scale, r, 4); /* one 32-block: one scale, then the codes */
                        row[e] = types[t] == MLK_KV_Q8 ? scale * (float)(int8_t)r[4 + e]
                                                       : scale * (float)(((r[4 + e / 2] >> (e % 2 * 4)) & 15) - 8);
                    }
                    CHECKF(mlkt_same(row, want, sizeof row), "type %d pos %d kv %d head %d", t, p, kv, h);
                }
        CHECK_INT(mlk_kv_seq_fork(f.c, f.seq, &fork), MLK_OK);
        n_fork = mlk_kv_seq_blocks(f.c, fork, blocks + 5, 3); /* shares the blocks; cap 3 of 5 */
        CHECK_INT(n_fork, 5);
        CHECK(mlkt_same(blocks, blocks + 5, 3 * sizeof(int)));
        CHECK_INT(mlk_kv_get_layout(f.c, NULL), MLK_ERR_NULL);
        kv_fixture_free(&f);
    }
}

/* ---- shared-prefix (cascade) decode: forks of one prompt ---- */

/* Sequences forked from one prompt, each with its own tokens (one of them
   rewrites a shared position, so its blocks diverge there): every
   sequence's rows of one batched call must agree with sref_forward over
   that sequence's loaded keys, with mlk_attn_fwd on them and with its own
   single-sequence call, each by the naive float32 rule. The cascade plan
   must be taken: its prefix buffers make the call's workspace larger than
   that of the same call on sequences of the same lengths sharing no
   block. */
static void check_cascade(mlk_kv_type type, int n_seqs, int n_q, const mlk_kv_attn_opts *opts)
{
    const int hkv = 2, heads = 8, dim = 16, prompt = 300, bs = 16;
    mlk_kv_config cfg;
    mlk_kv_cache *c = NULL, *flat = NULL;
    mlk_kv_attn_opts one;
    int seqs[8], flat_seqs[8], nqs[8], own[8];
    size_t rowf = (size_t)heads * dim, total_q = 0, ws_shared, ws_flat;
    float *kv_in = random_floats((size_t)(prompt + 64) * hkv * dim, 1.0), *q, *o, *lse;
    memset(&cfg, 0, sizeof cfg);
    cfg.layers = 1; cfg.kv_heads = hkv; cfg.head_dim = dim; cfg.block_size = bs; cfg.num_blocks = 128;
    cfg.max_seqs = 8; cfg.type = type;
    CHECK_INT(mlk_kv_create(&cfg, &c), MLK_OK);
    cfg.num_blocks = 8 * 24; /* room for 8 unshared sequences of up to 340 positions */
    CHECK_INT(mlk_kv_create(&cfg, &flat), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(c, &seqs[0]), MLK_OK);
    CHECK_INT(mlk_kv_append(c, seqs[0], prompt), MLK_OK);
    CHECK_INT(mlk_kv_store(c, seqs[0], 0, 0, prompt, kv_in, kv_in + 7), MLK_OK);
    for (int s = 1; s < n_seqs; s++) CHECK_INT(mlk_kv_seq_fork(c, seqs[0], &seqs[s]), MLK_OK);
    for (int s = 0; s < n_seqs; s++) { /* own tokens: 5 .. 40 */
        float *own_kv = random_floats((size_t)64 * hkv * dim, 1.0);
        own[s] = 5 + mlkt_int(36);
        nqs[s] = n_q;
        CHECK_INT(mlk_kv_append(c, seqs[s], own[s]), MLK_OK);
        CHECK_INT(mlk_kv_store(c, seqs[s], 0, prompt, own[s], own_kv, own_kv + 3), MLK_OK);
        if (s == n_seqs - 1) /* rewrite position 200: a private copy of that block from here on */
            CHECK_INT(mlk_kv_store(c, seqs[s], 0, 200, 1, own_kv, own_kv), MLK_OK);
        total_q += (size_t)n_q * rowf;
        CHECK_INT(mlk_kv_seq_new(flat, &flat_seqs[s]), MLK_OK); /* the same length, its own blocks */
        CHECK_INT(mlk_kv_append(flat, flat_seqs[s], prompt + own[s]), MLK_OK);
        mlkt_free(own_kv);
    }
    one = *opts;
    one.threads = 1;
    ws_shared = mlk_kv_attn_workspace_size(c, n_seqs, seqs, nqs, heads, &one);
    ws_flat = mlk_kv_attn_workspace_size(flat, n_seqs, flat_seqs, nqs, heads, &one);
    CHECKF(ws_flat > 0 && ws_shared > ws_flat, "cascade plan not taken: workspace %zu bytes, %zu without shared blocks",
           ws_shared, ws_flat);
    mlk_kv_destroy(flat);
    q = random_floats(total_q, 1.0);
    o = mlkt_floats(total_q);
    lse = mlkt_floats(total_q / dim);
    CHECK_INT(mlk_kv_attn_opt(c, 0, n_seqs, seqs, nqs, q, heads, opts, o, lse), MLK_OK);
    for (int s = 0, q_at = 0; s < n_seqs; q_at += n_q * (int)rowf, s++) {
        const int len = prompt + own[s];
        const size_t nqe = (size_t)n_q * rowf, nkve = (size_t)len * hkv * dim, nrow = (size_t)n_q * heads;
        float *k = mlkt_floats(nkve), *v = mlkt_floats(nkve);
        float *o_ref = mlkt_floats(nqe), *lse_ref = mlkt_floats(nrow), *lse_t = mlkt_floats(nrow);
        float *o_one = mlkt_floats(nqe);
        mlk_attn_desc d;
        sref_bounds ref;
        CHECK_INT(mlk_kv_load(c, seqs[s], 0, 0, len, k, v), MLK_OK);
        memset(&d, 0, sizeof d);
        d.batch = 1; d.heads = heads; d.kv_heads = hkv; d.len_q = n_q; d.len_kv = len; d.head_dim = dim;
        d.layout = MLK_BNHD; d.causal = 1; d.softcap = opts->softcap; d.sinks = opts->sinks;
        sref_bounds_make(&d, q + q_at, k, v, &ref);
        CHECK_INT(mlk_attn_fwd(&d, q + q_at, k, v, o_ref, lse_ref), MLK_OK);
        CHECK_INT(mlk_kv_attn_opt(c, 0, 1, &seqs[s], &n_q, q + q_at, heads, opts, o_one, NULL), MLK_OK);
        for (int i = 0; i < n_q; i++)
            for (int h = 0; h < heads; h++) lse_t[(size_t)h * n_q + i] = lse[(size_t)q_at / dim + (size_t)i * heads + h];
        CHECK_NAIVE(mlkt_max_abs_err(o + q_at, ref.o, nqe), ref.naive_o, ref.floor_o, "cascade seq %d: o", s);
        CHECK_NAIVE(max_abs_diff(o + q_at, o_ref, nqe), ref.naive_o, ref.floor_o, "cascade seq %d: o vs mlk_attn_fwd",
                    s);
        CHECK_NAIVE(max_abs_diff(o + q_at, o_one, nqe), ref.naive_o, ref.floor_o, "cascade seq %d: o vs alone", s);
        CHECK_NAIVE(mlkt_max_abs_err(lse_t, ref.lse, nrow), ref.naive_lse, ref.floor_lse, "cascade seq %d: lse", s);
        CHECK_NAIVE(max_abs_diff(lse_t, lse_ref, nrow), ref.naive_lse, ref.floor_lse,
                    "cascade seq %d: lse vs mlk_attn_fwd", s);
        sref_bounds_free(&ref);
        mlkt_free(k); mlkt_free(v); mlkt_free(o_ref); mlkt_free(lse_ref); mlkt_free(lse_t); mlkt_free(o_one);
    }
    mlkt_digest(o, total_q * sizeof(float));
    mlkt_free(q); mlkt_free(o); mlkt_free(lse); mlkt_free(kv_in);
    mlk_kv_destroy(c);
}

static void test_cascade(void)
{
    mlk_kv_attn_opts opts;
    float sinks[8];
    mlkt_fill_normal(sinks, 8, 1.0);
    memset(&opts, 0, sizeof opts);
    check_cascade(MLK_KV_F32, 6, 1, &opts);
    check_cascade(MLK_KV_Q8, 5, 2, &opts);
    opts.sinks = sinks; /* counted once, in the prefix pass */
    opts.softcap = 20.0f;
    check_cascade(MLK_KV_F16, 8, 1, &opts);
    check_cascade(MLK_KV_F32, 2, 3, &opts);
    check_cascade(MLK_KV_F16, 8, 5, &opts); /* 40 queries x 4 heads: two prefix tasks per kv head, one partial */
}

/* ---- speculative sampling: the emitted tokens follow the target ---- */

/* A toy pair of models over a vocabulary of V: after a context ending in
   token t the target samples from P[t] and the draft from Q[t] (row V: an
   empty context). The draft puts mass where the target has none. */
#define SPEC_V 4
static const float spec_P[SPEC_V + 1][SPEC_V] = {
    {0.1f, 0.6f, 0.3f, 0.0f}, {0.5f, 0.0f, 0.25f, 0.25f}, {0.2f, 0.2f, 0.2f, 0.4f},
    {0.0f, 0.3f, 0.7f, 0.0f}, {0.4f, 0.1f, 0.0f, 0.5f}};
static const float spec_Q[SPEC_V + 1][SPEC_V] = {
    {0.25f, 0.25f, 0.25f, 0.25f}, {0.1f, 0.6f, 0.2f, 0.1f}, {0.7f, 0.1f, 0.1f, 0.1f},
    {0.3f, 0.3f, 0.3f, 0.1f}, {0.1f, 0.1f, 0.7f, 0.1f}};

static int32_t spec_sample(const float *row, uint64_t *rng)
{
    double u = mlkt_uniform(0.0, 1.0), acc = 0;
    (void)rng;
    for (int t = 0; t < SPEC_V; t++) {
        acc += row[t];
        if (u < acc) return t;
    }
    return SPEC_V - 1;
}

/* Emits two tokens after an empty context by rounds of draft + verify:
   shape 0 a chain of 2, shape 1 two sibling roots each with a child. */
static void spec_two_tokens(int shape, uint64_t *rng, int32_t *out)
{
    int n_out = 0, last = SPEC_V;
    while (n_out < 2) {
        int parent[4], path[4], n_path = 0, n;
        int32_t draft[4], tok = -1;
        float pt[5 * SPEC_V], pd[4 * SPEC_V];
        if (shape == 0) {
            n = 2; parent[0] = -1; parent[1] = 0;
            draft[0] = spec_sample(spec_Q[last], rng);
            draft[1] = spec_sample(spec_Q[draft[0]], rng);
            memcpy(pd, spec_Q[last], sizeof spec_Q[0]);
            memcpy(pd + SPEC_V, spec_Q[draft[0]], sizeof spec_Q[0]);
        } else {
            n = 4; parent[0] = -1; parent[1] = -1; parent[2] = 0; parent[3] = 1;
            draft[0] = spec_sample(spec_Q[last], rng); /* siblings drawn independently from one q */
            draft[1] = spec_sample(spec_Q[last], rng);
            draft[2] = spec_sample(spec_Q[draft[0]], rng);
            draft[3] = spec_sample(spec_Q[draft[1]], rng);
            memcpy(pd, spec_Q[last], sizeof spec_Q[0]);
            memcpy(pd + SPEC_V, spec_Q[last], sizeof spec_Q[0]);
            memcpy(pd + 2 * SPEC_V, spec_Q[draft[0]], sizeof spec_Q[0]);
            memcpy(pd + 3 * SPEC_V, spec_Q[draft[1]], sizeof spec_Q[0]);
        }
        memcpy(pt, spec_P[last], sizeof spec_P[0]);
        for (int i = 0; i < n; i++) memcpy(pt + (i + 1) * SPEC_V, spec_P[draft[i]], sizeof spec_P[0]);
        if (mlk_spec_accept_sample(n, parent, draft, SPEC_V, pt, pd, rng, path, &n_path, &tok) != MLK_OK) {
            CHECK(!"mlk_spec_accept_sample failed");
            return;
        }
        for (int j = 0; j < n_path && n_out < 2; j++) out[n_out++] = last = draft[path[j]];
        if (n_out < 2) out[n_out++] = last = tok;
    }
}

static void test_spec_sampling(void)
{
    const int trials = mlkt_quick() ? 30000 : 100000;
    for (int shape = 0; shape < 2; shape++) {
        long count[SPEC_V][SPEC_V];
        double chi2 = 0;
        int cells = 0;
        uint64_t rng = 12345;
        memset(count, 0, sizeof count);
        for (int t = 0; t < trials; t++) {
            int32_t out[2];
            spec_two_tokens(shape, &rng, out);
            count[out[0]][out[1]]++;
        }
        for (int a = 0; a < SPEC_V; a++) /* joint law of two sampled tokens: P0(a) P[a](b) */
            for (int b = 0; b < SPEC_V; b++) {
                double want = (double)trials * spec_P[SPEC_V][a] * spec_P[a][b];
                if (want == 0) {
                    CHECKF(count[a][b] == 0, "shape %d: (%d, %d) has probability 0, drawn %ld times", shape, a, b,
                           count[a][b]);
                    continue;
                }
                chi2 += (count[a][b] - want) * (count[a][b] - want) / want;
                cells++;
            }
        /* 8 cells with mass: 7 degrees of freedom, 24.32 is the 0.1% point */
        CHECKF(cells == 8 && chi2 < 24.32, "shape %d: chi-square %.2f over %d cells", shape, chi2, cells);
    }
}

/* One-hot targets (temperature 0): exactly the greedy verifier. */
static void test_spec_greedy(void)
{
    static const int parent[7] = {-1, 0, 0, 1, -1, 4, 2};
    for (int trial = 0; trial < 300; trial++) {
        const int V = 5;
        int32_t draft[7], greedy[8], bonus = -1, tok = -1;
        int path_a[7], path_b[7], na = -1, nb = -1;
        float pt[8 * 5], pd[7 * 5];
        uint64_t rng = (uint64_t)trial;
        for (int i = 0; i < 7; i++) draft[i] = mlkt_int(3);
        for (int i = 0; i < 8; i++) greedy[i] = mlkt_int(3);
        memset(pt, 0, sizeof pt);
        memset(pd, 0, sizeof pd);
        for (int i = 0; i < 8; i++) pt[i * V + greedy[i]] = 1.0f;
        for (int i = 0; i < 7; i++) pd[i * V + draft[i]] = 1.0f;
        CHECK_INT(mlk_tree_accept(7, parent, draft, greedy, path_a, &na, &bonus), MLK_OK);
        CHECK_INT(mlk_spec_accept_sample(7, parent, draft, V, pt, pd, &rng, path_b, &nb, &tok), MLK_OK);
        CHECK_INT(nb, na);
        CHECK(na == nb && mlkt_same(path_a, path_b, (size_t)na * sizeof(int)));
        CHECK_INT(tok, bonus);
    }
}

static void test_spec_bad_input(void)
{
    int parent[2] = {-1, 0}, path[2] = {7, 7}, n_path = 7;
    int32_t draft[2] = {1, 2}, tok = 7;
    float pt[3 * 3], pd[2 * 3];
    uint64_t rng = 5, rng0 = 5;
    for (int i = 0; i < 9; i++) pt[i] = 1.0f / 3;
    for (int i = 0; i < 6; i++) pd[i] = 1.0f / 3;
    draft[1] = 3;
    CHECK_INT(mlk_spec_accept_sample(2, parent, draft, 3, pt, pd, &rng, path, &n_path, &tok), MLK_ERR_ARG);
    draft[1] = 2;
    parent[1] = 1;
    CHECK_INT(mlk_spec_accept_sample(2, parent, draft, 3, pt, pd, &rng, path, &n_path, &tok), MLK_ERR_TREE);
    parent[1] = 0;
    pt[4] = NAN;
    CHECK_INT(mlk_spec_accept_sample(2, parent, draft, 3, pt, pd, &rng, path, &n_path, &tok), MLK_ERR_VALUE);
    pt[4] = 0; pt[3] = 0; pt[5] = 0; /* a target row without mass */
    CHECK_INT(mlk_spec_accept_sample(2, parent, draft, 3, pt, pd, &rng, path, &n_path, &tok), MLK_ERR_VALUE);
    CHECK(rng == rng0 && tok == 7 && n_path == 7 && path[0] == 7);
    CHECK_INT(mlk_spec_accept_sample(0, parent, draft, 3, pt, pd, &rng, path, &n_path, &tok), MLK_ERR_SHAPE);
    CHECK_INT(mlk_spec_accept_sample(2, parent, draft, 3, pt, NULL, &rng, path, &n_path, &tok), MLK_ERR_NULL);
}

/* ---- a bookkeeping-only cache driving a pool held elsewhere ---- */

/* The same operations on a cache with host storage and on one without,
   whose rows an emulated device pool holds (written through the exported
   layout, block copies done as mlk_kv_prepare_write reports them): the
   device rows must equal what the host cache loads, block for block. */
static void test_kv_no_storage(void)
{
    mlk_kv_config cfg;
    mlk_kv_cache *host = NULL, *book = NULL;
    mlk_kv_layout lay;
    int hs = -1, bs_ = -1, hf = -1, bf = -1, copies[16], n_copies = -1, blocks[8];
    const int dim = 8, hkv = 2, len = 40;
    float *k = random_floats((size_t)64 * hkv * dim, 1.0), *v = random_floats((size_t)64 * hkv * dim, 1.0);
    float back_k[64 * 2 * 8], back_v[64 * 2 * 8];
    unsigned char *device;
    memset(&cfg, 0, sizeof cfg);
    cfg.layers = 2; cfg.kv_heads = hkv; cfg.head_dim = dim; cfg.block_size = 16; cfg.num_blocks = 12;
    cfg.max_seqs = 4; cfg.type = MLK_KV_F32;
    CHECK_INT(mlk_kv_create(&cfg, &host), MLK_OK);
    CHECK_INT(mlk_kv_create_bookkeeping(&cfg, &book), MLK_OK);
    memset(&lay, 0, sizeof lay);
    CHECK_INT(mlk_kv_get_layout(book, &lay), MLK_OK);
    CHECK(lay.pool == NULL);
    device = (unsigned char *)calloc((size_t)lay.num_blocks, lay.block_bytes);
    CHECK_INT(mlk_kv_seq_new(host, &hs), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(book, &bs_), MLK_OK);
    CHECK_INT(mlk_kv_append(host, hs, len), MLK_OK);
    CHECK_INT(mlk_kv_append(book, bs_, len), MLK_OK);
    CHECK_INT(mlk_kv_store(book, bs_, 0, 0, 1, k, v), MLK_ERR_ARG); /* no rows here */
    CHECK_INT(mlk_kv_attn(book, 0, 1, &bs_, &len, k, hkv, 0.0f, NULL, back_k), MLK_ERR_ARG);
    for (int step = 0; step < 2; step++) {
        /* step 0: the prompt into both; step 1: a fork rewrites positions 30..49 */
        int seq_h = step ? hf : hs, seq_b = step ? bf : bs_, pos = step ? 30 : 0, n = step ? 20 : len;
        if (step) {
            CHECK_INT(mlk_kv_seq_fork(host, hs, &hf), MLK_OK);
            CHECK_INT(mlk_kv_seq_fork(book, bs_, &bf), MLK_OK);
            seq_h = hf; seq_b = bf;
            CHECK_INT(mlk_kv_append(host, hf, 10), MLK_OK);
            CHECK_INT(mlk_kv_append(book, bf, 10), MLK_OK);
            CHECK_INT(mlk_kv_prepare_write(book, bf, pos, n, copies, 0, &n_copies), MLK_ERR_CAPACITY);
        }
        CHECK_INT(mlk_kv_store(host, seq_h, 1, pos, n, k, v), MLK_OK);
        CHECK_INT(mlk_kv_prepare_write(book, seq_b, pos, n, copies, 8, &n_copies), MLK_OK);
        CHECK_INT(n_copies, step ? 2 : 0); /* blocks 1 and 2 were shared with the prompt */
        for (int i = 0; i < n_copies; i++)
            memcpy(device + (size_t)copies[2 * i + 1] * lay.block_bytes, device + (size_t)copies[2 * i] * lay.block_bytes,
                   lay.block_bytes);
        CHECK_INT(mlk_kv_seq_blocks(book, seq_b, blocks, 8), (pos + n + 15) / 16);
        for (int p = pos; p < pos + n; p++) /* the device writes its rows through the layout */
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < hkv; h++)
                    memcpy(device + (size_t)blocks[p / 16] * lay.block_bytes + lay.layer_stride +
                               (size_t)kv * lay.kv_stride + (size_t)h * lay.head_stride + (size_t)(p % 16) * lay.row_bytes,
                           (kv ? v : k) + ((size_t)(p - pos) * hkv + h) * dim, (size_t)dim * sizeof(float));
    }
    for (int which = 0; which < 2; which++) { /* every row of both sequences */
        int seq_h = which ? hf : hs, seq_b = which ? bf : bs_, n = mlk_kv_seq_len(host, seq_h);
        CHECK_INT(mlk_kv_seq_len(book, seq_b), n);
        CHECK_INT(mlk_kv_load(host, seq_h, 1, 0, n, back_k, back_v), MLK_OK);
        CHECK_INT(mlk_kv_seq_blocks(book, seq_b, blocks, 8), (n + 15) / 16);
        for (int p = 0; p < n; p++)
            for (int h = 0; h < hkv; h++) {
                const unsigned char *row = device + (size_t)blocks[p / 16] * lay.block_bytes + lay.layer_stride +
                                           (size_t)h * lay.head_stride + (size_t)(p % 16) * lay.row_bytes;
                CHECKF(memcmp(row, back_k + ((size_t)p * hkv + h) * dim, (size_t)dim * sizeof(float)) == 0,
                       "seq %d pos %d head %d: device row differs", which, p, h);
            }
    }
    {
        mlk_kv_stats a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        CHECK_INT(mlk_kv_get_stats(host, &a), MLK_OK);
        CHECK_INT(mlk_kv_get_stats(book, &b), MLK_OK);
        CHECK(a.blocks_used == b.blocks_used && a.seqs == b.seqs);
    }
    free(device);
    mlkt_free(k); mlkt_free(v);
    mlk_kv_destroy(host);
    mlk_kv_destroy(book);
}

/* ---- mlk_spec_generate_sample: the toy models through the whole loop ---- */

static int gen_draft(void *user, const int32_t *ctx, int ctx_len, int max_nodes, int32_t *tokens, int *parent,
                     float *probs, int *n_nodes)
{
    int last = ctx_len > 1 ? ctx[ctx_len - 1] : SPEC_V, n = max_nodes < 2 ? max_nodes : 2;
    (void)user;
    for (int i = 0; i < n; i++) { /* a chain drawn from the draft model; rows of V + 1 (the marker: 0) */
        memcpy(probs + (size_t)i * (SPEC_V + 1), spec_Q[last], sizeof spec_Q[0]);
        probs[(size_t)i * (SPEC_V + 1) + SPEC_V] = 0.0f;
        tokens[i] = last = spec_sample(spec_Q[last], NULL);
        parent[i] = i - 1;
    }
    *n_nodes = n;
    return 0;
}

static int gen_verify(void *user, const int32_t *ctx, int ctx_len, int n_nodes, const int32_t *tokens,
                      const int *parent, float *probs)
{
    (void)user; (void)parent;
    for (int i = 0; i <= n_nodes; i++) {
        memcpy(probs + (size_t)i * (SPEC_V + 1), spec_P[i == 0 ? (ctx_len > 1 ? ctx[ctx_len - 1] : SPEC_V) : tokens[i - 1]],
               sizeof spec_P[0]);
        probs[(size_t)i * (SPEC_V + 1) + SPEC_V] = 0.0f;
    }
    return 0;
}

static void test_spec_generate_sample(void)
{
    const int trials = mlkt_quick() ? 20000 : 100000;
    const int32_t prompt[1] = {SPEC_V}; /* a marker: the empty context */
    mlk_spec_config cfg;
    mlk_spec_sampling sm;
    long count[SPEC_V][SPEC_V];
    double chi2 = 0;
    int cells = 0;
    memset(&cfg, 0, sizeof cfg);
    memset(&sm, 0, sizeof sm);
    cfg.max_new_tokens = 2;
    cfg.max_nodes = 3;
    cfg.eos_id = -1;
    sm.vocab = SPEC_V + 1; /* the marker is a token too, never drawn */
    sm.draft = gen_draft;
    sm.verify = gen_verify;
    memset(count, 0, sizeof count);
    for (int t = 0; t < trials; t++) {
        int32_t out[2];
        int n_out = 0;
        sm.seed = 1000 + (uint64_t)t * 7;
        if (mlk_spec_generate_sample(&cfg, &sm, prompt, 1, out, &n_out, NULL) != MLK_OK || n_out != 2) {
            CHECK(!"mlk_spec_generate_sample failed");
            return;
        }
        count[out[0]][out[1]]++;
    }
    for (int a = 0; a < SPEC_V; a++)
        for (int b = 0; b < SPEC_V; b++) {
            double want = (double)trials * spec_P[SPEC_V][a] * spec_P[a][b];
            if (want == 0) {
                CHECK(count[a][b] == 0);
                continue;
            }
            chi2 += (count[a][b] - want) * (count[a][b] - want) / want;
            cells++;
        }
    CHECKF(cells == 8 && chi2 < 24.32, "generate: chi-square %.2f over %d cells", chi2, cells);
    sm.verify = NULL;
    CHECK_INT(mlk_spec_generate_sample(&cfg, &sm, prompt, 1, (int32_t *)count, &cells, NULL), MLK_ERR_NULL);
}

int main(void)
{
    mlkt_file = "test_decode";
    MLKT_RUN(test_sinks, 1);
    MLKT_RUN(test_sinks_edges, 2);
    MLKT_RUN(test_sinks_masks, 14);
    MLKT_RUN(test_merge, 3);
    MLKT_RUN(test_kv_opts_parity, 4);
    MLKT_RUN(test_split_kv, 5);
    MLKT_RUN(test_kv_workspace, 6);
    MLKT_RUN(test_kv_layout, 7);
    MLKT_RUN(test_cascade, 8);
    MLKT_RUN(test_spec_sampling, 9);
    MLKT_RUN(test_spec_greedy, 10);
    MLKT_RUN(test_spec_bad_input, 11);
    MLKT_RUN(test_kv_no_storage, 12);
    MLKT_RUN(test_spec_generate_sample, 13);
    return mlkt_finish();
}

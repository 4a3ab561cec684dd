/* attention: forward vs the public double reference and an independent one
   in this file (which also gives the float32 error the bound is relative
   to), backward vs a naive double backward and central finite differences,
   the masking corner cases, bad descriptors. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include "attn_ref.h"

#include <float.h>

/* ---- independent reference (double, or every op rounded to float) ---- */

typedef struct ref_geom { int b, hq, hkv, nq, nkv, dim; double scale; } ref_geom;

static ref_geom ref_resolve(const mlk_attn_desc *d)
{
    ref_geom g;
    g.b = d->batch;
    g.hq = d->heads;
    g.hkv = d->kv_heads ? d->kv_heads : d->heads;
    g.nq = d->len_q;
    g.nkv = d->len_kv ? d->len_kv : d->len_q;
    g.dim = d->head_dim;
    g.scale = d->scale != 0 ? (double)d->scale : 1.0 / sqrt((double)g.dim);
    return g;
}

static int ref_sees(const mlk_attn_desc *d, int n_b, int i, int j)
{
    int off = n_b - d->len_q;
    long pi, pj;
    if (j >= n_b) return 0;
    if (d->tree_parent) {
        if (j >= off && !attn_ref_is_ancestor_or_self(d->tree_parent, j - off, i)) return 0;
        pi = off + attn_ref_depth(d->tree_parent, i);
        pj = j >= off ? off + attn_ref_depth(d->tree_parent, j - off) : j;
    } else {
        if (d->causal && j > i + off) return 0;
        pi = i + off;
        pj = j;
    }
    if (d->window > 0) {
        if (d->causal || d->tree_parent) return pj > pi - d->window;
        return labs(pj - pi) < d->window;
    }
    return 1;
}

static double ref_round(double x, int f32) { return f32 ? (double)(float)x : x; }

/* Forward (o, lse) and, when dout is given, backward (dq, dk, dv zeroed
   here). f32 rounds every operation to float: the naive float32 error. */
static void ref_attn(const mlk_attn_desc *d, const double *q, const double *k, const double *v, const double *dout,
                     double *o, double *lse, double *dq, double *dk, double *dv, int f32)
{
    ref_geom g = ref_resolve(d);
    double *s = (double *)malloc((size_t)g.nkv * sizeof(double)), *p = (double *)malloc((size_t)g.nkv * sizeof(double));
    size_t nkv_el = (size_t)g.b * g.hkv * g.nkv * g.dim, nq_el = (size_t)g.b * g.hq * g.nq * g.dim;
    if (dout) {
        memset(dq, 0, nq_el * sizeof(double));
        memset(dk, 0, nkv_el * sizeof(double));
        memset(dv, 0, nkv_el * sizeof(double));
    }
    for (int b = 0; b < g.b; b++) {
        int n_b = d->kv_len ? d->kv_len[b] : g.nkv;
        for (int h = 0; h < g.hq; h++) {
            int kvh = h / (g.hq / g.hkv);
            for (int i = 0; i < g.nq; i++) {
                size_t qi = attn_ref_at(d, g.hq, g.nq, b, h, i);
                double m = -INFINITY, l = 0, row_d = 0;
                for (int j = 0; j < g.nkv; j++) {
                    const double *kj = k + attn_ref_at(d, g.hkv, g.nkv, b, kvh, j);
                    double dot = 0;
                    s[j] = -INFINITY;
                    if (!ref_sees(d, n_b, i, j)) continue;
                    for (int e = 0; e < g.dim; e++) dot = ref_round(dot + ref_round(q[qi + e] * kj[e], f32), f32);
                    s[j] = ref_round(dot * g.scale, f32);
                    if (d->softcap > 0) s[j] = ref_round(d->softcap * tanh(s[j] / d->softcap), f32);
                    if (s[j] > m) m = s[j];
                }
                for (int e = 0; e < g.dim; e++) o[qi + e] = 0;
                lse[((size_t)b * g.hq + h) * g.nq + i] = -INFINITY;
                if (m == -INFINITY) continue;
                for (int j = 0; j < g.nkv; j++) {
                    p[j] = s[j] == -INFINITY ? 0 : ref_round(exp(s[j] - m), f32);
                    l = ref_round(l + p[j], f32);
                }
                for (int e = 0; e < g.dim; e++) {
                    double acc = 0;
                    for (int j = 0; j < g.nkv; j++)
                        if (p[j] != 0) acc = ref_round(acc + ref_round(p[j] * v[attn_ref_at(d, g.hkv, g.nkv, b, kvh, j) + e], f32), f32);
                    o[qi + e] = ref_round(acc / l, f32);
                }
                lse[((size_t)b * g.hq + h) * g.nq + i] = ref_round(m + log(l), f32);
                if (!dout) continue;
                for (int e = 0; e < g.dim; e++) row_d = ref_round(row_d + ref_round(dout[qi + e] * o[qi + e], f32), f32);
                for (int j = 0; j < g.nkv; j++) {
                    size_t kj = attn_ref_at(d, g.hkv, g.nkv, b, kvh, j);
                    double pj = ref_round(p[j] / l, f32), dp = 0, ds;
                    if (p[j] == 0) continue;
                    for (int e = 0; e < g.dim; e++) dp = ref_round(dp + ref_round(dout[qi + e] * v[kj + e], f32), f32);
                    ds = ref_round(pj * (dp - row_d), f32);
                    if (d->softcap > 0) ds = ref_round(ds * (1 - (s[j] / d->softcap) * (s[j] / d->softcap)), f32);
                    ds = ref_round(ds * g.scale, f32);
                    for (int e = 0; e < g.dim; e++) {
                        dq[qi + e] = ref_round(dq[qi + e] + ref_round(ds * k[kj + e], f32), f32);
                        dk[kj + e] = ref_round(dk[kj + e] + ref_round(ds * q[qi + e], f32), f32);
                        dv[kj + e] = ref_round(dv[kj + e] + ref_round(pj * dout[qi + e], f32), f32);
                    }
                }
            }
        }
    }
    free(s);
    free(p);
}

/* ---- one case: inputs, the fast kernels, both references ---- */

typedef struct attn_case {
    mlk_attn_desc d;
    ref_geom g;
    size_t nq_el, nkv_el, nrow;
    float *q, *k, *v, *dout;
    double *qd, *kd, *vd, *doutd;
} attn_case;

static double *to_double(const float *x, size_t n)
{
    double *y = (double *)malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

static void case_init(attn_case *c, const mlk_attn_desc *d, double q_std)
{
    c->d = *d;
    c->g = ref_resolve(d);
    c->nq_el = (size_t)c->g.b * c->g.hq * c->g.nq * c->g.dim;
    c->nkv_el = (size_t)c->g.b * c->g.hkv * c->g.nkv * c->g.dim;
    c->nrow = (size_t)c->g.b * c->g.hq * c->g.nq;
    c->q = mlkt_floats(c->nq_el);
    c->dout = mlkt_floats(c->nq_el);
    c->k = mlkt_floats(c->nkv_el);
    c->v = mlkt_floats(c->nkv_el);
    mlkt_fill_normal(c->q, c->nq_el, q_std);
    mlkt_fill_normal(c->k, c->nkv_el, 1.0);
    mlkt_fill_uniform(c->v, c->nkv_el, -1, 1);
    mlkt_fill_uniform(c->dout, c->nq_el, -1, 1);
    c->qd = to_double(c->q, c->nq_el);
    c->kd = to_double(c->k, c->nkv_el);
    c->vd = to_double(c->v, c->nkv_el);
    c->doutd = to_double(c->dout, c->nq_el);
}

static void case_free(attn_case *c)
{
    mlkt_free(c->q); mlkt_free(c->k); mlkt_free(c->v); mlkt_free(c->dout);
    free(c->qd); free(c->kd); free(c->vd); free(c->doutd);
}

static double max_abs(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

static void describe(const mlk_attn_desc *d, char *buf, size_t n)
{
    snprintf(buf, n, "B%d H%d/%d Nq%d Nkv%d D%d causal%d win%d cap%g kvlen%d tree%d layout%d tiles%d,%d",
             d->batch, d->heads, d->kv_heads, d->len_q, d->len_kv, d->head_dim, d->causal, d->window,
             (double)d->softcap, d->kv_len != NULL, d->tree_parent != NULL, (int)d->layout, d->tile_q, d->tile_kv);
}

/* Forward and backward of one case against both references. */
static void check_case(const mlk_attn_desc *desc, double q_std, int with_bwd)
{
    attn_case c;
    char what[160];
    float *o, *lse, *o_naive, *lse_naive, *dq, *dk, *dv;
    double *o_ref, *lse_ref, *o32, *lse32, *dq_ref = NULL, *dk_ref = NULL, *dv_ref = NULL, *dq32 = NULL, *dk32 = NULL,
                                                *dv32 = NULL;
    double e_fast, e32, floor_o, e_lse, e_lse32, grad_floor;
    case_init(&c, desc, q_std);
    describe(desc, what, sizeof what);
    o = mlkt_floats(c.nq_el);
    lse = mlkt_floats(c.nrow);
    o_naive = mlkt_floats(c.nq_el);
    lse_naive = mlkt_floats(c.nrow);
    o_ref = (double *)malloc(c.nq_el * sizeof(double));
    o32 = (double *)malloc(c.nq_el * sizeof(double));
    lse_ref = (double *)malloc(c.nrow * sizeof(double));
    lse32 = (double *)malloc(c.nrow * sizeof(double));
    if (with_bwd) {
        dq_ref = (double *)malloc(c.nq_el * sizeof(double));
        dq32 = (double *)malloc(c.nq_el * sizeof(double));
        dk_ref = (double *)malloc(c.nkv_el * sizeof(double));
        dk32 = (double *)malloc(c.nkv_el * sizeof(double));
        dv_ref = (double *)malloc(c.nkv_el * sizeof(double));
        dv32 = (double *)malloc(c.nkv_el * sizeof(double));
    }
    ref_attn(&c.d, c.qd, c.kd, c.vd, with_bwd ? c.doutd : NULL, o_ref, lse_ref, dq_ref, dk_ref, dv_ref, 0);
    ref_attn(&c.d, c.qd, c.kd, c.vd, with_bwd ? c.doutd : NULL, o32, lse32, dq32, dk32, dv32, 1);

    CHECK_INT(mlk_attn_fwd(&c.d, c.q, c.k, c.v, o, lse), MLK_OK);
    CHECK_INT(mlk_attn_naive(&c.d, c.q, c.k, c.v, o_naive, lse_naive), MLK_OK);
    mlkt_digest(o, c.nq_el * sizeof(float));
    mlkt_digest(lse, c.nrow * sizeof(float));

    /* the public reference: double accumulation, rounded once */
    e_fast = mlkt_max_abs_err(o_naive, o_ref, c.nq_el);
    CHECKF(e_fast <= 1e-6 * (1 + max_abs(o_ref, c.nq_el)), "naive o err %.3g: %s", e_fast, what);
    e_fast = mlkt_max_abs_err(lse_naive, lse_ref, c.nrow);
    CHECKF(e_fast <= 1e-6 * (1 + max_abs(lse_ref, c.nrow)), "naive lse err %.3g: %s", e_fast, what);

    /* the fast kernel: within 2x the naive float32 error plus a floor */
    floor_o = mlkt_ulps(8, 1 + max_abs(o_ref, c.nq_el));
    e_fast = mlkt_max_abs_err(o, o_ref, c.nq_el);
    e32 = mlkt_max_abs_err_d(o32, o_ref, c.nq_el);
    CHECK_NAIVE(e_fast, e32, floor_o, "o: %s", what);
    e_lse = mlkt_max_abs_err(lse, lse_ref, c.nrow);
    e_lse32 = mlkt_max_abs_err_d(lse32, lse_ref, c.nrow);
    CHECK_NAIVE(e_lse, e_lse32, mlkt_ulps(8, 1 + max_abs(lse_ref, c.nrow)), "lse: %s", what);

    if (with_bwd) {
        dq = mlkt_floats(c.nq_el);
        dk = mlkt_floats(c.nkv_el);
        dv = mlkt_floats(c.nkv_el);
        CHECK_INT(mlk_attn_bwd(&c.d, c.q, c.k, c.v, o, c.dout, lse, dq, dk, dv), MLK_OK);
        mlkt_digest(dq, c.nq_el * sizeof(float));
        mlkt_digest(dk, c.nkv_el * sizeof(float));
        mlkt_digest(dv, c.nkv_el * sizeof(float));
        /* the floor follows the gradients' overall scale: with one key the
           exact dk is 0 and float32 cancellation leaves noise of that scale */
        grad_floor = mlkt_ulps(8, 1 + max_abs(dq_ref, c.nq_el) + max_abs(dk_ref, c.nkv_el) +
                                      max_abs(dv_ref, c.nkv_el));
        e_fast = mlkt_max_abs_err(dq, dq_ref, c.nq_el);
        e32 = mlkt_max_abs_err_d(dq32, dq_ref, c.nq_el);
        CHECK_NAIVE(e_fast, e32, grad_floor, "dq: %s", what);
        e_fast = mlkt_max_abs_err(dk, dk_ref, c.nkv_el);
        e32 = mlkt_max_abs_err_d(dk32, dk_ref, c.nkv_el);
        CHECK_NAIVE(e_fast, e32, grad_floor, "dk: %s", what);
        e_fast = mlkt_max_abs_err(dv, dv_ref, c.nkv_el);
        e32 = mlkt_max_abs_err_d(dv32, dv_ref, c.nkv_el);
        CHECK_NAIVE(e_fast, e32, grad_floor, "dv: %s", what);
        mlkt_free(dq); mlkt_free(dk); mlkt_free(dv);
        free(dq_ref); free(dk_ref); free(dv_ref); free(dq32); free(dk32); free(dv32);
    }
    mlkt_free(o); mlkt_free(lse); mlkt_free(o_naive); mlkt_free(lse_naive);
    free(o_ref); free(o32); free(lse_ref); free(lse32);
    case_free(&c);
}

static mlk_attn_desc base_desc(int b, int hq, int hkv, int nq, int nkv, int dim)
{
    mlk_attn_desc d;
    memset(&d, 0, sizeof d);
    d.batch = b;
    d.heads = hq;
    d.kv_heads = hkv;
    d.len_q = nq;
    d.len_kv = nkv;
    d.head_dim = dim;
    return d;
}

/* ---- the grid, sampled: every feature in random combinations ---- */

static void test_grid(void)
{
    static const int ns[] = {1, 7, 64, 129, 300}, dims[] = {16, 64, 80, 128};
    static const int heads[3][2] = {{4, 4}, {8, 2}, {4, 1}};
    int n_cases = mlkt_quick() ? 120 : 200, kv_len[2], parent[300];
    double budget = mlkt_quick() ? 1.5e6 : 1.5e7;
    for (int t = 0; t < n_cases; t++) {
        mlk_attn_desc d;
        int hsel = mlkt_int(3), b = 1 + mlkt_int(2), nq = ns[mlkt_int(5)], nkv = ns[mlkt_int(5)], dim = dims[mlkt_int(4)];
        int tree = mlkt_int(6) == 0;
        if (tree && nkv < nq) nkv = nq;
        if ((double)b * heads[hsel][0] * nq * nkv * dim > budget) { t--; continue; }
        d = base_desc(b, heads[hsel][0], heads[hsel][1], nq, nkv, dim);
        d.causal = mlkt_int(2);
        d.window = mlkt_int(3) == 0 ? 1 + mlkt_int(40) : 0;
        d.softcap = mlkt_int(4) == 0 ? 3.0f : 0.0f;
        d.layout = mlkt_int(2) ? MLK_BNHD : MLK_BHND;
        d.tile_q = mlkt_int(2) ? 0 : 1 + mlkt_int(70);
        d.tile_kv = mlkt_int(2) ? 0 : 1 + mlkt_int(140);
        if (mlkt_int(3) == 0) { /* varlen: some items shorter, sometimes empty */
            for (int i = 0; i < b; i++) kv_len[i] = tree ? nq + mlkt_int(nkv - nq + 1) : mlkt_int(nkv + 1);
            if (!tree && mlkt_int(2)) kv_len[mlkt_int(b)] = 0;
            d.kv_len = kv_len;
        }
        if (tree) {
            for (int i = 0; i < nq; i++) parent[i] = mlkt_int(i + 1) - 1;
            d.tree_parent = parent;
        }
        check_case(&d, 1.0, 1);
    }
}

/* ---- the cases usual implementations get wrong ---- */

static void test_hard_cases(void)
{
    mlk_attn_desc d;
    int kv_len[2] = {0, 40};
    /* first KV tile fully masked for a whole q tile (causal window) */
    d = base_desc(1, 2, 2, 64, 64, 16);
    d.causal = 1; d.window = 8; d.tile_q = 8; d.tile_kv = 8;
    check_case(&d, 1.0, 1);
    /* non-causal window: a row's first processed tile is all masked, later ones not */
    d = base_desc(1, 2, 1, 64, 64, 16);
    d.window = 5; d.tile_q = 16; d.tile_kv = 4;
    check_case(&d, 1.0, 1);
    /* Nq > Nkv causal: the first Nq - Nkv rows see nothing */
    d = base_desc(2, 4, 2, 300, 64, 64);
    d.causal = 1;
    check_case(&d, 1.0, 1);
    /* decode step: Nq = 1 sees every key; GQA 8/2, MQA 4/1 */
    d = base_desc(2, 8, 2, 1, 300, 128);
    d.causal = 1;
    check_case(&d, 1.0, 1);
    d = base_desc(1, 4, 1, 7, 129, 80);
    d.causal = 1; d.layout = MLK_BNHD;
    check_case(&d, 1.0, 1);
    /* causal q tiles of 40 rows over 64-key tiles: each q tile sees more of
       a key tile than the one before, so a key tile the forward keeps
       transposed from an earlier q tile must be completed; items and kv
       heads take turns on each thread's slab */
    d = base_desc(2, 4, 2, 300, 300, 64);
    d.causal = 1; d.tile_q = 40; d.tile_kv = 64;
    check_case(&d, 1.0, 0);
    /* tile sizes of 1 */
    d = base_desc(1, 2, 2, 9, 13, 16);
    d.causal = 1; d.tile_q = 1; d.tile_kv = 1;
    check_case(&d, 1.0, 1);
    /* an empty item next to a short one */
    d = base_desc(2, 2, 2, 33, 64, 16);
    d.causal = 1; d.kv_len = kv_len;
    check_case(&d, 1.0, 1);
    /* scores ~1e4: no overflow, error still relative to float32's */
    d = base_desc(1, 2, 2, 64, 129, 64);
    d.scale = 1.0f;
    check_case(&d, 1e4 / 8.0, 0);
    d.causal = 1; d.softcap = 50;
    check_case(&d, 1e4 / 8.0, 1);
}

/* Several roots: a child of root 1 sees root 1 and itself, never root 0. */
static void test_tree_roots(void)
{
    static const int parent[7] = {-1, -1, 0, 1, 1, 3, 2};
    mlk_attn_desc d = base_desc(1, 1, 1, 7, 10, 8); /* prefix P = 3 */
    size_t nq = 7 * 8, nkv = 10 * 8;
    float *q = mlkt_floats(nq), *k = mlkt_floats(nkv), *v = mlkt_floats(nkv), *o = mlkt_floats(nq), *lse = mlkt_floats(7);
    d.tree_parent = parent;
    memset(q, 0, nq * sizeof(float)); /* uniform attention over what a node sees */
    mlkt_fill_normal(k, nkv, 1.0);
    for (int j = 0; j < 10; j++)
        for (int e = 0; e < 8; e++) v[j * 8 + e] = (float)(1 << j);
    CHECK_INT(mlk_attn_fwd(&d, q, k, v, o, lse), MLK_OK);
    /* node 3 sees prefix keys 0..2 and tree keys of nodes 1 and 3: 3+1, 3+3 */
    CHECK_CLOSE(o[3 * 8], (1 + 2 + 4 + 16 + 64) / 5.0, 1e-6, 0);
    /* node 5 (root 1 -> 3 -> 5): prefix, nodes 1, 3, 5 */
    CHECK_CLOSE(o[5 * 8], (1 + 2 + 4 + 16 + 64 + 256) / 6.0, 1e-6, 0);
    /* node 6 (root 0 -> 2 -> 6): prefix, nodes 0, 2, 6 */
    CHECK_CLOSE(o[6 * 8], (1 + 2 + 4 + 8 + 32 + 512) / 6.0, 1e-6, 0);
    CHECK_CLOSE(lse[3], log(5.0), 1e-6, 1e-6);
    mlkt_digest(o, nq * sizeof(float));
    mlkt_free(q); mlkt_free(k); mlkt_free(v); mlkt_free(o); mlkt_free(lse);
    /* and the same tree with a window, a batch with padding, every path */
    {
        int kv_len[2] = {10, 8};
        d = base_desc(2, 4, 2, 7, 10, 16);
        d.tree_parent = parent; d.kv_len = kv_len; d.tile_q = 2; d.tile_kv = 3;
        check_case(&d, 1.0, 1);
        d.window = 3;
        check_case(&d, 1.0, 1);
    }
}

/* ---- backward vs central finite differences in double ---- */

typedef struct fd_ctx { const attn_case *c; int which; double *o, *lse; double *q, *k, *v; } fd_ctx;

/* L = sum(dout * o) as a function of q, k or v (which = 0, 1, 2) */
static double fd_loss(void *p, const double *x)
{
    fd_ctx *f = (fd_ctx *)p;
    double loss = 0;
    ref_attn(&f->c->d, f->which == 0 ? x : f->q, f->which == 1 ? x : f->k, f->which == 2 ? x : f->v, NULL, f->o,
             f->lse, NULL, NULL, NULL, 0);
    for (size_t i = 0; i < f->c->nq_el; i++) loss += f->c->doutd[i] * f->o[i];
    return loss;
}

static void check_fd(const mlk_attn_desc *desc)
{
    attn_case c;
    fd_ctx f;
    char what[160];
    float *o, *lse, *grad[3];
    double *o_ref, *lse_ref, *dref[3], *d32[3], grad_floor;
    case_init(&c, desc, 1.0);
    describe(desc, what, sizeof what);
    o = mlkt_floats(c.nq_el);
    lse = mlkt_floats(c.nrow);
    grad[0] = mlkt_floats(c.nq_el);
    grad[1] = mlkt_floats(c.nkv_el);
    grad[2] = mlkt_floats(c.nkv_el);
    o_ref = (double *)malloc(c.nq_el * sizeof(double));
    lse_ref = (double *)malloc(c.nrow * sizeof(double));
    for (int w = 0; w < 3; w++) {
        dref[w] = (double *)malloc((w ? c.nkv_el : c.nq_el) * sizeof(double));
        d32[w] = (double *)malloc((w ? c.nkv_el : c.nq_el) * sizeof(double));
    }
    ref_attn(&c.d, c.qd, c.kd, c.vd, c.doutd, o_ref, lse_ref, d32[0], d32[1], d32[2], 1);
    ref_attn(&c.d, c.qd, c.kd, c.vd, c.doutd, o_ref, lse_ref, dref[0], dref[1], dref[2], 0);
    CHECK_INT(mlk_attn_fwd(&c.d, c.q, c.k, c.v, o, lse), MLK_OK);
    CHECK_INT(mlk_attn_bwd(&c.d, c.q, c.k, c.v, o, c.dout, lse, grad[0], grad[1], grad[2]), MLK_OK);
    grad_floor = mlkt_ulps(8, 1 + max_abs(dref[0], c.nq_el) + max_abs(dref[1], c.nkv_el) +
                                  max_abs(dref[2], c.nkv_el));
    f.c = &c;
    f.q = c.qd; f.k = c.kd; f.v = c.vd;
    f.o = (double *)malloc(c.nq_el * sizeof(double));
    f.lse = (double *)malloc(c.nrow * sizeof(double));
    for (int w = 0; w < 3; w++) {
        size_t n = w ? c.nkv_el : c.nq_el;
        double *x = w == 0 ? c.qd : w == 1 ? c.kd : c.vd, e_ref = 0, e_fast = 0, e32;
        f.which = w;
        for (size_t i = 0; i < n; i++) {
            double fd = mlkt_fd(fd_loss, &f, x, i, 1e-4);
            if (fabs(fd - dref[w][i]) > e_ref) e_ref = fabs(fd - dref[w][i]);
            if (!(fabs(fd - grad[w][i]) <= e_fast)) e_fast = fabs(fd - grad[w][i]) == fabs(fd - grad[w][i]) ? fabs(fd - grad[w][i]) : INFINITY;
        }
        e32 = mlkt_max_abs_err_d(d32[w], dref[w], n);
        CHECKF(e_ref <= 1e-7 * (1 + max_abs(dref[w], n)), "grad %d: double backward vs fd %.3g: %s", w, e_ref, what);
        CHECK_NAIVE(e_fast, e32, grad_floor, "grad %d vs central differences: %s", w, what);
        mlkt_digest(grad[w], n * sizeof(float));
    }
    free(f.o); free(f.lse); free(o_ref); free(lse_ref);
    for (int w = 0; w < 3; w++) { free(dref[w]); free(d32[w]); mlkt_free(grad[w]); }
    mlkt_free(o); mlkt_free(lse);
    case_free(&c);
}

static void test_finite_differences(void)
{
    static const int parent[5] = {-1, 0, -1, 1, 2};
    int kv_len[2] = {6, 3};
    mlk_attn_desc d = base_desc(1, 2, 2, 5, 7, 4);
    check_fd(&d);
    d.causal = 1; d.tile_q = 2; d.tile_kv = 3;
    check_fd(&d);
    d = base_desc(2, 4, 2, 5, 6, 8); /* GQA, varlen, window, softcap, BNHD */
    d.causal = 1; d.kv_len = kv_len; d.window = 3; d.softcap = 2; d.layout = MLK_BNHD; d.tile_kv = 4;
    check_fd(&d);
    d = base_desc(1, 3, 1, 5, 8, 4); /* MQA, tree with two roots, window */
    d.tree_parent = parent; d.window = 2; d.tile_q = 1; d.tile_kv = 2;
    check_fd(&d);
    d = base_desc(1, 2, 2, 6, 4, 4); /* Nq > Nkv: rows that see nothing get 0 */
    d.causal = 1;
    check_fd(&d);
}

/* ---- a caller workspace, dq/dk/dv optional ---- */

static void test_workspace_and_optional(void)
{
    mlk_attn_desc d = base_desc(2, 4, 2, 70, 90, 32);
    attn_case c;
    size_t ws = mlk_attn_workspace_size(&d);
    unsigned char *buf = (unsigned char *)malloc(ws + 4);
    float *o1, *o2, *l1, *l2, *dk1, *dk2, *dv1;
    d.causal = 1;
    case_init(&c, &d, 1.0);
    o1 = mlkt_floats(c.nq_el); o2 = mlkt_floats(c.nq_el); l1 = mlkt_floats(c.nrow); l2 = mlkt_floats(c.nrow);
    dk1 = mlkt_floats(c.nkv_el); dk2 = mlkt_floats(c.nkv_el); dv1 = mlkt_floats(c.nkv_el);
    CHECK(ws > 0);
    CHECK_INT(mlk_attn_fwd(&d, c.q, c.k, c.v, o1, l1), MLK_OK);
    c.d.workspace = buf + 4; /* unaligned: the size includes the slack */
    d.workspace = buf + 4;
    c.d.workspace_bytes = d.workspace_bytes = ws;
    CHECK_INT(mlk_attn_fwd(&d, c.q, c.k, c.v, o2, NULL), MLK_OK);
    CHECK(mlkt_same(o1, o2, c.nq_el * sizeof(float)));
    CHECK_INT(mlk_attn_fwd(&d, c.q, c.k, c.v, o2, l2), MLK_OK);
    CHECK(mlkt_same(l1, l2, c.nrow * sizeof(float)));
    CHECK_INT(mlk_attn_bwd(&d, c.q, c.k, c.v, o1, c.dout, l1, NULL, dk1, dv1), MLK_OK);
    d.workspace = NULL;
    CHECK_INT(mlk_attn_bwd(&d, c.q, c.k, c.v, o1, c.dout, l1, NULL, dk2, NULL), MLK_OK);
    CHECK(mlkt_same(dk1, dk2, c.nkv_el * sizeof(float)));
    CHECK_INT(mlk_attn_bwd(&d, c.q, c.k, c.v, o1, c.dout, l1, NULL, NULL, NULL), MLK_OK);
    mlkt_digest(o1, c.nq_el * sizeof(float));
    mlkt_digest(dk1, c.nkv_el * sizeof(float));
    mlkt_digest(dv1, c.nkv_el * sizeof(float));
    mlkt_free(o1); mlkt_free(o2); mlkt_free(l1); mlkt_free(l2); mlkt_free(dk1); mlkt_free(dk2); mlkt_free(dv1);
    free(buf);
    case_free(&c);
}

/* ---- bad descriptors: the right code, outputs untouched ---- */

static void expect_error(const mlk_attn_desc *d, mlk_status want, const char *what)
{
    float q[64], k[64], v[64], dout[64], o[64], lse[16], dq[64], dk[64], dv[64];
    float o_s[64], lse_s[16], dq_s[64], dk_s[64], dv_s[64];
    for (int i = 0; i < 64; i++) q[i] = k[i] = v[i] = dout[i] = 0.5f;
    for (int i = 0; i < 64; i++) o[i] = dq[i] = dk[i] = dv[i] = 7.0f;
    for (int i = 0; i < 16; i++) lse[i] = 7.0f;
    memcpy(o_s, o, sizeof o); memcpy(lse_s, lse, sizeof lse);
    memcpy(dq_s, dq, sizeof dq); memcpy(dk_s, dk, sizeof dk); memcpy(dv_s, dv, sizeof dv);
    CHECKF(mlk_attn_fwd(d, q, k, v, o, lse) == want, "fwd %s", what);
    CHECKF(mlk_attn_naive(d, q, k, v, o, lse) == want, "naive %s", what);
    CHECKF(mlk_attn_bwd(d, q, k, v, o, dout, lse_s, dq, dk, dv) == want, "bwd %s", what);
    CHECKF(mlkt_same(o, o_s, sizeof o) && mlkt_same(lse, lse_s, sizeof lse) && mlkt_same(dq, dq_s, sizeof dq) &&
           mlkt_same(dk, dk_s, sizeof dk) && mlkt_same(dv, dv_s, sizeof dv), "outputs touched: %s", what);
}

static void test_bad_args(void)
{
    static const int bad_parent[3] = {-1, 1, 0}, bad_parent2[3] = {-1, -2, 0}, ok_parent[3] = {-1, 0, 0};
    int kv_len_big[2] = {4, 5}, kv_len_neg[2] = {-1, 2}, kv_len_short[2] = {4, 2};
    float x[64], o[64];
    mlk_attn_desc ok = base_desc(2, 2, 1, 3, 4, 2), d;
    expect_error(NULL, MLK_ERR_NULL, "NULL desc");
    CHECK_INT(mlk_attn_fwd(&ok, NULL, x, x, o, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_attn_fwd(&ok, x, NULL, x, o, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_attn_fwd(&ok, x, x, NULL, o, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_attn_fwd(&ok, x, x, x, NULL, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_attn_naive(&ok, x, x, NULL, o, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_attn_bwd(&ok, x, x, x, x, NULL, x, x, x, x), MLK_ERR_NULL);
    CHECK_INT(mlk_attn_bwd(&ok, x, x, x, x, x, NULL, x, x, x), MLK_ERR_NULL);
    CHECK_INT(mlk_attn_bwd(&ok, x, x, x, NULL, x, x, x, x, x), MLK_ERR_NULL);
    d = ok; d.batch = 0; expect_error(&d, MLK_ERR_SHAPE, "batch 0");
    d = ok; d.heads = -1; expect_error(&d, MLK_ERR_SHAPE, "heads -1");
    d = ok; d.kv_heads = -2; expect_error(&d, MLK_ERR_SHAPE, "kv_heads -2");
    d = ok; d.heads = 3; d.kv_heads = 2; expect_error(&d, MLK_ERR_SHAPE, "heads % kv_heads");
    d = ok; d.len_q = 0; expect_error(&d, MLK_ERR_SHAPE, "len_q 0");
    d = ok; d.len_kv = -1; expect_error(&d, MLK_ERR_SHAPE, "len_kv -1");
    d = ok; d.head_dim = 0; expect_error(&d, MLK_ERR_SHAPE, "head_dim 0");
    d = ok; d.tile_q = -1; expect_error(&d, MLK_ERR_SHAPE, "tile_q -1");
    d = ok; d.kv_len = kv_len_big; expect_error(&d, MLK_ERR_SHAPE, "kv_len > len_kv");
    d = ok; d.kv_len = kv_len_neg; expect_error(&d, MLK_ERR_SHAPE, "kv_len < 0");
    d = ok; d.tree_parent = bad_parent; expect_error(&d, MLK_ERR_TREE, "parent >= i");
    d = ok; d.tree_parent = bad_parent2; expect_error(&d, MLK_ERR_TREE, "parent < -1");
    d = ok; d.tree_parent = ok_parent; d.kv_len = kv_len_short; expect_error(&d, MLK_ERR_SHAPE, "tree longer than item");
    d = ok; d.layout = (mlk_layout)7; expect_error(&d, MLK_ERR_ARG, "layout");
    d = ok; d.window = -1; expect_error(&d, MLK_ERR_ARG, "window -1");
    d = ok; d.softcap = -1; expect_error(&d, MLK_ERR_ARG, "softcap -1");
    d = ok; d.scale = NAN; expect_error(&d, MLK_ERR_ARG, "scale NaN");
    d = ok; d.batch = INT_MAX; d.heads = INT_MAX; d.kv_heads = 1; d.len_q = INT_MAX; d.head_dim = INT_MAX;
    expect_error(&d, MLK_ERR_OVERFLOW, "element count overflows");
    CHECK(mlk_attn_workspace_size(&d) == 0);
    CHECK(mlk_attn_workspace_size(NULL) == 0);
}

int main(void)
{
    mlkt_file = "test_attn";
    MLKT_RUN(test_bad_args, 1);
    MLKT_RUN(test_tree_roots, 2);
    MLKT_RUN(test_hard_cases, 3);
    MLKT_RUN(test_finite_differences, 4);
    MLKT_RUN(test_workspace_and_optional, 5);
    MLKT_RUN(test_grid, 6);
    return mlkt_finish();
}

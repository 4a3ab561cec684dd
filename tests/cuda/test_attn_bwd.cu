/* CUDA attention backward (mlk_cuda_attn_bwd, mlk_cuda_attn_sinks_grad):
   dq, dk, dv and the sink gradient against a double reference in this
   file, within twice the error of the CPU's mlk_attn_bwd on the same
   inputs (bf16 / fp16: inputs rounded to the dtype, the output rounding
   allowed for) plus a floor; every feature and hard case (Nq != Nkv, tails,
   a fully masked first KV tile, rows that see nothing, GQA and MQA,
   windows, softcap, sinks, kv_len with an empty item and non-finite keys
   past it, multi-root trees, both layouts, head_dim 1 to 256); central
   finite differences in double; two runs bitwise equal; bad arguments.
   The tensor-core path (bf16 / fp16 at head_dim 64, 96, 128) is held
   instead to twice the error of a plain T backward (fp32 products, P and
   dS rounded to T) plus a floor, and every case checks which path the
   dispatch took. */
#define MLKCT_HEADER_IMPL
#include "mlkct.h"
#include "attn_ref.h"

/* ---- double reference: forward, backward and sink gradient ---- */

static bool ref_sees(const mlk_attn_desc *d, int n_b, int i, int j)
{
    int off = n_b - d->len_q;
    long pi, pj;
    if (j >= n_b) return false;
    if (d->tree_parent) {
        if (j >= off && !attn_ref_is_ancestor_or_self(d->tree_parent, j - off, i)) return false;
        pi = off + attn_ref_depth(d->tree_parent, i);
        pj = j >= off ? off + attn_ref_depth(d->tree_parent, j - off) : j;
    } else {
        if (d->causal && j > i + off) return false;
        pi = i + off;
        pj = j;
    }
    if (d->window > 0) {
        if (d->causal || d->tree_parent) return pj > pi - d->window;
        return labs(pj - pi) < d->window;
    }
    return true;
}

struct ref_grads {
    std::vector<double> o, lse, dq, dk, dv, dsinks;
};

static int kv_heads_of(const mlk_attn_desc *d) { return d->kv_heads ? d->kv_heads : d->heads; }
static int len_kv_of(const mlk_attn_desc *d) { return d->len_kv ? d->len_kv : d->len_q; }

/* The attention of d on double inputs (sinks: NULL or [heads]); with dout,
   the gradients of sum(dout * o) too. */
static void ref_attn(const mlk_attn_desc *d, const double *q, const double *k, const double *v, const double *sinks,
                     const double *dout, ref_grads *r)
{
    int hkv = kv_heads_of(d), nkv = len_kv_of(d), dim = d->head_dim, group = d->heads / hkv;
    double scale = d->scale != 0 ? (double)d->scale : 1.0 / sqrt((double)dim), cap = d->softcap;
    size_t nq_el = (size_t)d->batch * d->heads * d->len_q * dim, nkv_el = (size_t)d->batch * hkv * nkv * dim;
    std::vector<double> s(nkv), u(nkv), p(nkv);
    r->o.assign(nq_el, 0.0);
    r->lse.assign((size_t)d->batch * d->heads * d->len_q, -INFINITY);
    r->dq.assign(nq_el, 0.0);
    r->dk.assign(nkv_el, 0.0);
    r->dv.assign(nkv_el, 0.0);
    r->dsinks.assign(d->heads, 0.0);
    for (int b = 0; b < d->batch; b++) {
        int n_b = d->kv_len ? d->kv_len[b] : nkv;
        for (int h = 0; h < d->heads; h++)
            for (int i = 0; i < d->len_q; i++) {
                size_t qi = attn_ref_at(d, d->heads, d->len_q, b, h, i), row = ((size_t)b * d->heads + h) * d->len_q + i;
                double m = sinks ? sinks[h] : -INFINITY, l = 0, row_d = 0;
                for (int j = 0; j < nkv; j++) {
                    const double *kj = k + attn_ref_at(d, hkv, nkv, b, h / group, j);
                    double dot = 0;
                    s[j] = -INFINITY;
                    if (!ref_sees(d, n_b, i, j)) continue;
                    for (int e = 0; e < dim; e++) dot += q[qi + e] * kj[e];
                    u[j] = dot * scale;
                    s[j] = cap > 0 ? cap * tanh(u[j] / cap) : u[j];
                    if (s[j] > m) m = s[j];
                }
                if (m == -INFINITY) continue; /* sees nothing, no sink: o = 0, lse = -inf, no gradient */
                l = sinks ? exp(sinks[h] - m) : 0;
                for (int j = 0; j < nkv; j++) l += p[j] = s[j] == -INFINITY ? 0 : exp(s[j] - m);
                for (int j = 0; j < nkv; j++) {
                    p[j] /= l;
                    if (s[j] == -INFINITY) continue; /* unseen: its value never counts */
                    for (int e = 0; e < dim; e++) r->o[qi + e] += p[j] * v[attn_ref_at(d, hkv, nkv, b, h / group, j) + e];
                }
                r->lse[row] = m + log(l);
                if (!dout) continue;
                for (int e = 0; e < dim; e++) row_d += dout[qi + e] * r->o[qi + e];
                if (sinks) r->dsinks[h] -= exp(sinks[h] - r->lse[row]) * row_d;
                for (int j = 0; j < nkv; j++) {
                    size_t kj = attn_ref_at(d, hkv, nkv, b, h / group, j);
                    double dp = 0, ds;
                    if (p[j] == 0) continue;
                    for (int e = 0; e < dim; e++) dp += dout[qi + e] * v[kj + e];
                    ds = p[j] * (dp - row_d);
                    if (cap > 0) ds *= 1 - tanh(u[j] / cap) * tanh(u[j] / cap);
                    for (int e = 0; e < dim; e++) {
                        r->dq[qi + e] += scale * ds * k[kj + e];
                        r->dk[kj + e] += scale * ds * q[qi + e];
                        r->dv[kj + e] += p[j] * dout[qi + e];
                    }
                }
            }
    }
}

static bool finite(const std::vector<double> &x)
{
    for (double v : x)
        if (!(v - v == 0)) return false;
    return true;
}

static std::vector<double> to_double(const std::vector<float> &x) { return std::vector<double>(x.begin(), x.end()); }

static void describe(const mlk_attn_desc *d, const char *type, char *buf, size_t n)
{
    snprintf(buf, n, "%s B%d H%d/%d Nq%d Nkv%d D%d causal%d win%d cap%g sinks%d kvlen%d tree%d layout%d", type,
             d->batch, d->heads, kv_heads_of(d), d->len_q, len_kv_of(d), d->head_dim, d->causal, d->window,
             (double)d->softcap, d->sinks != NULL, d->kv_len != NULL, d->tree_parent != NULL, (int)d->layout);
}

/* ---- which kernels ran ---- */

/* Launches of the kernels given, summed (-1: not observable). */
template <typename... K> static long launches_of(K... kernels)
{
    long n = 0;
    ((n += mlkct_launches_of(kernels)), ...);
    return mlkct_launches() < 0 ? -1 : n;
}

/* Launches of the tensor-core backward's kernels (fp32 has none). */
template <typename T> static long mma_bwd_launches(void)
{
    if constexpr (sizeof(T) == 4)
        return launches_of();
    else
        return launches_of(mlk_cuda__attn_bwd_dkdv_mma_kernel<T, 64>, mlk_cuda__attn_bwd_dkdv_mma_kernel<T, 96>,
                           mlk_cuda__attn_bwd_dkdv_mma_kernel<T, 128>, mlk_cuda__attn_bwd_dq_mma_kernel<T, 64>,
                           mlk_cuda__attn_bwd_dq_mma_kernel<T, 96>, mlk_cuda__attn_bwd_dq_mma_kernel<T, 128>);
}

/* Launches of the SIMT backward's dK / dV and dQ kernels. */
template <typename T> static long simt_bwd_launches(void)
{
    return launches_of(mlk_cuda__attn_bwd_dkdv_kernel<T, 32>, mlk_cuda__attn_bwd_dkdv_kernel<T, 64>,
                       mlk_cuda__attn_bwd_dkdv_kernel<T, 128>, mlk_cuda__attn_bwd_dkdv_kernel<T, 256>,
                       mlk_cuda__attn_bwd_dq_kernel<T, 32>, mlk_cuda__attn_bwd_dq_kernel<T, 64>,
                       mlk_cuda__attn_bwd_dq_kernel<T, 128>, mlk_cuda__attn_bwd_dq_kernel<T, 256>);
}

/* ---- one case: inputs, the CPU twin, the device, the reference ---- */

struct attn_inputs {
    size_t nq_el, nkv_el, nrow;
    /* as the device sees them (rounded to T); o and lse from the CPU forward */
    std::vector<float> q, k, v, dout, o, lse;
};

/* Random inputs rounded to T, and the CPU forward's o (rounded to T) and
   lse. poison_tail: K and V rows past each item's kv_len are inf / NaN (no
   query sees them, so they must not matter). */
template <typename T>
static void make_inputs(const mlk_attn_desc *d, double q_std, bool poison_tail, attn_inputs *in)
{
    int hkv = kv_heads_of(d), nkv = len_kv_of(d);
    in->nq_el = (size_t)d->batch * d->heads * d->len_q * d->head_dim;
    in->nkv_el = (size_t)d->batch * hkv * nkv * d->head_dim;
    in->nrow = (size_t)d->batch * d->heads * d->len_q;
    std::vector<float> q(in->nq_el), k(in->nkv_el), v(in->nkv_el), dout(in->nq_el), o(in->nq_el);
    mlkt_fill_normal(q.data(), q.size(), q_std);
    mlkt_fill_normal(k.data(), k.size(), 1.0);
    mlkt_fill_uniform(v.data(), v.size(), -1, 1);
    mlkt_fill_uniform(dout.data(), dout.size(), -1, 1);
    mlkct_round<T>(q.data(), q.size(), &in->q);
    mlkct_round<T>(k.data(), k.size(), &in->k);
    mlkct_round<T>(v.data(), v.size(), &in->v);
    mlkct_round<T>(dout.data(), dout.size(), &in->dout);
    if (poison_tail && d->kv_len)
        for (int b = 0; b < d->batch; b++)
            for (int h = 0; h < hkv; h++)
                for (int j = d->kv_len[b]; j < nkv; j++) {
                    size_t at = attn_ref_at(d, hkv, nkv, b, h, j);
                    for (int e = 0; e < d->head_dim; e++) {
                        in->k[at + e] = e % 2 ? INFINITY : NAN;
                        in->v[at + e] = e % 2 ? NAN : -INFINITY;
                    }
                }
    in->lse.resize(in->nrow);
    CHECK_INT(mlk_attn_fwd(d, in->q.data(), in->k.data(), in->v.data(), o.data(), in->lse.data()), MLK_OK);
    mlkct_round<T>(o.data(), o.size(), &in->o);
}

template <typename T> static float round_to(float x) { return mlkct_to_float(mlkct_from_float<T>(x)); }

/* The backward as a plain T computation, the tensor-core path's yardstick:
   float scores, P = exp(s - lse), dP and D in float, dS = P (dP - D)
   (softcap: over cosh^2), then P and dS rounded to T for the float sums
   dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K; results rounded to T. */
template <typename T> static void naive_bwd(const mlk_attn_desc *d, const attn_inputs &in, ref_grads *r)
{
    int hkv = kv_heads_of(d), nkv = len_kv_of(d), dim = d->head_dim, group = d->heads / hkv;
    float scale = d->scale != 0 ? d->scale : 1.0f / sqrtf((float)dim), cap = d->softcap;
    std::vector<float> dq(in.nq_el, 0.0f), dk(in.nkv_el, 0.0f), dv(in.nkv_el, 0.0f);
    for (int b = 0; b < d->batch; b++) {
        int n_b = d->kv_len ? d->kv_len[b] : nkv;
        for (int h = 0; h < d->heads; h++)
            for (int i = 0; i < d->len_q; i++) {
                size_t qi = attn_ref_at(d, d->heads, d->len_q, b, h, i);
                float lse = in.lse[((size_t)b * d->heads + h) * d->len_q + i], row_d = 0;
                if (lse == -INFINITY) continue;
                for (int e = 0; e < dim; e++) row_d += in.dout[qi + e] * in.o[qi + e];
                for (int j = 0; j < nkv; j++) {
                    if (!ref_sees(d, n_b, i, j)) continue;
                    size_t kj = attn_ref_at(d, hkv, nkv, b, h / group, j);
                    float dot = 0, dp = 0;
                    for (int e = 0; e < dim; e++) {
                        dot += in.q[qi + e] * in.k[kj + e];
                        dp += in.dout[qi + e] * in.v[kj + e];
                    }
                    float u = dot * scale, sc = cap > 0 ? cap * tanhf(u / cap) : u, p = expf(sc - lse);
                    float ds = p * (dp - row_d) / (cap > 0 ? coshf(u / cap) * coshf(u / cap) : 1.0f);
                    float pt = round_to<T>(p), dst = round_to<T>(ds);
                    for (int e = 0; e < dim; e++) {
                        dq[qi + e] += dst * in.k[kj + e];
                        dk[kj + e] += dst * in.q[qi + e];
                        dv[kj + e] += pt * in.dout[qi + e];
                    }
                }
            }
    }
    r->dq.resize(in.nq_el);
    r->dk.resize(in.nkv_el);
    r->dv.resize(in.nkv_el);
    for (size_t x = 0; x < in.nq_el; x++) r->dq[x] = round_to<T>(scale * dq[x]);
    for (size_t x = 0; x < in.nkv_el; x++) {
        r->dk[x] = round_to<T>(scale * dk[x]);
        r->dv[x] = round_to<T>(dv[x]);
    }
}

template <typename T> struct device_bufs {
    dbuf<T> q, k, v, o, dout, dq, dk, dv;
    dbuf<float> lse, dsinks;
    dbuf<unsigned char> ws;
    void *ws_aligned;
    size_t ws_bytes;
};

template <typename T> static dbuf<T> upload(const std::vector<float> &x)
{
    return dbuf_from(mlkct_round<T>(x.data(), x.size(), NULL).data(), x.size());
}

template <typename T> static device_bufs<T> device_upload(const mlk_attn_desc *d, const attn_inputs &in)
{
    device_bufs<T> b;
    b.q = upload<T>(in.q);
    b.k = upload<T>(in.k);
    b.v = upload<T>(in.v);
    b.o = upload<T>(in.o);
    b.dout = upload<T>(in.dout);
    b.lse = dbuf_from(in.lse.data(), in.nrow);
    b.dq = dbuf_new<T>(in.nq_el);
    b.dk = dbuf_new<T>(in.nkv_el);
    b.dv = dbuf_new<T>(in.nkv_el);
    b.dsinks = dbuf_new<float>((size_t)d->heads);
    b.ws_bytes = mlk_cuda_attn_bwd_workspace_size(d);
    CHECK(b.ws_bytes > 0);
    b.ws = dbuf_new<unsigned char>(b.ws_bytes + 256);
    b.ws_aligned = (void *)(((uintptr_t)b.ws.p + 255) / 256 * 256);
    return b;
}

template <typename T> static void device_free(device_bufs<T> &b)
{
    dbuf_free(b.q);
    dbuf_free(b.k);
    dbuf_free(b.v);
    dbuf_free(b.o);
    dbuf_free(b.dout);
    dbuf_free(b.lse);
    dbuf_free(b.dq);
    dbuf_free(b.dk);
    dbuf_free(b.dv);
    dbuf_free(b.dsinks);
    dbuf_free(b.ws);
}

/* Which gradients a call asks for. */
struct wanted {
    bool dq, dk, dv;
};

/* One backward (and sink gradient) on the device from poisoned outputs;
   returns dq, dk, dv, dsinks as bytes. caller_ws: the caller's workspace,
   else the launcher's own allocation. */
template <typename T>
static std::vector<unsigned char> device_run(const mlk_attn_desc *d, device_bufs<T> &b, wanted w, bool caller_ws)
{
    void *ws = caller_ws ? b.ws_aligned : NULL;
    size_t ws_bytes = caller_ws ? b.ws_bytes : 0;
    dbuf_poison(b.dq);
    dbuf_poison(b.dk);
    dbuf_poison(b.dv);
    dbuf_poison(b.dsinks);
    CHECK_INT(mlk_cuda_attn_bwd<T>(d, b.q.p, b.k.p, b.v.p, b.o.p, b.dout.p, b.lse.p, w.dq ? b.dq.p : NULL,
                                   w.dk ? b.dk.p : NULL, w.dv ? b.dv.p : NULL, ws, ws_bytes, 0),
              MLK_OK);
    if (d->sinks)
        CHECK_INT(mlk_cuda_attn_sinks_grad<T>(d, b.o.p, b.dout.p, b.lse.p, b.dsinks.p, ws, ws_bytes, 0), MLK_OK);
    std::vector<unsigned char> bytes;
    mlkct_append(bytes, b.dq);
    mlkct_append(bytes, b.dk);
    mlkct_append(bytes, b.dv);
    mlkct_append(bytes, b.dsinks);
    return bytes;
}

/* every byte still the 0xFF fill */
static bool untouched(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0xFF) return false;
    return true;
}

static double grad_floor(const ref_grads &r)
{
    return mlkt_ulps(8, 1 + mlkct_max_abs(r.dq.data(), r.dq.size()) + mlkct_max_abs(r.dk.data(), r.dk.size()) +
                            mlkct_max_abs(r.dv.data(), r.dv.size()));
}

/* The device's dq, dk, dv (and dsinks) against the double reference, held
   to twice the CPU twin's error on the same inputs plus a floor. */
template <typename T>
static void check_case(const mlk_attn_desc *d, double q_std = 1.0, bool poison_tail = false,
                       wanted w = {true, true, true})
{
    char what[150];
    attn_inputs in;
    ref_grads ref;
    describe(d, mlkct_type_name<T>(), what, sizeof what);
    make_inputs<T>(d, q_std, poison_tail, &in);
    std::vector<float> dq_cpu(in.nq_el), dk_cpu(in.nkv_el), dv_cpu(in.nkv_el), ds_cpu(d->heads);
    CHECK_INT(mlk_attn_bwd(d, in.q.data(), in.k.data(), in.v.data(), in.o.data(), in.dout.data(), in.lse.data(),
                           dq_cpu.data(), dk_cpu.data(), dv_cpu.data()),
              MLK_OK);
    if (d->sinks)
        CHECK_INT(mlk_attn_sinks_grad(d, in.o.data(), in.dout.data(), in.lse.data(), ds_cpu.data()), MLK_OK);
    std::vector<double> qd = to_double(in.q), kd = to_double(in.k), vd = to_double(in.v), dod = to_double(in.dout);
    std::vector<double> sinks_d(d->sinks ? d->sinks : (const float *)NULL, d->sinks ? d->sinks + d->heads : NULL);
    ref_attn(d, qd.data(), kd.data(), vd.data(), d->sinks ? sinks_d.data() : NULL, dod.data(), &ref);
    CHECKF(finite(ref.dq) && finite(ref.dk) && finite(ref.dv) && finite(ref.dsinks),
           "%s: the reference is not finite (mlkct_err would not see the device's error)", what);

    device_bufs<T> b = device_upload<T>(d, in);
    const bool mma = mlk_cuda__attn_bwd_mma_supported<T>(d, b.q.p, b.k.p, b.v.p, b.dout.p);
    ref_grads naive;
    if (mma) naive_bwd<T>(d, in, &naive);
    long mma_before = mma_bwd_launches<T>(), simt_before = simt_bwd_launches<T>();
    int calls = 0;
    std::vector<unsigned char> out = mlkct_orders(what, [&]() { return device_run<T>(d, b, w, calls++ % 2 == 0); });
    CHECKF(device_run<T>(d, b, w, false) == out, "%s: a second run gives other bits", what);
    if (mma_before >= 0)
        CHECKF((mma_bwd_launches<T>() > mma_before) == mma && (simt_bwd_launches<T>() > simt_before) == !mma,
               "%s: the dispatch took the %s path", what, mma ? "tensor-core" : "SIMT");
    const T *dq = (const T *)out.data(), *dk = dq + in.nq_el, *dv = dk + in.nkv_el;
    const float *dsinks = (const float *)(dv + in.nkv_el);
    const double floor_ = grad_floor(ref);
    /* the yardstick: the CPU twin, or on tensor cores the naive T backward */
    auto check_grad = [&](const char *name, bool asked, const T *got, const std::vector<double> &exact,
                          const std::vector<float> &cpu, const std::vector<double> &plain_t) {
        size_t n = exact.size();
        if (!asked) {
            CHECKF(untouched((const unsigned char *)got, n * sizeof(T)), "%s written though NULL: %s", name, what);
            return;
        }
        double yard = mma ? mlkct_err_rounded<T>(plain_t.data(), exact.data(), n)
                          : mlkt_max_abs_err(cpu.data(), exact.data(), n);
        double fl = floor_ + (mma ? mlkct_unit<T>() * mlkct_max_abs(exact.data(), n) / 4 : 0.0);
        CHECK_NAIVE(mlkct_err(got, exact.data(), n), yard, fl, "%s %s%s", name, what, mma ? " tensor cores" : "");
    };
    check_grad("dq", w.dq, dq, ref.dq, dq_cpu, naive.dq);
    check_grad("dk", w.dk, dk, ref.dk, dk_cpu, naive.dk);
    check_grad("dv", w.dv, dv, ref.dv, dv_cpu, naive.dv);
    if (d->sinks) /* a sum over every row of the head: the floor scales with their count */
        CHECK_NAIVE(mlkt_max_abs_err(dsinks, ref.dsinks.data(), d->heads),
                    mlkt_max_abs_err(ds_cpu.data(), ref.dsinks.data(), d->heads),
                    mlkt_ulps(8 * d->batch * d->len_q, 1 + mlkct_max_abs(ref.dsinks.data(), d->heads)), "dsinks %s",
                    what);
    mlkt_digest(out.data(), out.size());
    device_free(b);
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

/* ---- the cases ---- */

static const float sinks8[8] = {0.5f, -1.0f, 2.0f, -INFINITY, 0.0f, 1.5f, -3.0f, 0.25f};

template <typename T> static void test_features(void)
{
    static const int parent[9] = {-1, 0, -1, 1, 2, 0, -1, 3, 6}; /* three roots */
    int kv_len[2] = {0, 45}, kv_len2[2] = {40, 13};
    mlk_attn_desc d = base_desc(1, 2, 2, 5, 37, 64); /* Nq != Nkv, 37 keys: a tail tile */
    d.causal = 1;
    check_case<T>(&d);
    d = base_desc(1, 2, 1, 3, 70, 64); /* a window of 8 keys: the first two KV tiles fully masked */
    d.causal = 1;
    d.window = 8;
    d.layout = MLK_BNHD;
    check_case<T>(&d);
    d = base_desc(1, 2, 2, 40, 10, 80); /* Nq > Nkv, causal: the top 30 rows see nothing */
    d.causal = 1;
    check_case<T>(&d);
    d = base_desc(2, 8, 2, 9, 45, 64); /* GQA 8/2, an empty item, NaN / inf keys past kv_len */
    d.kv_len = kv_len;
    d.causal = 1;
    d.sinks = sinks8;
    check_case<T>(&d, 1.0, true);
    d = base_desc(2, 4, 1, 7, 40, 128); /* MQA, window without causal, softcap, BNHD */
    d.kv_len = kv_len2;
    d.window = 6;
    d.softcap = 1.5f;
    d.layout = MLK_BNHD;
    check_case<T>(&d, 3.0, true);
    d = base_desc(1, 4, 2, 9, 30, 64); /* a tree with three roots over a prefix, window, sinks */
    d.tree_parent = parent;
    d.window = 3;
    d.sinks = sinks8;
    check_case<T>(&d);
    d = base_desc(2, 3, 3, 6, 0, 1); /* head_dim 1, len_kv 0 = len_q */
    d.softcap = 0.7f;
    check_case<T>(&d, 2.0);
}

/* The tensor-core path: every case below takes it (check_case checks). */
template <typename T> static void test_mma(void)
{
    int kv_len[2] = {75, 0}, kv_len2[2] = {61, 33};
    mlk_attn_desc d = base_desc(2, 8, 2, 37, 75, 64); /* GQA 8/2, Nq != Nkv, tails, an empty item, NaN past kv_len */
    d.causal = 1;
    d.kv_len = kv_len;
    d.sinks = sinks8;
    check_case<T>(&d, 1.0, true);
    d = base_desc(1, 4, 1, 50, 150, 128); /* MQA, causal window: the first key tiles seen by no row */
    d.causal = 1;
    d.window = 24;
    d.layout = MLK_BNHD;
    check_case<T>(&d);
    d = base_desc(1, 2, 2, 70, 30, 96); /* Nq > Nkv, causal: the first 40 rows see nothing */
    d.causal = 1;
    d.layout = MLK_BNHD;
    check_case<T>(&d);
    d = base_desc(2, 4, 1, 45, 61, 64); /* two-sided window, softcap, kv_len, BHND */
    d.window = 10;
    d.softcap = 2.0f;
    d.kv_len = kv_len2;
    check_case<T>(&d, 2.0, true);
    d = base_desc(1, 2, 1, 130, 200, 128); /* no mask: whole tiles without a per-key test, softcap */
    d.softcap = 5.0f;
    check_case<T>(&d, 2.0);
    d = base_desc(1, 3, 3, 33, 33, 96); /* one gradient at a time: the others untouched */
    d.causal = 1;
    check_case<T>(&d, 1.0, false, wanted{true, false, false});
    check_case<T>(&d, 1.0, false, wanted{false, true, false});
    check_case<T>(&d, 1.0, false, wanted{false, false, true});
}

/* Which calls the dispatch sends to the tensor cores: the forward's rule,
   and dO 16-byte aligned; a misaligned dO still runs (SIMT). */
static void test_mma_dispatch(void)
{
    typedef __nv_bfloat16 bf;
    mlk_attn_desc d = base_desc(1, 1, 1, 16, 16, 64);
    dbuf<bf> b = dbuf_new<bf>(5120);
    dbuf<float> f = dbuf_new<float>(16);
    const bf *p = b.p;
    CHECK(mlk_cuda__attn_bwd_mma_supported(&d, p, p, p, p));
    CHECK(!mlk_cuda__attn_bwd_mma_supported(&d, p, p, p, p + 1));                     /* dO not 16-byte aligned */
    CHECK(!mlk_cuda__attn_bwd_mma_supported(&d, p + 1, p, p, p));                     /* q */
    CHECK(!mlk_cuda__attn_bwd_mma_supported(&d, (const float *)f.p, f.p, f.p, f.p)); /* fp32: SIMT */
    d.len_q = 1;
    d.heads = 8;
    CHECK(!mlk_cuda__attn_bwd_mma_supported(&d, p, p, p, p)); /* 8 rows per kv head: SIMT, as the forward */
    d.kv_heads = 1;
    d.len_q = 2;
    CHECK(mlk_cuda__attn_bwd_mma_supported(&d, p, p, p, p)); /* 16 rows */
    for (int dim : {32, 80, 256}) {
        d.head_dim = dim;
        CHECKF(!mlk_cuda__attn_bwd_mma_supported(&d, p, p, p, p), "head_dim %d: SIMT", dim);
    }
    d.head_dim = 96;
    CHECK(mlk_cuda__attn_bwd_mma_supported(&d, (const __half *)p, (const __half *)p, (const __half *)p,
                                           (const __half *)p));
    int parent[2] = {-1, 0};
    d.tree_parent = parent;
    CHECK(!mlk_cuda__attn_bwd_mma_supported(&d, p, p, p, p)); /* trees: SIMT */
    d = base_desc(1, 1, 1, 16, 16, 64); /* q, k, v, o at p; dO one element past 1024; dq, dk, dv after it */
    long mma_before = mma_bwd_launches<bf>(), simt_before = simt_bwd_launches<bf>();
    CHECK_INT(mlk_cuda_attn_bwd<bf>(&d, p, p, p, p, p + 1025, (const float *)f.p, b.p + 2048, b.p + 3072,
                                    b.p + 4096, NULL, 0, 0),
              MLK_OK);
    if (mma_before >= 0)
        CHECK(mma_bwd_launches<bf>() == mma_before && simt_bwd_launches<bf>() > simt_before);
    dbuf_free(b);
    dbuf_free(f);
}

static void test_more_f32(void)
{
    static const int chain[4] = {-1, 0, 1, 2};
    mlk_attn_desc d = base_desc(1, 4, 4, 33, 65, 64); /* several q and KV tiles, no mask, large scores */
    d.scale = 0.5f;
    check_case<float>(&d, 2.0);
    d = base_desc(1, 4, 2, 97, 130, 64); /* many tiles both ways, GQA, causal window */
    d.causal = 1;
    d.window = 50;
    check_case<float>(&d);
    d = base_desc(1, 2, 2, 4, 9, 256); /* the widest head, a chain tree */
    d.tree_parent = chain;
    check_case<float>(&d);
    d = base_desc(1, 2, 1, 17, 19, 200);
    d.causal = 1;
    d.softcap = 5.0f;
    d.sinks = sinks8;
    check_case<float>(&d);
    d = base_desc(1, 2, 2, 20, 20, 32); /* dq only, then dk only: the others untouched */
    d.causal = 1;
    check_case<float>(&d, 1.0, false, wanted{true, false, false});
    check_case<float>(&d, 1.0, false, wanted{false, true, false});
    check_case<float>(&d, 1.0, false, wanted{false, false, true});
}

/* The device forward's o and lse feed the device backward: the two agree
   on lse (base 2 inside, natural log outside). */
static void test_device_forward(void)
{
    static const int parent[6] = {-1, 0, 0, -1, 3, 1};
    int kv_len[2] = {50, 21};
    mlk_attn_desc cases[2];
    cases[0] = base_desc(2, 8, 2, 21, 50, 64);
    cases[0].causal = 1;
    cases[0].kv_len = kv_len;
    cases[0].softcap = 3.0f;
    cases[0].sinks = sinks8;
    cases[1] = base_desc(1, 2, 1, 6, 40, 80);
    cases[1].tree_parent = parent;
    cases[1].layout = MLK_BNHD;
    for (const mlk_attn_desc &dc : cases) {
        const mlk_attn_desc *d = &dc;
        char what[150];
        attn_inputs in;
        ref_grads ref;
        describe(d, "device fwd", what, sizeof what);
        make_inputs<float>(d, 1.0, false, &in);
        std::vector<float> dq_cpu(in.nq_el), dk_cpu(in.nkv_el), dv_cpu(in.nkv_el);
        CHECK_INT(mlk_attn_bwd(d, in.q.data(), in.k.data(), in.v.data(), in.o.data(), in.dout.data(), in.lse.data(),
                               dq_cpu.data(), dk_cpu.data(), dv_cpu.data()),
                  MLK_OK);
        std::vector<double> qd = to_double(in.q), kd = to_double(in.k), vd = to_double(in.v), dod = to_double(in.dout);
        std::vector<double> sinks_d(sinks8, sinks8 + 8);
        ref_attn(d, qd.data(), kd.data(), vd.data(), d->sinks ? sinks_d.data() : NULL, dod.data(), &ref);
        device_bufs<float> b = device_upload<float>(d, in);
        std::vector<unsigned char> out = mlkct_orders(what, [&]() {
            dbuf_poison(b.o);
            dbuf_poison(b.lse);
            CHECK_INT(mlk_cuda_attn_fwd<float>(d, b.q.p, b.k.p, b.v.p, b.o.p, b.lse.p, NULL, 0, 0), MLK_OK);
            return device_run<float>(d, b, {true, true, true}, false);
        });
        const float *dq = (const float *)out.data(), *dk = dq + in.nq_el, *dv = dk + in.nkv_el;
        double floor_ = grad_floor(ref);
        CHECK_NAIVE(mlkt_max_abs_err(dq, ref.dq.data(), in.nq_el),
                    mlkt_max_abs_err(dq_cpu.data(), ref.dq.data(), in.nq_el), floor_, "dq %s", what);
        CHECK_NAIVE(mlkt_max_abs_err(dk, ref.dk.data(), in.nkv_el),
                    mlkt_max_abs_err(dk_cpu.data(), ref.dk.data(), in.nkv_el), floor_, "dk %s", what);
        CHECK_NAIVE(mlkt_max_abs_err(dv, ref.dv.data(), in.nkv_el),
                    mlkt_max_abs_err(dv_cpu.data(), ref.dv.data(), in.nkv_el), floor_, "dv %s", what);
        mlkt_digest(out.data(), out.size());
        device_free(b);
    }
}

/* Random combinations of every feature, small shapes. */
static void test_grid(void)
{
    static const int ns[] = {1, 7, 32, 45}, dims[] = {8, 64, 80, 128};
    static const int heads[3][2] = {{2, 2}, {8, 2}, {4, 1}};
    int parent[45], kv_len[2];
    for (int t = 0; t < 24; t++) {
        int hsel = mlkt_int(3), nq = ns[mlkt_int(4)], nkv = ns[mlkt_int(4)];
        mlk_attn_desc d = base_desc(1 + mlkt_int(2), heads[hsel][0], heads[hsel][1], nq, nkv, dims[mlkt_int(4)]);
        d.layout = mlkt_int(2) ? MLK_BNHD : MLK_BHND;
        d.softcap = mlkt_int(3) == 0 ? 2.0f : 0.0f;
        d.sinks = mlkt_int(3) == 0 ? sinks8 : NULL;
        d.window = mlkt_int(3) == 0 ? 1 + mlkt_int(20) : 0;
        if (mlkt_int(3) == 0) {
            for (int b = 0; b < d.batch; b++) kv_len[b] = mlkt_int(nkv + 1);
            d.kv_len = kv_len;
        }
        if (mlkt_int(4) == 0 && nkv >= nq) { /* a random forest over the last nq keys */
            for (int i = 0; i < nq; i++) parent[i] = i == 0 || mlkt_int(4) == 0 ? -1 : mlkt_int(i);
            for (int b = 0; b < d.batch; b++) kv_len[b] = nq + mlkt_int(nkv - nq + 1);
            d.tree_parent = parent;
        } else {
            d.causal = mlkt_int(2);
        }
        check_case<float>(&d, 1.0 + mlkt_int(3), d.kv_len != NULL);
    }
}

/* ---- central finite differences in double, independent of the CPU code ---- */

struct fd_ctx {
    const mlk_attn_desc *d;
    std::vector<double> x[4]; /* q, k, v, sinks */
    const double *dout;
    int which;
};

/* L = sum(dout * o) as a function of x[which] */
static double fd_loss(void *p, const double *x)
{
    fd_ctx *f = (fd_ctx *)p;
    const double *in[4] = {f->x[0].data(), f->x[1].data(), f->x[2].data(), f->x[3].data()};
    ref_grads r;
    in[f->which] = x;
    ref_attn(f->d, in[0], in[1], in[2], f->d->sinks ? in[3] : NULL, NULL, &r);
    double loss = 0;
    for (size_t i = 0; i < r.o.size(); i++) loss += f->dout[i] * r.o[i];
    return loss;
}

static void check_fd(const mlk_attn_desc *d)
{
    char what[150];
    attn_inputs in;
    ref_grads ref;
    fd_ctx f;
    describe(d, "fd", what, sizeof what);
    make_inputs<float>(d, 1.0, false, &in);
    std::vector<double> dod = to_double(in.dout);
    f.d = d;
    f.x[0] = to_double(in.q);
    f.x[1] = to_double(in.k);
    f.x[2] = to_double(in.v);
    f.x[3].assign(d->heads, 0.0);
    for (int h = 0; d->sinks && h < d->heads; h++) f.x[3][h] = d->sinks[h];
    f.dout = dod.data();
    ref_attn(d, f.x[0].data(), f.x[1].data(), f.x[2].data(), d->sinks ? f.x[3].data() : NULL, dod.data(), &ref);
    device_bufs<float> b = device_upload<float>(d, in);
    std::vector<unsigned char> out =
        mlkct_orders(what, [&]() { return device_run<float>(d, b, {true, true, true}, true); });
    const float *grad[4] = {(const float *)out.data(), NULL, NULL, NULL};
    grad[1] = grad[0] + in.nq_el;
    grad[2] = grad[1] + in.nkv_el;
    grad[3] = grad[2] + in.nkv_el;
    const std::vector<double> *analytic[4] = {&ref.dq, &ref.dk, &ref.dv, &ref.dsinks};
    for (int w = 0; w < (d->sinks ? 4 : 3); w++) {
        std::vector<double> fd(f.x[w].size());
        f.which = w;
        for (size_t i = 0; i < fd.size(); i++) fd[i] = mlkt_fd(fd_loss, &f, f.x[w].data(), i, 1e-5);
        double scale = 1 + mlkct_max_abs(fd.data(), fd.size());
        double e_ref = mlkt_max_abs_err_d(analytic[w]->data(), fd.data(), fd.size());
        double e_dev = mlkt_max_abs_err(grad[w], fd.data(), fd.size());
        CHECKF(e_ref <= 1e-7 * scale, "%s: the double backward of input %d vs differences: %.3g", what, w, e_ref);
        CHECKF(e_dev <= mlkt_ulps(64, scale), "%s: device gradient of input %d vs differences: %.3g", what, w, e_dev);
    }
    device_free(b);
}

static void test_finite_differences(void)
{
    static const int parent[5] = {-1, 0, -1, 1, 2};
    int kv_len[2] = {6, 3};
    mlk_attn_desc d = base_desc(2, 4, 2, 5, 6, 4); /* GQA, varlen, window, softcap, sinks, BNHD */
    d.causal = 1;
    d.kv_len = kv_len;
    d.window = 3;
    d.softcap = 2.0f;
    d.sinks = sinks8;
    d.layout = MLK_BNHD;
    check_fd(&d);
    d = base_desc(1, 3, 1, 5, 8, 3); /* MQA, a tree with two roots, window */
    d.tree_parent = parent;
    d.window = 2;
    check_fd(&d);
}

/* ---- bad arguments: the CPU's status, nothing launched, nothing written ---- */

/* the backward with every input x and every gradient out */
static mlk_status bwd_all(const mlk_attn_desc *d, const float *x, float *out, void *ws = NULL, size_t ws_bytes = 0)
{
    return mlk_cuda_attn_bwd<float>(d, x, x, x, x, x, x, out, out, out, ws, ws_bytes, 0);
}

static void test_bad_args(void)
{
    static const int bad_parent[3] = {-1, 1, 0}, ok_parent[3] = {-1, 0, 0};
    static const float bad_sinks[2] = {0.0f, INFINITY}, nan_sinks[2] = {NAN, 0.0f};
    int kv_len_big[2] = {4, 5}, kv_len_neg[2] = {-1, 2}, kv_len_short[2] = {4, 2};
    std::vector<float> hx(64, 0.5f), hout(64, 7.0f);
    dbuf<float> x = dbuf_from(hx.data(), 64), out = dbuf_new<float>(64), ds = dbuf_new<float>(4);
    mlk_attn_desc ok = base_desc(2, 2, 1, 3, 4, 2), d;
    struct bad {
        mlk_attn_desc d;
        const char *what;
    } cases[32];
    int n = 0;
#define BAD(stmt, text) do { d = ok; stmt; cases[n].d = d; cases[n++].what = text; } while (0)
    BAD(d.batch = 0, "batch 0");
    BAD(d.heads = -1, "heads -1");
    BAD(d.kv_heads = -2, "kv_heads -2");
    BAD((d.heads = 3, d.kv_heads = 2), "heads % kv_heads");
    BAD(d.len_q = 0, "len_q 0");
    BAD(d.len_kv = -1, "len_kv -1");
    BAD(d.head_dim = 0, "head_dim 0");
    BAD(d.tile_kv = -1, "tile_kv -1");
    BAD(d.scale = NAN, "scale NaN");
    BAD(d.scale = INFINITY, "scale inf");
    BAD(d.softcap = -1.0f, "softcap < 0");
    BAD(d.window = -1, "window < 0");
    BAD(d.layout = (mlk_layout)2, "layout 2");
    BAD(d.threads = -1, "threads < 0");
    BAD(d.kv_len = kv_len_big, "kv_len > len_kv");
    BAD(d.kv_len = kv_len_neg, "kv_len < 0");
    BAD(d.tree_parent = bad_parent, "parent >= i");
    BAD((d.tree_parent = ok_parent, d.kv_len = kv_len_short), "tree with kv_len < len_q");
    BAD(d.sinks = bad_sinks, "sink +inf");
    BAD(d.sinks = nan_sinks, "sink NaN");
#undef BAD
    for (int c = 0; c < n; c++) {
        long launches = mlkct_launches();
        std::vector<float> dq(64, 7.0f), dk(64, 7.0f), dv(64, 7.0f);
        mlk_status cpu = mlk_attn_bwd(&cases[c].d, hx.data(), hx.data(), hx.data(), hx.data(), hx.data(), hx.data(),
                                      dq.data(), dk.data(), dv.data());
        mlk_status gpu = bwd_all(&cases[c].d, x.p, out.p);
        CHECKF(gpu == cpu && gpu != MLK_OK, "%s: %d, CPU %d", cases[c].what, gpu, cpu);
        CHECKF(mlk_cuda_attn_bwd_workspace_size(&cases[c].d) == 0, "%s: a workspace size", cases[c].what);
        if (cases[c].d.sinks) {
            cpu = mlk_attn_sinks_grad(&cases[c].d, hx.data(), hx.data(), hx.data(), dq.data());
            gpu = mlk_cuda_attn_sinks_grad<float>(&cases[c].d, x.p, x.p, x.p, ds.p, NULL, 0, 0);
            CHECKF(gpu == cpu, "sinks grad %s: %d, CPU %d", cases[c].what, gpu, cpu);
        }
        if (launches >= 0) CHECKF(mlkct_launches() == launches, "%s: a rejected call launched a kernel", cases[c].what);
    }
    long launches = mlkct_launches();
    CHECK_INT(bwd_all(NULL, x.p, out.p), MLK_ERR_NULL);
    for (int which = 0; which < 6; which++) {
        const float *p[6] = {x.p, x.p, x.p, x.p, x.p, x.p};
        p[which] = NULL;
        mlk_status st =
            mlk_cuda_attn_bwd<float>(&ok, p[0], p[1], p[2], p[3], p[4], p[5], out.p, out.p, out.p, NULL, 0, 0);
        CHECKF(st == MLK_ERR_NULL, "input %d NULL: %d", which, st);
    }
    d = ok;
    d.head_dim = 257; /* the device's limit (the CPU has none) */
    CHECK_INT(bwd_all(&d, x.p, out.p), MLK_ERR_SHAPE);
    d = ok;
    CHECK_INT(mlk_cuda_attn_sinks_grad<float>(&d, x.p, x.p, x.p, ds.p, NULL, 0, 0), MLK_ERR_NULL); /* no sinks */
    d.sinks = sinks8;
    CHECK_INT(mlk_cuda_attn_sinks_grad<float>(&d, x.p, x.p, x.p, NULL, NULL, 0, 0), MLK_ERR_NULL);
    size_t need = mlk_cuda_attn_bwd_workspace_size(&ok);
    CHECK(need > 0);
    dbuf<unsigned char> ws = dbuf_new<unsigned char>(need + 512);
    unsigned char *aligned = (unsigned char *)(((uintptr_t)ws.p + 255) / 256 * 256);
    CHECK_INT(bwd_all(&ok, x.p, out.p, aligned, need - 1), MLK_ERR_ARG);
    CHECK_INT(bwd_all(&ok, x.p, out.p, aligned + 4, need), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_attn_sinks_grad<float>(&d, x.p, x.p, x.p, ds.p, aligned + 4, need, 0), MLK_ERR_ARG);
    CHECK_INT(bwd_all(&ok, x.p, NULL), MLK_OK); /* nothing asked for */
    if (launches >= 0) CHECKF(mlkct_launches() == launches, "a rejected call launched a kernel");
    CHECK(untouched((const unsigned char *)dbuf_get(out).data(), 64 * sizeof(float)));
    CHECK(untouched((const unsigned char *)dbuf_get(ds).data(), 4 * sizeof(float)));
    dbuf_free(x);
    dbuf_free(out);
    dbuf_free(ds);
    dbuf_free(ws);
}

int main(void)
{
    MLKT_RUN(test_features<float>, 1);
    MLKT_RUN(test_features<__nv_bfloat16>, 2);
    MLKT_RUN(test_features<__half>, 3);
    MLKT_RUN(test_mma<__nv_bfloat16>, 9);
    MLKT_RUN(test_mma<__half>, 10);
    MLKT_RUN(test_mma_dispatch, 11);
    MLKT_RUN(test_more_f32, 4);
    MLKT_RUN(test_grid, 7);
    MLKT_RUN(test_device_forward, 8);
    MLKT_RUN(test_finite_differences, 5);
    MLKT_RUN(test_bad_args, 6);
    return mlkct_finish("test_attn_bwd");
}

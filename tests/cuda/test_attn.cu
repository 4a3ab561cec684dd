/* CUDA attention forward: mlk_cuda_attn_fwd against mlk_attn_fwd,
   mlk_attn_naive and a double reference of this file (float32, bf16 and
   fp16 tensors, both layouts, GQA / MQA, causal with Nq != Nkv, windows,
   softcap, sinks, kv_len with empty items, multi-root trees, head_dim 1 to
   256, rows that see nothing, non-finite keys and values a query cannot
   see, split key ranges), and mlk_cuda_kv_attn against mlk_kv_attn_opt on
   the same cache (F32, F16, Q8, Q4 pools with forked sequences; decode,
   chunked prefill, trees, split-K decode, a bookkeeping-only cache), plus
   every bad argument of both launchers. */
#include "mlkct.h"
#include "attn_ref.h"

/* ---- a reference of this file: per query row, in double or rounding every operation to float ---- */

struct ref_item {
    int n_keys, n_q, causal, window;
    const int *parent; /* NULL or [n_q] */
};

static bool ref_sees(const ref_item &m, int i, int j)
{
    long off = (long)m.n_keys - m.n_q, pi = i + off, pj = j;
    if (j >= m.n_keys) return false;
    if (m.parent) {
        pi = off + attn_ref_depth(m.parent, i);
        if (j >= off) {
            int node = i, t = (int)(j - off);
            while (node > t) node = m.parent[node];
            if (node != t) return false;
            pj = off + attn_ref_depth(m.parent, t);
        }
    } else if (m.causal && j > pi) {
        return false;
    }
    if (m.window > 0) return (m.causal || m.parent) ? pj > pi - m.window : labs(pj - pi) < m.window;
    return true;
}

static double rnd(double x, bool f32) { return f32 ? (double)(float)x : x; }

/* p rounded to the 16-bit type of a yardstick (identity for none). */
typedef double (*p_rounding)(double p);
static double p_exact(double p) { return p; }
template <typename T> static double p_to(double p)
{
    float f = (float)p;
    std::vector<float> back;
    mlkct_round<T>(&f, 1, &back);
    return back[0];
}

/* One row: q [d], key / value j at k + j * ld, v + j * ld; writes o [d],
   returns lse. round_p rounds each probability before P V: the plain
   bf16 / fp16 matmul-softmax-matmul yardstick of the tensor-core kernel. */
static double ref_row(const ref_item &m, int i, int d, const float *q, const float *k, const float *v, size_t ld,
                      double scale, double cap, double sink, bool f32, double *o, p_rounding round_p = p_exact)
{
    std::vector<double> s(m.n_keys > 0 ? m.n_keys : 1, -INFINITY);
    double mx = sink, l = 0;
    for (int j = 0; j < m.n_keys; j++) {
        if (!ref_sees(m, i, j)) continue;
        double dot = 0;
        for (int e = 0; e < d; e++) dot = rnd(dot + rnd((double)q[e] * k[j * ld + e], f32), f32);
        s[j] = rnd(dot * scale, f32);
        if (cap > 0) s[j] = rnd(cap * tanh(s[j] / cap), f32);
        if (s[j] != s[j]) mx = NAN;
        else if (s[j] > mx) mx = s[j];
    }
    for (int e = 0; e < d; e++) o[e] = mx != mx ? NAN : 0;
    if (mx != mx || mx == -INFINITY) return mx;
    l = sink > -INFINITY ? rnd(exp(sink - mx), f32) : 0;
    for (int j = 0; j < m.n_keys; j++)
        if (s[j] > -INFINITY) l = rnd(l + rnd(exp(s[j] - mx), f32), f32);
    for (int e = 0; e < d; e++) {
        double acc = 0;
        for (int j = 0; j < m.n_keys; j++)
            if (ref_sees(m, i, j)) acc = rnd(acc + rnd(round_p(rnd(exp(s[j] - mx), f32)) * v[j * ld + e], f32), f32);
        o[e] = rnd(acc / l, f32);
    }
    return rnd(mx + log(l), f32);
}

/* ---- outputs against the rule ---- */

/* Rows whose reference is NaN (a visible NaN key) must be NaN; the others
   are held to err <= 2 * the yardstick's err + floor, the T rule for o (the
   yardstick: float32, with P rounded to T for 16-bit tensors). */
template <typename T>
static void check_rows(const char *what, size_t rows, int d, const T *got, const float *got_lse, const double *ref,
                       const double *ref_lse, const double *f32, const double *f32_lse)
{
    std::vector<double> r, n, rl, nl;
    std::vector<T> g;
    std::vector<float> gl;
    int nan_rows = 0, missing_nan = 0;
    for (size_t i = 0; i < rows; i++) {
        if (ref_lse[i] != ref_lse[i]) {
            nan_rows++;
            missing_nan += got_lse[i] == got_lse[i];
            continue;
        }
        for (int e = 0; e < d; e++) {
            r.push_back(ref[i * d + e]);
            n.push_back(f32[i * d + e]);
            g.push_back(got[i * d + e]);
        }
        rl.push_back(ref_lse[i]);
        nl.push_back(f32_lse[i]);
        gl.push_back(got_lse[i]);
    }
    CHECKF(missing_nan == 0, "%s: %d of %d rows that see a NaN key are not NaN", what, missing_nan, nan_rows);
    double scale = mlkct_max_abs(r.data(), r.size()), floor_ = mlkt_ulps(8, scale > 1 ? scale : 1);
    double e = mlkct_err(g.data(), r.data(), r.size()), e32 = mlkt_max_abs_err_d(n.data(), r.data(), r.size());
    CHECK_NAIVE(e, e32, floor_, "%s %s o", what, mlkct_type_name<T>());
    double el = mlkt_max_abs_err(gl.data(), rl.data(), rl.size()), el32 = mlkt_max_abs_err_d(nl.data(), rl.data(), rl.size());
    double lscale = 0;
    for (double x : rl) lscale = x < INFINITY && fabs(x) > lscale ? fabs(x) : lscale;
    CHECK_NAIVE(el, el32, mlkt_ulps(8, lscale > 1 ? lscale : 1), "%s %s lse", what, mlkct_type_name<T>());
}

/* ---- dense ---- */

struct dense_case {
    int batch, heads, kv_heads, len_q, len_kv, head_dim, causal, window;
    float softcap;
    bool sinks, kv_len, tree, bnhd, bad_key;
};

static void dense_desc(const dense_case &c, mlk_attn_desc *d, std::vector<int> &kv_len, std::vector<int> &parent,
                       std::vector<float> &sinks)
{
    memset(d, 0, sizeof *d);
    d->batch = c.batch;
    d->heads = c.heads;
    d->kv_heads = c.kv_heads;
    d->len_q = c.len_q;
    d->len_kv = c.len_kv;
    d->head_dim = c.head_dim;
    d->causal = c.causal;
    d->window = c.window;
    d->softcap = c.softcap;
    d->layout = c.bnhd ? MLK_BNHD : MLK_BHND;
    if (c.kv_len) { /* the first item empty unless a tree needs its queries' keys */
        kv_len.resize(c.batch);
        for (int b = 0; b < c.batch; b++)
            kv_len[b] = c.tree ? c.len_q + mlkt_int(c.len_kv - c.len_q + 1) : b == 0 ? 0 : 1 + mlkt_int(c.len_kv);
        d->kv_len = kv_len.data();
    }
    if (c.tree) { /* several roots, chains and branches */
        parent.resize(c.len_q);
        for (int i = 0; i < c.len_q; i++) parent[i] = i == 0 || mlkt_int(9) == 0 ? -1 : i - 1 - mlkt_int(i < 3 ? i : 3);
        d->tree_parent = parent.data();
    }
    if (c.sinks) {
        sinks.resize(c.heads);
        for (int h = 0; h < c.heads; h++) sinks[h] = h == 1 ? -INFINITY : (float)(2 * mlkt_normal());
        d->sinks = sinks.data();
    }
}

static size_t at_of(const mlk_attn_desc *d, int heads, int len, int b, int h, int i)
{
    return d->layout == MLK_BHND ? (((size_t)b * heads + h) * len + i) * d->head_dim
                                 : (((size_t)b * len + i) * heads + h) * d->head_dim;
}

/* o / lse of the whole descriptor through ref_row, in the layout of d
   (lse [B, Hq, Nq]). */
static void ref_dense(const mlk_attn_desc *d, const float *q, const float *k, const float *v, bool f32, double *o,
                      double *lse, p_rounding round_p = p_exact)
{
    int hkv = d->kv_heads ? d->kv_heads : d->heads, dim = d->head_dim;
    double scale = d->scale ? d->scale : 1.0 / sqrt((double)dim);
    size_t ld = d->layout == MLK_BHND ? (size_t)dim : (size_t)hkv * dim;
    std::vector<float> kr, vr;
    for (int b = 0; b < d->batch; b++)
        for (int h = 0; h < d->heads; h++) {
            int kvh = h / (d->heads / hkv);
            ref_item m = {d->kv_len ? d->kv_len[b] : d->len_kv, d->len_q, d->causal, d->window, d->tree_parent};
            const float *kb = k + at_of(d, hkv, d->len_kv, b, kvh, 0), *vb = v + at_of(d, hkv, d->len_kv, b, kvh, 0);
            for (int i = 0; i < d->len_q; i++) {
                size_t qa = at_of(d, d->heads, d->len_q, b, h, i);
                lse[((size_t)b * d->heads + h) * d->len_q + i] =
                    ref_row(m, i, dim, q + qa, kb, vb, ld, scale, d->softcap, d->sinks ? d->sinks[h] : -INFINITY, f32,
                            o + qa, round_p);
            }
        }
}

/* o in BHND row order (row = (b * Hq + h) * Nq + i), to pair with lse. */
template <typename U> static std::vector<U> rows_bhnd(const mlk_attn_desc *d, const U *o)
{
    std::vector<U> out((size_t)d->batch * d->heads * d->len_q * d->head_dim);
    for (int b = 0; b < d->batch; b++)
        for (int h = 0; h < d->heads; h++)
            for (int i = 0; i < d->len_q; i++)
                memcpy(&out[(((size_t)b * d->heads + h) * d->len_q + i) * d->head_dim],
                       o + at_of(d, d->heads, d->len_q, b, h, i), d->head_dim * sizeof(U));
    return out;
}

template <typename T> static std::vector<unsigned char> dense_run(const mlk_attn_desc *d, const dbuf<T> &q,
    const dbuf<T> &k, const dbuf<T> &v, dbuf<T> &o, dbuf<float> &lse, void *ws, size_t ws_bytes)
{
    dbuf_poison(o);
    dbuf_poison(lse);
    CHECK_INT(mlk_cuda_attn_fwd<T>(d, q.p, k.p, v.p, o.p, lse.p, ws, ws_bytes, 0), MLK_OK);
    std::vector<unsigned char> bytes;
    mlkct_append(bytes, o);
    mlkct_append(bytes, lse);
    return bytes;
}

template <typename T> static void check_dense(const dense_case &c)
{
    mlk_attn_desc d;
    std::vector<int> kv_len, parent;
    std::vector<float> sinks;
    dense_desc(c, &d, kv_len, parent, sinks);
    size_t nq = (size_t)c.batch * c.heads * c.len_q * c.head_dim, nk = (size_t)c.batch * c.kv_heads * c.len_kv * c.head_dim;
    size_t rows = (size_t)c.batch * c.heads * c.len_q;
    std::vector<float> q0(nq), k0(nk), v0(nk), qf, kf, vf, o_cpu(nq), lse_cpu(rows), o_naive(nq), lse_naive(rows);
    mlkt_fill_normal(q0.data(), nq, 1.0);
    mlkt_fill_normal(k0.data(), nk, 1.0);
    mlkt_fill_normal(v0.data(), nk, 1.0);
    if (c.bad_key) /* the last key of item 0, kv head 0: NaN key, inf value */
        for (int e = 0; e < c.head_dim; e++) {
            k0[at_of(&d, c.kv_heads, c.len_kv, 0, 0, c.len_kv - 1) + e] = NAN;
            v0[at_of(&d, c.kv_heads, c.len_kv, 0, 0, c.len_kv - 1) + e] = INFINITY;
        }
    std::vector<T> qt = mlkct_round<T>(q0.data(), nq, &qf), kt = mlkct_round<T>(k0.data(), nk, &kf),
                   vt = mlkct_round<T>(v0.data(), nk, &vf);
    std::vector<double> ref(nq), ref_lse(rows), f32(nq), f32_lse(rows);
    ref_dense(&d, qf.data(), kf.data(), vf.data(), false, ref.data(), ref_lse.data());
    /* the yardstick: float32, and for 16-bit tensors (which may run on the
       tensor cores) P rounded to T before P V, as a plain T
       matmul-softmax-matmul does */
    ref_dense(&d, qf.data(), kf.data(), vf.data(), true, f32.data(), f32_lse.data(),
              sizeof(T) == 4 ? p_exact : p_to<T>);
    CHECK_INT(mlk_attn_fwd(&d, qf.data(), kf.data(), vf.data(), o_cpu.data(), lse_cpu.data()), MLK_OK);
    CHECK_INT(mlk_attn_naive(&d, qf.data(), kf.data(), vf.data(), o_naive.data(), lse_naive.data()), MLK_OK);
    dbuf<T> dq = dbuf_from(qt.data(), nq), dk = dbuf_from(kt.data(), nk), dv = dbuf_from(vt.data(), nk);
    dbuf<T> dout = dbuf_new<T>(nq);
    dbuf<float> dlse = dbuf_new<float>(rows);
    char what[160];
    snprintf(what, sizeof what, "B%d H%d/%d Nq %d Nkv %d D %d causal %d win %d cap %g sinks %d kv_len %d tree %d %s",
             c.batch, c.heads, c.kv_heads, c.len_q, c.len_kv, c.head_dim, c.causal, c.window, c.softcap, c.sinks,
             c.kv_len, c.tree, c.bnhd ? "BNHD" : "BHND");
    std::vector<unsigned char> got = mlkct_orders(what, [&]() { return dense_run(&d, dq, dk, dv, dout, dlse, NULL, 0); });
    const T *go = (const T *)got.data();
    const float *gl = (const float *)(got.data() + nq * sizeof(T));
    std::vector<T> g_rows = rows_bhnd(&d, go);
    std::vector<double> r_rows = rows_bhnd(&d, ref.data()), n_rows = rows_bhnd(&d, f32.data());
    check_rows<T>(what, rows, c.head_dim, g_rows.data(), gl, r_rows.data(), ref_lse.data(), n_rows.data(),
                  f32_lse.data());
    if (sizeof(T) == 4) { /* the CPU twins on the same inputs: the same semantics (NaN rows alike) */
        std::vector<float> c_rows = rows_bhnd(&d, o_cpu.data()), nv_rows = rows_bhnd(&d, o_naive.data());
        check_rows<float>("CPU mlk_attn_fwd", rows, c.head_dim, c_rows.data(), lse_cpu.data(), r_rows.data(),
                          ref_lse.data(), n_rows.data(), f32_lse.data());
        check_rows<float>("CPU mlk_attn_naive", rows, c.head_dim, nv_rows.data(), lse_naive.data(), r_rows.data(),
                          ref_lse.data(), n_rows.data(), f32_lse.data());
    }
    int empty_bad = 0; /* rows that see nothing: o exactly 0, lse -inf */
    for (size_t r = 0; r < rows; r++)
        if (ref_lse[r] == -INFINITY) {
            empty_bad += !(gl[r] == -INFINITY);
            for (int e = 0; e < c.head_dim; e++) empty_bad += mlkct_to_float(g_rows[r * c.head_dim + e]) != 0.0f;
        }
    CHECKF(empty_bad == 0, "%s: %d entries of rows that see nothing are off", what, empty_bad);
    mlkt_digest(got.data(), got.size());
    dbuf_free(dq);
    dbuf_free(dk);
    dbuf_free(dv);
    dbuf_free(dout);
    dbuf_free(dlse);
}

/* b, hq, hkv, nq, nkv, d, causal, window, softcap, sinks, kv_len, tree, bnhd, bad_key */
static const dense_case dense_grid[] = {
    {2, 2, 2, 20, 45, 40, 1, 0, 0, false, false, false, false, false},  /* Nq != Nkv, ragged tiles */
    {2, 8, 2, 9, 33, 64, 1, 0, 0, false, true, false, true, false},     /* GQA 8/2, kv_len with an empty item */
    {1, 4, 1, 37, 20, 80, 1, 0, 5, true, false, false, false, false},   /* MQA, rows that see nothing, cap, sinks */
    {1, 2, 2, 48, 88, 1, 0, 3, 0, false, false, true, false, false},    /* tree + window: first tiles fully masked */
    {1, 2, 1, 30, 50, 128, 0, 7, 0, false, false, false, true, false},  /* non-causal window, BNHD */
    {1, 3, 3, 9, 40, 256, 1, 0, 20, true, false, false, false, false},  /* head_dim 256, a -inf sink */
    {2, 4, 2, 11, 30, 72, 0, 0, 0, false, true, true, true, false},     /* trees over per-item prefixes */
    {1, 2, 2, 40, 40, 16, 1, 0, 0, false, false, false, false, true},   /* NaN / inf key only the last query sees */
};

static void test_dense_f32(void)
{
    for (const dense_case &c : dense_grid) check_dense<float>(c);
}

static void test_dense_half(void)
{
    check_dense<__nv_bfloat16>(dense_grid[1]);
    check_dense<__half>(dense_grid[2]);
    check_dense<__nv_bfloat16>(dense_grid[3]);
    check_dense<__half>(dense_grid[5]);
    check_dense<__nv_bfloat16>(dense_grid[4]);
}

/* Few blocks over long keys: split runs and their merge, with runs a row
   cannot see (window), sinks counted once; a caller workspace gives the
   same bits as an allocated one, and a second run the same bits again. */
static void test_dense_split(void)
{
    const dense_case cases[] = {
        {1, 2, 2, 2, 1100, 64, 1, 0, 0, true, false, false, false, false},
        {1, 4, 2, 3, 1300, 32, 1, 600, 3, false, false, false, true, false},
        {1, 1, 1, 600, 600, 8, 0, 250, 0, true, false, false, false, false}, /* runs a row cannot see */
        {1, 2, 2, 2, 1100, 16, 1, 0, 0, false, false, false, false, true},  /* a NaN key in one run */
    };
    for (const dense_case &c : cases) {
        check_dense<float>(c);
        mlk_attn_desc d;
        std::vector<int> kv_len, parent;
        std::vector<float> sinks;
        dense_desc(c, &d, kv_len, parent, sinks);
        size_t nq = (size_t)c.heads * c.len_q * c.head_dim, nk = (size_t)c.kv_heads * c.len_kv * c.head_dim;
        std::vector<float> x(nk);
        mlkt_fill_normal(x.data(), nk, 1.0);
        dbuf<float> dq = dbuf_from(x.data(), nq), dk = dbuf_from(x.data(), nk), dv = dbuf_from(x.data(), nk);
        dbuf<float> dout = dbuf_new<float>(nq), dlse = dbuf_new<float>((size_t)c.heads * c.len_q);
        size_t ws = mlk_cuda_attn_fwd_workspace_size(&d);
        CHECKF(ws > 0, "a split call needs workspace (%zu bytes)", ws);
        void *wsp = NULL;
        mlkct_cuda(cudaMalloc(&wsp, ws), "cudaMalloc");
        long before = mlkct_launches();
        std::vector<unsigned char> a = dense_run(&d, dq, dk, dv, dout, dlse, NULL, 0);
        if (before >= 0) CHECK_INT(mlkct_launches() - before, 2); /* the forward and the merge */
        std::vector<unsigned char> b = dense_run(&d, dq, dk, dv, dout, dlse, wsp, ws);
        std::vector<unsigned char> again = dense_run(&d, dq, dk, dv, dout, dlse, wsp, ws);
        CHECK(a == b);
        CHECK(b == again);
        mlkct_cuda(cudaFree(wsp), "cudaFree");
        dbuf_free(dq);
        dbuf_free(dk);
        dbuf_free(dv);
        dbuf_free(dout);
        dbuf_free(dlse);
    }
}

/* ---- paged: mlk_cuda_kv_attn against mlk_kv_attn_opt on the same cache ---- */

/* A cache with storage and a bookkeeping-only twin given the same calls,
   and the storage's pool on the device. s[0] 45 positions, s[1] a fork of
   it grown to 49 and rewritten at position 3 (both copy-on-write), s[2]
   70 fresh positions, s[3] (when long_len) long_len positions. */
struct kv_world {
    mlk_kv_cache *c, *book;
    mlk_kv_layout lay;
    int s[4];
    dbuf<unsigned char> pool;
};

static void kv_store_random(kv_world &w, int seq, int pos, int n)
{
    size_t count = (size_t)n * w.lay.kv_heads * w.lay.head_dim;
    std::vector<float> k(count), v(count);
    int copies[8], n_copies = 0;
    CHECK_INT(mlk_kv_prepare_write(w.book, seq, pos, n, copies, 4, &n_copies), MLK_OK);
    for (int layer = 0; layer < w.lay.layers; layer++) {
        mlkt_fill_normal(k.data(), count, 1.0);
        mlkt_fill_normal(v.data(), count, 1.0);
        CHECK_INT(mlk_kv_store(w.c, seq, layer, pos, n, k.data(), v.data()), MLK_OK);
    }
}

static void kv_grow(kv_world &w, int seq, int n)
{
    CHECK_INT(mlk_kv_append(w.c, seq, n), MLK_OK);
    CHECK_INT(mlk_kv_append(w.book, seq, n), MLK_OK);
}

static int kv_new(kv_world &w)
{
    int a = -1, b = -2;
    CHECK_INT(mlk_kv_seq_new(w.c, &a), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(w.book, &b), MLK_OK);
    CHECK_INT(a, b);
    return a;
}

static kv_world kv_make(mlk_kv_type type, int head_dim, int kv_heads, int long_len)
{
    kv_world w;
    mlk_kv_config cfg = {2, kv_heads, head_dim, 16, 40 + long_len / 16 + 1, 6, type};
    CHECK_INT(mlk_kv_create(&cfg, &w.c), MLK_OK);
    CHECK_INT(mlk_kv_create_bookkeeping(&cfg, &w.book), MLK_OK);
    CHECK_INT(mlk_kv_get_layout(w.c, &w.lay), MLK_OK);
    w.s[0] = kv_new(w);
    kv_grow(w, w.s[0], 40);
    kv_store_random(w, w.s[0], 0, 40);
    int f1 = -1, f2 = -2;
    CHECK_INT(mlk_kv_seq_fork(w.c, w.s[0], &f1), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(w.book, w.s[0], &f2), MLK_OK);
    CHECK_INT(f1, f2);
    w.s[1] = f1;
    kv_grow(w, w.s[1], 9);
    kv_store_random(w, w.s[1], 40, 9);
    kv_store_random(w, w.s[1], 3, 1);
    kv_grow(w, w.s[0], 5);
    kv_store_random(w, w.s[0], 40, 5);
    w.s[2] = kv_new(w);
    kv_grow(w, w.s[2], 70);
    kv_store_random(w, w.s[2], 0, 70);
    w.s[3] = -1;
    if (long_len) {
        w.s[3] = kv_new(w);
        kv_grow(w, w.s[3], long_len);
        kv_store_random(w, w.s[3], 0, long_len);
    }
    for (int i = 0; i < 4; i++) /* the twin's block tables are the storage's */
        if (w.s[i] >= 0) {
            int a[128], b[128];
            int na = mlk_kv_seq_blocks(w.c, w.s[i], a, 128), nb = mlk_kv_seq_blocks(w.book, w.s[i], b, 128);
            CHECK(na == nb && na <= 128 && memcmp(a, b, (size_t)na * sizeof(int)) == 0);
        }
    w.pool = dbuf_from(w.lay.pool, w.lay.block_bytes * (size_t)w.lay.num_blocks);
    return w;
}

static void kv_free(kv_world &w)
{
    dbuf_free(w.pool);
    mlk_kv_destroy(w.c);
    mlk_kv_destroy(w.book);
}

struct kv_call {
    int n_seqs, seqs[4], n_q[4], heads, layer;
    mlk_kv_attn_opts opts;
};

/* o and lse of a call from the cache's dequantised rows (mlk_kv_load) through ref_row. */
static void kv_ref(const kv_world &w, const kv_call &k, const float *q, bool f32, double *o, double *lse)
{
    int d = w.lay.head_dim, hkv = w.lay.kv_heads;
    double scale = k.opts.scale ? k.opts.scale : 1.0 / sqrt((double)d);
    size_t row0 = 0;
    for (int s = 0; s < k.n_seqs; s++) {
        int len = mlk_kv_seq_len(w.c, k.seqs[s]);
        std::vector<float> kk((size_t)len * hkv * d), vv((size_t)len * hkv * d);
        CHECK_INT(mlk_kv_load(w.c, k.seqs[s], k.layer, 0, len, kk.data(), vv.data()), MLK_OK);
        ref_item m = {len, k.n_q[s], 1, k.opts.window, k.opts.tree_parent};
        for (int i = 0; i < k.n_q[s]; i++)
            for (int h = 0; h < k.heads; h++) {
                size_t row = (row0 + i) * k.heads + h;
                int kvh = h / (k.heads / hkv);
                lse[row] = ref_row(m, i, d, q + row * d, kk.data() + (size_t)kvh * d, vv.data() + (size_t)kvh * d,
                                   (size_t)hkv * d, scale, k.opts.softcap,
                                   k.opts.sinks ? k.opts.sinks[h] : -INFINITY, f32, o + row * d);
            }
        row0 += k.n_q[s];
    }
}

static std::vector<unsigned char> kv_run(const mlk_kv_cache *c, const kv_world &w, const kv_call &k,
                                         const dbuf<float> &q, dbuf<float> &o, dbuf<float> &lse)
{
    dbuf_poison(o);
    dbuf_poison(lse);
    CHECK_INT(mlk_cuda_kv_attn(c, w.pool.p, k.layer, k.n_seqs, k.seqs, k.n_q, q.p, k.heads, &k.opts, o.p, lse.p,
                               NULL, 0, 0),
              MLK_OK);
    std::vector<unsigned char> bytes;
    mlkct_append(bytes, o);
    mlkct_append(bytes, lse);
    return bytes;
}

/* Runs the call on the device (with the storage cache, and again with the
   bookkeeping twin: the same bits) and on the CPU; both against the rule. */
static void check_kv(const kv_world &w, const kv_call &k, const char *what)
{
    int d = w.lay.head_dim;
    size_t rows = 0;
    for (int s = 0; s < k.n_seqs; s++) rows += (size_t)k.n_q[s] * k.heads;
    std::vector<float> q(rows * d), o_cpu(rows * d), lse_cpu(rows);
    mlkt_fill_normal(q.data(), q.size(), 1.0);
    std::vector<double> ref(rows * d), ref_lse(rows), f32(rows * d), f32_lse(rows);
    kv_ref(w, k, q.data(), false, ref.data(), ref_lse.data());
    kv_ref(w, k, q.data(), true, f32.data(), f32_lse.data());
    CHECK_INT(mlk_kv_attn_opt(w.c, k.layer, k.n_seqs, k.seqs, k.n_q, q.data(), k.heads, &k.opts, o_cpu.data(),
                              lse_cpu.data()),
              MLK_OK);
    dbuf<float> dq = dbuf_from(q.data(), q.size()), dout = dbuf_new<float>(rows * d), dlse = dbuf_new<float>(rows);
    const char *type_names[4] = {"F32", "F16", "Q8", "Q4"};
    char full[200];
    snprintf(full, sizeof full, "kv %s D %d: %s", type_names[w.lay.type], d, what);
    std::vector<unsigned char> got = mlkct_orders(full, [&]() { return kv_run(w.c, w, k, dq, dout, dlse); });
    CHECKF(kv_run(w.book, w, k, dq, dout, dlse) == got, "%s: the bookkeeping cache gives other bits", full);
    const float *go = (const float *)got.data(), *gl = go + rows * d;
    check_rows<float>(full, rows, d, go, gl, ref.data(), ref_lse.data(), f32.data(), f32_lse.data());
    check_rows<float>("CPU mlk_kv_attn_opt", rows, d, o_cpu.data(), lse_cpu.data(), ref.data(), ref_lse.data(),
                      f32.data(), f32_lse.data());
    mlkt_digest(got.data(), got.size());
    dbuf_free(dq);
    dbuf_free(dout);
    dbuf_free(dlse);
}

static kv_call kv_call_of(int n_seqs, const int *seqs, const int *n_q, int heads, int layer)
{
    kv_call k;
    memset(&k, 0, sizeof k);
    k.n_seqs = n_seqs;
    for (int s = 0; s < n_seqs; s++) {
        k.seqs[s] = seqs[s];
        k.n_q[s] = n_q[s];
    }
    k.heads = heads;
    k.layer = layer;
    return k;
}

static void test_kv_types(void)
{
    const mlk_kv_type types[] = {MLK_KV_F32, MLK_KV_F16, MLK_KV_Q8, MLK_KV_Q4};
    const int dims[] = {64, 80, 40, 33}; /* Q4 33: a half-filled last byte */
    for (int t = 0; t < 4; t++) {
        kv_world w = kv_make(types[t], dims[t], 2, 0);
        std::vector<float> sinks(8);
        for (int h = 0; h < 8; h++) sinks[h] = h == 2 ? -INFINITY : (float)mlkt_normal();
        const int one[3] = {1, 1, 1}, chunk[3] = {5, 9, 17}, tree_q[1] = {12};
        kv_call dec = kv_call_of(3, w.s, one, 8, 1);
        check_kv(w, dec, "decode, GQA 4");
        kv_call pre = kv_call_of(3, w.s, chunk, 4, 0);
        pre.opts.window = 6;
        pre.opts.softcap = 4;
        pre.opts.sinks = sinks.data();
        check_kv(w, pre, "chunked prefill, window, softcap, sinks");
        const int parent[12] = {-1, 0, 0, 1, -1, 4, 3, 2, 5, -1, 9, 6};
        kv_call tree = kv_call_of(1, &w.s[2], tree_q, 8, 1);
        tree.opts.tree_parent = parent;
        tree.opts.sinks = sinks.data();
        tree.opts.scale = 0.3f;
        check_kv(w, tree, "tree, sinks");
        tree.opts.window = 2;
        check_kv(w, tree, "tree, window");
        kv_free(w);
    }
}

/* A long sequence in a decode step: split runs merged in order; a second
   run gives the same bits. */
static void test_kv_split(void)
{
    const mlk_kv_type types[] = {MLK_KV_F16, MLK_KV_Q8};
    for (int t = 0; t < 2; t++) {
        kv_world w = kv_make(types[t], 64, 2, 1100);
        std::vector<float> sinks(8);
        for (int h = 0; h < 8; h++) sinks[h] = (float)mlkt_normal();
        const int seqs[3] = {w.s[3], w.s[0], w.s[1]}, one[3] = {1, 1, 1}, chunk[1] = {40};
        kv_call dec = kv_call_of(3, seqs, one, 8, 0);
        dec.opts.sinks = sinks.data();
        check_kv(w, dec, "split decode");
        dbuf<float> dq = dbuf_new<float>(3 * 8 * 64), dout = dbuf_new<float>(3 * 8 * 64), dlse = dbuf_new<float>(24);
        std::vector<float> q(3 * 8 * 64);
        mlkt_fill_normal(q.data(), q.size(), 1.0);
        dbuf_put(dq, q.data());
        long before = mlkct_launches();
        std::vector<unsigned char> a = kv_run(w.c, w, dec, dq, dout, dlse);
        if (before >= 0) CHECK_INT(mlkct_launches() - before, 2);
        CHECK(kv_run(w.c, w, dec, dq, dout, dlse) == a);
        kv_call pre = kv_call_of(1, &w.s[3], chunk, 4, 1);
        pre.opts.window = 520;
        check_kv(w, pre, "split chunked prefill, window");
        dbuf_free(dq);
        dbuf_free(dout);
        dbuf_free(dlse);
        kv_free(w);
    }
}

/* ---- bad arguments: the CPU's status, nothing launched, outputs untouched ---- */

static bool all_fill(const std::vector<unsigned char> &b)
{
    for (unsigned char x : b)
        if (x != 0xFF) return false;
    return true;
}

struct dense_io {
    dbuf<float> q, k, v, o, lse;
    std::vector<float> hq, ho, hlse; /* host twins for the CPU call */
};

/* d as given (or NULL); drop: which of q, k, v, o is NULL (0 none). */
static void expect_dense(const mlk_attn_desc *d, dense_io &io, int drop, void *ws, size_t ws_bytes, mlk_status want,
                         bool cpu_too, const char *what)
{
    dbuf_poison(io.o);
    dbuf_poison(io.lse);
    long before = mlkct_launches();
    mlk_status st = mlk_cuda_attn_fwd<float>(d, drop == 1 ? NULL : io.q.p, drop == 2 ? NULL : io.k.p,
                                             drop == 3 ? NULL : io.v.p, drop == 4 ? NULL : io.o.p, io.lse.p, ws,
                                             ws_bytes, 0);
    CHECKF(st == want, "attn %s: status %d, want %d", what, (int)st, (int)want);
    if (before >= 0) CHECKF(mlkct_launches() == before, "attn %s: a kernel was launched", what);
    std::vector<unsigned char> bytes;
    mlkct_append(bytes, io.o);
    mlkct_append(bytes, io.lse);
    CHECKF(all_fill(bytes), "attn %s: outputs written", what);
    if (cpu_too) {
        const float *h = io.hq.data();
        mlk_status cpu = mlk_attn_fwd(d, drop == 1 ? NULL : h, drop == 2 ? NULL : h, drop == 3 ? NULL : h,
                                      drop == 4 ? NULL : io.ho.data(), io.hlse.data());
        CHECKF(cpu == want, "attn %s: the CPU says %d, want %d", what, (int)cpu, (int)want);
        CHECKF(d == NULL || mlk_cuda_attn_fwd_workspace_size(d) == 0 || want == MLK_ERR_NULL,
               "attn %s: a workspace size for a bad descriptor", what);
    }
}

static void test_dense_bad_arguments(void)
{
    mlk_attn_desc ok;
    memset(&ok, 0, sizeof ok);
    ok.batch = 2; ok.heads = 2; ok.len_q = 8; ok.len_kv = 16; ok.head_dim = 16; ok.causal = 1;
    const size_t n = 2 * 2 * 16 * 16;
    dense_io io;
    io.hq.assign(n, 0.5f);
    io.ho.resize(n);
    io.hlse.resize(2 * 2 * 8);
    io.q = dbuf_from(io.hq.data(), n);
    io.k = dbuf_from(io.hq.data(), n);
    io.v = dbuf_from(io.hq.data(), n);
    io.o = dbuf_new<float>(n);
    io.lse = dbuf_new<float>(2 * 2 * 8);
    int kv_big[2] = {16, 17}, kv_neg[2] = {3, -1}, kv_short[2] = {16, 7};
    int bad_parent[8] = {-1, 0, 2, 0, 0, 0, 0, 0}, bad_parent2[8] = {-1, -2, 0, 0, 0, 0, 0, 0};
    int ok_parent[8] = {-1, 0, 1, 1, -1, 4, 5, 0};
    float nan_sink[2] = {0.0f, NAN}, inf_sink[2] = {INFINITY, 0.0f};
    mlk_attn_desc d;
    expect_dense(NULL, io, 0, NULL, 0, MLK_ERR_NULL, true, "NULL desc");
    for (int drop = 1; drop <= 4; drop++) expect_dense(&ok, io, drop, NULL, 0, MLK_ERR_NULL, true, "NULL tensor");
    d = ok; d.batch = 0; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "batch 0");
    d = ok; d.heads = -1; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "heads -1");
    d = ok; d.kv_heads = -2; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "kv_heads -2");
    d = ok; d.heads = 3; d.kv_heads = 2; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "heads % kv_heads");
    d = ok; d.len_q = 0; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "len_q 0");
    d = ok; d.len_kv = -1; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "len_kv -1");
    d = ok; d.head_dim = 0; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "head_dim 0");
    d = ok; d.tile_kv = -1; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "tile_kv -1");
    d = ok; d.head_dim = 257; d.len_q = d.len_kv = 1; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, false, "head_dim 257");
    d = ok; d.kv_len = kv_big; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "kv_len > len_kv");
    d = ok; d.kv_len = kv_neg; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "kv_len < 0");
    d = ok; d.tree_parent = ok_parent; d.kv_len = kv_short; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_SHAPE, true, "tree longer than item");
    d = ok; d.tree_parent = bad_parent; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_TREE, true, "parent >= i");
    d = ok; d.tree_parent = bad_parent2; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_TREE, true, "parent < -1");
    d = ok; d.layout = (mlk_layout)7; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_ARG, true, "layout");
    d = ok; d.window = -1; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_ARG, true, "window -1");
    d = ok; d.softcap = -1; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_ARG, true, "softcap -1");
    d = ok; d.scale = NAN; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_ARG, true, "scale NaN");
    d = ok; d.threads = -1; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_ARG, true, "threads -1");
    d = ok; d.sinks = nan_sink; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_ARG, true, "sink NaN");
    d = ok; d.sinks = inf_sink; expect_dense(&d, io, 0, NULL, 0, MLK_ERR_ARG, true, "sink +inf");
    d = ok; d.batch = d.heads = d.len_q = 1 << 20; d.head_dim = 256;
    expect_dense(&d, io, 0, NULL, 0, MLK_ERR_OVERFLOW, true, "element count overflows");
    /* a call that needs workspace (its kv_len): too small, misaligned */
    d = ok; d.kv_len = kv_short;
    size_t need = mlk_cuda_attn_fwd_workspace_size(&d);
    CHECK(need > 0);
    void *ws = NULL;
    mlkct_cuda(cudaMalloc(&ws, need + 256), "cudaMalloc");
    expect_dense(&d, io, 0, ws, need - 1, MLK_ERR_ARG, false, "workspace too small");
    expect_dense(&d, io, 0, (unsigned char *)ws + 16, need, MLK_ERR_ARG, false, "workspace misaligned");
    dbuf_poison(io.o);
    CHECK_INT(mlk_cuda_attn_fwd<float>(&d, io.q.p, io.k.p, io.v.p, io.o.p, NULL, ws, need, 0), MLK_OK);
    mlkct_cuda(cudaFree(ws), "cudaFree");
    dbuf_free(io.q);
    dbuf_free(io.k);
    dbuf_free(io.v);
    dbuf_free(io.o);
    dbuf_free(io.lse);
}

static void expect_kv(const mlk_kv_cache *c, const void *pool, const kv_call &k, const int *seqs, const int *n_q,
                      const dbuf<float> &q, dbuf<float> &o, dbuf<float> &lse, void *ws, size_t ws_bytes,
                      bool drop_q, bool drop_o, mlk_status want, bool cpu_too, const char *what)
{
    dbuf_poison(o);
    dbuf_poison(lse);
    long before = mlkct_launches();
    mlk_status st = mlk_cuda_kv_attn(c, pool, k.layer, k.n_seqs, seqs, n_q, drop_q ? NULL : q.p, k.heads, &k.opts,
                                     drop_o ? NULL : o.p, lse.p, ws, ws_bytes, 0);
    CHECKF(st == want, "kv %s: status %d, want %d", what, (int)st, (int)want);
    if (before >= 0) CHECKF(mlkct_launches() == before, "kv %s: a kernel was launched", what);
    std::vector<unsigned char> bytes;
    mlkct_append(bytes, o);
    mlkct_append(bytes, lse);
    CHECKF(all_fill(bytes), "kv %s: outputs written", what);
    if (cpu_too) {
        std::vector<float> hq(q.n, 0.5f), ho(o.n), hl(lse.n);
        mlk_status cpu = mlk_kv_attn_opt(c, k.layer, k.n_seqs, seqs, n_q, drop_q ? NULL : hq.data(), k.heads,
                                         &k.opts, drop_o ? NULL : ho.data(), hl.data());
        CHECKF(cpu == want, "kv %s: the CPU says %d, want %d", what, (int)cpu, (int)want);
    }
}

static void test_kv_bad_arguments(void)
{
    kv_world w = kv_make(MLK_KV_Q8, 32, 2, 0);
    const int one[3] = {1, 1, 1};
    kv_call ok = kv_call_of(2, w.s, one, 4, 1), k;
    dbuf<float> q = dbuf_new<float>(3 * 4 * 32), o = dbuf_new<float>(3 * 4 * 32), lse = dbuf_new<float>(12);
    dbuf_poison(q);
    const int bad_seq[2] = {0, 5}, zero_q[2] = {1, 0}, long_q[2] = {1, 50}, parent[1] = {-1}, bad_parent[1] = {0};
    const float inf_sinks[4] = {0, 0, INFINITY, 0};
    expect_kv(NULL, w.pool.p, ok, ok.seqs, ok.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_NULL, true, "NULL cache");
    expect_kv(w.c, NULL, ok, ok.seqs, ok.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_NULL, false, "NULL pool");
    expect_kv(w.c, w.pool.p, ok, NULL, ok.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_NULL, true, "NULL seqs");
    expect_kv(w.c, w.pool.p, ok, ok.seqs, NULL, q, o, lse, NULL, 0, false, false, MLK_ERR_NULL, true, "NULL n_q");
    expect_kv(w.c, w.pool.p, ok, ok.seqs, ok.n_q, q, o, lse, NULL, 0, true, false, MLK_ERR_NULL, true, "NULL q");
    expect_kv(w.c, w.pool.p, ok, ok.seqs, ok.n_q, q, o, lse, NULL, 0, false, true, MLK_ERR_NULL, true, "NULL o");
    k = ok; k.layer = 2; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "layer 2");
    k = ok; k.layer = -1; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "layer -1");
    k = ok; k.n_seqs = 0; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_SHAPE, true, "no sequences");
    k = ok; k.heads = 3; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_SHAPE, true, "heads % kv_heads");
    k = ok; k.heads = 0; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_SHAPE, true, "heads 0");
    k = ok; k.opts.window = -1; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "window -1");
    k = ok; k.opts.softcap = NAN; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "softcap NaN");
    k = ok; k.opts.scale = INFINITY; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "scale inf");
    k = ok; k.opts.sinks = inf_sinks; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "sink +inf");
    k = ok; k.opts.tree_parent = parent; expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "tree over two sequences");
    k = ok; expect_kv(w.c, w.pool.p, k, bad_seq, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_ARG, true, "unknown sequence");
    k = ok; expect_kv(w.c, w.pool.p, k, k.seqs, zero_q, q, o, lse, NULL, 0, false, false, MLK_ERR_SHAPE, true, "n_q 0");
    k = ok; expect_kv(w.c, w.pool.p, k, k.seqs, long_q, q, o, lse, NULL, 0, false, false, MLK_ERR_SHAPE, true, "n_q > length");
    k = ok; k.n_seqs = 1; k.opts.tree_parent = bad_parent;
    expect_kv(w.c, w.pool.p, k, k.seqs, k.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_TREE, true, "bad tree");
    CHECK_INT(mlk_cuda_kv_attn_workspace_size(w.c, 2, bad_seq, ok.n_q, 4, &ok.opts), 0);
    size_t need = mlk_cuda_kv_attn_workspace_size(w.c, ok.n_seqs, ok.seqs, ok.n_q, ok.heads, &ok.opts);
    CHECK(need > 0);
    void *ws = NULL;
    mlkct_cuda(cudaMalloc(&ws, need + 256), "cudaMalloc");
    expect_kv(w.c, w.pool.p, ok, ok.seqs, ok.n_q, q, o, lse, ws, need - 1, false, false, MLK_ERR_ARG, false, "workspace too small");
    expect_kv(w.c, w.pool.p, ok, ok.seqs, ok.n_q, q, o, lse, (unsigned char *)ws + 64, need, false, false, MLK_ERR_ARG, false, "workspace misaligned");
    CHECK_INT(mlk_cuda_kv_attn(w.c, w.pool.p, ok.layer, ok.n_seqs, ok.seqs, ok.n_q, q.p, ok.heads, &ok.opts, o.p, NULL,
                               ws, need, 0), MLK_OK);
    mlkct_cuda(cudaFree(ws), "cudaFree");
    kv_free(w);
    mlk_kv_config wide = {1, 1, 257, 4, 2, 1, MLK_KV_F32}; /* head_dim past the kernel's 256 */
    mlk_kv_cache *c = NULL;
    int seq = -1;
    CHECK_INT(mlk_kv_create_bookkeeping(&wide, &c), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(c, &seq), MLK_OK);
    CHECK_INT(mlk_kv_append(c, seq, 2), MLK_OK);
    kv_call k1 = kv_call_of(1, &seq, one, 1, 0);
    expect_kv(c, o.p, k1, k1.seqs, k1.n_q, q, o, lse, NULL, 0, false, false, MLK_ERR_SHAPE, false, "head_dim 257");
    mlk_kv_destroy(c);
    dbuf_free(q);
    dbuf_free(o);
    dbuf_free(lse);
}

int main(void)
{
    MLKT_RUN(test_dense_f32, 1);
    MLKT_RUN(test_dense_half, 2);
    MLKT_RUN(test_dense_split, 3);
    MLKT_RUN(test_kv_types, 4);
    MLKT_RUN(test_kv_split, 5);
    MLKT_RUN(test_dense_bad_arguments, 6);
    MLKT_RUN(test_kv_bad_arguments, 7);
    return mlkct_finish("test_attn");
}

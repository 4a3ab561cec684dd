/* The tensor-core attention forward (mlkern_cuda.cuh) on bf16 / fp16
   tensors against a double reference of this file, which itself must
   agree with the CPU's mlk_attn_fwd on the same rounded inputs. The rule:
   o's error (less the rounding of the reference to T) at most twice that
   of a plain T matmul-softmax-matmul (fp32 scores and softmax, P rounded
   to T, fp32 P V) plus a small floor; lse the same against its float
   version. Cases: head_dim 64, 96, 128, N not a multiple of the tiles,
   GQA and MQA, causal with Nq < Nkv and Nq > Nkv, windows (causal and
   two-sided; tiles before the band skipped, the first one masked),
   softcap, sinks, kv_len with an empty item, rows that see nothing, both
   layouts, and which calls the dispatch sends here. */
#define MLKCT_HEADER_IMPL
#include "mlkct.h"

struct mma_case {
    int batch, heads, kv_heads, len_q, len_kv, head_dim, causal, window;
    float softcap;
    bool sinks;
    std::vector<int> kv_len; /* empty: none */
    mlk_layout layout;
};

static bool sees(int n_keys, int n_q, int causal, int window, int i, int j)
{
    long pi = (long)i + n_keys - n_q, pj = j;
    if (j >= n_keys || (causal && pj > pi)) return false;
    if (window > 0) return causal ? pj > pi - window : labs(pj - pi) < window;
    return true;
}

/* One row by the textbook formula, in double (T_OUT void) or as a plain T
   computation: float scores and softmax, P rounded to T, float P V. */
template <typename T, bool NAIVE>
static double row_attn(const mma_case &c, int n_keys, int i, const float *q, const float *k, const float *v,
                       size_t ld, double scale, double sink, double *o)
{
    int d = c.head_dim;
    std::vector<double> s((size_t)c.len_kv, -INFINITY);
    double mx = sink;
    for (int j = 0; j < c.len_kv; j++) {
        if (!sees(n_keys, c.len_q, c.causal, c.window, i, j)) continue;
        double dot = 0;
        float dotf = 0;
        for (int e = 0; e < d; e++) {
            dot += (double)q[e] * k[j * ld + e];
            dotf += q[e] * k[j * ld + e];
        }
        s[(size_t)j] = NAIVE ? (double)(dotf * (float)scale) : dot * scale;
        if (c.softcap > 0)
            s[(size_t)j] = NAIVE ? (double)(c.softcap * tanhf((float)s[(size_t)j] / c.softcap))
                                 : c.softcap * tanh(s[(size_t)j] / c.softcap);
        mx = s[(size_t)j] > mx ? s[(size_t)j] : mx;
    }
    for (int e = 0; e < d; e++) o[e] = 0;
    if (mx == -INFINITY) return -INFINITY;
    double l = sink > -INFINITY ? exp(sink - mx) : 0;
    float lf = sink > -INFINITY ? expf((float)(sink - mx)) : 0.0f;
    for (int j = 0; j < c.len_kv; j++)
        if (s[(size_t)j] > -INFINITY) {
            l += exp(s[(size_t)j] - mx);
            lf += expf((float)(s[(size_t)j] - mx));
        }
    std::vector<float> of((size_t)d, 0.0f);
    for (int j = 0; j < c.len_kv; j++) {
        if (s[(size_t)j] == -INFINITY) continue;
        double p = exp(s[(size_t)j] - mx) / l;
        float pt = mlkct_to_float(mlkct_from_float<T>(expf((float)(s[(size_t)j] - mx)) / lf));
        for (int e = 0; e < d; e++) {
            o[e] += p * v[j * ld + e];
            of[(size_t)e] += pt * v[j * ld + e];
        }
    }
    if (NAIVE)
        for (int e = 0; e < d; e++) o[e] = mlkct_to_float(mlkct_from_float<T>(of[(size_t)e]));
    return NAIVE ? (double)((float)mx + logf(lf)) : mx + log(l);
}

/* mlk_cuda_attn_fwd on a call its dispatch sends to the tensor cores
   (MLK_ERR_ARG when it would take the SIMT kernel instead). */
template <typename T>
static mlk_status run_mma(const mlk_attn_desc *d, const T *q, const T *k, const T *v, T *o, float *lse)
{
    if (!mlk_cuda__attn_fwd_mma_supported(d, q, k, v)) return MLK_ERR_ARG;
    return mlk_cuda_attn_fwd<T>(d, q, k, v, o, lse, NULL, 0, (cudaStream_t)0);
}

template <typename T> static void check_case(const char *name, const mma_case &c)
{
    int B = c.batch, H = c.heads, Hkv = c.kv_heads, Nq = c.len_q, Nkv = c.len_kv, D = c.head_dim, G = H / Hkv;
    size_t nq = (size_t)B * H * Nq * D, nkv = (size_t)B * Hkv * Nkv * D, rows = (size_t)B * H * Nq;
    std::vector<float> fq(nq), fk(nkv), fv(nkv), rq, rk, rv, sinks((size_t)H);
    mlkt_fill_normal(fq.data(), nq, 1.0);
    mlkt_fill_normal(fk.data(), nkv, 1.0);
    mlkt_fill_normal(fv.data(), nkv, 1.0);
    for (int h = 0; h < H; h++) sinks[(size_t)h] = (float)(0.5 * h - 1.0);
    /* keys past an item's kv_len: NaN keys, infinite values, which no row may see */
    for (int b = 0; b < B && !c.kv_len.empty(); b++)
        for (int j = c.kv_len[(size_t)b]; j < Nkv; j++)
            for (int h = 0; h < Hkv; h++) {
                size_t at = c.layout == MLK_BHND ? (((size_t)b * Hkv + h) * Nkv + j) * D
                                                 : (((size_t)b * Nkv + j) * Hkv + h) * D;
                for (int e = 0; e < D; e++) {
                    fk[at + (size_t)e] = NAN;
                    fv[at + (size_t)e] = INFINITY;
                }
            }
    std::vector<T> hq = mlkct_round<T>(fq.data(), nq, &rq), hk = mlkct_round<T>(fk.data(), nkv, &rk),
                   hv = mlkct_round<T>(fv.data(), nkv, &rv);
    mlk_attn_desc d;
    memset(&d, 0, sizeof d);
    d.batch = B;
    d.heads = H;
    d.kv_heads = Hkv;
    d.len_q = Nq;
    d.len_kv = Nkv;
    d.head_dim = D;
    d.causal = c.causal;
    d.window = c.window;
    d.softcap = c.softcap;
    d.layout = c.layout;
    d.kv_len = c.kv_len.empty() ? NULL : c.kv_len.data();
    d.sinks = c.sinks ? sinks.data() : NULL;

    /* the references, row by row in BHND order */
    bool bhnd = c.layout == MLK_BHND;
    size_t kv_ld = bhnd ? (size_t)D : (size_t)Hkv * D;
    std::vector<double> ref(nq), naive(nq), ref_lse(rows), naive_lse(rows);
    double scale = 1.0 / sqrt((double)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Nq; i++) {
                size_t qo = bhnd ? (((size_t)b * H + h) * Nq + i) * D : (((size_t)b * Nq + i) * H + h) * D;
                size_t ko = bhnd ? ((size_t)b * Hkv + h / G) * Nkv * D
                                 : (size_t)b * Nkv * Hkv * D + (size_t)(h / G) * D;
                size_t r = ((size_t)b * H + h) * Nq + i;
                int n_keys = c.kv_len.empty() ? Nkv : c.kv_len[(size_t)b];
                double sink = c.sinks ? (double)sinks[(size_t)h] : -INFINITY;
                ref_lse[r] = row_attn<T, false>(c, n_keys, i, &rq[qo], &rk[ko], &rv[ko], kv_ld, scale, sink, &ref[qo]);
                naive_lse[r] = row_attn<T, true>(c, n_keys, i, &rq[qo], &rk[ko], &rv[ko], kv_ld, (float)scale, sink,
                                                 &naive[qo]);
            }
    /* the reference is the CPU's semantics */
    std::vector<float> cpu(nq), cpu_lse(rows);
    CHECK_INT(mlk_attn_fwd(&d, rq.data(), rk.data(), rv.data(), cpu.data(), cpu_lse.data()), MLK_OK);
    double cpu_err = mlkt_max_abs_err(cpu.data(), ref.data(), nq);
    CHECKF(cpu_err <= 1e-5, "%s: the reference agrees with mlk_attn_fwd (err %g)", name, cpu_err);

    dbuf<T> dq = dbuf_from(hq.data(), nq), dk = dbuf_from(hk.data(), nkv), dv = dbuf_from(hv.data(), nkv);
    dbuf<T> dout = dbuf_new<T>(nq);
    dbuf<float> dlse = dbuf_new<float>(rows);
    std::vector<unsigned char> bytes = mlkct_orders(name, [&]() {
        dbuf_poison(dout);
        dbuf_poison(dlse);
        CHECK_INT(run_mma<T>(&d, dq.p, dk.p, dv.p, dout.p, dlse.p), MLK_OK);
        std::vector<unsigned char> out;
        mlkct_append(out, dout);
        mlkct_append(out, dlse);
        return out;
    });
    const T *got = (const T *)bytes.data();
    const float *got_lse = (const float *)(bytes.data() + nq * sizeof(T));

    /* rows that see nothing (no sink either): o = 0 exactly (the o rule
       below, with reference 0) and lse = -inf; the others' lse by the rule */
    int empty = 0, empty_bad = 0;
    std::vector<float> lse_got;
    std::vector<double> lse_ref, lse_naive;
    for (size_t r = 0; r < rows; r++) {
        if (ref_lse[r] == -INFINITY) {
            empty++;
            empty_bad += got_lse[r] != -INFINITY;
            continue;
        }
        lse_got.push_back(got_lse[r]);
        lse_ref.push_back(ref_lse[r]);
        lse_naive.push_back(naive_lse[r]);
    }
    CHECKF(empty_bad == 0, "%s: %d rows see nothing; %d of their lse are not -inf", name, empty, empty_bad);
    double err = mlkct_err(got, ref.data(), nq), naive_err = mlkct_err_rounded<T>(naive.data(), ref.data(), nq);
    CHECK_NAIVE(err, naive_err, mlkct_unit<T>() * mlkct_max_abs(ref.data(), nq) / 4, "%s %s: o", name,
                mlkct_type_name<T>());
    double lse_err = mlkt_max_abs_err(lse_got.data(), lse_ref.data(), lse_ref.size());
    double naive_lse_err = mlkt_max_abs_err_d(lse_naive.data(), lse_ref.data(), lse_ref.size());
    CHECK_NAIVE(lse_err, naive_lse_err, mlkt_ulps(16, mlkct_max_abs(lse_ref.data(), lse_ref.size()) + 1),
                "%s %s: lse", name, mlkct_type_name<T>());
    mlkt_digest(bytes.data(), bytes.size());
    dbuf_free(dq);
    dbuf_free(dk);
    dbuf_free(dv);
    dbuf_free(dout);
    dbuf_free(dlse);
}


static mma_case make_case(int batch, int heads, int kv_heads, int len_q, int len_kv, int head_dim, int causal,
                          int window, mlk_layout layout)
{
    mma_case c;
    c.batch = batch;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.len_q = len_q;
    c.len_kv = len_kv;
    c.head_dim = head_dim;
    c.causal = causal;
    c.window = window;
    c.softcap = 0;
    c.sinks = false;
    c.layout = layout;
    return c;
}

static void test_shapes(void)
{
    mma_case c = make_case(2, 4, 2, 37, 75, 64, 1, 0, MLK_BHND);
    c.kv_len = {75, 40};
    check_case<__nv_bfloat16>("GQA causal Nq < Nkv, kv_len (NaN / inf past it)", c);
    c = make_case(1, 2, 1, 70, 70, 128, 1, 20, MLK_BNHD);
    check_case<__half>("causal window 20 (tiles skipped, first masked)", c);
    c = make_case(1, 2, 2, 20, 50, 96, 0, 0, MLK_BNHD);
    c.softcap = 30.0f;
    c.sinks = true;
    check_case<__nv_bfloat16>("softcap and sinks", c);
    c = make_case(2, 2, 2, 40, 24, 64, 1, 0, MLK_BHND);
    c.kv_len = {24, 0};
    check_case<__half>("Nq > Nkv and an empty item: rows that see nothing", c);
    c.sinks = true;
    check_case<__nv_bfloat16>("rows that see only their sink", c);
    c = make_case(1, 8, 1, 9, 100, 128, 1, 0, MLK_BHND);
    check_case<__nv_bfloat16>("MQA, 72 rows of one kv head", c);
    c = make_case(1, 1, 1, 50, 50, 64, 0, 10, MLK_BNHD);
    check_case<__half>("two-sided window 10", c);
    c = make_case(1, 4, 1, 130, 300, 128, 0, 0, MLK_BNHD);
    c.kv_len = {283};
    check_case<__nv_bfloat16>("long: 9 row tiles, 9 key tiles in flight", c);
    check_case<__half>("long: 9 row tiles, 9 key tiles in flight", c);
}

static void test_dispatch(void)
{
    mlk_attn_desc d;
    memset(&d, 0, sizeof d);
    d.batch = d.heads = 1;
    d.len_q = 16;
    d.head_dim = 64;
    dbuf<__nv_bfloat16> b = dbuf_new<__nv_bfloat16>(1024);
    dbuf<float> f = dbuf_new<float>(1024);
    const __nv_bfloat16 *p = b.p;
    CHECK(mlk_cuda__attn_fwd_mma_supported(&d, p, p, p));
    CHECK(!mlk_cuda__attn_fwd_mma_supported(&d, (const float *)f.p, f.p, f.p)); /* fp32: SIMT */
    CHECK(!mlk_cuda__attn_fwd_mma_supported(&d, p + 1, p, p));                   /* not 16-byte aligned */
    d.len_q = 1;
    d.heads = 8;
    d.kv_heads = 1;
    CHECK(!mlk_cuda__attn_fwd_mma_supported(&d, p, p, p)); /* decode, 8 rows per kv head: SIMT */
    d.len_q = 2;
    CHECK(mlk_cuda__attn_fwd_mma_supported(&d, p, p, p)); /* 16 rows */
    d.len_q = 16;
    d.heads = 1;
    d.kv_heads = 0;
    for (int dim : {32, 80, 256}) {
        d.head_dim = dim;
        CHECKF(!mlk_cuda__attn_fwd_mma_supported(&d, p, p, p), "head_dim %d: SIMT", dim);
    }
    d.head_dim = 96;
    CHECK(mlk_cuda__attn_fwd_mma_supported(&d, (const __half *)p, (const __half *)p, (const __half *)p));
    int parent[16];
    for (int i = 0; i < 16; i++) parent[i] = i / 2 - 1; /* a binary tree */
    d.tree_parent = parent;
    CHECK(!mlk_cuda__attn_fwd_mma_supported(&d, p, p, p)); /* trees: SIMT */
    dbuf_free(b);
    dbuf_free(f);
}

int main(void)
{
    MLKT_RUN(test_shapes, 1);
    MLKT_RUN(test_dispatch, 2);
    return mlkct_finish("test_attn_mma");
}

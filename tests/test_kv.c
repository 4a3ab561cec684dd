/* KV cache: storage round trips against independent conversions, paging
   scenarios, a randomized model-based test against plain per-sequence
   arrays, and mlk_kv_attn against mlk_attn_naive on the gathered cache. */
#include <stdlib.h>

/* Allocations left before MLKERN_MALLOC fails; -1 = never fails. */
static int alloc_budget = -1;

static void *test_malloc(size_t n)
{
    if (alloc_budget == 0) return NULL;
    if (alloc_budget > 0) alloc_budget--;
    return malloc(n);
}

#define MLKERN_MALLOC(n) test_malloc(n)
#define MLKERN_FREE(p) free(p)
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"

static const char *type_name[4] = {"F32", "F16", "Q8", "Q4"};

static mlk_kv_config make_cfg(mlk_kv_type type, int layers, int hkv, int d, int bs, int nblocks, int max_seqs)
{
    mlk_kv_config cfg;
    cfg.layers = layers;
    cfg.kv_heads = hkv;
    cfg.head_dim = d;
    cfg.block_size = bs;
    cfg.num_blocks = nblocks;
    cfg.max_seqs = max_seqs;
    cfg.type = type;
    return cfg;
}

static mlk_kv_cache *make_cache(mlk_kv_type type, int layers, int hkv, int d, int bs, int nblocks, int max_seqs)
{
    mlk_kv_config cfg = make_cfg(type, layers, hkv, d, bs, nblocks, max_seqs);
    mlk_kv_cache *c = NULL;
    CHECK_INT(mlk_kv_create(&cfg, &c), MLK_OK);
    return c;
}

static int blocks_used(const mlk_kv_cache *c)
{
    mlk_kv_stats st;
    memset(&st, 0, sizeof st);
    if (mlk_kv_get_stats(c, &st) != MLK_OK) return -1;
    return st.blocks_used;
}

/* ---- independent references for the storage formats ---- */

/* value of half-precision bits h, decoded with ldexp */
static double half_value(int h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double mag = e == 0 ? ldexp((double)m, -24) : ldexp(1.0 + m / 1024.0, e - 15);
    return (h & 0x8000) ? -mag : mag;
}

/* nearest finite half to x (ties to even mantissa), x clamped to +-65504 */
static double half_nearest(double x)
{
    double ax = fabs(x), lo_v, hi_v, r;
    int lo = 0, hi = 0x7bff;
    if (ax >= 65504.0) return x < 0 ? -65504.0 : 65504.0;
    while (hi - lo > 1) { /* largest half magnitude <= ax is lo */
        int mid = (lo + hi) / 2;
        if (half_value(mid) <= ax) lo = mid; else hi = mid;
    }
    lo_v = half_value(lo);
    hi_v = half_value(hi);
    if (ax - lo_v < hi_v - ax) r = lo_v;
    else if (ax - lo_v > hi_v - ax) r = hi_v;
    else r = (lo & 1) ? hi_v : lo_v;
    return x < 0 ? -r : r;
}

static size_t row_bytes_ref(mlk_kv_type t, int d)
{
    size_t nb = (size_t)(d + 31) / 32;
    if (t == MLK_KV_F32) return 4 * (size_t)d;
    if (t == MLK_KV_F16) return 2 * (size_t)d;
    if (t == MLK_KV_Q8) return 4 * nb + ((size_t)d + 3) / 4 * 4;
    return 4 * nb + (((size_t)d + 1) / 2 + 3) / 4 * 4;
}

/* Values every type stores exactly: each 32-block holds +-qmax * 2^-e at
   its first element and multiples of 2^-e in [-qmax, qmax] elsewhere. */
static void fill_exact(mlk_kv_type t, int d, float *x)
{
    int qmax = t == MLK_KV_Q4 ? 7 : t == MLK_KV_Q8 ? 127 : 1000;
    double step = ldexp(1.0, -mlkt_int(6));
    for (int j = 0; j < d; j++) {
        int m = (j % 32 == 0) ? (mlkt_int(2) ? qmax : -qmax) : mlkt_int(2 * qmax + 1) - qmax;
        if (t != MLK_KV_Q8 && t != MLK_KV_Q4 && j % 32 == 0) m = mlkt_int(2 * qmax + 1) - qmax;
        x[j] = (float)(m * step);
    }
}

/* ---- create / sizes ---- */

static void test_create_validation(void)
{
    mlk_kv_config cfg = make_cfg(MLK_KV_F32, 2, 2, 8, 4, 8, 3), bad;
    mlk_kv_cache *sentinel = (mlk_kv_cache *)&cfg, *c = sentinel;
    CHECK_INT(mlk_kv_create(NULL, &c), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_create(&cfg, NULL), MLK_ERR_NULL);
    for (int f = 0; f < 6; f++) {
        bad = cfg;
        int *field = f == 0 ? &bad.layers : f == 1 ? &bad.kv_heads : f == 2 ? &bad.head_dim
                   : f == 3 ? &bad.block_size : f == 4 ? &bad.num_blocks : &bad.max_seqs;
        *field = 0;
        CHECK_INT(mlk_kv_create(&bad, &c), MLK_ERR_SHAPE);
        *field = -3;
        CHECK_INT(mlk_kv_create(&bad, &c), MLK_ERR_SHAPE);
    }
    bad = cfg;
    bad.type = (mlk_kv_type)7;
    CHECK_INT(mlk_kv_create(&bad, &c), MLK_ERR_ARG);
    CHECK_INT((long long)mlk_kv_bytes_per_token(&bad), 0);
    bad = cfg;
    bad.layers = bad.kv_heads = bad.head_dim = bad.block_size = bad.num_blocks = INT_MAX;
    CHECK_INT(mlk_kv_create(&bad, &c), MLK_ERR_OVERFLOW);
    CHECK(c == sentinel);
    bad = make_cfg(MLK_KV_F32, 1, 1, 1, INT_MAX, INT_MAX, 1); /* 8 * 2^62 pool bytes */
    CHECK_INT(mlk_kv_create(&bad, &c), MLK_ERR_OVERFLOW);
    CHECK(c == sentinel);
    mlk_kv_destroy(NULL);
    CHECK_INT(mlk_kv_seq_len(NULL, 0), -1);
}

static void test_bytes_per_token(void)
{
    static const int dims[] = {1, 2, 7, 31, 32, 33, 64, 100, 128, 256};
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < (int)(sizeof dims / sizeof dims[0]); i++) {
            mlk_kv_config cfg = make_cfg((mlk_kv_type)t, 3, 5, dims[i], 16, 4, 2);
            mlk_kv_cache *c = make_cache((mlk_kv_type)t, 3, 5, dims[i], 16, 4, 2);
            mlk_kv_stats st;
            memset(&st, 0, sizeof st);
            CHECK_INT((long long)mlk_kv_bytes_per_token(&cfg), (long long)(2 * 5 * row_bytes_ref((mlk_kv_type)t, dims[i])));
            CHECK_INT(mlk_kv_get_stats(c, &st), MLK_OK);
            CHECK_INT((long long)st.bytes_total, (long long)(mlk_kv_bytes_per_token(&cfg) * 3 * 16 * 4));
            CHECK_INT(st.blocks_total, 4);
            CHECK_INT(st.blocks_used, 0);
            CHECK_INT((long long)st.bytes_used, 0);
            CHECK_INT(st.seqs, 0);
            mlk_kv_destroy(c);
        }
    {
        mlk_kv_config cfg = make_cfg(MLK_KV_Q4, 1, 1, 128, 1, 1, 1);
        CHECK_INT((long long)mlk_kv_bytes_per_token(&cfg), 160);
        cfg.type = MLK_KV_Q8;
        CHECK_INT((long long)mlk_kv_bytes_per_token(&cfg), 288);
        CHECK_INT((long long)mlk_kv_bytes_per_token(NULL), 0);
    }
}

/* ---- storage round trips ---- */

/* Stores n positions of random data in every layer, loads them back. */
static void roundtrip(mlk_kv_type t, int d, int n, int bs, const float *src_k, const float *src_v,
                      float *out_k, float *out_v)
{
    int hkv = 2, seq = -1;
    mlk_kv_cache *c = make_cache(t, 2, hkv, d, bs, (n + bs - 1) / bs, 1);
    CHECK_INT(mlk_kv_seq_new(c, &seq), MLK_OK);
    CHECK_INT(mlk_kv_append(c, seq, n), MLK_OK);
    CHECK_INT(mlk_kv_store(c, seq, 1, 0, n, src_k, src_v), MLK_OK);
    CHECK_INT(mlk_kv_load(c, seq, 1, 0, n, out_k, out_v), MLK_OK);
    mlk_kv_destroy(c);
}

static void test_roundtrip_f32(void)
{
    int d = 37, n = 19, cnt = n * 2 * d;
    float *k = mlkt_floats((size_t)cnt), *v = mlkt_floats((size_t)cnt);
    float *ok = mlkt_floats((size_t)cnt), *ov = mlkt_floats((size_t)cnt);
    mlkt_fill_normal(k, (size_t)cnt, 3.0);
    mlkt_fill_normal(v, (size_t)cnt, 1e-30);
    k[3] = INFINITY;
    v[5] = -1e38f;
    roundtrip(MLK_KV_F32, d, n, 4, k, v, ok, ov);
    CHECK(mlkt_same(k, ok, (size_t)cnt * 4));
    CHECK(mlkt_same(v, ov, (size_t)cnt * 4));
    mlkt_digest(ok, (size_t)cnt * 4);
    mlkt_free(k); mlkt_free(v); mlkt_free(ok); mlkt_free(ov);
}

static void test_roundtrip_f16(void)
{
    static const float special[] = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.0f, 65520.0f, 1e9f, -1e9f,
        INFINITY, -INFINITY, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.98023259e-08f,
        8.9406967e-08f, 1.0009765625f, 1.00048828125f, 1.00146484375f, 2049.0f, 2051.0f, 1e-10f};
    int d = 64, n = 40, cnt = n * 2 * d, bad = 0;
    float *k = mlkt_floats((size_t)cnt), *v = mlkt_floats((size_t)cnt);
    float *ok = mlkt_floats((size_t)cnt), *ov = mlkt_floats((size_t)cnt);
    for (int i = 0; i < cnt; i++) { /* log-uniform magnitudes over the whole half range and past it */
        k[i] = (float)((mlkt_int(2) ? 1 : -1) * exp(mlkt_uniform(-20.0, 13.0)));
        v[i] = (float)mlkt_uniform(-70000.0, 70000.0);
    }
    for (int i = 0; i < (int)(sizeof special / sizeof special[0]); i++) {
        k[i] = special[i];
        v[i + 7] = -special[i];
    }
    v[0] = NAN;
    roundtrip(MLK_KV_F16, d, n, 16, k, v, ok, ov);
    for (int i = 0; i < cnt; i++) {
        bad += (double)ok[i] != half_nearest(k[i]);
        if (i > 0) bad += (double)ov[i] != half_nearest(v[i]);
    }
    CHECKF(bad == 0, "%d values differ from round-to-nearest-even", bad);
    CHECK(ov[0] != ov[0]);
    CHECK(ok[8] == 65504.0f && ov[15] == -65504.0f); /* +-inf saturate too */
    mlkt_digest(ok, (size_t)cnt * 4);
    mlkt_free(k); mlkt_free(v); mlkt_free(ok); mlkt_free(ov);
}

static void check_quant(mlk_kv_type t, int d, int n)
{
    int qmax = t == MLK_KV_Q8 ? 127 : 7, cnt, bad = 0;
    float *k, *v, *ok, *ov;
    if (n < 1 || d < 1) return;
    cnt = n * 2 * d;
    k = mlkt_floats((size_t)cnt);
    v = mlkt_floats((size_t)cnt);
    ok = mlkt_floats((size_t)cnt);
    ov = mlkt_floats((size_t)cnt);
    mlkt_fill_normal(k, (size_t)cnt, 2.0);
    mlkt_fill_uniform(v, (size_t)cnt, -1e-3, 1e-3);
    for (int j = 0; j < d && j < 40; j++) k[j] = 0.0f;      /* an all-zero block */
    if (cnt > 2 * d + 5) k[2 * d + 5] = 1e30f;               /* one huge outlier */
    if (d >= 2) {                                            /* x / scale = -63.5, a tie */
        k[d] = 2.75f;
        k[d + 1] = -1.375f;
    }
    roundtrip(t, d, n, 3, k, v, ok, ov);
    for (int r = 0; r < 2 * n; r++)
        for (int b0 = 0; b0 < d; b0 += 32) {
            int b1 = b0 + 32 < d ? b0 + 32 : d;
            const float *src[2] = {k + (size_t)r * d, v + (size_t)r * d};
            const float *got[2] = {ok + (size_t)r * d, ov + (size_t)r * d};
            for (int w = 0; w < 2; w++) {
                double amax = 0, half_step;
                for (int j = b0; j < b1; j++) amax = fabs(src[w][j]) > amax ? fabs(src[w][j]) : amax;
                half_step = amax / qmax / 2; /* plus float rounding of the step and of q * step */
                for (int j = b0; j < b1; j++)
                    bad += !(fabs((double)got[w][j] - src[w][j]) <= half_step + ldexp(fabs(src[w][j]), -21));
            }
        }
    CHECKF(bad == 0, "%s d=%d: %d elements beyond half a step", type_name[t], d, bad);
    for (int j = 0; j < d && j < 32; j++) bad += ok[j] != 0.0f;
    CHECKF(bad == 0, "%s d=%d: zero block not exact", type_name[t], d);
    mlkt_digest(ok, (size_t)cnt * 4);
    mlkt_digest(ov, (size_t)cnt * 4);
    mlkt_free(k); mlkt_free(v); mlkt_free(ok); mlkt_free(ov);
}

static void test_roundtrip_quant(void)
{
    static const int dims[] = {1, 2, 5, 16, 31, 32, 33, 48, 64, 100, 128, 130};
    for (int t = MLK_KV_Q8; t <= MLK_KV_Q4; t++)
        for (int i = 0; i < (int)(sizeof dims / sizeof dims[0]); i++) check_quant((mlk_kv_type)t, dims[i], 11);
}

/* ---- argument validation: codes, and nothing changes ---- */

static void test_store_load_validation(void)
{
    int d = 8, hkv = 2, n = 6, row = hkv * d, seq = -1, other = -1, missing = 5;
    mlk_kv_cache *c = make_cache(MLK_KV_Q8, 2, hkv, d, 4, 4, 3);
    float *k = mlkt_floats((size_t)n * row), *v = mlkt_floats((size_t)n * row);
    float *lk = mlkt_floats((size_t)n * row), *lv = mlkt_floats((size_t)n * row);
    float *before = mlkt_floats((size_t)2 * n * row), *after = mlkt_floats((size_t)2 * n * row);
    int keep_bad1[2] = {1, 1}, keep_bad2[2] = {-1, 0}, keep_bad3[1] = {6};
    mlkt_fill_normal(k, (size_t)n * row, 1.0);
    mlkt_fill_normal(v, (size_t)n * row, 1.0);
    CHECK_INT(mlk_kv_seq_new(c, &seq), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(c, &other), MLK_OK);
    CHECK_INT(mlk_kv_append(c, seq, n), MLK_OK);
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, n, k, v), MLK_OK);
    CHECK_INT(mlk_kv_store(c, seq, 1, 0, n, k, v), MLK_OK);
    CHECK_INT(mlk_kv_load(c, seq, 0, 0, n, before, before + (size_t)n * row), MLK_OK);
    memcpy(lk, before, sizeof(float) * (size_t)n * row);
    memcpy(lv, before, sizeof(float) * (size_t)n * row);

    CHECK_INT(mlk_kv_store(NULL, seq, 0, 0, 1, k, v), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, 1, NULL, v), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, 1, k, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_store(c, missing, 0, 0, 1, k, v), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_store(c, -1, 0, 0, 1, k, v), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_store(c, 3, 0, 0, 1, k, v), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_store(c, seq, 2, 0, 1, k, v), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_store(c, seq, -1, 0, 1, k, v), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, 0, k, v), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, -2, k, v), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_store(c, seq, 0, -1, 1, k, v), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_store(c, seq, 0, 1, n, k, v), MLK_ERR_SHAPE);     /* past the end */
    CHECK_INT(mlk_kv_store(c, seq, 0, n, 1, k, v), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_store(c, seq, 0, INT_MAX, INT_MAX, k, v), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_store(c, other, 0, 0, 1, k, v), MLK_ERR_SHAPE);   /* empty sequence */
    k[3] = NAN;
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, 1, k, v), MLK_ERR_VALUE);
    k[3] = INFINITY;
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, 1, k, v), MLK_ERR_VALUE);
    k[3] = 0.5f;
    v[row * 2 + 1] = -INFINITY;
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, 3, k, v), MLK_ERR_VALUE);

    CHECK_INT(mlk_kv_load(NULL, seq, 0, 0, 1, lk, lv), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_load(c, seq, 0, 0, 1, NULL, lv), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_load(c, seq, 0, 0, 1, lk, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_load(c, missing, 0, 0, 1, lk, lv), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_load(c, seq, 2, 0, 1, lk, lv), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_load(c, seq, 0, 0, n + 1, lk, lv), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_load(c, seq, 0, -3, 2, lk, lv), MLK_ERR_SHAPE);
    CHECK(mlkt_same(lk, before, sizeof(float) * (size_t)n * row));
    CHECK(mlkt_same(lv, before, sizeof(float) * (size_t)n * row));

    CHECK_INT(mlk_kv_append(NULL, seq, 1), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_append(c, missing, 1), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_append(c, seq, 0), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_append(c, seq, -1), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_append(c, seq, INT_MAX), MLK_ERR_OVERFLOW);
    CHECK_INT(mlk_kv_truncate(NULL, seq, 1), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_truncate(c, missing, 1), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_truncate(c, seq, n + 1), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_truncate(c, seq, -1), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_compact(NULL, seq, 0, 0, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_compact(c, seq, 0, 1, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_compact(c, missing, 0, 0, NULL), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_compact(c, seq, -1, 0, NULL), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_compact(c, seq, n + 1, 0, NULL), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_compact(c, seq, 0, 2, keep_bad1), MLK_ERR_ARG);   /* not increasing */
    CHECK_INT(mlk_kv_compact(c, seq, 0, 2, keep_bad2), MLK_ERR_ARG);   /* negative */
    CHECK_INT(mlk_kv_compact(c, seq, 0, 1, keep_bad3), MLK_ERR_ARG);   /* past the end */
    CHECK_INT(mlk_kv_compact(c, seq, 2, 1, keep_bad3 /* 6 >= len - 2 */), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_compact(c, seq, 0, -1, keep_bad3), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_compact(c, seq, 0, n + 1, keep_bad3), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_seq_free(NULL, seq), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_seq_free(c, missing), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_seq_free(c, 99), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_seq_new(NULL, &other), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_seq_new(c, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_seq_fork(NULL, seq, &other), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_seq_fork(c, seq, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_seq_fork(c, missing, &other), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_get_stats(NULL, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_get_stats(c, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_seq_len(c, missing), -1);
    CHECK_INT(mlk_kv_seq_len(c, -7), -1);

    CHECK_INT(mlk_kv_seq_len(c, seq), n);
    CHECK_INT(blocks_used(c), 2);
    CHECK_INT(mlk_kv_load(c, seq, 0, 0, n, after, after + (size_t)n * row), MLK_OK);
    CHECK(mlkt_same(before, after, sizeof(float) * 2 * (size_t)n * row));
    mlk_kv_destroy(c);
    mlkt_free(k); mlkt_free(v); mlkt_free(lk); mlkt_free(lv); mlkt_free(before); mlkt_free(after);
}

/* ---- paging scenarios ---- */

/* Fills positions [pos, pos+n) of every layer with a pattern tagged by
   `tag`, exactly representable in F16 (tag < 16, layers <= 2). */
static void store_tagged(mlk_kv_cache *c, int seq, int layers, int row, int pos, int n, int tag)
{
    float *k = (float *)malloc(sizeof(float) * (size_t)n * row), *v = (float *)malloc(sizeof(float) * (size_t)n * row);
    for (int l = 0; l < layers; l++) {
        for (int i = 0; i < n * row; i++) {
            k[i] = (float)(tag * 16 + l * 8 + ((pos + i / row) % 8)) + (float)(i % row) * 0.125f;
            v[i] = -k[i];
        }
        CHECK_INT(mlk_kv_store(c, seq, l, pos, n, k, v), MLK_OK);
    }
    free(k);
    free(v);
}

/* 1 if positions [pos, pos+n) of seq hold store_tagged's pattern for tag */
static int has_tag(const mlk_kv_cache *c, int seq, int layers, int row, int pos, int n, int tag)
{
    float *k = (float *)malloc(sizeof(float) * (size_t)n * row), *v = (float *)malloc(sizeof(float) * (size_t)n * row);
    int ok = 1;
    for (int l = 0; l < layers; l++) {
        if (mlk_kv_load(c, seq, l, pos, n, k, v) != MLK_OK) ok = 0;
        for (int i = 0; ok && i < n * row; i++) {
            float want = (float)(tag * 16 + l * 8 + ((pos + i / row) % 8)) + (float)(i % row) * 0.125f;
            if (k[i] != want || v[i] != -want) ok = 0;
        }
    }
    free(k);
    free(v);
    return ok;
}

static void test_beams_cow(void)
{
    int layers = 2, hkv = 2, d = 4, row = hkv * d, bs = 4, prompt = 10, beams[4], root = -1;
    mlk_kv_cache *c = make_cache(MLK_KV_F16, layers, hkv, d, bs, 32, 8);
    mlk_kv_stats st;
    memset(&st, 0, sizeof st);
    CHECK_INT(mlk_kv_seq_new(c, &root), MLK_OK);
    CHECK_INT(mlk_kv_append(c, root, prompt), MLK_OK);
    store_tagged(c, root, layers, row, 0, prompt, 1);
    CHECK_INT(blocks_used(c), 3);
    for (int b = 0; b < 4; b++) CHECK_INT(mlk_kv_seq_fork(c, root, &beams[b]), MLK_OK);
    CHECK_INT(blocks_used(c), 3); /* the prompt is stored once */
    CHECK_INT(mlk_kv_seq_free(c, root), MLK_OK);
    CHECK_INT(blocks_used(c), 3);
    for (int step = 0; step < 7; step++)
        for (int b = 0; b < 4; b++) {
            int pos = mlk_kv_seq_len(c, beams[b]);
            CHECK_INT(mlk_kv_append(c, beams[b], 1), MLK_OK);
            store_tagged(c, beams[b], layers, row, pos, 1, 10 + b);
        }
    /* the partial prompt block (positions 8..9) was copied once per beam;
       blocks 0 and 1 stay shared; each beam owns its tail. */
    CHECK_INT(mlk_kv_get_stats(c, &st), MLK_OK);
    CHECK_INT(st.blocks_used, 2 + 4 * 3);
    CHECK_INT(st.seqs, 4);
    CHECK_INT((long long)st.bytes_used, (long long)(st.bytes_total / 32 * 14));
    for (int b = 0; b < 4; b++) {
        CHECK_INT(mlk_kv_seq_len(c, beams[b]), prompt + 7);
        CHECK(has_tag(c, beams[b], layers, row, 0, prompt, 1));
        CHECK(has_tag(c, beams[b], layers, row, prompt, 7, 10 + b));
    }
    /* free in a random order: every block comes back */
    for (int i = 3; i > 0; i--) {
        int j = mlkt_int(i + 1), t = beams[i];
        beams[i] = beams[j];
        beams[j] = t;
    }
    for (int b = 0; b < 4; b++) {
        CHECK_INT(mlk_kv_seq_free(c, beams[b]), MLK_OK);
        for (int r = b + 1; r < 4; r++) {
            CHECK(has_tag(c, beams[r], layers, row, 0, prompt, 1));
        }
    }
    CHECK_INT(blocks_used(c), 0);
    CHECK_INT(mlk_kv_seq_free(c, beams[0]), MLK_ERR_ARG); /* double free */
    mlk_kv_destroy(c);
}

static void test_exhaustion(void)
{
    int layers = 1, hkv = 1, d = 8, row = d, bs = 4, a = -1, b = -1, x = -1, y = -1;
    mlk_kv_cache *c = make_cache(MLK_KV_Q4, layers, hkv, d, bs, 3, 3);
    float *k = mlkt_floats(8 * (size_t)row), *v = mlkt_floats(8 * (size_t)row);
    float *lk = mlkt_floats(12 * (size_t)row), *lv = mlkt_floats(12 * (size_t)row);
    float *lk2 = mlkt_floats(12 * (size_t)row), *lv2 = mlkt_floats(12 * (size_t)row);
    mlkt_fill_normal(k, 8 * (size_t)row, 1.0);
    mlkt_fill_normal(v, 8 * (size_t)row, 1.0);
    CHECK_INT(mlk_kv_seq_new(c, &a), MLK_OK);
    CHECK_INT(mlk_kv_append(c, a, 6), MLK_OK);
    CHECK_INT(mlk_kv_store(c, a, 0, 0, 6, k, v), MLK_OK);
    CHECK_INT(mlk_kv_append(c, a, 7), MLK_ERR_CAPACITY);       /* needs 3 more blocks, 1 free */
    CHECK_INT(mlk_kv_seq_len(c, a), 6);
    CHECK_INT(blocks_used(c), 2);
    CHECK_INT(mlk_kv_seq_fork(c, a, &b), MLK_OK);
    CHECK_INT(mlk_kv_append(c, b, 6), MLK_OK);                 /* 8..11 takes the last block */
    CHECK_INT(blocks_used(c), 3);
    CHECK_INT(mlk_kv_load(c, a, 0, 0, 6, lk, lv), MLK_OK);
    /* b writing into shared block 0 needs a copy: pool full */
    CHECK_INT(mlk_kv_store(c, b, 0, 2, 3, k, v), MLK_ERR_CAPACITY);
    CHECK_INT(mlk_kv_store(c, b, 0, 0, 1, k, v), MLK_ERR_CAPACITY);
    CHECK_INT(mlk_kv_store(c, a, 0, 5, 1, k + row, v + row), MLK_ERR_CAPACITY);
    { int keep[2] = {1, 2}; CHECK_INT(mlk_kv_compact(c, a, 0, 2, keep), MLK_ERR_CAPACITY); }
    CHECK_INT(mlk_kv_seq_len(c, a), 6);
    CHECK_INT(mlk_kv_seq_len(c, b), 12);
    CHECK_INT(blocks_used(c), 3);
    CHECK_INT(mlk_kv_load(c, a, 0, 0, 6, lk2, lv2), MLK_OK);
    CHECK(mlkt_same(lk, lk2, sizeof(float) * 6 * (size_t)row) && mlkt_same(lv, lv2, sizeof(float) * 6 * (size_t)row));
    CHECK_INT(mlk_kv_load(c, b, 0, 0, 6, lk2, lv2), MLK_OK);
    CHECK(mlkt_same(lk, lk2, sizeof(float) * 6 * (size_t)row));
    /* storing into b's private block 2 works, and the untouched shared part stays */
    CHECK_INT(mlk_kv_store(c, b, 0, 8, 4, k, v), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(c, &x), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(c, &y), MLK_ERR_CAPACITY);          /* max_seqs = 3 */
    CHECK_INT(mlk_kv_seq_fork(c, a, &y), MLK_ERR_CAPACITY);
    CHECK_INT(y, -1);
    CHECK_INT(mlk_kv_append(c, x, 1), MLK_ERR_CAPACITY);
    CHECK_INT(mlk_kv_seq_len(c, x), 0);
    /* a truncation inside the shared block frees nothing; b freed, a owns all */
    CHECK_INT(mlk_kv_truncate(c, b, 5), MLK_OK);
    CHECK_INT(blocks_used(c), 2);
    CHECK_INT(mlk_kv_seq_free(c, b), MLK_OK);
    CHECK_INT(mlk_kv_store(c, a, 0, 5, 1, k + row, v + row), MLK_OK); /* no copy now */
    CHECK_INT(blocks_used(c), 2);
    CHECK_INT(mlk_kv_append(c, x, 4), MLK_OK);
    CHECK_INT(blocks_used(c), 3);
    CHECK_INT(mlk_kv_seq_free(c, x), MLK_OK);
    CHECK_INT(mlk_kv_seq_free(c, a), MLK_OK);
    CHECK_INT(blocks_used(c), 0);
    mlk_kv_destroy(c);
    mlkt_free(k); mlkt_free(v); mlkt_free(lk); mlkt_free(lv); mlkt_free(lk2); mlkt_free(lv2);
}

static void test_truncate_reuse(void)
{
    int layers = 2, hkv = 1, d = 3, row = d, bs = 5, s = -1;
    mlk_kv_cache *c = make_cache(MLK_KV_F32, layers, hkv, d, bs, 6, 2);
    CHECK_INT(mlk_kv_seq_new(c, &s), MLK_OK);
    CHECK_INT(mlk_kv_append(c, s, 30), MLK_OK);
    CHECK_INT(mlk_kv_append(c, s, 1), MLK_ERR_CAPACITY);
    store_tagged(c, s, layers, row, 0, 30, 2);
    CHECK_INT(mlk_kv_truncate(c, s, 11), MLK_OK);   /* keeps 3 blocks */
    CHECK_INT(blocks_used(c), 3);
    CHECK_INT(mlk_kv_truncate(c, s, 10), MLK_OK);   /* exactly 2 blocks */
    CHECK_INT(blocks_used(c), 2);
    CHECK(has_tag(c, s, layers, row, 0, 10, 2));
    CHECK_INT(mlk_kv_append(c, s, 20), MLK_OK);      /* reuses the freed blocks */
    CHECK_INT(blocks_used(c), 6);
    store_tagged(c, s, layers, row, 10, 20, 3);
    CHECK(has_tag(c, s, layers, row, 0, 10, 2));
    CHECK(has_tag(c, s, layers, row, 10, 20, 3));
    CHECK_INT(mlk_kv_truncate(c, s, 0), MLK_OK);
    CHECK_INT(blocks_used(c), 0);
    CHECK_INT(mlk_kv_seq_len(c, s), 0);
    mlk_kv_destroy(c);
}

/* A tree step: prefix of 6, 7 tree nodes appended; accept nodes 1, 3, 4. */
static void test_compact_tree(void)
{
    int layers = 3, hkv = 2, d = 33, row = hkv * d, bs = 4, s = -1, f = -1;
    int keep[3] = {1, 3, 4};
    for (int t = 0; t < 4; t++) {
        mlk_kv_cache *c = make_cache((mlk_kv_type)t, layers, hkv, d, bs, 16, 2);
        float *k = mlkt_floats(13 * (size_t)row), *v = mlkt_floats(13 * (size_t)row);
        float *all_k[3], *all_v[3], *got_k = mlkt_floats(13 * (size_t)row), *got_v = mlkt_floats(13 * (size_t)row);
        CHECK_INT(mlk_kv_seq_new(c, &s), MLK_OK);
        CHECK_INT(mlk_kv_append(c, s, 13), MLK_OK);
        for (int l = 0; l < layers; l++) {
            mlkt_fill_normal(k, 13 * (size_t)row, 1.0);
            mlkt_fill_normal(v, 13 * (size_t)row, 1.0);
            CHECK_INT(mlk_kv_store(c, s, l, 0, 13, k, v), MLK_OK);
            all_k[l] = mlkt_floats(13 * (size_t)row);
            all_v[l] = mlkt_floats(13 * (size_t)row);
            CHECK_INT(mlk_kv_load(c, s, l, 0, 13, all_k[l], all_v[l]), MLK_OK);
        }
        CHECK_INT(mlk_kv_seq_fork(c, s, &f), MLK_OK); /* the fork keeps the uncompacted rows */
        CHECK_INT(mlk_kv_compact(c, s, 6, 3, keep), MLK_OK);
        CHECK_INT(mlk_kv_seq_len(c, s), 9);
        for (int l = 0; l < layers; l++) {
            CHECK_INT(mlk_kv_load(c, s, l, 0, 9, got_k, got_v), MLK_OK);
            CHECK(mlkt_same(got_k, all_k[l], sizeof(float) * 6 * (size_t)row));
            for (int i = 0; i < 3; i++) {
                CHECK(mlkt_same(got_k + (size_t)(6 + i) * row, all_k[l] + (size_t)(6 + keep[i]) * row, sizeof(float) * (size_t)row));
                CHECK(mlkt_same(got_v + (size_t)(6 + i) * row, all_v[l] + (size_t)(6 + keep[i]) * row, sizeof(float) * (size_t)row));
            }
            CHECK_INT(mlk_kv_load(c, f, l, 0, 13, got_k, got_v), MLK_OK);
            CHECK(mlkt_same(got_k, all_k[l], sizeof(float) * 13 * (size_t)row));
            CHECK(mlkt_same(got_v, all_v[l], sizeof(float) * 13 * (size_t)row));
        }
        /* block 1 (positions 4..7) and 2 were rewritten -> copied; block 0 shared; f owns 4 */
        CHECK_INT(blocks_used(c), 4 + 2);
        CHECK_INT(mlk_kv_compact(c, s, 9, 0, NULL), MLK_OK); /* accepted nothing */
        CHECK_INT(mlk_kv_seq_len(c, s), 9);
        CHECK_INT(mlk_kv_compact(c, s, 2, 0, NULL), MLK_OK);
        CHECK_INT(mlk_kv_seq_len(c, s), 2);
        CHECK_INT(mlk_kv_seq_free(c, s), MLK_OK);
        CHECK_INT(mlk_kv_seq_free(c, f), MLK_OK);
        CHECK_INT(blocks_used(c), 0);
        for (int l = 0; l < layers; l++) { mlkt_free(all_k[l]); mlkt_free(all_v[l]); }
        mlkt_free(k); mlkt_free(v); mlkt_free(got_k); mlkt_free(got_v);
        mlk_kv_destroy(c);
    }
}

/* ---- randomized model-based test ----
   The model keeps, per sequence, plain arrays of what was stored, a
   written flag, and a list of abstract block ids (shared ids after a fork,
   a fresh id when a shared one is written): the pool occupancy is the
   number of distinct ids, which predicts every MLK_ERR_CAPACITY. */

#define MM_SEQS 5
#define MM_MAXLEN 48

typedef struct model {
    int len[MM_SEQS + 1];             /* -1: no sequence; id MM_SEQS never exists */
    int ids[MM_SEQS + 1][MM_MAXLEN];  /* abstract block id per table entry */
    float *val;                       /* [seq][layer][pos][2 * row] */
    unsigned char *written;           /* [seq][layer][pos] */
    int next_id;
} model;

typedef struct mm_env { int layers, hkv, d, row, bs, nblocks; mlk_kv_type type; } mm_env;

static float *mm_val(const model *m, const mm_env *e, int s, int l, int p)
{
    return m->val + (((size_t)s * e->layers + (size_t)l) * MM_MAXLEN + (size_t)p) * 2 * (size_t)e->row;
}

static unsigned char *mm_written(const model *m, const mm_env *e, int s, int l, int p)
{
    return m->written + ((size_t)s * e->layers + (size_t)l) * MM_MAXLEN + (size_t)p;
}

static int mm_nblk(const mm_env *e, int len) { return (len + e->bs - 1) / e->bs; }

static int mm_shared(const model *m, const mm_env *e, int s, int bi)
{
    for (int t = 0; t < MM_SEQS; t++)
        if (t != s && m->len[t] >= 0 && bi < MM_MAXLEN) {
            for (int j = 0; j < mm_nblk(e, m->len[t]); j++)
                if (m->ids[t][j] == m->ids[s][bi]) return 1;
        }
    return 0;
}

static int mm_used(const model *m, const mm_env *e)
{
    int n = 0;
    for (int s = 0; s < MM_SEQS; s++)
        for (int j = 0; m->len[s] >= 0 && j < mm_nblk(e, m->len[s]); j++) {
            int seen = 0;
            for (int t = 0; t <= s && !seen; t++)
                for (int i = 0; m->len[t] >= 0 && i < (t == s ? j : mm_nblk(e, m->len[t])); i++)
                    if (m->ids[t][i] == m->ids[s][j]) { seen = 1; break; }
            n += !seen;
        }
    return n;
}

static int mm_live(const model *m)
{
    int n = 0;
    for (int s = 0; s < MM_SEQS; s++) n += m->len[s] >= 0;
    return n;
}

/* Compares every live sequence's length, stored rows and the stats. */
static int mm_verify(const model *m, const mm_env *e, const mlk_kv_cache *c, float *kbuf, float *vbuf)
{
    mlk_kv_stats st;
    int ok;
    memset(&st, 0, sizeof st);
    ok = mlk_kv_get_stats(c, &st) == MLK_OK && st.blocks_used == mm_used(m, e) && st.seqs == mm_live(m);
    for (int s = 0; s <= MM_SEQS && ok; s++) {
        ok = mlk_kv_seq_len(c, s) == m->len[s];
        for (int l = 0; ok && l < e->layers && m->len[s] > 0; l++) {
            ok = mlk_kv_load(c, s, l, 0, m->len[s], kbuf, vbuf) == MLK_OK;
            for (int p = 0; ok && p < m->len[s]; p++) {
                const float *want = mm_val(m, e, s, l, p);
                if (!*mm_written(m, e, s, l, p)) continue;
                ok = mlkt_same(kbuf + (size_t)p * e->row, want, sizeof(float) * (size_t)e->row) &&
                     mlkt_same(vbuf + (size_t)p * e->row, want + e->row, sizeof(float) * (size_t)e->row);
            }
        }
    }
    return ok;
}

/* Writes to table entry bi of s: a shared id becomes fresh (copy-on-write). */
static void mm_touch(model *m, const mm_env *e, int s, int bi)
{
    if (mm_shared(m, e, s, bi)) m->ids[s][bi] = m->next_id++;
}

static void mm_run(mlk_kv_type type, int steps)
{
    mm_env e;
    model m;
    mlk_kv_cache *c;
    float *kbuf, *vbuf, *in_k, *in_v;
    int fails = 0, step;
    e.type = type;
    e.layers = 1 + mlkt_int(2);
    e.hkv = 1 + mlkt_int(2);
    e.d = type >= MLK_KV_Q8 ? 33 + mlkt_int(4) : 1 + mlkt_int(6);
    e.row = e.hkv * e.d;
    e.bs = 1 + mlkt_int(5);
    e.nblocks = (MM_MAXLEN / e.bs) > 14 ? 14 : MM_MAXLEN / e.bs; /* lengths stay <= MM_MAXLEN */
    c = make_cache(type, e.layers, e.hkv, e.d, e.bs, e.nblocks, MM_SEQS);
    m.val = (float *)calloc((size_t)MM_SEQS * e.layers * MM_MAXLEN * 2 * e.row, sizeof(float));
    m.written = (unsigned char *)calloc((size_t)MM_SEQS * e.layers * MM_MAXLEN, 1);
    m.next_id = 0;
    for (int s = 0; s <= MM_SEQS; s++) m.len[s] = -1;
    kbuf = (float *)malloc(sizeof(float) * MM_MAXLEN * (size_t)e.row);
    vbuf = (float *)malloc(sizeof(float) * MM_MAXLEN * (size_t)e.row);
    in_k = (float *)malloc(sizeof(float) * MM_MAXLEN * (size_t)e.row);
    in_v = (float *)malloc(sizeof(float) * MM_MAXLEN * (size_t)e.row);
    for (step = 0; step < steps && fails == 0; step++) {
        int op = mlkt_int(9), s = mlkt_int(MM_SEQS + 1), got, want = MLK_OK;
        int valid = m.len[s] >= 0, free_blocks = e.nblocks - mm_used(&m, &e);
        if (op == 0) { /* new */
            int id = -1, slot = 0;
            while (slot < MM_SEQS && m.len[slot] >= 0) slot++;
            got = mlk_kv_seq_new(c, &id);
            want = slot == MM_SEQS ? MLK_ERR_CAPACITY : MLK_OK;
            if (want == MLK_OK) { fails += id != slot; m.len[slot] = 0; }
        } else if (op == 1) { /* fork */
            int id = -1, slot = 0;
            while (slot < MM_SEQS && m.len[slot] >= 0) slot++;
            got = mlk_kv_seq_fork(c, s, &id);
            want = !valid ? MLK_ERR_ARG : slot == MM_SEQS ? MLK_ERR_CAPACITY : MLK_OK;
            if (want == MLK_OK) {
                fails += id != slot;
                m.len[slot] = m.len[s];
                memcpy(m.ids[slot], m.ids[s], sizeof m.ids[s]);
                memcpy(mm_val(&m, &e, slot, 0, 0), mm_val(&m, &e, s, 0, 0), sizeof(float) * (size_t)e.layers * MM_MAXLEN * 2 * e.row);
                memcpy(mm_written(&m, &e, slot, 0, 0), mm_written(&m, &e, s, 0, 0), (size_t)e.layers * MM_MAXLEN);
            }
        } else if (op == 2 || op == 3) { /* append */
            int n = 1 + mlkt_int(2 * e.bs + 2) - (mlkt_int(30) == 0);
            got = mlk_kv_append(c, s, n);
            if (!valid) want = MLK_ERR_ARG;
            else if (n < 1) want = MLK_ERR_SHAPE;
            else if (mm_nblk(&e, m.len[s] + n) - mm_nblk(&e, m.len[s]) > free_blocks) want = MLK_ERR_CAPACITY;
            if (want == MLK_OK) {
                for (int b = mm_nblk(&e, m.len[s]); b < mm_nblk(&e, m.len[s] + n); b++) m.ids[s][b] = m.next_id++;
                for (int l = 0; l < e.layers; l++)
                    for (int p = m.len[s]; p < m.len[s] + n; p++) *mm_written(&m, &e, s, l, p) = 0;
                m.len[s] += n;
            }
        } else if (op == 4 || op == 5) { /* store */
            int len = valid ? m.len[s] : 0, l = mlkt_int(e.layers), pos = mlkt_int(len + 1);
            int n = 1 + mlkt_int(len - pos + 1), shared = 0;
            for (int i = 0; i < n * e.hkv; i++) { /* per head: each quantisation block starts at its max */
                fill_exact(type, e.d, in_k + (size_t)i * e.d);
                fill_exact(type, e.d, in_v + (size_t)i * e.d);
            }
            got = mlk_kv_store(c, s, l, pos, n, in_k, in_v);
            if (!valid) want = MLK_ERR_ARG;
            else if (pos + n > len) want = MLK_ERR_SHAPE;
            else {
                for (int b = pos / e.bs; b <= (pos + n - 1) / e.bs; b++) shared += mm_shared(&m, &e, s, b);
                if (shared > free_blocks) want = MLK_ERR_CAPACITY;
            }
            if (want == MLK_OK) {
                for (int b = pos / e.bs; b <= (pos + n - 1) / e.bs; b++) mm_touch(&m, &e, s, b);
                for (int i = 0; i < n; i++) {
                    memcpy(mm_val(&m, &e, s, l, pos + i), in_k + (size_t)i * e.row, sizeof(float) * (size_t)e.row);
                    memcpy(mm_val(&m, &e, s, l, pos + i) + e.row, in_v + (size_t)i * e.row, sizeof(float) * (size_t)e.row);
                    *mm_written(&m, &e, s, l, pos + i) = 1;
                }
            }
        } else if (op == 6) { /* truncate */
            int len = valid ? mlkt_int(m.len[s] + 1) : 0;
            got = mlk_kv_truncate(c, s, len);
            want = valid ? MLK_OK : MLK_ERR_ARG;
            if (want == MLK_OK) m.len[s] = len;
        } else if (op == 7) { /* compact */
            int len = valid ? m.len[s] : 0, start = mlkt_int(len + 1), keep[MM_MAXLEN], n_keep = 0;
            int copies = 0, last = -1;
            for (int i = 0; i < len - start; i++)
                if (mlkt_int(3) == 0) keep[n_keep++] = i;
            got = mlk_kv_compact(c, s, start, n_keep, keep);
            if (!valid) want = MLK_ERR_ARG;
            else {
                for (int i = 0; i < n_keep; i++) {
                    int b = (start + i) / e.bs;
                    if (keep[i] == i || b == last) continue;
                    copies += mm_shared(&m, &e, s, b);
                    last = b;
                }
                if (copies > free_blocks) want = MLK_ERR_CAPACITY;
            }
            if (want == MLK_OK) {
                for (int i = 0; i < n_keep; i++) {
                    if (keep[i] == i) continue;
                    mm_touch(&m, &e, s, (start + i) / e.bs);
                    for (int l = 0; l < e.layers; l++) {
                        memcpy(mm_val(&m, &e, s, l, start + i), mm_val(&m, &e, s, l, start + keep[i]), sizeof(float) * 2 * (size_t)e.row);
                        *mm_written(&m, &e, s, l, start + i) = *mm_written(&m, &e, s, l, start + keep[i]);
                    }
                }
                m.len[s] = start + n_keep;
            }
        } else { /* free */
            got = mlk_kv_seq_free(c, s);
            want = valid ? MLK_OK : MLK_ERR_ARG;
            if (valid) m.len[s] = -1;
        }
        if (got != want) {
            fails++;
            CHECKF(got == want, "%s step %d op %d seq %d: status %d, model says %d", type_name[type], step, op, s, got, want);
        }
        if (!mm_verify(&m, &e, c, kbuf, vbuf)) {
            fails++;
            CHECKF(0, "%s step %d op %d seq %d: cache differs from the model", type_name[type], step, op, s);
        }
    }
    CHECKF(fails == 0, "%s: %d steps agree with the model", type_name[type], step);
    for (int s = 0; s < MM_SEQS; s++)
        if (m.len[s] >= 0) CHECK_INT(mlk_kv_seq_free(c, s), MLK_OK);
    CHECK_INT(blocks_used(c), 0);
    mlk_kv_destroy(c);
    free(m.val); free(m.written); free(kbuf); free(vbuf); free(in_k); free(in_v);
}

/* mlk_kv_prepare_compact: a bookkeeping cache with its rows in a plain
   byte pool, the copies and moves applied as reported, against
   mlk_kv_compact on a cache with storage (and prepare_compact on one too):
   the same lengths and the same row bytes, a fork's shared blocks copied;
   bad arguments change nothing. */
static unsigned char *pc_row(unsigned char *pool, const mlk_kv_layout *lay, int64_t slot, int layer, int kv, int h)
{
    return pool + (size_t)(slot / lay->block_size) * lay->block_bytes + (size_t)layer * lay->layer_stride +
           (size_t)kv * lay->kv_stride + (size_t)h * lay->head_stride + (size_t)(slot % lay->block_size) * lay->row_bytes;
}

/* Row bytes of seq in cache c (pool: its layout's, or the outside one) equal ref's. */
static int pc_same_rows(const mlk_kv_cache *c, int seq, unsigned char *pool, const mlk_kv_cache *ref, int ref_seq)
{
    mlk_kv_layout lc, lr;
    int bc[32], br[32], len = mlk_kv_seq_len(c, seq);
    if (len != mlk_kv_seq_len(ref, ref_seq) || mlk_kv_get_layout(c, &lc) != MLK_OK || mlk_kv_get_layout(ref, &lr) != MLK_OK)
        return 0;
    if (mlk_kv_seq_blocks(c, seq, bc, 32) > 32 || mlk_kv_seq_blocks(ref, ref_seq, br, 32) > 32) return 0;
    for (int p = 0; p < len; p++)
        for (int l = 0; l < lc.layers; l++)
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < lc.kv_heads; h++) {
                    int64_t sc = (int64_t)bc[p / lc.block_size] * lc.block_size + p % lc.block_size;
                    int64_t sr = (int64_t)br[p / lr.block_size] * lr.block_size + p % lr.block_size;
                    if (memcmp(pc_row(pool ? pool : (unsigned char *)lc.pool, &lc, sc, l, kv, h),
                               pc_row((unsigned char *)lr.pool, &lr, sr, l, kv, h), lc.row_bytes) != 0)
                        return 0;
                }
    return 1;
}

static void test_prepare_compact(void)
{
    const int layers = 2, hkv = 2, d = 5, bs = 4, len = 14, row = hkv * d;
    mlk_kv_config cfg = make_cfg(MLK_KV_F32, layers, hkv, d, bs, 16, 3);
    mlk_kv_cache *ref = NULL, *rep = NULL, *book = NULL;
    mlk_kv_layout lay;
    int s[3], f[3], copies[8], n_copies = -1, n_moves = -1, made = -1, blocks[8];
    int keep[5] = {1, 2, 5, 6, 7}, bad_keep[2] = {3, 3};
    int64_t moves[16];
    float *k = mlkt_floats((size_t)len * row), *v = mlkt_floats((size_t)len * row);
    unsigned char *pool;
    mlk_kv_cache *with_rows[2];
    CHECK_INT(mlk_kv_create(&cfg, &ref), MLK_OK);
    CHECK_INT(mlk_kv_create(&cfg, &rep), MLK_OK);
    CHECK_INT(mlk_kv_create_bookkeeping(&cfg, &book), MLK_OK);
    CHECK_INT(mlk_kv_get_layout(book, &lay), MLK_OK);
    pool = (unsigned char *)calloc((size_t)lay.num_blocks, lay.block_bytes);
    with_rows[0] = ref;
    with_rows[1] = rep;
    for (int i = 0; i < 2; i++) {
        CHECK_INT(mlk_kv_seq_new(with_rows[i], &s[i]), MLK_OK);
        CHECK_INT(mlk_kv_append(with_rows[i], s[i], len), MLK_OK);
    }
    CHECK_INT(mlk_kv_seq_new(book, &s[2]), MLK_OK);
    CHECK_INT(mlk_kv_append(book, s[2], len), MLK_OK);
    CHECK_INT(mlk_kv_seq_blocks(book, s[2], blocks, 8), 4);
    for (int l = 0; l < layers; l++) { /* the same rows into all three */
        mlkt_fill_normal(k, (size_t)len * row, 1.0);
        mlkt_fill_normal(v, (size_t)len * row, 1.0);
        for (int i = 0; i < 2; i++) CHECK_INT(mlk_kv_store(with_rows[i], s[i], l, 0, len, k, v), MLK_OK);
        for (int p = 0; p < len; p++)
            for (int h = 0; h < hkv; h++) {
                int64_t slot = (int64_t)blocks[p / bs] * bs + p % bs;
                memcpy(pc_row(pool, &lay, slot, l, 0, h), k + ((size_t)p * hkv + h) * d, sizeof(float) * d);
                memcpy(pc_row(pool, &lay, slot, l, 1, h), v + ((size_t)p * hkv + h) * d, sizeof(float) * d);
            }
    }
    CHECK(pc_same_rows(book, s[2], pool, ref, s[0]));
    /* forks keep the old rows and share every block */
    CHECK_INT(mlk_kv_seq_fork(ref, s[0], &f[0]), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(rep, s[1], &f[1]), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(book, s[2], &f[2]), MLK_OK);
    /* bad arguments: status, nothing changed */
    {
        int used = blocks_used(book);
        CHECK_INT(mlk_kv_prepare_compact(NULL, s[2], 2, 5, keep, copies, 4, &n_copies, moves, &n_moves), MLK_ERR_NULL);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, NULL, copies, 4, &n_copies, moves, &n_moves), MLK_ERR_NULL);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, keep, copies, 4, &n_copies, NULL, &n_moves), MLK_ERR_NULL);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, keep, NULL, 4, &n_copies, moves, &n_moves), MLK_ERR_NULL);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, keep, copies, 4, NULL, moves, &n_moves), MLK_ERR_NULL);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, keep, copies, 4, &n_copies, moves, NULL), MLK_ERR_NULL);
        CHECK_INT(mlk_kv_prepare_compact(book, 2, 2, 5, keep, copies, 4, &n_copies, moves, &n_moves), MLK_ERR_ARG);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, keep, copies, -1, &n_copies, moves, &n_moves), MLK_ERR_ARG);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], len + 1, 0, keep, copies, 4, &n_copies, moves, &n_moves),
                  MLK_ERR_SHAPE);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 2, bad_keep, copies, 4, &n_copies, moves, &n_moves), MLK_ERR_ARG);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 10, 5, keep, copies, 4, &n_copies, moves, &n_moves), MLK_ERR_ARG);
        CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, keep, copies, 1, &n_copies, moves, &n_moves), MLK_ERR_CAPACITY);
        CHECK(n_copies == -1 && n_moves == -1 && blocks_used(book) == used && mlk_kv_seq_len(book, s[2]) == len);
        CHECK(pc_same_rows(book, s[2], pool, ref, s[0]));
    }
    /* positions 2 + keep[i] -> 2 + i: blocks 0 and 1 rewritten (shared, so copied), block 2 read only */
    CHECK_INT(mlk_kv_compact(ref, s[0], 2, 5, keep), MLK_OK);
    CHECK_INT(mlk_kv_prepare_compact(rep, s[1], 2, 5, keep, copies, 4, &made, moves, &n_moves), MLK_OK);
    CHECK_INT(mlk_kv_prepare_compact(book, s[2], 2, 5, keep, copies, 4, &n_copies, moves, &n_moves), MLK_OK);
    CHECK_INT(n_copies, 2);
    CHECK_INT(made, 2);
    CHECK_INT(n_moves, 5); /* keep[i] != i for every i */
    for (int i = 0; i < n_copies; i++)
        memcpy(pool + (size_t)copies[2 * i + 1] * lay.block_bytes, pool + (size_t)copies[2 * i] * lay.block_bytes,
               lay.block_bytes);
    for (int i = 0; i < n_moves; i++)
        for (int l = 0; l < layers; l++)
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < hkv; h++)
                    memcpy(pc_row(pool, &lay, moves[2 * i + 1], l, kv, h), pc_row(pool, &lay, moves[2 * i], l, kv, h),
                           lay.row_bytes);
    CHECK_INT(mlk_kv_seq_len(book, s[2]), 7);
    CHECK(pc_same_rows(book, s[2], pool, ref, s[0]));
    CHECK(pc_same_rows(rep, s[1], NULL, ref, s[0]));
    CHECK(pc_same_rows(book, f[2], pool, ref, f[0])); /* the forks still read the old rows */
    CHECK_INT(blocks_used(book), blocks_used(ref));
    /* nothing kept, and keeping rows in place: no copies, no moves */
    CHECK_INT(mlk_kv_prepare_compact(book, s[2], 7, 0, NULL, NULL, 0, &n_copies, NULL, &n_moves), MLK_OK);
    CHECK(n_copies == 0 && n_moves == 0 && mlk_kv_seq_len(book, s[2]) == 7);
    {
        int same[3] = {0, 1, 2};
        CHECK_INT(mlk_kv_prepare_compact(book, f[2], 0, 3, same, NULL, 0, &n_copies, moves, &n_moves), MLK_OK);
        CHECK(n_copies == 0 && n_moves == 0 && mlk_kv_seq_len(book, f[2]) == 3);
    }
    free(pool);
    mlkt_free(k);
    mlkt_free(v);
    mlk_kv_destroy(ref);
    mlk_kv_destroy(rep);
    mlk_kv_destroy(book);
}

static void test_model_random(void)
{
    int runs = mlkt_quick() ? 3 : 8;
    for (int r = 0; r < runs; r++)
        for (int t = 0; t < 4; t++) mm_run((mlk_kv_type)t, 1500);
}

/* ---- attention over the cache ---- */

/* Float32 naive attention of one sequence (the error yardstick): float
   dot products, expf, float sums; visibility from mask_vis. */
static int tree_sees(const int *parent, int i, int t)
{
    while (i > t) i = parent[i];
    return i == t;
}

static void naive_f32(int nq, int len, int heads, int hkv, int d, float scale, const int *parent,
                      const float *q, const float *k, const float *v, float *o, float *s)
{
    int group = heads / hkv, off = len - nq;
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < heads; h++) {
            const float *qr = q + ((size_t)i * heads + h) * d;
            float m = -INFINITY, l = 0;
            for (int j = 0; j < len; j++) {
                const float *kr = k + ((size_t)j * hkv + h / group) * d;
                float dot = 0;
                int vis = parent ? (j < off || tree_sees(parent, i, j - off)) : j <= i + off;
                for (int e = 0; e < d; e++) dot += qr[e] * kr[e];
                s[j] = vis ? dot * scale : -INFINITY;
                m = s[j] > m ? s[j] : m;
            }
            for (int e = 0; e < d; e++) o[((size_t)i * heads + h) * d + e] = 0;
            for (int j = 0; j < len; j++) {
                float p = s[j] == -INFINITY ? 0.0f : expf(s[j] - m);
                l += p;
                for (int e = 0; e < d; e++) o[((size_t)i * heads + h) * d + e] += p * v[((size_t)j * hkv + h / group) * d + e];
            }
            for (int e = 0; e < d; e++) o[((size_t)i * heads + h) * d + e] /= l;
        }
}

typedef struct attn_err { double kernel, naive; } attn_err;

/* Compares o (one sequence's rows) with mlk_attn_naive on the keys and
   values mlk_kv_load gathers, and the float32 naive error; accumulates the
   max errors into *err. */
static void attn_vs_ref(const mlk_kv_cache *c, int layer, int seq, int nq, int heads, int hkv, int d, float scale,
                        const int *parent, const float *q, const float *o, attn_err *err)
{
    int len = mlk_kv_seq_len(c, seq);
    size_t nrow = (size_t)nq * heads * d, nkv = (size_t)len * hkv * d;
    float *k = (float *)malloc(nkv * sizeof(float)), *v = (float *)malloc(nkv * sizeof(float));
    float *ref = (float *)malloc(nrow * sizeof(float)), *f32 = (float *)malloc(nrow * sizeof(float));
    float *s = (float *)malloc((size_t)len * sizeof(float));
    mlk_attn_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.batch = 1;
    desc.heads = heads;
    desc.kv_heads = hkv;
    desc.len_q = nq;
    desc.len_kv = len;
    desc.head_dim = d;
    desc.scale = scale;
    desc.causal = 1;
    desc.tree_parent = parent;
    desc.layout = MLK_BNHD;
    CHECK_INT(mlk_kv_load(c, seq, layer, 0, len, k, v), MLK_OK);
    CHECK_INT(mlk_attn_naive(&desc, q, k, v, ref, NULL), MLK_OK);
    naive_f32(nq, len, heads, hkv, d, scale != 0 ? scale : 1.0f / sqrtf((float)d), parent, q, k, v, f32, s);
    for (size_t i = 0; i < nrow; i++) {
        double e = fabs((double)o[i] - ref[i]), en = fabs((double)f32[i] - ref[i]);
        if (!(e <= err->kernel)) err->kernel = e != e ? INFINITY : e;
        if (en > err->naive) err->naive = en;
    }
    free(k); free(v); free(ref); free(f32); free(s);
}

/* Allocates, appends and fills `len` positions of a new sequence in every layer. */
static int fill_seq(mlk_kv_cache *c, int layers, int hkv, int d, int len)
{
    int seq = -1;
    size_t count = (size_t)len * (size_t)hkv * (size_t)d;
    float *k = (float *)malloc(count * sizeof(float)), *v = (float *)malloc(count * sizeof(float));
    CHECK_INT(mlk_kv_seq_new(c, &seq), MLK_OK);
    CHECK_INT(mlk_kv_append(c, seq, len), MLK_OK);
    for (int l = 0; l < layers; l++) {
        mlkt_fill_normal(k, count, 1.0);
        mlkt_fill_normal(v, count, 1.0);
        CHECK_INT(mlk_kv_store(c, seq, l, 0, len, k, v), MLK_OK);
    }
    free(k);
    free(v);
    return seq;
}

/* mlkt.h's tolerance rule; the floor is absolute (outputs are O(1)) */
static int check_err(const attn_err *e, const char *what)
{
    CHECK_NAIVE(e->kernel, e->naive, 2e-6, "%s", what);
    return mlkt_within_naive(e->kernel, e->naive, 2e-6);
}

/* Decode batches: n_seqs sequences of random lengths, n_q = 1 (some 3). */
static void test_attn_decode(void)
{
    static const int block_sizes[3] = {1, 16, 256};
    static const int batches[3] = {1, 5, 16};
    int hkv = 2, heads = 8, d = 64, layers = 2;
    for (int t = 0; t < 4; t++)
        for (int bi = 0; bi < 3; bi++)
            for (int ni = 0; ni < 3; ni++) {
                int bs = block_sizes[bi], n_seqs = batches[ni], lens[16], seqs[16], nq[16], total_q = 0, nblocks = 0;
                int max_len = mlkt_quick() ? 300 : 1000;
                char what[96];
                float *q, *o;
                attn_err err = {0, 0};
                mlk_kv_cache *c;
                for (int s = 0; s < n_seqs; s++) {
                    lens[s] = s == 0 ? max_len : s == 1 ? 1 : 1 + mlkt_int(max_len);
                    nq[s] = (s % 4 == 3 && lens[s] >= 3) ? 3 : 1;
                    total_q += nq[s];
                    nblocks += (lens[s] + bs - 1) / bs;
                }
                c = make_cache((mlk_kv_type)t, layers, hkv, d, bs, nblocks, 16);
                for (int s = 0; s < n_seqs; s++) seqs[s] = fill_seq(c, layers, hkv, d, lens[s]);
                if (n_seqs > 2) { /* the batch lists sequences in any order */
                    int tmp = seqs[0]; seqs[0] = seqs[2]; seqs[2] = tmp;
                    tmp = lens[0]; lens[0] = lens[2]; lens[2] = tmp;
                    tmp = nq[0]; nq[0] = nq[2]; nq[2] = tmp;
                }
                q = mlkt_floats((size_t)total_q * heads * d);
                o = mlkt_floats((size_t)total_q * heads * d);
                mlkt_fill_normal(q, (size_t)total_q * heads * d, 1.0);
                CHECK_INT(mlk_kv_attn(c, 1, n_seqs, seqs, nq, q, heads, 0.0f, NULL, o), MLK_OK);
                for (int s = 0, at = 0; s < n_seqs; at += nq[s] * heads * d, s++)
                    attn_vs_ref(c, 1, seqs[s], nq[s], heads, hkv, d, 0.0f, NULL, q + at, o + at, &err);
                snprintf(what, sizeof what, "decode %s bs=%d seqs=%d", type_name[t], bs, n_seqs);
                check_err(&err, what);
                mlkt_digest(o, sizeof(float) * (size_t)total_q * heads * d);
                mlkt_free(q);
                mlkt_free(o);
                mlk_kv_destroy(c);
            }
}

/* The decode path reads cache rows in place, 16 columns at a time, in
   groups of 4 query rows: head dims with a tail of 8 or of single columns,
   and GQA groups of 1, 3 and 5 rows (short groups repeat a row), for every
   storage type; odd lengths leave a key pair half full. */
static void test_attn_decode_shapes(void)
{
    static const int dims[4] = {8, 24, 40, 137};
    static const int groups[3] = {1, 3, 5};
    for (int t = 0; t < 4; t++)
        for (int di = 0; di < 4; di++)
            for (int gi = 0; gi < 3; gi++) {
                int hkv = 2, heads = hkv * groups[gi], d = dims[di], bs = 3 + 13 * (gi % 2), seqs[3], nq[3] = {1, 1, 1};
                int lens[3], nblocks = 0;
                size_t total = (size_t)3 * heads * d;
                float *q = mlkt_floats(total), *o = mlkt_floats(total);
                attn_err err = {0, 0};
                mlk_kv_cache *c;
                char what[64];
                lens[0] = 1;
                lens[1] = 2 + 2 * mlkt_int(100);
                lens[2] = 129 + 2 * mlkt_int(150);
                for (int s = 0; s < 3; s++) nblocks += (lens[s] + bs - 1) / bs;
                c = make_cache((mlk_kv_type)t, 1, hkv, d, bs, nblocks, 3);
                for (int s = 0; s < 3; s++) seqs[s] = fill_seq(c, 1, hkv, d, lens[s]);
                mlkt_fill_normal(q, total, 1.0);
                CHECK_INT(mlk_kv_attn(c, 0, 3, seqs, nq, q, heads, 0.0f, NULL, o), MLK_OK);
                for (int s = 0; s < 3; s++)
                    attn_vs_ref(c, 0, seqs[s], 1, heads, hkv, d, 0.0f, NULL, q + (size_t)s * heads * d,
                                o + (size_t)s * heads * d, &err);
                snprintf(what, sizeof what, "decode %s d %d group %d", type_name[t], d, groups[gi]);
                check_err(&err, what);
                CHECK_GUARD(o);
                mlkt_digest(o, total * sizeof(float));
                mlkt_free(q);
                mlkt_free(o);
                mlk_kv_destroy(c);
            }
}

/* Chunked prefill (chunks of 1, 7, 64) against the reference and against
   one full prefill; two sequences advance together in each call. */
static void test_attn_chunked(void)
{
    static const int chunks[3] = {1, 7, 64};
    int hkv = 2, heads = 4, d = 40, len = mlkt_quick() ? 90 : 200, row = hkv * d, qrow = heads * d;
    for (int t = 0; t < 4; t++)
        for (int ci = 0; ci < 3; ci++) {
            mlk_kv_cache *c = make_cache((mlk_kv_type)t, 1, hkv, d, 16, 4 * ((len + 15) / 16), 4);
            float *k = mlkt_floats((size_t)2 * len * row), *v = mlkt_floats((size_t)2 * len * row);
            float *q = mlkt_floats((size_t)2 * len * qrow), *full = mlkt_floats((size_t)2 * len * qrow);
            float *chunked = mlkt_floats((size_t)2 * len * qrow), *qbuf = mlkt_floats((size_t)2 * len * qrow);
            float *obuf = mlkt_floats((size_t)2 * len * qrow);
            int seq_full[2], seq_chunk[2], nq2[2] = {len, len};
            double max_diff = 0;
            attn_err err = {0, 0}, err_chunked = {0, 0};
            char what[64];
            mlkt_fill_normal(q, (size_t)2 * len * qrow, 1.0);
            mlkt_fill_normal(k, (size_t)2 * len * row, 1.0);
            mlkt_fill_normal(v, (size_t)2 * len * row, 1.0);
            for (int s = 0; s < 2; s++) {
                CHECK_INT(mlk_kv_seq_new(c, &seq_full[s]), MLK_OK);
                CHECK_INT(mlk_kv_seq_new(c, &seq_chunk[s]), MLK_OK);
                CHECK_INT(mlk_kv_append(c, seq_full[s], len), MLK_OK);
                CHECK_INT(mlk_kv_store(c, seq_full[s], 0, 0, len, k + (size_t)s * len * row, v + (size_t)s * len * row), MLK_OK);
            }
            CHECK_INT(mlk_kv_attn(c, 0, 2, seq_full, nq2, q, heads, 0.0f, NULL, full), MLK_OK);
            for (int s = 0; s < 2; s++)
                attn_vs_ref(c, 0, seq_full[s], len, heads, hkv, d, 0.0f, NULL, q + (size_t)s * len * qrow,
                            full + (size_t)s * len * qrow, &err);
            /* the chunked sequences grow chunk by chunk: append, store, attend */
            for (int p = 0; p < len; p += chunks[ci]) {
                int n = len - p < chunks[ci] ? len - p : chunks[ci], nq[2];
                nq[0] = nq[1] = n;
                for (int s = 0; s < 2; s++) {
                    size_t at = ((size_t)s * len + p) * row;
                    CHECK_INT(mlk_kv_append(c, seq_chunk[s], n), MLK_OK);
                    CHECK_INT(mlk_kv_store(c, seq_chunk[s], 0, p, n, k + at, v + at), MLK_OK);
                    memcpy(qbuf + (size_t)s * n * qrow, q + ((size_t)s * len + p) * qrow, sizeof(float) * (size_t)n * qrow);
                }
                CHECK_INT(mlk_kv_attn(c, 0, 2, seq_chunk, nq, qbuf, heads, 0.0f, NULL, obuf), MLK_OK);
                for (int s = 0; s < 2; s++)
                    memcpy(chunked + ((size_t)s * len + p) * qrow, obuf + (size_t)s * n * qrow, sizeof(float) * (size_t)n * qrow);
            }
            for (size_t i = 0; i < (size_t)2 * len * qrow; i++) {
                double diff = fabs((double)full[i] - chunked[i]);
                max_diff = diff > max_diff || diff != diff ? diff : max_diff;
            }
            snprintf(what, sizeof what, "prefill %s", type_name[t]);
            check_err(&err, what);
            for (int s = 0; s < 2; s++)
                attn_vs_ref(c, 0, seq_chunk[s], len, heads, hkv, d, 0.0f, NULL, q + (size_t)s * len * qrow,
                            chunked + (size_t)s * len * qrow, &err_chunked);
            snprintf(what, sizeof what, "chunked prefill %s chunk %d", type_name[t], chunks[ci]);
            check_err(&err_chunked, what);
            /* chunks that are whole task chunks (64 / group queries) see the
               same key tiles as the full prefill: bitwise equal */
            if (chunks[ci] % (64 / (heads / hkv)) == 0)
                CHECKF(max_diff == 0, "%s chunk %d: max |chunked - full| = %.3g", type_name[t], chunks[ci], max_diff);
            mlkt_digest(chunked, sizeof(float) * (size_t)2 * len * qrow);
            mlkt_free(k); mlkt_free(v); mlkt_free(q); mlkt_free(full); mlkt_free(chunked); mlkt_free(qbuf); mlkt_free(obuf);
            mlk_kv_destroy(c);
        }
}

/* GQA group sizes 1..72 (72: one query position per task), odd head dims,
   an explicit scale, and n_q = len (a whole prompt at once). */
static void test_attn_gqa(void)
{
    static const int groups[5] = {1, 2, 4, 8, 72};
    static const int dims[4] = {1, 33, 64, 128};
    for (int gi = 0; gi < 5; gi++)
        for (int di = 0; di < 4; di++) {
            int hkv = groups[gi] == 72 ? 1 : 2, heads = hkv * groups[gi], d = dims[di];
            int t = (gi + di) % 4, len = 37 + mlkt_int(60), seqs[2], nq[2];
            float scale = di % 2 ? 0.0f : 0.3f;
            mlk_kv_cache *c = make_cache((mlk_kv_type)t, 1, hkv, d, 8, 2 * ((len + 7) / 8), 2);
            size_t total;
            float *q, *o;
            attn_err err = {0, 0};
            char what[64];
            seqs[0] = fill_seq(c, 1, hkv, d, len);
            seqs[1] = fill_seq(c, 1, hkv, d, len / 2);
            nq[0] = 1 + mlkt_int(9);
            nq[1] = len / 2;
            total = (size_t)(nq[0] + nq[1]) * heads * d;
            q = mlkt_floats(total);
            o = mlkt_floats(total);
            mlkt_fill_normal(q, total, 1.0);
            CHECK_INT(mlk_kv_attn(c, 0, 2, seqs, nq, q, heads, scale, NULL, o), MLK_OK);
            attn_vs_ref(c, 0, seqs[0], nq[0], heads, hkv, d, scale, NULL, q, o, &err);
            attn_vs_ref(c, 0, seqs[1], nq[1], heads, hkv, d, scale, NULL, q + (size_t)nq[0] * heads * d,
                        o + (size_t)nq[0] * heads * d, &err);
            snprintf(what, sizeof what, "gqa %s group %d d %d", type_name[t], groups[gi], d);
            check_err(&err, what);
            CHECK_GUARD(o);
            mlkt_digest(o, total * sizeof(float));
            mlkt_free(q);
            mlkt_free(o);
            mlk_kv_destroy(c);
        }
}

/* Tree-masked verification: the last n positions are draft tree nodes. */
static void test_attn_tree(void)
{
    for (int trial = 0; trial < 24; trial++) {
        int hkv = 2, heads = 2 * (1 + trial % 3), d = 32 + trial % 5, n = 1 + mlkt_int(40);
        int prefix = trial % 6 == 0 ? 0 : mlkt_int(300), len = prefix + n, t = trial % 4, seq, parent[40];
        mlk_kv_cache *c = make_cache((mlk_kv_type)t, 2, hkv, d, 1 + trial % 17, len, 1);
        float *q = mlkt_floats((size_t)n * heads * d), *o = mlkt_floats((size_t)n * heads * d);
        attn_err err = {0, 0};
        char what[64];
        for (int i = 0; i < n; i++) /* chains, bushes and forests */
            parent[i] = i == 0 || mlkt_int(5) == 0 ? -1 : (trial % 2 ? i - 1 - mlkt_int(i < 3 ? i : 3) : mlkt_int(i));
        seq = fill_seq(c, 2, hkv, d, len);
        mlkt_fill_normal(q, (size_t)n * heads * d, 1.0);
        CHECK_INT(mlk_kv_attn(c, 1, 1, &seq, &n, q, heads, 0.0f, parent, o), MLK_OK);
        attn_vs_ref(c, 1, seq, n, heads, hkv, d, 0.0f, parent, q, o, &err);
        snprintf(what, sizeof what, "tree %s n=%d prefix=%d", type_name[t], n, prefix);
        check_err(&err, what);
        mlkt_digest(o, sizeof(float) * (size_t)n * heads * d);
        mlkt_free(q);
        mlkt_free(o);
        mlk_kv_destroy(c);
    }
}

static void test_attn_validation(void)
{
    int hkv = 2, heads = 4, d = 8, len = 5, seq[2], nq[2] = {1, 2}, gone = -1, bad_parent[2] = {-1, 1};
    int parent_ok[2] = {-1, 0}, parent_neg[2] = {-1, -2};
    mlk_kv_cache *c = make_cache(MLK_KV_F16, 2, hkv, d, 4, 8, 4);
    float *q = mlkt_floats(3 * (size_t)heads * d), *o = mlkt_floats(3 * (size_t)heads * d);
    float *before = mlkt_floats(3 * (size_t)heads * d);
    seq[0] = fill_seq(c, 2, hkv, d, len);
    seq[1] = fill_seq(c, 2, hkv, d, len);
    gone = fill_seq(c, 2, hkv, d, 1);
    CHECK_INT(mlk_kv_seq_free(c, gone), MLK_OK);
    mlkt_fill_normal(q, 3 * (size_t)heads * d, 1.0);
    memcpy(before, o, sizeof(float) * 3 * (size_t)heads * d);
    CHECK_INT(mlk_kv_attn(NULL, 0, 2, seq, nq, q, heads, 0, NULL, o), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_attn(c, 0, 2, NULL, nq, q, heads, 0, NULL, o), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, NULL, q, heads, 0, NULL, o), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, nq, NULL, heads, 0, NULL, o), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, nq, q, heads, 0, NULL, NULL), MLK_ERR_NULL);
    CHECK_INT(mlk_kv_attn(c, 2, 2, seq, nq, q, heads, 0, NULL, o), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_attn(c, -1, 2, seq, nq, q, heads, 0, NULL, o), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_attn(c, 0, 0, seq, nq, q, heads, 0, NULL, o), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_attn(c, 0, -1, seq, nq, q, heads, 0, NULL, o), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, nq, q, 0, 0, NULL, o), MLK_ERR_SHAPE);
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, nq, q, 3, 0, NULL, o), MLK_ERR_SHAPE);  /* not a multiple of kv_heads */
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, nq, q, heads, NAN, NULL, o), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, nq, q, heads, INFINITY, NULL, o), MLK_ERR_ARG);
    CHECK_INT(mlk_kv_attn(c, 0, 2, seq, nq, q, heads, 0, parent_ok, o), MLK_ERR_ARG); /* tree: one sequence */
    CHECK_INT(mlk_kv_attn(c, 0, 1, seq + 1, nq + 1, q, heads, 0, bad_parent, o), MLK_ERR_TREE);
    CHECK_INT(mlk_kv_attn(c, 0, 1, seq + 1, nq + 1, q, heads, 0, parent_neg, o), MLK_ERR_TREE);
    {
        int ids[2] = {seq[0], gone}, ids2[2] = {seq[0], 17}, big[2] = {1, len + 1}, zero[2] = {1, 0};
        CHECK_INT(mlk_kv_attn(c, 0, 2, ids, nq, q, heads, 0, NULL, o), MLK_ERR_ARG);
        CHECK_INT(mlk_kv_attn(c, 0, 2, ids2, nq, q, heads, 0, NULL, o), MLK_ERR_ARG);
        CHECK_INT(mlk_kv_attn(c, 0, 2, seq, big, q, heads, 0, NULL, o), MLK_ERR_SHAPE);
        CHECK_INT(mlk_kv_attn(c, 0, 2, seq, zero, q, heads, 0, NULL, o), MLK_ERR_SHAPE);
    }
    CHECK(mlkt_same(before, o, sizeof(float) * 3 * (size_t)heads * d));
    /* the same sequence listed twice is fine; results match per copy */
    {
        int twice[2] = {seq[0], seq[0]}, one[2] = {1, 1};
        memcpy(q + (size_t)heads * d, q, sizeof(float) * (size_t)heads * d);
        CHECK_INT(mlk_kv_attn(c, 1, 2, twice, one, q, heads, 0, NULL, o), MLK_OK);
        CHECK(mlkt_same(o, o + (size_t)heads * d, sizeof(float) * (size_t)heads * d));
        mlkt_digest(o, sizeof(float) * 2 * (size_t)heads * d);
    }
    mlkt_free(q); mlkt_free(o); mlkt_free(before);
    mlk_kv_destroy(c);
}

/* Allocation failures: MLK_ERR_NOMEM and nothing changed, at every
   allocation each call makes. */
static void test_nomem(void)
{
    mlk_kv_config cfg = make_cfg(MLK_KV_Q4, 1, 2, 8, 2, 64, 3);
    mlk_kv_cache *c = NULL, *sentinel = (mlk_kv_cache *)&cfg;
    int seq = -1, fork = -1, nq = 1, heads = 2;
    float *k = mlkt_floats(40 * 16), *v = mlkt_floats(40 * 16), *o = mlkt_floats(2 * 8), *q = mlkt_floats(2 * 8);
    mlk_status st = MLK_ERR_NOMEM;
    mlkt_fill_normal(k, 40 * 16, 1.0);
    mlkt_fill_normal(v, 40 * 16, 1.0);
    mlkt_fill_normal(q, 16, 1.0);
    for (int budget = 0; st == MLK_ERR_NOMEM; budget++) {
        c = sentinel;
        alloc_budget = budget;
        st = mlk_kv_create(&cfg, &c);
        alloc_budget = -1;
        if (st == MLK_ERR_NOMEM) CHECK(c == sentinel);
    }
    CHECK_INT(st, MLK_OK);
    CHECK_INT(mlk_kv_seq_new(c, &seq), MLK_OK);
    alloc_budget = 0; /* the block table must grow */
    CHECK_INT(mlk_kv_append(c, seq, 40), MLK_ERR_NOMEM);
    alloc_budget = -1;
    CHECK_INT(mlk_kv_seq_len(c, seq), 0);
    CHECK_INT(blocks_used(c), 0);
    CHECK_INT(mlk_kv_append(c, seq, 40), MLK_OK);
    alloc_budget = 0; /* store, load and truncate never allocate */
    CHECK_INT(mlk_kv_store(c, seq, 0, 0, 40, k, v), MLK_OK);
    CHECK_INT(mlk_kv_load(c, seq, 0, 0, 40, k, v), MLK_OK);
    CHECK_INT(mlk_kv_truncate(c, seq, 40), MLK_OK);
    alloc_budget = -1;
    fork = seq;
    alloc_budget = 0;
    CHECK_INT(mlk_kv_seq_fork(c, seq, &fork), MLK_ERR_NOMEM);
    CHECK_INT(fork, seq);
    CHECK_INT(mlk_kv_attn(c, 0, 1, &seq, &nq, q, heads, 0, NULL, o), MLK_ERR_NOMEM);
    alloc_budget = -1;
    CHECK_GUARD(o);
    CHECK(o[0] != o[0] && o[15] != o[15]); /* still the NaN fill */
    CHECK_INT(blocks_used(c), 20);
    { mlk_kv_stats stats; memset(&stats, 0, sizeof stats); CHECK_INT(mlk_kv_get_stats(c, &stats), MLK_OK); CHECK_INT(stats.seqs, 1); }
    mlk_kv_destroy(c);
    mlkt_free(k); mlkt_free(v); mlkt_free(o); mlkt_free(q);
}

int main(void)
{
    mlkt_file = "test_kv";
    MLKT_RUN(test_create_validation, 1);
    MLKT_RUN(test_bytes_per_token, 2);
    MLKT_RUN(test_roundtrip_f32, 3);
    MLKT_RUN(test_roundtrip_f16, 4);
    MLKT_RUN(test_roundtrip_quant, 5);
    MLKT_RUN(test_store_load_validation, 6);
    MLKT_RUN(test_beams_cow, 7);
    MLKT_RUN(test_exhaustion, 8);
    MLKT_RUN(test_truncate_reuse, 9);
    MLKT_RUN(test_compact_tree, 10);
    MLKT_RUN(test_prepare_compact, 19);
    MLKT_RUN(test_model_random, 11);
    MLKT_RUN(test_attn_decode, 12);
    MLKT_RUN(test_attn_decode_shapes, 18);
    MLKT_RUN(test_attn_chunked, 13);
    MLKT_RUN(test_attn_gqa, 14);
    MLKT_RUN(test_attn_tree, 15);
    MLKT_RUN(test_attn_validation, 16);
    MLKT_RUN(test_nomem, 17);
    return mlkt_finish();
}

/* common section: status strings, the overflow-checked size helpers, the
   aligned allocator and arena, and the polynomial exp every softmax uses,
   against libm's exp in double. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"

/* Every code from MLK_OK up to the first value mlk_status_str does not
   know has a distinct, non-empty name (whatever the last code is today),
   and an out-of-range value is "unknown status". */
static void test_status_str(void)
{
    enum { most = 64 };
    const char *names[most];
    int n = 0, i, j;
    while (n < most) {
        const char *name = mlk_status_str((mlk_status)n);
        if (name == NULL || strcmp(name, "unknown status") == 0) break;
        names[n++] = name;
    }
    CHECKF(n >= 10 && n < most, "%d named codes", n); /* MLK_OK .. MLK_ERR_ARG at least */
    CHECK(n > (int)MLK_ERR_ARG);
    for (i = 0; i < n; i++) {
        CHECKF(names[i][0] != '\0', "code %d: empty name", i);
        for (j = 0; j < i; j++) CHECKF(strcmp(names[i], names[j]) != 0, "codes %d and %d: both \"%s\"", j, i, names[i]);
    }
    CHECK(strcmp(mlk_status_str((mlk_status)99), "unknown status") == 0);
}

static void test_sizes(void)
{
    size_t n = 0;
    CHECK(mlk__count4(3, 5, 7, 11, 4, &n) && n == 3u * 5 * 7 * 11);
    CHECK(!mlk__count4(-1, 5, 7, 11, 4, &n));
    CHECK(!mlk__count4(INT_MAX, INT_MAX, INT_MAX, INT_MAX, 4, &n));
    CHECK(!mlk__mul_ok(SIZE_MAX / 2 + 1, 2, &n));
    CHECK(mlk__mul_ok(SIZE_MAX / 2, 2, &n) && n == SIZE_MAX - 1);
}

static void test_arena(void)
{
    unsigned char buf[4 * MLK__ALIGN + MLK__ALIGN];
    mlk__arena a;
    size_t need = mlk__arena_need(mlk__arena_need(0, 3), 100) + MLK__ALIGN;
    void *p, *q, *owned;
    CHECK(mlk__arena_init(&a, buf + 1, need) == MLK_OK); /* unaligned caller buffer */
    p = mlk__arena_take(&a, 3);
    q = mlk__arena_take(&a, 100);
    CHECK((uintptr_t)p % MLK__ALIGN == 0 && (uintptr_t)q % MLK__ALIGN == 0);
    CHECK((unsigned char *)q >= (unsigned char *)p + 3 && (unsigned char *)q + 100 <= buf + sizeof buf);
    mlk__arena_done(&a);
    CHECK(mlk__arena_init(&a, NULL, SIZE_MAX) == MLK_ERR_OVERFLOW);
    owned = mlk__alloc(1000);
    CHECK(owned != NULL && (uintptr_t)owned % MLK__ALIGN == 0);
    mlk__free(owned);
}

/* Worst relative error of the vector exp of this build (its widest path)
   on 24 values x <= 88 (its domain). */
static double vector_exp_error(const float *x, float *got)
{
    double worst = 0;
#if defined(MLK__AVX512)
    _mm512_storeu_ps(got, mlk__exp16(_mm512_loadu_ps(x)));
    _mm256_storeu_ps(got + 16, mlk__exp8(_mm256_loadu_ps(x + 16)));
#elif defined(MLK__AVX2)
    _mm256_storeu_ps(got, mlk__exp8(_mm256_loadu_ps(x)));
    _mm256_storeu_ps(got + 8, mlk__exp8(_mm256_loadu_ps(x + 8)));
    _mm256_storeu_ps(got + 16, mlk__exp8(_mm256_loadu_ps(x + 16)));
#elif defined(MLK__NEON)
    for (int l = 0; l < 24; l += 4) vst1q_f32(got + l, mlk__exp4(vld1q_f32(x + l)));
#else
    for (int l = 0; l < 24; l++) got[l] = mlk__expf(x[l]);
#endif
    for (int l = 0; l < 24; l++) {
        double w = exp((double)x[l]);
        if (x[l] > -87.0f && fabs((double)got[l] - w) / w > worst) worst = fabs((double)got[l] - w) / w;
    }
    return worst;
}

/* Relative error of mlk__expf and the vector exp over the range a softmax
   feeds them (most of it in [-20, 0], where the weights that matter are),
   plus the edges. */
static void test_exp(void)
{
    const int n = 200000;
    double worst = 0, worst_vec = 0;
    float lanes[24], got[24];
    int lanes_apart = 0; /* vector lanes whose bits differ from mlk__expf's */
    for (int i = 0; i < n; i++) {
        float x = (float)(i % 2 ? mlkt_uniform(-87.0, 88.0) : mlkt_uniform(-20.0, 0.0)), got1 = mlk__expf(x);
        double want = exp((double)x), rel = fabs((double)got1 - want) / want;
        if (rel > worst) worst = rel;
        for (int l = 0; l < 24; l++) lanes[l] = x - 0.37f * (float)l;
        rel = vector_exp_error(lanes, got);
        if (rel > worst_vec) worst_vec = rel;
        for (int l = 0; l < 24; l++) {
            const float one = mlk__expf(lanes[l]);
            lanes_apart += lanes[l] > -87.33654f && memcmp(&one, &got[l], sizeof one) != 0;
        }
    }
    CHECKF(worst < 2.5e-7, "mlk__expf: worst relative error %.3g", worst);
    CHECKF(worst_vec < 2.5e-7, "vector exp: worst relative error %.3g", worst_vec);
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    /* a softmax's tail goes through mlk__expf: the same bits as a lane */
    CHECKF(lanes_apart == 0, "mlk__expf and the vector exp differ in %d of %d lanes", lanes_apart, 24 * n);
#else
    (void)lanes_apart;
#endif
    CHECK(mlk__expf(-INFINITY) == 0.0f && mlk__expf(-100.0f) == 0.0f && mlk__expf(0.0f) == 1.0f);
    CHECK(mlk__expf(NAN) != mlk__expf(NAN) && mlk__expf(89.0f) == INFINITY);
    { /* NaN, -inf and anything at or below -87.3 give 0; 0 gives exactly 1 */
        const float edge[8] = {-INFINITY, -100.0f, 0.0f, NAN, -87.4f, -1e30f, -0.0f, -FLT_MAX};
        for (int l = 0; l < 24; l++) lanes[l] = edge[l % 8];
        vector_exp_error(lanes, got);
        for (int l = 0; l < 24; l++) {
            const float want = l % 8 == 2 || l % 8 == 6 ? 1.0f : 0.0f;
#if !defined(MLK__AVX2) && !defined(MLK__NEON)
            if (l % 8 == 3) continue; /* the scalar exp keeps NaN */
#endif
            CHECKF(got[l] == want, "vector exp(%g) = %g, lane %d", lanes[l], got[l], l);
        }
    }
    /* no digest: nothing in this file runs on threads */
}

int main(void)
{
    mlkt_file = "test_common";
    MLKT_RUN(test_status_str, 1);
    MLKT_RUN(test_sizes, 2);
    MLKT_RUN(test_arena, 3);
    MLKT_RUN(test_exp, 4);
    return mlkt_finish();
}

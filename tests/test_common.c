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

/* Relative error of mlk__expf (and mlk__exp8 under AVX2) over the range a
   softmax feeds it, plus the edges: -inf and anything below -87.3 give 0. */
static void test_exp(void)
{
    const int n = 200000;
    double worst = 0;
    float got_all[8];
    for (int i = 0; i < n; i++) {
        float x = (float)mlkt_uniform(-87.0, 88.0), got = mlk__expf(x);
        double want = exp((double)x), rel = fabs((double)got - want) / want;
        if (rel > worst) worst = rel;
#if defined(MLK__AVX2)
        {
            float lanes[8];
            for (int l = 0; l < 8; l++) lanes[l] = x - (float)l;
            _mm256_storeu_ps(got_all, mlk__exp8(_mm256_loadu_ps(lanes)));
            for (int l = 0; l < 8; l++) {
                double w = exp((double)lanes[l]);
                if (lanes[l] > -87.0f && fabs((double)got_all[l] - w) / w > worst)
                    worst = fabs((double)got_all[l] - w) / w;
            }
        }
#endif
    }
    CHECKF(worst < 5e-7, "worst relative error %.3g", worst);
    CHECK(mlk__expf(-INFINITY) == 0.0f && mlk__expf(-100.0f) == 0.0f && mlk__expf(0.0f) == 1.0f);
    CHECK(mlk__expf(NAN) != mlk__expf(NAN));
#if defined(MLK__AVX2)
    _mm256_storeu_ps(got_all, mlk__exp8(_mm256_setr_ps(-INFINITY, -100.0f, 0.0f, NAN, -87.0f, 1.0f, -1.0f, 10.0f)));
    CHECK(got_all[0] == 0.0f && got_all[1] == 0.0f && got_all[2] == 1.0f && got_all[3] == 0.0f);
#endif
    /* no digest: nothing in this file runs on threads */
    (void)got_all;
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

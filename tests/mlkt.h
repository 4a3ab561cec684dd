/* mlkt.h - the tiny test harness of mlkern's tests.

   Every test file is one program: it includes mlkern.h with the
   implementation, calls its test functions through MLKT_RUN, and ends with
   `return mlkt_finish();`, which prints
       <file>: N passed, N failed
       digest <hex>                    (or "digest <hex> (nothing digested)")
   The digest hashes every buffer handed to mlkt_digest(): make check
   (tests/check.sh) runs the OpenMP build with 1, 2, 3 and 4 threads and
   requires equal digests (bitwise identical results). Checks print file:line, the expression, the values and
   the current seed. Tests compile as C99 and as C++ (cast malloc results, no
   VLAs, no designated initializers).

   Numerical checks use one tolerance rule, CHECK_NAIVE / mlkt_within_naive
   below: against a double-precision reference, the kernel's error is at
   most 2x the naive float32 computation's error plus a small floor.

   MLKT_QUICK is defined by the sanitizer build: shrink sweeps there
   (mlkt_quick() is 1), never drop a hard case. */
#ifndef MLKT_H
#define MLKT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every helper is static and marked unused-ok: a test uses only some. */
#if defined(__GNUC__) || defined(__clang__)
#define MLKT_FN static __attribute__((unused))
#else
#define MLKT_FN static
#endif

static long mlkt_passed, mlkt_failed;
static uint64_t mlkt_seed_value;  /* printed with every failure */
static uint64_t mlkt_digest_value = 1469598103934665603ull;
static size_t mlkt_digest_bytes; /* 0: nothing digested, the thread comparison is vacuous */
static const char *mlkt_file = "";

MLKT_FN int mlkt_quick(void)
{
#ifdef MLKT_QUICK
    return 1;
#else
    return 0;
#endif
}

/* Records one check; prints the first 30 failures in full. */
MLKT_FN int mlkt_report(int ok, const char *file, int line, const char *expr, const char *detail)
{
    if (ok) { mlkt_passed++; return 1; }
    mlkt_failed++;
    if (mlkt_failed <= 30)
        fprintf(stderr, "FAIL %s:%d: %s %s (seed %llu)\n", file, line, expr,
                detail ? detail : "", (unsigned long long)mlkt_seed_value);
    return 0;
}

#define CHECK(cond) mlkt_report((cond) ? 1 : 0, __FILE__, __LINE__, #cond, NULL)

#define CHECK_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); char d_[96]; \
    snprintf(d_, sizeof d_, "(%lld vs %lld)", a_, b_); \
    mlkt_report(a_ == b_, __FILE__, __LINE__, #a " == " #b, d_); } while (0)

/* |got - want| <= atol + rtol * |want|; NaN never passes unless both NaN,
   equal infinities pass. */
MLKT_FN int mlkt_close(double got, double want, double rtol, double atol)
{
    if (got != got || want != want) return got != got && want != want;
    if (isinf(want) || isinf(got)) return got == want;
    return fabs(got - want) <= atol + rtol * fabs(want);
}

#define CHECK_CLOSE(got, want, rtol, atol) do { double g_ = (double)(got), w_ = (double)(want); \
    char d_[128]; snprintf(d_, sizeof d_, "(got %.9g want %.9g, diff %.3g)", g_, w_, fabs(g_ - w_)); \
    mlkt_report(mlkt_close(g_, w_, rtol, atol), __FILE__, __LINE__, #got " ~ " #want, d_); } while (0)

/* A check with a printf-style message: CHECKF(ok, "n=%d", n). */
#define CHECKF(cond, ...) do { char d_[256]; snprintf(d_, sizeof d_, __VA_ARGS__); \
    mlkt_report((cond) ? 1 : 0, __FILE__, __LINE__, #cond, d_); } while (0)

/* ---- deterministic RNG: splitmix64 ---- */

static uint64_t mlkt_rng = 0x9E3779B97F4A7C15ull;

MLKT_FN void mlkt_seed(uint64_t s) { mlkt_seed_value = s; mlkt_rng = s * 0x9E3779B97F4A7C15ull + 1; }

MLKT_FN uint64_t mlkt_u64(void)
{
    uint64_t z = (mlkt_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0, n) */
MLKT_FN int mlkt_int(int n) { return (int)(mlkt_u64() % (uint64_t)n); }

/* uniform in [lo, hi) */
MLKT_FN double mlkt_uniform(double lo, double hi)
{
    return lo + (hi - lo) * (double)(mlkt_u64() >> 11) * (1.0 / 9007199254740992.0);
}

MLKT_FN double mlkt_normal(void)
{
    double u1 = mlkt_uniform(1e-300, 1.0), u2 = mlkt_uniform(0.0, 1.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

MLKT_FN void mlkt_fill_uniform(float *x, size_t n, double lo, double hi)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = (float)mlkt_uniform(lo, hi);
}

MLKT_FN void mlkt_fill_normal(float *x, size_t n, double stddev)
{
    size_t i;
    for (i = 0; i < n; i++) x[i] = (float)(stddev * mlkt_normal());
}

/* ---- guarded buffers: NaN-filled, with canaries on both sides ---- */

#define MLKT_GUARD 16
static const uint32_t mlkt_canary = 0xDEADBEEFu;

/* n_bytes of payload, filled with 0xFF bytes (a NaN pattern for floats and
   -1 for integers), MLKT_GUARD canary words before and after. */
MLKT_FN void *mlkt_alloc(size_t n_bytes)
{
    size_t i;
    unsigned char *raw;
    if (n_bytes > ((size_t)1 << 40)) { fprintf(stderr, "mlkt_alloc: %zu bytes?\n", n_bytes); exit(2); }
    raw = (unsigned char *)malloc(n_bytes + 2 * MLKT_GUARD * 4 + 16);
    if (!raw) { fprintf(stderr, "mlkt_alloc: out of memory\n"); exit(2); }
    memcpy(raw, &n_bytes, sizeof n_bytes);
    for (i = 0; i < MLKT_GUARD; i++) {
        memcpy(raw + 16 + 4 * i, &mlkt_canary, 4);
        memcpy(raw + 16 + MLKT_GUARD * 4 + n_bytes + 4 * i, &mlkt_canary, 4);
    }
    memset(raw + 16 + MLKT_GUARD * 4, 0xFF, n_bytes);
    return raw + 16 + MLKT_GUARD * 4;
}

MLKT_FN float *mlkt_floats(size_t n) { return (float *)mlkt_alloc(n * sizeof(float)); }

/* Returns 1 when both canaries survived. */
MLKT_FN int mlkt_guard_ok(const void *p)
{
    const unsigned char *raw = (const unsigned char *)p - 16 - MLKT_GUARD * 4;
    size_t n_bytes, i;
    uint32_t w;
    memcpy(&n_bytes, raw, sizeof n_bytes);
    for (i = 0; i < MLKT_GUARD; i++) {
        memcpy(&w, raw + 16 + 4 * i, 4);
        if (w != mlkt_canary) return 0;
        memcpy(&w, raw + 16 + MLKT_GUARD * 4 + n_bytes + 4 * i, 4);
        if (w != mlkt_canary) return 0;
    }
    return 1;
}

#define CHECK_GUARD(p) mlkt_report(mlkt_guard_ok(p), __FILE__, __LINE__, "canaries of " #p, NULL)

/* Checks the canaries, then frees. */
MLKT_FN void mlkt_free(void *p)
{
    if (!p) return;
    CHECK_GUARD(p);
    free((unsigned char *)p - 16 - MLKT_GUARD * 4);
}

/* 1 if the two buffers are bytewise equal (for "outputs untouched"). */
MLKT_FN int mlkt_same(const void *a, const void *b, size_t n_bytes) { return memcmp(a, b, n_bytes) == 0; }

/* ---- digest: FNV-1a over every result a test hands in ---- */

MLKT_FN void mlkt_digest(const void *p, size_t n_bytes)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n_bytes; i++) { mlkt_digest_value ^= b[i]; mlkt_digest_value *= 1099511628211ull; }
    mlkt_digest_bytes += n_bytes;
}

/* ---- numerics ---- */

/* max |a[i] - ref[i]| over n; an infinite ref[i] must be matched exactly
   (then it adds no error), a NaN anywhere gives INFINITY */
MLKT_FN double mlkt_max_abs_err(const float *a, const double *ref, size_t n)
{
    double e = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (d != d && (double)a[i] == ref[i]) d = 0; /* equal infinities */
        if (d != d) return INFINITY;
        if (d > e) e = d;
    }
    return e;
}

/* ---- the tolerance rule of every numerical check ----
   Measured against a double-precision reference, a float32 kernel's max
   error must be at most twice the max error of the naive float32
   computation of the same thing (FlashAttention's tests use the same
   rule), plus a small floor for outputs whose naive error happens to be
   ~0. Each test states its floor, usually mlkt_ulps(n, scale): n float32
   ulps of the output's scale. A NaN error never passes, nor does a
   non-finite naive error: that yardstick is broken (it would excuse
   anything), so the test must handle such outputs explicitly. */
MLKT_FN double mlkt_ulps(double n, double scale) { return n * 1.1920928955078125e-07 * scale; }

MLKT_FN int mlkt_within_naive(double err, double naive_err, double floor_)
{
    return err == err && naive_err < INFINITY && err <= 2.0 * naive_err + floor_;
}

/* CHECK_NAIVE(err, naive_err, floor, "what %d", ...): the rule as a check,
   printing the three figures after the message. */
#define CHECK_NAIVE(err, naive_err, floor_, ...) do { \
    double e_ = (double)(err), n_ = (double)(naive_err), f_ = (double)(floor_); \
    char c_[200], d_[320]; snprintf(c_, sizeof c_, __VA_ARGS__); \
    snprintf(d_, sizeof d_, "(%s: err %.3g, naive float32 %.3g, floor %.3g)", c_, e_, n_, f_); \
    mlkt_report(mlkt_within_naive(e_, n_, f_), __FILE__, __LINE__, \
                "err <= 2 * naive + floor", d_); } while (0)

/* the same for a double a (a naive float32 result kept in double) */
MLKT_FN double mlkt_max_abs_err_d(const double *a, const double *ref, size_t n)
{
    double e = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = fabs(a[i] - ref[i]);
        if (d != d && a[i] == ref[i]) d = 0; /* equal infinities */
        if (d != d) return INFINITY;
        if (d > e) e = d;
    }
    return e;
}

/* Central finite difference of f at x[i] in double: (f(x+h) - f(x-h)) / 2h. */
MLKT_FN double mlkt_fd(double (*f)(void *ctx, const double *x), void *ctx, double *x, size_t i, double h)
{
    double save = x[i], fp, fm;
    x[i] = save + h;
    fp = f(ctx, x);
    x[i] = save - h;
    fm = f(ctx, x);
    x[i] = save;
    return (fp - fm) / (2 * h);
}

/* Runs one test function with its own seed. */
#define MLKT_RUN(fn, seed) do { mlkt_seed(seed); fn(); } while (0)

#ifdef MLKT_TWO_TU
/* The MLKERN_STATIC configuration links tests/second_tu.c, which includes
   the implementation a second time; this proves both copies work. */
int mlkt_second_tu_probe(void);
#endif

MLKT_FN int mlkt_finish(void)
{
#ifdef MLKT_TWO_TU
    CHECK(mlkt_second_tu_probe() == 1);
#endif
    printf("%s: %ld passed, %ld failed\n", mlkt_file, mlkt_passed, mlkt_failed);
    /* a program that digests nothing says so: its comparison across thread counts
       compares nothing (tests/check.sh may skip it) */
    printf("digest %016llx%s\n", (unsigned long long)mlkt_digest_value,
           mlkt_digest_bytes ? "" : " (nothing digested)");
    return mlkt_failed ? 1 : 0;
}

#endif

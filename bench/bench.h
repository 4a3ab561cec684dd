/* bench.h - timing harness of mlkern's benchmarks.

   Each bench program measures this machine's two ceilings in the same run
   (bench_roofline: mlk_sgemm GFLOP/s at 2048^3 and memcpy bandwidth over
   1 GiB arrays, read + write counted), times its kernels with bench_time
   (warm-up, then the median and minimum of repeats on a monotonic clock),
   prints one line per measurement and appends it to build/bench.csv, which
   bench/peers.sh and `make plots` read. Before and after each measurement
   a short FMA probe checks that the machine runs at the FMA peak measured
   at the start: a VM whose vCPUs come to share one core (or lose one) for
   a few seconds runs every kernel at half speed meanwhile, and such lines
   are marked instead of passing for the kernel's speed. */
#ifndef BENCH_H
#define BENCH_H

#define _POSIX_C_SOURCE 200809L
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct bench_result { double median_s, min_s; } bench_result;

static double bench_fma_rate(long iters, int reps);

/* The FMA peak measured with the roofline, and the slower probe's fraction
   of it around the last measurement (1 until then). */
static double bench_fma_start;
static double bench_probe_frac = 1.0;

static double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs fn(ctx) once to warm up, then `reps` times (at least 5); returns
   the median and the minimum. */
static bench_result bench_time(void (*fn)(void *), void *ctx, int reps)
{
    double t[64];
    bench_result r;
    int i;
    if (reps < 5) reps = 5;
    if (reps > 64) reps = 64;
    if (bench_fma_start > 0) bench_probe_frac = bench_fma_rate(2 * 1000 * 1000, 1) / bench_fma_start;
    fn(ctx);
    for (i = 0; i < reps; i++) {
        double t0 = bench_now();
        fn(ctx);
        t[i] = bench_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], bench_cmp_double);
    r.median_s = t[reps / 2];
    r.min_s = t[0];
    if (bench_fma_start > 0) {
        const double after = bench_fma_rate(2 * 1000 * 1000, 1) / bench_fma_start;
        if (after < bench_probe_frac) bench_probe_frac = after;
    }
    return r;
}

/* Shows progress on a terminal only: one line rewritten in place. */
static void bench_progress(const char *what)
{
    if (!isatty(fileno(stderr))) return;
    fprintf(stderr, "\r\033[K  running %s ...", what);
    fflush(stderr);
}

static void bench_progress_done(void)
{
    if (isatty(fileno(stderr))) fprintf(stderr, "\r\033[K");
}

typedef struct bench_sgemm_ctx { int n; float *a, *b, *c; } bench_sgemm_ctx;

static void bench_sgemm_run(void *p)
{
    bench_sgemm_ctx *x = (bench_sgemm_ctx *)p;
    mlk_sgemm(0, 0, x->n, x->n, x->n, 1.0f, x->a, x->n, x->b, x->n, 0.0f, x->c, x->n);
}

typedef struct bench_copy_ctx { size_t bytes; char *src, *dst; } bench_copy_ctx;

static void bench_copy_run(void *p)
{
    bench_copy_ctx *x = (bench_copy_ctx *)p;
    memcpy(x->dst, x->src, x->bytes);
}

/* The FMA rate: per thread, 12 independent FMA chains of the widest vector
   mlkern uses (8 lanes, 16 with AVX-512; enough to cover the FMA latency on
   two pipes), `iters` steps each; GFLOP/s of all threads together, the best
   of `reps` runs. With 20 M steps, the FMA peak, which the sgemm roofline
   sits just under; with 2 M (a few ms), the probe after each measurement. */
static double bench_fma_rate(long iters, int reps)
{
    double best = 0;
    int rep;
    for (rep = 0; rep < reps; rep++) {
        double t0 = bench_now(), sink = 0;
        int threads = 1;
        MLK__OMP(omp parallel reduction(+:sink))
        {
            float acc[12][8];
            long it;
            int r, l;
            for (r = 0; r < 12; r++)
                for (l = 0; l < 8; l++) acc[r][l] = (float)(r + l) * 1e-3f;
#if defined(MLK__AVX512)
            {
                __m512 v[12], m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
                for (r = 0; r < 12; r++) v[r] = _mm512_set1_ps(acc[r][0]);
                for (it = 0; it < iters; it++)
                    for (r = 0; r < 12; r++) v[r] = _mm512_fmadd_ps(v[r], m, a);
                for (r = 0; r < 12; r++) acc[r][0] = _mm512_cvtss_f32(v[r]);
            }
#elif defined(MLK__AVX2)
            {
                __m256 v[12], m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
                for (r = 0; r < 12; r++) v[r] = _mm256_loadu_ps(acc[r]);
                for (it = 0; it < iters; it++)
                    for (r = 0; r < 12; r++) v[r] = _mm256_fmadd_ps(v[r], m, a);
                for (r = 0; r < 12; r++) _mm256_storeu_ps(acc[r], v[r]);
            }
#else
            for (it = 0; it < iters / 8; it++)
                for (r = 0; r < 12; r++)
                    for (l = 0; l < 8; l++) acc[r][l] = acc[r][l] * 0.999999f + 1e-7f;
#endif
            for (r = 0; r < 12; r++) sink += acc[r][0];
#ifdef _OPENMP
            MLK__OMP(omp master)
            threads = omp_get_num_threads();
#endif
        }
        {
            double dt = bench_now() - t0;
#if defined(MLK__AVX512)
            double flops = 2.0 * 16 * 12 * (double)iters * threads;
#elif defined(MLK__AVX2)
            double flops = 2.0 * 8 * 12 * (double)iters * threads;
#else
            double flops = 2.0 * 8 * 12 * (double)(iters / 8) * threads;
#endif
            if (flops / dt * 1e-9 > best && sink == sink) best = flops / dt * 1e-9;
        }
    }
    return best;
}

/* sgemm_gflops: mlk_sgemm at 2048^3, the ceiling compute-bound kernels are
   compared with; fma_gflops: the FMA peak, which sgemm is compared with;
   copy_gbs: memcpy over 1 GiB, the ceiling of memory-bound kernels. */
typedef struct bench_roof { double sgemm_gflops, fma_gflops, copy_gbs; } bench_roof;

/* This machine's ceilings, measured now: sgemm GFLOP/s (2048^3, NN), the FMA
   peak, and copy GB/s (1 GiB, read + write). */
static bench_roof bench_roofline(void)
{
    bench_roof roof;
    bench_sgemm_ctx g;
    bench_copy_ctx cp;
    bench_result r;
    size_t i, nn;
    g.n = 2048;
    nn = (size_t)g.n * g.n;
    g.a = (float *)malloc(nn * sizeof(float));
    g.b = (float *)malloc(nn * sizeof(float));
    g.c = (float *)malloc(nn * sizeof(float));
    for (i = 0; i < nn; i++) { g.a[i] = (float)(i % 7) * 0.1f; g.b[i] = (float)(i % 5) * 0.1f; }
    bench_progress("sgemm roofline");
    r = bench_time(bench_sgemm_run, &g, 5);
    roof.sgemm_gflops = 2.0 * g.n * (double)g.n * g.n / r.median_s * 1e-9;
    free(g.a); free(g.b); free(g.c);
    bench_progress("FMA peak");
    roof.fma_gflops = bench_fma_rate(20 * 1000 * 1000, 3);
    bench_fma_start = roof.fma_gflops;
    cp.bytes = (size_t)1 << 30;
    cp.src = (char *)malloc(cp.bytes);
    cp.dst = (char *)malloc(cp.bytes);
    memset(cp.src, 1, cp.bytes);
    memset(cp.dst, 2, cp.bytes);
    bench_progress("copy bandwidth");
    r = bench_time(bench_copy_run, &cp, 5);
    roof.copy_gbs = 2.0 * (double)cp.bytes / r.median_s * 1e-9;
    free(cp.src); free(cp.dst);
    bench_progress_done();
    printf("roofline: sgemm %.1f GFLOP/s (2048^3), FMA peak %.1f GFLOP/s, copy %.1f GB/s (1 GiB, read+write), %d thread(s)\n",
           roof.sgemm_gflops, roof.fma_gflops, roof.copy_gbs, mlk__max_threads());
    return roof;
}

/* Prints and records one measurement. rate is GFLOP/s when unit is
   "GFLOP/s", GB/s when "GB/s" (any other unit: frac is not printed);
   frac is rate as a fraction of the matching ceiling. */
static void bench_report(const char *kernel, const char *shape, bench_result r,
                         double rate, const char *unit, double frac)
{
    FILE *f;
    printf("%-28s %-30s %10.3f ms (min %8.3f)  %8.2f %-8s", kernel, shape,
           r.median_s * 1e3, r.min_s * 1e3, rate, unit);
    if (frac > 0) printf("  %5.1f%% of roofline", 100.0 * frac);
    if (bench_probe_frac < 0.8)
        printf("  [machine slowed: an FMA probe at %.0f%% of the peak]", 100.0 * bench_probe_frac);
    printf("\n");
    fflush(stdout);
    f = fopen("build/bench.csv", "a");
    if (!f) return;
    fprintf(f, "mlkern,%s,%s,%.6f,%.4f,%s,%.4f,%d\n", kernel, shape, r.median_s * 1e3, rate,
            unit, frac, mlk__max_threads());
    fclose(f);
}

#endif

/* bench_gemm: mlk_sgemm at 512^3, 1024^3, 2048^3, NN and NT (C = A B^T, B
   stored n x k as a Linear layer's weight), GFLOP/s and fraction of the
   roofline; small-batch linear layers (m = 16, 64, 128 rows times a
   4096 x 4096 weight, x W^T); then m = 1 (a decode step, y = x W^T and
   y = x B), GB/s of B
   read and fraction of copy bandwidth. bench/peer_gemm.py times torch.mm on
   the same shapes. */
#include "bench.h"

typedef struct gemm_case { int trans_b, m, n, k; const float *a, *b; float *c; } gemm_case;

static void gemm_run(void *p)
{
    gemm_case *g = (gemm_case *)p;
    mlk_sgemm(0, g->trans_b, g->m, g->n, g->k, 1.0f, g->a, g->k, g->b, g->trans_b ? g->k : g->n,
              0.0f, g->c, g->n);
}

static float *bench_matrix(size_t count, unsigned mult)
{
    float *x = (float *)malloc(count * sizeof(float));
    if (!x) { fprintf(stderr, "bench_gemm: out of memory\n"); exit(1); }
    for (size_t i = 0; i < count; i++) x[i] = (float)((i * mult) % 1000) * 1e-3f - 0.5f;
    return x;
}

int main(void)
{
    static const int sizes[3] = {512, 1024, 2048};
    static const int gemv_shapes[3][3] = {{0, 4096, 4096}, {1, 4096, 4096}, {1, 11008, 4096}};
    bench_roof roof = bench_roofline();
    for (int s = 0; s < 3; s++) {
        const int n = sizes[s];
        const size_t nn = (size_t)n * n;
        float *a = bench_matrix(nn, 7919u), *b = bench_matrix(nn, 104729u), *c = bench_matrix(nn, 1u);
        char shape[64];
        snprintf(shape, sizeof shape, "%dx%dx%d", n, n, n);
        for (int trans_b = 0; trans_b < 2; trans_b++) {
            gemm_case g;
            bench_result r;
            double gflops;
            g.trans_b = trans_b; g.m = n; g.n = n; g.k = n; g.a = a; g.b = b; g.c = c;
            bench_progress(shape);
            r = bench_time(gemm_run, &g, n <= 512 ? 30 : n <= 1024 ? 15 : 7);
            bench_progress_done();
            gflops = 2.0 * (double)n * n * n / r.median_s * 1e-9;
            bench_report(trans_b ? "sgemm_nt" : "sgemm_nn", shape, r, gflops, "GFLOP/s",
                         gflops / roof.sgemm_gflops);
        }
        free(a); free(b); free(c);
    }
    for (int s = 0; s < 3; s++) { /* small-batch linear layers: x W^T, W [4096, 4096] */
        static const int batch[3] = {16, 64, 128};
        gemm_case g;
        bench_result r;
        double gflops;
        char shape[64];
        g.trans_b = 1; g.m = batch[s]; g.n = 4096; g.k = 4096;
        g.a = bench_matrix((size_t)g.m * g.k, 7919u);
        g.b = bench_matrix((size_t)g.n * g.k, 104729u);
        g.c = bench_matrix((size_t)g.m * g.n, 1u);
        snprintf(shape, sizeof shape, "%dx%dx%d", g.m, g.n, g.k);
        bench_progress(shape);
        r = bench_time(gemm_run, &g, 20);
        bench_progress_done();
        gflops = 2.0 * g.m * g.n * g.k / r.median_s * 1e-9;
        bench_report("sgemm_nt", shape, r, gflops, "GFLOP/s", gflops / roof.sgemm_gflops);
        free((void *)g.a); free((void *)g.b); free(g.c);
    }
    for (int s = 0; s < 3; s++) {
        gemm_case g;
        bench_result r;
        double gbs;
        char shape[64];
        g.trans_b = gemv_shapes[s][0]; g.m = 1; g.n = gemv_shapes[s][1]; g.k = gemv_shapes[s][2];
        g.a = bench_matrix((size_t)g.k, 7919u);
        g.b = bench_matrix((size_t)g.n * g.k, 104729u);
        g.c = bench_matrix((size_t)g.n, 1u);
        snprintf(shape, sizeof shape, "1x%dx%d", g.n, g.k);
        bench_progress(shape);
        r = bench_time(gemm_run, &g, 40);
        bench_progress_done();
        gbs = (double)g.n * g.k * sizeof(float) / r.median_s * 1e-9;
        bench_report(g.trans_b ? "sgemm_nt" : "sgemm_nn", shape, r, gbs, "GB/s", gbs / roof.copy_gbs);
        free((void *)g.a); free((void *)g.b); free(g.c);
    }
    return 0;
}

/* bench_gemm: mlk_sgemm at 512^3, 1024^3, 2048^3, NN and NT (C = A B^T, B
   stored n x k as a Linear layer's weight), GFLOP/s and fraction of the
   roofline. bench/peer_gemm.py times torch.mm on the same shapes. */
#include "bench.h"

typedef struct gemm_case { int trans_b, n; const float *a, *b; float *c; } gemm_case;

static void gemm_run(void *p)
{
    gemm_case *g = (gemm_case *)p;
    mlk_sgemm(0, g->trans_b, g->n, g->n, g->n, 1.0f, g->a, g->n, g->b, g->n, 0.0f, g->c, g->n);
}

int main(void)
{
    static const int sizes[3] = {512, 1024, 2048};
    bench_roof roof = bench_roofline();
    for (int s = 0; s < 3; s++) {
        const int n = sizes[s];
        const size_t nn = (size_t)n * n;
        float *a = (float *)malloc(nn * sizeof(float));
        float *b = (float *)malloc(nn * sizeof(float));
        float *c = (float *)malloc(nn * sizeof(float));
        char shape[64];
        if (!a || !b || !c) { fprintf(stderr, "bench_gemm: out of memory\n"); return 1; }
        for (size_t i = 0; i < nn; i++) {
            a[i] = (float)((i * 7919u) % 1000) * 1e-3f - 0.5f;
            b[i] = (float)((i * 104729u) % 1000) * 1e-3f - 0.5f;
        }
        snprintf(shape, sizeof shape, "%dx%dx%d", n, n, n);
        for (int trans_b = 0; trans_b < 2; trans_b++) {
            gemm_case g;
            bench_result r;
            double gflops;
            g.trans_b = trans_b; g.n = n; g.a = a; g.b = b; g.c = c;
            bench_progress(shape);
            r = bench_time(gemm_run, &g, n <= 512 ? 30 : n <= 1024 ? 15 : 7);
            bench_progress_done();
            gflops = 2.0 * (double)n * n * n / r.median_s * 1e-9;
            bench_report(trans_b ? "sgemm_nt" : "sgemm_nn", shape, r, gflops, "GFLOP/s",
                         gflops / roof.sgemm_gflops);
        }
        free(a); free(b); free(c);
    }
    return 0;
}

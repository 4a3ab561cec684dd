/* Top-k softmax (k = 50) at the shapes of issue 2, in GB/s of logits read
   (the only traffic that grows with n), as a fraction of copy bandwidth. */
#include "bench.h"

typedef struct topk_ctx { int rows, n, k; float *logits, *probs; int32_t *idx; } topk_ctx;

static void run_topk(void *p)
{
    topk_ctx *c = (topk_ctx *)p;
    mlk_topk_softmax(c->rows, c->n, c->logits, 1.0f, c->k, c->probs, c->idx);
}

int main(void)
{
    static const int shapes[3][2] = {{64, 32000}, {64, 128256}, {8, 262144}};
    bench_roof roof = bench_roofline();
    uint64_t state = 1;
    int s;
    for (s = 0; s < 3; s++) {
        topk_ctx c;
        size_t n, i;
        double bytes;
        char shape[64];
        bench_result r;
        c.rows = shapes[s][0];
        c.n = shapes[s][1];
        c.k = 50;
        n = (size_t)c.rows * c.n;
        c.logits = (float *)malloc(n * sizeof(float));
        c.probs = (float *)malloc((size_t)c.rows * c.k * sizeof(float));
        c.idx = (int32_t *)malloc((size_t)c.rows * c.k * sizeof(int32_t));
        for (i = 0; i < n; i++) { /* logits roughly normal, sd 3 (sum of four uniforms) */
            double u = 0;
            int j;
            for (j = 0; j < 4; j++) {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                u += (double)(state >> 11) / 9007199254740992.0;
            }
            c.logits[i] = (float)((u - 2.0) * 5.2);
        }
        bytes = 4.0 * (double)n;
        snprintf(shape, sizeof shape, "%dx%d", c.rows, c.n);
        bench_progress("topk_softmax_k50");
        r = bench_time(run_topk, &c, 21);
        bench_progress_done();
        bench_report("topk_softmax_k50", shape, r, bytes / r.median_s * 1e-9, "GB/s",
                     bytes / r.median_s * 1e-9 / roof.copy_gbs);
        free(c.logits); free(c.probs); free(c.idx);
    }
    return 0;
}

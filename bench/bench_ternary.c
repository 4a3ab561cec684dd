/* bench_ternary: a BitLinear layer at inference, y = x W^T, as packed
   ternary (mlk_act_quant_i8 + mlk_ternary_gemm, both timed) against fp32
   (mlk_sgemm NT, W stored n x k) on the same shapes in the same run: GEMV
   (m = 1) and GEMM (m = 64) at n = k = 4096 and n = 11008, k = 4096 (a
   LLaMA-7B projection). GEMV rows report weight bytes read per second as a
   fraction of copy bandwidth; GEMM rows report 2mnk operations per second
   as a fraction of the sgemm roofline. bench/peer_ternary.py times torch's
   fp32 linear on the same shapes. */
#include "bench.h"

typedef struct ternary_case {
    int m, n, k;
    const float *x, *w;   /* fp32 activations [m, k] and weights [n, k] */
    const uint8_t *wpacked;
    float wscale;
    int8_t *xq;
    float *xscale, *y;
} ternary_case;

static void ternary_run(void *p)
{
    ternary_case *t = (ternary_case *)p;
    mlk_act_quant_i8(t->m, t->k, t->x, t->xq, t->xscale);
    mlk_ternary_gemm(t->m, t->n, t->k, t->xq, t->xscale, t->wpacked, t->wscale, t->y);
}

static void fp32_run(void *p)
{
    ternary_case *t = (ternary_case *)p;
    mlk_sgemm(0, 1, t->m, t->n, t->k, 1.0f, t->x, t->k, t->w, t->k, 0.0f, t->y, t->n);
}

int main(void)
{
    static const int shapes[4][3] = { { 1, 4096, 4096 }, { 1, 11008, 4096 },
                                      { 64, 4096, 4096 }, { 64, 11008, 4096 } };
    bench_roof roof = bench_roofline();
    int s;
    for (s = 0; s < 4; s++) {
        const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        const size_t nk = (size_t)n * k, packed_bytes = (size_t)n * mlk_ternary_row_bytes(k);
        float *w = (float *)malloc(nk * sizeof(float));
        float *x = (float *)malloc((size_t)m * k * sizeof(float));
        float *y = (float *)malloc((size_t)m * n * sizeof(float));
        float *xscale = (float *)malloc((size_t)m * sizeof(float));
        uint8_t *wpacked = (uint8_t *)malloc(packed_bytes);
        int8_t *xq = (int8_t *)malloc((size_t)m * k);
        const char *kernel = m == 1 ? "ternary_gemv" : "ternary_gemm";
        double ops = 2.0 * m * (double)n * k;
        bench_result rt, rf;
        ternary_case c;
        char shape[64];
        size_t i;
        if (!w || !x || !y || !xscale || !wpacked || !xq) {
            fprintf(stderr, "bench_ternary: out of memory\n");
            return 1;
        }
        for (i = 0; i < nk; i++) w[i] = (float)((i * 7919u) % 1000) * 1e-3f - 0.5f;
        for (i = 0; i < (size_t)m * k; i++) x[i] = (float)((i * 104729u) % 1000) * 1e-3f - 0.5f;
        c.m = m; c.n = n; c.k = k; c.x = x; c.w = w; c.wpacked = wpacked;
        c.xq = xq; c.xscale = xscale; c.y = y;
        if (mlk_ternary_quant(n, k, w, wpacked, &c.wscale) != MLK_OK) return 1;
        snprintf(shape, sizeof shape, "%dx%dx%d", m, n, k);

        bench_progress(shape);
        rt = bench_time(ternary_run, &c, m == 1 ? 60 : 15);
        rf = bench_time(fp32_run, &c, m == 1 ? 20 : 7);
        bench_progress_done();
        if (m == 1) {
            double tern_gbs = (double)packed_bytes / rt.median_s * 1e-9;
            double fp32_gbs = (double)nk * sizeof(float) / rf.median_s * 1e-9;
            bench_report(kernel, shape, rt, tern_gbs, "GB/s", tern_gbs / roof.copy_gbs);
            bench_report("fp32_linear", shape, rf, fp32_gbs, "GB/s", fp32_gbs / roof.copy_gbs);
        } else {
            double tern_gops = ops / rt.median_s * 1e-9, fp32_gflops = ops / rf.median_s * 1e-9;
            bench_report(kernel, shape, rt, tern_gops, "GFLOP/s", tern_gops / roof.sgemm_gflops);
            bench_report("fp32_linear", shape, rf, fp32_gflops, "GFLOP/s", fp32_gflops / roof.sgemm_gflops);
        }
        printf("  %s: ternary %.2fx as fast as fp32 mlk_sgemm (target %.1fx); weights %.1f MB packed vs %.1f MB\n",
               shape, rf.median_s / rt.median_s, m == 1 ? 6.0 : 1.5, packed_bytes * 1e-6, nk * 4e-6);
        free(w); free(x); free(y); free(xscale); free(wpacked); free(xq);
    }
    return 0;
}

/* Top-k softmax (k = 50) at three shapes, in GB/s of logits read (the only
   traffic that grows with n), as a fraction of copy bandwidth. Then one
   batched sampling step, 64 x 128256 with mixed per-row parameters
   (temperature, top_k, top_p, min_p, penalties over a 256-token history,
   a logit bias, logprobs), in rows per millisecond. */
#include "bench.h"

typedef struct topk_ctx { int rows, n, k; float *logits, *probs; int32_t *idx; } topk_ctx;

static void run_topk(void *p)
{
    topk_ctx *c = (topk_ctx *)p;
    mlk_topk_softmax(c->rows, c->n, c->logits, 1.0f, c->k, c->probs, c->idx);
}

typedef struct sample_ctx { int rows, n; float *logits, *logprob; mlk_sample_row *p; uint64_t *rng; int32_t *out; } sample_ctx;

static void run_sample(void *p)
{
    sample_ctx *c = (sample_ctx *)p;
    mlk_sample_rows(c->rows, c->n, c->logits, c->p, c->rng, c->out, c->logprob, 0, NULL, NULL);
}

/* The mixed parameter sets of the sampling row (the torch peer uses the same). */
static void bench_sampling(const float *logits)
{
    static int32_t history[256];
    static mlk_logit_bias bias[4] = {{11, 2.0f}, {500, -1.5f}, {1000, -INFINITY}, {90000, 0.5f}};
    sample_ctx c;
    bench_result r;
    c.rows = 64;
    c.n = 128256;
    c.logits = (float *)logits;
    c.p = (mlk_sample_row *)calloc((size_t)c.rows, sizeof(mlk_sample_row));
    c.rng = (uint64_t *)malloc((size_t)c.rows * sizeof(uint64_t));
    c.out = (int32_t *)malloc((size_t)c.rows * sizeof(int32_t));
    c.logprob = (float *)malloc((size_t)c.rows * sizeof(float));
    for (int i = 0; i < 256; i++) history[i] = (i * 7919) % c.n;
    for (int r = 0; r < c.rows; r++) {
        mlk_sample_row *p = &c.p[r];
        p->sampler.temperature = 0.6f + 0.1f * (float)(r % 7);
        p->sampler.top_k = r % 4 == 0 ? 40 : 0;
        p->sampler.top_p = r % 4 == 1 ? 0.9f : 1.0f;
        p->sampler.min_p = r % 4 == 2 ? 0.05f : 0.0f;
        p->repetition_penalty = r % 2 ? 1.1f : 1.0f;
        p->presence_penalty = r % 3 == 0 ? 0.2f : 0.0f;
        p->frequency_penalty = r % 3 == 1 ? 0.1f : 0.0f;
        p->history = history;
        p->history_len = 256;
        p->bias = bias;
        p->n_bias = 4;
        c.rng[r] = 1234 + (uint64_t)r;
    }
    bench_progress("sample_rows");
    r = bench_time(run_sample, &c, 21);
    bench_progress_done();
    bench_report("sample_rows_mixed", "64x128256", r, c.rows * 1e-3 / r.median_s, "rows/ms", 0);
    free(c.p); free(c.rng); free(c.out); free(c.logprob);
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
        if (s == 1) bench_sampling(c.logits);
        free(c.logits); free(c.probs); free(c.idx);
    }
    return 0;
}

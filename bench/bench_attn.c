/* bench_attn.c - flash attention forward and backward.
   GFLOP/s counts 4*B*H*Nq*Nkv*D for the forward (halved when causal) and
   2.5x that for the backward; extra memory is the workspace each pass uses. */
#include "bench.h"

typedef struct attn_case {
    int batch, heads, kv_heads, len_q, len_kv, head_dim, causal;
} attn_case;

typedef struct attn_ctx {
    mlk_attn_desc d;
    float *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
} attn_ctx;

static void run_fwd(void *p)
{
    attn_ctx *x = (attn_ctx *)p;
    mlk_attn_fwd(&x->d, x->q, x->k, x->v, x->o, x->lse);
}

static void run_bwd(void *p)
{
    attn_ctx *x = (attn_ctx *)p;
    mlk_attn_bwd(&x->d, x->q, x->k, x->v, x->o, x->dout, x->lse, x->dq, x->dk, x->dv);
}

static float *random_floats(size_t n)
{
    float *x = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)rand() / RAND_MAX - 0.5);
    return x;
}

static void bench_case(const attn_case *c, bench_roof roof)
{
    attn_ctx x;
    mlk__attn_geom g;
    char shape[64];
    size_t nq = (size_t)c->batch * c->heads * c->len_q * c->head_dim;
    size_t nkv = (size_t)c->batch * c->kv_heads * c->len_kv * c->head_dim;
    double flops = 4.0 * c->batch * c->heads * (double)c->len_q * c->len_kv * c->head_dim * (c->causal ? 0.5 : 1.0);
    double nn_bytes = (double)c->len_kv * c->len_kv * sizeof(float);
    bench_result r;
    int reps = flops > 2e10 ? 5 : 9;
    memset(&x.d, 0, sizeof x.d);
    x.d.batch = c->batch;
    x.d.heads = c->heads;
    x.d.kv_heads = c->kv_heads;
    x.d.len_q = c->len_q;
    x.d.len_kv = c->len_kv;
    x.d.head_dim = c->head_dim;
    x.d.causal = c->causal;
    if (c->len_q == 1)
        snprintf(shape, sizeof shape, "B%d Hq%d Hkv%d Nq1 Nkv%d D%d", c->batch, c->heads, c->kv_heads, c->len_kv,
                 c->head_dim);
    else
        snprintf(shape, sizeof shape, "B%d H%d N%d D%d %s", c->batch, c->heads, c->len_q, c->head_dim,
                 c->causal ? "causal" : "full");
    x.q = random_floats(nq);
    x.dout = random_floats(nq);
    x.k = random_floats(nkv);
    x.v = random_floats(nkv);
    x.o = (float *)malloc(nq * sizeof(float));
    x.dq = (float *)malloc(nq * sizeof(float));
    x.dk = (float *)malloc(nkv * sizeof(float));
    x.dv = (float *)malloc(nkv * sizeof(float));
    x.lse = (float *)malloc((size_t)c->batch * c->heads * c->len_q * sizeof(float));
    x.d.workspace_bytes = mlk_attn_workspace_size(&x.d);
    x.d.workspace = malloc(x.d.workspace_bytes);
    mlk__attn_geom_init(&x.d, &g);
    bench_progress(shape);
    r = bench_time(run_fwd, &x, reps);
    bench_report("attn_fwd", shape, r, flops / r.median_s * 1e-9, "GFLOP/s", flops / r.median_s * 1e-9 / roof.sgemm_gflops);
    r = bench_time(run_bwd, &x, reps);
    bench_report("attn_bwd", shape, r, 2.5 * flops / r.median_s * 1e-9, "GFLOP/s",
                 2.5 * flops / r.median_s * 1e-9 / roof.sgemm_gflops);
    printf("  extra memory: fwd %.0f KiB (%.2f%% of Nkv x Nkv floats), bwd %.0f KiB (%.2f%%)\n", g.fwd_cap / 1024.0,
           100.0 * g.fwd_cap / nn_bytes, g.bwd_cap / 1024.0, 100.0 * g.bwd_cap / nn_bytes);
    free(x.q); free(x.dout); free(x.k); free(x.v); free(x.o); free(x.dq); free(x.dk); free(x.dv); free(x.lse);
    free(x.d.workspace);
}

int main(int argc, char **argv)
{
    static const attn_case cases[] = {
        {1, 8, 8, 1024, 1024, 64, 1},
        {1, 8, 8, 4096, 4096, 64, 1},
        {2, 8, 8, 4096, 4096, 64, 1},
        {1, 8, 8, 1024, 1024, 128, 0},
        {1, 32, 8, 1, 4096, 128, 0},
    };
    int only = argc > 1 ? atoi(argv[1]) : -1;
    bench_roof roof = bench_roofline();
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        if (only < 0 || only == i) bench_case(&cases[i], roof);
    return 0;
}

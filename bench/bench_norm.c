/* Layer norm forward and forward+backward, in GB/s
   of the bytes each pass must move (forward: read x, write y; backward: read
   x and dy, write dx; the per-row mean/rstd and dgamma/dbeta are counted
   too), as a fraction of this machine's copy bandwidth. */
#include "bench.h"

typedef struct norm_ctx {
    int rows, dim;
    float *x, *gamma, *beta, *y, *mean, *rstd, *dy, *dx, *dgamma, *dbeta;
} norm_ctx;

static void run_fwd(void *p)
{
    norm_ctx *c = (norm_ctx *)p;
    mlk_layernorm_fwd(c->rows, c->dim, c->x, c->gamma, c->beta, 1e-5f, c->y, c->mean, c->rstd);
}

static void run_fwd_bwd(void *p)
{
    norm_ctx *c = (norm_ctx *)p;
    mlk_layernorm_fwd(c->rows, c->dim, c->x, c->gamma, c->beta, 1e-5f, c->y, c->mean, c->rstd);
    mlk_layernorm_bwd(c->rows, c->dim, c->x, c->gamma, c->mean, c->rstd, c->dy, c->dx, c->dgamma, c->dbeta);
}

/* 64-byte aligned, as tensors from PyTorch's allocator are */
static float *bench_floats(size_t n, float scale)
{
    void *mem = NULL;
    float *p;
    size_t i;
    if (posix_memalign(&mem, 64, n * sizeof(float)) != 0) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    p = (float *)mem;
    for (i = 0; i < n; i++) p[i] = scale * (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f * scale;
    return p;
}

int main(void)
{
    static const int shapes[2][2] = {{8192, 768}, {32768, 1024}};
    bench_roof roof = bench_roofline();
    int s;
    for (s = 0; s < 2; s++) {
        norm_ctx c;
        size_t n;
        double act, par, fwd_bytes, bwd_bytes;
        char shape[64];
        bench_result r;
        c.rows = shapes[s][0];
        c.dim = shapes[s][1];
        n = (size_t)c.rows * c.dim;
        c.x = bench_floats(n, 4.0f);
        c.dy = bench_floats(n, 1.0f);
        c.y = bench_floats(n, 0.0f);
        c.dx = bench_floats(n, 0.0f);
        c.gamma = bench_floats((size_t)c.dim, 1.0f);
        c.beta = bench_floats((size_t)c.dim, 1.0f);
        c.dgamma = bench_floats((size_t)c.dim, 0.0f);
        c.dbeta = bench_floats((size_t)c.dim, 0.0f);
        c.mean = bench_floats((size_t)c.rows, 0.0f);
        c.rstd = bench_floats((size_t)c.rows, 0.0f);
        act = 4.0 * (double)n;
        par = 4.0 * (2.0 * c.dim + 2.0 * c.rows);
        fwd_bytes = 2 * act + par;     /* x in, y out; gamma, beta in, mean, rstd out */
        bwd_bytes = 3 * act + 2 * par; /* x, dy in, dx out; gamma, mean, rstd in, dgamma, dbeta out */
        snprintf(shape, sizeof shape, "%dx%d", c.rows, c.dim);
        bench_progress("layernorm_fwd");
        r = bench_time(run_fwd, &c, 15);
        bench_report("layernorm_fwd", shape, r, fwd_bytes / r.median_s * 1e-9, "GB/s",
                     fwd_bytes / r.median_s * 1e-9 / roof.copy_gbs);
        bench_progress("layernorm_fwd_bwd");
        r = bench_time(run_fwd_bwd, &c, 15);
        bench_progress_done();
        bench_report("layernorm_fwd_bwd", shape, r, (fwd_bytes + bwd_bytes) / r.median_s * 1e-9, "GB/s",
                     (fwd_bytes + bwd_bytes) / r.median_s * 1e-9 / roof.copy_gbs);
        free(c.x); free(c.dy); free(c.y); free(c.dx); free(c.gamma); free(c.beta);
        free(c.dgamma); free(c.dbeta); free(c.mean); free(c.rstd);
    }
    return 0;
}

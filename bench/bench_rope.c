/* Rotary position embedding forward, in place on [rows, heads, head_dim] =
   [4096, 32, 128] (a 4096-token prefill of a Llama-sized q), NeoX and
   GPT-J pairing, in GB/s of the bytes it must move (read x, write x, read
   the positions) as a fraction of this machine's copy bandwidth. */
#include "bench.h"

typedef struct rope_ctx {
    mlk_rope_config cfg;
    int rows, heads;
    int32_t *pos;
    float *x;
} rope_ctx;

static void run_fwd(void *p)
{
    rope_ctx *c = (rope_ctx *)p;
    mlk_rope_fwd(&c->cfg, c->rows, c->heads, c->pos, c->x);
}

int main(void)
{
    static const mlk_rope_style styles[2] = {MLK_ROPE_NEOX, MLK_ROPE_GPTJ};
    static const char *names[2] = {"rope_fwd_neox", "rope_fwd_gptj"};
    bench_roof roof = bench_roofline();
    rope_ctx c;
    size_t n, i;
    double bytes;
    int s;
    void *mem = NULL;
    memset(&c, 0, sizeof c);
    c.rows = 4096;
    c.heads = 32;
    c.cfg.head_dim = c.cfg.rot_dim = 128;
    c.cfg.theta = 10000.0f;
    n = (size_t)c.rows * c.heads * c.cfg.head_dim;
    if (posix_memalign(&mem, 64, n * sizeof(float)) != 0) { /* 64-byte aligned, as PyTorch's allocator */
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    c.x = (float *)mem;
    c.pos = (int32_t *)malloc((size_t)c.rows * sizeof(int32_t));
    if (!c.pos) return 1;
    for (i = 0; i < n; i++) c.x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    for (i = 0; i < (size_t)c.rows; i++) c.pos[i] = (int32_t)i;
    bytes = 2.0 * 4.0 * (double)n + 4.0 * c.rows; /* x in and out, positions in */
    for (s = 0; s < 2; s++) {
        char shape[64];
        bench_result r;
        c.cfg.style = styles[s];
        snprintf(shape, sizeof shape, "%dx%dx%d", c.rows, c.heads, c.cfg.head_dim);
        bench_progress(names[s]);
        r = bench_time(run_fwd, &c, 15);
        bench_progress_done();
        bench_report(names[s], shape, r, bytes / r.median_s * 1e-9, "GB/s", bytes / r.median_s * 1e-9 / roof.copy_gbs);
    }
    free(c.x);
    free(c.pos);
    return 0;
}

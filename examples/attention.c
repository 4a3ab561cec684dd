/* attention.c - causal grouped-query attention, forward and backward.

   Runs mlk_attn_fwd / mlk_attn_bwd on random data (8 query heads sharing 2
   kv heads), checks the forward against the double-precision reference
   mlk_attn_naive and a few gradient elements against central differences of
   L = sum(dout * o) taken through that reference, and prints the errors,
   times (best of 5 calls) and GFLOP/s, then a verdict: "ok: ..." or
   "FAIL: ..." (exit status 1). */
#define _POSIX_C_SOURCE 200809L
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *random_floats(size_t n, float amp)
{
    float *x = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = amp * (2.0f * (float)rand() / (float)RAND_MAX - 1.0f);
    return x;
}

/* L = sum(dout * o) through the reference */
static double loss(const mlk_attn_desc *d, const float *q, const float *k, const float *v, const float *dout,
                   float *o, size_t n)
{
    double l = 0;
    mlk_attn_naive(d, q, k, v, o, NULL);
    for (size_t i = 0; i < n; i++) l += (double)dout[i] * o[i];
    return l;
}

int main(void)
{
    mlk_attn_desc d = {0};
    size_t nq, nkv;
    float *q, *k, *v, *o, *o_ref, *lse, *dout, *dq, *dk, *dv;
    double t0, t_fwd, t_bwd, flops, err = 0, grad_err = 0;
    mlk_status st;
    d.batch = 1;
    d.heads = 8;
    d.kv_heads = 2;
    d.len_q = 256;
    d.head_dim = 64;
    d.causal = 1;
    nq = (size_t)d.batch * d.heads * d.len_q * d.head_dim;
    nkv = (size_t)d.batch * d.kv_heads * d.len_q * d.head_dim;
    q = random_floats(nq, 1);
    k = random_floats(nkv, 1);
    v = random_floats(nkv, 1);
    dout = random_floats(nq, 1);
    o = (float *)malloc(nq * sizeof(float));
    o_ref = (float *)malloc(nq * sizeof(float));
    dq = (float *)malloc(nq * sizeof(float));
    dk = (float *)malloc(nkv * sizeof(float));
    dv = (float *)malloc(nkv * sizeof(float));
    lse = (float *)malloc((size_t)d.batch * d.heads * d.len_q * sizeof(float));

    mlk_attn_fwd(&d, q, k, v, o, lse); /* warm-up: OpenMP threads start */
    t_fwd = t_bwd = 1e30; /* best of 5: a busy machine can deschedule a thread mid-call */
    for (int rep = 0; rep < 5; rep++) {
        t0 = now();
        st = mlk_attn_fwd(&d, q, k, v, o, lse);
        t0 = now() - t0;
        if (st != MLK_OK) { printf("mlk_attn_fwd: %s\n", mlk_status_str(st)); return 1; }
        t_fwd = t0 < t_fwd ? t0 : t_fwd;
        t0 = now();
        st = mlk_attn_bwd(&d, q, k, v, o, dout, lse, dq, dk, dv);
        t0 = now() - t0;
        if (st != MLK_OK) { printf("mlk_attn_bwd: %s\n", mlk_status_str(st)); return 1; }
        t_bwd = t0 < t_bwd ? t0 : t_bwd;
    }

    mlk_attn_naive(&d, q, k, v, o_ref, NULL);
    for (size_t i = 0; i < nq; i++) err = fabs(o[i] - o_ref[i]) > err ? fabs(o[i] - o_ref[i]) : err;
    for (int t = 0; t < 6; t++) { /* two elements each of dq, dk, dv */
        float *x = t < 2 ? q : t < 4 ? k : v, *g = t < 2 ? dq : t < 4 ? dk : dv, save;
        size_t i = (size_t)rand() % (t < 2 ? nq : nkv);
        const float h = 1e-2f;
        double fd;
        save = x[i];
        x[i] = save + h;
        fd = loss(&d, q, k, v, dout, o_ref, nq);
        x[i] = save - h;
        fd = (fd - loss(&d, q, k, v, dout, o_ref, nq)) / (2.0 * h);
        x[i] = save;
        grad_err = fabs(fd - g[i]) / (1 + fabs(fd)) > grad_err ? fabs(fd - g[i]) / (1 + fabs(fd)) : grad_err;
    }
    flops = 4.0 * d.batch * d.heads * (double)d.len_q * d.len_q * d.head_dim * 0.5;
    printf("causal GQA attention B=%d Hq=%d Hkv=%d N=%d D=%d\n", d.batch, d.heads, d.kv_heads, d.len_q, d.head_dim);
    printf("forward : max |o - reference| = %.2e   %.2f ms  %.1f GFLOP/s\n", err, t_fwd * 1e3, flops / t_fwd * 1e-9);
    printf("backward: max rel. gradient error vs central differences = %.2e   %.2f ms  %.1f GFLOP/s\n", grad_err,
           t_bwd * 1e3, 2.5 * flops / t_bwd * 1e-9);
    free(q); free(k); free(v); free(o); free(o_ref); free(lse); free(dout); free(dq); free(dk); free(dv);
    if (err < 1e-5 && grad_err < 1e-2) {
        printf("ok: forward within 1e-5 of the double-precision reference, gradients within 1e-2 (relative)\n"
               "    of central differences (float32 differences with h = 1e-2 are only that exact)\n");
        return 0;
    }
    printf("FAIL: forward error above 1e-5 or gradient error above 1e-2\n");
    return 1;
}

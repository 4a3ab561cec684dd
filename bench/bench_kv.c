/* bench_kv.c - attention over the paged KV cache.
   Decode: 32 sequences x 4096 positions, Hq 32, Hkv 8, D 128, one layer,
   blocks of 16 positions, for each storage type; GB/s counts the cache bytes
   the call reads (K and V of every position), as a fraction of the copy
   bandwidth measured in the same run. The cache (0.17-1 GiB) is far larger
   than L3, so this is the DRAM-bound case.
   Prefill: one 4096-token prompt attended in chunks of 512 (each chunk over
   the cache so far) vs all at once; GFLOP/s counts the causal 2*2*D*Hq*i.
   Split-KV: one sequence of 32768 positions decoded (runs of 4096 keys in
   parallel), against the copy bandwidth and against one thread.
   Cascade: 32 sequences forked from a 4096-token prompt with 128 own tokens
   each, one decode step batched (the shared blocks read once) against the
   plain per-sequence calls (each reading its whole cache). */
#include "bench.h"

#define DEC_SEQS 32
#define DEC_LEN 4096
#define DEC_HQ 32
#define DEC_HKV 8
#define DEC_D 128
#define BLOCK 16

static const char *type_name[4] = {"F32", "F16", "Q8", "Q4"};

typedef struct kv_ctx {
    mlk_kv_cache *c;
    int n_seqs, heads, n_chunks, chunk;
    int seqs[DEC_SEQS], n_q[DEC_SEQS];
    float *q, *o;
} kv_ctx;

static void run_attn(void *p)
{
    kv_ctx *x = (kv_ctx *)p;
    mlk_kv_attn(x->c, 0, x->n_seqs, x->seqs, x->n_q, x->q, x->heads, 0.0f, NULL, x->o);
}

/* Chunked prefill replayed over a filled cache: chunk i attends as the
   sequence's newest `chunk` positions with the cache truncated to its end. */
static void run_chunked(void *p)
{
    kv_ctx *x = (kv_ctx *)p;
    for (int i = 0; i < x->n_chunks; i++) {
        int n_q = x->chunk, seq = x->seqs[i];
        size_t at = (size_t)i * x->chunk * x->heads * DEC_D;
        mlk_kv_attn(x->c, 0, 1, &seq, &n_q, x->q + at, x->heads, 0.0f, NULL, x->o + at);
    }
}

static float *random_floats(size_t n)
{
    float *x = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)rand() / RAND_MAX - 0.5);
    return x;
}

static mlk_kv_cache *make_cache(mlk_kv_type type, int hkv, int num_blocks, int max_seqs)
{
    mlk_kv_config cfg;
    mlk_kv_cache *c = NULL;
    cfg.layers = 1;
    cfg.kv_heads = hkv;
    cfg.head_dim = DEC_D;
    cfg.block_size = BLOCK;
    cfg.num_blocks = num_blocks;
    cfg.max_seqs = max_seqs;
    cfg.type = type;
    if (mlk_kv_create(&cfg, &c) != MLK_OK) {
        fprintf(stderr, "bench_kv: cannot create the cache\n");
        exit(1);
    }
    return c;
}

/* New sequence of len positions holding kv ([len, hkv, D] for K, then V). */
static int fill_seq(mlk_kv_cache *c, int len, const float *k, const float *v)
{
    int seq = -1;
    mlk_kv_seq_new(c, &seq);
    mlk_kv_append(c, seq, len);
    mlk_kv_store(c, seq, 0, 0, len, k, v);
    return seq;
}

static void bench_decode(bench_roof roof)
{
    size_t per_seq = (size_t)DEC_LEN * DEC_HKV * DEC_D;
    float *k = random_floats(per_seq), *v = random_floats(per_seq);
    kv_ctx x;
    x.n_seqs = DEC_SEQS;
    x.heads = DEC_HQ;
    x.q = random_floats((size_t)DEC_SEQS * DEC_HQ * DEC_D);
    x.o = (float *)malloc(sizeof(float) * DEC_SEQS * DEC_HQ * DEC_D);
    for (int t = 0; t < 4; t++) {
        mlk_kv_config cfg;
        char shape[64];
        double bytes, gbs;
        bench_result r;
        memset(&cfg, 0, sizeof cfg);
        cfg.layers = 1;
        cfg.block_size = BLOCK;
        cfg.num_blocks = 1;
        cfg.max_seqs = 1;
        x.c = make_cache((mlk_kv_type)t, DEC_HKV, DEC_SEQS * DEC_LEN / BLOCK, DEC_SEQS);
        for (int s = 0; s < DEC_SEQS; s++) {
            x.seqs[s] = fill_seq(x.c, DEC_LEN, k, v);
            x.n_q[s] = 1;
        }
        cfg.kv_heads = DEC_HKV;
        cfg.head_dim = DEC_D;
        cfg.type = (mlk_kv_type)t;
        bytes = (double)mlk_kv_bytes_per_token(&cfg) * DEC_SEQS * DEC_LEN;
        snprintf(shape, sizeof shape, "%s %dx%d Hq%d Hkv%d D%d", type_name[t], DEC_SEQS, DEC_LEN, DEC_HQ, DEC_HKV, DEC_D);
        bench_progress(shape);
        r = bench_time(run_attn, &x, 9);
        gbs = bytes / r.median_s * 1e-9;
        bench_report("kv_decode_attn", shape, r, gbs, "GB/s", gbs / roof.copy_gbs);
        mlk_kv_destroy(x.c);
    }
    free(k); free(v); free(x.q); free(x.o);
}

static void bench_prefill(bench_roof roof)
{
    const int len = 4096, chunk = 512, hq = 8, hkv = 2, n_chunks = len / chunk;
    size_t per_seq = (size_t)len * hkv * DEC_D;
    float *k = random_floats(per_seq), *v = random_floats(per_seq);
    double flops = 0;
    bench_result full, chunked;
    char shape[64];
    kv_ctx x;
    for (int i = 0; i < len; i++) flops += 4.0 * DEC_D * hq * (i + 1);
    x.heads = hq;
    x.chunk = chunk;
    x.n_chunks = n_chunks;
    x.q = random_floats((size_t)len * hq * DEC_D);
    x.o = (float *)malloc(sizeof(float) * (size_t)len * hq * DEC_D);
    x.c = make_cache(MLK_KV_F16, hkv, (n_chunks + 1) * len / BLOCK, n_chunks + 1);
    /* sequence i holds the prompt up to the end of chunk i: what the cache
       holds when chunk i is attended */
    for (int i = 0; i < n_chunks; i++) x.seqs[i] = fill_seq(x.c, (i + 1) * chunk, k, v);
    bench_progress("prefill chunked");
    chunked = bench_time(run_chunked, &x, 5);
    x.seqs[0] = fill_seq(x.c, len, k, v);
    x.n_seqs = 1;
    x.n_q[0] = len;
    bench_progress("prefill full");
    full = bench_time(run_attn, &x, 5);
    snprintf(shape, sizeof shape, "F16 N%d Hq%d Hkv%d D%d full", len, hq, hkv, DEC_D);
    bench_report("kv_prefill_attn", shape, full, flops / full.median_s * 1e-9, "GFLOP/s",
                 flops / full.median_s * 1e-9 / roof.sgemm_gflops);
    snprintf(shape, sizeof shape, "F16 N%d Hq%d Hkv%d D%d chunk%d", len, hq, hkv, DEC_D, chunk);
    bench_report("kv_prefill_attn", shape, chunked, flops / chunked.median_s * 1e-9, "GFLOP/s",
                 flops / chunked.median_s * 1e-9 / roof.sgemm_gflops);
    printf("  chunked / full prefill time: %.3f (target <= 1.2)\n", chunked.median_s / full.median_s);
    mlk_kv_destroy(x.c);
    free(k); free(v); free(x.q); free(x.o);
}

typedef struct split_ctx { mlk_kv_cache *c; int seq, n_q; float *q, *o; mlk_kv_attn_opts opts; } split_ctx;

static void run_split(void *p)
{
    split_ctx *x = (split_ctx *)p;
    mlk_kv_attn_opt(x->c, 0, 1, &x->seq, &x->n_q, x->q, DEC_HQ, &x->opts, x->o, NULL);
}

static void bench_split(bench_roof roof)
{
    const int len = 32768;
    size_t per_seq = (size_t)len * DEC_HKV * DEC_D;
    float *k = random_floats(per_seq), *v = random_floats(per_seq);
    split_ctx x;
    mlk_kv_config cfg;
    bench_result all, one;
    double bytes;
    char shape[64];
    memset(&x, 0, sizeof x);
    x.c = make_cache(MLK_KV_F16, DEC_HKV, len / BLOCK, 1);
    x.seq = fill_seq(x.c, len, k, v);
    x.n_q = 1;
    x.q = random_floats((size_t)DEC_HQ * DEC_D);
    x.o = (float *)malloc(sizeof(float) * DEC_HQ * DEC_D);
    memset(&cfg, 0, sizeof cfg);
    cfg.layers = 1; cfg.block_size = BLOCK; cfg.num_blocks = 1; cfg.max_seqs = 1;
    cfg.kv_heads = DEC_HKV; cfg.head_dim = DEC_D; cfg.type = MLK_KV_F16;
    bytes = (double)mlk_kv_bytes_per_token(&cfg) * len;
    bench_progress("split-KV decode");
    all = bench_time(run_split, &x, 15);
    x.opts.threads = 1;
    one = bench_time(run_split, &x, 15);
    snprintf(shape, sizeof shape, "F16 1x%d Hq%d Hkv%d D%d", len, DEC_HQ, DEC_HKV, DEC_D);
    bench_report("kv_decode_split", shape, all, bytes / all.median_s * 1e-9, "GB/s",
                 bytes / all.median_s * 1e-9 / roof.copy_gbs);
    printf("  split-KV decode: %.2fx the time on one thread (%d threads)\n", one.median_s / all.median_s,
           mlk__max_threads());
    mlk_kv_destroy(x.c);
    free(k); free(v); free(x.q); free(x.o);
}

/* One plain decode call per sequence: each reads its whole cache. */
static void run_per_sequence(void *p)
{
    kv_ctx *x = (kv_ctx *)p;
    for (int s = 0; s < x->n_seqs; s++) {
        int one = 1;
        size_t at = (size_t)s * x->heads * DEC_D;
        mlk_kv_attn(x->c, 0, 1, &x->seqs[s], &one, x->q + at, x->heads, 0.0f, NULL, x->o + at);
    }
}

static void bench_cascade(bench_roof roof)
{
    const int prompt = 4096, own = 128;
    size_t per_prompt = (size_t)prompt * DEC_HKV * DEC_D, per_own = (size_t)own * DEC_HKV * DEC_D;
    float *k = random_floats(per_prompt), *v = random_floats(per_prompt);
    float *k_own = random_floats(per_own), *v_own = random_floats(per_own);
    bench_result batched, plain;
    kv_ctx x;
    char shape[80];
    x.n_seqs = DEC_SEQS;
    x.heads = DEC_HQ;
    x.q = random_floats((size_t)DEC_SEQS * DEC_HQ * DEC_D);
    x.o = (float *)malloc(sizeof(float) * DEC_SEQS * DEC_HQ * DEC_D);
    x.c = make_cache(MLK_KV_F16, DEC_HKV, (prompt + DEC_SEQS * own) / BLOCK + DEC_SEQS, DEC_SEQS);
    x.seqs[0] = fill_seq(x.c, prompt, k, v);
    for (int s = 1; s < DEC_SEQS; s++) mlk_kv_seq_fork(x.c, x.seqs[0], &x.seqs[s]);
    for (int s = 0; s < DEC_SEQS; s++) {
        mlk_kv_append(x.c, x.seqs[s], own);
        mlk_kv_store(x.c, x.seqs[s], 0, prompt, own, k_own, v_own);
        x.n_q[s] = 1;
    }
    bench_progress("cascade decode");
    batched = bench_time(run_attn, &x, 9);
    plain = bench_time(run_per_sequence, &x, 9);
    snprintf(shape, sizeof shape, "F16 %dx(%d shared + %d) Hq%d Hkv%d D%d", DEC_SEQS, prompt, own, DEC_HQ, DEC_HKV, DEC_D);
    bench_report("kv_decode_cascade", shape, batched, 1e-3 / batched.median_s, "steps/ms", 0);
    bench_report("kv_decode_plain", shape, plain, 1e-3 / plain.median_s, "steps/ms", 0);
    printf("  cascade decode: %.2fx faster than per-sequence decode (target >= 3x)\n", plain.median_s / batched.median_s);
    (void)roof;
    mlk_kv_destroy(x.c);
    free(k); free(v); free(k_own); free(v_own); free(x.q); free(x.o);
}

int main(void)
{
    bench_roof roof = bench_roofline();
    printf("KV cache bytes per token per layer, Hkv %d, D %d:", DEC_HKV, DEC_D);
    for (int t = 0; t < 4; t++) {
        mlk_kv_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.layers = 1;
        cfg.block_size = BLOCK;
        cfg.num_blocks = 1;
        cfg.max_seqs = 1;
        cfg.kv_heads = DEC_HKV;
        cfg.head_dim = DEC_D;
        cfg.type = (mlk_kv_type)t;
        printf("  %s %zu", type_name[t], mlk_kv_bytes_per_token(&cfg));
    }
    printf("\n");
    bench_decode(roof);
    bench_prefill(roof);
    bench_split(roof);
    bench_cascade(roof);
    return 0;
}

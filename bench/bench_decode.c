/* bench_decode.c - decoding on the example model (examples/tinylm.h): greedy
   vs tree speculative decoding with the model truncated to its first layer
   as the draft and trees of 7 nodes, so each verify call is an 8-row small-m
   sgemm per weight (tokens/s, mean accepted length, speedup), and the per-step
   cost of mlk_beam_search itself at batch 8 x beam 4 x vocab 32000 with the
   model's time (the callback) subtracted. */
#include "bench.h"
#include "examples/tinylm.h"

#define PROMPT_LEN 12
#define MAX_NEW 64

typedef struct decode_ctx {
    tinylm *m;
    int32_t prompt[PROMPT_LEN], out[MAX_NEW];
    float *logits;
    int n_out, depth;
    mlk_spec_stats stats;
} decode_ctx;

static void run_greedy(void *p)
{
    decode_ctx *x = (decode_ctx *)p;
    x->n_out = tinylm_greedy(x->m, x->prompt, PROMPT_LEN, PROMPT_LEN, MAX_NEW, -1, x->logits, x->out);
}

static void run_speculative(void *p)
{
    decode_ctx *x = (decode_ctx *)p;
    if (tinylm_speculate(x->m, 1, x->depth, x->prompt, PROMPT_LEN, PROMPT_LEN, MAX_NEW, -1, x->logits, x->out,
                         &x->n_out, &x->stats) != MLK_OK)
        x->n_out = -1;
}

/* Beam search with a model that costs only a copy of fixed logits; the
   copies are timed and subtracted. */
enum { BEAM_BATCH = 8, BEAM_WIDTH = 4, BEAM_VOCAB = 32000, BEAM_STEPS = 16 };

typedef struct beam_ctx {
    float *table; /* [BEAM_BATCH * BEAM_WIDTH, vocab] */
    double callback_s;
    int steps;
    int32_t tokens[BEAM_BATCH * BEAM_WIDTH * BEAM_STEPS];
    int len[BEAM_BATCH * BEAM_WIDTH];
} beam_ctx;

static int beam_fixed_logits(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens,
                             float *logits)
{
    beam_ctx *b = (beam_ctx *)user;
    double t0 = bench_now();
    (void)parent; (void)seqs; (void)lens;
    memcpy(logits, b->table, (size_t)n * BEAM_VOCAB * sizeof(float));
    b->callback_s += bench_now() - t0;
    b->steps++;
    return 0;
}

static void run_beam(void *p)
{
    beam_ctx *b = (beam_ctx *)p;
    static int32_t prompt_buf[BEAM_BATCH][4];
    const int32_t *prompts[BEAM_BATCH];
    int plens[BEAM_BATCH];
    mlk_beam_config cfg;
    cfg.beam_width = BEAM_WIDTH; cfg.vocab = BEAM_VOCAB; cfg.eos_id = -1;
    cfg.max_new_tokens = BEAM_STEPS; cfg.num_return = BEAM_WIDTH; cfg.length_penalty = 1.0f;
    for (int i = 0; i < BEAM_BATCH; i++) {
        prompt_buf[i][0] = i; prompt_buf[i][1] = 2 * i; prompt_buf[i][2] = 3; prompt_buf[i][3] = 4;
        prompts[i] = prompt_buf[i];
        plens[i] = 4;
    }
    mlk_beam_search(&cfg, BEAM_BATCH, prompts, plens, beam_fixed_logits, b, b->tokens, b->len, NULL, NULL);
}

int main(void)
{
    tinylm_config cfg;
    tinylm m;
    decode_ctx x;
    beam_ctx bc;
    bench_result r_greedy, r_spec, r_beam;
    uint64_t rng = 5;
    char shape[96];
    int32_t greedy_out[MAX_NEW];
    double tok_greedy, tok_spec;

    bench_roofline();
    /* 170 MB of weights: a decode step streams them from memory, as in a real
       LLM, instead of re-reading small cache-resident matrices */
    cfg.vocab = 2048; cfg.dim = 768; cfg.layers = 6; cfg.heads = 8; cfg.kv_heads = 2; cfg.head_dim = 96;
    cfg.ffn = 2304; cfg.max_ctx = 256; cfg.max_tokens = 64; cfg.max_seqs = 8;
    cfg.first_scale = 16.0f; cfg.tail_scale = 0.5f; cfg.logit_scale = 0.25f; cfg.seed = 1;
    if (tinylm_init(&m, &cfg) != MLK_OK) return 1;
    memset(&x, 0, sizeof x);
    x.m = &m;
    x.depth = 4;
    x.logits = (float *)malloc((size_t)(cfg.max_tokens + 1) * cfg.vocab * sizeof(float));
    for (int i = 0; i < PROMPT_LEN; i++) x.prompt[i] = (int32_t)(tinylm_rng_next(&rng) % (uint64_t)cfg.vocab);
    snprintf(shape, sizeof shape, "d%d L%d v%d %d+%dtok", cfg.dim, cfg.layers, cfg.vocab, PROMPT_LEN, MAX_NEW);

    bench_progress("greedy decoding");
    r_greedy = bench_time(run_greedy, &x, 5);
    memcpy(greedy_out, x.out, sizeof greedy_out);
    tok_greedy = MAX_NEW / r_greedy.median_s;
    bench_report("decode_greedy", shape, r_greedy, tok_greedy, "tok/s", 0);
    bench_progress("speculative decoding");
    r_spec = bench_time(run_speculative, &x, 5);
    tok_spec = MAX_NEW / r_spec.median_s;
    bench_report("decode_speculative", shape, r_spec, tok_spec, "tok/s", 0);
    bench_progress_done();
    printf("  draft: layer 1 of %d, chain %d + runner-ups (7 nodes); %d target calls for %d tokens, mean accepted "
           "length %.2f (+1 bonus); speedup %.2fx; output %s greedy\n", cfg.layers, x.depth, x.stats.target_calls,
           x.n_out, (double)x.stats.mean_accepted, tok_spec / tok_greedy,
           x.n_out == MAX_NEW && memcmp(x.out, greedy_out, sizeof greedy_out) == 0 ? "equals" : "DIFFERS FROM");
    free(x.logits);
    tinylm_free(&m);

    memset(&bc, 0, sizeof bc);
    bc.table = (float *)malloc((size_t)BEAM_BATCH * BEAM_WIDTH * BEAM_VOCAB * sizeof(float));
    for (size_t i = 0; i < (size_t)BEAM_BATCH * BEAM_WIDTH * BEAM_VOCAB; i++)
        bc.table[i] = (float)((tinylm_rng_next(&rng) >> 40) * (8.0 / 16777216.0) - 4.0);
    bench_progress("beam search");
    {
        double t[9];
        for (int rep = 0; rep < 9; rep++) { /* search time minus the callbacks', per step */
            double t0;
            bc.callback_s = 0;
            bc.steps = 0;
            t0 = bench_now();
            run_beam(&bc);
            t[rep] = (bench_now() - t0 - bc.callback_s) / bc.steps;
        }
        qsort(t, 9, sizeof t[0], bench_cmp_double);
        r_beam.median_s = t[4];
        r_beam.min_s = t[0];
    }
    bench_progress_done();
    snprintf(shape, sizeof shape, "b%d w%d v%d", BEAM_BATCH, BEAM_WIDTH, BEAM_VOCAB);
    bench_report("beam_search_step", shape, r_beam, r_beam.median_s * 1e6, "us/step", 0);
    free(bc.table);
    return 0;
}

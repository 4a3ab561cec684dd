/* mlp_sample.c - the last steps of a language model, end to end:
   hidden states -> layer norm -> output projection (sgemm) -> top-k
   probabilities and token sampling, on random weights with a fixed seed.
   It prints the five most likely tokens of each position, the tokens a few
   common sampler settings draw, and checks the probabilities against a naive
   double-precision computation.

   Build: cc -O2 -march=native -I. examples/mlp_sample.c -lm   (make runs it) */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { POSITIONS = 4, HIDDEN = 256, VOCAB = 5000, TOP = 5 };

static uint64_t seed = 2024;

/* uniform in [-1, 1) from splitmix64: the same weights on every machine */
static float rand_sym(void)
{
    uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 4503599627370496.0 - 1.0);
}

static float *random_floats(size_t n, float scale)
{
    float *p = (float *)malloc(n * sizeof(float));
    size_t i;
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (i = 0; i < n; i++) p[i] = scale * rand_sym();
    return p;
}

static void check(mlk_status st, const char *what)
{
    if (st == MLK_OK) return;
    fprintf(stderr, "%s failed: %s\n", what, mlk_status_str(st));
    exit(1);
}

/* The probabilities of position `pos` computed the slow way, in double:
   layer norm, the dot products, softmax over the vocabulary. */
static void naive_probs(const float *hidden, const float *gamma, const float *beta,
                        const float *w_out, int pos, double *prob)
{
    const float *h = hidden + (size_t)pos * HIDDEN;
    double mean = 0, var = 0, rstd, normed[HIDDEN], max_logit = -INFINITY, sum = 0;
    int i, v;
    for (i = 0; i < HIDDEN; i++) mean += h[i];
    mean /= HIDDEN;
    for (i = 0; i < HIDDEN; i++) var += (h[i] - mean) * (h[i] - mean);
    rstd = 1.0 / sqrt(var / HIDDEN + 1e-5);
    for (i = 0; i < HIDDEN; i++) normed[i] = (h[i] - mean) * rstd * gamma[i] + beta[i];
    for (v = 0; v < VOCAB; v++) {
        prob[v] = 0;
        for (i = 0; i < HIDDEN; i++) prob[v] += normed[i] * w_out[(size_t)i * VOCAB + v];
        if (prob[v] > max_logit) max_logit = prob[v];
    }
    for (v = 0; v < VOCAB; v++) sum += prob[v] = exp(prob[v] - max_logit);
    for (v = 0; v < VOCAB; v++) prob[v] /= sum;
}

int main(void)
{
    float *hidden = random_floats((size_t)POSITIONS * HIDDEN, 3.0f);
    float *gamma = random_floats(HIDDEN, 0.2f), *beta = random_floats(HIDDEN, 0.1f);
    float *w_out = random_floats((size_t)HIDDEN * VOCAB, 0.25f);
    float *normed = random_floats((size_t)POSITIONS * HIDDEN, 0.0f);
    float *logits = random_floats((size_t)POSITIONS * VOCAB, 0.0f);
    float probs[POSITIONS * TOP], worst = 0;
    double *want = (double *)malloc(VOCAB * sizeof(double));
    int32_t top[POSITIONS * TOP], tokens[POSITIONS];
    uint64_t rng = 42;
    mlk_sampler settings[4];
    const char *names[4] = {"greedy (temperature 0)", "temperature 0.8, top_k 40",
                            "temperature 1.0, top_p 0.9", "temperature 1.5, min_p 0.1"};
    int pos, j, s, draw;

    for (j = 0; j < HIDDEN; j++) gamma[j] += 1.0f; /* gamma near 1, as after training */

    /* logits = layernorm(hidden) . w_out */
    check(mlk_layernorm_fwd(POSITIONS, HIDDEN, hidden, gamma, beta, 1e-5f, normed, NULL, NULL), "layernorm");
    check(mlk_sgemm(0, 0, POSITIONS, VOCAB, HIDDEN, 1.0f, normed, HIDDEN, w_out, VOCAB, 0.0f, logits, VOCAB),
          "sgemm");

    printf("A random-weight output head: %d positions, hidden size %d, vocabulary %d.\n\n",
           POSITIONS, HIDDEN, VOCAB);
    check(mlk_topk_softmax(POSITIONS, VOCAB, logits, 1.0f, TOP, probs, top), "topk_softmax");
    if (!want) return 1;
    for (pos = 0; pos < POSITIONS; pos++) {
        naive_probs(hidden, gamma, beta, w_out, pos, want);
        printf("position %d, the %d most likely next tokens:", pos, TOP);
        for (j = 0; j < TOP; j++) {
            float p = probs[pos * TOP + j];
            float err = (float)fabs(p - want[top[pos * TOP + j]]);
            if (err > worst) worst = err;
            printf("  #%d %5.2f%%", (int)top[pos * TOP + j], 100.0 * p);
        }
        printf("\n");
    }
    printf("largest difference from a naive double-precision computation: %.1e\n", (double)worst);
    printf(worst < 1e-4f ? "ok: top-5 probabilities within 1e-4 of the double-precision reference\n\n"
                         : "FAIL: top-5 probabilities differ from the double-precision reference by 1e-4 or more\n\n");

    settings[0].temperature = 0.0f; settings[0].top_k = 0;  settings[0].top_p = 1.0f; settings[0].min_p = 0.0f;
    settings[1].temperature = 0.8f; settings[1].top_k = 40; settings[1].top_p = 1.0f; settings[1].min_p = 0.0f;
    settings[2].temperature = 1.0f; settings[2].top_k = 0;  settings[2].top_p = 0.9f; settings[2].min_p = 0.0f;
    settings[3].temperature = 1.5f; settings[3].top_k = 0;  settings[3].top_p = 1.0f; settings[3].min_p = 0.1f;
    printf("Tokens drawn for positions 0..%d, five draws per sampler (rng state starts at 42):\n", POSITIONS - 1);
    for (s = 0; s < 4; s++) {
        printf("  %-28s", names[s]);
        for (draw = 0; draw < 5; draw++) {
            check(mlk_sample(POSITIONS, VOCAB, logits, &settings[s], &rng, tokens), "sample");
            printf(" [");
            for (pos = 0; pos < POSITIONS; pos++) printf("%s%d", pos ? " " : "", (int)tokens[pos]);
            printf("]");
        }
        printf("\n");
    }
    printf("Greedy always picks the top token above; the other samplers draw from the\n"
           "tokens their filter keeps, so the same rng state reproduces the same draws.\n");

    free(want); free(hidden); free(gamma); free(beta); free(w_out); free(normed); free(logits);
    return worst < 1e-4f ? 0 : 1;
}

/* ======================================================================
   softmax, top-k, sampling
   ====================================================================== */

MLKERN_DEF mlk_status mlk_softmax(int rows, int n, const float *x, float *y);
MLKERN_DEF mlk_status mlk_log_softmax(int rows, int n, const float *x, float *y);
/* probs/idx: [rows, k], sorted by descending probability, ties to the lower
   index; probabilities of softmax(logits / temperature) over the full row. */
MLKERN_DEF mlk_status mlk_topk_softmax(int rows, int n, const float *logits,
    float temperature, int k, float *probs, int32_t *idx);
MLKERN_DEF mlk_status mlk_topk_log_softmax(int rows, int n, const float *logits,
    int k, float *logprobs, int32_t *idx);

typedef struct mlk_sampler {
    float temperature; /* 0 = greedy */
    int top_k;         /* 0 = off */
    float top_p;       /* >= 1 = off */
    float min_p;       /* 0 = off */
} mlk_sampler;
MLKERN_DEF mlk_status mlk_sample(int rows, int n, const float *logits,
    const mlk_sampler *s, uint64_t *rng_state, int32_t *out);

/* ======================================================================
   softmax, top-k, sampling
   ====================================================================== */

/* Row-wise softmax / log-softmax of x [rows, n] into y. -inf entries give 0
   (log: -inf); a row with a NaN or +inf, or all -inf, is MLK_ERR_VALUE and
   then y is untouched. */
MLKERN_DEF mlk_status mlk_softmax(int rows, int n, const float *x, float *y);
MLKERN_DEF mlk_status mlk_log_softmax(int rows, int n, const float *x, float *y);
/* The k (1..n) most probable tokens of softmax(logits / temperature) over the
   full row, in one pass over the logits: probs / idx [rows, k], sorted by
   descending probability, ties to the lower index. temperature > 0. */
MLKERN_DEF mlk_status mlk_topk_softmax(int rows, int n, const float *logits,
    float temperature, int k, float *probs, int32_t *idx);
/* The same with log-probabilities (temperature 1). */
MLKERN_DEF mlk_status mlk_topk_log_softmax(int rows, int n, const float *logits,
    int k, float *logprobs, int32_t *idx);

/* Sampler settings, applied in this order, each on what the previous left. */
typedef struct mlk_sampler {
    float temperature; /* 0 = greedy (argmax, ties to the lower index) */
    int top_k;         /* keep the k most probable; 0 (or >= n) = off */
    float top_p;       /* keep the fewest most probable tokens reaching top_p of the mass; >= 1 = off */
    float min_p;       /* keep tokens with p >= min_p * p_max; 0 = off */
} mlk_sampler;
/* Draws one token per row of logits [rows, n] into out [rows]. The PRNG is
   splitmix64: row r uses z = mix(*rng_state + (r + 1) * 0x9E3779B97F4A7C15),
   mix(z) = z ^= z >> 30, z *= 0xBF58476D1CE4E5B9, z ^= z >> 27,
   z *= 0x94D049BB133111EB, z ^= z >> 31, and u = (z >> 11) * 2^-53; on
   success *rng_state advances by rows * 0x9E3779B97F4A7C15 (one draw per
   row, greedy too). The token is the first whose running weight exceeds u
   times the kept total, walking the kept tokens by descending probability
   (ties: lower index) when top_k or top_p is on, else in index order. */
MLKERN_DEF mlk_status mlk_sample(int rows, int n, const float *logits,
    const mlk_sampler *s, uint64_t *rng_state, int32_t *out);

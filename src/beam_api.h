/* ======================================================================
   beam search
   ====================================================================== */

typedef int (*mlk_logits_fn)(void *user, int n, const int *parent,
    const int32_t *const *seqs, const int *lens, float *logits);
typedef struct mlk_beam_config {
    int beam_width, vocab, eos_id, max_new_tokens, num_return;
    float length_penalty;
} mlk_beam_config;
MLKERN_DEF mlk_status mlk_beam_search(const mlk_beam_config *cfg, int batch,
    const int32_t *const *prompts, const int *prompt_lens,
    mlk_logits_fn fn, void *user, int32_t *out_tokens, int *out_len,
    float *out_logprob, float *out_score);

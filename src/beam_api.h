/* ======================================================================
   beam search
   ====================================================================== */

/* Model callback of mlk_beam_search: fill logits [n, vocab] for n live
   sequences (seqs[i]: prompt + generated tokens, lens[i] long). parent[i] is
   the index, in the previous call, of the sequence that seqs[i] extends (-1
   at the first call), so a stateful model can fork its KV cache. Return 0,
   or non-zero to abort the search. */
typedef int (*mlk_logits_fn)(void *user, int n, const int *parent,
    const int32_t *const *seqs, const int *lens, float *logits);
/* eos_id: the end token in [0, vocab), or -1 for none. num_return <= beam_width.
   score = logprob / len^length_penalty, len counting generated tokens with EOS. */
typedef struct mlk_beam_config {
    int beam_width, vocab, eos_id, max_new_tokens, num_return;
    float length_penalty;
} mlk_beam_config;
/* Pool beam search: finished hypotheses keep competing on their frozen score;
   each step keeps the beam_width best of finished + expansions. One callback
   call per step covers the live beams of every item, grouped by item.
   Outputs, ranked per item: out_tokens [batch, num_return, max_new_tokens]
   (-1 past out_len), out_len [batch, num_return]; out_logprob, out_score
   [batch, num_return] or NULL (-inf for missing hypotheses). */
MLKERN_DEF mlk_status mlk_beam_search(const mlk_beam_config *cfg, int batch,
    const int32_t *const *prompts, const int *prompt_lens,
    mlk_logits_fn fn, void *user, int32_t *out_tokens, int *out_len,
    float *out_logprob, float *out_score);

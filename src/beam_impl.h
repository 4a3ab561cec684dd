/* ======================================================================
   beam search
   ====================================================================== */

#ifdef __cplusplus
extern "C" {
#endif

/* One hypothesis of an item's pool; the pool is kept sorted, so a slot's
   index is its rank. */
typedef struct mlk__beam_hyp {
    double logprob, score;
    int len;         /* generated tokens, EOS included */
    int finished;
    int parent_call; /* index, in the previous callback call, of the sequence it extends */
    int call_idx;    /* its own index in the current call (live hypotheses only) */
} mlk__beam_hyp;

/* A candidate for the next pool: a finished hypothesis kept as it is
   (token -1) or the expansion of live hypothesis `rank` by `token`. */
typedef struct mlk__beam_cand {
    double logprob, score;
    int finished, rank, token;
} mlk__beam_cand;

/* The contract's order: higher score, then finished, then lower parent rank,
   then lower token id. */
static int mlk__beam_better(const mlk__beam_cand *a, const mlk__beam_cand *b)
{
    if (a->score != b->score) return a->score > b->score;
    if (a->finished != b->finished) return a->finished;
    if (a->rank != b->rank) return a->rank < b->rank;
    return a->token < b->token;
}

/* Inserts c into best[0..*n) (sorted, at most cap entries) if it makes the cut. */
static void mlk__beam_offer(mlk__beam_cand *best, int *n, int cap, const mlk__beam_cand *c)
{
    int pos = *n;
    while (pos > 0 && mlk__beam_better(c, &best[pos - 1])) pos--;
    if (pos >= cap) return;
    if (*n < cap) (*n)++;
    memmove(best + pos + 1, best + pos, (size_t)(*n - 1 - pos) * sizeof *best);
    best[pos] = *c;
}

/* Offers the k best expansions of live hypothesis h (rank r): lp, idx from
   mlk_topk_log_softmax over its logits row. */
static void mlk__beam_expand(mlk__beam_cand *best, int *n_best, int bw, const mlk__beam_hyp *h, int r,
                             const float *lp, const int32_t *idx, int k, const float *logits, int vocab,
                             int eos_id, double len_pen)
{
    mlk__beam_cand c;
    int eos_seen = 0;
    c.rank = r;
    for (int j = 0; j < k && lp[j] != -INFINITY; j++) { /* -inf: masked, impossible */
        c.token = idx[j];
        c.logprob = h->logprob + (double)lp[j];
        c.score = c.logprob / len_pen;
        c.finished = c.token == eos_id;
        eos_seen |= c.finished;
        mlk__beam_offer(best, n_best, bw, &c);
    }
    /* top-k breaks ties by lower index, the search by finished first: an EOS
       tied with the last of the k is a candidate too. */
    if (eos_id >= 0 && !eos_seen && k < vocab && lp[k - 1] != -INFINITY &&
        logits[eos_id] == logits[idx[k - 1]]) {
        c.token = eos_id;
        c.logprob = h->logprob + (double)lp[k - 1];
        c.score = c.logprob / len_pen;
        c.finished = 1;
        mlk__beam_offer(best, n_best, bw, &c);
    }
}

MLKERN_DEF mlk_status mlk_beam_search(const mlk_beam_config *cfg, int batch,
    const int32_t *const *prompts, const int *prompt_lens,
    mlk_logits_fn fn, void *user, int32_t *out_tokens, int *out_len,
    float *out_logprob, float *out_score)
{
    int bw, vocab, max_new, k, cur = 0, step;
    size_t slots, n_logits, n_check, seq_total = 0, need = 0, i;
    mlk__arena arena;
    int32_t *seq[2], *top_idx;
    size_t *item_off;
    mlk__beam_hyp *hyp[2];
    int *pool_n[2], *live_lens, *live_parent;
    const int32_t **live_seqs;
    float *logits, *top_lp;
    mlk__beam_cand *best;
    mlk_status st;

    if (!cfg || !prompts || !prompt_lens || !fn || !out_tokens || !out_len) return MLK_ERR_NULL;
    bw = cfg->beam_width;
    vocab = cfg->vocab;
    max_new = cfg->max_new_tokens;
    if (batch < 1 || bw < 1 || vocab < 1 || max_new < 1 || cfg->num_return < 1 ||
        cfg->num_return > bw)
        return MLK_ERR_SHAPE;
    if (cfg->eos_id < -1 || cfg->eos_id >= vocab || !isfinite(cfg->length_penalty))
        return MLK_ERR_ARG;
    for (int b = 0; b < batch; b++) {
        size_t item;
        if (!prompts[b]) return MLK_ERR_NULL;
        if (prompt_lens[b] < 1) return MLK_ERR_SHAPE;
        if (prompt_lens[b] > INT_MAX - max_new) return MLK_ERR_OVERFLOW;
        if (!mlk__mul_ok((size_t)bw, (size_t)(prompt_lens[b] + max_new), &item) ||
            seq_total > SIZE_MAX / sizeof(int32_t) / 2 - item)
            return MLK_ERR_OVERFLOW;
        seq_total += item;
    }
    /* Under pool semantics the best beam_width expansions of each beam are
       enough: expansions of one beam share a length, so a beam's later tokens
       lose to its earlier ones (HF takes 2x because it drops EOS candidates);
       mlk__beam_expand adds an EOS that ties with the last. */
    k = bw < vocab ? bw : vocab;
    if (!mlk__count4(batch, bw, 1, 1, sizeof(mlk__beam_hyp) + 2 * sizeof(int) + sizeof(int32_t *), &slots) ||
        !mlk__count4(batch, bw, vocab, 1, sizeof(float), &n_logits) ||
        !mlk__count4(batch, bw, k, 1, sizeof(float) + sizeof(int32_t), &n_check) ||
        !mlk__count4(batch, cfg->num_return, max_new, 1, sizeof(int32_t), &n_check))
        return MLK_ERR_OVERFLOW;
    need = mlk__arena_need(need, seq_total * sizeof(int32_t));
    need = mlk__arena_need(need, seq_total * sizeof(int32_t));
    need = mlk__arena_need(need, (size_t)batch * sizeof(size_t));
    need = mlk__arena_need(need, (size_t)batch * sizeof(int));
    need = mlk__arena_need(need, (size_t)batch * sizeof(int));
    need = mlk__arena_need(need, slots * sizeof(mlk__beam_hyp));
    need = mlk__arena_need(need, slots * sizeof(mlk__beam_hyp));
    need = mlk__arena_need(need, slots * sizeof(int));
    need = mlk__arena_need(need, slots * sizeof(int));
    need = mlk__arena_need(need, slots * sizeof(int32_t *));
    need = mlk__arena_need(need, n_logits * sizeof(float));
    need = mlk__arena_need(need, slots * (size_t)k * sizeof(float));
    need = mlk__arena_need(need, slots * (size_t)k * sizeof(int32_t));
    need = mlk__arena_need(need, (size_t)bw * sizeof(mlk__beam_cand));
    st = mlk__arena_init(&arena, NULL, need);
    if (st != MLK_OK) return st;
    seq[0] = (int32_t *)mlk__arena_take(&arena, seq_total * sizeof(int32_t));
    seq[1] = (int32_t *)mlk__arena_take(&arena, seq_total * sizeof(int32_t));
    item_off = (size_t *)mlk__arena_take(&arena, (size_t)batch * sizeof(size_t));
    pool_n[0] = (int *)mlk__arena_take(&arena, (size_t)batch * sizeof(int));
    pool_n[1] = (int *)mlk__arena_take(&arena, (size_t)batch * sizeof(int));
    hyp[0] = (mlk__beam_hyp *)mlk__arena_take(&arena, slots * sizeof(mlk__beam_hyp));
    hyp[1] = (mlk__beam_hyp *)mlk__arena_take(&arena, slots * sizeof(mlk__beam_hyp));
    live_lens = (int *)mlk__arena_take(&arena, slots * sizeof(int));
    live_parent = (int *)mlk__arena_take(&arena, slots * sizeof(int));
    live_seqs = (const int32_t **)mlk__arena_take(&arena, slots * sizeof(int32_t *));
    logits = (float *)mlk__arena_take(&arena, n_logits * sizeof(float));
    top_lp = (float *)mlk__arena_take(&arena, slots * (size_t)k * sizeof(float));
    top_idx = (int32_t *)mlk__arena_take(&arena, slots * (size_t)k * sizeof(int32_t));
    best = (mlk__beam_cand *)mlk__arena_take(&arena, (size_t)bw * sizeof(mlk__beam_cand));

    /* Every slot of both buffers starts with its item's prompt, so a step
       copies only generated tokens. */
    for (int b = 0; b < batch; b++) {
        size_t stride = (size_t)prompt_lens[b] + (size_t)max_new;
        item_off[b] = b ? item_off[b - 1] + (size_t)bw * ((size_t)prompt_lens[b - 1] + (size_t)max_new) : 0;
        for (int r = 0; r < bw; r++)
            for (int x = 0; x < 2; x++)
                memcpy(seq[x] + item_off[b] + (size_t)r * stride, prompts[b],
                       (size_t)prompt_lens[b] * sizeof(int32_t));
        pool_n[0][b] = 1;
        hyp[0][(size_t)b * bw].logprob = 0;
        hyp[0][(size_t)b * bw].score = 0;
        hyp[0][(size_t)b * bw].len = 0;
        hyp[0][(size_t)b * bw].finished = 0;
        hyp[0][(size_t)b * bw].parent_call = -1;
    }

    for (step = 0; step < max_new; step++) {
        int n_live = 0, nxt = 1 - cur;
        double len_pen = pow((double)(step + 1), (double)cfg->length_penalty);
        for (int b = 0; b < batch; b++) {
            size_t stride = (size_t)prompt_lens[b] + (size_t)max_new;
            for (int r = 0; r < pool_n[cur][b]; r++) {
                mlk__beam_hyp *h = &hyp[cur][(size_t)b * bw + r];
                if (h->finished) continue;
                h->call_idx = n_live;
                live_parent[n_live] = h->parent_call;
                live_seqs[n_live] = seq[cur] + item_off[b] + (size_t)r * stride;
                live_lens[n_live] = prompt_lens[b] + h->len;
                n_live++;
            }
        }
        if (n_live == 0) break;
        if (fn(user, n_live, live_parent, live_seqs, live_lens, logits) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        st = mlk_topk_log_softmax(n_live, vocab, logits, k, top_lp, top_idx);
        if (st != MLK_OK) break;
        for (i = 0; i < (size_t)n_live * (size_t)k; i++)
            if (top_lp[i] != top_lp[i]) st = MLK_ERR_VALUE; /* a +inf logit */
        if (st != MLK_OK) break;

        for (int b = 0; b < batch; b++) {
            size_t stride = (size_t)prompt_lens[b] + (size_t)max_new;
            const mlk__beam_hyp *pool = hyp[cur] + (size_t)b * bw;
            int n_best = 0;
            for (int r = 0; r < pool_n[cur][b]; r++) {
                if (pool[r].finished) { /* competes with its frozen score */
                    mlk__beam_cand c;
                    c.logprob = pool[r].logprob;
                    c.score = pool[r].score;
                    c.finished = 1;
                    c.rank = r;
                    c.token = -1;
                    mlk__beam_offer(best, &n_best, bw, &c);
                } else {
                    size_t row = (size_t)pool[r].call_idx;
                    mlk__beam_expand(best, &n_best, bw, &pool[r], r, top_lp + row * k, top_idx + row * k, k,
                                     logits + row * vocab, vocab, cfg->eos_id, len_pen);
                }
            }
            for (int q = 0; q < n_best; q++) {
                const mlk__beam_hyp *src = &pool[best[q].rank];
                mlk__beam_hyp *dst = &hyp[nxt][(size_t)b * bw + q];
                int32_t *dst_seq = seq[nxt] + item_off[b] + (size_t)q * stride + prompt_lens[b];
                memcpy(dst_seq, seq[cur] + item_off[b] + (size_t)best[q].rank * stride + prompt_lens[b],
                       (size_t)src->len * sizeof(int32_t));
                dst->logprob = best[q].logprob;
                dst->score = best[q].score;
                dst->finished = best[q].finished;
                dst->len = src->len;
                dst->parent_call = best[q].token < 0 ? -1 : src->call_idx;
                if (best[q].token >= 0) dst_seq[dst->len++] = best[q].token;
            }
            pool_n[nxt][b] = n_best;
        }
        cur = nxt;
    }

    if (st == MLK_OK) {
        for (int b = 0; b < batch; b++) {
            size_t stride = (size_t)prompt_lens[b] + (size_t)max_new;
            for (int q = 0; q < cfg->num_return; q++) {
                size_t o = (size_t)b * cfg->num_return + q;
                int32_t *toks = out_tokens + o * (size_t)max_new;
                int len = 0;
                if (q < pool_n[cur][b]) {
                    const mlk__beam_hyp *h = &hyp[cur][(size_t)b * bw + q];
                    len = h->len;
                    memcpy(toks, seq[cur] + item_off[b] + (size_t)q * stride + prompt_lens[b],
                           (size_t)len * sizeof(int32_t));
                    if (out_logprob) out_logprob[o] = (float)h->logprob;
                    if (out_score) out_score[o] = (float)h->score;
                } else {
                    if (out_logprob) out_logprob[o] = -INFINITY;
                    if (out_score) out_score[o] = -INFINITY;
                }
                for (int t = len; t < max_new; t++) toks[t] = -1;
                out_len[o] = len;
            }
        }
    }
    mlk__arena_done(&arena);
    return st;
}

#ifdef __cplusplus
}
#endif

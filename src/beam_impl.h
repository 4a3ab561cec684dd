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

/* Everything a search keeps, carved from one allocation. Pools are
   double-buffered (cur, 1 - cur); slot r of item b holds prompt + generated
   tokens at seq[x] + item_off[b] + r * (prompt_lens[b] + max_new). */
typedef struct mlk__beam_state {
    const mlk_beam_config *cfg;
    int batch, k;
    const int *prompt_lens;
    size_t *item_off;
    int32_t *seq[2];
    mlk__beam_hyp *hyp[2];     /* [batch * beam_width], sorted per item */
    int *pool_n[2];            /* [batch]: hypotheses in each item's pool */
    const int32_t **live_seqs; /* the callback's arguments, [batch * beam_width] */
    int *live_lens, *live_parent;
    float *logits;             /* [live, vocab], filled by the callback */
    float *top_lp;             /* [live, k] */
    int32_t *top_idx;
    mlk__beam_cand *best;      /* [beam_width] */
} mlk__beam_state;

static int32_t *mlk__beam_slot(const mlk__beam_state *s, int x, int b, int r)
{
    size_t stride = (size_t)s->prompt_lens[b] + (size_t)s->cfg->max_new_tokens;
    return s->seq[x] + s->item_off[b] + (size_t)r * stride;
}

/* Lists the unfinished hypotheses of every item as this step's callback
   arguments; returns how many. */
static int mlk__beam_gather(mlk__beam_state *s, int cur)
{
    int n_live = 0, bw = s->cfg->beam_width;
    for (int b = 0; b < s->batch; b++)
        for (int r = 0; r < s->pool_n[cur][b]; r++) {
            mlk__beam_hyp *h = &s->hyp[cur][(size_t)b * bw + r];
            if (h->finished) continue;
            h->call_idx = n_live;
            s->live_parent[n_live] = h->parent_call;
            s->live_seqs[n_live] = mlk__beam_slot(s, cur, b, r);
            s->live_lens[n_live] = s->prompt_lens[b] + h->len;
            n_live++;
        }
    return n_live;
}

/* Item b's next pool: the beam_width best of its finished hypotheses and
   the expansions of its live ones, written sorted into buffer 1 - cur. */
static void mlk__beam_select(mlk__beam_state *s, int cur, int b, double len_pen)
{
    int bw = s->cfg->beam_width, k = s->k, vocab = s->cfg->vocab, nxt = 1 - cur, n_best = 0;
    const mlk__beam_hyp *pool = s->hyp[cur] + (size_t)b * bw;
    for (int r = 0; r < s->pool_n[cur][b]; r++) {
        if (pool[r].finished) { /* competes with its frozen score */
            mlk__beam_cand c;
            c.logprob = pool[r].logprob;
            c.score = pool[r].score;
            c.finished = 1;
            c.rank = r;
            c.token = -1;
            mlk__beam_offer(s->best, &n_best, bw, &c);
        } else {
            size_t row = (size_t)pool[r].call_idx;
            mlk__beam_expand(s->best, &n_best, bw, &pool[r], r, s->top_lp + row * k, s->top_idx + row * k, k,
                             s->logits + row * vocab, vocab, s->cfg->eos_id, len_pen);
        }
    }
    for (int q = 0; q < n_best; q++) {
        const mlk__beam_cand *c = &s->best[q];
        const mlk__beam_hyp *src = &pool[c->rank];
        mlk__beam_hyp *dst = &s->hyp[nxt][(size_t)b * bw + q];
        int32_t *gen = mlk__beam_slot(s, nxt, b, q) + s->prompt_lens[b];
        memcpy(gen, mlk__beam_slot(s, cur, b, c->rank) + s->prompt_lens[b], (size_t)src->len * sizeof(int32_t));
        dst->logprob = c->logprob;
        dst->score = c->score;
        dst->finished = c->finished;
        dst->len = src->len;
        dst->parent_call = c->token < 0 ? -1 : src->call_idx;
        if (c->token >= 0) gen[dst->len++] = c->token;
    }
    s->pool_n[nxt][b] = n_best;
}

/* Bytes of the state's allocation, carved in mlk__beam_carve's order;
   SIZE_MAX on overflow. */
static size_t mlk__beam_need(size_t seq_total, int batch, size_t slots, size_t n_logits, int k, int bw)
{
    size_t need = 0;
    need = mlk__arena_need(need, seq_total * sizeof(int32_t));
    need = mlk__arena_need(need, seq_total * sizeof(int32_t));
    need = mlk__arena_need(need, (size_t)batch * sizeof(size_t));
    need = mlk__arena_need(need, (size_t)batch * sizeof(int));
    need = mlk__arena_need(need, (size_t)batch * sizeof(int));
    need = mlk__arena_need(need, slots * sizeof(mlk__beam_hyp));
    need = mlk__arena_need(need, slots * sizeof(mlk__beam_hyp));
    need = mlk__arena_need(need, slots * sizeof(int32_t *));
    need = mlk__arena_need(need, slots * sizeof(int));
    need = mlk__arena_need(need, slots * sizeof(int));
    need = mlk__arena_need(need, n_logits * sizeof(float));
    need = mlk__arena_need(need, slots * (size_t)k * sizeof(float));
    need = mlk__arena_need(need, slots * (size_t)k * sizeof(int32_t));
    return mlk__arena_need(need, (size_t)bw * sizeof(mlk__beam_cand));
}

static void mlk__beam_carve(mlk__beam_state *s, mlk__arena *a, size_t seq_total, size_t slots, size_t n_logits)
{
    s->seq[0] = (int32_t *)mlk__arena_take(a, seq_total * sizeof(int32_t));
    s->seq[1] = (int32_t *)mlk__arena_take(a, seq_total * sizeof(int32_t));
    s->item_off = (size_t *)mlk__arena_take(a, (size_t)s->batch * sizeof(size_t));
    s->pool_n[0] = (int *)mlk__arena_take(a, (size_t)s->batch * sizeof(int));
    s->pool_n[1] = (int *)mlk__arena_take(a, (size_t)s->batch * sizeof(int));
    s->hyp[0] = (mlk__beam_hyp *)mlk__arena_take(a, slots * sizeof(mlk__beam_hyp));
    s->hyp[1] = (mlk__beam_hyp *)mlk__arena_take(a, slots * sizeof(mlk__beam_hyp));
    s->live_seqs = (const int32_t **)mlk__arena_take(a, slots * sizeof(int32_t *));
    s->live_lens = (int *)mlk__arena_take(a, slots * sizeof(int));
    s->live_parent = (int *)mlk__arena_take(a, slots * sizeof(int));
    s->logits = (float *)mlk__arena_take(a, n_logits * sizeof(float));
    s->top_lp = (float *)mlk__arena_take(a, slots * (size_t)s->k * sizeof(float));
    s->top_idx = (int32_t *)mlk__arena_take(a, slots * (size_t)s->k * sizeof(int32_t));
    s->best = (mlk__beam_cand *)mlk__arena_take(a, (size_t)s->cfg->beam_width * sizeof(mlk__beam_cand));
}

/* Each item's pool starts as its prompt alone. Every slot of both buffers
   gets the prompt, so a step copies only generated tokens. */
static void mlk__beam_start(mlk__beam_state *s, const int32_t *const *prompts)
{
    int bw = s->cfg->beam_width, max_new = s->cfg->max_new_tokens;
    for (int b = 0; b < s->batch; b++) {
        mlk__beam_hyp *h = &s->hyp[0][(size_t)b * bw];
        s->item_off[b] = b ? s->item_off[b - 1] + (size_t)bw * ((size_t)s->prompt_lens[b - 1] + (size_t)max_new) : 0;
        for (int r = 0; r < bw; r++)
            for (int x = 0; x < 2; x++)
                memcpy(mlk__beam_slot(s, x, b, r), prompts[b], (size_t)s->prompt_lens[b] * sizeof(int32_t));
        s->pool_n[0][b] = 1;
        h->logprob = 0;
        h->score = 0;
        h->len = 0;
        h->finished = 0;
        h->parent_call = -1;
    }
}

static void mlk__beam_output(const mlk__beam_state *s, int cur, int32_t *out_tokens, int *out_len,
                             float *out_logprob, float *out_score)
{
    int bw = s->cfg->beam_width, max_new = s->cfg->max_new_tokens, n_ret = s->cfg->num_return;
    for (int b = 0; b < s->batch; b++)
        for (int q = 0; q < n_ret; q++) {
            size_t o = (size_t)b * n_ret + q;
            int32_t *toks = out_tokens + o * (size_t)max_new;
            int len = 0;
            if (q < s->pool_n[cur][b]) {
                const mlk__beam_hyp *h = &s->hyp[cur][(size_t)b * bw + q];
                len = h->len;
                memcpy(toks, mlk__beam_slot(s, cur, b, q) + s->prompt_lens[b], (size_t)len * sizeof(int32_t));
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

MLKERN_DEF mlk_status mlk_beam_search(const mlk_beam_config *cfg, int batch,
    const int32_t *const *prompts, const int *prompt_lens,
    mlk_logits_fn fn, void *user, int32_t *out_tokens, int *out_len,
    float *out_logprob, float *out_score)
{
    int bw, vocab, max_new, cur = 0;
    size_t slots, n_logits, n_check, seq_total = 0;
    mlk__beam_state s;
    mlk__arena arena;
    mlk_status st;

    if (!cfg || !prompts || !prompt_lens || !fn || !out_tokens || !out_len) return MLK_ERR_NULL;
    bw = cfg->beam_width;
    vocab = cfg->vocab;
    max_new = cfg->max_new_tokens;
    if (batch < 1 || bw < 1 || vocab < 1 || max_new < 1 || cfg->num_return < 1 || cfg->num_return > bw)
        return MLK_ERR_SHAPE;
    if (cfg->eos_id < -1 || cfg->eos_id >= vocab || !isfinite(cfg->length_penalty)) return MLK_ERR_ARG;
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
    s.cfg = cfg;
    s.batch = batch;
    s.prompt_lens = prompt_lens;
    /* Under pool semantics the best beam_width expansions of each beam are
       enough: expansions of one beam share a length, so a beam's later tokens
       lose to its earlier ones (HF takes 2x because it drops EOS candidates);
       mlk__beam_expand adds an EOS that ties with the last. */
    s.k = bw < vocab ? bw : vocab;
    if (!mlk__count4(batch, bw, 1, 1, sizeof(mlk__beam_hyp) + 2 * sizeof(int) + sizeof(int32_t *), &slots) ||
        !mlk__count4(batch, bw, vocab, 1, sizeof(float), &n_logits) ||
        !mlk__count4(batch, bw, s.k, 1, sizeof(float) + sizeof(int32_t), &n_check) ||
        !mlk__count4(batch, cfg->num_return, max_new, 1, sizeof(int32_t), &n_check))
        return MLK_ERR_OVERFLOW;
    st = mlk__arena_init(&arena, NULL, mlk__beam_need(seq_total, batch, slots, n_logits, s.k, bw));
    if (st != MLK_OK) return st;
    mlk__beam_carve(&s, &arena, seq_total, slots, n_logits);
    mlk__beam_start(&s, prompts);

    for (int step = 0; step < max_new; step++) {
        double len_pen = pow((double)(step + 1), (double)cfg->length_penalty);
        int n_live = mlk__beam_gather(&s, cur);
        if (n_live == 0) break; /* every kept hypothesis is finished */
        if (fn(user, n_live, s.live_parent, s.live_seqs, s.live_lens, s.logits) != 0) {
            st = MLK_ERR_CALLBACK;
            break;
        }
        st = mlk_topk_log_softmax(n_live, vocab, s.logits, s.k, s.top_lp, s.top_idx);
        for (size_t i = 0; st == MLK_OK && i < (size_t)n_live * (size_t)s.k; i++)
            if (s.top_lp[i] != s.top_lp[i]) st = MLK_ERR_VALUE; /* a +inf logit */
        if (st != MLK_OK) break;
        for (int b = 0; b < batch; b++) mlk__beam_select(&s, cur, b, len_pen);
        cur = 1 - cur;
    }
    if (st == MLK_OK) mlk__beam_output(&s, cur, out_tokens, out_len, out_logprob, out_score);
    mlk__arena_done(&arena);
    return st;
}

#ifdef __cplusplus
}
#endif

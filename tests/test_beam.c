/* beam search: exact-logprob mock models, greedy and brute-force references,
   batch independence, the parent protocol, aborts and bad inputs. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"
#include "examples/tinylm.h"

/* ---- mock models -------------------------------------------------------

   Table model: the logits are exact log-probabilities chosen per context
   (the library's log-softmax leaves them as they are, to float rounding).
   Hash model: pseudo-random logits that depend on the whole sequence.
   Both check the callback protocol: sequences are grouped by item, and each
   one extends its parent of the previous call by exactly one token. */

#define MAX_SEQS 256
#define MAX_LEN 64

typedef struct mock {
    int vocab, eos_hot;              /* hash model: EOS (token 0) logit boost */
    double (*table)(const int32_t *seq, int len, int v, int vocab);
    int prompt_len[MAX_SEQS];        /* per item; item id = seq[0] */
    int prev_n, prev_len[MAX_SEQS];
    int32_t prev_seq[MAX_SEQS][MAX_LEN];
    int calls, abort_at, inject;     /* inject: 1 NaN, 2 +inf, 3 all -inf */
    int protocol_errors;
} mock;

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t seq_hash(const int32_t *seq, int len)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < len; i++) h = mix64(h ^ (uint64_t)(uint32_t)seq[i]);
    return h;
}

/* The model's logits for the token after seq, rounded to float as the
   callback hands them over. */
static void model_row(const mock *m, const int32_t *seq, int len, double *row)
{
    uint64_t h = seq_hash(seq, len);
    for (int v = 0; v < m->vocab; v++) {
        double x;
        if (m->table) {
            x = m->table(seq, len, v, m->vocab);
        } else {
            uint64_t z = mix64(h + 0x9E3779B97F4A7C15ull * (uint64_t)(v + 1));
            x = -4.0 + 8.0 * (double)(z >> 11) * (1.0 / 9007199254740992.0);
            if (v == 0) x += m->eos_hot;
        }
        row[v] = (double)(float)x;
    }
}

#define MAX_VOCAB 32000
static double row_buf[MAX_VOCAB];

static int mock_fn(void *user, int n, const int *parent, const int32_t *const *seqs,
                   const int *lens, float *logits)
{
    mock *m = (mock *)user;
    m->calls++;
    if (m->abort_at && m->calls == m->abort_at) return 7;
    for (int i = 0; i < n; i++) {
        int p = parent[i];
        if (i > 0 && seqs[i][0] < seqs[i - 1][0]) m->protocol_errors++;
        if (lens[i] > MAX_LEN) { m->protocol_errors++; continue; }
        if (m->calls == 1) {
            if (p != -1 || lens[i] != m->prompt_len[seqs[i][0]]) m->protocol_errors++;
        } else if (p < 0 || p >= m->prev_n || lens[i] != m->prev_len[p] + 1 ||
                   memcmp(seqs[i], m->prev_seq[p], (size_t)m->prev_len[p] * sizeof(int32_t)) != 0) {
            m->protocol_errors++;
        }
        model_row(m, seqs[i], lens[i], row_buf);
        for (int v = 0; v < m->vocab; v++) logits[(size_t)i * m->vocab + v] = (float)row_buf[v];
    }
    if (n > MAX_SEQS) { m->protocol_errors++; n = MAX_SEQS; }
    m->prev_n = n;
    for (int i = 0; i < n; i++) {
        m->prev_len[i] = lens[i] < MAX_LEN ? lens[i] : MAX_LEN;
        memcpy(m->prev_seq[i], seqs[i], (size_t)m->prev_len[i] * sizeof(int32_t));
    }
    if (m->inject && m->calls == 2) {
        float bad = m->inject == 1 ? NAN : INFINITY;
        if (m->inject == 3)
            for (int v = 0; v < m->vocab; v++) logits[v] = -INFINITY;
        else
            logits[(size_t)(n - 1) * m->vocab + 1] = bad;
    }
    return 0;
}

static void mock_init(mock *m, int vocab)
{
    memset(m, 0, sizeof *m);
    m->vocab = vocab;
}

/* log-softmax of the model's logits in double */
static double ref_logprob(const mock *m, const int32_t *seq, int len, int v)
{
    double mx = -INFINITY, sum = 0;
    model_row(m, seq, len, row_buf);
    for (int u = 0; u < m->vocab; u++) if (row_buf[u] > mx) mx = row_buf[u];
    for (int u = 0; u < m->vocab; u++) sum += exp(row_buf[u] - mx);
    return row_buf[v] - mx - log(sum);
}

/* The same log-probability computed naively in float32 from the float
   logits the search sees: the yardstick of mlkt.h's tolerance rule. */
static float naive_logprob(const mock *m, const int32_t *seq, int len, int v)
{
    static float x[MAX_VOCAB];
    float mx = -INFINITY, sum = 0;
    model_row(m, seq, len, row_buf);
    for (int u = 0; u < m->vocab; u++) { x[u] = (float)row_buf[u]; if (x[u] > mx) mx = x[u]; }
    for (int u = 0; u < m->vocab; u++) sum += expf(x[u] - mx);
    return x[v] - mx - logf(sum);
}

/* Outputs of one search, in guarded buffers. */
typedef struct result {
    int batch, nret, max_new;
    int32_t *tok;
    int *len;
    float *lp, *score;
} result;

static void result_alloc(result *r, int batch, int nret, int max_new)
{
    size_t n = (size_t)(unsigned)batch * (unsigned)nret;
    r->batch = batch; r->nret = nret; r->max_new = max_new;
    r->tok = (int32_t *)mlkt_alloc(n * (unsigned)max_new * sizeof(int32_t));
    r->len = (int *)mlkt_alloc(n * sizeof(int));
    r->lp = mlkt_floats(n);
    r->score = mlkt_floats(n);
}

static void result_free(result *r)
{
    mlkt_free(r->tok); mlkt_free(r->len); mlkt_free(r->lp); mlkt_free(r->score);
}

static void result_digest(const result *r)
{
    mlkt_digest(r->tok, (size_t)r->batch * r->nret * r->max_new * sizeof(int32_t));
    mlkt_digest(r->len, (size_t)r->batch * r->nret * sizeof(int));
    mlkt_digest(r->lp, (size_t)r->batch * r->nret * sizeof(float));
    mlkt_digest(r->score, (size_t)r->batch * r->nret * sizeof(float));
}

static mlk_status run_search(mock *m, const mlk_beam_config *cfg, int batch, const int32_t *const *prompts,
                             const int *plens, result *r)
{
    for (int b = 0; b < batch; b++) m->prompt_len[prompts[b][0]] = plens[b];
    m->calls = 0;
    return mlk_beam_search(cfg, batch, prompts, plens, mock_fn, m, r->tok, r->len, r->lp, r->score);
}

static mlk_beam_config beam_cfg(int bw, int vocab, int eos, int max_new, int nret, float alpha)
{
    mlk_beam_config c;
    c.beam_width = bw; c.vocab = vocab; c.eos_id = eos;
    c.max_new_tokens = max_new; c.num_return = nret; c.length_penalty = alpha;
    return c;
}

/* ---- exact-logprob cases ---- */

/* V = 1024, EOS = 0. After the prompt: EOS -3, token 1 -4, token 2 -4.5,
   the rest share what is left (-7.01 each). After 1: token 5 at -1.0; after
   2: token 6 at -1.5; elsewhere uniform. So the continuing beams reach -5.0
   and -6.0 while the EOS hypothesis froze at -3.0. */
static double table_eos(const int32_t *seq, int len, int v, int vocab)
{
    int last = seq[len - 1];
    if (len == 1) {
        double rest = log((1 - exp(-3.0) - exp(-4.0) - exp(-4.5)) / (vocab - 3));
        return v == 0 ? -3.0 : v == 1 ? -4.0 : v == 2 ? -4.5 : rest;
    }
    if (len == 2 && (last == 1 || last == 2)) {
        double best = last == 1 ? -1.0 : -1.5;
        int tok = last == 1 ? 5 : 6;
        return v == tok ? best : log((1 - exp(best)) / (vocab - 1));
    }
    return -log((double)vocab);
}

static void test_eos_beats_continuing(void)
{
    int32_t prompt[1] = {0};
    const int32_t *prompts[1];
    int plen = 1;
    prompts[0] = prompt;
    for (int max_new = 2; max_new <= 5; max_new += 3) {
        mock m;
        result r;
        mlk_beam_config cfg = beam_cfg(3, 1024, 0, max_new, 3, 0.0f);
        mock_init(&m, 1024);
        m.table = table_eos;
        result_alloc(&r, 1, 3, max_new);
        CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
        CHECK_INT(m.protocol_errors, 0);
        CHECK_INT(r.len[0], 1);
        CHECK_INT(r.tok[0], 0);
        CHECK_CLOSE(r.lp[0], -3.0, 0, 1e-5);
        CHECK_CLOSE(r.score[0], -3.0, 0, 1e-5);
        for (int t = 1; t < max_new; t++) CHECK_INT(r.tok[t], -1);
        if (max_new == 2) {
            CHECK_INT(r.len[1], 2); CHECK_INT(r.tok[max_new], 1); CHECK_INT(r.tok[max_new + 1], 5);
            CHECK_CLOSE(r.lp[1], -5.0, 0, 1e-5);
            CHECK_INT(r.len[2], 2); CHECK_INT(r.tok[2 * max_new], 2); CHECK_INT(r.tok[2 * max_new + 1], 6);
            CHECK_CLOSE(r.lp[2], -6.0, 0, 1e-5);
        } else {
            CHECK(r.lp[1] < -5.0f && r.lp[2] <= r.lp[1]);
        }
        result_digest(&r);
        result_free(&r);
    }
}

/* V = 16, EOS = 0. After the prompt: EOS at -a_eos, token 1 at -a_one; after
   token 1, EOS at -b_eos; the rest share what is left. */
static double lp_short = -2.0, lp_one = -0.5, lp_two = -0.5;
static double table_penalty(const int32_t *seq, int len, int v, int vocab)
{
    if (len == 1) {
        double rest = log((1 - exp(lp_short) - exp(lp_one)) / (vocab - 2));
        return v == 0 ? lp_short : v == 1 ? lp_one : rest;
    }
    if (len == 2 && seq[1] == 1) return v == 0 ? lp_two : log((1 - exp(lp_two)) / (vocab - 1));
    return -log((double)vocab);
}

static void penalty_case(double l_short, double l_one, double l_two, float alpha, int longer_wins)
{
    int32_t prompt[1] = {0};
    const int32_t *prompts[1];
    int plen = 1;
    mock m;
    result r;
    mlk_beam_config cfg = beam_cfg(2, 16, 0, 4, 2, alpha);
    double long_lp = l_one + l_two, long_score = long_lp / pow(2.0, alpha);
    int first = longer_wins ? 0 : 1;
    prompts[0] = prompt;
    lp_short = l_short; lp_one = l_one; lp_two = l_two;
    mock_init(&m, 16);
    m.table = table_penalty;
    result_alloc(&r, 1, 2, 4);
    CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
    CHECK_INT(m.calls, 2); /* all kept beams finished after step 2 */
    CHECK_INT(r.len[first], 2);
    CHECK_INT(r.tok[first * 4], 1);
    CHECK_INT(r.tok[first * 4 + 1], 0);
    CHECK_CLOSE(r.lp[first], long_lp, 0, 1e-5);
    CHECK_CLOSE(r.score[first], long_score, 0, 1e-5);
    CHECK_INT(r.len[1 - first], 1);
    CHECK_INT(r.tok[(1 - first) * 4], 0);
    CHECK_CLOSE(r.score[1 - first], l_short, 0, 1e-5);
    result_digest(&r);
    result_free(&r);
}

static void test_length_penalty(void)
{
    /* the classic case: -1.0 over 2 tokens (-0.66 at alpha 0.6) beats -2.0 over 1 */
    penalty_case(-2.0, -0.5, -0.5, 0.6f, 1);
    /* the penalty decides: -1.6 over 2 beats -1.0 over 1 at alpha 1, not at alpha 0 */
    penalty_case(-1.0, -0.6, -1.0, 1.0f, 1);
    penalty_case(-1.0, -0.6, -1.0, 0.0f, 0);
}

/* Exact ties (equal logits give bitwise equal logprobs). After the prompt,
   tokens 1 and 3 tie (3 is EOS in the first case, 2 replaces it in the
   second); after 1 the only token is 7, after 2 it is 4. */
static int tie_other = 3;
static double table_ties(const int32_t *seq, int len, int v, int vocab)
{
    (void)vocab;
    if (len == 1) return v == 1 || v == tie_other ? 0.0 : -INFINITY;
    if (seq[len - 1] == 1) return v == 7 ? 0.0 : -INFINITY;
    if (seq[len - 1] == 2) return v == 4 ? 0.0 : -INFINITY;
    return 0.0;
}

static void test_ties(void)
{
    int32_t prompt[1] = {0};
    const int32_t *prompts[1];
    int plen = 1;
    mock m;
    result r;
    mlk_beam_config cfg = beam_cfg(2, 8, 3, 2, 2, 0.0f);
    prompts[0] = prompt;
    mock_init(&m, 8);
    m.table = table_ties;
    /* finished before unfinished, although token 1 < EOS 3 */
    tie_other = 3;
    result_alloc(&r, 1, 2, 2);
    CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
    CHECK_INT(r.len[0], 1); CHECK_INT(r.tok[0], 3);
    CHECK_INT(r.len[1], 2); CHECK_INT(r.tok[2], 1); CHECK_INT(r.tok[3], 7);
    result_digest(&r);
    result_free(&r);
    cfg.beam_width = 1; cfg.num_return = 1;
    result_alloc(&r, 1, 1, 2);
    CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
    CHECK_INT(r.len[0], 1); CHECK_INT(r.tok[0], 3);
    result_free(&r);
    /* lower parent rank before lower token id: [1, 7] before [2, 4] */
    tie_other = 2;
    cfg = beam_cfg(2, 8, -1, 2, 2, 0.0f);
    result_alloc(&r, 1, 2, 2);
    CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
    CHECK(r.score[0] == r.score[1]);
    CHECK_INT(r.tok[0], 1); CHECK_INT(r.tok[1], 7);
    CHECK_INT(r.tok[2], 2); CHECK_INT(r.tok[3], 4);
    result_digest(&r);
    result_free(&r);
}

/* ---- references ---- */

static void test_greedy(void)
{
    int reps = mlkt_quick() ? 10 : 40;
    for (int rep = 0; rep < reps; rep++) {
        int vocab = 2 + mlkt_int(60), max_new = 1 + mlkt_int(12), plen = 1 + mlkt_int(4);
        int32_t prompt[8], seq[32];
        const int32_t *prompts[1];
        double want_lp = 0;
        float naive_lp = 0;
        int len = 0, eos = mlkt_int(2) ? 0 : -1;
        mock m;
        result r;
        mlk_beam_config cfg = beam_cfg(1, vocab, eos, max_new, 1, 0.0f);
        mock_init(&m, vocab);
        m.eos_hot = mlkt_int(3);
        prompt[0] = 0;
        for (int i = 1; i < plen; i++) prompt[i] = mlkt_int(vocab);
        prompts[0] = prompt;
        memcpy(seq, prompt, sizeof prompt);
        while (len < max_new) {
            int best = 0;
            model_row(&m, seq, plen + len, row_buf);
            for (int v = 1; v < vocab; v++)
                if (row_buf[v] > row_buf[best]) best = v;
            want_lp += ref_logprob(&m, seq, plen + len, best);
            naive_lp += naive_logprob(&m, seq, plen + len, best);
            seq[plen + len++] = best;
            if (best == eos) break;
        }
        result_alloc(&r, 1, 1, max_new);
        CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
        CHECK_INT(m.protocol_errors, 0);
        CHECK_INT(r.len[0], len);
        CHECKF(memcmp(r.tok, seq + plen, (size_t)len * sizeof(int32_t)) == 0, "rep %d", rep);
        CHECK_NAIVE(fabs(r.lp[0] - want_lp), fabs(naive_lp - want_lp), mlkt_ulps(4, 1 + fabs(want_lp)),
                    "rep %d: logprob %.9g, want %.9g", rep, r.lp[0], want_lp);
        CHECK(r.lp[0] == r.score[0]);
        result_digest(&r);
        result_free(&r);
    }
}

/* Brute force: every hypothesis (ending in EOS, or max_new long) by DFS. */
typedef struct hypo { double score; int len; int32_t tok[8]; } hypo;

static void enumerate(const mock *m, int32_t *seq, int plen, int len, int max_new, double lp,
                      double alpha, hypo *all, int *n)
{
    for (int v = 0; v < m->vocab; v++) {
        double l = lp + ref_logprob(m, seq, plen + len, v);
        seq[plen + len] = v;
        if (v == 0 || len + 1 == max_new) {
            hypo *h = &all[(*n)++];
            h->score = l / pow((double)(len + 1), alpha);
            h->len = len + 1;
            memcpy(h->tok, seq + plen, (size_t)(len + 1) * sizeof(int32_t));
        } else {
            enumerate(m, seq, plen, len + 1, max_new, l, alpha, all, n);
        }
    }
}

static int hypo_cmp(const void *a, const void *b)
{
    double x = ((const hypo *)a)->score, y = ((const hypo *)b)->score;
    return (x < y) - (x > y);
}

static void test_brute_force(void)
{
    int reps = mlkt_quick() ? 6 : 20;
    static hypo all[4096];
    for (int rep = 0; rep < reps; rep++) {
        int vocab = 2 + mlkt_int(3), max_new = 2 + mlkt_int(3), n = 0, full = 1;
        double alpha = rep % 3 == 0 ? 0.0 : mlkt_uniform(0.2, 1.5);
        int32_t prompt[2], seq[16];
        const int32_t *prompts[1];
        int plen = 2;
        mock m;
        mock_init(&m, vocab);
        m.eos_hot = mlkt_int(3);
        prompt[0] = 0;
        prompt[1] = mlkt_int(vocab);
        prompts[0] = prompt;
        memcpy(seq, prompt, sizeof prompt);
        enumerate(&m, seq, plen, 0, max_new, 0.0, alpha, all, &n);
        qsort(all, (size_t)n, sizeof all[0], hypo_cmp);
        for (int t = 0; t < max_new; t++) full *= vocab;
        for (int bw = 1; bw <= full; bw = bw < 4 ? bw + 1 : full) {
            int nret = bw < 6 ? bw : 6;
            result r;
            mlk_beam_config cfg = beam_cfg(bw, vocab, 0, max_new, nret, (float)alpha);
            result_alloc(&r, 1, nret, max_new);
            CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
            CHECK_INT(m.protocol_errors, 0);
            CHECKF(r.score[0] <= all[0].score + 1e-5, "bw %d: %g > optimum %g", bw, r.score[0], all[0].score);
            for (int q = 1; q < nret; q++) CHECK(r.score[q] <= r.score[q - 1]);
            if (bw == full) { /* the pool holds every hypothesis: the ranking is exact */
                for (int q = 0; q < nret && q < n; q++) {
                    CHECK_CLOSE(r.score[q], all[q].score, 0, 1e-5);
                    CHECK_INT(r.len[q], all[q].len);
                    CHECKF(memcmp(r.tok + (size_t)q * max_new, all[q].tok, (size_t)all[q].len * sizeof(int32_t)) == 0,
                           "rep %d rank %d", rep, q);
                }
            }
            result_digest(&r);
            result_free(&r);
            if (bw == full) break;
        }
    }
}

/* Batched search equals each item searched alone, bitwise; also the big
   shape (batch 8 x beam 4 x vocab 32000) that threads split. */
static void batch_case(int batch, int bw, int vocab, int max_new, int nret, float alpha)
{
    int32_t prompts_buf[MAX_SEQS][8];
    const int32_t *prompts[MAX_SEQS];
    int plens[MAX_SEQS];
    mock m;
    result all, one;
    mlk_beam_config cfg = beam_cfg(bw, vocab, 0, max_new, nret, alpha);
    mock_init(&m, vocab);
    m.eos_hot = 2;
    for (int b = 0; b < batch; b++) {
        plens[b] = 1 + mlkt_int(7);
        prompts_buf[b][0] = b;
        for (int i = 1; i < plens[b]; i++) prompts_buf[b][i] = mlkt_int(vocab);
        prompts[b] = prompts_buf[b];
    }
    result_alloc(&all, batch, nret, max_new);
    CHECK_INT(run_search(&m, &cfg, batch, prompts, plens, &all), MLK_OK);
    CHECK_INT(m.protocol_errors, 0);
    result_digest(&all);
    result_alloc(&one, 1, nret, max_new);
    for (int b = 0; b < batch; b++) {
        size_t o = (size_t)b * nret;
        CHECK_INT(run_search(&m, &cfg, 1, prompts + b, plens + b, &one), MLK_OK);
        CHECKF(mlkt_same(one.tok, all.tok + o * max_new, (size_t)nret * max_new * sizeof(int32_t)) &&
               mlkt_same(one.len, all.len + o, (size_t)nret * sizeof(int)) &&
               mlkt_same(one.lp, all.lp + o, (size_t)nret * sizeof(float)) &&
               mlkt_same(one.score, all.score + o, (size_t)nret * sizeof(float)),
               "item %d of %d differs from running alone", b, batch);
        for (int q = 0; q < nret; q++) { /* logprob of each hypothesis, in double */
            double lp = 0;
            float naive_lp = 0;
            int32_t seq[MAX_LEN];
            memcpy(seq, prompts[b], (size_t)plens[b] * sizeof(int32_t));
            for (int t = 0; t < one.len[q]; t++) {
                lp += ref_logprob(&m, seq, plens[b] + t, one.tok[q * max_new + t]);
                naive_lp += naive_logprob(&m, seq, plens[b] + t, one.tok[q * max_new + t]);
                seq[plens[b] + t] = one.tok[q * max_new + t];
            }
            CHECK_NAIVE(fabs(one.lp[q] - lp), fabs(naive_lp - lp), mlkt_ulps(4, 1 + fabs(lp)),
                        "item %d hypothesis %d, vocab %d", b, q, vocab);
            if (q > 0) CHECK(one.score[q] <= one.score[q - 1]);
        }
    }
    result_free(&one);
    result_free(&all);
}

static void test_batch(void)
{
    batch_case(5, 3, 40, 9, 3, 0.7f);
    batch_case(7, 4, 300, 12, 2, 1.0f);
    batch_case(8, 4, 32000, mlkt_quick() ? 2 : 4, 4, 1.0f);
}

/* Too few hypotheses: vocab 2, beam 4, one step -> two real ones. Masked
   (-inf) tokens are never chosen. */
static double table_masked(const int32_t *seq, int len, int v, int vocab)
{
    (void)seq; (void)len; (void)vocab;
    return v == 2 ? -0.1 : v == 0 ? -2.4 : -INFINITY;
}

static void test_short_pool(void)
{
    int32_t prompt[1] = {0};
    const int32_t *prompts[1];
    int plen = 1;
    mock m;
    result r;
    mlk_beam_config cfg = beam_cfg(4, 2, 1, 1, 4, 1.0f);
    prompts[0] = prompt;
    mock_init(&m, 2);
    result_alloc(&r, 1, 4, 1);
    CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
    CHECK_INT(r.len[0], 1); CHECK_INT(r.len[1], 1);
    CHECK(r.tok[0] != r.tok[1]);
    for (int q = 2; q < 4; q++) {
        CHECK_INT(r.len[q], 0); CHECK_INT(r.tok[q], -1);
        CHECK(r.score[q] == -INFINITY && r.lp[q] == -INFINITY);
    }
    result_digest(&r);
    result_free(&r);

    cfg = beam_cfg(4, 8, 0, 3, 4, 0.0f);
    mock_init(&m, 8);
    m.table = table_masked;
    result_alloc(&r, 1, 4, 3);
    CHECK_INT(run_search(&m, &cfg, 1, prompts, &plen, &r), MLK_OK);
    for (int q = 0; q < 4; q++) {
        for (int t = 0; t < r.len[q]; t++) CHECK(r.tok[q * 3 + t] == 0 || r.tok[q * 3 + t] == 2);
        CHECK(r.len[q] >= 1);
    }
    CHECK_INT(r.len[0], 3); /* 2,2,2 at -0.3 beats EOS at -2.4 */
    CHECK_CLOSE(r.lp[0], 3 * (-0.1 - log(exp(-0.1) + exp(-2.4))), 0, 1e-5);
    result_digest(&r);
    result_free(&r);
}

/* ---- a stateful model: the example model keeps one KV sequence per beam,
   forked through the parent indices. It must match the same model run
   statelessly, every sequence prefilled from scratch at every call. ---- */

static int stateless_logits(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens,
                            float *logits)
{
    tinylm_beam *bm = (tinylm_beam *)user;
    (void)parent;
    for (int i = 0; i < n; i++) {
        int seq;
        if (mlk_kv_seq_new(bm->m->kv, &seq) != MLK_OK) return 1;
        if (tinylm_prefill(bm->m, bm->m->cfg.layers, seq, seqs[i], lens[i], 5, bm->logits,
                           logits + (size_t)i * bm->m->cfg.vocab) != MLK_OK) return 1;
        mlk_kv_seq_free(bm->m->kv, seq);
    }
    return 0;
}

static void test_kv_forking_model(void)
{
    tinylm_config cfg;
    tinylm m;
    int reps = mlkt_quick() ? 2 : 6;
    cfg.vocab = 64; cfg.dim = 32; cfg.layers = 2; cfg.heads = 4; cfg.kv_heads = 2; cfg.head_dim = 8;
    cfg.ffn = 64; cfg.max_ctx = 64; cfg.max_tokens = 48; cfg.max_seqs = 40;
    cfg.first_scale = 4.0f; cfg.tail_scale = 1.0f; cfg.logit_scale = 0.5f;
    for (int rep = 0; rep < reps; rep++) {
        int32_t pbuf[3][8];
        const int32_t *prompts[3];
        int plens[3], batch = 1 + mlkt_int(3), bw = 1 + mlkt_int(5), max_new = 2 + mlkt_int(8);
        mlk_beam_config bc = beam_cfg(bw, cfg.vocab, 0, max_new, bw, 1.0f);
        tinylm_beam bm;
        result fork, fresh;
        mlk_kv_stats ks;
        memset(&ks, 0xFF, sizeof ks);
        cfg.seed = 40 + (uint64_t)rep;
        CHECK_INT(tinylm_init(&m, &cfg), MLK_OK);
        for (int b = 0; b < batch; b++) {
            plens[b] = 1 + mlkt_int(8);
            for (int i = 0; i < plens[b]; i++) pbuf[b][i] = 1 + mlkt_int(cfg.vocab - 1);
            prompts[b] = pbuf[b];
        }
        memset(&bm, 0, sizeof bm);
        bm.m = &m;
        bm.logits = (float *)malloc((size_t)(cfg.max_tokens + 1) * cfg.vocab * sizeof(float));
        result_alloc(&fork, batch, bw, max_new);
        result_alloc(&fresh, batch, bw, max_new);
        CHECK_INT(mlk_beam_search(&bc, batch, prompts, plens, tinylm_beam_logits, &bm, fork.tok, fork.len,
                                  fork.lp, fork.score), MLK_OK);
        tinylm_beam_done(&bm);
        CHECK_INT(mlk_kv_get_stats(m.kv, &ks), MLK_OK);
        CHECK_INT(ks.seqs, 0);
        CHECK_INT(ks.blocks_used, 0);
        CHECK_INT(mlk_beam_search(&bc, batch, prompts, plens, stateless_logits, &bm, fresh.tok, fresh.len,
                                  fresh.lp, fresh.score), MLK_OK);
        CHECKF(mlkt_same(fork.tok, fresh.tok, (size_t)batch * bw * max_new * sizeof(int32_t)) &&
               mlkt_same(fork.len, fresh.len, (size_t)batch * bw * sizeof(int)), "rep %d", rep);
        for (int q = 0; q < batch * bw; q++) CHECK_CLOSE(fork.score[q], fresh.score[q], 1e-4, 1e-5);
        result_digest(&fork);
        result_free(&fork);
        result_free(&fresh);
        free(bm.logits);
        tinylm_free(&m);
    }
}

/* ---- errors: the right code, outputs untouched ---- */

static void expect_untouched(const result *r, const result *before, const char *what)
{
    size_t n = (size_t)r->batch * r->nret;
    CHECKF(mlkt_same(r->tok, before->tok, n * r->max_new * sizeof(int32_t)) &&
           mlkt_same(r->len, before->len, n * sizeof(int)) &&
           mlkt_same(r->lp, before->lp, n * sizeof(float)) &&
           mlkt_same(r->score, before->score, n * sizeof(float)), "%s: outputs changed", what);
}

static void fill_sentinel(result *r)
{
    size_t n = (size_t)r->batch * r->nret;
    for (size_t i = 0; i < n * r->max_new; i++) r->tok[i] = 12345;
    for (size_t i = 0; i < n; i++) { r->len[i] = 777; r->lp[i] = 4.5f; r->score[i] = -8.25f; }
}

static void test_errors(void)
{
    int32_t pbuf[2][3] = {{0, 5, 6}, {1, 7, 8}};
    const int32_t *prompts[2];
    const int32_t *null_prompts[2];
    int plens[2] = {3, 2}, bad_lens[2] = {3, 0}, huge_lens[2] = {INT_MAX - 3, 2};
    mock m;
    result r, before;
    mlk_beam_config good = beam_cfg(3, 20, 0, 5, 2, 1.0f), c;
    prompts[0] = pbuf[0]; prompts[1] = pbuf[1];
    null_prompts[0] = pbuf[0]; null_prompts[1] = NULL;
    mock_init(&m, 20);
    for (int b = 0; b < 2; b++) m.prompt_len[b] = plens[b];
    result_alloc(&r, 2, 2, 5);
    result_alloc(&before, 2, 2, 5);
    fill_sentinel(&r);
    fill_sentinel(&before);

#define EXPECT(call, code, what) do { CHECK_INT(call, code); expect_untouched(&r, &before, what); } while (0)
    EXPECT(mlk_beam_search(NULL, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_NULL, "cfg");
    EXPECT(mlk_beam_search(&good, 2, NULL, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_NULL, "prompts");
    EXPECT(mlk_beam_search(&good, 2, null_prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_NULL, "prompt 1");
    EXPECT(mlk_beam_search(&good, 2, prompts, NULL, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_NULL, "lens");
    EXPECT(mlk_beam_search(&good, 2, prompts, plens, NULL, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_NULL, "fn");
    EXPECT(mlk_beam_search(&good, 2, prompts, plens, mock_fn, &m, NULL, r.len, r.lp, r.score), MLK_ERR_NULL, "tokens");
    EXPECT(mlk_beam_search(&good, 2, prompts, plens, mock_fn, &m, r.tok, NULL, r.lp, r.score), MLK_ERR_NULL, "len");
    EXPECT(mlk_beam_search(&good, 0, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "batch 0");
    EXPECT(mlk_beam_search(&good, -1, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "batch -1");
    EXPECT(mlk_beam_search(&good, 2, prompts, bad_lens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "prompt len 0");
    EXPECT(mlk_beam_search(&good, 2, prompts, huge_lens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_OVERFLOW, "prompt len");
    c = good; c.beam_width = 0;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "beam 0");
    c = good; c.vocab = 0; c.eos_id = -1;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "vocab 0");
    c = good; c.max_new_tokens = 0;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "max_new 0");
    c = good; c.num_return = 0;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "num_return 0");
    c = good; c.num_return = 4;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_SHAPE, "num_return > beam");
    c = good; c.eos_id = 20;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_ARG, "eos 20");
    c = good; c.eos_id = -2;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_ARG, "eos -2");
    c = good; c.length_penalty = NAN;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_ARG, "penalty NaN");
    c = good; c.beam_width = INT_MAX; c.num_return = 1; c.vocab = INT_MAX; c.eos_id = -1;
    EXPECT(mlk_beam_search(&c, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_OVERFLOW, "beam x vocab");
    CHECK_INT(m.calls, 0);

    /* callback abort at the first and a later step */
    for (int at = 1; at <= 3; at += 2) {
        m.calls = 0; m.abort_at = at;
        EXPECT(mlk_beam_search(&good, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_CALLBACK, "abort");
        CHECK_INT(m.calls, at);
    }
    m.abort_at = 0;
    /* NaN, +inf, an all -inf row at step 2 */
    for (int inj = 1; inj <= 3; inj++) {
        m.calls = 0; m.inject = inj;
        EXPECT(mlk_beam_search(&good, 2, prompts, plens, mock_fn, &m, r.tok, r.len, r.lp, r.score), MLK_ERR_VALUE, "bad logits");
    }
    m.inject = 0;
#undef EXPECT
    /* optional outputs may be NULL */
    m.calls = 0;
    CHECK_INT(mlk_beam_search(&good, 2, prompts, plens, mock_fn, &m, r.tok, r.len, NULL, NULL), MLK_OK);
    CHECK(mlkt_same(r.lp, before.lp, 4 * sizeof(float)));
    CHECK_INT(m.protocol_errors, 0);
    mlkt_digest(r.tok, 2 * 2 * 5 * sizeof(int32_t));
    result_free(&r);
    result_free(&before);
}

int main(void)
{
    mlkt_file = "test_beam";
    MLKT_RUN(test_eos_beats_continuing, 1);
    MLKT_RUN(test_length_penalty, 2);
    MLKT_RUN(test_ties, 8);
    MLKT_RUN(test_greedy, 3);
    MLKT_RUN(test_brute_force, 4);
    MLKT_RUN(test_batch, 5);
    MLKT_RUN(test_short_pool, 6);
    MLKT_RUN(test_errors, 7);
    MLKT_RUN(test_kv_forking_model, 9);
    return mlkt_finish();
}

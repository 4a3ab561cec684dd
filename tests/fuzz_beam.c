/* libFuzzer target for mlk_beam_search: the input picks a configuration
   (batch 1-3, beam width 1-5, vocab 1-12, EOS or none, 1-8 new tokens,
   length penalty; sometimes one invalid field) and a mock model whose
   logits are a hash of the whole sequence (with masked -inf tokens and
   ties; sometimes a NaN, +inf or all -inf row, or an abort, at a chosen
   call). Checks:
   - the status equals the header's rules (MLK_ERR_SHAPE / MLK_ERR_ARG for
     the configuration, MLK_ERR_CALLBACK / MLK_ERR_VALUE for the model) and
     outputs are untouched on error;
   - every callback's parent[i] names the sequence of the previous call
     that seqs[i] extends by one token (-1 at the first call);
   - per item: scores non-increasing; lengths <= max_new_tokens; -1 padding
     past each length; tokens in [0, vocab); EOS only as the last token,
     and a hypothesis shorter than max_new_tokens ends with EOS; missing
     hypotheses have length 0 and -inf; hypotheses are distinct;
   - each logprob is the sum of the model's log-softmax along the tokens
     (recomputed in double) and each score is logprob / len^length_penalty.
   Build: make build/fuzz/fuzz_beam; run: tests/extra/fuzz_beam.sh */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <stdio.h>
#include <stdlib.h>

#define MAX_B 3
#define MAX_W 5
#define MAX_V 12
#define MAX_NEW 8
#define MAX_LEN (4 + MAX_NEW)

#include "fuzz_input.h"

static void fz_fail(const char *what, int item, double got, double want)
{
    fprintf(stderr, "fuzz_beam: %s (item %d: got %.9g, want %.9g)\n", what, item, got, want);
    abort();
}

typedef struct fz_model {
    int vocab, calls, bad_call, bad_kind; /* bad_kind: 0 none, 1 abort, 2 NaN, 3 +inf, 4 all -inf */
    uint64_t salt;
    int prev_n, prev_len[MAX_B * MAX_W];
    int32_t prev[MAX_B * MAX_W][MAX_LEN];
    int emitted_bad;
} fz_model;

static uint64_t fz_hash(uint64_t h, uint64_t x)
{
    h ^= x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 29);
}

/* The model's logits after seq[0..len): quantised values (ties), some
   masked, never all masked. */
static void fz_logits(const fz_model *m, const int32_t *seq, int len, float *out)
{
    uint64_t h = m->salt;
    int live = 0;
    for (int i = 0; i < len; i++) h = fz_hash(h, (uint64_t)seq[i] + 1);
    for (int j = 0; j < m->vocab; j++) {
        uint64_t z = fz_hash(h, (uint64_t)j + 1000);
        out[j] = z % 7 == 0 ? -INFINITY : (float)(z % 9) * 0.5f - 2.0f;
        live += out[j] != -INFINITY;
    }
    if (!live) out[h % (uint64_t)m->vocab] = 0.0f;
}

static int fz_model_fn(void *user, int n, const int *parent, const int32_t *const *seqs, const int *lens,
                       float *logits)
{
    fz_model *m = (fz_model *)user;
    int call = m->calls++;
    for (int i = 0; i < n; i++) { /* the parent contract */
        if (call == 0 ? parent[i] != -1 : parent[i] < 0 || parent[i] >= m->prev_n) fz_fail("parent index", i, parent[i], 0);
        if (call > 0 && (lens[i] != m->prev_len[parent[i]] + 1 ||
                         memcmp(seqs[i], m->prev[parent[i]], (size_t)(lens[i] - 1) * sizeof(int32_t)) != 0))
            fz_fail("seqs[i] does not extend the parent's sequence", i, lens[i], m->prev_len[parent[i]] + 1);
    }
    if (call == m->bad_call && m->bad_kind == 1) return 1;
    for (int i = 0; i < n; i++) {
        fz_logits(m, seqs[i], lens[i], logits + (size_t)i * m->vocab);
        m->prev_len[i] = lens[i];
        memcpy(m->prev[i], seqs[i], (size_t)lens[i] * sizeof(int32_t));
    }
    m->prev_n = n;
    if (call == m->bad_call && m->bad_kind > 1) {
        float *row = logits + (size_t)(n - 1) * m->vocab;
        for (int j = 0; j < m->vocab; j++)
            if (m->bad_kind == 4 || j == m->vocab / 2) row[j] = m->bad_kind == 2 ? NAN : m->bad_kind == 3 ? INFINITY : -INFINITY;
        m->emitted_bad = 1;
    }
    return 0;
}

/* Sum of the model's log-softmax along tokens gen[0..len) after prompt. */
static double fz_logprob(const fz_model *m, const int32_t *prompt, int plen, const int32_t *gen, int len)
{
    int32_t seq[MAX_LEN];
    float x[MAX_V];
    double total = 0;
    memcpy(seq, prompt, (size_t)plen * sizeof(int32_t));
    for (int t = 0; t < len; t++) {
        double mx = -INFINITY, sum = 0;
        fz_logits(m, seq, plen + t, x);
        for (int j = 0; j < m->vocab; j++) mx = x[j] > mx ? x[j] : mx;
        for (int j = 0; j < m->vocab; j++) sum += exp((double)x[j] - mx);
        total += (double)x[gen[t]] - mx - log(sum);
        seq[plen + t] = gen[t];
    }
    return total;
}

/* 1 when every byte of p[0..n) is 0x7F (the sentinel every output starts as) */
static int fz_untouched(const void *p, size_t n)
{
    const uint8_t *b = (const uint8_t *)p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0x7F) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const float penalties[] = {1.0f, 0.0f, 0.5f, 2.0f, -1.0f, 1.0f, 1.0f, 1.0f};
    fz_bytes in;
    fz_model m;
    mlk_beam_config cfg;
    int batch, plen[MAX_B], broken, want, out_len[MAX_B * MAX_W];
    int32_t prompts_buf[MAX_B][4], out_tokens[MAX_B * MAX_W * MAX_NEW];
    const int32_t *prompts[MAX_B];
    float out_lp[MAX_B * MAX_W], out_score[MAX_B * MAX_W];
    mlk_status st;
    in.p = data;
    in.n = size;
    memset(&m, 0, sizeof m);
    batch = 1 + fz_next(&in) % MAX_B;
    cfg.beam_width = 1 + fz_next(&in) % MAX_W;
    cfg.vocab = 1 + fz_next(&in) % MAX_V;
    cfg.eos_id = fz_next(&in) % (cfg.vocab + 1) - 1;
    cfg.max_new_tokens = 1 + fz_next(&in) % MAX_NEW;
    cfg.num_return = 1 + fz_next(&in) % cfg.beam_width;
    cfg.length_penalty = penalties[fz_next(&in) % 8];
    m.vocab = cfg.vocab;
    m.salt = (uint64_t)fz_next(&in);
    m.bad_call = fz_next(&in) % 10;
    m.bad_kind = fz_next(&in) % 12;
    if (m.bad_kind > 4) m.bad_kind = 0;
    for (int b = 0; b < batch; b++) {
        plen[b] = 1 + fz_next(&in) % 4;
        for (int t = 0; t < plen[b]; t++) prompts_buf[b][t] = fz_next(&in) % cfg.vocab;
        prompts[b] = prompts_buf[b];
    }
    /* at most one invalid field, so the expected code is unambiguous */
    broken = fz_next(&in) % 24;
    switch (broken) {
    case 1: batch = 0; break;
    case 2: cfg.beam_width = 0; break;
    case 3: cfg.vocab = 0; break;
    case 4: cfg.max_new_tokens = 0; break;
    case 5: cfg.num_return = cfg.beam_width + 1; break;
    case 6: cfg.num_return = 0; break;
    case 7: plen[batch - 1] = 0; break;
    case 8: cfg.eos_id = -2; break;
    case 9: cfg.eos_id = cfg.vocab; break;
    case 10: cfg.length_penalty = NAN; break;
    case 11: cfg.length_penalty = INFINITY; break;
    default: broken = 0;
    }
    memset(out_tokens, 0x7F, sizeof out_tokens);
    memset(out_len, 0x7F, sizeof out_len);
    memset(out_lp, 0x7F, sizeof out_lp);
    memset(out_score, 0x7F, sizeof out_score);
    st = mlk_beam_search(&cfg, batch, prompts, plen, fz_model_fn, &m, out_tokens, out_len, out_lp, out_score);
    if (broken)
        want = broken <= 7 ? MLK_ERR_SHAPE : MLK_ERR_ARG;
    else
        want = m.calls > m.bad_call && m.bad_kind == 1 ? MLK_ERR_CALLBACK : m.emitted_bad ? MLK_ERR_VALUE : MLK_OK;
    if ((int)st != want) fz_fail("status", -1, st, want);
    if (st != MLK_OK) {
        if (!fz_untouched(out_len, sizeof out_len) || !fz_untouched(out_tokens, sizeof out_tokens) ||
            !fz_untouched(out_lp, sizeof out_lp) || !fz_untouched(out_score, sizeof out_score))
            fz_fail("outputs written on error", -1, 0, 0);
        return 0;
    }
    for (int b = 0; b < batch; b++) {
        int nr = cfg.num_return, max_new = cfg.max_new_tokens;
        for (int q = 0; q < nr; q++) {
            int o = b * nr + q, len = out_len[o];
            const int32_t *tok = out_tokens + (size_t)o * max_new;
            if (len < 0 || len > max_new) fz_fail("length", b, len, max_new);
            for (int t = len; t < max_new; t++)
                if (tok[t] != -1) fz_fail("padding past the length", b, tok[t], -1);
            if (q > 0 && !(out_score[o] <= out_score[o - 1])) fz_fail("scores not ranked", b, out_score[o], out_score[o - 1]);
            if (len == 0) { /* a missing hypothesis */
                if (out_score[o] != -INFINITY || out_lp[o] != -INFINITY) fz_fail("missing hypothesis score", b, out_score[o], -INFINITY);
                continue;
            }
            for (int t = 0; t < len; t++) {
                if (tok[t] < 0 || tok[t] >= cfg.vocab) fz_fail("token range", b, tok[t], cfg.vocab);
                if (t < len - 1 && tok[t] == cfg.eos_id) fz_fail("EOS before the end", b, t, len);
            }
            if (len < max_new && (cfg.eos_id < 0 || tok[len - 1] != cfg.eos_id))
                fz_fail("a hypothesis stopped without EOS", b, len, max_new);
            {
                double lp = fz_logprob(&m, prompts[b], plen[b], tok, len);
                double score = lp / pow((double)len, (double)cfg.length_penalty);
                if (!(fabs(out_lp[o] - lp) <= 1e-4 * (1 + fabs(lp)))) fz_fail("logprob", b, out_lp[o], lp);
                if (!(fabs(out_score[o] - score) <= 1e-4 * (1 + fabs(score)))) fz_fail("score", b, out_score[o], score);
            }
            for (int r = 0; r < q; r++)
                if (out_len[b * nr + r] == len &&
                    memcmp(out_tokens + (size_t)(b * nr + r) * max_new, tok, (size_t)len * sizeof(int32_t)) == 0)
                    fz_fail("the same hypothesis twice", b, r, q);
        }
    }
    return 0;
}

/* libFuzzer target for the KV cache: the input bytes pick a small cache
   configuration, then a stream of API calls (new, fork, append, store,
   load, truncate, compact, free, attention, stats) with raw, often invalid,
   arguments. A shadow copy of every sequence (plain arrays, updated only
   when a call returns MLK_OK) must match what the cache loads back after
   every call: within half a quantisation step for Q8/Q4, exactly
   otherwise. Any mismatch, leak or sanitizer report aborts.
   Build: make build/fuzz/fuzz_kv; run: tests/extra/fuzz_kv.sh */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <stdio.h>
#include <stdlib.h>

#define FZ_SEQS 6

#include "fuzz_input.h"

typedef struct fz_state {
    mlk_kv_config cfg;
    mlk_kv_cache *c;
    int row, max_len;      /* floats per position (K or V), positions per sequence */
    int len[FZ_SEQS];      /* -1: no sequence */
    float *shadow;         /* [seq][layer][pos][2 * row] */
    float *kbuf, *vbuf;    /* max_len * row */
} fz_state;

static float *fz_at(const fz_state *s, int seq, int layer, int pos)
{
    return s->shadow + (((size_t)seq * s->cfg.layers + (size_t)layer) * s->max_len + (size_t)pos) * 2 * s->row;
}

static void fz_fail(const char *what, int seq)
{
    fprintf(stderr, "fuzz_kv: %s (seq %d)\n", what, seq);
    abort();
}

/* |got - want| within the storage type's rounding of want's 32-block: half
   a quantisation step, plus float rounding of the step and of q * step. */
static int fz_close(const fz_state *s, const float *got, const float *want)
{
    int d = s->cfg.head_dim, qmax = s->cfg.type == MLK_KV_Q8 ? 127 : 7;
    for (int h = 0; h < s->row / d; h++)
        for (int b0 = 0; b0 < d; b0 += 32) {
            int b1 = b0 + 32 < d ? b0 + 32 : d;
            double amax = 0;
            for (int j = b0; j < b1; j++) amax = fabs(want[h * d + j]) > amax ? fabs(want[h * d + j]) : amax;
            for (int j = b0; j < b1; j++) {
                double err = fabs((double)got[h * d + j] - want[h * d + j]);
                if (s->cfg.type == MLK_KV_F32 || s->cfg.type == MLK_KV_F16 ? err != 0
                                                                           : !(err <= amax / qmax / 2 + ldexp(fabs(want[h * d + j]), -21)))
                    return 0;
            }
        }
    return 1;
}

static void fz_verify(fz_state *s)
{
    mlk_kv_stats st;
    int live = 0, need_max = 0, need_sum = 0;
    if (mlk_kv_get_stats(s->c, &st) != MLK_OK) fz_fail("stats", -1);
    for (int q = 0; q < FZ_SEQS; q++) {
        int nb = s->len[q] < 0 ? 0 : (s->len[q] + s->cfg.block_size - 1) / s->cfg.block_size;
        if (mlk_kv_seq_len(s->c, q) != s->len[q]) fz_fail("length", q);
        live += s->len[q] >= 0;
        need_sum += nb;
        need_max = nb > need_max ? nb : need_max;
        for (int l = 0; l < s->cfg.layers && s->len[q] > 0; l++) {
            if (mlk_kv_load(s->c, q, l, 0, s->len[q], s->kbuf, s->vbuf) != MLK_OK) fz_fail("load", q);
            for (int p = 0; p < s->len[q]; p++) {
                const float *want = fz_at(s, q, l, p);
                if (want[0] != want[0]) continue; /* never stored */
                if (!fz_close(s, s->kbuf + (size_t)p * s->row, want) ||
                    !fz_close(s, s->vbuf + (size_t)p * s->row, want + s->row))
                    fz_fail("stored data differs", q);
            }
        }
    }
    if (st.seqs != live || st.blocks_used < need_max || st.blocks_used > need_sum) fz_fail("occupancy", -1);
}

static void fz_mark_unstored(fz_state *s, int seq, int from, int to)
{
    for (int l = 0; l < s->cfg.layers; l++)
        for (int p = from; p < to; p++) fz_at(s, seq, l, p)[0] = NAN;
}

static void fz_step(fz_state *s, fz_bytes *in)
{
    int op = fz_next(in) % 10, seq = fz_next(in) % (FZ_SEQS + 2) - 1;
    int valid = seq >= 0 && seq < FZ_SEQS && s->len[seq] >= 0;
    if (op == 0 || op == 1) { /* new / fork */
        int id = -1;
        mlk_status st = op == 0 ? mlk_kv_seq_new(s->c, &id) : mlk_kv_seq_fork(s->c, seq, &id);
        if (st != MLK_OK) return;
        if (id < 0 || id >= FZ_SEQS || s->len[id] >= 0) fz_fail("new id", id);
        s->len[id] = op == 0 ? 0 : s->len[seq];
        if (op == 1)
            memcpy(fz_at(s, id, 0, 0), fz_at(s, seq, 0, 0),
                   sizeof(float) * (size_t)s->cfg.layers * s->max_len * 2 * s->row);
    } else if (op == 2) { /* append */
        int n = fz_next(in) % 24 - 2;
        if (mlk_kv_append(s->c, seq, n) != MLK_OK) return;
        if (!valid || n < 1 || s->len[seq] + n > s->max_len) fz_fail("append accepted", seq);
        fz_mark_unstored(s, seq, s->len[seq], s->len[seq] + n);
        s->len[seq] += n;
    } else if (op == 3) { /* store: values from the input, n positions */
        int layer = fz_next(in) % (s->cfg.layers + 1), pos = fz_next(in) - 2, n = fz_next(in) % 12 - 1;
        size_t count = (size_t)(n > 0 ? n : 1) * s->row;
        int raw = fz_next(in);
        for (size_t i = 0; i < count; i++) {
            s->kbuf[i] = (float)((int)((raw + 37 * i) % 251) - 125) / 8.0f;
            s->vbuf[i] = (float)((int)((raw * 7 + 11 * i) % 241) - 120) / 16.0f;
        }
        if (mlk_kv_store(s->c, seq, layer, pos, n, s->kbuf, s->vbuf) != MLK_OK) return;
        if (!valid || pos < 0 || n < 1 || pos + n > s->len[seq]) fz_fail("store accepted", seq);
        for (int i = 0; i < n; i++) {
            memcpy(fz_at(s, seq, layer, pos + i), s->kbuf + (size_t)i * s->row, sizeof(float) * s->row);
            memcpy(fz_at(s, seq, layer, pos + i) + s->row, s->vbuf + (size_t)i * s->row, sizeof(float) * s->row);
        }
    } else if (op == 4) { /* truncate */
        int len = fz_next(in) - 1;
        if (mlk_kv_truncate(s->c, seq, len) != MLK_OK) return;
        s->len[seq] = len;
    } else if (op == 5) { /* compact: keep list from a bit mask, sometimes broken */
        int start = fz_next(in) % (s->max_len + 2) - 1, keep[64], n_keep = 0, mask = fz_next(in), brk = fz_next(in);
        for (int i = 0; i < 64 && n_keep < 64; i++)
            if ((mask >> (i % 8)) & 1 && (i * 7 + mask) % 3 != 0) keep[n_keep++] = i;
        if (brk % 16 == 0 && n_keep > 1) keep[n_keep - 1] = keep[0];
        n_keep = n_keep < brk % 70 ? n_keep : brk % 70;
        if (mlk_kv_compact(s->c, seq, start, n_keep, keep) != MLK_OK) return;
        for (int i = 0; i < n_keep; i++)
            for (int l = 0; l < s->cfg.layers; l++)
                memmove(fz_at(s, seq, l, start + i), fz_at(s, seq, l, start + keep[i]), sizeof(float) * 2 * s->row);
        s->len[seq] = start + n_keep;
    } else if (op == 6) { /* free */
        if (mlk_kv_seq_free(s->c, seq) != MLK_OK) return;
        s->len[seq] = -1;
    } else if (op == 7 || op == 8) { /* attention over up to 3 sequences */
        int n_seqs = 1 + fz_next(in) % 3, seqs[3], n_q[3], total = 0, parent[64];
        int heads = s->cfg.kv_heads * (1 + fz_next(in) % 3), tree = op == 8;
        float *q, *o;
        for (int i = 0; i < n_seqs; i++) {
            seqs[i] = fz_next(in) % (FZ_SEQS + 1);
            n_q[i] = fz_next(in) % 10;
            total += n_q[i] > 0 ? n_q[i] : 0;
        }
        for (int i = 0; i < 64; i++) parent[i] = i == 0 ? -1 : (fz_next(in) % (i + 1)) - 1;
        if (tree && n_q[0] > 64) n_q[0] = 64;
        q = (float *)malloc(sizeof(float) * (size_t)(total + 1) * heads * s->cfg.head_dim);
        o = (float *)malloc(sizeof(float) * (size_t)(total + 1) * heads * s->cfg.head_dim);
        for (size_t i = 0; i < (size_t)(total + 1) * heads * s->cfg.head_dim; i++) q[i] = (float)(i % 13) * 0.1f;
        mlk_kv_attn(s->c, fz_next(in) % (s->cfg.layers + 1), n_seqs, seqs, n_q, q, heads, 0.0f,
                    tree ? parent : NULL, o);
        free(q);
        free(o);
    }
    fz_verify(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_bytes in;
    fz_state s;
    size_t shadow_n;
    in.p = data;
    in.n = size;
    memset(&s, 0, sizeof s);
    s.cfg.layers = 1 + fz_next(&in) % 3;
    s.cfg.kv_heads = 1 + fz_next(&in) % 3;
    s.cfg.head_dim = 1 + fz_next(&in) % 70;
    s.cfg.block_size = 1 + fz_next(&in) % 9;
    s.cfg.num_blocks = 1 + fz_next(&in) % 24;
    s.cfg.max_seqs = 1 + fz_next(&in) % FZ_SEQS;
    s.cfg.type = (mlk_kv_type)(fz_next(&in) % 4);
    if (mlk_kv_create(&s.cfg, &s.c) != MLK_OK) return 0;
    s.row = s.cfg.kv_heads * s.cfg.head_dim;
    s.max_len = s.cfg.block_size * s.cfg.num_blocks;
    shadow_n = (size_t)FZ_SEQS * s.cfg.layers * s.max_len * 2 * s.row;
    s.shadow = (float *)malloc(sizeof(float) * shadow_n);
    s.kbuf = (float *)malloc(sizeof(float) * ((size_t)s.max_len + 12) * s.row);
    s.vbuf = (float *)malloc(sizeof(float) * ((size_t)s.max_len + 12) * s.row);
    for (int q = 0; q < FZ_SEQS; q++) s.len[q] = -1;
    while (in.n > 0) fz_step(&s, &in);
    for (int q = 0; q < FZ_SEQS; q++)
        if (s.len[q] >= 0 && mlk_kv_seq_free(s.c, q) != MLK_OK) fz_fail("free", q);
    {
        mlk_kv_stats st;
        if (mlk_kv_get_stats(s.c, &st) != MLK_OK || st.blocks_used != 0 || st.seqs != 0) fz_fail("leak", -1);
    }
    mlk_kv_destroy(s.c);
    free(s.shadow);
    free(s.kbuf);
    free(s.vbuf);
    return 0;
}

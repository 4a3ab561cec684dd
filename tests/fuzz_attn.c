/* libFuzzer target for attention: the input picks a small descriptor
   (batch 1-2, GQA heads, len_q / len_kv 1-40, head_dim 1-40, causal,
   window incl. INT_MAX, softcap, kv_len arrays incl. 0 entries, tree
   parents, both layouts, tile sizes; sometimes an invalid field) and a
   data seed; some key/value rows may hold NaN or inf. Checks:
   - mlk_attn_fwd, mlk_attn_naive (the double reference) and mlk_attn_bwd
     return the same status;
   - where the reference row is finite, the forward's o and lse are finite
     and within tolerance of it;
   - with non-finite rows only where no query can see them (past an item's
     kv_len), every output and gradient is finite, and those rows' dk / dv
     are 0; with all-finite data every gradient is finite.
   Build: make build/fuzz/fuzz_attn; run: tests/extra/fuzz_attn.sh */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"

#include <stdio.h>
#include <stdlib.h>

#include "fuzz_input.h"

static uint64_t fz_rng;

static uint64_t fz_u64(void)
{
    uint64_t z = (fz_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* roughly normal values: the sum of three uniforms in [-1, 1) */
static float fz_val(void)
{
    double s = 0;
    for (int i = 0; i < 3; i++) s += (double)(fz_u64() >> 11) * (2.0 / 9007199254740992.0) - 1.0;
    return (float)s;
}

static void fz_fail(const char *what, const mlk_attn_desc *d, long at, double got, double want)
{
    fprintf(stderr,
            "fuzz_attn: %s at %ld (got %.9g, want %.9g); B=%d H=%d Hkv=%d Nq=%d Nkv=%d D=%d causal=%d window=%d "
            "softcap=%g scale=%g layout=%d tiles=%d,%d kv_len=%s tree=%s\n",
            what, at, got, want, d->batch, d->heads, d->kv_heads, d->len_q, d->len_kv, d->head_dim, d->causal,
            d->window, (double)d->softcap, (double)d->scale, (int)d->layout, d->tile_q, d->tile_kv,
            d->kv_len ? "yes" : "no", d->tree_parent ? "yes" : "no");
    abort();
}

static int fz_finite(float x) { return x == x && x != INFINITY && x != -INFINITY; }

/* Offset of row (b, h, t) of a [B, heads, len, D] tensor in either layout. */
static size_t fz_row(const mlk_attn_desc *d, int heads, int len, int b, int h, int t)
{
    if (d->layout == MLK_BNHD) return (((size_t)b * len + t) * heads + h) * (size_t)d->head_dim;
    return (((size_t)b * heads + h) * len + t) * (size_t)d->head_dim;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_bytes in;
    mlk_attn_desc d;
    int kv_len[2], parent[40], hkv, lkv, inject, broken;
    size_t nq, nkv, nl;
    float *q, *k, *v, *o, *lse, *o_ref, *lse_ref, *dout, *dq, *dk, *dv;
    mlk_status st_fwd, st_ref, st_bwd;
    in.p = data;
    in.n = size;
    memset(&d, 0, sizeof d);
    d.batch = 1 + fz_next(&in) % 2;
    hkv = 1 + fz_next(&in) % 3;
    d.kv_heads = fz_next(&in) % 4 == 0 ? 0 : hkv; /* 0 means heads */
    d.heads = hkv * (1 + fz_next(&in) % 3);
    if (d.kv_heads == 0) hkv = d.heads;
    d.len_q = 1 + fz_next(&in) % 40;
    d.len_kv = fz_next(&in) % 41; /* 0 means len_q */
    lkv = d.len_kv ? d.len_kv : d.len_q;
    d.head_dim = 1 + fz_next(&in) % 40;
    d.causal = fz_next(&in) % 2;
    switch (fz_next(&in) % 6) {
    case 0: d.window = INT_MAX; break;
    case 1: case 2: d.window = 1 + fz_next(&in) % 40; break;
    default: d.window = 0;
    }
    switch (fz_next(&in) % 4) {
    case 0: d.softcap = (float)(1 + fz_next(&in) % 50) * 0.5f; break;
    default: d.softcap = 0;
    }
    d.scale = fz_next(&in) % 3 == 0 ? (float)(fz_next(&in) % 64) * 0.05f : 0.0f;
    d.layout = (mlk_layout)(fz_next(&in) % 2);
    d.tile_q = fz_next(&in) % 10;
    d.tile_kv = fz_next(&in) % 10;
    if (fz_next(&in) % 3 == 0) {
        for (int b = 0; b < d.batch; b++) kv_len[b] = fz_next(&in) % (lkv + 1);
        d.kv_len = kv_len;
    }
    if (fz_next(&in) % 3 == 0) {
        for (int i = 0; i < d.len_q; i++) parent[i] = (int)(fz_next(&in) % (unsigned)(i + 1)) - 1;
        d.tree_parent = parent;
    }
    /* one invalid field now and then: every entry point must agree on the code */
    broken = fz_next(&in) % 16;
    switch (broken) {
    case 1: d.kv_heads = d.heads + 1; break;
    case 2: d.window = -1; break;
    case 3: d.softcap = NAN; break;
    case 4: d.layout = (mlk_layout)2; break;
    case 5: if (d.kv_len) kv_len[0] = lkv + 1; break;
    case 6: if (d.tree_parent && d.len_q > 1) parent[d.len_q - 1] = d.len_q - 1; break;
    case 7: d.tile_q = -1; break;
    case 8: d.scale = NAN; break;
    default: broken = 0;
    }
    inject = fz_next(&in) % 4; /* 0, 1: finite; 2: NaN/inf past kv_len only; 3: anywhere */
    fz_rng = 0;
    while (in.n) fz_rng = fz_rng * 131 + (uint64_t)fz_next(&in);

    nq = (size_t)d.batch * d.heads * d.len_q * d.head_dim;
    nkv = (size_t)d.batch * hkv * lkv * d.head_dim;
    nl = (size_t)d.batch * d.heads * d.len_q;
    q = (float *)malloc(nq * sizeof(float));
    dout = (float *)malloc(nq * sizeof(float));
    o = (float *)malloc(nq * sizeof(float));
    o_ref = (float *)malloc(nq * sizeof(float));
    dq = (float *)malloc(nq * sizeof(float));
    k = (float *)malloc(nkv * sizeof(float));
    v = (float *)malloc(nkv * sizeof(float));
    dk = (float *)malloc(nkv * sizeof(float));
    dv = (float *)malloc(nkv * sizeof(float));
    lse = (float *)malloc(nl * sizeof(float));
    lse_ref = (float *)malloc(nl * sizeof(float));
    for (size_t i = 0; i < nq; i++) { q[i] = fz_val() * 2; dout[i] = fz_val(); }
    for (size_t i = 0; i < nkv; i++) { k[i] = fz_val() * 2; v[i] = fz_val(); }
    if (inject >= 2) /* a few poisoned key or value rows */
        for (int r = 0; r < 3; r++) {
            int b = (int)(fz_u64() % (uint64_t)d.batch), h = (int)(fz_u64() % (uint64_t)hkv);
            int n_b = d.kv_len && !broken ? kv_len[b] : lkv, j;
            float bad = r == 0 ? NAN : r == 1 ? INFINITY : -INFINITY;
            if (inject == 2 && n_b >= lkv) continue;
            j = inject == 2 ? n_b + (int)(fz_u64() % (uint64_t)(lkv - n_b)) : (int)(fz_u64() % (uint64_t)lkv);
            (fz_u64() & 1 ? k : v)[fz_row(&d, hkv, lkv, b, h, j) + fz_u64() % (uint64_t)d.head_dim] = bad;
        }

    st_ref = mlk_attn_naive(&d, q, k, v, o_ref, lse_ref);
    st_fwd = mlk_attn_fwd(&d, q, k, v, o, lse);
    if (st_fwd != st_ref) fz_fail("fwd and naive status differ", &d, -1, st_fwd, st_ref);
    if (broken && st_fwd == MLK_OK && (broken != 5 || d.kv_len) && (broken != 6 || (d.tree_parent && d.len_q > 1)))
        fz_fail("an invalid descriptor was accepted", &d, broken, st_fwd, 0);
    if (st_fwd == MLK_OK) {
        for (size_t i = 0; i < nl; i++) {
            double want = lse_ref[i], got = lse[i];
            if (!fz_finite(lse_ref[i])) {
                if (lse_ref[i] == -INFINITY && got != -INFINITY) fz_fail("lse of an empty row", &d, (long)i, got, want);
                continue;
            }
            if (!(fabs(got - want) <= 1e-4 * (1 + fabs(want)))) fz_fail("lse", &d, (long)i, got, want);
        }
        for (size_t i = 0; i < nq; i++) {
            double want = o_ref[i], got = o[i];
            if (!fz_finite(o_ref[i])) continue;
            if (!(fabs(got - want) <= 2e-4 + 2e-3 * fabs(want))) fz_fail("o", &d, (long)i, got, want);
        }
    }
    st_bwd = mlk_attn_bwd(&d, q, k, v, o, dout, lse, dq, dk, dv);
    if (st_bwd != st_fwd) fz_fail("bwd and fwd status differ", &d, -1, st_bwd, st_fwd);
    if (st_bwd == MLK_OK && inject <= 2) {
        for (size_t i = 0; i < nq; i++)
            if (!fz_finite(o[i]) || !fz_finite(dq[i])) fz_fail("non-finite o or dq from finite visible data", &d, (long)i, dq[i], 0);
        for (int b = 0; b < d.batch; b++)
            for (int h = 0; h < hkv; h++)
                for (int j = 0; j < lkv; j++) {
                    size_t at = fz_row(&d, hkv, lkv, b, h, j);
                    int hidden = d.kv_len && j >= kv_len[b];
                    for (int c = 0; c < d.head_dim; c++) {
                        if (!fz_finite(dk[at + c]) || !fz_finite(dv[at + c]))
                            fz_fail("non-finite dk or dv", &d, (long)(at + c), dk[at + c], 0);
                        if (hidden && (dk[at + c] != 0 || dv[at + c] != 0))
                            fz_fail("gradient of a key no query sees", &d, (long)(at + c), dk[at + c], 0);
                    }
                }
    }
    free(q); free(dout); free(o); free(o_ref); free(dq); free(k); free(v); free(dk); free(dv); free(lse); free(lse_ref);
    return 0;
}

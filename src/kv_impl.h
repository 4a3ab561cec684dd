/* ======================================================================
   KV cache: implementation
   ====================================================================== */

#ifdef __cplusplus
extern "C" {
#endif

struct mlk_kv_cache {
    mlk_kv_config cfg;
    size_t row_bytes;   /* one position of one head, K or V */
    size_t block_bytes; /* layers * 2 * kv_heads * block_size rows */
    unsigned char *pool;
    int *refcount;      /* [num_blocks]; 0 = on the free list */
    int *free_list;     /* stack of free block ids */
    int free_count;
    int *seq_len;       /* [max_seqs]; -1 = unused slot */
    int **table;        /* [max_seqs] block ids, table_cap[s] entries */
    int *table_cap;
    int live_seqs;
};

/* ---- storage formats: one row = head_dim values of one head ----
   F32/F16: the values. Q8/Q4: nb float scales, then int8 values or
   4-bit values biased by 8 (element j in byte j/2, low nibble first).
   The attention section reads this layout ("typed rows"), so decoding
   lives there (mlk__attn_row_decode); encoding lives here. */

/* f32 -> f16, round to nearest even, clamped to +-65504 (NaN stays NaN). */
static uint16_t mlk__kv_f16_from_f32(float f)
{
    uint32_t x, sign, mant, q, rem, half;
    int shift;
    if (f > 65504.0f) f = 65504.0f;
    if (f < -65504.0f) f = -65504.0f;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (x >= 0x38800000u) { /* normal half: rebias the exponent, round 13 bits */
        x -= 0x38000000u;
        return (uint16_t)(sign | ((x + 0xfffu + ((x >> 13) & 1u)) >> 13));
    }
    if (x < 0x33000000u) return (uint16_t)sign; /* below half the smallest subnormal */
    mant = (x & 0x7fffffu) | 0x800000u;          /* value = mant * 2^(e-150) */
    shift = 126 - (int)(x >> 23);                /* in units of 2^-24 */
    q = mant >> shift;
    rem = mant & ((1u << shift) - 1u);
    half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

static void mlk__kv_f16_encode(int d, const float *x, uint16_t *h)
{
    int j = 0;
#if defined(MLK__AVX2) && defined(__F16C__)
    const __m256 lo = _mm256_set1_ps(-65504.0f), hi = _mm256_set1_ps(65504.0f);
    for (; j + 8 <= d; j += 8) { /* min/max return their 2nd operand on NaN: NaN survives */
        __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(x + j)));
        _mm_storeu_si128((__m128i *)(h + j), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
#endif
    for (; j < d; j++) h[j] = mlk__kv_f16_from_f32(x[j]);
}

/* Symmetric quantisation of n <= 32 values to [-qmax, qmax]; returns the
   scale max|x| / qmax. |x - q * scale| <= scale / 2 up to float rounding. */
static float mlk__kv_quant_block(int n, int qmax, const float *x, signed char *q)
{
    float amax = 0.0f, inv;
    for (int j = 0; j < n; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    inv = amax > 0.0f ? (float)qmax / amax : 0.0f;
    for (int j = 0; j < n; j++) {
        float r = roundf(x[j] * inv);
        q[j] = (signed char)(r > (float)qmax ? qmax : r < (float)-qmax ? -qmax : (int)r);
    }
    return amax / (float)qmax;
}

static void mlk__kv_encode_row(mlk_kv_type type, int d, const float *x, unsigned char *row)
{
    float *scales = (float *)(void *)row;
    unsigned char *data = row + 4 * mlk__attn_qblocks(d);
    signed char qb[MLK__ATTN_QBLOCK];
    if (type == MLK_KV_F32) {
        memcpy(row, x, (size_t)d * 4);
        return;
    }
    if (type == MLK_KV_F16) {
        mlk__kv_f16_encode(d, x, (uint16_t *)(void *)row);
        return;
    }
    for (int b0 = 0; b0 < d; b0 += MLK__ATTN_QBLOCK) {
        int n = d - b0 < MLK__ATTN_QBLOCK ? d - b0 : MLK__ATTN_QBLOCK;
        scales[b0 / MLK__ATTN_QBLOCK] = mlk__kv_quant_block(n, type == MLK_KV_Q8 ? 127 : 7, x + b0, qb);
        if (type == MLK_KV_Q8) {
            memcpy(data + b0, qb, (size_t)n);
            continue;
        }
        for (int j = 0; j < n; j += 2) /* b0 is even: element pairs share a byte */
            data[(b0 + j) / 2] = (unsigned char)((qb[j] + 8) | (j + 1 < n ? (qb[j + 1] + 8) << 4 : 0));
    }
}

/* Decodes n consecutive rows (row_bytes apart) into n * d floats. */
static void mlk__kv_decode_rows(mlk_kv_type type, int d, size_t row_bytes, int n, const unsigned char *row, float *x)
{
    for (int i = 0; i < n; i++, row += row_bytes, x += d) mlk__attn_row_decode(type, d, row, x);
}

/* ---- pool and block tables ---- */

MLKERN_DEF size_t mlk_kv_bytes_per_token(const mlk_kv_config *cfg)
{
    size_t row, n;
    if (!cfg || cfg->kv_heads < 1 || cfg->head_dim < 1) return 0;
    if (cfg->type != MLK_KV_F32 && cfg->type != MLK_KV_F16 && cfg->type != MLK_KV_Q8 &&
        cfg->type != MLK_KV_Q4)
        return 0;
    row = mlk__attn_row_bytes(cfg->type, cfg->head_dim);
    if (!mlk__count4(2, cfg->kv_heads, 1, 1, row, &n)) return 0;
    return n * row;
}

MLKERN_DEF mlk_status mlk_kv_create(const mlk_kv_config *cfg, mlk_kv_cache **out)
{
    mlk_kv_cache *c;
    size_t tok, positions, pool_bytes;
    if (!cfg || !out) return MLK_ERR_NULL;
    if (cfg->layers < 1 || cfg->kv_heads < 1 || cfg->head_dim < 1 || cfg->block_size < 1 ||
        cfg->num_blocks < 1 || cfg->max_seqs < 1)
        return MLK_ERR_SHAPE;
    if (cfg->type != MLK_KV_F32 && cfg->type != MLK_KV_F16 && cfg->type != MLK_KV_Q8 &&
        cfg->type != MLK_KV_Q4)
        return MLK_ERR_ARG;
    tok = mlk_kv_bytes_per_token(cfg);
    if (!tok || !mlk__count4(cfg->layers, cfg->block_size, 1, 1, tok, &positions) ||
        !mlk__mul_ok(positions * tok, (size_t)cfg->num_blocks, &pool_bytes) ||
        (size_t)cfg->max_seqs > SIZE_MAX / sizeof(int *))
        return MLK_ERR_OVERFLOW;
    c = (mlk_kv_cache *)MLKERN_MALLOC(sizeof *c);
    if (!c) return MLK_ERR_NOMEM;
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    c->row_bytes = mlk__attn_row_bytes(cfg->type, cfg->head_dim);
    c->block_bytes = positions * tok;
    c->pool = (unsigned char *)mlk__alloc(pool_bytes);
    c->refcount = (int *)MLKERN_MALLOC((size_t)cfg->num_blocks * sizeof(int));
    c->free_list = (int *)MLKERN_MALLOC((size_t)cfg->num_blocks * sizeof(int));
    c->seq_len = (int *)MLKERN_MALLOC((size_t)cfg->max_seqs * sizeof(int));
    c->table = (int **)MLKERN_MALLOC((size_t)cfg->max_seqs * sizeof(int *));
    c->table_cap = (int *)MLKERN_MALLOC((size_t)cfg->max_seqs * sizeof(int));
    if (!c->pool || !c->refcount || !c->free_list || !c->seq_len || !c->table || !c->table_cap) {
        if (c->table) memset(c->table, 0, (size_t)cfg->max_seqs * sizeof(int *));
        mlk_kv_destroy(c);
        return MLK_ERR_NOMEM;
    }
    for (int b = 0; b < cfg->num_blocks; b++) { /* pop order 0, 1, 2, ... */
        c->refcount[b] = 0;
        c->free_list[b] = cfg->num_blocks - 1 - b;
    }
    c->free_count = cfg->num_blocks;
    for (int s = 0; s < cfg->max_seqs; s++) {
        c->seq_len[s] = -1;
        c->table[s] = NULL;
        c->table_cap[s] = 0;
    }
    *out = c;
    return MLK_OK;
}

MLKERN_DEF void mlk_kv_destroy(mlk_kv_cache *c)
{
    if (!c) return;
    if (c->table)
        for (int s = 0; s < c->cfg.max_seqs; s++) MLKERN_FREE(c->table[s]);
    mlk__free(c->pool);
    MLKERN_FREE(c->refcount);
    MLKERN_FREE(c->free_list);
    MLKERN_FREE(c->seq_len);
    MLKERN_FREE(c->table);
    MLKERN_FREE(c->table_cap);
    MLKERN_FREE(c);
}

static int mlk__kv_valid_seq(const mlk_kv_cache *c, int seq)
{
    return seq >= 0 && seq < c->cfg.max_seqs && c->seq_len[seq] >= 0;
}

static int mlk__kv_blocks_for(const mlk_kv_cache *c, int len)
{
    return (int)(((long long)len + c->cfg.block_size - 1) / c->cfg.block_size);
}

/* Makes room for n block ids in the table of seq, keeping its first `kept`
   entries; 0 on allocation failure (the table is unchanged then). */
static int mlk__kv_reserve(mlk_kv_cache *c, int seq, int n, int kept)
{
    int cap = c->table_cap[seq], *t;
    if (n <= cap) return 1;
    cap = cap < 4 ? 4 : cap;
    while (cap < n) cap = cap > c->cfg.num_blocks / 2 ? c->cfg.num_blocks : cap * 2;
    t = (int *)MLKERN_MALLOC((size_t)cap * sizeof(int));
    if (!t) return 0;
    if (kept > 0) memcpy(t, c->table[seq], (size_t)kept * sizeof(int));
    MLKERN_FREE(c->table[seq]);
    c->table[seq] = t;
    c->table_cap[seq] = cap;
    return 1;
}

static void mlk__kv_release(mlk_kv_cache *c, int block)
{
    if (--c->refcount[block] == 0) c->free_list[c->free_count++] = block;
}

static int mlk__kv_take_block(mlk_kv_cache *c)
{
    int b = c->free_list[--c->free_count];
    c->refcount[b] = 1;
    return b;
}

/* Shortens seq to len, releasing the blocks past the new end. */
static void mlk__kv_shrink(mlk_kv_cache *c, int seq, int len)
{
    int keep = mlk__kv_blocks_for(c, len), have = mlk__kv_blocks_for(c, c->seq_len[seq]);
    for (int b = keep; b < have; b++) mlk__kv_release(c, c->table[seq][b]);
    c->seq_len[seq] = len;
}

/* Number of shared blocks among table entries [b0, b1] of seq. */
static int mlk__kv_shared_in(const mlk_kv_cache *c, int seq, int b0, int b1)
{
    int n = 0;
    for (int b = b0; b <= b1; b++) n += c->refcount[c->table[seq][b]] > 1;
    return n;
}

/* Copy-on-write: gives seq a private copy of its table entry bi. The
   caller has checked that enough blocks are free. */
static void mlk__kv_make_private(mlk_kv_cache *c, int seq, int bi)
{
    int old = c->table[seq][bi], fresh;
    if (c->refcount[old] == 1) return;
    fresh = mlk__kv_take_block(c);
    memcpy(c->pool + (size_t)fresh * c->block_bytes, c->pool + (size_t)old * c->block_bytes, c->block_bytes);
    c->refcount[old]--;
    c->table[seq][bi] = fresh;
}

/* Row of (layer, kv 0 = K / 1 = V, head) at position pos of seq. */
static unsigned char *mlk__kv_row(const mlk_kv_cache *c, int seq, int layer, int kv, int head, int pos)
{
    int bs = c->cfg.block_size, block = c->table[seq][pos / bs];
    size_t plane = ((size_t)layer * 2 + (size_t)kv) * (size_t)c->cfg.kv_heads + (size_t)head;
    return c->pool + (size_t)block * c->block_bytes + (plane * (size_t)bs + (size_t)(pos % bs)) * c->row_bytes;
}

MLKERN_DEF mlk_status mlk_kv_seq_new(mlk_kv_cache *c, int *seq)
{
    if (!c || !seq) return MLK_ERR_NULL;
    for (int s = 0; s < c->cfg.max_seqs; s++) {
        if (c->seq_len[s] >= 0) continue;
        c->seq_len[s] = 0;
        c->live_seqs++;
        *seq = s;
        return MLK_OK;
    }
    return MLK_ERR_CAPACITY;
}

MLKERN_DEF mlk_status mlk_kv_seq_free(mlk_kv_cache *c, int seq)
{
    if (!c) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq)) return MLK_ERR_ARG;
    mlk__kv_shrink(c, seq, 0);
    c->seq_len[seq] = -1;
    c->live_seqs--;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_seq_fork(mlk_kv_cache *c, int src, int *dst)
{
    int s, nb;
    if (!c || !dst) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, src)) return MLK_ERR_ARG;
    for (s = 0; s < c->cfg.max_seqs && c->seq_len[s] >= 0; s++) {}
    if (s == c->cfg.max_seqs) return MLK_ERR_CAPACITY;
    nb = mlk__kv_blocks_for(c, c->seq_len[src]);
    if (!mlk__kv_reserve(c, s, nb, 0)) return MLK_ERR_NOMEM;
    for (int b = 0; b < nb; b++) {
        c->table[s][b] = c->table[src][b];
        c->refcount[c->table[src][b]]++;
    }
    c->seq_len[s] = c->seq_len[src];
    c->live_seqs++;
    *dst = s;
    return MLK_OK;
}

MLKERN_DEF int mlk_kv_seq_len(const mlk_kv_cache *c, int seq)
{
    return c && mlk__kv_valid_seq(c, seq) ? c->seq_len[seq] : -1;
}

MLKERN_DEF mlk_status mlk_kv_append(mlk_kv_cache *c, int seq, int n)
{
    int len, have, need;
    if (!c) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq)) return MLK_ERR_ARG;
    if (n < 1) return MLK_ERR_SHAPE;
    len = c->seq_len[seq];
    if (n > INT_MAX - len) return MLK_ERR_OVERFLOW;
    have = mlk__kv_blocks_for(c, len);
    need = mlk__kv_blocks_for(c, len + n);
    if (need - have > c->free_count) return MLK_ERR_CAPACITY;
    if (!mlk__kv_reserve(c, seq, need, have)) return MLK_ERR_NOMEM;
    for (int b = have; b < need; b++) c->table[seq][b] = mlk__kv_take_block(c);
    c->seq_len[seq] = len + n;
    return MLK_OK;
}

/* Checks seq, layer and the range [pos, pos + n) shared by store and load. */
static mlk_status mlk__kv_check_range(const mlk_kv_cache *c, int seq, int layer, int pos, int n)
{
    if (!mlk__kv_valid_seq(c, seq) || layer < 0 || layer >= c->cfg.layers) return MLK_ERR_ARG;
    if (n < 1 || pos < 0 || pos > c->seq_len[seq] - n) return MLK_ERR_SHAPE;
    return MLK_OK;
}

static int mlk__kv_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) <= FLT_MAX)) return 0;
    return 1;
}

MLKERN_DEF mlk_status mlk_kv_store(mlk_kv_cache *c, int seq, int layer, int pos,
    int n, const float *k, const float *v)
{
    int hkv, d, bs, b0, b1;
    size_t count;
    mlk_status st;
    if (!c || !k || !v) return MLK_ERR_NULL;
    if ((st = mlk__kv_check_range(c, seq, layer, pos, n)) != MLK_OK) return st;
    hkv = c->cfg.kv_heads;
    d = c->cfg.head_dim;
    bs = c->cfg.block_size;
    if (!mlk__count4(n, hkv, d, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    if ((c->cfg.type == MLK_KV_Q8 || c->cfg.type == MLK_KV_Q4) &&
        (!mlk__kv_all_finite(k, count) || !mlk__kv_all_finite(v, count)))
        return MLK_ERR_VALUE;
    b0 = pos / bs;
    b1 = (pos + n - 1) / bs;
    if (mlk__kv_shared_in(c, seq, b0, b1) > c->free_count) return MLK_ERR_CAPACITY;
    for (int b = b0; b <= b1; b++) mlk__kv_make_private(c, seq, b);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < hkv; h++) {
            size_t off = ((size_t)i * (size_t)hkv + (size_t)h) * (size_t)d;
            mlk__kv_encode_row(c->cfg.type, d, k + off, mlk__kv_row(c, seq, layer, 0, h, pos + i));
            mlk__kv_encode_row(c->cfg.type, d, v + off, mlk__kv_row(c, seq, layer, 1, h, pos + i));
        }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_load(const mlk_kv_cache *c, int seq, int layer, int pos,
    int n, float *k, float *v)
{
    int hkv, d;
    size_t count;
    mlk_status st;
    if (!c || !k || !v) return MLK_ERR_NULL;
    if ((st = mlk__kv_check_range(c, seq, layer, pos, n)) != MLK_OK) return st;
    hkv = c->cfg.kv_heads;
    d = c->cfg.head_dim;
    if (!mlk__count4(n, hkv, d, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < hkv; h++) {
            size_t off = ((size_t)i * (size_t)hkv + (size_t)h) * (size_t)d;
            mlk__kv_decode_rows(c->cfg.type, d, c->row_bytes, 1, mlk__kv_row(c, seq, layer, 0, h, pos + i), k + off);
            mlk__kv_decode_rows(c->cfg.type, d, c->row_bytes, 1, mlk__kv_row(c, seq, layer, 1, h, pos + i), v + off);
        }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_truncate(mlk_kv_cache *c, int seq, int len)
{
    if (!c) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq)) return MLK_ERR_ARG;
    if (len < 0 || len > c->seq_len[seq]) return MLK_ERR_SHAPE;
    mlk__kv_shrink(c, seq, len);
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_compact(mlk_kv_cache *c, int seq, int start,
    int n_keep, const int *keep)
{
    int len, bs, copies = 0, last_block = -1;
    if (!c || (n_keep > 0 && !keep)) return MLK_ERR_NULL;
    if (!mlk__kv_valid_seq(c, seq)) return MLK_ERR_ARG;
    len = c->seq_len[seq];
    if (start < 0 || start > len) return MLK_ERR_SHAPE;
    if (n_keep < 0 || n_keep > len - start) return MLK_ERR_ARG;
    for (int i = 0; i < n_keep; i++)
        if (keep[i] < 0 || keep[i] >= len - start || (i > 0 && keep[i] <= keep[i - 1])) return MLK_ERR_ARG;
    /* Only destinations whose row changes are written; keep increasing
       means destinations are visited in block order. */
    bs = c->cfg.block_size;
    for (int i = 0; i < n_keep; i++) {
        int b = (start + i) / bs;
        if (keep[i] == i || b == last_block) continue;
        copies += c->refcount[c->table[seq][b]] > 1;
        last_block = b;
    }
    if (copies > c->free_count) return MLK_ERR_CAPACITY;
    for (int i = 0; i < n_keep; i++) {
        if (keep[i] == i) continue;
        mlk__kv_make_private(c, seq, (start + i) / bs);
        for (int layer = 0; layer < c->cfg.layers; layer++)
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < c->cfg.kv_heads; h++)
                    memcpy(mlk__kv_row(c, seq, layer, kv, h, start + i),
                           mlk__kv_row(c, seq, layer, kv, h, start + keep[i]), c->row_bytes);
    }
    mlk__kv_shrink(c, seq, start + n_keep);
    return MLK_OK;
}

/* ---- attention over the cache ----
   One task = one sequence x one kv head x a chunk of its query positions,
   with every query head of the GQA group as rows of the task. The cache is
   walked in key tiles of MLK__KV_TILE positions and fed to the attention
   section's streaming kernel (mlk__attn_rows_*), so the masking rules and
   the online softmax exist once. Decode-sized tasks hand it the rows in
   place, in their stored format (mlk__attn_rows_update_typed); larger ones
   get each tile dequantised into per-thread scratch (F32 rows inside one
   block are read in place) for the packed micro-kernel. */

#define MLK__KV_TILE 128

typedef struct mlk__kv_attn_job {
    const mlk_kv_cache *c;
    int layer, heads, group, q_chunk;
    float scale;
    const int *seqs, *n_q, *tree_parent, *tree_depth;
    const size_t *q_off;  /* [n_seqs]: first float of each sequence's q and o */
    const int *task_base; /* [n_seqs + 1]: first task of each sequence */
    int n_seqs;
    size_t slab_bytes, rows_bytes;
    double macs; /* multiply-adds of the call, for the OpenMP threshold */
} mlk__kv_attn_job;

/* Keys [kv0, kv0 + nk) of one head as float rows of stride head_dim: F32
   rows inside one block are read in place; otherwise each block's run of
   rows (contiguous in the pool) is decoded into the buffers. */
static void mlk__kv_tile(const mlk_kv_cache *c, int seq, int layer, int head, int kv0, int nk,
                         float *k_buf, float *v_buf, const float **k_rows, const float **v_rows)
{
    int bs = c->cfg.block_size, d = c->cfg.head_dim;
    if (c->cfg.type == MLK_KV_F32 && kv0 / bs == (kv0 + nk - 1) / bs) {
        *k_rows = (const float *)(const void *)mlk__kv_row(c, seq, layer, 0, head, kv0);
        *v_rows = (const float *)(const void *)mlk__kv_row(c, seq, layer, 1, head, kv0);
        return;
    }
    for (int j = 0, run; j < nk; j += run) {
        run = bs - (kv0 + j) % bs;
        run = run < nk - j ? run : nk - j;
        mlk__kv_decode_rows(c->cfg.type, d, c->row_bytes, run, mlk__kv_row(c, seq, layer, 0, head, kv0 + j),
                            k_buf + (size_t)j * d);
        mlk__kv_decode_rows(c->cfg.type, d, c->row_bytes, run, mlk__kv_row(c, seq, layer, 1, head, kv0 + j),
                            v_buf + (size_t)j * d);
    }
    *k_rows = k_buf;
    *v_rows = v_buf;
}

/* Row pointers of keys [kv0, kv0 + nk) of one head, K and V: one table
   lookup per block, then consecutive rows. */
static void mlk__kv_tile_rows(const mlk_kv_cache *c, int seq, int layer, int head, int kv0, int nk,
                              const unsigned char **k_row, const unsigned char **v_row)
{
    int bs = c->cfg.block_size;
    for (int j = 0, run; j < nk; j += run) {
        const unsigned char *k = mlk__kv_row(c, seq, layer, 0, head, kv0 + j);
        const unsigned char *v = mlk__kv_row(c, seq, layer, 1, head, kv0 + j);
        run = bs - (kv0 + j) % bs;
        run = run < nk - j ? run : nk - j;
        for (int i = 0; i < run; i++, k += c->row_bytes, v += c->row_bytes) {
            k_row[j + i] = k;
            v_row[j + i] = v;
        }
    }
}

static void mlk__kv_attn_task(const mlk__kv_attn_job *job, int task, const float *q, float *o,
                              unsigned char *slab)
{
    const mlk_kv_cache *c = job->c;
    int lo = 0, hi = job->n_seqs, s, hkv = c->cfg.kv_heads, d = c->cfg.head_dim;
    int head, q0, nq, key_lo, key_hi;
    size_t at;
    float *k_buf = (float *)(void *)(slab + job->rows_bytes), *v_buf = k_buf + (size_t)MLK__KV_TILE * d;
    mlk__attn_mask mask;
    mlk__attn_rows st;
    while (hi - lo > 1) { /* the sequence whose tasks contain `task` */
        int mid = (lo + hi) / 2;
        if (job->task_base[mid] <= task) lo = mid; else hi = mid;
    }
    s = lo;
    head = (task - job->task_base[s]) % hkv;
    q0 = (task - job->task_base[s]) / hkv * job->q_chunk;
    nq = job->n_q[s] - q0 < job->q_chunk ? job->n_q[s] - q0 : job->q_chunk;
    mask.n_keys = c->seq_len[job->seqs[s]];
    mask.n_q = job->n_q[s];
    mask.causal = 1;
    mask.window = 0;
    mask.tree_parent = job->tree_parent;
    mask.tree_depth = job->tree_depth;
    at = job->q_off[s] + ((size_t)q0 * (size_t)job->heads + (size_t)head * (size_t)job->group) * (size_t)d;
    mlk__attn_rows_init(&st, &mask, q0, nq, job->group, d, MLK__KV_TILE, job->scale, 0.0f, q + at,
                        (size_t)d, (size_t)job->heads * (size_t)d, slab);
    mlk__attn_key_range(&mask, q0, q0 + nq, &key_lo, &key_hi);
    for (int kv0 = key_lo; kv0 < key_hi; kv0 += MLK__KV_TILE) {
        int nk = key_hi - kv0 < MLK__KV_TILE ? key_hi - kv0 : MLK__KV_TILE;
        const float *k_rows, *v_rows;
        if (mlk__attn_rows_typed(&st)) { /* decode: the kernel reads the blocks in place */
            mlk__kv_tile_rows(c, job->seqs[s], job->layer, head, kv0, nk, st.k_row, st.v_row);
            mlk__attn_rows_update_typed(&st, kv0, nk, c->cfg.type);
            continue;
        }
        mlk__kv_tile(c, job->seqs[s], job->layer, head, kv0, nk, k_buf, v_buf, &k_rows, &v_rows);
        mlk__attn_rows_update(&st, kv0, nk, k_rows, (size_t)d, v_rows, (size_t)d);
    }
    mlk__attn_rows_finish(&st, o + at, (size_t)d, (size_t)job->heads * (size_t)d, NULL, 0, 0);
}

MLKERN_DEF mlk_status mlk_kv_attn(const mlk_kv_cache *c, int layer, int n_seqs,
    const int *seqs, const int *n_q, const float *q, int heads,
    float scale, const int *tree_parent, float *o)
{
    mlk__kv_attn_job job;
    mlk__arena ar;
    mlk_status st;
    size_t q_floats = 0, row, cap, slabs;
    long long tasks = 0;
    int *depth, *task_base;
    size_t *q_off;
    unsigned char *slab0;
    if (!c || !seqs || !n_q || !q || !o) return MLK_ERR_NULL;
    if (layer < 0 || layer >= c->cfg.layers) return MLK_ERR_ARG;
    if (n_seqs < 1 || heads < 1 || heads % c->cfg.kv_heads != 0) return MLK_ERR_SHAPE;
    if (!(fabsf(scale) <= FLT_MAX) || (tree_parent && n_seqs != 1)) return MLK_ERR_ARG;
    for (int s = 0; s < n_seqs; s++)
        if (!mlk__kv_valid_seq(c, seqs[s])) return MLK_ERR_ARG;
    for (int s = 0; s < n_seqs; s++)
        if (n_q[s] < 1 || n_q[s] > c->seq_len[seqs[s]]) return MLK_ERR_SHAPE;
    job.c = c;
    job.layer = layer;
    job.heads = heads;
    job.group = heads / c->cfg.kv_heads;
    job.q_chunk = job.group >= 64 ? 1 : 64 / job.group; /* about 64 rows per task */
    job.scale = scale != 0 ? scale : 1.0f / sqrtf((float)c->cfg.head_dim);
    job.n_seqs = n_seqs;
    job.tree_parent = tree_parent;
    job.seqs = seqs;
    job.n_q = n_q;
    job.macs = 0;
    if (!mlk__count4(1, heads, c->cfg.head_dim, 1, sizeof(float), &row)) return MLK_ERR_OVERFLOW;
    for (int s = 0; s < n_seqs; s++) {
        size_t part;
        if (!mlk__mul_ok((size_t)n_q[s], row, &part) || q_floats > SIZE_MAX / sizeof(float) - part)
            return MLK_ERR_OVERFLOW;
        q_floats += part;
        job.macs += (double)n_q[s] * c->seq_len[seqs[s]] * heads * c->cfg.head_dim;
        tasks += (long long)((n_q[s] + job.q_chunk - 1) / job.q_chunk) * c->cfg.kv_heads;
        if (tasks > INT_MAX) return MLK_ERR_OVERFLOW;
    }
    job.rows_bytes = mlk__arena_need(0, mlk__attn_rows_scratch(job.q_chunk * job.group, c->cfg.head_dim, MLK__KV_TILE));
    job.slab_bytes = mlk__arena_need(job.rows_bytes, 2 * sizeof(float) * (size_t)MLK__KV_TILE * (size_t)c->cfg.head_dim);
    if (job.slab_bytes == SIZE_MAX || !mlk__mul_ok(job.slab_bytes, (size_t)mlk__max_threads(), &slabs))
        return MLK_ERR_OVERFLOW;
    cap = mlk__arena_need(0, (size_t)n_q[0] * sizeof(int));
    cap = mlk__arena_need(cap, (size_t)n_seqs * sizeof(size_t));
    cap = mlk__arena_need(cap, ((size_t)n_seqs + 1) * sizeof(int));
    cap = mlk__arena_need(cap, slabs);
    if ((st = mlk__arena_init(&ar, NULL, cap)) != MLK_OK) return st;
    depth = (int *)mlk__arena_take(&ar, (size_t)n_q[0] * sizeof(int));
    q_off = (size_t *)mlk__arena_take(&ar, (size_t)n_seqs * sizeof(size_t));
    task_base = (int *)mlk__arena_take(&ar, ((size_t)n_seqs + 1) * sizeof(int));
    slab0 = (unsigned char *)mlk__arena_take(&ar, slabs);
    if (tree_parent && (st = mlk__attn_tree_depth(n_q[0], tree_parent, depth)) != MLK_OK) {
        mlk__arena_done(&ar); /* a bad parent array: nothing written */
        return st;
    }
    job.tree_depth = tree_parent ? depth : NULL;
    q_off[0] = 0;
    task_base[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        if (s > 0) q_off[s] = q_off[s - 1] + (size_t)n_q[s - 1] * row;
        task_base[s + 1] = task_base[s] + (n_q[s] + job.q_chunk - 1) / job.q_chunk * c->cfg.kv_heads;
    }
    job.q_off = q_off;
    job.task_base = task_base;
    /* tasks write disjoint rows of o: any schedule gives the same bits */
    MLK__OMP(omp parallel for schedule(dynamic, 1) if(mlk__attn_fan_out(job.macs)))
    for (int t = 0; t < (int)tasks; t++)
        mlk__kv_attn_task(&job, t, q, o, slab0 + job.slab_bytes * (size_t)mlk__thread_id());
    mlk__arena_done(&ar);
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_kv_get_stats(const mlk_kv_cache *c, mlk_kv_stats *st)
{
    if (!c || !st) return MLK_ERR_NULL;
    st->blocks_total = c->cfg.num_blocks;
    st->blocks_used = c->cfg.num_blocks - c->free_count;
    st->bytes_total = (size_t)st->blocks_total * c->block_bytes;
    st->bytes_used = (size_t)st->blocks_used * c->block_bytes;
    st->seqs = c->live_seqs;
    return MLK_OK;
}

#ifdef __cplusplus
}
#endif

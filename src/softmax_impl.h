/* ---- softmax, top-k, sampling: implementation ----
   mlk__sm_scan reads a row once: a running max m and a running sum l of
   exp((x - m) / T), rescaled by exp((m_old - m_new) / T) when the max grows,
   while a candidate buffer keeps the k largest logits. The scan goes in
   blocks of 64 logits; after warm-up almost no block holds a logit above the
   buffer's floor, so the buffer is touched rarely. Top-k is that one pass;
   softmax and sampling without top_k/top_p add a pass that writes or draws. */

/* (logit, index) pairs packed in one 64-bit key that orders them as the
   output does: the float's bits mapped to an unsigned order (-0 taken as +0)
   above the complemented index, so a larger key is a larger logit or, for
   equal logits, the lower index. Keys are unique, as indices are. */
static uint64_t mlk__sm_key(float v, int32_t idx)
{
    uint32_t u, negative;
    v += 0.0f; /* -0 becomes +0 */
    memcpy(&u, &v, sizeof u);
    negative = (uint32_t)0 - (u >> 31); /* branch-free: keys are made for lanes not kept too */
    u ^= negative | 0x80000000u;
    return (uint64_t)u << 32 | (uint32_t)~(uint32_t)idx;
}

static float mlk__sm_key_val(uint64_t key)
{
    uint32_t u = (uint32_t)(key >> 32);
    float v;
    u = (u & 0x80000000u) ? u & 0x7FFFFFFFu : ~u;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* The cap best keys seen so far plus unsorted candidates, room in all.
   Candidates above floor_val (the cap-th best logit at the last flush) are
   appended without comparisons among themselves; when the buffer fills, a
   selection keeps the cap best and raises the floor. A later logit equal to
   floor_val has a higher index, so it loses to the floor's key: '>' is exact.
   A heap would pay a branchy sift-down for each of the ~k(1 + ln(n/k)) logits
   above its minimum, the larger part of the time on 32000-logit rows. */
typedef struct mlk__sm_best { uint64_t *key; int size, cap, room; float floor_val; } mlk__sm_best;

/* Buffer length for cap kept keys of a row of n: room to append a few
   hundred candidates, and a whole block (MLK__SM_BLOCK) more, between two
   selections; never more than n, as only the n - cap later logits are appended. */
static int mlk__sm_room(int cap, int n)
{
    int more = cap > 448 ? cap : 448;
    return n - cap - 64 > more ? cap + more + 64 : n;
}

/* Quickselect: reorders key[0..size) so key[0..k) are the k largest and
   key[k - 1] is the k-th largest. Median-of-3 pivots; keys are distinct.
   The partition swaps unconditionally and moves its boundary by the
   comparison, so random keys cost no mispredicted branches. */
static void mlk__sm_select(uint64_t *key, int size, int k)
{
    int lo = 0, hi = size - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, pos;
        uint64_t a = key[lo], b = key[mid], c = key[hi], pivot;
        int at = a < b ? (b < c ? mid : a < c ? hi : lo) : (a < c ? lo : b < c ? hi : mid);
        pivot = key[at];
        key[at] = key[hi];
        key[hi] = pivot;
        pos = lo;
        for (int i = lo; i < hi; i++) { /* descending: [lo, pos) > pivot */
            uint64_t moving = key[i];
            key[i] = key[pos];
            key[pos] = moving;
            pos += moving > pivot;
        }
        key[hi] = key[pos];
        key[pos] = pivot;
        if (pos == k - 1) break;
        if (pos > k - 1) hi = pos - 1;
        else lo = pos + 1;
    }
}

/* Keeps the cap best keys and raises the floor to the worst of them. */
static void mlk__sm_best_flush(mlk__sm_best *b)
{
    mlk__sm_select(b->key, b->size, b->cap);
    b->size = b->cap;
    b->floor_val = mlk__sm_key_val(b->key[b->cap - 1]);
}

/* Starts the buffer with the first cap logits, all kept whatever their value. */
static void mlk__sm_best_start(mlk__sm_best *b, const float *x)
{
    uint64_t worst = ~(uint64_t)0;
    for (int i = 0; i < b->cap; i++) {
        b->key[i] = mlk__sm_key(x[i], i);
        worst = b->key[i] < worst ? b->key[i] : worst;
    }
    b->size = b->cap;
    b->floor_val = mlk__sm_key_val(worst);
}

static void mlk__sm_sift_down(uint64_t *key, int pos, int size)
{
    uint64_t moving = key[pos];
    for (;;) {
        int child = 2 * pos + 1;
        if (child >= size) break;
        child += (child + 1 < size) & (key[child + 1 < size ? child + 1 : child] < key[child]); /* no branch */
        if (key[child] >= moving) break;
        key[pos] = key[child];
        pos = child;
    }
    key[pos] = moving;
}

/* Selects the cap best, heapsorts them (a min-heap, so the worst ends last)
   and unpacks the keys into val/idx from best to worst. */
static void mlk__sm_best_sort(mlk__sm_best *b, float *val, int32_t *idx)
{
    if (b->size > b->cap) mlk__sm_best_flush(b);
    for (int pos = b->size / 2 - 1; pos >= 0; pos--) mlk__sm_sift_down(b->key, pos, b->size);
    for (int end = b->size - 1; end > 0; end--) {
        uint64_t worst = b->key[0];
        b->key[0] = b->key[end];
        b->key[end] = worst;
        mlk__sm_sift_down(b->key, 0, end);
    }
    for (int j = 0; j < b->size; j++) {
        val[j] = mlk__sm_key_val(b->key[j]);
        idx[j] = (int32_t)~(uint32_t)b->key[j];
    }
}

#define MLK__SM_BLOCK 64

#if defined(MLK__AVX2)
/* Position of the lowest set bit of a nonzero word (de Bruijn multiply). */
static int mlk__sm_lowest_bit(uint64_t word)
{
    static const unsigned char pos[64] = {
        0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24,
        18, 12, 5, 63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11, 46, 26, 40, 15, 34, 20, 31, 10, 25,
        14, 19, 9, 13, 8, 7, 6};
    return pos[((word & (0 - word)) * 0x03F79D71B4CB0A89ull) >> 58];
}
#endif

/* One pass over a row: *row_max = max x, *l_sum = sum exp((x - max) * inv_t);
   best (NULL: none) ends up holding the cap largest logits among its keys.
   Returns 0 for a NaN or +inf logit or a row that is all -inf. */
static int mlk__sm_scan(const float *x, int n, float inv_t, mlk__sm_best *best,
                        float *row_max, float *l_sum)
{
    float m = -INFINITY, l = 0.0f;
    int bad = 0;
    if (best) mlk__sm_best_start(best, x);
#if defined(MLK__AVX2)
    {
        const __m256 inv = _mm256_set1_ps(inv_t), pinf = _mm256_set1_ps(INFINITY);
        __m256 m8 = _mm256_set1_ps(-INFINITY), l8 = _mm256_setzero_ps(), bad8 = _mm256_setzero_ps();
        float lane_m[8], lane_l[8], tail[MLK__SM_BLOCK];
        for (int i = 0; i < n; i += MLK__SM_BLOCK) {
            const float *block = x + i;
            __m256 v[8], block_max;
            int len = n - i < MLK__SM_BLOCK ? n - i : MLK__SM_BLOCK;
            if (len < MLK__SM_BLOCK) {
                for (int j = 0; j < MLK__SM_BLOCK; j++) tail[j] = j < len ? block[j] : -INFINITY;
                block = tail;
            }
            for (int j = 0; j < 8; j++) v[j] = _mm256_loadu_ps(block + 8 * j);
            block_max = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])),
                                      _mm256_max_ps(_mm256_max_ps(v[4], v[5]), _mm256_max_ps(v[6], v[7])));
            /* NaN anywhere (max_ps may drop it, so pairwise), or +inf in the max */
            bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(block_max, pinf, _CMP_EQ_OQ));
            for (int j = 0; j < 8; j += 2) bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(v[j], v[j + 1], _CMP_UNORD_Q));
            if (_mm256_movemask_ps(_mm256_cmp_ps(block_max, m8, _CMP_GT_OQ))) {
                __m256 new_m = _mm256_max_ps(m8, block_max); /* -inf - -inf is NaN: exp8 gives 0 */
                l8 = _mm256_mul_ps(l8, mlk__exp8(_mm256_mul_ps(_mm256_sub_ps(m8, new_m), inv)));
                m8 = new_m;
            }
            { /* the block's sum as a tree: shorter add chains, smaller rounding error */
                __m256 e[4];
                for (int j = 0; j < 4; j++)
                    e[j] = _mm256_add_ps(mlk__exp8(_mm256_mul_ps(_mm256_sub_ps(v[2 * j], m8), inv)),
                                         mlk__exp8(_mm256_mul_ps(_mm256_sub_ps(v[2 * j + 1], m8), inv)));
                l8 = _mm256_add_ps(l8, _mm256_add_ps(_mm256_add_ps(e[0], e[1]), _mm256_add_ps(e[2], e[3])));
            }
            if (best && i + len > best->cap &&
                _mm256_movemask_ps(_mm256_cmp_ps(block_max, _mm256_set1_ps(best->floor_val), _CMP_GT_OQ))) {
                __m256 floor8;
                uint64_t above = 0; /* bit b: logit i + b is above the floor (tail lanes are -inf) */
                if (best->size > best->room - MLK__SM_BLOCK) mlk__sm_best_flush(best);
                floor8 = _mm256_set1_ps(best->floor_val);
                for (int j = 0; j < 8; j++)
                    above |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v[j], floor8, _CMP_GT_OQ)) << 8 * j;
                if (i < best->cap) above &= ~(uint64_t)0 << (best->cap - i);
                for (; above; above &= above - 1) { /* one branch per block, not per lane */
                    int b = mlk__sm_lowest_bit(above);
                    best->key[best->size++] = mlk__sm_key(block[b], i + b);
                }
            }
        }
        bad = _mm256_movemask_ps(bad8) != 0;
        _mm256_storeu_ps(lane_m, m8);
        _mm256_storeu_ps(lane_l, l8);
        for (int j = 0; j < 8; j++) m = lane_m[j] > m ? lane_m[j] : m;
        if (m > -INFINITY)
            for (int j = 0; j < 8; j++)
                if (lane_m[j] > -INFINITY) l += lane_l[j] * mlk__expf((lane_m[j] - m) * inv_t);
    }
#else
    for (int i = 0; i < n; i += MLK__SM_BLOCK) {
        const float *block = x + i;
        float block_max = -INFINITY;
        int len = n - i < MLK__SM_BLOCK ? n - i : MLK__SM_BLOCK;
        for (int j = 0; j < len; j++) {
            if (!(block[j] < INFINITY)) bad = 1;
            if (block[j] > block_max) block_max = block[j];
        }
        if (bad) break;
        if (block_max > m) {
            if (m > -INFINITY) l *= mlk__expf((m - block_max) * inv_t);
            m = block_max;
        }
        if (m > -INFINITY) {
            float block_l = 0.0f; /* a sum per block keeps the rounding error of l small */
            for (int j = 0; j < len; j++) block_l += mlk__expf((block[j] - m) * inv_t);
            l += block_l;
        }
        if (best && i + len > best->cap && block_max > best->floor_val)
            for (int j = 0; j < len; j++) /* the first cap indices were taken up front */
                if (i + j >= best->cap && block[j] > best->floor_val) {
                    if (best->size == best->room) mlk__sm_best_flush(best);
                    best->key[best->size++] = mlk__sm_key(block[j], i + j);
                }
    }
#endif
    *row_max = m;
    *l_sum = l;
    return !bad && m > -INFINITY;
}

/* splitmix64 draw number `draw` (0, 1, ...) after *state, as a double in [0, 1) */
static double mlk__sm_uniform(uint64_t state, uint64_t draw)
{
    uint64_t z = state + (draw + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* Row-wise mlk__sm_scan into row_max / l_sum; returns MLK_ERR_VALUE if any row is bad. */
static mlk_status mlk__sm_scan_rows(int rows, int n, const float *x, float *row_max, float *l_sum)
{
    int n_bad = 0;
    MLK__OMP(omp parallel for schedule(static) if ((size_t)rows * n > 32768) reduction(+:n_bad))
    for (int r = 0; r < rows; r++)
        n_bad += !mlk__sm_scan(x + (size_t)r * (size_t)n, n, 1.0f, NULL, &row_max[r], &l_sum[r]);
    return n_bad ? MLK_ERR_VALUE : MLK_OK;
}

/* Softmax needs every row's max and sum before it writes (a NaN row must
   leave y untouched), so it reads x twice: once to scan, once to write. */
static mlk_status mlk__sm_full(int rows, int n, const float *x, float *y, int log_out)
{
    size_t count;
    float *stats;
    mlk_status st;
    if (!x || !y) return MLK_ERR_NULL;
    if (rows < 1 || n < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, n, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    stats = (float *)mlk__alloc(2 * (size_t)rows * sizeof(float));
    if (!stats) return MLK_ERR_NOMEM;
    st = mlk__sm_scan_rows(rows, n, x, stats, stats + rows);
    if (st == MLK_OK) {
        MLK__OMP(omp parallel for schedule(static) if (count > 32768))
        for (int r = 0; r < rows; r++) {
            const float *x_row = x + (size_t)r * (size_t)n;
            float *y_row = y + (size_t)r * (size_t)n;
            float row_max = stats[r], l_sum = stats[rows + r], log_l = logf(l_sum);
            int i = 0;
#if defined(MLK__AVX2)
            const __m256 mv = _mm256_set1_ps(row_max), lv = _mm256_set1_ps(log_out ? log_l : l_sum);
            for (; i + 8 <= n; i += 8) {
                __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x_row + i), mv);
                _mm256_storeu_ps(y_row + i, log_out ? _mm256_sub_ps(d, lv) : _mm256_div_ps(mlk__exp8(d), lv));
            }
#endif
            for (; i < n; i++) {
                float d = x_row[i] - row_max;
                y_row[i] = log_out ? d - log_l : mlk__expf(d) / l_sum;
            }
        }
    }
    mlk__free(stats);
    return st;
}

MLKERN_DEF mlk_status mlk_softmax(int rows, int n, const float *x, float *y)
{
    return mlk__sm_full(rows, n, x, y, 0);
}

MLKERN_DEF mlk_status mlk_log_softmax(int rows, int n, const float *x, float *y)
{
    return mlk__sm_full(rows, n, x, y, 1);
}

/* Both top-k kernels: results go to scratch first and are copied out only
   when every row was valid (outputs untouched on MLK_ERR_VALUE). */
static mlk_status mlk__sm_topk(int rows, int n, const float *logits, float temperature,
                               int k, float *out, int32_t *idx, int log_out)
{
    size_t count, out_count, need;
    mlk__arena arena;
    int threads = mlk__max_threads(), room;
    uint64_t *keys;
    float *top_val;
    int32_t *top_idx;
    int n_bad = 0;
    mlk_status st;
    if (!logits || !out || !idx) return MLK_ERR_NULL;
    if (rows < 1 || n < 1 || k < 1 || k > n) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, n, 1, 1, sizeof(float), &count) ||
        !mlk__count4(rows, k, 1, 1, sizeof(float), &out_count)) return MLK_ERR_OVERFLOW;
    if (!(temperature > 0.0f && 1.0f / temperature < INFINITY) || temperature == INFINITY) return MLK_ERR_ARG;
    room = mlk__sm_room(k, n);
    if (!mlk__count4(threads, room, 1, 1, sizeof(uint64_t), &need)) return MLK_ERR_OVERFLOW;
    need = mlk__arena_need(mlk__arena_need(mlk__arena_need(0, need * sizeof(uint64_t)),
                                           out_count * sizeof(float)), out_count * sizeof(int32_t));
    st = mlk__arena_init(&arena, NULL, need);
    if (st != MLK_OK) return st;
    keys = (uint64_t *)mlk__arena_take(&arena, (size_t)threads * room * sizeof(uint64_t));
    top_val = (float *)mlk__arena_take(&arena, out_count * sizeof(float));
    top_idx = (int32_t *)mlk__arena_take(&arena, out_count * sizeof(int32_t));
    MLK__OMP(omp parallel for schedule(static) if (count > 32768) reduction(+:n_bad))
    for (int r = 0; r < rows; r++) {
        mlk__sm_best best;
        float row_max, l_sum, inv_t = 1.0f / temperature, log_l, *val = top_val + (size_t)r * k;
        best.key = keys + (size_t)mlk__thread_id() * room;
        best.cap = k;
        best.room = room;
        if (!mlk__sm_scan(logits + (size_t)r * (size_t)n, n, inv_t, &best, &row_max, &l_sum)) {
            n_bad++;
            continue;
        }
        mlk__sm_best_sort(&best, val, top_idx + (size_t)r * k);
        log_l = logf(l_sum);
        for (int j = 0; j < k; j++) {
            float d = (val[j] - row_max) * inv_t;
            val[j] = log_out ? d - log_l : expf(d) / l_sum;
        }
    }
    if (n_bad == 0) {
        memcpy(out, top_val, out_count * sizeof(float));
        memcpy(idx, top_idx, out_count * sizeof(int32_t));
    }
    mlk__arena_done(&arena);
    return n_bad ? MLK_ERR_VALUE : MLK_OK;
}

MLKERN_DEF mlk_status mlk_topk_softmax(int rows, int n, const float *logits,
    float temperature, int k, float *probs, int32_t *idx)
{
    return mlk__sm_topk(rows, n, logits, temperature, k, probs, idx, 0);
}

MLKERN_DEF mlk_status mlk_topk_log_softmax(int rows, int n, const float *logits,
    int k, float *logprobs, int32_t *idx)
{
    return mlk__sm_topk(rows, n, logits, 1.0f, k, logprobs, idx, 1);
}

/* One row of mlk_sample with uniform draw u; best has best->room keys, val
   and idx room for best->cap candidates. Weights are w = exp((x - max) / T),
   so the most probable token has w = 1 and min_p keeps w >= min_p. Returns
   -1 for a bad row. */
static int32_t mlk__sm_sample_row(const float *x, int n, const mlk_sampler *s, double u,
                                  mlk__sm_best *best, float *val, int32_t *idx)
{
    float row_max, l_sum, inv_t;
    int top_k = s->top_k > 0 && s->top_k < n ? s->top_k : 0;
    if (s->temperature == 0.0f) { /* greedy: the best one is the argmax, ties to the lower index */
        best->cap = 1;
        if (!mlk__sm_scan(x, n, 1.0f, best, &row_max, &l_sum)) return -1;
        mlk__sm_best_sort(best, val, idx);
        return idx[0];
    }
    inv_t = 1.0f / s->temperature;
    if (top_k || s->top_p < 1.0f) {
        /* candidates sorted by probability; top_p keeps the shortest prefix
           reaching top_p of the mass, min_p a further prefix */
        double total = 0.0, kept = 0.0, target;
        int n_keep = 0;
        best->cap = top_k ? top_k : n;
        if (!mlk__sm_scan(x, n, inv_t, best, &row_max, &l_sum)) return -1;
        mlk__sm_best_sort(best, val, idx);
        for (int j = 0; j < best->size; j++) {
            val[j] = mlk__expf((val[j] - row_max) * inv_t);
            total += val[j];
        }
        while (n_keep < best->size && (n_keep == 0 || (kept < (double)s->top_p * total &&
               val[n_keep] >= s->min_p && val[n_keep] > 0.0f)))
            kept += val[n_keep++];
        target = u * kept;
        for (int j = 0; j < n_keep - 1; j++) {
            target -= val[j];
            if (target < 0.0) return idx[j];
        }
        return idx[n_keep - 1];
    } else {
        /* no sorting needed: draw over the tokens with w >= min_p in index order */
        double kept = 0.0, target;
        int32_t last = -1;
        if (!mlk__sm_scan(x, n, inv_t, NULL, &row_max, &l_sum)) return -1;
        for (int i = 0; i < n; i++) {
            float w = mlk__expf((x[i] - row_max) * inv_t);
            if (w >= s->min_p && w > 0.0f) kept += w;
        }
        target = u * kept;
        for (int i = 0; i < n; i++) {
            float w = mlk__expf((x[i] - row_max) * inv_t);
            if (w >= s->min_p && w > 0.0f) {
                last = i;
                target -= w;
                if (target < 0.0) return i;
            }
        }
        return last;
    }
}

MLKERN_DEF mlk_status mlk_sample(int rows, int n, const float *logits,
    const mlk_sampler *s, uint64_t *rng_state, int32_t *out)
{
    size_t count, need;
    mlk__arena arena;
    int threads = mlk__max_threads(), cand_cap, room, n_bad = 0;
    uint64_t *cand_key;
    float *cand_val;
    int32_t *cand_idx, *tokens;
    mlk_status st;
    if (!logits || !s || !rng_state || !out) return MLK_ERR_NULL;
    if (rows < 1 || n < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, n, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    if (!(s->temperature == 0.0f || 1.0f / s->temperature < INFINITY) || !(s->temperature >= 0.0f) ||
        s->temperature == INFINITY || s->top_k < 0 ||
        !(s->top_p > 0.0f) || !(s->min_p >= 0.0f && s->min_p <= 1.0f)) return MLK_ERR_ARG;
    /* candidates per thread: the top_k, or the whole row for top_p alone */
    cand_cap = s->temperature == 0.0f ? 1 : s->top_k > 0 && s->top_k < n ? s->top_k : s->top_p < 1.0f ? n : 1;
    room = mlk__sm_room(cand_cap, n);
    if (!mlk__count4(threads, room, 1, 1, sizeof(uint64_t), &need)) return MLK_ERR_OVERFLOW;
    need = mlk__arena_need(mlk__arena_need(mlk__arena_need(mlk__arena_need(0, need * sizeof(uint64_t)),
                           (size_t)threads * cand_cap * sizeof(float)), (size_t)threads * cand_cap * sizeof(int32_t)),
                           (size_t)rows * sizeof(int32_t));
    st = mlk__arena_init(&arena, NULL, need);
    if (st != MLK_OK) return st;
    cand_key = (uint64_t *)mlk__arena_take(&arena, (size_t)threads * room * sizeof(uint64_t));
    cand_val = (float *)mlk__arena_take(&arena, (size_t)threads * cand_cap * sizeof(float));
    cand_idx = (int32_t *)mlk__arena_take(&arena, (size_t)threads * cand_cap * sizeof(int32_t));
    tokens = (int32_t *)mlk__arena_take(&arena, (size_t)rows * sizeof(int32_t));
    MLK__OMP(omp parallel for schedule(static) if (count > 32768) reduction(+:n_bad))
    for (int r = 0; r < rows; r++) {
        mlk__sm_best best;
        size_t slot = (size_t)mlk__thread_id() * cand_cap;
        best.key = cand_key + (size_t)mlk__thread_id() * room;
        best.room = room;
        tokens[r] = mlk__sm_sample_row(logits + (size_t)r * (size_t)n, n, s,
                                       mlk__sm_uniform(*rng_state, (uint64_t)r), &best,
                                       cand_val + slot, cand_idx + slot);
        n_bad += tokens[r] < 0;
    }
    if (n_bad == 0) {
        memcpy(out, tokens, (size_t)rows * sizeof(int32_t));
        *rng_state += (uint64_t)rows * 0x9E3779B97F4A7C15ull;
    }
    mlk__arena_done(&arena);
    return n_bad ? MLK_ERR_VALUE : MLK_OK;
}

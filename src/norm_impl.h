/* ---- norms: implementation ----
   Forward, per row (the row stays in L1 after the first read), the
   corrected two-pass algorithm (Chan, Golub and LeVeque 1983):
     m1    = sum(x) / dim
     delta = sum(x - m1) / dim,  var = sum((x - m1)^2) / dim - delta^2
     y     = (x - m1 - delta) * rstd * gamma + beta,  mean = m1 + delta
   delta repairs the rounding of m1, so a row with mean 1e4 and spread 1e-2
   normalises to full precision. RMSNorm is one pass: var = sum(x^2) / dim.
   x and y cross memory once. The cached mean is rounded to float (by up to
   half an ulp of 1e4 in that example); the backward pass uses it as m1 and
   re-derives delta from x, so it keeps full precision too. */

#if defined(MLK__AVX2)
static float mlk__norm_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* *s1 = sum(x - c), *s2 = sum((x - c)^2) */
static void mlk__norm_moments(const float *x, int n, float c, float *s1, float *s2)
{
    float sum = 0.0f, sum_sq = 0.0f;
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 cv = _mm256_set1_ps(c);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 sq0 = _mm256_setzero_ps(), sq1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), cv);
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), cv);
        acc0 = _mm256_add_ps(acc0, d0);
        acc1 = _mm256_add_ps(acc1, d1);
        sq0 = _mm256_fmadd_ps(d0, d0, sq0);
        sq1 = _mm256_fmadd_ps(d1, d1, sq1);
    }
    sum = mlk__norm_hsum8(_mm256_add_ps(acc0, acc1));
    sum_sq = mlk__norm_hsum8(_mm256_add_ps(sq0, sq1));
#endif
    for (; i < n; i++) {
        float d = x[i] - c;
        sum += d;
        sum_sq += d * d;
    }
    *s1 = sum;
    *s2 = sum_sq;
}

#if defined(MLK__AVX2)
/* The second pass over a row goes in groups of 8 with the same vector
   arithmetic for every element (partial groups through masks), so results
   do not depend on where the group boundaries fall. The first group is cut
   short when that makes the output 32-byte aligned for streaming. */
static int mlk__norm_first_group(const float *out, int n, int stream)
{
    int head = (int)((32 - (uintptr_t)out % 32) % 32 / sizeof(float));
    if (!stream || head == 0 || (uintptr_t)out % sizeof(float)) return n < 8 ? n : 8;
    return head < n ? head : n;
}

static __m256i mlk__norm_mask(int len)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(len), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static __m256 mlk__norm_load(const float *p, int len)
{
    return len == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mlk__norm_mask(len));
}

/* stream: non-temporal store, for a full group at a 32-byte aligned address */
static void mlk__norm_store(float *p, __m256 v, int len, int stream)
{
    if (len < 8) _mm256_maskstore_ps(p, mlk__norm_mask(len), v);
    else if (stream && (uintptr_t)p % 32 == 0) _mm256_stream_ps(p, v);
    else _mm256_storeu_ps(p, v);
}
#endif

/* y = (x - c - delta) * rstd * gamma + beta; gamma / beta NULL: ones / zeros.
   stream: y is large and will not be read soon, so AVX2 writes it with
   non-temporal stores (no read-for-ownership: a third less memory traffic). */
static void mlk__norm_apply(const float *x, int n, float c, float delta, float rstd,
                            const float *gamma, const float *beta, float *y, int stream)
{
#if defined(MLK__AVX2)
    const __m256 cv = _mm256_set1_ps(c), dv = _mm256_set1_ps(delta), rv = _mm256_set1_ps(rstd);
    for (int i = 0, len = mlk__norm_first_group(y, n, stream); i < n; i += len, len = n - i < 8 ? n - i : 8) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(mlk__norm_load(x + i, len), cv), dv), rv);
        if (gamma) v = _mm256_mul_ps(v, mlk__norm_load(gamma + i, len));
        if (beta) v = _mm256_add_ps(v, mlk__norm_load(beta + i, len));
        mlk__norm_store(y + i, v, len, stream);
    }
    if (stream) _mm_sfence();
#else
    (void)stream;
    for (int i = 0; i < n; i++) {
        float v = ((x[i] - c) - delta) * rstd;
        if (gamma) v *= gamma[i];
        if (beta) v += beta[i];
        y[i] = v;
    }
#endif
}

/* Starts loading a row into L1 while the current one is processed from L1:
   the first pass over a row then finds it (partly) there. */
static void mlk__norm_prefetch(const float *row, int n)
{
#if defined(MLK__AVX2)
    for (int i = 0; i < n; i += 16) _mm_prefetch((const char *)(row + i), _MM_HINT_T0);
#else
    (void)row;
    (void)n;
#endif
}

/* Outputs of at least this many floats (16 MiB) bypass the caches. */
static int mlk__norm_stream(size_t count) { return count >= ((size_t)4 << 20); }

/* Shared by both forward passes: center = 0 is RMSNorm. */
static mlk_status mlk__norm_fwd(int rows, int dim, const float *x, const float *gamma,
                                const float *beta, float eps, int center,
                                float *y, float *mean, float *rstd)
{
    size_t count;
    if (!x || !y) return MLK_ERR_NULL;
    if (rows < 1 || dim < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, dim, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    if (!(eps >= 0.0f) || eps == INFINITY) return MLK_ERR_ARG;
    MLK__OMP(omp parallel for schedule(static) if (count > 16384))
    for (int r = 0; r < rows; r++) {
        const float *x_row = x + (size_t)r * (size_t)dim;
        float m1 = 0.0f, delta = 0.0f, s1, s2, var, row_rstd;
        if (r + 1 < rows) mlk__norm_prefetch(x_row + dim, dim);
        mlk__norm_moments(x_row, dim, 0.0f, &s1, &s2);
        var = s2 / (float)dim;
        if (center) {
            m1 = s1 / (float)dim;
            mlk__norm_moments(x_row, dim, m1, &s1, &s2);
            delta = s1 / (float)dim;
            var = s2 / (float)dim - delta * delta;
            if (var < 0.0f) var = 0.0f;
        }
        row_rstd = 1.0f / sqrtf(var + eps);
        mlk__norm_apply(x_row, dim, m1, delta, row_rstd, gamma, beta, y + (size_t)r * (size_t)dim,
                        mlk__norm_stream(count));
        if (mean) mean[r] = m1 + delta;
        if (rstd) rstd[r] = row_rstd;
    }
    return MLK_OK;
}

/* One row of the backward pass, g = gamma * dy, x-hat = (x - mean - delta) * rstd:
     dx = rstd * (g - mean(g) - x-hat * mean(g * x-hat))   (RMSNorm: no mean(g) term)
   and dgamma_acc += dy * x-hat, dbeta_acc += dy (either may be NULL).
   Two passes: the first reads x and dy from memory for the sums, using
   mean(g * x-hat) = rstd * (mean(g * (x - mean)) - delta * mean(g)), where
   delta = mean(x - mean) repairs the float rounding of the cached mean (0
   for RMSNorm); the second runs from L1. stream as in mlk__norm_apply. */
static void mlk__norm_bwd_row(const float *x, const float *dy, const float *gamma, int n,
                              float mean, float rstd, int center, float *dx,
                              float *dgamma_acc, float *dbeta_acc, int stream)
{
    float sum_d = 0.0f, sum_g = 0.0f, sum_gd = 0.0f, delta, mean_g, mean_gx;
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 mv = _mm256_set1_ps(mean);
    __m256 acc_d = _mm256_setzero_ps(), acc_g = _mm256_setzero_ps(), acc_gd = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), mv), g = _mm256_loadu_ps(dy + i);
        if (gamma) g = _mm256_mul_ps(g, _mm256_loadu_ps(gamma + i));
        acc_d = _mm256_add_ps(acc_d, d);
        acc_g = _mm256_add_ps(acc_g, g);
        acc_gd = _mm256_fmadd_ps(g, d, acc_gd);
    }
    sum_d = mlk__norm_hsum8(acc_d);
    sum_g = mlk__norm_hsum8(acc_g);
    sum_gd = mlk__norm_hsum8(acc_gd);
#endif
    for (; i < n; i++) {
        float d = x[i] - mean, g = gamma ? gamma[i] * dy[i] : dy[i];
        sum_d += d;
        sum_g += g;
        sum_gd += g * d;
    }
    delta = center ? sum_d / (float)n : 0.0f;
    mean_g = center ? sum_g / (float)n : 0.0f;
    mean_gx = rstd * (sum_gd - delta * sum_g) / (float)n;
#if defined(MLK__AVX2)
    {
        const __m256 dv = _mm256_set1_ps(delta), rv = _mm256_set1_ps(rstd);
        const __m256 mg = _mm256_set1_ps(mean_g), mgx = _mm256_set1_ps(mean_gx);
        for (int j = 0, len = mlk__norm_first_group(dx, n, stream); j < n; j += len, len = n - j < 8 ? n - j : 8) {
            __m256 d = mlk__norm_load(dy + j, len);
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(mlk__norm_load(x + j, len), mv), dv), rv);
            __m256 g = gamma ? _mm256_mul_ps(d, mlk__norm_load(gamma + j, len)) : d;
            if (dgamma_acc) mlk__norm_store(dgamma_acc + j, _mm256_fmadd_ps(d, xh, mlk__norm_load(dgamma_acc + j, len)), len, 0);
            if (dbeta_acc) mlk__norm_store(dbeta_acc + j, _mm256_add_ps(d, mlk__norm_load(dbeta_acc + j, len)), len, 0);
            mlk__norm_store(dx + j, _mm256_mul_ps(_mm256_fnmadd_ps(xh, mgx, _mm256_sub_ps(g, mg)), rv), len, stream);
        }
        if (stream) _mm_sfence();
    }
#else
    (void)stream;
    for (int j = 0; j < n; j++) {
        float xh = ((x[j] - mean) - delta) * rstd, g = gamma ? gamma[j] * dy[j] : dy[j];
        if (dgamma_acc) dgamma_acc[j] += dy[j] * xh;
        if (dbeta_acc) dbeta_acc[j] += dy[j];
        dx[j] = (g - mean_g - xh * mean_gx) * rstd;
    }
#endif
}

/* dgamma/dbeta are summed over fixed chunks of rows, each into its own
   partial, then the partials in chunk order: the chunking depends on rows
   only, so the result is the same for any thread count. */
static int mlk__norm_chunk_rows(int rows)
{
    int per_chunk = rows / 256 + 1;
    return per_chunk < 16 ? 16 : per_chunk;
}

/* Shared by both backward passes: mean NULL is RMSNorm. */
static mlk_status mlk__norm_bwd(int rows, int dim, const float *x, const float *gamma,
                                const float *mean, const float *rstd, const float *dy,
                                float *dx, float *dgamma, float *dbeta)
{
    size_t count, part_count;
    int chunk_rows, n_chunks, n_parts = (dgamma != NULL) + (dbeta != NULL);
    float *parts = NULL;
    if (!x || !rstd || !dy || !dx) return MLK_ERR_NULL;
    if (rows < 1 || dim < 1) return MLK_ERR_SHAPE;
    if (!mlk__count4(rows, dim, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    chunk_rows = mlk__norm_chunk_rows(rows);
    n_chunks = (rows + chunk_rows - 1) / chunk_rows;
    if (n_parts) {
        if (!mlk__count4(n_chunks, n_parts, dim, 1, sizeof(float), &part_count)) return MLK_ERR_OVERFLOW;
        parts = (float *)mlk__alloc(part_count * sizeof(float));
        if (!parts) return MLK_ERR_NOMEM;
    }
    MLK__OMP(omp parallel for schedule(static) if (count > 16384))
    for (int c = 0; c < n_chunks; c++) {
        float *dgamma_acc = NULL, *dbeta_acc = NULL;
        int r_end = (c + 1) * chunk_rows < rows ? (c + 1) * chunk_rows : rows;
        if (dgamma) dgamma_acc = parts + (size_t)c * n_parts * dim;
        if (dbeta) dbeta_acc = parts + ((size_t)c * n_parts + (dgamma != NULL)) * dim;
        if (parts) memset(parts + (size_t)c * n_parts * dim, 0, (size_t)n_parts * dim * sizeof(float));
        for (int r = c * chunk_rows; r < r_end; r++) {
            size_t off = (size_t)r * (size_t)dim;
            if (r + 1 < rows) {
                mlk__norm_prefetch(x + off + dim, dim);
                mlk__norm_prefetch(dy + off + dim, dim);
            }
            mlk__norm_bwd_row(x + off, dy + off, gamma, dim, mean ? mean[r] : 0.0f, rstd[r],
                              mean != NULL, dx + off, dgamma_acc, dbeta_acc, mlk__norm_stream(count));
        }
    }
    if (parts) { /* column blocks in parallel, chunks in order within each */
        int n_cols = n_parts * dim, n_blocks = (n_cols + 63) / 64;
        MLK__OMP(omp parallel for schedule(static) if (count > 16384))
        for (int blk = 0; blk < n_blocks; blk++) {
            double col_sum[64];
            int j0 = blk * 64, width = n_cols - j0 < 64 ? n_cols - j0 : 64;
            for (int j = 0; j < width; j++) col_sum[j] = 0.0;
            for (int c = 0; c < n_chunks; c++) {
                const float *part = parts + (size_t)c * n_cols + j0;
                for (int j = 0; j < width; j++) col_sum[j] += part[j];
            }
            for (int j = 0; j < width; j++) {
                int col = (j0 + j) % dim;
                if (j0 + j < dim && dgamma) dgamma[col] = (float)col_sum[j];
                else dbeta[col] = (float)col_sum[j];
            }
        }
        mlk__free(parts);
    }
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_layernorm_fwd(int rows, int dim, const float *x,
    const float *gamma, const float *beta, float eps,
    float *y, float *mean, float *rstd)
{
    return mlk__norm_fwd(rows, dim, x, gamma, beta, eps, 1, y, mean, rstd);
}

MLKERN_DEF mlk_status mlk_layernorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *mean, const float *rstd,
    const float *dy, float *dx, float *dgamma, float *dbeta)
{
    if (!mean) return MLK_ERR_NULL;
    return mlk__norm_bwd(rows, dim, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
}

MLKERN_DEF mlk_status mlk_rmsnorm_fwd(int rows, int dim, const float *x,
    const float *gamma, float eps, float *y, float *rstd)
{
    return mlk__norm_fwd(rows, dim, x, gamma, NULL, eps, 0, y, NULL, rstd);
}

MLKERN_DEF mlk_status mlk_rmsnorm_bwd(int rows, int dim, const float *x,
    const float *gamma, const float *rstd, const float *dy,
    float *dx, float *dgamma)
{
    return mlk__norm_bwd(rows, dim, x, gamma, NULL, rstd, dy, dx, dgamma, NULL);
}

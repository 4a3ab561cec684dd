/* ---- norms: implementation ----
   Forward, per row (the row stays in L1 after the first read):
     delta = sum(x - x0) / dim           mean = x0 + delta, shifted by x0 so a
                                         mean of 1e4 and a spread of 1e-2 lose nothing
     var   = sum((x - x0 - delta)^2) / dim   second pass, no cancellation
     y     = (x - x0 - delta) * rstd * gamma + beta
   RMSNorm is the same with x0 = delta = 0 and no beta. x and y cross memory
   once. The float mean in the cache is rounded (by up to half an ulp of 1e4
   in the example above); the backward pass uses it as x0 and re-derives
   delta from x, so it keeps full precision too. */

#if defined(MLK__AVX2)
static float mlk__norm_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* sum of (x[i] - c - delta); with power = 2, sum of (x[i] - c - delta)^2 */
static float mlk__norm_sum_dev(const float *x, int n, float c, float delta, int power)
{
    float total = 0.0f;
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 cv = _mm256_set1_ps(c), dv = _mm256_set1_ps(delta);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m256 d0 = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), cv), dv);
        __m256 d1 = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), cv), dv);
        if (power == 2) {
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            acc1 = _mm256_fmadd_ps(d1, d1, acc1);
        } else {
            acc0 = _mm256_add_ps(acc0, d0);
            acc1 = _mm256_add_ps(acc1, d1);
        }
    }
    total = mlk__norm_hsum8(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; i++) {
        float d = (x[i] - c) - delta;
        total += power == 2 ? d * d : d;
    }
    return total;
}

/* y = (x - c - delta) * rstd * gamma + beta; gamma / beta NULL: ones / zeros */
static void mlk__norm_apply(const float *x, int n, float c, float delta, float rstd,
                            const float *gamma, const float *beta, float *y)
{
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 cv = _mm256_set1_ps(c), dv = _mm256_set1_ps(delta), rv = _mm256_set1_ps(rstd);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), cv), dv), rv);
        if (gamma) v = _mm256_mul_ps(v, _mm256_loadu_ps(gamma + i));
        if (beta) v = _mm256_add_ps(v, _mm256_loadu_ps(beta + i));
        _mm256_storeu_ps(y + i, v);
    }
#endif
    for (; i < n; i++) {
        float v = ((x[i] - c) - delta) * rstd;
        if (gamma) v *= gamma[i];
        if (beta) v += beta[i];
        y[i] = v;
    }
}

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
        float x0 = center ? x_row[0] : 0.0f, delta = 0.0f, var, row_rstd;
        if (center) delta = mlk__norm_sum_dev(x_row, dim, x0, 0.0f, 1) / (float)dim;
        var = mlk__norm_sum_dev(x_row, dim, x0, delta, 2) / (float)dim;
        row_rstd = 1.0f / sqrtf(var + eps);
        mlk__norm_apply(x_row, dim, x0, delta, row_rstd, gamma, beta, y + (size_t)r * (size_t)dim);
        if (mean) mean[r] = x0 + delta;
        if (rstd) rstd[r] = row_rstd;
    }
    return MLK_OK;
}

/* One row of the backward pass, x-hat = (x - mean - delta) * rstd with delta =
   mean(x - mean) (0 for RMSNorm), g = gamma * dy:
     dx = rstd * (g - mean(g) - x-hat * mean(g * x-hat))   (RMSNorm: no mean(g) term)
   and dgamma_acc += dy * x-hat, dbeta_acc += dy (either may be NULL). */
static void mlk__norm_bwd_row(const float *x, const float *dy, const float *gamma, int n,
                              float mean, float rstd, int center, float *dx,
                              float *dgamma_acc, float *dbeta_acc)
{
    float sum_g = 0.0f, sum_gx = 0.0f, mean_g, mean_gx;
    float delta = center ? mlk__norm_sum_dev(x, n, mean, 0.0f, 1) / (float)n : 0.0f;
    int i = 0;
#if defined(MLK__AVX2)
    const __m256 mv = _mm256_set1_ps(mean), dv = _mm256_set1_ps(delta), rv = _mm256_set1_ps(rstd);
    __m256 acc_g = _mm256_setzero_ps(), acc_gx = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_loadu_ps(dy + i);
        __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), dv), rv);
        __m256 g = gamma ? _mm256_mul_ps(d, _mm256_loadu_ps(gamma + i)) : d;
        acc_g = _mm256_add_ps(acc_g, g);
        acc_gx = _mm256_fmadd_ps(g, xh, acc_gx);
        if (dgamma_acc) _mm256_storeu_ps(dgamma_acc + i, _mm256_fmadd_ps(d, xh, _mm256_loadu_ps(dgamma_acc + i)));
        if (dbeta_acc) _mm256_storeu_ps(dbeta_acc + i, _mm256_add_ps(d, _mm256_loadu_ps(dbeta_acc + i)));
    }
    sum_g = mlk__norm_hsum8(acc_g);
    sum_gx = mlk__norm_hsum8(acc_gx);
#endif
    for (; i < n; i++) {
        float xh = ((x[i] - mean) - delta) * rstd, g = gamma ? gamma[i] * dy[i] : dy[i];
        sum_g += g;
        sum_gx += g * xh;
        if (dgamma_acc) dgamma_acc[i] += dy[i] * xh;
        if (dbeta_acc) dbeta_acc[i] += dy[i];
    }
    mean_g = center ? sum_g / (float)n : 0.0f;
    mean_gx = sum_gx / (float)n;
    i = 0;
#if defined(MLK__AVX2)
    {
        const __m256 mg = _mm256_set1_ps(mean_g), mgx = _mm256_set1_ps(mean_gx);
        for (; i + 8 <= n; i += 8) {
            __m256 d = _mm256_loadu_ps(dy + i);
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), dv), rv);
            __m256 g = gamma ? _mm256_mul_ps(d, _mm256_loadu_ps(gamma + i)) : d;
            __m256 t = _mm256_fnmadd_ps(xh, mgx, _mm256_sub_ps(g, mg));
            _mm256_storeu_ps(dx + i, _mm256_mul_ps(t, rv));
        }
    }
#endif
    for (; i < n; i++) {
        float xh = ((x[i] - mean) - delta) * rstd, g = gamma ? gamma[i] * dy[i] : dy[i];
        dx[i] = (g - mean_g - xh * mean_gx) * rstd;
    }
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
            mlk__norm_bwd_row(x + off, dy + off, gamma, dim, mean ? mean[r] : 0.0f, rstd[r],
                              mean != NULL, dx + off, dgamma_acc, dbeta_acc);
        }
    }
    if (parts) {
        MLK__OMP(omp parallel for schedule(static) if (count > 16384))
        for (int j = 0; j < n_parts * dim; j++) {
            int which = j / dim, col = j % dim;
            double total = 0.0;
            for (int c = 0; c < n_chunks; c++) total += parts[((size_t)c * n_parts + which) * dim + col];
            if (which == 0 && dgamma) dgamma[col] = (float)total;
            else dbeta[col] = (float)total;
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

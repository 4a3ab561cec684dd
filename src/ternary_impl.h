/* ======================================================================
   ternary (BitNet b1.58): implementation
   ====================================================================== */

#ifdef __cplusplus
extern "C" {
#endif

/* Below this many elements (or multiply-adds for the GEMM) a kernel runs on
   one thread: waking a team costs more than the work. */
#define MLK__TERN_PAR_MIN ((size_t)1 << 16)

MLKERN_DEF size_t mlk_ternary_row_bytes(int cols)
{
    return cols > 0 ? ((size_t)cols + 3) / 4 : 0;
}

/* ---- weight quantisation ---- */

/* Sum of |w| in double over fixed chunks (independent of the thread
   count), summed in chunk order; *finite = 0 if any weight is NaN or inf. */
#define MLK__TERN_CHUNKS 64
static double mlk__tern_abs_sum(const float *w, size_t count, int *finite)
{
    double chunk_sum[MLK__TERN_CHUNKS], total = 0;
    int chunk_ok[MLK__TERN_CHUNKS], ok = 1;
    size_t per = (count + MLK__TERN_CHUNKS - 1) / MLK__TERN_CHUNKS;
    int ch;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__TERN_PAR_MIN))
    for (ch = 0; ch < MLK__TERN_CHUNKS; ch++) {
        size_t lo = (size_t)ch * per, hi = lo + per, i;
        double s = 0;
        int good = 1;
        if (lo > count) lo = count;
        if (hi > count) hi = count;
        for (i = lo; i < hi; i++) {
            float a = fabsf(w[i]);
            if (!(a <= FLT_MAX)) good = 0;
            s += a;
        }
        chunk_sum[ch] = s;
        chunk_ok[ch] = good;
    }
    for (ch = 0; ch < MLK__TERN_CHUNKS; ch++) {
        total += chunk_sum[ch];
        ok &= chunk_ok[ch];
    }
    *finite = ok;
    return total;
}

/* Code q + 1 of one weight; half = s / 2 is exact, so this is round half
   away from zero of the exact quotient w / s, clamped to [-1, 1]. */
static unsigned mlk__tern_code(float w, float half)
{
    return w >= half ? 2u : (w <= -half ? 0u : 1u);
}

static void mlk__tern_pack_row(const float *w, int cols, float half, uint8_t *out)
{
    size_t row_bytes = mlk_ternary_row_bytes(cols), b;
    for (b = 0; b < row_bytes; b++) {
        unsigned byte = 0;
        int j;
        for (j = 0; j < 4; j++) {
            size_t c = 4 * b + (size_t)j;
            unsigned code = c < (size_t)cols ? mlk__tern_code(w[c], half) : 1u;
            byte |= code << (2 * j);
        }
        out[b] = (uint8_t)byte;
    }
}

MLKERN_DEF mlk_status mlk_ternary_quant(int rows, int cols, const float *w,
    uint8_t *packed, float *scale)
{
    size_t count, row_bytes = mlk_ternary_row_bytes(cols), packed_bytes;
    double abs_sum;
    float s, half;
    int finite, r;
    if (rows < 1 || cols < 1) return MLK_ERR_SHAPE;
    if (!w || !packed || !scale) return MLK_ERR_NULL;
    if (!mlk__count4(rows, cols, 1, 1, sizeof(float), &count) ||
        !mlk__mul_ok((size_t)rows, row_bytes, &packed_bytes))
        return MLK_ERR_OVERFLOW;
    abs_sum = mlk__tern_abs_sum(w, count, &finite);
    if (!finite) return MLK_ERR_VALUE;
    s = (float)(abs_sum / (double)count);
    if (!(s >= MLK_TERNARY_EPS)) s = MLK_TERNARY_EPS;
    half = 0.5f * s;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__TERN_PAR_MIN))
    for (r = 0; r < rows; r++)
        mlk__tern_pack_row(w + (size_t)r * cols, cols, half, packed + (size_t)r * row_bytes);
    *scale = s;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_ternary_dequant(int rows, int cols, const uint8_t *packed,
    float scale, float *w)
{
    size_t count, row_bytes = mlk_ternary_row_bytes(cols), packed_bytes, b;
    int r;
    if (rows < 1 || cols < 1) return MLK_ERR_SHAPE;
    if (!packed || !w) return MLK_ERR_NULL;
    if (!mlk__count4(rows, cols, 1, 1, sizeof(float), &count) ||
        !mlk__mul_ok((size_t)rows, row_bytes, &packed_bytes))
        return MLK_ERR_OVERFLOW;
    for (b = 0; b < packed_bytes; b++) /* a code 3 has both bits of a pair set */
        if (packed[b] & (packed[b] >> 1) & 0x55) return MLK_ERR_VALUE;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__TERN_PAR_MIN))
    for (r = 0; r < rows; r++) {
        const uint8_t *row = packed + (size_t)r * row_bytes;
        float *out = w + (size_t)r * cols;
        int c;
        for (c = 0; c < cols; c++)
            out[c] = scale * (float)((int)((row[c >> 2] >> (2 * (c & 3))) & 3) - 1);
    }
    return MLK_OK;
}

/* ---- activation quantisation ---- */

static float mlk__tern_row_absmax(const float *x, int cols)
{
    float amax = 0;
    int c = 0;
#if defined(MLK__AVX2)
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 vmax = _mm256_setzero_ps();
    __m128 m4;
    for (; c + 8 <= cols; c += 8)
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + c), abs_mask));
    m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    amax = _mm_cvtss_f32(m4);
#endif
    for (; c < cols; c++) {
        float a = fabsf(x[c]);
        amax = a > amax ? a : amax;
    }
    return amax;
}

/* q = round(x * inv) half away from zero, clamped to [-127, 127]: t is
   the truncation and x * inv - t is exact, so the halves are decided
   exactly (and the loop vectorises, unlike roundf). */
static void mlk__tern_quant_row(const float *x, int cols, float inv, int8_t *q)
{
    int c;
    for (c = 0; c < cols; c++) {
        float v = x[c] * inv;
        int t = (int)v;
        float frac = v - (float)t;
        t += (frac >= 0.5f) - (frac <= -0.5f);
        q[c] = (int8_t)(t > 127 ? 127 : (t < -127 ? -127 : t));
    }
}

MLKERN_DEF mlk_status mlk_act_quant_i8(int rows, int cols, const float *x,
    int8_t *xq, float *xscale)
{
    size_t count, i;
    int r, finite = 1;
    if (rows < 1 || cols < 1) return MLK_ERR_SHAPE;
    if (!x || !xq || !xscale) return MLK_ERR_NULL;
    if (!mlk__count4(rows, cols, 1, 1, sizeof(float), &count)) return MLK_ERR_OVERFLOW;
    for (i = 0; i < count; i++)
        finite &= fabsf(x[i]) <= FLT_MAX;
    if (!finite) return MLK_ERR_VALUE;
    MLK__OMP(omp parallel for schedule(static) if (count >= MLK__TERN_PAR_MIN))
    for (r = 0; r < rows; r++) {
        float amax = mlk__tern_row_absmax(x + (size_t)r * cols, cols);
        mlk__tern_quant_row(x + (size_t)r * cols, cols, amax > 0 ? 127.0f / amax : 0.0f,
                            xq + (size_t)r * cols);
        xscale[r] = amax / 127.0f;
    }
    return MLK_OK;
}

/* ---- ternary GEMM ---- */

/* Whether an m x n x k ternary GEMM is worth a thread team (OpenMP only). */
MLK__MAYBE_UNUSED static int mlk__tern_parallel(int m, int n, int k)
{
    return (double)m * n * k >= 16.0 * MLK__TERN_PAR_MIN;
}

static float mlk__tern_output(int32_t dot, float xscale, float wscale)
{
    return (float)dot * (xscale * wscale);
}

/* Reference dot product of one int8 row with one packed row: exact int32,
   a byte (four weights) at a time, then the last partial byte. */
MLK__MAYBE_UNUSED static int32_t mlk__tern_dot_ref(const int8_t *x, const uint8_t *wrow, int k)
{
    int32_t acc = 0;
    int b, c;
    for (b = 0; b < k / 4; b++) {
        const int8_t *x4 = x + 4 * b;
        unsigned byte = wrow[b];
        acc += x4[0] * ((int32_t)(byte & 3) - 1) + x4[1] * ((int32_t)((byte >> 2) & 3) - 1) +
               x4[2] * ((int32_t)((byte >> 4) & 3) - 1) + x4[3] * ((int32_t)(byte >> 6) - 1);
    }
    for (c = k / 4 * 4; c < k; c++)
        acc += (int32_t)x[c] * ((int32_t)((wrow[c >> 2] >> (2 * (c & 3))) & 3) - 1);
    return acc;
}

/* Reference GEMM: one output column (weight row) per iteration. */
MLK__MAYBE_UNUSED static void mlk__tern_gemm_ref(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y)
{
    size_t row_bytes = mlk_ternary_row_bytes(k);
    int j;
    MLK__OMP(omp parallel for schedule(static) if (mlk__tern_parallel(m, n, k)))
    for (j = 0; j < n; j++) {
        const uint8_t *wrow = wpacked + (size_t)j * row_bytes;
        int i;
        for (i = 0; i < m; i++)
            y[(size_t)i * n + j] = mlk__tern_output(
                mlk__tern_dot_ref(xq + (size_t)i * k, wrow, k), xscale[i], wscale);
    }
}

#if defined(MLK__AVX2)
/* AVX2: 32 packed bytes hold 128 weights; byte j of a 128-block holds
   weights 4j .. 4j+3, so shifting the bytes by 0, 2, 4, 6 gives four
   vectors of codes {0,1,2} for weights 4j + s. The activations are permuted
   once per call to match (xp[128t + 32s + j] = x[128t + 4j + s], zero
   padded), then maddubs(codes as u8, x as s8) gives exact int16 pair sums
   (|c0 x0 + c1 x1| <= 512), and sum c * x - sum x = sum q * x.
   Four pair sums per block and MLK__TERN_WIDEN blocks per int16 lane stay
   within 8 * 4 * 512 = 16384 < 32767 even for x = -128, then widen. */
#define MLK__TERN_MR 4     /* activation rows per micro-kernel call */
#define MLK__TERN_WIDEN 8  /* 128-weight blocks summed in int16 lanes */
#define MLK__TERN_NCHUNK 16 /* weight rows per thread task */

/* Permutes one 128-byte block: out[32s + j] = x[4j + s]. Within each
   16-byte lane, pshufb groups the bytes by s (dword s holds s of 4 j's);
   permd orders the dwords to qwords (s0 s1 s2 s3) of 8 j's each; a 4 x 4
   qword transpose then gathers qword s of every vector into out_s. */
static void mlk__tern_permute_block(const int8_t *x, int8_t *out)
{
    const __m256i by_s = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                          0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i dword_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i v[4], lo01, hi01, lo23, hi23;
    int q;
    for (q = 0; q < 4; q++)
        v[q] = _mm256_permutevar8x32_epi32(
            _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(x + 32 * q)), by_s), dword_order);
    lo01 = _mm256_unpacklo_epi64(v[0], v[1]); /* q0 of v0 v1 | q2 of v0 v1 */
    hi01 = _mm256_unpackhi_epi64(v[0], v[1]); /* q1 | q3 */
    lo23 = _mm256_unpacklo_epi64(v[2], v[3]);
    hi23 = _mm256_unpackhi_epi64(v[2], v[3]);
    _mm256_storeu_si256((__m256i *)out, _mm256_permute2x128_si256(lo01, lo23, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 32), _mm256_permute2x128_si256(hi01, hi23, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 64), _mm256_permute2x128_si256(lo01, lo23, 0x31));
    _mm256_storeu_si256((__m256i *)(out + 96), _mm256_permute2x128_si256(hi01, hi23, 0x31));
}

/* One activation row into the kernel's order (zero padded to kpad), and
   its sum. */
static void mlk__tern_permute_x(const int8_t *x, int k, size_t kpad, int8_t *xp, int32_t *row_sum)
{
    size_t full = (size_t)k / 128 * 128, t;
    int8_t last[128];
    int32_t sum = 0;
    int c;
    for (c = 0; c < k; c++) sum += x[c];
    *row_sum = sum;
    for (t = 0; t < full; t += 128) mlk__tern_permute_block(x + t, xp + t);
    if (full < kpad) {
        memset(last, 0, sizeof last);
        memcpy(last, x + full, (size_t)k - full);
        mlk__tern_permute_block(last, xp + full);
    }
}

/* acc16[r] += pair sums of one 128-weight block for rows r < rows. */
static inline void mlk__tern_block(__m256i wbytes, const int8_t *xp, size_t x_stride,
                                   int rows, __m256i *acc16)
{
    const __m256i mask = _mm256_set1_epi8(3);
    __m256i c0 = _mm256_and_si256(wbytes, mask);
    __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(wbytes, 2), mask);
    __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(wbytes, 4), mask);
    __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(wbytes, 6), mask);
    int r;
    for (r = 0; r < rows; r++) {
        const int8_t *xr = xp + (size_t)r * x_stride;
        __m256i s01 = _mm256_add_epi16(
            _mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i *)xr)),
            _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i *)(xr + 32))));
        __m256i s23 = _mm256_add_epi16(
            _mm256_maddubs_epi16(c2, _mm256_loadu_si256((const __m256i *)(xr + 64))),
            _mm256_maddubs_epi16(c3, _mm256_loadu_si256((const __m256i *)(xr + 96))));
        acc16[r] = _mm256_add_epi16(acc16[r], _mm256_add_epi16(s01, s23));
    }
}

/* dot[r] = sum of the 8 int32 lanes of acc[r], r < rows. */
static inline void mlk__tern_hsum(const __m256i *acc, int rows, int32_t *dot)
{
    int r;
    if (rows == 4) { /* four rows at once: two rounds of pairwise adds */
        __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
        _mm_storeu_si128((__m128i *)dot, _mm_add_epi32(_mm256_castsi256_si128(s),
                                                       _mm256_extracti128_si256(s, 1)));
        return;
    }
    for (r = 0; r < rows; r++) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[r]), _mm256_extracti128_si256(acc[r], 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
        dot[r] = _mm_cvtsi128_si32(s);
    }
}

/* dot[r] = sum_c code(c) * x_r(c) of one packed weight row (`full` whole
   32-byte blocks, then `tail`: NULL or the zero-padded last block) with
   `rows` permuted activation rows (1 .. MLK__TERN_MR; inlined per constant). */
static inline void mlk__tern_dot_avx2(const uint8_t *wrow, size_t full, const uint8_t *tail,
                                      const int8_t *xp, size_t x_stride, int rows, int32_t *dot)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc16[MLK__TERN_MR], acc32[MLK__TERN_MR];
    size_t b0, b;
    int r;
    for (r = 0; r < rows; r++) {
        acc16[r] = _mm256_setzero_si256();
        acc32[r] = _mm256_setzero_si256();
    }
    for (b0 = 0; b0 < full; b0 += MLK__TERN_WIDEN) {
        size_t b1 = b0 + MLK__TERN_WIDEN < full ? b0 + MLK__TERN_WIDEN : full;
        for (b = b0; b < b1; b++)
            mlk__tern_block(_mm256_loadu_si256((const __m256i *)(wrow + 32 * b)), xp + 128 * b,
                            x_stride, rows, acc16);
        for (r = 0; r < rows; r++) {
            acc32[r] = _mm256_add_epi32(acc32[r], _mm256_madd_epi16(acc16[r], ones));
            acc16[r] = _mm256_setzero_si256();
        }
    }
    if (tail) {
        mlk__tern_block(_mm256_loadu_si256((const __m256i *)tail), xp + 128 * full, x_stride,
                        rows, acc16);
        for (r = 0; r < rows; r++)
            acc32[r] = _mm256_add_epi32(acc32[r], _mm256_madd_epi16(acc16[r], ones));
    }
    mlk__tern_hsum(acc32, rows, dot);
}

/* The GEMM on permuted activations: threads take chunks of weight rows
   (output columns); within one, MLK__TERN_MR activation rows at a time. */
static void mlk__tern_gemm_panels(int m, int n, int k, const int8_t *xp, size_t kpad,
    const int32_t *row_sum, const float *xscale, const uint8_t *wpacked, float wscale, float *y)
{
    size_t row_bytes = mlk_ternary_row_bytes(k), full = row_bytes / 32, tail = row_bytes % 32;
    int n_chunks = (n + MLK__TERN_NCHUNK - 1) / MLK__TERN_NCHUNK, ch;
    MLK__OMP(omp parallel for schedule(static) if (mlk__tern_parallel(m, n, k)))
    for (ch = 0; ch < n_chunks; ch++) {
        int j0 = ch * MLK__TERN_NCHUNK, j1 = j0 + MLK__TERN_NCHUNK < n ? j0 + MLK__TERN_NCHUNK : n;
        int i = 0, j, r;
        int32_t dot[MLK__TERN_MR];
        uint8_t tails[MLK__TERN_NCHUNK][32]; /* each row's last bytes, zero padded */
        for (j = j0; tail && j < j1; j++) {
            memset(tails[j - j0], 0, 32);
            memcpy(tails[j - j0], wpacked + (size_t)j * row_bytes + 32 * full, tail);
        }
        for (; i + MLK__TERN_MR <= m; i += MLK__TERN_MR)
            for (j = j0; j < j1; j++) {
                mlk__tern_dot_avx2(wpacked + (size_t)j * row_bytes, full, tail ? tails[j - j0] : NULL,
                                   xp + (size_t)i * kpad, kpad, MLK__TERN_MR, dot);
                for (r = 0; r < MLK__TERN_MR; r++)
                    y[(size_t)(i + r) * n + j] =
                        mlk__tern_output(dot[r] - row_sum[i + r], xscale[i + r], wscale);
            }
        for (; i < m; i++)
            for (j = j0; j < j1; j++) {
                mlk__tern_dot_avx2(wpacked + (size_t)j * row_bytes, full, tail ? tails[j - j0] : NULL,
                                   xp + (size_t)i * kpad, kpad, 1, dot);
                y[(size_t)i * n + j] = mlk__tern_output(dot[0] - row_sum[i], xscale[i], wscale);
            }
    }
}

/* Permutes the activations into scratch, then runs the panels. */
static mlk_status mlk__tern_gemm_avx2(int m, int n, int k, const int8_t *xq, const float *xscale,
                                      const uint8_t *wpacked, float wscale, float *y)
{
    size_t kpad = ((size_t)k + 127) / 128 * 128, xp_bytes;
    mlk__arena arena;
    int8_t *xp;
    int32_t *row_sum;
    mlk_status st;
    int i;
    if (!mlk__mul_ok((size_t)m, kpad, &xp_bytes)) return MLK_ERR_OVERFLOW;
    st = mlk__arena_init(&arena, NULL,
                         mlk__arena_need(mlk__arena_need(0, xp_bytes), (size_t)m * sizeof(int32_t)));
    if (st != MLK_OK) return st;
    xp = (int8_t *)mlk__arena_take(&arena, xp_bytes);
    row_sum = (int32_t *)mlk__arena_take(&arena, (size_t)m * sizeof(int32_t));
    MLK__OMP(omp parallel for schedule(static) if (xp_bytes >= MLK__TERN_PAR_MIN))
    for (i = 0; i < m; i++)
        mlk__tern_permute_x(xq + (size_t)i * k, k, kpad, xp + (size_t)i * kpad, row_sum + i);
    mlk__tern_gemm_panels(m, n, k, xp, kpad, row_sum, xscale, wpacked, wscale, y);
    mlk__arena_done(&arena);
    return MLK_OK;
}
#endif

MLKERN_DEF mlk_status mlk_ternary_gemm(int m, int n, int k, const int8_t *xq,
    const float *xscale, const uint8_t *wpacked, float wscale, float *y)
{
    size_t x_count, y_count, w_bytes, row_bytes = mlk_ternary_row_bytes(k);
    if (m < 1 || n < 1 || k < 1) return MLK_ERR_SHAPE;
    if (!xq || !xscale || !wpacked || !y) return MLK_ERR_NULL;
    if (k > MLK_TERNARY_MAX_K || !mlk__count4(m, k, 1, 1, 1, &x_count) ||
        !mlk__count4(m, n, 1, 1, sizeof(float), &y_count) ||
        !mlk__mul_ok((size_t)n, row_bytes, &w_bytes))
        return MLK_ERR_OVERFLOW;
#if defined(MLK__AVX2)
    return mlk__tern_gemm_avx2(m, n, k, xq, xscale, wpacked, wscale, y);
#else
    mlk__tern_gemm_ref(m, n, k, xq, xscale, wpacked, wscale, y);
    return MLK_OK;
#endif
}

/* ---- BitLinear training ---- */

/* Sizes shared by the BitLinear entry points: x [m, k], w [n, k], y [m, n]. */
static mlk_status mlk__bitlinear_sizes(int m, int n, int k, size_t *x_count, size_t *w_count)
{
    size_t y_count;
    if (m < 1 || n < 1 || k < 1) return MLK_ERR_SHAPE;
    if (k > MLK_TERNARY_MAX_K || !mlk__count4(m, k, 1, 1, sizeof(float), x_count) ||
        !mlk__count4(n, k, 1, 1, sizeof(float), w_count) ||
        !mlk__count4(m, n, 1, 1, sizeof(float), &y_count))
        return MLK_ERR_OVERFLOW;
    return MLK_OK;
}

MLKERN_DEF mlk_status mlk_bitlinear_fwd(int m, int n, int k, const float *x,
    const float *w, float *y)
{
    size_t x_count, w_count, w_bytes;
    mlk__arena arena;
    int8_t *xq;
    float *xscale, wscale;
    uint8_t *wpacked;
    mlk_status st = mlk__bitlinear_sizes(m, n, k, &x_count, &w_count);
    if (st != MLK_OK) return st;
    if (!x || !w || !y) return MLK_ERR_NULL;
    w_bytes = (size_t)n * mlk_ternary_row_bytes(k);
    st = mlk__arena_init(&arena, NULL, mlk__arena_need(mlk__arena_need(mlk__arena_need(0,
                         x_count), (size_t)m * sizeof(float)), w_bytes));
    if (st != MLK_OK) return st;
    xq = (int8_t *)mlk__arena_take(&arena, x_count);
    xscale = (float *)mlk__arena_take(&arena, (size_t)m * sizeof(float));
    wpacked = (uint8_t *)mlk__arena_take(&arena, w_bytes);
    st = mlk_act_quant_i8(m, k, x, xq, xscale);
    if (st == MLK_OK) st = mlk_ternary_quant(n, k, w, wpacked, &wscale);
    if (st == MLK_OK) st = mlk_ternary_gemm(m, n, k, xq, xscale, wpacked, wscale, y);
    mlk__arena_done(&arena);
    return st;
}

MLKERN_DEF mlk_status mlk_bitlinear_bwd(int m, int n, int k, const float *x,
    const float *w, const float *dy, float *dx, float *dw)
{
    size_t x_count, w_count, w_bytes, need = 0;
    mlk__arena arena;
    int8_t *xq = NULL;
    float *xscale = NULL, *x_hat = NULL, *w_hat = NULL, wscale = 0;
    uint8_t *wpacked = NULL;
    mlk_status st = mlk__bitlinear_sizes(m, n, k, &x_count, &w_count);
    if (st != MLK_OK) return st;
    if (!x || !w || !dy) return MLK_ERR_NULL;
    if (!dx && !dw) return MLK_OK;
    w_bytes = (size_t)n * mlk_ternary_row_bytes(k);
    if (dx) need = mlk__arena_need(mlk__arena_need(need, w_bytes), w_count * sizeof(float));
    if (dw) need = mlk__arena_need(mlk__arena_need(mlk__arena_need(need, x_count),
                                   (size_t)m * sizeof(float)), x_count * sizeof(float));
    st = mlk__arena_init(&arena, NULL, need);
    if (st != MLK_OK) return st;
    /* quantise both first: a bad value fails before any output is written */
    if (dx) {
        wpacked = (uint8_t *)mlk__arena_take(&arena, w_bytes);
        w_hat = (float *)mlk__arena_take(&arena, w_count * sizeof(float));
        st = mlk_ternary_quant(n, k, w, wpacked, &wscale);
        if (st == MLK_OK) st = mlk_ternary_dequant(n, k, wpacked, wscale, w_hat);
    }
    if (dw && st == MLK_OK) {
        size_t i;
        xq = (int8_t *)mlk__arena_take(&arena, x_count);
        xscale = (float *)mlk__arena_take(&arena, (size_t)m * sizeof(float));
        x_hat = (float *)mlk__arena_take(&arena, x_count * sizeof(float));
        st = mlk_act_quant_i8(m, k, x, xq, xscale);
        if (st == MLK_OK)
            for (i = 0; i < x_count; i++) x_hat[i] = (float)xq[i] * xscale[i / (size_t)k];
    }
    if (dx && st == MLK_OK) /* dx [m, k] = dy [m, n] * W^ [n, k] */
        st = mlk_sgemm(0, 0, m, k, n, 1.0f, dy, n, w_hat, k, 0.0f, dx, k);
    if (dw && st == MLK_OK) /* dw [n, k] = dy^T [n, m] * x^ [m, k] */
        st = mlk_sgemm(1, 0, n, k, m, 1.0f, dy, n, x_hat, k, 0.0f, dw, k);
    mlk__arena_done(&arena);
    return st;
}

/* ---- AdamW ---- */

MLKERN_DEF mlk_status mlk_adamw_step(int n, float *param, const float *grad,
    float *m, float *v, const mlk_adamw_config *cfg, int step)
{
    float decay, step_size, bc2_sqrt, beta1, beta2, eps;
    int i;
    if (n < 1) return MLK_ERR_SHAPE;
    if (!param || !grad || !m || !v || !cfg) return MLK_ERR_NULL;
    if (step < 1 || !(cfg->lr >= 0 && cfg->lr <= FLT_MAX) || !(cfg->eps >= 0 && cfg->eps <= FLT_MAX) ||
        !(cfg->weight_decay >= 0 && cfg->weight_decay <= FLT_MAX) ||
        !(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1))
        return MLK_ERR_ARG;
    beta1 = cfg->beta1;
    beta2 = cfg->beta2;
    eps = cfg->eps;
    /* scalars in double as PyTorch's Python floats, then used in float */
    decay = (float)(1.0 - (double)cfg->lr * cfg->weight_decay);
    step_size = (float)((double)cfg->lr / (1.0 - pow((double)beta1, (double)step)));
    bc2_sqrt = (float)sqrt(1.0 - pow((double)beta2, (double)step));
    MLK__OMP(omp parallel for schedule(static) if ((size_t)n >= MLK__TERN_PAR_MIN))
    for (i = 0; i < n; i++) {
        float g = grad[i], p = param[i] * decay;
        float m1 = beta1 * m[i] + (1.0f - beta1) * g;
        float v1 = v[i] * beta2 + (1.0f - beta2) * g * g;
        m[i] = m1;
        v[i] = v1;
        param[i] = p - step_size * (m1 / (sqrtf(v1) / bc2_sqrt + eps));
    }
    return MLK_OK;
}

#ifdef __cplusplus
}
#endif

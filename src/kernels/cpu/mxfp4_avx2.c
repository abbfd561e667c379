/* MXFP4 rows in AVX2 (+ FMA): 8 codes at a time become floats through an 8-entry
 * table of magnitudes (vpermps on the low 3 bits) with the sign bit moved into place,
 * times the group's 2^(E - 128) (exact: a power of two), then one fma chain per
 * (row, token) over the whole row and a fixed horizontal sum. The order differs from
 * the scalar reference (mxfp4_dot.c), within float rounding; every (row, token) is
 * computed the same way whatever the batch or thread count. */
#include "kernels/cpu/mxfp4_dot.h"

#include "formats/mxfp4.h"

#if defined(__x86_64__)

#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

TARGET INLINE float hsum8(__m256 v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* 8 codes (one per byte of the low 64 bits of c) as float values code2 * d. */
TARGET INLINE __m256 decode8(__m128i c, __m256 mag, __m256 d) {
    __m256i i = _mm256_cvtepu8_epi32(c);
    __m256 v = _mm256_permutevar8x32_ps(mag, i); /* vpermps uses the low 3 bits */
    __m256i sign = _mm256_slli_epi32(_mm256_srli_epi32(i, 3), 31);
    return _mm256_mul_ps(_mm256_xor_ps(v, _mm256_castsi256_ps(sign)), d);
}

/* The group's 32 codes in value order: (lo, hi) halves of 16 bytes each. */
TARGET INLINE void group_codes(const lm_mat *W, int r, int g, __m128i *v0_15, __m128i *v16_31, uint8_t *e) {
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const int ng = W->cols / 32;
    if (W->dtype == LM_DT_MXFP4_SPLIT) {
        const uint8_t *c = (const uint8_t *)W->data + (size_t)r * (size_t)(W->cols / 2) + 16 * (size_t)g;
        __m128i b = _mm_loadu_si128((const __m128i *)c);
        __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
        *v0_15 = _mm_unpacklo_epi8(lo, hi); /* value 2j from the low nibble, 2j + 1 from the high */
        *v16_31 = _mm_unpackhi_epi8(lo, hi);
        *e = ((const uint8_t *)W->scales)[(size_t)r * (size_t)ng + (size_t)g];
    } else {
        const uint8_t *b17 = (const uint8_t *)W->data + ((size_t)r * (size_t)ng + (size_t)g) * 17;
        __m128i b = _mm_loadu_si128((const __m128i *)(b17 + 1));
        *v0_15 = _mm_and_si128(b, m4); /* value j low, j + 16 high */
        *v16_31 = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
        *e = b17[0];
    }
}

TARGET static float dot_avx2(const lm_mat *W, int r, const float *x) {
    const __m256 mag = _mm256_setr_ps(0, 1, 2, 3, 4, 6, 8, 12);
    __m256 acc = _mm256_setzero_ps();
    for (int g = 0; g < W->cols / 32; g++, x += 32) {
        __m128i a, b;
        uint8_t e;
        group_codes(W, r, g, &a, &b, &e);
        __m256 d = _mm256_set1_ps(lm_e8m0_half_to_f32(e));
        acc = _mm256_fmadd_ps(decode8(a, mag, d), _mm256_loadu_ps(x), acc);
        acc = _mm256_fmadd_ps(decode8(_mm_srli_si128(a, 8), mag, d), _mm256_loadu_ps(x + 8), acc);
        acc = _mm256_fmadd_ps(decode8(b, mag, d), _mm256_loadu_ps(x + 16), acc);
        acc = _mm256_fmadd_ps(decode8(_mm_srli_si128(b, 8), mag, d), _mm256_loadu_ps(x + 24), acc);
    }
    return hsum8(acc);
}

void lm_mxfp4_rows_avx2(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < n; t++)
            y[(size_t)t * (size_t)W->rows + (size_t)r] = dot_avx2(W, r, x + (size_t)t * (size_t)W->cols);
}

/* Int8 activations: the codes become int8 twice-values (-12..12) by a byte shuffle;
 * maddubs(|w|, q with w's sign) pairs stay within int16 (2 * 12 * 127), and the two
 * 16-value halves' int32 sums come out exact; f32 work as the reference's. */
TARGET static float dot_act8_avx2(const lm_mat *W, int r, const int8_t *q, const float *dx, const float *xsum) {
    const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m256i ones = _mm256_set1_epi16(1);
    float acc = 0;
    for (int g = 0; g < W->cols / 32; g++, q += 32) {
        __m128i a, b;
        uint8_t e;
        group_codes(W, r, g, &a, &b, &e);
        const __m256i w = _mm256_set_m128i(_mm_shuffle_epi8(lut, b), _mm_shuffle_epi8(lut, a));
        const __m256i x = _mm256_loadu_si256((const __m256i *)q);
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
        __m128i h = _mm_hadd_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
        h = _mm_hadd_epi32(h, h); /* values 0..15, 16..31 */
        const float f = lm_e8m0_half_to_f32(e), b0 = 0.0f;
        acc += (f * dx[g]) * (float)_mm_cvtsi128_si32(h);
        acc += (f * dx[g]) * (float)_mm_extract_epi32(h, 1);
        acc += b0 * xsum[g]; /* the reference's b term (0), kept for its -0 / NaN behaviour */
    }
    return acc;
}

void lm_mxfp4_rows_act8_avx2(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < n; t++)
            y[(size_t)t * (size_t)W->rows + (size_t)r] =
                dot_act8_avx2(W, r, a->q + (size_t)t * a->q_stride, a->dx + (size_t)t * (size_t)a->ng_stride,
                              a->xsum + (size_t)t * (size_t)a->ng_stride);
}

#else

void lm_mxfp4_rows_avx2(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    (void)W, (void)r0, (void)r1, (void)x, (void)n, (void)y;
}
void lm_mxfp4_rows_act8_avx2(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    (void)W, (void)r0, (void)r1, (void)a, (void)n, (void)y;
}

#endif

/* MXFP4 rows in AVX-512 with f32 activations (mxfp4_dot.h): a code nibble is the
 * index of a 16-entry table of its signed twice-values (vpermps), so 16 codes become
 * floats in one permute; times the group's 2^(E - 128) (exact: a power of two), one
 * fma chain per (row, token) over the whole row and a fixed horizontal sum. The
 * order differs from the scalar reference and from AVX2 within float rounding;
 * every (row, token) is computed the same way whatever the batch or thread count. */
#include "kernels/cpu/mxfp4_dot.h"

#include "formats/mxfp4.h"

#if defined(__x86_64__)

#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))

/* Fixed summation tree: 16 -> 8 -> 4 -> 2 -> 1. */
TARGET INLINE float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    c = _mm_add_ps(c, _mm_movehl_ps(c, c));
    c = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(c);
}

/* 16 codes (one per byte) as float values code2 * d. */
TARGET INLINE __m512 decode16(__m128i c, __m512 table, __m512 d) {
    return _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c), table), d);
}

TARGET static float dot_avx512(const lm_mat *W, int r, const float *x) {
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const int ng = W->cols / 32, split = W->dtype == LM_DT_MXFP4_SPLIT;
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++, x += 32) {
        const uint8_t *c, *e;
        if (split) {
            c = (const uint8_t *)W->data + (size_t)r * (size_t)(W->cols / 2) + 16 * (size_t)g;
            e = (const uint8_t *)W->scales + (size_t)r * (size_t)ng + (size_t)g;
        } else {
            e = (const uint8_t *)W->data + ((size_t)r * (size_t)ng + (size_t)g) * 17;
            c = e + 1;
        }
        const __m128i b = _mm_loadu_si128((const __m128i *)c);
        const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
        /* values 0..15 and 16..31: pairs (2j, 2j + 1) in the split layout, (j, j + 16) in ggml's */
        const __m128i v0 = split ? _mm_unpacklo_epi8(lo, hi) : lo, v1 = split ? _mm_unpackhi_epi8(lo, hi) : hi;
        const __m512 d = _mm512_set1_ps(lm_e8m0_half_to_f32(*e));
        acc = _mm512_fmadd_ps(decode16(v0, table, d), _mm512_loadu_ps(x), acc);
        acc = _mm512_fmadd_ps(decode16(v1, table, d), _mm512_loadu_ps(x + 16), acc);
    }
    return hsum16(acc);
}

void lm_mxfp4_rows_avx512(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < n; t++)
            y[(size_t)t * (size_t)W->rows + (size_t)r] = dot_avx512(W, r, x + (size_t)t * (size_t)W->cols);
}

#else

void lm_mxfp4_rows_avx512(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    (void)W, (void)r0, (void)r1, (void)x, (void)n, (void)y;
}

#endif

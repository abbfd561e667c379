/* AVX2 matrix kernels (AVX2 + FMA + F16C: Haswell, Zen 1 and later).
 *
 * 8 lanes. 4-bit affine: one 32-bit word holds 8 weights; broadcast, shift each
 * lane by 4i (vpsrlvd), mask, convert, fma(scale, q, bias). 8-bit affine:
 * zero-extend, convert, fma. BF16 widens by a shift, F16 by vcvtph2ps. Every
 * (row, token) pair is one accumulator chain (see cpu_kernels.h), whichever
 * tile shape computes it.
 */
#include "kernels/cpu/cpu_kernels.h"

#if defined(__x86_64__)

#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
/* Tile loops run a constant 1..4 times: unrolled, the accumulators live in registers. */
#define UNROLL _Pragma("GCC unroll 4")
#define LANES 8
#define TILE_R 4 /* rows per tile */
#define TILE_T 2 /* tokens per tile: 16 ymm registers hold 8 accumulators and the rest */

/* Fixed summation tree: 8 -> 4 -> 2 -> 1. */
TARGET INLINE float hsum(__m256 v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

TARGET INLINE __m256 load_float_chunk(const void *row, lm_dtype dt, int k) {
    switch (dt) {
    case LM_DT_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k))), 16));
    case LM_DT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
    default: return _mm256_loadu_ps((const float *)row + k);
    }
}

/* count scales or biases from element `first` as f32 into dst. */
TARGET INLINE void groups_to_f32(float *dst, const void *src, lm_dtype dt, size_t first, int count) {
    int k = 0;
    for (; k + LANES <= count; k += LANES) {
        __m256 v;
        if (dt == LM_DT_F32) v = _mm256_loadu_ps((const float *)src + first + k);
        else v = load_float_chunk((const uint16_t *)src + first, dt, k);
        _mm256_storeu_ps(dst + k, v);
    }
    for (; k < count; k++) dst[k] = lm_load_float(src, dt, first + (size_t)k);
}

/* Groups whose scales and biases a tile converts at once (8 KiB of stack). */
#define GROUP_BLOCK 256

TARGET INLINE void float_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols;
    const size_t esz = lm_dtype_size(W->dtype);
    const char *rowp[TILE_R];
    __m256 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const char *)W->data + (size_t)(r + i) * (size_t)cols * esz;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();
    }
    int k = 0;
    for (; k + LANES <= cols; k += LANES) {
        __m256 xv[TILE_T];
        UNROLL
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + (size_t)t * (size_t)cols + k);
        UNROLL
        for (int i = 0; i < R; i++) {
            __m256 w = load_float_chunk(rowp[i], W->dtype, k);
            UNROLL
            for (int t = 0; t < T; t++) acc[i][t] = _mm256_fmadd_ps(w, xv[t], acc[i][t]);
        }
    }
    if (k < cols) { /* tail: zero-padded copies, so the chain simply adds 0 * 0 */
        int rest = cols - k;
        float wtmp[LANES] = {0}, xtmp[LANES] = {0}; /* holds LANES elements of any float type */
        UNROLL
        for (int i = 0; i < R; i++) {
            memcpy(wtmp, rowp[i] + (size_t)k * esz, (size_t)rest * esz);
            __m256 w = load_float_chunk(wtmp, W->dtype, 0);
            UNROLL
            for (int t = 0; t < T; t++) {
                memcpy(xtmp, x + (size_t)t * (size_t)cols + k, (size_t)rest * 4);
                acc[i][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xtmp), acc[i][t]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}

/* Affine 4- and 8-bit, group size a multiple of 8. */
TARGET INLINE void affine_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T,
                               const int bits) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const size_t row_bytes = (size_t)cols * (size_t)bits / 8;
    const __m256i shifts = _mm256_set_epi32(28, 24, 20, 16, 12, 8, 4, 0);
    const __m256i low4 = _mm256_set1_epi32(15);
    const uint8_t *rowp[TILE_R];
    __m256 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * row_bytes;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();
    }
    float sf[TILE_R][GROUP_BLOCK], bf[TILE_R][GROUP_BLOCK];
    for (int g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {
        const int gn = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;
        UNROLL
        for (int i = 0; i < R; i++) {
            size_t first = (size_t)(r + i) * (size_t)ng + (size_t)g0;
            groups_to_f32(sf[i], W->scales, W->qdtype, first, gn);
            groups_to_f32(bf[i], W->biases, W->qdtype, first, gn);
        }
        for (int g = 0; g < gn; g++) {
            const int k0 = (g0 + g) * gs;
            for (int c = 0; c < gs; c += LANES) {
                __m256 xv[TILE_T];
                UNROLL
                for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + (size_t)t * (size_t)cols + k0 + c);
                UNROLL
                for (int i = 0; i < R; i++) {
                    __m256i q;
                    if (bits == 4) {
                        uint32_t word;
                        memcpy(&word, rowp[i] + (size_t)(k0 + c) / 2, 4);
                        q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), low4);
                    } else {
                        q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(rowp[i] + k0 + c)));
                    }
                    __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(sf[i][g]), _mm256_set1_ps(bf[i][g]));
                    UNROLL
                    for (int t = 0; t < T; t++) acc[i][t] = _mm256_fmadd_ps(w, xv[t], acc[i][t]);
                }
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}

TARGET INLINE void q4_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    affine_tile(W, r, x, y, R, T, 4);
}
TARGET INLINE void q8_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    affine_tile(W, r, x, y, R, T, 8);
}

typedef void (*tile_fn)(const lm_mat *W, int r, const float *x, float *y);

#define TILE_SHAPES(kind)                                                                                  \
    TARGET static void kind##_RT(const lm_mat *W, int r, const float *x, float *y) {                       \
        kind##_tile(W, r, x, y, TILE_R, TILE_T);                                                           \
    }                                                                                                      \
    TARGET static void kind##_R1(const lm_mat *W, int r, const float *x, float *y) {                       \
        kind##_tile(W, r, x, y, TILE_R, 1);                                                                \
    }                                                                                                      \
    TARGET static void kind##_1T(const lm_mat *W, int r, const float *x, float *y) {                       \
        kind##_tile(W, r, x, y, 1, TILE_T);                                                                \
    }                                                                                                      \
    TARGET static void kind##_11(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, 1, 1); }
TILE_SHAPES(float)
TILE_SHAPES(q4)
TILE_SHAPES(q8)

TARGET static void rows_avx2(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    tile_fn rt, r1t, one_t, one1;
    if (W->dtype == LM_DT_U32 && W->bits == 4) {
        rt = q4_RT, r1t = q4_R1, one_t = q4_1T, one1 = q4_11;
    } else if (W->dtype == LM_DT_U32) {
        rt = q8_RT, r1t = q8_R1, one_t = q8_1T, one1 = q8_11;
    } else {
        rt = float_RT, r1t = float_R1, one_t = float_1T, one1 = float_11;
    }
    const size_t cols = (size_t)W->cols, rows = (size_t)W->rows;
    for (int t0 = 0; t0 < n; t0 += LM_KERNEL_TOKEN_BLOCK) {
        int tn = n - t0 < LM_KERNEL_TOKEN_BLOCK ? n - t0 : LM_KERNEL_TOKEN_BLOCK;
        int r = r0;
        for (; r + TILE_R <= r1; r += TILE_R) {
            int t = t0;
            for (; t + TILE_T <= t0 + tn; t += TILE_T) rt(W, r, x + (size_t)t * cols, y + (size_t)t * rows + (size_t)r);
            for (; t < t0 + tn; t++) r1t(W, r, x + (size_t)t * cols, y + (size_t)t * rows + (size_t)r);
        }
        for (; r < r1; r++) {
            int t = t0;
            for (; t + TILE_T <= t0 + tn; t += TILE_T) one_t(W, r, x + (size_t)t * cols, y + (size_t)t * rows + (size_t)r);
            for (; t < t0 + tn; t++) one1(W, r, x + (size_t)t * cols, y + (size_t)t * rows + (size_t)r);
        }
    }
}

TARGET static void f16_to_f32_avx2(float *dst, const uint16_t *src, int n) {
    int i = 0;
    for (; i + LANES <= n; i += LANES) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = lm_f16_to_f32(src[i]);
}

TARGET static float dot_avx2(const float *a, const float *b, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + LANES), _mm256_loadu_ps(b + i + LANES), acc1);
    }
    float s = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

TARGET static void axpy_avx2(float *y, float a, const float *x, int n) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + LANES <= n; i += LANES) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static int handles_avx2(const lm_mat *W) {
    if (W->dtype == LM_DT_U32)
        return (W->bits == 4 || W->bits == 8) && W->group_size % LANES == 0 &&
               (W->qdtype == LM_DT_F32 || W->qdtype == LM_DT_F16 || W->qdtype == LM_DT_BF16);
    return W->dtype == LM_DT_F32 || W->dtype == LM_DT_F16 || W->dtype == LM_DT_BF16;
}

static int available_avx2(void) {
    const unsigned need = LM_CPU_AVX2 | LM_CPU_FMA | LM_CPU_F16C;
    return (lm_cpu_features() & need) == need;
}

const lm_cpu_kernels lm_cpu_kernels_avx2 = {"avx2", "AVX2 with FMA and F16C", available_avx2, handles_avx2, rows_avx2, f16_to_f32_avx2, dot_avx2, axpy_avx2, NULL, NULL, 0};

#else /* not x86-64 */

static int unavailable(void) { return 0; }
const lm_cpu_kernels lm_cpu_kernels_avx2 = {"avx2", "an x86-64 CPU with AVX2", unavailable, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};

#endif

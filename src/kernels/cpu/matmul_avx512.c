/* AVX-512 matrix kernels (F, BW, VL, DQ, VBMI + FMA, F16C: Ice Lake, Zen 4 and later).
 *
 * 16 lanes. 4-bit affine: a 64-bit word holds 16 weights; vpbroadcastq + one
 * vpmultishiftqb puts weight i's nibble in the low bits of lane i, and vpermps
 * looks the lane up in the group's 16-entry table fma(scale, q, bias) -- three
 * instructions per 16 weights, no integer-to-float conversion. 8-bit affine:
 * zero-extend, convert, fma(scale, q, bias). BF16 widens by a shift, F16 by
 * vcvtph2ps. Every (row, token) pair is one accumulator chain (see
 * cpu_kernels.h), whichever tile shape computes it.
 */
#include "kernels/cpu/cpu_kernels.h"

#if defined(__x86_64__)

#include <immintrin.h>
#include <string.h>





#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
/* Tile loops run a constant 1..4 times: unrolled, the accumulators live in registers. */
#define UNROLL _Pragma("GCC unroll 4")
#define LANES 16
#define TILE_R 4 /* rows per tile */
#define TILE_T 4 /* tokens per tile */
/* Decode streams every weight row from memory once. The hardware prefetcher does not
 * run far enough ahead of 4 interleaved row streams; asking for the bytes 4 KiB
 * ahead (the next tile's rows: rows are contiguous) lifted one-thread 4-bit GEMV
 * from ~7.5 to ~13 GB/s here (bench/bench_matmul.c, 256 MB of weights; 256 and
 * 1024 bytes ahead gave ~8.5 and ~10). */
#define PREFETCH_AHEAD 4096

/* Fixed summation tree: 16 -> 8 -> 4 -> 2 -> 1. */
TARGET INLINE float hsum(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

TARGET INLINE __m512 load_float_chunk(const void *row, lm_dtype dt, int k) {
    switch (dt) {
    case LM_DT_BF16:
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k))), 16));
    case LM_DT_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k)));
    default: return _mm512_loadu_ps((const float *)row + k);
    }
}

/* count scales or biases from element `first` as f32 into dst (masked loads:
 * nothing past the end is touched). */
TARGET INLINE void groups_to_f32(float *dst, const void *src, lm_dtype dt, size_t first, int count) {
    for (int k = 0; k < count; k += LANES) {
        __mmask16 m = count - k >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (count - k)) - 1);
        __m512 v;
        if (dt == LM_DT_F32) {
            v = _mm512_maskz_loadu_ps(m, (const float *)src + first + k);
        } else {
            __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)src + first + k);
            v = dt == LM_DT_F16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
        _mm512_mask_storeu_ps(dst + k, m, v);
    }
}

/* Groups whose scales and biases a tile converts at once (16 KiB of stack). */
#define GROUP_BLOCK 256

/* One tile of R rows x T tokens over float weights (F32, F16, BF16). x points
 * at the first token ([T][cols]); y at the first token's output row ([T][rows]). */
TARGET INLINE void float_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols;
    const size_t esz = lm_dtype_size(W->dtype);
    const char *rowp[TILE_R];
    __m512 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const char *)W->data + (size_t)(r + i) * (size_t)cols * esz;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    }
    int k = 0;
    for (; k + LANES <= cols; k += LANES) {
        __m512 xv[TILE_T];
        UNROLL
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + (size_t)t * (size_t)cols + k);
        UNROLL
        for (int i = 0; i < R; i++) {
            __m512 w = load_float_chunk(rowp[i], W->dtype, k);
            UNROLL
            for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(w, xv[t], acc[i][t]);
        }
    }
    if (k < cols) { /* tail: zero-padded copies, so the chain simply adds 0 * 0 */
        int rest = cols - k;
        float wtmp[LANES] = {0}, xtmp[LANES] = {0}; /* holds LANES elements of any float type */
        UNROLL
        for (int i = 0; i < R; i++) {
            memcpy(wtmp, rowp[i] + (size_t)k * esz, (size_t)rest * esz);
            __m512 w = load_float_chunk(wtmp, W->dtype, 0);
            UNROLL
            for (int t = 0; t < T; t++) {
                memcpy(xtmp, x + (size_t)t * (size_t)cols + k, (size_t)rest * 4);
                acc[i][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xtmp), acc[i][t]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}

/* Affine 4-bit, group size a multiple of 16. */
TARGET INLINE void q4_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const size_t row_bytes = (size_t)cols / 2;
    /* Lane i takes the 8 bits starting at bit 4i of the 64-bit word: its nibble. */
    const __m512i ctl = _mm512_set_epi32(60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512 ramp = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const uint8_t *rowp[TILE_R];
    __m512 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * row_bytes;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
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
            __m512 tab[TILE_R];
            UNROLL
            for (int i = 0; i < R; i++) tab[i] = _mm512_fmadd_ps(ramp, _mm512_set1_ps(sf[i][g]), _mm512_set1_ps(bf[i][g]));
            const int k0 = (g0 + g) * gs;
            for (int c = 0; c < gs; c += LANES) {
                __m512 xv[TILE_T];
                UNROLL
                for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + (size_t)t * (size_t)cols + k0 + c);
                UNROLL
                for (int i = 0; i < R; i++) {
                    uint64_t word;
                    if (T == 1 && c == 0) /* once per group (32 bytes at group size 64) */
                        _mm_prefetch((const char *)rowp[i] + (size_t)k0 / 2 + PREFETCH_AHEAD, _MM_HINT_T0);
                    memcpy(&word, rowp[i] + (size_t)(k0 + c) / 2, 8);
                    __m512i idx = _mm512_multishift_epi64_epi8(ctl, _mm512_set1_epi64((long long)word));
                    __m512 w = _mm512_permutexvar_ps(idx, tab[i]);
                    UNROLL
                    for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(w, xv[t], acc[i][t]);
                }
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}

/* Affine 8-bit, group size a multiple of 16. */
TARGET INLINE void q8_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const uint8_t *rowp[TILE_R];
    __m512 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * (size_t)cols;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
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
            __m512 vs[TILE_R], vb[TILE_R];
            UNROLL
            for (int i = 0; i < R; i++) {
                vs[i] = _mm512_set1_ps(sf[i][g]);
                vb[i] = _mm512_set1_ps(bf[i][g]);
            }
            const int k0 = (g0 + g) * gs;
            for (int c = 0; c < gs; c += LANES) {
                __m512 xv[TILE_T];
                UNROLL
                for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + (size_t)t * (size_t)cols + k0 + c);
                UNROLL
                for (int i = 0; i < R; i++) {
                    if (T == 1 && (c & 63) == 0) _mm_prefetch((const char *)rowp[i] + k0 + c + PREFETCH_AHEAD, _MM_HINT_T0);
                    __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(rowp[i] + k0 + c)));
                    __m512 w = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), vs[i], vb[i]);
                    UNROLL
                    for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(w, xv[t], acc[i][t]);
                }
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}


/* The four tile shapes each kind needs: full tiles and the row/token remainders. */
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
    TARGET static void kind##_11(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, 1, 1); } \
    static const lm_f32_tile kind##_shapes[2][2] = {{kind##_11, kind##_1T}, {kind##_R1, kind##_RT}};
TILE_SHAPES(float)
TILE_SHAPES(q4)
TILE_SHAPES(q8)

TARGET static void rows_avx512(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    const lm_f32_tile(*shapes)[2] = W->dtype != LM_DT_U32 ? float_shapes : W->bits == 4 ? q4_shapes : q8_shapes;
    lm_tile_rows(W, r0, r1, x, n, y, TILE_R, TILE_T, shapes);
}

/* ---- int8 activations (cpu_kernels.h: lm_act8), AVX-512 VNNI -------------------
 *
 * vpdpbusd multiplies 64 unsigned weight bytes with 64 signed activation bytes
 * and adds each 4 adjacent products into one of 16 int32 lanes. 4-bit: 64 packed
 * bytes (128 weights) per step; a mask gives the low nibbles (the even-indexed
 * weights) and a shift the high ones (odd), which meet the activations the
 * backend stored as even-then-odd halves of each 128-block (act8_q4_block), so
 * lane k sums weights 8k..8k+7 exactly. 8-bit: 64 weights per step, natural
 * order, lane k = weights 4k..4k+3. Each lane then adds int * (scale * dx) of its
 * group to an f32 accumulator, and the biases' sum_g bias_g * xsum_g joins the
 * same accumulator 16 groups at a time. */
#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma,f16c")))
#define Q4_BLOCK 128 /* weights per step, 4-bit */
#define Q8_BLOCK 64  /* weights per step, 8-bit */

/* Lane k's group relative to the step's first group: (k * weights_per_lane) / gs,
 * for group sizes below the step; a step inside one group uses lane 0's. */
TARGET_VNNI INLINE __m512i lane_groups(int weights_per_lane, int gs) {
    int idx[16];
    for (int k = 0; k < 16; k++) idx[k] = k * weights_per_lane / gs;
    return _mm512_loadu_si512(idx);
}

/* The 16 lanes' entries of s from group g on (a step inside one group has all
 * indices 0: a broadcast). Branch-free for every group size. */
TARGET_VNNI INLINE __m512 step_scales(const float *s, int g, __m512i idx) {
    return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(s + g));
}

/* R rows x T tokens of an affine matrix (bits 4 or 8) with int8 activations. */
TARGET_VNNI INLINE void a8_tile(const lm_mat *W, int r, const lm_act8 *a, float *y, const int R, const int T,
                                const int bits) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const int block = bits == 4 ? Q4_BLOCK : Q8_BLOCK;
    const int per_lane = block / 16;               /* weights per int32 lane */
    const int split = gs < block;                  /* several groups per step */
    const __m512i idx = lane_groups(per_lane, gs);
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const size_t row_bytes = (size_t)cols * (size_t)bits / 8;
    const uint8_t *rowp[TILE_R];
    __m512 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * row_bytes;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    }
    /* Scales and biases of GROUP_BLOCK groups as f32, zero past the last group
     * (a partial step reads 16 entries; 0 keeps its empty lanes 0). */
    float sf[TILE_R][GROUP_BLOCK + LANES], bf[TILE_R][GROUP_BLOCK + LANES];
    for (int g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {
        const int gn = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;
        UNROLL
        for (int i = 0; i < R; i++) {
            size_t first = (size_t)(r + i) * (size_t)ng + (size_t)g0;
            groups_to_f32(sf[i], W->scales, W->qdtype, first, gn);
            groups_to_f32(bf[i], W->biases, W->qdtype, first, gn);
            memset(sf[i] + gn, 0, sizeof(float) * LANES);
            memset(bf[i] + gn, 0, sizeof(float) * LANES);
        }
        const int c0 = g0 * gs, c1 = (g0 + gn) * gs; /* a multiple of the step: GROUP_BLOCK * gs */
        /* The step's first group relative to g0, advanced without a division. */
        const int groups_per_step = split ? block / gs : 0, steps_per_group = split ? 1 : gs / block;
        int g = 0, sub = 0;
        for (int c = c0; c < c1; c += block) {
            const int bytes_left = (c1 - c) * bits / 8;
            const __mmask64 m = bytes_left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << bytes_left) - 1);
            __m512 dxv[TILE_T];
            UNROLL
            for (int t = 0; t < T; t++)
                dxv[t] = step_scales(a->dx + (size_t)t * (size_t)a->ng_stride + g0, g, idx);
            UNROLL
            for (int i = 0; i < R; i++) {
                const uint8_t *wp = rowp[i] + (size_t)c * (size_t)bits / 8;
                if (T == 1) _mm_prefetch((const char *)wp + PREFETCH_AHEAD, _MM_HINT_T0);
                /* Plain loads for whole steps: masked byte loads are slow on some CPUs (Zen). */
                __m512i w = bytes_left >= 64 ? _mm512_loadu_si512(wp) : _mm512_maskz_loadu_epi8(m, wp);
                __m512 sv = step_scales(sf[i], g, idx);
                __m512i lo = bits == 4 ? _mm512_and_si512(w, nib) : w;
                __m512i hi = bits == 4 ? _mm512_and_si512(_mm512_srli_epi16(w, 4), nib) : w;
                UNROLL
                for (int t = 0; t < T; t++) {
                    const int8_t *xq = a->q + (size_t)t * a->q_stride + c;
                    __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_load_si512(xq));
                    if (bits == 4) d = _mm512_dpbusd_epi32(d, hi, _mm512_load_si512(xq + 64));
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sv, dxv[t]), acc[i][t]);
                }
            }
            if (split) {
                g += groups_per_step;
            } else if (++sub == steps_per_group) {
                sub = 0;
                g++;
            }
        }
        for (int gb = 0; gb < gn; gb += LANES) {
            UNROLL
            for (int i = 0; i < R; i++) {
                __m512 b = _mm512_loadu_ps(bf[i] + gb);
                UNROLL
                for (int t = 0; t < T; t++)
                    acc[i][t] = _mm512_fmadd_ps(
                        b, _mm512_loadu_ps(a->xsum + (size_t)t * (size_t)a->ng_stride + g0 + gb), acc[i][t]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}

#define A8_SHAPES(bits)                                                                                    \
    TARGET_VNNI static void a8q##bits##_RT(const lm_mat *W, int r, const lm_act8 *a, float *y) {           \
        a8_tile(W, r, a, y, TILE_R, TILE_T, bits);                                                         \
    }                                                                                                      \
    TARGET_VNNI static void a8q##bits##_R1(const lm_mat *W, int r, const lm_act8 *a, float *y) {           \
        a8_tile(W, r, a, y, TILE_R, 1, bits);                                                              \
    }                                                                                                      \
    TARGET_VNNI static void a8q##bits##_1T(const lm_mat *W, int r, const lm_act8 *a, float *y) {           \
        a8_tile(W, r, a, y, 1, TILE_T, bits);                                                              \
    }                                                                                                      \
    TARGET_VNNI static void a8q##bits##_11(const lm_mat *W, int r, const lm_act8 *a, float *y) {           \
        a8_tile(W, r, a, y, 1, 1, bits);                                                                   \
    } \
    static const lm_act8_tile a8q##bits##_shapes[2][2] = {{a8q##bits##_11, a8q##bits##_1T}, \
                                                          {a8q##bits##_R1, a8q##bits##_RT}};
A8_SHAPES(4)
A8_SHAPES(8)

TARGET_VNNI static void rows_act8_avx512(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    lm_tile_rows_act8(W, r0, r1, a, n, y, TILE_R, TILE_T, W->bits == 8 ? a8q8_shapes : a8q4_shapes);
}

static int handles_act8_avx512(const lm_mat *W) {
    if (!(lm_cpu_features() & LM_CPU_AVX512VNNI) || W->dtype != LM_DT_U32) return 0;
    if (W->qdtype != LM_DT_F32 && W->qdtype != LM_DT_F16 && W->qdtype != LM_DT_BF16) return 0;
    int gs = W->group_size;
    if (W->bits == 4) return gs == 32 || gs == 64 || (gs > 0 && gs % Q4_BLOCK == 0);
    if (W->bits == 8) return gs == 32 || (gs > 0 && gs % Q8_BLOCK == 0);
    return 0;
}

TARGET static void f16_to_f32_avx512(float *dst, const uint16_t *src, int n) {
    for (int i = 0; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
    }
}

TARGET static float dot_avx512(const float *a, const float *b, int n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + LANES), _mm512_loadu_ps(b + i + LANES), acc1);
    }
    for (; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
    }
    return hsum(_mm512_add_ps(acc0, acc1));
}

TARGET static void axpy_avx512(float *y, float a, const float *x, int n) {
    __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static int handles_avx512(const lm_mat *W) {
    if (W->dtype == LM_DT_U32)
        return (W->bits == 4 || W->bits == 8) && W->group_size % LANES == 0 &&
               (W->qdtype == LM_DT_F32 || W->qdtype == LM_DT_F16 || W->qdtype == LM_DT_BF16);
    return W->dtype == LM_DT_F32 || W->dtype == LM_DT_F16 || W->dtype == LM_DT_BF16;
}

static int available_avx512(void) {
    const unsigned need = LM_CPU_AVX512F | LM_CPU_AVX512BW | LM_CPU_AVX512VL | LM_CPU_AVX512DQ | LM_CPU_AVX512VBMI |
                          LM_CPU_FMA | LM_CPU_F16C;
    return (lm_cpu_features() & need) == need;
}

const lm_cpu_kernels lm_cpu_kernels_avx512 = {"avx512",
                                              "AVX-512 F/BW/VL/DQ/VBMI with FMA and F16C",
                                              available_avx512,
                                              handles_avx512,
                                              rows_avx512,
                                              f16_to_f32_avx512,
                                              dot_avx512,
                                              axpy_avx512,
                                              handles_act8_avx512,
                                              rows_act8_avx512,
                                              Q4_BLOCK};

#else /* not x86-64 */

static int unavailable(void) { return 0; }
const lm_cpu_kernels lm_cpu_kernels_avx512 = {"avx512", "an x86-64 CPU with AVX-512 VBMI", unavailable, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};

#endif

/* AVX2 matrix kernels (AVX2 + FMA + F16C: Haswell, Zen 1 and later).
 *
 * 8 lanes. 4-bit affine: one 32-bit word holds 8 weights; broadcast, shift each
 * lane by 4i (vpsrlvd), mask, convert, fma(scale, q, bias). 8-bit affine:
 * zero-extend, convert, fma. BF16 widens by a shift, F16 by vcvtph2ps. Every
 * (row, token) pair is one accumulator chain (see cpu_kernels.h), whichever
 * tile shape computes it.
 * Int8 activations (lm_act8): exact integer dot products per group, with AVX-VNNI
 * (vpdpbusd on ymm) where the CPU has it, else with vpmaddubsw / vpmaddwd; both
 * reach the same int32 lanes, so they agree bit for bit (details further down).
 */
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/qblock.h"

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

TARGET static void rows_avx2(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    const lm_f32_tile(*shapes)[2] = W->dtype != LM_DT_U32 ? float_shapes : W->bits == 4 ? q4_shapes : q8_shapes;
    lm_tile_rows(W, r0, r1, x, n, y, TILE_R, TILE_T, shapes);
}

/* ---- int8 activations (cpu_kernels.h: lm_act8) -------------------------------------
 *
 * A step takes 32 bytes of packed weights: 64 4-bit weights or 32 8-bit ones. Its
 * int32 lane k sums the products of the step's packed bytes 4k..4k+3 with their
 * activations (4-bit: a mask gives the low nibbles, the even-indexed weights, and a
 * shift the high ones, which meet the activations the backend stored as even-then-
 * odd halves of each 64-block (act8_q4_block), so lane k holds weights 8k..8k+7;
 * 8-bit: weights 4k..4k+3). The lanes add up exactly over a group's steps (4-bit
 * with groups of 32: a step holds two groups, lanes 0-3 and 4-7). The lanes of 8
 * groups are then added across in int32 (vphaddd) into the 8 groups' exact I_g, one
 * per lane, and only then converted: cvt(I_g) * (scale_g * dx_g) and bias_g * xsum_g
 * join the f32 lane accumulators 8 groups at a time, so every table rounds the same
 * terms (cpu_kernels.h). Converting each lane's partial sum instead rounded terms
 * far larger than I_g's -- the 8 partial sums of a group largely cancel (unsigned
 * weights, signed activations) -- e.g. 90 against 0.48 for a 33x384 8-bit g128
 * row, 4.9e-6 of the result's magnitude off the definition where scalar is
 * 3.5e-7. Tiles are 2 rows x
 * 2 tokens or 4 rows x 1 token, so that all accumulators stay in the 16 ymm
 * registers; tiles that stream their rows in prefetch 256 bytes ahead, which took
 * 8-bit decode from about 1.05x to 1.4x f32 here (a Zen 5).
 * Two ways to the same lanes, picked per call from lm_cpu_features():
 *  - AVX-VNNI (Alder Lake, Zen 5): vpdpbusd multiplies unsigned weight bytes with
 *    signed activations and adds each 4 products into a lane, one instruction;
 *  - plain AVX2: 4-bit, vpmaddubsw (u8 x s8 pairs to s16, at most 2 * 15 * 127, no
 *    saturation) for the low and the high nibbles, added, then vpmaddwd with ones
 *    to the lanes; 8-bit weights times 127 overflow vpmaddubsw's s16 pairs, so both
 *    sides widen to s16 -- the even bytes of each 16-bit word by a mask (weights)
 *    or a shift pair (activations, sign-extended), the odd bytes by a shift -- and
 *    two vpmaddwd give the even and odd products of each lane.
 * The integer lanes are equal either way, so the two give bit-identical results. */
#define TARGET_VNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#define A8_TARGET_vnni TARGET_VNNI
#define A8_TARGET_plain TARGET
#define A8_STEP_BYTES 32 /* packed weight bytes per step */
#define A8_PREFETCH 256  /* bytes ahead in a row that a single-token tile prefetches (best of 128..1024) */
#define A8_Q4_BLOCK 64   /* 4-bit weights per step: the activation layout's block */

/* d[t] += the lanes of one step of one row (w: its 32 packed bytes) against
 * tokens t < T (x: token 0's activations from the step's column, the others
 * x_stride bytes apart). */
TARGET_VNNI INLINE void step_dots_vnni(__m256i d[], const uint8_t *w, const int8_t *x, size_t x_stride, const int T,
                                       const int bits) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)w);
    if (bits == 4) {
        const __m256i nib = _mm256_set1_epi8(0x0f);
        __m256i lo = _mm256_and_si256(wv, nib), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), nib);
        UNROLL
        for (int t = 0; t < T; t++) {
            const int8_t *xt = x + (size_t)t * x_stride;
            d[t] = _mm256_dpbusd_avx_epi32(d[t], lo, _mm256_loadu_si256((const __m256i *)xt));
            d[t] = _mm256_dpbusd_avx_epi32(d[t], hi, _mm256_loadu_si256((const __m256i *)(xt + 32)));
        }
    } else {
        UNROLL
        for (int t = 0; t < T; t++)
            d[t] = _mm256_dpbusd_avx_epi32(d[t], wv, _mm256_loadu_si256((const __m256i *)(x + (size_t)t * x_stride)));
    }
}

TARGET INLINE void step_dots_plain(__m256i d[], const uint8_t *w, const int8_t *x, size_t x_stride, const int T,
                                   const int bits) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)w);
    if (bits == 4) {
        const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
        __m256i lo = _mm256_and_si256(wv, nib), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), nib);
        UNROLL
        for (int t = 0; t < T; t++) {
            const int8_t *xt = x + (size_t)t * x_stride;
            __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xt)),
                                         _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xt + 32))));
            d[t] = _mm256_add_epi32(d[t], _mm256_madd_epi16(p, ones));
        }
    } else {
        __m256i we = _mm256_and_si256(wv, _mm256_set1_epi16(0x00ff)), wo = _mm256_srli_epi16(wv, 8);
        UNROLL
        for (int t = 0; t < T; t++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x + (size_t)t * x_stride));
            __m256i xe = _mm256_srai_epi16(_mm256_slli_epi16(xv, 8), 8), xo = _mm256_srai_epi16(xv, 8);
            d[t] = _mm256_add_epi32(d[t], _mm256_add_epi32(_mm256_madd_epi16(we, xe), _mm256_madd_epi16(wo, xo)));
        }
    }
}

/* The exact dot products I_g of 8 groups from their integer lanes: v[k] holds the
 * lanes of group k, lane k of the result their sum (int32 is exact: I_g fits). */
TARGET INLINE __m256i a8_group_dots(const __m256i v[LANES]) {
    /* hadd twice: groups 0-3 (ab) and 4-7 (ce), each half of a register summing its lanes 0-3 / 4-7 */
    const __m256i ab = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i ce = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(ab, ce, 0x20), _mm256_permute2x128_si256(ab, ce, 0x31));
}

/* The same for split steps (4-bit, groups of 32): v[p] holds groups 2p (lanes 0-3)
 * and 2p+1 (lanes 4-7); two hadd give groups 0, 2, 4, 6, 1, 3, 5, 7, put in order. */
TARGET INLINE __m256i a8_split_group_dots(const __m256i v[LANES / 2]) {
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* R rows x T tokens of an affine matrix (bits 4 or 8) with int8 activations; the
 * same body for both ways to the lanes. A macro: a function with the AVX-VNNI
 * target cannot be inlined into one without it, and the plain way must not be
 * compiled with that target, which lets the compiler emit VNNI instructions of its
 * own (GCC's vectorizer turns dot-product loops into vpdpwssd at -O3). */
#define A8_TILE(way)                                                                         \
    A8_TARGET_##way INLINE void a8_tile_##way(const lm_mat *W, int r, const lm_act8 *a, float *y, const int R,  \
                                              const int T, const int bits, const int prefetch) {                \
        const int cols = W->cols, gs = W->group_size, ng = cols / gs;                                            \
        const int split = bits == 4 && gs < A8_Q4_BLOCK; /* two groups per step */                               \
        const int unit = split ? 2 : 1;                  /* groups per pass of the loop below */                 \
        const int steps = split ? 1 : gs * bits / 8 / A8_STEP_BYTES;                                           \
        const int per_batch = split ? LANES / 2 : LANES; /* passes that make 8 groups */                             \
        const size_t row_bytes = (size_t)cols * (size_t)bits / 8;                                              \
        const uint8_t *rowp[TILE_R];                                                                           \
        __m256 acc[TILE_R][TILE_T];                                                                            \
        UNROLL                                                                                                 \
        for (int i = 0; i < R; i++) {                                                                          \
            rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * row_bytes;                                   \
            UNROLL                                                                                             \
            for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();                                       \
        }                                                                                                      \
        /* Scales and biases of GROUP_BLOCK groups as f32, zero past the last group                  \
         * (a batch of 8 groups reads past it; its missing groups' dots are zero too). */               \
        float sf[TILE_R][GROUP_BLOCK + LANES], bf[TILE_R][GROUP_BLOCK + LANES];                                   \
        uint8_t pad[TILE_R][A8_STEP_BYTES] = {{0}}; /* a half step's bytes, then zeros */                       \
        __m256i dv[TILE_R][TILE_T][LANES]; /* each pass's integer lanes until a batch of 8 groups */                 \
        int np = 0;                        /* passes in dv */                                                        \
        for (int g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {                                                         \
            const int gn = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;                                      \
            UNROLL                                                                                             \
            for (int i = 0; i < R; i++) {                                                                      \
                size_t first = (size_t)(r + i) * (size_t)ng + (size_t)g0;                                        \
                groups_to_f32(sf[i], W->scales, W->qdtype, first, gn);                                         \
                groups_to_f32(bf[i], W->biases, W->qdtype, first, gn);                                         \
                memset(sf[i] + gn, 0, sizeof(float) * LANES);                                                  \
                memset(bf[i] + gn, 0, sizeof(float) * LANES);                                                  \
            }                                                                                                  \
            for (int g = 0; g < gn; g += unit) {                                                               \
                const size_t c = (size_t)(g0 + g) * (size_t)gs; /* first column */                              \
                const uint8_t *wp[TILE_R];                                                                     \
                UNROLL                                                                                         \
                for (int i = 0; i < R; i++) wp[i] = rowp[i] + c * (size_t)bits / 8;                           \
                if (g + unit > gn) /* a split step with one group left (the row's end): 16 bytes */            \
                    for (int i = 0; i < R; i++) wp[i] = (const uint8_t *)memcpy(pad[i], wp[i], A8_STEP_BYTES / 2); \
                __m256i d[TILE_R][TILE_T];                                                                     \
                UNROLL                                                                                         \
                for (int i = 0; i < R; i++)                                                                    \
                    UNROLL                                                                                     \
                    for (int t = 0; t < T; t++) d[i][t] = _mm256_setzero_si256();                              \
                for (int s = 0; s < steps; s++) {                                                              \
                    const int8_t *xs = a->q + c + (size_t)s * (bits == 4 ? A8_Q4_BLOCK : A8_STEP_BYTES);         \
                    /* Tiles that stream the rows in (prefetch): one prefetch per 64-byte line of each  \
                     * row (one per step measured slower). */                                           \
                    const int line_start = prefetch && !((c * (size_t)bits / 8 + (size_t)s * A8_STEP_BYTES) & 32); \
                    UNROLL                                                                                     \
                    for (int i = 0; i < R; i++) {                                                              \
                        const uint8_t *ws = wp[i] + (size_t)s * A8_STEP_BYTES;                                 \
                        if (line_start) _mm_prefetch((const char *)ws + A8_PREFETCH, _MM_HINT_T0);              \
                        step_dots_##way(d[i], ws, xs, a->q_stride, T, bits);                                   \
                    }                                                                                          \
                }                                                                                              \
                /* The pass's integer lanes wait in dv until 8 groups are in (or the chunk ends); then               \
                 * they add up exactly to the groups' I_g, one group per lane, and only those go to f32.             \
                 * Converting the partial lanes instead rounds terms that can be hundreds of times                   \
                 * larger than I_g's (the lanes of a group cancel), far past f32 rounding of the sum. */             \
                UNROLL                                                                                               \
                for (int i = 0; i < R; i++)                                                                          \
                    UNROLL                                                                                           \
                    for (int t = 0; t < T; t++) dv[i][t][np] = d[i][t];                                              \
                if (++np < per_batch && g + unit < gn) continue;                                                     \
                const int gb = g + unit - np * unit; /* the batch's first group */                                   \
                for (; np < per_batch; np++)                                                                         \
                    for (int i = 0; i < R; i++)                                                                      \
                        for (int t = 0; t < T; t++) dv[i][t][np] = _mm256_setzero_si256();                           \
                np = 0;                                                                                              \
                UNROLL                                                                                               \
                for (int i = 0; i < R; i++) {                                                                        \
                    const __m256 sv = _mm256_loadu_ps(sf[i] + gb), bv = _mm256_loadu_ps(bf[i] + gb);                 \
                    UNROLL                                                                                           \
                    for (int t = 0; t < T; t++) {                                                                    \
                        const size_t o = (size_t)t * (size_t)a->ng_stride + (size_t)(g0 + gb);                       \
                        const __m256i dots = split ? a8_split_group_dots(dv[i][t]) : a8_group_dots(dv[i][t]);        \
                        const __m256 sd = _mm256_mul_ps(sv, _mm256_loadu_ps(a->dx + o));                             \
                        acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), sd, acc[i][t]);                        \
                        acc[i][t] = _mm256_fmadd_ps(bv, _mm256_loadu_ps(a->xsum + o), acc[i][t]);                    \
                    }                                                                                                \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        UNROLL                                                                                                 \
        for (int t = 0; t < T; t++)                                                                            \
            UNROLL                                                                                             \
            for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);          \
    }
A8_TILE(vnni)
A8_TILE(plain)

typedef void (*a8_tile_fn)(const lm_mat *W, int r, const lm_act8 *a, float *y);
/* Tile shapes that keep every accumulator in the 16 ymm registers: 2 rows x 2
 * tokens (4 integer + 4 float accumulators and the operands) for token pairs,
 * 4 rows x 1 token for a single token (decode), and one row for the last rows.
 * Tiles that meet their rows first prefetch them: a single token's, and the first
 * token pair's of a block of rows (the other pairs find the rows in L1; prefetching
 * there too measured ~10% slower at 64 tokens). */
#define A8_SHAPES(way, bits)                                                                               \
    A8_TARGET_##way static void a8_##way##bits##_22(const lm_mat *W, int r, const lm_act8 *a, float *y) {  \
        a8_tile_##way(W, r, a, y, 2, 2, bits, 0);                                                          \
    }                                                                                                      \
    A8_TARGET_##way static void a8_##way##bits##_22p(const lm_mat *W, int r, const lm_act8 *a, float *y) { \
        a8_tile_##way(W, r, a, y, 2, 2, bits, 1);                                                          \
    }                                                                                                      \
    A8_TARGET_##way static void a8_##way##bits##_41p(const lm_mat *W, int r, const lm_act8 *a, float *y) { \
        a8_tile_##way(W, r, a, y, 4, 1, bits, 1);                                                          \
    }                                                                                                      \
    A8_TARGET_##way static void a8_##way##bits##_12(const lm_mat *W, int r, const lm_act8 *a, float *y) {  \
        a8_tile_##way(W, r, a, y, 1, 2, bits, 0);                                                          \
    }                                                                                                      \
    A8_TARGET_##way static void a8_##way##bits##_11p(const lm_mat *W, int r, const lm_act8 *a, float *y) { \
        a8_tile_##way(W, r, a, y, 1, 1, bits, 1);                                                          \
    }                                                                                                      \
    static const a8_tile_fn a8_##way##bits[5] = {a8_##way##bits##_22, a8_##way##bits##_22p,               \
                                                 a8_##way##bits##_41p, a8_##way##bits##_12, a8_##way##bits##_11p};
A8_SHAPES(vnni, 4)
A8_SHAPES(vnni, 8)
A8_SHAPES(plain, 4)
A8_SHAPES(plain, 8)

static void rows_act8_avx2(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    if (lm_dtype_is_block(W->dtype)) { /* ggml blocks: qblock_avx2.c */
        lm_qblock_rows_avx2(W, r0, r1, a, n, y);
        return;
    }
    const int vnni = (lm_cpu_features() & LM_CPU_AVXVNNI) != 0;
    const a8_tile_fn *f = W->bits == 4 ? (vnni ? a8_vnni4 : a8_plain4) : (vnni ? a8_vnni8 : a8_plain8);
    const a8_tile_fn t22 = f[0], t22p = f[1], t41p = f[2], t12 = f[3], t11p = f[4];
    const size_t rows = (size_t)W->rows;
    for (int t0 = 0; t0 < n; t0 += LM_KERNEL_TOKEN_BLOCK) {
        int tn = n - t0 < LM_KERNEL_TOKEN_BLOCK ? n - t0 : LM_KERNEL_TOKEN_BLOCK;
        for (int r = r0; r < r1;) {
            int full = r + 4 <= r1; /* 4 rows, else one */
            int t = t0;
            for (; t + 2 <= t0 + tn; t += 2) {
                lm_act8 at = lm_act8_token(a, t);
                float *yt = y + (size_t)t * rows + (size_t)r;
                if (full) {
                    (t == t0 ? t22p : t22)(W, r, &at, yt);
                    (t == t0 ? t22p : t22)(W, r + 2, &at, yt + 2);
                } else {
                    t12(W, r, &at, yt);
                }
            }
            if (t < t0 + tn) {
                lm_act8 at = lm_act8_token(a, t);
                (full ? t41p : t11p)(W, r, &at, y + (size_t)t * rows + (size_t)r);
            }
            r += full ? 4 : 1;
        }
    }
}

static int handles_act8_avx2(const lm_mat *W) {
    if (W->dtype == LM_DT_MXFP4) return 0; /* mxfp4_avx2.c: the scalar reference's bits, both layouts */
    if (lm_dtype_is_block(W->dtype)) return lm_qblock_handles_avx2(W);
    if (W->dtype != LM_DT_U32 || (W->qdtype != LM_DT_F32 && W->qdtype != LM_DT_F16 && W->qdtype != LM_DT_BF16))
        return 0;
    int gs = W->group_size;
    if (W->bits == 4) return gs == 32 || (gs > 0 && gs % A8_Q4_BLOCK == 0);
    if (W->bits == 8) return gs > 0 && gs % A8_STEP_BYTES == 0;
    return 0;
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

/* Attention's tile functions on an f16 cache read in place (the table has no f32 tile
 * functions: those are the loops of dot_avx2 and axpy_avx2 on a widened copy). Each
 * result is what those loops give on the rows widened, the same operations in the same
 * order: vectors widened by vcvtph2ps, the scalar tails by lm_f16_to_f32 (both exact). */
TARGET INLINE __m256 h8(const uint16_t *x) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)x)); }

/* dot_avx2 of two rows (independent chains) with q. */
TARGET INLINE void dot2_rows_f16(float *o, const float *q, const uint16_t *x0, const uint16_t *x1, int n) {
    __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0;
    int i = 0;
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        __m256 qa = _mm256_loadu_ps(q + i), qb = _mm256_loadu_ps(q + i + LANES);
        a0 = _mm256_fmadd_ps(h8(x0 + i), qa, a0);
        b0 = _mm256_fmadd_ps(h8(x0 + i + LANES), qb, b0);
        a1 = _mm256_fmadd_ps(h8(x1 + i), qa, a1);
        b1 = _mm256_fmadd_ps(h8(x1 + i + LANES), qb, b1);
    }
    float s0 = hsum(_mm256_add_ps(a0, b0)), s1 = hsum(_mm256_add_ps(a1, b1));
    for (; i < n; i++) s0 += lm_f16_to_f32(x0[i]) * q[i], s1 += lm_f16_to_f32(x1[i]) * q[i];
    o[0] = s0, o[1] = s1;
}

TARGET static void dot_rows_f16_avx2(float *out, const float *q, const uint16_t *x, size_t stride, int cnt, int n) {
    int r = 0;
    for (; r + 2 <= cnt; r += 2) dot2_rows_f16(out + r, q, x + (size_t)r * stride, x + (size_t)(r + 1) * stride, n);
    if (r < cnt) { /* the last row alone: the same chain */
        float two[2];
        dot2_rows_f16(two, q, x + (size_t)r * stride, x + (size_t)r * stride, n);
        out[r] = two[0];
    }
}

/* Each row's widened vectors used for both queries. */
TARGET static void dot_rows2_f16_avx2(float *o0, float *o1, const float *q0, const float *q1, const uint16_t *x,
                                      size_t stride, int cnt, int n) {
    for (int r = 0; r < cnt; r++) {
        const uint16_t *xr = x + (size_t)r * stride;
        __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0;
        int i = 0;
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            __m256 xa = h8(xr + i), xb = h8(xr + i + LANES);
            a0 = _mm256_fmadd_ps(xa, _mm256_loadu_ps(q0 + i), a0);
            b0 = _mm256_fmadd_ps(xb, _mm256_loadu_ps(q0 + i + LANES), b0);
            a1 = _mm256_fmadd_ps(xa, _mm256_loadu_ps(q1 + i), a1);
            b1 = _mm256_fmadd_ps(xb, _mm256_loadu_ps(q1 + i + LANES), b1);
        }
        float s0 = hsum(_mm256_add_ps(a0, b0)), s1 = hsum(_mm256_add_ps(a1, b1));
        for (; i < n; i++) {
            float v = lm_f16_to_f32(xr[i]);
            s0 += v * q0[i], s1 += v * q1[i];
        }
        o0[r] = s0, o1[r] = s1;
    }
}

/* axpy_avx2 over the rows in order with W vectors of y (and of y1 when two) held in
 * registers; the columns past the whole vectors one at a time, as axpy_avx2's tail. */
TARGET INLINE void axpy_block_f16(float *y0, float *y1, const float *e0, const float *e1, const uint16_t *x,
                                  size_t stride, int cnt, int i, const int W, const int two) {
    __m256 a0[8], a1[8];
    _Pragma("GCC unroll 8")
    for (int c = 0; c < W; c++) {
        a0[c] = _mm256_loadu_ps(y0 + i + c * LANES);
        if (two) a1[c] = _mm256_loadu_ps(y1 + i + c * LANES);
    }
    for (int r = 0; r < cnt; r++) {
        const uint16_t *xr = x + (size_t)r * stride + i;
        __m256 v0 = _mm256_set1_ps(e0[r]), v1 = two ? _mm256_set1_ps(e1[r]) : v0;
        _Pragma("GCC unroll 8")
        for (int c = 0; c < W; c++) {
            __m256 xc = h8(xr + c * LANES);
            a0[c] = _mm256_fmadd_ps(v0, xc, a0[c]);
            if (two) a1[c] = _mm256_fmadd_ps(v1, xc, a1[c]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int c = 0; c < W; c++) {
        _mm256_storeu_ps(y0 + i + c * LANES, a0[c]);
        if (two) _mm256_storeu_ps(y1 + i + c * LANES, a1[c]);
    }
}

TARGET INLINE void axpy_tail_f16(float *y0, float *y1, const float *e0, const float *e1, const uint16_t *x,
                                 size_t stride, int cnt, int i, int n, const int two) {
    for (int r = 0; r < cnt; r++)
        for (int k = i; k < n; k++) {
            float v = lm_f16_to_f32(x[(size_t)r * stride + (size_t)k]);
            y0[k] += e0[r] * v;
            if (two) y1[k] += e1[r] * v;
        }
}

TARGET static void axpy_rows_f16_avx2(float *y, const float *e, const uint16_t *x, size_t stride, int cnt, int n) {
    int i = 0;
    for (; i + 8 * LANES <= n; i += 8 * LANES) axpy_block_f16(y, NULL, e, NULL, x, stride, cnt, i, 8, 0);
    for (; i + LANES <= n; i += LANES) axpy_block_f16(y, NULL, e, NULL, x, stride, cnt, i, 1, 0);
    axpy_tail_f16(y, NULL, e, NULL, x, stride, cnt, i, n, 0);
}

TARGET static void axpy_rows2_f16_avx2(float *y0, float *y1, const float *e0, const float *e1, const uint16_t *x,
                                       size_t stride, int cnt, int n) {
    int i = 0;
    for (; i + 4 * LANES <= n; i += 4 * LANES) axpy_block_f16(y0, y1, e0, e1, x, stride, cnt, i, 4, 1);
    for (; i + LANES <= n; i += LANES) axpy_block_f16(y0, y1, e0, e1, x, stride, cnt, i, 1, 1);
    axpy_tail_f16(y0, y1, e0, e1, x, stride, cnt, i, n, 1);
}

/* The scaled scores as the scalar loop (the same multiplication), their maximum in 8
 * lanes started at m (max_ps(s, acc) is s > acc ? s : acc, so NaNs stay out), the
 * lanes' maximum, then the tail as the loop. */
TARGET static float attn_scale_max_avx2(float *s, int cnt, float scale, float m) {
    __m256 vs = _mm256_set1_ps(scale), acc = _mm256_set1_ps(m);
    int r = 0;
    for (; r + LANES <= cnt; r += LANES) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + r), vs);
        _mm256_storeu_ps(s + r, v);
        acc = _mm256_max_ps(v, acc);
    }
    __m128 b = _mm_max_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    b = _mm_max_ps(_mm_movehl_ps(b, b), b);
    b = _mm_max_ss(_mm_movehdup_ps(b), b);
    float mx = _mm_cvtss_f32(b);
    for (; r < cnt; r++) {
        s[r] *= scale;
        mx = s[r] > mx ? s[r] : mx;
    }
    return mx;
}

static int handles_avx2(const lm_mat *W) {
    if (W->dtype == LM_DT_U32)
        return (W->bits == 4 || W->bits == 8) && W->group_size % LANES == 0 &&
               (W->qdtype == LM_DT_F32 || W->qdtype == LM_DT_F16 || W->qdtype == LM_DT_BF16);
    return W->dtype == LM_DT_F32 || W->dtype == LM_DT_F16 || W->dtype == LM_DT_BF16;
}

/* lm_act8_quantize with two 8-lane vectors standing for the reference's 16 running
 * lanes per group, combined in its 16 -> 8 -> 4 -> 2 -> 1 tree (the AVX-512 one's,
 * matmul_avx512.c), so max and sum come out bit for bit; clamping and rounding (by
 * 1.5 * 2^23) are the same operations. Group sizes that are not a multiple of 16
 * go to the reference, and so does the reordering for q4_block. */
TARGET INLINE float hmax_tree(__m256 lo, __m256 hi) { /* lane k = max(lane k + w, lane k), as the reference's tree */
    __m256 a = _mm256_max_ps(hi, lo);
    __m128 b = _mm_max_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    b = _mm_max_ps(_mm_movehl_ps(b, b), b);
    b = _mm_max_ss(_mm_movehdup_ps(b), b);
    return _mm_cvtss_f32(b);
}

TARGET INLINE __m256i quantize8(__m256 v) {
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f), zero = _mm256_setzero_ps();
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256 keep = _mm256_cmp_ps(v, lo, _CMP_GE_OQ), neg = _mm256_cmp_ps(v, zero, _CMP_LT_OQ);
    v = _mm256_blendv_ps(_mm256_blendv_ps(zero, lo, neg), v, keep); /* NaN -> 0 */
    v = _mm256_min_ps(v, hi);
    return _mm256_cvttps_epi32(_mm256_sub_ps(_mm256_add_ps(v, magic), magic));
}

TARGET static void act8_quantize_avx2(const float *x, int n, int cols, int gs, int q4_block, int8_t *q,
                                      size_t q_stride, float *dx, float *xsum, int ng_stride) {
    if (gs % 16) {
        lm_act8_quantize(x, n, cols, gs, q4_block, q, q_stride, dx, xsum, ng_stride);
        return;
    }
    const int ng = cols / gs;
    const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * (size_t)cols;
        int8_t *qt = q + (size_t)t * q_stride;
        float *dt = dx + (size_t)t * (size_t)ng_stride, *st = xsum + (size_t)t * (size_t)ng_stride;
        for (int g = 0; g < ng; g++) {
            const float *xg = xt + (size_t)g * (size_t)gs;
            __m256 m0 = zero, m1 = zero, s0 = zero, s1 = zero; /* lanes 0..7 and 8..15 */
            for (int i = 0; i < gs; i += 16) {
                const __m256 v0 = _mm256_loadu_ps(xg + i), v1 = _mm256_loadu_ps(xg + i + 8);
                m0 = _mm256_max_ps(_mm256_andnot_ps(sign, v0), m0); /* a > m ? a : m */
                m1 = _mm256_max_ps(_mm256_andnot_ps(sign, v1), m1);
                s0 = _mm256_add_ps(s0, v0);
                s1 = _mm256_add_ps(s1, v1);
            }
            float amax = hmax_tree(m0, m1), total = hsum(_mm256_add_ps(s0, s1));
            float inv = amax > 0 && amax <= 3.4e38f ? 127.0f / amax : 0.0f;
            dt[g] = amax / 127.0f;
            st[g] = total;
            const __m256 vinv = _mm256_set1_ps(inv);
            for (int i = 0; i < gs; i += 16) {
                const __m256i a = quantize8(_mm256_mul_ps(_mm256_loadu_ps(xg + i), vinv));
                const __m256i b = quantize8(_mm256_mul_ps(_mm256_loadu_ps(xg + i + 8), vinv));
                /* 16 int32 in -127..127 -> 16 bytes in order (the packs work per 128-bit lane) */
                const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
                _mm_storeu_si128((__m128i *)(void *)(qt + (size_t)g * (size_t)gs + i),
                                 _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
            }
        }
        memset(qt + cols, 0, q_stride - (size_t)cols);
        for (int g = ng; g < ng_stride; g++) dt[g] = st[g] = 0;
        if (q4_block) lm_act8_interleave(qt, cols, q4_block, 0);
    }
}

static int available_avx2(void) {
    const unsigned need = LM_CPU_AVX2 | LM_CPU_FMA | LM_CPU_F16C;
    return (lm_cpu_features() & need) == need;
}

/* lm_attn_exp of 8 lanes: the same operations, lane by lane. */
TARGET INLINE __m256 attn_exp8(__m256 x) {
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(LM_ATTN_EXP_LO), _CMP_LT_OQ);
    __m256 xc = _mm256_min_ps(x, _mm256_set1_ps(LM_ATTN_EXP_HI));
    __m256 shift = _mm256_set1_ps(LM_ATTN_EXP_SHIFT);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(LM_ATTN_EXP_LOG2E), shift), shift);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LM_ATTN_EXP_LN2_HI), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LM_ATTN_EXP_LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(LM_ATTN_EXP_P0), r, _mm256_set1_ps(LM_ATTN_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LM_ATTN_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LM_ATTN_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LM_ATTN_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(LM_ATTN_EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 v = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    v = _mm256_andnot_ps(small, v);
    return _mm256_blendv_ps(v, x, nan);
}

/* The sum: one vector accumulator over the chunks in order (lanes past cnt add 0),
 * then hsum. */
TARGET static float attn_exp_avx2(float *e, int cnt, float m) {
    __m256 vm = _mm256_set1_ps(m), sum = _mm256_setzero_ps();
    int r = 0;
    for (; r + LANES <= cnt; r += LANES) {
        __m256 v = attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(e + r), vm));
        _mm256_storeu_ps(e + r, v);
        sum = _mm256_add_ps(sum, v);
    }
    if (r < cnt) { /* the tail through a buffer: the lanes past cnt compute and are dropped */
        float t[LANES] = {0};
        memcpy(t, e + r, sizeof(float) * (size_t)(cnt - r));
        _mm256_storeu_ps(t, attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(t), vm)));
        memset(t + (cnt - r), 0, sizeof(float) * (size_t)(LANES - (cnt - r)));
        sum = _mm256_add_ps(sum, _mm256_loadu_ps(t));
        memcpy(e + r, t, sizeof(float) * (size_t)(cnt - r));
    }
    return hsum(sum);
}

const lm_cpu_kernels lm_cpu_kernels_avx2 = {"avx2",
                                            "AVX2 with FMA and F16C",
                                            available_avx2,
                                            handles_avx2,
                                            rows_avx2,
                                            f16_to_f32_avx2,
                                            dot_avx2,
                                            axpy_avx2,
                                            handles_act8_avx2,
                                            rows_act8_avx2,
                                            A8_Q4_BLOCK,
                                            act8_quantize_avx2,
                                            .attn_exp = attn_exp_avx2,
                                            .dot_rows_f16 = dot_rows_f16_avx2,
                                            .axpy_rows_f16 = axpy_rows_f16_avx2,
                                            .dot_rows2_f16 = dot_rows2_f16_avx2,
                                            .axpy_rows2_f16 = axpy_rows2_f16_avx2,
                                            .attn_scale_max = attn_scale_max_avx2};

#else /* not x86-64 */

static int unavailable(void) { return 0; }
const lm_cpu_kernels lm_cpu_kernels_avx2 = {"avx2", "an x86-64 CPU with AVX2", unavailable, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};

#endif

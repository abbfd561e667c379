/* ARM NEON matrix kernels (AArch64: Apple Silicon, Graviton, Ampere, ...).
 *
 * NEON is part of every AArch64 CPU, so the f32 kernels need no feature check or
 * target attribute. Columns go 16 at a time as four 4-lane quarters; each (row, token)
 * pair keeps two accumulators (quarters 0 and 2 into the first, 1 and 3 into
 * the second) so consecutive FMAs do not wait on each other, summed in a fixed
 * order at the end (see cpu_kernels.h: the chain does not depend on the tile).
 * 4-bit affine: 8 bytes hold 16 weights; mask and shift give the even and odd
 * nibbles, vzip restores the order, then widen, convert and fma(scale, q, bias).
 * With f32 activations results match the scalar reference to f32 rounding.
 * Int8 activations (lm_act8) give exact integer dot products per group, with the
 * dot-product extension's SDOT where the CPU has it (a per-function target, checked
 * at run time), else with widening multiplies; both reach the same int32 lanes, so
 * they agree bit for bit (details further down).
 * Built and tested on x86 hosts with aarch64-linux-gnu-gcc under qemu-aarch64, on an
 * emulated CPU with the extension and on one without (tests/cli/neon.sh).
 */
#include "kernels/cpu/cpu_kernels.h"

#if defined(__aarch64__)

#include <arm_neon.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 4")
#define CHUNK 16 /* columns per step: four float32x4 quarters */
#define TILE_R 4
#define TILE_T 2 /* 4 x 2 x 2 accumulators = 16 of the 32 vector registers */

typedef struct {
    float32x4_t a0, a1;
} acc2;

INLINE void acc_chunk(acc2 *a, const float32x4_t w[4], const float *x) {
    a->a0 = vfmaq_f32(a->a0, w[0], vld1q_f32(x));
    a->a1 = vfmaq_f32(a->a1, w[1], vld1q_f32(x + 4));
    a->a0 = vfmaq_f32(a->a0, w[2], vld1q_f32(x + 8));
    a->a1 = vfmaq_f32(a->a1, w[3], vld1q_f32(x + 12));
}

INLINE float acc_sum(acc2 a) { return vaddvq_f32(vaddq_f32(a.a0, a.a1)); }

/* 16 weights of a float row from element k. */
INLINE void load_float_chunk(const void *row, lm_dtype dt, int k, float32x4_t w[4]) {
    if (dt == LM_DT_F32) {
        const float *p = (const float *)row + k;
        for (int i = 0; i < 4; i++) w[i] = vld1q_f32(p + 4 * i);
    } else if (dt == LM_DT_BF16) {
        const uint16_t *p = (const uint16_t *)row + k;
        for (int i = 0; i < 2; i++) {
            uint16x8_t h = vld1q_u16(p + 8 * i);
            w[2 * i] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
            w[2 * i + 1] = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(h), 16));
        }
    } else {
        const float16_t *p = (const float16_t *)((const uint16_t *)row + k);
        for (int i = 0; i < 4; i++) w[i] = vcvt_f32_f16(vld1_f16(p + 4 * i));
    }
}

INLINE void float_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols;
    const size_t esz = lm_dtype_size(W->dtype);
    const char *rowp[TILE_R];
    acc2 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const char *)W->data + (size_t)(r + i) * (size_t)cols * esz;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t].a0 = acc[i][t].a1 = vdupq_n_f32(0);
    }
    int k = 0;
    for (; k + CHUNK <= cols; k += CHUNK) {
        UNROLL
        for (int i = 0; i < R; i++) {
            float32x4_t w[4];
            load_float_chunk(rowp[i], W->dtype, k, w);
            UNROLL
            for (int t = 0; t < T; t++) acc_chunk(&acc[i][t], w, x + (size_t)t * (size_t)cols + k);
        }
    }
    if (k < cols) { /* tail: zero-padded copies, so the chains simply add 0 * 0 */
        int rest = cols - k;
        float wtmp[CHUNK] = {0}, xtmp[CHUNK] = {0}; /* holds CHUNK elements of any float type */
        for (int i = 0; i < R; i++) {
            memcpy(wtmp, rowp[i] + (size_t)k * esz, (size_t)rest * esz);
            float32x4_t w[4];
            load_float_chunk(wtmp, W->dtype, 0, w);
            for (int t = 0; t < T; t++) {
                memcpy(xtmp, x + (size_t)t * (size_t)cols + k, (size_t)rest * 4);
                acc_chunk(&acc[i][t], w, xtmp);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = acc_sum(acc[i][t]);
}

/* count scales or biases from element `first` as f32 into dst. */
static void groups_to_f32(float *dst, const void *src, lm_dtype dt, size_t first, int count) {
    for (int k = 0; k < count; k++) dst[k] = lm_load_float(src, dt, first + (size_t)k);
}

#define GROUP_BLOCK 256

/* Affine 4- and 8-bit, group size a multiple of 16. */
INLINE void affine_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T, const int bits) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const size_t row_bytes = (size_t)cols * (size_t)bits / 8;
    const uint8_t *rowp[TILE_R];
    acc2 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * row_bytes;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t].a0 = acc[i][t].a1 = vdupq_n_f32(0);
    }
    float sf[TILE_R][GROUP_BLOCK], bf[TILE_R][GROUP_BLOCK];
    for (int g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {
        const int gn = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;
        for (int i = 0; i < R; i++) {
            size_t first = (size_t)(r + i) * (size_t)ng + (size_t)g0;
            groups_to_f32(sf[i], W->scales, W->qdtype, first, gn);
            groups_to_f32(bf[i], W->biases, W->qdtype, first, gn);
        }
        for (int g = 0; g < gn; g++) {
            const int k0 = (g0 + g) * gs;
            for (int c = 0; c < gs; c += CHUNK) {
                UNROLL
                for (int i = 0; i < R; i++) {
                    uint16x8_t q16[2];
                    if (bits == 4) {
                        uint8x8_t b = vld1_u8(rowp[i] + (size_t)(k0 + c) / 2);
                        uint8x8x2_t z = vzip_u8(vand_u8(b, vdup_n_u8(15)), vshr_n_u8(b, 4));
                        q16[0] = vmovl_u8(z.val[0]);
                        q16[1] = vmovl_u8(z.val[1]);
                    } else {
                        uint8x16_t b = vld1q_u8(rowp[i] + k0 + c);
                        q16[0] = vmovl_u8(vget_low_u8(b));
                        q16[1] = vmovl_u8(vget_high_u8(b));
                    }
                    float32x4_t vs = vdupq_n_f32(sf[i][g]), vb = vdupq_n_f32(bf[i][g]), w[4];
                    for (int h = 0; h < 2; h++) {
                        w[2 * h] = vfmaq_f32(vb, vcvtq_f32_u32(vmovl_u16(vget_low_u16(q16[h]))), vs);
                        w[2 * h + 1] = vfmaq_f32(vb, vcvtq_f32_u32(vmovl_u16(vget_high_u16(q16[h]))), vs);
                    }
                    UNROLL
                    for (int t = 0; t < T; t++) acc_chunk(&acc[i][t], w, x + (size_t)t * (size_t)cols + k0 + c);
                }
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = acc_sum(acc[i][t]);
}

INLINE void q4_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    affine_tile(W, r, x, y, R, T, 4);
}
INLINE void q8_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    affine_tile(W, r, x, y, R, T, 8);
}


#define TILE_SHAPES(kind)                                                                                  \
    static void kind##_RT(const lm_mat *W, int r, const float *x, float *y) {                              \
        kind##_tile(W, r, x, y, TILE_R, TILE_T);                                                           \
    }                                                                                                      \
    static void kind##_R1(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, TILE_R, 1); } \
    static void kind##_1T(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, 1, TILE_T); } \
    static void kind##_11(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, 1, 1); } \
    static const lm_f32_tile kind##_shapes[2][2] = {{kind##_11, kind##_1T}, {kind##_R1, kind##_RT}};
TILE_SHAPES(float)
TILE_SHAPES(q4)
TILE_SHAPES(q8)

static void rows_neon(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    const lm_f32_tile(*shapes)[2] = W->dtype != LM_DT_U32 ? float_shapes : W->bits == 4 ? q4_shapes : q8_shapes;
    lm_tile_rows(W, r0, r1, x, n, y, TILE_R, TILE_T, shapes);
}

/* ---- int8 activations (cpu_kernels.h: lm_act8) -------------------------------------
 *
 * A step takes 16 bytes of packed weights: 32 4-bit weights or 16 8-bit ones. Its
 * int32 lane k sums the products of the step's bytes 4k..4k+3 with their
 * activations (4-bit: a mask gives the low nibbles, the even-indexed weights, and a
 * shift the high ones, which meet the activations the backend stored as even-then-
 * odd halves of each 32-block (act8_q4_block), so lane k holds weights 8k..8k+7;
 * 8-bit: weights 4k..4k+3). SDOT is signed x signed and 8-bit weights (0..255) do
 * not fit a signed byte, so they enter as w - 128 (flip the top bit) and each lane
 * starts from 128 * the sum of its activations, which restores sum w * x exactly.
 * The lanes add up exactly over a group's steps; the lanes of 4 groups are then
 * added across in int32 (addp) into the 4 groups' exact I_g, one per lane, and only
 * then converted: cvt(I_g) * (scale_g * dx_g) and bias_g * xsum_g join the f32 lane
 * accumulators 4 groups at a time, so every table rounds the same terms
 * (cpu_kernels.h). Converting each lane's partial sum instead rounds terms that can
 * be far larger than I_g's, as a group's partial sums largely cancel.
 * Two ways to the same lanes, picked per call from lm_cpu_features():
 *  - SDOT (the dot-product extension: Cortex-A55/A76 and later, Apple M1, Graviton 2):
 *    each 4 products into a lane, one instruction;
 *  - base NEON: smull / smlal to 16-bit products (4-bit: low and high nibble
 *    products of a byte summed, at most 2 * 15 * 127; 8-bit: one product, at most
 *    128 * 127), addp of neighbours (at most 32512) and sadalp into the lanes.
 * The integer lanes are equal either way, so the two give bit-identical results. */
#if defined(__ARM_FEATURE_DOTPROD)
#define HAVE_SDOT 1 /* the whole build targets it */
#define TARGET_SDOT
#elif defined(__GNUC__) && !defined(__clang__)
/* GCC's arm_neon.h declares vdotq_s32 for armv8.2-a+dotprod: a caller needs that
 * whole architecture to inline it. Every CPU with the extension implements 8.2. */
#define HAVE_SDOT 1
#define TARGET_SDOT __attribute__((target("arch=armv8.2-a+dotprod")))
#else
/* Older clang declares the intrinsics only for builds that target dotprod. */
#define HAVE_SDOT 0
#endif
#define A8_TARGET_sdot TARGET_SDOT
#define A8_TARGET_plain /* base NEON */
#define A8_STEP_BYTES 16 /* packed weight bytes per step */
#define A8_Q4_BLOCK 32   /* 4-bit weights per step: the activation layout's block */

/* d[t] += the lanes of one step of one row (w: its 16 packed bytes) against
 * tokens t < T (x: token 0's activations from the step's column, the others
 * x_stride bytes apart). */
#if HAVE_SDOT
TARGET_SDOT INLINE void step_dots_sdot(int32x4_t d[], const uint8_t *w, const int8_t *x, size_t x_stride, const int T,
                                       const int bits) {
    uint8x16_t wv = vld1q_u8(w);
    if (bits == 4) {
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(wv, vdupq_n_u8(15))), hi = vreinterpretq_s8_u8(vshrq_n_u8(wv, 4));
        UNROLL
        for (int t = 0; t < T; t++) {
            const int8_t *xt = x + (size_t)t * x_stride;
            d[t] = vdotq_s32(d[t], lo, vld1q_s8(xt));
            d[t] = vdotq_s32(d[t], hi, vld1q_s8(xt + 16));
        }
    } else {
        int8x16_t ws = vreinterpretq_s8_u8(veorq_u8(wv, vdupq_n_u8(0x80))); /* w - 128 */
        UNROLL
        for (int t = 0; t < T; t++) d[t] = vdotq_s32(d[t], ws, vld1q_s8(x + (size_t)t * x_stride));
    }
}
#endif

INLINE void step_dots_plain(int32x4_t d[], const uint8_t *w, const int8_t *x, size_t x_stride, const int T,
                            const int bits) {
    uint8x16_t wv = vld1q_u8(w);
    if (bits == 4) {
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(wv, vdupq_n_u8(15))), hi = vreinterpretq_s8_u8(vshrq_n_u8(wv, 4));
        UNROLL
        for (int t = 0; t < T; t++) {
            const int8_t *xt = x + (size_t)t * x_stride;
            int8x16_t xe = vld1q_s8(xt), xo = vld1q_s8(xt + 16);
            int16x8_t m0 = vmlal_s8(vmull_s8(vget_low_s8(lo), vget_low_s8(xe)), vget_low_s8(hi), vget_low_s8(xo));
            int16x8_t m1 = vmlal_high_s8(vmull_high_s8(lo, xe), hi, xo);
            d[t] = vpadalq_s16(d[t], vpaddq_s16(m0, m1));
        }
    } else {
        int8x16_t ws = vreinterpretq_s8_u8(veorq_u8(wv, vdupq_n_u8(0x80))); /* w - 128 */
        UNROLL
        for (int t = 0; t < T; t++) {
            int8x16_t xv = vld1q_s8(x + (size_t)t * x_stride);
            int16x8_t m0 = vmull_s8(vget_low_s8(ws), vget_low_s8(xv)), m1 = vmull_high_s8(ws, xv);
            d[t] = vpadalq_s16(d[t], vpaddq_s16(m0, m1));
        }
    }
}

/* R rows x T tokens of an affine matrix (bits 4 or 8) with int8 activations; the
 * same body for both ways to the lanes. A macro: a function with the dotprod
 * target cannot be inlined into one without it, and the plain way must not be
 * compiled with that target, which lets the compiler emit SDOT of its own (GCC's
 * vectorizer uses it for dot-product loops at -O3). */
#define A8_TILE(way)                                                                        \
    A8_TARGET_##way INLINE void a8_tile_##way(const lm_mat *W, int r, const lm_act8 *a, float *y, const int R,  \
                                              const int T, const int bits) {                                    \
        const int cols = W->cols, gs = W->group_size, ng = cols / gs;                                            \
        const int block = bits == 4 ? A8_Q4_BLOCK : A8_STEP_BYTES; /* weights per step */                        \
        const int steps = gs / block;                                                                          \
        const size_t row_bytes = (size_t)cols * (size_t)bits / 8;                                              \
        const uint8_t *rowp[TILE_R];                                                                           \
        float32x4_t acc[TILE_R][TILE_T];                                                                       \
        UNROLL                                                                                                 \
        for (int i = 0; i < R; i++) {                                                                          \
            rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * row_bytes;                                   \
            UNROLL                                                                                             \
            for (int t = 0; t < T; t++) acc[i][t] = vdupq_n_f32(0);                                            \
        }                                                                                                      \
        /* Scales and biases of GROUP_BLOCK groups as f32, zero past the last group                                  \
         * (a batch of 4 groups reads past it; its missing groups' dots are zero too). */                            \
        float sf[TILE_R][GROUP_BLOCK + 4], bf[TILE_R][GROUP_BLOCK + 4];                                              \
        int32x4_t dv[TILE_R][TILE_T][4]; /* each group's integer lanes until a batch of 4 */                         \
        int np = 0;                      /* groups in dv */                                                          \
        for (int g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {                                                         \
            const int gn = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;                                      \
            for (int i = 0; i < R; i++) {                                                                      \
                size_t first = (size_t)(r + i) * (size_t)ng + (size_t)g0;                                        \
                groups_to_f32(sf[i], W->scales, W->qdtype, first, gn);                                         \
                groups_to_f32(bf[i], W->biases, W->qdtype, first, gn);                                         \
                memset(sf[i] + gn, 0, sizeof(float) * 4);                                                            \
                memset(bf[i] + gn, 0, sizeof(float) * 4);                                                      \
            }                                                                                                  \
            for (int g = 0; g < gn; g++) {                                                                     \
                const size_t c = (size_t)(g0 + g) * (size_t)gs; /* first column */                              \
                int32x4_t d[TILE_R][TILE_T];                                                                   \
                UNROLL                                                                                         \
                for (int t = 0; t < T; t++) {                                                                  \
                    int32x4_t start = vdupq_n_s32(0);                                                          \
                    if (bits == 8) { /* 128 * each lane's activations: the w - 128 correction */               \
                        const int8_t *xt = a->q + (size_t)t * a->q_stride + c;                                 \
                        for (int s = 0; s < steps; s++)                                                        \
                            start = vpadalq_s16(start, vpaddlq_s8(vld1q_s8(xt + (size_t)s * A8_STEP_BYTES)));  \
                        start = vshlq_n_s32(start, 7);                                                         \
                    }                                                                                          \
                    UNROLL                                                                                     \
                    for (int i = 0; i < R; i++) d[i][t] = start;                                               \
                }                                                                                              \
                for (int s = 0; s < steps; s++) {                                                              \
                    const size_t wo = c * (size_t)bits / 8 + (size_t)s * A8_STEP_BYTES;                        \
                    const int8_t *xs = a->q + c + (size_t)s * (size_t)block;                                   \
                    UNROLL                                                                                     \
                    for (int i = 0; i < R; i++) step_dots_##way(d[i], rowp[i] + wo, xs, a->q_stride, T, bits);       \
                }                                                                                              \
                /* The group's integer lanes wait in dv until 4 groups are in (or the chunk ends);                   \
                 * then two addp give their exact I_g, one group per lane, for the f32 terms. */                     \
                UNROLL                                                                                               \
                for (int i = 0; i < R; i++)                                                                          \
                    UNROLL                                                                                           \
                    for (int t = 0; t < T; t++) dv[i][t][np] = d[i][t];                                              \
                if (++np < 4 && g + 1 < gn) continue;                                                                \
                const int gb = g + 1 - np; /* the batch's first group */                                             \
                for (; np < 4; np++)                                                                                 \
                    for (int i = 0; i < R; i++)                                                                      \
                        for (int t = 0; t < T; t++) dv[i][t][np] = vdupq_n_s32(0);                                   \
                np = 0;                                                                                              \
                UNROLL                                                                                               \
                for (int i = 0; i < R; i++) {                                                                        \
                    const float32x4_t sv = vld1q_f32(sf[i] + gb), bv = vld1q_f32(bf[i] + gb);                        \
                    UNROLL                                                                                           \
                    for (int t = 0; t < T; t++) {                                                                    \
                        const size_t o = (size_t)t * (size_t)a->ng_stride + (size_t)(g0 + gb);                       \
                        const int32x4_t *v = dv[i][t];                                                               \
                        const int32x4_t dots = vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]));           \
                        acc[i][t] = vfmaq_f32(acc[i][t], vcvtq_f32_s32(dots), vmulq_f32(sv, vld1q_f32(a->dx + o)));  \
                        acc[i][t] = vfmaq_f32(acc[i][t], bv, vld1q_f32(a->xsum + o));                                \
                    }                                                                                                \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        UNROLL                                                                                                 \
        for (int t = 0; t < T; t++)                                                                            \
            UNROLL                                                                                             \
            for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = vaddvq_f32(acc[i][t]);    \
    }
A8_TILE(plain)

typedef void (*a8_tile_fn)(const lm_mat *W, int r, const lm_act8 *a, float *y);
#define A8_SHAPES(way, bits)                                                                       \
    A8_TARGET_##way static void a8_##way##bits##_RT(const lm_mat *W, int r, const lm_act8 *a, float *y) {          \
        a8_tile_##way(W, r, a, y, TILE_R, TILE_T, bits);                                                   \
    }                                                                                                      \
    A8_TARGET_##way static void a8_##way##bits##_R1(const lm_mat *W, int r, const lm_act8 *a, float *y) {          \
        a8_tile_##way(W, r, a, y, TILE_R, 1, bits);                                                        \
    }                                                                                                      \
    A8_TARGET_##way static void a8_##way##bits##_1T(const lm_mat *W, int r, const lm_act8 *a, float *y) {          \
        a8_tile_##way(W, r, a, y, 1, TILE_T, bits);                                                        \
    }                                                                                                      \
    A8_TARGET_##way static void a8_##way##bits##_11(const lm_mat *W, int r, const lm_act8 *a, float *y) {          \
        a8_tile_##way(W, r, a, y, 1, 1, bits);                                                             \
    }                                                                                                      \
    static const a8_tile_fn a8_##way##bits[4] = {a8_##way##bits##_RT, a8_##way##bits##_R1, a8_##way##bits##_1T, \
                                                 a8_##way##bits##_11};
A8_SHAPES(plain, 4)
A8_SHAPES(plain, 8)
#if HAVE_SDOT
A8_TILE(sdot)
A8_SHAPES(sdot, 4)
A8_SHAPES(sdot, 8)
#endif

static void rows_act8_neon(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    const a8_tile_fn *f = W->bits == 4 ? a8_plain4 : a8_plain8;
#if HAVE_SDOT
    if (lm_cpu_features() & LM_CPU_DOTPROD) f = W->bits == 4 ? a8_sdot4 : a8_sdot8;
#endif
    const size_t rows = (size_t)W->rows;
    for (int t0 = 0; t0 < n; t0 += LM_KERNEL_TOKEN_BLOCK) {
        int tn = n - t0 < LM_KERNEL_TOKEN_BLOCK ? n - t0 : LM_KERNEL_TOKEN_BLOCK;
        for (int r = r0; r < r1;) {
            int full = r + TILE_R <= r1; /* a whole tile of rows, else one row */
            int t = t0;
            for (; t + TILE_T <= t0 + tn; t += TILE_T) {
                lm_act8 at = lm_act8_token(a, t);
                f[full ? 0 : 2](W, r, &at, y + (size_t)t * rows + (size_t)r);
            }
            for (; t < t0 + tn; t++) {
                lm_act8 at = lm_act8_token(a, t);
                f[full ? 1 : 3](W, r, &at, y + (size_t)t * rows + (size_t)r);
            }
            r += full ? TILE_R : 1;
        }
    }
}

static int handles_act8_neon(const lm_mat *W) {
    if (W->dtype != LM_DT_U32 || (W->qdtype != LM_DT_F32 && W->qdtype != LM_DT_F16 && W->qdtype != LM_DT_BF16))
        return 0;
    int gs = W->group_size;
    if (W->bits == 4) return gs > 0 && gs % A8_Q4_BLOCK == 0;
    if (W->bits == 8) return gs > 0 && gs % A8_STEP_BYTES == 0;
    return 0;
}

static void f16_to_f32_neon(float *dst, const uint16_t *src, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vld1_f16((const float16_t *)(src + i))));
    for (; i < n; i++) dst[i] = lm_f16_to_f32(src[i]);
}

static float dot_neon(const float *a, const float *b, int n) {
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_neon(float *y, float a, const float *x, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] += a * x[i];
}

static int handles_neon(const lm_mat *W) {
    if (W->dtype == LM_DT_U32)
        return (W->bits == 4 || W->bits == 8) && W->group_size % CHUNK == 0 &&
               (W->qdtype == LM_DT_F32 || W->qdtype == LM_DT_F16 || W->qdtype == LM_DT_BF16);
    return W->dtype == LM_DT_F32 || W->dtype == LM_DT_F16 || W->dtype == LM_DT_BF16;
}

/* lm_act8_quantize with four 4-lane vectors standing for the reference's 16 running
 * lanes per group, combined in its 16 -> 8 -> 4 -> 2 -> 1 tree, so max and sum come
 * out bit for bit (the running max by compare and select, as the reference's
 * a > m ? a : m, which keeps a NaN out); clamping and rounding (by 1.5 * 2^23) are
 * the same operations. Group sizes that are not a multiple of 16 go to the
 * reference, and so does the reordering for q4_block. */
INLINE float32x4_t max_ref(float32x4_t a, float32x4_t m) { return vbslq_f32(vcgtq_f32(a, m), a, m); }

INLINE int32x4_t quantize4(float32x4_t v) {
    const float32x4_t lo = vdupq_n_f32(-127.0f), hi = vdupq_n_f32(127.0f), zero = vdupq_n_f32(0.0f);
    const float32x4_t magic = vdupq_n_f32(12582912.0f);
    v = vbslq_f32(vcgeq_f32(v, lo), v, vbslq_f32(vcltq_f32(v, zero), lo, zero)); /* NaN -> 0 */
    v = vbslq_f32(vcleq_f32(v, hi), v, hi);
    return vcvtq_s32_f32(vsubq_f32(vaddq_f32(v, magic), magic));
}

static void act8_quantize_neon(const float *x, int n, int cols, int gs, int q4_block, int8_t *q, size_t q_stride,
                               float *dx, float *xsum, int ng_stride) {
    if (gs % 16) {
        lm_act8_quantize(x, n, cols, gs, q4_block, q, q_stride, dx, xsum, ng_stride);
        return;
    }
    const int ng = cols / gs;
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * (size_t)cols;
        int8_t *qt = q + (size_t)t * q_stride;
        float *dt = dx + (size_t)t * (size_t)ng_stride, *st = xsum + (size_t)t * (size_t)ng_stride;
        for (int g = 0; g < ng; g++) {
            const float *xg = xt + (size_t)g * (size_t)gs;
            float32x4_t m[4], sm[4]; /* lanes 4j..4j+3 */
            for (int j = 0; j < 4; j++) m[j] = sm[j] = vdupq_n_f32(0.0f);
            for (int i = 0; i < gs; i += 16)
                for (int j = 0; j < 4; j++) {
                    const float32x4_t v = vld1q_f32(xg + i + 4 * j);
                    m[j] = max_ref(vabsq_f32(v), m[j]);
                    sm[j] = vaddq_f32(sm[j], v);
                }
            /* lane k takes lane k + w: w = 8, 4, 2, 1 */
            const float32x4_t m4 = max_ref(max_ref(m[3], m[1]), max_ref(m[2], m[0]));
            const float32x4_t s4 = vaddq_f32(vaddq_f32(sm[0], sm[2]), vaddq_f32(sm[1], sm[3]));
            const float32x2_t m2 = vbsl_f32(vcgt_f32(vget_high_f32(m4), vget_low_f32(m4)), vget_high_f32(m4), vget_low_f32(m4));
            const float32x2_t s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
            const float m1 = vget_lane_f32(m2, 1), m0 = vget_lane_f32(m2, 0);
            const float amax = m1 > m0 ? m1 : m0, total = vget_lane_f32(s2, 0) + vget_lane_f32(s2, 1);
            const float inv = amax > 0 && amax <= 3.4e38f ? 127.0f / amax : 0.0f;
            dt[g] = amax / 127.0f;
            st[g] = total;
            const float32x4_t vinv = vdupq_n_f32(inv);
            for (int i = 0; i < gs; i += 16) {
                int32x4_t v[4];
                for (int j = 0; j < 4; j++) v[j] = quantize4(vmulq_f32(vld1q_f32(xg + i + 4 * j), vinv));
                const int16x8_t a = vcombine_s16(vmovn_s32(v[0]), vmovn_s32(v[1]));
                const int16x8_t b = vcombine_s16(vmovn_s32(v[2]), vmovn_s32(v[3]));
                vst1q_s8(qt + (size_t)g * (size_t)gs + i, vcombine_s8(vmovn_s16(a), vmovn_s16(b)));
            }
        }
        memset(qt + cols, 0, q_stride - (size_t)cols);
        for (int g = ng; g < ng_stride; g++) dt[g] = st[g] = 0;
        if (q4_block) lm_act8_interleave(qt, cols, q4_block, 0);
    }
}

/* lm_attn_exp of 4 lanes: the same operations, lane by lane (vfmaq_f32(a, b, c) is
 * the fused a + b * c). */
INLINE float32x4_t attn_exp4(float32x4_t x) {
    uint32x4_t nan = vmvnq_u32(vceqq_f32(x, x)), small = vcltq_f32(x, vdupq_n_f32(LM_ATTN_EXP_LO));
    float32x4_t xc = vminq_f32(x, vdupq_n_f32(LM_ATTN_EXP_HI));
    float32x4_t shift = vdupq_n_f32(LM_ATTN_EXP_SHIFT);
    float32x4_t n = vsubq_f32(vfmaq_f32(shift, xc, vdupq_n_f32(LM_ATTN_EXP_LOG2E)), shift);
    float32x4_t r = vfmaq_f32(xc, n, vdupq_n_f32(-LM_ATTN_EXP_LN2_HI));
    r = vfmaq_f32(r, n, vdupq_n_f32(-LM_ATTN_EXP_LN2_LO));
    float32x4_t p = vfmaq_f32(vdupq_n_f32(LM_ATTN_EXP_P1), vdupq_n_f32(LM_ATTN_EXP_P0), r);
    p = vfmaq_f32(vdupq_n_f32(LM_ATTN_EXP_P2), p, r);
    p = vfmaq_f32(vdupq_n_f32(LM_ATTN_EXP_P3), p, r);
    p = vfmaq_f32(vdupq_n_f32(LM_ATTN_EXP_P4), p, r);
    p = vfmaq_f32(vdupq_n_f32(LM_ATTN_EXP_P5), p, r);
    float32x4_t y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    float32x4_t v = vmulq_f32(y, vreinterpretq_f32_s32(e));
    v = vbslq_f32(small, vdupq_n_f32(0.0f), v);
    return vbslq_f32(nan, x, v);
}

/* The sum: one vector accumulator over the chunks in order (lanes past cnt add 0),
 * then lanes (0 + 2) + (1 + 3). */
static float attn_exp_neon(float *e, int cnt, float m) {
    float32x4_t vm = vdupq_n_f32(m), sum = vdupq_n_f32(0.0f);
    int r = 0;
    for (; r + 4 <= cnt; r += 4) {
        float32x4_t v = attn_exp4(vsubq_f32(vld1q_f32(e + r), vm));
        vst1q_f32(e + r, v);
        sum = vaddq_f32(sum, v);
    }
    if (r < cnt) { /* the tail through a buffer: the lanes past cnt compute and are dropped */
        float t[4] = {0};
        memcpy(t, e + r, sizeof(float) * (size_t)(cnt - r));
        vst1q_f32(t, attn_exp4(vsubq_f32(vld1q_f32(t), vm)));
        memset(t + (cnt - r), 0, sizeof(float) * (size_t)(4 - (cnt - r)));
        sum = vaddq_f32(sum, vld1q_f32(t));
        memcpy(e + r, t, sizeof(float) * (size_t)(cnt - r));
    }
    float32x2_t h = vadd_f32(vget_low_f32(sum), vget_high_f32(sum));
    return vget_lane_f32(h, 0) + vget_lane_f32(h, 1);
}

static int available_neon(void) { return (lm_cpu_features() & LM_CPU_NEON) != 0; }

const lm_cpu_kernels lm_cpu_kernels_neon = {"neon",
                                            "an AArch64 CPU with NEON",
                                            available_neon,
                                            handles_neon,
                                            rows_neon,
                                            f16_to_f32_neon,
                                            dot_neon,
                                            axpy_neon,
                                            handles_act8_neon,
                                            rows_act8_neon,
                                            A8_Q4_BLOCK,
                                            act8_quantize_neon,
                                            .attn_exp = attn_exp_neon};

#else /* not AArch64 */

static int unavailable(void) { return 0; }
const lm_cpu_kernels lm_cpu_kernels_neon = {"neon", "an AArch64 CPU with NEON", unavailable, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};

#endif

/* ARM NEON matrix kernels (AArch64: Apple Silicon, Graviton, Ampere, ...).
 *
 * NEON is part of every AArch64 CPU, so no feature check or target attribute is
 * needed. Columns go 16 at a time as four 4-lane quarters; each (row, token)
 * pair keeps two accumulators (quarters 0 and 2 into the first, 1 and 3 into
 * the second) so consecutive FMAs do not wait on each other, summed in a fixed
 * order at the end (see cpu_kernels.h: the chain does not depend on the tile).
 * 4-bit affine: 8 bytes hold 16 weights; mask and shift give the even and odd
 * nibbles, vzip restores the order, then widen, convert and fma(scale, q, bias).
 * Activations stay f32, so the dot-product (SDOT) instructions, which need int8
 * activations, are not used: results match the scalar reference to f32 rounding.
 * Built and tested on x86 hosts with aarch64-linux-gnu-gcc under qemu-aarch64
 * (tests/cli/neon.sh).
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

typedef void (*tile_fn)(const lm_mat *W, int r, const float *x, float *y);

#define TILE_SHAPES(kind)                                                                                  \
    static void kind##_RT(const lm_mat *W, int r, const float *x, float *y) {                              \
        kind##_tile(W, r, x, y, TILE_R, TILE_T);                                                           \
    }                                                                                                      \
    static void kind##_R1(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, TILE_R, 1); } \
    static void kind##_1T(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, 1, TILE_T); } \
    static void kind##_11(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, 1, 1); }
TILE_SHAPES(float)
TILE_SHAPES(q4)
TILE_SHAPES(q8)

static void rows_neon(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
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

static int available_neon(void) { return (lm_cpu_features() & LM_CPU_NEON) != 0; }

const lm_cpu_kernels lm_cpu_kernels_neon = {"neon", "an AArch64 CPU with NEON", available_neon, handles_neon,
                                            rows_neon, f16_to_f32_neon, dot_neon, axpy_neon, NULL, NULL, 0};

#else /* not AArch64 */

static int unavailable(void) { return 0; }
const lm_cpu_kernels lm_cpu_kernels_neon = {"neon", "an AArch64 CPU with NEON", unavailable, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};

#endif

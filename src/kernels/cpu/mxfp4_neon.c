/* MXFP4 rows in NEON (AArch64), both layouts (formats/mxfp4.h). A group's 32 codes are
 * put in value order, one per byte (the split layout's nibble pairs zipped, the ggml
 * layout's low and high nibbles as they are), and a table lookup (TBL) turns each into
 * twice its value as int8, -12..12.
 *   - f32 activations: the int8 values widened to f32 and times the group's 2^(E - 128)
 *     (exact: a power of two), then two fma chains per (row, token) over the row and a
 *     fixed horizontal sum. The order differs from the scalar reference (mxfp4_dot.c),
 *     within float rounding, as mxfp4_avx2.c's does.
 *   - int8 activations: each half-group's integer sum of code * q (|product| <= 12 * 127,
 *     widening multiplies and pairwise adds into int32) is exact, and the f32 work is
 *     lm_qblock_dot_act8's (qblock.h) in its order: the scalar reference bit for bit.
 * Every (row, token) is computed the same way whatever the batch or thread count.
 * Checked under qemu-aarch64 by tests/cli/neon.sh (tests/test_kernels.c). */
#include "kernels/cpu/mxfp4_dot.h"

#include "formats/mxfp4.h"

#if defined(__aarch64__)

#include <arm_neon.h>

#define INLINE static inline __attribute__((always_inline))

/* Twice the e2m1 value of each code, for vqtbl1q_s8. */
INLINE int8x16_t code2_table(void) { return vld1q_s8(lm_mxfp4_code2); }

/* The group's 32 codes as int8 twice-values in value order: values 0..15 in *v0,
 * 16..31 in *v1; *e its scale byte. */
INLINE void group_values(const lm_mat *W, int r, int g, int8x16_t lut, int8x16_t *v0, int8x16_t *v1, uint8_t *e) {
    const uint8x16_t m4 = vdupq_n_u8(15);
    const int ng = W->cols / 32;
    uint8x16_t a, b;
    if (W->dtype == LM_DT_MXFP4_SPLIT) {
        const uint8_t *c = (const uint8_t *)W->data + (size_t)r * (size_t)(W->cols / 2) + 16 * (size_t)g;
        uint8x16_t v = vld1q_u8(c), lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
        a = vzip1q_u8(lo, hi); /* value 2j from the low nibble of byte j, 2j + 1 from the high */
        b = vzip2q_u8(lo, hi);
        *e = ((const uint8_t *)W->scales)[(size_t)r * (size_t)ng + (size_t)g];
    } else {
        const uint8_t *b17 = (const uint8_t *)W->data + ((size_t)r * (size_t)ng + (size_t)g) * 17;
        uint8x16_t v = vld1q_u8(b17 + 1);
        a = vandq_u8(v, m4); /* value j low, j + 16 high */
        b = vshrq_n_u8(v, 4);
        *e = b17[0];
    }
    *v0 = vqtbl1q_s8(lut, a);
    *v1 = vqtbl1q_s8(lut, b);
}

/* acc += 16 int8 values times d times x[0..16), 4 lanes at a time on alternating chains. */
INLINE void fma16(float32x4_t *acc0, float32x4_t *acc1, int8x16_t v, float32x4_t d, const float *x) {
    int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
    *acc0 = vfmaq_f32(*acc0, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d), vld1q_f32(x));
    *acc1 = vfmaq_f32(*acc1, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), d), vld1q_f32(x + 4));
    *acc0 = vfmaq_f32(*acc0, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d), vld1q_f32(x + 8));
    *acc1 = vfmaq_f32(*acc1, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), d), vld1q_f32(x + 12));
}

static float dot_neon(const lm_mat *W, int r, const float *x) {
    const int8x16_t lut = code2_table();
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
    for (int g = 0; g < W->cols / 32; g++, x += 32) {
        int8x16_t v0, v1;
        uint8_t e;
        group_values(W, r, g, lut, &v0, &v1, &e);
        float32x4_t d = vdupq_n_f32(lm_e8m0_half_to_f32(e));
        fma16(&acc0, &acc1, v0, d, x);
        fma16(&acc0, &acc1, v1, d, x + 16);
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

void lm_mxfp4_rows_neon(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < n; t++)
            y[(size_t)t * (size_t)W->rows + (size_t)r] = dot_neon(W, r, x + (size_t)t * (size_t)W->cols);
}

/* The exact integer sum of 16 int8 weights times 16 int8 activations. */
INLINE int32_t idot16(int8x16_t w, int8x16_t q) {
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(q)));
    s = vpadalq_s16(s, vmull_high_s8(w, q));
    return vaddvq_s32(s);
}

static float dot_act8_neon(const lm_mat *W, int r, const int8_t *q, const float *dx, const float *xsum) {
    const int8x16_t lut = code2_table();
    float acc = 0;
    for (int g = 0; g < W->cols / 32; g++, q += 32) {
        int8x16_t v0, v1;
        uint8_t e;
        group_values(W, r, g, lut, &v0, &v1, &e);
        const int32_t s0 = idot16(v0, vld1q_s8(q)), s1 = idot16(v1, vld1q_s8(q + 16));
        const float f = lm_e8m0_half_to_f32(e), b0 = 0.0f;
        acc += (f * dx[g]) * (float)s0;
        acc += (f * dx[g]) * (float)s1;
        acc += b0 * xsum[g]; /* the reference's b term (0), kept for its -0 / NaN behaviour */
    }
    return acc;
}

void lm_mxfp4_rows_act8_neon(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < n; t++)
            y[(size_t)t * (size_t)W->rows + (size_t)r] =
                dot_act8_neon(W, r, a->q + (size_t)t * a->q_stride, a->dx + (size_t)t * (size_t)a->ng_stride,
                              a->xsum + (size_t)t * (size_t)a->ng_stride);
}

#else

void lm_mxfp4_rows_neon(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    (void)W, (void)r0, (void)r1, (void)x, (void)n, (void)y;
}
void lm_mxfp4_rows_act8_neon(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    (void)W, (void)r0, (void)r1, (void)a, (void)n, (void)y;
}

#endif

/* Int8 activations with ggml block weights (cpu_kernels.h: lm_act8).
 *
 * Activations are quantized per 32 values (group size 32, Q8_0-style: dx = max|x|/127
 * per group, xsum = the f32 sum), whatever the weight type. Every supported block
 * type is read as 32-value groups in one common form:
 *     w_i = a16[i / 16] * (u_i - off) + b
 * u_i an unsigned byte code, off a per-type power of two (0, 4, 8, 16, 32 or 128),
 * a16 the scale of each 16-value half (equal halves for the 32-scale types) and b
 * the group's min or bias (0 for the symmetric types). A (row, token) dot product is
 *     sum_g  sum_h (a16_h * dx_g) * I_h  +  b_g * xsum_g,
 *     I_h = sum_{i in h} u_i q_i - off * sum_{i in h} q_i     (exact in int32)
 * so the integer parts are exact and only the f32 combination differs between the
 * scalar reference (this order) and the SIMD tables (per-lane sums, a fixed tree).
 * Q2_K (mins per 16 values) keeps f32 activations. MXFP4 (both layouts, mxfp4.h) is
 * u = twice the e2m1 value + 16 with off = 16 and a16 = 2^(E - 128): exact.
 *
 * The SIMD tables also read, per token, the sum of each 16 consecutive q
 * (lm_act8.qsum16): the off * sum q term of every half above. */
#ifndef LAZYMOE_QBLOCK_H
#define LAZYMOE_QBLOCK_H

#include "kernels/cpu/cpu_kernels.h"

#define LM_QB_GROUP 32

/* 1 when block type t has the int8-activation path. */
int lm_qblock_act8(lm_dtype t);
/* 1 when int8 activations with t take this file's form (group 32, lane tables):
 * ggml blocks and the split MXFP4 layout. */
static inline int lm_qblock_form(lm_dtype t) { return lm_dtype_is_block(t) || t == LM_DT_MXFP4_SPLIT; }
/* log2(off) for type t, -1 when off = 0. */
int lm_qblock_off_shift(lm_dtype t);
/* 1 when type t has a b term (mins or biases). */
int lm_qblock_has_b(lm_dtype t);

/* Group g (values 32g..32g+31) of a row of type t at row (the row's first block). */
typedef struct {
    uint8_t u[LM_QB_GROUP];
    float a16[2];
    float b;
} lm_qgroup;
void lm_qblock_group(lm_dtype t, const uint8_t *row, int g, lm_qgroup *out);
/* The same for LM_DT_MXFP4_SPLIT, whose scales lie apart from the codes: group g of
 * the row whose codes (cols / 2 bytes) and scales (cols / 32) are given. */
void lm_qblock_group_mxfp4_split(const uint8_t *codes_row, const uint8_t *scales_row, int g, lm_qgroup *out);

/* The reference dot product of row r of W with one token's quantized values. */
float lm_qblock_dot_act8(const lm_mat *W, int r, const int8_t *q, const float *dx, const float *xsum);

/* The 16-value sums of n tokens' q (stride q_stride, cols a multiple of 16) into
 * out (out_stride entries per token). */
void lm_qblock_qsum16(const int8_t *q, size_t q_stride, int n, int cols, int32_t *out, size_t out_stride);

/* The AVX-512 VNNI rows for block types (qblock_avx512.c); 0 / nothing elsewhere. */
int lm_qblock_handles_avx512(const lm_mat *W);
void lm_qblock_rows_avx512(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y);
/* The AVX2 rows (qblock_avx2.c; AVX-VNNI where present): the same results. */
int lm_qblock_handles_avx2(const lm_mat *W);
void lm_qblock_rows_avx2(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y);

#endif

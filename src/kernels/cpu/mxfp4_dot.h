/* MXFP4 matrices (formats/mxfp4.h) in the CPU backend: dot products of a row with
 * float32 activations, both layouts. Each group's 32 products of code * x are summed
 * in float32 in column order, then scaled by the group's 2^(E - 128) and added to
 * the row's sum in group order: a fixed order, so a row's result does not depend on
 * the batch or the thread count. */
#ifndef LAZYMOE_MXFP4_DOT_H
#define LAZYMOE_MXFP4_DOT_H

#include "kernels/cpu/cpu_kernels.h"

static inline int lm_dtype_is_mxfp4(lm_dtype t) { return t == LM_DT_MXFP4 || t == LM_DT_MXFP4_SPLIT; }

/* dot(W[r], x) for an MXFP4 matrix of either layout. */
float lm_mxfp4_dot_f32(const lm_mat *W, int r, const float *x);

/* y[t][W->rows] rows r0..r1-1 for n tokens x[n][W->cols] (mxfp4_avx2.c): AVX2 + FMA
 * only; lm_mxfp4_rows picks it when the CPU has them and the backend's kernels are
 * not the scalar reference. */
void lm_mxfp4_rows_avx2(const lm_mat *W, int r0, int r1, const float *x, int n, float *y);

/* The same with int8 activations (cpu_kernels.h lm_act8, group 32, natural order):
 * each half-group's integer sum of twice-the-value codes times q is exact in int32
 * and is combined in f32 in lm_qblock_dot_act8's order (qblock.h), so the result is
 * that reference's bit for bit. For CPUs with AVX2 but no AVX-512 VNNI table. */
void lm_mxfp4_rows_act8_avx2(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y);

/* The same two on AArch64 NEON (mxfp4_neon.c): f32 within float rounding of the scalar
 * reference, int8 its bits. No-ops elsewhere (and the AVX2 ones on AArch64). */
void lm_mxfp4_rows_neon(const lm_mat *W, int r0, int r1, const float *x, int n, float *y);
void lm_mxfp4_rows_act8_neon(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y);

#endif

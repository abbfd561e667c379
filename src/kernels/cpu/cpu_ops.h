/* The CPU backend's operations beyond matmul and attention (cpu_ops.c): memory,
 * elementwise work, embedding rows and MoE routing, gathering and combining.
 * Each is the plain loop forward.c ran on the host before these were backend
 * operations, in the same order, so results are bit-identical to it. */
#ifndef LAZYMOE_CPU_OPS_H
#define LAZYMOE_CPU_OPS_H

#include "kernels/backend.h"

int lm_cpu_alloc(lm_backend *be, lm_buf *out, size_t bytes);
void lm_cpu_free(lm_backend *be, lm_buf *buf);
int lm_cpu_copy(lm_backend *be, void *dst, const void *src, size_t bytes);
int lm_cpu_sync(lm_backend *be);
int lm_cpu_embed(lm_backend *be, float *x, const lm_mat *W, const int32_t *ids, int n);
int lm_cpu_add(lm_backend *be, float *y, const float *x, size_t n);
int lm_cpu_add_rows(lm_backend *be, float *y, const float *b, int n, int dim);
int lm_cpu_clamp(lm_backend *be, float *y, size_t n, float lim);
int lm_cpu_copy_rows(lm_backend *be, float *dst, size_t dst_stride, const float *src, size_t src_stride, int rows,
                     int width);
int lm_cpu_sigmoid_mul(lm_backend *be, float *y, size_t y_stride, const float *g, size_t g_stride, int rows,
                       int width, int per_row);
int lm_cpu_swiglu_clamped(lm_backend *be, float *out, const float *gu, size_t n, float alpha, float limit);
int lm_cpu_swiglu_clamped_split(lm_backend *be, float *out, const float *gate, const float *up, size_t n, float alpha,
                                float limit);
int lm_cpu_route(lm_backend *be, const lm_router *r, const float *logits, int n, int32_t *sel, float *selw);
int lm_cpu_gather_rows(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width,
                       int idx_div);
int lm_cpu_scatter_rows(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width);
int lm_cpu_moe_combine(lm_backend *be, float *y, const float *eout, const float *selw, const float *shared, int n,
                       int top_k, int width);

#endif

/* SIMD matrix kernels of the CPU backend, one instruction set per file.
 *
 * cpu_backend.c keeps the portable scalar code as the reference and picks one
 * of these tables at start (CPU feature detection, or LAZYMOE_KERNELS=name).
 * Each file compiles on every target: its functions carry per-function target
 * attributes, so the default build stays portable, and a file for another
 * architecture compiles to an unavailable stub.
 *
 * Numerics shared by every table: the dot product of one weight row with one
 * token is a single vector accumulator over the columns in order, chunk by
 * chunk (acc = fma(w_chunk, x_chunk, acc)), then a fixed horizontal sum. Affine
 * weights are widened per element as fma(scale, q, bias). The same chain runs
 * whatever the number of tokens or rows in the call, so a row's result does not
 * depend on batching or thread count (lazy and resident runs stay bit-identical).
 */
#ifndef LAZYMOE_CPU_KERNELS_H
#define LAZYMOE_CPU_KERNELS_H

#include "kernels/backend.h"

typedef struct {
    const char *name;
    /* What the CPU must have, for the error when a forced table is unavailable. */
    const char *requires;
    /* 1 when compiled for this architecture and the running CPU has the features. */
    int (*available)(void);
    /* 1 when rows() computes this matrix; the scalar reference does the others. */
    int (*handles)(const lm_mat *W);
    /* y[t][W->rows] row entries r0..r1-1 for tokens t < n: dot(W[r], x[t]). */
    void (*rows)(const lm_mat *W, int r0, int r1, const float *x, int n, float *y);
    /* dst[n] = src[n] widened from IEEE half (exact); NULL = the scalar loop. */
    void (*f16_to_f32)(float *dst, const uint16_t *src, int n);
    /* Attention's inner loops (a fixed order per table, so deterministic):
     * dot(a, b, n) and y[i] += a * x[i] for i < n. */
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float *y, float a, const float *x, int n);
} lm_cpu_kernels;

extern const lm_cpu_kernels lm_cpu_kernels_avx512;
extern const lm_cpu_kernels lm_cpu_kernels_avx2;
extern const lm_cpu_kernels lm_cpu_kernels_neon;

/* Instruction sets of the running CPU (and enabled by the OS). */
enum {
    LM_CPU_AVX2 = 1u << 0,
    LM_CPU_FMA = 1u << 1,
    LM_CPU_F16C = 1u << 2,
    LM_CPU_AVX512F = 1u << 3,
    LM_CPU_AVX512BW = 1u << 4,
    LM_CPU_AVX512VL = 1u << 5,
    LM_CPU_AVX512DQ = 1u << 6,
    LM_CPU_AVX512VBMI = 1u << 7,
    LM_CPU_NEON = 1u << 8,
    LM_CPU_DOTPROD = 1u << 9,
};
unsigned lm_cpu_features(void);

/* Tokens handled per pass over a block of rows: their activations stay in cache
 * while the rows of a task stream past. */
#define LM_KERNEL_TOKEN_BLOCK 64

#endif

/* The tensor-work interface the model code calls.
 *
 * Model code (src/engine/forward.c) never touches numbers itself beyond routing
 * decisions: it calls these operations through a backend table, so a CUDA
 * backend can implement the same table without the model code changing.
 * Activations are float32 arrays allocated through the backend (on CPU, host
 * memory); weights are lm_mat views of memory in their stored precision.
 *
 * Determinism contract: for the same inputs an operation returns bit-identical
 * results regardless of thread count or scheduling, so lazily loaded experts
 * give exactly the numbers of resident ones.
 */
#ifndef LAZYMOE_BACKEND_H
#define LAZYMOE_BACKEND_H

#include "formats/dtype.h"

#include <stddef.h>
#include <stdint.h>

/* A weight matrix [rows (outputs), cols (inputs)], row-major, in stored precision.
 *  float:  dtype F32/F16/BF16, data = rows*cols elements
 *  affine: dtype U32 (MLX), data = rows x (cols*bits/32) packed words, lowest bits
 *          first; scales and biases rows x (cols/group_size) of qdtype;
 *          w[r][c] = scale[r][c/g] * q[r][c] + bias[r][c/g]
 * The view does not own its memory. */
typedef struct {
    lm_dtype dtype;
    int rows, cols;
    const void *data;
    int bits, group_size;
    lm_dtype qdtype;
    const void *scales, *biases;
} lm_mat;

/* Bytes the matrix occupies as stored (scales and biases included). */
uint64_t lm_mat_bytes(const lm_mat *m);
/* Row r as float32 into out[cols] (embedding lookup, tests). */
void lm_mat_row_f32(const lm_mat *m, int r, float *out);

typedef struct lm_backend lm_backend;

/* One product of a batch of independent matmuls: y[n][W->rows] = x[n][W->cols] . W^T. */
typedef struct {
    float *y;
    const lm_mat *W;
    const float *x;
    int n; /* tokens */
} lm_matmul_item;

/* One layer's K or V cache: [positions][n_kv][head_dim] values in `dtype`:
 *  LM_DT_F32, LM_DT_F16 (default), or LM_DT_I8 with one f32 scale per
 *  (position, kv head): value = scale * q, scale = max|row| / 127. */
typedef struct {
    lm_dtype dtype;
    void *data;
    float *scales; /* LM_DT_I8 only: [positions][n_kv] */
} lm_kv;

typedef struct {
    const char *name;
    /* y[n][W.rows] = x[n][W.cols] . W^T */
    void (*matmul)(lm_backend *be, float *y, const lm_mat *W, const float *x, int n);
    /* Several independent matmuls (each with its own token count) as one piece of
     * parallel work: fewer hand-overs to the threads than one call each. Every
     * result is bit-identical to what matmul gives for it alone. */
    void (*matmul_batch)(lm_backend *be, const lm_matmul_item *items, int count);
    /* y[n][dim] = x / sqrt(mean(x^2) + eps) * w ; y may alias x */
    void (*rmsnorm)(lm_backend *be, float *y, const float *x, const float *w, int n, int dim, float eps);
    /* Rotates the first 2*half dims of each head of x[n][n_heads*head_dim] (rotate-half
     * convention) at positions pos[n] with inverse frequencies inv_freq[half]. */
    void (*rope)(lm_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                 const float *inv_freq, int half);
    /* Stores n rows src[n][n_kv*hd] into the cache at positions pos0..pos0+n-1,
     * rounded to the cache's type. */
    void (*kv_store)(lm_backend *be, lm_kv *cache, int pos0, const float *src, int n, int n_kv, int hd);
    /* Causal attention of n new queries q[n][n_heads*hd] at positions pos0..pos0+n-1
     * over cached keys/values k,v (positions 0..pos0+n-1); out[n][n_heads*hd].
     * window > 0 limits each query to the last `window` positions. Keys are taken
     * in fixed tiles counted from the first visible position, so a query's result
     * does not depend on how many queries share the call. */
    void (*attention)(lm_backend *be, float *out, const float *q, const lm_kv *k, const lm_kv *v,
                      int n, int pos0, int n_heads, int n_kv, int hd, float scale, int window);
    /* g[i] = silu(g[i]) * u[i] */
    void (*swiglu)(lm_backend *be, float *g, const float *u, size_t n);
} lm_backend_ops;

struct lm_backend {
    const lm_backend_ops *ops;
    void *impl;
};

/* CPU backend with a pool of n_threads workers (0 = all cores). Matmul kernels:
 * the environment's LAZYMOE_KERNELS (auto, scalar, avx512, avx2, neon), default auto
 * (the best the CPU runs; scalar is the portable reference). */
int lm_backend_cpu_create(lm_backend **out, int n_threads, char *err);
/* The same with the kernels named (NULL = auto); an error if the CPU lacks them. */
int lm_backend_cpu_create_with(lm_backend **out, int n_threads, const char *kernels, char *err);
/* Precision of the activations in matmuls with affine (MLX 4/8-bit) weights:
 * 32 (default) multiplies the f32 activations with the widened weights; 8
 * quantizes each token's activations per weight group to int8 (cpu_kernels.h:
 * lm_act8) and multiplies integers, with VNNI / dot-product instructions where
 * the CPU has them -- faster, at a small stated error (tests/test_golden.c).
 * Float weights and attention stay f32 either way. max_cols (the widest matrix
 * input the model has) sizes the quantization buffer up front, so running out
 * of memory is reported here rather than during a matmul. */
int lm_backend_cpu_set_act_bits(lm_backend *be, int bits, int max_cols, char *err);
/* Name of the matmul kernels a CPU backend runs ("avx512", "scalar", ...). */
const char *lm_backend_cpu_kernels(const lm_backend *be);
void lm_backend_free(lm_backend *be);

#endif

/* Portable CPU backend: the reference implementation of lm_backend_ops.
 *
 * Weights are read in their stored precision and widened to f32 inside the
 * dot products; every accumulation is f32. Work is split across the thread
 * pool by output rows (matmul) or by (token, head) pairs (attention); each
 * output element is produced by exactly one thread in a fixed order, which
 * keeps results independent of the thread count.
 * SIMD kernels (cpu_kernels.h: AVX2, AVX-512, NEON) sit beside this file and
 * are tested against it; LAZYMOE_KERNELS=scalar forces this code everywhere.
 */
#include "kernels/backend.h"

#include "common/error.h"
#include "formats/ggml_blocks.h"
#include "formats/mxfp4.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/mxfp4_dot.h"
#include "kernels/cpu/qblock.h"
#include "kernels/cpu/threadpool.h"
#include "platform/platform.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    lm_pool *pool;
    const lm_cpu_kernels *k; /* SIMD matmul, NULL = scalar reference only */
    float *xsum; /* per-token per-group input sums for affine matmul */
    size_t xsum_cap;
    int act_bits;   /* 32, or 8: int8 activations for affine matmuls */
    /* act_bits 8 for products of at least act8_min_tokens tokens, and of MLX weights of
     * act8_only_bits bits only where set (lm_backend_cpu_set_act8_scope) */
    int act8_min_tokens, act8_only_bits;
    char *a8buf;    /* quantized activations of the current call (64-byte aligned) */
    size_t a8cap;
    void *batch_mem; /* per-call arrays of matmul_batch */
    size_t batch_cap;
} cpu_impl;

uint64_t lm_mat_bytes(const lm_mat *m) {
    uint64_t n = (uint64_t)m->rows * (uint64_t)m->cols;
    if (lm_dtype_is_block(m->dtype)) return (uint64_t)m->rows * lm_dtype_row_bytes(m->dtype, (uint64_t)m->cols);
    if (m->dtype == LM_DT_MXFP4_SPLIT) return n / 2 + n / 32;
    if (m->dtype == LM_DT_U32)
        return n * (uint64_t)m->bits / 8 +
               2 * (uint64_t)m->rows * (uint64_t)(m->cols / m->group_size) * lm_dtype_size(m->qdtype);
    return n * lm_dtype_size(m->dtype);
}

/* ---- unpacking affine weights ------------------------------------------------- */

/* q value c of a packed row (bitstream, lowest bits first). */
static inline uint32_t affine_q(const uint32_t *row, int bits, int c) {
    if (bits == 4) return (row[c >> 3] >> ((c & 7) * 4)) & 15u;
    if (bits == 8) return (row[c >> 2] >> ((c & 3) * 8)) & 255u;
    if (bits == 2) return (row[c >> 4] >> ((c & 15) * 2)) & 3u;
    uint64_t bit = (uint64_t)c * (uint64_t)bits;
    const uint8_t *bytes = (const uint8_t *)row;
    uint32_t v = 0;
    for (int b = 0; b < bits; b++) {
        uint64_t p = bit + (uint64_t)b;
        v |= (uint32_t)((bytes[p >> 3] >> (p & 7)) & 1u) << b;
    }
    return v;
}

static inline const uint32_t *affine_row(const lm_mat *m, int r) {
    size_t words_per_row = (size_t)m->cols * (size_t)m->bits / 32;
    return (const uint32_t *)m->data + (size_t)r * words_per_row;
}

void lm_mat_row_f32(const lm_mat *m, int r, float *out) {
    if (m->dtype == LM_DT_MXFP4_SPLIT) {
        lm_mxfp4_split_row_f32(m->data, m->scales, m->cols, r, out);
        return;
    }
    if (m->dtype == LM_DT_MXFP4) {
        lm_mxfp4_block_row_f32(m->data, m->cols, r, out);
        return;
    }
    if (m->col_major) {
        for (int c = 0; c < m->cols; c++) out[c] = lm_load_float(m->data, m->dtype, (size_t)c * (size_t)m->rows + (size_t)r);
        return;
    }
    if (lm_dtype_is_block(m->dtype)) {
        const uint64_t rb = lm_dtype_row_bytes(m->dtype, (uint64_t)m->cols);
        /* Types without a conversion are refused before any row is read (embed,
         * matmul); zeros rather than stale memory if one slips through. */
        if (lm_blocks_to_f32(m->dtype, (const char *)m->data + (size_t)r * rb, out, (size_t)m->cols) != 0)
            memset(out, 0, sizeof(float) * (size_t)m->cols);
        return;
    }
    if (m->dtype != LM_DT_U32) {
        const char *base = (const char *)m->data + (size_t)r * (size_t)m->cols * lm_dtype_size(m->dtype);
        lm_convert_to_f32(out, base, m->dtype, (size_t)m->cols);
        return;
    }
    const uint32_t *row = affine_row(m, r);
    int ng = m->cols / m->group_size;
    for (int g = 0; g < ng; g++) {
        float s = lm_load_float(m->scales, m->qdtype, (size_t)r * (size_t)ng + (size_t)g);
        float b = lm_load_float(m->biases, m->qdtype, (size_t)r * (size_t)ng + (size_t)g);
        for (int i = 0; i < m->group_size; i++) {
            int c = g * m->group_size + i;
            out[c] = s * (float)affine_q(row, m->bits, c) + b;
        }
    }
}

/* ---- dot products ------------------------------------------------------------- */

static float dot_f32(const float *w, const float *x, int n) {
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += w[i] * x[i];
        a1 += w[i + 1] * x[i + 1];
        a2 += w[i + 2] * x[i + 2];
        a3 += w[i + 3] * x[i + 3];
    }
    for (; i < n; i++) a0 += w[i] * x[i];
    return (a0 + a1) + (a2 + a3);
}

static float dot_bf16(const uint16_t *w, const float *x, int n) {
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += lm_bf16_to_f32(w[i]) * x[i];
        a1 += lm_bf16_to_f32(w[i + 1]) * x[i + 1];
        a2 += lm_bf16_to_f32(w[i + 2]) * x[i + 2];
        a3 += lm_bf16_to_f32(w[i + 3]) * x[i + 3];
    }
    for (; i < n; i++) a0 += lm_bf16_to_f32(w[i]) * x[i];
    return (a0 + a1) + (a2 + a3);
}

static float dot_f16(const uint16_t *w, const float *x, int n) {
    float a0 = 0, a1 = 0;
    int i = 0;
    for (; i + 2 <= n; i += 2) {
        a0 += lm_f16_to_f32(w[i]) * x[i];
        a1 += lm_f16_to_f32(w[i + 1]) * x[i + 1];
    }
    for (; i < n; i++) a0 += lm_f16_to_f32(w[i]) * x[i];
    return a0 + a1;
}

/* A block-quantized row: exactly dot_f32 of the row converted to f32 (the same four
 * lane sums, carried from block to block), one block converted at a time. */
#define BLOCK_MAX_ELEMS 256
static float dot_block(const lm_mat *m, int r, const float *x) {
    const size_t be = (size_t)lm_dtype_block_elems(m->dtype), bb = lm_dtype_block_bytes(m->dtype);
    const uint8_t *row = (const uint8_t *)m->data + (size_t)r * lm_dtype_row_bytes(m->dtype, (uint64_t)m->cols);
    float w[BLOCK_MAX_ELEMS];
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t b = 0; b < (size_t)m->cols / be; b++) {
        lm_blocks_to_f32(m->dtype, row + b * bb, w, be);
        const float *xb = x + b * be;
        for (size_t i = 0; i < be; i += 4) {
            a0 += w[i] * xb[i];
            a1 += w[i + 1] * xb[i + 1];
            a2 += w[i + 2] * xb[i + 2];
            a3 += w[i + 3] * xb[i + 3];
        }
    }
    return (a0 + a1) + (a2 + a3);
}

/* sum_g scale_g * (q_g . x_g) + bias_g * sum(x_g) */
static float dot_affine(const lm_mat *m, int r, const float *x, const float *xsum) {
    const uint32_t *row = affine_row(m, r);
    int gs = m->group_size, ng = m->cols / gs;
    size_t sb = (size_t)r * (size_t)ng;
    float acc = 0;
    for (int g = 0; g < ng; g++) {
        const float *xg = x + (size_t)g * (size_t)gs;
        float qd = 0;
        if (m->bits == 4) {
            const uint32_t *wp = row + (size_t)g * (size_t)gs / 8;
            for (int j = 0; j < gs / 8; j++) {
                uint32_t w = wp[j];
                const float *xx = xg + j * 8;
                qd += (float)(w & 15u) * xx[0] + (float)((w >> 4) & 15u) * xx[1] +
                      (float)((w >> 8) & 15u) * xx[2] + (float)((w >> 12) & 15u) * xx[3] +
                      (float)((w >> 16) & 15u) * xx[4] + (float)((w >> 20) & 15u) * xx[5] +
                      (float)((w >> 24) & 15u) * xx[6] + (float)(w >> 28) * xx[7];
            }
        } else if (m->bits == 8) {
            const uint32_t *wp = row + (size_t)g * (size_t)gs / 4;
            for (int j = 0; j < gs / 4; j++) {
                uint32_t w = wp[j];
                const float *xx = xg + j * 4;
                qd += (float)(w & 255u) * xx[0] + (float)((w >> 8) & 255u) * xx[1] +
                      (float)((w >> 16) & 255u) * xx[2] + (float)(w >> 24) * xx[3];
            }
        } else {
            for (int i = 0; i < gs; i++) qd += (float)affine_q(row, m->bits, g * gs + i) * xg[i];
        }
        float xs;
        if (xsum) {
            xs = xsum[g];
        } else {
            xs = 0;
            for (int i = 0; i < gs; i++) xs += xg[i];
        }
        float s = lm_load_float(m->scales, m->qdtype, sb + (size_t)g);
        float b = lm_load_float(m->biases, m->qdtype, sb + (size_t)g);
        acc += s * qd + b * xs;
    }
    return acc;
}

/* ---- int8 activations (cpu_kernels.h: lm_act8) ------------------------------------ */

void lm_act8_quantize(const float *x, int n, int cols, int gs, int q4_block, int8_t *q, size_t q_stride,
                      float *dx, float *xsum, int ng_stride) {
    int ng = cols / gs;
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * (size_t)cols;
        int8_t *qt = q + (size_t)t * q_stride;
        float *dt = dx + (size_t)t * (size_t)ng_stride, *st = xsum + (size_t)t * (size_t)ng_stride;
        for (int g = 0; g < ng; g++) {
            const float *xg = xt + (size_t)g * (size_t)gs;
            int8_t *qg = qt + (size_t)g * (size_t)gs;
            /* 16 running lanes combined in a fixed tree: a set order that SIMD
             * code can reproduce (a sequential sum could not be vectorized). */
            float lane_max[16] = {0}, lane_sum[16] = {0};
            int i = 0;
            for (; i + 16 <= gs; i += 16)
                for (int k = 0; k < 16; k++) {
                    float a = fabsf(xg[i + k]);
                    lane_max[k] = a > lane_max[k] ? a : lane_max[k];
                    lane_sum[k] += xg[i + k];
                }
            for (int k = 0; i < gs; i++, k++) {
                float a = fabsf(xg[i]);
                lane_max[k] = a > lane_max[k] ? a : lane_max[k];
                lane_sum[k] += xg[i];
            }
            for (int w = 8; w >= 1; w /= 2)
                for (int k = 0; k < w; k++) {
                    lane_max[k] = lane_max[k + w] > lane_max[k] ? lane_max[k + w] : lane_max[k];
                    lane_sum[k] += lane_sum[k + w];
                }
            float amax = lane_max[0], sum = lane_sum[0];
            /* amax is finite for finite x; a NaN or infinite activation gives a NaN
             * or infinite result, as it would in f32 (through xsum and dx). */
            float inv = amax > 0 && amax <= 3.4e38f ? 127.0f / amax : 0.0f;
            dt[g] = amax / 127.0f;
            st[g] = sum;
            for (i = 0; i < gs; i++) {
                float v = xg[i] * inv;
                v = v >= -127.0f ? v : v < 0 ? -127.0f : 0.0f; /* NaN -> 0: xsum carries it */
                v = v <= 127.0f ? v : 127.0f;
                /* Round to nearest, ties to even, by adding and removing 1.5 * 2^23
                 * (exact for |v| < 2^22; inline, where lrintf is a libm call). */
                qg[i] = (int8_t)(int)((v + 12582912.0f) - 12582912.0f);
            }
        }
        memset(qt + cols, 0, q_stride - (size_t)cols);
        for (int g = ng; g < ng_stride; g++) dt[g] = st[g] = 0;
        if (q4_block) lm_act8_interleave(qt, cols, q4_block, 0);
    }
}

void lm_act8_interleave(int8_t *qt, int cols, int q4_block, int first) {
    /* Each block of q4_block values becomes its even-indexed values, then its
     * odd ones (a partial last block: both halves zero-padded). */
    int8_t tmp[LM_ACT8_MAX_BLOCK];
    for (int base = first; base < cols; base += q4_block) {
        int m = cols - base < q4_block ? cols - base : q4_block, half = q4_block / 2;
        memcpy(tmp, qt + base, (size_t)m);
        memset(qt + base, 0, (size_t)q4_block);
        for (int j = 0; j < m; j++) qt[base + (j & 1) * half + j / 2] = tmp[j];
    }
}

/* The reference: exact integer dot per group, groups combined in order. */
static float dot_affine_act8(const lm_mat *m, int r, const int8_t *q, const float *dx, const float *xsum) {
    const uint32_t *row = affine_row(m, r);
    int gs = m->group_size, ng = m->cols / gs;
    size_t sb = (size_t)r * (size_t)ng;
    float acc = 0;
    for (int g = 0; g < ng; g++) {
        int32_t dot = 0;
        for (int i = 0; i < gs; i++) {
            int c = g * gs + i;
            dot += (int32_t)affine_q(row, m->bits, c) * (int32_t)q[c];
        }
        float s = lm_load_float(m->scales, m->qdtype, sb + (size_t)g);
        float b = lm_load_float(m->biases, m->qdtype, sb + (size_t)g);
        acc += (s * dx[g]) * (float)dot + b * xsum[g];
    }
    return acc;
}

/* Bytes one token's quantized input takes for W under a table's layout. */
static size_t round64(size_t v) { return (v + 63) / 64 * 64; }
static size_t act8_q_stride(const lm_mat *W, int block) {
    size_t c = (size_t)W->cols;
    if (block) c = (c + (size_t)block - 1) / (size_t)block * (size_t)block;
    return round64(c);
}
/* The activations' group size: the affine matrix's, or 32 for ggml blocks (qblock.h). */
static int act8_gs(const lm_mat *W) { return W->dtype == LM_DT_U32 ? W->group_size : LM_QB_GROUP; }
static int act8_ng_stride(const lm_mat *W) { return W->cols / act8_gs(W) + LM_ACT8_PAD; }
/* Entries per token of the 16-value sums (block weights and MXFP4, the qblock.h form;
 * 0 otherwise). */
static size_t act8_qsum16_stride(const lm_mat *W) {
    return lm_qblock_form(W->dtype) ? round64((size_t)W->cols / 16 * sizeof(int32_t) + 64) / sizeof(int32_t) : 0;
}
static size_t act8_token_bytes(const lm_mat *W, int block) {
    return act8_q_stride(W, block) + 2 * round64((size_t)act8_ng_stride(W) * sizeof(float)) +
           act8_qsum16_stride(W) * sizeof(int32_t);
}

/* Makes the buffer hold at least `bytes`; 0 when it does (or already did). */
static int act8_reserve(cpu_impl *impl, size_t bytes) {
    if (bytes <= impl->a8cap) return 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) return -1;
    free(impl->a8buf);
    impl->a8buf = p;
    impl->a8cap = bytes;
    return 0;
}

typedef struct {
    const lm_mat *W;
    const float *x;
    int n, block, per_task;
    lm_act8 *a;
    lm_act8_quantize_fn quantize;
} quantize_job;

static void quantize_task(void *ctx, int task) {
    const quantize_job *j = ctx;
    int t0 = task * j->per_task, tn = j->n - t0 < j->per_task ? j->n - t0 : j->per_task;
    lm_act8 *a = j->a;
    j->quantize(j->x + (size_t)t0 * (size_t)j->W->cols, tn, j->W->cols, act8_gs(j->W), j->block,
                     (int8_t *)a->q + (size_t)t0 * a->q_stride, a->q_stride,
                     (float *)a->dx + (size_t)t0 * (size_t)a->ng_stride,
                     (float *)a->xsum + (size_t)t0 * (size_t)a->ng_stride, a->ng_stride);
    if (a->qsum16)
        lm_qblock_qsum16(a->q + (size_t)t0 * a->q_stride, a->q_stride, tn, j->W->cols,
                         (int32_t *)a->qsum16 + (size_t)t0 * a->qsum16_stride, a->qsum16_stride);
}

/* Quantizes n tokens of x for W at buf (act8_token_bytes(W, block) * n bytes),
 * spread over the pool by tokens when there are enough. */
static void act8_prepare(const cpu_impl *impl, const lm_mat *W, const float *x, int n, int block, char *buf,
                         lm_act8 *a) {
    lm_pool *pool = impl->pool;
    size_t qs = act8_q_stride(W, block);
    int ngs = act8_ng_stride(W);
    size_t fb = round64((size_t)ngs * sizeof(float));
    a->q = (int8_t *)buf;
    a->q_stride = qs;
    void *dx = buf + (size_t)n * qs, *xsum = buf + (size_t)n * (qs + fb); /* 64-byte aligned */
    a->dx = dx;
    a->xsum = xsum;
    a->ng_stride = ngs;
    a->qsum16_stride = act8_qsum16_stride(W);
    a->qsum16 = a->qsum16_stride ? (const int32_t *)(void *)(buf + (size_t)n * (qs + 2 * fb)) : NULL;
    int tasks = n < 2 * lm_pool_size(pool) ? n : 2 * lm_pool_size(pool);
    quantize_job j = {.W = W, .x = x, .n = n, .block = block, .per_task = n, .a = a,
                      .quantize = impl->k && impl->k->act8_quantize ? impl->k->act8_quantize : lm_act8_quantize};
    if (tasks <= 1 || (size_t)n * (size_t)W->cols < 8192) {
        quantize_task(&j, 0);
        return;
    }
    j.per_task = (n + tasks - 1) / tasks;
    lm_pool_run(pool, (n + j.per_task - 1) / j.per_task, quantize_task, &j);
}

/* ---- the tile walk of the SIMD tables (cpu_kernels.h) ------------------------------ */

void lm_tile_rows(const lm_mat *W, int r0, int r1, const float *x, int n, float *y, int tile_r, int tile_t,
                  const lm_f32_tile shapes[2][2]) {
    const size_t cols = (size_t)W->cols, rows = (size_t)W->rows;
    for (int t0 = 0; t0 < n; t0 += LM_KERNEL_TOKEN_BLOCK) {
        int t1 = n - t0 < LM_KERNEL_TOKEN_BLOCK ? n : t0 + LM_KERNEL_TOKEN_BLOCK;
        for (int r = r0; r < r1;) {
            const int full_rows = r + tile_r <= r1;
            for (int t = t0; t < t1;) {
                const int full_tokens = t + tile_t <= t1;
                shapes[full_rows][full_tokens](W, r, x + (size_t)t * cols, y + (size_t)t * rows + (size_t)r);
                t += full_tokens ? tile_t : 1;
            }
            r += full_rows ? tile_r : 1; /* the leftover rows (and tokens) one at a time */
        }
    }
}

/* ---- matmul --------------------------------------------------------------------- */

typedef struct {
    const lm_cpu_kernels *k; /* SIMD table for W (rows, or rows_act8 with a8), NULL = scalar */
    float *y;
    const lm_mat *W;
    const float *x;
    const float *xsum;
    const lm_act8 *a8; /* int8 activations, NULL = f32 */
    int n, rows_per_task;
    /* MXFP4 rows in AVX2 or NEON (mxfp4_dot.h) rather than the scalar reference; NULL = scalar */
    void (*mxfp4_rows)(const lm_mat *W, int r0, int r1, const float *x, int n, float *y);
    void (*mxfp4_rows_act8)(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y);
} matmul_job;

static void act8_rows_scalar(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    if (lm_qblock_form(W->dtype)) {
        for (int r = r0; r < r1; r++)
            for (int t = 0; t < n; t++)
                y[(size_t)t * (size_t)W->rows + (size_t)r] =
                    lm_qblock_dot_act8(W, r, a->q + (size_t)t * a->q_stride, a->dx + (size_t)t * (size_t)a->ng_stride,
                                       a->xsum + (size_t)t * (size_t)a->ng_stride);
        return;
    }
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < n; t++)
            y[(size_t)t * (size_t)W->rows + (size_t)r] =
                dot_affine_act8(W, r, a->q + (size_t)t * a->q_stride, a->dx + (size_t)t * (size_t)a->ng_stride,
                                a->xsum + (size_t)t * (size_t)a->ng_stride);
}

/* MXFP4 rows (mxfp4_dot.h), or a transposed float matrix: each output's dot product
 * over the inputs in order, reading a column of the stored [cols][rows] array. */
static void mxfp4_or_col_major_rows(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    const size_t cols = (size_t)W->cols, rows = (size_t)W->rows;
    for (int r = r0; r < r1; r++)
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * cols;
            float v = 0;
            if (W->col_major)
                for (size_t c = 0; c < cols; c++) v += lm_load_float(W->data, W->dtype, c * rows + (size_t)r) * xt[c];
            else
                v = lm_mxfp4_dot_f32(W, r, xt);
            y[(size_t)t * rows + (size_t)r] = v;
        }
}

static void matmul_task(void *ctx, int task) {
    const matmul_job *j = ctx;
    const lm_mat *W = j->W;
    int r0 = task * j->rows_per_task;
    int r1 = r0 + j->rows_per_task;
    if (r1 > W->rows) r1 = W->rows;
    if (j->a8) {
        if (j->k) j->k->rows_act8(W, r0, r1, j->a8, j->n, j->y);
        else if (j->mxfp4_rows_act8) j->mxfp4_rows_act8(W, r0, r1, j->a8, j->n, j->y);
        else act8_rows_scalar(W, r0, r1, j->a8, j->n, j->y);
        return;
    }
    if (j->k) {
        j->k->rows(W, r0, r1, j->x, j->n, j->y);
        return;
    }
    if (lm_dtype_is_mxfp4(W->dtype) && j->mxfp4_rows) {
        j->mxfp4_rows(W, r0, r1, j->x, j->n, j->y);
        return;
    }
    if (lm_dtype_is_mxfp4(W->dtype) || W->col_major) {
        mxfp4_or_col_major_rows(W, r0, r1, j->x, j->n, j->y);
        return;
    }
    int cols = W->cols, ng = W->dtype == LM_DT_U32 ? cols / W->group_size : 0;
    for (int r = r0; r < r1; r++) {
        for (int t = 0; t < j->n; t++) {
            const float *x = j->x + (size_t)t * (size_t)cols;
            float v;
            switch (W->dtype) {
            case LM_DT_F32: v = dot_f32((const float *)W->data + (size_t)r * (size_t)cols, x, cols); break;
            case LM_DT_BF16: v = dot_bf16((const uint16_t *)W->data + (size_t)r * (size_t)cols, x, cols); break;
            case LM_DT_F16: v = dot_f16((const uint16_t *)W->data + (size_t)r * (size_t)cols, x, cols); break;
            case LM_DT_U32: v = dot_affine(W, r, x, j->xsum ? j->xsum + (size_t)t * (size_t)ng : NULL); break;
            default: v = dot_block(W, r, x); break;
            }
            j->y[(size_t)t * (size_t)W->rows + (size_t)r] = v;
        }
    }
}

/* Rows per task for a matrix: whole tiles of `align` rows (the SIMD tile height), at
 * least 8 tasks per thread so a busy core does not hold the others up. */
static int rows_per_task(int rows, int threads, int align) {
    int tasks = threads * 8;
    int rpt = (rows + tasks - 1) / tasks;
    return (rpt + align - 1) / align * align;
}

/* The SIMD table that computes W under the backend's settings (NULL = scalar). */
static const lm_cpu_kernels *table_for(const cpu_impl *impl, const lm_mat *W, int act8) {
    if (!impl->k || W->col_major) return NULL;
    if (act8) return impl->k->handles_act8 && impl->k->handles_act8(W) ? impl->k : NULL;
    if (lm_dtype_is_mxfp4(W->dtype)) return NULL; /* f32 activations: mxfp4_dot.h */
    return impl->k->handles(W) ? impl->k : NULL;
}
static int uses_act8(const cpu_impl *impl, const lm_mat *W, int n) {
    if (impl->act_bits != 8 || n < impl->act8_min_tokens) return 0;
    if (impl->act8_only_bits)
        return (W->dtype == LM_DT_U32 && W->bits == impl->act8_only_bits) || lm_cuda_act8_block(W->dtype);
    return W->dtype == LM_DT_U32 || lm_qblock_act8(W->dtype);
}
static int q4_block(const lm_cpu_kernels *k, const lm_mat *W) { return k && W->bits == 4 ? k->act8_q4_block : 0; }
/* Rows a task's range is a multiple of: the int8 kernels work on 16-row panels
 * (AVX-512: a row per lane), the others on 4-row tiles. */
static int task_row_align(const cpu_impl *impl, const lm_mat *W, int n) { return uses_act8(impl, W, n) ? 16 : 4; }

/* Tokens per piece so that `per_token` bytes each fit the quantization buffer,
 * which grows to all n tokens when memory allows; smaller pieces give the same
 * results (a token's dot products do not depend on the others in the call). */
static int act8_piece(lm_backend *be, size_t per_token, int n) {
    cpu_impl *impl = be->impl;
    if (act8_reserve(impl, per_token * (size_t)n) != 0 && per_token > impl->a8cap)
        /* lm_backend_cpu_set_act_bits reserved room for the widest input the
         * model declared, so this means a matrix wider than that: a bug. */
        return lm_errf(be->err, "int8 activations need %zu bytes per token, more than the %zu reserved", per_token,
                       impl->a8cap);
    size_t fit = impl->a8cap / per_token;
    return fit < (size_t)n ? (int)fit : n;
}

/* Block types without kernels (IQ2_XXS, IQ3_XXS) are refused by name rather than
 * computed as zeros; MXFP4 has its own (mxfp4_dot.h). */
static int check_block(lm_backend *be, const lm_mat *W) {
    if (lm_dtype_is_block(W->dtype) && !lm_blocks_supported(W->dtype) && W->dtype != LM_DT_MXFP4)
        return lm_errf(be->err, "no CPU kernels for weights of type %s", lm_dtype_name(W->dtype));
    return 0;
}

static int cpu_matmul(lm_backend *be, float *y, const lm_mat *W, const float *x, int n) {
    cpu_impl *impl = be->impl;
    if (check_block(be, W) != 0) return -1;
    int act8 = uses_act8(impl, W, n);
    matmul_job j = {.y = y, .W = W, .x = x, .n = n, .k = table_for(impl, W, act8)};
    const unsigned avx2_fma = LM_CPU_AVX2 | LM_CPU_FMA;
    if (impl->k && lm_dtype_is_mxfp4(W->dtype) && (lm_cpu_features() & avx2_fma) == avx2_fma) {
        j.mxfp4_rows = lm_mxfp4_rows_avx2;
        j.mxfp4_rows_act8 = lm_mxfp4_rows_act8_avx2;
    } else if (impl->k && lm_dtype_is_mxfp4(W->dtype) && (lm_cpu_features() & LM_CPU_NEON)) {
        j.mxfp4_rows = lm_mxfp4_rows_neon;
        j.mxfp4_rows_act8 = lm_mxfp4_rows_act8_neon;
    }
    int rpt = rows_per_task(W->rows, lm_pool_size(impl->pool), task_row_align(impl, W, n));
    j.rows_per_task = rpt;
    int tasks = (W->rows + rpt - 1) / rpt;
    if (act8) {
        int block = q4_block(j.k, W);
        int piece = act8_piece(be, act8_token_bytes(W, block), n);
        if (piece < 0) return -1;
        lm_act8 a;
        for (int t0 = 0; t0 < n; t0 += piece) {
            int tn = n - t0 < piece ? n - t0 : piece;
            act8_prepare(impl, W, x + (size_t)t0 * (size_t)W->cols, tn, block, impl->a8buf, &a);
            j.a8 = &a;
            j.n = tn;
            j.y = y + (size_t)t0 * (size_t)W->rows;
            lm_pool_run(impl->pool, tasks, matmul_task, &j);
        }
        return 0;
    }
    if (W->dtype == LM_DT_U32 && !j.k) {
        int ng = W->cols / W->group_size;
        size_t need = (size_t)n * (size_t)ng;
        if (need > impl->xsum_cap) {
            /* Grows to the largest batch seen (decode then allocates nothing); if
             * memory is short the sums are computed inside each dot instead, with
             * the same result. */
            float *nx = realloc(impl->xsum, need * sizeof(float));
            if (nx) {
                impl->xsum = nx;
                impl->xsum_cap = need;
            }
        }
        for (int t = 0; need <= impl->xsum_cap && t < n; t++)
            for (int g = 0; g < ng; g++) {
                const float *xg = x + (size_t)t * (size_t)W->cols + (size_t)g * (size_t)W->group_size;
                float s = 0;
                for (int i = 0; i < W->group_size; i++) s += xg[i];
                impl->xsum[(size_t)t * (size_t)ng + (size_t)g] = s;
            }
        j.xsum = need <= impl->xsum_cap ? impl->xsum : NULL;
    }
    lm_pool_run(impl->pool, tasks, matmul_task, &j);
    return 0;
}

/* ---- batches of independent matmuls -------------------------------------------------
 *
 * One pool run for many products (an attention's q/k/v, a group of experts' gate and
 * up products, their down products): tasks are row ranges of the items, sized by each
 * item's share of the work, so one hand-over to the threads replaces one per item.
 * Every product is computed exactly as matmul computes it alone. */

typedef struct {
    const lm_cpu_kernels *k;
    const lm_matmul_item *items;
    const lm_act8 *const *a8; /* per item: int8 activations, NULL = f32 */
    const int *first_task;    /* [count + 1]: tasks of item i are [first_task[i], first_task[i+1]) */
    const int *rpt;           /* rows per task of each item */
    int count;
} batch_job;

static void batch_task(void *ctx, int task) {
    const batch_job *j = ctx;
    int lo = 0, hi = j->count - 1; /* the last item whose first task is <= task (skips empty ones) */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (j->first_task[mid] <= task) lo = mid;
        else hi = mid - 1;
    }
    const lm_matmul_item *it = &j->items[lo];
    int r0 = (task - j->first_task[lo]) * j->rpt[lo];
    int r1 = r0 + j->rpt[lo] < it->W->rows ? r0 + j->rpt[lo] : it->W->rows;
    if (j->a8[lo]) j->k->rows_act8(it->W, r0, r1, j->a8[lo], it->n, it->y);
    else j->k->rows(it->W, r0, r1, it->x, it->n, it->y);
}

/* Per-call arrays of a batch, kept in the backend (grown, never shrunk). */
typedef struct {
    int *first_task, *rpt, *share;
    size_t *off;
    const lm_act8 **a8p;
    lm_act8 *a8;
} batch_arrays;

static int batch_reserve(cpu_impl *impl, int count, batch_arrays *b) {
    size_t n = (size_t)count + 1;
    size_t need = n * (3 * sizeof(int) + sizeof(size_t) + sizeof(lm_act8 *) + sizeof(lm_act8));
    if (need > impl->batch_cap) {
        void *p = realloc(impl->batch_mem, need);
        if (!p) return -1;
        impl->batch_mem = p;
        impl->batch_cap = need;
    }
    char *m = impl->batch_mem; /* largest alignment first */
    b->a8 = (void *)m, m += n * sizeof(lm_act8);
    b->off = (void *)m, m += n * sizeof(size_t);
    b->a8p = (void *)m, m += n * sizeof(lm_act8 *);
    b->first_task = (void *)m, m += n * sizeof(int);
    b->rpt = (void *)m, m += n * sizeof(int);
    b->share = (void *)m;
    return 0;
}

/* One matmul per item, for batches the SIMD path does not take. */
static int matmul_each(lm_backend *be, const lm_matmul_item *items, int count) {
    for (int i = 0; i < count; i++)
        if (cpu_matmul(be, items[i].y, items[i].W, items[i].x, items[i].n) != 0) return -1;
    return 0;
}

static int cpu_reserve_batch(lm_backend *be, int max_items) {
    batch_arrays b;
    if (batch_reserve(be->impl, max_items, &b) != 0)
        return lm_errf(be->err, "out of memory for the arrays of %d-item matmul batches", max_items);
    return 0;
}

static int cpu_matmul_batch(lm_backend *be, const lm_matmul_item *items, int count) {
    cpu_impl *impl = be->impl;
    int simd = impl->k != NULL;
    for (int i = 0; i < count && simd; i++) simd = table_for(impl, items[i].W, uses_act8(impl, items[i].W, items[i].n)) != NULL;
    batch_arrays b;
    if (!simd || batch_reserve(impl, count, &b) != 0) return matmul_each(be, items, count); /* the same results */
    /* Int8 items: one quantization per distinct input (gate and up share theirs). */
    size_t a8_bytes = 0;
    for (int i = 0; i < count; i++) {
        const lm_mat *W = items[i].W;
        b.share[i] = -2; /* f32 */
        if (!uses_act8(impl, W, items[i].n) || items[i].n == 0) continue;
        b.share[i] = -1; /* quantized for this item */
        for (int p = 0; p < i && b.share[i] == -1; p++) {
            const lm_mat *P = items[p].W;
            if (b.share[p] == -1 && items[p].x == items[i].x && items[p].n == items[i].n && P->cols == W->cols &&
                act8_gs(P) == act8_gs(W) && lm_qblock_form(P->dtype) == lm_qblock_form(W->dtype) && q4_block(impl->k, P) == q4_block(impl->k, W))
                b.share[i] = p;
        }
        if (b.share[i] == -1) {
            b.off[i] = a8_bytes;
            a8_bytes += act8_token_bytes(W, q4_block(impl->k, W)) * (size_t)items[i].n;
        }
    }
    if (a8_bytes && act8_reserve(impl, a8_bytes) != 0) return matmul_each(be, items, count); /* pieces of tokens */
    for (int i = 0; i < count; i++) {
        b.a8p[i] = NULL;
        if (b.share[i] == -1)
            act8_prepare(impl, items[i].W, items[i].x, items[i].n, q4_block(impl->k, items[i].W),
                         impl->a8buf + b.off[i], &b.a8[i]);
        if (b.share[i] >= 0) b.a8[i] = b.a8[b.share[i]];
        if (b.share[i] != -2) b.a8p[i] = &b.a8[i];
    }
    /* Tasks: about 8 per thread over the whole batch, each item's count in
     * proportion to its work, in whole tiles (task_row_align). */
    double total = 0;
    for (int i = 0; i < count; i++) total += (double)items[i].W->rows * items[i].W->cols * items[i].n;
    double per_task = total / (8.0 * lm_pool_size(impl->pool)) + 1;
    b.first_task[0] = 0;
    for (int i = 0; i < count; i++) {
        const lm_mat *W = items[i].W;
        int tasks = 0;
        const int align = task_row_align(impl, W, items[i].n);
        b.rpt[i] = align;
        if (items[i].n > 0 && W->rows > 0) {
            double want = (double)W->rows * W->cols * items[i].n / per_task;
            int most = (W->rows + align - 1) / align;
            tasks = want < 1 ? 1 : want > most ? most : (int)want;
            b.rpt[i] = ((W->rows + tasks - 1) / tasks + align - 1) / align * align;
            tasks = (W->rows + b.rpt[i] - 1) / b.rpt[i];
        }
        b.first_task[i + 1] = b.first_task[i] + tasks;
    }
    batch_job j = {.k = impl->k, .items = items, .a8 = b.a8p, .first_task = b.first_task, .rpt = b.rpt,
                   .count = count};
    if (b.first_task[count] > 0) lm_pool_run(impl->pool, b.first_task[count], batch_task, &j);
    return 0;
}

/* ---- elementwise ------------------------------------------------------------------ */

/* Elementwise work is split over the pool by tokens (or element ranges) once it is
 * large enough to pay for the hand-over; every element is computed the same way
 * whoever computes it. */
#define ELEMENTWISE_MIN 16384 /* elements below which the calling thread does it alone */

typedef struct {
    float *y;
    const float *x, *w;
    int n, dim, per_task;
    float eps;
} rmsnorm_job;

static void rmsnorm_task(void *ctx, int task) {
    const rmsnorm_job *j = ctx;
    int t1 = (task + 1) * j->per_task < j->n ? (task + 1) * j->per_task : j->n;
    for (int t = task * j->per_task; t < t1; t++) {
        const float *xt = j->x + (size_t)t * (size_t)j->dim;
        float *yt = j->y + (size_t)t * (size_t)j->dim;
        float ss = 0;
        for (int i = 0; i < j->dim; i++) ss += xt[i] * xt[i];
        float inv = 1.0f / sqrtf(ss / (float)j->dim + j->eps);
        for (int i = 0; i < j->dim; i++) yt[i] = j->w[i] * (xt[i] * inv);
    }
}

/* Tasks for n rows of `row` elements: one per ~ELEMENTWISE_MIN elements, at most 4 per thread. */
static int row_tasks(const cpu_impl *impl, int n, size_t row, int *per_task) {
    size_t total = (size_t)n * row;
    int tasks = total < ELEMENTWISE_MIN ? 1 : (int)(total / ELEMENTWISE_MIN);
    int most = 4 * lm_pool_size(impl->pool);
    if (tasks > most) tasks = most;
    if (tasks > n) tasks = n;
    if (tasks < 1) tasks = 1;
    *per_task = (n + tasks - 1) / tasks;
    return (n + *per_task - 1) / *per_task;
}

static int cpu_rmsnorm(lm_backend *be, float *y, const float *x, const float *w, int n, int dim, float eps) {
    cpu_impl *impl = be->impl;
    rmsnorm_job j = {.y = y, .x = x, .w = w, .n = n, .dim = dim, .eps = eps};
    int tasks = row_tasks(impl, n, (size_t)dim, &j.per_task);
    if (tasks <= 1) rmsnorm_task(&j, 0);
    else lm_pool_run(impl->pool, tasks, rmsnorm_task, &j);
    return 0;
}

typedef struct {
    float *x;
    int n, n_heads, head_dim, half, per_task;
    const int32_t *pos;
    const float *inv_freq;
    float scale;
} rope_job;

static void rope_task(void *ctx, int task) {
    const rope_job *j = ctx;
    int t1 = (task + 1) * j->per_task < j->n ? (task + 1) * j->per_task : j->n;
    for (int t = task * j->per_task; t < t1; t++) {
        float p = (float)j->pos[t];
        for (int i = 0; i < j->half; i++) {
            float ang = p * j->inv_freq[i];
            float c = cosf(ang) * j->scale, s = sinf(ang) * j->scale; /* exact when scale is 1 */
            for (int h = 0; h < j->n_heads; h++) {
                float *xh = j->x + ((size_t)t * (size_t)j->n_heads + (size_t)h) * (size_t)j->head_dim;
                float x1 = xh[i], x2 = xh[i + j->half];
                xh[i] = x1 * c - x2 * s;
                xh[i + j->half] = x2 * c + x1 * s;
            }
        }
    }
}

static int cpu_rope(lm_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                     const float *inv_freq, int half, float scale) {
    cpu_impl *impl = be->impl;
    rope_job j = {.x = x, .n = n, .n_heads = n_heads, .head_dim = head_dim, .half = half, .pos = pos,
                  .inv_freq = inv_freq, .scale = scale};
    /* cosf/sinf per (token, frequency) cost like many elements each */
    int tasks = row_tasks(impl, n, (size_t)n_heads * (size_t)head_dim * 4, &j.per_task);
    if (tasks <= 1) rope_task(&j, 0);
    else lm_pool_run(impl->pool, tasks, rope_task, &j);
    return 0;
}

typedef struct {
    float *g;
    const float *u;
    size_t n, per_task;
} swiglu_job;

static void swiglu_task(void *ctx, int task) {
    const swiglu_job *j = ctx;
    size_t i1 = ((size_t)task + 1) * j->per_task < j->n ? ((size_t)task + 1) * j->per_task : j->n;
    for (size_t i = (size_t)task * j->per_task; i < i1; i++) {
        float a = j->g[i];
        j->g[i] = a / (1.0f + expf(-a)) * j->u[i];
    }
}

static int cpu_swiglu(lm_backend *be, float *g, const float *u, size_t n) {
    cpu_impl *impl = be->impl;
    swiglu_job j = {.g = g, .u = u, .n = n, .per_task = n};
    /* expf costs like several elements of a norm: split from a quarter of the usual size */
    size_t tasks = n / (ELEMENTWISE_MIN / 4), most = 4 * (size_t)lm_pool_size(impl->pool);
    if (tasks > most) tasks = most;
    if (tasks <= 1) {
        swiglu_task(&j, 0);
        return 0;
    }
    j.per_task = (n + tasks - 1) / tasks;
    lm_pool_run(impl->pool, (int)((n + j.per_task - 1) / j.per_task), swiglu_task, &j);
    return 0;
}

/* ---- KV cache ----------------------------------------------------------------------- */

static int cpu_kv_store(lm_backend *be, lm_kv *c, int pos0, const float *src, int n, int n_kv, int hd) {
    (void)be;
    size_t row = (size_t)n_kv * (size_t)hd;
    for (int t = 0; t < n; t++) {
        const float *s = src + (size_t)t * row;
        size_t base = (size_t)(pos0 + t) * row;
        if (c->dtype == LM_DT_F32) {
            memcpy((float *)c->data + base, s, sizeof(float) * row);
        } else if (c->dtype == LM_DT_F16) {
            uint16_t *d = (uint16_t *)c->data + base;
            for (size_t i = 0; i < row; i++) d[i] = lm_f32_to_f16(s[i]);
        } else { /* I8: symmetric, one scale per (position, kv head) */
            for (int h = 0; h < n_kv; h++) {
                const float *x = s + (size_t)h * (size_t)hd;
                int8_t *d = (int8_t *)c->data + base + (size_t)h * (size_t)hd;
                float amax = 0;
                for (int i = 0; i < hd; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
                float scale = amax / 127.0f;
                for (int i = 0; i < hd; i++) {
                    float q = scale > 0 ? nearbyintf(x[i] / scale) : 0.0f;
                    d[i] = (int8_t)(q > 127 ? 127 : (q < -127 ? -127 : q));
                }
                c->scales[(size_t)(pos0 + t) * (size_t)n_kv + (size_t)h] = scale;
            }
        }
    }
    return 0;
}

/* ---- attention -------------------------------------------------------------------- */

/* Keys per tile: one tile of K or V widened to f32 is at most this many floats. */
#define ATTN_TILE_FLOATS 8192
#define ATTN_TILE_MAX 64
#define ATTN_TILE_HEADS 64 /* query heads one task handles at most */
#define ATTN_QUERY_BLOCK 64 /* query tokens one task handles at most */

static int attn_tile(int hd) {
    int t = ATTN_TILE_FLOATS / hd;
    return t < 1 ? 1 : (t > ATTN_TILE_MAX ? ATTN_TILE_MAX : t);
}

typedef struct {
    const cpu_impl *impl;
    float *out;
    const float *q;
    const lm_kv *k, *v;
    int n, pos0, n_heads, n_kv, hd, window, heads_per_task, kv_per_task, qblock;
    float scale;
    const float *sinks; /* [n_heads] or NULL */
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float *y, float a, const float *x, int n);
    void (*dot_rows)(float *out, const float *q, const float *x, size_t stride, int cnt, int n); /* or NULL */
    void (*axpy_rows)(float *y, const float *e, const float *x, size_t stride, int cnt, int n);  /* or NULL */
    void (*dot_rows2)(float *o0, float *o1, const float *q0, const float *q1, const float *x, size_t stride, int cnt,
                      int n); /* or NULL */
    void (*axpy_rows2)(float *y0, float *y1, const float *e0, const float *e1, const float *x, size_t stride, int cnt,
                       int n); /* or NULL */
    float (*attn_exp)(float *e, int cnt, float m); /* or NULL */
    float (*scale_max)(float *s, int cnt, float scale, float m); /* or NULL */
    const lm_cpu_kernels *f16; /* its *_f16 tile functions read an f16 K and V in place, or NULL */
} attn_job;

static void axpy_scalar(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* Rows p0..p0+cnt-1 of kv head kvh as f32: in place for F32 caches (row stride
 * n_kv*hd), else widened into buf (row stride hd). Widening is exact, so every
 * path gives the same floats. */
static const float *kv_rows(const attn_job *j, const lm_kv *c, int p0, int cnt, int kvh, float *buf, size_t *stride) {
    size_t row = (size_t)j->n_kv * (size_t)j->hd, hd = (size_t)j->hd;
    size_t first = (size_t)p0 * row + (size_t)kvh * hd;
    if (c->dtype == LM_DT_F32) {
        *stride = row;
        return (const float *)c->data + first;
    }
    *stride = hd;
    for (int r = 0; r < cnt; r++) {
        float *d = buf + (size_t)r * hd;
        if (c->dtype == LM_DT_F16) {
            const uint16_t *src = (const uint16_t *)c->data + first + (size_t)r * row;
            if (j->impl->k && j->impl->k->f16_to_f32) j->impl->k->f16_to_f32(d, src, j->hd);
            else for (size_t i = 0; i < hd; i++) d[i] = lm_f16_to_f32(src[i]);
        } else {
            const int8_t *src = (const int8_t *)c->data + first + (size_t)r * row;
            float sc = c->scales[(size_t)(p0 + r) * (size_t)j->n_kv + (size_t)kvh];
            for (size_t i = 0; i < hd; i++) d[i] = sc * (float)src[i];
        }
    }
    return buf;
}

/* Asks the memory for rows p0..p0+cnt-1 of kv head kvh ahead of their use: one head's
 * slice of each cache row is too scattered for the hardware prefetcher to run ahead,
 * and decode computes too little per tile to hide the wait. */
static void kv_prefetch(const attn_job *j, const lm_kv *c, int p0, int cnt, int kvh) {
    size_t es = c->dtype == LM_DT_F32 ? 4 : c->dtype == LM_DT_F16 ? 2 : 1;
    size_t row = (size_t)j->n_kv * (size_t)j->hd * es, bytes = (size_t)j->hd * es;
    const char *base = (const char *)c->data + (size_t)p0 * row + (size_t)kvh * bytes;
    for (int r = 0; r < cnt; r++)
        for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(base + (size_t)r * row + b);
}

/* A block of consecutive query tokens (prefill without a window; one token otherwise),
 * and for each of the task's kv heads one run of the query heads sharing it: online
 * softmax over the visible keys tile by tile (tiles counted from the first visible
 * position), so memory stays O(tile) at any context length, and each K/V tile is
 * widened once for all the tokens and heads of the task -- a long prompt's attention
 * then costs its dot products, not a widening of the whole cache per query. A task of
 * several kv heads (decode) takes their rows of a tile one after the other, so it
 * reads whole cache rows instead of one head's slice of each. Each (token, head) does
 * the same arithmetic in the same order whatever block, run or task it is in, so
 * results do not depend on the blocking (a query alone equals it in a prompt, bit for
 * bit). */
static void attn_task(void *ctx, int task) {
    const attn_job *j = ctx;
    int group = j->n_heads / j->n_kv, nh = j->heads_per_task, kvpt = j->kv_per_task;
    int chunks = group / nh, per_block = j->n_kv / kvpt * chunks;
    int tb = task / per_block, rest = task % per_block;
    int kvh0 = rest / chunks * kvpt, hc = (rest % chunks) * nh; /* first kv head; first head in each group */
    int hd = j->hd, tile = attn_tile(hd);
    const float scale = j->scale;
    int t0 = tb * j->qblock, t1 = t0 + j->qblock < j->n ? t0 + j->qblock : j->n;
    int last = j->pos0 + t1 - 1, first = 0; /* the block's last position; a window means one token a block */
    if (j->window > 0 && j->pos0 + t0 - j->window + 1 > 0) first = j->pos0 + t0 - j->window + 1;
    /* A block of one token reads an f16 cache in place where the table can: a widened
     * copy pays off only when several tokens share it. */
    const lm_cpu_kernels *hf = t1 - t0 == 1 ? j->f16 : NULL;
    float kbuf[ATTN_TILE_FLOATS], vbuf[ATTN_TILE_FLOATS];
    float sc[ATTN_TILE_HEADS][ATTN_TILE_MAX];
    /* running max and sum per token and head: [t - t0][g * nh + i] for head i of kv head kvh0 + g */
    float m[ATTN_QUERY_BLOCK][ATTN_TILE_HEADS], l[ATTN_QUERY_BLOCK][ATTN_TILE_HEADS];
#define ATTN_OUT(t, g, i) \
    (j->out + ((size_t)(t) * (size_t)j->n_heads + (size_t)((kvh0 + (g)) * group + hc + (i))) * (size_t)hd)
    for (int t = t0; t < t1; t++)
        for (int g = 0; g < kvpt; g++)
            for (int i = 0; i < nh; i++) {
                m[t - t0][g * nh + i] = -INFINITY;
                l[t - t0][g * nh + i] = 0;
                float *o = ATTN_OUT(t, g, i);
                for (int d = 0; d < hd; d++) o[d] = 0;
            }
    for (int p0 = first; p0 <= last; p0 += tile) {
        int cnt_all = last - p0 + 1 < tile ? last - p0 + 1 : tile;
        for (int g = 0; g < kvpt; g++) {
            int kvh = kvh0 + g;
            size_t ks, vs;
            int pf = p0 + tile; /* this kv head's rows of the next tile */
            if (pf <= last) {
                kv_prefetch(j, j->k, pf, last - pf + 1 < tile ? last - pf + 1 : tile, kvh);
                kv_prefetch(j, j->v, pf, last - pf + 1 < tile ? last - pf + 1 : tile, kvh);
            }
            const float *kr = NULL, *vr = NULL;
            const uint16_t *kh = NULL, *vh = NULL; /* the f16 rows in place, for a block of one token */
            if (hf) {
                size_t first_el = (size_t)p0 * (size_t)j->n_kv * (size_t)hd + (size_t)kvh * (size_t)hd;
                kh = (const uint16_t *)j->k->data + first_el, vh = (const uint16_t *)j->v->data + first_el;
                ks = vs = (size_t)j->n_kv * (size_t)hd;
            } else {
                kr = kv_rows(j, j->k, p0, cnt_all, kvh, kbuf, &ks);
                vr = kv_rows(j, j->v, p0, cnt_all, kvh, vbuf, &vs);
            }
            for (int t = t0; t < t1; t++) {
                int pos = j->pos0 + t;
                if (pos < p0) continue; /* this tile is in the token's future */
                int cnt = pos - p0 + 1 < tile ? pos - p0 + 1 : tile;
                float *mr = m[t - t0] + g * nh, *lr = l[t - t0] + g * nh, mt[ATTN_TILE_HEADS];
                const float *qt = j->q + ((size_t)t * (size_t)j->n_heads + (size_t)(kvh * group + hc)) * (size_t)hd;
                int i = 0; /* the scores of the heads, two at a time where the table shares the key loads */
                if (hf) {
                    for (; i + 2 <= nh; i += 2)
                        hf->dot_rows2_f16(sc[i], sc[i + 1], qt + (size_t)i * hd, qt + (size_t)(i + 1) * hd, kh, ks, cnt,
                                          hd);
                    for (; i < nh; i++) hf->dot_rows_f16(sc[i], qt + (size_t)i * hd, kh, ks, cnt, hd);
                }
                if (j->dot_rows2)
                    for (; i + 2 <= nh; i += 2)
                        j->dot_rows2(sc[i], sc[i + 1], qt + (size_t)i * hd, qt + (size_t)(i + 1) * hd, kr, ks, cnt, hd);
                for (; i < nh; i++) {
                    const float *q = qt + (size_t)i * hd;
                    if (j->dot_rows) j->dot_rows(sc[i], q, kr, ks, cnt, hd);
                    else
                        for (int r = 0; r < cnt; r++) sc[i][r] = j->dot(kr + (size_t)r * ks, q, hd);
                }
                for (i = 0; i < nh; i++) {
                    if (j->scale_max) {
                        mt[i] = j->scale_max(sc[i], cnt, scale, mr[i]);
                        continue;
                    }
                    float mx = mr[i];
                    for (int r = 0; r < cnt; r++) {
                        sc[i][r] *= scale;
                        mx = sc[i][r] > mx ? sc[i][r] : mx;
                    }
                    mt[i] = mx;
                }
                for (i = 0; i < nh; i++) {
                    float *o = ATTN_OUT(t, g, i);
                    if (mt[i] > mr[i]) {
                        float corr = lm_attn_exp(mr[i] - mt[i]); /* 0 on the first tile */
                        lr[i] *= corr;
                        for (int d = 0; d < hd; d++) o[d] *= corr;
                        mr[i] = mt[i];
                    }
                    float *e = sc[i], mi = mr[i], li = lr[i]; /* the scores become their weights, in place */
                    if (j->attn_exp) li += j->attn_exp(e, cnt, mi);
                    else
                        for (int r = 0; r < cnt; r++) {
                            e[r] = lm_attn_exp(e[r] - mi);
                            li += e[r];
                        }
                    lr[i] = li;
                }
                i = 0; /* the weighted values, two heads at a time where the table shares the loads */
                if (hf) {
                    for (; i + 2 <= nh; i += 2)
                        hf->axpy_rows2_f16(ATTN_OUT(t, g, i), ATTN_OUT(t, g, i + 1), sc[i], sc[i + 1], vh, vs, cnt, hd);
                    for (; i < nh; i++) hf->axpy_rows_f16(ATTN_OUT(t, g, i), sc[i], vh, vs, cnt, hd);
                }
                if (j->axpy_rows2)
                    for (; i + 2 <= nh; i += 2)
                        j->axpy_rows2(ATTN_OUT(t, g, i), ATTN_OUT(t, g, i + 1), sc[i], sc[i + 1], vr, vs, cnt, hd);
                for (; i < nh; i++) {
                    float *o = ATTN_OUT(t, g, i);
                    if (j->axpy_rows) j->axpy_rows(o, sc[i], vr, vs, cnt, hd);
                    else
                        for (int r = 0; r < cnt; r++) j->axpy(o, sc[i][r], vr + (size_t)r * vs, hd);
                }
            }
        }
    }
    for (int t = t0; t < t1; t++)
        for (int g = 0; g < kvpt; g++)
            for (int i = 0; i < nh; i++) {
                float *o = ATTN_OUT(t, g, i);
                float *mr = m[t - t0] + g * nh, *lr = l[t - t0] + g * nh;
                if (j->sinks) { /* one more logit in the denominator, with no value */
                    float sink = j->sinks[(kvh0 + g) * group + hc + i];
                    if (sink > mr[i]) {
                        float corr = lm_attn_exp(mr[i] - sink);
                        lr[i] *= corr;
                        for (int d = 0; d < hd; d++) o[d] *= corr;
                        mr[i] = sink;
                    }
                    lr[i] += lm_attn_exp(sink - mr[i]);
                }
                float inv = 1.0f / lr[i];
                for (int d = 0; d < hd; d++) o[d] *= inv;
            }
#undef ATTN_OUT
}

static int cpu_attention(lm_backend *be, float *out, const float *q, const lm_kv *k, const lm_kv *v, int n,
                         int pos0, int n_heads, int n_kv, int hd, float scale, int window, const float *sinks) {
    cpu_impl *impl = be->impl;
    /* Block the queries (without a window, whose tiles start at each token's own first
     * position), as many per task as still leaves two tasks per thread. With a single
     * block (decode), give each task several kv heads while there are still as many
     * tasks as threads: each task then reads whole cache rows (a task of one kv head
     * reads a 1/n_kv slice of every row, and the memory brings in the rest anyway).
     * Otherwise split each kv head's query group in halves until there are two tasks
     * per thread. A head's arithmetic is the same whichever task it is in. */
    int group = n_heads / n_kv, hpt = group, kvpt = 1, threads = lm_pool_size(impl->pool);
    int qb = window > 0 ? 1 : ATTN_QUERY_BLOCK;
    while (qb > 1 && (size_t)((n + qb - 1) / qb) * (size_t)n_kv < 2 * (size_t)threads) qb /= 2;
    int blocks = (n + qb - 1) / qb;
    if (blocks == 1 && group <= ATTN_TILE_HEADS)
        while (n_kv % (2 * kvpt) == 0 && n_kv / (2 * kvpt) >= threads && 2 * kvpt * group <= ATTN_TILE_HEADS)
            kvpt *= 2;
    if (kvpt == 1) {
        while (hpt % 2 == 0 && (size_t)blocks * (size_t)n_kv * (size_t)(group / hpt) < 2 * (size_t)threads) hpt /= 2;
        while (hpt > ATTN_TILE_HEADS) hpt = hpt % 2 == 0 ? hpt / 2 : 1;
    }
    attn_job j = {impl, out, q, k, v, n, pos0, n_heads, n_kv, hd, window, hpt, kvpt, qb, scale, sinks, dot_f32,
                  axpy_scalar, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    if (impl->k && impl->k->dot) j.dot = impl->k->dot, j.axpy = impl->k->axpy;
    if (impl->k) j.attn_exp = impl->k->attn_exp, j.scale_max = impl->k->attn_scale_max;
    if (impl->k && impl->k->dot_rows_f16 && k->dtype == LM_DT_F16 && v->dtype == LM_DT_F16) j.f16 = impl->k;
    if (impl->k && impl->k->dot_rows && impl->k->axpy_rows) j.dot_rows = impl->k->dot_rows, j.axpy_rows = impl->k->axpy_rows;
    if (j.dot_rows && impl->k->dot_rows2 && impl->k->axpy_rows2)
        j.dot_rows2 = impl->k->dot_rows2, j.axpy_rows2 = impl->k->axpy_rows2;
    lm_pool_run(impl->pool, blocks * (n_kv / kvpt) * (group / hpt), attn_task, &j);
    return 0;
}

static void cpu_destroy(lm_backend *be);

static const lm_backend_ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = lm_cpu_alloc,
    .free = lm_cpu_free,
    .upload = lm_cpu_copy,
    .download = lm_cpu_copy,
    .copy = lm_cpu_copy,
    .reserve_batch = cpu_reserve_batch,
    .sync = lm_cpu_sync,
    .matmul = cpu_matmul,
    .matmul_batch = cpu_matmul_batch,
    .embed = lm_cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .add = lm_cpu_add,
    .add_rows = lm_cpu_add_rows,
    .clamp = lm_cpu_clamp,
    .copy_rows = lm_cpu_copy_rows,
    .sigmoid_mul = lm_cpu_sigmoid_mul,
    .swiglu = cpu_swiglu,
    .swiglu_clamped = lm_cpu_swiglu_clamped,
    .swiglu_clamped_split = lm_cpu_swiglu_clamped_split,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .route = lm_cpu_route,
    .gather_rows = lm_cpu_gather_rows,
    .scatter_rows = lm_cpu_scatter_rows,
    .moe_combine = lm_cpu_moe_combine,
    .weights_changed = NULL, /* weights are read in place */
    .destroy = cpu_destroy,
};

/* SIMD tables in order of preference. */
static const lm_cpu_kernels *const simd_tables[] = {&lm_cpu_kernels_avx512, &lm_cpu_kernels_avx2,
                                                    &lm_cpu_kernels_neon};

/* "auto" (or NULL/empty): the best table the CPU runs; "scalar": none; a table's
 * name: that one, or an error when this CPU or build cannot run it. */
static int pick_kernels(const char *want, const lm_cpu_kernels **out, char *err) {
    size_t n = sizeof simd_tables / sizeof simd_tables[0];
    *out = NULL;
    if (!want || !*want || !strcmp(want, "auto")) {
        for (size_t i = 0; i < n && !*out; i++)
            if (simd_tables[i]->available()) *out = simd_tables[i];
        return 0;
    }
    if (!strcmp(want, "scalar")) return 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(want, simd_tables[i]->name) != 0) continue;
        if (!simd_tables[i]->available())
            return lm_errf(err, "kernels '%s' need %s, which this CPU or build lacks; use auto or scalar", want,
                           simd_tables[i]->requires);
        *out = simd_tables[i];
        return 0;
    }
    return lm_errf(err, "unknown kernels '%s' (choose auto, scalar, avx512, avx2 or neon)", want);
}

int lm_backend_cpu_create_with(lm_backend **out, int n_threads, const char *kernels, char *err) {
    *out = NULL;
    if (n_threads <= 0) n_threads = lm_cpu_count();
    const lm_cpu_kernels *k;
    if (pick_kernels(kernels, &k, err) != 0) return -1;
    lm_backend *be = calloc(1, sizeof *be);
    cpu_impl *impl = calloc(1, sizeof *impl);
    if (!be || !impl) {
        free(be);
        free(impl);
        return lm_errf(err, "out of memory");
    }
    if (lm_pool_create(&impl->pool, n_threads, err) != 0) {
        free(be);
        free(impl);
        return -1;
    }
    impl->k = k;
    impl->act_bits = 32;
    be->ops = &cpu_ops;
    be->impl = impl;
    *out = be;
    return 0;
}

int lm_backend_cpu_create(lm_backend **out, int n_threads, char *err) {
    return lm_backend_cpu_create_with(out, n_threads, getenv("LAZYMOE_KERNELS"), err);
}

int lm_backend_cpu_set_act_bits(lm_backend *be, int bits, int max_cols, char *err) {
    if (be->ops != &cpu_ops)
        return lm_errf(err, "activation bits are a CPU backend setting; the %s backend takes f32 activations (--act-bits 32)",
                       be->ops->name);
    cpu_impl *impl = be->impl;
    if (bits != 8 && bits != 32) return lm_errf(err, "activation bits %d are not supported (choose 8 or 32)", bits);
    if (bits == 8) {
        /* One token of the widest input for a few distinct inputs, at the smallest
         * MLX group size (the most scales per column): matmul always fits. */
        lm_mat widest = {.dtype = LM_DT_U32, .rows = 1, .cols = max_cols < 32 ? 32 : max_cols, .bits = 4,
                         .group_size = 32};
        lm_mat widest_block = {.dtype = LM_DT_Q8_0, .rows = 1, .cols = (max_cols + 63) / 64 * 64};
        size_t per = act8_token_bytes(&widest, 128) + act8_token_bytes(&widest_block, 0) + 64;
        if (act8_reserve(impl, (size_t)8 * per) != 0)
            return lm_errf(err, "out of memory for int8 activations (%zu bytes)", (size_t)8 * per);
    }
    impl->act_bits = bits;
    return 0;
}

void lm_backend_cpu_set_act8_scope(lm_backend *be, int min_tokens, int only_bits) {
    if (be->ops != &cpu_ops) return;
    cpu_impl *impl = be->impl;
    impl->act8_min_tokens = min_tokens;
    impl->act8_only_bits = only_bits;
}

const char *lm_backend_cpu_kernels(const lm_backend *be) {
    if (be->ops != &cpu_ops) return be->ops->name; /* not a CPU backend: its own name */
    const cpu_impl *impl = be->impl;
    return impl->k ? impl->k->name : "scalar";
}

static void cpu_destroy(lm_backend *be) {
    cpu_impl *impl = be->impl;
    lm_pool_free(impl->pool);
    free(impl->xsum);
    free(impl->a8buf);
    free(impl->batch_mem);
    free(impl);
    free(be);
}

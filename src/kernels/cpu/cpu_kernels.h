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

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Activations quantized to int8 for affine matmuls (lm_backend_cpu_set_act_bits 8).
 * Per token and per weight group g (the matrix's group size): step dx_g =
 * max|x_g| / 127, q_i = round-to-nearest-even(x_i * 127 / max|x_g|) in -127..127,
 * and xsum_g = the f32 sum of the unquantized x_g. A (row, token) dot product is
 *   sum_g  (scale_g * dx_g) * I_g  +  bias_g * xsum_g,   I_g = sum_{i in g} q_w,i * q_i
 * with I_g exact in int32; only the f32 combination of the groups differs between
 * tables (order of additions). Every table quantizes to the same values
 * (lm_act8_quantize), so the integer parts agree exactly across tables.
 * The values of token t are at q + t * q_stride, laid out for the table: for 4-bit
 * weights a table may ask for blocks of `q4_block` values stored as the block's
 * even-indexed values, then its odd-indexed ones (so nibbles unpacked with a mask
 * and a shift meet their activation without a shuffle); 0 = natural order. */
typedef struct {
    const int8_t *q;
    size_t q_stride;
    const float *dx, *xsum; /* [n][ng_stride]; at least LM_ACT8_PAD readable past ng */
    int ng_stride;
    /* ggml block weights only (group size 32, natural order; qblock.h): the sum of
     * each 16 consecutive q of token t, at qsum16 + t * qsum16_stride. */
    const int32_t *qsum16;
    size_t qsum16_stride;
} lm_act8;
#define LM_ACT8_PAD 16

/* Token t's view of the activations (the tokens from t on). */
static inline lm_act8 lm_act8_token(const lm_act8 *a, int t) {
    lm_act8 at = *a;
    at.q += (size_t)t * a->q_stride;
    at.dx += (size_t)t * (size_t)a->ng_stride;
    at.xsum += (size_t)t * (size_t)a->ng_stride;
    if (a->qsum16) at.qsum16 += (size_t)t * a->qsum16_stride;
    return at;
}
#define LM_ACT8_MAX_BLOCK 256 /* largest q4_block */

/* Quantizes tokens x[n][cols] for group size gs into a (q: n * q_stride bytes,
 * dx and xsum: n * ng_stride floats). The padding past cols (up to q_stride) and
 * past ng is zero. */
void lm_act8_quantize(const float *x, int n, int cols, int gs, int q4_block, int8_t *q, size_t q_stride,
                      float *dx, float *xsum, int ng_stride);
typedef void (*lm_act8_quantize_fn)(const float *x, int n, int cols, int gs, int q4_block, int8_t *q,
                                    size_t q_stride, float *dx, float *xsum, int ng_stride);
/* One token's values qt[cols] in natural order -> the q4_block layout, from column
 * `first` (a multiple of q4_block) on; the padding up to the last block is zeroed. */
void lm_act8_interleave(int8_t *qt, int cols, int q4_block, int first);

/* The exponential of attention's softmax, one definition for every table and path
 * (prefill, decode, chunked prefill; scalar, AVX2, AVX-512, NEON), so that lazy and
 * resident runs and a sequence alone or batched stay bit-identical: libm's expf
 * cannot be matched in SIMD. exp(x) = 2^n p(r): n = x / ln 2 rounded to nearest
 * (fma with a 1.5 * 2^23 shift), r = x - n ln 2 (ln 2 in two parts, two fmas), p the
 * Cephes degree-7 polynomial in Horner form (fmas), 2^n put in the exponent field.
 * x < -87 (and -inf) gives 0 (exp(-87) is 1.6e-38: nothing next to a softmax's
 * largest weight, 1), x > 88 is taken as 88, NaN stays NaN. Within 2 ulp of exp
 * (tests/test_kernels.c measures it). Each SIMD table does these same IEEE operations
 * lane by lane, so its lanes equal this function bit for bit. */
#define LM_ATTN_EXP_LO (-87.0f)
#define LM_ATTN_EXP_HI 88.0f
#define LM_ATTN_EXP_LOG2E 1.44269504088896341f
#define LM_ATTN_EXP_SHIFT 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer */
#define LM_ATTN_EXP_LN2_HI 0.693359375f
#define LM_ATTN_EXP_LN2_LO (-2.12194440e-4f)
#define LM_ATTN_EXP_P0 1.9875691500e-4f
#define LM_ATTN_EXP_P1 1.3981999507e-3f
#define LM_ATTN_EXP_P2 8.3334519073e-3f
#define LM_ATTN_EXP_P3 4.1665795894e-2f
#define LM_ATTN_EXP_P4 1.6666665459e-1f
#define LM_ATTN_EXP_P5 5.0000001201e-1f
static inline float lm_attn_exp(float x) {
    if (x != x) return x;
    if (x < LM_ATTN_EXP_LO) return 0.0f;
    if (x > LM_ATTN_EXP_HI) x = LM_ATTN_EXP_HI;
    float k = fmaf(x, LM_ATTN_EXP_LOG2E, LM_ATTN_EXP_SHIFT);
    float n = k - LM_ATTN_EXP_SHIFT; /* an integer, -126..127 */
    float r = fmaf(n, -LM_ATTN_EXP_LN2_HI, x);
    r = fmaf(n, -LM_ATTN_EXP_LN2_LO, r);
    float p = fmaf(LM_ATTN_EXP_P0, r, LM_ATTN_EXP_P1);
    p = fmaf(p, r, LM_ATTN_EXP_P2);
    p = fmaf(p, r, LM_ATTN_EXP_P3);
    p = fmaf(p, r, LM_ATTN_EXP_P4);
    p = fmaf(p, r, LM_ATTN_EXP_P5);
    float r2 = r * r;
    float y = fmaf(p, r2, r);
    y = y + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

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
    /* Int8 activations (optional, NULL = the scalar reference does them): which
     * affine matrices rows_act8 takes, and y[t][W->rows] rows r0..r1-1 for n tokens. */
    int (*handles_act8)(const lm_mat *W);
    void (*rows_act8)(const lm_mat *W, int r0, int r1, const lm_act8 *x, int n, float *y);
    int act8_q4_block; /* see lm_act8 */
    /* lm_act8_quantize in SIMD, byte for byte the same (NULL = the scalar one). */
    lm_act8_quantize_fn act8_quantize;
    /* Attention over a tile of rows (optional, NULL = loops of dot and axpy), each
     * bit for bit what those loops give: out[r] = dot(x + r * stride, q, n) for
     * r < cnt, and for r = 0..cnt-1 in order y[i] += e[r] * x[r * stride + i]
     * (y held in registers across the rows instead of stored after each). */
    void (*dot_rows)(float *out, const float *q, const float *x, size_t stride, int cnt, int n);
    void (*axpy_rows)(float *y, const float *e, const float *x, size_t stride, int cnt, int n);
    /* The same for two heads of a kv group against the same rows, each row loaded once
     * for both (optional, both or neither; NULL = the functions above per head), each
     * result bit for bit what those give: dot_rows2 is dot_rows of q0 into o0 and of q1
     * into o1, axpy_rows2 is axpy_rows of e0 into y0 and of e1 into y1. */
    void (*dot_rows2)(float *o0, float *o1, const float *q0, const float *q1, const float *x, size_t stride, int cnt,
                      int n);
    void (*axpy_rows2)(float *y0, float *y1, const float *e0, const float *e1, const float *x, size_t stride, int cnt,
                       int n);
    /* e[r] = lm_attn_exp(e[r] - m) for r < cnt, bit for bit, and returns their sum in
     * the table's fixed order (NULL = that loop, and the sum left to the caller). */
    float (*attn_exp)(float *e, int cnt, float m);
    /* dot_rows, axpy_rows, dot_rows2 and axpy_rows2 on rows of an f16 cache read in
     * place (optional, all four or none; stride in elements), each row widened in
     * registers: widening is exact, so each result is bit for bit what the f32 function
     * gives on the widened rows. For decode, whose single query would otherwise pay a
     * store and reload of a widened copy of every tile it streams from memory. */
    void (*dot_rows_f16)(float *out, const float *q, const uint16_t *x, size_t stride, int cnt, int n);
    void (*axpy_rows_f16)(float *y, const float *e, const uint16_t *x, size_t stride, int cnt, int n);
    void (*dot_rows2_f16)(float *o0, float *o1, const float *q0, const float *q1, const uint16_t *x, size_t stride,
                          int cnt, int n);
    void (*axpy_rows2_f16)(float *y0, float *y1, const float *e0, const float *e1, const uint16_t *x, size_t stride,
                           int cnt, int n);
    /* s[r] *= scale for r < cnt and returns the largest of m and those s[r], NaNs left
     * out: the values of the loop `s[r] *= scale; m = s[r] > m ? s[r] : m` (NULL = that
     * loop). A maximum is the same in any order, up to the sign of a zero maximum, which
     * the softmax cannot see: the maximum only enters differences, and exp(+-0) = 1. */
    float (*attn_scale_max)(float *s, int cnt, float scale, float m);
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
    LM_CPU_AVX512VNNI = 1u << 10,
    LM_CPU_AVXVNNI = 1u << 11, /* the VEX-coded 256-bit form (Alder Lake, Zen 5) */
};
unsigned lm_cpu_features(void);
/* Makes lm_cpu_features() leave out the features in mask (0 = none) from now on and
 * returns the previous mask; for tests, which run the kernels a CPU without them
 * would (the int8 paths without VNNI / SDOT). Call it between backend calls, not
 * during one. LAZYMOE_CPU_HIDE=avxvnni,dotprod,... hides features for a whole run. */
unsigned lm_cpu_features_hide(unsigned mask);

/* Tokens handled per pass over a block of rows: their activations stay in cache
 * while the rows of a task stream past. */
#define LM_KERNEL_TOKEN_BLOCK 64

/* A table's tile functions of one kind, by shape: shapes[full_rows][full_tokens],
 * [1][1] = tile_r rows x tile_t tokens, [1][0] = tile_r rows x 1 token, [0][1] = 1 row
 * x tile_t tokens, [0][0] = 1 x 1. x and y point at the tile's first token and row as
 * in rows(). */
typedef void (*lm_f32_tile)(const lm_mat *W, int r, const float *x, float *y);
/* The walk every table's rows() shares: tokens in blocks of LM_KERNEL_TOKEN_BLOCK; in
 * each block rows r0..r1-1 in tiles of tile_r, each over tokens in tiles of tile_t,
 * the leftover tokens and rows one at a time. (The int8 drivers walk their own
 * shapes: AVX-512's 16-row panels, AVX2's and NEON's loops.) */
void lm_tile_rows(const lm_mat *W, int r0, int r1, const float *x, int n, float *y, int tile_r, int tile_t,
                  const lm_f32_tile shapes[2][2]);

#endif

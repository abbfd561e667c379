/* MLX affine quantization: the weight format of mlx-community models.
 *
 * A row-major matrix W [rows, cols] is cut into groups of `group_size` consecutive
 * values along a row. Each group g gets a scale s and a bias b, and each value an
 * unsigned `bits`-bit integer q with  w ~= s * q + b.
 *
 * Storage, exactly as mx.quantize returns it (and mlx-lm saves it):
 *   weight  U32 [rows, cols * bits / 32]  -- each row is one little-endian bit stream:
 *           value j of the row occupies bits [j*bits, (j+1)*bits) of the stream, lowest
 *           bits first, so 4-bit packs 8 values per word, 8-bit packs 4, and 3/5/6-bit
 *           values straddle word boundaries (MLX packs 3/6-bit into 3-byte and 5-bit
 *           into 5-byte little-endian units, which is the same bit stream).
 *   scales  [rows, cols / group_size] in the model dtype (F16, BF16 or F32)
 *   biases  [rows, cols / group_size] same dtype
 *
 * The algorithm is MLX's affine_quantize (mlx/backend/{metal,cuda,cpu}), not the naive
 * scale = (max-min)/(2^bits-1), bias = min. Per group, all in float32:
 *     scale = max((max - min) / n_bins, 1e-7)            n_bins = 2^bits - 1
 *     edge  = the endpoint of larger magnitude (min if |min| > |max|, else max);
 *             scale is negated when edge is max, so q stays >= 0
 *     q0    = round(edge / scale)
 *     if q0 != 0: scale = edge / q0, bias = edge        (the edge value is exact)
 *     else:       bias = 0
 *     q     = clamp(round((w - bias) / scale), 0, n_bins)
 * q is computed from the float32 scale and bias; only then are scale and bias rounded
 * to the output dtype (round-to-nearest-even). The input values must already be the
 * model-dtype values (mlx-lm casts the model to its dtype before quantizing): pass
 * bf16 weights widened to float, not the original float32 ones.
 *
 * Two kernels of MLX differ in two details, so both are offered:
 *   MLXQ_KERNEL_GPU (default): the Metal and CUDA kernels, which made the mlx-community
 *       files on Apple GPUs. Their max starts at 0 (so a group's max is max(0, values))
 *       and round() sends halves away from zero.
 *   MLXQ_KERNEL_CPU: the CPU backend (mx.quantize on mx.cpu): true min and max, and
 *       rint() sends halves to even.
 *
 * Non-finite input (NaN, Inf), or a group whose range overflows float32, is refused
 * with an error: MLX would silently write garbage scales for it.
 */
#ifndef LAZYMOE_MLX_QUANT_H
#define LAZYMOE_MLX_QUANT_H

#include "formats/dtype.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MLXQ_KERNEL_GPU = 0, /* Metal / CUDA kernel semantics (what mlx-lm on a Mac produces) */
    MLXQ_KERNEL_CPU = 1, /* mlx CPU backend semantics */
} mlxq_kernel;

typedef struct {
    int bits;              /* 2, 3, 4, 5, 6 or 8 */
    int group_size;        /* 32, 64 or 128 */
    lm_dtype scale_dtype;  /* LM_DT_F16, LM_DT_BF16 or LM_DT_F32: dtype of scales and biases */
    mlxq_kernel kernel;
} mlxq_params;

/* Checks bits, group size, scale dtype and that cols is a positive multiple of the
 * group size (which also makes cols * bits a multiple of 32). */
int mlxq_check(const mlxq_params *p, int64_t rows, int64_t cols, char *err);

/* uint32 words of one packed row: cols * bits / 32. */
static inline int64_t mlxq_words_per_row(int64_t cols, int bits) { return cols * bits / 32; }
/* Groups (scales, biases) per row: cols / group_size. */
static inline int64_t mlxq_groups_per_row(int64_t cols, int group_size) {
    return cols / group_size;
}

/* Quantizes W [rows, cols] (float32, row-major) into
 *   packed [rows, words_per_row] uint32, scales/biases [rows, groups_per_row] of
 *   p->scale_dtype (2 or 4 bytes each, as raw little-endian values).
 * Returns -1 with a reason on bad parameters or non-finite input (naming row and column). */
int mlxq_quantize(const mlxq_params *p, const float *w, int64_t rows, int64_t cols,
                  uint32_t *packed, void *scales, void *biases, char *err);

/* Dequantizes rows of a quantized matrix to float32: out[r, j] = scale * q + bias with
 * scale and bias widened to float32 (MLX computes this in the model dtype; the values
 * differ by at most one rounding of that dtype). Pass pointers advanced to a first row
 * (packed + r0 * words_per_row, scales/biases + r0 * groups_per_row elements) to
 * dequantize a range of rows. */
int mlxq_dequantize(const mlxq_params *p, const uint32_t *packed, const void *scales,
                    const void *biases, int64_t rows, int64_t cols, float *out, char *err);

/* Reads the bits-bit value at index j of one packed row (no bounds check). */
static inline uint32_t mlxq_unpack(const uint32_t *row, int64_t j, int bits) {
    uint64_t bit = (uint64_t)j * (uint64_t)bits;
    uint64_t word = bit / 32;
    unsigned shift = (unsigned)(bit % 32);
    uint64_t v = row[word] >> shift;
    if (shift + (unsigned)bits > 32) v |= (uint64_t)row[word + 1] << (32 - shift);
    return (uint32_t)(v & ((1u << bits) - 1u));
}

/* Rounds a float32 to the given float dtype and back (F32: unchanged). Used to reproduce
 * mlx-lm's cast of the model to its dtype before quantization. */
float mlxq_round_to_dtype(float x, lm_dtype t);

#endif

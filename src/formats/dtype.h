/* Element types found in model files, and conversions to float32.
 *
 * Weights stay in their stored type in memory; kernels widen to f32 on the fly.
 */
#ifndef LAZYMOE_DTYPE_H
#define LAZYMOE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    LM_DT_INVALID = 0,
    LM_DT_F32,
    LM_DT_F16,
    LM_DT_BF16,
    LM_DT_F64,
    LM_DT_I8,
    LM_DT_U8,
    LM_DT_I16,
    LM_DT_U16,
    LM_DT_I32,
    LM_DT_U32,
    LM_DT_I64,
    LM_DT_U64,
    LM_DT_BOOL,
    LM_DT_F8_E4M3,
    LM_DT_F8_E5M2,
    /* MXFP4 as Hugging Face stores it (gpt-oss): an lm_mat's data holds the e2m1 codes,
     * two per byte with the even value in the low nibble ([rows][cols / 2]), and its
     * scales one e8m0 exponent byte per 32 values ([rows][cols / 32]); formats/mxfp4.h.
     * Not a safetensors dtype (the file says U8) and not a ggml block type. */
    LM_DT_MXFP4_SPLIT,
    /* Block-quantized types in ggml's layouts (GGUF files): a row of `cols` values
     * is cols / lm_dtype_block_elems(t) consecutive blocks of lm_dtype_block_bytes(t)
     * bytes, each block self-contained (its scales inside). The layouts are ggml's
     * (ggml-common.h); the numbering here is lazymoe's own, lm_dtype_from_ggml maps. */
    LM_DT_Q4_0,
    LM_DT_Q4_1,
    LM_DT_Q5_0,
    LM_DT_Q5_1,
    LM_DT_Q8_0,
    LM_DT_Q2_K,
    LM_DT_Q3_K,
    LM_DT_Q4_K,
    LM_DT_Q5_K,
    LM_DT_Q6_K,
    LM_DT_IQ2_XXS,
    LM_DT_IQ3_XXS,
    LM_DT_IQ4_NL,
    LM_DT_IQ4_XS,
    LM_DT_MXFP4, /* ggml block: e8m0 exponent byte + 16 bytes of e2m1 pairs (j, j+16) */
    LM_DT_COUNT
} lm_dtype;

#define LM_DT_FIRST_BLOCK LM_DT_Q4_0

/* Bytes per element; 0 for LM_DT_INVALID. */
size_t lm_dtype_size(lm_dtype t);
/* safetensors spelling ("F32", "BF16", ...). */
const char *lm_dtype_name(lm_dtype t);
/* Parses a safetensors dtype string; LM_DT_INVALID if unknown (block types are
 * never safetensors dtypes, so their names do not parse here). */
lm_dtype lm_dtype_from_name(const char *s);
/* True for the float types a weight matrix or vector may be stored in. */
int lm_dtype_is_float(lm_dtype t);

/* Block-quantized types: 1 for LM_DT_Q4_0 .. LM_DT_MXFP4. */
static inline int lm_dtype_is_block(lm_dtype t) { return t >= LM_DT_FIRST_BLOCK && t < LM_DT_COUNT; }
/* Values per block and bytes per block (0 for non-block types). */
int lm_dtype_block_elems(lm_dtype t);
size_t lm_dtype_block_bytes(lm_dtype t);
/* Bytes of one row of `cols` values of a block type; 0 when cols is not a multiple
 * of the block size or t is not a block type. */
uint64_t lm_dtype_row_bytes(lm_dtype t, uint64_t cols);
/* ggml's type number (GGML_TYPE_*, as stored in GGUF tensor infos) -> lm_dtype, for
 * the float and block types lazymoe reads; LM_DT_INVALID for the others. */
lm_dtype lm_dtype_from_ggml(uint32_t ggml_type);

static inline float lm_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round-to-nearest-even, as torch and MLX do; NaN stays NaN. */
static inline uint16_t lm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float lm_f16_to_f32(uint16_t h);
uint16_t lm_f32_to_f16(float f);

/* Reads element i of a float-typed array (F32, F16, BF16, F64) as float. */
static inline float lm_load_float(const void *p, lm_dtype t, size_t i) {
    switch (t) {
    case LM_DT_F32: return ((const float *)p)[i];
    case LM_DT_BF16: return lm_bf16_to_f32(((const uint16_t *)p)[i]);
    case LM_DT_F16: return lm_f16_to_f32(((const uint16_t *)p)[i]);
    case LM_DT_F64: return (float)((const double *)p)[i];
    default: return 0.0f;
    }
}

/* Converts n elements of a float-typed array to f32. */
void lm_convert_to_f32(float *dst, const void *src, lm_dtype t, size_t n);

#endif

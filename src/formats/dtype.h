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
    LM_DT_COUNT
} lm_dtype;

/* Bytes per element; 0 for LM_DT_INVALID. */
size_t lm_dtype_size(lm_dtype t);
/* safetensors spelling ("F32", "BF16", ...). */
const char *lm_dtype_name(lm_dtype t);
/* Parses a safetensors dtype string; LM_DT_INVALID if unknown. */
lm_dtype lm_dtype_from_name(const char *s);
/* True for the float types a weight matrix or vector may be stored in. */
int lm_dtype_is_float(lm_dtype t);

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

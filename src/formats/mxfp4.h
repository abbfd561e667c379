/* MXFP4 (OCP microscaling FP4): 32 values share one e8m0 scale byte E (2^(E - 127));
 * each value is a 4-bit e2m1 code: sign bit 3, then 0, 0.5, 1, 1.5, 2, 3, 4, 6.
 * Two layouts hold the same numbers:
 *   LM_DT_MXFP4_SPLIT (Hugging Face gpt-oss files): codes [rows][cols / 2], value 2j
 *     in the low nibble of byte j and 2j + 1 in the high one; scales [rows][cols / 32].
 *   LM_DT_MXFP4 (ggml / GGUF block_mxfp4): per 32 values one byte E, then 16 bytes
 *     qs with value j in the low nibble of qs[j] and value j + 16 in the high one.
 * A value is exactly e2m1(code) * 2^(E - 127) in float32 (E = 0 gives a subnormal;
 * E = 255, NaN in the OCP spec, is read as 2^128 the way transformers' ldexp and
 * ggml read it). The int8 form of a code is twice its value (-12..12), so integer dot
 * products are exact and the scale is 2^(E - 128), ggml's E8M0_TO_FP32_HALF. */
#ifndef LAZYMOE_MXFP4_H
#define LAZYMOE_MXFP4_H

#include "formats/dtype.h"

#include <stddef.h>
#include <stdint.h>

#define LM_MXFP4_GROUP 32

/* Twice the e2m1 value of each code: 0, 1, 2, 3, 4, 6, 8, 12 and their negatives. */
extern const int8_t lm_mxfp4_code2[16];

/* 2^(E - 127) and 2^(E - 128), exactly (subnormal float32 at the bottom). */
float lm_e8m0_to_f32(uint8_t e);
float lm_e8m0_half_to_f32(uint8_t e);

/* Row r of an MXFP4 matrix as float32: split layout (codes, scales as above) or ggml
 * blocks (row = rows of cols / 32 blocks of 17 bytes). cols is a multiple of 32. */
void lm_mxfp4_split_row_f32(const uint8_t *codes, const uint8_t *scales, int cols, int r, float *out);
void lm_mxfp4_block_row_f32(const uint8_t *blocks, int cols, int r, float *out);

#endif

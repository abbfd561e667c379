#include "formats/mxfp4.h"

#include <math.h>

const int8_t lm_mxfp4_code2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* e8m0 as float32 bits: the exponent field E for E >= 1; E = 0 is 2^-127, the
 * subnormal with only the top mantissa bit set. */
float lm_e8m0_to_f32(uint8_t e) {
    uint32_t u = e ? (uint32_t)e << 23 : 0x00400000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 2^(E - 128): one exponent step down; E = 1 and E = 0 are subnormals. */
float lm_e8m0_half_to_f32(uint8_t e) {
    uint32_t u = e >= 2 ? (uint32_t)(e - 1) << 23 : (e == 1 ? 0x00400000u : 0x00200000u);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* code2 * 2^(E - 128) = e2m1 * 2^(E - 127): both factors and the product are exact. */
void lm_mxfp4_split_row_f32(const uint8_t *codes, const uint8_t *scales, int cols, int r, float *out) {
    const uint8_t *c = codes + (size_t)r * (size_t)(cols / 2);
    const uint8_t *s = scales + (size_t)r * (size_t)(cols / LM_MXFP4_GROUP);
    for (int g = 0; g < cols / LM_MXFP4_GROUP; g++) {
        float d = lm_e8m0_half_to_f32(s[g]);
        for (int j = 0; j < 16; j++) {
            uint8_t b = c[g * 16 + j];
            out[g * 32 + 2 * j] = (float)lm_mxfp4_code2[b & 15] * d;
            out[g * 32 + 2 * j + 1] = (float)lm_mxfp4_code2[b >> 4] * d;
        }
    }
}

void lm_mxfp4_block_row_f32(const uint8_t *blocks, int cols, int r, float *out) {
    const uint8_t *b = blocks + (size_t)r * (size_t)(cols / LM_MXFP4_GROUP) * 17;
    for (int g = 0; g < cols / LM_MXFP4_GROUP; g++, b += 17) {
        float d = lm_e8m0_half_to_f32(b[0]);
        for (int j = 0; j < 16; j++) {
            out[g * 32 + j] = (float)lm_mxfp4_code2[b[1 + j] & 15] * d;
            out[g * 32 + j + 16] = (float)lm_mxfp4_code2[b[1 + j] >> 4] * d;
        }
    }
}

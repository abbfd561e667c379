/* ggml's block-quantized weight formats (GGUF tensors): the scalar reference that
 * turns blocks into float32, the definition every faster kernel is tested against.
 *
 * Each block type (formats/dtype.h, LM_DT_Q4_0 .. LM_DT_IQ4_XS) stores a fixed number
 * of values (32, or 256 for the K- and IQ-quants' super-blocks) with its scales
 * inside the block. The arithmetic here follows ggml's own dequantization step by
 * step (the same f32 operations in the same order), so the results are bit-exact
 * against libggml's `to_float` (tests/test_ggml_types.c checks it on random blocks
 * with extreme scales).
 *
 * Layouts (little-endian; "f16" = IEEE half):
 *   Q4_0  (32):  f16 d, u8 qs[16]        w = d * (nibble - 8); value j in the low
 *                                         nibble of qs[j], j + 16 in the high one
 *   Q4_1  (32):  f16 d, f16 m, qs[16]    w = d * nibble + m
 *   Q5_0  (32):  f16 d, u8 qh[4], qs[16] 5th bit of value j is bit j of qh (u32); w = d * (q - 16)
 *   Q5_1  (32):  f16 d, f16 m, qh[4], qs[16]                                    w = d * q + m
 *   Q8_0  (32):  f16 d, i8 qs[32]        w = d * q
 *   Q2_K (256):  u8 scales[16] (low nibble scale, high nibble min), qs[64] (2 bits),
 *                f16 d, f16 dmin;        w = d * sc * q - dmin * mn, 16 values per scale
 *   Q3_K (256):  u8 hmask[32], qs[64], scales[12] (16 x 6 bits), f16 d;
 *                w = d * (sc - 32) * (q2 - (high bit clear ? 4 : 0))
 *   Q4_K (256):  f16 d, f16 dmin, scales[12] (8 scales, 8 mins, 6 bits), qs[128];
 *                w = d * sc * q - dmin * mn, 32 values per (sc, mn)
 *   Q5_K (256):  as Q4_K plus qh[32] (5th bits) before qs
 *   Q6_K (256):  ql[128], qh[64], i8 scales[16], f16 d;  w = d * sc * (q - 32)
 *   IQ4_NL (32): f16 d, qs[16];          w = d * table[nibble] (a fixed 16-entry
 *                non-uniform table of int8 levels)
 *   IQ4_XS (256): f16 d, u16 scales_h, u8 scales_l[4], qs[128]; 8 sub-blocks of 32
 *                with 6-bit scales ls: w = d * (ls - 32) * table[nibble]
 * IQ2_XXS and IQ3_XXS (lattice codebooks) and MXFP4 are not done here. */
#ifndef LAZYMOE_GGML_BLOCKS_H
#define LAZYMOE_GGML_BLOCKS_H

#include "formats/dtype.h"

#include <stddef.h>
#include <stdint.h>

/* 1 when lm_blocks_to_f32 converts type t. */
int lm_blocks_supported(lm_dtype t);

/* n values (a multiple of t's block size) of blocks at src -> dst[n]. Returns 0,
 * or -1 (dst untouched) when t is not a supported block type or n is not whole blocks. */
int lm_blocks_to_f32(lm_dtype t, const void *src, float *dst, size_t n);

/* The 16 levels of IQ4_NL / IQ4_XS, as int8. */
extern const int8_t lm_iq4_levels[16];

/* The 6-bit scale j (0..7) and min of a Q4_K / Q5_K block's 12 packed bytes:
 * j < 4: low 6 bits of bytes j and j + 4; j >= 4: a nibble of byte j + 4 and the top
 * 2 bits of bytes j - 4 (scale) and j (min). */
static inline void lm_q4k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* The 16 signed 6-bit scales (-32..31) of a Q3_K block's 12 packed bytes: the low
 * 4 bits of scale k are a nibble of byte k % 8 (low for k < 8), the high 2 bits are
 * bits 2 * (k / 4) of byte 8 + k % 4. */
static inline void lm_q3k_scales(const uint8_t *s, int8_t out[16]) {
    for (int k = 0; k < 16; k++) {
        int lo = k < 8 ? (s[k] & 0x0f) : (s[k - 8] >> 4);
        int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        out[k] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

#endif

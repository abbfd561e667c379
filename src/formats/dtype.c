#include "formats/dtype.h"

#include <math.h>

static const struct {
    const char *name;
    size_t size;      /* element bytes; 0 for block types */
    int block_elems;  /* block types: values per block */
    size_t block_bytes;
} dtype_info[LM_DT_COUNT] = {
    [LM_DT_INVALID] = {"INVALID", 0}, [LM_DT_F32] = {"F32", 4},   [LM_DT_F16] = {"F16", 2},
    [LM_DT_BF16] = {"BF16", 2},       [LM_DT_F64] = {"F64", 8},   [LM_DT_I8] = {"I8", 1},
    [LM_DT_U8] = {"U8", 1},           [LM_DT_I16] = {"I16", 2},   [LM_DT_U16] = {"U16", 2},
    [LM_DT_I32] = {"I32", 4},         [LM_DT_U32] = {"U32", 4},   [LM_DT_I64] = {"I64", 8},
    [LM_DT_U64] = {"U64", 8},         [LM_DT_BOOL] = {"BOOL", 1}, [LM_DT_F8_E4M3] = {"F8_E4M3", 1},
    [LM_DT_F8_E5M2] = {"F8_E5M2", 1}, [LM_DT_MXFP4_SPLIT] = {"MXFP4_SPLIT", 0},
    /* Block sizes from ggml's block structs: QK4_0 = QK8_0 = 32 with an f16 scale
     * (and an f16 min for _1), QK_K = 256 super-blocks, MXFP4 = 32 with one byte. */
    [LM_DT_Q4_0] = {"Q4_0", 0, 32, 18},       [LM_DT_Q4_1] = {"Q4_1", 0, 32, 20},
    [LM_DT_Q5_0] = {"Q5_0", 0, 32, 22},       [LM_DT_Q5_1] = {"Q5_1", 0, 32, 24},
    [LM_DT_Q8_0] = {"Q8_0", 0, 32, 34},       [LM_DT_Q2_K] = {"Q2_K", 0, 256, 84},
    [LM_DT_Q3_K] = {"Q3_K", 0, 256, 110},     [LM_DT_Q4_K] = {"Q4_K", 0, 256, 144},
    [LM_DT_Q5_K] = {"Q5_K", 0, 256, 176},     [LM_DT_Q6_K] = {"Q6_K", 0, 256, 210},
    [LM_DT_IQ2_XXS] = {"IQ2_XXS", 0, 256, 66}, [LM_DT_IQ3_XXS] = {"IQ3_XXS", 0, 256, 98},
    [LM_DT_IQ4_NL] = {"IQ4_NL", 0, 32, 18},   [LM_DT_IQ4_XS] = {"IQ4_XS", 0, 256, 136},
    [LM_DT_MXFP4] = {"MXFP4", 0, 32, 17},
};

size_t lm_dtype_size(lm_dtype t) { return (t > 0 && t < LM_DT_COUNT) ? dtype_info[t].size : 0; }

const char *lm_dtype_name(lm_dtype t) {
    return (t > 0 && t < LM_DT_COUNT) ? dtype_info[t].name : "INVALID";
}

lm_dtype lm_dtype_from_name(const char *s) {
    for (int t = 1; t < LM_DT_MXFP4_SPLIT; t++)
        if (strcmp(s, dtype_info[t].name) == 0) return (lm_dtype)t;
    return LM_DT_INVALID;
}

int lm_dtype_is_float(lm_dtype t) {
    return t == LM_DT_F32 || t == LM_DT_F16 || t == LM_DT_BF16 || t == LM_DT_F64;
}

int lm_dtype_block_elems(lm_dtype t) { return lm_dtype_is_block(t) ? dtype_info[t].block_elems : 0; }

size_t lm_dtype_block_bytes(lm_dtype t) { return lm_dtype_is_block(t) ? dtype_info[t].block_bytes : 0; }

uint64_t lm_dtype_row_bytes(lm_dtype t, uint64_t cols) {
    if (!lm_dtype_is_block(t)) return 0;
    uint64_t be = (uint64_t)dtype_info[t].block_elems;
    if (cols % be) return 0;
    return cols / be * dtype_info[t].block_bytes;
}

lm_dtype lm_dtype_from_ggml(uint32_t g) {
    /* enum ggml_type values as written in GGUF files (stable on disk). */
    switch (g) {
    case 0: return LM_DT_F32;
    case 1: return LM_DT_F16;
    case 2: return LM_DT_Q4_0;
    case 3: return LM_DT_Q4_1;
    case 6: return LM_DT_Q5_0;
    case 7: return LM_DT_Q5_1;
    case 8: return LM_DT_Q8_0;
    case 10: return LM_DT_Q2_K;
    case 11: return LM_DT_Q3_K;
    case 12: return LM_DT_Q4_K;
    case 13: return LM_DT_Q5_K;
    case 14: return LM_DT_Q6_K;
    case 16: return LM_DT_IQ2_XXS;
    case 18: return LM_DT_IQ3_XXS;
    case 20: return LM_DT_IQ4_NL;
    case 23: return LM_DT_IQ4_XS;
    case 30: return LM_DT_BF16;
    case 39: return LM_DT_MXFP4;
    default: return LM_DT_INVALID;
    }
}

float lm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400u));
            u = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | mant << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t lm_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (absu < 0x38800000u) {                                  /* subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign;
        uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(absu >> 23); /* f16 subnormal unit is 2^-24 */
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((absu >> 13) - (112u << 10));
    uint32_t rem = absu & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
    return (uint16_t)(sign | half);
}

void lm_convert_to_f32(float *dst, const void *src, lm_dtype t, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = lm_load_float(src, t, i);
}

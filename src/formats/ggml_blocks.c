#include "formats/ggml_blocks.h"

#include <string.h>

/* IQ4_NL's non-uniform levels (the format's definition: a nibble indexes them). */
const int8_t lm_iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static float f16_at(const uint8_t *p) { return lm_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Each function converts one block at b into y[block_elems]. The f32 operations and
 * their order are ggml's: (int) q converted, then multiplied by the f32 scale
 * (and the min added or subtracted), scales combined first where ggml does. */

static void q4_0(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((b[2 + j] & 0x0f) - 8) * d;
        y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
    }
}

static void q4_1(const uint8_t *b, float *y) {
    const float d = f16_at(b), m = f16_at(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(b[4 + j] & 0x0f) * d + m;
        y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
    }
}

/* The 5-bit values of a Q5_0 / Q5_1 block: nibbles of qs, 5th bits from qh. */
static void q5_values(const uint8_t *qh4, const uint8_t *qs, int v[32]) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 16; j++) {
        v[j] = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
        v[j + 16] = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
    }
}

static void q5_0(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    int v[32];
    q5_values(b + 2, b + 6, v);
    for (int j = 0; j < 32; j++) y[j] = (float)(v[j] - 16) * d;
}

static void q5_1(const uint8_t *b, float *y) {
    const float d = f16_at(b), m = f16_at(b + 2);
    int v[32];
    q5_values(b + 4, b + 8, v);
    for (int j = 0; j < 32; j++) y[j] = (float)v[j] * d + m;
}

static void q8_0(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

/* Q2_K: 16 groups of 16; value l of a 128-half's column j sits in bits 2j.. of byte l. */
static void q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    const float d = f16_at(b + 80), dmin = f16_at(b + 82);
    int is = 0;
    for (int half = 0; half < 2; half++, qs += 32)
        for (int shift = 0; shift < 8; shift += 2)
            for (int part = 0; part < 2; part++, is++) {
                const float dl = d * (float)(sc[is] & 0x0f), ml = dmin * (float)(sc[is] >> 4);
                for (int l = 0; l < 16; l++) *y++ = dl * (float)((qs[part * 16 + l] >> shift) & 3) - ml;
            }
}

static void q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32;
    const float d = f16_at(b + 108);
    int8_t sc[16];
    lm_q3k_scales(b + 96, sc);
    int is = 0;
    unsigned m = 1;
    for (int half = 0; half < 2; half++, qs += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
            for (int part = 0; part < 2; part++, is++) {
                const float dl = d * (float)sc[is];
                for (int l = 0; l < 16; l++) {
                    const int i = part * 16 + l;
                    *y++ = dl * (float)(((qs[i] >> shift) & 3) - ((hm[i] & m) ? 0 : 4));
                }
            }
}

static void q4_k(const uint8_t *b, float *y) {
    const float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *s = b + 4, *qs = b + 16;
    for (int j = 0; j < 8; j += 2, qs += 32) {
        uint8_t sc, mn;
        lm_q4k_scale_min(j, s, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        lm_q4k_scale_min(j + 1, s, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)(qs[l] & 0x0f) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)(qs[l] >> 4) - m2;
    }
}

static void q5_k(const uint8_t *b, float *y) {
    const float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *s = b + 4, *qh = b + 16, *qs = b + 48;
    for (int j = 0; j < 8; j += 2, qs += 32) {
        uint8_t sc, mn;
        lm_q4k_scale_min(j, s, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        lm_q4k_scale_min(j + 1, s, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)((qs[l] & 0x0f) + (((qh[l] >> j) & 1) << 4)) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)((qs[l] >> 4) + (((qh[l] >> (j + 1)) & 1) << 4)) - m2;
    }
}

static void q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = f16_at(b + 208);
    for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8)
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
}

static void iq4_nl(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)lm_iq4_levels[b[2 + j] & 0x0f];
        y[j + 16] = d * (float)lm_iq4_levels[b[2 + j] >> 4];
    }
}

static void iq4_xs(const uint8_t *b, float *y) {
    const float d = f16_at(b);
    const unsigned sh = (unsigned)(b[2] | b[3] << 8);
    const uint8_t *sl = b + 4, *qs = b + 8;
    for (int ib = 0; ib < 8; ib++, y += 32, qs += 16) {
        const int ls = (int)(((sl[ib / 2] >> (4 * (ib % 2))) & 0x0f) | (((sh >> (2 * ib)) & 3) << 4));
        const float dl = d * (float)(ls - 32);
        for (int j = 0; j < 16; j++) {
            y[j] = dl * (float)lm_iq4_levels[qs[j] & 0x0f];
            y[j + 16] = dl * (float)lm_iq4_levels[qs[j] >> 4];
        }
    }
}

typedef void (*block_fn)(const uint8_t *b, float *y);

static block_fn block_fn_of(lm_dtype t) {
    switch (t) {
    case LM_DT_Q4_0: return q4_0;
    case LM_DT_Q4_1: return q4_1;
    case LM_DT_Q5_0: return q5_0;
    case LM_DT_Q5_1: return q5_1;
    case LM_DT_Q8_0: return q8_0;
    case LM_DT_Q2_K: return q2_k;
    case LM_DT_Q3_K: return q3_k;
    case LM_DT_Q4_K: return q4_k;
    case LM_DT_Q5_K: return q5_k;
    case LM_DT_Q6_K: return q6_k;
    case LM_DT_IQ4_NL: return iq4_nl;
    case LM_DT_IQ4_XS: return iq4_xs;
    default: return NULL;
    }
}

int lm_blocks_supported(lm_dtype t) { return block_fn_of(t) != NULL; }

int lm_blocks_to_f32(lm_dtype t, const void *src, float *dst, size_t n) {
    block_fn f = block_fn_of(t);
    if (!f) return -1;
    const size_t be = (size_t)lm_dtype_block_elems(t), bb = lm_dtype_block_bytes(t);
    if (n % be) return -1;
    const uint8_t *p = src;
    for (size_t i = 0; i < n / be; i++) f(p + i * bb, dst + i * be);
    return 0;
}

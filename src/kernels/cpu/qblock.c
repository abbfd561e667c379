/* Int8 activations with ggml block weights: the common group form and the scalar
 * reference (qblock.h). */
#include "kernels/cpu/qblock.h"

#include "formats/ggml_blocks.h"
#include "formats/mxfp4.h"

static float f16_at(const uint8_t *p) { return lm_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

int lm_qblock_act8(lm_dtype t) {
    switch (t) {
    case LM_DT_Q4_0: case LM_DT_Q4_1: case LM_DT_Q5_0: case LM_DT_Q5_1: case LM_DT_Q8_0: case LM_DT_Q3_K:
    case LM_DT_Q4_K: case LM_DT_Q5_K: case LM_DT_Q6_K: case LM_DT_IQ4_NL: case LM_DT_IQ4_XS:
    case LM_DT_MXFP4: case LM_DT_MXFP4_SPLIT: return 1;
    default: return 0;
    }
}

int lm_qblock_off_shift(lm_dtype t) {
    switch (t) {
    case LM_DT_Q4_0: return 3;
    case LM_DT_Q5_0: case LM_DT_MXFP4: case LM_DT_MXFP4_SPLIT: return 4;
    case LM_DT_Q6_K: return 5;
    case LM_DT_Q3_K: return 2;
    case LM_DT_Q8_0: case LM_DT_IQ4_NL: case LM_DT_IQ4_XS: return 7;
    default: return -1;
    }
}

int lm_qblock_has_b(lm_dtype t) { return t == LM_DT_Q4_1 || t == LM_DT_Q5_1 || t == LM_DT_Q4_K || t == LM_DT_Q5_K; }

/* An MXFP4 group (mxfp4.h): u = twice the e2m1 value + 16 (4..28), a16 = 2^(E - 128),
 * so a16 * (u - 16) is the value exactly. lo / hi: the 16 code bytes of the group
 * hold values (2j, 2j + 1) (split layout) or (j, j + 16) (ggml blocks). */
static void group_mxfp4(const uint8_t *codes, uint8_t e, int split, lm_qgroup *o) {
    o->a16[0] = o->a16[1] = lm_e8m0_half_to_f32(e);
    o->b = 0;
    for (int j = 0; j < 16; j++) {
        uint8_t lo = (uint8_t)(lm_mxfp4_code2[codes[j] & 15] + 16), hi = (uint8_t)(lm_mxfp4_code2[codes[j] >> 4] + 16);
        if (split) o->u[2 * j] = lo, o->u[2 * j + 1] = hi;
        else o->u[j] = lo, o->u[j + 16] = hi;
    }
}

void lm_qblock_group_mxfp4_split(const uint8_t *codes_row, const uint8_t *scales_row, int g, lm_qgroup *out) {
    group_mxfp4(codes_row + (size_t)g * 16, scales_row[g], 1, out);
}

/* 32-value blocks: group g is block g. */
static void group_32(lm_dtype t, const uint8_t *b, lm_qgroup *o) {
    if (t == LM_DT_MXFP4) {
        group_mxfp4(b + 1, b[0], 0, o);
        return;
    }
    const float d = f16_at(b);
    o->a16[0] = o->a16[1] = d;
    o->b = 0;
    switch (t) {
    case LM_DT_Q4_0:
    case LM_DT_Q4_1: {
        const uint8_t *qs = b + (t == LM_DT_Q4_0 ? 2 : 4);
        for (int j = 0; j < 16; j++) o->u[j] = qs[j] & 0x0f, o->u[j + 16] = qs[j] >> 4;
        if (t == LM_DT_Q4_1) o->b = f16_at(b + 2);
        break;
    }
    case LM_DT_Q5_0:
    case LM_DT_Q5_1: {
        const uint8_t *qh = b + (t == LM_DT_Q5_0 ? 2 : 4), *qs = qh + 4;
        const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
        for (int j = 0; j < 16; j++) {
            o->u[j] = (uint8_t)((qs[j] & 0x0f) | ((h >> j) & 1u) << 4);
            o->u[j + 16] = (uint8_t)((qs[j] >> 4) | ((h >> (j + 16)) & 1u) << 4);
        }
        if (t == LM_DT_Q5_1) o->b = f16_at(b + 2);
        break;
    }
    case LM_DT_Q8_0:
        for (int j = 0; j < 32; j++) o->u[j] = (uint8_t)(b[2 + j] ^ 0x80); /* k + 128 */
        break;
    default: /* IQ4_NL */
        for (int j = 0; j < 16; j++) {
            o->u[j] = (uint8_t)(lm_iq4_levels[b[2 + j] & 0x0f] + 128);
            o->u[j + 16] = (uint8_t)(lm_iq4_levels[b[2 + j] >> 4] + 128);
        }
        break;
    }
}

/* 256-value super-blocks: group j (0..7) of super-block b. */
static void group_256(lm_dtype t, const uint8_t *b, int j, lm_qgroup *o) {
    o->b = 0;
    switch (t) {
    case LM_DT_Q4_K:
    case LM_DT_Q5_K: {
        const float d = f16_at(b), dmin = f16_at(b + 2);
        uint8_t sc, mn;
        lm_q4k_scale_min(j, b + 4, &sc, &mn);
        o->a16[0] = o->a16[1] = d * (float)sc;
        o->b = -(dmin * (float)mn);
        const uint8_t *qs = b + (t == LM_DT_Q4_K ? 16 : 48) + (j / 2) * 32;
        const int hi = j & 1;
        for (int l = 0; l < 32; l++) o->u[l] = (uint8_t)(hi ? qs[l] >> 4 : qs[l] & 0x0f);
        if (t == LM_DT_Q5_K)
            for (int l = 0; l < 32; l++) o->u[l] |= (uint8_t)(((b[16 + l] >> j) & 1) << 4);
        break;
    }
    case LM_DT_Q6_K: {
        /* values 128h + 32k + l: ql[64h + l (+32 for k odd)] nibble k / 2, qh[32h + l] bits 2k */
        const float d = f16_at(b + 208);
        const int h = j / 4, k = j % 4;
        const uint8_t *ql = b + 64 * h + (k & 1) * 32, *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int l = 0; l < 32; l++)
            o->u[l] = (uint8_t)(((k >= 2 ? ql[l] >> 4 : ql[l] & 0x0f)) | ((qh[l] >> (2 * k)) & 3) << 4);
        o->a16[0] = d * (float)sc[2 * j];
        o->a16[1] = d * (float)sc[2 * j + 1];
        break;
    }
    case LM_DT_Q3_K: {
        /* values 128h + 32k + l: qs[32h + l] bits 2k, hmask[l] bit 4h + k */
        const float d = f16_at(b + 108);
        const int h = j / 4, k = j % 4;
        const uint8_t *hm = b, *qs = b + 32 + 32 * h;
        int8_t sc[16];
        lm_q3k_scales(b + 96, sc);
        for (int l = 0; l < 32; l++)
            o->u[l] = (uint8_t)(((qs[l] >> (2 * k)) & 3) | ((hm[l] >> (4 * h + k)) & 1) << 2);
        o->a16[0] = d * (float)sc[2 * j];
        o->a16[1] = d * (float)sc[2 * j + 1];
        break;
    }
    default: { /* IQ4_XS */
        const float d = f16_at(b);
        const unsigned sh = (unsigned)(b[2] | b[3] << 8);
        const int ls = (int)(((b[4 + j / 2] >> (4 * (j % 2))) & 0x0f) | (((sh >> (2 * j)) & 3) << 4));
        o->a16[0] = o->a16[1] = d * (float)(ls - 32);
        const uint8_t *qs = b + 8 + 16 * j;
        for (int l = 0; l < 16; l++) {
            o->u[l] = (uint8_t)(lm_iq4_levels[qs[l] & 0x0f] + 128);
            o->u[l + 16] = (uint8_t)(lm_iq4_levels[qs[l] >> 4] + 128);
        }
        break;
    }
    }
}

void lm_qblock_group(lm_dtype t, const uint8_t *row, int g, lm_qgroup *out) {
    const size_t bb = lm_dtype_block_bytes(t);
    if (lm_dtype_block_elems(t) == 32) group_32(t, row + (size_t)g * bb, out);
    else group_256(t, row + (size_t)(g / 8) * bb, g % 8, out);
}

float lm_qblock_dot_act8(const lm_mat *W, int r, const int8_t *q, const float *dx, const float *xsum) {
    const int sh = lm_qblock_off_shift(W->dtype), ng = W->cols / LM_QB_GROUP;
    const int split = W->dtype == LM_DT_MXFP4_SPLIT; /* codes [rows][cols / 2], scales [rows][ng] apart */
    const size_t rb = split ? (size_t)W->cols / 2 : lm_dtype_row_bytes(W->dtype, (uint64_t)W->cols);
    const uint8_t *row = (const uint8_t *)W->data + (size_t)r * rb;
    const uint8_t *srow = split ? (const uint8_t *)W->scales + (size_t)r * (size_t)ng : NULL;
    float acc = 0;
    for (int g = 0; g < ng; g++) {
        lm_qgroup gr;
        if (split) lm_qblock_group_mxfp4_split(row, srow, g, &gr);
        else lm_qblock_group(W->dtype, row, g, &gr);
        const int8_t *qg = q + (size_t)g * LM_QB_GROUP;
        for (int h = 0; h < 2; h++) {
            int32_t dot = 0, qsum = 0;
            for (int i = 16 * h; i < 16 * h + 16; i++) {
                dot += (int32_t)gr.u[i] * (int32_t)qg[i];
                qsum += qg[i];
            }
            if (sh >= 0) dot -= qsum * (1 << sh);
            acc += (gr.a16[h] * dx[g]) * (float)dot;
        }
        acc += gr.b * xsum[g];
    }
    return acc;
}

void lm_qblock_qsum16(const int8_t *q, size_t q_stride, int n, int cols, int32_t *out, size_t out_stride) {
    for (int t = 0; t < n; t++) {
        const int8_t *qt = q + (size_t)t * q_stride;
        int32_t *o = out + (size_t)t * out_stride;
        for (int h = 0; h < cols / 16; h++) {
            int32_t s = 0;
            for (int i = 0; i < 16; i++) s += qt[16 * h + i];
            o[h] = s;
        }
    }
}

/* Int8 activations with ggml block weights, AVX-512 VNNI (qblock.h).
 *
 * Rows in lanes, as the affine int8 kernel of matmul_avx512.c: a panel of 16 rows
 * is decoded CHUNK values at a time into unsigned byte codes (one 64-value step of
 * a row per vector, straight from the block layout), and the 16 rows' steps are
 * transposed so that word k of the chunk (values 4k..4k+3) of the 16 rows is one
 * vector. The scales come as one f32 vector per group (a16, or per 16-value half
 * where the halves differ: Q6_K, Q3_K) and per group (b), gathered from the 16
 * rows' blocks. Then every token of the call runs over the decoded chunk: per group,
 * vpdpbusd adds the codes times 4 activation bytes broadcast from the token to a
 * start of -off * (the q sum of the group or half, lm_act8.qsum16), so each lane
 * holds its row's exact I, and the lane's f32 accumulator takes fma(I, a16 * dx)
 * and then fma(b, xsum), group after group. Decoding and scale work is paid once
 * per panel and chunk, the per-token work is 8 vpdpbusd and 2-4 f32 operations per
 * 32 values of 16 rows.
 * Every (row, token) takes the same operations in the same order whatever the
 * call's tokens, rows or threads, and one token (decode) runs the same path: a
 * token alone gives its batched result bit for bit. Against the scalar reference
 * (qblock.c) only the f32 combination differs (fused multiply-adds, one product
 * per group where the halves share a16), never the integer parts. MXFP4 (both
 * layouts) decodes its codes by a byte shuffle and its scales per row. */
#include "kernels/cpu/qblock.h"

#if defined(__x86_64__)

#include "formats/ggml_blocks.h"
#include "formats/mxfp4.h"
#include "kernels/cpu/avx512_transpose.h"

#include <immintrin.h>
#include <limits.h>
#include <string.h>

#define TARGET_QB __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
#define PANEL 16
#define CHUNK 1024      /* values of each row decoded at once */
#define CG (CHUNK / 32) /* groups per chunk */
#define UNROLL16 _Pragma("GCC unroll 16")
#define UNROLL8 _Pragma("GCC unroll 8")

/* A decoded chunk of a panel: codes and scales with row i in lane i. */
typedef struct {
    __m512i w[CHUNK / 4];                           /* word k: values 4k..4k+3 */
    float f[2 * CG][PANEL] __attribute__((aligned(64))); /* a16: f[g], or f[2g + h] per half */
    float b[CG][PANEL] __attribute__((aligned(64)));     /* b per group */
} qpanel;

TARGET_QB INLINE __m512i join256(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
TARGET_QB INLINE __m256i load256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }

/* ---- scales: one gather of a 32-bit word from each of the 16 rows ---- */

TARGET_QB INLINE __m512i gather(const uint8_t *row0, __m512i idx, size_t off) {
    return _mm512_i32gather_epi32(idx, (const void *)(row0 + off), 1);
}
TARGET_QB INLINE __m512 f16_low(__m512i w) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w)); }
TARGET_QB INLINE __m512 f16_high(__m512i w) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16))); }
/* byte k of each lane, unsigned or signed, as f32 */
TARGET_QB INLINE __m512 byte_u(__m512i w, const unsigned k) {
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(w, 8 * k), _mm512_set1_epi32(0xff)));
}
TARGET_QB INLINE __m512 byte_s(__m512i w, const unsigned k) {
    return _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(w, 24 - 8 * k), 24));
}
TARGET_QB INLINE __m512 negate(__m512 v) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT_MIN))); }

/* The 16 bytes at byte off of each of the 16 rows as w[j] = their 32-bit words j, row
 * i in lane i: 16 loads and a 4 x 4 transposition inside 128-bit lanes (rows
 * 4L + k: lane L of load vector k), cheaper than four gathers. */
TARGET_QB INLINE void words16(const uint8_t *const rowp[PANEL], size_t off, __m512i w[4]) {
    __m512i v[4], t[4];
    UNROLL8
    for (int k = 0; k < 4; k++) {
        v[k] = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(const void *)(rowp[k] + off)));
        v[k] = _mm512_inserti32x4(v[k], _mm_loadu_si128((const __m128i *)(const void *)(rowp[4 + k] + off)), 1);
        v[k] = _mm512_inserti32x4(v[k], _mm_loadu_si128((const __m128i *)(const void *)(rowp[8 + k] + off)), 2);
        v[k] = _mm512_inserti32x4(v[k], _mm_loadu_si128((const __m128i *)(const void *)(rowp[12 + k] + off)), 3);
    }
    t[0] = _mm512_unpacklo_epi32(v[0], v[1]), t[1] = _mm512_unpackhi_epi32(v[0], v[1]);
    t[2] = _mm512_unpacklo_epi32(v[2], v[3]), t[3] = _mm512_unpackhi_epi32(v[2], v[3]);
    w[0] = _mm512_unpacklo_epi64(t[0], t[2]), w[1] = _mm512_unpackhi_epi64(t[0], t[2]);
    w[2] = _mm512_unpacklo_epi64(t[1], t[3]), w[3] = _mm512_unpackhi_epi64(t[1], t[3]);
}

/* Q4_K / Q5_K super-block at byte off of each row: groups gc..gc+7 of the chunk.
 * a16 = d * sc and b = -(dmin * mn), the reference's products (qblock.c). */
TARGET_QB INLINE void scales_q45k(const uint8_t *const rowp[PANEL], size_t off, qpanel *p, int gc) {
    __m512i w[4];
    words16(rowp, off, w);
    const __m512i w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
    const __m512 d = f16_low(w0), dmin = f16_high(w0);
    const __m512i m6 = _mm512_set1_epi32(0x3f3f3f3f), m4 = _mm512_set1_epi32(0x0f0f0f0f), m2 = _mm512_set1_epi32(0x03030303);
    /* the 6-bit scales and mins 0..3 and 4..7, a byte each (lm_q4k_scale_min) */
    const __m512i sc03 = _mm512_and_si512(w1, m6), mn03 = _mm512_and_si512(w2, m6);
    const __m512i sc47 = _mm512_or_si512(_mm512_and_si512(w3, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(w1, 6), m2), 4));
    const __m512i mn47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w3, 4), m4),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(w2, 6), m2), 4));
    UNROLL8
    for (unsigned k = 0; k < 4; k++) {
        _mm512_store_ps(p->f[gc + (int)k], _mm512_mul_ps(d, byte_u(sc03, k)));
        _mm512_store_ps(p->f[gc + 4 + (int)k], _mm512_mul_ps(d, byte_u(sc47, k)));
        _mm512_store_ps(p->b[gc + (int)k], negate(_mm512_mul_ps(dmin, byte_u(mn03, k))));
        _mm512_store_ps(p->b[gc + 4 + (int)k], negate(_mm512_mul_ps(dmin, byte_u(mn47, k))));
    }
}

/* Q6_K: a16 = d * sc for the 16 halves (the reference's product); d is read from
 * bytes 206..209 so the gather stays inside the 210-byte block. */
TARGET_QB INLINE void scales_q6k(const uint8_t *const rowp[PANEL], size_t off, qpanel *p, int gc) {
    __m512i w[4], wd[4];
    words16(rowp, off + 194, wd);
    const __m512 d = f16_high(wd[3]);
    words16(rowp, off + 192, w);
    UNROLL8
    for (unsigned k = 0; k < 4; k++) {
        const __m512i s = w[k];
        UNROLL8
        for (unsigned j = 0; j < 4; j++) _mm512_store_ps(p->f[2 * gc + (int)(4 * k + j)], _mm512_mul_ps(d, byte_s(s, j)));
    }
}

/* IQ4_XS: a16 = d * (ls - 32), ls the 6-bit scale of each of the 8 groups. */
TARGET_QB INLINE void scales_iq4xs(const uint8_t *const rowp[PANEL], size_t off, qpanel *p, int gc) {
    __m512i w[4];
    words16(rowp, off, w);
    const __m512i w0 = w[0], sl = w[1];
    const __m512 d = f16_low(w0);
    const __m512i sh = _mm512_srli_epi32(w0, 16), m4 = _mm512_set1_epi32(0x0f), m2 = _mm512_set1_epi32(3);
    UNROLL8
    for (unsigned j = 0; j < 8; j++) {
        const __m512i ls = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(sl, 4 * j), m4),
                                           _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(sh, 2 * j), m2), 4));
        _mm512_store_ps(p->f[gc + (int)j], _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(ls, _mm512_set1_epi32(32)))));
    }
}

/* ---- codes: step s (values 64s..64s+63) of one row as 64 unsigned bytes ---- */

TARGET_QB INLINE __m512i nibbles(__m256i raw) { /* low nibbles, then high nibbles */
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    return join256(_mm256_and_si256(raw, m4), _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4));
}

TARGET_QB INLINE __m512i step_q4k(const uint8_t *row, int s) {
    return nibbles(load256(row + (size_t)(s / 4) * 144 + 16 + 32 * (s % 4)));
}

TARGET_QB INLINE __m512i step_q5k(const uint8_t *row, int s) {
    const uint8_t *bl = row + (size_t)(s / 4) * 176;
    const int c = s % 4; /* groups 2c, 2c + 1 of the super-block: 5th bits are bits 2c, 2c + 1 of qh[l] */
    const __m512i u = nibbles(load256(bl + 48 + 32 * c));
    const __m512i qh = _mm512_broadcast_i64x4(load256(bl + 16));
    const __m512i bit = join256(_mm256_set1_epi8((char)(1 << (2 * c))), _mm256_set1_epi8((char)(1 << (2 * c + 1))));
    return _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(qh, bit), u, _mm512_set1_epi8(16));
}

TARGET_QB INLINE __m512i step_q6k(const uint8_t *row, int s) {
    /* groups 4h + k, k = 2c, 2c + 1: nibble c of ql[64h + l] and ql[64h + 32 + l],
     * high bits 2k of qh[32h + l] */
    const uint8_t *bl = row + (size_t)(s / 4) * 210;
    const int h = (s % 4) / 2, c = s % 2;
    __m512i ql = _mm512_loadu_si512(bl + 64 * h);
    if (c) ql = _mm512_srli_epi16(ql, 4);
    const __m512i qh = _mm512_broadcast_i64x4(load256(bl + 128 + 32 * h));
    const __m512i cnt = join256(_mm256_set1_epi16((short)(4 * c)), _mm256_set1_epi16((short)(4 * c + 2)));
    const __m512i hi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, cnt), _mm512_set1_epi8(3)), 4);
    return _mm512_or_si512(_mm512_and_si512(ql, _mm512_set1_epi8(0x0f)), hi);
}

TARGET_QB INLINE __m512i step_q8_0(const uint8_t *row, int s) {
    const uint8_t *b0 = row + (size_t)(2 * s) * 34;
    const __m256i x80 = _mm256_set1_epi8((char)0x80); /* k + 128 */
    return join256(_mm256_xor_si256(load256(b0 + 2), x80), _mm256_xor_si256(load256(b0 + 36), x80));
}

TARGET_QB INLINE __m512i step_q4_0(const uint8_t *row, int s) {
    const uint8_t *b0 = row + (size_t)(2 * s) * 18;
    const __m256i raw = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(const void *)(b0 + 20)),
                                         _mm_loadu_si128((const __m128i *)(const void *)(b0 + 2)));
    /* nibbles(): [lo a, lo b, hi a, hi b] in 128-bit lanes; a block is lo then hi */
    return _mm512_shuffle_i64x2(nibbles(raw), nibbles(raw), _MM_SHUFFLE(3, 1, 2, 0));
}

TARGET_QB INLINE __m512i step_iq4xs(const uint8_t *row, int s) {
    const __m512i levels = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141,
                                                                (char)153, (char)166, (char)181, (char)197, (char)217,
                                                                (char)241)); /* lm_iq4_levels + 128 */
    const __m512i u = nibbles(load256(row + (size_t)(s / 4) * 136 + 8 + 32 * (s % 4)));
    return _mm512_shuffle_epi8(levels, _mm512_shuffle_i64x2(u, u, _MM_SHUFFLE(3, 1, 2, 0)));
}

/* MXFP4 (both layouts, qblock.h): 16 code bytes of a group as its 32 u = twice the
 * e2m1 value + 16, in value order: pairs (2j, 2j + 1) (split) or (j, j + 16) (ggml). */
TARGET_QB INLINE __m256i mxfp4_group_u(const uint8_t *c, int split) {
    const __m128i lut = _mm_setr_epi8(16, 17, 18, 19, 20, 22, 24, 28, 16, 15, 14, 13, 12, 10, 8, 4);
    const __m128i m4 = _mm_set1_epi8(0x0f), x = _mm_loadu_si128((const __m128i *)(const void *)c);
    const __m128i lo = _mm_and_si128(x, m4), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m4);
    const __m128i v0 = split ? _mm_unpacklo_epi8(lo, hi) : lo, v1 = split ? _mm_unpackhi_epi8(lo, hi) : hi;
    return _mm256_set_m128i(_mm_shuffle_epi8(lut, v1), _mm_shuffle_epi8(lut, v0));
}

/* Step s of an MXFP4 row (codes at row; the split layout's scales at srow), and its
 * two groups' a16 = 2^(E - 128) into lane i of f[gc], f[gc + 1]. */
TARGET_QB INLINE __m512i step_mxfp4(const uint8_t *row, const uint8_t *srow, int s, qpanel *p, int gc, int i) {
    if (srow) {
        p->f[gc][i] = lm_e8m0_half_to_f32(srow[2 * s]);
        p->f[gc + 1][i] = lm_e8m0_half_to_f32(srow[2 * s + 1]);
        return join256(mxfp4_group_u(row + (size_t)s * 32, 1), mxfp4_group_u(row + (size_t)s * 32 + 16, 1));
    }
    const uint8_t *b0 = row + (size_t)(2 * s) * 17;
    p->f[gc][i] = lm_e8m0_half_to_f32(b0[0]);
    p->f[gc + 1][i] = lm_e8m0_half_to_f32(b0[17]);
    return join256(mxfp4_group_u(b0 + 1, 0), mxfp4_group_u(b0 + 18, 0));
}

/* ---- a panel's chunk ---- */

/* Whether type t keeps one a16 per 16-value half (else one per group). */
INLINE int halves_of(lm_dtype t) { return t == LM_DT_Q6_K || t == LM_DT_Q3_K; }

/* The scales of values c0..c0+nv-1 (c0 a multiple of CHUNK, nv of 64) of the 16 rows
 * into p, for the types whose scales are gathered (the others come with their codes,
 * decode_step). */
TARGET_QB INLINE void fill_scales(const lm_dtype t, const uint8_t *const rowp[PANEL], __m512i idx, int c0, int nv,
                                  qpanel *p) {
    /* 256 values at a time (cols and c0 are multiples of 256 for 256-value blocks) */
    for (int v = 0; v < nv; v += 256) {
        const int gc = v / 32, first = (c0 + v) / 32; /* group in the chunk and in the row */
        switch (t) {
        case LM_DT_Q4_K: scales_q45k(rowp, (size_t)(first / 8) * 144, p, gc); break;
        case LM_DT_Q5_K: scales_q45k(rowp, (size_t)(first / 8) * 176, p, gc); break;
        case LM_DT_Q6_K: scales_q6k(rowp, (size_t)(first / 8) * 210, p, gc); break;
        case LM_DT_IQ4_XS: scales_iq4xs(rowp, (size_t)(first / 8) * 136, p, gc); break;
        case LM_DT_Q8_0:
        case LM_DT_Q4_0: {
            const size_t bb = t == LM_DT_Q8_0 ? 34 : 18;
            const int gn = nv - v < 256 ? (nv - v) / 32 : 8;
            for (int g = 0; g < gn; g++) _mm512_store_ps(p->f[gc + g], f16_low(gather(rowp[0], idx, (size_t)(first + g) * bb)));
            break;
        }
        default: break; /* the other types: with their codes, decode_step */
        }
    }
}

/* Step s (values 64s..64s+63) of row i (at row, MXFP4_SPLIT's scales at srow) as 64
 * unsigned byte codes; the types without gathered scales put row i's scales of the
 * step's two groups, gc and gc + 1 of the chunk, into lane i of p. */
TARGET_QB INLINE __m512i decode_step(const lm_dtype t, const uint8_t *row, const uint8_t *srow, int s, qpanel *p,
                                     int gc, int i) {
    switch (t) {
    case LM_DT_Q4_K: return step_q4k(row, s);
    case LM_DT_Q5_K: return step_q5k(row, s);
    case LM_DT_Q6_K: return step_q6k(row, s);
    case LM_DT_Q8_0: return step_q8_0(row, s);
    case LM_DT_Q4_0: return step_q4_0(row, s);
    case LM_DT_IQ4_XS: return step_iq4xs(row, s);
    case LM_DT_MXFP4: return step_mxfp4(row, NULL, s, p, gc, i);
    case LM_DT_MXFP4_SPLIT: return step_mxfp4(row, srow, s, p, gc, i);
    default: { /* through the common group form, one row at a time */
        lm_qgroup g[2];
        uint8_t buf[64];
        for (int k = 0; k < 2; k++) {
            lm_qblock_group(t, row, 2 * s + k, &g[k]);
            memcpy(buf + 32 * k, g[k].u, 32);
            if (halves_of(t)) p->f[2 * (gc + k)][i] = g[k].a16[0], p->f[2 * (gc + k) + 1][i] = g[k].a16[1];
            else p->f[gc + k][i] = g[k].a16[0];
            p->b[gc + k][i] = g[k].b;
        }
        return _mm512_loadu_si512(buf);
    }
    }
}

/* Values c0..c0+nv-1 (c0 a multiple of CHUNK, nv of 64) of the 16 rows at rowp
 * (idx: their byte offsets from rowp[0]; srowp: MXFP4_SPLIT's scale rows) into p; the
 * same bytes of the next panel (pf_off bytes on, 0 = none) are prefetched while
 * decoding. */
TARGET_QB INLINE void fill_chunk(const lm_dtype t, const uint8_t *const rowp[PANEL], const uint8_t *const srowp[PANEL],
                                 __m512i idx, size_t rb, int cols, int c0, int nv, qpanel *p, size_t pf_off) {
    const int s0 = c0 / 64, ns = nv / 64, nsteps = cols / 64;
    fill_scales(t, rowp, idx, c0, nv, p);
    for (int s = 0; s < ns; s++) {
        __m512i v[PANEL];
        const size_t pf = ((size_t)s0 + (size_t)s) * rb / (size_t)nsteps; /* the step's first byte, about */
        UNROLL16
        for (int i = 0; i < PANEL; i++) {
            if (pf_off) _mm_prefetch((const char *)rowp[i] + pf_off + pf, _MM_HINT_T0);
            if (pf_off && t == LM_DT_Q8_0) /* 68 bytes a step: the line it ends in too */
                _mm_prefetch((const char *)rowp[i] + pf_off + pf + 67, _MM_HINT_T0);
            v[i] = decode_step(t, rowp[i], srowp[i], s0 + s, p, 2 * s, i);
        }
        lm_transpose16x16(v);
        UNROLL16
        for (int i = 0; i < PANEL; i++) _mm512_store_si512(&p->w[16 * s + i], v[i]);
    }
}

/* ---- the tokens over a chunk ---- */

TARGET_QB INLINE __m512i bcast32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* T tokens from t0 over groups 0..gn-1 of chunk p (the row's groups g0..), into
 * y's rows r..r+15 (masked by rm): from zero for the row's first chunk, else from
 * what the previous chunk stored. */
TARGET_QB INLINE void chunk_tokens(const qpanel *p, int g0, int gn, const lm_act8 *a, int t0, const int T, float *y,
                                   size_t rows, int r, __mmask16 rm, int first, const int halves, const int sh,
                                   const int has_b) {
    const int8_t *q[8];
    const float *dx[8], *xs[8];
    const int32_t *q16[8];
    __m512 acc[8];
    UNROLL8
    for (int t = 0; t < T; t++) {
        const size_t tt = (size_t)t0 + (size_t)t;
        q[t] = a->q + tt * a->q_stride + (size_t)g0 * 32;
        dx[t] = a->dx + tt * (size_t)a->ng_stride + g0;
        xs[t] = a->xsum + tt * (size_t)a->ng_stride + g0;
        q16[t] = a->qsum16 + tt * a->qsum16_stride + 2 * (size_t)g0;
        acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rm, y + tt * rows + (size_t)r);
    }
    const int mul = sh >= 0 ? 1 << sh : 0;
    for (int g = 0; g < gn; g++) {
        __m512i w[8]; /* the group's codes, kept in registers over the tokens */
        UNROLL8
        for (int k = 0; k < 8; k++) w[k] = _mm512_load_si512(&p->w[8 * g + k]);
        UNROLL8
        for (int t = 0; t < T; t++) {
            const int8_t *x = q[t] + 32 * g;
            const __m512 d = _mm512_set1_ps(dx[t][g]);
            if (halves) {
                UNROLL8
                for (int h = 0; h < 2; h++) {
                    __m512i ia = _mm512_set1_epi32(-q16[t][2 * g + h] * mul);
                    UNROLL8
                    for (int k = 0; k < 4; k++) ia = _mm512_dpbusd_epi32(ia, w[4 * h + k], bcast32(x + 16 * h + 4 * k));
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), _mm512_mul_ps(_mm512_load_ps(p->f[2 * g + h]), d), acc[t]);
                }
            } else {
                /* two chains of 4, added: the same exact sum, half the latency */
                __m512i ia = _mm512_set1_epi32(-(q16[t][2 * g] + q16[t][2 * g + 1]) * mul), ib = _mm512_setzero_si512();
                UNROLL8
                for (int k = 0; k < 4; k++) {
                    ia = _mm512_dpbusd_epi32(ia, w[k], bcast32(x + 4 * k));
                    ib = _mm512_dpbusd_epi32(ib, w[4 + k], bcast32(x + 16 + 4 * k));
                }
                ia = _mm512_add_epi32(ia, ib);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), _mm512_mul_ps(_mm512_load_ps(p->f[g]), d), acc[t]);
            }
            if (has_b) acc[t] = _mm512_fmadd_ps(_mm512_load_ps(p->b[g]), _mm512_set1_ps(xs[t][g]), acc[t]);
        }
    }
    UNROLL8
    for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + (size_t)(t0 + t) * rows + (size_t)r, rm, acc[t]);
}

typedef void (*tokens_fn)(const qpanel *, int, int, const lm_act8 *, int, float *, size_t, int, __mmask16, int);
/* One function per token count (1, 2, 4, 8) and per form of the type: halves or
 * not, log2(off) (-1: none), a b term or not. */
#define TOKENS_T(name, T, HV, SH, HB)                                                                               \
    TARGET_QB static void name##_##T(const qpanel *p, int g0, int gn, const lm_act8 *a, int t0, float *y, size_t rows, \
                                     int r, __mmask16 rm, int first) {                                              \
        chunk_tokens(p, g0, gn, a, t0, T, y, rows, r, rm, first, HV, SH, HB);                                       \
    }
#define TOKENS(name, HV, SH, HB)                                                                                    \
    TOKENS_T(name, 1, HV, SH, HB)                                                                                   \
    TOKENS_T(name, 2, HV, SH, HB)                                                                                   \
    TOKENS_T(name, 4, HV, SH, HB)                                                                                   \
    TOKENS_T(name, 8, HV, SH, HB)                                                                                   \
    static const tokens_fn name[4] = {name##_1, name##_2, name##_4, name##_8};
TOKENS(tok_b, 0, -1, 1)     /* Q4_K, Q5_K, Q4_1, Q5_1 */
TOKENS(tok_off3, 0, 3, 0)   /* Q4_0 */
TOKENS(tok_off4, 0, 4, 0)   /* Q5_0 */
TOKENS(tok_off7, 0, 7, 0)   /* Q8_0, IQ4_XS, IQ4_NL */
TOKENS(tok_h_off5, 1, 5, 0) /* Q6_K */
TOKENS(tok_h_off2, 1, 2, 0) /* Q3_K */

static const tokens_fn *tokens_for(lm_dtype t) {
    switch (t) {
    case LM_DT_Q4_0: return tok_off3;
    case LM_DT_Q5_0: case LM_DT_MXFP4: case LM_DT_MXFP4_SPLIT: return tok_off4;
    case LM_DT_Q8_0: case LM_DT_IQ4_XS: case LM_DT_IQ4_NL: return tok_off7;
    case LM_DT_Q6_K: return tok_h_off5;
    case LM_DT_Q3_K: return tok_h_off2;
    default: return tok_b;
    }
}

TARGET_QB INLINE void rows_of(const lm_dtype t, const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    const int split = t == LM_DT_MXFP4_SPLIT; /* codes [rows][cols / 2], scales [rows][cols / 32] apart */
    const size_t rb = split ? (size_t)W->cols / 2 : lm_dtype_row_bytes(W->dtype, (uint64_t)W->cols);
    const size_t rows = (size_t)W->rows;
    const int cols = W->cols;
    const tokens_fn *fn = tokens_for(W->dtype);
    qpanel p;
    for (int r = r0; r < r1; r += PANEL) {
        const int nr = r1 - r < PANEL ? r1 - r : PANEL;
        const __mmask16 rm = nr == PANEL ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
        const uint8_t *rowp[PANEL], *srowp[PANEL];
        int32_t off[PANEL];
        for (int i = 0; i < PANEL; i++) { /* lanes past the rows repeat the first; their results are dropped */
            rowp[i] = (const uint8_t *)W->data + (size_t)(r + (i < nr ? i : 0)) * rb;
            srowp[i] = split ? (const uint8_t *)W->scales + (size_t)(r + (i < nr ? i : 0)) * ((size_t)cols / 32) : NULL;
            off[i] = (int32_t)(i < nr ? (size_t)i * rb : 0);
        }
        const __m512i idx = _mm512_loadu_si512(off);
        /* a decode step streams 16 rows at once, which outruns the hardware
         * prefetcher: the next panel's same bytes are fetched meanwhile */
        const size_t pf_off = (size_t)r + 2 * PANEL <= rows ? PANEL * rb : 0;
        for (int c0 = 0; c0 < cols; c0 += CHUNK) {
            const int nv = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            fill_chunk(t, rowp, srowp, idx, rb, cols, c0, nv, &p, pf_off);
            for (int t0 = 0; t0 < n;) {
                const int left = n - t0, k = left >= 8 ? 3 : left >= 4 ? 2 : left >= 2 ? 1 : 0;
                fn[k](&p, c0 / 32, nv / 32, a, t0, y, rows, r, rm, c0 == 0);
                t0 += 1 << k;
            }
        }
    }
}

/* ---- one token (decode): K in lanes, then lanes summed per group ----
 * With one token a decoded chunk is used once, so transposing it (64 shuffles, a
 * store and a reload per 16 rows and 64 values) costs more than the products.
 * Here each row's 64-value step is multiplied where it lies (vpdpbusd against the
 * token's 64 bytes in natural order: lane k = values 4k..4k+3), and the 16 rows'
 * vectors are summed lane-wise into one vector per group, or per 16-value half,
 * with a row per lane (lm_reduce_rows16). Integer sums are exact in any order, so
 * every lane ends with the panel path's I and then takes its f32 steps in its order
 * (chunk_tokens with one token): the same bits as a batch. */

/* log2(off) and the b term of type t, as tokens_for reads them (constants once t is). */
INLINE int off_shift_of(lm_dtype t) {
    switch (t) {
    case LM_DT_Q4_0: return 3;
    case LM_DT_Q5_0: case LM_DT_MXFP4: case LM_DT_MXFP4_SPLIT: return 4;
    case LM_DT_Q8_0: case LM_DT_IQ4_XS: case LM_DT_IQ4_NL: return 7;
    case LM_DT_Q6_K: return 5;
    case LM_DT_Q3_K: return 2;
    default: return -1;
    }
}
INLINE int has_b_of(lm_dtype t) { return off_shift_of(t) < 0; }

/* The f32 steps of groups g, g + 1 of the row (gc, gc + 1 of the chunk) for one
 * token, I[] their exact sums u . q (per half where the type has them). */
TARGET_QB INLINE __m512 one_groups(const lm_dtype t, const __m512i *I, const qpanel *p, int gc, int g,
                                   const lm_act8 *a, __m512 acc) {
    const int sh = off_shift_of(t);
    UNROLL8
    for (int k = 0; k < 2; k++) {
        const __m512 d = _mm512_set1_ps(a->dx[g + k]);
        const int32_t *q16 = a->qsum16 + 2 * (size_t)(g + k);
        if (halves_of(t)) {
            UNROLL8
            for (int h = 0; h < 2; h++) {
                const __m512i ia = _mm512_sub_epi32(I[2 * k + h], _mm512_set1_epi32(q16[h] * (1 << sh)));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), _mm512_mul_ps(_mm512_load_ps(p->f[2 * (gc + k) + h]), d), acc);
            }
        } else {
            const __m512i ia = sh >= 0 ? _mm512_sub_epi32(I[k], _mm512_set1_epi32((q16[0] + q16[1]) * (1 << sh))) : I[k];
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), _mm512_mul_ps(_mm512_load_ps(p->f[gc + k]), d), acc);
        }
        if (has_b_of(t)) acc = _mm512_fmadd_ps(_mm512_load_ps(p->b[gc + k]), _mm512_set1_ps(a->xsum[g + k]), acc);
    }
    return acc;
}

TARGET_QB INLINE void rows_one(const lm_dtype t, const lm_mat *W, int r0, int r1, const lm_act8 *a, float *y) {
    const int split = t == LM_DT_MXFP4_SPLIT;
    const size_t rb = split ? (size_t)W->cols / 2 : lm_dtype_row_bytes(W->dtype, (uint64_t)W->cols);
    const size_t rows = (size_t)W->rows;
    const int cols = W->cols, nsteps = cols / 64;
    qpanel p; /* its scales only */
    for (int r = r0; r < r1; r += PANEL) {
        const int nr = r1 - r < PANEL ? r1 - r : PANEL;
        const __mmask16 rm = nr == PANEL ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
        const uint8_t *rowp[PANEL], *srowp[PANEL];
        int32_t off[PANEL];
        for (int i = 0; i < PANEL; i++) { /* lanes past the rows repeat the first; their results are dropped */
            rowp[i] = (const uint8_t *)W->data + (size_t)(r + (i < nr ? i : 0)) * rb;
            srowp[i] = split ? (const uint8_t *)W->scales + (size_t)(r + (i < nr ? i : 0)) * ((size_t)cols / 32) : NULL;
            off[i] = (int32_t)(i < nr ? (size_t)i * rb : 0);
        }
        const __m512i idx = _mm512_loadu_si512(off);
        const size_t pf_off = (size_t)r + 2 * PANEL <= rows ? PANEL * rb : 0;
        __m512 acc = _mm512_setzero_ps();
        for (int c0 = 0; c0 < cols; c0 += CHUNK) {
            const int nv = cols - c0 < CHUNK ? cols - c0 : CHUNK, s0 = c0 / 64;
            fill_scales(t, rowp, idx, c0, nv, &p);
            for (int s = 0; t == LM_DT_Q4_K && s < nv / 64; s += 2) {
                /* 128 values a load: qs bytes 64j..64j+63 of the super-block hold
                 * groups 4j, 4j+2 in their low nibbles, 4j+1, 4j+3 in their high ones */
                const __m512i x0 = _mm512_loadu_si512(a->q + (size_t)(s0 + s) * 64),
                              x1 = _mm512_loadu_si512(a->q + (size_t)(s0 + s) * 64 + 64);
                const __m512i xlo = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(1, 0, 1, 0)),
                              xhi = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(3, 2, 3, 2));
                const size_t pf = ((size_t)s0 + (size_t)s) * rb / (size_t)nsteps;
                const size_t at = (size_t)((s0 + s) / 4) * 144 + 16 + 32 * (size_t)((s0 + s) % 4);
                const __m512i m4 = _mm512_set1_epi8(0x0f);
                __m512i dl[PANEL], dh[PANEL], il[2], ih[2];
                UNROLL16
                for (int i = 0; i < PANEL; i++) {
                    if (pf_off) { /* both lines the pair's 72 bytes of the row may touch: one prefetch
                                   * a pair left every ninth line to the loads, which waited */
                        _mm_prefetch((const char *)rowp[i] + pf_off + pf, _MM_HINT_T0);
                        _mm_prefetch((const char *)rowp[i] + pf_off + pf + 71, _MM_HINT_T0);
                    }
                    const __m512i w = _mm512_loadu_si512(rowp[i] + at);
                    dl[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(w, m4), xlo);
                    dh[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(w, 4), m4), xhi);
                }
                lm_reduce_rows16(dl, 8, il);
                lm_reduce_rows16(dh, 8, ih);
                const __m512i I0[2] = {il[0], ih[0]}, I1[2] = {il[1], ih[1]};
                acc = one_groups(t, I0, &p, 2 * s, 2 * (s0 + s), a, acc);
                acc = one_groups(t, I1, &p, 2 * s + 2, 2 * (s0 + s) + 2, a, acc);
            }
            for (int s = 0; t != LM_DT_Q4_K && s < nv / 64; s++) {
                const __m512i x = _mm512_loadu_si512(a->q + (size_t)(s0 + s) * 64);
                const size_t pf = ((size_t)s0 + (size_t)s) * rb / (size_t)nsteps;
                __m512i d[PANEL], I[4];
                UNROLL16
                for (int i = 0; i < PANEL; i++) {
                    if (pf_off) _mm_prefetch((const char *)rowp[i] + pf_off + pf, _MM_HINT_T0);
                    if (pf_off && t == LM_DT_Q8_0) /* 68 bytes a step: the line it ends in too */
                        _mm_prefetch((const char *)rowp[i] + pf_off + pf + 67, _MM_HINT_T0);
                    d[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), decode_step(t, rowp[i], srowp[i], s0 + s, &p, 2 * s, i), x);
                }
                lm_reduce_rows16(d, halves_of(t) ? 4 : 8, I);
                acc = one_groups(t, I, &p, 2 * s, 2 * (s0 + s), a, acc);
            }
        }
        _mm512_mask_storeu_ps(y + r, rm, acc);
    }
}

#define ROWS_FN(name, T)                                                                                    \
    TARGET_QB static void name(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {        \
        if (n == 1) rows_one(T, W, r0, r1, a, y);                                                           \
        else rows_of(T, W, r0, r1, a, n, y);                                                                \
    }
ROWS_FN(rows_q4k, LM_DT_Q4_K)
ROWS_FN(rows_q5k, LM_DT_Q5_K)
ROWS_FN(rows_q6k, LM_DT_Q6_K)
ROWS_FN(rows_q8_0, LM_DT_Q8_0)
ROWS_FN(rows_q4_0, LM_DT_Q4_0)
ROWS_FN(rows_iq4xs, LM_DT_IQ4_XS)
ROWS_FN(rows_mxfp4, LM_DT_MXFP4)
ROWS_FN(rows_mxfp4_split, LM_DT_MXFP4_SPLIT)

TARGET_QB static void rows_generic(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    rows_of(W->dtype, W, r0, r1, a, n, y);
}

void lm_qblock_rows_avx512(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    switch (W->dtype) {
    case LM_DT_Q4_K: rows_q4k(W, r0, r1, a, n, y); break;
    case LM_DT_Q5_K: rows_q5k(W, r0, r1, a, n, y); break;
    case LM_DT_Q6_K: rows_q6k(W, r0, r1, a, n, y); break;
    case LM_DT_Q8_0: rows_q8_0(W, r0, r1, a, n, y); break;
    case LM_DT_Q4_0: rows_q4_0(W, r0, r1, a, n, y); break;
    case LM_DT_IQ4_XS: rows_iq4xs(W, r0, r1, a, n, y); break;
    case LM_DT_MXFP4: rows_mxfp4(W, r0, r1, a, n, y); break;
    case LM_DT_MXFP4_SPLIT: rows_mxfp4_split(W, r0, r1, a, n, y); break;
    default: rows_generic(W, r0, r1, a, n, y); break;
    }
}

/* Whole 64-value steps, and 16 rows' byte offsets within int32 (the gathers). */
int lm_qblock_handles_avx512(const lm_mat *W) {
    const uint64_t rb = W->dtype == LM_DT_MXFP4_SPLIT ? (uint64_t)W->cols / 2 : lm_dtype_row_bytes(W->dtype, (uint64_t)W->cols);
    return (lm_cpu_features() & LM_CPU_AVX512VNNI) && lm_qblock_act8(W->dtype) && W->cols % 64 == 0 &&
           rb < (uint64_t)INT32_MAX / PANEL;
}

#else

int lm_qblock_handles_avx512(const lm_mat *W) {
    (void)W;
    return 0;
}
void lm_qblock_rows_avx512(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    (void)W, (void)r0, (void)r1, (void)a, (void)n, (void)y;
}

#endif

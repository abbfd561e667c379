/* Int8 activations with ggml block weights, AVX2 (qblock.h): the AVX-512 kernel's
 * layout (qblock_avx512.c) at 8 lanes. A panel of 8 rows is decoded CHUNK values at a
 * time into unsigned byte codes, each 32-value group of the 8 rows transposed so that
 * word k of the group (values 4k..4k+3) of the 8 rows is one vector; scales are
 * gathered from the 8 rows' blocks (a16 per group or per 16-value half, b per group).
 * Per group and token, each lane gets its row's exact integer I, then
 * acc = fma(I, a16 * dx, acc) and acc = fma(b, xsum, acc), group after group: the
 * same f32 operations in the same order as the AVX-512 kernel, so both tables give
 * the same bits (and a token alone its batched result).
 * Two ways to the same I, picked per call from lm_cpu_features():
 *  - AVX-VNNI (Alder Lake, Zen 5): vpdpbusd on ymm, from -off * (the q sum) as there;
 *  - plain AVX2: vpmaddubsw (u8 x s8 pairs to s16) and vpmaddwd with ones. Codes up to
 *    63 (every type but the off-128 ones): two words' pairs are added in s16 (at most
 *    4 * 63 * 127 < 32767) before widening, with the same -off * (q sum) start. Q8_0
 *    and the IQ4 types (codes up to 255) use the signed code s = u - 128: |s| against
 *    q with s's sign (at most 2 * 128 * 127 per pair), which sums s * q = I directly. */
#include "kernels/cpu/qblock.h"

#if defined(__x86_64__)

#include "formats/ggml_blocks.h"

#include <immintrin.h>
#include <limits.h>
#include <string.h>

#define TARGET_Q2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_Q2V __attribute__((target("avx2,fma,f16c,avxvnni")))
#define INLINE static inline __attribute__((always_inline))
#define PANEL 8
#define CHUNK 1024
#define CG (CHUNK / 32)
#define UNROLL8 _Pragma("GCC unroll 8")

typedef struct {
    __m256i w[CHUNK / 4];                               /* group g's word k at w[8g + k], row i in lane i */
    float f[2 * CG][PANEL] __attribute__((aligned(32))); /* a16: f[g], or f[2g + h] per half */
    float b[CG][PANEL] __attribute__((aligned(32)));
} qpanel8;

TARGET_Q2 INLINE __m256i load256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
TARGET_Q2 INLINE __m128i load128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }

/* ---- scales ---- */

TARGET_Q2 INLINE __m256i gather(const uint8_t *row0, __m256i idx, size_t off) {
    return _mm256_i32gather_epi32((const int *)(const void *)(row0 + off), idx, 1);
}
/* the low / high 16 bits of each lane as IEEE half -> f32 */
TARGET_Q2 INLINE __m256 f16_low(__m256i w) {
    const __m256i lo = _mm256_and_si256(w, _mm256_set1_epi32(0xffff));
    return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(lo, lo), 0x08)));
}
TARGET_Q2 INLINE __m256 f16_high(__m256i w) { return f16_low(_mm256_srli_epi32(w, 16)); }
TARGET_Q2 INLINE __m256 byte_u(__m256i w, const int k) {
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w, 8 * k), _mm256_set1_epi32(0xff)));
}
TARGET_Q2 INLINE __m256 byte_s(__m256i w, const int k) {
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(w, 24 - 8 * k), 24));
}
TARGET_Q2 INLINE __m256 negate(__m256 v) { return _mm256_xor_ps(v, _mm256_set1_ps(-0.0f)); }

TARGET_Q2 INLINE void scales_q45k(const uint8_t *row0, __m256i idx, size_t off, qpanel8 *p, int gc) {
    const __m256i w0 = gather(row0, idx, off), w1 = gather(row0, idx, off + 4), w2 = gather(row0, idx, off + 8),
                  w3 = gather(row0, idx, off + 12);
    const __m256 d = f16_low(w0), dmin = f16_high(w0);
    const __m256i m6 = _mm256_set1_epi32(0x3f3f3f3f), m4 = _mm256_set1_epi32(0x0f0f0f0f), m2 = _mm256_set1_epi32(0x03030303);
    const __m256i sc03 = _mm256_and_si256(w1, m6), mn03 = _mm256_and_si256(w2, m6);
    const __m256i sc47 = _mm256_or_si256(_mm256_and_si256(w3, m4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w1, 6), m2), 4));
    const __m256i mn47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w3, 4), m4),
                                         _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w2, 6), m2), 4));
    UNROLL8
    for (int k = 0; k < 4; k++) {
        _mm256_store_ps(p->f[gc + k], _mm256_mul_ps(d, byte_u(sc03, k)));
        _mm256_store_ps(p->f[gc + 4 + k], _mm256_mul_ps(d, byte_u(sc47, k)));
        _mm256_store_ps(p->b[gc + k], negate(_mm256_mul_ps(dmin, byte_u(mn03, k))));
        _mm256_store_ps(p->b[gc + 4 + k], negate(_mm256_mul_ps(dmin, byte_u(mn47, k))));
    }
}

TARGET_Q2 INLINE void scales_q6k(const uint8_t *row0, __m256i idx, size_t off, qpanel8 *p, int gc) {
    const __m256 d = f16_high(gather(row0, idx, off + 206));
    UNROLL8
    for (int k = 0; k < 4; k++) {
        const __m256i s = gather(row0, idx, off + 192 + 4 * (size_t)k);
        UNROLL8
        for (int j = 0; j < 4; j++) _mm256_store_ps(p->f[2 * gc + 4 * k + j], _mm256_mul_ps(d, byte_s(s, j)));
    }
}

TARGET_Q2 INLINE void scales_iq4xs(const uint8_t *row0, __m256i idx, size_t off, qpanel8 *p, int gc) {
    const __m256i w0 = gather(row0, idx, off), sl = gather(row0, idx, off + 4);
    const __m256 d = f16_low(w0);
    const __m256i sh = _mm256_srli_epi32(w0, 16), m4 = _mm256_set1_epi32(0x0f), m2 = _mm256_set1_epi32(3);
    UNROLL8
    for (int j = 0; j < 8; j++) {
        const __m256i ls = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(sl, 4 * j), m4),
                                           _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(sh, 2 * j), m2), 4));
        _mm256_store_ps(p->f[gc + j], _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(ls, _mm256_set1_epi32(32)))));
    }
}

/* ---- codes: groups 2s and 2s + 1 of a row, 32 bytes each ---- */

TARGET_Q2 INLINE void nib(__m256i raw, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    *lo = _mm256_and_si256(raw, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
}

TARGET_Q2 INLINE void step_q4k(const uint8_t *row, int s, __m256i *a, __m256i *b) {
    nib(load256(row + (size_t)(s / 4) * 144 + 16 + 32 * (s % 4)), a, b);
}

TARGET_Q2 INLINE void step_q5k(const uint8_t *row, int s, __m256i *a, __m256i *b) {
    const uint8_t *bl = row + (size_t)(s / 4) * 176;
    const int c = s % 4;
    nib(load256(bl + 48 + 32 * c), a, b);
    const __m256i qh = load256(bl + 16), s16 = _mm256_set1_epi8(16);
    const __m256i ba = _mm256_set1_epi8((char)(1 << (2 * c))), bb = _mm256_set1_epi8((char)(1 << (2 * c + 1)));
    *a = _mm256_or_si256(*a, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, ba), ba), s16));
    *b = _mm256_or_si256(*b, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bb), bb), s16));
}

TARGET_Q2 INLINE void step_q6k(const uint8_t *row, int s, __m256i *a, __m256i *b) {
    const uint8_t *bl = row + (size_t)(s / 4) * 210;
    const int h = (s % 4) / 2, c = s % 2;
    __m256i l0 = load256(bl + 64 * h), l1 = load256(bl + 64 * h + 32);
    const __m256i qh = load256(bl + 128 + 32 * h), m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
    __m256i h0, h1;
    if (c) {
        l0 = _mm256_srli_epi16(l0, 4), l1 = _mm256_srli_epi16(l1, 4);
        h0 = _mm256_srli_epi16(qh, 4), h1 = _mm256_srli_epi16(qh, 6);
    } else {
        h0 = qh, h1 = _mm256_srli_epi16(qh, 2);
    }
    *a = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h0, m3), 4));
    *b = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(h1, m3), 4));
}

TARGET_Q2 INLINE void step_q8_0(const uint8_t *row, int s, __m256i *a, __m256i *b) {
    const uint8_t *b0 = row + (size_t)(2 * s) * 34;
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    *a = _mm256_xor_si256(load256(b0 + 2), x80);
    *b = _mm256_xor_si256(load256(b0 + 36), x80);
}

TARGET_Q2 INLINE __m256i block16(__m128i raw) { /* a 32-value block's 16 nibble bytes: low nibbles, then high */
    const __m128i m4 = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
}

TARGET_Q2 INLINE void step_q4_0(const uint8_t *row, int s, __m256i *a, __m256i *b) {
    const uint8_t *b0 = row + (size_t)(2 * s) * 18;
    *a = block16(load128(b0 + 2));
    *b = block16(load128(b0 + 20));
}

TARGET_Q2 INLINE void step_iq4xs(const uint8_t *row, int s, __m256i *a, __m256i *b) {
    const __m256i levels = _mm256_setr_epi8(1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141, (char)153, (char)166,
                                            (char)181, (char)197, (char)217, (char)241, 1, 24, 45, 63, 79, 93, 106, 118,
                                            (char)129, (char)141, (char)153, (char)166, (char)181, (char)197, (char)217,
                                            (char)241); /* lm_iq4_levels + 128 */
    const uint8_t *qs = row + (size_t)(s / 4) * 136 + 8 + 32 * (s % 4);
    *a = _mm256_shuffle_epi8(levels, block16(load128(qs)));
    *b = _mm256_shuffle_epi8(levels, block16(load128(qs + 16)));
}

/* v[i] word j -> v[j] word i, 8 x 8 */
TARGET_Q2 INLINE void transpose8(__m256i v[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        v[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}

INLINE int halves_of(lm_dtype t) { return t == LM_DT_Q6_K || t == LM_DT_Q3_K; }

TARGET_Q2 INLINE void fill_chunk(const lm_dtype t, const uint8_t *const rowp[PANEL], __m256i idx, size_t rb, int cols,
                                 int c0, int nv, qpanel8 *p, size_t pf_off) {
    const int s0 = c0 / 64, ns = nv / 64, nsteps = cols / 64;
    for (int v = 0; v < nv; v += 256) {
        const int gc = v / 32, first = (c0 + v) / 32;
        switch (t) {
        case LM_DT_Q4_K: scales_q45k(rowp[0], idx, (size_t)(first / 8) * 144, p, gc); break;
        case LM_DT_Q5_K: scales_q45k(rowp[0], idx, (size_t)(first / 8) * 176, p, gc); break;
        case LM_DT_Q6_K: scales_q6k(rowp[0], idx, (size_t)(first / 8) * 210, p, gc); break;
        case LM_DT_IQ4_XS: scales_iq4xs(rowp[0], idx, (size_t)(first / 8) * 136, p, gc); break;
        case LM_DT_Q8_0:
        case LM_DT_Q4_0: {
            const size_t bb = t == LM_DT_Q8_0 ? 34 : 18;
            const int gn = nv - v < 256 ? (nv - v) / 32 : 8;
            for (int g = 0; g < gn; g++) _mm256_store_ps(p->f[gc + g], f16_low(gather(rowp[0], idx, (size_t)(first + g) * bb)));
            break;
        }
        default: break;
        }
    }
    for (int s = 0; s < ns; s++) {
        __m256i va[PANEL], vb[PANEL];
        const size_t pf = ((size_t)s0 + (size_t)s) * rb / (size_t)nsteps;
        UNROLL8
        for (int i = 0; i < PANEL; i++) {
            if (pf_off) _mm_prefetch((const char *)rowp[i] + pf_off + pf, _MM_HINT_T0);
            if (pf_off && t == LM_DT_Q8_0) /* 68 bytes a step: the line it ends in too */
                _mm_prefetch((const char *)rowp[i] + pf_off + pf + 67, _MM_HINT_T0);
            switch (t) {
            case LM_DT_Q4_K: step_q4k(rowp[i], s0 + s, &va[i], &vb[i]); break;
            case LM_DT_Q5_K: step_q5k(rowp[i], s0 + s, &va[i], &vb[i]); break;
            case LM_DT_Q6_K: step_q6k(rowp[i], s0 + s, &va[i], &vb[i]); break;
            case LM_DT_Q8_0: step_q8_0(rowp[i], s0 + s, &va[i], &vb[i]); break;
            case LM_DT_Q4_0: step_q4_0(rowp[i], s0 + s, &va[i], &vb[i]); break;
            case LM_DT_IQ4_XS: step_iq4xs(rowp[i], s0 + s, &va[i], &vb[i]); break;
            default: {
                lm_qgroup g[2];
                for (int k = 0; k < 2; k++) {
                    const int gc = 2 * s + k;
                    lm_qblock_group(t, rowp[i], 2 * (s0 + s) + k, &g[k]);
                    if (halves_of(t)) p->f[2 * gc][i] = g[k].a16[0], p->f[2 * gc + 1][i] = g[k].a16[1];
                    else p->f[gc][i] = g[k].a16[0];
                    p->b[gc][i] = g[k].b;
                }
                va[i] = _mm256_loadu_si256((const __m256i *)(const void *)g[0].u);
                vb[i] = _mm256_loadu_si256((const __m256i *)(const void *)g[1].u);
                break;
            }
            }
        }
        transpose8(va);
        transpose8(vb);
        UNROLL8
        for (int i = 0; i < PANEL; i++) {
            _mm256_store_si256(&p->w[16 * s + i], va[i]);
            _mm256_store_si256(&p->w[16 * s + 8 + i], vb[i]);
        }
    }
}

/* ---- the tokens over a chunk ---- */

TARGET_Q2 INLINE __m256i bcast32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* The integer I of a group (words w[0..nw-1], nw 4 or 8) against x, from ia: the
 * plain AVX2 way (see the head comment; signed: the off-128 types). */
TARGET_Q2 INLINE __m256i dots_plain(__m256i ia, const __m256i *w, const int8_t *x, const int nw, const int sgn) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (sgn) {
        const __m256i x80 = _mm256_set1_epi8((char)0x80);
        UNROLL8
        for (int k = 0; k < nw; k++) {
            const __m256i s = _mm256_xor_si256(w[k], x80);
            const __m256i pr = _mm256_maddubs_epi16(_mm256_abs_epi8(s), _mm256_sign_epi8(bcast32(x + 4 * k), s));
            ia = _mm256_add_epi32(ia, _mm256_madd_epi16(pr, ones));
        }
        return ia;
    }
    UNROLL8
    for (int k = 0; k < nw; k += 2) {
        const __m256i pr = _mm256_add_epi16(_mm256_maddubs_epi16(w[k], bcast32(x + 4 * k)),
                                            _mm256_maddubs_epi16(w[k + 1], bcast32(x + 4 * k + 4)));
        ia = _mm256_add_epi32(ia, _mm256_madd_epi16(pr, ones));
    }
    return ia;
}

TARGET_Q2V INLINE __m256i dots_vnni(__m256i ia, const __m256i *w, const int8_t *x, const int nw, const int sgn) {
    (void)sgn;
    UNROLL8
    for (int k = 0; k < nw; k++) ia = _mm256_dpbusd_avx_epi32(ia, w[k], bcast32(x + 4 * k));
    return ia;
}

#define TARGET_plain TARGET_Q2
#define TARGET_vnni TARGET_Q2V
#define SIGNED_plain 1 /* the off-128 types through signed codes */
#define SIGNED_vnni 0
/* T tokens from t0 over groups 0..gn-1 of the chunk, into y's rows r.. (mask rm); sh:
 * log2(off) or -1; the plain way with signed codes starts from 0 rather than -off *
 * (q sum), the sign trick having taken the offset out already. */
#define CHUNK_TOKENS(way)                                                                                          \
    TARGET_##way INLINE void chunk_tokens_##way(const qpanel8 *p, int g0, int gn, const lm_act8 *a, int t0, const int T, \
                                                float *y, size_t rows, int r, __m256i rm, int first, const int halves,   \
                                                const int sh, const int has_b) {                                        \
        const int sgn = sh == 7 && SIGNED_##way;                                                                       \
        const int8_t *q[4];                                                                                            \
        const float *dx[4], *xs[4];                                                                                    \
        const int32_t *q16[4];                                                                                         \
        __m256 acc[4];                                                                                                 \
        for (int t = 0; t < T; t++) {                                                                                  \
            const size_t tt = (size_t)t0 + (size_t)t;                                                                        \
            q[t] = a->q + tt * a->q_stride + (size_t)g0 * 32;                                                          \
            dx[t] = a->dx + tt * (size_t)a->ng_stride + g0;                                                            \
            xs[t] = a->xsum + tt * (size_t)a->ng_stride + g0;                                                          \
            q16[t] = a->qsum16 + tt * a->qsum16_stride + 2 * (size_t)g0;                                               \
            acc[t] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(y + tt * rows + (size_t)r, rm);                  \
        }                                                                                                              \
        const int mul = sh >= 0 && !sgn ? 1 << sh : 0;                                                                 \
        for (int g = 0; g < gn; g++) {                                                                                 \
            __m256i w[8];                                                                                              \
            UNROLL8                                                                                                    \
            for (int k = 0; k < 8; k++) w[k] = _mm256_load_si256(&p->w[8 * g + k]);                                    \
            UNROLL8                                                                                                    \
            for (int t = 0; t < T; t++) {                                                                              \
                const int8_t *x = q[t] + 32 * g;                                                                       \
                const __m256 d = _mm256_set1_ps(dx[t][g]);                                                             \
                if (halves) {                                                                                          \
                    for (int h = 0; h < 2; h++) {                                                                      \
                        const __m256i ia = dots_##way(_mm256_set1_epi32(-q16[t][2 * g + h] * mul), w + 4 * h, x + 16 * h, 4, sgn); \
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_mul_ps(_mm256_load_ps(p->f[2 * g + h]), d), acc[t]); \
                    }                                                                                                  \
                } else {                                                                                               \
                    const __m256i ia = dots_##way(_mm256_set1_epi32(-(q16[t][2 * g] + q16[t][2 * g + 1]) * mul), w, x, 8, sgn); \
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_mul_ps(_mm256_load_ps(p->f[g]), d), acc[t]); \
                }                                                                                                      \
                if (has_b) acc[t] = _mm256_fmadd_ps(_mm256_load_ps(p->b[g]), _mm256_set1_ps(xs[t][g]), acc[t]);        \
            }                                                                                                          \
        }                                                                                                              \
        for (int t = 0; t < T; t++) _mm256_maskstore_ps(y + (size_t)(t0 + t) * rows + (size_t)r, rm, acc[t]);          \
    }
CHUNK_TOKENS(plain)
CHUNK_TOKENS(vnni)

typedef void (*tokens_fn)(const qpanel8 *, int, int, const lm_act8 *, int, float *, size_t, int, __m256i, int);
#define TOKENS_T(way, name, T, HV, SH, HB)                                                                            \
    TARGET_##way static void name##_##way##_##T(const qpanel8 *p, int g0, int gn, const lm_act8 *a, int t0, float *y, \
                                                size_t rows, int r, __m256i rm, int first) {                          \
        chunk_tokens_##way(p, g0, gn, a, t0, T, y, rows, r, rm, first, HV, SH, HB);                                   \
    }
#define TOKENS(name, HV, SH, HB)                                                                                   \
    TOKENS_T(plain, name, 1, HV, SH, HB)                                                                           \
    TOKENS_T(plain, name, 2, HV, SH, HB)                                                                           \
    TOKENS_T(plain, name, 4, HV, SH, HB)                                                                           \
    TOKENS_T(vnni, name, 1, HV, SH, HB)                                                                            \
    TOKENS_T(vnni, name, 2, HV, SH, HB)                                                                            \
    TOKENS_T(vnni, name, 4, HV, SH, HB)                                                                            \
    static const tokens_fn name[2][3] = {{name##_plain_1, name##_plain_2, name##_plain_4},                         \
                                         {name##_vnni_1, name##_vnni_2, name##_vnni_4}};
TOKENS(tok_b, 0, -1, 1)
TOKENS(tok_off3, 0, 3, 0)
TOKENS(tok_off4, 0, 4, 0)
TOKENS(tok_off7, 0, 7, 0)
TOKENS(tok_h_off5, 1, 5, 0)
TOKENS(tok_h_off2, 1, 2, 0)

static const tokens_fn (*tokens_for(lm_dtype t))[3] {
    switch (t) {
    case LM_DT_Q4_0: return tok_off3;
    case LM_DT_Q5_0: return tok_off4;
    case LM_DT_Q8_0: case LM_DT_IQ4_XS: case LM_DT_IQ4_NL: return tok_off7;
    case LM_DT_Q6_K: return tok_h_off5;
    case LM_DT_Q3_K: return tok_h_off2;
    default: return tok_b;
    }
}

TARGET_Q2 INLINE void rows_of(const lm_dtype t, const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    const size_t rb = lm_dtype_row_bytes(W->dtype, (uint64_t)W->cols), rows = (size_t)W->rows;
    const int cols = W->cols;
    const tokens_fn *fn = tokens_for(W->dtype)[(lm_cpu_features() & LM_CPU_AVXVNNI) != 0];
    qpanel8 p;
    for (int r = r0; r < r1; r += PANEL) {
        const int nr = r1 - r < PANEL ? r1 - r : PANEL;
        const uint8_t *rowp[PANEL];
        int32_t off[PANEL], mask[PANEL];
        for (int i = 0; i < PANEL; i++) {
            rowp[i] = (const uint8_t *)W->data + (size_t)(r + (i < nr ? i : 0)) * rb;
            off[i] = (int32_t)(i < nr ? (size_t)i * rb : 0);
            mask[i] = i < nr ? -1 : 0;
        }
        const __m256i idx = _mm256_loadu_si256((const __m256i *)(const void *)off);
        const __m256i rm = _mm256_loadu_si256((const __m256i *)(const void *)mask);
        const size_t pf_off = (size_t)r + 2 * PANEL <= rows ? PANEL * rb : 0;
        for (int c0 = 0; c0 < cols; c0 += CHUNK) {
            const int nv = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            fill_chunk(t, rowp, idx, rb, cols, c0, nv, &p, pf_off);
            for (int t0 = 0; t0 < n;) {
                const int left = n - t0, k = left >= 4 ? 2 : left >= 2 ? 1 : 0;
                fn[k](&p, c0 / 32, nv / 32, a, t0, y, rows, r, rm, c0 == 0);
                t0 += 1 << k;
            }
        }
    }
}

#define ROWS_FN(name, T)                                                                                    \
    TARGET_Q2 static void name(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {        \
        rows_of(T, W, r0, r1, a, n, y);                                                                     \
    }
ROWS_FN(rows_q4k, LM_DT_Q4_K)
ROWS_FN(rows_q5k, LM_DT_Q5_K)
ROWS_FN(rows_q6k, LM_DT_Q6_K)
ROWS_FN(rows_q8_0, LM_DT_Q8_0)
ROWS_FN(rows_q4_0, LM_DT_Q4_0)
ROWS_FN(rows_iq4xs, LM_DT_IQ4_XS)

TARGET_Q2 static void rows_generic(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    rows_of(W->dtype, W, r0, r1, a, n, y);
}

void lm_qblock_rows_avx2(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    switch (W->dtype) {
    case LM_DT_Q4_K: rows_q4k(W, r0, r1, a, n, y); break;
    case LM_DT_Q5_K: rows_q5k(W, r0, r1, a, n, y); break;
    case LM_DT_Q6_K: rows_q6k(W, r0, r1, a, n, y); break;
    case LM_DT_Q8_0: rows_q8_0(W, r0, r1, a, n, y); break;
    case LM_DT_Q4_0: rows_q4_0(W, r0, r1, a, n, y); break;
    case LM_DT_IQ4_XS: rows_iq4xs(W, r0, r1, a, n, y); break;
    default: rows_generic(W, r0, r1, a, n, y); break;
    }
}

int lm_qblock_handles_avx2(const lm_mat *W) {
    const unsigned need = LM_CPU_AVX2 | LM_CPU_FMA | LM_CPU_F16C;
    return (lm_cpu_features() & need) == need && lm_qblock_act8(W->dtype) && W->cols % 64 == 0 &&
           lm_dtype_row_bytes(W->dtype, (uint64_t)W->cols) < (uint64_t)INT32_MAX / PANEL;
}

#else

int lm_qblock_handles_avx2(const lm_mat *W) {
    (void)W;
    return 0;
}
void lm_qblock_rows_avx2(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    (void)W, (void)r0, (void)r1, (void)a, (void)n, (void)y;
}

#endif

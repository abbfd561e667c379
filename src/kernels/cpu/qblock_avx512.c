/* Int8 activations with ggml block weights, AVX-512 VNNI (qblock.h).
 *
 * K in lanes: a 64-value step of a row is one vector of unsigned byte codes, lane L
 * holding values 4L..4L+3 (groups of 32 are lanes 0-7 and 8-15). vpdpbusd adds the
 * codes times the token's int8 values to a start of -off * (the lane's 4 q summed),
 * so each lane ends with its exact share of I_h; the lanes are then converted and
 * multiplied by a16 * dx of their group into one f32 accumulator per (row, token),
 * plus b * xsum at the group's first lane, and summed by a fixed tree at the end.
 * Rows are decoded QR at a time for QCHUNK steps into a stack buffer, then every
 * token of the block runs over it, so prefill decodes a row once per 64 tokens.
 * A (row, token) pair takes the same operations in the same order whatever tile or
 * call it is in: results do not depend on batching or threads. */
#include "kernels/cpu/qblock.h"

#if defined(__x86_64__)

#include "formats/ggml_blocks.h"
#include "formats/mxfp4.h"

#include <immintrin.h>
#include <string.h>

#define TARGET_QB __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
#define QR 4      /* rows decoded together */
#define QCHUNK 32 /* steps (64 values) of each row decoded at once: 2048 values */
#define QTOK LM_KERNEL_TOKEN_BLOCK
#define PF_ROWS 8

typedef struct {
    __m512i u[QCHUNK];
    __m512 f[QCHUNK]; /* a16 * of the lane's half */
    __m512 b[QCHUNK]; /* b at lanes 0 and 8 */
} qrows;

#define UNROLL_R _Pragma("GCC unroll 4")
#define UNROLL_T _Pragma("GCC unroll 2")
#define QTP 2 /* tokens per pass over a decoded chunk */

TARGET_QB INLINE float f16c(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

TARGET_QB INLINE __m512 halves8(float a, float b) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b), 1);
}
TARGET_QB INLINE __m512 first_lanes(float a, float b) { return _mm512_maskz_mov_ps(0x0101, halves8(a, b)); }
TARGET_QB INLINE __m512i join256(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* Super-block sb of a Q4_K row: its 4 steps. */
TARGET_QB INLINE void decode_q4k(const uint8_t *bl, __m512i *u, __m512 *f, __m512 *b) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    uint32_t w[3];
    memcpy(w, bl + 4, 12);
    const uint32_t sc03 = w[0] & 0x3f3f3f3fu, mn03 = w[1] & 0x3f3f3f3fu;
    const uint32_t sc47 = (w[2] & 0x0f0f0f0fu) | ((w[0] >> 6) & 0x03030303u) << 4;
    const uint32_t mn47 = ((w[2] >> 4) & 0x0f0f0f0fu) | ((w[1] >> 6) & 0x03030303u) << 4;
    const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi32((int)mn47, (int)mn03, (int)sc47, (int)sc03)));
    /* [d * sc_0..7, -(dmin * mn_0..7)], the reference's products */
    const __m512 dm = _mm512_mul_ps(halves8(f16c(bl), f16c(bl + 2)), v);
    const __m512 neg = _mm512_maskz_sub_ps(0xff00, _mm512_setzero_ps(), dm);
    const __m512 prod = _mm512_mask_mov_ps(neg, 0x00ff, dm);
    for (int c = 0; c < 4; c++) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(bl + 16 + 32 * c));
        u[c] = join256(_mm256_and_si256(raw, m4), _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4));
        const __m512i fi = _mm512_inserti64x4(_mm512_set1_epi32(2 * c), _mm256_set1_epi32(2 * c + 1), 1);
        f[c] = _mm512_permutexvar_ps(fi, prod);
        b[c] = _mm512_maskz_permutexvar_ps(0x0101, _mm512_add_epi32(fi, _mm512_set1_epi32(8)), prod);
    }
}

TARGET_QB INLINE void decode_q6k(const uint8_t *bl, __m512i *u, __m512 *f, __m512 *b) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
    const __m512 d = _mm512_set1_ps(f16c(bl + 208));
    /* d * sc for the 16 halves, the reference's products */
    const __m512 ds = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(bl + 192)))));
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(bl + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(bl + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(bl + 128 + 32 * h));
        const __m256i lo0 = _mm256_and_si256(l0, m4), lo1 = _mm256_and_si256(l1, m4);
        const __m256i hi0 = _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), hi1 = _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4);
        const __m256i q0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
        const __m256i q1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
        const __m256i q2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
        const __m256i q3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
        /* groups 4h + k: k = 0, 1 low nibbles of ql[0..31], ql[32..63]; k = 2, 3 high */
        u[2 * h] = join256(_mm256_or_si256(lo0, q0), _mm256_or_si256(lo1, q1));
        u[2 * h + 1] = join256(_mm256_or_si256(hi0, q2), _mm256_or_si256(hi1, q3));
        for (int c = 0; c < 2; c++) { /* step 2h + c: halves 8h + 4c .. 8h + 4c + 3, 4 lanes each */
            const int base = 8 * h + 4 * c;
            const __m512i idx = _mm512_set_epi32(base + 3, base + 3, base + 3, base + 3, base + 2, base + 2, base + 2,
                                                 base + 2, base + 1, base + 1, base + 1, base + 1, base, base, base, base);
            f[2 * h + c] = _mm512_permutexvar_ps(idx, ds);
            b[2 * h + c] = _mm512_setzero_ps();
        }
    }
}

/* MXFP4 codes -> u = twice the e2m1 value + 16 (qblock.h), one byte per code. */
TARGET_QB INLINE __m128i mxfp4_u(__m128i codes) {
    const __m128i lut = _mm_setr_epi8(16, 17, 18, 19, 20, 22, 24, 28, 16, 15, 14, 13, 12, 10, 8, 4);
    return _mm_shuffle_epi8(lut, codes);
}

/* One MXFP4 group's 16 code bytes as its 32 u in value order: pairs (2j, 2j + 1)
 * (split) or (j, j + 16) (ggml). */
TARGET_QB INLINE __m256i mxfp4_group_u(const uint8_t *c, int split) {
    const __m128i m4 = _mm_set1_epi8(0x0f), x = _mm_loadu_si128((const __m128i *)c);
    const __m128i lo = _mm_and_si128(x, m4), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m4);
    if (split) return _mm256_set_m128i(mxfp4_u(_mm_unpackhi_epi8(lo, hi)), mxfp4_u(_mm_unpacklo_epi8(lo, hi)));
    return _mm256_set_m128i(mxfp4_u(hi), mxfp4_u(lo));
}

/* Step s (values 64s..64s+63) of a row of type t: the 32-value block types, and the
 * others through the common group form. srow: the row's scales (MXFP4_SPLIT only). */
TARGET_QB INLINE void decode_step(lm_dtype t, const uint8_t *row, const uint8_t *srow, int s, __m512i *u, __m512 *f,
                                  __m512 *b) {
    switch (t) {
    case LM_DT_MXFP4_SPLIT: {
        const uint8_t *c = row + (size_t)s * 32;
        *u = join256(mxfp4_group_u(c, 1), mxfp4_group_u(c + 16, 1));
        *f = halves8(lm_e8m0_half_to_f32(srow[2 * s]), lm_e8m0_half_to_f32(srow[2 * s + 1]));
        *b = _mm512_setzero_ps();
        return;
    }
    case LM_DT_MXFP4: {
        const uint8_t *b0 = row + (size_t)(2 * s) * 17, *b1 = b0 + 17;
        *u = join256(mxfp4_group_u(b0 + 1, 0), mxfp4_group_u(b1 + 1, 0));
        *f = halves8(lm_e8m0_half_to_f32(b0[0]), lm_e8m0_half_to_f32(b1[0]));
        *b = _mm512_setzero_ps();
        return;
    }
    case LM_DT_Q8_0: {
        const uint8_t *b0 = row + (size_t)(2 * s) * 34, *b1 = b0 + 34;
        const __m256i x80 = _mm256_set1_epi8((char)0x80);
        *u = join256(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(b0 + 2)), x80),
                     _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(b1 + 2)), x80));
        *f = halves8(f16c(b0), f16c(b1));
        *b = _mm512_setzero_ps();
        return;
    }
    case LM_DT_Q4_0: {
        const uint8_t *b0 = row + (size_t)(2 * s) * 18, *b1 = b0 + 18;
        const __m128i m = _mm_set1_epi8(0x0f);
        const __m128i x0 = _mm_loadu_si128((const __m128i *)(b0 + 2)), x1 = _mm_loadu_si128((const __m128i *)(b1 + 2));
        const __m256i v0 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x0, 4), m), _mm_and_si128(x0, m));
        const __m256i v1 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x1, 4), m), _mm_and_si128(x1, m));
        *u = join256(v0, v1);
        *f = halves8(f16c(b0), f16c(b1));
        *b = _mm512_setzero_ps();
        return;
    }
    default: {
        lm_qgroup g0, g1;
        lm_qblock_group(t, row, 2 * s, &g0);
        lm_qblock_group(t, row, 2 * s + 1, &g1);
        uint8_t buf[64];
        memcpy(buf, g0.u, 32);
        memcpy(buf + 32, g1.u, 32);
        *u = _mm512_loadu_si512(buf);
        *f = _mm512_set_ps(g1.a16[1], g1.a16[1], g1.a16[1], g1.a16[1], g1.a16[0], g1.a16[0], g1.a16[0], g1.a16[0],
                           g0.a16[1], g0.a16[1], g0.a16[1], g0.a16[1], g0.a16[0], g0.a16[0], g0.a16[0], g0.a16[0]);
        *b = first_lanes(g0.b, g1.b);
        return;
    }
    }
}

/* Steps s0..s0+ns-1 (s0 and ns multiples of 4 for the 256-value types, which cols
 * being a multiple of 256 makes so). */
TARGET_QB INLINE void decode_steps(lm_dtype t, const uint8_t *row, const uint8_t *srow, int s0, int ns, qrows *o,
                                   const char *pf, size_t span) {
    const size_t per = span / (size_t)ns; /* bytes per step */
    size_t next_pf = 0;
    if (t == LM_DT_Q4_K || t == LM_DT_Q6_K) {
        const size_t bb = t == LM_DT_Q4_K ? 144 : 210;
        for (int s = 0; s < ns; s += 4) {
            const uint8_t *bl = row + (size_t)((s0 + s) / 4) * bb;
            for (; pf && next_pf < (size_t)(s + 4) * per; next_pf += 64) _mm_prefetch(pf + next_pf, _MM_HINT_T0);
            if (t == LM_DT_Q4_K) decode_q4k(bl, o->u + s, o->f + s, o->b + s);
            else decode_q6k(bl, o->u + s, o->f + s, o->b + s);
        }
        return;
    }
    for (int s = 0; s < ns; s++) {
        for (; pf && next_pf < (size_t)(s + 1) * per; next_pf += 64) _mm_prefetch(pf + next_pf, _MM_HINT_T0);
        decode_step(t, row, srow, s0 + s, &o->u[s], &o->f[s], &o->b[s]);
    }
}

/* Fixed summation tree: 16 -> 8 -> 4 -> 2 -> 1. */
TARGET_QB INLINE float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    c = _mm_add_ps(c, _mm_movehl_ps(c, c));
    c = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(c);
}

/* K tokens from token t over a decoded chunk: per (row, token) an accumulator for
 * the integer part and one for the b part, kept in registers across the steps. */
TARGET_QB INLINE void chunk_k(const qrows *dec, int s0, int ns, const lm_act8 *a, size_t t, const int K, int sh,
                              int has_b, __m512 acc[QR][QTOK], __m512 accb[QR][QTOK], int tt) {
    const int8_t *q[QTP];
    const int32_t *lq[QTP];
    const float *ld[QTP], *lx[QTP];
    __m512 ac[QTP][QR], ab[QTP][QR];
    UNROLL_T
    for (int k = 0; k < K; k++) {
        q[k] = a->q + (t + (size_t)k) * a->q_stride + (size_t)s0 * 64;
        lq[k] = a->lane_qsum + (t + (size_t)k) * a->lane_stride + (size_t)s0 * 16;
        ld[k] = a->lane_dx + (t + (size_t)k) * a->lane_stride + (size_t)s0 * 16;
        lx[k] = a->lane_xsum + (t + (size_t)k) * a->lane_stride + (size_t)s0 * 16;
        UNROLL_R
        for (int i = 0; i < QR; i++) ac[k][i] = acc[i][tt + k], ab[k][i] = accb[i][tt + k];
    }
    for (int s = 0; s < ns; s++) {
        UNROLL_T
        for (int k = 0; k < K; k++) {
            const __m512i x = _mm512_loadu_si512(q[k] + 64 * s);
            const __m512i nq =
                sh >= 0 ? _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512(lq[k] + 16 * s), (unsigned)sh))
                        : _mm512_setzero_si512();
            const __m512 dx = _mm512_loadu_ps(ld[k] + 16 * s);
            UNROLL_R
            for (int i = 0; i < QR; i++) {
                const __m512i in = _mm512_dpbusd_epi32(nq, dec[i].u[s], x);
                ac[k][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(in), _mm512_mul_ps(dec[i].f[s], dx), ac[k][i]);
            }
            if (has_b) {
                const __m512 xs = _mm512_loadu_ps(lx[k] + 16 * s);
                UNROLL_R
                for (int i = 0; i < QR; i++) ab[k][i] = _mm512_fmadd_ps(dec[i].b[s], xs, ab[k][i]);
            }
        }
    }
    UNROLL_T
    for (int k = 0; k < K; k++) {
        UNROLL_R
        for (int i = 0; i < QR; i++) acc[i][tt + k] = ac[k][i], accb[i][tt + k] = ab[k][i];
    }
}

TARGET_QB INLINE void chunk_tokens(const qrows *dec, int s0, int ns, const lm_act8 *a, int t0, int tn, int sh,
                                   int has_b, __m512 acc[QR][QTOK], __m512 accb[QR][QTOK]) {
    int tt = 0;
    for (; tt + QTP <= tn; tt += QTP) chunk_k(dec, s0, ns, a, (size_t)t0 + (size_t)tt, QTP, sh, has_b, acc, accb, tt);
    for (; tt < tn; tt++) chunk_k(dec, s0, ns, a, (size_t)t0 + (size_t)tt, 1, sh, has_b, acc, accb, tt);
}

/* The same with the type's constants known, so the compiler drops the unused paths. */
#define CHUNK_FN(name, SH, HB)                                                                                    \
    TARGET_QB static void name(const qrows *dec, int s0, int ns, const lm_act8 *a, int t0, int tn,               \
                               __m512 acc[QR][QTOK], __m512 accb[QR][QTOK]) {                                     \
        chunk_tokens(dec, s0, ns, a, t0, tn, SH, HB, acc, accb);                                                  \
    }
CHUNK_FN(chunk_sym0, -1, 0)
CHUNK_FN(chunk_b, -1, 1)
CHUNK_FN(chunk_off2, 2, 0)
CHUNK_FN(chunk_off3, 3, 0)
CHUNK_FN(chunk_off4, 4, 0)
CHUNK_FN(chunk_off5, 5, 0)
CHUNK_FN(chunk_off7, 7, 0)
typedef void (*chunk_fn)(const qrows *, int, int, const lm_act8 *, int, int, __m512 (*)[QTOK], __m512 (*)[QTOK]);

TARGET_QB void lm_qblock_rows_avx512(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    const lm_dtype t = W->dtype;
    const int nsteps = W->cols / 64, sh = lm_qblock_off_shift(t), has_b = lm_qblock_has_b(t);
    const int split = t == LM_DT_MXFP4_SPLIT; /* codes [rows][cols / 2], scales [rows][cols / 32] apart */
    const size_t rb = split ? (size_t)W->cols / 2 : lm_dtype_row_bytes(t, (uint64_t)W->cols), rows = (size_t)W->rows;
    chunk_fn fn = has_b ? chunk_b
                : sh == 2 ? chunk_off2
                : sh == 3 ? chunk_off3
                : sh == 4 ? chunk_off4
                : sh == 5 ? chunk_off5
                : sh == 7 ? chunk_off7
                : chunk_sym0;
    qrows dec[QR];
    __m512 acc[QR][QTOK], accb[QR][QTOK];
    for (int t0 = 0; t0 < n; t0 += QTOK) {
        const int tn = n - t0 < QTOK ? n - t0 : QTOK;
        for (int r = r0; r < r1; r += QR) {
            const int nr = r1 - r < QR ? r1 - r : QR;
            for (int i = 0; i < QR; i++)
                for (int tt = 0; tt < tn; tt++) acc[i][tt] = accb[i][tt] = _mm512_setzero_ps();
            for (int s0 = 0; s0 < nsteps; s0 += QCHUNK) {
                const int ns = nsteps - s0 < QCHUNK ? nsteps - s0 : QCHUNK;
                const size_t first = (size_t)s0 * rb / (size_t)nsteps, span = (size_t)ns * rb / (size_t)nsteps;
                /* The same bytes PF_ROWS rows on (two tiles), spread over the decoding:
                 * the row streams of a decode step outrun the hardware prefetcher. */
                const int pf = (size_t)r + PF_ROWS + QR <= rows;
                for (int i = 0; i < QR; i++) {
                    /* rows past the range repeat the last one; their results are dropped */
                    const size_t ri = (size_t)r + (size_t)(i < nr ? i : nr - 1);
                    const uint8_t *row = (const uint8_t *)W->data + ri * rb;
                    const uint8_t *srow = split ? (const uint8_t *)W->scales + ri * ((size_t)W->cols / 32) : NULL;
                    decode_steps(t, row, srow, s0, ns, &dec[i], pf ? (const char *)row + PF_ROWS * rb + first : NULL,
                                 span);
                }

                fn(dec, s0, ns, a, t0, tn, acc, accb);
            }
            for (int tt = 0; tt < tn; tt++)
                for (int i = 0; i < nr; i++)
                    y[(size_t)(t0 + tt) * rows + (size_t)(r + i)] = hsum16(_mm512_add_ps(acc[i][tt], accb[i][tt]));
        }
    }
}

int lm_qblock_handles_avx512(const lm_mat *W) {
    return (lm_cpu_features() & LM_CPU_AVX512VNNI) && lm_qblock_act8(W->dtype) && W->cols % 64 == 0;
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

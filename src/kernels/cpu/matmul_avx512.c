/* AVX-512 matrix kernels (F, BW, VL, DQ, VBMI + FMA, F16C: Ice Lake, Zen 4 and later).
 *
 * 16 lanes. 4-bit affine: a 64-bit word holds 16 weights; vpbroadcastq + one
 * vpmultishiftqb puts weight i's nibble in the low bits of lane i, and vpermps
 * looks the lane up in the group's 16-entry table fma(scale, q, bias) -- three
 * instructions per 16 weights, no integer-to-float conversion. 8-bit affine:
 * zero-extend, convert, fma(scale, q, bias). BF16 widens by a shift, F16 by
 * vcvtph2ps. Every (row, token) pair is one accumulator chain (see
 * cpu_kernels.h), whichever tile shape computes it.
 */
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/qblock.h"

#if defined(__x86_64__)

#include "kernels/cpu/avx512_transpose.h"

#include <immintrin.h>
#include <string.h>





#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
/* Tile loops run a constant 1..4 times: unrolled, the accumulators live in registers. */
#define UNROLL _Pragma("GCC unroll 4")
#define LANES 16
#define TILE_R 4 /* rows per tile */
#define TILE_T 4 /* tokens per tile */
/* Decode streams every weight row from memory once. The hardware prefetcher does not
 * run far enough ahead of 4 interleaved row streams; asking for the bytes 4 KiB
 * ahead (the next tile's rows: rows are contiguous) lifted one-thread 4-bit GEMV
 * from ~7.5 to ~13 GB/s here (bench/bench_matmul.c, 256 MB of weights; 256 and
 * 1024 bytes ahead gave ~8.5 and ~10). */
#define PREFETCH_AHEAD 4096

/* Fixed summation tree: 16 -> 8 -> 4 -> 2 -> 1. */
TARGET INLINE float hsum(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

TARGET INLINE __m512 load_float_chunk(const void *row, lm_dtype dt, int k) {
    switch (dt) {
    case LM_DT_BF16:
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k))), 16));
    case LM_DT_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k)));
    default: return _mm512_loadu_ps((const float *)row + k);
    }
}

/* count scales or biases from element `first` as f32 into dst (masked loads:
 * nothing past the end is touched). */
TARGET INLINE void groups_to_f32(float *dst, const void *src, lm_dtype dt, size_t first, int count) {
    for (int k = 0; k < count; k += LANES) {
        __mmask16 m = count - k >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (count - k)) - 1);
        __m512 v;
        if (dt == LM_DT_F32) {
            v = _mm512_maskz_loadu_ps(m, (const float *)src + first + k);
        } else {
            __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)src + first + k);
            v = dt == LM_DT_F16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
        _mm512_mask_storeu_ps(dst + k, m, v);
    }
}

/* Groups whose scales and biases a tile converts at once (16 KiB of stack). */
#define GROUP_BLOCK 256

/* One tile of R rows x T tokens over float weights (F32, F16, BF16). x points
 * at the first token ([T][cols]); y at the first token's output row ([T][rows]). */
TARGET INLINE void float_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols;
    const size_t esz = lm_dtype_size(W->dtype);
    const char *rowp[TILE_R];
    __m512 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const char *)W->data + (size_t)(r + i) * (size_t)cols * esz;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    }
    int k = 0;
    for (; k + LANES <= cols; k += LANES) {
        __m512 xv[TILE_T];
        UNROLL
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + (size_t)t * (size_t)cols + k);
        UNROLL
        for (int i = 0; i < R; i++) {
            __m512 w = load_float_chunk(rowp[i], W->dtype, k);
            UNROLL
            for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(w, xv[t], acc[i][t]);
        }
    }
    if (k < cols) { /* tail: zero-padded copies, so the chain simply adds 0 * 0 */
        int rest = cols - k;
        float wtmp[LANES] = {0}, xtmp[LANES] = {0}; /* holds LANES elements of any float type */
        UNROLL
        for (int i = 0; i < R; i++) {
            memcpy(wtmp, rowp[i] + (size_t)k * esz, (size_t)rest * esz);
            __m512 w = load_float_chunk(wtmp, W->dtype, 0);
            UNROLL
            for (int t = 0; t < T; t++) {
                memcpy(xtmp, x + (size_t)t * (size_t)cols + k, (size_t)rest * 4);
                acc[i][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xtmp), acc[i][t]);
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}

/* Affine 4-bit, group size a multiple of 16. */
TARGET INLINE void q4_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const size_t row_bytes = (size_t)cols / 2;
    /* Lane i takes the 8 bits starting at bit 4i of the 64-bit word: its nibble. */
    const __m512i ctl = _mm512_set_epi32(60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512 ramp = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const uint8_t *rowp[TILE_R];
    __m512 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * row_bytes;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    }
    float sf[TILE_R][GROUP_BLOCK], bf[TILE_R][GROUP_BLOCK];
    for (int g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {
        const int gn = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;
        UNROLL
        for (int i = 0; i < R; i++) {
            size_t first = (size_t)(r + i) * (size_t)ng + (size_t)g0;
            groups_to_f32(sf[i], W->scales, W->qdtype, first, gn);
            groups_to_f32(bf[i], W->biases, W->qdtype, first, gn);
        }
        for (int g = 0; g < gn; g++) {
            __m512 tab[TILE_R];
            UNROLL
            for (int i = 0; i < R; i++) tab[i] = _mm512_fmadd_ps(ramp, _mm512_set1_ps(sf[i][g]), _mm512_set1_ps(bf[i][g]));
            const int k0 = (g0 + g) * gs;
            for (int c = 0; c < gs; c += LANES) {
                __m512 xv[TILE_T];
                UNROLL
                for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + (size_t)t * (size_t)cols + k0 + c);
                UNROLL
                for (int i = 0; i < R; i++) {
                    uint64_t word;
                    if (T == 1 && c == 0) /* once per group (32 bytes at group size 64) */
                        _mm_prefetch((const char *)rowp[i] + (size_t)k0 / 2 + PREFETCH_AHEAD, _MM_HINT_T0);
                    memcpy(&word, rowp[i] + (size_t)(k0 + c) / 2, 8);
                    __m512i idx = _mm512_multishift_epi64_epi8(ctl, _mm512_set1_epi64((long long)word));
                    __m512 w = _mm512_permutexvar_ps(idx, tab[i]);
                    UNROLL
                    for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(w, xv[t], acc[i][t]);
                }
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}

/* Affine 8-bit, group size a multiple of 16. */
TARGET INLINE void q8_tile(const lm_mat *W, int r, const float *x, float *y, const int R, const int T) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const uint8_t *rowp[TILE_R];
    __m512 acc[TILE_R][TILE_T];
    UNROLL
    for (int i = 0; i < R; i++) {
        rowp[i] = (const uint8_t *)W->data + (size_t)(r + i) * (size_t)cols;
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    }
    float sf[TILE_R][GROUP_BLOCK], bf[TILE_R][GROUP_BLOCK];
    for (int g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {
        const int gn = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;
        UNROLL
        for (int i = 0; i < R; i++) {
            size_t first = (size_t)(r + i) * (size_t)ng + (size_t)g0;
            groups_to_f32(sf[i], W->scales, W->qdtype, first, gn);
            groups_to_f32(bf[i], W->biases, W->qdtype, first, gn);
        }
        for (int g = 0; g < gn; g++) {
            __m512 vs[TILE_R], vb[TILE_R];
            UNROLL
            for (int i = 0; i < R; i++) {
                vs[i] = _mm512_set1_ps(sf[i][g]);
                vb[i] = _mm512_set1_ps(bf[i][g]);
            }
            const int k0 = (g0 + g) * gs;
            for (int c = 0; c < gs; c += LANES) {
                __m512 xv[TILE_T];
                UNROLL
                for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + (size_t)t * (size_t)cols + k0 + c);
                UNROLL
                for (int i = 0; i < R; i++) {
                    if (T == 1 && (c & 63) == 0) _mm_prefetch((const char *)rowp[i] + k0 + c + PREFETCH_AHEAD, _MM_HINT_T0);
                    __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(rowp[i] + k0 + c)));
                    __m512 w = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), vs[i], vb[i]);
                    UNROLL
                    for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(w, xv[t], acc[i][t]);
                }
            }
        }
    }
    UNROLL
    for (int t = 0; t < T; t++)
        UNROLL
        for (int i = 0; i < R; i++) y[(size_t)t * (size_t)W->rows + (size_t)i] = hsum(acc[i][t]);
}


/* The four tile shapes each kind needs: full tiles and the row/token remainders. */
#define TILE_SHAPES(kind)                                                                                  \
    TARGET static void kind##_RT(const lm_mat *W, int r, const float *x, float *y) {                       \
        kind##_tile(W, r, x, y, TILE_R, TILE_T);                                                           \
    }                                                                                                      \
    TARGET static void kind##_R1(const lm_mat *W, int r, const float *x, float *y) {                       \
        kind##_tile(W, r, x, y, TILE_R, 1);                                                                \
    }                                                                                                      \
    TARGET static void kind##_1T(const lm_mat *W, int r, const float *x, float *y) {                       \
        kind##_tile(W, r, x, y, 1, TILE_T);                                                                \
    }                                                                                                      \
    TARGET static void kind##_11(const lm_mat *W, int r, const float *x, float *y) { kind##_tile(W, r, x, y, 1, 1); } \
    static const lm_f32_tile kind##_shapes[2][2] = {{kind##_11, kind##_1T}, {kind##_R1, kind##_RT}};
TILE_SHAPES(float)
TILE_SHAPES(q4)
TILE_SHAPES(q8)

TARGET static void rows_avx512(const lm_mat *W, int r0, int r1, const float *x, int n, float *y) {
    const lm_f32_tile(*shapes)[2] = W->dtype != LM_DT_U32 ? float_shapes : W->bits == 4 ? q4_shapes : q8_shapes;
    lm_tile_rows(W, r0, r1, x, n, y, TILE_R, TILE_T, shapes);
}

/* ---- int8 activations (cpu_kernels.h: lm_act8), AVX-512 VNNI -------------------
 *
 * Rows in lanes: lane i of every vector belongs to row r + i of a 16-row panel.
 * The panel's packed 32-bit words are transposed once per chunk of columns into a
 * buffer on the stack (word w of the 16 rows = one vector), its scales and biases
 * into one f32 vector per group, and then every token of the call runs over that
 * buffer, A8_TOKENS at a time. vpdpbusd adds to each lane 4 weight bytes times 4
 * activation bytes broadcast from the token: a 4-bit word (8 weights) gives its
 * low nibbles (the even-indexed weights) by a mask and its high ones (odd) by a
 * shift, which meet the activations the backend stored as even-then-odd halves of
 * each 128-block (act8_q4_block); an 8-bit word is 4 weights in order. So each
 * lane holds its row's exact group sum I_g, and adds fma(I_g, scale * dx) and then
 * fma(bias, xsum) to its f32 accumulator, group after group: the reference's
 * order, the same ops for any number of tokens or rows in the call. The
 * transposition (64 shuffles per 16 x 16 words) is paid once per panel and chunk,
 * not per token, which is what makes prefill fast: the old K-in-lanes tile spent a
 * convert, multiply and fma per 64-weight step, row and token. */
#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma,f16c")))
#define Q4_BLOCK 128     /* the activation layout's even/odd block, 4-bit */
#define PANEL 16         /* rows per panel: one per lane */
#define CHUNK_WORDS 256  /* words per row packed at once (16 KiB of stack) */
#define CHUNK_GROUPS 64  /* most groups in a chunk: words per group >= 4 */
#define A8_TOKENS 8      /* tokens per pass over a packed chunk */
#define UNROLL_TOKENS _Pragma("GCC unroll 8")
#define UNROLL_PANEL _Pragma("GCC unroll 16")

/* Words w0..w0+nw-1 of rows r..r+nr-1 (nr <= 16) as pk[word][lane]; lanes past nr
 * are zero. The same words of the next panel are prefetched: a decode step streams
 * every row once, and 16 row streams outrun the hardware prefetcher. */
TARGET_VNNI static void pack_words(const lm_mat *W, int r, int nr, int w0, int nw, __m512i *pk) {
    const size_t row_words = (size_t)W->cols * (size_t)W->bits / 32;
    const uint32_t *base = (const uint32_t *)W->data + (size_t)r * row_words + (size_t)w0;
    int j = 0;
    if (nr == PANEL) /* whole 16 x 16 blocks, straight-line (the common case) */
        for (; j + 16 <= nw; j += 16) {
            __m512i v[16];
            UNROLL_PANEL
            for (int i = 0; i < 16; i++) {
                const uint32_t *p = base + (size_t)i * row_words + (size_t)j;
                _mm_prefetch((const char *)(p + PANEL * row_words), _MM_HINT_T0);
                v[i] = _mm512_loadu_si512(p);
            }
            lm_transpose16x16(v);
            UNROLL_PANEL
            for (int i = 0; i < 16; i++) _mm512_store_si512(pk + j + i, v[i]);
        }
    for (; j < nw; j += 16) { /* a partial panel or a row's last words: masked */
        const int m = nw - j < 16 ? nw - j : 16;
        const __mmask16 mk = (__mmask16)((1u << m) - 1);
        __m512i v[16];
        UNROLL_PANEL
        for (int i = 0; i < 16; i++)
            v[i] = _mm512_maskz_loadu_epi32(i < nr ? mk : 0, base + (size_t)(i < nr ? i : 0) * row_words + (size_t)j);
        lm_transpose16x16(v);
        UNROLL_PANEL
        for (int i = 0; i < 16; i++)
            if (i < m) _mm512_store_si512(pk + j + i, v[i]);
    }
}

/* Scales or biases of groups g0..g0+gn-1 of rows r..r+nr-1 as f32, out[group][lane]. */
TARGET_VNNI static void pack_groups(const void *src, lm_dtype dt, int ng, int r, int nr, int g0, int gn, __m512 *out) {
    for (int j = 0; j < gn; j += 16) {
        const int m = gn - j < 16 ? gn - j : 16;
        const __mmask16 all = (__mmask16)((1u << m) - 1);
        __m512i v[16];
        UNROLL_PANEL
        for (int i = 0; i < 16; i++) {
            const __mmask16 mk = i < nr ? all : 0; /* rows past the panel: zero, untouched */
            const size_t first = (size_t)(r + (i < nr ? i : 0)) * (size_t)ng + (size_t)(g0 + j);
            if (dt == LM_DT_F32) {
                v[i] = _mm512_castps_si512(_mm512_maskz_loadu_ps(mk, (const float *)src + first));
            } else {
                __m256i h = _mm256_maskz_loadu_epi16(mk, (const uint16_t *)src + first);
                v[i] = dt == LM_DT_F16 ? _mm512_castps_si512(_mm512_cvtph_ps(h))
                                       : _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            }
        }
        lm_transpose16x16(v);
        UNROLL_PANEL
        for (int i = 0; i < 16; i++)
            if (i < m) _mm512_store_ps((float *)(out + j + i), _mm512_castsi512_ps(v[i]));
    }
}

/* The scales and the biases of groups g0..g0+gn-1 of rows r..r+nr-1 as f32,
 * sc[group][lane] and bi[group][lane], as two pack_groups calls give them. Half-width
 * (F16, BF16) parameters take one transposition for both: a row's scale and bias of
 * a group are interleaved into one 32-bit word (vpunpck*wd), the 16 x 16 words are
 * transposed, and each word's halves are widened. Full blocks use plain loads. */
TARGET_VNNI static void pack_scales_biases(const lm_mat *W, int ng, int r, int nr, int g0, int gn, __m512 *sc,
                                           __m512 *bi) {
    const lm_dtype dt = W->qdtype;
    if (dt == LM_DT_F32) {
        pack_groups(W->scales, dt, ng, r, nr, g0, gn, sc);
        pack_groups(W->biases, dt, ng, r, nr, g0, gn, bi);
        return;
    }
    const uint16_t *sp = W->scales, *bp = W->biases;
    const __m512i hi16 = _mm512_set1_epi32((int)0xffff0000u);
    for (int j = 0; j < gn; j += 16) {
        const int m = gn - j < 16 ? gn - j : 16;
        const __mmask16 mk = (__mmask16)((1u << m) - 1);
        __m512i v[16];
        UNROLL_PANEL
        for (int i = 0; i < 16; i++) {
            if (i >= nr) { /* rows past the panel: zero, untouched */
                v[i] = _mm512_setzero_si512();
                continue;
            }
            const size_t first = (size_t)(r + i) * (size_t)ng + (size_t)(g0 + j);
            const __m256i s = m == 16 ? _mm256_loadu_si256((const __m256i *)(sp + first)) : _mm256_maskz_loadu_epi16(mk, sp + first);
            const __m256i b = m == 16 ? _mm256_loadu_si256((const __m256i *)(bp + first)) : _mm256_maskz_loadu_epi16(mk, bp + first);
            /* 128-bit lanes: groups 0-3, 8-11 (unpacklo), 4-7, 12-15 (unpackhi) */
            v[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi16(s, b)), _mm256_unpackhi_epi16(s, b), 1);
        }
        lm_transpose16x16(v);
        UNROLL_PANEL
        for (int w = 0; w < 16; w++) {
            const int g = w < 4 ? w : w < 8 ? w + 4 : w < 12 ? w - 4 : w; /* word w holds group g */
            if (g >= m) continue;
            __m512 s, b;
            if (dt == LM_DT_BF16) {
                s = _mm512_castsi512_ps(_mm512_slli_epi32(v[w], 16));
                b = _mm512_castsi512_ps(_mm512_and_si512(v[w], hi16));
            } else {
                s = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v[w]));
                b = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v[w], 16)));
            }
            _mm512_store_ps((float *)(sc + j + g), s);
            _mm512_store_ps((float *)(bi + j + g), b);
        }
    }
}

TARGET_VNNI INLINE __m512i bcast32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* T tokens from t0 over one packed chunk (groups g0..g0+gn-1, wpg words each),
 * accumulating into y's 16 entries of row r (masked by rm); the first chunk starts
 * from zero, later ones from what the previous chunk stored. */
TARGET_VNNI INLINE void a8_chunk_tokens(const __m512i *pk, const __m512 *sc, const __m512 *bi, int g0, int gn, int wpg,
                                        const lm_act8 *a, int t0, const int T, const int bits, float *y, int rows,
                                        int r, __mmask16 rm, int first) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const int8_t *xq[A8_TOKENS];
    const float *dx[A8_TOKENS], *xs[A8_TOKENS];
    __m512 acc[A8_TOKENS];
    UNROLL_TOKENS
    for (int t = 0; t < T; t++) {
        lm_act8 at = lm_act8_token(a, t0 + t);
        xq[t] = at.q, dx[t] = at.dx + g0, xs[t] = at.xsum + g0;
        float *yt = y + (size_t)(t0 + t) * (size_t)rows + (size_t)r;
        acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rm, yt);
    }
    int w = g0 * wpg; /* the chunk's first word in the row */
    for (int g = 0; g < gn; g++) {
        __m512i ia[A8_TOKENS];
        UNROLL_TOKENS
        for (int t = 0; t < T; t++) ia[t] = _mm512_setzero_si512();
        for (int k = 0; k < wpg; k++, w++) {
            const __m512i v = pk[g * wpg + k];
            if (bits == 4) {
                const size_t off = (size_t)(w >> 4) * Q4_BLOCK + (size_t)(w & 15) * 4;
                const __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                UNROLL_TOKENS
                for (int t = 0; t < T; t++) {
                    ia[t] = _mm512_dpbusd_epi32(ia[t], lo, bcast32(xq[t] + off));
                    ia[t] = _mm512_dpbusd_epi32(ia[t], hi, bcast32(xq[t] + off + Q4_BLOCK / 2));
                }
            } else {
                UNROLL_TOKENS
                for (int t = 0; t < T; t++) ia[t] = _mm512_dpbusd_epi32(ia[t], v, bcast32(xq[t] + (size_t)w * 4));
            }
        }
        UNROLL_TOKENS
        for (int t = 0; t < T; t++) {
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), _mm512_mul_ps(sc[g], _mm512_set1_ps(dx[t][g])), acc[t]);
            acc[t] = _mm512_fmadd_ps(bi[g], _mm512_set1_ps(xs[t][g]), acc[t]);
        }
    }
    UNROLL_TOKENS
    for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + (size_t)(t0 + t) * (size_t)rows + (size_t)r, rm, acc[t]);
}

#define A8_CHUNK_T(T)                                                                                          \
    TARGET_VNNI static void a8_chunk_q4_##T(const __m512i *pk, const __m512 *sc, const __m512 *bi, int g0,     \
                                             int gn, int wpg, const lm_act8 *a, int t0, float *y, int rows,    \
                                             int r, __mmask16 rm, int first) {                                 \
        a8_chunk_tokens(pk, sc, bi, g0, gn, wpg, a, t0, T, 4, y, rows, r, rm, first);                          \
    }                                                                                                          \
    TARGET_VNNI static void a8_chunk_q8_##T(const __m512i *pk, const __m512 *sc, const __m512 *bi, int g0,     \
                                             int gn, int wpg, const lm_act8 *a, int t0, float *y, int rows,    \
                                             int r, __mmask16 rm, int first) {                                 \
        a8_chunk_tokens(pk, sc, bi, g0, gn, wpg, a, t0, T, 8, y, rows, r, rm, first);                          \
    }
A8_CHUNK_T(1)
A8_CHUNK_T(2)
A8_CHUNK_T(3)
A8_CHUNK_T(4)
A8_CHUNK_T(5)
A8_CHUNK_T(6)
A8_CHUNK_T(7)
A8_CHUNK_T(8)
typedef void (*a8_chunk_fn)(const __m512i *, const __m512 *, const __m512 *, int, int, int, const lm_act8 *, int,
                            float *, int, int, __mmask16, int);
static const a8_chunk_fn a8_chunk_q4[A8_TOKENS + 1] = {NULL, a8_chunk_q4_1, a8_chunk_q4_2, a8_chunk_q4_3,
                                                       a8_chunk_q4_4, a8_chunk_q4_5, a8_chunk_q4_6,
                                                       a8_chunk_q4_7, a8_chunk_q4_8};
static const a8_chunk_fn a8_chunk_q8[A8_TOKENS + 1] = {NULL, a8_chunk_q8_1, a8_chunk_q8_2, a8_chunk_q8_3,
                                                       a8_chunk_q8_4, a8_chunk_q8_5, a8_chunk_q8_6,
                                                       a8_chunk_q8_7, a8_chunk_q8_8};

/* ---- one token: K in lanes, then lanes summed per group ----
 * A decode step has one token per matrix, where transposing the panel cannot be
 * paid back. Each row's 64-byte step is multiplied in place (lane k = 8 weights of
 * 4-bit, 4 of 8-bit, as laid out in memory), and the 16 rows' step vectors are then
 * summed lane-wise into one vector per group with a row per lane (44 shuffles and
 * adds per 16 rows and step, against 64 shuffles plus a store and a reload to
 * transpose). Integer sums are exact in any order, so every lane ends with the
 * same I_g as the panel path and takes the same f32 steps: bit-identical results. */

/* Rows r..r+nr-1 (nr <= 16) for the one token of a, into y[r..]. */
TARGET_VNNI INLINE void a8_panel_one(const lm_mat *W, int r, int nr, const lm_act8 *a, float *y, const int bits) {
    const int cols = W->cols, gs = W->group_size, ng = cols / gs;
    const int wps = bits == 4 ? 128 : 64;                  /* weights per 64-byte step */
    const int lpg = gs >= wps ? 16 : 16 * gs / wps;        /* lanes per group in a step */
    const int gps = gs >= wps ? 1 : wps / gs;              /* groups per step */
    const int spg = gs >= wps ? gs / wps : 1;              /* steps per group */
    const size_t row_bytes = (size_t)cols * (size_t)bits / 8;
    const uint8_t *rowp[16];
    UNROLL_PANEL
    for (int i = 0; i < 16; i++) rowp[i] = (const uint8_t *)W->data + (size_t)(r + (i < nr ? i : 0)) * row_bytes;
    const __m512i nib = _mm512_set1_epi8(0x0f);
    __m512 sc[CHUNK_GROUPS], bi[CHUNK_GROUPS];
    __m512 acc = _mm512_setzero_ps();
    for (int g0 = 0; g0 < ng; g0 += CHUNK_GROUPS) {
        const int gn = ng - g0 < CHUNK_GROUPS ? ng - g0 : CHUNK_GROUPS;
        pack_scales_biases(W, ng, r, nr, g0, gn, sc, bi);
        /* The scales and biases of the panel after next too (at group size 32 they are a
         * fifth of the bytes streamed, and the pack would otherwise wait on each row's),
         * a few rows' at each step rather than all 64 lines at the panel's start: less CPU
         * per token in bench/RESULTS.md (session 11) than the next panel's in one burst. */
        const size_t esz = lm_dtype_size(W->qdtype), span = (size_t)gn * esz;
        const int nit = (gn + gps - 1) / gps; /* iterations of the loop below */
        for (int g = 0; g < gn; g += gps) {
            for (int i = g / gps * PANEL / nit; i < (g / gps + 1) * PANEL / nit; i++) {
                const size_t at = ((size_t)(r + 2 * PANEL + i) * (size_t)ng + (size_t)g0) * esz;
                for (size_t b = 0; b < span; b += 64) {
                    _mm_prefetch((const char *)W->scales + at + b, _MM_HINT_T0);
                    _mm_prefetch((const char *)W->biases + at + b, _MM_HINT_T0);
                }
            }
            __m512i d[16];
            UNROLL_PANEL
            for (int i = 0; i < 16; i++) d[i] = _mm512_setzero_si512();
            for (int s = 0; s < spg; s++) {
                const int c = (g0 + g) * gs + s * wps; /* the step's first column */
                const size_t off = (size_t)c * (size_t)bits / 8;
                const int bytes_left = (int)(row_bytes - off);
                /* Rows past the panel and bytes past the row: masked to zero (plain
                 * loads otherwise: masked byte loads are slow on Zen). */
                const __mmask64 tail = bytes_left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << bytes_left) - 1);
                const int8_t *xq = a->q + c;
                const __m512i xe = _mm512_load_si512(xq);
                const __m512i xo = bits == 4 ? _mm512_load_si512(xq + 64) : xe;
                UNROLL_PANEL
                for (int i = 0; i < 16; i++) {
                    const uint8_t *wp = rowp[i] + off;
                    _mm_prefetch((const char *)wp + PANEL * row_bytes, _MM_HINT_T0);
                    __m512i w = i < nr && bytes_left >= 64 ? _mm512_loadu_si512(wp)
                                                           : _mm512_maskz_loadu_epi8(i < nr ? tail : 0, wp);
                    if (bits == 4) {
                        d[i] = _mm512_dpbusd_epi32(d[i], _mm512_and_si512(w, nib), xe);
                        d[i] = _mm512_dpbusd_epi32(d[i], _mm512_and_si512(_mm512_srli_epi16(w, 4), nib), xo);
                    } else {
                        d[i] = _mm512_dpbusd_epi32(d[i], w, xe);
                    }
                }
            }
            __m512i out[4];
            lm_reduce_rows16(d, lpg, out);
            for (int k = 0; k < gps && g + k < gn; k++) {
                const __m512 f = _mm512_cvtepi32_ps(out[k]);
                acc = _mm512_fmadd_ps(f, _mm512_mul_ps(sc[g + k], _mm512_set1_ps(a->dx[g0 + g + k])), acc);
                acc = _mm512_fmadd_ps(bi[g + k], _mm512_set1_ps(a->xsum[g0 + g + k]), acc);
            }
        }
    }
    _mm512_mask_storeu_ps(y + r, nr == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1), acc);
}
TARGET_VNNI static void a8_panel_one_q4(const lm_mat *W, int r, int nr, const lm_act8 *a, float *y) {
    a8_panel_one(W, r, nr, a, y, 4);
}
TARGET_VNNI static void a8_panel_one_q8(const lm_mat *W, int r, int nr, const lm_act8 *a, float *y) {
    a8_panel_one(W, r, nr, a, y, 8);
}

TARGET_VNNI static void rows_act8_avx512(const lm_mat *W, int r0, int r1, const lm_act8 *a, int n, float *y) {
    if (lm_qblock_form(W->dtype)) { /* ggml blocks and MXFP4: qblock_avx512.c */
        lm_qblock_rows_avx512(W, r0, r1, a, n, y);
        return;
    }
    const int bits = W->bits, gs = W->group_size, ng = W->cols / gs;
    const int wpg = gs * bits / 32;          /* words per group */
    const int gpc = CHUNK_WORDS / wpg;       /* groups per chunk, <= CHUNK_GROUPS */
    if (n == 1) {
        for (int r = r0; r < r1; r += PANEL) {
            const int nr = r1 - r < PANEL ? r1 - r : PANEL;
            if (bits == 4) a8_panel_one_q4(W, r, nr, a, y);
            else a8_panel_one_q8(W, r, nr, a, y);
        }
        return;
    }
    const a8_chunk_fn *fn = bits == 4 ? a8_chunk_q4 : a8_chunk_q8;
    __m512i pk[CHUNK_WORDS];
    __m512 sc[CHUNK_GROUPS], bi[CHUNK_GROUPS];
    for (int r = r0; r < r1; r += PANEL) {
        const int nr = r1 - r < PANEL ? r1 - r : PANEL;
        const __mmask16 rm = nr == PANEL ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
        for (int g0 = 0; g0 < ng; g0 += gpc) {
            const int gn = ng - g0 < gpc ? ng - g0 : gpc;
            pack_words(W, r, nr, g0 * wpg, gn * wpg, pk);
            pack_scales_biases(W, ng, r, nr, g0, gn, sc, bi);
            for (int t0 = 0; t0 < n; t0 += A8_TOKENS) {
                const int tn = n - t0 < A8_TOKENS ? n - t0 : A8_TOKENS;
                fn[tn](pk, sc, bi, g0, gn, wpg, a, t0, y, W->rows, r, rm, g0 == 0);
            }
        }
    }
}

/* Group sizes both paths take: whole groups in a chunk (4 to 256 words), and
 * whole groups in a 64-byte step or whole steps in a group. */
static int handles_act8_avx512(const lm_mat *W) {
    if (lm_qblock_form(W->dtype)) return lm_qblock_handles_avx512(W);
    if (!(lm_cpu_features() & LM_CPU_AVX512VNNI) || W->dtype != LM_DT_U32) return 0;
    if (W->qdtype != LM_DT_F32 && W->qdtype != LM_DT_F16 && W->qdtype != LM_DT_BF16) return 0;
    int gs = W->group_size;
    if (W->bits == 4) return gs == 32 || gs == 64 || (gs > 0 && gs % 128 == 0 && gs <= 2048);
    if (W->bits == 8) return gs == 16 || gs == 32 || (gs > 0 && gs % 64 == 0 && gs <= 1024);
    return 0;
}

/* lm_act8_quantize with 16 lanes: the reference keeps 16 running lanes per group
 * and combines them in the same 16 -> 8 -> 4 -> 2 -> 1 tree as hsum, so max and sum
 * come out bit for bit; clamping and rounding (by 1.5 * 2^23) are the same
 * operations. Group sizes that are not a multiple of 16 go to the reference. */
TARGET INLINE float hmax_tree(__m512 v) { /* lane k = max(lane k + w, lane k), as the reference's tree */
    __m256 a = _mm256_max_ps(_mm512_extractf32x8_ps(v, 1), _mm512_castps512_ps256(v));
    __m128 b = _mm_max_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    b = _mm_max_ps(_mm_movehl_ps(b, b), b);
    b = _mm_max_ss(_mm_movehdup_ps(b), b);
    return _mm_cvtss_f32(b);
}

TARGET static void act8_quantize_avx512(const float *x, int n, int cols, int gs, int q4_block, int8_t *q,
                                        size_t q_stride, float *dx, float *xsum, int ng_stride) {
    if (gs % LANES || (q4_block && q4_block != Q4_BLOCK)) {
        lm_act8_quantize(x, n, cols, gs, q4_block, q, q_stride, dx, xsum, ng_stride);
        return;
    }
    const int ng = cols / gs;
    const __m512 sign = _mm512_set1_ps(-0.0f), magic = _mm512_set1_ps(12582912.0f);
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f), zero = _mm512_setzero_ps();
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * (size_t)cols;
        int8_t *qt = q + (size_t)t * q_stride;
        float *dt = dx + (size_t)t * (size_t)ng_stride, *st = xsum + (size_t)t * (size_t)ng_stride;
        for (int g = 0; g < ng; g++) {
            const float *xg = xt + (size_t)g * (size_t)gs;
            __m512 m = zero, sum = zero;
            for (int i = 0; i < gs; i += LANES) {
                __m512 v = _mm512_loadu_ps(xg + i);
                m = _mm512_max_ps(_mm512_andnot_ps(sign, v), m); /* a > m ? a : m */
                sum = _mm512_add_ps(sum, v);
            }
            float amax = hmax_tree(m), total = hsum(sum);
            float inv = amax > 0 && amax <= 3.4e38f ? 127.0f / amax : 0.0f;
            dt[g] = amax / 127.0f;
            st[g] = total;
            const __m512 vinv = _mm512_set1_ps(inv);
            for (int i = 0; i < gs; i += LANES) {
                __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xg + i), vinv);
                __mmask16 keep = _mm512_cmp_ps_mask(v, lo, _CMP_GE_OQ), neg = _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ);
                v = _mm512_mask_blend_ps(keep, _mm512_mask_blend_ps(neg, zero, lo), v); /* NaN -> 0 */
                v = _mm512_min_ps(v, hi);
                v = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
                _mm_storeu_si128((__m128i *)(qt + (size_t)g * (size_t)gs + i),
                                 _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
            }
        }
        memset(qt + cols, 0, q_stride - (size_t)cols);
        for (int g = ng; g < ng_stride; g++) dt[g] = st[g] = 0;
        if (!q4_block) continue;
        int base = 0; /* whole 128-blocks: even bytes by truncating 16-bit lanes, odd by shifting first */
        for (; base + Q4_BLOCK <= cols; base += Q4_BLOCK) {
            __m512i a = _mm512_loadu_si512(qt + base), b = _mm512_loadu_si512(qt + base + 64);
            _mm256_storeu_si256((__m256i *)(qt + base), _mm512_cvtepi16_epi8(a));
            _mm256_storeu_si256((__m256i *)(qt + base + 32), _mm512_cvtepi16_epi8(b));
            _mm256_storeu_si256((__m256i *)(qt + base + 64), _mm512_cvtepi16_epi8(_mm512_srli_epi16(a, 8)));
            _mm256_storeu_si256((__m256i *)(qt + base + 96), _mm512_cvtepi16_epi8(_mm512_srli_epi16(b, 8)));
        }
        lm_act8_interleave(qt, cols, Q4_BLOCK, base);
    }
}

TARGET static void f16_to_f32_avx512(float *dst, const uint16_t *src, int n) {
    for (int i = 0; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
    }
}

/* Attention's rows come as f32 (h = 0) or straight from an f16 cache (h = 1, widened in
 * registers: the same floats as a widened copy, so the same results). h is a constant
 * at every call: each form compiles to its own loop. off counts elements. */
TARGET INLINE __m512 row_load(const void *x, size_t off, const int h) {
    if (h) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + off)));
    return _mm512_loadu_ps((const float *)x + off);
}

TARGET INLINE __m512 row_load_mask(const void *x, size_t off, __mmask16 m, const int h) {
    if (h) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)x + off));
    return _mm512_maskz_loadu_ps(m, (const float *)x + off);
}

/* dot of row a (f32 or f16) with b: two chains of whole pairs of vectors, the tail in
 * the first. */
TARGET INLINE float dot_row(const void *a, size_t a0, const float *b, int n, const int h) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        acc0 = _mm512_fmadd_ps(row_load(a, a0 + (size_t)i, h), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(row_load(a, a0 + (size_t)(i + LANES), h), _mm512_loadu_ps(b + i + LANES), acc1);
    }
    for (; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        acc0 = _mm512_fmadd_ps(row_load_mask(a, a0 + (size_t)i, m, h), _mm512_maskz_loadu_ps(m, b + i), acc0);
    }
    return hsum(_mm512_add_ps(acc0, acc1));
}

TARGET static float dot_avx512(const float *a, const float *b, int n) { return dot_row(a, 0, b, n, 0); }

TARGET static void axpy_avx512(float *y, float a, const float *x, int n) {
    __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* dot_avx512 on cnt rows, four at a time (independent chains; each row's the same). */
TARGET INLINE void dot_rows_any(float *out, const float *q, const void *x, size_t stride, int cnt, int n, const int h) {
    int r = 0;
    for (; r + 4 <= cnt; r += 4) {
        size_t x0 = (size_t)r * stride, x1 = x0 + stride, x2 = x1 + stride, x3 = x2 + stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int i = 0;
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            __m512 qa = _mm512_loadu_ps(q + i), qb = _mm512_loadu_ps(q + i + LANES);
            a0 = _mm512_fmadd_ps(row_load(x, x0 + (size_t)i, h), qa, a0);
            b0 = _mm512_fmadd_ps(row_load(x, x0 + (size_t)(i + LANES), h), qb, b0);
            a1 = _mm512_fmadd_ps(row_load(x, x1 + (size_t)i, h), qa, a1);
            b1 = _mm512_fmadd_ps(row_load(x, x1 + (size_t)(i + LANES), h), qb, b1);
            a2 = _mm512_fmadd_ps(row_load(x, x2 + (size_t)i, h), qa, a2);
            b2 = _mm512_fmadd_ps(row_load(x, x2 + (size_t)(i + LANES), h), qb, b2);
            a3 = _mm512_fmadd_ps(row_load(x, x3 + (size_t)i, h), qa, a3);
            b3 = _mm512_fmadd_ps(row_load(x, x3 + (size_t)(i + LANES), h), qb, b3);
        }
        for (; i < n; i += LANES) {
            __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
            __m512 qa = _mm512_maskz_loadu_ps(m, q + i);
            a0 = _mm512_fmadd_ps(row_load_mask(x, x0 + (size_t)i, m, h), qa, a0);
            a1 = _mm512_fmadd_ps(row_load_mask(x, x1 + (size_t)i, m, h), qa, a1);
            a2 = _mm512_fmadd_ps(row_load_mask(x, x2 + (size_t)i, m, h), qa, a2);
            a3 = _mm512_fmadd_ps(row_load_mask(x, x3 + (size_t)i, m, h), qa, a3);
        }
        out[r] = hsum(_mm512_add_ps(a0, b0));
        out[r + 1] = hsum(_mm512_add_ps(a1, b1));
        out[r + 2] = hsum(_mm512_add_ps(a2, b2));
        out[r + 3] = hsum(_mm512_add_ps(a3, b3));
    }
    for (; r < cnt; r++) out[r] = dot_row(x, (size_t)r * stride, q, n, h);
}

TARGET static void dot_rows_avx512(float *out, const float *q, const float *x, size_t stride, int cnt, int n) {
    dot_rows_any(out, q, x, stride, cnt, n, 0);
}

TARGET static void dot_rows_f16_avx512(float *out, const float *q, const uint16_t *x, size_t stride, int cnt, int n) {
    dot_rows_any(out, q, x, stride, cnt, n, 1);
}

/* A loaded vector used by two fmas stays one load: without this GCC folds the load into
 * each fma, and the two-head kernels below would load as often as one head per call. */
#define KEEP_IN_REGISTER(v) __asm__("" : "+v"(v))

/* hsum of eight vectors at once, the same additions in the same pairs (lane i with
 * i + 8, then i + 4, i + 2, i + 1), the vectors transposed along the way instead of
 * each reduced alone: v[0..3] -> o0[0..3], v[4..7] -> o1[0..3]. */
TARGET INLINE void hsum8(const __m512 v[8], float *o0, float *o1) {
    __m512 a[4], b[2];
    _Pragma("GCC unroll 4")
    for (int k = 0; k < 4; k++) /* [v lo 8 + v hi 8 | w lo 8 + w hi 8] for v, w = v[2k], v[2k+1] */
        a[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xee));
    _Pragma("GCC unroll 2")
    for (int k = 0; k < 2; k++) /* quarter q: lanes 0-3 + lanes 4-7 of v[4k + q] */
        b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0xdd));
    /* quarter q: [v[q] 0+2, 1+3, v[4+q] 0+2, 1+3], then each pair added */
    __m512 c = _mm512_add_ps(_mm512_shuffle_ps(b[0], b[1], 0x44), _mm512_shuffle_ps(b[0], b[1], 0xee));
    c = _mm512_add_ps(c, _mm512_shuffle_ps(c, c, 0xb1));
    __m512 r = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0), c);
    _mm_storeu_ps(o0, _mm512_castps512_ps128(r));
    _mm_storeu_ps(o1, _mm512_extractf32x4_ps(r, 1));
}

/* dot_rows_avx512 for two queries (two heads of a kv group): each key row loaded once
 * for both, four rows at a time (16 independent chains); each (query, row) the same
 * chain as dot_avx512. */
TARGET INLINE void dot_rows2_any(float *o0, float *o1, const float *q0, const float *q1, const void *x, size_t stride,
                                 int cnt, int n, const int h) {
    int r = 0;
    for (; r + 4 <= cnt; r += 4) {
        const size_t xr[4] = {(size_t)r * stride, (size_t)(r + 1) * stride, (size_t)(r + 2) * stride,
                              (size_t)(r + 3) * stride};
        __m512 a[2][4], b[2][4];
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) a[0][k] = a[1][k] = b[0][k] = b[1][k] = _mm512_setzero_ps();
        int i = 0;
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            __m512 qa0 = _mm512_loadu_ps(q0 + i), qb0 = _mm512_loadu_ps(q0 + i + LANES);
            __m512 qa1 = _mm512_loadu_ps(q1 + i), qb1 = _mm512_loadu_ps(q1 + i + LANES);
            _Pragma("GCC unroll 4")
            for (int k = 0; k < 4; k++) {
                __m512 xa = row_load(x, xr[k] + (size_t)i, h), xb = row_load(x, xr[k] + (size_t)(i + LANES), h);
                KEEP_IN_REGISTER(xa);
                KEEP_IN_REGISTER(xb);
                a[0][k] = _mm512_fmadd_ps(xa, qa0, a[0][k]);
                b[0][k] = _mm512_fmadd_ps(xb, qb0, b[0][k]);
                a[1][k] = _mm512_fmadd_ps(xa, qa1, a[1][k]);
                b[1][k] = _mm512_fmadd_ps(xb, qb1, b[1][k]);
            }
        }
        for (; i < n; i += LANES) {
            __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
            __m512 qa0 = _mm512_maskz_loadu_ps(m, q0 + i), qa1 = _mm512_maskz_loadu_ps(m, q1 + i);
            _Pragma("GCC unroll 4")
            for (int k = 0; k < 4; k++) {
                __m512 xa = row_load_mask(x, xr[k] + (size_t)i, m, h);
                a[0][k] = _mm512_fmadd_ps(xa, qa0, a[0][k]);
                a[1][k] = _mm512_fmadd_ps(xa, qa1, a[1][k]);
            }
        }
        __m512 v[8];
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) v[k] = _mm512_add_ps(a[0][k], b[0][k]), v[4 + k] = _mm512_add_ps(a[1][k], b[1][k]);
        hsum8(v, o0 + r, o1 + r);
    }
    for (; r < cnt; r++) {
        o0[r] = dot_row(x, (size_t)r * stride, q0, n, h);
        o1[r] = dot_row(x, (size_t)r * stride, q1, n, h);
    }
}

TARGET static void dot_rows2_avx512(float *o0, float *o1, const float *q0, const float *q1, const float *x,
                                    size_t stride, int cnt, int n) {
    dot_rows2_any(o0, o1, q0, q1, x, stride, cnt, n, 0);
}

TARGET static void dot_rows2_f16_avx512(float *o0, float *o1, const float *q0, const float *q1, const uint16_t *x,
                                        size_t stride, int cnt, int n) {
    dot_rows2_any(o0, o1, q0, q1, x, stride, cnt, n, 1);
}

/* Columns [i, i + W * LANES) of axpy_rows_avx512: W vectors of y held in registers over
 * all cnt rows. W is a constant at each call, so each width compiles to its own
 * unrolled loop. */
TARGET INLINE void axpy_rows_block(float *y, const float *e, const void *x, size_t stride, int cnt, int i, const int W,
                                   const int h) {
    __m512 acc[8];
    _Pragma("GCC unroll 8")
    for (int c = 0; c < W; c++) acc[c] = _mm512_loadu_ps(y + i + c * LANES);
    for (int r = 0; r < cnt; r++) {
        size_t xr = (size_t)r * stride + (size_t)i;
        __m512 va = _mm512_set1_ps(e[r]);
        _Pragma("GCC unroll 8")
        for (int c = 0; c < W; c++) acc[c] = _mm512_fmadd_ps(va, row_load(x, xr + (size_t)(c * LANES), h), acc[c]);
    }
    _Pragma("GCC unroll 8")
    for (int c = 0; c < W; c++) _mm512_storeu_ps(y + i + c * LANES, acc[c]);
}

/* axpy_avx512 over cnt rows with y in registers: up to 8 vectors of y per pass over
 * the rows (independent chains), each element the same fma chain in row order. */
TARGET INLINE void axpy_rows_any(float *y, const float *e, const void *x, size_t stride, int cnt, int n, const int h) {
    int i = 0;
    for (; i + 8 * LANES <= n; i += 8 * LANES) axpy_rows_block(y, e, x, stride, cnt, i, 8, h);
    for (; i + 4 * LANES <= n; i += 4 * LANES) axpy_rows_block(y, e, x, stride, cnt, i, 4, h);
    for (; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 acc = _mm512_maskz_loadu_ps(m, y + i);
        for (int r = 0; r < cnt; r++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(e[r]), row_load_mask(x, (size_t)r * stride + (size_t)i, m, h), acc);
        _mm512_mask_storeu_ps(y + i, m, acc);
    }
}

TARGET static void axpy_rows_avx512(float *y, const float *e, const float *x, size_t stride, int cnt, int n) {
    axpy_rows_any(y, e, x, stride, cnt, n, 0);
}

TARGET static void axpy_rows_f16_avx512(float *y, const float *e, const uint16_t *x, size_t stride, int cnt, int n) {
    axpy_rows_any(y, e, x, stride, cnt, n, 1);
}

/* axpy_rows_block for two outputs over the same rows (two heads of a kv group), each
 * row's vectors loaded once for both. */
TARGET INLINE void axpy_rows2_block(float *y0, float *y1, const float *e0, const float *e1, const void *x,
                                    size_t stride, int cnt, int i, const int W, const int h) {
    __m512 a0[8], a1[8];
    _Pragma("GCC unroll 8")
    for (int c = 0; c < W; c++) a0[c] = _mm512_loadu_ps(y0 + i + c * LANES), a1[c] = _mm512_loadu_ps(y1 + i + c * LANES);
    for (int r = 0; r < cnt; r++) {
        size_t xr = (size_t)r * stride + (size_t)i;
        __m512 v0 = _mm512_set1_ps(e0[r]), v1 = _mm512_set1_ps(e1[r]);
        _Pragma("GCC unroll 8")
        for (int c = 0; c < W; c++) {
            __m512 xc = row_load(x, xr + (size_t)(c * LANES), h);
            KEEP_IN_REGISTER(xc);
            a0[c] = _mm512_fmadd_ps(v0, xc, a0[c]);
            a1[c] = _mm512_fmadd_ps(v1, xc, a1[c]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int c = 0; c < W; c++) _mm512_storeu_ps(y0 + i + c * LANES, a0[c]), _mm512_storeu_ps(y1 + i + c * LANES, a1[c]);
}

/* axpy_rows_avx512 for two outputs: y0 with weights e0 and y1 with e1 over the same
 * rows, each element the same fma chain in row order. */
TARGET INLINE void axpy_rows2_any(float *y0, float *y1, const float *e0, const float *e1, const void *x, size_t stride,
                                  int cnt, int n, const int h) {
    int i = 0;
    for (; i + 8 * LANES <= n; i += 8 * LANES) axpy_rows2_block(y0, y1, e0, e1, x, stride, cnt, i, 8, h);
    for (; i + 4 * LANES <= n; i += 4 * LANES) axpy_rows2_block(y0, y1, e0, e1, x, stride, cnt, i, 4, h);
    for (; i < n; i += LANES) {
        __mmask16 m = n - i >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 acc0 = _mm512_maskz_loadu_ps(m, y0 + i), acc1 = _mm512_maskz_loadu_ps(m, y1 + i);
        for (int r = 0; r < cnt; r++) {
            __m512 xc = row_load_mask(x, (size_t)r * stride + (size_t)i, m, h);
            acc0 = _mm512_fmadd_ps(_mm512_set1_ps(e0[r]), xc, acc0);
            acc1 = _mm512_fmadd_ps(_mm512_set1_ps(e1[r]), xc, acc1);
        }
        _mm512_mask_storeu_ps(y0 + i, m, acc0);
        _mm512_mask_storeu_ps(y1 + i, m, acc1);
    }
}

TARGET static void axpy_rows2_avx512(float *y0, float *y1, const float *e0, const float *e1, const float *x,
                                     size_t stride, int cnt, int n) {
    axpy_rows2_any(y0, y1, e0, e1, x, stride, cnt, n, 0);
}

TARGET static void axpy_rows2_f16_avx512(float *y0, float *y1, const float *e0, const float *e1, const uint16_t *x,
                                         size_t stride, int cnt, int n) {
    axpy_rows2_any(y0, y1, e0, e1, x, stride, cnt, n, 1);
}

/* lm_attn_exp of 16 lanes: the same operations, lane by lane. */
TARGET INLINE __m512 attn_exp16(__m512 x) {
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __mmask16 small = _mm512_cmp_ps_mask(x, _mm512_set1_ps(LM_ATTN_EXP_LO), _CMP_LT_OQ);
    __m512 xc = _mm512_min_ps(x, _mm512_set1_ps(LM_ATTN_EXP_HI));
    __m512 shift = _mm512_set1_ps(LM_ATTN_EXP_SHIFT);
    __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(LM_ATTN_EXP_LOG2E), shift), shift);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LM_ATTN_EXP_LN2_HI), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LM_ATTN_EXP_LN2_LO), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(LM_ATTN_EXP_P0), r, _mm512_set1_ps(LM_ATTN_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LM_ATTN_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LM_ATTN_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LM_ATTN_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(LM_ATTN_EXP_P5));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 v = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
    v = _mm512_mask_blend_ps(small, v, _mm512_setzero_ps());
    return _mm512_mask_blend_ps(nan, v, x);
}

/* The sum: one vector accumulator over the chunks in order (lanes past cnt add 0),
 * then hsum. */
TARGET static float attn_exp_avx512(float *e, int cnt, float m) {
    __m512 vm = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    for (int r = 0; r < cnt; r += LANES) {
        __mmask16 k = cnt - r >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (cnt - r)) - 1);
        __m512 v = _mm512_maskz_mov_ps(k, attn_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, e + r), vm)));
        _mm512_mask_storeu_ps(e + r, k, v);
        sum = _mm512_add_ps(sum, v);
    }
    return hsum(sum);
}

/* The scaled scores as the scalar loop (the same multiplication), their maximum in 16
 * lanes started at m (max_ps(s, acc) is s > acc ? s : acc, so NaNs stay out), then
 * hmax_tree. */
TARGET static float attn_scale_max_avx512(float *s, int cnt, float scale, float m) {
    __m512 vs = _mm512_set1_ps(scale), acc = _mm512_set1_ps(m);
    for (int r = 0; r < cnt; r += LANES) {
        __mmask16 k = cnt - r >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << (cnt - r)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + r), vs);
        _mm512_mask_storeu_ps(s + r, k, v);
        acc = _mm512_mask_max_ps(acc, k, v, acc);
    }
    return hmax_tree(acc);
}

static int handles_avx512(const lm_mat *W) {
    if (W->dtype == LM_DT_U32)
        return (W->bits == 4 || W->bits == 8) && W->group_size % LANES == 0 &&
               (W->qdtype == LM_DT_F32 || W->qdtype == LM_DT_F16 || W->qdtype == LM_DT_BF16);
    return W->dtype == LM_DT_F32 || W->dtype == LM_DT_F16 || W->dtype == LM_DT_BF16;
}

static int available_avx512(void) {
    const unsigned need = LM_CPU_AVX512F | LM_CPU_AVX512BW | LM_CPU_AVX512VL | LM_CPU_AVX512DQ | LM_CPU_AVX512VBMI |
                          LM_CPU_FMA | LM_CPU_F16C;
    return (lm_cpu_features() & need) == need;
}

const lm_cpu_kernels lm_cpu_kernels_avx512 = {"avx512",
                                              "AVX-512 F/BW/VL/DQ/VBMI with FMA and F16C",
                                              available_avx512,
                                              handles_avx512,
                                              rows_avx512,
                                              f16_to_f32_avx512,
                                              dot_avx512,
                                              axpy_avx512,
                                              handles_act8_avx512,
                                              rows_act8_avx512,
                                              Q4_BLOCK,
                                              act8_quantize_avx512,
                                              dot_rows_avx512,
                                              axpy_rows_avx512,
                                              dot_rows2_avx512,
                                              axpy_rows2_avx512,
                                              attn_exp_avx512,
                                              dot_rows_f16_avx512,
                                              axpy_rows_f16_avx512,
                                              dot_rows2_f16_avx512,
                                              axpy_rows2_f16_avx512,
                                              attn_scale_max_avx512};

#else /* not x86-64 */

static int unavailable(void) { return 0; }
const lm_cpu_kernels lm_cpu_kernels_avx512 = {"avx512", "an x86-64 CPU with AVX-512 VBMI", unavailable, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};

#endif

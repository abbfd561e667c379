/* A 16 x 16 transposition of 32-bit elements in AVX-512 registers, and the lane sums
 * of 16 rows' vectors into vectors with a row per lane, shared by the int8 kernels
 * that put a row per lane (matmul_avx512.c, qblock_avx512.c).
 * Include only from x86-64 code; the functions carry their own target, a subset of
 * every caller's, so they inline into them. */
#ifndef LAZYMOE_AVX512_TRANSPOSE_H
#define LAZYMOE_AVX512_TRANSPOSE_H

#include <immintrin.h>

/* v[i] word j -> v[j] word i. */
static inline __attribute__((always_inline, target("avx512f"))) void lm_transpose16x16(__m512i v[16]) {
    __m512i t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    /* Then v[4i + j], 128-bit lane L: rows 4i..4i+3 of column 4L + j. */
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++) {
        v[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        v[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        v[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        v[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
#pragma GCC unroll 16
    for (int j = 0; j < 4; j++) {
        __m512i u0 = _mm512_shuffle_i32x4(v[j], v[4 + j], 0x44), u1 = _mm512_shuffle_i32x4(v[j], v[4 + j], 0xee);
        __m512i u2 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], 0x44), u3 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], 0xee);
        t[j] = _mm512_shuffle_i32x4(u0, u2, 0x88);
        t[4 + j] = _mm512_shuffle_i32x4(u0, u2, 0xdd);
        t[8 + j] = _mm512_shuffle_i32x4(u1, u3, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(u1, u3, 0xdd);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) v[i] = t[i];
}

/* v[i] = row i's 32-bit lanes for one step of the columns, lpg consecutive lanes per
 * group (4, 8 or 16); out[k] = group k's sum of lanes, row i in lane i (16 / lpg
 * vectors). Integer sums: exact in any order. */
static inline __attribute__((always_inline, target("avx512f"))) void lm_reduce_rows16(const __m512i v[16], const int lpg,
                                                                                       __m512i *out) {
    __m512i t[8], u[4];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i++) /* 128-bit lane L: rows 2i, 2i+1, 2i, 2i+1 */
        t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                                _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++) /* 128-bit lane L: rows 4i..4i+3, each its lane L's sum */
        u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                                _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
    __m512i a = _mm512_shuffle_i32x4(u[0], u[1], 0x44), b = _mm512_shuffle_i32x4(u[0], u[1], 0xee);
    __m512i c = _mm512_shuffle_i32x4(u[2], u[3], 0x44), d = _mm512_shuffle_i32x4(u[2], u[3], 0xee);
    __m512i q0 = _mm512_shuffle_i32x4(a, c, 0x88), q1 = _mm512_shuffle_i32x4(a, c, 0xdd); /* lane 0, 1 of rows 0..15 */
    __m512i q2 = _mm512_shuffle_i32x4(b, d, 0x88), q3 = _mm512_shuffle_i32x4(b, d, 0xdd);
    if (lpg == 4) {
        out[0] = q0, out[1] = q1, out[2] = q2, out[3] = q3;
    } else if (lpg == 8) {
        out[0] = _mm512_add_epi32(q0, q1), out[1] = _mm512_add_epi32(q2, q3);
    } else {
        out[0] = _mm512_add_epi32(_mm512_add_epi32(q0, q1), _mm512_add_epi32(q2, q3));
    }
}

#endif

/* A 16 x 16 transposition of 32-bit elements in AVX-512 registers, shared by the
 * int8 kernels that put a row per lane (matmul_avx512.c, qblock_avx512.c).
 * Include only from x86-64 code; the function carries its own target, a subset of
 * every caller's, so it inlines into them. */
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

#endif

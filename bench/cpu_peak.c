/* The compute ceiling of one core, for reading the matmul numbers against it:
 * 512-bit FMA (f32 multiply-adds per second) and VNNI vpdpbusd (int8 multiply-adds
 * per second), each as 16 independent accumulator chains (enough to hide the
 * latency), no memory traffic. prefill with f32 activations cannot beat the first,
 * int8 activations the second.
 *
 * build: cc -O2 -std=c11 bench/cpu_peak.c -o build/cpu_peak
 * run:   build/cpu_peak            (x86-64 with AVX-512 VNNI)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#include "bench_util.h"

#define CHAINS 16
#define ITERS 20000000

__attribute__((target("avx512f"), noinline)) static float fma_peak(double *secs) {
    __m512 acc[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    double t0 = now();
    for (long i = 0; i < ITERS; i++) {
        _Pragma("GCC unroll 16") for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    }
    *secs = now() - t0;
    float s = 0;
    for (int c = 0; c < CHAINS; c++) s += _mm512_reduce_add_ps(acc[c]);
    return s;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) static int dp_peak(double *secs) {
    __m512i acc[CHAINS];
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_epi32(c);
    double t0 = now();
    for (long i = 0; i < ITERS; i++) {
        _Pragma("GCC unroll 16") for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
    }
    *secs = now() - t0;
    int s = 0;
    for (int c = 0; c < CHAINS; c++) s += _mm512_reduce_add_epi32(acc[c]);
    return s;
}

int main(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vnni")) {
        fprintf(stderr, "needs AVX-512 with VNNI\n");
        return 2;
    }
    double best_f = 1e9, best_d = 1e9, t;
    float sf = 0;
    int sd = 0;
    for (int rep = 0; rep < 3; rep++) {
        sf += fma_peak(&t);
        if (t < best_f) best_f = t;
        sd += dp_peak(&t);
        if (t < best_d) best_d = t;
    }
    double n = (double)ITERS * CHAINS;
    printf("one core: %.2f G fma/s = %.1f GMAC/s f32; %.2f G vpdpbusd/s = %.1f GMAC/s int8 (checksums %g %d)\n",
           n / best_f / 1e9, 16 * n / best_f / 1e9, n / best_d / 1e9, 64 * n / best_d / 1e9, (double)sf, sd);
    return 0;
}

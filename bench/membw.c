/* The memory read bandwidth a decode step can hope for: THREADS threads (already
 * started, released together) each read their share of a buffer far larger than the
 * caches, with 512-bit loads, in three patterns, and the best pass of each is printed:
 *   seq      one stream per thread, no software prefetch (the hardware prefetcher alone)
 *   seq+pf   the same with a prefetch 4 KiB ahead
 *   rows16   16 interleaved row streams per thread (as a 16-row decode panel reads),
 *            each prefetched one panel ahead
 * A one-token matmul cannot read its weights faster than the best of these, so
 * (bytes of weights read per token) / (best GB/s) is decode's physical bound.
 * Run it beside the decode benchmark (same minutes) on a shared machine.
 *
 * build: cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror bench/membw.c -lpthread -o build/membw
 * run:   build/membw [THREADS=2] [MB=1024] [PASSES=5]
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

#define PF_AHEAD 4096
#define NMODES 6
#define ROW_BYTES 1152 /* one 2048-column Q4_K row, about */

typedef struct {
    const uint8_t *p;
    size_t n; /* bytes, a multiple of 16 * ROW_BYTES */
    int mode;
    pthread_barrier_t *start, *done;
    volatile int *quit;
    long long sum;
} job;

__attribute__((target("avx512f"))) static long long read_seq(const uint8_t *p, size_t n, int pf) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 256 <= n; i += 256) {
        if (pf) {
            _mm_prefetch((const char *)p + i + PF_AHEAD, _MM_HINT_T0);
            _mm_prefetch((const char *)p + i + PF_AHEAD + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)p + i + PF_AHEAD + 128, _MM_HINT_T0);
            _mm_prefetch((const char *)p + i + PF_AHEAD + 192, _MM_HINT_T0);
        }
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 64));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 128));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 192));
    }
    return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
}

/* 16 rows of ROW_BYTES side by side, 64 bytes of each in turn; the next panel's same
 * bytes prefetched (what qblock_avx512.c's one-token path does). */
__attribute__((target("avx512f"))) static long long read_rows16(const uint8_t *p, size_t n, int lin, int ahead) {
    __m512i acc = _mm512_setzero_si512();
    const size_t panel = 16 * ROW_BYTES;
    for (size_t base = 0; base + panel <= n; base += panel) {
        size_t k = 0;
        for (size_t c = 0; c + 64 <= ROW_BYTES; c += 64)
            for (int i = 0; i < 16; i++, k++) {
                const uint8_t *q = p + base + (size_t)i * ROW_BYTES + c;
                if (base + (1 + ahead) * panel <= n) {
                    if (lin) _mm_prefetch((const char *)p + base + ahead * panel + 64 * k, _MM_HINT_T0);
                    else _mm_prefetch((const char *)q + ahead * panel, _MM_HINT_T0);
                }
                acc = _mm512_add_epi64(acc, _mm512_loadu_si512(q));
            }
    }
    return _mm512_reduce_add_epi64(acc);
}

static void *worker(void *arg) {
    job *j = arg;
    for (;;) {
        pthread_barrier_wait(j->start);
        if (*j->quit) return NULL;
        j->sum += j->mode >= 2 ? read_rows16(j->p, j->n, j->mode & 1, j->mode >= 4 ? 2 : 1) : read_seq(j->p, j->n, j->mode);
        pthread_barrier_wait(j->done);
    }
}

int main(int argc, char **argv) {
    const int nt = argc > 1 ? atoi(argv[1]) : 2;
    const size_t mb = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    const int passes = argc > 3 ? atoi(argv[3]) : 5;
    if (nt < 1 || nt > 64 || mb < 64 || passes < 1) {
        fprintf(stderr, "usage: %s [THREADS=2] [MB=1024] [PASSES=5]\n", argv[0]);
        return 2;
    }
    const size_t share = (mb << 20) / (size_t)nt / (16 * ROW_BYTES) * (16 * ROW_BYTES), bytes = share * (size_t)nt;
    uint8_t *buf = aligned_alloc(64, bytes);
    if (!buf) return 1;
    memset(buf, 1, bytes);
    pthread_barrier_t start, done;
    pthread_barrier_init(&start, NULL, (unsigned)nt + 1);
    pthread_barrier_init(&done, NULL, (unsigned)nt + 1);
    volatile int quit = 0;
    job jobs[64];
    pthread_t th[64];
    for (int k = 0; k < nt; k++) {
        jobs[k] = (job){.p = buf + share * (size_t)k, .n = share, .start = &start, .done = &done, .quit = &quit};
        pthread_create(&th[k], NULL, worker, &jobs[k]);
    }
    static const char *names[NMODES] = {"seq", "seq+pf", "rows16", "rows16-linpf", "rows16-2ahead", "rows16-linpf-2ahead"};
    double best[NMODES] = {0};
    for (int pass = 0; pass < passes; pass++)
        for (int mode = 0; mode < NMODES; mode++) { /* the patterns in turn, so the load hits them alike */
            for (int k = 0; k < nt; k++) jobs[k].mode = mode;
            double t0 = now();
            pthread_barrier_wait(&start);
            pthread_barrier_wait(&done);
            double gbs = (double)bytes / (now() - t0) / 1e9;
            if (gbs > best[mode]) best[mode] = gbs;
        }
    quit = 1;
    pthread_barrier_wait(&start);
    long long sum = 0;
    for (int k = 0; k < nt; k++) pthread_join(th[k], NULL), sum += jobs[k].sum;
    double top = 0;
    for (int mode = 0; mode < NMODES; mode++) {
        printf("%s %.2f GB/s\n", names[mode], best[mode]);
        if (best[mode] > top) top = best[mode];
    }
    printf("membw best %.2f GB/s (%d threads, %zu MB, best of %d passes)%s\n", top, nt, bytes >> 20, passes,
           sum == 42 ? " " : "");
    free(buf);
    return 0;
}

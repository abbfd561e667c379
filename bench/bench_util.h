/* Small helpers the benchmark programs share: clocks and greedy picking. Header-only
 * (static inline) because each bench/ program is built on its own with one cc line. */
#ifndef LAZYMOE_BENCH_UTIL_H
#define LAZYMOE_BENCH_UTIL_H

#include <time.h>

/* Wall-clock seconds (monotonic). */
static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of the whole process, all threads (spinning included). */
static inline double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Index of the largest of x[0..n), the first on ties (greedy decoding). */
static inline int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

#endif

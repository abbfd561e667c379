/* One matmul kernel in isolation: y[n][rows] = x[n][cols] . W^T for an MLX affine
 * matrix, f32 activations against int8 activations (lm_backend_cpu_set_act_bits),
 * on the same random weights in the same run, with the weight-streaming rate
 * (GB/s of packed weights) and the multiply-add rate (GMAC/s).
 *
 * build: make && cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench_matmul.c \
 *        build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/bench_matmul
 * run:   build/bench_matmul [ROWS=768] [COLS=2048] [BITS=4] [GS=64] [THREADS=1]
 * CACHED=1 reuses one copy instead (it stays in L2: the kernel's compute rate alone).
 * LAZYMOE_KERNELS picks the table as for lazymoe itself; LAZYMOE_CPU_HIDE=avxvnni
 * (or dotprod on ARM) measures the int8 path a CPU without the dot-product
 * instructions takes, e.g. LAZYMOE_KERNELS=avx2 LAZYMOE_CPU_HIDE=avxvnni.
 */
#include "common/error.h"
#include "kernels/backend.h"
#include "platform/platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float frand(void) { return (float)next() / 4294967296.0f * 2.0f - 1.0f; }

int main(int argc, char **argv) {
    int rows = argc > 1 ? atoi(argv[1]) : 768, cols = argc > 2 ? atoi(argv[2]) : 2048;
    int bits = argc > 3 ? atoi(argv[3]) : 4, gs = argc > 4 ? atoi(argv[4]) : 64;
    int threads = argc > 5 ? atoi(argv[5]) : 1;
    if (rows <= 0 || cols <= 0 || (bits != 4 && bits != 8) || gs <= 0 || cols % gs) {
        fprintf(stderr, "usage: %s [ROWS] [COLS] [BITS 4|8] [GS] [THREADS]\n", argv[0]);
        return 2;
    }
    /* Copies of the matrix, cycled, 256 MB in all (more than any L3 cache here), so
     * each call streams its weights from memory as a decode step does. */
    size_t wbytes = (size_t)rows * (size_t)cols * (size_t)bits / 8, ng = (size_t)rows * (size_t)(cols / gs);
    enum { MAX_COPIES = 1024 };
    int COPIES = (int)((256u << 20) / wbytes) + 1;
    if (COPIES > MAX_COPIES) COPIES = MAX_COPIES;
    if (COPIES < 2) COPIES = 2;
    static lm_mat W[MAX_COPIES];
    for (int c = 0; c < COPIES; c++) {
        uint8_t *d = malloc(wbytes);
        uint16_t *s = malloc(ng * 2), *b = malloc(ng * 2);
        if (!d || !s || !b) return fprintf(stderr, "out of memory\n"), 1;
        for (size_t i = 0; i < wbytes; i++) d[i] = (uint8_t)next();
        for (size_t i = 0; i < ng; i++) s[i] = lm_f32_to_bf16(frand() * 0.02f), b[i] = lm_f32_to_bf16(frand() * 0.1f);
        W[c] = (lm_mat){.dtype = LM_DT_U32, .rows = rows, .cols = cols, .data = d, .bits = bits, .group_size = gs,
                        .qdtype = LM_DT_BF16, .scales = s, .biases = b};
    }
    int ns[] = {1, 4, 16, 64, 256};
    const int cached = getenv("CACHED") && atoi(getenv("CACHED"));
    float *x = malloc(sizeof(float) * 256 * (size_t)cols), *y = malloc(sizeof(float) * 256 * (size_t)rows);
    if (!x || !y) return 1;
    for (size_t i = 0; i < 256 * (size_t)cols; i++) x[i] = frand();
    char err[LM_ERR_LEN];
    printf("matrix %d x %d, %d-bit, group %d, %d thread(s), %.1f MB of packed weights per copy%s\n", rows, cols, bits,
           gs, threads, (double)wbytes / 1e6, cached ? ", one copy reused (cached)" : "");
    printf("%6s %10s %12s %12s %10s\n", "tokens", "acts", "ms/call", "GB/s", "GMAC/s");
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        int n = ns[k];
        double best[2] = {1e9, 1e9};
        for (int rep = 0; rep < 3; rep++) {
            for (int m = 0; m < 2; m++) {
                lm_backend *be;
                if (lm_backend_cpu_create(&be, threads, err) != 0 ||
                    lm_backend_cpu_set_act_bits(be, m ? 8 : 32, cols, err) != 0)
                    return fprintf(stderr, "%s\n", err), 1;
                int calls = n == 1 ? 400 : n == 4 ? 200 : n == 16 ? 60 : n == 64 ? 20 : 6;
                be->ops->matmul(be, y, &W[0], x, n); /* warm up (buffers) */
                double t0 = lm_now();
                for (int i = 0; i < calls; i++) be->ops->matmul(be, y, &W[cached ? 0 : i % COPIES], x, n);
                double dt = (lm_now() - t0) / calls;
                if (dt < best[m]) best[m] = dt;
                lm_backend_free(be);
            }
        }
        for (int m = 0; m < 2; m++)
            printf("%6d %10s %12.4f %12.2f %10.2f\n", n, m ? "int8" : "f32", best[m] * 1e3,
                   (double)wbytes / best[m] / 1e9, (double)rows * cols * n / best[m] / 1e9);
        printf("%6d   int8 / f32 speed: %.2fx\n", n, best[0] / best[1]);
    }
    return 0;
}

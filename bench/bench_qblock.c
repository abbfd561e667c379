/* ggml block weights against MLX 4-bit in one matmul, same run, same shapes: int8
 * activations (the default for quantized weights) and f32 activations, for a decode
 * step (1 token, weights streamed from memory: copies cycled, 128 MB per type;
 * CACHED=1 keeps one copy in cache) and for token batches (weights in cache: the
 * kernels' compute rate).
 *
 * build: make && cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench_qblock.c \
 *        build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/bench_qblock
 * CPUTIME=1 times the matmuls by the process's CPU time rather than the wall clock: on
 * a shared machine, with THREADS=1, the time other processes take is then not counted
 * (a neighbour's use of caches and memory still is).
 * TYPES=Q4_K,Q6_K,MLX4g32 (names as printed) runs only those types (ratio 0 without MLX4g32).
 * run:   [ACT8_ONLY=1] [ROUNDS=3] [CACHED=1] [CPUTIME=1] [TYPES=...] build/bench_qblock [ROWS=768] [COLS=2048] [THREADS=1] [TOKENS=1,8,64]
 * Every (type, tokens, bits) runs once per round, the rounds in turn, and the best
 * of the rounds is printed (GMAC/s, GB/s of weights, the ratio to MLX 4-bit g32),
 * so a neighbour's load hits the types of a round alike. The memory-bandwidth bound:
 * THREADS threads summing 256 MB (best of 3 passes per round); a one-token matmul
 * cannot stream its weights faster, so "of bound" = GB/s of weights / that rate. */
#include "common/error.h"
#include "formats/ggml_blocks.h"
#include "kernels/backend.h"
#include "platform/platform.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
/* The clock the matmuls are timed by (CPUTIME=1: the process's CPU time). */
static double clock_s(void) {
    if (!getenv("CPUTIME")) return lm_now();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static const char *type_name(lm_dtype t) { return t == LM_DT_U32 ? "MLX4g32" : lm_dtype_name(t); }
static float frand(void) { return (float)next() / 4294967296.0f * 2.0f - 1.0f; }

/* Random bytes with small finite f16 scales at the type's scale fields. */
static void fill(lm_mat *W, uint8_t *d, size_t bytes) {
    for (size_t i = 0; i < bytes; i++) d[i] = (uint8_t)next();
    if (W->dtype == LM_DT_U32) {
        uint16_t *s = (uint16_t *)W->scales, *b = (uint16_t *)W->biases;
        size_t ng = (size_t)W->rows * (size_t)(W->cols / W->group_size);
        for (size_t i = 0; i < ng; i++) s[i] = lm_f32_to_f16(frand() * 0.01f), b[i] = lm_f32_to_f16(frand() * 0.01f);
        return;
    }
    const size_t bb = lm_dtype_block_bytes(W->dtype);
    int at[2] = {0, -1};
    if (W->dtype == LM_DT_Q4_K || W->dtype == LM_DT_Q5_K) at[1] = 2;
    if (W->dtype == LM_DT_Q6_K) at[0] = 208;
    for (size_t b = 0; b + bb <= bytes; b += bb)
        for (int f = 0; f < 2; f++)
            if (at[f] >= 0) {
                uint16_t v = lm_f32_to_f16(frand() * 0.01f);
                d[b + (size_t)at[f]] = (uint8_t)v, d[b + (size_t)at[f] + 1] = (uint8_t)(v >> 8);
            }
}

/* The read bandwidth: threads each sum their share of a 256 MB buffer. */
typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} read_job;
static void *read_share(void *arg) {
    read_job *j = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= j->n; i += 4) s0 += j->p[i], s1 += j->p[i + 1], s2 += j->p[i + 2], s3 += j->p[i + 3];
    j->sum = s0 + s1 + s2 + s3;
    return NULL;
}
static double read_gbps(int threads) {
    const size_t bytes = (size_t)256 << 20, words = bytes / 8;
    uint64_t *buf = malloc(bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < words; i++) buf[i] = i;
    double best = 0;
    for (int pass = 0; pass < 3; pass++) {
        pthread_t th[64];
        read_job jobs[64];
        const int nt = threads < 1 ? 1 : threads > 64 ? 64 : threads;
        double t0 = lm_now();
        for (int k = 0; k < nt; k++) {
            jobs[k] = (read_job){.p = buf + words / (size_t)nt * (size_t)k, .n = words / (size_t)nt};
            pthread_create(&th[k], NULL, read_share, &jobs[k]);
        }
        uint64_t sum = 0;
        for (int k = 0; k < nt; k++) pthread_join(th[k], NULL), sum += jobs[k].sum;
        double gbps = (double)bytes / (lm_now() - t0) / 1e9;
        if (sum == 1) gbps = 0; /* keeps the sum live */
        best = gbps > best ? gbps : best;
    }
    free(buf);
    return best;
}

int main(int argc, char **argv) {
    int rows = argc > 1 ? atoi(argv[1]) : 768, cols = argc > 2 ? atoi(argv[2]) : 2048;
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    const char *toks = argc > 4 ? argv[4] : "1,8,64";
    const lm_dtype types[] = {LM_DT_U32, LM_DT_Q4_K, LM_DT_Q5_K, LM_DT_Q6_K, LM_DT_Q4_0, LM_DT_Q8_0, LM_DT_IQ4_XS};
    char err[LM_ERR_LEN];
    lm_backend *be;
    if (lm_backend_cpu_create(&be, threads, err) != 0) return fprintf(stderr, "%s\n", err), 1;
    printf("kernels %s, %d x %d, %d threads\n", lm_backend_cpu_kernels(be), rows, cols, threads);
    float *x = malloc(sizeof(float) * 64 * (size_t)cols), *y = malloc(sizeof(float) * 64 * (size_t)rows);
    for (size_t i = 0; i < 64 * (size_t)cols; i++) x[i] = frand();
    enum { NT = sizeof types / sizeof types[0], MAXC = 512, MAXN = 8 };
    int ns[MAXN], nn = 0;
    for (const char *p = toks; *p && nn < MAXN;) {
        int n = atoi(p);
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
        if (n >= 1 && n <= 64) ns[nn++] = n;
    }
    /* Every type's copies (128 MB each, past any last-level cache), allocated once. */
    static lm_mat W[NT][MAXC];
    int copies[NT];
    size_t wbytes[NT];
    int on[NT];
    for (int ti = 0; ti < NT; ti++) {
        const char *list = getenv("TYPES"), *name = type_name(types[ti]);
        on[ti] = 1;
        if (list) { /* whole names between commas */
            const char *at = strstr(list, name);
            while (at && ((at != list && at[-1] != ',') || (at[strlen(name)] && at[strlen(name)] != ',')))
                at = strstr(at + 1, name);
            on[ti] = at != NULL;
        }
    }
    for (int ti = 0; ti < NT; ti++) {
        copies[ti] = 0, wbytes[ti] = 1;
        if (!on[ti]) continue;
        lm_mat W0 = {.dtype = types[ti], .rows = rows, .cols = cols};
        if (types[ti] == LM_DT_U32) W0.bits = 4, W0.group_size = 32, W0.qdtype = LM_DT_F16;
        wbytes[ti] = lm_mat_bytes(&W0);
        copies[ti] = (int)((128u << 20) / wbytes[ti]) + 1;
        copies[ti] = copies[ti] > MAXC ? MAXC : copies[ti] < 2 ? 2 : copies[ti];
        for (int c = 0; c < copies[ti]; c++) {
            W[ti][c] = W0;
            const size_t dbytes = types[ti] == LM_DT_U32 ? (size_t)rows * (size_t)cols / 2 : wbytes[ti];
            uint8_t *d = malloc(dbytes);
            if (types[ti] == LM_DT_U32) {
                size_t ng = (size_t)rows * (size_t)(cols / 32);
                W[ti][c].scales = malloc(ng * 2), W[ti][c].biases = malloc(ng * 2);
            }
            W[ti][c].data = d;
            fill(&W[ti][c], d, dbytes);
        }
    }
    /* Rounds of every (type, tokens, bits) in turn, best of the rounds: load from
     * other processes changes between rounds, not between the types of one. */
    const int rounds = getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 3;
    static double best[NT][MAXN][2];
    double bw = 0;
    for (int round = 0; round < rounds; round++) {
        const double b = read_gbps(threads);
        bw = b > bw ? b : bw;
        for (int ti = 0; ti < NT; ti++)
            for (int k = 0; k < nn && on[ti]; k++) {
                const int n = ns[k];
                for (int bits = 8; bits <= (getenv("ACT8_ONLY") ? 8 : 32); bits += 24) {
                    if (lm_backend_cpu_set_act_bits(be, bits, cols, err) != 0) return fprintf(stderr, "%s\n", err), 1;
                    /* decode streams the copies; batches reuse copy 0 (in cache) */
                    const int stream = n == 1 && !getenv("CACHED");
                    int iters = stream ? copies[ti] : (int)(1e9 / ((double)rows * cols * n)) + 3;
                    if (n > 1 && bits == 32) iters = iters / 4 + 2;
                    for (int w = 0; w < 3; w++) be->ops->matmul(be, y, &W[ti][0], x, n);
                    double t0 = clock_s();
                    for (int i = 0; i < iters; i++) be->ops->matmul(be, y, &W[ti][stream ? i % copies[ti] : 0], x, n);
                    const double gmacs = (double)rows * cols * n * iters / (clock_s() - t0) / 1e9;
                    double *bt = &best[ti][k][bits == 32];
                    *bt = gmacs > *bt ? gmacs : *bt;
                }
            }
    }
    printf("memory read bandwidth (%d threads, 256 MB, best of %d): %.2f GB/s\n", threads, rounds, bw);
    printf("best of %d rounds; ratio = GMAC/s / MLX4g32's at the same tokens and bits%s\n", rounds,
           getenv("CACHED") ? "" : "; 1 token streams the weights: 'of bound' = weight GB/s / read bandwidth");
    for (int ti = 0; ti < NT; ti++) {
        const char *name = type_name(types[ti]);
        for (int k = 0; k < nn && on[ti]; k++)
            for (int bits = 8; bits <= (getenv("ACT8_ONLY") ? 8 : 32); bits += 24) {
                const double g = best[ti][k][bits == 32], gbs = g * (double)wbytes[ti] / ((double)rows * cols * ns[k]);
                printf("%-8s n=%-3d act%-2d %7.2f GMAC/s %6.2f GB/s  ratio %.2f", name, ns[k], bits, g, gbs,
                       on[0] ? g / best[0][k][bits == 32] : 0.0);
                if (ns[k] == 1 && !getenv("CACHED")) printf("  of bound %.2f", gbs / bw);
                printf("\n");
            }
    }
    lm_backend_free(be);
    return 0;
}

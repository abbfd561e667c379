/* The CPU attention op alone at a long context, Qwen3-30B-A3B's shapes by default
 * (32 query heads on 4 kv heads of 128, f16 cache): one prefill chunk of CHUNK
 * queries at the end of a context of P positions (what each chunk of a long prompt
 * costs there), then one decode query at position P-1. Best of REPS, seconds per
 * call and keys per second per query head; a checksum of the outputs, to compare
 * two builds for identical results. With LAYERS > 0, also one decode query on each of
 * LAYERS copies of the cache in turn (seconds per copy): a cache under the last-level
 * cache's size stays there between calls above, while a model's layers take turns and
 * each layer's cache comes from memory.
 *
 * build: make && cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench_attention.c \
 *        build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/bench_attention
 *        (or make build/bench_attention)
 * run:   build/bench_attention [P=32768] [CHUNK=256] [THREADS=2] [REPS=3] [KERNELS=auto] [LAYERS=0]
 */
#include "kernels/backend.h"
#include "platform/platform.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NH = 32, NKV = 4, HD = 128 };

static uint64_t rng = 88172645463325252ull;
static float urand(void) { /* -1..1 */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}

static uint64_t checksum(const float *x, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        h = (h ^ u) * 1099511628211ull;
    }
    return h;
}

int main(int argc, char **argv) {
    int P = argc > 1 ? atoi(argv[1]) : 32768, C = argc > 2 ? atoi(argv[2]) : 256;
    int threads = argc > 3 ? atoi(argv[3]) : 2, reps = argc > 4 ? atoi(argv[4]) : 3;
    const char *kernels = argc > 5 && strcmp(argv[5], "auto") ? argv[5] : NULL;
    int layers = argc > 6 ? atoi(argv[6]) : 0;
    if (P < 1 || C < 1 || C > P || reps < 1 || layers < 0 || layers > 256) return fprintf(stderr, "bad arguments\n"), 2;
    char err[LM_ERR_LEN];
    lm_backend *be;
    if (lm_backend_cpu_create_with(&be, threads, kernels, err) != 0) return fprintf(stderr, "%s\n", err), 1;
    size_t kvn = (size_t)P * NKV * HD;
    float *src = malloc(sizeof(float) * (size_t)C * NKV * HD), *q = malloc(sizeof(float) * (size_t)C * NH * HD);
    float *out = malloc(sizeof(float) * (size_t)C * NH * HD);
    lm_buf kb, vb; /* as the engine allocates its cache (huge pages for large buffers) */
    if (!src || !q || !out || lm_backend_alloc(be, &kb, kvn * 2, "K", err) || lm_backend_alloc(be, &vb, kvn * 2, "V", err))
        return fprintf(stderr, "out of memory\n"), 1;
    lm_kv k = {LM_DT_F16, kb.ptr, NULL, P}, v = {LM_DT_F16, vb.ptr, NULL, P};
    for (int p0 = 0; p0 < P; p0 += C) { /* the cache filled in chunks, as a prompt does */
        int n = P - p0 < C ? P - p0 : C;
        for (size_t i = 0; i < (size_t)n * NKV * HD; i++) src[i] = urand() * 2;
        be->ops->kv_store(be, &k, p0, src, n, NKV, HD);
        for (size_t i = 0; i < (size_t)n * NKV * HD; i++) src[i] = urand();
        be->ops->kv_store(be, &v, p0, src, n, NKV, HD);
    }
    for (size_t i = 0; i < (size_t)C * NH * HD; i++) q[i] = urand();
    const float scale = 0.08838834764831845f; /* 1/sqrt(128) */
    double best_p = 1e30, best_d = 1e30;
    uint64_t hp = 0, hd = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = lm_now();
        be->ops->attention(be, out, q, &k, &v, C, P - C, NH, NKV, HD, scale, 0, NULL);
        double t1 = lm_now();
        hp = checksum(out, (size_t)C * NH * HD);
        double t1d = lm_now(); /* the decode call alone (the checksum above takes ~1 ms at 256 x 32 x 128) */
        be->ops->attention(be, out, q, &k, &v, 1, P - 1, NH, NKV, HD, scale, 0, NULL);
        double t2 = lm_now();
        hd = checksum(out, (size_t)NH * HD);
        if (t1 - t0 < best_p) best_p = t1 - t0;
        if (t2 - t1d < best_d) best_d = t2 - t1d;
    }
    double keys = (double)C * (P - C / 2.0) * NH; /* (query, head, key) triples of the chunk */
    printf("context %d chunk %d threads %d kernels %s: chunk %.4f s (%.1f M keys/s), decode %.5f s "
           "(%.1f M keys/s), checksums %016llx %016llx\n",
           P, C, threads, lm_backend_cpu_kernels(be), best_p, keys / best_p / 1e6, best_d,
           (double)P * NH / best_d / 1e6, (unsigned long long)hp, (unsigned long long)hd);
    if (layers > 0) { /* copies of the cache, as the engine allocates each layer's */
        lm_buf *bufs = calloc(2 * (size_t)layers, sizeof *bufs);
        if (!bufs) return fprintf(stderr, "out of memory\n"), 1;
        for (int l = 0; l < 2 * layers; l++) {
            if (lm_backend_alloc(be, &bufs[l], kvn * 2, "KV copy", err)) return fprintf(stderr, "out of memory\n"), 1;
            memcpy(bufs[l].ptr, l % 2 ? vb.ptr : kb.ptr, kvn * 2);
        }
        double best_l = 1e30;
        for (int r = 0; r < reps; r++) {
            double t0 = lm_now();
            for (int l = 0; l < layers; l++) {
                lm_kv kl = {LM_DT_F16, bufs[2 * l].ptr, NULL, P}, vl = {LM_DT_F16, bufs[2 * l + 1].ptr, NULL, P};
                be->ops->attention(be, out, q, &kl, &vl, 1, P - 1, NH, NKV, HD, scale, 0, NULL);
            }
            double t = (lm_now() - t0) / layers;
            if (t < best_l) best_l = t;
        }
        printf("decode over %d copies of the cache: %.5f s per copy (%.1f M keys/s)\n", layers, best_l,
               (double)P * NH / best_l / 1e6);
        for (int l = 0; l < 2 * layers; l++) lm_backend_release(be, &bufs[l]);
        free(bufs);
    }
    free(src), free(q), free(out), lm_backend_release(be, &kb), lm_backend_release(be, &vb);
    lm_backend_free(be);
    return 0;
}

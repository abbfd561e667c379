/* Decode throughput of batch steps (lazymoe_batch) with K = 1, 2, 4 sequences on one
 * model, through the library: aggregate tokens/s and expert bytes read per token, with
 * the ratios to K = 1 measured in the same run (a K = 1 pass runs first as warm-up and
 * again last to show drift). Each sequence starts from its own 16-token random prompt
 * and decodes greedily. With a memory budget below the model's size the experts are
 * read on demand into a bounded cache: a step then reads each routed expert once for
 * all the sequences routed to it.
 * Build: make build/liblazymoe.a && cc -O2 -Iinclude -o build/bench_batch bench/bench_batch.c \
 *          build/liblazymoe.a -ljansson -lpcre2-8 -lmicrohttpd -lpthread -lm
 * usage: build/bench_batch MODEL [STEPS=32] [MEMORY_BYTES=0 (the plan decides)] [THREADS=0] */
#include "lazymoe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [STEPS=32] [MEMORY_BYTES=0] [THREADS=0]\n", argv[0]);
        return 2;
    }
    int steps = argc > 2 ? atoi(argv[2]) : 32;
    char err[512];
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.memory_budget = argc > 3 ? strtoull(argv[3], NULL, 10) : 0;
    o.n_threads = argc > 4 ? atoi(argv[4]) : 0;
    o.no_warm_start = 1;
    o.parallel = 4;
    o.sessions = 4;
    lazymoe_model *m;
    if (lazymoe_model_open(&m, argv[1], &o, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    lazymoe_expert_stats st;
    lazymoe_model_get_expert_stats(m, -1, &st);
    int V = info.vocab_size;
    printf("model %s: %d layers, %d experts (top %d), %s, expert capacity %d of %d per layer\n", argv[1], info.n_layers,
           info.n_experts, info.top_k, st.resident ? "resident" : "lazy experts", st.capacity, info.n_experts);
    lazymoe_batch *b;
    lazymoe_session *s[4];
    float *lg = malloc(sizeof(float) * 4 * (size_t)V);
    int32_t ids[4];
    if (!lg || lazymoe_batch_create(&b, m, 4, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", lg ? err : "out of memory");
        return 1;
    }
    srand(1);
    for (int i = 0; i < 4; i++) {
        int32_t p[16];
        for (int k = 0; k < 16; k++) p[k] = rand() % V;
        if (lazymoe_session_create(&s[i], m, err, sizeof err) != 0 ||
            lazymoe_session_eval(s[i], p, 16, lg + (size_t)i * (size_t)V, 0, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        ids[i] = argmax(lg + (size_t)i * (size_t)V, V);
    }
    const int Ks[] = {1, 1, 2, 4, 1};
    double base = 0;
    printf("%-9s %7s %8s %9s %8s %14s\n", "sequences", "tokens", "seconds", "tok/s", "vs K=1", "MB read/token");
    for (int r = 0; r < 5; r++) {
        int K = Ks[r];
        lazymoe_expert_stats a, z;
        lazymoe_model_get_expert_stats(m, -1, &a);
        double t0 = now();
        for (int g = 0; g < steps; g++) {
            if (lazymoe_batch_eval(b, s, ids, K, lg, err, sizeof err) != 0) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            for (int i = 0; i < K; i++) ids[i] = argmax(lg + (size_t)i * (size_t)V, V);
        }
        double sec = now() - t0;
        lazymoe_model_get_expert_stats(m, -1, &z);
        double tps = steps * K / sec, mb = (double)(z.bytes_read - a.bytes_read) / 1e6 / (steps * K);
        if (r == 0) {
            printf("%-9s %7d %8.2f %9.2f %8s %14.2f\n", "1 warm-up", steps * K, sec, tps, "", mb);
            continue;
        }
        if (r == 1) base = tps;
        printf("%-9d %7d %8.2f %9.2f %7.2fx %14.2f\n", K, steps * K, sec, tps, tps / base, mb);
    }
    for (int i = 0; i < 4; i++) lazymoe_session_free(s[i]);
    lazymoe_batch_free(b);
    free(lg);
    lazymoe_model_close(m);
    return 0;
}

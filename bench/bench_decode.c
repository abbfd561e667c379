/* Decode steps alone, through the library: the model is opened resident (default
 * flags otherwise: int8 activations for quantized weights), a 16-token random prompt is
 * evaluated, then ROUNDS rounds of STEPS greedy decode steps each start again from the
 * same prompt (lazymoe_session_truncate), so every round decodes the same tokens.
 * Prints each round's tok/s and CPU time per token (all threads, spinning included:
 * on a shared machine it moves less than the wall clock, as time other processes
 * take is not counted) and the best of each; the ids of the first round are printed as a
 * checksum (two builds that must agree print the same line). SIGNAL=1 prints "ready"
 * on stderr and waits for SIGUSR1 before the rounds (to attach a profiler after load).
 * Build: make build/liblazymoe.a && cc -O2 -Iinclude -o build/bench_decode bench/bench_decode.c \
 *          build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm
 * usage: build/bench_decode MODEL [STEPS=32] [ROUNDS=3] [THREADS=2] */
#include "lazymoe.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

static volatile sig_atomic_t go;
static void on_usr1(int sig) {
    (void)sig;
    go = 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [STEPS=32] [ROUNDS=3] [THREADS=2]\n", argv[0]);
        return 2;
    }
    int steps = argc > 2 ? atoi(argv[2]) : 32, rounds = argc > 3 ? atoi(argv[3]) : 3;
    char err[512];
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = argc > 4 ? atoi(argv[4]) : 2;
    o.no_warm_start = 1;
    o.memory_budget = 0;
    lazymoe_model *m;
    if (lazymoe_model_open(&m, argv[1], &o, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    int V = info.vocab_size;
    lazymoe_session *s;
    float *lg = malloc(sizeof(float) * (size_t)V);
    int32_t p[16], *out = malloc(sizeof(int32_t) * (size_t)(steps > 0 ? steps : 1));
    srand(1);
    for (int k = 0; k < 16; k++) p[k] = rand() % V;
    if (!lg || !out || lazymoe_session_create(&s, m, err, sizeof err) != 0 ||
        lazymoe_session_eval(s, p, 16, lg, 0, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", lg && out ? err : "out of memory");
        return 1;
    }
    int first = argmax(lg, V);
    if (getenv("SIGNAL")) {
        signal(SIGUSR1, on_usr1);
        fprintf(stderr, "ready\n");
        while (!go) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    double best = 0, best_cpu = 1e30;
    for (int r = 0; r < rounds; r++) {
        int32_t id = first;
        double t0 = now(), c0 = cpu_now();
        for (int g = 0; g < steps; g++) {
            if (lazymoe_session_eval(s, &id, 1, lg, 0, err, sizeof err) != 0) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            id = argmax(lg, V);
            if (r == 0) out[g] = id;
        }
        double tps = steps / (now() - t0), cms = (cpu_now() - c0) * 1e3 / steps;
        if (tps > best) best = tps;
        if (cms < best_cpu) best_cpu = cms;
        printf("round %d: %.2f tok/s, %.2f ms of CPU per token (all threads)\n", r + 1, tps, cms);
        if (lazymoe_session_truncate(s, 16, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    printf("best %.2f tok/s, %.2f ms of CPU per token (act bits %d)\nids", best, best_cpu, info.act_bits);
    for (int g = 0; g < steps && g < 16; g++) printf(" %d", out[g]);
    printf("\n");
    lazymoe_session_free(s);
    free(lg);
    free(out);
    lazymoe_model_close(m);
    return 0;
}

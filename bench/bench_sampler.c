/* Cost of picking one token from a 151,936-token vocabulary (Qwen3's) with the sampler
 * settings agents send, per call: on a GPU that decodes a token in ~4 ms the host's
 * sampling is part of every token's time (bench/RESULTS.md, issue 18).
 *
 *   make && cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc bench/bench_sampler.c build/liblazymoe.a \
 *        -ljansson -lpcre2-8 -lm -o build/bench_sampler && build/bench_sampler
 *
 * The logits are a fixed pseudo-random draw shaped like a model's (a few tokens well
 * above a broad mass); each setting samples 200 times from them and prints the mean
 * time and a checksum of the ids (equal across builds that sample alike). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_util.h"

#include "api/sampler.h"

#define VOCAB 151936

int main(void) {
    float *logits = malloc(sizeof(float) * VOCAB);
    if (!logits) return 1;
    uint64_t st = 42;
    for (int i = 0; i < VOCAB; i++) { /* a broad mass around -2, a few tokens up to +14 */
        double u = lm_rng_uniform(&st), v = lm_rng_uniform(&st);
        logits[i] = (float)(-2.0 + 2.5 * sqrt(-2.0 * log(u + 1e-12)) * cos(6.283185307 * v));
        if (i % 9973 == 0) logits[i] = (float)(10.0 + 4.0 * v);
    }
    struct {
        const char *name;
        float temperature;
        int top_k;
        float top_p, min_p;
    } cases[] = {
        {"greedy", 0, 0, 1, 0},
        {"temperature 0.7", 0.7f, 0, 1, 0},
        {"temperature 0.7, top_k 20, top_p 0.8 (Qwen3's defaults)", 0.7f, 20, 0.8f, 0},
        {"temperature 1, top_p 0.95", 1.0f, 0, 0.95f, 0},
        {"temperature 0.6, top_k 20, top_p 0.95, min_p 0", 0.6f, 20, 0.95f, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        lazymoe_sampling p;
        lazymoe_sampling_init(&p, NULL);
        p.temperature = cases[c].temperature;
        p.top_k = cases[c].top_k;
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        p.seed = 7;
        lm_sampler s;
        char err[256];
        if (lm_sampler_init(&s, VOCAB, &p, err) != 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        const int reps = 200;
        uint64_t sum = 0;
        double t0 = now();
        for (int r = 0; r < reps; r++) sum = sum * 31 + (uint64_t)lm_sampler_sample(&s, logits);
        double us = (now() - t0) / reps * 1e6;
        printf("%-55s %8.1f us a token  (ids checksum %016llx)\n", cases[c].name, us, (unsigned long long)sum);
        lm_sampler_free(&s);
    }
    free(logits);
    return 0;
}

/* Resident decode against the memory-bandwidth bound, and prefill against decode,
 * measured in one run.
 *
 *  1. memcpy bandwidth of this machine now: 1 GiB copied by 1 thread and by
 *     `threads` threads in parallel slices, best of 5 each, measured before and
 *     again after the model runs (a shared machine's quiet moments come and go);
 *     the highest is the bound (bytes copied per second).
 *  2. The model opened with every expert resident; a random prompt of P tokens is
 *     prefilled (prefill tok/s), then G tokens are decoded greedily (decode tok/s).
 *     Best of R repetitions, each in a fresh session.
 *  3. Bytes of weights one decode token touches, counted from the loaded matrices:
 *     every layer's attention (or linear attention), router and norms, top_k experts
 *     per MoE layer plus any shared expert (or the dense MLP), the LM head and one
 *     embedding row. The KV cache read per
 *     token is printed beside it (not counted: it is not weights).
 *  bound tok/s = memcpy bandwidth / weight bytes per token; the ratio printed is
 *  decode tok/s / bound tok/s.
 *
 * build: make && cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench_kernels.c \
 *        build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/bench_kernels
 * run:   build/bench_kernels MODEL_DIR [PROMPT=512] [GEN=32] [REPS=3] [THREADS=0 (all cores)] [ACT_BITS=32]
 * ACT_BITS 8 runs the int8-activation matmuls (lazymoe --act-bits 8).
 * LAZYMOE_KERNELS=scalar|avx2|avx512|neon picks the matmul kernels (default: best).
 */
#include "engine/engine.h"
#include "platform/platform.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *dst;
    const char *src;
    size_t n;
} copy_job;

static void *copy_slice(void *arg) {
    copy_job *j = arg;
    memcpy(j->dst, j->src, j->n);
    return NULL;
}

/* Bytes copied per second by `threads` threads each copying its slice of n bytes. */
static double memcpy_bandwidth(char *dst, const char *src, size_t n, int threads) {
    double best = 0;
    copy_job jobs[256];
    pthread_t tid[256];
    if (threads > 256) threads = 256;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = lm_now();
        size_t per = n / (size_t)threads / 64 * 64;
        for (int i = 0; i < threads; i++) {
            jobs[i].dst = dst + (size_t)i * per;
            jobs[i].src = src + (size_t)i * per;
            jobs[i].n = i == threads - 1 ? n - (size_t)i * per : per;
            if (i > 0) pthread_create(&tid[i], NULL, copy_slice, &jobs[i]);
        }
        copy_slice(&jobs[0]);
        for (int i = 1; i < threads; i++) pthread_join(tid[i], NULL);
        double bw = (double)n / (lm_now() - t0);
        if (bw > best) best = bw;
    }
    return best;
}

static uint64_t expert_bytes(const lm_expert *e) {
    return lm_mat_bytes(&e->gate) + lm_mat_bytes(&e->up) + lm_mat_bytes(&e->down);
}

/* Weight bytes one decode token reads (see the header). */
static uint64_t decode_weight_bytes(const lazymoe_model *m) {
    const lm_weights *w = &m->w;
    const lm_config *c = &w->cfg;
    uint64_t H = (uint64_t)c->hidden_size, b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *ly = &w->layers[l];
        if (ly->is_linear) /* qwen3_next Gated DeltaNet (its small conv and gate vectors not counted) */
            b += lm_mat_bytes(&ly->lin.in_qkvz) + lm_mat_bytes(&ly->lin.in_ba) + lm_mat_bytes(&ly->lin.out);
        else
            b += lm_mat_bytes(&ly->q) + lm_mat_bytes(&ly->k) + lm_mat_bytes(&ly->v) + lm_mat_bytes(&ly->o);
        /* Shared expert (qwen3_next; 0 bytes when absent). */
        b += lm_mat_bytes(&ly->shared_gate) + lm_mat_bytes(&ly->shared_up) + lm_mat_bytes(&ly->shared_down) +
             lm_mat_bytes(&ly->shared_expert_gate);
        b += 2 * H * 4; /* attention and MLP norms (f32) */
        if (ly->q_norm) b += 2 * (uint64_t)c->head_dim * 4;
        if (ly->is_moe) b += lm_mat_bytes(&ly->router) + (uint64_t)c->top_k * expert_bytes(&ly->experts[0]);
        else b += lm_mat_bytes(&ly->mlp_gate) + lm_mat_bytes(&ly->mlp_up) + lm_mat_bytes(&ly->mlp_down);
    }
    b += lm_mat_bytes(&w->lm_head) + H * 4;
    b += lm_mat_bytes(&w->embed) / (uint64_t)c->vocab_size; /* one row; tied: inside lm_head already */
    return b;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [PROMPT=512] [GEN=32] [REPS=3] [THREADS=0] [ACT_BITS=32]\n", argv[0]);
        return 2;
    }
    int P = argc > 2 ? atoi(argv[2]) : 512, G = argc > 3 ? atoi(argv[3]) : 32;
    int R = argc > 4 ? atoi(argv[4]) : 3, threads = argc > 5 ? atoi(argv[5]) : 0;
    int act_bits = argc > 6 ? atoi(argv[6]) : 32;
    if (P < 1 || G < 1 || R < 1) return fprintf(stderr, "PROMPT, GEN and REPS must be positive\n"), 2;
    int cores = threads > 0 ? threads : lm_cpu_count();

    size_t n = (size_t)1 << 30;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) return fprintf(stderr, "cannot allocate 2 GiB for the memcpy test\n"), 1;
    memset(a, 1, n);
    memset(b, 2, n);
    double bw1 = memcpy_bandwidth(b, a, n, 1), bwn = memcpy_bandwidth(b, a, n, cores);

    lazymoe_options o;
    lazymoe_options_init(&o);
    o.expert_capacity = -1;
    o.n_threads = threads;
    o.no_warm_start = 1;
    o.max_context = P + G + 8;
    o.act_bits = act_bits;
    lazymoe_model *m;
    char err[512];
    if (lazymoe_model_open(&m, argv[1], &o, err, sizeof err) != 0) return fprintf(stderr, "%s\n", err), 1;
    const lm_config *c = &m->w.cfg;
    uint64_t wbytes = decode_weight_bytes(m);
    int V = c->vocab_size;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)P);
    float *logits = malloc(sizeof(float) * (size_t)V);
    unsigned seed = 1234;
    for (int i = 0; i < P; i++) {
        seed = seed * 1103515245u + 12345u;
        ids[i] = (int32_t)((seed >> 8) % (unsigned)V);
    }
    double best_pre = 0, best_dec = 0;
    for (int rep = 0; rep < R; rep++) {
        lazymoe_session *s;
        if (lazymoe_session_create(&s, m, err, sizeof err) != 0) return fprintf(stderr, "%s\n", err), 1;
        double t0 = lm_now();
        if (lazymoe_session_eval(s, ids, P, logits, 0, err, sizeof err) != 0) return fprintf(stderr, "%s\n", err), 1;
        double t1 = lm_now();
        for (int g = 0; g < G; g++) {
            int32_t next = 0;
            for (int i = 1; i < V; i++)
                if (logits[i] > logits[next]) next = i;
            if (lazymoe_session_eval(s, &next, 1, logits, 0, err, sizeof err) != 0)
                return fprintf(stderr, "%s\n", err), 1;
        }
        double t2 = lm_now();
        double pre = P / (t1 - t0), dec = G / (t2 - t1);
        fprintf(stderr, "rep %d: prefill %.2f tok/s, decode %.2f tok/s\n", rep + 1, pre, dec);
        if (pre > best_pre) best_pre = pre;
        if (dec > best_dec) best_dec = dec;
        lazymoe_session_free(s);
    }
    double bw1b = memcpy_bandwidth(b, a, n, 1), bwnb = memcpy_bandwidth(b, a, n, cores);
    free(a);
    free(b);
    if (bw1b > bw1) bw1 = bw1b;
    if (bwnb > bwn) bwn = bwnb;
    double bw = bw1 > bwn ? bw1 : bwn;
    /* KV cache bytes the last decode token read (f16 by default). */
    uint64_t kv = (uint64_t)c->n_layers * 2u * (uint64_t)(P + G) * (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim *
                  lm_dtype_size(m->kv_dtype);
    double bound = bw / (double)wbytes, ratio = best_dec / bound;
    printf("kernels          %s, %d threads, %s activations\n", lm_backend_cpu_kernels(m->be), cores,
           act_bits == 8 ? "int8" : "f32");
    printf("memcpy           %.2f GB/s (1 thread %.2f, %d threads %.2f)\n", bw / 1e9, bw1 / 1e9, cores, bwn / 1e9);
    printf("weights/token    %.1f MB (%d layers, top-%d of %d experts); KV read at the end %.1f MB\n",
           (double)wbytes / 1e6, c->n_layers, c->top_k, c->n_experts, (double)kv / 1e6);
    printf("bound            %.2f tok/s (memcpy bandwidth / weight bytes per token)\n", bound);
    printf("decode           %.2f tok/s = %.1f%% of the bound (%.2f GB/s of weights)\n", best_dec, 100 * ratio,
           best_dec * (double)wbytes / 1e9);
    printf("prefill          %.2f tok/s on %d tokens = %.2fx decode\n", best_pre, P, best_pre / best_dec);
    printf("{\"kernels\": \"%s\", \"threads\": %d, \"memcpy_bw\": %.0f, \"weight_bytes_per_token\": %llu, "
           "\"bound_tok_s\": %.3f, \"decode_tok_s\": %.3f, \"decode_vs_bound\": %.4f, \"prefill_tok_s\": %.3f, "
           "\"prompt_tokens\": %d, \"prefill_vs_decode\": %.3f, \"layers\": %d, \"act_bits\": %d}\n",
           lm_backend_cpu_kernels(m->be), cores, bw, (unsigned long long)wbytes, bound, best_dec, ratio, best_pre, P,
           best_pre / best_dec, c->n_layers, act_bits);
    free(ids);
    free(logits);
    lazymoe_model_close(m);
    return 0;
}

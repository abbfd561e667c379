/* Session memory: the memory plan counts exactly what a session allocates, and
 * decode allocates nothing once warmed up.
 *
 * planned == allocated: lm_session_plan_bytes (the sizes the allocators report for
 * a configuration, which the memory plan adds up) against what a session holds at
 * full context, counted independently: the backend's bytes_held (every
 * lm_backend_alloc) plus the scratch's host arrays and the token list.
 * No allocation in decode: an ASan malloc hook counts every malloc / calloc /
 * realloc / posix_memalign of the process (all threads) during decode steps. */
#include "harness.h"

#include "common/error.h"
#include "engine/engine.h"
#include "lazymoe.h"

#include <stdatomic.h>
#include <sanitizer/common_interface_defs.h>

#if defined(__has_include)
#if __has_include(<sanitizer/allocator_interface.h>)
#include <sanitizer/allocator_interface.h>
#define HAVE_ALLOCATOR_INTERFACE 1
#endif
#endif
#ifndef HAVE_ALLOCATOR_INTERFACE /* gcc ships no header for it; libasan has the function */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));
#endif

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/"

static atomic_int counting;
static atomic_long allocations;

static void on_malloc(const volatile void *p, size_t n) {
    (void)p, (void)n;
    if (!atomic_load(&counting)) return;
    atomic_fetch_add(&allocations, 1);
    if (getenv("TRACE_ALLOC")) __sanitizer_print_stack_trace(); /* TRACE_ALLOC=1: where each one comes from */
}
static void on_free(const volatile void *p) { (void)p; }

static lazymoe_model *open_model(const char *dir, int ctx, int kv_bits, int capacity, int act_bits, char *err) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    /* One reader thread: it has certainly started (and run) by the end of the warm-up,
     * whose steps miss, so its start-up allocations are not counted as decode's. */
    o.io_threads = 1;
    o.n_threads = 2;
    o.max_context = ctx;
    o.kv_bits = kv_bits;
    o.expert_capacity = capacity;
    o.act_bits = act_bits;
    o.no_warm_start = 1;
    lazymoe_model *m = NULL;
    if (lazymoe_model_open(&m, dir, &o, err, LM_ERR_LEN) != 0) return NULL;
    return m;
}

static void planned_equals_allocated(void) {
    const char *models[] = {"qwen3_moe_f32", "qwen3_next_f32", "olmoe_clip_bf16", "mixtral_window_f32"};
    const int kv_bits[] = {16, 8, 32};
    enum { CTX = 300 };
    int32_t ids[CTX];
    for (int i = 0; i < CTX; i++) ids[i] = (i * 7 + 3) % 50;
    for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++)
        for (size_t ki = 0; ki < sizeof kv_bits / sizeof kv_bits[0]; ki++) {
            char dir[512], err[LM_ERR_LEN];
            snprintf(dir, sizeof dir, GOLDEN "%s", models[mi]);
            lazymoe_model *m = open_model(dir, CTX, kv_bits[ki], -1, 0, err);
            CHECKF(m != NULL, "%s: %s", models[mi], err);
            if (!m) continue;
            CHECK_EQ_INT(m->be->bytes_held, 0);
            lazymoe_session *s;
            CHECKF(lazymoe_session_create(&s, m, err, sizeof err) == 0, "%s", err);
            /* 10 tokens (cache of 256 positions), then past 256: the cache grows to CTX */
            CHECKF(lazymoe_session_eval(s, ids, 10, NULL, 0, err, sizeof err) == 0, "%s", err);
            CHECKF(lazymoe_session_eval(s, ids + 10, 260, NULL, 0, err, sizeof err) == 0, "%s", err);
            CHECK_EQ_INT(lazymoe_session_capacity(s), CTX);
            uint64_t allocated = m->be->bytes_held + s->s.host_bytes + sizeof(int32_t) * (uint64_t)s->cap_ctx;
            uint64_t planned = lm_session_plan_bytes(m, CTX);
            CHECKF(planned == allocated, "%s kv%d: planned %llu bytes, allocated %llu", models[mi], kv_bits[ki],
                   (unsigned long long)planned, (unsigned long long)allocated);
            CHECK_EQ_INT(lm_session_bytes(s), allocated);
            lazymoe_session_free(s);
            CHECKF(m->be->bytes_held == 0, "%s: %llu bytes still held after the session", models[mi],
                   (unsigned long long)m->be->bytes_held);
            lazymoe_model_close(m);
        }
}

/* Warm-up, then `steps` one-token decode steps counted. */
static long decode_allocations(const char *dir, int capacity, int act_bits, int steps, char *err) {
    lazymoe_model *m = open_model(dir, 256, 0, capacity, act_bits, err);
    if (!m) return -1;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    float *logits = malloc(sizeof(float) * (size_t)info.vocab_size);
    lazymoe_session *s = NULL;
    long n = -1;
    int32_t prompt[8] = {3, 14, 15, 92, 6, 5, 35, 8};
    if (lazymoe_session_create(&s, m, err, LM_ERR_LEN) != 0 ||
        lazymoe_session_eval(s, prompt, 8, logits, 0, err, LM_ERR_LEN) != 0)
        goto done;
    for (int i = 0; i < 2 + steps; i++) {
        int32_t tok = (int32_t)((i * 13 + 1) % info.vocab_size);
        if (i == 2) atomic_store(&counting, 1); /* two steps of warm-up */
        int rc = lazymoe_session_eval(s, &tok, 1, logits, 0, err, LM_ERR_LEN);
        if (rc != 0) {
            atomic_store(&counting, 0);
            goto done;
        }
    }
    atomic_store(&counting, 0);
    n = atomic_load(&allocations);
done:
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    free(logits);
    return n;
}

static void decode_allocates_nothing(void) {
    CHECK(__sanitizer_install_malloc_and_free_hooks(on_malloc, on_free) != 0);
    struct {
        const char *dir;
        int capacity, act_bits;
        const char *kernels;
    } cases[] = {
        {GOLDEN "qwen3_moe_f32", -1, 0, NULL},     /* resident experts */
        {GOLDEN "qwen3_moe_f32", 2, 0, NULL},      /* lazy experts, cache of top_k slots (misses) */
        {GOLDEN "qwen3_next_f32", -1, 0, NULL},    /* linear attention, shared expert */
        {GOLDEN "olmoe_clip_bf16", -1, 0, "scalar"}, /* the portable kernels */
        {LAZYMOE_SOURCE_DIR "/models/demo-coder", -1, 8, NULL}, /* 4-bit weights, int8 activations */
        {LAZYMOE_SOURCE_DIR "/models/demo-coder", 6, 0, "scalar"}, /* 4-bit, lazy, portable kernels */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[LM_ERR_LEN] = "";
        atomic_store(&allocations, 0);
        if (cases[i].kernels) setenv("LAZYMOE_KERNELS", cases[i].kernels, 1);
        long n = decode_allocations(cases[i].dir, cases[i].capacity, cases[i].act_bits, 12, err);
        unsetenv("LAZYMOE_KERNELS");
        CHECKF(n == 0, "%s capacity %d act_bits %d kernels %s: %ld allocations in 12 decode steps%s%s", cases[i].dir,
               cases[i].capacity, cases[i].act_bits, cases[i].kernels ? cases[i].kernels : "auto", n,
               n < 0 ? ": " : "", n < 0 ? err : "");
    }
    /* The hook really counts: a malloc while counting is seen. */
    atomic_store(&allocations, 0);
    atomic_store(&counting, 1);
    void *volatile p = malloc(64);
    atomic_store(&counting, 0);
    free(p);
    CHECK_EQ_INT(atomic_load(&allocations), 1);
}

/* lazymoe_options.backend picks the backend; an unknown name is refused by name, and
 * "cuda" in a build without it (this one: make test builds no CUDA) says how to get it. */
static void backend_chosen_by_options(void) {
    const char *names[] = {NULL, "cpu", "tpu", "cuda"};
    for (int i = 0; i < 4; i++) {
        lazymoe_options o;
        lazymoe_options_init(&o);
        o.backend = names[i];
        o.n_threads = 1;
        lazymoe_model *m = NULL;
        char err[LM_ERR_LEN] = "";
        int rc = lazymoe_model_open(&m, GOLDEN "qwen3_moe_f32", &o, err, sizeof err);
        if (i < 2) {
            CHECKF(rc == 0, "%s: %s", names[i] ? names[i] : "default", err);
            if (m) CHECK(!strcmp(m->be->ops->name, "cpu"));
        } else {
            CHECK(rc != 0 && m == NULL);
            CHECK_STR_CONTAINS(err, i == 2 ? "unknown backend 'tpu'" : "rebuild with make CUDA=1");
        }
        lazymoe_model_close(m);
    }
}

int main(void) {
    TEST_CASE("memory_backend_chosen_by_options", backend_chosen_by_options);
    TEST_CASE("memory_planned_equals_allocated", planned_equals_allocated);
    TEST_CASE("memory_decode_allocates_nothing", decode_allocates_nothing);
    TEST_EXIT();
}

/* The expert cache in device memory (experts/device_cache.h), checked through the
 * engine on one backend: tests/test_device_cache.c runs it on the CPU (where
 * options.gpu_memory keeps the tier as a second pool in RAM: the same code path,
 * uploads being copies), tests/cuda/test_cuda.c on the GPU.
 *
 * What it proves: a model's logits and greedy ids are bit for bit the same at every
 * device capacity (1 slot, top_k, all but one, all) as with every expert in device
 * memory, over resident host experts and over a host expert cache of top_k slots
 * (three tiers: device, host RAM, disk); experts really are uploaded again when the
 * capacity is short; the device memory held never goes above the budget where the
 * backend reports it; a budget that cannot hold the resident part and one expert
 * per layer is refused, naming the size it needs. The includer defines
 * tier_backend (a backend name) before including this file. */
#ifndef LAZYMOE_TEST_DEVICE_TIER_H
#define LAZYMOE_TEST_DEVICE_TIER_H

#include "harness.h"

#include "common/error.h"
#include "lazymoe.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float *logits; /* [n][V] */
    int32_t gen[12];
    lazymoe_expert_stats st;
    size_t V;
} tier_run;

static const int32_t TIER_IDS[] = {5, 17, 2, 99, 41, 7, 63, 11, 250, 3, 77, 140, 9, 31, 200, 18};
#define TIER_NIDS 16
#define TIER_CTX 64

/* The prompt's logits, then 12 greedy tokens; host_capacity -1 = resident host
 * experts, N = a host cache of N slots; gpu_memory 0 = the backend's default. */
static int tier_cpu_experts; /* options.cpu_experts of the runs */
static int tier_warm;        /* 1: the runs use and keep the popularity history (warm start) */
static int tier_pin;         /* options.pin_experts of the runs */
/* Called on the model of a run before it closes (NULL = none). */
static void (*tier_inspect)(const lazymoe_model *m);
static int tier_act_bits = 32; /* options.act_bits of the runs */
/* With int8 activations, experts computed on the CPU against the GPU's: the same int8
 * values for the same inputs, but the CPU's f32 sums (another order) and SwiGLU (libm's
 * expf) differ from the GPU's in last bits, and an input that then rounds to the next
 * int8 step moves by max|x| / 127: the int8 path's own bound (tests/test_golden.c
 * ACT8_TOL; 3.8% measured on demo-coder, H100), greedy ids still equal. */
#define TIER_ACT8_TOL 0.08

static int tier_run_model(const char *dir, int host_capacity, uint64_t gpu_memory, tier_run *r, char *why) {
    memset(r, 0, sizeof *r);
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.no_warm_start = !tier_warm;
    o.pin_experts = tier_pin;
    o.n_threads = 2;
    o.act_bits = tier_act_bits;
    o.kv_bits = 32;
    o.max_context = TIER_CTX;
    o.expert_capacity = host_capacity;
    o.backend = tier_backend;
    o.gpu_memory = gpu_memory;
    o.cpu_experts = tier_cpu_experts;
    lazymoe_model *m;
    if (lazymoe_model_open(&m, dir, &o, why, LM_ERR_LEN) != 0) return -1;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    r->V = (size_t)info.vocab_size;
    r->logits = malloc(sizeof(float) * TIER_NIDS * r->V);
    float *lg = malloc(sizeof(float) * r->V);
    lazymoe_session *s;
    int rc = lazymoe_session_create(&s, m, why, LM_ERR_LEN);
    if (rc == 0) rc = lazymoe_session_eval(s, TIER_IDS, TIER_NIDS, r->logits, 1, why, LM_ERR_LEN);
    if (rc == 0) memcpy(lg, r->logits + (size_t)(TIER_NIDS - 1) * r->V, sizeof(float) * r->V);
    for (int g = 0; rc == 0 && g < 12; g++) {
        int best = 0;
        for (size_t i = 1; i < r->V; i++)
            if (lg[i] > lg[best]) best = (int)i;
        r->gen[g] = best;
        rc = lazymoe_session_eval(s, &r->gen[g], 1, lg, 0, why, LM_ERR_LEN);
    }
    lazymoe_model_get_expert_stats(m, -1, &r->st);
    if (rc == 0 && tier_inspect) tier_inspect(m);
    free(lg);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return rc;
}

/* A run with experts computed on the CPU against the all-in-device-memory run: on
 * the CPU backend the same kernels, so bit-identical; on a GPU the CPU's sums, within
 * the CPU-vs-GPU tolerance; greedy ids the same. Returns the gap in max|logit|. */
static double tier_cpu_close(const char *name, int cap, const tier_run *all, const tier_run *r) {
    double md = 0, mr = 0;
    for (size_t k = 0; k < TIER_NIDS * all->V; k++) {
        double d = fabs((double)r->logits[k] - (double)all->logits[k]);
        if (d > md) md = d;
        if (fabs((double)all->logits[k]) > mr) mr = fabs((double)all->logits[k]);
    }
    double rel = md / (mr > 0 ? mr : 1);
    if (!strcmp(tier_backend, "cpu"))
        CHECKF(md == 0, "%s: device capacity %d, experts on the CPU: logits differ (%.3g)", name, cap, rel);
    else /* int8 activations: a last-bit difference upstream may move a value by one int8 step */
        CHECKF(rel <= (tier_act_bits == 8 ? TIER_ACT8_TOL : 1e-3),
               "%s: device capacity %d, experts on the CPU: %.3g of max|logit|", name, cap, rel);
    CHECKF(!memcmp(r->gen, all->gen, sizeof r->gen), "%s: device capacity %d, experts on the CPU: greedy ids differ",
           name, cap);
    return rel;
}

/* cpu_experts auto (experts/miss_split.h): each step splits its misses between the
 * upload and the CPU. Costs given through LAZYMOE_MISS_COSTS make the split known:
 * a free upload takes every miss, a free CPU all of them (the 16-token prompt's
 * rows fit its arrays), and an upload of 100 us against 150 us + 10 us a row on the
 * CPU gives the CPU one of two one-row misses (150 < 200) but not a lone one (150 >
 * 100): both sides at one slot per layer. Then measured costs (any split), a host
 * expert cache (every miss uploaded, told in the log) and malformed costs (an error
 * naming the variable). */
static void tier_auto_split(const char *dir, const char *name, const tier_run *all, uint64_t budget_topk,
                            uint64_t budget_one, int top_k) {
    static const struct {
        const char *costs; /* NULL: measured at load */
        int slots_one;     /* the budget of one slot per layer, else top_k slots */
        int cpu;           /* 0: none on the CPU, 1: all, 2: some and some uploaded, -1: either */
    } cases[] = {
        {"0,0,1,1", 0, 0}, {"1000,0,1,0", 0, 1}, {"100,0,150,10", 1, 2}, {NULL, 0, -1}, {NULL, 1, -1},
    };
    char why[LM_ERR_LEN];
    tier_cpu_experts = LAZYMOE_CPU_EXPERTS_AUTO;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].costs) setenv("LAZYMOE_MISS_COSTS", cases[i].costs, 1);
        else unsetenv("LAZYMOE_MISS_COSTS");
        int cap = cases[i].slots_one ? 1 : top_k;
        tier_run r;
        if (tier_run_model(dir, -1, cases[i].slots_one ? budget_one : budget_topk, &r, why) != 0) {
            CHECKF(0, "%s, auto split, costs %s: %s", name, cases[i].costs ? cases[i].costs : "measured", why);
            free(r.logits);
            continue;
        }
        double rel = tier_cpu_close(name, cap, all, &r);
        unsigned long long on_cpu = r.st.cpu_computed_experts, up = r.st.gpu_uploads;
        if (cases[i].cpu == 0) CHECKF(on_cpu == 0 && up > 0, "%s: a free upload: %llu on the CPU", name, on_cpu);
        if (cases[i].cpu == 1) CHECKF(on_cpu > 0 && up == 0, "%s: a free CPU: %llu uploads", name, up);
        if (cases[i].cpu == 2)
            CHECKF(on_cpu > 0 && up > 0, "%s: a split: %llu on the CPU, %llu uploads", name, on_cpu, up);
        printf("# %s on %s, device capacity %d, --cpu-experts auto, costs %s: %llu computed on the CPU, %llu "
               "uploads, logits within %.3g of max|logit|\n",
               name, tier_backend, cap, cases[i].costs ? cases[i].costs : "measured", on_cpu, up, rel);
        free(r.logits);
    }
    unsetenv("LAZYMOE_MISS_COSTS");
    /* a host cache of top_k slots: the CPU has no resident experts, so every miss is
     * uploaded -- bit-identical then on every backend */
    tier_run r;
    if (tier_run_model(dir, top_k, budget_one, &r, why) != 0) {
        CHECKF(0, "%s, auto split over a host cache: %s", name, why);
    } else {
        CHECKF(r.st.cpu_computed_experts == 0, "%s: auto over a host cache computed %llu on the CPU", name,
               (unsigned long long)r.st.cpu_computed_experts);
        CHECKF(!memcmp(r.logits, all->logits, sizeof(float) * TIER_NIDS * all->V) && !memcmp(r.gen, all->gen, sizeof r.gen),
               "%s: auto over a host cache differs from all in device memory", name);
    }
    free(r.logits);
    setenv("LAZYMOE_MISS_COSTS", "1,2,x,4", 1);
    CHECK(tier_run_model(dir, -1, budget_one, &r, why) != 0);
    CHECK_STR_CONTAINS(why, "LAZYMOE_MISS_COSTS");
    free(r.logits);
    unsetenv("LAZYMOE_MISS_COSTS");
    tier_cpu_experts = 0;
}

/* The device tier learns its hot experts as the host cache does: a run over resident
 * host experts records the popularity history (in a fresh XDG_CACHE_HOME); the next
 * run uploads each layer's `cap` hottest into the tier at load (cap x the MoE layers,
 * counted as warm-start experts) and hits more; with pins the `pin` hottest of each
 * layer stay pinned (tier_inspect may check them); results bit-identical throughout;
 * too many pins for the slots is refused. budget: the plan's fixed part + cap slots. */
static void tier_warm_start(const char *dir, int n_experts, int moe_layers, int top_k, int cap,
                            void (*inspect_pins)(const lazymoe_model *m)) {
    char why[LM_ERR_LEN], xdg[] = "/tmp/lazymoe-tier-xdg-XXXXXX";
    const char *name = strrchr(dir, '/') + 1;
    const char *saved = getenv("XDG_CACHE_HOME");
    char *saved_xdg = saved ? strdup(saved) : NULL;
    if (!mkdtemp(xdg)) {
        CHECKF(0, "mkdtemp: %s", strerror(errno));
        free(saved_xdg);
        return;
    }
    setenv("XDG_CACHE_HOME", xdg, 1);
    tier_run all_in = {0}, cold = {0}, warm = {0}, pinned = {0}, too_many = {0};
    const tier_run *all = &all_in;
    int rc = tier_run_model(dir, -1, 4ull << 30, &all_in, why); /* every expert in device memory */
    CHECKF(rc == 0, "%s, all in device memory: %s", name, why);
    uint64_t budget = all_in.st.gpu_resident_bytes + all_in.st.gpu_expert_bytes / (uint64_t)n_experts * (uint64_t)cap;
    tier_warm = 1;
    rc = rc ? rc : tier_run_model(dir, -1, budget, &cold, why);
    CHECKF(rc == 0, "%s, cold run: %s", name, why);
    if (rc == 0) CHECKF(cold.st.warm_start_experts == 0, "%s: a cold start uploaded %d", name, cold.st.warm_start_experts);
    rc = rc ? rc : tier_run_model(dir, -1, budget, &warm, why);
    CHECKF(rc == 0, "%s, warm run: %s", name, why);
    int pin = cap - top_k;
    tier_pin = pin;
    tier_inspect = inspect_pins;
    if (rc == 0 && pin > 0) {
        rc = tier_run_model(dir, -1, budget, &pinned, why);
        CHECKF(rc == 0, "%s, pinned run: %s", name, why);
    }
    tier_inspect = NULL;
    tier_pin = cap - top_k + 1;
    if (rc == 0) {
        CHECK(tier_run_model(dir, -1, budget, &too_many, why) != 0);
        CHECK_STR_CONTAINS(why, "--pin");
    }
    free(too_many.logits);
    tier_pin = 0;
    tier_warm = 0;
    if (rc == 0) {
        CHECKF(warm.st.warm_start_experts == cap * moe_layers, "%s: warm start uploaded %d, not %d x %d", name,
               warm.st.warm_start_experts, cap, moe_layers);
        CHECKF(warm.st.gpu_hits > cold.st.gpu_hits, "%s: warm start hit %llu times, cold %llu", name,
               (unsigned long long)warm.st.gpu_hits, (unsigned long long)cold.st.gpu_hits);
        const tier_run *runs[3] = {&cold, &warm, &pinned};
        for (int i = 0; i < (pin > 0 ? 3 : 2); i++)
            CHECKF(!memcmp(runs[i]->logits, all->logits, sizeof(float) * TIER_NIDS * all->V) &&
                       !memcmp(runs[i]->gen, all->gen, sizeof all->gen),
                   "%s: run %d of the warm start differs from all in device memory", name, i);
        if (pin > 0)
            CHECKF(pinned.st.pinned_experts == pin * moe_layers, "%s: pinned %d, not %d x %d", name,
                   pinned.st.pinned_experts, pin, moe_layers);
        printf("# %s on %s, device capacity %d: cold %llu hits %llu uploads; warm start %d experts: %llu hits %llu "
               "uploads; %d pinned: %llu hits\n",
               name, tier_backend, cap, (unsigned long long)cold.st.gpu_hits, (unsigned long long)cold.st.gpu_uploads,
               warm.st.warm_start_experts, (unsigned long long)warm.st.gpu_hits,
               (unsigned long long)warm.st.gpu_uploads, pin > 0 ? pinned.st.pinned_experts : 0,
               pin > 0 ? (unsigned long long)pinned.st.gpu_hits : 0ull);
    }
    free(all_in.logits), free(cold.logits), free(warm.logits), free(pinned.logits);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", xdg);
    CHECK(system(cmd) == 0);
    if (saved_xdg) setenv("XDG_CACHE_HOME", saved_xdg, 1);
    else unsetenv("XDG_CACHE_HOME");
    free(saved_xdg);
}

/* Every device capacity gives the all-in-device-memory run's numbers. */
static void tier_same_at_capacities(const char *dir, int n_experts, int top_k) {
    char why[LM_ERR_LEN];
    const char *name = strrchr(dir, '/') + 1;
    /* all in device memory: a budget far above the model, to learn the plan's sizes */
    tier_run all;
    if (tier_run_model(dir, -1, 4ull << 30, &all, why) != 0) {
        CHECKF(0, "%s on %s, everything in device memory: %s", name, tier_backend, why);
        free(all.logits);
        return;
    }
    CHECKF(all.st.gpu_capacity == n_experts, "%s: device capacity %d with room for all %d", name,
           all.st.gpu_capacity, n_experts);
    CHECKF(all.st.gpu_uploads > 0 && all.st.gpu_uploads <= all.st.gpu_experts + 0ull,
           "%s: with room for all, each expert is uploaded once (%llu uploads, %d held)", name,
           (unsigned long long)all.st.gpu_uploads, all.st.gpu_experts);
    uint64_t fixed = all.st.gpu_resident_bytes, per_slot = all.st.gpu_expert_bytes / (uint64_t)n_experts;
    if (all.st.gpu_peak_bytes)
        CHECKF(all.st.gpu_peak_bytes <= all.st.gpu_budget, "%s: device peak %llu above the budget %llu", name,
               (unsigned long long)all.st.gpu_peak_bytes, (unsigned long long)all.st.gpu_budget);
    int caps[] = {1, top_k, n_experts - 1, n_experts};
    for (int host = 0; host < 2; host++) {
        int host_capacity = host ? top_k : -1; /* resident host experts, or a host cache of top_k slots */
        for (int i = 0; i < 4; i++) {
            if (host && i == 2) continue;
            uint64_t budget = fixed + per_slot * (uint64_t)caps[i];
            tier_run r;
            if (tier_run_model(dir, host_capacity, budget, &r, why) != 0) {
                CHECKF(0, "%s, device capacity %d, host %d: %s", name, caps[i], host_capacity, why);
                free(r.logits);
                continue;
            }
            CHECKF(r.st.gpu_capacity == caps[i], "%s: budget for %d slots gave %d", name, caps[i], r.st.gpu_capacity);
            CHECKF(!memcmp(r.logits, all.logits, sizeof(float) * TIER_NIDS * all.V),
                   "%s: device capacity %d (host %d) logits differ from all in device memory", name, caps[i],
                   host_capacity);
            CHECKF(!memcmp(r.gen, all.gen, sizeof r.gen), "%s: device capacity %d (host %d) greedy ids differ", name,
                   caps[i], host_capacity);
            if (caps[i] < top_k)
                CHECKF(r.st.gpu_uploads > all.st.gpu_uploads, "%s: capacity %d uploaded no more than all (%llu)", name,
                       caps[i], (unsigned long long)r.st.gpu_uploads);
            if (host) CHECKF(r.st.misses > 0, "%s: the host cache of %d slots read nothing", name, top_k);
            if (r.st.gpu_peak_bytes)
                CHECKF(r.st.gpu_peak_bytes <= budget, "%s: device peak %llu above the budget %llu", name,
                       (unsigned long long)r.st.gpu_peak_bytes, (unsigned long long)budget);
            printf("# %s on %s, device capacity %d, host %s: %llu device hits, %llu uploads (%llu bytes), peak %llu "
                   "of %llu\n",
                   name, tier_backend, caps[i], host ? "cache" : "resident", (unsigned long long)r.st.gpu_hits,
                   (unsigned long long)r.st.gpu_uploads, (unsigned long long)r.st.gpu_upload_bytes,
                   (unsigned long long)r.st.gpu_peak_bytes, (unsigned long long)budget);
            free(r.logits);
        }
    }
    /* Steps computing what is not in device memory on the CPU (resident host
     * experts): on the CPU backend the same kernels, so bit-identical; on a GPU the
     * CPU's sums, within the CPU-vs-GPU tolerance, greedy ids the same. */
    /* cpu_experts TIER_NIDS: the prompt's misses too (its logits are compared);
     * 4: the prompt uploads, then decode steps mix device hits and CPU experts */
    for (int j = 0; j < 4; j++) {
        int i = j % 2, ce = j < 2 ? TIER_NIDS : 4;
        tier_cpu_experts = ce;
        tier_run r;
        int rc = tier_run_model(dir, -1, fixed + per_slot * (uint64_t)caps[i], &r, why);
        tier_cpu_experts = 0;
        if (rc != 0) {
            CHECKF(0, "%s, device capacity %d, cpu experts: %s", name, caps[i], why);
            free(r.logits);
            continue;
        }
        double rel = tier_cpu_close(name, caps[i], &all, &r);
        CHECKF(r.st.cpu_computed_experts > 0, "%s: capacity %d computed no expert on the CPU", name, caps[i]);
        printf("# %s on %s, device capacity %d, misses of steps <= %d tokens on the CPU: %llu computed there, %llu "
               "uploads, logits within %.3g of max|logit|\n",
               name, tier_backend, caps[i], ce, (unsigned long long)r.st.cpu_computed_experts,
               (unsigned long long)r.st.gpu_uploads, rel);
        free(r.logits);
    }
    tier_auto_split(dir, name, &all, fixed + per_slot * (uint64_t)top_k, fixed + per_slot, top_k);
    /* the CPU computes from resident host experts only: with a host cache, refused */
    tier_run rc_cache;
    tier_cpu_experts = 4;
    CHECK(tier_run_model(dir, top_k, fixed + per_slot, &rc_cache, why) != 0);
    tier_cpu_experts = 0;
    CHECK_STR_CONTAINS(why, "--cpu-experts");
    free(rc_cache.logits);
    /* one byte short of one expert per layer: refused with the size needed */
    tier_run r;
    CHECK(tier_run_model(dir, -1, fixed + per_slot - 1, &r, why) != 0);
    CHECK_STR_CONTAINS(why, "too small");
    CHECK_STR_CONTAINS(why, "raise --gpu-memory");
    free(r.logits);
    free(all.logits);
}

#endif

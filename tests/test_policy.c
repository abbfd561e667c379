/* Eviction policies and the cache replay (src/experts/policy.c, replay.c) on small
 * hand-made traces whose right answers are worked out in the comments, plus the demo
 * model's recorded trace against figures the real cache measured. */
#include "common/error.h"
#include "experts/lookahead_gate.h"
#include "experts/miss_split.h"
#include "experts/policy.h"
#include "experts/replay.h"
#include "experts/trace.h"
#include "harness.h"

#include <math.h>
#include <string.h>

#ifndef LAZYMOE_SOURCE_DIR
#define LAZYMOE_SOURCE_DIR "."
#endif

/* A one-layer trace of n tokens, top-k = k, ids given token by token. */
static lm_trace_data one_layer(int experts, int k, int n, int32_t *ids) {
    lm_trace_data d = {.n_layers = 1, .n_experts = experts, .top_k = k, .n_tokens = n, .ids = ids};
    return d;
}

static double rate(const lm_replay_result *r) {
    return r->hits + r->misses ? (double)r->hits / (double)(r->hits + r->misses) : -1;
}

/* 0 1 2 0 1 2 with 2 slots, top-1, everything counted. LRU always evicts the expert that
 * comes back next: 0 hits. Belady: t2 evicts 1 (next use t4) over 0 (t3); t3 hits 0;
 * t4 evicts 0 (never again) over 2 (t5); t5 hits 2: 2 hits. */
static void belady_cycle(void) {
    char err[LM_ERR_LEN];
    int32_t ids[] = {0, 1, 2, 0, 1, 2};
    lm_trace_data d = one_layer(4, 1, 6, ids);
    lm_replay_options o = {.policy = LM_EVICT_LRU, .capacity = 2};
    lm_replay_result r;
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 0);
    CHECK_EQ_INT(r.misses, 6);
    o.belady = 1;
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 2);
    CHECK_EQ_INT(r.misses, 4);
    o.skip = 4; /* only t4 (miss) and t5 (hit) counted */
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 1);
    CHECK_EQ_INT(r.misses, 1);
}

/* Belady is an upper bound: no policy beats it, on any capacity, on a trace with some
 * structure (a popular expert 0, a cycle through the others). */
static void belady_bounds_policies(void) {
    char err[LM_ERR_LEN];
    int32_t ids[2 * 64];
    for (int t = 0; t < 64; t++) {
        ids[2 * t] = t % 3 == 0 ? 0 : 1 + (t * 7) % 9;
        ids[2 * t + 1] = 1 + (t * 5 + 3) % 9 == ids[2 * t] ? 1 + (t * 5 + 4) % 9 : 1 + (t * 5 + 3) % 9;
    }
    lm_trace_data d = one_layer(10, 2, 64, ids);
    for (int cap = 2; cap <= 10; cap += 2) {
        lm_replay_options o = {.capacity = cap, .belady = 1, .skip = 1};
        lm_replay_result best, r;
        CHECK(lm_replay(&d, NULL, NULL, &o, &best, err) == 0);
        o.belady = 0;
        for (int p = 0; p < LM_EVICT_COUNT; p++) {
            o.policy = (lm_evict_policy)p;
            CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == 0);
            CHECKF(r.hits <= best.hits && r.hits + r.misses == best.hits + best.misses, "%s at %d: %llu > %llu",
                   lm_policy_name(o.policy), cap, (unsigned long long)r.hits, (unsigned long long)best.hits);
        }
    }
}

/* Exact predictions read ahead into a single slot: every step hits its prefetched expert. */
static void lookahead_exact(void) {
    char err[LM_ERR_LEN];
    int32_t ids[] = {0, 1, 2, 3, 0, 1};
    lm_trace_data d = one_layer(4, 1, 6, ids), pred = one_layer(4, 1, 6, ids);
    lm_replay_options o = {.policy = LM_EVICT_LCP, .capacity = 1, .lookahead = 1};
    lm_replay_result r;
    CHECK(lm_replay(&d, &pred, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 6);
    CHECK_EQ_INT(r.misses, 0);
    CHECK_EQ_INT(r.prefetched, 6);
    CHECK_EQ_INT(r.prefetch_used, 6);
    o.lookahead = 0; /* without it: every token misses */
    CHECK(lm_replay(&d, &pred, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 0);
}

/* 2 slots, top-1, lookahead 2. t0 predicts [0 1]: both read, 0 needed (hit). t1 predicts
 * [1 0]: both cached, 1 needed (hit). t2 predicts [0 2] and needs 0: 2 must be read, and
 * the LRU victim is 0 (last used at t0). Unguarded (what the cache did before), the
 * lookahead read evicts the predicted, needed 0, and t2 misses; guarded (the cache now),
 * it evicts 1. */
static void lookahead_guard(void) {
    char err[LM_ERR_LEN];
    int32_t ids[] = {0, 1, 0};
    int32_t pids[] = {0, 1, 1, 0, 0, 2};
    lm_trace_data d = one_layer(4, 1, 3, ids), pred = one_layer(4, 2, 3, pids);
    lm_replay_options o = {.policy = LM_EVICT_LRU, .capacity = 2, .lookahead = 2, .skip = 2, .unguarded = 1};
    lm_replay_result r;
    CHECK(lm_replay(&d, &pred, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 0);
    CHECK_EQ_INT(r.misses, 1);
    o.unguarded = 0;
    CHECK(lm_replay(&d, &pred, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 1);
    CHECK_EQ_INT(r.misses, 0);
    CHECK_EQ_INT(r.prefetched, 1); /* expert 2, at t2 */
    CHECK_EQ_INT(r.prefetch_used, 0);
}

/* 3 5 0 1 2 3 with 2 slots, top-1. LRU: after 0 1 2 the cache holds {1, 2}: 3 misses at t5.
 * Pinning the history's most used expert (3) keeps it: t5 hits; the other slot turns over. */
static void pinning(void) {
    char err[LM_ERR_LEN];
    int32_t ids[] = {3, 5, 0, 1, 2, 3};
    int32_t hist_ids[] = {3, 3, 1, 3, 2};
    lm_trace_data d = one_layer(6, 1, 6, ids), hist = one_layer(6, 1, 5, hist_ids);
    lm_replay_options o = {.policy = LM_EVICT_LRU, .capacity = 2};
    lm_replay_result r;
    CHECK(lm_replay(&d, NULL, &hist, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 0);
    o.pin = 1;
    CHECK(lm_replay(&d, NULL, &hist, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 2); /* t0 and t5: 3 was pinned before the first token */
    o.pin = 2; /* leaves fewer than top_k free slots */
    CHECK(lm_replay(&d, NULL, &hist, &o, &r, err) == -1);
    CHECK_STR_CONTAINS(err, "free slots");
}

/* Two layers in one shared pool of 2 x 2 slots: layer 1 uses one expert, layer 0 cycles
 * through three, so the shared pool lets layer 0 keep all three (after the first round,
 * every step hits); separate pools of 2 miss layer 0's cycle under LRU. */
static void shared_pool(void) {
    char err[LM_ERR_LEN];
    int32_t ids[2 * 9];
    for (int t = 0; t < 9; t++) ids[2 * t] = t % 3, ids[2 * t + 1] = 0;
    lm_trace_data d = {.n_layers = 2, .n_experts = 3, .top_k = 1, .n_tokens = 9, .ids = ids};
    lm_replay_options o = {.policy = LM_EVICT_LRU, .capacity = 2, .skip = 3};
    lm_replay_result r;
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 6); /* layer 1 only */
    o.global = 1;
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.hits, 12);
}

static void bad_options(void) {
    char err[LM_ERR_LEN];
    int32_t ids[] = {0, 1};
    lm_trace_data d = one_layer(4, 2, 1, ids);
    lm_replay_options o = {.policy = LM_EVICT_LCP, .capacity = 1};
    lm_replay_result r;
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == -1);
    CHECK_STR_CONTAINS(err, "capacity 1");
    o.capacity = 2;
    o.lookahead = 2;
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == -1);
    CHECK_STR_CONTAINS(err, "lookahead trace");
    lm_trace_data other = one_layer(5, 2, 1, ids);
    CHECK(lm_replay(&d, &other, NULL, &o, &r, err) == -1);
    CHECK_STR_CONTAINS(err, "5 experts");
    o.lookahead = 0;
    o.pin = 1;
    CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == -1);
    CHECK_STR_CONTAINS(err, "history");
}

/* The policies' own choices on hand-made histories. */
static void policy_choices(void) {
    char err[LM_ERR_LEN];
    lm_usage u;
    int32_t slots[3] = {0, 1, 2};
    uint8_t busy[3] = {0, 0, 0};
    /* LRFU, half-life 10: expert 0 used at 1..10 (sum of 2^(-age/10) at step 40 ~ 0.93),
     * expert 1 once at 35 (0.71), expert 2 once at 30 (0.50): 2 goes. With half-life 1
     * it is LRU: 0 (last used at 10) goes. */
    CHECK(lm_usage_init(&u, 3, err) == 0);
    u.param = 10;
    for (uint64_t t = 1; t <= 10; t++) lm_usage_touch(&u, LM_EVICT_LRFU, 0, t);
    lm_usage_touch(&u, LM_EVICT_LRFU, 2, 30);
    lm_usage_touch(&u, LM_EVICT_LRFU, 1, 35);
    CHECK_EQ_INT(lm_policy_victim(LM_EVICT_LRFU, &u, slots, busy, 3, 40), 2);
    u.param = 1;
    CHECK_EQ_INT(lm_policy_victim(LM_EVICT_LRFU, &u, slots, busy, 3, 40), 0);
    lm_usage_free(&u);
    /* STALE at step 20: expert 0 comes every 2 steps, last at 18 (due at 20: 0 away);
     * expert 1 every 10 steps, last at 15 (due at 25: 5 away); expert 2 every 3 steps,
     * last at 6 (due at 9, 11 steps overdue): 2 goes, then 1. */
    CHECK(lm_usage_init(&u, 3, err) == 0);
    for (uint64_t t = 2; t <= 18; t += 2) lm_usage_touch(&u, LM_EVICT_STALE, 0, t);
    for (uint64_t t = 5; t <= 15; t += 10) lm_usage_touch(&u, LM_EVICT_STALE, 1, t);
    for (uint64_t t = 3; t <= 6; t += 3) lm_usage_touch(&u, LM_EVICT_STALE, 2, t);
    CHECK_EQ_INT(lm_policy_victim(LM_EVICT_STALE, &u, slots, busy, 3, 20), 2);
    busy[2] = 1;
    CHECK_EQ_INT(lm_policy_victim(LM_EVICT_STALE, &u, slots, busy, 3, 20), 1);
    lm_usage_free(&u);
    CHECK(lm_policy_parse("stale") == LM_EVICT_STALE && lm_policy_parse("lrfu") == LM_EVICT_LRFU);
    CHECK(lm_policy_default_param(LM_EVICT_LCP) == 128.0 && lm_policy_default_param(LM_EVICT_LRFU) == 16.0);
}

/* The replay follows the real cache: on the demo model's trace (first 3,001 tokens, as
 * bench/RESULTS.md's table), `lazymoe bench --routing-trace` measured the cache at 8 slots:
 * LRU 46.4%, LCP 47.5%, LFRU 46.4%; at 16: 70.6%, 72.2%, 72.0%; bench/belady.py gave
 * Belady 62.9% and 85.7%. */
static void demo_trace_matches_cache(void) {
    char err[LM_ERR_LEN];
    lm_trace_data d;
    if (lm_trace_load(&d, LAZYMOE_SOURCE_DIR "/models/demo-coder/routing/heldout.trace", err) != 0) {
        CHECKF(0, "%s", err);
        return;
    }
    d.n_tokens = 3001;
    static const struct {
        int cap, policy;
        double pct;
    } want[] = {{8, LM_EVICT_LRU, 46.4},  {8, LM_EVICT_LCP, 47.5},  {8, LM_EVICT_LFRU, 46.4},  {8, -1, 62.9},
                {16, LM_EVICT_LRU, 70.6}, {16, LM_EVICT_LCP, 72.2}, {16, LM_EVICT_LFRU, 72.0}, {16, -1, 85.7}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        lm_replay_options o = {.capacity = want[i].cap, .skip = 1, .belady = want[i].policy < 0,
                               .policy = want[i].policy < 0 ? LM_EVICT_LRU : (lm_evict_policy)want[i].policy};
        lm_replay_result r;
        CHECK(lm_replay(&d, NULL, NULL, &o, &r, err) == 0);
        double got = 100 * rate(&r);
        CHECKF(fabs(got - want[i].pct) < 0.051, "capacity %d policy %d: %.2f%%, the cache measured %.1f%%", want[i].cap,
               want[i].policy, got, want[i].pct);
    }
    lm_trace_data_free(&d);
}

/* Two streams over one layer, top-2: tokens 0-2 are stream 0, tokens 3-5 stream 1.
 * Step s is the union of token s and token 3 + s, each expert once, in first-seen order.
 * With 4 slots and LRU: step 0 reads {0,1,5} (3 misses), step 1 {0,1} hits, {6} misses,
 * step 2 needs {2,3,5}: 5 hits, 2 and 3 miss (each evicting one of {0,1,6}). */
static void merged_streams(void) {
    char err[LM_ERR_LEN];
    int32_t ids[] = {0, 1, 0, 1, 2, 3, /* stream 0 */ 5, 1, 6, -1, 5, 2 /* stream 1 (one pick at t4) */};
    lm_trace_data d = one_layer(8, 2, 6, ids), m;
    CHECK(lm_trace_merge_streams(&d, 2, &m, err) == 0);
    CHECK_EQ_INT(m.n_tokens, 3);
    CHECK_EQ_INT(m.top_k, 4);
    int32_t want[] = {0, 1, 5, -1, 0, 1, 6, -1, 2, 3, 5, -1};
    for (int i = 0; i < 12; i++) CHECK_EQ_INT(m.ids[i], want[i]);
    lm_replay_options o = {.policy = LM_EVICT_LRU, .capacity = 4};
    lm_replay_result r;
    CHECK(lm_replay(&m, NULL, NULL, &o, &r, err) == 0);
    CHECK_EQ_INT(r.misses, 3 + 1 + 2);
    CHECK_EQ_INT(r.hits, 0 + 2 + 1);
    lm_trace_data_free(&m);
    /* one stream is the trace itself; more streams than tokens is an error */
    CHECK(lm_trace_merge_streams(&d, 1, &m, err) == 0);
    CHECK_EQ_INT(m.n_tokens, 6);
    for (int i = 0; i < 12; i++) CHECK_EQ_INT(m.ids[i], ids[i]);
    lm_trace_data_free(&m);
    CHECK(lm_trace_merge_streams(&d, 7, &m, err) != 0);
    CHECK(strstr(err, "7 streams") != NULL);
}

/* The gate alone: closed until it has LM_LOOKAHEAD_GATE_EVIDENCE decayed reads, open
 * while at least the threshold of them was used, closed again when the share falls;
 * steps with nothing to read change nothing; threshold 0 is always open. */
static void lookahead_gate_arithmetic(void) {
    char err[LM_ERR_LEN];
    lm_lookahead_gate g;
    CHECK(lm_lookahead_gate_init(&g, 2, 0.5, err) == 0);
    CHECK(!lm_lookahead_gate_open(&g, 0) && !lm_lookahead_gate_open(&g, 1));
    int k = 0;
    while (!lm_lookahead_gate_open(&g, 0) && k < 100) lm_lookahead_gate_observe(&g, 0, 1, 1), k++;
    CHECKF(k == 10, "opened after %d observations, expected 10 (32 (1 - (31/32)^k) >= 8)", k);
    CHECK(!lm_lookahead_gate_open(&g, 1)); /* layers are separate */
    lm_lookahead_gate_observe(&g, 0, 0, 0);
    CHECK(lm_lookahead_gate_open(&g, 0));
    /* Unused reads: the decayed share (1 - (31/32)^n of the old weight kept) falls
     * under one half after a few steps of 4 unused reads. */
    int n = 0;
    while (lm_lookahead_gate_open(&g, 0) && n < 100) lm_lookahead_gate_observe(&g, 0, 4, 0), n++;
    CHECKF(n >= 1 && n <= 4, "closed after %d bad steps", n);
    /* Half used is enough. */
    for (int i = 0; i < 200; i++) lm_lookahead_gate_observe(&g, 1, 2, 1);
    CHECK(lm_lookahead_gate_open(&g, 1));
    lm_lookahead_gate_free(&g);
    CHECK(lm_lookahead_gate_init(&g, 1, 0, err) == 0);
    CHECK(lm_lookahead_gate_open(&g, 0));
    lm_lookahead_gate_free(&g);
}

/* Two layers of 8 experts, top-1, 2 slots, 64 tokens cycling through the experts (so no
 * expert is cached when it comes back), every token counted. Layer 0's predictions are
 * right, layer 1's always wrong. Ungated, both layers read every prediction: layer 0 hits
 * at every token, layer 1's reads are all wasted. Gated at one half, layer 1 never reads
 * (its held-back predictions are never used) and layer 0 reads from token 10 on (after 10
 * observations of evidence, lookahead_gate_arithmetic), every read used. */
static void lookahead_gated_replay(void) {
    char err[LM_ERR_LEN];
    enum { T = 64 };
    int32_t ids[T * 2], pred[T * 2];
    for (int t = 0; t < T; t++) {
        ids[2 * t] = ids[2 * t + 1] = t % 8;
        pred[2 * t] = t % 8;
        pred[2 * t + 1] = (t + 4) % 8;
    }
    lm_trace_data d = {.n_layers = 2, .n_experts = 8, .top_k = 1, .n_tokens = T, .ids = ids};
    lm_trace_data p = d;
    p.ids = pred;
    lm_replay_options o = {.policy = LM_EVICT_LCP, .capacity = 2, .lookahead = 1};
    lm_replay_result r;
    CHECKF(lm_replay(&d, &p, NULL, &o, &r, err) == 0, "%s", err);
    CHECK_EQ_INT(r.prefetched, 2 * T);
    CHECK_EQ_INT(r.prefetch_used, T);
    CHECK_EQ_INT(r.hits, T);
    CHECK_EQ_INT(r.misses, T);
    o.gate = 0.5;
    CHECKF(lm_replay(&d, &p, NULL, &o, &r, err) == 0, "%s", err);
    CHECK_EQ_INT(r.prefetched, T - 10);
    CHECK_EQ_INT(r.prefetch_used, T - 10);
    CHECK_EQ_INT(r.hits, T - 10);
    CHECK_EQ_INT(r.misses, T + 10);
}

/* lm_miss_split (--cpu-experts auto) on cases worked by hand, costs in microseconds. */
static void miss_split_choices(void) {
    const double us = 1e-6;
    lm_miss_costs c = {100 * us, 0, 150 * us, 10 * us};
    uint8_t on[8];
    int order[8];
    /* two one-row misses: one on the CPU takes max(150, 100) = 150 < 200 uploading both */
    int two[] = {1, 1};
    CHECK_EQ_INT(lm_miss_split(&c, two, 2, 100, on, order), 1);
    CHECK(on[0] == 1 && on[1] == 0); /* among equals, the first */
    /* one: 150 on the CPU against 100 uploading */
    CHECK_EQ_INT(lm_miss_split(&c, two, 1, 100, on, order), 0);
    CHECK(on[0] == 0);
    /* a round trip of 50: 200 against 200, a tie goes to the upload */
    c.cpu_fixed = 50 * us;
    CHECK_EQ_INT(lm_miss_split(&c, two, 2, 100, on, order), 0);
    CHECK(on[0] == 0 && on[1] == 0);
    /* rows 5 1 3 1 at upload 100, CPU 100 + 10 a row: fewest rows first (the two
     * ones, in order): k = 1 max(100, 300), k = 2 max(200, 200), k = 3 320 > 200 */
    lm_miss_costs d = {100 * us, 0, 100 * us, 10 * us};
    int rows[] = {5, 1, 3, 1};
    CHECK_EQ_INT(lm_miss_split(&d, rows, 4, 100, on, order), 2);
    CHECK(on[0] == 0 && on[1] == 1 && on[2] == 0 && on[3] == 1);
    /* room for one row on the CPU: only the first one-row miss */
    CHECK_EQ_INT(lm_miss_split(&d, rows, 4, 1, on, order), 1);
    CHECK(on[0] == 0 && on[1] == 1 && on[2] == 0 && on[3] == 0);
    /* no room at all, and no miss */
    CHECK_EQ_INT(lm_miss_split(&d, rows, 4, 0, on, order), 0);
    CHECK_EQ_INT(lm_miss_split(&d, rows, 0, 100, on, order), 0);
    /* a free upload takes everything; a free CPU everything that fits */
    lm_miss_costs up_free = {0, 0, 1 * us, 1 * us}, cpu_free = {1 * us, 0, 0, 0};
    CHECK_EQ_INT(lm_miss_split(&up_free, rows, 4, 100, on, order), 0);
    CHECK_EQ_INT(lm_miss_split(&cpu_free, rows, 4, 100, on, order), 4);
    CHECK(on[0] && on[1] && on[2] && on[3]);
    CHECK_EQ_INT(lm_miss_split(&cpu_free, rows, 4, 5, on, order), 3); /* rows 1, 1, 3 */
    CHECK(!on[0]);
    /* the CPU side's seconds: 50 + (100 + 4 x 10) + 100 */
    d.cpu_fixed = 50 * us;
    int pair[] = {5, 1};
    CHECK(fabs(lm_miss_cpu_seconds(&d, pair, 2) - 290 * us) < 1e-12);
    CHECK(lm_miss_cpu_seconds(&d, pair, 0) == 0);
    /* LAZYMOE_MISS_COSTS text */
    lm_miss_costs p;
    CHECK(lm_miss_costs_parse("100,0,150,10", &p) == 0);
    CHECK(fabs(p.upload - 100 * us) < 1e-15 && p.cpu_fixed == 0 && fabs(p.cpu_expert - 150 * us) < 1e-15 &&
          fabs(p.cpu_row - 10 * us) < 1e-15);
    CHECK(lm_miss_costs_parse("2.5,1e1,3,0.25", &p) == 0);
    CHECK(fabs(p.upload - 2.5 * us) < 1e-15 && fabs(p.cpu_fixed - 10 * us) < 1e-15);
    const char *bad[] = {"", "1,2,3", "1,2,3,4,", "a,1,2,3", "-1,0,0,0", "1,2,3,4x", "nan,0,0,0", "1,,2,3", "inf,0,0,0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(lm_miss_costs_parse(bad[i], &p) != 0, "\"%s\" was read", bad[i]);
}

int main(void) {
    TEST_CASE("replay_belady_cycle", belady_cycle);
    TEST_CASE("replay_belady_bounds_policies", belady_bounds_policies);
    TEST_CASE("replay_lookahead_exact", lookahead_exact);
    TEST_CASE("replay_lookahead_guard", lookahead_guard);
    TEST_CASE("lookahead_gate_arithmetic", lookahead_gate_arithmetic);
    TEST_CASE("replay_lookahead_gated", lookahead_gated_replay);
    TEST_CASE("replay_pinning", pinning);
    TEST_CASE("replay_shared_pool", shared_pool);
    TEST_CASE("replay_bad_options", bad_options);
    TEST_CASE("replay_merged_streams", merged_streams);
    TEST_CASE("policy_lrfu_stale_choices", policy_choices);
    TEST_CASE("replay_demo_trace_matches_cache", demo_trace_matches_cache);
    TEST_CASE("miss_split_choices", miss_split_choices);
    return th_failed_cases ? 1 : 0;
}

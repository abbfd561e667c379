/* Expert-cache replay: hit rates of an eviction policy on a recorded routing trace,
 * without a model, I/O or threads.
 *
 * It follows the cache's own rules (cache.c): each MoE layer has `capacity` slots;
 * per token and layer, the experts the token needs are hits if cached, and each miss
 * takes the policy's victim among the slots this step does not use (pinned slots are
 * never evicted). Usage history is touched exactly as cache.c touches it. With a
 * lookahead trace (per token and layer, the experts the router lookahead predicts,
 * best first, as tools/train_routing_model.py records them), the first `lookahead` of
 * them are read into the layer before its step, as lm_cache_prefetch_lookahead does
 * (its reads evict a cached predicted expert only when nothing else can go, and then
 * only one ranked below; they are not touched as uses).
 * Belady's MIN (the offline optimum: evict the expert whose next use is furthest away)
 * is the ceiling of every policy without lookahead.
 *
 * The first `skip` tokens warm the cache and are not counted (lazymoe bench counts
 * decode after a 1-token prompt: skip = 1 matches it).
 */
#ifndef LAZYMOE_REPLAY_H
#define LAZYMOE_REPLAY_H

#include "experts/policy.h"
#include "experts/trace.h"

#include <stdint.h>

typedef struct {
    lm_evict_policy policy;
    double param;    /* the policy's tunable; 0 = its default (lm_policy_default_param) */
    int belady;      /* 1: Belady's MIN instead of the policy (lookahead must be 0) */
    int capacity;    /* slots per MoE layer (>= top_k) */
    int lookahead;   /* predicted experts read before each layer's step; 0 = off */
    double gate;     /* lookahead gated per layer (lookahead_gate.h) at this share of reads
                      * used; 0 = every prediction read */
    int unguarded;   /* 1: a lookahead read may evict another predicted expert (the cache
                      * before it was made lookahead-aware); 0: never, as cache.c does */
    int pin;         /* experts per layer pinned before the first token: the most used
                      * ones of `history` (capacity - pin >= top_k) */
    int skip;        /* tokens not counted */
    int global;      /* 1: one pool of capacity x (MoE layers) slots shared by all layers,
                      * so busy layers take slots from quiet ones (per-layer adaptive
                      * capacity); each layer keeps at least top_k */
} lm_replay_options;

typedef struct {
    uint64_t hits, misses;   /* counted tokens' needed experts: cached at their step or not */
    uint64_t prefetched;     /* lookahead reads (counted tokens) */
    uint64_t prefetch_used;  /* of them, needed at that step */
} lm_replay_result;

/* Concurrent sequences decoded together (continuous batching): `streams` sequences
 * take consecutive parts of `in` (sequence i is tokens i*n .. i*n + n - 1, n = in's
 * tokens / streams), and step s of `out` is token s of every sequence: per layer, the
 * union of their picks (first appearance order, -1 after it), so each expert a step
 * needs is acquired once, as the engine's batched decode does (run_lazy_experts on the
 * union of the rows' routes). out->top_k = in->top_k x streams; free with
 * lm_trace_data_free. Replaying `out` gives the cache's hits and reads per step; reads
 * per generated token = misses / (counted steps x streams). */
int lm_trace_merge_streams(const lm_trace_data *in, int streams, lm_trace_data *out, char *err);

/* Replays `routes` (and `predicted` when o->lookahead > 0; `history` when o->pin > 0).
 * The traces must agree on layers and experts. Returns 0, or -1 with err. */
int lm_replay(const lm_trace_data *routes, const lm_trace_data *predicted, const lm_trace_data *history,
              const lm_replay_options *o, lm_replay_result *r, char *err);

#endif

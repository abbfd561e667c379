/* Expert cache eviction policies: pure functions over plain arrays, no I/O, so
 * they can be unit-tested and replayed on routing traces (bench/).
 *
 * A policy sees, per layer, which expert each slot holds, which slots the current
 * step is using (never evictable), and per-expert usage history; it names the
 * slot to reuse.
 */
#ifndef LAZYMOE_POLICY_H
#define LAZYMOE_POLICY_H

#include <stdint.h>

typedef enum {
    LM_EVICT_LRU = 0, /* least recently used: the floor */
    LM_EVICT_LCP,     /* mlx-moe's: frequency x 0.25^(age/128), lowest evicted */
    LM_EVICT_LFRU,    /* decayed frequency with a recency window (see policy.c); so far
                       * measured below LCP (bench/RESULTS.md) */
    LM_EVICT_LRFU,    /* LRFU (Lee et al. 2001): every past use counts 2^(-age/half-life),
                       * lowest sum evicted; LRU and LFU are its two extremes */
    LM_EVICT_STALE,   /* "least stale": each expert's typical gap between uses (a moving
                       * average) predicts its next use; the latest predicted is evicted */
    LM_EVICT_COUNT
} lm_evict_policy;

/* Per-layer usage history, indexed by expert. */
typedef struct {
    int n_experts;
    uint64_t *last_use; /* step of the last use; 0 = never */
    float *freq;        /* decayed use count (LFRU) or raw count (LCP) */
    uint64_t *freq_step; /* step at which freq was last brought up to date */
    float *gap;          /* STALE: moving average of the steps between uses; 0 = one use so far */
    double param;        /* the policy's tunable (0 = its default, lm_policy_default_param) */
} lm_usage;

int lm_usage_init(lm_usage *u, int n_experts, char *err);
void lm_usage_free(lm_usage *u);
/* Records that expert e was used at step `now` (steps start at 1). */
void lm_usage_touch(lm_usage *u, lm_evict_policy p, int e, uint64_t now);

/* Slot to evict among nslots (slot_expert[s] = expert or -1 for empty; busy[s]
 * nonzero = in use now). Prefers empty slots. Returns -1 if every slot is busy. */
int lm_policy_victim(lm_evict_policy p, const lm_usage *u, const int32_t *slot_expert, const uint8_t *busy,
                     int nslots, uint64_t now);

/* The tunable of each policy: LCP's age scale (128 steps: priority x 0.25^(age/128)),
 * LFRU's and LRFU's half-life in steps, STALE's moving-average weight of the newest gap;
 * 0 for LRU. bench/RESULTS.md says how each default was chosen. */
double lm_policy_default_param(lm_evict_policy p);

const char *lm_policy_name(lm_evict_policy p);
/* Parses a policy name (lm_policy_name); -1 if unknown. */
int lm_policy_parse(const char *s);

#endif

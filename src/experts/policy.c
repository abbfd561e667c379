/* Eviction policies.
 *
 * LRU evicts the expert unused for longest. LCP is mlx-moe's priority
 * frequency x 0.25^(steps since use / 128) over raw use counts. LFRU keeps an
 * exponentially decayed use count (half-life 256 steps, so popularity adapts to
 * the text) and protects anything used in the last few steps (recency matters
 * most for the next token: consecutive tokens share ~45% of their experts); among
 * the rest it evicts the lowest decayed count, breaking ties by age.
 */
#include "experts/policy.h"

#include "common/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LFRU_HALF_LIFE 256.0
#define LFRU_RECENT_STEPS 4

int lm_usage_init(lm_usage *u, int n_experts, char *err) {
    memset(u, 0, sizeof *u);
    u->n_experts = n_experts;
    u->last_use = calloc((size_t)n_experts, sizeof *u->last_use);
    u->freq = calloc((size_t)n_experts, sizeof *u->freq);
    u->freq_step = calloc((size_t)n_experts, sizeof *u->freq_step);
    if (!u->last_use || !u->freq || !u->freq_step) {
        lm_usage_free(u);
        return lm_errf(err, "out of memory for expert usage history");
    }
    return 0;
}

void lm_usage_free(lm_usage *u) {
    free(u->last_use);
    free(u->freq);
    free(u->freq_step);
    memset(u, 0, sizeof *u);
}

static float decayed(const lm_usage *u, int e, uint64_t now) {
    double age = (double)(now - u->freq_step[e]);
    return (float)(u->freq[e] * pow(0.5, age / LFRU_HALF_LIFE));
}

void lm_usage_touch(lm_usage *u, lm_evict_policy p, int e, uint64_t now) {
    if (e < 0 || e >= u->n_experts) return;
    if (p == LM_EVICT_LFRU) {
        u->freq[e] = decayed(u, e, now) + 1.0f;
        u->freq_step[e] = now;
    } else {
        u->freq[e] += 1.0f;
    }
    u->last_use[e] = now;
}

/* Lower = evict first. */
static double keep_score(lm_evict_policy p, const lm_usage *u, int e, uint64_t now) {
    double age = (double)(now - u->last_use[e]);
    switch (p) {
    case LM_EVICT_LCP: return u->freq[e] * pow(0.25, age / 128.0);
    case LM_EVICT_LFRU:
        if (age < LFRU_RECENT_STEPS) return 1e30 - age;
        return decayed(u, e, now) - age * 1e-9;
    default: return -age;
    }
}

int lm_policy_victim(lm_evict_policy p, const lm_usage *u, const int32_t *slot_expert, const uint8_t *busy,
                     int nslots, uint64_t now) {
    int best = -1;
    double best_score = 0;
    for (int s = 0; s < nslots; s++) {
        if (busy[s]) continue;
        if (slot_expert[s] < 0) return s;
        double sc = keep_score(p, u, slot_expert[s], now);
        if (best < 0 || sc < best_score) {
            best = s;
            best_score = sc;
        }
    }
    return best;
}

const char *lm_policy_name(lm_evict_policy p) {
    static const char *names[LM_EVICT_COUNT] = {"lru", "lcp", "lfru"};
    return (p >= 0 && p < LM_EVICT_COUNT) ? names[p] : "?";
}

int lm_policy_parse(const char *s) {
    for (int p = 0; p < LM_EVICT_COUNT; p++)
        if (strcmp(s, lm_policy_name((lm_evict_policy)p)) == 0) return p;
    return -1;
}

/* Eviction policies.
 *
 * LRU evicts the expert unused for longest. LCP is mlx-moe's priority
 * frequency x 0.25^(steps since use / 128) over raw use counts. LFRU keeps an
 * exponentially decayed use count (half-life 256 steps, so popularity adapts to
 * the text) and protects anything used in the last few steps (recency matters
 * most for the next token: consecutive tokens share ~45% of their experts); among
 * the rest it evicts the lowest decayed count, breaking ties by age. LRFU is the
 * same decayed count without the protection (a short half-life makes it LRU, a long
 * one LFU). STALE predicts each expert's next use from its own rhythm: last use +
 * a moving average of its gaps between uses; the expert predicted furthest away
 * goes (an expert used once is assumed to come back after twice its age, one
 * overdue after as long again as it is overdue).
 *
 * Each policy has one tunable (lm_usage.param); the defaults are the values
 * chosen on tuning traces (bench/RESULTS.md, "Eviction policies").
 */
#include "experts/policy.h"

#include "common/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LCP_AGE_SCALE 128.0
#define LFRU_HALF_LIFE 256.0
#define LFRU_RECENT_STEPS 4
#define LRFU_HALF_LIFE 16.0
#define STALE_WEIGHT 0.25

double lm_policy_default_param(lm_evict_policy p) {
    switch (p) {
    case LM_EVICT_LCP: return LCP_AGE_SCALE;
    case LM_EVICT_LFRU: return LFRU_HALF_LIFE;
    case LM_EVICT_LRFU: return LRFU_HALF_LIFE;
    case LM_EVICT_STALE: return STALE_WEIGHT;
    default: return 0;
    }
}

static double param_of(const lm_usage *u, lm_evict_policy p) {
    return u->param > 0 ? u->param : lm_policy_default_param(p);
}

int lm_usage_init(lm_usage *u, int n_experts, char *err) {
    memset(u, 0, sizeof *u);
    u->n_experts = n_experts;
    u->last_use = calloc((size_t)n_experts, sizeof *u->last_use);
    u->freq = calloc((size_t)n_experts, sizeof *u->freq);
    u->freq_step = calloc((size_t)n_experts, sizeof *u->freq_step);
    u->gap = calloc((size_t)n_experts, sizeof *u->gap);
    if (!u->last_use || !u->freq || !u->freq_step || !u->gap) {
        lm_usage_free(u);
        return lm_errf(err, "out of memory for expert usage history");
    }
    return 0;
}

void lm_usage_free(lm_usage *u) {
    free(u->last_use);
    free(u->freq);
    free(u->freq_step);
    free(u->gap);
    memset(u, 0, sizeof *u);
}

static float decayed(const lm_usage *u, int e, uint64_t now, double half_life) {
    double age = (double)(now - u->freq_step[e]);
    return (float)(u->freq[e] * pow(0.5, age / half_life));
}

void lm_usage_touch(lm_usage *u, lm_evict_policy p, int e, uint64_t now) {
    if (e < 0 || e >= u->n_experts) return;
    if (p == LM_EVICT_LFRU || p == LM_EVICT_LRFU) {
        u->freq[e] = decayed(u, e, now, param_of(u, p)) + 1.0f;
        u->freq_step[e] = now;
    } else if (p == LM_EVICT_STALE) {
        if (u->last_use[e] && now > u->last_use[e]) {
            float g = (float)(now - u->last_use[e]);
            u->gap[e] = u->gap[e] > 0 ? u->gap[e] + (float)param_of(u, p) * (g - u->gap[e]) : g;
        }
    } else {
        u->freq[e] += 1.0f;
    }
    u->last_use[e] = now;
}

/* Lower = evict first. */
static double keep_score(lm_evict_policy p, const lm_usage *u, int e, uint64_t now) {
    double age = (double)(now - u->last_use[e]);
    switch (p) {
    case LM_EVICT_LCP: return u->freq[e] * pow(0.25, age / param_of(u, p));
    case LM_EVICT_LFRU:
        if (age < LFRU_RECENT_STEPS) return 1e30 - age;
        return decayed(u, e, now, param_of(u, p)) - age * 1e-9;
    case LM_EVICT_LRFU: return decayed(u, e, now, param_of(u, p)) - age * 1e-9;
    case LM_EVICT_STALE: {
        double gap = u->gap[e] > 0 ? u->gap[e] : 2.0 * age + 1.0;
        double ahead = gap - age; /* steps until the predicted next use; < 0: overdue */
        return -(ahead >= 0 ? ahead : -ahead) - age * 1e-9;
    }
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
    static const char *names[LM_EVICT_COUNT] = {"lru", "lcp", "lfru", "lrfu", "stale"};
    return (p >= 0 && p < LM_EVICT_COUNT) ? names[p] : "?";
}

int lm_policy_parse(const char *s) {
    for (int p = 0; p < LM_EVICT_COUNT; p++)
        if (strcmp(s, lm_policy_name((lm_evict_policy)p)) == 0) return p;
    return -1;
}

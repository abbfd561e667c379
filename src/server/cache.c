#include "server/cache.h"
#include "server/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int srv_cache_init(srv_prompt_cache *c, lazymoe_model *m, int n_slots, int budget_tokens, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    c->m = m;
    c->n_slots = n_slots > 0 ? n_slots : 1;
    c->max_context = info.max_context;
    c->budget_tokens = budget_tokens > info.max_context ? budget_tokens : info.max_context;
    c->slots = calloc((size_t)c->n_slots, sizeof *c->slots);
    if (!c->slots) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void srv_cache_free(srv_prompt_cache *c) {
    for (int i = 0; c->slots && i < c->n_slots; i++) lazymoe_session_free(c->slots[i].s);
    free(c->slots);
    memset(c, 0, sizeof *c);
}

/* A conversation still in use: it served a later turn, and recently (within twice the
 * number of slots of requests). */
static int in_use(const srv_prompt_cache *c, const srv_slot *sl) {
    return sl->uses > 1 && c->clock - sl->last_used <= 2 * (uint64_t)c->n_slots;
}

/* 1 when slot a should be evicted before slot b. */
static int evict_before(const srv_prompt_cache *c, const srv_slot *a, const srv_slot *b) {
    int ua = in_use(c, a), ub = in_use(c, b);
    if (ua != ub) return ua < ub;
    return a->last_used < b->last_used;
}

static int common_prefix(const lazymoe_session *s, const int32_t *ids, int n) {
    int len = lazymoe_session_length(s), k = 0;
    const int32_t *t = lazymoe_session_tokens(s);
    while (k < len && k < n && t[k] == ids[k]) k++;
    return k;
}

/* Releases a session's KV memory beyond what it holds; if that fails the session is
 * still whole (it keeps the memory it had, and eviction makes room instead). */
static void fit(srv_slot *sl) {
    char err[256];
    sl->fitted = 1;
    if (lazymoe_session_fit(sl->s, err, sizeof err) != 0) srv_log("prompt cache: %s", err);
}

/* KV positions a slot holds or, running, may grow to. */
static long long slot_tokens(const srv_slot *sl) {
    long long cap = sl->s ? lazymoe_session_capacity(sl->s) : 0;
    return sl->busy && sl->reserved > cap ? sl->reserved : cap;
}

/* KV positions a running slot holds or its request needs: what it keeps when its
 * reservation is cut back to the need. */
static long long slot_need(const srv_slot *sl) {
    long long cap = sl->s ? lazymoe_session_capacity(sl->s) : 0;
    return sl->need > cap ? sl->need : cap;
}

/* The capacity a session of `cap` positions doubles to for `need` (engine.c's
 * ensure_capacity without a limit). */
static long long doubled(long long cap, long long need, long long max_context) {
    long long c = cap > 0 ? cap : 256;
    while (c < need) c *= 2;
    return c < max_context ? c : max_context;
}

lazymoe_session *srv_cache_take(srv_prompt_cache *c, const int32_t *ids, int n, int max_new, int *reused, int *wait,
                                char *err, size_t errlen) {
    int best = -1, best_lcp = 0, free_slot = -1, lru = -1;
    *wait = 0;
    /* Room beside the running requests (which cannot be evicted), or wait for one. */
    long long need = (long long)n + max_new, running = 0, running_need = 0;
    if (need > c->max_context) need = c->max_context;
    int n_busy = 0;
    for (int i = 0; i < c->n_slots; i++)
        if (c->slots[i].busy) {
            running += slot_tokens(&c->slots[i]);
            running_need += slot_need(&c->slots[i]);
            n_busy++;
        }
    if (n_busy && (running_need + need > c->budget_tokens || n_busy == c->n_slots)) {
        *wait = 1;
        snprintf(err, errlen, "waiting for room in the KV budget");
        return NULL;
    }
    /* Running sessions may have been given room to double into; a request that fits
     * beside what they need takes that room back (their sessions are between steps:
     * the caller holds the batch's lock). */
    if (running + need > c->budget_tokens) {
        for (int i = 0; i < c->n_slots; i++) {
            srv_slot *o = &c->slots[i];
            if (!o->busy) continue;
            o->reserved = (int)slot_need(o);
            lazymoe_session_set_growth_limit(o->s, o->reserved);
        }
        running = running_need;
    }
    for (int i = 0; i < c->n_slots; i++) {
        srv_slot *sl = &c->slots[i];
        if (sl->busy) continue;
        if (!sl->s) {
            if (free_slot < 0) free_slot = i;
            continue;
        }
        int lcp = common_prefix(sl->s, ids, n);
        if (lcp > best_lcp || (lcp == best_lcp && best >= 0 && lcp > 0 && sl->last_used > c->slots[best].last_used)) {
            best = i;
            best_lcp = lcp;
        }
        if (lru < 0 || evict_before(c, sl, &c->slots[lru])) lru = i;
    }
    int pick;
    /* The best session is reused when it holds the whole prompt (nothing to evaluate)
     * or when the shared prefix is at least half of what it holds; a request that only
     * shares a short beginning (a common system prompt) gets its own session rather
     * than cutting a long conversation back to that beginning. */
    if (best >= 0 && best_lcp > 0 &&
        (best_lcp >= n - 1 || 2 * best_lcp >= lazymoe_session_length(c->slots[best].s)))
        pick = best;
    else if (free_slot >= 0) pick = free_slot;
    else if (lru >= 0) pick = lru;
    else {
        snprintf(err, errlen, "no free session slot");
        return NULL;
    }
    srv_slot *sl = &c->slots[pick];
    long long taken_need = need; /* what this request alone needs */
    /* A kept session may hold more capacity than this request needs; before the
     * request waits for that, the session is cut to what it holds. */
    if (sl->s && lazymoe_session_capacity(sl->s) > need) need = lazymoe_session_capacity(sl->s);
    if (n_busy && running + need > c->budget_tokens && sl->s && !sl->fitted && need > taken_need) {
        fit(sl);
        need = lazymoe_session_capacity(sl->s) > taken_need ? lazymoe_session_capacity(sl->s) : taken_need;
    }
    if (n_busy && running + need > c->budget_tokens) {
        *wait = 1;
        snprintf(err, errlen, "waiting for room in the KV budget");
        return NULL;
    }
    *reused = sl->s ? common_prefix(sl->s, ids, n) : 0;
    sl->uses = *reused > 0 ? sl->uses + 1 : 1; /* a slot taken over starts a new conversation */
    if (*reused >= n) *reused = n - 1; /* the last prompt token is evaluated again for its logits */
    if (*reused < 0) *reused = 0;
    /* Room for this request's context. Sessions keep the KV memory they grew to, so
     * that the next turn of a conversation extends it in place; only when the budget
     * would be exceeded are others shrunk to what they hold (in eviction order), then
     * this one if it holds more than the request needs, and only then are whole
     * sessions freed. Running ones (busy) are neither shrunk nor freed. */
    for (;;) {
        if (sl->s && lazymoe_session_capacity(sl->s) > need) need = lazymoe_session_capacity(sl->s);
        long long others = 0;
        int victim = -1, shrink = -1;
        for (int i = 0; i < c->n_slots; i++) {
            const srv_slot *o = &c->slots[i];
            if (i == pick || !o->s) continue;
            others += slot_tokens(o);
            if (o->busy) continue;
            if (victim < 0 || evict_before(c, o, &c->slots[victim])) victim = i;
            if (!o->fitted && (shrink < 0 || evict_before(c, o, &c->slots[shrink]))) shrink = i;
        }
        if (others + need <= c->budget_tokens) break;
        if (shrink >= 0) {
            fit(&c->slots[shrink]);
            continue;
        }
        if (sl->s && !sl->fitted && lazymoe_session_capacity(sl->s) > taken_need) {
            fit(sl);
            need = taken_need;
            continue;
        }
        if (victim < 0) break;
        lazymoe_session_free(c->slots[victim].s);
        c->slots[victim].s = NULL;
        c->slots[victim].fitted = 0;
    }
    if (!sl->s && lazymoe_session_create(&sl->s, c->m, err, errlen) != 0) return NULL;
    /* The session grows by doubling (few copies over a conversation's turns), but
     * only into room the budget has beside the others: unlimited, a request needing
     * 1,100 positions took 2,048, and the running ones together up to twice the
     * budget the memory plan holds. */
    long long others = 0;
    for (int i = 0; i < c->n_slots; i++)
        if (i != pick && c->slots[i].s) others += slot_tokens(&c->slots[i]);
    long long room = c->budget_tokens - others, grow = doubled(lazymoe_session_capacity(sl->s), need, c->max_context);
    sl->busy = 1;
    sl->fitted = 0; /* it grows as this request needs */
    sl->need = (int)need;
    sl->reserved = (int)(grow < room ? grow : room > need ? room : need);
    lazymoe_session_set_growth_limit(sl->s, sl->reserved);
    return sl->s;
}

void srv_cache_put(srv_prompt_cache *c, lazymoe_session *s) {
    for (int i = 0; i < c->n_slots; i++)
        if (c->slots[i].s == s) {
            c->slots[i].busy = 0;
            c->slots[i].last_used = ++c->clock;
        }
}

void srv_cache_usage(const srv_prompt_cache *c, int *sessions, int *tokens) {
    *sessions = 0;
    *tokens = 0;
    for (int i = 0; i < c->n_slots; i++)
        if (c->slots[i].s) {
            (*sessions)++;
            *tokens += lazymoe_session_length(c->slots[i].s);
        }
}

/* Expert-cache replay (see replay.h).
 *
 * One code path for both layouts: a pool is a set of slots over keys; per-layer
 * caches are one pool per MoE layer with key = expert, the shared layout is one pool
 * with key = layer x experts + expert. Time for Belady's MIN is token x layers +
 * layer, so "next use" orders uses across layers in the shared pool too; policies see
 * the token number + 1 as their step, like cache.c.
 */
#include "experts/replay.h"
#include "experts/lookahead_gate.h"

#include "common/error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int nslots, nkeys;
    int32_t *slot_key; /* [nslots] key held, -1 empty */
    uint8_t *blocked;  /* [nslots] not evictable now: used by this step, pinned, or a read in flight */
    uint8_t *pinned;   /* [nslots] */
    uint8_t *spec;     /* [nslots] filled by this step's lookahead */
    uint8_t *shadow;   /* [nkeys] predicted for this step, not cached, not read: the gate was closed */
    int32_t *key_slot; /* [nkeys] slot or -1 */
    lm_usage usage;    /* over keys */
} pool;

/* Uses of every key in time order, for Belady's MIN: uses of key k are
 * when[start[k] .. start[k + 1]), and cursor[k] is the first not yet past. */
typedef struct {
    int64_t *when;
    int64_t *start;
    int64_t *cursor;
} future;

static void pool_free(pool *p) {
    free(p->slot_key);
    free(p->blocked);
    free(p->pinned);
    free(p->spec);
    free(p->shadow);
    free(p->key_slot);
    lm_usage_free(&p->usage);
    memset(p, 0, sizeof *p);
}

static int pool_init(pool *p, int nslots, int nkeys, double param, char *err) {
    memset(p, 0, sizeof *p);
    p->nslots = nslots;
    p->nkeys = nkeys;
    p->slot_key = malloc(sizeof *p->slot_key * (size_t)nslots);
    p->blocked = calloc((size_t)nslots, 1);
    p->pinned = calloc((size_t)nslots, 1);
    p->spec = calloc((size_t)nslots, 1);
    p->shadow = calloc((size_t)nkeys, 1);
    p->key_slot = malloc(sizeof *p->key_slot * (size_t)nkeys);
    if (!p->slot_key || !p->blocked || !p->pinned || !p->spec || !p->shadow || !p->key_slot ||
        lm_usage_init(&p->usage, nkeys, err) != 0) {
        pool_free(p);
        return lm_errf(err, "out of memory for the replay");
    }
    p->usage.param = param;
    for (int s = 0; s < nslots; s++) p->slot_key[s] = -1;
    for (int k = 0; k < nkeys; k++) p->key_slot[k] = -1;
    return 0;
}

/* Next use of key k strictly after time `now`; INT64_MAX if none. */
static int64_t next_use(future *f, int k, int64_t now) {
    int64_t i = f->cursor[k];
    while (i < f->start[k + 1] && f->when[i] <= now) i++;
    f->cursor[k] = i;
    return i < f->start[k + 1] ? f->when[i] : INT64_MAX;
}

/* key_base: added to a slot's key to make the future's key (layer x experts + expert). */
static int belady_victim(const pool *p, future *f, int key_base, int64_t now) {
    int best = -1;
    int64_t best_next = -1;
    for (int s = 0; s < p->nslots; s++) {
        if (p->blocked[s]) continue;
        if (p->slot_key[s] < 0) return s;
        int64_t n = next_use(f, key_base + p->slot_key[s], now);
        if (n > best_next) best = s, best_next = n;
    }
    return best;
}

/* Puts key into slot s (evicting what it held). */
static void place(pool *p, int s, int key) {
    if (p->slot_key[s] >= 0) p->key_slot[p->slot_key[s]] = -1;
    p->slot_key[s] = key;
    p->key_slot[key] = s;
}

static int check_pair(const lm_trace_data *a, const lm_trace_data *b, const char *what, char *err) {
    if (a->n_layers != b->n_layers || a->n_experts != b->n_experts)
        return lm_errf(err, "the %s trace has %d layers of %d experts, the routing trace %d of %d", what, b->n_layers,
                       b->n_experts, a->n_layers, a->n_experts);
    return 0;
}

int lm_trace_merge_streams(const lm_trace_data *in, int streams, lm_trace_data *out, char *err) {
    memset(out, 0, sizeof *out);
    if (streams < 1 || streams > in->n_tokens)
        return lm_errf(err, "%d streams: the trace has %d tokens (at least one per stream)", streams, in->n_tokens);
    if ((int64_t)in->top_k * streams > (1 << 20))
        return lm_errf(err, "%d streams of top-%d picks is too many", streams, in->top_k);
    const int L = in->n_layers, K = in->top_k, n = in->n_tokens / streams, KS = K * streams;
    out->n_layers = L;
    out->n_experts = in->n_experts;
    out->top_k = KS;
    out->n_tokens = n;
    out->ids = malloc(sizeof *out->ids * (size_t)n * (size_t)L * (size_t)KS);
    uint8_t *seen = calloc((size_t)in->n_experts, 1);
    if (!out->ids || !seen) {
        free(seen);
        lm_trace_data_free(out);
        return lm_errf(err, "out of memory merging %d streams", streams);
    }
    for (int s = 0; s < n; s++)
        for (int l = 0; l < L; l++) {
            int32_t *dst = out->ids + ((size_t)s * (size_t)L + (size_t)l) * (size_t)KS;
            int m = 0;
            for (int q = 0; q < streams; q++) {
                const int32_t *src = in->ids + (((size_t)q * (size_t)n + (size_t)s) * (size_t)L + (size_t)l) * (size_t)K;
                for (int k = 0; k < K && src[k] >= 0; k++)
                    if (!seen[src[k]]) seen[src[k]] = 1, dst[m++] = src[k];
            }
            for (int i = 0; i < m; i++) seen[dst[i]] = 0;
            for (int i = m; i < KS; i++) dst[i] = -1;
        }
    free(seen);
    return 0;
}

int lm_replay(const lm_trace_data *routes, const lm_trace_data *predicted, const lm_trace_data *history,
              const lm_replay_options *o, lm_replay_result *r, char *err) {
    memset(r, 0, sizeof *r);
    const int L = routes->n_layers, E = routes->n_experts, K = routes->top_k, T = routes->n_tokens;
    if (o->capacity < K || (!o->global && o->capacity > E))
        return lm_errf(err, "capacity %d per layer: it must be between top_k %d and the %d experts", o->capacity, K, E);
    if (o->policy < 0 || o->policy >= LM_EVICT_COUNT) return lm_errf(err, "unknown eviction policy %d", (int)o->policy);
    if (o->lookahead < 0 || o->pin < 0 || o->skip < 0 || o->gate < 0) return lm_errf(err, "negative replay option");
    if (o->belady && o->lookahead) return lm_errf(err, "Belady's MIN is computed without lookahead");
    if (o->lookahead) {
        if (!predicted) return lm_errf(err, "lookahead needs a lookahead trace (predicted experts)");
        if (check_pair(routes, predicted, "lookahead", err)) return -1;
        if (predicted->n_tokens < T)
            return lm_errf(err, "the lookahead trace has %d tokens, the routing trace %d", predicted->n_tokens, T);
    }
    if (o->pin) {
        if (!history) return lm_errf(err, "pinning needs a history trace (which experts were used most)");
        if (check_pair(routes, history, "history", err)) return -1;
        if (o->pin > E - K) return lm_errf(err, "--pin %d: a layer has only %d experts", o->pin, E);
        if (o->pin > o->capacity - K)
            return lm_errf(err, "--pin %d leaves fewer than top_k %d free slots of %d", o->pin, K, o->capacity);
    }
    int n_moe = 0;
    for (int l = 0; l < L; l++) n_moe += routes->ids[(size_t)l * (size_t)K] >= 0;
    if (!n_moe) return lm_errf(err, "the routing trace has no MoE layer picks");
    const int npools = o->global ? 1 : L;
    const int nkeys = o->global ? L * E : E;
    int rc = -1;
    pool *pools = calloc((size_t)npools, sizeof *pools);
    future f = {0};
    lm_lookahead_gate gate = {0};
    int32_t *counts = NULL, *order = NULL;
    if (!pools) return lm_errf(err, "out of memory for the replay");
    for (int i = 0; i < npools; i++)
        if (pool_init(&pools[i], o->global ? o->capacity * n_moe : o->capacity, nkeys, o->param, err) != 0) goto done;
    size_t per_token = (size_t)L * (size_t)K;
    if (o->lookahead && lm_lookahead_gate_init(&gate, L, o->gate, err) != 0) goto done;
    if (o->belady) {
        /* Global keys (layer x E + expert) for the future in both layouts; a per-layer
         * pool looks its expert up as layer x E + expert too. */
        f.start = calloc((size_t)L * (size_t)E + 1, sizeof *f.start);
        f.cursor = calloc((size_t)L * (size_t)E, sizeof *f.cursor);
        f.when = malloc(sizeof *f.when * ((size_t)T * per_token + 1));
        if (!f.start || !f.cursor || !f.when) {
            lm_errf(err, "out of memory for the replay");
            goto done;
        }
        for (int t = 0; t < T; t++)
            for (int l = 0; l < L; l++)
                for (int k = 0; k < K; k++) {
                    int32_t e = routes->ids[(size_t)t * per_token + (size_t)l * (size_t)K + (size_t)k];
                    if (e >= 0) f.start[(size_t)l * (size_t)E + (size_t)e + 1]++;
                }
        for (size_t k = 0; k < (size_t)L * (size_t)E; k++) f.start[k + 1] += f.start[k];
        for (size_t k = 0; k < (size_t)L * (size_t)E; k++) f.cursor[k] = f.start[k];
        for (int t = 0; t < T; t++)
            for (int l = 0; l < L; l++)
                for (int k = 0; k < K; k++) {
                    int32_t e = routes->ids[(size_t)t * per_token + (size_t)l * (size_t)K + (size_t)k];
                    if (e >= 0) f.when[f.cursor[(size_t)l * (size_t)E + (size_t)e]++] = (int64_t)t * L + l;
                }
        for (size_t k = 0; k < (size_t)L * (size_t)E; k++) f.cursor[k] = f.start[k];
    }
    if (o->pin) {
        counts = calloc((size_t)E, sizeof *counts);
        order = malloc(sizeof *order * (size_t)E);
        if (!counts || !order) {
            lm_errf(err, "out of memory for the replay");
            goto done;
        }
        size_t hper = (size_t)history->n_layers * (size_t)history->top_k;
        for (int l = 0; l < L; l++) {
            if (routes->ids[(size_t)l * (size_t)K] < 0) continue;
            memset(counts, 0, sizeof *counts * (size_t)E);
            for (int t = 0; t < history->n_tokens; t++)
                for (int k = 0; k < history->top_k; k++) {
                    int32_t e = history->ids[(size_t)t * hper + (size_t)l * (size_t)history->top_k + (size_t)k];
                    if (e >= 0) counts[e]++;
                }
            for (int e = 0; e < E; e++) order[e] = e;
            /* the pin most used, ties to the lower id: a selection, E is small */
            for (int i = 0; i < o->pin && i < E; i++) {
                int best = i;
                for (int j = i + 1; j < E; j++)
                    if (counts[order[j]] > counts[order[best]]) best = j;
                int32_t tmp = order[i];
                order[i] = order[best];
                order[best] = tmp;
                pool *p = &pools[o->global ? 0 : l];
                int key = o->global ? l * E + order[i] : order[i];
                int s = 0;
                while (p->slot_key[s] >= 0) s++; /* pins < slots: checked above */
                place(p, s, key);
                p->pinned[s] = p->blocked[s] = 1;
            }
        }
    }
    for (int t = 0; t < T; t++) {
        const uint64_t now = (uint64_t)t + 1;
        const int counted = t >= o->skip;
        for (int l = 0; l < L; l++) {
            const int32_t *need = routes->ids + (size_t)t * per_token + (size_t)l * (size_t)K;
            if (need[0] < 0) continue; /* dense layer */
            pool *p = &pools[o->global ? 0 : l];
            const int base = o->global ? l * E : 0;
            const int64_t tnow = (int64_t)t * L + l;
            int ahead = 0, ahead_used = 0; /* lookahead reads issued (or held back) for this step, used */
            const int n = o->lookahead && o->lookahead > predicted->top_k ? predicted->top_k : o->lookahead;
            const int32_t *pred = o->lookahead ? predicted->ids + (size_t)t * (size_t)predicted->n_layers * (size_t)predicted->top_k +
                                                     (size_t)l * (size_t)predicted->top_k
                                               : NULL;
            if (o->lookahead && !lm_lookahead_gate_open(&gate, l)) {
                /* Gate closed: no reads; the predictions not cached are remembered to
                 * measure whether they would have been used. */
                for (int i = 0; i < n && pred[i] >= 0; i++)
                    if (p->key_slot[base + pred[i]] < 0 && !p->shadow[base + pred[i]]) p->shadow[base + pred[i]] = 1, ahead++;
            } else if (o->lookahead) {
                if (!o->unguarded)
                    for (int i = 0; i < n && pred[i] >= 0; i++) {
                        int s = p->key_slot[base + pred[i]];
                        if (s >= 0) p->blocked[s] = 1;
                    }
                for (int i = 0; i < n && pred[i] >= 0; i++) {
                    int key = base + pred[i];
                    if (p->key_slot[key] >= 0) continue;
                    int s = lm_policy_victim(o->policy, &p->usage, p->slot_key, p->blocked, p->nslots, now);
                    if (s < 0 && !o->unguarded) {
                        /* as cache.c: then a cached prediction ranked below this one may go */
                        for (int q = 0; q < p->nslots; q++) p->blocked[q] = p->pinned[q] || p->spec[q];
                        for (int j = 0; j < i; j++)
                            if (p->key_slot[base + pred[j]] >= 0) p->blocked[p->key_slot[base + pred[j]]] = 1;
                        s = lm_policy_victim(o->policy, &p->usage, p->slot_key, p->blocked, p->nslots, now);
                    }
                    if (s < 0) break;
                    place(p, s, key);
                    p->blocked[s] = p->spec[s] = 1; /* a read in flight */
                    ahead++;
                    if (counted) r->prefetched++;
                }
            }
            /* Hits first, so a miss never evicts an expert this step is about to use. */
            for (int k = 0; k < K && need[k] >= 0; k++) {
                int s = p->key_slot[base + need[k]];
                if (s < 0) continue;
                p->blocked[s] = 1;
                ahead_used += p->spec[s];
                if (counted) {
                    r->hits++;
                    r->prefetch_used += p->spec[s];
                }
                p->spec[s] = 0;
                lm_usage_touch(&p->usage, o->policy, base + need[k], now);
            }
            for (int k = 0; k < K && need[k] >= 0; k++) {
                int key = base + need[k];
                if (p->key_slot[key] >= 0) continue;
                ahead_used += p->shadow[key];
                int s = o->belady ? belady_victim(p, &f, o->global ? 0 : l * E, tnow)
                                  : lm_policy_victim(o->policy, &p->usage, p->slot_key, p->blocked, p->nslots, now);
                if (s < 0) {
                    lm_errf(err, "token %d layer %d: no slot to evict (capacity %d)", t, l, o->capacity);
                    goto done;
                }
                place(p, s, key);
                p->blocked[s] = 1;
                p->spec[s] = 0;
                if (counted) r->misses++;
                lm_usage_touch(&p->usage, o->policy, key, now);
            }
            for (int s = 0; s < p->nslots; s++) {
                p->blocked[s] = p->pinned[s];
                p->spec[s] = 0;
            }
            if (o->lookahead) {
                lm_lookahead_gate_observe(&gate, l, ahead, ahead_used);
                memset(p->shadow + base, 0, (size_t)E);
            }
        }
    }
    rc = 0;
done:
    for (int i = 0; i < npools; i++) pool_free(&pools[i]);
    free(pools);
    lm_lookahead_gate_free(&gate);
    free(f.when);
    free(f.start);
    free(f.cursor);
    free(counts);
    free(order);
    return rc;
}

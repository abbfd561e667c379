/* Expert cache and its reader threads. See cache.h for the contract.
 *
 * Reads: every expert is nparts byte ranges (9 for MLX files). Each range, or each
 * piece of at most chunk_bytes of a longer one, is one queue item, so the reader
 * threads (queue depth = their number) fetch the parts of all missing experts of a
 * layer in parallel, and a step that misses only one or two experts keeps more
 * reads in flight than its three big projections. The expert store (store.c) lays
 * the slots out and performs each request: direct reads land in the slot in place,
 * no bounce buffer, no copy.
 *
 * Failed reads: a slot whose read failed is never handed out as loaded. A demand
 * read that fails (the store has already tried it twice) is the waiting step's
 * error, and its slot is emptied; a background read (warm start, lookahead, pin)
 * that fails costs nothing but time: the expert is read again, on demand, by the
 * step that needs it.
 */
#include "experts/cache.h"
#include "experts/lookahead_gate.h"

#include "common/error.h"
#include "platform/platform.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int layer, slot, expert, part;
    int chunk;       /* which of the equal pieces of the part's aligned span (lm_store_part_requests) */
    int speculative; /* a router-lookahead read: cancelled if its layer runs without it */
} io_item;

typedef struct {
    const lm_expert_source *src;
    int capacity;
    uint64_t region[LM_EXPERT_MAX_PARTS]; /* where part p's region starts in a slot */
    uint64_t slot_bytes;                  /* a multiple of LM_DIRECT_ALIGN */
    char *slots;
    int32_t *slot_expert;   /* [capacity] expert held, -1 empty */
    uint8_t *busy;          /* [capacity] acquired by this step */
    uint8_t *blocked;       /* [capacity] busy, pinned, or a read still in flight: not evictable */
    uint8_t *speculative;   /* [capacity] filled by a lookahead read and not routed to since */
    uint8_t *shadow;        /* [E] predicted for this step and not cached, but not read: the
                             * lookahead gate was closed (measures what the reads would give) */
    int ahead, ahead_used;  /* this step's lookahead reads (or shadow ones) and of them routed to */
    int step_uncached;      /* this step's routed experts that were not cached before its
                             * lookahead: misses and lookahead reads used */
    float uncached;         /* step_uncached decayed over steps as the gate's counts: what a
                             * prediction could still help with (lm_cache_lookahead_useful) */
    uint8_t *pinned;        /* [capacity] holds a pinned expert: never evicted */
    int n_pinned;
    uint32_t *reads;        /* [E] times each expert was queued for reading */
    float *uses;            /* [E] times each expert was routed to (warm-start history) */
    atomic_int *pending;    /* [capacity] read requests still to finish; 0 = ready */
    int *requests;          /* [capacity] requests the slot's last read was split into */
    atomic_int *failed;     /* [capacity] a part failed */
    uint8_t *background;    /* [capacity] the slot's last read was queued in the background */
    char (*errmsg)[LM_ERR_LEN];
    int32_t *expert_slot;   /* [E] slot or -1 */
    int32_t *acquired;      /* slots acquired since the last release */
    int n_acquired;
    lm_usage usage;
    uint64_t hits, misses;
    uint64_t prefetched, prefetch_used, prefetch_cancelled;
    double wait_seconds;
    _Atomic uint64_t bytes_read;
    _Atomic uint64_t direct_bytes;
    _Atomic uint64_t read_ns;
} layer_cache;

struct lm_expert_cache {
    const lm_weights *w;
    const lm_expert_store *store;
    lm_cache_options opt;
    layer_cache *layers;
    uint64_t step;
    lm_lookahead_gate gate;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    io_item *queue; /* demand reads: the step is waiting for them */
    int qhead, qlen, qcap;
    io_item *bg;    /* background reads (lookahead in front, warm start behind): taken only
                       when no demand read waits */
    int bghead, bglen, bgcap;
    int stop;
    pthread_t *threads;
    int n_threads;
};

static uint64_t align_up(uint64_t x) { return (x + LM_DIRECT_ALIGN - 1) & ~(uint64_t)(LM_DIRECT_ALIGN - 1); }

/* ---- reading ---------------------------------------------------------------------- */

static void *reader_main(void *arg) {
    lm_expert_cache *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && c->qlen == 0 && c->bglen == 0) pthread_cond_wait(&c->cv_work, &c->mu);
        if (c->stop) break;
        io_item it;
        if (c->qlen) {
            it = c->queue[c->qhead];
            c->qhead = (c->qhead + 1) % c->qcap;
            c->qlen--;
        } else {
            it = c->bg[c->bghead];
            c->bghead = (c->bghead + 1) % c->bgcap;
            c->bglen--;
        }
        pthread_mutex_unlock(&c->mu);

        layer_cache *lc = &c->layers[it.layer];
        char err[LM_ERR_LEN] = "";
        double t0 = lm_now();
        int direct = 0;
        uint64_t bytes = 0;
        int rc = lm_store_read_request(c->store, it.layer, it.expert, it.part, it.chunk, c->opt.chunk_bytes,
                                       lc->slots + (size_t)it.slot * lc->slot_bytes, lc->region, &bytes, &direct, err);
        atomic_fetch_add(&lc->read_ns, (uint64_t)((lm_now() - t0) * 1e9));
        if (rc == 0) {
            atomic_fetch_add(&lc->bytes_read, bytes);
            if (direct) atomic_fetch_add(&lc->direct_bytes, bytes);
        } else if (atomic_exchange(&lc->failed[it.slot], 1) == 0) {
            memcpy(lc->errmsg[it.slot], err, LM_ERR_LEN); /* the first failure of the slot's read */
        }
        pthread_mutex_lock(&c->mu);
        if (atomic_fetch_sub(&lc->pending[it.slot], 1) == 1) pthread_cond_broadcast(&c->cv_done);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- setup ------------------------------------------------------------------------ */

uint64_t lm_cache_slot_bytes(const lm_weights *w, int l) {
    uint64_t region[LM_EXPERT_MAX_PARTS];
    return w->layers[l].is_moe ? lm_store_slot_layout(&w->layers[l].src, w->cfg.n_experts, region) : 0;
}

void lm_cache_slot_memory(const lm_expert_cache *c, int l, void **ptr, size_t *bytes) {
    const layer_cache *lc = &c->layers[l];
    *ptr = lc->slots;
    *bytes = lc->slots ? lc->slot_bytes * (size_t)lc->capacity : 0;
}

uint64_t lm_cache_bytes_for(const lm_weights *w, int capacity) {
    uint64_t b = 0;
    if (capacity > w->cfg.n_experts) capacity = w->cfg.n_experts;
    for (int l = 0; l < w->cfg.n_layers; l++)
        if (w->layers[l].is_moe && capacity > 0) b += lm_malloc_direct_size((size_t)capacity * lm_cache_slot_bytes(w, l));
    return b;
}

int lm_cache_create(lm_expert_cache **out, const lm_expert_store *store, const lm_cache_options *opt, char *err) {
    *out = NULL;
    const lm_weights *w = lm_store_weights(store);
    const lm_config *cfg = &w->cfg;
    if (opt->capacity < 1) return lm_errf(err, "expert cache capacity must be at least 1");
    lm_expert_cache *c = calloc(1, sizeof *c);
    if (!c) return lm_errf(err, "out of memory");
    c->w = w;
    c->store = store;
    c->opt = *opt;
    if (c->opt.io_threads < 1) c->opt.io_threads = LM_CACHE_IO_THREADS;
    if (c->opt.chunk_bytes == 0) c->opt.chunk_bytes = LM_CACHE_CHUNK_BYTES;
    c->opt.chunk_bytes = align_up(c->opt.chunk_bytes); /* whole blocks: direct reads stay aligned */
    if (c->opt.capacity > cfg->n_experts) c->opt.capacity = cfg->n_experts;
    int max_requests = 1; /* the most read requests one expert needs */
    for (int l = 0; l < cfg->n_layers; l++)
        for (int e = 0; w->layers[l].is_moe && e < cfg->n_experts; e++) {
            int n = lm_store_expert_requests(&w->layers[l].src, e, c->opt.chunk_bytes);
            if (n > max_requests) max_requests = n;
        }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv_work, NULL);
    pthread_cond_init(&c->cv_done, NULL);
    c->layers = calloc((size_t)cfg->n_layers, sizeof *c->layers);
    /* Demand reads are one layer's at a time: at most every slot's requests. */
    c->qcap = c->opt.capacity * max_requests + 16;
    c->queue = malloc(sizeof(io_item) * (size_t)c->qcap);
    c->bgcap = cfg->n_layers * c->opt.capacity * max_requests + 16;
    c->bg = malloc(sizeof(io_item) * (size_t)c->bgcap);
    if (!c->layers || !c->queue || !c->bg) goto oom;
    if (lm_lookahead_gate_init(&c->gate, cfg->n_layers, c->opt.lookahead_gate, err) != 0) goto fail;
    for (int l = 0; l < cfg->n_layers; l++) {
        layer_cache *lc = &c->layers[l];
        if (!w->layers[l].is_moe) continue;
        int cap = c->opt.capacity, E = cfg->n_experts;
        lc->src = &w->layers[l].src;
        lc->capacity = cap;
        lc->slot_bytes = lm_store_slot_layout(lc->src, E, lc->region);
        lc->slots = lm_malloc_direct(lc->slot_bytes * (size_t)cap, "expert cache slots", err);
        if (!lc->slots) goto fail;
        lc->slot_expert = malloc(sizeof(int32_t) * (size_t)cap);
        lc->busy = calloc((size_t)cap, 1);
        lc->blocked = calloc((size_t)cap, 1);
        lc->speculative = calloc((size_t)cap, 1);
        lc->shadow = calloc((size_t)E, 1);
        lc->uncached = LM_LOOKAHEAD_USEFUL_START;
        lc->pinned = calloc((size_t)cap, 1);
        lc->reads = calloc((size_t)E, sizeof(uint32_t));
        lc->uses = calloc((size_t)E, sizeof(float));
        lc->pending = calloc((size_t)cap, sizeof(atomic_int));
        lc->requests = calloc((size_t)cap, sizeof(int));
        lc->failed = calloc((size_t)cap, sizeof(atomic_int));
        lc->background = calloc((size_t)cap, 1);
        lc->errmsg = calloc((size_t)cap, LM_ERR_LEN);
        lc->expert_slot = malloc(sizeof(int32_t) * (size_t)E);
        lc->acquired = malloc(sizeof(int32_t) * (size_t)cap);
        if (!lc->slot_expert || !lc->busy || !lc->blocked || !lc->speculative || !lc->shadow || !lc->pinned || !lc->reads || !lc->uses || !lc->pending || !lc->requests || !lc->failed || !lc->background || !lc->errmsg || !lc->expert_slot ||
            !lc->acquired)
            goto oom;
        for (int s = 0; s < cap; s++) lc->slot_expert[s] = -1;
        for (int e = 0; e < E; e++) lc->expert_slot[e] = -1;
        if (lm_usage_init(&lc->usage, E, err)) goto fail;
    }
    c->threads = calloc((size_t)c->opt.io_threads, sizeof(pthread_t));
    if (!c->threads) goto oom;
    for (int i = 0; i < c->opt.io_threads; i++) {
        if (pthread_create(&c->threads[i], NULL, reader_main, c) != 0) {
            lm_errf(err, "cannot start reader thread %d", i);
            goto fail;
        }
        c->n_threads++;
    }
    *out = c;
    return 0;
oom:
    lm_errf(err, "out of memory creating the expert cache");
fail:
    lm_cache_free(c);
    return -1;
}

void lm_cache_free(lm_expert_cache *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cv_work);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->n_threads; i++) pthread_join(c->threads[i], NULL);
    free(c->threads);
    if (c->layers)
        for (int l = 0; l < c->w->cfg.n_layers; l++) {
            layer_cache *lc = &c->layers[l];
            lm_free_aligned(lc->slots);
            free(lc->slot_expert);
            free(lc->busy);
            free(lc->blocked);
            free(lc->speculative);
            free(lc->shadow);
            free(lc->pinned);
            free(lc->reads);
            free(lc->uses);
            free(lc->pending);
            free(lc->requests);
            free(lc->failed);
            free(lc->background);
            free(lc->errmsg);
            free(lc->expert_slot);
            free(lc->acquired);
            lm_usage_free(&lc->usage);
        }
    free(c->layers);
    lm_lookahead_gate_free(&c->gate);
    free(c->queue);
    free(c->bg);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv_work);
    pthread_cond_destroy(&c->cv_done);
    free(c);
}

/* ---- queueing (called with c->mu held) ------------------------------------------- */

typedef enum { TO_DEMAND, TO_BG_BACK, TO_BG_FRONT } queue_place;

/* Queues every read request of expert e into `slot` of layer l and marks the slot
 * pending. TO_BG_FRONT puts them in front of the background queue, in order. */
static int queue_expert(lm_expert_cache *c, int l, int slot, int e, queue_place where, int speculative) {
    layer_cache *lc = &c->layers[l];
    const lm_expert_source *s = lc->src;
    int n = lm_store_expert_requests(s, e, c->opt.chunk_bytes);
    lc->reads[e]++;
    lc->background[slot] = where != TO_DEMAND;
    atomic_store(&lc->failed[slot], 0);
    atomic_store(&lc->pending[slot], n);
    lc->requests[slot] = n;
    if (where == TO_BG_FRONT) {
        c->bghead = (c->bghead + c->bgcap - n) % c->bgcap;
        c->bglen += n;
    }
    int k = 0;
    for (int p = 0; p < s->nparts; p++)
        for (int ch = 0, nc = lm_store_part_requests(s, e, p, c->opt.chunk_bytes); ch < nc; ch++, k++) {
            io_item it = {l, slot, e, p, ch, speculative};
            if (where == TO_DEMAND) c->queue[(c->qhead + c->qlen++) % c->qcap] = it;
            else if (where == TO_BG_BACK) c->bg[(c->bghead + c->bglen++) % c->bgcap] = it;
            else c->bg[(c->bghead + k) % c->bgcap] = it;
        }
    return n;
}

/* Wakes as many idle readers as there are new requests (waking all of them for a
 * step's one or two misses costs the compute thread's cores more than it gains). */
static void wake_readers(lm_expert_cache *c, int n_new) {
    if (n_new >= c->n_threads) pthread_cond_broadcast(&c->cv_work);
    else
        for (int i = 0; i < n_new; i++) pthread_cond_signal(&c->cv_work);
}

/* Whether the background queue has room for expert e of layer l's requests. */
static int bg_room(const lm_expert_cache *c, int l, int e) {
    return c->bglen + lm_store_expert_requests(c->layers[l].src, e, c->opt.chunk_bytes) <= c->bgcap;
}

/* ---- background queue maintenance (called with c->mu held) ------------------------- */

/* Read requests of (layer, slot) still waiting in the background queue. */
static int bg_parts_queued(const lm_expert_cache *c, int l, int slot) {
    int n = 0;
    for (int k = 0; k < c->bglen; k++) {
        const io_item *it = &c->bg[(c->bghead + k) % c->bgcap];
        n += it->layer == l && it->slot == slot;
    }
    return n;
}

/* Moves the background items of layer l whose slot is (busy = 1) or is not (busy = 0)
 * acquired by this step to the demand queue, keeping the others in order. */
static void promote_bg(lm_expert_cache *c, int l, const layer_cache *lc, int busy) {
    int w = 0, moved = 0; /* requests moved */
    for (int k = 0; k < c->bglen; k++) {
        io_item it = c->bg[(c->bghead + k) % c->bgcap];
        if (it.layer == l && (lc->busy[it.slot] != 0) == busy) {
            c->queue[(c->qhead + c->qlen) % c->qcap] = it;
            c->qlen++;
            moved++;
        } else {
            c->bg[(c->bghead + w++) % c->bgcap] = it;
        }
    }
    c->bglen = w;
    wake_readers(c, moved);
}

/* Slots the policy may not evict: acquired by this step, a read still in flight, or
 * pinned. */
static void mark_blocked(layer_cache *lc) {
    for (int s = 0; s < lc->capacity; s++)
        lc->blocked[s] = lc->busy[s] || lc->pinned[s] || atomic_load(&lc->pending[s]) > 0;
}

/* A slot whose read failed holds nothing: it is emptied (and unpinned, so the slot
 * is not lost to the layer) and a later step reads the expert again. */
static void forget_slot(layer_cache *lc, int s) {
    if (lc->slot_expert[s] >= 0) lc->expert_slot[lc->slot_expert[s]] = -1;
    lc->slot_expert[s] = -1;
    if (lc->pinned[s]) lc->n_pinned--;
    lc->pinned[s] = 0;
}

/* Cancels an unstarted lookahead read: its parts leave the background queue and its
 * slot becomes empty again. */
static void drop_speculative(lm_expert_cache *c, layer_cache *lc, int l, int slot) {
    int w = 0;
    for (int k = 0; k < c->bglen; k++) {
        io_item it = c->bg[(c->bghead + k) % c->bgcap];
        if (it.layer != l || it.slot != slot) c->bg[(c->bghead + w++) % c->bgcap] = it;
    }
    c->bglen = w;
    if (lc->slot_expert[slot] >= 0) lc->expert_slot[lc->slot_expert[slot]] = -1;
    lc->slot_expert[slot] = -1;
    lc->speculative[slot] = 0;
    atomic_store(&lc->pending[slot], 0);
    lc->prefetch_cancelled++;
}

/* Every slot this step does not use is still being filled by a background read (warm
 * start or lookahead) that has started: rather than stall, those reads are moved ahead
 * of all other background work and awaited, after which their slots can be evicted
 * (pinned ones excepted). Returns 1 if any slot was freed up that way. Called with
 * c->mu held. */
static int finish_background_reads(lm_expert_cache *c, int l, layer_cache *lc) {
    int any = 0;
    for (int s = 0; s < lc->capacity; s++) any |= !lc->busy[s] && !lc->pinned[s] && atomic_load(&lc->pending[s]) > 0;
    if (!any) return 0;
    promote_bg(c, l, lc, 0);
    for (int s = 0; s < lc->capacity; s++)
        while (!lc->busy[s] && !lc->pinned[s] && atomic_load(&lc->pending[s]) > 0) pthread_cond_wait(&c->cv_done, &c->mu);
    mark_blocked(lc);
    return 1;
}

/* ---- the compute thread's side ---------------------------------------------------- */

/* Whether slot s's last read is over and failed (a background read nobody waited for). */
static int read_failed(layer_cache *lc, int s) {
    return atomic_load(&lc->pending[s]) == 0 && atomic_load(&lc->failed[s]) != 0;
}

void lm_cache_begin_step(lm_expert_cache *c) {
    /* The step that ended is each layer's one observation for the lookahead gate and for
     * lm_cache_lookahead_useful. */
    for (int l = 0; l < c->w->cfg.n_layers; l++) {
        layer_cache *lc = &c->layers[l];
        lc->uncached = lc->uncached * (float)LM_LOOKAHEAD_GATE_DECAY + (float)lc->step_uncached;
        lc->step_uncached = 0;
        if (!lc->ahead) continue;
        lm_lookahead_gate_observe(&c->gate, l, lc->ahead, lc->ahead_used);
        memset(lc->shadow, 0, (size_t)c->w->cfg.n_experts);
        lc->ahead = lc->ahead_used = 0;
    }
    c->step++;
}

int lm_cache_acquire(lm_expert_cache *c, int l, const int32_t *need, int n, uint8_t *status) {
    layer_cache *lc = &c->layers[l];
    uint64_t now = c->step;
    int got = 0, queued = 0; /* requests queued */
    /* Hits first, so a miss never evicts an expert this step is about to use. */
    for (int i = 0; i < n; i++) {
        int s = lc->expert_slot[need[i]];
        status[i] = 0;
        lc->uses[need[i]] += 1.0f;
        if (lc->shadow[need[i]]) lc->ahead_used++, lc->shadow[need[i]] = 0;
        if (s >= 0 && !lc->busy[s] && !read_failed(lc, s)) {
            lc->busy[s] = 1;
            lc->acquired[lc->n_acquired++] = s;
            status[i] = 1;
            lc->hits++;
            if (lc->speculative[s]) lc->prefetch_used++, lc->ahead_used++, lc->step_uncached++;
            lc->speculative[s] = 0;
            lm_usage_touch(&lc->usage, c->opt.policy, need[i], now);
            got++;
        }
    }
    pthread_mutex_lock(&c->mu);
    /* Background reads of this layer: the ones this step needs become demand reads
     * (they would otherwise wait behind the warm start); lookahead reads it does not
     * need are dropped while none of their parts has started, freeing disk time and
     * their slots. */
    for (int s = 0; s < lc->capacity; s++)
        if (lc->speculative[s] && !lc->busy[s] && atomic_load(&lc->pending[s]) == lc->requests[s] &&
            bg_parts_queued(c, l, s) == lc->requests[s])
            drop_speculative(c, lc, l, s);
    promote_bg(c, l, lc, 1);
    mark_blocked(lc);
    for (int i = 0; i < n; i++) {
        if (status[i]) continue;
        /* An expert whose background read failed still owns its slot (a pinned one
         * stays pinned): it is read again there. */
        int s = lc->expert_slot[need[i]];
        if (s < 0 || lc->busy[s])
            s = lm_policy_victim(c->opt.policy, &lc->usage, lc->slot_expert, lc->blocked, lc->capacity, now);
        if (s < 0 && finish_background_reads(c, l, lc))
            s = lm_policy_victim(c->opt.policy, &lc->usage, lc->slot_expert, lc->blocked, lc->capacity, now);
        if (s < 0) break; /* every slot in use this step: the caller goes on in waves */
        if (lc->slot_expert[s] >= 0) lc->expert_slot[lc->slot_expert[s]] = -1;
        lc->slot_expert[s] = need[i];
        lc->expert_slot[need[i]] = s;
        lc->busy[s] = 1;
        lc->blocked[s] = 1;
        lc->speculative[s] = 0;
        lc->acquired[lc->n_acquired++] = s;
        queued += queue_expert(c, l, s, need[i], TO_DEMAND, 0);
        status[i] = 2;
        lc->misses++;
        lc->step_uncached++;
        lm_usage_touch(&lc->usage, c->opt.policy, need[i], now);
        got++;
    }
    wake_readers(c, queued);
    pthread_mutex_unlock(&c->mu);
    return got;
}

int lm_cache_wait(lm_expert_cache *c, int l, int e, lm_expert *view, char *err) {
    layer_cache *lc = &c->layers[l];
    int s = lc->expert_slot[e];
    if (s < 0 || !lc->busy[s]) return lm_errf(err, "expert %d of layer %d was not acquired", e, l);
    if (atomic_load(&lc->pending[s]) > 0) {
        double t0 = lm_now();
        pthread_mutex_lock(&c->mu);
        while (atomic_load(&lc->pending[s]) > 0) pthread_cond_wait(&c->cv_done, &c->mu);
        pthread_mutex_unlock(&c->mu);
        lc->wait_seconds += lm_now() - t0;
    }
    if (atomic_load(&lc->failed[s]) && lc->background[s]) {
        /* A hit on a background read that failed: this step reads it again, on
         * demand; only a failure of that read is the step's error. */
        double t0 = lm_now();
        pthread_mutex_lock(&c->mu);
        wake_readers(c, queue_expert(c, l, s, e, TO_DEMAND, 0));
        while (atomic_load(&lc->pending[s]) > 0) pthread_cond_wait(&c->cv_done, &c->mu);
        pthread_mutex_unlock(&c->mu);
        lc->wait_seconds += lm_now() - t0;
        lc->hits--;
        lc->misses++;
    }
    if (atomic_load(&lc->failed[s])) {
        lm_errf(err, "%s", lc->errmsg[s]);
        forget_slot(lc, s);
        return -1;
    }
    const char *part[LM_EXPERT_MAX_PARTS] = {0};
    const char *slot = lc->slots + (size_t)s * lc->slot_bytes;
    for (int p = 0; p < lc->src->nparts; p++) part[p] = slot + lc->region[p] + lm_store_part_shift(lc->src, e, p);
    *view = lm_expert_view_parts(lc->src, part);
    return 0;
}

int lm_cache_ready(const lm_expert_cache *c, int l, int e) {
    const layer_cache *lc = &c->layers[l];
    int s = lc->expert_slot[e];
    return s >= 0 && atomic_load(&lc->pending[s]) == 0;
}

void lm_cache_release_layer(lm_expert_cache *c, int l) {
    layer_cache *lc = &c->layers[l];
    /* A slot whose read is still in flight (an error path returned early) stays
     * busy until its parts land, so its memory is never handed to another expert
     * while a reader writes it. */
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < lc->n_acquired; i++)
        while (atomic_load(&lc->pending[lc->acquired[i]]) > 0) pthread_cond_wait(&c->cv_done, &c->mu);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < lc->n_acquired; i++) {
        int s = lc->acquired[i];
        lc->busy[s] = 0;
        if (atomic_load(&lc->failed[s]) && lc->slot_expert[s] >= 0) forget_slot(lc, s);
    }
    lc->n_acquired = 0;
}

void lm_cache_get_counters(const lm_expert_cache *c, int l, lm_cache_counters *out) {
    memset(out, 0, sizeof *out);
    for (int i = 0; i < c->w->cfg.n_layers; i++) {
        if (l >= 0 && i != l) continue;
        layer_cache *lc = &c->layers[i];
        out->hits += lc->hits;
        out->misses += lc->misses;
        out->bytes_read += atomic_load(&lc->bytes_read);
        out->direct_bytes += atomic_load(&lc->direct_bytes);
        out->read_seconds += (double)atomic_load(&lc->read_ns) * 1e-9;
        out->wait_seconds += lc->wait_seconds;
        out->prefetched += lc->prefetched;
        out->prefetch_used += lc->prefetch_used;
        out->prefetch_cancelled += lc->prefetch_cancelled;
    }
}

int lm_cache_capacity(const lm_expert_cache *c) { return c->opt.capacity; }

int lm_cache_prefetch(lm_expert_cache *c, int l, const int32_t *experts, int n) {
    layer_cache *lc = &c->layers[l];
    int queued = 0, n_requests = 0;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < n; i++) {
        int e = experts[i];
        if (lc->expert_slot[e] >= 0) continue;
        int s = -1;
        for (int k = 0; k < lc->capacity && s < 0; k++)
            if (lc->slot_expert[k] < 0 && !lc->busy[k] && atomic_load(&lc->pending[k]) == 0) s = k;
        if (s < 0) break; /* only empty slots: a warm start never evicts */
        if (!bg_room(c, l, e)) break;
        lc->slot_expert[s] = e;
        lc->expert_slot[e] = s;
        n_requests += queue_expert(c, l, s, e, TO_BG_BACK, 0);
        queued++;
    }
    wake_readers(c, n_requests);
    pthread_mutex_unlock(&c->mu);
    return queued;
}

const float *lm_cache_uses(const lm_expert_cache *c, int l) { return c->layers[l].uses; }

int lm_cache_lookahead_useful(const lm_expert_cache *c, int l) {
    return c->layers[l].uncached >= LM_LOOKAHEAD_USEFUL_MIN;
}

int lm_cache_prefetch_lookahead(lm_expert_cache *c, int l, const int32_t *experts, int n) {
    layer_cache *lc = &c->layers[l];
    uint64_t now = c->step;
    int queued = 0, n_requests = 0;
    if (!lm_lookahead_gate_open(&c->gate, l)) {
        /* Gate closed: nothing is read; the predictions not cached are remembered, to
         * count at the layer's step whether they would have been used. */
        for (int i = 0; i < n; i++)
            if (lc->expert_slot[experts[i]] < 0 && !lc->shadow[experts[i]]) lc->shadow[experts[i]] = 1, lc->ahead++;
        return 0;
    }
    pthread_mutex_lock(&c->mu);
    mark_blocked(lc);
    /* Lookahead-aware: a read for a predicted expert evicts another predicted expert
     * that is cached only when nothing else can go, and then only one ranked below it
     * (experts[] is best first for one token) (bench/RESULTS.md, "Eviction policies"). */
    for (int i = 0; i < n; i++)
        if (lc->expert_slot[experts[i]] >= 0) lc->blocked[lc->expert_slot[experts[i]]] = 1;
    for (int i = 0; i < n; i++) {
        int e = experts[i];
        if (lc->expert_slot[e] >= 0) continue;
        int s = lm_policy_victim(c->opt.policy, &lc->usage, lc->slot_expert, lc->blocked, lc->capacity, now);
        if (s < 0) {
            mark_blocked(lc); /* in use, pinned, being read (these reads included) */
            for (int j = 0; j < i; j++)
                if (lc->expert_slot[experts[j]] >= 0) lc->blocked[lc->expert_slot[experts[j]]] = 1;
            s = lm_policy_victim(c->opt.policy, &lc->usage, lc->slot_expert, lc->blocked, lc->capacity, now);
        }
        if (s < 0) break;
        if (!bg_room(c, l, e)) break;
        if (lc->slot_expert[s] >= 0) lc->expert_slot[lc->slot_expert[s]] = -1;
        lc->slot_expert[s] = e;
        lc->expert_slot[e] = s;
        lc->blocked[s] = 1;
        lc->speculative[s] = 1;
        /* In front of the warm start: the next layer is about to need these. */
        n_requests += queue_expert(c, l, s, e, TO_BG_FRONT, 1);
        lc->prefetched++;
        lc->ahead++;
        queued++;
    }
    wake_readers(c, n_requests);
    pthread_mutex_unlock(&c->mu);
    return queued;
}

int lm_cache_io_threads(const lm_expert_cache *c) { return c->opt.io_threads; }

int lm_cache_pin(lm_expert_cache *c, int l, const int32_t *experts, int n) {
    layer_cache *lc = &c->layers[l];
    int pinned = 0, n_requests = 0;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < n; i++) {
        int e = experts[i], s = lc->expert_slot[e];
        if (s < 0) {
            for (int k = 0; k < lc->capacity && s < 0; k++)
                if (lc->slot_expert[k] < 0 && !lc->busy[k] && atomic_load(&lc->pending[k]) == 0) s = k;
            if (s < 0 || !bg_room(c, l, e)) break; /* pins take empty slots only */
            lc->slot_expert[s] = e;
            lc->expert_slot[e] = s;
            n_requests += queue_expert(c, l, s, e, TO_BG_BACK, 0);
        }
        if (!lc->pinned[s]) {
            lc->pinned[s] = 1;
            lc->speculative[s] = 0;
            lc->n_pinned++;
            pinned++;
        }
    }
    wake_readers(c, n_requests);
    pthread_mutex_unlock(&c->mu);
    return pinned;
}

int lm_cache_pinned(const lm_expert_cache *c, int l) { return c->layers[l].n_pinned; }

int lm_cache_is_pinned(const lm_expert_cache *c, int l, int e) {
    const layer_cache *lc = &c->layers[l];
    int s = lc->expert_slot[e];
    return s >= 0 && lc->pinned[s];
}

uint32_t lm_cache_expert_reads(const lm_expert_cache *c, int l, int e) { return c->layers[l].reads[e]; }

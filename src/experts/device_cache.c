/* The expert cache in device memory: slots in backend buffers, filled by uploads
 * from host views (device_cache.h). */
#include "experts/device_cache.h"

#include "common/error.h"
#include "platform/platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    lm_buf slots;           /* capacity x slot_bytes, in the backend's memory */
    uint64_t slot_bytes;    /* the layer's resident slot: parts at src.part_off */
    int32_t *slot_expert;   /* [capacity] expert held, -1 = empty */
    int32_t *expert_slot;   /* [E] slot holding the expert, -1 = none */
    uint8_t *busy;          /* [capacity] acquired by this step */
    uint8_t *pinned;        /* [E] experts never evicted (lm_device_cache_pin) */
    uint8_t *blocked;       /* [capacity] busy or pinned: not a victim */
    float *uses;            /* [E] steps that needed each expert */
    int32_t *acquired;      /* slots acquired since the last release */
    int n_acquired;
    int resident;           /* slots holding an expert */
    lm_usage usage;
    lm_device_cache_counters counters;
} device_layer;

struct lm_device_cache {
    lm_backend *be;
    const lm_weights *w;
    int capacity;
    lm_evict_policy policy;
    uint64_t step;
    device_layer *layers; /* [n_layers]; empty for dense layers */
    /* a backend whose uploads finish when they return (the CPU): their time and bytes
     * since the last lm_device_cache_upload_timing */
    double sync_seconds;
    uint64_t sync_bytes;
};

uint64_t lm_device_cache_bytes_for(const lm_weights *w, int capacity) {
    uint64_t b = 0;
    for (int l = 0; l < w->cfg.n_layers; l++)
        if (w->layers[l].is_moe) b += w->layers[l].src.slot_bytes * (uint64_t)capacity;
    return b;
}

void lm_expert_parts_of(const lm_expert_source *src, const lm_expert *v, const char *part[LM_EXPERT_MAX_PARTS]) {
    const lm_mat *mats[3] = {&v->gate, &v->up, &v->down};
    for (int p = 0; p < LM_EXPERT_MAX_PARTS; p++) part[p] = NULL;
    for (int m = 0; m < 3; m++) {
        const void *field[3] = {mats[m]->data, mats[m]->scales, mats[m]->biases};
        int nfields = src->tmpl[m].dtype == LM_DT_U32 ? 3 : (src->tmpl[m].dtype == LM_DT_MXFP4_SPLIT ? 2 : 1);
        for (int k = 0; k < nfields; k++) {
            int p = src->field_part[m][k];
            if (field[k] && p >= 0 && p < src->nparts && !part[p])
                part[p] = (const char *)field[k] - src->field_delta[m][k];
        }
    }
}

void lm_device_cache_free(lm_device_cache *c) {
    if (!c) return;
    for (int l = 0; c->layers && l < c->w->cfg.n_layers; l++) {
        device_layer *d = &c->layers[l];
        lm_backend_release(c->be, &d->slots);
        free(d->slot_expert);
        free(d->expert_slot);
        free(d->busy);
        free(d->pinned);
        free(d->blocked);
        free(d->uses);
        free(d->acquired);
        lm_usage_free(&d->usage);
    }
    free(c->layers);
    free(c);
}

int lm_device_cache_create(lm_device_cache **out, lm_backend *be, const lm_weights *w, int capacity,
                           lm_evict_policy policy, char *err) {
    *out = NULL;
    const lm_config *cfg = &w->cfg;
    if (capacity < 1 || capacity > cfg->n_experts)
        return lm_errf(err, "a device expert cache of %d slots per layer (1 to %d)", capacity, cfg->n_experts);
    lm_device_cache *c = calloc(1, sizeof *c);
    if (!c) return lm_errf(err, "out of memory");
    c->be = be;
    c->w = w;
    c->capacity = capacity;
    c->policy = policy;
    c->layers = calloc((size_t)cfg->n_layers, sizeof *c->layers);
    if (!c->layers) {
        free(c);
        return lm_errf(err, "out of memory");
    }
    int E = cfg->n_experts;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!w->layers[l].is_moe) continue;
        device_layer *d = &c->layers[l];
        d->slot_bytes = w->layers[l].src.slot_bytes;
        d->slot_expert = malloc(sizeof(int32_t) * (size_t)capacity);
        d->expert_slot = malloc(sizeof(int32_t) * (size_t)E);
        d->busy = calloc((size_t)capacity, 1);
        d->pinned = calloc((size_t)E, 1);
        d->blocked = calloc((size_t)capacity, 1);
        d->uses = calloc((size_t)E, sizeof(float));
        d->acquired = malloc(sizeof(int32_t) * (size_t)capacity);
        if (!d->slot_expert || !d->expert_slot || !d->busy || !d->pinned || !d->blocked || !d->uses || !d->acquired) {
            lm_device_cache_free(c);
            return lm_errf(err, "out of memory");
        }
        if (lm_usage_init(&d->usage, E, err) != 0) {
            lm_device_cache_free(c);
            return -1;
        }
        for (int s = 0; s < capacity; s++) d->slot_expert[s] = -1;
        for (int e = 0; e < E; e++) d->expert_slot[e] = -1;
        char what[64];
        snprintf(what, sizeof what, "the device expert cache of layer %d", l);
        if (lm_backend_alloc(be, &d->slots, d->slot_bytes * (size_t)capacity, what, err) != 0) {
            lm_device_cache_free(c);
            return -1;
        }
    }
    *out = c;
    return 0;
}

void lm_device_cache_begin_step(lm_device_cache *c) { c->step++; }

int lm_device_cache_acquire(lm_device_cache *c, int l, const int32_t *need, int n, const uint8_t *elsewhere,
                            uint8_t *status) {
    device_layer *d = &c->layers[l];
    uint64_t now = c->step + 1; /* steps count from 1 in lm_usage */
    int got = 0;
    /* hits first, so that no slot a needed expert already holds is taken for a miss */
    for (int i = 0; i < n; i++) {
        int s = d->expert_slot[need[i]];
        status[i] = 0;
        if (s < 0 || d->busy[s]) continue;
        d->busy[s] = d->blocked[s] = 1;
        d->acquired[d->n_acquired++] = s;
        lm_usage_touch(&d->usage, c->policy, need[i], now);
        d->counters.hits++;
        d->uses[need[i]] += 1.0f; /* counted once: in the wave that gives it a status */
        status[i] = 1;
        got++;
    }
    for (int i = 0; i < n; i++) {
        if (status[i] || d->expert_slot[need[i]] >= 0) continue; /* a hit, or held by a busy slot: not possible */
        if (elsewhere && elsewhere[i]) {
            lm_usage_touch(&d->usage, c->policy, need[i], now);
            d->uses[need[i]] += 1.0f;
            status[i] = 3;
            continue;
        }
        int s = lm_policy_victim(c->policy, &d->usage, d->slot_expert, d->blocked, c->capacity, now);
        if (s < 0) continue; /* every slot in use by this step: a later wave */
        if (d->slot_expert[s] >= 0) {
            d->expert_slot[d->slot_expert[s]] = -1;
            d->resident--;
        }
        d->slot_expert[s] = -1; /* empty until filled */
        d->busy[s] = d->blocked[s] = 1;
        d->acquired[d->n_acquired++] = s;
        /* reserved for need[i]: remembered through expert_slot, not yet resident */
        d->expert_slot[need[i]] = s;
        lm_usage_touch(&d->usage, c->policy, need[i], now);
        d->uses[need[i]] += 1.0f;
        status[i] = 2;
        got++;
    }
    return got;
}

lm_expert lm_device_cache_view(const lm_device_cache *c, int l, int e) {
    const device_layer *d = &c->layers[l];
    const char *slot = (const char *)d->slots.ptr + (size_t)d->expert_slot[e] * d->slot_bytes;
    return lm_expert_view(&c->w->layers[l].src, slot);
}

int lm_device_cache_fence(lm_device_cache *c, char *err) {
    lm_backend *be = c->be;
    if (be->ops->upload_fence && be->ops->upload_fence(be) != 0)
        return lm_errf(err, "%s backend: %s", be->ops->name, lm_backend_error(be));
    return 0;
}

int lm_device_cache_fill(lm_device_cache *c, int l, int e, const lm_expert *host, int resident_slot, lm_expert *dev,
                         char *err) {
    device_layer *d = &c->layers[l];
    const lm_expert_source *src = &c->w->layers[l].src;
    lm_backend *be = c->be;
    int s = d->expert_slot[e];
    if (s < 0 || d->slot_expert[s] >= 0 || !d->busy[s])
        return lm_errf(err, "layer %d expert %d: filled without a slot acquired for it", l, e);
    const char *part[LM_EXPERT_MAX_PARTS];
    lm_expert_parts_of(src, host, part);
    char *slot = (char *)d->slots.ptr + (size_t)s * d->slot_bytes;
    uint64_t bytes = 0;
    int (*up)(lm_backend *, void *, const void *, size_t) = be->ops->upload_async ? be->ops->upload_async : be->ops->upload;
    double t0 = be->ops->upload_async ? 0.0 : lm_now();
    /* A resident host expert lies as the slot does (parts at part_off): one copy. */
    int same_layout = resident_slot && part[0] != NULL;
    for (int p = 1; p < src->nparts && same_layout; p++)
        same_layout = part[p] == part[0] - src->part_off[0] + src->part_off[p];
    if (same_layout) {
        const char *base = part[0] - src->part_off[0];
        if (up(be, slot, base, (size_t)d->slot_bytes) != 0) {
            d->expert_slot[e] = -1;
            return lm_errf(err, "uploading layer %d expert %d: %s backend: %s", l, e, be->ops->name,
                           lm_backend_error(be));
        }
        bytes = d->slot_bytes;
    }
    for (int p = 0; p < src->nparts && !same_layout; p++) {
        int rc = part[p] ? up(be, slot + src->part_off[p], part[p], (size_t)src->part_len[p]) : -1;
        if (rc != 0) {
            d->expert_slot[e] = -1; /* the slot stays empty (and busy until release) */
            if (!part[p]) return lm_errf(err, "layer %d expert %d: part %d of its host view not found", l, e, p);
            return lm_errf(err, "uploading layer %d expert %d: %s backend: %s", l, e, be->ops->name,
                           lm_backend_error(be));
        }
        bytes += src->part_len[p];
    }
    d->slot_expert[s] = e;
    d->resident++;
    d->counters.uploads++;
    d->counters.upload_bytes += bytes;
    if (!be->ops->upload_async) {
        c->sync_seconds += lm_now() - t0;
        c->sync_bytes += bytes;
    }
    *dev = lm_expert_view(src, slot);
    return 0;
}

int lm_device_cache_upload_timing(lm_device_cache *c, double *seconds, uint64_t *bytes) {
    lm_backend *be = c->be;
    if (be->ops->upload_async) return be->ops->upload_timing ? be->ops->upload_timing(be, seconds, bytes) : 0;
    if (!c->sync_bytes) return 0;
    *seconds = c->sync_seconds;
    *bytes = c->sync_bytes;
    c->sync_seconds = 0;
    c->sync_bytes = 0;
    return 1;
}

int lm_device_cache_wait_uploads(lm_device_cache *c, char *err) {
    lm_backend *be = c->be;
    if (be->ops->uploads_wait && be->ops->uploads_wait(be) != 0)
        return lm_errf(err, "%s backend: %s", be->ops->name, lm_backend_error(be));
    return 0;
}

void lm_device_cache_release_layer(lm_device_cache *c, int l) {
    device_layer *d = &c->layers[l];
    for (int i = 0; i < d->n_acquired; i++) {
        int s = d->acquired[i];
        d->busy[s] = 0;
        d->blocked[s] = d->slot_expert[s] >= 0 && d->pinned[d->slot_expert[s]];
        /* a slot reserved but never filled (a failed or abandoned fill) is given up */
        if (d->slot_expert[s] < 0)
            for (int e = 0; e < c->w->cfg.n_experts; e++)
                if (d->expert_slot[e] == s) d->expert_slot[e] = -1;
    }
    d->n_acquired = 0;
}

int lm_device_cache_capacity(const lm_device_cache *c) { return c->capacity; }

int lm_device_cache_pinned(const lm_device_cache *c, int l) {
    int n = 0;
    for (int e = 0; c->layers[l].pinned && e < c->w->cfg.n_experts; e++) n += c->layers[l].pinned[e];
    return n;
}

int lm_device_cache_pin(lm_device_cache *c, int l, const int32_t *experts, int n) {
    device_layer *d = &c->layers[l];
    int pinned = 0;
    int held = lm_device_cache_pinned(c, l);
    for (int i = 0; i < n; i++) {
        int e = experts[i], s = d->expert_slot[e];
        if (s < 0 || d->slot_expert[s] != e || d->pinned[e]) continue;
        if (held + 1 >= c->capacity) break; /* at least one slot stays free for the others */
        d->pinned[e] = d->blocked[s] = 1;
        held++;
        pinned++;
    }
    return pinned;
}

int lm_device_cache_is_pinned(const lm_device_cache *c, int l, int e) {
    return c->layers[l].pinned && c->layers[l].pinned[e];
}

const float *lm_device_cache_uses(const lm_device_cache *c, int l) { return c->layers[l].uses; }

void lm_device_cache_clear_uses(lm_device_cache *c) {
    for (int l = 0; l < c->w->cfg.n_layers; l++)
        if (c->layers[l].uses) memset(c->layers[l].uses, 0, sizeof(float) * (size_t)c->w->cfg.n_experts);
}

int lm_device_cache_holds(const lm_device_cache *c, int l, int e) {
    const device_layer *d = &c->layers[l];
    int s = d->expert_slot[e];
    return s >= 0 && d->slot_expert[s] == e;
}

int lm_device_cache_resident(const lm_device_cache *c, int l) {
    if (l >= 0) return c->layers[l].resident;
    int n = 0;
    for (int i = 0; i < c->w->cfg.n_layers; i++) n += c->layers[i].resident;
    return n;
}

void lm_device_cache_get_counters(const lm_device_cache *c, int l, lm_device_cache_counters *out) {
    memset(out, 0, sizeof *out);
    for (int i = l < 0 ? 0 : l; i < (l < 0 ? c->w->cfg.n_layers : l + 1); i++) {
        out->hits += c->layers[i].counters.hits;
        out->uploads += c->layers[i].counters.uploads;
        out->upload_bytes += c->layers[i].counters.upload_bytes;
    }
}

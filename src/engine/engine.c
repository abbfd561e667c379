/* The engine behind the public API (src/api/): model loading, memory planning,
 * sessions, evaluation. */
#include "engine/engine.h"
#include "engine/op_timing.h"

#include "common/error.h"
#include "common/log.h"
#include "engine/linear_attention.h"
#include "platform/platform.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Everything one session allocates with a context of ctx positions: the sizes
 * its allocators report (memory.c, linear_attention.c). */
uint64_t lm_session_plan_bytes(const lazymoe_model *m, int ctx) {
    const lm_config *c = &m->w.cfg;
    return lm_kv_cache_bytes(c, ctx, m->kv_dtype) + lm_scratch_bytes(c, m->chunk_tokens) +
           lm_linear_bytes(c, m->chunk_tokens);
}

int lm_chunk_tokens(int cpu_backend) {
    const char *v = getenv("LAZYMOE_CHUNK_TOKENS");
    if (v && *v) {
        char *end;
        long n = strtol(v, &end, 10);
        if (!*end && n >= 8 && n <= 4096) return (int)n;
        lm_log(LAZYMOE_LOG_WARN, "lazymoe: LAZYMOE_CHUNK_TOKENS=%s is not 8..4096; ignored", v);
    }
    return cpu_backend ? LM_CHUNK_TOKENS : LM_DEVICE_CHUNK_TOKENS;
}

static int max_intermediate(const lm_config *c) {
    int F = c->intermediate_size > c->moe_intermediate_size ? c->intermediate_size : c->moe_intermediate_size;
    return F > c->shared_expert_intermediate_size ? F : c->shared_expert_intermediate_size;
}

/* The widest matrix input of the model (columns). */
static int widest_input(const lm_config *c) {
    int widest[] = {c->hidden_size, max_intermediate(c), c->n_heads * c->head_dim, c->lin_v_heads * c->lin_v_dim,
                    c->lin_k_heads * c->lin_k_dim};
    int w = 0;
    for (size_t i = 0; i < sizeof widest / sizeof widest[0]; i++)
        if (widest[i] > w) w = widest[i];
    return w;
}

/* The CPU backend's int8-activation buffer at its largest: a chunk of tokens for up
 * to two distinct inputs of one call (values, steps and sums at the smallest group
 * size, 32, plus alignment). */
static uint64_t act8_bytes(const lm_config *c, int act_bits, int chunk_tokens) {
    if (act_bits != 8) return 0;
    uint64_t w = (uint64_t)widest_input(c);
    /* values, group steps and sums, and for ggml block weights three lane tables */
    return 2u * (uint64_t)chunk_tokens * (w + 256 + 2 * 4 * (w / 32 + 32) + 3 * (w + 128));
}

/* Whether a matmul of the model takes quantized weights (MLX affine, ggml blocks, MXFP4). */
static int mat_quantized(const lm_mat *x) {
    return x->rows > 0 && (x->dtype == LM_DT_U32 || lm_dtype_is_block(x->dtype) || x->dtype == LM_DT_MXFP4_SPLIT);
}
static int has_quantized_weights(const lm_weights *w) {
    if (mat_quantized(&w->lm_head)) return 1;
    for (int l = 0; l < w->cfg.n_layers; l++) {
        const lm_layer *L = &w->layers[l];
        const lm_mat *ms[] = {&L->q, &L->k, &L->v, &L->o, &L->lin.in_qkvz, &L->lin.in_ba, &L->lin.out, &L->router,
                              &L->mlp_gate, &L->mlp_up, &L->mlp_down, &L->shared_gate, &L->shared_up,
                              &L->shared_down, &L->src.tmpl[0], &L->src.tmpl[1], &L->src.tmpl[2]};
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
            if (mat_quantized(ms[i])) return 1;
    }
    return 0;
}

static void fmt_gb(char *buf, size_t n, uint64_t b) { snprintf(buf, n, "%.2f GB", (double)b / 1e9); }
/* GB, or MB below one (device budgets of small models). */
static void fmt_size(char *buf, size_t n, uint64_t b) {
    if (b >= 1000000000ull) fmt_gb(buf, n, b);
    else snprintf(buf, n, "%.2f MB", (double)b / 1e6);
}

static int cmp_by_uses_desc(const void *a, const void *b, void *ctx) {
    const float *u = ctx;
    float x = u[*(const int32_t *)a], y = u[*(const int32_t *)b];
    return x < y ? 1 : (x > y ? -1 : (*(const int32_t *)a - *(const int32_t *)b));
}

/* Each MoE layer's experts of the popularity history, most used first: layer l's
 * count[l] of them at order[l * n_experts ...]. One allocation (free the returned
 * order; count points into it); NULL when out of memory. */
static int32_t *history_order(const lazymoe_model *m, int **count) {
    const lm_config *c = &m->w.cfg;
    size_t ne = (size_t)c->n_experts, nl = (size_t)c->n_layers;
    int32_t *order = malloc(sizeof(int32_t) * ne * nl + sizeof(int) * nl);
    if (!order) return NULL;
    int *n = (int *)(order + ne * nl);
    for (int l = 0; l < c->n_layers; l++) {
        n[l] = 0;
        if (!m->w.layers[l].is_moe) continue;
        const float *u = m->history.uses + (size_t)l * ne;
        int32_t *o = order + (size_t)l * ne;
        for (int x = 0; x < c->n_experts; x++)
            if (u[x] > 0) o[n[l]++] = x;
        qsort_r(o, (size_t)n[l], sizeof *o, cmp_by_uses_desc, (void *)u);
    }
    *count = n;
    return order;
}

/* At open: loads the popularity history and pins the `pin_experts` hottest experts
 * of each layer. The background fill from the history (warm_fill) waits for the first
 * evaluation: started here it competed with the first prompt's own reads (and page
 * zeroing) and made the first token later, not sooner (bench/RESULTS.md, "Time to
 * first token"). */
/* The popularity history of the model in dir (unless options.no_warm_start): 0 when
 * there is one (m->history.uses), -1 when not (a cold start; said for --pin). */
static int load_history(lazymoe_model *m, const char *dir) {
    const lm_config *c = &m->w.cfg;
    char path[4096], e[LM_ERR_LEN];
    if (!m->opt.no_warm_start) {
        m->model_id = lm_popularity_model_id(dir);
        if (lm_popularity_path(m->model_id, path, sizeof path, e) != 0 ||
            lm_popularity_load(&m->history, path, m->model_id, c->n_layers, c->n_experts, e) != 0)
            m->history.uses = NULL; /* no history yet: a cold start */
    }
    if (m->history.uses) return 0;
    if (m->opt.pin_experts > 0 && m->opt.verbose)
        lm_log(LAZYMOE_LOG_INFO, "lazymoe: --pin %d: no expert popularity is known for this model yet (%s); "
               "nothing pinned", m->opt.pin_experts,
               m->opt.no_warm_start ? "--no-warm-start" : "it is learned from earlier runs");
    return -1;
}

static void warm_start(lazymoe_model *m, const char *dir) {
    const lm_config *c = &m->w.cfg;
    int pin = m->opt.pin_experts;
    if (load_history(m, dir) != 0) return;
    m->warm_pending = !m->opt.no_warm_start;
    if (pin <= 0) return;
    size_t ne = (size_t)c->n_experts;
    int *count = NULL;
    int32_t *order = history_order(m, &count);
    for (int l = 0; order && l < c->n_layers; l++)
        if (count[l] > 0) m->pinned += lm_cache_pin(m->cache, l, order + (size_t)l * ne, count[l] < pin ? count[l] : pin);
    free(order);
    if (m->opt.verbose) lm_log(LAZYMOE_LOG_INFO, "lazymoe: pinned %d popular experts", m->pinned);
}

/* After the first evaluation: the empty slots of each layer's cache are filled with
 * its historically hottest experts, in the background (demand reads always go
 * first). The reads go rank by rank across the layers (every layer's hottest
 * expert, then every layer's second, ...), not layer by layer, so every layer gains
 * its likeliest experts first. */
static void warm_fill(lazymoe_model *m) {
    const lm_config *c = &m->w.cfg;
    m->warm_pending = 0;
    size_t ne = (size_t)c->n_experts;
    int *count = NULL;
    int32_t *order = history_order(m, &count);
    if (!order) return;
    int cap = lm_cache_capacity(m->cache), deepest = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (count[l] > cap) count[l] = cap;
        if (count[l] > deepest) deepest = count[l];
    }
    /* cached experts (the first prompt's, pinned ones) are skipped by lm_cache_prefetch */
    for (int r = 0; r < deepest; r++)
        for (int l = 0; l < c->n_layers; l++)
            if (r < count[l]) m->warm_started += lm_cache_prefetch(m->cache, l, order + (size_t)l * ne + r, 1);
    free(order);
    if (m->opt.verbose)
        lm_log(LAZYMOE_LOG_INFO, "lazymoe: warm start: reading %d popular experts in the background", m->warm_started);
}

/* Merges this run's routing counts into the history (older runs weigh half) and
 * writes it back atomically. */
static void save_history(lazymoe_model *m) {
    const lm_config *c = &m->w.cfg;
    /* the device tier sees every routed expert; a host cache under it only its misses */
    if ((!m->cache && !m->dcache) || m->opt.no_warm_start || !m->model_id) return;
    lm_popularity p = {c->n_layers, c->n_experts, m->model_id, NULL};
    p.uses = calloc((size_t)c->n_layers * (size_t)c->n_experts, sizeof(float));
    if (!p.uses) return;
    double total = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (!m->w.layers[l].is_moe) continue;
        const float *now = m->dcache ? lm_device_cache_uses(m->dcache, l) : lm_cache_uses(m->cache, l);
        for (int x = 0; x < c->n_experts; x++) {
            size_t i = (size_t)l * (size_t)c->n_experts + (size_t)x;
            p.uses[i] = now[x] + (m->history.uses ? 0.5f * m->history.uses[i] : 0.0f);
            total += now[x];
        }
    }
    char path[4096], e[LM_ERR_LEN];
    if (total > 0 && (lm_popularity_path(m->model_id, path, sizeof path, e) != 0 || lm_popularity_save(&p, path, e) != 0) &&
        m->opt.verbose)
        lm_log(LAZYMOE_LOG_WARN, "lazymoe: could not save expert popularity: %s", e);
    free(p.uses);
}

/* Decides between fully resident experts and an expert cache of some capacity,
 * so that resident weights + KV cache + scratch + experts fit the budget. */
static int plan_memory(lazymoe_model *m, uint64_t avail, int *capacity, char *err) {
    const lm_config *c = &m->w.cfg;
    const lazymoe_options *o = &m->opt;
    uint64_t budget = o->memory_budget ? o->memory_budget : (uint64_t)((double)avail * 0.85);
    uint64_t per_capacity = 0, per_expert = 0; /* one cache slot / one resident expert of every MoE layer */
    for (int l = 0; l < c->n_layers; l++)
        if (m->w.layers[l].is_moe) {
            per_capacity += lm_cache_slot_bytes(&m->w, l);
            per_expert += m->w.layers[l].src.slot_bytes;
        }
    const uint64_t overhead = 64ull << 20; /* code, allocator slack, thread stacks, tokenizer */
    int kv_tokens = o->kv_cache_tokens > m->max_context ? o->kv_cache_tokens : m->max_context;
    /* KV cache for every session's positions; scratch and linear-attention states of
     * each session kept, and a batch's scratch for the sequences decoded together */
    uint64_t fixed = m->w.bytes_resident + lm_session_plan_bytes(m, kv_tokens) + act8_bytes(c, o->act_bits, m->chunk_tokens) + overhead;
    if (o->sessions > 1)
        fixed += (uint64_t)(o->sessions - 1) * (lm_scratch_bytes(c, m->chunk_tokens) + lm_linear_bytes(c, m->chunk_tokens));
    if (o->parallel > 1) fixed += lm_scratch_bytes(c, o->parallel);
    uint64_t all_experts = per_expert * (uint64_t)c->n_experts;
    m->budget = budget;
    char b1[32], b2[32], b3[32];
    if (o->expert_capacity < 0 || per_capacity == 0 || (o->expert_capacity == 0 && fixed + all_experts <= budget)) {
        *capacity = -1;
        m->planned_bytes = fixed + all_experts;
    } else if (o->expert_capacity > 0) {
        *capacity = o->expert_capacity < c->n_experts ? o->expert_capacity : c->n_experts;
        m->planned_bytes = fixed + lm_cache_bytes_for(&m->w, *capacity);
    }
    if (*capacity != 0) {
        /* Fixed by the caller: an explicit budget must still hold. */
        if (o->memory_budget && m->planned_bytes > budget) {
            fmt_gb(b1, sizeof b1, budget);
            fmt_gb(b2, sizeof b2, m->planned_bytes);
            return lm_errf(err, "memory budget %s is too small for the requested expert capacity: it needs %s", b1, b2);
        }
        return 0;
    }
    /* The least a cache can work with: a token's experts, besides the pinned ones. */
    int min_slots = c->top_k + (o->pin_experts > 0 ? o->pin_experts : 0);
    if (min_slots > c->n_experts) min_slots = c->n_experts;
    uint64_t need_min = fixed + lm_cache_bytes_for(&m->w, min_slots);
    if (budget < need_min) {
        fmt_gb(b1, sizeof b1, budget);
        fmt_gb(b2, sizeof b2, need_min);
        fmt_gb(b3, sizeof b3, m->w.bytes_resident);
        return lm_errf(err,
                       "memory budget %s is too small: this model needs at least %s (resident weights %s, KV cache "
                       "for %d tokens, and %d experts per layer%s); raise --memory or lower --ctx",
                       b1, b2, b3, m->max_context, min_slots, o->pin_experts > 0 ? ", pinned ones included" : "");
    }
    /* Slots are allocated per layer, rounded up to whole huge pages: step down from
     * the linear estimate until the exact size fits. */
    uint64_t cap = (budget - fixed) / per_capacity;
    if (cap > (uint64_t)c->n_experts) cap = (uint64_t)c->n_experts;
    while (cap > (uint64_t)min_slots && fixed + lm_cache_bytes_for(&m->w, (int)cap) > budget) cap--;
    *capacity = (int)cap;
    m->planned_bytes = fixed + lm_cache_bytes_for(&m->w, *capacity);
    return 0;
}

/* Device bytes of the non-expert weights and the host float arrays the backend
 * keeps copies of (norms, biases, sinks, router biases, RoPE frequencies): an upper
 * bound, every optional array counted as if present but the experts' biases. */
static uint64_t device_weight_bytes(const lm_weights *w) {
    const lm_config *c = &w->cfg;
    uint64_t H = (uint64_t)c->hidden_size, E = (uint64_t)c->n_experts, I = (uint64_t)c->moe_intermediate_size;
    uint64_t nq = (uint64_t)c->n_heads * (uint64_t)c->head_dim, nkv = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
    uint64_t floats = H + (uint64_t)c->rope_dim;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *ly = &w->layers[l];
        floats += 2 * H + (nq + nkv) + (nq + 2 * nkv + H) + (uint64_t)c->n_heads + 2 * E;
        if (ly->expert_gate_up_bias) floats += E * 3 * I; /* split gate/up (GGUF) copies 2I and I of each row */
        if (ly->expert_down_bias) floats += E * H;
    }
    return w->bytes_resident + 4 * floats;
}

/* Sizes the expert cache in device memory: the budget (options.gpu_memory, or what
 * the device has free less a margin for the CUDA context's own allocations) less
 * what the backend holds for good -- weights, KV cache for every planned position,
 * scratch -- in slots of every MoE layer. Refuses a budget that cannot hold that
 * and one expert per layer, naming the size it needs. */
static int plan_device_memory(lazymoe_model *m, int *capacity, char *err) {
    const lm_config *c = &m->w.cfg;
    const lazymoe_options *o = &m->opt;
    lm_backend *be = m->be;
    uint64_t budget = o->gpu_memory;
    if (!budget) {
        uint64_t total = 0, free_bytes = 0, held = 0, peak = 0;
        if (!be->ops->memory_info || be->ops->memory_info(be, &total, &free_bytes, &held, &peak) != 0)
            return lm_errf(err, "the %s backend cannot tell its free memory: give --gpu-memory", be->ops->name);
        const uint64_t margin = 512ull << 20; /* kernels' and the runtime's own allocations */
        budget = free_bytes > margin ? free_bytes - margin : 0;
    }
    int kv_tokens = o->kv_cache_tokens > m->max_context ? o->kv_cache_tokens : m->max_context;
    /* the KV cache grows one layer at a time: while a layer is copied it is there twice */
    size_t layer_kv[4];
    lm_kv_layer_bytes(c, kv_tokens, m->kv_dtype, layer_kv);
    uint64_t fixed = device_weight_bytes(&m->w) + lm_session_plan_bytes(m, kv_tokens) +
                     lm_logits_device_bytes(c, m->chunk_tokens) + layer_kv[0] + layer_kv[1] + layer_kv[2] +
                     layer_kv[3];
    if (o->sessions > 1) fixed += (uint64_t)(o->sessions - 1) * lm_scratch_bytes(c, m->chunk_tokens);
    /* a prefill chunk's experts routed on the device: one scratch for the backend */
    if (be->ops->moe_routed_scratch_bytes)
        fixed += be->ops->moe_routed_scratch_bytes(be, m->chunk_tokens, c->top_k, c->n_experts,
                                                   c->moe_intermediate_size);
    if (o->parallel > 1) fixed += lm_scratch_bytes(c, o->parallel);
    uint64_t per_slot = lm_device_cache_bytes_for(&m->w, 1);
    m->gpu_budget = budget;
    m->gpu_fixed = fixed;
    if (budget < fixed + per_slot) {
        char b1[32], b2[32], b3[32], b4[32];
        fmt_size(b1, sizeof b1, budget);
        fmt_size(b2, sizeof b2, fixed + per_slot);
        fmt_size(b3, sizeof b3, fixed);
        fmt_size(b4, sizeof b4, per_slot);
        return lm_errf(err,
                       "GPU memory budget %s%s is too small: it needs at least %s (%s for the weights besides the "
                       "experts, the KV cache for %d tokens and scratch, and %s for one expert per MoE layer); "
                       "raise --gpu-memory or lower --ctx",
                       b1, o->gpu_memory ? "" : " (what the device has free)", b2, b3, kv_tokens, b4);
    }
    uint64_t cap = (budget - fixed) / per_slot;
    *capacity = cap > (uint64_t)c->n_experts ? c->n_experts : (int)cap;
    return 0;
}

/* Page-locks the host memory uploads read from (every layer's resident experts,
 * or the host cache's slots), so that they run at bus speed beside the kernels.
 * Best effort: a refusal (locked-memory limits) leaves uploads staged, slower. */
static void pin_host_experts(lazymoe_model *m) {
    lm_backend *be = m->be;
    const lm_config *c = &m->w.cfg;
    if (!be->ops->pin_host || !(m->pinned_host = calloc((size_t)c->n_layers, sizeof(void *)))) return;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *ly = &m->w.layers[l];
        if (!ly->is_moe) continue;
        void *p = NULL;
        size_t bytes = 0;
        if (m->cache) {
            lm_cache_slot_memory(m->cache, l, &p, &bytes);
        } else if (ly->experts) {
            const char *part[LM_EXPERT_MAX_PARTS];
            lm_expert_parts_of(&ly->src, &ly->experts[0], part);
            if (!part[0]) continue;
            p = (void *)(part[0] - ly->src.part_off[0]); /* the layer's slots: expert 0's first */
            bytes = (size_t)ly->src.slot_bytes * (size_t)c->n_experts;
        }
        if (!p || !bytes) continue;
        if (be->ops->pin_host(be, p, bytes) != 0) {
            if (m->opt.verbose)
                lm_log(LAZYMOE_LOG_WARN, "lazymoe: uploads of layer %d's experts are staged: %s", l,
                       lm_backend_error(be));
            continue;
        }
        m->pinned_host[m->n_pinned_host++] = p;
        m->gpu_pinned_bytes += bytes;
    }
}

/* A backend that copies weights (a GPU) copies the non-expert ones now rather than at
 * their first use: the first forward pass would otherwise stop the device's queue at
 * every weight while it is uploaded. Arrays whose length depends on the family's
 * layout (q/k norms, attention biases) are left to their first use. */
static int preload_device_weights(lazymoe_model *m, char *e) {
    lm_backend *be = m->be;
    const lm_weights *w = &m->w;
    const lm_config *c = &w->cfg;
    if (be->ops->host_memory || !be->ops->preload || !be->ops->preload_floats) return 0;
    double t0 = lm_now();
    const lm_mat *mats[16];
    int rc = 0;
#define PRELOAD_MAT(M) rc = rc ? rc : ((M)->data ? be->ops->preload(be, (M)) : 0)
#define PRELOAD_FLOATS(P, N) rc = rc ? rc : be->ops->preload_floats(be, (P), (size_t)(N))
    PRELOAD_MAT(&w->embed);
    PRELOAD_MAT(&w->lm_head);
    PRELOAD_FLOATS(w->final_norm, c->hidden_size);
    PRELOAD_FLOATS(w->rope_inv_freq, c->rope_dim / 2);
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        const lm_layer *ly = &w->layers[l];
        int n = 0;
        if (!ly->is_linear) mats[n++] = &ly->q, mats[n++] = &ly->k, mats[n++] = &ly->v, mats[n++] = &ly->o;
        if (ly->is_moe) {
            mats[n++] = &ly->router;
            mats[n++] = &ly->shared_gate, mats[n++] = &ly->shared_up, mats[n++] = &ly->shared_down;
            mats[n++] = &ly->shared_expert_gate;
        } else {
            mats[n++] = &ly->mlp_gate, mats[n++] = &ly->mlp_up, mats[n++] = &ly->mlp_down;
        }
        for (int i = 0; i < n; i++) PRELOAD_MAT(mats[i]);
        PRELOAD_FLOATS(ly->attn_norm, c->hidden_size);
        PRELOAD_FLOATS(ly->ffn_norm, c->hidden_size);
        PRELOAD_FLOATS(ly->o_bias, c->hidden_size);
        PRELOAD_FLOATS(ly->sinks, c->n_heads);
        PRELOAD_FLOATS(ly->router_bias, c->n_experts);
        PRELOAD_FLOATS(ly->router_correction, c->n_experts);
    }
#undef PRELOAD_MAT
#undef PRELOAD_FLOATS
    if (rc != 0)
        return lm_errf(e, "copying the weights to %s memory: %s", be->ops->name, lm_backend_error(be));
    if (m->opt.verbose)
        lm_log(LAZYMOE_LOG_INFO, "lazymoe: weights besides the experts copied to %s memory in %.2f s", be->ops->name,
               lm_now() - t0);
    return 0;
}

/* With room for every expert in device memory over resident host experts (what
 * llama.cpp's -ngl 99 gives), all are uploaded now, at load, rather than by the
 * first steps that route to them: a device backend only (the CPU's tier is a test).
 * Which slot an expert lands in changes no number (device_cache.h). */
/* Uploads experts ids[0..n) of layer l into device slots (acquired, filled from their
 * resident host views, released); *uploaded (unless NULL) gets how many were not there. */
static int upload_experts(lazymoe_model *m, int l, const int32_t *ids, int n, int *uploaded, char *e) {
    const lm_layer *ly = &m->w.layers[l];
    lm_device_cache_acquire(m->dcache, l, ids, n, NULL, m->dev_status);
    int rc = lm_device_cache_fence(m->dcache, e), k = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (m->dev_status[i] != 2) continue;
        rc = lm_device_cache_fill(m->dcache, l, ids[i], &ly->experts[ids[i]], 1, &m->dev_views[0], e);
        if (rc == 0) k++;
    }
    lm_device_cache_release_layer(m->dcache, l);
    if (uploaded) *uploaded = k;
    return rc;
}

static int preload_device_experts(lazymoe_model *m, char *e) {
    const lm_config *c = &m->w.cfg;
    int E = c->n_experts;
    if (m->be->ops->host_memory || lm_device_cache_capacity(m->dcache) < E) return 0;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *ly = &m->w.layers[l];
        if (!ly->is_moe || !ly->experts) continue;
        for (int i = 0; i < E; i++) m->dev_need[i] = i;
        if (upload_experts(m, l, m->dev_need, E, NULL, e) != 0) return -1;
    }
    if (lm_device_cache_wait_uploads(m->dcache, e) != 0) return -1;
    /* the slots never change now (no eviction with room for all): the routed path's
     * tables, for a backend that routes on the device */
    if (!m->be->ops->moe_routed || !m->be->ops->download_later) return 0;
    m->dev_table = calloc((size_t)c->n_layers, sizeof *m->dev_table);
    m->routed_sel = malloc(sizeof(int32_t) * (size_t)c->n_layers * (size_t)m->chunk_tokens * (size_t)c->top_k);
    m->routed_n = calloc((size_t)c->n_layers, sizeof *m->routed_n);
    if (!m->dev_table || !m->routed_sel || !m->routed_n) return lm_errf(e, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        if (!m->w.layers[l].is_moe || !m->w.layers[l].experts) continue;
        if (!(m->dev_table[l] = malloc(sizeof(lm_mat) * 3 * (size_t)E))) return lm_errf(e, "out of memory");
        for (int i = 0; i < E; i++) {
            lm_expert v = lm_device_cache_view(m->dcache, l, i);
            m->dev_table[l][3 * i] = v.gate;
            m->dev_table[l][3 * i + 1] = v.up;
            m->dev_table[l][3 * i + 2] = v.down;
        }
    }
    return 0;
}

/* Steps with cpu_experts auto take at most this many tokens' rows to the CPU: its
 * arrays' size (a decode step or a batch step of as many sequences; a prefill
 * chunk's experts with few rows fit too). */
#define CPU_EXPERTS_AUTO_TOKENS 16

/* options.cpu_experts: the CPU backend beside the device and its arrays. */
static int open_cpu_experts(lazymoe_model *m, char *e) {
    const lm_config *c = &m->w.cfg;
    int autosplit = m->opt.cpu_experts == LAZYMOE_CPU_EXPERTS_AUTO;
    if (m->opt.cpu_experts < 0 && !autosplit)
        return lm_errf(e, "cpu_experts %d: a token count, 0 (off) or LAZYMOE_CPU_EXPERTS_AUTO", m->opt.cpu_experts);
    if (m->cache) {
        if (!autosplit)
            return lm_errf(e, "--cpu-experts computes experts from resident host memory, but they do not all fit "
                              "--memory here (a host expert cache of %d per layer): raise --memory or use --resident",
                           lm_cache_capacity(m->cache));
        lm_log(LAZYMOE_LOG_INFO, "lazymoe: --cpu-experts auto: the experts are not all resident in host memory "
                                 "(a host expert cache of %d per layer), so every miss is uploaded",
               lm_cache_capacity(m->cache));
        return 0;
    }
    if (m->opt.cpu_experts > LM_CHUNK_TOKENS)
        return lm_errf(e, "--cpu-experts %d: at most %d tokens", m->opt.cpu_experts, LM_CHUNK_TOKENS);
    if (lm_backend_cpu_create(&m->cpu_be, m->opt.n_threads, e) != 0) return -1;
    /* int8 for the products the device takes int8 for: a GPU's scope
     * (lm_backend_cuda_set_act_bits), or every product on the CPU backend (the tier
     * kept in RAM, where the results must stay bit-identical) */
    if (m->opt.act_bits == 8) {
        if (lm_backend_cpu_set_act_bits(m->cpu_be, 8, widest_input(c), e) != 0) return -1;
        if (!m->be->ops->host_memory) lm_backend_cpu_set_act8_scope(m->cpu_be, LM_CUDA_ACT8_MIN_TOKENS, 4);
    }
    int tokens = autosplit ? CPU_EXPERTS_AUTO_TOKENS : m->opt.cpu_experts;
    size_t rows = (size_t)tokens * (size_t)c->top_k, H = (size_t)c->hidden_size;
    size_t I = (size_t)c->moe_intermediate_size, E = (size_t)c->n_experts;
    m->cpu_auto = autosplit;
    m->cpu_rows = (int)rows;
    m->cpu_x = lm_malloc_aligned(sizeof(float) * rows * H, "CPU experts' inputs", e);
    m->cpu_y = m->cpu_x ? lm_malloc_aligned(sizeof(float) * rows * H, "CPU experts' outputs", e) : NULL;
    m->cpu_g = m->cpu_y ? lm_malloc_aligned(sizeof(float) * rows * 2 * I, "CPU experts' activations", e) : NULL;
    m->cpu_u = m->cpu_g ? lm_malloc_aligned(sizeof(float) * rows * I, "CPU experts' activations", e) : NULL;
    if (!m->cpu_u) return -1;
    m->cpu_ids = malloc(sizeof(int32_t) * E);
    m->miss_on_cpu = malloc(2 * E);
    m->miss_ids = malloc(sizeof(int) * E);
    m->miss_rows = malloc(sizeof(int) * E);
    m->miss_order = malloc(sizeof(int) * E);
    if (!m->cpu_ids || !m->miss_on_cpu || !m->miss_ids || !m->miss_rows || !m->miss_order)
        return lm_errf(e, "out of memory");
    return 0;
}

/* The seconds of uploading experts first..first+k-1 of layer l into device slots
 * (evicting what the policy picks): uploads of real experts, which stay cached. */
static double time_uploads(lazymoe_model *m, int l, int first, int k, char *e) {
    for (int i = 0; i < k; i++) m->dev_need[i] = first + i;
    lm_device_cache_begin_step(m->dcache);
    double t0 = lm_now();
    int rc = upload_experts(m, l, m->dev_need, k, NULL, e);
    if (rc == 0) rc = lm_device_cache_wait_uploads(m->dcache, e);
    if (rc == 0 && m->be->ops->sync(m->be) != 0)
        rc = lm_errf(e, "%s backend: %s", m->be->ops->name, lm_backend_error(m->be));
    if (rc) return -1;
    /* the copies' own time where the backend times them (the wall time above also holds
     * the fence, the launches and the sync) */
    double copies;
    uint64_t bytes;
    if (lm_device_cache_upload_timing(m->dcache, &copies, &bytes) && bytes) return copies;
    return lm_now() - t0;
}

/* cpu_experts auto: the costs the split starts from (experts/miss_split.h), from
 * LAZYMOE_MISS_COSTS ("upload,cpu_fixed,cpu_expert,cpu_row" in microseconds: fixed
 * for the run, for tests and benchmarks) or measured here on the first MoE layer:
 * two rounds of uploads into its slots, and one expert on the CPU for one row and
 * for CPU_EXPERTS_AUTO_TOKENS rows, the fastest of three each. The round trip
 * (cpu_fixed) is learned from the first steps. A few milliseconds at load. */
static int calibrate_miss_costs(lazymoe_model *m, char *e) {
    const lm_config *c = &m->w.cfg;
    int E = c->n_experts, cap = lm_device_cache_capacity(m->dcache), l = 0;
    const char *env = getenv("LAZYMOE_MISS_COSTS");
    if (env) {
        if (lm_miss_costs_parse(env, &m->miss_costs) != 0)
            return lm_errf(e, "LAZYMOE_MISS_COSTS \"%s\": expected four times in microseconds, "
                              "\"upload,cpu_fixed,cpu_expert,cpu_row\"", env);
        m->miss_costs_frozen = 1;
        return 0;
    }
    while (l < c->n_layers && !(m->w.layers[l].is_moe && m->w.layers[l].experts)) l++;
    if (l == c->n_layers || cap >= E) return 0; /* no miss will ever be split */
    int k = cap < 4 ? cap : 4;
    if (2 * k > E) k = E / 2;
    double up = -1;
    for (int round = 0; round < 2 && k > 0; round++) {
        double t = time_uploads(m, l, round * k, k, e);
        if (t < 0) return -1;
        if (up < 0 || t < up) up = t;
    }
    m->miss_costs.upload = k > 0 ? up / k : 0;
    int rows = m->cpu_rows < CPU_EXPERTS_AUTO_TOKENS ? m->cpu_rows : CPU_EXPERTS_AUTO_TOKENS;
    size_t H = (size_t)c->hidden_size;
    for (size_t i = 0; i < (size_t)rows * H; i++) m->cpu_x[i] = 0.01f * (float)((int)(i % 97) - 48);
    double one = -1, many = -1;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = lm_now();
        if (lm_cpu_expert(m, l, 0, m->cpu_x, 1, m->cpu_y, e) != 0) return -1;
        double t1 = lm_now();
        if (lm_cpu_expert(m, l, 0, m->cpu_x, rows, m->cpu_y, e) != 0) return -1;
        double t2 = lm_now();
        if (one < 0 || t1 - t0 < one) one = t1 - t0;
        if (many < 0 || t2 - t1 < many) many = t2 - t1;
    }
    m->miss_costs.cpu_expert = one;
    m->miss_costs.cpu_row = rows > 1 && many > one ? (many - one) / (rows - 1) : 0;
    m->miss_costs.cpu_fixed = 0;
    return 0;
}

/* The device tier over resident host experts, at open: the popularity history's
 * hottest experts of each layer uploaded into its slots and the `pin_experts` hottest
 * pinned there (never evicted) -- what warm_start and the pins do for the host cache,
 * but at once: the uploads come from memory (a fraction of a second for gigabytes),
 * not from disk. Not with a host cache (its experts are not in memory yet; its own
 * warm start fills it) or room for every expert (all preloaded). */
static int device_warm_start(lazymoe_model *m, const char *dir, char *e) {
    const lm_config *c = &m->w.cfg;
    int cap = lm_device_cache_capacity(m->dcache), pin = m->opt.pin_experts;
    if (m->cache || cap >= c->n_experts || (m->opt.no_warm_start && pin <= 0)) return 0;
    if (pin > 0 && cap - pin < c->top_k)
        return lm_errf(e, "--pin %d leaves %d of the %d GPU expert slots per layer for the other experts, fewer "
                          "than the %d a token needs (top_k); pin at most %d or raise --gpu-memory",
                       pin, cap - pin > 0 ? cap - pin : 0, cap, c->top_k, cap - c->top_k > 0 ? cap - c->top_k : 0);
    if (load_history(m, dir) != 0) return 0;
    int *count = NULL;
    int32_t *order = history_order(m, &count);
    if (!order) return lm_errf(e, "out of memory");
    int rc = 0;
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        int n = count[l] < cap ? count[l] : cap, uploaded = 0;
        if (!m->w.layers[l].is_moe || !m->w.layers[l].experts || n == 0) continue;
        const int32_t *hot = order + (size_t)l * (size_t)c->n_experts;
        rc = upload_experts(m, l, hot, n, &uploaded, e);
        m->warm_started += uploaded;
        if (rc == 0 && pin > 0) m->pinned += lm_device_cache_pin(m->dcache, l, hot, n < pin ? n : pin);
    }
    free(order);
    if (rc == 0) rc = lm_device_cache_wait_uploads(m->dcache, e);
    if (rc == 0 && m->opt.verbose)
        lm_log(LAZYMOE_LOG_INFO, "lazymoe: warm start: %d popular experts uploaded into %s memory, %d pinned there",
               m->warm_started, m->be->ops->name, m->pinned);
    return rc;
}

/* The expert cache in device memory, for a backend with its own memory (or on
 * request: options.gpu_memory on the CPU, a test of the tier). */
static int open_device_tier(lazymoe_model *m, const char *dir, char *e) {
    const lm_config *c = &m->w.cfg;
    int moe = 0;
    for (int l = 0; l < c->n_layers; l++) moe |= m->w.layers[l].is_moe;
    if (!moe || (m->be->ops->host_memory && !m->opt.gpu_memory)) {
        if (m->opt.cpu_experts != 0 && m->opt.verbose)
            lm_log(LAZYMOE_LOG_INFO, "lazymoe: --cpu-experts: no expert cache in device memory here (a backend with "
                                     "its own memory, e.g. --backend cuda), so nothing to split");
        return 0;
    }
    int capacity = 0;
    if (plan_device_memory(m, &capacity, e) != 0) return -1;
    if (m->be->ops->set_memory_limit) m->be->ops->set_memory_limit(m->be, m->gpu_budget);
    size_t E = (size_t)c->n_experts;
    m->dev_ids = malloc(sizeof(int32_t) * E);
    m->dev_need = malloc(sizeof(int32_t) * E);
    m->dev_status = malloc(E);
    m->host_status = malloc(E);
    m->dev_views = malloc(sizeof(lm_expert) * E);
    if (!m->dev_ids || !m->dev_need || !m->dev_status || !m->host_status || !m->dev_views)
        return lm_errf(e, "out of memory");
    if (lm_device_cache_create(&m->dcache, m->be, &m->w, capacity, (lm_evict_policy)m->opt.eviction, e) != 0)
        return -1;
    if (m->opt.cpu_experts != 0 && open_cpu_experts(m, e) != 0) return -1;
    pin_host_experts(m);
    if (preload_device_weights(m, e) != 0) return -1;
    if (preload_device_experts(m, e) != 0) return -1;
    if (m->cpu_auto && calibrate_miss_costs(m, e) != 0) return -1;
    if (device_warm_start(m, dir, e) != 0) return -1;
    lm_device_cache_clear_uses(m->dcache); /* the loads' acquires were not routing */
    /* the load ends when its copies have: else the first request's first kernel waits
     * for them (the embed of a first prefill on the GPU took ~3.5 ms more) and a copy
     * that failed would show there, not here */
    if (m->be->ops->sync(m->be) != 0)
        return lm_errf(e, "copying the weights to %s memory: %s", m->be->ops->name, lm_backend_error(m->be));
    if (m->opt.verbose) {
        char b1[32], b2[32], b3[32], b4[32];
        fmt_size(b1, sizeof b1, lm_device_cache_bytes_for(&m->w, capacity));
        fmt_size(b2, sizeof b2, m->gpu_fixed);
        fmt_size(b3, sizeof b3, m->gpu_budget);
        fmt_size(b4, sizeof b4, m->gpu_pinned_bytes);
        lm_log(LAZYMOE_LOG_INFO,
               "lazymoe: %s memory: %d of %d experts per layer (%s) above the host tier (%s); weights, KV cache and "
               "scratch %s; budget %s; %s of host experts page-locked for uploads",
               m->be->ops->name, capacity, c->n_experts, b1, m->cache ? "the host expert cache" : "resident experts",
               b2, b3, b4);
        if (m->cpu_auto)
            lm_log(LAZYMOE_LOG_INFO,
                   "lazymoe: --cpu-experts auto%s: a miss uploaded %.1f us, computed on the CPU %.1f us for one row "
                   "and %.2f us for each more; each step gives the CPU the misses that finish soonest beside the "
                   "uploads",
                   m->miss_costs_frozen ? " (LAZYMOE_MISS_COSTS)" : " (measured at load)", m->miss_costs.upload * 1e6,
                   m->miss_costs.cpu_expert * 1e6, m->miss_costs.cpu_row * 1e6);
    }
    return 0;
}

/* Experts from which router lookahead is on by default: reading Qwen3-30B-A3B's 2.65 MB
 * experts early made decode at a 50% memory cap 0.3-11.6% faster, reading the demo
 * model's 80 KB ones made it slower, the reads' fixed costs (a request, a reader
 * thread's wake-up, on 2 cores shared with the compute) outweighing the bytes
 * (bench/RESULTS.md, issue 20, session 17). */
#define LOOKAHEAD_MIN_EXPERT_BYTES (1u << 20)

/* The context when the caller names none: the model's maximum, unless the KV cache
 * for it would take more than a quarter of what the budget leaves after the resident
 * weights -- then the most whole 1024s that quarter holds (at least 4096, or the
 * model's maximum if that is less). Agents send 30k-token prompts, so the default must
 * be long; but a KV reservation the size of the budget would starve the expert cache.
 * The KV cache grows as a session fills, so unused context costs the plan only. */
static int default_context(const lazymoe_model *m, uint64_t avail) {
    const lm_config *c = &m->w.cfg;
    int model_max = c->max_position_embeddings > 0 ? c->max_position_embeddings : 4096;
    uint64_t budget = m->opt.memory_budget ? m->opt.memory_budget : (uint64_t)((double)avail * 0.85);
    uint64_t taken = m->w.bytes_resident + (64ull << 20);
    uint64_t quarter = budget > taken ? (budget - taken) / 4 : 0;
    uint64_t per_1024 = lm_kv_cache_bytes(c, 1024, m->kv_dtype);
    uint64_t fits = per_1024 ? quarter / per_1024 * 1024 : (uint64_t)model_max;
    if (fits < 4096) fits = 4096;
    return fits < (uint64_t)model_max ? (int)fits : model_max;
}

static void progress_log(void *ctx, const char *what, double frac) {
    (void)ctx;
    lm_log(LAZYMOE_LOG_PROGRESS, "\r%s: %3.0f%%%s", what, frac * 100.0, frac >= 1.0 ? "\n" : "");
}

int lm_engine_open(lazymoe_model **out, const char *dir, const lazymoe_options *opt, char *e) {
    return lm_engine_open_io(out, dir, opt, NULL, e);
}

int lm_engine_open_io(lazymoe_model **out, const char *dir, const lazymoe_options *opt, const lm_io *io, char *e) {
    *out = NULL;
    lm_op_timing_init();
    lazymoe_model *m = calloc(1, sizeof *m);
    if (!m) return lm_errf(e, "out of memory");
    m->opt = *opt;
    lm_progress_fn progress = m->opt.verbose ? progress_log : NULL;
    /* What is available before this model takes anything (the plan counts the
     * resident weights itself). */
    uint64_t avail = lm_mem_available();
    double t_load = lm_now();
    if (lm_weights_load(&m->w, dir, progress, NULL, e) != 0) {
        free(m);
        return -1;
    }
    if (m->opt.verbose) {
        double s = lm_now() - t_load;
        lm_log(LAZYMOE_LOG_INFO, "lazymoe: resident weights: %.2f GB read in %.2f s (%.2f GB/s)",
               (double)m->w.bytes_resident / 1e9, s, s > 0 ? (double)m->w.bytes_resident / 1e9 / s : 0.0);
    }
    /* Quantized weights take int8 activations unless asked otherwise (as llama.cpp
     * always does): much faster, at the error tests/test_golden.c states; float
     * models keep f32, which is also the reference everywhere (--act-bits 32).
     * CUDA keeps f32 unless asked (--act-bits 8: int8 in prefill's products with MLX
     * 4-bit weights, the same int8 values as the CPU's; lm_backend_cuda_set_act_bits):
     * measured 1.04x prefill so far, not yet worth its error as a default. */
    int cpu_backend = !m->opt.backend || !*m->opt.backend || !strcmp(m->opt.backend, "cpu");
    m->chunk_tokens = lm_chunk_tokens(cpu_backend);
    if (m->opt.act_bits == 0) m->opt.act_bits = cpu_backend && has_quantized_weights(&m->w) ? 8 : 32;
    /* Router lookahead: on by default where the host computes (a device's decode step
     * would wait for each layer's predictions' download, and could not be replayed as a
     * graph), for experts of LOOKAHEAD_MIN_EXPERT_BYTES or more, with as many predictions
     * as a token routes to (on the demo model, top-4: 4 turn 48% hits at 8 slots into
     * 86%, 8 into 57%, the gate closing layers whose predictions are mostly unused).
     * Lazy experts only. */
    if (m->opt.lookahead < 0)
        m->opt.lookahead = cpu_backend && m->w.bytes_per_expert >= LOOKAHEAD_MIN_EXPERT_BYTES ? m->w.cfg.top_k : 0;
    switch (m->opt.kv_bits) {
    case 0:
    case 16: m->kv_dtype = LM_DT_F16; break;
    case 32: m->kv_dtype = LM_DT_F32; break;
    case 8: m->kv_dtype = LM_DT_I8; break;
    default: lm_errf(e, "kv_bits %d is not supported (choose 8, 16 or 32)", m->opt.kv_bits); goto fail;
    }
    m->max_context = m->opt.max_context > 0 ? m->opt.max_context : default_context(m, avail);
    int capacity = 0;
    if (plan_memory(m, avail, &capacity, e) != 0) goto fail;
    if (lm_store_open(&m->store, &m->w, capacity >= 0 && !m->opt.buffered_io, io, e) != 0) goto fail;
    if (capacity < 0) {
        if (lm_store_load_resident(m->store, progress, NULL, e) != 0) goto fail;
    } else {
        _Static_assert(LAZYMOE_EVICT_LRU == (int)LM_EVICT_LRU && LAZYMOE_EVICT_LCP == (int)LM_EVICT_LCP &&
                           LAZYMOE_EVICT_LFRU == (int)LM_EVICT_LFRU && LAZYMOE_EVICT_LRFU == (int)LM_EVICT_LRFU &&
                           LAZYMOE_EVICT_STALE == (int)LM_EVICT_STALE && LM_EVICT_COUNT == 5,
                       "lazymoe_eviction and lm_evict_policy list the policies in the same order");
        lm_cache_options co = {.capacity = capacity,
                               .io_threads = m->opt.io_threads,
                               .chunk_bytes = m->opt.io_chunk_bytes,
                               .policy = (lm_evict_policy)m->opt.eviction,
                               .lookahead_gate = m->opt.lookahead_gate,
                               .verbose = m->opt.verbose};
        if (m->opt.pin_experts > 0 && capacity - m->opt.pin_experts < m->w.cfg.top_k) {
            lm_errf(e, "--pin %d leaves %d of the %d cache slots per layer for the other experts, fewer than the %d "
                    "a token needs (top_k); pin at most %d or raise --capacity / --memory", m->opt.pin_experts,
                    capacity - m->opt.pin_experts > 0 ? capacity - m->opt.pin_experts : 0, capacity,
                    m->w.cfg.top_k, capacity - m->w.cfg.top_k > 0 ? capacity - m->w.cfg.top_k : 0);
            goto fail;
        }
        if (lm_cache_create(&m->cache, m->store, &co, e) != 0) goto fail;
        if (!m->opt.no_warm_start || m->opt.pin_experts > 0) warm_start(m, dir);
    }
    if (m->opt.verbose) {
        char b1[32], b2[32];
        fmt_gb(b1, sizeof b1, m->planned_bytes);
        fmt_gb(b2, sizeof b2, m->budget);
        if (capacity < 0) lm_log(LAZYMOE_LOG_INFO, "lazymoe: all experts resident; plan %s of budget %s", b1, b2);
        else lm_log(LAZYMOE_LOG_INFO, "lazymoe: expert cache %d of %d experts per layer; plan %s of budget %s",
                    capacity, m->w.cfg.n_experts, b1, b2);
    }
    if (m->opt.trace_routing &&
        lm_trace_create(&m->trace, m->opt.trace_routing, m->w.cfg.n_layers, m->w.cfg.n_experts, m->w.cfg.top_k, e) != 0)
        goto fail;
    if (m->opt.replay_routing) {
        if (lm_trace_load(&m->replay, m->opt.replay_routing, e) != 0) goto fail;
        if (m->replay.n_layers != m->w.cfg.n_layers || m->replay.n_experts != m->w.cfg.n_experts ||
            m->replay.top_k != m->w.cfg.top_k) {
            lm_errf(e, "routing trace %s is for %d layers x %d experts top-%d; the model has %d x %d top-%d",
                    m->opt.replay_routing, m->replay.n_layers, m->replay.n_experts, m->replay.top_k,
                    m->w.cfg.n_layers, m->w.cfg.n_experts, m->w.cfg.top_k);
            goto fail;
        }
    }
    if (m->opt.replay_lookahead) {
        if (!m->opt.replay_routing) {
            lm_errf(e, "a lookahead trace (%s) is replayed only with a routing trace", m->opt.replay_lookahead);
            goto fail;
        }
        if (lm_trace_load(&m->replay_pred, m->opt.replay_lookahead, e) != 0) goto fail;
        if (m->replay_pred.n_layers != m->w.cfg.n_layers || m->replay_pred.n_experts != m->w.cfg.n_experts ||
            m->replay_pred.n_tokens < m->replay.n_tokens) {
            lm_errf(e, "lookahead trace %s is for %d layers x %d experts over %d tokens; the model has %d x %d and "
                       "the routing trace %d tokens",
                    m->opt.replay_lookahead, m->replay_pred.n_layers, m->replay_pred.n_experts,
                    m->replay_pred.n_tokens, m->w.cfg.n_layers, m->w.cfg.n_experts, m->replay.n_tokens);
            goto fail;
        }
    }
    if (lm_backend_create(&m->be, m->opt.backend, m->opt.n_threads, e) != 0) goto fail;
    /* the largest batch forward.c makes: every expert's gate and up products */
    if (m->be->ops->reserve_batch(m->be, 2 * m->w.cfg.n_experts + 3) != 0) {
        lm_errf(e, "%s", lm_backend_error(m->be));
        goto fail;
    }
    /* a chunk's widest inputs, or its routes' (each token's top_k experts' down inputs) */
    if (m->opt.act_bits && m->opt.act_bits != 32 &&
        lm_backend_set_act_bits(m->be, m->opt.act_bits, m->chunk_tokens * (m->w.cfg.top_k > 1 ? m->w.cfg.top_k : 1),
                                widest_input(&m->w.cfg), e) != 0)
        goto fail;
    if (open_device_tier(m, dir, e) != 0) goto fail;
    *out = m;
    return 0;
fail:
    lm_engine_close(m);
    return -1;
}

void lm_engine_get_expert_stats(const lazymoe_model *m, int layer, lazymoe_expert_stats *st) {
    memset(st, 0, sizeof *st);
    st->resident = m->cache == NULL;
    st->capacity = m->cache ? lm_cache_capacity(m->cache) : m->w.cfg.n_experts;
    st->memory_budget = m->budget;
    st->planned_bytes = m->planned_bytes;
    st->peak_rss_bytes = lm_peak_rss();
    st->warm_start_experts = m->warm_started;
    st->pinned_experts = m->cache ? (layer < 0 ? m->pinned : lm_cache_pinned(m->cache, layer))
                                  : m->dcache ? (layer < 0 ? m->pinned : lm_device_cache_pinned(m->dcache, layer)) : 0;
    if (m->dcache) {
        lm_device_cache_counters dc;
        lm_device_cache_get_counters(m->dcache, layer, &dc);
        st->gpu_capacity = lm_device_cache_capacity(m->dcache);
        st->gpu_experts = lm_device_cache_resident(m->dcache, layer);
        st->gpu_hits = dc.hits;
        st->gpu_uploads = dc.uploads;
        st->gpu_upload_bytes = dc.upload_bytes;
        st->gpu_budget = m->gpu_budget;
        st->gpu_resident_bytes = m->gpu_fixed;
        st->gpu_expert_bytes = lm_device_cache_bytes_for(&m->w, st->gpu_capacity);
        st->gpu_pinned_bytes = m->gpu_pinned_bytes;
        st->cpu_computed_experts = m->cpu_computed;
        if (m->cpu_auto) {
            st->miss_costs_us[0] = m->miss_costs.upload * 1e6;
            st->miss_costs_us[1] = m->miss_costs.cpu_fixed * 1e6;
            st->miss_costs_us[2] = m->miss_costs.cpu_expert * 1e6;
            st->miss_costs_us[3] = m->miss_costs.cpu_row * 1e6;
        }
        uint64_t total = 0, free_bytes = 0, held = 0, peak = 0;
        if (m->be->ops->memory_info && m->be->ops->memory_info(m->be, &total, &free_bytes, &held, &peak) == 0) {
            st->gpu_peak_bytes = peak;
            st->gpu_total_bytes = total;
        }
    }
    if (!m->cache) return;
    st->io_threads = lm_cache_io_threads(m->cache);
    lm_cache_counters cc;
    lm_cache_get_counters(m->cache, layer, &cc);
    st->hits = cc.hits;
    st->misses = cc.misses;
    st->bytes_read = cc.bytes_read;
    st->direct_bytes_read = cc.direct_bytes;
    st->read_seconds = cc.read_seconds;
    st->wait_seconds = cc.wait_seconds;
    st->prefetched = cc.prefetched;
    st->prefetch_used = cc.prefetch_used;
    st->prefetch_cancelled = cc.prefetch_cancelled;
}

void lm_engine_close(lazymoe_model *m) {
    if (!m) return;
    char e[LM_ERR_LEN];
    if (m->trace && lm_trace_close(m->trace, e) != 0) lm_log(LAZYMOE_LOG_ERROR, "lazymoe: %s", e);
    save_history(m);
    lm_popularity_free(&m->history);
    lm_device_cache_free(m->dcache);
    if (m->cpu_be) lm_backend_free(m->cpu_be);
    lm_free_aligned(m->cpu_x);
    free(m->cpu_ids);
    free(m->miss_on_cpu);
    free(m->miss_ids);
    free(m->miss_rows);
    free(m->miss_order);
    lm_free_aligned(m->cpu_y);
    lm_free_aligned(m->cpu_g);
    lm_free_aligned(m->cpu_u);
    for (int i = 0; i < m->n_pinned_host; i++) m->be->ops->unpin_host(m->be, m->pinned_host[i]);
    free(m->pinned_host);
    free(m->dev_ids);
    free(m->dev_need);
    free(m->dev_status);
    free(m->host_status);
    free(m->dev_views);
    for (int l = 0; m->dev_table && l < m->w.cfg.n_layers; l++) free(m->dev_table[l]);
    free(m->dev_table);
    free(m->routed_sel);
    free(m->routed_n);
    lm_cache_free(m->cache);
    lm_store_close(m->store);
    lm_trace_data_free(&m->replay);
    lm_trace_data_free(&m->replay_pred);
    if (m->be) lm_backend_free(m->be);
    lm_weights_free(&m->w);
    free(m);
}

/* "T x N, ..." over the archive's tensors, the most frequent type first (ties in
 * lm_dtype order), cut at the last whole entry that fits; *blocks = 1 when a ggml
 * block type is among them. */
static void tensor_type_counts(const st_archive *a, char *out, size_t cap, int *blocks) {
    int count[LM_DT_COUNT] = {0};
    for (int i = 0; a && i < a->ntensors; i++)
        if (a->tensors[i].dtype > LM_DT_INVALID && a->tensors[i].dtype < LM_DT_COUNT) count[a->tensors[i].dtype]++;
    *blocks = 0;
    for (int t = LM_DT_FIRST_BLOCK; t < LM_DT_COUNT; t++) *blocks |= count[t] > 0;
    size_t len = 0;
    out[0] = 0;
    for (;;) {
        int best = LM_DT_INVALID;
        for (int t = 1; t < LM_DT_COUNT; t++)
            if (count[t] > count[best]) best = t;
        if (!count[best]) break;
        char item[48];
        int n = snprintf(item, sizeof item, "%s%s x %d", len ? ", " : "", lm_dtype_name((lm_dtype)best), count[best]);
        if (n < 0 || len + (size_t)n + 1 > cap) break;
        memcpy(out + len, item, (size_t)n + 1);
        len += (size_t)n;
        count[best] = 0;
    }
}

void lm_engine_get_info(const lazymoe_model *m, lazymoe_model_info *info) {
    const lm_config *c = &m->w.cfg;
    memset(info, 0, sizeof *info);
    snprintf(info->model_type, sizeof info->model_type, "%s", c->model_type);
    info->act_bits = m->opt.act_bits;
    info->n_layers = c->n_layers;
    for (int l = 0; l < c->n_layers; l++) info->n_moe_layers += m->w.layers[l].is_moe;
    info->n_experts = c->n_experts;
    info->top_k = c->top_k;
    info->hidden_size = c->hidden_size;
    info->vocab_size = c->vocab_size;
    info->n_heads = c->n_heads;
    info->n_kv_heads = c->n_kv_heads;
    info->head_dim = c->head_dim;
    info->max_context = m->max_context;
    info->model_max_context = c->max_position_embeddings;
    info->params_total = m->w.params_total;
    info->params_active = m->w.params_active;
    info->params_expert = m->w.params_expert;
    info->bytes_resident = m->w.bytes_resident;
    info->bytes_per_expert = m->w.bytes_per_expert;
    info->bytes_experts = m->w.bytes_experts;
    info->quant_bits = c->quant_bits;
    info->quant_group_size = c->quant_group_size;
    snprintf(info->quant_mode, sizeof info->quant_mode, "%s", c->quant_mxfp4 ? "mxfp4" : "affine");
    snprintf(info->weight_dtype, sizeof info->weight_dtype, "%s",
             m->w.float_dtype == LM_DT_INVALID ? "none" : lm_dtype_name(m->w.float_dtype));
    tensor_type_counts(m->w.archive, info->tensor_types, sizeof info->tensor_types, &info->block_weights);
    static const char *layouts[] = {"mlx-stacked", "hf-fused", "hf-separate"};
    snprintf(info->expert_layout, sizeof info->expert_layout, "%s", layouts[m->w.expert_layout]);
    for (int l = 0; l < c->n_layers; l++)
        if (m->w.layers[l].is_moe && m->w.layers[l].src.nparts > info->expert_read_ranges)
            info->expert_read_ranges = m->w.layers[l].src.nparts;
    info->skipped_mtp_layers = m->w.n_mtp_layers;
    info->skipped_vision_tower = m->w.has_vision_tower;
    info->n_eos = c->n_eos;
    memcpy(info->eos_ids, c->eos_ids, sizeof(int32_t) * (size_t)(c->n_eos < 8 ? c->n_eos : 8));
}

int lm_session_create(lazymoe_session **out, lazymoe_model *m, char *e) {
    *out = NULL;
    lazymoe_session *s = calloc(1, sizeof *s);
    int L = m->w.cfg.n_layers;
    if (!s || !(s->k_cache = calloc((size_t)L, sizeof(lm_kv))) || !(s->v_cache = calloc((size_t)L, sizeof(lm_kv))) ||
        !(s->kv_bufs = calloc((size_t)L * 4, sizeof(lm_buf)))) {
        if (s) free(s->k_cache), free(s->v_cache);
        free(s);
        return lm_errf(e, "out of memory");
    }
    s->m = m;
    if (lm_scratch_alloc(&s->s, m->be, &m->w.cfg, m->chunk_tokens, e) != 0 ||
        (m->w.cfg.n_linear_layers && lm_linear_create(&s->lin, m->be, &m->w.cfg, m->chunk_tokens, e) != 0)) {
        lm_session_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

int lm_batch_session_create(lazymoe_session **out, lazymoe_model *m, int max_seqs, char *e) {
    *out = NULL;
    if (max_seqs < 1 || max_seqs > LM_CHUNK_TOKENS)
        return lm_errf(e, "a batch holds 1..%d sequences, not %d", LM_CHUNK_TOKENS, max_seqs);
    lazymoe_session *s = calloc(1, sizeof *s);
    if (!s) return lm_errf(e, "out of memory");
    s->m = m; /* no KV caches: lm_kv_cache_free and lm_session_bytes see cap_ctx 0 */
    if (lm_scratch_alloc(&s->s, m->be, &m->w.cfg, max_seqs, e) != 0) {
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void lm_session_free(lazymoe_session *s) {
    if (!s) return;
    lm_kv_cache_free(s);
    lm_scratch_free(&s->s, s->m->be);
    lm_linear_free(s->lin);
    free(s);
}

int lm_session_reusable(const lazymoe_session *s, int want) {
    if (want > s->n_past) want = s->n_past;
    return s->lin ? lm_linear_restorable(s->lin, s->n_past, want) : want;
}

void lm_session_snapshot_at(lazymoe_session *s, int pos) {
    if (s->lin) lm_linear_request_snapshot(s->lin, s->n_past, pos);
}

/* Brings the session to exactly n <= n_past tokens. A KV cache is simply cut; the
 * recurrent states of linear attention go back to the nearest snapshot (or the
 * start) and the held tokens from there to n are evaluated again. */
static int cut_to(lazymoe_session *s, int n, char *err) {
    if (!s->lin) {
        s->n_past = n;
        return 0;
    }
    int from = lm_linear_restorable(s->lin, s->n_past, n);
    lm_linear_restore(s->lin, s->n_past, from);
    s->n_past = from;
    if (from == n) return 0;
    return lm_forward(s, s->tokens + from, n - from, NULL, 0, err);
}

int lm_session_truncate(lazymoe_session *s, int n, char *e) {
    if (n < 0 || n > s->n_past) return lm_errf(e, "cannot truncate a context of %d tokens to %d", s->n_past, n);
    return cut_to(s, n, e);
}

/* Grows the KV caches to hold `need` positions (doubling, capped at max_context and
 * at the growth limit, but never below need). */
static int ensure_capacity(lazymoe_session *s, int need, char *err) {
    if (need <= s->cap_ctx) return 0;
    if (need > s->m->max_context)
        return lm_errf(err, "context of %d tokens exceeds the maximum of %d", need, s->m->max_context);
    int cap = s->cap_ctx ? s->cap_ctx : 256;
    while (cap < need) cap *= 2;
    int ceiling = s->cap_limit > 0 && s->cap_limit < s->m->max_context ? s->cap_limit : s->m->max_context;
    if (cap > ceiling) cap = need > ceiling ? need : ceiling;
    return lm_kv_cache_grow(s, cap, err);
}

void lm_session_set_growth_limit(lazymoe_session *s, int positions) { s->cap_limit = positions > 0 ? positions : 0; }

int lm_session_fit(lazymoe_session *s, char *e) {
    int cap = (s->n_past + 255) / 256 * 256;
    if (cap < 256) cap = 256;
    if (cap > s->m->max_context) cap = s->m->max_context;
    if (cap >= s->cap_ctx) return 0;
    return lm_kv_cache_grow(s, cap, e);
}

/* 1 when no value is NaN or infinite: a branchless pass over the bits (the compiler
 * vectorizes it; an isfinite test per value that can return early does not), so that
 * every step can afford it -- ~2.5x faster over a 152k vocabulary. */
static int all_finite(const float *v, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, v + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

/* Grows the context for n more tokens, evaluates them (lm_forward; or, scanned,
 * lm_forward_scanned: the last token's logits left on the device) and records them
 * in the session's token list. */
static int evaluate(lazymoe_session *s, const int32_t *ids, int n, float *logits, int all_positions, int scanned,
                    char *e) {
    if (n <= 0) return lm_errf(e, "no tokens to evaluate");
    if (ensure_capacity(s, s->n_past + n, e) != 0) return -1;
    /* A pass that failed midway may have advanced some layers' recurrent states:
     * rebuild them for the tokens held before going on. */
    if (s->lin && lm_session_reusable(s, s->n_past) != s->n_past && cut_to(s, s->n_past, e) != 0) return -1;
    int before = s->n_past;
    int rc = scanned ? lm_forward_scanned(s, ids, n, e) : lm_forward(s, ids, n, logits, all_positions, e);
    if (s->m->warm_pending) warm_fill(s->m);
    /* The history follows the positions computed, also when a later chunk failed. */
    memcpy(s->tokens + before, ids, sizeof(int32_t) * (size_t)(s->n_past - before));
    return rc;
}

/* NaN or inf logits are garbage every caller would otherwise print or sample from
 * (argmax of NaNs is token 0): an error on every path. logits holds `count` values,
 * the last token's (all_positions 0) or those of the n tokens evaluated from
 * position `before`. */
static int check_finite(const lazymoe_session *s, const float *logits, size_t count, int before, int n,
                        int all_positions, char *e) {
    size_t V = (size_t)s->m->w.cfg.vocab_size;
    double t0 = lm_op_timing ? lm_op_timing_now() : 0.0;
    for (size_t i = all_finite(logits, count) ? count : 0; i < count; i++)
        if (!isfinite(logits[i]))
            return lm_errf(e, "the model computed a non-finite logit (%g) at position %zu; the weights or "
                           "config.json are broken", (double)logits[i],
                           (size_t)before + (all_positions ? i / V : (size_t)n - 1));
    if (lm_op_timing) lm_op_timing_add("lm_session_eval: the logits' finiteness check", t0);
    return 0;
}

int lm_session_eval(lazymoe_session *s, const int32_t *ids, int n, float *logits, int all_positions, char *e) {
    int before = s->n_past;
    int rc = evaluate(s, ids, n, logits, all_positions, 0, e);
    if (rc == 0 && logits) {
        size_t V = (size_t)s->m->w.cfg.vocab_size, count = (all_positions ? (size_t)n : 1) * V;
        /* The device counted the non-finite values of the one row returned when it
         * computed it (forward.c, scan_logits): the host reads them only to name one. */
        if (s->logits_scanned && count == V && s->s.logits_scan_host[0] == 0) return 0;
        return check_finite(s, logits, count, before, n, all_positions, e);
    }
    return rc;
}

/* The first of the largest values, as the sampler's greedy pick and the device's
 * logits_scan choose among finite logits (the best kept in a register: no reload). */
static int32_t first_largest(const float *v, size_t n) {
    int32_t best = 0;
    float top = v[0];
    for (size_t i = 1; i < n; i++)
        if (v[i] > top) top = v[best = (int32_t)i];
    return best;
}

int lm_session_eval_greedy(lazymoe_session *s, const int32_t *ids, int n, int32_t *next_id, char *e) {
    lm_scratch *S = &s->s;
    size_t V = (size_t)s->m->w.cfg.vocab_size;
    if (!lm_forward_can_scan(s)) { /* the logits in host memory (the CPU's are computed there) */
        if (lm_session_eval(s, ids, n, S->logits_host, 0, e) != 0) return -1;
        *next_id = first_largest(S->logits_host, V);
        return 0;
    }
    int before = s->n_past;
    if (evaluate(s, ids, n, NULL, 0, 1, e) != 0) return -1;
    if (S->logits_scan_host[0] == 0) {
        *next_id = S->logits_scan_host[1];
        return 0;
    }
    /* Not all finite: the logits come to the host to name the first, as lm_session_eval does. */
    if (lm_forward_download_scanned(s, S->logits_host, e) != 0) return -1;
    if (check_finite(s, S->logits_host, V, before, n, 0, e) != 0) return -1;
    *next_id = first_largest(S->logits_host, V); /* the host found them finite after all */
    return 0;
}

int lm_session_eval_batch(lazymoe_session *b, lazymoe_session *const *seqs, const int32_t *ids, int n, float *logits,
                          char *e) {
    if (n < 1) return lm_errf(e, "no sequences to evaluate");
    for (int i = 0; i < n; i++) {
        lazymoe_session *s = seqs[i];
        if (ensure_capacity(s, s->n_past + 1, e) != 0) return -1;
        if (s->lin && lm_session_reusable(s, s->n_past) != s->n_past && cut_to(s, s->n_past, e) != 0) return -1;
    }
    if (lm_forward_batch(b, seqs, ids, n, logits, e) != 0) return -1;
    if (b->m->warm_pending) warm_fill(b->m);
    for (int i = 0; i < n; i++) seqs[i]->tokens[seqs[i]->n_past - 1] = ids[i];
    size_t V = (size_t)b->m->w.cfg.vocab_size;
    for (size_t i = !logits || all_finite(logits, (size_t)n * V) ? (size_t)n * V : 0; i < (size_t)n * V; i++)
        if (!isfinite(logits[i]))
            return lm_errf(e, "the model computed a non-finite logit (%g) at position %d of sequence %zu; the weights "
                           "or config.json are broken", (double)logits[i], seqs[i / V]->n_past - 1, i / V);
    return 0;
}

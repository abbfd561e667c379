/* Session memory: the KV cache, the forward scratch and their sizes.
 *
 * Every allocator here works from one table of (array, bytes) entries, and the
 * size the memory plan counts (lm_kv_cache_bytes, lm_scratch_bytes) is the sum of
 * the same table, so what is planned is what is allocated (tests/test_memory.c
 * checks it). Device arrays are backend buffers; host arrays are the bookkeeping
 * the forward pass keeps on the CPU whatever the backend.
 */
#include "engine/engine.h"

#include "common/error.h"
#include "engine/linear_attention.h"
#include "platform/platform.h"

#include <stdlib.h>
#include <string.h>

/* ---- forward scratch ------------------------------------------------------------ */

/* Tokens' logits a device backend computes at once before downloading them. */
#define LOGITS_DEVICE_ROWS 16

typedef struct {
    void **p;
    size_t bytes;
    int device; /* 1: backend buffer, 0: host memory */
} scratch_entry;

static int max_intermediate(const lm_config *c) {
    int F = c->intermediate_size > c->moe_intermediate_size ? c->intermediate_size : c->moe_intermediate_size;
    return F > c->shared_expert_intermediate_size ? F : c->shared_expert_intermediate_size;
}

/* The scratch arrays for chunks of T tokens; a zero size leaves the array NULL (not
 * used by this family). Returns the number of entries written to e. */
static int scratch_table(lm_scratch *S, const lm_config *c, int T, scratch_entry *e) {
    size_t H = (size_t)c->hidden_size, nq = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t E = (size_t)c->n_experts, nkv = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t K = (size_t)c->top_k, F = (size_t)max_intermediate(c), t = (size_t)T;
    size_t la = t < LOOKAHEAD_MAX_TOKENS ? t : LOOKAHEAD_MAX_TOKENS;
    const scratch_entry want[] = {
        {(void **)&S->x, t * H * 4, 1},        {(void **)&S->h, t * H * 4, 1},
        {(void **)&S->q, t * nq * 4, 1},       {(void **)&S->att, t * nq * 4, 1},
        {(void **)&S->knew, t * nkv * 4, 1},   {(void **)&S->vnew, t * nkv * 4, 1},
        {(void **)&S->proj, t * H * 4, 1},     {(void **)&S->router, t * E * 4, 1},
        {(void **)&S->gate, t * F * (c->swiglu_clamped ? 2 : 1) * 4, 1}, /* gpt-oss: (gate, up) pairs */
        {(void **)&S->up, t * F * 4, 1},
        {(void **)&S->xe, t * H * 4, 1},       {(void **)&S->eout, t * K * H * 4, 1},
        {(void **)&S->sel, t * K * 4, 1},      {(void **)&S->selw, t * K * 4, 1},
        {(void **)&S->tok_of, t * K * 4, 1},   {(void **)&S->ids, t * 4, 1},
        {(void **)&S->pos, t * 4, 1},
        {(void **)&S->la_h, la * H * 4, 1},    {(void **)&S->la_logits, la * E * 4, 1},
        {(void **)&S->qgate, c->attn_output_gate ? t * 2 * nq * 4 : 0, 1},
        {(void **)&S->shared, c->shared_expert_intermediate_size ? t * H * 4 : 0, 1},
        {(void **)&S->sel_host, t * K * 4, 0}, {(void **)&S->selw_host, t * K * 4, 0},
        {(void **)&S->tok_of_host, t * K * 4, 0}, {(void **)&S->pos_host, t * 4, 0},
        {(void **)&S->expert_off, (E + 1) * 4, 0}, {(void **)&S->expert_cur, E * 4, 0},
        {(void **)&S->expert_ids, E * 4, 0},   {(void **)&S->expert_views, E * sizeof(lm_expert), 0},
        {(void **)&S->expert_items, 2 * E * sizeof(lm_matmul_item), 0},
        {(void **)&S->need, E * 4, 0},         {(void **)&S->need_status, E, 0},
        {(void **)&S->expert_used, E, 0},      {(void **)&S->la_logits_host, la * E * 4, 0},
        {(void **)&S->la_ids, E * 4, 0},       {(void **)&S->la_mark, E, 0},
        {(void **)&S->logits_host, (size_t)c->vocab_size * 4, 0},
    };
    _Static_assert(sizeof want / sizeof want[0] <= LM_SCRATCH_MAX_BUFS, "lm_scratch.bufs is too small");
    int n = (int)(sizeof want / sizeof want[0]);
    memcpy(e, want, sizeof want);
    return n;
}

/* logits_scan's result: the count of non-finite logits and the first largest's index. */
#define LOGITS_SCAN_BYTES (2 * sizeof(int32_t))

uint64_t lm_logits_device_bytes(const lm_config *c, int T) {
    int rows = T < LOGITS_DEVICE_ROWS ? T : LOGITS_DEVICE_ROWS;
    return c->vocab_size > 0 ? (uint64_t)rows * (uint64_t)c->vocab_size * sizeof(float) + LOGITS_SCAN_BYTES : 0;
}

uint64_t lm_scratch_bytes(const lm_config *c, int T) {
    lm_scratch S;
    scratch_entry e[LM_SCRATCH_MAX_BUFS];
    int n = scratch_table(&S, c, T, e);
    uint64_t b = 0;
    for (int i = 0; i < n; i++) b += e[i].bytes;
    return b;
}

void lm_scratch_free(lm_scratch *S, lm_backend *be) {
    scratch_entry e[LM_SCRATCH_MAX_BUFS];
    int n = scratch_table(S, &(lm_config){0}, 0, e);
    for (int i = 0; i < n; i++)
        if (!e[i].device) lm_free_aligned(*e[i].p);
    for (int i = 0; i < S->n_bufs; i++) lm_backend_release(be, &S->bufs[i]);
    lm_backend_release(be, &S->logits_dev);
    lm_backend_release(be, &S->logits_scan_dev);
    memset(S, 0, sizeof *S);
}

int lm_scratch_alloc(lm_scratch *S, lm_backend *be, const lm_config *c, int T, char *err) {
    memset(S, 0, sizeof *S);
    scratch_entry e[LM_SCRATCH_MAX_BUFS];
    int n = scratch_table(S, c, T, e);
    for (int i = 0; i < n; i++) {
        if (!e[i].bytes) continue; /* not used by this family: stays NULL */
        if (e[i].device) {
            lm_buf *b = &S->bufs[S->n_bufs];
            if (lm_backend_alloc(be, b, e[i].bytes, "forward scratch", err) != 0) goto fail;
            S->n_bufs++;
            *e[i].p = b->ptr;
        } else {
            if (!(*e[i].p = lm_malloc_aligned(e[i].bytes, "forward scratch", err))) goto fail;
            S->host_bytes += e[i].bytes;
        }
    }
    if (!be->ops->host_memory && c->vocab_size > 0) {
        S->logits_rows = T < LOGITS_DEVICE_ROWS ? T : LOGITS_DEVICE_ROWS; /* lm_logits_device_bytes */
        size_t bytes = (size_t)S->logits_rows * (size_t)c->vocab_size * sizeof(float);
        if (lm_backend_alloc(be, &S->logits_dev, bytes, "device logits", err) != 0) goto fail;
        if (be->ops->logits_scan &&
            lm_backend_alloc(be, &S->logits_scan_dev, LOGITS_SCAN_BYTES, "the logits' scan", err) != 0)
            goto fail;
    }
    S->cap_tokens = T;
    return 0;
fail:
    lm_scratch_free(S, be);
    return -1;
}

/* ---- KV cache ------------------------------------------------------------------------ */

/* Bytes of one attention layer's four KV arrays (K, K scales, V, V scales) at cap positions. */
void lm_kv_layer_bytes(const lm_config *c, int cap, lm_dtype dt, size_t bytes[4]) {
    size_t row = (size_t)c->n_kv_heads * (size_t)c->head_dim * lm_dtype_size(dt);
    size_t srow = dt == LM_DT_I8 ? (size_t)c->n_kv_heads * sizeof(float) : 0;
    bytes[0] = bytes[2] = row * (size_t)cap;
    bytes[1] = bytes[3] = srow * (size_t)cap;
}

uint64_t lm_kv_cache_bytes(const lm_config *c, int ctx, lm_dtype dt) {
    size_t b[4];
    lm_kv_layer_bytes(c, ctx, dt, b);
    uint64_t total = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (!lm_config_layer_is_linear(c, l)) total += (uint64_t)b[0] + b[1] + b[2] + b[3];
    return total + sizeof(int32_t) * (uint64_t)ctx; /* the token ids held */
}

int lm_kv_cache_grow(lazymoe_session *s, int cap, char *err) {
    const lm_config *c = &s->m->w.cfg;
    lm_backend *be = s->m->be;
    lm_dtype dt = s->m->kv_dtype;
    size_t want[4], had[4];
    lm_kv_layer_bytes(c, cap, dt, want);
    lm_kv_layer_bytes(c, s->cap_ctx, dt, had);
    for (int l = 0; l < c->n_layers; l++) {
        if (lm_config_layer_is_linear(c, l)) continue; /* no KV cache */
        lm_buf *bufs = s->kv_bufs + (size_t)l * 4;
        for (int i = 0; i < 4; i++) {
            lm_buf nb;
            if (lm_backend_alloc(be, &nb, want[i], "the KV cache", err) != 0) {
                /* shrinking: layers done so far hold only cap positions now */
                if (cap < s->cap_ctx) s->cap_ctx = cap;
                return lm_err_prefix(err, "resizing the KV cache to %d tokens", cap);
            }
            /* positions are the outer index: a smaller cache keeps a prefix */
            size_t keep = had[i] < want[i] ? had[i] : want[i];
            if (keep && be->ops->copy(be, nb.ptr, bufs[i].ptr, keep) != 0) {
                lm_backend_release(be, &nb);
                if (cap < s->cap_ctx) s->cap_ctx = cap;
                return lm_errf(err, "resizing the KV cache: %s", lm_backend_error(be));
            }
            lm_backend_release(be, &bufs[i]);
            bufs[i] = nb;
        }
        s->k_cache[l] = (lm_kv){dt, bufs[0].ptr, bufs[1].ptr, cap};
        s->v_cache[l] = (lm_kv){dt, bufs[2].ptr, bufs[3].ptr, cap};
    }
    int32_t *t = realloc(s->tokens, sizeof(int32_t) * (size_t)cap);
    if (!t && cap < s->cap_ctx) { /* the larger token list still serves */
        s->cap_ctx = cap;
        return 0;
    }
    if (!t) return lm_errf(err, "out of memory growing the KV cache to %d tokens", cap);
    s->tokens = t;
    s->cap_ctx = cap;
    return 0;
}

void lm_kv_cache_free(lazymoe_session *s) {
    for (int l = 0; s->kv_bufs && l < s->m->w.cfg.n_layers; l++)
        for (int i = 0; i < 4; i++) lm_backend_release(s->m->be, &s->kv_bufs[(size_t)l * 4 + (size_t)i]);
    free(s->kv_bufs);
    free(s->k_cache);
    free(s->v_cache);
    free(s->tokens);
    s->kv_bufs = NULL;
    s->k_cache = s->v_cache = NULL;
    s->tokens = NULL;
    s->cap_ctx = 0;
}

uint64_t lm_session_bytes(const lazymoe_session *s) {
    uint64_t b = s->s.host_bytes + sizeof(int32_t) * (uint64_t)s->cap_ctx;
    for (int i = 0; i < s->s.n_bufs; i++) b += s->s.bufs[i].bytes;
    for (int l = 0; s->kv_bufs && l < s->m->w.cfg.n_layers; l++)
        for (int i = 0; i < 4; i++) b += s->kv_bufs[(size_t)l * 4 + (size_t)i].bytes;
    return b + lm_linear_held_bytes(s->lin);
}

/* The forward pass: one driver (lm_forward) walks the layers, composing the
 * parameterised blocks of engine/blocks.h; every piece of arithmetic is a backend
 * operation (kernels/backend.h).
 *
 * Per layer (shapes in floats, T = tokens in this chunk):
 *   h = rmsnorm(x); x += mixer(h)        attention, or linear attention (linear_attention.c)
 *   h = rmsnorm(x); x += ffn(h)          dense MLP, or mixture of experts
 * Attention: q,k,v = h.Wq, h.Wk, h.Wv (+ bias, q/k norm, clip); rope(q, k); append k, v
 *   to the cache; att = softmax(q.K^T * scale [+ sink]).V; with an output gate (q_proj
 *   yields it beside q) att *= sigmoid(gate); out = att.Wo (+ bias).
 * Dense MLP: down(silu(gate(h)) * up(h)).
 * Routed experts: the same, or gpt-oss's: one gate_up product giving interleaved
 *   (gate, up) pairs, its bias, the clamped SwiGLU, then down and its bias.
 * MoE: the router turns h.Wr into top-k experts and weights (lm_router: softmax top-k,
 *   top-k softmax, or sigmoid with correction bias and group-limited choice, each with
 *   optional renormalisation and scaling); every chosen expert runs on the tokens that
 *   chose it (batched per expert), and each token sums w * expert(h) over its experts
 *   in ascending expert order -- the order transformers uses, and one that does not
 *   depend on when an expert's weights became available, which keeps lazy and
 *   resident runs bit-identical; a shared expert (optionally gated by sigmoid(h.w))
 *   is added after that sum.
 * What stays on the host: routing decisions (sel is downloaded to group the chunk's
 * routes by expert, to acquire lazy experts and to record traces) and the router
 * lookahead's predictions.
 */
#include "engine/engine.h"

#include "common/error.h"
#include "engine/blocks.h"
#include "engine/linear_attention.h"
#include "engine/op_timing.h"
#include "platform/platform.h"

#include <math.h>
#include <string.h>

#define BE(s) ((s)->m->be)
/* Runs a backend operation; on failure returns -1 from the caller with its reason.
 * With LAZYMOE_OP_TIMING its wall time goes to its call site (engine/op_timing.h),
 * named by the call's text. */
#define OP(be, call) OP_AT(be, #call, call)
/* The same, timed under `site`: for a call whose text does not say what it waits for. */
#define OP_AT(be, site, call)                                                                                      \
    do {                                                                                                           \
        double t0_ = lm_op_timing ? lm_op_timing_now() : 0.0;                                                      \
        int rc_ = (call);                                                                                          \
        if (lm_op_timing) lm_op_timing_add(site, t0_);                                                             \
        if (rc_ != 0) return lm_errf(err, "%s backend: %s", (be)->ops->name, lm_backend_error(be));               \
    } while (0)

void lm_layer_blocks_of(const lm_weights *w, int l, lm_layer_blocks *out) {
    const lm_config *c = &w->cfg;
    const lm_layer *ly = &w->layers[l];
    memset(out, 0, sizeof *out);
    out->mixer = ly->is_linear ? LM_MIXER_LINEAR : LM_MIXER_ATTENTION;
    out->attn = (lm_attn_block){.n_heads = c->n_heads,
                                .n_kv_heads = c->n_kv_heads,
                                .head_dim = c->head_dim,
                                .qk_norm = c->qk_norm,
                                .clip_qkv = c->clip_qkv,
                                .output_gate = c->attn_output_gate,
                                .scale = 1.0f / sqrtf((float)c->head_dim),
                                .sinks = ly->sinks,
                                .pos = LM_POS_ROPE,
                                .rope_dim = c->rope_dim,
                                .rope_inv_freq = w->rope_inv_freq,
                                .rope_scale = w->rope_scale,
                                .q_bias = ly->q_bias,
                                .k_bias = ly->k_bias,
                                .v_bias = ly->v_bias,
                                .o_bias = ly->o_bias};
    out->attn.window = lm_config_layer_window(c, l);
    out->ffn = ly->is_moe ? LM_FFN_MOE : LM_FFN_DENSE;
    out->moe = (lm_moe_block){.router = {.kind = c->router_sigmoid ? LM_ROUTER_SIGMOID : LM_ROUTER_SOFTMAX_TOPK,
                                         .n_experts = c->n_experts,
                                         .top_k = c->top_k,
                                         .renormalize = c->norm_topk_prob,
                                         .scale = c->routed_scaling_factor,
                                         .correction_bias = ly->router_correction,
                                         .n_group = c->n_group,
                                         .topk_group = c->topk_group},
                              .router_bias = ly->router_bias,
                              .shared = ly->shared_gate.rows > 0,
                              .shared_gated = ly->shared_expert_gate.rows > 0,
                              .act = c->swiglu_clamped ? LM_ACT_SWIGLU_CLAMPED : LM_ACT_SWIGLU,
                              .act_alpha = c->swiglu_alpha,
                              .act_limit = c->swiglu_limit,
                              .fused_gate_up = c->swiglu_clamped && w->expert_layout == LM_EXPERTS_FUSED,
                              .gate_up_bias = ly->expert_gate_up_bias,
                              .down_bias = ly->expert_down_bias};
    if (c->router_topk_softmax) out->moe.router.kind = LM_ROUTER_TOPK_SOFTMAX;
}

/* ---- attention -------------------------------------------------------------------- */

/* Reads S->h, writes S->proj. seqs == NULL: the T rows are consecutive tokens of s
 * (positions s->n_past..); else row i is the next token of session seqs[i] (a batch
 * step, lm_forward_batch), stored and attended in that session's own KV cache. */
static int attention_block(lazymoe_session *s, const lm_attn_block *a, int l, int T, lazymoe_session *const *seqs,
                           char *err) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    const lm_layer *ly = &s->m->w.layers[l];
    lm_scratch *S = &s->s;
    int H = c->hidden_size, hd = a->head_dim, nh = a->n_heads, nkvh = a->n_kv_heads;
    int nq = nh * hd, nkv = nkvh * hd;
    float eps = c->rms_norm_eps;
    float *kdst = S->knew, *vdst = S->vnew;
    /* q_proj gives each head its query then its output gate with an output gate. */
    const lm_matmul_item qkv[3] = {{a->output_gate ? S->qgate : S->q, &ly->q, S->h, T},
                                   {kdst, &ly->k, S->h, T}, {vdst, &ly->v, S->h, T}};
    OP(be, be->ops->matmul_batch(be, qkv, 3));
    if (a->output_gate) OP(be, be->ops->copy_rows(be, S->q, (size_t)hd, S->qgate, 2 * (size_t)hd, T * nh, hd));
    if (a->q_bias) OP(be, be->ops->add_rows(be, S->q, a->q_bias, T, nq));
    if (a->k_bias) OP(be, be->ops->add_rows(be, kdst, a->k_bias, T, nkv));
    if (a->v_bias) OP(be, be->ops->add_rows(be, vdst, a->v_bias, T, nkv));
    if (a->qk_norm == LM_QK_NORM_FULL) {
        OP(be, be->ops->rmsnorm(be, S->q, S->q, ly->q_norm, T, nq, eps));
        OP(be, be->ops->rmsnorm(be, kdst, kdst, ly->k_norm, T, nkv, eps));
    }
    if (a->clip_qkv > 0) {
        OP(be, be->ops->clamp(be, S->q, (size_t)T * (size_t)nq, a->clip_qkv));
        OP(be, be->ops->clamp(be, kdst, (size_t)T * (size_t)nkv, a->clip_qkv));
        OP(be, be->ops->clamp(be, vdst, (size_t)T * (size_t)nkv, a->clip_qkv));
    }
    if (a->qk_norm == LM_QK_NORM_PER_HEAD) {
        OP(be, be->ops->rmsnorm(be, S->q, S->q, ly->q_norm, T * nh, hd, eps));
        OP(be, be->ops->rmsnorm(be, kdst, kdst, ly->k_norm, T * nkvh, hd, eps));
    }
    OP(be, be->ops->rope(be, S->q, T, nh, hd, S->pos, a->rope_inv_freq, a->rope_dim / 2, a->rope_scale));
    OP(be, be->ops->rope(be, kdst, T, nkvh, hd, S->pos, a->rope_inv_freq, a->rope_dim / 2, a->rope_scale));
    /* Each sequence's rows against its own cache: the same calls a session decoding
     * alone makes, so a batch step computes each row exactly as a solo step. */
    for (int i = 0; i < (seqs ? T : 1); i++) {
        lazymoe_session *q = seqs ? seqs[i] : s;
        int rows = seqs ? 1 : T;
        size_t at = seqs ? (size_t)i : 0;
        OP(be, be->ops->kv_store(be, &q->k_cache[l], q->n_past, kdst + at * (size_t)nkv, rows, nkvh, hd));
        OP(be, be->ops->kv_store(be, &q->v_cache[l], q->n_past, vdst + at * (size_t)nkv, rows, nkvh, hd));
        OP(be, be->ops->attention(be, S->att + at * (size_t)nq, S->q + at * (size_t)nq, &q->k_cache[l],
                                  &q->v_cache[l], rows, q->n_past, nh, nkvh, hd, a->scale, a->window, a->sinks));
    }
    if (a->output_gate)
        OP(be, be->ops->sigmoid_mul(be, S->att, (size_t)hd, S->qgate + hd, 2 * (size_t)hd, T * nh, hd, 0));
    OP(be, be->ops->matmul(be, S->proj, &ly->o, S->att, T));
    if (a->o_bias) OP(be, be->ops->add_rows(be, S->proj, a->o_bias, T, H));
    return 0;
}

/* ---- feed-forward ------------------------------------------------------------------ */

/* down(silu(gate h) * up h) into y; S->gate and S->up hold the intermediate. */
static int mlp(lazymoe_session *s, float *y, const lm_mat *gate, const lm_mat *up, const lm_mat *down, int T,
               char *err) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    OP(be, be->ops->matmul(be, S->gate, gate, S->h, T));
    OP(be, be->ops->matmul(be, S->up, up, S->h, T));
    OP(be, be->ops->swiglu(be, S->gate, S->up, (size_t)T * (size_t)gate->rows));
    OP(be, be->ops->matmul(be, y, down, S->gate, T));
    return 0;
}

static int dense_block(lazymoe_session *s, const lm_layer *ly, int T, char *err) {
    return mlp(s, s->s.proj, &ly->mlp_gate, &ly->mlp_up, &ly->mlp_down, T, err);
}

/* Sorts the chunk's (token, slot) routes by expert: expert e's routes are
 * tok_of[expert_off[e] .. expert_off[e+1]), in token order; uploaded for the
 * gather and scatter of run_experts. */
static int group_routes(lazymoe_session *s, int E, int TK, char *err) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    memset(S->expert_off, 0, sizeof(int32_t) * (size_t)(E + 1));
    for (int i = 0; i < TK; i++) S->expert_off[S->sel_host[i] + 1]++;
    for (int e = 0; e < E; e++) S->expert_off[e + 1] += S->expert_off[e];
    memcpy(S->expert_cur, S->expert_off, sizeof(int32_t) * (size_t)E);
    for (int i = 0; i < TK; i++) S->tok_of_host[S->expert_cur[S->sel_host[i]]++] = i;
    OP(be, be->ops->upload(be, S->tok_of, S->tok_of_host, sizeof(int32_t) * (size_t)TK));
    return 0;
}

/* Runs experts ids[0..n) (weights views[0..n)) on the tokens of this chunk that chose
 * them (group_routes first) and writes each result into eout[token * K + slot]. As
 * many experts as the scratch holds tokens for go together: their gate and up
 * products in one backend batch, their down products in another, so a layer costs
 * a few hand-overs to the threads rather than two per expert. */
static int run_experts(lazymoe_session *s, const lm_moe_block *mb, const lm_expert *views, const int32_t *ids, int n,
                       char *err) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    lm_scratch *S = &s->s;
    int K = c->top_k, H = c->hidden_size, I = c->moe_intermediate_size;
    lm_matmul_item *items = S->expert_items;
    for (int i = 0; i < n;) {
        int j = i, tokens = 0;
        while (j < n) {
            int m = S->expert_off[ids[j] + 1] - S->expert_off[ids[j]];
            if (j > i && tokens + m > S->cap_tokens) break;
            tokens += m;
            j++;
        }
        int base = 0, fused = mb->act == LM_ACT_SWIGLU_CLAMPED && mb->fused_gate_up;
        /* The group's routes are one run of tok_of when its experts follow each other
         * there (every expert of the chunk, or all in between without routes): their
         * rows are then gathered, and later scattered, by one call each -- the same
         * rows a call per expert moves. */
        int one_run = 1;
        for (int k = i; k + 1 < j; k++) one_run &= S->expert_off[ids[k] + 1] == S->expert_off[ids[k + 1]];
        if (one_run) OP(be, be->ops->gather_rows(be, S->xe, S->h, S->tok_of + S->expert_off[ids[i]], tokens, H, K));
        for (int k = i; k < j; k++) {
            int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
            float *xe = S->xe + (size_t)base * (size_t)H;
            if (!one_run) OP(be, be->ops->gather_rows(be, xe, S->h, S->tok_of + S->expert_off[ids[k]], m, H, K));
            if (fused) {
                items[k - i] = (lm_matmul_item){S->gate + (size_t)base * 2 * (size_t)I, &views[k].gate, xe, m};
            } else {
                items[2 * (k - i)] = (lm_matmul_item){S->gate + (size_t)base * (size_t)I, &views[k].gate, xe, m};
                items[2 * (k - i) + 1] = (lm_matmul_item){S->up + (size_t)base * (size_t)I, &views[k].up, xe, m};
            }
            base += m;
        }
        OP(be, be->ops->matmul_batch(be, items, (fused ? 1 : 2) * (j - i)));
        /* act: where the activations the down products read are */
        float *act = S->gate;
        if (fused) {
            base = 0;
            for (int k = i; mb->gate_up_bias && k < j; k++) {
                int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
                OP(be, be->ops->add_rows(be, S->gate + (size_t)base * 2 * (size_t)I,
                                         mb->gate_up_bias + (size_t)ids[k] * 2 * (size_t)I, m, 2 * I));
                base += m;
            }
            OP(be, be->ops->swiglu_clamped(be, S->up, S->gate, (size_t)tokens * (size_t)I, mb->act_alpha,
                                           mb->act_limit));
            act = S->up;
        } else if (mb->act == LM_ACT_SWIGLU_CLAMPED) {
            base = 0;
            for (int k = i; mb->gate_up_bias && k < j; k++) {
                int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
                const float *b = mb->gate_up_bias + (size_t)ids[k] * 2 * (size_t)I;
                OP(be, be->ops->add_rows(be, S->gate + (size_t)base * (size_t)I, b, m, I));
                OP(be, be->ops->add_rows(be, S->up + (size_t)base * (size_t)I, b + I, m, I));
                base += m;
            }
            if (!be->ops->swiglu_clamped_split)
                return lm_errf(err, "this backend cannot run gpt-oss experts stored apart (GGUF)");
            OP(be, be->ops->swiglu_clamped_split(be, S->up, S->gate, S->up, (size_t)tokens * (size_t)I, mb->act_alpha,
                                                 mb->act_limit));
            act = S->up;
        } else {
            OP(be, be->ops->swiglu(be, S->gate, S->up, (size_t)tokens * (size_t)I));
        }
        base = 0;
        for (int k = i; k < j; k++) {
            int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
            items[k - i] = (lm_matmul_item){S->proj + (size_t)base * (size_t)H, &views[k].down,
                                            act + (size_t)base * (size_t)I, m};
            base += m;
        }
        OP(be, be->ops->matmul_batch(be, items, j - i));
        base = 0;
        for (int k = i; k < j; k++) {
            int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
            if (mb->down_bias)
                OP(be, be->ops->add_rows(be, S->proj + (size_t)base * (size_t)H,
                                         mb->down_bias + (size_t)ids[k] * (size_t)H, m, H));
            if (!one_run)
                OP(be, be->ops->scatter_rows(be, S->eout, S->proj + (size_t)base * (size_t)H,
                                             S->tok_of + S->expert_off[ids[k]], m, H));
            base += m;
        }
        if (one_run) OP(be, be->ops->scatter_rows(be, S->eout, S->proj, S->tok_of + S->expert_off[ids[i]], tokens, H));
        i = j;
    }
    return 0;
}

/* The shared expert into S->shared, scaled by sigmoid(h . w_g) when it is gated.
 * Uses S->gate/S->up and overwrites the router logits (route has consumed them). */
static int shared_expert(lazymoe_session *s, const lm_moe_block *mb, const lm_layer *ly, int T, char *err) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    int H = s->m->w.cfg.hidden_size;
    if (mlp(s, S->shared, &ly->shared_gate, &ly->shared_up, &ly->shared_down, T, err) != 0) return -1;
    if (!mb->shared_gated) return 0;
    OP(be, be->ops->matmul(be, S->router, &ly->shared_expert_gate, S->h, T));
    OP(be, be->ops->sigmoid_mul(be, S->shared, (size_t)H, S->router, 1, T, H, 1));
    return 0;
}

/* A backend that copies weights (a GPU) keys its copies by host address, and a
 * lazy cache slot may hold another expert than when that copy was made: every
 * expert taken from the cache is marked changed, so it is uploaded again (phase 1
 * of issue 18: correct, an upload per use; a VRAM expert tier replaces this). */
static void expert_slot_refreshed(lm_backend *be, const lm_expert *v) {
    if (!be->ops->weights_changed) return;
    lm_backend_weights_changed(be, &v->gate);
    lm_backend_weights_changed(be, &v->up);
    lm_backend_weights_changed(be, &v->down);
}

/* Lazy experts: acquire every distinct expert the chunk routed to; compute the
 * cached ones while the misses are read, then each miss as it lands. When the
 * chunk needs more experts than the layer has slots, it goes in waves, still
 * reading each expert once per chunk. A shared expert is computed while the first
 * wave's misses are read. */
static int run_lazy_experts(lazymoe_session *s, const lm_moe_block *mb, int l, int T, char *err) {
    lm_expert_cache *cache = s->m->cache;
    const lm_config *c = &s->m->w.cfg;
    lm_scratch *S = &s->s;
    int E = c->n_experts, n = 0, shared_done = 0;
    uint8_t *used = S->expert_used;
    memset(used, 0, (size_t)E);
    for (int i = 0; i < T * c->top_k; i++) used[S->sel_host[i]] = 1;
    for (int e = 0; e < E; e++)
        if (used[e]) S->need[n++] = e;
    if (group_routes(s, E, T * c->top_k, err) != 0) return -1;
    while (n > 0) {
        int got = lm_cache_acquire(cache, l, S->need, n, S->need_status);
        if (got == 0) return lm_errf(err, "expert cache of layer %d has no free slot", l);
        int rc = 0;
        /* The hits already in memory together, while the misses are read; then the
         * hits whose lookahead read is still landing and the misses, each as it
         * lands (lookahead reads were queued first, so they come first). Each
         * expert's output goes to its own rows and they are summed in route order
         * afterwards, so the order of computing changes no bit. */
        int hits = 0;
        for (int i = 0; i < n && rc == 0; i++) {
            if (S->need_status[i] != 1 || !lm_cache_ready(cache, l, S->need[i])) continue;
            rc = lm_cache_wait(cache, l, S->need[i], &S->expert_views[hits], err);
            if (rc == 0) expert_slot_refreshed(BE(s), &S->expert_views[hits]);
            S->expert_ids[hits++] = S->need[i];
            S->need_status[i] = 3; /* computed below */
        }
        if (rc == 0 && hits) rc = run_experts(s, mb, S->expert_views, S->expert_ids, hits, err);
        if (rc == 0 && !shared_done && mb->shared) {
            rc = shared_expert(s, mb, &s->m->w.layers[l], T, err);
            shared_done = 1;
        }
        for (int pass = 1; pass <= 2; pass++)
            for (int i = 0; i < n && rc == 0; i++) {
                if (S->need_status[i] != pass) continue;
                rc = lm_cache_wait(cache, l, S->need[i], &S->expert_views[0], err);
                if (rc == 0) expert_slot_refreshed(BE(s), &S->expert_views[0]);
                if (rc == 0) rc = run_experts(s, mb, S->expert_views, &S->need[i], 1, err);
            }
        lm_cache_release_layer(cache, l);
        if (rc) return -1;
        int left = 0;
        for (int i = 0; i < n; i++)
            if (!S->need_status[i]) S->need[left++] = S->need[i];
        n = left;
    }
    return 0;
}

/* Uploads experts ids[0..n) of layer l (slots acquired in the device cache) from the
 * host tier and computes them: resident host experts at once, all together; from
 * the host cache in its own waves, the cached ones together, then each miss as its
 * read lands, each wave's uploads finished before its host slots are released. */
static int upload_and_run(lazymoe_session *s, const lm_moe_block *mb, int l, const int32_t *ids, int n, char *err) {
    lazymoe_model *m = s->m;
    const lm_layer *ly = &m->w.layers[l];
    lm_expert *views = m->dev_views;
    if (ly->experts) {
        for (int i = 0; i < n; i++)
            if (lm_device_cache_fill(m->dcache, l, ids[i], &ly->experts[ids[i]], 1, &views[i], err) != 0) return -1;
        return run_experts(s, mb, views, ids, n, err);
    }
    int32_t *left = m->dev_need;
    uint8_t *st = m->host_status;
    memcpy(left, ids, sizeof(int32_t) * (size_t)n);
    while (n > 0) {
        int got = lm_cache_acquire(m->cache, l, left, n, st);
        if (got == 0) return lm_errf(err, "expert cache of layer %d has no free slot", l);
        int rc = 0, k = 0;
        lm_expert host;
        int32_t *done_ids = m->dev_ids; /* the host cache's hits, computed together */
        for (int i = 0; i < n && rc == 0; i++) {
            if (st[i] != 1) continue;
            rc = lm_cache_wait(m->cache, l, left[i], &host, err);
            if (rc == 0) rc = lm_device_cache_fill(m->dcache, l, left[i], &host, 0, &views[k], err);
            done_ids[k++] = left[i];
        }
        if (rc == 0 && k) rc = run_experts(s, mb, views, done_ids, k, err);
        for (int i = 0; i < n && rc == 0; i++) {
            if (st[i] != 2) continue;
            rc = lm_cache_wait(m->cache, l, left[i], &host, err);
            if (rc == 0) rc = lm_device_cache_fill(m->dcache, l, left[i], &host, 0, &views[0], err);
            if (rc == 0) rc = run_experts(s, mb, views, &left[i], 1, err);
        }
        /* the host slots are reused once released: the uploads must have read them */
        char later[LM_ERR_LEN] = ""; /* after a failure, the first reason is the one kept */
        if (lm_device_cache_wait_uploads(m->dcache, rc ? later : err) != 0 && rc == 0) rc = -1;
        lm_cache_release_layer(m->cache, l);
        if (rc) return -1;
        int r = 0;
        for (int i = 0; i < n; i++)
            if (!st[i]) left[r++] = left[i];
        n = r;
    }
    return 0;
}

/* options.cpu_experts: experts ids[0..n) of a decode step that are not in device
 * memory run on the CPU from resident host memory. First (cpu_gather) their tokens'
 * rows are gathered on the device and downloaded -- before the device's own experts
 * are queued, so that both then compute at once; then (cpu_run) the expert MLPs run
 * on the CPU backend, the same operations run_experts issues, and the outputs are
 * uploaded and scattered into eout. */
static int cpu_gather(lazymoe_session *s, const int32_t *ids, int n, char *err) {
    lazymoe_model *m = s->m;
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    int H = m->w.cfg.hidden_size, K = m->w.cfg.top_k, base = 0, total = 0;
    double t0 = lm_now();
    for (int k = 0; k < n; k++) total += S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
    if (total > m->cpu_rows || total > S->cap_tokens)
        return lm_errf(err, "%d rows for the CPU experts (room for %d)", total,
                       m->cpu_rows < S->cap_tokens ? m->cpu_rows : S->cap_tokens);
    for (int k = 0; k < n; k++) {
        int rows = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
        OP(be, be->ops->gather_rows(be, S->xe + (size_t)base * (size_t)H, S->h, S->tok_of + S->expert_off[ids[k]],
                                    rows, H, K));
        base += rows;
    }
    OP(be, be->ops->download(be, m->cpu_x, S->xe, sizeof(float) * (size_t)base * (size_t)H));
    /* the round trip the CPU's share adds to a layer, as the split counts it */
    if (m->cpu_auto && !m->miss_costs_frozen)
        m->miss_costs.cpu_fixed = 0.8 * m->miss_costs.cpu_fixed + 0.2 * (lm_now() - t0);
    return 0;
}

static int cpu_expert(lazymoe_model *m, const lm_moe_block *mb, int l, int e, const float *x, int rows, float *y,
                      char *err) {
    lm_backend *cb = m->cpu_be;
    const lm_layer *ly = &m->w.layers[l];
    size_t H = (size_t)m->w.cfg.hidden_size, I = (size_t)m->w.cfg.moe_intermediate_size;
    int fused = mb->act == LM_ACT_SWIGLU_CLAMPED && mb->fused_gate_up;
    if (!cb || !ly->experts) return lm_errf(err, "layer %d: experts on the CPU need the CPU backend and resident experts", l);
    const lm_expert *v = &ly->experts[e];
    float *g = m->cpu_g, *u = m->cpu_u, *act = g;
    OP(cb, cb->ops->matmul(cb, g, &v->gate, x, rows));
    if (fused) {
        if (mb->gate_up_bias) OP(cb, cb->ops->add_rows(cb, g, mb->gate_up_bias + (size_t)e * 2 * I, rows, 2 * (int)I));
        OP(cb, cb->ops->swiglu_clamped(cb, u, g, (size_t)rows * I, mb->act_alpha, mb->act_limit));
        act = u;
    } else {
        OP(cb, cb->ops->matmul(cb, u, &v->up, x, rows));
        if (mb->act == LM_ACT_SWIGLU_CLAMPED) {
            if (mb->gate_up_bias) {
                const float *b = mb->gate_up_bias + (size_t)e * 2 * I;
                OP(cb, cb->ops->add_rows(cb, g, b, rows, (int)I));
                OP(cb, cb->ops->add_rows(cb, u, b + I, rows, (int)I));
            }
            OP(cb, cb->ops->swiglu_clamped_split(cb, u, g, u, (size_t)rows * I, mb->act_alpha, mb->act_limit));
            act = u;
        } else {
            OP(cb, cb->ops->swiglu(cb, g, u, (size_t)rows * I));
        }
    }
    OP(cb, cb->ops->matmul(cb, y, &v->down, act, rows));
    if (mb->down_bias) OP(cb, cb->ops->add_rows(cb, y, mb->down_bias + (size_t)e * H, rows, (int)H));
    return 0;
}

int lm_cpu_expert(lazymoe_model *m, int l, int e, const float *x, int rows, float *y, char *err) {
    lm_layer_blocks b;
    lm_layer_blocks_of(&m->w, l, &b);
    return cpu_expert(m, &b.moe, l, e, x, rows, y, err);
}

/* A measured time against the costs' prediction: the CPU's costs follow what it does
 * now (other work on its cores, its clock), a fifth of the way per layer. */
static void learn_cpu_costs(lazymoe_model *m, double seconds, double predicted) {
    if (m->miss_costs_frozen || !(predicted > 0) || !(seconds > 0)) return;
    double r = seconds / predicted;
    r = r < 0.25 ? 0.25 : r > 4 ? 4 : r;
    double f = 1 + 0.2 * (r - 1);
    m->miss_costs.cpu_expert *= f;
    m->miss_costs.cpu_row *= f;
}

static int cpu_run(lazymoe_session *s, const lm_moe_block *mb, int l, const int32_t *ids, int n, char *err) {
    lazymoe_model *m = s->m;
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    size_t H = (size_t)m->w.cfg.hidden_size;
    size_t base = 0;
    double t0 = lm_now();
    for (int k = 0; k < n; k++) {
        int rows = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
        m->miss_rows[k] = rows;
        if (cpu_expert(m, mb, l, ids[k], m->cpu_x + base * H, rows, m->cpu_y + base * H, err) != 0) return -1;
        base += (size_t)rows;
    }
    if (m->cpu_auto) {
        lm_miss_costs c = m->miss_costs;
        c.cpu_fixed = 0;
        learn_cpu_costs(m, lm_now() - t0, lm_miss_cpu_seconds(&c, m->miss_rows, n));
    }
    /* queued after the device's experts, which used S->proj before: stream order */
    OP(be, be->ops->upload(be, S->proj, m->cpu_y, sizeof(float) * base * H));
    base = 0;
    for (int k = 0; k < n; k++) {
        int rows = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
        OP(be, be->ops->scatter_rows(be, S->eout, S->proj + base * H, S->tok_of + S->expert_off[ids[k]], rows, (int)H));
        base += (size_t)rows;
    }
    m->cpu_computed += (uint64_t)n;
    return 0;
}

/* Which of the step's experts need[0..n) the CPU computes (m->miss_on_cpu[i]; NULL:
 * none): with options.cpu_experts N every miss of a step of at most N tokens; with
 * auto the split of the misses by their measured costs (experts/miss_split.h), as
 * many rows as the CPU's arrays and the scratch hold. */
static const uint8_t *cpu_share(lazymoe_session *s, int l, int T, int n) {
    lazymoe_model *m = s->m;
    lm_scratch *S = &s->s;
    int K = m->w.cfg.top_k, room = m->cpu_rows < S->cap_tokens ? m->cpu_rows : S->cap_tokens;
    if (!m->cpu_be || n <= 0) return NULL;
    if (!m->cpu_auto) {
        if (T > m->opt.cpu_experts || T * K > S->cap_tokens) return NULL;
        memset(m->miss_on_cpu, 1, (size_t)n);
        return m->miss_on_cpu;
    }
    /* the uploads since the last step, timed on the copy queue: the upload's cost follows
     * the bus as the CPU's follows the CPU (a fifth of the way per measurement) */
    double sec;
    uint64_t bytes;
    if (lm_device_cache_upload_timing(m->dcache, &sec, &bytes) && bytes && !m->miss_costs_frozen)
        m->miss_costs.upload = 0.8 * m->miss_costs.upload +
                               0.2 * sec * (double)m->w.layers[l].src.slot_bytes / (double)bytes;
    int misses = 0;
    for (int i = 0; i < n; i++) {
        int e = S->need[i];
        if (lm_device_cache_holds(m->dcache, l, e)) continue;
        m->miss_ids[misses] = i;
        m->miss_rows[misses++] = S->expert_off[e + 1] - S->expert_off[e];
    }
    memset(m->miss_on_cpu, 0, (size_t)n);
    if (!misses) return NULL;
    uint8_t *pick = m->miss_on_cpu + n; /* the split's answer per miss, then spread to need */
    if (!lm_miss_split(&m->miss_costs, m->miss_rows, misses, room, pick, m->miss_order)) return NULL;
    for (int j = 0; j < misses; j++) m->miss_on_cpu[m->miss_ids[j]] = pick[j];
    return m->miss_on_cpu;
}

/* Experts through the expert cache in device memory (a GPU): the ones it holds are
 * computed at once, the others uploaded into its slots from the host tier
 * (upload_and_run) while those compute. When the layer needs more experts than the
 * device cache has slots, it goes in waves. Every expert runs the same kernels on
 * the same bytes wherever they came from, so the output does not depend on either
 * tier's capacity. */
static int run_device_experts(lazymoe_session *s, const lm_moe_block *mb, int l, int T, char *err) {
    lazymoe_model *m = s->m;
    const lm_config *c = &m->w.cfg;
    lm_scratch *S = &s->s;
    int E = c->n_experts, n = 0, shared_done = 0;
    uint8_t *used = S->expert_used;
    memset(used, 0, (size_t)E);
    for (int i = 0; i < T * c->top_k; i++) used[S->sel_host[i]] = 1;
    for (int e = 0; e < E; e++)
        if (used[e]) S->need[n++] = e;
    if (group_routes(s, E, T * c->top_k, err) != 0) return -1;
    uint8_t *st = m->dev_status;
    /* options.cpu_experts: what the CPU computes of what is not in device memory; its
     * rows (up to T * top_k, or what the split allows) pass through S->xe and S->proj */
    const uint8_t *on_cpu = cpu_share(s, l, T, n);
    while (n > 0) {
        int got = lm_device_cache_acquire(m->dcache, l, S->need, n, on_cpu, st);
        int hits = 0, misses = 0, cpu_n = 0, rc = 0;
        for (int i = 0; i < n; i++)
            if (st[i] == 1) {
                S->expert_views[hits] = lm_device_cache_view(m->dcache, l, S->need[i]);
                S->expert_ids[hits++] = S->need[i];
            } else if (st[i] == 3) {
                m->cpu_ids[cpu_n++] = S->need[i];
            }
        if (got == 0 && !cpu_n) return lm_errf(err, "the device expert cache of layer %d has no free slot", l);
        if (cpu_n) rc = cpu_gather(s, m->cpu_ids, cpu_n, err);
        /* uploads into this wave's slots wait for the kernels that read them before */
        if (rc == 0) rc = lm_device_cache_fence(m->dcache, err);
        if (rc == 0 && hits) rc = run_experts(s, mb, S->expert_views, S->expert_ids, hits, err);
        if (rc == 0 && !shared_done && mb->shared) {
            rc = shared_expert(s, mb, &m->w.layers[l], T, err);
            shared_done = 1;
        }
        for (int i = 0; i < n; i++)
            if (st[i] == 2) S->expert_ids[misses++] = S->need[i];
        /* with resident host experts the uploads are only queued: they cross the bus
         * while the CPU computes its share (a host cache never meets a CPU share) */
        if (rc == 0 && misses) rc = upload_and_run(s, mb, l, S->expert_ids, misses, err);
        if (rc == 0 && cpu_n) rc = cpu_run(s, mb, l, m->cpu_ids, cpu_n, err);
        lm_device_cache_release_layer(m->dcache, l);
        if (rc) return -1;
        int left = 0;
        for (int i = 0; i < n; i++)
            if (!st[i]) {
                if (on_cpu) m->miss_on_cpu[left] = on_cpu[i]; /* on_cpu is miss_on_cpu: compacted with need */
                S->need[left++] = S->need[i];
            }
        n = left;
    }
    return 0;
}

/* Benchmark replay: the trace's picks with equal weights replace the router's. */
static int replay_routes(lazymoe_session *s, int l, int T, char *err) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    const lm_trace_data *rp = &s->m->replay;
    int K = s->m->w.cfg.top_k;
    for (int t = 0; t < T; t++) {
        const int32_t *ids =
            rp->ids + ((size_t)(S->pos_host[t] % rp->n_tokens) * (size_t)rp->n_layers + (size_t)l) * (size_t)K;
        for (int k = 0; k < K; k++) {
            S->sel_host[t * K + k] = ids[k] >= 0 ? ids[k] : k;
            S->selw_host[t * K + k] = 1.0f / (float)K;
        }
    }
    size_t bytes = sizeof(int32_t) * (size_t)T * (size_t)K;
    OP(be, be->ops->upload(be, S->sel, S->sel_host, bytes));
    OP(be, be->ops->upload(be, S->selw, S->selw_host, bytes));
    return 0;
}

/* Whether layer l's experts are chosen and run on the device for T tokens: every
 * expert of the layer in device memory for good, tokens of one sequence, plain SwiGLU
 * experts (moe_routed's terms). */
static int routes_on_device(const lazymoe_session *s, const lm_moe_block *mb, int l, int T) {
    const lazymoe_model *m = s->m;
    /* a decode step's routes' intermediates go to S->gate and S->up, which hold
     * cap_tokens rows; a prefill chunk's to the backend's own scratch */
    int fits = T > LM_ROUTED_MAX_TOKENS || T * m->w.cfg.top_k <= s->s.cap_tokens;
    return m->dev_table && m->dev_table[l] && T <= m->chunk_tokens && fits && !m->replay.ids &&
           mb->act == LM_ACT_SWIGLU && !mb->gate_up_bias && !mb->down_bias;
}

/* Runs layer l's experts that way: chosen on the device, with no wait for the
 * routes; they are accounted at the chunk's end (routed_accounting).
 * 1 = done, 0 = the host must route this one, -1 = error. */
static int routed_experts(lazymoe_session *s, const lm_moe_block *mb, int l, int T, char *err) {
    lazymoe_model *m = s->m;
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    int K = m->w.cfg.top_k;
    if (!routes_on_device(s, mb, l, T)) return 0;
    int rc = be->ops->moe_routed(be, S->eout, m->dev_table[l], m->w.cfg.n_experts, S->sel, S->h, T, K, S->gate, S->up);
    if (rc < 0) return lm_errf(err, "%s backend: %s", be->ops->name, lm_backend_error(be));
    if (rc > 0) return 0;
    OP(be, be->ops->download_later(be, m->routed_sel + (size_t)l * (size_t)m->chunk_tokens * (size_t)K, S->sel,
                                   sizeof(int32_t) * (size_t)T * (size_t)K));
    m->routed_n[l] = T;
    return 1;
}

/* The routes of the layers routed on the device in this chunk (complete after a sync
 * or download since): into the trace and the device cache's counters and recency,
 * as a host-routed step records them. */
static void routed_accounting(lazymoe_session *s) {
    lazymoe_model *m = s->m;
    const lm_config *c = &m->w.cfg;
    int K = c->top_k, E = c->n_experts;
    uint8_t *used = s->s.expert_used;
    for (int l = 0; l < c->n_layers; l++) {
        int T = m->routed_n[l], n = 0;
        if (!T) continue;
        const int32_t *sel = m->routed_sel + (size_t)l * (size_t)m->chunk_tokens * (size_t)K;
        memset(used, 0, (size_t)E);
        for (int i = 0; i < T * K; i++) used[sel[i]] = 1;
        for (int e = 0; e < E; e++)
            if (used[e]) m->dev_need[n++] = e;
        lm_device_cache_acquire(m->dcache, l, m->dev_need, n, NULL, m->dev_status);
        lm_device_cache_release_layer(m->dcache, l);
        if (m->trace) lm_trace_record(m->trace, l, sel, T, K);
        m->routed_n[l] = 0;
    }
}

/* Reads S->h, writes S->proj. seqs: a batch step (lm_forward_batch), routed on the host. */
static int moe_block(lazymoe_session *s, const lm_moe_block *mb, int l, int T, int batch, char *err) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    const lm_layer *ly = &s->m->w.layers[l];
    lm_scratch *S = &s->s;
    int E = c->n_experts, K = c->top_k, H = c->hidden_size;
    OP(be, be->ops->matmul(be, S->router, &ly->router, S->h, T));
    if (mb->router_bias) OP(be, be->ops->add_rows(be, S->router, mb->router_bias, T, E));
    OP(be, be->ops->route(be, &mb->router, S->router, T, S->sel, S->selw));
    int routed = batch ? 0 : routed_experts(s, mb, l, T, err);
    if (routed < 0) return -1;
    if (routed) {
        if (mb->shared && shared_expert(s, mb, ly, T, err) != 0) return -1;
        OP(be, be->ops->moe_combine(be, S->proj, S->eout, S->selw, mb->shared ? S->shared : NULL, T, K, H));
        return 0;
    }
    OP(be, be->ops->download(be, S->sel_host, S->sel, sizeof(int32_t) * (size_t)T * (size_t)K));
    if (s->m->replay.ids && replay_routes(s, l, T, err) != 0) return -1;
    if (s->m->dcache) {
        if (run_device_experts(s, mb, l, T, err) != 0) return -1;
    } else if (ly->experts) {
        if (group_routes(s, E, T * K, err) != 0) return -1;
        int n = 0;
        for (int e = 0; e < E; e++)
            if (S->expert_off[e + 1] > S->expert_off[e]) {
                S->expert_views[n] = ly->experts[e];
                S->expert_ids[n++] = e;
            }
        if (run_experts(s, mb, S->expert_views, S->expert_ids, n, err) != 0) return -1;
        if (mb->shared && shared_expert(s, mb, ly, T, err) != 0) return -1;
    } else if (run_lazy_experts(s, mb, l, T, err) != 0) {
        return -1;
    }
    if (s->m->trace) lm_trace_record(s->m->trace, l, S->sel_host, T, K);
    OP(be, be->ops->moe_combine(be, S->proj, S->eout, S->selw, mb->shared ? S->shared : NULL, T, K, H));
    return 0;
}

/* ---- router lookahead ------------------------------------------------------------------ */

/* Predicts the experts lazy MoE layer l will route to from its input, the residual
 * stream before its attention (the embeddings for the first layer), with layer l's own
 * post-attention norm and router, and reads the most likely ones that are not cached in
 * the background, so they load while layer l's attention computes and its cached
 * experts run. Why this point: on the project's 48-layer routing model, 8 predictions
 * made here hold 91% of the layer's experts, and 24% when made one sublayer earlier
 * (before layer l-1's MoE output is added, where this engine predicted until session
 * 17), so the earlier reads, though they had more time, were mostly wasted; at a 50%
 * memory cap, with Qwen3-30B-A3B's 2.65 MB experts, lookahead 8 from here decodes
 * 0.3-11.6% faster than none (bench/RESULTS.md, issue 20). */
static int lookahead(lazymoe_session *s, int l, int T, char *err) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    const lm_layer *ly = &s->m->w.layers[l];
    lm_scratch *S = &s->s;
    int E = c->n_experts, H = c->hidden_size, N = s->m->opt.lookahead, n = 0;
    if (N > E) N = E;
    const lm_trace_data *pred = &s->m->replay_pred;
    if (pred->ids) {
        /* Replay: the recorded prediction of each token (same index as replay_routes). */
        uint8_t *queued = S->la_mark;
        memset(queued, 0, (size_t)E);
        int P = N < pred->top_k ? N : pred->top_k;
        for (int t = 0; t < T; t++) {
            const int32_t *ids = pred->ids + ((size_t)(S->pos_host[t] % s->m->replay.n_tokens) * (size_t)pred->n_layers +
                                              (size_t)l) * (size_t)pred->top_k;
            for (int k = 0; k < P && ids[k] >= 0; k++)
                if (!queued[ids[k]]) queued[ids[k]] = 1, S->la_ids[n++] = ids[k];
        }
        lm_cache_prefetch_lookahead(s->m->cache, l, S->la_ids, n);
        return 0;
    }
    /* Nothing left to read early (every routed expert of recent steps was cached): the
     * prediction's own cost would be all this step gets. */
    if (!lm_cache_lookahead_useful(s->m->cache, l)) return 0;
    OP(be, be->ops->rmsnorm(be, S->la_h, S->x, ly->ffn_norm, T, H, c->rms_norm_eps));
    OP(be, be->ops->matmul(be, S->la_logits, &ly->router, S->la_h, T));
    OP(be, be->ops->download(be, S->la_logits_host, S->la_logits, sizeof(float) * (size_t)T * (size_t)E));
    uint8_t *mark = S->la_mark; /* bit 0: queued, bit 1: taken for this token */
    memset(mark, 0, (size_t)E);
    for (int t = 0; t < T; t++) {
        const float *lg = S->la_logits_host + (size_t)t * (size_t)E;
        for (int k = 0; k < N; k++) { /* N is small: repeated arg-max */
            int best = -1;
            for (int e = 0; e < E; e++)
                if (!(mark[e] & 2) && (best < 0 || lg[e] > lg[best])) best = e;
            if (!(mark[best] & 1)) S->la_ids[n++] = best;
            mark[best] |= 3;
        }
        for (int e = 0; e < E; e++) mark[e] &= 1;
    }
    lm_cache_prefetch_lookahead(s->m->cache, l, S->la_ids, n);
    return 0;
}

static int wants_lookahead(const lazymoe_session *s, int l, int T) {
    const lm_weights *w = &s->m->w;
    return s->m->cache && s->m->opt.lookahead > 0 && T <= LOOKAHEAD_MAX_TOKENS && l < w->cfg.n_layers &&
           w->layers[l].is_moe && !w->layers[l].experts && (!s->m->replay.ids || s->m->replay_pred.ids);
}

/* ---- the driver ---------------------------------------------------------------------- */

/* Linear attention for a batch step: each session's recurrence on its row, in its
 * own scratch (the solo decode path), the result copied back into the batch's rows. */
static int linear_batch(lazymoe_session *s, lazymoe_session *const *seqs, int l, int T, char *err) {
    lm_backend *be = BE(s);
    size_t H = (size_t)s->m->w.cfg.hidden_size;
    for (int i = 0; i < T; i++) {
        lazymoe_session *q = seqs[i];
        OP(be, be->ops->copy_rows(be, q->s.h, H, s->s.h + (size_t)i * H, H, 1, (int)H));
        if (lm_linear_block(q, l, 1, err) != 0) return -1;
        OP(be, be->ops->copy_rows(be, s->s.proj + (size_t)i * H, H, q->s.proj, H, 1, (int)H));
    }
    return 0;
}

static int layer(lazymoe_session *s, int l, int T, lazymoe_session *const *seqs, char *err) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    const lm_layer *ly = &s->m->w.layers[l];
    lm_scratch *S = &s->s;
    size_t TH = (size_t)T * (size_t)c->hidden_size;
    lm_layer_blocks b;
    lm_layer_blocks_of(&s->m->w, l, &b);
    if (l == 0 && wants_lookahead(s, 0, T) && lookahead(s, 0, T, err) != 0) return -1;
    OP(be, be->ops->rmsnorm(be, S->h, S->x, ly->attn_norm, T, c->hidden_size, c->rms_norm_eps));
    if (b.mixer == LM_MIXER_LINEAR) {
        if ((seqs ? linear_batch(s, seqs, l, T, err) : lm_linear_block(s, l, T, err)) != 0) return -1;
    } else if (attention_block(s, &b.attn, l, T, seqs, err) != 0) {
        return -1;
    }
    OP(be, be->ops->add(be, S->x, S->proj, TH));
    OP(be, be->ops->rmsnorm(be, S->h, S->x, ly->ffn_norm, T, c->hidden_size, c->rms_norm_eps));
    if (b.ffn == LM_FFN_DENSE) {
        if (dense_block(s, ly, T, err) != 0) return -1;
    } else if (moe_block(s, &b.moe, l, T, seqs != NULL, err) != 0) {
        return -1;
    }
    OP(be, be->ops->add(be, S->x, S->proj, TH));
    /* the residual is now layer l+1's input: predict its experts from it */
    if (wants_lookahead(s, l + 1, T) && lookahead(s, l + 1, T, err) != 0) return -1;
    return 0;
}

int lm_forward_can_scan(const lazymoe_session *s) {
    return s->m->be->ops->logits_scan && s->s.logits_scan_dev.ptr && s->s.logits_dev.ptr;
}

/* Scans the device logits of one token (S->logits_dev's first row) and queues the
 * result's copy into S->logits_scan_host (complete after the next download or sync).
 * Queued before the logits' own download, it is there when they are. */
static int scan_logits(lazymoe_session *s, char *err) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    OP(be, be->ops->logits_scan(be, S->logits_scan_dev.ptr, S->logits_dev.ptr, s->m->w.cfg.vocab_size));
    OP(be, be->ops->download_later(be, S->logits_scan_host, S->logits_scan_dev.ptr, sizeof S->logits_scan_host));
    return 0;
}

/* out[rows][V] (host memory) = lm_head . S->h[rows]: in place where the backend's
 * memory is the host's, else into the device logits buffer and downloaded, a few
 * rows at a time. scan (one row, lm_forward_can_scan): the row is also scanned on the
 * device; out may then be NULL, and the logits stay there. */
static int head_logits(lazymoe_session *s, int rows, float *out, int scan, char *err) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    const lm_weights *w = &s->m->w;
    if (be->ops->host_memory) {
        OP(be, be->ops->matmul(be, out, &w->lm_head, S->h, rows));
        return 0;
    }
    size_t V = (size_t)w->cfg.vocab_size, H = (size_t)w->cfg.hidden_size;
    if (S->logits_rows < 1 || !S->logits_dev.ptr)
        return lm_errf(err, "the %s backend has no device logits buffer (a scratch of no tokens)", be->ops->name);
    for (int r0 = 0; r0 < rows; r0 += S->logits_rows) {
        int m = rows - r0 < S->logits_rows ? rows - r0 : S->logits_rows;
        OP(be, be->ops->matmul(be, S->logits_dev.ptr, &w->lm_head, S->h + (size_t)r0 * H, m));
        if (scan && scan_logits(s, err) != 0) return -1;
        if (out) OP(be, be->ops->download(be, out + (size_t)r0 * V, S->logits_dev.ptr, sizeof(float) * (size_t)m * V));
    }
    return 0;
}

/* ---- decode steps replayed from a recording (backends with step_replay) ------------------- */

static uint64_t key_mix(uint64_t h, const void *p) {
    uintptr_t v = (uintptr_t)p;
    for (size_t i = 0; i < sizeof v; i++) {
        h ^= (uint8_t)(v >> (8 * i));
        h *= 0x100000001b3ull; /* FNV-1a */
    }
    return h;
}

/* Whether a step of T tokens never waits for the device -- one token, attention
 * layers only, every MoE layer routed on the device, no lookahead (which reads the
 * router's guesses on the host) -- and, if so, the key of what its recording
 * depends on: the session, its scratch, its KV caches (they move when they grow)
 * and the device expert tables. */
static int step_key(const lazymoe_session *s, int T, uint64_t *key) {
    const lazymoe_model *m = s->m;
    const lm_weights *w = &m->w;
    lm_backend *be = BE(s);
    if (!be->ops->step_replay || T != 1 || s->lin || m->replay.ids || s->s.logits_rows < 1 || !s->s.logits_dev.ptr)
        return 0;
    uint64_t h = key_mix(0xcbf29ce484222325ull, s);
    h = key_mix(h, s->s.x);
    h = key_mix(h, s->s.logits_dev.ptr);
    h = key_mix(h, s->s.logits_scan_dev.ptr);
    for (int l = 0; l < w->cfg.n_layers; l++) {
        lm_layer_blocks b;
        lm_layer_blocks_of(w, l, &b);
        if (b.mixer != LM_MIXER_ATTENTION || wants_lookahead(s, l, T)) return 0;
        if (b.ffn == LM_FFN_MOE) {
            if (!routes_on_device(s, &b.moe, l, T)) return 0;
            h = key_mix(h, m->dev_table[l]);
        }
        h = key_mix(h, s->k_cache[l].data);
        h = key_mix(h, s->k_cache[l].scales);
        h = key_mix(h, s->v_cache[l].data);
        h = key_mix(h, s->v_cache[l].scales);
    }
    *key = h;
    return 1;
}

/* The chunk's tokens (S->ids) through the embedding and every layer, into S->x. */
static int embed_and_layers(lazymoe_session *s, int T, char *err) {
    const lm_weights *w = &s->m->w;
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    OP(be, be->ops->embed(be, S->x, &w->embed, S->ids, T));
    for (int l = 0; l < w->cfg.n_layers; l++)
        if (layer(s, l, T, NULL, err) != 0) return -1;
    return 0;
}

/* The ops of one step that ends in the device logits of its last token, scanned
 * where the backend scans logits (so that a replay checks and picks from them too). */
static int step_ops(lazymoe_session *s, int T, char *err) {
    const lm_weights *w = &s->m->w;
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    size_t H = (size_t)w->cfg.hidden_size;
    if (embed_and_layers(s, T, err) != 0) return -1;
    OP(be, be->ops->rmsnorm(be, S->h, S->x + (size_t)(T - 1) * H, w->final_norm, 1, (int)H, w->cfg.rms_norm_eps));
    OP(be, be->ops->matmul(be, S->logits_dev.ptr, &w->lm_head, S->h, 1));
    if (lm_forward_can_scan(s) && scan_logits(s, err) != 0) return -1;
    return 0;
}

/* Runs a recordable step from its recording: 1 = done (the last token's logits in
 * S->logits_dev), 0 = run it op by op, -1 = error. The first step of a key runs op
 * by op (weights and tables reach the device then, which a recording cannot do);
 * the second is recorded; the later ones replay it. */
static int graph_step(lazymoe_session *s, int T, char *err) {
    lazymoe_model *m = s->m;
    lm_backend *be = BE(s);
    uint64_t key;
    if (!step_key(s, T, &key)) return 0;
    int r = be->ops->step_replay(be, key, s->n_past);
    if (r < 0) return lm_errf(err, "%s backend: %s", be->ops->name, lm_backend_error(be));
    if (r == 0) {
        if (s->step_seen != key) {
            s->step_seen = key;
            return 0;
        }
        r = be->ops->step_record_begin(be, key, s->n_past);
        if (r <= 0) return r < 0 ? lm_errf(err, "%s backend: %s", be->ops->name, lm_backend_error(be)) : 0;
        int ok = step_ops(s, T, err) == 0;
        r = be->ops->step_record_end(be, ok);
        if (r < 0) return lm_errf(err, "%s backend: %s", be->ops->name, lm_backend_error(be));
        if (r == 0) { /* nothing ran: the caller runs the step op by op */
            for (int l = 0; m->routed_n && l < m->w.cfg.n_layers; l++) m->routed_n[l] = 0;
            return 0;
        }
        return 1; /* the recording set routed_n as the ops ran */
    }
    for (int l = 0; m->routed_n && l < m->w.cfg.n_layers; l++)
        if (m->w.layers[l].is_moe) m->routed_n[l] = T;
    return 1;
}

/* lm_forward, or with scan_only (out NULL, all 0, lm_forward_can_scan) the last
 * token's logits left on the device and only scanned. Wherever the last token's
 * logits alone are computed on a backend that scans, they are scanned, and
 * s->logits_scanned says so. */
static int forward(lazymoe_session *s, const int32_t *ids, int n, float *out, int all, int scan_only, char *err) {
    const lm_weights *w = &s->m->w;
    const lm_config *c = &w->cfg;
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    int H = c->hidden_size, V = c->vocab_size;
    int want = out || scan_only; /* the last token's logits (or every token's, with all) */
    s->logits_scanned = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return lm_errf(err, "token id %d at position %d is outside the vocabulary (0..%d)", ids[i], i, V - 1);
    for (int done = 0; done < n;) {
        int T = n - done < S->cap_tokens ? n - done : S->cap_tokens;
        for (int t = 0; t < T; t++) S->pos_host[t] = s->n_past + t;
        OP(be, be->ops->upload(be, S->pos, S->pos_host, sizeof(int32_t) * (size_t)T));
        OP(be, be->ops->upload(be, S->ids, ids + done, sizeof(int32_t) * (size_t)T));
        if (s->m->cache) lm_cache_begin_step(s->m->cache);
        if (s->m->dcache) lm_device_cache_begin_step(s->m->dcache);
        double t_replay = lm_op_timing ? lm_op_timing_now() : 0.0;
        int replayed = want && (all || done + T == n) ? graph_step(s, T, err) : 0;
        if (lm_op_timing && replayed > 0) lm_op_timing_add("graph_step (a recorded step replayed)", t_replay);
        if (replayed < 0) return -1;
        if (!replayed && embed_and_layers(s, T, err) != 0) return -1;
        if (s->lin) lm_linear_end_chunk(s->lin, s->n_past, T);
        s->n_past += T;
        done += T;
        int synced = 0;
        if (replayed) { /* the step's recording left the logits of its one token on the device, scanned */
            float *dst = out && all ? out + (size_t)(done - T) * (size_t)V : out;
            if (dst) OP(be, be->ops->download(be, dst, S->logits_dev.ptr, sizeof(float) * (size_t)V));
            else OP_AT(be, "sync for the scan of the logits (kept on the device)", be->ops->sync(be));
            synced = 1;
            s->logits_scanned = done == n && lm_forward_can_scan(s);
        } else if (want && (all || done == n)) {
            int first = all ? 0 : T - 1;
            int rows = T - first;
            int scan = rows == 1 && done == n && lm_forward_can_scan(s);
            OP(be, be->ops->rmsnorm(be, S->h, S->x + (size_t)first * (size_t)H, w->final_norm, rows, H,
                                    c->rms_norm_eps));
            float *dst = out && all ? out + (size_t)(done - T) * (size_t)V : out;
            if (head_logits(s, rows, dst, scan, err) != 0) return -1;
            if (!out) OP_AT(be, "sync for the scan of the logits (kept on the device)", be->ops->sync(be));
            synced = !be->ops->host_memory; /* the logits' download (or the sync) waited for the step */
            s->logits_scanned = scan;
        }
        if (s->m->routed_n) {
            int any = 0;
            for (int l = 0; l < c->n_layers; l++) any |= s->m->routed_n[l] != 0;
            if (any && !synced) OP(be, be->ops->sync(be));
            if (any) {
                double t_acc = lm_op_timing ? lm_op_timing_now() : 0.0;
                routed_accounting(s);
                if (lm_op_timing) lm_op_timing_add("routed_accounting(s)", t_acc);
            }
        }
        if (s->m->trace && lm_trace_end_chunk(s->m->trace, T, err) != 0) return -1;
    }
    return 0;
}

int lm_forward(lazymoe_session *s, const int32_t *ids, int n, float *out, int all, char *err) {
    return forward(s, ids, n, out, all, 0, err);
}

int lm_forward_scanned(lazymoe_session *s, const int32_t *ids, int n, char *err) {
    if (!lm_forward_can_scan(s))
        return lm_errf(err, "the %s backend cannot scan logits on the device", BE(s)->ops->name);
    return forward(s, ids, n, NULL, 0, 1, err);
}

int lm_forward_download_scanned(lazymoe_session *s, float *out, char *err) {
    lm_backend *be = BE(s);
    if (!s->logits_scanned) return lm_errf(err, "no scanned logits to download");
    /* the one row computed is the buffer's first (head_logits, step_ops) */
    OP(be, be->ops->download(be, out, s->s.logits_dev.ptr, sizeof(float) * (size_t)s->m->w.cfg.vocab_size));
    return 0;
}

int lm_forward_batch(lazymoe_session *b, lazymoe_session *const *seqs, const int32_t *ids, int n, float *out,
                     char *err) {
    const lm_weights *w = &b->m->w;
    const lm_config *c = &w->cfg;
    lm_backend *be = BE(b);
    lm_scratch *S = &b->s;
    int H = c->hidden_size, V = c->vocab_size;
    if (n < 1 || n > S->cap_tokens) return lm_errf(err, "a batch step takes 1..%d sequences, not %d", S->cap_tokens, n);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= V)
            return lm_errf(err, "token id %d of sequence %d is outside the vocabulary (0..%d)", ids[i], i, V - 1);
        if (seqs[i]->m != b->m) return lm_errf(err, "sequence %d belongs to another model", i);
        for (int j = 0; j < i; j++)
            if (seqs[j] == seqs[i]) return lm_errf(err, "a session appears twice in one batch step");
        S->pos_host[i] = seqs[i]->n_past;
    }
    OP(be, be->ops->upload(be, S->pos, S->pos_host, sizeof(int32_t) * (size_t)n));
    OP(be, be->ops->upload(be, S->ids, ids, sizeof(int32_t) * (size_t)n));
    OP(be, be->ops->embed(be, S->x, &w->embed, S->ids, n));
    if (b->m->cache) lm_cache_begin_step(b->m->cache);
    if (b->m->dcache) lm_device_cache_begin_step(b->m->dcache);
    for (int l = 0; l < c->n_layers; l++)
        if (layer(b, l, n, seqs, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        if (seqs[i]->lin) lm_linear_end_chunk(seqs[i]->lin, seqs[i]->n_past, 1);
        seqs[i]->n_past++;
    }
    if (b->m->trace && lm_trace_end_chunk(b->m->trace, n, err) != 0) return -1;
    if (out) {
        OP(be, be->ops->rmsnorm(be, S->h, S->x, w->final_norm, n, H, c->rms_norm_eps));
        if (head_logits(b, n, out, 0, err) != 0) return -1;
    }
    return 0;
}

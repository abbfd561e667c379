/* The forward pass shared by every supported family.
 *
 * Per layer (shapes in floats, T = tokens in this chunk):
 *   h = rmsnorm(x)                               [T][H]
 *   linear-attention layers (qwen3_next): x += linear_attention.c's block; else
 *   q,k,v = h.Wq, h.Wk, h.Wv (+ q/k norm, clip)   [T][nq], [T][nkv]
 *   rope(q, k); append k, v to the cache; att = softmax(q.K^T / sqrt(d)).V
 *   (qwen3_next: att *= sigmoid(gate), the gate coming out of q_proj with q)
 *   x += att.Wo
 *   h = rmsnorm(x)
 *   dense:  x += down(silu(gate(h)) * up(h))
 *   MoE:    p = softmax(h.Wr); top-k experts per token (renormalised if the
 *           family says so); every chosen expert runs on the tokens that chose
 *           it (batched per expert), and each token sums w * expert(h) over its
 *           experts in ascending expert order -- the order transformers uses, and
 *           one that does not depend on when an expert's weights became
 *           available, which keeps lazy and resident runs bit-identical;
 *           a shared expert (qwen3_next) adds sigmoid(h.w) * mlp(h) after that sum.
 */
#include "engine/engine.h"

#include "common/error.h"
#include "engine/linear_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BE(s) ((s)->m->be)

static void add_bias(float *y, const float *b, int n, int dim) {
    if (!b) return;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++) y[(size_t)t * (size_t)dim + (size_t)i] += b[i];
}

static void clamp_all(float *y, size_t n, float lim) {
    for (size_t i = 0; i < n; i++) y[i] = y[i] > lim ? lim : (y[i] < -lim ? -lim : y[i]);
}

static void attention_block(lazymoe_session *s, int l, int T) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    const lm_layer *ly = &s->m->w.layers[l];
    lm_scratch *S = &s->s;
    int H = c->hidden_size, hd = c->head_dim, nq = c->n_heads * hd, nkv = c->n_kv_heads * hd;

    be->ops->rmsnorm(be, S->h, S->x, ly->attn_norm, T, H, c->rms_norm_eps);
    float *kdst = S->knew, *vdst = S->vnew;
    /* q_proj gives each head its query then its output gate with attn_output_gate (qwen3_next). */
    const lm_matmul_item qkv[3] = {{c->attn_output_gate ? S->qgate : S->q, &ly->q, S->h, T},
                                   {kdst, &ly->k, S->h, T}, {vdst, &ly->v, S->h, T}};
    be->ops->matmul_batch(be, qkv, 3);
    if (c->attn_output_gate)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < c->n_heads; h++)
                memcpy(S->q + (size_t)t * (size_t)nq + (size_t)h * (size_t)hd,
                       S->qgate + ((size_t)t * (size_t)c->n_heads + (size_t)h) * 2 * (size_t)hd, sizeof(float) * (size_t)hd);
    add_bias(S->q, ly->q_bias, T, nq);
    add_bias(kdst, ly->k_bias, T, nkv);
    add_bias(vdst, ly->v_bias, T, nkv);
    if (c->qk_norm == LM_QK_NORM_FULL) {
        be->ops->rmsnorm(be, S->q, S->q, ly->q_norm, T, nq, c->rms_norm_eps);
        be->ops->rmsnorm(be, kdst, kdst, ly->k_norm, T, nkv, c->rms_norm_eps);
    }
    if (c->clip_qkv > 0) {
        clamp_all(S->q, (size_t)T * (size_t)nq, c->clip_qkv);
        clamp_all(kdst, (size_t)T * (size_t)nkv, c->clip_qkv);
        clamp_all(vdst, (size_t)T * (size_t)nkv, c->clip_qkv);
    }
    if (c->qk_norm == LM_QK_NORM_PER_HEAD) {
        be->ops->rmsnorm(be, S->q, S->q, ly->q_norm, T * c->n_heads, hd, c->rms_norm_eps);
        be->ops->rmsnorm(be, kdst, kdst, ly->k_norm, T * c->n_kv_heads, hd, c->rms_norm_eps);
    }
    be->ops->rope(be, S->q, T, c->n_heads, hd, S->pos, s->m->w.rope_inv_freq, c->rope_dim / 2);
    be->ops->rope(be, kdst, T, c->n_kv_heads, hd, S->pos, s->m->w.rope_inv_freq, c->rope_dim / 2);
    be->ops->kv_store(be, &s->k_cache[l], s->n_past, kdst, T, c->n_kv_heads, hd);
    be->ops->kv_store(be, &s->v_cache[l], s->n_past, vdst, T, c->n_kv_heads, hd);
    be->ops->attention(be, S->att, S->q, &s->k_cache[l], &s->v_cache[l], T, s->n_past, c->n_heads,
                       c->n_kv_heads, hd, 1.0f / sqrtf((float)hd), c->sliding_window);
    if (c->attn_output_gate)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < c->n_heads; h++) {
                float *a = S->att + (size_t)t * (size_t)nq + (size_t)h * (size_t)hd;
                const float *g = S->qgate + ((size_t)t * (size_t)c->n_heads + (size_t)h) * 2 * (size_t)hd + hd;
                for (int i = 0; i < hd; i++) a[i] *= 1.0f / (1.0f + expf(-g[i]));
            }
    be->ops->matmul(be, S->proj, &ly->o, S->att, T);
    add_bias(S->proj, ly->o_bias, T, H);
    for (size_t i = 0; i < (size_t)T * (size_t)H; i++) S->x[i] += S->proj[i];
}

static void dense_mlp(lazymoe_session *s, const lm_layer *ly, int T) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    int F = ly->mlp_gate.rows;
    be->ops->matmul(be, S->gate, &ly->mlp_gate, S->h, T);
    be->ops->matmul(be, S->up, &ly->mlp_up, S->h, T);
    be->ops->swiglu(be, S->gate, S->up, (size_t)T * (size_t)F);
    be->ops->matmul(be, S->proj, &ly->mlp_down, S->gate, T);
}

/* Softmax router + top-k: fills sel[T][k] (ascending expert order) and selw. */
static void route(const lm_config *c, const float *logits, int T, int32_t *sel, float *selw) {
    int E = c->n_experts, K = c->top_k;
    for (int t = 0; t < T; t++) {
        const float *lg = logits + (size_t)t * (size_t)E;
        float mx = lg[0];
        for (int e = 1; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
        float sum = 0;
        for (int e = 0; e < E; e++) sum += expf(lg[e] - mx);
        int32_t *st = sel + (size_t)t * (size_t)K;
        float *wt = selw + (size_t)t * (size_t)K;
        /* Top-k by probability; ties go to the lower index. K is small: selection sort. */
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= st[j] == e;
                if (!taken && (best < 0 || lg[e] > lg[best])) best = e;
            }
            st[k] = best;
            wt[k] = expf(lg[best] - mx) / sum;
        }
        if (c->norm_topk_prob) {
            float tot = 0;
            for (int k = 0; k < K; k++) tot += wt[k];
            for (int k = 0; k < K; k++) wt[k] /= tot;
        }
        /* Ascending expert order fixes the summation order. */
        for (int a = 1; a < K; a++)
            for (int b = a; b > 0 && st[b - 1] > st[b]; b--) {
                int32_t ti = st[b]; st[b] = st[b - 1]; st[b - 1] = ti;
                float tw = wt[b]; wt[b] = wt[b - 1]; wt[b - 1] = tw;
            }
    }
}

/* Sorts the chunk's (token, slot) routes by expert: expert e's routes are
 * tok_of[expert_off[e] .. expert_off[e+1]), in token order. */
static void group_routes(lm_scratch *S, int E, int TK) {
    memset(S->expert_off, 0, sizeof(int32_t) * (size_t)(E + 1));
    for (int i = 0; i < TK; i++) S->expert_off[S->sel[i] + 1]++;
    for (int e = 0; e < E; e++) S->expert_off[e + 1] += S->expert_off[e];
    memcpy(S->expert_cur, S->expert_off, sizeof(int32_t) * (size_t)E);
    for (int i = 0; i < TK; i++) S->tok_of[S->expert_cur[S->sel[i]]++] = i;
}

/* Runs experts ids[0..n) (weights views[0..n)) on the tokens of this chunk that chose
 * them (group_routes first) and writes each result into eout[token * K + slot]. As
 * many experts as the scratch holds tokens for go together: their gate and up
 * products in one backend batch, their down products in another, so a layer costs
 * a few hand-overs to the threads rather than two per expert. */
static void run_experts(lazymoe_session *s, const lm_expert *views, const int32_t *ids, int n) {
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
        int base = 0;
        for (int k = i; k < j; k++) {
            const int32_t *routes = S->tok_of + S->expert_off[ids[k]];
            int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
            float *xe = S->xe + (size_t)base * (size_t)H;
            for (int r = 0; r < m; r++)
                memcpy(xe + (size_t)r * (size_t)H, S->h + (size_t)(routes[r] / K) * (size_t)H, sizeof(float) * (size_t)H);
            items[2 * (k - i)] = (lm_matmul_item){S->gate + (size_t)base * (size_t)I, &views[k].gate, xe, m};
            items[2 * (k - i) + 1] = (lm_matmul_item){S->up + (size_t)base * (size_t)I, &views[k].up, xe, m};
            base += m;
        }
        be->ops->matmul_batch(be, items, 2 * (j - i));
        be->ops->swiglu(be, S->gate, S->up, (size_t)tokens * (size_t)I);
        base = 0;
        for (int k = i; k < j; k++) {
            int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
            items[k - i] = (lm_matmul_item){S->proj + (size_t)base * (size_t)H, &views[k].down,
                                            S->gate + (size_t)base * (size_t)I, m};
            base += m;
        }
        be->ops->matmul_batch(be, items, j - i);
        base = 0;
        for (int k = i; k < j; k++) {
            const int32_t *routes = S->tok_of + S->expert_off[ids[k]];
            int m = S->expert_off[ids[k] + 1] - S->expert_off[ids[k]];
            for (int r = 0; r < m; r++)
                memcpy(S->eout + (size_t)routes[r] * (size_t)H, S->proj + (size_t)(base + r) * (size_t)H,
                       sizeof(float) * (size_t)H);
            base += m;
        }
        i = j;
    }
}

/* The shared expert (qwen3_next) into S->shared: sigmoid(h.w_g) * down(silu(gate h) * up h).
 * Uses S->gate/S->up and overwrites the router logits (route() has consumed them). */
static void shared_expert(lazymoe_session *s, const lm_layer *ly, int T) {
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    int H = s->m->w.cfg.hidden_size, SI = ly->shared_gate.rows;
    be->ops->matmul(be, S->gate, &ly->shared_gate, S->h, T);
    be->ops->matmul(be, S->up, &ly->shared_up, S->h, T);
    be->ops->swiglu(be, S->gate, S->up, (size_t)T * (size_t)SI);
    be->ops->matmul(be, S->shared, &ly->shared_down, S->gate, T);
    be->ops->matmul(be, S->router, &ly->shared_expert_gate, S->h, T);
    for (int t = 0; t < T; t++) {
        float w = 1.0f / (1.0f + expf(-S->router[t]));
        float *y = S->shared + (size_t)t * (size_t)H;
        for (int i = 0; i < H; i++) y[i] *= w;
    }
}

/* Lazy experts: acquire every distinct expert the chunk routed to; compute the
 * cached ones while the misses are read, then each miss as it lands. When the
 * chunk needs more experts than the layer has slots, it goes in waves, still
 * reading each expert once per chunk. A shared expert is computed while the first
 * wave's misses are read. */
static int run_lazy_experts(lazymoe_session *s, int l, int T, char *err) {
    lm_expert_cache *cache = s->m->cache;
    const lm_config *c = &s->m->w.cfg;
    lm_scratch *S = &s->s;
    int E = c->n_experts, n = 0, shared_done = 0;
    uint8_t *used = S->expert_used;
    memset(used, 0, (size_t)E);
    for (int i = 0; i < T * c->top_k; i++) used[S->sel[i]] = 1;
    for (int e = 0; e < E; e++)
        if (used[e]) S->need[n++] = e;
    group_routes(S, E, T * c->top_k);
    while (n > 0) {
        int got = lm_cache_acquire(cache, l, S->need, n, S->need_status);
        if (got == 0) return lm_errf(err, "expert cache of layer %d has no free slot", l);
        int rc = 0;
        /* The hits together, while the misses are read; then each miss as it lands. */
        int hits = 0;
        for (int i = 0; i < n && rc == 0; i++) {
            if (S->need_status[i] != 1) continue;
            rc = lm_cache_wait(cache, l, S->need[i], &S->expert_views[hits], err);
            S->expert_ids[hits++] = S->need[i];
        }
        if (rc == 0 && hits) run_experts(s, S->expert_views, S->expert_ids, hits);
        if (rc == 0 && !shared_done && s->m->w.layers[l].shared_gate.rows) {
            shared_expert(s, &s->m->w.layers[l], T);
            shared_done = 1;
        }
        for (int i = 0; i < n && rc == 0; i++) {
            if (S->need_status[i] != 2) continue;
            rc = lm_cache_wait(cache, l, S->need[i], &S->expert_views[0], err);
            if (rc == 0) run_experts(s, S->expert_views, &S->need[i], 1);
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

static int moe_block(lazymoe_session *s, int l, int T, char *err) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    const lm_layer *ly = &s->m->w.layers[l];
    lm_scratch *S = &s->s;
    int E = c->n_experts, K = c->top_k, H = c->hidden_size;
    be->ops->matmul(be, S->router, &ly->router, S->h, T);
    route(c, S->router, T, S->sel, S->selw);
    const lm_trace_data *rp = &s->m->replay;
    if (rp->ids) /* benchmark replay: the trace's picks, equal weights */
        for (int t = 0; t < T; t++) {
            const int32_t *ids = rp->ids + ((size_t)((s->n_past + t) % rp->n_tokens) * (size_t)rp->n_layers +
                                            (size_t)l) * (size_t)K;
            for (int k = 0; k < K; k++) {
                S->sel[t * K + k] = ids[k] >= 0 ? ids[k] : k;
                S->selw[t * K + k] = 1.0f / (float)K;
            }
        }
    if (ly->experts) {
        group_routes(S, E, T * K);
        int n = 0;
        for (int e = 0; e < E; e++)
            if (S->expert_off[e + 1] > S->expert_off[e]) {
                S->expert_views[n] = ly->experts[e];
                S->expert_ids[n++] = e;
            }
        run_experts(s, S->expert_views, S->expert_ids, n);
        if (ly->shared_gate.rows) shared_expert(s, ly, T);
    } else if (run_lazy_experts(s, l, T, err) != 0) {
        return -1;
    }
    if (s->m->trace) lm_trace_record(s->m->trace, l, S->sel, T, K);
    for (int t = 0; t < T; t++) {
        float *y = S->proj + (size_t)t * (size_t)H;
        memset(y, 0, sizeof(float) * (size_t)H);
        for (int k = 0; k < K; k++) {
            float wk = S->selw[t * K + k];
            const float *o = S->eout + ((size_t)t * (size_t)K + (size_t)k) * (size_t)H;
            for (int i = 0; i < H; i++) y[i] += o[i] * wk;
        }
        if (ly->shared_gate.rows) { /* transformers adds the shared expert after the routed sum */
            const float *sh = S->shared + (size_t)t * (size_t)H;
            for (int i = 0; i < H; i++) y[i] += sh[i];
        }
    }
    return 0;
}

/* Router lookahead: predicts the experts lazy MoE layer l will route to from the residual
 * stream as it is now (before layer l-1's MoE output is added, or the embeddings for
 * the first layer), with layer l's own norm and router, and reads the most likely
 * ones that are not cached in the background, so they load while layer l-1's experts
 * and layer l's attention compute. */
static void lookahead(lazymoe_session *s, int l, int T) {
    lm_backend *be = BE(s);
    const lm_config *c = &s->m->w.cfg;
    const lm_layer *ly = &s->m->w.layers[l];
    lm_scratch *S = &s->s;
    int E = c->n_experts, H = c->hidden_size, N = s->m->opt.lookahead, n = 0;
    if (N > E) N = E;
    be->ops->rmsnorm(be, S->la_h, S->x, ly->ffn_norm, T, H, c->rms_norm_eps);
    be->ops->matmul(be, S->la_logits, &ly->router, S->la_h, T);
    uint8_t *mark = S->la_mark; /* bit 0: queued, bit 1: taken for this token */
    memset(mark, 0, (size_t)E);
    for (int t = 0; t < T; t++) {
        const float *lg = S->la_logits + (size_t)t * (size_t)E;
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
}

static int wants_lookahead(const lazymoe_session *s, int l, int T) {
    const lm_weights *w = &s->m->w;
    return s->m->cache && s->m->opt.lookahead > 0 && T <= LOOKAHEAD_MAX_TOKENS && l < w->cfg.n_layers &&
           w->layers[l].is_moe && !w->layers[l].experts && !s->m->replay.ids;
}

static void embed(lazymoe_session *s, const int32_t *ids, int T) {
    const lm_weights *w = &s->m->w;
    int H = w->cfg.hidden_size;
    for (int t = 0; t < T; t++) lm_mat_row_f32(&w->embed, ids[t], s->s.x + (size_t)t * (size_t)H);
}

int lm_forward(lazymoe_session *s, const int32_t *ids, int n, float *out, int all, char *err) {
    const lm_weights *w = &s->m->w;
    const lm_config *c = &w->cfg;
    lm_backend *be = BE(s);
    lm_scratch *S = &s->s;
    int H = c->hidden_size, V = c->vocab_size;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return lm_errf(err, "token id %d at position %d is outside the vocabulary (0..%d)", ids[i], i, V - 1);
    for (int done = 0; done < n;) {
        int T = n - done < S->cap_tokens ? n - done : S->cap_tokens;
        for (int t = 0; t < T; t++) S->pos[t] = s->n_past + t;
        embed(s, ids + done, T);
        if (s->m->cache) lm_cache_begin_step(s->m->cache);
        for (int l = 0; l < c->n_layers; l++) {
            const lm_layer *ly = &w->layers[l];
            if (l == 0 && wants_lookahead(s, 0, T)) lookahead(s, 0, T);
            if (ly->is_linear) {
                be->ops->rmsnorm(be, S->h, S->x, ly->attn_norm, T, H, c->rms_norm_eps);
                if (lm_linear_block(s, l, T, err) != 0) return -1;
                for (size_t i = 0; i < (size_t)T * (size_t)H; i++) S->x[i] += S->proj[i];
            } else {
                attention_block(s, l, T);
            }
            if (wants_lookahead(s, l + 1, T)) lookahead(s, l + 1, T);
            be->ops->rmsnorm(be, S->h, S->x, ly->ffn_norm, T, H, c->rms_norm_eps);
            if (!ly->is_moe) dense_mlp(s, ly, T);
            else if (moe_block(s, l, T, err) != 0) return -1;
            for (size_t i = 0; i < (size_t)T * (size_t)H; i++) S->x[i] += S->proj[i];
        }
        if (s->lin) lm_linear_end_chunk(s->lin, s->n_past, T);
        if (s->m->trace && lm_trace_end_chunk(s->m->trace, T, err) != 0) return -1;
        s->n_past += T;
        done += T;
        if (out && (all || done == n)) {
            int first = all ? 0 : T - 1;
            int rows = T - first;
            be->ops->rmsnorm(be, S->h, S->x + (size_t)first * (size_t)H, w->final_norm, rows, H, c->rms_norm_eps);
            float *dst = all ? out + (size_t)(done - T) * (size_t)V : out;
            be->ops->matmul(be, dst, &w->lm_head, S->h, rows);
        }
    }
    return 0;
}

/* CPU backend operations: memory, elementwise work, embeddings and MoE routing.
 *
 * These run on the calling thread: each is a pass over at most a chunk's
 * activations (a few MB in prefill, a few KB in decode), cheaper than a hand-over
 * to the pool. They are the exact loops the forward pass used to run itself.
 */
#include "kernels/cpu/cpu_ops.h"

#include "formats/ggml_blocks.h"
#include "platform/platform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- memory --------------------------------------------------------------------- */

int lm_cpu_alloc(lm_backend *be, lm_buf *out, size_t bytes) {
    out->ptr = lm_malloc_aligned(bytes, "a backend buffer", be->err);
    out->bytes = out->ptr ? bytes : 0;
    return out->ptr ? 0 : -1;
}

void lm_cpu_free(lm_backend *be, lm_buf *buf) {
    (void)be;
    lm_free_aligned(buf->ptr);
}

/* Host and device memory are the same on the CPU: upload, download and copy are memmove. */
int lm_cpu_copy(lm_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
    return 0;
}

int lm_cpu_sync(lm_backend *be) {
    (void)be;
    return 0;
}

/* ---- rows and elementwise ---------------------------------------------------------- */

int lm_cpu_embed(lm_backend *be, float *x, const lm_mat *W, const int32_t *ids, int n) {
    if (lm_dtype_is_block(W->dtype) && !lm_blocks_supported(W->dtype) && W->dtype != LM_DT_MXFP4)
        return lm_errf(be->err, "no CPU conversion for embeddings of type %s", lm_dtype_name(W->dtype));
    for (int t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= W->rows) return lm_errf(be->err, "embedding row %d of %d", ids[t], W->rows);
        lm_mat_row_f32(W, ids[t], x + (size_t)t * (size_t)W->cols);
    }
    return 0;
}

int lm_cpu_add(lm_backend *be, float *y, const float *x, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] += x[i];
    return 0;
}

int lm_cpu_add_rows(lm_backend *be, float *y, const float *b, int n, int dim) {
    (void)be;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++) y[(size_t)t * (size_t)dim + (size_t)i] += b[i];
    return 0;
}

int lm_cpu_clamp(lm_backend *be, float *y, size_t n, float lim) {
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] = y[i] > lim ? lim : (y[i] < -lim ? -lim : y[i]);
    return 0;
}

int lm_cpu_copy_rows(lm_backend *be, float *dst, size_t dst_stride, const float *src, size_t src_stride, int rows,
                     int width) {
    (void)be;
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * dst_stride, src + (size_t)r * src_stride, sizeof(float) * (size_t)width);
    return 0;
}

int lm_cpu_sigmoid_mul(lm_backend *be, float *y, size_t y_stride, const float *g, size_t g_stride, int rows,
                       int width, int per_row) {
    (void)be;
    for (int r = 0; r < rows; r++) {
        float *yr = y + (size_t)r * y_stride;
        const float *gr = g + (size_t)r * g_stride;
        if (per_row) {
            float w = 1.0f / (1.0f + expf(-gr[0]));
            for (int i = 0; i < width; i++) yr[i] *= w;
        } else {
            for (int i = 0; i < width; i++) yr[i] *= 1.0f / (1.0f + expf(-gr[i]));
        }
    }
    return 0;
}

/* transformers' order: glu = gate * sigmoid(gate * alpha), then (up + 1) * glu. */
static inline float swiglu_clamped_one(float g, float u, float alpha, float limit) {
    float a = g > limit ? limit : g;
    float b = u > limit ? limit : (u < -limit ? -limit : u);
    float glu = a * (1.0f / (1.0f + expf(-(a * alpha))));
    return (b + 1.0f) * glu;
}

int lm_cpu_swiglu_clamped(lm_backend *be, float *out, const float *gu, size_t n, float alpha, float limit) {
    (void)be;
    for (size_t i = 0; i < n; i++) out[i] = swiglu_clamped_one(gu[2 * i], gu[2 * i + 1], alpha, limit);
    return 0;
}

int lm_cpu_swiglu_clamped_split(lm_backend *be, float *out, const float *gate, const float *up, size_t n, float alpha,
                                float limit) {
    (void)be;
    for (size_t i = 0; i < n; i++) out[i] = swiglu_clamped_one(gate[i], up[i], alpha, limit);
    return 0;
}

/* ---- routing --------------------------------------------------------------------- */

/* The index of the largest score[e] over e < E not yet in taken[0..k) and allowed
 * (allowed NULL = all); ties go to the lower index; -1 if none is left. K is small:
 * selection by repeated scans. */
static int best_left(const float *score, int E, const int32_t *taken, int k, const uint8_t *allowed) {
    int best = -1;
    for (int e = 0; e < E; e++) {
        if (allowed && !allowed[e]) continue;
        int used = 0;
        for (int j = 0; j < k; j++) used |= taken[j] == e;
        if (!used && (best < 0 || score[e] > score[best])) best = e;
    }
    return best;
}

/* Puts a token's choices in ascending expert order, which fixes the summation order. */
static void sort_by_expert(int32_t *st, float *wt, int K) {
    for (int a = 1; a < K; a++)
        for (int b = a; b > 0 && st[b - 1] > st[b]; b--) {
            int32_t ti = st[b];
            st[b] = st[b - 1];
            st[b - 1] = ti;
            float tw = wt[b];
            wt[b] = wt[b - 1];
            wt[b - 1] = tw;
        }
}

static void softmax_topk(const lm_router *r, const float *lg, int32_t *st, float *wt) {
    int E = r->n_experts, K = r->top_k;
    float mx = lg[0];
    for (int e = 1; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
    float sum = 0;
    for (int e = 0; e < E; e++) sum += expf(lg[e] - mx);
    /* softmax is monotonic: the top-k of the probabilities are those of the logits */
    for (int k = 0; k < K; k++) {
        st[k] = best_left(lg, E, st, k, NULL);
        wt[k] = expf(lg[st[k]] - mx) / sum;
    }
    if (r->renormalize) {
        float tot = 0;
        for (int k = 0; k < K; k++) tot += wt[k];
        for (int k = 0; k < K; k++) wt[k] /= tot;
    }
}

static void topk_softmax(const lm_router *r, const float *lg, int32_t *st, float *wt) {
    int E = r->n_experts, K = r->top_k;
    for (int k = 0; k < K; k++) st[k] = best_left(lg, E, st, k, NULL);
    float mx = lg[st[0]], sum = 0; /* the first pick is the largest */
    for (int k = 0; k < K; k++) sum += (wt[k] = expf(lg[st[k]] - mx));
    for (int k = 0; k < K; k++) wt[k] /= sum;
}

/* E = r->n_experts and K = r->top_k, 1 <= K <= E <= LM_ROUTER_MAX_EXPERTS (checked by
 * the caller); s and choice are [E] working arrays. */
static void sigmoid_group(const lm_router *r, int E, int K, const float *lg, int32_t *st, float *wt, float *s,
                          float *choice) {
    for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-lg[e]));
    for (int e = 0; e < E; e++) choice[e] = s[e] + (r->correction_bias ? r->correction_bias[e] : 0.0f);
    uint8_t allowed[LM_ROUTER_MAX_EXPERTS];
    const uint8_t *mask = NULL;
    if (r->n_group > 1) {
        int G = r->n_group, per = E / G;
        float gscore[LM_ROUTER_MAX_GROUPS];
        int32_t gsel[LM_ROUTER_MAX_GROUPS];
        for (int g = 0; g < G; g++) { /* the sum of the group's two best choice scores */
            const float *cg = choice + (size_t)g * (size_t)per;
            int32_t two[2];
            two[0] = best_left(cg, per, two, 0, NULL);
            gscore[g] = cg[two[0]];
            if (per > 1) {
                two[1] = best_left(cg, per, two, 1, NULL);
                gscore[g] += cg[two[1]];
            }
        }
        memset(allowed, 0, (size_t)E);
        for (int k = 0; k < r->topk_group; k++) {
            gsel[k] = best_left(gscore, G, gsel, k, NULL);
            memset(allowed + (size_t)gsel[k] * (size_t)per, 1, (size_t)per);
        }
        mask = allowed;
    }
    for (int k = 0; k < K; k++) {
        st[k] = best_left(choice, E, st, k, mask);
        wt[k] = s[st[k]];
    }
    if (r->renormalize) {
        float tot = 0;
        for (int k = 0; k < K; k++) tot += wt[k];
        for (int k = 0; k < K; k++) wt[k] /= tot + 1e-20f;
    }
}

int lm_cpu_route(lm_backend *be, const lm_router *r, const float *logits, int n, int32_t *sel, float *selw) {
    int E = r->n_experts, K = r->top_k;
    if (K < 1 || K > E) return lm_errf(be->err, "router: top_k %d with %d experts", K, E);
    if (r->kind == LM_ROUTER_SIGMOID) {
        if (E > LM_ROUTER_MAX_EXPERTS) return lm_errf(be->err, "router: %d experts (at most %d)", E, LM_ROUTER_MAX_EXPERTS);
        if (r->n_group > 1 && (r->n_group > LM_ROUTER_MAX_GROUPS || E % r->n_group != 0 || r->topk_group < 1 ||
                               r->topk_group > r->n_group || r->topk_group * (E / r->n_group) < K))
            return lm_errf(be->err, "router: %d experts in %d groups, %d groups kept, top_k %d do not fit", E,
                           r->n_group, r->topk_group, K);
    } else if (r->kind != LM_ROUTER_SOFTMAX_TOPK && r->kind != LM_ROUTER_TOPK_SOFTMAX) {
        return lm_errf(be->err, "router kind %d is unknown", (int)r->kind);
    }
    /* the sigmoid router's working arrays (zeroed: the analyzers cannot see that E >= K >= 1 fills them) */
    float s[LM_ROUTER_MAX_EXPERTS] = {0}, choice[LM_ROUTER_MAX_EXPERTS] = {0};
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * (size_t)E;
        int32_t *st = sel + (size_t)t * (size_t)K;
        float *wt = selw + (size_t)t * (size_t)K;
        if (r->kind == LM_ROUTER_SOFTMAX_TOPK) softmax_topk(r, lg, st, wt);
        else if (r->kind == LM_ROUTER_TOPK_SOFTMAX) topk_softmax(r, lg, st, wt);
        else sigmoid_group(r, E, K, lg, st, wt, s, choice);
        if (r->scale != 1.0f && r->scale != 0.0f)
            for (int k = 0; k < K; k++) wt[k] *= r->scale;
        sort_by_expert(st, wt, K);
    }
    return 0;
}

/* ---- experts' tokens ---------------------------------------------------------------- */

int lm_cpu_gather_rows(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width,
                       int idx_div) {
    (void)be;
    for (int r = 0; r < m; r++)
        memcpy(dst + (size_t)r * (size_t)width, src + (size_t)(idx[r] / idx_div) * (size_t)width,
               sizeof(float) * (size_t)width);
    return 0;
}

int lm_cpu_scatter_rows(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width) {
    (void)be;
    for (int r = 0; r < m; r++)
        memcpy(dst + (size_t)idx[r] * (size_t)width, src + (size_t)r * (size_t)width, sizeof(float) * (size_t)width);
    return 0;
}

int lm_cpu_moe_combine(lm_backend *be, float *y, const float *eout, const float *selw, const float *shared, int n,
                       int top_k, int width) {
    (void)be;
    size_t H = (size_t)width;
    for (int t = 0; t < n; t++) {
        float *yt = y + (size_t)t * H;
        memset(yt, 0, sizeof(float) * H);
        for (int k = 0; k < top_k; k++) {
            float wk = selw[t * top_k + k];
            const float *o = eout + ((size_t)t * (size_t)top_k + (size_t)k) * H;
            for (size_t i = 0; i < H; i++) yt[i] += o[i] * wk;
        }
        if (shared) { /* transformers adds the shared expert after the routed sum */
            const float *sh = shared + (size_t)t * H;
            for (size_t i = 0; i < H; i++) yt[i] += sh[i];
        }
    }
    return 0;
}

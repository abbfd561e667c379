/* MoE routers (backend op `route`) against a straightforward reference written here:
 * every expert ranked by a full sort (score descending, index ascending), weights in
 * double. The sigmoid router with correction bias, group-limited choice and scaling
 * (deepseek_v3 / glm4_moe / minimax_m2) has no loaded family yet; this is its test.
 * Also the elementwise and gather/scatter/combine ops the forward pass relies on. */
#include "harness.h"

#include "common/error.h"
#include "kernels/backend.h"

#include <stdint.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* Indices 0..n-1 ordered by key descending, ties by lower index (insertion sort). */
static void rank(const double *key, int n, int *order) {
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0; j--) {
            int a = order[j - 1], b = order[j];
            if (key[b] > key[a] || (key[b] == key[a] && b < a)) order[j - 1] = b, order[j] = a;
            else break;
        }
}

#define MAXE 256

/* The reference router for one token. */
static void ref_route(const lm_router *r, const float *lg, int *sel, double *w) {
    int E = r->n_experts, K = r->top_k, order[MAXE];
    double key[MAXE], val[MAXE];
    if (r->kind == LM_ROUTER_SOFTMAX_TOPK) {
        double mx = -1e300, sum = 0;
        for (int e = 0; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
        for (int e = 0; e < E; e++) sum += exp(lg[e] - mx);
        /* ranked by logits: softmax keeps their order, and two logits apart by less than
         * float resolution would tie as probabilities in double */
        for (int e = 0; e < E; e++) key[e] = lg[e], val[e] = exp(lg[e] - mx) / sum;
    } else if (r->kind == LM_ROUTER_TOPK_SOFTMAX) {
        for (int e = 0; e < E; e++) key[e] = val[e] = lg[e];
    } else {
        for (int e = 0; e < E; e++) {
            val[e] = 1.0 / (1.0 + exp(-(double)lg[e]));
            key[e] = val[e] + (r->correction_bias ? r->correction_bias[e] : 0.0);
        }
        if (r->n_group > 1) {
            int G = r->n_group, per = E / G, gorder[MAXE], inner[MAXE];
            double gscore[MAXE];
            for (int g = 0; g < G; g++) {
                rank(key + g * per, per, inner);
                gscore[g] = key[g * per + inner[0]] + (per > 1 ? key[g * per + inner[1]] : 0);
            }
            rank(gscore, G, gorder);
            for (int i = r->topk_group; i < G; i++) /* groups not kept cannot be chosen */
                for (int e = gorder[i] * per; e < (gorder[i] + 1) * per; e++) key[e] = -1e300;
        }
    }
    rank(key, E, order);
    double sum = 0;
    for (int k = 0; k < K; k++) sel[k] = order[k], sum += val[order[k]];
    for (int k = 0; k < K; k++) {
        if (r->kind == LM_ROUTER_TOPK_SOFTMAX) { /* softmax over the chosen logits */
            double s = 0;
            for (int j = 0; j < K; j++) s += exp(val[sel[j]] - val[sel[0]]);
            w[k] = exp(val[sel[k]] - val[sel[0]]) / s;
        } else {
            w[k] = val[sel[k]];
            if (r->renormalize) w[k] /= sum + (r->kind == LM_ROUTER_SIGMOID ? 1e-20 : 0);
        }
        if (r->scale != 0) w[k] *= r->scale;
    }
    /* ascending expert index */
    for (int a = 1; a < K; a++)
        for (int b = a; b > 0 && sel[b - 1] > sel[b]; b--) {
            int ti = sel[b]; sel[b] = sel[b - 1]; sel[b - 1] = ti;
            double tw = w[b]; w[b] = w[b - 1]; w[b - 1] = tw;
        }
}

/* Routes T tokens of random logits (some tied) with r and compares with the reference:
 * the same experts, weights to float rounding. Returns how many tokens' choices the
 * group limit changed (vs the same router without groups), to show it was exercised. */
static int check_router(lm_backend *be, const lm_router *r, const char *label) {
    enum { T = 40 };
    int E = r->n_experts, K = r->top_k, changed = 0;
    float *lg = malloc(sizeof(float) * T * (size_t)E), *w = malloc(sizeof(float) * T * (size_t)K);
    int32_t *sel = malloc(sizeof(int32_t) * T * (size_t)K);
    int32_t *sel_nogroup = malloc(sizeof(int32_t) * T * (size_t)K);
    float *w_nogroup = malloc(sizeof(float) * T * (size_t)K);
    for (int i = 0; i < T * E; i++) lg[i] = (float)(urand() * 3);
    for (int t = 0; t < T; t += 5) /* ties: the lower index must win */
        for (int e = 1; e < E; e += 3) lg[t * E + e] = lg[t * E + e - 1];
    CHECKF(be->ops->route(be, r, lg, T, sel, w) == 0, "%s: %s", label, lm_backend_error(be));
    lm_router flat = *r;
    flat.n_group = 0;
    CHECK(be->ops->route(be, &flat, lg, T, sel_nogroup, w_nogroup) == 0);
    for (int t = 0; t < T; t++) {
        int rs[MAXE];
        double rw[MAXE];
        ref_route(r, lg + (size_t)t * (size_t)E, rs, rw);
        for (int k = 0; k < K; k++) {
            CHECKF(sel[t * K + k] == rs[k], "%s token %d slot %d: expert %d, reference %d", label, t, k,
                   sel[t * K + k], rs[k]);
            CHECKF(fabs(w[t * K + k] - rw[k]) <= 1e-6 * fabs(rw[k]) + 1e-7, "%s token %d slot %d: weight %.9g, reference %.9g",
                   label, t, k, w[t * K + k], rw[k]);
        }
        changed += memcmp(sel + t * K, sel_nogroup + t * K, sizeof(int32_t) * (size_t)K) != 0;
    }
    free(lg), free(w), free(sel), free(sel_nogroup), free(w_nogroup);
    return changed;
}

static void routers_match_reference(void) {
    char err[LM_ERR_LEN];
    lm_backend *be;
    CHECKF(lm_backend_create(&be, "cpu", 2, err) == 0, "%s", err);
    if (!be) return;
    float bias[64];
    for (int e = 0; e < 64; e++) bias[e] = (float)(urand() * 0.5);
    /* qwen3_moe / mixtral: softmax top-k, with and without renormalisation */
    check_router(be, &(lm_router){LM_ROUTER_SOFTMAX_TOPK, 32, 4, 1, 1.0f, NULL, 0, 0}, "softmax renorm");
    check_router(be, &(lm_router){LM_ROUTER_SOFTMAX_TOPK, 32, 4, 0, 1.0f, NULL, 0, 0}, "softmax");
    /* gpt-oss: top-k then softmax over the chosen */
    check_router(be, &(lm_router){LM_ROUTER_TOPK_SOFTMAX, 32, 4, 0, 1.0f, NULL, 0, 0}, "topk softmax");
    /* minimax_m2: sigmoid + correction bias, renormalised, no groups */
    check_router(be, &(lm_router){LM_ROUTER_SIGMOID, 64, 8, 1, 1.0f, bias, 1, 1}, "sigmoid bias");
    /* deepseek_v3 / glm4_moe: 8 groups, 3 kept, top-6, renormalised, scaled by 2.5 */
    int changed = check_router(be, &(lm_router){LM_ROUTER_SIGMOID, 64, 6, 1, 2.5f, bias, 8, 3}, "sigmoid groups");
    CHECKF(changed > 0, "the group limit never changed a choice: the case does not test it");
    check_router(be, &(lm_router){LM_ROUTER_SIGMOID, 64, 6, 0, 1.0f, NULL, 4, 2}, "sigmoid groups plain");
    /* configurations that cannot route are errors, not garbage */
    float lg[64] = {0}, w[8];
    int32_t sel[8];
    CHECK(be->ops->route(be, &(lm_router){LM_ROUTER_SIGMOID, 64, 6, 1, 1.0f, NULL, 7, 3}, lg, 1, sel, w) != 0);
    CHECK_STR_CONTAINS(lm_backend_error(be), "groups");
    CHECK(be->ops->route(be, &(lm_router){LM_ROUTER_SIGMOID, 64, 8, 1, 1.0f, NULL, 32, 1}, lg, 1, sel, w) != 0);
    CHECK(be->ops->route(be, &(lm_router){LM_ROUTER_SOFTMAX_TOPK, 4, 5, 1, 1.0f, NULL, 0, 0}, lg, 1, sel, w) != 0);
    CHECK_STR_CONTAINS(lm_backend_error(be), "top_k");
    lm_backend_free(be);
}

/* gather / scatter / combine / gates / buffers: each against its definition. */
static void moe_and_elementwise_ops(void) {
    char err[LM_ERR_LEN];
    lm_backend *be;
    CHECKF(lm_backend_create(&be, NULL, 2, err) == 0, "%s", err);
    if (!be) return;
    enum { T = 5, K = 2, W = 7 };
    lm_buf hb, xb, ib;
    CHECK(lm_backend_alloc(be, &hb, sizeof(float) * T * W, "test", err) == 0);
    CHECK(lm_backend_alloc(be, &xb, sizeof(float) * T * K * W, "test", err) == 0);
    CHECK(lm_backend_alloc(be, &ib, sizeof(int32_t) * 3, "test", err) == 0);
    CHECK_EQ_INT(be->bytes_held, sizeof(float) * T * W * (1 + K) + 12);
    float h[T * W], back[T * K * W], eout[T * K * W], y[T * W], selw[T * K], sh[T * W];
    for (int i = 0; i < T * W; i++) h[i] = (float)urand(), sh[i] = (float)urand();
    for (int i = 0; i < T * K * W; i++) eout[i] = (float)urand();
    for (int i = 0; i < T * K; i++) selw[i] = (float)urand();
    const int32_t routes[3] = {1, 4, 9}; /* (token, slot) = (0,1), (2,0), (4,1) */
    CHECK(be->ops->upload(be, hb.ptr, h, sizeof h) == 0);
    CHECK(be->ops->upload(be, ib.ptr, routes, sizeof routes) == 0);
    CHECK(be->ops->gather_rows(be, xb.ptr, hb.ptr, ib.ptr, 3, W, K) == 0);
    CHECK(be->ops->download(be, back, xb.ptr, sizeof(float) * 3 * W) == 0);
    for (int r = 0; r < 3; r++) CHECK(!memcmp(back + r * W, h + (routes[r] / K) * W, sizeof(float) * W));
    CHECK(be->ops->upload(be, xb.ptr, eout, sizeof eout) == 0);
    CHECK(be->ops->scatter_rows(be, xb.ptr, hb.ptr, ib.ptr, 3, W) == 0);
    CHECK(be->ops->download(be, back, xb.ptr, sizeof back) == 0);
    for (int i = 0; i < T * K; i++) {
        int r = i == 1 ? 0 : i == 4 ? 1 : i == 9 ? 2 : -1;
        CHECK(!memcmp(back + i * W, r >= 0 ? h + r * W : eout + i * W, sizeof(float) * W));
    }
    CHECK(be->ops->moe_combine(be, y, eout, selw, sh, T, K, W) == 0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < W; i++) {
            float want = 0;
            for (int k = 0; k < K; k++) want += eout[(t * K + k) * W + i] * selw[t * K + k];
            want += sh[t * W + i];
            CHECK(y[t * W + i] == want);
        }
    float g[T * W], yy[T * W];
    memcpy(yy, h, sizeof yy);
    for (int i = 0; i < T * W; i++) g[i] = (float)urand() * 4;
    CHECK(be->ops->sigmoid_mul(be, yy, W, g, W, T, W, 1) == 0); /* a scalar gate per row: g[t * W] */
    for (int t = 0; t < T; t++)
        for (int i = 0; i < W; i++) CHECK(yy[t * W + i] == h[t * W + i] * (1.0f / (1.0f + expf(-g[t * W]))));
    memcpy(yy, h, sizeof yy);
    CHECK(be->ops->clamp(be, yy, T * W, 0.25f) == 0);
    for (int i = 0; i < T * W; i++) CHECK(yy[i] == (h[i] > 0.25f ? 0.25f : h[i] < -0.25f ? -0.25f : h[i]));
    lm_backend_release(be, &hb);
    lm_backend_release(be, &xb);
    lm_backend_release(be, &ib);
    lm_backend_release(be, &ib); /* releasing an emptied buffer is harmless */
    CHECK_EQ_INT(be->bytes_held, 0);
    CHECK(lm_backend_create(&(lm_backend *){NULL}, "vulkan", 1, err) != 0);
    CHECK_STR_CONTAINS(err, "unknown backend 'vulkan'");
#ifndef LAZYMOE_CUDA
    CHECK(lm_backend_create(&(lm_backend *){NULL}, "cuda", 1, err) != 0);
    CHECK_STR_CONTAINS(err, "this build has no CUDA");
#endif
    lm_backend_free(be);
}

int main(void) {
    TEST_CASE("router_kinds_match_reference", routers_match_reference);
    TEST_CASE("backend_moe_and_elementwise_ops", moe_and_elementwise_ops);
    TEST_EXIT();
}

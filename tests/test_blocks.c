/* Shared block pieces that gpt-oss brought and other families reuse, each against a
 * straightforward reference written here in double: YaRN RoPE frequencies and
 * attention factor (as transformers' _compute_yarn_parameters defines them), RoPE
 * with a cos/sin scale, the clamped SwiGLU, per-layer sliding windows, and the
 * wiring of biases, sinks and the activation into the layer's blocks. */
#include "harness.h"

#include "common/error.h"
#include "engine/blocks.h"
#include "kernels/backend.h"
#include "models/config.h"

#include <stdint.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* YaRN in double: blend 1/(factor*theta^(2i/d)) and 1/theta^(2i/d) by a ramp that is 0
 * below dim `low` and 1 above `high` (the dims whose wavelengths make beta_fast and
 * beta_slow turns over the pretrained context). */
static double ref_yarn(int i, int d, double theta, double factor, double bf, double bs, double ctx, int trunc) {
    double lo = d * log(ctx / (bf * 2 * M_PI)) / (2 * log(theta));
    double hi = d * log(ctx / (bs * 2 * M_PI)) / (2 * log(theta));
    if (trunc) lo = floor(lo), hi = ceil(hi);
    if (lo < 0) lo = 0;
    if (hi > d - 1) hi = d - 1;
    if (lo == hi) hi += 0.001;
    double ramp = (i - lo) / (hi - lo);
    ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
    double base = pow(theta, 2.0 * i / d);
    return (1.0 / (factor * base)) * ramp + (1.0 / base) * (1 - ramp);
}

static void yarn_frequencies(void) {
    /* gpt-oss's rope_scaling: head_dim 64, theta 150000, factor 32, betas 32 / 1, 4096
     * pretrained positions, truncate false. The ramp then runs over dims 8.09 .. 17.40
     * (computed by hand from the formula), so dims 0..8 keep 1/theta^(2i/64) and dims
     * 18.. are divided by 32; the attention factor is 0.1 ln 32 + 1 = 1.3465736. */
    for (int trunc = 0; trunc < 2; trunc++) {
        lm_config c = {.head_dim = 64, .rope_dim = 64, .rope_theta = 150000, .rope_type = LM_ROPE_YARN,
                       .rope_factor = 32, .rope_beta_fast = 32, .rope_beta_slow = 1, .rope_orig_max_pos = 4096,
                       .rope_truncate = trunc, .rope_attn_factor = 0.1 * log(32.0) + 1};
        float f[32], scale = 0;
        lm_rope_params(&c, f, &scale);
        CHECK(fabsf(scale - 1.3465736f) < 1e-6f);
        double worst = 0;
        for (int i = 0; i < 32; i++) {
            double want = ref_yarn(i, 64, 150000, 32, 32, 1, 4096, trunc);
            double rel = fabs(f[i] - want) / want;
            worst = rel > worst ? rel : worst;
        }
        CHECKF(worst < 2e-6, "truncate %d: inv_freq off by %.3g relative", trunc, worst);
        for (int i = 0; i <= 8; i++) CHECK(fabs(f[i] - pow(150000.0, -i / 32.0)) < 2e-6 * f[i]);
        for (int i = 18; i < 32; i++) CHECK(fabs(f[i] - pow(150000.0, -i / 32.0) / 32) < 2e-6 * f[i]);
        /* the ramp is where the two differ from both ends */
        CHECK(f[12] < 0.99 * pow(150000.0, -12 / 32.0) && f[12] > 1.01 * pow(150000.0, -12 / 32.0) / 32);
    }
    /* default and linear keep their old numbers and a scale of exactly 1 */
    lm_config d = {.head_dim = 16, .rope_dim = 16, .rope_theta = 10000, .rope_type = LM_ROPE_LINEAR, .rope_factor = 4};
    float f[8], scale = 0;
    lm_rope_params(&d, f, &scale);
    CHECK(scale == 1.0f);
    for (int i = 0; i < 8; i++) CHECK(f[i] == 1.0f / powf(10000.0f, (float)(2 * i) / 16.0f) / 4.0f);
}

static void yarn_config(void) {
    char err[LM_ERR_LEN];
    lm_config c;
    const char *base = "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 64, \"hidden_size\": 64, "
                       "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"head_dim\": 16, "
                       "\"num_experts\": 4, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 8, "
                       "\"max_position_embeddings\": 131072, \"rope_scaling\": %s}";
    char buf[1024];
    snprintf(buf, sizeof buf, base,
             "{\"rope_type\": \"yarn\", \"factor\": 32.0, \"beta_fast\": 32.0, \"beta_slow\": 1.0, "
             "\"original_max_position_embeddings\": 4096, \"truncate\": false}");
    CHECKF(lm_config_parse(&c, buf, NULL, err) == 0, "%s", err);
    CHECK_EQ_INT(c.rope_type, LM_ROPE_YARN);
    CHECK_EQ_INT(c.rope_orig_max_pos, 4096);
    CHECK_EQ_INT(c.rope_truncate, 0);
    CHECK(fabs(c.rope_attn_factor - 1.3465735902799727) < 1e-12);
    lm_config_free(&c);
    /* no factor: max_position_embeddings / original; mscale pair; defaults */
    snprintf(buf, sizeof buf, base,
             "{\"type\": \"yarn\", \"original_max_position_embeddings\": 4096, \"mscale\": 1.0, "
             "\"mscale_all_dim\": 0.5}");
    CHECKF(lm_config_parse(&c, buf, NULL, err) == 0, "%s", err);
    CHECK(c.rope_factor == 32.0);
    CHECK(c.rope_beta_fast == 32.0 && c.rope_beta_slow == 1.0 && c.rope_truncate == 1);
    CHECK(fabs(c.rope_attn_factor - (0.1 * log(32.0) + 1) / (0.05 * log(32.0) + 1)) < 1e-12);
    lm_config_free(&c);
    snprintf(buf, sizeof buf, base, "{\"rope_type\": \"yarn\", \"factor\": 4, \"attention_factor\": 0.75}");
    CHECKF(lm_config_parse(&c, buf, NULL, err) == 0, "%s", err);
    CHECK(c.rope_attn_factor == 0.75 && c.rope_orig_max_pos == 131072);
    lm_config_free(&c);
    snprintf(buf, sizeof buf, base, "{\"rope_type\": \"yarn\", \"factor\": -2}");
    CHECK(lm_config_parse(&c, buf, NULL, err) != 0);
    CHECK_STR_CONTAINS(err, "factor");
}

/* rope with a scale against the rotation written out in double. */
static void rope_scaled(void) {
    char err[LM_ERR_LEN];
    lm_backend *be;
    CHECKF(lm_backend_create(&be, NULL, 2, err) == 0, "%s", err);
    if (!be) return;
    enum { T = 3, NH = 2, HD = 12, HALF = 4 };
    float x[T * NH * HD], x0[T * NH * HD], inv[HALF];
    int32_t pos[T] = {0, 7, 4000};
    for (int i = 0; i < T * NH * HD; i++) x[i] = x0[i] = (float)urand();
    for (int i = 0; i < HALF; i++) inv[i] = powf(10000.0f, -(float)i / HALF);
    float s = 1.3465736f;
    CHECK(be->ops->rope(be, x, T, NH, HD, pos, inv, HALF, s) == 0);
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HD; d++) {
                const float *r = x0 + (t * NH + h) * HD;
                double want = r[d];
                if (d < 2 * HALF) {
                    int i = d % HALF;
                    double a = (double)pos[t] * inv[i], c = cos(a) * s, sn = sin(a) * s;
                    want = d < HALF ? r[i] * c - r[i + HALF] * sn : r[i + HALF] * c + r[i] * sn;
                }
                double e = fabs(x[(t * NH + h) * HD + d] - want);
                worst = e > worst ? e : worst;
            }
    CHECKF(worst < 2e-4, "scaled rope off by %.3g", worst); /* float angle at position 4000 */
    /* a scale of 1 is the plain rotation, bit for bit */
    float y[T * NH * HD], z[T * NH * HD];
    memcpy(y, x0, sizeof y);
    memcpy(z, x0, sizeof z);
    CHECK(be->ops->rope(be, y, T, NH, HD, pos, inv, HALF, 1.0f) == 0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < HALF; i++) {
            float a = (float)pos[t] * inv[i], c = cosf(a), sn = sinf(a);
            for (int h = 0; h < NH; h++) {
                float *r = z + (t * NH + h) * HD, x1 = r[i], x2 = r[i + HALF];
                r[i] = x1 * c - x2 * sn;
                r[i + HALF] = x2 * c + x1 * sn;
            }
        }
    CHECK(!memcmp(y, z, sizeof y));
    lm_backend_free(be);
}

static void swiglu_clamped(void) {
    char err[LM_ERR_LEN];
    lm_backend *be;
    CHECKF(lm_backend_create(&be, NULL, 2, err) == 0, "%s", err);
    if (!be) return;
    enum { N = 400 };
    float gu[2 * N], out[N];
    for (int i = 0; i < 2 * N; i++) gu[i] = (float)urand() * 12;
    gu[0] = 9, gu[1] = -9; /* both clamps bite: 7 * sigmoid(11.914) * (-6) */
    CHECK(be->ops->swiglu_clamped(be, out, gu, N, 1.702f, 7.0f) == 0);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double g = gu[2 * i], u = gu[2 * i + 1];
        double a = g > 7 ? 7 : g, b = u > 7 ? 7 : u < -7 ? -7 : u;
        double want = a / (1 + exp(-1.702 * a)) * (b + 1);
        double e = fabs(out[i] - want) / (fabs(want) + 1e-3);
        worst = e > worst ? e : worst;
    }
    CHECKF(worst < 1e-5, "clamped swiglu off by %.3g relative", worst);
    CHECK(fabs(out[0] - (-42.0 / (1 + exp(-11.914)))) < 1e-4);
    lm_backend_free(be);
}

/* lm_layer_blocks_of: per-layer windows from layer_sliding, and each layer's biases,
 * sinks, router bias, router kind and activation passed through. */
static void layer_wiring(void) {
    uint8_t sliding[3] = {1, 0, 1};
    float qb[8], kb[4], vb[4], ob[8], sinks[2], rb[4], egu[16], ed[16], inv[2];
    lm_layer layers[3];
    memset(layers, 0, sizeof layers);
    for (int l = 0; l < 3; l++) {
        layers[l].q_bias = qb, layers[l].k_bias = kb, layers[l].v_bias = vb, layers[l].o_bias = ob;
        layers[l].sinks = sinks, layers[l].router_bias = rb, layers[l].is_moe = 1;
        layers[l].expert_gate_up_bias = egu, layers[l].expert_down_bias = ed;
    }
    lm_weights w;
    memset(&w, 0, sizeof w);
    w.cfg = (lm_config){.n_layers = 3, .n_heads = 2, .n_kv_heads = 1, .head_dim = 4, .rope_dim = 4,
                        .sliding_window = 5, .layer_sliding = sliding, .n_experts = 4, .top_k = 2,
                        .router_topk_softmax = 1, .swiglu_clamped = 1, .swiglu_alpha = 1.702f,
                        .swiglu_limit = 7.0f};
    w.layers = layers;
    w.rope_inv_freq = inv;
    w.rope_scale = 1.25f;
    for (int l = 0; l < 3; l++) {
        lm_layer_blocks b;
        lm_layer_blocks_of(&w, l, &b);
        CHECK_EQ_INT(b.attn.window, l == 1 ? 0 : 5);
        CHECK(b.attn.q_bias == qb && b.attn.k_bias == kb && b.attn.v_bias == vb && b.attn.o_bias == ob);
        CHECK(b.attn.sinks == sinks && b.attn.rope_scale == 1.25f && b.attn.rope_inv_freq == inv);
        CHECK(b.moe.router_bias == rb && b.moe.router.kind == LM_ROUTER_TOPK_SOFTMAX);
        CHECK(b.moe.act == LM_ACT_SWIGLU_CLAMPED && b.moe.act_alpha == 1.702f && b.moe.act_limit == 7.0f);
        CHECK(b.moe.gate_up_bias == egu && b.moe.down_bias == ed);
    }
    /* without layer_sliding the window applies everywhere; plain families get none of it */
    w.cfg.layer_sliding = NULL;
    w.cfg.router_topk_softmax = w.cfg.swiglu_clamped = 0;
    memset(layers, 0, sizeof layers);
    lm_layer_blocks b;
    lm_layer_blocks_of(&w, 1, &b);
    CHECK_EQ_INT(b.attn.window, 5);
    CHECK(!b.attn.q_bias && !b.attn.sinks && !b.moe.router_bias && !b.moe.gate_up_bias);
    CHECK(b.moe.router.kind == LM_ROUTER_SOFTMAX_TOPK && b.moe.act == LM_ACT_SWIGLU);
}

int main(void) {
    TEST_CASE("yarn_frequencies_match_reference", yarn_frequencies);
    TEST_CASE("yarn_config_keys", yarn_config);
    TEST_CASE("rope_scale_matches_reference", rope_scaled);
    TEST_CASE("swiglu_clamped_matches_reference", swiglu_clamped);
    TEST_CASE("layer_blocks_wiring", layer_wiring);
    TEST_EXIT();
}

/* gpt_oss (src/models/gpt_oss.c) on the tiny checkpoints of tests/fixtures/gpt_oss
 * (tools/make_gpt_oss_fixture.py): the config switches the family sets (sinks, router
 * bias and top-k softmax, clamped SwiGLU, per-layer windows from layer_types or by
 * default, YaRN), the bound tensors of both layouts (transposed bf16 experts and the
 * released MXFP4 layout), and the two layouts of one model giving the same logits and
 * greedy ids -- the MXFP4 codes, scales and row interleaving read the way the float
 * file's x @ W columns are. */
#include "harness.h"

#include "common/error.h"
#include "lazymoe.h"
#include "models/config.h"
#include "models/model.h"

#define FIX LAZYMOE_SOURCE_DIR "/tests/fixtures/gpt_oss/"

static void config_switches(void) {
    const char *dirs[2] = {FIX "float", FIX "mxfp4"};
    for (int i = 0; i < 2; i++) {
        char err[LM_ERR_LEN];
        lm_config c;
        CHECKF(lm_config_load(&c, dirs[i], err) == 0, "%s", err);
        CHECK(!strcmp(c.model_type, "gpt_oss") && c.attn_sinks && c.router_topk_softmax && c.attention_bias);
        CHECK(c.swiglu_clamped && c.swiglu_alpha == 1.702f && c.swiglu_limit == 7.0f);
        CHECK(c.moe_intermediate_size == 64 && c.n_experts == 4 && c.top_k == 2 && c.quant_bits == 0);
        /* layer_types in the float file, GptOssConfig's default in the MXFP4 one: even
         * layers slide over 4 positions, odd ones see everything */
        for (int l = 0; l < c.n_layers; l++) CHECK_EQ_INT(lm_config_layer_window(&c, l), l % 2 == 0 ? 4 : 0);
        CHECK(c.rope_type == LM_ROPE_YARN && c.rope_factor == 8.0 && c.rope_orig_max_pos == 64 && !c.rope_truncate);
        CHECK(fabs(c.rope_attn_factor - (0.1 * log(8.0) + 1)) < 1e-12);
        lm_config_free(&c);
    }
}

static void binding(void) {
    const char *dirs[2] = {FIX "float", FIX "mxfp4"};
    for (int i = 0; i < 2; i++) {
        char err[LM_ERR_LEN];
        lm_weights w;
        CHECKF(lm_weights_load(&w, dirs[i], NULL, NULL, err) == 0, "%s", err);
        if (err[0] && !w.layers) continue;
        for (int l = 0; l < w.cfg.n_layers; l++) {
            const lm_layer *ly = &w.layers[l];
            CHECK(ly->sinks && ly->router_bias && ly->q_bias && ly->k_bias && ly->v_bias && ly->o_bias);
            CHECK(ly->expert_gate_up_bias && ly->expert_down_bias && ly->is_moe);
            const lm_mat *gu = &ly->src.tmpl[0], *dn = &ly->src.tmpl[2];
            CHECK(gu->rows == 128 && gu->cols == 64 && dn->rows == 64 && dn->cols == 64 && ly->src.tmpl[1].rows == 0);
            if (i == 0) CHECK(gu->dtype == LM_DT_BF16 && gu->col_major && dn->col_major && ly->src.nparts == 2);
            else CHECK(gu->dtype == LM_DT_MXFP4_SPLIT && dn->dtype == LM_DT_MXFP4_SPLIT && ly->src.nparts == 4);
        }
        CHECK(w.rope_scale == (float)(0.1 * log(8.0) + 1));
        lm_weights_free(&w);
    }
}

static float *logits_act(const char *dir, const int32_t *ids, int n, int32_t *gen, int ngen, int act_bits,
                         int *act_used) {
    char err[512];
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.no_warm_start = 1;
    o.kv_bits = 32;
    o.act_bits = act_bits;
    lazymoe_model *m;
    if (lazymoe_model_open(&m, dir, &o, err, sizeof err) != 0) {
        CHECKF(0, "%s: %s", dir, err);
        return NULL;
    }
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    if (act_used) *act_used = info.act_bits;
    float *lg = malloc(sizeof(float) * (size_t)info.vocab_size * (size_t)n);
    lazymoe_session *s = NULL;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    CHECKF(s && lazymoe_session_eval(s, ids, n, lg, 1, err, sizeof err) == 0, "%s", err);
    float *last = malloc(sizeof(float) * (size_t)info.vocab_size);
    memcpy(last, lg + (size_t)(n - 1) * (size_t)info.vocab_size, sizeof(float) * (size_t)info.vocab_size);
    for (int g = 0; s && g < ngen; g++) {
        int best = 0;
        for (int v = 1; v < info.vocab_size; v++)
            if (last[v] > last[best]) best = v;
        gen[g] = best;
        if (lazymoe_session_eval(s, &gen[g], 1, last, 0, err, sizeof err) != 0) break;
    }
    free(last);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return lg;
}

/* The reference numerics: f32 activations. */
static float *logits(const char *dir, const int32_t *ids, int n, int32_t *gen, int ngen) {
    return logits_act(dir, ids, n, gen, ngen, 32, NULL);
}

static void layouts_agree(void) {
    /* 14 tokens: past the window of 4 on the sliding layers */
    const int32_t ids[] = {5, 17, 300, 42, 7, 9, 100, 200, 11, 3, 250, 66, 1, 2};
    enum { N = 14, G = 12, V = 336 };
    int32_t ga[G], gb[G];
    float *a = logits(FIX "float", ids, N, ga, G), *b = logits(FIX "mxfp4", ids, N, gb, G);
    if (!a || !b) goto out;
    double mx = 0, diff = 0;
    for (int i = 0; i < N * V; i++) {
        mx = fabs(a[i]) > mx ? fabs(a[i]) : mx;
        diff = fabs(a[i] - b[i]) > diff ? fabs(a[i] - b[i]) : diff;
    }
    printf("# float vs MXFP4 layout: max|diff|/max|logit| = %.3g\n", diff / mx);
    CHECKF(mx > 0.5 && diff / mx < 1e-5, "the layouts disagree: %.3g", diff / mx);
    CHECK(!memcmp(ga, gb, sizeof ga));
out:
    free(a);
    free(b);
}

/* MXFP4 weights are quantized weights: by the project's rule (lazymoe.h act_bits) the
 * default is int8 activations, whose logits stay within the int8 tolerance that
 * tests/test_golden.c states for 4-bit models (0.08 of the largest logit). */
static void act8_default(void) {
    const int32_t ids[] = {5, 17, 300, 42, 7, 9, 100, 200, 11, 3, 250, 66, 1, 2};
    enum { N = 14, V = 336 };
    int32_t g8[1], g32[1];
    int used8 = 0, used_float = 0;
    float *a = logits(FIX "mxfp4", ids, N, g32, 1), *b = logits_act(FIX "mxfp4", ids, N, g8, 1, 0, &used8);
    float *c = logits_act(FIX "float", ids, N, g8, 1, 0, &used_float);
    CHECK_EQ_INT(used8, 8);
    CHECK_EQ_INT(used_float, 32); /* float weights: f32 activations */
    if (a && b) {
        double mx = 0, diff = 0;
        for (int i = 0; i < N * V; i++) {
            mx = fabs(a[i]) > mx ? fabs(a[i]) : mx;
            diff = fabs(a[i] - b[i]) > diff ? fabs(a[i] - b[i]) : diff;
        }
        printf("# MXFP4 int8 vs f32 activations: max|diff|/max|logit| = %.3g\n", diff / mx);
        CHECKF(diff > 0 && diff / mx < 0.08, "int8 activations: %.3g", diff / mx);
    }
    free(a);
    free(b);
    free(c);
}

int main(void) {
    TEST_CASE("gpt_oss_config_switches", config_switches);
    TEST_CASE("gpt_oss_binding_both_layouts", binding);
    TEST_CASE("gpt_oss_float_and_mxfp4_layouts_agree", layouts_agree);
    TEST_CASE("gpt_oss_mxfp4_act8_default", act8_default);
    TEST_EXIT();
}

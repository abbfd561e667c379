/* lazymoe synth: the tiny preset opens and evaluates in the engine; same seed gives the
 * same bytes, another seed others; --layers; a shrunk mixtral and qwen3_next have the
 * names, shapes and dtypes of the real layout; real presets' plans (dry run) match the
 * published sizes; gpt-oss in the released MXFP4 layout (lazy == resident); weight
 * spread; the routing construction; disk-space refusal; bad arguments. */
#include "harness.h"

#include "common/error.h"
#include "formats/mlx_quant.h"
#include "formats/mxfp4.h"
#include "formats/safetensors.h"
#include "lazymoe.h"
#include "platform/fs.h"
#include "synth/synth.h"

#include <jansson.h>
#include <stdint.h>
#include <unistd.h>

static char tmp_root[256];

static const char *tmp_path(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", tmp_root, name);
    return b;
}

static lm_synth_options tiny_opts(void) {
    lm_synth_options o;
    lm_synth_options_init(&o);
    o.preset = "tiny";
    o.quiet = 1;
    return o;
}

static int files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int eq = fa && fb;
    while (eq) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) eq = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

/* Evaluates ids in a fresh session; returns 1 when every logit is finite and not all equal. */
static int eval_finite(const char *dir, char *err) {
    lazymoe_options opt;
    lazymoe_options_init(&opt);
    opt.n_threads = 1;
    opt.max_context = 64;
    lazymoe_model *m = NULL;
    lazymoe_session *s = NULL;
    if (lazymoe_model_open(&m, dir, &opt, err, LM_ERR_LEN) != 0) return 0;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    int ok = lazymoe_session_create(&s, m, err, LM_ERR_LEN) == 0;
    int32_t ids[6] = {1, 5, 9, 100, 7, 3};
    float *logits = malloc(sizeof(float) * (size_t)info.vocab_size * 6);
    if (ok) ok = lazymoe_session_eval(s, ids, 6, logits, 1, err, LM_ERR_LEN) == 0;
    if (ok) {
        float lo = logits[0], hi = logits[0];
        for (size_t i = 0; i < (size_t)info.vocab_size * 6; i++) {
            if (!isfinite(logits[i])) ok = 0;
            lo = fminf(lo, logits[i]);
            hi = fmaxf(hi, logits[i]);
        }
        if (!(hi > lo)) ok = 0;
    }
    free(logits);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return ok;
}

static void test_tiny_opens_and_evaluates(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    lm_synth_plan plan;
    const char *dir = tmp_path("tiny");
    CHECKF(lm_synth_write(dir, &o, &plan, err) == 0, "%s", err);
    CHECK(lm_path_type(tmp_path("tiny/config.json")) == LM_PATH_FILE);
    CHECK(lm_path_type(tmp_path("tiny/generation_config.json")) == LM_PATH_FILE);
    CHECK(lm_path_type(tmp_path("tiny/model.safetensors.index.json")) == LM_PATH_FILE);
    CHECKF(eval_finite(dir, err), "%s", err);
    lazymoe_model *m = NULL;
    lazymoe_options opt;
    lazymoe_options_init(&opt);
    opt.n_threads = 1;
    CHECKF(lazymoe_model_open(&m, dir, &opt, err, sizeof err) == 0, "%s", err);
    if (m) {
        lazymoe_model_info info;
        lazymoe_model_get_info(m, &info);
        CHECK_EQ_INT(info.n_layers, 4);
        CHECK_EQ_INT(info.n_experts, 16);
        CHECK_EQ_INT(info.top_k, 4);
        CHECK_EQ_INT(info.quant_bits, 4);
        CHECK_EQ_INT(info.bytes_per_expert, plan.bytes_per_expert);
        CHECK_EQ_INT(info.bytes_experts, plan.bytes_experts);
        /* the engine's count leaves out the per-head q/k norms */
        CHECK(info.params_total <= plan.params_total && info.params_total + 4 * 2 * 64 >= plan.params_total);
        lazymoe_model_close(m);
    }
    /* Routers are 8-bit with a recorded override, as mlx-lm writes qwen3_moe. */
    json_t *cfg = json_load_file(tmp_path("tiny/config.json"), 0, NULL);
    json_t *q = json_object_get(cfg, "quantization");
    CHECK_EQ_INT(json_integer_value(json_object_get(q, "bits")), 4);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(q, "model.layers.3.mlp.gate"), "bits")), 8);
    CHECK(json_object_get(cfg, "quantization_config") != NULL);
    json_decref(cfg);
}

/* Dequantized expert weights: std ~ 1/sqrt(fan_in), mean ~ 0. */
static void test_weight_spread(void) {
    char err[LM_ERR_LEN] = "";
    st_archive *a = NULL;
    CHECKF(st_open(&a, tmp_path("tiny"), err) == 0, "%s", err);
    if (!a) return;
    const st_tensor *w = st_find(a, "model.layers.1.mlp.switch_mlp.gate_proj.weight");
    const st_tensor *s = st_find(a, "model.layers.1.mlp.switch_mlp.gate_proj.scales");
    const st_tensor *b = st_find(a, "model.layers.1.mlp.switch_mlp.gate_proj.biases");
    CHECK(w && s && b);
    if (w && s && b) {
        CHECK(w->dtype == LM_DT_U32 && s->dtype == LM_DT_BF16 && b->dtype == LM_DT_BF16);
        int64_t rows = w->shape[0] * w->shape[1], cols = 256;
        void *wd = malloc(w->nbytes), *sd = malloc(s->nbytes), *bd = malloc(b->nbytes);
        float *f = malloc(sizeof(float) * (size_t)(rows * cols));
        st_read(a, w, wd, err);
        st_read(a, s, sd, err);
        st_read(a, b, bd, err);
        mlxq_params p = {4, 64, LM_DT_BF16, MLXQ_KERNEL_GPU};
        CHECKF(mlxq_dequantize(&p, wd, sd, bd, rows, cols, f, err) == 0, "%s", err);
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < rows * cols; i++) {
            sum += f[i];
            sq += (double)f[i] * f[i];
        }
        double n = (double)(rows * cols), mean = sum / n, sd2 = sqrt(sq / n - mean * mean);
        CHECKF(fabs(sd2 - 1.0 / 16.0) < 0.15 / 16.0, "std %g, want 1/sqrt(256) = 0.0625", sd2);
        CHECKF(fabs(mean) < 0.002, "mean %g", mean);
        free(wd);
        free(sd);
        free(bd);
        free(f);
    }
    st_close(a);
}

static void test_determinism(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    o.seed = 7;
    o.threads = 2;
    CHECKF(lm_synth_write(tmp_path("d1"), &o, NULL, err) == 0, "%s", err);
    o.threads = 1;
    CHECKF(lm_synth_write(tmp_path("d2"), &o, NULL, err) == 0, "%s", err);
    o.seed = 8;
    CHECKF(lm_synth_write(tmp_path("d3"), &o, NULL, err) == 0, "%s", err);
    static const char *files[] = {"model.safetensors", "config.json", "generation_config.json",
                                  "model.safetensors.index.json"};
    for (int i = 0; i < 4; i++) {
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/%s", tmp_path("d1"), files[i]);
        snprintf(b, sizeof b, "%s/%s", tmp_path("d2"), files[i]);
        CHECKF(files_equal(a, b), "%s differs between two runs with one seed", files[i]);
    }
    char a[600], c[600];
    snprintf(a, sizeof a, "%s/model.safetensors", tmp_path("d1"));
    snprintf(c, sizeof c, "%s/model.safetensors", tmp_path("d3"));
    CHECK(!files_equal(a, c));
}

static void test_layers_override(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    o.layers = 2;
    lm_synth_plan plan;
    CHECKF(lm_synth_write(tmp_path("l2"), &o, &plan, err) == 0, "%s", err);
    CHECK_EQ_INT(plan.layers, 2);
    json_t *cfg = json_load_file(tmp_path("l2/config.json"), 0, NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(cfg, "num_hidden_layers")), 2);
    json_decref(cfg);
    CHECKF(eval_finite(tmp_path("l2"), err), "%s", err);
    /* Layer 1 is the same in the 2-layer and the 4-layer model. */
    st_archive *a = NULL, *b = NULL;
    CHECK(st_open(&a, tmp_path("l2"), err) == 0);
    CHECK(st_open(&b, tmp_path("tiny"), err) == 0);
    if (a && b) {
        const char *name = "model.layers.1.mlp.switch_mlp.down_proj.weight";
        const st_tensor *ta = st_find(a, name), *tb = st_find(b, name);
        CHECK(ta && tb && ta->nbytes == tb->nbytes);
        CHECK(st_find(a, "model.layers.2.mlp.gate.weight") == NULL);
        if (ta && tb && ta->nbytes == tb->nbytes) {
            void *x = malloc(ta->nbytes), *y = malloc(tb->nbytes);
            st_read(a, ta, x, err);
            st_read(b, tb, y, err);
            CHECK(memcmp(x, y, ta->nbytes) == 0);
            free(x);
            free(y);
        }
    }
    st_close(a);
    st_close(b);
}

static void check_tensor(const st_archive *a, const char *name, lm_dtype dt, int ndim, int64_t d0,
                         int64_t d1, int64_t d2) {
    const st_tensor *t = st_find(a, name);
    CHECKF(t != NULL, "missing %s", name);
    if (!t) return;
    int64_t want[3] = {d0, d1, d2};
    int ok = t->dtype == dt && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    CHECKF(ok, "%s: dtype %s ndim %d [%lld, %lld, %lld]", name, lm_dtype_name(t->dtype), t->ndim,
           (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
           (long long)(t->ndim > 2 ? t->shape[2] : 0));
}

/* Mixtral's names at reduced width: the engine opens and evaluates it. */
static void test_mixtral_layout(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    o.preset = "mixtral-8x7b";
    o.layers = 1;
    o.hidden = 256;
    o.moe_intermediate = 512;
    o.vocab = 512;
    CHECKF(lm_synth_write(tmp_path("mix"), &o, NULL, err) == 0, "%s", err);
    st_archive *a = NULL;
    CHECKF(st_open(&a, tmp_path("mix"), err) == 0, "%s", err);
    if (a) {
        check_tensor(a, "model.layers.0.block_sparse_moe.switch_mlp.gate_proj.weight", LM_DT_U32, 3, 8, 512, 32);
        check_tensor(a, "model.layers.0.block_sparse_moe.switch_mlp.gate_proj.scales", LM_DT_BF16, 3, 8, 512, 4);
        check_tensor(a, "model.layers.0.block_sparse_moe.switch_mlp.down_proj.weight", LM_DT_U32, 3, 8, 256, 64);
        check_tensor(a, "model.layers.0.block_sparse_moe.switch_mlp.up_proj.biases", LM_DT_BF16, 3, 8, 512, 4);
        /* mixtral's router is quantized like any Linear: 4-bit, no override */
        check_tensor(a, "model.layers.0.block_sparse_moe.gate.weight", LM_DT_U32, 2, 8, 32, 0);
        check_tensor(a, "model.layers.0.self_attn.q_proj.weight", LM_DT_U32, 2, 256, 32, 0);
        check_tensor(a, "model.layers.0.self_attn.k_proj.weight", LM_DT_U32, 2, 64, 32, 0);
        check_tensor(a, "model.layers.0.input_layernorm.weight", LM_DT_BF16, 1, 256, 0, 0);
        check_tensor(a, "model.embed_tokens.weight", LM_DT_U32, 2, 512, 32, 0);
        check_tensor(a, "lm_head.weight", LM_DT_U32, 2, 512, 32, 0);
        check_tensor(a, "model.norm.weight", LM_DT_BF16, 1, 256, 0, 0);
        CHECK(a->files[0].is_mlx);
        st_close(a);
    }
    json_t *cfg = json_load_file(tmp_path("mix/config.json"), 0, NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(cfg, "num_local_experts")), 8);
    CHECK(json_object_get(json_object_get(cfg, "quantization"), "model.layers.0.block_sparse_moe.gate") == NULL);
    json_decref(cfg);
    CHECKF(eval_finite(tmp_path("mix"), err), "%s", err);
}

/* qwen3_next: 3 linear-attention layers then a full one, shared expert, overrides. */
static void test_qwen3_next_layout(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    o.preset = "qwen3-coder-next";
    o.layers = 4;
    o.hidden = 256;
    o.experts = 16;
    o.moe_intermediate = 128;
    o.vocab = 512;
    CHECKF(lm_synth_write(tmp_path("next"), &o, NULL, err) == 0, "%s", err);
    st_archive *a = NULL;
    CHECKF(st_open(&a, tmp_path("next"), err) == 0, "%s", err);
    if (a) {
        check_tensor(a, "model.layers.0.linear_attn.in_proj_qkvz.weight", LM_DT_U32, 2, 12288, 32, 0);
        check_tensor(a, "model.layers.0.linear_attn.in_proj_ba.weight", LM_DT_U32, 2, 64, 32, 0);
        check_tensor(a, "model.layers.0.linear_attn.conv1d.weight", LM_DT_BF16, 3, 8192, 4, 1);
        check_tensor(a, "model.layers.0.linear_attn.A_log", LM_DT_BF16, 1, 32, 0, 0);
        check_tensor(a, "model.layers.0.linear_attn.dt_bias", LM_DT_BF16, 1, 32, 0, 0);
        check_tensor(a, "model.layers.0.linear_attn.norm.weight", LM_DT_BF16, 1, 128, 0, 0);
        check_tensor(a, "model.layers.2.linear_attn.out_proj.weight", LM_DT_U32, 2, 256, 512, 0);
        CHECK(st_find(a, "model.layers.3.linear_attn.out_proj.weight") == NULL);
        check_tensor(a, "model.layers.3.self_attn.q_proj.weight", LM_DT_U32, 2, 8192, 32, 0);
        check_tensor(a, "model.layers.3.self_attn.k_proj.weight", LM_DT_U32, 2, 512, 32, 0);
        check_tensor(a, "model.layers.3.self_attn.o_proj.weight", LM_DT_U32, 2, 256, 512, 0);
        check_tensor(a, "model.layers.3.self_attn.q_norm.weight", LM_DT_BF16, 1, 256, 0, 0);
        check_tensor(a, "model.layers.1.mlp.gate.weight", LM_DT_U32, 2, 16, 64, 0); /* 8-bit */
        check_tensor(a, "model.layers.1.mlp.shared_expert_gate.weight", LM_DT_U32, 2, 1, 64, 0);
        check_tensor(a, "model.layers.1.mlp.shared_expert.down_proj.weight", LM_DT_U32, 2, 256, 16, 0);
        check_tensor(a, "model.layers.1.mlp.switch_mlp.up_proj.weight", LM_DT_U32, 3, 16, 128, 32);
        st_close(a);
    }
    json_t *cfg = json_load_file(tmp_path("next/config.json"), 0, NULL);
    json_t *q = json_object_get(cfg, "quantization");
    CHECK(json_object_get(q, "model.layers.2.mlp.shared_expert_gate") != NULL);
    CHECK(json_object_get(q, "model.layers.2.mlp.gate") != NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(cfg, "linear_num_value_heads")), 32);
    CHECK_EQ_INT(json_integer_value(json_object_get(cfg, "full_attention_interval")), 4);
    CHECK_STR_CONTAINS(json_string_value(json_object_get(cfg, "model_type")), "qwen3_next");
    json_decref(cfg);
    CHECKF(eval_finite(tmp_path("next"), err), "%s", err); /* what synth writes, the engine runs */
}

/* Logits of a prefill of 8 ids then 4 single-token steps (12 * vocab floats) with
 * `capacity` expert slots per layer (-1: resident); 0 on failure. */
static int eval_capacity(const char *dir, int capacity, float *logits, int vocab, char *err) {
    lazymoe_options opt;
    lazymoe_options_init(&opt);
    opt.n_threads = 1;
    opt.max_context = 64;
    opt.expert_capacity = capacity;
    opt.no_warm_start = 1;
    lazymoe_model *m = NULL;
    lazymoe_session *s = NULL;
    if (lazymoe_model_open(&m, dir, &opt, err, LM_ERR_LEN) != 0) return 0;
    int ok = lazymoe_session_create(&s, m, err, LM_ERR_LEN) == 0;
    static const int32_t ids[12] = {1, 5, 9, 100, 7, 3, 400, 22, 301, 17, 18, 250};
    if (ok) ok = lazymoe_session_eval(s, ids, 8, logits, 1, err, LM_ERR_LEN) == 0;
    for (int i = 8; ok && i < 12; i++)
        ok = lazymoe_session_eval(s, ids + i, 1, logits + (size_t)i * (size_t)vocab, 1, err, LM_ERR_LEN) == 0;
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return ok;
}

/* gpt-oss at reduced width, in the released layout: MXFP4 experts (fused gate_up) with
 * BF16 biases, everything else BF16 under transformers' names, attention biases and
 * sinks, router bias; OpenAI's config keys. The MXFP4 scale of every group is the
 * smallest power of two that fits it (its largest code is 3, 4 or 6) and dequantized
 * weights have std 1/sqrt(fan_in). The engine runs it, lazy == resident bit-identical. */
static void test_gpt_oss_layout(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    o.preset = "gpt-oss-120b";
    o.layers = 3;
    o.hidden = 256;
    o.experts = 8;
    o.moe_intermediate = 128;
    o.vocab = 512;
    lm_synth_plan plan;
    CHECKF(lm_synth_write(tmp_path("goss"), &o, &plan, err) == 0, "%s", err);
    CHECK_EQ_INT(plan.bytes_per_expert, 3 * (256 * 128 / 2 + 256 * 128 / 32));
    st_archive *a = NULL;
    CHECKF(st_open(&a, tmp_path("goss"), err) == 0, "%s", err);
    if (a) {
        const char *L = "model.layers.2";
        char n[128];
#define T(SUFFIX, DT, ND, D0, D1, D2) \
    (snprintf(n, sizeof n, "%s.%s", L, SUFFIX), check_tensor(a, n, DT, ND, D0, D1, D2))
        T("mlp.experts.gate_up_proj_scales", LM_DT_U8, 3, 8, 256, 8);
        T("mlp.experts.down_proj_scales", LM_DT_U8, 3, 8, 256, 4);
        T("mlp.experts.gate_up_proj_bias", LM_DT_BF16, 2, 8, 256, 0);
        T("mlp.experts.down_proj_bias", LM_DT_BF16, 2, 8, 256, 0);
        T("mlp.router.weight", LM_DT_BF16, 2, 8, 256, 0);
        T("mlp.router.bias", LM_DT_BF16, 1, 8, 0, 0);
        T("self_attn.q_proj.weight", LM_DT_BF16, 2, 64 * 64, 256, 0);
        T("self_attn.q_proj.bias", LM_DT_BF16, 1, 64 * 64, 0, 0);
        T("self_attn.k_proj.weight", LM_DT_BF16, 2, 8 * 64, 256, 0);
        T("self_attn.v_proj.bias", LM_DT_BF16, 1, 8 * 64, 0, 0);
        T("self_attn.o_proj.weight", LM_DT_BF16, 2, 256, 64 * 64, 0);
        T("self_attn.o_proj.bias", LM_DT_BF16, 1, 256, 0, 0);
        T("self_attn.sinks", LM_DT_BF16, 1, 64, 0, 0);
        T("input_layernorm.weight", LM_DT_BF16, 1, 256, 0, 0);
#undef T
        check_tensor(a, "model.embed_tokens.weight", LM_DT_BF16, 2, 512, 256, 0);
        check_tensor(a, "lm_head.weight", LM_DT_BF16, 2, 512, 256, 0);
        CHECK(st_find(a, "model.layers.0.mlp.switch_mlp.gate_proj.weight") == NULL);
        CHECK(!a->files[0].is_mlx);
        const st_tensor *tb = st_find(a, "model.layers.1.mlp.experts.gate_up_proj_blocks");
        const st_tensor *ts = st_find(a, "model.layers.1.mlp.experts.gate_up_proj_scales");
        CHECK(tb && tb->dtype == LM_DT_U8 && tb->ndim == 4 && tb->shape[0] == 8 && tb->shape[1] == 256 &&
              tb->shape[2] == 8 && tb->shape[3] == 16);
        if (tb && ts && tb->nbytes == 8 * 256 * 128 && ts->nbytes == 8 * 256 * 8) {
            uint8_t *codes = malloc(tb->nbytes), *sc = malloc(ts->nbytes);
            float *row = malloc(sizeof(float) * 256);
            CHECK(st_read(a, tb, codes, err) == 0 && st_read(a, ts, sc, err) == 0);
            int tight = 1;
            for (size_t g = 0; g < ts->nbytes; g++) {
                int big = 0;
                for (int j = 0; j < 16; j++) {
                    uint8_t b = codes[g * 16 + j];
                    big |= (b & 7) >= 5 || (b >> 4 & 7) >= 5; /* codes 5..7: 3, 4, 6 */
                }
                tight &= big;
            }
            CHECK(tight);
            double sum = 0, sq = 0;
            for (int r = 0; r < 8 * 256; r++) {
                lm_mxfp4_split_row_f32(codes, sc, 256, r, row);
                for (int j = 0; j < 256; j++) {
                    sum += row[j];
                    sq += (double)row[j] * row[j];
                }
            }
            double cnt = 8.0 * 256 * 256, mean = sum / cnt, sd = sqrt(sq / cnt - mean * mean);
            CHECKF(fabs(sd - 1.0 / 16.0) < 0.15 / 16.0, "std %g, want 1/sqrt(256) = 0.0625", sd);
            CHECKF(fabs(mean) < 0.002, "mean %g", mean);
            free(codes);
            free(sc);
            free(row);
        }
        st_close(a);
    }
    json_t *cfg = json_load_file(tmp_path("goss/config.json"), 0, NULL);
    json_t *qc = json_object_get(cfg, "quantization_config");
    CHECK_STR_CONTAINS(json_string_value(json_object_get(qc, "quant_method")), "mxfp4");
    CHECK(json_object_get(cfg, "quantization") == NULL);
    json_t *types = json_object_get(cfg, "layer_types");
    CHECK_EQ_INT(json_array_size(types), 3);
    CHECK_STR_CONTAINS(json_string_value(json_array_get(types, 0)), "sliding_attention");
    CHECK_STR_CONTAINS(json_string_value(json_array_get(types, 1)), "full_attention");
    json_t *rope = json_object_get(cfg, "rope_scaling");
    CHECK_STR_CONTAINS(json_string_value(json_object_get(rope, "rope_type")), "yarn");
    CHECK(json_number_value(json_object_get(rope, "factor")) == 32.0);
    CHECK_EQ_INT(json_integer_value(json_object_get(cfg, "sliding_window")), 128);
    CHECK_EQ_INT(json_integer_value(json_object_get(cfg, "num_local_experts")), 8);
    CHECK_STR_CONTAINS(json_string_value(json_object_get(cfg, "model_type")), "gpt_oss");
    json_decref(cfg);
    CHECKF(eval_finite(tmp_path("goss"), err), "%s", err);
    /* Lazy experts (4 and 7 slots of 8) and resident: the same logits, bit for bit. */
    size_t nl = (size_t)12 * 512;
    float *ref = malloc(sizeof(float) * nl), *lazy = malloc(sizeof(float) * nl);
    CHECKF(eval_capacity(tmp_path("goss"), -1, ref, 512, err), "%s", err);
    static const int caps[2] = {4, 7};
    for (int i = 0; i < 2; i++) {
        CHECKF(eval_capacity(tmp_path("goss"), caps[i], lazy, 512, err), "%s", err);
        CHECKF(memcmp(ref, lazy, sizeof(float) * nl) == 0, "capacity %d differs from resident", caps[i]);
    }
    free(ref);
    free(lazy);
}

/* The gpt-oss presets' declared sizes: OpenAI's model card lists 60.8 GiB (116.8B
 * parameters) for gpt-oss-120b and 12.8 GiB (20.9B) for gpt-oss-20b. */
static void test_gpt_oss_presets_plan(void) {
    static const struct {
        const char *preset;
        int layers, E, tensors;
        double gib, params_b;
    } cases[] = {{"gpt-oss-120b", 36, 128, 687, 60.8, 116.8}, {"gpt-oss-20b", 24, 32, 459, 12.8, 20.9}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[LM_ERR_LEN] = "";
        lm_synth_options o = tiny_opts();
        o.preset = cases[i].preset;
        lm_synth_plan p;
        CHECKF(lm_synth_plan_model(&o, &p, err) == 0, "%s", err);
        CHECK_EQ_INT(p.layers, cases[i].layers);
        CHECK_EQ_INT(p.experts, cases[i].E);
        CHECK_EQ_INT(p.top_k, 4);
        CHECK_EQ_INT(p.vocab, 201088);
        /* gate_up [5760, 2880] + down [2880, 2880]: 4 bits a value + one byte per 32 */
        uint64_t vals = 3ull * 2880 * 2880;
        CHECK_EQ_INT(p.bytes_per_expert, vals / 2 + vals / 32);
        CHECK_EQ_INT(p.n_tensors, cases[i].tensors);
        CHECKF(fabs((double)p.bytes_total / (1u << 30) - cases[i].gib) < 0.05, "%s: %.3f GiB", cases[i].preset,
               (double)p.bytes_total / (1u << 30));
        CHECKF(fabs((double)p.params_total / 1e9 - cases[i].params_b) < 0.05, "%s: %.3fB params",
               cases[i].preset, (double)p.params_total / 1e9);
    }
}

/* The real presets, declared only: sizes from the shapes, and the published totals
 * (mlx-community 4-bit: Qwen3-30B-A3B 17.2 GB, Mixtral-8x7B 26.3 GB, Qwen3-Next 44.8 GB). */
static void test_real_presets_plan(void) {
    static const struct {
        const char *preset;
        int layers, H, E, I, tensors;
        double total_gb;
    } cases[] = {
        {"qwen3-30b-a3b", 48, 2048, 128, 768, 1351, 17.18},
        {"mixtral-8x7b", 32, 4096, 8, 14336, 839, 26.27},
        {"qwen3-coder-next", 48, 2048, 512, 512, 1891, 44.84},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[LM_ERR_LEN] = "";
        lm_synth_options o = tiny_opts();
        o.preset = cases[i].preset;
        lm_synth_plan p;
        CHECKF(lm_synth_plan_model(&o, &p, err) == 0, "%s", err);
        CHECK_EQ_INT(p.layers, cases[i].layers);
        CHECK_EQ_INT(p.experts, cases[i].E);
        uint64_t hi = (uint64_t)cases[i].H * (uint64_t)cases[i].I;
        uint64_t per_expert = 3 * (hi / 2 + hi / 64 * 4); /* 4-bit + bf16 scale/bias per 64 */
        CHECK_EQ_INT(p.bytes_per_expert, per_expert);
        CHECK_EQ_INT(p.bytes_experts, per_expert * (uint64_t)cases[i].E * (uint64_t)cases[i].layers);
        CHECK_EQ_INT(p.n_tensors, cases[i].tensors);
        CHECKF(fabs((double)p.bytes_total / 1e9 - cases[i].total_gb) < 0.01, "%s: %.3f GB",
               cases[i].preset, (double)p.bytes_total / 1e9);
        int min_shards = (int)((p.bytes_total + (5ull << 30) - 1) / (5ull << 30));
        CHECKF(p.n_shards >= min_shards && p.n_shards <= min_shards + 1, "%d shards", p.n_shards);
    }
    /* 8 bits doubles the packed part. */
    lm_synth_options o = tiny_opts();
    o.preset = "qwen3-30b-a3b";
    o.bits = 8;
    lm_synth_plan p;
    char err[LM_ERR_LEN] = "";
    CHECKF(lm_synth_plan_model(&o, &p, err) == 0, "%s", err);
    CHECK_EQ_INT(p.bytes_per_expert, 3 * (2048ull * 768 + 2048ull * 768 / 64 * 4));
}

/* Top-k statistics of one router over synthetic hidden states h = rmsnorm(n + m). */
static void routing_stats(lm_synth_routing mode, double *max_over_mean, double *reuse, int *used) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    o.preset = "qwen3-30b-a3b";
    o.layers = 1;
    o.routing = mode;
    const int H = 2048, E = 128, K = 8, T = 1000;
    float *w = malloc(sizeof(float) * (size_t)E * H), *m = malloc(sizeof(float) * H);
    float *h = malloc(sizeof(float) * H);
    int *count = calloc(E, sizeof(int)), prev[8], cur[8];
    *max_over_mean = *reuse = 0;
    *used = 0;
    if (lm_synth_router_floats(&o, 0, w, err) != 0 || lm_synth_common_direction(&o, m, err) != 0) {
        CHECKF(0, "%s", err);
        goto out;
    }
    uint64_t x = 12345;
    long reused = 0;
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int j = 0; j < H; j++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            double u1 = ((double)(x >> 11) + 0.5) / 9007199254740992.0;
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            double u2 = ((double)(x >> 11) + 0.5) / 9007199254740992.0;
            h[j] = (float)(sqrt(-2 * log(u1)) * cos(6.283185307 * u2)) + m[j];
            ss += (double)h[j] * h[j];
        }
        float inv = (float)(1.0 / sqrt(ss / H));
        float logit[128];
        for (int e = 0; e < E; e++) {
            double d = 0;
            for (int j = 0; j < H; j++) d += (double)w[(size_t)e * H + (size_t)j] * h[j] * inv;
            logit[e] = (float)d;
        }
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int q = 0; q < k; q++) taken |= cur[q] == e;
                if (!taken && (best < 0 || logit[e] > logit[best])) best = e;
            }
            cur[k] = best;
            count[best]++;
        }
        if (t > 0)
            for (int a = 0; a < K; a++)
                for (int b = 0; b < K; b++) reused += cur[a] == prev[b];
        memcpy(prev, cur, sizeof prev);
    }
    int mx = 0;
    for (int e = 0; e < E; e++) {
        if (count[e] > mx) mx = count[e];
        *used += count[e] > 0;
    }
    *max_over_mean = mx / ((double)T * K / E);
    *reuse = (double)reused / ((double)(T - 1) * K);
out:
    free(w);
    free(m);
    free(h);
    free(count);
}

static void test_routing_construction(void) {
    double skew[3], reuse[3];
    int used[3];
    const char *names[3] = {"realistic", "uniform", "collapsed"};
    for (int mode = 0; mode < 3; mode++) {
        routing_stats((lm_synth_routing)mode, &skew[mode], &reuse[mode], &used[mode]);
        printf("# routing %-9s (qwen3-30b-a3b router, layer 0, 1000 tokens): most popular expert "
               "%.2fx the mean, %.0f%% of a token's experts reused by the next, %d/128 used\n",
               names[mode], skew[mode], 100 * reuse[mode], used[mode]);
    }
    CHECKF(skew[LM_SYNTH_UNIFORM] < 2.0, "uniform skew %.2f", skew[LM_SYNTH_UNIFORM]);
    CHECKF(used[LM_SYNTH_UNIFORM] == 128, "uniform used %d", used[LM_SYNTH_UNIFORM]);
    CHECKF(skew[LM_SYNTH_REALISTIC] > 3.0, "realistic skew %.2f", skew[LM_SYNTH_REALISTIC]);
    CHECKF(used[LM_SYNTH_REALISTIC] >= 64, "realistic used %d", used[LM_SYNTH_REALISTIC]);
    CHECKF(reuse[LM_SYNTH_REALISTIC] > reuse[LM_SYNTH_UNIFORM] && reuse[LM_SYNTH_REALISTIC] < 0.8,
           "realistic reuse %.2f", reuse[LM_SYNTH_REALISTIC]);
    CHECKF(reuse[LM_SYNTH_COLLAPSED] > 0.9, "collapsed reuse %.2f", reuse[LM_SYNTH_COLLAPSED]);
}

static void test_disk_space_refusal(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    o.assume_free_bytes = 1000;
    CHECK(lm_synth_write(tmp_path("nospace"), &o, NULL, err) != 0);
    CHECK_STR_CONTAINS(err, "needs 0.01 GB");
    CHECK_STR_CONTAINS(err, "GB free");
    CHECK(lm_path_type(tmp_path("nospace")) == LM_PATH_MISSING);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.lazymoe-tmp-%ld", tmp_path("nospace"), (long)getpid());
    CHECK(lm_path_type(tmp) == LM_PATH_MISSING);
    /* Real presets: the refusal names the full size. */
    o.preset = "qwen3-30b-a3b";
    CHECK(lm_synth_write(tmp_path("nospace"), &o, NULL, err) != 0);
    CHECK_STR_CONTAINS(err, "needs 17.19 GB, 0.00 GB free");
}

static void test_bad_arguments(void) {
    char err[LM_ERR_LEN] = "";
    lm_synth_options o = tiny_opts();
    lm_synth_plan p;
    o.preset = "gpt5";
    CHECK(lm_synth_plan_model(&o, &p, err) != 0);
    CHECK_STR_CONTAINS(err, "unknown preset 'gpt5'");
    o = tiny_opts();
    o.bits = 3;
    CHECK(lm_synth_plan_model(&o, &p, err) != 0);
    CHECK_STR_CONTAINS(err, "4 or 8");
    o = tiny_opts();
    o.group_size = 48;
    CHECK(lm_synth_plan_model(&o, &p, err) != 0);
    CHECK_STR_CONTAINS(err, "group size");
    o = tiny_opts();
    o.layers = -2;
    CHECK(lm_synth_plan_model(&o, &p, err) != 0);
    o = tiny_opts();
    o.hidden = 100; /* not a multiple of the group size */
    CHECK(lm_synth_plan_model(&o, &p, err) != 0);
    CHECK_STR_CONTAINS(err, "divisible");
    lm_synth_routing r;
    CHECK(lm_synth_parse_routing("zipf", &r) != 0);
    CHECK(lm_synth_parse_routing("collapsed", &r) == 0 && r == LM_SYNTH_COLLAPSED);
    /* A non-empty output needs force; force replaces it. */
    o = tiny_opts();
    CHECK(lm_synth_write(tmp_path("tiny"), &o, NULL, err) != 0);
    CHECK_STR_CONTAINS(err, "--force");
    o.force = 1;
    o.layers = 1;
    CHECKF(lm_synth_write(tmp_path("tiny"), &o, NULL, err) == 0, "%s", err);
    json_t *cfg = json_load_file(tmp_path("tiny/config.json"), 0, NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(cfg, "num_hidden_layers")), 1);
    json_decref(cfg);
    /* A file in the way. */
    FILE *f = fopen(tmp_path("afile"), "w");
    if (f) fclose(f);
    o.force = 0;
    CHECK(lm_synth_write(tmp_path("afile"), &o, NULL, err) != 0);
    CHECK_STR_CONTAINS(err, "not a directory");
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/lazymoe_test_synth.%ld", (long)getpid());
    lm_remove_tree(tmp_root, NULL);
    lm_mkdir(tmp_root, NULL);
    TEST_CASE("synth_tiny_opens_and_evaluates", test_tiny_opens_and_evaluates);
    TEST_CASE("synth_weight_spread", test_weight_spread);
    TEST_CASE("synth_determinism", test_determinism);
    TEST_CASE("synth_layers_override", test_layers_override);
    TEST_CASE("synth_mixtral_layout", test_mixtral_layout);
    TEST_CASE("synth_qwen3_next_layout", test_qwen3_next_layout);
    TEST_CASE("synth_real_presets_plan", test_real_presets_plan);
    TEST_CASE("synth_gpt_oss_layout", test_gpt_oss_layout);
    TEST_CASE("synth_gpt_oss_presets_plan", test_gpt_oss_presets_plan);
    TEST_CASE("synth_routing_construction", test_routing_construction);
    TEST_CASE("synth_disk_space_refusal", test_disk_space_refusal);
    TEST_CASE("synth_bad_arguments", test_bad_arguments);
    lm_remove_tree(tmp_root, NULL);
    TEST_EXIT();
}

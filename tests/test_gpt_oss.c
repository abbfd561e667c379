/* gpt_oss (src/models/gpt_oss.c) on the tiny checkpoints of tests/fixtures/gpt_oss
 * (tools/make_gpt_oss_fixture.py): the config switches the family sets (sinks, router
 * bias and top-k softmax, clamped SwiGLU, per-layer windows from layer_types or by
 * default, YaRN), the bound tensors of both layouts (transposed bf16 experts and the
 * released MXFP4 layout), and the two layouts of one model giving the same logits and
 * greedy ids -- the MXFP4 codes, scales and row interleaving read the way the float
 * file's x @ W columns are; and MLX's layout of the same MXFP4 model (mlx "mxfp4"
 * mode) giving the released layout's logits bit for bit. */
#include "harness.h"

#include "common/error.h"
#include "formats/safetensors.h"
#include "formats/safetensors_write.h"
#include "lazymoe.h"
#include "models/config.h"
#include "models/model.h"

#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* ---- MLX's layout of gpt-oss (mlx-lm's gpt_oss.py sanitize, read, not run here: MLX
 * has no Linux package in this project's registries) ----
 * mlx-lm loads the released MXFP4 files as "mxfp4"-mode quantized SwitchGLU experts
 * named mlp.experts.{gate,up,down}_proj: NAME_blocks viewed as uint32 and flattened to
 * [E, out, in / 8] becomes .weight, NAME_scales .scales (U8 e8m0), and gate_up is split
 * into its even rows (gate) and odd rows (up), biases alike; config.json says
 * "quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"} (and the same under
 * "quantization_config"). mlx_layout_copy writes that directory from the Hugging Face
 * fixture, so both hold the same numbers: the logits must agree bit for bit. */

typedef struct {
    const st_tensor *src;
    char name[256];
    int64_t shape[3];
    int ndim, rows_of, parity; /* rows_of: rows per expert in the source (0: copy); parity 0/1: even/odd rows */
} mlx_out;

/* One output tensor: bytes of expert e's rows (every row when rows_of == 0 or parity
 * < 0, else the rows of that parity) of the source, in order. */
static void *mlx_bytes(const st_archive *a, const mlx_out *o, size_t *len, char *err) {
    uint8_t *all = malloc(o->src->nbytes);
    if (!all || st_read(a, o->src, all, err) != 0) {
        free(all);
        return NULL;
    }
    if (o->parity < 0) {
        *len = o->src->nbytes;
        return all;
    }
    size_t E = (size_t)o->src->shape[0], rows = (size_t)o->rows_of, row = o->src->nbytes / E / rows;
    uint8_t *out = malloc(o->src->nbytes / 2), *p = out;
    for (size_t e = 0; out && e < E; e++)
        for (size_t r = (size_t)o->parity; r < rows; r += 2, p += row) memcpy(p, all + (e * rows + r) * row, row);
    free(all);
    *len = o->src->nbytes / 2;
    return out;
}

/* Writes DST (a new directory) in MLX's gpt-oss layout from the Hugging Face MXFP4
 * directory SRC; quant: the "quantization" object for config.json (stolen). */
static int mlx_layout_copy(const char *src, const char *dst, json_t *quant, char *err) {
    st_archive *a = NULL;
    int rc = -1, n = 0;
    mlx_out *outs = NULL;
    stw_file *w = NULL;
    char path[600];
    json_t *cfg = NULL;
    mkdir(dst, 0755);
    if (st_open(&a, src, err) != 0) goto done;
    outs = calloc((size_t)a->ntensors * 2, sizeof *outs);
    for (int i = 0; outs && i < a->ntensors; i++) {
        const st_tensor *t = &a->tensors[i];
        const char *x = strstr(t->name, ".mlp.experts.");
        size_t stem = x ? (size_t)(x - t->name) + strlen(".mlp.experts.") : 0;
        static const char *const kinds[3] = {"_blocks", "_scales", "_bias"};
        static const char *const mlx[3] = {".weight", ".scales", ".bias"};
        int k = -1;
        for (int j = 0; x && j < 3; j++)
            if (strlen(t->name) > strlen(kinds[j]) && !strcmp(t->name + strlen(t->name) - strlen(kinds[j]), kinds[j])) k = j;
        if (k < 0) { /* everything else as it is */
            outs[n] = (mlx_out){.src = t, .ndim = t->ndim, .parity = -1};
            snprintf(outs[n].name, sizeof outs[n].name, "%s", t->name);
            for (int d = 0; d < t->ndim && d < 3; d++) outs[n].shape[d] = t->shape[d];
            n++;
            continue;
        }
        int gate_up = !strncmp(t->name + stem, "gate_up_proj", 12);
        int64_t E = t->shape[0], rows = t->shape[1];
        for (int part = 0; part < (gate_up ? 2 : 1); part++, n++) {
            mlx_out *o = &outs[n];
            o->src = t;
            o->rows_of = (int)rows;
            o->parity = gate_up ? part : -1;
            snprintf(o->name, sizeof o->name, "%.*s%s%s", (int)stem, t->name,
                     gate_up ? (part ? "up_proj" : "gate_proj") : "down_proj", mlx[k]);
            int64_t out_rows = gate_up ? rows / 2 : rows;
            if (k == 2) o->ndim = 2, o->shape[0] = E, o->shape[1] = out_rows;
            else if (k == 1) o->ndim = 3, o->shape[0] = E, o->shape[1] = out_rows, o->shape[2] = t->shape[2];
            else o->ndim = 3, o->shape[0] = E, o->shape[1] = out_rows, o->shape[2] = t->shape[2] * 4; /* 16 bytes = 4 words */
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dst);
    if (!outs || stw_file_create(&w, path, "mlx", err) != 0) goto done;
    for (int i = 0; i < n; i++) {
        int words = strstr(outs[i].name, "experts.") && strstr(outs[i].name, ".weight");
        if (stw_file_declare(w, outs[i].name, words ? LM_DT_U32 : outs[i].src->dtype, outs[i].ndim, outs[i].shape, err))
            goto done;
    }
    if (stw_file_start(w, err) != 0) goto done;
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        void *b = mlx_bytes(a, &outs[i], &len, err);
        int wr = b ? stw_file_write_at(w, outs[i].name, 0, b, len, err) : -1;
        free(b);
        if (wr != 0) goto done;
    }
    if (stw_file_commit(w, err) != 0) goto done;
    snprintf(path, sizeof path, "%s/config.json", src);
    json_error_t je;
    if (!(cfg = json_load_file(path, 0, &je))) {
        snprintf(err, LM_ERR_LEN, "%.300s: %.150s", path, je.text);
        goto done;
    }
    json_object_set(cfg, "quantization_config", quant);
    json_object_set_new(cfg, "quantization", quant);
    quant = NULL;
    snprintf(path, sizeof path, "%s/config.json", dst);
    if (json_dump_file(cfg, path, JSON_INDENT(4)) != 0) {
        snprintf(err, LM_ERR_LEN, "cannot write %.400s", path);
        goto done;
    }
    rc = 0;
done:
    json_decref(quant);
    json_decref(cfg);
    stw_file_free(w);
    free(outs);
    st_close(a);
    return rc;
}

static void mlx_mxfp4(void) {
    const int32_t ids[] = {5, 17, 300, 42, 7, 9, 100, 200, 11, 3, 250, 66, 1, 2};
    enum { N = 14, G = 12, V = 336 };
    char tmpl[] = "/tmp/lazymoe-gptoss-mlx-XXXXXX", dir[300], err[LM_ERR_LEN];
    CHECK(mkdtemp(tmpl) != NULL);
    /* the global mode, as mlx-lm writes it for the released files; then a global affine
     * mode with the experts' modules set to mxfp4 one by one (a mixed conversion) */
    for (int variant = 0; variant < 2; variant++) {
        snprintf(dir, sizeof dir, "%s/v%d", tmpl, variant);
        json_t *q = json_pack("{s:i, s:i, s:s}", "group_size", variant ? 64 : 32, "bits", variant ? 8 : 4, "mode",
                              variant ? "affine" : "mxfp4");
        for (int l = 0; variant && l < 2; l++)
            for (int p = 0; p < 3; p++) {
                static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
                char key[128];
                snprintf(key, sizeof key, "model.layers.%d.mlp.experts.%s", l, proj[p]);
                json_object_set_new(q, key, json_pack("{s:i, s:i, s:s}", "group_size", 32, "bits", 4, "mode", "mxfp4"));
            }
        CHECKF(mlx_layout_copy(FIX "mxfp4", dir, q, err) == 0, "%s", err);
        lm_weights w;
        CHECKF(lm_weights_load(&w, dir, NULL, NULL, err) == 0, "%s", err);
        if (!err[0] || w.layers) {
            for (int l = 0; l < w.cfg.n_layers; l++) {
                const lm_expert_source *s = &w.layers[l].src;
                CHECK(s->tmpl[0].dtype == LM_DT_MXFP4_SPLIT && s->tmpl[1].dtype == LM_DT_MXFP4_SPLIT &&
                      s->tmpl[2].dtype == LM_DT_MXFP4_SPLIT && s->tmpl[0].rows == 64 && s->tmpl[1].rows == 64);
                CHECK_EQ_INT(s->nparts, 6);
            }
            CHECK(w.cfg.quant_mxfp4 == !variant);
            lm_weights_free(&w);
        }
        for (int act = 32; act >= 8; act -= 24) {
            int32_t ga[G], gb[G];
            float *a = logits_act(FIX "mxfp4", ids, N, ga, G, act, NULL), *b = logits_act(dir, ids, N, gb, G, act, NULL);
            CHECKF(a && b && !memcmp(a, b, sizeof(float) * N * V), "MLX layout (variant %d, act %d): logits differ",
                   variant, act);
            CHECK(!memcmp(ga, gb, sizeof ga));
            free(a);
            free(b);
        }
    }
    printf("# MLX mxfp4 layout (global and per-module mode): logits and greedy ids equal the released layout's\n");
    /* lazy experts from the MLX slices: the resident bits at capacity 1 */
    {
        snprintf(dir, sizeof dir, "%s/v0", tmpl);
        lazymoe_options o;
        lazymoe_options_init(&o);
        o.no_warm_start = 1;
        o.kv_bits = 32;
        o.expert_capacity = 1;
        float *ref = logits_act(dir, ids, N, NULL, 0, 8, NULL);
        lazymoe_model *m = NULL;
        lazymoe_session *s = NULL;
        float *lg = malloc(sizeof(float) * N * V);
        CHECKF(lazymoe_model_open(&m, dir, &o, err, sizeof err) == 0, "%s", err);
        CHECK(m && lazymoe_session_create(&s, m, err, sizeof err) == 0);
        CHECKF(s && lazymoe_session_eval(s, ids, N, lg, 1, err, sizeof err) == 0, "%s", err);
        lazymoe_expert_stats st;
        if (m) lazymoe_model_get_expert_stats(m, -1, &st);
        CHECKF(m && !st.resident && st.misses > 0, "nothing was read lazily");
        CHECKF(ref && s && !memcmp(ref, lg, sizeof(float) * N * V), "lazy (capacity 1) differs from resident");
        lazymoe_session_free(s);
        lazymoe_model_close(m);
        free(ref);
        free(lg);
    }
    /* what mlx itself could not read is refused, naming the module */
    {
        snprintf(dir, sizeof dir, "%s/bad", tmpl);
        json_t *q = json_pack("{s:i, s:i, s:s, s:{s:i, s:i}}", "group_size", 32, "bits", 4, "mode", "mxfp4",
                              "model.layers.0.mlp.experts.down_proj", "group_size", 64, "bits", 4);
        CHECKF(mlx_layout_copy(FIX "mxfp4", dir, q, err) == 0, "%s", err);
        lm_weights w;
        CHECKF(lm_weights_load(&w, dir, NULL, NULL, err) != 0 && strstr(err, "model.layers.0.mlp.experts.down_proj") &&
                   strstr(err, "affine"),
               "an affine override on mxfp4 tensors: %s", err);
        static const char *const bad[2][2] = {{"{\"mode\": \"mxfp4\", \"bits\": 8}", "needs bits 4 and group_size 32"},
                                              {"{\"mode\": \"nvfp4\"}", "mode 'nvfp4' is not supported"}};
        for (int i = 0; i < 2; i++) {
            json_t *cfg = json_load_file(FIX "mxfp4/config.json", 0, NULL);
            json_object_set_new(cfg, "quantization", json_loads(bad[i][0], 0, NULL));
            char *text = json_dumps(cfg, 0);
            lm_config c;
            CHECKF(text && lm_config_parse(&c, text, NULL, err) != 0 && strstr(err, bad[i][1]), "%s: %s", bad[i][0], err);
            free(text);
            json_decref(cfg);
        }
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    CHECK(system(cmd) == 0);
}

int main(void) {
    TEST_CASE("gpt_oss_config_switches", config_switches);
    TEST_CASE("gpt_oss_binding_both_layouts", binding);
    TEST_CASE("gpt_oss_float_and_mxfp4_layouts_agree", layouts_agree);
    TEST_CASE("gpt_oss_mxfp4_act8_default", act8_default);
    TEST_CASE("gpt_oss_mlx_mxfp4_layout", mlx_mxfp4);
    TEST_EXIT();
}

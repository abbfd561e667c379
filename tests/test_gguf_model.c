/* GGUF models end to end: golden fixtures and the demo model written to GGUF with
 * tools' exporter (llama.cpp's conventions) give the same logits and greedy ids as
 * their safetensors / MLX runs; the GGUF tokenizer and chat template give the same
 * ids and renders as tokenizer.json / tokenizer_config.json; lazy experts read from
 * GGUF slices are bit-identical to resident at every capacity; metadata errors are
 * clear. (Independent check with llama.cpp itself: tests/node/gguf_llamacpp.test.mjs.) */
#include "harness.h"

#include "ggml_ref.h"

#include "api/text.h"
#include "common/error.h"
#include "convert/gguf_export.h"
#include "formats/gguf.h"
#include "formats/gguf_write.h"
#include "formats/mxfp4.h"
#include "formats/safetensors.h"
#include "lazymoe.h"
#include "models/gguf_model.h"
#include "models/model.h"
#include "text/tokenizer_gguf.h"

#include <sys/stat.h>
#include <unistd.h>

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/"
#define DEMO LAZYMOE_SOURCE_DIR "/models/demo-coder"
#define FIXTURES LAZYMOE_SOURCE_DIR "/tests/fixtures/"
static char tmp[256];

typedef struct {
    float *logits; /* [n][V] */
    int32_t gen[12];
    size_t V;
    lazymoe_expert_stats st;
} run_result;

static const int32_t IDS[] = {5, 17, 2, 99, 41, 7, 63, 11, 250, 3, 77, 140, 9, 31, 200, 18};
#define NIDS 16

static int act_bits = 32; /* the reference numerics on both sides (quantized models default to int8) */

/* Logits over IDS, then 12 greedy tokens; capacity -1 = resident. */
static int run(const char *path, int capacity, run_result *r, char *err) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.no_warm_start = 1;
    o.n_threads = 2;
    o.expert_capacity = capacity;
    o.io_threads = 3;
    o.act_bits = act_bits;
    lazymoe_model *m;
    if (lazymoe_model_open(&m, path, &o, err, LM_ERR_LEN) != 0) return -1;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    r->V = (size_t)info.vocab_size;
    r->logits = malloc(sizeof(float) * NIDS * r->V);
    float *lg = malloc(sizeof(float) * r->V);
    lazymoe_session *s;
    int rc = lazymoe_session_create(&s, m, err, LM_ERR_LEN);
    if (rc == 0) rc = lazymoe_session_eval(s, IDS, NIDS, r->logits, 1, err, LM_ERR_LEN);
    if (rc == 0) memcpy(lg, r->logits + (size_t)(NIDS - 1) * r->V, sizeof(float) * r->V);
    for (int g = 0; rc == 0 && g < 12; g++) {
        int best = 0;
        for (size_t i = 1; i < r->V; i++)
            if (lg[i] > lg[best]) best = (int)i;
        r->gen[g] = best;
        rc = lazymoe_session_eval(s, &r->gen[g], 1, lg, 0, err, LM_ERR_LEN);
    }
    lazymoe_model_get_expert_stats(m, -1, &r->st);
    free(lg);
    if (rc == 0) lazymoe_session_free(s);
    lazymoe_model_close(m);
    return rc;
}

static float max_diff(const run_result *a, const run_result *b) {
    float d = 0;
    for (size_t i = 0; i < NIDS * a->V; i++) {
        float x = fabsf(a->logits[i] - b->logits[i]);
        if (!(x <= d)) d = x;
    }
    return d;
}

static int export_flags; /* LM_GGUF_* for export_to */

static void export_to(const char *dir, const char *name, lm_dtype t, char *out) {
    char err[LM_ERR_LEN];
    snprintf(out, 512, "%s/%s", tmp, name);
    CHECKF(lm_gguf_export(dir, out, t, export_flags, err) == 0, "export %s: %s", dir, err);
}

/* GGUF (F32 / F16 / BF16) vs the directory it was written from: logits within tol,
 * same greedy ids. */
static void same_as_source(const char *dir, const char *name, lm_dtype t, float tol) {
    char path[512], err[LM_ERR_LEN];
    export_to(dir, name, t, path);
    run_result a = {0}, b = {0};
    CHECKF(run(dir, -1, &a, err) == 0, "%s: %s", dir, err);
    CHECKF(run(path, -1, &b, err) == 0, "%s: %s", path, err);
    if (a.logits && b.logits && a.V == b.V) {
        float d = max_diff(&a, &b);
        printf("# %s: max |logit difference| %.3g\n", name, d);
        CHECKF(d <= tol, "%s: logits differ by %g (> %g)", name, d, tol);
        CHECKF(memcmp(a.gen, b.gen, sizeof a.gen) == 0, "%s: greedy ids differ", name);
    } else {
        CHECK(a.V == b.V);
    }
    free(a.logits);
    free(b.logits);
}

static void qwen3_moe_f32(void) { same_as_source(GOLDEN "qwen3_moe_f32", "qwen3_moe_f32.gguf", LM_DT_F32, 0); }
static void qwen3_moe_tied_bf16(void) {
    same_as_source(GOLDEN "qwen3_moe_tied_bf16", "qwen3_moe_tied_bf16.gguf", LM_DT_BF16, 0);
}
static void mixtral_f32(void) { same_as_source(GOLDEN "mixtral_f32", "mixtral_f32.gguf", LM_DT_F32, 0); }
static void mixtral_bf16(void) { same_as_source(GOLDEN "mixtral_bf16", "mixtral_bf16.gguf", LM_DT_BF16, 0); }
static void olmoe_f32(void) { same_as_source(GOLDEN "olmoe_f32", "olmoe_f32.gguf", LM_DT_F32, 0); }
static void olmoe_clip_bf16(void) { same_as_source(GOLDEN "olmoe_clip_bf16", "olmoe_clip_bf16.gguf", LM_DT_BF16, 0); }
/* F16 rounds the F32 weights: the logits move a little, the greedy ids do not. */
static void qwen3_moe_f16(void) { same_as_source(GOLDEN "qwen3_moe_f32", "qwen3_moe_f16.gguf", LM_DT_F16, 1e-2f); }
/* The MLX 4-bit demo model dequantized into an F32 GGUF: the same weights, computed in
 * f32 instead of from 4-bit codes. */
static void demo_f32(void) { same_as_source(DEMO, "demo_f32.gguf", LM_DT_F32, 1e-4f); }

/* Lazy experts from GGUF slices: bit-identical to resident at capacities 1, top-k, all. */
static void lazy_equals_resident_file(const char *name) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    run_result ref = {0};
    CHECKF(run(path, -1, &ref, err) == 0, "resident: %s", err);
    int caps[] = {1, 4, 32};
    for (int i = 0; i < 3 && ref.logits; i++) {
        run_result r = {0};
        CHECKF(run(path, caps[i], &r, err) == 0, "capacity %d: %s", caps[i], err);
        if (!r.logits) continue;
        CHECKF(!r.st.resident && r.st.misses > 0 && r.st.bytes_read > 0, "capacity %d: nothing read lazily", caps[i]);
        CHECKF(memcmp(r.logits, ref.logits, sizeof(float) * NIDS * ref.V) == 0, "capacity %d logits differ", caps[i]);
        CHECKF(memcmp(r.gen, ref.gen, sizeof r.gen) == 0, "capacity %d greedy ids differ", caps[i]);
        printf("# %s capacity %d: hits %llu misses %llu bytes %llu\n", name, caps[i], (unsigned long long)r.st.hits,
               (unsigned long long)r.st.misses, (unsigned long long)r.st.bytes_read);
        free(r.logits);
    }
    free(ref.logits);
}

static void lazy_equals_resident(void) { lazy_equals_resident_file("demo_f32.gguf"); }

/* gpt-oss as llama.cpp's converter writes it (arch "gpt-oss": gate and up apart, sinks,
 * biases, per-layer windows, YaRN keys): the same logits bit for bit as the Hugging
 * Face files. The MXFP4 fixture's experts become ggml MXFP4 blocks (the nibbles move,
 * the numbers do not), its bf16 weights stay bf16; with int8 activations (the default
 * for MXFP4) too, since both layouts feed the same integer dot products. */
static void gpt_oss_mxfp4(void) {
    same_as_source(GOLDEN "gpt_oss_mxfp4", "gpt_oss_mxfp4.gguf", LM_DT_BF16, 0);
    act_bits = 8;
    same_as_source(GOLDEN "gpt_oss_mxfp4", "gpt_oss_mxfp4.gguf", LM_DT_BF16, 0);
    act_bits = 32;
}
/* Float experts: Hugging Face stores them transposed ([E, H, 2I], x @ W, computed
 * column-wise), GGUF as rows, so the sums run in another order: close (the golden
 * test's own tolerance against transformers is 1e-4 of the logit scale), same ids. */
static void gpt_oss_f32(void) { same_as_source(GOLDEN "gpt_oss_f32", "gpt_oss_f32.gguf", LM_DT_F32, 1e-4f); }
/* truncated YaRN (lazymoe's rope.scaling.yarn_truncate), MQA, a window of 7 */
static void gpt_oss_yarn_f32(void) {
    same_as_source(GOLDEN "gpt_oss_yarn_f32", "gpt_oss_yarn_f32.gguf", LM_DT_F32, 1e-4f);
}
static void gpt_oss_bf16(void) { same_as_source(GOLDEN "gpt_oss_bf16", "gpt_oss_bf16.gguf", LM_DT_BF16, 1e-4f); }
static void gpt_oss_lazy_equals_resident(void) { lazy_equals_resident_file("gpt_oss_mxfp4.gguf"); }

/* The exported expert tensors read by llama.cpp's own ggml (libggml's MXFP4 to_float)
 * are the released file's numbers: ffn_gate_exps row r of expert e is gate_up row 2r,
 * ffn_up_exps row r is row 2r + 1, ffn_down_exps is down; all bit for bit. */
static void gpt_oss_blocks_match_libggml(void) {
    get_traits_fn traits_of = ggml_ref_traits();
    if (!traits_of) return;
    const struct ggml_type_traits *tr = traits_of(39);
    CHECKF(tr && tr->type_name && !strcmp(tr->type_name, "mxfp4") && tr->type_size == 17 && tr->to_float,
           "ggml type 39 is not mxfp4");
    if (!tr || !tr->to_float) return;
    char path[512], err[LM_ERR_LEN];
    export_to(GOLDEN "gpt_oss_mxfp4", "gpt_oss_mxfp4_blocks.gguf", LM_DT_BF16, path);
    gguf_archive *g = NULL;
    st_archive *st = NULL;
    CHECKF(gguf_open(&g, path, err) == 0, "%s", err);
    CHECKF(st_open(&st, GOLDEN "gpt_oss_mxfp4", err) == 0, "%s", err);
    if (!g || !st) goto done;
    static const char *const ours[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    static const char *const hf[3] = {"gate_up_proj", "gate_up_proj", "down_proj"};
    int checked = 0;
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 3; k++) {
            char name[128];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, ours[k]);
            const gguf_tensor *t = gguf_find_tensor(g, name);
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s_blocks", l, hf[k]);
            const st_tensor *sb = st_find(st, name);
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s_scales", l, hf[k]);
            const st_tensor *ss = st_find(st, name);
            CHECKF(t && sb && ss && t->n_dims == 3 && t->dtype == LM_DT_MXFP4, "layer %d %s: tensors missing or not MXFP4",
                   l, ours[k]);
            if (!t || !sb || !ss || t->n_dims != 3) continue;
            int cols = (int)t->ne[0], rows = (int)t->ne[1], E = (int)t->ne[2];
            uint8_t *blocks = malloc(t->nbytes), *codes = malloc(sb->nbytes), *scales = malloc(ss->nbytes);
            float *theirs = malloc(sizeof(float) * (size_t)cols), *mine = malloc(sizeof(float) * (size_t)cols);
            CHECK(gguf_read_range(g, t, 0, t->nbytes, blocks, err) == 0 && st_read(st, sb, codes, err) == 0 &&
                  st_read(st, ss, scales, err) == 0);
            int hf_rows = k == 2 ? rows : 2 * rows, bad = 0;
            for (int e = 0; e < E; e++)
                for (int r = 0; r < rows; r++) {
                    size_t row = (size_t)e * (size_t)rows + (size_t)r;
                    tr->to_float(blocks + row * (size_t)cols / 32 * 17, theirs, cols);
                    int hr = k == 2 ? r : 2 * r + k;
                    lm_mxfp4_split_row_f32(codes + (size_t)e * (size_t)hf_rows * (size_t)cols / 2,
                                           scales + (size_t)e * (size_t)hf_rows * (size_t)cols / 32, cols, hr, mine);
                    bad += memcmp(mine, theirs, sizeof(float) * (size_t)cols) != 0;
                    checked++;
                }
            CHECKF(bad == 0, "layer %d %s: %d rows differ from the released file's", l, ours[k], bad);
            free(blocks), free(codes), free(scales), free(theirs), free(mine);
        }
    printf("# %d expert rows read by libggml equal the released layout's\n", checked);
    CHECK(checked > 0);
done:
    gguf_close(g);
    st_close(st);
}

/* llama.cpp's converter with --fuse-gate-up-exps writes gate and up as one
 * ffn_gate_up_exps [E, 2I, H] (each expert's I gate rows, then its I up rows) and, for
 * gpt-oss, one ffn_gate_up_exps.bias [E, 2I] alike; its graph splits the product in
 * halves. The exporter writes that layout on request; here the file's layout is checked
 * with libggml's own MXFP4 to_float against the released file (gate = even rows of
 * gate_up, up = odd), then the reader must give the same logits bit for bit as the
 * Hugging Face files, and lazy == resident from the fused slices. (llama.cpp itself
 * cannot check this yet: node-llama-cpp 3.22.1, the newest on npm, bundles llama.cpp
 * release v0.5.0, which refuses these files with "missing tensor
 * 'blk.0.ffn_gate_exps.weight'": its gpt-oss and qwen3moe loaders predate the fused
 * tensors.) */
static void gpt_oss_fused_gate_up(void) {
    char path[512], err[LM_ERR_LEN];
    export_flags = LM_GGUF_FUSE_GATE_UP;
    export_to(GOLDEN "gpt_oss_mxfp4", "gpt_oss_mxfp4_fused.gguf", LM_DT_BF16, path);
    gguf_archive *g = NULL;
    st_archive *st = NULL;
    get_traits_fn traits_of = ggml_ref_traits();
    const struct ggml_type_traits *tr = traits_of ? traits_of(39) : NULL;
    CHECKF(gguf_open(&g, path, err) == 0, "%s", err);
    CHECKF(st_open(&st, GOLDEN "gpt_oss_mxfp4", err) == 0, "%s", err);
    int rows_checked = 0, biases_checked = 0;
    for (int l = 0; g && st && l < 2; l++) {
        char name[128];
        snprintf(name, sizeof name, "blk.%d.ffn_gate_exps.weight", l);
        CHECKF(!gguf_find_tensor(g, name), "%s is written beside the fused tensor", name);
        snprintf(name, sizeof name, "blk.%d.ffn_gate_up_exps.weight", l);
        const gguf_tensor *t = gguf_find_tensor(g, name);
        snprintf(name, sizeof name, "blk.%d.ffn_gate_up_exps.bias", l);
        const gguf_tensor *tb = gguf_find_tensor(g, name);
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj_blocks", l);
        const st_tensor *sb = st_find(st, name);
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj_scales", l);
        const st_tensor *ss = st_find(st, name);
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj_bias", l);
        const st_tensor *sbias = st_find(st, name);
        CHECKF(t && tb && sb && ss && sbias && t->n_dims == 3 && t->dtype == LM_DT_MXFP4 && tb->n_dims == 2 &&
                   tb->dtype == LM_DT_F32 && tb->ne[0] == t->ne[1] && tb->ne[1] == t->ne[2] && sbias->dtype == LM_DT_BF16,
               "layer %d: fused tensors missing or of the wrong type or shape", l);
        if (!t || !tb || !sb || !ss || !sbias || t->n_dims != 3 || tb->n_dims != 2 || sbias->dtype != LM_DT_BF16) continue;
        int cols = (int)t->ne[0], rows = (int)t->ne[1], E = (int)t->ne[2], I = rows / 2;
        uint8_t *blocks = malloc(t->nbytes), *codes = malloc(sb->nbytes), *scales = malloc(ss->nbytes);
        float *bias = malloc(tb->nbytes), *theirs = malloc(sizeof(float) * (size_t)cols),
              *mine = malloc(sizeof(float) * (size_t)cols);
        uint16_t *hb = malloc(sbias->nbytes);
        CHECK(gguf_read_range(g, t, 0, t->nbytes, blocks, err) == 0 && gguf_read_range(g, tb, 0, tb->nbytes, bias, err) == 0 &&
              st_read(st, sb, codes, err) == 0 && st_read(st, ss, scales, err) == 0 && st_read(st, sbias, hb, err) == 0);
        int bad = 0, bad_bias = 0;
        for (int e = 0; e < E; e++)
            for (int r = 0; r < rows; r++) {
                int hr = r < I ? 2 * r : 2 * (r - I) + 1; /* gate rows, then up rows */
                size_t row = (size_t)e * (size_t)rows + (size_t)r;
                if (tr && tr->to_float) {
                    tr->to_float(blocks + row * (size_t)cols / 32 * 17, theirs, cols);
                    lm_mxfp4_split_row_f32(codes + (size_t)e * (size_t)rows * (size_t)cols / 2,
                                           scales + (size_t)e * (size_t)rows * (size_t)cols / 32, cols, hr, mine);
                    bad += memcmp(mine, theirs, sizeof(float) * (size_t)cols) != 0;
                    rows_checked++;
                }
                bad_bias += bias[row] != lm_bf16_to_f32(hb[(size_t)e * (size_t)rows + (size_t)hr]);
                biases_checked++;
            }
        CHECKF(bad == 0, "layer %d: %d fused rows are not the released file's gate / up rows", l, bad);
        CHECKF(bad_bias == 0, "layer %d: %d fused biases are not the released file's", l, bad_bias);
        free(blocks), free(codes), free(scales), free(bias), free(theirs), free(mine), free(hb);
    }
    printf("# fused gate_up: %d rows read by libggml and %d biases equal the released layout's\n", rows_checked,
           biases_checked);
    CHECK(biases_checked > 0 && (rows_checked > 0 || !tr));
    gguf_close(g);
    st_close(st);
    same_as_source(GOLDEN "gpt_oss_mxfp4", "gpt_oss_mxfp4_fused.gguf", LM_DT_BF16, 0);
    act_bits = 8;
    same_as_source(GOLDEN "gpt_oss_mxfp4", "gpt_oss_mxfp4_fused.gguf", LM_DT_BF16, 0);
    act_bits = 32;
    same_as_source(GOLDEN "gpt_oss_f32", "gpt_oss_f32_fused.gguf", LM_DT_F32, 1e-4f);
    export_flags = 0;
    lazy_equals_resident_file("gpt_oss_mxfp4_fused.gguf");
    /* one read range per expert for gate and up together (the split file needs two) */
    int parts[2] = {0, 0};
    for (int f = 0; f < 2; f++) {
        lm_weights w;
        snprintf(path, sizeof path, "%s/%s", tmp, f ? "gpt_oss_mxfp4_fused.gguf" : "gpt_oss_mxfp4.gguf");
        CHECKF(lm_weights_load(&w, path, NULL, NULL, err) == 0, "%s", err);
        if (err[0] && !w.layers) continue;
        parts[f] = w.layers[0].src.nparts;
        lm_weights_free(&w);
    }
    CHECKF(parts[0] == 3 && parts[1] == 2, "read ranges per expert: split %d, fused %d (want 3, 2)", parts[0], parts[1]);
}

/* The fused layout for the other families (llama.cpp's create_tensor_gate_up_exps
 * takes it for every architecture): an F32 qwen3moe and a BF16 Mixtral written fused
 * give the source's logits bit for bit; lazy == resident. */
static void fused_gate_up_other_families(void) {
    export_flags = LM_GGUF_FUSE_GATE_UP;
    same_as_source(GOLDEN "qwen3_moe_f32", "qwen3_moe_f32_fused.gguf", LM_DT_F32, 0);
    same_as_source(GOLDEN "mixtral_bf16", "mixtral_bf16_fused.gguf", LM_DT_BF16, 0);
    export_flags = 0;
    lazy_equals_resident_file("qwen3_moe_f32_fused.gguf");
}

/* The demo model as a Q8_0 GGUF (ggml's block format, quantized by the exporter the
 * way ggml does): close to the F32 file, the same greedy ids, and lazy == resident. */
static void demo_q8_0(void) {
    char path[512], f32[512], err[LM_ERR_LEN];
    export_to(DEMO, "demo_q8_0.gguf", LM_DT_Q8_0, path);
    snprintf(f32, sizeof f32, "%s/demo_f32.gguf", tmp);
    run_result a = {0}, b = {0};
    CHECKF(run(f32, -1, &a, err) == 0, "%s", err);
    CHECKF(run(path, -1, &b, err) == 0, "%s", err);
    if (a.logits && b.logits) {
        /* measured: max 1.21 (at the first position, a lone token), mean 0.062, logits in [-15, 11] */
        float d = max_diff(&a, &b);
        double sum = 0;
        for (size_t i = 0; i < NIDS * a.V; i++) sum += fabsf(a.logits[i] - b.logits[i]);
        double mean = sum / (double)(NIDS * a.V);
        printf("# demo Q8_0 vs F32 GGUF: max |logit difference| %.3g, mean %.3g\n", d, mean);
        CHECKF(d < 1.5f && mean < 0.1, "Q8_0 logits differ from F32 by max %g, mean %g", d, mean);
        CHECKF(memcmp(a.gen, b.gen, sizeof a.gen) == 0, "Q8_0 greedy ids differ from F32");
    }
    free(a.logits);
    free(b.logits);
    lazy_equals_resident_file("demo_q8_0.gguf");
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

/* The demo GGUF's tokenizer and template against tokenizer.json / chat_template.jinja:
 * every line of the held-out text (and the whole text) tokenizes to the same ids, ids
 * decode to the same bytes, and the same conversation renders to the same prompt. */
static void tokenizer_and_template(void) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/demo_f32.gguf", tmp);
    lm_tokenizer *ref = NULL, *tok = NULL;
    CHECKF(lm_tokenizer_load(DEMO, &ref, err) == 0, "%s", err);
    gguf_archive *g = NULL;
    CHECKF(gguf_open(&g, path, err) == 0, "%s", err);
    if (g) CHECKF(lm_tokenizer_from_gguf(g, &tok, err) == 0, "%s", err);
    size_t n = 0;
    char *text = read_all(DEMO "/heldout.txt", &n);
    CHECK(text != NULL);
    if (ref && tok && text) {
        CHECK(lm_tokenizer_eos_id(ref) == lm_tokenizer_eos_id(tok) && lm_tokenizer_bos_id(ref) == lm_tokenizer_bos_id(tok));
        const char *extra[] = {"<|im_start|>user\nhi<|im_end|>", "  x =  1\r\n\t\tcafé naïve 中文 🙂 123456", ""};
        int lines = 0, same = 1;
        for (int pass = 0; pass < 2 + 3; pass++) {
            const char *s = pass == 0 ? text : pass == 1 ? NULL : extra[pass - 2];
            if (pass == 1) { /* every line on its own */
                for (char *p = text; *p && same;) {
                    char *e = strchr(p, '\n');
                    size_t len = e ? (size_t)(e - p + 1) : strlen(p);
                    int32_t *a = NULL, *b = NULL;
                    size_t na = 0, nb = 0;
                    lm_tokenizer_encode(ref, p, len, 1, &a, &na, err);
                    lm_tokenizer_encode(tok, p, len, 1, &b, &nb, err);
                    same = a && b && na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
                    free(a);
                    free(b);
                    lines++;
                    p += len;
                }
                continue;
            }
            int32_t *a = NULL, *b = NULL;
            size_t na = 0, nb = 0;
            CHECK(lm_tokenizer_encode(ref, s, strlen(s), 1, &a, &na, err) == 0);
            CHECK(lm_tokenizer_encode(tok, s, strlen(s), 1, &b, &nb, err) == 0);
            CHECKF(na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0), "pass %d: ids differ (%zu vs %zu)",
                   pass, na, nb);
            char *da = NULL, *db = NULL;
            size_t la = 0, lb = 0;
            CHECK(lm_tokenizer_decode(ref, a, na, 0, &da, &la, err) == 0);
            CHECK(lm_tokenizer_decode(tok, b, nb, 0, &db, &lb, err) == 0);
            CHECK(da && db && la == lb && memcmp(da, db, la) == 0);
            if (pass == 0) printf("# heldout.txt: %zu ids, same from GGUF\n", na);
            free(a);
            free(b);
            free(da);
            free(db);
        }
        CHECKF(same, "a line of heldout.txt tokenizes differently");
        printf("# %d lines compared\n", lines);
    }
    /* chat template: same render */
    char *ra = NULL, *rb = NULL;
    size_t la = 0, lb = 0;
    lm_model_text *ta = NULL, *tb = NULL;
    lm_config cfg = {0};
    cfg.n_eos = 0;
    CHECK(lm_model_text_load(&ta, DEMO, &cfg, err) == 0);
    CHECK(lm_model_text_load(&tb, path, &cfg, err) == 0);
    if (ta && tb) {
        CHECKF(ta->tmpl && tb->tmpl, "templates: %s / %s", ta->tmpl_err, tb->tmpl_err);
        json_t *msgs = json_pack("[{s:s,s:s},{s:s,s:s},{s:s,s:s},{s:s,s:s}]", "role", "system", "content", "Be brief.",
                                 "role", "user", "content", "Write a loop.", "role", "assistant", "content",
                                 "for i in range(3): pass", "role", "user", "content", "Again");
        lm_chat_request req = {.messages = msgs, .add_generation_prompt = true};
        if (ta->tmpl && tb->tmpl) {
            CHECK(lm_chat_template_render(ta->tmpl, &req, NULL, &ra, &la, err) == 0);
            CHECK(lm_chat_template_render(tb->tmpl, &req, NULL, &rb, &lb, err) == 0);
            CHECK(ra && rb && la == lb && memcmp(ra, rb, la) == 0);
        }
        json_decref(msgs);
    }
    free(ra);
    free(rb);
    lm_model_text_free(ta);
    lm_model_text_free(tb);
    free(text);
    lm_tokenizer_free(ref);
    lm_tokenizer_free(tok);
    gguf_close(g);
}

/* config.json of dir into *a and the config of GGUF file tmp/name into *b, with that
 * file open in *g; 0 when all three load (free them with free_configs), else -1 with
 * the case failed. */
static int load_configs(const char *dir, const char *name, lm_config *a, lm_config *b, gguf_archive **g) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    *g = NULL;
    CHECKF(gguf_open(g, path, err) == 0, "%s", err);
    if (!*g) return -1;
    if (lm_config_load(a, dir, err) != 0) {
        CHECKF(0, "%s: %s", dir, err);
    } else if (lm_gguf_config(b, *g, err) != 0) {
        CHECKF(0, "%s: %s", name, err);
        lm_config_free(a);
    } else {
        return 0;
    }
    gguf_close(*g);
    *g = NULL;
    return -1;
}

static void free_configs(lm_config *a, lm_config *b, gguf_archive *g) {
    lm_config_free(a);
    lm_config_free(b);
    gguf_close(g);
}

/* Every end-of-generation id of a (read from `source`) is one of the GGUF config b's. */
static void ends_found(const lm_config *a, const lm_config *b, const char *source) {
    for (int i = 0; i < a->n_eos; i++) {
        int found = 0;
        for (int j = 0; j < b->n_eos; j++) found |= a->eos_ids[i] == b->eos_ids[j];
        CHECKF(found, "eos id %d of %s is not an end id of the GGUF", a->eos_ids[i], source);
    }
}

/* an integer field of the configs a (config.json's) and b (the GGUF's) is the same */
#define SAME(field) CHECK_EQ_INT(a.field, b.field)

/* The demo GGUF's config equals config.json's where both speak: shapes, RoPE, norms,
 * router weighting and the end-of-generation ids (GGUF keeps one eos id; the other
 * end tokens come back from the control tokens' spelling, as llama.cpp does). */
static void config_matches(void) {
    lm_config a, b;
    gguf_archive *g;
    if (load_configs(DEMO, "demo_f32.gguf", &a, &b, &g) != 0) return;
    SAME(vocab_size);
    SAME(hidden_size);
    SAME(n_layers);
    SAME(n_heads);
    SAME(n_kv_heads);
    SAME(head_dim);
    SAME(moe_intermediate_size);
    SAME(n_experts);
    SAME(top_k);
    SAME(norm_topk_prob);
    CHECK(a.rope_theta == b.rope_theta && a.rms_norm_eps == b.rms_norm_eps);
    SAME(rope_dim);
    SAME(tie_word_embeddings);
    SAME(qk_norm);
    SAME(n_eos);
    ends_found(&a, &b, "config.json");
    free_configs(&a, &b, g);
}

/* The sigmoid-router families from GGUF (F32: the same weights, so the logits agree
 * to rounding). glm4moe: leading dense layers, shared experts (*_shexp), exp_probs_b,
 * expert groups (glm4_moe_f32: 4 groups, 2 used) and expert_weights_scale 2.5; the
 * qknorm fixture has per-head q/k norms, 2 dense layers and no renormalisation.
 * minimax-m2: q/k norms over whole projections, partial RoPE, exp_probs_b. */
static void glm4_moe_f32(void) { same_as_source(GOLDEN "glm4_moe_f32", "glm4_moe_f32.gguf", LM_DT_F32, 1e-4f); }
static void glm4_moe_qknorm_f32(void) {
    same_as_source(GOLDEN "glm4_moe_qknorm_f32", "glm4_moe_qknorm_f32.gguf", LM_DT_F32, 1e-4f);
}
static void glm4_moe_lazy_equals_resident(void) { lazy_equals_resident_file("glm4_moe_f32.gguf"); }
static void minimax_m2_f32(void) { same_as_source(GOLDEN "minimax_m2_f32", "minimax_m2_f32.gguf", LM_DT_F32, 1e-4f); }
static void minimax_m2_mqa_f32(void) {
    same_as_source(GOLDEN "minimax_m2_mqa_f32", "minimax_m2_mqa_f32.gguf", LM_DT_F32, 1e-4f);
}
static void minimax_m2_lazy_equals_resident(void) { lazy_equals_resident_file("minimax_m2_f32.gguf"); }

/* glm4_moe_f32 holds a multi-token-prediction layer (layer 3: eh_proj, enorm, router);
 * written the way llama.cpp's converter keeps it (blk.3.nextn.*, block_count 4,
 * nextn_predict_layers 1) it is skipped, named in the model's counts, and changes no
 * logit. */
static void glm4_moe_mtp(void) {
    export_flags = LM_GGUF_KEEP_MTP;
    same_as_source(GOLDEN "glm4_moe_f32", "glm4_moe_f32_mtp.gguf", LM_DT_F32, 1e-4f);
    export_flags = 0;
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/glm4_moe_f32_mtp.gguf", tmp);
    gguf_archive *g = NULL;
    CHECKF(gguf_open(&g, path, err) == 0, "%s", err);
    if (g) {
        CHECK(gguf_find_tensor(g, "blk.3.nextn.eh_proj.weight") != NULL);
        CHECK(gguf_find_tensor(g, "blk.3.ffn_gate_inp.weight") != NULL);
        gguf_close(g);
    }
    lm_weights w;
    CHECKF(lm_weights_load(&w, path, NULL, NULL, err) == 0, "%s", err);
    CHECK_EQ_INT(w.cfg.n_layers, 3);
    CHECK_EQ_INT(w.n_mtp_layers, 1);
    lm_weights_free(&w);
}

/* glm4moe's config from the GGUF equals config.json's: the keys llama.cpp's converter
 * writes for it (dense lead, shared experts, groups, scale, norm) come back. */
static void glm4_moe_config_matches(void) {
    lm_config a, b;
    gguf_archive *g;
    if (load_configs(GOLDEN "glm4_moe_f32", "glm4_moe_f32.gguf", &a, &b, &g) != 0) return;
    SAME(n_layers);
    SAME(first_k_dense);
    SAME(shared_expert_intermediate_size);
    SAME(n_group);
    SAME(topk_group);
    SAME(router_sigmoid);
    SAME(norm_topk_prob);
    SAME(rope_dim);
    SAME(attention_bias);
    CHECK(a.routed_scaling_factor == b.routed_scaling_factor);
    free_configs(&a, &b, g);
}

/* A GLM model with its tokenizer (tests/fixtures/server_glm45: GLM-4.5's added tokens,
 * generation_config.json's ends <|endoftext|> 303, <|user|> 307, <|observation|> 309):
 * the GGUF keeps eos 303 and, as llama.cpp's converter writes them, eot <|user|> and eom
 * <|observation|>, so that its end ids are the directory's (they were eos alone). */
static void glm4_moe_end_ids(void) {
    lm_config a, b;
    gguf_archive *g;
    char path[512], err[LM_ERR_LEN];
    export_to(FIXTURES "server_glm45", "glm45_vocab.gguf", LM_DT_F32, path);
    if (load_configs(FIXTURES "server_glm45", "glm45_vocab.gguf", &a, &b, &g) != 0) return;
    int64_t eot = -1, eom = -1;
    CHECKF(lm_gguf_special_id(g, "eot", &eot, err) == 0 && lm_gguf_special_id(g, "eom", &eom, err) == 0, "%s", err);
    CHECKF(eot == 307 && eom == 309, "eot %lld eom %lld", (long long)eot, (long long)eom);
    CHECK_EQ_INT(a.n_eos, 3);
    SAME(n_eos);
    ends_found(&a, &b, "generation_config.json");
    free_configs(&a, &b, g);
}

/* The Gated DeltaNet hybrids as llama.cpp's converter writes them. qwen3next:
 * in_proj_qkvz split into attn_qkv (all q, all k, all v) and attn_gate (z), ssm_ba
 * fused per key head, ssm_a = -exp(A_log), norms with the 1 folded in: the same
 * weights row for row, so the same logits bit for bit. qwen35moe: its value heads are
 * reordered to ggml's tiled order (value head j of key head g at j nk + g) in every
 * tensor that has them, ssm_out's columns included, so that matmul sums its products
 * in another order: close, not equal (measured 1.1e-6 and 6.7e-6 of logits up to 4),
 * same greedy ids; the vision-language wrapper's text model likewise. */
static void qwen3_next_f32(void) { same_as_source(GOLDEN "qwen3_next_f32", "qwen3_next_f32.gguf", LM_DT_F32, 0); }
static void qwen3_5_moe_f32(void) {
    same_as_source(GOLDEN "qwen3_5_moe_text_f32", "qwen3_5_moe_text_f32.gguf", LM_DT_F32, 1e-4f);
    same_as_source(GOLDEN "qwen3_5_moe_vl_f32", "qwen3_5_moe_vl_f32.gguf", LM_DT_F32, 1e-4f);
}
static void qwen3_next_lazy_equals_resident(void) {
    lazy_equals_resident_file("qwen3_next_f32.gguf");
    lazy_equals_resident_file("qwen3_5_moe_text_f32.gguf");
}

/* A copy of the GGUF file src at dst with one multi-token-prediction block after the
 * last layer, the way llama.cpp's converter writes Qwen3-Next's and Qwen3.5's
 * (mtp.layers.0 as blk.L, mtp.fc as blk.L.nextn.eh_proj, the pre-fc norms as
 * nextn.enorm / hnorm, mtp.norm as nextn.shared_head_norm; block_count L + 1,
 * nextn_predict_layers 1, attention.recurrent_layers one (false) entry longer): the
 * block's attention and MoE tensors are copies of the last full-attention layer's,
 * its nextn tensors made up. */
static int add_mtp_block(const char *src, const char *dst, char *err) {
    gguf_archive *g = NULL;
    if (gguf_open(&g, src, err) != 0) return -1;
    char *arch = NULL, key[256];
    int64_t blocks = 0;
    gguf_get_str(g, "general.architecture", &arch, err);
    snprintf(key, sizeof key, "%s.block_count", arch);
    gguf_get_int(g, key, &blocks, err);
    gguf_writer *w = gguf_w_new();
    for (int i = 0; i < g->nkv; i++) {
        const gguf_kv *kv = &g->kvs[i];
        char *str = NULL;
        if (strcmp(kv->key, key) == 0) {
            gguf_w_u32(w, kv->key, (uint32_t)blocks + 1);
        } else if (kv->type == GGUF_TYPE_STRING) {
            str = strndup(kv->s.p, kv->s.len);
            gguf_w_str(w, kv->key, str);
        } else if (kv->type == GGUF_TYPE_ARRAY && kv->arr_type == GGUF_TYPE_STRING) {
            const char **v = malloc(sizeof(char *) * (kv->arr_n + 1));
            for (uint64_t k = 0; k < kv->arr_n; k++) v[k] = strndup(kv->strs[k].p, kv->strs[k].len);
            gguf_w_arr_str(w, kv->key, v, kv->arr_n);
            for (uint64_t k = 0; k < kv->arr_n; k++) free((char *)v[k]);
            free(v);
        } else if (kv->type == GGUF_TYPE_ARRAY) {
            static const size_t size[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
            size_t es = size[kv->arr_type];
            int grow = strstr(kv->key, ".attention.recurrent_layers") != NULL;
            uint8_t *v = calloc(kv->arr_n + 1, es);
            memcpy(v, kv->arr_data, kv->arr_n * es);
            gguf_w_arr(w, kv->key, kv->arr_type, v, kv->arr_n + (uint64_t)grow);
            free(v);
        } else if (kv->type == GGUF_TYPE_U32) {
            gguf_w_u32(w, kv->key, (uint32_t)kv->u);
        } else if (kv->type == GGUF_TYPE_I32) {
            gguf_w_i32(w, kv->key, (int32_t)kv->i);
        } else if (kv->type == GGUF_TYPE_U64) {
            gguf_w_u64(w, kv->key, kv->u);
        } else if (kv->type == GGUF_TYPE_F32) {
            gguf_w_f32(w, kv->key, (float)kv->f);
        } else if (kv->type == GGUF_TYPE_BOOL) {
            gguf_w_bool(w, kv->key, (int)kv->i);
        } else {
            lm_errf(err, "add_mtp_block: key %s of type %s", kv->key, gguf_type_name(kv->type));
        }
        free(str);
    }
    snprintf(key, sizeof key, "%s.nextn_predict_layers", arch);
    gguf_w_u32(w, key, 1);
    int like = -1;
    for (int l = 0; l < blocks; l++) {
        snprintf(key, sizeof key, "blk.%d.attn_q.weight", l);
        if (gguf_find_tensor(g, key)) like = l;
    }
    char prefix[32];
    snprintf(prefix, sizeof prefix, "blk.%d.", like);
    int rc = like >= 0 ? 0 : lm_errf(err, "add_mtp_block: no full-attention layer");
    for (int i = 0; rc == 0 && i < g->ntensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        void *data = malloc(t->nbytes ? t->nbytes : 1);
        if (gguf_read_range(g, t, 0, t->nbytes, data, err) != 0) rc = -1;
        gguf_w_tensor(w, t->name, t->ggml_type, t->n_dims, t->ne, data, t->nbytes, 1);
        if (rc == 0 && strncmp(t->name, prefix, strlen(prefix)) == 0) {
            void *copy = malloc(t->nbytes ? t->nbytes : 1);
            memcpy(copy, data, t->nbytes);
            snprintf(key, sizeof key, "blk.%lld.%s", (long long)blocks, t->name + strlen(prefix));
            gguf_w_tensor(w, key, t->ggml_type, t->n_dims, t->ne, copy, t->nbytes, 1);
        }
    }
    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    int64_t H = emb ? emb->ne[0] : 0;
    static const char *const nextn[] = {"eh_proj", "enorm", "hnorm", "shared_head_norm"};
    for (int k = 0; rc == 0 && k < 4; k++) {
        int64_t ne[2] = {k ? H : 2 * H, H};
        size_t n = (size_t)(k ? H : 2 * H * H);
        float *v = malloc(sizeof(float) * n);
        for (size_t j = 0; j < n; j++) v[j] = k ? 1.0f : (float)((j * 7919) % 13) / 13.0f - 0.5f;
        snprintf(key, sizeof key, "blk.%lld.nextn.%s.weight", (long long)blocks, nextn[k]);
        gguf_w_tensor(w, key, 0, k ? 1 : 2, ne, v, sizeof(float) * n, 1);
    }
    if (rc == 0) rc = gguf_w_save(w, dst, err);
    gguf_w_free(w);
    gguf_close(g);
    free(arch);
    return rc;
}

/* Qwen3-Next and Qwen3.5 files with their multi-token-prediction block, as llama.cpp's
 * converter now writes them: llama.cpp runs the layers before it and never the block
 * (only a separate draft context does); lazymoe reads the config's layers, counts the
 * block as unread (as mtp.* of the safetensors), and gives the logits and greedy ids of
 * the file without it, lazy as resident. */
static void qwen_linear_mtp(void) {
    static const char *const files[] = {"qwen3_next_f32", "qwen3_5_moe_text_f32"};
    for (int f = 0; f < 2; f++) {
        char src[512], dst[512], name[128], err[LM_ERR_LEN];
        snprintf(src, sizeof src, "%s/%s.gguf", tmp, files[f]);
        snprintf(name, sizeof name, "%s_mtp.gguf", files[f]);
        snprintf(dst, sizeof dst, "%s/%s", tmp, name);
        CHECKF(add_mtp_block(src, dst, err) == 0, "%s: %s", files[f], err);
        lm_weights w;
        CHECKF(lm_weights_load(&w, dst, NULL, NULL, err) == 0, "%s: %s", files[f], err);
        if (th_case_failed) return;
        CHECK_EQ_INT(w.cfg.n_layers, 4);
        CHECK_EQ_INT(w.n_mtp_layers, 1);
        int n_linear = w.cfg.n_linear_layers;
        lm_weights_free(&w);
        CHECKF(lm_weights_load(&w, src, NULL, NULL, err) == 0, "%s: %s", files[f], err);
        CHECK_EQ_INT(w.cfg.n_linear_layers, n_linear);
        CHECK_EQ_INT(w.n_mtp_layers, 0);
        lm_weights_free(&w);
        run_result a = {0}, b = {0};
        CHECKF(run(src, -1, &a, err) == 0, "%s: %s", src, err);
        CHECKF(run(dst, -1, &b, err) == 0, "%s: %s", dst, err);
        if (a.logits && b.logits && a.V == b.V) {
            CHECKF(max_diff(&a, &b) == 0, "%s: logits differ by %g", name, max_diff(&a, &b));
            CHECKF(memcmp(a.gen, b.gen, sizeof a.gen) == 0, "%s: greedy ids differ", name);
        }
        free(a.logits);
        free(b.logits);
        lazy_equals_resident_file(name);
    }
}

/* The tensors and keys llama.cpp's loader asks for, with its shapes (ggml ne order),
 * and the config read back equal to config.json's. */
static void qwen3_5_moe_layout(void) {
    lm_config a, b;
    gguf_archive *g;
    if (load_configs(GOLDEN "qwen3_5_moe_text_f32", "qwen3_5_moe_text_f32.gguf", &a, &b, &g) != 0) return;
    /* layer 1 is linear: nk 2 x dk 8, nv 8 x dv 8, K 4, H 64 */
    static const struct {
        const char *name;
        int n_dims;
        int64_t ne[2];
    } want[] = {{"blk.1.attn_qkv.weight", 2, {64, 96}},  {"blk.1.attn_gate.weight", 2, {64, 64}},
                {"blk.1.ssm_beta.weight", 2, {64, 8}},   {"blk.1.ssm_alpha.weight", 2, {64, 8}},
                {"blk.1.ssm_conv1d.weight", 2, {4, 96}}, {"blk.1.ssm_a", 1, {8, 0}},
                {"blk.1.ssm_dt.bias", 1, {8, 0}},        {"blk.1.ssm_norm.weight", 1, {8, 0}},
                {"blk.1.ssm_out.weight", 2, {64, 64}},   {"blk.0.attn_q.weight", 2, {64, 128}},
                {"blk.0.post_attention_norm.weight", 1, {64, 0}}, {"blk.0.ffn_gate_inp_shexp.weight", 2, {64, 1}}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const gguf_tensor *t = gguf_find_tensor(g, want[i].name);
        CHECKF(t && t->n_dims == want[i].n_dims && t->ne[0] == want[i].ne[0] && (t->n_dims < 2 || t->ne[1] == want[i].ne[1]),
               "%s: missing or of the wrong shape", want[i].name);
    }
    CHECK(!gguf_find_tensor(g, "blk.1.ssm_ba.weight") && !gguf_find_tensor(g, "blk.1.ssm_in.weight"));
    SAME(lin_k_heads);
    SAME(lin_v_heads);
    SAME(lin_k_dim);
    SAME(lin_v_dim);
    SAME(conv_kernel);
    SAME(n_linear_layers);
    for (int l = 0; l < a.n_layers && l < b.n_layers; l++)
        CHECK_EQ_INT(lm_config_layer_is_linear(&a, l), lm_config_layer_is_linear(&b, l));
    SAME(shared_expert_intermediate_size);
    SAME(rope_dim);
    SAME(zero_centred_norms);
    CHECK_EQ_INT(b.lin_v_tiled, 1);
    CHECK_EQ_INT(a.lin_v_tiled, 0);
    free_configs(&a, &b, g);
}

/* A SentencePiece ("llama") vocabulary from GGUF metadata, on the points of llama.cpp's
 * algorithm that a tiny vocabulary can pin down (its real vocabularies are compared with
 * llama.cpp itself in tests/node/gguf_spm_tokenizer.test.mjs): the pair whose piece
 * scores highest merges first, equal scores merge leftmost first, characters without a
 * piece fall back to <0xNN> pieces (then to the unknown token), the space prefix, and
 * decoding by token type. Bad vocabulary metadata is refused naming the key. */
static const char *const spm_pieces[] = {"<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", "<0xA9>",
                                         "\xE2\x96\x81", "a", "b", "ab", "ba", "\xE2\x96\x81" "a"};
static const float spm_scores[] = {0, 0, 0, 0, 0, 0, -1, -2, -2, -5, -5, -3};

typedef struct {
    int n_scores, score_type; /* tokenizer.ggml.scores: that many of that type */
    int64_t unk, eos, bos;    /* tokenizer.ggml.unknown_token_id / eos_token_id / bos_token_id; 0: no key */
    const char *model, *pre;  /* tokenizer.ggml.model (NULL: "llama") and .pre (NULL: none) */
    int no_types;             /* no tokenizer.ggml.token_type */
    int model_keys;           /* the keys and token_embd.weight that lm_gguf_config reads */
    int long_piece;           /* a 13th piece of 100 bytes ("z" x 100) */
    int no_byte_pieces;       /* "x", "y", "z" (normal, score -9) instead of the three <0xNN> pieces */
    const char *typed_id;     /* tokenizer.ggml.TYPED_ID_token_id written as typed_type (value 8, "8", [8]) */
    gguf_type typed_type;
} vocab_opts;

static int spm_file(const char *path, const vocab_opts *o, char *err) {
    static const int32_t byte_types[] = {2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1},
                         plain_types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const int32_t *types = o->no_byte_pieces ? plain_types : byte_types;
    const char *pieces[13];
    float scores[13];
    char z[101];
    memset(z, 'z', 100);
    z[100] = 0;
    for (int i = 0; i < 13; i++) {
        pieces[i] = i < 12 ? spm_pieces[i] : z;
        scores[i] = i < 12 ? spm_scores[i] : -10;
    }
    if (o->no_byte_pieces)
        for (int i = 3; i < 6; i++) {
            pieces[i] = i == 3 ? "x" : i == 4 ? "y" : "z";
            scores[i] = -9;
        }
    uint64_t n = o->long_piece ? 13 : 12;
    static float emb[12 * 4];
    int64_t ne[2] = {4, 12};
    gguf_writer *w = gguf_w_new();
    gguf_w_str(w, "general.architecture", "qwen3moe");
    gguf_w_str(w, "tokenizer.ggml.model", o->model ? o->model : "llama");
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", pieces, n);
    if (!o->no_types) gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_I32, types, n);
    if (o->score_type == GGUF_TYPE_STRING) gguf_w_arr_str(w, "tokenizer.ggml.scores", pieces, (uint64_t)o->n_scores);
    else gguf_w_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_F32, scores, (uint64_t)o->n_scores);
    if (o->unk != 0) gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)o->unk);
    if (o->eos != 0) gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)o->eos);
    if (o->bos != 0) gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)o->bos);
    if (o->pre) gguf_w_str(w, "tokenizer.ggml.pre", o->pre);
    if (o->typed_id) {
        char k[64];
        static const int32_t eight = 8;
        snprintf(k, sizeof k, "tokenizer.ggml.%s_token_id", o->typed_id);
        switch (o->typed_type) {
        case GGUF_TYPE_I32: gguf_w_i32(w, k, 8); break;
        case GGUF_TYPE_U64: gguf_w_u64(w, k, 8); break;
        case GGUF_TYPE_F32: gguf_w_f32(w, k, 8.0f); break;
        case GGUF_TYPE_BOOL: gguf_w_bool(w, k, 1); break;
        case GGUF_TYPE_STRING: gguf_w_str(w, k, "8"); break;
        default: gguf_w_arr(w, k, GGUF_TYPE_I32, &eight, 1); break;
        }
    }
    if (o->model_keys) {
        static const char *const keys[] = {"block_count", "embedding_length", "attention.head_count",
                                           "feed_forward_length", "expert_count", "expert_used_count"};
        static const uint32_t vals[] = {1, 4, 1, 4, 2, 1};
        char k[64];
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            snprintf(k, sizeof k, "qwen3moe.%s", keys[i]);
            gguf_w_u32(w, k, vals[i]);
        }
        gguf_w_tensor(w, "token_embd.weight", 0, 2, ne, emb, sizeof emb, 0);
    }
    int rc = gguf_w_save(w, path, err);
    gguf_w_free(w);
    return rc;
}

/* The tokenizer of a spm_file written to path; NULL (the case failed) if either fails. */
static lm_tokenizer *spm_tokenizer_at(const char *path, const vocab_opts *o) {
    char err[LM_ERR_LEN];
    lm_tokenizer *tok = NULL;
    int rc = spm_file(path, o, err);
    CHECKF(rc == 0, "%s", err);
    if (rc == 0) CHECKF(lm_tokenizer_load(path, &tok, err) == 0, "%s", err);
    return tok;
}

static void spm_tokenizer(void) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/spm.gguf", tmp);
    lm_tokenizer *tok = spm_tokenizer_at(path, &(vocab_opts){12, GGUF_TYPE_F32});
    if (!tok) return;
    static const struct {
        const char *text;
        int32_t ids[8];
        size_t n;
    } cases[] = {
        /* "▁abab": ▁a (-3) first; then "ba" (-5) at 2 before "ab" (-5) at 3 */
        {"abab", {11, 10, 8}, 3},
        /* A and é only as bytes; € has neither a piece nor byte pieces: unknown */
        {"A\xC3\xA9\xE2\x82\xAC", {6, 3, 4, 5, 0, 0, 0}, 7},
        /* a space prefix after an added token, none inside the text */
        {"</s>a b", {2, 11, 6, 8}, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECKF(lm_tokenizer_encode(tok, cases[i].text, strlen(cases[i].text), 0, &ids, &n, err) == 0, "%s", err);
        CHECKF(ids && n == cases[i].n && memcmp(ids, cases[i].ids, n * sizeof *ids) == 0, "case %zu: got %zu ids", i, n);
        free(ids);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(lm_tokenizer_encode(tok, "a", 1, 1, &ids, &n, err) == 0 && n == 2 && ids[0] == 1 && ids[1] == 11); /* BOS */
    free(ids);
    static const struct {
        int32_t ids[4];
        size_t n;
        int flags;
        const char *want;
    } dec[] = {{{11, 10, 8}, 3, 0, "abab"},
               {{1, 11}, 2, 0, "<s> a"},
               {{1, 11}, 2, LM_DECODE_SKIP_SPECIAL, " a"},
               {{3, 4, 5, 6}, 4, 0, "A\xC3\xA9 "}};
    for (size_t i = 0; i < sizeof dec / sizeof dec[0]; i++) {
        char *out = NULL;
        size_t len = 0;
        CHECK(lm_tokenizer_decode(tok, dec[i].ids, dec[i].n, dec[i].flags, &out, &len, err) == 0);
        CHECKF(out && len == strlen(dec[i].want) && memcmp(out, dec[i].want, len) == 0, "decode %zu: \"%s\"", i,
               out ? out : "");
        free(out);
    }
    lm_tokenizer_free(tok);
    /* an unknown id out of range: llama.cpp's default (0) instead */
    tok = spm_tokenizer_at(path, &(vocab_opts){12, GGUF_TYPE_F32, .unk = 99});
    if (tok) {
        CHECK(lm_tokenizer_encode(tok, "\xE2\x82\xAC", 3, 0, &ids, &n, err) == 0);
        CHECK(n == 4 && ids[0] == 6 && ids[1] == 0 && ids[2] == 0 && ids[3] == 0);
        free(ids);
        lm_tokenizer_free(tok);
    }
    /* no unknown token and no byte piece for E2: an error */
    gguf_archive *g = NULL;
    json_t *tj = NULL, *cj = NULL;
    CHECKF(gguf_open(&g, path, err) == 0, "%s", err);
    if (g) CHECKF(lm_gguf_tokenizer_json(g, &tj, &cj, err) == 0, "%s", err);
    gguf_close(g);
    if (tj) {
        json_object_del(json_object_get(tj, "model"), "unk_id");
        CHECKF(lm_tokenizer_load_json(tj, cj, &tok, err) == 0, "%s", err);
        if (tok) {
            CHECK(lm_tokenizer_encode(tok, "\xE2\x82\xAC", 3, 0, &ids, &n, err) != 0);
            CHECKF(strstr(err, "no piece for byte 0xE2") != NULL, "%s", err);
            lm_tokenizer_free(tok);
        }
    }
    json_decref(tj);
    json_decref(cj);
    /* scores of the wrong type or too few */
    for (int k = 0; k < 2; k++) {
        CHECKF(spm_file(path, &(vocab_opts){k ? 5 : 12, k ? GGUF_TYPE_F32 : GGUF_TYPE_STRING}, err) == 0, "%s", err);
        tok = NULL;
        CHECK(lm_tokenizer_load(path, &tok, err) != 0);
        CHECKF(strstr(err, "tokenizer.ggml.scores is not an f32 or i32 array as long as the tokens") &&
                   strstr(err, "spm.gguf"),
               "%s", err);
        lm_tokenizer_free(tok);
    }
}

/* A character without a piece. With byte pieces (spm_tokenizer above: <0x41>, <0xC3>,
 * <0xA9> but no <0xE2>): each byte becomes its <0xNN> piece, or the unknown token where
 * that is missing, as SentencePiece's encoder maps a missing byte piece (llama.cpp throws;
 * SentencePiece itself refuses to load a model with some but not all 256 byte pieces).
 * Without any byte piece, a SentencePiece model without byte_fallback: a run of such
 * characters is one unknown token, across the encoder's 4 KB chunks too, where llama.cpp
 * throws. The ids are those of SentencePiece itself (google/sentencepiece compiled to
 * wasm, npm @sctg/sentencepiece-js 1.3.3) for a BPE ModelProto of the same pieces, scores
 * and types, byte_fallback false, identity normalizer, add_dummy_prefix true,
 * remove_extra_whitespaces false (tools/spm_reference_ids.mjs writes it and prints them).
 * Before, each byte was its own unknown token. */
static void spm_no_byte_pieces(void) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/spm_no_bytes.gguf", tmp);
    lm_tokenizer *tok = spm_tokenizer_at(path, &(vocab_opts){12, GGUF_TYPE_F32, .no_byte_pieces = 1});
    if (!tok) return;
    enum { RUN = 5000 };
    char *run = malloc(3 * RUN + 3);
    memset(run, 'a', 1);
    for (int i = 0; i < RUN; i++) memcpy(run + 1 + 3 * i, "\xE2\x82\xAC", 3);
    run[1 + 3 * RUN] = 'b';
    static const struct {
        const char *text;
        int32_t ids[8];
        size_t n;
    } cases[] = {
        {"abab", {11, 10, 8}, 3},
        {"A\xC3\xA9\xE2\x82\xAC", {6, 0}, 2},
        {"A a\xE2\x82\xAC\xE2\x82\xAC" "b", {6, 0, 11, 0, 8}, 5},
        {"x\xE2\x82\xACy\xC3\xA9\xC3\xA9 a", {6, 3, 0, 4, 0, 11}, 6},
        {"A\xC3\xA9 \xE2\x82\xAC", {6, 0, 6, 0}, 4},
        {" ", {6, 6}, 2},
        {NULL, {11, 0, 8}, 3}, /* "a", 5000 x "€" (15000 bytes: four chunks), "b" */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *text = cases[i].text ? cases[i].text : run;
        size_t len = cases[i].text ? strlen(text) : 3 * RUN + 2;
        int32_t *ids = NULL;
        size_t n = 0;
        CHECKF(lm_tokenizer_encode(tok, text, len, 0, &ids, &n, err) == 0, "%s", err);
        CHECKF(ids && n == cases[i].n && memcmp(ids, cases[i].ids, n * sizeof *ids) == 0,
               "case %zu: %zu ids, the first %d %d %d", i, n, n > 0 ? ids[0] : -1, n > 1 ? ids[1] : -1,
               n > 2 ? ids[2] : -1);
        free(ids);
    }
    free(run);
    lm_tokenizer_free(tok);
}

/* the id of t[0, k) among spm_pieces' normal pieces, -1 if none */
static int spm_piece(const char *t, size_t k) {
    for (int p = 6; p < 12; p++)
        if (k == strlen(spm_pieces[p]) && !memcmp(t, spm_pieces[p], k)) return p;
    return -1;
}

/* SentencePiece's merges, slowly: merge the adjacent pair whose concatenation is the
 * best-scoring piece (equal scores: the leftmost) until none is a piece; what is left
 * becomes pieces, or <0xNN> pieces, or the unknown token (0). Over spm_file's vocabulary
 * (no space prefix: t is given escaped). */
static size_t spm_naive(const char *t, size_t len, int32_t *out) {
    size_t *start = malloc(sizeof(size_t) * (len + 1)), n = 0, n_out = 0;
    float *pair = malloc(sizeof(float) * (len + 1)); /* score of symbols i and i + 1 merged; 1: no piece */
    for (size_t o = 0; o < len; n++) {
        start[n] = o;
        unsigned char c = (unsigned char)t[o];
        o += c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    }
    start[n] = len;
#define PAIR(i) (i + 1 < n && spm_piece(t + start[i], start[i + 2] - start[i]) >= 0 \
                     ? spm_scores[spm_piece(t + start[i], start[i + 2] - start[i])] : 1.0f)
    for (size_t i = 0; i < n; i++) pair[i] = PAIR(i);
    for (;;) {
        size_t best = n;
        for (size_t i = 0; i + 1 < n; i++)
            if (pair[i] <= 0 && (best == n || pair[i] > pair[best])) best = i;
        if (best == n) break;
        memmove(start + best + 1, start + best + 2, sizeof(size_t) * (n - best - 1));
        memmove(pair + best + 1, pair + best + 2, sizeof(float) * (n - best - 2));
        n--;
        pair[best] = PAIR(best);
        if (best) pair[best - 1] = PAIR(best - 1);
    }
#undef PAIR
    for (size_t i = 0; i < n; i++) {
        size_t k = start[i + 1] - start[i];
        int id = spm_piece(t + start[i], k);
        if (id >= 0) {
            out[n_out++] = id;
            continue;
        }
        for (size_t j = 0; j < k; j++) {
            unsigned char b = (unsigned char)t[start[i] + j];
            out[n_out++] = b == 0x41 ? 3 : b == 0xC3 ? 4 : b == 0xA9 ? 5 : 0;
        }
    }
    free(start);
    free(pair);
    return n_out;
}

/* A SentencePiece section longer than the encoder's chunks: the ids are the whole
 * section's (against spm_naive), with and without a stretch no cut can split, and with
 * a vocabulary whose 100-byte piece makes the encoder take the section whole; with a
 * limit on ids the encoder stops one id past it, the ids a prefix of the whole
 * encoding, as the BPE tokenizer reports a text that does not fit. */
static void spm_long_text_and_limit(void) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/spm_long.gguf", tmp);
    lm_tokenizer *tok = spm_tokenizer_at(path, &(vocab_opts){12, GGUF_TYPE_F32});
    if (!tok) return;
    enum { LEN = 12000 };
    char *text = malloc(LEN + 1), *esc = malloc(3 * LEN + 4);
    int32_t *want = malloc(sizeof(int32_t) * 4 * (LEN + 1));
    static const char *const parts[] = {"a", "b", " ", "A", "\xC3\xA9", "ab", "  "};
    for (int pass = 0; pass < 3 && tok; pass++) {
        if (pass == 2) { /* the text of pass 0, never matching the long piece */
            lm_tokenizer_free(tok);
            tok = spm_tokenizer_at(path, &(vocab_opts){13, GGUF_TYPE_F32, .long_piece = 1});
            if (!tok) break;
        }
        size_t len = 0;
        uint32_t x = 12345;
        while (len + 2 < LEN) {
            x = x * 1103515245u + 12345u;
            /* pass 1: a stretch of 8000 bytes of "ab" that "ab" / "ba" span everywhere */
            const char *p = pass == 1 && len >= 2000 && len < 10000 ? "ab" : parts[(x >> 16) % 7];
            memcpy(text + len, p, strlen(p));
            len += strlen(p);
        }
        text[len] = 0;
        size_t el = 0;
        memcpy(esc, "\xE2\x96\x81", 3); /* the space prefix */
        el = 3;
        for (size_t i = 0; i < len; i++) {
            if (text[i] == ' ') {
                memcpy(esc + el, "\xE2\x96\x81", 3);
                el += 3;
            } else {
                esc[el++] = text[i];
            }
        }
        size_t n_want = spm_naive(esc, el, want);
        int32_t *ids = NULL;
        size_t n = 0;
        CHECKF(lm_tokenizer_encode(tok, text, len, 0, &ids, &n, err) == 0, "%s", err);
        size_t same = 0;
        while (same < n && same < n_want && ids[same] == want[same]) same++;
        CHECKF(n == n_want && same == n, "pass %d: %zu ids (%zu expected), the same up to %zu", pass, n, n_want, same);
        printf("# pass %d: %zu bytes, %zu ids\n", pass, len, n);
        free(ids);
        static const size_t limits[] = {0, 1, 100, 3000, 9000};
        for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
            CHECKF(lm_tokenizer_encode_max(tok, text, len, 1, limits[k], &ids, &n, err) == 0, "%s", err);
            /* with the BOS in front: one id past the limit, or all when they fit */
            size_t expect = limits[k] < n_want ? limits[k] + 1 : n_want + 1;
            CHECKF(n == expect && ids[0] == 1 && (n == 1 || !memcmp(ids + 1, want, sizeof(int32_t) * (n - 1))),
                   "pass %d, limit %zu: %zu ids", pass, limits[k], n);
            free(ids);
        }
        CHECKF(lm_tokenizer_encode_max(tok, text, len, 0, n_want, &ids, &n, err) == 0, "%s", err);
        CHECKF(n == n_want && !memcmp(ids, want, sizeof(int32_t) * n), "limit %zu: %zu ids", n_want, n);
        free(ids);
    }
    free(text);
    free(esc);
    free(want);
    lm_tokenizer_free(tok);
}

/* The special ids llama.cpp gives a SentencePiece vocabulary whose file leaves them out
 * (llama-vocab.cpp: bos 1, eos 2, unknown 0; a key out of range keeps the default), in
 * the model's end-of-generation ids and the tokenizer alike; a byte-level BPE ("gpt2")
 * vocabulary gets none (llama.cpp's 11 is not taken). Where add_bos_token is absent,
 * SentencePiece adds BOS, and byte-level BPE only for the Llama 3 pre-tokenizer. */
static void vocab_special_defaults(void) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/spm_model.gguf", tmp);
    static const struct {
        vocab_opts o;
        int32_t eos, bos; /* -1: none */
        int adds_bos;     /* encoding with special tokens starts with bos */
    } cases[] = {
        {{12, GGUF_TYPE_F32, .model_keys = 1}, 2, 1, 1},
        {{12, GGUF_TYPE_F32, .model_keys = 1, .no_types = 1}, 2, 1, 1}, /* "</s>" not seen as a control token */
        {{12, GGUF_TYPE_F32, .model_keys = 1, .no_types = 1, .eos = 99}, 2, 1, 1},
        {{12, GGUF_TYPE_F32, .model_keys = 1, .no_types = 1, .eos = 7, .bos = 8}, 7, 8, 1},
        {{12, GGUF_TYPE_F32, .model_keys = 1, .no_types = 1, .model = "gpt2"}, -1, -1, 0},
        {{12, GGUF_TYPE_F32, .model_keys = 1, .no_types = 1, .model = "gpt2", .pre = "qwen2", .bos = 1}, -1, 1, 0},
        {{12, GGUF_TYPE_F32, .model_keys = 1, .no_types = 1, .model = "gpt2", .pre = "llama-bpe", .bos = 1}, -1, 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECKF(spm_file(path, &cases[i].o, err) == 0, "%s", err);
        gguf_archive *g = NULL;
        CHECKF(gguf_open(&g, path, err) == 0, "%s", err);
        if (!g) continue;
        lm_config c;
        CHECKF(lm_gguf_config(&c, g, err) == 0, "case %zu: %s", i, err);
        CHECKF(c.n_eos == (cases[i].eos >= 0) && (c.n_eos == 0 || c.eos_ids[0] == cases[i].eos),
               "case %zu: %d eos ids, the first %d", i, c.n_eos, c.n_eos ? c.eos_ids[0] : -1);
        CHECKF(c.bos_id == cases[i].bos, "case %zu: bos %d", i, c.bos_id);
        lm_config_free(&c);
        lm_tokenizer *tok = NULL;
        CHECKF(lm_tokenizer_from_gguf(g, &tok, err) == 0, "case %zu: %s", i, err);
        if (tok) {
            CHECKF(lm_tokenizer_eos_id(tok) == cases[i].eos && lm_tokenizer_bos_id(tok) == cases[i].bos,
                   "case %zu: tokenizer eos %d bos %d", i, lm_tokenizer_eos_id(tok), lm_tokenizer_bos_id(tok));
            int32_t *ids = NULL;
            size_t n = 0;
            CHECKF(lm_tokenizer_encode(tok, "a", 1, 1, &ids, &n, err) == 0, "case %zu: %s", i, err);
            CHECKF(n > 0 && (ids[0] == cases[i].bos) == cases[i].adds_bos, "case %zu: %zu ids, the first %d", i, n,
                   n ? ids[0] : -1);
            free(ids);
            lm_tokenizer_free(tok);
        }
        gguf_close(g);
    }
}

/* A special-token id key (tokenizer.ggml.NAME_token_id) that holds no integer is an
 * error naming the key, the type found, the type expected and the file, in the model's
 * config (bos, eos, eot, eom) and in the tokenizer (bos, eos, unknown, padding), as
 * llama.cpp refuses the file ("key ... has wrong type ... but expected type u32"); it
 * was read as absent. Any integer type gives the id, as u32 does. */
static void vocab_special_id_types(void) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/spm_typed.gguf", tmp);
    static const struct {
        const char *key;
        gguf_type type;
        int in_config, in_tokenizer;
    } bad[] = {
        {"bos", GGUF_TYPE_STRING, 1, 1}, {"eos", GGUF_TYPE_F32, 1, 1},     {"eot", GGUF_TYPE_BOOL, 1, 0},
        {"eom", GGUF_TYPE_ARRAY, 1, 0},  {"unknown", GGUF_TYPE_STRING, 0, 1}, {"padding", GGUF_TYPE_F32, 0, 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKF(spm_file(path, &(vocab_opts){12, GGUF_TYPE_F32, .model_keys = 1, .typed_id = bad[i].key,
                                            .typed_type = bad[i].type},
                        err) == 0,
               "%s", err);
        char want[160];
        snprintf(want, sizeof want, "GGUF key 'tokenizer.ggml.%s_token_id' is a %s, expected a u32 token id",
                 bad[i].key, gguf_type_name(bad[i].type));
        lazymoe_model *m = NULL;
        int rc = lazymoe_model_open(&m, path, NULL, err, sizeof err);
        if (bad[i].in_config)
            CHECKF(rc != 0 && strstr(err, want) && strstr(err, "spm_typed.gguf"), "%s: \"%s\"", bad[i].key, err);
        else /* the model's config has no use for it: it fails later, for want of tensors */
            CHECKF(rc != 0 && !strstr(err, "token_id"), "%s: \"%s\"", bad[i].key, err);
        lazymoe_model_close(m);
        lm_tokenizer *tok = NULL;
        rc = lm_tokenizer_load(path, &tok, err);
        if (bad[i].in_tokenizer)
            CHECKF(rc != 0 && strstr(err, want) && strstr(err, "spm_typed.gguf"), "%s: \"%s\"", bad[i].key, err);
        else
            CHECKF(rc == 0, "%s: %s", bad[i].key, err);
        lm_tokenizer_free(tok);
    }
    /* i32 and u64 ids read as u32 ones */
    static const gguf_type ints[] = {GGUF_TYPE_I32, GGUF_TYPE_U64};
    for (size_t i = 0; i < 2; i++) {
        CHECKF(spm_file(path, &(vocab_opts){12, GGUF_TYPE_F32, .model_keys = 1, .typed_id = "bos", .typed_type = ints[i]},
                        err) == 0,
               "%s", err);
        gguf_archive *g = NULL;
        CHECKF(gguf_open(&g, path, err) == 0, "%s", err);
        if (!g) continue;
        lm_config c;
        CHECKF(lm_gguf_config(&c, g, err) == 0, "%s", err);
        CHECKF(c.bos_id == 8, "%s: bos %d", gguf_type_name(ints[i]), c.bos_id);
        lm_config_free(&c);
        lm_tokenizer *tok = NULL;
        CHECKF(lm_tokenizer_from_gguf(g, &tok, err) == 0, "%s", err);
        CHECK(tok && lm_tokenizer_bos_id(tok) == 8);
        lm_tokenizer_free(tok);
        gguf_close(g);
    }
}

/* A tensor whose shape does not fit the config is named as the GGUF file names it, then
 * as the Hugging Face name it is read as: the file's qwen3_moe_f32 export with
 * output_norm.weight (hidden_size floats) declared half as long. */
static void wrong_shape_named_as_stored(void) {
    char path[512], err[LM_ERR_LEN];
    export_to(GOLDEN "qwen3_moe_f32", "qwen3_moe_shape.gguf", LM_DT_F32, path);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (!f) return;
    static uint8_t head[1 << 20];
    size_t n = fread(head, 1, sizeof head, f);
    static const char name[] = "output_norm.weight";
    size_t k = sizeof name - 1, at = 0;
    for (size_t i = 8; !at && i + 8 + k + 12 <= n; i++) /* u64 length, the name, u32 n_dims = 1 */
        if (head[i] == k && !memcmp(head + i + 1, "\0\0\0\0\0\0\0", 7) && !memcmp(head + i + 8, name, k) &&
            head[i + 8 + k] == 1)
            at = i + 8 + k + 4; /* ne[0], a u64 */
    CHECK(at != 0);
    uint64_t ne0 = 0;
    for (int j = 7; at && j >= 0; j--) ne0 = ne0 << 8 | head[at + (size_t)j];
    char want[256];
    snprintf(want, sizeof want,
             "tensor 'output_norm.weight' (read as 'model.norm.weight') has shape [%llu] but the config implies [%llu]",
             (unsigned long long)ne0 / 2, (unsigned long long)ne0);
    ne0 /= 2;
    for (int j = 0; at && j < 8; j++) head[at + (size_t)j] = (uint8_t)(ne0 >> (8 * j));
    CHECK(fseek(f, 0, SEEK_SET) == 0 && fwrite(head, 1, n, f) == n);
    fclose(f);
    lazymoe_model *m = NULL;
    CHECK(lazymoe_model_open(&m, path, NULL, err, sizeof err) != 0);
    CHECKF(strstr(err, want) && strstr(err, "qwen3_moe_shape.gguf"), "\"%s\" lacks \"%s\"", err, want);
    lazymoe_model_close(m);
}

/* Metadata the reader must refuse, with the reason. */
static void refused(void) {
    char err[LM_ERR_LEN], path[512];
    snprintf(path, sizeof path, "%s/bad.gguf", tmp);
    float emb[8] = {0};
    int64_t ne[2] = {4, 2};
    struct {
        const char *arch;
        int experts;
        const char *tensor, *want;
        const char *extra[8]; /* ARCH-relative u32 keys, "name=value"; "name=[a,b,c,d]": an i32 array */
    } cases[] = {
        {"llama", 0, "token_embd.weight", "dense llama model"},
        {"gpt-neox", 4, "token_embd.weight",
         "architecture 'gpt-neox' is not supported (supported: qwen3moe, llama with experts (Mixtral), olmoe, "
         "qwen3next, gpt-oss, minimax-m2, glm4moe, qwen35moe)"},
        {"qwen3moe", 4, NULL, "lacks a 2-D token_embd.weight"},
        {"qwen3moe", 0, "token_embd.weight", "lacks 'qwen3moe.expert_count'"},
        {"qwen3moe", 4, "blk.0.attn_qkv.weight", "tensor 'blk.0.attn_qkv.weight' is not one lazymoe knows"},
        {"glm4moe", 4, "token_embd.weight", "lacks 'glm4moe.expert_shared_count'"},
        {"glm4moe", 4, "token_embd.weight", "'glm4moe.nextn_predict_layers' is 1 but glm4moe.block_count is 1",
         {"expert_shared_count=1", "nextn_predict_layers=1"}},
        {"glm4moe", 4, "token_embd.weight", "'glm4moe.expert_group_count' without 'glm4moe.expert_group_used_count'",
         {"expert_shared_count=1", "expert_group_count=2"}},
        {"minimax-m2", 4, "token_embd.weight", "'minimax-m2.expert_gating_func' is 1; minimax-m2 routes with a sigmoid",
         {"expert_gating_func=1"}},
        {"qwen3next", 4, "token_embd.weight", "lacks 'qwen3next.ssm.conv_kernel'"},
        {"qwen3next", 4, "token_embd.weight", "'qwen3next.ssm.inner_size' is 6, not a positive multiple of",
         {"ssm.conv_kernel=4", "ssm.state_size=2", "ssm.group_count=1", "ssm.time_step_rank=4", "ssm.inner_size=6"}},
        {"qwen3next", 4, "token_embd.weight", "'qwen3next.attention.recurrent_layers' must hold one bool per block",
         {"ssm.conv_kernel=4", "ssm.state_size=2", "ssm.group_count=1", "ssm.time_step_rank=2", "ssm.inner_size=4",
          "attention.recurrent_layers=[1,0,0,0]"}},
        {"qwen35moe", 4, "token_embd.weight", "lacks 'qwen35moe.rope.dimension_sections'",
         {"ssm.conv_kernel=4", "ssm.state_size=2", "ssm.group_count=1", "ssm.time_step_rank=2", "ssm.inner_size=4"}},
        {"qwen35moe", 4, "token_embd.weight", "leaves rotated pair 0 of 2 to the fourth position stream",
         {"ssm.conv_kernel=4", "ssm.state_size=2", "ssm.group_count=1", "ssm.time_step_rank=2", "ssm.inner_size=4",
          "rope.dimension_count=4", "rope.dimension_sections=[0,1,1,0]"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gguf_writer *w = gguf_w_new();
        char k[128];
        gguf_w_str(w, "general.architecture", cases[i].arch);
#define K(s) (snprintf(k, sizeof k, "%s.%s", cases[i].arch, s), k)
        gguf_w_u32(w, K("block_count"), 1);
        gguf_w_u32(w, K("embedding_length"), 4);
        gguf_w_u32(w, K("attention.head_count"), 1);
        gguf_w_u32(w, K("feed_forward_length"), 4);
        if (cases[i].experts) {
            gguf_w_u32(w, K("expert_count"), (uint32_t)cases[i].experts);
            gguf_w_u32(w, K("expert_used_count"), 1);
        }
        for (int e = 0; e < 8 && cases[i].extra[e]; e++) {
            char name[64];
            const char *eq = strchr(cases[i].extra[e], '=');
            snprintf(name, sizeof name, "%.*s", (int)(eq - cases[i].extra[e]), cases[i].extra[e]);
            if (eq[1] == '[') {
                int32_t v[4];
                int n = sscanf(eq + 1, "[%d,%d,%d,%d]", &v[0], &v[1], &v[2], &v[3]);
                gguf_w_arr(w, K(name), GGUF_TYPE_I32, v, (uint64_t)n);
            } else {
                gguf_w_u32(w, K(name), (uint32_t)atoi(eq + 1));
            }
        }
#undef K
        if (cases[i].tensor) gguf_w_tensor(w, "token_embd.weight", 0, 2, ne, emb, sizeof emb, 0);
        if (cases[i].tensor && strcmp(cases[i].tensor, "token_embd.weight") != 0)
            gguf_w_tensor(w, cases[i].tensor, 0, 2, ne, emb, sizeof emb, 0);
        CHECK(gguf_w_save(w, path, err) == 0);
        gguf_w_free(w);
        lazymoe_model *m = NULL;
        CHECKF(lazymoe_model_open(&m, path, NULL, err, sizeof err) != 0, "case %zu opened", i);
        CHECKF(strstr(err, cases[i].want) != NULL, "case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
        CHECKF(strstr(err, "bad.gguf") != NULL, "case %zu: \"%s\" does not name the file", i, err);
        lazymoe_model_close(m);
    }
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/lazymoe-test-gguf-model-%d", (int)getpid());
    mkdir(tmp, 0755);
    setenv("XDG_CACHE_HOME", tmp, 1);
    TEST_CASE("gguf_qwen3_moe_f32_same_as_safetensors", qwen3_moe_f32);
    TEST_CASE("gguf_qwen3_moe_tied_bf16_same_as_safetensors", qwen3_moe_tied_bf16);
    TEST_CASE("gguf_qwen3_moe_f16_close_to_safetensors", qwen3_moe_f16);
    TEST_CASE("gguf_mixtral_f32_same_as_safetensors", mixtral_f32);
    TEST_CASE("gguf_mixtral_bf16_same_as_safetensors", mixtral_bf16);
    TEST_CASE("gguf_olmoe_f32_same_as_safetensors", olmoe_f32);
    TEST_CASE("gguf_olmoe_clip_bf16_same_as_safetensors", olmoe_clip_bf16);
    TEST_CASE("gguf_demo_f32_same_as_mlx", demo_f32);
    TEST_CASE("gguf_lazy_equals_resident", lazy_equals_resident);
    TEST_CASE("gguf_gpt_oss_mxfp4_same_as_safetensors", gpt_oss_mxfp4);
    TEST_CASE("gguf_gpt_oss_f32_same_as_safetensors", gpt_oss_f32);
    TEST_CASE("gguf_gpt_oss_yarn_f32_same_as_safetensors", gpt_oss_yarn_f32);
    TEST_CASE("gguf_gpt_oss_bf16_same_as_safetensors", gpt_oss_bf16);
    TEST_CASE("gguf_gpt_oss_lazy_equals_resident", gpt_oss_lazy_equals_resident);
    TEST_CASE("gguf_gpt_oss_mxfp4_blocks_match_libggml", gpt_oss_blocks_match_libggml);
    TEST_CASE("gguf_gpt_oss_fused_gate_up_exps", gpt_oss_fused_gate_up);
    TEST_CASE("gguf_fused_gate_up_exps_other_families", fused_gate_up_other_families);
    TEST_CASE("gguf_demo_q8_0", demo_q8_0);
    TEST_CASE("gguf_tokenizer_and_template", tokenizer_and_template);
    TEST_CASE("gguf_config_matches_config_json", config_matches);
    TEST_CASE("gguf_refused_metadata", refused);
    TEST_CASE("gguf_glm4_moe_f32_same_as_safetensors", glm4_moe_f32);
    TEST_CASE("gguf_glm4_moe_qknorm_f32_same_as_safetensors", glm4_moe_qknorm_f32);
    TEST_CASE("gguf_glm4_moe_lazy_equals_resident", glm4_moe_lazy_equals_resident);
    TEST_CASE("gguf_glm4_moe_config_matches_config_json", glm4_moe_config_matches);
    TEST_CASE("gguf_glm4_moe_end_ids_as_generation_config", glm4_moe_end_ids);
    TEST_CASE("gguf_wrong_shape_named_as_stored", wrong_shape_named_as_stored);
    TEST_CASE("gguf_glm4_moe_mtp_layers_skipped", glm4_moe_mtp);
    TEST_CASE("gguf_minimax_m2_f32_same_as_safetensors", minimax_m2_f32);
    TEST_CASE("gguf_minimax_m2_mqa_f32_same_as_safetensors", minimax_m2_mqa_f32);
    TEST_CASE("gguf_minimax_m2_lazy_equals_resident", minimax_m2_lazy_equals_resident);
    TEST_CASE("gguf_qwen3_next_f32_same_as_safetensors", qwen3_next_f32);
    TEST_CASE("gguf_qwen3_5_moe_f32_close_to_safetensors", qwen3_5_moe_f32);
    TEST_CASE("gguf_qwen3_next_qwen3_5_moe_lazy_equals_resident", qwen3_next_lazy_equals_resident);
    TEST_CASE("gguf_qwen3_5_moe_layout_and_config", qwen3_5_moe_layout);
    TEST_CASE("gguf_qwen3_next_qwen3_5_moe_mtp_block_skipped", qwen_linear_mtp);
    TEST_CASE("gguf_spm_tokenizer", spm_tokenizer);
    TEST_CASE("gguf_spm_tokenizer_without_byte_pieces", spm_no_byte_pieces);
    TEST_CASE("gguf_vocab_special_id_defaults", vocab_special_defaults);
    TEST_CASE("gguf_vocab_special_id_of_a_wrong_type", vocab_special_id_types);
    TEST_CASE("gguf_spm_long_text_and_limit", spm_long_text_and_limit);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmp);
    TEST_EXIT();
}

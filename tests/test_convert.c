/* lazymoe convert on the golden fixtures: names, shapes, dtypes, config block, expert
 * values within the quantization bound, routers, sharding, fused (transformers 5)
 * inputs, and errors for bad arguments and broken inputs. */
#include "harness.h"

#include "common/error.h"
#include "convert/convert.h"
#include "formats/mlx_quant.h"
#include "lazymoe.h"
#include "formats/pyjson.h"
#include "formats/safetensors.h"
#include "formats/safetensors_write.h"
#include "platform/fs.h"

#include <jansson.h>
#include <stdint.h>
#include <unistd.h>

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden"

static const char *msg(const char *s) { return s; }

static char tmp_root[256];

static void make_tmp_root(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/lazymoe_test_convert.%ld", (long)getpid());
    lm_remove_tree(tmp_root, NULL);
    lm_mkdir(tmp_root, NULL);
}

static char *path_in_tmp(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", tmp_root, name);
    return b;
}

static float *read_f32(const st_archive *a, const st_tensor *t, uint64_t off, size_t n,
                       char *err) {
    size_t es = lm_dtype_size(t->dtype);
    void *raw = malloc(n * es + 1);
    float *f = malloc(n * sizeof *f + 1);
    if (st_read_range(a, t, off, n * es, raw, err) != 0) {
        free(raw);
        free(f);
        return NULL;
    }
    lm_convert_to_f32(f, raw, t->dtype, n);
    free(raw);
    return f;
}

static int convert_quiet(const char *fixture, const char *out, int bits, int gs, char *err) {
    lm_convert_options o;
    lm_convert_options_init(&o);
    o.bits = bits;
    o.group_size = gs;
    o.quiet = 1;
    char in[512];
    snprintf(in, sizeof in, "%s/%s", GOLDEN, fixture);
    return lm_convert(in, out, &o, err);
}

/* Checks one quantized [rows, cols] matrix against its source values: every element
 * within |scale|/2, or range/(n_bins+1) where the grid is clamped, plus the rounding
 * of scale and bias to their dtype. Returns the number of violations. */
static int check_matrix(const float *src, int64_t rows, int64_t cols, const uint32_t *packed,
                        const void *scales, const void *biases, lm_dtype sdt, int bits, int gs) {
    mlxq_params p = {bits, gs, sdt, MLXQ_KERNEL_GPU};
    float *deq = malloc((size_t)(rows * cols) * sizeof *deq);
    char err[LM_ERR_LEN];
    if (mlxq_dequantize(&p, packed, scales, biases, rows, cols, deq, err) != 0) {
        free(deq);
        return 1;
    }
    const float n_bins = (float)((1 << bits) - 1);
    const float rel = sdt == LM_DT_BF16 ? 1.0f / 256 : sdt == LM_DT_F16 ? 1.0f / 2048 : 1e-6f;
    int bad = 0;
    int64_t gpr = cols / gs;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < gpr; g++) {
            float s = lm_load_float(scales, sdt, (size_t)(r * gpr + g));
            float b = lm_load_float(biases, sdt, (size_t)(r * gpr + g));
            float lo = INFINITY, hi = 0.0f;
            for (int j = 0; j < gs; j++) {
                float v = src[r * cols + g * gs + j];
                lo = fminf(lo, v);
                hi = fmaxf(hi, v);
            }
            float bound = fmaxf(fabsf(s) / 2, (hi - lo) / (n_bins + 1)) * 1.001f +
                          rel * (fabsf(s) * n_bins + fabsf(b)) + 1e-7f;
            for (int j = 0; j < gs; j++) {
                int64_t i = r * cols + g * gs + j;
                if (!(fabsf(deq[i] - src[i]) <= bound)) bad++;
            }
        }
    free(deq);
    return bad;
}

/* Names of the source expert matrix (per-expert layouts) for projection p (0 gate, 1 up, 2 down). */
static void source_expert_name(char *buf, size_t cap, int mixtral, int layer, int e, int p) {
    static const char *hf[3] = {"gate_proj", "up_proj", "down_proj"};
    static const char *mx[3] = {"w1", "w3", "w2"};
    if (mixtral)
        snprintf(buf, cap, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", layer, e, mx[p]);
    else
        snprintf(buf, cap, "model.layers.%d.mlp.experts.%d.%s.weight", layer, e, hf[p]);
}

typedef struct {
    const char *fixture;
    int mixtral;
    int router_8bit; /* qwen3 families */
    int tied;
} fixture_info;

/* Converts a fixture and checks everything observable about the result. */
static void check_fixture(const fixture_info *fi, int bits, int gs) {
    char err[LM_ERR_LEN] = "";
    char name[256], out[512];
    snprintf(name, sizeof name, "%s_%d_%d", fi->fixture, bits, gs);
    snprintf(out, sizeof out, "%s", path_in_tmp(name));
    int rc = convert_quiet(fi->fixture, out, bits, gs, err);
    CHECKF(rc == 0, "%s: %s", fi->fixture, err);
    if (rc != 0) return;
    char in_dir[512];
    snprintf(in_dir, sizeof in_dir, "%s/%s", GOLDEN, fi->fixture);
    st_archive *in = NULL, *o = NULL;
    CHECKF(st_open(&in, in_dir, err) == 0, "%s", err);
    CHECKF(st_open(&o, out, err) == 0, "reopen: %s", err);
    if (!in || !o) {
        st_close(in);
        st_close(o);
        return;
    }
    CHECK(o->files[0].is_mlx);

    /* Config: quantization block, duplicate quantization_config, router overrides. */
    char cpath[600];
    snprintf(cpath, sizeof cpath, "%s/config.json", out);
    json_t *cfg = json_load_file(cpath, 0, NULL);
    CHECK(cfg != NULL);
    json_t *q = json_object_get(cfg, "quantization");
    CHECK(json_integer_value(json_object_get(q, "bits")) == bits);
    CHECK(json_integer_value(json_object_get(q, "group_size")) == gs);
    CHECK(strcmp(json_string_value(json_object_get(q, "mode")) ? json_string_value(json_object_get(q, "mode")) : "", "affine") == 0);
    CHECK(json_equal(q, json_object_get(cfg, "quantization_config")));
    int nlayers = (int)json_integer_value(json_object_get(cfg, "num_hidden_layers"));
    json_t *ne = json_object_get(cfg, "num_experts");
    if (!ne) ne = json_object_get(cfg, "num_local_experts");
    int E = (int)json_integer_value(ne);
    CHECK(E > 0);

    /* No unstacked expert or HF-only names remain. */
    for (int i = 0; i < o->ntensors; i++) {
        CHECKF(!strstr(o->tensors[i].name, ".experts."), "%s left", o->tensors[i].name);
        if (fi->tied) CHECKF(strncmp(o->tensors[i].name, "lm_head", 7) != 0, "tied lm_head kept");
    }
    const char *moe = fi->mixtral ? "block_sparse_moe" : "mlp";
    int moe_layers = 0;
    for (int l = 0; l < nlayers; l++) {
        char tn[256];
        snprintf(tn, sizeof tn, "model.layers.%d.%s.gate.weight", l, moe);
        const st_tensor *router = st_find(o, tn);
        if (!router) continue; /* dense layer */
        moe_layers++;
        /* Router: U32 [E, H * rbits / 32]; 8 bits and a recorded override for qwen3. */
        const st_tensor *src_router = NULL;
        char sn[256];
        snprintf(sn, sizeof sn, "model.layers.%d.%s.gate.weight", l, moe);
        src_router = st_find(in, sn);
        CHECKF(src_router != NULL, "source router %s", sn);
        if (!src_router) break;
        int64_t H = src_router->shape[1];
        int rbits = fi->router_8bit ? 8 : bits;
        int router_quantized = H % gs == 0; /* mlx-lm checks the group size first */
        CHECK_EQ_INT(router->shape[0], E);
        if (router_quantized) {
            CHECK(router->dtype == LM_DT_U32);
            CHECK_EQ_INT(router->shape[1], H * rbits / 32);
        } else {
            CHECK(router->dtype == src_router->dtype);
            CHECK_EQ_INT(router->shape[1], H);
        }
        char path[128];
        snprintf(path, sizeof path, "model.layers.%d.%s.gate", l, moe);
        json_t *ov = json_object_get(q, path);
        if (fi->router_8bit && router_quantized) {
            CHECKF(ov && json_integer_value(json_object_get(ov, "bits")) == 8 &&
                       json_integer_value(json_object_get(ov, "group_size")) == 64 &&
                       json_object_size(ov) == 2,
                   "override for %s", path);
        } else {
            CHECKF(ov == NULL, "unexpected override for %s", path);
        }

        /* Experts: every (projection, expert) slice against its source matrix. */
        static const char *proj[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int p = 0; p < 3; p++) {
            char wn[256], scn[256], bn[256];
            snprintf(wn, sizeof wn, "model.layers.%d.%s.switch_mlp.%s.weight", l, moe, proj[p]);
            snprintf(scn, sizeof scn, "model.layers.%d.%s.switch_mlp.%s.scales", l, moe, proj[p]);
            snprintf(bn, sizeof bn, "model.layers.%d.%s.switch_mlp.%s.biases", l, moe, proj[p]);
            const st_tensor *w = st_find(o, wn), *s = st_find(o, scn), *b = st_find(o, bn);
            CHECKF(w != NULL, "missing %s", wn);
            if (!w) continue;
            char en[256];
            source_expert_name(en, sizeof en, fi->mixtral, l, 0, p);
            const st_tensor *e0 = st_find(in, en);
            CHECKF(e0 != NULL, "source %s", en);
            if (!e0) continue;
            int64_t rows = e0->shape[0], cols = e0->shape[1];
            CHECK_EQ_INT(w->ndim, 3);
            CHECK_EQ_INT(w->shape[0], E);
            CHECK_EQ_INT(w->shape[1], rows);
            if (cols % gs != 0) {
                /* Fallback: stays float, no scales, values equal to the source. */
                CHECKF(s == NULL && b == NULL, "%s should be unquantized", wn);
                CHECK(w->dtype == e0->dtype);
                CHECK_EQ_INT(w->shape[2], cols);
                for (int e = 0; e < E; e++) {
                    source_expert_name(en, sizeof en, fi->mixtral, l, e, p);
                    const st_tensor *se = st_find(in, en);
                    float *a = read_f32(in, se, 0, (size_t)(rows * cols), err);
                    float *c = read_f32(o, w, (uint64_t)e * rows * cols * lm_dtype_size(w->dtype),
                                        (size_t)(rows * cols), err);
                    CHECK(a && c && memcmp(a, c, (size_t)(rows * cols) * sizeof *a) == 0);
                    free(a);
                    free(c);
                }
                continue;
            }
            CHECKF(s && b, "%s: scales/biases missing", wn);
            if (!s || !b) continue;
            CHECK(w->dtype == LM_DT_U32);
            CHECK_EQ_INT(w->shape[2], cols * bits / 32);
            CHECK(s->dtype == e0->dtype && b->dtype == e0->dtype);
            CHECK_EQ_INT(s->shape[2], cols / gs);
            int64_t words = cols * bits / 32, groups = cols / gs;
            size_t ses = lm_dtype_size(s->dtype);
            uint32_t *pk = malloc((size_t)(rows * words) * 4);
            uint8_t *sc = malloc((size_t)(rows * groups) * ses);
            uint8_t *bi = malloc((size_t)(rows * groups) * ses);
            for (int e = 0; e < E; e++) {
                source_expert_name(en, sizeof en, fi->mixtral, l, e, p);
                const st_tensor *se = st_find(in, en);
                CHECKF(se != NULL, "source %s", en);
                if (!se) break;
                float *src = read_f32(in, se, 0, (size_t)(rows * cols), err);
                CHECK(st_read_range(o, w, (uint64_t)e * rows * words * 4, (uint64_t)(rows * words) * 4, pk, err) == 0);
                CHECK(st_read_range(o, s, (uint64_t)e * rows * groups * ses, (uint64_t)(rows * groups) * ses, sc, err) == 0);
                CHECK(st_read_range(o, b, (uint64_t)e * rows * groups * ses, (uint64_t)(rows * groups) * ses, bi, err) == 0);
                int bad = src ? check_matrix(src, rows, cols, pk, sc, bi, s->dtype, bits, gs) : 1;
                CHECKF(bad == 0, "%s layer %d expert %d %s: %d values outside the bound", fi->fixture,
                       l, e, proj[p], bad);
                free(src);
            }
            free(pk);
            free(sc);
            free(bi);
        }
    }
    CHECK(moe_layers > 0);
    json_decref(cfg);
    st_close(in);
    st_close(o);
}

static const fixture_info fixtures[] = {
    {"qwen3_moe_f32", 0, 1, 0},       {"qwen3_moe_sharded_f32", 0, 1, 0},
    {"qwen3_moe_tied_bf16", 0, 1, 1}, {"mixtral_f32", 1, 0, 0},
    {"mixtral_bf16", 1, 0, 0},        {"olmoe_f32", 0, 0, 0},
    {"olmoe_clip_bf16", 0, 0, 0},     {"qwen3_next_f32", 0, 1, 0},
};

static void test_fixtures_4bit(void) {
    for (size_t i = 0; i < sizeof fixtures / sizeof *fixtures; i++) check_fixture(&fixtures[i], 4, 64);
}

static void test_fixture_8bit_gs32(void) {
    check_fixture(&fixtures[0], 8, 32);
    check_fixture(&fixtures[3], 8, 32);
}

/* qwen3_next specifics: shared-expert gate at 8 bits, norms + 1, conv1d axes moved. */
static void test_qwen3_next_specifics(void) {
    char err[LM_ERR_LEN] = "";
    const char *out = path_in_tmp("qwen3_next_f32_4_64"); /* made by test_fixtures_4bit */
    st_archive *o = NULL, *in = NULL;
    CHECKF(st_open(&o, out, err) == 0, "%s", err);
    CHECKF(st_open(&in, GOLDEN "/qwen3_next_f32", err) == 0, "%s", err);
    if (!o || !in) {
        st_close(o);
        st_close(in);
        return;
    }
    const st_tensor *g = st_find(o, "model.layers.0.mlp.shared_expert_gate.weight");
    CHECK(g && g->dtype == LM_DT_U32 && g->shape[1] == 64 * 8 / 32);
    const char *norm = "model.layers.0.input_layernorm.weight";
    float *a = read_f32(in, st_find(in, norm), 0, 64, err);
    float *b = read_f32(o, st_find(o, norm), 0, 64, err);
    CHECK(a && b);
    for (int i = 0; a && b && i < 64; i++) CHECK(b[i] == a[i] + 1.0f);
    free(a);
    free(b);
    const st_tensor *cv = st_find(o, "model.layers.0.linear_attn.conv1d.weight");
    CHECK(cv && cv->ndim == 3 && cv->shape[2] == 1 && cv->shape[1] == 4);
    char cpath[600];
    snprintf(cpath, sizeof cpath, "%s/config.json", out);
    json_t *cfg = json_load_file(cpath, 0, NULL);
    json_t *q = json_object_get(cfg, "quantization");
    CHECK(json_object_get(q, "model.layers.0.mlp.shared_expert_gate") != NULL);
    json_decref(cfg);
    st_close(o);
    st_close(in);
}

/* Byte-compares every tensor of two model directories. */
static int same_tensors(const char *d1, const char *d2, char *err) {
    st_archive *a = NULL, *b = NULL;
    if (st_open(&a, d1, err) != 0) return 0;
    if (st_open(&b, d2, err) != 0) {
        st_close(a);
        return 0;
    }
    int same = a->ntensors == b->ntensors;
    for (int i = 0; same && i < a->ntensors; i++) {
        const st_tensor *x = &a->tensors[i], *y = st_find(b, x->name);
        if (!y || y->dtype != x->dtype || y->nbytes != x->nbytes || y->ndim != x->ndim) {
            snprintf(err, LM_ERR_LEN, "tensor %s differs in header", x->name);
            same = 0;
            break;
        }
        char *p = malloc(x->nbytes + 1), *q = malloc(y->nbytes + 1);
        same = st_read(a, x, p, err) == 0 && st_read(b, y, q, err) == 0 &&
               memcmp(p, q, x->nbytes) == 0;
        if (!same) snprintf(err, LM_ERR_LEN, "tensor %s differs", x->name);
        free(p);
        free(q);
    }
    st_close(a);
    st_close(b);
    return same;
}

static void test_sharding(void) {
    char err[LM_ERR_LEN] = "";
    lm_convert_options o;
    lm_convert_options_init(&o);
    o.quiet = 1;
    o.max_shard_bytes = 60000;
    const char *out = path_in_tmp("sharded");
    CHECKF(lm_convert(GOLDEN "/qwen3_moe_f32", out, &o, err) == 0, "%s", err);
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    CHECK(lm_path_type(p) == LM_PATH_MISSING);
    int n = 0;
    /* Find N from the index and check each shard is named K-of-N. */
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", out);
    json_t *idx = json_load_file(p, 0, NULL);
    CHECK(idx != NULL);
    json_t *map = json_object_get(idx, "weight_map");
    const char *key;
    json_t *v;
    int maxk = 0;
    json_object_foreach(map, key, v) {
        int k = 0, total = 0;
        CHECKF(sscanf(json_string_value(v), "model-%05d-of-%05d.safetensors", &k, &total) == 2,
               "%s", json_string_value(v));
        if (k > maxk) maxk = k;
        n = total;
    }
    CHECK(n > 1 && maxk == n);
    uint64_t total_size = (uint64_t)json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size"));
    st_archive *a = NULL;
    CHECKF(st_open(&a, out, err) == 0, "%s", err);
    uint64_t sum = 0;
    for (int i = 0; a && i < a->ntensors; i++) sum += a->tensors[i].nbytes;
    CHECK(sum == total_size);
    CHECK(a && (size_t)a->ntensors == json_object_size(map));
    st_close(a);
    json_decref(idx);
    /* The same tensors as the single-file conversion. */
    CHECKF(same_tensors(out, path_in_tmp("qwen3_moe_f32_4_64"), err), "%s", err);
    /* Single-file conversions also get an index, like mlx-lm. */
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", path_in_tmp("qwen3_moe_f32_4_64"));
    CHECK(lm_path_type(p) == LM_PATH_FILE);
}

/* Writes a transformers-5 style copy of a per-expert fixture: experts fused into
 * gate_up_proj [E, 2I, H] and down_proj [E, H, I]; `mlp_prefix` renames mixtral's
 * block_sparse_moe.* to mlp.* as transformers 5 does. */
static int make_fused_copy(const char *fixture, const char *dst, int mixtral, char *err) {
    char in_dir[512];
    snprintf(in_dir, sizeof in_dir, "%s/%s", GOLDEN, fixture);
    st_archive *in = NULL;
    if (st_open(&in, in_dir, err) != 0) return -1;
    lm_mkdir(dst, NULL);
    char p[600], q[600];
    snprintf(p, sizeof p, "%s/config.json", in_dir);
    snprintf(q, sizeof q, "%s/config.json", dst);
    lm_copy_file(p, q, err);
    json_t *cfg = json_load_file(p, 0, NULL);
    int L = (int)json_integer_value(json_object_get(cfg, "num_hidden_layers"));
    json_t *ne = json_object_get(cfg, "num_experts");
    if (!ne) ne = json_object_get(cfg, "num_local_experts");
    int E = (int)json_integer_value(ne);
    json_decref(cfg);
    snprintf(q, sizeof q, "%s/model.safetensors", dst);
    stw_file *w = NULL;
    int rc = stw_file_create(&w, q, "pt", err);
    const char *blk = mixtral ? "block_sparse_moe" : "mlp";
    const char *g = mixtral ? "w1" : "gate_proj", *u = mixtral ? "w3" : "up_proj",
               *d = mixtral ? "w2" : "down_proj";
    /* Non-expert tensors (renamed for mixtral). */
    for (int i = 0; rc == 0 && i < in->ntensors; i++) {
        const st_tensor *t = &in->tensors[i];
        if (strstr(t->name, ".experts.")) continue;
        char nm[256];
        const char *bs = strstr(t->name, ".block_sparse_moe.");
        if (bs) snprintf(nm, sizeof nm, "%.*s.mlp.%s", (int)(bs - t->name), t->name, bs + 18);
        else snprintf(nm, sizeof nm, "%s", t->name);
        rc = stw_file_declare(w, nm, t->dtype, t->ndim, t->shape, err);
    }
    for (int l = 0; rc == 0 && l < L; l++) {
        char nm[256];
        snprintf(nm, sizeof nm, "model.layers.%d.%s.experts.0.%s.weight", l, blk, g);
        const st_tensor *t = st_find(in, nm);
        if (!t) continue;
        int64_t I = t->shape[0], H = t->shape[1];
        int64_t gu[3] = {E, 2 * I, H}, dn[3] = {E, H, I};
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.gate_up_proj", l);
        rc = stw_file_declare(w, nm, t->dtype, 3, gu, err);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.down_proj", l);
        if (rc == 0) rc = stw_file_declare(w, nm, t->dtype, 3, dn, err);
    }
    if (rc == 0) rc = stw_file_start(w, err);
    for (int i = 0; rc == 0 && i < in->ntensors; i++) {
        const st_tensor *t = &in->tensors[i];
        char *buf = malloc(t->nbytes + 1);
        rc = st_read(in, t, buf, err);
        int l = 0, e = 0;
        char proj[32] = "";
        char nm[256];
        if (rc == 0 && strstr(t->name, ".experts.") &&
            sscanf(t->name, "model.layers.%d.%*[a-z_].experts.%d.%31[a-z_0-9].weight", &l, &e, proj) == 3) {
            uint64_t slice = t->nbytes;
            if (!strcmp(proj, d)) {
                snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.down_proj", l);
                rc = stw_file_write_at(w, nm, (uint64_t)e * slice, buf, slice, err);
            } else {
                snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.gate_up_proj", l);
                uint64_t off = (uint64_t)e * 2 * slice + (!strcmp(proj, u) ? slice : 0);
                rc = stw_file_write_at(w, nm, off, buf, slice, err);
            }
        } else if (rc == 0) {
            const char *bs = strstr(t->name, ".block_sparse_moe.");
            if (bs) snprintf(nm, sizeof nm, "%.*s.mlp.%s", (int)(bs - t->name), t->name, bs + 18);
            else snprintf(nm, sizeof nm, "%s", t->name);
            rc = stw_file_write_at(w, nm, 0, buf, t->nbytes, err);
        }
        free(buf);
    }
    if (rc == 0) rc = stw_file_commit(w, err);
    stw_file_free(w);
    st_close(in);
    return rc;
}

static void test_fused_inputs(void) {
    char err[LM_ERR_LEN] = "";
    lm_convert_options o;
    lm_convert_options_init(&o);
    o.quiet = 1;
    const char *src = path_in_tmp("fused_qwen3_in"), *out = path_in_tmp("fused_qwen3_out");
    CHECKF(make_fused_copy("qwen3_moe_f32", src, 0, err) == 0, "%s", err);
    CHECKF(lm_convert(src, out, &o, err) == 0, "%s", err);
    CHECKF(same_tensors(out, path_in_tmp("qwen3_moe_f32_4_64"), err), "qwen3 fused: %s", err);
    src = path_in_tmp("fused_mixtral_in");
    out = path_in_tmp("fused_mixtral_out");
    CHECKF(make_fused_copy("mixtral_bf16", src, 1, err) == 0, "%s", err);
    CHECKF(lm_convert(src, out, &o, err) == 0, "%s", err);
    CHECKF(same_tensors(out, path_in_tmp("mixtral_bf16_4_64"), err), "mixtral fused: %s", err);
}

/* Logits of a model directory on fixed ids (NULL on failure, message printed), with
 * an expert cache of `capacity` slots per layer (0: the default plan). */
static float *dir_logits(const char *dir, const int32_t *ids, int n, int capacity, size_t *vocab) {
    lazymoe_model *m;
    lazymoe_session *s = NULL;
    char err[LM_ERR_LEN];
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.expert_capacity = capacity;
    o.no_warm_start = 1;
    if (lazymoe_model_open(&m, dir, &o, err, sizeof err) != 0) {
        printf("# %s\n", err);
        return NULL;
    }
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    *vocab = (size_t)info.vocab_size;
    float *out = malloc(sizeof(float) * (size_t)n * *vocab);
    if (lazymoe_session_create(&s, m, err, sizeof err) != 0 || lazymoe_session_eval(s, ids, n, out, 1, err, sizeof err) != 0) {
        printf("# %s\n", err);
        free(out);
        out = NULL;
    }
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return out;
}

/* The engine reads the transformers-5 fused expert layout (gate_up_proj/down_proj)
 * and computes exactly what it computes on the per-expert files, with every expert
 * resident and through a 2-slot expert cache (where gate and up share one read). */
static void test_engine_reads_fused(void) {
    char err[LM_ERR_LEN] = "", orig[512];
    static const int32_t ids[] = {5, 17, 2, 99, 41, 7};
    const char *names[2] = {"qwen3_moe_f32", "mixtral_bf16"};
    for (int i = 0; i < 2; i++) {
        const char *dst = path_in_tmp(i ? "fused_engine_mixtral" : "fused_engine_qwen3");
        CHECKF(make_fused_copy(names[i], dst, i, err) == 0, "%s", err);
        snprintf(orig, sizeof orig, LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/%s", names[i]);
        size_t v1 = 0, v2 = 0;
        float *a = dir_logits(orig, ids, 6, -1, &v1), *b = dir_logits(dst, ids, 6, -1, &v2);
        float *c = dir_logits(dst, ids, 6, 2, &v2);
        CHECKF(a && b && v1 == v2 && memcmp(a, b, sizeof(float) * 6 * v1) == 0, "%s: fused != per-expert", names[i]);
        CHECKF(a && c && memcmp(a, c, sizeof(float) * 6 * v1) == 0, "%s: fused through the cache != per-expert", names[i]);
        free(a);
        free(b);
        free(c);
    }
}

static void test_errors(void) {
    char err[LM_ERR_LEN] = "";
    lm_convert_options o;
    lm_convert_options_init(&o);
    o.quiet = 1;
    const char *out = path_in_tmp("err_out");
    o.bits = 7;
    CHECK(lm_convert(GOLDEN "/olmoe_f32", out, &o, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "bits 7");
    o.bits = 4;
    o.group_size = 48;
    CHECK(lm_convert(GOLDEN "/olmoe_f32", out, &o, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "group size 48");
    o.group_size = 64;
    CHECK(lm_path_type(out) == LM_PATH_MISSING);

    /* Existing non-empty output: refused, then replaced with force. */
    const char *full = path_in_tmp("olmoe_f32_4_64");
    CHECK(lm_convert(GOLDEN "/olmoe_f32", full, &o, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "--force");
    o.force = 1;
    CHECKF(lm_convert(GOLDEN "/olmoe_f32", full, &o, err) == 0, "%s", err);
    o.force = 0;

    /* Unsupported model type; already-quantized input. */
    const char *d = path_in_tmp("llama_in");
    lm_mkdir(d, NULL);
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *f = fopen(p, "w");
    fputs("{\"model_type\": \"llama\", \"num_hidden_layers\": 1}", f);
    fclose(f);
    CHECK(lm_convert(d, out, &o, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "unsupported model_type \"llama\"");
    CHECK_STR_CONTAINS(msg(err), "qwen3_moe, mixtral, olmoe, qwen3_next");
    CHECK(lm_convert(full, out, &o, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "already quantized");

    /* Truncated weights: an error, and no output directory. */
    d = path_in_tmp("truncated_in");
    lm_mkdir(d, NULL);
    snprintf(p, sizeof p, "%s/config.json", d);
    lm_copy_file(GOLDEN "/olmoe_f32/config.json", p, NULL);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    lm_copy_file(GOLDEN "/olmoe_f32/model.safetensors", p, NULL);
    CHECK(truncate(p, 100000) == 0);
    CHECK(lm_convert(d, out, &o, err) == -1);
    CHECK(strlen(err) > 0);
    CHECK(lm_path_type(out) == LM_PATH_MISSING);

    /* A missing expert (expert 1 of layer 0 dropped from a fused->per-expert mix is hard
     * to build; drop the whole per-expert tensor instead via a rewritten copy). */
    d = path_in_tmp("missing_in");
    lm_mkdir(d, NULL);
    snprintf(p, sizeof p, "%s/config.json", d);
    lm_copy_file(GOLDEN "/olmoe_f32/config.json", p, NULL);
    st_archive *in = NULL;
    CHECK(st_open(&in, GOLDEN "/olmoe_f32", err) == 0);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    stw_file *w = NULL;
    CHECK(stw_file_create(&w, p, "pt", err) == 0);
    const char *drop = "model.layers.1.mlp.experts.3.up_proj.weight";
    for (int i = 0; in && i < in->ntensors; i++)
        if (strcmp(in->tensors[i].name, drop) != 0)
            stw_file_declare(w, in->tensors[i].name, in->tensors[i].dtype, in->tensors[i].ndim,
                             in->tensors[i].shape, err);
    CHECK(stw_file_start(w, err) == 0);
    for (int i = 0; in && i < in->ntensors; i++) {
        const st_tensor *t = &in->tensors[i];
        if (strcmp(t->name, drop) == 0) continue;
        char *buf = malloc(t->nbytes + 1);
        st_read(in, t, buf, err);
        stw_file_write_at(w, t->name, 0, buf, t->nbytes, err);
        free(buf);
    }
    CHECKF(stw_file_commit(w, err) == 0, "%s", err);
    stw_file_free(w);
    st_close(in);
    CHECK(lm_convert(d, out, &o, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "missing tensor for layer 1 expert 3 up_proj");
    CHECK(lm_path_type(out) == LM_PATH_MISSING);
    /* No temporary directories are left behind next to the output. */
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.lazymoe-tmp-%ld", out, (long)getpid());
    CHECK(lm_path_type(tmpname) == LM_PATH_MISSING);
}

/* The config and index are written as Python's json.dump(indent=4) would. */
static void test_config_text(void) {
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", path_in_tmp("qwen3_moe_f32_4_64"));
    FILE *f = fopen(p, "r");
    CHECK(f != NULL);
    if (!f) return;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    CHECK(strncmp(buf, "{\n    \"architectures\": [\n        \"Qwen3MoeForCausalLM\"\n    ],\n", 62) == 0);
    CHECK_STR_CONTAINS(msg(buf), "\"rms_norm_eps\": 1e-06,\n");
    CHECK_STR_CONTAINS(msg(buf), "\"rope_theta\": 10000.0,\n");
    CHECK_STR_CONTAINS(msg(buf), "\"quantization\": {\n        \"group_size\": 64,\n        \"bits\": 4,\n        \"mode\": \"affine\",\n        \"model.layers.0.mlp.gate\": {\n            \"group_size\": 64,\n            \"bits\": 8\n        },");
    CHECK(buf[n - 1] == '}');
}

/* Floats as Python's repr, strings as json.dumps(ensure_ascii=True). Expected values
 * are what CPython 3.11 prints for repr(x) / json.dumps(s). */
static void test_pyjson(void) {
    static const struct { double x; const char *s; } cases[] = {
        {1e-06, "1e-06"}, {10000.0, "10000.0"}, {0.02, "0.02"}, {0.0001, "0.0001"},
        {1e16, "1e+16"}, {1e15, "1000000000000000.0"}, {-2.5, "-2.5"}, {0.1 + 0.2, "0.30000000000000004"},
        {1.5e-10, "1.5e-10"}, {123456.789, "123456.789"}, {5e-324, "5e-324"}, {1e300, "1e+300"},
        {0.0, "0.0"}, {-0.0, "-0.0"}, {3.0, "3.0"}, {1e22, "1e+22"}, {0.00012, "0.00012"},
    };
    char buf[64];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pyjson_format_double(cases[i].x, buf, sizeof buf);
        CHECKF(strcmp(buf, cases[i].s) == 0, "%.17g -> %s, want %s", cases[i].x, buf, cases[i].s);
    }
    char err[LM_ERR_LEN];
    json_t *v = json_pack("{s:s, s:[], s:{}, s:[i, b, n]}", "k\u00e9", "a\"\n\u00e9\U0001F600\x7f", "e", "o",
                          "l", 1, 1);
    char *t = pyjson_dumps(v, 4, err);
    CHECK(t != NULL);
    if (t)
        CHECKF(strcmp(t, "{\n    \"k\\u00e9\": \"a\\\"\\n\\u00e9\\ud83d\\ude00\\u007f\",\n    \"e\": [],\n"
                         "    \"o\": {},\n    \"l\": [\n        1,\n        true,\n        null\n    ]\n}") == 0,
               "%s", t);
    free(t);
    json_decref(v);
}

int main(void) {
    make_tmp_root();
    TEST_CASE("convert_fixtures_4bit_gs64", test_fixtures_4bit);
    TEST_CASE("convert_8bit_gs32", test_fixture_8bit_gs32);
    TEST_CASE("convert_qwen3_next_specifics", test_qwen3_next_specifics);
    TEST_CASE("convert_sharding", test_sharding);
    TEST_CASE("convert_fused_transformers5_inputs", test_fused_inputs);
    TEST_CASE("convert_config_text", test_config_text);
    TEST_CASE("pyjson_matches_python", test_pyjson);
    TEST_CASE("convert_errors", test_errors);
    TEST_CASE("engine_reads_fused_expert_layout", test_engine_reads_fused);
    lm_remove_tree(tmp_root, NULL);
    TEST_EXIT();
}

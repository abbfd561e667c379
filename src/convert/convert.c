/* HF -> MLX converter. The rules it follows, and where mlx-lm states them, are in
 * convert.h. Structure:
 *   plan:    read config + safetensors headers, turn input tensors into output items
 *            (plain tensors and stacked expert tensors), decide dtype and quantization
 *            of each, declare every output tensor to the sharded writer;
 *   produce: item by item (layer by layer), read source rows in chunks, transform,
 *            round to the model dtype, quantize or cast, write at final offsets;
 *   finish:  config.json, copied side files, atomic rename of the temp directory.
 */
#include "convert/convert.h"

#include "common/buf.h"
#include "common/dir_replace.h"
#include "common/error.h"
#include "common/log.h"
#include "common/str.h"
#include "formats/pyjson.h"
#include "formats/safetensors.h"
#include "formats/safetensors_write.h"
#include "models/family.h"
#include "platform/fs.h"
#include "platform/platform.h"

#include <dirent.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK_FLOATS ((size_t)4 << 20) /* 16 MiB of float32 per processing chunk */
#define ROUTER_BITS 8
#define ROUTER_GROUP_SIZE 64

const char *lm_convert_supported_types(void) { return lm_family_names(); }

void lm_convert_options_init(lm_convert_options *o) {
    memset(o, 0, sizeof *o);
    o->bits = 4;
    o->group_size = 64;
    o->dtype = LM_DT_INVALID;
    o->kernel = MLXQ_KERNEL_GPU;
}

typedef enum { XF_NONE, XF_ADD_ONE } value_transform;

/* One matrix of source rows: `rows` x `cols` elements starting `offset` bytes into
 * tensor `t`. A plain tensor is one matrix; a stacked expert tensor is E of them. */
typedef struct {
    const st_tensor *t;
    uint64_t offset;
} src_matrix;

/* One output tensor (or, when quantized, the weight/scales/biases triple). */
typedef struct {
    char *name;      /* output name; for quantized items "<path>.weight" */
    int layer;       /* -1 outside model.layers.N */
    int order_group; /* 0 embeddings, 1 layers, 2 the rest: mlx-lm's module order */
    int nmat;        /* matrices stacked along a leading axis (E for experts, else 1) */
    src_matrix *mats;
    int64_t rows, cols; /* per matrix; plain tensors: rows = numel / last dim */
    int ndim;
    int64_t shape[ST_MAX_DIMS]; /* output shape of the float tensor */
    lm_dtype src_dtype, out_dtype;
    int quantize, bits, group_size;
    int record_override; /* write {"group_size", "bits"} for this path in the config */
    value_transform xf;
} out_item;

typedef struct {
    const lm_convert_options *opt;
    const lm_family *fam; /* its mlx_* fields are the per-family rules */
    json_t *config;
    st_archive *src;
    out_item *items;
    int nitems;
    size_t cap;
    int num_layers;
    int num_nextn_layers; /* MTP layers after the last (num_nextn_predict_layers): dropped */
    int64_t num_experts;
    lm_dtype cast_dtype; /* LM_DT_INVALID: keep stored dtypes */
    stw_model *writer;
    uint64_t total_parameters;
    float *fbuf;     /* CHUNK_FLOATS floats */
    uint8_t *rawbuf; /* CHUNK_FLOATS * 8 bytes: raw source, then output bytes */
    uint32_t *qbuf;  /* packed words of one chunk */
    uint8_t *sbuf, *bbuf;
} converter;

/* ---- small helpers ---------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Parses "model.layers.N.rest": returns N and sets *rest, or -1. */
static int parse_layer(const char *name, const char **rest) {
    const char *p = "model.layers.";
    size_t n = strlen(p);
    if (strncmp(name, p, n) != 0) return -1;
    const char *q = name + n;
    if (*q < '0' || *q > '9') return -1;
    long v = 0;
    while (*q >= '0' && *q <= '9') {
        v = v * 10 + (*q - '0');
        if (v > 1000000) return -1;
        q++;
    }
    if (*q != '.') return -1;
    *rest = q + 1;
    return (int)v;
}

static lm_dtype dtype_from_config_name(const char *s) {
    if (!s) return LM_DT_INVALID;
    if (strcmp(s, "float16") == 0) return LM_DT_F16;
    if (strcmp(s, "bfloat16") == 0) return LM_DT_BF16;
    if (strcmp(s, "float32") == 0) return LM_DT_F32;
    return LM_DT_INVALID;
}

static int64_t config_int(json_t *cfg, const char *key, int64_t dflt) {
    json_t *v = json_object_get(cfg, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static out_item *new_item(converter *c, char *err) {
    if (LM_GROW(c->items, c->cap, (size_t)c->nitems + 1) != 0) {
        lm_errf(err, "out of memory");
        return NULL;
    }
    out_item *it = &c->items[c->nitems++];
    memset(it, 0, sizeof *it);
    return it;
}

static void free_items(converter *c) {
    for (int i = 0; i < c->nitems; i++) {
        free(c->items[i].name);
        free(c->items[i].mats);
    }
    free(c->items);
    c->items = NULL;
    c->nitems = 0;
    c->cap = 0;
}

/* ---- plan: input tensors -> output items ------------------------------------------ */

/* Per-layer expert tensors as found in the input, before stacking. */
typedef struct {
    const st_tensor **per_expert[3]; /* [proj][e]: gate, up, down */
    const st_tensor *fused_gate_up, *fused_down;
    char prefix[64]; /* "mlp" or "block_sparse_moe" (output side) */
    int seen;
} layer_experts;

static const char *proj_names[3] = {"gate_proj", "up_proj", "down_proj"};

/* Which projection (0 gate, 1 up, 2 down) the per-expert name s[0..n) is, by the
 * family's names; -1 if none. */
static int proj_index(const lm_family *f, const char *s, size_t n) {
    const char *const *names[3] = {f->names->expert_gate, f->names->expert_up, f->names->expert_down};
    for (int p = 0; p < 3; p++)
        for (int a = 0; a < 3 && names[p][a]; a++)
            if (strlen(names[p][a]) == n && strncmp(s, names[p][a], n) == 0) return p;
    return -1;
}

static int set_common(out_item *it, const st_tensor *t, char *err) {
    it->src_dtype = t->dtype;
    it->ndim = t->ndim;
    memcpy(it->shape, t->shape, sizeof it->shape);
    it->cols = t->ndim ? t->shape[t->ndim - 1] : 1;
    it->rows = it->cols ? (int64_t)(st_numel(t) / (uint64_t)it->cols) : 0;
    it->nmat = 1;
    it->mats = calloc(1, sizeof *it->mats);
    if (!it->mats) return lm_errf(err, "out of memory");
    it->mats[0].t = t;
    return 0;
}

/* Builds the stacked items of one layer's experts. */
static int plan_layer_experts(converter *c, int layer, layer_experts *le, char *err) {
    int64_t E = c->num_experts;
    int have_per = le->per_expert[0] || le->per_expert[1] || le->per_expert[2];
    int have_fused = le->fused_gate_up || le->fused_down;
    if (have_per && have_fused)
        return lm_errf(err, "layer %d has both per-expert and fused expert tensors", layer);
    if (E <= 0)
        return lm_errf(err, "layer %d has expert tensors but config.json has no num_experts "
                            "(or num_local_experts)", layer);
    for (int p = 0; p < 3; p++) {
        out_item *it = new_item(c, err);
        if (!it) return -1;
        it->name = lm_strdup_printf("model.layers.%d.%s.switch_mlp.%s.weight", layer, le->prefix,
                              proj_names[p]);
        it->layer = layer;
        it->order_group = 1;
        it->nmat = (int)E;
        it->mats = calloc((size_t)E, sizeof *it->mats);
        if (!it->name || !it->mats) return lm_errf(err, "out of memory");
        if (have_per) {
            for (int64_t e = 0; e < E; e++) {
                const st_tensor *t = le->per_expert[p] ? le->per_expert[p][e] : NULL;
                if (!t)
                    return lm_errf(err, "missing tensor for layer %d expert %lld %s", layer,
                                   (long long)e, proj_names[p]);
                if (t->ndim != 2)
                    return lm_errf(err, "%s: expected a 2-D expert matrix", t->name);
                if (e == 0) {
                    it->rows = t->shape[0];
                    it->cols = t->shape[1];
                    it->src_dtype = t->dtype;
                } else if (t->shape[0] != it->rows || t->shape[1] != it->cols ||
                           t->dtype != it->src_dtype) {
                    return lm_errf(err, "%s: shape or dtype differs from expert 0", t->name);
                }
                it->mats[e].t = t;
                it->mats[e].offset = 0;
            }
        } else {
            const st_tensor *t = p == 2 ? le->fused_down : le->fused_gate_up;
            if (!t)
                return lm_errf(err, "layer %d: missing fused expert tensor experts.%s", layer,
                               p == 2 ? "down_proj" : "gate_up_proj");
            if (t->ndim != 3 || t->shape[0] != E)
                return lm_errf(err, "%s: expected shape [%lld, out, in]", t->name, (long long)E);
            int64_t slice_rows = t->shape[1];
            int64_t row0 = 0;
            it->rows = slice_rows;
            if (p != 2) {
                if (slice_rows % 2)
                    return lm_errf(err, "%s: gate_up rows (%lld) are not even", t->name,
                                   (long long)slice_rows);
                it->rows = slice_rows / 2;
                row0 = p == 0 ? 0 : it->rows; /* gate rows first, then up */
            }
            it->cols = t->shape[2];
            it->src_dtype = t->dtype;
            uint64_t es = lm_dtype_size(t->dtype);
            for (int64_t e = 0; e < E; e++) {
                it->mats[e].t = t;
                it->mats[e].offset =
                    ((uint64_t)e * (uint64_t)slice_rows + (uint64_t)row0) * (uint64_t)it->cols * es;
            }
        }
        it->ndim = 3;
        it->shape[0] = E;
        it->shape[1] = it->rows;
        it->shape[2] = it->cols;
    }
    return 0;
}

/* Decides output dtype, quantization and router overrides of one item. */
static int decide_item(converter *c, out_item *it, char *err) {
    it->out_dtype = it->src_dtype;
    if (lm_dtype_is_float(it->src_dtype) && c->cast_dtype != LM_DT_INVALID)
        it->out_dtype = c->cast_dtype;
    int is_experts = strstr(it->name, ".switch_mlp.") != NULL;
    int linear_like = ends_with(it->name, ".weight") && lm_dtype_is_float(it->src_dtype) &&
                      (it->ndim == 2 || is_experts) && !strstr(it->name, "conv1d");
    if (!linear_like) return 0;
    if (it->cols % c->opt->group_size != 0) return 0; /* stays float, as in mlx-lm */
    if (it->out_dtype != LM_DT_F16 && it->out_dtype != LM_DT_BF16 && it->out_dtype != LM_DT_F32)
        return lm_errf(err, "%s: cannot quantize a %s tensor", it->name,
                       lm_dtype_name(it->out_dtype));
    it->quantize = 1;
    it->bits = c->opt->bits;
    it->group_size = c->opt->group_size;
    /* linear_like: the name ends with ".weight"; the rule names module paths. */
    char *module = strndup(it->name, strlen(it->name) - strlen(".weight"));
    if (!module) return lm_errf(err, "out of memory");
    int router = lm_family_router_8bit(c->fam, module);
    free(module);
    if (router) {
        if (it->cols % ROUTER_GROUP_SIZE != 0)
            return lm_errf(err,
                           "%s: the router is quantized at group size %d (as mlx-lm does) but "
                           "its input dimension %lld is not divisible by it",
                           it->name, ROUTER_GROUP_SIZE, (long long)it->cols);
        it->bits = ROUTER_BITS;
        it->group_size = ROUTER_GROUP_SIZE;
        it->record_override = 1;
    }
    return 0;
}

/* The RMSNorm weights (zero-centred in families that say so). */
static int is_rms_norm(const char *name) {
    static const char *keys[] = {".input_layernorm.weight", ".post_attention_layernorm.weight",
                                 "model.norm.weight", ".q_norm.weight", ".k_norm.weight"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (ends_with(name, keys[i])) return 1;
    return 0;
}

static int cmp_items(const void *pa, const void *pb) {
    const out_item *a = pa, *b = pb;
    if (a->order_group != b->order_group) return a->order_group - b->order_group;
    if (a->layer != b->layer) return a->layer - b->layer;
    return strcmp(a->name, b->name);
}

static int plan(converter *c, char *err) {
    const st_archive *a = c->src;
    layer_experts *les = calloc((size_t)c->num_layers, sizeof *les);
    if (!les) return lm_errf(err, "out of memory");
    int rc = 0;
    const lm_family *f = c->fam;
    int tie = f->mlx_tie_default;
    json_t *tv = json_object_get(c->config, "tie_word_embeddings");
    if (json_is_boolean(tv)) tie = json_is_true(tv);
    const char *moe_prefix = f->names->moe_blocks[0]; /* mlx-lm's name of the MoE block */

    for (int i = 0; i < a->ntensors && rc == 0; i++) {
        const st_tensor *t = &a->tensors[i];
        if (tie && strcmp(t->name, "lm_head.weight") == 0) continue;
        if (f->mlx_drop && strstr(t->name, f->mlx_drop)) continue;
        /* A vision-language wrapper converts to its text model: model.language_model.X
         * becomes model.X, and the vision tower is not converted. */
        if (!strncmp(t->name, "model.visual.", 13)) continue;
        char unwrapped[1024];
        const char *tname = t->name;
        if (!strncmp(t->name, "model.language_model.", 21)) {
            if ((size_t)snprintf(unwrapped, sizeof unwrapped, "model.%s", t->name + 21) >= sizeof unwrapped) {
                rc = lm_errf(err, "%s: name too long", t->name);
                break;
            }
            tname = unwrapped;
        }
        const char *rest = NULL;
        int layer = parse_layer(tname, &rest);
        char *name = NULL;
        if (layer >= c->num_layers && layer < c->num_layers + c->num_nextn_layers)
            continue; /* multi-token-prediction layers (glm4_moe): not converted, as mlx-lm */
        if (layer >= 0) {
            if (layer >= c->num_layers) {
                rc = lm_errf(err, "%s: layer %d but num_hidden_layers is %d", t->name, layer,
                             c->num_layers);
                break;
            }
            /* Other names of the MoE block become mlx-lm's (transformers 5 names mixtral's
             * block_sparse_moe "mlp"). */
            const char *alias_rest = NULL;
            const char *const *blocks = f->names->moe_blocks;
            for (int b = 1; b < 3 && blocks[b] && !alias_rest; b++) {
                size_t bl = strlen(blocks[b]);
                if (strncmp(rest, blocks[b], bl) == 0 && rest[bl] == '.') alias_rest = rest + bl + 1;
            }
            if (alias_rest)
                name = lm_strdup_printf("model.layers.%d.%s.%s", layer, moe_prefix, alias_rest);
            else
                name = strdup(tname);
            if (!name) {
                rc = lm_errf(err, "out of memory");
                break;
            }
            const char *r2 = name;
            parse_layer(name, &r2);
            size_t pl = strlen(moe_prefix);
            if (strncmp(r2, moe_prefix, pl) == 0 && strncmp(r2 + pl, ".experts.", 9) == 0) {
                const char *ex = r2 + pl + 9;
                layer_experts *le = &les[layer];
                snprintf(le->prefix, sizeof le->prefix, "%s", moe_prefix);
                le->seen = 1;
                if (strcmp(ex, "gate_up_proj") == 0) {
                    le->fused_gate_up = t;
                } else if (strcmp(ex, "down_proj") == 0) {
                    le->fused_down = t;
                } else {
                    char *end = NULL;
                    long e = strtol(ex, &end, 10);
                    int p = -1;
                    if (end != ex && *end == '.' && ends_with(end, ".weight"))
                        p = proj_index(f, end + 1, strlen(end + 1) - strlen(".weight"));
                    if (p < 0 || e < 0) {
                        rc = lm_errf(err, "%s: unsupported expert tensor", t->name);
                    } else if (c->num_experts <= 0 || e >= c->num_experts) {
                        rc = lm_errf(err, "%s: expert index %ld but the config has %lld experts",
                                     t->name, e, (long long)c->num_experts);
                    } else {
                        if (!le->per_expert[p])
                            le->per_expert[p] = calloc((size_t)c->num_experts, sizeof(st_tensor *));
                        if (!le->per_expert[p]) rc = lm_errf(err, "out of memory");
                        else le->per_expert[p][e] = t;
                    }
                }
                free(name);
                continue;
            }
        } else {
            name = strdup(tname);
            if (!name) {
                rc = lm_errf(err, "out of memory");
                break;
            }
        }
        out_item *it = new_item(c, err);
        if (!it) {
            free(name);
            rc = -1;
            break;
        }
        it->name = name;
        it->layer = layer;
        it->order_group = layer >= 0 ? 1 : strncmp(name, "model.embed_tokens", 18) == 0 ? 0 : 2;
        if (set_common(it, t, err) != 0) {
            rc = -1;
            break;
        }
        if (f->zero_centred_norms && t->ndim == 1 && is_rms_norm(name)) it->xf = XF_ADD_ONE;
        if (f->mlx_conv1d_moveaxis) {
            if (strstr(name, "conv1d.weight") && t->ndim == 3 && t->shape[2] != 1) {
                /* mlx moveaxis(2, 1): [C, 1, K] -> [C, K, 1] keeps the data order. */
                if (t->shape[1] != 1) {
                    rc = lm_errf(err, "%s: conv1d weight of shape [%lld, %lld, %lld] is not "
                                      "supported (expected [C, 1, K])",
                                 name, (long long)t->shape[0], (long long)t->shape[1],
                                 (long long)t->shape[2]);
                    break;
                }
                it->shape[1] = t->shape[2];
                it->shape[2] = 1;
                it->cols = 1;
                it->rows = (int64_t)st_numel(t);
            }
        }
    }
    for (int l = 0; l < c->num_layers && rc == 0; l++)
        if (les[l].seen) rc = plan_layer_experts(c, l, &les[l], err);
    for (int l = 0; l < c->num_layers; l++)
        for (int p = 0; p < 3; p++) free(les[l].per_expert[p]);
    free(les);
    if (rc != 0) return -1;
    for (int i = 0; i < c->nitems; i++)
        if (decide_item(c, &c->items[i], err) != 0) return -1;
    qsort(c->items, (size_t)c->nitems, sizeof *c->items, cmp_items);
    return 0;
}

/* ---- declare and produce ------------------------------------------------------------ */

/* "<path>.weight" -> "<path>.<suffix>" */
static char *sibling_name(const char *weight_name, const char *suffix) {
    size_t n = strlen(weight_name) - strlen("weight");
    size_t total = n + strlen(suffix) + 1;
    char *s = malloc(total);
    if (!s) return NULL;
    snprintf(s, total, "%.*s%s", (int)n, weight_name, suffix);
    return s;
}

static int declare_items(converter *c, char *err) {
    for (int i = 0; i < c->nitems; i++) {
        out_item *it = &c->items[i];
        if (!it->quantize) {
            if (stw_model_declare(c->writer, it->name, it->out_dtype, it->ndim, it->shape, err) != 0)
                return -1;
            /* mlx-lm's get_total_parameters counts leaf modules only: e.g. qwen3_next's
             * A_log and dt_bias belong to the (non-leaf) GatedDeltaNet module. */
            int nonleaf = 0;
            for (int k = 0; k < 3 && c->fam->mlx_nonleaf_params[k]; k++)
                nonleaf |= ends_with(it->name, c->fam->mlx_nonleaf_params[k]);
            if (nonleaf) continue;
            c->total_parameters += (uint64_t)it->nmat * (uint64_t)it->rows * (uint64_t)it->cols;
            continue;
        }
        /* weight [.., out, in*bits/32] U32; scales/biases [.., out, in/group_size] */
        int64_t wshape[ST_MAX_DIMS], sshape[ST_MAX_DIMS];
        memcpy(wshape, it->shape, sizeof wshape);
        memcpy(sshape, it->shape, sizeof sshape);
        wshape[it->ndim - 1] = mlxq_words_per_row(it->cols, it->bits);
        sshape[it->ndim - 1] = mlxq_groups_per_row(it->cols, it->group_size);
        char *sn = sibling_name(it->name, "scales"), *bn = sibling_name(it->name, "biases");
        int rc = (sn && bn) ? 0 : lm_errf(err, "out of memory");
        if (rc == 0) rc = stw_model_declare(c->writer, it->name, LM_DT_U32, it->ndim, wshape, err);
        if (rc == 0) rc = stw_model_declare(c->writer, sn, it->out_dtype, it->ndim, sshape, err);
        if (rc == 0) rc = stw_model_declare(c->writer, bn, it->out_dtype, it->ndim, sshape, err);
        free(sn);
        free(bn);
        if (rc != 0) return -1;
        c->total_parameters += (uint64_t)it->nmat * (uint64_t)it->rows * (uint64_t)it->cols;
    }
    return 0;
}

static void store_values(const float *src, void *dst, lm_dtype t, size_t n) {
    for (size_t i = 0; i < n; i++) {
        switch (t) {
        case LM_DT_F32: ((float *)dst)[i] = src[i]; break;
        case LM_DT_BF16: ((uint16_t *)dst)[i] = lm_f32_to_bf16(src[i]); break;
        case LM_DT_F16: ((uint16_t *)dst)[i] = lm_f32_to_f16(src[i]); break;
        case LM_DT_F64: ((double *)dst)[i] = (double)src[i]; break;
        default: break;
        }
    }
}

/* Produces one item: every matrix, in chunks of whole rows. */
static int produce_item(converter *c, const out_item *it, char *err) {
    const uint64_t src_es = lm_dtype_size(it->src_dtype);
    const uint64_t out_es = lm_dtype_size(it->out_dtype);
    const int raw_copy = !it->quantize && it->src_dtype == it->out_dtype && it->xf == XF_NONE;
    int64_t cols = it->cols;
    int64_t chunk_rows = (int64_t)(CHUNK_FLOATS / (size_t)(cols ? cols : 1));
    if (chunk_rows < 1) chunk_rows = 1;
    if ((uint64_t)cols > CHUNK_FLOATS)
        return lm_errf(err, "%s: rows of %lld elements are too long", it->name, (long long)cols);
    char *sn = NULL, *bn = NULL;
    if (it->quantize) {
        sn = sibling_name(it->name, "scales");
        bn = sibling_name(it->name, "biases");
        if (!sn || !bn) {
            free(sn);
            free(bn);
            return lm_errf(err, "out of memory");
        }
    }
    mlxq_params qp = {it->bits, it->group_size, it->out_dtype, c->opt->kernel};
    int64_t words = it->quantize ? mlxq_words_per_row(cols, it->bits) : 0;
    int64_t groups = it->quantize ? mlxq_groups_per_row(cols, it->group_size) : 0;
    int rc = 0;
    for (int m = 0; m < it->nmat && rc == 0; m++) {
        const src_matrix *sm = &it->mats[m];
        for (int64_t r0 = 0; r0 < it->rows && rc == 0; r0 += chunk_rows) {
            int64_t nr = it->rows - r0 < chunk_rows ? it->rows - r0 : chunk_rows;
            size_t n = (size_t)(nr * cols);
            uint64_t src_off = sm->offset + (uint64_t)r0 * (uint64_t)cols * src_es;
            rc = st_read_range(c->src, sm->t, src_off, n * src_es, c->rawbuf, err);
            if (rc != 0) {
                lm_err_prefix(err, "%s", sm->t->name);
                break;
            }
            uint64_t row_index = (uint64_t)m * (uint64_t)it->rows + (uint64_t)r0;
            if (raw_copy) {
                rc = stw_model_write_at(c->writer, it->name, row_index * (uint64_t)cols * out_es,
                                        c->rawbuf, n * out_es, err);
                continue;
            }
            lm_convert_to_f32(c->fbuf, c->rawbuf, it->src_dtype, n);
            for (size_t i = 0; i < n; i++) {
                float v = c->fbuf[i];
                /* qwen3_next norms: v + 1.0 in the stored dtype (mlx-lm's sanitize runs
                 * before the cast to the model dtype). */
                if (it->xf == XF_ADD_ONE) v = mlxq_round_to_dtype(v + 1.0f, it->src_dtype);
                c->fbuf[i] = mlxq_round_to_dtype(v, it->out_dtype);
            }
            if (!it->quantize) {
                store_values(c->fbuf, c->rawbuf, it->out_dtype, n);
                rc = stw_model_write_at(c->writer, it->name, row_index * (uint64_t)cols * out_es,
                                        c->rawbuf, n * out_es, err);
                continue;
            }
            rc = mlxq_quantize(&qp, c->fbuf, nr, cols, c->qbuf, c->sbuf, c->bbuf, err);
            if (rc != 0) {
                lm_err_prefix(err, "%s (matrix %d, rows from %lld)", it->name, m, (long long)r0);
                break;
            }
            rc = stw_model_write_at(c->writer, it->name, row_index * (uint64_t)words * 4, c->qbuf,
                                    (size_t)(nr * words) * 4, err);
            if (rc == 0)
                rc = stw_model_write_at(c->writer, sn, row_index * (uint64_t)groups * out_es,
                                        c->sbuf, (size_t)(nr * groups) * out_es, err);
            if (rc == 0)
                rc = stw_model_write_at(c->writer, bn, row_index * (uint64_t)groups * out_es,
                                        c->bbuf, (size_t)(nr * groups) * out_es, err);
        }
    }
    free(sn);
    free(bn);
    return rc;
}

static uint64_t item_bytes(const converter *c, const out_item *it) {
    if (!it->quantize) return stw_model_tensor_bytes(c->writer, it->name);
    uint64_t rows = (uint64_t)it->nmat * (uint64_t)it->rows;
    return rows * ((uint64_t)mlxq_words_per_row(it->cols, it->bits) * 4 +
                   2 * (uint64_t)mlxq_groups_per_row(it->cols, it->group_size) *
                       lm_dtype_size(it->out_dtype));
}

static int produce_all(converter *c, char *err) {
    uint64_t total = 0;
    double t0 = lm_now();
    for (int i = 0; i < c->nitems;) {
        /* One progress line per layer (and per group of non-layer tensors). */
        int j = i;
        uint64_t bytes = 0;
        while (j < c->nitems && c->items[j].layer == c->items[i].layer &&
               c->items[j].order_group == c->items[i].order_group) {
            if (produce_item(c, &c->items[j], err) != 0) return -1;
            bytes += item_bytes(c, &c->items[j]);
            j++;
        }
        total += bytes;
        if (!c->opt->quiet) {
            if (c->items[i].layer >= 0)
                lm_log(LAZYMOE_LOG_INFO, "convert: layer %d/%d: %d tensors, %.1f MB (total %.1f MB, %.1fs)",
                       c->items[i].layer + 1, c->num_layers, j - i, (double)bytes / 1e6,
                       (double)total / 1e6, lm_now() - t0);
            else
                lm_log(LAZYMOE_LOG_INFO, "convert: %s%s: %.1f MB (total %.1f MB)", c->items[i].name,
                       j - i > 1 ? " and others" : "", (double)bytes / 1e6, (double)total / 1e6);
        }
        i = j;
    }
    return 0;
}

/* ---- config.json -------------------------------------------------------------------- */

static int sorted_key_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int write_config(converter *c, const char *hf_dir, const char *tmp_dir, char *err) {
    json_t *cfg = json_deep_copy(c->config);
    if (!cfg) return lm_errf(err, "out of memory");
    /* mlx-lm load_config: eos_token_id from generation_config.json when truthy. */
    char *gpath = lm_strdup_printf("%s/generation_config.json", hf_dir);
    if (gpath && lm_path_type(gpath) == LM_PATH_FILE) {
        json_t *gen = json_load_file(gpath, 0, NULL);
        json_t *eos = gen ? json_object_get(gen, "eos_token_id") : NULL;
        int truthy = eos && !json_is_null(eos) && !json_is_false(eos) &&
                     !(json_is_integer(eos) && json_integer_value(eos) == 0) &&
                     !(json_is_array(eos) && json_array_size(eos) == 0);
        if (truthy) json_object_set(cfg, "eos_token_id", eos);
        json_decref(gen);
    }
    free(gpath);
    json_t *q = json_object();
    json_object_set_new(q, "group_size", json_integer(c->opt->group_size));
    json_object_set_new(q, "bits", json_integer(c->opt->bits));
    json_object_set_new(q, "mode", json_string("affine"));
    for (int i = 0; i < c->nitems; i++) {
        const out_item *it = &c->items[i];
        if (!it->record_override) continue;
        char *path = strdup(it->name);
        if (!path) continue;
        path[strlen(path) - strlen(".weight")] = '\0';
        json_t *o = json_object();
        json_object_set_new(o, "group_size", json_integer(it->group_size));
        json_object_set_new(o, "bits", json_integer(it->bits));
        json_object_set_new(q, path, o);
        free(path);
    }
    json_object_set(cfg, "quantization", q);
    json_object_set_new(cfg, "quantization_config", json_deep_copy(q));
    json_decref(q);
    json_object_del(cfg, "_name_or_path");
    json_object_del(cfg, "vision_config");
    /* Sort the top-level keys (save_config: dict(sorted(config.items()))). */
    size_t n = json_object_size(cfg);
    const char **keys = calloc(n ? n : 1, sizeof *keys);
    json_t *sorted = json_object();
    int rc = (keys && sorted) ? 0 : lm_errf(err, "out of memory");
    if (rc == 0) {
        size_t k = 0;
        const char *key;
        json_t *v;
        json_object_foreach(cfg, key, v) keys[k++] = key;
        qsort(keys, n, sizeof *keys, sorted_key_cmp);
        for (size_t i = 0; i < n; i++) json_object_set(sorted, keys[i], json_object_get(cfg, keys[i]));
    }
    char *text = rc == 0 ? pyjson_dumps(sorted, 4, err) : NULL;
    if (rc == 0 && !text) rc = -1;
    char *path = lm_strdup_printf("%s/config.json", tmp_dir);
    if (rc == 0 && !path) rc = lm_errf(err, "out of memory");
    if (rc == 0) rc = lm_write_file_atomic(path, text, strlen(text), err);
    free(path);
    free(text);
    free(keys);
    json_decref(sorted);
    json_decref(cfg);
    return rc;
}

/* Tokenizer and side files that mlx-lm's save() writes or copies. */
static int copy_side_files(const char *hf_dir, const char *tmp_dir, char *err) {
    static const char *fixed[] = {
        "tokenizer.json",      "tokenizer_config.json", "special_tokens_map.json",
        "tokenizer.model",     "vocab.json",            "merges.txt",
        "added_tokens.json",   "chat_template.jinja",   "chat_template.json",
        "generation_config.json"};
    DIR *d = opendir(hf_dir);
    if (!d) return lm_errf(err, "cannot list %s", hf_dir);
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        int want = ends_with(n, ".py") || ends_with(n, ".tiktoken") || ends_with(n, ".jinja");
        for (size_t i = 0; i < sizeof fixed / sizeof *fixed && !want; i++)
            want = strcmp(n, fixed[i]) == 0;
        if (!want) continue;
        char *src = lm_strdup_printf("%s/%s", hf_dir, n), *dst = lm_strdup_printf("%s/%s", tmp_dir, n);
        if (!src || !dst) rc = lm_errf(err, "out of memory");
        else if (lm_path_type(src) == LM_PATH_FILE) rc = lm_copy_file(src, dst, err);
        free(src);
        free(dst);
    }
    closedir(d);
    return rc;
}

/* ---- top level ------------------------------------------------------------------------ */

static int load_config(converter *c, const char *hf_dir, char *err) {
    char *path = lm_strdup_printf("%s/config.json", hf_dir);
    if (!path) return lm_errf(err, "out of memory");
    json_error_t je;
    c->config = json_load_file(path, 0, &je);
    if (!c->config) {
        lm_errf(err, "%s: %s (line %d)", path, je.text, je.line);
        free(path);
        return -1;
    }
    free(path);
    if (!json_is_object(c->config)) return lm_errf(err, "config.json is not a JSON object");
    const char *mt = json_string_value(json_object_get(c->config, "model_type"));
    if (!mt) return lm_errf(err, "config.json has no model_type");
    c->fam = lm_family_find(mt);
    if (!c->fam)
        return lm_errf(err, "unsupported model_type \"%s\" (supported: %s)", mt,
                       lm_convert_supported_types());
    if (json_object_get(c->config, "quantization") ||
        json_object_get(c->config, "quantization_config"))
        return lm_errf(err, "the input model is already quantized (config.json has a "
                            "quantization block); convert needs a float checkpoint");
    /* Multimodal wrappers (qwen3_5_moe) nest the text model's keys under text_config. */
    json_t *tc = json_object_get(c->config, "text_config");
    if (!json_is_object(tc) || json_object_get(c->config, "hidden_size")) tc = c->config;
    c->num_layers = (int)config_int(tc, "num_hidden_layers", -1);
    if (c->num_layers <= 0 || c->num_layers > 100000)
        return lm_errf(err, "config.json: missing or bad num_hidden_layers");
    c->num_nextn_layers = (int)config_int(tc, "num_nextn_predict_layers", 0);
    if (c->num_nextn_layers < 0 || c->num_nextn_layers > 64)
        return lm_errf(err, "config.json: bad num_nextn_predict_layers");
    /* transformers 5 writes num_local_experts where older qwen3_moe files have num_experts;
     * glm4_moe says n_routed_experts */
    c->num_experts = config_int(tc, "num_experts", -1);
    if (c->num_experts <= 0) c->num_experts = config_int(tc, "num_local_experts", -1);
    if (c->num_experts <= 0) c->num_experts = config_int(tc, "n_routed_experts", -1);
    if (c->num_experts > 1000000) return lm_errf(err, "config.json: bad expert count");
    /* dtype: --dtype, else torch_dtype, else text_config.dtype (mlx_lm/convert.py). */
    c->cast_dtype = c->opt->dtype;
    if (c->cast_dtype == LM_DT_INVALID) {
        json_t *td = json_object_get(c->config, "torch_dtype");
        if (!td) td = json_object_get(json_object_get(c->config, "text_config"), "dtype");
        c->cast_dtype = dtype_from_config_name(json_string_value(td));
    }
    return 0;
}

static int validate_options(const lm_convert_options *o, char *err) {
    mlxq_params p = {o->bits, o->group_size, LM_DT_F32, o->kernel};
    if (mlxq_check(&p, 1, 128, err) != 0) return -1; /* bits and group size */
    if (o->dtype != LM_DT_INVALID && o->dtype != LM_DT_F16 && o->dtype != LM_DT_BF16 &&
        o->dtype != LM_DT_F32)
        return lm_errf(err, "--dtype must be bf16, f16 or f32");
    return 0;
}

/* Strips trailing slashes into a fresh string. */
static char *clean_path(const char *p) {
    char *s = strdup(p);
    if (!s) return NULL;
    size_t n = strlen(s);
    while (n > 1 && s[n - 1] == '/') s[--n] = '\0';
    return s;
}

int lm_convert(const char *hf_dir, const char *out_dir_arg, const lm_convert_options *opt,
               char *err) {
    lm_convert_options defaults;
    if (!opt) {
        lm_convert_options_init(&defaults);
        opt = &defaults;
    }
    if (validate_options(opt, err) != 0) return -1;
    if (lm_path_type(hf_dir) != LM_PATH_DIR)
        return lm_errf(err, "%s is not a directory", hf_dir);
    converter c;
    memset(&c, 0, sizeof c);
    c.opt = opt;
    char *out_dir = clean_path(out_dir_arg);
    char *tmp_dir = NULL;
    int tmp_made = 0, rc = -1;
    if (!out_dir) {
        lm_errf(err, "out of memory");
        goto done;
    }
    if (lm_out_dir_check(out_dir, opt->force, err) != 0) goto done;
    if (load_config(&c, hf_dir, err) != 0) {
        lm_err_prefix(err, "%s", hf_dir);
        goto done;
    }
    if (st_open(&c.src, hf_dir, err) != 0) goto done;
    if (plan(&c, err) != 0) goto done;

    /* Work in a sibling directory, renamed over OUT_DIR at the very end. */
    if (!(tmp_dir = lm_dir_temp_create(out_dir, err))) goto done;
    tmp_made = 1;
    c.fbuf = malloc(CHUNK_FLOATS * sizeof(float));
    c.rawbuf = malloc(CHUNK_FLOATS * 8);
    c.qbuf = malloc(CHUNK_FLOATS); /* at most 8 bits per value */
    c.sbuf = malloc(CHUNK_FLOATS / 32 * 4 + 64);
    c.bbuf = malloc(CHUNK_FLOATS / 32 * 4 + 64);
    if (!c.fbuf || !c.rawbuf || !c.qbuf || !c.sbuf || !c.bbuf) {
        lm_errf(err, "out of memory allocating conversion buffers");
        goto done;
    }
    if (stw_model_create(&c.writer, tmp_dir, opt->max_shard_bytes, err) != 0) goto done;
    if (declare_items(&c, err) != 0) goto done;
    if (stw_model_start(c.writer, err) != 0) goto done;
    if (!opt->quiet)
        lm_log(LAZYMOE_LOG_INFO, "convert: %s -> %s: %d output weights, %d bits, group size %d, %d shard(s)",
               hf_dir, out_dir, c.nitems, opt->bits, opt->group_size, stw_model_shard_count(c.writer));
    if (produce_all(&c, err) != 0) goto done;
    if (stw_model_commit(c.writer, c.total_parameters, err) != 0) goto done;
    if (write_config(&c, hf_dir, tmp_dir, err) != 0) goto done;
    if (copy_side_files(hf_dir, tmp_dir, err) != 0) goto done;
    /* Swap into place; an existing OUT_DIR (empty, or with --force) is replaced. */
    if (lm_dir_replace(tmp_dir, out_dir, err) != 0) goto done;
    tmp_made = 0;
    if (!opt->quiet)
        lm_log(LAZYMOE_LOG_INFO, "convert: done: %s (%llu parameters)", out_dir,
               (unsigned long long)c.total_parameters);
    rc = 0;
done:
    stw_model_free(c.writer); /* removes uncommitted shard files */
    if (tmp_made) lm_remove_tree(tmp_dir, NULL);
    free_items(&c);
    if (c.src) st_close(c.src);
    json_decref(c.config);
    free(c.fbuf);
    free(c.rawbuf);
    free(c.qbuf);
    free(c.sbuf);
    free(c.bbuf);
    free(out_dir);
    free(tmp_dir);
    return rc;
}

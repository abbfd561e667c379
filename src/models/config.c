#include "models/config.h"

#include "common/buf.h"
#include "common/error.h"
#include "common/log.h"
#include "models/family.h"
#include "platform/platform.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUIRED LM_CFG_REQUIRED

/* Reads an integer field; `def` when absent or null (REQUIRED: absence is an
 * error). Errors on a wrong type or a value (given or default) out of range. */
int lm_cfg_int(json_t *o, const char *key, long long def, long long lo, long long hi,
                   long long *out, char *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (def == REQUIRED) {
            lm_errf(err, "config.json is missing '%s'", key);
            return -1; /* explicit: the analyzer cannot see lm_errf returns -1 */
        }
        *out = def;
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e18)
        *out = (long long)json_real_value(v);
    else if (json_is_integer(v))
        *out = json_integer_value(v);
    else
        {
            lm_errf(err, "config.json: '%s' must be an integer", key);
            return -1; /* explicit: the analyzer cannot see lm_errf returns -1 */
        }
    if (*out < lo || *out > hi)
        {
            lm_errf(err, "config.json: '%s' = %lld is out of range [%lld, %lld]", key, *out, lo, hi);
            return -1; /* explicit: the analyzer cannot see lm_errf returns -1 */
        }
    return 0;
}

static int get_num(json_t *o, const char *key, double def, double *out, char *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) {
            lm_errf(err, "config.json: '%s' must be a number", key);
            return -1; /* explicit: the analyzer cannot see lm_errf returns -1 */
        }
    *out = json_number_value(v);
    if (!isfinite(*out)) {
            lm_errf(err, "config.json: '%s' is not finite", key);
            return -1; /* explicit: the analyzer cannot see lm_errf returns -1 */
        }
    return 0;
}

static int get_bool(json_t *o, const char *key, int def, int *out, char *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) {
            lm_errf(err, "config.json: '%s' must be true or false", key);
            return -1; /* explicit: the analyzer cannot see lm_errf returns -1 */
        }
    *out = json_is_true(v);
    return 0;
}

/* First present key among aliases (e.g. num_experts / num_local_experts). */
static const char *first_key(json_t *o, const char *const *keys) {
    for (int i = 0; keys[i]; i++) {
        json_t *v = json_object_get(o, keys[i]);
        if (v && !json_is_null(v)) return keys[i];
    }
    return keys[0];
}

/* One eos/bos id. An id past the vocabulary of this checkpoint is dropped with a warning
 * (transformers loads such configs: tiny test models keep the real model's special ids);
 * one that is negative or does not fit 32 bits is an error. Returns 1 if kept. */
static int check_special_id(const lm_config *c, const char *key, json_int_t id, char *err) {
    if (id < 0 || id > INT32_MAX) {
        lm_errf(err, "%s %lld is outside the vocabulary (%d)", key, (long long)id, c->vocab_size);
        return -1;
    }
    if (id >= c->vocab_size) {
        lm_log(LAZYMOE_LOG_WARN, "config: %s %lld is outside the vocabulary (%d); ignored", key, (long long)id,
               c->vocab_size);
        return 0;
    }
    return 1;
}

/* o's value of key, else the wrapper's (multimodal configs keep some keys at the top). */
static json_t *key_of(json_t *o, json_t *root, const char *key) {
    json_t *v = json_object_get(o, key);
    return v && !json_is_null(v) ? v : json_object_get(root, key);
}

static int parse_eos(lm_config *c, json_t *v, char *err) {
    if (!v || json_is_null(v)) return 0;
    c->n_eos = 0;
    /* ids are checked as 64-bit values: 2^40 must not wrap to token 0 */
    if (json_is_integer(v)) {
        int k = check_special_id(c, "eos_token_id", json_integer_value(v), err);
        if (k < 0) return -1;
        if (k) c->eos_ids[c->n_eos++] = (int32_t)json_integer_value(v);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e)) return lm_errf(err, "eos_token_id entries must be integers");
            int k = check_special_id(c, "eos_token_id", json_integer_value(e), err);
            if (k < 0) return -1;
            if (k && c->n_eos < LM_MAX_EOS) c->eos_ids[c->n_eos++] = (int32_t)json_integer_value(e);
        }
    } else {
        return lm_errf(err, "eos_token_id must be an integer or a list");
    }
    return 0;
}

/* An MLX quantization mode: 0 affine (also when absent: `fallback`), 1 mxfp4, -1 (with
 * the reason) any other. */
static int quant_mode(json_t *q, int fallback, char *err) {
    json_t *mode = json_object_get(q, "mode");
    if (!mode) return fallback;
    const char *m = json_is_string(mode) ? json_string_value(mode) : "";
    if (!strcmp(m, "affine")) return 0;
    if (!strcmp(m, "mxfp4")) return 1;
    return lm_errf(err, "quantization mode '%.32s' is not supported (MLX 'affine' or 'mxfp4')", m);
}

/* mxfp4 is 4-bit codes in groups of 32; mlx accepts nothing else for it. */
static int check_mxfp4_params(json_t *q, char *err) {
    json_t *b = json_object_get(q, "bits"), *g = json_object_get(q, "group_size");
    if ((b && !json_is_null(b) && json_integer_value(b) != 4) || (g && !json_is_null(g) && json_integer_value(g) != 32))
        return lm_errf(err, "quantization mode 'mxfp4' needs bits 4 and group_size 32");
    return 0;
}

static int parse_quant(lm_config *c, json_t *q, char *err) {
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q)) return lm_errf(err, "config.json: 'quantization' must be an object");
    /* Hugging Face's MXFP4 (gpt-oss): the tensors say which are quantized (NAME_blocks,
     * NAME_scales); nothing here changes how the others are read. */
    json_t *qm = json_object_get(q, "quant_method");
    if (json_is_string(qm) && !strcmp(json_string_value(qm), "mxfp4")) return 0;
    long long bits = 0, gs = 0;
    if (lm_cfg_int(q, "bits", 4, 1, 8, &bits, err) || lm_cfg_int(q, "group_size", 64, 1, 1 << 20, &gs, err))
        return -1;
    int mx = quant_mode(q, 0, err);
    if (mx < 0) return -1;
    if (mx && check_mxfp4_params(q, err)) return -1;
    if (mx) bits = 4, gs = 32;
    c->quant_bits = (int)bits;
    c->quant_group_size = (int)gs;
    c->quant_mxfp4 = mx;
    size_t n = json_object_size(q);
    c->quant_overrides = calloc(n + 1, sizeof(lm_quant_override));
    if (!c->quant_overrides) return lm_errf(err, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach(q, key, v) {
        if (!strcmp(key, "bits") || !strcmp(key, "group_size") || !strcmp(key, "mode")) continue;
        lm_quant_override *o = &c->quant_overrides[c->n_quant_overrides];
        if (json_is_false(v)) {
            o->bits = 0;
            o->group_size = 0;
        } else if (json_is_object(v)) {
            long long b = 0, g = 0;
            int omx = quant_mode(v, 0, err); /* mlx: an override dict without "mode" is affine */
            if (omx < 0 || (omx && check_mxfp4_params(v, err)) ||
                lm_cfg_int(v, "bits", omx ? 4 : bits, 1, 8, &b, err) ||
                lm_cfg_int(v, "group_size", omx ? 32 : gs, 1, 1 << 20, &g, err))
                return lm_err_prefix(err, "quantization override '%s'", key);
            o->bits = (int)b;
            o->group_size = (int)g;
            o->mxfp4 = omx;
        } else {
            continue; /* other metadata keys */
        }
        o->path = strdup(key);
        if (!o->path) return lm_errf(err, "out of memory");
        c->n_quant_overrides++;
    }
    return 0;
}

void lm_config_module_quant(const lm_config *c, const char *path, int *bits, int *group_size, int *mxfp4) {
    *bits = c->quant_bits;
    *group_size = c->quant_group_size;
    int mx = c->quant_mxfp4;
    for (int i = 0; i < c->n_quant_overrides; i++)
        if (strcmp(c->quant_overrides[i].path, path) == 0) {
            *bits = c->quant_overrides[i].bits;
            *group_size = c->quant_overrides[i].group_size;
            mx = c->quant_overrides[i].mxfp4;
        }
    if (mxfp4) *mxfp4 = mx;
}

/* YaRN's keys, read as transformers' _compute_yarn_parameters reads them: a missing
 * factor is max_position_embeddings / original_max_position_embeddings, beta_fast and
 * beta_slow default to 32 and 1 (as do zeros), truncate to true, and the attention
 * factor, unless given, is 0.1 ln(factor) + 1 (or the ratio of the mscale and
 * mscale_all_dim versions of it when both are set; 1 when factor <= 1). */
static double yarn_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0; }

static int parse_yarn(lm_config *c, json_t *typed, char *err) {
    long long orig = 0;
    if (lm_cfg_int(typed, "original_max_position_embeddings", c->max_position_embeddings, 1, 1 << 30, &orig, err))
        return -1;
    c->rope_orig_max_pos = (int)orig;
    c->rope_type = LM_ROPE_YARN;
    double factor, af, ms, msa, bf, bs;
    if (get_num(typed, "factor", (double)c->max_position_embeddings / (double)orig, &factor, err) ||
        get_num(typed, "attention_factor", 0.0, &af, err) || get_num(typed, "mscale", 0.0, &ms, err) ||
        get_num(typed, "mscale_all_dim", 0.0, &msa, err) || get_num(typed, "beta_fast", 0.0, &bf, err) ||
        get_num(typed, "beta_slow", 0.0, &bs, err) || get_bool(typed, "truncate", 1, &c->rope_truncate, err))
        return -1;
    if (!(factor > 0)) return lm_errf(err, "config.json: yarn factor must be positive");
    c->rope_factor = factor;
    c->rope_beta_fast = bf != 0 ? bf : 32.0;
    c->rope_beta_slow = bs != 0 ? bs : 1.0;
    if (!(c->rope_beta_fast > 0) || !(c->rope_beta_slow > 0))
        return lm_errf(err, "config.json: yarn beta_fast and beta_slow must be positive");
    json_t *afv = json_object_get(typed, "attention_factor");
    if (afv && !json_is_null(afv)) c->rope_attn_factor = af;
    else if (ms != 0 && msa != 0) c->rope_attn_factor = yarn_mscale(factor, ms) / yarn_mscale(factor, msa);
    else c->rope_attn_factor = yarn_mscale(factor, 1.0);
    if (!(c->rope_attn_factor > 0)) return lm_errf(err, "config.json: yarn attention_factor must be positive");
    return 0;
}

/* layer_types of a family whose window applies per layer: "sliding_attention" layers
 * use sliding_window, "full_attention" layers see everything. */
static int parse_layer_windows(lm_config *c, json_t *o, char *err) {
    json_t *types = json_object_get(o, "layer_types");
    if (!types || json_is_null(types)) return 0;
    if (!json_is_array(types) || json_array_size(types) != (size_t)c->n_layers)
        return lm_errf(err, "config.json: layer_types must list %d layer types", c->n_layers);
    c->layer_sliding = calloc((size_t)c->n_layers, 1);
    if (!c->layer_sliding) return lm_errf(err, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        const char *t = json_string_value(json_array_get(types, (size_t)l));
        if (t && !strcmp(t, "sliding_attention")) c->layer_sliding[l] = 1;
        else if (!t || strcmp(t, "full_attention") != 0)
            return lm_errf(err, "config.json: layer_types[%d] must be \"sliding_attention\" or \"full_attention\"", l);
    }
    return 0;
}

static int parse_rope(lm_config *c, json_t *root, char *err) {
    /* Newer transformers: rope_parameters {rope_theta, rope_type, factor, ...};
     * older: top-level rope_theta plus optional rope_scaling {type|rope_type, factor}. */
    json_t *params = json_object_get(root, "rope_parameters");
    json_t *scaling = json_object_get(root, "rope_scaling");
    double theta;
    if (get_num(root, "rope_theta", 10000.0, &theta, err)) return -1;
    json_t *typed = NULL;
    if (params && json_is_object(params)) {
        if (get_num(params, "rope_theta", theta, &theta, err)) return -1;
        typed = params;
    } else if (params && !json_is_null(params)) {
        return lm_errf(err, "config.json: 'rope_parameters' must be an object");
    }
    if (scaling && json_is_object(scaling)) typed = scaling;
    else if (scaling && !json_is_null(scaling))
        return lm_errf(err, "config.json: 'rope_scaling' must be an object");
    c->rope_theta = theta;
    c->rope_type = LM_ROPE_DEFAULT;
    c->rope_factor = 1.0;
    c->rope_attn_factor = 1.0;
    if (typed) {
        json_t *t = json_object_get(typed, "rope_type");
        if (!t || !json_is_string(t)) t = json_object_get(typed, "type");
        const char *type = (t && json_is_string(t)) ? json_string_value(t) : "default";
        if (!strcmp(type, "default")) {
            c->rope_type = LM_ROPE_DEFAULT;
        } else if (!strcmp(type, "linear")) {
            c->rope_type = LM_ROPE_LINEAR;
            if (get_num(typed, "factor", 1.0, &c->rope_factor, err)) return -1;
            if (c->rope_factor <= 0) return lm_errf(err, "rope factor must be positive");
        } else if (!strcmp(type, "yarn")) {
            if (parse_yarn(c, typed, err)) return -1;
        } else {
            return lm_errf(err, "RoPE type '%s' is not supported yet (supported: default, linear, yarn)", type);
        }
    }
    if (!(c->rope_theta > 0)) return lm_errf(err, "rope_theta must be positive");
    /* Partial RoPE: rotate only the first int(head_dim * factor) dims of each head
     * (transformers and mlx-lm truncate the same way). The factor sits at the top level
     * or inside rope_parameters / rope_scaling. */
    double prf;
    if (get_num(root, "partial_rotary_factor", 1.0, &prf, err)) return -1;
    if (typed && get_num(typed, "partial_rotary_factor", prf, &prf, err)) return -1;
    if (prf != 1.0 && !c->family->partial_rope)
        return lm_errf(err, "partial_rotary_factor %g is not supported for %s", prf, c->model_type);
    if (!(prf > 0 && prf <= 1.0)) return lm_errf(err, "partial_rotary_factor %g must be in (0, 1]", prf);
    c->rope_dim = (int)((double)c->head_dim * prf);
    if (c->rope_dim < 2 || c->rope_dim % 2)
        return lm_errf(err, "partial_rotary_factor %g gives %d rotated dims of head_dim %d; need an even number >= 2",
                       prf, c->rope_dim, c->head_dim);
    return 0;
}

int lm_config_parse(lm_config *c, const char *config_json, const char *generation_json, char *err) {
    memset(c, 0, sizeof *c);
    c->bos_id = -1;
    json_error_t je;
    json_t *root = json_loads(config_json, JSON_REJECT_DUPLICATES, &je);
    if (!root) return lm_errf(err, "config.json is not valid JSON: %s (line %d)", je.text, je.line);
    json_t *gen = NULL;
    int rc = -1;
    long long v = 0;
    if (!json_is_object(root)) {
        lm_errf(err, "config.json is not a JSON object");
        goto done;
    }
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) {
        lm_errf(err, "config.json has no model_type (supported: %s)", lm_family_names());
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", json_string_value(mt));
    const lm_family *fam = c->family = lm_family_find(json_string_value(mt));
    if (!fam) {
        lm_errf(err, "model_type '%.64s' is not supported (supported: %s)", json_string_value(mt),
                lm_family_names());
        goto done;
    }
    /* Some checkpoints nest the text model's config (multimodal wrappers). */
    json_t *tc = json_object_get(root, "text_config");
    json_t *o = (tc && json_is_object(tc) && !json_object_get(root, "hidden_size")) ? tc : root;

#define INT_FIELD(dst, key, def, lo, hi)                                                  \
    do {                                                                                  \
        if (lm_cfg_int(o, key, def, lo, hi, &v, err)) goto done;                             \
        (dst) = (int)v;                                                                   \
    } while (0)
    const int BIG = 1 << 24;
    INT_FIELD(c->vocab_size, "vocab_size", REQUIRED, 1, BIG);
    INT_FIELD(c->hidden_size, "hidden_size", REQUIRED, 1, 1 << 18);
    INT_FIELD(c->n_layers, "num_hidden_layers", REQUIRED, 1, 4096);
    INT_FIELD(c->n_heads, "num_attention_heads", REQUIRED, 1, 4096);
    INT_FIELD(c->n_kv_heads, "num_key_value_heads", c->n_heads, 1, 4096);
    INT_FIELD(c->head_dim, "head_dim", c->hidden_size / c->n_heads, 1, 1 << 14);
    INT_FIELD(c->intermediate_size, "intermediate_size", 0, 0, 1 << 20);
    INT_FIELD(c->moe_intermediate_size, "moe_intermediate_size", c->intermediate_size, 1, 1 << 20);
    static const char *const expert_keys[] = {"num_experts", "num_local_experts", "n_routed_experts", NULL};
    INT_FIELD(c->n_experts, first_key(o, expert_keys), REQUIRED, 1, 1 << 16);
    INT_FIELD(c->top_k, "num_experts_per_tok", REQUIRED, 1, 1 << 16);
    INT_FIELD(c->decoder_sparse_step, "decoder_sparse_step", 1, 1, 4096);
    INT_FIELD(c->max_position_embeddings, "max_position_embeddings", 4096, 1, 1 << 30);
#undef INT_FIELD
    if (c->hidden_size % c->n_heads && !json_object_get(o, "head_dim")) {
        lm_errf(err, "config.json: hidden_size %d is not divisible by num_attention_heads %d",
                c->hidden_size, c->n_heads);
        goto done;
    }
    if (c->n_heads % c->n_kv_heads) {
        lm_errf(err, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                c->n_heads, c->n_kv_heads);
        goto done;
    }
    if (c->head_dim % 2) {
        lm_errf(err, "config.json: head_dim %d must be even for RoPE", c->head_dim);
        goto done;
    }
    if (c->top_k > c->n_experts) {
        lm_errf(err, "config.json: num_experts_per_tok %d exceeds the number of experts %d", c->top_k,
                c->n_experts);
        goto done;
    }
    if (fam->experts_use_intermediate_size) c->moe_intermediate_size = c->intermediate_size;
    if (c->moe_intermediate_size <= 0) {
        lm_errf(err, "config.json: intermediate size of the experts is missing");
        goto done;
    }
    double eps;
    if (get_num(o, "rms_norm_eps", 1e-6, &eps, err)) goto done;
    if (!(eps > 0) || !isfinite((float)eps)) {  /* eps <= 0 turns a zero row into NaN logits */
        lm_errf(err, "config.json: rms_norm_eps must be a positive finite number, not %g", eps);
        goto done;
    }
    c->rms_norm_eps = (float)eps;
    double clip;
    if (get_num(o, "clip_qkv", 0.0, &clip, err)) goto done;
    if (clip < 0) {
        lm_errf(err, "config.json: clip_qkv must be positive");
        goto done;
    }
    c->clip_qkv = (float)clip;
    if (get_bool(json_object_get(o, "tie_word_embeddings") ? o : root, "tie_word_embeddings", 0,
                 &c->tie_word_embeddings, err))
        goto done;
    if (get_bool(o, "attention_bias", 0, &c->attention_bias, err)) goto done;
    int renorm_always = fam->router_renorm == LM_RENORM_ALWAYS;
    if (get_bool(o, "norm_topk_prob", renorm_always, &c->norm_topk_prob, err)) goto done;
    if (renorm_always) c->norm_topk_prob = 1; /* softmax over the top-k logits */
    c->qk_norm = fam->qk_norm;
    c->routed_scaling_factor = 1.0f;
    c->router_sigmoid = fam->sigmoid_router;
    c->n_group = c->topk_group = 1;
    c->lin_separate_proj = fam->linear_separate_proj;
    c->attn_output_gate = fam->attn_output_gate;
    c->zero_centred_norms = fam->zero_centred_norms;
    json_t *act = json_object_get(o, "hidden_act");
    if (act && json_is_string(act) && strcmp(json_string_value(act), "silu") != 0) {
        lm_errf(err, "hidden_act '%s' is not supported (only silu)", json_string_value(act));
        goto done;
    }
    /* Sliding window: see lm_window_rule. */
    long long sw = 0;
    json_t *swv = json_object_get(o, "sliding_window");
    if (swv && json_is_integer(swv)) sw = json_integer_value(swv);
    int use_sw = fam->window == LM_WINDOW_WHEN_SET || fam->window == LM_WINDOW_PER_LAYER;
    if (fam->window == LM_WINDOW_OPT_IN && get_bool(o, "use_sliding_window", 0, &use_sw, err)) goto done;
    if (use_sw && sw > 0) {
        if (fam->window == LM_WINDOW_OPT_IN) {
            lm_errf(err, "%s with use_sliding_window is not supported yet", fam->model_type);
            goto done;
        }
        c->sliding_window = (int)(sw > (1 << 30) ? (1 << 30) : sw);
    }
    if (fam->window == LM_WINDOW_PER_LAYER && parse_layer_windows(c, o, err)) goto done;
    if (parse_rope(c, o, err)) goto done;
    if (fam->parse_config && fam->parse_config(c, o, err)) goto done;

    c->mlp_only = calloc((size_t)c->n_layers, 1);
    if (!c->mlp_only) {
        lm_errf(err, "out of memory");
        goto done;
    }
    for (int l = 0; l < c->n_layers; l++)
        c->mlp_only[l] = (l + 1) % c->decoder_sparse_step != 0 || l < c->first_k_dense;
    json_t *mol = json_object_get(o, "mlp_only_layers");
    if (mol && json_is_array(mol)) {
        size_t i;
        json_t *e;
        json_array_foreach(mol, i, e) {
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= c->n_layers) {
                lm_errf(err, "config.json: mlp_only_layers[%zu] is not a layer index", i);
                goto done;
            }
            c->mlp_only[json_integer_value(e)] = 1;
        }
    }
    for (int l = 0; l < c->n_layers; l++)
        if (c->mlp_only[l] && c->intermediate_size <= 0) {
            lm_errf(err, "config.json: layer %d is dense but intermediate_size is missing", l);
            goto done;
        }

    if (parse_eos(c, key_of(o, root, "eos_token_id"), err)) goto done;
    json_t *bos = key_of(o, root, "bos_token_id");
    if (bos && json_is_integer(bos)) {
        int k = check_special_id(c, "bos_token_id", json_integer_value(bos), err);
        if (k < 0) {
            lm_err_prefix(err, "config.json");
            goto done;
        }
        if (k) c->bos_id = (int32_t)json_integer_value(bos);
    }
    if (generation_json) {
        gen = json_loads(generation_json, 0, &je);
        if (!gen || !json_is_object(gen)) {
            lm_errf(err, "generation_config.json is not a valid JSON object");
            goto done;
        }
        if (parse_eos(c, json_object_get(gen, "eos_token_id"), err)) {
            lm_err_prefix(err, "generation_config.json");
            goto done;
        }
    }
    json_t *q = json_object_get(root, "quantization");
    if (!q) q = json_object_get(root, "quantization_config");
    if (parse_quant(c, q, err)) goto done;
    rc = 0;
done:
    json_decref(root);
    json_decref(gen);
    if (rc != 0) lm_config_free(c);
    return rc;
}

static char *read_text_file(const char *path, size_t limit, char *err) {
    if (lm_refuse_special_file(path, err)) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    lm_strbuf b = {0};
    int rc = lm_strbuf_read_stream(&b, f, limit);
    fclose(f);
    if (rc == LM_READ_OK) return b.data;
    lm_strbuf_free(&b);
    if (rc == LM_READ_TOO_LONG) lm_errf(err, "%s is larger than %zu bytes", path, limit);
    else if (rc == LM_READ_ERROR) lm_errf(err, "cannot read %s", path);
    else lm_errf(err, "out of memory reading %s", path);
    return NULL;
}

int lm_config_load(lm_config *cfg, const char *dir, char *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (err) err[0] = 0;
    char *text = read_text_file(path, 16u << 20, err);
    if (!text) {
        if (err && err[0]) return -1;
        return lm_errf(err, "%s: cannot read (is %s a model directory?)", path, dir);
    }
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    char *gen = read_text_file(path, 16u << 20, err);
    if (!gen && err && err[0]) {
        free(text);
        return -1;
    }
    int rc = lm_config_parse(cfg, text, gen, err);
    free(text);
    free(gen);
    if (rc != 0) return lm_err_prefix(err, "%s", dir);
    return 0;
}

void lm_config_free(lm_config *c) {
    free(c->mlp_only);
    c->mlp_only = NULL;
    free(c->layer_linear);
    c->layer_linear = NULL;
    free(c->layer_sliding);
    c->layer_sliding = NULL;
    for (int i = 0; i < c->n_quant_overrides; i++) free(c->quant_overrides[i].path);
    free(c->quant_overrides);
    c->quant_overrides = NULL;
    c->n_quant_overrides = 0;
}

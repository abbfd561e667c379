#include "models/gguf_model.h"

#include "common/buf.h"
#include "common/error.h"
#include "models/family.h"
#include "text/tokenizer_gguf.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- metadata -> config.json ------------------------------------------------------ */

typedef struct {
    const gguf_archive *g;
    const char *arch;
    json_t *cfg;
    char *err;
} meta;

/* Copies integer key ARCH.SUFFIX into cfg[name]; 1 if present, 0 if absent, -1 on error. */
static int put_int(meta *m, const char *suffix, const char *name) {
    char key[256];
    snprintf(key, sizeof key, "%s.%s", m->arch, suffix);
    const gguf_kv *kv = gguf_find_kv(m->g, key);
    if (kv && kv->type == GGUF_TYPE_ARRAY)
        return lm_errf(m->err, "GGUF key '%s' is a per-layer array; lazymoe needs one value for every layer", key);
    int64_t v;
    int rc = gguf_get_int(m->g, key, &v, m->err);
    if (rc == 1) json_object_set_new(m->cfg, name, json_integer((json_int_t)v));
    return rc;
}

static int put_num(meta *m, const char *suffix, const char *name, double *out) {
    char key[256];
    snprintf(key, sizeof key, "%s.%s", m->arch, suffix);
    double v;
    int rc = gguf_get_num(m->g, key, &v, m->err);
    if (rc == 1) {
        json_object_set_new(m->cfg, name, json_real(v));
        if (out) *out = v;
    }
    return rc;
}

static int require(meta *m, int rc, const char *suffix) {
    if (rc == 0) return lm_errf(m->err, "GGUF metadata lacks '%s.%s'", m->arch, suffix);
    return rc < 0 ? -1 : 0;
}

/* Appends tokenizer.ggml.NAME_token_id to the eos list, as llama.cpp takes it (its
 * vocabulary type's default where the key is absent), unless it is none or listed. */
static int add_token_id(const gguf_archive *g, const char *name, json_t *eos, char *err) {
    int64_t v;
    size_t i;
    json_t *e;
    if (lm_gguf_special_id(g, name, &v, err) != 0) return -1;
    if (v < 0) return 0;
    json_array_foreach(eos, i, e) if (json_integer_value(e) == v) return 0;
    json_array_append_new(eos, json_integer((json_int_t)v));
    return 0;
}

/* GGUF keeps one eos id; generation_config.json often lists more (Qwen: <|im_end|> and
 * <|endoftext|>). Like llama.cpp, control tokens spelled as a known end of turn or of
 * text also end generation. */
static void add_end_tokens(const gguf_archive *g, json_t *eos) {
    static const char *const ends[] = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
                                       "<|return|>",    "<|call|>",   "</s>",       "<end_of_turn>"};
    const gguf_kv *toks = gguf_find_kv(g, "tokenizer.ggml.tokens"), *types = gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (!toks || !types || toks->type != GGUF_TYPE_ARRAY || toks->arr_type != GGUF_TYPE_STRING ||
        types->type != GGUF_TYPE_ARRAY || (types->arr_type != GGUF_TYPE_I32 && types->arr_type != GGUF_TYPE_U32) ||
        types->arr_n != toks->arr_n)
        return;
    for (uint64_t i = 0; i < toks->arr_n && json_array_size(eos) < LM_MAX_EOS; i++) {
        if (gguf_arr_int(types, i) != 3) continue;
        for (size_t k = 0; k < sizeof ends / sizeof ends[0]; k++)
            if (toks->strs[i].len == strlen(ends[k]) && memcmp(toks->strs[i].p, ends[k], strlen(ends[k])) == 0) {
                size_t j;
                json_t *e;
                int dup = 0;
                json_array_foreach(eos, j, e) dup |= json_integer_value(e) == (json_int_t)i;
                if (!dup) json_array_append_new(eos, json_integer((json_int_t)i));
            }
    }
}

/* YaRN's keys beside rope.scaling.factor: the pretrained context
 * (rope.scaling.original_context_length) and the rotation bounds
 * (rope.scaling.yarn_beta_fast / _slow, absent in older files: transformers'
 * defaults). llama.cpp has no key for transformers' `truncate`: lazymoe writes
 * ARCH.rope.scaling.yarn_truncate when it is not the family's default (false for
 * gpt-oss, whose released config says so; true, transformers' default, elsewhere). */
static int put_yarn(meta *m, json_t *rs, int truncate_default) {
    char key[256];
    int64_t orig;
    snprintf(key, sizeof key, "%s.rope.scaling.original_context_length", m->arch);
    int rc = gguf_get_int(m->g, key, &orig, m->err);
    if (rc < 0) return -1;
    if (rc == 1) json_object_set_new(rs, "original_max_position_embeddings", json_integer((json_int_t)orig));
    static const char *const betas[2][2] = {{"yarn_beta_fast", "beta_fast"}, {"yarn_beta_slow", "beta_slow"}};
    for (int i = 0; i < 2; i++) {
        double v;
        snprintf(key, sizeof key, "%s.rope.scaling.%s", m->arch, betas[i][0]);
        rc = gguf_get_num(m->g, key, &v, m->err);
        if (rc < 0) return -1;
        if (rc == 1) json_object_set_new(rs, betas[i][1], json_real(v));
    }
    int truncate = truncate_default;
    snprintf(key, sizeof key, "%s.rope.scaling.yarn_truncate", m->arch);
    if (gguf_get_bool(m->g, key, &truncate, m->err) < 0) return -1;
    json_object_set_new(rs, "truncate", json_boolean(truncate));
    return 0;
}

/* gpt-oss's sliding layers, as llama.cpp reads them: ARCH.attention.sliding_window_pattern
 * is a period p (default 2) whose first p - 1 layers slide, or one bool per layer. */
static int put_window_pattern(meta *m) {
    char key[256];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", m->arch);
    const gguf_kv *kv = gguf_find_kv(m->g, key);
    int64_t layers = json_integer_value(json_object_get(m->cfg, "num_hidden_layers")), period = 2;
    if (kv && kv->type == GGUF_TYPE_ARRAY) {
        if (kv->arr_type != GGUF_TYPE_BOOL || kv->arr_n != (uint64_t)layers)
            return lm_errf(m->err, "GGUF key '%s' must hold one bool per layer (%lld)", key, (long long)layers);
    } else if (gguf_get_int(m->g, key, &period, m->err) < 0) {
        return -1;
    } else if (period < 1) {
        return lm_errf(m->err, "GGUF key '%s' is %lld; a period is at least 1", key, (long long)period);
    }
    json_t *types = json_array();
    for (int64_t l = 0; l < layers && l < 4096; l++) {
        int sliding = kv && kv->type == GGUF_TYPE_ARRAY ? gguf_arr_int(kv, (uint64_t)l) != 0 : l % period < period - 1;
        json_array_append_new(types, json_string(sliding ? "sliding_attention" : "full_attention"));
    }
    json_object_set_new(m->cfg, "layer_types", types);
    return 0;
}

/* llama.cpp's expert_gating_func values (llama-hparams.h): how router logits become weights. */
enum { GATING_SIGMOID = 2 };

/* The families whose router is a sigmoid (glm4moe, minimax-m2): ARCH.expert_gating_func,
 * when present, must say so (llama.cpp reads 0, unset, as the architecture's own). */
static int check_sigmoid_gating(meta *m) {
    char key[256];
    int64_t gating = GATING_SIGMOID;
    snprintf(key, sizeof key, "%s.expert_gating_func", m->arch);
    if (gguf_get_int(m->g, key, &gating, m->err) < 0) return -1;
    if (gating != GATING_SIGMOID && gating != 0)
        return lm_errf(m->err, "GGUF key '%s' is %lld; %s routes with a sigmoid (%d)", key, (long long)gating, m->arch,
                       GATING_SIGMOID);
    return 0;
}

/* block_count counts the ARCH.nextn_predict_layers multi-token-prediction blocks kept
 * after the last layer (glm4moe, qwen3next, qwen35moe: their tensors stay in the file,
 * never read): num_hidden_layers becomes the layers before them; *nextn their count. */
static int take_nextn_layers(meta *m, int64_t *nextn) {
    char key[256];
    int64_t blocks = json_integer_value(json_object_get(m->cfg, "num_hidden_layers"));
    *nextn = 0;
    snprintf(key, sizeof key, "%s.nextn_predict_layers", m->arch);
    if (gguf_get_int(m->g, key, nextn, m->err) < 0) return -1;
    if (*nextn < 0 || *nextn >= blocks)
        return lm_errf(m->err, "GGUF key '%s' is %lld but %s.block_count is %lld (it counts them)", key,
                       (long long)*nextn, m->arch, (long long)blocks);
    json_object_set_new(m->cfg, "num_hidden_layers", json_integer((json_int_t)(blocks - *nextn)));
    return 0;
}

/* glm4moe (GLM-4.5, -4.6, -Air) as llama.cpp's converter writes it. block_count counts
 * the nextn_predict_layers multi-token-prediction layers kept after the last layer
 * (their tensors stay in the file, never read); leading_dense_block_count dense layers
 * come first; expert_shared_count shared experts of expert_feed_forward_length each;
 * the routed experts are chosen by sigmoid + exp_probs_b within the
 * expert_group_used_count best of expert_group_count groups and weighed by
 * expert_weights_scale, renormalised when expert_weights_norm (llama.cpp's default:
 * not). q/k norms exist when the file has attn_q_norm tensors. */
static int put_glm4_moe(meta *m) {
    int64_t nextn;
    if (take_nextn_layers(m, &nextn) != 0) return -1;
    json_object_set_new(m->cfg, "num_nextn_predict_layers", json_integer((json_int_t)nextn));
    if (require(m, put_int(m, "expert_shared_count", "n_shared_experts"), "expert_shared_count") ||
        put_int(m, "leading_dense_block_count", "first_k_dense_replace") < 0 ||
        put_num(m, "expert_weights_scale", "routed_scaling_factor", NULL) < 0)
        return -1;
    /* llama.cpp: a scale of 0 (or none) leaves the weights as they are */
    json_t *rsf = json_object_get(m->cfg, "routed_scaling_factor");
    if (rsf && json_number_value(rsf) == 0) json_object_set_new(m->cfg, "routed_scaling_factor", json_real(1.0));
    int groups = put_int(m, "expert_group_count", "n_group"), used = put_int(m, "expert_group_used_count", "topk_group");
    if (groups < 0 || used < 0) return -1;
    if (groups != used)
        return lm_errf(m->err, "GGUF metadata has '%s.%s' without '%s.%s'", m->arch,
                       groups ? "expert_group_count" : "expert_group_used_count", m->arch,
                       groups ? "expert_group_used_count" : "expert_group_count");
    json_object_set_new(m->cfg, "use_qk_norm", json_boolean(gguf_find_tensor(m->g, "blk.0.attn_q_norm.weight") != NULL));
    return 0;
}

/* qwen3next and qwen35moe (Gated DeltaNet hybrids) as llama.cpp's converter writes
 * them: the linear-attention shapes under ARCH.ssm.* (group_count = key heads,
 * time_step_rank = value heads, state_size = key head width, inner_size = value
 * heads x value head width, conv_kernel), the layer kinds from
 * ARCH.attention.recurrent_layers (one bool per block, MTP blocks included) or every
 * ARCH.full_attention_interval-th layer full (default 4, llama.cpp's), the shared
 * expert's width, and block_count counting ARCH.nextn_predict_layers MTP blocks kept
 * after the last layer (never read). *nextn gets their count. */
static int put_qwen_linear(meta *m, int64_t *nextn) {
    char key[256];
    if (take_nextn_layers(m, nextn) != 0) return -1;
    const int64_t layers = json_integer_value(json_object_get(m->cfg, "num_hidden_layers")),
                  blocks = layers + *nextn;
    if (require(m, put_int(m, "ssm.conv_kernel", "linear_conv_kernel_dim"), "ssm.conv_kernel") ||
        require(m, put_int(m, "ssm.state_size", "linear_key_head_dim"), "ssm.state_size") ||
        require(m, put_int(m, "ssm.group_count", "linear_num_key_heads"), "ssm.group_count") ||
        require(m, put_int(m, "ssm.time_step_rank", "linear_num_value_heads"), "ssm.time_step_rank") ||
        put_int(m, "expert_shared_feed_forward_length", "shared_expert_intermediate_size") < 0)
        return -1;
    int64_t inner = 0, nv = json_integer_value(json_object_get(m->cfg, "linear_num_value_heads"));
    snprintf(key, sizeof key, "%s.ssm.inner_size", m->arch);
    int rc = gguf_get_int(m->g, key, &inner, m->err);
    if (rc <= 0) return rc < 0 ? -1 : lm_errf(m->err, "GGUF metadata lacks '%s'", key);
    if (nv <= 0 || inner <= 0 || inner % nv)
        return lm_errf(m->err, "GGUF key '%s' is %lld, not a positive multiple of %s.ssm.time_step_rank (%lld)", key,
                       (long long)inner, m->arch, (long long)nv);
    json_object_set_new(m->cfg, "linear_value_head_dim", json_integer((json_int_t)(inner / nv)));
    if (gguf_find_tensor(m->g, "blk.0.ffn_up_shexp.weight") &&
        !json_object_get(m->cfg, "shared_expert_intermediate_size"))
        return lm_errf(m->err, "GGUF metadata lacks '%s.expert_shared_feed_forward_length' (the file has shared experts)",
                       m->arch);
    snprintf(key, sizeof key, "%s.attention.recurrent_layers", m->arch);
    const gguf_kv *rec = gguf_find_kv(m->g, key);
    int64_t interval = 4;
    if (rec) {
        if (rec->type != GGUF_TYPE_ARRAY || (rec->arr_type != GGUF_TYPE_BOOL && rec->arr_type != GGUF_TYPE_I32 &&
                                             rec->arr_type != GGUF_TYPE_U32 && rec->arr_type != GGUF_TYPE_U8 &&
                                             rec->arr_type != GGUF_TYPE_I8) ||
            rec->arr_n != (uint64_t)blocks)
            return lm_errf(m->err, "GGUF key '%s' must hold one bool per block (%lld)", key, (long long)blocks);
    } else {
        snprintf(key, sizeof key, "%s.full_attention_interval", m->arch);
        if (gguf_get_int(m->g, key, &interval, m->err) < 0) return -1;
        if (interval < 1) return lm_errf(m->err, "GGUF key '%s' is %lld; it must be at least 1", key, (long long)interval);
    }
    json_t *types = json_array();
    for (int64_t l = 0; l < layers && l < 4096; l++) {
        int linear = rec ? gguf_arr_int(rec, (uint64_t)l) != 0 : (l + 1) % interval != 0;
        json_array_append_new(types, json_string(linear ? "linear_attention" : "full_attention"));
    }
    json_object_set_new(m->cfg, "layer_types", types);
    return 0;
}

/* qwen35moe's interleaved multimodal RoPE (ARCH.rope.dimension_sections, 4 values):
 * on text, where every position stream is equal, it is plain RoPE if the sections
 * give every rotated pair a stream (llama.cpp's IMROPE: pair i takes stream i % 3
 * while i < 3 x its section, else the fourth stream, position 0 on text); refused
 * otherwise, since lazymoe runs text only. */
static int check_mrope_sections(meta *m, int rope_dim) {
    char key[256];
    snprintf(key, sizeof key, "%s.rope.dimension_sections", m->arch);
    const gguf_kv *kv = gguf_find_kv(m->g, key);
    if (!kv) return lm_errf(m->err, "GGUF metadata lacks '%s' (llama.cpp requires it for %s)", key, m->arch);
    if (kv->type != GGUF_TYPE_ARRAY || (kv->arr_type != GGUF_TYPE_I32 && kv->arr_type != GGUF_TYPE_U32) ||
        kv->arr_n < 3 || kv->arr_n > 4)
        return lm_errf(m->err, "GGUF key '%s' must hold 3 or 4 integers", key);
    int64_t sec[3];
    for (int k = 0; k < 3; k++) sec[k] = gguf_arr_int(kv, (uint64_t)k);
    for (int i = 0; i < rope_dim / 2; i++)
        if (!(i < 3 * sec[i % 3]))
            return lm_errf(m->err,
                           "GGUF key '%s' (%lld, %lld, %lld) leaves rotated pair %d of %d to the fourth position "
                           "stream; text positions need the first three to cover every pair",
                           key, (long long)sec[0], (long long)sec[1], (long long)sec[2], i, rope_dim / 2);
    return 0;
}

/* Which family a GGUF architecture is; the "llama" architecture holds Mixtral. */
static const lm_family *family_of(const gguf_archive *g, const char *arch, char *err) {
    const lm_family *f = lm_family_find_gguf(arch);
    char key[256];
    if (f && strcmp(arch, "llama") == 0) {
        int64_t experts = 0;
        snprintf(key, sizeof key, "%s.expert_count", arch);
        if (gguf_get_int(g, key, &experts, err) < 0) return NULL;
        if (experts <= 0) {
            lm_errf(err, "this GGUF is a dense llama model (no llama.expert_count); lazymoe runs mixture-of-experts "
                         "models only (a llama GGUF with experts is Mixtral)");
            return NULL;
        }
    }
    if (!f) {
        /* every family of the registry with a GGUF architecture name is read here */
        char list[256] = "";
        size_t len = 0;
        for (int i = 0; lm_families[i] && len < sizeof list; i++)
            if (lm_families[i]->gguf_arch)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "",
                                        strcmp(lm_families[i]->gguf_arch, "llama") == 0 ? "llama with experts (Mixtral)"
                                                                                       : lm_families[i]->gguf_arch);
        lm_errf(err, "GGUF architecture '%.64s' is not supported (supported: %s)", arch, list);
        return NULL;
    }
    return f;
}

int lm_gguf_config(lm_config *c, const gguf_archive *g, char *err) {
    memset(c, 0, sizeof *c);
    char *arch = NULL;
    int rc = gguf_get_str(g, "general.architecture", &arch, err);
    if (rc <= 0) return rc < 0 ? -1 : lm_errf(err, "GGUF metadata lacks general.architecture");
    json_t *cfg = json_object();
    meta m = {g, arch, cfg, err};
    char *text = NULL;
    rc = -1;
    const lm_family *fam = family_of(g, arch, err);
    if (!fam || !cfg) goto done;
    json_object_set_new(cfg, "model_type", json_string(fam->model_type));
    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (!emb || emb->n_dims != 2) {
        lm_errf(err, "GGUF file lacks a 2-D token_embd.weight");
        goto done;
    }
    json_object_set_new(cfg, "vocab_size", json_integer(emb->ne[1]));
    int64_t v;
    char key[256];
    snprintf(key, sizeof key, "%s.vocab_size", arch);
    if (gguf_get_int(g, key, &v, err) < 0) goto done;
    if (gguf_find_kv(g, key) && v != emb->ne[1]) {
        lm_errf(err, "%s = %lld but token_embd.weight has %lld rows", key, (long long)v, (long long)emb->ne[1]);
        goto done;
    }
    if (require(&m, put_int(&m, "embedding_length", "hidden_size"), "embedding_length") ||
        require(&m, put_int(&m, "block_count", "num_hidden_layers"), "block_count") ||
        require(&m, put_int(&m, "attention.head_count", "num_attention_heads"), "attention.head_count") ||
        put_int(&m, "attention.head_count_kv", "num_key_value_heads") < 0 ||
        put_int(&m, "attention.key_length", "head_dim") < 0 ||
        put_int(&m, "feed_forward_length", "intermediate_size") < 0 ||
        put_int(&m, "expert_feed_forward_length", "moe_intermediate_size") < 0 ||
        require(&m, put_int(&m, "expert_count", "num_experts"), "expert_count") ||
        require(&m, put_int(&m, "expert_used_count", "num_experts_per_tok"), "expert_used_count") ||
        put_int(&m, "context_length", "max_position_embeddings") < 0 ||
        put_num(&m, "attention.layer_norm_rms_epsilon", "rms_norm_eps", NULL) < 0 ||
        put_num(&m, "rope.freq_base", "rope_theta", NULL) < 0 || put_num(&m, "attention.clamp_kqv", "clip_qkv", NULL) < 0 ||
        put_int(&m, "attention.sliding_window", "sliding_window") < 0)
        goto done;
    int64_t kl = 0, vl = 0;
    snprintf(key, sizeof key, "%s.attention.key_length", arch);
    int has_k = gguf_get_int(g, key, &kl, err);
    snprintf(key, sizeof key, "%s.attention.value_length", arch);
    int has_v = gguf_get_int(g, key, &vl, err);
    if (has_k < 0 || has_v < 0) goto done;
    if (has_v == 1 && (has_k != 1 || kl != vl)) {
        lm_errf(err, "GGUF %s.attention.value_length %lld differs from key_length; not supported", arch, (long long)vl);
        goto done;
    }
    /* partial RoPE: rope.dimension_count < head_dim */
    int64_t rot = 0;
    snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
    if (gguf_get_int(g, key, &rot, err) < 0) goto done;
    if (gguf_find_kv(g, key)) {
        json_t *hd = json_object_get(cfg, "head_dim"), *H = json_object_get(cfg, "hidden_size"),
               *nh = json_object_get(cfg, "num_attention_heads");
        long long head = hd ? json_integer_value(hd)
                            : (json_integer_value(nh) ? json_integer_value(H) / json_integer_value(nh) : 0);
        if (head > 0 && rot != head) json_object_set_new(cfg, "partial_rotary_factor", json_real((double)rot / head));
    }
    /* RoPE scaling */
    char *stype = NULL;
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (gguf_get_str(g, key, &stype, err) < 0) goto done;
    if (stype && strcmp(stype, "none") != 0) {
        double factor = 1;
        snprintf(key, sizeof key, "%s.rope.scaling.factor", arch);
        if (gguf_get_num(g, key, &factor, err) < 0) {
            free(stype);
            goto done;
        }
        json_t *rs = json_pack("{s:s, s:f}", "rope_type", stype, "factor", factor);
        json_object_set_new(cfg, "rope_scaling", rs);
        if (strcmp(stype, "yarn") == 0 && put_yarn(&m, rs, strcmp(fam->model_type, "gpt_oss") != 0) != 0) {
            free(stype);
            goto done;
        }
    }
    free(stype);
    if (strcmp(fam->model_type, "gpt_oss") == 0 && put_window_pattern(&m) != 0) goto done;
    int glm = strcmp(fam->model_type, "glm4_moe") == 0;
    if (glm && put_glm4_moe(&m) != 0) goto done;
    int64_t lin_nextn = 0;
    int qwen_linear = fam->parse_config == lm_family_qwen3_next_parse_config;
    if (qwen_linear && put_qwen_linear(&m, &lin_nextn) != 0) goto done;
    if (fam->sigmoid_router && check_sigmoid_gating(&m) != 0) goto done;
    /* router weighting: llama.cpp's key if the file has it, else what llama.cpp does for
     * the architecture (qwen3moe and Mixtral renormalise the top-k weights, olmoe and
     * glm4moe not) */
    int norm = strcmp(fam->model_type, "olmoe") != 0 && !glm;
    snprintf(key, sizeof key, "%s.expert_weights_norm", arch);
    if (gguf_get_bool(g, key, &norm, err) < 0) goto done;
    json_object_set_new(cfg, "norm_topk_prob", json_boolean(norm));
    json_object_set_new(cfg, "tie_word_embeddings", json_boolean(!gguf_find_tensor(g, "output.weight")));
    json_object_set_new(cfg, "attention_bias", json_boolean(gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL));
    /* dense layers: those without a router */
    json_t *dense = json_array();
    int64_t layers = json_integer_value(json_object_get(cfg, "num_hidden_layers"));
    for (int64_t l = 0; l < layers && l < 4096; l++) {
        snprintf(key, sizeof key, "blk.%lld.ffn_gate_inp.weight", (long long)l);
        if (!gguf_find_tensor(g, key)) json_array_append_new(dense, json_integer((json_int_t)l));
    }
    json_object_set_new(cfg, "mlp_only_layers", dense);
    json_t *eos = json_array();
    json_object_set_new(cfg, "eos_token_id", eos);
    int64_t bos;
    if (add_token_id(g, "eos", eos, err) || add_token_id(g, "eot", eos, err) || add_token_id(g, "eom", eos, err) ||
        lm_gguf_special_id(g, "bos", &bos, err))
        goto done;
    add_end_tokens(g, eos);
    if (bos >= 0) json_object_set_new(cfg, "bos_token_id", json_integer((json_int_t)bos));
    text = json_dumps(cfg, JSON_COMPACT);
    if (!text) {
        lm_errf(err, "out of memory");
        goto done;
    }
    rc = lm_config_parse(c, text, NULL, err);
    if (rc != 0) {
        /* config.c's messages speak of config.json keys; say where they came from */
        lm_err_prefix(err, "GGUF metadata (as config.json)");
    } else if (qwen_linear) {
        c->n_nextn_layers = (int)lin_nextn;
        /* llama.cpp's converter reorders qwen35moe's value heads to ggml's tiled order */
        c->lin_v_tiled = strcmp(fam->model_type, "qwen3_5_moe") == 0;
        if (c->lin_v_tiled && check_mrope_sections(&m, c->rope_dim) != 0) {
            lm_config_free(c);
            rc = -1;
        }
    }
done:
    free(text);
    json_decref(cfg);
    free(arch);
    return rc;
}

/* ---- tensor names ------------------------------------------------------------------- */

/* The Hugging Face name of GGUF tensor `name` (NULL-free: 0, or -1 if unknown). */
static int hf_name(const lm_config *c, const char *name, char *out, size_t cap, int *is_qk) {
    const lm_tensor_names *n = c->family->names;
    const char *moe = n->moe_blocks[0];
    *is_qk = 0;
    static const struct {
        const char *g, *hf;
    } top[] = {{"token_embd", "model.embed_tokens"}, {"output_norm", "model.norm"}, {"output", "lm_head"}};
    /* qwen3next / qwen35moe: ssm_a holds -exp(A_log), with no suffix (bound as A) */
    const char *dot = strrchr(name, '.');
    long al;
    int an = 0;
    if (c->layer_linear && sscanf(name, "blk.%ld.ssm_a%n", &al, &an) == 1 && an > 0 && name[an] == 0 && al >= 0 &&
        al < c->n_layers && c->layer_linear[al])
        return snprintf(out, cap, "model.layers.%ld.linear_attn.A", al) < (int)cap ? 0 : -1;
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0)) return -1;
    size_t stem = (size_t)(dot - name);
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (strlen(top[i].g) == stem && strncmp(name, top[i].g, stem) == 0)
            return snprintf(out, cap, "%s%s", top[i].hf, dot) < (int)cap ? 0 : -1;
    if (strncmp(name, "blk.", 4) != 0) return -1;
    char *end;
    long l = strtol(name + 4, &end, 10);
    /* multi-token-prediction layers (glm4moe, qwen3next, qwen35moe) follow the last layer */
    if (end == name + 4 || *end != '.' || l < 0 || l >= (long)c->n_layers + c->n_nextn_layers) return -1;
    char part[64];
    size_t plen = (size_t)(dot - (end + 1));
    if (plen == 0 || plen >= sizeof part) return -1;
    memcpy(part, end + 1, plen);
    part[plen] = 0;
    char mod[256];
    if (strcmp(part, "attn_sinks") == 0 && strcmp(dot, ".weight") == 0) /* gpt-oss: no suffix in HF */
        return snprintf(out, cap, "model.layers.%ld.self_attn.sinks", l) < (int)cap ? 0 : -1;
    /* the sigmoid router's correction bias: a ".bias" in GGUF, no suffix in HF */
    if (strcmp(part, "exp_probs_b") == 0 && strcmp(dot, ".bias") == 0 && n->correction_bias[0])
        return snprintf(out, cap, "model.layers.%ld.%s.%s", l, moe, n->correction_bias[0]) < (int)cap ? 0 : -1;
    /* the multi-token-prediction tensors, under glm4_moe's HF names (never read) */
    static const struct {
        const char *g, *hf;
    } nextn[] = {{"nextn.eh_proj", "eh_proj"},
                 {"nextn.enorm", "enorm"},
                 {"nextn.hnorm", "hnorm"},
                 {"nextn.embed_tokens", "embed_tokens"},
                 {"nextn.shared_head_head", "shared_head.head"},
                 {"nextn.shared_head_norm", "shared_head.norm"}};
    for (size_t i = 0; i < sizeof nextn / sizeof nextn[0]; i++)
        if (l >= c->n_layers && strcmp(part, nextn[i].g) == 0)
            return snprintf(out, cap, "model.layers.%ld.%s%s", l, nextn[i].hf, dot) < (int)cap ? 0 : -1;
    static const struct {
        const char *g, *hf;
    } attn[] = {{"attn_norm", "input_layernorm"},     {"ffn_norm", "post_attention_layernorm"},
                {"post_attention_norm", "post_attention_layernorm"},
                {"attn_q", "self_attn.q_proj"},       {"attn_k", "self_attn.k_proj"},
                {"attn_v", "self_attn.v_proj"},       {"attn_output", "self_attn.o_proj"},
                {"attn_q_norm", "self_attn.q_norm"},  {"attn_k_norm", "self_attn.k_norm"},
                {"ffn_gate", "mlp.gate_proj"},        {"ffn_up", "mlp.up_proj"},
                {"ffn_down", "mlp.down_proj"}};
    /* Gated DeltaNet layers (qwen3next, qwen35moe): llama.cpp splits Hugging Face's
     * in_proj_qkvz into attn_qkv (all q, all k, all v) and attn_gate (z); older files
     * keep it whole as ssm_in */
    static const struct {
        const char *g, *hf;
    } linear[] = {{"attn_qkv", "linear_attn.in_proj_qkv"}, {"attn_gate", "linear_attn.in_proj_z"},
                  {"ssm_in", "linear_attn.in_proj_qkvz"},  {"ssm_ba", "linear_attn.in_proj_ba"},
                  {"ssm_beta", "linear_attn.in_proj_b"},   {"ssm_alpha", "linear_attn.in_proj_a"},
                  {"ssm_conv1d", "linear_attn.conv1d"},    {"ssm_norm", "linear_attn.norm"},
                  {"ssm_out", "linear_attn.out_proj"}};
    if (c->layer_linear && l < c->n_layers && c->layer_linear[l]) {
        if (strcmp(part, "ssm_dt") == 0 && strcmp(dot, ".bias") == 0)
            return snprintf(out, cap, "model.layers.%ld.linear_attn.dt_bias", l) < (int)cap ? 0 : -1;
        for (size_t i = 0; i < sizeof linear / sizeof linear[0]; i++)
            if (strcmp(part, linear[i].g) == 0 && strcmp(dot, ".weight") == 0)
                return snprintf(out, cap, "model.layers.%ld.%s%s", l, linear[i].hf, dot) < (int)cap ? 0 : -1;
    }
    mod[0] = 0;
    for (size_t i = 0; i < sizeof attn / sizeof attn[0] && !mod[0]; i++)
        if (strcmp(part, attn[i].g) == 0) snprintf(mod, sizeof mod, "%s", attn[i].hf);
    if (!mod[0]) {
        static const char *const exps[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
        static const char *const shexp[3] = {"ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"};
        static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3 && !mod[0]; k++) {
            if (strcmp(part, exps[k]) == 0) snprintf(mod, sizeof mod, "%s.switch_mlp.%s", moe, proj[k]);
            if (strcmp(part, shexp[k]) == 0) snprintf(mod, sizeof mod, "%s.%s.%s", moe, n->shared_expert, proj[k]);
        }
        /* llama.cpp's converter with --fuse-gate-up-exps: one [E, 2I, H] stack, gate rows then up */
        if (strcmp(part, "ffn_gate_up_exps") == 0) snprintf(mod, sizeof mod, "%s.switch_mlp.gate_up_proj", moe);
        if (strcmp(part, "ffn_gate_inp") == 0) snprintf(mod, sizeof mod, "%s.%s", moe, n->router);
        if (strcmp(part, "ffn_gate_inp_shexp") == 0) snprintf(mod, sizeof mod, "%s.%s", moe, n->shared_expert_gate);
    }
    if (!mod[0]) return -1;
    *is_qk = strcmp(part, "attn_q") == 0 ? 1 : strcmp(part, "attn_k") == 0 ? 2 : 0;
    return snprintf(out, cap, "model.layers.%ld.%s%s", l, mod, dot) < (int)cap ? 0 : -1;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

int lm_gguf_archive(const gguf_archive *g, const lm_config *c, st_archive **out, char *err) {
    *out = NULL;
    st_archive *a = calloc(1, sizeof *a);
    if (!a) return lm_errf(err, "out of memory");
    a->files = calloc((size_t)g->nfiles + 1, sizeof(st_file));
    a->tensors = calloc((size_t)g->ntensors + 1, sizeof(st_tensor));
    int rc = -1;
    if (!a->files || !a->tensors) {
        lm_errf(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < g->nfiles; i++) {
        st_file *f = &a->files[a->nfiles];
        f->fd = dup(g->files[i].fd);
        f->path = strdup(g->files[i].path);
        if (f->fd < 0 || !f->path) {
            if (f->fd >= 0) close(f->fd);
            free(f->path);
            lm_errf(err, "%s: cannot duplicate the file descriptor", g->files[i].path);
            goto done;
        }
        f->size = g->files[i].size;
        f->data_start = g->files[i].data_start;
        a->nfiles++;
    }
    /* llama-architecture q/k rows are permuted (see gguf_model.h) */
    int llama = c->family->gguf_arch && strcmp(c->family->gguf_arch, "llama") == 0;
    for (int i = 0; i < g->ntensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        st_tensor *s = &a->tensors[a->ntensors];
        char name[512];
        int qk = 0;
        if (hf_name(c, t->name, name, sizeof name, &qk) != 0) {
            lm_errf(err, "tensor '%s' is not one lazymoe knows for a %s model", t->name,
                    c->family->gguf_arch);
            goto done;
        }
        s->name = strdup(name);
        s->stored_name = strdup(t->name);
        a->ntensors++;
        if (!s->name || !s->stored_name) {
            lm_errf(err, "out of memory");
            goto done;
        }
        s->dtype = t->dtype;
        s->ndim = t->n_dims;
        for (int d = 0; d < t->n_dims; d++) s->shape[d] = t->ne[t->n_dims - 1 - d];
        /* the shared expert's sigmoid gate [1, H] may be stored as a vector [H] */
        size_t nl = strlen(name), gl = strlen(".shared_expert_gate.weight");
        if (t->n_dims == 1 && nl > gl && strcmp(name + nl - gl, ".shared_expert_gate.weight") == 0) {
            s->ndim = 2;
            s->shape[0] = 1;
            s->shape[1] = t->ne[0];
        }
        s->offset = t->offset;
        s->nbytes = t->nbytes;
        s->file = t->file;
        if (llama && qk) s->rope_unpermute = c->head_dim;
    }
    qsort(a->tensors, (size_t)a->ntensors, sizeof(st_tensor), cmp_name);
    rc = 0;
done:
    if (rc != 0) {
        st_close(a);
        return -1;
    }
    *out = a;
    return 0;
}

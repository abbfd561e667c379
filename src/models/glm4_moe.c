/* glm4_moe (GLM-4.5, GLM-4.5-Air, GLM-4.6, GLM-4.7): the first first_k_dense_replace
 * layers are dense; the others route with a sigmoid router (experts chosen by
 * sigmoid + e_score_correction_bias within the topk_group best of n_group groups,
 * weighed by the unbiased sigmoids, renormalised when norm_topk_prob, times
 * routed_scaling_factor) and add n_shared_experts always-on experts (one MLP of
 * n_shared_experts * moe_intermediate_size, no gate). Attention has q/k/v biases
 * (attention_bias; o_proj has none), partial RoPE (partial_rotary_factor) and
 * per-head q/k norms when use_qk_norm. Checkpoints store num_nextn_predict_layers
 * multi-token-prediction layers after the last one: not part of the forward pass,
 * never read (check_layer_count allows them; `info` says so). */
#include "models/family.h"

#include "common/error.h"

static const lm_tensor_names names = {
    .moe_blocks = {"mlp"},
    .router = "gate",
    .expert_gate = {"gate_proj"},
    .expert_up = {"up_proj"},
    .expert_down = {"down_proj"},
    .shared_expert = "shared_experts",
    .shared_expert_gate = NULL,
    .correction_bias = {"gate.e_score_correction_bias", "e_score_correction_bias"},
};

static int parse_config(lm_config *c, json_t *o, char *err) {
    long long v = 0;
    if (!json_object_get(o, "norm_topk_prob")) c->norm_topk_prob = 1; /* transformers' default */
    if (lm_cfg_int(o, "n_group", 1, 1, 1024, &v, err)) return -1;
    c->n_group = (int)v;
    if (lm_cfg_int(o, "topk_group", 1, 1, c->n_group, &v, err)) return -1;
    c->topk_group = (int)v;
    if (c->n_experts % c->n_group || c->topk_group * (c->n_experts / c->n_group) < c->top_k)
        return lm_errf(err, "config.json: %d experts in n_group %d groups with topk_group %d cannot give %d experts",
                       c->n_experts, c->n_group, c->topk_group, c->top_k);
    json_t *rsf = json_object_get(o, "routed_scaling_factor");
    if (rsf && !json_is_null(rsf)) {
        if (!json_is_number(rsf) || !(json_number_value(rsf) > 0) || json_number_value(rsf) > 1e6)
            return lm_errf(err, "config.json: routed_scaling_factor must be a positive number");
        c->routed_scaling_factor = (float)json_number_value(rsf);
    }
    if (lm_cfg_int(o, "n_shared_experts", 0, 0, 1024, &v, err)) return -1;
    c->shared_expert_intermediate_size = (int)v * c->moe_intermediate_size;
    c->shared_expert_gated = 0;
    if (lm_cfg_int(o, "first_k_dense_replace", 0, 0, c->n_layers, &v, err)) return -1;
    c->first_k_dense = (int)v;
    if (lm_cfg_int(o, "num_nextn_predict_layers", 0, 0, 64, &v, err)) return -1;
    c->n_nextn_layers = (int)v;
    json_t *qn = json_object_get(o, "use_qk_norm");
    if (qn && !json_is_null(qn) && !json_is_boolean(qn)) return lm_errf(err, "config.json: 'use_qk_norm' must be true or false");
    c->qk_norm = json_is_true(qn) ? LM_QK_NORM_PER_HEAD : LM_QK_NORM_NONE;
    return 0;
}

/* Public config.json values of zai-org/GLM-4.5-Air. */
static const lm_synth_preset presets[] = {
    {.name = "glm-4.5-air", .layers = 46, .hidden = 4096, .heads = 96, .kv_heads = 8, .head_dim = 128,
     .experts = 128, .top_k = 8, .moe_intermediate = 1408, .intermediate = 10944, .shared_intermediate = 1408,
     .vocab = 151552, .max_position = 131072, .rope_theta = 1e6, .rms_eps = 1e-5, .bos = 151329, .eos = 151329,
     .eos2 = 151336, .partial_rotary = 0.5, .attn_bias = 1, .first_dense = 1},
    {.name = NULL},
};

static void synth_config(json_t *c, const lm_synth_preset *p) {
    json_object_set_new(c, "attention_bias", json_boolean(p->attn_bias));
    json_object_set_new(c, "first_k_dense_replace", json_integer(p->first_dense));
    json_object_set_new(c, "head_dim", json_integer(p->head_dim));
    json_object_set_new(c, "moe_intermediate_size", json_integer(p->moe_intermediate));
    json_object_set_new(c, "n_group", json_integer(1));
    json_object_set_new(c, "n_routed_experts", json_integer(p->experts));
    json_object_set_new(c, "n_shared_experts", json_integer(p->shared_intermediate / p->moe_intermediate));
    json_object_set_new(c, "norm_topk_prob", json_true());
    json_object_set_new(c, "num_nextn_predict_layers", json_integer(0));
    json_object_set_new(c, "partial_rotary_factor", json_real(p->partial_rotary));
    json_object_set_new(c, "routed_scaling_factor", json_real(1.0));
    json_object_set_new(c, "topk_group", json_integer(1));
    json_object_set_new(c, "use_qk_norm", json_false());
}

const lm_family lm_family_glm4_moe = {
    .model_type = "glm4_moe",
    .gguf_arch = "glm4moe",
    .hf_architecture = "Glm4MoeForCausalLM",
    .qk_norm = LM_QK_NORM_NONE,
    .router_renorm = LM_RENORM_FROM_CONFIG,
    .window = LM_WINDOW_IGNORED,
    .partial_rope = 1,
    .sigmoid_router = 1,
    .parse_config = parse_config,
    .names = &names,
    .synth_presets = presets,
    .synth_config = synth_config,
};

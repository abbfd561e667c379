/* qwen3_next (Qwen3-Next-80B-A3B, Qwen3-Coder-Next): Gated DeltaNet linear attention in
 * most layers (src/engine/linear_attention.c), gated full attention with partial RoPE
 * and per-head q/k norms in the others, zero-centred RMSNorm weights (HF files store
 * w - 1), and a shared expert with a sigmoid gate beside the routed ones.
 * mlx-lm's sanitize drops the multi-token-prediction head (mtp.*), adds 1 to the norms,
 * moves conv1d's kernel axis last, and quantizes the router and shared_expert_gate at
 * 8 bits. */
#include "models/family.h"

#include "common/error.h"

#include <stdlib.h>
#include <string.h>

/* The Gated DeltaNet shapes and which layers use it (layer_types, or every layer but
 * each full_attention_interval-th), and the shared expert's width. */
int lm_family_qwen3_next_parse_config(lm_config *c, json_t *o, char *err) {
    long long v = 0;
    struct { int *dst; const char *key; long long hi; } f[] = {
        {&c->lin_k_heads, "linear_num_key_heads", 4096},   {&c->lin_v_heads, "linear_num_value_heads", 4096},
        {&c->lin_k_dim, "linear_key_head_dim", 4096},      {&c->lin_v_dim, "linear_value_head_dim", 4096},
        {&c->conv_kernel, "linear_conv_kernel_dim", 64},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (lm_cfg_int(o, f[i].key, LM_CFG_REQUIRED, 1, f[i].hi, &v, err)) return -1;
        *f[i].dst = (int)v;
    }
    if (c->lin_v_heads % c->lin_k_heads)
        return lm_errf(err, "config.json: linear_num_value_heads %d is not a multiple of linear_num_key_heads %d",
                       c->lin_v_heads, c->lin_k_heads);
    c->layer_linear = calloc((size_t)c->n_layers, 1);
    if (!c->layer_linear) return lm_errf(err, "out of memory");
    json_t *types = json_object_get(o, "layer_types");
    if (types && !json_is_null(types)) {
        if (!json_is_array(types) || json_array_size(types) != (size_t)c->n_layers)
            return lm_errf(err, "config.json: layer_types must list %d layer types", c->n_layers);
        for (int l = 0; l < c->n_layers; l++) {
            const char *t = json_string_value(json_array_get(types, (size_t)l));
            if (t && !strcmp(t, "linear_attention")) c->layer_linear[l] = 1;
            else if (!t || strcmp(t, "full_attention") != 0)
                return lm_errf(err, "config.json: layer_types[%d] must be \"linear_attention\" or \"full_attention\"", l);
        }
    } else {
        if (lm_cfg_int(o, "full_attention_interval", 4, 1, 4096, &v, err)) return -1;
        for (int l = 0; l < c->n_layers; l++) c->layer_linear[l] = (l + 1) % v != 0;
    }
    for (int l = 0; l < c->n_layers; l++) c->n_linear_layers += c->layer_linear[l];
    if (lm_cfg_int(o, "shared_expert_intermediate_size", 0, 0, 1 << 20, &v, err)) return -1;
    c->shared_expert_intermediate_size = (int)v;
    c->shared_expert_gated = 1;
    return 0;
}

/* Public config.json values of Qwen/Qwen3-Next-80B-A3B-Instruct, whose shapes
 * Qwen3-Coder-Next shares. */
static const lm_synth_preset presets[] = {
    {.name = "qwen3-coder-next", .layers = 48, .hidden = 2048, .heads = 16, .kv_heads = 2, .head_dim = 256,
     .experts = 512, .top_k = 10, .moe_intermediate = 512, .intermediate = 5120, .shared_intermediate = 512,
     .vocab = 151936, .max_position = 262144, .rope_theta = 1e7, .rms_eps = 1e-6, .bos = 151643,
     .eos = 151645, .eos2 = 151643, .lin_k_heads = 16, .lin_v_heads = 32, .lin_k_dim = 128,
     .lin_v_dim = 128, .conv_kernel = 4, .full_interval = 4, .partial_rotary = 0.25},
    {.name = NULL},
};

static void synth_config(json_t *c, const lm_synth_preset *p) {
    lm_family_qwen_synth_config(c, p);
    json_object_set_new(c, "full_attention_interval", json_integer(p->full_interval));
    json_object_set_new(c, "linear_conv_kernel_dim", json_integer(p->conv_kernel));
    json_object_set_new(c, "linear_key_head_dim", json_integer(p->lin_k_dim));
    json_object_set_new(c, "linear_num_key_heads", json_integer(p->lin_k_heads));
    json_object_set_new(c, "linear_num_value_heads", json_integer(p->lin_v_heads));
    json_object_set_new(c, "linear_value_head_dim", json_integer(p->lin_v_dim));
    json_object_set_new(c, "partial_rotary_factor", json_real(p->partial_rotary));
    json_object_set_new(c, "shared_expert_intermediate_size", json_integer(p->shared_intermediate));
}

const lm_family lm_family_qwen3_next = {
    .model_type = "qwen3_next",
    .gguf_arch = "qwen3next",
    .hf_architecture = "Qwen3NextForCausalLM",
    .qk_norm = LM_QK_NORM_PER_HEAD,
    .router_renorm = LM_RENORM_FROM_CONFIG,
    .window = LM_WINDOW_IGNORED,
    .partial_rope = 1,
    .attn_output_gate = 1,
    .zero_centred_norms = 1,
    .parse_config = lm_family_qwen3_next_parse_config,
    .names = &lm_names_mlp,
    .mlx_router_8bit = {"mlp.gate", "shared_expert_gate"},
    .mlx_drop = "mtp.",
    .mlx_conv1d_moveaxis = 1,
    .mlx_nonleaf_params = {".A_log", ".dt_bias"},
    .synth_presets = presets,
    .synth_config = synth_config,
    .synth_generation = lm_family_qwen_synth_generation,
};

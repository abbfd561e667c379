/* qwen3_5_moe (Qwen3.5 / Qwen3.6 35B-A3B, 122B-A10B, 397B-A17B) and its text-only type
 * qwen3_5_moe_text: qwen3_next's hybrid of Gated DeltaNet and gated full attention
 * (zero-centred norms, per-head q/k norms, partial RoPE, a shared expert with a
 * sigmoid gate), with the linear-attention projections stored separately
 * (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a), the layer order from layer_types,
 * every layer MoE and a router that always renormalises its top-k
 * (Qwen3VLMoeTextTopKRouter). Released checkpoints are the vision-language wrapper:
 * config under text_config, weights under model.language_model. (loader.prefix);
 * the vision tower (model.visual.*) and the multi-token-prediction head (mtp.*) are
 * never read. Text-only positions make its interleaved multimodal RoPE plain RoPE (all
 * three position streams are equal; tests/test_golden.c checks transformers' cos/sin). */
#include "models/family.h"

/* Public config.json values of Qwen/Qwen3.5-35B-A3B (text_config). */
static const lm_synth_preset presets[] = {
    {.name = "qwen3.5-35b-a3b", .layers = 40, .hidden = 2048, .heads = 16, .kv_heads = 2, .head_dim = 256,
     .experts = 256, .top_k = 8, .moe_intermediate = 512, .intermediate = 0, .shared_intermediate = 512,
     .vocab = 248320, .max_position = 262144, .rope_theta = 1e7, .rms_eps = 1e-6, .bos = 248044, .eos = 248046,
     .eos2 = 248044, .lin_k_heads = 16, .lin_v_heads = 32, .lin_k_dim = 128, .lin_v_dim = 128, .conv_kernel = 4,
     .full_interval = 4, .partial_rotary = 0.25},
    {.name = NULL},
};

static void synth_config(json_t *c, const lm_synth_preset *p) {
    lm_family_qwen_synth_config(c, p);
    json_object_del(c, "mlp_only_layers");
    json_object_del(c, "decoder_sparse_step");
    json_object_del(c, "norm_topk_prob");
    json_t *types = json_array();
    for (int l = 0; l < p->layers; l++)
        json_array_append_new(types, json_string((l + 1) % p->full_interval ? "linear_attention" : "full_attention"));
    json_object_set_new(c, "layer_types", types);
    json_object_set_new(c, "linear_conv_kernel_dim", json_integer(p->conv_kernel));
    json_object_set_new(c, "linear_key_head_dim", json_integer(p->lin_k_dim));
    json_object_set_new(c, "linear_num_key_heads", json_integer(p->lin_k_heads));
    json_object_set_new(c, "linear_num_value_heads", json_integer(p->lin_v_heads));
    json_object_set_new(c, "linear_value_head_dim", json_integer(p->lin_v_dim));
    json_object_set_new(c, "partial_rotary_factor", json_real(p->partial_rotary));
    json_object_set_new(c, "shared_expert_intermediate_size", json_integer(p->shared_intermediate));
}

const lm_family lm_family_qwen3_5_moe = {
    .model_type = "qwen3_5_moe",
    .aliases = {"qwen3_5_moe_text"},
    .gguf_arch = "qwen35moe",
    .hf_architecture = "Qwen3_5MoeForCausalLM", /* the text model (synth writes no vision tower) */
    .qk_norm = LM_QK_NORM_PER_HEAD,
    .router_renorm = LM_RENORM_ALWAYS,
    .window = LM_WINDOW_IGNORED,
    .partial_rope = 1,
    .attn_output_gate = 1,
    .zero_centred_norms = 1,
    .linear_separate_proj = 1,
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

/* qwen3_moe (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder): per-head q/k RMSNorm, softmax
 * top-k router renormalised when norm_topk_prob says so, dense layers through
 * mlp_only_layers / decoder_sparse_step. use_sliding_window is refused (no checkpoint
 * sets it). mlx-lm quantizes the router (mlp.gate) at 8 bits. */
#include "models/family.h"

/* Public config.json values of Qwen/Qwen3-30B-A3B; "tiny" is a small model of the same
 * structure for tests and quick runs. */
static const lm_synth_preset presets[] = {
    {.name = "qwen3-30b-a3b", .layers = 48, .hidden = 2048, .heads = 32, .kv_heads = 4, .head_dim = 128,
     .experts = 128, .top_k = 8, .moe_intermediate = 768, .intermediate = 6144, .vocab = 151936,
     .max_position = 40960, .rope_theta = 1e6, .rms_eps = 1e-6, .bos = 151643, .eos = 151645,
     .eos2 = 151643, .partial_rotary = 1.0},
    {.name = "tiny", .layers = 4, .hidden = 256, .heads = 4, .kv_heads = 2, .head_dim = 64, .experts = 16,
     .top_k = 4, .moe_intermediate = 128, .intermediate = 512, .vocab = 2048, .max_position = 4096,
     .rope_theta = 1e6, .rms_eps = 1e-6, .bos = 1, .eos = 2, .eos2 = -1, .partial_rotary = 1.0},
    {.name = NULL},
};

void lm_family_qwen_synth_config(json_t *c, const lm_synth_preset *p) {
    json_object_set_new(c, "attention_bias", json_false());
    json_object_set_new(c, "decoder_sparse_step", json_integer(1));
    json_object_set_new(c, "head_dim", json_integer(p->head_dim ? p->head_dim : p->hidden / p->heads));
    json_object_set_new(c, "mlp_only_layers", json_array());
    json_object_set_new(c, "moe_intermediate_size", json_integer(p->moe_intermediate));
    json_object_set_new(c, "norm_topk_prob", json_true());
    json_object_set_new(c, "num_experts", json_integer(p->experts));
    json_object_set_new(c, "rope_scaling", json_null());
    json_object_set_new(c, "router_aux_loss_coef", json_real(0.001));
    json_object_set_new(c, "use_sliding_window", json_false());
}

void lm_family_qwen_synth_generation(json_t *g, const lm_synth_preset *p) {
    json_object_set_new(g, "pad_token_id", json_integer(p->bos));
    json_object_set_new(g, "temperature", json_real(0.7));
    json_object_set_new(g, "top_k", json_integer(20));
    json_object_set_new(g, "top_p", json_real(0.8));
}

static void synth_config(json_t *c, const lm_synth_preset *p) {
    lm_family_qwen_synth_config(c, p);
    json_object_set_new(c, "max_window_layers", json_integer(p->layers));
    json_object_set_new(c, "sliding_window", json_null());
}

const lm_family lm_family_qwen3_moe = {
    .model_type = "qwen3_moe",
    .gguf_arch = "qwen3moe",
    .hf_architecture = "Qwen3MoeForCausalLM",
    .qk_norm = LM_QK_NORM_PER_HEAD,
    .router_renorm = LM_RENORM_FROM_CONFIG,
    .window = LM_WINDOW_OPT_IN,
    .names = &lm_names_mlp,
    .mlx_router_8bit = {"mlp.gate"},
    .synth_presets = presets,
    .synth_config = synth_config,
    .synth_generation = lm_family_qwen_synth_generation,
};

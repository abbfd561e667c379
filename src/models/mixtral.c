/* mixtral (Mixtral-8x7B, 8x22B): no q/k norm; the router takes a softmax over the chosen
 * experts' logits (always renormalised); the experts' width is intermediate_size;
 * sliding_window applies when set. Older files name the MoE block block_sparse_moe with
 * experts.E.w1/w3/w2, transformers 5 names it mlp; mlx-lm keeps block_sparse_moe and
 * leaves the router at --bits. GGUF files call the architecture "llama". */
#include "models/family.h"

static const lm_tensor_names names = {
    .moe_blocks = {"block_sparse_moe", "mlp"},
    .router = "gate",
    .expert_gate = {"w1", "gate_proj"},
    .expert_up = {"w3", "up_proj"},
    .expert_down = {"w2", "down_proj"},
    .shared_expert = "shared_expert",
    .shared_expert_gate = "shared_expert_gate",
};

/* Public config.json values of mistralai/Mixtral-8x7B-v0.1. */
static const lm_synth_preset presets[] = {
    {.name = "mixtral-8x7b", .layers = 32, .hidden = 4096, .heads = 32, .kv_heads = 8, .head_dim = 0,
     .experts = 8, .top_k = 2, .moe_intermediate = 14336, .intermediate = 14336, .vocab = 32000,
     .max_position = 32768, .rope_theta = 1e6, .rms_eps = 1e-5, .bos = 1, .eos = 2, .eos2 = -1,
     .partial_rotary = 1.0},
    {.name = NULL},
};

static void synth_config(json_t *c, const lm_synth_preset *p) {
    json_object_set_new(c, "num_local_experts", json_integer(p->experts));
    json_object_set_new(c, "router_aux_loss_coef", json_real(0.02));
    json_object_set_new(c, "sliding_window", json_null());
}

const lm_family lm_family_mixtral = {
    .model_type = "mixtral",
    .gguf_arch = "llama",
    .hf_architecture = "MixtralForCausalLM",
    .qk_norm = LM_QK_NORM_NONE,
    .router_renorm = LM_RENORM_ALWAYS,
    .window = LM_WINDOW_WHEN_SET,
    .experts_use_intermediate_size = 1,
    .names = &names,
    .synth_presets = presets,
    .synth_config = synth_config,
};

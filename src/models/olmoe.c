/* olmoe (OLMoE-1B-7B): q/k RMSNorm over the whole projection, optional clip_qkv, softmax
 * top-k router renormalised when norm_topk_prob says so. mlx-lm ties the embeddings by
 * default and leaves the router at --bits. No synth preset. */
#include "models/family.h"

const lm_family lm_family_olmoe = {
    .model_type = "olmoe",
    .gguf_arch = "olmoe",
    .hf_architecture = "OlmoeForCausalLM",
    .qk_norm = LM_QK_NORM_FULL,
    .router_renorm = LM_RENORM_FROM_CONFIG,
    .window = LM_WINDOW_IGNORED,
    .moe_blocks = {"mlp"},
    .router = "gate",
    .expert_gate = {"gate_proj"},
    .expert_up = {"up_proj"},
    .expert_down = {"down_proj"},
    .shared_expert = "shared_expert",
    .shared_expert_gate = "shared_expert_gate",
    .mlx_tie_default = 1,
};

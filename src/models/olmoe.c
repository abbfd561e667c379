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
    .names = &lm_names_mlp,
    .mlx_tie_default = 1,
};

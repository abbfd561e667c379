/* gpt_oss (gpt-oss-20b, gpt-oss-120b), per transformers' modeling_gpt_oss.py:
 * attention with q/k/v/o biases and a learned sink logit per head in the softmax
 * denominator; sliding-window (layer_types "sliding_attention", by default every
 * even layer) and full layers alternating; YaRN RoPE; a router with a bias that
 * takes the top-k logits and a softmax over them; experts with biases whose
 * gate_up_proj interleaves gate (even) and up (odd) outputs, activated by the clamped
 * SwiGLU (swiglu_limit, default 7.0; alpha 1.702) as (up + 1) * gate * sigmoid(alpha
 * gate). The experts' width is intermediate_size. Hugging Face float files store the
 * experts transposed ([E, in, out]); the released files store them as MXFP4
 * (NAME_blocks / NAME_scales, [E, out, in / 32, 16] and [E, out, in / 32]), with
 * quantization_config {quant_method: mxfp4}; weights.c binds both. */
#include "models/family.h"

#include "common/error.h"

#include <stdlib.h>

static const lm_tensor_names names = {
    .moe_blocks = {"mlp"},
    .router = "router",
    .expert_gate = {"gate_proj"},
    .expert_up = {"up_proj"},
    .expert_down = {"down_proj"},
    .shared_expert = "shared_expert", /* gpt-oss has none (shared_expert_intermediate_size 0) */
    .shared_expert_gate = "shared_expert_gate",
};

static int parse_config(lm_config *c, json_t *o, char *err) {
    json_t *ab = json_object_get(o, "attention_bias");
    if (!ab || json_is_null(ab)) c->attention_bias = 1; /* GptOssConfig's default */
    c->attn_sinks = 1;
    c->router_topk_softmax = 1;
    c->swiglu_clamped = 1;
    c->swiglu_alpha = 1.702f;
    json_t *lim = json_object_get(o, "swiglu_limit");
    c->swiglu_limit = 7.0f;
    if (lim && !json_is_null(lim)) {
        if (!json_is_number(lim) || !(json_number_value(lim) > 0))
            return lm_errf(err, "config.json: 'swiglu_limit' must be a positive number");
        c->swiglu_limit = (float)json_number_value(lim);
    }
    if (c->sliding_window > 0 && !c->layer_sliding) { /* GptOssConfig: sliding on even layers */
        c->layer_sliding = calloc((size_t)c->n_layers, 1);
        if (!c->layer_sliding) return lm_errf(err, "out of memory");
        for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = (l + 1) % 2 != 0;
    }
    return 0;
}

const lm_family lm_family_gpt_oss = {
    .model_type = "gpt_oss",
    .gguf_arch = "gpt-oss",
    .hf_architecture = "GptOssForCausalLM",
    .qk_norm = LM_QK_NORM_NONE,
    .router_renorm = LM_RENORM_ALWAYS,
    .window = LM_WINDOW_PER_LAYER,
    .experts_use_intermediate_size = 1,
    .parse_config = parse_config,
    .names = &names,
};

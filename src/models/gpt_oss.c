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

/* Public config.json values of openai/gpt-oss-120b and openai/gpt-oss-20b (they differ
 * only in layers and experts); synth writes them in the released layout
 * (LM_SYNTH_HF_MXFP4). */
#define GPT_OSS_PRESET(NAME, LAYERS, EXPERTS)                                                             \
    {.name = (NAME), .layers = (LAYERS), .hidden = 2880, .heads = 64, .kv_heads = 8, .head_dim = 64,          \
     .experts = (EXPERTS), .top_k = 4, .moe_intermediate = 2880, .intermediate = 2880, .vocab = 201088,     \
     .max_position = 131072, .rope_theta = 150000, .rms_eps = 1e-5, .bos = 199998, .eos = 200002,         \
     .eos2 = -1, .partial_rotary = 1.0, .attn_bias = 1, .o_bias = 1, .attn_sinks = 1, .router_bias = 1,    \
     .fused_experts = 1}
static const lm_synth_preset presets[] = {
    GPT_OSS_PRESET("gpt-oss-120b", 36, 128),
    GPT_OSS_PRESET("gpt-oss-20b", 24, 32),
    {.name = NULL},
};

#define GPT_OSS_PAD 199999   /* <|endoftext|> */
#define GPT_OSS_CALL 200012  /* <|call|> */
#define GPT_OSS_WINDOW 128
#define GPT_OSS_YARN_FACTOR 32.0
#define GPT_OSS_YARN_ORIGINAL 4096

static void synth_config(json_t *c, const lm_synth_preset *p) {
    json_object_del(c, "bos_token_id"); /* the released config.json has none */
    json_object_set_new(c, "attention_bias", json_true());
    json_object_set_new(c, "experts_per_token", json_integer(p->top_k));
    json_object_set_new(c, "head_dim", json_integer(p->head_dim));
    json_object_set_new(c, "initial_context_length", json_integer(GPT_OSS_YARN_ORIGINAL));
    json_t *types = json_array();
    for (int l = 0; l < p->layers; l++)
        json_array_append_new(types, json_string(l % 2 ? "full_attention" : "sliding_attention"));
    json_object_set_new(c, "layer_types", types);
    json_object_set_new(c, "num_local_experts", json_integer(p->experts));
    /* A vocabulary shrunk by the test-only --vocab has no room for the real ids. */
    json_object_set_new(c, "pad_token_id", json_integer(p->vocab > GPT_OSS_PAD ? GPT_OSS_PAD : p->eos));
    json_t *rope = json_object();
    json_object_set_new(rope, "beta_fast", json_real(32.0));
    json_object_set_new(rope, "beta_slow", json_real(1.0));
    json_object_set_new(rope, "factor", json_real(GPT_OSS_YARN_FACTOR));
    json_object_set_new(rope, "original_max_position_embeddings", json_integer(GPT_OSS_YARN_ORIGINAL));
    json_object_set_new(rope, "rope_type", json_string("yarn"));
    json_object_set_new(rope, "truncate", json_false());
    json_object_set_new(c, "rope_scaling", rope);
    json_object_set_new(c, "router_aux_loss_coef", json_real(0.9));
    json_object_set_new(c, "sliding_window", json_integer(GPT_OSS_WINDOW));
    json_object_set_new(c, "swiglu_limit", json_real(7.0));
}

/* generation_config.json: the harmony turn ends (<|return|>, <|endoftext|>, <|call|>). */
static void synth_generation(json_t *g, const lm_synth_preset *p) {
    if (p->vocab <= GPT_OSS_CALL) return; /* shrunk vocabulary: the single eos stays */
    json_t *eos = json_array();
    json_array_append_new(eos, json_integer(p->eos));
    json_array_append_new(eos, json_integer(GPT_OSS_PAD));
    json_array_append_new(eos, json_integer(GPT_OSS_CALL));
    json_object_set_new(g, "eos_token_id", eos);
    json_object_set_new(g, "pad_token_id", json_integer(GPT_OSS_PAD));
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
    .synth_presets = presets,
    .synth_layout = LM_SYNTH_HF_MXFP4,
    .synth_config = synth_config,
    .synth_generation = synth_generation,
};

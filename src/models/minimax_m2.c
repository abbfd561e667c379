/* minimax_m2 (MiniMax-M2, M2.1, M2.5): q/k RMSNorm over the whole q and k projections
 * (not per head), partial RoPE over the first rotary_dim dims of each head, and a
 * block_sparse_moe whose router takes sigmoid(logits), chooses the top-k by
 * sigmoid + e_score_correction_bias and weighs them by the renormalised sigmoids
 * (transformers' MiniMaxM2TopKRouter always renormalises and never scales). The
 * experts' width is intermediate_size. Files name the experts w1 (gate), w3 (up),
 * w2 (down); transformers 5 calls the block mlp. mlx-lm quantizes the router at 8 bits. */
#include "models/family.h"

#include "common/error.h"

#include <string.h>

static const lm_tensor_names names = {
    .moe_blocks = {"block_sparse_moe", "mlp"},
    .router = "gate",
    .expert_gate = {"w1", "gate_proj"},
    .expert_up = {"w3", "up_proj"},
    .expert_down = {"w2", "down_proj"},
    .shared_expert = "shared_expert",
    .shared_expert_gate = "shared_expert_gate",
    .correction_bias = {"e_score_correction_bias", "gate.e_score_correction_bias"},
};

/* The sigmoid router, and rotary_dim: the released config.json says both rotary_dim
 * and partial_rotary_factor; transformers reads the factor, mlx-lm rotary_dim. One alone
 * decides; both must agree. */
static int parse_config(lm_config *c, json_t *o, char *err) {
    json_t *sf = json_object_get(o, "scoring_func");
    if (sf && json_is_string(sf) && strcmp(json_string_value(sf), "sigmoid") != 0)
        return lm_errf(err, "config.json: scoring_func '%s' is not supported for minimax_m2 (only sigmoid)",
                       json_string_value(sf));
    long long rd = 0;
    if (lm_cfg_int(o, "rotary_dim", 0, 0, c->head_dim, &rd, err)) return -1;
    if (rd > 0) {
        if (rd % 2) return lm_errf(err, "config.json: rotary_dim %lld must be even", rd);
        if (c->rope_dim != c->head_dim && c->rope_dim != (int)rd)
            return lm_errf(err, "config.json: rotary_dim %lld disagrees with partial_rotary_factor (%d dims)", rd,
                           c->rope_dim);
        c->rope_dim = (int)rd;
    }
    return 0;
}

/* Public config.json values of MiniMaxAI/MiniMax-M2. */
static const lm_synth_preset presets[] = {
    {.name = "minimax-m2", .layers = 62, .hidden = 3072, .heads = 48, .kv_heads = 8, .head_dim = 128,
     .experts = 256, .top_k = 8, .moe_intermediate = 1536, .intermediate = 1536, .vocab = 200064,
     .max_position = 196608, .rope_theta = 5e6, .rms_eps = 1e-6, .bos = 200034, .eos = 200020, .eos2 = -1,
     .partial_rotary = 0.5},
    {.name = NULL},
};

static void synth_config(json_t *c, const lm_synth_preset *p) {
    json_object_set_new(c, "head_dim", json_integer(p->head_dim));
    json_object_set_new(c, "num_local_experts", json_integer(p->experts));
    json_object_set_new(c, "rotary_dim", json_integer((int)(p->head_dim * p->partial_rotary)));
    json_object_set_new(c, "partial_rotary_factor", json_real(p->partial_rotary));
    json_object_set_new(c, "scoring_func", json_string("sigmoid"));
    json_object_set_new(c, "use_routing_bias", json_true());
    json_object_set_new(c, "use_qk_norm", json_true());
    json_object_set_new(c, "router_aux_loss_coef", json_real(0.001));
}

const lm_family lm_family_minimax_m2 = {
    .model_type = "minimax_m2",
    .gguf_arch = "minimax-m2",
    .hf_architecture = "MiniMaxM2ForCausalLM",
    .qk_norm = LM_QK_NORM_FULL,
    .router_renorm = LM_RENORM_ALWAYS,
    .window = LM_WINDOW_IGNORED,
    .experts_use_intermediate_size = 1,
    .partial_rope = 1,
    .sigmoid_router = 1,
    .parse_config = parse_config,
    .names = &names,
    .mlx_router_8bit = {"block_sparse_moe.gate"},
    .synth_presets = presets,
    .synth_config = synth_config,
};

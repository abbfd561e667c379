/* Model hyper-parameters, parsed from config.json (+ generation_config.json).
 *
 * One struct serves every family; fields a family does not use stay at their
 * defaults. The family (models/family.h) decides which blocks a layer uses by
 * filling the switches below (qk_norm, norm_topk_prob, attn_output_gate,
 * zero_centred_norms, sliding_window, layer_linear, shared expert); the forward
 * pass reads only these fields, never the family. Parsing validates ranges and consistency up front so the forward pass
 * can trust every number here.
 */
#ifndef LAZYMOE_CONFIG_H
#define LAZYMOE_CONFIG_H

#include <stdint.h>

#define LM_MAX_EOS 8
#define LM_MAX_QUANT_OVERRIDES 4096

struct lm_family; /* models/family.h */

typedef enum {
    LM_QK_NORM_NONE = 0,
    LM_QK_NORM_PER_HEAD, /* RMSNorm over head_dim of each head (qwen3) */
    LM_QK_NORM_FULL,     /* RMSNorm over the whole projection (olmoe) */
} lm_qk_norm;

typedef enum { LM_ROPE_DEFAULT = 0, LM_ROPE_LINEAR, LM_ROPE_YARN } lm_rope_type;

/* Per-module quantization override from config.json's "quantization" block. */
typedef struct {
    char *path; /* module path, e.g. "model.layers.0.mlp.gate" */
    int bits;   /* 0 = not quantized */
    int group_size;
    int mxfp4; /* "mode": "mxfp4" (MLX mode; an override without "mode" is affine, as in mlx) */
} lm_quant_override;

typedef struct {
    char model_type[32];
    const struct lm_family *family; /* the registry entry model_type named */

    int vocab_size;
    int hidden_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int intermediate_size;     /* dense MLP layers */
    int moe_intermediate_size; /* one expert */
    int n_experts;
    int top_k;
    int norm_topk_prob;
    int decoder_sparse_step;
    int first_k_dense;  /* layers 0 .. first_k_dense-1 are dense (first_k_dense_replace) */
    uint8_t *mlp_only; /* [n_layers]: 1 if the layer is dense */
    int tie_word_embeddings;
    int attention_bias;
    int attn_output_gate;  /* q_proj also yields a per-head gate: out *= sigmoid(gate) (qwen3_next) */
    int zero_centred_norms; /* RMSNorm weights stored as w - 1 (x * (1 + w)) in HF files (qwen3_next) */
    int rope_dim;           /* leading dims of a head that RoPE rotates (partial_rotary_factor) */
    int shared_expert_intermediate_size; /* 0 = no shared expert */
    int shared_expert_gated;             /* the shared expert's output is scaled by sigmoid(h . w) */
    /* Sigmoid router (glm4_moe, minimax_m2): experts chosen by sigmoid(logit) + the
     * layer's e_score_correction_bias within the topk_group best of n_group groups;
     * weights are the unbiased sigmoids, renormalised (norm_topk_prob), times
     * routed_scaling_factor. router_sigmoid 0: softmax top-k. */
    int router_sigmoid;
    int n_group, topk_group;
    float routed_scaling_factor;
    /* Multi-token-prediction layers stored after the last layer (glm4_moe's
     * num_nextn_predict_layers): not part of the forward pass, never read. */
    int n_nextn_layers;
    /* Gated DeltaNet projections stored separately (qwen3_5_moe: in_proj_qkv, in_proj_z,
     * in_proj_b, in_proj_a) rather than fused per key head (qwen3_next). */
    int lin_separate_proj;
    lm_qk_norm qk_norm;
    float clip_qkv; /* 0 = none */
    int attn_sinks;          /* attention has a sink logit per head (self_attn.sinks, gpt-oss) */
    int router_topk_softmax; /* router: top-k of the logits, then softmax over those k (gpt-oss) */
    int swiglu_clamped;      /* experts use the clamped SwiGLU (gpt-oss): alpha, limit below */
    float swiglu_alpha, swiglu_limit;
    float rms_norm_eps;
    int sliding_window; /* 0 = full attention */
    /* [n_layers] 1 where layer_types says "sliding_attention" (the window applies only
     * there); NULL: sliding_window applies to every layer. */
    uint8_t *layer_sliding;
    int max_position_embeddings;

    /* Gated DeltaNet linear attention (qwen3_next); layer_linear NULL for other families. */
    uint8_t *layer_linear; /* [n_layers]: 1 if the layer is linear attention */
    int n_linear_layers;
    int lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim, conv_kernel;
    /* Value head h reads key head h % lin_k_heads (llama.cpp's qwen35moe files, whose
     * converter reorders the value heads so that ggml's tiled broadcast pairs them)
     * rather than h / (lin_v_heads / lin_k_heads) (Hugging Face's repeat_interleave). */
    int lin_v_tiled;

    double rope_theta;
    lm_rope_type rope_type;
    double rope_factor;
    /* YaRN (rope_type "yarn"): the pretrained context, the rotation bounds of the
     * frequency ramp, whether those bounds are rounded to whole dims, and the
     * attention factor cos and sin are multiplied by (models/rope.c). */
    int rope_orig_max_pos;
    double rope_beta_fast, rope_beta_slow;
    int rope_truncate;
    double rope_attn_factor;

    int n_eos;
    int32_t eos_ids[LM_MAX_EOS];
    int32_t bos_id; /* -1 if none */

    /* MLX quantization: bits == 0 means the file is not quantized; quant_mxfp4: the
     * default mode is "mxfp4" (e2m1 codes, one e8m0 scale per 32, no biases; bits 4,
     * group size 32) rather than "affine". */
    int quant_bits;
    int quant_group_size;
    int quant_mxfp4;
    int n_quant_overrides;
    lm_quant_override *quant_overrides;
} lm_config;

/* Parses DIR/config.json and, if present, DIR/generation_config.json. */
int lm_config_load(lm_config *cfg, const char *dir, char *err);
/* Parses config.json text (for tests and fuzzing); generation config optional (NULL). */
int lm_config_parse(lm_config *cfg, const char *config_json, const char *generation_json, char *err);
void lm_config_free(lm_config *cfg);

/* True if layer l uses routed experts rather than a dense MLP. */
static inline int lm_config_layer_is_moe(const lm_config *c, int l) { return !c->mlp_only[l]; }

/* Quantization of the module at `path` (e.g. "model.layers.3.mlp.gate"): fills bits,
 * group size (bits 0 = stored as float) and whether its mode is mxfp4 (mxfp4 may be
 * NULL). */
void lm_config_module_quant(const lm_config *c, const char *path, int *bits, int *group_size, int *mxfp4);

/* The sliding window of layer l (0 = full attention). */
static inline int lm_config_layer_window(const lm_config *c, int l) {
    return c->layer_sliding && !c->layer_sliding[l] ? 0 : c->sliding_window;
}

/* RoPE inverse frequencies inv_freq[rope_dim / 2] (float32, as transformers computes
 * them) and the factor cos and sin are scaled by (1 unless YaRN); models/rope.c. */
void lm_rope_params(const lm_config *c, float *inv_freq, float *attn_scale);

static inline int lm_config_layer_is_linear(const lm_config *c, int l) {
    return c->layer_linear && c->layer_linear[l];
}

#endif

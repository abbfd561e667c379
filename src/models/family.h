/* Model families: one descriptor per family, one list of them.
 *
 * A family is everything that differs between, say, qwen3_moe and mixtral checkpoints
 * before the shared forward pass runs: the names it goes by, the config.json keys and
 * defaults it reads, how its tensors are named, which blocks its layers use (written
 * into lm_config fields that the forward pass reads), and what `convert` (mlx-lm's
 * per-family rules) and `synth` (presets at real shapes) need. Each family lives in
 * its own file, src/models/<model_type>.c; families.c lists them. Config parsing,
 * weight binding, convert, synth and the "not supported" messages all read that list,
 * so adding a family is its file, one line in families.c and tests (every registered
 * family must parse a config and bind a golden fixture: tests/test_families.c).
 *
 * Descriptors are immutable data (plus a few hooks); nothing here allocates.
 */
#ifndef LAZYMOE_FAMILY_H
#define LAZYMOE_FAMILY_H

#include "models/config.h"

#include <jansson.h>
#include <limits.h>

/* How the softmax top-k router weighs the chosen experts. */
typedef enum {
    LM_RENORM_FROM_CONFIG = 0, /* renormalise iff config.json's norm_topk_prob (default false) */
    LM_RENORM_ALWAYS,          /* softmax over the top-k logits, i.e. always renormalised (mixtral) */
} lm_router_renorm;

/* What config.json's sliding-window keys mean for the family. */
typedef enum {
    LM_WINDOW_IGNORED = 0, /* full attention whatever sliding_window says */
    LM_WINDOW_WHEN_SET,    /* sliding_window > 0 applies (mixtral) */
    LM_WINDOW_OPT_IN,      /* use_sliding_window turns it on: refused as not supported yet (qwen3_moe) */
    LM_WINDOW_PER_LAYER,   /* sliding_window applies to the layers layer_types calls "sliding_attention"
                            * (every layer when layer_types is absent, unless the family's
                            * parse_config fills lm_config.layer_sliding itself) */
} lm_window_rule;

/* A synthetic model's shape (`lazymoe synth` presets): public config.json values of
 * a real checkpoint of the family. */
typedef struct {
    const char *name; /* preset name, e.g. "qwen3-30b-a3b" */
    double rope_theta, rms_eps;
    double partial_rotary;
    int layers, hidden, heads, kv_heads;
    int head_dim;         /* 0: hidden / heads, and no head_dim key in config.json */
    int experts, top_k, moe_intermediate;
    int intermediate;     /* config's intermediate_size (mixtral: the experts') */
    int shared_intermediate; /* 0: no shared expert */
    int vocab, max_position;
    int bos, eos, eos2;   /* eos2 < 0: one eos id */
    /* Gated DeltaNet (full_interval 0: every layer is full attention) */
    int lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim, conv_kernel, full_interval;
    int attn_bias;   /* q/k/v projections have biases (glm4_moe) */
    int first_dense; /* the first layers are dense MLPs of `intermediate` (first_k_dense_replace) */
    /* gpt-oss: o_proj bias, a learned sink logit per head (self_attn.sinks), a router
     * bias, and fused experts (gate_up_proj with gate / up rows interleaved, down_proj,
     * and their per-expert biases NAME_bias) instead of gate / up / down stacks. */
    int o_bias, attn_sinks, router_bias, fused_experts;
} lm_synth_preset;

/* How `synth` stores a family's tensors. */
typedef enum {
    /* mlx-lm's converted checkpoints: every matrix MLX affine (--bits, --group-size),
     * routers as the family's mlx-lm rule says, vectors BF16 (synth.h). */
    LM_SYNTH_MLX_AFFINE = 0,
    /* The released gpt-oss files: routed expert stacks MXFP4 (NAME_blocks uint8
     * [E, out, in / 32, 16], NAME_scales uint8 e8m0 [E, out, in / 32]), everything else
     * BF16 under its Hugging Face name, quantization_config {quant_method: mxfp4}. */
    LM_SYNTH_HF_MXFP4,
} lm_synth_layout;

/* How a family names the tensors of its MoE blocks inside model.layers.N (Hugging Face
 * and MLX files). MLX stacked (BLOCK.switch_mlp.{gate,up,down}_proj) and transformers-5
 * fused (BLOCK.experts.gate_up_proj / down_proj) expert layouts are the same for every
 * family; attention, norms and dense MLPs use the common Llama names (weights.c). */
typedef struct {
    const char *moe_blocks[3];  /* module of the router and experts, tried in order; [0] is mlx-lm's */
    const char *router;         /* router module inside the MoE block ("gate") */
    /* Per-expert projections (legacy HF layout BLOCK.experts.E.NAME), aliases tried in order. */
    const char *expert_gate[3], *expert_up[3], *expert_down[3];
    const char *shared_expert;      /* shared expert module inside the MoE block */
    const char *shared_expert_gate; /* its [1, H] sigmoid gate (config's shared_expert_gated) */
    /* The sigmoid router's e_score_correction_bias [E] inside the MoE block, aliases
     * tried in order (glm4_moe keeps it in the router, minimax_m2 beside it). */
    const char *correction_bias[2];
} lm_tensor_names;

/* mlp.gate, mlp.experts.E.{gate,up,down}_proj, mlp.shared_expert(_gate): the names of
 * qwen3_moe, olmoe and qwen3_next (families.c). */
extern const lm_tensor_names lm_names_mlp;

typedef struct lm_family {
    /* ---- names ---- */
    const char *model_type;     /* Hugging Face config.json model_type */
    const char *aliases[4];     /* other model_type spellings accepted (NULL-terminated) */
    const char *gguf_arch;      /* GGUF general.architecture (mixtral files say "llama"); set: read from GGUF */
    const char *hf_architecture; /* config.json "architectures" entry, e.g. "Qwen3MoeForCausalLM" */

    /* ---- config.json: family keys and defaults (see config.c for the common keys) ---- */
    lm_qk_norm qk_norm;            /* q/k RMSNorm: none, per head, or over the projection */
    lm_router_renorm router_renorm;
    lm_window_rule window;
    int experts_use_intermediate_size; /* the experts' width is intermediate_size (mixtral) */
    int partial_rope;              /* partial_rotary_factor < 1 allowed */
    int attn_output_gate;          /* q_proj also yields a per-head sigmoid output gate */
    int zero_centred_norms;        /* HF files store RMSNorm weights as w - 1 */
    int sigmoid_router;            /* sigmoid router with e_score_correction_bias (config router_sigmoid) */
    int linear_separate_proj;      /* Gated DeltaNet projections stored separately (config lin_separate_proj) */
    /* Family-only keys, read after the common ones and RoPE (NULL: none). o is the text
     * model's config object; returns 0 or -1 with err set. */
    int (*parse_config)(lm_config *c, json_t *o, char *err);

    /* ---- tensor names ---- */
    const lm_tensor_names *names;

    /* ---- convert (mlx-lm's rules for the family) ---- */
    int mlx_tie_default;            /* mlx-lm ModelArgs default of tie_word_embeddings */
    /* Modules quantized at 8 bits, group 64 whatever --bits says (mlx-lm's predicate),
     * matched as suffixes of the module path ("mlp.gate"). */
    const char *mlx_router_8bit[3];
    const char *mlx_drop;           /* tensors whose name contains this are not converted (NULL: none) */
    int mlx_conv1d_moveaxis;        /* depthwise conv1d [C, 1, K] -> [C, K, 1] */
    /* Parameters of non-leaf modules, which mlx-lm's get_total_parameters skips (suffixes). */
    const char *mlx_nonleaf_params[3];

    /* ---- synth ---- */
    const lm_synth_preset *synth_presets; /* terminated by a NULL name; NULL: none */
    lm_synth_layout synth_layout;
    /* Family keys of a synthetic config.json / generation_config.json (NULL: none). */
    void (*synth_config)(json_t *cfg, const lm_synth_preset *p);
    void (*synth_generation)(json_t *gen, const lm_synth_preset *p);
} lm_family;

/* The registry, in a fixed order (families.c); NULL-terminated. */
extern const lm_family *const lm_families[];

/* The family whose model_type (or alias) is `model_type`; NULL if none. */
const lm_family *lm_family_find(const char *model_type);
/* The family whose GGUF architecture name is `arch`; NULL if none. */
const lm_family *lm_family_find_gguf(const char *arch);
/* "qwen3_moe, mixtral, olmoe, qwen3_next": the registered model types, for messages. */
const char *lm_family_names(void);
/* Every synth preset of every family, comma-separated. */
const char *lm_family_preset_names(void);
/* The preset named `name` (and its family in *fam); NULL if none. */
const lm_synth_preset *lm_family_find_preset(const char *name, const lm_family **fam);
/* True if module `path` (no ".weight") is quantized at 8 bits by mlx-lm's rule. */
int lm_family_router_8bit(const lm_family *f, const char *path);

/* config.json readers for parse_config hooks (config.c): a value absent or null takes
 * `def` (LM_CFG_REQUIRED: absence is an error); a wrong type or a value out of range is
 * an error naming the key. */
#define LM_CFG_REQUIRED LLONG_MIN
int lm_cfg_int(json_t *o, const char *key, long long def, long long lo, long long hi, long long *out, char *err);

/* The families (one file each). */
extern const lm_family lm_family_qwen3_moe, lm_family_mixtral, lm_family_olmoe, lm_family_qwen3_next;
extern const lm_family lm_family_gpt_oss, lm_family_qwen3_5_moe, lm_family_minimax_m2, lm_family_glm4_moe;

/* qwen3_next's parse_config (Gated DeltaNet shapes, layer_types, gated shared expert),
 * which qwen3_5_moe shares. */
int lm_family_qwen3_next_parse_config(lm_config *c, json_t *o, char *err);

/* Shared by the qwen families: the config.json keys of synthetic Qwen MoE checkpoints
 * and their sampling defaults (qwen3_moe.c). */
void lm_family_qwen_synth_config(json_t *cfg, const lm_synth_preset *p);
void lm_family_qwen_synth_generation(json_t *gen, const lm_synth_preset *p);

#endif

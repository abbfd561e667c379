/* The parameterised blocks the forward pass composes (forward.c).
 *
 * A layer is a token mixer (attention or linear attention) and a feed-forward
 * block (dense MLP or mixture of experts), each behind an RMSNorm and added to the
 * residual stream. What differs between families is data in these structs,
 * derived from the config and the layer's weights (lm_layer_blocks), not a copy of
 * the forward pass: a new family fills the fields it needs (a router kind, a
 * window per layer, sinks) and the block does the rest with backend operations.
 * Weight pointers are views into lm_weights (host memory on the CPU backend).
 */
#ifndef LAZYMOE_BLOCKS_H
#define LAZYMOE_BLOCKS_H

#include "kernels/backend.h"
#include "models/model.h"

/* How positions enter attention. Only RoPE today; room for others (ALiBi, none). */
typedef enum { LM_POS_ROPE = 0 } lm_pos_kind;

typedef struct {
    int n_heads, n_kv_heads, head_dim; /* GQA: n_heads / n_kv_heads queries per kv head */
    lm_qk_norm qk_norm;                /* none, per head, or over all heads */
    float clip_qkv;                    /* clamp q, k, v to +-clip (0 = none) */
    int output_gate;                   /* q_proj gives each head its query then a gate: out *= sigmoid(gate) */
    int window;                        /* sliding window of this layer, 0 = full attention */
    float scale;                       /* softmax scale */
    const float *sinks;                /* [n_heads] attention sinks, NULL = none */
    lm_pos_kind pos;
    int rope_dim;                      /* leading dims of a head that RoPE rotates */
    const float *rope_inv_freq;        /* [rope_dim / 2]; a scaled RoPE (YaRN) brings its own */
    float rope_scale;                  /* cos and sin times this (YaRN's attention factor), 1 = plain */
    /* Projection biases (attention_bias): q [n_heads*hd], k and v [n_kv*hd], o [hidden];
     * NULL = none. */
    const float *q_bias, *k_bias, *v_bias, *o_bias;
} lm_attn_block;

/* The gated activation between an expert's (or MLP's) gate/up and down products. */
typedef enum {
    LM_ACT_SWIGLU = 0,     /* silu(gate) * up */
    /* gpt-oss: g = min(gate, limit), u = clamp(up, +-limit) and
     * g * sigmoid(alpha g) * (u + 1). With fused_gate_up (Hugging Face files) an
     * expert's `gate` view is its gate_up matrix [2I, H] whose rows alternate gate,
     * up (its `up` view is unused) and one product gives interleaved (gate, up)
     * pairs; else (GGUF files) gate and up are apart, as for LM_ACT_SWIGLU. */
    LM_ACT_SWIGLU_CLAMPED,
} lm_act_kind;

typedef struct {
    lm_router router;         /* how logits become experts and weights */
    const float *router_bias; /* [E] added to the router logits (gpt-oss), NULL = none */
    int shared;               /* a shared expert runs on every token */
    int shared_gated;         /* its output is scaled by sigmoid(h . shared_expert_gate) */
    lm_act_kind act;          /* the routed experts' activation */
    float act_alpha, act_limit; /* LM_ACT_SWIGLU_CLAMPED */
    int fused_gate_up;          /* LM_ACT_SWIGLU_CLAMPED: gate views hold gate_up (above) */
    /* Routed experts' biases (gpt-oss), added after their products: expert e's are
     * gate_up_bias + e * 2 * moe_intermediate_size (interleaved like the gate_up
     * product when fused_gate_up, else I gate biases then I up biases) and
     * down_bias + e * hidden_size; NULL = none. */
    const float *gate_up_bias, *down_bias;
} lm_moe_block;

typedef enum { LM_MIXER_ATTENTION, LM_MIXER_LINEAR } lm_mixer_kind;
typedef enum { LM_FFN_DENSE, LM_FFN_MOE } lm_ffn_kind;

typedef struct {
    lm_mixer_kind mixer;
    lm_attn_block attn; /* LM_MIXER_ATTENTION */
    lm_ffn_kind ffn;
    lm_moe_block moe;   /* LM_FFN_MOE */
} lm_layer_blocks;

/* The blocks of layer l of a loaded model. */
void lm_layer_blocks_of(const lm_weights *w, int l, lm_layer_blocks *out);

#endif

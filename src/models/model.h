/* The weights of a loaded model, bound to the architecture's structure.
 *
 * Families differ in tensor names and in a few switches (models/family.h, one
 * file per family); the forward pass (src/engine/forward.c) is shared. A family is
 * a descriptor plus, where it really computes something different, a few lines in
 * the forward pass guarded by a config switch.
 *
 * Expert weights: `experts` of a MoE layer is an array of n_experts views; in a
 * resident model they point into memory the expert store (src/experts/store.c)
 * read them into. The lazy expert cache (src/experts/) fills views of cached slots
 * instead, so the forward pass is the same for both.
 */
#ifndef LAZYMOE_MODEL_H
#define LAZYMOE_MODEL_H

#include "formats/safetensors.h"
#include "kernels/backend.h"
#include "models/config.h"

typedef struct {
    lm_mat gate, up, down; /* [I, H], [I, H], [H, I] */
} lm_expert;

#define LM_EXPERT_MAX_PARTS 9

/* Where one layer's experts live on disk, and the memory layout of one expert
 * ("slot") in the resident model.
 * Expert e is nparts byte ranges: part p is part_len[p] bytes at absolute offset
 * off[e * LM_EXPERT_MAX_PARTS + p] of archive file file[same index]. In a resident
 * slot it goes to offset part_off[p] (64-byte aligned); the expert cache lays its
 * slots out differently (src/experts/store.c: each part where a direct read of its
 * aligned span can land), so a matrix is found through its part: matrix m (0 gate,
 * 1 up, 2 down) of the expert is tmpl[m] with its field k (0 data, 1 scales,
 * 2 biases) at byte field_delta[m][k] of part field_part[m][k]. part_align[p] is
 * the element size of part p, the alignment its bytes need in memory. MLX stacked
 * files give 9 parts, transformers-5 fused files 2, per-expert float files 3. */
typedef struct {
    int nparts;
    uint64_t part_len[LM_EXPERT_MAX_PARTS];
    uint64_t part_off[LM_EXPERT_MAX_PARTS];
    uint8_t part_align[LM_EXPERT_MAX_PARTS];
    uint64_t slot_bytes;
    int32_t *file;  /* [E * LM_EXPERT_MAX_PARTS] */
    uint64_t *off;  /* [E * LM_EXPERT_MAX_PARTS] */
    lm_mat tmpl[3];
    int field_part[3][3];
    uint64_t field_delta[3][3];
} lm_expert_source;

/* The expert whose resident slot memory starts at `slot`. */
lm_expert lm_expert_view(const lm_expert_source *src, const void *slot);
/* The expert whose part p starts at part[p], wherever each part lies. */
lm_expert lm_expert_view_parts(const lm_expert_source *src, const char *const part[LM_EXPERT_MAX_PARTS]);

/* Gated DeltaNet (qwen3_next linear attention) weights of one layer. Shapes with
 * nk/nv key/value heads of dk/dv dims, r = nv / nk:
 *   in_qkvz [nk * (2 dk + 2 r dv), H]: per key head q, k, then its r value heads' v, z
 *   in_ba   [nk * 2r, H]: per key head its r value heads' b, then a
 *   conv    [conv_dim][K] depthwise causal kernel, conv_dim = 2 nk dk + nv dv
 *   A [nv] = -exp(A_log) (the per-head decay rate: Hugging Face files store A_log,
 *   GGUF files A itself as ssm_a), dt_bias [nv]; norm [dv] (a plain weight, not
 *   zero-centred); out [H, nv dv] */
typedef struct {
    lm_mat in_qkvz, in_ba, out;
    /* Separate projections (qwen3_5_moe; in_z.rows > 0): in_qkvz holds in_proj_qkv
     * [2 nk dk + nv dv, H] (all q, all k, all v: the conv's channel order), in_z
     * [nv dv, H]; with in_a.rows > 0 (qwen3_5_moe) in_ba holds in_proj_b [nv, H] and
     * in_a [nv, H], else in_ba stays fused per key head (qwen3_next GGUF files: llama.cpp
     * splits in_proj_qkvz into attn_qkv and attn_gate but keeps ssm_ba). */
    lm_mat in_z, in_a;
    float *conv;
    float *A, *dt_bias, *norm;
} lm_linear_attn;

typedef struct {
    float *attn_norm, *ffn_norm; /* [H] */
    float *q_norm, *k_norm;      /* [head_dim] or [n_heads*head_dim] / [n_kv*head_dim]; NULL if none */
    float *q_bias, *k_bias, *v_bias, *o_bias; /* NULL unless attention_bias */
    float *sinks;                /* [n_heads] attention sink logits (gpt-oss), NULL = none */
    float *router_bias;          /* [E] added to the router logits, NULL = none */
    /* Routed experts' biases, resident: [E][2I] (interleaved like gpt-oss's gate_up
     * product) and [E][H]; NULL = none. */
    float *expert_gate_up_bias, *expert_down_bias;
    lm_mat q, k, v, o;          /* q is [2 nq, H] with attn_output_gate (per head: query, then gate) */
    int is_linear;              /* linear attention (lin) instead of q/k/v/o */
    lm_linear_attn lin;
    int is_moe;
    lm_mat router;                        /* [E, H] */
    float *router_correction;             /* [E] sigmoid router's e_score_correction_bias; NULL if none */
    lm_mat mlp_gate, mlp_up, mlp_down;    /* dense layers */
    lm_expert_source src;                 /* MoE layers: where the experts are */
    lm_expert *experts;                   /* [E] views when resident; NULL when lazy */
    /* Shared expert (qwen3_next), always resident: rows 0 when absent. */
    lm_mat shared_gate, shared_up, shared_down, shared_expert_gate; /* last: [1, H] */
} lm_layer;

/* Where a layer's experts live in the files (for info, packing and lazy loading). */
typedef enum {
    LM_EXPERTS_STACKED,  /* MLX switch_mlp: gate/up/down each [E, out, in] */
    LM_EXPERTS_FUSED,    /* transformers 5: gate_up_proj [E, 2I, H] + down_proj [E, H, I] */
    LM_EXPERTS_SEPARATE, /* per-expert tensors */
} lm_expert_layout;

typedef struct {
    lm_config cfg;
    st_archive *archive;
    lm_layer *layers;         /* [n_layers] */
    lm_mat embed;             /* [vocab, H] */
    lm_mat lm_head;           /* [vocab, H]; equals embed when tied */
    float *final_norm;        /* [H] */
    float *rope_inv_freq;     /* [rope_dim/2] */
    float rope_scale;         /* cos and sin are multiplied by it (YaRN's attention factor; else 1) */
    lm_expert_layout expert_layout;
    int n_mtp_layers;         /* multi-token-prediction layers in the files, never read */
    int has_vision_tower;     /* a vision tower (model.visual.*) in the files, never read */
    lm_dtype float_dtype;     /* dtype of the float weights */
    /* Every buffer the loader allocated (freed by lm_weights_free). */
    void **buffers;
    int n_buffers;
    size_t cap_buffers;
    uint64_t bytes_resident, bytes_experts, bytes_per_expert;
    uint64_t params_total, params_expert, params_active;
} lm_weights;

typedef void (*lm_progress_fn)(void *ctx, const char *what, double fraction);

/* Opens the archive in `dir` and loads every tensor the config calls for,
 * validating names, shapes and dtypes against the config. The experts are only
 * described (layer.src), not read: the expert store (src/experts/store.h) reads
 * them, into memory or into the expert cache. */
int lm_weights_load(lm_weights *w, const char *dir, lm_progress_fn progress, void *progress_ctx, char *err);
/* Hands buf (from lm_malloc_aligned) to w, which frees it in lm_weights_free, and
 * returns it; NULL in, or no memory to track it: NULL (buf freed, err set). */
void *lm_weights_keep(lm_weights *w, void *buf, char *err);
void lm_weights_free(lm_weights *w);

#endif

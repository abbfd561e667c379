/* The supported families and how their checkpoints name things.
 *
 * qwen3_moe: per-head q/k RMSNorm, softmax router with optional renormalisation.
 * mixtral:   no q/k norm; softmax over the chosen experts (renormalised); optional
 *            sliding window; legacy files use block_sparse_moe.experts.E.w1/w3/w2.
 * olmoe:     q/k RMSNorm over the whole projection, optional clip_qkv.
 * qwen3_next: Gated DeltaNet linear attention in most layers (src/engine/linear_attention.c),
 *            gated full attention with partial RoPE in the others, zero-centred norms,
 *            a shared expert with a sigmoid gate beside the routed ones.
 * The numerical switches live in lm_config (set by config.c per family); this
 * table only lists names. Adding a family: a config.c entry + a row here + any
 * new computation in forward.c behind a config switch.
 */
#include "models/arch.h"

static const lm_arch_names arch_table[LM_ARCH_COUNT] = {
    [LM_ARCH_QWEN3_MOE] = {"qwen3_moe", {"mlp", 0}, {"gate_proj", 0}, {"up_proj", 0}, {"down_proj", 0}},
    [LM_ARCH_MIXTRAL] = {"mixtral",
                         {"block_sparse_moe", "mlp", 0},
                         {"w1", "gate_proj", 0},
                         {"w3", "up_proj", 0},
                         {"w2", "down_proj", 0}},
    [LM_ARCH_OLMOE] = {"olmoe", {"mlp", 0}, {"gate_proj", 0}, {"up_proj", 0}, {"down_proj", 0}},
    [LM_ARCH_QWEN3_NEXT] = {"qwen3_next", {"mlp", 0}, {"gate_proj", 0}, {"up_proj", 0}, {"down_proj", 0}},
};

const lm_arch_names *lm_arch_get(lm_arch_id id) { return &arch_table[id]; }

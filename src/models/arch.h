/* Per-family naming: the few ways checkpoints spell the same structure. */
#ifndef LAZYMOE_ARCH_H
#define LAZYMOE_ARCH_H

#include "models/config.h"

typedef struct {
    const char *model_type;
    /* Module holding the router and experts, tried in order ("mlp", "block_sparse_moe"). */
    const char *moe_blocks[3];
    /* Per-expert projection names in the legacy Hugging Face layout. */
    const char *expert_gate[3], *expert_up[3], *expert_down[3];
} lm_arch_names;

const lm_arch_names *lm_arch_get(lm_arch_id id);

#endif

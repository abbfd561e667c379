/* `lazymoe convert`: Hugging Face MoE checkpoint -> MLX affine-quantized model directory,
 * laid out exactly as `mlx_lm.convert --quantize` writes it, so the output is
 * interchangeable with mlx-community models.
 *
 * What mlx-lm does, and therefore what this does (mlx_lm/convert.py, utils.py,
 * models/{qwen3_moe,mixtral,olmoe,qwen3_next}.py):
 *   - experts are stacked per projection: ...mlp.switch_mlp.{gate,up,down}_proj
 *     (mixtral: ...block_sparse_moe.switch_mlp.*), weight [E, out, in*bits/32] U32,
 *     scales/biases [E, out, in/group_size]. Inputs may be per-expert
 *     (experts.E.{gate,up,down}_proj / mixtral experts.E.{w1,w3,w2}) or transformers-5
 *     fused (experts.gate_up_proj [E, 2I, H]: rows [0,I) gate, [I,2I) up;
 *     experts.down_proj [E, H, I]); transformers-5 mixtral's mlp.* is renamed to
 *     block_sparse_moe.*.
 *   - every Linear / Embedding weight (2-D) and stacked expert weight is quantized at
 *     --bits/--group-size when its last (input) dimension is divisible by the group
 *     size; otherwise it stays a float tensor and nothing is recorded for it (mlx-lm
 *     recognises quantized layers by the presence of "<path>.scales"). Norms (1-D),
 *     conv1d and other tensors are never quantized.
 *   - routers: qwen3_moe quantizes "*.mlp.gate" at 8 bits, group size 64 and records
 *     {"group_size": 64, "bits": 8} under the module path in the config; qwen3_next
 *     also "*.shared_expert_gate". mixtral and olmoe have no such rule: their routers
 *     are quantized like any Linear, at --bits.
 *   - lm_head.weight is dropped when tie_word_embeddings (default true for olmoe,
 *     false for the others, as in mlx-lm's ModelArgs).
 *   - qwen3_next (as its sanitize): mtp.* dropped, 1-D input/post_attention/final/q/k
 *     norm weights get +1 (computed in the stored dtype), conv1d [C,1,K] -> [C,K,1].
 *   - dtype: with --dtype, every float tensor is cast to it; without, config.json's
 *     "torch_dtype" (then text_config.dtype) if it is float16/bfloat16/float32, else
 *     each tensor keeps its stored dtype. Weights are rounded to that dtype before
 *     quantization and scales/biases are written in it.
 *   - config.json = input config, eos_token_id taken from generation_config.json when
 *     set there, "quantization": {"group_size", "bits", "mode": "affine", overrides...}
 *     and an identical "quantization_config", "_name_or_path"/"vision_config" removed,
 *     top-level keys sorted, written as json.dump(indent=4).
 *   - weights in shards (see safetensors_write.h) + model.safetensors.index.json;
 *     tokenizer files, chat_template.jinja, generation_config.json and *.py copied.
 *
 * Streaming: tensors are produced in row chunks (at most ~16 MiB of float32 at a time;
 * an expert matrix or embedding never has to fit at once), written at their final
 * offsets. Output goes to a sibling temporary directory that is renamed to OUT_DIR
 * only when everything is written and synced, so an interrupted convert leaves no
 * OUT_DIR that looks complete.
 */
#ifndef LAZYMOE_CONVERT_H
#define LAZYMOE_CONVERT_H

#include "formats/dtype.h"
#include "formats/mlx_quant.h"

#include <stdint.h>

typedef struct {
    int bits;                 /* default 4 */
    int group_size;           /* default 64 */
    lm_dtype dtype;           /* LM_DT_INVALID: mlx-lm's default (see above) */
    mlxq_kernel kernel;       /* default MLXQ_KERNEL_GPU (Apple GPU files) */
    int force;                /* replace a non-empty OUT_DIR */
    uint64_t max_shard_bytes; /* 0: mlx-lm's 5 GiB */
    int quiet;                /* no progress lines (they go to the log callback) */
} lm_convert_options;

void lm_convert_options_init(lm_convert_options *o);

/* Model types this converter knows, as a human-readable list ("qwen3_moe, ..."). */
const char *lm_convert_supported_types(void);

int lm_convert(const char *hf_dir, const char *out_dir, const lm_convert_options *o, char *err);

#endif

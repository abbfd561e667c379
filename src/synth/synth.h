/* `lazymoe synth`: synthetic MoE models at real shapes, in the MLX layout, for benchmarks.
 * (gpt-oss presets are written in the layout OpenAI released instead: the family's
 * lm_synth_layout, src/models/family.h, says which; the rest of this note holds for both.)
 *
 * A synthetic model is a directory that looks exactly like an mlx-lm converted,
 * affine-quantized checkpoint (config.json with its "quantization" block and router
 * overrides, generation_config.json, sharded safetensors + index written through
 * stw_model), with random weights of realistic spread instead of trained ones:
 *   - Linear / expert weights: std 1/sqrt(fan_in) before quantization, so activations
 *     keep unit variance; values are Irwin-Hall(4) approximations of a Gaussian;
 *   - embeddings: std 1 per coordinate plus a common direction m shared by every
 *     token (see routing below); norms 1 +- 0.02; qwen3_next A_log = log U(1,16),
 *     dt_bias 1, conv1d std 1/sqrt(kernel);
 *   - everything quantized like mlx-lm: every 2-D / stacked weight at --bits and
 *     --group-size with BF16 scales and biases (MLX's affine algorithm, mlx_quant.h);
 *     qwen3_moe / qwen3_next routers (and shared_expert_gate) at 8 bits, group 64,
 *     recorded as per-module overrides; norms, conv1d, A_log, dt_bias stay BF16.
 *
 * Routing control. A random router either collapses or is perfectly uniform; trained
 * models sit in between. Router row e (logit_e = w_e . h, h the RMS-normalised hidden
 * state, |h| ~ sqrt(H)) is built as
 *     w_e = s_e * u_e / sqrt(H) + b_e * m / sqrt(H)
 * with u_e a random unit-variance direction per expert, m the unit-variance common
 * direction that every embedding row carries (embed = N(0,1) + EMBED_COMMON * m), so
 * h . m / sqrt(H) is a positive, token-independent offset and b_e acts as a per-expert
 * logit bias, while s_e sets how strongly expert e reacts to the token itself
 * (a larger s_e means a wider logit spread, hence more top-k wins):
 *   uniform:   s_e = 1, b_e = 0: every expert equally popular, picks vary per token;
 *   realistic: log-popularity z_e ~ N(0,1) per expert (a log-normal popularity law);
 *              s_e = exp(0.3 z_e), b_e = 0.7 z_e: skewed popularity (a few experts
 *              chosen several times more often than the median, a tail rarely
 *              chosen), with token-to-token variety from the u_e part;
 *   collapsed: top_k "dominant" experts with b_e = 12, the rest s_e = 1, b_e = 0:
 *              nearly every token picks the same experts.
 * The construction depends on the common direction surviving into the residual
 * stream: down_proj (and, except under realistic routing, the attention output
 * projections) are scaled by 1/sqrt(2 * layers) (GPT-2's residual init; the preset's
 * layer count, whatever --layers says) so later layers do not drown it. Trained
 * models also route consecutive tokens alike because attention carries context into
 * the hidden state; realistic routing reproduces that by giving o_proj (qwen3_next:
 * also linear_attn.out_proj) a gain of 0.7 instead, so attention outputs (a slowly
 * varying average over the context) reach the routers.
 * Measured with `lazymoe bench` (32 prompt + 16 generated tokens) on
 * qwen3-30b-a3b --layers 12, realistic: 42% of a token's experts reused by the next,
 * top-16 experts 79% of picks, 44 of 128 experts used per layer; --layers 4:
 * uniform 7% reuse (random: 8/128 = 6%), 120 of 128 used; collapsed 100% reuse, 8
 * used. (Qwen3-30B-A3B itself reuses ~45%.)
 *
 * Determinism: every tensor's values are a function of (seed, tensor name, row range)
 * only -- not of thread scheduling, shard layout or the layer count -- so the same
 * options give byte-identical files and layer L is the same in a 4-layer and a
 * 48-layer model.
 *
 * Streaming: work is cut into units of at most SYNTH_UNIT_FLOATS values (rows of one
 * matrix, one expert slice at most); each worker holds one unit's floats and packed
 * output; nothing holds a whole tensor. Output goes to OUT.lazymoe-tmp-PID, renamed to
 * OUT only when every file is written and synced.
 */
#ifndef LAZYMOE_SYNTH_H
#define LAZYMOE_SYNTH_H

#include <stdint.h>

typedef enum {
    LM_SYNTH_REALISTIC = 0,
    LM_SYNTH_UNIFORM = 1,
    LM_SYNTH_COLLAPSED = 2,
} lm_synth_routing;

typedef struct {
    const char *preset;        /* see lm_synth_presets() */
    int layers;                /* 0: the preset's layer count */
    int bits;                  /* 4 or 8 (default 4) */
    int group_size;            /* 32, 64 or 128 (default 64) */
    uint64_t seed;             /* default 0 */
    lm_synth_routing routing;  /* default realistic */
    int force;                 /* replace a non-empty output directory */
    int quiet;                 /* no progress lines (they go to the log callback) */
    int threads;               /* 0: min(2, cores) */
    uint64_t max_shard_bytes;  /* 0: mlx-lm's 5 GiB */
    /* Test-only shrinking (0 = preset value): same names, dtypes and layout, smaller
     * dimensions, so a real family can be opened by the engine in a unit test. */
    int hidden, experts, moe_intermediate, vocab;
    /* Test hook: pretend the output file system has this many bytes free (0: statvfs). */
    uint64_t assume_free_bytes;
} lm_synth_options;

void lm_synth_options_init(lm_synth_options *o);

/* The presets of every registered family (src/models/, one file per family), comma-separated. */
const char *lm_synth_presets(void);
/* "realistic" | "uniform" | "collapsed" -> 0, else -1. */
int lm_synth_parse_routing(const char *s, lm_synth_routing *out);

/* What a synth run writes. */
typedef struct {
    char model_type[32];
    int layers, hidden, experts, top_k, moe_intermediate, vocab;
    int n_tensors;             /* safetensors entries (weight/scales/biases count 3) */
    int n_shards;
    uint64_t bytes_total;      /* tensor data in all shards */
    uint64_t bytes_per_expert; /* gate + up + down of one routed expert, scales/biases in */
    uint64_t bytes_experts;    /* all routed experts of all layers */
    uint64_t bytes_resident;   /* everything else */
    uint64_t params_total;     /* unquantized parameter count */
    int mxfp4;                 /* the released gpt-oss layout: MXFP4 experts, BF16 rest (no --bits) */
} lm_synth_plan;

/* Declares the model without writing anything (--dry-run). */
int lm_synth_plan_model(const lm_synth_options *o, lm_synth_plan *plan, char *err);

/* Writes the model into out_dir (atomically). plan may be NULL. */
int lm_synth_write(const char *out_dir, const lm_synth_options *o, lm_synth_plan *plan, char *err);

/* The router of one MoE layer as floats before quantization, w[E][H] (for tests of the
 * routing construction). Needs E * H floats. */
int lm_synth_router_floats(const lm_synth_options *o, int layer, float *w, char *err);

/* The common embedding direction m (H floats, unit variance per coordinate). */
int lm_synth_common_direction(const lm_synth_options *o, float *m, char *err);

#endif

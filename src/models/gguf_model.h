/* A GGUF file as a model: its metadata as an lm_config, its tensors under the Hugging
 * Face names the loader binds (weights.c), so one binding path serves safetensors, MLX
 * and GGUF, and lazy experts read GGUF expert slices exactly as they read MLX ones.
 *
 * Conventions of llama.cpp's converter (convert_hf_to_gguf.py) that are undone here:
 *   - dims are stored innermost first: a [rows, cols] matrix has ne = {cols, rows};
 *     the archive shows Hugging Face order.
 *   - names: token_embd, output_norm, output (absent: tied), blk.N.attn_norm / ffn_norm,
 *     attn_q/k/v/output, attn_q_norm/attn_k_norm, ffn_gate_inp (router), experts
 *     stacked per projection as ffn_{gate,up,down}_exps [E, rows, cols] (or, as the
 *     converter's --fuse-gate-up-exps writes them, gate and up as one ffn_gate_up_exps
 *     [E, 2 * rows, cols]: each expert's gate rows, then its up rows; for gpt-oss its
 *     ffn_gate_up_exps.bias [E, 2 * rows] likewise; weights.c reads each half), dense
 *     ffn_{gate,up,down}, shared experts ffn_*_shexp and ffn_gate_inp_shexp.
 *   - the "llama" architecture (Mixtral) has its q/k rows permuted per head for ggml's
 *     interleaved RoPE: those tensors carry st_tensor.rope_unpermute and st_read
 *     restores Hugging Face order.
 *   - Mixtral is "llama" with llama.expert_count > 0; a dense llama is refused.
 *   - gpt-oss ("gpt-oss"): blk.N.post_attention_norm, attn_sinks.weight (HF's
 *     self_attn.sinks), biases on attn_q/k/v/output, ffn_gate_inp and the experts
 *     (ffn_{gate,up,down}_exps.bias), gate and up experts apart (weights.c binds them
 *     apart; Hugging Face fuses and interleaves them), experts as MXFP4 blocks or
 *     floats; its sliding layers from ARCH.attention.sliding_window_pattern (a period,
 *     default 2: even layers slide, or one bool per layer); YaRN from
 *     ARCH.rope.scaling.{type,factor,original_context_length,yarn_beta_fast,
 *     yarn_beta_slow} and lazymoe's own ARCH.rope.scaling.yarn_truncate (absent: false
 *     for gpt-oss, as its released config says; llama.cpp itself always truncates).
 *   - glm4moe (GLM-4.5/4.6/Air): blk.N.post_attention_norm, q/k/v biases, NEOX RoPE
 *     (no permutation) over rope.dimension_count dims, exp_probs_b.bias (HF's
 *     mlp.gate.e_score_correction_bias), shared experts ffn_*_shexp, dense leading
 *     layers; keys leading_dense_block_count, expert_shared_count, expert_gating_func
 *     (2: sigmoid), expert_weights_scale (routed_scaling_factor; 0 or absent: 1),
 *     expert_weights_norm (absent: false, as llama.cpp), expert_group_count /
 *     expert_group_used_count (both or neither). block_count counts the
 *     nextn_predict_layers multi-token-prediction layers kept after the last one
 *     (blk.N.nextn.{eh_proj,enorm,hnorm,embed_tokens,shared_head_head,
 *     shared_head_norm} and an ordinary layer's tensors): they map to HF names past
 *     num_hidden_layers, which the loader counts and never reads.
 *   - minimax-m2: q/k norms over the whole projections, exp_probs_b.bias, experts of
 *     feed_forward_length (= expert_feed_forward_length), always renormalised.
 *   - qwen3next / qwen35moe (Gated DeltaNet hybrids): shapes under ARCH.ssm.*, layer
 *     kinds from ARCH.attention.recurrent_layers or ARCH.full_attention_interval;
 *     attn_qkv / attn_gate (llama.cpp's split of in_proj_qkvz; older files: ssm_in),
 *     ssm_ba or ssm_beta / ssm_alpha, ssm_a holding -exp(A_log) itself, ssm_dt.bias,
 *     norms with their +1 already added; qwen35moe's value heads in ggml's tiled order
 *     (config lin_v_tiled) and its MRoPE sections checked to be plain RoPE on text.
 *     MTP blocks counted in block_count are skipped as for glm4moe.
 */
#ifndef LAZYMOE_GGUF_MODEL_H
#define LAZYMOE_GGUF_MODEL_H

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "models/config.h"

/* The lm_config a GGUF file's metadata describes (validated like config.json). */
int lm_gguf_config(lm_config *c, const gguf_archive *g, char *err);
/* An archive of the GGUF's tensors under Hugging Face names, sharing no state with g
 * (own file descriptors). Every tensor must map to a known name. */
int lm_gguf_archive(const gguf_archive *g, const lm_config *c, st_archive **out, char *err);

#endif

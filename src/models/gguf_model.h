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

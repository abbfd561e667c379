/* A lazymoe model directory (Hugging Face safetensors, F32/F16/BF16, or MLX affine) ->
 * one GGUF file with llama.cpp's conventions, so llama.cpp and lazymoe read the same
 * file (tools/gguf_export.c is the command; tests use it to check the reader).
 *
 * What convert_hf_to_gguf.py does, and therefore what this does:
 *   - architecture names: qwen3_moe -> qwen3moe, mixtral -> llama (with expert_count),
 *     olmoe -> olmoe; hyper-parameters under ARCH.* (block_count, embedding_length,
 *     feed_forward_length, expert_feed_forward_length, attention.head_count(_kv),
 *     attention.key_length/value_length, attention.layer_norm_rms_epsilon,
 *     rope.freq_base, rope.dimension_count, expert_count, expert_used_count,
 *     context_length, attention.clamp_kqv); lazymoe also writes expert_weights_norm
 *     (llama.cpp's key for the top-k renormalisation) and attention.sliding_window.
 *   - tensor names as in gguf_model.h; matrices with ne = {cols, rows}; experts stacked
 *     per projection; llama-architecture q/k rows permuted per head (pairs interleaved,
 *     for ggml's RoPE); norms and routers in F32, other matrices in the chosen type
 *     (F32, F16, BF16 or Q8_0).
 *   - MLX affine weights are dequantized (their values are exact in F32).
 *   - glm4_moe -> glm4moe: post_attention_norm, q/k/v biases, exp_probs_b.bias (the
 *     router's e_score_correction_bias), shared experts ffn_{gate,up,down}_shexp,
 *     leading dense layers (ffn_gate/up/down), leading_dense_block_count,
 *     expert_shared_count, expert_gating_func 2 (sigmoid), expert_weights_scale,
 *     expert_group_count / expert_group_used_count when there are groups; the MTP
 *     layers only with LM_GGUF_KEEP_MTP.
 *   - minimax_m2 -> minimax-m2: q/k norms over the whole projections, exp_probs_b.bias,
 *     expert_gating_func 2; feed_forward_length is the experts' width (as mixtral).
 *   - gpt_oss -> gpt-oss as llama.cpp's converter writes it: post_attention_norm,
 *     attn_sinks, q/k/v/o, router and expert biases, gate and up experts apart (the
 *     even and odd rows of gate_up), MXFP4 experts as ggml MXFP4 blocks (the same
 *     numbers: only the nibbles move), expert_feed_forward_length,
 *     attention.sliding_window (+ sliding_window_pattern when not every other layer),
 *     rope.scaling.* for YaRN (+ lazymoe's yarn_truncate when it is true). A SwiGLU
 *     limit other than 7, or a YaRN attention factor other than 0.1 ln(factor) + 1,
 *     is refused: llama.cpp cannot express them.
 *   - tokenizer.ggml.*: model "gpt2" from a byte-level BPE tokenizer.json, tokens by id
 *     up to vocab_size (missing ids "[PAD<id>]", type UNUSED), token_type NORMAL /
 *     CONTROL (special added tokens) / USER_DEFINED (other added tokens), merges as
 *     "a b", pre from the Split regex (qwen2, llama-bpe, gpt-4o, gpt2), bos/eos/pad ids
 *     and add_bos_token from tokenizer_config.json; tokenizer.chat_template.
 */
#ifndef LAZYMOE_GGUF_EXPORT_H
#define LAZYMOE_GGUF_EXPORT_H

#include "formats/dtype.h"

enum {
    /* a directory without tokenizer.json gets a stand-in byte-level vocabulary so
     * llama.cpp can evaluate it (otherwise tokenizer.ggml.model "no_vocab": ids only) */
    LM_GGUF_PLACEHOLDER_VOCAB = 1,
    /* gate and up experts as one ffn_gate_up_exps [E, 2I, H] (each expert's gate rows,
     * then its up rows; gpt-oss biases ffn_gate_up_exps.bias [E, 2I] alike), as
     * convert_hf_to_gguf.py --fuse-gate-up-exps writes them */
    LM_GGUF_FUSE_GATE_UP = 2,
    /* glm4moe: the multi-token-prediction layers past num_hidden_layers are copied too
     * (F32/F16/BF16 as stored, llama.cpp's blk.N.nextn.* names, block_count counting
     * them, nextn_predict_layers), as the converter does without --no-mtp. By default
     * they are left out, as with --no-mtp. */
    LM_GGUF_KEEP_MTP = 4,
};

/* type: LM_DT_F32, LM_DT_F16, LM_DT_BF16 or LM_DT_Q8_0 (ggml's reference quantizer;
 * matrices whose rows are not whole blocks of 32 stay F32) for the matrices; flags:
 * LM_GGUF_* above. */
int lm_gguf_export(const char *model_dir, const char *out_path, lm_dtype type, int flags, char *err);

#endif

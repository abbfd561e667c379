/* The CUDA backend (cuda_backend.cu): lm_backend_ops on one NVIDIA GPU.
 *
 * Built only with `make CUDA=1` (nvcc); backend.c names it when LAZYMOE_CUDA is
 * defined and otherwise says how to rebuild. Activations, the KV cache and index
 * arrays are device memory (cudaMalloc); weights arrive as lm_mat views of host
 * memory and are copied to the device on first use (see cuda_backend.cu for the
 * key and why it is only right for memory that does not change underneath it).
 */
#ifndef LAZYMOE_CUDA_BACKEND_H
#define LAZYMOE_CUDA_BACKEND_H

#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A backend on CUDA device `device` (0 = the first). Fails with the CUDA runtime's
 * reason when there is no usable device. */
int lm_backend_cuda_create(lm_backend **out, int device, char *err);

/* 1: only the reference kernels (phase 1's: a generic loader per weight, the CPU's
 * attention walk, one thread per token for routing), against which tests check the
 * fast ones; 0 (default): the fast kernels where they apply. The environment's
 * LAZYMOE_CUDA_KERNELS=simple sets it at creation. */
void lm_backend_cuda_set_simple(lm_backend *be, int simple);
/* 1: prefill attention one head a block (tests; LAZYMOE_CUDA_ATTN_HEADS=1 sets it at
 * creation); 0 (default): the heads that share a kv head together, loading each key once.
 * The same bits either way. */
void lm_backend_cuda_set_attn_one_head(lm_backend *be, int one);
/* 1: k_gemm_tc takes MLX affine weights through its generic loader, as it takes the GGUF
 * formats (tests and A/B; LAZYMOE_CUDA_TC_GENERIC=1 sets it at creation); 0 (default):
 * through its affine path (tc_block_affine). The same bits either way. */
void lm_backend_cuda_set_tc_generic(lm_backend *be, int on);
/* k_gemm_tc's affine path in blocks of 32 rows instead of 128 (4 times as many blocks):
 * 0 (default) where a launch would not fill the GPU twice over (a router's 128 rows),
 * 1 always, 2 never (tests). The same bits either way. */
void lm_backend_cuda_set_tc_narrow(lm_backend *be, int mode);
/* 1: k_gemm_tc's affine path in blocks of 8 warps (256 rows) that stage the inputs once
 * for all of them, where it would take blocks of 128 rows (tests and A/B;
 * LAZYMOE_CUDA_TC_WIDE=1 sets it at creation; off until measured on a GPU). The same bits. */
void lm_backend_cuda_set_tc_wide(lm_backend *be, int on);
/* 1: Q4_0 weights through k_gemm_tc's affine path too (a block's scale read once per
 * output row, fixed offsets), not its generic loader (tests and A/B;
 * LAZYMOE_CUDA_TC_Q4_0=1 sets it at creation; off until measured on a GPU). The same bits. */
void lm_backend_cuda_set_tc_q4_0(lm_backend *be, int on);

/* Activations of prefill's products with MLX 4-bit weights (8 tokens or more an item):
 * 32 (default) f32 through k_gemm_tc; 8 int8, quantized per token and weight group as
 * the CPU backend's act_bits 8 quantizes them (the same values, bit for bit), multiplied
 * on the tensor cores as integers (k_gemm_a8) -- faster, at the CPU's int8 error. Other
 * weight formats and the GEMVs of decode keep f32. With 8, device scratch for the int8
 * values of `rows` rows of `cols` inputs is taken now (0: on first use), so that a
 * prefill chunk never runs out of it; an error (err) when it cannot be had. */
int lm_backend_cuda_set_act_bits(lm_backend *be, int bits, int rows, int cols, char *err);

/* k_gemm_a8's blocks: 4 warps of 32 rows (default) or 8 of 16 (tests and A/B;
 * LAZYMOE_CUDA_A8_WARPS=8 sets it at creation). The same bits either way. */
void lm_backend_cuda_set_a8_warps(lm_backend *be, int warps);
/* k_gemm_a8s in k_gemm_a8's place (on != 0): the block's weights and inputs copied
 * through shared memory, several stages ahead (LAZYMOE_CUDA_A8_SMEM=1 sets it at
 * creation). The same bits either way. */
void lm_backend_cuda_set_a8_smem(lm_backend *be, int on);

/* Launches of the fast matmul kernels so far (tests: that a case exercised them). */
uint64_t lm_backend_cuda_fast_launches(const lm_backend *be);

/* Decode steps replayed from a recording so far, by every CUDA backend of the
 * process (tests: that a case replayed; LAZYMOE_CUDA_GRAPHS=0 turns them off). */
uint64_t lm_backend_cuda_step_replays(void);

/* Bytes of host weights the backend holds device copies of (tests, -v). */
uint64_t lm_backend_cuda_weight_bytes(const lm_backend *be);

#ifdef __cplusplus
}
#endif

#endif

/* The tensor-work interface the model code calls.
 *
 * Model code (src/engine/forward.c) never touches numbers itself: it calls these
 * operations through a backend table, so a CUDA backend can implement the same
 * table without the model code changing. The backend owns its memory: activations,
 * the KV cache and index arrays are lm_buf buffers it allocates (on the CPU, host
 * memory), filled and read back only through upload / download. Weights are still
 * lm_mat views of host memory in their stored precision (the loader's; a device
 * backend uploads them). What stays on the host: the routing decisions a lazy
 * expert cache needs (which experts a chunk uses, downloaded after `route`), and
 * the linear-attention recurrence (linear_attention.c, no backend op yet).
 *
 * Determinism contract: for the same inputs an operation returns bit-identical
 * results regardless of thread count or scheduling, so lazily loaded experts
 * give exactly the numbers of resident ones.
 */
#ifndef LAZYMOE_BACKEND_H
#define LAZYMOE_BACKEND_H

#include "common/error.h"
#include "formats/dtype.h"

#include <stddef.h>
#include <stdint.h>

/* A weight matrix [rows (outputs), cols (inputs)], row-major, in stored precision.
 *  float:  dtype F32/F16/BF16, data = rows*cols elements
 *  affine: dtype U32 (MLX), data = rows x (cols*bits/32) packed words, lowest bits
 *          first; scales and biases rows x (cols/group_size) of qdtype;
 *          w[r][c] = scale[r][c/g] * q[r][c] + bias[r][c/g]
 *  block:  a ggml block type (lm_dtype_is_block), data = rows x
 *          lm_dtype_row_bytes(dtype, cols) bytes; scales/biases unused
 *  MXFP4 split (LM_DT_MXFP4_SPLIT, formats/mxfp4.h): data = e2m1 codes, scales =
 *          e8m0 bytes
 * The view does not own its memory. */
typedef struct {
    lm_dtype dtype;
    int rows, cols;
    const void *data;
    int bits, group_size;
    lm_dtype qdtype;
    const void *scales, *biases;
    /* Float weights stored transposed, data [cols][rows] (gpt-oss's Hugging Face
     * expert tensors, x @ W); computed by the scalar code. */
    int col_major;
} lm_mat;

/* Bytes the matrix occupies as stored (scales and biases included). */
uint64_t lm_mat_bytes(const lm_mat *m);
/* Row r as float32 into out[cols] (embedding lookup, tests). */
void lm_mat_row_f32(const lm_mat *m, int r, float *out);

typedef struct lm_backend lm_backend;

/* One product of a batch of independent matmuls: y[n][W->rows] = x[n][W->cols] . W^T. */
typedef struct {
    float *y;
    const lm_mat *W;
    const float *x;
    int n; /* tokens */
} lm_matmul_item;

/* One layer's K or V cache: [positions][n_kv][head_dim] values in `dtype`:
 *  LM_DT_F32, LM_DT_F16 (default), or LM_DT_I8 with one f32 scale per
 *  (position, kv head): value = scale * q, scale = max|row| / 127.
 * data and scales are backend memory (lm_buf.ptr). */
typedef struct {
    lm_dtype dtype;
    void *data;
    float *scales; /* LM_DT_I8 only: [positions][n_kv] */
    int positions; /* positions it holds (0: not said; a device backend then sizes its
                    * attention launches by the call's positions only) */
} lm_kv;

/* Memory the backend owns. `ptr` is a device address: on the CPU backend it is host
 * memory, on a GPU backend it may only be handed to ops, upload, download and copy.
 * A buffer is released exactly once, by lm_backend_release, with the backend that
 * allocated it. */
typedef struct {
    void *ptr;
    size_t bytes;
} lm_buf;

/* How a MoE router turns a token's logits [E] into its top_k experts and weights.
 * Ties go to the lower expert index; the chosen experts are written in ascending
 * index order (the order their outputs are summed in). */
typedef enum {
    /* p = softmax(logits); the top_k largest p, weights p (qwen3_moe, mixtral, olmoe,
     * qwen3_next). */
    LM_ROUTER_SOFTMAX_TOPK = 0,
    /* The top_k largest logits; weights = softmax over those k (gpt-oss). */
    LM_ROUTER_TOPK_SOFTMAX,
    /* s = sigmoid(logits); experts are chosen by s + correction_bias, only inside the
     * topk_group best of n_group equal groups (a group scores the sum of its two best
     * biased scores); weights are the unbiased s (deepseek_v3, glm4_moe, minimax_m2). */
    LM_ROUTER_SIGMOID,
} lm_router_kind;

/* Limits of LM_ROUTER_SIGMOID (its working arrays are fixed-size). */
#define LM_ROUTER_MAX_EXPERTS 1024
#define LM_ROUTER_MAX_GROUPS 64

typedef struct {
    lm_router_kind kind;
    int n_experts, top_k;
    int renormalize;              /* weights /= their sum (norm_topk_prob; sigmoid: sum + 1e-20) */
    float scale;                  /* weights *= scale afterwards (routed_scaling_factor); 1 = none */
    const float *correction_bias; /* [n_experts] (sigmoid: e_score_correction_bias), NULL = none */
    int n_group, topk_group;      /* sigmoid group-limited choice; n_group <= 1 = no groups */
} lm_router;

/* Every operation returns 0, or -1 with the reason in be->err (lm_backend_error).
 * Pointers to activations, KV caches and index arrays are device addresses (backend
 * memory); weights are lm_mat views; arguments documented "host" are host memory. */
typedef struct {
    const char *name;
    /* 1: device addresses are host addresses (the CPU). The forward pass then writes
     * logits straight into the caller's array, and linear attention's recurrence
     * (host code) can run; a device backend needs both as operations first. */
    int host_memory;
    /* ---- memory ---- */
    /* A buffer of `bytes` (64-byte aligned, contents undefined); use lm_backend_alloc,
     * which also counts what is held. */
    int (*alloc)(lm_backend *be, lm_buf *out, size_t bytes);
    void (*free)(lm_backend *be, lm_buf *buf);
    int (*upload)(lm_backend *be, void *dst, const void *host_src, size_t bytes);
    int (*download)(lm_backend *be, void *host_dst, const void *src, size_t bytes);
    int (*copy)(lm_backend *be, void *dst, const void *src, size_t bytes);
    /* Reserves the working memory of matmul_batch calls of up to max_items items now,
     * so that later calls allocate nothing (decode must not). */
    int (*reserve_batch)(lm_backend *be, int max_items);
    /* Waits until every operation issued so far has finished (a no-op on the CPU,
     * whose operations finish before they return). */
    int (*sync)(lm_backend *be);
    /* ---- matrices ---- */
    /* y[n][W.rows] = x[n][W.cols] . W^T */
    int (*matmul)(lm_backend *be, float *y, const lm_mat *W, const float *x, int n);
    /* Several independent matmuls (each with its own token count) as one piece of
     * parallel work: fewer hand-overs to the threads than one call each. Every
     * result is bit-identical to what matmul gives for it alone. */
    int (*matmul_batch)(lm_backend *be, const lm_matmul_item *items, int count);
    /* x[t] = row ids[t] of W as f32 (embedding lookup); ids[n] are device ints. */
    int (*embed)(lm_backend *be, float *x, const lm_mat *W, const int32_t *ids, int n);
    /* ---- elementwise ---- */
    /* y[n][dim] = x / sqrt(mean(x^2) + eps) * w ; y may alias x */
    int (*rmsnorm)(lm_backend *be, float *y, const float *x, const float *w, int n, int dim, float eps);
    /* y[i] += x[i], i < n (residual adds) */
    int (*add)(lm_backend *be, float *y, const float *x, size_t n);
    /* y[t][i] += b[i] for n rows of dim (biases) */
    int (*add_rows)(lm_backend *be, float *y, const float *b, int n, int dim);
    /* y[i] = clamp(y[i], -lim, lim) */
    int (*clamp)(lm_backend *be, float *y, size_t n, float lim);
    /* dst[r * dst_stride + i] = src[r * src_stride + i], i < width, r < rows */
    int (*copy_rows)(lm_backend *be, float *dst, size_t dst_stride, const float *src, size_t src_stride, int rows,
                     int width);
    /* y[r * y_stride + i] *= sigmoid(g[r * g_stride + i]) for i < width; with
     * per_row, every i of row r uses g[r * g_stride] (a scalar gate per row). */
    int (*sigmoid_mul)(lm_backend *be, float *y, size_t y_stride, const float *g, size_t g_stride, int rows,
                       int width, int per_row);
    /* g[i] = silu(g[i]) * u[i] */
    int (*swiglu)(lm_backend *be, float *g, const float *u, size_t n);
    /* gpt-oss's clamped SwiGLU over interleaved pairs: with a = min(gu[2i], limit) and
     * b = clamp(gu[2i+1], -limit, limit), out[i] = a * sigmoid(alpha * a) * (b + 1),
     * i < n. */
    int (*swiglu_clamped)(lm_backend *be, float *out, const float *gu, size_t n, float alpha, float limit);
    /* The same activation with gate and up apart (gpt-oss from GGUF): out[i] from
     * gate[i], up[i], bit for bit what swiglu_clamped gives the pair; out may be up. */
    int (*swiglu_clamped_split)(lm_backend *be, float *out, const float *gate, const float *up, size_t n, float alpha,
                                float limit);
    /* Rotates the first 2*half dims of each head of x[n][n_heads*head_dim] (rotate-half
     * convention) at positions pos[n] with inverse frequencies inv_freq[half], with cos
     * and sin multiplied by scale (YaRN's attention factor; 1 = plain RoPE). */
    int (*rope)(lm_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                const float *inv_freq, int half, float scale);
    /* ---- attention ---- */
    /* Stores n rows src[n][n_kv*hd] into the cache at positions pos0..pos0+n-1,
     * rounded to the cache's type. */
    int (*kv_store)(lm_backend *be, lm_kv *cache, int pos0, const float *src, int n, int n_kv, int hd);
    /* Causal attention of n new queries q[n][n_heads*hd] at positions pos0..pos0+n-1
     * over cached keys/values k,v (positions 0..pos0+n-1); out[n][n_heads*hd].
     * window > 0 limits each query to the last `window` positions. sinks[n_heads]
     * (NULL = none) adds one logit per head to every softmax denominator, with no
     * value (gpt-oss attention sinks). Keys are taken in fixed tiles counted from the
     * first visible position, so a query's result does not depend on how many
     * queries share the call. */
    int (*attention)(lm_backend *be, float *out, const float *q, const lm_kv *k, const lm_kv *v, int n, int pos0,
                     int n_heads, int n_kv, int hd, float scale, int window, const float *sinks);
    /* ---- mixture of experts ---- */
    /* Routes n tokens: logits[n][E] -> sel[n][top_k] (ascending expert index) and
     * their weights selw[n][top_k]. */
    int (*route)(lm_backend *be, const lm_router *r, const float *logits, int n, int32_t *sel, float *selw);
    /* dst[r] = src[idx[r] / idx_div] for m rows of width floats (tokens gathered for
     * one expert: idx are route numbers token * top_k + slot). */
    int (*gather_rows)(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width,
                       int idx_div);
    /* dst[idx[r]] = src[r] for m rows of width floats. */
    int (*scatter_rows)(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width);
    /* y[t] = sum_k selw[t][k] * eout[t * top_k + k] (k ascending), then + shared[t]
     * when shared is not NULL; rows of width floats, n tokens. */
    int (*moe_combine)(lm_backend *be, float *y, const float *eout, const float *selw, const float *shared, int n,
                       int top_k, int width);
    /* ---- lifetime ---- */
    /* A device backend keeps a copy of each host weight array it is handed, keyed by
     * the host address; this says the memory at `host` now holds other bytes (a
     * lazy expert slot refilled), so the copy is refreshed before its next use. NULL
     * where weights are read in place (the CPU). Use lm_backend_weights_changed. */
    void (*weights_changed)(lm_backend *be, const void *host);
    /* Frees the backend and what it holds (lm_backend_free). */
    void (*destroy)(lm_backend *be);
    /* ---- device memory tiers (the expert cache in device memory, experts/device_cache.h);
     * NULL on the CPU, where upload is a copy that has finished when it returns ---- */
    /* Queues a copy of host memory into a buffer of this backend on a copy queue:
     * operations issued after it wait for it, ones issued before may run beside it.
     * host_src must stay unchanged until uploads_wait returns. */
    int (*upload_async)(lm_backend *be, void *dst, const void *host_src, size_t bytes);
    /* Uploads queued after this wait for every operation issued before it, so they
     * may overwrite memory those operations read. */
    int (*upload_fence)(lm_backend *be);
    /* Blocks until every queued upload has read its host memory. */
    int (*uploads_wait)(lm_backend *be);
    /* The copy queue's time (from its first copy to its last) and bytes of the uploads
     * queued since the last call: 1 with them when they are complete; 0 when none were
     * queued or they are still running (they are then not counted). Never blocks. */
    int (*upload_timing)(lm_backend *be, double *seconds, uint64_t *bytes);
    /* Page-locks host memory that will be uploaded from often (cudaHostRegister), so
     * uploads from it run beside the kernels at full bus speed; -1 with the reason
     * in be->err when the system refuses (uploads then still work, staged). */
    int (*pin_host)(lm_backend *be, void *host, size_t bytes);
    void (*unpin_host)(lm_backend *be, void *host);
    /* Device memory now (total, free: the driver's; held, peak: what this backend
     * allocated, weight copies included, and the most it ever held). */
    int (*memory_info)(lm_backend *be, uint64_t *total, uint64_t *free_bytes, uint64_t *held, uint64_t *peak);
    /* Caps what the backend allocates (buffers and weight copies) at `bytes`; an
     * allocation beyond it fails with a message naming the cap. 0 = no cap. */
    void (*set_memory_limit)(lm_backend *be, uint64_t bytes);
    /* ---- routing left on the device (NULL where not supported) ---- */
    /* The routed SwiGLU experts of n tokens with the choice read on the device: for
     * route r < n * top_k (token r / top_k) and e = sel[r],
     * eout[r] = down_e(silu(gate_e(h)) * up_e(h)), with mats[3e], mats[3e+1],
     * mats[3e+2] expert e's gate, up and down (views of device memory, every expert
     * of the layer; the array must stay unchanged while the backend lives). For
     * n <= LM_ROUTED_MAX_TOKENS, g and u hold n * top_k rows of the intermediate; for
     * more (a prefill chunk) the backend uses scratch of its own and g, u are unused.
     * Bit for bit what matmul_batch, swiglu and the same products per expert give
     * (each expert's routes in one item, as the host-routed path groups them).
     * Returns 0, -1 with the reason, or 1 when these weights or this many tokens do
     * not allow it (the caller then routes on the host). */
    int (*moe_routed)(lm_backend *be, float *eout, const lm_mat *mats, int n_experts, const int32_t *sel,
                      const float *h, int n, int top_k, float *g, float *u);
    /* Queues a copy of device memory into host memory; host_dst holds it once the
     * next sync or download has returned. */
    int (*download_later)(lm_backend *be, void *host_dst, const void *src, size_t bytes);
    /* ---- decode steps replayed as one recorded graph (NULL where not supported) ----
     * A step whose ops never wait for the device (one token, every expert routed on
     * the device) can be recorded once and replayed: the host then issues one launch
     * instead of a few hundred. `key` names what the recording depends on (the
     * session's buffers, its KV caches, the expert tables); the backend drops every
     * recording when a buffer is freed or a weight changes. n_past is the step's
     * first position: kv_store and attention calls with pos0 == n_past read it from
     * the device, so one recording serves every position.
     * step_replay: 1 = replayed (as if the recorded ops had been called again, their
     *   download_later copies included), 0 = nothing recorded for key, -1 = error.
     * step_record_begin: 1 = the ops from now on are recorded, not run; 0 = the
     *   backend does not record (graphs off): run them as usual; -1 = error.
     * step_record_end: keep = 0 when one of the caller's ops failed. 1 = recorded
     *   and launched once (the step has run), 0 = not kept -- an op failed or needed
     *   the host -- and NOTHING ran: the caller issues the ops again as usual (the
     *   backend records no more steps); -1 = error. */
    int (*step_replay)(lm_backend *be, uint64_t key, int n_past);
    int (*step_record_begin)(lm_backend *be, uint64_t key, int n_past);
    int (*step_record_end)(lm_backend *be, int keep);
    /* ---- a step's logits checked and picked from where they are (NULL where not
     * supported: the CPU, whose logits are host memory already) ----
     * result[0] = how many of logits[n] are NaN or infinite; result[1] = the index of
     * the largest of them, the lowest index on ties, NaN never chosen (-1 when all are
     * NaN). For finite logits that is the token a host scan keeping an index only on a
     * strictly larger value picks: the sampler's greedy choice. result[2] and logits
     * are device memory. It waits for nothing, so a recorded step may include it: a
     * decode step can then be checked and picked from by downloading 8 bytes instead
     * of the vocabulary's logits. */
    int (*logits_scan)(lm_backend *be, int32_t *result, const float *logits, int n);
    /* ---- weights copied ahead of their first use (NULL where weights are read in
     * place: the CPU) ----
     * The backend's copy of W, or of the n floats at host, made now as its first use
     * would make it, so that the first forward pass does not stop at each weight to
     * upload it. */
    int (*preload)(lm_backend *be, const lm_mat *W);
    int (*preload_floats)(lm_backend *be, const float *host, size_t n);
    /* The device scratch moe_routed takes for n > LM_ROUTED_MAX_TOKENS tokens of top_k
     * routes over n_experts experts of `inter` rows (the caller's plan of device memory
     * counts it once: the backend keeps one); NULL = none. */
    uint64_t (*moe_routed_scratch_bytes)(lm_backend *be, int n, int top_k, int n_experts, int inter);
} lm_backend_ops;

/* Tokens up to which moe_routed uses the caller's g and u and one kernel for every
 * route: below the count from which a backend's matmul may take another kernel for
 * an expert's tokens (so that the routed path and the host-routed one give the same
 * numbers). Beyond it a backend groups the routes by expert itself. */
#define LM_ROUTED_MAX_TOKENS 4
/* Tokens from which the CUDA backend's products take its tensor-core kernels, and so,
 * with act_bits 8, int8 activations for MLX 4-bit weights and the ggml block types of
 * lm_cuda_act8_block (lm_backend_cpu_set_act8_scope). */
#define LM_CUDA_ACT8_MIN_TOKENS 8
/* The ggml block types the CUDA backend multiplies on int8 activations (k_gemm_g8). */
static inline int lm_cuda_act8_block(lm_dtype t) {
    return t == LM_DT_Q4_0 || t == LM_DT_Q8_0 || t == LM_DT_Q4_K || t == LM_DT_Q5_K || t == LM_DT_Q6_K;
}

struct lm_backend {
    const lm_backend_ops *ops;
    void *impl;
    uint64_t bytes_held;   /* lm_backend_alloc minus lm_backend_release, in requested bytes */
    char err[LM_ERR_LEN];  /* the last failed operation's reason */
};

/* Backends by name: "cpu" (NULL or "" mean cpu), "cuda" (builds made with
 * `make CUDA=1`: kernels/cuda/cuda_backend.h; the GPU LAZYMOE_CUDA_DEVICE, default 0).
 * n_threads as for the CPU backend. */
int lm_backend_create(lm_backend **out, const char *name, int n_threads, char *err);
/* A buffer of `bytes` for `what` (named in the error); counted in bytes_held. A
 * zero-byte request gives an empty buffer (ptr NULL) and no error. */
int lm_backend_alloc(lm_backend *be, lm_buf *out, size_t bytes, const char *what, char *err);
/* Releases a buffer (an empty one is fine) and empties it. */
void lm_backend_release(lm_backend *be, lm_buf *buf);
/* The reason the last operation failed. */
const char *lm_backend_error(const lm_backend *be);
/* The host memory of m (its data, scales and biases) was rewritten since it was last
 * handed to an op: a device backend's copies of it are refreshed at their next use
 * (ops->weights_changed); nothing on the CPU. */
void lm_backend_weights_changed(lm_backend *be, const lm_mat *m);

/* CPU backend with a pool of n_threads workers (0 = all cores). Matmul kernels:
 * the environment's LAZYMOE_KERNELS (auto, scalar, avx512, avx2, neon), default auto
 * (the best the CPU runs; scalar is the portable reference). */
int lm_backend_cpu_create(lm_backend **out, int n_threads, char *err);
/* The same with the kernels named (NULL = auto); an error if the CPU lacks them. */
int lm_backend_cpu_create_with(lm_backend **out, int n_threads, const char *kernels, char *err);
/* Precision of the activations in matmuls with affine (MLX 4/8-bit) weights:
 * 32 (default) multiplies the f32 activations with the widened weights; 8
 * quantizes each token's activations per weight group to int8 (cpu_kernels.h:
 * lm_act8) and multiplies integers, with VNNI / dot-product instructions where
 * the CPU has them -- faster, at a small stated error (tests/test_golden.c).
 * Float weights and attention stay f32 either way. max_cols (the widest matrix
 * input the model has) sizes the quantization buffer up front, so running out
 * of memory is reported here rather than during a matmul. */
int lm_backend_cpu_set_act_bits(lm_backend *be, int bits, int max_cols, char *err);
/* Narrows act_bits 8 to products of at least min_tokens tokens and, where only_bits is
 * not 0, to MLX weights of that many bits and the block types of lm_cuda_act8_block:
 * the CUDA backend's scope (its int8 paths are prefill's products of those), for the
 * CPU that computes a GPU run's missed experts (--cpu-experts), so that both sides take
 * int8 activations for the same products. */
void lm_backend_cpu_set_act8_scope(lm_backend *be, int min_tokens, int only_bits);
/* lm_backend_cpu_set_act_bits, or on CUDA lm_backend_cuda_set_act_bits (whose scratch
 * max_rows sizes: a prefill chunk's rows of inputs, its routes' for MoE models). */
int lm_backend_set_act_bits(lm_backend *be, int bits, int max_rows, int max_cols, char *err);
/* Name of the matmul kernels a CPU backend runs ("avx512", "scalar", ...). */
const char *lm_backend_cpu_kernels(const lm_backend *be);
/* Frees any backend (ops->destroy). */
void lm_backend_free(lm_backend *be);

#endif

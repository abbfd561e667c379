/* The engine: the definitions behind the opaque public types, loading and memory
 * planning, sessions and the forward pass. The public entry points (src/api/) wrap
 * these functions and add text, sampling and generation; nothing here includes or
 * calls src/api/ (tests/cli/lint.sh checks the includes).
 *
 * Errors: functions that can fail return -1 with the reason in err (LM_ERR_LEN bytes,
 * common/error.h). */
#ifndef LAZYMOE_ENGINE_H
#define LAZYMOE_ENGINE_H

#include "lazymoe.h"
#include "kernels/backend.h"
#include "experts/cache.h"
#include "experts/device_cache.h"
#include "experts/miss_split.h"
#include "experts/popularity.h"
#include "experts/trace.h"
#include "models/model.h"

struct lazymoe_model {
    lm_weights w;
    lm_backend *be;
    lazymoe_options opt;
    int chunk_tokens; /* tokens a forward chunk holds (lm_chunk_tokens): the scratch's rows */
    int max_context;
    lm_dtype kv_dtype;      /* KV cache element type (options.kv_bits) */
    lm_expert_store *store; /* reads the experts (into memory or into the cache) */
    lm_expert_cache *cache; /* NULL when every expert is resident */
    /* The expert cache in device memory (experts/device_cache.h), NULL without one;
     * what a step needs from it: the distinct experts, their status and views. */
    lm_device_cache *dcache;
    int32_t *dev_ids, *dev_need;
    uint8_t *dev_status, *host_status;
    lm_expert *dev_views;
    /* Every expert in device memory for good (preloaded, room for all): per MoE layer
     * its views as moe_routed takes them ([3 * E]: gate, up, down), else NULL; and
     * the routes of layers routed on the device in the current chunk, downloaded
     * without waiting and accounted (trace, device cache counters) at its end. */
    lm_mat **dev_table;
    int32_t *routed_sel; /* [n_layers][chunk_tokens * top_k] */
    int *routed_n;       /* [n_layers]: tokens routed on the device this chunk, 0 = none */
    uint64_t gpu_budget, gpu_fixed, gpu_pinned_bytes; /* device plan: budget, resident part; pinned host bytes */
    void **pinned_host;     /* host ranges page-locked for uploads, [n_pinned_host] */
    int n_pinned_host;
    /* options.cpu_experts: the CPU backend that computes experts a step does not
     * find in device memory, its host arrays for up to cpu_rows rows, the experts of
     * a wave it computes, and which of a step's needed experts it takes ([2E]) */
    lm_backend *cpu_be;
    int cpu_rows;
    float *cpu_x, *cpu_g, *cpu_u, *cpu_y;
    int32_t *cpu_ids;
    uint8_t *miss_on_cpu;
    uint64_t cpu_computed;
    /* cpu_experts auto: the misses of each step split between the upload and the CPU
     * (experts/miss_split.h) by costs measured at load, the CPU's kept up to date as
     * it runs (frozen when LAZYMOE_MISS_COSTS gives them); the split's arrays [E] */
    int cpu_auto;
    lm_miss_costs miss_costs;
    int miss_costs_frozen;
    int *miss_ids, *miss_rows, *miss_order;
    lm_trace *trace;        /* routing trace being recorded, or NULL */
    lm_trace_data replay;   /* routing trace replayed (replay.ids NULL if none) */
    lm_trace_data replay_pred; /* its lookahead predictions (replay_pred.ids NULL if none) */
    uint64_t budget;        /* memory budget the plan was made for (bytes) */
    uint64_t model_id;      /* identity for the popularity history */
    lm_popularity history;  /* popularity loaded at start (uses NULL if none) */
    int warm_started;       /* experts queued by the warm start */
    int warm_pending;       /* the warm start's reads wait for the first evaluation */
    int pinned;             /* experts pinned, over all layers */
    uint64_t planned_bytes; /* what the plan expects the process to use */
    /* Tokenizer, chat template, generation defaults (api/text.h): owned by the API
     * layer, which loads it after lm_engine_open and frees it before lm_engine_close;
     * the engine never touches it. */
    struct lm_model_text *text;
};

/* Scratch for one forward call over up to `cap_tokens` tokens; allocated once per
 * session (memory.c: lm_scratch_alloc), so decode allocates nothing. Shapes in
 * floats, T = cap_tokens.
 * Device arrays are backend memory (the backend's activations and index arrays);
 * host arrays are the bookkeeping of routing and lazy experts. */
typedef struct {
    int cap_tokens;
    /* ---- device ---- */
    float *x;       /* [T][H] residual stream */
    float *h;       /* [T][H] normalised input of a sub-block */
    float *q;       /* [T][nq] */
    float *qgate;   /* [T][2 nq] query + output gate per head (attn_output_gate), else NULL */
    float *shared;  /* [T][H] shared expert output (shared experts), else NULL */
    float *att;     /* [T][nq] */
    float *knew, *vnew; /* [T][nkv] keys and values of this chunk, before they are rounded into the cache */
    float *proj;    /* [T][H] output of o_proj / MLP */
    float *router;  /* [T][E] */
    float *gate, *up; /* [T][F] F = max(dense, expert, shared) intermediate; an expert sees <= T tokens */
    float *xe;      /* [T][H] tokens gathered for the experts of one batch */
    float *eout;    /* [T*top_k][H] expert outputs per (token, slot) */
    int32_t *sel;   /* [T][top_k] chosen experts */
    float *selw;    /* [T][top_k] their weights */
    int32_t *tok_of; /* [T*top_k] the chunk's routes sorted by expert (group_routes) */
    int32_t *ids;   /* [T] token ids of the chunk */
    int32_t *pos;   /* [T] their positions */
    float *la_h, *la_logits; /* router lookahead: [min(T, LOOKAHEAD_MAX_TOKENS)][H] and [..][E] */
    /* ---- host ---- */
    int32_t *sel_host;   /* [T][top_k] sel, downloaded for grouping, lazy loading and traces */
    float *selw_host;    /* [T][top_k] replayed weights, uploaded */
    int32_t *tok_of_host; /* [T*top_k] */
    int32_t *pos_host;   /* [T] */
    int32_t *expert_off, *expert_cur; /* [E+1], [E]: where each expert's routes start in tok_of */
    int32_t *expert_ids;      /* [E] experts of one run_experts call */
    lm_expert *expert_views;  /* [E] their weights */
    lm_matmul_item *expert_items; /* [2E] one backend batch */
    int32_t *need;    /* [E] distinct experts a lazy layer needs */
    uint8_t *need_status; /* [E] */
    uint8_t *expert_used; /* [E] */
    float *la_logits_host;   /* [min(T, LOOKAHEAD_MAX_TOKENS)][E] */
    int32_t *la_ids;         /* [E] experts predicted */
    uint8_t *la_mark;        /* [E] */
    /* [vocab] the last token's logits where lm_session_eval_greedy needs them on the
     * host: always on a backend with host memory; on a device only to name a
     * non-finite logit the device's scan counted */
    float *logits_host;
    /* ---- what the arrays live in ---- */
#define LM_SCRATCH_MAX_BUFS 48
    lm_buf bufs[LM_SCRATCH_MAX_BUFS]; /* backend buffers of the device arrays */
    int n_bufs;
    uint64_t host_bytes;              /* bytes of the host arrays */
    /* Backends without host memory: logits of up to logits_rows tokens on the
     * device, downloaded into the caller's array (outside the memory plan, which
     * counts host memory). Empty on the CPU, whose matmul writes them in place. */
    lm_buf logits_dev;
    int logits_rows;
    /* Backends with logits_scan: the scan of the last token's device logits
     * (int32 [2]: how many are not finite, the index of the first largest) and its
     * host copy, queued by download_later (complete after the next download or
     * sync). Empty elsewhere. */
    lm_buf logits_scan_dev;
    int32_t logits_scan_host[2];
} lm_scratch;

struct lazymoe_session {
    lazymoe_model *m;
    int n_past;
    int cap_ctx;          /* positions allocated in the caches */
    int cap_limit;        /* the caches double no further than this (0: max_context) */
    int32_t *tokens;      /* [cap_ctx] the ids held, n_past of them (prefix reuse) */
    lm_kv *k_cache, *v_cache; /* [n_layers], each [cap_ctx][nkv] in m->kv_dtype; no data for linear-attention layers */
    lm_buf *kv_bufs;      /* [n_layers][4]: K values, K scales, V values, V scales (backend memory) */
    struct lm_linear_state *lin; /* linear-attention states and snapshots (linear_attention.h), or NULL */
    uint64_t step_seen;   /* the last recordable decode step's key (forward.c graph_step) */
    /* 1: the last lm_forward scanned the logits of its last token on the device, and
     * s.logits_scan_host holds the result */
    int logits_scanned;
    lm_scratch s;
};

/* Loads the model in dir as opt says (opt required) and plans its memory; on failure
 * *out stays NULL and nothing is left allocated. */
int lm_engine_open(lazymoe_model **out, const char *dir, const lazymoe_options *opt, char *err);
/* lm_engine_open with the expert store's reads going through io (NULL = pread):
 * tests inject read faults with it. */
int lm_engine_open_io(lazymoe_model **out, const char *dir, const lazymoe_options *opt, const lm_io *io, char *err);
/* Saves the popularity history and the routing trace, frees everything but m->text. */
void lm_engine_close(lazymoe_model *m);
void lm_engine_get_info(const lazymoe_model *m, lazymoe_model_info *info);
void lm_engine_get_expert_stats(const lazymoe_model *m, int layer, lazymoe_expert_stats *st);

int lm_session_create(lazymoe_session **out, lazymoe_model *m, char *err);
void lm_session_free(lazymoe_session *s);
/* The public lazymoe_session_truncate / lazymoe_session_eval, with the engine's
 * error convention. */
int lm_session_truncate(lazymoe_session *s, int n, char *err);
/* Releases KV capacity beyond the positions held (rounded up to 256). */
int lm_session_fit(lazymoe_session *s, char *err);
void lm_session_set_growth_limit(lazymoe_session *s, int positions);
int lm_session_eval(lazymoe_session *s, const int32_t *ids, int n, float *logits, int all_positions, char *err);
/* The public lazymoe_session_eval_greedy: lm_session_eval of the last token's logits,
 * and *next_id = the index of their first largest. */
int lm_session_eval_greedy(lazymoe_session *s, const int32_t *ids, int n, int32_t *next_id, char *err);

/* Session state files (session_file.c): the first n positions of a session (tokens and
 * KV cache) saved atomically, restored into an empty session of the same model and
 * computation (backend, kernels, KV and activation precision: restored state must
 * give the logits recomputing would). Not for models with linear attention. */
int lm_session_save(const lazymoe_session *s, int n, const char *path, char *err);
uint64_t lm_session_file_bytes(const lazymoe_model *m, int n);
int lm_session_load(lazymoe_session *s, const char *path, char *err);
/* The same, restoring only the first `keep` positions (keep <= 0: all); the whole file
 * is still checked. */
int lm_session_load_prefix(lazymoe_session *s, const char *path, int keep, char *err);
/* The tokens a state file holds, after checking it belongs to this model and
 * computation (its header only; lm_session_load checks the whole file). */
int lm_session_file_tokens(const lazymoe_model *m, const char *path, int32_t **tokens, int *n, char *err);

/* Tokens per forward chunk on the CPU, and the most sequences a batch step decodes
 * together: bounds scratch memory during long prefills while keeping expert matmuls
 * batched. */
#define LM_CHUNK_TOKENS 256
/* ... on a GPU: each chunk reads every expert it routes to once, and a chunk of 256
 * tokens gives Qwen3-30B-A3B's 128 experts 16 routes each (a tensor-core tile, and
 * many under the 8 that take the GEMV); 512 is also llama.cpp's default ubatch. */
#define LM_DEVICE_CHUNK_TOKENS 512
/* The chunk of a model on backend `cpu_backend` (1: the CPU): the constants above, or
 * LAZYMOE_CHUNK_TOKENS=N (8..4096; A/B runs). */
int lm_chunk_tokens(int cpu_backend);

/* Session memory (memory.c). Each size is computed from the table its allocator
 * allocates from, so the plan and the allocation cannot drift apart. */
/* KV cache for ctx positions (values and int8 scales) plus the held token ids. */
uint64_t lm_kv_cache_bytes(const lm_config *c, int ctx, lm_dtype dt);
/* Forward scratch for chunks of T tokens (device and host arrays). */
uint64_t lm_scratch_bytes(const lm_config *c, int T);
/* The device logits buffer a backend without host memory gets beside the scratch,
 * with the scan result of backends that scan logits (an upper bound: counted for
 * every such backend). */
uint64_t lm_logits_device_bytes(const lm_config *c, int T);
int lm_scratch_alloc(lm_scratch *S, lm_backend *be, const lm_config *c, int T, char *err);
void lm_scratch_free(lm_scratch *S, lm_backend *be);
/* Resizes a session's KV caches and token list to `cap` positions (cap >= the
 * positions held), keeping what they hold. */
int lm_kv_cache_grow(lazymoe_session *s, int cap, char *err);
/* One layer's KV buffers for cap positions: K values, K scales, V values, V scales. */
void lm_kv_layer_bytes(const lm_config *c, int cap, lm_dtype dt, size_t bytes[4]);
void lm_kv_cache_free(lazymoe_session *s);
/* Bytes a session holds now: KV cache, tokens, scratch, linear-attention states --
 * counted from what was allocated (tests compare it with the plan's sizes). */
uint64_t lm_session_bytes(const lazymoe_session *s);
/* What the memory plan counts for one session holding ctx positions (engine.c). */
uint64_t lm_session_plan_bytes(const lazymoe_model *m, int ctx);

/* Router lookahead predicts experts for decode steps of at most this many tokens. */
#define LOOKAHEAD_MAX_TOKENS 4

/* Runs the model over ids[n] at positions n_past.. (cache already sized). Writes
 * logits of every token (all = 1) or of the last one into out. */
int lm_forward(lazymoe_session *s, const int32_t *ids, int n, float *out, int all, char *err);
/* 1 when lm_forward_scanned can run: a backend whose logits_scan this session's
 * scratch has a result buffer for. */
int lm_forward_can_scan(const lazymoe_session *s);
/* lm_forward for the last token's logits left on the device, only scanned there
 * (logits_scan into s->s.logits_scan_host, complete when it returns; sets
 * s->logits_scanned): for a caller that needs no more than their first largest and
 * whether they are all finite. */
int lm_forward_scanned(lazymoe_session *s, const int32_t *ids, int n, char *err);
/* After lm_forward_scanned: downloads those logits into out[vocab]. */
int lm_forward_download_scanned(lazymoe_session *s, float *out, char *err);

/* Expert e of MoE layer l on the CPU backend beside a device (options.cpu_experts),
 * from its resident host weights: x [rows][H] into y [rows][H], through m->cpu_g
 * and m->cpu_u (rows <= m->cpu_rows). */
int lm_cpu_expert(lazymoe_model *m, int l, int e, const float *x, int rows, float *y, char *err);

/* A batch step (several sessions, one token each, in one pass): writes the logits of
 * sequence i into out + i * vocab (out may be NULL). b is a batch session
 * (lm_batch_session_create): its scratch holds the step's rows; each sequence's
 * attention and recurrent state use its own caches. Every row is computed exactly
 * as lm_forward computes that session's token alone (the kernels are invariant to
 * the rows beside a row). Advances each sequence's n_past on success only. */
int lm_forward_batch(lazymoe_session *b, lazymoe_session *const *seqs, const int32_t *ids, int n, float *out,
                     char *err);
/* A session that holds no context, only a forward scratch for max_seqs rows: the
 * working memory of batch steps (free with lm_session_free). */
int lm_batch_session_create(lazymoe_session **out, lazymoe_model *m, int max_seqs, char *err);
/* lm_session_eval for a batch step: grows each sequence's KV cache, runs
 * lm_forward_batch, records the tokens, refuses non-finite logits. */
int lm_session_eval_batch(lazymoe_session *b, lazymoe_session *const *seqs, const int32_t *ids, int n, float *logits,
                          char *err);

/* Prefix reuse: the largest position <= want the session can go back to without
 * computing anything (want itself for pure-attention models). */
int lm_session_reusable(const lazymoe_session *s, int want);
/* Asks for a snapshot of the recurrent states at position pos (>= the session's
 * length) during the next evaluation; nothing for pure-attention models. */
void lm_session_snapshot_at(lazymoe_session *s, int pos);

#endif

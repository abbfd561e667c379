/* lazymoe: exact inference for Mixture-of-Experts language models.
 *
 * The public interface is deliberately small and opaque, so the CLI, the HTTP
 * server and embedding programs never depend on tensor internals:
 *
 *   lazymoe_model    the loaded weights and hyper-parameters (read-only, shareable)
 *   lazymoe_session  one context: KV cache and position; one thread at a time
 *
 * Error convention: functions that can fail return 0 on success and -1 on
 * failure, writing a one-line reason into the caller's buffer `err` of `errlen`
 * bytes (which may be NULL / 0).
 *
 * The library writes nothing to stdout or stderr: warnings and, when asked for
 * (options.verbose), progress go to the log callback the program installs with
 * lazymoe_set_log, and nowhere without one.
 */
#ifndef LAZYMOE_H
#define LAZYMOE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LAZYMOE_VERSION "0.1.0"
/* Default lookahead gate (lazymoe_options.lookahead_gate): a layer's lookahead reads go
 * out while at least half of them are used (bench/RESULTS.md, issue 20). */
#define LAZYMOE_LOOKAHEAD_GATE 0.5

typedef struct lazymoe_model lazymoe_model;
typedef struct lazymoe_session lazymoe_session;
typedef struct lazymoe_batch lazymoe_batch;

typedef enum {
    LAZYMOE_EVICT_LRU = 0,   /* least recently used */
    LAZYMOE_EVICT_LCP = 1,   /* mlx-moe's frequency x 0.25^(age/128) (default: no policy
                              * measured beats it on every held-out trace, bench/RESULTS.md) */
    LAZYMOE_EVICT_LFRU = 2,  /* decayed frequency + recency window (experimental) */
    LAZYMOE_EVICT_LRFU = 3,  /* every past use weighs 2^(-age/16) (experimental) */
    LAZYMOE_EVICT_STALE = 4, /* predicted next use from each expert's own rhythm (experimental) */
} lazymoe_eviction;

typedef struct {
    int n_threads;   /* worker threads for the matrix work; 0 = all cores */
    int max_context; /* tokens a session may hold; 0 = the model's maximum, lowered to
                      * what a quarter of the memory left after the resident weights
                      * holds as KV cache (at least 4096) */
    int verbose;     /* 1 = progress and the memory plan, through the log callback (lazymoe_set_log) */
    /* Memory: the whole process (resident weights, KV cache for max_context,
     * expert cache, buffers) is planned to fit memory_budget bytes; 0 = 85% of
     * what is available (MemAvailable and the cgroup limit, the smaller). */
    uint64_t memory_budget;
    /* Experts cached per MoE layer: 0 = as many as the budget allows (all of them
     * when they fit: fully resident); -1 = all resident regardless of the budget;
     * N > 0 = an N-slot cache per layer, experts read on demand. */
    int expert_capacity;
    int io_threads;           /* concurrent expert reads (reader threads); 0 = the default (8) */
    uint64_t io_chunk_bytes;  /* largest single expert read: longer tensors are read in several
                               * requests at once, so a few misses still fill the queue;
                               * 0 = the default (2 MiB) */
    lazymoe_eviction eviction;
    int buffered_io;          /* 1 = no O_DIRECT (reads go through the page cache) */
    const char *trace_routing; /* record the routing of every token to this file */
    /* Benchmarks only: replay a routing trace in place of the router's picks
     * (token i uses the trace's token i modulo its length, equal weights). The
     * output is then meaningless; the expert traffic is the trace's. */
    const char *replay_routing;
    /* Benchmarks only, with replay_routing: a lookahead trace (per token and layer, the
     * experts the router lookahead predicts, best first; tools/train_routing_model.py
     * records them) whose first `lookahead` picks are read ahead in place of the
     * prediction the router would make from the replayed run's residual. */
    const char *replay_lookahead;
    /* Warm start: expert popularity learned from earlier runs of this model is kept
     * under $XDG_CACHE_HOME/lazymoe (or ~/.cache/lazymoe); at start the cache is filled
     * with the hottest experts in the background -- and a device expert cache over
     * resident host experts (gpu_memory) with its hottest ones at load, uploaded from
     * memory. 1 = neither read nor write it. */
    int no_warm_start;
    /* Pinning (lazy experts only): the pin_experts most popular experts of each MoE layer,
     * by the same popularity history the warm start uses, are read at start and never
     * evicted; they take pin_experts of the expert_capacity slots, and the rest must
     * still hold a token's top_k experts (else lazymoe_model_open fails). With resident
     * host experts and a device expert cache, the same in device memory (of its slots).
     * Without a history (a model's first run, or no_warm_start) nothing is pinned.
     * 0 = off. */
    int pin_experts;
    /* KV cache positions the memory plan reserves, summed over every session the
     * program keeps (a server keeping several conversations); 0 = max_context (one
     * full session). Values below max_context count as max_context. */
    int kv_cache_tokens;
    /* Sessions the program keeps at once (a server's prompt-cache slots): each has its
     * own forward scratch and linear-attention states, which the plan counts that many
     * times; 0 = 1. */
    int sessions;
    /* Sequences decoded together (lazymoe_batch, a server's --parallel): the plan adds
     * the batch's scratch for that many rows when above 1; 0 = 1. */
    int parallel;
    /* Router lookahead (lazy experts only, decode steps of up to 4 tokens): when a layer
     * is done, the next MoE layer's router is applied to its input -- before that
     * layer's attention has run -- and the `lookahead` most likely experts per token
     * that are not cached are read in the background meanwhile. Predictions only
     * decide what is read early; every routed expert is still computed exactly.
     * 0 = off; -1 (lazymoe_options_init) = the model's top_k on the CPU backend for
     * experts of 1 MiB or more (as many predictions as a token routes to: with more, at
     * most half of them can be used and the default gate closes), off for smaller
     * experts (the reads' fixed costs win) and on other backends, where a decode step
     * would wait for each layer's predictions (bench/RESULTS.md, issue 20, session 17). */
    int lookahead;
    /* Lookahead reads of a layer are issued only while at least this share of them is
     * routed to (measured per layer over the last ~32 steps, on the predictions held
     * back too, so a layer whose predictions improve opens again): the router's
     * prediction gets worse with depth on some models, and a read nobody uses costs as
     * much as a miss. lazymoe_options_init sets LAZYMOE_LOOKAHEAD_GATE; 0 = every
     * prediction is read. */
    double lookahead_gate;
    /* KV cache precision: 16 (default, IEEE half), 32 (f32) or 8 (int8 with one
     * scale per position and KV head); 0 = default. */
    int kv_bits;
    /* Activation precision in matmuls with quantized weights (MLX affine, GGUF
     * blocks, MXFP4): 8 (each token's input quantized to int8 per group of values and
     * multiplied with integer dot-product instructions, as llama.cpp does: fast, with
     * the error tests/test_golden.c states) or 32 (f32 activations, the reference
     * numerics). Float weights always take f32. Lazy and resident runs stay
     * bit-identical either way. 0 = default: 8 when the model has quantized
     * weights, else 32. */
    int act_bits;
    /* Where the tensor work runs: "cpu" (default; NULL = cpu) or "cuda" (a build made
     * with make CUDA=1). */
    const char *backend;
    /* Device memory (backends with their own memory, a GPU): everything the backend
     * allocates -- non-expert weights, KV cache for max_context, scratch, and the
     * expert cache in device memory, above the host tier (resident experts or the
     * host expert cache of memory_budget) -- is planned to fit gpu_memory bytes and
     * never goes beyond it; 0 = what the device has free (less a margin). A budget
     * that cannot hold the resident part and one expert per MoE layer is refused
     * with the size needed. On the CPU backend a nonzero value keeps the same tier
     * as a second pool in RAM (a test of the tier's logic; no use otherwise). */
    uint64_t gpu_memory;
    /* Steps of at most cpu_experts tokens (decode) compute the experts that are not in
     * device memory on the CPU, from resident host memory, while the device computes
     * the ones it holds -- no expert crosses the bus then; longer steps (prefill)
     * upload them. LAZYMOE_CPU_EXPERTS_AUTO: every step splits its misses between
     * the upload and the CPU, both at once, by the costs of each measured at load
     * and the CPU's kept up to date while it runs; with -v the costs are shown.
     * Needs every expert resident in host memory (N is refused otherwise; auto then
     * uploads every miss). Results stay within the CPU-vs-GPU tolerance
     * (tests/cuda/test_cuda.c). 0 = off: every miss is uploaded (then results are
     * bit-identical at every device capacity). */
    int cpu_experts;
} lazymoe_options;

/* options.cpu_experts: the split of each step's misses chosen by measured costs. */
#define LAZYMOE_CPU_EXPERTS_AUTO (-1)

/* Fills the defaults above. */
void lazymoe_options_init(lazymoe_options *opt);

/* Loads the model in `dir` (config.json + safetensors, Hugging Face or MLX layout). */
int lazymoe_model_open(lazymoe_model **out, const char *dir, const lazymoe_options *opt, char *err,
                       size_t errlen);
void lazymoe_model_close(lazymoe_model *m);

typedef struct {
    char model_type[32];
    int n_layers, n_moe_layers;
    int n_experts, top_k;
    int hidden_size, vocab_size;
    int n_heads, n_kv_heads, head_dim;
    int max_context;           /* this model handle's context (lazymoe_options.max_context) */
    int model_max_context;     /* what the model declares (max_position_embeddings) */
    uint64_t params_total;     /* all parameters (unquantized count) */
    uint64_t params_active;    /* parameters used per token */
    uint64_t params_expert;    /* parameters of one expert (gate + up + down) */
    uint64_t bytes_resident;   /* non-expert weight bytes as stored */
    uint64_t bytes_per_expert; /* one expert as stored, scales and biases included */
    uint64_t bytes_experts;    /* all experts */
    int quant_bits, quant_group_size; /* 0 bits = float weights */
    char quant_mode[8];        /* MLX quantization mode when quant_bits: "affine" or "mxfp4" */
    char weight_dtype[16];     /* stored dtype of the float weights ("BF16", ...) */
    /* Tensors in the files per stored type, most frequent first ("Q4_K x 96, Q6_K x 48,
     * F32 x 97"; safetensors dtypes by their names, GGUF blocks by ggml's). */
    char tensor_types[160];
    int block_weights;         /* 1 when some tensor is a ggml block type (a quantized GGUF) */
    int n_eos;
    int32_t eos_ids[8];
    char expert_layout[16];    /* "mlx-stacked", "hf-fused" or "hf-separate" */
    int expert_read_ranges;    /* separate byte ranges to read one expert */
    int act_bits;              /* activation precision in effect (8 or 32; options.act_bits) */
    int skipped_mtp_layers;    /* multi-token-prediction layers in the files: not part of the
                                  forward pass, never read */
    int skipped_vision_tower;  /* 1 if the files hold a vision tower (never read) */
} lazymoe_model_info;

void lazymoe_model_get_info(const lazymoe_model *m, lazymoe_model_info *info);

typedef struct {
    int resident;             /* 1: every expert in memory, no cache */
    int capacity;             /* expert slots per MoE layer */
    uint64_t hits, misses;    /* routed experts found cached / read from disk */
    uint64_t bytes_read;      /* expert bytes read from disk */
    uint64_t direct_bytes_read; /* of them, read with direct I/O (O_DIRECT), not the page cache */
    uint64_t prefetched;         /* router-lookahead reads queued */
    uint64_t prefetch_used;      /* of them, routed to before being evicted */
    uint64_t prefetch_cancelled; /* dropped unstarted: the layer did not need them */
    double read_seconds;      /* summed over the reader threads */
    double wait_seconds;      /* compute blocked waiting for reads */
    uint64_t memory_budget;   /* the budget the plan was made for */
    uint64_t planned_bytes;   /* what the plan expects the process to use */
    uint64_t peak_rss_bytes;  /* measured peak resident set size */
    int io_threads;           /* reader threads of the expert cache (0 when resident) */
    int warm_start_experts;   /* experts queued from the popularity history at start */
    int pinned_experts;       /* experts pinned (never evicted), over the layers asked for */
    /* The expert cache in device memory (gpu_capacity 0: none, the CPU backend). */
    int gpu_capacity;             /* device expert slots per MoE layer */
    int gpu_experts;              /* experts in device memory now (over the layers asked for) */
    uint64_t gpu_hits;            /* routed experts found in device memory */
    uint64_t gpu_uploads;         /* experts uploaded from host memory into device slots */
    uint64_t gpu_upload_bytes;    /* bytes those uploads moved */
    uint64_t cpu_computed_experts; /* experts computed on the CPU from host memory (options.cpu_experts) */
    uint64_t gpu_budget;          /* the device memory budget (options.gpu_memory or the default) */
    uint64_t gpu_resident_bytes;  /* planned device bytes besides the expert slots (weights, KV, scratch) */
    uint64_t gpu_expert_bytes;    /* device bytes of the expert slots */
    uint64_t gpu_peak_bytes;      /* the most device memory the backend held at once */
    uint64_t gpu_total_bytes;     /* the device's memory */
    uint64_t gpu_pinned_bytes;    /* host expert memory page-locked for uploads */
    /* cpu_experts auto: the costs the split of misses uses now, in microseconds (an
     * upload; the CPU's round trip per layer, one expert for one row, each more row);
     * zeros otherwise */
    double miss_costs_us[4];
} lazymoe_expert_stats;

/* Expert cache counters and memory plan (l < 0: all layers; else one layer). */
void lazymoe_model_get_expert_stats(const lazymoe_model *m, int layer, lazymoe_expert_stats *st);

/* What a routing trace (options.trace_routing) says about the routing a run saw,
 * over tokens [skip_tokens, end): per MoE layer, averaged over layers. */
typedef struct {
    int tokens;
    double distinct_experts;  /* experts used at least once in the layer */
    double consecutive_reuse; /* share of a token's experts the previous token also used */
    double top16_share;       /* share of all picks that went to the layer's 16 most used experts */
} lazymoe_routing_summary;

int lazymoe_routing_summarize(const char *trace_path, int skip_tokens, lazymoe_routing_summary *out, char *err,
                              size_t errlen);
/* The same over tokens [skip_tokens, end_token) (end_token < 0: to the end). */
int lazymoe_routing_summarize_range(const char *trace_path, int skip_tokens, int end_token,
                                    lazymoe_routing_summary *out, char *err, size_t errlen);

int lazymoe_session_create(lazymoe_session **out, lazymoe_model *m, char *err, size_t errlen);
void lazymoe_session_free(lazymoe_session *s);
/* Tokens currently held in the session's context. */
int lazymoe_session_length(const lazymoe_session *s);
/* Positions the session's KV cache has memory for: it grows by doubling as the
 * context grows (up to max_context) and shrinks only by lazymoe_session_fit. */
int lazymoe_session_capacity(const lazymoe_session *s);
/* Releases the KV memory beyond what the session holds (rounded up to 256
 * positions): a kept conversation then costs what it holds, not the doubled
 * capacity it grew to. */
int lazymoe_session_fit(lazymoe_session *s, char *err, size_t errlen);
/* Doubling stops at `positions` (0: at max_context, the default): a caller that
 * reserved KV room for a request (the server's --cache-tokens budget) keeps the
 * session's memory inside the reservation rather than up to twice it. An evaluation
 * that needs more than the limit still gets exactly what it needs. */
void lazymoe_session_set_growth_limit(lazymoe_session *s, int positions);
/* Session state on disk: the first n positions a session holds (its tokens and KV
 * cache), written atomically (a temporary file renamed into place). A state restores
 * into an empty session of the same model and computation (backend, kernels, KV and
 * activation precision): the restored session continues exactly as the saved one
 * would, so generation after it equals evaluating the tokens again. Loading checks
 * the header, every token id and a checksum; a foreign, truncated or corrupt file is
 * an error and leaves the session empty. Models with linear attention are refused. */
int lazymoe_session_save(const lazymoe_session *s, int n, const char *path, char *err, size_t errlen);
int lazymoe_session_load(lazymoe_session *s, const char *path, char *err, size_t errlen);
/* The same, restoring only the file's first max_tokens positions (<= 0: all of them);
 * the whole file is still checked. What a request sharing only part of a stored
 * conversation needs, without taking KV room for the rest. */
int lazymoe_session_load_prefix(lazymoe_session *s, const char *path, int max_tokens, char *err, size_t errlen);
/* The token ids a state file holds (*tokens malloc'd, lazymoe_free), after checking
 * it belongs to this model and computation: to choose which file to load. */
int lazymoe_session_file_tokens(const lazymoe_model *m, const char *path, int32_t **tokens, int *n, char *err,
                                size_t errlen);
/* The exact size of the state file lazymoe_session_save writes for n positions: a
 * cache under a disk limit makes room for it before writing. */
uint64_t lazymoe_session_file_bytes(const lazymoe_model *m, int n);
/* Forgets all tokens after the first n (n <= length). Models with recurrent state
 * (qwen3_next's linear attention) cannot cut it back: they return to the nearest state
 * snapshot at or before n (generation keeps one before each prompt's last token), or
 * to the start, and evaluate the held tokens from there to n again, which costs
 * compute and can fail like lazymoe_session_eval. */
int lazymoe_session_truncate(lazymoe_session *s, int n, char *err, size_t errlen);

/* Appends n tokens to the context and runs the model over them.
 * logits: NULL, or room for the logits of the last token [vocab] (all_positions = 0)
 * or of every appended token [n][vocab] (all_positions = 1). */
int lazymoe_session_eval(lazymoe_session *s, const int32_t *ids, int n, float *logits,
                         int all_positions, char *err, size_t errlen);

/* lazymoe_session_eval(s, ids, n, logits, 0, ...) for a caller that needs only the
 * greedy pick: *next_id = the index of the last token's largest logit, the lowest
 * on ties (the token temperature 0 samples), with the same errors, a non-finite
 * logit included. On a GPU the pick is made there and the logits never come to the
 * host (a few bytes instead of the vocabulary's logits per token). */
int lazymoe_session_eval_greedy(lazymoe_session *s, const int32_t *ids, int n, int32_t *next_id,
                                char *err, size_t errlen);

/* ---- Batches: several sessions decoded together ----------------------------------
 * A batch evaluates one token for each of up to max_seqs sessions in a single
 * forward pass: each session's attention (or recurrent state) uses its own context,
 * while the feed-forward and expert matmuls run on all rows together, so a routed
 * expert is read and applied once per step for every session that routes to it.
 * Each session's logits are bit-identical to evaluating its token alone.
 * Generations in different threads that share a batch (lazymoe_gen_params.batch)
 * meet at each decode step; a batch serializes all use of the model among them:
 * other calls that touch sessions or the model while such generations run (create,
 * free, truncate, fit, save, load, eval) must hold lazymoe_batch_lock. */
int lazymoe_batch_create(lazymoe_batch **out, lazymoe_model *m, int max_seqs, char *err, size_t errlen);
void lazymoe_batch_free(lazymoe_batch *b);
/* One token per session: ids[i] is appended to s[i] (n <= max_seqs distinct sessions
 * of the batch's model); logits: NULL or room for [n][vocab], row i for s[i].
 * Takes the batch's lock for the call. */
int lazymoe_batch_eval(lazymoe_batch *b, lazymoe_session *const *s, const int32_t *ids, int n, float *logits,
                       char *err, size_t errlen);
/* Exclusive use of the model between batch steps and prompt chunks. */
void lazymoe_batch_lock(lazymoe_batch *b);
void lazymoe_batch_unlock(lazymoe_batch *b);
/* Steps run and tokens they evaluated since the batch was made (tokens / steps is
 * the average batch size). */
void lazymoe_batch_counters(lazymoe_batch *b, unsigned long long *steps, unsigned long long *tokens);

/* Token ids the session holds, in order (lazymoe_session_length of them); the
 * pointer is valid until the next call that changes the session. */
const int32_t *lazymoe_session_tokens(const lazymoe_session *s);

/* ---- Text --------------------------------------------------------------------
 * A model directory with tokenizer.json (+ tokenizer_config.json, chat template,
 * generation_config.json) can be driven with text. Without one, the functions
 * below fail with "... has no tokenizer.json" and only token ids work.
 * Strings returned through `char **` are malloc'd and NUL-terminated: release them
 * with lazymoe_free. */

void lazymoe_free(void *p);

/* Encodes UTF-8 text. add_special = 1 adds the tokenizer's own special tokens (a BOS
 * for Llama 3), as transformers' encode(text) does; pass 0 for text rendered by a chat
 * template, which writes them itself. Special tokens written in the text
 * ("<|im_start|>") always become their ids. *ids is malloc'd (lazymoe_free). */
int lazymoe_tokenize(const lazymoe_model *m, const char *text, size_t len, int add_special, int32_t **ids,
                     int *n_ids, char *err, size_t errlen);
/* The same, but counting stops once the text is known to need more than max_ids ids
 * (a prompt that cannot fit costs no more than the limit): *n_ids > max_ids then
 * means "too long", and *ids is a prefix of the encoding. */
int lazymoe_tokenize_max(const lazymoe_model *m, const char *text, size_t len, int add_special, int max_ids,
                         int32_t **ids, int *n_ids, char *err, size_t errlen);
/* Decodes ids to valid UTF-8 (broken sequences become U+FFFD); skip_special = 1 drops
 * special tokens (<|im_end|>). */
int lazymoe_detokenize(const lazymoe_model *m, const int32_t *ids, int n_ids, int skip_special, char **text,
                       char *err, size_t errlen);

/* Renders the model's chat template as transformers' apply_chat_template does.
 * messages_json: a JSON array of {"role", "content", ...}; tools_json: a JSON array
 * or NULL; kwargs_json: a JSON object of extra template variables or NULL
 * (e.g. {"enable_thinking": false}). Returns 0; on failure -1, or one of these when
 * the fault is the input's rather than the template's: */
#define LAZYMOE_TEMPLATE_REFUSED (-2)   /* the template's raise_exception() refused the messages */
#define LAZYMOE_TEMPLATE_TOO_LARGE (-3) /* they exceed a render limit (time, memory, loops, output) */
int lazymoe_chat_format(const lazymoe_model *m, const char *messages_json, const char *tools_json,
                        int add_generation_prompt, const char *kwargs_json, char **text, char *err,
                        size_t errlen);
/* The same, with the text's length in *len: a string in the messages may hold NUL
 * bytes ("\u0000" in the JSON, e.g. a binary file an agent read), which the text then
 * holds too; they are tokenized like any other character. */
int lazymoe_chat_format_n(const lazymoe_model *m, const char *messages_json, const char *tools_json,
                          int add_generation_prompt, const char *kwargs_json, char **text, size_t *len, char *err,
                          size_t errlen);

/* Sampling, in the order applied:
 *   penalties    repetition_penalty (transformers: a seen token's logit is divided by
 *                it when positive, multiplied when negative; "seen" = the session's
 *                context, prompt included), then presence_penalty / frequency_penalty
 *                (OpenAI: logit -= presence * (count > 0) + frequency * count, counting
 *                the tokens generated by this call);
 *   temperature  0 = greedy: the highest logit, lowest id on ties (no RNG is used);
 *   top_k        keep the k most likely (0 = off);
 *   top_p        keep the most likely tokens until their probability reaches top_p (1 = off);
 *   min_p        drop tokens less likely than min_p x the most likely one (0 = off).
 * Equal seeds and settings give equal tokens. */
typedef struct {
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float repetition_penalty; /* 1 = off */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    uint64_t seed;
} lazymoe_sampling;

/* Neutral settings (greedy, no filters, no penalties, seed 0); with a model m, the
 * defaults of its generation_config.json (temperature, top_k, top_p, min_p,
 * repetition_penalty; do_sample false means greedy). m may be NULL. */
void lazymoe_sampling_init(lazymoe_sampling *p, const lazymoe_model *m);

typedef enum {
    LAZYMOE_FINISH_NONE = 0,
    LAZYMOE_FINISH_STOP,      /* an end-of-sequence token or a stop string */
    LAZYMOE_FINISH_LENGTH,    /* max_tokens reached, or the context is full */
    LAZYMOE_FINISH_CANCELLED, /* the callback returned non-zero or *cancel was set */
} lazymoe_finish;

/* One token and its log-probability under the model (see lazymoe_gen_params.on_token). */
typedef struct {
    int32_t id;
    float logprob;     /* natural log; -inf for a token the model gives no chance */
    const char *bytes; /* the token's bytes as the tokenizer decodes it alone: may be */
    size_t n_bytes;    /* part of a UTF-8 character (borrowed for the callback) */
} lazymoe_token_prob;

typedef struct {
    lazymoe_token_prob token; /* the generated token */
    int n_top;                /* the n_top most likely tokens at this step, most likely */
    const lazymoe_token_prob *top; /* first (ties: lower id first) */
} lazymoe_token_info;

/* Returning non-zero stops generation (finish reason CANCELLED). */
typedef int (*lazymoe_token_fn)(void *ctx, const lazymoe_token_info *info);

/* Most alternatives on_token reports per step. */
#define LAZYMOE_MAX_TOP_LOGPROBS 20

typedef struct {
    lazymoe_sampling sampling;
    int max_tokens;             /* tokens generated at most; default 512 */
    const char *const *stop;    /* n_stop stop strings: the text ends before the first one, */
    int n_stop;                 /* which is never emitted (borrowed for the call) */
    int ignore_eos;             /* 1 = do not stop at end-of-sequence tokens */
    int add_special;            /* tokenizing a text prompt: see lazymoe_tokenize; default 1 */
    const int32_t *prompt_ids;  /* the prompt as ids, used when the text prompt is NULL */
    int n_prompt_ids;
    /* Optional: generation stops soon after *cancel becomes non-zero (checked between
     * tokens and between prompt chunks), e.g. from a SIGINT handler. */
    const volatile sig_atomic_t *cancel;
    /* Tests only: the generated tokens are the tokenization of this text (special
     * tokens written in it become their ids) instead of sampled ones. The model still
     * evaluates every token; end-of-sequence ids, stop strings, max_tokens and the
     * context limit apply as usual; when the text is used up, generation ends with
     * finish reason STOP. NULL = sample normally. */
    const char *forced_text;
    /* Optional constrained decoding: the answer is a sentence of this grammar. Before
     * each draw, tokens whose bytes cannot continue it are masked out; end-of-sequence
     * is allowed only once the text so far is a whole sentence, and is the only choice
     * when nothing can follow. Borrowed for the call; ignored with forced_text. */
    const struct lazymoe_grammar *grammar;
    /* Optional: called for every generated token that becomes part of the answer (not
     * an end-of-sequence token), before its text reaches the piece callback, with its
     * log-probability under the model's own distribution: log-softmax of the logits,
     * before temperature, penalties, filters and the grammar's mask -- what the model
     * thinks, independent of how the token was drawn. n_top_logprobs (0 ..
     * LAZYMOE_MAX_TOP_LOGPROBS) alternatives come with it. */
    lazymoe_token_fn on_token;
    void *token_ctx;
    int n_top_logprobs;
    /* 1 = special tokens the model writes (other than the end-of-sequence token that
     * ends generation) reach the text as their strings, e.g. harmony's <|channel|>,
     * for a parser that needs them; default 0 (they are left out). */
    int keep_special;
    /* Optional: decode together with the other generations sharing this batch (each
     * running in its own thread on its own session, see lazymoe_batch_create): every
     * decode step evaluates their next tokens in one forward pass, and prompt chunks
     * take turns with those steps. The answer is the one generating alone gives.
     * NULL = alone. */
    lazymoe_batch *batch;
} lazymoe_gen_params;

/* Defaults above, sampling from lazymoe_sampling_init(m). */
void lazymoe_gen_params_init(lazymoe_gen_params *p, const lazymoe_model *m);

/* Grammars for lazymoe_gen_params.grammar. The text form has rules "name ::= ..."
 * with "literals", [character classes], rule names, ( groups ), | alternatives and
 * * + ? {m,n} repetition; the rule "root" is the start (src/text/grammar.h). The JSON
 * Schema form gives a grammar of JSON texts that validate against the schema
 * (supported keywords: src/text/json_schema.h; others are refused by name). An
 * immutable grammar may serve any number of concurrent generations. */
typedef struct lazymoe_grammar lazymoe_grammar;
int lazymoe_grammar_parse(const char *text, lazymoe_grammar **out, char *err, size_t errlen);
int lazymoe_grammar_from_json_schema(const char *schema_json, lazymoe_grammar **out, char *err, size_t errlen);
void lazymoe_grammar_free(lazymoe_grammar *g);

typedef struct {
    int prompt_tokens;        /* tokens of the prompt */
    int cached_tokens;        /* of which already in the session (not evaluated again) */
    int generated_tokens;
    double prefill_seconds;   /* evaluating the uncached prompt tokens */
    double decode_seconds;    /* from the first generated token to the last */
    double prefill_tok_per_s; /* (prompt - cached) / prefill_seconds */
    double decode_tok_per_s;  /* tokens evaluated while decoding / decode_seconds */
    uint64_t peak_rss_bytes;  /* of the process so far */
    double expert_hit_rate;   /* routed experts found in the cache during the call; -1 when resident */
    uint64_t expert_bytes_read; /* expert bytes read from disk during the call */
    lazymoe_finish finish_reason;
    int stop_index;           /* finish STOP by a stop string: its index in params->stop; else -1 */
} lazymoe_gen_stats;

/* Receives the answer as it is generated: each piece is complete UTF-8 (a character
 * split across tokens arrives whole) and never part of a stop string. Returning
 * non-zero stops generation (finish reason CANCELLED). */
typedef int (*lazymoe_piece_fn)(void *ctx, const char *piece, size_t len);

/* Generates after `prompt` (text; or params->prompt_ids when NULL). The session keeps
 * its context across calls: the longest common prefix of what it holds and the new
 * prompt is reused, the rest is dropped and only the new suffix is evaluated, so a
 * conversation re-sent in full costs only its new turn. The prompt must fit the
 * context (never truncated). Generated tokens stay in the session. stats may be NULL. */
int lazymoe_generate_stream(lazymoe_session *s, const char *prompt, const lazymoe_gen_params *params,
                            lazymoe_piece_fn on_piece, void *ctx, lazymoe_gen_stats *stats, char *err,
                            size_t errlen);
/* The same, collecting the answer: *text is malloc'd (lazymoe_free). */
int lazymoe_generate(lazymoe_session *s, const char *prompt, const lazymoe_gen_params *params, char **text,
                     lazymoe_gen_stats *stats, char *err, size_t errlen);

/* ---- Logging -----------------------------------------------------------------
 * What the library has to say besides errors returned from calls: warnings (a
 * fallback taken, a file that could not be saved; the result is still right),
 * with options.verbose the progress and memory plan of lazymoe_model_open, and the
 * HTTP server's request lines. Without a callback nothing is written anywhere. */
typedef enum {
    LAZYMOE_LOG_ERROR = 0, /* something failed that no call's error reports (a trace not saved) */
    LAZYMOE_LOG_WARN,      /* a fallback was taken; results are unaffected */
    LAZYMOE_LOG_INFO,      /* progress lines, the memory plan, server requests */
    /* A progress meter update, as terminal text: it starts with '\r' (overwriting the
     * previous update) and the last update of a series ends with '\n'. */
    LAZYMOE_LOG_PROGRESS,
} lazymoe_log_level;

/* msg: one line without a newline (LAZYMOE_LOG_PROGRESS: see above), valid during the
 * call. Called one at a time, from whichever thread logs (reader threads too). */
typedef void (*lazymoe_log_fn)(void *ctx, lazymoe_log_level level, const char *msg);

/* Installs the process-wide log callback; NULL removes it. */
void lazymoe_set_log(lazymoe_log_fn fn, void *ctx);

/* Finds a model: an existing directory or file (a .gguf) is used as is; otherwise a
 * Hugging Face repo id "ORG/NAME" is looked up in the local Hugging Face cache
 * ($HF_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub,
 * ~/.cache/huggingface/hub) as models--ORG--NAME/snapshots/<refs/main>/.
 * "ORG/NAME:QUANT" (e.g. unsloth/Qwen3-30B-A3B-GGUF:Q4_K_M) picks the snapshot's GGUF
 * file whose name has QUANT as a word (part 1 of a split file); a snapshot without
 * config.json but with a single GGUF model resolves to it without a tag. Anything else
 * is returned unchanged (the open reports it). Fails, naming every place looked, for a
 * repo id not cached, and naming the candidates when the quant is missing or ambiguous. */
int lazymoe_resolve_model(const char *name, char *path, size_t pathlen, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif

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
 */
#ifndef LAZYMOE_H
#define LAZYMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LAZYMOE_VERSION "0.1.0"

typedef struct lazymoe_model lazymoe_model;
typedef struct lazymoe_session lazymoe_session;

typedef enum {
    LAZYMOE_EVICT_LRU = 0,  /* least recently used */
    LAZYMOE_EVICT_LCP = 1,  /* mlx-moe's frequency x 0.25^(age/128) */
    LAZYMOE_EVICT_LFRU = 2, /* decayed frequency + recency window (default) */
} lazymoe_eviction;

typedef struct {
    int n_threads;   /* worker threads for the matrix work; 0 = all cores */
    int max_context; /* tokens a session may hold; 0 = min(model maximum, 8192) */
    int verbose;     /* 1 = progress and timings on stderr */
    /* Memory: the whole process (resident weights, KV cache for max_context,
     * expert cache, buffers) is planned to fit memory_budget bytes; 0 = 85% of
     * what is available (MemAvailable and the cgroup limit, the smaller). */
    uint64_t memory_budget;
    /* Experts cached per MoE layer: 0 = as many as the budget allows (all of them
     * when they fit: fully resident); -1 = all resident regardless of the budget;
     * N > 0 = an N-slot cache per layer, experts read on demand. */
    int expert_capacity;
    int io_threads;           /* concurrent expert reads; 0 = 8 */
    lazymoe_eviction eviction;
    int buffered_io;          /* 1 = no O_DIRECT (reads go through the page cache) */
    const char *trace_routing; /* record the routing of every token to this file */
    /* Benchmarks only: replay a routing trace in place of the router's picks
     * (token i uses the trace's token i modulo its length, equal weights). The
     * output is then meaningless; the expert traffic is the trace's. */
    const char *replay_routing;
} lazymoe_options;

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
    int max_context;
    uint64_t params_total;     /* all parameters (unquantized count) */
    uint64_t params_active;    /* parameters used per token */
    uint64_t params_expert;    /* parameters of one expert (gate + up + down) */
    uint64_t bytes_resident;   /* non-expert weight bytes as stored */
    uint64_t bytes_per_expert; /* one expert as stored, scales and biases included */
    uint64_t bytes_experts;    /* all experts */
    int quant_bits, quant_group_size; /* 0 bits = float weights */
    char weight_dtype[16];     /* stored dtype of the float weights ("BF16", ...) */
    int n_eos;
    int32_t eos_ids[8];
} lazymoe_model_info;

void lazymoe_model_get_info(const lazymoe_model *m, lazymoe_model_info *info);

typedef struct {
    int resident;             /* 1: every expert in memory, no cache */
    int capacity;             /* expert slots per MoE layer */
    uint64_t hits, misses;    /* routed experts found cached / read from disk */
    uint64_t bytes_read;      /* expert bytes read from disk */
    double read_seconds;      /* summed over the reader threads */
    double wait_seconds;      /* compute blocked waiting for reads */
    uint64_t memory_budget;   /* the budget the plan was made for */
    uint64_t planned_bytes;   /* what the plan expects the process to use */
    uint64_t peak_rss_bytes;  /* measured peak resident set size */
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

int lazymoe_session_create(lazymoe_session **out, lazymoe_model *m, char *err, size_t errlen);
void lazymoe_session_free(lazymoe_session *s);
/* Tokens currently held in the session's context. */
int lazymoe_session_length(const lazymoe_session *s);
/* Forgets all tokens after the first n (n <= length). */
int lazymoe_session_truncate(lazymoe_session *s, int n, char *err, size_t errlen);

/* Appends n tokens to the context and runs the model over them.
 * logits: NULL, or room for the logits of the last token [vocab] (all_positions = 0)
 * or of every appended token [n][vocab] (all_positions = 1). */
int lazymoe_session_eval(lazymoe_session *s, const int32_t *ids, int n, float *logits,
                         int all_positions, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif

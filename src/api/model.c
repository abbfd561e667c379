/* The public model and session entry points (include/lazymoe.h): argument checks,
 * errors copied into the caller's buffer, the text side of a model (tokenizer, chat
 * template, generation defaults) loaded beside the engine's weights, and the log
 * callback. The work itself is the engine's (engine/engine.h). */
#include "api/text.h"
#include "common/error.h"
#include "common/log.h"
#include "engine/engine.h"
#include "experts/trace.h"

#include <stdio.h>
#include <string.h>

static int copy_err(char *dst, size_t len, const char *src) {
    if (dst && len) snprintf(dst, len, "%s", src);
    return -1;
}

void lazymoe_set_log(lazymoe_log_fn fn, void *ctx) { lm_log_set(fn, ctx); }

void lazymoe_options_init(lazymoe_options *opt) {
    memset(opt, 0, sizeof *opt);
    opt->eviction = LAZYMOE_EVICT_LCP; /* no policy measured beats it everywhere: bench/RESULTS.md */
    opt->lookahead = -1; /* the engine picks (lm_engine_open: top_k on the CPU for large experts) */
    opt->lookahead_gate = LAZYMOE_LOOKAHEAD_GATE;
}

int lazymoe_model_open(lazymoe_model **out, const char *dir, const lazymoe_options *opt, char *err,
                       size_t errlen) {
    char e[LM_ERR_LEN] = "";
    lazymoe_options defaults;
    if (!opt) {
        lazymoe_options_init(&defaults);
        opt = &defaults;
    }
    *out = NULL;
    lazymoe_model *m;
    if (lm_engine_open(&m, dir, opt, e) != 0) return copy_err(err, errlen, e);
    if (lm_model_text_load(&m->text, dir, &m->w.cfg, e) != 0) {
        lm_engine_close(m);
        return copy_err(err, errlen, e);
    }
    *out = m;
    return 0;
}

void lazymoe_model_close(lazymoe_model *m) {
    if (!m) return;
    lm_model_text_free(m->text);
    m->text = NULL;
    lm_engine_close(m);
}

void lazymoe_model_get_info(const lazymoe_model *m, lazymoe_model_info *info) { lm_engine_get_info(m, info); }

void lazymoe_model_get_expert_stats(const lazymoe_model *m, int layer, lazymoe_expert_stats *st) {
    lm_engine_get_expert_stats(m, layer, st);
}

int lazymoe_session_create(lazymoe_session **out, lazymoe_model *m, char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_create(out, m, e) == 0 ? 0 : copy_err(err, errlen, e);
}

void lazymoe_session_free(lazymoe_session *s) { lm_session_free(s); }

int lazymoe_session_length(const lazymoe_session *s) { return s->n_past; }

int lazymoe_session_capacity(const lazymoe_session *s) { return s->cap_ctx; }

void lazymoe_session_set_growth_limit(lazymoe_session *s, int positions) { lm_session_set_growth_limit(s, positions); }

const int32_t *lazymoe_session_tokens(const lazymoe_session *s) { return s->tokens; }

int lazymoe_session_fit(lazymoe_session *s, char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_fit(s, e) == 0 ? 0 : copy_err(err, errlen, e);
}

int lazymoe_session_save(const lazymoe_session *s, int n, const char *path, char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_save(s, n, path, e) == 0 ? 0 : copy_err(err, errlen, e);
}

int lazymoe_session_load(lazymoe_session *s, const char *path, char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_load(s, path, e) == 0 ? 0 : copy_err(err, errlen, e);
}

int lazymoe_session_load_prefix(lazymoe_session *s, const char *path, int max_tokens, char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_load_prefix(s, path, max_tokens, e) == 0 ? 0 : copy_err(err, errlen, e);
}

uint64_t lazymoe_session_file_bytes(const lazymoe_model *m, int n) { return lm_session_file_bytes(m, n); }

int lazymoe_session_file_tokens(const lazymoe_model *m, const char *path, int32_t **tokens, int *n, char *err,
                                size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_file_tokens(m, path, tokens, n, e) == 0 ? 0 : copy_err(err, errlen, e);
}

int lazymoe_session_truncate(lazymoe_session *s, int n, char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_truncate(s, n, e) == 0 ? 0 : copy_err(err, errlen, e);
}

int lazymoe_session_eval(lazymoe_session *s, const int32_t *ids, int n, float *logits, int all_positions,
                         char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_eval(s, ids, n, logits, all_positions, e) == 0 ? 0 : copy_err(err, errlen, e);
}

int lazymoe_session_eval_greedy(lazymoe_session *s, const int32_t *ids, int n, int32_t *next_id, char *err,
                                size_t errlen) {
    char e[LM_ERR_LEN] = "";
    return lm_session_eval_greedy(s, ids, n, next_id, e) == 0 ? 0 : copy_err(err, errlen, e);
}

int lazymoe_routing_summarize(const char *trace_path, int skip_tokens, lazymoe_routing_summary *out, char *err,
                              size_t errlen) {
    return lazymoe_routing_summarize_range(trace_path, skip_tokens, -1, out, err, errlen);
}

int lazymoe_routing_summarize_range(const char *trace_path, int skip_tokens, int end_token,
                                    lazymoe_routing_summary *out, char *err, size_t errlen) {
    char e[LM_ERR_LEN];
    lm_trace_data d;
    lm_routing_stats rs;
    memset(out, 0, sizeof *out);
    if (lm_trace_load(&d, trace_path, e) != 0) return copy_err(err, errlen, e);
    int rc = lm_trace_stats(&d, skip_tokens, end_token, &rs, e);
    lm_trace_data_free(&d);
    if (rc != 0) return copy_err(err, errlen, e);
    out->tokens = rs.tokens;
    out->distinct_experts = rs.distinct_experts;
    out->consecutive_reuse = rs.consecutive_reuse;
    out->top16_share = rs.top16_share;
    return 0;
}

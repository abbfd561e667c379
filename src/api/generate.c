/* Text in, text out: tokenize / detokenize / chat templates, and the generation
 * loop (prefix reuse, sampling, streaming detokenization, stop strings, stats).
 *
 * Generation, step by step:
 *   1. the prompt becomes ids; the session keeps the longest common prefix of its
 *      tokens and the prompt (at least the last prompt token is evaluated again, to
 *      have its logits; models with recurrent states keep only up to a snapshot or
 *      the session's end) and evaluates the rest in chunks, checking *cancel between;
 *   2. each step samples a token, stops at end-of-sequence ids, feeds the token to
 *      the streaming detokenizer (complete UTF-8 only) and the text to the stop
 *      filter, which emits everything except a tail that could still begin a stop
 *      string; then evaluates the token for the next step.
 * Per-token work allocates nothing once the buffers have grown (the stop filter's
 * buffer grows to the longest piece + the longest stop string).
 */
#include "common/buf.h"
#include "common/error.h"
#include "api/batch.h"
#include "api/constrain.h"
#include "engine/engine.h"
#include "api/sampler.h"
#include "api/text.h"
#include "platform/platform.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREFILL_CHUNK 512

static int fail(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return -1;
}

void lazymoe_free(void *p) { free(p); }

static const lm_tokenizer *need_tokenizer(const lazymoe_model *m, char *e) {
    if (!m->text || !m->text->tok) {
        lm_errf(e, "%s", m->text ? m->text->tok_err : "model has no tokenizer");
        return NULL;
    }
    return m->text->tok;
}

/* Serialized: the tokenizer's word cache is not thread-safe. */
static int encode_max(const lazymoe_model *m, const char *text, size_t len, int add_special, size_t max_ids,
                      int32_t **ids, size_t *n, char *e) {
    if (!need_tokenizer(m, e)) return -1;
    lm_model_text *t = m->text;
    pthread_mutex_lock(&t->lock);
    int rc = lm_tokenizer_encode_max(t->tok, text, len, add_special, max_ids, ids, n, e);
    pthread_mutex_unlock(&t->lock);
    return rc;
}

static int encode(const lazymoe_model *m, const char *text, size_t len, int add_special, int32_t **ids, size_t *n,
                  char *e) {
    return encode_max(m, text, len, add_special, SIZE_MAX - 1, ids, n, e);
}

int lazymoe_tokenize(const lazymoe_model *m, const char *text, size_t len, int add_special, int32_t **ids,
                     int *n_ids, char *err, size_t errlen) {
    return lazymoe_tokenize_max(m, text, len, add_special, INT32_MAX - 1, ids, n_ids, err, errlen);
}

int lazymoe_tokenize_max(const lazymoe_model *m, const char *text, size_t len, int add_special, int max_ids,
                         int32_t **ids, int *n_ids, char *err, size_t errlen) {
    char e[LM_ERR_LEN];
    size_t n = 0;
    *ids = NULL;
    *n_ids = 0;
    if (max_ids < 0 || max_ids >= INT32_MAX) return fail(err, errlen, "max_ids must be 0 .. INT32_MAX - 1");
    if (encode_max(m, text, len, add_special, (size_t)max_ids, ids, &n, e) != 0) return fail(err, errlen, e);
    if (n > (size_t)INT32_MAX) {
        free(*ids);
        *ids = NULL;
        return fail(err, errlen, "text too long");
    }
    *n_ids = (int)n;
    return 0;
}

int lazymoe_detokenize(const lazymoe_model *m, const int32_t *ids, int n_ids, int skip_special, char **text,
                       char *err, size_t errlen) {
    char e[LM_ERR_LEN];
    *text = NULL;
    const lm_tokenizer *tok = need_tokenizer(m, e);
    if (!tok) return fail(err, errlen, e);
    char *raw = NULL;
    size_t len = 0, vlen = 0;
    if (n_ids < 0) return fail(err, errlen, "negative number of ids");
    if (lm_tokenizer_decode(tok, ids, (size_t)n_ids, skip_special ? LM_DECODE_SKIP_SPECIAL : 0, &raw, &len, e) != 0)
        return fail(err, errlen, e);
    int rc = lm_text_to_valid_utf8(raw, len, text, &vlen, e);
    free(raw);
    return rc ? fail(err, errlen, e) : 0;
}

static json_t *parse_json_arg(const char *what, const char *text, int want_array, char *e) {
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v) {
        lm_errf(e, "%s: invalid JSON: %s (at character %d)", what, je.text, je.position);
        return NULL;
    }
    if (want_array ? !json_is_array(v) : !json_is_object(v)) {
        json_decref(v);
        lm_errf(e, "%s must be a JSON %s", what, want_array ? "array" : "object");
        return NULL;
    }
    return v;
}

int lazymoe_chat_format(const lazymoe_model *m, const char *messages_json, const char *tools_json,
                        int add_generation_prompt, const char *kwargs_json, char **text, char *err,
                        size_t errlen) {
    size_t len;
    return lazymoe_chat_format_n(m, messages_json, tools_json, add_generation_prompt, kwargs_json, text, &len, err,
                                 errlen);
}

int lazymoe_chat_format_n(const lazymoe_model *m, const char *messages_json, const char *tools_json,
                          int add_generation_prompt, const char *kwargs_json, char **text, size_t *len, char *err,
                          size_t errlen) {
    char e[LM_ERR_LEN] = "";
    *text = NULL;
    *len = 0;
    if (!m->text || !m->text->tmpl) return fail(err, errlen, m->text ? m->text->tmpl_err : "no chat template");
    json_t *msgs = parse_json_arg("messages", messages_json ? messages_json : "null", 1, e);
    json_t *tools = msgs && tools_json ? parse_json_arg("tools", tools_json, 1, e) : NULL;
    json_t *kw = msgs && kwargs_json && !e[0] ? parse_json_arg("kwargs", kwargs_json, 0, e) : NULL;
    int rc = -1;
    if (!e[0]) {
        lm_chat_request req = {.messages = msgs, .tools = tools, .add_generation_prompt = add_generation_prompt != 0,
                               .kwargs = kw};
        rc = lm_chat_template_render(m->text->tmpl, &req, NULL, text, len, e);
    }
    json_decref(msgs);
    json_decref(tools);
    json_decref(kw);
    if (!rc) return 0;
    fail(err, errlen, e);
    return rc == LM_JINJA_RAISED ? LAZYMOE_TEMPLATE_REFUSED : rc == LM_JINJA_LIMIT ? LAZYMOE_TEMPLATE_TOO_LARGE : -1;
}

void lazymoe_sampling_init(lazymoe_sampling *p, const lazymoe_model *m) {
    if (m && m->text) {
        *p = m->text->defaults;
        return;
    }
    memset(p, 0, sizeof *p);
    p->top_p = 1;
    p->repetition_penalty = 1;
}

void lazymoe_gen_params_init(lazymoe_gen_params *p, const lazymoe_model *m) {
    memset(p, 0, sizeof *p);
    lazymoe_sampling_init(&p->sampling, m);
    p->max_tokens = 512;
    p->add_special = 1;
}

/* ---- stop strings --------------------------------------------------------------- */

typedef struct {
    char *buf; /* text decoded but not yet emitted */
    size_t len, cap;
    const char *const *stop;
    int n_stop;
} stop_filter;

static int sf_append(stop_filter *f, const char *s, size_t n, char *e) {
    if (n > SIZE_MAX - 1 - f->len || LM_GROW(f->buf, f->cap, f->len + n + 1) != 0) return lm_errf(e, "out of memory");
    if (n) memcpy(f->buf + f->len, s, n);
    f->len += n;
    f->buf[f->len] = 0;
    return 0;
}

/* Position of the earliest stop string in the buffer, or -1; *which = its index. */
static long sf_find(const stop_filter *f, int *which) {
    long best = -1;
    for (int i = 0; i < f->n_stop; i++) {
        size_t sl = strlen(f->stop[i]);
        if (!sl) continue;
        const char *hit = memmem(f->buf, f->len, f->stop[i], sl);
        if (hit && (best < 0 || hit - f->buf < best)) {
            best = hit - f->buf;
            *which = i;
        }
    }
    return best;
}

/* Bytes at the end of the buffer that are a proper prefix of some stop string. */
static size_t sf_holdback(const stop_filter *f) {
    size_t hold = 0;
    for (int i = 0; i < f->n_stop; i++) {
        size_t sl = strlen(f->stop[i]);
        size_t k = sl ? sl - 1 : 0;
        if (k > f->len) k = f->len;
        for (; k > hold; k--)
            if (!memcmp(f->buf + f->len - k, f->stop[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* Emits buf[0..n) and drops it from the buffer. Returns the callback's verdict. */
static int sf_emit(stop_filter *f, size_t n, lazymoe_piece_fn cb, void *ctx) {
    int r = 0;
    if (!f->buf) return 0;
    if (n && cb) {
        char save = f->buf[n];
        f->buf[n] = 0; /* pieces are NUL-terminated for convenience */
        r = cb(ctx, f->buf, n);
        f->buf[n] = save;
    }
    memmove(f->buf, f->buf + n, f->len - n + 1);
    f->len -= n;
    return r;
}

/* ---- generation ---------------------------------------------------------------- */

static int cancelled(const lazymoe_gen_params *p) { return p->cancel && *p->cancel; }

/* ---- log-probabilities (params->on_token) ----------------------------------------- */

typedef struct {
    int n_top;
    double lse;                 /* log-sum-exp of the step's finite logits */
    float *raw;                 /* [vocab] the logits before the grammar's mask */
    int32_t top_id[LAZYMOE_MAX_TOP_LOGPROBS];
    lazymoe_token_prob top[LAZYMOE_MAX_TOP_LOGPROBS];
    char *bytes[LAZYMOE_MAX_TOP_LOGPROBS + 1]; /* decoded tokens of the step (owned) */
} logprob_step;

/* Before anything changes the logits: keeps a copy, their log-normaliser and the
 * n_top largest (ties: lower id first, as an ascending scan that inserts only on a
 * strictly larger value gives). NaN counts as -inf, like the sampler. */
static void logprob_begin(logprob_step *lp, const float *logits, int V) {
    memcpy(lp->raw, logits, sizeof(float) * (size_t)V);
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    if (isfinite(mx))
        for (int i = 0; i < V; i++)
            if (logits[i] > -INFINITY) sum += exp((double)logits[i] - (double)mx);
    lp->lse = isfinite(mx) ? (double)mx + log(sum) : INFINITY;
    int k = 0;
    for (int i = 0; i < V && lp->n_top; i++) {
        float v = logits[i];
        if (!(v > -INFINITY)) continue;
        if (k == lp->n_top && !(v > logits[lp->top_id[k - 1]])) continue;
        int at = k < lp->n_top ? k++ : k - 1;
        while (at > 0 && v > logits[lp->top_id[at - 1]]) {
            lp->top_id[at] = lp->top_id[at - 1];
            at--;
        }
        lp->top_id[at] = i;
    }
    for (int i = k; i < lp->n_top; i++) lp->top_id[i] = -1;
}

static float logprob_of(const logprob_step *lp, int32_t id) {
    float v = lp->raw[id];
    return v > -INFINITY ? (float)((double)v - lp->lse) : -INFINITY;
}

/* Fills one entry with the token's bytes (decoded alone, special tokens spelled out). */
static int logprob_fill(logprob_step *lp, const lm_tokenizer *tok, int slot, int32_t id, lazymoe_token_prob *out,
                        char *e) {
    size_t len = 0;
    if (lm_tokenizer_decode(tok, &id, 1, 0, &lp->bytes[slot], &len, e) != 0) return -1;
    out->id = id;
    out->logprob = logprob_of(lp, id);
    out->bytes = lp->bytes[slot];
    out->n_bytes = len;
    return 0;
}

/* Reports token t of this step; 1 = the callback asked to stop, -1 = error. */
static int logprob_report(logprob_step *lp, const lm_tokenizer *tok, const lazymoe_gen_params *params, int32_t t,
                          char *e) {
    lazymoe_token_info info = {.top = lp->top};
    int rc = logprob_fill(lp, tok, 0, t, &info.token, e);
    for (int i = 0; rc == 0 && i < lp->n_top && lp->top_id[i] >= 0; i++) {
        rc = logprob_fill(lp, tok, i + 1, lp->top_id[i], &lp->top[i], e);
        info.n_top = i + 1;
    }
    if (rc == 0) rc = params->on_token(params->token_ctx, &info) ? 1 : 0;
    for (int i = 0; i <= LAZYMOE_MAX_TOP_LOGPROBS; i++) {
        free(lp->bytes[i]);
        lp->bytes[i] = NULL;
    }
    return rc;
}

/* Evaluates the prompt's ids in chunks; the last chunk's logits go to logits, or with
 * next (a greedy generation) only their first largest to *next. */
static int prefill(lazymoe_session *s, const int32_t *ids, int n, float *logits, int32_t *next,
                   const lazymoe_gen_params *p, int *was_cancelled, char *e) {
    for (int done = 0; done < n;) {
        if (cancelled(p)) {
            *was_cancelled = 1;
            return 0;
        }
        int k = n - done < PREFILL_CHUNK ? n - done : PREFILL_CHUNK;
        /* In a batch, each chunk takes its turn between the members' decode steps. */
        if (p->batch) lm_batch_turn_begin(p->batch);
        int last = done + k == n;
        int rc = last && next ? lazymoe_session_eval_greedy(s, ids + done, k, next, e, LM_ERR_LEN)
                              : lazymoe_session_eval(s, ids + done, k, last ? logits : NULL, 0, e, LM_ERR_LEN);
        if (p->batch) lm_batch_turn_end(p->batch);
        if (rc != 0) return -1;
        done += k;
    }
    return 0;
}

int lazymoe_generate_stream(lazymoe_session *s, const char *prompt, const lazymoe_gen_params *params,
                            lazymoe_piece_fn on_piece, void *ctx, lazymoe_gen_stats *stats, char *err,
                            size_t errlen) {
    char e[LM_ERR_LEN] = "";
    lazymoe_model *m = s->m;
    lazymoe_gen_params defaults;
    if (!params) {
        lazymoe_gen_params_init(&defaults, m);
        params = &defaults;
    }
    lazymoe_gen_stats st;
    memset(&st, 0, sizeof st);
    st.expert_hit_rate = -1;
    st.stop_index = -1;
    lazymoe_expert_stats ex0, ex1;
    lazymoe_model_get_expert_stats(m, -1, &ex0);
    int V = m->w.cfg.vocab_size;
    int32_t *owned_ids = NULL;
    const int32_t *ids;
    int n;
    if (prompt) {
        size_t nn;
        if (encode(m, prompt, strlen(prompt), params->add_special, &owned_ids, &nn, e) != 0)
            return fail(err, errlen, e);
        ids = owned_ids;
        n = nn > (size_t)INT32_MAX ? INT32_MAX : (int)nn;
    } else {
        ids = params->prompt_ids;
        n = params->n_prompt_ids;
        if (!ids && n) return fail(err, errlen, "no prompt: text and prompt_ids are both NULL");
    }
    for (int i = 0; i < params->n_stop; i++)
        if (!params->stop || !params->stop[i]) {
            free(owned_ids);
            return fail(err, errlen, "stop strings must not be NULL");
        }
    lm_sampler smp;
    lm_constraint con = {0};
    lm_detok *dt = NULL;
    int32_t *forced = NULL;
    size_t n_forced = 0;
    float *logits = NULL;
    stop_filter sf = {.stop = params->stop, .n_stop = params->n_stop};
    logprob_step lp = {0};
    int rc = -1, was_cancelled = 0, joined = 0;
    memset(&smp, 0, sizeof smp);
    if (n <= 0) {
        lm_errf(e, "the prompt is empty (no tokens to start from)");
        goto done;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            lm_errf(e, "prompt token id %d at position %d is outside the vocabulary (0..%d)", ids[i], i, V - 1);
            goto done;
        }
    if (n > m->max_context) {
        lm_errf(e, "prompt is too long: %d tokens > %d maximum (context size)", n, m->max_context);
        goto done;
    }
    const lm_tokenizer *tok = need_tokenizer(m, e);
    if (!tok) goto done;
    if (lm_sampler_init(&smp, V, &params->sampling, e) != 0) goto done;
    if (lm_detok_new(tok, params->keep_special ? 0 : LM_DECODE_SKIP_SPECIAL, &dt, e) != 0) goto done;
    if (!(logits = lm_malloc(sizeof(float) * (size_t)V, "logits", e))) goto done;
    if (params->forced_text && encode(m, params->forced_text, strlen(params->forced_text), 0, &forced, &n_forced, e) != 0)
        goto done;
    if (!params->forced_text && lm_constraint_init(&con, m, params->grammar, e) != 0) goto done;
    /* Exactly greedy, and nothing else reads the logits (no grammar mask, no
     * log-probabilities, no batch step, no forced text): the session picks each token
     * itself, the one the sampler would draw, and on a GPU the logits stay there. */
    int greedy = lm_sampler_is_greedy(&params->sampling) && !params->forced_text && !con.match &&
                 !params->on_token && !params->batch;
    int32_t greedy_next = -1; /* the pick of the last evaluation, when greedy */
    if (params->on_token) {
        if (params->n_top_logprobs < 0 || params->n_top_logprobs > LAZYMOE_MAX_TOP_LOGPROBS) {
            lm_errf(e, "n_top_logprobs must be 0..%d, got %d", LAZYMOE_MAX_TOP_LOGPROBS, params->n_top_logprobs);
            goto done;
        }
        lp.n_top = params->n_top_logprobs;
        if (!(lp.raw = lm_malloc(sizeof(float) * (size_t)V, "logits", e))) goto done;
    }

    /* 1. Prefix reuse: keep what the session shares with the prompt. Recurrent states
     * (linear attention) can only go back to a snapshot, so keep may shrink to one; a
     * snapshot just before the last prompt token serves the next request that repeats
     * or extends this prompt. */
    int keep = 0, have = s->n_past;
    while (keep < have && keep < n && s->tokens[keep] == ids[keep]) keep++;
    if (keep == n) keep = n - 1; /* the last prompt token is evaluated again for its logits */
    keep = lm_session_reusable(s, keep);
    if (params->batch) lm_batch_turn_begin(params->batch); /* truncating may evaluate (linear attention) */
    int cut = lazymoe_session_truncate(s, keep, e, sizeof e);
    if (params->batch) lm_batch_turn_end(params->batch);
    if (cut != 0) goto done;
    lm_session_snapshot_at(s, n - 1);
    st.prompt_tokens = n;
    st.cached_tokens = keep;
    double t0 = lm_now();
    if (prefill(s, ids + keep, n - keep, logits, greedy ? &greedy_next : NULL, params, &was_cancelled, e) != 0)
        goto done;
    double t1 = lm_now();
    st.prefill_seconds = t1 - t0;
    if (st.prefill_seconds > 0) st.prefill_tok_per_s = (n - keep) / st.prefill_seconds;
    lm_sampler_note_context(&smp, ids, n);
    int decode_evals = 0, stopped = 0;
    if (was_cancelled) st.finish_reason = LAZYMOE_FINISH_CANCELLED;

    /* 2. Decode (in a batch: as one of its members, each step shared with theirs). */
    if (params->batch && !st.finish_reason) {
        lm_batch_join(params->batch);
        joined = 1;
    }
    for (int g = 0; !st.finish_reason; g++) {
        if (params->forced_text && (size_t)g >= n_forced) {
            st.finish_reason = LAZYMOE_FINISH_STOP;
            break;
        }
        if (params->on_token) logprob_begin(&lp, logits, V);
        if (con.match) {
            long left = m->max_context - s->n_past - 1; /* tokens that may follow this one */
            if (params->max_tokens > 0 && params->max_tokens - g - 1 < left) left = params->max_tokens - g - 1;
            if (lm_constraint_mask(&con, logits, left, e) != 0) goto done;
        }
        int32_t t = params->forced_text ? forced[g] : greedy ? greedy_next : lm_sampler_sample(&smp, logits);
        if (t < 0) {
            lm_errf(e, "the model produced no finite logits at position %d", s->n_past);
            goto done;
        }
        st.generated_tokens++;
        lm_sampler_note_generated(&smp, t);
        if (!params->ignore_eos && lm_model_text_is_eos(m->text, t)) {
            st.finish_reason = LAZYMOE_FINISH_STOP;
            break;
        }
        if (con.match && lm_constraint_accept(&con, t, e) != 0) goto done;
        if (params->on_token) {
            int r = logprob_report(&lp, tok, params, t, e);
            if (r < 0) goto done;
            if (r > 0) {
                st.finish_reason = LAZYMOE_FINISH_CANCELLED;
                break;
            }
        }
        const char *piece;
        size_t plen;
        if (lm_detok_push(dt, t, &piece, &plen, e) != 0 || sf_append(&sf, piece, plen, e) != 0) goto done;
        long at = sf_find(&sf, &st.stop_index);
        if (at >= 0) {
            sf.len = (size_t)at; /* the stop string and what follows are dropped */
            if (sf_emit(&sf, sf.len, on_piece, ctx)) st.finish_reason = LAZYMOE_FINISH_CANCELLED;
            else st.finish_reason = LAZYMOE_FINISH_STOP;
            stopped = 1;
            break;
        }
        if (sf_emit(&sf, sf.len - sf_holdback(&sf), on_piece, ctx) || cancelled(params)) {
            st.finish_reason = LAZYMOE_FINISH_CANCELLED;
            break;
        }
        if ((params->max_tokens > 0 && g + 1 >= params->max_tokens) || s->n_past >= m->max_context) {
            st.finish_reason = LAZYMOE_FINISH_LENGTH;
            break;
        }
        if (params->forced_text && (size_t)g + 1 >= n_forced) { /* the forced text is used up */
            st.finish_reason = LAZYMOE_FINISH_STOP;
            break;
        }
        if (joined ? lm_batch_decode(params->batch, s, t, logits, e) != 0
            : greedy ? lazymoe_session_eval_greedy(s, &t, 1, &greedy_next, e, sizeof e) != 0
                     : lazymoe_session_eval(s, &t, 1, logits, 0, e, sizeof e) != 0)
            goto done;
        decode_evals++;
    }
    if (joined) { /* the others' steps no longer wait for this one */
        lm_batch_leave(params->batch);
        joined = 0;
    }
    /* Held-back text is emitted unless a stop string or a cancel ended the answer. */
    if (!stopped && st.finish_reason != LAZYMOE_FINISH_CANCELLED) {
        const char *tail;
        size_t tlen;
        if (lm_detok_flush(dt, &tail, &tlen, e) != 0 || sf_append(&sf, tail, tlen, e) != 0) goto done;
        long at = sf_find(&sf, &st.stop_index);
        if (at >= 0) {
            sf.len = (size_t)at;
            st.finish_reason = LAZYMOE_FINISH_STOP;
        }
        if (sf_emit(&sf, sf.len, on_piece, ctx)) st.finish_reason = LAZYMOE_FINISH_CANCELLED;
    }
    st.decode_seconds = lm_now() - t1;
    if (st.decode_seconds > 0) st.decode_tok_per_s = decode_evals / st.decode_seconds;
    rc = 0;
done:
    if (joined) lm_batch_leave(params->batch);
    lazymoe_model_get_expert_stats(m, -1, &ex1);
    st.peak_rss_bytes = ex1.peak_rss_bytes;
    if (!ex1.resident) {
        uint64_t h = ex1.hits - ex0.hits, mi = ex1.misses - ex0.misses;
        st.expert_hit_rate = h + mi ? (double)h / (double)(h + mi) : 1.0;
        st.expert_bytes_read = ex1.bytes_read - ex0.bytes_read;
    }
    if (stats) *stats = st;
    free(sf.buf);
    free(logits);
    free(lp.raw);
    lm_detok_free(dt);
    lm_constraint_free(&con);
    lm_sampler_free(&smp);
    free(owned_ids);
    free(forced);
    return rc ? fail(err, errlen, e) : 0;
}

static int collect(void *vctx, const char *piece, size_t len) { return lm_strbuf_append(vctx, piece, len) != 0; }

int lazymoe_generate(lazymoe_session *s, const char *prompt, const lazymoe_gen_params *params, char **text,
                     lazymoe_gen_stats *stats, char *err, size_t errlen) {
    lm_strbuf c = {0};
    *text = NULL;
    int rc = lazymoe_generate_stream(s, prompt, params, collect, &c, stats, err, errlen);
    if (rc == 0 && c.failed) rc = fail(err, errlen, "out of memory collecting the answer");
    if (rc == 0 && !c.data) c.data = calloc(1, 1);
    if (rc == 0 && !c.data) rc = fail(err, errlen, "out of memory");
    if (rc != 0) {
        lm_strbuf_free(&c);
        return -1;
    }
    *text = c.data;
    return 0;
}

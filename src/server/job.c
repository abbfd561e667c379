/* Generation jobs: the FIFO queue and the worker threads that run them.
 *
 * Each of the `parallel` workers takes the oldest job, picks a session from the
 * prompt cache (waiting, without letting later jobs pass, while the job's KV room
 * is not free beside the running ones), and generates as a member of the server's
 * batch, so that the running jobs' decode steps share one forward pass; each piece
 * of text goes through the tool-call parser, whose events become the API's wire
 * format in job->out, where the job's connection thread picks them up. A job
 * cancelled while queued is never started; one cancelled while running stops
 * between tokens and leaves the batch. Every use of the model (the cache's
 * sessions, the disk cache, prompt chunks, decode steps) holds the batch's lock. */
#include "server/internal.h"

#include "common/error.h"
#include "text/tokenizer.h"
#include "text/harmony.h"
#include "text/toolcall.h"

#include <stdlib.h>
#include <string.h>

srv_job *srv_job_new(srv_server *s) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->srv = s;
    j->refs = 1;
    j->state = JOB_QUEUED;
    j->status = 200;
    j->t_arrive = lm_now();
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    return j;
}

void srv_job_release(srv_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (!last) return;
    srv_chat_free(&j->chat);
    lazymoe_grammar_free(j->grammar);
    free(j->prompt);
    free(j->ids);
    srv_buf_free(&j->out);
    srv_reply_free(&j->reply);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

int srv_job_enqueue(srv_server *s, srv_job *j) {
    pthread_mutex_lock(&s->qmu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->qmu);
        return -1;
    }
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->queued++;
    pthread_cond_signal(&s->qcv);
    pthread_mutex_unlock(&s->qmu);
    return 0;
}

/* ---- output ---------------------------------------------------------------------------- */

/* Appends one event to the reply under the job's lock and wakes the connection. */
static void emit(srv_job *j, const lm_tc_event *ev) {
    pthread_mutex_lock(&j->mu);
    srv_reply_event(&j->reply, ev, &j->out);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

typedef struct {
    srv_job *job;
    lm_toolcall_parser *parser;
    lm_harmony_parser *harmony; /* instead of parser: the model writes harmony (gpt-oss) */
    char err[LM_ERR_LEN]; /* a parser failure (out of memory) */
    srv_buf raw;          /* everything generated, as the model wrote it */
    size_t call_start;    /* where the markup of the latest call starts in raw */
} gen_ctx;

/* Where the markup of a call that just began starts in raw: at its <function= tag,
 * or at the <tool_call> wrapper when nothing but whitespace lies between them (or
 * when the call has no <function= tag: Hermes JSON). The parser announces a call
 * once it has read the name, so its tags are already in raw. */
static const char *last_tag(const srv_buf *raw, const char *tag) {
    size_t n = strlen(tag);
    for (size_t i = raw->len; raw->data && i >= n; i--)
        if (!memcmp(raw->data + i - n, tag, n)) return raw->data + i - n;
    return NULL;
}

static size_t markup_start(const srv_buf *raw) {
    const char *t = last_tag(raw, "<tool_call>"), *f = last_tag(raw, "<function=");
    if (f && (!t || f > t)) {
        const char *q = t ? t + strlen("<tool_call>") : f;
        while (q < f && (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t')) q++;
        if (q != f) t = f;
    }
    return t ? (size_t)(t - raw->data) : 0;
}

/* A harmony call's header starts at the <|start|> of its message, or at its
 * <|channel|> in the output's first message. */
static size_t harmony_markup_start(const srv_buf *raw) {
    const char *st = last_tag(raw, "<|start|>"), *end = last_tag(raw, "<|end|>"), *ch = last_tag(raw, "<|channel|>");
    const char *t = st && (!end || st > end) ? st : ch;
    return t ? (size_t)(t - raw->data) : 0;
}

static int on_gen_event(void *ctx, const lm_tc_event *ev) {
    gen_ctx *g = ctx;
    if (ev->kind == LM_TC_CALL_BEGIN) g->call_start = g->harmony ? harmony_markup_start(&g->raw) : markup_start(&g->raw);
    emit(g->job, ev);
    return 0;
}

/* A piece of generated text -> the parser -> events. */
static int on_piece(void *ctx, const char *piece, size_t len) {
    gen_ctx *g = ctx;
    srv_buf_append(&g->raw, piece, len);
    if (g->harmony ? lm_harmony_parser_feed(g->harmony, piece, len, g->err) != 0
                   : lm_toolcall_parser_feed(g->parser, piece, len, g->err) != 0)
        return 1;
    return g->job->cancel ? 1 : 0;
}

/* One token as chat completions' logprobs show it: its text (invalid UTF-8 of a
 * partial character as U+FFFD), its bytes, and the log-probability (-9999 standing
 * for -inf, as OpenAI does, since JSON has no infinity). */
static json_t *token_json(const lazymoe_token_prob *t) {
    char *text = NULL, e[LM_ERR_LEN];
    size_t tlen = 0;
    if (lm_text_to_valid_utf8(t->bytes, t->n_bytes, &text, &tlen, e) != 0) return NULL;
    json_t *bytes = json_array();
    for (size_t i = 0; bytes && i < t->n_bytes; i++)
        if (json_array_append_new(bytes, json_integer((unsigned char)t->bytes[i])) != 0) {
            json_decref(bytes);
            bytes = NULL;
        }
    double lp = t->logprob > -9999.0f ? (double)t->logprob : -9999.0;
    json_t *o = bytes ? json_pack("{s:s#, s:f, s:o}", "token", text, tlen, "logprob", lp, "bytes", bytes) : NULL;
    free(text);
    return o;
}

static int on_token(void *ctx, const lazymoe_token_info *info) {
    gen_ctx *g = ctx;
    json_t *entry = token_json(&info->token), *top = json_array();
    for (int i = 0; entry && top && i < info->n_top; i++) {
        json_t *alt = token_json(&info->top[i]);
        if (!alt || json_array_append_new(top, alt) != 0) {
            json_decref(top);
            top = NULL;
        }
    }
    if (entry && (!top || json_object_set_new(entry, "top_logprobs", top) != 0)) {
        json_decref(entry);
        entry = NULL;
    }
    if (!entry) {
        snprintf(g->err, sizeof g->err, "out of memory reporting log-probabilities");
        return 1;
    }
    pthread_mutex_lock(&g->job->mu);
    srv_reply_token(&g->job->reply, entry);
    pthread_mutex_unlock(&g->job->mu);
    return g->job->cancel ? 1 : 0;
}

/* ---- running one job ----------------------------------------------------------------- */

static const char *finish_name(const srv_job *j) {
    const lazymoe_gen_stats *st = &j->stats;
    if (j->cancel_reason == CANCEL_DISCONNECT) return "client-disconnected";
    if (j->cancel_reason == CANCEL_SHUTDOWN) return "shutdown";
    switch (st->finish_reason) {
    case LAZYMOE_FINISH_LENGTH: return j->reply.context_full ? "context-full" : "length";
    case LAZYMOE_FINISH_STOP: return j->reply.n_calls ? "tool_calls" : (st->stop_index >= 0 ? "stop_sequence" : "stop");
    case LAZYMOE_FINISH_CANCELLED: return "cancelled";
    default: return "none";
    }
}

static void log_job(const srv_job *j, double t_start, const char *error) {
    const lazymoe_gen_stats *st = &j->stats;
    double now = lm_now();
    if (error) {
        srv_log("%s %d%s in=%d error=\"%s\" queued %.2fs", j->endpoint, j->status, j->chat.stream ? " stream" : "",
                j->n_ids, error, t_start - j->t_arrive);
        return;
    }
    char hit[48] = "", first[48] = "";
    if (st->expert_hit_rate >= 0) snprintf(hit, sizeof hit, " expert-hits %.1f%%", st->expert_hit_rate * 100);
    if (j->first_token_s > 0) snprintf(first, sizeof first, " first-token %.2fs", j->first_token_s);
    /* 499: the client closed the request (nginx's convention), whatever was sent */
    srv_log("%s %d%s in=%d cached=%d out=%d prefill %.1f tok/s decode %.1f tok/s%s finish=%s queued %.2fs%s total %.2fs",
            j->endpoint, j->cancel_reason == CANCEL_DISCONNECT ? 499 : j->status, j->chat.stream ? " stream" : "", st->prompt_tokens, st->cached_tokens,
            st->generated_tokens, st->prefill_tok_per_s, st->decode_tok_per_s, hit, finish_name(j), t_start - j->t_arrive,
            first, now - j->t_arrive);
}

/* The job ends with an error: a status + body when nothing was sent yet, an error
 * event in the stream otherwise. The log line (`why`, or msg) is written before the
 * client is woken, so whoever has the answer also finds it in the log. */
static void finish_with_error(srv_job *j, double t_start, int status, const char *msg, const char *why) {
    srv_error e;
    srv_fail(&e, j->chat.api, status, NULL, "%s", msg);
    pthread_mutex_lock(&j->mu);
    if (j->state == JOB_QUEUED) j->reply.api = j->chat.api; /* the reply was never started */
    if (j->chat.stream) {
        srv_reply_stream_error(&j->reply, &e, &j->out);
    } else {
        j->status = status;
        srv_buf_reset(&j->out);
        json_t *body = srv_error_body(j->chat.api, &e);
        srv_buf_json(&j->out, body);
        json_decref(body);
    }
    log_job(j, t_start, why ? why : msg);
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* The engine lock: the model is used by one worker at a time outside batch steps. */
static void engine_lock(srv_server *s) {
    if (s->batch) lazymoe_batch_lock(s->batch);
}
static void engine_unlock(srv_server *s) {
    if (s->batch) lazymoe_batch_unlock(s->batch);
}

static int cancelled_before_start(srv_job *j, double t_start) {
    if (!j->cancel) return 0;
    finish_with_error(j, t_start, j->cancel_reason == CANCEL_SHUTDOWN ? 503 : 499, "cancelled before it started",
                      j->cancel_reason == CANCEL_SHUTDOWN ? "server shutting down" : "client disconnected while queued");
    return 1;
}

/* A session for the job, waiting while its KV room is taken by running jobs (other
 * workers take no new job meanwhile, so it is next). NULL when it failed or was
 * cancelled (the job is finished then). */
static lazymoe_session *take_session(srv_server *s, srv_job *j, double t_start, int *reused) {
    char err[512];
    for (;;) {
        if (cancelled_before_start(j, t_start)) return NULL;
        int wait = 0;
        engine_lock(s);
        lazymoe_session *sess = srv_cache_take(&s->cache, j->ids, j->n_ids, j->max_tokens, reused, &wait, err, sizeof err);
        if (sess) *reused = srv_disk_restore(&s->disk, sess, j->ids, j->n_ids, *reused); /* a stored prompt may go further */
        engine_unlock(s);
        if (sess) return sess;
        if (!wait) {
            finish_with_error(j, t_start, 500, err, NULL);
            return NULL;
        }
        pthread_mutex_lock(&s->qmu);
        s->waiting_room++;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L; /* also to see a cancel */
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->room_cv, &s->qmu, &ts);
        s->waiting_room--;
        pthread_cond_broadcast(&s->qcv); /* the other workers may take jobs again */
        pthread_mutex_unlock(&s->qmu);
    }
}

static void run_job(srv_server *s, srv_job *j) {
    char err[512];
    double t_start = lm_now();
    int reused = 0;
    lazymoe_session *sess = take_session(s, j, t_start, &reused);
    if (!sess) return;
    t_start = lm_now(); /* the wait for room counts as queued */
    const char *model = j->chat.model ? j->chat.model : s->opt.model_name;
    pthread_mutex_lock(&j->mu);
    j->state = JOB_RUNNING;
    srv_reply_init(&j->reply, j->chat.api, j->chat.stream, j->chat.include_usage, model, j->n_ids, reused);
    j->reply.freeform = j->chat.freeform_tools;
    j->reply.logprobs = j->chat.logprobs;
    srv_reply_begin(&j->reply, &j->out);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);

    gen_ctx g = {.job = j};
    lazymoe_model_info info;
    lazymoe_model_get_info(s->m, &info);
    int harmony = !strcmp(info.model_type, "gpt_oss"); /* gpt-oss writes harmony (text/harmony.h) */
    char *tools_json = j->chat.tools ? json_dumps(j->chat.tools, JSON_COMPACT) : NULL;
    if ((j->chat.tools && !tools_json) ||
        (harmony ? lm_harmony_parser_create(&g.harmony, on_gen_event, &g, g.err)
                 : lm_toolcall_parser_create(&g.parser, tools_json, j->in_think, on_gen_event, &g, g.err)) != 0) {
        free(tools_json);
        engine_lock(s);
        srv_cache_put(&s->cache, sess);
        engine_unlock(s);
        finish_with_error(j, t_start, 500, g.err[0] ? g.err : "out of memory", NULL);
        return;
    }
    free(tools_json);
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, s->m);
    srv_chat_sampling(&j->chat, s->m, &p.sampling);
    p.max_tokens = j->max_tokens;
    p.stop = (const char *const *)j->chat.stop;
    p.n_stop = j->chat.n_stop;
    p.prompt_ids = j->ids;
    p.n_prompt_ids = j->n_ids;
    p.add_special = 0;
    p.cancel = &j->cancel;
    p.forced_text = j->chat.forced_output;
    p.grammar = j->grammar;
    p.keep_special = harmony; /* the parser reads <|channel|>, <|message|>, ... */
    if (j->chat.logprobs) {
        p.on_token = on_token;
        p.token_ctx = &g;
        p.n_top_logprobs = j->chat.top_logprobs;
    }
    p.batch = s->batch;
    double t_generate = lm_now();
    int rc = lazymoe_generate_stream(sess, NULL, &p, on_piece, &g, &j->stats, err, sizeof err);
    /* The first token is drawn as soon as the prompt's uncached part is evaluated. */
    if (rc == 0 && j->stats.generated_tokens > 0)
        j->first_token_s = t_generate - j->t_arrive + j->stats.prefill_seconds;
    engine_lock(s);
    if (rc == 0) {
        /* What the prompt's evaluation got to is kept on disk even when the client left
         * (an agent's user pressing Esc, a client timeout): the session holds the prompt
         * up to where its prefill stopped, or all of it plus an answer cut short, and the
         * next session or a restarted server starts from there instead of from zero. */
        int held = lazymoe_session_length(sess), n = held < j->n_ids ? held : j->n_ids;
        srv_disk_store(&s->disk, sess, n, n - j->stats.cached_tokens);
    }
    srv_cache_put(&s->cache, sess);
    engine_unlock(s);
    if (rc == 0 && g.err[0]) { /* the parser failed: not the client's doing */
        rc = -1;
        snprintf(err, sizeof err, "%s", g.err);
    }
    if (rc == 0 && !j->cancel) {
        /* A call the parser closes now was cut by max_tokens when generation stopped
         * there: marked, and its markup kept for replies that show it as text. */
        pthread_mutex_lock(&j->mu);
        j->reply.at_cut = j->stats.finish_reason == LAZYMOE_FINISH_LENGTH;
        j->reply.context_full = j->reply.at_cut && j->context_bound;
        pthread_mutex_unlock(&j->mu);
        if ((g.harmony ? lm_harmony_parser_finish(g.harmony, g.err) : lm_toolcall_parser_finish(g.parser, g.err)) != 0) {
            rc = -1;
            snprintf(err, sizeof err, "%s", g.err);
        }
        pthread_mutex_lock(&j->mu);
        if (rc == 0 && j->reply.n_calls && j->reply.calls[j->reply.n_calls - 1].cut && !g.raw.failed)
            j->reply.cut_text = strndup(g.raw.data + g.call_start, g.raw.len - g.call_start);
        pthread_mutex_unlock(&j->mu);
    }
    lm_toolcall_parser_free(g.parser);
    lm_harmony_parser_free(g.harmony);
    srv_buf_free(&g.raw);
    if (rc == 0 && j->cancel_reason == CANCEL_SHUTDOWN) { /* not an answer: say so */
        snprintf(err, sizeof err, "the server is shutting down");
        finish_with_error(j, t_start, 503, err, NULL);
        return;
    }
    if (rc != 0) {
        finish_with_error(j, t_start, 500, err, NULL);
        return;
    }
    pthread_mutex_lock(&j->mu);
    const char *stop_seq = j->stats.finish_reason == LAZYMOE_FINISH_STOP && j->stats.stop_index >= 0
                               ? j->chat.stop[j->stats.stop_index]
                               : NULL;
    srv_reply_end(&j->reply, &j->stats, stop_seq, &j->out);
    if (j->out.failed) {
        pthread_mutex_unlock(&j->mu);
        finish_with_error(j, t_start, 500, "out of memory building the reply", NULL);
        return;
    }
    log_job(j, t_start, NULL); /* before the client is woken: see finish_with_error */
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void *worker_main(void *arg) {
    srv_server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->qmu);
        while ((!s->head || s->waiting_room) && !s->stopping) pthread_cond_wait(&s->qcv, &s->qmu);
        srv_job *j = s->head;
        if (!j) { /* stopping and drained */
            pthread_mutex_unlock(&s->qmu);
            break;
        }
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        s->queued--;
        int slot = 0;
        while (s->running[slot]) slot++; /* a free one: at most n_workers jobs run */
        s->running[slot] = j;
        s->n_running++;
        pthread_mutex_unlock(&s->qmu);
        run_job(s, j);
        int sessions, tokens;
        engine_lock(s);
        srv_cache_usage(&s->cache, &sessions, &tokens);
        engine_unlock(s);
        pthread_mutex_lock(&s->qmu);
        s->running[slot] = NULL;
        s->n_running--;
        s->served++;
        s->cache_sessions = sessions;
        s->cache_tokens = tokens;
        pthread_cond_broadcast(&s->room_cv);
        pthread_mutex_unlock(&s->qmu);
        srv_job_release(j);
    }
    return NULL;
}

int srv_worker_start(srv_server *s, char *err, size_t errlen) {
    int n = s->opt.parallel > 0 ? s->opt.parallel : 1;
    s->workers = calloc((size_t)n, sizeof *s->workers);
    s->running = calloc((size_t)n, sizeof *s->running);
    if (!s->workers || !s->running) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (n > 1 && lazymoe_batch_create(&s->batch, s->m, n, err, errlen) != 0) return -1;
    for (int i = 0; i < n; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) {
            snprintf(err, errlen, "cannot start the generation threads");
            return -1; /* srv_worker_stop joins those started */
        }
        s->n_workers++;
    }
    return 0;
}

static void cancel_for_shutdown(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    if (!j->cancel_reason) j->cancel_reason = CANCEL_SHUTDOWN;
    j->cancel = 1;
    pthread_mutex_unlock(&j->mu);
}

void srv_worker_stop(srv_server *s) {
    pthread_mutex_lock(&s->qmu);
    s->stopping = 1;
    for (srv_job *j = s->head; j; j = j->next) cancel_for_shutdown(j);
    for (int i = 0; s->running && i < s->n_workers; i++)
        if (s->running[i]) cancel_for_shutdown(s->running[i]);
    pthread_cond_broadcast(&s->qcv);
    pthread_cond_broadcast(&s->room_cv);
    pthread_cond_broadcast(&s->prepare_cv); /* requests waiting to be prepared give up */
    pthread_mutex_unlock(&s->qmu);
    for (int i = 0; i < s->n_workers; i++) pthread_join(s->workers[i], NULL);
    s->n_workers = 0;
    lazymoe_batch_free(s->batch);
    s->batch = NULL;
    free(s->workers);
    free(s->running);
    s->workers = NULL;
    s->running = NULL;
}

/* The HTTP layer (libmicrohttpd, one thread per connection): body collection with
 * a size limit, authentication, routing, JSON and streamed responses, and watching
 * the client's socket while its job waits or runs. */
#include "server/internal.h"

#include "common/error.h"

#include <microhttpd.h>

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The content reader waits this long for output before checking the client's
 * socket again; after --keepalive seconds without output it sends a keep-alive so
 * that proxies and client idle timers see a live stream during a long prefill. */
#define WAIT_MS 100
/* At shutdown, how long requests already begun get to finish sending their last
 * bytes (a stream's error event) before the connections are closed regardless: a
 * reading client needs milliseconds; one that stopped reading must not hold the
 * server up. */
#define SHUTDOWN_DRAIN_S 5.0

typedef struct {
    srv_server *srv;
    srv_api api;       /* error shape, from the path */
    srv_buf body;
    int too_large;
    int unauthorized;  /* no valid key: the body is dropped unread, the answer is 401 */
    double t0;
    int logged_by_job; /* a job was queued: the worker writes the log line */
    int status;        /* of the response sent, for the log line */
    char what[96];     /* "METHOD /path" */
    char note[160];    /* error message or counts, for the log line */
} srv_conn;

/* ---- responses ------------------------------------------------------------------------- */

/* Tells the client how long an idle kept-alive connection stays open (the header
 * deadline runs between requests too). A client that reuses one later races the
 * server's close and has its request cut; undici (node's fetch, under the OpenAI and
 * Anthropic SDKs) keeps idle connections 4 s unless told, and honours this hint. */
static void add_keep_alive(const srv_conn *c, struct MHD_Response *r) {
    char v[32];
    snprintf(v, sizeof v, "timeout=%d", (int)c->srv->conns.header_s);
    MHD_add_response_header(r, "Keep-Alive", v);
}

static enum MHD_Result send_bytes(srv_conn *c, struct MHD_Connection *mc, int status, const char *type,
                                  const char *data, size_t len) {
    c->status = status;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    add_keep_alive(c, r);
    enum MHD_Result ok = MHD_queue_response(mc, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Sends v (stolen) as JSON. */
static enum MHD_Result send_json(srv_conn *c, struct MHD_Connection *mc, int status, json_t *v) {
    srv_buf b = {0};
    srv_buf_json(&b, v);
    json_decref(v);
    enum MHD_Result ok;
    if (b.failed) ok = send_bytes(c, mc, 500, "text/plain", "out of memory\n", 14);
    else ok = send_bytes(c, mc, status, "application/json", b.data, b.len);
    srv_buf_free(&b);
    return ok;
}

static enum MHD_Result send_error(srv_conn *c, struct MHD_Connection *mc, const srv_error *e) {
    snprintf(c->note, sizeof c->note, "error=\"%.140s\"", e->message);
    return send_json(c, mc, e->status, srv_error_body(c->api, e));
}

/* ---- client liveness -------------------------------------------------------------------- */

static int conn_fd(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* The peer closed or reset the connection. A request body fully read and no
 * pipelining means nothing else should arrive, so a hang-up is a client gone. */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static void timed_wait(srv_job *j) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += WAIT_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

/* Called with j->mu held. */
static void cancel_locked(srv_job *j, int reason) {
    if (j->state == JOB_DONE) return;
    if (!j->cancel_reason) j->cancel_reason = reason;
    j->cancel = 1;
}

/* ---- streamed responses ----------------------------------------------------------------- */

typedef struct {
    srv_job *job;
    int fd;
    double last_sent;
    double keepalive_s;
} stream_ctx;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_ctx *sc = cls;
    srv_job *j = sc->job;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        if (j->out.failed) {
            cancel_locked(j, CANCEL_DISCONNECT);
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (j->out.len) {
            size_t n = j->out.len < max ? j->out.len : max;
            memcpy(buf, j->out.data, n);
            srv_buf_consume(&j->out, n);
            pthread_mutex_unlock(&j->mu);
            sc->last_sent = lm_now();
            return (ssize_t)n;
        }
        if (j->state == JOB_DONE) {
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        timed_wait(j);
        if (client_gone(sc->fd)) {
            cancel_locked(j, CANCEL_DISCONNECT);
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (!j->out.len && lm_now() - sc->last_sent > sc->keepalive_s) {
            /* Anthropic and Responses streams that have begun get an event that
             * counts as activity (reply.h: srv_anthropic_keepalive,
             * srv_responses_keepalive); the others an SSE comment, which every
             * client skips. */
            if (j->state == JOB_RUNNING && j->chat.api == SRV_ANTHROPIC) srv_anthropic_keepalive(&j->reply, &j->out);
            if (j->state == JOB_RUNNING && j->chat.api == SRV_RESPONSES) srv_responses_keepalive(&j->reply, &j->out);
            if (j->out.len) continue; /* sent from the top of the loop */
            const char *ka = ": keepalive\n\n";
            size_t n = strlen(ka);
            if (n <= max) {
                pthread_mutex_unlock(&j->mu);
                sc->last_sent = lm_now();
                memcpy(buf, ka, n); /* NOLINT(bugprone-not-null-terminated-result): bytes, not a string */
                return (ssize_t)n;
            }
        }
    }
}

/* The response is done with, finished or not: a job still running lost its client. */
static void stream_free(void *cls) {
    stream_ctx *sc = cls;
    pthread_mutex_lock(&sc->job->mu);
    cancel_locked(sc->job, CANCEL_DISCONNECT);
    pthread_mutex_unlock(&sc->job->mu);
    srv_job_release(sc->job);
    free(sc);
}

static enum MHD_Result send_stream(srv_conn *c, struct MHD_Connection *mc, srv_job *j) {
    c->status = 200;
    stream_ctx *sc = calloc(1, sizeof *sc);
    if (!sc) return MHD_NO;
    sc->job = j;
    sc->fd = conn_fd(mc);
    sc->last_sent = lm_now();
    sc->keepalive_s = c->srv->opt.keepalive_s > 0 ? c->srv->opt.keepalive_s : 15;
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, sc, stream_free);
    if (!r) {
        free(sc);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_keep_alive(c, r);
    enum MHD_Result ok = MHD_queue_response(mc, 200, r);
    MHD_destroy_response(r); /* frees sc through stream_free when the connection is done with it */
    return ok;
}

/* Waits for a non-streamed job; NULL status when the client left (the job is cancelled). */
static enum MHD_Result wait_and_send(srv_conn *c, struct MHD_Connection *mc, srv_job *j) {
    int fd = conn_fd(mc), gone = 0;
    pthread_mutex_lock(&j->mu);
    while (j->state != JOB_DONE) {
        timed_wait(j);
        if (j->state != JOB_DONE && client_gone(fd)) {
            cancel_locked(j, CANCEL_DISCONNECT);
            gone = 1;
            break;
        }
    }
    pthread_mutex_unlock(&j->mu);
    if (gone) {
        srv_job_release(j);
        return MHD_NO; /* closes the connection */
    }
    enum MHD_Result ok = send_bytes(c, mc, j->status, "application/json", j->out.data ? j->out.data : "", j->out.len);
    srv_job_release(j);
    return ok;
}

/* ---- endpoints --------------------------------------------------------------------------- */

static json_t *model_object(const srv_server *s) {
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:i, s:i}", "id", s->opt.model_name, "object", "model", "type",
                     "model", "display_name", s->opt.model_name, "created", (json_int_t)time(NULL), "created_at",
                     "1970-01-01T00:00:00Z", "owned_by", "lazymoe", "context_length", s->max_context, "max_model_len",
                     s->max_context);
}

static enum MHD_Result get_models(srv_server *s, srv_conn *c, struct MHD_Connection *mc) {
    return send_json(c, mc, 200,
                     json_pack("{s:s, s:[o], s:b, s:s, s:s}", "object", "list", "data", model_object(s), "has_more", 0,
                               "first_id", s->opt.model_name, "last_id", s->opt.model_name));
}

static enum MHD_Result get_health(srv_server *s, srv_conn *c, struct MHD_Connection *mc) {
    pthread_mutex_lock(&s->qmu);
    int queued = s->queued, running = s->n_running;
    int sessions = s->cache_sessions, tokens = s->cache_tokens; /* as of the last request */
    unsigned long long served = s->served, steps = 0, stepped = 0;
    if (s->batch) lazymoe_batch_counters(s->batch, &steps, &stepped);
    pthread_mutex_unlock(&s->qmu);
    pthread_mutex_lock(&s->conns.mu);
    unsigned long long shed = s->conns.shed_count; /* closed by the deadlines or to make room */
    pthread_mutex_unlock(&s->conns.mu);
    /* decode_steps / decoded_tokens: batch steps run and the tokens they carried
     * (their ratio is the average number of requests decoded together) */
    return send_json(c, mc, 200,
                     json_pack("{s:s, s:s, s:i, s:i, s:b, s:i, s:i, s:I, s:i, s:i, s:I, s:I, s:I}", "status", "ok", "model",
                               s->opt.model_name, "context_length", s->max_context, "queued", queued, "generating",
                               running > 0, "running", running, "parallel", s->n_workers, "served", (json_int_t)served,
                               "cached_conversations", sessions, "cached_tokens", tokens, "decode_steps",
                               (json_int_t)steps, "decoded_tokens", (json_int_t)stepped, "connections_closed",
                               (json_int_t)shed));
}

static int parse_chat(srv_server *s, srv_conn *c, srv_chat *chat, srv_error *e) {
    const char *data = c->body.data ? c->body.data : "";
    int rc = c->api == SRV_ANTHROPIC   ? srv_parse_anthropic(data, c->body.len, chat, e)
             : c->api == SRV_RESPONSES ? srv_parse_responses(data, c->body.len, chat, e)
                                       : srv_parse_openai(data, c->body.len, chat, e);
    if (rc == 0 && chat->forced_output && !s->opt.allow_forced_output) {
        srv_chat_free(chat);
        return srv_fail(e, c->api, 400, "lazymoe_forced_output",
                        "lazymoe_forced_output is a test-only field: the server was not started with --allow-forced-output");
    }
    return rc;
}

/* Prompts are tokenized only this far: a prompt that cannot fit costs no more than a
 * few times the limit, and clients still learn its size when it is a little over
 * (Claude Code reads "N tokens > M maximum" to decide how much to compact). */
static int count_limit(const srv_server *s) {
    return s->input_limit < INT32_MAX / 4 ? 4 * s->input_limit : INT32_MAX - 1;
}

static int check_length(srv_server *s, srv_api api, int n, srv_error *e) {
    if (n <= s->input_limit) return 0;
    const char *at_least = n > count_limit(s) ? " (at least: counting stopped there)" : "";
    srv_fail(e, api, 400, api == SRV_RESPONSES ? "input" : "messages", "prompt is too long: %d tokens > %d maximum%s", n,
             s->input_limit, at_least);
    if (api != SRV_ANTHROPIC) {
        snprintf(e->code, sizeof e->code, "context_length_exceeded");
        snprintf(e->message, sizeof e->message,
                 "This model's maximum context length is %d tokens, but the prompt has %d tokens%s (prompt is too "
                 "long: %d tokens > %d maximum). Shorten the messages.",
                 s->input_limit, n, at_least, n, s->input_limit);
    }
    return -1;
}

static int ends_in_think(const char *prompt, size_t n) {
    while (n && (prompt[n - 1] == '\n' || prompt[n - 1] == ' ' || prompt[n - 1] == '\r')) n--;
    return n >= 7 && !memcmp(prompt + n - 7, "<think>", 7);
}

/* The gate around preparing a request (parse, template, tokenize, grammar): waits for
 * a free place; 0 when the server is stopping instead. */
static int prepare_enter(srv_server *s) {
    pthread_mutex_lock(&s->qmu);
    while (s->preparing >= SRV_MAX_PREPARING && !s->stopping) pthread_cond_wait(&s->prepare_cv, &s->qmu);
    int ok = !s->stopping;
    if (ok) s->preparing++;
    pthread_mutex_unlock(&s->qmu);
    return ok;
}

static void prepare_leave(srv_server *s) {
    pthread_mutex_lock(&s->qmu);
    s->preparing--;
    pthread_cond_signal(&s->prepare_cv);
    pthread_mutex_unlock(&s->qmu);
}

/* Parses the body and builds the job's prompt, ids and grammar. */
static int prepare_job(srv_server *s, srv_conn *c, srv_job *j, srv_error *e) {
    if (parse_chat(s, c, &j->chat, e) != 0 ||
        srv_build_prompt(s->m, &j->chat, count_limit(s), &j->prompt, &j->prompt_len, &j->ids, &j->n_ids, e) != 0 ||
        check_length(s, c->api, j->n_ids, e) != 0)
        return -1;
    /* The client's limit, up to the context (generation stops there anyway) and the
     * server's --max-tokens when one was given; no limit given: the rest of the context. */
    int room = s->max_context - j->n_ids;
    int cap = s->opt.max_tokens > 0 && s->opt.max_tokens < room ? s->opt.max_tokens : room;
    j->max_tokens = j->chat.max_tokens > 0 && j->chat.max_tokens < cap ? j->chat.max_tokens : cap;
    j->context_bound = j->max_tokens == room && (j->chat.max_tokens <= 0 || j->chat.max_tokens > room);
    if (j->max_tokens < 1) j->max_tokens = 1;
    j->in_think = ends_in_think(j->prompt, j->prompt_len);
    return srv_build_grammar(s->m, &j->chat, j->in_think, &j->grammar, e);
}

static enum MHD_Result post_chat(srv_server *s, srv_conn *c, struct MHD_Connection *mc, const char *endpoint) {
    srv_error e = {0};
    srv_job *j = srv_job_new(s);
    if (!j) return send_error(c, mc, (srv_fail(&e, c->api, 500, NULL, "out of memory"), &e));
    if (!prepare_enter(s)) {
        srv_job_release(j);
        return send_error(c, mc, (srv_fail(&e, c->api, 503, NULL, "the server is shutting down"), &e));
    }
    int rc = prepare_job(s, c, j, &e);
    prepare_leave(s);
    if (rc != 0) {
        srv_job_release(j);
        return send_error(c, mc, &e);
    }
    snprintf(j->endpoint, sizeof j->endpoint, "%s", endpoint);
    if (j->chat.skipped_tools[0]) srv_log("%s: built-in tools skipped (this server cannot run them): %s", endpoint, j->chat.skipped_tools);
    if (srv_job_enqueue(s, j) != 0) {
        srv_job_release(j);
        return send_error(c, mc, (srv_fail(&e, c->api, 503, NULL, "the server is shutting down"), &e));
    }
    c->logged_by_job = 1;
    if (j->chat.stream) return send_stream(c, mc, j); /* the stream context takes our reference */
    return wait_and_send(c, mc, j);
}

static enum MHD_Result post_count_tokens(srv_server *s, srv_conn *c, struct MHD_Connection *mc) {
    srv_error e = {0};
    srv_chat chat;
    char *prompt = NULL;
    int32_t *ids = NULL;
    int n = 0;
    if (!prepare_enter(s)) return send_error(c, mc, (srv_fail(&e, c->api, 503, NULL, "the server is shutting down"), &e));
    if (parse_chat(s, c, &chat, &e) != 0) {
        prepare_leave(s);
        return send_error(c, mc, &e);
    }
    int rc = srv_build_prompt(s->m, &chat, count_limit(s), &prompt, NULL, &ids, &n, &e);
    prepare_leave(s);
    srv_chat_free(&chat);
    free(prompt);
    free(ids);
    if (rc == 0 && n > count_limit(s)) rc = check_length(s, c->api, n, &e);
    if (rc != 0) return send_error(c, mc, &e);
    snprintf(c->note, sizeof c->note, "in=%d", n);
    return send_json(c, mc, 200, json_pack("{s:i}", "input_tokens", n));
}

/* ---- routing ------------------------------------------------------------------------------ */

/* Constant-time comparison, so the key cannot be guessed byte by byte from timings. */
static int same_secret(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = la != lb;
    for (size_t i = 0; i < la; i++) d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return d == 0;
}

static int authorized(const srv_server *s, struct MHD_Connection *mc) {
    if (!s->opt.api_key) return 1;
    const char *k = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "x-api-key");
    if (k && same_secret(k, s->opt.api_key)) return 1;
    const char *a = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return a && !strncasecmp(a, "Bearer ", 7) && same_secret(a + 7, s->opt.api_key);
}

static srv_api api_of(const char *url) {
    return !strncmp(url, "/v1/messages", 12) ? SRV_ANTHROPIC : !strncmp(url, "/v1/responses", 13) ? SRV_RESPONSES : SRV_OPENAI;
}

static enum MHD_Result route(srv_server *s, srv_conn *c, struct MHD_Connection *mc, const char *url, const char *method) {
    srv_error e = {0};
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) {
        if (!get) return send_error(c, mc, (srv_fail(&e, c->api, 405, NULL, "%s /health: use GET", method), &e));
        return get_health(s, c, mc);
    }
    if (!authorized(s, mc)) {
        srv_fail(&e, c->api, 401, NULL, "%s", c->api == SRV_ANTHROPIC ? "invalid x-api-key" : "Incorrect API key provided");
        if (c->api != SRV_ANTHROPIC) snprintf(e.code, sizeof e.code, "invalid_api_key");
        return send_error(c, mc, &e);
    }
    if (c->too_large)
        return send_error(c, mc, (srv_fail(&e, c->api, 413, NULL, "request body is larger than the server's limit of %zu bytes",
                                           s->opt.max_body), &e));
    if (c->body.failed) return send_error(c, mc, (srv_fail(&e, c->api, 500, NULL, "out of memory reading the request"), &e));
    struct { const char *path; int post; } routes[] = {
        {"/v1/chat/completions", 1}, {"/v1/messages", 1}, {"/v1/messages/count_tokens", 1}, {"/v1/models", 0},
        {"/v1/responses", 1}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(url, routes[i].path) != 0) continue;
        if (routes[i].post ? !post : !get)
            return send_error(c, mc, (srv_fail(&e, c->api, 405, NULL, "%s %s: use %s", method, url,
                                               routes[i].post ? "POST" : "GET"), &e));
        switch (i) {
        case 0: return post_chat(s, c, mc, "POST /v1/chat/completions");
        case 1: return post_chat(s, c, mc, "POST /v1/messages");
        case 2: return post_count_tokens(s, c, mc);
        case 3: return get_models(s, c, mc);
        default: return post_chat(s, c, mc, "POST /v1/responses");
        }
    }
    if (get && !strncmp(url, "/v1/models/", 11)) return send_json(c, mc, 200, model_object(s));
    return send_error(c, mc, (srv_fail(&e, c->api, 404, NULL, "no such endpoint: %s %s", method, url), &e));
}

typedef struct {
    const char *first; /* the first Content-Length value */
    int conflict;      /* a later one differs */
} content_lengths;

static enum MHD_Result check_content_length(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    content_lengths *cl = cls;
    if (!key || strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0) return MHD_YES;
    if (!cl->first) cl->first = value ? value : "";
    else if (!value || strcmp(cl->first, value) != 0) cl->conflict = 1;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    srv_server *s = cls;
    srv_conn *c = *con_cls;
    if (!c) {
        if (!(c = calloc(1, sizeof *c))) return MHD_NO;
        c->srv = s;
        c->t0 = lm_now();
        c->api = api_of(url);
        snprintf(c->what, sizeof c->what, "%s %s", method, url);
        pthread_mutex_lock(&s->qmu);
        s->open_requests++; /* until on_completed */
        pthread_mutex_unlock(&s->qmu);
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->opt.max_body) c->too_large = 1;
        *con_cls = c;
        srv_conns_stage(&s->conns, mc, CONN_BODY);
        /* Two Content-Length headers that disagree make the body's end ambiguous (the
         * way requests are smuggled past a proxy): refused before anything is read. */
        content_lengths lengths = {NULL, 0};
        MHD_get_connection_values(mc, MHD_HEADER_KIND, check_content_length, &lengths);
        if (lengths.conflict) {
            srv_error e = {0};
            return send_error(c, mc, (srv_fail(&e, c->api, 400, NULL, "conflicting Content-Length headers"), &e));
        }
        /* The key is checked on the headers alone: a client without it gets no
         * "100 Continue" and no byte of its body is kept. A body that may be large
         * (over 64 KiB, chunked, or announced with Expect: 100-continue) is not read
         * at all: the 401 goes out now and the connection closes after it. A small
         * one is read and dropped first, so that the client, which has sent it
         * already, reads the 401 rather than a connection reset. */
        if (strcmp(url, "/health") != 0 && !authorized(s, mc)) {
            c->unauthorized = 1;
            const char *expect = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
            const char *te = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
            if (expect || te || (cl && strtoull(cl, NULL, 10) > 64 * 1024)) return route(s, c, mc, url, method);
        }
        /* A client that announces a body over the limit and asks before sending it
         * (Expect: 100-continue) gets its 413 now, not "100 Continue" and a 413 after
         * the upload. One that sends at once has its body read and dropped (below). */
        if (c->too_large && MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT))
            return route(s, c, mc, url, method);
        return MHD_YES;
    }
    if (*upload_size) {
        if (c->unauthorized) {
            *upload_size = 0;
            return MHD_YES;
        }
        /* An oversized body is read and dropped, then answered with 413: clients
         * handle a response to a request they finished sending far better than a
         * connection reset in the middle of it. */
        if (!c->too_large && c->body.len + *upload_size > s->opt.max_body) {
            c->too_large = 1;
            srv_buf_free(&c->body);
        }
        if (!c->too_large) srv_buf_append(&c->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    srv_conns_stage(&s->conns, mc, CONN_ANSWERING);
    return route(s, c, mc, url, method);
}

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    srv_server *s = cls;
    (void)socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) srv_conns_opened(&s->conns, mc);
    else srv_conns_closed(&s->conns, mc);
}

/* MHD calls this once a request is over: its response fully written (the last
 * byte handed to the socket), or the connection closed. */
static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode toe) {
    srv_server *s = cls;
    (void)toe;
    srv_conn *c = *con_cls;
    srv_conns_stage(&s->conns, mc, CONN_HEADERS); /* kept alive: the next request's headers are due */
    if (!c) return;
    if (!c->logged_by_job)
        srv_log("%s %d %s%s%.1f ms", c->what, c->status ? c->status : 499, c->note, c->note[0] ? " " : "",
                (lm_now() - c->t0) * 1e3);
    srv_buf_free(&c->body);
    free(c);
    *con_cls = NULL;
    pthread_mutex_lock(&s->qmu);
    if (--s->open_requests == 0) pthread_cond_broadcast(&s->drained);
    pthread_mutex_unlock(&s->qmu);
}

/* The shutdown race this closes: srv_worker_stop ends every job -- a running stream
 * gets its error event ("shutting down") in job->out, a waiting request its 503 --
 * but those bytes still have to go out through the request's connection thread,
 * which must wake up, take them in stream_read, write them, then write the last
 * chunk. MHD_stop_daemon does not wait for any of that: it flags shutdown, which
 * ends every connection thread's loop, and shuts down every socket at once. Called
 * right after srv_worker_stop it won that race now and then, and the client saw
 * the connection cut before the error event. So stop the daemon only once every
 * request that has begun has completed (on_completed), or after SHUTDOWN_DRAIN_S
 * for clients that stopped reading or sending. Called after srv_worker_stop: no job
 * is left to wait for, and new generation requests on kept-alive connections are
 * refused with 503. */
static void drain_requests(srv_server *s) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)SHUTDOWN_DRAIN_S;
    pthread_mutex_lock(&s->qmu);
    int rc = 0;
    while (s->open_requests > 0 && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&s->drained, &s->qmu, &deadline);
    int left = s->open_requests;
    pthread_mutex_unlock(&s->qmu);
    if (left)
        srv_log("lazymoe: %d request(s) still unfinished after %.0f s (a client not reading or not sending), closing them",
                left, SHUTDOWN_DRAIN_S);
}

/* ---- the daemon ------------------------------------------------------------------------------ */

void srv_options_init(srv_options *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->model_name = "lazymoe";
    o->max_tokens = 0; /* no cap of the server's own: the client's, up to the context */
    o->max_body = 32u << 20;
    /* An agent's main request, its side requests (titles, summaries) and a couple of
     * sub-agents run at once; more rows per step cost little on a CPU (the step reads
     * the same weights), but each running request reserves its KV room. */
    o->parallel = 4;
    o->cache_slots = 4;
    o->max_connections = 64;
    o->header_timeout_s = 15;
    o->body_timeout_s = 120;
    o->keepalive_s = 15;
    o->prompt_cache_size = 8ull << 30;
}

/* The persistent prompt cache's directory when none is given: prompt-cache in the
 * user's cache directory; -1 (no persistent cache) when there is none. */
static int default_prompt_cache_dir(char *out, size_t len) {
    char base[3000], e[LM_ERR_LEN];
    if (lm_user_cache_dir(base, sizeof base, e) != 0) return -1;
    return snprintf(out, len, "%s/prompt-cache", base) < (int)len ? 0 : -1;
}

/* Renders and tokenizes a one-message conversation before serving: a model whose
 * tokenizer or chat template is broken would otherwise start, report itself healthy,
 * and answer every request with an error that blames the client. */
static int check_model_text(const lazymoe_model *m, char *err, size_t errlen) {
    char e[512];
    char *prompt = NULL;
    int32_t *ids = NULL;
    int n = 0;
    if (lazymoe_chat_format(m, "[{\"role\": \"user\", \"content\": \"Hello\"}]", NULL, 1, NULL, &prompt, e, sizeof e) != 0) {
        snprintf(err, errlen, "cannot serve: the model's chat template does not render a one-message chat: %s", e);
        return -1;
    }
    int rc = lazymoe_tokenize(m, prompt, strlen(prompt), 0, &ids, &n, e, sizeof e);
    lazymoe_free(prompt);
    lazymoe_free(ids);
    if (rc != 0) {
        snprintf(err, errlen, "cannot serve: the model's tokenizer fails on a chat prompt: %s", e);
        return -1;
    }
    return 0;
}

int srv_run(lazymoe_model *m, const srv_options *o, const volatile sig_atomic_t *stop, char *err, size_t errlen) {
    srv_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = -1;
    MHD_socket lsock = MHD_INVALID_SOCKET;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    char port[16];
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    s->m = m;
    s->opt = *o;
    s->max_context = info.max_context;
    s->model_max_context = info.model_max_context;
    s->input_limit = o->max_input_tokens > 0 && o->max_input_tokens < info.max_context ? o->max_input_tokens
                                                                                         : info.max_context;
    s->started_at = lm_now();
    pthread_mutex_init(&s->qmu, NULL);
    pthread_cond_init(&s->qcv, NULL);
    pthread_cond_init(&s->drained, NULL);
    pthread_cond_init(&s->prepare_cv, NULL);
    pthread_cond_init(&s->room_cv, NULL);
    if (s->opt.parallel < 1) s->opt.parallel = 1;
    if (s->opt.cache_slots < s->opt.parallel) s->opt.cache_slots = s->opt.parallel; /* a session per running request */
    /* one client address may hold most, not all, of the connections */
    srv_conns_init(&s->conns, o->max_connections, o->max_connections > 4 ? o->max_connections * 3 / 4 : o->max_connections,
                   o->header_timeout_s > 0 ? o->header_timeout_s : 15, o->body_timeout_s > 0 ? o->body_timeout_s : 120);
    if (check_model_text(m, err, errlen) != 0) goto done;
    if (srv_cache_init(&s->cache, m, s->opt.cache_slots, o->cache_tokens, err, errlen) != 0) goto done;
    char pc_dir[4096];
    const char *pcd = o->prompt_cache_dir;
    if (!pcd && o->prompt_cache_size && default_prompt_cache_dir(pc_dir, sizeof pc_dir) == 0) pcd = pc_dir;
    if (srv_disk_init(&s->disk, m, pcd, o->prompt_cache_size, err, errlen) != 0) goto done;
    snprintf(port, sizeof port, "%d", o->port);
    int gai = getaddrinfo(o->host, port, &hints, &ai);
    if (gai != 0 || !ai) {
        snprintf(err, errlen, "cannot resolve the address to listen on, \"%s\": %s", o->host, gai_strerror(gai));
        goto done;
    }
    if (srv_worker_start(s, err, errlen) != 0) goto done;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* MHD's own limit sits above max_connections so that the connection that passes
     * it is accepted, and conns.c sheds an idle one for it. No
     * MHD_OPTION_LISTENING_ADDRESS_REUSE: with it (SO_REUSEPORT) a second server on
     * the port started and took half the traffic; without it binding fails. */
    s->daemon = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
                                 on_connection, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections + 16,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024), MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(err, errlen, "cannot listen on %s port %d (%s): is another server using it? (--host, --port)", o->host,
                 o->port, errno ? strerror(errno) : "libmicrohttpd refused");
        goto done;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    int bound = di ? di->port : o->port;
    char why[96] = "";
    if (s->model_max_context > s->max_context)
        snprintf(why, sizeof why, "; the model allows %d, the memory plan or --ctx less", s->model_max_context);
    srv_log("lazymoe: listening on http://%s%s%s:%d (model %s, context %d tokens%s, %d requests at once)",
            ai->ai_family == AF_INET6 ? "[" : "", o->host, ai->ai_family == AF_INET6 ? "]" : "", bound, o->model_name,
            s->max_context, why, s->n_workers);
    while (!*stop) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
        srv_conns_sweep(&s->conns);
    }
    srv_log("lazymoe: shutting down");
    lsock = MHD_quiesce_daemon(s->daemon); /* no new connections; requests on open ones get 503 */
    rc = 0;
done:
    srv_worker_stop(s);
    if (s->daemon) {
        drain_requests(s);
        MHD_stop_daemon(s->daemon);
    }
    if (lsock != MHD_INVALID_SOCKET) close(lsock);
    if (ai) freeaddrinfo(ai);
    srv_cache_free(&s->cache);
    srv_disk_free(&s->disk);
    srv_conns_free(&s->conns);
    pthread_mutex_destroy(&s->qmu);
    pthread_cond_destroy(&s->qcv);
    pthread_cond_destroy(&s->drained);
    pthread_cond_destroy(&s->prepare_cv);
    pthread_cond_destroy(&s->room_cv);
    free(s);
    return rc;
}

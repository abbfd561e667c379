/* Shared bookkeeping of a reply (see reply.h); the formats are in openai.c and anthropic.c. */
#include "server/reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void srv_random_alnum(char *dst, int n) {
    static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char raw[64];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f ? fread(raw, 1, (size_t)n, f) : 0;
    if (f) fclose(f);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned x = (unsigned)ts.tv_nsec;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        dst[i] = abc[((size_t)i < got ? raw[i] : (x >> 16)) % (sizeof abc - 1)];
    }
    dst[n] = 0;
}

void srv_reply_init(srv_reply *r, srv_api api, int stream, int include_usage, const char *model, int prompt_tokens,
                    int cached_tokens) {
    memset(r, 0, sizeof *r);
    r->api = api;
    r->stream = stream;
    r->include_usage = include_usage;
    r->created = (long long)time(NULL);
    snprintf(r->model, sizeof r->model, "%s", model ? model : "");
    r->prompt_tokens = prompt_tokens;
    r->cached_tokens = cached_tokens;
    char rnd[33];
    srv_random_alnum(rnd, 24);
    snprintf(r->id, sizeof r->id, "%s%s", api == SRV_ANTHROPIC ? "msg_" : api == SRV_RESPONSES ? "resp_" : "chatcmpl-",
             rnd);
}

void srv_reply_free(srv_reply *r) {
    srv_buf_free(&r->text);
    srv_buf_free(&r->reasoning);
    srv_buf_free(&r->pending_ws);
    srv_buf_free(&r->item_text);
    json_decref(r->items);
    json_decref(r->lp_entries);
    free(r->cut_text);
    for (int i = 0; i < r->n_calls; i++) {
        free(r->calls[i].id);
        free(r->calls[i].name);
        srv_buf_free(&r->calls[i].args);
    }
    free(r->calls);
    memset(r, 0, sizeof *r);
}

/* Keeps the whole answer: the non-streamed body is built from it at the end. */
static void record(srv_reply *r, const lm_tc_event *ev) {
    switch (ev->kind) {
    case LM_TC_TEXT: srv_buf_append(&r->text, ev->data, ev->len); break;
    case LM_TC_REASONING: srv_buf_append(&r->reasoning, ev->data, ev->len); break;
    case LM_TC_CALL_BEGIN:
        if (LM_GROW(r->calls, r->cap_calls, (size_t)r->n_calls + 1) != 0) {
            r->text.failed = 1;
            return;
        }
        memset(&r->calls[r->n_calls], 0, sizeof r->calls[0]);
        r->calls[r->n_calls].id = strdup(ev->id ? ev->id : "");
        r->calls[r->n_calls].name = strdup(ev->name ? ev->name : "");
        if (!r->calls[r->n_calls].id || !r->calls[r->n_calls].name) r->text.failed = 1;
        r->n_calls++;
        break;
    case LM_TC_CALL_ARGS:
        if (r->n_calls) srv_buf_append(&r->calls[r->n_calls - 1].args, ev->data, ev->len);
        break;
    case LM_TC_CALL_END:
        if (r->at_cut && r->n_calls) r->calls[r->n_calls - 1].cut = 1;
        break;
    }
}

void srv_reply_begin(srv_reply *r, srv_buf *out) {
    if (r->api == SRV_RESPONSES) srv_responses_begin(r, out); /* builds the output items, streamed or not */
    if (!r->stream) return;
    if (r->api == SRV_RESPONSES) return;
    if (r->api == SRV_ANTHROPIC) srv_anthropic_begin(r, out);
    else srv_openai_begin(r, out);
}

void srv_reply_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out) {
    record(r, ev);
    if (r->api == SRV_RESPONSES) srv_responses_event(r, ev, out);
    if (!r->stream || r->api == SRV_RESPONSES) return;
    if (r->api == SRV_ANTHROPIC) srv_anthropic_event(r, ev, out);
    else srv_openai_event(r, ev, out);
}

void srv_reply_token(srv_reply *r, json_t *entry) {
    if (!entry || (!r->lp_entries && !(r->lp_entries = json_array())) ||
        json_array_append_new(r->lp_entries, entry) != 0)
        r->text.failed = 1; /* reported as out of memory at the end */
}

json_t *srv_reply_take_logprobs(srv_reply *r) {
    if (!r->logprobs || (r->stream && !r->lp_entries)) return json_null(); /* nothing new for this chunk */
    json_t *entries = r->lp_entries ? r->lp_entries : json_array();
    r->lp_entries = NULL;
    return json_pack("{s:o}", "content", entries);
}

/* A non-streamed reply shows a call cut by max_tokens as the text the model wrote,
 * never as a call with arguments the model did not finish. (Streams have sent the
 * call already; their finish reason says the output was cut.) */
static void cut_call_to_text(srv_reply *r) {
    if (r->stream || !r->n_calls || !r->calls[r->n_calls - 1].cut) return;
    srv_call *c = &r->calls[--r->n_calls];
    if (r->cut_text) srv_buf_puts(&r->text, r->cut_text);
    free(c->id);
    free(c->name);
    srv_buf_free(&c->args);
}

void srv_reply_end(srv_reply *r, const lazymoe_gen_stats *st, const char *stop_seq, srv_buf *out) {
    if (r->api != SRV_RESPONSES) cut_call_to_text(r); /* the Responses writer replaces its output item itself */
    if (r->text.failed) out->failed = 1;
    for (int i = 0; i < r->n_calls; i++)
        if (r->calls[i].args.failed) out->failed = 1;
    if (r->api == SRV_ANTHROPIC) srv_anthropic_end(r, st, stop_seq, out);
    else if (r->api == SRV_RESPONSES) srv_responses_end(r, st, out);
    else srv_openai_end(r, st, out);
}

json_t *srv_error_body(srv_api api, const srv_error *e) {
    if (api == SRV_ANTHROPIC)
        return json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", e->type, "message", e->message);
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", e->message, "type", e->type, "param",
                     e->param[0] ? json_string(e->param) : json_null(), "code",
                     e->code[0] ? json_string(e->code) : json_null());
}

void srv_reply_stream_error(srv_reply *r, const srv_error *e, srv_buf *out) {
    if (r->api == SRV_RESPONSES) {
        srv_responses_stream_error(r, e, out);
    } else if (r->api == SRV_ANTHROPIC) {
        srv_sse(out, "error", srv_error_body(r->api, e));
    } else {
        srv_sse(out, NULL, srv_error_body(r->api, e));
        srv_buf_puts(out, "data: [DONE]\n\n");
    }
}

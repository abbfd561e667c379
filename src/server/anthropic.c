/* Anthropic messages: message bodies and the streamed event sequence.
 *
 * Stream: message_start (usage with input_tokens), ping, then content blocks with
 * sequential indices -- content_block_start, content_block_delta (text_delta,
 * thinking_delta, input_json_delta), content_block_stop -- then message_delta
 * (stop_reason, stop_sequence, usage) and message_stop. Every event has its
 * "event:" line: the SDKs dispatch on it.
 *
 * input_tokens counts the prompt tokens that were not read from the prompt cache;
 * cache_read_input_tokens the ones that were (their sum is the prompt), which is
 * how Anthropic reports cached prompts and what clients add up to track the context.
 */
#include "server/reply.h"

#include <ctype.h>
#include <string.h>

enum { BLOCK_NONE = 0, BLOCK_TEXT, BLOCK_THINKING, BLOCK_TOOL };

json_t *srv_anthropic_usage(const srv_reply *r, int output_tokens) {
    return json_pack("{s:i, s:i, s:i, s:i}", "input_tokens", r->prompt_tokens - r->cached_tokens,
                     "cache_creation_input_tokens", 0, "cache_read_input_tokens", r->cached_tokens, "output_tokens",
                     output_tokens);
}

void srv_anthropic_begin(srv_reply *r, srv_buf *out) {
    srv_sse(out, "message_start",
            json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:o}}", "type", "message_start", "message", "id",
                      r->id, "type", "message", "role", "assistant", "model", r->model, "content", "stop_reason",
                      "stop_sequence", "usage", srv_anthropic_usage(r, 0)));
    srv_sse(out, "ping", json_pack("{s:s}", "type", "ping"));
}

static void close_block(srv_reply *r, srv_buf *out) {
    if (r->block == BLOCK_NONE) return;
    r->blank_text = 0;
    srv_sse(out, "content_block_stop", json_pack("{s:s, s:i}", "type", "content_block_stop", "index", r->next_block - 1));
    r->block = BLOCK_NONE;
}

/* Starts a block (stealing content_block) unless one of that kind is open. */
static void open_block(srv_reply *r, int kind, json_t *content_block, srv_buf *out) {
    if (r->block == kind && kind != BLOCK_TOOL) {
        json_decref(content_block);
        return;
    }
    close_block(r, out);
    srv_sse(out, "content_block_start",
            json_pack("{s:s, s:i, s:o}", "type", "content_block_start", "index", r->next_block, "content_block",
                      content_block));
    r->next_block++;
    r->block = kind;
}

static void delta(srv_reply *r, json_t *d, srv_buf *out) {
    srv_sse(out, "content_block_delta",
            json_pack("{s:s, s:i, s:o}", "type", "content_block_delta", "index", r->next_block - 1, "delta", d));
}

static int all_space(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return 0;
    return 1;
}

static void text_delta(srv_reply *r, const char *s, size_t n, srv_buf *out) {
    open_block(r, BLOCK_TEXT, json_pack("{s:s, s:s}", "type", "text", "text", ""), out);
    delta(r, json_pack("{s:s, s:s#}", "type", "text_delta", "text", s, n), out);
}

void srv_anthropic_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out) {
    switch (ev->kind) {
    case LM_TC_TEXT: {
        /* Whitespace between blocks (after </think>, before a tool call) would make
         * blank text blocks: it is held until real text follows. A text block a
         * keep-alive opened counts as none yet. */
        int no_text_yet = r->block != BLOCK_TEXT || r->blank_text;
        if (no_text_yet && all_space(ev->data, ev->len)) {
            srv_buf_append(&r->pending_ws, ev->data, ev->len);
            return;
        }
        r->blank_text = 0;
        if (r->pending_ws.len && no_text_yet) {
            srv_buf_append(&r->pending_ws, ev->data, ev->len);
            text_delta(r, r->pending_ws.data, r->pending_ws.len, out);
            srv_buf_reset(&r->pending_ws);
            return;
        }
        text_delta(r, ev->data, ev->len, out);
        return;
    }
    case LM_TC_REASONING:
        open_block(r, BLOCK_THINKING, json_pack("{s:s, s:s, s:s}", "type", "thinking", "thinking", "", "signature", ""),
                   out);
        delta(r, json_pack("{s:s, s:s#}", "type", "thinking_delta", "thinking", ev->data, ev->len), out);
        return;
    case LM_TC_CALL_BEGIN:
        srv_buf_reset(&r->pending_ws);
        open_block(r, BLOCK_TOOL,
                   json_pack("{s:s, s:s, s:s, s:{}}", "type", "tool_use", "id", ev->id ? ev->id : "", "name",
                             ev->name ? ev->name : "", "input"),
                   out);
        return;
    case LM_TC_CALL_ARGS:
        if (r->block == BLOCK_TOOL)
            delta(r, json_pack("{s:s, s:s#}", "type", "input_json_delta", "partial_json", ev->data, ev->len), out);
        return;
    case LM_TC_CALL_END:
        close_block(r, out);
        return;
    }
}

void srv_anthropic_keepalive(srv_reply *r, srv_buf *out) {
    switch (r->block) {
    case BLOCK_NONE:
        if (r->next_block != 0) return; /* between blocks: not worth a blank one */
        open_block(r, BLOCK_TEXT, json_pack("{s:s, s:s}", "type", "text", "text", ""), out);
        r->blank_text = 1;
        delta(r, json_pack("{s:s, s:s}", "type", "text_delta", "text", ""), out);
        return;
    case BLOCK_TEXT:
        delta(r, json_pack("{s:s, s:s}", "type", "text_delta", "text", ""), out);
        return;
    case BLOCK_THINKING:
        delta(r, json_pack("{s:s, s:s}", "type", "thinking_delta", "thinking", ""), out);
        return;
    default:
        delta(r, json_pack("{s:s, s:s}", "type", "input_json_delta", "partial_json", ""), out);
        return;
    }
}

static const char *stop_reason(const srv_reply *r, const lazymoe_gen_stats *st, const char *stop_seq) {
    /* The context filling up is not the client's max_tokens: clients that continue a
     * max_tokens stop with a longer request learn here that it cannot fit (Claude Code
     * says "The model has reached its context window limit"). */
    if (st->finish_reason == LAZYMOE_FINISH_LENGTH) return r->context_full ? "model_context_window_exceeded" : "max_tokens";
    if (r->n_calls > 0) return "tool_use";
    return stop_seq ? "stop_sequence" : "end_turn";
}

static json_t *trimmed_text(const srv_buf *b) {
    size_t a = 0, z = b->len;
    while (a < z && isspace((unsigned char)b->data[a])) a++;
    while (z > a && isspace((unsigned char)b->data[z - 1])) z--;
    return a < z ? json_stringn(b->data + a, z - a) : NULL;
}

void srv_anthropic_end(srv_reply *r, const lazymoe_gen_stats *st, const char *stop_seq, srv_buf *out) {
    const char *why = stop_reason(r, st, stop_seq);
    if (r->stream) {
        close_block(r, out);
        json_t *u = srv_anthropic_usage(r, st->generated_tokens);
        srv_sse(out, "message_delta",
                json_pack("{s:s, s:{s:s, s:o}, s:o}", "type", "message_delta", "delta", "stop_reason", why,
                          "stop_sequence", stop_seq ? json_string(stop_seq) : json_null(), "usage", u));
        srv_sse(out, "message_stop", json_pack("{s:s}", "type", "message_stop"));
        return;
    }
    json_t *content = json_array();
    if (content && r->reasoning.len)
        json_array_append_new(content, json_pack("{s:s, s:s#, s:s}", "type", "thinking", "thinking", r->reasoning.data,
                                                 r->reasoning.len, "signature", ""));
    json_t *text = r->text.len ? trimmed_text(&r->text) : NULL;
    if (content && (text || (!r->n_calls && !r->reasoning.len)))
        json_array_append_new(content, json_pack("{s:s, s:o}", "type", "text", "text", text ? text : json_string("")));
    else
        json_decref(text);
    for (int i = 0; content && i < r->n_calls; i++) {
        json_error_t je;
        json_t *input = r->calls[i].args.len ? json_loadb(r->calls[i].args.data, r->calls[i].args.len, 0, &je) : NULL;
        if (!json_is_object(input)) {
            json_decref(input);
            input = json_object();
        }
        json_array_append_new(content, json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id", r->calls[i].id,
                                                 "name", r->calls[i].name, "input", input));
    }
    json_t *body = content ? json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:o, s:o}", "id", r->id, "type", "message",
                                       "role", "assistant", "model", r->model, "content", content, "stop_reason", why,
                                       "stop_sequence", stop_seq ? json_string(stop_seq) : json_null(), "usage",
                                       srv_anthropic_usage(r, st->generated_tokens))
                           : NULL;
    srv_buf_json(out, body);
    json_decref(body);
}

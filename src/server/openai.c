/* OpenAI chat completions: chat.completion bodies and chat.completion.chunk streams.
 *
 * Stream: a first chunk with delta {role, content: ""}; text as delta.content;
 * reasoning as delta.reasoning_content (and delta.reasoning, the name newer
 * clients read); a tool call as one delta with index, id, type and function.name
 * (arguments ""), then deltas with only index and function.arguments; a last chunk
 * with the finish_reason; with stream_options.include_usage a chunk with
 * choices [] and usage; then "data: [DONE]".
 */
#include "server/reply.h"

#include <string.h>

static const char *finish_reason(const srv_reply *r, const lazymoe_gen_stats *st) {
    if (st->finish_reason == LAZYMOE_FINISH_LENGTH) return "length";
    return r->n_calls > 0 ? "tool_calls" : "stop";
}

static json_t *usage(const srv_reply *r, const lazymoe_gen_stats *st) {
    return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", r->prompt_tokens, "completion_tokens",
                     st->generated_tokens, "total_tokens", r->prompt_tokens + st->generated_tokens,
                     "prompt_tokens_details", "cached_tokens", st->cached_tokens);
}

/* One chunk with delta (stolen) and finish_reason (NULL = null). */
static void chunk(srv_reply *r, json_t *delta, const char *finish, srv_buf *out) {
    /* With logprobs, the tokens generated since the last chunk ride on this one. */
    json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:o, s:o}]}", "id", r->id, "object",
                          "chat.completion.chunk", "created", (json_int_t)r->created, "model", r->model, "choices",
                          "index", 0, "delta", delta, "logprobs", srv_reply_take_logprobs(r), "finish_reason",
                          finish ? json_string(finish) : json_null());
    if (c && r->include_usage) json_object_set_new(c, "usage", json_null());
    srv_sse(out, NULL, c);
}

void srv_openai_begin(srv_reply *r, srv_buf *out) {
    chunk(r, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL, out);
}

void srv_openai_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out) {
    json_t *d = NULL;
    switch (ev->kind) {
    case LM_TC_TEXT: d = json_pack("{s:s#}", "content", ev->data, ev->len); break;
    case LM_TC_REASONING:
        d = json_pack("{s:s#, s:s#}", "reasoning_content", ev->data, ev->len, "reasoning", ev->data, ev->len);
        break;
    case LM_TC_CALL_BEGIN:
        d = json_pack("{s:[{s:i, s:s, s:s, s:{s:s, s:s}}]}", "tool_calls", "index", ev->index, "id",
                      ev->id ? ev->id : "", "type", "function", "function", "name", ev->name ? ev->name : "",
                      "arguments", "");
        break;
    case LM_TC_CALL_ARGS:
        d = json_pack("{s:[{s:i, s:{s:s#}}]}", "tool_calls", "index", ev->index, "function", "arguments", ev->data,
                      ev->len);
        break;
    case LM_TC_CALL_END: return;
    }
    if (!d) {
        out->failed = 1;
        return;
    }
    chunk(r, d, NULL, out);
}

void srv_openai_end(srv_reply *r, const lazymoe_gen_stats *st, srv_buf *out) {
    const char *finish = finish_reason(r, st);
    if (r->stream) {
        chunk(r, json_object(), finish, out);
        if (r->include_usage) {
            json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", r->id, "object", "chat.completion.chunk",
                                  "created", (json_int_t)r->created, "model", r->model, "choices", "usage",
                                  usage(r, st));
            srv_sse(out, NULL, c);
        }
        srv_buf_puts(out, "data: [DONE]\n\n");
        return;
    }
    json_t *msg = json_pack("{s:s}", "role", "assistant");
    if (msg) {
        if (r->text.len || !r->n_calls)
            json_object_set_new(msg, "content", json_stringn(r->text.data ? r->text.data : "", r->text.len));
        else
            json_object_set_new(msg, "content", json_null());
        if (r->reasoning.len) {
            json_object_set_new(msg, "reasoning_content", json_stringn(r->reasoning.data, r->reasoning.len));
            json_object_set_new(msg, "reasoning", json_stringn(r->reasoning.data, r->reasoning.len));
        }
        if (r->n_calls) {
            json_t *calls = json_array();
            for (int i = 0; calls && i < r->n_calls; i++)
                json_array_append_new(calls, json_pack("{s:s, s:s, s:{s:s, s:s#}}", "id", r->calls[i].id, "type",
                                                       "function", "function", "name", r->calls[i].name, "arguments",
                                                       r->calls[i].args.data ? r->calls[i].args.data : "",
                                                       r->calls[i].args.len));
            json_object_set_new(msg, "tool_calls", calls);
        }
    }
    json_t *body = msg ? json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:o, s:s}], s:o}", "id", r->id, "object",
                                   "chat.completion", "created", (json_int_t)r->created, "model", r->model,
                                   "choices", "index", 0, "message", msg, "logprobs", srv_reply_take_logprobs(r),
                                   "finish_reason", finish,
                                   "usage", usage(r, st))
                       : NULL;
    srv_buf_json(out, body);
    json_decref(body);
}

/* OpenAI Responses API replies: the response object and its event stream.
 *
 * The answer is a list of output items, built in the order the model produces them
 * (for a non-streamed reply too, which then lists them in one response object):
 *   reasoning        {id rs_, summary: [], content: [{type: reasoning_text, text}]}
 *   message          {id msg_, role: assistant, content: [{type: output_text, text}]}
 *   function_call    {id fc_, call_id, name, arguments}
 *   custom_tool_call {id ctc_, call_id, name, input}  (calls of freeform tools)
 * Stream (every event has an "event:" line, its type, and a sequence_number):
 *   response.created, response.in_progress (the response, status in_progress)
 *   per item: response.output_item.added, then
 *     message:   response.content_part.added, response.output_text.delta...,
 *                response.output_text.done, response.content_part.done
 *     reasoning: response.reasoning_text.delta..., response.reasoning_text.done
 *     function_call:    response.function_call_arguments.delta..., .done
 *     custom_tool_call: response.custom_tool_call_input.delta, .done (the raw input is
 *                       known when the call ends: the model writes it as JSON)
 *   response.output_item.done
 *   response.completed, or response.incomplete (max_output_tokens), with usage
 *   (input_tokens_details.cached_tokens); after an error: error, response.failed.
 * A call cut by max_output_tokens ends with status incomplete, as does the response;
 * a non-streamed reply shows it as the text the model wrote instead (see reply.h).
 */
#include "server/reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ITEM_NONE = 0, ITEM_MESSAGE, ITEM_REASONING, ITEM_CALL };

static void event(srv_reply *r, const char *type, json_t *ev, srv_buf *out) {
    if (!ev) {
        out->failed = 1;
        return;
    }
    int seq = r->seq++;
    if (!r->stream) {
        json_decref(ev);
        return;
    }
    json_object_set_new(ev, "type", json_string(type));
    json_object_set_new(ev, "sequence_number", json_integer(seq));
    srv_sse(out, type, ev);
}

static json_t *usage(const srv_reply *r, const lazymoe_gen_stats *st) {
    int gen = st ? st->generated_tokens : 0;
    return json_pack("{s:i, s:{s:i}, s:i, s:{s:i}, s:i}", "input_tokens", r->prompt_tokens, "input_tokens_details",
                     "cached_tokens", r->cached_tokens, "output_tokens", gen, "output_tokens_details",
                     "reasoning_tokens", 0, "total_tokens", r->prompt_tokens + gen);
}

/* The response object; status "in_progress" before the end (st NULL). */
static json_t *response(const srv_reply *r, const char *status, const lazymoe_gen_stats *st, json_t *error) {
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o, s:n, s:n, s:n, s:s, s:o, s:b, s:n, s:{s:n, s:n}, s:b, s:n, "
                          "s:{s:{s:s}}, s:s, s:[], s:n, s:s, s:o, s:{}}",
                          "id", r->id, "object", "response", "created_at", (json_int_t)r->created, "status", status,
                          "error", error ? error : json_null(), "incomplete_details", "instructions",
                          "max_output_tokens", "model", r->model, "output", r->items ? json_incref(r->items) : json_array(),
                          "parallel_tool_calls", 1, "previous_response_id", "reasoning", "effort", "summary", "store",
                          0, "temperature", "text", "format", "type", "text", "tool_choice", "auto", "tools", "top_p",
                          "truncation", "disabled", "usage", st ? usage(r, st) : json_null(), "metadata");
    return o;
}

static void new_item_id(srv_reply *r, const char *prefix) {
    char rnd[33];
    srv_random_alnum(rnd, 24);
    snprintf(r->item_id, sizeof r->item_id, "%s%s", prefix, rnd);
}

static int output_index(const srv_reply *r) { return (int)json_array_size(r->items); }

static void item_added(srv_reply *r, json_t *item, srv_buf *out) {
    event(r, "response.output_item.added", json_pack("{s:i, s:o}", "output_index", output_index(r), "item", item), out);
}

/* Appends the finished item (stolen) to the list and sends output_item.done. */
static void item_done(srv_reply *r, json_t *item, srv_buf *out) {
    if (!item) {
        out->failed = 1;
        return;
    }
    event(r, "response.output_item.done", json_pack("{s:i, s:O}", "output_index", output_index(r), "item", item), out);
    if ((!r->items && !(r->items = json_array())) || json_array_append_new(r->items, item) != 0) out->failed = 1;
    r->item = ITEM_NONE;
    srv_buf_reset(&r->item_text);
}

static const char *item_text(const srv_reply *r) { return r->item_text.data ? r->item_text.data : ""; }

static json_t *text_part(const srv_reply *r) {
    return json_pack("{s:s, s:s#, s:[], s:[]}", "type", "output_text", "text", item_text(r), r->item_text.len,
                     "annotations", "logprobs");
}

static void close_message(srv_reply *r, const char *status, srv_buf *out) {
    int idx = output_index(r);
    event(r, "response.output_text.done",
          json_pack("{s:s, s:i, s:i, s:s#, s:[]}", "item_id", r->item_id, "output_index", idx, "content_index", 0, "text",
                    item_text(r), r->item_text.len, "logprobs"),
          out);
    event(r, "response.content_part.done",
          json_pack("{s:s, s:i, s:i, s:o}", "item_id", r->item_id, "output_index", idx, "content_index", 0, "part",
                    text_part(r)),
          out);
    item_done(r, json_pack("{s:s, s:s, s:s, s:s, s:[o]}", "id", r->item_id, "type", "message", "status", status, "role",
                           "assistant", "content", text_part(r)),
              out);
}

static void close_reasoning(srv_reply *r, const char *status, srv_buf *out) {
    int idx = output_index(r);
    event(r, "response.reasoning_text.done",
          json_pack("{s:s, s:i, s:i, s:s#}", "item_id", r->item_id, "output_index", idx, "content_index", 0, "text",
                    item_text(r), r->item_text.len),
          out);
    item_done(r, json_pack("{s:s, s:s, s:[], s:[{s:s, s:s#}], s:s}", "id", r->item_id, "type", "reasoning", "summary",
                           "content", "type", "reasoning_text", "text", item_text(r), r->item_text.len, "status", status),
              out);
}

static int is_freeform(const srv_reply *r, const char *name) {
    return r->freeform && name && json_object_get(r->freeform, name) != NULL;
}

/* A freeform call's raw input: the "input" string of the arguments the model wrote
 * as JSON; arguments of another shape are passed on as their JSON text. */
static json_t *freeform_input(const srv_call *c) {
    json_error_t je;
    json_t *args = c->args.len ? json_loadb(c->args.data, c->args.len, 0, &je) : NULL;
    json_t *in = json_object_get(args, "input");
    json_t *s = json_is_string(in) && json_object_size(args) == 1 ? json_copy(in)
                                                                   : json_stringn(c->args.data ? c->args.data : "{}",
                                                                                  c->args.len ? c->args.len : 2);
    json_decref(args);
    return s;
}

static void close_call(srv_reply *r, srv_buf *out) {
    const srv_call *c = &r->calls[r->n_calls - 1];
    const char *status = c->cut ? "incomplete" : "completed";
    int idx = output_index(r);
    if (is_freeform(r, c->name)) {
        json_t *in = freeform_input(c);
        if (!in) {
            out->failed = 1;
            return;
        }
        event(r, "response.custom_tool_call_input.delta",
              json_pack("{s:s, s:i, s:O}", "item_id", r->item_id, "output_index", idx, "delta", in), out);
        event(r, "response.custom_tool_call_input.done",
              json_pack("{s:s, s:i, s:O}", "item_id", r->item_id, "output_index", idx, "input", in), out);
        item_done(r, json_pack("{s:s, s:s, s:s, s:s, s:s, s:o}", "id", r->item_id, "type", "custom_tool_call", "status",
                               status, "call_id", c->id, "name", c->name, "input", in),
                  out);
        return;
    }
    const char *args = c->args.data ? c->args.data : "";
    event(r, "response.function_call_arguments.done",
          json_pack("{s:s, s:i, s:s, s:s#}", "item_id", r->item_id, "output_index", idx, "name", c->name, "arguments",
                    args, c->args.len),
          out);
    item_done(r, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s#}", "id", r->item_id, "type", "function_call", "status",
                           status, "call_id", c->id, "name", c->name, "arguments", args, c->args.len),
              out);
}

static void close_item(srv_reply *r, const char *status, srv_buf *out) {
    switch (r->item) {
    case ITEM_MESSAGE: close_message(r, status, out); break;
    case ITEM_REASONING: close_reasoning(r, status, out); break;
    case ITEM_CALL: close_call(r, out); break;
    default: break;
    }
}

void srv_responses_begin(srv_reply *r, srv_buf *out) {
    event(r, "response.created", json_pack("{s:o}", "response", response(r, "in_progress", NULL, NULL)), out);
    event(r, "response.in_progress", json_pack("{s:o}", "response", response(r, "in_progress", NULL, NULL)), out);
}

void srv_responses_keepalive(srv_reply *r, srv_buf *out) {
    event(r, "response.in_progress", json_pack("{s:o}", "response", response(r, "in_progress", NULL, NULL)), out);
}

void srv_responses_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out) {
    int idx;
    switch (ev->kind) {
    case LM_TC_TEXT:
        if (r->item != ITEM_MESSAGE) {
            close_item(r, "completed", out);
            new_item_id(r, "msg_");
            r->item = ITEM_MESSAGE;
            item_added(r, json_pack("{s:s, s:s, s:s, s:s, s:[]}", "id", r->item_id, "type", "message", "status",
                                    "in_progress", "role", "assistant", "content"),
                       out);
            event(r, "response.content_part.added",
                  json_pack("{s:s, s:i, s:i, s:o}", "item_id", r->item_id, "output_index", output_index(r),
                            "content_index", 0, "part", text_part(r)),
                  out);
        }
        srv_buf_append(&r->item_text, ev->data, ev->len);
        event(r, "response.output_text.delta",
              json_pack("{s:s, s:i, s:i, s:s#, s:[]}", "item_id", r->item_id, "output_index", output_index(r),
                        "content_index", 0, "delta", ev->data, ev->len, "logprobs"),
              out);
        return;
    case LM_TC_REASONING:
        if (r->item != ITEM_REASONING) {
            close_item(r, "completed", out);
            new_item_id(r, "rs_");
            r->item = ITEM_REASONING;
            item_added(r, json_pack("{s:s, s:s, s:[], s:[], s:s}", "id", r->item_id, "type", "reasoning", "summary",
                                    "content", "status", "in_progress"),
                       out);
        }
        srv_buf_append(&r->item_text, ev->data, ev->len);
        event(r, "response.reasoning_text.delta",
              json_pack("{s:s, s:i, s:i, s:s#}", "item_id", r->item_id, "output_index", output_index(r),
                        "content_index", 0, "delta", ev->data, ev->len),
              out);
        return;
    case LM_TC_CALL_BEGIN:
        close_item(r, "completed", out);
        r->item = ITEM_CALL;
        if (is_freeform(r, ev->name)) {
            new_item_id(r, "ctc_");
            item_added(r, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", r->item_id, "type", "custom_tool_call",
                                    "status", "in_progress", "call_id", ev->id ? ev->id : "", "name",
                                    ev->name ? ev->name : "", "input", ""),
                       out);
        } else {
            new_item_id(r, "fc_");
            item_added(r, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", r->item_id, "type", "function_call",
                                    "status", "in_progress", "call_id", ev->id ? ev->id : "", "name",
                                    ev->name ? ev->name : "", "arguments", ""),
                       out);
        }
        return;
    case LM_TC_CALL_ARGS:
        if (r->item != ITEM_CALL || !r->n_calls || is_freeform(r, r->calls[r->n_calls - 1].name)) return;
        idx = output_index(r);
        event(r, "response.function_call_arguments.delta",
              json_pack("{s:s, s:i, s:s#}", "item_id", r->item_id, "output_index", idx, "delta", ev->data, ev->len),
              out);
        return;
    case LM_TC_CALL_END:
        if (r->item == ITEM_CALL && r->n_calls) close_call(r, out);
        return;
    }
}

/* Non-streamed: a call cut by the token limit is shown as the text the model wrote. */
static void cut_call_to_text(srv_reply *r, srv_buf *out) {
    size_t n = json_array_size(r->items);
    const json_t *last = n ? json_array_get(r->items, n - 1) : NULL;
    if (r->stream || !r->n_calls || !r->calls[r->n_calls - 1].cut || !last) return;
    const char *type = json_string_value(json_object_get(last, "type"));
    if (!type || (strcmp(type, "function_call") != 0 && strcmp(type, "custom_tool_call") != 0)) return;
    json_array_remove(r->items, n - 1);
    const char *text = r->cut_text ? r->cut_text : "";
    srv_buf_reset(&r->item_text);
    srv_buf_puts(&r->item_text, text);
    new_item_id(r, "msg_");
    r->item = ITEM_MESSAGE;
    close_message(r, "incomplete", out);
}

void srv_responses_end(srv_reply *r, const lazymoe_gen_stats *st, srv_buf *out) {
    int cut = st->finish_reason == LAZYMOE_FINISH_LENGTH;
    close_item(r, cut ? "incomplete" : "completed", out);
    cut_call_to_text(r, out);
    if (!r->items && !(r->items = json_array())) {
        out->failed = 1;
        return;
    }
    json_t *resp = response(r, cut ? "incomplete" : "completed", st, NULL);
    if (resp && cut) json_object_set_new(resp, "incomplete_details", json_pack("{s:s}", "reason", "max_output_tokens"));
    if (!r->stream) {
        srv_buf_json(out, resp);
        json_decref(resp);
        return;
    }
    event(r, cut ? "response.incomplete" : "response.completed", json_pack("{s:o}", "response", resp), out);
}

void srv_responses_stream_error(srv_reply *r, const srv_error *e, srv_buf *out) {
    r->stream = 1; /* also when the reply never started (the job failed while queued) */
    event(r, "error",
          json_pack("{s:o, s:s, s:o}", "code", json_string(e->code[0] ? e->code : e->type), "message", e->message,
                    "param", e->param[0] ? json_string(e->param) : json_null()),
          out);
    json_t *err = json_pack("{s:s, s:s}", "code", e->code[0] ? e->code : e->type, "message", e->message);
    event(r, "response.failed", json_pack("{s:o}", "response", response(r, "failed", NULL, err)), out);
}

/* The answer of one request in the API's wire format, built as it is generated.
 *
 * The generation worker turns model output into events with the tool-call parser
 * (visible text, reasoning, tool calls; text/toolcall.h) and hands each to srv_reply_event, which appends
 * to `out`: for a streamed request the server-sent events to send now, for a
 * non-streamed one nothing until srv_reply_end writes the whole JSON body.
 * Formats: OpenAI chat.completion(.chunk) in openai.c, Anthropic message events in
 * anthropic.c. Not thread-safe: the caller holds the lock that guards `out`.
 */
#ifndef LAZYMOE_SERVER_REPLY_H
#define LAZYMOE_SERVER_REPLY_H

#include "lazymoe.h"
#include "server/buf.h"
#include "server/request.h"
#include "text/toolcall.h"

typedef struct {
    char *id, *name;
    srv_buf args;
    int cut; /* max_tokens ended the output inside this call: the parser closed it */
} srv_call;

typedef struct {
    srv_api api;
    int stream, include_usage;
    char id[64];       /* chatcmpl-... / msg_... */
    long long created; /* unix seconds */
    char model[128];   /* echoed in every chunk */
    int prompt_tokens, cached_tokens;
    srv_buf text, reasoning; /* the whole answer (non-streamed bodies) */
    srv_call *calls;
    int n_calls;
    size_t cap_calls;
    /* streaming state */
    int block;          /* Anthropic: kind of the open content block (0 = none) */
    int next_block;     /* Anthropic: index the next block gets */
    srv_buf pending_ws; /* Anthropic: whitespace held until text follows (no blank text blocks) */
    int blank_text;     /* Anthropic: the open text block was opened by a keep-alive and has no text yet */
    /* Responses API: output items are built as they come, streamed or not */
    int seq;                 /* sequence_number of the next event */
    int item;                /* kind of the open output item (0 = none) */
    char item_id[48];
    srv_buf item_text;       /* text of the open message / reasoning item */
    json_t *items;           /* output items done so far */
    const json_t *freeform;  /* borrowed: names of the request's freeform tools, or NULL */
    /* set by the worker before the parser's finish: generation stopped at max_tokens,
     * so a call the parser closes now was cut */
    int at_cut;
    /* set by the worker with at_cut: the stop was the context window filling up before
     * the client's max_tokens (Anthropic: model_context_window_exceeded; OpenAI has
     * only "length" / max_output_tokens for both) */
    int context_full;
    char *cut_text;          /* the raw output of a cut call (non-streamed replies show it as text) */
    /* OpenAI chat logprobs: entries of tokens generated so far; streams attach the
     * pending ones to the next chunk they send, bodies show them all */
    int logprobs;
    json_t *lp_entries;
} srv_reply;

/* prompt_tokens / cached_tokens are known before generation starts (message_start
 * reports them). */
void srv_reply_init(srv_reply *r, srv_api api, int stream, int include_usage, const char *model, int prompt_tokens,
                    int cached_tokens);
void srv_reply_free(srv_reply *r);

/* Streaming: the opening (OpenAI role chunk; Anthropic message_start + ping). */
void srv_reply_begin(srv_reply *r, srv_buf *out);
void srv_reply_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out);
/* One generated token's logprobs entry ({token, logprob, bytes, top_logprobs}; stolen),
 * reported before the events its text causes. */
void srv_reply_token(srv_reply *r, json_t *entry);
/* {"content": [entries not yet sent]} (and forgets them), or null without logprobs. */
json_t *srv_reply_take_logprobs(srv_reply *r);
/* The end: streaming, the final events; otherwise the whole body. stop_seq: the stop
 * string that ended the answer, or NULL. */
void srv_reply_end(srv_reply *r, const lazymoe_gen_stats *st, const char *stop_seq, srv_buf *out);
/* Streaming only: an error after the response started (the status is already sent). */
void srv_reply_stream_error(srv_reply *r, const srv_error *e, srv_buf *out);

/* Error bodies in each API's shape. */
json_t *srv_error_body(srv_api api, const srv_error *e);

/* Per-API halves (openai.c / anthropic.c). */
void srv_openai_begin(srv_reply *r, srv_buf *out);
void srv_openai_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out);
void srv_openai_end(srv_reply *r, const lazymoe_gen_stats *st, srv_buf *out);
void srv_anthropic_begin(srv_reply *r, srv_buf *out);
void srv_anthropic_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out);
void srv_anthropic_end(srv_reply *r, const lazymoe_gen_stats *st, const char *stop_seq, srv_buf *out);
/* A stream that has sent nothing for a while (a long prefill): an event that clients
 * count as activity -- an empty delta of the open block, or, before the first block,
 * the answer's text block opened early (it stays empty when the answer starts with a
 * tool call or reasoning). Claude Code aborts a stream after 300 s without a content
 * event (pings do not count: CLAUDE_STREAM_IDLE_TIMEOUT_MS) and retries without
 * streaming, which sends no byte until the answer is done. Adds nothing to `out`
 * between two blocks (the caller sends a comment then). */
void srv_anthropic_keepalive(srv_reply *r, srv_buf *out);
json_t *srv_anthropic_usage(const srv_reply *r, int output_tokens);
void srv_responses_begin(srv_reply *r, srv_buf *out);
void srv_responses_event(srv_reply *r, const lm_tc_event *ev, srv_buf *out);
void srv_responses_end(srv_reply *r, const lazymoe_gen_stats *st, srv_buf *out);
void srv_responses_stream_error(srv_reply *r, const srv_error *e, srv_buf *out);
/* The keep-alive of a Responses stream: response.in_progress again (Codex ends a
 * stream after stream_idle_timeout_ms, 300 s, without an event; comments are not
 * events). */
void srv_responses_keepalive(srv_reply *r, srv_buf *out);

/* n random letters and digits, NUL-terminated (dst holds n + 1 bytes; n <= 64). */
void srv_random_alnum(char *dst, int n);

#endif

/* Requests of the two APIs turned into one chat request: the messages and tools
 * the model's chat template renders, plus sampling and output options.
 *
 * OpenAI chat completions and Anthropic messages differ in shape (system prompt,
 * content blocks, tool calls/results); both become template messages in the form
 * transformers' chat templates expect:
 *   {"role": "system"|"user"|"assistant"|"tool", "content": "text",
 *    "reasoning_content": "..." (assistant, optional),
 *    "tool_calls": [{"id", "type": "function", "function": {"name", "arguments": {object}}}],
 *    "tool_call_id": "..." (tool)}
 * and tools in OpenAI form [{"type": "function", "function": {"name", "description",
 * "parameters"}}]. Content is always a string (text parts joined), so every template
 * can concatenate it.
 *
 * A client mistake is an srv_error with a 4xx status that names the field
 * ("messages[2].content[0].type: ..."), never a crash or a 5xx.
 */
#ifndef LAZYMOE_SERVER_REQUEST_H
#define LAZYMOE_SERVER_REQUEST_H

#include "lazymoe.h"

#include <jansson.h>
#include <stddef.h>

typedef enum { SRV_OPENAI = 0, SRV_ANTHROPIC = 1, SRV_RESPONSES = 2 } srv_api; /* RESPONSES: OpenAI /v1/responses */

typedef struct {
    int status;     /* HTTP status */
    char type[40];  /* error type in the API's own vocabulary */
    char code[40];  /* OpenAI error.code ("" = null) */
    char param[96]; /* OpenAI error.param ("" = null) */
    char message[600];
} srv_error;

/* Fills e (status, type derived from the status for the API, param) and returns -1. */
int srv_fail(srv_error *e, srv_api api, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

enum {
    SRV_SET_TEMPERATURE = 1 << 0,
    SRV_SET_TOP_P = 1 << 1,
    SRV_SET_TOP_K = 1 << 2,
    SRV_SET_MIN_P = 1 << 3,
    SRV_SET_REPETITION = 1 << 4,
    SRV_SET_PRESENCE = 1 << 5,
    SRV_SET_FREQUENCY = 1 << 6,
    SRV_SET_SEED = 1 << 7,
};

typedef enum { SRV_TOOLS_AUTO = 0, SRV_TOOLS_NONE, SRV_TOOLS_REQUIRED } srv_tool_choice;
typedef enum { SRV_FORMAT_TEXT = 0, SRV_FORMAT_JSON_OBJECT, SRV_FORMAT_JSON_SCHEMA } srv_format;

typedef struct {
    srv_api api;
    json_t *messages;     /* template messages (owned) */
    json_t *tools;        /* OpenAI-form tools, NULL when none or tool_choice none (owned) */
    json_t *kwargs;       /* extra template variables (object) or NULL (owned) */
    char *model;          /* the model name the client asked for, or NULL */
    int stream;
    int include_usage;    /* OpenAI stream_options.include_usage */
    int max_tokens;       /* -1 = not given */
    char **stop;          /* n_stop non-empty strings (owned) */
    int n_stop;
    lazymoe_sampling sampling; /* the fields named in `set` were given */
    unsigned set;
    srv_tool_choice tool_choice;
    char *tool_name;      /* tool_choice naming one function (then REQUIRED), or NULL */
    char *forced_output;  /* the test-only "lazymoe_forced_output" field, or NULL */
    /* Constrained output (server/constrain.c turns it into a grammar). */
    srv_format format;
    json_t *schema;       /* SRV_FORMAT_JSON_SCHEMA: the schema (owned) */
    char format_field[128]; /* the request field that gave it, for errors */
    /* Constrained output, in chat completions' vocabulary whatever the API said it in:
     * response_format as chat completions sends it ({"type": "json_schema",
     * "json_schema": {"name", "schema", "strict"}} / {"type": "json_object"}; NULL =
     * plain text), and the tool a named tool_choice asks for (NULL = none named). */
    json_t *response_format;
    char *tool_choice_name;
    /* Responses API: the names of the freeform ("custom") tools, whose calls carry
     * raw text (object name -> true; NULL when none), and the built-in tools that were
     * skipped (comma-separated, for the log line). */
    json_t *freeform_tools;
    char skipped_tools[160];
    /* OpenAI chat completions: report each token's log-probability (logprobs) with
     * top_logprobs alternatives. */
    int logprobs, top_logprobs;
} srv_chat;

/* Parses a request body. On failure *out holds nothing (freed) and e says why. */
int srv_parse_openai(const char *body, size_t len, srv_chat *out, srv_error *e);
int srv_parse_anthropic(const char *body, size_t len, srv_chat *out, srv_error *e);
int srv_parse_responses(const char *body, size_t len, srv_chat *out, srv_error *e); /* responses.c */
void srv_chat_free(srv_chat *c);

/* Renders the chat template for c and tokenizes the result (add_special 0: the
 * template writes the special tokens), counting at most max_ids + 1 ids (*n_ids >
 * max_ids: longer than that, counting stopped). *prompt and *ids are malloc'd (free());
 * *prompt_len (when not NULL) is the prompt's length: it may hold NUL bytes that
 * the messages held. A template error (e.g. a role the template refuses) is a 400. */
int srv_build_prompt(const lazymoe_model *m, const srv_chat *c, int max_ids, char **prompt, size_t *prompt_len,
                     int32_t **ids, int *n_ids, srv_error *e);

/* The grammar that enforces c's output format or forced tool call (NULL when the
 * output is free); a schema or tool the grammar cannot express is a 400 naming the
 * field. The tool-call format is the one the model's chat template writes (Qwen3-Coder
 * XML or Hermes JSON), found by rendering a sample call. Free with lazymoe_grammar_free.
 * in_think: the prompt ends inside <think> (reasoning comes first). */
int srv_build_grammar(const lazymoe_model *m, const srv_chat *c, int in_think, lazymoe_grammar **out, srv_error *e);

/* Sampling for the request: the model's generation_config defaults, then the
 * request's values. A seed not given is drawn at random. */
void srv_chat_sampling(const srv_chat *c, const lazymoe_model *m, lazymoe_sampling *out);

/* The Anthropic system block Claude Code sends first, different on every request;
 * dropped so that it does not defeat prefix caching. */
#define SRV_BILLING_HEADER "x-anthropic-billing-header"

#endif

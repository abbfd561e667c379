/* src/text/toolcall.h -- agreed interface between the tool-call parser (helper "toolcall")
 * and the server (helper "server"). Both code against exactly this.
 *
 * Streaming parser that splits generated text into answer text, reasoning and tool calls.
 * Formats (detected per call, both may appear in one output):
 *   Hermes:      <tool_call>{"name": "f", "arguments": {...}}</tool_call>
 *                ("arguments" may be a JSON string holding the object; "parameters" is
 *                accepted as its alias; a missing/null "arguments" is {}).
 *   Qwen3-Coder: <tool_call><function=f><parameter=p>VALUE</parameter>...</function></tool_call>
 *                also without the <tool_call> wrapper; several <function=> blocks may share
 *                one wrapper. One newline after <parameter=p> and one before the closing
 *                tag are not part of VALUE.
 *   Reasoning:   <think>...</think>
 *
 * Decisions a caller can observe (see the DESIGN comment in toolcall.c for the reasons):
 *   - Whitespace where text or reasoning borders markup is not emitted: "Let me look.\n\n"
 *     before a call gives "Let me look.", whitespace between calls or after the last call
 *     gives nothing, reasoning is trimmed inside <think>. Whitespace at the very start or
 *     end of an output without markup there is kept.
 *   - "<think>" starts reasoning only where a text segment starts (start of output, after
 *     </think>, after a call); elsewhere it is text. Markup inside reasoning is reasoning.
 *   - Malformed markup before a call is committed (the wrapper holds neither JSON nor
 *     <function=, bad Hermes JSON, a bad function name) becomes text: the opening tag is
 *     emitted as text and scanning resumes right after it, so nothing is lost.
 *   - A wrapped or Hermes call with a name that is not among the tools is still a call (the
 *     client answers "no such tool" and the model can correct itself); an UNWRAPPED
 *     <function=X> is a call only when X names one of the tools, else text.
 *   - Once CALL_BEGIN was emitted the call is repaired, never taken back: a missing
 *     </parameter> ends where the next tag starts, stray text between parameters is
 *     dropped, end of output closes the call with valid JSON.
 *   - CALL_ARGS fragments of one call concatenate to one JSON object that jansson accepts
 *     (invalid UTF-8 and NUL bytes inside values become U+FFFD). TEXT and REASONING pass
 *     bytes through.
 * Events of a feed are coalesced: each feed emits at most one event per run of one kind.
 */
#ifndef LAZYMOE_TOOLCALL_H
#define LAZYMOE_TOOLCALL_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
    LM_TC_TEXT,        /* visible answer text: data/len */
    LM_TC_REASONING,   /* text inside <think>...</think>: data/len (tags never emitted) */
    LM_TC_CALL_BEGIN,  /* a tool call starts: index (0,1,..), name, id ("call_" + 24 random
                          alnum chars, unique per call) */
    LM_TC_CALL_ARGS,   /* a fragment of the call's arguments JSON text: data/len; the
                          concatenation of a call's fragments is one complete JSON object */
    LM_TC_CALL_END,    /* the call is complete: index */
} lm_tc_kind;

/* Valid only during the callback (data, name and id point into the parser). */
typedef struct {
    lm_tc_kind kind;
    int index;
    const char *name, *id; /* CALL_BEGIN only */
    const char *data;      /* TEXT / REASONING / CALL_ARGS */
    size_t len;
} lm_tc_event;

/* Returning non-zero stops parsing (the feed call returns -1 with err "cancelled"). */
typedef int (*lm_tc_event_fn)(void *ctx, const lm_tc_event *ev);

typedef struct lm_toolcall_parser lm_toolcall_parser;

/* tools_json: the request's tools as a JSON array in OpenAI form
 * ([{"type":"function","function":{"name","description","parameters":{JSON schema}}}])
 * or NULL/"" for none (then tool-call markup is plain text). The schema's property types
 * decide how Qwen3-Coder XML parameter values become JSON (string stays a string;
 * integer/number/boolean/object/array/null are parsed as JSON when they parse, else
 * kept as a string). in_think = 1 when the prompt already ended inside "<think>"
 * (the template opened it), so output starts as reasoning. */
int lm_toolcall_parser_create(lm_toolcall_parser **out, const char *tools_json, int in_think,
                              lm_tc_event_fn fn, void *ctx, char *err);
/* Feeds a piece of generated text (complete UTF-8). Text that might be the start of
 * markup ("<tool_call>", "<function=", "<think>", "</think>") is held back until it is
 * decided; everything else is emitted at once, so streaming stays smooth. */
int lm_toolcall_parser_feed(lm_toolcall_parser *p, const char *piece, size_t len, char *err);
/* End of generation: flushes held-back text; an unterminated tool call whose name is
 * known is closed (arguments completed to valid JSON) -- it still counts as a call. */
int lm_toolcall_parser_finish(lm_toolcall_parser *p, char *err);
/* Number of complete tool calls emitted so far (finish_reason tool_calls when > 0). */
int lm_toolcall_parser_calls(const lm_toolcall_parser *p);
void lm_toolcall_parser_free(lm_toolcall_parser *p);

/* A call id as OpenAI writes them ("call_" and 24 letters and digits) into id[30],
 * the next one of the sequence *rng (splitmix64) stands for. Shared by the parsers. */
void lm_toolcall_make_id(char id[30], uint64_t *rng);
#endif

/* Streaming parser of OpenAI's harmony format (gpt-oss output), with the events of
 * text/toolcall.h, so the server streams it the same way.
 *
 * The prompt ends with "<|start|>assistant"; the model then writes messages
 *   HEADER<|message|>BODY END
 * where HEADER holds "<|channel|>CHANNEL", optionally " to=RECIPIENT" (before or after
 * the channel) and a content type (" json" or " <|constrain|>json"), and END is
 * <|end|> (more messages follow, each opened by "<|start|>assistant"), <|call|> or
 * <|return|> (the turn is over; both are end-of-generation tokens, so generation
 * usually stops there and they never reach the parser).
 *   channel analysis                      -> LM_TC_REASONING
 *   recipient functions.NAME (any channel) -> a tool call NAME whose arguments stream
 *                                            as CALL_ARGS (another recipient is a call
 *                                            of that name as written)
 *   channel final, commentary, or other   -> LM_TC_TEXT
 * Bodies pass through byte for byte. Output that does not start like a header (the
 * model ignored the format) is text from there on, nothing lost. A call's argument
 * fragments concatenate to its JSON object as the model wrote it; when output ends
 * inside it (max_tokens), open strings, arrays and objects are closed, and a body that
 * is not a JSON object becomes {"arguments": "BODY"}. A header cut off by the end of
 * output is dropped unless it holds no markup at all (then it is text). */
#ifndef LAZYMOE_HARMONY_H
#define LAZYMOE_HARMONY_H

#include "text/toolcall.h"

typedef struct lm_harmony_parser lm_harmony_parser;

int lm_harmony_parser_create(lm_harmony_parser **out, lm_tc_event_fn fn, void *ctx, char *err);
/* Feeds generated text (special tokens decoded as their text, e.g. "<|channel|>"). A
 * possible start of a marker is held back until it is decided. */
int lm_harmony_parser_feed(lm_harmony_parser *p, const char *piece, size_t len, char *err);
/* End of generation: ends the message in progress (closing a call). */
int lm_harmony_parser_finish(lm_harmony_parser *p, char *err);
int lm_harmony_parser_calls(const lm_harmony_parser *p);
void lm_harmony_parser_free(lm_harmony_parser *p);

/* 1 when a chat template renders harmony (it writes "<|channel|>"). */
int lm_harmony_template(const char *template_source);

#endif

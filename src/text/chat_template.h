/* Chat templates as transformers applies them.
 *
 * Loading: `chat_template.jinja` in the model directory, else `chat_template` in
 * tokenizer_config.json (a string, or a list of {name, template}: "tool_use" is
 * picked when tools are given and it exists, otherwise "default"). Neither gives
 * the error "no chat template".
 *
 * Rendering builds the variables transformers passes: messages, tools, documents,
 * add_generation_prompt, the special tokens of tokenizer_config.json (bos_token,
 * eos_token, pad_token, unk_token, ...; AddedToken objects give their content;
 * null ones are left undefined) and caller kwargs such as enable_thinking or
 * reasoning_effort, which may override the special tokens.
 *
 * Ownership: the loaded template owns its parsed templates and is immutable after
 * loading, so concurrent renders are safe. Request fields are borrowed.
 */
#ifndef LAZYMOE_CHAT_TEMPLATE_H
#define LAZYMOE_CHAT_TEMPLATE_H

#include "text/jinja.h"

#include <jansson.h>
#include <stdbool.h>

typedef struct lm_chat_template lm_chat_template;

typedef struct {
    const json_t *messages;    /* array, required */
    const json_t *tools;       /* array or NULL (the template sees None) */
    const json_t *documents;   /* array or NULL */
    bool add_generation_prompt;
    const json_t *kwargs;      /* object or NULL: extra template variables */
} lm_chat_request;

/* Loads the chat template of a model directory. */
int lm_chat_template_load(const char *model_dir, lm_chat_template **out, char *err);

/* Builds one from template source and a parsed tokenizer_config (may be NULL),
 * for callers that already hold them. */
int lm_chat_template_from_source(const char *src, size_t len, const json_t *tokenizer_config,
                                 lm_chat_template **out, char *err);

/* Renders a request. *out is malloc'd, NUL-terminated, *out_len bytes; caller frees. */
int lm_chat_template_render(const lm_chat_template *t, const lm_chat_request *req,
                            const lm_jinja_options *opts, char **out, size_t *out_len, char *err);

void lm_chat_template_free(lm_chat_template *t);

#endif

/* Sandboxed Jinja2 interpreter for chat templates.
 *
 * Implements the subset of Jinja2 that real chat templates use (Qwen3, gpt-oss,
 * DeepSeek, Llama 3.x, ...) with the options transformers renders them with:
 * trim_blocks, lstrip_blocks and the loop-controls extension; `tojson`,
 * `raise_exception` and `strftime_now` behave as in transformers. Python jinja2
 * is the reference: values print as Python prints them (`None`, `True`, `[1, 'a']`).
 *
 * Sandbox: templates cannot reach files, the environment or the OS. Rendering is
 * bounded in loop iterations, call depth, output size, memory and wall-clock time; exceeding a
 * limit is an ordinary error. Every failure names the template line.
 *
 * Ownership: a parsed template owns its syntax tree and is immutable, so one
 * template may be rendered by several threads at once. Rendering allocates from
 * a private arena that is freed before lm_jinja_render returns; the output
 * string is malloc'd and belongs to the caller.
 */
#ifndef LAZYMOE_JINJA_H
#define LAZYMOE_JINJA_H

#include "common/error.h" /* LM_ERR_LEN: size of the err buffers below */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lm_jinja_template lm_jinja_template;

/* Limits and environment for one render. Zero fields take the defaults. */
typedef struct {
    long max_loop_iterations;   /* total over the render; default 10,000,000 (gpt-oss scans
                                   later messages per tool call: O(n^2) in long sessions) */
    int max_call_depth;         /* macro/call nesting; default 64 */
    size_t max_output_bytes;    /* default 64 MiB */
    size_t max_memory_bytes;    /* render arena; default 512 MiB */
    int64_t now_unix;           /* strftime_now clock; 0 = the real clock */
    double max_seconds;         /* wall-clock budget of one render; default 10 s, so a
                                   template that loops within its other limits still ends */
} lm_jinja_options;

/* Parses template source (need not be NUL-terminated). On success *out owns
 * the template; free it with lm_jinja_free. */
int lm_jinja_parse(const char *src, size_t len, lm_jinja_template **out, char *err);

void lm_jinja_free(lm_jinja_template *tmpl);

/* Why a render failed (lm_jinja_render's return value): the callers of a chat
 * template answer the first as their own fault, the other two as the input's. */
enum {
    LM_JINJA_ERROR = -1,  /* an error in the template (or data it cannot handle) */
    LM_JINJA_RAISED = -2, /* the template refused its input with raise_exception() */
    LM_JINJA_LIMIT = -3,  /* a render limit: iterations, time, memory, output, call depth */
};

/* Renders with the variables of `context` (a JSON object, borrowed; may be
 * NULL). opts may be NULL for defaults. On success *out is a NUL-terminated
 * malloc'd string of *out_len bytes that the caller frees; on failure one of the
 * LM_JINJA_* values above. */
int lm_jinja_render(const lm_jinja_template *tmpl, const json_t *context,
                    const lm_jinja_options *opts, char **out, size_t *out_len, char *err);

#endif

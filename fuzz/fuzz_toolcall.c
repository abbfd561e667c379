/* libFuzzer target: the tool-call / reasoning parser (text/toolcall.h) on model output in
 * every format it reads: Hermes JSON, Qwen3-Coder XML, GLM-4.5 arg_key/arg_value, MiniMax-M2
 * invoke/parameter, <think> reasoning. The first byte picks the piece length the rest is fed
 * in, whether the output starts inside <think>, and whether the request had tools (whose
 * schema types decide how XML values become JSON). Every input must parse without a crash,
 * leak or hang; every call must be named, ended, and carry arguments that are one JSON
 * object; a stopped feed must not be resumed. */
#include "text/toolcall.h"

#include "common/error.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char TOOLS[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\"},\"metric\":{\"type\":\"boolean\"},"
    "\"opts\":{\"type\":\"object\"},\"tags\":{\"type\":\"array\"},\"ratio\":{\"type\":[\"number\",\"null\"]}}}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"write_file\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"path\":{\"type\":\"string\"},\"content\":{\"type\":\"string\"}}}}}]";

typedef struct {
    int begins, ends, open;
    char *args;
    size_t args_n, args_cap;
} state;

static int on_event(void *ctx, const lm_tc_event *ev) {
    state *s = ctx;
    switch (ev->kind) {
    case LM_TC_CALL_BEGIN:
        if (!ev->name || !ev->id || s->open) abort();
        s->begins++;
        s->open = 1;
        s->args_n = 0;
        break;
    case LM_TC_CALL_ARGS:
        if (!s->open) abort();
        if (s->args_n + ev->len > s->args_cap) {
            s->args_cap = (s->args_n + ev->len) * 2;
            if (!(s->args = realloc(s->args, s->args_cap))) abort();
        }
        memcpy(s->args + s->args_n, ev->data, ev->len);
        s->args_n += ev->len;
        break;
    case LM_TC_CALL_END: {
        if (!s->open) abort();
        json_error_t e;
        json_t *j = json_loadb(s->args ? s->args : "", s->args_n, 0, &e);
        if (!json_is_object(j)) { fprintf(stderr, "args: [%.*s] %s\n", (int)s->args_n, s->args ? s->args : "", e.text); abort(); } /* a call's fragments are one JSON object */
        json_decref(j);
        s->ends++;
        s->open = 0;
        break;
    }
    case LM_TC_TEXT:
    case LM_TC_REASONING:
        if (!ev->len) abort(); /* no empty fragments */
        break;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t step = (size_t)(data[0] & 15) + 1;
    int in_think = (data[0] >> 4) & 1, tools = !((data[0] >> 5) & 1);
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    char err[LM_ERR_LEN];
    state s = {0};
    lm_toolcall_parser *p;
    if (lm_toolcall_parser_create(&p, tools ? TOOLS : NULL, in_think, on_event, &s, err) != 0) {
        fprintf(stderr, "create failed: %s\n", err);
        abort();
    }
    for (size_t at = 0; at < n; at += step)
        if (lm_toolcall_parser_feed(p, text + at, at + step < n ? step : n - at, err) != 0) {
            fprintf(stderr, "feed failed at %zu: %s\n", at, err);
            abort();
        }
    if (lm_toolcall_parser_finish(p, err) != 0) abort();
    if (s.open || s.begins != s.ends || lm_toolcall_parser_calls(p) != s.ends) abort();
    lm_toolcall_parser_free(p);
    free(s.args);
    return 0;
}

/* libFuzzer target: the harmony parser (text/harmony.h). The first byte picks the
 * length of the pieces the rest is fed in; every input must parse without a crash,
 * leak or hang, every call event must name the call, and every begun call must end. */
#include "text/harmony.h"

#include "common/buf.h"
#include "common/error.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    int begins, ends;
} counts;

static int on_event(void *ctx, const lm_tc_event *ev) {
    counts *c = ctx;
    if (ev->kind == LM_TC_CALL_BEGIN) {
        if (!ev->name || !ev->id) abort();
        c->begins++;
    }
    if (ev->kind == LM_TC_CALL_END) c->ends++;
    if (c->ends > c->begins) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t step = (size_t)data[0] % 17 + 1;
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    char err[LM_ERR_LEN];
    counts c = {0, 0};
    lm_harmony_parser *p;
    if (lm_harmony_parser_create(&p, on_event, &c, err) != 0) return 0;
    for (size_t at = 0; at < n; at += step)
        if (lm_harmony_parser_feed(p, text + at, at + step < n ? step : n - at, err) != 0) {
            fprintf(stderr, "feed failed at %zu: %s\n", at, err);
            abort();
        }
    if (lm_harmony_parser_finish(p, err) != 0) abort();
    if (c.begins != c.ends || lm_harmony_parser_calls(p) != c.ends) abort();
    lm_harmony_parser_free(p);
    return 0;
}

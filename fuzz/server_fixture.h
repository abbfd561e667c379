/* What the server's fuzz targets share: the server fixture model (tests/fixtures/server,
 * Qwen3-Coder's chat template), opened once, and the path behind a request that parses:
 * render it, tokenize it, derive its sampling. Included by one target each. */
#ifndef LAZYMOE_FUZZ_SERVER_FIXTURE_H
#define LAZYMOE_FUZZ_SERVER_FIXTURE_H

#include "lazymoe.h"
#include "server/request.h"

#include <stdio.h>
#include <stdlib.h>

static lazymoe_model *model; /* NULL: only the parsers are fuzzed */

/* Run from the repository root; without the fixture, says so on stderr and goes on. */
static void open_server_fixture(const char *target) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.max_context = 4096;
    o.no_warm_start = 1;
    o.n_threads = 1;
    char err[512];
    if (lazymoe_model_open(&model, "tests/fixtures/server", &o, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s: fuzzing the parsers only\n", target, err);
        model = NULL;
    }
}

/* Renders and tokenizes a parsed request, derives its sampling, and frees it. A
 * failure must be a client's (400: refused by the template or not tokenizable; 413:
 * past a render limit) or the model template's (500); anything else aborts. */
static void build_and_free(srv_chat *c) {
    if (model) {
        char *prompt = NULL;
        int32_t *ids = NULL;
        size_t len = 0;
        int n = 0;
        srv_error e;
        if (srv_build_prompt(model, c, 1 << 16, &prompt, &len, &ids, &n, &e) == 0) {
            lazymoe_sampling s;
            srv_chat_sampling(c, model, &s);
            free(prompt);
            free(ids);
        } else if (e.status != 400 && e.status != 413 && e.status != 500) {
            abort();
        }
    }
    srv_chat_free(c);
}

#endif

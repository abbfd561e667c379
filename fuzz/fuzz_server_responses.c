/* libFuzzer target: the OpenAI Responses API request parser (POST /v1/responses) and
 * the path behind it. Every input is parsed as a Responses body; what parses is
 * rendered through the server fixture's chat template (Qwen3-Coder) and tokenized,
 * then the sampling is derived. Malformed and hostile JSON must give a 4xx error
 * that says why (a 500 only for out of memory), never a crash, a leak or undefined
 * behaviour. Run from the repository root (the model is tests/fixtures/server;
 * without it only the parser is fuzzed). */
#include "lazymoe.h"
#include "server/request.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static lazymoe_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.max_context = 4096;
    o.no_warm_start = 1;
    o.n_threads = 1;
    char err[512];
    if (lazymoe_model_open(&model, "tests/fixtures/server", &o, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_server_responses: %s: fuzzing the parser only\n", err);
        model = NULL;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    srv_chat c;
    srv_error e;
    if (srv_parse_responses((const char *)data, size, &c, &e) != 0) {
        if (!e.message[0] || (e.status != 500 && (e.status < 400 || e.status > 499))) abort();
        return 0;
    }
    if (c.api != SRV_RESPONSES || !c.messages) abort();
    if (model) {
        char *prompt = NULL;
        int32_t *ids = NULL;
        size_t len = 0;
        int n = 0;
        if (srv_build_prompt(model, &c, 1 << 16, &prompt, &len, &ids, &n, &e) == 0) {
            lazymoe_sampling s;
            srv_chat_sampling(&c, model, &s);
            free(prompt);
            free(ids);
        } else if (e.status != 400 && e.status != 500) {
            abort();
        }
    }
    srv_chat_free(&c);
    return 0;
}

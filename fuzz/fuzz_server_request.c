/* libFuzzer target: the server's request -> prompt path. Every input is parsed as an
 * OpenAI chat completions body and as an Anthropic messages body; what parses is
 * rendered through the server fixture's chat template (Qwen3-Coder) and tokenized,
 * then the sampling is derived. Malformed and hostile JSON must give an error, never
 * a crash, a leak or undefined behaviour. Run from the repository root (the model is
 * tests/fixtures/server; without it only the parsers are fuzzed). */
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
        fprintf(stderr, "fuzz_server_request: %s: fuzzing the parsers only\n", err);
        model = NULL;
    }
    return 0;
}

static void one(srv_api api, const char *body, size_t size) {
    srv_chat c;
    srv_error e;
    int rc = api == SRV_ANTHROPIC ? srv_parse_anthropic(body, size, &c, &e) : srv_parse_openai(body, size, &c, &e);
    if (rc != 0) {
        if (e.status < 400 || e.status > 599 || !e.message[0]) abort(); /* every failure says why */
        return;
    }
    if (model) {
        char *prompt = NULL;
        int32_t *ids = NULL;
        int n = 0;
        if (srv_build_prompt(model, &c, 1 << 16, &prompt, NULL, &ids, &n, &e) == 0) {
            lazymoe_sampling s;
            srv_chat_sampling(&c, model, &s);
            free(prompt);
            free(ids);
        } else if (e.status != 400 && e.status != 500) {
            abort();
        }
    }
    srv_chat_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    one(SRV_OPENAI, (const char *)data, size);
    one(SRV_ANTHROPIC, (const char *)data, size);
    return 0;
}

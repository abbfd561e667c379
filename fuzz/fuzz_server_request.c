/* libFuzzer target: the server's request -> prompt path. Every input is parsed as an
 * OpenAI chat completions body and as an Anthropic messages body; what parses is
 * rendered through the server fixture's chat template (Qwen3-Coder) and tokenized,
 * then the sampling is derived. Malformed and hostile JSON must give an error, never
 * a crash, a leak or undefined behaviour. Run from the repository root (the model is
 * tests/fixtures/server; without it only the parsers are fuzzed). */
#include "server_fixture.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    open_server_fixture("fuzz_server_request");
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
    build_and_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    one(SRV_OPENAI, (const char *)data, size);
    one(SRV_ANTHROPIC, (const char *)data, size);
    return 0;
}

/* libFuzzer target: the OpenAI Responses API request parser (POST /v1/responses) and
 * the path behind it. Every input is parsed as a Responses body; what parses is
 * rendered through the server fixture's chat template (Qwen3-Coder) and tokenized,
 * then the sampling is derived. Malformed and hostile JSON must give a 4xx error
 * that says why (a 500 only for out of memory), never a crash, a leak or undefined
 * behaviour. Run from the repository root (the model is tests/fixtures/server;
 * without it only the parser is fuzzed). */
#include "server_fixture.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    open_server_fixture("fuzz_server_responses");
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
    build_and_free(&c);
    return 0;
}

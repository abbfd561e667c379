/* Generating text with lazymoe: the smallest complete program.
 *
 *   generate [MODEL_DIR] [PROMPT]
 *
 * MODEL_DIR defaults to $LAZYMOE_EXAMPLE_MODEL, else to the tiny test model of the
 * source tree (random weights: the text is gibberish, but every step runs). It
 * streams one answer as it is generated, then asks the same session a follow-up
 * question in one shot: the session keeps the conversation, so only the new turn
 * is evaluated. Uses only the public header.
 */
#include <lazymoe.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef LAZYMOE_SOURCE_DIR
#define LAZYMOE_SOURCE_DIR "."
#endif

typedef struct {
    char text[4096]; /* the answer so far, for the conversation history */
    size_t len;
} answer_buf;

static int print_piece(void *ctx, const char *piece, size_t len) {
    answer_buf *a = ctx;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    if (a->len + len < sizeof a->text) {
        memcpy(a->text + a->len, piece, len);
        a->len += len;
        a->text[a->len] = 0;
    }
    return 0; /* non-zero would stop the answer here */
}

/* Appends s as a JSON string literal. */
static void json_str(char *out, size_t cap, const char *s) {
    size_t n = strlen(out);
    if (n + 2 < cap) out[n++] = '"';
    for (; *s && n + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') n += (size_t)snprintf(out + n, cap - n, "\\%c", c);
        else if (c < 0x20) n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        else out[n++] = (char)c;
    }
    if (n + 1 < cap) out[n++] = '"';
    out[n] = 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : getenv("LAZYMOE_EXAMPLE_MODEL");
    if (!dir || !*dir) dir = LAZYMOE_SOURCE_DIR "/tests/fixtures/textgen";
    const char *question = argc > 2 ? argv[2] : "Name three colours.";
    char err[512], path[4096];
    lazymoe_model *model = NULL;
    lazymoe_session *session = NULL;
    char *prompt = NULL, *answer = NULL;
    int rc = 1;

    if (lazymoe_resolve_model(dir, path, sizeof path, err, sizeof err) != 0 ||
        lazymoe_model_open(&model, path, NULL, err, sizeof err) != 0 ||
        lazymoe_session_create(&session, model, err, sizeof err) != 0)
        goto fail;
    printf("ok open %s\n", path);

    /* 1. A chat turn, streamed. Messages are JSON, as an HTTP server receives them. */
    char messages[16384] = "[{\"role\": \"user\", \"content\": ";
    json_str(messages, sizeof messages, question);
    strcat(messages, "}]");
    if (lazymoe_chat_format(model, messages, NULL, 1, "{\"enable_thinking\": false}", &prompt, err, sizeof err) != 0)
        goto fail;
    lazymoe_gen_params params;
    lazymoe_gen_params_init(&params, model); /* sampling defaults of generation_config.json */
    params.max_tokens = 32;
    params.add_special = 0; /* the template wrote the special tokens */
    params.sampling.seed = 1;
    lazymoe_gen_stats st;
    static answer_buf first;
    if (lazymoe_generate_stream(session, prompt, &params, print_piece, &first, &st, err, sizeof err) != 0) goto fail;
    printf("\nok stream: %d prompt tokens, %d generated, %.1f tok/s decode\n", st.prompt_tokens,
           st.generated_tokens, st.decode_tok_per_s);

    /* 2. A follow-up in the same session, collected in one piece of text. The whole
     * conversation is sent again; the part the session already holds is reused. */
    messages[strlen(messages) - 1] = 0; /* drop the closing ] */
    strcat(messages, ", {\"role\": \"assistant\", \"content\": ");
    json_str(messages, sizeof messages, first.text);
    strcat(messages, "}, {\"role\": \"user\", \"content\": \"And three more?\"}]");
    lazymoe_free(prompt);
    prompt = NULL;
    if (lazymoe_chat_format(model, messages, NULL, 1, "{\"enable_thinking\": false}", &prompt, err, sizeof err) != 0)
        goto fail;
    const char *stops[] = {"\n\n"};
    params.stop = stops;
    params.n_stop = 1;
    if (lazymoe_generate(session, prompt, &params, &answer, &st, err, sizeof err) != 0) goto fail;
    printf("%s\nok oneshot: %d of %d prompt tokens reused from the session\n", answer, st.cached_tokens,
           st.prompt_tokens);
    if (st.cached_tokens > 0) printf("ok prefix reuse\n");
    else printf("FAIL prefix reuse: nothing reused\n");
    rc = st.cached_tokens > 0 ? 0 : 1;
    goto done;
fail:
    printf("FAIL generate: %s\n", err);
done:
    lazymoe_free(prompt);
    lazymoe_free(answer);
    lazymoe_session_free(session);
    lazymoe_model_close(model);
    return rc;
}

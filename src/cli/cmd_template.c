/* `lazymoe template DIR --jsonl IN.jsonl [--now UNIX_SECONDS]`
 *
 * Renders a model's chat template for each input line
 *   {"id", "messages", "tools", "add_generation_prompt", "extra"}
 * (extra = template kwargs such as enable_thinking; tools may be absent/null) and
 * prints one line per input: {"id": .., "text": ..} or {"id": .., "error": ..}.
 * IN.jsonl may be "-" for stdin. --now fixes strftime_now's clock (tests); the
 * SOURCE_DATE_EPOCH environment variable does the same.
 */
#include "cli/commands.h"
#include "common/error.h"
#include "text/chat_template.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr, "usage: lazymoe template MODEL_DIR --jsonl IN.jsonl|- [--now UNIX_SECONDS]\n");
}

static void print_result(json_t *id, const char *key, json_t *value) {
    json_t *o = json_object();
    json_object_set(o, "id", id ? id : json_null());
    json_object_set_new(o, key, value);
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    }
    json_decref(o);
}

static void render_line(const lm_chat_template *t, const char *line, const lm_jinja_options *opts) {
    json_error_t jerr;
    json_t *req = json_loads(line, 0, &jerr);
    if (!req || !json_is_object(req)) {
        char msg[300];
        snprintf(msg, sizeof msg, "bad input line: %s", req ? "not an object" : jerr.text);
        print_result(NULL, "error", json_string(msg));
        json_decref(req);
        return;
    }
    json_t *id = json_object_get(req, "id");
    json_t *agp = json_object_get(req, "add_generation_prompt");
    lm_chat_request r = {
        .messages = json_object_get(req, "messages"),
        .tools = json_object_get(req, "tools"),
        .documents = json_object_get(req, "documents"),
        .add_generation_prompt = json_is_true(agp),
        .kwargs = json_object_get(req, "extra"),
    };
    char err[LM_ERR_LEN] = "";
    char *text = NULL;
    size_t len = 0;
    if (lm_chat_template_render(t, &r, opts, &text, &len, err) == 0) {
        json_t *s = json_stringn(text, len);
        if (s) print_result(id, "text", s);
        else print_result(id, "error", json_string("rendered text is not valid UTF-8"));
        free(text);
    } else {
        json_t *s = json_string(err);
        print_result(id, "error", s ? s : json_string("render failed"));
    }
    json_decref(req);
}

int cmd_template(int argc, char **argv) {
    const char *dir = NULL, *input = NULL;
    lm_jinja_options opts = {0};
    const char *epoch = getenv("SOURCE_DATE_EPOCH");
    if (epoch && *epoch) opts.now_unix = strtoll(epoch, NULL, 10);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--jsonl") == 0 && i + 1 < argc) input = argv[++i];
        else if (strcmp(argv[i], "--now") == 0 && i + 1 < argc) opts.now_unix = strtoll(argv[++i], NULL, 10);
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else { usage(); return 2; }
    }
    if (!dir || !input) { usage(); return 2; }
    char err[LM_ERR_LEN] = "";
    lm_chat_template *t = NULL;
    if (lm_chat_template_load(dir, &t, err)) {
        fprintf(stderr, "lazymoe template: %s\n", err);
        return 1;
    }
    FILE *in = strcmp(input, "-") == 0 ? stdin : fopen(input, "r");
    if (!in) {
        fprintf(stderr, "lazymoe template: cannot open %s\n", input);
        lm_chat_template_free(t);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        render_line(t, line, &opts);
    }
    free(line);
    if (in != stdin) fclose(in);
    lm_chat_template_free(t);
    return fflush(stdout) == 0 ? 0 : 1;
}

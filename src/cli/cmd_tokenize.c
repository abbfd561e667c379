/* `lazymoe tokenize`: run the Hugging Face tokenizer from the command line.
 *
 *   lazymoe tokenize DIR --jsonl IN.jsonl     {"id":..,"text":".."} -> {"id":..,"ids":[..]}
 *   lazymoe tokenize DIR --decode --jsonl IN  {"id":..,"ids":[..]}  -> {"id":..,"text":".."}
 *   lazymoe tokenize DIR --text "hello"       prints [ids]
 *
 * DIR is a model directory or a tokenizer.json path; IN may be "-" for stdin. Encoding adds
 * the post-processor's special tokens like transformers' `tokenizer.encode(text)` unless
 * --no-special is given. Decoding follows transformers' `decode(ids)`: clean-up of
 * tokenization spaces as tokenizer_config.json says (override with --cleanup/--no-cleanup),
 * special tokens kept unless --skip-special. A malformed input line produces
 * {"id":..,"error":".."} and processing continues; the exit status is non-zero only for
 * unusable arguments or files. The "id" is echoed as given (any JSON value; null if absent).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "text/tokenizer.h"

static void usage(void) {
    fprintf(stderr,
            "usage: lazymoe tokenize DIR|tokenizer.json (--jsonl FILE|- | --text TEXT)\n"
            "         [--no-special] [--decode] [--skip-special] [--cleanup|--no-cleanup]\n");
}

static void print_json(FILE *out, json_t *v) {
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    fputs(s ? s : "null", out);
    free(s);
}

static void print_error_line(FILE *out, json_t *id, const char *msg) {
    fputs("{\"id\":", out);
    print_json(out, id);
    json_t *m = json_string(msg);
    fputs(",\"error\":", out);
    print_json(out, m ? m : json_null());
    json_decref(m);
    fputs("}\n", out);
}

static void print_ids(FILE *out, const int32_t *ids, size_t n) {
    fputc('[', out);
    for (size_t i = 0; i < n; i++) fprintf(out, i ? ",%d" : "%d", ids[i]);
    fputc(']', out);
}

/* Handles one JSONL line; returns 0 (errors are reported in-band). */
static void process_line(lm_tokenizer *tok, const char *line, size_t len, int decode,
                         int add_special, int decode_flags, FILE *out) {
    char err[LM_ERR_LEN] = "";
    json_error_t je;
    json_t *obj = json_loadb(line, len, JSON_ALLOW_NUL, &je);
    json_t *id = json_object_get(obj, "id");
    if (!id) id = json_null();
    if (!json_is_object(obj)) {
        snprintf(err, sizeof err, "bad JSON line: %s", obj ? "expected an object" : je.text);
        print_error_line(out, json_null(), err);
        json_decref(obj);
        return;
    }
    if (!decode) {
        json_t *text = json_object_get(obj, "text");
        int32_t *ids = NULL;
        size_t n = 0;
        if (!json_is_string(text)) print_error_line(out, id, "\"text\" must be a string");
        else if (lm_tokenizer_encode(tok, json_string_value(text), json_string_length(text), add_special, &ids, &n, err))
            print_error_line(out, id, err);
        else {
            fputs("{\"id\":", out);
            print_json(out, id);
            fputs(",\"ids\":", out);
            print_ids(out, ids, n);
            fputs("}\n", out);
        }
        free(ids);
    } else {
        json_t *arr = json_object_get(obj, "ids");
        size_t n = json_array_size(arr);
        int32_t *ids = malloc((n + 1) * sizeof *ids);
        int ok = json_is_array(arr) && ids;
        for (size_t i = 0; ok && i < n; i++) {
            json_t *v = json_array_get(arr, i);
            ok = json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= INT32_MAX;
            if (ok) ids[i] = (int32_t)json_integer_value(v);
        }
        char *bytes = NULL, *text = NULL;
        size_t blen, tlen;
        if (!ok) print_error_line(out, id, "\"ids\" must be an array of non-negative integers");
        else if (lm_tokenizer_decode(tok, ids, n, decode_flags, &bytes, &blen, err) ||
                 lm_text_to_valid_utf8(bytes, blen, &text, &tlen, err))
            print_error_line(out, id, err);
        else {
            json_t *s = json_stringn(text, tlen);
            fputs("{\"id\":", out);
            print_json(out, id);
            fputs(",\"text\":", out);
            print_json(out, s ? s : json_null());
            fputs("}\n", out);
            json_decref(s);
        }
        free(ids);
        free(bytes);
        free(text);
    }
    json_decref(obj);
}

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *jsonl = NULL, *text = NULL;
    int add_special = 1, decode = 0, skip_special = 0, cleanup = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--jsonl") && i + 1 < argc) jsonl = argv[++i];
        else if (!strcmp(a, "--text") && i + 1 < argc) text = argv[++i];
        else if (!strcmp(a, "--no-special")) add_special = 0;
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--skip-special")) skip_special = 1;
        else if (!strcmp(a, "--cleanup")) cleanup = 1;
        else if (!strcmp(a, "--no-cleanup")) cleanup = 0;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        else if (a[0] == '-' && a[1]) { fprintf(stderr, "lazymoe tokenize: unknown option %s\n", a); usage(); return 2; }
        else if (!dir) dir = a;
        else { fprintf(stderr, "lazymoe tokenize: unexpected argument %s\n", a); usage(); return 2; }
    }
    if (!dir || (!jsonl && !text) || (jsonl && text)) { usage(); return 2; }
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok;
    if (lm_tokenizer_load(dir, &tok, err)) { fprintf(stderr, "lazymoe tokenize: %s\n", err); return 1; }
    int decode_flags = (skip_special ? LM_DECODE_SKIP_SPECIAL : 0) |
                       ((cleanup < 0 ? lm_tokenizer_default_cleanup(tok) : cleanup) ? LM_DECODE_CLEANUP : 0);
    int rc = 0;
    if (text) {
        int32_t *ids;
        size_t n;
        if (lm_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n, err)) {
            fprintf(stderr, "lazymoe tokenize: %s\n", err);
            rc = 1;
        } else {
            print_ids(stdout, ids, n);
            fputc('\n', stdout);
            free(ids);
        }
    } else {
        FILE *in = strcmp(jsonl, "-") ? fopen(jsonl, "rb") : stdin;
        if (!in) { fprintf(stderr, "lazymoe tokenize: cannot open %s\n", jsonl); lm_tokenizer_free(tok); return 1; }
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, in)) >= 0) {
            size_t len = (size_t)n;
            while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
            if (!len) continue;
            process_line(tok, line, len, decode, add_special, decode_flags, stdout);
        }
        free(line);
        if (in != stdin) fclose(in);
    }
    lm_tokenizer_free(tok);
    return rc;
}

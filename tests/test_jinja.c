/* Tests of the Jinja interpreter (src/text/jinja*.c) and chat template loading.
 *
 * 1. Table-driven cases from tests/fixtures/templates/unit_cases.json: one
 *    template per construct, expected output rendered by Python jinja2 configured
 *    as transformers does (tools/make_jinja_unit_cases.py), or "must fail".
 * 2. Hand-written checks: sandbox limits, error line numbers, API edges, chat
 *    template loading, and a mutation fuzz over real chat templates that must
 *    neither crash nor leak (ASan/LSan run this program).
 */
#include "harness.h"
#include "text/chat_template.h"
#include "text/jinja.h"

#include <jansson.h>
#include <stdint.h>
#include <unistd.h>
#include <time.h>

#define FIXTURES "tests/fixtures/templates"
#define NOW 1749988800 /* as in tools/make_template_fixtures.py */
#define CHECK_ERR(needle) CHECKF(strstr(err, needle) != NULL, "expected an error containing \"%s\", got \"%s\"", needle, err)

static int render(const char *src, const json_t *ctx, const lm_jinja_options *opts, char **out, char *err) {
    lm_jinja_template *t = NULL;
    *out = NULL;
    if (lm_jinja_parse(src, strlen(src), &t, err)) return -1;
    int rc = lm_jinja_render(t, ctx, opts, out, NULL, err);
    lm_jinja_free(t);
    return rc;
}

/* ---- table-driven cases ---------------------------------------------------------- */
static json_t *g_cases;

static void run_table(void) {
    json_error_t jerr;
    g_cases = json_load_file(FIXTURES "/unit_cases.json", 0, &jerr);
    th_case_name = "unit_cases.json loads";
    th_case_failed = 0;
    if (!g_cases) {
        printf("FAIL %s: %s\n", th_case_name, jerr.text);
        th_failed_cases++;
        return;
    }
    printf("ok %s\n", th_case_name);
    json_t *ctx = json_object_get(g_cases, "context");
    lm_jinja_options opts = {.now_unix = NOW};
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(g_cases, "cases"), i, c) {
        static char name[160];
        snprintf(name, sizeof name, "jinja %s", json_string_value(json_object_get(c, "name")));
        th_case_name = name;
        th_case_failed = 0;
        const char *src = json_string_value(json_object_get(c, "template"));
        const char *want = json_string_value(json_object_get(c, "expected"));
        char err[LM_ERR_LEN] = "";
        char *out = NULL;
        int rc = render(src, ctx, &opts, &out, err);
        if (want) {
            CHECKF(rc == 0, "render failed: %s", err);
            if (rc == 0) CHECKF(strcmp(out, want) == 0, "\n  want: %s\n  got:  %s", want, out);
        } else {
            CHECKF(rc != 0, "expected an error (%s), got \"%s\"", json_string_value(json_object_get(c, "error")), out ? out : "");
            CHECKF(rc == 0 || strlen(err) > 0, "empty error message");
        }
        free(out);
        if (th_case_failed) th_failed_cases++;
        else printf("ok %s\n", name);
    }
    json_decref(g_cases);
}

/* ---- hand-written cases -------------------------------------------------------------- */
static void test_error_names_line(void) {
    char err[LM_ERR_LEN], *out;
    CHECK(render("a\nb\n{{ x.y }}", NULL, NULL, &out, err) != 0);
    CHECK_ERR("line 3");
    CHECK_ERR("'x' is undefined");
    CHECK(render("{% if true %}\n\n{% for %}", NULL, NULL, &out, err) != 0);
    CHECK_ERR("line 3");
    CHECK(render("{% macro m() %}\n{{ raise_exception('inside') }}{% endmacro %}\n\n{{ m() }}", NULL, NULL, &out, err) != 0);
    CHECK_ERR("line 2");
    CHECK_ERR("inside");
}

/* break/continue in a {% call %} body ran inside the caller() macro, where they
 * escaped the macro's capture and left caller()'s result unset (garbage output). */
static void test_loop_control_in_call_block(void) {
    char err[LM_ERR_LEN], *out;
    CHECK(render("{% macro m() %}[{{ caller() }}]{% endmacro %}"
                 "{% for x in [1, 2] %}{% call m() %}a{% break %}b{% endcall %}{% endfor %}",
                 NULL, NULL, &out, err) != 0);
    CHECK_ERR("'break' outside of a loop");
    CHECK(render("{% for x in [1, 2] %}{% macro m() %}{{ caller() }}{% endmacro %}"
                 "{% call m() %}{% continue %}{% endcall %}{% endfor %}",
                 NULL, NULL, &out, err) != 0);
    CHECK_ERR("'continue' outside of a loop");
    /* a loop inside the call body may still use them */
    CHECK(render("{% macro m() %}[{{ caller() }}]{% endmacro %}{% for x in [1, 2] %}{% call m() %}"
                 "{% for y in [3, 4] %}{{ y }}{% break %}{% endfor %}{% endcall %}{% endfor %}",
                 NULL, NULL, &out, err) == 0);
    if (out) CHECK(strcmp(out, "[3][3]") == 0);
    free(out);
}

/* guards the parser's handling of `()`, `(x)` and `(x,)` */
static void test_parenthesised(void) {
    char err[LM_ERR_LEN], *out;
    CHECK(render("{{ () }} {{ (1) }} {{ (1,) }} {{ (1 + 2) * 3 }} {{ ((4)) }} {{ (1, 2)|length }}", NULL, NULL, &out, err) == 0);
    if (out) CHECKF(strcmp(out, "() 1 (1,) 9 4 2") == 0, "got \"%s\"", out);
    free(out);
    CHECK(render("{{ (1 2) }}", NULL, NULL, &out, err) != 0);
    CHECK_ERR("expected ')'");
}

/* Strings need not be valid UTF-8 (a template's own literals, strftime_now's output). One
 * that began with a continuation byte had zero characters for `length` and the list
 * allocation but one when iterated, which wrote past the list (found by fuzz_chat_template
 * on the GPU box: `{%- set a,y = strftime_now("\xb5") %}`). Every character count now
 * agrees: a character starts at offset 0 whatever the byte. */
static void test_stray_continuation_bytes(void) {
    char err[LM_ERR_LEN], *out;
    CHECK(render("{% set s = '\xb5" "ab' %}{{ s|length }}|{% for c in s %}[{{ c }}]{% endfor %}|{{ s[0] }}|{{ s[1:] }}|"
                 "{{ s|list|length }}|{{ s[-1] }}|{{ s|center(5) }}|{{ (s ~ 'c')|length }}",
                 NULL, NULL, &out, err) == 0);
    if (out) CHECKF(strcmp(out, "3|[\xb5][a][b]|\xb5" "|ab|3|b| \xb5" "ab |4") == 0, "got \"%s\"", out);
    free(out);
    CHECK(render("{% set s = '\xb5\x80' %}{{ s|length }}{% for c in s %}[{{ c }}]{% endfor %}", NULL, NULL, &out, err) == 0);
    if (out) CHECKF(strcmp(out, "1[\xb5\x80]") == 0, "got \"%s\"", out);
    free(out);
    /* the fuzzer's input itself: an error or a render, never a write out of bounds */
    static const char crash[] = "{%- set tado,y = strftime_now(\"\xb5\") %}";
    if (render(crash, NULL, NULL, &out, err) == 0) free(out);
    else CHECK(err[0] != 0);
}

static void test_loop_limit(void) {
    char err[LM_ERR_LEN], *out;
    lm_jinja_options o = {.max_loop_iterations = 1000};
    CHECK(render("{% for i in range(999) %}{% endfor %}", NULL, &o, &out, err) == 0);
    free(out);
    CHECK(render("{% for i in range(10) %}{% for j in range(200) %}{% endfor %}{% endfor %}", NULL, &o, &out, err) != 0);
    CHECK_ERR("iteration limit");
    CHECK(render("{{ range(100000000)|length }}", NULL, NULL, &out, err) != 0);
    CHECK_ERR("range");
}

static void test_recursion_limit(void) {
    char err[LM_ERR_LEN], *out;
    CHECK(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, &out, err) != 0);
    CHECK_ERR("depth");
    /* deeply nested source is refused by the parser instead of overflowing the stack */
    size_t n = 100000;
    char *src = malloc(n * 2 + 16);
    strcpy(src, "{{ ");
    memset(src + 3, '(', n);
    src[3 + n] = '1';
    memset(src + 4 + n, ')', n);
    strcpy(src + 4 + 2 * n, " }}");
    lm_jinja_template *t = NULL;
    CHECK(lm_jinja_parse(src, strlen(src), &t, err) != 0);
    CHECK_ERR("nested too deeply");
    free(src);
}

static void test_output_and_memory_limits(void) {
    char err[LM_ERR_LEN], *out;
    lm_jinja_options o = {.max_output_bytes = 1000};
    CHECK(render("{% for i in range(200) %}0123456789{% endfor %}", NULL, &o, &out, err) != 0);
    CHECK_ERR("output exceeds");
    CHECK(render("{{ 'x' * 100000000000 }}", NULL, NULL, &out, err) != 0);
    lm_jinja_options m = {.max_memory_bytes = 4 << 20};
    CHECK(render("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", NULL, &m, &out, err) != 0);
    CHECKF(strstr(err, "memory") || strstr(err, "exceeds"), "err: %s", err);
}

/* Filters and operators whose work a template sizes (issue 22): each ends quickly,
 * within the iteration limit, and a render that loops within every other limit still
 * stops at its wall-clock budget. Before the fix batch(10**12) and '' * 10**12 spun
 * for hours. */
static void test_filter_work_limits(void) {
    char err[LM_ERR_LEN], *out;
    CHECK(render("{{ [1, 2, 3]|batch(1000000000000)|list }}", NULL, NULL, &out, err) == 0);
    if (out) CHECKF(strcmp(out, "[[1, 2, 3]]") == 0, "got %s", out);
    free(out);
    CHECK(render("{{ [1, 2, 3]|batch(2, 0)|list }}", NULL, NULL, &out, err) == 0);
    if (out) CHECKF(strcmp(out, "[[1, 2], [3, 0]]") == 0, "got %s", out);
    free(out);
    CHECK(render("{{ [1]|batch(1000000000000, 'x')|list }}", NULL, NULL, &out, err) != 0);
    CHECK_ERR("iteration limit");
    CHECK(render("{{ ('' * 1000000000000)|length }} {{ ([] * 1000000000000)|length }}", NULL, NULL, &out, err) == 0);
    if (out) CHECKF(strcmp(out, "0 0") == 0, "got %s", out);
    free(out);
    lm_jinja_options few = {.max_loop_iterations = 1000};
    CHECK(render("{{ 'a'|center(5000) }}", NULL, &few, &out, err) != 0);
    CHECK_ERR("iteration limit");
    CHECK(render("{{ 'a'|center(5) }}", NULL, &few, &out, err) == 0);
    if (out) CHECKF(strcmp(out, "  a  ") == 0, "got '%s'", out);
    free(out);
    lm_jinja_options quick = {.max_seconds = 0.05};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(render("{% for i in range(3000) %}{% for j in range(3000) %}{% set x = j ~ 'a' %}{% endfor %}{% endfor %}", NULL, &quick, &out, err) != 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK_ERR("time limit");
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    CHECKF(s < 2.0, "render ran %.2f s past a 0.05 s budget", s);
}

static void test_context_from_json(void) {
    char err[LM_ERR_LEN], *out;
    json_t *ctx = json_pack("{s:[i,f,s,b,n], s:{s:i}}", "v", 1, 2.0, "x", 1, "o", "k", 3);
    CHECK(render("{{ v }} {{ v|tojson }} {{ o }}", ctx, NULL, &out, err) == 0);
    CHECKF(strcmp(out, "[1, 2.0, 'x', True, None] [1, 2.0, \"x\", true, null] {'k': 3}") == 0, "got %s", out);
    free(out);
    json_decref(ctx);
    /* empty template, NULL context */
    CHECK(render("", NULL, NULL, &out, err) == 0 && out && out[0] == 0);
    free(out);
}

static void test_template_reuse(void) {
    char err[LM_ERR_LEN];
    lm_jinja_template *t = NULL;
    const char *src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}";
    CHECK(lm_jinja_parse(src, strlen(src), &t, err) == 0);
    for (int k = 1; k <= 3; k++) {
        json_t *ctx = json_object();
        json_t *msgs = json_array();
        for (int j = 0; j < k; j++) json_array_append_new(msgs, json_object());
        json_object_set_new(ctx, "messages", msgs);
        char *out = NULL;
        size_t len = 0;
        CHECK(lm_jinja_render(t, ctx, NULL, &out, &len, err) == 0);
        CHECK(len == 1 && out[0] == '0' + k);
        free(out);
        json_decref(ctx);
    }
    lm_jinja_free(t);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) { fputs(text, f); fclose(f); }
}

static void test_chat_template_load(void) {
    char err[LM_ERR_LEN], dir[] = "/tmp/lm_jinja_test_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char cfg[256], jinja[256];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    snprintf(jinja, sizeof jinja, "%s/chat_template.jinja", dir);
    lm_chat_template *t = NULL;

    /* no template at all */
    write_file(cfg, "{\"bos_token\": \"<s>\"}");
    CHECK(lm_chat_template_load(dir, &t, err) != 0);
    CHECK_ERR("no chat template");

    /* named list: default, tool_use picked when tools are given; AddedToken content */
    write_file(cfg, "{\"bos_token\": {\"content\": \"<s>\", \"lstrip\": false}, \"eos_token\": \"</s>\", \"unk_token\": null,"
                    " \"model_max_length\": 1000000000000000019884624838656,"
                    " \"chat_template\": [{\"name\": \"default\", \"template\": \"D{{ bos_token }}{{ eos_token }}{{ unk_token is defined }}{{ tools }}\"},"
                    " {\"name\": \"tool_use\", \"template\": \"T{{ tools|length }}{{ flag }}\"}]}");
    CHECK(lm_chat_template_load(dir, &t, err) == 0);
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", "hi");
    json_t *tools = json_pack("[{s:s}]", "type", "function");
    json_t *kw = json_pack("{s:b}", "flag", 1);
    lm_chat_request req = {.messages = msgs};
    char *out = NULL;
    CHECK(t && lm_chat_template_render(t, &req, NULL, &out, NULL, err) == 0);
    CHECKF(out && strcmp(out, "D<s></s>FalseNone") == 0, "got %s", out ? out : err);
    free(out);
    req.tools = tools;
    req.kwargs = kw;
    CHECK(t && lm_chat_template_render(t, &req, NULL, &out, NULL, err) == 0);
    CHECKF(out && strcmp(out, "T1True") == 0, "got %s", out ? out : err);
    free(out);
    lm_chat_template_free(t);
    t = NULL;

    /* chat_template.jinja wins over tokenizer_config.json */
    write_file(jinja, "J{{ messages[0].content }}{% if add_generation_prompt %}!{% endif %}");
    CHECK(lm_chat_template_load(dir, &t, err) == 0);
    req = (lm_chat_request){.messages = msgs, .add_generation_prompt = true};
    CHECK(t && lm_chat_template_render(t, &req, NULL, &out, NULL, err) == 0);
    CHECKF(out && strcmp(out, "Jhi!") == 0, "got %s", out ? out : err);
    free(out);
    lm_chat_template_free(t);

    /* a template with a syntax error names the file */
    write_file(jinja, "{% if %}");
    CHECK(lm_chat_template_load(dir, &t, err) != 0);
    CHECK_ERR("chat_template.jinja");

    json_decref(msgs);
    json_decref(tools);
    json_decref(kw);
    remove(cfg);
    remove(jinja);
    rmdir(dir);
}

/* Mutations of real templates: byte flips, deletions, duplications, inserted
 * syntax. Every result must be a clean success or a clean error. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    *len = fread(buf, 1, (size_t)n, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

static void test_fuzz_mutated_templates(void) {
    static const char *const files[] = {FIXTURES "/models/gpt-oss/chat_template.jinja",
                                        FIXTURES "/models/qwen3-coder/chat_template.jinja",
                                        FIXTURES "/models/llama-3.1-instruct/chat_template.jinja"};
    static const char *const snippets[] = {"{%", "%}", "{{", "}}", "{#", "-", "(", ")", "[", "]", "'", "\"", "|", ".",
                                           " is ", " not ", " in ", "{% endfor %}", "{% endif %}", "{% else %}",
                                           "loop.", "**", "//", "\\", ",", "=", "~", "{% set x = ", "\xff", "\xc3"};
    json_error_t jerr;
    json_t *corpus_line = NULL;
    size_t clen;
    char *corpus = slurp(FIXTURES "/corpus.jsonl", &clen);
    CHECK(corpus != NULL);
    if (!corpus) return;
    /* the tools-and-tool-calls case exercises most of each template */
    for (char *line = strtok(corpus, "\n"); line; line = strtok(NULL, "\n"))
        if (strstr(line, "\"parallel-tool-calls\"")) corpus_line = json_loads(line, 0, &jerr);
    free(corpus);
    CHECK(corpus_line != NULL);
    json_t *ctx = json_object();
    json_object_set(ctx, "messages", json_object_get(corpus_line, "messages"));
    json_object_set(ctx, "tools", json_object_get(corpus_line, "tools"));
    json_object_set_new(ctx, "add_generation_prompt", json_true());
    lm_jinja_options opts = {.now_unix = NOW, .max_loop_iterations = 20000, .max_output_bytes = 1 << 20};
    int rendered = 0, failed = 0;
    for (size_t fi = 0; fi < sizeof files / sizeof files[0]; fi++) {
        size_t len;
        char *src = slurp(files[fi], &len);
        CHECK(src != NULL);
        if (!src) continue;
        char *buf = malloc(len * 2 + 64);
        for (int iter = 0; iter < 300; iter++) {
            memcpy(buf, src, len);
            size_t n = len;
            int edits = 1 + (int)(rnd() % 4);
            for (int e = 0; e < edits && n > 0; e++) {
                size_t pos = rnd() % n;
                switch (rnd() % 4) {
                case 0: buf[pos] = (char)(rnd() % 256); break;
                case 1: {  /* delete a span */
                    size_t k = 1 + rnd() % 20;
                    if (pos + k > n) k = n - pos;
                    memmove(buf + pos, buf + pos + k, n - pos - k);
                    n -= k;
                    break;
                }
                case 2: {  /* insert a snippet */
                    const char *s = snippets[rnd() % (sizeof snippets / sizeof snippets[0])];
                    size_t k = strlen(s);
                    if (n + k > len * 2 + 32) break;
                    memmove(buf + pos + k, buf + pos, n - pos);
                    memcpy(buf + pos, s, k);
                    n += k;
                    break;
                }
                default: {  /* duplicate a span */
                    size_t k = 1 + rnd() % 40;
                    if (pos + k > n) k = n - pos;
                    if (n + k > len * 2 + 32) break;
                    memmove(buf + pos + k, buf + pos, n - pos);
                    n += k;
                    break;
                }
                }
            }
            char err[LM_ERR_LEN] = "";
            lm_jinja_template *t = NULL;
            if (lm_jinja_parse(buf, n, &t, err) == 0) {
                char *out = NULL;
                if (lm_jinja_render(t, ctx, &opts, &out, NULL, err) == 0) rendered++;
                else { failed++; CHECKF(err[0] != 0, "render failed without a message"); }
                free(out);
                lm_jinja_free(t);
            } else {
                failed++;
                CHECKF(err[0] != 0, "parse failed without a message");
            }
        }
        free(buf);
        free(src);
    }
    printf("# fuzz: %d rendered, %d failed cleanly\n", rendered, failed);
    CHECK(rendered > 0 && failed > 0);
    json_decref(ctx);
    json_decref(corpus_line);
}

int main(void) {
    run_table();
    TEST_CASE("jinja errors name the template line", test_error_names_line);
    TEST_CASE("jinja break/continue in a call block", test_loop_control_in_call_block);
    TEST_CASE("jinja parenthesised expressions and tuples", test_parenthesised);
    TEST_CASE("jinja strings with stray UTF-8 continuation bytes", test_stray_continuation_bytes);
    TEST_CASE("jinja loop iteration limit", test_loop_limit);
    TEST_CASE("jinja recursion and nesting limits", test_recursion_limit);
    TEST_CASE("jinja output and memory limits", test_output_and_memory_limits);
    TEST_CASE("jinja filter work limits and time budget", test_filter_work_limits);
    TEST_CASE("jinja context from JSON", test_context_from_json);
    TEST_CASE("jinja template reused across renders", test_template_reuse);
    TEST_CASE("chat template loading", test_chat_template_load);
    TEST_CASE("jinja fuzz: mutated real templates", test_fuzz_mutated_templates);
    TEST_EXIT();
}

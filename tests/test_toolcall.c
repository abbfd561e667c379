/* Tests of the streaming tool-call / reasoning parser (src/text/toolcall.h).
 *
 * Each case renders the event stream as a string, adjacent fragments of one kind merged:
 *   T[text]  R[reasoning]  B0:name  A0[arguments JSON]  E0
 * and compares it with the expected stream. Every case is also fed byte by byte and at
 * every 2-way split; the merged stream must not change. The collector checks ids
 * ("call_" + 24 alnum, unique) and that each call's arguments parse as a JSON object. */
#include "harness.h"
#include "text/toolcall.h"
#include "common/error.h"

#include <ctype.h>
#include <stdint.h>
#include <jansson.h>

typedef struct {
    char *s;
    size_t n, cap;
    int last_kind, last_index; /* for merging adjacent fragments */
    char args[1 << 16];        /* arguments of the open call */
    size_t args_n;
    char ids[16][32];
    int n_ids;
    const char *problem; /* first structural problem seen, or NULL */
    int cancel_after;    /* > 0: return non-zero from the N-th event */
    int events;
} collector;

static void put(collector *c, const char *d, size_t n) {
    if (c->n + n + 1 > c->cap) {
        c->cap = (c->n + n + 1) * 2;
        c->s = realloc(c->s, c->cap);
    }
    memcpy(c->s + c->n, d, n);
    c->n += n;
    c->s[c->n] = 0;
}
static void puts_(collector *c, const char *s) { put(c, s, strlen(s)); }

static int on_event(void *ctx, const lm_tc_event *ev) {
    collector *c = ctx;
    char tmp[400];
    c->events++;
    int mergeable = ev->kind == LM_TC_TEXT || ev->kind == LM_TC_REASONING ||
                    ev->kind == LM_TC_CALL_ARGS;
    if (mergeable && ev->len == 0 && !c->problem) c->problem = "empty fragment emitted";
    if (mergeable && c->last_kind == (int)ev->kind && c->last_index == ev->index) {
        c->n--; /* reopen the bracket */
    } else {
        const char *tag = ev->kind == LM_TC_TEXT ? "T[" : ev->kind == LM_TC_REASONING ? "R[" : NULL;
        if (c->n) puts_(c, " ");
        if (tag) puts_(c, tag);
        if (ev->kind == LM_TC_CALL_ARGS) {
            snprintf(tmp, sizeof tmp, "A%d[", ev->index);
            puts_(c, tmp);
        }
        if (ev->kind == LM_TC_CALL_BEGIN) {
            snprintf(tmp, sizeof tmp, "B%d:%s", ev->index, ev->name);
            puts_(c, tmp);
            size_t l = strlen(ev->id);
            int ok = l == 29 && !strncmp(ev->id, "call_", 5);
            for (size_t i = 5; ok && i < l; i++) ok = isalnum((unsigned char)ev->id[i]);
            for (int i = 0; i < c->n_ids; i++) ok = ok && strcmp(c->ids[i], ev->id) != 0;
            if (!ok && !c->problem) c->problem = "bad or repeated call id";
            if (c->n_ids < 16) snprintf(c->ids[c->n_ids++], 32, "%s", ev->id);
            c->args_n = 0;
        }
        if (ev->kind == LM_TC_CALL_END) {
            snprintf(tmp, sizeof tmp, "E%d", ev->index);
            puts_(c, tmp);
            json_error_t e;
            json_t *j = json_loadb(c->args, c->args_n, 0, &e);
            if (!json_is_object(j) && !c->problem) c->problem = "call arguments are not a JSON object";
            json_decref(j);
        }
    }
    if (mergeable) {
        put(c, ev->data, ev->len);
        puts_(c, "]");
    }
    if (ev->kind == LM_TC_CALL_ARGS && c->args_n + ev->len < sizeof c->args) {
        memcpy(c->args + c->args_n, ev->data, ev->len);
        c->args_n += ev->len;
    }
    c->last_kind = mergeable ? (int)ev->kind : -1;
    c->last_index = ev->index;
    return c->cancel_after && c->events >= c->cancel_after;
}

/* Feeds text in pieces: cut[] lists the split offsets (ascending, ncut of them). */
static char *render_cuts(const char *tools, int in_think, const char *text, size_t len,
                         const size_t *cut, int ncut, int *calls, const char **problem) {
    collector c = {0};
    c.last_kind = -1;
    lm_toolcall_parser *p;
    char err[LM_ERR_LEN];
    if (lm_toolcall_parser_create(&p, tools, in_think, on_event, &c, err) != 0) {
        printf("create failed: %s\n", err);
        return strdup("(create failed)");
    }
    size_t at = 0;
    for (int i = 0; i <= ncut; i++) {
        size_t end = i < ncut ? cut[i] : len;
        if (lm_toolcall_parser_feed(p, text + at, end - at, err) != 0) c.problem = "feed failed";
        at = end;
    }
    if (lm_toolcall_parser_finish(p, err) != 0) c.problem = "finish failed";
    if (calls) *calls = lm_toolcall_parser_calls(p);
    if (problem) *problem = c.problem;
    lm_toolcall_parser_free(p);
    if (!c.s) c.s = strdup("");
    return c.s;
}

static char *render(const char *tools, int in_think, const char *text, const char **problem) {
    return render_cuts(tools, in_think, text, strlen(text), NULL, 0, NULL, problem);
}

/* Checks the whole-text stream against `want`, then that byte-by-byte and every 2-way
 * split give the same stream. */
static void expect(const char *tools, int in_think, const char *text, const char *want) {
    const char *problem = NULL;
    char *whole = render(tools, in_think, text, &problem);
    CHECKF(strcmp(whole, want) == 0, "input %s\n  got  %s\n  want %s", text, whole, want);
    CHECKF(!problem, "%s for input %s", problem, text);
    size_t len = strlen(text);
    size_t *cut = malloc((len + 1) * sizeof *cut);
    for (size_t i = 0; i < len; i++) cut[i] = i + 1;
    char *bytes = render_cuts(tools, in_think, text, len, cut, len ? (int)len - 1 : 0, NULL, &problem);
    CHECKF(strcmp(whole, bytes) == 0, "byte by byte differs for %s\n  whole %s\n  bytes %s", text,
           whole, bytes);
    CHECKF(!problem, "%s (byte by byte) for input %s", problem, text);
    free(bytes);
    for (size_t s = 1; s < len; s++) {
        char *two = render_cuts(tools, in_think, text, len, &s, 1, NULL, &problem);
        int same = strcmp(whole, two) == 0;
        CHECKF(same, "split at %zu differs for %s\n  whole %s\n  split %s", s, text, whole, two);
        CHECKF(!problem, "%s (split at %zu) for input %s", problem, s, text);
        free(two);
        if (!same) break;
    }
    free(cut);
    free(whole);
}

static const char *TOOLS =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"w\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},"
    "\"days\":{\"type\":\"integer\"},\"temp\":{\"type\":\"number\"},\"metric\":{\"type\":"
    "\"boolean\"},\"opts\":{\"type\":\"object\"},\"tags\":{\"type\":\"array\"},\"maybe\":{"
    "\"type\":[\"integer\",\"null\"]},\"either\":{\"anyOf\":[{\"type\":\"string\"},{\"type\":"
    "\"number\"}]}}}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"write_file\",\"parameters\":{\"type\":"
    "\"object\",\"properties\":{\"path\":{\"type\":\"string\"},\"content\":{\"type\":\"string\"}"
    "}}}}]";

static void test_no_tools(void) {
    const char *t = "Hi <tool_call>\n{\"name\": \"f\"}\n</tool_call> <function=f></function>";
    char want[256];
    snprintf(want, sizeof want, "T[%s]", t);
    expect(NULL, 0, t, want);
    expect("", 0, t, want);
    expect("[]", 0, t, want);
    expect(NULL, 0, "  plain answer\n", "T[  plain answer\n]");
    expect(NULL, 0, "", "");
    expect(NULL, 0, "a < b <> <th", "T[a < b <> <th]");
}

static void test_hermes(void) {
    expect(TOOLS, 0,
           "I'll check.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
           "\"Paris\", \"temp\": 0.1}}\n</tool_call>",
           "T[I'll check.] B0:get_weather A0[{\"city\": \"Paris\", \"temp\": 0.1}] E0");
    /* arguments as a JSON string holding JSON; "parameters" alias; no arguments at all */
    expect(TOOLS, 0,
           "<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}"
           "</tool_call>",
           "B0:get_weather A0[{\"city\": \"Rome\"}] E0");
    expect(TOOLS, 0, "<tool_call>{\"name\": \"f\", \"parameters\": {\"a\": [1, {\"b\": \"}\"}]}}</tool_call>",
           "B0:f A0[{\"a\": [1, {\"b\": \"}\"}]}] E0");
    expect(TOOLS, 0, "<tool_call>\n{\"name\": \"get_weather\"}\n</tool_call>\n",
           "B0:get_weather A0[{}] E0");
    /* two calls, text after them; whitespace between calls is not a text block */
    expect(TOOLS, 0,
           "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n\n<tool_call>\n"
           "{\"name\": \"b\", \"arguments\": {\"x\": \"</tool_call>\"}}\n</tool_call>\n\nDone.\n",
           "B0:a A0[{}] E0 B1:b A1[{\"x\": \"</tool_call>\"}] E1 T[Done.\n]");
}

static void test_hermes_repairs(void) {
    /* raw newline inside a string is escaped */
    expect(TOOLS, 0, "<tool_call>{\"name\": \"write_file\", \"arguments\": {\"content\": \"a\nb\"}}</tool_call>",
           "B0:write_file A0[{\"content\": \"a\\u000ab\"}] E0");
    /* missing closing brace before </tool_call> */
    expect(TOOLS, 0, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}\n</tool_call>after",
           "B0:f A0[{\"a\": 1}] E0 T[after]");
    /* cut off by end of output: strings and brackets are closed */
    expect(TOOLS, 0, "<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.txt\", \"content\": \"hel",
           "B0:write_file A0[{\"path\": \"a.txt\", \"content\": \"hel\"}] E0");
    expect(TOOLS, 0, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1, 2,",
           "B0:f A0[{\"a\": [1, 2]}] E0");
}

static void test_hermes_malformed(void) {
    /* bad JSON: the whole markup stays text */
    expect(TOOLS, 0, "x <tool_call>\n{\"name\": get}\n</tool_call> y",
           "T[x <tool_call>\n{\"name\": get}\n</tool_call> y]");
    expect(TOOLS, 0, "<tool_call>{\"arguments\": {}}</tool_call>",
           "T[<tool_call>{\"arguments\": {}}</tool_call>]");
    expect(TOOLS, 0, "<tool_call>{\"name\": \"f\", \"arguments\": 5}</tool_call>",
           "T[<tool_call>{\"name\": \"f\", \"arguments\": 5}</tool_call>]");
    expect(TOOLS, 0, "<tool_call>{\"name\": \"f\", \"arguments\": \"not json\"}</tool_call>",
           "T[<tool_call>{\"name\": \"f\", \"arguments\": \"not json\"}</tool_call>]");
    expect(TOOLS, 0, "<tool_call>{\"name\": \"f\"]</tool_call>", "T[<tool_call>{\"name\": \"f\"]</tool_call>]");
    expect(TOOLS, 0, "<tool_call>{\"name\": \"f\", \"a\": 1 <b></tool_call>",
           "T[<tool_call>{\"name\": \"f\", \"a\": 1 <b></tool_call>]");
    /* wrapper with neither JSON nor <function=; unterminated wrapper */
    expect(TOOLS, 0, "<tool_call>get_weather(city)</tool_call>", "T[<tool_call>get_weather(city)</tool_call>]");
    expect(TOOLS, 0, "Hmm <tool_call>\n", "T[Hmm <tool_call>\n]");
    expect(TOOLS, 0, "a <tool_ca", "T[a <tool_ca]");
    /* the first wrapper was bad, the second one is a real call */
    expect(TOOLS, 0, "<tool_call>\n<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
           "T[<tool_call>] B0:f A0[{}] E0");
}

static const char *QWEN_SAMPLE =
    "I'll write the file.\n<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/a.py\n"
    "</parameter>\n<parameter=content>\ndef f(a, b):\n    return a < b\n\n\n</parameter>\n"
    "</function>\n</tool_call>";

static void test_qwen_xml(void) {
    expect(TOOLS, 0, QWEN_SAMPLE,
           "T[I'll write the file.] B0:write_file A0[{\"path\": \"src/a.py\", \"content\": "
           "\"def f(a, b):\\n    return a < b\\n\\n\"}] E0");
    /* without the <tool_call> wrapper, two calls in a row */
    expect(TOOLS, 0,
           "<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n"
           "<function=get_weather>\n<parameter=city>\nBergen\n</parameter>\n</function>",
           "B0:get_weather A0[{\"city\": \"Oslo\"}] E0 B1:get_weather A1[{\"city\": \"Bergen\"}] E1");
    /* two functions inside one wrapper; then a second wrapper; then text */
    expect(TOOLS, 0,
           "<tool_call>\n<function=a>\n</function>\n<function=b>\n<parameter=x>\n1\n</parameter>\n"
           "</function>\n</tool_call>\n<tool_call>\n<function=c>\n</function>\n</tool_call>\nok",
           "B0:a A0[{}] E0 B1:b A1[{\"x\": \"1\"}] E1 B2:c A2[{}] E2 T[ok]");
    /* values on one line, no newlines to strip; empty value */
    expect(TOOLS, 0, "<tool_call><function=write_file><parameter=path>x</parameter><parameter=content></parameter></function></tool_call>",
           "B0:write_file A0[{\"path\": \"x\", \"content\": \"\"}] E0");
}

static void test_qwen_types(void) {
    expect(TOOLS, 0,
           "<tool_call>\n<function=get_weather>\n"
           "<parameter=days>\n3\n</parameter>\n<parameter=temp>\n2.50\n</parameter>\n"
           "<parameter=metric>\nTrue\n</parameter>\n<parameter=opts>\n{\"a\": [1, 2]}\n</parameter>\n"
           "<parameter=tags>\n[\"x\"]\n</parameter>\n<parameter=maybe>\nNone\n</parameter>\n"
           "<parameter=either>\n5\n</parameter>\n<parameter=city>\nnull\n</parameter>\n"
           "<parameter=unknown>\n42\n</parameter>\n</function>\n</tool_call>",
           "B0:get_weather A0[{\"days\": 3, \"temp\": 2.50, \"metric\": true, \"opts\": {\"a\": [1, 2]}, "
           "\"tags\": [\"x\"], \"maybe\": null, \"either\": 5, \"city\": \"null\", \"unknown\": \"42\"}] E0");
    /* values that do not parse as their type stay strings */
    expect(TOOLS, 0,
           "<function=get_weather>\n<parameter=days>\nthree\n</parameter>\n<parameter=metric>\nyes\n"
           "</parameter>\n<parameter=opts>\n[1]\n</parameter>\n<parameter=temp>\n\n</parameter>\n"
           "<parameter=either>\nx\"y\n</parameter>\n<parameter=days>\n1 2\n</parameter>\n</function>",
           "B0:get_weather A0[{\"days\": \"three\", \"metric\": \"yes\", \"opts\": \"[1]\", \"temp\": \"\", "
           "\"either\": \"x\\\"y\", \"days\": \"1 2\"}] E0");
    /* a JSON array or object may hold tags inside its strings (the grammar allows
     * them there): they do not end the value */
    expect(TOOLS, 0,
           "<function=get_weather>\n<parameter=tags>\n[\"</parameter>\", \"<b>\\\"</tool_call>\"]\n</parameter>\n"
           "<parameter=opts>\n{\"k\": \"</function>\"}\n</parameter>\n</function>",
           "B0:get_weather A0[{\"tags\": [\"</parameter>\", \"<b>\\\"</tool_call>\"], \"opts\": {\"k\": \"</function>\"}}] E0");
    /* an unknown function (wrapped): every parameter is a string */
    expect(TOOLS, 0, "<tool_call>\n<function=run>\n<parameter=n>\n5\n</parameter>\n</function>\n</tool_call>",
           "B0:run A0[{\"n\": \"5\"}] E0");
}

static void test_qwen_malformed(void) {
    /* missing </parameter>: the next tag ends the value */
    expect(TOOLS, 0,
           "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n<parameter=days>\n2\n"
           "</function>\n</tool_call>",
           "B0:get_weather A0[{\"city\": \"Oslo\", \"days\": 2}] E0");
    /* missing </function>: </tool_call> closes the call */
    expect(TOOLS, 0, "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</tool_call>x",
           "B0:get_weather A0[{\"city\": \"Oslo\"}] E0 T[x]");
    /* parameter name without '>' ends at the newline; stray text between parameters */
    expect(TOOLS, 0, "<function=get_weather>\n<parameter=city\nOslo\n</parameter>\nnoise <b>\n</function>",
           "B0:get_weather A0[{\"city\": \"Oslo\"}] E0");
    /* literal '<' and partial tags inside a value */
    expect(TOOLS, 0, "<function=write_file>\n<parameter=content>\na<b </para </parameter\n<x>\n</parameter>\n</function>",
           "B0:write_file A0[{\"content\": \"a<b </para </parameter\\n<x>\"}] E0");
    /* cut off at the end: the call is closed */
    expect(TOOLS, 0, "<tool_call>\n<function=write_file>\n<parameter=content>\nline1\nli",
           "B0:write_file A0[{\"content\": \"line1\\nli\"}] E0");
    expect(TOOLS, 0, "<tool_call>\n<function=get_weather>\n<parameter=days>\n4", "B0:get_weather A0[{\"days\": 4}] E0");
    expect(TOOLS, 0, "<tool_call>\n<function=get_weather>\n<parameter=da", "B0:get_weather A0[{}] E0");
    expect(TOOLS, 0, "<function=get_weather>", "B0:get_weather A0[{}] E0");
    /* unwrapped <function=X> with X not a tool is prose; so are bad names */
    expect(TOOLS, 0, "Use <function=NAME> tags.", "T[Use <function=NAME> tags.]");
    expect(TOOLS, 0, "<tool_call>\n<function=>\n</function>\n</tool_call>",
           "T[<tool_call>\n<function=>\n</function>\n</tool_call>]");
    expect(TOOLS, 0, "<function=get_weather", "T[<function=get_weather]");
    expect(TOOLS, 0, "<function=get\nweather>", "T[<function=get\nweather>]");
    /* invalid UTF-8 inside a value becomes U+FFFD; valid multi-byte text passes */
    expect(TOOLS, 0, "<function=write_file>\n<parameter=content>\n\xc3\xa9\xff\xe2\x82\n</parameter>\n</function>",
           "B0:write_file A0[{\"content\": \"\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"}] E0");
    /* a control character and a quote in a parameter name */
    expect(TOOLS, 0, "<function=write_file>\n<parameter=a\"\x01>\nv\n</parameter>\n</function>",
           "B0:write_file A0[{\"a\\\"\\u0001\": \"v\"}] E0");
}

static void test_reasoning(void) {
    expect(TOOLS, 0,
           "<think>\nThe user wants weather.\n</think>\n\nSure.\n<tool_call>\n<function=get_weather>\n"
           "<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>",
           "R[The user wants weather.] T[Sure.] B0:get_weather A0[{\"city\": \"Oslo\"}] E0");
    /* the template opened <think>: output starts as reasoning */
    expect(NULL, 1, "Let me see.\n</think>\n\nThe answer is 4.", "R[Let me see.] T[The answer is 4.]");
    /* unclosed reasoning at the end; tool markup inside reasoning is reasoning */
    expect(TOOLS, 1, "maybe <tool_call>{\"name\": \"f\"}</tool_call>\n",
           "R[maybe <tool_call>{\"name\": \"f\"}</tool_call>]");
    /* <think> in the middle of an answer is text; after a call it starts reasoning again */
    expect(NULL, 0, "Wrap it in <think> tags.", "T[Wrap it in <think> tags.]");
    expect(TOOLS, 0, "<function=get_weather>\n</function>\n<think>again</think>done",
           "B0:get_weather A0[{}] E0 R[again] T[done]");
    expect(NULL, 0, "</think>stray", "T[</think>stray]");
}

static void test_whitespace(void) {
    expect(TOOLS, 0, "\n\n<tool_call>\n{\"name\": \"f\"}\n</tool_call>\n", "B0:f A0[{}] E0");
    expect(TOOLS, 0, "a\n\nb\n\n<function=get_weather>\n</function>\n\n  c d  \n",
           "T[a\n\nb] B0:get_weather A0[{}] E0 T[c d  \n]");
    expect(NULL, 1, "\n\n</think>\n\n", "");
}

/* Text is emitted at once, only possible markup is held back; XML values stream. */
static void test_streaming(void) {
    collector c = {0};
    c.last_kind = -1;
    lm_toolcall_parser *p;
    char err[LM_ERR_LEN];
    CHECK(lm_toolcall_parser_create(&p, TOOLS, 0, on_event, &c, err) == 0);
    CHECK(lm_toolcall_parser_feed(p, "Hello wor", 9, err) == 0);
    CHECK(c.s && strcmp(c.s, "T[Hello wor]") == 0);
    CHECK(lm_toolcall_parser_feed(p, "ld <tool", 8, err) == 0);
    CHECK(strcmp(c.s, "T[Hello world]") == 0);
    const char *more = "_call>\n<function=write_file>\n<parameter=content>\nline1\nline2";
    CHECK(lm_toolcall_parser_feed(p, more, strlen(more), err) == 0);
    CHECKF(strcmp(c.s, "T[Hello world] B0:write_file A0[{\"content\": \"line1\\nline2]") == 0, "%s", c.s);
    CHECK(lm_toolcall_parser_calls(p) == 0);
    const char *end = "\n</parameter>\n</function>\n</tool_call>";
    CHECK(lm_toolcall_parser_feed(p, end, strlen(end), err) == 0);
    CHECK(lm_toolcall_parser_calls(p) == 1);
    CHECK(lm_toolcall_parser_finish(p, err) == 0);
    CHECKF(strcmp(c.s, "T[Hello world] B0:write_file A0[{\"content\": \"line1\\nline2\"}] E0") == 0, "%s", c.s);
    CHECK(!c.problem);
    lm_toolcall_parser_free(p);
    free(c.s);
}

static void test_cancel_and_errors(void) {
    collector c = {0};
    c.last_kind = -1;
    c.cancel_after = 1;
    lm_toolcall_parser *p;
    char err[LM_ERR_LEN];
    CHECK(lm_toolcall_parser_create(&p, NULL, 0, on_event, &c, err) == 0);
    CHECK(lm_toolcall_parser_feed(p, "abc", 3, err) == -1);
    CHECK(strcmp(err, "cancelled") == 0);
    CHECK(lm_toolcall_parser_feed(p, "def", 3, err) == -1);
    CHECK(lm_toolcall_parser_finish(p, err) == -1);
    CHECK(c.events == 1);
    lm_toolcall_parser_free(p);
    free(c.s);
    CHECK(lm_toolcall_parser_create(&p, "[{", 0, on_event, &c, err) == -1);
    CHECK_STR_CONTAINS(err, "tools: invalid JSON");
    CHECK(lm_toolcall_parser_create(&p, "{\"name\": \"f\"}", 0, on_event, &c, err) == -1);
    CHECK_STR_CONTAINS(err, "JSON array");
    CHECK(lm_toolcall_parser_create(&p, NULL, 0, NULL, &c, err) == -1);
    CHECK(p == NULL);
}

/* A long realistic output, every split point and byte by byte (done by expect), plus
 * the call count. */
static void test_all_splits_sample(void) {
    const char *text =
        "<think>\nCheck the weather \xe2\x9b\x85 first, then write.\n</think>\n\nOn it \xc3\xa9.\n\n"
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"S\xc3\xa3o Paulo\"}}\n</tool_call>\n"
        "<tool_call>\n<function=write_file>\n<parameter=path>\nnotes.md\n</parameter>\n<parameter=content>\n"
        "# Weather\n\n<b>sunny</b> \xe2\x9b\x85\n</parameter>\n</function>\n</tool_call>";
    expect(TOOLS, 0, text,
           "R[Check the weather \xe2\x9b\x85 first, then write.] T[On it \xc3\xa9.] B0:get_weather "
           "A0[{\"city\": \"S\xc3\xa3o Paulo\"}] E0 B1:write_file A1[{\"path\": \"notes.md\", \"content\": "
           "\"# Weather\\n\\n<b>sunny</b> \xe2\x9b\x85\"}] E1");
    int calls = 0;
    char *s = render_cuts(TOOLS, 0, text, strlen(text), NULL, 0, &calls, NULL);
    CHECK(calls == 2);
    free(s);
    s = render_cuts(TOOLS, 0, QWEN_SAMPLE, strlen(QWEN_SAMPLE), NULL, 0, &calls, NULL);
    CHECK(calls == 1);
    free(s);
}

/* GLM-4.5 / 4.6 (glm4_moe): <tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>
 * ...</tool_call>, as its chat template writes them (values: strings as they are, other
 * types as JSON), with <think> reasoning before. */
static void test_glm(void) {
    expect(TOOLS, 0,
           "<think>Need the weather.</think>\nLet me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
           "<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
           "R[Need the weather.] T[Let me check.] B0:get_weather A0[{\"city\": \"Paris\", \"days\": 3}] E0");
    /* two calls; an object value; no argument at all; unknown names stay calls */
    expect(TOOLS, 0,
           "<tool_call>get_weather\n<arg_key>opts</arg_key>\n<arg_value>{\"a\": [1, 2]}</arg_value>\n</tool_call>"
           "<tool_call>get_time\n</tool_call>\nDone.",
           "B0:get_weather A0[{\"opts\": {\"a\": [1, 2]}}] E0 B1:get_time A1[{}] E1 T[Done.]");
    /* the GLM-4.5 template puts no newline between the tags when arguments follow directly */
    expect(TOOLS, 0, "<tool_call>write_file<arg_key>path</arg_key><arg_value>a \"b\"\n</arg_value></tool_call>",
           "B0:write_file A0[{\"path\": \"a \\\"b\\\"\\n\"}] E0");
    /* prose that only looks like the tag stays text; a cut-off call is closed */
    expect(TOOLS, 0, "Use <tool_call>get(x)</tool_call> like so.", "T[Use <tool_call>get(x)</tool_call> like so.]");
    expect(TOOLS, 0, "<tool_call>write_file\n<arg_key>content</arg_key>\n<arg_value>hel",
           "B0:write_file A0[{\"content\": \"hel\"}] E0");
    /* a key without a value is dropped */
    expect(TOOLS, 0, "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>",
           "B0:get_weather A0[{\"days\": 2}] E0");
}

/* MiniMax-M2: <minimax:tool_call> holding one or more <invoke name="F"> with
 * <parameter name="K">V</parameter>, and interleaved <think> blocks between calls. */
static void test_minimax(void) {
    expect(TOOLS, 0,
           "<think>\nCheck first.\n</think>\n\nChecking.\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n"
           "<parameter name=\"city\">Paris</parameter>\n<parameter name=\"metric\">true</parameter>\n</invoke>\n"
           "<invoke name=\"write_file\">\n<parameter name=\"content\">a\nb</parameter>\n</invoke>\n"
           "</minimax:tool_call>",
           "R[Check first.] T[Checking.] B0:get_weather A0[{\"city\": \"Paris\", \"metric\": true}] E0 "
           "B1:write_file A1[{\"content\": \"a\\nb\"}] E1");
    /* interleaved thinking: reasoning after a call, then another call, then the answer */
    expect(TOOLS, 0,
           "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"days\">2</parameter>\n</invoke>\n"
           "</minimax:tool_call><think>Now write it.</think>\n<minimax:tool_call>\n<invoke name=\"write_file\">\n"
           "</invoke>\n</minimax:tool_call>\nDone.",
           "B0:get_weather A0[{\"days\": 2}] E0 R[Now write it.] B1:write_file A1[{}] E1 T[Done.]");
    /* not a call: the wrapper is given back as text; a cut-off call is closed */
    expect(TOOLS, 0, "See <minimax:tool_call> docs.", "T[See <minimax:tool_call> docs.]");
    expect(TOOLS, 0, "<minimax:tool_call>\n<invoke name=\"write_file\">\n<parameter name=\"path\">x.t",
           "B0:write_file A0[{\"path\": \"x.t\"}] E0");
    expect(NULL, 0, "<minimax:tool_call><invoke name=\"f\"></invoke></minimax:tool_call>",
           "T[<minimax:tool_call><invoke name=\"f\"></invoke></minimax:tool_call>]");
}

/* A NUL byte in an XML value (byte-level tokenizers can write one): the arguments stay one
 * JSON object jansson accepts (the server parses them back for Anthropic's tool_use input),
 * the NUL becoming U+FFFD, whole and byte by byte. Found by fuzz/fuzz_toolcall.c. */
static void test_nul_in_values(void) {
    static const char glm[] = "<tool_call>write_file\n<arg_key>content</arg_key>\n<arg_value>a\0b</arg_value>\n</tool_call>";
    static const char mm[] = "<minimax:tool_call>\n<invoke name=\"write_file\">\n<parameter name=\"content\">a\0b"
                             "</parameter>\n</invoke>\n</minimax:tool_call>";
    static const char qw[] = "<tool_call>\n<function=write_file>\n<parameter=content>\na\0b\n</parameter>\n</function>\n</tool_call>";
    const char *const texts[] = {glm, mm, qw};
    const size_t lens[] = {sizeof glm - 1, sizeof mm - 1, sizeof qw - 1};
    for (int t = 0; t < 3; t++) {
        const char *problem = NULL;
        size_t n = lens[t], cut[256];
        for (size_t i = 0; i + 1 < n; i++) cut[i] = i + 1;
        char *whole = render_cuts(TOOLS, 0, texts[t], n, NULL, 0, NULL, &problem);
        CHECKF(!problem && !strcmp(whole, "B0:write_file A0[{\"content\": \"a\xEF\xBF\xBD" "b\"}] E0"), "%d: %s (%s)", t, whole,
               problem ? problem : "");
        char *bytes = render_cuts(TOOLS, 0, texts[t], n, cut, (int)n - 1, NULL, &problem);
        CHECKF(!problem && !strcmp(whole, bytes), "%d byte by byte: %s", t, bytes);
        free(whole);
        free(bytes);
    }
}

/* Random splits of random mixes of every format's pieces: no crash, no structural
 * problem (valid ids, arguments always a JSON object, no empty fragments), and the
 * stream does not depend on how the text was split. */
static void test_fuzz_formats(void) {
    static const char *const pieces[] = {
        "<tool_call>", "</tool_call>", "get_weather", "\n", "<arg_key>", "city", "</arg_key>", "<arg_value>",
        "Paris", "</arg_value>", "<minimax:tool_call>", "</minimax:tool_call>", "<invoke name=\"", "\">",
        "</invoke>", "<parameter name=\"", "days", "</parameter>", "<think>", "</think>", "{\"name\": \"f\"}",
        "<function=write_file>", "<parameter=", ">", "</function>", " text ", "<", "\"", "3", "\xc3\xa9", "\xff"};
    uint64_t r = 0x243F6A8885A308D3ull;
    char text[512];
    for (int iter = 0; iter < 400; iter++) {
        size_t n = 0;
        int k = 1 + (int)(r % 24);
        for (int i = 0; i < k; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            const char *pc = pieces[(r >> 33) % (sizeof pieces / sizeof pieces[0])];
            size_t l = strlen(pc);
            if (n + l >= sizeof text) break;
            memcpy(text + n, pc, l);
            n += l;
        }
        text[n] = 0;
        const char *problem = NULL;
        char *whole = render_cuts(TOOLS, (int)(r & 1), text, n, NULL, 0, NULL, &problem);
        CHECKF(!problem, "%s for %s", problem, text);
        size_t cut[3] = {n / 3, n / 2, n - n / 4};
        if (cut[1] < cut[0]) cut[1] = cut[0];
        if (cut[2] < cut[1]) cut[2] = cut[1];
        char *split = render_cuts(TOOLS, (int)(r & 1), text, n, cut, 3, NULL, &problem);
        CHECKF(!problem && strcmp(whole, split) == 0, "split differs for %s\n  whole %s\n  split %s", text, whole,
               split);
        free(whole);
        free(split);
    }
}

int main(void) {
    TEST_CASE("toolcall_no_tools", test_no_tools);
    TEST_CASE("toolcall_hermes", test_hermes);
    TEST_CASE("toolcall_hermes_repairs", test_hermes_repairs);
    TEST_CASE("toolcall_hermes_malformed", test_hermes_malformed);
    TEST_CASE("toolcall_qwen_xml", test_qwen_xml);
    TEST_CASE("toolcall_qwen_types", test_qwen_types);
    TEST_CASE("toolcall_qwen_malformed", test_qwen_malformed);
    TEST_CASE("toolcall_reasoning", test_reasoning);
    TEST_CASE("toolcall_glm", test_glm);
    TEST_CASE("toolcall_minimax", test_minimax);
    TEST_CASE("toolcall_nul_in_values", test_nul_in_values);
    TEST_CASE("toolcall_fuzz_formats", test_fuzz_formats);
    TEST_CASE("toolcall_whitespace", test_whitespace);
    TEST_CASE("toolcall_streaming", test_streaming);
    TEST_CASE("toolcall_cancel_and_errors", test_cancel_and_errors);
    TEST_CASE("toolcall_all_splits_sample", test_all_splits_sample);
    TEST_EXIT();
}

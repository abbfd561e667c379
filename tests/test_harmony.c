/* The harmony parser (text/harmony.h): each case's events, with the whole output fed
 * at once, byte by byte, and split in two at every point -- all must give the same
 * transcript (runs of one kind joined); call arguments parse as JSON objects. */
#include "harness.h"

#include "common/buf.h"
#include "common/error.h"
#include "text/harmony.h"

#include <jansson.h>

typedef struct {
    lm_strbuf log; /* "T:text|R:reasoning|B0:name|A0:args|E0|" with runs joined */
    lm_tc_kind last;
    int have_last, begins, ends;
    lm_strbuf args;
    int args_ok;
} sink;

static int on_event(void *ctx, const lm_tc_event *ev) {
    sink *s = ctx;
    static const char *tag[] = {"T", "R", "B", "A", "E"};
    int joins = s->have_last && s->last == ev->kind && (ev->kind == LM_TC_TEXT || ev->kind == LM_TC_REASONING ||
                                                        ev->kind == LM_TC_CALL_ARGS);
    if (!joins) {
        if (s->have_last) lm_strbuf_puts(&s->log, "|");
        lm_strbuf_puts(&s->log, tag[ev->kind]);
        if (ev->kind >= LM_TC_CALL_BEGIN) lm_strbuf_printf(&s->log, "%d", ev->index);
        lm_strbuf_puts(&s->log, ":");
    }
    s->last = ev->kind;
    s->have_last = 1;
    switch (ev->kind) {
    case LM_TC_TEXT:
    case LM_TC_REASONING: lm_strbuf_append(&s->log, ev->data, ev->len); break;
    case LM_TC_CALL_BEGIN:
        lm_strbuf_puts(&s->log, ev->name);
        s->begins++;
        lm_strbuf_reset(&s->args);
        CHECK(ev->id && !strncmp(ev->id, "call_", 5) && strlen(ev->id) == 29);
        break;
    case LM_TC_CALL_ARGS:
        lm_strbuf_append(&s->log, ev->data, ev->len);
        lm_strbuf_append(&s->args, ev->data, ev->len);
        break;
    case LM_TC_CALL_END: {
        s->ends++;
        json_error_t je;
        json_t *o = json_loadb(s->args.data ? s->args.data : "", s->args.len, 0, &je);
        if (!o || !json_is_object(o)) s->args_ok = 0;
        json_decref(o);
        break;
    }
    }
    return 0;
}

/* Feeds `text` in pieces cut at cuts[0..ncut) and returns the transcript (caller frees). */
static char *run(const char *text, const size_t *cuts, int ncut, int *calls) {
    char err[LM_ERR_LEN];
    sink s = {.args_ok = 1};
    lm_harmony_parser *p;
    CHECKF(lm_harmony_parser_create(&p, on_event, &s, err) == 0, "%s", err);
    size_t at = 0, n = strlen(text);
    for (int i = 0; i <= ncut; i++) {
        size_t to = i < ncut ? cuts[i] : n;
        CHECKF(lm_harmony_parser_feed(p, text + at, to - at, err) == 0, "%s", err);
        at = to;
    }
    CHECKF(lm_harmony_parser_finish(p, err) == 0, "%s", err);
    *calls = lm_harmony_parser_calls(p);
    CHECK_EQ_INT(s.begins, s.ends);
    CHECK_EQ_INT(*calls, s.ends);
    CHECKF(s.args_ok, "arguments of a call are not a JSON object in %s", s.log.data);
    lm_harmony_parser_free(p);
    lm_strbuf_free(&s.args);
    return s.log.data ? s.log.data : strdup("");
}

static void expect(const char *text, const char *want, int want_calls) {
    int calls = 0;
    char *whole = run(text, NULL, 0, &calls);
    CHECKF(!strcmp(whole, want), "\n  input: %s\n  got:   %s\n  want:  %s", text, whole, want);
    CHECK_EQ_INT(calls, want_calls);
    size_t n = strlen(text);
    size_t *bytes = malloc(sizeof(size_t) * (n + 1));
    for (size_t i = 0; i < n; i++) bytes[i] = i + 1;
    char *b = run(text, bytes, n ? (int)n - 1 : 0, &calls);
    CHECKF(!strcmp(b, want), "byte by byte: %s", b);
    free(b);
    for (size_t cut = 0; cut <= n; cut++) {
        char *s = run(text, &cut, 1, &calls);
        CHECKF(!strcmp(s, want), "split at %zu: %s", cut, s);
        free(s);
    }
    free(bytes);
    free(whole);
}

static void reasoning_then_final(void) {
    expect("<|channel|>analysis<|message|>User greets. Reply.<|end|><|start|>assistant<|channel|>final<|message|>"
           "Hello! How can I help?",
           "R:User greets. Reply.|T:Hello! How can I help?", 0);
    /* <|return|> ends the turn when it reaches the parser */
    expect("<|channel|>final<|message|>Done.<|return|>", "T:Done.", 0);
}

static void tool_call(void) {
    expect("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
           "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>",
           "R:Need the weather.|B0:get_weather|A0:{\"city\": \"Paris\"}|E0:", 1);
    /* recipient in the role part, content type without <|constrain|> */
    expect("<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>{\"q\":[1,2]}",
           "B0:lookup|A0:{\"q\":[1,2]}|E0:", 1);
    /* two calls in one output, a preamble on commentary shown as text */
    expect("<|channel|>commentary<|message|>Checking both.<|end|><|start|>assistant<|channel|>commentary "
           "to=functions.a <|constrain|>json<|message|>{}<|end|><|start|>assistant<|channel|>commentary "
           "to=functions.b <|constrain|>json<|message|>{\"x\":\"<|not a marker|>\"}<|call|>",
           "T:Checking both.|B0:a|A0:{}|E0:|B1:b|A1:{\"x\":\"<|not a marker|>\"}|E1:", 2);
}

static void cut_and_malformed(void) {
    /* max_tokens inside the arguments: strings and objects closed */
    expect("<|channel|>commentary to=functions.w <|constrain|>json<|message|>{\"path\": \"a\\\\b\", \"o\": {\"k\": \"v",
           "B0:w|A0:{\"path\": \"a\\\\b\", \"o\": {\"k\": \"v\"}}|E0:", 1);
    expect("<|channel|>commentary to=functions.w json<|message|>{\"a\": 1,", "B0:w|A0:{\"a\": 1,\"\":null}|E0:", 1);
    expect("<|channel|>commentary to=functions.w json<|message|>", "B0:w|A0:{}|E0:", 1);
    expect("<|channel|>commentary to=functions.w json<|message|>not json",
           "B0:w|A0:{\"arguments\":\"not json\"}|E0:", 1);
    /* invalid UTF-8 in a body that is not JSON becomes U+FFFD inside the string */
    expect("<|channel|>commentary to=functions.w json<|message|>H\x97x", "B0:w|A0:{\"arguments\":\"H\xef\xbf\xbdx\"}|E0:", 1);
    /* text after the object is not part of the arguments */
    expect("<|channel|>commentary to=functions.w json<|message|> {\"a\":1} trailing", "B0:w|A0:{\"a\":1}|E0:", 1);
    /* a model that ignores the format: all text, byte for byte */
    expect("Hello <b>world</b> <|channel|>x", "T:Hello <b>world</b> <|channel|>x", 0);
    expect("<html>", "T:<html>", 0);
    /* markers that are not end markers stay in the body */
    expect("<|channel|>final<|message|>a < b <|x|> <|en c <", "T:a < b <|x|> <|en c <", 0);
    /* an unfinished header at the end is dropped */
    expect("<|channel|>final<|message|>ok<|end|><|start|>assistant<|chan", "T:ok", 0);
    expect("", "", 0);
}

static void template_detection(void) {
    CHECK(lm_harmony_template("{{- '<|start|>assistant<|channel|>final<|message|>' }}"));
    CHECK(!lm_harmony_template("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}"));
    CHECK(!lm_harmony_template(NULL));
}

int main(void) {
    TEST_CASE("harmony_reasoning_then_final", reasoning_then_final);
    TEST_CASE("harmony_tool_call", tool_call);
    TEST_CASE("harmony_cut_and_malformed", cut_and_malformed);
    TEST_CASE("harmony_template_detection", template_detection);
    TEST_EXIT();
}

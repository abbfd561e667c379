/* The grammar of a request's output: response_format / output_config.format (JSON,
 * optionally following a schema) or a forced tool call (tool_choice required / named).
 *
 * Forced tool calls are written in the format the model's chat template uses for
 * assistant tool calls, found by rendering one sample call:
 *   Qwen3-Coder XML: <tool_call>\n<function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n
 *                    ...</function>\n</tool_call>
 *     VALUE is raw text for string parameters (no '<'; enum / const as raw literals,
 *     minLength / maxLength apply) and JSON following the parameter's schema for every
 *     other type, which is how the tool-call parser reads them back. Parameters come in
 *     declared order, the required ones always. A parameter that mixes string with
 *     other types is refused (the parser could read it either way).
 *   Hermes:          <tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>
 *     ARGS is JSON following the parameters schema.
 * "required" allows one to four calls of any of the tools, a named tool exactly one call.
 * When the prompt ends inside <think>, up to LM_THINK_CHARS characters of reasoning
 * (no '<') and "</think>" come first.
 */
#include "server/request.h"

#include "text/json_schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THINK_CHARS 4096
#define MAX_CALLS 4
#define RAW_STRING_CHARS 4096

typedef enum { FMT_NONE, FMT_XML, FMT_HERMES } call_format;

/* Renders a sample assistant tool call with the model's template. */
static call_format detect_format(const lazymoe_model *m) {
    static const char *msgs =
        "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"c1\","
        "\"type\":\"function\",\"function\":{\"name\":\"probe_fn\",\"arguments\":{\"probe_arg\":\"v\"}}}]}]";
    static const char *tools =
        "[{\"type\":\"function\",\"function\":{\"name\":\"probe_fn\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{\"probe_arg\":{\"type\":\"string\"}}}}}]";
    char *text = NULL, err[256];
    call_format f = FMT_NONE;
    if (lazymoe_chat_format(m, msgs, tools, 0, NULL, &text, err, sizeof err) != 0) return FMT_NONE;
    if (strstr(text, "<function=probe_fn>") && strstr(text, "<parameter=probe_arg>")) f = FMT_XML;
    else if (strstr(text, "<tool_call>") && strstr(text, "\"probe_fn\"")) f = FMT_HERMES;
    lazymoe_free(text);
    return f;
}

typedef struct {
    lm_schema_gen *gen;
    srv_error *e;
    srv_api api;
    char err[LM_ERR_LEN];
} bctx;

static int gen_fail(bctx *b, const char *field) {
    return srv_fail(b->e, b->api, 400, field, "%s", b->err);
}

/* Rule body text: a literal of s. */
static int literal_rule(bctx *b, const char *s, char name[LM_SCHEMA_NAME]) {
    char *body = NULL;
    size_t len = 0, cap = 0;
    if (lm_grammar_literal_append(&body, &len, &cap, s, strlen(s)))
        return srv_fail(b->e, b->api, 500, NULL, "out of memory");
    lm_schema_gen_name(b->gen, name);
    int rc = lm_schema_gen_rule(b->gen, name, body, b->err);
    free(body);
    return rc ? gen_fail(b, NULL) : 0;
}

/* Which of string / other types a parameter schema allows (as toolcall.c reads it). */
static void param_types(const json_t *s, int *str, int *other, int depth) {
    const json_t *t = json_object_get(s, "type");
    size_t i;
    const json_t *x;
    if (json_is_string(t)) {
        *(strcmp(json_string_value(t), "string") ? other : str) = 1;
        return;
    }
    if (json_is_array(t)) {
        json_array_foreach(t, i, x) if (json_is_string(x)) *(strcmp(json_string_value(x), "string") ? other : str) = 1;
        return;
    }
    if (depth > 4) return;
    static const char *const alts[] = {"anyOf", "oneOf"};
    for (int k = 0; k < 2; k++) {
        const json_t *list = json_object_get(s, alts[k]);
        for (i = 0; i < json_array_size(list); i++) param_types(json_array_get(list, i), str, other, depth + 1);
    }
}

/* VALUE of an XML parameter. */
static int xml_value(bctx *b, const json_t *ps, const json_t *doc, const char *field, char name[LM_SCHEMA_NAME]) {
    int str = 0, other = 0;
    if (json_is_object(ps)) param_types(ps, &str, &other, 0);
    if (str && other)
        return srv_fail(b->e, b->api, 400, field,
                        "%s: a parameter that may be a string or another type cannot be enforced in this model's tool-call format",
                        field);
    if (other) return lm_schema_gen_value(b->gen, ps, doc, field, name, b->err) ? gen_fail(b, field) : 0;
    /* raw text: the parser keeps it as a string */
    const json_t *en = json_object_get(ps, "enum"), *cn = json_object_get(ps, "const");
    if (json_is_object(ps) && (json_object_get(ps, "$ref") || json_object_get(ps, "allOf") || json_object_get(ps, "pattern")))
        return srv_fail(b->e, b->api, 400, field, "%s: this parameter schema cannot be enforced in this model's tool-call format",
                        field);
    if (en || cn) {
        if (cn) en = json_pack("[O]", cn);
        else json_incref((json_t *)en);
        int rc = 0;
        char *body = NULL;
        size_t len = 0, cap = 0;
        if (!json_is_array(en) || !json_array_size(en)) rc = srv_fail(b->e, b->api, 400, field, "%s: \"enum\" must be a non-empty array", field);
        for (size_t i = 0; !rc && i < json_array_size(en); i++) {
            const json_t *v = json_array_get(en, i);
            if (!json_is_string(v)) {
                rc = srv_fail(b->e, b->api, 400, field, "%s: a string parameter with a non-string enum value", field);
                break;
            }
            if (i && lm_grammar_literal_append(&body, &len, &cap, "", 0) == 0) {
                body[len - 2] = '|'; /* the empty literal "" becomes "|" plus a space */
                body[len - 1] = ' ';
            }
            if (lm_grammar_literal_append(&body, &len, &cap, json_string_value(v), json_string_length(v)))
                rc = srv_fail(b->e, b->api, 500, NULL, "out of memory");
        }
        json_decref((json_t *)en);
        if (!rc) {
            lm_schema_gen_name(b->gen, name);
            if (lm_schema_gen_rule(b->gen, name, body, b->err)) rc = gen_fail(b, field);
        }
        free(body);
        return rc;
    }
    long long mn = 0, mx = RAW_STRING_CHARS;
    const json_t *v;
    if (json_is_integer(v = json_object_get(ps, "minLength")) && json_integer_value(v) >= 0 && json_integer_value(v) <= 100000)
        mn = json_integer_value(v);
    if (json_is_integer(v = json_object_get(ps, "maxLength")) && json_integer_value(v) >= mn && json_integer_value(v) <= 100000)
        mx = json_integer_value(v);
    if (mx < mn) mx = mn;
    char body[96];
    snprintf(body, sizeof body, "[^<]{%lld,%lld}", mn, mx);
    lm_schema_gen_name(b->gen, name);
    return lm_schema_gen_rule(b->gen, name, body, b->err) ? gen_fail(b, field) : 0;
}

/* One call of function fn (its OpenAI-form "function" object). */
static int call_rule(bctx *b, call_format f, const json_t *fn, size_t ti, char name[LM_SCHEMA_NAME]) {
    const char *fname = json_string_value(json_object_get(fn, "name"));
    const json_t *params = json_object_get(fn, "parameters");
    char field[128], head[LM_SCHEMA_NAME], tail[LM_SCHEMA_NAME], args[LM_SCHEMA_NAME];
    snprintf(field, sizeof field, "tools[%zu].parameters", ti);
    if (f == FMT_HERMES) {
        char *pre = NULL;
        size_t len = 0, cap = 0;
        json_t *js = json_string(fname);
        char *q = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
        json_decref(js);
        size_t n = q ? strlen(q) + 64 : 0;
        char *s = q ? malloc(n) : NULL;
        if (s) snprintf(s, n, "<tool_call>\n{\"name\": %s, \"arguments\": ", q);
        free(q);
        if (!s || lm_grammar_literal_append(&pre, &len, &cap, s, strlen(s))) {
            free(s);
            free(pre);
            return srv_fail(b->e, b->api, 500, NULL, "out of memory");
        }
        free(s);
        lm_schema_gen_name(b->gen, head);
        int rc = lm_schema_gen_rule(b->gen, head, pre, b->err);
        free(pre);
        if (rc) return gen_fail(b, NULL);
        if (json_is_object(params)) rc = lm_schema_gen_value(b->gen, params, NULL, field, args, b->err);
        else rc = lm_schema_gen_any_object(b->gen, args, b->err);
        if (rc) return gen_fail(b, field);
        if (literal_rule(b, "}\n</tool_call>", tail)) return -1;
        char body[3 * LM_SCHEMA_NAME + 8];
        snprintf(body, sizeof body, "%s %s %s", head, args, tail);
        lm_schema_gen_name(b->gen, name);
        return lm_schema_gen_rule(b->gen, name, body, b->err) ? gen_fail(b, NULL) : 0;
    }
    /* Qwen3-Coder XML */
    size_t hn = strlen(fname) + 64;
    char *h = malloc(hn);
    if (!h) return srv_fail(b->e, b->api, 500, NULL, "out of memory");
    snprintf(h, hn, "<tool_call>\n<function=%s>\n", fname);
    int rc = literal_rule(b, h, head);
    free(h);
    if (rc || literal_rule(b, "</function>\n</tool_call>", tail)) return -1;
    const json_t *props = json_is_object(params) ? json_object_get(params, "properties") : NULL;
    const json_t *req = json_is_object(params) ? json_object_get(params, "required") : NULL;
    size_t n = json_is_object(props) ? json_object_size(props) : 0;
    /* members chain: m[i] = the parameters from i on */
    char(*m)[LM_SCHEMA_NAME] = calloc(n + 1, sizeof *m);
    if (!m) return srv_fail(b->e, b->api, 500, NULL, "out of memory");
    lm_schema_gen_name(b->gen, m[n]);
    if (lm_schema_gen_rule(b->gen, m[n], "\"\"", b->err)) {
        free(m);
        return gen_fail(b, NULL);
    }
    const char **keys = calloc(n + 1, sizeof *keys);
    const json_t **schemas = calloc(n + 1, sizeof *schemas);
    size_t i = 0;
    const char *key;
    json_t *ps;
    if (!keys || !schemas) {
        free(m);
        free(keys);
        free(schemas);
        return srv_fail(b->e, b->api, 500, NULL, "out of memory");
    }
    json_object_foreach((json_t *)props, key, ps) {
        keys[i] = key;
        schemas[i++] = ps;
    }
    for (size_t k = n; !rc && k-- > 0;) {
        char pf[256], val[LM_SCHEMA_NAME], open_[LM_SCHEMA_NAME], one[LM_SCHEMA_NAME];
        snprintf(pf, sizeof pf, "%s.properties.%.100s", field, keys[k]);
        size_t on = strlen(keys[k]) + 32;
        char *o = malloc(on);
        if (!o) {
            rc = srv_fail(b->e, b->api, 500, NULL, "out of memory");
            break;
        }
        snprintf(o, on, "<parameter=%s>\n", keys[k]);
        rc = literal_rule(b, o, open_);
        free(o);
        if (rc || xml_value(b, schemas[k], params, pf, val)) {
            rc = -1;
            break;
        }
        int required = 0;
        size_t j;
        const json_t *x;
        json_array_foreach(req, j, x) if (json_is_string(x) && !strcmp(json_string_value(x), keys[k])) required = 1;
        char body[4 * LM_SCHEMA_NAME + 64];
        snprintf(body, sizeof body, "%s %s \"\\n</parameter>\\n\"", open_, val);
        lm_schema_gen_name(b->gen, one);
        if (lm_schema_gen_rule(b->gen, one, body, b->err)) {
            rc = gen_fail(b, NULL);
            break;
        }
        if (required) snprintf(body, sizeof body, "%s %s", one, m[k + 1]);
        else snprintf(body, sizeof body, "%s %s | %s", one, m[k + 1], m[k + 1]);
        lm_schema_gen_name(b->gen, m[k]);
        if (lm_schema_gen_rule(b->gen, m[k], body, b->err)) rc = gen_fail(b, NULL);
    }
    json_array_foreach(req, i, ps) {
        if (!rc && json_is_string(ps) && !json_object_get(props, json_string_value(ps)))
            rc = srv_fail(b->e, b->api, 400, field, "%s: \"required\" names \"%.80s\", which is not in \"properties\"", field,
                          json_string_value(ps));
    }
    if (!rc) {
        char body[3 * LM_SCHEMA_NAME + 8];
        snprintf(body, sizeof body, "%s %s %s", head, m[0], tail);
        lm_schema_gen_name(b->gen, name);
        if (lm_schema_gen_rule(b->gen, name, body, b->err)) rc = gen_fail(b, NULL);
    }
    free(m);
    free(keys);
    free(schemas);
    return rc;
}

static int tool_grammar(bctx *b, const lazymoe_model *m, const srv_chat *c, char root[LM_SCHEMA_NAME]) {
    const char *choice_field = "tool_choice";
    if (!c->tools || !json_array_size(c->tools))
        return srv_fail(b->e, b->api, 400, choice_field, "tool_choice: a required or named tool call needs tools");
    call_format f = detect_format(m);
    if (f == FMT_NONE)
        return srv_fail(b->e, b->api, 400, choice_field,
                        "tool_choice: this model's chat template has no tool-call format the server can enforce "
                        "(Qwen3-Coder XML or Hermes JSON)");
    size_t n = json_array_size(c->tools), n_calls = 0;
    char(*calls)[LM_SCHEMA_NAME] = calloc(n, sizeof *calls);
    if (!calls) return srv_fail(b->e, b->api, 500, NULL, "out of memory");
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        const json_t *fn = json_object_get(json_array_get(c->tools, i), "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (!name || (c->tool_name && strcmp(c->tool_name, name) != 0)) continue;
        rc = call_rule(b, f, fn, i, calls[n_calls++]);
    }
    if (!rc && !n_calls)
        rc = srv_fail(b->e, b->api, 400, c->api == SRV_OPENAI ? "tool_choice.function.name" : "tool_choice.name",
                      "tool_choice names \"%.100s\", which is not among the tools", c->tool_name);
    size_t blen = n_calls * (LM_SCHEMA_NAME + 3) + 1;
    char *body = rc ? NULL : malloc(blen);
    if (!rc && !body) rc = srv_fail(b->e, b->api, 500, NULL, "out of memory");
    if (!rc && body) {
        size_t at = 0;
        for (size_t i = 0; i < n_calls; i++) at += (size_t)snprintf(body + at, blen - at, "%s%s", i ? " | " : "", calls[i]);
        char any[LM_SCHEMA_NAME];
        lm_schema_gen_name(b->gen, any);
        char seq[2 * LM_SCHEMA_NAME + 32];
        if (c->tool_name) snprintf(seq, sizeof seq, "%s", any);
        else snprintf(seq, sizeof seq, "%s (\"\\n\" %s){0,%d}", any, any, MAX_CALLS - 1);
        lm_schema_gen_name(b->gen, root);
        if (lm_schema_gen_rule(b->gen, any, body, b->err) || lm_schema_gen_rule(b->gen, root, seq, b->err))
            rc = gen_fail(b, NULL);
    }
    free(body);
    free(calls);
    return rc;
}

int srv_build_grammar(const lazymoe_model *m, const srv_chat *c0, int in_think, lazymoe_grammar **out, srv_error *e) {
    *out = NULL;
    /* The Responses parser hands text.format over as chat completions' response_format
     * and a named tool as tool_choice_name: read them into this file's fields. */
    srv_chat cc = *c0;
    const srv_chat *c = &cc;
    if (!cc.tool_name && cc.tool_choice_name) cc.tool_name = cc.tool_choice_name;
    if (!cc.format && json_is_object(cc.response_format)) {
        const char *t = json_string_value(json_object_get(cc.response_format, "type"));
        const json_t *js = json_object_get(json_object_get(cc.response_format, "json_schema"), "schema");
        if (t && !strcmp(t, "json_object")) {
            cc.format = SRV_FORMAT_JSON_OBJECT;
            snprintf(cc.format_field, sizeof cc.format_field, "text.format");
        } else if (t && !strcmp(t, "json_schema")) {
            if (!js) return srv_fail(e, c->api, 400, "text.format.schema", "text.format.schema is missing");
            cc.format = SRV_FORMAT_JSON_SCHEMA;
            cc.schema = (json_t *)js;
            snprintf(cc.format_field, sizeof cc.format_field, "text.format.schema");
        }
    }
    int forced_call = c->tool_choice == SRV_TOOLS_REQUIRED;
    if (!c->format && !forced_call) return 0;
    if (c->format && forced_call)
        return srv_fail(e, c->api, 400, "tool_choice",
                        "tool_choice: a required tool call cannot be combined with %s (the output cannot be both)",
                        c->format_field);
    bctx b = {.e = e, .api = c->api};
    if (lm_schema_gen_new(&b.gen, b.err)) return srv_fail(e, c->api, 500, NULL, "out of memory");
    char root[LM_SCHEMA_NAME];
    int rc;
    if (forced_call) rc = tool_grammar(&b, m, c, root);
    else if (c->format == SRV_FORMAT_JSON_OBJECT) rc = lm_schema_gen_any_object(b.gen, root, b.err) ? gen_fail(&b, NULL) : 0;
    else rc = lm_schema_gen_value(b.gen, c->schema, NULL, c->format_field, root, b.err) ? gen_fail(&b, c->format_field) : 0;
    if (!rc && in_think) {
        char start[LM_SCHEMA_NAME], body[LM_SCHEMA_NAME * 2 + 64];
        lm_schema_gen_name(b.gen, start);
        snprintf(body, sizeof body, "[^<]{0,%d} \"</think>\" \"\\n\"{0,2} %s", THINK_CHARS, root);
        if (lm_schema_gen_rule(b.gen, start, body, b.err)) rc = gen_fail(&b, NULL);
        memcpy(root, start, sizeof root);
    }
    if (!rc && lm_schema_gen_grammar(b.gen, root, out, b.err)) rc = gen_fail(&b, forced_call ? "tool_choice" : c->format_field);
    lm_schema_gen_free(b.gen);
    return rc;
}

/* OpenAI and Anthropic request bodies -> srv_chat (see request.h). */
#include "server/request.h"
#include "server/parse.h"

#include "server/buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Limits that keep a hostile request from costing more than its size. */
#define MAX_STOP 16
#define MAX_STOP_LEN 256
#define MAX_DEPTH 64 /* JSON nesting depth accepted in a body */

static const char *status_type(srv_api api, int status) {
    if (api == SRV_ANTHROPIC) {
        switch (status) {
        case 401: return "authentication_error";
        case 403: return "permission_error";
        case 404: return "not_found_error";
        case 413: return "request_too_large";
        case 429: return "rate_limit_error";
        case 503:
        case 529: return "overloaded_error";
        default: return status >= 500 ? "api_error" : "invalid_request_error";
        }
    }
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

int srv_fail(srv_error *e, srv_api api, int status, const char *param, const char *fmt, ...) {
    memset(e, 0, sizeof *e);
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", status_type(api, status));
    if (param) snprintf(e->param, sizeof e->param, "%s", param);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Parsing context: the API (for error shapes) and the path of the field at hand. */
typedef srv_pctx pctx;

static int bad_type(pctx *p, const char *field, const char *want, const json_t *got) {
    return srv_fail(p->e, p->api, 400, field, "%s: expected %s, got %s", field, want, json_kind(got));
}

static int oom(pctx *p) { return srv_fail(p->e, p->api, 500, NULL, "out of memory"); }

/* ---- body and scalar fields ------------------------------------------------------ */

static int depth_ok(const json_t *v, int depth) {
    if (depth > MAX_DEPTH) return 0;
    size_t i;
    const char *k;
    json_t *x;
    if (json_is_array(v)) {
        json_array_foreach(v, i, x) if (!depth_ok(x, depth + 1)) return 0;
    } else if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, x) if (!depth_ok(x, depth + 1)) return 0;
    }
    return 1;
}

static json_t *load_body(pctx *p, const char *body, size_t len) {
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je); /* NUL bytes are text too */
    if (!root) {
        srv_fail(p->e, p->api, 400, NULL, "the request body is not valid JSON: %s (line %d, column %d)", je.text,
                 je.line, je.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        bad_type(p, "body", "a JSON object", root);
        json_decref(root);
        return NULL;
    }
    if (!depth_ok(root, 0)) {
        srv_fail(p->e, p->api, 400, NULL, "the request body nests deeper than %d levels", MAX_DEPTH);
        json_decref(root);
        return NULL;
    }
    return root;
}

/* A number field in [lo, hi]; absent or null leaves *out untouched and returns 0. */
static int get_number(pctx *p, const json_t *obj, const char *key, double lo, double hi, float *out, unsigned flag) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return bad_type(p, key, "a number", v);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return srv_fail(p->e, p->api, 400, key, "%s: %g is out of range [%g, %g]", key, x, lo, hi);
    *out = (float)x;
    p->c->set |= flag;
    return 0;
}

/* An integer field in [lo, hi]; 1 if present, 0 if absent/null, -1 on error. */
static int get_int(pctx *p, const json_t *obj, const char *key, long long lo, long long hi, long long *out) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v); /* 100.0 from clients that only have doubles */
    } else {
        return bad_type(p, key, "an integer", v);
    }
    if (x < lo || x > hi) return srv_fail(p->e, p->api, 400, key, "%s: %lld is out of range [%lld, %lld]", key, x, lo, hi);
    *out = x;
    return 1;
}

/* 1 true, 0 false or absent, -1 error. */
static int get_bool(pctx *p, const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return bad_type(p, key, "a boolean", v);
    return json_is_true(v);
}

/* An optional string field: *out borrowed from obj, NULL when absent or null. */
static int get_string(pctx *p, const json_t *obj, const char *key, const char *field, const char **out) {
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return bad_type(p, field, "a string", v);
    *out = json_string_value(v);
    return 0;
}

static int add_stop(pctx *p, const char *field, const json_t *v) {
    srv_chat *c = p->c;
    if (!json_is_string(v)) return bad_type(p, field, "a string", v);
    const char *s = json_string_value(v);
    if (!*s) return 0; /* an empty stop string would end every answer at once */
    if (c->n_stop >= MAX_STOP) return srv_fail(p->e, p->api, 400, field, "at most %d stop sequences are supported", MAX_STOP);
    if (strlen(s) > MAX_STOP_LEN)
        return srv_fail(p->e, p->api, 400, field, "%s: stop sequences are limited to %d bytes", field, MAX_STOP_LEN);
    if (!c->stop && !(c->stop = calloc(MAX_STOP, sizeof *c->stop))) return oom(p);
    if (!(c->stop[c->n_stop] = strdup(s))) return oom(p);
    c->n_stop++;
    return 0;
}

static int get_stops(pctx *p, const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v) && p->api == SRV_OPENAI) return add_stop(p, key, v);
    if (!json_is_array(v)) return bad_type(p, key, p->api == SRV_OPENAI ? "a string or an array of strings" : "an array of strings", v);
    size_t i;
    const json_t *x;
    char field[96];
    json_array_foreach(v, i, x) {
        snprintf(field, sizeof field, "%s[%zu]", key, i);
        if (add_stop(p, field, x) != 0) return -1;
    }
    return 0;
}

static int set_kwarg(pctx *p, const char *key, json_t *value) {
    if (!value) return oom(p);
    if (!p->c->kwargs && !(p->c->kwargs = json_object())) {
        json_decref(value);
        return oom(p);
    }
    return json_object_set_new(p->c->kwargs, key, value) == 0 ? 0 : oom(p);
}

/* Fields both APIs share: model, stream, sampling, the test-only forced output. */
static int common_fields(pctx *p, const json_t *root) {
    srv_chat *c = p->c;
    const char *model, *forced;
    if (get_string(p, root, "model", "model", &model) != 0) return -1;
    if (model && !(c->model = strdup(model))) return oom(p);
    int st = get_bool(p, root, "stream");
    if (st < 0) return -1;
    c->stream = st;
    lazymoe_sampling *s = &c->sampling;
    if (get_number(p, root, "temperature", 0, 100, &s->temperature, SRV_SET_TEMPERATURE) ||
        get_number(p, root, "top_p", 0, 1, &s->top_p, SRV_SET_TOP_P) ||
        get_number(p, root, "min_p", 0, 1, &s->min_p, SRV_SET_MIN_P) ||
        get_number(p, root, "repetition_penalty", 1e-6, 100, &s->repetition_penalty, SRV_SET_REPETITION) ||
        get_number(p, root, "presence_penalty", -2, 2, &s->presence_penalty, SRV_SET_PRESENCE) ||
        get_number(p, root, "frequency_penalty", -2, 2, &s->frequency_penalty, SRV_SET_FREQUENCY))
        return -1;
    if (c->set & SRV_SET_TOP_P && s->top_p <= 0) s->top_p = 1e-6f; /* 0 means "only the top token" */
    long long x = 0;
    int r = get_int(p, root, "top_k", -1, 1 << 30, &x);
    if (r < 0) return -1;
    if (r) {
        s->top_k = x > 0 ? (int)x : 0; /* -1 and 0: off */
        c->set |= SRV_SET_TOP_K;
    }
    if ((r = get_int(p, root, "seed", -(1LL << 62), 1LL << 62, &x)) < 0) return -1;
    if (r) {
        s->seed = (uint64_t)x;
        c->set |= SRV_SET_SEED;
    }
    if (get_string(p, root, "lazymoe_forced_output", "lazymoe_forced_output", &forced) != 0) return -1;
    if (forced && !(c->forced_output = strdup(forced))) return oom(p);
    return 0;
}

/* The start of every API's parser: a cleared request of that API (no output limit
 * asked for yet), the body loaded and its common fields read. The root object, or
 * NULL with e filled and c freed. */
static json_t *parse_begin(pctx *p, srv_api api, const char *body, size_t len, srv_chat *c, srv_error *e) {
    memset(e, 0, sizeof *e);
    memset(c, 0, sizeof *c);
    c->api = api;
    c->max_tokens = -1;
    *p = (pctx){api, e, c};
    json_t *root = load_body(p, body, len);
    if (root && common_fields(p, root) != 0) {
        json_decref(root);
        srv_chat_free(c);
        return NULL;
    }
    return root;
}

/* The end of every API's parser: root released; on failure (rc != 0) the request is
 * freed, on success tools the client ruled out (tool_choice none) are dropped, so the
 * template does not offer them. Returns rc. */
static int parse_finish(pctx *p, json_t *root, int rc) {
    srv_chat *c = p->c;
    json_decref(root);
    if (rc) {
        srv_chat_free(c);
    } else if (c->tool_choice == SRV_TOOLS_NONE) {
        json_decref(c->tools);
        c->tools = NULL;
    }
    return rc;
}

/* ---- message content ------------------------------------------------------------- */

/* Text of an OpenAI content (string, null or array of parts) or an Anthropic
 * tool_result content (string or blocks): parts joined by "\n". */
static int content_text(pctx *p, const json_t *v, const char *field, srv_buf *out) {
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        srv_buf_append(out, json_string_value(v), json_string_length(v));
        return 0;
    }
    if (!json_is_array(v)) return bad_type(p, field, "a string or an array of content parts", v);
    size_t i;
    const json_t *part;
    char f[160];
    int first = 1;
    json_array_foreach(v, i, part) {
        snprintf(f, sizeof f, "%s[%zu]", field, i);
        if (!json_is_object(part)) return bad_type(p, f, "an object", part);
        const char *type, *text;
        char ft[176];
        snprintf(ft, sizeof ft, "%s.type", f);
        if (get_string(p, part, "type", ft, &type) != 0) return -1;
        if (!type) return srv_fail(p->e, p->api, 400, ft, "%s is missing", ft);
        if (strcmp(type, "text") != 0 && strcmp(type, "input_text") != 0)
            return srv_fail(p->e, p->api, 400, ft, "%s: content of type \"%s\" is not supported (this server reads text only)",
                            ft, type);
        snprintf(ft, sizeof ft, "%s.text", f);
        if (get_string(p, part, "text", ft, &text) != 0) return -1;
        if (!text) return srv_fail(p->e, p->api, 400, ft, "%s is missing", ft);
        if (!first) srv_buf_puts(out, "\n");
        srv_buf_append(out, text, json_string_length(json_object_get(part, "text")));
        first = 0;
    }
    return 0;
}

static json_t *text_message(const char *role, const srv_buf *text) {
    return json_pack("{s:s, s:s#}", "role", role, "content", text->data ? text->data : "", text->len);
}

static int append_msg(pctx *p, json_t *msg) {
    if (!msg || json_array_append_new(p->c->messages, msg) != 0) return oom(p);
    return 0;
}

/* Tool-call arguments for the template: an object. OpenAI sends a JSON string. */
static json_t *arguments_object(pctx *p, const json_t *args, const char *field) {
    if (!args || json_is_null(args)) return json_object();
    if (json_is_object(args)) return json_deep_copy(args);
    if (!json_is_string(args)) {
        bad_type(p, field, "a JSON string", args);
        return NULL;
    }
    const char *s = json_string_value(args);
    size_t n = json_string_length(args);
    while (n && (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')) s++, n--;
    if (!n) return json_object();
    json_error_t je;
    json_t *o = json_loadb(s, n, JSON_ALLOW_NUL, &je);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        srv_fail(p->e, p->api, 400, field, "%s must be a JSON object encoded as a string", field);
        return NULL;
    }
    return o;
}

/* ---- OpenAI ------------------------------------------------------------------------ */

static int openai_tool_calls(pctx *p, const json_t *calls, const char *field, json_t *msg) {
    if (!json_is_array(calls)) return bad_type(p, field, "an array", calls);
    json_t *out = json_array();
    if (!out || json_object_set_new(msg, "tool_calls", out) != 0) return oom(p);
    size_t i;
    const json_t *tc;
    char f[160], g[200];
    json_array_foreach(calls, i, tc) {
        snprintf(f, sizeof f, "%s[%zu]", field, i);
        if (!json_is_object(tc)) return bad_type(p, f, "an object", tc);
        const json_t *fn = json_object_get(tc, "function");
        snprintf(g, sizeof g, "%s.function", f);
        if (!json_is_object(fn)) return fn ? bad_type(p, g, "an object", fn) : srv_fail(p->e, p->api, 400, g, "%s is missing", g);
        const char *id, *name;
        snprintf(g, sizeof g, "%s.id", f);
        if (get_string(p, tc, "id", g, &id) != 0) return -1;
        snprintf(g, sizeof g, "%s.function.name", f);
        if (get_string(p, fn, "name", g, &name) != 0) return -1;
        if (!name) return srv_fail(p->e, p->api, 400, g, "%s is missing", g);
        snprintf(g, sizeof g, "%s.function.arguments", f);
        json_t *args = arguments_object(p, json_object_get(fn, "arguments"), g);
        if (!args) return -1;
        json_t *call = json_pack("{s:s, s:s, s:{s:s, s:o}}", "id", id ? id : "", "type", "function", "function",
                                 "name", name, "arguments", args);
        if (!call || json_array_append_new(out, call) != 0) return oom(p);
    }
    return 0;
}

static int openai_message(pctx *p, const json_t *m, size_t i) {
    char f[64], g[96];
    snprintf(f, sizeof f, "messages[%zu]", i);
    if (!json_is_object(m)) return bad_type(p, f, "an object", m);
    const char *role;
    snprintf(g, sizeof g, "%s.role", f);
    if (get_string(p, m, "role", g, &role) != 0) return -1;
    if (!role) return srv_fail(p->e, p->api, 400, g, "%s is missing", g);
    if (!strcmp(role, "developer")) role = "system";
    if (strcmp(role, "system") != 0 && strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0 &&
        strcmp(role, "tool") != 0)
        return srv_fail(p->e, p->api, 400, g, "%s: unknown role \"%s\" (system, developer, user, assistant, tool)", g, role);
    srv_buf text = {0};
    snprintf(g, sizeof g, "%s.content", f);
    if (content_text(p, json_object_get(m, "content"), g, &text) != 0) {
        srv_buf_free(&text);
        return -1;
    }
    json_t *msg = text_message(role, &text);
    int bad = text.failed;
    srv_buf_free(&text);
    if (!msg || bad) {
        json_decref(msg);
        return oom(p);
    }
    int rc = 0;
    if (!strcmp(role, "assistant")) {
        const json_t *calls = json_object_get(m, "tool_calls");
        snprintf(g, sizeof g, "%s.tool_calls", f);
        if (calls && !json_is_null(calls)) rc = openai_tool_calls(p, calls, g, msg);
        const char *reasoning = NULL, *reasoning_key = "reasoning_content";
        if (!rc) rc = get_string(p, m, "reasoning_content", "reasoning_content", &reasoning);
        if (!rc && !reasoning) rc = get_string(p, m, reasoning_key = "reasoning", "reasoning", &reasoning);
        if (!rc && reasoning && json_object_set_new(msg, "reasoning_content", json_copy(json_object_get(m, reasoning_key))) != 0)
            rc = oom(p);
    } else if (!strcmp(role, "tool")) {
        const char *id;
        snprintf(g, sizeof g, "%s.tool_call_id", f);
        rc = get_string(p, m, "tool_call_id", g, &id);
        if (!rc && id && json_object_set_new(msg, "tool_call_id", json_string(id)) != 0) rc = oom(p);
    }
    if (rc) {
        json_decref(msg);
        return -1;
    }
    return append_msg(p, msg);
}

static int openai_tools(pctx *p, const json_t *tools) {
    if (!tools || json_is_null(tools)) return 0;
    if (!json_is_array(tools)) return bad_type(p, "tools", "an array", tools);
    size_t i;
    const json_t *t;
    char f[64], g[96];
    json_array_foreach(tools, i, t) {
        snprintf(f, sizeof f, "tools[%zu]", i);
        if (!json_is_object(t)) return bad_type(p, f, "an object", t);
        const char *type, *name;
        snprintf(g, sizeof g, "%s.type", f);
        if (get_string(p, t, "type", g, &type) != 0) return -1;
        if (type && strcmp(type, "function") != 0)
            return srv_fail(p->e, p->api, 400, g, "%s: only \"function\" tools are supported, got \"%s\"", g, type);
        const json_t *fn = json_object_get(t, "function");
        snprintf(g, sizeof g, "%s.function", f);
        if (!json_is_object(fn)) return fn ? bad_type(p, g, "an object", fn) : srv_fail(p->e, p->api, 400, g, "%s is missing", g);
        snprintf(g, sizeof g, "%s.function.name", f);
        if (get_string(p, fn, "name", g, &name) != 0) return -1;
        if (!name || !*name) return srv_fail(p->e, p->api, 400, g, "%s is missing", g);
        const json_t *params = json_object_get(fn, "parameters");
        snprintf(g, sizeof g, "%s.function.parameters", f);
        if (params && !json_is_null(params) && !json_is_object(params)) return bad_type(p, g, "an object", params);
    }
    if (!json_array_size(tools)) return 0;
    if (!(p->c->tools = json_deep_copy(tools))) return oom(p);
    return 0;
}

static int openai_tool_choice(pctx *p, const json_t *v) {
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcmp(s, "none")) p->c->tool_choice = SRV_TOOLS_NONE;
        else if (!strcmp(s, "required")) p->c->tool_choice = SRV_TOOLS_REQUIRED;
        else if (strcmp(s, "auto") != 0)
            return srv_fail(p->e, p->api, 400, "tool_choice", "tool_choice: expected \"none\", \"auto\" or \"required\", got \"%s\"", s);
        return 0;
    }
    if (!json_is_object(v)) return bad_type(p, "tool_choice", "a string or an object", v);
    const char *type, *name = NULL;
    if (get_string(p, v, "type", "tool_choice.type", &type) != 0) return -1;
    if (type && strcmp(type, "function") != 0)
        return srv_fail(p->e, p->api, 400, "tool_choice.type", "tool_choice.type: expected \"function\", got \"%s\"", type);
    const json_t *fn = json_object_get(v, "function");
    if (fn && !json_is_object(fn)) return bad_type(p, "tool_choice.function", "an object", fn);
    if (fn && get_string(p, fn, "name", "tool_choice.function.name", &name) != 0) return -1;
    if (!name) return srv_fail(p->e, p->api, 400, "tool_choice.function.name", "tool_choice.function.name is missing");
    p->c->tool_choice = SRV_TOOLS_REQUIRED;
    if (!(p->c->tool_name = strdup(name))) return oom(p);
    return 0;
}

/* The output format: "field" is an object {"type": ..., schema at schema_key}. */
static int output_format(pctx *p, const json_t *v, const char *field) {
    if (!v || json_is_null(v)) return 0;
    char f[128];
    if (!json_is_object(v)) return bad_type(p, field, "an object", v);
    const char *type;
    snprintf(f, sizeof f, "%s.type", field);
    if (get_string(p, v, "type", f, &type) != 0) return -1;
    if (!type) return srv_fail(p->e, p->api, 400, f, "%s is missing", f);
    srv_chat *c = p->c;
    if (!strcmp(type, "text")) return 0;
    if (!strcmp(type, "json_object")) {
        c->format = SRV_FORMAT_JSON_OBJECT;
        snprintf(c->format_field, sizeof c->format_field, "%.60s", field);
        return 0;
    }
    if (strcmp(type, "json_schema") != 0)
        return srv_fail(p->e, p->api, 400, f, "%s: expected %s, got \"%s\"", f,
                        p->api == SRV_OPENAI ? "\"text\", \"json_object\" or \"json_schema\"" : "\"json_schema\"", type);
    /* OpenAI nests {name, schema, strict} under "json_schema"; Anthropic puts schema beside type */
    const json_t *holder = v;
    char hf[64];
    snprintf(hf, sizeof hf, "%.40s", field);
    if (p->api == SRV_OPENAI) {
        holder = json_object_get(v, "json_schema");
        snprintf(hf, sizeof hf, "%.40s.json_schema", field);
        if (!holder) return srv_fail(p->e, p->api, 400, hf, "%s is missing", hf);
        if (!json_is_object(holder)) return bad_type(p, hf, "an object", holder);
    }
    const json_t *schema = json_object_get(holder, "schema");
    snprintf(f, sizeof f, "%s.schema", hf);
    if (!schema) return srv_fail(p->e, p->api, 400, f, "%s is missing", f);
    if (!json_is_object(schema) && !json_is_boolean(schema)) return bad_type(p, f, "a JSON schema object", schema);
    if (!(c->schema = json_deep_copy(schema))) return oom(p);
    c->format = SRV_FORMAT_JSON_SCHEMA;
    snprintf(c->format_field, sizeof c->format_field, "%s", f);
    return 0;
}

/* logprobs (bool) and top_logprobs (0..20, only with logprobs), as OpenAI checks them. */
static int logprobs_fields(pctx *p, const json_t *root) {
    int r = get_bool(p, root, "logprobs");
    if (r < 0) return -1;
    p->c->logprobs = r == 1;
    long long x = 0;
    int t = get_int(p, root, "top_logprobs", 0, LAZYMOE_MAX_TOP_LOGPROBS, &x);
    if (t < 0) return -1;
    if (t && !p->c->logprobs && x > 0)
        return srv_fail(p->e, p->api, 400, "top_logprobs", "top_logprobs requires logprobs to be true");
    p->c->top_logprobs = (int)x;
    return 0;
}

int srv_parse_openai(const char *body, size_t len, srv_chat *c, srv_error *e) {
    pctx p;
    json_t *root = parse_begin(&p, SRV_OPENAI, body, len, c, e);
    if (!root) return -1;
    int rc = -1;
    const json_t *msgs = json_object_get(root, "messages");
    long long x = 0;
    int r;
    if (!msgs) {
        srv_fail(e, p.api, 400, "messages", "messages is missing");
        goto done;
    }
    if (!json_is_array(msgs)) {
        bad_type(&p, "messages", "an array", msgs);
        goto done;
    }
    if (!json_array_size(msgs)) {
        srv_fail(e, p.api, 400, "messages", "messages must not be empty");
        goto done;
    }
    if (!(c->messages = json_array())) {
        oom(&p);
        goto done;
    }
    for (size_t i = 0; i < json_array_size(msgs); i++)
        if (openai_message(&p, json_array_get(msgs, i), i) != 0) goto done;
    if (openai_tools(&p, json_object_get(root, "tools")) != 0 ||
        openai_tool_choice(&p, json_object_get(root, "tool_choice")) != 0 ||
        output_format(&p, json_object_get(root, "response_format"), "response_format") != 0 ||
        logprobs_fields(&p, root) != 0)
        goto done;
    if ((r = get_int(&p, root, "max_completion_tokens", 1, 1 << 30, &x)) < 0) goto done;
    if (r) c->max_tokens = (int)x;
    if ((r = get_int(&p, root, "max_tokens", 1, 1 << 30, &x)) < 0) goto done;
    if (r && c->max_tokens < 0) c->max_tokens = (int)x;
    if ((r = get_int(&p, root, "n", 1, 1 << 30, &x)) < 0) goto done;
    if (r && x != 1) {
        srv_fail(e, p.api, 400, "n", "n: only one choice per request is supported");
        goto done;
    }
    if (get_stops(&p, root, "stop") != 0) goto done;
    const json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) {
            bad_type(&p, "stream_options", "an object", so);
            goto done;
        }
        const json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu)) {
            bad_type(&p, "stream_options.include_usage", "a boolean", iu);
            goto done;
        }
        c->include_usage = json_is_true(iu);
    }
    const json_t *kw = json_object_get(root, "chat_template_kwargs");
    if (kw && !json_is_null(kw)) {
        if (!json_is_object(kw)) {
            bad_type(&p, "chat_template_kwargs", "an object", kw);
            goto done;
        }
        if (!(c->kwargs = json_deep_copy(kw))) {
            oom(&p);
            goto done;
        }
    }
    const char *effort;
    if (get_string(&p, root, "reasoning_effort", "reasoning_effort", &effort) != 0) goto done;
    if (effort && set_kwarg(&p, "reasoning_effort", json_string(effort)) != 0) goto done;
    rc = 0;
done:
    return parse_finish(&p, root, rc);
}

/* ---- Anthropic --------------------------------------------------------------------- */

static int is_billing_block(const char *text) {
    return !strncmp(text, SRV_BILLING_HEADER, strlen(SRV_BILLING_HEADER));
}

/* system: a string or text blocks, joined by "\n" (the billing header block dropped). */
static int anthropic_system(pctx *p, const json_t *sys, srv_buf *out) {
    if (!sys || json_is_null(sys)) return 0;
    if (json_is_string(sys)) {
        if (!is_billing_block(json_string_value(sys))) srv_buf_append(out, json_string_value(sys), json_string_length(sys));
        return 0;
    }
    if (!json_is_array(sys)) return bad_type(p, "system", "a string or an array of text blocks", sys);
    size_t i;
    const json_t *b;
    char f[64];
    json_array_foreach(sys, i, b) {
        snprintf(f, sizeof f, "system[%zu]", i);
        if (!json_is_object(b)) return bad_type(p, f, "an object", b);
        const char *type, *text;
        char g[96];
        snprintf(g, sizeof g, "%s.type", f);
        if (get_string(p, b, "type", g, &type) != 0) return -1;
        if (type && strcmp(type, "text") != 0)
            return srv_fail(p->e, p->api, 400, g, "%s: system blocks must be text, got \"%s\"", g, type);
        snprintf(g, sizeof g, "%s.text", f);
        if (get_string(p, b, "text", g, &text) != 0) return -1;
        if (!text) return srv_fail(p->e, p->api, 400, g, "%s is missing", g);
        if (is_billing_block(text)) continue;
        if (out->len) srv_buf_puts(out, "\n");
        srv_buf_append(out, text, json_string_length(json_object_get(b, "text")));
    }
    return 0;
}

static int flush_text(pctx *p, const char *role, srv_buf *text, int *pending) {
    if (!*pending) return 0;
    json_t *msg = text_message(role, text);
    srv_buf_reset(text);
    *pending = 0;
    return append_msg(p, msg);
}

/* tool_result content: a string or blocks (text only); is_error marks the text. */
static int tool_result(pctx *p, const json_t *b, const char *f) {
    const char *id;
    char g[200];
    snprintf(g, sizeof g, "%s.tool_use_id", f);
    if (get_string(p, b, "tool_use_id", g, &id) != 0) return -1;
    if (!id) return srv_fail(p->e, p->api, 400, g, "%s is missing", g);
    snprintf(g, sizeof g, "%s.is_error", f);
    const json_t *ie = json_object_get(b, "is_error");
    if (ie && !json_is_null(ie) && !json_is_boolean(ie)) return bad_type(p, g, "a boolean", ie);
    srv_buf text = {0};
    if (json_is_true(ie)) srv_buf_puts(&text, "Error: ");
    snprintf(g, sizeof g, "%s.content", f);
    if (content_text(p, json_object_get(b, "content"), g, &text) != 0) {
        srv_buf_free(&text);
        return -1;
    }
    json_t *msg = json_pack("{s:s, s:s#, s:s}", "role", "tool", "content", text.data ? text.data : "", text.len,
                            "tool_call_id", id);
    int bad = text.failed;
    srv_buf_free(&text);
    if (bad) {
        json_decref(msg);
        return oom(p);
    }
    return append_msg(p, msg);
}

static int anthropic_message(pctx *p, const json_t *m, size_t i) {
    char f[64], g[96];
    snprintf(f, sizeof f, "messages[%zu]", i);
    if (!json_is_object(m)) return bad_type(p, f, "an object", m);
    const char *role;
    snprintf(g, sizeof g, "%s.role", f);
    if (get_string(p, m, "role", g, &role) != 0) return -1;
    if (!role) return srv_fail(p->e, p->api, 400, g, "%s is missing", g);
    if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0 && strcmp(role, "system") != 0)
        return srv_fail(p->e, p->api, 400, g, "%s: unknown role \"%s\" (user, assistant, system)", g, role);
    const json_t *content = json_object_get(m, "content");
    snprintf(g, sizeof g, "%s.content", f);
    if (!content) return srv_fail(p->e, p->api, 400, g, "%s is missing", g);
    if (json_is_string(content)) {
        srv_buf text = {0};
        srv_buf_append(&text, json_string_value(content), json_string_length(content));
        json_t *msg = text_message(role, &text);
        int bad = text.failed;
        srv_buf_free(&text);
        if (bad) json_decref(msg);
        return bad ? oom(p) : append_msg(p, msg);
    }
    if (!json_is_array(content)) return bad_type(p, g, "a string or an array of content blocks", content);
    int is_assistant = !strcmp(role, "assistant");
    srv_buf text = {0}, thinking = {0};
    json_t *calls = NULL;
    int pending = 0, rc = -1;
    size_t k;
    const json_t *b;
    json_array_foreach(content, k, b) {
        char bf[128], h[200];
        snprintf(bf, sizeof bf, "%s.content[%zu]", f, k);
        if (!json_is_object(b)) {
            bad_type(p, bf, "an object", b);
            goto done;
        }
        const char *type;
        snprintf(h, sizeof h, "%s.type", bf);
        if (get_string(p, b, "type", h, &type) != 0) goto done;
        if (!type) {
            srv_fail(p->e, p->api, 400, h, "%s is missing", h);
            goto done;
        }
        if (!strcmp(type, "text")) {
            const char *t;
            snprintf(h, sizeof h, "%s.text", bf);
            if (get_string(p, b, "text", h, &t) != 0) goto done;
            if (!t) {
                srv_fail(p->e, p->api, 400, h, "%s is missing", h);
                goto done;
            }
            if (!is_assistant && !pending) srv_buf_reset(&text);
            if (text.len) srv_buf_puts(&text, "\n");
            srv_buf_append(&text, t, json_string_length(json_object_get(b, "text")));
            pending = 1;
        } else if (!strcmp(type, "tool_result") && !is_assistant) {
            if (flush_text(p, role, &text, &pending) != 0 || tool_result(p, b, bf) != 0) goto done;
        } else if (!strcmp(type, "tool_use") && is_assistant) {
            const char *id, *name;
            snprintf(h, sizeof h, "%s.id", bf);
            if (get_string(p, b, "id", h, &id) != 0) goto done;
            snprintf(h, sizeof h, "%s.name", bf);
            if (get_string(p, b, "name", h, &name) != 0) goto done;
            if (!name) {
                srv_fail(p->e, p->api, 400, h, "%s is missing", h);
                goto done;
            }
            const json_t *input = json_object_get(b, "input");
            snprintf(h, sizeof h, "%s.input", bf);
            if (input && !json_is_null(input) && !json_is_object(input)) {
                bad_type(p, h, "an object", input);
                goto done;
            }
            json_t *call = json_pack("{s:s, s:s, s:{s:s, s:o}}", "id", id ? id : "", "type", "function", "function",
                                     "name", name, "arguments", input ? json_deep_copy(input) : json_object());
            if (!call || ((!calls && !(calls = json_array())) || json_array_append_new(calls, call) != 0)) {
                oom(p);
                goto done;
            }
        } else if (!strcmp(type, "thinking") && is_assistant) {
            const char *t;
            snprintf(h, sizeof h, "%s.thinking", bf);
            if (get_string(p, b, "thinking", h, &t) != 0) goto done;
            if (t) srv_buf_append(&thinking, t, json_string_length(json_object_get(b, "thinking")));
        } else if (!strcmp(type, "redacted_thinking")) {
            continue; /* opaque to any model but Claude */
        } else {
            srv_fail(p->e, p->api, 400, h, "%s: content blocks of type \"%s\" are not supported in %s messages", h,
                     type, role);
            goto done;
        }
    }
    if (is_assistant) {
        json_t *msg = text_message(role, &text);
        if (msg && thinking.len && json_object_set_new(msg, "reasoning_content", json_stringn(thinking.data, thinking.len)) != 0) {
            json_decref(msg);
            msg = NULL;
        }
        if (msg && calls) {
            if (json_object_set_new(msg, "tool_calls", calls) != 0) {
                json_decref(msg);
                msg = NULL;
            }
            calls = NULL;
        }
        if (append_msg(p, msg) != 0) goto done;
    } else if (flush_text(p, role, &text, &pending) != 0) {
        goto done;
    }
    rc = text.failed || thinking.failed ? oom(p) : 0;
done:
    json_decref(calls);
    srv_buf_free(&text);
    srv_buf_free(&thinking);
    return rc;
}

static int anthropic_tools(pctx *p, const json_t *tools) {
    if (!tools || json_is_null(tools)) return 0;
    if (!json_is_array(tools)) return bad_type(p, "tools", "an array", tools);
    json_t *out = json_array();
    if (!out) return oom(p);
    size_t i;
    const json_t *t;
    char f[64], g[96];
    json_array_foreach(tools, i, t) {
        snprintf(f, sizeof f, "tools[%zu]", i);
        if (!json_is_object(t)) {
            json_decref(out);
            return bad_type(p, f, "an object", t);
        }
        const char *name, *desc;
        snprintf(g, sizeof g, "%s.name", f);
        if (get_string(p, t, "name", g, &name) != 0) goto fail;
        if (!name || !*name) {
            srv_fail(p->e, p->api, 400, g, "%s is missing", g);
            goto fail;
        }
        snprintf(g, sizeof g, "%s.description", f);
        if (get_string(p, t, "description", g, &desc) != 0) goto fail;
        const json_t *schema = json_object_get(t, "input_schema");
        snprintf(g, sizeof g, "%s.input_schema", f);
        if (schema && !json_is_null(schema) && !json_is_object(schema)) {
            bad_type(p, g, "an object", schema);
            goto fail;
        }
        json_t *fn = json_pack("{s:s}", "name", name);
        if (fn && desc) json_object_set_new(fn, "description", json_string(desc));
        if (fn)
            json_object_set_new(fn, "parameters",
                                json_is_object(schema) ? json_deep_copy(schema) : json_pack("{s:s, s:{}}", "type", "object", "properties"));
        json_t *tool = fn ? json_pack("{s:s, s:o}", "type", "function", "function", fn) : NULL;
        if (!tool || json_array_append_new(out, tool) != 0) {
            oom(p);
            goto fail;
        }
    }
    if (json_array_size(out)) p->c->tools = out;
    else json_decref(out);
    return 0;
fail:
    json_decref(out);
    return -1;
}

static int anthropic_tool_choice(pctx *p, const json_t *v) {
    if (!v || json_is_null(v)) return 0;
    if (!json_is_object(v)) return bad_type(p, "tool_choice", "an object", v);
    const char *type;
    if (get_string(p, v, "type", "tool_choice.type", &type) != 0) return -1;
    if (!type) return srv_fail(p->e, p->api, 400, "tool_choice.type", "tool_choice.type is missing");
    if (!strcmp(type, "none")) p->c->tool_choice = SRV_TOOLS_NONE;
    else if (!strcmp(type, "any") || !strcmp(type, "tool")) p->c->tool_choice = SRV_TOOLS_REQUIRED;
    else if (strcmp(type, "auto") != 0)
        return srv_fail(p->e, p->api, 400, "tool_choice.type", "tool_choice.type: expected auto, any, tool or none, got \"%s\"", type);
    if (!strcmp(type, "tool")) {
        const char *name;
        if (get_string(p, v, "name", "tool_choice.name", &name) != 0) return -1;
        if (!name) return srv_fail(p->e, p->api, 400, "tool_choice.name", "tool_choice.name is missing");
        if (!(p->c->tool_name = strdup(name))) return oom(p);
    }
    return 0;
}

int srv_parse_anthropic(const char *body, size_t len, srv_chat *c, srv_error *e) {
    pctx p;
    json_t *root = parse_begin(&p, SRV_ANTHROPIC, body, len, c, e);
    if (!root) return -1;
    int rc = -1, r;
    long long x = 0;
    srv_buf sys = {0};
    const json_t *msgs = json_object_get(root, "messages");
    if (!msgs) {
        srv_fail(e, p.api, 400, "messages", "messages: Field required");
        goto done;
    }
    if (!json_is_array(msgs)) {
        bad_type(&p, "messages", "an array", msgs);
        goto done;
    }
    if (!(c->messages = json_array())) {
        oom(&p);
        goto done;
    }
    if (anthropic_system(&p, json_object_get(root, "system"), &sys) != 0) goto done;
    if (sys.failed) {
        oom(&p);
        goto done;
    }
    if (sys.len && append_msg(&p, text_message("system", &sys)) != 0) goto done;
    for (size_t i = 0; i < json_array_size(msgs); i++)
        if (anthropic_message(&p, json_array_get(msgs, i), i) != 0) goto done;
    if (!json_array_size(c->messages)) {
        srv_fail(e, p.api, 400, "messages", "messages: at least one message is required");
        goto done;
    }
    if (anthropic_tools(&p, json_object_get(root, "tools")) != 0 ||
        anthropic_tool_choice(&p, json_object_get(root, "tool_choice")) != 0)
        goto done;
    const json_t *oc = json_object_get(root, "output_config");
    if (oc && !json_is_null(oc)) {
        if (!json_is_object(oc)) {
            bad_type(&p, "output_config", "an object", oc);
            goto done;
        }
        if (output_format(&p, json_object_get(oc, "format"), "output_config.format") != 0) goto done;
    }
    if (!c->format && output_format(&p, json_object_get(root, "output_format"), "output_format") != 0) goto done;
    if ((r = get_int(&p, root, "max_tokens", 1, 1 << 30, &x)) < 0) goto done;
    if (r) c->max_tokens = (int)x;
    if (get_stops(&p, root, "stop_sequences") != 0) goto done;
    const json_t *th = json_object_get(root, "thinking");
    if (th && !json_is_null(th)) {
        const char *type;
        if (!json_is_object(th)) {
            bad_type(&p, "thinking", "an object", th);
            goto done;
        }
        if (get_string(&p, th, "type", "thinking.type", &type) != 0) goto done;
        if (type && (!strcmp(type, "enabled") || !strcmp(type, "disabled")) &&
            set_kwarg(&p, "enable_thinking", json_boolean(!strcmp(type, "enabled"))) != 0)
            goto done;
        /* The budget as a reasoning effort (gpt-oss's template variable): under 4096
         * tokens low, under 16384 medium, else high. */
        long long budget = 0;
        int got = get_int(&p, th, "budget_tokens", 0, 1 << 30, &budget);
        if (got < 0) goto done;
        if (got && type && !strcmp(type, "enabled") &&
            set_kwarg(&p, "reasoning_effort", json_string(budget < 4096 ? "low" : budget < 16384 ? "medium" : "high")) != 0)
            goto done;
    }
    rc = 0;
done:
    srv_buf_free(&sys);
    return parse_finish(&p, root, rc);
}

void srv_chat_free(srv_chat *c) {
    json_decref(c->messages);
    json_decref(c->tools);
    json_decref(c->kwargs);
    free(c->model);
    for (int i = 0; i < c->n_stop; i++) free(c->stop[i]);
    free(c->stop);
    free(c->forced_output);
    free(c->tool_name);
    json_decref(c->schema);
    json_decref(c->response_format);
    free(c->tool_choice_name);
    json_decref(c->freeform_tools);
    memset(c, 0, sizeof *c);
}

/* ---- the helpers other request parsers share (parse.h) -------------------------------- */

int srv_p_bad_type(srv_pctx *p, const char *field, const char *want, const json_t *got) {
    return bad_type(p, field, want, got);
}
int srv_p_oom(srv_pctx *p) { return oom(p); }
int srv_p_int(srv_pctx *p, const json_t *obj, const char *key, long long lo, long long hi, long long *out) {
    return get_int(p, obj, key, lo, hi, out);
}
int srv_p_bool(srv_pctx *p, const json_t *obj, const char *key) { return get_bool(p, obj, key); }
int srv_p_string(srv_pctx *p, const json_t *obj, const char *key, const char *field, const char **out) {
    return get_string(p, obj, key, field, out);
}
json_t *srv_p_begin(srv_pctx *p, srv_api api, const char *body, size_t len, srv_chat *c, srv_error *e) {
    return parse_begin(p, api, body, len, c, e);
}
int srv_p_finish(srv_pctx *p, json_t *root, int rc) { return parse_finish(p, root, rc); }
int srv_p_set_kwarg(srv_pctx *p, const char *key, json_t *value) { return set_kwarg(p, key, value); }
json_t *srv_p_arguments_object(srv_pctx *p, const json_t *args, const char *field) {
    return arguments_object(p, args, field);
}
int srv_p_append_msg(srv_pctx *p, json_t *msg) { return append_msg(p, msg); }

/* ---- prompt ------------------------------------------------------------------------- */

int srv_build_prompt(const lazymoe_model *m, const srv_chat *c, int max_ids, char **prompt, size_t *prompt_len,
                     int32_t **ids, int *n_ids, srv_error *e) {
    char err[512];
    *prompt = NULL;
    *ids = NULL;
    *n_ids = 0;
    /* gpt-oss's template reads an assistant turn's earlier reasoning from "thinking"
     * (it shows it again before that turn's tool call): every API's reasoning arrives
     * here as reasoning_content. */
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    if (!strcmp(info.model_type, "gpt_oss")) {
        size_t i;
        json_t *msg;
        json_array_foreach(c->messages, i, msg) {
            json_t *rc_ = json_object_get(msg, "reasoning_content");
            if (rc_ && !json_object_get(msg, "thinking") && json_object_set(msg, "thinking", rc_) != 0) {
                srv_fail(e, c->api, 500, NULL, "out of memory");
                return -1;
            }
        }
    }
    char *mj = json_dumps(c->messages, JSON_COMPACT);
    char *tj = c->tools ? json_dumps(c->tools, JSON_COMPACT) : NULL;
    char *kj = c->kwargs ? json_dumps(c->kwargs, JSON_COMPACT) : NULL;
    int rc = -1;
    if (!mj || (c->tools && !tj) || (c->kwargs && !kj)) {
        srv_fail(e, c->api, 500, NULL, "out of memory");
        goto done;
    }
    size_t len = 0;
    int frc = lazymoe_chat_format_n(m, mj, tj, 1, kj, prompt, &len, err, sizeof err);
    if (frc == LAZYMOE_TEMPLATE_REFUSED) { /* the template's own check of the messages */
        srv_fail(e, c->api, 400, "messages", "the model's chat template refuses these messages: %s", err);
        goto done;
    }
    if (frc == LAZYMOE_TEMPLATE_TOO_LARGE) {
        srv_fail(e, c->api, 413, "messages", "the messages are too large to render: %s", err);
        goto done;
    }
    if (frc != 0) { /* the model's template failed: the server's fault, not the client's */
        srv_fail(e, c->api, 500, NULL, "the model's chat template failed on this request: %s", err);
        goto done;
    }
    if (prompt_len) *prompt_len = len;
    if (lazymoe_tokenize_max(m, *prompt, len, 0, max_ids, ids, n_ids, err, sizeof err) != 0) {
        srv_fail(e, c->api, 400, "messages", "cannot tokenize the prompt: %s", err);
        lazymoe_free(*prompt);
        *prompt = NULL;
        goto done;
    }
    rc = 0;
done:
    free(mj);
    free(tj);
    free(kj);
    return rc;
}

void srv_chat_sampling(const srv_chat *c, const lazymoe_model *m, lazymoe_sampling *out) {
    lazymoe_sampling_init(out, m);
    const lazymoe_sampling *s = &c->sampling;
    if (c->set & SRV_SET_TEMPERATURE) out->temperature = s->temperature;
    if (c->set & SRV_SET_TOP_P) out->top_p = s->top_p;
    if (c->set & SRV_SET_TOP_K) out->top_k = s->top_k;
    if (c->set & SRV_SET_MIN_P) out->min_p = s->min_p;
    if (c->set & SRV_SET_REPETITION) out->repetition_penalty = s->repetition_penalty;
    if (c->set & SRV_SET_PRESENCE) out->presence_penalty = s->presence_penalty;
    if (c->set & SRV_SET_FREQUENCY) out->frequency_penalty = s->frequency_penalty;
    if (c->set & SRV_SET_SEED) {
        out->seed = s->seed;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        out->seed = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    }
}

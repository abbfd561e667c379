/* OpenAI Responses API request bodies (POST /v1/responses) -> srv_chat.
 *
 * The Responses API says in items what chat completions says in messages:
 *   instructions                    -> a system message first
 *   input: "text"                   -> one user message
 *   input items:
 *     message {role, content}       -> a message (developer -> system); content a
 *                                      string or input_text / output_text / refusal parts
 *     reasoning {summary, content}  -> reasoning_content of the next assistant message
 *     function_call {call_id, name, arguments}
 *     custom_tool_call {call_id, name, input}
 *                                   -> tool_calls of an assistant message (calls in a row
 *                                      share one; a custom call's raw input becomes
 *                                      {"input": TEXT}, the form the template shows it in)
 *     function_call_output / custom_tool_call_output {call_id, output}
 *                                   -> a tool message
 *   tools: function tools as they are; freeform "custom" tools (Codex's apply_patch,
 *     whose input is raw text) as a function with one string parameter "input", their
 *     names kept so that the reply turns such calls back into custom_tool_call items;
 *     built-in tools this server cannot run (web_search, file_search, ...) are skipped
 *     and named in the log line, not refused, since clients send them by default.
 *   tool_choice, reasoning.effort (template variable reasoning_effort),
 *   max_output_tokens, text.format (chat completions' response_format), sampling.
 * Nothing is stored: store is accepted either way, previous_response_id and
 * conversation are refused (the client must send the history, as Codex does).
 */
#include "server/parse.h"

#include "server/buf.h"

#include <stdio.h>
#include <string.h>

static int missing(srv_pctx *p, const char *field) { return srv_fail(p->e, p->api, 400, field, "%s is missing", field); }

/* Text of a message content (a string or parts) appended to out; parts joined by "\n". */
static int message_text(srv_pctx *p, const json_t *v, const char *field, srv_buf *out) {
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        srv_buf_append(out, json_string_value(v), json_string_length(v));
        return 0;
    }
    if (!json_is_array(v)) return srv_p_bad_type(p, field, "a string or an array of content parts", v);
    size_t i;
    const json_t *part;
    json_array_foreach(v, i, part) {
        char f[160], g[192];
        snprintf(f, sizeof f, "%s[%zu]", field, i);
        if (!json_is_object(part)) return srv_p_bad_type(p, f, "an object", part);
        const char *type;
        snprintf(g, sizeof g, "%s.type", f);
        if (srv_p_string(p, part, "type", g, &type) != 0) return -1;
        if (!type) return missing(p, g);
        const char *key = !strcmp(type, "refusal") ? "refusal" : "text";
        if (strcmp(type, "input_text") != 0 && strcmp(type, "output_text") != 0 && strcmp(type, "text") != 0 &&
            strcmp(type, "refusal") != 0)
            return srv_fail(p->e, p->api, 400, g,
                            "%s: content of type \"%s\" is not supported (this server reads text only)", g, type);
        const json_t *t = json_object_get(part, key);
        snprintf(g, sizeof g, "%s.%s", f, key);
        if (!t) return missing(p, g);
        if (!json_is_string(t)) return srv_p_bad_type(p, g, "a string", t);
        if (i) srv_buf_puts(out, "\n");
        srv_buf_append(out, json_string_value(t), json_string_length(t));
    }
    return 0;
}

/* Conversion state: the assistant message that consecutive calls join, and reasoning
 * waiting for the assistant message it belongs to. */
typedef struct {
    json_t *assistant; /* borrowed from c->messages, NULL when the last message is not one */
    srv_buf reasoning;
} conv;

static int set_reasoning(srv_pctx *p, conv *cv, json_t *msg) {
    if (!cv->reasoning.len) return 0;
    if (cv->reasoning.failed) return srv_p_oom(p);
    if (json_object_set_new(msg, "reasoning_content", json_stringn(cv->reasoning.data, cv->reasoning.len)) != 0)
        return srv_p_oom(p);
    srv_buf_reset(&cv->reasoning);
    return 0;
}

static int add_message(srv_pctx *p, conv *cv, const char *role, const srv_buf *text) {
    if (text->failed) return srv_p_oom(p);
    json_t *msg = json_pack("{s:s, s:s#}", "role", role, "content", text->data ? text->data : "", text->len);
    if (!msg) return srv_p_oom(p);
    int assistant = !strcmp(role, "assistant");
    if (assistant && set_reasoning(p, cv, msg) != 0) {
        json_decref(msg);
        return -1;
    }
    if (srv_p_append_msg(p, msg) != 0) return -1;
    cv->assistant = assistant ? msg : NULL;
    return 0;
}

static int message_item(srv_pctx *p, conv *cv, const json_t *it, const char *f) {
    char g[160];
    const char *role;
    snprintf(g, sizeof g, "%s.role", f);
    if (srv_p_string(p, it, "role", g, &role) != 0) return -1;
    if (!role) return missing(p, g);
    if (!strcmp(role, "developer")) role = "system";
    if (strcmp(role, "system") != 0 && strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)
        return srv_fail(p->e, p->api, 400, g, "%s: unknown role \"%s\" (user, assistant, system, developer)", g, role);
    srv_buf text = {0};
    snprintf(g, sizeof g, "%s.content", f);
    const json_t *content = json_object_get(it, "content");
    int rc = !content ? missing(p, g) : message_text(p, content, g, &text);
    if (!rc) {
        /* Codex sends the assistant's text and its calls as separate items: the
         * text joins the message the calls of that turn go to. */
        if (!strcmp(role, "assistant") && cv->assistant && !json_object_get(cv->assistant, "tool_calls")) {
            const json_t *prev = json_object_get(cv->assistant, "content");
            srv_buf joined = {0};
            srv_buf_append(&joined, json_string_value(prev), json_string_length(prev));
            if (joined.len && text.len) srv_buf_puts(&joined, "\n");
            srv_buf_append(&joined, text.data ? text.data : "", text.len);
            rc = joined.failed ? srv_p_oom(p)
                            : json_object_set_new(cv->assistant, "content", json_stringn(joined.data ? joined.data : "", joined.len))
                                  ? srv_p_oom(p)
                                  : 0;
            srv_buf_free(&joined);
        } else {
            rc = add_message(p, cv, role, &text);
        }
    }
    srv_buf_free(&text);
    return rc;
}

/* function_call / custom_tool_call: one more call of the current assistant turn. */
static int call_item(srv_pctx *p, conv *cv, const json_t *it, const char *f, int custom) {
    char g[160];
    const char *id, *name;
    snprintf(g, sizeof g, "%s.call_id", f);
    if (srv_p_string(p, it, "call_id", g, &id) != 0) return -1;
    if (!id) return missing(p, g);
    snprintf(g, sizeof g, "%s.name", f);
    if (srv_p_string(p, it, "name", g, &name) != 0) return -1;
    if (!name || !*name) return missing(p, g);
    json_t *args;
    if (custom) {
        const json_t *in = json_object_get(it, "input");
        snprintf(g, sizeof g, "%s.input", f);
        if (in && !json_is_string(in)) return srv_p_bad_type(p, g, "a string", in);
        args = json_object();
        if (args && json_object_set_new(args, "input", in ? json_copy((json_t *)in) : json_string("")) != 0) {
            json_decref(args);
            args = NULL;
        }
        if (!args) return srv_p_oom(p);
    } else {
        snprintf(g, sizeof g, "%s.arguments", f);
        if (!(args = srv_p_arguments_object(p, json_object_get(it, "arguments"), g))) return -1;
    }
    json_t *call = json_pack("{s:s, s:s, s:{s:s, s:o}}", "id", id, "type", "function", "function", "name", name,
                             "arguments", args);
    if (!call) return srv_p_oom(p);
    if (!cv->assistant) {
        srv_buf empty = {0};
        if (add_message(p, cv, "assistant", &empty) != 0) {
            json_decref(call);
            return -1;
        }
    }
    json_t *calls = json_object_get(cv->assistant, "tool_calls");
    if (!calls) {
        calls = json_array();
        if (!calls || json_object_set_new(cv->assistant, "tool_calls", calls) != 0) {
            json_decref(call);
            return srv_p_oom(p);
        }
    }
    return json_array_append_new(calls, call) == 0 ? 0 : srv_p_oom(p);
}

static int output_item(srv_pctx *p, conv *cv, const json_t *it, const char *f) {
    char g[160];
    const char *id;
    snprintf(g, sizeof g, "%s.call_id", f);
    if (srv_p_string(p, it, "call_id", g, &id) != 0) return -1;
    if (!id) return missing(p, g);
    srv_buf text = {0};
    snprintf(g, sizeof g, "%s.output", f);
    const json_t *out = json_object_get(it, "output");
    int rc = !out ? missing(p, g) : message_text(p, out, g, &text);
    if (!rc && text.failed) rc = srv_p_oom(p);
    if (!rc) {
        json_t *msg = json_pack("{s:s, s:s#, s:s}", "role", "tool", "content", text.data ? text.data : "", text.len,
                                "tool_call_id", id);
        rc = srv_p_append_msg(p, msg);
        cv->assistant = NULL;
    }
    srv_buf_free(&text);
    return rc;
}

/* A reasoning item sent back: its text (content, else the summary) is the reasoning of
 * the assistant message that follows. Encrypted content is opaque: ignored. */
static int reasoning_item(srv_pctx *p, conv *cv, const json_t *it, const char *f) {
    static const char *const keys[2] = {"content", "summary"};
    for (int k = 0; k < 2; k++) {
        const json_t *parts = json_object_get(it, keys[k]);
        char g[160];
        snprintf(g, sizeof g, "%s.%s", f, keys[k]);
        if (!parts || json_is_null(parts)) continue;
        if (!json_is_array(parts)) return srv_p_bad_type(p, g, "an array", parts);
        if (!json_array_size(parts)) continue;
        size_t i;
        const json_t *part;
        json_array_foreach(parts, i, part) {
            char h[192];
            snprintf(h, sizeof h, "%s[%zu].text", g, i);
            const char *t;
            if (!json_is_object(part)) return srv_p_bad_type(p, h, "an object", part);
            if (srv_p_string(p, part, "text", h, &t) != 0) return -1;
            if (!t) continue;
            const json_t *tv = json_object_get(part, "text");
            if (cv->reasoning.len) srv_buf_puts(&cv->reasoning, "\n");
            srv_buf_append(&cv->reasoning, t, json_string_length(tv));
        }
        break; /* content, when present, is the whole reasoning; the summary shortens it */
    }
    return 0;
}

static int input_items(srv_pctx *p, const json_t *input) {
    conv cv = {0};
    int rc = 0;
    size_t i;
    const json_t *it;
    json_array_foreach(input, i, it) {
        char f[64], g[96];
        snprintf(f, sizeof f, "input[%zu]", i);
        if (!json_is_object(it)) {
            rc = srv_p_bad_type(p, f, "an object", it);
            break;
        }
        const char *type;
        snprintf(g, sizeof g, "%s.type", f);
        if ((rc = srv_p_string(p, it, "type", g, &type)) != 0) break;
        if (!type) type = "message"; /* the short form {role, content} */
        if (!strcmp(type, "message")) rc = message_item(p, &cv, it, f);
        else if (!strcmp(type, "function_call")) rc = call_item(p, &cv, it, f, 0);
        else if (!strcmp(type, "custom_tool_call")) rc = call_item(p, &cv, it, f, 1);
        else if (!strcmp(type, "function_call_output") || !strcmp(type, "custom_tool_call_output"))
            rc = output_item(p, &cv, it, f);
        else if (!strcmp(type, "reasoning")) rc = reasoning_item(p, &cv, it, f);
        else if (!strcmp(type, "item_reference"))
            rc = srv_fail(p->e, p->api, 400, g, "%s: item_reference needs stored responses, which this server does not keep", g);
        else
            rc = srv_fail(p->e, p->api, 400, g, "%s: input items of type \"%s\" are not supported", g, type);
        if (rc) break;
    }
    if (!rc && cv.reasoning.failed) rc = srv_p_oom(p);
    srv_buf_free(&cv.reasoning);
    return rc;
}

/* ---- tools ---------------------------------------------------------------------------------- */

static void note_skipped(srv_chat *c, const char *type) {
    size_t n = strlen(c->skipped_tools);
    if (strstr(c->skipped_tools, type)) return;
    snprintf(c->skipped_tools + n, sizeof c->skipped_tools - n, "%s%s", n ? "," : "", type);
}

static int tools(srv_pctx *p, const json_t *v) {
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v)) return srv_p_bad_type(p, "tools", "an array", v);
    json_t *out = json_array();
    if (!out) return srv_p_oom(p);
    srv_chat *c = p->c;
    size_t i;
    const json_t *t;
    json_array_foreach(v, i, t) {
        char f[64], g[96];
        snprintf(f, sizeof f, "tools[%zu]", i);
        const char *type, *name, *desc;
        if (!json_is_object(t)) {
            srv_p_bad_type(p, f, "an object", t);
            goto fail;
        }
        snprintf(g, sizeof g, "%s.type", f);
        if (srv_p_string(p, t, "type", g, &type) != 0) goto fail;
        if (!type) {
            missing(p, g);
            goto fail;
        }
        int custom = !strcmp(type, "custom");
        if (!custom && strcmp(type, "function") != 0) {
            note_skipped(c, type); /* a built-in tool: the server cannot run it */
            continue;
        }
        snprintf(g, sizeof g, "%s.name", f);
        if (srv_p_string(p, t, "name", g, &name) != 0) goto fail;
        if (!name || !*name) {
            missing(p, g);
            goto fail;
        }
        snprintf(g, sizeof g, "%s.description", f);
        if (srv_p_string(p, t, "description", g, &desc) != 0) goto fail;
        json_t *params;
        if (custom) {
            const json_t *fmt = json_object_get(t, "format");
            snprintf(g, sizeof g, "%s.format", f);
            if (fmt && !json_is_null(fmt) && !json_is_object(fmt)) {
                srv_p_bad_type(p, g, "an object", fmt);
                goto fail;
            }
            /* The grammar a freeform tool may carry is shown to the model in the
             * parameter's description; nothing enforces it. */
            const json_t *def = json_is_object(fmt) ? json_object_get(fmt, "definition") : NULL;
            params = json_pack("{s:s, s:{s:{s:s, s:s}}, s:[s]}", "type", "object", "properties", "input", "type",
                               "string", "description",
                               "The raw text input of the tool (not JSON), passed to it verbatim.", "required", "input");
            if (params && json_is_string(def)) {
                json_t *prop = json_object_get(json_object_get(params, "properties"), "input");
                json_object_set_new(prop, "description", json_pack("s++", "The raw text input of the tool, verbatim. It follows this grammar:\n",
                                                                    json_string_value(def), ""));
            }
            if (!c->freeform_tools && !(c->freeform_tools = json_object())) {
                json_decref(params);
                srv_p_oom(p);
                goto fail;
            }
            if (json_object_set_new(c->freeform_tools, name, json_true()) != 0) {
                json_decref(params);
                srv_p_oom(p);
                goto fail;
            }
        } else {
            const json_t *ps = json_object_get(t, "parameters");
            snprintf(g, sizeof g, "%s.parameters", f);
            if (ps && !json_is_null(ps) && !json_is_object(ps)) {
                srv_p_bad_type(p, g, "an object", ps);
                goto fail;
            }
            params = json_is_object(ps) ? json_deep_copy(ps) : json_pack("{s:s, s:{}}", "type", "object", "properties");
        }
        /* the key order of chat completions' tools: templates that print a tool as JSON
         * show the same text whichever API it came from */
        json_t *fn = params ? json_pack("{s:s}", "name", name) : NULL;
        if (fn && ((desc && json_object_set_new(fn, "description", json_string(desc)) != 0) ||
                   json_object_set_new(fn, "parameters", params) != 0)) {
            json_decref(fn);
            fn = NULL;
        } else if (!fn) {
            json_decref(params);
        }
        json_t *tool = fn ? json_pack("{s:s, s:o}", "type", "function", "function", fn) : NULL;
        if (!tool || json_array_append_new(out, tool) != 0) {
            srv_p_oom(p);
            goto fail;
        }
    }
    if (json_array_size(out)) c->tools = out;
    else json_decref(out);
    return 0;
fail:
    json_decref(out);
    return -1;
}

static int tool_choice(srv_pctx *p, const json_t *v) {
    srv_chat *c = p->c;
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcmp(s, "none")) c->tool_choice = SRV_TOOLS_NONE;
        else if (!strcmp(s, "required")) c->tool_choice = SRV_TOOLS_REQUIRED;
        else if (strcmp(s, "auto") != 0)
            return srv_fail(p->e, p->api, 400, "tool_choice", "tool_choice: expected \"none\", \"auto\" or \"required\", got \"%s\"", s);
        return 0;
    }
    if (!json_is_object(v)) return srv_p_bad_type(p, "tool_choice", "a string or an object", v);
    const char *type, *name;
    if (srv_p_string(p, v, "type", "tool_choice.type", &type) != 0) return -1;
    if (!type) return missing(p, "tool_choice.type");
    if (!strcmp(type, "function") || !strcmp(type, "custom")) {
        if (srv_p_string(p, v, "name", "tool_choice.name", &name) != 0) return -1;
        if (!name || !*name) return missing(p, "tool_choice.name");
        c->tool_choice = SRV_TOOLS_REQUIRED;
        if (!(c->tool_choice_name = strdup(name))) return srv_p_oom(p);
        return 0;
    }
    if (!strcmp(type, "allowed_tools")) {
        const char *mode;
        if (srv_p_string(p, v, "mode", "tool_choice.mode", &mode) != 0) return -1;
        if (mode && !strcmp(mode, "required")) c->tool_choice = SRV_TOOLS_REQUIRED;
        return 0;
    }
    return 0; /* a built-in tool (web_search, ...): skipped like the tool itself */
}

/* text.format -> chat completions' response_format. */
static int text_format(srv_pctx *p, const json_t *text) {
    if (!text || json_is_null(text)) return 0;
    if (!json_is_object(text)) return srv_p_bad_type(p, "text", "an object", text);
    const json_t *fmt = json_object_get(text, "format");
    if (!fmt || json_is_null(fmt)) return 0;
    if (!json_is_object(fmt)) return srv_p_bad_type(p, "text.format", "an object", fmt);
    const char *type, *name;
    if (srv_p_string(p, fmt, "type", "text.format.type", &type) != 0) return -1;
    if (!type) return missing(p, "text.format.type");
    if (!strcmp(type, "text")) return 0;
    json_t *rf = NULL;
    if (!strcmp(type, "json_object")) {
        rf = json_pack("{s:s}", "type", "json_object");
    } else if (!strcmp(type, "json_schema")) {
        if (srv_p_string(p, fmt, "name", "text.format.name", &name) != 0) return -1;
        const json_t *schema = json_object_get(fmt, "schema");
        if (!schema) return missing(p, "text.format.schema");
        if (!json_is_object(schema)) return srv_p_bad_type(p, "text.format.schema", "an object", schema);
        const json_t *strict = json_object_get(fmt, "strict");
        if (strict && !json_is_null(strict) && !json_is_boolean(strict))
            return srv_p_bad_type(p, "text.format.strict", "a boolean", strict);
        rf = json_pack("{s:s, s:{s:s, s:O, s:b}}", "type", "json_schema", "json_schema", "name", name ? name : "response",
                       "schema", schema, "strict", json_is_true(strict));
    } else {
        return srv_fail(p->e, p->api, 400, "text.format.type",
                        "text.format.type: expected text, json_object or json_schema, got \"%s\"", type);
    }
    if (!rf) return srv_p_oom(p);
    p->c->response_format = rf;
    return 0;
}

static int refuse_if_set(srv_pctx *p, const json_t *root, const char *key, const char *why) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || json_is_false(v)) return 0;
    return srv_fail(p->e, p->api, 400, key, "%s: %s", key, why);
}

/* Log-probabilities are produced on chat completions only: asked for here (top_logprobs,
 * or include naming message.output_text.logprobs), they are refused, not ignored.
 * Other include values (Codex asks for reasoning.encrypted_content) change nothing we
 * send: there is no encrypted reasoning to return. */
static int no_logprobs(srv_pctx *p, const json_t *root) {
    long long x = 0;
    int r = srv_p_int(p, root, "top_logprobs", 0, 20, &x);
    if (r < 0) return -1;
    if (r && x > 0)
        return srv_fail(p->e, p->api, 400, "top_logprobs",
                        "top_logprobs: log-probabilities are returned on /v1/chat/completions only");
    const json_t *inc = json_object_get(root, "include");
    if (!inc || json_is_null(inc)) return 0;
    if (!json_is_array(inc)) return srv_p_bad_type(p, "include", "an array of strings", inc);
    size_t i;
    const json_t *v;
    json_array_foreach(inc, i, v) {
        if (!json_is_string(v)) return srv_p_bad_type(p, "include", "an array of strings", inc);
        if (!strcmp(json_string_value(v), "message.output_text.logprobs"))
            return srv_fail(p->e, p->api, 400, "include",
                            "include: message.output_text.logprobs: log-probabilities are returned on "
                            "/v1/chat/completions only");
    }
    return 0;
}

int srv_parse_responses(const char *body, size_t len, srv_chat *c, srv_error *e) {
    srv_pctx p;
    json_t *root = srv_p_begin(&p, SRV_RESPONSES, body, len, c, e);
    if (!root) return -1;
    int rc = -1, r;
    long long x = 0;
    const json_t *input = json_object_get(root, "input"), *instr = json_object_get(root, "instructions");
    if (refuse_if_set(&p, root, "previous_response_id", "this server stores no responses: send the whole conversation as input") ||
        refuse_if_set(&p, root, "conversation", "this server stores no conversations: send the whole conversation as input") ||
        refuse_if_set(&p, root, "background", "background responses are not supported") || no_logprobs(&p, root))
        goto done;
    if (!(c->messages = json_array())) {
        srv_p_oom(&p);
        goto done;
    }
    if (instr && !json_is_null(instr)) {
        if (!json_is_string(instr)) {
            srv_p_bad_type(&p, "instructions", "a string", instr);
            goto done;
        }
        if (srv_p_append_msg(&p, json_pack("{s:s, s:O}", "role", "system", "content", instr)) != 0) goto done;
    }
    if (!input || json_is_null(input)) {
        missing(&p, "input");
        goto done;
    }
    if (json_is_string(input)) {
        if (srv_p_append_msg(&p, json_pack("{s:s, s:O}", "role", "user", "content", input)) != 0) goto done;
    } else if (!json_is_array(input)) {
        srv_p_bad_type(&p, "input", "a string or an array of items", input);
        goto done;
    } else if (input_items(&p, input) != 0) {
        goto done;
    }
    if (!json_array_size(c->messages)) {
        srv_fail(e, p.api, 400, "input", "input: at least one item is required");
        goto done;
    }
    if (tools(&p, json_object_get(root, "tools")) != 0 || tool_choice(&p, json_object_get(root, "tool_choice")) != 0 ||
        text_format(&p, json_object_get(root, "text")) != 0)
        goto done;
    if (srv_p_bool(&p, root, "parallel_tool_calls") < 0 || srv_p_bool(&p, root, "store") < 0) goto done;
    if ((r = srv_p_int(&p, root, "max_output_tokens", 1, 1 << 30, &x)) < 0) goto done;
    if (r) c->max_tokens = (int)x;
    const json_t *rs = json_object_get(root, "reasoning");
    if (rs && !json_is_null(rs)) {
        const char *effort;
        if (!json_is_object(rs)) {
            srv_p_bad_type(&p, "reasoning", "an object", rs);
            goto done;
        }
        if (srv_p_string(&p, rs, "effort", "reasoning.effort", &effort) != 0) goto done;
        if (effort && srv_p_set_kwarg(&p, "reasoning_effort", json_string(effort)) != 0) goto done;
    }
    rc = 0;
done:
    return srv_p_finish(&p, root, rc);
}

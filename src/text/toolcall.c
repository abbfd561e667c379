/* Streaming tool-call and reasoning parser (interface and observable rules: toolcall.h).
 *
 * DESIGN
 * Input is appended to `in`; in.data[head..in.len) is not consumed yet. A state machine eats
 * from the front. Markup whose meaning is still open (a tag prefix, a <tool_call> wrapper
 * whose content is not seen yet, a function name, a Hermes JSON body) stays in the buffer
 * from `head`, so a wrong guess can be undone: the opening tag (open_len bytes) is given
 * back as text and scanning resumes right after it. Giving back is the whole rule for
 * malformed markup -- no text is ever lost, and no guess needs to look far ahead.
 * Once CALL_BEGIN is out, the call is committed and later damage is repaired instead
 * (a client cannot take back a call it has started to show).
 *
 * Why these choices:
 *  - Whitespace bordering markup is dropped because clients render every text block,
 *    and "\n\n" between a sentence and a call would become an empty bubble. Pending
 *    whitespace (`ws`) is emitted only once non-whitespace follows in the same segment.
 *  - "<think>" only at a segment start: a coding answer that mentions the tag must not
 *    swallow the rest of the answer as reasoning.
 *  - Unknown names in a wrapped call stay calls: agent clients reply with an error tool
 *    result and the model retries; as text the agent would end its turn on raw XML.
 *    The unwrapped "<function=X>" form is much more likely to be prose about the
 *    format, so it needs X to be a real tool.
 *  - XML string parameters stream as they are generated (long file contents are the
 *    common case); other types are converted when the value is complete, since "12"
 *    may still become "123" or "12abc" (then a string).
 *  - Hermes JSON is scanned incrementally (string/bracket aware) so the call is known
 *    the moment its object closes; raw newlines inside strings (a frequent model slip)
 *    are escaped, and a call cut off by </tool_call> or end of output gets its open
 *    strings and brackets closed before jansson judges it.
 */
#include "text/toolcall.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/utf8.h"

#define NAME_MAX_LEN 256
#define HERMES_MAX_DEPTH 64

enum state { S_TEXT, S_THINK, S_WRAP, S_FNAME, S_HERMES, S_BODY, S_PNAME, S_PVALUE, S_AFTER, S_GLMNAME, S_MMWRAP };
/* XML call dialects: their tags (dialects[] below). */
enum { D_QWEN, D_GLM, D_MINIMAX };
enum step { NEED, PROGRESS };
enum { M_NONE, M_PART, M_FULL };
enum { FAIL_CANCEL = 1, FAIL_OOM = 2 };
/* JSON-schema type bits of a parameter. */
enum { T_STRING = 1, T_INT = 2, T_NUM = 4, T_BOOL = 8, T_OBJ = 16, T_ARR = 32, T_NULL = 64 };

struct lm_toolcall_parser {
    lm_tc_event_fn fn;
    void *ctx;
    json_t *tools;      /* owned; NULL when no tools were given (markup is then text) */
    enum state st;
    int failed;         /* FAIL_*: sticky, every later call reports it */
    lm_strbuf in;            /* in.data[head..in.len): input not consumed yet */
    size_t head;
    size_t scan;        /* bytes after head already examined (S_WRAP, S_FNAME, S_HERMES) */
    size_t open_len;    /* opening tag at head, given back as text when the guess fails */
    int wrapped;        /* inside <tool_call> ... </tool_call> (or <minimax:tool_call>) */
    int dl;             /* D_*: the XML dialect of the current call */
    /* current text or reasoning segment */
    lm_strbuf ws;            /* trailing whitespace not emitted yet */
    int seg_nonempty;   /* non-whitespace emitted in this segment */
    int trim_lead;      /* segment follows markup: its leading whitespace is dropped */
    /* output of the current feed, coalesced into one event per run of one kind */
    lm_strbuf out;
    lm_tc_kind out_kind;
    int out_index;
    /* current call */
    int n_begun, n_done;
    char *name;
    char id[32];
    const json_t *props; /* "properties" of its schema, borrowed from tools; or NULL */
    int n_params;
    unsigned ptypes;    /* type bits of the current parameter; 0 = streamed as a string */
    int value_started;  /* the optional newline after <parameter=p> was looked at */
    lm_strbuf value;         /* raw text of a non-string parameter */
    int vkind, vstr, vesc;   /* that text: 0 not begun, 1 a JSON array or object, 2 other;
                                inside one of its strings; after a backslash there */
    /* Hermes JSON scanner */
    size_t json_start;  /* offset of '{' after head */
    int depth, in_str, esc;
    char stack[HERMES_MAX_DEPTH];
    uint64_t rng;
};

/* ---- buffers and output ------------------------------------------------------- */

static void sb_add(lm_toolcall_parser *p, lm_strbuf *b, const char *d, size_t n) {
    if (n == 0 || p->failed) return;
    if (lm_strbuf_append(b, d, n) != 0) p->failed = FAIL_OOM;
}

static void emit(lm_toolcall_parser *p, const lm_tc_event *ev) {
    if (!p->failed && p->fn(p->ctx, ev) != 0) p->failed = FAIL_CANCEL;
}

static void flush(lm_toolcall_parser *p) {
    if (!p->out.len) return;
    lm_tc_event ev = {.kind = p->out_kind, .index = p->out_index, .data = p->out.data,
                      .len = p->out.len};
    p->out.len = 0;
    emit(p, &ev);
}

static void out_add(lm_toolcall_parser *p, lm_tc_kind kind, int index, const char *d, size_t n) {
    if (n == 0) return;
    if (p->out.len && (p->out_kind != kind || p->out_index != index)) flush(p);
    p->out_kind = kind;
    p->out_index = index;
    sb_add(p, &p->out, d, n);
}

static void args_add(lm_toolcall_parser *p, const char *d, size_t n) {
    out_add(p, LM_TC_CALL_ARGS, p->n_begun - 1, d, n);
}
static void args_str(lm_toolcall_parser *p, const char *s) { args_add(p, s, strlen(s)); }

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void seg_reset(lm_toolcall_parser *p, int trim_lead) {
    p->ws.len = 0;
    p->seg_nonempty = 0;
    p->trim_lead = trim_lead;
}

/* Text or reasoning content: whitespace is held in `ws` until non-whitespace follows. */
static void content(lm_toolcall_parser *p, lm_tc_kind kind, const char *d, size_t n) {
    size_t i = 0, j = n;
    while (i < n && is_ws(d[i])) i++;
    if (i == n) {
        sb_add(p, &p->ws, d, n);
        return;
    }
    while (is_ws(d[j - 1])) j--;
    if (p->seg_nonempty || !p->trim_lead) {
        out_add(p, kind, 0, p->ws.data, p->ws.len);
        out_add(p, kind, 0, d, i);
    }
    p->ws.len = 0;
    out_add(p, kind, 0, d + i, j - i);
    sb_add(p, &p->ws, d + j, n - j);
    p->seg_nonempty = 1;
}

/* ---- UTF-8 and JSON escaping ---------------------------------------------------- */

/* Length of the UTF-8 sequence at s: >0 valid, 0 a valid but truncated prefix, -1 invalid. */
static int utf8_len(const unsigned char *s, size_t n) {
    uint32_t cp;
    size_t len = lm_utf8_next(s, n, &cp);
    if (len) return (int)len;
    int incomplete;
    lm_utf8_bad_run(s, n, &incomplete);
    return incomplete ? 0 : -1;
}

/* Appends d as the inside of a JSON string to the call's arguments. Without `final`, a
 * truncated UTF-8 sequence at the end is left unconsumed (its rest is still to come);
 * returns the bytes consumed. Invalid UTF-8 and NUL become U+FFFD so the JSON stays valid
 * (and acceptable to jansson). */
static size_t esc_add(lm_toolcall_parser *p, const char *d, size_t n, int final) {
    size_t i = 0, run = 0;
    while (i < n) {
        unsigned char c = (unsigned char)d[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        args_add(p, d + run, i - run);
        if (c < 0x80) {
            char e[8];
            switch (c) {
            case '"': memcpy(e, "\\\"", 3); break;
            case '\\': memcpy(e, "\\\\", 3); break;
            case '\n': memcpy(e, "\\n", 3); break;
            case '\r': memcpy(e, "\\r", 3); break;
            case '\t': memcpy(e, "\\t", 3); break;
            /* jansson (the server's replies parse the arguments back) refuses \u0000:
             * a NUL byte becomes U+FFFD, as invalid UTF-8 does */
            case 0: memcpy(e, "\xEF\xBF\xBD", 4); break;
            default: snprintf(e, sizeof e, "\\u%04x", c); break;
            }
            args_str(p, e);
            i++;
        } else {
            int l = utf8_len((const unsigned char *)d + i, n - i);
            if (l == 0 && !final) return i;
            if (l > 0) {
                args_add(p, d + i, (size_t)l);
                i += (size_t)l;
            } else {
                args_str(p, "\xEF\xBF\xBD");
                i++;
            }
        }
        run = i;
    }
    args_add(p, d + run, n - run);
    return n;
}

/* ---- tool schemas ----------------------------------------------------------------- */

static const json_t *find_function(const json_t *tools, const char *name) {
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        const json_t *f = json_object_get(t, "function");
        if (!json_is_object(f)) f = t; /* also accept bare {"name", "parameters"} entries */
        const json_t *nm = json_object_get(f, "name");
        if (json_is_string(nm) && strcmp(json_string_value(nm), name) == 0) return f;
    }
    return NULL;
}

static unsigned type_bit(const char *t) {
    if (!strcmp(t, "string")) return T_STRING;
    if (!strncmp(t, "int", 3)) return T_INT;
    if (!strcmp(t, "number") || !strncmp(t, "float", 5) || !strcmp(t, "double")) return T_NUM;
    if (!strncmp(t, "bool", 4)) return T_BOOL;
    if (!strcmp(t, "object") || !strcmp(t, "dict")) return T_OBJ;
    if (!strcmp(t, "array") || !strcmp(t, "list")) return T_ARR;
    if (!strcmp(t, "null")) return T_NULL;
    return T_STRING;
}

/* Type bits of a property schema: "type" (a name or a list), else the union of its
 * anyOf/oneOf alternatives. 0 when nothing says (the value then stays a string). */
static unsigned schema_types(const json_t *s, int depth) {
    unsigned bits = 0;
    const json_t *t = json_object_get(s, "type");
    size_t i;
    json_t *e;
    if (json_is_string(t)) return type_bit(json_string_value(t));
    if (json_is_array(t)) {
        json_array_foreach(t, i, e) if (json_is_string(e)) bits |= type_bit(json_string_value(e));
        return bits;
    }
    if (depth > 4) return 0;
    static const char *const alts[] = {"anyOf", "oneOf"};
    for (int k = 0; k < 2; k++) {
        json_array_foreach(json_object_get(s, alts[k]), i, e) bits |= schema_types(e, depth + 1);
    }
    return bits;
}

/* ---- calls --------------------------------------------------------------------- */

void lm_toolcall_make_id(char id[30], uint64_t *rng) {
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    memcpy(id, "call_", 5);
    for (int i = 0; i < 24; i++) {
        uint64_t z = (*rng += 0x9E3779B97F4A7C15ull); /* splitmix64 */
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        id[5 + i] = alnum[z % 62];
    }
    id[29] = 0;
}

static void make_id(lm_toolcall_parser *p) { lm_toolcall_make_id(p->id, &p->rng); }

static void begin_call(lm_toolcall_parser *p, const char *name, size_t n) {
    p->ws.len = 0; /* whitespace right before a call is not shown */
    char *copy = strndup(name, n);
    if (!copy) {
        p->failed = FAIL_OOM;
        return;
    }
    free(p->name);
    p->name = copy;
    make_id(p);
    p->props = NULL;
    const json_t *f = p->tools ? find_function(p->tools, copy) : NULL;
    if (f) {
        const json_t *sch = json_object_get(f, "parameters");
        if (!sch) sch = json_object_get(f, "input_schema");
        p->props = json_object_get(sch, "properties");
        if (!json_is_object(p->props)) p->props = NULL;
    }
    p->n_params = 0;
    flush(p);
    lm_tc_event ev = {.kind = LM_TC_CALL_BEGIN, .index = p->n_begun++, .name = p->name,
                      .id = p->id};
    emit(p, &ev);
}

static void end_call(lm_toolcall_parser *p) {
    flush(p);
    lm_tc_event ev = {.kind = LM_TC_CALL_END, .index = p->n_begun - 1};
    emit(p, &ev);
    p->n_done++;
    seg_reset(p, 1);
}

static void xml_close_call(lm_toolcall_parser *p) {
    args_str(p, p->n_params ? "}" : "{}");
    end_call(p);
}

static void begin_param(lm_toolcall_parser *p, const char *name, size_t n) {
    const json_t *prop = p->props ? json_object_getn(p->props, name, n) : NULL;
    unsigned t = prop ? schema_types(prop, 0) : 0;
    p->ptypes = (t & ~(unsigned)T_STRING) ? t : 0;
    args_str(p, p->n_params++ ? ", \"" : "{\"");
    esc_add(p, name, n, 1);
    args_str(p, p->ptypes ? "\": " : "\": \"");
    p->value_started = 0;
    p->vkind = p->vstr = p->vesc = 0;
    p->value.len = 0;
}

/* Scans the raw text of a non-string parameter from state (kind, str, esc), see the
 * parser's fields, and returns its first '<' that may start a tag (NULL: none): in a
 * JSON array or object, a '<' inside a string is text (the grammar allows it there);
 * elsewhere every '<' counts, so a stray quote cannot swallow the closing tags. */
static const char *value_scan(const char *d, size_t n, int *kind, int *str, int *esc) {
    for (size_t i = 0; i < n; i++) {
        const char c = d[i];
        if (*kind == 0 && !is_ws(c)) *kind = c == '[' || c == '{' ? 1 : 2;
        if (*kind != 1) {
            if (c == '<') return d + i;
        } else if (*str) {
            if (*esc) *esc = 0;
            else if (c == '\\') *esc = 1;
            else if (c == '"') *str = 0;
        } else if (c == '"') {
            *str = 1;
        } else if (c == '<') {
            return d + i;
        }
    }
    return NULL;
}

static void value_add(lm_toolcall_parser *p, const char *d, size_t n, int final, size_t *used) {
    if (p->ptypes) {
        value_scan(d, n, &p->vkind, &p->vstr, &p->vesc); /* the state after these bytes */
        sb_add(p, &p->value, d, n);
        *used = n;
    } else {
        *used = esc_add(p, d, n, final);
    }
}

static int is_word(const char *s, size_t n, const char *w) {
    return n == strlen(w) && strncasecmp(s, w, n) == 0;
}

/* A non-string parameter is complete: its JSON per the schema, else a string. */
static void end_value(lm_toolcall_parser *p) {
    if (!p->ptypes) {
        args_str(p, "\"");
        return;
    }
    const char *v = p->value.len ? p->value.data : "";
    size_t n = p->value.len, a = 0, b = n;
    unsigned ty = p->ptypes;
    while (a < b && is_ws(v[a])) a++;
    while (b > a && is_ws(v[b - 1])) b--;
    const char *t = v + a;
    size_t tn = b - a;
    /* the Qwen3-Coder template writes Python values: None, True, False */
    if ((tn == 4 && !memcmp(t, "null", 4)) ||
        (!(ty & T_STRING) && (is_word(t, tn, "null") || is_word(t, tn, "none")))) {
        args_str(p, "null");
        return;
    }
    if ((ty & T_BOOL) && (is_word(t, tn, "true") || is_word(t, tn, "false"))) {
        args_str(p, (t[0] | 0x20) == 't' ? "true" : "false");
        return;
    }
    if ((ty & (T_INT | T_NUM | T_OBJ | T_ARR)) && tn > 0) {
        json_error_t e;
        json_t *j = json_loadb(t, tn, JSON_DECODE_ANY, &e);
        int ok = (json_is_number(j) && (ty & (T_INT | T_NUM))) ||
                 (json_is_object(j) && (ty & T_OBJ)) || (json_is_array(j) && (ty & T_ARR));
        json_decref(j);
        if (ok) { /* jansson accepted the text: emit it as written (0.1 stays 0.1) */
            args_add(p, t, tn);
            return;
        }
    }
    args_str(p, "\"");
    esc_add(p, v, n, 1);
    args_str(p, "\"");
}

/* ---- Hermes JSON ------------------------------------------------------------------ */

static size_t skip_ws(const char *s, size_t n, size_t i) {
    while (i < n && is_ws(s[i])) i++;
    return i;
}

/* End of the JSON value starting at s[i] (text already accepted by jansson), or 0. */
static size_t skip_value(const char *s, size_t n, size_t i) {
    if (i >= n) return 0;
    if (s[i] == '"') {
        for (i++; i < n && s[i] != '"'; i += s[i] == '\\' ? 2 : 1) {}
        return i < n ? i + 1 : 0;
    }
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0, in_str = 0;
        for (; i < n; i++) {
            char c = s[i];
            if (in_str) {
                if (c == '\\') i++;
                else if (c == '"') in_str = 0;
            } else if (c == '"') {
                in_str = 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if ((c == '}' || c == ']') && --depth == 0) {
                return i + 1;
            }
        }
        return 0;
    }
    size_t st = i;
    while (i < n && !is_ws(s[i]) && s[i] != ',' && s[i] != '}' && s[i] != ']') i++;
    return i > st ? i : 0;
}

/* Raw text of the value of top-level member `key` of the JSON object s; -1 if absent. */
static int member_span(const char *s, size_t n, const char *key, size_t *off, size_t *len) {
    size_t i = skip_ws(s, n, 0), kl = strlen(key);
    int found = 0;
    if (i >= n || s[i] != '{') return -1;
    for (i++;;) {
        size_t ks = skip_ws(s, n, i), ke = skip_value(s, n, ks);
        if (!ke || s[ks] != '"') break;
        i = skip_ws(s, n, ke);
        if (i >= n || s[i] != ':') break;
        size_t vs = skip_ws(s, n, i + 1), ve = skip_value(s, n, vs);
        if (!ve) break;
        if (ke - ks == kl + 2 && !memcmp(s + ks + 1, key, kl)) { /* last one wins, as in jansson */
            *off = vs;
            *len = ve - vs;
            found = 1;
        }
        i = skip_ws(s, n, ve);
        if (i >= n || s[i] != ',') break;
        i++;
    }
    return found ? 0 : -1;
}

static int valid_name(const char *s, size_t n) {
    if (n == 0 || n > NAME_MAX_LEN) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20) return 0;
    return lm_utf8_valid(s, n);
}

/* Emits one Hermes call from its JSON text; -1 (nothing emitted) when it is no call.
 * close_open: the text was cut off, close its open string and brackets first. */
static int hermes_call(lm_toolcall_parser *p, const char *body, size_t n, int close_open) {
    lm_strbuf fix = {0};
    int in_str = 0, esc = 0, rc = -1;
    json_t *j = NULL, *inner = NULL;
    char *dumped = NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)body[i];
        char e[8];
        if (in_str && !esc && c < 0x20) { /* raw control character in a string: escape it */
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_add(p, &fix, e, 6);
            continue;
        }
        if (in_str) {
            if (esc) esc = 0;
            else if (c == '\\') esc = 1;
            else if (c == '"') in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        }
        sb_add(p, &fix, body + i, 1);
    }
    if (close_open) {
        if (esc) goto done;
        if (in_str) sb_add(p, &fix, "\"", 1);
        while (!in_str && fix.len && (is_ws(fix.data[fix.len - 1]) || fix.data[fix.len - 1] == ',')) fix.len--;
        for (int k = p->depth - 1; k >= 0; k--) sb_add(p, &fix, p->stack[k] == '{' ? "}" : "]", 1);
    }
    if (p->failed || !fix.len) goto done;
    json_error_t err;
    j = json_loadb(fix.data, fix.len, 0, &err);
    const json_t *name = json_object_get(j, "name");
    if (!json_is_string(name) || !valid_name(json_string_value(name), json_string_length(name)))
        goto done;
    const char *key = "arguments";
    const json_t *args = json_object_get(j, key);
    if (!args) args = json_object_get(j, key = "parameters");
    const char *text = "{}";
    size_t off = 0, len = 2;
    if (json_is_object(args)) {
        if (member_span(fix.data, fix.len, key, &off, &len) == 0) {
            text = fix.data; /* as written: jansson would print 0.1 as 0.10000000000000001 */
        } else {      /* the key was written with escapes: fall back to jansson's text */
            if (!(dumped = json_dumps(args, JSON_COMPACT))) goto done;
            text = dumped;
            len = strlen(dumped);
        }
    } else if (json_is_string(args)) { /* arguments given as a JSON string holding the object */
        inner = json_loadb(json_string_value(args), json_string_length(args), 0, &err);
        if (!json_is_object(inner)) goto done;
        text = json_string_value(args);
        len = json_string_length(args);
    } else if (args && !json_is_null(args)) {
        goto done;
    }
    begin_call(p, json_string_value(name), json_string_length(name));
    args_add(p, text + off, len);
    end_call(p);
    rc = 0;
done:
    free(dumped);
    json_decref(inner);
    json_decref(j);
    lm_strbuf_free(&fix);
    return rc;
}

/* ---- the state machine ------------------------------------------------------------ */

static int match(const char *s, size_t n, const char *tag) {
    size_t tl = strlen(tag), k = n < tl ? n : tl;
    if (memcmp(s, tag, k) != 0) return M_NONE;
    return n >= tl ? M_FULL : M_PART;
}

/* Which of tags[] (NULL entries skipped) starts at s: its index, -1 when one may still
 * start there (s is a proper prefix), -2 when none can. */
static int match_any(const char *s, size_t n, const char *const *tags, int ntags) {
    int part = 0;
    for (int i = 0; i < ntags; i++) {
        if (!tags[i]) continue;
        int m = match(s, n, tags[i]);
        if (m == M_FULL) return i;
        if (m == M_PART) part = 1;
    }
    return part ? -1 : -2;
}

/* The tags of an XML call dialect. body[]: a parameter opens, the function ends, the
 * wrapper ends, another function starts, another wrapper starts (NULL: no such tag).
 * ends[]: what ends a value: its closing tag, the next parameter, the function's end,
 * the wrapper's end. pname_end: what ends a parameter name. */
typedef struct {
    const char *body[5];
    const char *ends[4];
    const char *pname_end;
    int trim_newlines; /* one newline after the name tag and one before the closing tag are not value */
} dialect;

static const dialect dialects[3] = {
    [D_QWEN] = {{"<parameter=", "</function>", "</tool_call>", "<function=", "<tool_call>"},
                {"</parameter>", "<parameter=", "</function>", "</tool_call>"}, ">", 1},
    /* GLM-4.5: <tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>...</tool_call> */
    [D_GLM] = {{"<arg_key>", NULL, "</tool_call>", NULL, "<tool_call>"},
               {"</arg_value>", "<arg_key>", NULL, "</tool_call>"}, "</arg_key>", 0},
    /* MiniMax-M2: <minimax:tool_call>\n<invoke name="F">\n<parameter name="K">V</parameter>\n
     * </invoke>\n</minimax:tool_call> (several invokes may share the wrapper) */
    [D_MINIMAX] = {{"<parameter name=", "</invoke>", "</minimax:tool_call>", "<invoke name=", "<minimax:tool_call>"},
                   {"</parameter>", "<parameter name=", "</invoke>", "</minimax:tool_call>"}, ">", 0},
};

static void give_back(lm_toolcall_parser *p) {
    content(p, LM_TC_TEXT, p->in.data + p->head, p->open_len);
    p->head += p->open_len;
    p->st = S_TEXT;
    p->wrapped = 0;
}

static void start_hermes(lm_toolcall_parser *p, size_t at) {
    p->st = S_HERMES;
    p->json_start = p->scan = at;
    p->depth = p->in_str = p->esc = 0;
}

/* S_TEXT and S_THINK: content up to the next tag. */
static enum step st_content(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head;
    int think = p->st == S_THINK;
    lm_tc_kind kind = think ? LM_TC_REASONING : LM_TC_TEXT;
    const char *lt = memchr(b, '<', n);
    if (lt != b) {
        size_t k = lt ? (size_t)(lt - b) : n;
        content(p, kind, b, k);
        p->head += k;
        return PROGRESS;
    }
    const char *tags[5] = {NULL, NULL, NULL, NULL, NULL};
    if (think) {
        tags[0] = "</think>";
    } else {
        if (p->tools) {
            tags[1] = "<tool_call>";
            tags[2] = "<function=";
            tags[4] = "<minimax:tool_call>";
        }
        if (!p->seg_nonempty) tags[3] = "<think>";
    }
    int m = match_any(b, n, tags, 5);
    if (m == -1 && !eof) return NEED;
    if (m < 0) {
        content(p, kind, b, 1);
        p->head++;
    } else if (m == 0 || m == 3) { /* </think> or <think> */
        p->head += strlen(tags[m]);
        p->st = m == 0 ? S_TEXT : S_THINK;
        seg_reset(p, 1);
    } else {
        p->wrapped = m == 1 || m == 4;
        p->dl = m == 4 ? D_MINIMAX : D_QWEN;
        p->open_len = p->scan = strlen(tags[m]);
        p->st = m == 1 ? S_WRAP : m == 4 ? S_MMWRAP : S_FNAME;
    }
    return PROGRESS;
}

/* S_WRAP: after <tool_call>, JSON or <function= must follow. */
static enum step st_wrap(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head;
    while (p->scan < n && is_ws(b[p->scan])) p->scan++;
    if (p->scan == n) {
        if (!eof) return NEED;
        give_back(p);
    } else if (b[p->scan] == '{') {
        start_hermes(p, p->scan);
    } else {
        int m = match(b + p->scan, n - p->scan, "<function=");
        if (m == M_PART && !eof) return NEED;
        if (m == M_FULL) {
            p->scan += 10;
            p->st = S_FNAME;
        } else if (b[p->scan] != '<') { /* GLM: the function name follows the tag */
            p->st = S_GLMNAME;
        } else {
            give_back(p);
        }
    }
    return PROGRESS;
}

/* S_GLMNAME: GLM's function name after <tool_call>, up to a newline, <arg_key> or
 * </tool_call>. */
static enum step st_glmname(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head, s = p->scan, q = s;
    while (q < n && q - s <= NAME_MAX_LEN && b[q] != '\n' && b[q] != '<') q++;
    if (q == n && !eof && q - s <= NAME_MAX_LEN) return NEED;
    int ok = q - s <= NAME_MAX_LEN && (q == n || b[q] == '\n');
    if (q < n && b[q] == '<') {
        static const char *const after[] = {"<arg_key>", "</tool_call>"};
        int m = match_any(b + q, n - q, after, 2);
        if (m == -1 && !eof) return NEED;
        ok = m >= 0;
    }
    size_t a = s, e = q;
    while (e > a && is_ws(b[e - 1])) e--;
    for (size_t i = a; ok && i < e; i++) /* a function name, not prose ("<tool_call>get(x)</tool_call>") */
        ok = (b[i] >= 'a' && b[i] <= 'z') || (b[i] >= 'A' && b[i] <= 'Z') || (b[i] >= '0' && b[i] <= '9') ||
             strchr("_-.:/", b[i]) != NULL || (unsigned char)b[i] >= 0x80;
    if (!ok || !valid_name(b + a, e - a)) {
        give_back(p);
        return PROGRESS;
    }
    p->dl = D_GLM;
    begin_call(p, b + a, e - a);
    p->head += q;
    p->st = S_BODY;
    return PROGRESS;
}

/* S_MMWRAP: inside <minimax:tool_call>, before an <invoke name=...> or the wrapper's end. */
static enum step st_mmwrap(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head;
    while (p->scan < n && is_ws(b[p->scan])) p->scan++;
    if (p->scan == n && !eof) return NEED;
    static const char *const tags[] = {"<invoke name=", "</minimax:tool_call>"};
    int m = p->scan < n ? match_any(b + p->scan, n - p->scan, tags, 2) : -2;
    if (m == -1 && !eof) return NEED;
    if (m == 0) {
        p->scan += strlen(tags[0]);
        p->dl = D_MINIMAX;
        p->st = S_FNAME;
    } else if (m == 1) { /* the wrapper ends (after its calls, or empty: nothing to show) */
        p->head += p->scan + strlen(tags[1]);
        p->st = S_TEXT;
        p->wrapped = 0;
    } else if (p->open_len) {
        give_back(p);
    } else { /* after a call: whatever follows is text again */
        p->head += p->scan;
        p->st = S_TEXT;
        p->wrapped = 0;
    }
    return PROGRESS;
}

/* S_FNAME: the function name up to '>' (MiniMax: name="NAME">, quotes optional). */
static enum step st_fname(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head, s = p->scan, q = s;
    while (q < n && q - s <= NAME_MAX_LEN && b[q] != '>' && b[q] != '<' && b[q] != '\n') q++;
    if (q == n && !eof && q - s <= NAME_MAX_LEN) return NEED;
    if (q < n && b[q] == '>') {
        size_t a = s, e = q;
        while (a < e && is_ws(b[a])) a++;
        while (e > a && is_ws(b[e - 1])) e--;
        if (p->dl == D_MINIMAX && e - a >= 2 && b[a] == '"' && b[e - 1] == '"') a++, e--;
        int known = 0;
        if (p->tools && e - a <= NAME_MAX_LEN) {
            char name[NAME_MAX_LEN + 1];
            memcpy(name, b + a, e - a);
            name[e - a] = 0;
            known = find_function(p->tools, name) != NULL;
        }
        if (valid_name(b + a, e - a) && (p->wrapped || known)) {
            begin_call(p, b + a, e - a);
            p->head += q + 1;
            p->st = S_BODY;
            return PROGRESS;
        }
    }
    give_back(p);
    return PROGRESS;
}


/* S_BODY: between parameters of an XML call. */
static enum step st_body(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head;
    const char *lt = memchr(b, '<', n);
    if (lt != b) { /* stray text inside a call is dropped */
        p->head += lt ? (size_t)(lt - b) : n;
        return PROGRESS;
    }
    const char *const *tags = dialects[p->dl].body;
    int m = match_any(b, n, tags, 5);
    if (m == -1 && !eof) return NEED;
    if (m < 0) {
        p->head++;
        return PROGRESS;
    }
    if (m == 0) {
        p->head += strlen(tags[0]);
        p->st = S_PNAME;
        return PROGRESS;
    }
    if (m <= 2) p->head += strlen(tags[m]); /* the function's or the wrapper's end */
    xml_close_call(p);
    p->st = p->wrapped && (m == 1 || m == 3) ? (p->dl == D_MINIMAX ? S_MMWRAP : S_AFTER) : S_TEXT;
    p->open_len = p->scan = 0;
    if (p->st == S_TEXT) p->wrapped = 0;
    return PROGRESS;
}

/* S_PNAME: the parameter name up to '>' (or a newline, when the model dropped the '>');
 * MiniMax: name="K">; GLM: K</arg_key> then <arg_value> after optional whitespace. */
static enum step st_pname(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head, q = 0, skip = 1;
    while (q < n && q <= NAME_MAX_LEN && b[q] != '>' && b[q] != '<' && b[q] != '\n') q++;
    if (q == n && !eof && q <= NAME_MAX_LEN) return NEED;
    int named = q < n && (b[q] == '>' || b[q] == '\n');
    if (p->dl == D_GLM) { /* K</arg_key> \s* <arg_value> */
        named = 0;
        if (q < n && b[q] == '<') {
            int m = match(b + q, n - q, "</arg_key>");
            if (m == M_PART && !eof) return NEED;
            if (m == M_FULL) {
                size_t v = skip_ws(b, n, q + 10);
                int mv = v < n ? match(b + v, n - v, "<arg_value>") : M_PART;
                if (mv == M_PART && !eof && v - q <= 64) return NEED;
                named = mv == M_FULL;
                skip = named ? v + 11 - q : 10;
                if (!named) {
                    p->head += q + 10; /* a key without a value: dropped */
                    p->st = S_BODY;
                    return PROGRESS;
                }
            }
        }
    }
    p->st = S_BODY;
    if (q < n && (named || b[q] == '>' || b[q] == '\n')) {
        size_t a = 0, e = q;
        while (a < e && is_ws(b[a])) a++;
        while (e > a && is_ws(b[e - 1])) e--;
        if (p->dl == D_MINIMAX && e - a >= 2 && b[a] == '"' && b[e - 1] == '"') a++, e--;
        if (e > a && named) {
            begin_param(p, b + a, e - a);
            p->st = S_PVALUE;
        }
        p->head += q + skip;
    }
    return PROGRESS;
}


/* S_PVALUE: a parameter value, ended by its closing tag or by the next tag. */
static enum step st_pvalue(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head, used;
    const dialect *d = &dialects[p->dl];
    const char *const *value_ends = d->ends;
    if (!p->value_started) {
        if (n == 0) return NEED;
        if (b[0] == '\n' && d->trim_newlines) p->head++;
        p->value_started = 1;
        return PROGRESS;
    }
    /* A JSON value (non-string parameter) may hold '<' inside its strings, which
     * the grammar allows there: only a '<' outside them can start a closing tag. */
    int vk = p->vkind, vs = p->vstr, ve = p->vesc;
    const char *lt = p->ptypes ? value_scan(b, n, &vk, &vs, &ve) : memchr(b, '<', n);
    int m = lt ? match_any(lt, n - (size_t)(lt - b), value_ends, 4) : -2;
    if (lt && m == -1 && eof) m = -2;
    if (lt && m == -2) { /* a literal '<': everything up to it is value */
        value_add(p, b, (size_t)(lt - b) + 1, 1, &used);
        p->head += used;
        return PROGRESS;
    }
    size_t k = lt ? (size_t)(lt - b) : n;
    int final = m >= 0 || eof;
    /* hold back a newline that may turn out to be the one before the closing tag */
    size_t k2 = k && b[k - 1] == '\n' && d->trim_newlines ? k - 1 : k;
    value_add(p, b, k2, final, &used);
    if (!final) {
        p->head += used;
        return NEED;
    }
    p->head += k + (m == 0 ? strlen(value_ends[0]) : 0);
    end_value(p);
    p->st = S_BODY;
    return PROGRESS;
}

/* S_AFTER: after </function> or a Hermes object inside a <tool_call> wrapper. */
static enum step st_after(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head, i = 0;
    while (i < n && is_ws(b[i])) i++;
    p->head += i;
    b += i;
    n -= i;
    if (n == 0) return NEED;
    if (b[0] == '{') {
        p->open_len = 0;
        start_hermes(p, 0);
        return PROGRESS;
    }
    static const char *const tags[] = {"</tool_call>", "<function="};
    int m = match_any(b, n, tags, 2);
    if (m == -1 && !eof) return NEED;
    if (m == 0) {
        p->head += 12;
    } else if (m == 1) {
        p->open_len = p->scan = 10;
        p->st = S_FNAME;
        return PROGRESS;
    }
    p->st = S_TEXT;
    p->wrapped = 0;
    return PROGRESS;
}

/* S_HERMES: scans the JSON object for its end, string and bracket aware. */
static enum step st_hermes(lm_toolcall_parser *p, int eof) {
    const char *b = p->in.data + p->head;
    size_t n = p->in.len - p->head, q = p->scan;
    for (; q < n; q++) {
        char c = b[q];
        if (p->in_str) {
            if (p->esc) p->esc = 0;
            else if (c == '\\') p->esc = 1;
            else if (c == '"') p->in_str = 0;
        } else if (c == '"') {
            p->in_str = 1;
        } else if (c == '{' || c == '[') {
            if (p->depth == HERMES_MAX_DEPTH) break;
            p->stack[p->depth++] = c;
        } else if (c == '}' || c == ']') {
            if (!p->depth || p->stack[p->depth - 1] != (c == '}' ? '{' : '[')) break;
            if (--p->depth > 0) continue;
            if (hermes_call(p, b + p->json_start, q + 1 - p->json_start, 0) < 0) break;
            p->head += q + 1;
            p->st = S_AFTER;
            return PROGRESS;
        } else if (c == '<') { /* never inside JSON: only </tool_call> may end a cut-off call */
            int m = match(b + q, n - q, "</tool_call>");
            if (m == M_PART && !eof) {
                p->scan = q;
                return NEED;
            }
            if (m != M_FULL || hermes_call(p, b + p->json_start, q - p->json_start, 1) < 0) break;
            p->head += q + 12;
            p->st = S_TEXT;
            p->wrapped = 0;
            return PROGRESS;
        }
    }
    if (q == n) {
        p->scan = q;
        if (!eof) return NEED;
        if (hermes_call(p, b + p->json_start, n - p->json_start, 1) == 0) {
            p->head = p->in.len;
            p->st = S_TEXT;
            p->wrapped = 0;
            return PROGRESS;
        }
    }
    give_back(p);
    return PROGRESS;
}

static void run(lm_toolcall_parser *p, int eof) {
    while (!p->failed && p->head < p->in.len) {
        enum step r = NEED;
        switch (p->st) {
        case S_TEXT:
        case S_THINK: r = st_content(p, eof); break;
        case S_WRAP: r = st_wrap(p, eof); break;
        case S_FNAME: r = st_fname(p, eof); break;
        case S_HERMES: r = st_hermes(p, eof); break;
        case S_BODY: r = st_body(p, eof); break;
        case S_PNAME: r = st_pname(p, eof); break;
        case S_PVALUE: r = st_pvalue(p, eof); break;
        case S_AFTER: r = st_after(p, eof); break;
        case S_GLMNAME: r = st_glmname(p, eof); break;
        case S_MMWRAP: r = st_mmwrap(p, eof); break;
        }
        if (r == NEED) break;
    }
}

/* ---- public interface --------------------------------------------------------------- */

static int report(const lm_toolcall_parser *p, char *err) {
    if (p->failed == FAIL_CANCEL) return lm_errf(err, "cancelled");
    return lm_errf(err, "tool-call parser: out of memory while buffering generated text");
}

int lm_toolcall_parser_create(lm_toolcall_parser **out, const char *tools_json, int in_think,
                              lm_tc_event_fn fn, void *ctx, char *err) {
    *out = NULL;
    if (!fn) return lm_errf(err, "tool-call parser: no event callback given");
    lm_toolcall_parser *p = calloc(1, sizeof *p);
    if (!p) return lm_errf(err, "tool-call parser: out of memory");
    p->fn = fn;
    p->ctx = ctx;
    if (tools_json && *tools_json) {
        json_error_t je;
        p->tools = json_loads(tools_json, 0, &je);
        if (!p->tools) {
            free(p);
            return lm_errf(err, "tools: invalid JSON at line %d column %d: %s", je.line,
                           je.column, je.text);
        }
        if (!json_is_array(p->tools)) {
            json_decref(p->tools);
            free(p);
            return lm_errf(err, "tools must be a JSON array of {\"type\": \"function\", "
                                "\"function\": {...}} objects");
        }
        if (json_array_size(p->tools) == 0) {
            json_decref(p->tools);
            p->tools = NULL;
        }
    }
    uint64_t seed = 0;
    if (getentropy(&seed, sizeof seed) != 0) /* ids need to be unique, not secret */
        seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)p;
    p->rng = seed;
    p->st = in_think ? S_THINK : S_TEXT;
    seg_reset(p, in_think != 0);
    *out = p;
    return 0;
}

int lm_toolcall_parser_feed(lm_toolcall_parser *p, const char *piece, size_t len, char *err) {
    if (p->failed) return report(p, err);
    if (p->head) { /* drop consumed input */
        memmove(p->in.data, p->in.data + p->head, p->in.len - p->head);
        p->in.len -= p->head;
        p->head = 0;
    }
    sb_add(p, &p->in, piece, len);
    run(p, 0);
    flush(p);
    return p->failed ? report(p, err) : 0;
}

int lm_toolcall_parser_finish(lm_toolcall_parser *p, char *err) {
    if (p->failed) return report(p, err);
    run(p, 1);
    switch (p->st) {
    case S_TEXT:
        if (p->seg_nonempty || !p->trim_lead) out_add(p, LM_TC_TEXT, 0, p->ws.data, p->ws.len);
        break;
    case S_PVALUE:
        end_value(p);
        xml_close_call(p);
        break;
    case S_BODY:
    case S_PNAME: xml_close_call(p); break;
    default: break;
    }
    p->ws.len = 0;
    p->st = S_TEXT;
    flush(p);
    return p->failed ? report(p, err) : 0;
}

int lm_toolcall_parser_calls(const lm_toolcall_parser *p) { return p->n_done; }

void lm_toolcall_parser_free(lm_toolcall_parser *p) {
    if (!p) return;
    json_decref(p->tools);
    lm_strbuf_free(&p->in);
    lm_strbuf_free(&p->ws);
    lm_strbuf_free(&p->out);
    lm_strbuf_free(&p->value);
    free(p->name);
    free(p);
}

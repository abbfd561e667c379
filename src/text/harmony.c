/* Streaming harmony parser (rules: harmony.h).
 *
 * DESIGN
 * A byte-at-a-time state machine, so where the input is split never matters: HEADER
 * collects the bytes before "<|message|>" (checked as it grows: anything that cannot
 * be part of a header turns the rest of the output into plain text), BODY passes bytes
 * through except a '<' that may start an end marker, which waits in `hold` until it
 * is decided. Events of one kind are gathered in `out` and emitted once per run per
 * feed, as toolcall.c does. A call's arguments are scanned (strings, escapes, nesting)
 * only to close them when the output ends inside them.
 */
#include "text/harmony.h"
#include "text/toolcall.h"

#include "common/buf.h"
#include "common/error.h"
#include "common/utf8.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HEADER_MAX 512
#define ARGS_MAX_DEPTH 64

enum state { P_HEADER, P_BODY, P_PLAIN };
enum body { B_TEXT, B_REASONING, B_CALL };
enum { FAIL_CANCEL = 1, FAIL_OOM = 2 };

/* Markers that end a body: the message ends, or (start, channel) a new header begins. */
static const char *const END_MARKS[] = {"<|end|>", "<|call|>", "<|return|>", "<|start|>", "<|channel|>"};
/* Markup a header may hold; the end markers there only separate messages. */
static const char *const HEADER_MARKS[] = {"<|start|>", "<|channel|>", "<|constrain|>", "<|message|>",
                                           "<|end|>",   "<|call|>",    "<|return|>"};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

struct lm_harmony_parser {
    lm_tc_event_fn fn;
    void *ctx;
    int failed;
    enum state st;
    enum body body;
    lm_strbuf hdr, hold;
    /* the current feed's output run */
    lm_strbuf out;
    lm_tc_kind out_kind;
    int out_index;
    /* calls */
    int n_calls;
    char *name;
    char id[32];
    uint64_t rng;
    int args_started, args_object, args_closed;
    int in_str, esc, depth;
    char stack[ARGS_MAX_DEPTH];
    char last; /* the last character outside strings that was not whitespace */
    lm_strbuf raw; /* a body that is not a JSON object */
};

int lm_harmony_template(const char *src) { return src && strstr(src, "<|channel|>") != NULL; }

static void sb(lm_harmony_parser *p, lm_strbuf *b, const char *d, size_t n) {
    if (lm_strbuf_append(b, d, n) != 0) p->failed = FAIL_OOM;
}

static void emit(lm_harmony_parser *p, const lm_tc_event *ev) {
    if (!p->failed && p->fn(p->ctx, ev) != 0) p->failed = FAIL_CANCEL;
}

static void flush(lm_harmony_parser *p) {
    if (!p->out.len) return;
    lm_tc_event ev = {.kind = p->out_kind, .index = p->out_index, .data = p->out.data, .len = p->out.len};
    emit(p, &ev);
    lm_strbuf_reset(&p->out);
}

static void out_add(lm_harmony_parser *p, lm_tc_kind kind, const char *d, size_t n) {
    if (!n) return;
    if (p->out.len && (p->out_kind != kind || p->out_index != p->n_calls)) flush(p);
    p->out_kind = kind;
    p->out_index = p->n_calls;
    sb(p, &p->out, d, n);
}

/* ---- calls ----------------------------------------------------------------------- */

static void make_id(lm_harmony_parser *p) { lm_toolcall_make_id(p->id, &p->rng); }

static void begin_call(lm_harmony_parser *p, const char *name, size_t n) {
    free(p->name);
    p->name = strndup(name, n);
    if (!p->name) {
        p->failed = FAIL_OOM;
        return;
    }
    make_id(p);
    p->args_started = p->args_object = p->args_closed = 0;
    p->in_str = p->esc = p->depth = 0;
    p->last = 0;
    lm_strbuf_reset(&p->raw);
    flush(p);
    lm_tc_event ev = {.kind = LM_TC_CALL_BEGIN, .index = p->n_calls, .name = p->name, .id = p->id};
    emit(p, &ev);
}

static int is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* One byte of a call's body: streamed while it belongs to the JSON object. */
static void args_byte(lm_harmony_parser *p, char c) {
    if (!p->args_started) {
        if (is_ws(c)) return;
        p->args_started = 1;
        p->args_object = c == '{';
    }
    if (!p->args_object) {
        sb(p, &p->raw, &c, 1);
        return;
    }
    if (p->args_closed) return; /* after the object: not part of the arguments */
    if (p->in_str) {
        if (p->esc) p->esc = 0;
        else if (c == '\\') p->esc = 1;
        else if (c == '"') p->in_str = 0;
    } else if (c == '"') {
        p->in_str = 1;
    } else if (c == '{' || c == '[') {
        if (p->depth < ARGS_MAX_DEPTH) p->stack[p->depth] = c;
        p->depth++;
    } else if (c == '}' || c == ']') {
        if (p->depth > 0) p->depth--;
        if (p->depth == 0) p->args_closed = 1;
    }
    if (!is_ws(c) && !p->in_str && c != '"') p->last = c;
    if (c == '"' && !p->in_str) p->last = '"';
    out_add(p, LM_TC_CALL_ARGS, &c, 1);
}

/* The call's body is over: close what is open, then CALL_END. */
static void end_call(lm_harmony_parser *p) {
    if (!p->args_started) {
        out_add(p, LM_TC_CALL_ARGS, "{}", 2);
    } else if (!p->args_object) {
        /* invalid UTF-8 in the body becomes U+FFFD (a JSON string must be valid) */
        char *clean = NULL;
        size_t clean_len = 0;
        json_t *o = NULL;
        if (lm_utf8_sanitize(p->raw.data ? p->raw.data : "", p->raw.len, &clean, &clean_len) == 0)
            o = json_pack("{s:s%}", "arguments", clean, clean_len);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (!s) p->failed = FAIL_OOM;
        else out_add(p, LM_TC_CALL_ARGS, s, strlen(s));
        free(s);
        free(clean);
        json_decref(o);
    } else if (!p->args_closed) {
        if (p->in_str) {
            if (p->esc) out_add(p, LM_TC_CALL_ARGS, "\\", 1);
            out_add(p, LM_TC_CALL_ARGS, "\"", 1);
            p->last = '"';
        }
        for (int d = p->depth; d > 0; d--) {
            char open = d <= ARGS_MAX_DEPTH ? p->stack[d - 1] : '{';
            if (p->last == ':' || (p->last == ',' && open == '[')) out_add(p, LM_TC_CALL_ARGS, "null", 4);
            else if (p->last == ',') out_add(p, LM_TC_CALL_ARGS, "\"\":null", 7);
            out_add(p, LM_TC_CALL_ARGS, open == '[' ? "]" : "}", 1);
            p->last = open == '[' ? ']' : '}';
        }
    }
    flush(p);
    lm_tc_event ev = {.kind = LM_TC_CALL_END, .index = p->n_calls};
    emit(p, &ev);
    p->n_calls++;
}

/* ---- headers and bodies ------------------------------------------------------------- */

static int word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '=' || c == '-' || c == ':' || c == '/';
}

/* Could h[0..n) begin a header? Markup must be one of HEADER_MARKS (a prefix of one
 * at the end); the rest words and spaces; the first byte '<' or ' '. */
static int header_plausible(const char *h, size_t n) {
    if (n > HEADER_MAX) return 0;
    if (n && h[0] != '<' && h[0] != ' ') return 0;
    for (size_t i = 0; i < n;) {
        if (h[i] == '<') {
            size_t adv = 0;
            for (size_t k = 0; k < N_OF(HEADER_MARKS) && !adv; k++) {
                size_t m = strlen(HEADER_MARKS[k]), left = n - i;
                if (left >= m ? !memcmp(h + i, HEADER_MARKS[k], m) : !memcmp(h + i, HEADER_MARKS[k], left))
                    adv = left >= m ? m : left;
            }
            if (!adv) return 0;
            i += adv;
        } else if (h[i] == ' ' || word_char(h[i])) {
            i++;
        } else {
            return 0;
        }
    }
    return 1;
}

static int ends_with(const lm_strbuf *b, const char *s) {
    size_t n = strlen(s);
    return b->len >= n && !memcmp(b->data + b->len - n, s, n);
}

/* The word after `key` in h (NULL if key is absent), its length in *n. */
static const char *word_after(const char *h, const char *key, size_t *n) {
    const char *k = strstr(h, key);
    if (!k) return NULL;
    k += strlen(key);
    *n = 0;
    while (word_char(k[*n]) && k[*n] != '=') (*n)++;
    return k;
}

/* The header (NUL-terminated, without <|message|>) decides what the body is. */
static void begin_body(lm_harmony_parser *p, const char *h) {
    size_t cn = 0, rn = 0;
    const char *ch = word_after(h, "<|channel|>", &cn);
    const char *to = word_after(h, "to=", &rn);
    p->st = P_BODY;
    if (to && rn) {
        const char *fx = "functions.";
        size_t fl = strlen(fx);
        if (rn > fl && !strncmp(to, fx, fl)) to += fl, rn -= fl;
        p->body = B_CALL;
        begin_call(p, to, rn);
    } else if (ch && cn == 8 && !strncmp(ch, "analysis", 8)) {
        p->body = B_REASONING;
    } else {
        p->body = B_TEXT;
    }
}

static void body_bytes(lm_harmony_parser *p, const char *d, size_t n) {
    if (p->body == B_CALL)
        for (size_t i = 0; i < n; i++) args_byte(p, d[i]);
    else
        out_add(p, p->body == B_REASONING ? LM_TC_REASONING : LM_TC_TEXT, d, n);
}

static void end_body(lm_harmony_parser *p) {
    if (p->body == B_CALL) end_call(p);
    p->st = P_HEADER;
    lm_strbuf_reset(&p->hdr);
}

static void byte_in(lm_harmony_parser *p, char c);

static void header_byte(lm_harmony_parser *p, char c) {
    sb(p, &p->hdr, &c, 1);
    if (p->failed) return;
    if (ends_with(&p->hdr, "<|message|>")) {
        p->hdr.data[p->hdr.len - strlen("<|message|>")] = 0;
        begin_body(p, p->hdr.data);
        lm_strbuf_reset(&p->hdr);
        return;
    }
    if (ends_with(&p->hdr, "<|end|>") || ends_with(&p->hdr, "<|call|>") || ends_with(&p->hdr, "<|return|>")) {
        lm_strbuf_reset(&p->hdr); /* between messages: nothing to show */
        return;
    }
    if (!header_plausible(p->hdr.data, p->hdr.len)) { /* not harmony: text from here on */
        p->st = P_PLAIN;
        out_add(p, LM_TC_TEXT, p->hdr.data, p->hdr.len);
        lm_strbuf_reset(&p->hdr);
    }
}

static void body_byte(lm_harmony_parser *p, char c) {
    if (!p->hold.len && c != '<') {
        body_bytes(p, &c, 1);
        return;
    }
    sb(p, &p->hold, &c, 1);
    if (p->failed) return;
    int prefix = 0;
    for (size_t k = 0; k < N_OF(END_MARKS); k++) {
        size_t m = strlen(END_MARKS[k]);
        if (p->hold.len == m && !memcmp(p->hold.data, END_MARKS[k], m)) {
            lm_strbuf_reset(&p->hold);
            end_body(p);
            if (k >= 3) /* <|start|> or <|channel|>: this marker opens the next header */
                for (size_t i = 0; i < m; i++) header_byte(p, END_MARKS[k][i]);
            return;
        }
        if (p->hold.len < m && !memcmp(p->hold.data, END_MARKS[k], p->hold.len)) prefix = 1;
    }
    if (prefix) return;
    /* Not a marker: its first byte is body, the rest is looked at again. */
    char rest[16];
    size_t n = p->hold.len - 1;
    memcpy(rest, p->hold.data + 1, n);
    body_bytes(p, p->hold.data, 1);
    lm_strbuf_reset(&p->hold);
    for (size_t i = 0; i < n; i++) byte_in(p, rest[i]);
}

static void byte_in(lm_harmony_parser *p, char c) {
    switch (p->st) {
    case P_HEADER: header_byte(p, c); break;
    case P_BODY: body_byte(p, c); break;
    case P_PLAIN: out_add(p, LM_TC_TEXT, &c, 1); break;
    }
}

/* ---- interface ------------------------------------------------------------------- */

static int report(lm_harmony_parser *p, char *err) {
    if (p->failed == FAIL_CANCEL) return lm_errf(err, "cancelled");
    if (p->failed) return lm_errf(err, "out of memory parsing the model's output");
    return 0;
}

int lm_harmony_parser_create(lm_harmony_parser **out, lm_tc_event_fn fn, void *ctx, char *err) {
    lm_harmony_parser *p = calloc(1, sizeof *p);
    if (!p) return lm_errf(err, "out of memory");
    p->fn = fn;
    p->ctx = ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    p->rng = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)p;
    *out = p;
    return 0;
}

int lm_harmony_parser_feed(lm_harmony_parser *p, const char *piece, size_t len, char *err) {
    for (size_t i = 0; i < len && !p->failed; i++) byte_in(p, piece[i]);
    flush(p);
    return report(p, err);
}

int lm_harmony_parser_finish(lm_harmony_parser *p, char *err) {
    if (p->st == P_BODY) {
        if (p->hold.len) body_bytes(p, p->hold.data, p->hold.len); /* an unfinished marker is body */
        lm_strbuf_reset(&p->hold);
        end_body(p);
    } else if (p->st == P_HEADER && p->hdr.len && !memchr(p->hdr.data, '<', p->hdr.len)) {
        out_add(p, LM_TC_TEXT, p->hdr.data, p->hdr.len);
    }
    lm_strbuf_reset(&p->hdr);
    flush(p);
    return report(p, err);
}

int lm_harmony_parser_calls(const lm_harmony_parser *p) { return p->n_calls; }

void lm_harmony_parser_free(lm_harmony_parser *p) {
    if (!p) return;
    lm_strbuf_free(&p->hdr);
    lm_strbuf_free(&p->hold);
    lm_strbuf_free(&p->out);
    lm_strbuf_free(&p->raw);
    free(p->name);
    free(p);
}

/* Values of the Jinja interpreter and how Python would print them.
 *
 * The arena gives every render one place to free; lm_strbuf is the output and
 * scratch buffer. Printing follows CPython exactly where chat templates can see
 * it: str() of None/True/floats, repr() inside printed containers, and
 * json.dumps(ensure_ascii=False) for tojson, including float repr (1.0, 1e-05,
 * 1e+16) and key order.
 */
#include "text/jinja_internal.h"

#include "common/utf8.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ------------------------------------------------------------------ */
struct ja_chunk {
    ja_chunk *next;
    size_t used, cap;
    max_align_t data[];
};

#define JA_CHUNK 65536

void *ja_alloc(jarena *a, size_t n) {
    size_t align = sizeof(max_align_t);
    if (n > SIZE_MAX / 2) return NULL;
    n = (n + align - 1) / align * align;
    if (n == 0) n = align;
    ja_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > JA_CHUNK / 2 ? n : JA_CHUNK;
        if (a->limit && a->total + cap > a->limit) return NULL;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        a->total += cap;
        c->cap = cap;
        c->used = 0;
        if (cap == n && a->head) {
            /* A large block goes behind the current chunk so its free space stays usable. */
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

char *ja_strndup(jarena *a, const char *s, size_t n) {
    char *p = ja_alloc(a, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

int ja_grow(jarena *a, void *arrp, size_t *cap, size_t len, size_t elem_size) {
    if (len < *cap) return 0;
    size_t c = *cap ? *cap : 4;
    while (c <= len) {
        if (c > SIZE_MAX / 2 / elem_size) return -1;
        c *= 2;
    }
    void *p = ja_alloc(a, c * elem_size);
    if (!p) return -1;
    void *old;
    memcpy(&old, arrp, sizeof old); /* see lm_grow: arrp is the address of a T * */
    if (len) memcpy(p, old, len * elem_size);
    memcpy(arrp, &p, sizeof p);
    *cap = c;
    return 0;
}

void ja_free_all(jarena *a) {
    ja_chunk *c = a->head;
    while (c) {
        ja_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- containers ---------------------------------------------------------------- */
jv jv_cstr(const char *s) { return jv_strn(s, strlen(s)); }

jv_list *jv_list_new(jarena *a, size_t cap) {
    jv_list *l = ja_alloc(a, sizeof *l);
    if (!l) return NULL;
    if (cap) {
        l->items = ja_alloc(a, cap * sizeof(jv));
        if (!l->items) return NULL;
        l->cap = cap;
    }
    return l;
}

int jv_list_push(jarena *a, jv_list *l, jv v) {
    if (JA_GROW(a, l->items, l->cap, l->len) != 0) return -1;
    l->items[l->len++] = v;
    return 0;
}

jv_dict *jv_dict_new(jarena *a, size_t cap) {
    jv_dict *d = ja_alloc(a, sizeof *d);
    if (!d) return NULL;
    if (cap) {
        d->keys = ja_alloc(a, cap * sizeof(jv));
        d->vals = ja_alloc(a, cap * sizeof(jv));
        if (!d->keys || !d->vals) return NULL;
        d->cap = cap;
    }
    return d;
}

int jv_dict_push(jarena *a, jv_dict *d, jv key, jv val) {
    size_t cap = d->cap; /* two arrays, one capacity: commit when both grew */
    if (JA_GROW(a, d->keys, cap, d->len) != 0) return -1;
    cap = d->cap;
    if (JA_GROW(a, d->vals, cap, d->len) != 0) return -1;
    d->cap = cap;
    d->keys[d->len] = key;
    d->vals[d->len] = val;
    d->len++;
    return 0;
}

int jv_dict_set(jarena *a, jv_dict *d, jv key, jv val) {
    jv *slot = jv_dict_get(d, key);
    if (slot) { *slot = val; return 0; }
    return jv_dict_push(a, d, key, val);
}

jv *jv_dict_get_str(const jv_dict *d, const char *key, size_t len) {
    /* Newest first: scopes shadow by re-setting, and recent keys are hot. */
    for (size_t i = d->len; i-- > 0;) {
        const jv *k = &d->keys[i];
        if (k->type == JV_STR && k->u.str.len == len && memcmp(k->u.str.s, key, len) == 0)
            return &d->vals[i];
    }
    return NULL;
}

jv *jv_dict_get(const jv_dict *d, jv key) {
    if (key.type == JV_STR) return jv_dict_get_str(d, key.u.str.s, key.u.str.len);
    for (size_t i = 0; i < d->len; i++)
        if (jv_equal(d->keys[i], key)) return &d->vals[i];
    return NULL;
}

/* ---- semantics -------------------------------------------------------------------- */
bool jv_is_number(jv v) { return v.type == JV_INT || v.type == JV_FLOAT || v.type == JV_BOOL; }

double jv_as_double(jv v) {
    switch (v.type) {
    case JV_INT: return (double)v.u.i;
    case JV_FLOAT: return v.u.f;
    case JV_BOOL: return v.u.b ? 1.0 : 0.0;
    default: return 0.0;
    }
}

bool jv_truthy(jv v) {
    switch (v.type) {
    case JV_UNDEF: case JV_NONE: return false;
    case JV_BOOL: return v.u.b;
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.str.len != 0;
    case JV_LIST: return v.sub == JV_GENERATOR || v.u.list->len != 0;
    case JV_DICT: return v.u.dict->len != 0;
    default: return true;
    }
}

bool jv_equal(jv a, jv b) {
    if (jv_is_number(a) && jv_is_number(b)) {
        if (a.type != JV_FLOAT && b.type != JV_FLOAT) {
            int64_t x = a.type == JV_INT ? a.u.i : a.u.b, y = b.type == JV_INT ? b.u.i : b.u.b;
            return x == y;
        }
        return jv_as_double(a) == jv_as_double(b);
    }
    if (a.type != b.type) return false;
    switch (a.type) {
    case JV_UNDEF: case JV_NONE: return true;
    case JV_STR:
        return a.u.str.len == b.u.str.len && memcmp(a.u.str.s, b.u.str.s, a.u.str.len) == 0;
    case JV_LIST:
        if (a.sub != b.sub || a.u.list->len != b.u.list->len) return false;
        for (size_t i = 0; i < a.u.list->len; i++)
            if (!jv_equal(a.u.list->items[i], b.u.list->items[i])) return false;
        return true;
    case JV_DICT:
        if (a.u.dict->len != b.u.dict->len) return false;
        for (size_t i = 0; i < a.u.dict->len; i++) {
            jv *o = jv_dict_get(b.u.dict, a.u.dict->keys[i]);
            if (!o || !jv_equal(a.u.dict->vals[i], *o)) return false;
        }
        return true;
    case JV_NS: return a.u.dict == b.u.dict;
    case JV_FUNC: return a.u.func == b.u.func;
    case JV_MACRO: return a.u.macro == b.u.macro;
    default: return false;
    }
}

int jv_compare(jv a, jv b, int *cmp) {
    if (jv_is_number(a) && jv_is_number(b)) {
        if (a.type == JV_INT && b.type == JV_INT) *cmp = (a.u.i > b.u.i) - (a.u.i < b.u.i);
        else {
            double x = jv_as_double(a), y = jv_as_double(b);
            *cmp = (x > y) - (x < y);
        }
        return 0;
    }
    if (a.type == JV_STR && b.type == JV_STR) {
        size_t n = a.u.str.len < b.u.str.len ? a.u.str.len : b.u.str.len;
        int c = n ? memcmp(a.u.str.s, b.u.str.s, n) : 0;
        if (c == 0) c = (a.u.str.len > b.u.str.len) - (a.u.str.len < b.u.str.len);
        *cmp = (c > 0) - (c < 0);
        return 0;
    }
    if (a.type == JV_LIST && b.type == JV_LIST) {
        size_t n = a.u.list->len < b.u.list->len ? a.u.list->len : b.u.list->len;
        for (size_t i = 0; i < n; i++) {
            jv x = a.u.list->items[i], y = b.u.list->items[i];
            if (jv_equal(x, y)) continue;
            return jv_compare(x, y, cmp);
        }
        *cmp = (a.u.list->len > b.u.list->len) - (a.u.list->len < b.u.list->len);
        return 0;
    }
    return -1;
}

const char *jv_type_name(jv v) {
    switch (v.type) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return v.sub == JV_TUPLE ? "tuple" : v.sub == JV_GENERATOR ? "generator" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_FUNC: return "builtin_function_or_method";
    case JV_MACRO: return "Macro";
    }
    return "object";
}

/* ---- printing ------------------------------------------------------------------------ */
void jv_write_float(lm_strbuf *b, double f) {
    if (isnan(f)) { lm_strbuf_puts(b, "nan"); return; }
    if (isinf(f)) { lm_strbuf_puts(b, f < 0 ? "-inf" : "inf"); return; }
    /* Shortest digits that read back to the same double, as CPython's repr. */
    char tmp[64];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    const char *p = tmp;
    if (*p == '-') { lm_strbuf_putc(b, '-'); p++; }
    char digits[32];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < 31) digits[nd++] = *p;
    int exp10 = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int decpt = exp10 + 1;
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            lm_strbuf_puts(b, "0.");
            for (int i = 0; i < -decpt; i++) lm_strbuf_putc(b, '0');
            lm_strbuf_append(b, digits, (size_t)nd);
        } else if (decpt >= nd) {
            lm_strbuf_append(b, digits, (size_t)nd);
            for (int i = nd; i < decpt; i++) lm_strbuf_putc(b, '0');
            lm_strbuf_puts(b, ".0");
        } else {
            lm_strbuf_append(b, digits, (size_t)decpt);
            lm_strbuf_putc(b, '.');
            lm_strbuf_append(b, digits + decpt, (size_t)(nd - decpt));
        }
    } else {
        lm_strbuf_putc(b, digits[0]);
        if (nd > 1) { lm_strbuf_putc(b, '.'); lm_strbuf_append(b, digits + 1, (size_t)(nd - 1)); }
        int e = decpt - 1;
        lm_strbuf_printf(b, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
}

static void write_repr_str(lm_strbuf *b, const char *s, size_t n) {
    bool has_single = memchr(s, '\'', n) != NULL, has_double = memchr(s, '"', n) != NULL;
    char q = has_single && !has_double ? '"' : '\'';
    lm_strbuf_putc(b, q);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') lm_strbuf_puts(b, "\\\\");
        else if (c == (unsigned char)q) { lm_strbuf_putc(b, '\\'); lm_strbuf_putc(b, q); }
        else if (c == '\n') lm_strbuf_puts(b, "\\n");
        else if (c == '\r') lm_strbuf_puts(b, "\\r");
        else if (c == '\t') lm_strbuf_puts(b, "\\t");
        else if (c < 0x20 || c == 0x7f) lm_strbuf_printf(b, "\\x%02x", c);
        else lm_strbuf_putc(b, (char)c);
    }
    lm_strbuf_putc(b, q);
}

static void write_repr_depth(lm_strbuf *b, jv v, int depth);

static void write_items(lm_strbuf *b, jv v, int depth) {
    if (depth > 100) { lm_strbuf_puts(b, "..."); return; }
    if (v.type == JV_LIST && v.sub == JV_GENERATOR) {
        lm_strbuf_puts(b, "<generator object>");
    } else if (v.type == JV_LIST) {
        lm_strbuf_putc(b, v.sub ? '(' : '[');
        for (size_t i = 0; i < v.u.list->len; i++) {
            if (i) lm_strbuf_puts(b, ", ");
            write_repr_depth(b, v.u.list->items[i], depth + 1);
        }
        if (v.sub && v.u.list->len == 1) lm_strbuf_putc(b, ',');
        lm_strbuf_putc(b, v.sub ? ')' : ']');
    } else {
        lm_strbuf_putc(b, '{');
        for (size_t i = 0; i < v.u.dict->len; i++) {
            if (i) lm_strbuf_puts(b, ", ");
            write_repr_depth(b, v.u.dict->keys[i], depth + 1);
            lm_strbuf_puts(b, ": ");
            write_repr_depth(b, v.u.dict->vals[i], depth + 1);
        }
        lm_strbuf_putc(b, '}');
    }
}

static void write_repr_depth(lm_strbuf *b, jv v, int depth) {
    if (v.type == JV_STR) write_repr_str(b, v.u.str.s, v.u.str.len);
    else if (v.type == JV_LIST || v.type == JV_DICT) write_items(b, v, depth);
    else if (v.type == JV_NS) {
        jv d = v;
        d.type = JV_DICT;
        lm_strbuf_puts(b, "<Namespace ");
        write_items(b, d, depth);
        lm_strbuf_putc(b, '>');
    } else if (v.type == JV_UNDEF) {
        lm_strbuf_puts(b, "Undefined");  /* repr(Undefined) inside printed containers */
    } else jv_write_str(b, v);
}

void jv_write_repr(lm_strbuf *b, jv v) { write_repr_depth(b, v, 0); }

void jv_write_str(lm_strbuf *b, jv v) {
    switch (v.type) {
    case JV_UNDEF: return;
    case JV_NONE: lm_strbuf_puts(b, "None"); return;
    case JV_BOOL: lm_strbuf_puts(b, v.u.b ? "True" : "False"); return;
    case JV_INT: lm_strbuf_printf(b, "%lld", (long long)v.u.i); return;
    case JV_FLOAT: jv_write_float(b, v.u.f); return;
    case JV_STR: lm_strbuf_append(b, v.u.str.s, v.u.str.len); return;
    case JV_FUNC: lm_strbuf_printf(b, "<built-in method %s>", v.u.func->name); return;
    case JV_MACRO: lm_strbuf_puts(b, "<Macro>"); return;
    default: write_repr_depth(b, v, 0); return;
    }
}

/* ---- JSON --------------------------------------------------------------------------------- */
/* Decodes one UTF-8 sequence at s[*i] (advancing *i); each invalid subpart gives U+FFFD.
 * Lone surrogates (Python's "\ud800", which the lexer writes in their 3-byte form) decode
 * as themselves, so json.dumps writes them back as \ud800 the way Python does. */
static unsigned long utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s + *i;
    uint32_t cp;
    size_t k = lm_utf8_decode(u, n - *i, &cp, LM_UTF8_SURROGATES);
    if (!k) {
        int incomplete;
        k = lm_utf8_bad_run_flags(u, n - *i, &incomplete, LM_UTF8_SURROGATES);
    }
    *i += k;
    return cp;
}

static void write_json_str(lm_strbuf *b, const char *s, size_t n, bool ensure_ascii) {
    lm_strbuf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (ensure_ascii && c >= 0x80) {
            unsigned long cp = utf8_next(s, n, &i);
            i--;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                lm_strbuf_printf(b, "\\u%04lx\\u%04lx", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                lm_strbuf_printf(b, "\\u%04lx", cp);
            }
            continue;
        }
        switch (c) {
        case '"': lm_strbuf_puts(b, "\\\""); break;
        case '\\': lm_strbuf_puts(b, "\\\\"); break;
        case '\n': lm_strbuf_puts(b, "\\n"); break;
        case '\r': lm_strbuf_puts(b, "\\r"); break;
        case '\t': lm_strbuf_puts(b, "\\t"); break;
        case '\b': lm_strbuf_puts(b, "\\b"); break;
        case '\f': lm_strbuf_puts(b, "\\f"); break;
        default:
            if (c < 0x20) lm_strbuf_printf(b, "\\u%04x", c);
            else lm_strbuf_putc(b, (char)c);
        }
    }
    lm_strbuf_putc(b, '"');
}

static void json_newline(lm_strbuf *b, const char *indent, int level) {
    lm_strbuf_putc(b, '\n');
    for (int i = 0; i < level; i++) lm_strbuf_puts(b, indent);
}

static int json_key_order_cmp(const void *x, const void *y) {
    const jv *a = *(const jv *const *)x, *c = *(const jv *const *)y;
    int r = 0;
    if (jv_compare(*a, *c, &r) != 0) return 0;
    return r;
}

int jv_write_json(lm_strbuf *b, jv v, const char *indent, const char *item_sep, const char *key_sep,
                  bool sort_keys, bool ensure_ascii, int depth, char *err) {
    if (depth > 200) return lm_errf(err, "tojson: nesting too deep");
    if (!item_sep) item_sep = indent ? "," : ", ";
    if (!key_sep) key_sep = ": ";
    switch (v.type) {
    case JV_NONE: lm_strbuf_puts(b, "null"); return 0;
    case JV_BOOL: lm_strbuf_puts(b, v.u.b ? "true" : "false"); return 0;
    case JV_INT: lm_strbuf_printf(b, "%lld", (long long)v.u.i); return 0;
    case JV_FLOAT:
        if (isnan(v.u.f)) lm_strbuf_puts(b, "NaN");
        else if (isinf(v.u.f)) lm_strbuf_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else jv_write_float(b, v.u.f);
        return 0;
    case JV_STR: write_json_str(b, v.u.str.s, v.u.str.len, ensure_ascii); return 0;
    case JV_LIST: {
        if (v.sub == JV_GENERATOR) return lm_errf(err, "Object of type generator is not JSON serializable");
        if (v.u.list->len == 0) { lm_strbuf_puts(b, "[]"); return 0; }
        lm_strbuf_putc(b, '[');
        for (size_t i = 0; i < v.u.list->len; i++) {
            if (i) lm_strbuf_puts(b, item_sep);
            if (indent) json_newline(b, indent, depth + 1);
            if (jv_write_json(b, v.u.list->items[i], indent, item_sep, key_sep, sort_keys, ensure_ascii,
                              depth + 1, err))
                return -1;
        }
        if (indent) json_newline(b, indent, depth);
        lm_strbuf_putc(b, ']');
        return 0;
    }
    case JV_DICT: {
        jv_dict *d = v.u.dict;
        if (d->len == 0) { lm_strbuf_puts(b, "{}"); return 0; }
        const jv **order = malloc(d->len * sizeof *order);
        if (!order) return lm_errf(err, "out of memory");
        for (size_t i = 0; i < d->len; i++) order[i] = &d->keys[i];
        if (sort_keys) qsort(order, d->len, sizeof *order, json_key_order_cmp);
        lm_strbuf_putc(b, '{');
        int rc = 0;
        for (size_t i = 0; i < d->len && rc == 0; i++) {
            jv key = *order[i];
            jv val = d->vals[order[i] - d->keys];
            if (i) lm_strbuf_puts(b, item_sep);
            if (indent) json_newline(b, indent, depth + 1);
            if (key.type == JV_STR) write_json_str(b, key.u.str.s, key.u.str.len, ensure_ascii);
            else if (key.type == JV_INT || key.type == JV_FLOAT || key.type == JV_BOOL ||
                     key.type == JV_NONE) {
                lm_strbuf kb = {0};
                if (key.type == JV_NONE) lm_strbuf_puts(&kb, "null");
                else if (key.type == JV_BOOL) lm_strbuf_puts(&kb, key.u.b ? "true" : "false");
                else jv_write_str(&kb, key);
                write_json_str(b, kb.data ? kb.data : "", kb.len, ensure_ascii);
                lm_strbuf_free(&kb);
            } else {
                rc = lm_errf(err, "keys must be str, int, float, bool or None, not %s",
                             jv_type_name(key));
                break;
            }
            lm_strbuf_puts(b, key_sep);
            rc = jv_write_json(b, val, indent, item_sep, key_sep, sort_keys, ensure_ascii, depth + 1, err);
        }
        free(order);
        if (rc) return -1;
        if (indent) json_newline(b, indent, depth);
        lm_strbuf_putc(b, '}');
        return 0;
    }
    default:
        return lm_errf(err, "Object of type %s is not JSON serializable", jv_type_name(v));
    }
}

int jv_from_json(jarena *a, const json_t *j, jv *out, int depth) {
    if (depth > 500) return -1;
    switch (json_typeof(j)) {
    case JSON_NULL: *out = jv_none(); return 0;
    case JSON_TRUE: *out = jv_bool(true); return 0;
    case JSON_FALSE: *out = jv_bool(false); return 0;
    case JSON_INTEGER: *out = jv_int((int64_t)json_integer_value(j)); return 0;
    case JSON_REAL: *out = jv_float(json_real_value(j)); return 0;
    case JSON_STRING: {
        size_t n = json_string_length(j);
        char *s = ja_strndup(a, json_string_value(j), n);
        if (!s) return -1;
        *out = jv_strn(s, n);
        return 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jv_list *l = jv_list_new(a, n);
        if (!l) return -1;
        for (size_t i = 0; i < n; i++) {
            if (jv_from_json(a, json_array_get(j, i), &l->items[i], depth + 1)) return -1;
            l->len++;
        }
        jv v = {JV_LIST, 0, {0}};
        v.u.list = l;
        *out = v;
        return 0;
    }
    case JSON_OBJECT: {
        jv_dict *d = jv_dict_new(a, json_object_size(j));
        if (!d) return -1;
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)j, key, val) {
            jv k, x;
            char *ks = ja_strndup(a, key, strlen(key));
            if (!ks) return -1;
            k = jv_strn(ks, strlen(ks));
            if (jv_from_json(a, val, &x, depth + 1)) return -1;
            if (jv_dict_push(a, d, k, x)) return -1;
        }
        jv v = {JV_DICT, 0, {0}};
        v.u.dict = d;
        *out = v;
        return 0;
    }
    }
    return -1;
}

/* ---- UTF-8 ------------------------------------------------------------------------------------ */
size_t utf8_len(const char *s, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (utf8_char_starts(s, i)) count++;
    return count;
}

size_t utf8_offset(const char *s, size_t n, size_t index) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (utf8_char_starts(s, i)) {
            if (count == index) return i;
            count++;
        }
    }
    return n;
}

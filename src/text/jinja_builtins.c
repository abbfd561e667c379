/* Jinja builtins: filters, tests, methods of str/dict/list and global functions.
 *
 * Each follows jinja2 3.1 (filters/tests) or CPython (methods) on the inputs chat
 * templates give them; unusual argument shapes are errors rather than guesses.
 * Case mapping is ASCII-only. Deliberate difference from transformers' immutable
 * sandbox: list.append/extend work (several community templates rely on them).
 */
#include "text/jinja_internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUILTIN(name) \
    static int name(jrender *r, jv self, const jv *args, const char *const *kw, size_t nargs, size_t npos, jv *out)
#define UNUSED_ARGS (void)r, (void)self, (void)args, (void)kw, (void)nargs, (void)npos

/* Argument `pos` (positional index) or keyword `name`; def when absent. */
static jv arg(const jv *args, const char *const *kw, size_t nargs, size_t npos, size_t pos, const char *name, jv def) {
    if (pos < npos) return args[pos];
    for (size_t k = npos; k < nargs; k++)
        if (name && kw[k] && strcmp(kw[k], name) == 0) return args[k];
    return def;
}

static bool given(jv v) { return v.type != JV_UNDEF || v.u.str.s != NULL; }
static jv absent(void) { return jv_undef(NULL); }
#define ARG(pos, name) arg(args, kw, nargs, npos, pos, name, absent())

static jv make_list(jv_list *l, bool tuple) {
    jv v = {JV_LIST, tuple, {0}};
    v.u.list = l;
    return v;
}

static int need_str(jrender *r, jv v, const char *what) {
    if (v.type != JV_STR) return jr_fail(r, "%s must be a string, not '%s'", what, jv_type_name(v));
    return 0;
}

static int str_result(jrender *r, lm_strbuf *b, jv *out) {
    if (b->failed) { lm_strbuf_free(b); return jr_limit(r, "string exceeds the size limit"); }
    *out = jr_str(r, b->data, b->len);
    lm_strbuf_free(b);
    return r->has_error ? -1 : 0;
}

static char ascii_upper(char c) { return (c >= 'a' && c <= 'z') ? (char)(c - 32) : c; }
static char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }
static bool is_py_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

static size_t cp_len(const char *s, size_t n, size_t i) {
    size_t j = i + 1;
    while (j < n && !utf8_char_starts(s, j)) j++;
    return j - i;
}

/* ---- string methods ------------------------------------------------------------------------ */
static bool in_charset(const char *cp, size_t cplen, jv chars) {
    if (chars.type != JV_STR) return cplen == 1 && is_py_space((unsigned char)cp[0]);
    return memmem(chars.u.str.s, chars.u.str.len, cp, cplen) != NULL;
}

static int do_strip(jrender *r, jv s, jv chars, bool left, bool right, jv *out) {
    if (given(chars) && chars.type != JV_NONE && need_str(r, chars, "strip chars")) return -1;
    const char *p = s.u.str.s;
    size_t lo = 0, hi = s.u.str.len;
    if (left) {
        while (lo < hi) {
            size_t l = cp_len(p, hi, lo);
            if (!in_charset(p + lo, l, chars)) break;
            lo += l;
        }
    }
    if (right) {
        while (hi > lo) {
            size_t st = hi - 1;
            while (st > lo && !utf8_char_starts(p, st)) st--;
            if (!in_charset(p + st, hi - st, chars)) break;
            hi = st;
        }
    }
    *out = jv_strn(p + lo, hi - lo);
    return 0;
}

BUILTIN(m_strip) { UNUSED_ARGS; return do_strip(r, self, ARG(0, "chars"), true, true, out); }
BUILTIN(m_lstrip) { UNUSED_ARGS; return do_strip(r, self, ARG(0, "chars"), true, false, out); }
BUILTIN(m_rstrip) { UNUSED_ARGS; return do_strip(r, self, ARG(0, "chars"), false, true, out); }

static int case_map(jrender *r, jv s, int mode, jv *out) {
    /* mode: 0 upper, 1 lower, 2 capitalize, 3 str.title, 4 jinja title filter */
    char *d = ja_alloc(&r->arena, s.u.str.len + 1);
    if (!d) return jr_oom(r);
    bool word_start = true;
    for (size_t i = 0; i < s.u.str.len; i++) {
        char c = s.u.str.s[i];
        switch (mode) {
        case 0: d[i] = ascii_upper(c); break;
        case 1: d[i] = ascii_lower(c); break;
        case 2: d[i] = i == 0 ? ascii_upper(c) : ascii_lower(c); break;
        case 3: {
            bool alpha = isalpha((unsigned char)c) || ((unsigned char)c & 0x80);
            d[i] = alpha ? (word_start ? ascii_upper(c) : ascii_lower(c)) : c;
            word_start = !alpha;
            break;
        }
        default: {
            bool sep = is_py_space((unsigned char)c) || strchr("-[](){}", c) != NULL;
            d[i] = sep ? c : (word_start ? ascii_upper(c) : ascii_lower(c));
            word_start = sep;
        }
        }
    }
    *out = jv_strn(d, s.u.str.len);
    return 0;
}

BUILTIN(m_upper) { UNUSED_ARGS; return case_map(r, self, 0, out); }
BUILTIN(m_lower) { UNUSED_ARGS; return case_map(r, self, 1, out); }
BUILTIN(m_capitalize) { UNUSED_ARGS; return case_map(r, self, 2, out); }
BUILTIN(m_title) { UNUSED_ARGS; return case_map(r, self, 3, out); }

static int do_split(jrender *r, jv s, jv sep, jv maxsplit_v, bool from_right, jv *out) {
    int64_t maxsplit = maxsplit_v.type == JV_INT ? maxsplit_v.u.i : -1;
    jv_list *l = jv_list_new(&r->arena, 0);
    if (!l) return jr_oom(r);
    const char *p = s.u.str.s;
    size_t n = s.u.str.len;
    if (!given(sep) || sep.type == JV_NONE) {
        /* runs of whitespace; leading/trailing ignored */
        if (!from_right) {
            size_t i = 0;
            while (i < n) {
                while (i < n && is_py_space((unsigned char)p[i])) i++;
                if (i >= n) break;
                size_t st = i;
                if (maxsplit >= 0 && (int64_t)l->len >= maxsplit) {
                    size_t e = n;
                    while (e > st && is_py_space((unsigned char)p[e - 1])) e--;
                    if (jv_list_push(&r->arena, l, jv_strn(p + st, e - st))) return jr_oom(r);
                    break;
                }
                while (i < n && !is_py_space((unsigned char)p[i])) i++;
                if (jv_list_push(&r->arena, l, jv_strn(p + st, i - st))) return jr_oom(r);
            }
        } else {
            size_t i = n;
            while (i > 0) {
                while (i > 0 && is_py_space((unsigned char)p[i - 1])) i--;
                if (i == 0) break;
                size_t e = i;
                if (maxsplit >= 0 && (int64_t)l->len >= maxsplit) {
                    size_t st = 0;
                    while (st < e && is_py_space((unsigned char)p[st])) st++;
                    if (jv_list_push(&r->arena, l, jv_strn(p + st, e - st))) return jr_oom(r);
                    break;
                }
                while (i > 0 && !is_py_space((unsigned char)p[i - 1])) i--;
                if (jv_list_push(&r->arena, l, jv_strn(p + i, e - i))) return jr_oom(r);
            }
        }
    } else {
        if (need_str(r, sep, "separator")) return -1;
        size_t m = sep.u.str.len;
        if (m == 0) return jr_fail(r, "empty separator");
        if (!from_right) {
            size_t st = 0;
            for (;;) {
                const char *hit = (maxsplit < 0 || (int64_t)l->len < maxsplit) ? memmem(p + st, n - st, sep.u.str.s, m) : NULL;
                if (!hit) {
                    if (jv_list_push(&r->arena, l, jv_strn(p + st, n - st))) return jr_oom(r);
                    break;
                }
                size_t at = (size_t)(hit - p);
                if (jv_list_push(&r->arena, l, jv_strn(p + st, at - st))) return jr_oom(r);
                st = at + m;
            }
        } else {
            size_t e = n;
            for (;;) {
                size_t at = SIZE_MAX;
                if ((maxsplit < 0 || (int64_t)l->len < maxsplit) && e >= m)
                    for (size_t k = e - m + 1; k-- > 0;)
                        if (memcmp(p + k, sep.u.str.s, m) == 0) { at = k; break; }
                if (at == SIZE_MAX) {
                    if (jv_list_push(&r->arena, l, jv_strn(p, e))) return jr_oom(r);
                    break;
                }
                if (jv_list_push(&r->arena, l, jv_strn(p + at + m, e - at - m))) return jr_oom(r);
                e = at;
            }
        }
    }
    if (from_right)  /* collected right to left */
        for (size_t i = 0; i < l->len / 2; i++) {
            jv t = l->items[i];
            l->items[i] = l->items[l->len - 1 - i];
            l->items[l->len - 1 - i] = t;
        }
    *out = make_list(l, false);
    return 0;
}

BUILTIN(m_split) { UNUSED_ARGS; return do_split(r, self, ARG(0, "sep"), ARG(1, "maxsplit"), false, out); }
BUILTIN(m_rsplit) { UNUSED_ARGS; return do_split(r, self, ARG(0, "sep"), ARG(1, "maxsplit"), true, out); }

BUILTIN(m_splitlines) {
    UNUSED_ARGS;
    jv_list *l = jv_list_new(&r->arena, 0);
    if (!l) return jr_oom(r);
    const char *p = self.u.str.s;
    size_t n = self.u.str.len, st = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' || p[i] == '\r') {
            if (jv_list_push(&r->arena, l, jv_strn(p + st, i - st))) return jr_oom(r);
            if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') i++;
            st = i + 1;
        }
    }
    if (st < n && jv_list_push(&r->arena, l, jv_strn(p + st, n - st))) return jr_oom(r);
    *out = make_list(l, false);
    return 0;
}

static int affix_check(jrender *r, jv self, jv what, bool start, bool *res) {
    *res = false;
    if (what.type == JV_LIST && what.sub) {
        for (size_t i = 0; i < what.u.list->len && !*res; i++)
            if (affix_check(r, self, what.u.list->items[i], start, res)) return -1;
        return 0;
    }
    if (what.type != JV_STR)
        return jr_fail(r, "%s first arg must be str or a tuple of str, not %s", start ? "startswith" : "endswith",
                       jv_type_name(what));
    size_t m = what.u.str.len;
    if (m > self.u.str.len) return 0;
    *res = memcmp(self.u.str.s + (start ? 0 : self.u.str.len - m), what.u.str.s, m) == 0;
    return 0;
}

BUILTIN(m_startswith) {
    UNUSED_ARGS;
    bool res;
    if (affix_check(r, self, ARG(0, "prefix"), true, &res)) return -1;
    *out = jv_bool(res);
    return 0;
}

BUILTIN(m_endswith) {
    UNUSED_ARGS;
    bool res;
    if (affix_check(r, self, ARG(0, "suffix"), false, &res)) return -1;
    *out = jv_bool(res);
    return 0;
}

static int do_replace(jrender *r, jv s, jv old, jv new_, jv count_v, jv *out) {
    if (need_str(r, old, "replace() argument 1") || need_str(r, new_, "replace() argument 2")) return -1;
    int64_t count = count_v.type == JV_INT ? count_v.u.i : -1;
    lm_strbuf b = {.limit = r->max_output};
    const char *p = s.u.str.s;
    size_t n = s.u.str.len, m = old.u.str.len;
    int64_t done = 0;
    if (m == 0) {
        for (size_t i = 0; i <= n;) {
            if (count < 0 || done < count) { lm_strbuf_append(&b, new_.u.str.s, new_.u.str.len); done++; }
            if (i == n) break;
            size_t l = cp_len(p, n, i);
            lm_strbuf_append(&b, p + i, l);
            i += l;
        }
        return str_result(r, &b, out);
    }
    size_t st = 0;
    while (count < 0 || done < count) {
        const char *hit = memmem(p + st, n - st, old.u.str.s, m);
        if (!hit) break;
        lm_strbuf_append(&b, p + st, (size_t)(hit - p) - st);
        lm_strbuf_append(&b, new_.u.str.s, new_.u.str.len);
        st = (size_t)(hit - p) + m;
        done++;
    }
    lm_strbuf_append(&b, p + st, n - st);
    return str_result(r, &b, out);
}

BUILTIN(m_replace) { UNUSED_ARGS; return do_replace(r, self, ARG(0, "old"), ARG(1, "new"), ARG(2, "count"), out); }

BUILTIN(m_find) {
    UNUSED_ARGS;
    jv sub = ARG(0, "sub");
    if (need_str(r, sub, "find() argument")) return -1;
    const char *hit = memmem(self.u.str.s, self.u.str.len, sub.u.str.s, sub.u.str.len);
    *out = jv_int(hit ? (int64_t)utf8_len(self.u.str.s, (size_t)(hit - self.u.str.s)) : -1);
    return 0;
}

BUILTIN(m_rfind) {
    UNUSED_ARGS;
    jv sub = ARG(0, "sub");
    if (need_str(r, sub, "rfind() argument")) return -1;
    size_t n = self.u.str.len, m = sub.u.str.len;
    *out = jv_int(-1);
    if (m > n) return 0;
    for (size_t k = n - m + 1; k-- > 0;)
        if (memcmp(self.u.str.s + k, sub.u.str.s, m) == 0) { *out = jv_int((int64_t)utf8_len(self.u.str.s, k)); break; }
    return 0;
}

BUILTIN(m_str_count) {
    UNUSED_ARGS;
    jv sub = ARG(0, "sub");
    if (need_str(r, sub, "count() argument")) return -1;
    if (sub.u.str.len == 0) { *out = jv_int((int64_t)utf8_len(self.u.str.s, self.u.str.len) + 1); return 0; }
    int64_t c = 0;
    const char *p = self.u.str.s, *end = p + self.u.str.len;
    const char *hit;
    while ((hit = memmem(p, (size_t)(end - p), sub.u.str.s, sub.u.str.len))) { c++; p = hit + sub.u.str.len; }
    *out = jv_int(c);
    return 0;
}

BUILTIN(m_str_join) {
    UNUSED_ARGS;
    jv_list *items;
    if (jinja_iterable(r, ARG(0, "iterable"), &items)) return -1;
    lm_strbuf b = {.limit = r->max_output};
    for (size_t i = 0; i < items->len; i++) {
        if (items->items[i].type != JV_STR) {
            lm_strbuf_free(&b);
            return jr_fail(r, "sequence item %zu: expected str instance, %s found", i, jv_type_name(items->items[i]));
        }
        if (i) lm_strbuf_append(&b, self.u.str.s, self.u.str.len);
        lm_strbuf_append(&b, items->items[i].u.str.s, items->items[i].u.str.len);
    }
    return str_result(r, &b, out);
}

/* str.format with {} / {0} / {name} fields; format specs are not supported. */
BUILTIN(m_format) {
    UNUSED_ARGS;
    lm_strbuf b = {.limit = r->max_output};
    const char *p = self.u.str.s;
    size_t n = self.u.str.len, auto_index = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '{' && i + 1 < n && p[i + 1] == '{') { lm_strbuf_putc(&b, '{'); i++; continue; }
        if (p[i] == '}' && i + 1 < n && p[i + 1] == '}') { lm_strbuf_putc(&b, '}'); i++; continue; }
        if (p[i] != '{') { lm_strbuf_putc(&b, p[i]); continue; }
        const char *close = memchr(p + i, '}', n - i);
        if (!close) { lm_strbuf_free(&b); return jr_fail(r, "Single '{' encountered in format string"); }
        size_t fl = (size_t)(close - p) - i - 1;
        const char *field = p + i + 1;
        if (memchr(field, ':', fl) || memchr(field, '!', fl)) { lm_strbuf_free(&b); return jr_fail(r, "format specs are not supported"); }
        jv v;
        bool found = false;
        if (fl == 0) {
            if (auto_index < npos) { v = args[auto_index]; found = true; }
            auto_index++;
        } else if (isdigit((unsigned char)field[0])) {
            size_t idx = (size_t)strtoul(field, NULL, 10);
            if (idx < npos) { v = args[idx]; found = true; }
        } else {
            for (size_t k = npos; k < nargs; k++)
                if (strlen(kw[k]) == fl && memcmp(kw[k], field, fl) == 0) { v = args[k]; found = true; }
        }
        if (!found) { lm_strbuf_free(&b); return jr_fail(r, "format field '%.*s' has no argument", (int)fl, field); }
        jv_write_str(&b, v);
        i = (size_t)(close - p);
    }
    return str_result(r, &b, out);
}

static int str_pred(jrender *r, jv self, int kind, jv *out) {
    (void)r;
    bool ok = self.u.str.len > 0, has_cased = false;
    for (size_t i = 0; i < self.u.str.len; i++) {
        unsigned char c = (unsigned char)self.u.str.s[i];
        switch (kind) {
        case 0: ok = ok && isdigit(c); break;
        case 1: ok = ok && (isalpha(c) || c >= 0x80); break;
        case 2: ok = ok && is_py_space(c); break;
        case 3: if (islower(c)) ok = false; if (isupper(c)) has_cased = true; break;
        default: if (isupper(c)) ok = false; if (islower(c)) has_cased = true; break;
        }
    }
    *out = jv_bool(kind >= 3 ? ok && has_cased : ok);
    return 0;
}

BUILTIN(m_isdigit) { UNUSED_ARGS; return str_pred(r, self, 0, out); }
BUILTIN(m_isalpha) { UNUSED_ARGS; return str_pred(r, self, 1, out); }
BUILTIN(m_isspace) { UNUSED_ARGS; return str_pred(r, self, 2, out); }
BUILTIN(m_isupper) { UNUSED_ARGS; return str_pred(r, self, 3, out); }
BUILTIN(m_islower) { UNUSED_ARGS; return str_pred(r, self, 4, out); }

/* ---- dict and list methods -------------------------------------------------------------------- */
static int dict_items(jrender *r, jv_dict *d, int which, jv *out) {
    /* which: 0 items, 1 keys, 2 values */
    jv_list *l = jv_list_new(&r->arena, d->len);
    if (!l) return jr_oom(r);
    for (size_t i = 0; i < d->len; i++) {
        if (which == 0) {
            jv_list *pair = jv_list_new(&r->arena, 2);
            if (!pair) return jr_oom(r);
            pair->items[0] = d->keys[i];
            pair->items[1] = d->vals[i];
            pair->len = 2;
            l->items[i] = make_list(pair, true);
        } else {
            l->items[i] = which == 1 ? d->keys[i] : d->vals[i];
        }
        l->len++;
    }
    *out = make_list(l, false);
    return 0;
}

BUILTIN(m_items) { UNUSED_ARGS; return dict_items(r, self.u.dict, 0, out); }
BUILTIN(m_keys) { UNUSED_ARGS; return dict_items(r, self.u.dict, 1, out); }
BUILTIN(m_values) { UNUSED_ARGS; return dict_items(r, self.u.dict, 2, out); }

BUILTIN(m_get) {
    UNUSED_ARGS;
    jv *v = jv_dict_get(self.u.dict, ARG(0, "key"));
    jv def = ARG(1, "default");
    *out = v ? *v : (given(def) ? def : jv_none());
    return 0;
}

BUILTIN(m_append) {
    UNUSED_ARGS;
    if (npos != 1) return jr_fail(r, "append() takes exactly one argument");
    if (r->arena.limit && r->arena.total > r->arena.limit) return jr_oom(r);
    if (jv_list_push(&r->arena, self.u.list, args[0])) return jr_oom(r);
    *out = jv_none();
    return 0;
}

BUILTIN(m_extend) {
    UNUSED_ARGS;
    jv_list *items;
    if (npos != 1 || jinja_iterable(r, args[0], &items)) return npos != 1 ? jr_fail(r, "extend() takes exactly one argument") : -1;
    for (size_t i = 0; i < items->len; i++)
        if (jv_list_push(&r->arena, self.u.list, items->items[i])) return jr_oom(r);
    *out = jv_none();
    return 0;
}

BUILTIN(m_index) {
    UNUSED_ARGS;
    for (size_t i = 0; i < self.u.list->len; i++)
        if (jv_equal(self.u.list->items[i], ARG(0, "value"))) { *out = jv_int((int64_t)i); return 0; }
    return jr_fail(r, "value is not in list");
}

BUILTIN(m_list_count) {
    UNUSED_ARGS;
    int64_t c = 0;
    for (size_t i = 0; i < self.u.list->len; i++) c += jv_equal(self.u.list->items[i], ARG(0, "value"));
    *out = jv_int(c);
    return 0;
}

typedef struct { const char *name; jv_builtin fn; } named_fn;

static const named_fn str_methods[] = {
    {"strip", m_strip}, {"lstrip", m_lstrip}, {"rstrip", m_rstrip}, {"split", m_split}, {"rsplit", m_rsplit},
    {"splitlines", m_splitlines}, {"startswith", m_startswith}, {"endswith", m_endswith}, {"replace", m_replace},
    {"upper", m_upper}, {"lower", m_lower}, {"title", m_title}, {"capitalize", m_capitalize}, {"find", m_find},
    {"rfind", m_rfind}, {"count", m_str_count}, {"join", m_str_join}, {"format", m_format}, {"isdigit", m_isdigit},
    {"isalpha", m_isalpha}, {"isspace", m_isspace}, {"isupper", m_isupper}, {"islower", m_islower}, {NULL, NULL}};
static const named_fn dict_methods[] = {
    {"items", m_items}, {"keys", m_keys}, {"values", m_values}, {"get", m_get}, {NULL, NULL}};
static const named_fn list_methods[] = {
    {"append", m_append}, {"extend", m_extend}, {"index", m_index}, {"count", m_list_count}, {NULL, NULL}};

static jv_builtin find_fn(const named_fn *table, const char *name, size_t len) {
    for (; table->name; table++)
        if (strlen(table->name) == len && memcmp(table->name, name, len) == 0) return table->fn;
    return NULL;
}

jv_builtin jinja_method(jv self, const char *name, size_t len) {
    switch (self.type) {
    case JV_STR: return find_fn(str_methods, name, len);
    case JV_DICT: return find_fn(dict_methods, name, len);
    case JV_LIST: return self.sub ? NULL : find_fn(list_methods, name, len);
    default: return NULL;
    }
}

/* ---- filters ---------------------------------------------------------------------------------------- */
#define FILTER(name) static int name(jrender *r, jv v, const jv *args, const char *const *kw, size_t nargs, size_t npos, jv *out)
#define UNUSED_F (void)r, (void)v, (void)args, (void)kw, (void)nargs, (void)npos

static int to_str(jrender *r, jv v, jv *out) { return jinja_to_str(r, v, out); }

FILTER(f_tojson) {
    UNUSED_F;
    /* transformers' signature: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) */
    jv ascii = ARG(0, "ensure_ascii"), indent_v = ARG(1, "indent"), seps = ARG(2, "separators"), sort = ARG(3, "sort_keys");
    char indent_buf[64];
    const char *indent = NULL, *item_sep = NULL, *key_sep = NULL;
    if (indent_v.type == JV_INT) {
        int64_t w = indent_v.u.i < 0 ? 0 : indent_v.u.i > 32 ? 32 : indent_v.u.i;
        memset(indent_buf, ' ', (size_t)w);
        indent_buf[w] = 0;
        indent = indent_buf;
    } else if (indent_v.type == JV_STR) {
        indent = ja_strndup(&r->arena, indent_v.u.str.s, indent_v.u.str.len);
        if (!indent) return jr_oom(r);
    }
    if (seps.type == JV_LIST && seps.u.list->len == 2 && seps.u.list->items[0].type == JV_STR &&
        seps.u.list->items[1].type == JV_STR) {
        item_sep = ja_strndup(&r->arena, seps.u.list->items[0].u.str.s, seps.u.list->items[0].u.str.len);
        key_sep = ja_strndup(&r->arena, seps.u.list->items[1].u.str.s, seps.u.list->items[1].u.str.len);
        if (!item_sep || !key_sep) return jr_oom(r);
    }
    if (v.type == JV_UNDEF) return jr_fail(r, "Object of type Undefined is not JSON serializable");
    lm_strbuf b = {.limit = r->max_output};
    char err[LM_ERR_LEN];
    if (jv_write_json(&b, v, indent, item_sep, key_sep, jv_truthy(sort), jv_truthy(ascii), 0, err)) {
        lm_strbuf_free(&b);
        return jr_fail(r, "%s", err);
    }
    return str_result(r, &b, out);
}

FILTER(f_trim) {
    UNUSED_F;
    jv s;
    if (to_str(r, v, &s)) return -1;
    return do_strip(r, s, ARG(0, "chars"), true, true, out);
}

static int case_filter(jrender *r, jv v, int mode, jv *out) {
    jv s;
    if (to_str(r, v, &s)) return -1;
    return case_map(r, s, mode, out);
}
FILTER(f_upper) { UNUSED_F; return case_filter(r, v, 0, out); }
FILTER(f_lower) { UNUSED_F; return case_filter(r, v, 1, out); }
FILTER(f_capitalize) { UNUSED_F; return case_filter(r, v, 2, out); }
FILTER(f_title) { UNUSED_F; return case_filter(r, v, 4, out); }

FILTER(f_length) {
    UNUSED_F;
    switch (v.type) {
    case JV_STR: *out = jv_int((int64_t)utf8_len(v.u.str.s, v.u.str.len)); return 0;
    case JV_LIST:
        if (v.sub == JV_GENERATOR) return jr_fail(r, "object of type 'generator' has no len()");
        *out = jv_int((int64_t)v.u.list->len);
        return 0;
    case JV_DICT: *out = jv_int((int64_t)v.u.dict->len); return 0;
    case JV_UNDEF: *out = jv_int(0); return 0;
    default: return jr_fail(r, "object of type '%s' has no len()", jv_type_name(v));
    }
}

FILTER(f_first) {
    UNUSED_F;
    jv_list *l;
    if (jinja_iterable(r, v, &l)) return -1;
    *out = l->len ? l->items[0] : jv_undef("No first item, sequence was empty.");
    return 0;
}

FILTER(f_last) {
    UNUSED_F;
    jv_list *l;
    if (v.type == JV_LIST && v.sub == JV_GENERATOR) return jr_fail(r, "'generator' object is not reversible");
    if (jinja_iterable(r, v, &l)) return -1;
    *out = l->len ? l->items[l->len - 1] : jv_undef("No last item, sequence was empty.");
    return 0;
}

/* Resolves a dotted attribute path as jinja2's make_attrgetter (item lookup first). */
static int get_path(jrender *r, jv item, jv path, jv *out) {
    if (path.type == JV_INT) return jinja_getitem(r, item, path, out);
    if (path.type != JV_STR) return jr_fail(r, "attribute must be a string");
    const char *p = path.u.str.s, *end = p + path.u.str.len;
    while (1) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
        jv key = jv_strn(p, n);
        bool digits = n > 0;
        for (size_t i = 0; i < n; i++) digits = digits && isdigit((unsigned char)p[i]);
        if (digits) key = jv_int(strtoll(p, NULL, 10));
        if (jinja_getitem(r, item, key, &item)) return -1;
        if (!dot) break;
        p = dot + 1;
    }
    *out = item;
    return 0;
}

FILTER(f_join) {
    UNUSED_F;
    jv sep = ARG(0, "d"), attr = ARG(1, "attribute");
    jv_list *l;
    if (jinja_iterable(r, v, &l)) return -1;
    lm_strbuf b = {.limit = r->max_output};
    for (size_t i = 0; i < l->len; i++) {
        jv item = l->items[i];
        if (given(attr) && get_path(r, item, attr, &item)) { lm_strbuf_free(&b); return -1; }
        if (i && given(sep)) jv_write_str(&b, sep);
        jv_write_str(&b, item);
    }
    return str_result(r, &b, out);
}

FILTER(f_default) {
    UNUSED_F;
    jv def = ARG(0, "default_value"), boolean = ARG(1, "boolean");
    if (!given(def)) def = jv_strn("", 0);
    bool use_default = v.type == JV_UNDEF || (jv_truthy(boolean) && !jv_truthy(v));
    *out = use_default ? def : v;
    return 0;
}

FILTER(f_replace) {
    UNUSED_F;
    jv s;
    if (to_str(r, v, &s)) return -1;
    jv old = ARG(0, "old"), new_ = ARG(1, "new");
    jv old_s, new_s;
    if (to_str(r, old, &old_s) || to_str(r, new_, &new_s)) return -1;
    return do_replace(r, s, old_s, new_s, ARG(2, "count"), out);
}

FILTER(f_list) {
    UNUSED_F;
    jv_list *l;
    if (jinja_iterable(r, v, &l)) return -1;
    *out = make_list(l, false);
    return 0;
}

FILTER(f_items) {
    UNUSED_F;
    if (v.type == JV_UNDEF) {
        jv_list *l = jv_list_new(&r->arena, 0);
        if (!l) return jr_oom(r);
        *out = make_list(l, false);
        return 0;
    }
    if (v.type != JV_DICT) return jr_fail(r, "Can only get item pairs from a mapping.");
    return dict_items(r, v.u.dict, 0, out);
}

/* select/reject/selectattr/rejectattr share this: keep items whose test result == keep. */
static int select_common(jrender *r, jv v, const jv *args, size_t npos, bool by_attr, bool keep, jv *out) {
    jv_list *l, *res;
    if (!jv_truthy(v)) v = jv_undef(NULL);  /* jinja2: `if value:` before iterating */
    if (jinja_iterable(r, v, &l)) return -1;
    if (!(res = jv_list_new(&r->arena, l->len))) return jr_oom(r);
    size_t first_test_arg = by_attr ? 1 : 0;
    if (by_attr && npos < 1) return jr_fail(r, "selectattr/rejectattr need an attribute name");
    for (size_t i = 0; i < l->len; i++) {
        jv item = l->items[i];
        if (by_attr && get_path(r, item, args[0], &item)) return -1;
        bool ok;
        if (npos > first_test_arg) {
            jv test = args[first_test_arg];
            if (test.type != JV_STR) return jr_fail(r, "test name must be a string");
            if (jinja_apply_test(r, test.u.str.s, test.u.str.len, item, args + first_test_arg + 1,
                                 npos - first_test_arg - 1, &ok))
                return -1;
        } else {
            ok = jv_truthy(item);
        }
        if (ok == keep) res->items[res->len++] = l->items[i];
    }
    *out = make_list(res, false);
    out->sub = JV_GENERATOR;
    return 0;
}

FILTER(f_select) { UNUSED_F; return select_common(r, v, args, npos, false, true, out); }
FILTER(f_reject) { UNUSED_F; return select_common(r, v, args, npos, false, false, out); }
FILTER(f_selectattr) { UNUSED_F; return select_common(r, v, args, npos, true, true, out); }
FILTER(f_rejectattr) { UNUSED_F; return select_common(r, v, args, npos, true, false, out); }

FILTER(f_map) {
    UNUSED_F;
    jv_list *l, *res;
    if (!jv_truthy(v)) v = jv_undef(NULL);  /* jinja2: `if value:` before iterating */
    if (jinja_iterable(r, v, &l)) return -1;
    if (!(res = jv_list_new(&r->arena, l->len))) return jr_oom(r);
    jv attr = ARG(99, "attribute"), def = ARG(99, "default");
    if (!given(attr) && (npos < 1 || args[0].type != JV_STR)) return jr_fail(r, "map needs a filter name or attribute=");
    for (size_t i = 0; i < l->len; i++) {
        jv item = l->items[i];
        if (given(attr)) {
            if (get_path(r, item, attr, &item)) return -1;
            if (item.type == JV_UNDEF && given(def)) item = def;
        } else {
            if (jinja_apply_filter(r, args[0].u.str.s, args[0].u.str.len, item, args + 1, kw + 1, nargs - 1, npos - 1, &item))
                return -1;
        }
        res->items[res->len++] = item;
    }
    *out = make_list(res, false);
    out->sub = JV_GENERATOR;
    return 0;
}

FILTER(f_string) { UNUSED_F; return to_str(r, v, out); }

static bool parse_py_int(const char *s, size_t n, int64_t base, int64_t *out) {
    char buf[80];
    size_t k = 0;
    size_t i = 0;
    while (i < n && is_py_space((unsigned char)s[i])) i++;
    while (n > i && is_py_space((unsigned char)s[n - 1])) n--;
    if (i == n || n - i >= sizeof buf) return false;
    for (; i < n; i++) if (s[i] != '_') buf[k++] = s[i];
    buf[k] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, (int)base);
    if (*end || errno) return false;
    *out = v;
    return true;
}

FILTER(f_int) {
    UNUSED_F;
    jv def = ARG(0, "default"), base = ARG(1, "base");
    if (!given(def)) def = jv_int(0);
    int64_t b = base.type == JV_INT ? base.u.i : 10, i;
    switch (v.type) {
    case JV_UNDEF: return jr_fail(r, "%s", v.u.str.s ? v.u.str.s : "value is undefined");  /* int(Undefined) raises */
    case JV_INT: *out = v; return 0;
    case JV_BOOL: *out = jv_int(v.u.b); return 0;
    case JV_FLOAT:
        if (!isfinite(v.u.f) || fabs(v.u.f) > 9.2e18) { *out = def; return 0; }
        *out = jv_int((int64_t)v.u.f);
        return 0;
    case JV_STR:
        if (parse_py_int(v.u.str.s, v.u.str.len, b, &i)) { *out = jv_int(i); return 0; }
        {
            char buf[80];
            if (v.u.str.len < sizeof buf) {
                memcpy(buf, v.u.str.s, v.u.str.len);
                buf[v.u.str.len] = 0;
                char *end;
                double f = strtod(buf, &end);
                while (*end && is_py_space((unsigned char)*end)) end++;
                if (end != buf && !*end && isfinite(f) && fabs(f) < 9.2e18) { *out = jv_int((int64_t)f); return 0; }
            }
        }
        *out = def;
        return 0;
    default: *out = def; return 0;
    }
}

FILTER(f_float) {
    UNUSED_F;
    jv def = ARG(0, "default");
    if (!given(def)) def = jv_float(0.0);
    if (v.type == JV_UNDEF) return jr_fail(r, "%s", v.u.str.s ? v.u.str.s : "value is undefined");
    if (jv_is_number(v)) { *out = jv_float(jv_as_double(v)); return 0; }
    if (v.type == JV_STR && v.u.str.len < 80) {
        char buf[80];
        memcpy(buf, v.u.str.s, v.u.str.len);
        buf[v.u.str.len] = 0;
        char *end;
        double f = strtod(buf, &end);
        while (*end && is_py_space((unsigned char)*end)) end++;
        if (end != buf && !*end) { *out = jv_float(f); return 0; }
    }
    *out = def;
    return 0;
}

FILTER(f_abs) {
    UNUSED_F;
    if (v.type == JV_INT) {
        if (v.u.i == INT64_MIN) return jr_fail(r, "integer overflow");
        *out = jv_int(v.u.i < 0 ? -v.u.i : v.u.i);
    } else if (v.type == JV_BOOL) *out = jv_int(v.u.b);
    else if (v.type == JV_FLOAT) *out = jv_float(fabs(v.u.f));
    else return jr_fail(r, "bad operand type for abs(): '%s'", jv_type_name(v));
    return 0;
}

FILTER(f_round) {
    UNUSED_F;
    jv prec_v = ARG(0, "precision"), method = ARG(1, "method");
    int64_t prec = prec_v.type == JV_INT ? prec_v.u.i : 0;
    if (prec < -20) prec = -20;
    if (prec > 20) prec = 20;
    if (!jv_is_number(v)) return jr_fail(r, "round() needs a number, not '%s'", jv_type_name(v));
    bool common = !given(method) || (method.type == JV_STR && method.u.str.len == 6 && memcmp(method.u.str.s, "common", 6) == 0);
    if (common && v.type != JV_FLOAT && prec >= 0) { *out = jv_int(v.type == JV_INT ? v.u.i : v.u.b); return 0; }
    double x = jv_as_double(v), scale = pow(10.0, (double)prec), y;
    if (common) y = nearbyint(x * scale) / scale;  /* Python round(): half to even */
    else if (method.type == JV_STR && method.u.str.len == 5 && memcmp(method.u.str.s, "floor", 5) == 0) y = floor(x * scale) / scale;
    else if (method.type == JV_STR && method.u.str.len == 4 && memcmp(method.u.str.s, "ceil", 4) == 0) y = ceil(x * scale) / scale;
    else return jr_fail(r, "method must be common, ceil or floor");
    *out = jv_float(y);
    return 0;
}

/* ---- sorting (stable merge sort whose comparisons may fail) ---- */
typedef struct {
    jrender *r;
    bool case_sensitive;
    bool failed;
} sort_ctx;

static jv sort_key(jrender *r, jv v, bool case_sensitive) {
    if (case_sensitive || v.type != JV_STR) return v;
    jv out;
    if (case_map(r, v, 1, &out)) return v;
    return out;
}

static int cmp_keys(sort_ctx *c, jv a, jv b) {
    int res = 0;
    if (c->failed) return 0;
    if (jv_compare(a, b, &res)) {
        c->failed = true;
        jr_fail(c->r, "'<' not supported between instances of '%s' and '%s'", jv_type_name(a), jv_type_name(b));
    }
    return res;
}

/* Sorts items by keys (parallel arrays), stable. */
static int merge_sort(sort_ctx *c, jv *keys, jv *items, size_t n, bool reverse) {
    if (n < 2) return 0;
    jv *tk = ja_alloc(&c->r->arena, n * sizeof(jv)), *ti = ja_alloc(&c->r->arena, n * sizeof(jv));
    if (!tk || !ti) return jr_oom(c->r);
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int cmp = cmp_keys(c, keys[j], keys[i]);
                bool take_right = reverse ? cmp > 0 : cmp < 0;
                if (take_right) { tk[k] = keys[j]; ti[k++] = items[j++]; }
                else { tk[k] = keys[i]; ti[k++] = items[i++]; }
            }
            while (i < mid) { tk[k] = keys[i]; ti[k++] = items[i++]; }
            while (j < hi) { tk[k] = keys[j]; ti[k++] = items[j++]; }
        }
        memcpy(keys, tk, n * sizeof(jv));
        memcpy(items, ti, n * sizeof(jv));
        if (c->failed) return -1;
    }
    return c->failed ? -1 : 0;
}

static int sorted_copy(jrender *r, jv v, jv attr, bool case_sensitive, bool reverse, jv_list **out) {
    jv_list *l;
    if (jinja_iterable(r, v, &l)) return -1;
    jv *keys = ja_alloc(&r->arena, (l->len + 1) * sizeof(jv));
    if (!keys) return jr_oom(r);
    for (size_t i = 0; i < l->len; i++) {
        jv k = l->items[i];
        if (given(attr) && get_path(r, k, attr, &k)) return -1;
        keys[i] = sort_key(r, k, case_sensitive);
    }
    sort_ctx c = {r, case_sensitive, false};
    if (merge_sort(&c, keys, l->items, l->len, reverse)) return -1;
    *out = l;
    return 0;
}

FILTER(f_sort) {
    UNUSED_F;
    jv_list *l;
    if (sorted_copy(r, v, ARG(2, "attribute"), jv_truthy(ARG(1, "case_sensitive")), jv_truthy(ARG(0, "reverse")), &l))
        return -1;
    *out = make_list(l, false);
    return 0;
}

FILTER(f_dictsort) {
    UNUSED_F;
    if (v.type != JV_DICT) return jr_fail(r, "You can only sort by either \"key\" or \"value\"");
    jv items, by = ARG(1, "by");
    if (dict_items(r, v.u.dict, 0, &items)) return -1;
    bool by_value = by.type == JV_STR && by.u.str.len == 5 && memcmp(by.u.str.s, "value", 5) == 0;
    jv_list *l;
    if (sorted_copy(r, items, jv_int(by_value ? 1 : 0), jv_truthy(ARG(0, "case_sensitive")), jv_truthy(ARG(2, "reverse")), &l))
        return -1;
    *out = make_list(l, false);
    return 0;
}

FILTER(f_unique) {
    UNUSED_F;
    jv_list *l, *res;
    bool cs = jv_truthy(ARG(0, "case_sensitive"));
    jv attr = ARG(1, "attribute");
    if (jinja_iterable(r, v, &l)) return -1;
    jv *seen = ja_alloc(&r->arena, (l->len + 1) * sizeof(jv));
    if (!seen || !(res = jv_list_new(&r->arena, l->len))) return jr_oom(r);
    for (size_t i = 0; i < l->len; i++) {
        jv k = l->items[i];
        if (given(attr) && get_path(r, k, attr, &k)) return -1;
        k = sort_key(r, k, cs);
        bool dup = false;
        for (size_t j = 0; j < res->len && !dup; j++) dup = jv_equal(seen[j], k);
        if (dup) continue;
        seen[res->len] = k;
        res->items[res->len++] = l->items[i];
    }
    *out = make_list(res, false);
    return 0;
}

static int min_max(jrender *r, jv v, const jv *args, const char *const *kw, size_t nargs, size_t npos, bool want_max, jv *out) {
    jv_list *l;
    if (sorted_copy(r, v, ARG(1, "attribute"), jv_truthy(ARG(0, "case_sensitive")), false, &l)) return -1;
    if (!l->len) { *out = jv_undef("No aggregated item, sequence was empty."); return 0; }
    *out = want_max ? l->items[l->len - 1] : l->items[0];
    return 0;
}
FILTER(f_min) { UNUSED_F; return min_max(r, v, args, kw, nargs, npos, false, out); }
FILTER(f_max) { UNUSED_F; return min_max(r, v, args, kw, nargs, npos, true, out); }

FILTER(f_sum) {
    UNUSED_F;
    jv_list *l;
    jv attr = ARG(0, "attribute"), acc = ARG(1, "start");
    if (!given(acc)) acc = jv_int(0);
    if (jinja_iterable(r, v, &l)) return -1;
    for (size_t i = 0; i < l->len; i++) {
        jv item = l->items[i];
        if (given(attr) && get_path(r, item, attr, &item)) return -1;
        if (!jv_is_number(item) || !jv_is_number(acc)) return jr_fail(r, "sum needs numbers, got '%s'", jv_type_name(item));
        if (acc.type == JV_FLOAT || item.type == JV_FLOAT) acc = jv_float(jv_as_double(acc) + jv_as_double(item));
        else {
            int64_t s;
            if (__builtin_add_overflow(acc.type == JV_INT ? acc.u.i : acc.u.b, item.type == JV_INT ? item.u.i : item.u.b, &s))
                return jr_fail(r, "integer overflow");
            acc = jv_int(s);
        }
    }
    *out = acc;
    return 0;
}

FILTER(f_reverse) {
    UNUSED_F;
    if (v.type == JV_STR) {
        char *d = ja_alloc(&r->arena, v.u.str.len + 1);
        if (!d) return jr_oom(r);
        size_t n = v.u.str.len, o = n;
        for (size_t i = 0; i < n;) {
            size_t l = cp_len(v.u.str.s, n, i);
            o -= l;
            memcpy(d + o, v.u.str.s + i, l);
            i += l;
        }
        *out = jv_strn(d, n);
        return 0;
    }
    jv_list *l;
    if (jinja_iterable(r, v, &l)) return -1;
    for (size_t i = 0; i < l->len / 2; i++) {
        jv t = l->items[i];
        l->items[i] = l->items[l->len - 1 - i];
        l->items[l->len - 1 - i] = t;
    }
    *out = make_list(l, false);
    return 0;
}

FILTER(f_safe) {
    UNUSED_F;
    if (to_str(r, v, out)) return -1;
    out->sub = JV_MARKUP;
    return 0;
}

static int html_escape(jrender *r, jv v, bool force, jv *out) {
    jv s;
    if (v.type == JV_STR && v.sub == JV_MARKUP && !force) { *out = v; return 0; }
    if (to_str(r, v, &s)) return -1;
    lm_strbuf b = {.limit = r->max_output};
    for (size_t i = 0; i < s.u.str.len; i++) {
        char c = s.u.str.s[i];
        switch (c) {
        case '&': lm_strbuf_puts(&b, "&amp;"); break;
        case '<': lm_strbuf_puts(&b, "&lt;"); break;
        case '>': lm_strbuf_puts(&b, "&gt;"); break;
        case '"': lm_strbuf_puts(&b, "&#34;"); break;
        case '\'': lm_strbuf_puts(&b, "&#39;"); break;
        default: lm_strbuf_putc(&b, c);
        }
    }
    if (str_result(r, &b, out)) return -1;
    out->sub = JV_MARKUP;
    return 0;
}

FILTER(f_escape) { UNUSED_F; return html_escape(r, v, false, out); }
FILTER(f_forceescape) { UNUSED_F; return html_escape(r, v, true, out); }

FILTER(f_indent) {
    UNUSED_F;
    jv s = v, width = ARG(0, "width"), first = ARG(1, "first"), blank = ARG(2, "blank");
    if (v.type != JV_STR) {  /* jinja2 does `s += "\n"`, which only strings survive */
        if (v.type == JV_UNDEF) return jr_fail(r, "%s", v.u.str.s ? v.u.str.s : "value is undefined");
        return jr_fail(r, "unsupported operand type(s) for +=: '%s' and 'str'", jv_type_name(v));
    }
    char ind_buf[256];
    const char *ind = ind_buf;
    size_t ind_len;
    if (width.type == JV_STR) { ind = width.u.str.s; ind_len = width.u.str.len; }
    else {
        int64_t w = width.type == JV_INT ? width.u.i : 4;
        if (w < 0) w = 0;
        if (w > 255) w = 255;
        memset(ind_buf, ' ', (size_t)w);
        ind_len = (size_t)w;
    }
    /* jinja2: lines = (s + "\n").splitlines(); with blank=True every line after the
     * first is indented, otherwise only the non-empty ones. */
    lm_strbuf b = {.limit = r->max_output};
    if (jv_truthy(first)) lm_strbuf_append(&b, ind, ind_len);
    const char *p = s.u.str.s;
    size_t n = s.u.str.len, st = 0;
    for (bool first_line = true;; first_line = false) {
        size_t e = st;
        while (e < n && p[e] != '\n' && p[e] != '\r') e++;
        /* e == n is the break of the appended "\n"; a line starting at n is not one */
        if (!first_line) {
            lm_strbuf_putc(&b, '\n');
            if (e > st || jv_truthy(blank)) lm_strbuf_append(&b, ind, ind_len);
        }
        lm_strbuf_append(&b, p + st, e - st);
        if (e >= n) break;
        st = e + 1;
        if (p[e] == '\r' && st < n && p[st] == '\n') st++;
        if (st >= n) {  /* s ends with a newline: one more (empty) line from the appended "\n" */
            lm_strbuf_putc(&b, '\n');
            if (jv_truthy(blank)) lm_strbuf_append(&b, ind, ind_len);
            break;
        }
    }
    return str_result(r, &b, out);
}

FILTER(f_wordcount) {
    UNUSED_F;
    jv s;
    if (to_str(r, v, &s)) return -1;
    int64_t count = 0;
    bool in_word = false;
    for (size_t i = 0; i < s.u.str.len; i++) {
        unsigned char c = (unsigned char)s.u.str.s[i];
        bool w = isalnum(c) || c == '_' || c >= 0x80;
        if (w && !in_word) count++;
        in_word = w;
    }
    *out = jv_int(count);
    return 0;
}

FILTER(f_batch) {
    UNUSED_F;
    jv size_v = ARG(0, "linecount"), fill = ARG(1, "fill_with");
    if (size_v.type != JV_INT || size_v.u.i <= 0) return jr_fail(r, "batch size must be a positive integer");
    size_t size = (size_t)size_v.u.i;
    jv_list *l, *res;
    if (jinja_iterable(r, v, &l)) return -1;
    if (!(res = jv_list_new(&r->arena, 0))) return jr_oom(r);
    for (size_t i = 0; i < l->len; i += size) {
        jv_list *chunk = jv_list_new(&r->arena, 0);
        if (!chunk) return jr_oom(r);
        size_t have = l->len - i < size ? l->len - i : size;
        /* the size comes from the template: the padding of the last batch is work it
         * asked for, charged like loop iterations (batch(10**12) must not spin) */
        size_t pad = given(fill) ? size - have : 0;
        if (jr_charge(r, (uint64_t)have + pad)) return -1;
        for (size_t j = 0; j < have; j++)
            if (jv_list_push(&r->arena, chunk, l->items[i + j])) return jr_oom(r);
        for (size_t j = 0; j < pad; j++)
            if (jv_list_push(&r->arena, chunk, fill)) return jr_oom(r);
        if (jv_list_push(&r->arena, res, make_list(chunk, false))) return jr_oom(r);
        if (have < size) break;
    }
    *out = make_list(res, false);
    return 0;
}

FILTER(f_center) {
    UNUSED_F;
    jv s, width = ARG(0, "width");
    if (to_str(r, v, &s)) return -1;
    int64_t w = width.type == JV_INT ? width.u.i : 80;
    size_t len = utf8_len(s.u.str.s, s.u.str.len);
    if (w <= (int64_t)len || w > 100000) { *out = s; return 0; }
    size_t total = (size_t)w - len, left = total / 2 + (total & (size_t)w & 1);
    if (jr_charge(r, total)) return -1;
    lm_strbuf b = {.limit = r->max_output};
    for (size_t i = 0; i < left; i++) lm_strbuf_putc(&b, ' ');
    lm_strbuf_append(&b, s.u.str.s, s.u.str.len);
    for (size_t i = left; i < total; i++) lm_strbuf_putc(&b, ' ');
    return str_result(r, &b, out);
}

static const struct { const char *name; jv_builtin fn; } filters[] = {
    {"tojson", (jv_builtin)f_tojson}, {"trim", (jv_builtin)f_trim}, {"upper", (jv_builtin)f_upper},
    {"lower", (jv_builtin)f_lower}, {"title", (jv_builtin)f_title}, {"capitalize", (jv_builtin)f_capitalize},
    {"length", (jv_builtin)f_length}, {"count", (jv_builtin)f_length}, {"first", (jv_builtin)f_first},
    {"last", (jv_builtin)f_last}, {"join", (jv_builtin)f_join}, {"default", (jv_builtin)f_default},
    {"d", (jv_builtin)f_default}, {"replace", (jv_builtin)f_replace}, {"list", (jv_builtin)f_list},
    {"items", (jv_builtin)f_items}, {"select", (jv_builtin)f_select}, {"reject", (jv_builtin)f_reject},
    {"selectattr", (jv_builtin)f_selectattr}, {"rejectattr", (jv_builtin)f_rejectattr}, {"map", (jv_builtin)f_map},
    {"string", (jv_builtin)f_string}, {"int", (jv_builtin)f_int}, {"float", (jv_builtin)f_float},
    {"abs", (jv_builtin)f_abs}, {"round", (jv_builtin)f_round}, {"sort", (jv_builtin)f_sort},
    {"dictsort", (jv_builtin)f_dictsort}, {"unique", (jv_builtin)f_unique}, {"min", (jv_builtin)f_min},
    {"max", (jv_builtin)f_max}, {"sum", (jv_builtin)f_sum}, {"reverse", (jv_builtin)f_reverse},
    {"safe", (jv_builtin)f_safe}, {"escape", (jv_builtin)f_escape}, {"e", (jv_builtin)f_escape},
    {"forceescape", (jv_builtin)f_forceescape}, {"indent", (jv_builtin)f_indent}, {"wordcount", (jv_builtin)f_wordcount},
    {"batch", (jv_builtin)f_batch}, {"center", (jv_builtin)f_center},
};

int jinja_apply_filter(jrender *r, const char *name, size_t len, jv target, const jv *args, const char *const *kw,
                       size_t nargs, size_t npos, jv *out) {
    for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++)
        if (strlen(filters[i].name) == len && memcmp(filters[i].name, name, len) == 0)
            return filters[i].fn(r, target, args, kw, nargs, npos, out);
    return jr_fail(r, "no filter named '%.*s'", (int)(len > 60 ? 60 : len), name);
}

/* ---- tests ------------------------------------------------------------------------------------------ */
static bool name_is(const char *name, size_t len, const char *want) {
    return strlen(want) == len && memcmp(name, want, len) == 0;
}

int jinja_apply_test(jrender *r, const char *name, size_t len, jv v, const jv *args, size_t nargs, bool *out) {
#define IS(s) name_is(name, len, s)
    jv a0 = nargs > 0 ? args[0] : jv_undef(NULL);
    if (IS("defined")) *out = v.type != JV_UNDEF;
    else if (IS("undefined")) *out = v.type == JV_UNDEF;
    else if (IS("none")) *out = v.type == JV_NONE;
    else if (IS("string")) *out = v.type == JV_STR;
    else if (IS("number")) *out = jv_is_number(v);
    else if (IS("integer")) *out = v.type == JV_INT;
    else if (IS("float")) *out = v.type == JV_FLOAT;
    else if (IS("boolean")) *out = v.type == JV_BOOL;
    else if (IS("true")) *out = v.type == JV_BOOL && v.u.b;
    else if (IS("false")) *out = v.type == JV_BOOL && !v.u.b;
    else if (IS("mapping")) *out = v.type == JV_DICT;
    else if (IS("iterable")) *out = v.type == JV_LIST || v.type == JV_DICT || v.type == JV_STR || v.type == JV_UNDEF;
    else if (IS("sequence")) *out = v.type == JV_LIST || v.type == JV_DICT || v.type == JV_STR || v.type == JV_UNDEF;
    else if (IS("callable")) *out = v.type == JV_FUNC || v.type == JV_MACRO;
    else if (IS("lower") || IS("upper")) {
        jv res;
        if (v.type != JV_STR) { *out = false; return 0; }
        if (str_pred(r, v, IS("upper") ? 3 : 4, &res)) return -1;
        *out = res.u.b;
    } else if (IS("odd") || IS("even") || IS("divisibleby")) {
        if (v.type == JV_UNDEF) return jr_fail(r, "%s", v.u.str.s ? v.u.str.s : "value is undefined");
        if (!jv_is_number(v)) return jr_fail(r, "test '%.*s' needs a number, not '%s'", (int)len, name, jv_type_name(v));
        int64_t div = IS("divisibleby") ? (a0.type == JV_INT ? a0.u.i : 0) : 2;
        if (div == 0) return jr_fail(r, "divisibleby needs a non-zero integer");
        /* Python: odd is `value % 2 == 1`, even `value % 2 == 0`, with Python's modulo sign */
        if (v.type == JV_FLOAT) {
            double m = fmod(v.u.f, (double)div);
            if (m != 0 && ((m < 0) != (div < 0))) m += (double)div;
            *out = IS("odd") ? m == 1 : m == 0;
        } else {
            int64_t x = v.type == JV_INT ? v.u.i : v.u.b;
            int64_t m = div == -1 ? 0 : x % div;
            if (m != 0 && ((m < 0) != (div < 0))) m += div;
            *out = IS("odd") ? m == 1 : m == 0;
        }
    } else if (IS("equalto") || IS("eq") || IS("==") || IS("sameas")) {
        if (IS("sameas")) *out = v.type == a0.type && jv_equal(v, a0);
        else *out = jv_equal(v, a0);
    } else if (IS("ne") || IS("!=")) *out = !jv_equal(v, a0);
    else if (IS("lt") || IS("<") || IS("le") || IS("<=") || IS("gt") || IS(">") || IS("ge") || IS(">=")) {
        int c;
        if (jv_compare(v, a0, &c))
            return jr_fail(r, "comparison not supported between instances of '%s' and '%s'", jv_type_name(v), jv_type_name(a0));
        if (IS("lt") || IS("<")) *out = c < 0;
        else if (IS("le") || IS("<=")) *out = c <= 0;
        else if (IS("gt") || IS(">")) *out = c > 0;
        else *out = c >= 0;
    } else if (IS("in")) {
        jv_list *l;
        if (a0.type == JV_STR) {
            if (v.type != JV_STR) return jr_fail(r, "'in <string>' requires string as left operand");
            *out = memmem(a0.u.str.s, a0.u.str.len, v.u.str.s, v.u.str.len) != NULL || v.u.str.len == 0;
        } else if (a0.type == JV_DICT) *out = jv_dict_get(a0.u.dict, v) != NULL;
        else {
            if (jinja_iterable(r, a0, &l)) return -1;
            *out = false;
            for (size_t i = 0; i < l->len && !*out; i++) *out = jv_equal(l->items[i], v);
        }
    } else {
        return jr_fail(r, "no test named '%.*s'", (int)(len > 60 ? 60 : len), name);
    }
    return 0;
#undef IS
}

/* ---- global functions ----------------------------------------------------------------------------------- */
BUILTIN(g_range) {
    UNUSED_ARGS;
    int64_t start = 0, stop, step = 1;
    for (size_t i = 0; i < npos; i++)
        if (args[i].type != JV_INT && args[i].type != JV_BOOL) return jr_fail(r, "range() arguments must be integers");
#define I(k) (args[k].type == JV_INT ? args[k].u.i : (int64_t)args[k].u.b)
    if (npos == 1) stop = I(0);
    else if (npos == 2 || npos == 3) { start = I(0); stop = I(1); if (npos == 3) step = I(2); }
    else return jr_fail(r, "range expected 1 to 3 arguments, got %zu", npos);
#undef I
    if (step == 0) return jr_fail(r, "range() arg 3 must not be zero");
    double count_d = ((double)stop - (double)start) / (double)step;
    if (count_d > (double)r->max_iterations) return jr_limit(r, "range() too large (limit %ld items)", r->max_iterations);
    jv_list *l = jv_list_new(&r->arena, count_d > 0 ? (size_t)count_d + 1 : 0);
    if (!l) return jr_oom(r);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        l->items[l->len++] = jv_int(i);
        if (l->len == l->cap) break;
    }
    *out = make_list(l, false);
    return 0;
}

static int kwargs_dict(jrender *r, const jv *args, const char *const *kw, size_t nargs, size_t npos, jv_type type, jv *out) {
    jv_dict *d = jv_dict_new(&r->arena, nargs);
    if (!d) return jr_oom(r);
    for (size_t i = 0; i < npos; i++) {
        if (args[i].type != JV_DICT && args[i].type != JV_NS) return jr_fail(r, "expected a mapping as positional argument");
        for (size_t k = 0; k < args[i].u.dict->len; k++)
            if (jv_dict_set(&r->arena, d, args[i].u.dict->keys[k], args[i].u.dict->vals[k])) return jr_oom(r);
    }
    for (size_t i = npos; i < nargs; i++)
        if (jv_dict_set(&r->arena, d, jv_cstr(kw[i]), args[i])) return jr_oom(r);
    jv v = {(uint8_t)type, 0, {0}};
    v.u.dict = d;
    *out = v;
    return 0;
}

BUILTIN(g_namespace) { UNUSED_ARGS; return kwargs_dict(r, args, kw, nargs, npos, JV_NS, out); }
BUILTIN(g_dict) { UNUSED_ARGS; return kwargs_dict(r, args, kw, nargs, npos, JV_DICT, out); }

BUILTIN(g_raise_exception) {
    UNUSED_ARGS;
    jv msg = ARG(0, "message");
    if (msg.type != JV_STR && jinja_to_str(r, msg, &msg)) return -1;
    (void)out;
    return jr_raise(r, "%.*s", (int)(msg.u.str.len > 400 ? 400 : msg.u.str.len), msg.u.str.s);
}

BUILTIN(g_strftime_now) {
    UNUSED_ARGS;
    jv fmt = ARG(0, "format");
    if (need_str(r, fmt, "strftime_now format")) return -1;
    time_t now = r->now_unix ? (time_t)r->now_unix : time(NULL);
    struct tm tm;
    if (!localtime_r(&now, &tm)) return jr_fail(r, "strftime_now: bad time");
    char f[256], buf[512];
    if (fmt.u.str.len >= sizeof f) return jr_fail(r, "strftime_now: format too long");
    memcpy(f, fmt.u.str.s, fmt.u.str.len);
    f[fmt.u.str.len] = 0;
    size_t n = strftime(buf, sizeof buf, f, &tm);
    *out = jr_str(r, buf, n);
    return r->has_error ? -1 : 0;
}

void jinja_add_globals(jrender *r, jv_dict *globals) {
    static const named_fn fns[] = {{"range", g_range}, {"namespace", g_namespace}, {"dict", g_dict},
                                   {"raise_exception", g_raise_exception}, {"strftime_now", g_strftime_now}};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        jv_func *f = ja_alloc(&r->arena, sizeof *f);
        if (!f) return;
        f->fn = fns[i].fn;
        f->self = jv_none();
        f->name = fns[i].name;
        jv v = {JV_FUNC, 0, {0}};
        v.u.func = f;
        if (jv_dict_push(&r->arena, globals, jv_cstr(fns[i].name), v)) return;
    }
}

/* Jinja evaluator: renders a syntax tree against a context.
 *
 * Scoping follows jinja2: `if` shares its scope, each `for` iteration and each
 * macro call gets a fresh child scope (so `set` inside a loop does not leak out
 * of it; namespace() objects are how templates carry state across iterations).
 * Undefined follows jinja2's default Undefined: it prints as '', is falsy,
 * iterates as empty and compares unequal, but reading an attribute of it,
 * calling it or doing arithmetic with it is an error.
 *
 * Statement results: 0 done, -1 error, EX_BREAK / EX_CONTINUE for loop control.
 */
#include "text/jinja_internal.h"

#include "platform/platform.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EX_BREAK 1
#define EX_CONTINUE 2

struct lm_jinja_template {
    jarena arena;
    jnode *root;
};

/* ---- errors and small helpers ------------------------------------------------------ */
static void fail_kind(jrender *r, int fault, const char *fmt, va_list ap) {
    if (r->has_error) return;
    char msg[LM_ERR_LEN];
    vsnprintf(msg, sizeof msg, fmt, ap);
    r->has_error = true;
    r->fault = fault;
    lm_errf_set(r->err, "template line %d: %s", r->line, msg);
}

void jr_fail_set(jrender *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fail_kind(r, LM_JINJA_ERROR, fmt, ap);
    va_end(ap);
}

void jr_limit_set(jrender *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fail_kind(r, LM_JINJA_LIMIT, fmt, ap);
    va_end(ap);
}

void jr_raise_set(jrender *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fail_kind(r, LM_JINJA_RAISED, fmt, ap);
    va_end(ap);
}

int jr_charge(jrender *r, uint64_t n) {
    if (n > (uint64_t)(r->max_iterations - r->iterations))
        return jr_limit(r, "loop iteration limit (%ld) exceeded", r->max_iterations);
    r->iterations += (long)n;
    /* reading the clock costs ~20 ns: once per 256 charges keeps it out of the profile */
    if ((++r->clock_tick & 255) == 0 || n > 256) {
        if (lm_now() > r->deadline) return jr_limit(r, "render time limit exceeded");
    }
    return 0;
}

void jr_oom_set(jrender *r) { jr_limit_set(r, "out of memory (render limit %zu bytes)", r->arena.limit); }

jv jr_str(jrender *r, const char *s, size_t n) {
    char *p = ja_strndup(&r->arena, s ? s : "", s ? n : 0);
    if (!p) { jr_oom(r); return jv_undef(NULL); }
    return jv_strn(p, s ? n : 0);
}

static int undefined_error(jrender *r, jv v) {
    return jr_fail(r, "%s", v.u.str.s ? v.u.str.s : "value is undefined");
}

int jinja_to_str(jrender *r, jv v, jv *out) {
    if (v.type == JV_STR) { *out = v; return 0; }
    lm_strbuf b = {0};
    jv_write_str(&b, v);
    if (b.failed) { lm_strbuf_free(&b); return jr_oom(r); }
    *out = jr_str(r, b.data, b.len);
    lm_strbuf_free(&b);
    return r->has_error ? -1 : 0;
}

static int emit(jrender *r, const char *s, size_t n) {
    lm_strbuf_append(r->out, s, n);
    if (r->out->failed) return jr_limit(r, "output exceeds %zu bytes", r->max_output);
    return 0;
}

static jv_dict *scope_lookup_dict(jscope *sc, const char *name, size_t len, jv **slot) {
    for (; sc; sc = sc->parent) {
        jv *v = jv_dict_get_str(sc->vars, name, len);
        if (v) { *slot = v; return sc->vars; }
    }
    *slot = NULL;
    return NULL;
}

static int scope_set(jrender *r, jscope *sc, const char *name, size_t len, jv v) {
    if (jv_dict_set(&r->arena, sc->vars, jv_strn(name, len), v)) return jr_oom(r);
    return 0;
}

static jscope *scope_new(jrender *r, jscope *parent) {
    jscope *sc = ja_alloc(&r->arena, sizeof *sc);
    if (!sc || !(sc->vars = jv_dict_new(&r->arena, 0))) { jr_oom(r); return NULL; }
    sc->parent = parent;
    return sc;
}

static jv make_list(jv_list *l, bool tuple) {
    jv v = {JV_LIST, tuple, {0}};
    v.u.list = l;
    return v;
}

static char *undef_hint(jrender *r, const char *fmt, const char *a, size_t alen, const char *b, size_t blen) {
    char buf[256];
    snprintf(buf, sizeof buf, fmt, (int)(alen > 80 ? 80 : alen), a, (int)(blen > 80 ? 80 : blen), b);
    return ja_strndup(&r->arena, buf, strlen(buf));
}

/* ---- attribute and item access ------------------------------------------------------ */
int jinja_getattr(jrender *r, jv obj, const char *name, size_t len, jv *out) {
    if (obj.type == JV_UNDEF) return undefined_error(r, obj);
    if (obj.type == JV_DICT || obj.type == JV_NS) {
        if (obj.type == JV_DICT) {
            jv_builtin m = jinja_method(obj, name, len);
            if (m) goto bound;
        }
        jv *v = jv_dict_get_str(obj.u.dict, name, len);
        if (v) { *out = *v; return 0; }
        const char *tn = obj.type == JV_NS ? "Namespace" : "dict object";
        *out = jv_undef(undef_hint(r, "'%.*s' has no attribute '%.*s'", tn, strlen(tn), name, len));
        return 0;
    }
    if (jinja_method(obj, name, len)) goto bound;
    {
        const char *tn = obj.type == JV_NONE ? "None" : jv_type_name(obj);
        char tbuf[64];
        snprintf(tbuf, sizeof tbuf, obj.type == JV_NONE ? "%s" : "%s object", tn);
        *out = jv_undef(undef_hint(r, "'%.*s' has no attribute '%.*s'", tbuf, strlen(tbuf), name, len));
        return 0;
    }
bound:;
    jv_func *f = ja_alloc(&r->arena, sizeof *f);
    char *nm = ja_strndup(&r->arena, name, len);
    if (!f || !nm) return jr_oom(r);
    f->fn = jinja_method(obj, name, len);
    f->self = obj;
    f->name = nm;
    jv v = {JV_FUNC, 0, {0}};
    v.u.func = f;
    *out = v;
    return 0;
}

static bool index_of(int64_t i, size_t len, size_t *out) {
    if (i < 0) i += (int64_t)len;
    if (i < 0 || (uint64_t)i >= len) return false;
    *out = (size_t)i;
    return true;
}

int jinja_getitem(jrender *r, jv obj, jv key, jv *out) {
    if (obj.type == JV_UNDEF) return undefined_error(r, obj);
    if (key.type == JV_BOOL) key = jv_int(key.u.b);
    if (obj.type == JV_DICT) {
        jv *v = jv_dict_get(obj.u.dict, key);
        if (v) { *out = *v; return 0; }
    } else if (obj.type == JV_LIST && key.type == JV_INT && obj.sub != JV_GENERATOR) {
        size_t i;
        if (index_of(key.u.i, obj.u.list->len, &i)) { *out = obj.u.list->items[i]; return 0; }
    } else if (obj.type == JV_STR && key.type == JV_INT) {
        size_t n = utf8_len(obj.u.str.s, obj.u.str.len), i;
        if (index_of(key.u.i, n, &i)) {
            size_t a = utf8_offset(obj.u.str.s, obj.u.str.len, i);
            size_t b = utf8_offset(obj.u.str.s, obj.u.str.len, i + 1);
            *out = jv_strn(obj.u.str.s + a, b - a);
            return 0;
        }
    }
    if (key.type == JV_STR && obj.type != JV_DICT) return jinja_getattr(r, obj, key.u.str.s, key.u.str.len, out);
    /* jinja2 answers a missing item with Undefined */
    lm_strbuf kb = {0};
    jv_write_repr(&kb, key);
    const char *tn = obj.type == JV_NONE ? "None" : jv_type_name(obj);
    char tbuf[64];
    snprintf(tbuf, sizeof tbuf, obj.type == JV_NONE ? "%s" : "%s object", tn);
    *out = jv_undef(undef_hint(r, "'%.*s' has no attribute %.*s", tbuf, strlen(tbuf), kb.data ? kb.data : "", kb.len));
    lm_strbuf_free(&kb);
    return 0;
}

int jinja_iterable(jrender *r, jv v, jv_list **out) {
    jv_list *l;
    switch (v.type) {
    case JV_UNDEF:
        l = jv_list_new(&r->arena, 0);
        break;
    case JV_LIST:
        l = jv_list_new(&r->arena, v.u.list->len);
        if (l && v.u.list->len) {
            memcpy(l->items, v.u.list->items, v.u.list->len * sizeof(jv));
            l->len = v.u.list->len;
        }
        break;
    case JV_DICT:
        l = jv_list_new(&r->arena, v.u.dict->len);
        if (l && v.u.dict->len) {
            memcpy(l->items, v.u.dict->keys, v.u.dict->len * sizeof(jv));
            l->len = v.u.dict->len;
        }
        break;
    case JV_STR: {
        const char *s = v.u.str.s;
        size_t n = v.u.str.len;
        l = jv_list_new(&r->arena, utf8_len(s, n));
        if (!l) break;
        for (size_t i = 0; i < n;) {
            size_t j = i + 1;
            while (j < n && !utf8_char_starts(s, j)) j++;
            l->items[l->len++] = jv_strn(s + i, j - i);
            i = j;
        }
        break;
    }
    default:
        return jr_fail(r, "'%s' object is not iterable", jv_type_name(v));
    }
    if (!l) return jr_oom(r);
    *out = l;
    return 0;
}

/* ---- macros ------------------------------------------------------------------------------- */
static int exec_body(jrender *r, const jnode *body, jscope *sc);

static int capture(jrender *r, const jnode *body, jscope *sc, jv *out) {
    lm_strbuf buf = {.limit = r->max_output};
    lm_strbuf *saved = r->out;
    r->out = &buf;
    int rc = exec_body(r, body, sc);
    r->out = saved;
    if (rc == 0) {
        *out = jr_str(r, buf.data, buf.len);
        if (r->has_error) rc = -1;
    }
    lm_strbuf_free(&buf);
    return rc;
}

static int call_macro(jrender *r, struct jmacro *m, const jv *args, const char *const *kw, size_t nargs,
                      size_t npos, jv *out) {
    const jnode *def = m->def;
    const char *mname = def->kind == JN_MACRO ? def->name : "caller";
    if (r->depth >= r->max_depth) return jr_limit(r, "maximum call depth (%d) exceeded", r->max_depth);
    jscope *sc = scope_new(r, m->closure);
    if (!sc) return -1;
    if (npos > def->nkids)
        return jr_fail(r, "macro '%s' takes not more than %zu argument(s)", mname, def->nkids);
    for (size_t k = npos; k < nargs; k++) {
        size_t p;
        for (p = 0; p < def->nkids; p++)
            if (strcmp(def->kw[p], kw[k]) == 0) break;
        if (p == def->nkids) return jr_fail(r, "macro '%s' takes no keyword argument '%s'", mname, kw[k]);
        if (p < npos) return jr_fail(r, "macro '%s' got multiple values for argument '%s'", mname, kw[k]);
    }
    r->depth++;
    int rc = 0;
    for (size_t p = 0; p < def->nkids && rc == 0; p++) {
        jv v = jv_undef(NULL);
        bool given = false;
        if (p < npos) { v = args[p]; given = true; }
        for (size_t k = npos; k < nargs && !given; k++)
            if (strcmp(def->kw[p], kw[k]) == 0) { v = args[k]; given = true; }
        if (!given) {
            if (def->kids[p]) rc = jinja_eval(r, def->kids[p], sc, &v);
            else v = jv_undef(undef_hint(r, "'%.*s' is undefined%.*s", def->kw[p], strlen(def->kw[p]), "", 0));
        }
        if (rc == 0) rc = scope_set(r, sc, def->kw[p], strlen(def->kw[p]), v);
    }
    if (rc == 0 && m->caller) {
        struct jmacro *c = ja_alloc(&r->arena, sizeof *c);
        if (!c) rc = jr_oom(r);
        else {
            c->def = m->caller;
            c->closure = m->caller_scope;
            jv cv = {JV_MACRO, 0, {0}};
            cv.u.macro = c;
            rc = scope_set(r, sc, "caller", 6, cv);
        }
    }
    if (rc == 0) rc = capture(r, def->b, sc, out);
    r->depth--;
    return rc == 0 ? 0 : -1;  /* the parser keeps break/continue from escaping a body */
}

int jinja_call(jrender *r, jv fn, const jv *args, const char *const *kw, size_t nargs, size_t npos, jv *out) {
    switch (fn.type) {
    case JV_FUNC: return fn.u.func->fn(r, fn.u.func->self, args, kw, nargs, npos, out);
    case JV_MACRO: return call_macro(r, fn.u.macro, args, kw, nargs, npos, out);
    case JV_UNDEF: return undefined_error(r, fn);
    default: return jr_fail(r, "'%s' object is not callable", jv_type_name(fn));
    }
}

/* Evaluates call/filter arguments into arena arrays. */
static int eval_args(jrender *r, const jnode *n, jscope *sc, jv **args, const char ***kw, size_t *npos) {
    size_t count = n->nkids;
    *args = ja_alloc(&r->arena, (count + 1) * sizeof(jv));
    *kw = ja_alloc(&r->arena, (count + 1) * sizeof(char *));
    if (!*args || !*kw) return jr_oom(r);
    /* positional first, then keywords, whatever the source order */
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < count; i++) {
            bool is_kw = n->kw && n->kw[i];
            if (is_kw != (pass == 1)) continue;
            if (jinja_eval(r, n->kids[i], sc, &(*args)[k])) return -1;
            (*kw)[k] = is_kw ? n->kw[i] : NULL;
            k++;
        }
        if (pass == 0) *npos = k;
    }
    return 0;
}

/* ---- operators ------------------------------------------------------------------------------ */
static int type_error(jrender *r, const char *op, jv a, jv b) {
    if (a.type == JV_UNDEF) return undefined_error(r, a);
    if (b.type == JV_UNDEF) return undefined_error(r, b);
    return jr_fail(r, "unsupported operand type(s) for %s: '%s' and '%s'", op, jv_type_name(a), jv_type_name(b));
}

static bool is_intlike(jv v) { return v.type == JV_INT || v.type == JV_BOOL; }
static int64_t as_int(jv v) { return v.type == JV_INT ? v.u.i : (int64_t)v.u.b; }

static int repeat(jrender *r, jv seq, int64_t times, jv *out) {
    if (times < 0) times = 0;
    /* an empty sequence repeats to itself: no loop of `times` empty copies */
    if ((seq.type == JV_STR && seq.u.str.len == 0) || (seq.type != JV_STR && seq.u.list->len == 0)) times = 0;
    if (seq.type == JV_STR) {
        if (seq.u.str.len && (uint64_t)times > r->max_output / seq.u.str.len)
            return jr_limit(r, "string repetition exceeds the output limit");
        size_t n = seq.u.str.len * (size_t)times;
        char *s = ja_alloc(&r->arena, n + 1);
        if (!s) return jr_oom(r);
        for (int64_t i = 0; i < times; i++) memcpy(s + (size_t)i * seq.u.str.len, seq.u.str.s, seq.u.str.len);
        *out = jv_strn(s, n);
        return 0;
    }
    size_t len = seq.u.list->len;
    if (len && (uint64_t)times > 10000000 / len) return jr_fail(r, "list repetition too large");
    jv_list *l = jv_list_new(&r->arena, len * (size_t)times);
    if (!l) return jr_oom(r);
    for (int64_t i = 0; i < times; i++)
        for (size_t j = 0; j < len; j++) l->items[l->len++] = seq.u.list->items[j];
    *out = make_list(l, seq.sub);
    return 0;
}

static int binop(jrender *r, int op, jv a, jv b, jv *out) {
    bool nums = jv_is_number(a) && jv_is_number(b);
    bool ints = is_intlike(a) && is_intlike(b);
    int64_t x = ints ? as_int(a) : 0, y = ints ? as_int(b) : 0, res;
    switch (op) {
    case '+':
        if (ints) {
            if (__builtin_add_overflow(x, y, &res)) return jr_fail(r, "integer overflow");
            *out = jv_int(res);
        } else if (nums) *out = jv_float(jv_as_double(a) + jv_as_double(b));
        else if (a.type == JV_STR && b.type == JV_STR && a.sub != b.sub) {
            /* Markup + str escapes the plain side (markupsafe semantics) */
            jv esc, plain = a.sub == JV_MARKUP ? b : a;
            if (jinja_apply_filter(r, "escape", 6, plain, NULL, NULL, 0, 0, &esc)) return -1;
            if (a.sub == JV_MARKUP) b = esc;
            else a = esc;
            a.sub = b.sub = JV_PLAIN;
            if (binop(r, '+', a, b, out)) return -1;
            out->sub = JV_MARKUP;
        } else if (a.type == JV_STR && b.type == JV_STR) {
            size_t n = a.u.str.len + b.u.str.len;
            char *s = ja_alloc(&r->arena, n + 1);
            if (!s) return jr_oom(r);
            memcpy(s, a.u.str.s, a.u.str.len);
            memcpy(s + a.u.str.len, b.u.str.s, b.u.str.len);
            *out = jv_strn(s, n);
            out->sub = a.sub;
        } else if (a.type == JV_LIST && b.type == JV_LIST && a.sub == b.sub) {
            jv_list *l = jv_list_new(&r->arena, a.u.list->len + b.u.list->len);
            if (!l) return jr_oom(r);
            for (size_t i = 0; i < a.u.list->len; i++) l->items[l->len++] = a.u.list->items[i];
            for (size_t i = 0; i < b.u.list->len; i++) l->items[l->len++] = b.u.list->items[i];
            *out = make_list(l, a.sub);
        } else return type_error(r, "+", a, b);
        return 0;
    case '-':
        if (ints) {
            if (__builtin_sub_overflow(x, y, &res)) return jr_fail(r, "integer overflow");
            *out = jv_int(res);
        } else if (nums) *out = jv_float(jv_as_double(a) - jv_as_double(b));
        else return type_error(r, "-", a, b);
        return 0;
    case '*':
        if (ints) {
            if (__builtin_mul_overflow(x, y, &res)) return jr_fail(r, "integer overflow");
            *out = jv_int(res);
        } else if (nums) *out = jv_float(jv_as_double(a) * jv_as_double(b));
        else if ((a.type == JV_STR || a.type == JV_LIST) && is_intlike(b)) return repeat(r, a, as_int(b), out);
        else if ((b.type == JV_STR || b.type == JV_LIST) && is_intlike(a)) return repeat(r, b, as_int(a), out);
        else return type_error(r, "*", a, b);
        return 0;
    case '/':
        if (!nums) return type_error(r, "/", a, b);
        if (jv_as_double(b) == 0.0) return jr_fail(r, "division by zero");
        *out = jv_float(jv_as_double(a) / jv_as_double(b));
        return 0;
    case JB_FLOORDIV:
    case '%':
        if (!nums) {
            if (op == '%' && a.type == JV_STR) return jr_fail(r, "printf-style '%%' string formatting is not supported");
            return type_error(r, op == '%' ? "%" : "//", a, b);
        }
        if (ints) {
            if (y == 0) return jr_fail(r, op == '%' ? "integer modulo by zero" : "integer division by zero");
            if (x == INT64_MIN && y == -1) return jr_fail(r, "integer overflow");
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) { q--; m += y; }
            *out = jv_int(op == '%' ? m : q);
        } else {
            double fx = jv_as_double(a), fy = jv_as_double(b);
            if (fy == 0.0) return jr_fail(r, "float division by zero");
            double m = fmod(fx, fy);
            if (m != 0 && ((m < 0) != (fy < 0))) m += fy;
            *out = jv_float(op == '%' ? m : floor(fx / fy));
        }
        return 0;
    case JB_POW:
        if (!nums) return type_error(r, "**", a, b);
        if (ints && y >= 0) {
            int64_t acc = 1, base = x;
            for (int64_t e = y; e > 0; e >>= 1) {
                if (e & 1 && __builtin_mul_overflow(acc, base, &acc)) return jr_fail(r, "integer overflow");
                if (e > 1 && __builtin_mul_overflow(base, base, &base)) return jr_fail(r, "integer overflow");
            }
            *out = jv_int(acc);
        } else {
            *out = jv_float(pow(jv_as_double(a), jv_as_double(b)));
        }
        return 0;
    }
    return jr_fail(r, "unknown operator");
}

static int contains(jrender *r, jv container, jv item, bool *out) {
    switch (container.type) {
    case JV_STR:
        if (item.type != JV_STR)
            return jr_fail(r, "'in <string>' requires string as left operand, not %s", jv_type_name(item));
        *out = item.u.str.len == 0 ||
               memmem(container.u.str.s, container.u.str.len, item.u.str.s, item.u.str.len) != NULL;
        return 0;
    case JV_LIST:
        *out = false;
        for (size_t i = 0; i < container.u.list->len && !*out; i++)
            *out = jv_equal(container.u.list->items[i], item);
        return 0;
    case JV_DICT:
        if ((item.type == JV_LIST && item.sub != JV_TUPLE) || item.type == JV_DICT)
            return jr_fail(r, "unhashable type: '%s'", jv_type_name(item));
        *out = jv_dict_get(container.u.dict, item) != NULL;
        return 0;
    case JV_UNDEF:
        *out = false;
        return 0;
    default:
        return jr_fail(r, "argument of type '%s' is not iterable", jv_type_name(container));
    }
}

static int compare(jrender *r, int op, jv a, jv b, bool *out) {
    int c = 0;
    switch (op) {
    case JC_EQ: *out = jv_equal(a, b); return 0;
    case JC_NE: *out = !jv_equal(a, b); return 0;
    case JC_IN: return contains(r, b, a, out);
    case JC_NOTIN:
        if (contains(r, b, a, out)) return -1;
        *out = !*out;
        return 0;
    default:
        if (jv_compare(a, b, &c)) {
            static const char *const names[] = {"", "==", "!=", "<", "<=", ">", ">="};
            if (a.type == JV_UNDEF) return undefined_error(r, a);
            if (b.type == JV_UNDEF) return undefined_error(r, b);
            return jr_fail(r, "'%s' not supported between instances of '%s' and '%s'", names[op],
                           jv_type_name(a), jv_type_name(b));
        }
        *out = op == JC_LT ? c < 0 : op == JC_LE ? c <= 0 : op == JC_GT ? c > 0 : c >= 0;
        return 0;
    }
}

/* Python slice semantics over n elements. */
static int slice_indices(jrender *r, jv vstart, jv vstop, jv vstep, size_t n, int64_t *start, int64_t *stop,
                         int64_t *step) {
    int64_t len = (int64_t)n;
    *step = 1;
    if (vstep.type != JV_NONE && vstep.type != JV_UNDEF) {
        if (!is_intlike(vstep)) return jr_fail(r, "slice indices must be integers or None");
        *step = as_int(vstep);
        if (*step == 0) return jr_fail(r, "slice step cannot be zero");
    }
    bool neg = *step < 0;
    int64_t lo = neg ? -1 : 0, hi = neg ? len - 1 : len;
    jv bounds[2] = {vstart, vstop};
    int64_t *dst[2] = {start, stop};
    for (int k = 0; k < 2; k++) {
        jv v = bounds[k];
        if (v.type == JV_NONE || v.type == JV_UNDEF) {
            *dst[k] = k == 0 ? (neg ? hi : lo) : (neg ? lo : hi);
            continue;
        }
        if (!is_intlike(v)) return jr_fail(r, "slice indices must be integers or None");
        int64_t i = as_int(v);
        if (i < 0) {
            i += len;
            if (i < lo) i = lo;
        } else if (i > hi) i = hi;
        *dst[k] = i;
    }
    return 0;
}

static int eval_slice(jrender *r, const jnode *n, jscope *sc, jv *out) {
    jv obj, parts[3] = {jv_none(), jv_none(), jv_none()};
    const jnode *pn[3] = {n->b, n->c, n->d};
    if (jinja_eval(r, n->a, sc, &obj)) return -1;
    for (int k = 0; k < 3; k++)
        if (pn[k] && jinja_eval(r, pn[k], sc, &parts[k])) return -1;
    if (obj.type == JV_UNDEF) return undefined_error(r, obj);
    /* jinja2 compiles slices to plain Python subscripts, so these raise */
    if ((obj.type != JV_LIST && obj.type != JV_STR) || obj.sub == JV_GENERATOR)
        return jr_fail(r, "'%s' object is not subscriptable", jv_type_name(obj));
    size_t count = obj.type == JV_LIST ? obj.u.list->len : utf8_len(obj.u.str.s, obj.u.str.len);
    int64_t start = 0, stop = 0, step = 1;
    if (slice_indices(r, parts[0], parts[1], parts[2], count, &start, &stop, &step)) return -1;
    if (obj.type == JV_LIST) {
        jv_list *l = jv_list_new(&r->arena, 0);
        if (!l) return jr_oom(r);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            if (jv_list_push(&r->arena, l, obj.u.list->items[i])) return jr_oom(r);
        *out = make_list(l, obj.sub);
        return 0;
    }
    /* strings slice by code point */
    const char *s = obj.u.str.s;
    size_t *offs = ja_alloc(&r->arena, (count + 1) * sizeof *offs);
    char *dst = ja_alloc(&r->arena, obj.u.str.len + 1);
    if (!offs || !dst) return jr_oom(r);
    size_t c = 0;
    for (size_t i = 0; i < obj.u.str.len; i++)
        if (utf8_char_starts(s, i)) offs[c++] = i;
    offs[count] = obj.u.str.len;
    size_t len = 0;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        size_t a = offs[i], b = offs[i + 1];
        memcpy(dst + len, s + a, b - a);
        len += b - a;
    }
    *out = jv_strn(dst, len);
    return 0;
}

/* ---- expressions ------------------------------------------------------------------------------ */
int jinja_eval(jrender *r, const jnode *n, jscope *sc, jv *out) {
    r->line = n->line;
    if (r->arena.limit && r->arena.total > r->arena.limit) return jr_oom(r);
    switch (n->kind) {
    case JN_LIT: *out = n->lit; return 0;
    case JN_NAME: {
        jv *slot;
        if (scope_lookup_dict(sc, n->name, n->name_len, &slot)) { *out = *slot; return 0; }
        *out = jv_undef(undef_hint(r, "'%.*s' is undefined%.*s", n->name, n->name_len, "", 0));
        return 0;
    }
    case JN_BLOCK_VALUE: *out = r->block_value; return 0;
    case JN_LIST:
    case JN_TUPLE: {
        jv_list *l = jv_list_new(&r->arena, n->nkids);
        if (!l) return jr_oom(r);
        for (size_t i = 0; i < n->nkids; i++) {
            if (jinja_eval(r, n->kids[i], sc, &l->items[i])) return -1;
            l->len++;
        }
        *out = make_list(l, n->kind == JN_TUPLE);
        return 0;
    }
    case JN_DICT: {
        jv_dict *d = jv_dict_new(&r->arena, n->nkids / 2);
        if (!d) return jr_oom(r);
        for (size_t i = 0; i + 1 < n->nkids; i += 2) {
            jv k, v;
            if (jinja_eval(r, n->kids[i], sc, &k) || jinja_eval(r, n->kids[i + 1], sc, &v)) return -1;
            if (k.type == JV_LIST && !k.sub) return jr_fail(r, "unhashable type: 'list'");
            if (k.type == JV_DICT) return jr_fail(r, "unhashable type: 'dict'");
            if (jv_dict_set(&r->arena, d, k, v)) return jr_oom(r);
        }
        jv v = {JV_DICT, 0, {0}};
        v.u.dict = d;
        *out = v;
        return 0;
    }
    case JN_GETATTR: {
        jv obj;
        if (jinja_eval(r, n->a, sc, &obj)) return -1;
        r->line = n->line;
        return jinja_getattr(r, obj, n->name, n->name_len, out);
    }
    case JN_GETITEM: {
        jv obj, key;
        if (jinja_eval(r, n->a, sc, &obj) || jinja_eval(r, n->b, sc, &key)) return -1;
        r->line = n->line;
        return jinja_getitem(r, obj, key, out);
    }
    case JN_SLICE: return eval_slice(r, n, sc, out);
    case JN_CALL: {
        jv fn, *args;
        const char **kw;
        size_t npos;
        if (jinja_eval(r, n->a, sc, &fn) || eval_args(r, n, sc, &args, &kw, &npos)) return -1;
        r->line = n->line;
        return jinja_call(r, fn, args, kw, n->nkids, npos, out);
    }
    case JN_FILTER: {
        jv target, *args;
        const char **kw;
        size_t npos;
        if (jinja_eval(r, n->a, sc, &target) || eval_args(r, n, sc, &args, &kw, &npos)) return -1;
        r->line = n->line;
        return jinja_apply_filter(r, n->name, n->name_len, target, args, kw, n->nkids, npos, out);
    }
    case JN_TEST: {
        jv target, *args;
        const char **kw;
        size_t npos;
        bool res;
        if (jinja_eval(r, n->a, sc, &target) || eval_args(r, n, sc, &args, &kw, &npos)) return -1;
        r->line = n->line;
        if (jinja_apply_test(r, n->name, n->name_len, target, args, n->nkids, &res)) return -1;
        *out = jv_bool(n->op ? !res : res);
        return 0;
    }
    case JN_NEG:
    case JN_POS: {
        jv v;
        if (jinja_eval(r, n->a, sc, &v)) return -1;
        if (v.type == JV_UNDEF) return undefined_error(r, v);
        if (!jv_is_number(v)) return jr_fail(r, "bad operand type for unary %c: '%s'", n->kind == JN_NEG ? '-' : '+', jv_type_name(v));
        if (n->kind == JN_POS) *out = v.type == JV_BOOL ? jv_int(v.u.b) : v;
        else if (v.type == JV_FLOAT) *out = jv_float(-v.u.f);
        else if (as_int(v) == INT64_MIN) return jr_fail(r, "integer overflow");
        else *out = jv_int(-as_int(v));
        return 0;
    }
    case JN_NOT: {
        jv v;
        if (jinja_eval(r, n->a, sc, &v)) return -1;
        *out = jv_bool(!jv_truthy(v));
        return 0;
    }
    case JN_AND:
    case JN_OR: {
        jv a;
        if (jinja_eval(r, n->a, sc, &a)) return -1;
        if (jv_truthy(a) == (n->kind == JN_OR)) { *out = a; return 0; }
        return jinja_eval(r, n->b, sc, out);
    }
    case JN_BINOP: {
        jv a, b;
        if (jinja_eval(r, n->a, sc, &a) || jinja_eval(r, n->b, sc, &b)) return -1;
        r->line = n->line;
        return binop(r, n->op, a, b, out);
    }
    case JN_COMPARE: {
        jv left;
        if (jinja_eval(r, n->kids[0], sc, &left)) return -1;
        for (size_t i = 1; i < n->nkids; i++) {
            jv right;
            bool ok;
            if (jinja_eval(r, n->kids[i], sc, &right)) return -1;
            r->line = n->line;
            if (compare(r, n->ops[i - 1], left, right, &ok)) return -1;
            if (!ok) { *out = jv_bool(false); return 0; }
            left = right;
        }
        *out = jv_bool(true);
        return 0;
    }
    case JN_COND: {
        jv c;
        if (jinja_eval(r, n->b, sc, &c)) return -1;
        if (jv_truthy(c)) return jinja_eval(r, n->a, sc, out);
        if (n->c) return jinja_eval(r, n->c, sc, out);
        *out = jv_undef("the inline if-expression evaluated to false and no else section was defined");
        return 0;
    }
    case JN_CONCAT: {
        lm_strbuf b = {.limit = r->max_output};
        for (size_t i = 0; i < n->nkids; i++) {
            jv v;
            if (jinja_eval(r, n->kids[i], sc, &v)) { lm_strbuf_free(&b); return -1; }
            jv_write_str(&b, v);
        }
        if (b.failed) { lm_strbuf_free(&b); return jr_limit(r, "string exceeds %zu bytes", r->max_output); }
        *out = jr_str(r, b.data, b.len);
        lm_strbuf_free(&b);
        return r->has_error ? -1 : 0;
    }
    default:
        return jr_fail(r, "statement used as expression");
    }
}

/* ---- statements ---------------------------------------------------------------------------- */
static int assign(jrender *r, const jnode *target, jscope *sc, jv value) {
    if (target->kind == JN_NAME) return scope_set(r, sc, target->name, target->name_len, value);
    if (target->kind == JN_GETATTR) {
        jv obj;
        if (jinja_eval(r, target->a, sc, &obj)) return -1;
        r->line = target->line;
        if (obj.type != JV_NS) return jr_fail(r, "cannot assign attribute on non-namespace object");
        if (jv_dict_set(&r->arena, obj.u.dict, jv_strn(target->name, target->name_len), value)) return jr_oom(r);
        return 0;
    }
    /* tuple unpacking */
    jv_list *items;
    if (value.type == JV_UNDEF) return undefined_error(r, value);
    if (jinja_iterable(r, value, &items)) return -1;
    if (items->len != target->nkids)
        return jr_fail(r, items->len > target->nkids ? "too many values to unpack (expected %zu)"
                                                     : "not enough values to unpack (expected %zu)",
                       target->nkids);
    for (size_t i = 0; i < target->nkids; i++)
        if (assign(r, target->kids[i], sc, items->items[i])) return -1;
    return 0;
}

static int loop_cycle(jrender *r, jv self, const jv *args, const char *const *kw, size_t nargs, size_t npos,
                      jv *out) {
    (void)kw;
    (void)nargs;
    if (npos == 0) return jr_fail(r, "no items for cycling given");
    jv *idx = jv_dict_get_str(self.u.dict, "index0", 6);
    *out = args[(size_t)(idx ? idx->u.i : 0) % npos];
    return 0;
}

/* One scope and one `loop` object serve all iterations of a for statement: the
 * scope is emptied before each iteration (jinja2's fresh-scope-per-iteration
 * semantics) and the loop object is updated in place, as jinja2's LoopContext
 * is. This keeps long loops from allocating per iteration. (A macro defined in
 * a loop body and smuggled out of it would see the last iteration's variables.) */
static int exec_for(jrender *r, const jnode *n, jscope *sc) {
    jv seq;
    jv_list view, *items = &view;
    if (jinja_eval(r, n->b, sc, &seq)) return -1;
    r->line = n->line;
    if (seq.type == JV_LIST) view = *seq.u.list;  /* appends in the body do not extend the loop */
    else if (jinja_iterable(r, seq, &items)) return -1;
    jscope *body_scope = scope_new(r, sc);
    if (!body_scope) return -1;
    if (n->nkids == 1) {  /* for x in y if cond: filter first, as jinja2 does */
        jv_list *kept = jv_list_new(&r->arena, items->len);
        if (!kept) return jr_oom(r);
        for (size_t i = 0; i < items->len; i++) {
            jv c;
            if (jr_charge(r, 1)) return -1;
            body_scope->vars->len = 0;
            if (assign(r, n->a, body_scope, items->items[i]) || jinja_eval(r, n->kids[0], body_scope, &c)) return -1;
            if (jv_truthy(c)) kept->items[kept->len++] = items->items[i];
        }
        items = kept;
    }
    size_t len = items->len;
    static const char *const field_names[] = {"index", "index0", "revindex", "revindex0", "first", "last",
                                              "length", "depth", "depth0", "previtem", "nextitem", "cycle"};
    enum { F_COUNT = sizeof field_names / sizeof field_names[0] };
    jv_dict *loop = jv_dict_new(&r->arena, F_COUNT);
    jv_func *cyc = ja_alloc(&r->arena, sizeof *cyc);
    if (!loop || !cyc) return jr_oom(r);
    jv lv = {JV_DICT, 0, {0}};
    lv.u.dict = loop;
    cyc->fn = loop_cycle;
    cyc->self = lv;
    cyc->name = "cycle";
    for (size_t f = 0; f < F_COUNT; f++) {
        loop->keys[f] = jv_cstr(field_names[f]);
        loop->vals[f] = jv_none();
    }
    loop->len = F_COUNT;
    loop->vals[11].type = JV_FUNC;
    loop->vals[11].u.func = cyc;
    for (size_t i = 0; i < len; i++) {
        if (jr_charge(r, 1)) return -1;
        jv *v = loop->vals;
        v[0] = jv_int((int64_t)i + 1);
        v[1] = jv_int((int64_t)i);
        v[2] = jv_int((int64_t)(len - i));
        v[3] = jv_int((int64_t)(len - i - 1));
        v[4] = jv_bool(i == 0);
        v[5] = jv_bool(i + 1 == len);
        v[6] = jv_int((int64_t)len);
        v[7] = jv_int(1);
        v[8] = jv_int(0);
        v[9] = i > 0 ? items->items[i - 1] : jv_undef("there is no previous item");
        v[10] = i + 1 < len ? items->items[i + 1] : jv_undef("there is no next item");
        body_scope->vars->len = 0;
        if (scope_set(r, body_scope, "loop", 4, lv) || assign(r, n->a, body_scope, items->items[i])) return -1;
        int rc = exec_body(r, n->c, body_scope);
        if (rc < 0) return -1;
        if (rc == EX_BREAK) break;
    }
    if (len == 0 && n->d) {
        body_scope->vars->len = 0;
        return exec_body(r, n->d, body_scope);
    }
    return 0;
}

static int apply_block_filter(jrender *r, const jnode *filter, jscope *sc, jv value, jv *out) {
    jv saved = r->block_value;
    r->block_value = value;
    int rc = jinja_eval(r, filter, sc, out);
    r->block_value = saved;
    return rc;
}

static int exec_stmt(jrender *r, const jnode *n, jscope *sc) {
    r->line = n->line;
    switch (n->kind) {
    case JN_TEXT: return emit(r, n->lit.u.str.s, n->lit.u.str.len);
    case JN_OUTPUT: {
        jv v;
        if (jinja_eval(r, n->a, sc, &v)) return -1;
        if (v.type == JV_STR) return emit(r, v.u.str.s, v.u.str.len);
        jv_write_str(r->out, v);
        if (r->out->failed) return jr_limit(r, "output exceeds %zu bytes", r->max_output);
        return 0;
    }
    case JN_IF: {
        jv c;
        if (jinja_eval(r, n->a, sc, &c)) return -1;
        if (jv_truthy(c)) return exec_body(r, n->b, sc);
        if (!n->c) return 0;
        return n->c->kind == JN_IF ? exec_stmt(r, n->c, sc) : exec_body(r, n->c, sc);
    }
    case JN_FOR: return exec_for(r, n, sc);
    case JN_SET: {
        jv v;
        if (jinja_eval(r, n->b, sc, &v)) return -1;
        return assign(r, n->a, sc, v);
    }
    case JN_SET_BLOCK: {
        jv v;
        int rc = capture(r, n->b, sc, &v);
        if (rc) return rc;
        if (n->c && apply_block_filter(r, n->c, sc, v, &v)) return -1;
        return assign(r, n->a, sc, v);
    }
    case JN_MACRO: {
        struct jmacro *m = ja_alloc(&r->arena, sizeof *m);
        if (!m) return jr_oom(r);
        m->def = n;
        m->closure = sc;
        jv v = {JV_MACRO, 0, {0}};
        v.u.macro = m;
        return scope_set(r, sc, n->name, n->name_len, v);
    }
    case JN_CALL_BLOCK: {
        const jnode *call = n->a;
        jv fn, *args, v;
        const char **kw;
        size_t npos;
        if (jinja_eval(r, call->a, sc, &fn) || eval_args(r, call, sc, &args, &kw, &npos)) return -1;
        r->line = n->line;
        if (fn.type != JV_MACRO) return jr_fail(r, "{%% call %%} needs a macro, got '%s'", jv_type_name(fn));
        struct jmacro *m = ja_alloc(&r->arena, sizeof *m);
        if (!m) return jr_oom(r);
        *m = *fn.u.macro;
        m->caller = n;
        m->caller_scope = sc;
        if (call_macro(r, m, args, kw, call->nkids, npos, &v)) return -1;
        return emit(r, v.u.str.s, v.u.str.len);
    }
    case JN_FILTER_BLOCK: {
        jv v, res;
        int rc = capture(r, n->b, sc, &v);
        if (rc) return rc;
        if (apply_block_filter(r, n->a, sc, v, &res) || jinja_to_str(r, res, &res)) return -1;
        return emit(r, res.u.str.s, res.u.str.len);
    }
    case JN_BREAK: return EX_BREAK;
    case JN_CONTINUE: return EX_CONTINUE;
    case JN_BODY: return exec_body(r, n, sc);
    default: return jr_fail(r, "expression used as statement");
    }
}

static int exec_body(jrender *r, const jnode *body, jscope *sc) {
    for (size_t i = 0; i < body->nkids; i++) {
        int rc = exec_stmt(r, body->kids[i], sc);
        if (rc) return rc;
    }
    return 0;
}

/* ---- public API ---------------------------------------------------------------------------- */
int lm_jinja_parse(const char *src, size_t len, lm_jinja_template **out, char *err) {
    *out = NULL;
    lm_jinja_template *t = calloc(1, sizeof *t);
    if (!t) return lm_errf(err, "out of memory");
    t->arena.limit = (size_t)1 << 30;
    jtoken *toks;
    size_t ntok;
    /* The tree points into the source (text, names), so the template keeps a copy. */
    char *copy = ja_strndup(&t->arena, src, len);
    if (!copy) {
        lm_jinja_free(t);
        return lm_errf(err, "template too large");
    }
    if (jinja_lex(&t->arena, copy, len, &toks, &ntok, err) ||
        jinja_parse_tokens(&t->arena, toks, ntok, &t->root, err)) {
        lm_jinja_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void lm_jinja_free(lm_jinja_template *tmpl) {
    if (!tmpl) return;
    ja_free_all(&tmpl->arena);
    free(tmpl);
}

int lm_jinja_render(const lm_jinja_template *tmpl, const json_t *context, const lm_jinja_options *opts,
                    char **out, size_t *out_len, char *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    lm_jinja_options o = opts ? *opts : (lm_jinja_options){0};
    jrender r = {0};
    r.err = err;
    r.line = 1;
    r.max_iterations = o.max_loop_iterations > 0 ? o.max_loop_iterations : 10000000;
    double budget_s = o.max_seconds > 0 && o.max_seconds < 1e6 ? o.max_seconds : 10.0;
    r.deadline = lm_now() + budget_s;
    r.max_depth = o.max_call_depth > 0 ? o.max_call_depth : 64;
    r.max_output = o.max_output_bytes ? o.max_output_bytes : (size_t)64 << 20;
    r.arena.limit = o.max_memory_bytes ? o.max_memory_bytes : (size_t)512 << 20;
    r.now_unix = o.now_unix;
    r.block_value = jv_undef(NULL);
    lm_strbuf buf = {.limit = r.max_output};
    r.out = &buf;
    int rc = -1;
    jscope *globals = scope_new(&r, NULL);
    if (!globals) goto done;
    r.globals = globals;
    jinja_add_globals(&r, globals->vars);
    if (context && json_is_object(context)) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)context, key, val) {
            jv v;
            if (jv_from_json(&r.arena, val, &v, 0)) {
                r.has_error = true;
                lm_errf(err, "context value '%s' is too large or too deep", key);
                goto done;
            }
            char *k = ja_strndup(&r.arena, key, strlen(key));
            if (!k || scope_set(&r, globals, k, strlen(k), v)) goto done;
        }
    }
    jscope *top = scope_new(&r, globals);
    if (!top) goto done;
    rc = exec_body(&r, tmpl->root, top);
    if (rc > 0) rc = 0;
done:
    if (rc == 0) {
        if (!buf.data) {
            buf.data = malloc(1);
            if (buf.data) buf.data[0] = 0;
        }
        if (!buf.data) rc = lm_errf(err, "out of memory");
    }
    if (rc == 0) {
        *out = buf.data;
        if (out_len) *out_len = buf.len;
    } else {
        if (!r.has_error) lm_errf(err, "render failed");
        lm_strbuf_free(&buf);
    }
    ja_free_all(&r.arena);
    return rc == 0 ? 0 : r.has_error && r.fault ? r.fault : LM_JINJA_ERROR;
}

/* Internals shared by the Jinja interpreter's files (not a public header).
 *
 *   jinja_value.c     arena, string buffers, values, Python-style str/repr, tojson
 *   jinja_lex.c       source -> tokens, applying -/+ and trim/lstrip_blocks
 *   jinja_parse.c     tokens -> syntax tree
 *   jinja_eval.c      renders a tree: scopes, statements, expressions
 *   jinja_builtins.c  filters, tests, methods of str/dict/list, global functions
 *
 * Memory: everything a render creates (values, containers, strings) lives in one
 * arena freed when the render ends, so values need no reference counting and a
 * template cannot leak, even with cyclic data. The syntax tree lives in the
 * template's own arena. Scalars are passed by value (jv); containers are
 * pointers, shared like Python objects.
 */
#ifndef LAZYMOE_JINJA_INTERNAL_H
#define LAZYMOE_JINJA_INTERNAL_H

#include "common/buf.h"
#include "common/error.h"
#include "text/jinja.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- arena ------------------------------------------------------------------ */
typedef struct ja_chunk ja_chunk;
typedef struct {
    ja_chunk *head;
    size_t total;   /* bytes obtained from malloc */
    size_t limit;   /* 0 = unlimited */
} jarena;

void *ja_alloc(jarena *a, size_t n);           /* zeroed; NULL if over limit or OOM */
char *ja_strndup(jarena *a, const char *s, size_t n);
void ja_free_all(jarena *a);
/* Arena arrays: makes room for element len of the array *arrp (elements of elem_size
 * bytes, *cap allocated) by moving its len elements into a block twice as large (at
 * least 4). 0, or -1 with nothing changed when over the limit or out of memory. */
int ja_grow(jarena *a, void *arrp, size_t *cap, size_t len, size_t elem_size);
#define JA_GROW(a, arr, cap, len) ja_grow((a), &(arr), &(cap), (len), sizeof *(arr))

/* Growable byte buffers are common/buf.h's lm_strbuf (malloc'd; the owner calls lm_strbuf_free);
 * output buffers set its limit to the render's output limit. */

/* ---- values ------------------------------------------------------------------ */
typedef enum {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR,
    JV_LIST, JV_DICT, JV_NS, JV_FUNC, JV_MACRO
} jv_type;

/* Subkinds (jv.sub). A generator is what jinja2's map/select/... return: iterable
 * once, always truthy, without len() or JSON form. Markup is a string from |safe
 * or |escape: `+` with a plain string HTML-escapes the plain one. */
enum { JV_PLAIN = 0, JV_TUPLE = 1, JV_GENERATOR = 2, JV_MARKUP = 1 };

typedef struct jv_list jv_list;
typedef struct jv_dict jv_dict;
typedef struct jv_func jv_func;
typedef struct jnode jnode;
typedef struct jscope jscope;

typedef struct {
    uint8_t type;
    uint8_t sub;       /* JV_LIST: JV_TUPLE or JV_GENERATOR; JV_STR: JV_MARKUP */
    union {
        bool b;
        int64_t i;
        double f;
        struct { const char *s; size_t len; } str;  /* JV_STR; JV_UNDEF: hint for errors */
        jv_list *list;
        jv_dict *dict;  /* JV_DICT and JV_NS */
        jv_func *func;
        struct jmacro *macro;
    } u;
} jv;

struct jv_list { jv *items; size_t len, cap; };
struct jv_dict { jv *keys; jv *vals; size_t len, cap; };

struct jrender;
/* A builtin callable: positional args, then keyword args (names kw[i] for i >= npos). */
typedef int (*jv_builtin)(struct jrender *r, jv self, const jv *args, const char *const *kw,
                          size_t nargs, size_t npos, jv *out);
struct jv_func { jv_builtin fn; jv self; const char *name; };

struct jmacro {
    const jnode *def;      /* JN_MACRO node */
    jscope *closure;       /* scope the macro was defined in */
    const jnode *caller;   /* body of {% call %} that invoked it, or NULL */
    jscope *caller_scope;
};

static inline jv jv_undef(const char *hint) { jv v = {JV_UNDEF, 0, {0}}; v.u.str.s = hint; return v; }
static inline jv jv_none(void) { jv v = {JV_NONE, 0, {0}}; return v; }
static inline jv jv_bool(bool b) { jv v = {JV_BOOL, 0, {0}}; v.u.b = b; return v; }
static inline jv jv_int(int64_t i) { jv v = {JV_INT, 0, {0}}; v.u.i = i; return v; }
static inline jv jv_float(double f) { jv v = {JV_FLOAT, 0, {0}}; v.u.f = f; return v; }
static inline jv jv_strn(const char *s, size_t n) { jv v = {JV_STR, 0, {0}}; v.u.str.s = s; v.u.str.len = n; return v; }
jv jv_cstr(const char *s);  /* borrows s: static strings or arena strings only */

jv_list *jv_list_new(jarena *a, size_t cap);
int jv_list_push(jarena *a, jv_list *l, jv v);
jv_dict *jv_dict_new(jarena *a, size_t cap);
int jv_dict_set(jarena *a, jv_dict *d, jv key, jv val);     /* replaces an equal key */
int jv_dict_push(jarena *a, jv_dict *d, jv key, jv val);    /* key known to be new */
jv *jv_dict_get(const jv_dict *d, jv key);
jv *jv_dict_get_str(const jv_dict *d, const char *key, size_t len);

bool jv_truthy(jv v);
bool jv_equal(jv a, jv b);
/* Python ordering: numbers with numbers, strings with strings, lists elementwise.
 * Returns 0 and sets *cmp, or -1 for incomparable types. */
int jv_compare(jv a, jv b, int *cmp);
const char *jv_type_name(jv v);  /* Python's name: 'str', 'int', 'dict', ... */
bool jv_is_number(jv v);
double jv_as_double(jv v);

/* Python str() and repr() into a buffer. */
void jv_write_str(lm_strbuf *b, jv v);
void jv_write_repr(lm_strbuf *b, jv v);
void jv_write_float(lm_strbuf *b, double f);  /* Python repr of a float */
/* json.dumps(v, ensure_ascii, indent, separators, sort_keys). indent NULL = single
 * line; item_sep/key_sep NULL = Python's defaults for that indent. */
int jv_write_json(lm_strbuf *b, jv v, const char *indent, const char *item_sep,
                  const char *key_sep, bool sort_keys, bool ensure_ascii, int depth, char *err);

int jv_from_json(jarena *a, const json_t *j, jv *out, int depth);

/* Where a character starts: at a lead or ASCII byte, and at offset 0 whatever the byte
 * is, so a string that begins with a stray continuation byte (strings need not be valid
 * UTF-8: a template's own literals, strftime_now's output) is never zero characters
 * long while iterating it yields one. Length, indexing, slicing and iteration all count
 * characters this one way. */
static inline int utf8_char_starts(const char *s, size_t i) { return i == 0 || ((unsigned char)s[i] & 0xC0) != 0x80; }
/* UTF-8 helpers: code point count; byte offset of code point index i. */
size_t utf8_len(const char *s, size_t n);
size_t utf8_offset(const char *s, size_t n, size_t index);

/* ---- tokens ------------------------------------------------------------------ */
typedef enum {
    JT_TEXT, JT_VAR_BEGIN, JT_VAR_END, JT_BLOCK_BEGIN, JT_BLOCK_END,
    JT_NAME, JT_STRING, JT_INT, JT_FLOAT, JT_OP, JT_EOF
} jtok_kind;

typedef struct {
    jtok_kind kind;
    int line;
    const char *s;   /* TEXT/NAME/STRING/OP: bytes (STRING: unescaped, arena) */
    size_t len;
    int64_t i;
    double f;
} jtoken;

/* Tokenizes src into an arena array; *ntok includes the final JT_EOF. */
int jinja_lex(jarena *a, const char *src, size_t len, jtoken **toks, size_t *ntok, char *err);

/* ---- syntax tree -------------------------------------------------------------- */
typedef enum {
    /* expressions */
    JN_LIT, JN_NAME, JN_LIST, JN_TUPLE, JN_DICT, JN_GETATTR, JN_GETITEM, JN_SLICE,
    JN_CALL, JN_FILTER, JN_TEST, JN_NEG, JN_POS, JN_NOT, JN_BINOP, JN_AND, JN_OR,
    JN_COMPARE, JN_COND, JN_CONCAT, JN_BLOCK_VALUE,
    /* statements */
    JN_BODY, JN_TEXT, JN_OUTPUT, JN_IF, JN_FOR, JN_SET, JN_SET_BLOCK, JN_MACRO,
    JN_CALL_BLOCK, JN_FILTER_BLOCK, JN_BREAK, JN_CONTINUE
} jnode_kind;

struct jnode {
    jnode_kind kind;
    int line;
    int op;                 /* JN_BINOP: operator token char code; JN_TEST: negated */
    const char *name;       /* NAME, GETATTR, FILTER, TEST, MACRO, SET_BLOCK target */
    size_t name_len;
    jv lit;                 /* JN_LIT; JN_TEXT holds its text here */
    jnode *a, *b, *c, *d;   /* children; meaning per kind (see jinja_parse.c) */
    jnode **kids;           /* lists: items, args, statements, compare operands */
    const char **kw;        /* keyword name per kid, NULL for positional */
    int *ops;               /* JN_COMPARE: operator codes between operands */
    size_t nkids;
};

/* Compare operator codes. */
enum { JC_EQ = 1, JC_NE, JC_LT, JC_LE, JC_GT, JC_GE, JC_IN, JC_NOTIN };
/* Binary operator codes beyond single characters. */
enum { JB_FLOORDIV = 256, JB_POW };

int jinja_parse_tokens(jarena *a, const jtoken *toks, size_t ntok, jnode **root, char *err);

/* ---- rendering ------------------------------------------------------------------ */
struct jscope {
    jscope *parent;
    jv_dict *vars;
};

typedef struct jrender {
    jarena arena;
    lm_strbuf *out;             /* current output (captures swap it) */
    char *err;
    bool has_error;          /* the first error wins */
    int fault;               /* its kind: LM_JINJA_ERROR, _RAISED or _LIMIT (jinja.h) */
    int line;                /* line of the node being evaluated, for errors */
    long iterations, max_iterations;
    double deadline;         /* lm_now() time the render must end by */
    unsigned clock_tick;     /* charges since the clock was last read */
    int depth, max_depth;
    size_t max_output;
    int64_t now_unix;
    jscope *globals;
    jv block_value;          /* value for JN_BLOCK_VALUE inside filter/set blocks */
} jrender;

/* Reports an error at the current line; returns -1. */
void jr_fail_set(jrender *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records a render error (first one wins) and evaluates to -1; a macro so the
 * failure value is visible at each call site, as with lm_errf. */
#define jr_fail(r, ...) (jr_fail_set((r), __VA_ARGS__), lm_failed())
/* The same for a render limit (iterations, time, memory, output, depth): the input is
 * too large for the template, not the template broken. */
void jr_limit_set(jrender *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define jr_limit(r, ...) (jr_limit_set((r), __VA_ARGS__), lm_failed())
/* The same for the template's own raise_exception(): it refused its input. */
void jr_raise_set(jrender *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define jr_raise(r, ...) (jr_raise_set((r), __VA_ARGS__), lm_failed())
jv jr_str(jrender *r, const char *s, size_t n);   /* copies into the arena */
/* Records an out-of-memory error and evaluates to -1, like jr_fail. */
void jr_oom_set(jrender *r);
#define jr_oom(r) (jr_oom_set(r), lm_failed())

/* Charges n steps of work (loop iterations, padding a filter writes) against the
 * render's iteration limit and checks its wall-clock budget; -1 with the error set
 * when either is spent. Every loop whose length a template controls calls it. */
int jr_charge(jrender *r, uint64_t n);

int jinja_eval(jrender *r, const jnode *n, jscope *sc, jv *out);
/* Calls a callable value (macro or builtin). */
int jinja_call(jrender *r, jv fn, const jv *args, const char *const *kw, size_t nargs,
               size_t npos, jv *out);
/* Attribute access as Jinja's sandbox does it: attribute first, then item. */
int jinja_getattr(jrender *r, jv obj, const char *name, size_t len, jv *out);
int jinja_getitem(jrender *r, jv obj, jv key, jv *out);
/* Builds a list view for iteration (dict -> keys, str -> characters). */
int jinja_iterable(jrender *r, jv v, jv_list **out);
/* str(v) as an arena string. */
int jinja_to_str(jrender *r, jv v, jv *out);

/* Builtins (jinja_builtins.c). Names are looked up by string; NULL when unknown. */
int jinja_apply_filter(jrender *r, const char *name, size_t len, jv target, const jv *args,
                       const char *const *kw, size_t nargs, size_t npos, jv *out);
int jinja_apply_test(jrender *r, const char *name, size_t len, jv target, const jv *args,
                     size_t nargs, bool *out);
jv_builtin jinja_method(jv self, const char *name, size_t len);
void jinja_add_globals(jrender *r, jv_dict *globals);

#endif

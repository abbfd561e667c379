/* Jinja parser: tokens -> syntax tree (recursive descent, jinja2's grammar).
 *
 * Expression precedence, loosest first, as jinja2/parser.py has it:
 *   a if c else b  >  or  >  and  >  not  >  comparisons (==, in, not in, <...)
 *   >  + -  >  ~  >  * / // %  >  **  >  unary -  >  postfix (. [] ()) | filter, is test
 * Node field use per kind is listed beside each constructor below. Nesting depth
 * is capped so hostile input cannot exhaust the C stack.
 */
#include "text/jinja_internal.h"

#include <string.h>

#define MAX_NESTING 200

typedef struct {
    jarena *a;
    const jtoken *t;
    size_t n, pos;
    char *err;
    int depth;
    int loop_depth;  /* for break/continue checks */
    bool failed;
} parser;

typedef struct {
    jnode **kids;
    const char **kw;
    size_t n, cap;
} kidlist;

static const jtoken *cur(parser *P) { return &P->t[P->pos < P->n ? P->pos : P->n - 1]; }
static const jtoken *peek(parser *P, size_t k) {
    size_t i = P->pos + k;
    return &P->t[i < P->n ? i : P->n - 1];
}
static void adv(parser *P) { if (P->pos + 1 < P->n) P->pos++; }

static bool tok_is(const jtoken *t, jtok_kind k, const char *s) {
    if (t->kind != k) return false;
    if (!s) return true;
    size_t n = strlen(s);
    return t->len == n && memcmp(t->s, s, n) == 0;
}
static bool is_op(parser *P, const char *s) { return tok_is(cur(P), JT_OP, s); }
static bool is_name(parser *P, const char *s) { return tok_is(cur(P), JT_NAME, s); }

static const char *tok_desc(const jtoken *t) {
    switch (t->kind) {
    case JT_TEXT: return "text";
    case JT_VAR_BEGIN: return "'{{'";
    case JT_VAR_END: return "'}}'";
    case JT_BLOCK_BEGIN: return "'{%'";
    case JT_BLOCK_END: return "'%}'";
    case JT_NAME: return "name";
    case JT_STRING: return "string";
    case JT_INT: case JT_FLOAT: return "number";
    case JT_OP: return "operator";
    case JT_EOF: return "end of template";
    }
    return "token";
}

static void *fail(parser *P, const char *fmt, const char *what) {
    if (!P->failed) {
        char msg[LM_ERR_LEN];
        snprintf(msg, sizeof msg, fmt, what);
        lm_errf(P->err, "line %d: %s", cur(P)->line, msg);
        P->failed = true;
    }
    return NULL;
}

static jnode *nn(parser *P, jnode_kind kind, int line) {
    jnode *x = ja_alloc(P->a, sizeof *x);
    if (!x) return fail(P, "%s", "template too large");
    x->kind = kind;
    x->line = line;
    return x;
}

static bool kid_push(parser *P, kidlist *k, jnode *node, const char *kw) {
    size_t cap = k->cap; /* two arrays, one capacity: commit when both grew */
    bool ok = JA_GROW(P->a, k->kids, cap, k->n) == 0;
    cap = k->cap;
    if (!ok || JA_GROW(P->a, k->kw, cap, k->n) != 0) {
        fail(P, "%s", "template too large");
        return false;
    }
    k->cap = cap;
    k->kids[k->n] = node;
    k->kw[k->n] = kw;
    k->n++;
    return true;
}

static void set_kids(jnode *x, const kidlist *k) {
    x->kids = k->kids;
    x->kw = k->kw;
    x->nkids = k->n;
}

static bool expect_op(parser *P, const char *s) {
    if (!is_op(P, s)) {
        char what[32];
        snprintf(what, sizeof what, "'%s'", s);
        fail(P, "expected %s", what);
        return false;
    }
    adv(P);
    return true;
}

static bool expect_block_end(parser *P) {
    if (cur(P)->kind != JT_BLOCK_END) { fail(P, "expected '%%}', got %s", tok_desc(cur(P))); return false; }
    adv(P);
    return true;
}

static const char *name_dup(parser *P, const jtoken *t) {
    char *s = ja_strndup(P->a, t->s, t->len);
    if (!s) fail(P, "%s", "template too large");
    return s;
}

static jnode *parse_expr(parser *P);
static jnode *parse_or(parser *P);
static jnode *parse_unary(parser *P, bool with_filter);
static jnode *parse_primary(parser *P);
static jnode *parse_postfix(parser *P, jnode *node);

/* Call arguments after '(' up to ')': positional and name=value. */
static bool parse_args(parser *P, kidlist *args) {
    if (!expect_op(P, "(")) return false;
    while (!is_op(P, ")")) {
        if (args->n && !expect_op(P, ",")) return false;
        if (is_op(P, ")")) break;  /* trailing comma */
        if (is_op(P, "*") || is_op(P, "**")) { fail(P, "%s", "*args and **kwargs are not supported"); return false; }
        const char *kw = NULL;
        if (cur(P)->kind == JT_NAME && tok_is(peek(P, 1), JT_OP, "=")) {
            kw = name_dup(P, cur(P));
            adv(P);
            adv(P);
        }
        jnode *e = parse_expr(P);
        if (!e || !kid_push(P, args, e, kw)) return false;
    }
    adv(P);
    return true;
}

static jnode *parse_filter_call(parser *P, jnode *target) {
    /* at the filter name */
    if (cur(P)->kind != JT_NAME) return fail(P, "expected filter name, got %s", tok_desc(cur(P)));
    jnode *f = nn(P, JN_FILTER, cur(P)->line);
    if (!f) return NULL;
    f->a = target;
    f->name = name_dup(P, cur(P));
    f->name_len = cur(P)->len;
    adv(P);
    /* dotted filter names are not used by chat templates */
    if (is_op(P, "(")) {
        kidlist args = {0};
        if (!parse_args(P, &args)) return NULL;
        set_kids(f, &args);
    }
    return f;
}

static jnode *parse_filters_and_tests(parser *P, jnode *node) {
    while (node) {
        if (is_op(P, "|")) {
            adv(P);
            node = parse_filter_call(P, node);
        } else if (is_name(P, "is")) {
            adv(P);
            jnode *t = nn(P, JN_TEST, cur(P)->line);
            if (!t) return NULL;
            t->a = node;
            if (is_name(P, "not")) { t->op = 1; adv(P); }
            if (cur(P)->kind != JT_NAME && !is_op(P, "==") && !is_op(P, "!=") && !is_op(P, "<") &&
                !is_op(P, ">") && !is_op(P, "<=") && !is_op(P, ">="))
                return fail(P, "expected test name, got %s", tok_desc(cur(P)));
            t->name = name_dup(P, cur(P));
            t->name_len = cur(P)->len;
            adv(P);
            kidlist args = {0};
            const jtoken *c = cur(P);
            if (is_op(P, "(")) {
                if (!parse_args(P, &args)) return NULL;
            } else if ((c->kind == JT_STRING || c->kind == JT_INT || c->kind == JT_FLOAT ||
                        is_op(P, "[") || is_op(P, "{") ||
                        (c->kind == JT_NAME && !is_name(P, "else") && !is_name(P, "or") &&
                         !is_name(P, "and") && !is_name(P, "if") && !is_name(P, "in") &&
                         !is_name(P, "is") && !is_name(P, "not")))) {
                jnode *arg = parse_primary(P);
                if (arg) arg = parse_postfix(P, arg);
                if (!arg || !kid_push(P, &args, arg, NULL)) return NULL;
            }
            set_kids(t, &args);
            node = t;
        } else {
            break;
        }
    }
    return node;
}

static jnode *parse_subscript(parser *P, jnode *obj, int line) {
    /* after '[' */
    jnode *parts[3] = {NULL, NULL, NULL};
    int nparts = 0;
    bool is_slice = false;
    for (;;) {
        if (is_op(P, ":")) {
            is_slice = true;
            if (nparts >= 2) return fail(P, "%s", "too many ':' in slice");
            nparts++;
            adv(P);
            continue;
        }
        if (is_op(P, "]")) break;
        if (parts[nparts]) return fail(P, "%s", "expected ']'");
        parts[nparts] = parse_expr(P);
        if (!parts[nparts]) return NULL;
        if (!is_slice && !is_op(P, ":")) break;
    }
    if (!expect_op(P, "]")) return NULL;
    jnode *x = nn(P, is_slice ? JN_SLICE : JN_GETITEM, line);
    if (!x) return NULL;
    x->a = obj;
    x->b = parts[0];
    if (is_slice) { x->c = parts[1]; x->d = parts[2]; }
    else if (!x->b) return fail(P, "%s", "empty subscript");
    return x;
}

static jnode *parse_postfix(parser *P, jnode *node) {
    while (node) {
        int line = cur(P)->line;
        if (is_op(P, ".")) {
            adv(P);
            if (cur(P)->kind == JT_NAME) {
                jnode *x = nn(P, JN_GETATTR, line);
                if (!x) return NULL;
                x->a = node;
                x->name = name_dup(P, cur(P));
                x->name_len = cur(P)->len;
                adv(P);
                node = x;
            } else if (cur(P)->kind == JT_INT) {
                jnode *k = nn(P, JN_LIT, line), *x = nn(P, JN_GETITEM, line);
                if (!k || !x) return NULL;
                k->lit = jv_int(cur(P)->i);
                adv(P);
                x->a = node;
                x->b = k;
                node = x;
            } else {
                return fail(P, "expected attribute name, got %s", tok_desc(cur(P)));
            }
        } else if (is_op(P, "[")) {
            adv(P);
            node = parse_subscript(P, node, line);
        } else if (is_op(P, "(")) {
            jnode *x = nn(P, JN_CALL, line);
            if (!x) return NULL;
            kidlist args = {0};
            if (!parse_args(P, &args)) return NULL;
            x->a = node;
            set_kids(x, &args);
            node = x;
        } else {
            break;
        }
    }
    return node;
}

static jnode *parse_primary(parser *P) {
    const jtoken *t = cur(P);
    jnode *x;
    if (++P->depth > MAX_NESTING) return fail(P, "%s", "expression nested too deeply");
    switch (t->kind) {
    case JT_NAME:
        x = nn(P, JN_LIT, t->line);
        if (!x) return NULL;
        if (tok_is(t, JT_NAME, "true") || tok_is(t, JT_NAME, "True")) x->lit = jv_bool(true);
        else if (tok_is(t, JT_NAME, "false") || tok_is(t, JT_NAME, "False")) x->lit = jv_bool(false);
        else if (tok_is(t, JT_NAME, "none") || tok_is(t, JT_NAME, "None")) x->lit = jv_none();
        else {
            x->kind = JN_NAME;
            x->name = name_dup(P, t);
            x->name_len = t->len;
        }
        adv(P);
        break;
    case JT_STRING: {
        /* adjacent string literals concatenate */
        size_t total = 0, k = P->pos;
        while (k < P->n && P->t[k].kind == JT_STRING) total += P->t[k++].len;
        char *s = ja_alloc(P->a, total + 1);
        x = nn(P, JN_LIT, t->line);
        if (!s || !x) return fail(P, "%s", "template too large");
        size_t off = 0;
        while (cur(P)->kind == JT_STRING) {
            memcpy(s + off, cur(P)->s, cur(P)->len);
            off += cur(P)->len;
            adv(P);
        }
        x->lit = jv_strn(s, total);
        break;
    }
    case JT_INT:
        x = nn(P, JN_LIT, t->line);
        if (!x) return NULL;
        x->lit = jv_int(t->i);
        adv(P);
        break;
    case JT_FLOAT:
        x = nn(P, JN_LIT, t->line);
        if (!x) return NULL;
        x->lit = jv_float(t->f);
        adv(P);
        break;
    case JT_OP:
        if (is_op(P, "(")) {
            adv(P);
            kidlist items = {0};
            bool tuple = false;  /* `()` (no items) is an empty tuple */
            while (!is_op(P, ")")) {
                jnode *e = parse_expr(P);
                if (!e || !kid_push(P, &items, e, NULL)) return NULL;
                if (is_op(P, ",")) { tuple = true; adv(P); }
                else if (!is_op(P, ")")) return fail(P, "expected ')', got %s", tok_desc(cur(P)));
            }
            adv(P);
            if (!tuple && items.n == 1) { x = items.kids[0]; break; }
            x = nn(P, JN_TUPLE, t->line);
            if (!x) return NULL;
            set_kids(x, &items);
        } else if (is_op(P, "[")) {
            adv(P);
            kidlist items = {0};
            while (!is_op(P, "]")) {
                jnode *e = parse_expr(P);
                if (!e || !kid_push(P, &items, e, NULL)) return NULL;
                if (is_op(P, ",")) adv(P);
                else if (!is_op(P, "]")) return fail(P, "expected ']', got %s", tok_desc(cur(P)));
            }
            adv(P);
            x = nn(P, JN_LIST, t->line);
            if (!x) return NULL;
            set_kids(x, &items);
        } else if (is_op(P, "{")) {
            adv(P);
            kidlist items = {0};
            while (!is_op(P, "}")) {
                jnode *k = parse_expr(P);
                if (!k || !expect_op(P, ":")) return NULL;
                jnode *v = parse_expr(P);
                if (!v || !kid_push(P, &items, k, NULL) || !kid_push(P, &items, v, NULL)) return NULL;
                if (is_op(P, ",")) adv(P);
                else if (!is_op(P, "}")) return fail(P, "expected '}', got %s", tok_desc(cur(P)));
            }
            adv(P);
            x = nn(P, JN_DICT, t->line);
            if (!x) return NULL;
            set_kids(x, &items);
        } else {
            char what[16];
            snprintf(what, sizeof what, "'%.*s'", (int)t->len, t->s);
            x = fail(P, "unexpected %s", what);
        }
        break;
    default:
        x = fail(P, "unexpected %s", tok_desc(t));
    }
    P->depth--;
    return x;
}

static jnode *parse_unary(parser *P, bool with_filter) {
    jnode *node;
    if (++P->depth > MAX_NESTING) return fail(P, "%s", "expression nested too deeply");
    int line = cur(P)->line;
    if (is_op(P, "-") || is_op(P, "+")) {
        bool neg = is_op(P, "-");
        adv(P);
        jnode *inner = parse_unary(P, false);
        node = inner ? nn(P, neg ? JN_NEG : JN_POS, line) : NULL;
        if (node) node->a = inner;
    } else {
        node = parse_primary(P);
        node = parse_postfix(P, node);
    }
    if (with_filter) node = parse_filters_and_tests(P, node);
    P->depth--;
    return node;
}

static jnode *binop(parser *P, int op, jnode *l, jnode *r, int line) {
    if (!l || !r) return NULL;
    jnode *x = nn(P, JN_BINOP, line);
    if (!x) return NULL;
    x->op = op;
    x->a = l;
    x->b = r;
    return x;
}

static jnode *parse_pow(parser *P) {
    jnode *l = parse_unary(P, true);
    while (l && is_op(P, "**")) {
        int line = cur(P)->line;
        adv(P);
        l = binop(P, JB_POW, l, parse_unary(P, true), line);
    }
    return l;
}

static jnode *parse_math2(parser *P) {
    jnode *l = parse_pow(P);
    while (l) {
        int line = cur(P)->line, op;
        if (is_op(P, "*")) op = '*';
        else if (is_op(P, "/")) op = '/';
        else if (is_op(P, "//")) op = JB_FLOORDIV;
        else if (is_op(P, "%")) op = '%';
        else break;
        adv(P);
        l = binop(P, op, l, parse_pow(P), line);
    }
    return l;
}

static jnode *parse_concat(parser *P) {
    jnode *first = parse_math2(P);
    if (!first || !is_op(P, "~")) return first;
    jnode *x = nn(P, JN_CONCAT, first->line);
    kidlist items = {0};
    if (!x || !kid_push(P, &items, first, NULL)) return NULL;
    while (is_op(P, "~")) {
        adv(P);
        jnode *e = parse_math2(P);
        if (!e || !kid_push(P, &items, e, NULL)) return NULL;
    }
    set_kids(x, &items);
    return x;
}

static jnode *parse_math1(parser *P) {
    jnode *l = parse_concat(P);
    while (l && (is_op(P, "+") || is_op(P, "-"))) {
        int line = cur(P)->line, op = (unsigned char)cur(P)->s[0];
        adv(P);
        l = binop(P, op, l, parse_concat(P), line);
    }
    return l;
}

static int compare_op(parser *P) {
    static const struct { const char *s; int op; } ops[] = {
        {"==", JC_EQ}, {"!=", JC_NE}, {"<", JC_LT}, {"<=", JC_LE}, {">", JC_GT}, {">=", JC_GE}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (is_op(P, ops[i].s)) { adv(P); return ops[i].op; }
    if (is_name(P, "in")) { adv(P); return JC_IN; }
    if (is_name(P, "not") && tok_is(peek(P, 1), JT_NAME, "in")) { adv(P); adv(P); return JC_NOTIN; }
    return 0;
}

static jnode *parse_compare(parser *P) {
    jnode *first = parse_math1(P);
    if (!first) return NULL;
    int op = compare_op(P);
    if (!op) return first;
    jnode *x = nn(P, JN_COMPARE, first->line);
    kidlist items = {0};
    int ops[64], nops = 0;
    if (!x || !kid_push(P, &items, first, NULL)) return NULL;
    while (op) {
        if (nops == 64) return fail(P, "%s", "comparison chain too long");
        ops[nops++] = op;
        jnode *e = parse_math1(P);
        if (!e || !kid_push(P, &items, e, NULL)) return NULL;
        op = compare_op(P);
    }
    set_kids(x, &items);
    x->ops = ja_alloc(P->a, sizeof(int) * (size_t)nops);
    if (!x->ops) return fail(P, "%s", "template too large");
    memcpy(x->ops, ops, sizeof(int) * (size_t)nops);
    return x;
}

static jnode *parse_not(parser *P) {
    if (is_name(P, "not")) {
        int line = cur(P)->line;
        adv(P);
        if (++P->depth > MAX_NESTING) return fail(P, "%s", "expression nested too deeply");
        jnode *inner = parse_not(P);
        P->depth--;
        jnode *x = inner ? nn(P, JN_NOT, line) : NULL;
        if (x) x->a = inner;
        return x;
    }
    return parse_compare(P);
}

static jnode *parse_and(parser *P) {
    jnode *l = parse_not(P);
    while (l && is_name(P, "and")) {
        int line = cur(P)->line;
        adv(P);
        jnode *r = parse_not(P);
        jnode *x = r ? nn(P, JN_AND, line) : NULL;
        if (!x) return NULL;
        x->a = l;
        x->b = r;
        l = x;
    }
    return l;
}

static jnode *parse_or(parser *P) {
    jnode *l = parse_and(P);
    while (l && is_name(P, "or")) {
        int line = cur(P)->line;
        adv(P);
        jnode *r = parse_and(P);
        jnode *x = r ? nn(P, JN_OR, line) : NULL;
        if (!x) return NULL;
        x->a = l;
        x->b = r;
        l = x;
    }
    return l;
}

static jnode *parse_expr(parser *P) {
    if (++P->depth > MAX_NESTING) return fail(P, "%s", "expression nested too deeply");
    jnode *e = parse_or(P);
    while (e && is_name(P, "if")) {
        int line = cur(P)->line;
        adv(P);
        jnode *cond = parse_or(P), *other = NULL;
        if (!cond) return NULL;
        if (is_name(P, "else")) {
            adv(P);
            other = parse_expr(P);
            if (!other) return NULL;
        }
        jnode *x = nn(P, JN_COND, line);
        if (!x) return NULL;
        x->a = e;
        x->b = cond;
        x->c = other;
        e = x;
    }
    P->depth--;
    return e;
}

/* An expression, or a tuple when commas follow (`{{ a, b }}`, `set x = a, b`). */
static jnode *parse_tuple_expr(parser *P) {
    jnode *first = parse_expr(P);
    if (!first || !is_op(P, ",")) return first;
    jnode *x = nn(P, JN_TUPLE, first->line);
    kidlist items = {0};
    if (!x || !kid_push(P, &items, first, NULL)) return NULL;
    while (is_op(P, ",")) {
        adv(P);
        if (cur(P)->kind == JT_VAR_END || cur(P)->kind == JT_BLOCK_END) break;
        jnode *e = parse_expr(P);
        if (!e || !kid_push(P, &items, e, NULL)) return NULL;
    }
    set_kids(x, &items);
    return x;
}

/* Assignment targets: name, name.attr (set only), a, b or (a, b). */
static jnode *parse_target(parser *P, bool allow_attr) {
    int line = cur(P)->line;
    bool paren = is_op(P, "(");
    if (paren) adv(P);
    kidlist names = {0};
    for (;;) {
        if (cur(P)->kind != JT_NAME) return fail(P, "expected a variable name, got %s", tok_desc(cur(P)));
        jnode *x = nn(P, JN_NAME, cur(P)->line);
        if (!x) return NULL;
        x->name = name_dup(P, cur(P));
        x->name_len = cur(P)->len;
        adv(P);
        if (allow_attr && !paren && names.n == 0 && is_op(P, ".")) {
            adv(P);
            if (cur(P)->kind != JT_NAME) return fail(P, "expected attribute name, got %s", tok_desc(cur(P)));
            jnode *g = nn(P, JN_GETATTR, line);
            if (!g) return NULL;
            g->a = x;
            g->name = name_dup(P, cur(P));
            g->name_len = cur(P)->len;
            adv(P);
            return g;
        }
        if (!kid_push(P, &names, x, NULL)) return NULL;
        if (!is_op(P, ",")) break;
        adv(P);
    }
    if (paren && !expect_op(P, ")")) return NULL;
    if (names.n == 1 && !paren) return names.kids[0];
    jnode *t = nn(P, JN_TUPLE, line);
    if (!t) return NULL;
    set_kids(t, &names);
    return t;
}

/* ---- statements ---------------------------------------------------------------- */
static jnode *parse_body(parser *P, const char *const *end_names, const char **which);

/* Macro and call-block parameter lists: kw = names, kids = defaults (or NULL). */
static bool parse_params(parser *P, jnode *owner) {
    kidlist params = {0};
    if (!expect_op(P, "(")) return false;
    while (!is_op(P, ")")) {
        if (params.n && !expect_op(P, ",")) return false;
        if (cur(P)->kind != JT_NAME) { fail(P, "expected parameter name, got %s", tok_desc(cur(P))); return false; }
        const char *name = name_dup(P, cur(P));
        adv(P);
        jnode *def = NULL;
        if (is_op(P, "=")) {
            adv(P);
            if (!(def = parse_expr(P))) return false;
        }
        if (!kid_push(P, &params, def, name)) return false;
    }
    adv(P);
    set_kids(owner, &params);
    return true;
}

static bool end_tag(parser *P) {
    adv(P);  /* the end keyword */
    return expect_block_end(P);
}

static jnode *parse_if(parser *P, int line) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const endif[] = {"endif", NULL};
    jnode *x = nn(P, JN_IF, line);
    if (!x || !(x->a = parse_expr(P)) || !expect_block_end(P)) return NULL;
    const char *which = NULL;
    if (!(x->b = parse_body(P, ends, &which))) return NULL;
    if (strcmp(which, "elif") == 0) {
        int l2 = cur(P)->line;
        adv(P);
        x->c = parse_if(P, l2);  /* consumes through endif */
        return x->c ? x : NULL;
    }
    if (strcmp(which, "else") == 0) {
        if (!end_tag(P) || !(x->c = parse_body(P, endif, &which))) return NULL;
    }
    return end_tag(P) ? x : NULL;
}

static jnode *parse_for(parser *P, int line) {
    static const char *const ends[] = {"else", "endfor", NULL};
    static const char *const endfor[] = {"endfor", NULL};
    jnode *x = nn(P, JN_FOR, line);
    if (!x || !(x->a = parse_target(P, false))) return NULL;
    if (!is_name(P, "in")) return fail(P, "expected 'in', got %s", tok_desc(cur(P)));
    adv(P);
    if (!(x->b = parse_or(P))) return NULL;
    if (is_name(P, "if")) {
        adv(P);
        jnode *cond = parse_expr(P);
        if (!cond) return NULL;
        kidlist k = {0};
        if (!kid_push(P, &k, cond, NULL)) return NULL;
        set_kids(x, &k);
    }
    if (is_name(P, "recursive")) return fail(P, "%s", "recursive loops are not supported");
    if (!expect_block_end(P)) return NULL;
    const char *which = NULL;
    P->loop_depth++;
    x->c = parse_body(P, ends, &which);
    P->loop_depth--;
    if (!x->c) return NULL;
    if (strcmp(which, "else") == 0) {
        if (!end_tag(P) || !(x->d = parse_body(P, endfor, &which))) return NULL;
    }
    return end_tag(P) ? x : NULL;
}

static jnode *parse_filter_seq(parser *P, jnode *base) {
    jnode *f = parse_filter_call(P, base);
    while (f && is_op(P, "|")) {
        adv(P);
        f = parse_filter_call(P, f);
    }
    return f;
}

static jnode *parse_statement(parser *P) {
    const jtoken *t = cur(P);
    int line = t->line;
    if (t->kind != JT_NAME) return fail(P, "expected a tag name, got %s", tok_desc(t));
    if (tok_is(t, JT_NAME, "if")) { adv(P); return parse_if(P, line); }
    if (tok_is(t, JT_NAME, "for")) { adv(P); return parse_for(P, line); }
    if (tok_is(t, JT_NAME, "set")) {
        adv(P);
        jnode *target = parse_target(P, true);
        if (!target) return NULL;
        if (is_op(P, "=")) {
            adv(P);
            jnode *x = nn(P, JN_SET, line);
            if (!x) return NULL;
            x->a = target;
            if (!(x->b = parse_tuple_expr(P)) || !expect_block_end(P)) return NULL;
            return x;
        }
        static const char *const endset[] = {"endset", NULL};
        jnode *x = nn(P, JN_SET_BLOCK, line);
        if (!x) return NULL;
        if (target->kind == JN_TUPLE) return fail(P, "%s", "block set needs a single target");
        x->a = target;
        if (is_op(P, "|")) {
            adv(P);
            jnode *base = nn(P, JN_BLOCK_VALUE, line);
            if (!base || !(x->c = parse_filter_seq(P, base))) return NULL;
        }
        const char *which;
        if (!expect_block_end(P) || !(x->b = parse_body(P, endset, &which)) || !end_tag(P)) return NULL;
        return x;
    }
    if (tok_is(t, JT_NAME, "macro")) {
        static const char *const endmacro[] = {"endmacro", NULL};
        adv(P);
        if (cur(P)->kind != JT_NAME) return fail(P, "expected macro name, got %s", tok_desc(cur(P)));
        jnode *x = nn(P, JN_MACRO, line);
        if (!x) return NULL;
        x->name = name_dup(P, cur(P));
        x->name_len = cur(P)->len;
        adv(P);
        if (!parse_params(P, x) || !expect_block_end(P)) return NULL;
        int saved_loops = P->loop_depth;
        P->loop_depth = 0;
        const char *which;
        x->b = parse_body(P, endmacro, &which);
        P->loop_depth = saved_loops;
        if (!x->b) return NULL;
        if (peek(P, 1)->kind == JT_NAME) adv(P);  /* {% endmacro name %} */
        return end_tag(P) ? x : NULL;
    }
    if (tok_is(t, JT_NAME, "call")) {
        static const char *const endcall[] = {"endcall", NULL};
        adv(P);
        jnode *x = nn(P, JN_CALL_BLOCK, line);
        if (!x) return NULL;
        if (is_op(P, "(") && !parse_params(P, x)) return NULL;
        if (!(x->a = parse_expr(P))) return NULL;
        if (x->a->kind != JN_CALL) return fail(P, "%s", "{% call %} needs a macro call");
        if (!expect_block_end(P)) return NULL;
        /* the body runs as the caller() macro, so an enclosing loop is out of reach */
        int saved_loops = P->loop_depth;
        P->loop_depth = 0;
        const char *which;
        x->b = parse_body(P, endcall, &which);
        P->loop_depth = saved_loops;
        return x->b && end_tag(P) ? x : NULL;
    }
    if (tok_is(t, JT_NAME, "filter")) {
        static const char *const endfilter[] = {"endfilter", NULL};
        adv(P);
        jnode *x = nn(P, JN_FILTER_BLOCK, line), *base = nn(P, JN_BLOCK_VALUE, line);
        if (!x || !base || !(x->a = parse_filter_seq(P, base))) return NULL;
        const char *which;
        if (!expect_block_end(P) || !(x->b = parse_body(P, endfilter, &which)) || !end_tag(P)) return NULL;
        return x;
    }
    if (tok_is(t, JT_NAME, "generation")) {
        /* transformers' assistant-mask extension: renders its body unchanged */
        static const char *const endgen[] = {"endgeneration", NULL};
        adv(P);
        const char *which;
        jnode *body;
        if (!expect_block_end(P) || !(body = parse_body(P, endgen, &which)) || !end_tag(P)) return NULL;
        return body;
    }
    if (tok_is(t, JT_NAME, "break") || tok_is(t, JT_NAME, "continue")) {
        bool brk = tok_is(t, JT_NAME, "break");
        if (P->loop_depth == 0) return fail(P, "'%s' outside of a loop", brk ? "break" : "continue");
        adv(P);
        jnode *x = nn(P, brk ? JN_BREAK : JN_CONTINUE, line);
        return x && expect_block_end(P) ? x : NULL;
    }
    char what[64];
    snprintf(what, sizeof what, "%.*s", (int)(t->len < 40 ? t->len : 40), t->s);
    return fail(P, "unknown tag '%s'", what);
}

static jnode *parse_body(parser *P, const char *const *end_names, const char **which) {
    jnode *body = nn(P, JN_BODY, cur(P)->line);
    kidlist stmts = {0};
    if (!body) return NULL;
    if (++P->depth > MAX_NESTING) return fail(P, "%s", "blocks nested too deeply");
    for (;;) {
        const jtoken *t = cur(P);
        jnode *s = NULL;
        if (t->kind == JT_EOF) {
            if (end_names) {
                char what[64];
                snprintf(what, sizeof what, "'%s'", end_names[0]);
                return fail(P, "unexpected end of template, expected %s", what);
            }
            break;
        }
        if (t->kind == JT_TEXT) {
            s = nn(P, JN_TEXT, t->line);
            if (!s) return NULL;
            s->lit = jv_strn(t->s, t->len);
            adv(P);
        } else if (t->kind == JT_VAR_BEGIN) {
            adv(P);
            s = nn(P, JN_OUTPUT, t->line);
            if (!s || !(s->a = parse_tuple_expr(P))) return NULL;
            if (cur(P)->kind != JT_VAR_END) return fail(P, "expected '}}', got %s", tok_desc(cur(P)));
            adv(P);
        } else if (t->kind == JT_BLOCK_BEGIN) {
            const jtoken *name = peek(P, 1);
            if (end_names && name->kind == JT_NAME) {
                for (const char *const *e = end_names; *e; e++) {
                    if (tok_is(name, JT_NAME, *e)) {
                        adv(P);  /* now at the end keyword */
                        *which = *e;
                        goto done;
                    }
                }
            }
            if (name->kind == JT_NAME) {
                static const char *const stray[] = {"endif", "endfor", "endset", "endmacro", "endcall",
                                                    "endfilter", "endgeneration", "elif", "else", NULL};
                for (const char *const *e = stray; *e; e++)
                    if (tok_is(name, JT_NAME, *e)) { adv(P); return fail(P, "unexpected '%s'", *e); }
            }
            adv(P);
            if (!(s = parse_statement(P))) return NULL;
        } else {
            return fail(P, "unexpected %s", tok_desc(t));
        }
        if (!kid_push(P, &stmts, s, NULL)) return NULL;
    }
done:
    P->depth--;
    set_kids(body, &stmts);
    return body;
}

int jinja_parse_tokens(jarena *a, const jtoken *toks, size_t ntok, jnode **root, char *err) {
    parser P = {.a = a, .t = toks, .n = ntok, .err = err};
    jnode *body = parse_body(&P, NULL, NULL);
    if (!body) {
        if (!P.failed) lm_errf(err, "parse failed");
        return -1;
    }
    *root = body;
    return 0;
}

/* JSON Schema -> grammar text (see json_schema.h for what is supported and why).
 *
 * Each schema node becomes one rule (named r<N>); shared pieces (whitespace, strings,
 * numbers, "any value" at each depth) are emitted once on first use. $refs are resolved
 * by JSON pointer into the document and memoized, so recursive schemas become recursive
 * rules. Objects with optional properties use a chain of rules opt(i, first): "the
 * members from property i on, with (first = 0) or without a leading comma", which keeps
 * the declared order and is linear in the number of properties.
 */
#include "text/json_schema.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64      /* schema nesting followed */
#define MAX_REFS 1024     /* distinct $ref targets */
#define MAX_ENUM 4096     /* values of one enum */
#define MAX_TEXT (2u << 20)

typedef struct {
    const json_t *doc;
    char *ref;
    char name[LM_SCHEMA_NAME];
} ref_memo;

struct lm_schema_gen {
    char *text;
    size_t len, cap;
    unsigned next;
    unsigned have; /* bits: basic rules emitted */
    ref_memo *refs;
    size_t n_refs;
    int depth;
};

enum { HAVE_WS = 1, HAVE_STR = 2, HAVE_NUM = 4, HAVE_INT = 8, HAVE_KEY = 16, HAVE_ANY = 32, HAVE_NULL = 64 };

static int oom(char *err) { return lm_errf(err, "JSON schema: out of memory"); }

int lm_grammar_literal_append(char **body, size_t *len, size_t *cap, const char *s, size_t n) {
    size_t need = *len + 4 * n + 3;
    if (need > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < need) c *= 2;
        char *b = realloc(*body, c);
        if (!b) return -1;
        *body = b;
        *cap = c;
    }
    char *o = *body + *len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += sprintf(o, "\\x%02X", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *o = 0;
    *len = (size_t)(o - *body);
    return 0;
}

static int put(lm_schema_gen *g, char *err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int put(lm_schema_gen *g, char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return oom(err);
    if (g->len + (size_t)n + 1 > MAX_TEXT) return lm_errf(err, "JSON schema: the grammar would be too large");
    if (g->len + (size_t)n + 1 > g->cap) {
        size_t c = g->cap ? g->cap : 1024;
        while (c < g->len + (size_t)n + 1) c *= 2;
        char *t = realloc(g->text, c);
        if (!t) return oom(err);
        g->text = t;
        g->cap = c;
    }
    va_start(ap, fmt);
    vsnprintf(g->text + g->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    g->len += (size_t)n;
    return 0;
}

int lm_schema_gen_new(lm_schema_gen **out, char err[LM_ERR_LEN]) {
    *out = calloc(1, sizeof **out);
    return *out ? 0 : oom(err);
}

void lm_schema_gen_free(lm_schema_gen *g) {
    if (!g) return;
    for (size_t i = 0; i < g->n_refs; i++) free(g->refs[i].ref);
    free(g->refs);
    free(g->text);
    free(g);
}

void lm_schema_gen_name(lm_schema_gen *g, char name[LM_SCHEMA_NAME]) {
    snprintf(name, LM_SCHEMA_NAME, "r%u", g->next++);
}

int lm_schema_gen_rule(lm_schema_gen *g, const char *name, const char *body, char err[LM_ERR_LEN]) {
    return put(g, err, "%s ::= %s\n", name, body);
}

const char *lm_schema_gen_text(const lm_schema_gen *g) { return g->text ? g->text : ""; }

/* ---- shared rules ---------------------------------------------------------------------- */

static int need(lm_schema_gen *g, unsigned what, char *err) {
    if (g->have & what) return 0;
    g->have |= what;
    switch (what) {
    case HAVE_WS: return put(g, err, "ws ::= \" \"?\n");
    case HAVE_STR:
        /* jstr: runs of plain characters between escapes (a repeated class is what
         * the mask walk can skip through); jchar counts one character for lengths */
        return put(g, err, "jchar ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" [\"\\\\/bfnrt]\n"
                           "jrun ::= [^\"\\\\\\x00-\\x1F]{0,%d}\n"
                           "jstr ::= \"\\\"\" jrun (\"\\\\\" [\"\\\\/bfnrt] jrun){0,%d} \"\\\"\"\n",
                   LM_SCHEMA_MAX_STRING, LM_SCHEMA_MAX_ESCAPES);
    case HAVE_KEY: return need(g, HAVE_STR, err) || put(g, err, "jkey ::= \"\\\"\" [^\"\\\\\\x00-\\x1F]{1,64} \"\\\"\"\n");
    case HAVE_INT: return put(g, err, "jint ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15})\n");
    case HAVE_NUM:
        return need(g, HAVE_INT, err) || put(g, err, "jnum ::= jint (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?\n");
    case HAVE_ANY: {
        if (need(g, HAVE_WS, err) || need(g, HAVE_KEY, err) || need(g, HAVE_NUM, err)) return -1;
        if (put(g, err, "any0 ::= jstr | jnum | \"true\" | \"false\" | \"null\"\n")) return -1;
        for (int d = 1; d <= LM_SCHEMA_ANY_DEPTH; d++)
            if (put(g, err,
                    "obj%d ::= \"{\" ws (jkey \":\" ws any%d (\",\" ws jkey \":\" ws any%d){0,%d})? \"}\"\n"
                    "arr%d ::= \"[\" ws (any%d (\",\" ws any%d){0,%d})? \"]\"\n"
                    "any%d ::= obj%d | arr%d | any0\n",
                    d, d - 1, d - 1, LM_SCHEMA_MAX_ITEMS - 1, d, d - 1, d - 1, LM_SCHEMA_MAX_ITEMS - 1, d, d, d))
                return -1;
        return 0;
    }
    }
    return 0;
}

int lm_schema_gen_any_object(lm_schema_gen *g, char name[LM_SCHEMA_NAME], char err[LM_ERR_LEN]) {
    if (need(g, HAVE_ANY, err)) return -1;
    snprintf(name, LM_SCHEMA_NAME, "obj%d", LM_SCHEMA_ANY_DEPTH);
    return 0;
}

/* ---- schema nodes ------------------------------------------------------------------------- */

typedef struct {
    lm_schema_gen *g;
    const json_t *doc;
    char *err;
} ctx;

static int unsupported(ctx *c, const char *path, const char *kw) {
    return lm_errf(c->err, "%s: \"%s\" is not supported by constrained decoding", path, kw);
}

static int bad(ctx *c, const char *path, const char *what) { return lm_errf(c->err, "%s: %s", path, what); }

static int value_rule(ctx *c, const json_t *s, const char *path, char name[LM_SCHEMA_NAME]);

static int append(char **body, size_t *len, size_t *cap, const char *s) {
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        while (c < *len + n + 1) c *= 2;
        char *b = realloc(*body, c);
        if (!b) return -1;
        *body = b;
        *cap = c;
    }
    memcpy(*body + *len, s, n + 1);
    *len += n;
    return 0;
}

/* A literal rule body for one JSON value, as compact JSON. */
static int literal_of(ctx *c, const json_t *v, char **body, size_t *len, size_t *cap) {
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!t) return oom(c->err);
    int rc = lm_grammar_literal_append(body, len, cap, t, strlen(t));
    free(t);
    return rc ? oom(c->err) : 0;
}

static int enum_rule(ctx *c, const json_t *vals, int is_const, const char *path, char name[LM_SCHEMA_NAME]) {
    if (!is_const && (!json_is_array(vals) || !json_array_size(vals)))
        return bad(c, path, "\"enum\" must be a non-empty array");
    if (!is_const && json_array_size(vals) > MAX_ENUM) return bad(c, path, "\"enum\" has too many values");
    char *body = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    if (is_const) {
        rc = literal_of(c, vals, &body, &len, &cap);
    } else {
        for (size_t i = 0; !rc && i < json_array_size(vals); i++) {
            if (i && append(&body, &len, &cap, " | ")) {
                rc = oom(c->err);
                break;
            }
            rc = literal_of(c, json_array_get(vals, i), &body, &len, &cap);
        }
    }
    if (!rc) {
        lm_schema_gen_name(c->g, name);
        rc = lm_schema_gen_rule(c->g, name, body, c->err);
    }
    free(body);
    return rc;
}

/* JSON pointer token unescaping (~1 -> /, ~0 -> ~) and percent-free lookup. */
static const json_t *resolve_pointer(const json_t *doc, const char *ptr) {
    const json_t *v = doc;
    while (*ptr == '/') {
        ptr++;
        char tok[256];
        size_t n = 0;
        while (*ptr && *ptr != '/') {
            char ch = *ptr++;
            if (ch == '~' && (*ptr == '0' || *ptr == '1')) ch = *ptr++ == '0' ? '~' : '/';
            if (n + 1 >= sizeof tok) return NULL;
            tok[n++] = ch;
        }
        tok[n] = 0;
        if (json_is_object(v)) {
            v = json_object_get(v, tok);
        } else if (json_is_array(v)) {
            char *end;
            long i = strtol(tok, &end, 10);
            if (*end || i < 0) return NULL;
            v = json_array_get(v, (size_t)i);
        } else {
            return NULL;
        }
        if (!v) return NULL;
    }
    return *ptr ? NULL : v;
}

static int ref_rule(ctx *c, const char *ref, const char *path, char name[LM_SCHEMA_NAME]) {
    lm_schema_gen *g = c->g;
    for (size_t i = 0; i < g->n_refs; i++)
        if (g->refs[i].doc == c->doc && !strcmp(g->refs[i].ref, ref)) {
            memcpy(name, g->refs[i].name, LM_SCHEMA_NAME);
            return 0;
        }
    if (ref[0] != '#' || (ref[1] && ref[1] != '/'))
        return lm_errf(c->err, "%s: \"$ref\" %.80s is not supported (only local references \"#/...\")", path, ref);
    const json_t *target = resolve_pointer(c->doc, ref + 1);
    if (!target) return lm_errf(c->err, "%s: \"$ref\" %.80s points to nothing", path, ref);
    if (g->n_refs >= MAX_REFS) return bad(c, path, "too many \"$ref\" targets");
    ref_memo *r = realloc(g->refs, (g->n_refs + 1) * sizeof *r);
    if (!r) return oom(c->err);
    g->refs = r;
    ref_memo *m = &g->refs[g->n_refs];
    if (!(m->ref = strdup(ref))) return oom(c->err);
    m->doc = c->doc;
    lm_schema_gen_name(g, m->name);
    memcpy(name, m->name, LM_SCHEMA_NAME);
    g->n_refs++;
    /* the name is known before the body is made, so the target may refer back to it */
    char inner[LM_SCHEMA_NAME], p[512];
    snprintf(p, sizeof p, "%.200s(%.200s)", path, ref);
    if (value_rule(c, target, p, inner)) return -1;
    return put(g, c->err, "%s ::= %s\n", name, inner);
}

static int get_count(ctx *c, const json_t *s, const char *key, const char *path, long long *out) {
    const json_t *v = json_object_get(s, key);
    if (!v) return 0;
    if (!json_is_integer(v) && !(json_is_real(v) && json_real_value(v) == (double)(long long)json_real_value(v)))
        return lm_errf(c->err, "%s: \"%s\" must be a non-negative integer", path, key);
    long long x = json_is_integer(v) ? json_integer_value(v) : (long long)json_real_value(v);
    if (x < 0) return lm_errf(c->err, "%s: \"%s\" must be a non-negative integer", path, key);
    if (x > 100000) return lm_errf(c->err, "%s: \"%s\" = %lld is larger than supported (100000)", path, key, x);
    *out = x;
    return 0;
}

static int string_rule(ctx *c, const json_t *s, const char *path, char name[LM_SCHEMA_NAME]) {
    long long mn = 0, mx = -1;
    if (get_count(c, s, "minLength", path, &mn) || get_count(c, s, "maxLength", path, &mx)) return -1;
    if (need(c->g, HAVE_STR, c->err)) return -1;
    if (mx >= 0 && mx < mn) return bad(c, path, "\"maxLength\" is less than \"minLength\"");
    if (mn == 0 && mx < 0) {
        snprintf(name, LM_SCHEMA_NAME, "jstr");
        return 0;
    }
    if (mx < 0) mx = mn > LM_SCHEMA_MAX_STRING ? mn : LM_SCHEMA_MAX_STRING;
    lm_schema_gen_name(c->g, name);
    return put(c->g, c->err, "%s ::= \"\\\"\" jchar{%lld,%lld} \"\\\"\"\n", name, mn, mx);
}

static int array_rule(ctx *c, const json_t *s, const char *path, char name[LM_SCHEMA_NAME]) {
    long long mn = 0, mx = -1;
    if (get_count(c, s, "minItems", path, &mn) || get_count(c, s, "maxItems", path, &mx)) return -1;
    if (mx >= 0 && mx < mn) return bad(c, path, "\"maxItems\" is less than \"minItems\"");
    if (mx < 0) mx = mn > LM_SCHEMA_MAX_ITEMS ? mn : LM_SCHEMA_MAX_ITEMS;
    const json_t *items = json_object_get(s, "items");
    char item[LM_SCHEMA_NAME], p[512];
    if (json_is_array(items)) return unsupported(c, path, "items (as an array)");
    snprintf(p, sizeof p, "%.400s.items", path);
    if (items) {
        if (value_rule(c, items, p, item)) return -1;
    } else {
        if (need(c->g, HAVE_ANY, c->err)) return -1;
        snprintf(item, sizeof item, "any%d", LM_SCHEMA_ANY_DEPTH - 1);
    }
    if (need(c->g, HAVE_WS, c->err)) return -1;
    lm_schema_gen_name(c->g, name);
    if (mx == 0) return put(c->g, c->err, "%s ::= \"[\" ws \"]\"\n", name);
    /* first item, then mn-1 .. mx-1 more */
    long long rmin = mn > 0 ? mn - 1 : 0, rmax = mx - 1;
    if (mn > 0)
        return put(c->g, c->err, "%s ::= \"[\" ws %s (\",\" ws %s){%lld,%lld} \"]\"\n", name, item, item, rmin, rmax);
    return put(c->g, c->err, "%s ::= \"[\" ws (%s (\",\" ws %s){0,%lld})? \"]\"\n", name, item, item, rmax);
}

typedef struct {
    char kv[LM_SCHEMA_NAME]; /* rule: "key" ":" ws value */
    int required;
} prop;

/* Rules for members i.. of the object; first = no comma before the next member. */
static int members_rule(ctx *c, const prop *ps, size_t n, size_t i, int first, char (*memo)[2][LM_SCHEMA_NAME],
                        char name[LM_SCHEMA_NAME]) {
    if (memo[i][first][0]) {
        memcpy(name, memo[i][first], LM_SCHEMA_NAME);
        return 0;
    }
    lm_schema_gen_name(c->g, name);
    memcpy(memo[i][first], name, LM_SCHEMA_NAME);
    if (i == n) return put(c->g, c->err, "%s ::= \"\"\n", name);
    char rest[LM_SCHEMA_NAME];
    if (members_rule(c, ps, n, i + 1, 0, memo, rest)) return -1;
    const char *sep = first ? "" : "\",\" ws ";
    if (ps[i].required) return put(c->g, c->err, "%s ::= %s%s %s\n", name, sep, ps[i].kv, rest);
    char skip[LM_SCHEMA_NAME];
    if (members_rule(c, ps, n, i + 1, first, memo, skip)) return -1;
    return put(c->g, c->err, "%s ::= %s%s %s | %s\n", name, sep, ps[i].kv, rest, skip);
}

static int object_rule(ctx *c, const json_t *s, const char *path, char name[LM_SCHEMA_NAME]) {
    const json_t *props = json_object_get(s, "properties");
    const json_t *req = json_object_get(s, "required");
    const json_t *addl = json_object_get(s, "additionalProperties");
    char p[512];
    if (props && !json_is_object(props)) return bad(c, path, "\"properties\" must be an object");
    if (req && !json_is_array(req)) return bad(c, path, "\"required\" must be an array of names");
    if (addl && !json_is_boolean(addl) && !json_is_object(addl))
        return bad(c, path, "\"additionalProperties\" must be a boolean or a schema");
    if (need(c->g, HAVE_WS, c->err)) return -1;
    size_t i;
    const json_t *x;
    json_array_foreach(req, i, x) {
        if (!json_is_string(x)) return bad(c, path, "\"required\" must be an array of names");
        if (!json_object_get(props, json_string_value(x)))
            return lm_errf(c->err, "%s: \"required\" names \"%.80s\", which is not in \"properties\" (not supported)",
                           path, json_string_value(x));
    }
    size_t n = props ? json_object_size(props) : 0;
    if (!n) {
        lm_schema_gen_name(c->g, name);
        if (json_is_false(addl)) return put(c->g, c->err, "%s ::= \"{\" ws \"}\"\n", name);
        char val[LM_SCHEMA_NAME];
        if (json_is_object(addl)) {
            snprintf(p, sizeof p, "%.400s.additionalProperties", path);
            if (value_rule(c, addl, p, val)) return -1;
        } else {
            if (need(c->g, HAVE_ANY, c->err)) return -1;
            snprintf(val, sizeof val, "any%d", LM_SCHEMA_ANY_DEPTH - 1);
        }
        if (need(c->g, HAVE_KEY, c->err)) return -1;
        return put(c->g, c->err, "%s ::= \"{\" ws (jkey \":\" ws %s (\",\" ws jkey \":\" ws %s){0,%d})? \"}\"\n", name,
                   val, val, LM_SCHEMA_MAX_ITEMS - 1);
    }
    prop *ps = calloc(n, sizeof *ps);
    char (*memo)[2][LM_SCHEMA_NAME] = calloc(n + 1, sizeof *memo);
    int rc = -1;
    if (!ps || !memo) {
        oom(c->err);
        goto done;
    }
    const char *key;
    const json_t *ps_schema;
    i = 0;
    json_object_foreach((json_t *)props, key, ps_schema) {
        char val[LM_SCHEMA_NAME];
        snprintf(p, sizeof p, "%.300s.properties.%.100s", path, key);
        if (value_rule(c, ps_schema, p, val)) goto done;
        json_t *k = json_string(key);
        char *kj = k ? json_dumps(k, JSON_ENCODE_ANY) : NULL;
        json_decref(k);
        char *lit = NULL;
        size_t len = 0, cap = 0;
        if (!kj || lm_grammar_literal_append(&lit, &len, &cap, kj, strlen(kj))) {
            free(kj);
            free(lit);
            oom(c->err);
            goto done;
        }
        free(kj);
        lm_schema_gen_name(c->g, ps[i].kv);
        int r = put(c->g, c->err, "%s ::= %s \":\" ws %s\n", ps[i].kv, lit, val);
        free(lit);
        if (r) goto done;
        size_t j;
        json_array_foreach(req, j, x) if (!strcmp(json_string_value(x), key)) ps[i].required = 1;
        i++;
    }
    char body[LM_SCHEMA_NAME];
    if (members_rule(c, ps, n, 0, 1, memo, body)) goto done;
    lm_schema_gen_name(c->g, name);
    rc = put(c->g, c->err, "%s ::= \"{\" ws %s \"}\"\n", name, body);
done:
    free(ps);
    free(memo);
    return rc;
}

/* Keywords with assertions this converter does not implement. */
static const char *const UNSUPPORTED[] = {
    "pattern", "patternProperties", "propertyNames", "minProperties", "maxProperties", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "contains", "minContains", "maxContains",
    "prefixItems", "additionalItems", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
    "dependencies", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef",
    "contentSchema",
};

static int type_rule(ctx *c, const json_t *s, const char *t, const char *path, char name[LM_SCHEMA_NAME]) {
    if (!strcmp(t, "string")) return string_rule(c, s, path, name);
    if (!strcmp(t, "integer")) {
        snprintf(name, LM_SCHEMA_NAME, "jint");
        return need(c->g, HAVE_INT, c->err);
    }
    if (!strcmp(t, "number")) {
        snprintf(name, LM_SCHEMA_NAME, "jnum");
        return need(c->g, HAVE_NUM, c->err);
    }
    if (!strcmp(t, "boolean") || !strcmp(t, "null")) {
        lm_schema_gen_name(c->g, name);
        return put(c->g, c->err, !strcmp(t, "null") ? "%s ::= \"null\"\n" : "%s ::= \"true\" | \"false\"\n", name);
    }
    if (!strcmp(t, "object")) return object_rule(c, s, path, name);
    if (!strcmp(t, "array")) return array_rule(c, s, path, name);
    return lm_errf(c->err, "%s: unknown \"type\" \"%.60s\"", path, t);
}

/* "a | b | c" of the named rules. */
static int alt_rule(ctx *c, char (*names)[LM_SCHEMA_NAME], size_t n, char name[LM_SCHEMA_NAME]) {
    lm_schema_gen_name(c->g, name);
    if (put(c->g, c->err, "%s ::= ", name)) return -1;
    for (size_t i = 0; i < n; i++)
        if (put(c->g, c->err, "%s%s", i ? " | " : "", names[i])) return -1;
    return put(c->g, c->err, "\n");
}

static int value_rule_inner(ctx *c, const json_t *s, const char *path, char name[LM_SCHEMA_NAME]) {
    if (json_is_true(s)) {
        snprintf(name, LM_SCHEMA_NAME, "any%d", LM_SCHEMA_ANY_DEPTH);
        return need(c->g, HAVE_ANY, c->err);
    }
    if (json_is_false(s)) return bad(c, path, "the schema false accepts no value");
    if (!json_is_object(s)) return bad(c, path, "a schema must be an object or a boolean");
    for (size_t i = 0; i < sizeof UNSUPPORTED / sizeof *UNSUPPORTED; i++)
        if (json_object_get(s, UNSUPPORTED[i])) return unsupported(c, path, UNSUPPORTED[i]);
    const json_t *v;
    if ((v = json_object_get(s, "$ref"))) {
        if (!json_is_string(v)) return bad(c, path, "\"$ref\" must be a string");
        return ref_rule(c, json_string_value(v), path, name);
    }
    if ((v = json_object_get(s, "const"))) return enum_rule(c, v, 1, path, name);
    if ((v = json_object_get(s, "enum"))) return enum_rule(c, v, 0, path, name);
    const json_t *all = json_object_get(s, "allOf");
    if (all) {
        if (!json_is_array(all) || json_array_size(all) != 1) return unsupported(c, path, "allOf (of several schemas)");
        char p[512];
        snprintf(p, sizeof p, "%.400s.allOf[0]", path);
        return value_rule(c, json_array_get(all, 0), p, name);
    }
    const char *alts_kw = json_object_get(s, "anyOf") ? "anyOf" : json_object_get(s, "oneOf") ? "oneOf" : NULL;
    int nullable = json_is_true(json_object_get(s, "nullable"));
    size_t n = 0;
    char (*names)[LM_SCHEMA_NAME] = NULL;
    int rc = -1;
    if (alts_kw) {
        const json_t *alts = json_object_get(s, alts_kw);
        if (!json_is_array(alts) || !json_array_size(alts) || json_array_size(alts) > MAX_ENUM)
            return lm_errf(c->err, "%s: \"%s\" must be a non-empty array of schemas", path, alts_kw);
        if (!(names = calloc(json_array_size(alts) + 1, sizeof *names))) return oom(c->err);
        for (size_t i = 0; i < json_array_size(alts); i++) {
            char p[512];
            snprintf(p, sizeof p, "%.400s.%s[%zu]", path, alts_kw, i);
            if (value_rule(c, json_array_get(alts, i), p, names[n++])) goto done;
        }
    } else {
        const json_t *t = json_object_get(s, "type");
        if (t && !json_is_string(t) && (!json_is_array(t) || !json_array_size(t) || json_array_size(t) > 8))
            return bad(c, path, "\"type\" must be a type name or a non-empty array of them");
        if (!(names = calloc(9, sizeof *names))) return oom(c->err);
        if (json_is_string(t)) {
            if (type_rule(c, s, json_string_value(t), path, names[n++])) goto done;
        } else if (t) {
            for (size_t i = 0; i < json_array_size(t); i++) {
                const json_t *e = json_array_get(t, i);
                if (!json_is_string(e)) {
                    bad(c, path, "\"type\" must be a type name or an array of them");
                    goto done;
                }
                if (type_rule(c, s, json_string_value(e), path, names[n++])) goto done;
            }
        } else if (json_object_get(s, "properties") || json_object_get(s, "required") ||
                   json_object_get(s, "additionalProperties")) {
            if (object_rule(c, s, path, names[n++])) goto done;
        } else if (json_object_get(s, "items") || json_object_get(s, "minItems") || json_object_get(s, "maxItems")) {
            if (array_rule(c, s, path, names[n++])) goto done;
        } else if (json_object_get(s, "minLength") || json_object_get(s, "maxLength")) {
            if (string_rule(c, s, path, names[n++])) goto done;
        } else {
            snprintf(names[n++], LM_SCHEMA_NAME, "any%d", LM_SCHEMA_ANY_DEPTH);
            if (need(c->g, HAVE_ANY, c->err)) goto done;
        }
    }
    if (nullable) {
        snprintf(names[n], LM_SCHEMA_NAME, "jnull");
        if (!(c->g->have & HAVE_NULL)) {
            c->g->have |= HAVE_NULL;
            if (put(c->g, c->err, "jnull ::= \"null\"\n")) goto done;
        }
        n++;
    }
    if (n == 1) {
        memcpy(name, names[0], LM_SCHEMA_NAME);
        rc = 0;
    } else {
        rc = alt_rule(c, names, n, name);
    }
done:
    free(names);
    return rc;
}

static int value_rule(ctx *c, const json_t *s, const char *path, char name[LM_SCHEMA_NAME]) {
    if (++c->g->depth > MAX_DEPTH) {
        c->g->depth--;
        return bad(c, path, "schema nested too deeply");
    }
    int rc = value_rule_inner(c, s, path, name);
    c->g->depth--;
    return rc;
}

int lm_schema_gen_value(lm_schema_gen *g, const json_t *schema, const json_t *doc, const char *path,
                        char name[LM_SCHEMA_NAME], char err[LM_ERR_LEN]) {
    ctx c = {g, doc ? doc : schema, err};
    return value_rule(&c, schema, path, name);
}

int lm_schema_gen_grammar(lm_schema_gen *g, const char *root_rule, lm_grammar **out, char err[LM_ERR_LEN]) {
    if (put(g, err, "root ::= %s\n", root_rule)) return -1;
    return lm_grammar_parse(g->text, g->len, out, err);
}

int lm_json_schema_grammar(const json_t *schema, const char *path, lm_grammar **out, char err[LM_ERR_LEN]) {
    lm_schema_gen *g;
    char name[LM_SCHEMA_NAME];
    *out = NULL;
    if (lm_schema_gen_new(&g, err)) return -1;
    int rc = lm_schema_gen_value(g, schema, NULL, path, name, err);
    if (!rc) rc = lm_schema_gen_grammar(g, name, out, err);
    lm_schema_gen_free(g);
    return rc;
}

int lm_json_object_grammar(lm_grammar **out, char err[LM_ERR_LEN]) {
    lm_schema_gen *g;
    char name[LM_SCHEMA_NAME];
    *out = NULL;
    if (lm_schema_gen_new(&g, err)) return -1;
    int rc = lm_schema_gen_any_object(g, name, err);
    if (!rc) rc = lm_schema_gen_grammar(g, name, out, err);
    lm_schema_gen_free(g);
    return rc;
}

/* Grammar parsing, matching and token masks (see grammar.h).
 *
 * DESIGN
 * A grammar is flat arrays: rules -> alternatives -> elements. An element is a
 * character class (sorted, merged code point ranges) or a rule reference, each with a
 * repetition count {min, max}; literals are runs of one-code-point classes, groups are
 * anonymous rules. Repetition is a counter in the parse frame, not an expansion, so
 * "x{0,500}" costs one element.
 *
 * A parse frame (alt, elem, count, parent) says "in this alternative, at this element,
 * count instances of it done; when the alternative ends, return to parent". Frames live
 * in one array and never change once made, so stacks share their tails. The matcher
 * state is a list of stack tops whose element is a character class (-1: empty stack,
 * the sentence may end). Feeding a code point advances every top that accepts it and
 * takes the closure (skip elements whose minimum is met, enter referenced rules, return
 * from finished alternatives) until each new stack again waits on a class. Identical
 * stacks are merged, so ambiguity costs at most the number of distinct stacks (capped).
 * Left recursion and repeated nullable elements are refused at parse time: they are the
 * only ways the closure could loop without consuming input.
 *
 * After each accepted token the live frames are copied to a fresh array (the walk of a
 * mask allocates frames for every trie prefix it tries; they are dropped in LIFO order).
 */
#include "text/grammar.h"

#include "common/str.h"
#include "common/utf8.h"

#include "text/unicode.h"

#include <stdlib.h>
#include <string.h>

#define MAX_CP 0x10FFFFu
#define UNBOUNDED UINT32_MAX
#define MAX_ELEMS (1u << 22)
#define MAX_REPEAT 100000u   /* largest m or n in {m,n} */
#define MAX_STACKS 512u      /* distinct parse stacks in one state */
#define MAX_WORK 4000000u    /* frames compared for one accept or mask (~20 ms) */
#define MAX_DEPTH 4000       /* closure recursion */
#define MAX_NEST 256         /* nested groups in grammar text */

typedef struct {
    uint32_t lo, hi;
} gr_range;

enum { GE_CHARS = 0, GE_REF = 1 };

typedef struct {
    uint8_t kind;
    uint32_t min, max;
    uint32_t arg; /* CHARS: first range; REF: rule */
    uint32_t n;   /* CHARS: number of ranges */
} gr_elem;

typedef struct {
    uint32_t first, n; /* elements */
} gr_alt;

typedef struct {
    char *name; /* NULL for groups */
    uint32_t first_alt, n_alts;
    uint8_t defined, nullable, mark;
} gr_rule;

struct lazymoe_grammar {
    gr_range *ranges;
    uint32_t n_ranges, cap_ranges;
    gr_elem *elems;
    uint32_t n_elems, cap_elems;
    gr_alt *alts;
    uint32_t n_alts, cap_alts;
    gr_rule *rules;
    uint32_t n_rules, cap_rules;
    uint32_t root;
    uint32_t *rule_min;   /* [n_rules] fewest bytes a rule can match */
    uint32_t *elem_min;   /* [n_elems] fewest bytes of one instance of the element */
    uint32_t *suffix_min; /* [n_elems] fewest bytes from the element (its min instances) to its alternative's end */
};

static int grow(void **p, uint32_t *cap, uint32_t need, size_t size) {
    if (need <= *cap) return 0;
    uint32_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > UINT32_MAX / 2) return -1;
        c *= 2;
    }
    void *q = realloc(*p, (size_t)c * size);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

void lm_grammar_free(lm_grammar *g) {
    if (!g) return;
    for (uint32_t i = 0; i < g->n_rules; i++) free(g->rules[i].name);
    free(g->rules);
    free(g->rule_min);
    free(g->elem_min);
    free(g->suffix_min);
    free(g->alts);
    free(g->elems);
    free(g->ranges);
    free(g);
}

/* ---- parsing ------------------------------------------------------------------------ */

typedef struct {
    gr_elem *v;
    uint32_t n, cap;
} evec;

typedef struct {
    evec *v;
    uint32_t n, cap;
} avec;

typedef struct {
    const char *s, *end, *start;
    lm_grammar *g;
    char *err;
    int nest;
} parser;

static int perr(parser *p, const char *what) {
    return lm_errf(p->err, "grammar: %s at offset %ld", what, (long)(p->s - p->start));
}

static int oom(char *err) { return lm_errf(err, "grammar: out of memory"); }

static void skip_space(parser *p) {
    while (p->s < p->end) {
        char c = *p->s;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            p->s++;
        } else if (c == '#') {
            while (p->s < p->end && *p->s != '\n') p->s++;
        } else {
            break;
        }
    }
}

static int is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static size_t name_len(const parser *p, const char *s) {
    size_t n = 0;
    while (s + n < p->end && is_name_char(s[n])) n++;
    return n;
}

/* "name ::=" starts here (after whitespace). */
static int at_rule_start(const parser *p) {
    size_t n = name_len(p, p->s);
    if (!n) return 0;
    const char *s = p->s + n;
    while (s < p->end && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) s++;
    return p->end - s >= 3 && !memcmp(s, "::=", 3);
}

static int find_rule(parser *p, const char *name, size_t n, uint32_t *out) {
    lm_grammar *g = p->g;
    for (uint32_t i = 0; i < g->n_rules; i++)
        if (g->rules[i].name && strlen(g->rules[i].name) == n && !memcmp(g->rules[i].name, name, n)) {
            *out = i;
            return 0;
        }
    if (g->n_rules >= LM_GRAMMAR_MAX_RULES) return perr(p, "too many rules");
    if (grow((void **)&g->rules, &g->cap_rules, g->n_rules + 1, sizeof *g->rules)) return oom(p->err);
    gr_rule *r = &g->rules[g->n_rules];
    memset(r, 0, sizeof *r);
    if (name && !(r->name = strndup(name, n))) return oom(p->err);
    *out = g->n_rules++;
    return 0;
}

static int new_anon_rule(parser *p, uint32_t *out) {
    lm_grammar *g = p->g;
    if (g->n_rules >= LM_GRAMMAR_MAX_RULES) return perr(p, "too many rules");
    if (grow((void **)&g->rules, &g->cap_rules, g->n_rules + 1, sizeof *g->rules)) return oom(p->err);
    memset(&g->rules[g->n_rules], 0, sizeof *g->rules);
    *out = g->n_rules++;
    return 0;
}

static void avec_free(avec *a) {
    for (uint32_t i = 0; i < a->n; i++) free(a->v[i].v);
    free(a->v);
}

/* Moves the collected alternatives into the grammar as rule r's. */
static int commit_rule(parser *p, uint32_t r, avec *a) {
    lm_grammar *g = p->g;
    uint32_t ne = 0;
    for (uint32_t i = 0; i < a->n; i++) ne += a->v[i].n;
    if (g->n_elems + ne > MAX_ELEMS) return perr(p, "grammar too large");
    if (grow((void **)&g->alts, &g->cap_alts, g->n_alts + a->n, sizeof *g->alts) ||
        grow((void **)&g->elems, &g->cap_elems, g->n_elems + ne, sizeof *g->elems))
        return oom(p->err);
    g->rules[r].first_alt = g->n_alts;
    g->rules[r].n_alts = a->n;
    g->rules[r].defined = 1;
    for (uint32_t i = 0; i < a->n; i++) {
        g->alts[g->n_alts].first = g->n_elems;
        g->alts[g->n_alts].n = a->v[i].n;
        g->n_alts++;
        if (a->v[i].n) memcpy(g->elems + g->n_elems, a->v[i].v, a->v[i].n * sizeof(gr_elem));
        g->n_elems += a->v[i].n;
    }
    return 0;
}

/* One character of a literal or class: an escape or a UTF-8 sequence. */
static int parse_char(parser *p, uint32_t *cp) {
    if (p->s >= p->end) return perr(p, "unexpected end of grammar");
    if (*p->s == '\\') {
        p->s++;
        if (p->s >= p->end) return perr(p, "unexpected end after \\");
        char c = *p->s++;
        int digits = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
        if (digits) {
            uint32_t v = 0;
            for (int i = 0; i < digits; i++) {
                int h = p->s < p->end ? lm_hex_digit(*p->s) : -1;
                if (h < 0) return perr(p, "bad hex escape");
                v = v * 16 + (uint32_t)h;
                p->s++;
            }
            if (v > MAX_CP || (v >= 0xD800 && v <= 0xDFFF)) return perr(p, "escape is not a Unicode scalar value");
            *cp = v;
            return 0;
        }
        *cp = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : (uint32_t)(unsigned char)c;
        if (*cp >= 0x80) return perr(p, "escape of a non-ASCII byte");
        return 0;
    }
    size_t n = lm_utf8_next((const unsigned char *)p->s, (size_t)(p->end - p->s), cp);
    if (!n) return perr(p, "invalid UTF-8");
    p->s += n;
    return 0;
}

static int cmp_range(const void *a, const void *b) {
    const gr_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Appends ranges (sorted and merged, complemented when negate) to the grammar. */
static int add_ranges(parser *p, gr_range *r, uint32_t n, int negate, gr_elem *e) {
    lm_grammar *g = p->g;
    if (n) qsort(r, n, sizeof *r, cmp_range);
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (m && r[i].lo <= r[m - 1].hi + 1) {
            if (r[i].hi > r[m - 1].hi) r[m - 1].hi = r[i].hi;
        } else {
            r[m++] = r[i];
        }
    }
    if (grow((void **)&g->ranges, &g->cap_ranges, g->n_ranges + m + 1, sizeof *g->ranges)) return oom(p->err);
    uint32_t first = g->n_ranges;
    if (negate) {
        uint32_t next = 0;
        for (uint32_t i = 0; i < m; i++) {
            if (r[i].lo > next) g->ranges[g->n_ranges++] = (gr_range){next, r[i].lo - 1};
            next = r[i].hi + 1;
        }
        if (next <= MAX_CP) g->ranges[g->n_ranges++] = (gr_range){next, MAX_CP};
    } else {
        memcpy(g->ranges + g->n_ranges, r, m * sizeof *r);
        g->n_ranges += m;
    }
    if (g->n_ranges == first) return perr(p, "character class that matches nothing");
    *e = (gr_elem){.kind = GE_CHARS, .min = 1, .max = 1, .arg = first, .n = g->n_ranges - first};
    return 0;
}

static int parse_class(parser *p, gr_elem *e) {
    p->s++; /* [ */
    int negate = 0;
    if (p->s < p->end && *p->s == '^') {
        negate = 1;
        p->s++;
    }
    gr_range *r = NULL;
    uint32_t n = 0, cap = 0;
    int rc = -1;
    while (1) {
        if (p->s >= p->end) {
            perr(p, "unterminated character class");
            goto done;
        }
        if (*p->s == ']') {
            p->s++;
            break;
        }
        uint32_t lo, hi;
        if (parse_char(p, &lo)) goto done;
        hi = lo;
        if (p->end - p->s >= 2 && *p->s == '-' && p->s[1] != ']') {
            p->s++;
            if (parse_char(p, &hi)) goto done;
            if (hi < lo) {
                perr(p, "character range out of order");
                goto done;
            }
        }
        if (n >= 65536) {
            perr(p, "character class too long");
            goto done;
        }
        if (grow((void **)&r, &cap, n + 1, sizeof *r)) {
            oom(p->err);
            goto done;
        }
        r[n++] = (gr_range){lo, hi};
    }
    if (!n && !negate) {
        perr(p, "empty character class");
        goto done;
    }
    rc = add_ranges(p, r, n, negate, e);
done:
    free(r);
    return rc;
}

static int evec_push(parser *p, evec *v, gr_elem e) {
    if (v->n >= MAX_ELEMS) return perr(p, "grammar too large");
    if (grow((void **)&v->v, &v->cap, v->n + 1, sizeof *v->v)) return oom(p->err);
    v->v[v->n++] = e;
    return 0;
}

static int parse_alts(parser *p, uint32_t rule, int in_group);

/* {m}, {m,}, {m,n} after the '{'. */
static int parse_count(parser *p, uint32_t *mn, uint32_t *mx) {
    uint32_t v[2] = {0, 0};
    int have[2] = {0, 0}, k = 0;
    while (1) {
        if (p->s >= p->end) return perr(p, "unterminated {m,n}");
        char c = *p->s;
        if (c >= '0' && c <= '9') {
            if (v[k] > MAX_REPEAT) return perr(p, "repetition count too large");
            v[k] = v[k] * 10 + (uint32_t)(c - '0');
            have[k] = 1;
        } else if (c == ',' && k == 0) {
            k = 1;
        } else if (c == '}') {
            p->s++;
            break;
        } else if (c != ' ') {
            return perr(p, "bad {m,n}");
        }
        p->s++;
    }
    if (!have[0] || v[0] > MAX_REPEAT || v[1] > MAX_REPEAT) return perr(p, "bad or too large repetition count");
    *mn = v[0];
    *mx = k == 0 ? v[0] : have[1] ? v[1] : UNBOUNDED;
    if (*mx < *mn) return perr(p, "repetition {m,n} with n < m");
    return 0;
}

/* One element with its repetition, appended to seq. */
static int parse_atom(parser *p, evec *seq) {
    evec lit = {0};
    gr_elem e;
    int is_lit = 0, rc = -1;
    char c = *p->s;
    if (c == '"') {
        p->s++;
        is_lit = 1;
        while (1) {
            if (p->s >= p->end) {
                perr(p, "unterminated literal");
                goto done;
            }
            if (*p->s == '"') {
                p->s++;
                break;
            }
            uint32_t cp;
            if (parse_char(p, &cp)) goto done;
            gr_range r = {cp, cp};
            gr_elem x;
            if (add_ranges(p, &r, 1, 0, &x) || evec_push(p, &lit, x)) goto done;
        }
    } else if (c == '[') {
        if (parse_class(p, &e)) goto done;
    } else if (c == '.') {
        p->s++;
        gr_range r = {0, MAX_CP};
        if (add_ranges(p, &r, 1, 0, &e)) goto done;
    } else if (c == '(') {
        p->s++;
        uint32_t r;
        if (++p->nest > MAX_NEST) {
            perr(p, "groups nested too deeply");
            goto done;
        }
        if (new_anon_rule(p, &r) || parse_alts(p, r, 1)) goto done;
        p->nest--;
        if (p->s >= p->end || *p->s != ')') {
            perr(p, "missing )");
            goto done;
        }
        p->s++;
        e = (gr_elem){.kind = GE_REF, .min = 1, .max = 1, .arg = r};
    } else if (is_name_char(c)) {
        size_t n = name_len(p, p->s);
        uint32_t r;
        if (find_rule(p, p->s, n, &r)) goto done;
        p->s += n;
        e = (gr_elem){.kind = GE_REF, .min = 1, .max = 1, .arg = r};
    } else {
        perr(p, "unexpected character");
        goto done;
    }
    uint32_t mn = 1, mx = 1;
    int rep = 0;
    if (p->s < p->end) {
        char q = *p->s;
        if (q == '*' || q == '+' || q == '?') {
            p->s++;
            mn = q == '+' ? 1 : 0;
            mx = q == '?' ? 1 : UNBOUNDED;
            rep = 1;
        } else if (q == '{') {
            p->s++;
            if (parse_count(p, &mn, &mx)) goto done;
            rep = 1;
        }
    }
    if (rep && p->s < p->end && (*p->s == '*' || *p->s == '+' || *p->s == '?' || *p->s == '{')) {
        perr(p, "two repetitions in a row (use a group)");
        goto done;
    }
    if (is_lit && (!rep || lit.n == 1)) {
        if (lit.n == 0 && rep) {
            perr(p, "repetition of an empty literal");
            goto done;
        }
        for (uint32_t i = 0; i < lit.n; i++) {
            if (rep) lit.v[i].min = mn, lit.v[i].max = mx;
            if (evec_push(p, seq, lit.v[i])) goto done;
        }
        rc = 0;
        goto done;
    }
    if (is_lit) { /* a repeated multi-character literal becomes a group */
        uint32_t r;
        avec a = {.v = &lit, .n = 1, .cap = 1};
        if (new_anon_rule(p, &r) || commit_rule(p, r, &a)) goto done;
        e = (gr_elem){.kind = GE_REF, .arg = r};
    }
    e.min = mn;
    e.max = mx;
    rc = evec_push(p, seq, e);
done:
    free(lit.v);
    return rc;
}

/* Alternatives of a rule body up to ')' (in a group) or the next rule / the end. */
static int parse_alts(parser *p, uint32_t rule, int in_group) {
    avec a = {0};
    int rc = -1;
    if (grow((void **)&a.v, &a.cap, 1, sizeof *a.v)) return oom(p->err);
    memset(&a.v[0], 0, sizeof a.v[0]);
    a.n = 1;
    while (1) {
        skip_space(p);
        if (p->s >= p->end || (in_group && *p->s == ')') || (!in_group && at_rule_start(p))) break;
        if (*p->s == ')') {
            perr(p, "unbalanced )");
            goto done;
        }
        if (*p->s == '|') {
            p->s++;
            if (grow((void **)&a.v, &a.cap, a.n + 1, sizeof *a.v)) {
                oom(p->err);
                goto done;
            }
            memset(&a.v[a.n], 0, sizeof a.v[0]);
            a.n++;
            continue;
        }
        if (parse_atom(p, &a.v[a.n - 1])) goto done;
    }
    if (in_group && (p->s >= p->end || *p->s != ')')) {
        perr(p, "missing )");
        goto done;
    }
    rc = commit_rule(p, rule, &a);
done:
    avec_free(&a);
    return rc;
}

/* ---- checks ---------------------------------------------------------------------------- */

static int elem_nullable(const lm_grammar *g, const gr_elem *e) {
    return e->min == 0 || (e->kind == GE_REF && g->rules[e->arg].nullable);
}

static void compute_nullable(lm_grammar *g) {
    for (int changed = 1; changed;) {
        changed = 0;
        for (uint32_t r = 0; r < g->n_rules; r++) {
            gr_rule *R = &g->rules[r];
            if (R->nullable) continue;
            for (uint32_t a = 0; a < R->n_alts && !R->nullable; a++) {
                const gr_alt *A = &g->alts[R->first_alt + a];
                uint32_t k = 0;
                while (k < A->n && elem_nullable(g, &g->elems[A->first + k])) k++;
                if (k == A->n) R->nullable = changed = 1;
            }
        }
    }
}

static const char *rule_label(const lm_grammar *g, uint32_t r) {
    return g->rules[r].name ? g->rules[r].name : "(group)";
}

/* Depth-first over "can start with" edges; mark 1 = on the path, 2 = done. */
static int left_rec(const lm_grammar *g, uint32_t r, char *err, int depth) {
    gr_rule *R = &g->rules[r];
    if (R->mark == 2) return 0;
    if (R->mark == 1) return lm_errf(err, "grammar: rule %s is left-recursive", rule_label(g, r));
    if (depth > MAX_DEPTH) return lm_errf(err, "grammar: rules nested too deeply");
    R->mark = 1;
    for (uint32_t a = 0; a < R->n_alts; a++) {
        const gr_alt *A = &g->alts[R->first_alt + a];
        for (uint32_t k = 0; k < A->n; k++) {
            const gr_elem *e = &g->elems[A->first + k];
            if (e->kind == GE_REF && left_rec(g, e->arg, err, depth + 1)) return -1;
            if (!elem_nullable(g, e)) break;
        }
    }
    R->mark = 2;
    return 0;
}

#define LEN_INF (1u << 30)

static uint32_t sat_add(uint32_t a, uint32_t b) { return a + b >= LEN_INF ? LEN_INF : a + b; }
static uint32_t sat_mul(uint32_t a, uint32_t n) { return n && a >= LEN_INF / n ? LEN_INF : a * n; }

static uint32_t utf8_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

/* Shortest completions, for the length budget of masks: fixpoint over the rules. */
static int compute_min_lengths(lm_grammar *g, char *err) {
    g->rule_min = malloc(((size_t)g->n_rules + 1) * sizeof *g->rule_min);
    g->elem_min = malloc(((size_t)g->n_elems + 1) * sizeof *g->elem_min);
    g->suffix_min = malloc(((size_t)g->n_elems + 1) * sizeof *g->suffix_min);
    if (!g->rule_min || !g->elem_min || !g->suffix_min) return oom(err);
    for (uint32_t r = 0; r < g->n_rules; r++) g->rule_min[r] = LEN_INF;
    for (uint32_t i = 0; i < g->n_elems; i++) {
        const gr_elem *e = &g->elems[i];
        g->elem_min[i] = e->kind == GE_CHARS ? utf8_len(g->ranges[e->arg].lo) : LEN_INF;
    }
    for (int changed = 1; changed;) {
        changed = 0;
        for (uint32_t r = 0; r < g->n_rules; r++) {
            const gr_rule *R = &g->rules[r];
            for (uint32_t a = 0; a < R->n_alts; a++) {
                const gr_alt *A = &g->alts[R->first_alt + a];
                uint32_t sum = 0;
                for (uint32_t k = 0; k < A->n; k++) {
                    uint32_t i = A->first + k;
                    const gr_elem *e = &g->elems[i];
                    if (e->kind == GE_REF) g->elem_min[i] = g->rule_min[e->arg];
                    sum = sat_add(sum, sat_mul(g->elem_min[i], e->min));
                }
                if (sum < g->rule_min[r]) {
                    g->rule_min[r] = sum;
                    changed = 1;
                }
            }
        }
    }
    for (uint32_t a = 0; a < g->n_alts; a++) {
        const gr_alt *A = &g->alts[a];
        uint32_t sum = 0;
        for (uint32_t k = A->n; k-- > 0;) {
            uint32_t i = A->first + k;
            if (g->elems[i].kind == GE_REF) g->elem_min[i] = g->rule_min[g->elems[i].arg];
            sum = sat_add(sum, sat_mul(g->elem_min[i], g->elems[i].min));
            g->suffix_min[i] = sum;
        }
    }
    return 0;
}

static int check(lm_grammar *g, char *err) {
    for (uint32_t r = 0; r < g->n_rules; r++)
        if (!g->rules[r].defined) return lm_errf(err, "grammar: rule %s is used but not defined", g->rules[r].name);
    compute_nullable(g);
    for (uint32_t i = 0; i < g->n_elems; i++) {
        const gr_elem *e = &g->elems[i];
        if (e->kind == GE_REF && e->max > 1 && g->rules[e->arg].nullable)
            return lm_errf(err, "grammar: rule %s can match the empty string and is repeated", rule_label(g, e->arg));
    }
    for (uint32_t r = 0; r < g->n_rules; r++)
        if (left_rec(g, r, err, 0)) return -1;
    return compute_min_lengths(g, err);
}

int lm_grammar_parse(const char *text, size_t len, lm_grammar **out, char err[LM_ERR_LEN]) {
    *out = NULL;
    if (len > LM_GRAMMAR_MAX_TEXT) return lm_errf(err, "grammar: text of %zu bytes is too long", len);
    lm_grammar *g = calloc(1, sizeof *g);
    if (!g) return oom(err);
    parser p = {.s = text, .end = text + len, .start = text, .g = g, .err = err};
    while (1) {
        skip_space(&p);
        if (p.s >= p.end) break;
        size_t n = name_len(&p, p.s);
        if (!n || !at_rule_start(&p)) {
            perr(&p, "expected \"name ::=\"");
            goto fail;
        }
        uint32_t r;
        if (find_rule(&p, p.s, n, &r)) goto fail;
        if (g->rules[r].defined) {
            lm_errf(err, "grammar: rule %s is defined twice", g->rules[r].name);
            goto fail;
        }
        p.s += n;
        skip_space(&p);
        p.s += 3; /* ::= */
        if (parse_alts(&p, r, 0)) goto fail;
    }
    uint32_t root = 0;
    int found = 0;
    for (uint32_t i = 0; i < g->n_rules; i++)
        if (g->rules[i].name && !strcmp(g->rules[i].name, "root")) {
            root = i;
            found = 1;
        }
    if (!found) {
        lm_errf(err, "grammar: no rule named root");
        goto fail;
    }
    g->root = root;
    if (check(g, err)) goto fail;
    *out = g;
    return 0;
fail:
    lm_grammar_free(g);
    return -1;
}

/* ---- matching ------------------------------------------------------------------------- */

typedef struct {
    uint32_t alt, elem, count;
    int32_t parent;
} gframe;

/* A UTF-8 sequence in progress: cp so far, bytes still needed, and the range the next
 * byte must fall in (narrower than 80..BF after E0, ED, F0, F4). */
typedef struct {
    uint32_t cp;
    uint8_t need, lo, hi;
} u8state;

struct lm_gmatch {
    const lm_grammar *g;
    gframe *fr;
    uint32_t n_fr, cap_fr;
    int32_t *st; /* st[0..cur): the state's stack tops; scratch above */
    uint32_t n_st, cap_st, cur;
    u8state u8;
    int32_t *remap; /* compaction: old frame -> new */
    uint32_t cap_remap;
    gframe *fr2;
    uint32_t cap_fr2;
    char *err;
    int depth;
    uint32_t work;       /* spent in this accept / mask */
    uint32_t work_limit; /* MAX_WORK unless lm_gmatch_set_work_limit */
    struct pure_cache {
        const lm_token_trie *t;
        uint32_t ranges;  /* the class (its first range in the grammar) */
        uint8_t *pure;    /* per trie node: 0 unknown, 1 every token below is in the class, 2 not */
    } pure[4];
};

/* 1 complete (*cp set), 0 more bytes needed, -1 not UTF-8. */
static int u8_step(u8state *s, uint8_t b, uint32_t *cp) {
    if (!s->need) {
        if (b < 0x80) {
            *cp = b;
            return 1;
        }
        size_t len = lm_utf8_lead(b, 0, &s->lo, &s->hi, &s->cp);
        if (!len) return -1;
        s->need = (uint8_t)(len - 1);
        return 0;
    }
    if (b < s->lo || b > s->hi) return -1;
    s->cp = (s->cp << 6) | (b & 0x3Fu);
    s->need--;
    s->lo = 0x80;
    s->hi = 0xBF;
    if (s->need) return 0;
    *cp = s->cp;
    return 1;
}

/* The code points a sequence in progress can still become. */
static void u8_span(const u8state *s, uint32_t *lo, uint32_t *hi) {
    unsigned rest = 6u * (s->need - 1u);
    uint32_t base = s->cp << (6u * s->need);
    *lo = base | ((uint32_t)(s->lo & 0x3F) << rest);
    *hi = base | ((uint32_t)(s->hi & 0x3F) << rest) | ((1u << rest) - 1u);
}

static const gr_elem *frame_elem(const lm_grammar *g, const gframe *f) {
    return &g->elems[g->alts[f->alt].first + f->elem];
}

static int new_frame(lm_gmatch *m, gframe f, int32_t *idx) {
    if (m->n_fr >= INT32_MAX - 1) return lm_errf(m->err, "grammar: parse state too large");
    if (grow((void **)&m->fr, &m->cap_fr, m->n_fr + 1, sizeof *m->fr)) return oom(m->err);
    m->fr[m->n_fr] = f;
    *idx = (int32_t)m->n_fr++;
    return 0;
}

static int same_stack(const lm_gmatch *m, int32_t a, int32_t b, uint32_t *work) {
    while (a >= 0 && b >= 0) {
        (*work)++;
        if (a == b) return 1;
        const gframe *x = &m->fr[a], *y = &m->fr[b];
        if (x->alt != y->alt || x->elem != y->elem || x->count != y->count) return 0;
        a = x->parent;
        b = y->parent;
    }
    return a == b;
}

/* Adds a stack top to the list that starts at st[lo], unless an equal stack is there. */
static int push_top(lm_gmatch *m, uint32_t lo, int32_t top) {
    m->work += m->n_st - lo + 1;
    if (m->work > m->work_limit)
        return lm_errf(m->err, "grammar: too ambiguous to follow (more than %u steps of work for one token)", m->work_limit);
    for (uint32_t i = lo; i < m->n_st; i++)
        if (same_stack(m, m->st[i], top, &m->work)) return 0;
    if (m->n_st - lo >= MAX_STACKS) return lm_errf(m->err, "grammar: too ambiguous (more than %u parse stacks)", MAX_STACKS);
    if (grow((void **)&m->st, &m->cap_st, m->n_st + 1, sizeof *m->st)) return oom(m->err);
    m->st[m->n_st++] = top;
    return 0;
}

/* Every stack reachable from "at (alt, elem) with count instances done, then parent"
 * without consuming input, whose top waits on a character class, appended at st[lo..). */
static int closure(lm_gmatch *m, uint32_t lo, uint32_t alt, uint32_t elem, uint32_t count, int32_t parent) {
    const lm_grammar *g = m->g;
    if (++m->depth > MAX_DEPTH) {
        m->depth--;
        return lm_errf(m->err, "grammar: nesting too deep");
    }
    int rc = 0;
    const gr_alt *A = &g->alts[alt];
    if (elem == A->n) { /* the alternative is done: one more instance of the parent's element */
        if (parent < 0) {
            rc = push_top(m, lo, -1);
        } else {
            gframe P = m->fr[parent];
            rc = closure(m, lo, P.alt, P.elem, P.count + 1, P.parent);
        }
        m->depth--;
        return rc;
    }
    const gr_elem *e = &g->elems[A->first + elem];
    if (e->max == UNBOUNDED && count > e->min) count = e->min; /* only "min reached" matters */
    if (count >= e->min) rc = closure(m, lo, alt, elem + 1, 0, parent);
    if (!rc && count < e->max) {
        int32_t f;
        if (e->kind == GE_CHARS) {
            rc = new_frame(m, (gframe){alt, elem, count, parent}, &f);
            if (!rc) rc = push_top(m, lo, f);
        } else {
            /* a last element done at most once needs no frame: finishing the rule
             * finishes this alternative (stacks stay flat for right recursion) */
            if (e->max == 1 && elem + 1 == A->n) f = parent;
            else rc = new_frame(m, (gframe){alt, elem, count, parent}, &f);
            const gr_rule *R = &g->rules[e->arg];
            for (uint32_t a = 0; !rc && a < R->n_alts; a++) rc = closure(m, lo, R->first_alt + a, 0, 0, f);
        }
    }
    m->depth--;
    return rc;
}

static int class_has(const lm_grammar *g, const gr_elem *e, uint32_t cp) {
    const gr_range *r = g->ranges + e->arg;
    for (uint32_t i = 0; i < e->n; i++) {
        if (cp < r[i].lo) return 0;
        if (cp <= r[i].hi) return 1;
    }
    return 0;
}

static int class_meets(const lm_grammar *g, const gr_elem *e, uint32_t lo, uint32_t hi) {
    const gr_range *r = g->ranges + e->arg;
    for (uint32_t i = 0; i < e->n; i++)
        if (r[i].lo <= hi && lo <= r[i].hi) return 1;
    return 0;
}

/* The stacks of st[lo..hi) that accept cp, advanced, appended at the end of st. */
static int advance(lm_gmatch *m, uint32_t lo, uint32_t hi, uint32_t cp) {
    uint32_t out = m->n_st;
    for (uint32_t i = lo; i < hi; i++) {
        int32_t t = m->st[i];
        if (t < 0) continue;
        gframe F = m->fr[t];
        if (!class_has(m->g, frame_elem(m->g, &F), cp)) continue;
        if (closure(m, out, F.alt, F.elem, F.count + 1, F.parent)) return -1;
    }
    return 0;
}

/* Fewest bytes that complete a stack: what its top alternative still needs, then each
 * parent's alternative after the element being matched. */
static uint32_t stack_min(const lm_gmatch *m, int32_t t) {
    const lm_grammar *g = m->g;
    uint32_t sum = 0;
    for (int top = 1; t >= 0; top = 0) {
        const gframe *f = &m->fr[t];
        uint32_t i = g->alts[f->alt].first + f->elem;
        const gr_elem *e = &g->elems[i];
        uint32_t done = f->count + (top ? 0 : 1); /* a parent's element is one instance further when the child ends */
        uint32_t after = f->elem + 1 < g->alts[f->alt].n ? g->suffix_min[i + 1] : 0;
        uint32_t left = done < e->min ? e->min - done : (top ? 1 : 0); /* the top waits on at least one more char */
        sum = sat_add(sum, sat_add(sat_mul(g->elem_min[i], left), after));
        t = f->parent;
    }
    return sum;
}

static uint32_t state_min(const lm_gmatch *m, uint32_t lo, uint32_t hi, const u8state *u) {
    uint32_t best = LEN_INF;
    for (uint32_t i = lo; i < hi; i++) {
        uint32_t v = m->st[i] < 0 ? 0 : stack_min(m, m->st[i]);
        if (v < best) best = v;
    }
    return sat_add(best, u->need);
}

/* Some stack of st[lo..hi) accepts a code point in [clo, chi]. */
static int viable(const lm_gmatch *m, uint32_t lo, uint32_t hi, uint32_t clo, uint32_t chi) {
    for (uint32_t i = lo; i < hi; i++) {
        int32_t t = m->st[i];
        if (t >= 0 && class_meets(m->g, frame_elem(m->g, &m->fr[t]), clo, chi)) return 1;
    }
    return 0;
}

void lm_gmatch_free(lm_gmatch *m) {
    if (!m) return;
    free(m->fr);
    free(m->fr2);
    free(m->st);
    free(m->remap);
    for (int i = 0; i < 4; i++) free(m->pure[i].pure);
    free(m);
}

int lm_gmatch_reset(lm_gmatch *m, char err[LM_ERR_LEN]) {
    const lm_grammar *g = m->g;
    m->err = err;
    m->n_fr = m->n_st = m->cur = 0;
    m->depth = 0;
    m->work = 0;
    memset(&m->u8, 0, sizeof m->u8);
    const gr_rule *R = &g->rules[g->root];
    for (uint32_t a = 0; a < R->n_alts; a++)
        if (closure(m, 0, R->first_alt + a, 0, 0, -1)) return -1;
    m->cur = m->n_st;
    return 0;
}

int lm_gmatch_new(const lm_grammar *g, lm_gmatch **out, char err[LM_ERR_LEN]) {
    *out = NULL;
    lm_gmatch *m = calloc(1, sizeof *m);
    if (!m) return oom(err);
    m->g = g;
    m->work_limit = MAX_WORK;
    if (lm_gmatch_reset(m, err)) {
        lm_gmatch_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

long lm_gmatch_min_bytes(const lm_gmatch *m) { return (long)state_min(m, 0, m->cur, &m->u8); }

void lm_gmatch_set_work_limit(lm_gmatch *m, uint32_t limit) { m->work_limit = limit ? limit : MAX_WORK; }

int lm_gmatch_complete(const lm_gmatch *m) {
    if (m->u8.need) return 0;
    for (uint32_t i = 0; i < m->cur; i++)
        if (m->st[i] < 0) return 1;
    return 0;
}

static int32_t copy_frame(lm_gmatch *m, int32_t f, uint32_t *n2) {
    if (f < 0) return -1;
    if (m->remap[f] >= 0) return m->remap[f];
    gframe F = m->fr[f];
    F.parent = copy_frame(m, F.parent, n2);
    m->fr2[*n2] = F;
    m->remap[f] = (int32_t)*n2;
    return (int32_t)(*n2)++;
}

/* Keeps only the frames the state's stacks use. */
static int compact(lm_gmatch *m) {
    if (grow((void **)&m->remap, &m->cap_remap, m->n_fr + 1, sizeof *m->remap) ||
        grow((void **)&m->fr2, &m->cap_fr2, m->n_fr + 1, sizeof *m->fr2))
        return oom(m->err);
    for (uint32_t i = 0; i < m->n_fr; i++) m->remap[i] = -1;
    uint32_t n2 = 0;
    for (uint32_t i = 0; i < m->cur; i++) m->st[i] = copy_frame(m, m->st[i], &n2);
    gframe *t = m->fr;
    uint32_t c = m->cap_fr;
    m->fr = m->fr2;
    m->cap_fr = m->cap_fr2;
    m->fr2 = t;
    m->cap_fr2 = c;
    m->n_fr = n2;
    return 0;
}

int lm_gmatch_accept(lm_gmatch *m, const char *bytes, size_t n, char err[LM_ERR_LEN]) {
    m->err = err;
    m->depth = 0;
    m->work = 0;
    uint32_t lo = 0, hi = m->cur, save_fr = m->n_fr;
    u8state u = m->u8;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = 0;
        int r = u8_step(&u, (uint8_t)bytes[i], &cp);
        if (r < 0) goto reject;
        if (r == 0) {
            uint32_t clo, chi;
            u8_span(&u, &clo, &chi);
            if (!viable(m, lo, hi, clo, chi)) goto reject;
            continue;
        }
        uint32_t out = m->n_st;
        if (advance(m, lo, hi, cp)) {
            m->n_st = m->cur;
            m->n_fr = save_fr;
            return -1;
        }
        if (m->n_st == out) goto reject;
        lo = out;
        hi = m->n_st;
    }
    memmove(m->st, m->st + lo, (hi - lo) * sizeof *m->st);
    m->cur = m->n_st = hi - lo;
    m->u8 = u;
    return compact(m) ? -1 : 1;
reject:
    m->n_st = m->cur;
    m->n_fr = save_fr;
    return 0;
}

/* ---- token trie and masks ---------------------------------------------------------------- */

typedef struct {
    int32_t child, sibling; /* first child, next sibling (-1: none) */
    int32_t tok;            /* first token ending here (-1), more via tok_next */
    uint32_t lo, hi;        /* the tokens of this subtree: order[lo..hi) */
    uint32_t below;         /* longest token suffix below this node, in bytes */
    uint8_t byte;
} trie_node;

struct lm_token_trie {
    trie_node *nodes;
    uint32_t n_nodes, cap_nodes;
    int32_t *tok_next; /* [n] next token with the same bytes */
    int32_t root_child[256];
    int n;
    int32_t *order; /* token ids in depth-first order: each subtree is a range */
    uint32_t n_order;
    char *blob;   /* every token's bytes, token i at blob + off[i] .. off[i + 1] */
    size_t *off;  /* [n + 1] */
};

void lm_token_trie_free(lm_token_trie *t) {
    if (!t) return;
    free(t->nodes);
    free(t->tok_next);
    free(t->blob);
    free(t->off);
    free(t->order);
    free(t);
}

int lm_token_trie_size(const lm_token_trie *t) { return t->n; }

const char *lm_token_trie_bytes(const lm_token_trie *t, int id, size_t *len) {
    if (id < 0 || id >= t->n) {
        *len = 0;
        return "";
    }
    *len = t->off[id + 1] - t->off[id];
    return t->blob + t->off[id];
}

/* Depth-first numbering: a node's own tokens, then its children's. */
static void number_subtree(lm_token_trie *t, int32_t c) {
    trie_node *nd = &t->nodes[c];
    nd->lo = t->n_order;
    for (int32_t id = nd->tok; id >= 0; id = t->tok_next[id]) t->order[t->n_order++] = id;
    uint32_t below = 0;
    for (int32_t k = nd->child; k >= 0; k = t->nodes[k].sibling) {
        number_subtree(t, k);
        if (t->nodes[k].below + 1 > below) below = t->nodes[k].below + 1;
    }
    nd = &t->nodes[c];
    nd->hi = t->n_order;
    nd->below = below;
}

int lm_token_trie_new(const char *const *bytes, const size_t *lens, int n, lm_token_trie **out,
                      char err[LM_ERR_LEN]) {
    *out = NULL;
    if (n < 0) return lm_errf(err, "token trie: negative vocabulary size");
    lm_token_trie *t = calloc(1, sizeof *t);
    if (!t) return oom(err);
    t->n = n;
    for (int b = 0; b < 256; b++) t->root_child[b] = -1;
    if (!(t->tok_next = malloc(((size_t)n + 1) * sizeof *t->tok_next))) goto fail;
    if (!(t->off = malloc(((size_t)n + 1) * sizeof *t->off))) goto fail;
    size_t total = 0;
    for (int id = 0; id < n; id++) {
        t->off[id] = total;
        total += lens[id];
    }
    t->off[n] = total;
    if (!(t->blob = malloc(total + 1))) goto fail;
    for (int id = 0; id < n; id++)
        if (lens[id]) memcpy(t->blob + t->off[id], bytes[id], lens[id]);
    for (int id = 0; id < n; id++) {
        t->tok_next[id] = -1;
        if (!lens[id]) continue;
        int32_t node = -1;
        for (size_t i = 0; i < lens[id]; i++) {
            uint8_t b = (uint8_t)bytes[id][i];
            int32_t c = node < 0 ? t->root_child[b] : t->nodes[node].child;
            if (node >= 0)
                while (c >= 0 && t->nodes[c].byte != b) c = t->nodes[c].sibling;
            if (c < 0) {
                if (t->n_nodes >= INT32_MAX - 1 ||
                    grow((void **)&t->nodes, &t->cap_nodes, t->n_nodes + 1, sizeof *t->nodes))
                    goto fail;
                c = (int32_t)t->n_nodes++;
                t->nodes[c] = (trie_node){.child = -1, .sibling = -1, .tok = -1, .byte = b};
                if (node < 0) {
                    t->root_child[b] = c;
                } else {
                    t->nodes[c].sibling = t->nodes[node].child;
                    t->nodes[node].child = c;
                }
            }
            node = c;
        }
        t->tok_next[id] = t->nodes[node].tok;
        t->nodes[node].tok = id;
    }
    if (!(t->order = malloc(((size_t)n + 1) * sizeof *t->order))) goto fail;
    for (int b = 0; b < 256; b++)
        if (t->root_child[b] >= 0) number_subtree(t, t->root_child[b]);
    *out = t;
    return 0;
fail:
    lm_token_trie_free(t);
    return oom(err);
}

typedef struct {
    lm_gmatch *m;
    const lm_token_trie *t;
    uint8_t *allowed;
    long budget; /* < 0: none */
} walk_ctx;

/* ---- the shortcut through long runs of one character class ----
 * Inside a JSON string most of the vocabulary is allowed, and walking it node by node
 * costs as much as the whole trie. When, at a character boundary, every live stack
 * either repeats one class C with room for the longest token below, or waits on a
 * class disjoint from C, then each token below whose characters are all in C is
 * allowed, and the others only by what the walk finds; a subtree made only of such
 * tokens ("pure") is marked at once. Purity is computed once per class and trie node. */

static int pure_below(const lm_token_trie *t, const lm_grammar *g, const gr_elem *e, int32_t node, uint8_t *pure);

static int pure_char(const lm_token_trie *t, const lm_grammar *g, const gr_elem *e, int32_t c, u8state u, uint8_t *pure) {
    const trie_node *nd = &t->nodes[c];
    uint32_t cp = 0;
    int r = u8_step(&u, nd->byte, &cp);
    if (r < 0) return 0;
    if (r == 0) {
        if (nd->tok >= 0) return 0; /* a token ends inside a character */
        for (int32_t k = nd->child; k >= 0; k = t->nodes[k].sibling)
            if (!pure_char(t, g, e, k, u, pure)) return 0;
        return 1;
    }
    return class_has(g, e, cp) && pure_below(t, g, e, c, pure);
}

static int pure_below(const lm_token_trie *t, const lm_grammar *g, const gr_elem *e, int32_t node, uint8_t *pure) {
    if (pure[node]) return pure[node] == 1;
    int ok = 1;
    u8state u = {0};
    for (int32_t k = t->nodes[node].child; ok && k >= 0; k = t->nodes[k].sibling) ok = pure_char(t, g, e, k, u, pure);
    pure[node] = ok ? 1 : 2;
    return ok;
}

static int classes_meet(const lm_grammar *g, const gr_elem *a, const gr_elem *b) {
    const gr_range *x = g->ranges + a->arg, *y = g->ranges + b->arg;
    uint32_t i = 0, j = 0;
    while (i < a->n && j < b->n) {
        if (x[i].hi < y[j].lo) i++;
        else if (y[j].hi < x[i].lo) j++;
        else return 1;
    }
    return 0;
}

/* 1 when node c's subtree was marked whole (see above), 0 when it must be walked. */
static int shortcut(walk_ctx *w, int32_t c, uint32_t lo, uint32_t hi) {
    lm_gmatch *m = w->m;
    const lm_grammar *g = m->g;
    const trie_node *nd = &w->t->nodes[c];
    const gr_elem *C = NULL;
    for (uint32_t i = lo; i < hi; i++) {
        if (m->st[i] < 0) continue;
        const gframe *f = &m->fr[m->st[i]];
        const gr_elem *e = frame_elem(g, f);
        if (e->max > 1 && (e->max == UNBOUNDED || e->max - f->count >= nd->below)) {
            if (!C) C = e;
            else if (C->arg != e->arg) return 0;
        }
    }
    if (!C) return 0;
    for (uint32_t i = lo; i < hi; i++) {
        if (m->st[i] < 0) continue;
        const gframe *f = &m->fr[m->st[i]];
        const gr_elem *e = frame_elem(g, f);
        int rep = e->arg == C->arg && e->max > 1 && (e->max == UNBOUNDED || e->max - f->count >= nd->below);
        if (!rep && classes_meet(g, e, C)) return 0;
    }
    struct pure_cache *pc = NULL;
    for (int i = 0; i < 4 && !pc; i++) {
        if (m->pure[i].pure && m->pure[i].t == w->t && m->pure[i].ranges == C->arg) pc = &m->pure[i];
        else if (!m->pure[i].pure) {
            if (!(m->pure[i].pure = calloc(w->t->n_nodes ? w->t->n_nodes : 1, 1))) return 0;
            m->pure[i].t = w->t;
            m->pure[i].ranges = C->arg;
            pc = &m->pure[i];
        }
    }
    if (!pc || !pure_below(w->t, g, C, c, pc->pure)) return 0;
    for (uint32_t k = nd->lo; k < nd->hi; k++) w->allowed[w->t->order[k]] = 1;
    return 1;
}

/* Child c of a trie node whose prefix left the stacks at st[lo..hi) and UTF-8 state u. */
static int walk(walk_ctx *w, int32_t c, uint32_t lo, uint32_t hi, u8state u) {
    lm_gmatch *m = w->m;
    const trie_node *nd = &w->t->nodes[c];
    uint32_t cp = 0, save_st = m->n_st, save_fr = m->n_fr;
    int r = u8_step(&u, nd->byte, &cp), rc = 0;
    if (r < 0) return 0;
    if (r == 0) {
        uint32_t clo, chi;
        u8_span(&u, &clo, &chi);
        if (!viable(m, lo, hi, clo, chi)) return 0;
    } else {
        uint32_t out = m->n_st;
        if (advance(m, lo, hi, cp)) return -1;
        lo = out;
        hi = m->n_st;
    }
    if (lo < hi) {
        int fits = w->budget < 0 || state_min(m, lo, hi, &u) <= (unsigned long)w->budget;
        if (fits)
            for (int32_t id = nd->tok; id >= 0; id = w->t->tok_next[id]) w->allowed[id] = 1;
        if (!(fits && !u.need && nd->child >= 0 && shortcut(w, c, lo, hi)))
            for (int32_t k = nd->child; k >= 0 && !rc; k = w->t->nodes[k].sibling) rc = walk(w, k, lo, hi, u);
    }
    m->n_st = save_st;
    m->n_fr = save_fr;
    return rc;
}

int lm_gmatch_mask(lm_gmatch *m, const lm_token_trie *t, long budget, uint8_t *allowed, char err[LM_ERR_LEN]) {
    m->err = err;
    m->depth = 0;
    m->work = 0;
    memset(allowed, 0, (size_t)t->n);
    walk_ctx w = {m, t, allowed, budget};
    uint32_t save_fr = m->n_fr;
    int rc = 0;
    for (int b = 0; b < 256 && !rc; b++)
        if (t->root_child[b] >= 0) rc = walk(&w, t->root_child[b], 0, m->cur, m->u8);
    m->n_st = m->cur;
    m->n_fr = save_fr;
    if (rc) return -1;
    int count = 0;
    for (int i = 0; i < t->n; i++) count += allowed[i];
    return count;
}

/* Jinja lexer: template source -> flat token array.
 *
 * Whitespace control is settled here, so the parser only sees final text:
 *   {%- / {{- / {#-   strip all whitespace before the tag
 *   -%} / -}} / -#}   strip all whitespace after the tag
 *   trim_blocks       a block or comment tag eats one newline right after it (not with +%})
 *   lstrip_blocks     spaces/tabs between a line start and a block or comment tag
 *                     are dropped (not with {%+)
 * Inside tags, brackets are balanced so `{{ {'a': {}} }}` ends at the right `}}`.
 */
#include "text/jinja_internal.h"

#include "common/str.h"
#include "common/utf8.h"

#include <ctype.h>
#include <string.h>

typedef struct {
    jarena *a;
    const char *src;
    size_t len, pos;
    int line;
    size_t line_pos;  /* position up to which `line` has been counted */
    jtoken *toks;
    size_t ntok, cap;
    char *err;
} lexer;

static int line_at(lexer *L, size_t pos) {
    for (; L->line_pos < pos && L->line_pos < L->len; L->line_pos++)
        if (L->src[L->line_pos] == '\n') L->line++;
    return L->line;
}

static int push(lexer *L, jtok_kind kind, size_t at, const char *s, size_t n) {
    if (JA_GROW(L->a, L->toks, L->cap, L->ntok) != 0) return lm_errf(L->err, "template too large");
    jtoken *t = &L->toks[L->ntok++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->line = line_at(L, at);
    t->s = s;
    t->len = n;
    return 0;
}

/* Lexes a quoted string at L->pos, unescaping as Python's unicode-escape does. */
static int lex_string(lexer *L) {
    size_t start = L->pos;
    char q = L->src[L->pos++];
    char *out = ja_alloc(L->a, L->len - L->pos + 1);
    if (!out) return lm_errf(L->err, "template too large");
    size_t n = 0;
    while (L->pos < L->len && L->src[L->pos] != q) {
        char c = L->src[L->pos++];
        if (c == '\r') {  /* newlines are normalized to \n */
            if (L->pos < L->len && L->src[L->pos] == '\n') L->pos++;
            out[n++] = '\n';
            continue;
        }
        if (c != '\\' || L->pos >= L->len) { out[n++] = c; continue; }
        char e = L->src[L->pos++];
        int digits = 0;
        switch (e) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'v': out[n++] = '\v'; break;
        case 'a': out[n++] = '\a'; break;
        case '\\': out[n++] = '\\'; break;
        case '\'': out[n++] = '\''; break;
        case '"': out[n++] = '"'; break;
        case '\n': break;  /* line continuation */
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        default:
            if (e >= '0' && e <= '7') {
                unsigned long v = (unsigned long)(e - '0');
                for (int k = 0; k < 2 && L->pos < L->len && L->src[L->pos] >= '0' && L->src[L->pos] <= '7'; k++)
                    v = v * 8 + (unsigned long)(L->src[L->pos++] - '0');
                n += lm_utf8_put((uint32_t)v, out + n);
            } else {
                out[n++] = '\\';
                out[n++] = e;
            }
        }
        if (digits) {
            unsigned long v = 0;
            for (int k = 0; k < digits; k++) {
                int h = L->pos < L->len ? lm_hex_digit(L->src[L->pos]) : -1;
                if (h < 0) return lm_errf(L->err, "line %d: truncated \\%c escape in string", line_at(L, start), e);
                v = v * 16 + (unsigned long)h;
                L->pos++;
            }
            n += lm_utf8_put((uint32_t)v, out + n);
        }
    }
    if (L->pos >= L->len) return lm_errf(L->err, "line %d: unterminated string", line_at(L, start));
    L->pos++;
    out[n] = 0;
    return push(L, JT_STRING, start, out, n);
}

static bool at(const lexer *L, const char *s) {
    size_t n = strlen(s);
    return L->pos + n <= L->len && memcmp(L->src + L->pos, s, n) == 0;
}

/* Lexes the inside of a {{ }} or {% %} tag up to its end marker. *strip_after
 * gets 2 for a '-' end, 1 when trim_blocks applies, 0 otherwise. */
static int lex_tag(lexer *L, bool is_block, size_t tag_start, int *strip_after) {
    const char *end = is_block ? "%}" : "}}";
    int depth = 0;
    for (;;) {
        while (L->pos < L->len && isspace((unsigned char)L->src[L->pos])) L->pos++;
        if (L->pos >= L->len)
            return lm_errf(L->err, "line %d: unclosed %s tag", line_at(L, tag_start), is_block ? "{%" : "{{");
        if (depth == 0) {
            const char *p = L->src + L->pos;
            size_t left = L->len - L->pos;
            if (left >= 3 && (p[0] == '-' || p[0] == '+') && memcmp(p + 1, end, 2) == 0) {
                *strip_after = p[0] == '-' ? 2 : 0;
                L->pos += 3;
                return push(L, is_block ? JT_BLOCK_END : JT_VAR_END, L->pos, NULL, 0);
            }
            if (left >= 2 && memcmp(p, end, 2) == 0) {
                *strip_after = is_block ? 1 : 0;
                L->pos += 2;
                return push(L, is_block ? JT_BLOCK_END : JT_VAR_END, L->pos, NULL, 0);
            }
        }
        char c = L->src[L->pos];
        size_t start = L->pos;
        if (c == '"' || c == '\'') {
            if (lex_string(L)) return -1;
        } else if (isalpha((unsigned char)c) || c == '_') {
            while (L->pos < L->len && (isalnum((unsigned char)L->src[L->pos]) || L->src[L->pos] == '_')) L->pos++;
            if (push(L, JT_NAME, start, L->src + start, L->pos - start)) return -1;
        } else if (isdigit((unsigned char)c)) {
            bool is_float = false;
            while (L->pos < L->len && (isdigit((unsigned char)L->src[L->pos]) || L->src[L->pos] == '_')) L->pos++;
            if (L->pos + 1 < L->len && L->src[L->pos] == '.' && isdigit((unsigned char)L->src[L->pos + 1])) {
                is_float = true;
                L->pos++;
                while (L->pos < L->len && isdigit((unsigned char)L->src[L->pos])) L->pos++;
            }
            if (L->pos < L->len && (L->src[L->pos] == 'e' || L->src[L->pos] == 'E')) {
                size_t q = L->pos + 1;
                if (q < L->len && (L->src[q] == '+' || L->src[q] == '-')) q++;
                if (q < L->len && isdigit((unsigned char)L->src[q])) {
                    is_float = true;
                    L->pos = q;
                    while (L->pos < L->len && isdigit((unsigned char)L->src[L->pos])) L->pos++;
                }
            }
            char buf[64];
            size_t n = 0;
            for (size_t k = start; k < L->pos && n < sizeof buf - 1; k++)
                if (L->src[k] != '_') buf[n++] = L->src[k];
            buf[n] = 0;
            if (push(L, is_float ? JT_FLOAT : JT_INT, start, L->src + start, L->pos - start)) return -1;
            jtoken *t = &L->toks[L->ntok - 1];
            if (is_float) t->f = strtod(buf, NULL);
            else {
                unsigned long long v = 0;
                for (size_t k = 0; k < n; k++) {
                    if (v > (unsigned long long)INT64_MAX / 10) return lm_errf(L->err, "line %d: integer literal too large", t->line);
                    v = v * 10 + (unsigned long long)(buf[k] - '0');
                }
                if (v > (unsigned long long)INT64_MAX) return lm_errf(L->err, "line %d: integer literal too large", t->line);
                t->i = (int64_t)v;
            }
        } else {
            static const char *const two[] = {"//", "**", "==", "!=", "<=", ">="};
            size_t n = 0;
            for (size_t k = 0; k < sizeof two / sizeof two[0]; k++)
                if (at(L, two[k])) { n = 2; break; }
            if (!n) {
                if (!strchr("+-*/%~<>=()[]{},.:|;", c))
                    return lm_errf(L->err, "line %d: unexpected character '%c'", line_at(L, start), c);
                n = 1;
                if (c == '(' || c == '[' || c == '{') depth++;
                if ((c == ')' || c == ']' || c == '}') && depth > 0) depth--;
            }
            L->pos += n;
            if (push(L, JT_OP, start, L->src + start, n)) return -1;
        }
    }
}

/* Emits the text [lo, hi) after applying the previous tag's strip and the next
 * tag's strip/lstrip. */
static int emit_text(lexer *L, size_t lo, size_t hi, int strip_before_mode, int next_tag_strip,
                     bool next_is_block) {
    size_t orig_hi = hi;
    if (strip_before_mode == 2) {
        while (lo < hi && isspace((unsigned char)L->src[lo])) lo++;
    } else if (strip_before_mode == 1) {
        if (lo < hi && L->src[lo] == '\n') lo++;
        else if (lo + 1 < hi && L->src[lo] == '\r' && L->src[lo + 1] == '\n') lo += 2;
    }
    if (next_tag_strip == '-') {
        while (hi > lo && isspace((unsigned char)L->src[hi - 1])) hi--;
    } else if (next_is_block && next_tag_strip != '+') {
        size_t t = orig_hi;
        while (t > 0 && (L->src[t - 1] == ' ' || L->src[t - 1] == '\t')) t--;
        if (t == 0 || L->src[t - 1] == '\n') hi = t < lo ? lo : (t < hi ? t : hi);
    }
    if (hi <= lo) return 0;
    if (!memchr(L->src + lo, '\r', hi - lo)) return push(L, JT_TEXT, lo, L->src + lo, hi - lo);
    /* jinja2 turns every \r\n and \r of template text into \n */
    char *text = ja_alloc(L->a, hi - lo + 1);
    if (!text) return lm_errf(L->err, "template too large");
    size_t n = 0;
    for (size_t i = lo; i < hi; i++) {
        if (L->src[i] == '\r') {
            if (i + 1 < hi && L->src[i + 1] == '\n') i++;
            text[n++] = '\n';
        } else {
            text[n++] = L->src[i];
        }
    }
    return push(L, JT_TEXT, lo, text, n);
}

int jinja_lex(jarena *a, const char *src, size_t len, jtoken **toks, size_t *ntok, char *err) {
    /* jinja2 drops one trailing newline of the source (keep_trailing_newline=False) */
    if (len > 0 && src[len - 1] == '\n') len--;
    if (len > 0 && src[len - 1] == '\r') len--;
    lexer L = {.a = a, .src = src, .len = len, .line = 1, .err = err};
    size_t text_start = 0;
    int strip_before = 0;  /* how the previous tag strips the text after it */
    while (1) {
        /* Find the next tag opening. */
        size_t p = text_start;
        const char *open = NULL;
        while (p + 1 < len) {
            if (src[p] == '{' && (src[p + 1] == '{' || src[p + 1] == '%' || src[p + 1] == '#')) {
                open = src + p;
                break;
            }
            p++;
        }
        if (!open) {
            if (emit_text(&L, text_start, len, strip_before, 0, false)) return -1;
            break;
        }
        char kind = open[1];
        char mod = p + 2 < len ? src[p + 2] : 0;
        if (mod != '-' && mod != '+') mod = 0;
        bool block_like = kind == '%' || kind == '#';
        if (emit_text(&L, text_start, p, strip_before, mod, block_like)) return -1;
        L.pos = p + 2 + (mod ? 1 : 0);
        if (kind == '#') {
            const char *e = NULL;
            for (size_t k = L.pos; k + 1 < len; k++)
                if (src[k] == '#' && src[k + 1] == '}') { e = src + k; break; }
            if (!e) return lm_errf(err, "line %d: unclosed comment", line_at(&L, p));
            size_t epos = (size_t)(e - src);
            strip_before = (epos > L.pos && src[epos - 1] == '-') ? 2 : (epos > L.pos && src[epos - 1] == '+') ? 0 : 1;
            text_start = epos + 2;
            continue;
        }
        /* {% raw %} ... {% endraw %}: the body is text as is. */
        if (kind == '%') {
            size_t q = L.pos;
            while (q < len && isspace((unsigned char)src[q])) q++;
            if (q + 3 <= len && memcmp(src + q, "raw", 3) == 0) {
                size_t r = q + 3;
                while (r < len && isspace((unsigned char)src[r])) r++;
                int raw_strip_after = 1;
                if (r < len && (src[r] == '-' || src[r] == '+')) { raw_strip_after = src[r] == '-' ? 2 : 0; r++; }
                if (r + 2 <= len && memcmp(src + r, "%}", 2) == 0) {
                    size_t body = r + 2;
                    for (size_t k = body; k + 1 < len; k++) {
                        if (src[k] != '{' || src[k + 1] != '%') continue;
                        size_t m = k + 2;
                        char emod = m < len && (src[m] == '-' || src[m] == '+') ? src[m] : 0;
                        if (emod) m++;
                        while (m < len && isspace((unsigned char)src[m])) m++;
                        if (m + 6 > len || memcmp(src + m, "endraw", 6) != 0) continue;
                        m += 6;
                        while (m < len && isspace((unsigned char)src[m])) m++;
                        int after = 1;
                        if (m < len && (src[m] == '-' || src[m] == '+')) { after = src[m] == '-' ? 2 : 0; m++; }
                        if (m + 2 > len || memcmp(src + m, "%}", 2) != 0) continue;
                        if (emit_text(&L, body, k, raw_strip_after, emod, true)) return -1;
                        strip_before = after;
                        text_start = m + 2;
                        goto next_tag;
                    }
                    return lm_errf(err, "line %d: unclosed raw block", line_at(&L, p));
                }
            }
        }
        if (push(&L, kind == '%' ? JT_BLOCK_BEGIN : JT_VAR_BEGIN, p, NULL, 0)) return -1;
        if (lex_tag(&L, kind == '%', p, &strip_before)) return -1;
        text_start = L.pos;
    next_tag:;
    }
    if (push(&L, JT_EOF, len, NULL, 0)) return -1;
    *toks = L.toks;
    *ntok = L.ntok;
    return 0;
}

/* Normalizers and pre-tokenizers of tokenizer.json.
 *
 * Normalizers rewrite a section of text (between added tokens) before it is split:
 * Sequence, NFC/NFD/NFKC/NFKD, Prepend, Replace (string or regex), Strip.
 * Pre-tokenizers split a section into words that the BPE model encodes independently:
 * Sequence, Split (regex or string; behaviours Isolated/Removed/MergedWithPrevious/
 * MergedWithNext/Contiguous; invert), ByteLevel (bytes -> printable code points, with
 * optional GPT-2 regex), Digits, Metaspace, Whitespace, WhitespaceSplit. Each stage maps
 * a list of pieces to a new list, as the reference implementation does.
 *
 * Regexes are compiled with PCRE2 in UTF + UCP mode so \s, \p{L}, \w etc. are Unicode
 * aware like the Oniguruma/JS engines the reference implementations use.
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "text/tokenizer_internal.h"
#include "text/unicode.h"

/* ---- regex helpers ------------------------------------------------------------------ */

/* tokenizer.json regexes are written for Oniguruma (the Rust crate's engine). Rewrites \s /
 * \S to the White_Space property, which is what they mean there (PCRE2's \s also matches
 * U+180E); transformers.js does the same rewrite. (\h, hex digit in Oniguruma, is left
 * alone: no known tokenizer uses it.) Returns a malloc'd pattern or NULL. */
static char *oniguruma_to_pcre2(const char *p, size_t len, size_t *out_len) {
    lm_strbuf b = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < len; i++) {
        if (p[i] != '\\' || i + 1 == len) { rc = lm_strbuf_append(&b, p + i, 1); continue; }
        char c = p[++i];
        const char *rep = c == 's' ? "\\p{White_Space}" : c == 'S' ? "\\P{White_Space}" : NULL;
        if (rep) rc = lm_strbuf_append(&b, rep, strlen(rep));
        else { char esc[2] = {'\\', c}; rc = lm_strbuf_append(&b, esc, 2); }
    }
    if (!rc && !b.data) rc = lm_strbuf_append(&b, "", 0);
    if (rc) { lm_strbuf_free(&b); return NULL; }
    *out_len = b.len;
    return b.data;
}

pcre2_code *tb_regex_compile(const char *pattern, size_t len, int literal, char *err) {
    int code;
    PCRE2_SIZE at;
    /* PCRE2_LITERAL allows PCRE2_UTF but not PCRE2_UCP */
    uint32_t opts = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
    size_t rlen = len;
    char *rewritten = literal ? NULL : oniguruma_to_pcre2(pattern, len, &rlen);
    if (!literal && !rewritten) { lm_errf(err, "out of memory"); return NULL; }
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(literal ? pattern : rewritten), rlen, opts, &code, &at, NULL);
    free(rewritten);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        lm_errf(err, "regex /%.80s/ at offset %zu: %s", pattern, (size_t)at, (const char *)msg);
        return NULL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  /* falls back to the interpreter */
    return re;
}

/* Finds the next non-empty match of re in s[from..len); returns 1 with [*ms,*me) or 0. */
static int next_match(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t len,
                      size_t from, size_t *ms, size_t *me, char *err, int *failed) {
    while (from <= len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            lm_errf(err, "regex match failed: %s", (const char *)msg);
            *failed = 1;
            return 0;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) { *ms = ov[0]; *me = ov[1]; return 1; }
        /* empty match: step one code point and search again */
        from = ov[0] + 1;
        while (from < len && ((unsigned char)s[from] & 0xC0) == 0x80) from++;
    }
    return 0;
}

int tb_is_unicode_space(uint32_t cp) {
    return (cp >= 9 && cp <= 13) || cp == ' ' || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* ---- normalizers -------------------------------------------------------------------- */

enum { N_SEQ, N_UNICODE, N_PREPEND, N_REPLACE, N_STRIP };

struct tb_normalizer {
    int type;
    tb_normalizer **kids;       /* N_SEQ */
    size_t n_kids;
    enum lm_unorm_form form;    /* N_UNICODE */
    char *text;                 /* N_PREPEND: prefix; N_REPLACE: replacement */
    size_t text_len;
    pcre2_code *re;             /* N_REPLACE */
    int left, right;            /* N_STRIP */
};

static char *dup_json_string(json_t *v, size_t *len) {
    *len = json_string_length(v);
    char *p = malloc(*len + 1);
    if (p) memcpy(p, json_string_value(v), *len + 1);
    return p;
}

/* Reads {"String": s} or {"Regex": r} (Split, Replace). */
static pcre2_code *parse_pattern(json_t *pat, const char *where, char *err) {
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    if (json_is_string(s)) return tb_regex_compile(json_string_value(s), json_string_length(s), 1, err);
    if (json_is_string(r)) return tb_regex_compile(json_string_value(r), json_string_length(r), 0, err);
    lm_errf(err, "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", where);
    return NULL;
}

int tb_normalizer_parse(json_t *j, tb_normalizer **out, char *err) {
    *out = NULL;
    if (!j || json_is_null(j)) return 0;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return lm_errf(err, "normalizer: missing \"type\"");
    tb_normalizer *n = calloc(1, sizeof *n);
    if (!n) return lm_errf(err, "out of memory");
    if (!strcmp(type, "Sequence")) {
        n->type = N_SEQ;
        json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr)) { lm_errf(err, "normalizer Sequence: \"normalizers\" must be an array"); goto fail; }
        n->kids = calloc(json_array_size(arr) + 1, sizeof *n->kids);
        if (!n->kids) { lm_errf(err, "out of memory"); goto fail; }
        for (size_t i = 0; i < json_array_size(arr); i++) {
            if (tb_normalizer_parse(json_array_get(arr, i), &n->kids[n->n_kids], err)) goto fail;
            if (n->kids[n->n_kids]) n->n_kids++;
        }
    } else if (!strcmp(type, "NFC") || !strcmp(type, "NFD") || !strcmp(type, "NFKC") || !strcmp(type, "NFKD")) {
        n->type = N_UNICODE;
        n->form = !strcmp(type, "NFC") ? LM_NFC : !strcmp(type, "NFD") ? LM_NFD : !strcmp(type, "NFKC") ? LM_NFKC : LM_NFKD;
    } else if (!strcmp(type, "Prepend")) {
        n->type = N_PREPEND;
        json_t *p = json_object_get(j, "prepend");
        if (!json_is_string(p)) { lm_errf(err, "normalizer Prepend: \"prepend\" must be a string"); goto fail; }
        if (!(n->text = dup_json_string(p, &n->text_len))) { lm_errf(err, "out of memory"); goto fail; }
    } else if (!strcmp(type, "Replace")) {
        n->type = N_REPLACE;
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c)) { lm_errf(err, "normalizer Replace: \"content\" must be a string"); goto fail; }
        if (!(n->text = dup_json_string(c, &n->text_len))) { lm_errf(err, "out of memory"); goto fail; }
        if (!(n->re = parse_pattern(json_object_get(j, "pattern"), "normalizer Replace", err))) goto fail;
    } else if (!strcmp(type, "Strip")) {
        n->type = N_STRIP;
        n->left = json_is_true(json_object_get(j, "strip_left"));
        n->right = json_is_true(json_object_get(j, "strip_right"));
    } else {
        lm_errf(err, "unsupported normalizer type \"%.40s\"", type);
        goto fail;
    }
    *out = n;
    return 0;
fail:
    tb_normalizer_free(n);
    return -1;
}

void tb_normalizer_free(tb_normalizer *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n_kids; i++) tb_normalizer_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    if (n->re) pcre2_code_free(n->re);
    free(n);
}

/* Replaces every match of re in s by rep. */
static int regex_replace(const pcre2_code *re, const char *s, size_t len, const char *rep,
                         size_t rep_len, size_t bound, lm_strbuf *out, char *err) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) return lm_errf(err, "out of memory");
    size_t pos = 0, ms, me;
    int failed = 0, rc = 0;
    while (next_match(re, md, s, len, pos, &ms, &me, err, &failed)) {
        if (lm_strbuf_append(out, s + pos, ms - pos) || lm_strbuf_append(out, rep, rep_len)) { rc = lm_errf(err, "out of memory"); break; }
        if (out->len > bound) {  /* stop before building what normalize_bounded refuses */
            rc = lm_errf(err, "tokenizer normalizer: the text grew past %zu bytes (16x its input)", bound);
            break;
        }
        pos = me;
    }
    if (!rc && failed) rc = -1;
    if (!rc && lm_strbuf_append(out, s + pos, len - pos)) rc = lm_errf(err, "out of memory");
    pcre2_match_data_free(md);
    return rc;
}

/* A normalizer's output may grow (Replace " " by "\u2581" triples the bytes), but a
 * chain of Replaces in a hostile tokenizer.json would compound the growth to gigabytes:
 * every stage's output is held to this bound, a fixed multiple of the text the
 * chain was given. */
static size_t normalize_bound(size_t len) {
    return len > SIZE_MAX / 32 - 4096 ? SIZE_MAX : 16 * len + 4096;
}

static int normalize_bounded(const tb_normalizer *n, const char *in, size_t len, size_t bound,
                             char **out, size_t *out_len, char *err);

int tb_normalize(const tb_normalizer *n, const char *in, size_t len, char **out,
                 size_t *out_len, char *err) {
    return normalize_bounded(n, in, len, normalize_bound(len), out, out_len, err);
}

static int normalize_bounded(const tb_normalizer *n, const char *in, size_t len, size_t bound,
                             char **out, size_t *out_len, char *err) {
    lm_strbuf b = {0};
    switch (n->type) {
    case N_SEQ: {
        char *cur = malloc(len + 1);
        if (!cur) return lm_errf(err, "out of memory");
        if (len) memcpy(cur, in, len);
        cur[len] = 0;
        size_t cur_len = len;
        for (size_t i = 0; i < n->n_kids; i++) {
            char *next = NULL;
            size_t next_len = 0;
            if (normalize_bounded(n->kids[i], cur, cur_len, bound, &next, &next_len, err)) { free(cur); return -1; }
            free(cur);
            cur = next;
            cur_len = next_len;
        }
        *out = cur;
        *out_len = cur_len;
        return 0;
    }
    case N_UNICODE:
        if (lm_unicode_normalize(n->form, in, len, out, out_len)) return lm_errf(err, "out of memory");
        if (*out_len > bound) {
            free(*out);
            *out = NULL;
            return lm_errf(err, "tokenizer normalizer: the text grew past %zu bytes (16x its input)", bound);
        }
        return 0;
    case N_PREPEND:
        if ((len && lm_strbuf_append(&b, n->text, n->text_len)) || lm_strbuf_append(&b, in, len)) goto oom;
        break;
    case N_REPLACE:
        if (regex_replace(n->re, in, len, n->text, n->text_len, bound, &b, err)) { lm_strbuf_free(&b); return -1; }
        if (lm_strbuf_append(&b, "", 0)) goto oom;
        break;
    case N_STRIP: {
        const unsigned char *u = (const unsigned char *)in;
        size_t s = 0, e = len;
        uint32_t cp;
        while (n->left && s < e) {
            size_t k = lm_utf8_next(u + s, e - s, &cp);
            if (!k || !tb_is_unicode_space(cp)) break;
            s += k;
        }
        while (n->right && s < e) {
            size_t p = e - 1;
            while (p > s && (u[p] & 0xC0) == 0x80) p--;
            size_t k = lm_utf8_next(u + p, e - p, &cp);
            if (!k || !tb_is_unicode_space(cp)) break;
            e = p;
        }
        if (lm_strbuf_append(&b, in + s, e - s)) goto oom;
        break;
    }
    }
    if (!b.data && lm_strbuf_append(&b, "", 0)) goto oom;
    if (b.len > bound) {
        lm_strbuf_free(&b);
        return lm_errf(err, "tokenizer normalizer: the text grew past %zu bytes (16x its input); "
                       "the normalizer chain in tokenizer.json expands without bound", bound);
    }
    *out = b.data;
    *out_len = b.len;
    return 0;
oom:
    lm_strbuf_free(&b);
    return lm_errf(err, "out of memory");
}

/* ---- pre-tokenizers ----------------------------------------------------------------- */

enum { P_SEQ, P_SPLIT, P_BYTELEVEL, P_DIGITS, P_METASPACE };
enum { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

struct tb_pretok {
    int type;
    tb_pretok **kids;           /* P_SEQ */
    size_t n_kids;
    pcre2_code *re;             /* P_SPLIT; P_BYTELEVEL with use_regex (GPT-2 regex) */
    int behavior, invert;       /* P_SPLIT */
    int add_prefix_space;       /* P_BYTELEVEL */
    int individual_digits;      /* P_DIGITS */
    char *repl;                 /* P_METASPACE replacement character */
    size_t repl_len;
    int prepend_scheme, split;  /* P_METASPACE */
};

/* GPT-2's split regex, used by ByteLevel with use_regex (the Rust crate's spelling). */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int behavior_from(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "Removed")) return B_REMOVED;
    if (!strcmp(s, "Isolated")) return B_ISOLATED;
    if (!strcmp(s, "MergedWithPrevious")) return B_MERGED_PREV;
    if (!strcmp(s, "MergedWithNext")) return B_MERGED_NEXT;
    if (!strcmp(s, "Contiguous")) return B_CONTIGUOUS;
    return -1;
}

int tb_pretok_parse(json_t *j, tb_pretok **out, char *err) {
    *out = NULL;
    if (!j || json_is_null(j)) return 0;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return lm_errf(err, "pre_tokenizer: missing \"type\"");
    tb_pretok *p = calloc(1, sizeof *p);
    if (!p) return lm_errf(err, "out of memory");
    if (!strcmp(type, "Sequence")) {
        p->type = P_SEQ;
        json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr)) { lm_errf(err, "pre_tokenizer Sequence: \"pretokenizers\" must be an array"); goto fail; }
        p->kids = calloc(json_array_size(arr) + 1, sizeof *p->kids);
        if (!p->kids) { lm_errf(err, "out of memory"); goto fail; }
        for (size_t i = 0; i < json_array_size(arr); i++) {
            if (tb_pretok_parse(json_array_get(arr, i), &p->kids[p->n_kids], err)) goto fail;
            if (p->kids[p->n_kids]) p->n_kids++;
        }
    } else if (!strcmp(type, "Split")) {
        p->type = P_SPLIT;
        p->behavior = behavior_from(json_string_value(json_object_get(j, "behavior")));
        if (p->behavior < 0) { lm_errf(err, "pre_tokenizer Split: unsupported \"behavior\""); goto fail; }
        p->invert = json_is_true(json_object_get(j, "invert"));
        if (!(p->re = parse_pattern(json_object_get(j, "pattern"), "pre_tokenizer Split", err))) goto fail;
    } else if (!strcmp(type, "Whitespace") || !strcmp(type, "WhitespaceSplit")) {
        /* Whitespace keeps \w+ and punctuation runs; WhitespaceSplit drops whitespace. */
        p->type = P_SPLIT;
        p->behavior = B_REMOVED;
        p->invert = !strcmp(type, "Whitespace");
        const char *rx = p->invert ? "\\w+|[^\\w\\s]+" : "\\s+";
        if (!(p->re = tb_regex_compile(rx, strlen(rx), 0, err))) goto fail;
    } else if (!strcmp(type, "ByteLevel")) {
        p->type = P_BYTELEVEL;
        json_t *aps = json_object_get(j, "add_prefix_space"), *ur = json_object_get(j, "use_regex");
        p->add_prefix_space = aps ? json_is_true(aps) : 1;
        if (!ur || json_is_true(ur)) {
            p->behavior = B_ISOLATED;
            if (!(p->re = tb_regex_compile(GPT2_REGEX, sizeof GPT2_REGEX - 1, 0, err))) goto fail;
        }
    } else if (!strcmp(type, "Digits")) {
        p->type = P_DIGITS;
        p->individual_digits = json_is_true(json_object_get(j, "individual_digits"));
    } else if (!strcmp(type, "Metaspace")) {
        p->type = P_METASPACE;
        json_t *r = json_object_get(j, "replacement");
        if (!json_is_string(r) || !json_string_length(r)) r = json_string("\xE2\x96\x81");
        else json_incref(r);
        p->repl = dup_json_string(r, &p->repl_len);
        json_decref(r);
        if (!p->repl) { lm_errf(err, "out of memory"); goto fail; }
        const char *scheme = json_string_value(json_object_get(j, "prepend_scheme"));
        json_t *aps = json_object_get(j, "add_prefix_space");
        if (scheme && !strcmp(scheme, "first")) p->prepend_scheme = PREPEND_FIRST;
        else if (scheme && !strcmp(scheme, "never")) p->prepend_scheme = PREPEND_NEVER;
        else if (!scheme && aps && !json_is_true(aps)) p->prepend_scheme = PREPEND_NEVER;
        else p->prepend_scheme = PREPEND_ALWAYS;
        json_t *sp = json_object_get(j, "split");
        p->split = sp ? json_is_true(sp) : 1;
    } else {
        lm_errf(err, "unsupported pre_tokenizer type \"%.40s\"", type);
        goto fail;
    }
    *out = p;
    return 0;
fail:
    tb_pretok_free(p);
    return -1;
}

void tb_pretok_free(tb_pretok *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_kids; i++) tb_pretok_free(p->kids[i]);
    free(p->kids);
    if (p->re) pcre2_code_free(p->re);
    free(p->repl);
    free(p);
}

/* Segments of s: [start, end) and whether it was a match. */
typedef struct { size_t s, e; int m; } seg;
typedef struct { seg *v; size_t n, cap; } seg_vec;

static int seg_add(seg_vec *sv, size_t s, size_t e, int m) {
    if (s == e) return 0;
    if (LM_GROW(sv->v, sv->cap, sv->n + 1) != 0) return -1;
    sv->v[sv->n++] = (seg){s, e, m};
    return 0;
}

/* Applies a split behaviour to segments, appending the resulting pieces of s to out. */
static int emit_segments(const seg_vec *sv, int behavior, const char *s, tb_pieces *out) {
    size_t first_piece = out->n;
    int prev_match = 0;
    if (behavior == B_MERGED_NEXT) {
        /* Walk backwards, gluing each match onto the piece that follows it. */
        seg *tmp = malloc((sv->n + 1) * sizeof *tmp);
        size_t k = 0;
        if (!tmp) return -1;
        for (size_t i = sv->n; i-- > 0;) {
            seg g = sv->v[i];
            if (g.m && !prev_match && k) tmp[k - 1].s = g.s;
            else tmp[k++] = g;
            prev_match = g.m;
        }
        for (size_t i = k; i-- > 0;)
            if (tb_pieces_add(out, s + tmp[i].s, tmp[i].e - tmp[i].s, -1)) { free(tmp); return -1; }
        free(tmp);
        return 0;
    }
    size_t last_s = 0;
    for (size_t i = 0; i < sv->n; i++) {
        seg g = sv->v[i];
        int extend = 0;
        if (behavior == B_REMOVED && g.m) { prev_match = 1; continue; }
        if (behavior == B_MERGED_PREV && g.m && !prev_match && out->n > first_piece) extend = 1;
        if (behavior == B_CONTIGUOUS && g.m && prev_match && out->n > first_piece) extend = 1;
        prev_match = g.m;
        if (extend) {
            /* pieces from one string are contiguous: re-add the widened last piece */
            out->n--;
            out->bytes.len = out->off[out->n];
            if (tb_pieces_add(out, s + last_s, g.e - last_s, -1)) return -1;
        } else {
            last_s = g.s;
            if (tb_pieces_add(out, s + g.s, g.e - g.s, -1)) return -1;
        }
    }
    return 0;
}

static int split_regex(const pcre2_code *re, int behavior, int invert, const char *s, size_t len,
                       tb_pieces *out, char *err) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    seg_vec sv = {0};
    int failed = 0, rc = 0;
    size_t pos = 0, ms, me;
    if (!md) return lm_errf(err, "out of memory");
    while (!rc && next_match(re, md, s, len, pos, &ms, &me, err, &failed)) {
        if (seg_add(&sv, pos, ms, invert) || seg_add(&sv, ms, me, !invert)) rc = lm_errf(err, "out of memory");
        pos = me;
    }
    if (!rc && failed) rc = -1;
    if (!rc && seg_add(&sv, pos, len, invert)) rc = lm_errf(err, "out of memory");
    if (!rc && emit_segments(&sv, behavior, s, out)) rc = lm_errf(err, "out of memory");
    pcre2_match_data_free(md);
    free(sv.v);
    return rc;
}

static int byte_level_map(const char *s, size_t len, tb_pieces *out) {
    lm_strbuf b = {0};
    if (lm_strbuf_reserve(&b, len * 2)) return -1;
    for (size_t i = 0; i < len; i++) b.len += lm_utf8_put(tb_byte_to_cp((unsigned char)s[i]), b.data + b.len);
    int rc = tb_pieces_add(out, b.data, b.len, -1);
    lm_strbuf_free(&b);
    return rc;
}

/* One pre-tokenizer (not a Sequence) on one piece. */
static int pretok_one(const tb_pretok *p, const char *s, size_t len, int at_text_start,
                      tb_pieces *out, char *err) {
    switch (p->type) {
    case P_SPLIT:
        return split_regex(p->re, p->behavior, p->invert, s, len, out, err);
    case P_BYTELEVEL: {
        lm_strbuf pre = {0};
        if (p->add_prefix_space && (len == 0 || s[0] != ' ')) {
            if (lm_strbuf_append(&pre, " ", 1) || lm_strbuf_append(&pre, s, len)) { lm_strbuf_free(&pre); return lm_errf(err, "out of memory"); }
            s = pre.data;
            len = pre.len;
        }
        int rc = 0;
        if (p->re) {
            tb_pieces words = {0};
            rc = split_regex(p->re, B_ISOLATED, 0, s, len, &words, err);
            for (size_t i = 0; !rc && i < words.n; i++)
                if (byte_level_map(TB_PIECE(&words, i), words.len[i], out)) rc = lm_errf(err, "out of memory");
            tb_pieces_free(&words);
        } else if (len && byte_level_map(s, len, out)) {
            rc = lm_errf(err, "out of memory");
        }
        lm_strbuf_free(&pre);
        return rc;
    }
    case P_DIGITS: {
        seg_vec sv = {0};
        size_t i = 0;
        int rc = 0;
        while (!rc && i < len) {
            int digit = s[i] >= '0' && s[i] <= '9';
            size_t j = i + 1;
            if (!digit || !p->individual_digits)
                while (j < len && (s[j] >= '0' && s[j] <= '9') == digit) j++;
            if (seg_add(&sv, i, j, digit)) rc = -1;
            i = j;
        }
        if (!rc) rc = emit_segments(&sv, B_ISOLATED, s, out);
        free(sv.v);
        return rc ? lm_errf(err, "out of memory") : 0;
    }
    case P_METASPACE: {
        lm_strbuf b = {0};
        int rc = 0;
        int starts;
        size_t i;
        /* replace spaces first, then decide on the prefix */
        lm_strbuf r = {0};
        for (i = 0; i < len && !rc; i++)
            rc = s[i] == ' ' ? lm_strbuf_append(&r, p->repl, p->repl_len) : lm_strbuf_append(&r, s + i, 1);
        if (!rc && !r.data) rc = lm_strbuf_append(&r, "", 0);
        if (!rc) {
            starts = r.len >= p->repl_len && !memcmp(r.data, p->repl, p->repl_len);
            int prepend = !starts && (p->prepend_scheme == PREPEND_ALWAYS ||
                                      (p->prepend_scheme == PREPEND_FIRST && at_text_start));
            if (prepend) rc = lm_strbuf_append(&b, p->repl, p->repl_len);
            if (!rc) rc = lm_strbuf_append(&b, r.data, r.len);
        }
        if (!rc) {
            if (p->split) {
                /* split on the replacement, each piece starting with it (MergedWithNext) */
                seg_vec sv = {0};
                size_t from = 0;
                for (i = 0; !rc && i + p->repl_len <= b.len;) {
                    if (!memcmp(b.data + i, p->repl, p->repl_len)) {
                        if (seg_add(&sv, from, i, 0) || seg_add(&sv, i, i + p->repl_len, 1)) rc = -1;
                        i += p->repl_len;
                        from = i;
                    } else i++;
                }
                if (!rc && seg_add(&sv, from, b.len, 0)) rc = -1;
                if (!rc) rc = emit_segments(&sv, B_MERGED_NEXT, b.data, out);
                free(sv.v);
            } else if (b.len) {
                rc = tb_pieces_add(out, b.data, b.len, -1);
            }
        }
        lm_strbuf_free(&b);
        lm_strbuf_free(&r);
        return rc ? lm_errf(err, "out of memory") : 0;
    }
    }
    return lm_errf(err, "internal: bad pre-tokenizer");
}

int tb_pretokenize(const tb_pretok *p, const char *s, size_t len, int at_text_start,
                   tb_pieces *out, char *err) {
    if (p->type != P_SEQ) return pretok_one(p, s, len, at_text_start, out, err);
    /* Sequence: feed every piece of stage k through stage k+1. */
    tb_pieces a = {0}, b = {0};
    int rc = tb_pieces_add(&a, s, len, -1) ? lm_errf(err, "out of memory") : 0;
    for (size_t k = 0; !rc && k < p->n_kids; k++) {
        tb_pieces_clear(&b);
        for (size_t i = 0; !rc && i < a.n; i++)
            rc = tb_pretokenize(p->kids[k], TB_PIECE(&a, i), a.len[i], at_text_start && i == 0, &b, err);
        tb_pieces t = a; a = b; b = t;
    }
    for (size_t i = 0; !rc && i < a.n; i++)
        if (a.len[i] && tb_pieces_add(out, TB_PIECE(&a, i), a.len[i], -1)) rc = lm_errf(err, "out of memory");
    tb_pieces_free(&a);
    tb_pieces_free(&b);
    return rc;
}

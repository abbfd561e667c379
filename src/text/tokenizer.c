/* Tokenizer loading, added tokens and the encode pipeline.
 *
 * encode(text) follows the reference (tokenizers / transformers.js) step by step:
 *   1. split out added tokens whose `normalized` is false (leftmost-longest match; lstrip /
 *      rstrip swallow neighbouring whitespace; single_word needs word boundaries);
 *   2. normalize each remaining section, then split out the `normalized` added tokens;
 *   3. pre-tokenize each remaining piece into words;
 *   4. BPE-encode each word (tokenizer_bpe.c);
 *   5. with add_special, wrap the ids in the post-processor's template (e.g. Llama 3's
 *      <|begin_of_text|>).
 * Everything is UTF-8 bytes; invalid input is repaired to U+FFFD first.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "platform/platform.h"
#include "text/tokenizer_internal.h"
#include "text/tokenizer_gguf.h"
#include "text/unicode.h"

enum { MAX_ADDED_TOKENS = 1 << 20 };

int tb_set_token(lm_tokenizer *tok, int32_t id, const char *s, size_t len) {
    if (id < 0 || len >= UINT32_MAX) return -1;
    if ((size_t)id >= tok->n_ids) {
        size_t n = tok->n_ids ? tok->n_ids : 1024;
        while (n <= (size_t)id) n *= 2;
        if (LM_RESIZE(tok->id_off, n) || LM_RESIZE(tok->id_len, n) || LM_RESIZE(tok->id_is_special, n) ||
            LM_RESIZE(tok->id_is_added, n))
            return -1;
        for (size_t i = tok->n_ids; i < n; i++) {
            tok->id_len[i] = UINT32_MAX;
            tok->id_is_special[i] = 0;
            tok->id_is_added[i] = 0;
            tok->id_off[i] = 0;
        }
        tok->n_ids = n;
    }
    if (tok->id_text.len + len >= UINT32_MAX) return -1;
    tok->id_off[id] = (uint32_t)tok->id_text.len;
    tok->id_len[id] = (uint32_t)len;
    return lm_strbuf_append(&tok->id_text, s, len);
}

/* ---- added tokens ------------------------------------------------------------------- */

/* Sort key of one added token in a matcher: first byte ascending, then longest first. */
typedef struct { unsigned char first; size_t len; uint32_t index; } matcher_key;

static int cmp_matcher_key(const void *a, const void *b) {
    const matcher_key *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int build_matcher(lm_tokenizer *tok, tb_matcher *m, int normalized) {
    m->use_norm = normalized;
    m->order = malloc((tok->n_added + 1) * sizeof *m->order);
    if (!m->order) return -1;
    matcher_key *keys = malloc((tok->n_added + 1) * sizeof *keys);
    if (!keys) return -1;
    m->n = 0;
    for (size_t i = 0; i < tok->n_added; i++) {
        const tb_added *a = &tok->added[i];
        int use = normalized ? (a->normalized && tok->normalizer) : !(a->normalized && tok->normalizer);
        size_t len = normalized ? a->norm_len : a->len;
        if (use && len)
            keys[m->n++] = (matcher_key){(unsigned char)(normalized ? a->norm : a->content)[0], len, (uint32_t)i};
    }
    qsort(keys, m->n, sizeof *keys, cmp_matcher_key);
    for (size_t i = 0; i < m->n; i++) m->order[i] = keys[i].index;
    free(keys);
    size_t j = 0;
    for (int b = 0; b < 256; b++) {
        m->first[b] = (uint32_t)j;
        while (j < m->n) {
            const tb_added *a = &tok->added[m->order[j]];
            if ((unsigned char)(normalized ? a->norm : a->content)[0] != b) break;
            j++;
        }
    }
    m->first[256] = (uint32_t)m->n;
    return 0;
}

static int is_word_byte_at(const char *s, size_t len, size_t i) {
    unsigned char c = (unsigned char)s[i];
    (void)len;
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* One section produced by added-token splitting: [s, e) of the text, added index or -1. */
typedef struct { size_t s, e; int32_t added; } section;
typedef struct { section *v; size_t n, cap; } section_vec;

static int section_add(section_vec *sv, size_t s, size_t e, int32_t added) {
    if (s == e && added < 0) return 0;
    if (LM_GROW(sv->v, sv->cap, sv->n + 1) != 0) return -1;
    sv->v[sv->n++] = (section){s, e, added};
    return 0;
}

/* Length of the whitespace code point ending at s[e-1] / starting at s[i], or 0. */
static size_t space_before(const char *s, size_t lo, size_t e) {
    if (e <= lo) return 0;
    size_t p = e - 1;
    while (p > lo && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
    uint32_t cp;
    size_t k = lm_utf8_next((const unsigned char *)s + p, e - p, &cp);
    return k == e - p && tb_is_unicode_space(cp) ? k : 0;
}

static size_t space_after(const char *s, size_t i, size_t len) {
    uint32_t cp;
    size_t k = lm_utf8_next((const unsigned char *)s + i, len - i, &cp);
    return k && tb_is_unicode_space(cp) ? k : 0;
}

static int split_added(const lm_tokenizer *tok, const tb_matcher *m, const char *s, size_t len,
                       section_vec *out) {
    size_t prev = 0, i = 0;
    out->n = 0;
    while (i < len && m->n) {
        unsigned char c = (unsigned char)s[i];
        int32_t found = -1;
        size_t flen = 0;
        for (uint32_t j = m->first[c]; j < m->first[c + 1]; j++) {
            const tb_added *a = &tok->added[m->order[j]];
            const char *t = m->use_norm ? a->norm : a->content;
            size_t tl = m->use_norm ? a->norm_len : a->len;
            if (tl > len - i || memcmp(s + i, t, tl) != 0) continue;
            if (a->single_word && ((i > 0 && is_word_byte_at(s, len, i - 1)) ||
                                   (i + tl < len && is_word_byte_at(s, len, i + tl))))
                continue;
            found = (int32_t)m->order[j];
            flen = tl;
            break;
        }
        if (found < 0) { i++; continue; }
        const tb_added *a = &tok->added[found];
        size_t ms = i, me = i + flen, k;
        if (a->lstrip) while ((k = space_before(s, prev, ms))) ms -= k;
        if (a->rstrip) while (me < len && (k = space_after(s, me, len))) me += k;
        if (section_add(out, prev, ms, -1) || section_add(out, ms, me, found)) return -1;
        prev = i = me;
    }
    return section_add(out, prev, len, -1);
}

/* ---- loading ------------------------------------------------------------------------ */

static int32_t lookup_content(const lm_tokenizer *tok, const char *s, size_t len) {
    int32_t a = tb_strmap_get(&tok->added_by_content, s, len, -1);
    if (a >= 0) return tok->added[a].id;
    return tok->bpe ? tb_bpe_vocab_id(tok->bpe, s, len) : tok->spm ? tb_spm_vocab_id(tok->spm, s, len) : -1;
}

static int parse_added(lm_tokenizer *tok, json_t *arr, char *err) {
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return lm_errf(err, "added_tokens: expected an array");
    size_t n = json_array_size(arr);
    if (n > MAX_ADDED_TOKENS) return lm_errf(err, "added_tokens: too many (%zu)", n);
    tok->added = calloc(n + 1, sizeof *tok->added);
    if (!tok->added) return lm_errf(err, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, i);
        json_t *id = json_object_get(e, "id"), *content = json_object_get(e, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24) ||
            !json_is_string(content) || !json_string_length(content))
            return lm_errf(err, "added_tokens[%zu]: needs an integer \"id\" and a non-empty \"content\"", i);
        tb_added *a = &tok->added[tok->n_added++];
        a->len = json_string_length(content);
        a->content = malloc(a->len + 1);
        if (!a->content) return lm_errf(err, "out of memory");
        memcpy(a->content, json_string_value(content), a->len + 1);
        a->id = (int32_t)json_integer_value(id);
        a->special = json_is_true(json_object_get(e, "special"));
        a->lstrip = json_is_true(json_object_get(e, "lstrip"));
        a->rstrip = json_is_true(json_object_get(e, "rstrip"));
        a->single_word = json_is_true(json_object_get(e, "single_word"));
        json_t *norm = json_object_get(e, "normalized");
        a->normalized = norm ? json_is_true(norm) : !a->special;
        if (tb_set_token(tok, a->id, a->content, a->len) ||
            tb_strmap_put(&tok->added_by_content, a->content, a->len, (int32_t)(tok->n_added - 1)))
            return lm_errf(err, "out of memory");
        tok->id_is_added[a->id] = 1;
        tok->id_is_special[a->id] = a->special;
    }
    return 0;
}

/* Normalized spelling of each `normalized` added token (matched after normalization). */
static int normalize_added(lm_tokenizer *tok, char *err) {
    for (size_t i = 0; i < tok->n_added; i++) {
        tb_added *a = &tok->added[i];
        if (a->normalized && tok->normalizer) {
            if (tb_normalize(tok->normalizer, a->content, a->len, &a->norm, &a->norm_len, err)) return -1;
            if (a->norm_len && tb_strmap_put(&tok->added_by_content, a->norm, a->norm_len, (int32_t)i))
                return lm_errf(err, "out of memory");
        }
    }
    return 0;
}

static int append_ids(int32_t **v, size_t *n, const int32_t *src, size_t k) {
    int32_t *p = realloc(*v, (*n + k + 1) * sizeof *p);
    if (!p) return -1;
    if (k) memcpy(p + *n, src, k * sizeof *p);
    *v = p;
    *n += k;
    return 0;
}

/* Looks up a TemplateProcessing special token's ids. */
static int template_special(json_t *pp, json_t *item, int32_t **dst, size_t *n, char *err) {
    const char *name = json_string_value(json_object_get(item, "id"));
    json_t *st = json_object_get(json_object_get(pp, "special_tokens"), name ? name : "");
    json_t *ids = json_object_get(st, "ids");
    if (!name || !json_is_array(ids))
        return lm_errf(err, "post_processor TemplateProcessing: special token \"%.60s\" has no ids", name ? name : "?");
    for (size_t i = 0; i < json_array_size(ids); i++) {
        json_t *v = json_array_get(ids, i);
        if (!json_is_integer(v)) return lm_errf(err, "post_processor: special token ids must be integers");
        int32_t id = (int32_t)json_integer_value(v);
        if (append_ids(dst, n, &id, 1)) return lm_errf(err, "out of memory");
    }
    return 0;
}

/* Parses a post-processor into tok->post (prefix and suffix ids around sequence A).
 * A Sequence of processors nests: later ones wrap earlier ones. */
static int parse_post(lm_tokenizer *tok, json_t *pp, char *err) {
    if (!pp || json_is_null(pp)) return 0;
    const char *type = json_string_value(json_object_get(pp, "type"));
    if (!type) return lm_errf(err, "post_processor: missing \"type\"");
    if (!strcmp(type, "ByteLevel")) return 0;  /* only affects offsets */
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(pp, "processors");
        if (!json_is_array(arr)) return lm_errf(err, "post_processor Sequence: \"processors\" must be an array");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (parse_post(tok, json_array_get(arr, i), err)) return -1;
        return 0;
    }
    int32_t *pre = NULL, *suf = NULL;
    size_t npre = 0, nsuf = 0;
    int rc = 0;
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(pp, "single");
        if (!json_is_array(single)) return lm_errf(err, "post_processor TemplateProcessing: \"single\" must be an array");
        int seen_a = 0;
        for (size_t i = 0; !rc && i < json_array_size(single); i++) {
            json_t *item = json_array_get(single, i);
            json_t *sp = json_object_get(item, "SpecialToken"), *sq = json_object_get(item, "Sequence");
            if (sp) rc = seen_a ? template_special(pp, sp, &suf, &nsuf, err) : template_special(pp, sp, &pre, &npre, err);
            else if (sq) seen_a = 1;
            else rc = lm_errf(err, "post_processor TemplateProcessing: unknown item in \"single\"");
        }
    } else if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        json_t *cls = json_object_get(pp, "cls"), *sep = json_object_get(pp, "sep");
        if (!json_is_integer(json_array_get(cls, 1)) || !json_is_integer(json_array_get(sep, 1)))
            return lm_errf(err, "post_processor %s: \"cls\"/\"sep\" must be [token, id]", type);
        int32_t c = (int32_t)json_integer_value(json_array_get(cls, 1)), s = (int32_t)json_integer_value(json_array_get(sep, 1));
        if (append_ids(&pre, &npre, &c, 1) || append_ids(&suf, &nsuf, &s, 1)) rc = lm_errf(err, "out of memory");
    } else {
        return lm_errf(err, "unsupported post_processor type \"%.40s\"", type);
    }
    /* wrap: new prefix = pre + old prefix; new suffix = old suffix + suf */
    if (!rc && (append_ids(&pre, &npre, tok->post.prefix, tok->post.n_prefix) ||
                append_ids(&tok->post.suffix, &tok->post.n_suffix, suf, nsuf)))
        rc = lm_errf(err, "out of memory");
    if (!rc) {
        free(tok->post.prefix);
        tok->post.prefix = pre;
        tok->post.n_prefix = npre;
        pre = NULL;
    }
    free(pre);
    free(suf);
    return rc;
}

static int32_t config_token(lm_tokenizer *tok, json_t *v) {
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -1;
    return lookup_content(tok, json_string_value(v), json_string_length(v));
}

static void apply_config(lm_tokenizer *tok, json_t *cfg) {
    tok->bos_id = config_token(tok, json_object_get(cfg, "bos_token"));
    tok->eos_id = config_token(tok, json_object_get(cfg, "eos_token"));
    json_t *cu = json_object_get(cfg, "clean_up_tokenization_spaces");
    if (json_is_boolean(cu)) tok->cleanup_default = json_is_true(cu);
}

static int load_config(lm_tokenizer *tok, const char *path, char *err) {
    struct stat st;
    if (stat(path, &st) != 0) return 0;  /* optional */
    if (lm_refuse_special_file(path, err)) return -1;
    json_error_t je;
    json_t *cfg = json_load_file(path, JSON_DECODE_INT_AS_REAL, &je);  /* model_max_length can be 1e30 */
    if (!cfg) return lm_errf(err, "%s: line %d: %s", path, je.line, je.text);
    if (!json_is_object(cfg)) { json_decref(cfg); return lm_errf(err, "%s: expected a JSON object", path); }
    apply_config(tok, cfg);
    json_decref(cfg);
    return 0;
}

static int load_json(lm_tokenizer *tok, json_t *root, char *err) {
    if (!json_is_object(root)) return lm_errf(err, "expected a JSON object");
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return lm_errf(err, "missing \"model\" object");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (mtype && !strcmp(mtype, "LlamaSPM")) {
        if (tb_spm_parse(model, tok, &tok->spm, err)) return -1;
    } else if (mtype ? strcmp(mtype, "BPE") != 0 : !json_object_get(model, "merges")) {
        return lm_errf(err, "unsupported model type \"%.40s\" (only BPE is implemented)", mtype ? mtype : "?");
    } else if (tb_bpe_parse(model, tok, &tok->bpe, err)) {
        return -1;
    }
    if (parse_added(tok, json_object_get(root, "added_tokens"), err)) return -1;
    if (tb_normalizer_parse(json_object_get(root, "normalizer"), &tok->normalizer, err)) return -1;
    if (tb_pretok_parse(json_object_get(root, "pre_tokenizer"), &tok->pretok, err)) return -1;
    if (parse_post(tok, json_object_get(root, "post_processor"), err)) return -1;
    if (tb_decoder_parse(json_object_get(root, "decoder"), &tok->decoder, err)) return -1;
    if (normalize_added(tok, err)) return -1;
    if (build_matcher(tok, &tok->match_raw, 0) || build_matcher(tok, &tok->match_norm, 1))
        return lm_errf(err, "out of memory");
    return 0;
}

int lm_tokenizer_load(const char *path, lm_tokenizer **out, char err[LM_ERR_LEN]) {
    *out = NULL;
    if (gguf_is_path(path)) {
        gguf_archive *g;
        if (gguf_open(&g, path, err) != 0) return -1;
        int rc = lm_tokenizer_from_gguf(g, out, err);
        gguf_close(g);
        return rc ? lm_err_prefix(err, "%s", path) : 0;
    }
    struct stat st;
    if (stat(path, &st) != 0) return lm_errf(err, "%s: no such file or directory", path);
    size_t plen = strlen(path);
    char *json_path = malloc(plen + 32), *cfg_path = malloc(plen + 32);
    if (!json_path || !cfg_path) { free(json_path); free(cfg_path); return lm_errf(err, "out of memory"); }
    if (S_ISDIR(st.st_mode)) {
        snprintf(json_path, plen + 32, "%s/tokenizer.json", path);
        snprintf(cfg_path, plen + 32, "%s/tokenizer_config.json", path);
    } else {
        memcpy(json_path, path, plen + 1);
        const char *slash = strrchr(path, '/');
        int dir_len = slash ? (int)(slash - path) : 1;
        snprintf(cfg_path, plen + 32, "%.*s/tokenizer_config.json", dir_len, slash ? path : ".");
    }
    lm_tokenizer *tok = calloc(1, sizeof *tok);
    json_t *root = NULL;
    int rc = -1;
    if (!tok) { lm_errf(err, "out of memory"); goto done; }
    tok->bos_id = tok->eos_id = -1;
    tok->cleanup_default = 1;
    json_error_t je;
    if (lm_refuse_special_file(json_path, err)) goto done;
    root = json_load_file(json_path, 0, &je);
    if (!root) { lm_errf(err, "%s: line %d: %s", json_path, je.line, je.text); goto done; }
    if (load_json(tok, root, err)) { lm_err_prefix(err, "%s", json_path); goto done; }
    json_decref(root);
    root = NULL;  /* free the DOM before reading the config */
    if (load_config(tok, cfg_path, err)) goto done;
    rc = 0;
done:
    if (root) json_decref(root);
    free(json_path);
    free(cfg_path);
    if (rc) lm_tokenizer_free(tok);
    else *out = tok;
    return rc;
}

int lm_tokenizer_load_json(json_t *tokenizer, json_t *config, lm_tokenizer **out, char err[LM_ERR_LEN]) {
    *out = NULL;
    lm_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return lm_errf(err, "out of memory");
    tok->bos_id = tok->eos_id = -1;
    tok->cleanup_default = 1;
    if (load_json(tok, tokenizer, err)) {
        lm_tokenizer_free(tok);
        return -1;
    }
    if (json_is_object(config)) apply_config(tok, config);
    *out = tok;
    return 0;
}

void lm_tokenizer_free(lm_tokenizer *tok) {
    if (!tok) return;
    lm_strbuf_free(&tok->id_text);
    free(tok->id_off); free(tok->id_len); free(tok->id_is_special); free(tok->id_is_added);
    tb_normalizer_free(tok->normalizer);
    tb_pretok_free(tok->pretok);
    tb_bpe_free(tok->bpe);
    tb_spm_free(tok->spm);
    tb_decoder_free(tok->decoder);
    free(tok->post.prefix); free(tok->post.suffix);
    for (size_t i = 0; i < tok->n_added; i++) { free(tok->added[i].content); free(tok->added[i].norm); }
    free(tok->added);
    tb_strmap_free(&tok->added_by_content);
    free(tok->match_raw.order); free(tok->match_norm.order);
    free(tok);
}

/* ---- encode ------------------------------------------------------------------------- */

typedef struct { int32_t *v; size_t n, cap; } id_vec;

static int id_push(id_vec *ids, int32_t id) {
    if (LM_GROW(ids->v, ids->cap, ids->n + 1) != 0) return -1;
    ids->v[ids->n++] = id;
    return 0;
}

/* Normalizes, splits normalized added tokens, pre-tokenizes and BPE-encodes one section. */
static int encode_section(lm_tokenizer *tok, const char *s, size_t len, int at_text_start, size_t max_ids,
                          id_vec *ids, char *err) {
    char *norm = NULL;
    size_t norm_len = len;
    const char *text = s;
    if (tok->normalizer) {
        if (tb_normalize(tok->normalizer, s, len, &norm, &norm_len, err)) return -1;
        text = norm;
    }
    section_vec subs = {0};
    tb_pieces words = {0};
    int rc = split_added(tok, &tok->match_norm, text, norm_len, &subs) ? lm_errf(err, "out of memory") : 0;
    for (size_t k = 0; !rc && k < subs.n && ids->n <= max_ids; k++) {
        section sub = subs.v[k];
        if (sub.added >= 0) { if (id_push(ids, tok->added[sub.added].id)) rc = lm_errf(err, "out of memory"); continue; }
        tb_pieces_clear(&words);
        if (tok->pretok) rc = tb_pretokenize(tok->pretok, text + sub.s, sub.e - sub.s, at_text_start && sub.s == 0, &words, err);
        else if (tb_pieces_add(&words, text + sub.s, sub.e - sub.s, -1)) rc = lm_errf(err, "out of memory");
        for (size_t w = 0; !rc && w < words.n && ids->n <= max_ids; w++)
            rc = tb_bpe_encode_word(tok->bpe, tok, TB_PIECE(&words, w), words.len[w], &ids->v, &ids->n, &ids->cap, err);
    }
    free(subs.v);
    tb_pieces_free(&words);
    free(norm);
    return rc;
}

int lm_tokenizer_encode(lm_tokenizer *tok, const char *text, size_t len, int add_special,
                        int32_t **ids_out, size_t *n_ids, char err[LM_ERR_LEN]) {
    return lm_tokenizer_encode_max(tok, text, len, add_special, SIZE_MAX - 1, ids_out, n_ids, err);
}

int lm_tokenizer_encode_max(lm_tokenizer *tok, const char *text, size_t len, int add_special, size_t max_ids,
                            int32_t **ids_out, size_t *n_ids, char err[LM_ERR_LEN]) {
    char *fixed = NULL;
    size_t fixed_len;
    *ids_out = NULL;
    *n_ids = 0;
    if (!text) len = 0;
    if (len && !lm_utf8_valid(text, len)) {
        if (lm_utf8_sanitize(text, len, &fixed, &fixed_len)) return lm_errf(err, "out of memory");
        text = fixed;
        len = fixed_len;
    }
    id_vec ids = {0};
    section_vec secs = {0};
    int rc = 0;
    if (add_special)
        for (size_t i = 0; !rc && i < tok->post.n_prefix; i++) rc = id_push(&ids, tok->post.prefix[i]);
    if (!rc && len && split_added(tok, &tok->match_raw, text, len, &secs)) rc = -1;
    if (rc) lm_errf(err, "out of memory");
    /* SentencePiece (GGUF "llama"): a section gets the space prefix when it starts the
     * text or follows an added token, as llama.cpp's tokenize does */
    int prev_added = 1;
    for (size_t k = 0; !rc && k < secs.n && ids.n <= max_ids; k++) {
        section s = secs.v[k];
        if (s.added >= 0) { if (id_push(&ids, tok->added[s.added].id)) rc = lm_errf(err, "out of memory"); prev_added = 1; continue; }
        if (tok->spm)
            rc = tb_spm_encode(tok->spm, text + s.s, s.e - s.s, prev_added && tb_spm_add_space_prefix(tok->spm), max_ids,
                               &ids.v, &ids.n, &ids.cap, err);
        else
            rc = encode_section(tok, text + s.s, s.e - s.s, s.s == 0, max_ids, &ids, err);
        prev_added = 0;
    }
    if (add_special && ids.n <= max_ids)
        for (size_t i = 0; !rc && i < tok->post.n_suffix; i++)
            if (id_push(&ids, tok->post.suffix[i])) rc = lm_errf(err, "out of memory");
    if (!rc && !ids.v && !(ids.v = malloc(sizeof(int32_t)))) rc = lm_errf(err, "out of memory");
    free(secs.v);
    free(fixed);
    if (rc) { free(ids.v); return -1; }
    *ids_out = ids.v;
    *n_ids = ids.n;
    return 0;
}

/* ---- lookups ------------------------------------------------------------------------ */

int32_t lm_tokenizer_token_to_id(const lm_tokenizer *tok, const char *token, size_t len) {
    return lookup_content(tok, token, len);
}

const char *lm_tokenizer_id_to_token(const lm_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= tok->n_ids || tok->id_len[id] == UINT32_MAX) return NULL;
    if (len) *len = tok->id_len[id];
    return tok->id_text.data + tok->id_off[id];
}

size_t lm_tokenizer_n_vocab(const lm_tokenizer *tok) {
    size_t n = tok->n_ids;
    while (n && tok->id_len[n - 1] == UINT32_MAX) n--;
    return n;
}

int lm_tokenizer_is_special(const lm_tokenizer *tok, int32_t id) {
    return id >= 0 && (size_t)id < tok->n_ids && tok->id_is_special[id];
}

int32_t lm_tokenizer_special_id(const lm_tokenizer *tok, const char *content) {
    int32_t a = tb_strmap_get(&tok->added_by_content, content, strlen(content), -1);
    return a >= 0 ? tok->added[a].id : -1;
}

int32_t lm_tokenizer_bos_id(const lm_tokenizer *tok) { return tok->bos_id; }
int32_t lm_tokenizer_eos_id(const lm_tokenizer *tok) { return tok->eos_id; }
int lm_tokenizer_default_cleanup(const lm_tokenizer *tok) { return tok->cleanup_default; }

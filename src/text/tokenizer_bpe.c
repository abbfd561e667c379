/* The BPE model: vocabulary, merge ranks, and the merge loop.
 *
 * A word (one pre-token) starts as one symbol per character, each already mapped to its
 * vocabulary id (or to <0xNN> byte tokens with byte_fallback, or to unk). Merges are kept
 * as a hash map from the id pair (left, right) to (rank, merged id), so the merge loop
 * never touches strings: a binary heap holds candidate pairs ordered by (rank, position),
 * symbols form a doubly linked list, and a popped candidate is applied only if the two
 * symbols it names are still neighbours with the same ids (stale entries are skipped).
 * That is O(n log n) per word, which matters for 10k-character "words" such as base64.
 *
 * Results for words shorter than CACHE_MAX_WORD bytes are cached (word -> ids); the cache
 * is simply emptied when it grows past CACHE_MAX_ENTRIES.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "text/tokenizer_internal.h"
#include "text/unicode.h"

enum { CACHE_MAX_WORD = 256, CACHE_MAX_ENTRIES = 1 << 16, MAX_VOCAB_ID = 1 << 24 };

typedef struct { int32_t rank, pos; } bpe_cand;
typedef struct { int32_t id, prev, next; } bpe_sym;  /* id < 0: merged away */

struct tb_bpe {
    tb_strmap vocab;                 /* model vocabulary: token string -> id */
    uint64_t *pair_key;              /* (left id << 32 | right id); UINT64_MAX = empty */
    int32_t *pair_rank, *pair_id;
    size_t pair_cap, pair_count;
    int32_t unk_id;                  /* -1: unknown characters are dropped */
    char *prefix, *suffix;           /* continuing_subword_prefix, end_of_word_suffix */
    size_t prefix_len, suffix_len;
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_id[256];            /* id of "<0xNN>", -1 if absent */

    tb_strmap cache;                 /* word -> offset in cache_ids: [count, ids...] */
    int32_t *cache_ids;
    size_t cache_len, cache_cap;

    bpe_sym *sym;                    /* scratch for one word */
    bpe_cand *heap;
    size_t sym_cap, heap_cap;
};

static uint64_t pair_hash(uint64_t k) { return (k * 0x9E3779B97F4A7C15ull) >> 17; }

static int pair_put(tb_bpe *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    if ((m->pair_count + 1) * 2 > m->pair_cap) {
        size_t cap = m->pair_cap ? m->pair_cap * 2 : 1024;
        uint64_t *key = malloc(cap * sizeof *key);
        int32_t *rk = malloc(cap * sizeof *rk), *ids = malloc(cap * sizeof *ids);
        if (!key || !rk || !ids) { free(key); free(rk); free(ids); return -1; }
        memset(key, 0xFF, cap * sizeof *key);
        for (size_t i = 0; i < m->pair_cap; i++) {
            if (m->pair_key[i] == UINT64_MAX) continue;
            size_t j = pair_hash(m->pair_key[i]) & (cap - 1);
            while (key[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
            key[j] = m->pair_key[i]; rk[j] = m->pair_rank[i]; ids[j] = m->pair_id[i];
        }
        free(m->pair_key); free(m->pair_rank); free(m->pair_id);
        m->pair_key = key; m->pair_rank = rk; m->pair_id = ids; m->pair_cap = cap;
    }
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t j = pair_hash(k) & (m->pair_cap - 1);
    while (m->pair_key[j] != UINT64_MAX) {
        if (m->pair_key[j] == k) return 0;   /* a repeated merge keeps its first rank */
        j = (j + 1) & (m->pair_cap - 1);
    }
    m->pair_key[j] = k; m->pair_rank[j] = rank; m->pair_id[j] = id;
    m->pair_count++;
    return 0;
}

/* Rank of merging ids a,b (and the merged id in *id), or -1. */
static int32_t pair_get(const tb_bpe *m, int32_t a, int32_t b, int32_t *id) {
    if (!m->pair_cap || a < 0 || b < 0) return -1;
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t j = pair_hash(k) & (m->pair_cap - 1);
    while (m->pair_key[j] != UINT64_MAX) {
        if (m->pair_key[j] == k) { *id = m->pair_id[j]; return m->pair_rank[j]; }
        j = (j + 1) & (m->pair_cap - 1);
    }
    return -1;
}

int32_t tb_bpe_vocab_id(const tb_bpe *m, const char *s, size_t len) {
    return tb_strmap_get(&m->vocab, s, len, -1);
}

static int opt_string(json_t *model, const char *key, char **out, size_t *len) {
    json_t *v = json_object_get(model, key);
    *out = NULL; *len = 0;
    if (!json_is_string(v) || json_string_length(v) == 0) return 0;
    *len = json_string_length(v);
    *out = malloc(*len + 1);
    if (!*out) return -1;
    memcpy(*out, json_string_value(v), *len + 1);
    return 0;
}

/* Splits merge number `rank` into its two halves (a "left right" string or a pair). */
static int merge_halves(json_t *e, size_t rank, const char **a, size_t *alen, const char **b,
                        size_t *blen, char *err) {
    if (json_is_string(e)) {
        const char *s = json_string_value(e);
        size_t n = json_string_length(e);
        const char *sp = memchr(s, ' ', n);
        if (!sp || sp == s || sp + 1 == s + n)
            return lm_errf(err, "model.merges[%zu]: expected \"left right\"", rank);
        *a = s; *alen = (size_t)(sp - s); *b = sp + 1; *blen = n - *alen - 1;
        return 0;
    }
    if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
        json_is_string(json_array_get(e, 1))) {
        *a = json_string_value(json_array_get(e, 0)); *alen = json_string_length(json_array_get(e, 0));
        *b = json_string_value(json_array_get(e, 1)); *blen = json_string_length(json_array_get(e, 1));
        return 0;
    }
    return lm_errf(err, "model.merges[%zu]: expected a string or a pair of strings", rank);
}

int tb_bpe_parse(json_t *model, lm_tokenizer *tok, tb_bpe **out, char *err) {
    tb_bpe *m = calloc(1, sizeof *m);
    lm_strbuf joined = {0};
    if (!m) return lm_errf(err, "out of memory");
    m->unk_id = -1;
    for (int i = 0; i < 256; i++) m->byte_id[i] = -1;
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) { lm_errf(err, "model.vocab: expected an object"); goto fail; }
    if (merges && !json_is_array(merges) && !json_is_null(merges)) {
        lm_errf(err, "model.merges: expected an array"); goto fail;
    }
    if (json_is_number(json_object_get(model, "dropout")) && json_number_value(json_object_get(model, "dropout")) > 0) {
        lm_errf(err, "model: BPE dropout is not supported"); goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= MAX_VOCAB_ID) {
            lm_errf(err, "model.vocab[\"%.64s\"]: id must be an integer in [0, %d)", key, MAX_VOCAB_ID);
            goto fail;
        }
        int32_t id = (int32_t)json_integer_value(val);
        size_t klen = strlen(key);  /* jansson keys are NUL-free unless escaped \u0000 */
        if (tb_strmap_put(&m->vocab, key, klen, id) || tb_set_token(tok, id, key, klen)) {
            lm_errf(err, "out of memory"); goto fail;
        }
    }
    /* an empty vocabulary can encode nothing, and its tables would stay NULL */
    if (json_object_size(vocab) == 0) { lm_errf(err, "model.vocab is empty"); goto fail; }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_id[b] = tb_strmap_get(&m->vocab, name, 6, -1);
    }
    if (opt_string(model, "continuing_subword_prefix", &m->prefix, &m->prefix_len) ||
        opt_string(model, "end_of_word_suffix", &m->suffix, &m->suffix_len)) {
        lm_errf(err, "out of memory"); goto fail;
    }
    m->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    m->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    m->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) {
        m->unk_id = tb_strmap_get(&m->vocab, json_string_value(unk), json_string_length(unk), -1);
        if (m->unk_id < 0) { lm_errf(err, "model.unk_token \"%.64s\" is not in the vocabulary", json_string_value(unk)); goto fail; }
    }
    size_t n_merges = json_is_array(merges) ? json_array_size(merges) : 0;
    if (n_merges > INT32_MAX) { lm_errf(err, "model.merges: too many"); goto fail; }
    for (size_t r = 0; r < n_merges; r++) {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if (merge_halves(json_array_get(merges, r), r, &a, &alen, &b, &blen, err)) goto fail;
        int32_t ia = tb_strmap_get(&m->vocab, a, alen, -1), ib = tb_strmap_get(&m->vocab, b, blen, -1);
        /* With a continuing_subword_prefix the right half carries it; the merge drops it. */
        size_t skip = m->prefix_len && blen >= m->prefix_len && !memcmp(b, m->prefix, m->prefix_len) ? m->prefix_len : 0;
        joined.len = 0;
        if (lm_strbuf_append(&joined, a, alen) || lm_strbuf_append(&joined, b + skip, blen - skip)) { lm_errf(err, "out of memory"); goto fail; }
        int32_t im = tb_strmap_get(&m->vocab, joined.data, joined.len, -1);
        if (ia < 0 || ib < 0 || im < 0) {
            lm_errf(err, "model.merges[%zu]: \"%.*s\" + \"%.*s\" uses a token missing from the vocabulary",
                    r, (int)(alen > 40 ? 40 : alen), a, (int)(blen > 40 ? 40 : blen), b);
            goto fail;
        }
        if (pair_put(m, ia, ib, (int32_t)r, im)) { lm_errf(err, "out of memory"); goto fail; }
    }
    lm_strbuf_free(&joined);
    *out = m;
    return 0;
fail:
    lm_strbuf_free(&joined);
    tb_bpe_free(m);
    return -1;
}

void tb_bpe_free(tb_bpe *m) {
    if (!m) return;
    tb_strmap_free(&m->vocab);
    free(m->pair_key); free(m->pair_rank); free(m->pair_id);
    free(m->prefix); free(m->suffix);
    tb_strmap_free(&m->cache);
    free(m->cache_ids);
    free(m->sym); free(m->heap);
    free(m);
}

static int push_id(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
    if (LM_GROW(*ids, *cap, *n + 1) != 0) return -1;
    (*ids)[(*n)++] = id;
    return 0;
}

static int cand_less(bpe_cand x, bpe_cand y) { return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos); }

static void heap_push(bpe_cand *h, size_t *n, bpe_cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(c, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static bpe_cand heap_pop(bpe_cand *h, size_t *n) {
    bpe_cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        bpe_cand bv = last;
        if (l < *n && cand_less(h[l], bv)) { best = l; bv = h[l]; }
        if (l + 1 < *n && cand_less(h[l + 1], bv)) { best = l + 1; }
        if (best == i) break;
        h[i] = h[best];
        i = best;
    }
    if (*n) h[i] = last;
    return top;
}

/* Adds a symbol, growing scratch space. */
static int add_sym(tb_bpe *m, size_t *n_sym, int32_t id) {
    if (LM_GROW(m->sym, m->sym_cap, *n_sym + 1) != 0) return -1;
    size_t i = (*n_sym)++;
    m->sym[i].id = id;
    m->sym[i].prev = (int32_t)i - 1;
    m->sym[i].next = -1;
    if (i) m->sym[i - 1].next = (int32_t)i;
    return 0;
}

/* Symbols for one character c (clen bytes) of the word. */
static int char_symbols(tb_bpe *m, const char *c, size_t clen, int first, int last,
                        size_t *n_sym, lm_strbuf *tmp) {
    const char *s = c;
    size_t n = clen;
    if ((!first && m->prefix_len) || (last && m->suffix_len)) {
        tmp->len = 0;
        if ((!first && lm_strbuf_append(tmp, m->prefix, m->prefix_len)) || lm_strbuf_append(tmp, c, clen) ||
            (last && lm_strbuf_append(tmp, m->suffix, m->suffix_len)))
            return -1;
        s = tmp->data;
        n = tmp->len;
    }
    int32_t id = tb_strmap_get(&m->vocab, s, n, -1);
    if (id >= 0) return add_sym(m, n_sym, id);
    if (m->byte_fallback) {
        int all = 1;
        for (size_t i = 0; i < clen; i++) all &= m->byte_id[(unsigned char)c[i]] >= 0;
        if (all) {
            for (size_t i = 0; i < clen; i++)
                if (add_sym(m, n_sym, m->byte_id[(unsigned char)c[i]])) return -1;
            return 0;
        }
    }
    if (m->unk_id < 0) return 0;  /* no unk token: the character is dropped */
    if (m->fuse_unk && *n_sym && m->sym[*n_sym - 1].id == m->unk_id) return 0;
    return add_sym(m, n_sym, m->unk_id);
}

int tb_bpe_encode_word(tb_bpe *m, const lm_tokenizer *tok, const char *s, size_t len,
                       int32_t **ids, size_t *n, size_t *cap, char *err) {
    (void)tok;
    if (!len) return 0;
    if (m->ignore_merges) {
        int32_t id = tb_strmap_get(&m->vocab, s, len, -1);
        if (id >= 0) return push_id(ids, n, cap, id) ? lm_errf(err, "out of memory") : 0;
    }
    int cacheable = len < CACHE_MAX_WORD;
    if (cacheable) {
        int32_t at = tb_strmap_get(&m->cache, s, len, -1);
        if (at >= 0) {
            int32_t cnt = m->cache_ids[at];
            for (int32_t i = 0; i < cnt; i++)
                if (push_id(ids, n, cap, m->cache_ids[at + 1 + i])) return lm_errf(err, "out of memory");
            return 0;
        }
    }
    /* 1. one symbol per character */
    size_t n_sym = 0;
    lm_strbuf tmp = {0};
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = u[i] < 0x80 ? 1 : lm_utf8_next(u + i, len - i, &cp);
        if (!k) k = 1;  /* cannot happen for repaired input; treat a stray byte as a char */
        if (char_symbols(m, s + i, k, i == 0, i + k == len, &n_sym, &tmp)) {
            lm_strbuf_free(&tmp);
            return lm_errf(err, "out of memory");
        }
        i += k;
    }
    lm_strbuf_free(&tmp);
    /* 2. merge loop */
    if (n_sym > 1) {
        if (LM_GROW(m->heap, m->heap_cap, n_sym * 2) != 0) return lm_errf(err, "out of memory");
        size_t hn = 0;
        int32_t mid;
        for (size_t i = 0; i + 1 < n_sym; i++) {
            int32_t r = pair_get(m, m->sym[i].id, m->sym[i + 1].id, &mid);
            if (r >= 0) heap_push(m->heap, &hn, (bpe_cand){r, (int32_t)i});
        }
        while (hn) {
            bpe_cand c = heap_pop(m->heap, &hn);
            bpe_sym *a = &m->sym[c.pos];
            if (a->id < 0 || a->next < 0) continue;
            bpe_sym *b = &m->sym[a->next];
            if (pair_get(m, a->id, b->id, &mid) != c.rank) continue;  /* stale candidate */
            a->id = mid;
            b->id = -1;
            a->next = b->next;
            if (a->next >= 0) m->sym[a->next].prev = c.pos;
            /* Each merge removes a symbol and adds at most 2 candidates: heap_cap suffices. */
            if (a->prev >= 0) {
                int32_t r = pair_get(m, m->sym[a->prev].id, a->id, &mid);
                if (r >= 0) heap_push(m->heap, &hn, (bpe_cand){r, a->prev});
            }
            if (a->next >= 0) {
                int32_t r = pair_get(m, a->id, m->sym[a->next].id, &mid);
                if (r >= 0) heap_push(m->heap, &hn, (bpe_cand){r, c.pos});
            }
            /* defensive: stale entries can pile up */
            if (LM_GROW(m->heap, m->heap_cap, hn + 2) != 0) return lm_errf(err, "out of memory");
        }
    }
    size_t first_out = *n;
    for (int32_t i = n_sym ? 0 : -1; i >= 0; i = m->sym[i].next)
        if (push_id(ids, n, cap, m->sym[i].id)) return lm_errf(err, "out of memory");
    /* 3. remember the result */
    if (cacheable) {
        size_t cnt = *n - first_out;
        if (m->cache.count >= CACHE_MAX_ENTRIES) { tb_strmap_clear(&m->cache); m->cache_len = 0; }
        if (LM_GROW(m->cache_ids, m->cache_cap, m->cache_len + cnt + 1) != 0) return 0; /* caching is optional */
        int32_t at = (int32_t)m->cache_len;
        m->cache_ids[m->cache_len++] = (int32_t)cnt;
        if (cnt) memcpy(m->cache_ids + m->cache_len, *ids + first_out, cnt * sizeof(int32_t)); /* *ids may be NULL */
        m->cache_len += cnt;
        if (tb_strmap_put(&m->cache, s, len, at)) { tb_strmap_clear(&m->cache); m->cache_len = 0; }
    }
    return 0;
}

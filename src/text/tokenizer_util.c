/* Containers used across the tokenizer: a growable byte buffer, a list of byte strings in
 * one buffer, and an open-addressing string -> int32 hash map. Small and allocation-light
 * on purpose: the vocabularies hold up to ~200k tokens and encode runs per word. */
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "text/tokenizer_internal.h"

int tb_pieces_add(tb_pieces *l, const char *s, size_t n, int32_t flag) {
    if (l->n == l->cap) { /* three arrays, one capacity */
        size_t cap = lm_grow_cap(l->cap, l->n + 1, sizeof *l->off);
        if (!cap || LM_RESIZE(l->off, cap) || LM_RESIZE(l->len, cap) || LM_RESIZE(l->flag, cap)) return -1;
        l->cap = cap;
    }
    size_t at = l->bytes.len;
    /* s may point into l->bytes itself; lm_strbuf_append allows that */
    if (lm_strbuf_append(&l->bytes, s, n)) return -1;
    l->off[l->n] = at;
    l->len[l->n] = n;
    l->flag[l->n] = flag;
    l->n++;
    return 0;
}

void tb_pieces_clear(tb_pieces *l) {
    l->n = 0;
    l->bytes.len = 0;
}

void tb_pieces_free(tb_pieces *l) {
    lm_strbuf_free(&l->bytes);
    free(l->off);
    free(l->len);
    free(l->flag);
    memset(l, 0, sizeof *l);
}

uint64_t tb_hash(const char *s, size_t n) {
    /* FNV-1a, then a final mix so the low bits used for slot selection are well spread. */
    uint64_t h = lm_fnv1a(LM_FNV1A_INIT, s, n);
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static int strmap_grow(tb_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint32_t *koff = malloc(cap * sizeof *koff);
    uint32_t *klen = malloc(cap * sizeof *klen);
    int32_t *val = malloc(cap * sizeof *val);
    if (!koff || !klen || !val) { free(koff); free(klen); free(val); return -1; }
    memset(klen, 0xFF, cap * sizeof *klen);
    for (size_t i = 0; i < m->cap; i++) {
        if (m->klen[i] == UINT32_MAX) continue;
        size_t j = tb_hash(m->keys.data + m->koff[i], m->klen[i]) & (cap - 1);
        while (klen[j] != UINT32_MAX) j = (j + 1) & (cap - 1);
        koff[j] = m->koff[i];
        klen[j] = m->klen[i];
        val[j] = m->val[i];
    }
    free(m->koff); free(m->klen); free(m->val);
    m->koff = koff; m->klen = klen; m->val = val;
    m->cap = cap;
    return 0;
}

int tb_strmap_put(tb_strmap *m, const char *k, size_t n, int32_t v) {
    if (n >= UINT32_MAX || m->keys.len + n >= UINT32_MAX) return -1;
    if ((m->count + 1) * 4 > m->cap * 3 && strmap_grow(m)) return -1;
    size_t j = tb_hash(k, n) & (m->cap - 1);
    while (m->klen[j] != UINT32_MAX) {
        if (m->klen[j] == n && !memcmp(m->keys.data + m->koff[j], k, n)) { m->val[j] = v; return 0; }
        j = (j + 1) & (m->cap - 1);
    }
    size_t at = m->keys.len;
    if (lm_strbuf_append(&m->keys, k, n)) return -1;
    m->koff[j] = (uint32_t)at;
    m->klen[j] = (uint32_t)n;
    m->val[j] = v;
    m->count++;
    return 0;
}

int32_t tb_strmap_get(const tb_strmap *m, const char *k, size_t n, int32_t missing) {
    if (!m->cap) return missing;
    size_t j = tb_hash(k, n) & (m->cap - 1);
    while (m->klen[j] != UINT32_MAX) {
        if (m->klen[j] == n && !memcmp(m->keys.data + m->koff[j], k, n)) return m->val[j];
        j = (j + 1) & (m->cap - 1);
    }
    return missing;
}

void tb_strmap_clear(tb_strmap *m) {
    if (m->cap) memset(m->klen, 0xFF, m->cap * sizeof *m->klen);
    m->count = 0;
    m->keys.len = 0;
}

void tb_strmap_free(tb_strmap *m) {
    lm_strbuf_free(&m->keys);
    free(m->koff); free(m->klen); free(m->val);
    memset(m, 0, sizeof *m);
}

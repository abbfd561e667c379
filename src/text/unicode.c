/* Unicode normalization (the UTF-8 helpers are in common/utf8.c).
 *
 * Normalization follows UAX #15 directly: decompose every code point (canonical or
 * compatibility table, Hangul arithmetically), put each run of non-starters in canonical
 * order (stable sort by combining class), then for NFC/NFKC recompose with the primary
 * composition pairs, honouring "blocked" marks. The tables come from
 * unicode_norm_tables.c (generated). Text that is all ASCII is returned as a copy at once,
 * since ASCII is invariant under every form.
 */
#include "text/unicode.h"

#include "common/buf.h"

#include <stdlib.h>
#include <string.h>

#include "text/unicode_norm_tables.h"

/* ---- normalization ------------------------------------------------------------------- */

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19,
       VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static int ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = lm_unorm_ccc_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (lm_unorm_ccc_table[mid].cp == cp) return lm_unorm_ccc_table[mid].ccc;
        if (lm_unorm_ccc_table[mid].cp < cp) lo = mid + 1; else hi = mid;
    }
    return 0;
}

static const lm_unorm_decomp *find_decomp(const lm_unorm_decomp *t, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t[mid].cp == cp) return &t[mid];
        if (t[mid].cp < cp) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
        b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = lm_unorm_pairs_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const lm_unorm_pair *p = &lm_unorm_pairs[mid];
        if (p->first == a && p->second == b) return p->composite;
        if (p->first < a || (p->first == a && p->second < b)) lo = mid + 1; else hi = mid;
    }
    return 0;
}

typedef struct { uint32_t *v; size_t n, cap; } cp_vec;

static int cp_push(cp_vec *c, uint32_t cp) {
    if (LM_GROW(c->v, c->cap, c->n + 1) != 0) return -1;
    c->v[c->n++] = cp;
    return 0;
}

int lm_unicode_normalize(enum lm_unorm_form form, const char *s, size_t len, char **out,
                         size_t *out_len) {
    size_t i;
    for (i = 0; i < len && (unsigned char)s[i] < 0x80; i++) {}
    if (i == len) { /* ASCII is invariant */
        char *o = malloc(len + 1);
        if (!o) return -1;
        memcpy(o, s, len);
        o[len] = 0;
        *out = o;
        *out_len = len;
        return 0;
    }
    int compat = form == LM_NFKC || form == LM_NFKD;
    int compose = form == LM_NFC || form == LM_NFKC;
    cp_vec cps = {0};
    const unsigned char *u = (const unsigned char *)s;
    /* 1. full decomposition */
    for (i = 0; i < len;) {
        uint32_t cp;
        size_t k = lm_utf8_next(u + i, len - i, &cp);
        if (!k) { cp = 0xFFFD; k = 1; } /* callers pass valid UTF-8; be safe anyway */
        i += k;
        if (cp >= SBASE && cp < SBASE + SCOUNT) {
            uint32_t si = cp - SBASE;
            if (cp_push(&cps, LBASE + si / NCOUNT) || cp_push(&cps, VBASE + (si % NCOUNT) / TCOUNT)) goto oom;
            if (si % TCOUNT && cp_push(&cps, TBASE + si % TCOUNT)) goto oom;
            continue;
        }
        const lm_unorm_decomp *d = cp < 0xA0 ? NULL
            : compat ? find_decomp(lm_unorm_compat, lm_unorm_compat_count, cp)
                     : find_decomp(lm_unorm_canon, lm_unorm_canon_count, cp);
        if (!d) { if (cp_push(&cps, cp)) goto oom; continue; }
        const uint32_t *data = compat ? lm_unorm_compat_data : lm_unorm_canon_data;
        for (uint32_t j = 0; j < d->len; j++)
            if (cp_push(&cps, data[d->off + j])) goto oom;
    }
    /* 2. canonical ordering: insertion sort of each non-starter run (runs are short) */
    for (size_t a = 1; a < cps.n; a++) {
        int ca = ccc_of(cps.v[a]);
        if (!ca) continue;
        size_t b = a;
        uint32_t cur = cps.v[a];
        while (b > 0) {
            int cb = ccc_of(cps.v[b - 1]);
            if (cb <= ca) break;
            cps.v[b] = cps.v[b - 1];
            b--;
        }
        cps.v[b] = cur;
    }
    /* 3. canonical composition */
    if (compose && cps.n > 1) {
        size_t starter = 0, w = 1;
        int have_starter = ccc_of(cps.v[0]) == 0;
        int last_ccc = have_starter ? 0 : 256;
        for (size_t r = 1; r < cps.n; r++) {
            uint32_t c = cps.v[r];
            int cc = ccc_of(c);
            uint32_t comp = 0;
            /* c can join the starter if nothing between them blocks it */
            if (have_starter && (last_ccc < cc || (last_ccc == 0 && w == starter + 1)))
                comp = compose_pair(cps.v[starter], c);
            if (comp) { cps.v[starter] = comp; continue; }
            if (cc == 0) { starter = w; have_starter = 1; last_ccc = 0; }
            else last_ccc = cc;
            cps.v[w++] = c;
        }
        cps.n = w;
    }
    char *o = malloc(cps.n * 4 + 1);
    if (!o) goto oom;
    size_t n = 0;
    for (size_t j = 0; j < cps.n; j++) n += lm_utf8_put(cps.v[j], o + n);
    o[n] = 0;
    free(cps.v);
    *out = o;
    *out_len = n;
    return 0;
oom:
    free(cps.v);
    return -1;
}

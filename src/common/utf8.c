#include "common/utf8.h"

#include <stdlib.h>
#include <string.h>

size_t lm_utf8_lead(unsigned char c, int flags, unsigned char *lo, unsigned char *hi, uint32_t *bits) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        *bits = c & 0x1F;
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        *bits = c & 0x0F;
        if (c == 0xE0) *lo = 0xA0;                                 /* no overlongs */
        if (c == 0xED && !(flags & LM_UTF8_SURROGATES)) *hi = 0x9F; /* no surrogates */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        *bits = c & 0x07;
        if (c == 0xF0) *lo = 0x90; /* no overlongs */
        if (c == 0xF4) *hi = 0x8F; /* nothing above U+10FFFF */
        return 4;
    }
    return 0;
}

size_t lm_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp, int flags) {
    *cp = 0xFFFD;
    if (len == 0) return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    unsigned char lo, hi;
    uint32_t v;
    size_t need = lm_utf8_lead(s[0], flags, &lo, &hi, &v);
    if (!need || len < need) return 0;
    for (size_t i = 1; i < need; i++) {
        if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return need;
}

size_t lm_utf8_next(const unsigned char *s, size_t len, uint32_t *cp) { return lm_utf8_decode(s, len, cp, 0); }

size_t lm_utf8_bad_run_flags(const unsigned char *s, size_t len, int *incomplete, int flags) {
    *incomplete = 0;
    unsigned char lo, hi;
    uint32_t bits;
    size_t need = lm_utf8_lead(s[0], flags, &lo, &hi, &bits);
    if (!need) return 1; /* stray continuation byte or impossible lead */
    size_t i = 1;
    while (i < need && i < len) {
        if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) return i; /* the valid prefix is one subpart */
        i++;
    }
    if (i < need) *incomplete = 1; /* ran out of input: could still complete */
    return i;
}

size_t lm_utf8_bad_run(const unsigned char *s, size_t len, int *incomplete) {
    return lm_utf8_bad_run_flags(s, len, incomplete, 0);
}

size_t lm_utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp > 0x10FFFF) cp = 0xFFFD;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t lm_utf8_complete_prefix(const unsigned char *s, size_t len) {
    /* Only the last 3 bytes can hold an unfinished sequence. */
    size_t start = len > 3 ? len - 3 : 0;
    for (size_t i = start; i < len; i++) {
        if ((s[i] & 0xC0) == 0x80) continue;
        uint32_t cp;
        if (s[i] < 0x80) continue;
        if (lm_utf8_next(s + i, len - i, &cp)) continue;
        int incomplete;
        size_t run = lm_utf8_bad_run(s + i, len - i, &incomplete);
        if (incomplete && i + run == len) return i;
    }
    return len;
}

int lm_utf8_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    uint32_t cp;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = lm_utf8_next(u + i, len - i, &cp);
        if (!n) return 0;
        i += n;
    }
    return 1;
}

int lm_utf8_sanitize(const char *s, size_t len, char **out, size_t *out_len) {
    /* Worst case: every byte becomes 3 bytes of U+FFFD. */
    char *o = malloc(len * 3 + 1);
    if (!o) return -1;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, n = 0;
    while (i < len) {
        uint32_t cp;
        size_t k = u[i] < 0x80 ? 1 : lm_utf8_next(u + i, len - i, &cp);
        if (k) {
            memcpy(o + n, s + i, k);
            n += k;
            i += k;
            continue;
        }
        int incomplete;
        i += lm_utf8_bad_run(u + i, len - i, &incomplete);
        memcpy(o + n, "\xEF\xBF\xBD", 3);
        n += 3;
    }
    o[n] = 0;
    *out = o;
    *out_len = n;
    return 0;
}

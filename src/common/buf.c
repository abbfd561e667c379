#include "common/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t lm_grow_cap(size_t cap, size_t need, size_t elem_size) {
    if (need <= cap) return cap;
    size_t max = elem_size ? SIZE_MAX / elem_size : SIZE_MAX;
    if (need > max) return 0;
    size_t c = cap < 16 ? 16 : cap;
    while (c < need) c = c > max / 2 ? max : c * 2;
    return c;
}

int lm_resize(void *arrp, size_t n, size_t elem_size) {
    if (n == 0 || (elem_size && n > SIZE_MAX / elem_size)) return -1;
    /* arrp is the address of a T *; object pointers share one representation on every
     * platform this builds for, and memcpy keeps the access free of aliasing questions. */
    void *old;
    memcpy(&old, arrp, sizeof old);
    void *p = realloc(old, n * elem_size);
    if (!p) return -1;
    memcpy(arrp, &p, sizeof p);
    return 0; // cppcheck-suppress memleak ; p is stored through arrp
}

int lm_grow(void *arrp, size_t *cap, size_t need, size_t elem_size) {
    if (need <= *cap) return 0;
    size_t c = lm_grow_cap(*cap, need, elem_size);
    if (!c || lm_resize(arrp, c, elem_size) != 0) return -1;
    *cap = c;
    return 0;
}

int lm_strbuf_reserve(lm_strbuf *b, size_t extra) {
    if (b->failed) return -1;
    if (extra > SIZE_MAX - 1 - b->len || (b->limit && (b->len > b->limit || extra > b->limit - b->len))) {
        b->failed = 1;
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (b->data && need <= b->cap) return 0;
    size_t cap = b->cap;
    if (lm_grow(&b->data, &cap, need, 1) != 0) {
        b->failed = 1;
        return -1;
    }
    b->cap = cap;
    return 0;
}

int lm_strbuf_append(lm_strbuf *b, const void *s, size_t n) {
    /* s may point into b->data, which the growth can move. */
    size_t at = b->data && (const char *)s >= b->data && (const char *)s < b->data + b->cap
                    ? (size_t)((const char *)s - b->data) : SIZE_MAX;
    if (lm_strbuf_reserve(b, n) != 0) return -1;
    if (n) memmove(b->data + b->len, at != SIZE_MAX ? b->data + at : s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int lm_strbuf_puts(lm_strbuf *b, const char *s) { return lm_strbuf_append(b, s, strlen(s)); }

int lm_strbuf_putc(lm_strbuf *b, char c) { return lm_strbuf_append(b, &c, 1); }

int lm_strbuf_printf(lm_strbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) b->failed = 1;
    if (n < 0 || lm_strbuf_reserve(b, (size_t)n) != 0) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int lm_strbuf_read_stream(lm_strbuf *b, FILE *f, size_t max_len) {
    if (lm_strbuf_reserve(b, 0) != 0) return LM_READ_NO_MEMORY;
    for (;;) {
        /* Read straight into the buffer, 64 KiB at a time. */
        if (lm_strbuf_reserve(b, 1 << 16) != 0) return LM_READ_NO_MEMORY;
        size_t got = fread(b->data + b->len, 1, b->cap - b->len - 1, f);
        b->len += got;
        b->data[b->len] = 0;
        if (max_len && b->len > max_len) return LM_READ_TOO_LONG;
        if (got == 0) break;
    }
    return ferror(f) ? LM_READ_ERROR : LM_READ_OK;
}

void lm_strbuf_consume(lm_strbuf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data) b->data[b->len] = 0;
}

void lm_strbuf_reset(lm_strbuf *b) {
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

void lm_strbuf_free(lm_strbuf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

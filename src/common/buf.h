/* The one growable buffer: bytes (lm_strbuf, always NUL-terminated) and typed arrays
 * (LM_GROW). Growth doubles the capacity, checks the size arithmetic for overflow and
 * reports out of memory instead of crashing.
 *
 * lm_strbuf errors are sticky: after the first failed growth (out of memory, a size that
 * overflows, or the optional limit) `failed` is set, later appends do nothing, and the
 * caller checks once at the end, so a half-built text is never used as if it were whole. */
#ifndef LAZYMOE_COMMON_BUF_H
#define LAZYMOE_COMMON_BUF_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    char *data;   /* NULL until the first append, then NUL-terminated at data[len] */
    size_t len, cap;
    size_t limit; /* 0 = none; else an append that would make len exceed it fails */
    int failed;   /* sticky: set by the first failed append */
} lm_strbuf;

/* Room for `extra` more bytes plus the NUL; 0, or -1 (and failed set). */
int lm_strbuf_reserve(lm_strbuf *b, size_t extra);
/* Appends n bytes (s may point into b itself); 0, or -1 (and failed set). */
int lm_strbuf_append(lm_strbuf *b, const void *s, size_t n);
int lm_strbuf_puts(lm_strbuf *b, const char *s);
int lm_strbuf_putc(lm_strbuf *b, char c);
int lm_strbuf_printf(lm_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (all of them when n >= len). */
void lm_strbuf_consume(lm_strbuf *b, size_t n);
/* Empties the buffer, keeping its memory. */
void lm_strbuf_reset(lm_strbuf *b);
/* Frees the memory and zeroes the buffer (limit included). */
void lm_strbuf_free(lm_strbuf *b);

/* Appends what is left of the stream f to b, holding at most max_len bytes in b
 * (0 = no limit). Returns LM_READ_OK, or what went wrong. b stays NUL-terminated even
 * when empty (its data is then ""), so it can be handed out as a string. */
enum { LM_READ_OK = 0, LM_READ_ERROR = -1, LM_READ_TOO_LONG = -2, LM_READ_NO_MEMORY = -3 };
int lm_strbuf_read_stream(lm_strbuf *b, FILE *f, size_t max_len);

/* Typed arrays: grows the array *arrp of elements of elem_size bytes, with *cap elements
 * allocated, so that it holds at least `need` elements (doubling from at least 16).
 * Returns 0, or -1 with *arrp and *cap untouched when the size overflows or memory runs
 * out. Use through LM_GROW, which takes the array and its capacity as lvalues:
 *     if (LM_GROW(v->items, v->cap, v->n + 1) != 0) return -1;
 *     v->items[v->n++] = x; */
int lm_grow(void *arrp, size_t *cap, size_t need, size_t elem_size);
#define LM_GROW(arr, cap, need) lm_grow(&(arr), &(cap), (need), sizeof *(arr))

/* The capacity lm_grow would choose for `need` elements of elem_size bytes starting from
 * cap (cap itself when it suffices), or 0 when that many bytes cannot be addressed. */
size_t lm_grow_cap(size_t cap, size_t need, size_t elem_size);

/* Reallocates *arrp to exactly n elements of elem_size bytes (n > 0); 0, or -1 with *arrp
 * untouched on overflow or out of memory. For parallel arrays that share one capacity:
 *     size_t cap = lm_grow_cap(v->cap, v->n + 1, sizeof *v->a);
 *     if (!cap || LM_RESIZE(v->a, cap) || LM_RESIZE(v->b, cap)) return -1;
 *     v->cap = cap; */
int lm_resize(void *arrp, size_t n, size_t elem_size);
#define LM_RESIZE(arr, n) lm_resize(&(arr), (n), sizeof *(arr))

#endif

#include "server/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(srv_buf *b, size_t extra) {
    if (b->oom) return -1;
    if (b->data && b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > ((size_t)-1) / 2) {
            b->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (!d) {
        b->oom = 1;
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

void srv_buf_append(srv_buf *b, const char *s, size_t n) {
    if (grow(b, n) != 0) return;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

void srv_buf_puts(srv_buf *b, const char *s) { srv_buf_append(b, s, strlen(s)); }

void srv_buf_printf(srv_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || grow(b, (size_t)n) != 0) {
        if (n < 0) b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static int dump_cb(const char *buffer, size_t size, void *data) {
    srv_buf *b = data;
    srv_buf_append(b, buffer, size);
    return b->oom ? -1 : 0;
}

void srv_buf_json(srv_buf *b, const json_t *v) {
    if (!v || json_dump_callback(v, dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY) != 0) b->oom = 1;
}

void srv_buf_consume(srv_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data) b->data[b->len] = 0;
}

void srv_buf_reset(srv_buf *b) {
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

void srv_buf_free(srv_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

void srv_sse(srv_buf *b, const char *name, json_t *data) {
    if (!data) {
        b->oom = 1;
        return;
    }
    if (name) srv_buf_printf(b, "event: %s\n", name);
    srv_buf_puts(b, "data: ");
    srv_buf_json(b, data);
    srv_buf_puts(b, "\n\n");
    json_decref(data);
}

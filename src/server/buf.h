/* A growable byte buffer, always NUL-terminated, for response bodies and SSE.
 *
 * Errors are sticky: after a failed allocation `oom` is set, later appends do
 * nothing, and the caller checks once at the end (a half-built reply is never
 * sent as if it were whole). */
#ifndef LAZYMOE_SERVER_BUF_H
#define LAZYMOE_SERVER_BUF_H

#include <jansson.h>
#include <stddef.h>

typedef struct {
    char *data; /* NULL until the first append */
    size_t len, cap;
    int oom;
} srv_buf;

void srv_buf_append(srv_buf *b, const char *s, size_t n);
void srv_buf_puts(srv_buf *b, const char *s);
void srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends v as compact JSON (non-ASCII kept as UTF-8). Steals nothing. */
void srv_buf_json(srv_buf *b, const json_t *v);
/* Drops the first n bytes. */
void srv_buf_consume(srv_buf *b, size_t n);
void srv_buf_reset(srv_buf *b);
void srv_buf_free(srv_buf *b);

/* One server-sent event: "event: NAME\n" (when name is non-NULL), "data: JSON\n\n".
 * Steals data (json_decref'd here; NULL counts as out of memory). */
void srv_sse(srv_buf *b, const char *name, json_t *data);

#endif

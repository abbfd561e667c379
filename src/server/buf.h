/* The growable byte buffer for response bodies and SSE, always NUL-terminated.
 *
 * Errors are sticky: after a failed allocation `failed` is set, later appends do
 * nothing, and the caller checks once at the end (a half-built reply is never
 * sent as if it were whole). */
#ifndef LAZYMOE_SERVER_BUF_H
#define LAZYMOE_SERVER_BUF_H

#include "common/buf.h"

#include <jansson.h>
#include <stddef.h>

/* The server's byte buffer is common/buf.h's lm_strbuf; these names are kept for the
 * server code. `failed` (sticky) is set by the first failed append. */
typedef lm_strbuf srv_buf;

static inline void srv_buf_append(srv_buf *b, const char *s, size_t n) { lm_strbuf_append(b, s, n); }
static inline void srv_buf_puts(srv_buf *b, const char *s) { lm_strbuf_puts(b, s); }
#define srv_buf_printf(b, ...) ((void)lm_strbuf_printf((b), __VA_ARGS__))
/* Appends v as compact JSON (non-ASCII kept as UTF-8). Steals nothing. */
void srv_buf_json(srv_buf *b, const json_t *v);
/* Drops the first n bytes. */
static inline void srv_buf_consume(srv_buf *b, size_t n) { lm_strbuf_consume(b, n); }
static inline void srv_buf_reset(srv_buf *b) { lm_strbuf_reset(b); }
static inline void srv_buf_free(srv_buf *b) { lm_strbuf_free(b); }

/* One server-sent event: "event: NAME\n" (when name is non-NULL), "data: JSON\n\n".
 * Steals data (json_decref'd here; NULL counts as out of memory). */
void srv_sse(srv_buf *b, const char *name, json_t *data);

#endif

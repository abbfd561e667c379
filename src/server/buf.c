#include "server/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int dump_cb(const char *buffer, size_t size, void *data) {
    srv_buf *b = data;
    srv_buf_append(b, buffer, size);
    return b->failed ? -1 : 0;
}

void srv_buf_json(srv_buf *b, const json_t *v) {
    if (!v || json_dump_callback(v, dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY) != 0) b->failed = 1;
}

void srv_sse(srv_buf *b, const char *name, json_t *data) {
    if (!data) {
        b->failed = 1;
        return;
    }
    if (name) srv_buf_printf(b, "event: %s\n", name);
    srv_buf_puts(b, "data: ");
    srv_buf_json(b, data);
    srv_buf_puts(b, "\n\n");
    json_decref(data);
}

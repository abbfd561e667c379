/* What every backend shares: choosing one by name, and counting the memory it holds. */
#include "kernels/backend.h"

#include <string.h>

int lm_backend_create(lm_backend **out, const char *name, int n_threads, char *err) {
    *out = NULL;
    if (!name || !*name || !strcmp(name, "cpu")) return lm_backend_cpu_create(out, n_threads, err);
    return lm_errf(err, "unknown backend '%s' (this build has: cpu)", name);
}

int lm_backend_alloc(lm_backend *be, lm_buf *out, size_t bytes, const char *what, char *err) {
    out->ptr = NULL;
    out->bytes = 0;
    if (bytes == 0) return 0;
    if (be->ops->alloc(be, out, bytes) != 0)
        return lm_errf(err, "out of memory allocating %zu bytes for %s (%s)", bytes, what, be->err);
    be->bytes_held += bytes;
    return 0;
}

void lm_backend_release(lm_backend *be, lm_buf *buf) {
    if (!buf->ptr) return;
    be->ops->free(be, buf);
    be->bytes_held -= buf->bytes;
    buf->ptr = NULL;
    buf->bytes = 0;
}

const char *lm_backend_error(const lm_backend *be) { return be->err; }

/* What every backend shares: choosing one by name, and counting the memory it holds. */
#include "kernels/backend.h"

#ifdef LAZYMOE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

#include <stdlib.h>
#include <string.h>

#ifdef LAZYMOE_CUDA
/* LAZYMOE_CUDA_DEVICE picks the GPU (default 0). */
static int cuda_create(lm_backend **out, char *err) {
    const char *dev = getenv("LAZYMOE_CUDA_DEVICE");
    int d = 0;
    if (dev && *dev) {
        char *end;
        long v = strtol(dev, &end, 10);
        if (*end || v < 0 || v > 1024) return lm_errf(err, "LAZYMOE_CUDA_DEVICE=\"%s\" is not a device number", dev);
        d = (int)v;
    }
    return lm_backend_cuda_create(out, d, err);
}
#endif

int lm_backend_create(lm_backend **out, const char *name, int n_threads, char *err) {
    *out = NULL;
    if (!name || !*name || !strcmp(name, "cpu")) return lm_backend_cpu_create(out, n_threads, err);
    if (!strcmp(name, "cuda")) {
#ifdef LAZYMOE_CUDA
        return cuda_create(out, err);
#else
        return lm_errf(err, "this build has no CUDA (rebuild with make CUDA=1 where nvcc is installed)");
#endif
    }
#ifdef LAZYMOE_CUDA
    return lm_errf(err, "unknown backend '%s' (this build has: cpu, cuda)", name);
#else
    return lm_errf(err, "unknown backend '%s' (this build has: cpu)", name);
#endif
}

int lm_backend_set_act_bits(lm_backend *be, int bits, int max_rows, int max_cols, char *err) {
#ifdef LAZYMOE_CUDA
    if (!strcmp(be->ops->name, "cuda")) return lm_backend_cuda_set_act_bits(be, bits, max_rows, max_cols, err);
#else
    (void)max_rows;
#endif
    return lm_backend_cpu_set_act_bits(be, bits, max_cols, err);
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

void lm_backend_weights_changed(lm_backend *be, const lm_mat *m) {
    if (!be->ops->weights_changed) return;
    be->ops->weights_changed(be, m->data);
    if (m->scales) be->ops->weights_changed(be, m->scales);
    if (m->biases) be->ops->weights_changed(be, m->biases);
}

void lm_backend_free(lm_backend *be) {
    if (be) be->ops->destroy(be);
}

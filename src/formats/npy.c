#include "formats/npy.h"

#include "common/error.h"
#include "platform/platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lm_npy_write_f32(const char *path, const float *data, const size_t *shape, int ndim, char *err) {
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        /* numpy's spelling: "(5,)" for one dimension, "(5, 7)" otherwise */
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%zu%s", i ? ", " : "", shape[i], ndim == 1 ? "," : "");
        count *= shape[i];
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* Header (magic 6 + version 2 + len 2 + dict) padded with spaces to a multiple
     * of 64 and ended by a newline. */
    size_t hlen = 10 + (size_t)n + 1;
    size_t pad = (64 - hlen % 64) % 64;
    size_t dict_len = (size_t)n + pad + 1;
    size_t total = 10 + dict_len + count * 4;
    unsigned char *buf = lm_malloc(total, "npy file", err);
    if (!buf) return -1;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(dict_len & 0xff);
    buf[9] = (unsigned char)(dict_len >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', pad);
    buf[10 + (size_t)n + pad] = '\n';
    memcpy(buf + 10 + dict_len, data, count * 4);
    int rc = lm_write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

int lm_npy_read_f32(const char *path, float **data, size_t *shape, int *ndim, char *err) {
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lm_errf(err, "cannot open %s", path);
    unsigned char pre[10];
    int rc = -1;
    char *hdr = NULL;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] != 1) {
        lm_errf(err, "%s: not a version 1 .npy file", path);
        goto done;
    }
    size_t hl = (size_t)pre[8] | (size_t)pre[9] << 8;
    hdr = calloc(1, hl + 1);
    if (!hdr || fread(hdr, 1, hl, f) != hl) {
        lm_errf(err, "%s: truncated header", path);
        goto done;
    }
    if (!strstr(hdr, "'<f4'") || strstr(hdr, "True")) {
        lm_errf(err, "%s: only little-endian float32 C-order arrays are supported", path);
        goto done;
    }
    char *sp = strstr(hdr, "'shape': (");
    if (!sp) {
        lm_errf(err, "%s: no shape", path);
        goto done;
    }
    sp += 10;
    size_t count = 1;
    *ndim = 0;
    while (*sp && *sp != ')' && *ndim < 4) {
        char *end;
        unsigned long long v = strtoull(sp, &end, 10);
        if (end == sp) break;
        shape[(*ndim)++] = (size_t)v;
        count *= (size_t)v;
        sp = end;
        while (*sp == ',' || *sp == ' ') sp++;
    }
    *data = malloc(count * 4 + 4);
    if (!*data || fread(*data, 4, count, f) != count) {
        free(*data);
        *data = NULL;
        lm_errf(err, "%s: truncated data", path);
        goto done;
    }
    rc = 0;
done:
    free(hdr);
    fclose(f);
    return rc;
}

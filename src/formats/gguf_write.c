#include "formats/gguf_write.h"

#include "common/buf.h"
#include "common/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
    int own;
} wtensor;

struct gguf_writer {
    lm_strbuf kv; /* encoded KVs */
    uint64_t nkv;
    wtensor *t;
    size_t nt, cap;
    uint32_t alignment;
    int failed;
};

gguf_writer *gguf_w_new(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_w_free(gguf_writer *w) {
    if (!w) return;
    lm_strbuf_free(&w->kv);
    for (size_t i = 0; i < w->nt; i++) {
        free(w->t[i].name);
        if (w->t[i].own) free((void *)w->t[i].data);
    }
    free(w->t);
    free(w);
}

static void put_le(lm_strbuf *b, uint64_t v, int n) {
    uint8_t x[8];
    for (int i = 0; i < n; i++) x[i] = (uint8_t)(v >> (8 * i));
    lm_strbuf_append(b, x, (size_t)n);
}

static void put_str(lm_strbuf *b, const char *s, size_t n) {
    put_le(b, n, 8);
    lm_strbuf_append(b, s, n);
}

static int key(gguf_writer *w, const char *k, gguf_type t) {
    put_str(&w->kv, k, strlen(k));
    put_le(&w->kv, (uint64_t)t, 4);
    w->nkv++;
    if (w->kv.failed) w->failed = 1;
    return w->failed ? -1 : 0;
}

static int done(gguf_writer *w) {
    if (w->kv.failed) w->failed = 1;
    return w->failed ? -1 : 0;
}

int gguf_w_u32(gguf_writer *w, const char *k, uint32_t v) {
    key(w, k, GGUF_TYPE_U32);
    put_le(&w->kv, v, 4);
    return done(w);
}
int gguf_w_i32(gguf_writer *w, const char *k, int32_t v) {
    key(w, k, GGUF_TYPE_I32);
    put_le(&w->kv, (uint32_t)v, 4);
    return done(w);
}
int gguf_w_u64(gguf_writer *w, const char *k, uint64_t v) {
    key(w, k, GGUF_TYPE_U64);
    put_le(&w->kv, v, 8);
    return done(w);
}
int gguf_w_f32(gguf_writer *w, const char *k, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    key(w, k, GGUF_TYPE_F32);
    put_le(&w->kv, u, 4);
    return done(w);
}
int gguf_w_bool(gguf_writer *w, const char *k, int v) {
    key(w, k, GGUF_TYPE_BOOL);
    put_le(&w->kv, v != 0, 1);
    return done(w);
}
int gguf_w_str(gguf_writer *w, const char *k, const char *v) {
    key(w, k, GGUF_TYPE_STRING);
    put_str(&w->kv, v, strlen(v));
    return done(w);
}
int gguf_w_arr_str(gguf_writer *w, const char *k, const char *const *v, uint64_t n) {
    key(w, k, GGUF_TYPE_ARRAY);
    put_le(&w->kv, GGUF_TYPE_STRING, 4);
    put_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n && !w->kv.failed; i++) put_str(&w->kv, v[i], strlen(v[i]));
    return done(w);
}
int gguf_w_arr(gguf_writer *w, const char *k, gguf_type t, const void *v, uint64_t n) {
    static const uint8_t size[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if ((unsigned)t >= GGUF_TYPE_COUNT || !size[t]) return w->failed = 1, -1;
    key(w, k, GGUF_TYPE_ARRAY);
    put_le(&w->kv, (uint64_t)t, 4);
    put_le(&w->kv, n, 8);
    const uint8_t *p = v;
    for (uint64_t i = 0; i < n && !w->kv.failed; i++) {
        uint64_t x = 0;
        memcpy(&x, p + i * size[t], size[t]); /* host little-endian, as GGUF */
        put_le(&w->kv, x, size[t]);
    }
    return done(w);
}
int gguf_w_raw(gguf_writer *w, const char *k, const void *bytes, size_t n) {
    put_str(&w->kv, k, strlen(k));
    lm_strbuf_append(&w->kv, bytes, n);
    w->nkv++;
    return done(w);
}

int gguf_w_tensor(gguf_writer *w, const char *name, uint32_t ggml_type, int n_dims, const int64_t *ne,
                  const void *data, uint64_t nbytes, int own) {
    if (n_dims < 0 || n_dims > GGUF_MAX_DIMS || LM_GROW(w->t, w->cap, w->nt + 1) != 0) {
        if (own) free((void *)data);
        return w->failed = 1, -1;
    }
    wtensor *t = &w->t[w->nt];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        if (own) free((void *)data);
        return w->failed = 1, -1;
    }
    t->type = ggml_type;
    t->n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) t->ne[i] = ne[i];
    t->data = data;
    t->nbytes = nbytes;
    t->own = own;
    w->nt++;
    return 0;
}

void gguf_w_set_alignment(gguf_writer *w, uint32_t alignment) { w->alignment = alignment; }

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* The header (through the padding before the data section). */
static int header(gguf_writer *w, lm_strbuf *h, char *err) {
    if (w->failed) return lm_errf(err, "out of memory building the GGUF header");
    lm_strbuf_append(h, "GGUF", 4);
    put_le(h, 3, 4);
    put_le(h, w->nt, 8);
    int extra = w->alignment != GGUF_DEFAULT_ALIGNMENT;
    put_le(h, w->nkv + (uint64_t)extra, 8);
    if (extra) {
        put_str(h, "general.alignment", 17);
        put_le(h, GGUF_TYPE_U32, 4);
        put_le(h, w->alignment, 4);
    }
    if (w->kv.len) lm_strbuf_append(h, w->kv.data, w->kv.len);
    uint64_t off = 0;
    for (size_t i = 0; i < w->nt; i++) {
        const wtensor *t = &w->t[i];
        put_str(h, t->name, strlen(t->name));
        put_le(h, (uint64_t)t->n_dims, 4);
        for (int d = 0; d < t->n_dims; d++) put_le(h, (uint64_t)t->ne[d], 8);
        put_le(h, t->type, 4);
        put_le(h, off, 8);
        off = align_up(off + t->nbytes, w->alignment);
    }
    size_t pad = (size_t)(align_up(h->len, w->alignment) - h->len);
    static const char zeros[64];
    while (pad && !h->failed) {
        size_t k = pad < sizeof zeros ? pad : sizeof zeros;
        lm_strbuf_append(h, zeros, k);
        pad -= k;
    }
    if (h->failed) return lm_errf(err, "out of memory building the GGUF header");
    return 0;
}

static uint64_t total_size(const gguf_writer *w, uint64_t header_len) {
    uint64_t off = 0;
    for (size_t i = 0; i < w->nt; i++) {
        off += w->t[i].nbytes;
        if (i + 1 < w->nt) off = align_up(off, w->alignment);
    }
    return header_len + off;
}

int gguf_w_to_buffer(gguf_writer *w, uint8_t **out, size_t *len, char *err) {
    lm_strbuf h = {0};
    if (header(w, &h, err) != 0) {
        lm_strbuf_free(&h);
        return -1;
    }
    uint64_t n = total_size(w, h.len);
    uint8_t *b = calloc(1, (size_t)n + 1);
    if (!b) {
        lm_strbuf_free(&h);
        return lm_errf(err, "out of memory");
    }
    memcpy(b, h.data, h.len);
    uint64_t off = h.len;
    for (size_t i = 0; i < w->nt; i++) {
        if (w->t[i].nbytes) memcpy(b + off, w->t[i].data, (size_t)w->t[i].nbytes);
        off = align_up(off + w->t[i].nbytes, w->alignment);
    }
    lm_strbuf_free(&h);
    *out = b;
    *len = (size_t)n;
    return 0;
}

int gguf_w_save(gguf_writer *w, const char *path, char *err) {
    lm_strbuf h = {0};
    if (header(w, &h, err) != 0) {
        lm_strbuf_free(&h);
        return -1;
    }
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid()) >= (int)sizeof tmp) {
        lm_strbuf_free(&h);
        return lm_errf(err, "%s: path too long", path);
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        lm_strbuf_free(&h);
        return lm_errf(err, "cannot create %s", tmp);
    }
    int ok = fwrite(h.data, 1, h.len, f) == h.len;
    uint64_t off = h.len;
    static const char zeros[64];
    for (size_t i = 0; ok && i < w->nt; i++) {
        const wtensor *t = &w->t[i];
        ok = !t->nbytes || fwrite(t->data, 1, (size_t)t->nbytes, f) == t->nbytes;
        off += t->nbytes;
        uint64_t pad = i + 1 < w->nt ? align_up(off, w->alignment) - off : 0;
        for (; ok && pad; ) {
            size_t k = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
            ok = fwrite(zeros, 1, k, f) == k;
            pad -= k;
            off += k;
        }
    }
    lm_strbuf_free(&h);
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return lm_errf(err, "cannot write %s", path);
    }
    return 0;
}

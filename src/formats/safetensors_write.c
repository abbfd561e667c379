/* safetensors writers; layout and guarantees are described in safetensors_write.h. */
#include "formats/safetensors_write.h"

#include "common/buf.h"
#include "common/error.h"
#include "formats/pyjson.h"
#include "formats/safetensors.h"
#include "platform/fs.h"
#include "platform/platform.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset;  /* relative to the data start, set by start */
    uint64_t written; /* bytes received so far */
    int shard;        /* stw_model only */
} stw_entry;

static int make_entry(stw_entry *e, const char *name, lm_dtype dtype, int ndim,
                      const int64_t *shape, char *err) {
    memset(e, 0, sizeof *e);
    if (!name || !*name) return lm_errf(err, "safetensors write: empty tensor name");
    if (lm_dtype_size(dtype) == 0)
        return lm_errf(err, "safetensors write: %s: invalid dtype", name);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return lm_errf(err, "safetensors write: %s: %d dimensions (at most %d)", name, ndim,
                       ST_MAX_DIMS);
    uint64_t n = lm_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return lm_errf(err, "safetensors write: %s: negative dimension", name);
        if (shape[i] != 0 && n > UINT64_MAX / (uint64_t)shape[i])
            return lm_errf(err, "safetensors write: %s: size overflows", name);
        n *= (uint64_t)shape[i];
        e->shape[i] = shape[i];
    }
    e->name = strdup(name);
    if (!e->name) return lm_errf(err, "out of memory");
    e->dtype = dtype;
    e->ndim = ndim;
    e->nbytes = n;
    return 0;
}

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const stw_entry *)a)->name, ((const stw_entry *)b)->name);
}

/* ---- one file ---------------------------------------------------------------- */

struct stw_file {
    char *path, *tmp_path, *format;
    stw_entry *entries;
    int count;
    size_t cap;
    int fd;
    uint64_t data_start;
    int started, committed;
};

int stw_file_create(stw_file **out, const char *path, const char *format, char *err) {
    *out = NULL;
    stw_file *w = calloc(1, sizeof *w);
    if (!w) return lm_errf(err, "out of memory");
    w->fd = -1;
    size_t n = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp_path = malloc(n);
    w->format = format ? strdup(format) : NULL;
    if (!w->path || !w->tmp_path || (format && !w->format)) {
        stw_file_free(w);
        return lm_errf(err, "out of memory");
    }
    snprintf(w->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    *out = w;
    return 0;
}

int stw_file_declare(stw_file *w, const char *name, lm_dtype dtype, int ndim,
                     const int64_t *shape, char *err) {
    if (!w) return lm_errf(err, "safetensors write: no writer");
    if (w->started) return lm_errf(err, "safetensors write: declare after start (%s)", name);
    if (LM_GROW(w->entries, w->cap, (size_t)w->count + 1) != 0) return lm_errf(err, "out of memory");
    if (make_entry(&w->entries[w->count], name, dtype, ndim, shape, err) != 0) return -1;
    w->count++;
    return 0;
}

uint64_t stw_file_data_bytes(const stw_file *w) {
    uint64_t n = 0;
    for (int i = 0; i < w->count; i++) n += w->entries[i].nbytes;
    return n;
}

/* Appends s to the header buffer, escaping as JSON (tensor names are plain ASCII in
 * practice; quotes, backslashes and control characters are escaped anyway). */
static void put_json_string(lm_strbuf *b, const char *s) {
    lm_strbuf_putc(b, '"');
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
        if (*u == '"' || *u == '\\') {
            lm_strbuf_putc(b, '\\');
            lm_strbuf_putc(b, (char)*u);
        } else if (*u < 0x20) {
            lm_strbuf_printf(b, "\\u%04x", *u);
        } else {
            lm_strbuf_putc(b, (char)*u);
        }
    }
    lm_strbuf_putc(b, '"');
}

int stw_file_start(stw_file *w, char *err) {
    if (!w) return lm_errf(err, "safetensors write: no writer");
    if (w->started) return lm_errf(err, "safetensors write: started twice");
    if (w->count > 1) qsort(w->entries, (size_t)w->count, sizeof *w->entries, cmp_entry_name);
    for (int i = 1; i < w->count; i++)
        if (strcmp(w->entries[i - 1].name, w->entries[i].name) == 0)
            return lm_errf(err, "safetensors write: tensor %s declared twice", w->entries[i].name);
    uint64_t off = 0;
    for (int i = 0; i < w->count; i++) {
        w->entries[i].offset = off;
        off += w->entries[i].nbytes;
    }
    /* Header: {"__metadata__":{"format":"mlx"},"name":{...},...} in bytewise key order;
     * "__metadata__" sorts before any lower-case name, but sort it in properly anyway. */
    lm_strbuf h = {0};
    lm_strbuf_putc(&h, '{');
    int meta_done = (w->format == NULL);
    int first = 1;
    for (int i = 0; i <= w->count && !h.failed; i++) {
        if (!meta_done && (i == w->count || strcmp("__metadata__", w->entries[i].name) < 0)) {
            lm_strbuf_puts(&h, first ? "\"__metadata__\":{\"format\":" : ",\"__metadata__\":{\"format\":");
            put_json_string(&h, w->format);
            lm_strbuf_putc(&h, '}');
            meta_done = 1;
            first = 0;
        }
        if (i == w->count) break;
        const stw_entry *e = &w->entries[i];
        if (!first) lm_strbuf_putc(&h, ',');
        first = 0;
        put_json_string(&h, e->name);
        lm_strbuf_printf(&h, ":{\"data_offsets\":[%llu,%llu],\"dtype\":\"%s\",\"shape\":[",
                      (unsigned long long)e->offset, (unsigned long long)e->offset + e->nbytes,
                      lm_dtype_name(e->dtype));
        for (int d = 0; d < e->ndim; d++) lm_strbuf_printf(&h, "%s%lld", d ? "," : "", (long long)e->shape[d]);
        lm_strbuf_puts(&h, "]}");
    }
    lm_strbuf_putc(&h, '}');
    while (!h.failed && (8 + h.len) % 8 != 0) lm_strbuf_putc(&h, ' ');
    if (h.failed) {
        lm_strbuf_free(&h);
        return lm_errf(err, "out of memory building the safetensors header");
    }
    size_t hl = h.len;
    w->fd = lm_file_create(w->tmp_path, err);
    if (w->fd < 0) {
        lm_strbuf_free(&h);
        return -1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    int rc = lm_pwrite_full(w->fd, len8, 8, 0, err);
    if (rc == 0) rc = lm_pwrite_full(w->fd, h.data, hl, 8, err);
    lm_strbuf_free(&h);
    if (rc != 0) return lm_err_prefix(err, "%s", w->tmp_path);
    w->data_start = 8 + hl;
    /* Size the file now so a tensor written last still leaves no hole behind. */
    if (ftruncate(w->fd, (off_t)(w->data_start + off)) != 0)
        return lm_errf(err, "cannot size %s", w->tmp_path);
    w->started = 1;
    return 0;
}

static stw_entry *find_entry(stw_entry *entries, int count, const char *name) {
    stw_entry key = {0};
    key.name = (char *)name;
    return bsearch(&key, entries, (size_t)count, sizeof *entries, cmp_entry_name);
}

int stw_file_write_at(stw_file *w, const char *name, uint64_t offset, const void *data,
                      size_t len, char *err) {
    if (!w->started) return lm_errf(err, "safetensors write: write before start (%s)", name);
    stw_entry *e = find_entry(w->entries, w->count, name);
    if (!e) return lm_errf(err, "safetensors write: %s was not declared", name);
    if (offset > e->nbytes || len > e->nbytes - offset)
        return lm_errf(err, "safetensors write: %s: bytes %llu..%llu outside its %llu bytes", name,
                       (unsigned long long)offset, (unsigned long long)offset + len,
                       (unsigned long long)e->nbytes);
    if (len == 0) return 0;
    if (lm_pwrite_full(w->fd, data, len, w->data_start + e->offset + offset, err) != 0)
        return lm_err_prefix(err, "%s", w->tmp_path);
    e->written += len;
    return 0;
}

int stw_file_commit(stw_file *w, char *err) {
    if (!w->started) return lm_errf(err, "safetensors write: commit before start");
    for (int i = 0; i < w->count; i++)
        if (w->entries[i].written != w->entries[i].nbytes)
            return lm_errf(err, "safetensors write: %s: %llu of %llu bytes written",
                           w->entries[i].name, (unsigned long long)w->entries[i].written,
                           (unsigned long long)w->entries[i].nbytes);
    int fd = w->fd;
    w->fd = -1;
    if (lm_file_sync_close(fd, w->tmp_path, err) != 0) return -1;
    if (lm_rename(w->tmp_path, w->path, err) != 0) return -1;
    w->committed = 1;
    return 0;
}

void stw_file_free(stw_file *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->started && !w->committed) unlink(w->tmp_path);
    for (int i = 0; i < w->count; i++) free(w->entries[i].name);
    free(w->entries);
    free(w->path);
    free(w->tmp_path);
    free(w->format);
    free(w);
}

/* ---- sharded model directory ----------------------------------------------------- */

struct stw_model {
    char *dir;
    uint64_t max_shard_bytes;
    stw_entry *decl; /* declaration order */
    int count;
    size_t cap;
    stw_entry *by_name; /* sorted copy (names borrowed from decl) after start */
    stw_file **shards;
    char **shard_names;
    int nshards;
    int started;
    const char *format; /* static; NULL: "mlx" */
};

int stw_model_create(stw_model **out, const char *dir, uint64_t max_shard_bytes, char *err) {
    *out = NULL;
    stw_model *m = calloc(1, sizeof *m);
    if (!m) return lm_errf(err, "out of memory");
    m->dir = strdup(dir);
    if (!m->dir) {
        free(m);
        return lm_errf(err, "out of memory");
    }
    m->max_shard_bytes = max_shard_bytes ? max_shard_bytes : STW_MLX_MAX_SHARD_BYTES;
    *out = m;
    return 0;
}

void stw_model_set_format(stw_model *m, const char *format) { m->format = format; }

int stw_model_declare(stw_model *m, const char *name, lm_dtype dtype, int ndim,
                      const int64_t *shape, char *err) {
    if (m->started) return lm_errf(err, "safetensors write: declare after start (%s)", name);
    if (LM_GROW(m->decl, m->cap, (size_t)m->count + 1) != 0) return lm_errf(err, "out of memory");
    if (make_entry(&m->decl[m->count], name, dtype, ndim, shape, err) != 0) return -1;
    m->count++;
    return 0;
}

int stw_model_start(stw_model *m, char *err) {
    if (m->started) return lm_errf(err, "safetensors write: started twice");
    /* mlx-lm make_shards: start a new shard when the next tensor would overflow this one. */
    int shard = 0;
    uint64_t size = 0;
    for (int i = 0; i < m->count; i++) {
        if (size > 0 && size + m->decl[i].nbytes > m->max_shard_bytes) {
            shard++;
            size = 0;
        }
        m->decl[i].shard = shard;
        size += m->decl[i].nbytes;
    }
    m->nshards = shard + 1;
    m->shards = calloc((size_t)m->nshards, sizeof *m->shards); /* NOLINT(bugprone-sizeof-expression): array of writers */
    m->shard_names = calloc((size_t)m->nshards, sizeof(char *)); /* NOLINT(bugprone-sizeof-expression): array of names */
    m->by_name = malloc((size_t)(m->count ? m->count : 1) * sizeof *m->by_name);
    if (!m->shards || !m->shard_names || !m->by_name) return lm_errf(err, "out of memory");
    memcpy(m->by_name, m->decl, (size_t)m->count * sizeof *m->by_name);
    qsort(m->by_name, (size_t)m->count, sizeof *m->by_name, cmp_entry_name);
    for (int i = 1; i < m->count; i++)
        if (strcmp(m->by_name[i - 1].name, m->by_name[i].name) == 0)
            return lm_errf(err, "safetensors write: tensor %s declared twice", m->by_name[i].name);
    for (int s = 0; s < m->nshards; s++) {
        char name[64];
        if (m->nshards == 1)
            snprintf(name, sizeof name, "model.safetensors");
        else
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, m->nshards);
        m->shard_names[s] = strdup(name);
        size_t n = strlen(m->dir) + strlen(name) + 2;
        char *path = malloc(n);
        if (!m->shard_names[s] || !path) {
            free(path);
            return lm_errf(err, "out of memory");
        }
        snprintf(path, n, "%s/%s", m->dir, name);
        int rc = stw_file_create(&m->shards[s], path, m->format ? m->format : "mlx", err);
        free(path);
        if (rc != 0) return -1;
    }
    for (int i = 0; i < m->count; i++) {
        const stw_entry *e = &m->decl[i];
        if (stw_file_declare(m->shards[e->shard], e->name, e->dtype, e->ndim, e->shape, err) != 0)
            return -1;
    }
    for (int s = 0; s < m->nshards; s++)
        if (stw_file_start(m->shards[s], err) != 0) return -1;
    m->started = 1;
    return 0;
}

int stw_model_write_at(stw_model *m, const char *name, uint64_t offset, const void *data,
                       size_t len, char *err) {
    if (!m->started) return lm_errf(err, "safetensors write: write before start (%s)", name);
    stw_entry *e = find_entry(m->by_name, m->count, name);
    if (!e) return lm_errf(err, "safetensors write: %s was not declared", name);
    return stw_file_write_at(m->shards[e->shard], name, offset, data, len, err);
}

uint64_t stw_model_tensor_bytes(const stw_model *m, const char *name) {
    for (int i = 0; i < m->count; i++)
        if (strcmp(m->decl[i].name, name) == 0) return m->decl[i].nbytes;
    return 0;
}

int stw_model_shard_count(const stw_model *m) { return m->started ? m->nshards : 0; }

int stw_model_commit(stw_model *m, uint64_t total_parameters, char *err) {
    if (!m->started) return lm_errf(err, "safetensors write: commit before start");
    for (int s = 0; s < m->nshards; s++)
        if (stw_file_commit(m->shards[s], err) != 0) return -1;
    uint64_t total = 0;
    for (int i = 0; i < m->count; i++) total += m->decl[i].nbytes;
    json_t *index = json_object();
    json_t *meta = json_object();
    json_t *map = json_object();
    int bad = !index || !meta || !map;
    if (!bad) {
        bad |= json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
        bad |= json_object_set_new(meta, "total_parameters",
                                   json_integer((json_int_t)total_parameters));
        for (int i = 0; i < m->count && !bad; i++)
            bad |= json_object_set_new(map, m->by_name[i].name,
                                       json_string(m->shard_names[m->by_name[i].shard]));
        bad |= json_object_set(index, "metadata", meta);
        bad |= json_object_set(index, "weight_map", map);
    }
    json_decref(meta);
    json_decref(map);
    if (bad) {
        json_decref(index);
        return lm_errf(err, "out of memory building the safetensors index");
    }
    char *text = pyjson_dumps(index, 4, err);
    json_decref(index);
    if (!text) return -1;
    size_t n = strlen(m->dir) + 64;
    char *path = malloc(n);
    int rc = path ? 0 : lm_errf(err, "out of memory");
    if (rc == 0) {
        snprintf(path, n, "%s/model.safetensors.index.json", m->dir);
        rc = lm_write_file_atomic(path, text, strlen(text), err);
    }
    free(path);
    free(text);
    return rc;
}

void stw_model_free(stw_model *m) {
    if (!m) return;
    for (int s = 0; s < m->nshards; s++) {
        if (m->shards) stw_file_free(m->shards[s]);
        if (m->shard_names) free(m->shard_names[s]);
    }
    free(m->shards);
    free(m->shard_names);
    for (int i = 0; i < m->count; i++) free(m->decl[i].name);
    free(m->decl);
    free(m->by_name);
    free(m->dir);
    free(m);
}

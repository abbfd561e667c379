#include "formats/safetensors.h"

#include "common/buf.h"
#include "common/error.h"
#include "platform/platform.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return 0;
}

uint64_t st_numel(const st_tensor *t) {
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
    return n;
}

/* Parses one entry {dtype, shape, data_offsets} into *t. */
static int parse_entry(const char *name, json_t *v, uint64_t data_size, st_tensor *t, char *err) {
    if (!json_is_object(v)) return lm_errf(err, "tensor '%s': entry is not an object", name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) return lm_errf(err, "tensor '%s': missing dtype", name);
    t->dtype = lm_dtype_from_name(json_string_value(jd));
    if (t->dtype == LM_DT_INVALID)
        return lm_errf(err, "tensor '%s': unknown dtype '%s'", name, json_string_value(jd));
    if (!json_is_array(js)) return lm_errf(err, "tensor '%s': missing shape", name);
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return lm_errf(err, "tensor '%s': %zu dimensions (at most %d)", name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return lm_errf(err, "tensor '%s': shape[%zu] is not a non-negative integer", name, i);
        uint64_t dim = (uint64_t)json_integer_value(d);
        t->shape[i] = (int64_t)dim;
        if (dim && numel > UINT64_MAX / dim)
            return lm_errf(err, "tensor '%s': shape overflows", name);
        numel *= dim;
    }
    size_t es = lm_dtype_size(t->dtype);
    if (numel > UINT64_MAX / es) return lm_errf(err, "tensor '%s': size overflows", name);
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return lm_errf(err, "tensor '%s': data_offsets must be [begin, end]", name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b) return lm_errf(err, "tensor '%s': bad data_offsets [%lld, %lld]", name,
                                       (long long)b, (long long)e);
    if ((uint64_t)e > data_size)
        return lm_errf(err,
                       "tensor '%s': data_offsets end %lld is past the end of the data (%llu bytes); "
                       "the file may be truncated",
                       name, (long long)e, (unsigned long long)data_size);
    t->nbytes = (uint64_t)(e - b);
    if (t->nbytes != numel * es)
        return lm_errf(err, "tensor '%s': %s x %llu elements needs %llu bytes but data_offsets span %llu",
                       name, lm_dtype_name(t->dtype), (unsigned long long)numel,
                       (unsigned long long)numel * (unsigned long long)es, (unsigned long long)t->nbytes);
    t->offset = (uint64_t)b;
    return 0;
}

int st_parse_header(const char *json, size_t json_len, uint64_t file_size, int file_index,
                    st_tensor **tensors, int *count, int *is_mlx, char *err) {
    if (file_size < 8 + json_len) return lm_errf(err, "header is longer than the file");
    uint64_t data_start = 8 + json_len, data_size = file_size - data_start;
    json_error_t je;
    json_t *root = json_loadb(json, json_len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return lm_errf(err, "header is not valid JSON: %s (line %d)", je.text, je.line);
    int rc = -1;
    if (!json_is_object(root)) {
        lm_errf(err, "header is not a JSON object");
        goto done;
    }
    if (is_mlx) *is_mlx = 0;
    size_t n_new = json_object_size(root);
    if (n_new > (size_t)(1 << 24)) {
        lm_errf(err, "header lists too many tensors (%zu)", n_new);
        goto done;
    }
    st_tensor *arr = realloc(*tensors, sizeof(st_tensor) * ((size_t)*count + n_new + 1));
    if (!arr) {
        lm_errf(err, "out of memory reading header");
        goto done;
    }
    *tensors = arr;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                lm_errf(err, "__metadata__ is not an object");
                goto done;
            }
            json_t *fmt = json_object_get(val, "format");
            if (is_mlx && json_is_string(fmt) && strcmp(json_string_value(fmt), "mlx") == 0)
                *is_mlx = 1;
            continue;
        }
        if (key[0] == 0 || strlen(key) > 1024) {
            lm_errf(err, "tensor with an empty or over-long name");
            goto done;
        }
        st_tensor *t = &arr[*count];
        memset(t, 0, sizeof *t);
        if (parse_entry(key, val, data_size, t, err) != 0) goto done;
        t->name = strdup(key);
        if (!t->name) {
            lm_errf(err, "out of memory");
            goto done;
        }
        t->offset += data_start;
        t->file = file_index;
        (*count)++;
    }
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* Checks that no two byte ranges in the same file overlap. */
static int check_overlaps(st_archive *a, char *err) {
    if (a->ntensors < 2) return 0;
    st_tensor **order = malloc(sizeof(void *) * (size_t)a->ntensors);
    if (!order) return lm_errf(err, "out of memory");
    for (int i = 0; i < a->ntensors; i++) order[i] = &a->tensors[i];
    qsort(order, (size_t)a->ntensors, sizeof(void *), cmp_tensor_offset);
    int rc = 0;
    for (int i = 1; i < a->ntensors; i++) {
        st_tensor *p = order[i - 1], *q = order[i];
        if (p->file == q->file && p->offset + p->nbytes > q->offset && q->nbytes && p->nbytes) {
            rc = lm_errf(err, "%s: tensors '%s' and '%s' overlap", a->files[q->file].path, p->name,
                         q->name);
            break;
        }
    }
    free(order);
    return rc;
}

static int open_one(st_archive *a, const char *path, char *err) {
    st_file *nf = realloc(a->files, sizeof(st_file) * (size_t)(a->nfiles + 1));
    if (!nf) return lm_errf(err, "out of memory");
    a->files = nf;
    st_file *f = &a->files[a->nfiles];
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = strdup(path);
    if (!f->path) return lm_errf(err, "out of memory");
    a->nfiles++;
    f->fd = lm_file_open_read(path, err);
    if (f->fd < 0) return -1;
    int64_t size = lm_file_size(f->fd);
    if (size < 8) return lm_errf(err, "%s: not a safetensors file (%lld bytes)", path, (long long)size);
    f->size = (uint64_t)size;
    uint8_t lenbuf[8];
    if (lm_pread_full(f->fd, lenbuf, 8, 0, err) != 0) return lm_err_prefix(err, "%s", path);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | lenbuf[i];
    if (hlen > ST_MAX_HEADER || hlen > f->size - 8)
        return lm_errf(err, "%s: header length %llu does not fit the file (%llu bytes); truncated or not safetensors",
                       path, (unsigned long long)hlen, (unsigned long long)f->size);
    char *json = malloc(hlen + 1);
    if (!json) return lm_errf(err, "%s: out of memory for header", path);
    if (lm_pread_full(f->fd, json, hlen, 8, err) != 0) {
        free(json);
        return lm_err_prefix(err, "%s", path);
    }
    json[hlen] = 0;
    f->data_start = 8 + hlen;
    int rc = st_parse_header(json, hlen, f->size, a->nfiles - 1, &a->tensors, &a->ntensors,
                             &f->is_mlx, err);
    free(json);
    if (rc != 0) return lm_err_prefix(err, "%s", path);
    return 0;
}

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Opens the shards named by an index file; checks every mapped tensor is where the
 * index says it is. */
static int open_index(st_archive *a, const char *dir, const char *index_path, char *err) {
    json_error_t je;
    if (lm_refuse_special_file(index_path, err)) return -1;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &je);
    if (!root) return lm_errf(err, "%s: invalid JSON: %s (line %d)", index_path, je.text, je.line);
    int rc = -1;
    json_t *map = json_object_get(root, "weight_map");
    char **names = NULL;
    size_t nnames = 0;
    if (!json_is_object(map)) {
        lm_errf(err, "%s: missing weight_map object", index_path);
        goto done;
    }
    names = calloc(json_object_size(map) + 1, sizeof(char *));
    if (!names) {
        lm_errf(err, "out of memory");
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        if (!json_is_string(val)) {
            lm_errf(err, "%s: weight_map['%s'] is not a file name", index_path, key);
            goto done;
        }
        const char *fn = json_string_value(val);
        if (strchr(fn, '/') || strchr(fn, '\\') || strcmp(fn, "..") == 0 || fn[0] == 0) {
            lm_errf(err, "%s: weight_map['%s'] = '%s' is not a plain file name", index_path, key, fn);
            goto done;
        }
        names[nnames++] = (char *)fn;
    }
    /* sort, then drop repeats: n log n (a linear scan per name took 16 s for 100k names) */
    qsort(names, nnames, sizeof *names, cmp_str);
    size_t distinct = 0;
    for (size_t i = 0; i < nnames; i++)
        if (distinct == 0 || strcmp(names[distinct - 1], names[i]) != 0) names[distinct++] = names[i];
    nnames = distinct;
    for (size_t i = 0; i < nnames; i++) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) {
            lm_errf(err, "path too long");
            goto done;
        }
        if (open_one(a, path, err) != 0) goto done;
    }
    /* Every tensor the index maps must exist in the shard it names. */
    if (a->ntensors > 1) qsort(a->tensors, (size_t)a->ntensors, sizeof(st_tensor), cmp_tensor_name);
    json_object_foreach(map, key, val) {
        const st_tensor *t = st_find(a, key);
        if (!t) {
            lm_errf(err, "%s: tensor '%s' is listed in the index but missing from %s", index_path,
                     key, json_string_value(val));
            goto done;
        }
        const char *base = strrchr(a->files[t->file].path, '/');
        base = base ? base + 1 : a->files[t->file].path;
        if (strcmp(base, json_string_value(val)) != 0) {
            lm_errf(err, "%s: tensor '%s' is in %s, but the index says %s", index_path, key, base,
                     json_string_value(val));
            goto done;
        }
    }
    rc = 0;
done:
    free(names);
    json_decref(root);
    return rc;
}

static int open_all_in_dir(st_archive *a, const char *dir, char *err) {
    DIR *d = opendir(dir);
    if (!d) return lm_errf(err, "cannot open directory %s", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!has_suffix(e->d_name, ".safetensors")) continue;
        if (LM_GROW(names, cap, n + 1) != 0) { rc = lm_errf(err, "out of memory"); break; }
        names[n] = strdup(e->d_name);
        if (!names[n]) { rc = lm_errf(err, "out of memory"); break; }
        n++;
    }
    closedir(d);
    if (rc == 0 && n == 0) rc = lm_errf(err, "no .safetensors files in %s", dir);
    if (rc == 0 && n > 1) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path)
            rc = lm_errf(err, "path too long");
        else
            rc = open_one(a, path, err);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

int st_open(st_archive **out, const char *path, char *err) {
    *out = NULL;
    st_archive *a = calloc(1, sizeof *a);
    if (!a) return lm_errf(err, "out of memory");
    char buf[4096];
    int rc;
    /* probed with access(), not fopen(): opening a FIFO would block; open_index and
     * open_one refuse anything but a regular file */
    if (has_suffix(path, ".safetensors")) {
        rc = open_one(a, path, err);
    } else if (snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path) < (int)sizeof buf &&
               access(buf, R_OK) == 0) {
        rc = open_index(a, path, buf, err);
    } else if (snprintf(buf, sizeof buf, "%s/model.safetensors", path) < (int)sizeof buf &&
               access(buf, R_OK) == 0) {
        rc = open_one(a, buf, err);
    } else {
        rc = open_all_in_dir(a, path, err);
    }
    if (rc == 0 && a->ntensors > 1) {
        qsort(a->tensors, (size_t)a->ntensors, sizeof(st_tensor), cmp_tensor_name);
        for (int i = 1; i < a->ntensors && rc == 0; i++)
            if (strcmp(a->tensors[i - 1].name, a->tensors[i].name) == 0)
                rc = lm_errf(err, "tensor '%s' appears in both %s and %s", a->tensors[i].name,
                             a->files[a->tensors[i - 1].file].path, a->files[a->tensors[i].file].path);
    }
    if (rc == 0) rc = check_overlaps(a, err);
    if (rc != 0) {
        st_close(a);
        return -1;
    }
    *out = a;
    return 0;
}

void st_close(st_archive *a) {
    if (!a) return;
    for (int i = 0; i < a->nfiles; i++) {
        lm_file_close(a->files[i].fd);
        free(a->files[i].path);
    }
    for (int i = 0; i < a->ntensors; i++) {
        free(a->tensors[i].name);
        free(a->tensors[i].stored_name);
    }
    free(a->files);
    free(a->tensors);
    free(a);
}

const st_tensor *st_find(const st_archive *a, const char *name) {
    int lo = 0, hi = a->ntensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(a->tensors[mid].name, name);
        if (c == 0) return &a->tensors[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

const char *st_label(const st_tensor *t, char *buf, size_t cap) {
    if (!t->stored_name) snprintf(buf, cap, "'%s'", t->name);
    else snprintf(buf, cap, "'%s' (read as '%s')", t->stored_name, t->name);
    return buf;
}

int st_read_range(const st_archive *a, const st_tensor *t, uint64_t off, uint64_t len, void *dst,
                  char *err) {
    char label[ST_LABEL_LEN];
    if (off > t->nbytes || len > t->nbytes - off)
        return lm_errf(err, "read past the end of tensor '%s'", t->name);
    if (t->rope_unpermute && (off != 0 || len != t->nbytes))
        return lm_errf(err, "tensor '%s' can only be read whole (its rows are reordered)", t->name);
    if (lm_pread_full(a->files[t->file].fd, dst, len, t->offset + off, err) != 0)
        return lm_err_prefix(err, "%s: tensor %s", a->files[t->file].path, st_label(t, label, sizeof label));
    return 0;
}

/* llama.cpp's converter stores row h*d + 2i + j of a head of d rows where Hugging Face
 * has row h*d + j*d/2 + i (j = 0, 1; i < d/2): ggml's RoPE rotates adjacent pairs, the
 * Hugging Face one rotates the two halves. Restores Hugging Face order in place. */
static int unpermute_rows(const st_tensor *t, char *dst, char *err) {
    uint64_t rows = t->ndim ? (uint64_t)t->shape[0] : 0, d = (uint64_t)t->rope_unpermute;
    if (!rows || d < 2 || d % 2 || rows % d || t->nbytes % rows)
        return lm_errf(err, "tensor '%s': %llu rows do not split into heads of %llu", t->name,
                       (unsigned long long)rows, (unsigned long long)d);
    size_t rb = (size_t)(t->nbytes / rows), hb = rb * (size_t)d;
    char *tmp = malloc(hb);
    if (!tmp) return lm_errf(err, "out of memory");
    for (uint64_t h = 0; h < rows / d; h++) {
        char *head = dst + h * hb;
        memcpy(tmp, head, hb);
        for (uint64_t i = 0; i < d / 2; i++)
            for (uint64_t j = 0; j < 2; j++)
                memcpy(head + (j * d / 2 + i) * rb, tmp + (2 * i + j) * rb, rb);
    }
    free(tmp);
    return 0;
}

int st_read(const st_archive *a, const st_tensor *t, void *dst, char *err) {
    if (st_read_range(a, t, 0, t->nbytes, dst, err) != 0) return -1;
    return t->rope_unpermute ? unpermute_rows(t, dst, err) : 0;
}

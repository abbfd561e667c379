#include "formats/gguf.h"

#include "common/buf.h"
#include "common/error.h"
#include "platform/platform.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC "GGUF"
#define MAX_NESTING 4
#define MAX_NAME 1024

static const char *const type_names[GGUF_TYPE_COUNT] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                        "bool", "string", "array", "u64", "i64", "f64"};
/* Bytes of one scalar of each type; 0 for string and array. */
static const uint8_t type_size[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *gguf_type_name(gguf_type t) { return (unsigned)t < GGUF_TYPE_COUNT ? type_names[t] : "unknown"; }

int gguf_is_path(const char *path) {
    size_t n = strlen(path);
    return n > 5 && strcmp(path + n - 5, ".gguf") == 0;
}

/* ---- a bounds-checked cursor over a prefix of the file ---- */

typedef struct {
    const uint8_t *b;
    size_t len;         /* bytes available in b */
    uint64_t file_size; /* bytes in the whole file (>= len) */
    size_t pos;
    int more; /* ran past len while len < file_size: a longer prefix may parse */
    char *err;
} cursor;

/* 0 if n more bytes are available; else -1 (error, or c->more for a longer prefix). */
static int need(cursor *c, uint64_t n, const char *what) {
    if (n <= c->len - c->pos) return 0;
    if (c->len < c->file_size && n <= c->file_size - c->pos) {
        c->more = 1;
        return -1;
    }
    return lm_errf(c->err, "the header is truncated: %s ends past the end of the file (%llu bytes)", what,
                   (unsigned long long)c->file_size);
}

/* The low `bits` bits of u as a signed (two's complement) value; bits < 64. */
static int64_t sext(uint64_t u, int bits) {
    uint64_t sign = 1ull << (bits - 1);
    return (int64_t)((u & ((sign << 1) - 1)) ^ sign) - (int64_t)sign;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    if (need(c, 4, what)) return -1;
    *v = (uint32_t)le(c->b + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    if (need(c, 8, what)) return -1;
    *v = le(c->b + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t n;
    if (rd_u64(c, &n, what) || need(c, n, what)) return -1;
    s->p = (const char *)c->b + c->pos;
    s->len = n;
    c->pos += (size_t)n;
    return 0;
}

/* Bytes left in the file after the cursor: bounds counts before anything is allocated. */
static uint64_t file_left(const cursor *c) { return c->file_size - c->pos; }

/* ---- KVs ---- */

static void kv_free(gguf_kv *kv) {
    free(kv->key);
    free(kv->strs);
}

/* Reads a value of type t. kv (depth 0 only) receives scalars, strings and arrays. */
static int rd_value(cursor *c, gguf_type t, int depth, gguf_kv *kv, const char *key) {
    char what[160];
    snprintf(what, sizeof what, "the value of '%.100s'", key);
    if ((unsigned)t >= GGUF_TYPE_COUNT) return lm_errf(c->err, "KV '%.100s': unknown value type %u", key, (unsigned)t);
    if (t == GGUF_TYPE_STRING) {
        gguf_str s;
        if (rd_str(c, &s, what)) return -1;
        if (kv) kv->s = s;
        return 0;
    }
    if (t != GGUF_TYPE_ARRAY) {
        int n = type_size[t];
        if (need(c, (uint64_t)n, what)) return -1;
        if (kv) {
            uint64_t u = le(c->b + c->pos, n);
            kv->u = u;
            switch (t) {
            case GGUF_TYPE_I8: kv->i = sext(u, 8); break;
            case GGUF_TYPE_I16: kv->i = sext(u, 16); break;
            case GGUF_TYPE_I32: kv->i = sext(u, 32); break;
            case GGUF_TYPE_I64: kv->i = (int64_t)u; break;
            case GGUF_TYPE_BOOL: kv->i = u != 0; break;
            default: kv->i = (int64_t)u; break;
            }
            if (t == GGUF_TYPE_F32) {
                float f;
                uint32_t w = (uint32_t)u;
                memcpy(&f, &w, 4);
                kv->f = f;
            } else if (t == GGUF_TYPE_F64) {
                memcpy(&kv->f, &u, 8);
            } else {
                kv->f = (t == GGUF_TYPE_U64 || t == GGUF_TYPE_U32 || t == GGUF_TYPE_U16 || t == GGUF_TYPE_U8)
                            ? (double)u
                            : (double)kv->i;
            }
        }
        c->pos += (size_t)n;
        return 0;
    }
    if (depth >= MAX_NESTING) return lm_errf(c->err, "KV '%.100s': arrays nested deeper than %d", key, MAX_NESTING);
    uint32_t et;
    uint64_t n;
    if (rd_u32(c, &et, what) || rd_u64(c, &n, what)) return -1;
    if (et >= GGUF_TYPE_COUNT)
        return lm_errf(c->err, "KV '%.100s': array of unknown element type %u", key, (unsigned)et);
    /* smallest encoding of one element: its scalar size, a string's u64 length, or a
     * nested array's u32 type + u64 count */
    uint64_t min_elem = type_size[et] ? type_size[et] : et == GGUF_TYPE_STRING ? 8 : 12;
    if (n > file_left(c) / min_elem)
        return lm_errf(c->err, "KV '%.100s': array of %llu %s elements does not fit in the file", key,
                       (unsigned long long)n, gguf_type_name((gguf_type)et));
    if (kv) {
        kv->arr_type = (gguf_type)et;
        kv->arr_n = n;
        kv->arr_data = c->b + c->pos;
    }
    if (type_size[et]) {
        if (need(c, n * type_size[et], what)) return -1;
        c->pos += (size_t)(n * type_size[et]);
        return 0;
    }
    if (kv && et == GGUF_TYPE_STRING) {
        kv->strs = malloc(sizeof(gguf_str) * (size_t)(n ? n : 1));
        if (!kv->strs) return lm_errf(c->err, "out of memory reading KV '%.100s'", key);
    }
    for (uint64_t i = 0; i < n; i++) {
        if (et == GGUF_TYPE_STRING) {
            gguf_str s;
            if (rd_str(c, &s, what)) return -1;
            if (kv) kv->strs[i] = s;
        } else if (rd_value(c, GGUF_TYPE_ARRAY, depth + 1, NULL, key)) {
            return -1;
        }
    }
    return 0;
}

static const gguf_kv *find_kv_in(const gguf_kv *kvs, int n, const char *key) {
    for (int i = 0; i < n; i++)
        if (strcmp(kvs[i].key, key) == 0) return &kvs[i];
    return NULL;
}

/* ---- tensors ---- */

/* Tensor info k of nt (0-based; errors count from 1). */
static int rd_tensor(cursor *c, gguf_tensor *t, uint32_t alignment, uint64_t k, uint64_t nt) {
    gguf_str name;
    char what[MAX_NAME + 32];
    snprintf(what, sizeof what, "the name of tensor %llu of %llu", (unsigned long long)k + 1, (unsigned long long)nt);
    if (rd_str(c, &name, what)) return -1;
    if (name.len == 0 || name.len > MAX_NAME || memchr(name.p, 0, (size_t)name.len))
        return lm_errf(c->err, "tensor %llu of %llu has an empty, over-long or NUL-containing name",
                       (unsigned long long)k + 1, (unsigned long long)nt);
    t->name = malloc((size_t)name.len + 1);
    if (!t->name) return lm_errf(c->err, "out of memory");
    memcpy(t->name, name.p, (size_t)name.len);
    t->name[name.len] = 0;
    snprintf(what, sizeof what, "tensor '%s'", t->name);
    uint32_t nd;
    if (rd_u32(c, &nd, what)) return -1;
    if (nd > GGUF_MAX_DIMS)
        return lm_errf(c->err, "tensor '%s' has %u dimensions (at most %d)", t->name, (unsigned)nd, GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t numel = 1;
    for (int i = 0; i < GGUF_MAX_DIMS; i++) t->ne[i] = 1;
    for (uint32_t i = 0; i < nd; i++) {
        uint64_t d;
        if (rd_u64(c, &d, what)) return -1;
        if (d > (uint64_t)INT64_MAX)
            return lm_errf(c->err, "tensor '%s': dimension %u is negative", t->name, (unsigned)i);
        t->ne[i] = (int64_t)d;
        if (d && numel > UINT64_MAX / d) return lm_errf(c->err, "tensor '%s': its dimensions overflow", t->name);
        numel *= d;
    }
    if (rd_u32(c, &t->ggml_type, what)) return -1;
    t->dtype = lm_dtype_from_ggml(t->ggml_type);
    if (t->dtype == LM_DT_INVALID)
        return lm_errf(c->err,
                       "tensor '%s' has ggml type %u, which lazymoe does not read (known: F32, F16, BF16, "
                       "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ2_XXS, IQ3_XXS, IQ4_NL, IQ4_XS, MXFP4)",
                       t->name, (unsigned)t->ggml_type);
    if (lm_dtype_is_block(t->dtype)) {
        uint64_t be = (uint64_t)lm_dtype_block_elems(t->dtype), bb = lm_dtype_block_bytes(t->dtype);
        if ((uint64_t)t->ne[0] % be)
            return lm_errf(c->err, "tensor '%s': %lld values per row is not a multiple of %s's block of %llu",
                           t->name, (long long)t->ne[0], lm_dtype_name(t->dtype), (unsigned long long)be);
        uint64_t blocks = numel / be;
        if (blocks > UINT64_MAX / bb) return lm_errf(c->err, "tensor '%s': its size overflows", t->name);
        t->nbytes = blocks * bb;
    } else {
        uint64_t es = lm_dtype_size(t->dtype);
        if (numel > UINT64_MAX / es) return lm_errf(c->err, "tensor '%s': its size overflows", t->name);
        t->nbytes = numel * es;
    }
    if (rd_u64(c, &t->offset, what)) return -1;
    if (t->offset % alignment)
        return lm_errf(c->err, "tensor '%s': offset %llu is not a multiple of the alignment %u", t->name,
                       (unsigned long long)t->offset, (unsigned)alignment);
    return 0;
}

gguf_archive *gguf_new(void) { return calloc(1, sizeof(gguf_archive)); }

int gguf_parse(gguf_archive *a, const uint8_t *buf, size_t len, uint64_t file_size, int file_index, int keep_kvs,
               char *err) {
    cursor c = {buf, len, file_size < len ? len : file_size, 0, 0, err};
    gguf_kv *kvs = NULL;
    gguf_tensor *ts = NULL;
    uint64_t nkv = 0, nt = 0, kv_done = 0, t_done = 0;
    int rc = -1;
    if (need(&c, 4, "the magic")) goto done;
    if (memcmp(buf, GGUF_MAGIC, 4) != 0) {
        lm_errf(err, "not a GGUF file (no GGUF magic)");
        goto done;
    }
    c.pos = 4;
    uint32_t version;
    if (rd_u32(&c, &version, "the version")) goto done;
    if (version == 1) {
        lm_errf(err, "GGUF version 1 is not supported (v2 and v3 are); convert the model again");
        goto done;
    }
    if (version != 2 && version != 3) {
        if ((version & 0xffff) == 0 && (version >> 24) <= 3)
            lm_errf(err, "big-endian GGUF files are not supported");
        else
            lm_errf(err, "GGUF version %u is not supported (v2 and v3 are)", (unsigned)version);
        goto done;
    }
    if (rd_u64(&c, &nt, "the tensor count") || rd_u64(&c, &nkv, "the KV count")) goto done;
    /* a KV takes at least 8 + 1 + 4 + 1 bytes, a tensor info 8 + 1 + 4 + 4 + 8 */
    if (nkv > file_left(&c) / 14 || nt > file_left(&c) / 25 || nt > (1u << 24) || nkv > (1u << 20)) {
        lm_errf(err, "the header's counts (%llu tensors, %llu KVs) do not fit in the file", (unsigned long long)nt,
                (unsigned long long)nkv);
        goto done;
    }
    kvs = calloc((size_t)nkv + 1, sizeof *kvs);
    ts = calloc((size_t)nt + 1, sizeof *ts);
    if (!kvs || !ts) {
        lm_errf(err, "out of memory");
        goto done;
    }
    uint32_t alignment = GGUF_DEFAULT_ALIGNMENT;
    for (; kv_done < nkv; kv_done++) {
        gguf_kv *kv = &kvs[kv_done];
        gguf_str key;
        uint32_t type;
        char what[160];
        snprintf(what, sizeof what, "the key of KV %llu of %llu", (unsigned long long)kv_done + 1,
                 (unsigned long long)nkv);
        if (rd_str(&c, &key, what)) goto done;
        if (key.len == 0 || key.len > 65535 || memchr(key.p, 0, (size_t)key.len)) {
            lm_errf(err, "KV %llu of %llu has an empty, over-long or NUL-containing key", (unsigned long long)kv_done + 1,
                    (unsigned long long)nkv);
            goto done;
        }
        kv->key = malloc((size_t)key.len + 1);
        if (!kv->key) {
            lm_errf(err, "out of memory");
            goto done;
        }
        memcpy(kv->key, key.p, (size_t)key.len);
        kv->key[key.len] = 0;
        if (find_kv_in(kvs, (int)kv_done, kv->key)) {
            lm_errf(err, "KV '%.100s' appears twice", kv->key);
            kv_done++;
            goto done;
        }
        snprintf(what, sizeof what, "the type of KV '%.100s'", kv->key);
        if (rd_u32(&c, &type, what)) {
            kv_done++;
            goto done;
        }
        kv->type = (gguf_type)type;
        if (rd_value(&c, kv->type, 0, kv, kv->key)) {
            kv_done++;
            goto done;
        }
        if (strcmp(kv->key, "general.alignment") == 0) {
            if (kv->type != GGUF_TYPE_U32 || kv->u == 0 || (kv->u & (kv->u - 1)) || kv->u > (1u << 20)) {
                lm_errf(err, "general.alignment must be a u32 power of two (got %s %llu)", gguf_type_name(kv->type),
                        (unsigned long long)kv->u);
                kv_done++;
                goto done;
            }
            alignment = (uint32_t)kv->u;
        }
    }
    for (; t_done < nt; t_done++) {
        if (rd_tensor(&c, &ts[t_done], alignment, t_done, nt)) {
            t_done++;
            goto done;
        }
    }
    uint64_t data_start = ((uint64_t)c.pos + alignment - 1) / alignment * alignment;
    if (nt && data_start > c.file_size) {
        lm_errf(err, "the file is truncated: its data section would start at %llu, past the end (%llu bytes)",
                (unsigned long long)data_start, (unsigned long long)c.file_size);
        goto done;
    }
    for (uint64_t i = 0; i < nt; i++) {
        gguf_tensor *t = &ts[i];
        uint64_t room = c.file_size - data_start;
        if (t->offset > room || t->nbytes > room - t->offset) {
            lm_errf(err,
                    "tensor '%s' (%s, %llu bytes at data offset %llu) ends past the end of the file (%llu bytes); "
                    "the file is truncated",
                    t->name, lm_dtype_name(t->dtype), (unsigned long long)t->nbytes, (unsigned long long)t->offset,
                    (unsigned long long)c.file_size);
            goto done;
        }
        t->offset += data_start;
        t->file = file_index;
    }
    /* commit */
    if (keep_kvs) {
        if (a->nkv) {
            lm_errf(err, "internal: KVs kept twice");
            goto done;
        }
        a->kvs = kvs;
        a->nkv = (int)nkv;
        kvs = NULL;
    }
    gguf_tensor *arr = realloc(a->tensors, sizeof(gguf_tensor) * ((size_t)a->ntensors + (size_t)nt + 1));
    if (!arr) {
        lm_errf(err, "out of memory");
        goto done;
    }
    a->tensors = arr;
    if (nt) memcpy(arr + a->ntensors, ts, sizeof(gguf_tensor) * (size_t)nt);
    a->ntensors += (int)nt;
    t_done = 0; /* ownership of the names moved */
    if (file_index >= 0 && file_index < a->nfiles) {
        a->files[file_index].version = version;
        a->files[file_index].alignment = alignment;
        a->files[file_index].data_start = data_start;
    }
    rc = 0;
done:
    if (rc != 0 && c.more) rc = GGUF_NEED_MORE;
    if (kvs)
        for (uint64_t i = 0; i < kv_done; i++) kv_free(&kvs[i]);
    free(kvs);
    if (ts)
        for (uint64_t i = 0; i < t_done; i++) free(ts[i].name);
    free(ts);
    return rc;
}

/* ---- archive ---- */

static int cmp_name(const void *x, const void *y) {
    return strcmp(((const gguf_tensor *)x)->name, ((const gguf_tensor *)y)->name);
}

static int cmp_offset(const void *x, const void *y) {
    const gguf_tensor *p = *(const gguf_tensor *const *)x, *q = *(const gguf_tensor *const *)y;
    if (p->file != q->file) return p->file < q->file ? -1 : 1;
    if (p->offset != q->offset) return p->offset < q->offset ? -1 : 1;
    return 0;
}

static const char *file_name(const gguf_archive *a, int i) {
    return i >= 0 && i < a->nfiles ? a->files[i].path : "(buffer)";
}

int gguf_finish(gguf_archive *a, char *err) {
    if (a->ntensors < 2) return 0;
    qsort(a->tensors, (size_t)a->ntensors, sizeof(gguf_tensor), cmp_name);
    for (int i = 1; i < a->ntensors; i++)
        if (strcmp(a->tensors[i - 1].name, a->tensors[i].name) == 0)
            return lm_errf(err, "tensor '%s' appears twice (%s, %s)", a->tensors[i].name,
                           file_name(a, a->tensors[i - 1].file), file_name(a, a->tensors[i].file));
    const gguf_tensor **order = malloc(sizeof(void *) * (size_t)a->ntensors);
    if (!order) return lm_errf(err, "out of memory");
    for (int i = 0; i < a->ntensors; i++) order[i] = &a->tensors[i];
    qsort(order, (size_t)a->ntensors, sizeof(void *), cmp_offset);
    int rc = 0;
    for (int i = 1; i < a->ntensors && rc == 0; i++) {
        const gguf_tensor *p = order[i - 1], *q = order[i];
        if (p->file == q->file && p->nbytes && q->nbytes && p->offset + p->nbytes > q->offset)
            rc = lm_errf(err, "%s: tensors '%s' and '%s' overlap", file_name(a, q->file), p->name, q->name);
    }
    free(order);
    return rc;
}

/* Opens one file as a.files[a.nfiles] and parses its header. */
static int open_file(gguf_archive *a, const char *path, int keep_kvs, char *err) {
    gguf_file *nf = realloc(a->files, sizeof(gguf_file) * (size_t)(a->nfiles + 1));
    if (!nf) return lm_errf(err, "out of memory");
    a->files = nf;
    gguf_file *f = &a->files[a->nfiles];
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (!(f->path = strdup(path))) return lm_errf(err, "out of memory");
    int idx = a->nfiles++;
    f->fd = lm_file_open_read(path, err);
    if (f->fd < 0) return -1;
    int64_t size = lm_file_size(f->fd);
    if (size < 0) return lm_errf(err, "%s: cannot get the file size", path);
    f->size = (uint64_t)size;
    uint64_t want = f->size < (1u << 20) ? f->size : (1u << 20);
    for (;;) {
        uint8_t *buf = malloc((size_t)(want ? want : 1));
        if (!buf) return lm_errf(err, "%s: out of memory for the header", path);
        if (lm_pread_full(f->fd, buf, (size_t)want, 0, err) != 0) {
            free(buf);
            return lm_err_prefix(err, "%s", path);
        }
        int rc = gguf_parse(a, buf, (size_t)want, f->size, idx, keep_kvs, err);
        if (rc == 0) {
            a->files[idx].header = buf;
            return 0;
        }
        free(buf);
        if (rc != GGUF_NEED_MORE) return lm_err_prefix(err, "%s", path);
        want = want * 4 < f->size ? want * 4 : f->size;
    }
}

/* "DIR/NAME-00002-of-00005.gguf" -> prefix "DIR/NAME", part 2, count 5. */
static int split_name(const char *path, char *prefix, size_t cap, int *part, int *count) {
    size_t n = strlen(path);
    const char *tail = "-00000-of-00000.gguf";
    size_t tn = strlen(tail);
    if (n <= tn) return 0;
    const char *s = path + n - tn;
    for (size_t i = 0; i < tn; i++) {
        int digit = tail[i] == '0';
        if (digit ? (s[i] < '0' || s[i] > '9') : s[i] != tail[i]) return 0;
    }
    *part = atoi(s + 1);
    *count = atoi(s + 10);
    if (*part < 1 || *count < 1 || *part > *count || (size_t)(s - path) >= cap) return 0;
    memcpy(prefix, path, (size_t)(s - path));
    prefix[s - path] = 0;
    return 1;
}

int gguf_open(gguf_archive **out, const char *path, char *err) {
    *out = NULL;
    gguf_archive *a = gguf_new();
    if (!a) return lm_errf(err, "out of memory");
    char prefix[4096];
    int part = 0, count = 0, rc = 0;
    if (split_name(path, prefix, sizeof prefix, &part, &count)) {
        if (count > GGUF_MAX_SPLITS) {
            rc = lm_errf(err, "%s: %d parts is too many", path, count);
        }
        for (int k = 1; rc == 0 && k <= count; k++) {
            char p[4096 + 32];
            snprintf(p, sizeof p, "%s-%05d-of-%05d.gguf", prefix, k, count);
            /* every part's KVs are parsed; part 1's are kept, the others' split.* keys are
             * checked from a scratch archive */
            if (k == 1) {
                rc = open_file(a, p, 1, err);
                continue;
            }
            gguf_archive *s = gguf_new();
            if (!s) {
                rc = lm_errf(err, "out of memory");
                break;
            }
            rc = open_file(s, p, 1, err);
            int64_t no = -1, cnt = -1;
            if (rc == 0 && (gguf_get_int(s, "split.no", &no, err) < 0 || gguf_get_int(s, "split.count", &cnt, err) < 0))
                rc = lm_err_prefix(err, "%s", p);
            if (rc == 0 && (no != k - 1 || cnt != count))
                rc = lm_errf(err, "%s: its split.no/split.count (%lld/%lld) say it is not part %d of %d", p,
                             (long long)no, (long long)cnt, k, count);
            if (rc == 0) {
                /* move the file and its tensors into a */
                gguf_file *nf = realloc(a->files, sizeof(gguf_file) * (size_t)(a->nfiles + 1));
                gguf_tensor *nt = realloc(a->tensors, sizeof(gguf_tensor) * (size_t)(a->ntensors + s->ntensors + 1));
                if (nf) a->files = nf;
                if (nt) a->tensors = nt;
                if (!nf || !nt) {
                    rc = lm_errf(err, "out of memory");
                } else {
                    a->files[a->nfiles] = s->files[0];
                    for (int i = 0; i < s->ntensors; i++) {
                        s->tensors[i].file = a->nfiles;
                        a->tensors[a->ntensors++] = s->tensors[i];
                    }
                    a->nfiles++;
                    s->nfiles = 0;
                    s->ntensors = 0;
                }
            }
            gguf_close(s);
        }
    } else {
        rc = open_file(a, path, 1, err);
    }
    if (rc == 0) {
        int64_t no = 0, cnt = 1;
        if (gguf_get_int(a, "split.count", &cnt, err) < 0 || gguf_get_int(a, "split.no", &no, err) < 0) {
            rc = lm_err_prefix(err, "%s", path);
        } else if (!count && cnt > 1) {
            rc = lm_errf(err, "%s is part %lld of a model split into %lld files, but its name is not "
                              "NAME-0000K-of-0000N.gguf, so the other parts cannot be found",
                         path, (long long)no + 1, (long long)cnt);
        } else if (count && (cnt != count || no != 0)) {
            rc = lm_errf(err, "%s: split.count %lld / split.no %lld do not match its name (part 1 of %d)",
                         a->files[0].path, (long long)cnt, (long long)no, count);
        }
        int64_t total = -1;
        if (rc == 0 && count && gguf_get_int(a, "split.tensors.count", &total, err) == 1 && total != a->ntensors)
            rc = lm_errf(err, "%s: split.tensors.count says %lld tensors but the %d parts hold %d", path,
                         (long long)total, count, a->ntensors);
    }
    if (rc == 0) rc = gguf_finish(a, err);
    if (rc != 0) {
        gguf_close(a);
        return -1;
    }
    *out = a;
    return 0;
}

void gguf_close(gguf_archive *a) {
    if (!a) return;
    for (int i = 0; i < a->nfiles; i++) {
        if (a->files[i].fd >= 0) lm_file_close(a->files[i].fd);
        free(a->files[i].path);
        free(a->files[i].header);
    }
    for (int i = 0; i < a->nkv; i++) kv_free(&a->kvs[i]);
    for (int i = 0; i < a->ntensors; i++) free(a->tensors[i].name);
    free(a->files);
    free(a->kvs);
    free(a->tensors);
    free(a);
}

const gguf_kv *gguf_find_kv(const gguf_archive *a, const char *key) { return find_kv_in(a->kvs, a->nkv, key); }

const gguf_tensor *gguf_find_tensor(const gguf_archive *a, const char *name) {
    int lo = 0, hi = a->ntensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(a->tensors[mid].name, name);
        if (c == 0) return &a->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

static int is_int_type(gguf_type t) {
    return t == GGUF_TYPE_U8 || t == GGUF_TYPE_I8 || t == GGUF_TYPE_U16 || t == GGUF_TYPE_I16 || t == GGUF_TYPE_U32 ||
           t == GGUF_TYPE_I32 || t == GGUF_TYPE_U64 || t == GGUF_TYPE_I64;
}

int gguf_get_int(const gguf_archive *a, const char *key, int64_t *out, char *err) {
    const gguf_kv *kv = gguf_find_kv(a, key);
    if (!kv) return 0;
    if (!is_int_type(kv->type))
        return lm_errf(err, "GGUF key '%s' is a %s, expected an integer", key, gguf_type_name(kv->type));
    if (kv->type == GGUF_TYPE_U64 && kv->u > (uint64_t)INT64_MAX)
        return lm_errf(err, "GGUF key '%s' = %llu is too large", key, (unsigned long long)kv->u);
    *out = kv->i;
    return 1;
}

int gguf_get_num(const gguf_archive *a, const char *key, double *out, char *err) {
    const gguf_kv *kv = gguf_find_kv(a, key);
    if (!kv) return 0;
    if (!is_int_type(kv->type) && kv->type != GGUF_TYPE_F32 && kv->type != GGUF_TYPE_F64)
        return lm_errf(err, "GGUF key '%s' is a %s, expected a number", key, gguf_type_name(kv->type));
    if (!isfinite(kv->f)) return lm_errf(err, "GGUF key '%s' is not a finite number", key);
    *out = kv->f;
    return 1;
}

int gguf_get_bool(const gguf_archive *a, const char *key, int *out, char *err) {
    const gguf_kv *kv = gguf_find_kv(a, key);
    if (!kv) return 0;
    if (kv->type != GGUF_TYPE_BOOL)
        return lm_errf(err, "GGUF key '%s' is a %s, expected a bool", key, gguf_type_name(kv->type));
    *out = kv->i != 0;
    return 1;
}

int gguf_get_str(const gguf_archive *a, const char *key, char **out, char *err) {
    *out = NULL;
    const gguf_kv *kv = gguf_find_kv(a, key);
    if (!kv) return 0;
    if (kv->type != GGUF_TYPE_STRING)
        return lm_errf(err, "GGUF key '%s' is a %s, expected a string", key, gguf_type_name(kv->type));
    if (kv->s.len > (64u << 20)) return lm_errf(err, "GGUF key '%s' is too long", key);
    *out = malloc((size_t)kv->s.len + 1);
    if (!*out) return lm_errf(err, "out of memory");
    memcpy(*out, kv->s.p, (size_t)kv->s.len);
    (*out)[kv->s.len] = 0;
    return 1;
}

int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i) {
    int n = type_size[kv->arr_type];
    uint64_t u = le(kv->arr_data + i * (uint64_t)n, n);
    switch (kv->arr_type) {
    case GGUF_TYPE_I8: return sext(u, 8);
    case GGUF_TYPE_I16: return sext(u, 16);
    case GGUF_TYPE_I32: return sext(u, 32);
    default: return (int64_t)u;
    }
}

double gguf_arr_num(const gguf_kv *kv, uint64_t i) {
    if (kv->arr_type == GGUF_TYPE_F32) {
        uint32_t w = (uint32_t)le(kv->arr_data + i * 4, 4);
        float f;
        memcpy(&f, &w, 4);
        return f;
    }
    if (kv->arr_type == GGUF_TYPE_F64) {
        uint64_t w = le(kv->arr_data + i * 8, 8);
        double d;
        memcpy(&d, &w, 8);
        return d;
    }
    return (double)gguf_arr_int(kv, i);
}

int gguf_read_range(const gguf_archive *a, const gguf_tensor *t, uint64_t off, uint64_t len, void *dst, char *err) {
    if (off > t->nbytes || len > t->nbytes - off) return lm_errf(err, "read past the end of tensor '%s'", t->name);
    if (t->file < 0 || t->file >= a->nfiles) return lm_errf(err, "tensor '%s' has no file", t->name);
    if (lm_pread_full(a->files[t->file].fd, dst, len, t->offset + off, err) != 0)
        return lm_err_prefix(err, "%s: tensor '%s'", a->files[t->file].path, t->name);
    return 0;
}

/* GGUF reader: llama.cpp's model files, v2 and v3, single and split.
 *
 * File layout (ggml docs/gguf.md; everything little-endian):
 *   "GGUF", u32 version, u64 tensor count, u64 KV count,
 *   KVs:          string key, u32 value type, value
 *   tensor infos: string name, u32 n_dims, u64 ne[n_dims] (innermost first),
 *                 u32 ggml type, u64 offset (relative to the data section)
 *   padding to general.alignment (default 32), then the data section; every tensor
 *   starts at a multiple of the alignment.
 * A string is a u64 byte length and the bytes (no NUL). An array is a u32 element
 * type, a u64 count and the elements; arrays may nest.
 *
 * Split files (llama.cpp's gguf-split): NAME-00001-of-0000N.gguf ... each a complete
 * GGUF with its own tensors and data section; split.no / split.count /
 * split.tensors.count say which part a file is. The model's metadata is in part 1.
 *
 * Everything is validated before use, as for safetensors: the whole header is
 * parsed with bounds checks (counts are checked against the bytes left, so a hostile
 * count cannot make us allocate), every tensor's type is known, ne[0] fits its block
 * size, dims x type gives its byte count, its range is aligned, inside the file and
 * overlaps no other tensor, names are unique. Errors name the file and the tensor
 * (fuzz/fuzz_gguf.c).
 *
 * The header is read into memory (a prefix of the file, grown until the header fits)
 * and stays there while the archive is open: KV strings and arrays point into it.
 * Tensor data is read with pread, like safetensors.
 */
#ifndef LAZYMOE_GGUF_H
#define LAZYMOE_GGUF_H

#include "formats/dtype.h"

#include <stddef.h>
#include <stdint.h>

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_SPLITS 1024
#define GGUF_NEED_MORE (-2)

typedef enum {
    GGUF_TYPE_U8 = 0,
    GGUF_TYPE_I8 = 1,
    GGUF_TYPE_U16 = 2,
    GGUF_TYPE_I16 = 3,
    GGUF_TYPE_U32 = 4,
    GGUF_TYPE_I32 = 5,
    GGUF_TYPE_F32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_U64 = 10,
    GGUF_TYPE_I64 = 11,
    GGUF_TYPE_F64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

typedef struct {
    const char *p; /* into the mapping; not NUL-terminated */
    uint64_t len;
} gguf_str;

typedef struct {
    char *key;     /* NUL-terminated copy */
    gguf_type type;
    /* scalars (integers widened; bool is 0/1) */
    int64_t i;
    uint64_t u;
    double f;
    gguf_str s;
    /* arrays: element type, count, and for arrays of scalars the packed elements;
     * arrays of strings also get strs[n]. Nested arrays are validated, not indexed. */
    gguf_type arr_type;
    uint64_t arr_n;
    const uint8_t *arr_data;
    gguf_str *strs;
} gguf_kv;

typedef struct {
    char *name;
    uint32_t ggml_type;
    lm_dtype dtype;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* innermost first; unused dims are 1 */
    uint64_t offset;           /* absolute byte offset in its file */
    uint64_t nbytes;
    int file;
} gguf_tensor;

typedef struct {
    char *path;
    int fd;
    uint64_t size;
    uint8_t *header;    /* the bytes the header was parsed from (KVs point here) */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_start;
} gguf_file;

typedef struct gguf_archive {
    gguf_file *files;
    int nfiles;
    gguf_kv *kvs; /* the first file's (split.* keys of the others are checked, not kept) */
    int nkv;
    gguf_tensor *tensors; /* sorted by name */
    int ntensors;
} gguf_archive;

/* Parses one header held in buf[0..len) (a prefix of a file of file_size bytes).
 * Returns 0, -1 with err set, or GGUF_NEED_MORE when the header runs past len while
 * len < file_size (read a longer prefix and parse again). KVs go to the archive when keep_kvs; tensors are appended
 * with .file = file_index and absolute offsets. Used by gguf_open and by the fuzzer
 * (on an archive from gguf_new). */
int gguf_parse(gguf_archive *a, const uint8_t *buf, size_t len, uint64_t file_size, int file_index, int keep_kvs,
               char *err);
/* An empty archive (for gguf_parse on buffers). */
gguf_archive *gguf_new(void);
/* Sorts tensors by name, refuses duplicates and overlapping ranges (gguf_open does it). */
int gguf_finish(gguf_archive *a, char *err);

/* Opens PATH; if its name is a split part (-0000K-of-0000N.gguf), opens all N parts. */
int gguf_open(gguf_archive **out, const char *path, char *err);
void gguf_close(gguf_archive *a);

/* True if path names a .gguf file (by suffix). */
int gguf_is_path(const char *path);

const gguf_kv *gguf_find_kv(const gguf_archive *a, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_archive *a, const char *name);
const char *gguf_type_name(gguf_type t);

/* Typed KV reads: 1 when the key exists with a compatible type (any integer type for
 * get_int, checked to fit int64; any integer or float type for get_num), 0 when
 * absent; -1 with err naming the key when present with another type. */
int gguf_get_int(const gguf_archive *a, const char *key, int64_t *out, char *err);
int gguf_get_num(const gguf_archive *a, const char *key, double *out, char *err);
int gguf_get_bool(const gguf_archive *a, const char *key, int *out, char *err);
/* A string KV as a malloc'd NUL-terminated copy (*out NULL when absent). */
int gguf_get_str(const gguf_archive *a, const char *key, char **out, char *err);
/* Element i of an integer/float array as int64 / double (no bounds check: i < arr_n). */
int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i);
double gguf_arr_num(const gguf_kv *kv, uint64_t i);

/* Reads bytes [off, off+len) of a tensor. */
int gguf_read_range(const gguf_archive *a, const gguf_tensor *t, uint64_t off, uint64_t len, void *dst, char *err);

#endif

/* safetensors reader: single files and sharded models.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the raw little-endian tensor data; offsets are relative to the data start.
 *
 * Every header is validated before any tensor is used: the JSON is an object of
 * well-formed entries, dtype x shape equals the byte length, every range lies inside
 * the file, ranges do not overlap, names are unique. A hostile file produces an
 * error naming the file and the tensor, never a crash (fuzz/fuzz_safetensors.c).
 *
 * Ownership: st_archive owns its file descriptors, names and index; tensor
 * pointers returned by st_find stay valid until st_close.
 */
#ifndef LAZYMOE_SAFETENSORS_H
#define LAZYMOE_SAFETENSORS_H

#include "formats/dtype.h"

#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (256u << 20) /* 256 MiB of JSON is far beyond any real model */

typedef struct {
    char *name;
    char *stored_name; /* the name in the file where it differs (GGUF: blk.0.attn_q.weight), else NULL */
    lm_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t offset; /* absolute byte offset in its file */
    uint64_t nbytes;
    int file; /* index into st_archive.files */
    /* GGUF llama-architecture q/k projections (models/gguf_model.h): the rows of each
     * head of this many rows were interleaved by llama.cpp's converter; st_read puts
     * them back in Hugging Face order, and partial reads are refused. 0: none. */
    int rope_unpermute;
} st_tensor;

/* The tensor's name for messages, quoted: as the file names it, then the Hugging Face
 * name it is read as where that differs ("'blk.0.attn_q.weight' (read as
 * 'model.layers.0.self_attn.q_proj.weight')"). buf holds ST_LABEL_LEN bytes. */
#define ST_LABEL_LEN 2200
const char *st_label(const st_tensor *t, char *buf, size_t cap);

typedef struct {
    char *path;
    int fd;
    uint64_t size;
    uint64_t data_start; /* 8 + header length */
    int is_mlx;          /* __metadata__.format == "mlx" */
} st_file;

typedef struct st_archive st_archive;
struct st_archive {
    st_file *files;
    int nfiles;
    st_tensor *tensors; /* sorted by name */
    int ntensors;
};

/* Parses one header held in memory. `file_size` is the size of the whole file the
 * header came from (bounds-checks the data ranges). Appends tensors to *tensors
 * (realloc'd, *count updated) with .file = file_index and absolute offsets.
 * Used by st_open and directly by the fuzzer. */
int st_parse_header(const char *json, size_t json_len, uint64_t file_size, int file_index,
                    st_tensor **tensors, int *count, int *is_mlx, char *err);

/* Opens DIR/model.safetensors, or the shards listed by DIR/model.safetensors.index.json,
 * or, failing both, every *.safetensors file in DIR. PATH may also name one file. */
int st_open(st_archive **out, const char *path, char *err);
void st_close(st_archive *a);

const st_tensor *st_find(const st_archive *a, const char *name);
/* Elements in the tensor (product of its shape). */
uint64_t st_numel(const st_tensor *t);
/* Reads the whole tensor into dst (t->nbytes bytes). */
int st_read(const st_archive *a, const st_tensor *t, void *dst, char *err);
/* Reads bytes [off, off+len) of the tensor. */
int st_read_range(const st_archive *a, const st_tensor *t, uint64_t off, uint64_t len, void *dst,
                  char *err);

#endif

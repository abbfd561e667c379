/* GGUF writer: KVs and tensors collected in memory, then written as one v3 file in
 * the layout gguf.h describes (tensors in the order added, each at a multiple of the
 * alignment). Used by tools/gguf_write (model directory -> GGUF) and by tests that
 * build small or hostile files.
 *
 * Tensor data is borrowed: the pointer given to gguf_w_tensor must stay valid until
 * gguf_w_save returns (or pass own = 1 to hand a malloc'd buffer to the writer).
 */
#ifndef LAZYMOE_GGUF_WRITE_H
#define LAZYMOE_GGUF_WRITE_H

#include "formats/gguf.h"

typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_w_new(void);
void gguf_w_free(gguf_writer *w);

/* KVs (written in the order added). Each returns 0 or -1 (out of memory; sticky, and
 * reported again by gguf_w_save). */
int gguf_w_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_w_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_w_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_w_f32(gguf_writer *w, const char *key, float v);
int gguf_w_bool(gguf_writer *w, const char *key, int v);
int gguf_w_str(gguf_writer *w, const char *key, const char *v);
/* Arrays: n strings (each NUL-terminated), or n scalars of type t (packed little-endian). */
int gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n);
int gguf_w_arr(gguf_writer *w, const char *key, gguf_type t, const void *v, uint64_t n);
/* Raw KV: the bytes after the key (u32 type + value), for tests of odd encodings. */
int gguf_w_raw(gguf_writer *w, const char *key, const void *bytes, size_t n);

/* A tensor of ggml type `ggml_type` with n_dims dims ne[] (innermost first) and nbytes
 * of data. nbytes is not checked against the dims (tests write wrong ones on purpose). */
int gguf_w_tensor(gguf_writer *w, const char *name, uint32_t ggml_type, int n_dims, const int64_t *ne,
                  const void *data, uint64_t nbytes, int own);

/* The alignment of the data section (default 32; written as general.alignment when not 32). */
void gguf_w_set_alignment(gguf_writer *w, uint32_t alignment);

/* Writes the file (atomically: a temporary file renamed into place). */
int gguf_w_save(gguf_writer *w, const char *path, char *err);
/* The whole file in memory (*out malloc'd), for tests and the fuzzer's seeds. */
int gguf_w_to_buffer(gguf_writer *w, uint8_t **out, size_t *len, char *err);

#endif

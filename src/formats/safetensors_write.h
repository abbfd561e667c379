/* safetensors writers: one file, and a sharded model directory as mlx-lm saves it.
 *
 * Both work in two phases so tensors can be streamed without holding them:
 *   1. declare every tensor (name, dtype, shape) -- nothing is written yet;
 *   2. start: the header is fixed and written; then write each tensor's bytes in any
 *      order and any number of pieces (write_at with an offset inside the tensor),
 *      e.g. one expert slice of a stacked [E, out, in] tensor at a time;
 *   3. commit: every tensor must be fully written; the file is fsync'd and renamed
 *      from its temporary name (PATH.tmp.PID) to PATH. Freeing an uncommitted writer
 *      removes the temporary file, so an interrupted write never leaves a file under
 *      its final name.
 *
 * File layout, matching mx.save_safetensors (mlx/io/safetensors.cpp): the header is
 * compact JSON with keys sorted bytewise (nlohmann's std::map order), so
 * "__metadata__" comes first, then tensors; each entry is
 * {"data_offsets":[b,e],"dtype":"U32","shape":[...]}; tensor data follows in the same
 * sorted order with no gaps. One deliberate difference: the header is padded with
 * spaces to a multiple of 8 bytes (as the safetensors format allows and the Rust
 * safetensors library does), so every tensor starts 8-byte aligned relative to the
 * file when the tensors before it are multiples of 8 bytes. mlx reads such files.
 *
 * Sharded directories follow mlx-lm's save_model (mlx_lm/utils.py): shards of at most
 * max_shard_bytes of tensor data (mlx-lm: 5 << 30, i.e. 5 GiB), filled in declaration
 * order, a new shard started when the next tensor would overflow the current one;
 * one shard is named model.safetensors, several model-0000K-of-0000N.safetensors;
 * model.safetensors.index.json is always written, as json.dump(indent=4) of
 * {"metadata": {"total_size", "total_parameters"}, "weight_map": {sorted names}}.
 * Unlike mlx-lm, a tensor larger than the limit never leaves an empty shard before it.
 *
 * Ownership: the writer copies names and shapes; data pointers are used only during
 * the call.
 */
#ifndef LAZYMOE_SAFETENSORS_WRITE_H
#define LAZYMOE_SAFETENSORS_WRITE_H

#include "formats/dtype.h"

#include <stdint.h>

#define STW_MLX_MAX_SHARD_BYTES (5ull << 30)

/* ---- one file ---------------------------------------------------------------- */
typedef struct stw_file stw_file;

/* `format` goes into __metadata__ {"format": format} (mlx-lm uses "mlx"); NULL omits it. */
int stw_file_create(stw_file **out, const char *path, const char *format, char *err);
int stw_file_declare(stw_file *w, const char *name, lm_dtype dtype, int ndim,
                     const int64_t *shape, char *err);
/* Fixes the layout and writes the header to the temporary file. */
int stw_file_start(stw_file *w, char *err);
/* Writes len bytes at byte offset `offset` inside tensor `name`. Pieces of one tensor
 * must not overlap (the writer counts bytes to check completeness). */
int stw_file_write_at(stw_file *w, const char *name, uint64_t offset, const void *data,
                      size_t len, char *err);
int stw_file_commit(stw_file *w, char *err);
/* Frees the writer; removes the temporary file unless committed. NULL is fine. */
void stw_file_free(stw_file *w);
/* Bytes of tensor data declared so far. */
uint64_t stw_file_data_bytes(const stw_file *w);

/* ---- sharded model directory ----------------------------------------------------- */
typedef struct stw_model stw_model;

/* Writes into directory `dir` (must exist). max_shard_bytes 0 means mlx-lm's 5 GiB. */
int stw_model_create(stw_model **out, const char *dir, uint64_t max_shard_bytes, char *err);
int stw_model_declare(stw_model *m, const char *name, lm_dtype dtype, int ndim,
                      const int64_t *shape, char *err);
/* The shards' __metadata__ format: "mlx" unless set (before start) to another static
 * string, e.g. "pt" as transformers' save_pretrained writes. */
void stw_model_set_format(stw_model *m, const char *format);
int stw_model_start(stw_model *m, char *err);
int stw_model_write_at(stw_model *m, const char *name, uint64_t offset, const void *data,
                       size_t len, char *err);
/* Commits every shard, then writes model.safetensors.index.json. total_parameters is
 * recorded in the index metadata as mlx-lm does (original weight count). */
int stw_model_commit(stw_model *m, uint64_t total_parameters, char *err);
void stw_model_free(stw_model *m);
int stw_model_shard_count(const stw_model *m);
/* Bytes of one declared tensor (0 if unknown). */
uint64_t stw_model_tensor_bytes(const stw_model *m, const char *name);

#endif

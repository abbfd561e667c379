/* The expert store: the one place expert bytes are read from disk.
 *
 * A model's experts are described per MoE layer by lm_expert_source (models/model.h):
 * expert e is nparts byte ranges (file, offset, length). The store opens what the
 * reads need (an O_DIRECT descriptor per file where the file system allows it, the
 * archive's buffered one otherwise) and owns the single read path that both
 * consumers use:
 *   - resident loading (lm_store_load_resident): every expert into memory, in the
 *     resident slot layout (part p at source.part_off[p]);
 *   - the expert cache (experts/cache.c): one read request at a time, in the cache's
 *     slot layout (lm_store_slot_layout), from its reader threads.
 *
 * Every system read goes through an lm_io read function, pread(2) by default, so
 * tests can inject faults (errors, short reads, delays, failures that go away) at
 * any read of any expert. A failed read is retried once (LM_STORE_READ_TRIES): a
 * transient fault costs one more read; a lasting one is an error naming the file,
 * layer, expert and cause, e.g.
 *   "model.safetensors: layer 3 expert 17: read error at offset 123: Input/output error (2 tries)".
 *
 * Thread-safety: after lm_store_open the store is read-only; any number of threads
 * may read through it at once (the lm_io function must allow that too).
 */
#ifndef LAZYMOE_EXPERT_STORE_H
#define LAZYMOE_EXPERT_STORE_H

#include "models/model.h"

#include <stdint.h>
#include <sys/types.h>

/* What one system read is for (fault injection picks its victims by these). */
typedef struct {
    const char *path;       /* the archive file */
    int layer, expert, part;
    int direct;             /* 1: fd was opened with O_DIRECT */
} lm_read_target;

/* The read function: pread(2)'s contract -- up to len bytes of fd at offset into
 * buf; returns the count (fewer than len is allowed and continued; 0 = end of file)
 * or -1 with errno set (EINTR is retried). */
typedef ssize_t (*lm_read_fn)(void *ctx, const lm_read_target *t, int fd, void *buf, size_t len, uint64_t offset);

typedef struct {
    lm_read_fn read; /* NULL = pread */
    void *ctx;
} lm_io;

/* Attempts of one read (a request, or one part of a resident expert) before it fails. */
#define LM_STORE_READ_TRIES 2

typedef struct lm_expert_store lm_expert_store;

/* Opens the store of a model loaded by lm_weights_load. direct_io: use O_DIRECT
 * where the file system allows it (a warning through lm_log and buffered reads
 * where it does not). io: NULL = pread. The store must be closed before w is freed. */
int lm_store_open(lm_expert_store **out, lm_weights *w, int direct_io, const lm_io *io, char *err);
void lm_store_close(lm_expert_store *st);
const lm_weights *lm_store_weights(const lm_expert_store *st);

/* Reads every expert of every MoE layer into memory (resident), tracked by w's
 * buffers; then drops the files' page cache. */
int lm_store_load_resident(lm_expert_store *st, lm_progress_fn progress, void *progress_ctx, char *err);
/* Reads expert e of MoE layer l into `slot` in the resident layout (source.slot_bytes,
 * 64-byte aligned). */
int lm_store_read_expert(const lm_expert_store *st, int l, int e, void *slot, char *err);

/* ---- the cache's slot layout and read requests ------------------------------------
 * Direct I/O reads whole LM_DIRECT_ALIGN blocks into aligned memory, so in a cache
 * slot each part p owns a region starting at an aligned offset, region[p], long
 * enough for the aligned span of that part in any expert; part p of expert e lies at
 * region[p] + lm_store_part_shift(s, e, p) once read. See store.c. */

/* Fills region[] and returns the slot size (a multiple of LM_DIRECT_ALIGN). */
uint64_t lm_store_slot_layout(const lm_expert_source *s, int n_experts, uint64_t region[LM_EXPERT_MAX_PARTS]);
/* Offset in part p's region where expert e's bytes of that part lie once read. */
uint64_t lm_store_part_shift(const lm_expert_source *s, int e, int p);
/* Read requests part p of expert e is split into with requests of at most chunk
 * bytes (chunk: a multiple of LM_DIRECT_ALIGN); and all parts together. */
int lm_store_part_requests(const lm_expert_source *s, int e, int p, uint64_t chunk);
int lm_store_expert_requests(const lm_expert_source *s, int e, uint64_t chunk);
/* Performs request k of part p of expert e of layer l into `slot` (laid out by
 * lm_store_slot_layout into region[]). *bytes: the part's bytes it delivered;
 * *direct: whether O_DIRECT carried them. Returns 0, or -1 with err naming the file,
 * layer and expert. The request's bytes of the slot are undefined after a failure. */
int lm_store_read_request(const lm_expert_store *st, int l, int e, int p, int k, uint64_t chunk, char *slot,
                          const uint64_t region[LM_EXPERT_MAX_PARTS], uint64_t *bytes, int *direct, char *err);

#endif

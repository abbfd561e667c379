/* Reading a model's resident tensors into the page cache ahead of the loader.
 *
 * The loader (models/weights.c) reads the resident tensors one at a time, in its own
 * order, each a buffered pread at its place in files that are mostly experts: one
 * request in flight, at about a third of what the disk gives to several. A prefetch
 * runs beside it: a few threads read the same byte ranges (file order, in pieces of a
 * few MB) into a scratch buffer, so the kernel keeps several requests in flight and the
 * loader's own reads find the pages cached or already on their way. It only warms the
 * page cache: every byte the model uses is still read, checked and converted by the
 * loader, and a failed prefetch read is not an error (the loader reports its own).
 */
#ifndef LAZYMOE_FORMATS_ARCHIVE_PREFETCH_H
#define LAZYMOE_FORMATS_ARCHIVE_PREFETCH_H

#include "formats/safetensors.h"

typedef struct st_prefetch st_prefetch;

/* Which tensors to read ahead: nonzero for a tensor the loader will read whole. */
typedef int (*st_prefetch_filter)(const st_tensor *t);

/* Starts `threads` readers over the tensors `want` accepts, unless they add up to less
 * than `min_bytes` or to nothing (then, or when threads cannot start, returns NULL:
 * no prefetch). */
st_prefetch *st_prefetch_start(const st_archive *a, st_prefetch_filter want, int threads, uint64_t min_bytes);

/* Stops the readers (the pieces in flight finish) and frees the prefetch; NULL is a
 * no-op. Returns the bytes the readers read. */
uint64_t st_prefetch_stop(st_prefetch *p);

/* Waits until every piece is read, then frees the prefetch, as st_prefetch_stop. */
uint64_t st_prefetch_wait(st_prefetch *p);

#endif

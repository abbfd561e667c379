/* Operating-system services, kept in one place so the rest of the code is portable.
 *
 * Linux is the implementation here (platform_posix.c); macOS differences (no
 * O_DIRECT, no /proc) belong in this layer only.
 */
#ifndef LAZYMOE_PLATFORM_H
#define LAZYMOE_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

/* Opens a regular file read-only; returns fd >= 0 or -1 with the reason in err. A FIFO,
 * device or directory is refused without blocking (opening a FIFO waits for a writer). */
int lm_file_open_read(const char *path, char *err);
/* -1 with "PATH is not a regular file" when path exists (after symbolic links) but is a
 * FIFO, device, socket or directory: model files read with fopen or json_load_file are
 * checked with it first, since opening a FIFO blocks forever. 0 for a regular file and
 * for a missing one, which each caller reports its own way. */
int lm_refuse_special_file(const char *path, char *err);
void lm_file_close(int fd);
/* Tells the OS the file's cached pages are no longer needed (weights copied into
 * our own memory should not be counted twice against a memory limit). */
void lm_file_drop_cache(int fd);
/* Size of an open file in bytes, or -1. */
int64_t lm_file_size(int fd);
/* Reads exactly len bytes at offset, retrying on EINTR and short reads. A file
 * that ends early is an error ("file shorter than expected"). */
int lm_pread_full(int fd, void *buf, size_t len, uint64_t offset, char *err);

/* Opens a file for direct (uncached) reads: O_DIRECT on Linux (F_NOCACHE would be
 * the macOS equivalent). Returns fd >= 0, or -1 if the file system refuses direct
 * I/O (tmpfs) or the open fails; the reason is in err. Direct reads need offsets,
 * lengths and buffers aligned to LM_DIRECT_ALIGN. */
#define LM_DIRECT_ALIGN 4096
int lm_file_open_direct(const char *path, char *err);

/* Writes a whole file atomically: to PATH.tmp.PID, fsync, rename over PATH. */
int lm_write_file_atomic(const char *path, const void *data, size_t len, char *err);

/* The user's cache directory for lazymoe: $XDG_CACHE_HOME/lazymoe when that is an
 * absolute path, else $HOME/.cache/lazymoe (the XDG base-directory rule). It is not
 * created here. -1 with the reason when neither is set or the name does not fit. */
int lm_user_cache_dir(char *out, size_t len, char *err);

/* Monotonic seconds. */
double lm_now(void);
/* Number of online CPU cores (at least 1). */
int lm_cpu_count(void);
/* Peak resident set size of this process in bytes (0 if unknown). */
uint64_t lm_peak_rss(void);
/* Bytes of memory available to this process: min(MemAvailable, cgroup limit - usage). */
uint64_t lm_mem_available(void);

/* Allocation that reports failure instead of returning NULL silently: returns NULL
 * and writes "out of memory allocating N bytes for WHAT" into err. */
void *lm_malloc(size_t n, const char *what, char *err);
void *lm_calloc(size_t n, size_t size, const char *what, char *err);
/* 64-byte aligned allocation (free with lm_free_aligned). */
void *lm_malloc_aligned(size_t n, const char *what, char *err);
/* An allocation that direct reads can land in: LM_DIRECT_ALIGN-aligned (free with
 * lm_free_aligned). */
void *lm_malloc_direct(size_t n, const char *what, char *err);
/* Bytes lm_malloc_direct(n) really reserves (it rounds large buffers up to whole
 * huge pages, which the process may touch), for exact memory plans. */
size_t lm_malloc_direct_size(size_t n);
void lm_free_aligned(void *p);

#endif

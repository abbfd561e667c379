/* File-system writes: what converters and savers need beyond platform.h's readers.
 *
 * Everything here returns 0 / -1 (or an fd) and fills a caller-owned err buffer.
 * Kept apart from platform.h so writing code pulls in only what it uses; the POSIX
 * implementation is fs_posix.c.
 */
#ifndef LAZYMOE_FS_H
#define LAZYMOE_FS_H

#include <stddef.h>
#include <stdint.h>

/* Creates (or truncates) a file for writing, mode 0644; returns fd >= 0 or -1. */
int lm_file_create(const char *path, char *err);
/* Writes exactly len bytes at offset, retrying on EINTR and short writes. */
int lm_pwrite_full(int fd, const void *buf, size_t len, uint64_t offset, char *err);
/* fsync then close; the fd is closed even on failure. `path` names it in errors. */
int lm_file_sync_close(int fd, const char *path, char *err);

typedef enum { LM_PATH_MISSING = 0, LM_PATH_FILE, LM_PATH_DIR, LM_PATH_OTHER } lm_path_kind;
lm_path_kind lm_path_type(const char *path);
/* 1 if the directory has no entries besides . and .., 0 if it has, -1 on error. */
int lm_dir_is_empty(const char *path, char *err);
int lm_mkdir(const char *path, char *err);
/* Makes a directory and its missing parents (mode 0755), like mkdir -p: one that
 * exists already (also through a symbolic link) is fine; the error names the first
 * component that could not be made. */
int lm_mkdir_parents(const char *path, char *err);
/* rename(2) with an error naming both paths. */
int lm_rename(const char *from, const char *to, char *err);
/* Removes a file or a directory tree (does not follow symbolic links). Missing is fine. */
int lm_remove_tree(const char *path, char *err);
/* Copies a regular file's bytes to dst (created 0644, fsync'd). */
int lm_copy_file(const char *src, const char *dst, char *err);
/* fsync of a directory, so a rename inside it is durable. */
int lm_fsync_dir(const char *path, char *err);

#endif

/* POSIX implementation of fs.h. */
#include "platform/fs.h"

#include "common/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int lm_file_create(const char *path, char *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return lm_errf(err, "cannot create %s: %s", path, strerror(errno));
    return fd;
}

int lm_pwrite_full(int fd, const void *buf, size_t len, uint64_t offset, char *err) {
    const char *p = buf;
    while (len > 0) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        ssize_t n = pwrite(fd, p, chunk, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            return lm_errf(err, "write error at offset %llu: %s", (unsigned long long)offset,
                           strerror(errno));
        }
        if (n == 0) return lm_errf(err, "write made no progress at offset %llu",
                                   (unsigned long long)offset);
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

int lm_file_sync_close(int fd, const char *path, char *err) {
    int rc = 0;
    if (fsync(fd) != 0) rc = lm_errf(err, "cannot flush %s: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = lm_errf(err, "cannot close %s: %s", path, strerror(errno));
    return rc;
}

lm_path_kind lm_path_type(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return LM_PATH_MISSING;
    if (S_ISREG(st.st_mode)) return LM_PATH_FILE;
    if (S_ISDIR(st.st_mode)) return LM_PATH_DIR;
    return LM_PATH_OTHER;
}

int lm_dir_is_empty(const char *path, char *err) {
    DIR *d = opendir(path);
    if (!d) return lm_errf(err, "cannot open directory %s: %s", path, strerror(errno));
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            empty = 0;
            break;
        }
    }
    closedir(d);
    return empty;
}

int lm_mkdir(const char *path, char *err) {
    if (mkdir(path, 0755) != 0)
        return lm_errf(err, "cannot create directory %s: %s", path, strerror(errno));
    return 0;
}

/* mkdir that accepts an existing directory (EEXIST is reported before permission
 * errors, but a read-only or inaccessible parent may say otherwise). */
static int mkdir_once(const char *path) {
    if (mkdir(path, 0755) == 0) return 0;
    int saved = errno;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    errno = saved;
    return -1;
}

int lm_mkdir_parents(const char *path, char *err) {
    size_t n = strlen(path);
    if (n == 0) return lm_errf(err, "cannot create a directory with an empty name");
    char *p = malloc(n + 1);
    if (!p) return lm_errf(err, "out of memory");
    memcpy(p, path, n + 1);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/' || s[-1] == '/') continue;
        *s = 0;
        int bad = mkdir_once(p) != 0;
        if (bad) lm_errf(err, "cannot create directory %s: %s", p, strerror(errno));
        *s = '/';
        if (bad) {
            free(p);
            return -1;
        }
    }
    int rc = mkdir_once(p) != 0 ? lm_errf(err, "cannot create directory %s: %s", p, strerror(errno)) : 0;
    free(p);
    return rc;
}

int lm_rename(const char *from, const char *to, char *err) {
    if (rename(from, to) != 0)
        return lm_errf(err, "cannot rename %s to %s: %s", from, to, strerror(errno));
    return 0;
}

int lm_remove_tree(const char *path, char *err) {
    lm_path_kind kind = lm_path_type(path);
    if (kind == LM_PATH_MISSING) return 0;
    if (kind != LM_PATH_DIR) {
        if (unlink(path) != 0) return lm_errf(err, "cannot remove %s: %s", path, strerror(errno));
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) return lm_errf(err, "cannot open directory %s: %s", path, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        size_t n = strlen(path) + strlen(e->d_name) + 2;
        char *child = malloc(n);
        if (!child) {
            rc = lm_errf(err, "out of memory removing %s", path);
            break;
        }
        snprintf(child, n, "%s/%s", path, e->d_name);
        rc = lm_remove_tree(child, err);
        free(child);
    }
    closedir(d);
    if (rc == 0 && rmdir(path) != 0)
        rc = lm_errf(err, "cannot remove directory %s: %s", path, strerror(errno));
    return rc;
}

int lm_copy_file(const char *src, const char *dst, char *err) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return lm_errf(err, "cannot open %s: %s", src, strerror(errno));
    int out = lm_file_create(dst, err);
    if (out < 0) {
        close(in);
        return -1;
    }
    char buf[1 << 16];
    uint64_t off = 0;
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = lm_errf(err, "cannot read %s: %s", src, strerror(errno));
            break;
        }
        if (n == 0) break;
        if (lm_pwrite_full(out, buf, (size_t)n, off, err) != 0) {
            lm_err_prefix(err, "%s", dst);
            rc = -1;
            break;
        }
        off += (uint64_t)n;
    }
    close(in);
    if (lm_file_sync_close(out, dst, rc == 0 ? err : NULL) != 0) rc = -1;
    return rc;
}

int lm_fsync_dir(const char *path, char *err) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return lm_errf(err, "cannot open directory %s: %s", path, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0) rc = lm_errf(err, "cannot flush directory %s: %s", path, strerror(errno));
    close(fd);
    return rc;
}

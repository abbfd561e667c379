#include "platform/platform.h"

#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int lm_file_open_read(const char *path, char *err) {
    /* O_NONBLOCK so that a FIFO opens at once and is refused below, instead of waiting */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return lm_errf(err, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return lm_errf(err, "%s is not a regular file", path);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        close(fd);
        return lm_errf(err, "cannot open %s: %s", path, strerror(errno));
    }
    return fd;
}

int lm_refuse_special_file(const char *path, char *err) {
    struct stat st;
    if (stat(path, &st) != 0 || S_ISREG(st.st_mode)) return 0;
    return lm_errf(err, "%s is not a regular file", path);
}

int lm_file_open_direct(const char *path, char *err) {
#ifdef O_DIRECT
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (fd < 0) return lm_errf(err, "%s: direct reads refused (%s)", path, strerror(errno));
    return fd;
#else
    return lm_errf(err, "%s: direct reads are not available on this platform", path);
#endif
}

void lm_file_drop_cache(int fd) {
#ifdef POSIX_FADV_DONTNEED
    if (fd >= 0) (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
#else
    (void)fd;
#endif
}

void lm_file_close(int fd) {
    if (fd >= 0) close(fd);
}

int64_t lm_file_size(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    return (int64_t)st.st_size;
}

int lm_pread_full(int fd, void *buf, size_t len, uint64_t offset, char *err) {
    char *p = buf;
    while (len > 0) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        ssize_t n = pread(fd, p, chunk, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            return lm_errf(err, "read error at offset %llu: %s", (unsigned long long)offset,
                           strerror(errno));
        }
        if (n == 0)
            return lm_errf(err, "file shorter than expected (end of file at offset %llu)",
                           (unsigned long long)offset);
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

int lm_write_file_atomic(const char *path, const void *data, size_t len, char *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return lm_errf(err, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return lm_errf(err, "cannot create %s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            lm_errf(err, "cannot write %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        p += n;
        left -= (size_t)n;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        lm_errf(err, "cannot flush %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        lm_errf(err, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int lm_user_cache_dir(char *out, size_t len, char *err) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && xdg[0] == '/') n = snprintf(out, len, "%s/lazymoe", xdg);
    else if (home && home[0]) n = snprintf(out, len, "%s/.cache/lazymoe", home);
    else return lm_errf(err, "neither XDG_CACHE_HOME nor HOME is set");
    if (n < 0 || (size_t)n >= len) return lm_errf(err, "the user cache directory's name is too long");
    return 0;
}

double lm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int lm_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

uint64_t lm_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

static uint64_t read_u64_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[64] = {0};
    uint64_t v = 0;
    if (fgets(buf, sizeof buf, f) && strncmp(buf, "max", 3) != 0) v = strtoull(buf, NULL, 10);
    fclose(f);
    return v;
}

uint64_t lm_mem_available(void) {
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            unsigned long long kb;
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = (uint64_t)kb * 1024u;
                break;
            }
        }
        fclose(f);
    }
    /* The cgroup this process is in (v1 "N:memory:/path", v2 "0::/path"): its
     * limit minus what the group already uses (page cache included). */
    uint64_t limit = 0, used = 0;
    FILE *cg = fopen("/proc/self/cgroup", "r");
    char line[1024], path[1400];
    while (cg && fgets(line, sizeof line, cg)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = 0;
        const char *ctrl = c1 + 1, *rel = c2 + 1;
        if (!strcmp(rel, "/")) rel = "";
        if (strstr(ctrl, "memory")) {
            snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", rel);
            uint64_t l = read_u64_file(path);
            snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.usage_in_bytes", rel);
            if (l && (!limit || l < limit)) limit = l, used = read_u64_file(path);
        } else if (ctrl[0] == 0) {
            snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", rel);
            uint64_t l = read_u64_file(path);
            snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.current", rel);
            if (l && (!limit || l < limit)) limit = l, used = read_u64_file(path);
        }
    }
    if (cg) fclose(cg);
    if (limit && limit < (1ull << 60)) {
        uint64_t room = limit > used ? limit - used : 0;
        if (!avail || room < avail) avail = room;
    }
    return avail;
}

void *lm_malloc(size_t n, const char *what, char *err) {
    void *p = malloc(n ? n : 1);
    if (!p) lm_errf(err, "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *lm_calloc(size_t n, size_t size, const char *what, char *err) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) lm_errf(err, "out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

/* Large buffers (weights, expert slots) are 2 MiB aligned and asked to use huge pages:
 * filling gigabytes through 4 KiB pages costs a page fault per 4 KiB. */
static size_t alloc_alignment(size_t n, size_t min_align) { return n >= (8u << 20) ? (2u << 20) : min_align; }

static void *malloc_aligned_to(size_t n, size_t min_align, const char *what, char *err) {
    void *p = NULL;
    size_t align = alloc_alignment(n, min_align);
    size_t rounded = (n + align - 1) & ~(align - 1);
    if (rounded < n || posix_memalign(&p, align, rounded ? rounded : align) != 0) {
        lm_errf(err, "out of memory allocating %zu bytes for %s", n, what);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    if (align > min_align) (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return p;
}

void *lm_malloc_aligned(size_t n, const char *what, char *err) { return malloc_aligned_to(n, 64, what, err); }

void *lm_malloc_direct(size_t n, const char *what, char *err) {
    return malloc_aligned_to(n, LM_DIRECT_ALIGN, what, err);
}

size_t lm_malloc_direct_size(size_t n) {
    size_t align = alloc_alignment(n, LM_DIRECT_ALIGN);
    return n ? (n + align - 1) & ~(align - 1) : align;
}

void lm_free_aligned(void *p) { free(p); }

#include "server/disk_cache.h"
#include "server/internal.h"

#include "common/buf.h"
#include "common/error.h"
#include "platform/fs.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char suffix[] = ".lmkv";

static int ends_with(const char *s, const char *tail) {
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

static void entry_free(srv_disk_entry *e) {
    free(e->path);
    free(e->tokens);
    memset(e, 0, sizeof *e);
}

static void drop(srv_disk_cache *c, int i, int unlink_file) {
    if (unlink_file) unlink(c->e[i].path);
    entry_free(&c->e[i]);
    c->e[i] = c->e[--c->n];
}

static int add(srv_disk_cache *c, const char *path, int32_t *tokens, int n, uint64_t bytes) {
    if (LM_GROW(c->e, c->cap, (size_t)c->n + 1) != 0) return -1;
    srv_disk_entry *e = &c->e[c->n];
    if (!(e->path = strdup(path))) return -1;
    e->tokens = tokens;
    e->n = n;
    e->bytes = bytes;
    e->last_used = ++c->clock;
    c->n++;
    return 0;
}

static uint64_t file_bytes(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Removes the least recently used files until ours and `incoming` more bytes fit the
 * limit. */
static void enforce_limit(srv_disk_cache *c, uint64_t incoming) {
    for (;;) {
        uint64_t total = incoming;
        int lru = -1;
        for (int i = 0; i < c->n; i++) {
            total += c->e[i].bytes;
            if (lru < 0 || c->e[i].last_used < c->e[lru].last_used) lru = i;
        }
        if (total <= c->limit || lru < 0) return;
        srv_log("prompt cache: removing %s (%d tokens) to stay within the disk limit", c->e[lru].path, c->e[lru].n);
        drop(c, lru, 1);
    }
}

int srv_disk_init(srv_disk_cache *c, lazymoe_model *m, const char *dir, uint64_t limit, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    c->m = m;
    c->min_tokens = 1024;
    if (!dir || !limit) return 0;
    char path[4096], mkerr[LM_ERR_LEN];
    if (strlen(dir) >= sizeof path) {
        snprintf(err, errlen, "prompt cache directory name too long");
        return -1;
    }
    if (lm_mkdir_parents(dir, mkerr) != 0) {
        snprintf(err, errlen, "cannot make the prompt cache directory %s: %s", dir, mkerr);
        return -1;
    }
    if (!(c->dir = strdup(dir))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->limit = limit;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "cannot read the prompt cache directory %s", dir);
        return -1;
    }
    struct dirent *de;
    int found = 0, skipped = 0;
    while ((de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, suffix)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        int32_t *tokens = NULL;
        int n = 0;
        char e[512];
        if (lazymoe_session_file_tokens(m, path, &tokens, &n, e, sizeof e) != 0) {
            skipped++; /* another model's or computation's, or corrupt: not ours to use */
            if (!strstr(e, "another model")) srv_log("prompt cache: skipping %s", e);
            continue;
        }
        if (add(c, path, tokens, n, file_bytes(path)) != 0) {
            free(tokens);
            break;
        }
        found++;
    }
    closedir(d);
    enforce_limit(c, 0);
    if (found || skipped)
        srv_log("prompt cache: %d stored prompt%s in %s%s", found, found == 1 ? "" : "s", dir,
                skipped ? " (other files skipped)" : "");
    return 0;
}

void srv_disk_free(srv_disk_cache *c) {
    for (int i = 0; i < c->n; i++) entry_free(&c->e[i]);
    free(c->e);
    free(c->dir);
    memset(c, 0, sizeof *c);
}

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb) {
    int k = 0;
    while (k < na && k < nb && a[k] == b[k]) k++;
    return k;
}

int srv_disk_restore(srv_disk_cache *c, lazymoe_session *s, const int32_t *ids, int n, int have) {
    if (!c->dir) return have;
    for (;;) {
        int best = -1, best_lcp = have;
        for (int i = 0; i < c->n; i++) {
            int l = common_prefix(c->e[i].tokens, c->e[i].n, ids, n);
            if (l > best_lcp) {
                best = i;
                best_lcp = l;
            }
        }
        /* worth a file read only when it saves a real amount of evaluation */
        if (best < 0 || best_lcp - have < 64) return have;
        char err[512];
        double t0 = lm_now();
        /* only the shared prefix is restored (the last prompt token is evaluated again for
         * its logits): the session's KV room is what this request was given, not the
         * stored conversation's length */
        int keep = best_lcp >= n ? n - 1 : best_lcp;
        if (lazymoe_session_load_prefix(s, c->e[best].path, keep, err, sizeof err) == 0) {
            c->e[best].last_used = ++c->clock;
            srv_log("prompt cache: restored %d of the %d tokens in %s in %.2fs", keep, c->e[best].n, c->e[best].path,
                    lm_now() - t0);
            return keep;
        }
        srv_log("prompt cache: dropping %s", err);
        drop(c, best, 1);
        have = 0; /* the session was emptied */
    }
}

void srv_disk_store(srv_disk_cache *c, const lazymoe_session *s, int n, int evaluated) {
    if (!c->dir || n < c->min_tokens || evaluated < c->min_tokens) return;
    const int32_t *t = lazymoe_session_tokens(s);
    for (int i = 0; i < c->n; i++)
        if (c->e[i].n >= n && common_prefix(c->e[i].tokens, c->e[i].n, t, n) == n) return; /* covered */
    /* The limit holds while the file is written too (its temporary file is in the
     * directory): room is made first, and a prompt whose file alone exceeds the limit
     * is not stored -- it would push out every other stored prompt for nothing. */
    uint64_t want = lazymoe_session_file_bytes(c->m, n);
    if (want > c->limit) {
        srv_log("prompt cache: not stored: %d tokens take %.1f MB, over the disk limit of %.1f MB", n, (double)want / 1e6,
                (double)c->limit / 1e6);
        return;
    }
    /* stored prefixes of this prompt are superseded by it */
    for (int i = c->n - 1; i >= 0; i--)
        if (c->e[i].n < n && common_prefix(c->e[i].tokens, c->e[i].n, t, n) == c->e[i].n) drop(c, i, 1);
    enforce_limit(c, want);
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint32_t)t[i]) * 0x100000001b3ull;
    char path[4200], err[512];
    snprintf(path, sizeof path, "%s/%016llx-%d%s", c->dir, (unsigned long long)h, n, suffix);
    int32_t *copy = malloc(sizeof(int32_t) * (size_t)n);
    if (!copy) return;
    memcpy(copy, t, sizeof(int32_t) * (size_t)n);
    double t0 = lm_now();
    if (lazymoe_session_save(s, n, path, err, sizeof err) != 0) {
        srv_log("prompt cache: not stored: %s", err);
        free(copy);
        return;
    }
    uint64_t bytes = file_bytes(path);
    if (add(c, path, copy, n, bytes) != 0) {
        free(copy);
        unlink(path);
        return;
    }
    srv_log("prompt cache: stored %d tokens (%.1f MB) in %.2fs", n, (double)bytes / 1e6, lm_now() - t0);
    enforce_limit(c, 0);
}

#include "experts/popularity.h"

#include "common/error.h"
#include "common/hash.h"
#include "platform/fs.h"
#include "platform/platform.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const unsigned char MAGIC[8] = {'L', 'M', 'P', 'O', 'P', 0, 0, 1};

uint64_t lm_popularity_model_id(const char *dir) {
    uint64_t h = LM_FNV1A_INIT;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) h = lm_fnv1a(h, buf, n);
        fclose(f);
    }
    DIR *d = opendir(dir);
    if (!d) {
        /* a single-file model (GGUF): its name and size */
        struct stat st;
        if (stat(dir, &st) != 0) return h;
        const char *base = strrchr(dir, '/');
        base = base ? base + 1 : dir;
        uint64_t size = (uint64_t)st.st_size;
        h = lm_fnv1a(h, base, strlen(base));
        return lm_fnv1a(h, &size, sizeof size);
    }
    /* Order-independent: combine per-file hashes by addition. */
    uint64_t files = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t nl = strlen(e->d_name);
        if (nl < 12 || strcmp(e->d_name + nl - 12, ".safetensors") != 0) continue;
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0) continue;
        uint64_t fh = lm_fnv1a(LM_FNV1A_INIT, e->d_name, nl);
        uint64_t size = (uint64_t)st.st_size;
        files += lm_fnv1a(fh, &size, sizeof size);
    }
    closedir(d);
    return lm_fnv1a(h, &files, sizeof files);
}

int lm_popularity_path(uint64_t model_id, char *path, size_t len, char *err) {
    char base[3000];
    if (lm_user_cache_dir(base, sizeof base, err) != 0) return -1;
    if ((size_t)snprintf(path, len, "%s/popularity-%016llx.bin", base, (unsigned long long)model_id) >= len)
        return lm_errf(err, "cache path too long");
    return 0;
}

int lm_popularity_load(lm_popularity *p, const char *path, uint64_t model_id, int n_layers, int n_experts, char *err) {
    memset(p, 0, sizeof *p);
    FILE *f = fopen(path, "rb");
    if (!f) return lm_errf(err, "no popularity file %s", path);
    size_t n = (size_t)n_layers * (size_t)n_experts;
    size_t total = 8 + 4 + 4 + 8 + n * 4 + 8;
    unsigned char *buf = malloc(total + 1);
    int rc = -1;
    if (!buf) {
        lm_errf(err, "out of memory");
        goto done;
    }
    if (fread(buf, 1, total + 1, f) != total) {
        lm_errf(err, "%s: wrong size", path);
        goto done;
    }
    uint32_t nl, ne;
    uint64_t id, sum;
    memcpy(&nl, buf + 8, 4);
    memcpy(&ne, buf + 12, 4);
    memcpy(&id, buf + 16, 8);
    memcpy(&sum, buf + total - 8, 8);
    if (memcmp(buf, MAGIC, 8) != 0 || nl != (uint32_t)n_layers || ne != (uint32_t)n_experts || id != model_id ||
        sum != lm_fnv1a(LM_FNV1A_INIT, buf, total - 8)) {
        lm_errf(err, "%s: not this model's popularity file (or damaged)", path);
        goto done;
    }
    p->uses = malloc(n * sizeof(float));
    if (!p->uses) {
        lm_errf(err, "out of memory");
        goto done;
    }
    memcpy(p->uses, buf + 24, n * 4);
    for (size_t i = 0; i < n; i++)
        if (!(p->uses[i] >= 0) || p->uses[i] > 1e30f) p->uses[i] = 0;
    p->n_layers = n_layers;
    p->n_experts = n_experts;
    p->model_id = model_id;
    rc = 0;
done:
    free(buf);
    fclose(f);
    return rc;
}

int lm_popularity_save(const lm_popularity *p, const char *path, char *err) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = 0;
        if (lm_mkdir_parents(dir, err) != 0) return -1;
    }
    size_t n = (size_t)p->n_layers * (size_t)p->n_experts;
    size_t total = 8 + 4 + 4 + 8 + n * 4 + 8;
    unsigned char *buf = malloc(total);
    if (!buf) return lm_errf(err, "out of memory");
    uint32_t nl = (uint32_t)p->n_layers, ne = (uint32_t)p->n_experts;
    memcpy(buf, MAGIC, 8);
    memcpy(buf + 8, &nl, 4);
    memcpy(buf + 12, &ne, 4);
    memcpy(buf + 16, &p->model_id, 8);
    memcpy(buf + 24, p->uses, n * 4);
    uint64_t sum = lm_fnv1a(LM_FNV1A_INIT, buf, total - 8);
    memcpy(buf + total - 8, &sum, 8);
    int rc = lm_write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

void lm_popularity_free(lm_popularity *p) {
    free(p->uses);
    memset(p, 0, sizeof *p);
}

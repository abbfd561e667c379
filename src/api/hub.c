/* lazymoe_resolve_model: model directories and files, Hugging Face cache repo ids, and
 * ORG/NAME:QUANT for a GGUF repo (the file whose name carries the quant tag as a word,
 * in the snapshot or one folder down; part 1 of a split file).
 *
 * The cache layout huggingface_hub writes: HUB/models--ORG--NAME/refs/main holds the
 * commit of the main branch, and HUB/models--ORG--NAME/snapshots/COMMIT/ the files
 * (symbolic links into blobs/). HUB is $HF_HUB_CACHE, else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub; every one of them
 * that is set is searched here, in that order, so a model is found wherever it was
 * downloaded.
 */
#include "lazymoe.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* "ORG/NAME": one slash, both parts non-empty, no path-like characters. */
static int looks_like_repo_id(const char *s) {
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/')) return 0;
    if (s[0] == '.' || s[0] == '~') return 0;
    for (const char *p = s; *p; p++)
        if (!(p == slash || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return 0;
    return 1;
}

/* Snapshot directory of repo in hub: refs/main's commit, else the only snapshot. */
static int find_snapshot(const char *hub, const char *repo, char *out, size_t outlen) {
    char base[4096], ref[256], path[4096];
    if (snprintf(base, sizeof base, "%s/models--%s", hub, repo) >= (int)sizeof base - 1) return 0;
    char *slash = strchr(base + strlen(hub) + 9, '/');
    if (slash) { /* ORG/NAME -> ORG--NAME */
        memmove(slash + 2, slash + 1, strlen(slash + 1) + 1);
        slash[0] = slash[1] = '-';
    }
    if (!is_dir(base)) return 0;
    if (snprintf(path, sizeof path, "%s/refs/main", base) >= (int)sizeof path) return 0;
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(ref, 1, sizeof ref - 1, f);
        fclose(f);
        ref[n] = 0;
        while (n && (ref[n - 1] == '\n' || ref[n - 1] == '\r' || ref[n - 1] == ' ')) ref[--n] = 0;
        if (n && !strchr(ref, '/')) {
            snprintf(out, outlen, "%s/snapshots/%s", base, ref);
            if (is_dir(out)) return 1;
        }
    }
    if (snprintf(path, sizeof path, "%s/snapshots", base) >= (int)sizeof path) return 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    int found = 0;
    char one[4096] = "";
    const struct dirent *de;
    while ((de = readdir(d)) && found < 2) {
        if (de->d_name[0] == '.') continue;
        snprintf(out, outlen, "%s/%s", path, de->d_name);
        if (is_dir(out) && found++ == 0) snprintf(one, sizeof one, "%s", out);
    }
    closedir(d);
    if (found != 1) return 0;
    snprintf(out, outlen, "%s", one);
    return 1;
}

/* ---- GGUF repos: ORG/NAME-GGUF:QUANT ------------------------------------------------ */

typedef struct {
    char (*names)[1024]; /* paths relative to the snapshot */
    int n, cap;
} gguf_list;

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* Collects *.gguf files (not vision projectors) up to one folder deep. */
static void list_gguf(const char *snap, const char *sub, gguf_list *l, int depth) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", snap, sub[0] ? "/" : "", sub);
    DIR *d = opendir(dir);
    if (!d) return;
    const struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char rel[1024], full[4096 + 1024];
        if (snprintf(rel, sizeof rel, "%s%s%s", sub, sub[0] ? "/" : "", de->d_name) >= (int)sizeof rel) continue;
        snprintf(full, sizeof full, "%s/%s", snap, rel);
        if (depth == 0 && is_dir(full)) {
            list_gguf(snap, rel, l, 1);
            continue;
        }
        if (!has_suffix(de->d_name, ".gguf") || strstr(de->d_name, "mmproj")) continue;
        if (l->n == l->cap) {
            int cap = l->cap ? 2 * l->cap : 16;
            void *p = realloc(l->names, sizeof *l->names * (size_t)cap);
            if (!p) break;
            l->names = p;
            l->cap = cap;
        }
        snprintf(l->names[l->n++], sizeof l->names[0], "%s", rel);
    }
    closedir(d);
}

static int word_char(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }

/* The quant tag appears in the path as a whole word, case-insensitively ("Q4_K" does not
 * match "Q4_K_M"). */
static int has_tag(const char *path, const char *tag) {
    size_t n = strlen(path), m = strlen(tag);
    for (size_t i = 0; m && i + m <= n; i++)
        if (strncasecmp(path + i, tag, m) == 0 && (i == 0 || !word_char(path[i - 1])) &&
            (i + m == n || !word_char(path[i + m])))
            return 1;
    return 0;
}

/* A later part of a split file (-0000K-of-0000N.gguf with K > 1): opening part 1 finds it. */
static int later_split_part(const char *path) {
    const char *p = strstr(path, "-of-");
    return p && p - path >= 6 && p[-6] == '-' && strncmp(p - 5, "00001", 5) != 0;
}

/* The one GGUF model of a snapshot whose name carries `tag` (NULL: the only GGUF). */
static int pick_gguf(const char *snap, const char *repo, const char *tag, char *path, size_t pathlen, char *err,
                     size_t errlen) {
    gguf_list l = {0};
    list_gguf(snap, "", &l, 0);
    int found = -1, count = 0;
    char names[1024] = "";
    for (int i = 0; i < l.n; i++) {
        if (later_split_part(l.names[i]) || (tag && !has_tag(l.names[i], tag))) continue;
        found = i;
        count++;
        size_t u = strlen(names);
        snprintf(names + u, sizeof names - u, "%s%s", u ? ", " : "", l.names[i]);
    }
    int rc = 0;
    if (count == 1) {
        snprintf(path, pathlen, "%s/%s", snap, l.names[found]);
    } else {
        if (err && errlen) {
            if (count == 0 && tag)
                snprintf(err, errlen, "%s: no GGUF file for quant '%s' in the cached snapshot %s", repo, tag, snap);
            else if (count == 0)
                snprintf(err, errlen, "%s: the cached snapshot %s has neither config.json nor a GGUF file", repo, snap);
            else
                snprintf(err, errlen, "%s%s%s matches several GGUF files (%s); name one quant, e.g. %s:Q4_K_M", repo,
                         tag ? ":" : "", tag ? tag : "", names, repo);
        }
        rc = -1;
    }
    free(l.names);
    return rc;
}

int lazymoe_resolve_model(const char *name, char *path, size_t pathlen, char *err, size_t errlen) {
    struct stat st;
    if (stat(name, &st) == 0) {
        snprintf(path, pathlen, "%s", name);
        return 0;
    }
    /* ORG/NAME:QUANT names a GGUF file of the repo */
    char repo[512];
    const char *tag = NULL, *colon = strchr(name, ':');
    if (colon && colon[1] && (size_t)(colon - name) < sizeof repo && !strchr(colon + 1, '/')) {
        memcpy(repo, name, (size_t)(colon - name));
        repo[colon - name] = 0;
        tag = colon + 1;
    } else {
        snprintf(repo, sizeof repo, "%s", name);
    }
    if (!looks_like_repo_id(repo)) {
        snprintf(path, pathlen, "%s", name);
        return 0;
    }
    name = repo;
    char hubs[4][4096];
    int n = 0;
    const char *v;
    if ((v = getenv("HF_HUB_CACHE")) && *v) snprintf(hubs[n++], sizeof hubs[0], "%s", v);
    if ((v = getenv("HF_HOME")) && *v) snprintf(hubs[n++], sizeof hubs[0], "%s/hub", v);
    if ((v = getenv("XDG_CACHE_HOME")) && *v) snprintf(hubs[n++], sizeof hubs[0], "%s/huggingface/hub", v);
    if ((v = getenv("HOME")) && *v) snprintf(hubs[n++], sizeof hubs[0], "%s/.cache/huggingface/hub", v);
    char looked[2048] = "";
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++) dup |= !strcmp(hubs[i], hubs[j]);
        if (dup) continue;
        if (find_snapshot(hubs[i], name, path, pathlen)) {
            char snap[4096], cfg[4096 + 16];
            snprintf(snap, sizeof snap, "%s", path);
            snprintf(cfg, sizeof cfg, "%s/config.json", snap);
            if (!tag && stat(cfg, &st) == 0) return 0;
            return pick_gguf(snap, name, tag, path, pathlen, err, errlen);
        }
        int w = snprintf(looked + used, sizeof looked - used, "%s%s", used ? ", " : "", hubs[i]);
        if (w > 0 && (size_t)w < sizeof looked - used) used += (size_t)w;
    }
    if (err && errlen)
        snprintf(err, errlen,
                 "%s: no such directory, and no snapshot of that Hugging Face repo in the local cache "
                 "(looked in: %s); download it first, e.g. hf download %s",
                 name, used ? looked : "none: HF_HUB_CACHE, HF_HOME and HOME are unset", name);
    return -1;
}

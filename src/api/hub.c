/* lazymoe_resolve_model: model directories and Hugging Face cache repo ids.
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

int lazymoe_resolve_model(const char *name, char *path, size_t pathlen, char *err, size_t errlen) {
    if (is_dir(name) || !looks_like_repo_id(name)) {
        snprintf(path, pathlen, "%s", name);
        return 0;
    }
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
        if (find_snapshot(hubs[i], name, path, pathlen)) return 0;
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

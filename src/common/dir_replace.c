#include "common/dir_replace.h"

#include "common/error.h"
#include "common/str.h"
#include "platform/fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int lm_out_dir_check(const char *out, int force, char *err) {
    lm_path_kind existing = lm_path_type(out);
    if (existing == LM_PATH_FILE || existing == LM_PATH_OTHER)
        return lm_errf(err, "%s exists and is not a directory", out);
    if (existing == LM_PATH_DIR) {
        int empty = lm_dir_is_empty(out, err);
        if (empty < 0) return -1;
        if (!empty && !force) return lm_errf(err, "%s exists and is not empty (use --force to replace it)", out);
    }
    return 0;
}

char *lm_dir_temp_create(const char *out, char *err) {
    char *tmp = lm_strdup_printf("%s.lazymoe-tmp-%ld", out, (long)getpid());
    if (!tmp) {
        lm_errf(err, "out of memory");
        return NULL;
    }
    if (lm_remove_tree(tmp, err) != 0 || lm_mkdir(tmp, err) != 0) {
        free(tmp);
        return NULL;
    }
    return tmp;
}

char *lm_path_parent(const char *path) {
    char *p = strdup(path);
    if (!p) return NULL;
    char *slash = strrchr(p, '/');
    if (slash == p) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else {
        free(p);
        p = strdup(".");
    }
    return p;
}

int lm_dir_replace(const char *tmp, const char *out, char *err) {
    char *old = lm_strdup_printf("%s.lazymoe-old-%ld", out, (long)getpid());
    if (!old) return lm_errf(err, "out of memory");
    int rc = -1;
    if (lm_fsync_dir(tmp, err) != 0) goto done;
    int existing = lm_path_type(out) == LM_PATH_DIR;
    if (existing && lm_rename(out, old, err) != 0) goto done;
    if (lm_rename(tmp, out, err) != 0) {
        if (existing) rename(old, out);
        goto done;
    }
    if (existing && lm_remove_tree(old, err) != 0) goto done;
    char *parent = lm_path_parent(out);
    if (parent) lm_fsync_dir(parent, NULL);
    free(parent);
    rc = 0;
done:
    free(old);
    return rc;
}

/* Writing a whole output directory in one piece (convert, synth): the command builds it
 * in a sibling temporary directory and swaps that in at the very end, so OUT is never
 * seen half-written and a failed run leaves an existing OUT as it was.
 *
 *     lm_out_dir_check(out, force)    OUT must be missing or an empty directory (any
 *                                     directory with force)
 *     tmp = lm_dir_temp_create(out)   OUT.lazymoe-tmp-PID, fresh and empty
 *     ... write everything under tmp ...
 *     lm_dir_replace(tmp, out)        swap it in
 *     on failure: lm_remove_tree(tmp) (missing is fine)
 *
 * All return 0 / -1 (or NULL) with the reason in err. */
#ifndef LAZYMOE_COMMON_DIR_REPLACE_H
#define LAZYMOE_COMMON_DIR_REPLACE_H

/* 0 if out may be written: missing, an empty directory, or (force) any directory;
 * -1 if it is something else or a non-empty directory without force. */
int lm_out_dir_check(const char *out, int force, char *err);

/* Creates the empty directory OUT.lazymoe-tmp-PID (a stale one of that name is removed
 * first) and returns its path (malloc'd), or NULL. */
char *lm_dir_temp_create(const char *out, char *err);

/* Makes the finished directory tmp become out: fsyncs tmp, moves an existing out aside
 * (rename(2) cannot replace a non-empty directory), renames tmp to out, removes the old
 * one and fsyncs the parent so the rename is durable. When the rename fails, the old out
 * is put back and tmp stays where it was (the caller removes it). */
int lm_dir_replace(const char *tmp, const char *out, char *err);

/* The directory that holds path: "a/b" -> "a", "/a" -> "/", "a" -> "." (malloc'd, or NULL
 * when out of memory). path has no trailing slash. */
char *lm_path_parent(const char *path);

#endif

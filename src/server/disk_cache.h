/* The persistent prompt cache: evaluated prompts' states (tokens and KV cache) kept
 * on disk, so that a new session or a restarted server whose prompt begins with a
 * stored one (an agent's 30k-token system prompt and tools) starts from the stored
 * state instead of evaluating it again.
 *
 * Files are lazymoe session state files (engine/session_file.c: model and computation
 * in the header, a checksum at the end), named by a hash of their tokens, in one
 * directory (several models may share it: a file of another model or computation is
 * not ours and is left alone). At start the directory is scanned for ours; a corrupt
 * one is skipped with a log line. A prompt is stored after its request when it was
 * long (>= min_tokens) and mostly newly evaluated; the files we own stay within
 * `limit` bytes, least recently used removed first, also while one is written (room
 * is made for its exact size before), and a prompt whose file alone is over the limit
 * is not stored. Used by the worker thread only.
 */
#ifndef LAZYMOE_SERVER_DISK_CACHE_H
#define LAZYMOE_SERVER_DISK_CACHE_H

#include "lazymoe.h"

#include <stdint.h>

typedef struct {
    char *path;
    int32_t *tokens;
    int n;
    uint64_t bytes;
    uint64_t last_used;
} srv_disk_entry;

typedef struct {
    lazymoe_model *m;
    char *dir;          /* NULL: off */
    uint64_t limit;     /* bytes of our files at most */
    int min_tokens;     /* prompts shorter are not stored */
    srv_disk_entry *e;
    int n;
    size_t cap;
    uint64_t clock;
} srv_disk_cache;

/* dir NULL or limit 0: off (every call below does nothing). A directory that cannot be
 * made is an error. */
int srv_disk_init(srv_disk_cache *c, lazymoe_model *m, const char *dir, uint64_t limit, char *err, size_t errlen);
void srv_disk_free(srv_disk_cache *c);
/* If a stored prompt shares more than `have` leading tokens with ids[n], loads it into
 * s (which is emptied) and returns the tokens now reusable; else returns have and
 * leaves s alone. A file that fails to load is dropped with a log line. */
int srv_disk_restore(srv_disk_cache *c, lazymoe_session *s, const int32_t *ids, int n, int have);
/* Stores the first n positions of s (the prompt) unless a stored prompt already covers
 * them; evaluated = how many of them this request computed (short suffixes of a stored
 * conversation are not worth a file). */
void srv_disk_store(srv_disk_cache *c, const lazymoe_session *s, int n, int evaluated);

#endif

/* Expert popularity kept across runs, for warm starts.
 *
 * File: $XDG_CACHE_HOME/lazymoe/popularity-<model id>.bin (or ~/.cache/lazymoe/...),
 * where the model id hashes config.json and the sizes of the weight files, so a
 * different or changed model never reuses another's history. Layout (little-endian):
 *   "LMPOP\0\0\1" magic+version | u32 n_layers | u32 n_experts | u64 model id |
 *   f32 uses[n_layers][n_experts] | u64 FNV-1a checksum of everything before it
 * Written atomically (temp file + rename); a stale, foreign or damaged file is ignored.
 */
#ifndef LAZYMOE_POPULARITY_H
#define LAZYMOE_POPULARITY_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_layers, n_experts;
    uint64_t model_id;
    float *uses; /* [n_layers][n_experts] */
} lm_popularity;

/* Identity of the model in dir (config.json bytes + weight file sizes). */
uint64_t lm_popularity_model_id(const char *dir);
/* The file path for a model id; 0 on success. */
int lm_popularity_path(uint64_t model_id, char *path, size_t len, char *err);
/* Loads a matching file; -1 (err set) if absent, foreign or damaged. */
int lm_popularity_load(lm_popularity *p, const char *path, uint64_t model_id, int n_layers, int n_experts, char *err);
/* Writes p atomically, creating the directory. */
int lm_popularity_save(const lm_popularity *p, const char *path, char *err);
void lm_popularity_free(lm_popularity *p);

#endif

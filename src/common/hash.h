/* The one FNV-1a hash (64-bit): checksums of the files we write (popularity history,
 * session states), model identities, and string keys (tokenizer maps, synthetic
 * weight seeds). Not for anything an adversary chooses to collide on purpose.
 *
 * Incremental: start from LM_FNV1A_INIT and feed pieces in order; the result equals
 * one call over the concatenation. Inline, since the tokenizer hashes every piece. */
#ifndef LAZYMOE_COMMON_HASH_H
#define LAZYMOE_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define LM_FNV1A_INIT 0xcbf29ce484222325ull

static inline uint64_t lm_fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

#endif

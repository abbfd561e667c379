/* Unicode normalization (NFC/NFD/NFKC/NFKD) for the tokenizer, and the UTF-8 helpers
 * (common/utf8.h) it uses with it.
 *
 * The tokenizer works on UTF-8 bytes end to end; these helpers are the only places that
 * look inside code points. Invalid UTF-8 is treated the way WHATWG TextDecoder (and so
 * transformers.js) treats it: each maximal invalid subpart becomes one U+FFFD.
 */
#ifndef LAZYMOE_TEXT_UNICODE_H
#define LAZYMOE_TEXT_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "common/utf8.h" /* the UTF-8 decoder and helpers the tokenizer uses */

enum lm_unorm_form { LM_NFC, LM_NFD, LM_NFKC, LM_NFKD };

/* Normalizes valid UTF-8 s into a new malloc'd, NUL-terminated buffer (caller frees).
 * Returns 0, or -1 on allocation failure. */
int lm_unicode_normalize(enum lm_unorm_form form, const char *s, size_t len, char **out,
                         size_t *out_len);

#endif

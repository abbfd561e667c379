/* UTF-8 helpers and Unicode normalization (NFC/NFD/NFKC/NFKD) for the tokenizer.
 *
 * The tokenizer works on UTF-8 bytes end to end; these helpers are the only places that
 * look inside code points. Invalid UTF-8 is treated the way WHATWG TextDecoder (and so
 * transformers.js) treats it: each maximal invalid subpart becomes one U+FFFD.
 */
#ifndef LAZYMOE_TEXT_UNICODE_H
#define LAZYMOE_TEXT_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Length in bytes (1-4) of the valid UTF-8 sequence starting at s[0], storing its code
 * point in *cp; 0 if s does not start with a complete, valid sequence. */
size_t lm_utf8_next(const unsigned char *s, size_t len, uint32_t *cp);

/* Writes cp as UTF-8 into out (at least 4 bytes); returns the byte count. */
size_t lm_utf8_put(uint32_t cp, char *out);

/* How many bytes at s[0] form one "maximal subpart" of an ill-formed sequence (>= 1). Only
 * meaningful when lm_utf8_next returned 0. Sets *incomplete to 1 when those bytes are a
 * valid but truncated prefix of a sequence (more input could complete it). */
size_t lm_utf8_bad_run(const unsigned char *s, size_t len, int *incomplete);

/* Number of leading bytes of s that end on a code point boundary with nothing pending:
 * everything except a trailing, still-completable partial sequence. */
size_t lm_utf8_complete_prefix(const unsigned char *s, size_t len);

/* 1 if all of s is valid UTF-8. */
int lm_utf8_valid(const char *s, size_t len);

/* Copies s to a new malloc'd, NUL-terminated buffer with each invalid subpart replaced by
 * U+FFFD. Caller frees *out. Returns 0, or -1 on allocation failure. */
int lm_utf8_sanitize(const char *s, size_t len, char **out, size_t *out_len);

enum lm_unorm_form { LM_NFC, LM_NFD, LM_NFKC, LM_NFKD };

/* Normalizes valid UTF-8 s into a new malloc'd, NUL-terminated buffer (caller frees).
 * Returns 0, or -1 on allocation failure. */
int lm_unicode_normalize(enum lm_unorm_form form, const char *s, size_t len, char **out,
                         size_t *out_len);

#endif

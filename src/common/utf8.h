/* The one UTF-8 decoder, and the helpers built on it.
 *
 * Decoding is strict by default: overlong forms, UTF-16 surrogates (U+D800-DFFF), code
 * points above U+10FFFF and truncated sequences are invalid. Invalid input is treated
 * the way WHATWG TextDecoder (and so transformers.js) treats it: each maximal invalid
 * subpart (lm_utf8_bad_run) stands for one U+FFFD. LM_UTF8_SURROGATES accepts encoded
 * surrogates as code points, for text that holds Python's lone surrogates ("\ud800" in
 * a Jinja literal); everything else stays invalid with it too. */
#ifndef LAZYMOE_COMMON_UTF8_H
#define LAZYMOE_COMMON_UTF8_H

#include <stddef.h>
#include <stdint.h>

enum { LM_UTF8_SURROGATES = 1 };

/* The well-formed multi-byte sequences (Unicode table 3-7): a lead byte c fixes the
 * length and the range [*lo, *hi] of the first continuation byte (later ones are
 * 80..BF); *bits are the lead's code point bits. Returns the length (2-4), 0 for a
 * byte that cannot start a multi-byte sequence (ASCII, a continuation byte, C0, C1,
 * F5..FF). For decoders that take one byte at a time. */
size_t lm_utf8_lead(unsigned char c, int flags, unsigned char *lo, unsigned char *hi, uint32_t *bits);

/* Length in bytes (1-4) of the valid sequence starting at s[0] (len > 0 bytes), storing
 * its code point in *cp; 0 if s does not start with a complete, valid sequence (then *cp
 * is U+FFFD). flags: 0 or LM_UTF8_SURROGATES. */
size_t lm_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp, int flags);

/* lm_utf8_decode(s, len, cp, 0). */
size_t lm_utf8_next(const unsigned char *s, size_t len, uint32_t *cp);

/* How many bytes at s[0] (len > 0) form one maximal subpart of an ill-formed sequence
 * (>= 1). Only meaningful where lm_utf8_decode with the same flags returned 0. Sets
 * *incomplete to 1 when those bytes are a valid but truncated prefix of a sequence (more
 * input could complete it). */
size_t lm_utf8_bad_run_flags(const unsigned char *s, size_t len, int *incomplete, int flags);
size_t lm_utf8_bad_run(const unsigned char *s, size_t len, int *incomplete);

/* Writes cp as UTF-8 into out (at least 4 bytes); returns the byte count. Code points
 * above U+10FFFF are written as U+FFFD; surrogates are written as their 3-byte form. */
size_t lm_utf8_put(uint32_t cp, char *out);

/* Number of leading bytes of s that end on a code point boundary with nothing pending:
 * everything except a trailing, still-completable partial sequence. */
size_t lm_utf8_complete_prefix(const unsigned char *s, size_t len);

/* 1 if all of s is valid UTF-8. */
int lm_utf8_valid(const char *s, size_t len);

/* Copies s to a new malloc'd, NUL-terminated buffer with each invalid subpart replaced by
 * U+FFFD. Caller frees *out. Returns 0, or -1 on allocation failure. */
int lm_utf8_sanitize(const char *s, size_t len, char **out, size_t *out_len);

#endif

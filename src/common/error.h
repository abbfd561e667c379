/* Error reporting convention used by every library function.
 *
 * A function that can fail returns 0 on success and -1 on failure, and writes a
 * one-line, human-readable reason into a caller-owned buffer of LM_ERR_LEN bytes
 * (the first error wins; later context may be prepended with lm_err_prefix).
 * Only the CLI's main() turns an error into an exit status.
 */
#ifndef LAZYMOE_ERROR_H
#define LAZYMOE_ERROR_H

#include <stddef.h>

#define LM_ERR_LEN 512

/* Formats the reason into err (may be NULL) and returns -1 so callers can write
 * `return lm_errf(err, "...", ...);`. */
int lm_errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message, e.g. the file name. Returns -1. */
int lm_err_prefix(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

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

/* Formats the reason into err (may be NULL) and evaluates to -1 so callers can
 * write `return lm_errf(err, "...", ...);`. A macro, so that the value -1 is
 * visible at every call site (static analysis then knows the failure paths). */
void lm_errf_set(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int lm_failed(void) { return -1; }
#define lm_errf(err, ...) (lm_errf_set((err), __VA_ARGS__), lm_failed())

/* Prepends "prefix: " to an existing message, e.g. the file name. Evaluates to -1. */
void lm_err_prefix_set(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define lm_err_prefix(err, ...) (lm_err_prefix_set((err), __VA_ARGS__), lm_failed())

#endif

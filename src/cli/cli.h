/* Shared pieces of the lazymoe command-line tool. */
#ifndef LAZYMOE_CLI_H
#define LAZYMOE_CLI_H

#include <stdint.h>

/* Parses "3,14,15" into a malloc'd array; returns count or -1 (message printed). */
int cli_parse_ids(const char *s, int32_t **out);
/* Parses a non-negative integer option value; -1 with a message on error. */
long cli_parse_long(const char *opt, const char *s, long lo, long hi);
/* Parses a byte size ("24G", "512M", "1.5GB", plain bytes; K/M/G/T are powers of
 * 1024); -1 with a message on error. */
long long cli_parse_size(const char *opt, const char *s);
/* All of stdin as a malloc'd NUL-terminated string, or NULL. */
char *cli_read_stdin(void);
/* Prints "lazymoe: MSG" to stderr and returns 1 (the exit status for usage errors). */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

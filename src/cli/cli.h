/* Shared pieces of the lazymoe command-line tool. */
#ifndef LAZYMOE_CLI_H
#define LAZYMOE_CLI_H

#include "lazymoe.h"

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
/* Parses an option every command that opens a model accepts (--threads, --ctx,
 * --memory, --capacity, --resident, --io-threads, --eviction, --buffered-io,
 * --no-warm-start, --trace-routing) into o. s is the option, v the next argument
 * (or NULL). Returns how many arguments it consumed (1 or 2), 0 if s is not one of
 * them, -1 after printing what is wrong with the value. */
int cli_model_option(const char *s, const char *v, lazymoe_options *o);

/* Prints "lazymoe: MSG" to stderr and returns 1 (the exit status for usage errors). */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

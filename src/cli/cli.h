/* Shared pieces of the lazymoe command-line tool. */
#ifndef LAZYMOE_CLI_H
#define LAZYMOE_CLI_H

#include "lazymoe.h"

#include <stddef.h>
#include <stdint.h>

/* Parses "3,14,15" into a malloc'd array; returns count or -1 (message printed). */
int cli_parse_ids(const char *s, int32_t **out);
/* Parses a non-negative integer option value; -1 with a message on error. */
long cli_parse_long(const char *opt, const char *s, long lo, long hi);
/* One option of a command, by what it sets (exactly one of num, flag, str):
 *   num:  an integer value in [lo, hi]       {"--port", .num = &port, .lo = 0, .hi = 65535}
 *   flag: no value; *flag = lo               {"--json", .flag = &json, .lo = 1}
 *   str:  a string value (borrowed from argv); `what` names it in the error ("--out needs
 *         a file name"); nonempty refuses ""  {"--out", .str = &out, .what = "a file name"} */
typedef struct {
    const char *name;
    int *num, *flag;
    const char **str;
    long lo, hi;
    const char *what;
    int nonempty;
} cli_option;
/* If s is the name of one of the n options, sets it from v and returns how many
 * arguments that used (1 or 2); -1 after a message when v is not a valid value; 0 if s is
 * none of them. */
int cli_options(const char *s, const char *v, const cli_option *opts, size_t n);
#define CLI_OPTIONS(s, v, table) cli_options((s), (v), (table), sizeof(table) / sizeof(table)[0])
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

/* The arguments every command that opens a model shares. */
typedef struct {
    const char *model;   /* MODEL as given: a directory or a Hugging Face repo id ORG/NAME */
    lazymoe_options opt; /* memory, I/O and kernel options (cli_model_option), -v */
} cli_model_args;

/* A command's own arguments: called with each option the shared parser does not know
 * (arg and the argument after it, or NULL), and with each positional argument after
 * MODEL (next is then NULL). Returns 0 = not one of its arguments, 1 = arg used,
 * 2 = arg and next used, -1 = invalid (message printed). */
typedef int (*cli_arg_fn)(void *ctx, const char *arg, const char *next);

/* Parses argv (argv[0] = the command's name) of a command that opens a model: MODEL
 * (the first positional argument), the model options, -v / --verbose and -h / --help
 * (prints usage); everything else goes to fn (may be NULL). Returns 0; 1 after printing
 * what is wrong; 2 after printing usage. a->opt starts from lazymoe_options_init. */
int cli_parse_model_args(int argc, char **argv, const char *usage, cli_model_args *a, cli_arg_fn fn, void *ctx);

/* Resolves a->model (a directory, or a repo id in the local Hugging Face cache) and
 * opens it with a->opt. path (pathlen bytes; may be NULL) receives the directory.
 * NULL after printing the error. */
lazymoe_model *cli_open_model(const cli_model_args *a, char *path, size_t pathlen);

/* Prints "lazymoe: MSG" to stderr and returns 1 (the exit status for usage errors). */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

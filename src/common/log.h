/* Library logging: the library never writes to stdout or stderr itself. Warnings,
 * verbose progress and server request lines go through lm_log to the callback the
 * program installed with lazymoe_set_log (include/lazymoe.h); without one they are
 * dropped, unformatted.
 *
 * Messages are one line without its newline, except LAZYMOE_LOG_PROGRESS, which is
 * terminal text ("\rloading: 42%", the last update of a series ending in "\n").
 * Callbacks run one at a time (a mutex), from whichever thread logs.
 */
#ifndef LAZYMOE_LOG_H
#define LAZYMOE_LOG_H

#include "lazymoe.h"

/* Installs fn (NULL: none) with its context; what lazymoe_set_log calls. */
void lm_log_set(lazymoe_log_fn fn, void *ctx);

void lm_log(lazymoe_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

#include "server/internal.h"

#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

/* One line per call, through the library's log callback (the CLI's writes each line
 * whole to stderr, so lines from different threads stay apart). */
void srv_log(const char *fmt, ...) {
    char line[1024];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    size_t n = strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S ", &tm);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    lm_log(LAZYMOE_LOG_INFO, "%s", line);
}

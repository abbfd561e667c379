#include "server/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

/* One line per call, written whole (stderr is unbuffered; one fputs per line keeps
 * lines from different threads apart). */
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
    n += (size_t)k < sizeof line - n - 1 ? (size_t)k : sizeof line - n - 2;
    line[n++] = '\n';
    line[n] = 0;
    fputs(line, stderr);
}

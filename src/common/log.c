/* Library logging through the program's callback (log.h). */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* The lock serializes installing the callback with calling it, and the calls with
 * each other, so a callback that writes a line sees no interleaving. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static lazymoe_log_fn log_fn;
static void *log_ctx;

void lm_log_set(lazymoe_log_fn fn, void *ctx) {
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_ctx = ctx;
    pthread_mutex_unlock(&log_lock);
}

void lm_log(lazymoe_log_level level, const char *fmt, ...) {
    pthread_mutex_lock(&log_lock);
    if (!log_fn) {
        pthread_mutex_unlock(&log_lock);
        return;
    }
    /* Most messages fit the stack buffer; a longer one (a long path) is formatted
     * again into the heap rather than cut. */
    char small[1024], *msg = small;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof small && (msg = malloc((size_t)n + 1)) != NULL) {
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    if (n >= 0) log_fn(log_ctx, level, msg ? msg : small);
    if (msg != small) free(msg);
    pthread_mutex_unlock(&log_lock);
}

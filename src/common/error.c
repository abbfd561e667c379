#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void lm_errf_set(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err) vsnprintf(err, LM_ERR_LEN, fmt, ap);
    va_end(ap);
}

void lm_err_prefix_set(char *err, const char *fmt, ...) {
    char out[LM_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    int n = err ? vsnprintf(out, sizeof out, fmt, ap) : -1;
    va_end(ap);
    if (n < 0) return;
    size_t used = (size_t)n < sizeof out ? (size_t)n : sizeof out - 1;
    /* Append ": " and the old message after the prefix, truncating at the end. */
    size_t room = sizeof out - used;
    size_t sep = room > 2 ? 2 : room - 1;
    memcpy(out + used, ": ", sep);
    used += sep;
    size_t old_len = strnlen(err, LM_ERR_LEN - 1);
    size_t take = old_len < sizeof out - 1 - used ? old_len : sizeof out - 1 - used;
    memcpy(out + used, err, take);
    out[used + take] = 0;
    memcpy(err, out, used + take + 1);
}

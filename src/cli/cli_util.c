#include "cli/cli.h"

#include "lazymoe.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lazymoe: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

int cli_parse_ids(const char *s, int32_t **out) {
    *out = NULL;
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return cli_fail("out of memory"), -1;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            free(ids);
            cli_fail("--ids: expected comma-separated non-negative integers, got \"%s\"", s);
            return -1;
        }
        if (n == cap) {
            cap *= 2;
            int32_t *ni = realloc(ids, cap * sizeof *ids);
            if (!ni) {
                free(ids);
                return cli_fail("out of memory"), -1;
            }
            ids = ni;
        }
        ids[n++] = (int32_t)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p) {
            free(ids);
            cli_fail("--ids: unexpected '%c' in \"%s\"", *p, s);
            return -1;
        }
    }
    if (n == 0) {
        free(ids);
        cli_fail("--ids: no token ids given");
        return -1;
    }
    *out = ids;
    return (int)n;
}

long cli_parse_long(const char *opt, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || end == s || *end || errno || v < lo || v > hi) {
        cli_fail("%s expects an integer in [%ld, %ld], got \"%s\"", opt, lo, hi, s ? s : "(nothing)");
        return -1;
    }
    return v;
}

long long cli_parse_size(const char *opt, const char *s) {
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : -1;
    if (!s || end == s || errno || !(v > 0)) {
        cli_fail("%s expects a size such as 24G, 512M or 1.5GB, got \"%s\"", opt, s ? s : "(nothing)");
        return -1;
    }
    double mult = 1;
    switch (*end) {
    case 'k': case 'K': mult = 1024.0; end++; break;
    case 'm': case 'M': mult = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) {
        cli_fail("%s: cannot read the size \"%s\"", opt, s);
        return -1;
    }
    /* inf or 1e30 would overflow the conversion (undefined, negative in practice) */
    if (!(v * mult < 9.2e18)) {
        cli_fail("%s: the size \"%s\" is too large", opt, s);
        return -1;
    }
    return (long long)(v * mult);
}

char *cli_read_stdin(void) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n - 1, stdin);
        n += got;
        if (got == 0) break;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf && ferror(stdin)) {
        free(buf);
        return NULL;
    }
    if (buf) buf[n] = 0;
    return buf;
}

int cli_model_option(const char *s, const char *v, lazymoe_options *o) {
    long x;
    if (!strcmp(s, "--threads")) {
        if ((x = cli_parse_long(s, v, 0, 4096)) < 0) return -1;
        o->n_threads = (int)x;
    } else if (!strcmp(s, "--kv-bits")) {
        if ((x = cli_parse_long(s, v, 8, 32)) < 0) return -1;
        if (x != 8 && x != 16 && x != 32) return cli_fail("--kv-bits expects 8, 16 or 32"), -1;
        o->kv_bits = (int)x;
    } else if (!strcmp(s, "--act-bits")) {
        if ((x = cli_parse_long(s, v, 8, 32)) < 0) return -1;
        if (x != 8 && x != 32) return cli_fail("--act-bits expects 8 or 32"), -1;
        o->act_bits = (int)x;
    } else if (!strcmp(s, "--ctx")) {
        if ((x = cli_parse_long(s, v, 1, 1 << 30)) < 0) return -1;
        o->max_context = (int)x;
    } else if (!strcmp(s, "--memory")) {
        long long b = cli_parse_size(s, v);
        if (b < 0) return -1;
        o->memory_budget = (uint64_t)b;
    } else if (!strcmp(s, "--capacity")) {
        if ((x = cli_parse_long(s, v, 1, 1 << 20)) < 0) return -1;
        o->expert_capacity = (int)x;
    } else if (!strcmp(s, "--pin")) {
        if ((x = cli_parse_long(s, v, 0, 1 << 20)) < 0) return -1;
        o->pin_experts = (int)x;
    } else if (!strcmp(s, "--lookahead")) {
        if ((x = cli_parse_long(s, v, 0, 1 << 20)) < 0) return -1;
        o->lookahead = (int)x;
    } else if (!strcmp(s, "--io-threads")) {
        if ((x = cli_parse_long(s, v, 1, 256)) < 0) return -1;
        o->io_threads = (int)x;
    } else if (!strcmp(s, "--io-chunk")) {
        long long b = cli_parse_size(s, v);
        if (b < 0) return -1;
        if (b < 4096 || b > (1ll << 30)) return cli_fail("--io-chunk expects a size from 4K to 1G"), -1;
        o->io_chunk_bytes = (uint64_t)b;
    } else if (!strcmp(s, "--eviction")) {
        static const char *const names[] = {"lru", "lcp", "lfru"}; /* lazymoe_eviction order */
        int p = -1;
        for (int k = 0; k < 3 && v; k++)
            if (strcmp(v, names[k]) == 0) p = k;
        if (p < 0) return cli_fail("--eviction expects lru, lcp or lfru"), -1;
        o->eviction = (lazymoe_eviction)p;
    } else if (!strcmp(s, "--trace-routing")) {
        if (!v) return cli_fail("--trace-routing needs a file name"), -1;
        o->trace_routing = v;
    } else if (!strcmp(s, "--resident")) {
        o->expert_capacity = -1;
        return 1;
    } else if (!strcmp(s, "--buffered-io")) {
        o->buffered_io = 1;
        return 1;
    } else if (!strcmp(s, "--no-warm-start")) {
        o->no_warm_start = 1;
        return 1;
    } else {
        return 0;
    }
    return 2;
}

#include "cli/cli.h"
#include "common/buf.h"

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
        if (LM_GROW(ids, cap, n + 1) != 0) {
            free(ids);
            return cli_fail("out of memory"), -1;
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

int cli_options(const char *s, const char *v, const cli_option *opts, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const cli_option *o = &opts[i];
        if (strcmp(s, o->name) != 0) continue;
        if (o->flag) {
            *o->flag = (int)o->lo;
            return 1;
        }
        if (o->str) {
            if (!v || (o->nonempty && !*v)) return cli_fail("%s needs %s", s, o->what), -1;
            *o->str = v;
            return 2;
        }
        long x = cli_parse_long(s, v, o->lo, o->hi);
        if (x < 0) return -1;
        *o->num = (int)x;
        return 2;
    }
    return 0;
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
    lm_strbuf b = {0};
    if (lm_strbuf_read_stream(&b, stdin, 0) == LM_READ_OK) return b.data;
    lm_strbuf_free(&b);
    return NULL;
}

int cli_model_option(const char *s, const char *v, lazymoe_options *o) {
    const cli_option opts[] = {
        {"--threads", .num = &o->n_threads, .lo = 0, .hi = 4096},
        {"--ctx", .num = &o->max_context, .lo = 1, .hi = 1 << 30},
        {"--capacity", .num = &o->expert_capacity, .lo = 1, .hi = 1 << 20},
        {"--pin", .num = &o->pin_experts, .lo = 0, .hi = 1 << 20},
        {"--lookahead", .num = &o->lookahead, .lo = 0, .hi = 1 << 20},
        {"--io-threads", .num = &o->io_threads, .lo = 1, .hi = 256},
        {"--trace-routing", .str = &o->trace_routing, .what = "a file name"},
        {"--backend", .str = &o->backend, .what = "a backend name (cpu or cuda)"},
        {"--resident", .flag = &o->expert_capacity, .lo = -1},
        {"--buffered-io", .flag = &o->buffered_io, .lo = 1},
        {"--no-warm-start", .flag = &o->no_warm_start, .lo = 1},
    };
    int r = CLI_OPTIONS(s, v, opts);
    if (r) return r;
    long x;
    if (!strcmp(s, "--cpu-experts") && v && !strcmp(v, "auto")) {
        o->cpu_experts = LAZYMOE_CPU_EXPERTS_AUTO;
    } else if (!strcmp(s, "--cpu-experts")) {
        if ((x = cli_parse_long(s, v, 0, 512)) < 0) return -1;
        o->cpu_experts = (int)x;
    } else if (!strcmp(s, "--kv-bits")) {
        if ((x = cli_parse_long(s, v, 8, 32)) < 0) return -1;
        if (x != 8 && x != 16 && x != 32) return cli_fail("--kv-bits expects 8, 16 or 32"), -1;
        o->kv_bits = (int)x;
    } else if (!strcmp(s, "--act-bits")) {
        if ((x = cli_parse_long(s, v, 8, 32)) < 0) return -1;
        if (x != 8 && x != 32) return cli_fail("--act-bits expects 8 or 32"), -1;
        o->act_bits = (int)x;
    } else if (!strcmp(s, "--memory") || !strcmp(s, "--io-chunk") || !strcmp(s, "--gpu-memory")) {
        long long b = cli_parse_size(s, v);
        if (b < 0) return -1;
        if (!strcmp(s, "--memory")) o->memory_budget = (uint64_t)b;
        else if (!strcmp(s, "--gpu-memory")) {
            if (b == 0) return cli_fail("--gpu-memory expects a size above 0"), -1;
            o->gpu_memory = (uint64_t)b;
        }
        else if (b < 4096 || b > (1ll << 30)) return cli_fail("--io-chunk expects a size from 4K to 1G"), -1;
        else o->io_chunk_bytes = (uint64_t)b;
    } else if (!strcmp(s, "--lookahead-gate")) {
        char *end = NULL;
        double g = v ? strtod(v, &end) : -1;
        if (!v || end == v || *end || !(g >= 0 && g <= 1))
            return cli_fail("--lookahead-gate expects a share from 0 to 1 (0: every prediction is read)"), -1;
        o->lookahead_gate = g;
    } else if (!strcmp(s, "--eviction")) {
        static const char *const names[] = {"lru", "lcp", "lfru", "lrfu", "stale"}; /* lazymoe_eviction order */
        int p = -1;
        for (int k = 0; k < 5 && v; k++)
            if (strcmp(v, names[k]) == 0) p = k;
        if (p < 0) return cli_fail("--eviction expects lru, lcp, lfru, lrfu or stale"), -1;
        o->eviction = (lazymoe_eviction)p;
    } else {
        return 0;
    }
    return 2;
}

int cli_parse_model_args(int argc, char **argv, const char *usage, cli_model_args *a, cli_arg_fn fn, void *ctx) {
    memset(a, 0, sizeof *a);
    lazymoe_options_init(&a->opt);
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int is_option = s[0] == '-' && s[1]; /* "-" alone is an argument (stdin) */
        int r = 0;
        if (is_option) {
            r = cli_model_option(s, v, &a->opt);
            if (!r && (!strcmp(s, "-h") || !strcmp(s, "--help"))) {
                printf("%s", usage);
                return 2;
            }
            if (!r && (!strcmp(s, "-v") || !strcmp(s, "--verbose"))) {
                a->opt.verbose = 1;
                continue;
            }
        } else if (!a->model) {
            a->model = s;
            continue;
        }
        if (!r && fn) r = fn(ctx, s, is_option ? v : NULL);
        if (r < 0) return 1;
        if (!r && is_option) return cli_fail("unknown option %s (see lazymoe %s --help)", s, argv[0]);
        if (!r) return cli_fail("unexpected argument \"%s\"", s);
        i += r - 1;
    }
    if (!a->model) return cli_fail("no model given\n%s", usage);
    return 0;
}

lazymoe_model *cli_open_model(const cli_model_args *a, char *path, size_t pathlen) {
    char err[512], dir[4096];
    lazymoe_model *m;
    if (lazymoe_resolve_model(a->model, dir, sizeof dir, err, sizeof err) != 0 ||
        lazymoe_model_open(&m, dir, &a->opt, err, sizeof err) != 0) {
        cli_fail("%s", err);
        return NULL;
    }
    if (path) snprintf(path, pathlen, "%s", dir);
    return m;
}

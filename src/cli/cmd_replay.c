/* `lazymoe replay`: expert-cache hit rates of every eviction policy (and of Belady's
 * MIN) on a recorded routing trace, without a model (src/experts/replay.h). */
#include "cli/cli.h"
#include "cli/commands.h"

#include "common/error.h"
#include "experts/replay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char replay_usage[] =
    "usage: lazymoe replay TRACE [--capacity N|P%]... [--policy P]... [--param X] [--belady]\n"
    "                      [--lookahead-trace F --lookahead N [--no-guard] [--gate X]] [--history F --pin N]\n"
    "                      [--global] [--skip N] [--first N] [--tokens N] [--streams S] [--json]\n"
    "Replays a routing trace (lazymoe run --trace-routing, tools/train_routing_model.py) through\n"
    "the expert cache's rules and prints each policy's hit rate, counted after the first --skip\n"
    "tokens (default 1, as lazymoe bench counts decode after a 1-token prompt).\n"
    "  --capacity N|P%  slots per MoE layer, or a share of the experts (default 25% and 50%)\n"
    "  --policy P       lru, lcp, lfru, lrfu, stale (default: all, then Belady's MIN)\n"
    "  --param X        the policy's tunable (lcp: age scale; lfru/lrfu: half-life; stale: weight)\n"
    "  --belady         also Belady's MIN, the offline optimum (default when no --policy)\n"
    "  --lookahead-trace F, --lookahead N  read each layer's first N predicted experts before\n"
    "                   its step (F: per token and layer, the lookahead's picks, best first)\n"
    "  --no-guard       a lookahead read may evict any predicted expert (the cache before\n"
    "                   it was made lookahead-aware)\n"
    "  --gate X         read a layer's predictions only while at least X of its lookahead reads\n"
    "                   (or, gated, the predictions not cached) were then used (lookahead_gate.h)\n"
    "  --history F, --pin N  pin each layer's N most used experts of trace F\n"
    "  --global         one pool of slots for all layers (per-layer adaptive capacity)\n"
    "  --first N        start at token N of the traces (default 0)\n"
    "  --tokens N       replay only N tokens\n"
    "  --streams S      S sequences decoded together: the trace cut into S consecutive parts,\n"
    "                   each step reading the union of their experts once; counts are per\n"
    "                   step (--skip too) and `reads/token` is expert reads per generated token\n";

#define MAX_LIST 16

static int parse_param(const char *s, double *out) {
    char *end = NULL;
    double v = strtod(s ? s : "", &end);
    if (!s || end == s || *end || !(v > 0)) return cli_fail("--param expects a positive number"), -1;
    *out = v;
    return 0;
}

/* generated: tokens counted (steps x streams), for expert reads per generated token */
static void print_result(int json, const char *name, double param, int cap, const lm_replay_options *o,
                         const lm_replay_result *r, uint64_t generated) {
    uint64_t total = r->hits + r->misses;
    double rate = total ? 100.0 * (double)r->hits / (double)total : 0;
    double per_token = generated ? (double)r->misses / (double)generated : 0;
    if (json)
        printf("{\"policy\":\"%s\",\"param\":%g,\"capacity\":%d,\"lookahead\":%d,\"guarded\":%d,\"pin\":%d,"
               "\"global\":%d,\"hits\":%llu,\"misses\":%llu,\"hit_rate\":%.4f,\"prefetched\":%llu,"
               "\"prefetch_used\":%llu,\"reads_per_token\":%.3f}\n",
               name, param, cap, o->lookahead, !o->unguarded, o->pin, o->global, (unsigned long long)r->hits,
               (unsigned long long)r->misses, rate, (unsigned long long)r->prefetched,
               (unsigned long long)r->prefetch_used, per_token);
    else {
        printf("capacity %4d  %-7s", cap, name);
        if (param > 0) printf(" (%g)", param);
        printf("  hit rate %6.2f%%  (%llu of %llu)  reads/token %6.2f", rate, (unsigned long long)r->hits,
               (unsigned long long)total, per_token);
        if (o->lookahead)
            printf("  lookahead %d%s%s: %llu read, %llu used", o->lookahead, o->unguarded ? " unguarded" : "", o->gate > 0 ? " gated" : "",
                   (unsigned long long)r->prefetched, (unsigned long long)r->prefetch_used);
        if (o->pin) printf("  pinned %d", o->pin);
        if (o->global) printf("  shared pool");
        printf("\n");
    }
}

int cmd_replay(int argc, char **argv) {
    const char *trace = NULL, *pred_path = NULL, *hist_path = NULL;
    const char *caps[MAX_LIST];
    int ncaps = 0, policies[MAX_LIST], npol = 0;
    int belady = 0, json = 0, unguarded = 0, global = 0, lookahead = 0, pin = 0, skip = 1, tokens = 0, first = 0;
    int streams = 1;
    double param = 0, gate = 0;
    cli_option opts[] = {
        {"--lookahead-trace", .str = &pred_path, .what = "a file"},
        {"--history", .str = &hist_path, .what = "a file"},
        {"--lookahead", .num = &lookahead, .lo = 0, .hi = 1 << 16},
        {"--pin", .num = &pin, .lo = 0, .hi = 1 << 16},
        {"--skip", .num = &skip, .lo = 0, .hi = 1 << 30},
        {"--tokens", .num = &tokens, .lo = 1, .hi = 1 << 30},
        {"--first", .num = &first, .lo = 0, .hi = 1 << 30},
        {"--streams", .num = &streams, .lo = 1, .hi = 1 << 10},
        {"--belady", .flag = &belady, .lo = 1},
        {"--no-guard", .flag = &unguarded, .lo = 1},
        {"--global", .flag = &global, .lo = 1},
        {"--json", .flag = &json, .lo = 1},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(replay_usage, stdout);
            return 0;
        }
        int used = CLI_OPTIONS(a, v, opts);
        if (used < 0) return 2;
        if (used) {
            i += used - 1;
            continue;
        }
        if (!strcmp(a, "--gate")) {
            char *end = NULL;
            gate = v ? strtod(v, &end) : 0;
            if (!v || end == v || *end || !(gate > 0 && gate <= 1))
                return cli_fail("--gate expects the share of lookahead reads used, in (0, 1]"), 2;
            i++;
            continue;
        }
        if (!strcmp(a, "--capacity") || !strcmp(a, "--policy") || !strcmp(a, "--param")) {
            if (!v) return cli_fail("%s needs a value", a), 2;
            i++;
            if (!strcmp(a, "--param")) {
                if (parse_param(v, &param) != 0) return 2;
            } else if (!strcmp(a, "--capacity")) {
                if (ncaps == MAX_LIST) return cli_fail("at most %d capacities", MAX_LIST), 2;
                caps[ncaps++] = v;
            } else {
                int p = lm_policy_parse(v);
                if (p < 0) return cli_fail("unknown policy %s (lru, lcp, lfru, lrfu, stale)", v), 2;
                if (npol == MAX_LIST) return cli_fail("at most %d policies", MAX_LIST), 2;
                policies[npol++] = p;
            }
            continue;
        }
        if (a[0] == '-' || trace) return cli_fail("replay: unexpected argument %s\n%s", a, replay_usage), 2;
        trace = a;
    }
    if (!trace) return cli_fail("%s", replay_usage), 2;
    if (lookahead && !pred_path) return cli_fail("--lookahead needs --lookahead-trace"), 2;
    if (gate > 0 && !lookahead) return cli_fail("--gate needs --lookahead"), 2;
    if (pin && !hist_path) return cli_fail("--pin needs --history"), 2;
    if (!npol) {
        for (int p = 0; p < LM_EVICT_COUNT; p++) policies[npol++] = p;
        if (!lookahead) belady = 1;
    }
    if (belady && lookahead) return cli_fail("Belady's MIN is computed without lookahead"), 2;
    if (streams > 1 && lookahead) return cli_fail("--streams replays without lookahead"), 2;

    char err[LM_ERR_LEN];
    lm_trace_data routes = {0}, pred = {0}, hist = {0};
    int rc = 1;
    if (lm_trace_load(&routes, trace, err) != 0 || (pred_path && lm_trace_load(&pred, pred_path, err) != 0) ||
        (hist_path && lm_trace_load(&hist, hist_path, err) != 0)) {
        fprintf(stderr, "lazymoe replay: %s\n", err);
        goto out;
    }
    if (first) {
        /* Start at token `first` of the routing and lookahead traces (a later part of a
         * trace for reporting, when parameters were chosen on its beginning). */
        if (first >= routes.n_tokens || (pred_path && first >= pred.n_tokens)) {
            fprintf(stderr, "lazymoe replay: --first %d is past the trace's %d tokens\n", first, routes.n_tokens);
            goto out;
        }
        size_t per = (size_t)routes.n_layers * (size_t)routes.top_k;
        memmove(routes.ids, routes.ids + (size_t)first * per, sizeof *routes.ids * per * (size_t)(routes.n_tokens - first));
        routes.n_tokens -= first;
        if (pred_path) {
            per = (size_t)pred.n_layers * (size_t)pred.top_k;
            memmove(pred.ids, pred.ids + (size_t)first * per, sizeof *pred.ids * per * (size_t)(pred.n_tokens - first));
            pred.n_tokens -= first;
        }
    }
    if (tokens && tokens < routes.n_tokens) routes.n_tokens = tokens;
    if (streams > 1) {
        lm_trace_data merged;
        if (lm_trace_merge_streams(&routes, streams, &merged, err) != 0) {
            fprintf(stderr, "lazymoe replay: %s\n", err);
            goto out;
        }
        lm_trace_data_free(&routes);
        routes = merged;
    }
    if (skip >= routes.n_tokens) {
        fprintf(stderr, "lazymoe replay: --skip %d leaves none of the trace's %d tokens\n", skip, routes.n_tokens);
        goto out;
    }
    int capv[MAX_LIST];
    if (!ncaps) {
        capv[0] = routes.n_experts / 4;
        capv[1] = routes.n_experts / 2;
        ncaps = 2;
    } else {
        for (int c = 0; c < ncaps; c++) {
            size_t n = strlen(caps[c]);
            int pct = n > 1 && caps[c][n - 1] == '%';
            char buf[32];
            snprintf(buf, sizeof buf, "%.*s", (int)(pct ? n - 1 : n), caps[c]);
            long v = cli_parse_long("--capacity", buf, 1, pct ? 100 : 1 << 20);
            if (v < 0) goto out;
            capv[c] = pct ? (int)(routes.n_experts * v / 100) : (int)v;
        }
    }
    if (!json)
        printf("trace %s: %d %s, %d layers, %d experts, top-%d; counted after %d\n", trace, routes.n_tokens,
               streams > 1 ? "steps" : "tokens", routes.n_layers, routes.n_experts, routes.top_k / streams, skip);
    if (!json && streams > 1)
        printf("%d streams decoded together: each step reads the union of their experts once\n", streams);
    const uint64_t generated = (uint64_t)(routes.n_tokens - skip) * (uint64_t)streams;
    for (int c = 0; c < ncaps; c++) {
        lm_replay_options o = {.capacity = capv[c], .lookahead = lookahead, .gate = gate, .unguarded = unguarded, .pin = pin,
                               .skip = skip, .global = global, .param = param};
        lm_replay_result r;
        for (int i = 0; i < npol; i++) {
            o.policy = (lm_evict_policy)policies[i];
            if (lm_replay(&routes, pred_path ? &pred : NULL, hist_path ? &hist : NULL, &o, &r, err) != 0) {
                fprintf(stderr, "lazymoe replay: %s\n", err);
                goto out;
            }
            print_result(json, lm_policy_name(o.policy), param > 0 ? param : lm_policy_default_param(o.policy),
                         capv[c], &o, &r, generated);
        }
        if (belady) {
            o.belady = 1;
            o.policy = LM_EVICT_LRU;
            if (lm_replay(&routes, NULL, hist_path ? &hist : NULL, &o, &r, err) != 0) {
                fprintf(stderr, "lazymoe replay: %s\n", err);
                goto out;
            }
            print_result(json, "belady", 0, capv[c], &o, &r, generated);
        }
    }
    rc = 0;
out:
    lm_trace_data_free(&routes);
    lm_trace_data_free(&pred);
    lm_trace_data_free(&hist);
    return rc;
}

/* `lazymoe synth`: argument parsing around lm_synth_write (src/synth/synth.h). */
#include "cli/commands.h"

#include "common/error.h"
#include "synth/synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void synth_usage(FILE *f) {
    fprintf(f,
            "usage: lazymoe synth --preset NAME --out DIR [options]\n"
            "Writes a random-weight model at a real model's shapes, in the MLX quantized layout\n"
            "(config.json, generation_config.json, safetensors shards), for benchmarks; the\n"
            "gpt-oss presets in the released layout (MXFP4 experts, BF16 rest; --bits and\n"
            "--group-size do not apply to them).\n"
            "  --preset NAME       %s\n"
            "  --out DIR           output directory (written atomically)\n"
            "  --layers N          override the layer count (config says N layers)\n"
            "  --bits 4|8          expert and linear weights (default 4; routers stay 8)\n"
            "  --group-size N      32, 64 or 128 (default 64)\n"
            "  --seed S            random seed (default 0); same seed, same bytes\n"
            "  --routing MODE      realistic (default): skewed expert popularity with variety;\n"
            "                      uniform: no skew; collapsed: a few experts win every token\n"
            "  --threads N         generator threads (default min(2, cores))\n"
            "  --dry-run           print the plan (tensors, bytes per expert, total) and stop\n"
            "  --force             replace DIR if it exists and is not empty\n"
            "  --quiet             no progress output\n"
            "Testing: --hidden N, --experts N, --moe-intermediate N, --vocab N shrink a preset\n"
            "(same names and layout); --assume-free-bytes N fakes the free disk space.\n",
            lm_synth_presets());
}

static int parse_u64(const char *s, unsigned long long *out) {
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out) {
    unsigned long long v;
    if (parse_u64(s, &v) != 0 || v < (unsigned long long)lo || v > (unsigned long long)hi) return -1;
    *out = (int)v;
    return 0;
}

static void print_plan(const lm_synth_options *o, const lm_synth_plan *p) {
    printf("preset: %s\nmodel_type: %s\nlayers: %d\nhidden: %d\nexperts: %d\ntop_k: %d\n"
           "moe_intermediate: %d\nvocab: %d\n",
           o->preset, p->model_type, p->layers, p->hidden, p->experts, p->top_k, p->moe_intermediate, p->vocab);
    if (p->mxfp4) printf("storage: mxfp4 experts, bf16 rest\n");
    else printf("bits: %d\ngroup_size: %d\n", o->bits, o->group_size);
    printf("tensors: %d\nshards: %d\n"
           "bytes_per_expert: %llu\nbytes_experts: %llu\nbytes_resident: %llu\nbytes_total: %llu\n"
           "params_total: %llu\n",
           p->n_tensors, p->n_shards,
           (unsigned long long)p->bytes_per_expert, (unsigned long long)p->bytes_experts,
           (unsigned long long)p->bytes_resident, (unsigned long long)p->bytes_total,
           (unsigned long long)p->params_total);
}

int cmd_synth(int argc, char **argv) {
    lm_synth_options o;
    lm_synth_options_init(&o);
    o.preset = NULL;
    const char *out = NULL;
    int dry = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            synth_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--force")) {
            o.force = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            o.quiet = 1;
            continue;
        }
        if (!strcmp(a, "--dry-run")) {
            dry = 1;
            continue;
        }
        static const char *valued[] = {"--preset", "--out", "--layers", "--bits", "--group-size",
                                       "--seed", "--routing", "--threads", "--assume-free-bytes",
                                       "--hidden", "--experts", "--moe-intermediate", "--vocab", NULL};
        int known = 0;
        for (int k = 0; valued[k]; k++) known |= !strcmp(a, valued[k]);
        if (!known) {
            fprintf(stderr, "lazymoe synth: unknown %s %s\n", a[0] == '-' ? "option" : "argument", a);
            synth_usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lazymoe synth: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int bad = 0;
        unsigned long long u = 0;
        if (!strcmp(a, "--preset")) o.preset = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--layers")) bad = parse_int(v, 1, 4096, &o.layers);
        else if (!strcmp(a, "--bits")) bad = parse_int(v, 1, 64, &o.bits);
        else if (!strcmp(a, "--group-size")) bad = parse_int(v, 1, 1 << 20, &o.group_size);
        else if (!strcmp(a, "--threads")) bad = parse_int(v, 1, 16, &o.threads);
        else if (!strcmp(a, "--hidden")) bad = parse_int(v, 1, 1 << 16, &o.hidden);
        else if (!strcmp(a, "--experts")) bad = parse_int(v, 1, 1 << 14, &o.experts);
        else if (!strcmp(a, "--moe-intermediate")) bad = parse_int(v, 1, 1 << 18, &o.moe_intermediate);
        else if (!strcmp(a, "--vocab")) bad = parse_int(v, 1, 1 << 22, &o.vocab);
        else if (!strcmp(a, "--seed")) {
            bad = parse_u64(v, &u);
            o.seed = u;
        } else if (!strcmp(a, "--assume-free-bytes")) {
            bad = parse_u64(v, &u) || u == 0;
            o.assume_free_bytes = u;
        } else if (!strcmp(a, "--routing")) {
            if (lm_synth_parse_routing(v, &o.routing) != 0) {
                fprintf(stderr, "lazymoe synth: --routing must be realistic, uniform or collapsed, not %s\n", v);
                return 2;
            }
        }
        if (bad) {
            fprintf(stderr, "lazymoe synth: %s: bad value %s\n", a, v);
            return 2;
        }
    }
    if (!o.preset) {
        fprintf(stderr, "lazymoe synth: --preset is required (%s)\n", lm_synth_presets());
        synth_usage(stderr);
        return 2;
    }
    char err[LM_ERR_LEN] = "";
    lm_synth_plan plan;
    if (dry) {
        if (lm_synth_plan_model(&o, &plan, err) != 0) {
            fprintf(stderr, "lazymoe synth: %s\n", err);
            return 1;
        }
        print_plan(&o, &plan);
        return 0;
    }
    if (!out) {
        fprintf(stderr, "lazymoe synth: --out DIR is required\n");
        return 2;
    }
    if (lm_synth_write(out, &o, &plan, err) != 0) {
        fprintf(stderr, "lazymoe synth: %s\n", err);
        return 1;
    }
    return 0;
}

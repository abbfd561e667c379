/* `lazymoe convert`: argument parsing around lm_convert (src/convert/convert.h). */
#include "cli/commands.h"

#include "common/error.h"
#include "convert/convert.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void convert_usage(FILE *f) {
    fprintf(f,
            "usage: lazymoe convert HF_DIR OUT_DIR [options]\n"
            "Quantizes a Hugging Face MoE checkpoint into the MLX layout mlx-lm writes\n"
            "(model types: %s).\n"
            "  --bits N            2, 3, 4, 5, 6 or 8 (default 4)\n"
            "  --group-size N      32, 64 or 128 (default 64)\n"
            "  --dtype T           bf16, f16 or f32 for scales, biases and float tensors\n"
            "                      (default: config torch_dtype, else the stored dtypes)\n"
            "  --max-shard-size S  bytes per shard, suffix K/M/G (decimal) or KiB/MiB/GiB\n"
            "                      (default 5GiB, as mlx-lm)\n"
            "  --kernel gpu|cpu    reproduce mlx's Metal/CUDA kernel (default) or its CPU one\n"
            "  --force             replace OUT_DIR if it exists and is not empty\n"
            "  --quiet             no progress output\n",
            lm_convert_supported_types());
}

/* "123", "5GB", "5G", "512MiB" -> bytes; 0 on error. */
static unsigned long long parse_size(const char *s) {
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (errno || end == s || v <= 0) return 0;
    double mult = 1;
    if (!*end || strcmp(end, "B") == 0) mult = 1;
    else if (!strcmp(end, "K") || !strcmp(end, "KB")) mult = 1e3;
    else if (!strcmp(end, "M") || !strcmp(end, "MB")) mult = 1e6;
    else if (!strcmp(end, "G") || !strcmp(end, "GB")) mult = 1e9;
    else if (!strcmp(end, "KiB")) mult = 1024.0;
    else if (!strcmp(end, "MiB")) mult = 1024.0 * 1024;
    else if (!strcmp(end, "GiB")) mult = 1024.0 * 1024 * 1024;
    else return 0;
    return (unsigned long long)(v * mult);
}

static int parse_int(const char *s, int *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -1000000 || v > 1000000) return -1;
    *out = (int)v;
    return 0;
}

int cmd_convert(int argc, char **argv) {
    lm_convert_options o;
    lm_convert_options_init(&o);
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = (i + 1 < argc) ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            convert_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--force")) {
            o.force = 1;
        } else if (!strcmp(a, "--quiet")) {
            o.quiet = 1;
        } else if (!strcmp(a, "--bits") || !strcmp(a, "--group-size") || !strcmp(a, "--dtype") ||
                   !strcmp(a, "--kernel") || !strcmp(a, "--max-shard-size")) {
            if (!val) {
                fprintf(stderr, "lazymoe convert: %s needs a value\n", a);
                return 2;
            }
            i++;
            if (!strcmp(a, "--bits") && parse_int(val, &o.bits) != 0) {
                fprintf(stderr, "lazymoe convert: --bits: not a number: %s\n", val);
                return 2;
            } else if (!strcmp(a, "--group-size") && parse_int(val, &o.group_size) != 0) {
                fprintf(stderr, "lazymoe convert: --group-size: not a number: %s\n", val);
                return 2;
            } else if (!strcmp(a, "--dtype")) {
                if (!strcmp(val, "bf16") || !strcmp(val, "bfloat16")) o.dtype = LM_DT_BF16;
                else if (!strcmp(val, "f16") || !strcmp(val, "float16")) o.dtype = LM_DT_F16;
                else if (!strcmp(val, "f32") || !strcmp(val, "float32")) o.dtype = LM_DT_F32;
                else {
                    fprintf(stderr, "lazymoe convert: --dtype must be bf16, f16 or f32, not %s\n", val);
                    return 2;
                }
            } else if (!strcmp(a, "--kernel")) {
                if (!strcmp(val, "gpu")) o.kernel = MLXQ_KERNEL_GPU;
                else if (!strcmp(val, "cpu")) o.kernel = MLXQ_KERNEL_CPU;
                else {
                    fprintf(stderr, "lazymoe convert: --kernel must be gpu or cpu, not %s\n", val);
                    return 2;
                }
            } else if (!strcmp(a, "--max-shard-size")) {
                o.max_shard_bytes = parse_size(val);
                if (!o.max_shard_bytes) {
                    fprintf(stderr, "lazymoe convert: --max-shard-size: bad size %s\n", val);
                    return 2;
                }
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "lazymoe convert: unknown option %s\n", a);
            convert_usage(stderr);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "lazymoe convert: unexpected argument %s\n", a);
            return 2;
        }
    }
    if (npos != 2) {
        convert_usage(stderr);
        return 2;
    }
    char err[LM_ERR_LEN] = "";
    if (lm_convert(pos[0], pos[1], &o, err) != 0) {
        fprintf(stderr, "lazymoe convert: %s\n", err);
        return 1;
    }
    return 0;
}

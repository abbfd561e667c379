/* A model whose logits are not finite, for the tests of that error on every path that
 * computes logits (tests/test_generate.c on the CPU, tests/cuda/test_cuda.c on the
 * GPU): a copy of a model directory with f32 weights in one model.safetensors, its
 * lm_head row `row` set to NaN, so that logit `row` is NaN at every position and the
 * others stay finite. */
#ifndef LAZYMOE_TEST_NAN_MODEL_H
#define LAZYMOE_TEST_NAN_MODEL_H

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The files a copy takes besides the weights (the ones that exist are copied). */
static const char *const nan_model_files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                              "tokenizer_config.json"};

static char *nan_model_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = 0;
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

static int nan_model_write(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Writes the copy into a new directory, its path in dir (room for 256); 0 or -1 with
 * the reason printed. */
static int nan_model_make(const char *src, int row, char *dir) {
    char path[1024];
    snprintf(dir, 256, "/tmp/lazymoe-nan-model-XXXXXX");
    if (!mkdtemp(dir)) return printf("# mkdtemp failed\n"), -1;
    for (size_t i = 0; i < sizeof nan_model_files / sizeof nan_model_files[0]; i++) {
        size_t len = 0;
        snprintf(path, sizeof path, "%s/%s", src, nan_model_files[i]);
        char *text = nan_model_read(path, &len);
        if (!text) continue;
        snprintf(path, sizeof path, "%s/%s", dir, nan_model_files[i]);
        int rc = nan_model_write(path, text, len);
        free(text);
        if (rc) return printf("# cannot write %s\n", path), -1;
    }
    size_t len = 0;
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    char *st = nan_model_read(path, &len);
    if (!st || len < 8) return free(st), printf("# cannot read %s\n", path), -1;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | (uint8_t)st[i];
    json_t *h = hlen <= len - 8 ? json_loadb(st + 8, (size_t)hlen, 0, NULL) : NULL;
    json_t *t = json_object_get(h, "lm_head.weight");
    json_t *shape = json_object_get(t, "shape"), *off = json_object_get(t, "data_offsets");
    const char *dtype = json_string_value(json_object_get(t, "dtype"));
    int rc = -1;
    if (dtype && !strcmp(dtype, "F32") && json_array_size(shape) == 2 && json_array_size(off) == 2) {
        size_t rows = (size_t)json_integer_value(json_array_get(shape, 0));
        size_t cols = (size_t)json_integer_value(json_array_get(shape, 1));
        size_t at = 8 + (size_t)hlen + (size_t)json_integer_value(json_array_get(off, 0)) + (size_t)row * cols * 4;
        if ((size_t)row < rows && at + cols * 4 <= len) {
            float nan = NAN;
            for (size_t c = 0; c < cols; c++) memcpy(st + at + 4 * c, &nan, 4);
            snprintf(path, sizeof path, "%s/model.safetensors", dir);
            rc = nan_model_write(path, st, len);
        }
    }
    if (rc) printf("# %s/model.safetensors: no f32 lm_head.weight with row %d to spoil\n", src, row);
    json_decref(h);
    free(st);
    return rc;
}

/* Removes the copy. */
static void nan_model_remove(const char *dir) {
    char path[1024];
    for (size_t i = 0; i < sizeof nan_model_files / sizeof nan_model_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, nan_model_files[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

#endif

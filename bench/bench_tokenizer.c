/* Tokenizer speed: load time, encode throughput (first pass with an empty word cache, then
 * a second pass), decode throughput.
 *
 *   make && cc -std=c11 -D_GNU_SOURCE -O2 -Isrc bench/bench_tokenizer.c build/liblazymoe.a \
 *        -ljansson -lpcre2-8 -o build/bench_tokenizer
 *   build/bench_tokenizer MODEL_DIR [TEXT_FILE]
 *
 * Without TEXT_FILE, the input is 1 MiB made of this repository's C sources repeated.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

#include "text/tokenizer.h"

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    *len = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MODEL_DIR [TEXT_FILE]\n", argv[0]); return 2; }
    size_t len = 0;
    char *text = NULL;
    if (argc > 2) {
        text = read_all(argv[2], &len);
        if (!text) { fprintf(stderr, "cannot read %s\n", argv[2]); return 1; }
    } else {
        const char *srcs[] = {"src/text/tokenizer.c", "src/text/tokenizer_bpe.c", "src/text/tokenizer_pretok.c",
                              "src/text/tokenizer_decode.c", "src/text/unicode.c", "src/cli/cmd_tokenize.c"};
        size_t cap = 1 << 20;
        text = malloc(cap);
        while (len < cap) {
            size_t before = len;
            for (size_t i = 0; i < sizeof srcs / sizeof *srcs && len < cap; i++) {
                size_t n;
                char *s = read_all(srcs[i], &n);
                if (!s) continue;
                size_t take = n < cap - len ? n : cap - len;
                memcpy(text + len, s, take);
                len += take;
                free(s);
            }
            if (len == before) { fprintf(stderr, "run from the repository root\n"); return 1; }
        }
    }
    char err[LM_ERR_LEN];
    lm_tokenizer *tok;
    double t0 = now();
    if (lm_tokenizer_load(argv[1], &tok, err)) { fprintf(stderr, "%s\n", err); return 1; }
    double t1 = now();
    printf("load            %.3f s (%zu ids)\n", t1 - t0, lm_tokenizer_n_vocab(tok));
    int32_t *ids = NULL;
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        free(ids);
        double a = now();
        if (lm_tokenizer_encode(tok, text, len, 0, &ids, &n, err)) { fprintf(stderr, "%s\n", err); return 1; }
        double b = now();
        printf("encode pass %d   %.3f s for %zu bytes -> %zu tokens (%.2f MB/s)\n", pass + 1, b - a, len, n,
               (double)len / (b - a) / 1e6);
    }
    char *out;
    size_t out_len;
    double a = now();
    if (lm_tokenizer_decode(tok, ids, n, 0, &out, &out_len, err)) { fprintf(stderr, "%s\n", err); return 1; }
    double b = now();
    printf("decode          %.3f s for %zu tokens (round trip %s)\n", b - a, n,
           out_len == len && !memcmp(out, text, len) ? "exact" : "DIFFERS");
    free(out);
    free(ids);
    free(text);
    lm_tokenizer_free(tok);
    return 0;
}

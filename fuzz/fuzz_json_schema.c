/* libFuzzer target: JSON Schema -> grammar, grammar text parsing, and matching.
 *
 * The first byte picks the input kind: even = the rest is a JSON schema (converted,
 * then its grammar parsed), odd = the rest is grammar text. Up to the first NUL byte is
 * that input; what follows the NUL is fed to a matcher of the resulting grammar in two
 * pieces, with a token mask over a small fixed vocabulary between them. Every failure
 * must come back as an error message, never a crash, leak or hang. */
#include "text/grammar.h"
#include "text/json_schema.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const VOCAB[] = {"{", "}", "[", "]", "\"", ",", ":", " ", "\\", "a", "ab", "0", "12", "-", ".", "e",
                                    "true", "false", "null", "\"a\"", "\": ", "\xc3", "\xa9", "\xc3\xa9", "\n", "<", "x"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static lm_token_trie *trie;
    char err[LM_ERR_LEN];
    if (!trie) {
        size_t lens[sizeof VOCAB / sizeof *VOCAB];
        for (size_t i = 0; i < sizeof VOCAB / sizeof *VOCAB; i++) lens[i] = strlen(VOCAB[i]);
        if (lm_token_trie_new(VOCAB, lens, (int)(sizeof VOCAB / sizeof *VOCAB), &trie, err)) abort();
    }
    const char *text = (const char *)data + 1;
    size_t n = size - 1, tlen = strnlen(text, n);
    const char *feed = text + tlen + (tlen < n ? 1 : 0);
    size_t flen = n - (size_t)(feed - text);
    lm_grammar *g = NULL;
    if (data[0] % 2 == 0) {
        json_error_t je;
        json_t *schema = json_loadb(text, tlen, JSON_DECODE_ANY, &je);
        if (!schema) return 0;
        if (lm_json_schema_grammar(schema, "schema", &g, err) != 0) g = NULL;
        json_decref(schema);
    } else if (lm_grammar_parse(text, tlen, &g, err) != 0) {
        g = NULL;
    }
    if (!g) return 0;
    lm_gmatch *m;
    if (lm_gmatch_new(g, &m, err) == 0) {
        lm_gmatch_set_work_limit(m, 200000); /* the default bound, scaled to a fuzzing budget */
        uint8_t allowed[sizeof VOCAB / sizeof *VOCAB];
        size_t half = flen / 2;
        if (lm_gmatch_accept(m, feed, half, err) >= 0 && lm_gmatch_mask(m, trie, (long)(flen % 7) - 1, allowed, err) >= 0)
            (void)lm_gmatch_accept(m, feed + half, flen - half, err);
        (void)lm_gmatch_complete(m);
        (void)lm_gmatch_min_bytes(m);
        lm_gmatch_free(m);
    }
    lm_grammar_free(g);
    return 0;
}

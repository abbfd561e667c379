/* libFuzzer target: config.json text (the generation config is fuzzed as the same bytes). */
#include "common/error.h"
#include "models/config.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    lm_config c;
    char err[LM_ERR_LEN];
    if (lm_config_parse(&c, text, size % 2 ? text : NULL, err) == 0) {
        for (int l = 0; l < c.n_layers; l++) (void)lm_config_layer_is_moe(&c, l);
        lm_config_free(&c);
    }
    free(text);
    return 0;
}

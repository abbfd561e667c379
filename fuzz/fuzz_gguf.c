/* libFuzzer target: a whole GGUF file as input (header and data), then what lazymoe
 * makes of its metadata: the model config (models/gguf_model.c) and the tokenizer
 * (text/tokenizer_gguf.c: byte-level BPE, SentencePiece), which encodes and decodes.
 * Build with `make fuzz`; run e.g. build/fuzz/fuzz_gguf fuzz/corpus/gguf. */
#include "common/error.h"
#include "formats/gguf.h"
#include "models/config.h"
#include "models/gguf_model.h"
#include "text/tokenizer.h"
#include "text/tokenizer_gguf.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_archive *a = gguf_new();
    if (!a) return 0;
    char err[LM_ERR_LEN];
    if (gguf_parse(a, data, size, size, 0, 1, err) == 0 && gguf_finish(a, err) == 0) {
        /* Invariants the rest of the engine relies on. */
        for (int i = 0; i < a->ntensors; i++) {
            const gguf_tensor *t = &a->tensors[i];
            if (t->offset > size || t->nbytes > size - t->offset) abort();
            if (lm_dtype_is_block(t->dtype) && t->ne[0] % lm_dtype_block_elems(t->dtype)) abort();
        }
        for (int i = 0; i < a->nkv; i++) {
            const gguf_kv *kv = &a->kvs[i];
            if (kv->type == GGUF_TYPE_STRING && (kv->s.p < (const char *)data || kv->s.len > size)) abort();
            if (kv->type == GGUF_TYPE_ARRAY && kv->strs)
                for (uint64_t k = 0; k < kv->arr_n; k++)
                    if ((const uint8_t *)kv->strs[k].p + kv->strs[k].len > data + size) abort();
            if (kv->type == GGUF_TYPE_ARRAY && kv->arr_type != GGUF_TYPE_STRING && kv->arr_type != GGUF_TYPE_ARRAY &&
                kv->arr_n)
                (void)gguf_arr_num(kv, kv->arr_n - 1); /* the last element is readable */
        }
        int64_t v;
        (void)gguf_get_int(a, "general.alignment", &v, err);
        lm_config c;
        (void)lm_gguf_config(&c, a, err);
        lm_config_free(&c); /* zeroed first, freed whatever the outcome */
        lm_tokenizer *tok = NULL;
        if (lm_tokenizer_from_gguf(a, &tok, err) == 0) {
            static const char text[] = "Hello  w\xC3\xB6rld <s>\n\t\xF0\x9F\xA6\x99 x</s>  ";
            int32_t *ids = NULL;
            size_t n = 0;
            if (lm_tokenizer_encode(tok, text, sizeof text - 1, 1, &ids, &n, err) == 0) {
                char *out = NULL;
                size_t len = 0;
                if (lm_tokenizer_decode(tok, ids, n, 0, &out, &len, err) == 0) free(out);
                if (lm_tokenizer_decode(tok, ids, n, LM_DECODE_SKIP_SPECIAL, &out, &len, err) == 0) free(out);
            }
            free(ids);
            lm_tokenizer_free(tok);
        }
    }
    gguf_close(a);
    return 0;
}

/* libFuzzer target: tokenizer.json files. The input is the file; a tokenizer that loads
 * encodes a fixed text and the input's own tail, with and without special tokens, and
 * decodes the result, so normalizers, pre-tokenizers, the BPE model, the post-processor
 * and the decoders all run on hostile definitions. The file goes through the real
 * loader (a path), written to a per-process file under /dev/shm (or /tmp). */
#include "common/error.h"
#include "text/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[256];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path[0]) {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof path, "%s/lazymoe-fuzz-tokenizer-%d.json", dir, (int)getpid());
    }
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t wrote = fwrite(data, 1, size, f);
    fclose(f);
    if (wrote != size) return 0;
    lm_tokenizer *tok = NULL;
    char err[LM_ERR_LEN];
    if (lm_tokenizer_load(path, &tok, err) == 0) {
        static const char sample[] = "Hello, world! def f(x):\n    return x  # 10 ÷ 3 ≈ 3.33 🙂 <|im_end|>\r\n\t é";
        const char *texts[2] = {sample, (const char *)data + size / 2};
        size_t lens[2] = {sizeof sample - 1, size - size / 2};
        for (int t = 0; t < 2; t++)
            for (int special = 0; special < 2; special++) {
                int32_t *ids = NULL;
                size_t n = 0;
                if (lm_tokenizer_encode_max(tok, texts[t], lens[t] > 4096 ? 4096 : lens[t], special, 2048, &ids,
                                            &n, err) == 0) {
                    char *out = NULL;
                    size_t olen = 0;
                    if (lm_tokenizer_decode(tok, ids, n, special ? LM_DECODE_SKIP_SPECIAL : LM_DECODE_CLEANUP, &out,
                                            &olen, err) == 0)
                        free(out);
                    free(ids);
                }
            }
        lm_tokenizer_free(tok);
    }
    return 0;
}

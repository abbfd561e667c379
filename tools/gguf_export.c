/* gguf_export: writes a lazymoe model directory (Hugging Face safetensors or MLX) as one
 * GGUF file with llama.cpp's conventions (src/convert/gguf_export.h).
 *
 *   make build/gguf_export
 *   build/gguf_export MODEL_DIR OUT.gguf [f32|f16|bf16|q8_0] [--placeholder-vocab] [--fuse-gate-up-exps]
 *                     [--keep-mtp]
 * (default f32)
 * --placeholder-vocab: a model without tokenizer.json gets a stand-in byte-level vocabulary
 * (llama.cpp cannot evaluate a "no_vocab" model) instead of none.
 * --fuse-gate-up-exps: gate and up experts as one ffn_gate_up_exps tensor, as llama.cpp's
 * converter writes them with that flag.
 * --keep-mtp: glm4moe's multi-token-prediction layers are written too (blk.N.nextn.*).
 */
#include "common/error.h"
#include "convert/gguf_export.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    int flags = 0;
    for (; argc > 3 && !strncmp(argv[argc - 1], "--", 2); argc--) {
        if (!strcmp(argv[argc - 1], "--placeholder-vocab")) flags |= LM_GGUF_PLACEHOLDER_VOCAB;
        else if (!strcmp(argv[argc - 1], "--fuse-gate-up-exps")) flags |= LM_GGUF_FUSE_GATE_UP;
        else if (!strcmp(argv[argc - 1], "--keep-mtp")) flags |= LM_GGUF_KEEP_MTP;
        else break;
    }
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: gguf_export MODEL_DIR OUT.gguf [f32|f16|bf16|q8_0] [--placeholder-vocab] "
                        "[--fuse-gate-up-exps] [--keep-mtp]\n");
        return 2;
    }
    lm_dtype t = LM_DT_F32;
    if (argc == 4) {
        if (!strcmp(argv[3], "f16")) t = LM_DT_F16;
        else if (!strcmp(argv[3], "bf16")) t = LM_DT_BF16;
        else if (!strcmp(argv[3], "q8_0")) t = LM_DT_Q8_0;
        else if (strcmp(argv[3], "f32") != 0) {
            fprintf(stderr, "gguf_export: type must be f32, f16, bf16 or q8_0, not '%s'\n", argv[3]);
            return 2;
        }
    }
    char err[LM_ERR_LEN];
    if (lm_gguf_export(argv[1], argv[2], t, flags, err) != 0) {
        fprintf(stderr, "gguf_export: %s\n", err);
        return 1;
    }
    return 0;
}

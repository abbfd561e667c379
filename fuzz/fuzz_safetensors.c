/* libFuzzer target: a whole safetensors file as input.
 * Build with `make fuzz`; run e.g. build/fuzz/fuzz_safetensors fuzz/corpus/safetensors. */
#include "common/error.h"
#include "formats/safetensors.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 8) return 0;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | data[i];
    if (hlen > size - 8) return 0;
    st_tensor *tensors = NULL;
    int count = 0, is_mlx = 0;
    char err[LM_ERR_LEN];
    if (st_parse_header((const char *)data + 8, (size_t)hlen, size, 0, &tensors, &count, &is_mlx, err) == 0) {
        /* Invariants the rest of the engine relies on. */
        for (int i = 0; i < count; i++) {
            if (tensors[i].offset + tensors[i].nbytes > size) abort();
            if (st_numel(&tensors[i]) * lm_dtype_size(tensors[i].dtype) != tensors[i].nbytes) abort();
        }
    }
    for (int i = 0; i < count; i++) free(tensors[i].name);
    free(tensors);
    return 0;
}

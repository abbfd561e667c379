/* llama.cpp's own ggml library as an independent reference for the ggml block types:
 * libggml-base.so from npm @node-llama-cpp/linux-x64 (tests/node, installed by
 * tools/install-deps.sh), loaded with dlopen. Shared by tests/test_ggml_types.c and
 * tests/test_mxfp4.c. */
#ifndef LAZYMOE_TESTS_GGML_REF_H
#define LAZYMOE_TESTS_GGML_REF_H

#include "harness.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGML_LIB LAZYMOE_SOURCE_DIR "/tests/node/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so"

/* ggml.h's struct ggml_type_traits (llama.cpp as shipped by node-llama-cpp 3.22.1);
 * callers check the name, block size and type size against what lazymoe expects
 * before to_float is called, so a changed layout fails loudly. */
typedef void (*ggml_to_float_t)(const void *x, float *y, int64_t k);
struct ggml_type_traits {
    const char *type_name;
    int64_t blck_size;
    int64_t blck_size_interleave;
    size_t type_size;
    bool is_quantized;
    ggml_to_float_t to_float;
    void *from_float_ref;
};
typedef const struct ggml_type_traits *(*get_traits_fn)(int type);

/* The library's ggml_get_type_traits; NULL after a failed check that says why. */
static inline get_traits_fn ggml_ref_traits(void) {
    void *h = dlopen(GGML_LIB, RTLD_NOW | RTLD_LOCAL);
    CHECKF(h != NULL, "cannot load %s (%s): run tools/install-deps.sh or npm ci in tests/node", GGML_LIB, dlerror());
    if (!h) return NULL;
    get_traits_fn fn = (get_traits_fn)dlsym(h, "ggml_get_type_traits");
    CHECKF(fn != NULL, "ggml_get_type_traits not found in %s", GGML_LIB);
    return fn;
}

#endif

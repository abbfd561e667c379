/* Quantizes a GGUF with llama.cpp's own quantizer (llama_model_quantize of the prebuilt
 * libllama that npm @node-llama-cpp/linux-x64 ships), for bench/llamacpp_compare.sh:
 * the Q4_K_M and Q4_0 files both engines are timed on are llama.cpp's, not ours.
 *
 * build: cc -O2 -std=c11 -D_GNU_SOURCE bench/llamacpp_quantize.c -ldl -o build/llamacpp_quantize
 * run:   build/llamacpp_quantize LIB_DIR IN.gguf OUT.gguf q4_k_m|q4_0 [THREADS]
 * LIB_DIR holds libllama*.so and its libggml*.so. IN may be quantized already (Q4_1
 * from bench/gguf_from_mlx.c): requantizing is allowed, as llama-quantize
 * --allow-requantize does (each tensor is dequantized to f32, then quantized).
 *
 * llama_model_quantize_params is read back from llama_model_quantize_default_params()
 * and its leading fields are checked against llama.h's defaults before any is set, so
 * a library with another layout is refused rather than misused. */
#include <dirent.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.h (2024-2026): int32 nthread, enum llama_ftype ftype, enum ggml_type
 * output_tensor_type, enum ggml_type token_embedding_type, bool allow_requantize,
 * bool quantize_output_tensor, bool only_copy, bool pure, bool keep_split, then
 * pointers. Returned by value through a hidden pointer, so room past the known
 * fields (pad) is harmless. */
typedef struct {
    int32_t nthread, ftype, output_tensor_type, token_embedding_type;
    uint8_t allow_requantize, quantize_output_tensor, only_copy, pure, keep_split;
    uint8_t pad[512];
} quantize_params;

enum { FTYPE_MOSTLY_Q4_0 = 2, FTYPE_MOSTLY_Q8_0 = 7, FTYPE_MOSTLY_Q5_1 = 9, FTYPE_MOSTLY_Q4_K_M = 15 };

/* dlopen the first file in dir whose name starts with prefix, RTLD_GLOBAL so that the
 * libraries opened after it find its symbols. */
static void *open_lib(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return NULL;
    struct dirent *e;
    void *h = NULL;
    while (!h && (e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || !strstr(e->d_name, ".so")) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
        if (!h) fprintf(stderr, "llamacpp_quantize: %s\n", dlerror());
    }
    closedir(d);
    return h;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: llamacpp_quantize LIB_DIR IN.gguf OUT.gguf q4_k_m|q4_0 [THREADS]\n");
        return 2;
    }
    int ftype = !strcmp(argv[4], "q4_k_m") ? FTYPE_MOSTLY_Q4_K_M : !strcmp(argv[4], "q4_0") ? FTYPE_MOSTLY_Q4_0 : -1;
    if (ftype < 0) {
        fprintf(stderr, "llamacpp_quantize: type must be q4_k_m or q4_0, not '%s'\n", argv[4]);
        return 2;
    }
    /* ggml-base, then ggml (which loads the CPU backend variants), then llama */
    if (!open_lib(argv[1], "libggml-base") || !open_lib(argv[1], "libggml.") || !open_lib(argv[1], "libllama.")) {
        fprintf(stderr, "llamacpp_quantize: cannot load libggml-base / libggml / libllama from %s\n", argv[1]);
        return 1;
    }
    quantize_params (*defaults)(void) = (quantize_params(*)(void))dlsym(RTLD_DEFAULT, "llama_model_quantize_default_params");
    uint32_t (*quantize)(const char *, const char *, const quantize_params *) =
        (uint32_t(*)(const char *, const char *, const quantize_params *))dlsym(RTLD_DEFAULT, "llama_model_quantize");
    void (*backend_init)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "llama_backend_init");
    if (!defaults || !quantize || !backend_init) {
        fprintf(stderr, "llamacpp_quantize: llama_model_quantize* / llama_backend_init not found\n");
        return 1;
    }
    backend_init();
    quantize_params p;
    memset(&p, 0, sizeof p);
    p = defaults();
    /* llama.h's defaults: 0 threads, Q5_1 (Q8_0 in newer releases), GGML_TYPE_COUNT for both overrides (the
     * same value), no requantizing, the output tensor quantized */
    if (p.nthread != 0 || (p.ftype != FTYPE_MOSTLY_Q5_1 && p.ftype != FTYPE_MOSTLY_Q8_0) || p.output_tensor_type != p.token_embedding_type ||
        p.output_tensor_type < 30 || p.allow_requantize != 0 || p.quantize_output_tensor != 1 || p.only_copy != 0 ||
        p.pure != 0) {
        fprintf(stderr, "llamacpp_quantize: llama_model_quantize_params has an unexpected layout (nthread %d, ftype %d, "
                        "types %d %d, flags %d %d %d %d): refusing\n",
                p.nthread, p.ftype, p.output_tensor_type, p.token_embedding_type, p.allow_requantize,
                p.quantize_output_tensor, p.only_copy, p.pure);
        return 1;
    }
    p.ftype = ftype;
    p.allow_requantize = 1;
    p.nthread = argc == 6 ? atoi(argv[5]) : 0;
    uint32_t rc = quantize(argv[2], argv[3], &p);
    if (rc != 0) {
        fprintf(stderr, "llamacpp_quantize: llama_model_quantize(%s -> %s) failed (%u)\n", argv[2], argv[3], rc);
        return 1;
    }
    return 0;
}

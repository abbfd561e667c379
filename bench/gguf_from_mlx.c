/* Bench tooling (not part of the library): writes a GGUF v3 file that llama.cpp loads as
 * arch `qwen3moe`, holding the same weights as an MLX 4-bit group-32 Qwen3-MoE checkpoint
 * (a `lazymoe synth --preset qwen3-30b-a3b --bits 4 --group-size 32` directory), so
 * bench/llamacpp_compare.sh can time lazymoe and llama.cpp on identical weights.
 *
 * Why this is exact for the 4-bit matrices: MLX affine 4-bit with group 32 stores, per
 * 32 consecutive values of a row, a scale s, a bias b (bf16) and 4-bit q with
 * w = s*q + b -- which is GGUF's Q4_1 block {f16 d, f16 m, u8 qs[16]} with w = d*q + m,
 * where qs[j] holds value j in its low nibble and value j+16 in its high nibble. MLX packs
 * 8 nibbles per uint32, lowest bits first, in element order. bf16 -> f16 is exact for
 * values in f16's normal range; every scale/bias that does not round-trip is counted and
 * reported (the tool fails if any differs, so the two engines really see the same weights).
 *
 * Not bit-identical, by design of the two formats: the 8-bit group-64 routers
 * (mlp.gate) are dequantized to F32 (GGUF has no affine 8-bit block type; Q8_0 is
 * symmetric group 32) and norm weights are widened bf16 -> F32. Both are exact in value,
 * but llama.cpp then computes the router matmul in F32 rather than from 8-bit codes.
 *
 * Tokenizer: a synthetic "gpt2"-type vocabulary of vocab_size strings: the 256 GPT-2
 * byte-level symbols first (llama.cpp's BPE falls back to them for any byte) and unique
 * filler strings after them, no merges. The benchmark feeds token ids, never text.
 *
 * GGUF layout (ggml docs/gguf.md): "GGUF", u32 version 3, u64 tensor count, u64 KV count,
 * KVs (u64-length string key, u32 type, value), tensor infos (name, u32 n_dims, u64 ne[]
 * innermost first, u32 ggml type, u64 offset into the data section), padding to the
 * alignment (32), then tensor data, each tensor starting at a multiple of 32.
 *
 * build: cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/gguf_from_mlx.c \
 *        build/liblazymoe.a -ljansson -lpcre2-8 -lpthread -lm -o build/gguf_from_mlx
 * run:   build/gguf_from_mlx MLX_MODEL_DIR OUT.gguf
 */
#include "formats/dtype.h"
#include "formats/mlx_quant.h"
#include "formats/safetensors.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GGUF_U8 = 0, GGUF_I32 = 5, GGUF_U32 = 4, GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8,
       GGUF_ARRAY = 9 };
enum { GGML_F32 = 0, GGML_Q4_1 = 3 };
enum { ALIGN = 32, Q4_1_BLOCK_BYTES = 20, MAX_TENSORS = 4096 };

typedef enum { SRC_Q4 = 0, SRC_DEQUANT_F32, SRC_FLOAT_F32 } src_kind;

typedef struct {
    char name[96];     /* GGUF tensor name */
    char src[128];     /* MLX tensor name prefix (without .weight) or full float name */
    src_kind kind;
    int ndim;
    uint64_t ne[3];    /* innermost first */
    uint32_t type;
    uint64_t nbytes;
    uint64_t offset;
} out_tensor;

static out_tensor g_tensors[MAX_TENSORS];
static int g_ntensors;
static const st_archive *g_st;
static long g_inexact_f16; /* bf16 scales/biases that f16 cannot hold exactly */

static void die(const char *msg, const char *detail) {
    fprintf(stderr, "gguf_from_mlx: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory", NULL);
    return p;
}

static uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* ---- writing primitives ---- */
static FILE *g_out;
static uint64_t g_written;
static void put(const void *p, size_t n) {
    if (n && fwrite(p, 1, n, g_out) != n) die("write failed", NULL);
    g_written += n;
}
static void put_u32(uint32_t v) { put(&v, 4); }
static void put_u64(uint64_t v) { put(&v, 8); }
static void put_str(const char *s) {
    put_u64(strlen(s));
    put(s, strlen(s));
}
static void put_pad(void) {
    static const char zeros[ALIGN];
    put(zeros, align_up(g_written) - g_written);
}
static void kv_u32(const char *k, uint32_t v) { put_str(k); put_u32(GGUF_U32); put_u32(v); }
static void kv_f32(const char *k, float v) { put_str(k); put_u32(GGUF_F32); put(&v, 4); }
static void kv_bool(const char *k, int v) { uint8_t b = (uint8_t)(v != 0); put_str(k); put_u32(GGUF_BOOL); put(&b, 1); }
static void kv_str(const char *k, const char *v) { put_str(k); put_u32(GGUF_STRING); put_str(v); }

/* ---- config ---- */
typedef struct {
    int hidden, heads, kv_heads, head_dim, layers, experts, top_k, moe_inter, inter, vocab;
    int max_pos, group_size, bits;
    double rope_theta, rms_eps;
} config;

static int cfg_int(json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    if (!json_is_integer(v)) die("config.json lacks integer", key);
    return (int)json_integer_value(v);
}
static double cfg_num(json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    if (!json_is_number(v)) die("config.json lacks number", key);
    return json_number_value(v);
}

static config read_config(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) die("cannot read config.json", je.text);
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt) || strcmp(json_string_value(mt), "qwen3_moe") != 0)
        die("only qwen3_moe checkpoints are supported", path);
    config c;
    c.hidden = cfg_int(root, "hidden_size");
    c.heads = cfg_int(root, "num_attention_heads");
    c.kv_heads = cfg_int(root, "num_key_value_heads");
    c.head_dim = cfg_int(root, "head_dim");
    c.layers = cfg_int(root, "num_hidden_layers");
    c.experts = cfg_int(root, "num_experts");
    c.top_k = cfg_int(root, "num_experts_per_tok");
    c.moe_inter = cfg_int(root, "moe_intermediate_size");
    c.inter = cfg_int(root, "intermediate_size");
    c.vocab = cfg_int(root, "vocab_size");
    c.max_pos = cfg_int(root, "max_position_embeddings");
    c.rope_theta = cfg_num(root, "rope_theta");
    c.rms_eps = cfg_num(root, "rms_norm_eps");
    json_t *q = json_object_get(root, "quantization");
    if (!q) die("not an MLX quantized checkpoint (no quantization block)", path);
    c.group_size = cfg_int(q, "group_size");
    c.bits = cfg_int(q, "bits");
    if (c.bits != 4 || c.group_size != 32)
        die("only MLX 4-bit group-32 maps exactly onto Q4_1; synthesize with --bits 4 --group-size 32",
            NULL);
    json_decref(root);
    return c;
}

/* ---- tensor plan ---- */
static const st_tensor *need(const char *name) {
    const st_tensor *t = st_find(g_st, name);
    if (!t) die("checkpoint lacks tensor", name);
    return t;
}

static void add(const char *gguf_name, const char *src, src_kind kind, int ndim, uint64_t ne0,
                uint64_t ne1, uint64_t ne2) {
    if (g_ntensors == MAX_TENSORS) die("too many tensors", NULL);
    out_tensor *t = &g_tensors[g_ntensors++];
    snprintf(t->name, sizeof t->name, "%s", gguf_name);
    snprintf(t->src, sizeof t->src, "%s", src);
    t->kind = kind;
    t->ndim = ndim;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    uint64_t n = ne0 * (ndim > 1 ? ne1 : 1) * (ndim > 2 ? ne2 : 1);
    if (kind == SRC_Q4) {
        t->type = GGML_Q4_1;
        t->nbytes = n / 32 * Q4_1_BLOCK_BYTES;
        char w[160];
        snprintf(w, sizeof w, "%s.weight", src);
        const st_tensor *st = need(w);
        /* the packed source must hold exactly n 4-bit values */
        if (st_numel(st) * 8 != n) die("unexpected packed shape", w);
    } else {
        t->type = GGML_F32;
        t->nbytes = n * 4;
        char w[160];
        snprintf(w, sizeof w, kind == SRC_DEQUANT_F32 ? "%s.weight" : "%s", src);
        const st_tensor *st = need(w);
        if (kind == SRC_FLOAT_F32 && st_numel(st) != n) die("unexpected float shape", w);
    }
}

static void plan(const config *c) {
    const uint64_t H = (uint64_t)c->hidden, E = (uint64_t)c->experts, F = (uint64_t)c->moe_inter;
    const uint64_t Q = (uint64_t)c->heads * (uint64_t)c->head_dim;
    const uint64_t KV = (uint64_t)c->kv_heads * (uint64_t)c->head_dim;
    add("token_embd.weight", "model.embed_tokens", SRC_Q4, 2, H, (uint64_t)c->vocab, 0);
    for (int l = 0; l < c->layers; l++) {
        char g[96], s[128];
#define L(gn, sn, kind, nd, a, b, cc)                                                   \
    do {                                                                              \
        snprintf(g, sizeof g, "blk.%d." gn, l);                                       \
        snprintf(s, sizeof s, "model.layers.%d." sn, l);                              \
        add(g, s, kind, nd, a, b, cc);                                                \
    } while (0)
        L("attn_norm.weight", "input_layernorm.weight", SRC_FLOAT_F32, 1, H, 0, 0);
        L("attn_q.weight", "self_attn.q_proj", SRC_Q4, 2, H, Q, 0);
        L("attn_k.weight", "self_attn.k_proj", SRC_Q4, 2, H, KV, 0);
        L("attn_v.weight", "self_attn.v_proj", SRC_Q4, 2, H, KV, 0);
        L("attn_output.weight", "self_attn.o_proj", SRC_Q4, 2, Q, H, 0);
        L("attn_q_norm.weight", "self_attn.q_norm.weight", SRC_FLOAT_F32, 1,
          (uint64_t)c->head_dim, 0, 0);
        L("attn_k_norm.weight", "self_attn.k_norm.weight", SRC_FLOAT_F32, 1,
          (uint64_t)c->head_dim, 0, 0);
        L("ffn_norm.weight", "post_attention_layernorm.weight", SRC_FLOAT_F32, 1, H, 0, 0);
        L("ffn_gate_inp.weight", "mlp.gate", SRC_DEQUANT_F32, 2, H, E, 0);
        L("ffn_gate_exps.weight", "mlp.switch_mlp.gate_proj", SRC_Q4, 3, H, F, E);
        L("ffn_up_exps.weight", "mlp.switch_mlp.up_proj", SRC_Q4, 3, H, F, E);
        L("ffn_down_exps.weight", "mlp.switch_mlp.down_proj", SRC_Q4, 3, F, H, E);
#undef L
    }
    add("output_norm.weight", "model.norm.weight", SRC_FLOAT_F32, 1, H, 0, 0);
    add("output.weight", "lm_head", SRC_Q4, 2, H, (uint64_t)c->vocab, 0);
    uint64_t off = 0;
    for (int i = 0; i < g_ntensors; i++) {
        g_tensors[i].offset = off;
        off = align_up(off + g_tensors[i].nbytes);
    }
}

/* ---- tokenizer ---- */
/* GPT-2's byte -> printable code point map: printable Latin-1 bytes map to themselves,
 * the rest to 256, 257, ... in byte order. */
static void byte_symbol(int b, char out[4]) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    int cp = b;
    if (!printable) {
        int n = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else { /* all code points here are < 0x800: two UTF-8 bytes */
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static void write_tokenizer(const config *c) {
    char buf[32];
    put_str("tokenizer.ggml.tokens");
    put_u32(GGUF_ARRAY);
    put_u32(GGUF_STRING);
    put_u64((uint64_t)c->vocab);
    for (int i = 0; i < c->vocab; i++) {
        if (i < 256)
            byte_symbol(i, buf);
        else
            snprintf(buf, sizeof buf, "<synth%d>", i);
        put_str(buf);
    }
    put_str("tokenizer.ggml.token_type");
    put_u32(GGUF_ARRAY);
    put_u32(GGUF_I32);
    put_u64((uint64_t)c->vocab);
    for (int i = 0; i < c->vocab; i++) {
        int32_t normal = 1;
        put(&normal, 4);
    }
    put_str("tokenizer.ggml.merges");
    put_u32(GGUF_ARRAY);
    put_u32(GGUF_STRING);
    put_u64(0);
}

/* ---- data conversion ---- */
static uint16_t bf16_to_f16_exact(uint16_t bf) {
    float f = lm_bf16_to_f32(bf);
    uint16_t h = lm_f32_to_f16(f);
    if (lm_f16_to_f32(h) != f) g_inexact_f16++;
    return h;
}

static void *read_all(const char *name, uint64_t *nbytes) {
    const st_tensor *t = need(name);
    void *p = xmalloc(t->nbytes);
    char err[512];
    if (st_read(g_st, t, p, err) != 0) die("read failed", err);
    if (nbytes) *nbytes = t->nbytes;
    return p;
}

static void write_q4(const out_tensor *t) {
    char w[160], s[160], b[160];
    snprintf(w, sizeof w, "%s.weight", t->src);
    snprintf(s, sizeof s, "%s.scales", t->src);
    snprintf(b, sizeof b, "%s.biases", t->src);
    if (need(s)->dtype != LM_DT_BF16 || need(b)->dtype != LM_DT_BF16)
        die("scales/biases are not bf16", t->src);
    const uint32_t *packed = read_all(w, NULL);
    const uint16_t *scales = read_all(s, NULL);
    const uint16_t *biases = read_all(b, NULL);
    uint64_t blocks = t->nbytes / Q4_1_BLOCK_BYTES; /* = groups of 32 in row-major order */
    enum { CHUNK = 4096 };
    uint8_t *out = xmalloc((size_t)CHUNK * Q4_1_BLOCK_BYTES);
    for (uint64_t b0 = 0; b0 < blocks; b0 += CHUNK) {
        uint64_t nb = blocks - b0 < CHUNK ? blocks - b0 : CHUNK;
        for (uint64_t i = 0; i < nb; i++) {
            uint64_t g = b0 + i;
            uint8_t *blk = out + i * Q4_1_BLOCK_BYTES;
            uint16_t d = bf16_to_f16_exact(scales[g]), m = bf16_to_f16_exact(biases[g]);
            memcpy(blk, &d, 2);
            memcpy(blk + 2, &m, 2);
            const uint32_t *words = packed + g * 4; /* 32 values = 4 words */
            for (int j = 0; j < 16; j++) {
                unsigned lo = (words[j / 8] >> (4 * (j % 8))) & 0xF;
                unsigned hi = (words[(j + 16) / 8] >> (4 * ((j + 16) % 8))) & 0xF;
                blk[4 + j] = (uint8_t)(lo | (hi << 4));
            }
        }
        put(out, nb * Q4_1_BLOCK_BYTES);
    }
    free(out);
    free((void *)packed);
    free((void *)scales);
    free((void *)biases);
}

static void write_dequant_f32(const out_tensor *t) {
    char w[160], s[160], b[160], err[512];
    snprintf(w, sizeof w, "%s.weight", t->src);
    snprintf(s, sizeof s, "%s.scales", t->src);
    snprintf(b, sizeof b, "%s.biases", t->src);
    const st_tensor *wt = need(w);
    int64_t rows = wt->shape[0];
    int64_t cols = (int64_t)t->ne[0];
    /* the group size follows from the shapes: cols / groups per row */
    int64_t groups = need(s)->shape[need(s)->ndim - 1];
    int bits = (int)(wt->shape[wt->ndim - 1] * 32 / cols);
    mlxq_params p = {bits, (int)(cols / groups), need(s)->dtype, MLXQ_KERNEL_GPU};
    if (mlxq_check(&p, rows, cols, err) != 0) die("router quantization", err);
    void *packed = read_all(w, NULL), *scales = read_all(s, NULL), *biases = read_all(b, NULL);
    float *out = xmalloc((size_t)rows * (size_t)cols * sizeof(float));
    if (mlxq_dequantize(&p, packed, scales, biases, rows, cols, out, err) != 0)
        die("dequantize", err);
    put(out, t->nbytes);
    free(out);
    free(packed);
    free(scales);
    free(biases);
}

static void write_float_f32(const out_tensor *t) {
    const st_tensor *st = need(t->src);
    void *raw = read_all(t->src, NULL);
    uint64_t n = st_numel(st);
    float *out = xmalloc(n * sizeof(float));
    lm_convert_to_f32(out, raw, st->dtype, n);
    put(out, n * 4);
    free(out);
    free(raw);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MLX_MODEL_DIR OUT.gguf\n", argv[0]);
        return 2;
    }
    config c = read_config(argv[1]);
    st_archive *st;
    char err[512];
    if (st_open(&st, argv[1], err) != 0) die("cannot open safetensors", err);
    g_st = st;
    plan(&c);

    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
    g_out = fopen(tmp, "wb");
    if (!g_out) die("cannot create", tmp);
    put_u32(0x46554747u); /* "GGUF" little-endian */
    put_u32(3);
    put_u64((uint64_t)g_ntensors);
    const uint64_t n_kv = 24;
    put_u64(n_kv);
    kv_str("general.architecture", "qwen3moe");
    kv_str("general.name", "lazymoe synthetic qwen3-30b-a3b");
    kv_u32("general.alignment", ALIGN);
    kv_u32("general.file_type", 3); /* LLAMA_FTYPE_MOSTLY_Q4_1 */
    kv_u32("qwen3moe.block_count", (uint32_t)c.layers);
    kv_u32("qwen3moe.context_length", (uint32_t)c.max_pos);
    kv_u32("qwen3moe.embedding_length", (uint32_t)c.hidden);
    kv_u32("qwen3moe.feed_forward_length", (uint32_t)c.inter);
    kv_u32("qwen3moe.expert_feed_forward_length", (uint32_t)c.moe_inter);
    kv_u32("qwen3moe.attention.head_count", (uint32_t)c.heads);
    kv_u32("qwen3moe.attention.head_count_kv", (uint32_t)c.kv_heads);
    kv_u32("qwen3moe.attention.key_length", (uint32_t)c.head_dim);
    kv_u32("qwen3moe.attention.value_length", (uint32_t)c.head_dim);
    kv_f32("qwen3moe.rope.freq_base", (float)c.rope_theta);
    kv_f32("qwen3moe.attention.layer_norm_rms_epsilon", (float)c.rms_eps);
    kv_u32("qwen3moe.expert_count", (uint32_t)c.experts);
    kv_u32("qwen3moe.expert_used_count", (uint32_t)c.top_k);
    kv_str("tokenizer.ggml.model", "gpt2");
    kv_str("tokenizer.ggml.pre", "qwen2");
    write_tokenizer(&c); /* 3 KVs */
    kv_u32("tokenizer.ggml.eos_token_id", 151645u < (uint32_t)c.vocab ? 151645u : 0u);
    kv_bool("tokenizer.ggml.add_bos_token", 0);
    for (int i = 0; i < g_ntensors; i++) {
        const out_tensor *t = &g_tensors[i];
        put_str(t->name);
        put_u32((uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) put_u64(t->ne[d]);
        put_u32(t->type);
        put_u64(t->offset);
    }
    put_pad();
    uint64_t data_start = g_written;
    for (int i = 0; i < g_ntensors; i++) {
        const out_tensor *t = &g_tensors[i];
        if (g_written - data_start != t->offset) die("internal: offset mismatch", t->name);
        if (t->kind == SRC_Q4)
            write_q4(t);
        else if (t->kind == SRC_DEQUANT_F32)
            write_dequant_f32(t);
        else
            write_float_f32(t);
        put_pad();
    }
    if (fclose(g_out) != 0) die("close failed", tmp);
    st_close(st);
    if (g_inexact_f16) {
        fprintf(stderr, "gguf_from_mlx: %ld bf16 scales/biases are not exact in f16\n",
                g_inexact_f16);
        remove(tmp);
        return 1;
    }
    if (rename(tmp, argv[2]) != 0) die("rename failed", argv[2]);
    fprintf(stderr, "gguf_from_mlx: %d tensors, %.1f MB -> %s (all Q4_1 scales exact in f16)\n",
            g_ntensors, (double)g_written / 1e6, argv[2]);
    return 0;
}

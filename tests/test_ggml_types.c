/* ggml block types (GGUF weights) against libggml itself.
 *
 * libggml-base.so comes from the npm package @node-llama-cpp/linux-x64 (the same
 * llama.cpp build bench/llamacpp_compare.sh times; tests/node/package.json installs
 * it). Its type traits' to_float is ggml's own dequantization; this test loads it
 * with dlopen and checks that lazymoe's reference conversion (formats/ggml_blocks.c)
 * gives the same floats bit for bit on random blocks, on blocks with extreme f16
 * scales (infinities, NaNs, subnormals, the largest finite value, signed zeros)
 * and on blocks whose codes are all at their minimum or maximum. The library
 * missing is a failure: CI installs it.
 *
 * Then the CPU backend on block matrices: matmul (every kernel table, every
 * activation precision) against the dequantize-then-f32 product, embedding rows,
 * bit-identical results across thread counts and batch sizes, and a clear error
 * for a block type that has no kernels.
 */
#include "ggml_ref.h"
#include "harness.h"

#include "formats/ggml_blocks.h"
#include "formats/mxfp4.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/qblock.h"

#include <stdbool.h>
#include <stdint.h>

static const struct {
    lm_dtype t;
    int ggml;
    const char *name;
    int f16_at[2]; /* byte offsets of the block's f16 scale fields (-1: none) */
} types[] = {
    {LM_DT_Q4_0, 2, "q4_0", {0, -1}},    {LM_DT_Q4_1, 3, "q4_1", {0, 2}},     {LM_DT_Q5_0, 6, "q5_0", {0, -1}},
    {LM_DT_Q5_1, 7, "q5_1", {0, 2}},     {LM_DT_Q8_0, 8, "q8_0", {0, -1}},    {LM_DT_Q2_K, 10, "q2_K", {80, 82}},
    {LM_DT_Q3_K, 11, "q3_K", {108, -1}}, {LM_DT_Q4_K, 12, "q4_K", {0, 2}},    {LM_DT_Q5_K, 13, "q5_K", {0, 2}},
    {LM_DT_Q6_K, 14, "q6_K", {208, -1}}, {LM_DT_IQ4_NL, 20, "iq4_nl", {0, -1}}, {LM_DT_IQ4_XS, 23, "iq4_xs", {0, -1}},
};
#define NTYPES (int)(sizeof types / sizeof types[0])

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double urand(void) { return (double)(next() >> 11) / 9007199254740992.0 * 2.0 - 1.0; }

static get_traits_fn traits_of;

static void test_library(void) {
    traits_of = ggml_ref_traits();
    for (int i = 0; traits_of && i < NTYPES; i++) {
        const struct ggml_type_traits *tr = traits_of(types[i].ggml);
        CHECKF(tr && tr->type_name && !strcmp(tr->type_name, types[i].name), "ggml type %d is '%s', expected %s",
               types[i].ggml, tr && tr->type_name ? tr->type_name : "?", types[i].name);
        CHECKF(tr && tr->blck_size == lm_dtype_block_elems(types[i].t) &&
                   tr->type_size == lm_dtype_block_bytes(types[i].t) && tr->to_float,
               "%s: ggml block %lld values / %zu bytes, lazymoe %d / %zu", types[i].name,
               tr ? (long long)tr->blck_size : -1, tr ? tr->type_size : 0, lm_dtype_block_elems(types[i].t),
               lm_dtype_block_bytes(types[i].t));
        CHECKF(lm_dtype_from_ggml((uint32_t)types[i].ggml) == types[i].t, "lm_dtype_from_ggml(%d)", types[i].ggml);
        CHECKF(lm_blocks_supported(types[i].t), "%s not supported", types[i].name);
    }
    if (th_case_failed) traits_of = NULL; /* the comparisons below would not be meaningful */
}

/* f16 values that stress a conversion. */
static const uint16_t extreme_f16[] = {0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0x7d55, 0x0001, 0x8001, 0x03ff,
                                       0x0400, 0x7bff, 0xfbff, 0x0000, 0x8000, 0x3c00, 0xbc00, 0x1234};
#define NEXTREME (int)(sizeof extreme_f16 / sizeof extreme_f16[0])
#define NBLOCKS 400

static void put_f16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void test_bit_exact(void) {
    CHECKF(traits_of != NULL, "libggml-base.so did not load (see ggml_library)");
    if (!traits_of) return;
    for (int ti = 0; ti < NTYPES; ti++) {
        const lm_dtype t = types[ti].t;
        const size_t bb = lm_dtype_block_bytes(t), be = (size_t)lm_dtype_block_elems(t);
        uint8_t *blocks = malloc(NBLOCKS * bb);
        float *mine = malloc(NBLOCKS * be * sizeof(float)), *ref = malloc(NBLOCKS * be * sizeof(float));
        for (int b = 0; b < NBLOCKS; b++) {
            uint8_t *p = blocks + (size_t)b * bb;
            int kind = b % 8;
            for (size_t i = 0; i < bb; i++) /* codes: random, all zero bits or all one bits */
                p[i] = kind == 6 ? 0x00 : kind == 7 ? 0xff : (uint8_t)next();
            for (int f = 0; f < 2; f++) {
                if (types[ti].f16_at[f] < 0) continue;
                uint16_t v;
                if (kind < 3) /* a realistic scale: |x| in [1e-4, 1) */
                    v = lm_f32_to_f16((float)(urand() * pow(10.0, -4.0 * fabs(urand()))));
                else if (kind < 6 || (b / 8) % 2) /* an extreme one */
                    v = extreme_f16[(size_t)(next() % NEXTREME)];
                else
                    v = (uint16_t)next(); /* any bits */
                put_f16(p + types[ti].f16_at[f], v);
            }
        }
        traits_of(types[ti].ggml)->to_float(blocks, ref, (int64_t)(NBLOCKS * be));
        CHECK(lm_blocks_to_f32(t, blocks, mine, NBLOCKS * be) == 0);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < NBLOCKS * be; i++)
            if (memcmp(&mine[i], &ref[i], 4) != 0 && bad++ == 0) first = i;
        uint32_t a = 0, r = 0;
        if (bad) memcpy(&a, &mine[first], 4), memcpy(&r, &ref[first], 4);
        CHECKF(bad == 0, "%s: %zu of %zu values differ from libggml; first at block %zu value %zu: %g (0x%08x) vs %g (0x%08x)",
               types[ti].name, bad, NBLOCKS * be, first / be, first % be, mine[first], a, ref[first], r);
        free(blocks);
        free(mine);
        free(ref);
    }
    /* whole blocks only, block types only */
    float out[64];
    uint8_t z[64] = {0};
    CHECK(lm_blocks_to_f32(LM_DT_Q4_0, z, out, 16) == -1);
    CHECK(lm_blocks_to_f32(LM_DT_F32, z, out, 32) == -1);
    CHECK(!lm_blocks_supported(LM_DT_F16) && !lm_blocks_supported(LM_DT_INVALID));
}

/* ---- the CPU backend on block matrices ------------------------------------------- */

/* A random block matrix with realistic scales (every f16 field small and finite). */
static uint8_t *random_blocks(int ti, int rows, int cols) {
    const lm_dtype t = types[ti].t;
    const size_t bb = lm_dtype_block_bytes(t), nb = (size_t)rows * (size_t)(cols / lm_dtype_block_elems(t));
    uint8_t *p = malloc(nb * bb);
    for (size_t b = 0; b < nb; b++) {
        uint8_t *q = p + b * bb;
        for (size_t i = 0; i < bb; i++) q[i] = (uint8_t)next();
        for (int f = 0; f < 2; f++)
            if (types[ti].f16_at[f] >= 0) put_f16(q + types[ti].f16_at[f], lm_f32_to_f16((float)(urand() * 0.01)));
    }
    return p;
}

/* The int8-activation group form (qblock.h) against the conversion libggml agrees
 * with: a16 * (u - off) + b is each value, to f32 rounding. */
static void test_group_form(void) {
    for (int ti = 0; ti < NTYPES; ti++) {
        const lm_dtype t = types[ti].t;
        if (!lm_qblock_act8(t)) continue;
        const int cols = 512, off = lm_qblock_off_shift(t) >= 0 ? 1 << lm_qblock_off_shift(t) : 0;
        uint8_t *row = random_blocks(ti, 1, cols);
        float w[512];
        CHECK(lm_blocks_to_f32(t, row, w, cols) == 0);
        for (int g = 0; g < cols / 32; g++) {
            lm_qgroup gr;
            lm_qblock_group(t, row, g, &gr);
            for (int i = 0; i < 32; i++) {
                double v = (double)gr.a16[i / 16] * ((int)gr.u[i] - off) + gr.b, e = w[32 * g + i];
                CHECKF(fabs(v - e) <= 2e-7 * (fabs(gr.a16[i / 16]) * 255 + fabs(gr.b)), "%s group %d value %d: %g vs %g",
                       types[ti].name, g, i, v, e);
            }
        }
        free(row);
    }
    CHECK(!lm_qblock_act8(LM_DT_Q2_K) && !lm_qblock_act8(LM_DT_F32));
    /* MXFP4 (both layouts) takes the form exactly: u = twice the e2m1 value + 16,
     * a16 = 2^(E - 128), against formats/mxfp4.c's conversion (itself checked against
     * libggml's to_float in tests/test_mxfp4.c). */
    CHECK(lm_qblock_act8(LM_DT_MXFP4) && lm_qblock_act8(LM_DT_MXFP4_SPLIT) && lm_qblock_off_shift(LM_DT_MXFP4) == 4 &&
          lm_qblock_off_shift(LM_DT_MXFP4_SPLIT) == 4 && !lm_qblock_has_b(LM_DT_MXFP4));
    enum { C = 256 };
    uint8_t blocks[C / 32 * 17], codes[C / 2], scales[C / 32];
    for (int i = 0; i < C / 32 * 17; i++) blocks[i] = (uint8_t)next();
    for (int i = 0; i < C / 2; i++) codes[i] = (uint8_t)next();
    for (int i = 0; i < C / 32; i++) scales[i] = (uint8_t)next(), blocks[17 * i] = scales[i];
    float wb[C], ws[C];
    lm_mxfp4_block_row_f32(blocks, C, 0, wb);
    lm_mxfp4_split_row_f32(codes, scales, C, 0, ws);
    int bad = 0;
    for (int g = 0; g < C / 32; g++) {
        lm_qgroup gb, gs;
        lm_qblock_group(LM_DT_MXFP4, blocks, g, &gb);
        lm_qblock_group_mxfp4_split(codes, scales, g, &gs);
        for (int i = 0; i < 32; i++) {
            bad += gb.a16[i / 16] * (float)((int)gb.u[i] - 16) != wb[32 * g + i] || gb.b != 0;
            bad += gs.a16[i / 16] * (float)((int)gs.u[i] - 16) != ws[32 * g + i] || gs.b != 0;
        }
    }
    CHECKF(bad == 0, "%d MXFP4 values differ from the group form", bad);
}

/* Kernel tables, the AVX2 one also as a CPU without AVX-VNNI runs it. */
static const struct {
    const char *name;
    unsigned hide;
} kernels[] = {{"scalar", 0}, {"avx512", 0}, {"avx2", 0}, {"avx2", LM_CPU_AVXVNNI}, {"neon", 0}};
#define kernel_names(ki) (kernels[ki].hide ? "avx2-without-vnni" : kernels[ki].name)

static void test_matmul(void) {
    char err[LM_ERR_LEN];
    /* Rows: partial 16-row panels (37, 19, 3, 21, 17) and whole ones; columns: one
     * chunk of the AVX-512 kernel (1024 values) and past it (1280: a 256-value tail,
     * 1088: a 64-value one, 32-value blocks only); tokens: every pass width (8, 4,
     * 2, 1) and their mixes. */
    const int shapes[][3] = {{37, 256, 1}, {19, 512, 5}, {64, 768, 70}, {3, 1024, 2}, {21, 1280, 15}, {17, 1088, 3}};
    for (int ti = 0; ti < NTYPES; ti++) {
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int rows = shapes[si][0], cols = shapes[si][1], n = shapes[si][2];
            if (cols % lm_dtype_block_elems(types[ti].t)) continue; /* 1088: not whole super-blocks */
            uint8_t *data = random_blocks(ti, rows, cols);
            lm_mat W = {.dtype = types[ti].t, .rows = rows, .cols = cols, .data = data};
            float *wf = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
            for (int r = 0; r < rows; r++) lm_mat_row_f32(&W, r, wf + (size_t)r * (size_t)cols);
            lm_mat F = {.dtype = LM_DT_F32, .rows = rows, .cols = cols, .data = wf};
            float *x = malloc(sizeof(float) * (size_t)n * (size_t)cols);
            for (size_t i = 0; i < (size_t)n * (size_t)cols; i++) x[i] = (float)urand();
            float *ref = malloc(sizeof(float) * (size_t)n * (size_t)rows), *y = malloc(sizeof(float) * (size_t)n * (size_t)rows),
                  *y1 = malloc(sizeof(float) * (size_t)rows), *yt1 = malloc(sizeof(float) * (size_t)n * (size_t)rows),
                  *y512 = malloc(sizeof(float) * (size_t)n * (size_t)rows);
            int have512 = 0;
            /* the activations as the backend quantizes them for block weights */
            const int ng8 = cols / 32 + LM_ACT8_PAD;
            int8_t *q8 = malloc((size_t)n * (size_t)cols);
            float *dx8 = malloc(sizeof(float) * (size_t)n * (size_t)ng8), *xs8 = malloc(sizeof(float) * (size_t)n * (size_t)ng8);
            lm_act8_quantize(x, n, cols, 32, 0, q8, (size_t)cols, dx8, xs8, ng8);
            lm_backend *sc = NULL;
            CHECKF(lm_backend_cpu_create_with(&sc, 1, "scalar", err) == 0, "%s", err);
            if (!sc) return;
            CHECK(sc->ops->matmul(sc, ref, &F, x, n) == 0);
            /* The scalar path is the f32 product of the converted rows, bit for bit. */
            CHECK(sc->ops->matmul(sc, y, &W, x, n) == 0);
            CHECKF(!memcmp(y, ref, sizeof(float) * (size_t)n * (size_t)rows), "%s %dx%d n=%d: scalar block matmul != f32 of the converted rows",
                   types[ti].name, rows, cols, n);
            lm_backend_free(sc);
            for (size_t ki = 0; ki < sizeof kernels / sizeof kernels[0]; ki++)
                for (int bits = 32; bits >= 8; bits -= 24)
                    for (int threads = 1; threads <= 3; threads += 2) {
                        lm_backend *be = NULL;
                        const unsigned old_hide = lm_cpu_features_hide(kernels[ki].hide);
                        if (lm_backend_cpu_create_with(&be, threads, kernels[ki].name, err) != 0) { /* not this CPU */
                            lm_cpu_features_hide(old_hide);
                            continue;
                        }
                        CHECKF(lm_backend_cpu_set_act_bits(be, bits, cols, err) == 0, "%s", err);
                        CHECK(be->ops->matmul(be, y, &W, x, n) == 0);
                        /* The AVX2 block kernels (either way to the integers) compute what the
                         * AVX-512 ones do, bit for bit: the same f32 steps per row and token. */
                        const int a8blocks = bits == 8 && lm_qblock_act8(types[ti].t);
                        if (a8blocks && !strcmp(kernels[ki].name, "avx512") && threads == 1 && lm_qblock_handles_avx512(&W)) {
                            memcpy(y512, y, sizeof(float) * (size_t)n * (size_t)rows);
                            have512 = 1;
                        }
                        if (a8blocks && !strcmp(kernels[ki].name, "avx2") && have512 && lm_qblock_handles_avx2(&W))
                            CHECKF(!memcmp(y512, y, sizeof(float) * (size_t)n * (size_t)rows),
                                   "%s %s %d threads %dx%d n=%d: differs from avx512", types[ti].name,
                                   kernel_names(ki), threads, rows, cols, n);
                        /* 3 threads split the rows differently from 1: the same bits */
                        if (threads == 1) memcpy(yt1, y, sizeof(float) * (size_t)n * (size_t)rows);
                        else CHECKF(!memcmp(yt1, y, sizeof(float) * (size_t)n * (size_t)rows),
                                    "%s %s act%d %dx%d n=%d: 3 threads differ from 1", types[ti].name,
                                    kernel_names(ki), bits, rows, cols, n);
                        /* f32 activations: the f32 product to rounding. int8 activations
                         * (types with that path): the exact sum over the converted weights
                         * times the quantized activations dx_g * q_i, except that a
                         * group's min or bias b multiplies the unquantized sum of x. */
                        const int a8 = bits == 8 && lm_qblock_act8(types[ti].t);
                        double worst = 0;
                        for (int t = 0; t < n; t++)
                            for (int r = 0; r < rows; r++) {
                                const float *wr = wf + (size_t)r * cols, *xt = x + (size_t)t * cols;
                                double aw = 0, want = ref[(size_t)t * rows + r];
                                if (a8) {
                                    want = 0;
                                    const uint8_t *row = data + (size_t)r * lm_dtype_row_bytes(types[ti].t, (uint64_t)cols);
                                    for (int g = 0; g < cols / 32; g++) {
                                        lm_qgroup gr;
                                        lm_qblock_group(types[ti].t, row, g, &gr);
                                        const int8_t *qg = q8 + (size_t)t * (size_t)cols + (size_t)g * 32;
                                        double xs = 0;
                                        for (int i = 0; i < 32; i++) {
                                            const double wv = (double)wr[32 * g + i] - gr.b, xq = (double)dx8[(size_t)t * ng8 + g] * qg[i];
                                            want += wv * xq;
                                            aw += fabs(wv * xq);
                                            xs += xt[32 * g + i];
                                        }
                                        want += (double)gr.b * xs;
                                        aw += fabs((double)gr.b * xs);
                                    }
                                } else {
                                    for (int c = 0; c < cols; c++) aw += fabs(wr[c] * xt[c]);
                                }
                                double d = fabs((double)y[(size_t)t * rows + r] - want) / (4e-6 * aw + 1e-30);
                                worst = d > worst ? d : worst;
                            }
                        CHECKF(worst <= 1.0, "%s %s act%d %dx%d n=%d: error %.3g of the tolerance", types[ti].name,
                               kernel_names(ki), bits, rows, cols, n, worst);
                        /* each token alone gives its batched result bit for bit */
                        for (int t = 0; t < n; t += n > 4 ? n / 4 : 1) {
                            CHECK(be->ops->matmul(be, y1, &W, x + (size_t)t * (size_t)cols, 1) == 0);
                            CHECKF(!memcmp(y1, y + (size_t)t * rows, sizeof(float) * (size_t)rows),
                                   "%s %s act%d %d threads: token %d alone differs from the batch of %d", types[ti].name,
                                   kernel_names(ki), bits, threads, t, n);
                        }
                        lm_backend_free(be);
                        lm_cpu_features_hide(old_hide);
                    }
            free(data);
            free(wf);
            free(x);
            free(ref);
            free(y);
            free(y1);
            free(yt1);
            free(y512);
            free(q8);
            free(dx8);
            free(xs8);
        }
    }
}

static void test_embed_and_errors(void) {
    char err[LM_ERR_LEN];
    lm_backend *be = NULL;
    CHECKF(lm_backend_cpu_create_with(&be, 2, NULL, err) == 0, "%s", err);
    if (!be) return;
    uint8_t *data = random_blocks(7 /* Q4_K */, 5, 512);
    lm_mat W = {.dtype = LM_DT_Q4_K, .rows = 5, .cols = 512, .data = data};
    CHECK(lm_mat_bytes(&W) == 5 * 2 * 144);
    float x[2 * 512], ref[512];
    int32_t ids[2] = {4, 1};
    CHECK(be->ops->embed(be, x, &W, ids, 2) == 0);
    CHECK(lm_blocks_to_f32(LM_DT_Q4_K, data + 4 * 2 * 144, ref, 512) == 0);
    CHECK(!memcmp(x, ref, sizeof ref));
    CHECK(lm_blocks_to_f32(LM_DT_Q4_K, data + 1 * 2 * 144, ref, 512) == 0);
    CHECK(!memcmp(x + 512, ref, sizeof ref));
    /* a block type without kernels is refused by name */
    lm_mat I = {.dtype = LM_DT_IQ2_XXS, .rows = 2, .cols = 256, .data = data};
    float y[4];
    CHECK(be->ops->matmul(be, y, &I, x, 1) == -1);
    CHECK_STR_CONTAINS(lm_backend_error(be), "IQ2_XXS");
    CHECK(be->ops->embed(be, x, &I, ids + 1, 1) == -1);
    CHECK_STR_CONTAINS(lm_backend_error(be), "IQ2_XXS");
    free(data);
    lm_backend_free(be);
}

int main(void) {
    TEST_CASE("ggml_library", test_library);
    TEST_CASE("ggml_bit_exact", test_bit_exact);
    TEST_CASE("ggml_block_act8_form", test_group_form);
    TEST_CASE("ggml_block_matmul", test_matmul);
    TEST_CASE("ggml_block_embed_errors", test_embed_and_errors);
    TEST_EXIT();
}

/* MXFP4 (formats/mxfp4.h): both layouts against values worked out by hand, against
 * libggml's own MXFP4 to_float (libggml-base.so from npm @node-llama-cpp/linux-x64,
 * loaded with dlopen, as tests/test_ggml_types.c does for the other block types), the
 * two layouts against each other, and the CPU backend's products with MXFP4 weights
 * against the dequantized matrix in double, bit-identical across threads and batches;
 * with int8 activations (scalar reference, AVX2, AVX-512) against the int8 product
 * worked out in double and against f32 activations within the stated bound. */
#include "ggml_ref.h"
#include "harness.h"

#include "formats/mxfp4.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"

#include <stdbool.h>
#include <stdint.h>

#define GGML_TYPE_MXFP4 39

static uint64_t rng = 0x6a09e667f3bcc909ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* e2m1 by hand: sign, then 0, 0.5, 1, 1.5, 2, 3, 4, 6 */
static const float E2M1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

static void by_hand(void) {
    /* one row of 64 values: group 0 scale 2^0 (E = 127) with codes 0..15 twice;
     * group 1 scale 2^3 (E = 130) with codes 15..0 twice */
    uint8_t codes[32], scales[2] = {127, 130}, block[34];
    for (int j = 0; j < 16; j++) {
        int a = (2 * j) % 16, b = (2 * j + 1) % 16; /* split: values 2j, 2j+1 */
        codes[j] = (uint8_t)(a | b << 4);
        codes[16 + j] = (uint8_t)((15 - a) | (15 - b) << 4);
    }
    float out[64];
    lm_mxfp4_split_row_f32(codes, scales, 64, 0, out);
    for (int i = 0; i < 32; i++) CHECKF(out[i] == E2M1[i % 16], "split value %d: %g", i, out[i]); /* -0 == 0 */
    for (int i = 0; i < 32; i++) CHECKF(out[32 + i] == 8 * E2M1[15 - i % 16], "split value %d: %g", 32 + i, out[32 + i]);
    CHECK(out[8] == 0 && !signbit(out[8])); /* code 8, -0, reads as +0 as in ggml (a zero either way) */
    /* ggml block: byte j holds values j (low) and j + 16 (high) */
    block[0] = 127;
    block[17] = 130;
    for (int j = 0; j < 16; j++) block[1 + j] = (uint8_t)(j | j << 4), block[18 + j] = (uint8_t)((15 - j) | (15 - j) << 4);
    lm_mxfp4_block_row_f32(block, 64, 0, out);
    for (int i = 0; i < 32; i++) CHECKF(out[i] == E2M1[i % 16], "block value %d: %g", i, out[i]);
    for (int i = 0; i < 32; i++) CHECKF(out[32 + i] == 8 * E2M1[15 - i % 16], "block value %d: %g", 32 + i, out[32 + i]);
    /* the scale's ends: 2^-127 is a subnormal, 2^127 the largest */
    CHECK(lm_e8m0_to_f32(0) == ldexpf(1, -127) && lm_e8m0_to_f32(1) == ldexpf(1, -126));
    CHECK(lm_e8m0_to_f32(127) == 1 && lm_e8m0_to_f32(254) == ldexpf(1, 127));
    CHECK(lm_e8m0_half_to_f32(0) == ldexpf(1, -128) && lm_e8m0_half_to_f32(1) == ldexpf(1, -127));
    CHECK(lm_e8m0_half_to_f32(128) == 1);
    uint8_t tiny[16] = {0x71}; /* codes 1 (0.5) and 7 (6) at scale 2^-127 */
    uint8_t zero = 0;
    lm_mxfp4_split_row_f32(tiny, &zero, 32, 0, out);
    CHECK(out[0] == ldexpf(1, -128) && out[1] == 6 * ldexpf(1, -127) && out[2] == 0);
}

static uint8_t random_scale(void) {
    static const uint8_t edge[] = {0, 1, 2, 126, 127, 128, 200, 254, 255};
    return next() % 4 == 0 ? edge[next() % sizeof edge] : (uint8_t)(110 + next() % 30);
}

static void against_libggml(void) {
    get_traits_fn traits_of = ggml_ref_traits();
    if (!traits_of) return;
    const struct ggml_type_traits *tr = traits_of(GGML_TYPE_MXFP4);
    CHECKF(tr && tr->type_name && !strcmp(tr->type_name, "mxfp4") && tr->blck_size == 32 && tr->type_size == 17 &&
               tr->to_float,
           "ggml type 39 is not mxfp4 with 32 values in 17 bytes");
    if (!tr || !tr->to_float) return;
    enum { BLOCKS = 4096 };
    uint8_t *b = malloc(17 * BLOCKS);
    float *mine = malloc(sizeof(float) * 32 * BLOCKS), *theirs = malloc(sizeof(float) * 32 * BLOCKS);
    for (int i = 0; i < 17 * BLOCKS; i++) b[i] = (uint8_t)next();
    for (int k = 0; k < BLOCKS; k++) b[17 * k] = random_scale();
    tr->to_float(b, theirs, 32 * BLOCKS);
    lm_mxfp4_block_row_f32(b, 32 * BLOCKS, 0, mine);
    int bad = 0;
    for (int i = 0; i < 32 * BLOCKS; i++)
        if (memcmp(&mine[i], &theirs[i], 4) && !(isnan(mine[i]) && isnan(theirs[i]))) {
            if (!bad) printf("# value %d (scale byte %d): %a vs libggml %a\n", i, b[17 * (i / 32)], mine[i], theirs[i]);
            bad++;
        }
    CHECKF(bad == 0, "%d of %d values differ from libggml's to_float", bad, 32 * BLOCKS);
    free(b), free(mine), free(theirs);
}

/* The same values in both layouts: a split row turned into ggml blocks. */
static void split_to_blocks(const uint8_t *codes, const uint8_t *scales, int rows, int cols, uint8_t *blocks) {
    int ng = cols / 32;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < ng; g++) {
            const uint8_t *c = codes + (size_t)r * (cols / 2) + 16 * g;
            uint8_t *b = blocks + ((size_t)r * ng + g) * 17;
            b[0] = scales[(size_t)r * ng + g];
            uint8_t v[32];
            for (int j = 0; j < 16; j++) v[2 * j] = c[j] & 15, v[2 * j + 1] = c[j] >> 4;
            for (int j = 0; j < 16; j++) b[1 + j] = (uint8_t)(v[j] | v[j + 16] << 4);
        }
}

static void matmul(void) {
    char err[LM_ERR_LEN];
    enum { ROWS = 37, COLS = 320, N = 70 };
    uint8_t *codes = malloc(ROWS * COLS / 2), *scales = malloc(ROWS * COLS / 32), *blocks = malloc(ROWS * COLS / 32 * 17);
    for (int i = 0; i < ROWS * COLS / 2; i++) codes[i] = (uint8_t)next();
    for (int i = 0; i < ROWS * COLS / 32; i++) scales[i] = (uint8_t)(118 + next() % 12);
    split_to_blocks(codes, scales, ROWS, COLS, blocks);
    lm_mat ms = {.dtype = LM_DT_MXFP4_SPLIT, .rows = ROWS, .cols = COLS, .data = codes, .scales = scales};
    lm_mat mb = {.dtype = LM_DT_MXFP4, .rows = ROWS, .cols = COLS, .data = blocks};
    CHECK(lm_mat_bytes(&ms) == ROWS * COLS / 2 + ROWS * COLS / 32 && lm_mat_bytes(&mb) == ROWS * COLS / 32 * 17);
    float *w = malloc(sizeof(float) * ROWS * COLS), *wb = malloc(sizeof(float) * COLS);
    for (int r = 0; r < ROWS; r++) {
        lm_mat_row_f32(&ms, r, w + (size_t)r * COLS);
        lm_mat_row_f32(&mb, r, wb);
        CHECKF(!memcmp(wb, w + (size_t)r * COLS, sizeof(float) * COLS), "row %d: the layouts differ", r);
    }
    float *x = malloc(sizeof(float) * N * COLS), *y = malloc(sizeof(float) * N * ROWS), *y1 = malloc(sizeof(float) * ROWS);
    float *yb = malloc(sizeof(float) * N * ROWS);
    for (int i = 0; i < N * COLS; i++) x[i] = (float)((double)(next() >> 11) / 9007199254740992.0 * 2 - 1);
    /* the scalar reference, AVX2, then the kernels the CPU picks (AVX-512 where it has
     * it), 1 and 3 threads */
    static const char *const tables[3] = {"scalar", "avx2", NULL};
    for (int run = 0; run < 6; run++) {
        int threads = run % 2 ? 3 : 1;
        lm_backend *be = NULL;
        if (lm_backend_cpu_create_with(&be, threads, tables[run / 2], err) != 0) {
            printf("# %s kernels: not on this CPU (%s)\n", tables[run / 2], err);
            continue;
        }
        CHECK(be->ops->matmul(be, y, &ms, x, N) == 0);
        CHECK(be->ops->matmul(be, yb, &mb, x, N) == 0);
        double worst = 0;
        for (int t = 0; t < N; t++)
            for (int r = 0; r < ROWS; r++) {
                double exact = 0, mag = 0;
                for (int c = 0; c < COLS; c++) {
                    double p = (double)w[(size_t)r * COLS + c] * x[(size_t)t * COLS + c];
                    exact += p, mag += fabs(p);
                }
                double d = fabs(y[t * ROWS + r] - exact) / (mag + 1e-30);
                worst = d > worst ? d : worst;
            }
        CHECKF(worst < 2e-6, "%s, %d threads: relative error %.3g against the dequantized product",
               lm_backend_cpu_kernels(be), threads, worst);
        printf("# %s kernels, %d threads: relative error %.3g\n", lm_backend_cpu_kernels(be), threads, worst);
        CHECK(!memcmp(y, yb, sizeof(float) * N * ROWS)); /* both layouts, the same numbers */
        for (int t = 0; t < N; t += 23) { /* one token alone: the same bits as in the batch */
            CHECK(be->ops->matmul(be, y1, &ms, x + (size_t)t * COLS, 1) == 0);
            CHECK(!memcmp(y1, y + (size_t)t * ROWS, sizeof(float) * ROWS));
        }
        lm_backend_free(be);
    }
    free(codes), free(scales), free(blocks), free(w), free(wb), free(x), free(y), free(y1), free(yb);
}

/* Int8 activations (act bits 8), both layouts. The activations are quantized as the
 * backend does (lm_act8_quantize: per 32 values dx = max|x| / 127, q in -127..127);
 * what the int8 path computes is then sum_g 2^(E_g - 128) dx_g sum_i code2_i q_i, with
 * integer inner sums, worked out here in double from the codes. The scalar reference
 * and the AVX-512 (VNNI) table differ from it by f32 rounding only; the AVX2 kernel
 * (used where no table takes MXFP4 with int8) is the scalar reference bit for bit.
 * Every kernel: both layouts the same bits, a token alone the same bits as in a
 * batch, 1 and 3 threads alike. Against f32 activations the error is bounded by
 * sum_i |w_i| dx_g(i) / 2 (each q off by at most half a step), stated per run. */
static void act8(void) {
    char err[LM_ERR_LEN];
    enum { ROWS = 37, N = 19 };
    static const int col_cases[2] = {320, 352}; /* 352: not whole 64-value steps (AVX-512 leaves it to the reference) */
    for (int cc = 0; cc < 2; cc++) {
        const int COLS = col_cases[cc], NG = COLS / 32;
        uint8_t *codes = malloc((size_t)ROWS * COLS / 2), *scales = malloc((size_t)ROWS * NG);
        uint8_t *blocks = malloc((size_t)ROWS * NG * 17);
        for (int i = 0; i < ROWS * COLS / 2; i++) codes[i] = (uint8_t)next();
        for (int i = 0; i < ROWS * NG; i++) scales[i] = (uint8_t)(118 + next() % 12);
        split_to_blocks(codes, scales, ROWS, COLS, blocks);
        lm_mat ms = {.dtype = LM_DT_MXFP4_SPLIT, .rows = ROWS, .cols = COLS, .data = codes, .scales = scales};
        lm_mat mb = {.dtype = LM_DT_MXFP4, .rows = ROWS, .cols = COLS, .data = blocks};
        float *w = malloc(sizeof(float) * ROWS * COLS), *x = malloc(sizeof(float) * N * COLS);
        for (int r = 0; r < ROWS; r++) lm_mat_row_f32(&ms, r, w + (size_t)r * COLS);
        for (int i = 0; i < N * COLS; i++) x[i] = (float)((double)(next() >> 11) / 9007199254740992.0 * 2 - 1);
        for (int i = 0; i < COLS; i += 7) x[3 * COLS + i] *= 40; /* a token with outliers: coarse steps */
        int8_t *q = malloc((size_t)N * COLS);
        float *dx = malloc(sizeof(float) * N * (NG + 16)), *xs = malloc(sizeof(float) * N * (NG + 16));
        lm_act8_quantize(x, N, COLS, 32, 0, q, (size_t)COLS, dx, xs, NG + 16);
        double *ideal = malloc(sizeof(double) * N * ROWS), *bound = malloc(sizeof(double) * N * ROWS);
        double *exact = malloc(sizeof(double) * N * ROWS), *mag = malloc(sizeof(double) * N * ROWS);
        for (int t = 0; t < N; t++)
            for (int r = 0; r < ROWS; r++) {
                double id = 0, bd = 0, ex = 0, mg = 0;
                for (int g = 0; g < NG; g++) {
                    long long dot = 0;
                    for (int i = 0; i < 32; i++) {
                        const int c = 32 * g + i;
                        const uint8_t b = codes[(size_t)r * COLS / 2 + c / 2];
                        dot += (long long)lm_mxfp4_code2[c % 2 ? b >> 4 : b & 15] * q[(size_t)t * COLS + c];
                        const double wv = w[(size_t)r * COLS + c], xv = x[(size_t)t * COLS + c];
                        bd += fabs(wv) * dx[t * (NG + 16) + g] / 2;
                        ex += wv * xv, mg += fabs(wv * xv);
                    }
                    id += (double)dot * (double)lm_e8m0_half_to_f32(scales[r * NG + g]) * dx[t * (NG + 16) + g];
                }
                ideal[t * ROWS + r] = id, bound[t * ROWS + r] = bd, exact[t * ROWS + r] = ex, mag[t * ROWS + r] = mg;
            }
        float *ref = malloc(sizeof(float) * N * ROWS), *y = malloc(sizeof(float) * N * ROWS);
        float *yb = malloc(sizeof(float) * N * ROWS), *y1 = malloc(sizeof(float) * ROWS);
        static const char *tables[3] = {"scalar", "avx2", "avx512"};
        for (int k = 0; k < 3; k++)
            for (int threads = 1; threads <= 3; threads += 2) {
                lm_backend *be = NULL;
                if (lm_backend_cpu_create_with(&be, threads, tables[k], err) != 0) {
                    printf("# %s kernels: not on this CPU (%s)\n", tables[k], err);
                    break;
                }
                CHECKF(lm_backend_cpu_set_act_bits(be, 8, COLS, err) == 0, "%s", err);
                CHECK(be->ops->matmul(be, y, &ms, x, N) == 0);
                CHECK(be->ops->matmul(be, yb, &mb, x, N) == 0);
                CHECKF(!memcmp(y, yb, sizeof(float) * N * ROWS), "%s, %d cols: the layouts differ", tables[k], COLS);
                for (int t = 0; t < N; t += 5) {
                    CHECK(be->ops->matmul(be, y1, &ms, x + (size_t)t * COLS, 1) == 0);
                    CHECKF(!memcmp(y1, y + (size_t)t * ROWS, sizeof(float) * ROWS), "%s: token %d alone differs", tables[k], t);
                }
                double worst_ideal = 0, worst_f32 = 0, over = 0;
                for (int i = 0; i < N * ROWS; i++) {
                    worst_ideal = fmax(worst_ideal, fabs(y[i] - ideal[i]) / (mag[i] + 1e-30));
                    worst_f32 = fmax(worst_f32, fabs(y[i] - exact[i]) / (mag[i] + 1e-30));
                    over = fmax(over, fabs(y[i] - exact[i]) - (bound[i] + 2e-6 * mag[i]));
                }
                CHECKF(worst_ideal < 2e-6, "%s: %.3g from the int8 product", tables[k], worst_ideal);
                CHECKF(over <= 0, "%s: past the int8 error bound by %.3g", tables[k], over);
                if (k == 0 && threads == 1) memcpy(ref, y, sizeof(float) * N * ROWS);
                if (k == 1) CHECKF(!memcmp(ref, y, sizeof(float) * N * ROWS), "avx2, %d threads: not the reference's bits", threads);
                printf("# act8 %s kernels (%s), %d cols, %d threads: %.3g from the int8 product, %.3g of sum|w x| from f32\n",
                       tables[k], lm_backend_cpu_kernels(be), COLS, threads, worst_ideal, worst_f32);
                lm_backend_free(be);
            }
        free(codes), free(scales), free(blocks), free(w), free(x), free(q), free(dx), free(xs);
        free(ideal), free(bound), free(exact), free(mag), free(ref), free(y), free(yb), free(y1);
    }
}

int main(void) {
    TEST_CASE("mxfp4_values_by_hand", by_hand);
    TEST_CASE("mxfp4_blocks_match_libggml", against_libggml);
    TEST_CASE("mxfp4_matmul_matches_dequantized", matmul);
    TEST_CASE("mxfp4_act8_kernels", act8);
    TEST_EXIT();
}

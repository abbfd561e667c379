/* MLX affine quantization: packing, the quantize algorithm, dequantize, edge cases.
 *
 * The reference here is written independently of src/formats/mlx_quant.c: values are
 * unpacked one bit at a time and w = s * q + b is applied directly. Expected packed
 * words in the "known vector" cases were derived by hand (derivations in comments).
 */
#include "harness.h"

#include "common/error.h"
#include "formats/mlx_quant.h"

#include <stdint.h>

/* The harness macro tests its argument for NULL; an array would always pass. */
static const char *msg(const char *s) { return s; }

/* Bit k of a packed row stream is bit (k % 32) of word k / 32. */
static uint32_t ref_unpack(const uint32_t *row, int64_t j, int bits) {
    uint32_t v = 0;
    for (int b = 0; b < bits; b++) {
        int64_t k = j * bits + b;
        v |= ((row[k / 32] >> (k % 32)) & 1u) << b;
    }
    return v;
}

static float ref_load(const void *p, lm_dtype t, int64_t i) {
    if (t == LM_DT_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return t == LM_DT_BF16 ? lm_bf16_to_f32(h) : lm_f16_to_f32(h);
}

/* Small deterministic generator (xorshift) for reproducible "random" weights. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

typedef struct {
    uint32_t *packed;
    uint8_t *scales, *biases; /* raw bytes of scale_dtype */
    float *deq;
} qbuf;

static int quantize_alloc(const mlxq_params *p, const float *w, int64_t rows, int64_t cols,
                          qbuf *q, char *err) {
    int64_t words = mlxq_words_per_row(cols, p->bits) * rows;
    int64_t groups = mlxq_groups_per_row(cols, p->group_size) * rows;
    q->packed = calloc((size_t)words + 1, 4);
    q->scales = calloc((size_t)groups + 1, 4);
    q->biases = calloc((size_t)groups + 1, 4);
    q->deq = calloc((size_t)(rows * cols) + 1, sizeof(float));
    return mlxq_quantize(p, w, rows, cols, q->packed, q->scales, q->biases, err);
}

static void qbuf_free(qbuf *q) {
    free(q->packed);
    free(q->scales);
    free(q->biases);
    free(q->deq);
}

/* ---- known vectors --------------------------------------------------------------- */

static void test_4bit_known(void) {
    /* Row of 32: 0..15 then 15..0. min 0, max 15: |min| > |max| is false, so the edge is
     * max = 15 and the scale is negative: scale = -15/15 = -1, q0 = round(15/-1) = -15,
     * scale = 15/-15 = -1, bias = 15, q = round((w - 15)/-1) = 15 - w.
     * word0: w = 0..7  -> q = 15..8, nibbles lowest first -> 0x89ABCDEF
     * word1: w = 8..15 -> q = 7..0                        -> 0x01234567
     * word2: w = 15..8 -> q = 0..7                        -> 0x76543210
     * word3: w = 7..0  -> q = 8..15                       -> 0xFEDCBA98 */
    float w[32];
    for (int j = 0; j < 16; j++) w[j] = (float)j;
    for (int j = 0; j < 16; j++) w[16 + j] = (float)(15 - j);
    mlxq_params p = {4, 32, LM_DT_F32, MLXQ_KERNEL_GPU};
    char err[LM_ERR_LEN] = "";
    qbuf q;
    CHECKF(quantize_alloc(&p, w, 1, 32, &q, err) == 0, "%s", err);
    CHECK_EQ_INT(q.packed[0], 0x89ABCDEFu);
    CHECK_EQ_INT(q.packed[1], 0x01234567u);
    CHECK_EQ_INT(q.packed[2], 0x76543210u);
    CHECK_EQ_INT(q.packed[3], 0xFEDCBA98u);
    CHECK(((float *)q.scales)[0] == -1.0f);
    CHECK(((float *)q.biases)[0] == 15.0f);
    CHECK(mlxq_dequantize(&p, q.packed, q.scales, q.biases, 1, 32, q.deq, err) == 0);
    for (int j = 0; j < 32; j++) CHECK(q.deq[j] == w[j]);
    qbuf_free(&q);
}

static void test_2bit_known(void) {
    /* w_j = (j % 4) - 3: min -3, max 0; |min| > |max| so edge = min = -3, scale = 3/3 = 1,
     * q0 = -3, scale = -3/-3 = 1, bias = -3, q = w + 3 = j % 4.
     * Each byte holds q = 0,1,2,3 at bits 0,2,4,6: 0 | 1<<2 | 2<<4 | 3<<6 = 0xE4. */
    float w[64];
    for (int j = 0; j < 64; j++) w[j] = (float)(j % 4) - 3.0f;
    mlxq_params p = {2, 64, LM_DT_BF16, MLXQ_KERNEL_GPU};
    char err[LM_ERR_LEN] = "";
    qbuf q;
    CHECKF(quantize_alloc(&p, w, 1, 64, &q, err) == 0, "%s", err);
    for (int k = 0; k < 4; k++) CHECK_EQ_INT(q.packed[k], 0xE4E4E4E4u);
    CHECK(ref_load(q.scales, LM_DT_BF16, 0) == 1.0f);
    CHECK(ref_load(q.biases, LM_DT_BF16, 0) == -3.0f);
    qbuf_free(&q);
}

static void test_3bit_known(void) {
    /* w_j = (j % 8) - 7: scale 1, bias -7, q = j % 8. Eight 3-bit values fill 24 bits:
     * sum q_k << 3k = 0x8 + 0x80 + 0x600 + 0x4000 + 0x28000 + 0x180000 + 0xE00000 = 0xFAC688,
     * i.e. bytes 88 C6 FA repeated. Words (little-endian bytes):
     * 88 C6 FA 88 -> 0x88FAC688, C6 FA 88 C6 -> 0xC688FAC6, FA 88 C6 FA -> 0xFAC688FA. */
    float w[32];
    for (int j = 0; j < 32; j++) w[j] = (float)(j % 8) - 7.0f;
    mlxq_params p = {3, 32, LM_DT_F16, MLXQ_KERNEL_GPU};
    char err[LM_ERR_LEN] = "";
    qbuf q;
    CHECKF(quantize_alloc(&p, w, 1, 32, &q, err) == 0, "%s", err);
    CHECK_EQ_INT(q.packed[0], 0x88FAC688u);
    CHECK_EQ_INT(q.packed[1], 0xC688FAC6u);
    CHECK_EQ_INT(q.packed[2], 0xFAC688FAu);
    CHECK(ref_load(q.scales, LM_DT_F16, 0) == 1.0f);
    CHECK(ref_load(q.biases, LM_DT_F16, 0) == -7.0f);
    qbuf_free(&q);
}

static void test_8bit_known(void) {
    /* w_j = -255 + 8j (j < 31), w_31 = 0: min -255, max 0, scale 1, bias -255, q = w + 255:
     * q_j = 8j, q_31 = 255. word0 = bytes 0, 8, 16, 24 -> 0x18100800;
     * word7 = q 224, 232, 240, 255 -> 0xFFF0E8E0. */
    float w[32];
    for (int j = 0; j < 31; j++) w[j] = -255.0f + 8.0f * (float)j;
    w[31] = 0.0f;
    mlxq_params p = {8, 32, LM_DT_F32, MLXQ_KERNEL_CPU};
    char err[LM_ERR_LEN] = "";
    qbuf q;
    CHECKF(quantize_alloc(&p, w, 1, 32, &q, err) == 0, "%s", err);
    CHECK_EQ_INT(q.packed[0], 0x18100800u);
    CHECK_EQ_INT(q.packed[7], 0xFFF0E8E0u);
    CHECK(((float *)q.scales)[0] == 1.0f);
    CHECK(((float *)q.biases)[0] == -255.0f);
    qbuf_free(&q);
}

static void test_kernel_differences(void) {
    char err[LM_ERR_LEN] = "";
    /* Ties: 2-bit, group {-3, 0, -2.5, -3...}: scale 1, bias -3, value -2.5 gives 0.5:
     * GPU round() -> 1, CPU rint() -> 0 (half to even). */
    float w[32];
    for (int j = 0; j < 32; j++) w[j] = -3.0f;
    w[1] = 0.0f;
    w[2] = -2.5f;
    mlxq_params gpu = {2, 32, LM_DT_F32, MLXQ_KERNEL_GPU};
    mlxq_params cpu = {2, 32, LM_DT_F32, MLXQ_KERNEL_CPU};
    qbuf a, b;
    CHECKF(quantize_alloc(&gpu, w, 1, 32, &a, err) == 0, "%s", err);
    CHECKF(quantize_alloc(&cpu, w, 1, 32, &b, err) == 0, "%s", err);
    CHECK_EQ_INT(ref_unpack(a.packed, 2, 2), 1);
    CHECK_EQ_INT(ref_unpack(b.packed, 2, 2), 0);
    CHECK_EQ_INT(ref_unpack(a.packed, 1, 2), 3);
    qbuf_free(&a);
    qbuf_free(&b);
    /* Negative-only group {-3, -1}: the GPU kernels' max starts at 0, so range = 3,
     * scale 1, bias -3, q(-1) = 2. The CPU backend uses max = -1: scale 2/3,
     * q0 = rint(-4.5) = -4, scale = 0.75, bias -3, q(-1) = round(2 / 0.75) = 3. */
    for (int j = 0; j < 32; j++) w[j] = (j % 2) ? -1.0f : -3.0f;
    CHECKF(quantize_alloc(&gpu, w, 1, 32, &a, err) == 0, "%s", err);
    CHECKF(quantize_alloc(&cpu, w, 1, 32, &b, err) == 0, "%s", err);
    CHECK(((float *)a.scales)[0] == 1.0f);
    CHECK_EQ_INT(ref_unpack(a.packed, 1, 2), 2);
    CHECK(((float *)b.scales)[0] == 0.75f);
    CHECK(((float *)b.biases)[0] == -3.0f);
    CHECK_EQ_INT(ref_unpack(b.packed, 1, 2), 3);
    qbuf_free(&a);
    qbuf_free(&b);
}

/* ---- edge cases ------------------------------------------------------------------ */

static void test_constant_and_zero_rows(void) {
    char err[LM_ERR_LEN] = "";
    float w[64];
    mlxq_params p = {4, 64, LM_DT_F32, MLXQ_KERNEL_GPU};
    qbuf q;
    /* All zeros: scale = max(0, 1e-7) negated (edge is max) = -1e-7, q0 = 0 -> bias 0. */
    for (int j = 0; j < 64; j++) w[j] = 0.0f;
    CHECKF(quantize_alloc(&p, w, 1, 64, &q, err) == 0, "%s", err);
    CHECK(((float *)q.scales)[0] == -1e-7f);
    CHECK(((float *)q.biases)[0] == 0.0f);
    CHECK(q.packed[0] == 0 && q.packed[7] == 0);
    CHECK(mlxq_dequantize(&p, q.packed, q.scales, q.biases, 1, 64, q.deq, err) == 0);
    CHECK(q.deq[0] == 0.0f && q.deq[63] == 0.0f);
    qbuf_free(&q);
    /* Constant 2.5: edge 2.5, q0 = round(2.5 / -1e-7) != 0, bias = 2.5, every q = 0. */
    for (int j = 0; j < 64; j++) w[j] = 2.5f;
    CHECKF(quantize_alloc(&p, w, 1, 64, &q, err) == 0, "%s", err);
    CHECK(((float *)q.biases)[0] == 2.5f);
    CHECK(mlxq_dequantize(&p, q.packed, q.scales, q.biases, 1, 64, q.deq, err) == 0);
    for (int j = 0; j < 64; j++) CHECK(q.deq[j] == 2.5f);
    qbuf_free(&q);
    /* Constant -4 (negative only): bias -4, all q = 0 on both kernels. */
    for (int k = 0; k < 2; k++) {
        p.kernel = k ? MLXQ_KERNEL_CPU : MLXQ_KERNEL_GPU;
        for (int j = 0; j < 64; j++) w[j] = -4.0f;
        CHECKF(quantize_alloc(&p, w, 1, 64, &q, err) == 0, "%s", err);
        CHECK(mlxq_dequantize(&p, q.packed, q.scales, q.biases, 1, 64, q.deq, err) == 0);
        for (int j = 0; j < 64; j++) CHECKF(fabsf(q.deq[j] + 4.0f) < 1e-6f, "%g", q.deq[j]);
        qbuf_free(&q);
    }
}

static void test_bad_input(void) {
    char err[LM_ERR_LEN] = "";
    float w[64];
    uint32_t packed[64];
    float s[4], b[4];
    for (int j = 0; j < 64; j++) w[j] = 0.5f;
    mlxq_params p = {4, 64, LM_DT_F32, MLXQ_KERNEL_GPU};
    w[17] = NAN;
    CHECK(mlxq_quantize(&p, w, 1, 64, packed, s, b, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "non-finite");
    CHECK_STR_CONTAINS(msg(err), "column 17");
    w[17] = INFINITY;
    CHECK(mlxq_quantize(&p, w, 1, 64, packed, s, b, err) == -1);
    w[17] = 3e38f;
    w[18] = -3e38f;
    CHECK(mlxq_quantize(&p, w, 1, 64, packed, s, b, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "overflows float32");
    /* Values beyond F16 range: the bias (an input value) does not fit the scale dtype. */
    for (int j = 0; j < 64; j++) w[j] = 1e6f + (float)j;
    mlxq_params p16 = {4, 64, LM_DT_F16, MLXQ_KERNEL_GPU};
    uint16_t s16[4], b16[4];
    CHECK(mlxq_quantize(&p16, w, 1, 64, packed, s16, b16, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "overflows F16");
    /* Bad parameters. */
    mlxq_params bad = p;
    bad.bits = 7;
    CHECK(mlxq_quantize(&bad, w, 1, 64, packed, s, b, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "bits 7");
    bad = p;
    bad.group_size = 16;
    CHECK(mlxq_quantize(&bad, w, 1, 64, packed, s, b, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "group size 16");
    bad = p;
    bad.scale_dtype = LM_DT_I32;
    CHECK(mlxq_check(&bad, 1, 64, err) == -1);
    CHECK(mlxq_check(&p, 1, 48, err) == -1);
    CHECK_STR_CONTAINS(msg(err), "not divisible by the group size 64");
    CHECK(mlxq_check(&p, 1, 0, err) == -1);
}

/* Huge but finite values quantize with the usual relative error. */
static void test_huge_values(void) {
    char err[LM_ERR_LEN] = "";
    float w[32];
    for (int j = 0; j < 32; j++) w[j] = 1e30f * (1.0f + (float)j / 31.0f);
    mlxq_params p = {8, 32, LM_DT_F32, MLXQ_KERNEL_GPU};
    qbuf q;
    CHECKF(quantize_alloc(&p, w, 1, 32, &q, err) == 0, "%s", err);
    CHECK(mlxq_dequantize(&p, q.packed, q.scales, q.biases, 1, 32, q.deq, err) == 0);
    for (int j = 0; j < 32; j++) CHECKF(fabsf(q.deq[j] - w[j]) <= 1e30f / 255.0f, "j=%d", j);
    qbuf_free(&q);
}

/* ---- every bits x group size x dtype on random data ---------------------------- */

/* For every element: the dequantized value (by the independent reference) equals
 * mlxq_dequantize's bit for bit, and the error against the input is bounded.
 * The bound: |scale|/2 for values inside the grid. MLX re-derives the scale as
 * edge / q0 so the edge is exact, which can shrink the grid so it stops short of the
 * far end of the range; values clamped at q = n_bins may miss by up to
 * range / (n_bins + 1) (found by reading the algorithm; e.g. 2-bit {-1, 0.9}: scale 0.5,
 * 0.9 -> 0.5). Scales and biases rounded to F16/BF16 add |dq * q| + |db|. */
static void check_roundtrip(const mlxq_params *p, int64_t rows, int64_t cols, float spread,
                            float offset) {
    char err[LM_ERR_LEN] = "";
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = mlxq_round_to_dtype(offset + spread * rnd(), p->scale_dtype);
    qbuf q;
    int rc = quantize_alloc(p, w, rows, cols, &q, err);
    CHECKF(rc == 0, "bits %d gs %d: %s", p->bits, p->group_size, err);
    CHECK(mlxq_dequantize(p, q.packed, q.scales, q.biases, rows, cols, q.deq, err) == 0);
    const float n_bins = (float)((1 << p->bits) - 1);
    const float rel = p->scale_dtype == LM_DT_BF16 ? 1.0f / 256 : p->scale_dtype == LM_DT_F16 ? 1.0f / 2048 : 1e-6f;
    int64_t gpr = cols / p->group_size, wpr = mlxq_words_per_row(cols, p->bits);
    for (int64_t r = 0; r < rows && rc == 0; r++) {
        for (int64_t g = 0; g < gpr; g++) {
            float s = ref_load(q.scales, p->scale_dtype, r * gpr + g);
            float b = ref_load(q.biases, p->scale_dtype, r * gpr + g);
            float lo = INFINITY, hi = -INFINITY;
            for (int j = 0; j < p->group_size; j++) {
                float v = w[r * cols + g * p->group_size + j];
                lo = fminf(lo, v);
                hi = fmaxf(hi, v);
            }
            if (p->kernel == MLXQ_KERNEL_GPU) hi = fmaxf(hi, 0.0f);
            for (int j = 0; j < p->group_size; j++) {
                int64_t c = g * p->group_size + j;
                uint32_t qv = ref_unpack(q.packed + r * wpr, c, p->bits);
                float ref = s * (float)qv + b;
                CHECKF(ref == q.deq[r * cols + c], "dequantize differs at %lld,%lld",
                       (long long)r, (long long)c);
                float e = fabsf(ref - w[r * cols + c]);
                float slack = rel * (fabsf(s) * n_bins + fabsf(b)) + 1e-6f * fabsf(w[r * cols + c]);
                float bound = fabsf(s) / 2 * 1.0001f + slack;
                if (qv == (uint32_t)n_bins) bound = fmaxf(bound, (hi - lo) / (n_bins + 1) * 1.0001f + slack);
                CHECKF(e <= bound, "bits %d gs %d %s: error %g > %g at %lld,%lld", p->bits,
                       p->group_size, lm_dtype_name(p->scale_dtype), e, bound, (long long)r,
                       (long long)c);
            }
        }
    }
    qbuf_free(&q);
    free(w);
}

static void test_all_bits_group_sizes(void) {
    const int bits[] = {2, 3, 4, 5, 6, 8};
    const int gss[] = {32, 64, 128};
    const lm_dtype dts[] = {LM_DT_F32, LM_DT_BF16, LM_DT_F16};
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 3; gi++)
            for (int di = 0; di < 3; di++)
                for (int k = 0; k < 2; k++) {
                    mlxq_params p = {bits[bi], gss[gi], dts[di], k ? MLXQ_KERNEL_CPU : MLXQ_KERNEL_GPU};
                    check_roundtrip(&p, 5, 256, 0.05f, 0.0f);
                    check_roundtrip(&p, 3, 384, 0.3f, -0.5f); /* negative-only rows */
                    check_roundtrip(&p, 2, 128, 0.01f, 3.0f); /* positive-only, offset */
                }
}

/* Dequantizing a range of rows equals the same rows of a full dequantize. */
static void test_row_range(void) {
    char err[LM_ERR_LEN] = "";
    enum { R = 6, C = 192 };
    float w[R * C];
    for (int i = 0; i < R * C; i++) w[i] = rnd();
    mlxq_params p = {5, 64, LM_DT_BF16, MLXQ_KERNEL_GPU};
    qbuf q;
    CHECKF(quantize_alloc(&p, w, R, C, &q, err) == 0, "%s", err);
    CHECK(mlxq_dequantize(&p, q.packed, q.scales, q.biases, R, C, q.deq, err) == 0);
    float part[2 * C];
    int64_t wpr = mlxq_words_per_row(C, 5), gpr = C / 64;
    CHECK(mlxq_dequantize(&p, q.packed + 3 * wpr, (uint16_t *)q.scales + 3 * gpr,
                          (uint16_t *)q.biases + 3 * gpr, 2, C, part, err) == 0);
    CHECK(memcmp(part, q.deq + 3 * C, sizeof part) == 0);
    qbuf_free(&q);
}

int main(void) {
    TEST_CASE("quant_4bit_known_words", test_4bit_known);
    TEST_CASE("quant_2bit_known_words", test_2bit_known);
    TEST_CASE("quant_3bit_known_words", test_3bit_known);
    TEST_CASE("quant_8bit_known_words", test_8bit_known);
    TEST_CASE("quant_gpu_vs_cpu_kernel", test_kernel_differences);
    TEST_CASE("quant_constant_and_zero_rows", test_constant_and_zero_rows);
    TEST_CASE("quant_bad_input", test_bad_input);
    TEST_CASE("quant_huge_values", test_huge_values);
    TEST_CASE("quant_all_bits_group_sizes_dtypes", test_all_bits_group_sizes);
    TEST_CASE("quant_dequantize_row_range", test_row_range);
    TEST_EXIT();
}

/* The CUDA backend against the CPU reference (`make test-cuda`, on a machine with a GPU).
 *
 * Part 1, every operation of lm_backend_ops on random inputs: the CPU backend with
 * its scalar kernels (the reference) and the CUDA backend get the same inputs, and
 * the results must agree -- exactly where no float sum is reordered and no libm
 * function is involved (embedding rows, adds, clamps, row copies, gathers and
 * scatters, the MoE combine, KV stores, routing choices), within stated tolerances
 * otherwise (dot products and sums of squares are summed in another order; expf,
 * cosf and sinf are CUDA's, not glibc's, a few ulps apart). Bad input must come
 * back as an error, not a crash.
 *
 * Part 2, the engine on the golden fixtures (transformers 5.17 logits, f32, KV cache
 * in f32): the CUDA backend's logits within 1e-4 of max|logit| of transformers' (the
 * bar the CPU meets), within 1e-3 of the CPU backend's (issue 18), greedy ids
 * identical, and a lazy run (expert cache of top_k slots, every slot reused) bit
 * for bit equal to the resident run on the GPU.
 */
#include "../harness.h"
#include "../nan_model.h"

#include "formats/ggml_blocks.h"
#include "formats/npy.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/qblock.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "lazymoe.h"

#include <stdint.h>

static lm_backend *cpu, *gpu;
static char err[LM_ERR_LEN];

/* Part 3: the expert cache in GPU memory (tests/device_tier.h). */
static const char *tier_backend = "cuda";
#include "../device_tier.h"

/* ---- random inputs ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float frand(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() & 0xffffff) / 16777216.0f; }
static float *rand_floats(size_t n, float lo, float hi) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) p[i] = frand(lo, hi);
    return p;
}
static void *rand_bytes(size_t n) {
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd();
    return p;
}

/* ---- device buffers ---------------------------------------------------------------------- */

/* A device copy of n bytes of host memory (NULL host: uninitialised). */
static void *dev_from(const void *host, size_t n) {
    lm_buf b;
    if (lm_backend_alloc(gpu, &b, n ? n : 4, "test", err) != 0) {
        printf("# alloc: %s\n", err);
        return NULL;
    }
    if (host && gpu->ops->upload(gpu, b.ptr, host, n) != 0) printf("# upload: %s\n", lm_backend_error(gpu));
    return b.ptr;
}
static void dev_free(void *p) {
    lm_buf b = {p, 1};
    if (p) lm_backend_release(gpu, &b);
}
/* Downloads n bytes into a fresh host array. */
static void *host_from(const void *dev, size_t n) {
    void *h = malloc(n ? n : 1);
    if (gpu->ops->download(gpu, h, dev, n) != 0) {
        printf("# download: %s\n", lm_backend_error(gpu));
        memset(h, 0xff, n);
    }
    return h;
}

/* ---- comparisons --------------------------------------------------------------------------- */

/* |got - want| <= tol_abs + tol_rel * |want| everywhere; prints the worst. */
static int close_enough(const char *what, const float *got, const float *want, size_t n, double tol_rel,
                        double tol_abs) {
    double worst = 0;
    size_t at = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]), lim = tol_abs + tol_rel * fabs((double)want[i]);
        if (!(d <= lim)) {
            if (!bad || d > worst) at = i;
            bad = 1;
        }
        if (d > worst) worst = d;
    }
    if (bad)
        printf("# %s: element %zu is %.9g, the CPU's %.9g (worst |diff| %.3g)\n", what, at, got[at], want[at], worst);
    return !bad;
}

static int same_bits(const char *what, const void *got, const void *want, size_t bytes) {
    if (!memcmp(got, want, bytes)) return 1;
    const uint8_t *a = got, *b = want;
    size_t i = 0;
    while (a[i] == b[i]) i++;
    printf("# %s: first differing byte %zu of %zu\n", what, i, bytes);
    return 0;
}

/* ---- matmul ------------------------------------------------------------------------------------ */

/* A random matrix of a type: values in a modest range, block scales set to sane
 * halves (random bytes there could be inf or NaN). The arrays are owned by the caller. */
static lm_mat make_mat(lm_dtype dt, int rows, int cols, int col_major, int bits, int gs, lm_dtype qdt) {
    lm_mat m = {.dtype = dt, .rows = rows, .cols = cols, .col_major = col_major, .bits = bits, .group_size = gs,
                .qdtype = qdt};
    size_t n = (size_t)rows * (size_t)cols;
    if (dt == LM_DT_F32) {
        m.data = rand_floats(n, -1, 1);
    } else if (dt == LM_DT_F16 || dt == LM_DT_BF16) {
        uint16_t *p = malloc(2 * n);
        for (size_t i = 0; i < n; i++) p[i] = dt == LM_DT_F16 ? lm_f32_to_f16(frand(-1, 1)) : lm_f32_to_bf16(frand(-1, 1));
        m.data = p;
    } else if (dt == LM_DT_U32) {
        size_t ng = (size_t)rows * (size_t)(cols / gs), es = lm_dtype_size(qdt);
        m.data = rand_bytes(n * (size_t)bits / 8);
        uint8_t *s = malloc(ng * es), *b = malloc(ng * es);
        for (size_t i = 0; i < ng; i++) {
            float sv = frand(0.001f, 0.05f), bv = frand(-0.2f, 0.2f);
            if (qdt == LM_DT_F32) {
                memcpy(s + 4 * i, &sv, 4);
                memcpy(b + 4 * i, &bv, 4);
            } else {
                uint16_t hs = qdt == LM_DT_F16 ? lm_f32_to_f16(sv) : lm_f32_to_bf16(sv);
                uint16_t hb = qdt == LM_DT_F16 ? lm_f32_to_f16(bv) : lm_f32_to_bf16(bv);
                memcpy(s + 2 * i, &hs, 2);
                memcpy(b + 2 * i, &hb, 2);
            }
        }
        m.scales = s;
        m.biases = b;
    } else if (dt == LM_DT_MXFP4_SPLIT) {
        m.data = rand_bytes(n / 2);
        uint8_t *s = malloc(n / 32);
        for (size_t i = 0; i < n / 32; i++) s[i] = (uint8_t)(120 + rnd() % 10);
        m.scales = s;
    } else { /* a ggml block type */
        size_t rb = (size_t)lm_dtype_row_bytes(dt, (uint64_t)cols), bb = lm_dtype_block_bytes(dt);
        uint8_t *p = rand_bytes(rb * (size_t)rows);
        for (size_t b = 0; b < rb * (size_t)rows / bb; b++) {
            uint8_t *blk = p + b * bb;
            if (dt == LM_DT_MXFP4) {
                blk[0] = (uint8_t)(120 + rnd() % 10);
                continue;
            }
            uint16_t d = lm_f32_to_f16(frand(0.001f, 0.02f)), dm = lm_f32_to_f16(frand(0.001f, 0.02f));
            if (dt == LM_DT_Q6_K) { /* its f16 d closes the block; the 16 int8 scales before it stay random */
                memcpy(blk + bb - 2, &d, 2);
                continue;
            }
            memcpy(blk, &d, 2);
            if (dt == LM_DT_Q4_K || dt == LM_DT_Q5_K) memcpy(blk + 2, &dm, 2);
        }
        m.data = p;
    }
    return m;
}

/* Host weight arrays are freed through these: the backend keys its device copies by
 * host address, and malloc hands the same address to the next array (the case the
 * expert cache reports with lm_backend_weights_changed). */
static void free_weight(void *p) {
    if (p) gpu->ops->weights_changed(gpu, p);
    free(p);
}

static void free_mat(lm_mat *m) {
    lm_backend_weights_changed(gpu, m);
    free((void *)m->data);
    free((void *)m->scales);
    free((void *)m->biases);
}

/* sum_c |W[r][c] x[t][c]| for every (t, r): the scale of each output's rounding error. */
static float *abs_products(const lm_mat *W, const float *x, int n) {
    float *row = malloc(sizeof(float) * (size_t)W->cols), *out = calloc((size_t)n * (size_t)W->rows, sizeof(float));
    for (int r = 0; r < W->rows; r++) {
        lm_mat_row_f32(W, r, row);
        for (int t = 0; t < n; t++) {
            double s = 0;
            for (int c = 0; c < W->cols; c++) s += fabs((double)row[c] * (double)x[(size_t)t * (size_t)W->cols + (size_t)c]);
            out[(size_t)t * (size_t)W->rows + (size_t)r] = (float)s;
        }
    }
    free(row);
    return out;
}

/* Each output within 1e-4 of sum|w x| of the CPU's: f32 sums of a few hundred terms
 * in two orders differ by far less; a wrong index or dequantization by O(1). */
#define MATMUL_TOL 1e-4
static int check_matmul_on(const char *what, const lm_mat *W, int n) {
    float *x = rand_floats((size_t)n * (size_t)W->cols, -1, 1);
    size_t ny = (size_t)n * (size_t)W->rows;
    float *want = malloc(sizeof(float) * ny);
    if (cpu->ops->matmul(cpu, want, W, x, n) != 0) {
        printf("# %s: cpu: %s\n", what, lm_backend_error(cpu));
        free(x);
        free(want);
        return 0;
    }
    float *dx = dev_from(x, sizeof(float) * (size_t)n * (size_t)W->cols), *dy = dev_from(NULL, sizeof(float) * ny);
    int ok = dx && dy && gpu->ops->matmul(gpu, dy, W, dx, n) == 0;
    if (!ok) printf("# %s: cuda: %s\n", what, lm_backend_error(gpu));
    float *got = ok ? host_from(dy, sizeof(float) * ny) : NULL;
    float *scale = abs_products(W, x, n);
    for (size_t i = 0; ok && i < ny; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= MATMUL_TOL * scale[i] + 1e-30)) {
            printf("# %s n=%d: output %zu is %.9g, the CPU's %.9g (sum|wx| %.4g)\n", what, n, i, got[i], want[i],
                   scale[i]);
            ok = 0;
        }
    }
    free(got);
    free(scale);
    free(x);
    free(want);
    dev_free(dx);
    dev_free(dy);
    return ok;
}

static void matmul_type(const char *what, lm_dtype dt, int cols, int col_major, int bits, int gs, lm_dtype qdt) {
    static const int ns[] = {1, 3, 8, 9, 40, 70}; /* the row kernel below 32 tokens, the tiled one above */
    lm_mat W = make_mat(dt, 70, cols, col_major, bits, gs, qdt);
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) CHECKF(check_matmul_on(what, &W, ns[i]), "%s with %d tokens", what, ns[i]);
    free_mat(&W);
}

static void matmul_f32(void) { matmul_type("f32", LM_DT_F32, 200, 0, 0, 0, 0); }
static void matmul_f16(void) { matmul_type("f16", LM_DT_F16, 130, 0, 0, 0, 0); }
static void matmul_bf16(void) { matmul_type("bf16", LM_DT_BF16, 256, 0, 0, 0, 0); }
static void matmul_col_major(void) {
    matmul_type("f32 transposed", LM_DT_F32, 96, 1, 0, 0, 0);
    matmul_type("bf16 transposed", LM_DT_BF16, 96, 1, 0, 0, 0);
}
static void matmul_affine(void) {
    matmul_type("affine 4-bit, bf16 scales", LM_DT_U32, 256, 0, 4, 64, LM_DT_BF16);
    matmul_type("affine 4-bit, group 32, f16 scales", LM_DT_U32, 128, 0, 4, 32, LM_DT_F16);
    matmul_type("affine 8-bit, f32 scales", LM_DT_U32, 256, 0, 8, 128, LM_DT_F32);
    matmul_type("affine 3-bit", LM_DT_U32, 192, 0, 3, 64, LM_DT_BF16);
    matmul_type("affine 6-bit", LM_DT_U32, 192, 0, 6, 64, LM_DT_F16);
    matmul_type("affine 2-bit", LM_DT_U32, 256, 0, 2, 64, LM_DT_BF16);
}
static void matmul_mxfp4(void) {
    matmul_type("mxfp4 split", LM_DT_MXFP4_SPLIT, 256, 0, 0, 0, 0);
    matmul_type("mxfp4 ggml blocks", LM_DT_MXFP4, 256, 0, 0, 0, 0);
}
static void matmul_ggml_blocks(void) {
    matmul_type("q8_0", LM_DT_Q8_0, 256, 0, 0, 0, 0);
    matmul_type("q4_0", LM_DT_Q4_0, 256, 0, 0, 0, 0);
    matmul_type("q4_k", LM_DT_Q4_K, 512, 0, 0, 0, 0);
    matmul_type("q6_k", LM_DT_Q6_K, 512, 0, 0, 0, 0);
    matmul_type("q5_k", LM_DT_Q5_K, 512, 0, 0, 0, 0);
}

/* matmul_batch: each item as matmul alone gives it (on the same backend, bit for bit). */
static void matmul_batch(void) {
    lm_mat A = make_mat(LM_DT_BF16, 50, 64, 0, 0, 0, 0), B = make_mat(LM_DT_U32, 33, 128, 0, 4, 64, LM_DT_BF16);
    float *xa = rand_floats(4 * 64, -1, 1), *xb = rand_floats(2 * 128, -1, 1);
    float *dxa = dev_from(xa, sizeof(float) * 4 * 64), *dxb = dev_from(xb, sizeof(float) * 2 * 128);
    float *y1 = dev_from(NULL, sizeof(float) * 4 * 50), *y2 = dev_from(NULL, sizeof(float) * 2 * 33);
    float *y3 = dev_from(NULL, sizeof(float) * 4 * 50), *y4 = dev_from(NULL, sizeof(float) * 2 * 33);
    lm_matmul_item it[2] = {{y1, &A, dxa, 4}, {y2, &B, dxb, 2}};
    CHECKF(gpu->ops->matmul_batch(gpu, it, 2) == 0, "%s", lm_backend_error(gpu));
    CHECK(gpu->ops->matmul(gpu, y3, &A, dxa, 4) == 0 && gpu->ops->matmul(gpu, y4, &B, dxb, 2) == 0);
    float *h1 = host_from(y1, sizeof(float) * 4 * 50), *h2 = host_from(y2, sizeof(float) * 2 * 33);
    float *h3 = host_from(y3, sizeof(float) * 4 * 50), *h4 = host_from(y4, sizeof(float) * 2 * 33);
    CHECK(same_bits("batch item 0", h1, h3, sizeof(float) * 4 * 50));
    CHECK(same_bits("batch item 1", h2, h4, sizeof(float) * 2 * 33));
    free(h1), free(h2), free(h3), free(h4), free(xa), free(xb);
    dev_free(dxa), dev_free(dxb), dev_free(y1), dev_free(y2), dev_free(y3), dev_free(y4);
    free_mat(&A);
    free_mat(&B);
}

/* ---- the fast matmul kernels against the reference ones ------------------------------------------- */

/* Products of the same weights and inputs by the fast kernels (k_gemv, k_gemm) and by
 * the reference kernels (lm_backend_cuda_set_simple), within MATMUL_TOL of sum|w x|
 * (the fast ones sum s * sum(q x) + b * sum(x) per unit of 8, another order). */
static int fast_vs_reference(const char *what, const lm_mat *W, int n, int expect_fast) {
    float *x = rand_floats((size_t)n * (size_t)W->cols, -1, 1);
    size_t ny = (size_t)n * (size_t)W->rows;
    float *dx = dev_from(x, sizeof(float) * (size_t)n * (size_t)W->cols);
    float *dy = dev_from(NULL, sizeof(float) * ny), *dr = dev_from(NULL, sizeof(float) * ny);
    uint64_t before = lm_backend_cuda_fast_launches(gpu);
    int ok = gpu->ops->matmul(gpu, dy, W, dx, n) == 0;
    uint64_t launches = lm_backend_cuda_fast_launches(gpu) - before;
    lm_backend_cuda_set_simple(gpu, 1);
    ok = ok && gpu->ops->matmul(gpu, dr, W, dx, n) == 0;
    lm_backend_cuda_set_simple(gpu, 0);
    if (!ok) printf("# %s: %s\n", what, lm_backend_error(gpu));
    if (ok && (launches > 0) != expect_fast) {
        printf("# %s n=%d: %s the fast kernels\n", what, n, expect_fast ? "did not use" : "used");
        ok = 0;
    }
    float *got = ok ? host_from(dy, sizeof(float) * ny) : NULL, *want = ok ? host_from(dr, sizeof(float) * ny) : NULL;
    float *scale = abs_products(W, x, n);
    for (size_t i = 0; ok && i < ny; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= MATMUL_TOL * scale[i] + 1e-30)) {
            printf("# %s n=%d: output %zu is %.9g, the reference kernel's %.9g (sum|wx| %.4g)\n", what, n, i, got[i],
                   want[i], scale[i]);
            ok = 0;
        }
    }
    free(got), free(want), free(scale), free(x);
    dev_free(dx), dev_free(dy), dev_free(dr);
    return ok;
}

/* Affine scales and biases set to extreme values in a fraction of the groups: the
 * largest halves, subnormal ones, zero, and (f32) 1e30 / 1e-30. */
static void extreme_affine(lm_mat *W) {
    size_t ng = (size_t)W->rows * (size_t)(W->cols / W->group_size), es = lm_dtype_size(W->qdtype);
    uint8_t *s = (uint8_t *)W->scales, *b = (uint8_t *)W->biases;
    for (size_t g = 0; g < ng; g += 3) {
        float sv, bv;
        switch ((g / 3) % 4) {
        case 0: sv = 6e4f, bv = -6e4f; break;
        case 1: sv = 3e-7f, bv = 1e-7f; break;
        case 2: sv = 0.0f, bv = 1.5f; break;
        default: sv = W->qdtype == LM_DT_F32 ? 1e30f : 2e3f, bv = W->qdtype == LM_DT_F32 ? -1e-30f : -5e3f; break;
        }
        if (W->qdtype == LM_DT_F32) {
            memcpy(s + 4 * g, &sv, 4);
            memcpy(b + 4 * g, &bv, 4);
        } else {
            uint16_t hs = W->qdtype == LM_DT_F16 ? lm_f32_to_f16(sv) : lm_f32_to_bf16(sv);
            uint16_t hb = W->qdtype == LM_DT_F16 ? lm_f32_to_f16(bv) : lm_f32_to_bf16(bv);
            memcpy(s + es * g, &hs, 2);
            memcpy(b + es * g, &hb, 2);
        }
    }
}

static void fast_case(const char *what, lm_dtype dt, int rows, int cols, int bits, int gs, lm_dtype qdt, int extreme,
                      int expect_fast) {
    /* k_gemv below 8 tokens, from 8 k_gemm (tiles of 256 x 16, 128 x 32 or 64 x 64) or, for
     * integer-valued weights, k_gemm_tc (128 rows x 16 tokens a block) */
    static const int ns[] = {1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 32, 33, 64, 70, 100};
    lm_mat W = make_mat(dt, rows, cols, 0, bits, gs, qdt);
    if (extreme) extreme_affine(&W);
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        CHECKF(fast_vs_reference(what, &W, ns[i], expect_fast), "%s (%d x %d) with %d tokens", what, rows, cols, ns[i]);
    free_mat(&W);
}

static void matmul_fast_kernels(void) {
    fast_case("f32", LM_DT_F32, 37, 200, 0, 0, 0, 0, 1);
    fast_case("f16", LM_DT_F16, 65, 136, 0, 0, 0, 0, 1);
    fast_case("bf16", LM_DT_BF16, 3, 256, 0, 0, 0, 0, 1);
    fast_case("affine 4-bit g64 bf16", LM_DT_U32, 131, 512, 4, 64, LM_DT_BF16, 0, 1);
    /* a model's width: 64 of k_gemm_tc's 32-column steps summed */
    fast_case("affine 4-bit g64 bf16 2048 columns", LM_DT_U32, 150, 2048, 4, 64, LM_DT_BF16, 0, 1);
    fast_case("affine 4-bit g32 f16", LM_DT_U32, 70, 96, 4, 32, LM_DT_F16, 0, 1);
    fast_case("affine 4-bit g128 f32", LM_DT_U32, 1, 384, 4, 128, LM_DT_F32, 0, 1);
    fast_case("affine 4-bit extreme f16", LM_DT_U32, 67, 256, 4, 64, LM_DT_F16, 1, 1);
    fast_case("affine 4-bit extreme f32", LM_DT_U32, 67, 256, 4, 64, LM_DT_F32, 1, 1);
    fast_case("affine 8-bit g64 bf16", LM_DT_U32, 99, 320, 8, 64, LM_DT_BF16, 0, 1);
    fast_case("affine 8-bit extreme bf16", LM_DT_U32, 33, 128, 8, 32, LM_DT_BF16, 1, 1);
    fast_case("q4_0", LM_DT_Q4_0, 77, 288, 0, 0, 0, 0, 1);
    fast_case("q8_0", LM_DT_Q8_0, 45, 160, 0, 0, 0, 0, 1);
    fast_case("q4_k", LM_DT_Q4_K, 29, 768, 0, 0, 0, 0, 1);
    /* Q6_K (Q4_K_M files hold it for some of their tensors): every unit position of its
     * 256-value blocks, in a block of one row and of several */
    fast_case("q6_k", LM_DT_Q6_K, 29, 768, 0, 0, 0, 0, 1);
    fast_case("q6_k 2048 columns", LM_DT_Q6_K, 130, 2048, 0, 0, 0, 0, 1);
    fast_case("q5_k", LM_DT_Q5_K, 41, 768, 0, 0, 0, 0, 1);
    /* MLX affine weights through k_gemm_tc's generic loader (LAZYMOE_CUDA_TC_GENERIC=1),
     * the one the GGUF formats take */
    lm_backend_cuda_set_tc_generic(gpu, 1);
    fast_case("generic: affine 4-bit g64 bf16 2048 columns", LM_DT_U32, 150, 2048, 4, 64, LM_DT_BF16, 0, 1);
    fast_case("generic: affine 4-bit g32 f16", LM_DT_U32, 70, 96, 4, 32, LM_DT_F16, 0, 1);
    fast_case("generic: affine 4-bit g128 f32", LM_DT_U32, 20, 384, 4, 128, LM_DT_F32, 0, 1);
    fast_case("generic: affine 8-bit extreme bf16", LM_DT_U32, 33, 128, 8, 32, LM_DT_BF16, 1, 1);
    fast_case("generic: affine 8-bit g64 bf16", LM_DT_U32, 99, 320, 8, 64, LM_DT_BF16, 0, 1);
    lm_backend_cuda_set_tc_generic(gpu, 0);
    /* Q4_0 through the affine path (LAZYMOE_CUDA_TC_Q4_0=1) */
    lm_backend_cuda_set_tc_q4_0(gpu, 1);
    fast_case("affine path: q4_0", LM_DT_Q4_0, 77, 288, 0, 0, 0, 0, 1);
    fast_case("affine path: q4_0 2048 columns", LM_DT_Q4_0, 150, 2048, 0, 0, 0, 0, 1);
    lm_backend_cuda_set_tc_q4_0(gpu, 0);
    /* one 32-column chunk, and an odd number of them */
    fast_case("affine 4-bit g32 one chunk", LM_DT_U32, 40, 32, 4, 32, LM_DT_BF16, 0, 1);
    fast_case("affine 8-bit g32 five chunks", LM_DT_U32, 130, 160, 8, 32, LM_DT_F16, 0, 1);
    /* no fast format: the reference kernels run (columns not a multiple of 8, 3-bit) */
    fast_case("f16 130 columns", LM_DT_F16, 20, 130, 0, 0, 0, 0, 0);
    fast_case("affine 3-bit", LM_DT_U32, 20, 192, 3, 64, LM_DT_BF16, 0, 0);
}

/* One launch for many items of one shape (a layer's experts; rows may differ, as
 * for q, k and v): each item's result bit for bit what the item gives alone,
 * whatever else shares the launch; and in k_gemv (fewer than 8 tokens) each token's
 * result what it gives alone. */
static void matmul_fast_batch_invariant(void) {
    enum { NI = 8 }; /* five k_gemv items: more than the launch for a few takes */
    static const int ns[NI] = {1, 3, 9, 40, 17, 1, 2, 1}, rows_of[NI] = {200, 77, 300, 130, 1, 200, 64, 9};
    int cols = 256;
    lm_mat W[NI];
    float *dx[NI], *dy[NI], *da[NI];
    lm_matmul_item it[NI];
    for (int i = 0; i < NI; i++) {
        int rows = rows_of[i];
        W[i] = make_mat(LM_DT_U32, rows, cols, 0, 4, 64, LM_DT_BF16);
        float *x = rand_floats((size_t)ns[i] * (size_t)cols, -1, 1);
        dx[i] = dev_from(x, sizeof(float) * (size_t)ns[i] * (size_t)cols);
        free(x);
        dy[i] = dev_from(NULL, sizeof(float) * (size_t)ns[i] * (size_t)rows);
        da[i] = dev_from(NULL, sizeof(float) * (size_t)ns[i] * (size_t)rows);
        it[i] = (lm_matmul_item){dy[i], &W[i], dx[i], ns[i]};
    }
    CHECKF(gpu->ops->matmul_batch(gpu, it, NI) == 0, "%s", lm_backend_error(gpu));
    for (int i = 0; i < NI; i++) CHECK(gpu->ops->matmul(gpu, da[i], &W[i], dx[i], ns[i]) == 0);
    /* the items in another order and fewer at a time */
    for (int i = NI - 1; i >= 1; i -= 2) {
        lm_matmul_item two[2] = {{da[i], &W[i], dx[i], ns[i]}, {da[i - 1], &W[i - 1], dx[i - 1], ns[i - 1]}};
        CHECK(gpu->ops->matmul_batch(gpu, two, 2) == 0);
    }
    for (int i = 0; i < NI; i++) {
        int rows = rows_of[i];
        size_t bytes = sizeof(float) * (size_t)ns[i] * (size_t)rows;
        float *a = host_from(dy[i], bytes), *b = host_from(da[i], bytes);
        CHECKF(same_bits("batched item", a, b, bytes), "item %d (%d tokens): batched != alone", i, ns[i]);
        /* k_gemv: token t of the item alone */
        for (int t = 0; ns[i] < 8 && t < ns[i]; t++) {
            float *one = dev_from(NULL, sizeof(float) * (size_t)rows);
            CHECK(gpu->ops->matmul(gpu, one, &W[i], dx[i] + (size_t)t * (size_t)cols, 1) == 0);
            float *h = host_from(one, sizeof(float) * (size_t)rows);
            CHECKF(same_bits("token alone", h, a + (size_t)t * (size_t)rows, sizeof(float) * (size_t)rows),
                   "item %d token %d of %d differs from the token alone", i, t, ns[i]);
            free(h);
            dev_free(one);
        }
        free(a), free(b);
    }
    for (int i = 0; i < NI; i++) {
        free_mat(&W[i]);
        dev_free(dx[i]), dev_free(dy[i]), dev_free(da[i]);
    }
}

/* k_gemm_tc's affine path (tc_block_affine), in blocks of 32, 128 and 256 rows, and its
 * generic loader (tc_block): the same bits (affine 4-bit and 8-bit, scales f32/f16/bf16,
 * groups of 1, 2 and 4 chunks, an odd number of chunks, rows past the last block's and
 * warps with none, a partial token tile; Q4_0 with LAZYMOE_CUDA_TC_Q4_0=1). */
static void matmul_tc_affine_same_bits(void) {
    static const struct {
        int bits, rows, cols, gs, n; /* bits 0: Q4_0 (LAZYMOE_CUDA_TC_Q4_0=1 against its generic loader) */
        lm_dtype qdt;
    } cases[] = {{4, 300, 2048, 64, 70, LM_DT_BF16}, {8, 300, 2048, 64, 70, LM_DT_BF16}, {4, 77, 160, 32, 9, LM_DT_F16},
                 {8, 130, 96, 32, 33, LM_DT_F32},    {4, 200, 768, 128, 16, LM_DT_F32}, {4, 64, 32, 32, 8, LM_DT_BF16},
                 {0, 300, 2048, 0, 70, 0},           {0, 77, 160, 0, 9, 0},             {0, 40, 32, 0, 8, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int rows = cases[k].rows, cols = cases[k].cols, n = cases[k].n, q40 = cases[k].bits == 0;
        lm_mat W = q40 ? make_mat(LM_DT_Q4_0, rows, cols, 0, 0, 0, 0)
                       : make_mat(LM_DT_U32, rows, cols, 0, cases[k].bits, cases[k].gs, cases[k].qdt);
        float *x = rand_floats((size_t)n * (size_t)cols, -1, 1);
        float *dx = dev_from(x, sizeof(float) * (size_t)n * (size_t)cols);
        float *dy[2] = {dev_from(NULL, sizeof(float) * (size_t)n * (size_t)rows),
                        dev_from(NULL, sizeof(float) * (size_t)n * (size_t)rows)};
        size_t bytes = sizeof(float) * (size_t)n * (size_t)rows;
        uint64_t launches = lm_backend_cuda_fast_launches(gpu);
        lm_backend_cuda_set_tc_generic(gpu, 1); /* Q4_0: the generic loader unless set_tc_q4_0 */
        CHECKF(gpu->ops->matmul(gpu, dy[1], &W, dx, n) == 0, "%s", lm_backend_error(gpu));
        lm_backend_cuda_set_tc_generic(gpu, 0);
        lm_backend_cuda_set_tc_q4_0(gpu, 1);
        float *generic = host_from(dy[1], bytes);
        /* the affine path's blocks: 32 rows (narrow), 128, and 256 of 8 warps (wide) */
        static const char *shape[3] = {"narrow", "128-row", "wide"};
        for (int b = 0; b < 3; b++) {
            lm_backend_cuda_set_tc_narrow(gpu, b == 0 ? 1 : 2);
            lm_backend_cuda_set_tc_wide(gpu, b == 2);
            CHECKF(gpu->ops->matmul(gpu, dy[0], &W, dx, n) == 0, "%s", lm_backend_error(gpu));
            float *affine = host_from(dy[0], bytes);
            CHECKF(same_bits("affine vs generic", affine, generic, bytes),
                   "case %zu: %s%d-bit %d x %d g%d, %d tokens, %s blocks", k, q40 ? "Q4_0 " : "affine ", q40 ? 4 : cases[k].bits,
                   rows, cols, cases[k].gs, n, shape[b]);
            free(affine);
        }
        lm_backend_cuda_set_tc_narrow(gpu, 0);
        lm_backend_cuda_set_tc_wide(gpu, 0);
        lm_backend_cuda_set_tc_q4_0(gpu, 0);
        CHECKF(lm_backend_cuda_fast_launches(gpu) == launches + 4, "case %zu: not on the fast kernels", k);
        free(x), free(generic);
        dev_free(dx), dev_free(dy[0]), dev_free(dy[1]);
        free_mat(&W);
    }
}

/* ---- int8 activations (lm_backend_cuda_set_act_bits 8: k_act8_quantize, k_gemm_a8) ---- */

static float qparam(const lm_mat *W, size_t i, const void *arr) {
    if (W->qdtype == LM_DT_F32) return ((const float *)arr)[i];
    uint16_t h = ((const uint16_t *)arr)[i];
    return W->qdtype == LM_DT_BF16 ? lm_bf16_to_f32(h) : lm_f16_to_f32(h);
}

/* What k_gemm_a8 must give for n tokens x of an MLX 4-bit W, from the CPU's int8
 * quantization (lm_act8_quantize): per group the exact integer sum I, then
 * y += (s dx) I + b xsum in f32, groups in order -- the kernel's operations. */
static float *act8_reference(const lm_mat *W, const float *x, int n) {
    int cols = W->cols, gs = W->group_size, ng = cols / gs;
    int8_t *q = malloc((size_t)n * (size_t)cols);
    float *dx = malloc(sizeof(float) * (size_t)n * (size_t)ng), *xs = malloc(sizeof(float) * (size_t)n * (size_t)ng);
    float *y = malloc(sizeof(float) * (size_t)n * (size_t)W->rows);
    lm_act8_quantize(x, n, cols, gs, 0, q, (size_t)cols, dx, xs, ng);
    const uint8_t *wd = W->data;
    for (int t = 0; t < n; t++)
        for (int r = 0; r < W->rows; r++) {
            float tot = 0.0f;
            for (int g = 0; g < ng; g++) {
                int32_t I = 0;
                for (int i = g * gs; i < (g + 1) * gs; i++) {
                    uint8_t byte = wd[(size_t)r * (size_t)(cols / 2) + (size_t)(i / 2)];
                    I += (int32_t)(i & 1 ? byte >> 4 : byte & 15) * (int32_t)q[(size_t)t * (size_t)cols + (size_t)i];
                }
                size_t k = (size_t)r * (size_t)ng + (size_t)g, tk = (size_t)t * (size_t)ng + (size_t)g;
                float sd = qparam(W, k, W->scales) * dx[tk];
                float v = sd * (float)I;
                float o = qparam(W, k, W->biases) * xs[tk];
                float sum = v + o;
                tot = tot + sum;
            }
            y[(size_t)t * (size_t)W->rows + (size_t)r] = tot;
        }
    free(q), free(dx), free(xs);
    return y;
}

/* k_gemm_a8 bit for bit the reference above (so k_act8_quantize gives the CPU's q, dx
 * and xsum exactly, and the MMA's integer sums are exact): scales f32/f16/bf16, groups
 * of 1, 2 and 4 chunks, rows past a block's, partial token tiles, a group of zeros and
 * an outlier; a batch with inputs shared (q, k, v) and with more inputs than the
 * scratch holds at once (several launches). */
static void matmul_act8_exact(void) {
    static const struct {
        int rows, cols, gs, n;
        lm_dtype qdt;
    } cases[] = {{300, 2048, 64, 70, LM_DT_BF16}, {77, 160, 32, 9, LM_DT_F16}, {200, 768, 128, 16, LM_DT_F32},
                 {64, 32, 32, 8, LM_DT_BF16},     {130, 256, 64, 33, LM_DT_BF16}};
    /* a small scratch: the items below do not fit it together */
    CHECKF(lm_backend_cuda_set_act_bits(gpu, 8, 8, 32, err) == 0, "%s", err);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int rows = cases[k].rows, cols = cases[k].cols, n = cases[k].n;
        lm_mat W = make_mat(LM_DT_U32, rows, cols, 0, 4, cases[k].gs, cases[k].qdt);
        float *x = rand_floats((size_t)n * (size_t)cols, -1, 1);
        for (int i = 0; i < cases[k].gs; i++) x[i] = 0.0f;  /* token 0's first group: all zero */
        x[(size_t)cols + 5] = 37.0f;                         /* an outlier in token 1 */
        float *want = act8_reference(&W, x, n);
        float *dx = dev_from(x, sizeof(float) * (size_t)n * (size_t)cols);
        size_t bytes = sizeof(float) * (size_t)n * (size_t)rows;
        float *dy = dev_from(NULL, bytes);
        /* k_gemm_a8's two block shapes (4 and 8 warps), then k_gemm_a8s (shared memory) */
        for (int shape = 0; shape < 3; shape++) {
            lm_backend_cuda_set_a8_warps(gpu, shape == 1 ? 8 : 4);
            lm_backend_cuda_set_a8_smem(gpu, shape == 2);
            uint64_t launches = lm_backend_cuda_fast_launches(gpu);
            CHECKF(gpu->ops->matmul(gpu, dy, &W, dx, n) == 0, "%s", lm_backend_error(gpu));
            CHECKF(lm_backend_cuda_fast_launches(gpu) == launches + 1, "case %zu: not on the fast kernels", k);
            float *got = host_from(dy, bytes);
            CHECKF(same_bits("gemm_a8 vs reference", got, want, bytes), "case %zu: %d x %d g%d, %d tokens, %s", k,
                   rows, cols, cases[k].gs, n, shape == 2 ? "shared memory" : shape ? "8 warps" : "4 warps");
            free(got);
        }
        lm_backend_cuda_set_a8_warps(gpu, 4);
        lm_backend_cuda_set_a8_smem(gpu, 0);
        free(want), free(x);
        dev_free(dx), dev_free(dy);
        free_mat(&W);
    }
    /* a batch: items 0-2 share their inputs (q, k, v), 3 and 4 have their own */
    enum { NB = 5 };
    static const int ns[NB] = {40, 40, 40, 17, 64}, rows_of[NB] = {256, 64, 64, 130, 100};
    int cols = 512;
    lm_mat W[NB];
    float *x[3], *dxs[3], *dy[NB], *want[NB];
    for (int i = 0; i < 3; i++) {
        int n = i == 0 ? ns[0] : ns[i + 2];
        x[i] = rand_floats((size_t)n * (size_t)cols, -2, 2);
        dxs[i] = dev_from(x[i], sizeof(float) * (size_t)n * (size_t)cols);
    }
    lm_matmul_item it[NB];
    for (int i = 0; i < NB; i++) {
        int xi = i < 3 ? 0 : i - 2;
        W[i] = make_mat(LM_DT_U32, rows_of[i], cols, 0, 4, 64, LM_DT_BF16);
        want[i] = act8_reference(&W[i], x[xi], ns[i]);
        dy[i] = dev_from(NULL, sizeof(float) * (size_t)ns[i] * (size_t)rows_of[i]);
        it[i] = (lm_matmul_item){dy[i], &W[i], dxs[xi], ns[i]};
    }
    for (int smem = 0; smem < 2; smem++) { /* k_gemm_a8, then k_gemm_a8s */
        lm_backend_cuda_set_a8_smem(gpu, smem);
        CHECKF(gpu->ops->matmul_batch(gpu, it, NB) == 0, "%s", lm_backend_error(gpu));
        for (int i = 0; i < NB; i++) {
            size_t bytes = sizeof(float) * (size_t)ns[i] * (size_t)rows_of[i];
            float *got = host_from(dy[i], bytes);
            CHECKF(same_bits("batched gemm_a8 vs reference", got, want[i], bytes), "batch item %d%s", i,
                   smem ? " (shared memory)" : "");
            free(got);
        }
    }
    lm_backend_cuda_set_a8_smem(gpu, 0);
    for (int i = 0; i < NB; i++) {
        free(want[i]);
        dev_free(dy[i]);
        free_mat(&W[i]);
    }
    for (int i = 0; i < 3; i++) free(x[i]), dev_free(dxs[i]);
    CHECK(lm_backend_cuda_set_act_bits(gpu, 32, 0, 0, err) == 0);
    /* bad settings are refused */
    CHECK(lm_backend_cuda_set_act_bits(gpu, 16, 0, 0, err) != 0);
    CHECK_STR_CONTAINS(err, "8 or 32");
}

/* k_gemm_g8 (int8 activations with ggml block weights) bit for bit the CPU's scalar
 * reference, lm_qblock_dot_act8, on the CPU's quantized inputs (groups of 32, column
 * order): every type it reads, token tiles whole and partial, rows past a block's, a
 * group of zeros and an outlier; below 8 tokens the f32 GEMVs keep the product. */
static void matmul_g8_exact(void) {
    static const struct {
        lm_dtype dt;
        int rows, cols, n;
    } cases[] = {{LM_DT_Q4_0, 77, 288, 9},  {LM_DT_Q4_0, 300, 2048, 40}, {LM_DT_Q8_0, 45, 160, 17},
                 {LM_DT_Q4_K, 29, 768, 33}, {LM_DT_Q5_K, 130, 512, 8},   {LM_DT_Q6_K, 41, 768, 24},
                 {LM_DT_Q6_K, 200, 2048, 70}};
    CHECKF(lm_backend_cuda_set_act_bits(gpu, 8, 128, 2048, err) == 0, "%s", err);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int rows = cases[k].rows, cols = cases[k].cols, n = cases[k].n, ng = cols / 32;
        lm_mat W = make_mat(cases[k].dt, rows, cols, 0, 0, 0, 0);
        float *x = rand_floats((size_t)n * (size_t)cols, -1, 1);
        for (int i = 0; i < 32; i++) x[i] = 0.0f; /* token 0's first group: all zero */
        x[(size_t)cols + 5] = 37.0f;              /* an outlier in token 1 */
        int8_t *q = malloc((size_t)n * (size_t)cols);
        float *dx = malloc(sizeof(float) * (size_t)n * (size_t)ng), *xs = malloc(sizeof(float) * (size_t)n * (size_t)ng);
        lm_act8_quantize(x, n, cols, 32, 0, q, (size_t)cols, dx, xs, ng);
        size_t bytes = sizeof(float) * (size_t)n * (size_t)rows;
        float *want = malloc(bytes);
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
                want[(size_t)t * (size_t)rows + (size_t)r] = lm_qblock_dot_act8(
                    &W, r, q + (size_t)t * (size_t)cols, dx + (size_t)t * (size_t)ng, xs + (size_t)t * (size_t)ng);
        float *d_x = dev_from(x, sizeof(float) * (size_t)n * (size_t)cols), *dy = dev_from(NULL, bytes);
        uint64_t launches = lm_backend_cuda_fast_launches(gpu);
        CHECKF(gpu->ops->matmul(gpu, dy, &W, d_x, n) == 0, "%s", lm_backend_error(gpu));
        CHECKF(lm_backend_cuda_fast_launches(gpu) == launches + 1, "case %zu: not on the fast kernels", k);
        float *got = host_from(dy, bytes);
        CHECKF(same_bits("gemm_g8 vs lm_qblock_dot_act8", got, want, bytes), "case %zu: %s %d x %d, %d tokens", k,
               lm_dtype_name(cases[k].dt), rows, cols, n);
        free(got), free(want), free(q), free(dx), free(xs), free(x);
        dev_free(d_x), dev_free(dy);
        free_mat(&W);
    }
    CHECK(lm_backend_cuda_set_act_bits(gpu, 32, 0, 0, err) == 0);
}

/* Batch invariance (each item what it gives alone) with int8 activations. */
static void matmul_act8_batch_invariant(void) {
    CHECKF(lm_backend_cuda_set_act_bits(gpu, 8, 0, 0, err) == 0, "%s", err);
    matmul_fast_batch_invariant();
    CHECK(lm_backend_cuda_set_act_bits(gpu, 32, 0, 0, err) == 0);
}

/* The same with MLX affine weights through k_gemm_tc's generic loader, and through its
 * affine path's blocks of 8 warps. */
static void matmul_fast_batch_invariant_generic(void) {
    lm_backend_cuda_set_tc_generic(gpu, 1);
    matmul_fast_batch_invariant();
    lm_backend_cuda_set_tc_generic(gpu, 0);
    lm_backend_cuda_set_tc_wide(gpu, 1);
    matmul_fast_batch_invariant();
    lm_backend_cuda_set_tc_wide(gpu, 0);
}

/* A weight's host memory rewritten and reported (a lazy expert slot reused): the
 * next product uses the new values; without the report the device copy is kept. */
static void weights_changed(void) {
    lm_mat W = make_mat(LM_DT_F32, 40, 64, 0, 0, 0, 0);
    CHECK(check_matmul_on("before", &W, 2));
    float *w = (float *)W.data;
    for (int i = 0; i < 40 * 64; i++) w[i] = frand(-1, 1);
    lm_backend_weights_changed(gpu, &W);
    CHECK(check_matmul_on("after weights_changed", &W, 2));
    free_mat(&W);
}

/* ---- embedding ---------------------------------------------------------------------------------- */

static void embed_types(void) {
    const lm_mat tables[] = {
        make_mat(LM_DT_F32, 50, 64, 0, 0, 0, 0),           make_mat(LM_DT_BF16, 50, 64, 0, 0, 0, 0),
        make_mat(LM_DT_F16, 50, 64, 0, 0, 0, 0),           make_mat(LM_DT_U32, 50, 128, 0, 4, 64, LM_DT_BF16),
        make_mat(LM_DT_U32, 50, 128, 0, 8, 32, LM_DT_F16), make_mat(LM_DT_Q8_0, 50, 64, 0, 0, 0, 0),
        make_mat(LM_DT_Q4_K, 50, 256, 0, 0, 0, 0),         make_mat(LM_DT_MXFP4_SPLIT, 50, 64, 0, 0, 0, 0),
    };
    int32_t ids[5] = {0, 49, 7, 7, 23};
    int32_t *dids = dev_from(ids, sizeof ids);
    for (size_t k = 0; k < sizeof tables / sizeof tables[0]; k++) {
        const lm_mat *W = &tables[k];
        size_t n = 5 * (size_t)W->cols;
        float *want = malloc(sizeof(float) * n), *dx = dev_from(NULL, sizeof(float) * n);
        CHECK(cpu->ops->embed(cpu, want, W, ids, 5) == 0);
        CHECKF(gpu->ops->embed(gpu, dx, W, dids, 5) == 0, "%s: %s", lm_dtype_name(W->dtype), lm_backend_error(gpu));
        float *got = host_from(dx, sizeof(float) * n);
        CHECKF(same_bits(lm_dtype_name(W->dtype), got, want, sizeof(float) * n), "embedding rows of %s",
               lm_dtype_name(W->dtype));
        free(got);
        free(want);
        dev_free(dx);
    }
    /* an id outside the table: an error naming it, and the backend still works */
    int32_t bad[2] = {3, 50};
    int32_t *dbad = dev_from(bad, sizeof bad);
    float *dx = dev_from(NULL, sizeof(float) * 2 * 64);
    CHECK(gpu->ops->embed(gpu, dx, &tables[0], dbad, 2) != 0);
    CHECK_STR_CONTAINS(lm_backend_error(gpu), "embedding row 50 of 50");
    CHECKF(gpu->ops->embed(gpu, dx, &tables[0], dids, 2) == 0, "after a bad id: %s", lm_backend_error(gpu));
    dev_free(dx);
    dev_free(dbad);
    dev_free(dids);
    for (size_t k = 0; k < sizeof tables / sizeof tables[0]; k++) free_mat((lm_mat *)&tables[k]);
}

/* ---- elementwise ------------------------------------------------------------------------------------ */

static void rmsnorm(void) {
    int n = 5, dim = 1000;
    size_t N = (size_t)n * (size_t)dim;
    float *x = rand_floats(N, -3, 3), *w = rand_floats((size_t)dim, 0.5f, 1.5f), *want = malloc(sizeof(float) * N);
    cpu->ops->rmsnorm(cpu, want, x, w, n, dim, 1e-6f);
    float *dx = dev_from(x, sizeof(float) * N), *dy = dev_from(NULL, sizeof(float) * N);
    CHECK(gpu->ops->rmsnorm(gpu, dy, dx, w, n, dim, 1e-6f) == 0);
    CHECK(gpu->ops->rmsnorm(gpu, dx, dx, w, n, dim, 1e-6f) == 0); /* in place */
    float *got = host_from(dy, sizeof(float) * N), *got2 = host_from(dx, sizeof(float) * N);
    /* only the sum of squares is reordered: a few ulps of each output */
    CHECK(close_enough("rmsnorm", got, want, N, 1e-6, 1e-7));
    CHECK(same_bits("rmsnorm in place", got2, got, sizeof(float) * N));
    free(x), free_weight(w), free(want), free(got), free(got2);
    dev_free(dx), dev_free(dy);
}

/* A prefill's rows of up to 256 values (1024 rows or more) take a warp each
 * (k_rmsnorm_warps), the others a block (k_rmsnorm, which the reference mode always
 * takes): the same bits, whole and partial warps, alone (a download flushes the held
 * norm) and as either of a q/k pair. */
static void rmsnorm_warps_same_bits(void) {
    static const int dims[] = {128, 64, 100, 33, 256, 257, 1000};
    static const int rows[] = {1, 37, 1100};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
            int n = rows[r], dim = dims[d];
            size_t N = (size_t)n * (size_t)dim, bytes = sizeof(float) * N;
            float *x = rand_floats(N, -3, 3), *w = rand_floats((size_t)dim, 0.5f, 1.5f);
            float *dx = dev_from(x, bytes), *got[2][3];
            for (int simple = 0; simple < 2; simple++) {
                lm_backend_cuda_set_simple(gpu, simple);
                float *dy = dev_from(NULL, bytes), *dz = dev_from(NULL, bytes);
                CHECK(gpu->ops->rmsnorm(gpu, dy, dx, w, n, dim, 1e-5f) == 0);
                got[simple][0] = host_from(dy, bytes); /* alone */
                CHECK(gpu->ops->rmsnorm(gpu, dz, dx, w, n, dim, 1e-5f) == 0);
                CHECK(gpu->ops->rmsnorm(gpu, dy, dx, w, n, dim, 1e-5f) == 0); /* joins it */
                got[simple][1] = host_from(dz, bytes);
                got[simple][2] = host_from(dy, bytes);
                dev_free(dy), dev_free(dz);
            }
            lm_backend_cuda_set_simple(gpu, 0);
            static const char *what[3] = {"alone", "first of a pair", "second of a pair"};
            for (int k = 0; k < 3; k++)
                CHECKF(same_bits("rmsnorm warps", got[0][k], got[1][0], bytes), "dim %d, %d rows, %s", dim, n, what[k]);
            for (int k = 0; k < 3; k++) free(got[0][k]), free(got[1][k]);
            free(x), free_weight(w);
            dev_free(dx);
        }
}

/* y op= ... on both backends from the same y; the CPU result is `want`. */
typedef struct {
    size_t n;
    float *y, *want, *dy;
} ew_case;
static void ew_begin(ew_case *c, size_t n) {
    c->n = n;
    c->y = rand_floats(n, -4, 4);
    c->want = malloc(sizeof(float) * n);
    memcpy(c->want, c->y, sizeof(float) * n);
    c->dy = dev_from(c->y, sizeof(float) * n);
}
static float *ew_end(ew_case *c) {
    float *got = host_from(c->dy, sizeof(float) * c->n);
    dev_free(c->dy);
    free(c->y);
    return got;
}

static void elementwise_exact(void) {
    ew_case c;
    size_t n = 3 * 257;
    float *x = rand_floats(n, -1, 1), *b = rand_floats(257, -1, 1), *dx = dev_from(x, sizeof(float) * n);
    ew_begin(&c, n);
    cpu->ops->add(cpu, c.want, x, n);
    CHECK(gpu->ops->add(gpu, c.dy, dx, n) == 0);
    float *got = ew_end(&c);
    CHECK(same_bits("add", got, c.want, sizeof(float) * n));
    free(got), free(c.want);
    ew_begin(&c, n);
    cpu->ops->add_rows(cpu, c.want, b, 3, 257);
    CHECK(gpu->ops->add_rows(gpu, c.dy, b, 3, 257) == 0);
    got = ew_end(&c);
    CHECK(same_bits("add_rows", got, c.want, sizeof(float) * n));
    free(got), free(c.want);
    ew_begin(&c, n);
    cpu->ops->clamp(cpu, c.want, n, 2.5f);
    CHECK(gpu->ops->clamp(gpu, c.dy, n, 2.5f) == 0);
    got = ew_end(&c);
    CHECK(same_bits("clamp", got, c.want, sizeof(float) * n));
    free(got), free(c.want);
    /* copy_rows: 4 rows of 100 from a stride of 257 into a stride of 130 */
    ew_begin(&c, 4 * 130);
    float *src = rand_floats(4 * 257, -1, 1), *dsrc = dev_from(src, sizeof(float) * 4 * 257);
    cpu->ops->copy_rows(cpu, c.want, 130, src, 257, 4, 100);
    CHECK(gpu->ops->copy_rows(gpu, c.dy, 130, dsrc, 257, 4, 100) == 0);
    got = ew_end(&c);
    CHECK(same_bits("copy_rows", got, c.want, sizeof(float) * 4 * 130));
    free(got), free(c.want), free(src), free(x), free_weight(b);
    dev_free(dsrc), dev_free(dx);
}

/* expf is CUDA's: a few ulps from glibc's. */
#define EXPF_REL 4e-6
static void elementwise_exp(void) {
    ew_case c;
    size_t rows = 3, width = 100, ys = 120, gs = 110;
    float *g = rand_floats(rows * gs, -6, 6), *dg = dev_from(g, sizeof(float) * rows * gs);
    for (int per_row = 0; per_row < 2; per_row++) {
        ew_begin(&c, rows * ys);
        cpu->ops->sigmoid_mul(cpu, c.want, ys, g, gs, (int)rows, (int)width, per_row);
        CHECK(gpu->ops->sigmoid_mul(gpu, c.dy, ys, dg, gs, (int)rows, (int)width, per_row) == 0);
        float *got = ew_end(&c);
        CHECK(close_enough(per_row ? "sigmoid_mul per row" : "sigmoid_mul", got, c.want, rows * ys, EXPF_REL, 1e-7));
        free(got), free(c.want);
    }
    size_t n = 1000;
    float *u = rand_floats(n, -3, 3), *du = dev_from(u, sizeof(float) * n);
    ew_begin(&c, n);
    cpu->ops->swiglu(cpu, c.want, u, n);
    CHECK(gpu->ops->swiglu(gpu, c.dy, du, n) == 0);
    float *got = ew_end(&c);
    CHECK(close_enough("swiglu", got, c.want, n, EXPF_REL, 1e-7));
    free(got), free(c.want);
    float *gu = rand_floats(2 * n, -9, 9), *dgu = dev_from(gu, sizeof(float) * 2 * n);
    float *want = malloc(sizeof(float) * n), *dout = dev_from(NULL, sizeof(float) * n);
    cpu->ops->swiglu_clamped(cpu, want, gu, n, 1.702f, 7.0f);
    CHECK(gpu->ops->swiglu_clamped(gpu, dout, dgu, n, 1.702f, 7.0f) == 0);
    got = host_from(dout, sizeof(float) * n);
    CHECK(close_enough("swiglu_clamped", got, want, n, EXPF_REL, 1e-7));
    free(got);
    /* gate and up apart (gpt-oss from GGUF), written over up: the same values */
    float *gate = rand_floats(n, -9, 9), *up = rand_floats(n, -9, 9);
    float *dgate = dev_from(gate, sizeof(float) * n), *dup = dev_from(up, sizeof(float) * n);
    cpu->ops->swiglu_clamped_split(cpu, want, gate, up, n, 1.702f, 7.0f);
    CHECK(gpu->ops->swiglu_clamped_split(gpu, dup, dgate, dup, n, 1.702f, 7.0f) == 0);
    got = host_from(dup, sizeof(float) * n);
    CHECK(close_enough("swiglu_clamped_split", got, want, n, EXPF_REL, 1e-7));
    free(gate), free(up);
    dev_free(dgate), dev_free(dup);
    free(got), free(want), free(gu), free(u), free(g);
    dev_free(dgu), dev_free(dout), dev_free(du), dev_free(dg);
}

static void rope(void) {
    int n = 6, heads = 3, hd = 64, half = 24; /* partial rotary: 48 of 64 dims */
    size_t N = (size_t)n * (size_t)heads * (size_t)hd;
    int32_t pos[6] = {0, 1, 17, 300, 4095, 30000};
    float inv[24];
    for (int i = 0; i < half; i++) inv[i] = powf(10000.0f, -(float)i / (float)half);
    for (int s = 0; s < 2; s++) {
        float scale = s ? 1.2f : 1.0f;
        float *x = rand_floats(N, -1, 1), *want = malloc(sizeof(float) * N);
        memcpy(want, x, sizeof(float) * N);
        cpu->ops->rope(cpu, want, n, heads, hd, pos, inv, half, scale);
        float *dx = dev_from(x, sizeof(float) * N);
        int32_t *dpos = dev_from(pos, sizeof pos);
        CHECK(gpu->ops->rope(gpu, dx, n, heads, hd, dpos, inv, half, scale) == 0);
        float *got = host_from(dx, sizeof(float) * N);
        /* cosf/sinf of angles up to 3e4 rad: each a couple of ulps of 1 */
        CHECK(close_enough("rope", got, want, N, 1e-6, 2e-6));
        free(x), free(want), free(got);
        dev_free(dx), dev_free(dpos);
    }
    gpu->ops->weights_changed(gpu, inv); /* a stack array: the address will hold other things */
}

/* ---- ops held back and launched together ------------------------------------------------------------------- */

/* The backend holds back an add, an rmsnorm, a rope or a KV store and launches it
 * together with the next op where they pair (a decode step's add + norm, q and k
 * norms, q and k RoPEs, K and V stores, the MoE combine with the residual add and the
 * next norm). The same sequence of ops with the reference
 * mode (nothing held back, one launch each) must give the same bits, and an op that
 * does not pair (a download, a matmul) must see the held-back op done. */
static void run_pair_sequence(float *x, float *a, float *h, float *q, float *k, float *kc, float *vc, const float *w,
                              const float *wq, const float *wk, const int32_t *pos, const float *inv, int T, int H,
                              int nh, int nkv, int hd, const float *eout, const float *selw) {
    lm_kv kcache = {.dtype = LM_DT_F16, .data = kc}, vcache = {.dtype = LM_DT_F16, .data = vc};
    CHECK(gpu->ops->add(gpu, x, a, (size_t)T * (size_t)H) == 0);
    CHECK(gpu->ops->rmsnorm(gpu, h, x, w, T, H, 1e-6f) == 0);                 /* joins the add */
    CHECK(gpu->ops->rmsnorm(gpu, q, q, wq, T * nh, hd, 1e-6f) == 0);          /* held */
    CHECK(gpu->ops->rmsnorm(gpu, k, k, wk, T * nkv, hd, 1e-6f) == 0);         /* joins it */
    CHECK(gpu->ops->rope(gpu, q, T, nh, hd, pos, inv, hd / 2, 1.0f) == 0);    /* held */
    CHECK(gpu->ops->rope(gpu, k, T, nkv, hd, pos, inv, hd / 2, 1.0f) == 0);   /* joins it */
    CHECK(gpu->ops->kv_store(gpu, &kcache, 3, k, T, nkv, hd) == 0);           /* held */
    CHECK(gpu->ops->kv_store(gpu, &vcache, 3, q, T, nkv, hd) == 0);           /* joins it */
    CHECK(gpu->ops->moe_combine(gpu, a, eout, selw, NULL, T, 2, H) == 0);      /* held */
    CHECK(gpu->ops->add(gpu, x, a, (size_t)T * (size_t)H) == 0);              /* joins it */
    CHECK(gpu->ops->rmsnorm(gpu, h, x, w, T, H, 1e-6f) == 0);                 /* joins them */
    CHECK(gpu->ops->moe_combine(gpu, a, eout, selw, q, T, 2, H) == 0);         /* held, with a shared expert's rows */
    CHECK(gpu->ops->add(gpu, x, a, (size_t)T * (size_t)H) == 0);              /* joins it; the download below does both */
}

static void pending_pairs(void) {
    int T = 3, H = 256, nh = 4, nkv = 2, hd = 64;
    size_t nx = (size_t)T * (size_t)H, nq = (size_t)T * (size_t)nh * (size_t)hd, nk = (size_t)T * (size_t)nkv * (size_t)hd;
    size_t cache = (size_t)(3 + T) * (size_t)nkv * (size_t)hd * 2;
    float *x = rand_floats(nx, -2, 2), *a = rand_floats(nx, -1, 1), *q = rand_floats(nq, -1, 1), *k = rand_floats(nk, -1, 1);
    float *w = rand_floats((size_t)H, 0.5f, 1.5f), *wq = rand_floats((size_t)hd, 0.5f, 1.5f), *wk = rand_floats((size_t)hd, 0.5f, 1.5f);
    float inv[32];
    for (int i = 0; i < 32; i++) inv[i] = powf(10000.0f, -(float)i / 32.0f);
    int32_t pos[3] = {3, 4, 5};
    int32_t *dpos = dev_from(pos, sizeof pos);
    float *out[2][7];
    float *eo = rand_floats((size_t)T * 2 * (size_t)H, -1, 1), *sw = rand_floats((size_t)T * 2, 0, 1);
    for (int mode = 0; mode < 2; mode++) { /* 0: fast (held back), 1: reference (one launch each) */
        lm_backend_cuda_set_simple(gpu, mode);
        float *dx = dev_from(x, sizeof(float) * nx), *da = dev_from(a, sizeof(float) * nx), *dh = dev_from(NULL, sizeof(float) * nx);
        float *dq = dev_from(q, sizeof(float) * nq), *dk = dev_from(k, sizeof(float) * nk);
        uint16_t *zero = calloc(cache, 1);
        float *kc = dev_from(zero, cache), *vc = dev_from(zero, cache);
        free(zero);
        float *deo = dev_from(eo, sizeof(float) * (size_t)T * 2 * (size_t)H), *dsw = dev_from(sw, sizeof(float) * (size_t)T * 2);
        run_pair_sequence(dx, da, dh, dq, dk, kc, vc, w, wq, wk, dpos, inv, T, H, nh, nkv, hd, deo, dsw);
        out[mode][0] = host_from(dx, sizeof(float) * nx);
        out[mode][1] = host_from(dh, sizeof(float) * nx);
        out[mode][2] = host_from(dq, sizeof(float) * nq);
        out[mode][3] = host_from(dk, sizeof(float) * nk);
        out[mode][4] = host_from(kc, cache);
        out[mode][5] = host_from(vc, cache);
        out[mode][6] = host_from(da, sizeof(float) * nx);
        dev_free(dx), dev_free(da), dev_free(dh), dev_free(dq), dev_free(dk), dev_free(kc), dev_free(vc);
        dev_free(deo), dev_free(dsw);
    }
    lm_backend_cuda_set_simple(gpu, 0);
    static const char *names[7] = {"residual", "norm", "q", "k", "k cache", "v cache", "combined"};
    size_t sizes[7] = {sizeof(float) * nx, sizeof(float) * nx, sizeof(float) * nq, sizeof(float) * nk, cache, cache,
                       sizeof(float) * nx};
    for (int i = 0; i < 7; i++) {
        CHECKF(same_bits(names[i], out[0][i], out[1][i], sizes[i]), "%s: held-back launches differ from single ones", names[i]);
        free(out[0][i]), free(out[1][i]);
    }
    free(x), free(a), free(q), free(k), free_weight(w), free_weight(wq), free_weight(wk), free(eo), free(sw);
    gpu->ops->weights_changed(gpu, inv);
    dev_free(dpos);
}

/* ---- KV cache and attention --------------------------------------------------------------------------- */

/* K and V caches of `cap` positions filled with random rows by kv_store on both
 * backends (compared bit for bit), for attention to read. */
typedef struct {
    lm_kv hk, hv, dk, dv;
    size_t bytes, sbytes;
} kv_pair;

static int kv_fill(kv_pair *p, lm_dtype dt, int cap, int n_kv, int hd) {
    size_t row = (size_t)n_kv * (size_t)hd;
    p->bytes = (size_t)cap * row * lm_dtype_size(dt);
    p->sbytes = dt == LM_DT_I8 ? (size_t)cap * (size_t)n_kv * sizeof(float) : 0;
    lm_kv *kv[4] = {&p->hk, &p->hv, &p->dk, &p->dv};
    for (int i = 0; i < 4; i++) {
        kv[i]->dtype = dt;
        kv[i]->positions = 0;
        kv[i]->data = i < 2 ? calloc(1, p->bytes) : dev_from(NULL, p->bytes);
        kv[i]->scales = !p->sbytes ? NULL : i < 2 ? calloc(1, p->sbytes) : dev_from(NULL, p->sbytes);
    }
    int ok = 1;
    /* stored in three calls, as prefill chunks and decode steps do */
    int cuts[4] = {0, cap / 2, cap - 1, cap};
    for (int c = 0; c < 3; c++) {
        int pos0 = cuts[c], m = cuts[c + 1] - cuts[c];
        for (int which = 0; which < 2; which++) {
            float *src = rand_floats((size_t)m * row, -2, 2), *dsrc = dev_from(src, sizeof(float) * (size_t)m * row);
            cpu->ops->kv_store(cpu, which ? &p->hv : &p->hk, pos0, src, m, n_kv, hd);
            ok &= gpu->ops->kv_store(gpu, which ? &p->dv : &p->dk, pos0, dsrc, m, n_kv, hd) == 0;
            free(src);
            dev_free(dsrc);
        }
    }
    for (int which = 0; which < 2; which++) {
        const lm_kv *h = which ? &p->hv : &p->hk, *d = which ? &p->dv : &p->dk;
        void *got = host_from(d->data, p->bytes);
        ok &= same_bits("kv_store values", got, h->data, p->bytes);
        free(got);
        if (p->sbytes) {
            got = host_from(d->scales, p->sbytes);
            ok &= same_bits("kv_store scales", got, h->scales, p->sbytes);
            free(got);
        }
    }
    return ok;
}

static void kv_free(kv_pair *p) {
    free(p->hk.data), free(p->hv.data), free(p->hk.scales), free(p->hv.scales);
    dev_free(p->dk.data), dev_free(p->dv.data), dev_free(p->dk.scales), dev_free(p->dv.scales);
}

static void kv_store_types(void) {
    const lm_dtype types[3] = {LM_DT_F32, LM_DT_F16, LM_DT_I8};
    for (int i = 0; i < 3; i++) {
        kv_pair p;
        CHECKF(kv_fill(&p, types[i], 37, 3, 80), "kv cache %s", lm_dtype_name(types[i]));
        kv_free(&p);
    }
}

/* Attention of n queries at pos0.. over a cache of pos0 + n positions. Only the dot
 * products are summed in another order (lanes of a warp); the online softmax, its
 * tiles and the value sums follow the CPU's operations. */
#define ATTN_TOL 2e-5
static void attention_case(lm_dtype dt, int n, int pos0, int n_heads, int n_kv, int hd, int window, int with_sinks) {
    kv_pair p;
    int cap = pos0 + n;
    CHECKF(kv_fill(&p, dt, cap, n_kv, hd), "kv cache %s", lm_dtype_name(dt));
    size_t nq = (size_t)n * (size_t)n_heads * (size_t)hd;
    float *q = rand_floats(nq, -1, 1), *want = malloc(sizeof(float) * nq);
    float *sinks = with_sinks ? rand_floats((size_t)n_heads, -1, 3) : NULL;
    float scale = 1.0f / sqrtf((float)hd);
    cpu->ops->attention(cpu, want, q, &p.hk, &p.hv, n, pos0, n_heads, n_kv, hd, scale, window, sinks);
    float *dq = dev_from(q, sizeof(float) * nq), *dout = dev_from(NULL, sizeof(float) * nq);
    CHECKF(gpu->ops->attention(gpu, dout, dq, &p.dk, &p.dv, n, pos0, n_heads, n_kv, hd, scale, window, sinks) == 0,
           "%s", lm_backend_error(gpu));
    float *got = host_from(dout, sizeof(float) * nq);
    char what[160];
    snprintf(what, sizeof what, "attention %s n=%d pos0=%d heads %d/%d hd %d window %d sinks %d", lm_dtype_name(dt), n,
             pos0, n_heads, n_kv, hd, window, with_sinks);
    CHECKF(close_enough(what, got, want, nq, ATTN_TOL, ATTN_TOL), "%s", what);
    free(q), free(want), free_weight(sinks), free(got);
    dev_free(dq), dev_free(dout);
    kv_free(&p);
}

static void attention(void) {
    const lm_dtype types[3] = {LM_DT_F32, LM_DT_F16, LM_DT_I8};
    for (int i = 0; i < 3; i++) {
        attention_case(types[i], 1, 150, 8, 2, 64, 0, 0);   /* decode over 3 tiles of 64 keys */
        attention_case(types[i], 96, 300, 32, 4, 128, 0, 1); /* prefill, 8 heads a block */
        attention_case(types[i], 37, 100, 8, 2, 64, 0, 1);  /* prefill with sinks */
        attention_case(types[i], 20, 90, 4, 4, 80, 33, 0);  /* sliding window, hd not a multiple of 32 */
        attention_case(types[i], 5, 0, 6, 1, 128, 3, 1);    /* MQA, window shorter than the prompt */
    }
    attention_case(LM_DT_F32, 3, 40, 2, 1, 256, 0, 0); /* the widest head the kernel takes */
    /* more keys than one tile of the fast kernel (512), f16 rows read 8 values at a time */
    attention_case(LM_DT_F16, 2, 1100, 8, 2, 128, 0, 1);
    attention_case(LM_DT_F16, 1, 1300, 4, 4, 64, 700, 0);
    attention_case(LM_DT_F16, 1, 5000, 8, 2, 128, 0, 1); /* decode: 20 tiles over blocks, merged */
    attention_case(LM_DT_F32, 3, 2000, 4, 2, 96, 0, 0);
    attention_case(LM_DT_I8, 1, 600, 4, 1, 96, 0, 0);
    /* the reference kernel (phase 1's) on the same cases */
    lm_backend_cuda_set_simple(gpu, 1);
    attention_case(LM_DT_F16, 2, 1100, 8, 2, 128, 0, 1);
    attention_case(LM_DT_F32, 37, 100, 8, 2, 64, 0, 1);
    lm_backend_cuda_set_simple(gpu, 0);
}

/* Up to 4 queries split their keys over blocks (a block per 256-key tile, the partials
 * merged in tile order); more are one block each, walking the same tiles with the same
 * arithmetic: a query's result is the same bits either way, and with the split's grid
 * sized by a larger cache capacity (what a recorded decode step uses). */
static void attention_split_same_case(int P, int window) {
    enum { N = 6, HEADS = 8, NKV = 2, HD = 128 };
    kv_pair p;
    CHECKF(kv_fill(&p, LM_DT_F16, P + 1, NKV, HD), "kv cache");
    size_t row = (size_t)HEADS * HD;
    float *q = rand_floats(N * row, -1, 1), scale = 1.0f / sqrtf((float)HD);
    float *dq = dev_from(q, sizeof(float) * N * row), *dmany = dev_from(NULL, sizeof(float) * N * row);
    float *done = dev_from(NULL, sizeof(float) * row), *dcap = dev_from(NULL, sizeof(float) * row);
    /* queries at P - N + 1 .. P in one call; the last one alone */
    CHECK(gpu->ops->attention(gpu, dmany, dq, &p.dk, &p.dv, N, P - N + 1, HEADS, NKV, HD, scale, window, NULL) == 0);
    CHECK(gpu->ops->attention(gpu, done, dq + (N - 1) * row, &p.dk, &p.dv, 1, P, HEADS, NKV, HD, scale, window, NULL) == 0);
    lm_kv k2 = p.dk, v2 = p.dv;
    k2.positions = v2.positions = 4 * (P + 1);
    CHECK(gpu->ops->attention(gpu, dcap, dq + (N - 1) * row, &k2, &v2, 1, P, HEADS, NKV, HD, scale, window, NULL) == 0);
    float *many = host_from(dmany, sizeof(float) * N * row), *one = host_from(done, sizeof(float) * row);
    float *cap = host_from(dcap, sizeof(float) * row);
    CHECKF(same_bits("split vs one block", one, many + (N - 1) * row, sizeof(float) * row), "P=%d window %d", P, window);
    CHECKF(same_bits("split, grid by capacity", cap, one, sizeof(float) * row), "P=%d window %d", P, window);
    free(q), free(many), free(one), free(cap);
    dev_free(dq), dev_free(dmany), dev_free(done), dev_free(dcap);
    kv_free(&p);
}

/* Prefill attention with the heads of a kv head in one block (each key and value loaded
 * once for all of them) against one head a block: the same bits, for each cache type, with
 * sinks, a window, GQA groups of 8 and 12 (blocks of 8 and 4 heads) and hd 64 / 80 / 128.
 * The queries are many enough that the grouped kernel keeps two blocks an SM. */
static void attention_heads_case(lm_dtype dt, int n, int pos0, int n_heads, int n_kv, int hd, int window, int with_sinks) {
    kv_pair p;
    CHECKF(kv_fill(&p, dt, pos0 + n, n_kv, hd), "kv cache");
    size_t qn = (size_t)n * (size_t)n_heads * (size_t)hd;
    float *q = rand_floats(qn, -1, 1), *sinks = with_sinks ? rand_floats((size_t)n_heads, -1, 3) : NULL;
    float *dq = dev_from(q, sizeof(float) * qn);
    float *dout[2] = {dev_from(NULL, sizeof(float) * qn), dev_from(NULL, sizeof(float) * qn)};
    for (int one = 0; one < 2; one++) {
        lm_backend_cuda_set_attn_one_head(gpu, one);
        CHECKF(gpu->ops->attention(gpu, dout[one], dq, &p.dk, &p.dv, n, pos0, n_heads, n_kv, hd, 0.125f, window,
                                   sinks) == 0, "%s", lm_backend_error(gpu));
    }
    lm_backend_cuda_set_attn_one_head(gpu, 0);
    float *grouped = host_from(dout[0], sizeof(float) * qn), *single = host_from(dout[1], sizeof(float) * qn);
    CHECKF(same_bits("heads together vs one a block", grouped, single, sizeof(float) * qn),
           "%s n=%d pos0=%d heads %d/%d hd %d window %d sinks %d", lm_dtype_name(dt), n, pos0, n_heads, n_kv, hd, window,
           with_sinks);
    free(q), free_weight(sinks), free(grouped), free(single);
    dev_free(dq), dev_free(dout[0]), dev_free(dout[1]);
    kv_free(&p);
}

static void attention_heads_same(void) {
    attention_heads_case(LM_DT_F16, 96, 300, 32, 4, 128, 0, 0);  /* Qwen3-30B-A3B's heads: 8 a block */
    attention_heads_case(LM_DT_F16, 90, 200, 64, 8, 64, 128, 1); /* gpt-oss-like: window, sinks */
    attention_heads_case(LM_DT_F32, 100, 40, 12, 1, 80, 0, 0);   /* a group of 12: 4 a block */
    attention_heads_case(LM_DT_I8, 80, 500, 32, 4, 128, 0, 1);
}

static void attention_split_same(void) {
    attention_split_same_case(3000, 0);
    attention_split_same_case(700, 0);
    attention_split_same_case(2500, 1000);
    attention_split_same_case(256, 0); /* two tiles, the second of one key */
}

/* ---- routing ---------------------------------------------------------------------------------------------- */

static void route_case(const char *what, const lm_router *r, const float *logits, int n) {
    int K = r->top_k, E = r->n_experts;
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)n * (size_t)K);
    float *w = malloc(sizeof(float) * (size_t)n * (size_t)K);
    CHECK(cpu->ops->route(cpu, r, logits, n, sel, w) == 0);
    float *dl = dev_from(logits, sizeof(float) * (size_t)n * (size_t)E);
    int32_t *dsel = dev_from(NULL, sizeof(int32_t) * (size_t)n * (size_t)K);
    float *dw = dev_from(NULL, sizeof(float) * (size_t)n * (size_t)K);
    CHECKF(gpu->ops->route(gpu, r, dl, n, dsel, dw) == 0, "%s: %s", what, lm_backend_error(gpu));
    int32_t *gsel = host_from(dsel, sizeof(int32_t) * (size_t)n * (size_t)K);
    float *gw = host_from(dw, sizeof(float) * (size_t)n * (size_t)K);
    CHECKF(same_bits(what, gsel, sel, sizeof(int32_t) * (size_t)n * (size_t)K), "%s: different experts", what);
    CHECKF(close_enough(what, gw, w, (size_t)n * (size_t)K, 1e-5, 1e-8), "%s: weights", what);
    free(sel), free(w), free(gsel), free(gw);
    dev_free(dl), dev_free(dsel), dev_free(dw);
}

static void route_kinds(void) {
    int n = 50, E = 64;
    float *lg = rand_floats((size_t)n * (size_t)E, -4, 4), *bias = rand_floats((size_t)E, -0.3f, 0.3f);
    /* exact ties: the lower index must win on both */
    float *ties = malloc(sizeof(float) * (size_t)n * (size_t)E);
    for (int i = 0; i < n * E; i++) ties[i] = (float)(int)(rnd() % 4);
    lm_router r = {.kind = LM_ROUTER_SOFTMAX_TOPK, .n_experts = E, .top_k = 8, .renormalize = 1, .scale = 1.0f};
    route_case("softmax top-k", &r, lg, n);
    route_case("softmax top-k ties", &r, ties, n);
    r.renormalize = 0;
    route_case("softmax top-k no renormalization", &r, lg, n);
    r = (lm_router){.kind = LM_ROUTER_TOPK_SOFTMAX, .n_experts = E, .top_k = 4, .scale = 1.0f};
    route_case("top-k softmax", &r, lg, n);
    route_case("top-k softmax ties", &r, ties, n);
    r = (lm_router){.kind = LM_ROUTER_SIGMOID, .n_experts = E, .top_k = 6, .renormalize = 1, .scale = 2.5f,
                    .correction_bias = bias, .n_group = 8, .topk_group = 3};
    route_case("sigmoid grouped", &r, lg, n);
    route_case("sigmoid grouped ties", &r, ties, n);
    r.n_group = 1;
    r.correction_bias = NULL;
    route_case("sigmoid", &r, lg, n);
    /* Qwen3-30B-A3B's 128 experts, top 8; 1000 experts (31-32 a lane in the warp kernel),
     * with ties; and the one-thread reference kernel on the same */
    float *lg2 = rand_floats((size_t)n * 1000, -4, 4), *ties2 = malloc(sizeof(float) * (size_t)n * 1000);
    for (int i = 0; i < n * 1000; i++) ties2[i] = (float)(int)(rnd() % 3);
    lm_router big = {.kind = LM_ROUTER_SOFTMAX_TOPK, .n_experts = 128, .top_k = 8, .renormalize = 1, .scale = 1.0f};
    route_case("softmax top-8 of 128", &big, lg2, n);
    big.n_experts = 1000;
    route_case("softmax top-8 of 1000", &big, lg2, n);
    route_case("softmax top-8 of 1000 ties", &big, ties2, n);
    big.kind = LM_ROUTER_TOPK_SOFTMAX;
    big.top_k = 32;
    route_case("top-32 softmax of 1000 ties", &big, ties2, n);
    lm_backend_cuda_set_simple(gpu, 1);
    route_case("top-32 softmax of 1000 ties (reference kernel)", &big, ties2, n);
    lm_backend_cuda_set_simple(gpu, 0);
    free(lg2), free(ties2);
    /* a top_k the experts cannot give: an error */
    r.top_k = E + 1;
    int32_t *dsel = dev_from(NULL, 4 * (size_t)(E + 1));
    CHECK(gpu->ops->route(gpu, &r, lg, 1, dsel, (float *)dsel) != 0);
    CHECK_STR_CONTAINS(lm_backend_error(gpu), "top_k");
    dev_free(dsel);
    free(lg), free_weight(bias), free(ties);
}

/* ---- experts' tokens ------------------------------------------------------------------------------------------- */

static void gather_scatter_combine(void) {
    int T = 7, K = 3, H = 96, m = 9;
    int32_t idx[9] = {0, 4, 5, 9, 11, 13, 17, 19, 20}; /* route numbers token * K + slot */
    float *src = rand_floats((size_t)T * (size_t)H, -1, 1), *dsrc = dev_from(src, sizeof(float) * (size_t)T * (size_t)H);
    int32_t *didx = dev_from(idx, sizeof idx);
    float *want = malloc(sizeof(float) * (size_t)m * (size_t)H), *dg = dev_from(NULL, sizeof(float) * (size_t)m * (size_t)H);
    cpu->ops->gather_rows(cpu, want, src, idx, m, H, K);
    CHECK(gpu->ops->gather_rows(gpu, dg, dsrc, didx, m, H, K) == 0);
    float *got = host_from(dg, sizeof(float) * (size_t)m * (size_t)H);
    CHECK(same_bits("gather_rows", got, want, sizeof(float) * (size_t)m * (size_t)H));
    size_t eb = sizeof(float) * (size_t)T * (size_t)K * (size_t)H;
    float *eout = rand_floats((size_t)T * (size_t)K * (size_t)H, -1, 1), *deout = dev_from(eout, eb);
    cpu->ops->scatter_rows(cpu, eout, want, idx, m, H);
    CHECK(gpu->ops->scatter_rows(gpu, deout, dg, didx, m, H) == 0);
    float *geout = host_from(deout, eb);
    CHECK(same_bits("scatter_rows", geout, eout, eb));
    float *selw = rand_floats((size_t)T * (size_t)K, 0, 1), *shared = rand_floats((size_t)T * (size_t)H, -1, 1);
    float *dselw = dev_from(selw, sizeof(float) * (size_t)T * (size_t)K);
    float *dshared = dev_from(shared, sizeof(float) * (size_t)T * (size_t)H);
    float *y = malloc(sizeof(float) * (size_t)T * (size_t)H), *dy = dev_from(NULL, sizeof(float) * (size_t)T * (size_t)H);
    for (int with_shared = 0; with_shared < 2; with_shared++) {
        cpu->ops->moe_combine(cpu, y, eout, selw, with_shared ? shared : NULL, T, K, H);
        CHECK(gpu->ops->moe_combine(gpu, dy, deout, dselw, with_shared ? dshared : NULL, T, K, H) == 0);
        float *gy = host_from(dy, sizeof(float) * (size_t)T * (size_t)H);
        CHECK(same_bits(with_shared ? "moe_combine + shared" : "moe_combine", gy, y, sizeof(float) * (size_t)T * (size_t)H));
        free(gy);
    }
    free(src), free(want), free(got), free(eout), free(geout), free(selw), free(shared), free(y);
    dev_free(dsrc), dev_free(didx), dev_free(dg), dev_free(deout), dev_free(dselw), dev_free(dshared), dev_free(dy);
}

/* Per-expert gathers into consecutive rows (and scatters from them), as forward.c
 * issues them for a group of experts that is not one run of routes: held back and
 * launched as one; the same bits as one launch each, and a gather that does not
 * continue the held-back ones (a gap) launches them first. */
static void pending_gathers(void) {
    int T = 9, K = 4, H = 72;
    int32_t idx[12] = {1, 5, 6, 30, 2, 3, 9, 10, 35, 0, 21, 33}; /* route numbers, distinct */
    int seg[4] = {0, 4, 8, 12};                                   /* three experts' routes */
    size_t rows = (size_t)T * (size_t)K;
    float *src = rand_floats((size_t)T * (size_t)H, -1, 1), *eout0 = rand_floats(rows * (size_t)H, -1, 1);
    float *got[2][2];
    for (int mode = 0; mode < 2; mode++) {
        lm_backend_cuda_set_simple(gpu, mode);
        float *dsrc = dev_from(src, sizeof(float) * (size_t)T * (size_t)H);
        int32_t *didx = dev_from(idx, sizeof idx);
        float *xe = dev_from(NULL, sizeof(float) * 14 * (size_t)H), *eout = dev_from(eout0, sizeof(float) * rows * (size_t)H);
        for (int k = 0; k < 3; k++) /* rows 0..11 of xe */
            CHECK(gpu->ops->gather_rows(gpu, xe + (size_t)seg[k] * (size_t)H, dsrc, didx + seg[k], seg[k + 1] - seg[k], H, K) == 0);
        /* a gap (row 13, not 12): does not join */
        CHECK(gpu->ops->gather_rows(gpu, xe + 13 * (size_t)H, dsrc, didx + 2, 1, H, K) == 0);
        for (int k = 0; k < 3; k++)
            CHECK(gpu->ops->scatter_rows(gpu, eout, xe + (size_t)seg[k] * (size_t)H, didx + seg[k], seg[k + 1] - seg[k], H) == 0);
        got[mode][0] = host_from(xe, sizeof(float) * 14 * (size_t)H);
        got[mode][1] = host_from(eout, sizeof(float) * rows * (size_t)H);
        dev_free(dsrc), dev_free(didx), dev_free(xe), dev_free(eout);
    }
    lm_backend_cuda_set_simple(gpu, 0);
    CHECK(same_bits("gathered rows", got[0][0], got[1][0], sizeof(float) * 12 * (size_t)H));
    CHECK(same_bits("gathered row after a gap", got[0][0] + 13 * (size_t)H, got[1][0] + 13 * (size_t)H, sizeof(float) * (size_t)H));
    CHECK(same_bits("scattered rows", got[0][1], got[1][1], sizeof(float) * rows * (size_t)H));
    /* and they are the rows asked for */
    for (int r = 0; r < 12; r++)
        CHECKF(!memcmp(got[0][0] + (size_t)r * (size_t)H, src + (size_t)(idx[r] / K) * (size_t)H, sizeof(float) * (size_t)H),
               "row %d is not source row %d", r, idx[r] / K);
    for (int m = 0; m < 2; m++) free(got[m][0]), free(got[m][1]);
    free(src), free(eout0);
}

/* moe_routed: routes chosen on the device give, bit for bit, what the host-routed
 * path computes -- each expert's routes gathered into one item, its gate and up
 * products, swiglu and down product by the matmul op, as run_experts issues them --
 * with the weights in device memory as the device expert cache holds them; weights it
 * cannot take (3-bit) are refused with 1, not computed wrong. A decode step's few
 * routes take the per-route kernels; a prefill chunk's (more than
 * LM_ROUTED_MAX_TOKENS tokens) are grouped by expert on the device, and an expert's
 * kernel depends on how many routes it got: the cases give experts fewer than 8
 * routes (k_gemv), exactly 8, and several tiles' worth (k_gemm_tc). */
enum { RE_E = 5 };
/* Bytes the cases' weight data sit past a 16-byte boundary (4: the 4-byte loads of
 * k_gemm_tc's affine path need no more). */
static size_t re_misalign;
/* Nonzero: the cases' experts are ggml blocks of this type (bits, group and qdt unused;
 * 256 columns and rows, whole K-quant blocks). */
static lm_dtype re_blocks;

static void routed_experts_case(int bits, int group, lm_dtype qdt, int expect, int T, int K, const int32_t *sel,
                                void *dev_parts[3 * RE_E][3]) {
    enum { E = RE_E };
    /* rows past a block's last (128 a block) */
    int H = 256, I = re_blocks ? 256 : group == 64 ? 192 : 96, R = T * K;
    lm_mat mats[3 * E];
    for (int e = 0; e < E; e++)
        for (int m = 0; m < 3; m++) {
            int rows = m == 2 ? H : I, cols = m == 2 ? I : H;
            lm_mat W = re_blocks ? make_mat(re_blocks, rows, cols, 0, 0, 0, 0)
                                 : make_mat(LM_DT_U32, rows, cols, 0, bits, group, qdt);
            size_t nd = re_blocks ? (size_t)rows * (size_t)lm_dtype_row_bytes(re_blocks, (uint64_t)cols)
                                  : (size_t)rows * (size_t)cols * (size_t)bits / 8;
            size_t ns = re_blocks ? 0 : (size_t)rows * (size_t)(cols / group) * lm_dtype_size(qdt);
            lm_mat D = W;
            dev_parts[3 * e + m][0] = dev_from(NULL, nd + 16);
            D.data = (uint8_t *)dev_parts[3 * e + m][0] + re_misalign;
            CHECK(gpu->ops->upload(gpu, (void *)D.data, W.data, nd) == 0);
            D.scales = dev_parts[3 * e + m][1] = ns ? dev_from(W.scales, ns) : NULL;
            D.biases = dev_parts[3 * e + m][2] = ns ? dev_from(W.biases, ns) : NULL;
            mats[3 * e + m] = D;
            free((void *)W.data), free((void *)W.scales), free((void *)W.biases);
        }
    float *h = rand_floats((size_t)T * (size_t)H, -1, 1);
    float *dh = dev_from(h, sizeof(float) * (size_t)T * (size_t)H);
    int32_t *dsel = dev_from(sel, sizeof(int32_t) * (size_t)R);
    float *g = dev_from(NULL, sizeof(float) * (size_t)R * (size_t)I), *u = dev_from(NULL, sizeof(float) * (size_t)R * (size_t)I);
    size_t out_bytes = sizeof(float) * (size_t)R * (size_t)H;
    float *eout = dev_from(NULL, out_bytes);
    int rc = gpu->ops->moe_routed(gpu, eout, mats, E, dsel, dh, T, K, g, u);
    CHECKF(rc == expect, "moe_routed (%d tokens) returned %d (%s), expected %d", T, rc, rc < 0 ? lm_backend_error(gpu) : "",
           expect);
    if (rc == 0) {
        float *want = malloc(out_bytes), *xe = malloc(sizeof(float) * (size_t)R * (size_t)H);
        int *rows = malloc(sizeof(int) * (size_t)R);
        float *dx = dev_from(NULL, sizeof(float) * (size_t)R * (size_t)H), *dy = dev_from(NULL, out_bytes);
        for (int e = 0; e < E; e++) {
            int m = 0;
            for (int r = 0; r < R; r++)
                if (sel[r] == e) {
                    memcpy(xe + (size_t)m * (size_t)H, h + (size_t)(r / K) * (size_t)H, sizeof(float) * (size_t)H);
                    rows[m++] = r;
                }
            if (!m) continue;
            const lm_mat *m3 = &mats[3 * e];
            CHECK(gpu->ops->upload(gpu, dx, xe, sizeof(float) * (size_t)m * (size_t)H) == 0);
            CHECK(gpu->ops->matmul(gpu, g, &m3[0], dx, m) == 0);
            CHECK(gpu->ops->matmul(gpu, u, &m3[1], dx, m) == 0);
            CHECK(gpu->ops->swiglu(gpu, g, u, (size_t)m * (size_t)I) == 0);
            CHECK(gpu->ops->matmul(gpu, dy, &m3[2], g, m) == 0);
            float *y = host_from(dy, sizeof(float) * (size_t)m * (size_t)H);
            for (int i = 0; i < m; i++)
                memcpy(want + (size_t)rows[i] * (size_t)H, y + (size_t)i * (size_t)H, sizeof(float) * (size_t)H);
            free(y);
        }
        float *a = host_from(eout, out_bytes);
        CHECKF(same_bits("moe_routed", a, want, out_bytes), "moe_routed of %d tokens differs from the host-routed path", T);
        free(a), free(want), free(xe), free(rows);
        dev_free(dx), dev_free(dy);
    }
    free(h);
    dev_free(dh), dev_free(dsel), dev_free(g), dev_free(u), dev_free(eout);
}

/* A prefill chunk: PT tokens x PK routes; experts 0..4 get 3, 20, 37, 8 and 12 of
 * them, spread over the tokens. */
enum { PT = 40, PK = 2 };
static void re_prefill_sel(int32_t psel[PT * PK]) {
    static const int per_expert[RE_E] = {3, 20, 37, 8, 12};
    for (int e = 0, r = 0; e < RE_E; e++)
        for (int i = 0; i < per_expert[e]; i++) psel[r++] = e;
    for (int r = PT * PK - 1; r > 0; r--) { /* a fixed shuffle */
        int j = (int)((unsigned)(r * 2654435761u) % (unsigned)(r + 1));
        int32_t t = psel[r];
        psel[r] = psel[j], psel[j] = t;
    }
}

/* The same with int8 activations (k_gemm_a8 on both paths): MLX 4-bit, groups of one
 * and two chunks, rows misaligned, and 8-bit (f32 activations still). */
static void routed_experts_act8(void) {
    static void *parts[7][3 * RE_E][3];
    int32_t psel[PT * PK];
    re_prefill_sel(psel);
    CHECKF(lm_backend_cuda_set_act_bits(gpu, 8, PT * PK, 256, err) == 0, "%s", err);
    routed_experts_case(4, 32, LM_DT_BF16, 0, PT, PK, psel, parts[0]);
    routed_experts_case(4, 64, LM_DT_F16, 0, PT, PK, psel, parts[1]);
    re_misalign = 4;
    routed_experts_case(4, 64, LM_DT_BF16, 0, PT, PK, psel, parts[2]);
    re_misalign = 0;
    routed_experts_case(8, 32, LM_DT_F16, 0, PT, PK, psel, parts[3]);
    lm_backend_cuda_set_a8_warps(gpu, 8); /* k_gemm_a8's blocks of 8 warps */
    routed_experts_case(4, 64, LM_DT_BF16, 0, PT, PK, psel, parts[4]);
    lm_backend_cuda_set_a8_warps(gpu, 4);
    lm_backend_cuda_set_a8_smem(gpu, 1); /* k_gemm_a8s, misaligned rows too */
    routed_experts_case(4, 64, LM_DT_F16, 0, PT, PK, psel, parts[5]);
    re_misalign = 4;
    routed_experts_case(4, 32, LM_DT_BF16, 0, PT, PK, psel, parts[6]);
    re_misalign = 0;
    lm_backend_cuda_set_a8_smem(gpu, 0);
    CHECK(lm_backend_cuda_set_act_bits(gpu, 32, 0, 0, err) == 0);
}

/* The same with GGUF block experts (a Q4_K_M file's Q4_K gate and up, Q6_K down, and
 * Q4_0): the grouped kernels for block types, with f32 activations and with int8
 * (k_gemm_g8_grouped against k_gemm_g8 on the host-routed path). */
static void routed_experts_blocks(void) {
    static void *parts[6][3 * RE_E][3];
    static const lm_dtype types[3] = {LM_DT_Q4_K, LM_DT_Q6_K, LM_DT_Q4_0};
    int32_t psel[PT * PK];
    re_prefill_sel(psel);
    for (int bits8 = 0; bits8 < 2; bits8++) {
        CHECKF(lm_backend_cuda_set_act_bits(gpu, bits8 ? 8 : 32, PT * PK, 256, err) == 0, "%s", err);
        for (int k = 0; k < 3; k++) {
            re_blocks = types[k];
            routed_experts_case(0, 0, LM_DT_F32, 0, PT, PK, psel, parts[3 * bits8 + k]);
        }
    }
    re_blocks = LM_DT_INVALID;
    CHECK(lm_backend_cuda_set_act_bits(gpu, 32, 0, 0, err) == 0);
}

static void routed_experts(void) {
    /* the weights of all cases stay allocated until the end (the backend keeps a table
     * per host array of views, told apart by their first and last views) */
    static void *parts[12][3 * RE_E][3];
    static const int32_t decode_sel[3 * 2] = {0, 3, 4, 1, 2, 4};
    routed_experts_case(4, 32, LM_DT_BF16, 0, 3, 2, decode_sel, parts[0]);
    routed_experts_case(8, 32, LM_DT_F16, 0, 3, 2, decode_sel, parts[1]);
    routed_experts_case(3, 32, LM_DT_BF16, 1, 3, 2, decode_sel, parts[2]);
    int32_t psel[PT * PK];
    re_prefill_sel(psel);
    routed_experts_case(4, 32, LM_DT_BF16, 0, PT, PK, psel, parts[3]);
    routed_experts_case(8, 32, LM_DT_F16, 0, PT, PK, psel, parts[4]);
    routed_experts_case(4, 64, LM_DT_F16, 0, PT, PK, psel, parts[5]); /* two chunks a scale */
    routed_experts_case(3, 32, LM_DT_BF16, 1, PT, PK, psel, parts[6]);
    /* rows 4 bytes off 16-byte alignment (affine path), and through the generic loader */
    re_misalign = 4;
    routed_experts_case(4, 64, LM_DT_F16, 0, PT, PK, psel, parts[7]);
    re_misalign = 0;
    lm_backend_cuda_set_tc_generic(gpu, 1);
    routed_experts_case(8, 32, LM_DT_BF16, 0, PT, PK, psel, parts[8]);
    routed_experts_case(4, 64, LM_DT_F16, 0, PT, PK, psel, parts[9]);
    lm_backend_cuda_set_tc_generic(gpu, 0);
    /* the affine path's blocks of 8 warps (LAZYMOE_CUDA_TC_WIDE=1) */
    lm_backend_cuda_set_tc_wide(gpu, 1);
    routed_experts_case(4, 64, LM_DT_F16, 0, PT, PK, psel, parts[10]);
    routed_experts_case(8, 32, LM_DT_BF16, 0, PT, PK, psel, parts[11]);
    lm_backend_cuda_set_tc_wide(gpu, 0);
    for (int c = 0; c < 12; c++)
        for (int i = 0; i < 3 * RE_E; i++)
            for (int k = 0; k < 3; k++) dev_free(parts[c][i][k]);
}

/* ---- the logits' scan and large downloads ------------------------------------------------------------------------ */

/* What logits_scan must give (backend.h): the values that are NaN or infinite counted
 * by their exponent bits, and the first largest by a scan that keeps an index only on
 * a strictly larger value, NaN never taken. */
static void scan_reference(const float *v, int n, int32_t out[2]) {
    int bad = 0, best = -1;
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, v + i, sizeof u);
        bad += (u & 0x7f800000u) == 0x7f800000u;
        if (!isnan(v[i]) && (best < 0 || v[i] > v[best])) best = i;
    }
    out[0] = bad;
    out[1] = best;
}

/* logits_scan of host[n] placed `offset` floats into a device buffer (1: a start that
 * is not 16-byte aligned, which the kernel reads value by value) against the host's. */
static void scan_case(const char *what, const float *host, int n, int offset) {
    float *d = dev_from(NULL, sizeof(float) * (size_t)(n + offset));
    int32_t *r = dev_from(NULL, 2 * sizeof(int32_t));
    if (!d || !r) {
        CHECKF(0, "%s: no device memory", what);
        return;
    }
    if (n) CHECK(gpu->ops->upload(gpu, d + offset, host, sizeof(float) * (size_t)n) == 0);
    CHECK(gpu->ops->logits_scan(gpu, r, d + offset, n) == 0);
    int32_t *got = host_from(r, 2 * sizeof(int32_t)), want[2];
    scan_reference(host, n, want);
    CHECKF(got[0] == want[0] && got[1] == want[1], "%s (n %d, offset %d): %d not finite, first largest at %d; the host: %d, %d",
           what, n, offset, got[0], got[1], want[0], want[1]);
    free(got);
    dev_free(d);
    dev_free(r);
}

/* Rows of lengths around the block's and the 16-byte groups' multiples (a decode step's
 * 151936 + 3 among them), 40 distinct values so that most values have ties, and the
 * largest placed at three positions (the first of them, in the middle, in the tail read
 * value by value): the lowest must win wherever the threads meet. Then NaN before it and
 * -inf (counted, not chosen), +inf (counted, and the largest), all NaN (-1), and -0
 * before +0 (equal: the first). */
static void logits_scan(void) {
    const int sizes[] = {0, 1, 3, 4, 5, 1023, 1024, 1025, 4097, 4160, 16385, 151936 + 3};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        int n = sizes[c];
        float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
        for (int i = 0; i < n; i++) v[i] = (float)(int)frand(0, 40) / 4.0f - 5.0f;
        if (n) v[n / 3] = v[n / 2] = v[n - 1] = 100.0f;
        scan_case("finite, ties of the largest", v, n, 0);
        scan_case("finite, ties of the largest, unaligned", v, n, 1);
        if (n >= 8) {
            v[0] = NAN;
            v[n / 3 - 1] = -NAN;
            v[n / 4] = -INFINITY;
            scan_case("NaN and -inf", v, n, 0);
            scan_case("NaN and -inf, unaligned", v, n, 1);
            v[n - 2] = INFINITY;
            scan_case("+inf", v, n, 0);
            for (int i = 0; i < n; i++) v[i] = NAN;
            scan_case("all NaN", v, n, 0);
            for (int i = 0; i < n; i++) v[i] = -1.0f;
            v[n / 2] = 0.0f;
            v[n / 3] = -0.0f;
            scan_case("-0 before +0", v, n, 0);
        }
        free(v);
    }
    CHECK(gpu->ops->logits_scan(gpu, NULL, NULL, -1) != 0);
}

/* Downloads from 64 KB on go through a page-locked buffer of at most 16 MB, larger ones
 * in parts: every size gives the bytes uploaded. */
static void large_downloads(void) {
    const size_t sizes[] = {((size_t)64 << 10) - 4, (size_t)64 << 10, (size_t)151936 * 4, ((size_t)16 << 20) + 4,
                            ((size_t)40 << 20) + 12};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        uint8_t *h = rand_bytes(sizes[c]);
        void *d = dev_from(h, sizes[c]);
        uint8_t *back = d ? host_from(d, sizes[c]) : NULL;
        CHECKF(back && same_bits("download", back, h, sizes[c]), "a download of %zu bytes", sizes[c]);
        free(h);
        free(back);
        dev_free(d);
    }
}

/* ---- errors ------------------------------------------------------------------------------------------------------ */

static void errors_are_messages(void) {
    lm_buf b;
    /* compute-sanitizer counts the deliberate failure of cudaMalloc as an API error:
     * under it (tools/cuda_check.sh sets CUDA_TEST_SANITIZER) the cap is what refuses */
    const char *san = getenv("CUDA_TEST_SANITIZER");
    if (!san || strcmp(san, "1")) {
        CHECK(lm_backend_alloc(gpu, &b, (size_t)1 << 50, "a petabyte", err) != 0);
        CHECK_STR_CONTAINS(err, "a petabyte");
        CHECK_STR_CONTAINS(err, "CUDA device memory");
    }
    /* the memory cap (options.gpu_memory): refused before cudaMalloc, with the cap named */
    uint64_t total, free_bytes, held, peak;
    CHECK(gpu->ops->memory_info(gpu, &total, &free_bytes, &held, &peak) == 0);
    CHECK(total > 0 && free_bytes <= total && peak >= held);
    gpu->ops->set_memory_limit(gpu, held + 4096);
    CHECK(lm_backend_alloc(gpu, &b, 8192, "a buffer over the cap", err) != 0);
    CHECK_STR_CONTAINS(err, "GPU memory budget");
    CHECK(lm_backend_alloc(gpu, &b, 4096, "a buffer under the cap", err) == 0);
    lm_backend_release(gpu, &b);
    gpu->ops->set_memory_limit(gpu, 0);
    lm_mat W = {.dtype = LM_DT_IQ2_XXS, .rows = 4, .cols = 256, .data = err};
    float *dy = dev_from(NULL, 64), *dx = dev_from(NULL, 4 * 256);
    CHECK(gpu->ops->matmul(gpu, dy, &W, dx, 1) != 0);
    CHECK_STR_CONTAINS(lm_backend_error(gpu), "IQ2_XXS");
    lm_kv kv = {.dtype = LM_DT_F32, .data = dx};
    CHECK(gpu->ops->attention(gpu, dy, dx, &kv, &kv, 1, 0, 1, 1, 512, 1.0f, 0, NULL) != 0);
    CHECK_STR_CONTAINS(lm_backend_error(gpu), "512");
    /* after the refusals the backend still works */
    CHECK(gpu->ops->sync(gpu) == 0);
    lm_mat small = make_mat(LM_DT_F32, 3, 8, 0, 0, 0, 0);
    CHECK(check_matmul_on("after errors", &small, 1));
    free_mat(&small);
    dev_free(dy);
    dev_free(dx);
}

/* ---- the engine on the golden fixtures ---------------------------------------------------------------------------- */

/* The source tree: LAZYMOE_SOURCE_DIR in the environment (a binary built elsewhere
 * and carried to the GPU box: tools/cuda_check.sh), else where it was built. */
static const char *source_dir(void) {
    const char *d = getenv("LAZYMOE_SOURCE_DIR");
    return d && *d ? d : LAZYMOE_SOURCE_DIR;
}

/* A path under the source tree (a few at a time stay valid). */
static const char *rt_path(const char *rel) {
    static char buf[4][512];
    static int next;
    next = (next + 1) % 4;
    snprintf(buf[next], sizeof buf[next], "%s/%s", source_dir(), rel);
    return buf[next];
}

static void fixture_path(char *buf, size_t n, const char *name, const char *file) {
    if (!strncmp(name, "models/", 7))
        snprintf(buf, n, "%s/%s%s%s", source_dir(), name, file ? "/golden/" : "", file ? file : "");
    else
        snprintf(buf, n, "%s/tests/fixtures/golden/%s%s%s", source_dir(), name, file ? "/" : "", file ? file : "");
}

static int read_ids(const char *path, int32_t *ids, int max, const char *sep) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    long v;
    char c;
    while (n < max && fscanf(f, "%ld", &v) == 1) {
        ids[n++] = (int32_t)v;
        if (fscanf(f, sep, &c) < 0) break;
    }
    fclose(f);
    return n;
}

static double rel_diff(const float *a, const float *ref, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]);
        if (!(d <= md)) md = d;
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    return md / (mr > 0 ? mr : 1);
}

static int test_act_bits = 32; /* options.act_bits of the engine runs (32: f32, the reference) */

typedef struct {
    float *logits; /* [n][V] of the prompt */
    int32_t greedy[64];
    int n, ng, top_k;
    size_t V;
} engine_run;

/* The prompt's logits and `steps` greedy tokens on a backend (capacity: 0 =
 * resident, else a lazy cache of that many experts per layer). */
static int run_engine(const char *name, const char *backend, int capacity, int steps, engine_run *r) {
    char dir[512], path[512];
    memset(r, 0, sizeof *r);
    fixture_path(dir, sizeof dir, name, NULL);
    lazymoe_options opt;
    lazymoe_options_init(&opt);
    opt.n_threads = 4;
    opt.kv_bits = 32;
    opt.act_bits = test_act_bits;
    opt.backend = backend;
    opt.no_warm_start = 1;
    opt.expert_capacity = capacity ? capacity : -1;
    int32_t ids[4096];
    fixture_path(path, sizeof path, name, "input_ids.txt");
    r->n = read_ids(path, ids, 4096, "%c");
    if (r->n <= 0) return lm_errf(err, "%s: no input ids", name);
    lazymoe_model *m = NULL;
    if (lazymoe_model_open(&m, dir, &opt, err, sizeof err) != 0) return -1;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    r->V = (size_t)info.vocab_size;
    r->top_k = info.top_k;
    r->logits = malloc(sizeof(float) * (size_t)r->n * r->V);
    float *lg = malloc(sizeof(float) * r->V);
    lazymoe_session *s = NULL;
    int rc = lazymoe_session_create(&s, m, err, sizeof err);
    if (rc == 0) rc = lazymoe_session_eval(s, ids, r->n, r->logits, 1, err, sizeof err);
    if (rc == 0) memcpy(lg, r->logits + (size_t)(r->n - 1) * r->V, sizeof(float) * r->V);
    for (int g = 0; rc == 0 && g < steps && g < 64; g++) {
        int best = 0;
        for (size_t i = 1; i < r->V; i++)
            if (lg[i] > lg[best]) best = (int)i;
        r->greedy[r->ng++] = best;
        if (g + 1 < steps) rc = lazymoe_session_eval(s, &r->greedy[g], 1, lg, 0, err, sizeof err);
    }
    free(lg);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return rc;
}

static void free_run(engine_run *r) { free(r->logits); }

#define F32_TOL 1e-4   /* vs transformers (tests/test_golden.c's bar) */
#define CPU_GPU_TOL 1e-3 /* vs the CPU backend (issue 18) */

/* One fixture: GPU vs transformers' logits (logits.npy, or logits_f32.npy for bf16
 * weights: the same weights computed in f32), vs the CPU backend, greedy ids equal
 * to the CPU's and to the reference's, and (lazy) a run with an expert cache of
 * top_k slots per layer -- slots refilled with other experts at every layer and
 * step -- bit for bit equal to the resident run on the GPU. */
static void golden(const char *name, const char *ref_logits, const char *ref_greedy, int lazy) {
    char path[512];
    engine_run g, c, lz;
    int32_t want[256];
    fixture_path(path, sizeof path, name, ref_greedy);
    int nw = read_ids(path, want, 256, "%*[ ]");
    if (nw > 16) nw = 16;
    if (run_engine(name, "cuda", 0, nw, &g) != 0) {
        CHECKF(0, "%s on cuda: %s", name, err);
        free_run(&g);
        return;
    }
    float *ref;
    size_t shape[4];
    int nd;
    fixture_path(path, sizeof path, name, ref_logits);
    if (lm_npy_read_f32(path, &ref, shape, &nd, err) == 0) {
        CHECK(nd == 2 && shape[0] == (size_t)g.n && shape[1] == g.V);
        double d = rel_diff(g.logits, ref, (size_t)g.n * g.V);
        printf("# %s cuda vs %s: max|diff|/max|ref| = %.3g (tolerance %.3g)\n", name, ref_logits, d, F32_TOL);
        CHECKF(d <= F32_TOL, "%s: cuda vs %s %.3g > %.3g", name, ref_logits, d, F32_TOL);
        free(ref);
    } else {
        CHECKF(0, "%s", err);
    }
    if (run_engine(name, "cpu", 0, nw, &c) == 0) {
        double d = rel_diff(g.logits, c.logits, (size_t)g.n * g.V);
        printf("# %s cuda vs cpu: max|diff|/max|cpu| = %.3g (tolerance %.3g)\n", name, d, CPU_GPU_TOL);
        CHECKF(d <= CPU_GPU_TOL, "%s: cuda vs cpu %.3g", name, d);
        CHECKF(g.ng == c.ng && !memcmp(g.greedy, c.greedy, sizeof(int32_t) * (size_t)g.ng),
               "%s: greedy ids differ between cuda and cpu", name);
        int same_ref = g.ng == nw && !memcmp(g.greedy, want, sizeof(int32_t) * (size_t)nw);
        int cpu_ref = c.ng == nw && !memcmp(c.greedy, want, sizeof(int32_t) * (size_t)nw);
        /* a reference near-tie the CPU already differs on (tests/test_golden.c accepts it) is not the GPU's fault */
        CHECKF(same_ref || !cpu_ref, "%s: cuda greedy ids differ from %s", name, ref_greedy);
        if (!same_ref) printf("# %s: greedy ids differ from %s on both backends (a reference near-tie)\n", name, ref_greedy);
    } else {
        CHECKF(0, "%s on cpu: %s", name, err);
    }
    if (lazy) {
        int top_k = g.top_k;
        if (run_engine(name, "cuda", top_k, nw, &lz) == 0) {
            CHECKF(same_bits("lazy vs resident logits", lz.logits, g.logits, sizeof(float) * (size_t)g.n * g.V),
                   "%s: lazy (capacity %d) and resident logits differ on cuda", name, top_k);
            CHECKF(lz.ng == g.ng && !memcmp(lz.greedy, g.greedy, sizeof(int32_t) * (size_t)g.ng),
                   "%s: lazy greedy ids differ", name);
        } else {
            CHECKF(0, "%s lazy on cuda: %s", name, err);
        }
        free_run(&lz);
    }
    free_run(&g);
    free_run(&c);
}

/* Decode steps replayed from a recorded graph give the logits the same steps give
 * op by op (LAZYMOE_CUDA_GRAPHS=0), bit for bit, at every position: the recording
 * reads the step's position from the device. 40 steps after the prompt also take
 * the KV cache past a growth (its buffers move: a new recording). */
#define GRAPH_STEPS 40

/* The model in dir on the GPU with the tests' options (f32 activations, f16 KV cache,
 * no warm start), the backend's switch `var` (read when the backend is made) left unset
 * (on) or set to 0 (off) while it opens: the model, or NULL with the reason in err. */
static lazymoe_model *open_cuda_model(const char *dir, const char *var, int on) {
    if (on) unsetenv(var);
    else setenv(var, "0", 1);
    lazymoe_options opt;
    lazymoe_options_init(&opt);
    opt.kv_bits = 16;
    opt.act_bits = test_act_bits;
    opt.backend = "cuda";
    opt.no_warm_start = 1;
    lazymoe_model *m = NULL;
    int rc = lazymoe_model_open(&m, dir, &opt, err, sizeof err);
    unsetenv(var);
    return rc == 0 ? m : NULL;
}

/* Fixture `name` on the GPU, with decode graphs on or off (LAZYMOE_CUDA_GRAPHS, read
 * when the backend is made), and its first (up to 24) input ids: the model, or NULL
 * with the reason in err. */
static lazymoe_model *open_decode_fixture(const char *name, int graphs, int32_t ids[4096], int *n) {
    char dir[512], path[512];
    fixture_path(dir, sizeof dir, name, NULL);
    fixture_path(path, sizeof path, name, "input_ids.txt");
    *n = read_ids(path, ids, 4096, "%c");
    if (*n <= 0) {
        lm_errf(err, "%s: no input ids", name);
        return NULL;
    }
    if (*n > 24) *n = 24;
    return open_cuda_model(dir, "LAZYMOE_CUDA_GRAPHS", graphs);
}

static int decode_logits(const char *name, int graphs, float **out, size_t *V) {
    int32_t ids[4096];
    int n, rc;
    lazymoe_model *m = open_decode_fixture(name, graphs, ids, &n);
    if (!m) return -1;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    *V = (size_t)info.vocab_size;
    float *lg = malloc(sizeof(float) * (GRAPH_STEPS + 1) * *V);
    *out = lg;
    lazymoe_session *s = NULL;
    rc = lazymoe_session_create(&s, m, err, sizeof err);
    if (rc == 0) rc = lazymoe_session_eval(s, ids, n, lg, 0, err, sizeof err);
    for (int g = 0; rc == 0 && g < GRAPH_STEPS; g++) {
        const float *prev = lg + (size_t)g * *V;
        int32_t best = 0;
        for (size_t i = 1; i < *V; i++)
            if (prev[i] > prev[best]) best = (int32_t)i;
        rc = lazymoe_session_eval(s, &best, 1, lg + (size_t)(g + 1) * *V, 0, err, sizeof err);
    }
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return rc;
}

static void graphs_case(const char *name) {
    float *a = NULL, *b = NULL;
    size_t V = 0, V2 = 0;
    uint64_t before = lm_backend_cuda_step_replays();
    int ra = decode_logits(name, 1, &a, &V);
    uint64_t replays = lm_backend_cuda_step_replays() - before;
    CHECKF(ra == 0, "%s with graphs: %s", name, err);
    int rb = ra == 0 ? decode_logits(name, 0, &b, &V2) : -1;
    CHECKF(rb == 0 || ra != 0, "%s op by op: %s", name, err);
    CHECKF(lm_backend_cuda_step_replays() - before == replays, "%s: steps replayed with LAZYMOE_CUDA_GRAPHS=0", name);
    /* the first step of a key runs op by op, the second is recorded */
    CHECKF(replays >= GRAPH_STEPS - 8, "%s: %llu of %d decode steps replayed", name, (unsigned long long)replays,
           GRAPH_STEPS);
    if (ra == 0 && rb == 0) {
        CHECK(V == V2);
        for (int g = 0; g <= GRAPH_STEPS; g++)
            CHECKF(!memcmp(a + (size_t)g * V, b + (size_t)g * V, sizeof(float) * V),
                   "%s: step %d's logits differ between the replayed graph and the ops", name, g);
    }
    printf("# %s: %llu of %d decode steps replayed, logits bit-identical to op by op\n", name,
           (unsigned long long)replays, GRAPH_STEPS);
    free(a);
    free(b);
}
static void graphs_replay(void) {
    graphs_case("qwen3_moe_f32");
    graphs_case("mixtral_window_f32");
    graphs_case("glm4_moe_f32");
    graphs_case("models/demo-coder");
}

/* lazymoe_session_eval_greedy on the GPU (the pick made by logits_scan, in the recorded
 * step as op by op) gives, token by token, the argmax of the logits the same steps
 * download; with graphs, both sessions' steps after their first two are replays. */
static void eval_greedy_case(const char *name, int graphs) {
    int32_t ids[4096];
    int n, rc;
    lazymoe_model *m = open_decode_fixture(name, graphs, ids, &n);
    CHECKF(m, "%s: %s", name, err);
    if (!m) return;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    size_t V = (size_t)info.vocab_size;
    float *lg = malloc(sizeof(float) * V);
    lazymoe_session *a = NULL, *b = NULL;
    int32_t next = -1;
    uint64_t before = lm_backend_cuda_step_replays();
    rc = lazymoe_session_create(&a, m, err, sizeof err) || lazymoe_session_create(&b, m, err, sizeof err);
    if (rc == 0) rc = lazymoe_session_eval(a, ids, n, lg, 0, err, sizeof err);
    if (rc == 0) rc = lazymoe_session_eval_greedy(b, ids, n, &next, err, sizeof err);
    int same = 0;
    for (int g = 0; rc == 0 && g < GRAPH_STEPS; g++) {
        int32_t best = 0;
        for (size_t i = 1; i < V; i++)
            if (lg[i] > lg[best]) best = (int32_t)i;
        CHECKF(next == best, "%s (graphs %d) step %d: greedy evaluation picked %d, the logits' argmax is %d", name,
               graphs, g, next, best);
        same += next == best;
        rc = lazymoe_session_eval(a, &best, 1, lg, 0, err, sizeof err);
        if (rc == 0) rc = lazymoe_session_eval_greedy(b, &best, 1, &next, err, sizeof err);
    }
    CHECKF(rc == 0, "%s (graphs %d): %s", name, graphs, err);
    uint64_t replays = lm_backend_cuda_step_replays() - before;
    if (graphs) CHECKF(replays >= GRAPH_STEPS, "%s: %llu replays over two sessions' %d steps", name,
                       (unsigned long long)replays, GRAPH_STEPS);
    else CHECK(replays == 0);
    printf("# %s (graphs %d): %d of %d greedy picks equal the downloaded logits' argmax, %llu steps replayed\n", name,
           graphs, same, GRAPH_STEPS, (unsigned long long)replays);
    free(lg);
    lazymoe_session_free(a);
    lazymoe_session_free(b);
    lazymoe_model_close(m);
}

/* A NaN logit at every position (lm_head row 7 NaN): the GPU's greedy evaluation, which
 * finds it by the device's count, fails with the message the logits' path gives. */
static void eval_greedy_nan(void) {
    char dir[256], e1[LM_ERR_LEN] = "", e2[LM_ERR_LEN] = "";
    if (nan_model_make(rt_path("tests/fixtures/golden/qwen3_moe_f32"), 7, dir) != 0) {
        CHECKF(0, "no NaN model");
        return;
    }
    lazymoe_options opt;
    lazymoe_options_init(&opt);
    opt.backend = "cuda";
    opt.no_warm_start = 1;
    lazymoe_model *m = NULL;
    CHECKF(lazymoe_model_open(&m, dir, &opt, err, sizeof err) == 0, "%s", err);
    if (m) {
        lazymoe_session *a = NULL, *b = NULL;
        float *lg = malloc(sizeof(float) * 4096);
        int32_t ids[3] = {5, 6, 7}, next = -1;
        CHECK(lazymoe_session_create(&a, m, err, sizeof err) == 0 && lazymoe_session_create(&b, m, err, sizeof err) == 0);
        CHECK(a && lazymoe_session_eval(a, ids, 3, lg, 0, e1, sizeof e1) != 0);
        CHECK(b && lazymoe_session_eval_greedy(b, ids, 3, &next, e2, sizeof e2) != 0);
        CHECKF(!strcmp(e1, e2) && strstr(e1, "non-finite logit (") && strstr(e1, "at position 2"), "'%s' vs '%s'", e1,
               e2);
        free(lg);
        lazymoe_session_free(a);
        lazymoe_session_free(b);
    }
    lazymoe_model_close(m);
    nan_model_remove(dir);
}

static void eval_greedy(void) {
    eval_greedy_case("qwen3_moe_f32", 1);
    eval_greedy_case("qwen3_moe_f32", 0);
    eval_greedy_case("glm4_moe_f32", 1);
    eval_greedy_case("models/demo-coder", 1);
    eval_greedy_case("models/demo-coder", 0);
    eval_greedy_nan();
}

/* A prefill's experts grouped on the device (every expert in device memory) give the
 * logits of every position bit for bit as when the host groups them
 * (LAZYMOE_CUDA_GROUPED=0, read when the backend is made): the demo model's 64 prompt
 * ids three times over, 192 tokens in one chunk, top-4 of 32 experts -- 24 routes an
 * expert on average, so both k_gemm_tc's tiles and k_gemv's few-route experts run. */
static int prefill_logits(const char *name, int grouped, float **out, size_t *V, int *n) {
    char dir[512], path[512];
    int32_t ids[256];
    fixture_path(dir, sizeof dir, name, NULL);
    fixture_path(path, sizeof path, name, "input_ids.txt");
    int k = read_ids(path, ids, 64, "%c");
    if (k <= 0) return lm_errf(err, "%s: no input ids", name);
    for (*n = k; *n + k <= 192; *n += k) memcpy(ids + *n, ids, sizeof(int32_t) * (size_t)k);
    lazymoe_model *m = open_cuda_model(dir, "LAZYMOE_CUDA_GROUPED", grouped);
    if (!m) return -1;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    *V = (size_t)info.vocab_size;
    *out = malloc(sizeof(float) * (size_t)*n * *V);
    lazymoe_session *s = NULL;
    int rc = lazymoe_session_create(&s, m, err, sizeof err);
    if (rc == 0) rc = lazymoe_session_eval(s, ids, *n, *out, 1, err, sizeof err);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return rc;
}

static void grouped_prefill_same(void) {
    float *a = NULL, *b = NULL;
    size_t V = 0, V2 = 0;
    int n = 0, n2 = 0;
    int ra = prefill_logits("models/demo-coder", 1, &a, &V, &n);
    CHECKF(ra == 0, "demo-coder, grouped on the device: %s", err);
    int rb = prefill_logits("models/demo-coder", 0, &b, &V2, &n2);
    CHECKF(rb == 0, "demo-coder, grouped on the host: %s", err);
    if (ra == 0 && rb == 0) {
        CHECK(n == 192 && n2 == n && V == V2);
        CHECKF(same_bits("grouped prefill", a, b, sizeof(float) * (size_t)n * V),
               "a prefill's logits differ with the experts grouped on the device");
    }
    free(a), free(b);
}

/* The same with int8 activations (--act-bits 8): the chunk's products on k_gemm_a8,
 * grouped on the device or routed on the host, the same bits. */
static void grouped_prefill_same_act8(void) {
    test_act_bits = 8;
    grouped_prefill_same();
    test_act_bits = 32;
}

/* k_gemm_a8s (LAZYMOE_CUDA_A8_SMEM=1, read when the backend is made) in a whole prefill
 * with int8 activations, grouped on the device: the bits of k_gemm_a8's. */
static void prefill_act8_smem_same(void) {
    float *a = NULL, *b = NULL;
    size_t V = 0, V2 = 0;
    int n = 0, n2 = 0;
    test_act_bits = 8;
    int ra = prefill_logits("models/demo-coder", 1, &a, &V, &n);
    CHECKF(ra == 0, "demo-coder, k_gemm_a8: %s", err);
    setenv("LAZYMOE_CUDA_A8_SMEM", "1", 1);
    int rb = prefill_logits("models/demo-coder", 1, &b, &V2, &n2);
    unsetenv("LAZYMOE_CUDA_A8_SMEM");
    CHECKF(rb == 0, "demo-coder, k_gemm_a8s: %s", err);
    test_act_bits = 32;
    if (ra == 0 && rb == 0) {
        CHECK(n == 192 && n2 == n && V == V2);
        CHECKF(same_bits("prefill through k_gemm_a8s", a, b, sizeof(float) * (size_t)n * V),
               "a prefill's logits differ with k_gemm_a8s");
    }
    free(a), free(b);
}

/* Int8 activations on the shipped 4-bit model: against transformers' f32 logits within
 * the CPU's int8 bound (tests/test_golden.c ACT8_TOL), and against the CPU's int8 run
 * (the same quantized values where both quantize; the GPU keeps f32 for decode steps
 * and experts of under 8 tokens, the CPU does not), both printed. */
#define ACT8_TOL 0.08
static void golden_demo_coder_act8(void) {
    engine_run g, c;
    test_act_bits = 8;
    int rg = run_engine("models/demo-coder", "cuda", 0, 8, &g), rc = rg == 0 ? run_engine("models/demo-coder", "cpu", 0, 8, &c) : -1;
    test_act_bits = 32;
    CHECKF(rg == 0 && rc == 0, "demo-coder with int8 activations: %s", err);
    if (rg != 0 || rc != 0) {
        if (rg == 0) free_run(&g);
        return;
    }
    char path[512];
    float *ref;
    size_t shape[4];
    int nd;
    fixture_path(path, sizeof path, "models/demo-coder", "logits.npy");
    if (lm_npy_read_f32(path, &ref, shape, &nd, err) == 0) {
        CHECK(nd == 2 && shape[0] == (size_t)g.n && shape[1] == g.V);
        double d = rel_diff(g.logits, ref, (size_t)g.n * g.V);
        printf("# demo-coder cuda act8 vs logits.npy: max|diff|/max|ref| = %.3g (tolerance %.3g)\n", d, ACT8_TOL);
        CHECKF(d <= ACT8_TOL, "cuda act8 vs logits.npy %.3g > %.3g", d, ACT8_TOL);
        free(ref);
    } else {
        CHECKF(0, "%s", err);
    }
    double dc = rel_diff(g.logits, c.logits, (size_t)g.n * g.V);
    printf("# demo-coder cuda act8 vs cpu act8: max|diff|/max|cpu| = %.3g (tolerance %.3g)\n", dc, ACT8_TOL);
    CHECKF(dc <= ACT8_TOL, "cuda act8 vs cpu act8 %.3g", dc);
    free_run(&g), free_run(&c);
}

/* Logits downloaded through the page-locked buffer and straight into pageable memory
 * (LAZYMOE_CUDA_DOWN_STAGE=0, read when the backend is made) are the same bytes. */
static void download_staging(void) {
    const char *names[] = {"qwen3_moe_f32", "models/demo-coder"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        float *a = NULL, *b = NULL;
        size_t V = 0, V2 = 0;
        int ra = decode_logits(names[i], 1, &a, &V);
        setenv("LAZYMOE_CUDA_DOWN_STAGE", "0", 1);
        int rb = decode_logits(names[i], 1, &b, &V2);
        unsetenv("LAZYMOE_CUDA_DOWN_STAGE");
        CHECKF(ra == 0 && rb == 0, "%s: %s", names[i], err);
        if (ra == 0 && rb == 0)
            CHECKF(V == V2 && !memcmp(a, b, sizeof(float) * (GRAPH_STEPS + 1) * V),
                   "%s: logits staged and downloaded directly differ", names[i]);
        free(a);
        free(b);
    }
}

static void golden_qwen3_moe(void) { golden("qwen3_moe_f32", "logits.npy", "greedy.txt", 1); }
static void golden_qwen3_moe_sharded(void) { golden("qwen3_moe_sharded_f32", "logits.npy", "greedy.txt", 1); }
static void golden_qwen3_moe_long(void) { golden("qwen3_moe_long_f32", "logits.npy", "greedy.txt", 1); }
static void golden_qwen3_moe_tied_bf16(void) { golden("qwen3_moe_tied_bf16", "logits_f32.npy", "greedy_f32.txt", 1); }
static void golden_mixtral(void) { golden("mixtral_f32", "logits.npy", "greedy.txt", 1); }
static void golden_mixtral_window(void) { golden("mixtral_window_f32", "logits.npy", "greedy.txt", 1); }
static void golden_mixtral_bf16(void) { golden("mixtral_bf16", "logits_f32.npy", "greedy_f32.txt", 1); }
static void golden_olmoe(void) { golden("olmoe_f32", "logits.npy", "greedy.txt", 1); }
static void golden_olmoe_clip_bf16(void) { golden("olmoe_clip_bf16", "logits_f32.npy", "greedy_f32.txt", 1); }
static void golden_minimax_m2(void) { golden("minimax_m2_f32", "logits.npy", "greedy.txt", 1); }
static void golden_minimax_m2_mqa(void) { golden("minimax_m2_mqa_f32", "logits.npy", "greedy.txt", 1); }
static void golden_glm4_moe(void) { golden("glm4_moe_f32", "logits.npy", "greedy.txt", 1); }
static void golden_glm4_moe_qknorm(void) { golden("glm4_moe_qknorm_f32", "logits.npy", "greedy.txt", 1); }
static void golden_gpt_oss(void) { golden("gpt_oss_f32", "logits.npy", "greedy.txt", 1); }
static void golden_gpt_oss_yarn(void) { golden("gpt_oss_yarn_f32", "logits.npy", "greedy.txt", 1); }
static void golden_gpt_oss_bf16(void) { golden("gpt_oss_bf16", "logits_f32.npy", "greedy_f32.txt", 1); }
static void golden_gpt_oss_mxfp4(void) { golden("gpt_oss_mxfp4", "logits.npy", "greedy.txt", 1); }
static void golden_demo_coder(void) { golden("models/demo-coder", "logits.npy", "greedy.txt", 1); }

/* Linear attention's recurrence is host code (no backend op yet): such a model is
 * refused on the GPU with that reason, not run wrong. */
/* Part 3: every device capacity bit-identical to all experts in GPU memory, over
 * resident host experts and over a host cache (uploads from host slots, pinned). */
static void tier_qwen3_moe(void) { tier_same_at_capacities(rt_path("tests/fixtures/golden/qwen3_moe_f32"), 8, 2); }
static void tier_glm4_moe(void) { tier_same_at_capacities(rt_path("tests/fixtures/golden/glm4_moe_f32"), 16, 4); }
static void tier_gpt_oss(void) { tier_same_at_capacities(rt_path("tests/fixtures/gpt_oss/float"), 4, 2); }
static void tier_gpt_oss_mxfp4(void) { tier_same_at_capacities(rt_path("tests/fixtures/gpt_oss/mxfp4"), 4, 2); }
static void tier_demo_coder(void) { tier_same_at_capacities(rt_path("models/demo-coder"), 32, 4); }
/* the GPU tier's warm start from the popularity history, and its pins */
static void tier_demo_coder_warm(void) { tier_warm_start(rt_path("models/demo-coder"), 32, 8, 4, 6, NULL); }
static void tier_demo_coder_act8(void) {
    tier_act_bits = 8;
    tier_same_at_capacities(rt_path("models/demo-coder"), 32, 4);
    tier_act_bits = 32;
}

/* Upload overlap: the copy stream runs beside the kernels, ordered by events.
 * A slot overwritten while a kernel still reads it, or a kernel that does not wait
 * for its upload, shows as a wrong product: many experts through a one-slot cache
 * in a loop, each product checked against the CPU. */
static void upload_ordering(void) {
    int rows = 256, cols = 512, n_exp = 6;
    size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
    float *host[6], *x = rand_floats((size_t)cols, -1, 1), *want = malloc(sizeof(float) * (size_t)rows);
    for (int e = 0; e < n_exp; e++) host[e] = rand_floats((size_t)rows * (size_t)cols, -1, 1);
    float *slot = dev_from(NULL, bytes), *dx = dev_from(x, sizeof(float) * (size_t)cols);
    float *dy = dev_from(NULL, sizeof(float) * (size_t)rows * (size_t)n_exp * 4);
    CHECK(gpu->ops->pin_host(gpu, host[0], bytes) == 0); /* one pinned, the rest staged */
    for (int i = 0; i < 4 * n_exp; i++) {
        int e = i % n_exp;
        CHECK(gpu->ops->upload_fence(gpu) == 0);
        CHECK(gpu->ops->upload_async(gpu, slot, host[e], bytes) == 0);
        lm_mat W = {.dtype = LM_DT_F32, .rows = rows, .cols = cols, .data = slot};
        CHECK(gpu->ops->matmul(gpu, dy + (size_t)i * (size_t)rows, &W, dx, 1) == 0);
    }
    CHECK(gpu->ops->uploads_wait(gpu) == 0);
    float *got = host_from(dy, sizeof(float) * (size_t)rows * (size_t)n_exp * 4);
    double worst = 0;
    for (int i = 0; i < 4 * n_exp; i++) {
        lm_mat W = {.dtype = LM_DT_F32, .rows = rows, .cols = cols, .data = host[i % n_exp]};
        cpu->ops->matmul(cpu, want, &W, x, 1);
        for (int r = 0; r < rows; r++) {
            double d = fabs((double)got[(size_t)i * (size_t)rows + (size_t)r] - (double)want[r]);
            if (d > worst) worst = d;
        }
    }
    printf("# upload ordering: worst |gpu - cpu| %.3g over %d uploads into one slot\n", worst, 4 * n_exp);
    CHECKF(worst < 1e-3, "a product read a slot before its upload or after the next one (%.3g)", worst);
    gpu->ops->unpin_host(gpu, host[0]);
    for (int e = 0; e < n_exp; e++) free(host[e]);
    free(x), free(want), free(got);
    dev_free(slot), dev_free(dx), dev_free(dy);
}

static void linear_attention_refused(void) {
    engine_run g;
    CHECK(run_engine("qwen3_next_f32", "cuda", 0, 1, &g) != 0);
    CHECK_STR_CONTAINS(err, "linear");
    free_run(&g);
}

int main(void) {
    if (lm_backend_cpu_create_with(&cpu, 4, "scalar", err) != 0) {
        printf("FAIL cuda_setup: cpu backend: %s\n", err);
        return 1;
    }
    if (lm_backend_create(&gpu, "cuda", 0, err) != 0) {
        printf("FAIL cuda_setup: %s\n", err);
        return 1;
    }
    TEST_CASE("cuda_matmul_f32", matmul_f32);
    TEST_CASE("cuda_matmul_f16", matmul_f16);
    TEST_CASE("cuda_matmul_bf16", matmul_bf16);
    TEST_CASE("cuda_matmul_col_major", matmul_col_major);
    TEST_CASE("cuda_matmul_affine", matmul_affine);
    TEST_CASE("cuda_matmul_mxfp4", matmul_mxfp4);
    TEST_CASE("cuda_matmul_ggml_blocks", matmul_ggml_blocks);
    TEST_CASE("cuda_matmul_batch", matmul_batch);
    TEST_CASE("cuda_matmul_fast_vs_reference", matmul_fast_kernels);
    TEST_CASE("cuda_matmul_fast_batch_invariant", matmul_fast_batch_invariant);
    TEST_CASE("cuda_weights_changed", weights_changed);
    TEST_CASE("cuda_embed", embed_types);
    TEST_CASE("cuda_rmsnorm", rmsnorm);
    TEST_CASE("cuda_rmsnorm_warps_same_bits", rmsnorm_warps_same_bits);
    TEST_CASE("cuda_elementwise_exact", elementwise_exact);
    TEST_CASE("cuda_elementwise_exp", elementwise_exp);
    TEST_CASE("cuda_rope", rope);
    TEST_CASE("cuda_pending_pairs_bit_identical", pending_pairs);
    TEST_CASE("cuda_kv_store", kv_store_types);
    TEST_CASE("cuda_attention", attention);
    TEST_CASE("cuda_attention_split_same", attention_split_same);
    TEST_CASE("cuda_attention_heads_same", attention_heads_same);
    TEST_CASE("cuda_matmul_tc_affine_same_bits", matmul_tc_affine_same_bits);
    TEST_CASE("cuda_matmul_fast_batch_invariant_generic", matmul_fast_batch_invariant_generic);
    TEST_CASE("cuda_matmul_act8_exact", matmul_act8_exact);
    TEST_CASE("cuda_matmul_g8_exact", matmul_g8_exact);
    TEST_CASE("cuda_matmul_act8_batch_invariant", matmul_act8_batch_invariant);
    TEST_CASE("cuda_route", route_kinds);
    TEST_CASE("cuda_gather_scatter_combine", gather_scatter_combine);
    TEST_CASE("cuda_pending_gathers_bit_identical", pending_gathers);
    TEST_CASE("cuda_moe_routed_bit_identical", routed_experts);
    TEST_CASE("cuda_moe_routed_act8_bit_identical", routed_experts_act8);
    TEST_CASE("cuda_moe_routed_blocks_bit_identical", routed_experts_blocks);
    TEST_CASE("cuda_errors_are_messages", errors_are_messages);
    TEST_CASE("cuda_upload_ordering", upload_ordering);
    TEST_CASE("cuda_logits_scan", logits_scan);
    TEST_CASE("cuda_large_downloads", large_downloads);
    printf("# device copies of host weights: %llu bytes\n", (unsigned long long)lm_backend_cuda_weight_bytes(gpu));
    lm_backend_free(gpu);
    lm_backend_free(cpu);
    /* CUDA_TEST_OPS_ONLY=1: the operations alone (under compute-sanitizer, whose
     * checks slow every kernel down) */
    const char *ops_only = getenv("CUDA_TEST_OPS_ONLY");
    if (ops_only && !strcmp(ops_only, "1")) TEST_EXIT();
    TEST_CASE("cuda_golden_qwen3_moe_f32", golden_qwen3_moe);
    TEST_CASE("cuda_golden_qwen3_moe_sharded_f32", golden_qwen3_moe_sharded);
    TEST_CASE("cuda_golden_qwen3_moe_long_prompt_chunked", golden_qwen3_moe_long);
    TEST_CASE("cuda_golden_qwen3_moe_tied_bf16", golden_qwen3_moe_tied_bf16);
    TEST_CASE("cuda_golden_mixtral_f32", golden_mixtral);
    TEST_CASE("cuda_golden_mixtral_sliding_window", golden_mixtral_window);
    TEST_CASE("cuda_golden_mixtral_bf16", golden_mixtral_bf16);
    TEST_CASE("cuda_golden_olmoe_f32", golden_olmoe);
    TEST_CASE("cuda_golden_olmoe_clip_bf16", golden_olmoe_clip_bf16);
    TEST_CASE("cuda_golden_minimax_m2_f32", golden_minimax_m2);
    TEST_CASE("cuda_golden_minimax_m2_mqa_f32", golden_minimax_m2_mqa);
    TEST_CASE("cuda_golden_glm4_moe_f32", golden_glm4_moe);
    TEST_CASE("cuda_golden_glm4_moe_qknorm_f32", golden_glm4_moe_qknorm);
    TEST_CASE("cuda_golden_gpt_oss_f32", golden_gpt_oss);
    TEST_CASE("cuda_golden_gpt_oss_yarn_f32", golden_gpt_oss_yarn);
    TEST_CASE("cuda_golden_gpt_oss_bf16", golden_gpt_oss_bf16);
    TEST_CASE("cuda_golden_gpt_oss_mxfp4", golden_gpt_oss_mxfp4);
    TEST_CASE("cuda_golden_demo_coder_q4", golden_demo_coder);
    TEST_CASE("cuda_grouped_prefill_same_as_host_routed", grouped_prefill_same);
    TEST_CASE("cuda_grouped_prefill_act8_same_as_host_routed", grouped_prefill_same_act8);
    TEST_CASE("cuda_prefill_act8_smem_same_bits", prefill_act8_smem_same);
    TEST_CASE("cuda_golden_demo_coder_act8", golden_demo_coder_act8);
    TEST_CASE("cuda_graphs_replay_bit_identical_to_ops", graphs_replay);
    TEST_CASE("cuda_eval_greedy_equals_argmax_of_logits", eval_greedy);
    TEST_CASE("cuda_download_staging_bit_identical", download_staging);
    TEST_CASE("cuda_linear_attention_refused", linear_attention_refused);
    TEST_CASE("cuda_tier_qwen3_moe_bit_identical", tier_qwen3_moe);
    TEST_CASE("cuda_tier_glm4_moe_shared_expert_bit_identical", tier_glm4_moe);
    TEST_CASE("cuda_tier_gpt_oss_bit_identical", tier_gpt_oss);
    TEST_CASE("cuda_tier_gpt_oss_mxfp4_bit_identical", tier_gpt_oss_mxfp4);
    TEST_CASE("cuda_tier_demo_coder_warm_start_and_pins", tier_demo_coder_warm);
    TEST_CASE("cuda_tier_demo_coder_mlx_4bit_bit_identical", tier_demo_coder);
    TEST_CASE("cuda_tier_demo_coder_act8_bit_identical", tier_demo_coder_act8);
    TEST_EXIT();
}

/* SIMD kernels of the CPU backend against the portable scalar reference.
 *
 * Random matrices in every stored precision the SIMD tables take (F32, F16, BF16,
 * MLX affine 4- and 8-bit with f32/f16/bf16 scales, several group sizes), shapes
 * with ragged edges (rows not a multiple of the tile, columns not a multiple of
 * the vector width, token counts across the tile and token-block sizes):
 *  - every SIMD table this CPU runs agrees with the scalar backend to f32
 *    rounding (|diff| <= 2e-6 * sum |w x|), and with an independent double
 *    dequantisation written here from the format's definition;
 *  - a token's result does not depend on how many tokens share the call or on
 *    the thread count (bit-identical), which keeps lazy == resident.
 * This file also builds for AArch64 (tests/cli/neon.sh runs it under qemu), so it
 * uses only the backend and the dtype helpers.
 */
#include "harness.h"

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/threadpool.h"

#include <stdatomic.h>

#include <stdint.h>

static uint64_t rng = 88172645463325252ull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static void store_float(void *p, lm_dtype dt, size_t i, float v) {
    if (dt == LM_DT_F32) ((float *)p)[i] = v;
    else if (dt == LM_DT_BF16) ((uint16_t *)p)[i] = lm_f32_to_bf16(v);
    else ((uint16_t *)p)[i] = lm_f32_to_f16(v);
}

typedef struct {
    lm_mat m;
    void *data, *scales, *biases;
} test_mat;

/* A random matrix; affine when bits > 0 (dt is then the scales' type). */
static void make_mat(test_mat *t, int rows, int cols, lm_dtype dt, int bits, int gs) {
    memset(t, 0, sizeof *t);
    t->m.rows = rows;
    t->m.cols = cols;
    size_t n = (size_t)rows * (size_t)cols;
    if (!bits) {
        t->m.dtype = dt;
        t->data = malloc(n * lm_dtype_size(dt));
        for (size_t i = 0; i < n; i++) store_float(t->data, dt, i, (float)urand());
    } else {
        t->m.dtype = LM_DT_U32;
        t->m.bits = bits;
        t->m.group_size = gs;
        t->m.qdtype = dt;
        size_t bytes = n * (size_t)bits / 8, ng = n / (size_t)gs;
        t->data = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) ((uint8_t *)t->data)[i] = (uint8_t)(urand() * 128 + 128);
        t->scales = malloc(ng * lm_dtype_size(dt));
        t->biases = malloc(ng * lm_dtype_size(dt));
        for (size_t g = 0; g < ng; g++) {
            store_float(t->scales, dt, g, (float)(urand() * 0.02));
            store_float(t->biases, dt, g, (float)(urand() * 0.1));
        }
    }
    t->m.data = t->data;
    t->m.scales = t->scales;
    t->m.biases = t->biases;
}

static void free_mat(test_mat *t) {
    free(t->data);
    free(t->scales);
    free(t->biases);
}

/* w[r][c] from the definitions: float types as stored; affine q from the bit
 * stream (lowest bits first) times scale plus bias. */
static double ref_w(const lm_mat *m, int r, int c) {
    size_t i = (size_t)r * (size_t)m->cols + (size_t)c;
    if (m->dtype != LM_DT_U32) return lm_load_float(m->data, m->dtype, i);
    const uint8_t *b = m->data;
    unsigned q = 0;
    for (int k = 0; k < m->bits; k++) {
        size_t bit = i * (size_t)m->bits + (size_t)k;
        q |= (unsigned)((b[bit / 8] >> (bit % 8)) & 1u) << k;
    }
    size_t g = i / (size_t)m->group_size;
    return (double)lm_load_float(m->scales, m->qdtype, g) * q + (double)lm_load_float(m->biases, m->qdtype, g);
}

static const char *tables[] = {"avx512", "avx2", "neon"};

typedef struct {
    int rows, cols;
    lm_dtype dt;
    int bits, gs;
} shape;

static const shape shapes[] = {
    {13, 40, LM_DT_F32, 0, 0},   {9, 17, LM_DT_BF16, 0, 0},   {21, 100, LM_DT_F16, 0, 0},
    {64, 256, LM_DT_BF16, 0, 0}, {7, 3, LM_DT_F32, 0, 0},     {16, 64, LM_DT_F16, 0, 0},
    {13, 256, LM_DT_BF16, 4, 64}, {10, 96, LM_DT_F16, 4, 32},  {17, 512, LM_DT_F32, 4, 128},
    {13, 256, LM_DT_BF16, 8, 64}, {6, 96, LM_DT_F16, 8, 32},   {33, 384, LM_DT_F32, 8, 128},
    {40, 2048, LM_DT_BF16, 4, 64},
    /* More than the 256 groups whose scales a tile converts at once; 259 groups of
     * 32 end a 4-bit row on half a 64-weight step. */
    {5, 8288, LM_DT_BF16, 4, 32}, {6, 8224, LM_DT_F16, 8, 32},
};

static void simd_matches_scalar(void) {
    char err[LM_ERR_LEN];
    lm_backend *ref;
    CHECKF(lm_backend_cpu_create_with(&ref, 1, "scalar", err) == 0, "%s", err);
    int tested = 0;
    for (size_t ti = 0; ti < sizeof tables / sizeof tables[0]; ti++) {
        lm_backend *be;
        if (lm_backend_cpu_create_with(&be, 2, tables[ti], err) != 0) {
            printf("# %s not run here: %s\n", tables[ti], err);
            continue;
        }
        tested++;
        CHECK(!strcmp(lm_backend_cpu_kernels(be), tables[ti]));
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const shape *sh = &shapes[si];
            test_mat t;
            make_mat(&t, sh->rows, sh->cols, sh->dt, sh->bits, sh->gs);
            int n = sh->cols > 4096 ? 5 : 70; /* > the 64-token block, not a multiple of the tile; wide rows: a few */
            float *x = malloc(sizeof(float) * (size_t)n * (size_t)sh->cols);
            float *y = malloc(sizeof(float) * (size_t)n * (size_t)sh->rows);
            float *yr = malloc(sizeof(float) * (size_t)n * (size_t)sh->rows);
            for (size_t i = 0; i < (size_t)n * (size_t)sh->cols; i++) x[i] = (float)urand();
            be->ops->matmul(be, y, &t.m, x, n);
            ref->ops->matmul(ref, yr, &t.m, x, n);
            double worst = 0, worst_def = 0;
            for (int tok = 0; tok < n; tok++)
                for (int r = 0; r < sh->rows; r++) {
                    double exact = 0, mag = 0;
                    for (int c = 0; c < sh->cols; c++) {
                        double p = ref_w(&t.m, r, c) * x[(size_t)tok * (size_t)sh->cols + (size_t)c];
                        exact += p;
                        mag += fabs(p);
                    }
                    size_t o = (size_t)tok * (size_t)sh->rows + (size_t)r;
                    double d = fabs((double)y[o] - yr[o]) / (mag + 1e-30);
                    double de = fabs((double)y[o] - exact) / (mag + 1e-30);
                    if (d > worst) worst = d;
                    if (de > worst_def) worst_def = de;
                }
            CHECKF(worst <= 2e-6 && worst_def <= 2e-6, "%s on %dx%d %s bits %d g%d: relative error %.3g vs scalar, %.3g vs definition",
                   tables[ti], sh->rows, sh->cols, lm_dtype_name(sh->dt), sh->bits, sh->gs, worst, worst_def);
            free(x), free(y), free(yr);
            free_mat(&t);
        }
        lm_backend_free(be);
    }
    lm_backend_free(ref);
#if defined(__x86_64__) || defined(__aarch64__)
    CHECKF(tested > 0, "no SIMD table runs on this machine");
#endif
}

/* Same token, same bits: alone, in a batch of any size, with 1 or 3 threads. */
static void batching_and_threads_bit_identical(void) {
    char err[LM_ERR_LEN];
    const char *names[] = {"scalar", "avx512", "avx2", "neon"};
    for (size_t ti = 0; ti < sizeof names / sizeof names[0]; ti++) {
        lm_backend *one, *three;
        if (lm_backend_cpu_create_with(&one, 1, names[ti], err) != 0) continue;
        CHECK(lm_backend_cpu_create_with(&three, 3, names[ti], err) == 0);
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const shape *sh = &shapes[si];
            test_mat t;
            make_mat(&t, sh->rows, sh->cols, sh->dt, sh->bits, sh->gs);
            int n = 67;
            float *x = malloc(sizeof(float) * (size_t)n * (size_t)sh->cols);
            float *ya = malloc(sizeof(float) * (size_t)n * (size_t)sh->rows);
            float *yb = malloc(sizeof(float) * (size_t)n * (size_t)sh->rows);
            float *y1 = malloc(sizeof(float) * (size_t)sh->rows);
            for (size_t i = 0; i < (size_t)n * (size_t)sh->cols; i++) x[i] = (float)urand();
            one->ops->matmul(one, ya, &t.m, x, n);
            three->ops->matmul(three, yb, &t.m, x, n);
            CHECKF(!memcmp(ya, yb, sizeof(float) * (size_t)n * (size_t)sh->rows), "%s %dx%d: 1 vs 3 threads differ",
                   names[ti], sh->rows, sh->cols);
            for (int tok = 0; tok < n; tok += 5) {
                three->ops->matmul(three, y1, &t.m, x + (size_t)tok * (size_t)sh->cols, 1);
                CHECKF(!memcmp(y1, ya + (size_t)tok * (size_t)sh->rows, sizeof(float) * (size_t)sh->rows),
                       "%s %dx%d bits %d: token %d alone differs from the batch", names[ti], sh->rows, sh->cols,
                       sh->bits, tok);
            }
            /* The batch split 3 + rest gives the same again. */
            three->ops->matmul(three, yb, &t.m, x, 3);
            three->ops->matmul(three, yb + 3 * (size_t)sh->rows, &t.m, x + 3 * (size_t)sh->cols, n - 3);
            CHECKF(!memcmp(ya, yb, sizeof(float) * (size_t)n * (size_t)sh->rows), "%s %dx%d: split batch differs",
                   names[ti], sh->rows, sh->cols);
            free(x), free(ya), free(yb), free(y1);
            free_mat(&t);
        }
        lm_backend_free(one);
        lm_backend_free(three);
    }
}

/* Attention over a KV cache of 200 positions (several key tiles), GQA 6 heads on
 * 2 kv heads, with and without a window, and with attention sinks: against a naive
 * double softmax over the cache's own (rounded) values; and each query alone equals
 * it in the batch. */
static void attention_tiled(const char *kernels) {
    char err[LM_ERR_LEN];
    enum { P = 200, NH = 6, NKV = 2, HD = 40 };
    const lm_dtype types[] = {LM_DT_F32, LM_DT_F16, LM_DT_I8};
    lm_backend *be;
    CHECKF(lm_backend_cpu_create_with(&be, 3, kernels, err) == 0, "%s", err);
    if (!be) return;
    float *k = malloc(sizeof(float) * P * NKV * HD), *v = malloc(sizeof(float) * P * NKV * HD);
    float *q = malloc(sizeof(float) * P * NH * HD);
    float *out = malloc(sizeof(float) * P * NH * HD), *one = malloc(sizeof(float) * NH * HD);
    float *kr = malloc(sizeof(float) * P * NKV * HD), *vr = malloc(sizeof(float) * P * NKV * HD);
    for (int i = 0; i < P * NKV * HD; i++) k[i] = (float)urand() * 2, v[i] = (float)urand();
    for (int i = 0; i < P * NH * HD; i++) q[i] = (float)urand();
    float sinks[NH]; /* around the scores' size, so they change the result (no urand: later cases keep their inputs) */
    for (int h = 0; h < NH; h++) sinks[h] = 0.6f * (float)h - 1.0f;
    for (size_t ti = 0; ti < 3; ti++)
        for (int variant = 0; variant < 3; variant++) {
            int window = variant ? 50 : 0;
            const float *sk = variant == 2 ? sinks : NULL;
            lm_kv kc = {types[ti], malloc(P * NKV * HD * 4), malloc(P * NKV * 4)};
            lm_kv vc = {types[ti], malloc(P * NKV * HD * 4), malloc(P * NKV * 4)};
            /* Stored in two calls: the cache holds the same either way. */
            be->ops->kv_store(be, &kc, 0, k, 77, NKV, HD);
            be->ops->kv_store(be, &kc, 77, k + 77 * NKV * HD, P - 77, NKV, HD);
            be->ops->kv_store(be, &vc, 0, v, P, NKV, HD);
            /* What the cache holds, read by each type's definition. */
            for (int p = 0; p < P; p++)
                for (int h = 0; h < NKV; h++)
                    for (int d = 0; d < HD; d++) {
                        size_t i = ((size_t)p * NKV + (size_t)h) * HD + (size_t)d;
                        if (types[ti] == LM_DT_F32) kr[i] = ((float *)kc.data)[i], vr[i] = ((float *)vc.data)[i];
                        else if (types[ti] == LM_DT_F16)
                            kr[i] = lm_f16_to_f32(((uint16_t *)kc.data)[i]), vr[i] = lm_f16_to_f32(((uint16_t *)vc.data)[i]);
                        else
                            kr[i] = kc.scales[p * NKV + h] * ((int8_t *)kc.data)[i],
                            vr[i] = vc.scales[p * NKV + h] * ((int8_t *)vc.data)[i];
                    }
            /* The stored values are the inputs to within the type's rounding. */
            double tol_store = types[ti] == LM_DT_F32 ? 0 : types[ti] == LM_DT_F16 ? 1.0 / 1024 : 1.0 / 127;
            double worst_store = 0;
            for (int i = 0; i < P * NKV * HD; i++) {
                double d = fabs(kr[i] - k[i]) / 2.0; /* |k| < 2 */
                if (d > worst_store) worst_store = d;
            }
            CHECKF(worst_store <= tol_store, "%s cache stores keys %.3g off", lm_dtype_name(types[ti]), worst_store);
            float sc = 1.0f / sqrtf((float)HD);
            CHECK(be->ops->attention(be, out, q, &kc, &vc, P, 0, NH, NKV, HD, sc, window, sk) == 0);
            double worst = 0;
            for (int t = 0; t < P; t++)
                for (int h = 0; h < NH; h++) {
                    int kvh = h / (NH / NKV), first = window && t - window + 1 > 0 ? t - window + 1 : 0;
                    double mx = -1e300, w[P], sum = 0;
                    for (int p = first; p <= t; p++) {
                        double s_ = 0;
                        for (int d = 0; d < HD; d++)
                            s_ += (double)q[((size_t)t * NH + (size_t)h) * HD + (size_t)d] * kr[((size_t)p * NKV + (size_t)kvh) * HD + (size_t)d];
                        w[p] = s_ * sc;
                        if (w[p] > mx) mx = w[p];
                    }
                    if (sk && sk[h] > mx) mx = sk[h];
                    if (sk) sum += exp(sk[h] - mx);
                    for (int p = first; p <= t; p++) sum += (w[p] = exp(w[p] - mx));
                    for (int d = 0; d < HD; d++) {
                        double o = 0;
                        for (int p = first; p <= t; p++) o += w[p] / sum * vr[((size_t)p * NKV + (size_t)kvh) * HD + (size_t)d];
                        double e = fabs(o - out[((size_t)t * NH + (size_t)h) * HD + (size_t)d]);
                        if (e > worst) worst = e;
                    }
                }
            CHECKF(worst < 1e-5, "%s window %d%s: attention off by %.3g", lm_dtype_name(types[ti]), window,
                   sk ? " sinks" : "", worst);
            for (int t = 0; t < P; t++) { /* every query: prompts block them, a query alone is not */
                CHECK(be->ops->attention(be, one, q + (size_t)t * NH * HD, &kc, &vc, 1, t, NH, NKV, HD, sc, window, sk) == 0);
                CHECKF(!memcmp(one, out + (size_t)t * NH * HD, sizeof(float) * NH * HD), "%s: query %d alone differs",
                       lm_dtype_name(types[ti]), t);
            }
            free(kc.data), free(kc.scales), free(vc.data), free(vc.scales);
        }
    free(k), free(v), free(q), free(out), free(one), free(kr), free(vr);
    lm_backend_free(be);
}

static void attention_scalar(void) { attention_tiled("scalar"); }
static void attention_auto(void) { attention_tiled(NULL); }

/* matmul_batch: each product bit-identical to matmul of it alone (mixed types). */
static void matmul_batch_equals_single(void) {
    char err[LM_ERR_LEN];
    const char *names[] = {"scalar", "avx512", "avx2", "neon"};
    for (size_t ti = 0; ti < sizeof names / sizeof names[0]; ti++) {
        lm_backend *be;
        if (lm_backend_cpu_create_with(&be, 3, names[ti], err) != 0) continue;
        test_mat t[3];
        make_mat(&t[0], 13, 256, LM_DT_BF16, 4, 64);
        make_mat(&t[1], 21, 100, LM_DT_F16, 0, 0);
        make_mat(&t[2], 33, 384, LM_DT_F32, 8, 128);
        int n = 5;
        float *x[3], *ym[3], *y1[3];
        lm_matmul_item items[3];
        for (int i = 0; i < 3; i++) {
            x[i] = malloc(sizeof(float) * (size_t)n * (size_t)t[i].m.cols);
            ym[i] = malloc(sizeof(float) * (size_t)n * (size_t)t[i].m.rows);
            y1[i] = malloc(sizeof(float) * (size_t)n * (size_t)t[i].m.rows);
            for (int k = 0; k < n * t[i].m.cols; k++) x[i][k] = (float)urand();
            items[i] = (lm_matmul_item){ym[i], &t[i].m, x[i], n};
        }
        be->ops->matmul_batch(be, items, 3);
        for (int i = 0; i < 3; i++) {
            be->ops->matmul(be, y1[i], &t[i].m, x[i], n);
            CHECKF(!memcmp(ym[i], y1[i], sizeof(float) * (size_t)n * (size_t)t[i].m.rows), "%s: item %d differs",
                   names[ti], i);
            free(x[i]), free(ym[i]), free(y1[i]);
            free_mat(&t[i]);
        }
        lm_backend_free(be);
    }
}

/* ---- int8 activations (cpu_kernels.h: lm_act8) ---------------------------------- */

#include "kernels/cpu/cpu_kernels.h"

/* The widest input of the shapes above, for lm_backend_cpu_set_act_bits. */
#define ACT8_MAX_COLS 8288

/* The int8 tests run every table as this CPU would, then the AVX2 and NEON tables
 * again as on a CPU without their dot-product instructions (they check
 * lm_cpu_features() per call), which are hidden for that. */
static const struct {
    const char *table;
    unsigned hide;
    const char *way;
} act8_runs[] = {{"scalar", 0, ""},
                 {"avx512", 0, ""},
                 {"avx2", 0, ""},
                 {"neon", 0, ""},
                 {"avx2", LM_CPU_AVXVNNI, " (no AVX-VNNI)"},
                 {"neon", LM_CPU_DOTPROD, " (no SDOT)"}};

/* The quantized values of one group, from the definition in cpu_kernels.h
 * (f32 step 127 / max|x|, product rounded to nearest with ties to even). */
static void ref_quantize(const float *x, int gs, int *q, double *dx, double *xsum) {
    float amax = 0;
    double sum = 0;
    for (int i = 0; i < gs; i++) {
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]);
        sum += x[i];
    }
    float inv = amax > 0 ? 127.0f / amax : 0.0f;
    for (int i = 0; i < gs; i++) q[i] = (int)nearbyint((double)(x[i] * inv));
    *dx = (double)(amax / 127.0f);
    *xsum = sum;
}

/* Affine q of element (r, c) from the bit stream. */
static unsigned ref_q(const lm_mat *m, int r, int c) {
    size_t i = (size_t)r * (size_t)m->cols + (size_t)c;
    const uint8_t *b = m->data;
    unsigned q = 0;
    for (int k = 0; k < m->bits; k++) {
        size_t bit = i * (size_t)m->bits + (size_t)k;
        q |= (unsigned)((b[bit / 8] >> (bit % 8)) & 1u) << k;
    }
    return q;
}

static void act8_quantize_layout(void) {
    enum { COLS = 320, GS = 64, NG = COLS / GS, BLOCK = 128 };
    float x[2 * COLS];
    for (int i = 0; i < 2 * COLS; i++) x[i] = (float)urand() * (i % 7 == 0 ? 9.0f : 1.0f);
    for (int i = 64; i < 128; i++) x[i] = 0; /* an all-zero group */
    x[200] = 3.5f * (1.0f / 127.0f) * 4.0f;  /* not a tie in general; ties come from the random values */
    size_t stride = 384; /* COLS rounded up to the 128-block, then to 64 bytes */
    int8_t q[2 * 384];
    float dx[2 * (NG + 16)], xs[2 * (NG + 16)];
    memset(q, 0x55, sizeof q);
    lm_act8_quantize(x, 2, COLS, GS, BLOCK, q, stride, dx, xs, NG + 16);
    for (int t = 0; t < 2; t++)
        for (int g = 0; g < NG; g++) {
            int rq[GS];
            double rdx, rsum;
            ref_quantize(x + t * COLS + g * GS, GS, rq, &rdx, &rsum);
            CHECKF(dx[t * (NG + 16) + g] == (float)rdx, "token %d group %d: step %g, expected %g", t, g,
                   (double)dx[t * (NG + 16) + g], rdx);
            CHECKF(fabs(xs[t * (NG + 16) + g] - rsum) <= 1e-5 * (1 + fabs(rsum)), "token %d group %d: sum %g vs %g", t,
                   g, (double)xs[t * (NG + 16) + g], rsum);
            for (int i = 0; i < GS; i++) {
                int c = g * GS + i, base = c / BLOCK * BLOCK, j = c - base;
                int pos = base + ((j & 1) ? BLOCK / 2 + j / 2 : j / 2);
                if (q[t * stride + (size_t)pos] != rq[i]) {
                    CHECKF(0, "token %d column %d: q %d, expected %d (stored at %d)", t, c, q[t * stride + (size_t)pos],
                           rq[i], pos);
                    return;
                }
                CHECK(rq[i] >= -127 && rq[i] <= 127);
            }
        }
    /* Padding: the half-filled last block (64 of 128 values) and the row's tail. */
    for (int t = 0; t < 2; t++) {
        for (int j = 32; j < 64; j++) CHECK(q[t * stride + 256 + j] == 0 && q[t * stride + 256 + 64 + j] == 0);
        for (int g = NG; g < NG + 16; g++) CHECK(dx[t * (NG + 16) + g] == 0 && xs[t * (NG + 16) + g] == 0);
    }
}

/* A table's tile functions for attention give what its dot and axpy loops give, bit
 * for bit: head sizes with and without a tail of a vector, short and full tiles,
 * rows apart in a cache of several heads. */
static void attention_rows_match_loops(void) {
    const lm_cpu_kernels *simd[] = {&lm_cpu_kernels_avx512, &lm_cpu_kernels_avx2, &lm_cpu_kernels_neon};
    static const int hds[] = {128, 64, 256, 40, 80, 17, 200};
    static const int cnts[] = {64, 1, 3, 4, 5, 17, 63};
    enum { MAXN = 256, MAXR = 64, STRIDE = 4 * MAXN + 3 };
    float *x = malloc(sizeof(float) * MAXR * STRIDE), q[MAXN], e[MAXR], y0[MAXN], y1[MAXN], s0[MAXR], s1[MAXR];
    float q2[MAXN], e2[MAXR];
    for (int i = 0; i < MAXR * STRIDE; i++) x[i] = (float)urand() * 2;
    uint16_t *xh = malloc(sizeof(uint16_t) * MAXR * STRIDE); /* an f16 cache, and it widened */
    float *xw = malloc(sizeof(float) * MAXR * STRIDE);
    for (int i = 0; i < MAXR * STRIDE; i++) xh[i] = lm_f32_to_f16(x[i]), xw[i] = lm_f16_to_f32(xh[i]);
    for (int i = 0; i < MAXN; i++) q[i] = (float)urand();
    for (int r = 0; r < MAXR; r++) e[r] = (float)urand() + 0.5f;
    for (int i = 0; i < MAXN; i++) q2[i] = (float)urand();
    for (int r = 0; r < MAXR; r++) e2[r] = (float)urand() + 0.5f;
    int compared = 0;
    for (size_t ti = 0; ti < sizeof simd / sizeof simd[0]; ti++) {
        const lm_cpu_kernels *k = simd[ti];
        if (!k->available() || (!(k->dot_rows && k->axpy_rows) && !k->dot_rows_f16)) continue;
        for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
            for (size_t ci = 0; ci < sizeof cnts / sizeof cnts[0]; ci++)
                for (int sp = 0; sp < 2; sp++) {
                    int n = hds[hi], cnt = cnts[ci];
                    size_t stride = sp ? STRIDE : (size_t)n; /* rows of a widened tile, or of the cache */
                    const float *xs = x + (sp ? 7 : 0);
                    if (k->dot_rows) { /* the f32 tile functions */
                        for (int r = 0; r < cnt; r++) s0[r] = k->dot(xs + (size_t)r * stride, q, n);
                        k->dot_rows(s1, q, xs, stride, cnt, n);
                        CHECKF(!memcmp(s0, s1, sizeof(float) * (size_t)cnt), "%s dot_rows: n %d cnt %d stride %zu differs",
                               k->name, n, cnt, stride);
                        for (int i = 0; i < n; i++) y0[i] = y1[i] = (float)urand();
                        for (int r = 0; r < cnt; r++) k->axpy(y0, e[r], xs + (size_t)r * stride, n);
                        k->axpy_rows(y1, e, xs, stride, cnt, n);
                        CHECKF(!memcmp(y0, y1, sizeof(float) * (size_t)n), "%s axpy_rows: n %d cnt %d stride %zu differs",
                               k->name, n, cnt, stride);
                        if (k->dot_rows2 && k->axpy_rows2) { /* two heads at once: each what one gives */
                            const float *qb = q2 + (MAXN - n);
                            float s2[MAXR], s3[MAXR], y2[MAXN], y3[MAXN];
                            for (int r = 0; r < cnt; r++) s0[r] = k->dot(xs + (size_t)r * stride, qb, n);
                            k->dot_rows2(s1, s2, q, qb, xs, stride, cnt, n);
                            k->dot_rows(s3, q, xs, stride, cnt, n);
                            CHECKF(!memcmp(s3, s1, sizeof(float) * (size_t)cnt) && !memcmp(s0, s2, sizeof(float) * (size_t)cnt),
                                   "%s dot_rows2: n %d cnt %d stride %zu differs", k->name, n, cnt, stride);
                            for (int i = 0; i < n; i++) y0[i] = y1[i] = (float)urand(), y2[i] = y3[i] = (float)urand();
                            for (int r = 0; r < cnt; r++) k->axpy(y0, e[r], xs + (size_t)r * stride, n);
                            for (int r = 0; r < cnt; r++) k->axpy(y2, e2[r], xs + (size_t)r * stride, n);
                            k->axpy_rows2(y1, y3, e, e2, xs, stride, cnt, n);
                            CHECKF(!memcmp(y0, y1, sizeof(float) * (size_t)n) && !memcmp(y2, y3, sizeof(float) * (size_t)n),
                                   "%s axpy_rows2: n %d cnt %d stride %zu differs", k->name, n, cnt, stride);
                        }
                    }
                    if (k->dot_rows_f16) { /* an f16 cache read in place: what the loops give on it widened */
                        const uint64_t saved_rng = rng; /* the other cases' random values stay what they were */
                        const float *qb = q2 + (MAXN - n);
                        const uint16_t *hs = xh + (sp ? 7 : 0);
                        const float *ws = xw + (sp ? 7 : 0); /* the same rows widened, same stride */
                        float s2[MAXR], s3[MAXR], s4[MAXR], y2[MAXN], y3[MAXN], y4[MAXN], y5[MAXN];
                        for (int r = 0; r < cnt; r++)
                            s0[r] = k->dot(ws + (size_t)r * stride, q, n), s2[r] = k->dot(ws + (size_t)r * stride, qb, n);
                        k->dot_rows_f16(s1, q, hs, stride, cnt, n);
                        CHECKF(!memcmp(s0, s1, sizeof(float) * (size_t)cnt), "%s dot_rows_f16: n %d cnt %d stride %zu differs",
                               k->name, n, cnt, stride);
                        k->dot_rows2_f16(s3, s4, q, qb, hs, stride, cnt, n);
                        CHECKF(!memcmp(s0, s3, sizeof(float) * (size_t)cnt) && !memcmp(s2, s4, sizeof(float) * (size_t)cnt),
                               "%s dot_rows2_f16: n %d cnt %d stride %zu differs", k->name, n, cnt, stride);
                        for (int i = 0; i < n; i++) y4[i] = (float)urand(), y5[i] = (float)urand(); /* starting values */
                        memcpy(y0, y4, sizeof(float) * (size_t)n), memcpy(y1, y4, sizeof(float) * (size_t)n);
                        memcpy(y2, y5, sizeof(float) * (size_t)n), memcpy(y3, y5, sizeof(float) * (size_t)n);
                        for (int r = 0; r < cnt; r++) k->axpy(y0, e[r], ws + (size_t)r * stride, n);
                        for (int r = 0; r < cnt; r++) k->axpy(y2, e2[r], ws + (size_t)r * stride, n);
                        k->axpy_rows_f16(y1, e, hs, stride, cnt, n);
                        CHECKF(!memcmp(y0, y1, sizeof(float) * (size_t)n), "%s axpy_rows_f16: n %d cnt %d stride %zu differs",
                               k->name, n, cnt, stride);
                        memcpy(y1, y4, sizeof(float) * (size_t)n);
                        k->axpy_rows2_f16(y1, y3, e, e2, hs, stride, cnt, n);
                        CHECKF(!memcmp(y0, y1, sizeof(float) * (size_t)n) && !memcmp(y2, y3, sizeof(float) * (size_t)n),
                               "%s axpy_rows2_f16: n %d cnt %d stride %zu differs", k->name, n, cnt, stride);
                        rng = saved_rng;
                    }
                    compared++;
                }
    }
    free(x), free(xh), free(xw);
    if (!compared) printf("# no SIMD attention tile functions on this CPU: nothing to compare\n");
    CHECK(compared > 0 || !lm_cpu_kernels_avx512.available());
}

/* The attention op with a SIMD table against the per-head loop it replaced, bit for
 * bit: each (token, head) alone, keys in tiles of min(64, 8192 / head size) from its
 * first visible position, the table's dot and axpy one key at a time, its attn_exp. The
 * op shares each key and value load between two heads of a kv group, gives a task
 * several kv heads when there are few queries (decode), blocks the queries, reads an
 * f16 cache in place for a block of one token (decode, windows) and takes the scale
 * and maximum of the scores in SIMD; none of that may change a bit. Head groups of 1 to 8 (odd ones leave a head alone), head
 * sizes with a vector tail, one query and a prompt, a window and sinks, 1 to 3 threads,
 * f32 and f16 caches. */
static void attention_ref_head(const lm_cpu_kernels *k, float *o, const float *q, const float *kr, const float *vr,
                               int pos, int n_kv, int kvh, int hd, float scale, int window, const float *sink) {
    int tile = 8192 / hd < 1 ? 1 : (8192 / hd > 64 ? 64 : 8192 / hd);
    int first = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    float m = -INFINITY, l = 0, s[64];
    for (int d = 0; d < hd; d++) o[d] = 0;
    for (int p0 = first; p0 <= pos; p0 += tile) {
        int cnt = pos - p0 + 1 < tile ? pos - p0 + 1 : tile;
        float mt = m;
        for (int r = 0; r < cnt; r++) {
            s[r] = k->dot(kr + ((size_t)(p0 + r) * (size_t)n_kv + (size_t)kvh) * (size_t)hd, q, hd);
            s[r] *= scale;
            mt = s[r] > mt ? s[r] : mt;
        }
        if (mt > m) {
            float corr = lm_attn_exp(m - mt);
            l *= corr;
            for (int d = 0; d < hd; d++) o[d] *= corr;
            m = mt;
        }
        if (k->attn_exp) l += k->attn_exp(s, cnt, m);
        else
            for (int r = 0; r < cnt; r++) {
                s[r] = lm_attn_exp(s[r] - m);
                l += s[r];
            }
        for (int r = 0; r < cnt; r++) k->axpy(o, s[r], vr + ((size_t)(p0 + r) * (size_t)n_kv + (size_t)kvh) * (size_t)hd, hd);
    }
    if (sink) {
        if (*sink > m) {
            float corr = lm_attn_exp(m - *sink);
            l *= corr;
            for (int d = 0; d < hd; d++) o[d] *= corr;
            m = *sink;
        }
        l += lm_attn_exp(*sink - m);
    }
    float inv = 1.0f / l;
    for (int d = 0; d < hd; d++) o[d] *= inv;
}

static void attention_matches_head_loop(void) {
    static const struct {
        int nh, nkv, hd;
    } heads[] = {{32, 4, 128}, {6, 2, 40}, {15, 3, 17}, {7, 7, 64}, {16, 2, 80}, {4, 1, 256}};
    static const int threads[] = {1, 2, 3};
    enum { P = 150, MAXH = 32, MAXHD = 256, PROMPT = 70 };
    const lm_cpu_kernels *simd[] = {&lm_cpu_kernels_avx512, &lm_cpu_kernels_avx2, &lm_cpu_kernels_neon};
    char err[LM_ERR_LEN];
    float *kf = malloc(sizeof(float) * P * MAXH * MAXHD), *vf = malloc(sizeof(float) * P * MAXH * MAXHD);
    float *q = malloc(sizeof(float) * PROMPT * MAXH * MAXHD), *out = malloc(sizeof(float) * PROMPT * MAXH * MAXHD);
    float *kr = malloc(sizeof(float) * P * MAXH * MAXHD), *vr = malloc(sizeof(float) * P * MAXH * MAXHD);
    float ref[MAXHD], sinks[MAXH];
    for (int i = 0; i < P * MAXH * MAXHD; i++) kf[i] = (float)urand() * 2, vf[i] = (float)urand();
    for (int i = 0; i < PROMPT * MAXH * MAXHD; i++) q[i] = (float)urand();
    for (int h = 0; h < MAXH; h++) sinks[h] = 0.3f * (float)(h % 7) - 1.0f;
    int compared = 0;
    for (size_t ti = 0; ti < sizeof simd / sizeof simd[0]; ti++) {
        if (!simd[ti]->available()) continue;
        for (size_t si = 0; si < sizeof heads / sizeof heads[0]; si++)
            for (int dt = 0; dt < 2; dt++)
                for (int variant = 0; variant < 3; variant++) {
                    int nh = heads[si].nh, nkv = heads[si].nkv, hd = heads[si].hd, window = variant == 1 ? 50 : 0;
                    const float *sk = variant == 2 ? sinks : NULL;
                    size_t kvn = (size_t)P * (size_t)nkv * (size_t)hd;
                    lm_kv kc = {dt ? LM_DT_F16 : LM_DT_F32, malloc(kvn * 4), NULL};
                    lm_kv vc = {kc.dtype, malloc(kvn * 4), NULL};
                    float sc = 1.0f / sqrtf((float)hd);
                    for (size_t ci = 0; ci < sizeof threads / sizeof threads[0]; ci++) {
                        lm_backend *be;
                        CHECKF(lm_backend_cpu_create_with(&be, threads[ci], simd[ti]->name, err) == 0, "%s", err);
                        if (!be) continue;
                        if (ci == 0) {
                            be->ops->kv_store(be, &kc, 0, kf, P, nkv, hd);
                            be->ops->kv_store(be, &vc, 0, vf, P, nkv, hd);
                            for (size_t i = 0; i < kvn; i++) /* the cache's values, widened exactly */
                                kr[i] = dt ? lm_f16_to_f32(((uint16_t *)kc.data)[i]) : ((float *)kc.data)[i],
                                vr[i] = dt ? lm_f16_to_f32(((uint16_t *)vc.data)[i]) : ((float *)vc.data)[i];
                        }
                        /* a prompt of PROMPT tokens ending at the last position, then one query there */
                        for (int call = 0; call < 2; call++) {
                            int n = call ? 1 : PROMPT, pos0 = P - n;
                            CHECK(be->ops->attention(be, out, q, &kc, &vc, n, pos0, nh, nkv, hd, sc, window, sk) == 0);
                            int bad = 0;
                            for (int t = 0; t < n && !bad; t++)
                                for (int h = 0; h < nh && !bad; h++) {
                                    size_t at = ((size_t)t * (size_t)nh + (size_t)h) * (size_t)hd;
                                    attention_ref_head(simd[ti], ref, q + at, kr, vr, pos0 + t, nkv, h / (nh / nkv), hd,
                                                       sc, window, sk ? sk + h : NULL);
                                    bad = memcmp(ref, out + at, sizeof(float) * (size_t)hd) != 0;
                                    CHECKF(!bad, "%s %s heads %d/%d size %d, %d threads, %d queries%s%s: token %d head %d",
                                           simd[ti]->name, lm_dtype_name(kc.dtype), nh, nkv, hd, threads[ci], n,
                                           window ? ", window" : "", sk ? ", sinks" : "", t, h);
                                }
                            compared++;
                        }
                        lm_backend_free(be);
                    }
                    free(kc.data), free(vc.data);
                }
    }
    free(kf), free(vf), free(q), free(out), free(kr), free(vr);
    if (!compared) printf("# no SIMD table on this CPU: nothing to compare\n");
}

/* Each table's attn_scale_max gives the scalar loop's scaled scores bit for bit and its
 * maximum (by value: the sign of a zero maximum may differ, which the softmax cannot
 * see), over every length of a tile, with NaNs, infinities, zeros and ties among them,
 * starting from -inf or from a running maximum. */
static void attention_scale_max_matches_loop(void) {
    enum { MAXR = 64 };
    const lm_cpu_kernels *simd[] = {&lm_cpu_kernels_avx512, &lm_cpu_kernels_avx2, &lm_cpu_kernels_neon};
    const float starts[] = {-INFINITY, 0.25f, -3.0f, 40.0f};
    float x[MAXR], want[MAXR], got[MAXR];
    const uint64_t saved_rng = rng; /* the other cases' random values stay what they were */
    int compared = 0;
    for (size_t ti = 0; ti < sizeof simd / sizeof simd[0]; ti++) {
        const lm_cpu_kernels *k = simd[ti];
        if (!k->available() || !k->attn_scale_max) continue;
        for (int trial = 0; trial < 40; trial++)
            for (int cnt = 1; cnt <= MAXR; cnt++) {
                for (int r = 0; r < MAXR; r++) x[r] = (float)urand() * 30.0f;
                if (trial % 4 == 1) x[(trial * 7) % cnt] = NAN, x[(trial * 3) % cnt] = -INFINITY;
                if (trial % 4 == 2) /* ties and zeros */
                    for (int r = 0; r < cnt; r++) x[r] = r % 3 == 0 ? 0.0f : (r % 3 == 1 ? -0.0f : -1.5f);
                if (trial % 4 == 3) x[cnt - 1] = 1e30f, x[0] = INFINITY * (trial % 8 == 3 ? 1.0f : -1.0f);
                float scale = trial % 5 == 4 ? 1.0f : 0.08838834764831845f, m0 = starts[trial % 4];
                float mx = m0;
                for (int r = 0; r < cnt; r++) {
                    want[r] = x[r] * scale;
                    mx = want[r] > mx ? want[r] : mx;
                }
                memcpy(got, x, sizeof got);
                float m = k->attn_scale_max(got, cnt, scale, m0);
                int same = !memcmp(got, want, sizeof(float) * (size_t)cnt) &&
                           !memcmp(got + cnt, x + cnt, sizeof(float) * (size_t)(MAXR - cnt)); /* past cnt untouched */
                CHECKF(same, "%s attn_scale_max: cnt %d trial %d: scores differ", k->name, cnt, trial);
                CHECKF(m == mx || (m != m && mx != mx), "%s attn_scale_max: cnt %d trial %d: max %g, loop %g", k->name, cnt,
                       trial, (double)m, (double)mx);
                compared++;
            }
    }
    rng = saved_rng;
    if (!compared) printf("# no SIMD attn_scale_max on this CPU: nothing to compare\n");
    CHECK(compared > 0 || !lm_cpu_kernels_avx512.available());
}

/* Attention's exponential: every table's attn_exp gives lm_attn_exp's bits (over the
 * whole range, the cut-offs, infinities, NaN, every tail length), and lm_attn_exp is
 * within 2 ulp of exp where the result is a normal float. */
static void attention_exp_matches_definition(void) {
    enum { N = 4096 };
    static float x[N], e[N], want[N];
    int k = 0;
    for (int i = 0; k < N - 40 && i < 3600; i++) x[k++] = -100.0f + 0.0527f * (float)i; /* -100 .. 89.7 */
    const float special[] = {-INFINITY, INFINITY, NAN, -0.0f, 0.0f, -87.0f, nextafterf(-87.0f, -100.0f), 88.0f, 88.5f,
                             -86.9999f, -1e-30f, 1e-30f, -0.34657359f, 0.34657359f, -103.0f, 1e30f, -1e30f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) x[k++] = special[i];
    while (k < N) x[k++] = (float)urand() * 90.0f;
    const float ms[] = {0.0f, 3.5f, -2.25f};
    const lm_cpu_kernels *simd[] = {&lm_cpu_kernels_avx512, &lm_cpu_kernels_avx2, &lm_cpu_kernels_neon};
    int compared = 0;
    for (size_t ti = 0; ti < sizeof simd / sizeof simd[0]; ti++) {
        if (!simd[ti]->available() || !simd[ti]->attn_exp) continue;
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            for (int i = 0; i < N; i++) want[i] = lm_attn_exp(x[i] - ms[mi]);
            for (int cnt = 1; cnt <= 64; cnt++) /* tails of every length */
                for (int at = 0; at + cnt <= N; at += 509) {
                    memcpy(e, x + at, sizeof(float) * (size_t)cnt);
                    float sum = simd[ti]->attn_exp(e, cnt, ms[mi]);
                    CHECKF(!memcmp(e, want + at, sizeof(float) * (size_t)cnt), "%s attn_exp: cnt %d at %d m %g differs",
                           simd[ti]->name, cnt, at, (double)ms[mi]);
                    double ref = 0, mag = 0; /* the sum, in the table's order: to f32 rounding */
                    for (int r = 0; r < cnt; r++) ref += want[at + r], mag += fabs(want[at + r]);
                    CHECKF(ref != ref || mag > 1e38 || fabs(sum - ref) <= 4e-7 * cnt * mag, "%s attn_exp sum %g, not %g",
                           simd[ti]->name, (double)sum, ref);
                }
            memcpy(e, x, sizeof e);
            simd[ti]->attn_exp(e, N, ms[mi]);
            CHECKF(!memcmp(e, want, sizeof e), "%s attn_exp: %d values, m %g differ", simd[ti]->name, N, (double)ms[mi]);
            compared++;
        }
    }
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double ref = exp((double)x[i]);
        float got = lm_attn_exp(x[i]);
        if (x[i] != x[i]) {
            CHECK(got != got);
        } else if (x[i] < -87.0f) {
            CHECK(got == 0.0f);
        } else if (x[i] > 88.0f) {
            CHECK(got == lm_attn_exp(88.0f) && got > 1e38f);
        } else if (ref >= 1.1754943508222875e-38) {
            double ulp = ldexp(1.0, ilogb(ref) - 23), err = fabs((double)got - ref) / ulp;
            if (err > worst) worst = err;
        }
    }
    printf("# lm_attn_exp: %d SIMD comparisons, worst %.2f ulp against exp\n", compared, worst);
    CHECKF(worst <= 2.0, "lm_attn_exp %.2f ulp off exp", worst);
    CHECK(lm_attn_exp(0.0f) == 1.0f && lm_attn_exp(-INFINITY) == 0.0f);
}

/* A table's SIMD quantizer must give lm_act8_quantize's bytes exactly: the int8
 * definition is shared by every table. Zeros, NaN, infinities, huge values,
 * halfway cases, a partial 128-block and the padding are compared bit for bit. */
static void act8_simd_quantize_matches_reference(void) {
    static const struct { int cols, gs, block; } cases[] = {
        {320, 64, 128}, {2048, 64, 128}, {96, 32, 128}, {512, 128, 128}, {8288, 32, 128}, {384, 64, 0}, {200, 40, 0}};
    const lm_cpu_kernels *simd[] = {&lm_cpu_kernels_avx512, &lm_cpu_kernels_avx2, &lm_cpu_kernels_neon};
    int compared = 0;
    for (size_t ti = 0; ti < sizeof simd / sizeof simd[0]; ti++) {
        const lm_cpu_kernels *k = simd[ti];
        if (!k->available() || !k->act8_quantize) continue;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const int n = 5, cols = cases[ci].cols, gs = cases[ci].gs, ng = cols / gs, ngs = ng + LM_ACT8_PAD;
            const size_t qs = ((size_t)cols + 255) / 128 * 128;
            float *x = malloc(sizeof(float) * (size_t)n * (size_t)cols);
            int8_t *q[2] = {malloc((size_t)n * qs), malloc((size_t)n * qs)};
            float *d[2] = {malloc(sizeof(float) * (size_t)n * (size_t)ngs), malloc(sizeof(float) * (size_t)n * (size_t)ngs)};
            float *sm[2] = {malloc(sizeof(float) * (size_t)n * (size_t)ngs), malloc(sizeof(float) * (size_t)n * (size_t)ngs)};
            for (size_t i = 0; i < (size_t)n * (size_t)cols; i++) x[i] = (float)urand() * (i % 11 == 0 ? 50.0f : 1.0f);
            for (int i = 0; i < gs; i++) x[gs + i] = 0;               /* an all-zero group */
            x[3] = NAN, x[cols + 16] = NAN, x[cols + 7] = INFINITY, x[2 * cols + 1] = -INFINITY; /* tokens 0-2 */
            x[3 * cols] = 3e38f, x[3 * cols + 1] = -3e38f;               /* near the top of f32 */
            for (int i = 0; i < gs; i++) x[4 * cols + i] = (float)(i - gs / 2) * 0.5f; /* halfway products */
            x[4 * cols] = 127.0f;
            for (int w = 0; w < 2; w++) {
                memset(q[w], 0x5a, (size_t)n * qs);
                (w ? k->act8_quantize : lm_act8_quantize)(x, n, cols, gs, cases[ci].block, q[w], qs, d[w], sm[w], ngs);
            }
            CHECKF(!memcmp(q[0], q[1], (size_t)n * qs), "%s quantizer: cols %d gs %d block %d: bytes differ", k->name,
                   cols, gs, cases[ci].block);
            CHECKF(!memcmp(d[0], d[1], sizeof(float) * (size_t)n * (size_t)ngs) &&
                       !memcmp(sm[0], sm[1], sizeof(float) * (size_t)n * (size_t)ngs),
                   "%s quantizer: cols %d gs %d: steps or sums differ", k->name, cols, gs);
            compared++;
            free(x), free(q[0]), free(q[1]), free(d[0]), free(d[1]), free(sm[0]), free(sm[1]);
        }
    }
    if (!compared) printf("# no SIMD quantizer on this CPU: nothing to compare\n");
    CHECK(compared > 0 || !lm_cpu_kernels_avx512.available());
}

/* y with int8 activations: every table (scalar included) against the definition
 * computed here in double from the bit stream and ref_quantize, to f32 rounding;
 * and against the f32 product within the quantization's own bound
 * sum_g |scale_g| * sum_i q_w,i * |x_i - dx_g * q_i|. */
static void act8_matches_definition_one(const char *name, const char *way, int *tested) {
    char err[LM_ERR_LEN];
    lm_backend *be;
    if (lm_backend_cpu_create_with(&be, 2, name, err) != 0) return;
    CHECKF(lm_backend_cpu_set_act_bits(be, 8, ACT8_MAX_COLS, err) == 0, "%s", err);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *sh = &shapes[si];
        if (!sh->bits) continue;
        test_mat t;
        make_mat(&t, sh->rows, sh->cols, sh->dt, sh->bits, sh->gs);
        int n = sh->cols > 4096 ? 5 : 70, ng = sh->cols / sh->gs; /* as in simd_matches_scalar */
        float *x = malloc(sizeof(float) * (size_t)n * (size_t)sh->cols);
        float *y = malloc(sizeof(float) * (size_t)n * (size_t)sh->rows);
        int *q = malloc(sizeof(int) * (size_t)sh->cols);
        double *dx = malloc(sizeof(double) * (size_t)ng), *xs = malloc(sizeof(double) * (size_t)ng);
        for (size_t i = 0; i < (size_t)n * (size_t)sh->cols; i++)
            x[i] = (float)urand() * (i % 13 == 0 ? 6.0f : 1.0f); /* some outliers */
        be->ops->matmul(be, y, &t.m, x, n);
        double worst_def = 0, worst_bound = 0;
        for (int tok = 0; tok < n; tok++) {
            const float *xt = x + (size_t)tok * (size_t)sh->cols;
            for (int g = 0; g < ng; g++) ref_quantize(xt + g * sh->gs, sh->gs, q + g * sh->gs, &dx[g], &xs[g]);
            for (int r = 0; r < sh->rows; r++) {
                double def = 0, mag = 0, bound = 0, exact = 0;
                for (int g = 0; g < ng; g++) {
                    double s = lm_load_float(t.m.scales, t.m.qdtype, (size_t)r * (size_t)ng + (size_t)g);
                    double b = lm_load_float(t.m.biases, t.m.qdtype, (size_t)r * (size_t)ng + (size_t)g);
                    long long dot = 0;
                    double qerr = 0;
                    for (int i = 0; i < sh->gs; i++) {
                        int c = g * sh->gs + i;
                        unsigned w = ref_q(&t.m, r, c);
                        dot += (long long)w * q[c];
                        qerr += w * fabs((double)xt[c] - dx[g] * q[c]);
                        exact += ref_w(&t.m, r, c) * xt[c];
                    }
                    def += s * dx[g] * (double)dot + b * xs[g];
                    mag += fabs(s * dx[g] * (double)dot) + fabs(b * xs[g]);
                    bound += fabs(s) * qerr;
                }
                double got = y[(size_t)tok * (size_t)sh->rows + (size_t)r];
                double d = fabs(got - def) / (mag + 1e-30);
                double e = fabs(got - exact) / (bound + 4e-6 * mag + 1e-30);
                if (d > worst_def) worst_def = d;
                if (e > worst_bound) worst_bound = e;
            }
        }
        CHECKF(worst_def <= 2e-6, "%s%s act8 %dx%d bits %d g%d: relative error %.3g vs the definition", name, way,
               sh->rows, sh->cols, sh->bits, sh->gs, worst_def);
        CHECKF(worst_bound <= 1.0, "%s%s act8 %dx%d bits %d g%d: error %.3g of the quantization bound", name, way,
               sh->rows, sh->cols, sh->bits, sh->gs, worst_bound);
        free(x), free(y), free(q), free(dx), free(xs);
        free_mat(&t);
    }
    lm_backend_free(be);
    (*tested)++;
}

static void act8_matches_definition(void) {
    int tested = 0;
    for (size_t i = 0; i < sizeof act8_runs / sizeof act8_runs[0]; i++) {
        lm_cpu_features_hide(act8_runs[i].hide);
        act8_matches_definition_one(act8_runs[i].table, act8_runs[i].way, &tested);
    }
    lm_cpu_features_hide(0);
    CHECK(tested >= 2); /* scalar and at least one SIMD table on x86-64 / AArch64 */
}

/* int8 activations keep the batching and thread-count invariance (lazy == resident),
 * and matmul_batch (two items sharing an input, one float item) equals single calls. */
static void act8_bit_identical_one(const char *name, const char *way) {
    char err[LM_ERR_LEN];
    lm_backend *one, *three;
    if (lm_backend_cpu_create_with(&one, 1, name, err) != 0) return;
    CHECK(lm_backend_cpu_create_with(&three, 3, name, err) == 0);
    CHECK(lm_backend_cpu_set_act_bits(one, 8, ACT8_MAX_COLS, err) == 0 &&
          lm_backend_cpu_set_act_bits(three, 8, ACT8_MAX_COLS, err) == 0);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *sh = &shapes[si];
        if (!sh->bits) continue;
        test_mat t;
        make_mat(&t, sh->rows, sh->cols, sh->dt, sh->bits, sh->gs);
        int n = 67;
        size_t ny = (size_t)n * (size_t)sh->rows;
        float *x = malloc(sizeof(float) * (size_t)n * (size_t)sh->cols);
        float *ya = malloc(sizeof(float) * ny), *yb = malloc(sizeof(float) * ny);
        for (size_t i = 0; i < (size_t)n * (size_t)sh->cols; i++) x[i] = (float)urand();
        one->ops->matmul(one, ya, &t.m, x, n);
        three->ops->matmul(three, yb, &t.m, x, n);
        CHECKF(!memcmp(ya, yb, sizeof(float) * ny), "%s%s act8 %dx%d: 1 vs 3 threads differ", name, way, sh->rows,
               sh->cols);
        for (int tok = 0; tok < n; tok += 7) {
            three->ops->matmul(three, yb, &t.m, x + (size_t)tok * (size_t)sh->cols, 1);
            CHECKF(!memcmp(yb, ya + (size_t)tok * (size_t)sh->rows, sizeof(float) * (size_t)sh->rows),
                   "%s%s act8 %dx%d bits %d: token %d alone differs", name, way, sh->rows, sh->cols, sh->bits, tok);
        }
        free(x), free(ya), free(yb);
        free_mat(&t);
    }
    test_mat t[3];
    make_mat(&t[0], 24, 256, LM_DT_BF16, 4, 64);
    make_mat(&t[1], 20, 256, LM_DT_BF16, 4, 64); /* shares item 0's input */
    make_mat(&t[2], 21, 100, LM_DT_F16, 0, 0);
    int n = 6;
    float *x0 = malloc(sizeof(float) * (size_t)n * 256), *x2 = malloc(sizeof(float) * (size_t)n * 100);
    for (int k = 0; k < n * 256; k++) x0[k] = (float)urand();
    for (int k = 0; k < n * 100; k++) x2[k] = (float)urand();
    float *ym[3], *y1[3];
    lm_matmul_item items[3];
    for (int i = 0; i < 3; i++) {
        ym[i] = malloc(sizeof(float) * (size_t)n * (size_t)t[i].m.rows);
        y1[i] = malloc(sizeof(float) * (size_t)n * (size_t)t[i].m.rows);
        items[i] = (lm_matmul_item){ym[i], &t[i].m, i == 2 ? x2 : x0, n};
    }
    three->ops->matmul_batch(three, items, 3);
    for (int i = 0; i < 3; i++) {
        three->ops->matmul(three, y1[i], &t[i].m, items[i].x, n);
        CHECKF(!memcmp(ym[i], y1[i], sizeof(float) * (size_t)n * (size_t)t[i].m.rows),
               "%s%s act8 batch: item %d differs", name, way, i);
        free(ym[i]), free(y1[i]);
        free_mat(&t[i]);
    }
    free(x0), free(x2);
    lm_backend_free(one);
    lm_backend_free(three);
}

static void act8_bit_identical(void) {
    for (size_t i = 0; i < sizeof act8_runs / sizeof act8_runs[0]; i++) {
        lm_cpu_features_hide(act8_runs[i].hide);
        act8_bit_identical_one(act8_runs[i].table, act8_runs[i].way);
    }
    lm_cpu_features_hide(0);
}

/* The AVX2 and NEON tables reach the same integer lanes with the dot-product
 * instructions (AVX-VNNI vpdpbusd, SDOT) and without them (widening multiplies),
 * so the two ways give bit-identical results. On a CPU without the instructions
 * only the plain way runs and there is nothing to compare. */
static void act8_dot_instructions_bit_identical(void) {
    char err[LM_ERR_LEN];
    const struct {
        const char *table;
        unsigned feature;
        const char *what;
    } ways[] = {{"avx2", LM_CPU_AVXVNNI, "AVX-VNNI"}, {"neon", LM_CPU_DOTPROD, "SDOT (dotprod)"}};
    for (size_t wi = 0; wi < sizeof ways / sizeof ways[0]; wi++) {
        lm_backend *be;
        if (lm_backend_cpu_create_with(&be, 2, ways[wi].table, err) != 0) continue;
        if (!(lm_cpu_features() & ways[wi].feature)) {
            printf("# %s int8: this CPU lacks %s, only the plain way ran\n", ways[wi].table, ways[wi].what);
            lm_backend_free(be);
            continue;
        }
        CHECKF(lm_backend_cpu_set_act_bits(be, 8, ACT8_MAX_COLS, err) == 0, "%s", err);
        int compared = 0;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const shape *sh = &shapes[si];
            if (!sh->bits) continue;
            test_mat t;
            make_mat(&t, sh->rows, sh->cols, sh->dt, sh->bits, sh->gs);
            int n = 9;
            size_t ny = (size_t)n * (size_t)sh->rows;
            float *x = malloc(sizeof(float) * (size_t)n * (size_t)sh->cols);
            float *ya = malloc(sizeof(float) * ny), *yb = malloc(sizeof(float) * ny);
            for (size_t i = 0; i < (size_t)n * (size_t)sh->cols; i++) x[i] = (float)urand() * (i % 11 == 0 ? 5.0f : 1.0f);
            be->ops->matmul(be, ya, &t.m, x, n);
            lm_cpu_features_hide(ways[wi].feature);
            be->ops->matmul(be, yb, &t.m, x, n);
            lm_cpu_features_hide(0);
            CHECKF(!memcmp(ya, yb, sizeof(float) * ny), "%s act8 %dx%d bits %d g%d: with and without %s differ",
                   ways[wi].table, sh->rows, sh->cols, sh->bits, sh->gs, ways[wi].what);
            compared++;
            free(x), free(ya), free(yb);
            free_mat(&t);
        }
        printf("# %s int8: %s and the plain way compared on %d shapes\n", ways[wi].table, ways[wi].what, compared);
        CHECK(compared > 0);
        lm_backend_free(be);
    }
}

static void act8_settings(void) {
    char err[LM_ERR_LEN];
    lm_backend *be;
    CHECK(lm_backend_cpu_create_with(&be, 1, "scalar", err) == 0);
    CHECK(lm_backend_cpu_set_act_bits(be, 4, 1024, err) == -1);
    CHECK_STR_CONTAINS(err, "choose 8 or 32");
    CHECK(lm_backend_cpu_set_act_bits(be, 8, 1024, err) == 0);
    CHECK(lm_backend_cpu_set_act_bits(be, 32, 1024, err) == 0);
    lm_backend_free(be);
}

/* Random ggml blocks of type dt with a small f16 scale at the head of each (the types
 * used below keep d there). */
static void make_blocks(test_mat *t, int rows, int cols, lm_dtype dt) {
    memset(t, 0, sizeof *t);
    t->m.rows = rows;
    t->m.cols = cols;
    t->m.dtype = dt;
    size_t rb = (size_t)lm_dtype_row_bytes(dt, (uint64_t)cols), bb = lm_dtype_block_bytes(dt);
    t->data = malloc(rb * (size_t)rows);
    for (size_t i = 0; i < rb * (size_t)rows; i++) ((uint8_t *)t->data)[i] = (uint8_t)(urand() * 128 + 128);
    uint16_t d = lm_f32_to_f16(0.01f);
    for (size_t b = 0; b < rb * (size_t)rows / bb; b++) memcpy((uint8_t *)t->data + b * bb, &d, 2);
    t->m.data = t->data;
}

/* lm_backend_cpu_set_act8_scope (the CPU beside a GPU run, --cpu-experts): int8 only for
 * products of at least min_tokens tokens of MLX weights of only_bits bits and of the
 * block types the GPU takes int8 for (Q4_0 here; IQ4_NL, int8 on the CPU alone, not),
 * f32 for the rest; each product the bits of an unscoped int8 or f32 backend, alone and
 * batched. */
static void act8_scope(void) {
    char err[LM_ERR_LEN];
    lm_backend *scoped, *a8, *f32;
    CHECK(lm_backend_cpu_create_with(&scoped, 2, NULL, err) == 0);
    CHECK(lm_backend_cpu_create_with(&a8, 2, NULL, err) == 0);
    CHECK(lm_backend_cpu_create_with(&f32, 2, NULL, err) == 0);
    CHECK(lm_backend_cpu_set_act_bits(scoped, 8, 256, err) == 0 && lm_backend_cpu_set_act_bits(a8, 8, 256, err) == 0);
    lm_backend_cpu_set_act8_scope(scoped, 8, 4);
    test_mat t4, t8, tq, ti;
    make_mat(&t4, 40, 256, LM_DT_BF16, 4, 64);
    make_mat(&t8, 24, 256, LM_DT_BF16, 8, 64);
    make_blocks(&tq, 36, 256, LM_DT_Q4_0);
    make_blocks(&ti, 20, 256, LM_DT_IQ4_NL);
    const test_mat *mats[4] = {&t4, &t8, &tq, &ti};
    static const char *const names[4] = {"4-bit", "8-bit", "q4_0", "iq4_nl"};
    float *x = malloc(sizeof(float) * 12 * 256), *y = malloc(sizeof(float) * 12 * 40), *w = malloc(sizeof(float) * 12 * 40);
    float *yb[2] = {malloc(sizeof(float) * 12 * 40), malloc(sizeof(float) * 12 * 40)};
    for (int k = 0; k < 12 * 256; k++) x[k] = (float)urand();
    static const int ns[] = {1, 7, 8, 12};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (int k = 0; k < 4; k++) {
            const lm_mat *W = &mats[k]->m;
            int n = ns[i], int8 = (k == 0 || k == 2) && n >= 8;
            size_t bytes = sizeof(float) * (size_t)n * (size_t)W->rows;
            CHECK(scoped->ops->matmul(scoped, y, W, x, n) == 0);
            lm_backend *ref = int8 ? a8 : f32;
            CHECK(ref->ops->matmul(ref, w, W, x, n) == 0);
            CHECKF(!memcmp(y, w, bytes), "%s, %d tokens: not the %s product", names[k], n, int8 ? "int8" : "f32");
            /* in a batch beside an item of the other kind */
            lm_matmul_item items[2] = {{yb[0], W, x, n}, {yb[1], &t4.m, x, 12}};
            CHECK(scoped->ops->matmul_batch(scoped, items, 2) == 0);
            CHECKF(!memcmp(yb[0], w, bytes), "%s, %d tokens, batched: not the %s product", names[k], n,
                   int8 ? "int8" : "f32");
        }
    /* the int8 and f32 products differ for each, so the checks above tell them apart */
    for (int k = 0; k < 4; k++) {
        CHECK(a8->ops->matmul(a8, y, &mats[k]->m, x, 8) == 0 && f32->ops->matmul(f32, w, &mats[k]->m, x, 8) == 0);
        CHECKF(memcmp(y, w, sizeof(float) * 8 * (size_t)mats[k]->m.rows) != 0, "%s: int8 = f32", names[k]);
    }
    free(x), free(y), free(w), free(yb[0]), free(yb[1]);
    free_mat(&t4), free_mat(&t8), free_mat(&tq), free_mat(&ti);
    lm_backend_free(scoped), lm_backend_free(a8), lm_backend_free(f32);
}

/* A batch like a layer's experts: 40 items of 4- and 8-bit matrices with 0 to 9
 * tokens each (empty items among them), pairs sharing an input, f32 and int8
 * activations: every product equals matmul of it alone. */
static void matmul_batch_many_items(void) {
    char err[LM_ERR_LEN];
    const char *names[] = {"scalar", "avx512", "avx2", "neon"};
    enum { N = 40 };
    test_mat t[N];
    float *x[N], *yb[N], *y1[N];
    lm_matmul_item items[N];
    for (int i = 0; i < N; i++) {
        make_mat(&t[i], 12 + 4 * (i % 5), 128, LM_DT_BF16, i % 3 ? 4 : 8, i % 2 ? 64 : 32);
        int n = (i * 7) % 10;
        x[i] = malloc(sizeof(float) * 10 * 128);
        yb[i] = malloc(sizeof(float) * 10 * (size_t)t[i].m.rows);
        y1[i] = malloc(sizeof(float) * 10 * (size_t)t[i].m.rows);
        for (int k = 0; k < 10 * 128; k++) x[i][k] = (float)urand();
        /* odd items share the previous item's input when the token counts agree */
        const float *xi = (i % 2 && (((i - 1) * 7) % 10) == n) ? x[i - 1] : x[i];
        items[i] = (lm_matmul_item){yb[i], &t[i].m, xi, n};
    }
    for (size_t ti = 0; ti < sizeof names / sizeof names[0]; ti++)
        for (int act = 32; act >= 8; act -= 24) {
            lm_backend *be;
            if (lm_backend_cpu_create_with(&be, 3, names[ti], err) != 0) continue;
            CHECK(lm_backend_cpu_set_act_bits(be, act, 128, err) == 0);
            be->ops->matmul_batch(be, items, N);
            for (int i = 0; i < N; i++) {
                be->ops->matmul(be, y1[i], &t[i].m, items[i].x, items[i].n);
                CHECKF(!memcmp(yb[i], y1[i], sizeof(float) * (size_t)items[i].n * (size_t)t[i].m.rows),
                       "%s act %d: item %d (%d tokens) differs", names[ti], act, i, items[i].n);
            }
            lm_backend_free(be);
        }
    for (int i = 0; i < N; i++) {
        free(x[i]), free(yb[i]), free(y1[i]);
        free_mat(&t[i]);
    }
}

/* The pool runs every task of every job exactly once, back to back, with more
 * threads than cores (workers are descheduled mid-job and wake up late). */
typedef struct {
    atomic_int hits[64];
    int spin;
} pool_ctx;

static void pool_task(void *ctx, int task) {
    pool_ctx *c = ctx;
    volatile int sink = 0;
    for (int i = 0; i < (task % 4) * c->spin; i++) sink += i;
    atomic_fetch_add(&c->hits[task], 1);
}

static void threadpool_each_task_once(void) {
    char err[LM_ERR_LEN];
    lm_pool *p;
    CHECK(lm_pool_create(&p, 7, err) == 0);
    pool_ctx c;
    int bad = 0;
    for (int run = 0; run < 20000 && !bad; run++) {
        int n = 1 + run % 64;
        for (int i = 0; i < 64; i++) atomic_init(&c.hits[i], 0);
        c.spin = run % 3 == 0 ? 200 : 0;
        lm_pool_run(p, n, pool_task, &c);
        for (int i = 0; i < 64; i++)
            if (atomic_load(&c.hits[i]) != (i < n)) {
                CHECKF(0, "run %d: task %d of %d ran %d times", run, i, n, atomic_load(&c.hits[i]));
                bad = 1;
                break;
            }
    }
    lm_pool_free(p);
}

static void kernel_selection(void) {
    char err[LM_ERR_LEN];
    lm_backend *be = NULL;
    CHECK(lm_backend_cpu_create_with(&be, 1, "sse9", err) == -1 && be == NULL);
    CHECK_STR_CONTAINS(err, "unknown kernels 'sse9'");
    CHECK(lm_backend_cpu_create_with(&be, 1, "scalar", err) == 0 && !strcmp(lm_backend_cpu_kernels(be), "scalar"));
    lm_backend_free(be);
    CHECK(lm_backend_cpu_create_with(&be, 1, NULL, err) == 0);
#if defined(__x86_64__) || defined(__aarch64__)
    CHECKF(strcmp(lm_backend_cpu_kernels(be), "scalar") != 0, "auto picked scalar on a SIMD machine");
#endif
    printf("# auto kernels: %s\n", lm_backend_cpu_kernels(be));
    lm_backend_free(be);
#if defined(__x86_64__)
    CHECK(lm_backend_cpu_create_with(&be, 1, "neon", err) == -1);
    CHECK_STR_CONTAINS(err, "which this CPU or build lacks");
#endif
}

/* MXFP4 (both layouts: Hugging Face's split codes / scales and ggml's 17-byte blocks)
 * in the SIMD rows (AVX2 on x86, NEON on AArch64) against the scalar reference: with
 * f32 activations within f32 rounding (2e-6 * sum |w x|) of it and of a double
 * dequantisation from the format's definition (value = twice-value code * 2^(E - 128));
 * with int8 activations its bits. Both layouts the same bits, a token alone the same
 * bits as in the batch, 1 and 3 threads alike. */
static void mxfp4_simd_matches_scalar(void) {
    static const int code2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    const uint64_t saved_rng = rng; /* the other cases' random matrices stay what they were */
    char err[LM_ERR_LEN];
    enum { ROWS = 37, COLS = 352, NG = COLS / 32, N = 7 };
    uint8_t *codes = malloc(ROWS * COLS / 2), *scales = malloc(ROWS * NG), *blocks = malloc(ROWS * NG * 17);
    for (int i = 0; i < ROWS * COLS / 2; i++) codes[i] = (uint8_t)(urand() * 128 + 128);
    for (int i = 0; i < ROWS * NG; i++) scales[i] = (uint8_t)(121 + (int)(urand() * 6)); /* 115..126 */
    for (int r = 0; r < ROWS; r++)
        for (int g = 0; g < NG; g++) { /* the same values as ggml blocks: value j low, j + 16 high */
            const uint8_t *c = codes + r * COLS / 2 + 16 * g;
            uint8_t *b = blocks + (r * NG + g) * 17, v[32];
            b[0] = scales[r * NG + g];
            for (int j = 0; j < 16; j++) v[2 * j] = c[j] & 15, v[2 * j + 1] = c[j] >> 4;
            for (int j = 0; j < 16; j++) b[1 + j] = (uint8_t)(v[j] | v[j + 16] << 4);
        }
    lm_mat ms = {.dtype = LM_DT_MXFP4_SPLIT, .rows = ROWS, .cols = COLS, .data = codes, .scales = scales};
    lm_mat mb = {.dtype = LM_DT_MXFP4, .rows = ROWS, .cols = COLS, .data = blocks};
    float *x = malloc(sizeof(float) * N * COLS);
    for (int i = 0; i < N * COLS; i++) x[i] = (float)urand();
    double *ideal = malloc(sizeof(double) * N * ROWS), *mag = malloc(sizeof(double) * N * ROWS);
    for (int t = 0; t < N; t++)
        for (int r = 0; r < ROWS; r++) {
            double s = 0, m = 0;
            for (int c = 0; c < COLS; c++) {
                uint8_t b = codes[r * COLS / 2 + c / 2];
                double w = code2[c % 2 ? b >> 4 : b & 15] * ldexp(1, scales[r * NG + c / 32] - 128);
                s += w * x[t * COLS + c], m += fabs(w * x[t * COLS + c]);
            }
            ideal[t * ROWS + r] = s, mag[t * ROWS + r] = m;
        }
    float *ref[2] = {malloc(sizeof(float) * N * ROWS), malloc(sizeof(float) * N * ROWS)}; /* f32, int8 */
    float *y = malloc(sizeof(float) * N * ROWS), *yb = malloc(sizeof(float) * N * ROWS), *y1 = malloc(sizeof(float) * ROWS);
    static const char *mx_tables[3] = {"scalar", "avx2", "neon"};
    int simd = 0;
    for (int k = 0; k < 3; k++)
        for (int threads = 1; threads <= 3; threads += 2)
            for (int act = 0; act < 2; act++) {
                lm_backend *be = NULL;
                if (lm_backend_cpu_create_with(&be, threads, mx_tables[k], err) != 0) break;
                simd += k > 0;
                CHECKF(lm_backend_cpu_set_act_bits(be, act ? 8 : 32, COLS, err) == 0, "%s", err);
                CHECK(be->ops->matmul(be, y, &ms, x, N) == 0);
                CHECK(be->ops->matmul(be, yb, &mb, x, N) == 0);
                CHECKF(!memcmp(y, yb, sizeof(float) * N * ROWS), "%s act %d: the layouts differ", mx_tables[k], act);
                for (int t = 0; t < N; t += 3) {
                    CHECK(be->ops->matmul(be, y1, &mb, x + (size_t)t * COLS, 1) == 0);
                    CHECKF(!memcmp(y1, y + (size_t)t * ROWS, sizeof(float) * ROWS), "%s: token %d alone differs",
                           mx_tables[k], t);
                }
                if (k == 0 && threads == 1) memcpy(ref[act], y, sizeof(float) * N * ROWS);
                double worst = 0;
                for (int i = 0; i < N * ROWS; i++) {
                    if (!act) worst = fmax(worst, fabs(y[i] - ref[0][i]) / (mag[i] + 1e-30));
                    if (!act) worst = fmax(worst, fabs(y[i] - ideal[i]) / (mag[i] + 1e-30));
                }
                if (act) CHECKF(!memcmp(y, ref[1], sizeof(float) * N * ROWS), "%s int8: not the reference's bits", mx_tables[k]);
                else CHECKF(worst <= 2e-6, "%s f32: %.3g of sum |w x| from the reference", mx_tables[k], worst);
                if (threads == 1)
                    printf("# mxfp4 %s rows, %s activations: %s\n", mx_tables[k], act ? "int8" : "f32",
                           act ? "the scalar reference's bits" : "within f32 rounding");
                lm_backend_free(be);
            }
    CHECKF(simd > 0, "no SIMD table for MXFP4 on this CPU");
    free(codes), free(scales), free(blocks), free(x), free(ideal), free(mag), free(ref[0]), free(ref[1]), free(y);
    free(yb), free(y1);
    rng = saved_rng;
}

int main(void) {
    TEST_CASE("kernels_simd_match_scalar", simd_matches_scalar);
    TEST_CASE("kernels_batching_and_threads_bit_identical", batching_and_threads_bit_identical);
    TEST_CASE("kernels_attention_tiled_kv_types_scalar", attention_scalar);
    TEST_CASE("kernels_attention_tiled_kv_types_simd", attention_auto);
    TEST_CASE("kernels_attention_rows_match_loops", attention_rows_match_loops);
    TEST_CASE("kernels_attention_matches_head_loop", attention_matches_head_loop);
    TEST_CASE("kernels_attention_scale_max_matches_loop", attention_scale_max_matches_loop);
    TEST_CASE("kernels_attention_exp_matches_definition", attention_exp_matches_definition);
    TEST_CASE("kernels_matmul_batch_equals_single", matmul_batch_equals_single);
    TEST_CASE("kernels_matmul_batch_many_items", matmul_batch_many_items);
    TEST_CASE("kernels_threadpool_each_task_once", threadpool_each_task_once);
    TEST_CASE("kernels_selection", kernel_selection);
    TEST_CASE("kernels_act8_quantize_layout", act8_quantize_layout);
    TEST_CASE("kernels_act8_scope", act8_scope);
    TEST_CASE("kernels_act8_simd_quantize_matches_reference", act8_simd_quantize_matches_reference);
    TEST_CASE("kernels_act8_matches_definition", act8_matches_definition);
    TEST_CASE("kernels_act8_bit_identical", act8_bit_identical);
    TEST_CASE("kernels_act8_dot_instructions_bit_identical", act8_dot_instructions_bit_identical);
    TEST_CASE("kernels_act8_settings", act8_settings);
    TEST_CASE("kernels_mxfp4_simd_match_scalar", mxfp4_simd_matches_scalar);
    return th_failed_cases ? 1 : 0;
}

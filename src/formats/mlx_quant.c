/* MLX affine quantization; the algorithm and its sources are described in mlx_quant.h. */
#include "formats/mlx_quant.h"

#include "common/error.h"

#include <math.h>
#include <string.h>

int mlxq_check(const mlxq_params *p, int64_t rows, int64_t cols, char *err) {
    if (!p) return lm_errf(err, "quantize: no parameters");
    if (p->bits != 2 && p->bits != 3 && p->bits != 4 && p->bits != 5 && p->bits != 6 &&
        p->bits != 8)
        return lm_errf(err, "quantize: unsupported bits %d (supported: 2, 3, 4, 5, 6, 8)",
                       p->bits);
    if (p->group_size != 32 && p->group_size != 64 && p->group_size != 128)
        return lm_errf(err, "quantize: unsupported group size %d (supported: 32, 64, 128)",
                       p->group_size);
    if (p->scale_dtype != LM_DT_F16 && p->scale_dtype != LM_DT_BF16 &&
        p->scale_dtype != LM_DT_F32)
        return lm_errf(err, "quantize: scales must be F16, BF16 or F32, not %s",
                       lm_dtype_name(p->scale_dtype));
    if (p->kernel != MLXQ_KERNEL_GPU && p->kernel != MLXQ_KERNEL_CPU)
        return lm_errf(err, "quantize: unknown kernel variant %d", (int)p->kernel);
    if (rows < 0 || cols <= 0)
        return lm_errf(err, "quantize: bad matrix shape [%lld, %lld]", (long long)rows,
                       (long long)cols);
    if (cols % p->group_size != 0)
        return lm_errf(err,
                       "quantize: the last dimension (%lld) is not divisible by the group "
                       "size %d",
                       (long long)cols, p->group_size);
    return 0;
}

float mlxq_round_to_dtype(float x, lm_dtype t) {
    switch (t) {
    case LM_DT_BF16: return lm_bf16_to_f32(lm_f32_to_bf16(x));
    case LM_DT_F16: return lm_f16_to_f32(lm_f32_to_f16(x));
    default: return x;
    }
}

static void store_scalar(void *base, lm_dtype t, int64_t i, float v) {
    switch (t) {
    case LM_DT_F32: ((float *)base)[i] = v; break;
    case LM_DT_BF16: ((uint16_t *)base)[i] = lm_f32_to_bf16(v); break;
    case LM_DT_F16: ((uint16_t *)base)[i] = lm_f32_to_f16(v); break;
    default: break;
    }
}

/* MLX's two rounding functions: Metal/CUDA round() (halves away from zero) and the CPU
 * backend's std::rint() (halves to even in the default rounding mode). */
static inline float round_for(mlxq_kernel k, float x) {
    return k == MLXQ_KERNEL_GPU ? roundf(x) : nearbyintf(x);
}

/* Quantizes one group of n values into q[0..n) and its scale/bias (float32, before the
 * cast to the output dtype). Mirrors mlx's affine_quantize kernels line by line. */
static void quantize_group(const float *w, int n, int bits, mlxq_kernel kernel, uint8_t *q,
                           float *scale_out, float *bias_out) {
    const float n_bins = (float)((1 << bits) - 1);
    const float eps = 1e-7f;
    float w_min = INFINITY;
    /* The GPU kernels start their running max at 0, the CPU one at -inf. */
    float w_max = kernel == MLXQ_KERNEL_GPU ? 0.0f : -INFINITY;
    for (int j = 0; j < n; j++) {
        w_min = fminf(w_min, w[j]);
        w_max = fmaxf(w_max, w[j]);
    }
    float scale = fmaxf((w_max - w_min) / n_bins, eps);
    int side = fabsf(w_min) > fabsf(w_max);
    scale = side ? scale : -scale;
    float edge = side ? w_min : w_max;
    float q0 = round_for(kernel, edge / scale);
    float bias = 0.0f;
    if (q0 != 0.0f) {
        scale = edge / q0;
        bias = edge;
    }
    for (int j = 0; j < n; j++) {
        float v = round_for(kernel, (w[j] - bias) / scale);
        v = fminf(fmaxf(v, 0.0f), n_bins);
        q[j] = (uint8_t)v;
    }
    *scale_out = scale;
    *bias_out = bias;
}

int mlxq_quantize(const mlxq_params *p, const float *w, int64_t rows, int64_t cols,
                  uint32_t *packed, void *scales, void *biases, char *err) {
    if (mlxq_check(p, rows, cols, err) != 0) return -1;
    const int bits = p->bits, gs = p->group_size;
    const int64_t words = mlxq_words_per_row(cols, bits);
    const int64_t groups = mlxq_groups_per_row(cols, gs);
    uint8_t q[128];
    for (int64_t r = 0; r < rows; r++) {
        const float *wr = w + r * cols;
        uint32_t *out = packed + r * words;
        memset(out, 0, (size_t)words * sizeof *out);
        for (int64_t g = 0; g < groups; g++) {
            const float *wg = wr + g * gs;
            float lo = INFINITY, hi = -INFINITY;
            for (int j = 0; j < gs; j++) {
                if (!isfinite(wg[j]))
                    return lm_errf(err, "quantize: non-finite value %g at row %lld, column %lld",
                                   (double)wg[j], (long long)r, (long long)g * gs + j);
                lo = fminf(lo, wg[j]);
                hi = fmaxf(hi, wg[j]);
            }
            if (!isfinite(hi - lo))
                return lm_errf(err,
                               "quantize: the value range of row %lld, columns %lld..%lld "
                               "overflows float32",
                               (long long)r, (long long)g * gs, (long long)g * gs + gs - 1);
            float scale, bias;
            quantize_group(wg, gs, bits, p->kernel, q, &scale, &bias);
            float scale_stored = mlxq_round_to_dtype(scale, p->scale_dtype);
            float bias_stored = mlxq_round_to_dtype(bias, p->scale_dtype);
            if (!isfinite(scale_stored) || !isfinite(bias_stored))
                return lm_errf(err,
                               "quantize: scale or bias of row %lld, columns %lld..%lld "
                               "overflows %s",
                               (long long)r, (long long)g * gs, (long long)g * gs + gs - 1,
                               lm_dtype_name(p->scale_dtype));
            store_scalar(scales, p->scale_dtype, r * groups + g, scale);
            store_scalar(biases, p->scale_dtype, r * groups + g, bias);
            /* Append the group's values to the row's little-endian bit stream. */
            for (int j = 0; j < gs; j++) {
                uint64_t bit = (uint64_t)(g * gs + j) * (uint64_t)bits;
                uint64_t word = bit / 32;
                unsigned shift = (unsigned)(bit % 32);
                out[word] |= (uint32_t)q[j] << shift;
                if (shift + (unsigned)bits > 32) out[word + 1] |= (uint32_t)q[j] >> (32 - shift);
            }
        }
    }
    return 0;
}

int mlxq_dequantize(const mlxq_params *p, const uint32_t *packed, const void *scales,
                    const void *biases, int64_t rows, int64_t cols, float *out, char *err) {
    if (mlxq_check(p, rows, cols, err) != 0) return -1;
    const int64_t words = mlxq_words_per_row(cols, p->bits);
    const int64_t groups = mlxq_groups_per_row(cols, p->group_size);
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *row = packed + r * words;
        for (int64_t g = 0; g < groups; g++) {
            float s = lm_load_float(scales, p->scale_dtype, (size_t)(r * groups + g));
            float b = lm_load_float(biases, p->scale_dtype, (size_t)(r * groups + g));
            for (int j = 0; j < p->group_size; j++) {
                int64_t col = g * p->group_size + j;
                out[r * cols + col] = s * (float)mlxq_unpack(row, col, p->bits) + b;
            }
        }
    }
    return 0;
}

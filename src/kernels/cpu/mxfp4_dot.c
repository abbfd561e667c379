#include "kernels/cpu/mxfp4_dot.h"

#include "formats/mxfp4.h"

float lm_mxfp4_dot_f32(const lm_mat *W, int r, const float *x) {
    const int ng = W->cols / LM_MXFP4_GROUP;
    float sum = 0;
    if (W->dtype == LM_DT_MXFP4_SPLIT) {
        const uint8_t *c = (const uint8_t *)W->data + (size_t)r * (size_t)(W->cols / 2);
        const uint8_t *s = (const uint8_t *)W->scales + (size_t)r * (size_t)ng;
        for (int g = 0; g < ng; g++, c += 16, x += 32) {
            float acc = 0;
            for (int j = 0; j < 16; j++) {
                acc += (float)lm_mxfp4_code2[c[j] & 15] * x[2 * j];
                acc += (float)lm_mxfp4_code2[c[j] >> 4] * x[2 * j + 1];
            }
            sum += acc * lm_e8m0_half_to_f32(s[g]);
        }
        return sum;
    }
    const uint8_t *b = (const uint8_t *)W->data + (size_t)r * (size_t)ng * 17;
    for (int g = 0; g < ng; g++, b += 17, x += 32) {
        float acc = 0;
        for (int j = 0; j < 16; j++) acc += (float)lm_mxfp4_code2[b[1 + j] & 15] * x[j];
        for (int j = 0; j < 16; j++) acc += (float)lm_mxfp4_code2[b[1 + j] >> 4] * x[j + 16];
        sum += acc * lm_e8m0_half_to_f32(b[0]);
    }
    return sum;
}

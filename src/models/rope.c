/* RoPE frequencies from the config: default, linear and YaRN, computed the way
 * transformers' modeling_rope_utils computes them (float32 tables, double scalars),
 * so that the goldens' rotations are reproduced to the last bit or two. */
#include "models/config.h"

#include <math.h>

/* The dim (of rope_dim) at which a wavelength makes `rotations` turns over the
 * pretrained context: YaRN's find_correction_dim. */
static double correction_dim(double rotations, int dim, double base, double ctx) {
    return ((double)dim * log(ctx / (rotations * 2.0 * M_PI))) / (2.0 * log(base));
}

void lm_rope_params(const lm_config *c, float *inv_freq, float *attn_scale) {
    int dim = c->rope_dim, half = dim / 2;
    float base = (float)c->rope_theta;
    *attn_scale = 1.0f;
    double low = 0, high = 0;
    if (c->rope_type == LM_ROPE_YARN) {
        low = correction_dim(c->rope_beta_fast, dim, c->rope_theta, (double)c->rope_orig_max_pos);
        high = correction_dim(c->rope_beta_slow, dim, c->rope_theta, (double)c->rope_orig_max_pos);
        if (c->rope_truncate) {
            low = floor(low);
            high = ceil(high);
        }
        if (low < 0) low = 0;
        if (high > dim - 1) high = dim - 1;
        if (low == high) high += 0.001; /* no singular ramp */
        *attn_scale = (float)c->rope_attn_factor;
    }
    for (int i = 0; i < half; i++) {
        /* 1 / theta^(2i/d) in float32 over the rotated dims d */
        float expo = (float)(2 * i) / (float)dim;
        float pos_freq = powf(base, expo);
        float f = 1.0f / pos_freq;
        if (c->rope_type == LM_ROPE_LINEAR) {
            f = f / (float)c->rope_factor;
        } else if (c->rope_type == LM_ROPE_YARN) {
            /* Blend of interpolated (1 / (factor * freq)) and extrapolated (1 / freq)
             * frequencies by a linear ramp over dims low..high: dims below low keep
             * their frequency, dims above high are divided by factor. */
            float ramp = ((float)i - (float)low) / (float)(high - low);
            ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
            float extra = 1.0f - ramp;
            float interp = 1.0f / ((float)c->rope_factor * pos_freq);
            f = interp * (1.0f - extra) + f * extra;
        }
        inv_freq[i] = f;
    }
}

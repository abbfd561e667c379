/* Loading a model's tensors and binding them to lm_weights.
 *
 * Every tensor is checked against the shape the config implies before it is
 * read, so a wrong or mismatched file gives an error naming the tensor, not a
 * crash later. Matrices keep their stored precision (F32/F16/BF16, or MLX affine
 * U32 + scales + biases); vectors (norms, biases) are widened to f32.
 */
#include "models/model.h"

#include "common/error.h"
#include "models/arch.h"
#include "platform/platform.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    lm_weights *w;
    char *err;
} loader;

static void *track(loader *L, void *p) {
    lm_weights *w = L->w;
    if (!p) return NULL;
    if (w->n_buffers == w->cap_buffers) {
        int cap = w->cap_buffers ? w->cap_buffers * 2 : 64;
        void **nb = realloc(w->buffers, sizeof(void *) * (size_t)cap);
        if (!nb) {
            lm_free_aligned(p);
            lm_errf(L->err, "out of memory");
            return NULL;
        }
        w->buffers = nb;
        w->cap_buffers = cap;
    }
    w->buffers[w->n_buffers++] = p;
    return p;
}

static const st_tensor *findf(loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const st_tensor *findf(loader *L, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return st_find(L->w->archive, name);
}

/* Reads a whole tensor into a tracked, aligned buffer. */
static void *read_tensor(loader *L, const st_tensor *t) {
    void *buf = track(L, lm_malloc_aligned(t->nbytes, t->name, L->err));
    if (!buf) return NULL;
    if (st_read(L->w->archive, t, buf, L->err) != 0) return NULL;
    return buf;
}

static int check_shape(loader *L, const st_tensor *t, int ndim, const int64_t *want) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (ok) return 0;
    char got[128] = "", exp[128] = "";
    for (int i = 0; i < t->ndim; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    for (int i = 0; i < ndim; i++)
        snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", i ? ", " : "", (long long)want[i]);
    return lm_errf(L->err, "tensor '%s' has shape [%s] but the config implies [%s]", t->name, got, exp);
}

/* A vector of n floats named NAME, widened to f32. */
static float *load_vec(loader *L, const char *name, int n, int required) {
    const st_tensor *t = st_find(L->w->archive, name);
    if (!t) {
        if (required) lm_errf(L->err, "missing tensor '%s'", name);
        else if (L->err) L->err[0] = 0;
        return NULL;
    }
    int64_t want[1] = {n};
    if (check_shape(L, t, 1, want)) return NULL;
    if (!lm_dtype_is_float(t->dtype)) {
        lm_errf(L->err, "tensor '%s' has dtype %s; expected a float type", name, lm_dtype_name(t->dtype));
        return NULL;
    }
    void *raw = lm_malloc(t->nbytes, name, L->err);
    if (!raw) return NULL;
    float *v = track(L, lm_malloc_aligned(sizeof(float) * (size_t)n, name, L->err));
    if (!v || st_read(L->w->archive, t, raw, L->err) != 0) {
        free(raw);
        return NULL;
    }
    lm_convert_to_f32(v, raw, t->dtype, (size_t)n);
    free(raw);
    return v;
}

/* A matrix (n_stack == 0) or a stack of n_stack matrices [n_stack, rows, cols]
 * at module path `path` (tensors path.weight [+ .scales, .biases]). Fills
 * mats[0..max(1,n_stack)-1] with views. */
static int load_mat_stack(loader *L, const char *path, int n_stack, int rows, int cols, lm_mat *mats) {
    lm_weights *w = L->w;
    const st_tensor *t = findf(L, "%s.weight", path);
    if (!t) return lm_errf(L->err, "missing tensor '%s.weight'", path);
    int nd = n_stack ? 3 : 2;
    int count = n_stack ? n_stack : 1;
    if (t->dtype == LM_DT_U32) {
        const st_tensor *ts = findf(L, "%s.scales", path), *tb = findf(L, "%s.biases", path);
        if (!ts || !tb)
            return lm_errf(L->err, "tensor '%s' is U32 (quantized) but %s.scales/%s.biases are missing",
                           t->name, path, path);
        if (t->ndim != nd || ts->ndim != nd || tb->ndim != nd)
            return lm_errf(L->err, "quantized tensor '%s' should have %d dimensions", t->name, nd);
        int64_t packed = t->shape[nd - 1], groups = ts->shape[nd - 1];
        if (packed <= 0 || groups <= 0 || (packed * 32) % cols != 0 || cols % groups != 0)
            return lm_errf(L->err, "quantized tensor '%s': packed width %lld and %lld groups do not fit %d inputs",
                           t->name, (long long)packed, (long long)groups, cols);
        int bits = (int)(packed * 32 / cols), gs = (int)(cols / groups);
        if (bits != 2 && bits != 3 && bits != 4 && bits != 5 && bits != 6 && bits != 8)
            return lm_errf(L->err, "quantized tensor '%s': %d bits is not supported", t->name, bits);
        int cfg_bits, cfg_gs;
        lm_config_module_quant(&w->cfg, path, &cfg_bits, &cfg_gs);
        if (cfg_bits && (cfg_bits != bits || cfg_gs != gs))
            return lm_errf(L->err, "quantized tensor '%s' is %d-bit group %d but config.json says %d-bit group %d",
                           t->name, bits, gs, cfg_bits, cfg_gs);
        int64_t ws[3], ss[3];
        int i = 0;
        if (n_stack) ws[i] = ss[i] = n_stack, i++;
        ws[i] = ss[i] = rows;
        ws[i + 1] = packed;
        ss[i + 1] = groups;
        if (check_shape(L, t, nd, ws) || check_shape(L, ts, nd, ss) || check_shape(L, tb, nd, ss)) return -1;
        if (!lm_dtype_is_float(ts->dtype) || tb->dtype != ts->dtype)
            return lm_errf(L->err, "scales/biases of '%s' must share one float dtype", path);
        const char *d = read_tensor(L, t), *s = read_tensor(L, ts), *b = read_tensor(L, tb);
        if (!d || !s || !b) return -1;
        size_t wstride = (size_t)rows * (size_t)packed * 4;
        size_t sstride = (size_t)rows * (size_t)groups * lm_dtype_size(ts->dtype);
        for (int e = 0; e < count; e++)
            mats[e] = (lm_mat){LM_DT_U32, rows, cols, d + (size_t)e * wstride, bits, gs, ts->dtype,
                               s + (size_t)e * sstride, b + (size_t)e * sstride};
        return 0;
    }
    if (!lm_dtype_is_float(t->dtype) || t->dtype == LM_DT_F64)
        return lm_errf(L->err, "tensor '%s' has dtype %s; expected F32, F16, BF16 or MLX U32", t->name,
                       lm_dtype_name(t->dtype));
    int64_t ws[3];
    int i = 0;
    if (n_stack) ws[i++] = n_stack;
    ws[i] = rows;
    ws[i + 1] = cols;
    if (check_shape(L, t, nd, ws)) return -1;
    const char *d = read_tensor(L, t);
    if (!d) return -1;
    if (w->float_dtype == LM_DT_INVALID) w->float_dtype = t->dtype;
    size_t stride = (size_t)rows * (size_t)cols * lm_dtype_size(t->dtype);
    for (int e = 0; e < count; e++) mats[e] = (lm_mat){t->dtype, rows, cols, d + (size_t)e * stride};
    return 0;
}

static int load_mat(loader *L, const char *path, int rows, int cols, lm_mat *m) {
    return load_mat_stack(L, path, 0, rows, cols, m);
}

/* transformers 5 fused layout: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]. */
static int load_fused_experts(loader *L, const char *block, int E, int I, int H, lm_expert *ex) {
    const st_tensor *gu = findf(L, "%s.experts.gate_up_proj", block), *dn = findf(L, "%s.experts.down_proj", block);
    if (!gu || !dn) return lm_errf(L->err, "missing tensor '%s.experts.%s'", block, gu ? "down_proj" : "gate_up_proj");
    int64_t sgu[3] = {E, 2 * (int64_t)I, H}, sdn[3] = {E, H, I};
    if (check_shape(L, gu, 3, sgu) || check_shape(L, dn, 3, sdn)) return -1;
    if (!lm_dtype_is_float(gu->dtype) || gu->dtype == LM_DT_F64 || dn->dtype != gu->dtype)
        return lm_errf(L->err, "experts of '%s' must be F32, F16 or BF16", block);
    const char *g = read_tensor(L, gu), *d = read_tensor(L, dn);
    if (!g || !d) return -1;
    size_t es = lm_dtype_size(gu->dtype), mat = (size_t)I * (size_t)H * es;
    for (int e = 0; e < E; e++) {
        ex[e].gate = (lm_mat){gu->dtype, I, H, g + (size_t)e * 2 * mat};
        ex[e].up = (lm_mat){gu->dtype, I, H, g + (size_t)e * 2 * mat + mat};
        ex[e].down = (lm_mat){dn->dtype, H, I, d + (size_t)e * mat};
    }
    return 0;
}

static int load_experts(loader *L, int l, const char *block, lm_layer *ly) {
    lm_weights *w = L->w;
    const lm_config *c = &w->cfg;
    const lm_arch_names *names = lm_arch_get(c->arch);
    int E = c->n_experts, I = c->moe_intermediate_size, H = c->hidden_size;
    ly->experts = track(L, lm_malloc_aligned(sizeof(lm_expert) * (size_t)E, "expert table", L->err));
    if (!ly->experts) return -1;
    char path[512];
    lm_mat *tmp = NULL;
    if (findf(L, "%s.switch_mlp.gate_proj.weight", block)) {
        w->expert_layout = LM_EXPERTS_STACKED;
        tmp = malloc(sizeof(lm_mat) * (size_t)E);
        if (!tmp) return lm_errf(L->err, "out of memory");
        static const char *proj[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int p = 0; p < 3; p++) {
            snprintf(path, sizeof path, "%s.switch_mlp.%s", block, proj[p]);
            int rows = p == 2 ? H : I, cols = p == 2 ? I : H;
            if (load_mat_stack(L, path, E, rows, cols, tmp)) {
                free(tmp);
                return -1;
            }
            for (int e = 0; e < E; e++) {
                if (p == 0) ly->experts[e].gate = tmp[e];
                if (p == 1) ly->experts[e].up = tmp[e];
                if (p == 2) ly->experts[e].down = tmp[e];
            }
        }
        free(tmp);
        return 0;
    }
    if (findf(L, "%s.experts.gate_up_proj", block)) {
        w->expert_layout = LM_EXPERTS_FUSED;
        return load_fused_experts(L, block, E, I, H, ly->experts);
    }
    w->expert_layout = LM_EXPERTS_SEPARATE;
    for (int e = 0; e < E; e++) {
        const char *const *alias[3] = {names->expert_gate, names->expert_up, names->expert_down};
        lm_mat *dst[3] = {&ly->experts[e].gate, &ly->experts[e].up, &ly->experts[e].down};
        for (int p = 0; p < 3; p++) {
            int found = 0;
            for (int a = 0; alias[p][a] && !found; a++) {
                snprintf(path, sizeof path, "%s.experts.%d.%s", block, e, alias[p][a]);
                if (findf(L, "%s.weight", path)) found = 1;
            }
            if (!found)
                return lm_errf(L->err, "layer %d: no expert weights found under '%s' (looked for switch_mlp, "
                               "experts.gate_up_proj and experts.%d.%s)", l, block, e, alias[p][0]);
            int rows = p == 2 ? H : I, cols = p == 2 ? I : H;
            if (load_mat(L, path, rows, cols, dst[p])) return -1;
        }
    }
    return 0;
}

static int load_layer(loader *L, int l) {
    lm_weights *w = L->w;
    const lm_config *c = &w->cfg;
    lm_layer *ly = &w->layers[l];
    int H = c->hidden_size, hd = c->head_dim, nq = c->n_heads * hd, nkv = c->n_kv_heads * hd;
    char p[512];
#define VEC(dst, req, n, ...)                                                             \
    do {                                                                                  \
        snprintf(p, sizeof p, __VA_ARGS__);                                               \
        dst = load_vec(L, p, n, req);                                                     \
        if (!dst && (req || (L->err && L->err[0]))) return -1;                            \
    } while (0)
#define MAT(dst, rows, cols, ...)                                                         \
    do {                                                                                  \
        snprintf(p, sizeof p, __VA_ARGS__);                                               \
        if (load_mat(L, p, rows, cols, &dst)) return -1;                                  \
    } while (0)
    VEC(ly->attn_norm, 1, H, "model.layers.%d.input_layernorm.weight", l);
    VEC(ly->ffn_norm, 1, H, "model.layers.%d.post_attention_layernorm.weight", l);
    MAT(ly->q, nq, H, "model.layers.%d.self_attn.q_proj", l);
    MAT(ly->k, nkv, H, "model.layers.%d.self_attn.k_proj", l);
    MAT(ly->v, nkv, H, "model.layers.%d.self_attn.v_proj", l);
    MAT(ly->o, H, nq, "model.layers.%d.self_attn.o_proj", l);
    if (c->attention_bias) {
        VEC(ly->q_bias, 1, nq, "model.layers.%d.self_attn.q_proj.bias", l);
        VEC(ly->k_bias, 1, nkv, "model.layers.%d.self_attn.k_proj.bias", l);
        VEC(ly->v_bias, 1, nkv, "model.layers.%d.self_attn.v_proj.bias", l);
        VEC(ly->o_bias, 0, H, "model.layers.%d.self_attn.o_proj.bias", l);
    }
    if (c->qk_norm == LM_QK_NORM_PER_HEAD) {
        VEC(ly->q_norm, 1, hd, "model.layers.%d.self_attn.q_norm.weight", l);
        VEC(ly->k_norm, 1, hd, "model.layers.%d.self_attn.k_norm.weight", l);
    } else if (c->qk_norm == LM_QK_NORM_FULL) {
        VEC(ly->q_norm, 1, nq, "model.layers.%d.self_attn.q_norm.weight", l);
        VEC(ly->k_norm, 1, nkv, "model.layers.%d.self_attn.k_norm.weight", l);
    }
    ly->is_moe = lm_config_layer_is_moe(c, l);
    if (!ly->is_moe) {
        int F = c->intermediate_size;
        MAT(ly->mlp_gate, F, H, "model.layers.%d.mlp.gate_proj", l);
        MAT(ly->mlp_up, F, H, "model.layers.%d.mlp.up_proj", l);
        MAT(ly->mlp_down, H, F, "model.layers.%d.mlp.down_proj", l);
        return 0;
    }
    const lm_arch_names *names = lm_arch_get(c->arch);
    char block[256] = "";
    for (int i = 0; names->moe_blocks[i]; i++) {
        snprintf(block, sizeof block, "model.layers.%d.%s", l, names->moe_blocks[i]);
        if (findf(L, "%s.gate.weight", block)) break;
        block[0] = 0;
    }
    if (!block[0])
        return lm_errf(L->err, "layer %d is a MoE layer but has no router (model.layers.%d.%s.gate.weight)", l, l,
                       names->moe_blocks[0]);
    snprintf(p, sizeof p, "%s.gate", block);
    if (load_mat(L, p, c->n_experts, H, &ly->router)) return -1;
    return load_experts(L, l, block, ly);
#undef VEC
#undef MAT
}

static uint64_t expert_bytes(const lm_expert *e) {
    return lm_mat_bytes(&e->gate) + lm_mat_bytes(&e->up) + lm_mat_bytes(&e->down);
}

static void account(lm_weights *w) {
    const lm_config *c = &w->cfg;
    uint64_t H = (uint64_t)c->hidden_size, V = (uint64_t)c->vocab_size;
    uint64_t hd = (uint64_t)c->head_dim, nq = (uint64_t)c->n_heads * hd, nkv = (uint64_t)c->n_kv_heads * hd;
    uint64_t attn = H * nq * 2 + H * nkv * 2;
    uint64_t resident_params = V * H * (c->tie_word_embeddings ? 1 : 2) + H;
    uint64_t bytes = lm_mat_bytes(&w->embed) + (c->tie_word_embeddings ? 0 : lm_mat_bytes(&w->lm_head));
    w->params_expert = 3 * H * (uint64_t)c->moe_intermediate_size;
    uint64_t active = 0, experts_total = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *ly = &w->layers[l];
        resident_params += attn + 2 * H;
        bytes += lm_mat_bytes(&ly->q) + lm_mat_bytes(&ly->k) + lm_mat_bytes(&ly->v) + lm_mat_bytes(&ly->o);
        if (ly->is_moe) {
            resident_params += (uint64_t)c->n_experts * H;
            bytes += lm_mat_bytes(&ly->router);
            active += (uint64_t)c->top_k * w->params_expert;
            experts_total += (uint64_t)c->n_experts * w->params_expert;
            uint64_t eb = expert_bytes(&ly->experts[0]);
            if (eb > w->bytes_per_expert) w->bytes_per_expert = eb;
            for (int e = 0; e < c->n_experts; e++) w->bytes_experts += expert_bytes(&ly->experts[e]);
        } else {
            uint64_t dense = 3 * H * (uint64_t)c->intermediate_size;
            resident_params += dense;
            bytes += lm_mat_bytes(&ly->mlp_gate) + lm_mat_bytes(&ly->mlp_up) + lm_mat_bytes(&ly->mlp_down);
        }
    }
    w->bytes_resident = bytes;
    w->params_total = resident_params + experts_total;
    w->params_active = resident_params + active;
}

int lm_weights_load(lm_weights *w, const char *dir, lm_progress_fn progress, void *pctx, char *err) {
    memset(w, 0, sizeof *w);
    loader L = {w, err};
    if (lm_config_load(&w->cfg, dir, err) != 0) return -1;
    if (st_open(&w->archive, dir, err) != 0) goto fail;
    const lm_config *c = &w->cfg;
    int H = c->hidden_size;
    w->layers = track(&L, lm_malloc_aligned(sizeof(lm_layer) * (size_t)c->n_layers, "layers", err));
    if (!w->layers) goto fail;
    memset(w->layers, 0, sizeof(lm_layer) * (size_t)c->n_layers);
    if (load_mat(&L, "model.embed_tokens", c->vocab_size, H, &w->embed)) goto fail;
    w->final_norm = load_vec(&L, "model.norm.weight", H, 1);
    if (!w->final_norm) goto fail;
    if (c->tie_word_embeddings && !st_find(w->archive, "lm_head.weight")) {
        w->lm_head = w->embed;
    } else if (load_mat(&L, "lm_head", c->vocab_size, H, &w->lm_head)) {
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        if (load_layer(&L, l) != 0) goto fail;
        if (progress) progress(pctx, "loading weights", (double)(l + 1) / c->n_layers);
    }
    int half = c->head_dim / 2;
    w->rope_inv_freq = track(&L, lm_malloc_aligned(sizeof(float) * (size_t)half, "rope", err));
    if (!w->rope_inv_freq) goto fail;
    for (int i = 0; i < half; i++) {
        /* float32 like transformers: 1 / theta^(2i/d), divided by the linear factor. */
        float expo = (float)(2 * i) / (float)c->head_dim;
        float f = 1.0f / powf((float)c->rope_theta, expo);
        if (c->rope_type == LM_ROPE_LINEAR) f = f / (float)c->rope_factor;
        w->rope_inv_freq[i] = f;
    }
    account(w);
    return 0;
fail:
    lm_err_prefix(err, "%s", dir);
    lm_weights_free(w);
    return -1;
}

void lm_weights_free(lm_weights *w) {
    for (int i = 0; i < w->n_buffers; i++) lm_free_aligned(w->buffers[i]);
    free(w->buffers);
    st_close(w->archive);
    lm_config_free(&w->cfg);
    memset(w, 0, sizeof *w);
}

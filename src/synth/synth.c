/* Synthetic MLX-layout MoE models; the design (weights, routing, determinism,
 * streaming) is described in synth.h. Structure:
 *   spec:     a preset's hyper-parameters, with the --layers and test overrides;
 *   items:    every output tensor in mlx-lm's order (embeddings, layers, norm, head),
 *             each a quantized matrix (stack) or a float tensor with an init rule;
 *   produce:  per batch (embeddings, each layer, the rest) the items are cut into
 *             row units that worker threads generate, quantize and write at their
 *             final offsets; values depend only on (seed, name, matrix, row);
 *   finish:   index, config.json, generation_config.json, atomic rename.
 */
#include "synth/synth.h"

#include "common/buf.h"
#include "common/dir_replace.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/str.h"
#include "formats/dtype.h"
#include "formats/mlx_quant.h"
#include "formats/mxfp4.h"
#include "formats/pyjson.h"
#include "formats/safetensors_write.h"
#include "models/family.h"
#include "platform/fs.h"
#include "platform/platform.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define SYNTH_UNIT_FLOATS ((int64_t)1 << 20) /* values generated per work unit (4 MiB) */
#define ROUTER_BITS 8
#define ROUTER_GROUP_SIZE 64
#define EMBED_COMMON 1.0f      /* weight of the common direction m in every embedding row */
#define NORM_NOISE 0.02f       /* norms: 1 +- this */
#define REALISTIC_SCALE 0.3f  /* s_e = exp(REALISTIC_SCALE * z_e) */
#define REALISTIC_BIAS 0.7f    /* b_e = REALISTIC_BIAS * z_e */
#define COLLAPSED_BIAS 12.0f   /* b_e of the dominant experts */
#define REALISTIC_ATTN_GAIN 0.7f /* attention output projections under realistic routing */
#define MAX_SYNTH_THREADS 16

/* ---- presets ------------------------------------------------------------------------ */

/* A preset (its family's file, src/models/) with the --layers and test overrides. */
typedef struct {
    lm_synth_preset m;
    const lm_family *fam;
    int resid_layers; /* the preset's own layer count: fixes the residual init scale */
} synth_spec;

const char *lm_synth_presets(void) { return lm_family_preset_names(); }

void lm_synth_options_init(lm_synth_options *o) {
    memset(o, 0, sizeof *o);
    o->preset = "tiny";
    o->bits = 4;
    o->group_size = 64;
    o->routing = LM_SYNTH_REALISTIC;
}

int lm_synth_parse_routing(const char *s, lm_synth_routing *out) {
    if (!s) return -1;
    if (!strcmp(s, "realistic")) *out = LM_SYNTH_REALISTIC;
    else if (!strcmp(s, "uniform")) *out = LM_SYNTH_UNIFORM;
    else if (!strcmp(s, "collapsed")) *out = LM_SYNTH_COLLAPSED;
    else return -1;
    return 0;
}

static int make_spec(const lm_synth_options *o, synth_spec *s, char *err) {
    if (!o->preset) return lm_errf(err, "no preset (presets: %s)", lm_synth_presets());
    const lm_family *fam = NULL;
    const lm_synth_preset *p = lm_family_find_preset(o->preset, &fam);
    if (!p) return lm_errf(err, "unknown preset '%.64s' (presets: %s)", o->preset, lm_synth_presets());
    s->m = *p;
    s->fam = fam;
    s->resid_layers = p->layers;
    if (o->layers < 0 || o->layers > 4096) return lm_errf(err, "--layers must be 1..4096");
    if (o->layers) s->m.layers = o->layers;
    if (o->hidden < 0 || o->experts < 0 || o->moe_intermediate < 0 || o->vocab < 0)
        return lm_errf(err, "dimension overrides must be positive");
    if (o->hidden) s->m.hidden = o->hidden;
    if (o->experts) {
        s->m.experts = o->experts;
        if (s->m.top_k > s->m.experts) s->m.top_k = s->m.experts;
    }
    if (o->moe_intermediate) {
        s->m.moe_intermediate = o->moe_intermediate;
        if (s->fam->experts_use_intermediate_size) s->m.intermediate = o->moe_intermediate;
        if (s->m.shared_intermediate) s->m.shared_intermediate = o->moe_intermediate;
    }
    if (o->vocab) {
        s->m.vocab = o->vocab;
        if (s->m.bos >= s->m.vocab || s->m.eos >= s->m.vocab || s->m.eos2 >= s->m.vocab) {
            s->m.bos = 1;
            s->m.eos = 2;
            s->m.eos2 = -1;
        }
    }
    if (s->m.hidden > (1 << 16) || s->m.experts > (1 << 14) || s->m.moe_intermediate > (1 << 18) ||
        s->m.vocab > (1 << 22))
        return lm_errf(err, "dimension overrides are too large");
    if (!s->m.head_dim && s->m.hidden % s->m.heads)
        return lm_errf(err, "hidden size %d is not divisible by %d heads", s->m.hidden, s->m.heads);
    if (fam->synth_layout == LM_SYNTH_HF_MXFP4) { /* --bits / --group-size do not apply */
        int dims[2] = {s->m.hidden, s->m.moe_intermediate};
        for (int i = 0; i < 2; i++)
            if (dims[i] % LM_MXFP4_GROUP)
                return lm_errf(err, "dimension %d is not a whole number of MXFP4 groups of %d", dims[i],
                               LM_MXFP4_GROUP);
        return 0;
    }
    mlxq_params q = {o->bits, o->group_size, LM_DT_BF16, MLXQ_KERNEL_GPU};
    if (mlxq_check(&q, 1, o->group_size, err) != 0) return lm_err_prefix(err, "synth");
    if (o->bits != 4 && o->bits != 8)
        return lm_errf(err, "--bits must be 4 or 8, not %d", o->bits);
    int dims[2] = {s->m.hidden, s->m.moe_intermediate};
    for (int i = 0; i < 2; i++)
        if (dims[i] % o->group_size || dims[i] % ROUTER_GROUP_SIZE)
            return lm_errf(err, "dimension %d is not divisible by the group size %d", dims[i],
                           o->group_size % ROUTER_GROUP_SIZE ? o->group_size : ROUTER_GROUP_SIZE);
    return 0;
}

static int head_dim_of(const synth_spec *s) { return s->m.head_dim ? s->m.head_dim : s->m.hidden / s->m.heads; }

/* ---- random numbers -------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t hash_str(const char *s) { return lm_fnv1a(LM_FNV1A_INIT, s, strlen(s)); }

/* xoshiro256+ (Blackman & Vigna): fast, good enough for weights. */
typedef struct {
    uint64_t s[4];
} rng;

static void rng_seed(rng *r, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t x = a ^ (b * 0xd1342543de82ef95ull) ^ (c * 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rol64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng *r) {
    uint64_t *s = r->s;
    uint64_t out = s[0] + s[3], t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rol64(s[3], 45);
    return out;
}

/* Approximately N(0,1): Irwin-Hall sum of four 16-bit uniforms, centred and scaled
 * (bounded at +-3.46; 4-bit quantization erases the tails anyway). */
static inline float rng_normal(rng *r) {
    uint64_t v = rng_next(r);
    uint32_t s = (uint32_t)(v & 0xffff) + (uint32_t)((v >> 16) & 0xffff) +
                 (uint32_t)((v >> 32) & 0xffff) + (uint32_t)(v >> 48);
    return ((float)s - 131070.0f) * (1.0f / 37837.23f);
}

/* Two approximately N(0,1) values from one 64-bit draw: each the Irwin-Hall sum of four
 * 8-bit uniforms (1021 levels, bounded at +-3.45), summed SWAR-style. */
static inline void rng_normal2(rng *r, float *a, float *b) {
    uint64_t v = rng_next(r);
    uint64_t t = (v & 0x00ff00ff00ff00ffull) + ((v >> 8) & 0x00ff00ff00ff00ffull);
    uint32_t x = (uint32_t)(t & 0xffff) + (uint32_t)((t >> 16) & 0xffff);
    uint32_t y = (uint32_t)((t >> 32) & 0xffff) + (uint32_t)(t >> 48);
    *a = ((float)x - 510.0f) * (1.0f / 147.80054f);
    *b = ((float)y - 510.0f) * (1.0f / 147.80054f);
}

static inline float rng_uniform(rng *r) { return (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f); }

/* A true Gaussian (Box-Muller) for the few per-expert routing parameters. */
static float rng_gauss(rng *r) {
    float u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* ---- items ------------------------------------------------------------------------------- */

typedef enum {
    INIT_LINEAR,  /* N(0, std^2) */
    INIT_EMBED,   /* N(0,1) + EMBED_COMMON * m */
    INIT_ROUTER,  /* see synth.h */
    INIT_NORM,    /* 1 +- NORM_NOISE */
    INIT_ONES,    /* exactly 1 */
    INIT_ALOG,    /* log U(1, 16) */
} init_kind;

/* How an item is stored (the family's lm_synth_layout decides for matrices). */
typedef enum {
    STORE_BF16 = 0,   /* one BF16 tensor: name, or name.weight for a matrix (weight_suffix) */
    STORE_MLX_AFFINE, /* name.weight (U32 words) / .scales / .biases (BF16), mlx_quant.h */
    STORE_MXFP4,      /* name_blocks [.., rows, cols / 32, 16] / name_scales [.., rows, cols / 32], U8 */
} storage_kind;

typedef struct {
    char name[160];  /* matrices: module path (the tensors' names add suffixes) */
    int batch;       /* 0 embeddings, 1 + layer, layers + 1 the rest */
    int layer;       /* for routers */
    storage_kind storage;
    int weight_suffix; /* STORE_BF16 matrix: the tensor is name.weight */
    int bits, group_size, record_override;
    int nmat;        /* stacked matrices (E) or 1 */
    int64_t rows, cols;
    int ndim;        /* float tensors: their shape */
    int64_t shape[3];
    init_kind init;
    float std;
    int expert;      /* routed expert stack: counts in bytes_per_expert */
} synth_item;

typedef struct {
    const lm_synth_options *opt;
    synth_spec spec;
    synth_item *items;
    int nitems;
    size_t cap;
    float *common; /* m: H floats */
    stw_model *writer;
    uint64_t params_total;
} synth;

static int add_item(synth *S, synth_item **out, char *err) {
    if (LM_GROW(S->items, S->cap, (size_t)S->nitems + 1) != 0) return lm_errf(err, "out of memory");
    *out = &S->items[S->nitems++];
    memset(*out, 0, sizeof **out);
    return 0;
}

/* A matrix (stack). MLX layout: quantized, and modules the family's mlx-lm rule names
 * (routers) get 8 bits, group 64, recorded as overrides in config.json. Released
 * gpt-oss layout: routed expert stacks MXFP4, every other matrix BF16. */
static int add_mat(synth *S, int batch, int nmat, int64_t rows, int64_t cols, init_kind init,
                   float std, char *err, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));
static int add_mat(synth *S, int batch, int nmat, int64_t rows, int64_t cols, init_kind init,
                   float std, char *err, const char *fmt, ...) {
    synth_item *it;
    if (add_item(S, &it, err) != 0) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->name, sizeof it->name, fmt, ap);
    va_end(ap);
    it->batch = batch;
    it->layer = batch - 1;
    it->nmat = nmat;
    it->rows = rows;
    it->cols = cols;
    it->init = init;
    it->std = std;
    it->expert = nmat > 1;
    if (S->spec.fam->synth_layout == LM_SYNTH_HF_MXFP4) {
        if (nmat > 1) {
            it->storage = STORE_MXFP4;
            if (cols % LM_MXFP4_GROUP)
                return lm_errf(err, "%s: input dimension %lld is not a whole number of MXFP4 groups of %d",
                               it->name, (long long)cols, LM_MXFP4_GROUP);
        } else {
            it->storage = STORE_BF16;
            it->weight_suffix = 1;
            it->ndim = 2;
            it->shape[0] = rows;
            it->shape[1] = cols;
        }
        return 0;
    }
    int router = lm_family_router_8bit(S->spec.fam, it->name);
    it->storage = STORE_MLX_AFFINE;
    it->bits = router ? ROUTER_BITS : S->opt->bits;
    it->group_size = router ? ROUTER_GROUP_SIZE : S->opt->group_size;
    it->record_override = router;
    if (cols % it->group_size)
        return lm_errf(err, "%s: input dimension %lld is not divisible by the group size %d",
                       it->name, (long long)cols, it->group_size);
    return 0;
}

static int add_vec(synth *S, int batch, int ndim, const int64_t *shape, init_kind init, float std,
                   char *err, const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static int add_vec(synth *S, int batch, int ndim, const int64_t *shape, init_kind init, float std,
                   char *err, const char *fmt, ...) {
    synth_item *it;
    if (add_item(S, &it, err) != 0) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->name, sizeof it->name, fmt, ap);
    va_end(ap);
    it->batch = batch;
    it->layer = batch - 1;
    it->nmat = 1;
    it->ndim = ndim;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        it->shape[i] = shape[i];
        n *= shape[i];
    }
    it->cols = shape[ndim - 1];
    it->rows = n / it->cols;
    it->init = init;
    it->std = std;
    return 0;
}

static float inv_sqrt(int64_t n) { return 1.0f / sqrtf((float)n); }

/* One decoder layer's tensors (plan_items sorts them by name afterwards). */
static int plan_layer(synth *S, int l, char *err) {
    const synth_spec *s = &S->spec;
    const int b = l + 1, H = s->m.hidden, hd = head_dim_of(s), E = s->m.experts;
    const int I = s->m.moe_intermediate;
    const float resid = inv_sqrt(2 * (int64_t)s->resid_layers); /* GPT-2 residual init */
    /* Realistic routing lets attention carry context into the residual stream, which
     * makes consecutive tokens' routing correlated (see synth.h). */
    const float attn = S->opt->routing == LM_SYNTH_REALISTIC ? REALISTIC_ATTN_GAIN : resid;
    int64_t vH[1] = {H};
    int rc = 0;
    char p[96];
    snprintf(p, sizeof p, "model.layers.%d", l);
    const lm_family *f = s->fam;
    const char *moe = f->names->moe_blocks[0]; /* mlx-lm's name of the MoE block */
    rc |= add_vec(S, b, 1, vH, INIT_NORM, 0, err, "%s.input_layernorm.weight", p);
    rc |= add_vec(S, b, 1, vH, INIT_NORM, 0, err, "%s.post_attention_layernorm.weight", p);
    int linear = s->m.full_interval && (l + 1) % s->m.full_interval != 0;
    if (linear) {
        int key_dim = s->m.lin_k_heads * s->m.lin_k_dim, value_dim = s->m.lin_v_heads * s->m.lin_v_dim;
        int conv_dim = 2 * key_dim + value_dim;
        int64_t vv[1] = {s->m.lin_v_heads}, conv[3] = {conv_dim, s->m.conv_kernel, 1};
        int64_t vnorm[1] = {s->m.lin_v_dim};
        rc |= add_vec(S, b, 1, vv, INIT_ALOG, 0, err, "%s.linear_attn.A_log", p);
        rc |= add_vec(S, b, 3, conv, INIT_LINEAR, inv_sqrt(s->m.conv_kernel), err,
                      "%s.linear_attn.conv1d.weight", p);
        rc |= add_vec(S, b, 1, vv, INIT_ONES, 0, err, "%s.linear_attn.dt_bias", p);
        if (f->linear_separate_proj) { /* qwen3_5_moe */
            rc |= add_mat(S, b, 1, s->m.lin_v_heads, H, INIT_LINEAR, inv_sqrt(H), err, "%s.linear_attn.in_proj_a", p);
            rc |= add_mat(S, b, 1, s->m.lin_v_heads, H, INIT_LINEAR, inv_sqrt(H), err, "%s.linear_attn.in_proj_b", p);
            rc |= add_mat(S, b, 1, conv_dim, H, INIT_LINEAR, inv_sqrt(H), err, "%s.linear_attn.in_proj_qkv", p);
            rc |= add_mat(S, b, 1, value_dim, H, INIT_LINEAR, inv_sqrt(H), err, "%s.linear_attn.in_proj_z", p);
        } else {
            rc |= add_mat(S, b, 1, 2 * (int64_t)s->m.lin_v_heads, H, INIT_LINEAR, inv_sqrt(H), err,
                          "%s.linear_attn.in_proj_ba", p);
            rc |= add_mat(S, b, 1, 2 * (int64_t)key_dim + 2 * (int64_t)value_dim, H, INIT_LINEAR,
                          inv_sqrt(H), err, "%s.linear_attn.in_proj_qkvz", p);
        }
        rc |= add_vec(S, b, 1, vnorm, INIT_NORM, 0, err, "%s.linear_attn.norm.weight", p);
        rc |= add_mat(S, b, 1, H, value_dim, INIT_LINEAR, inv_sqrt(value_dim) * attn, err,
                      "%s.linear_attn.out_proj", p);
    } else {
        /* With an output gate q_proj is [2 * heads * hd, H] (per head: query, then gate). */
        int nq = s->m.heads * hd, nkv = s->m.kv_heads * hd;
        int qrows = f->attn_output_gate ? 2 * nq : nq;
        rc |= add_mat(S, b, 1, nkv, H, INIT_LINEAR, inv_sqrt(H), err, "%s.self_attn.k_proj", p);
        rc |= add_mat(S, b, 1, H, nq, INIT_LINEAR, inv_sqrt(nq) * attn, err, "%s.self_attn.o_proj", p);
        rc |= add_mat(S, b, 1, qrows, H, INIT_LINEAR, inv_sqrt(H), err, "%s.self_attn.q_proj", p);
        rc |= add_mat(S, b, 1, nkv, H, INIT_LINEAR, inv_sqrt(H), err, "%s.self_attn.v_proj", p);
        if (s->m.attn_bias) { /* glm4_moe: q/k/v biases, none on o_proj */
            int64_t bq[1] = {nq}, bkv[1] = {nkv};
            rc |= add_vec(S, b, 1, bkv, INIT_LINEAR, 0.02f, err, "%s.self_attn.k_proj.bias", p);
            rc |= add_vec(S, b, 1, bq, INIT_LINEAR, 0.02f, err, "%s.self_attn.q_proj.bias", p);
            rc |= add_vec(S, b, 1, bkv, INIT_LINEAR, 0.02f, err, "%s.self_attn.v_proj.bias", p);
        }
        if (s->m.o_bias) rc |= add_vec(S, b, 1, vH, INIT_LINEAR, 0.02f * attn, err, "%s.self_attn.o_proj.bias", p);
        if (s->m.attn_sinks) { /* a logit per head, of the order of the attention scores */
            int64_t vh[1] = {s->m.heads};
            rc |= add_vec(S, b, 1, vh, INIT_LINEAR, 1.0f, err, "%s.self_attn.sinks", p);
        }
        if (f->qk_norm != LM_QK_NORM_NONE) {
            int per_head = f->qk_norm == LM_QK_NORM_PER_HEAD;
            int64_t vq[1] = {per_head ? hd : nq}, vk[1] = {per_head ? hd : nkv};
            rc |= add_vec(S, b, 1, vk, INIT_NORM, 0, err, "%s.self_attn.k_norm.weight", p);
            rc |= add_vec(S, b, 1, vq, INIT_NORM, 0, err, "%s.self_attn.q_norm.weight", p);
        }
    }
    if (l < s->m.first_dense) { /* glm4_moe's first_k_dense_replace layers: a dense MLP */
        int F = s->m.intermediate;
        rc |= add_mat(S, b, 1, H, F, INIT_LINEAR, inv_sqrt(F) * resid, err, "%s.mlp.down_proj", p);
        rc |= add_mat(S, b, 1, F, H, INIT_LINEAR, inv_sqrt(H), err, "%s.mlp.gate_proj", p);
        rc |= add_mat(S, b, 1, F, H, INIT_LINEAR, inv_sqrt(H), err, "%s.mlp.up_proj", p);
        return rc ? -1 : 0;
    }
    rc |= add_mat(S, b, 1, E, H, INIT_ROUTER, 0, err, "%s.%s.%s", p, moe, f->names->router);
    int64_t vE[1] = {E};
    if (f->sigmoid_router) /* e_score_correction_bias: small, so routing stays the router's */
        rc |= add_vec(S, b, 1, vE, INIT_LINEAR, 0.01f, err, "%s.%s.%s", p, moe, f->names->correction_bias[0]);
    if (s->m.router_bias) /* small too: the routing construction lives in the weights */
        rc |= add_vec(S, b, 1, vE, INIT_LINEAR, 0.01f, err, "%s.%s.%s.bias", p, moe, f->names->router);
    if (s->m.shared_intermediate) {
        int SI = s->m.shared_intermediate;
        const char *se = f->names->shared_expert;
        rc |= add_mat(S, b, 1, H, SI, INIT_LINEAR, inv_sqrt(SI) * resid, err, "%s.%s.%s.down_proj", p, moe, se);
        rc |= add_mat(S, b, 1, SI, H, INIT_LINEAR, inv_sqrt(H), err, "%s.%s.%s.gate_proj", p, moe, se);
        rc |= add_mat(S, b, 1, SI, H, INIT_LINEAR, inv_sqrt(H), err, "%s.%s.%s.up_proj", p, moe, se);
        if (f->names->shared_expert_gate)
            rc |= add_mat(S, b, 1, 1, H, INIT_LINEAR, inv_sqrt(H), err, "%s.%s.%s", p, moe,
                          f->names->shared_expert_gate);
    }
    if (s->m.fused_experts) { /* gpt-oss: gate_up rows alternate gate and up; biases per expert */
        int64_t bgu[2] = {E, 2 * (int64_t)I}, bdn[2] = {E, H};
        rc |= add_mat(S, b, E, H, I, INIT_LINEAR, inv_sqrt(I) * resid, err, "%s.%s.experts.down_proj", p, moe);
        rc |= add_vec(S, b, 2, bdn, INIT_LINEAR, 0.02f * resid, err, "%s.%s.experts.down_proj_bias", p, moe);
        rc |= add_mat(S, b, E, 2 * (int64_t)I, H, INIT_LINEAR, inv_sqrt(H), err, "%s.%s.experts.gate_up_proj", p,
                      moe);
        rc |= add_vec(S, b, 2, bgu, INIT_LINEAR, 0.02f, err, "%s.%s.experts.gate_up_proj_bias", p, moe);
        return rc ? -1 : 0;
    }
    rc |= add_mat(S, b, E, H, I, INIT_LINEAR, inv_sqrt(I) * resid, err, "%s.%s.switch_mlp.down_proj", p, moe);
    rc |= add_mat(S, b, E, I, H, INIT_LINEAR, inv_sqrt(H), err, "%s.%s.switch_mlp.gate_proj", p, moe);
    rc |= add_mat(S, b, E, I, H, INIT_LINEAR, inv_sqrt(H), err, "%s.%s.switch_mlp.up_proj", p, moe);
    return rc ? -1 : 0;
}

static int cmp_items(const void *pa, const void *pb) {
    const synth_item *a = pa, *b = pb;
    if (a->batch != b->batch) return a->batch - b->batch;
    return strcmp(a->name, b->name);
}

static int plan_items(synth *S, char *err) {
    const synth_spec *s = &S->spec;
    if (add_mat(S, 0, 1, s->m.vocab, s->m.hidden, INIT_EMBED, 1.0f, err, "model.embed_tokens")) return -1;
    for (int l = 0; l < s->m.layers; l++)
        if (plan_layer(S, l, err) != 0) return -1;
    int64_t vH[1] = {s->m.hidden};
    int last = s->m.layers + 1;
    /* mlx-lm's order puts the model's own modules after the layers: norm, then lm_head. */
    if (add_vec(S, last, 1, vH, INIT_NORM, 0, err, "model.norm.weight")) return -1;
    if (add_mat(S, last, 1, s->m.vocab, s->m.hidden, INIT_LINEAR, inv_sqrt(s->m.hidden), err, "lm_head"))
        return -1;
    /* The converter's order: embeddings, layers in order, the rest; by name inside each. */
    qsort(S->items, (size_t)S->nitems, sizeof *S->items, cmp_items);
    return 0;
}

/* The bytes of each tensor an item writes, in declaration order; returns their count. */
static int item_parts(const synth_item *it, uint64_t parts[3]) {
    uint64_t n = (uint64_t)it->nmat * (uint64_t)it->rows;
    switch (it->storage) {
    case STORE_MLX_AFFINE:
        parts[0] = n * (uint64_t)mlxq_words_per_row(it->cols, it->bits) * 4;
        parts[1] = parts[2] = n * (uint64_t)mlxq_groups_per_row(it->cols, it->group_size) * 2;
        return 3;
    case STORE_MXFP4:
        parts[0] = n * (uint64_t)it->cols / 2;
        parts[1] = n * (uint64_t)it->cols / LM_MXFP4_GROUP;
        return 2;
    case STORE_BF16:
        break;
    }
    parts[0] = n * (uint64_t)it->cols * 2;
    return 1;
}

static uint64_t item_bytes(const synth_item *it) {
    uint64_t parts[3], total = 0;
    int np = item_parts(it, parts);
    for (int k = 0; k < np; k++) total += parts[k];
    return total;
}

static int declare_all(synth *S, lm_synth_plan *plan, char *err) {
    memset(plan, 0, sizeof *plan);
    const synth_spec *s = &S->spec;
    snprintf(plan->model_type, sizeof plan->model_type, "%s", s->fam->model_type);
    plan->layers = s->m.layers;
    plan->hidden = s->m.hidden;
    plan->experts = s->m.experts;
    plan->top_k = s->m.top_k;
    plan->moe_intermediate = s->m.moe_intermediate;
    plan->vocab = s->m.vocab;
    plan->mxfp4 = s->fam->synth_layout == LM_SYNTH_HF_MXFP4;
    S->params_total = 0;
    for (int i = 0; i < S->nitems; i++) {
        const synth_item *it = &S->items[i];
        uint64_t bytes = item_bytes(it);
        plan->bytes_total += bytes;
        if (it->expert) plan->bytes_experts += bytes;
        S->params_total += (uint64_t)it->nmat * (uint64_t)it->rows * (uint64_t)it->cols;
        char name[192];
        if (it->storage == STORE_MXFP4) {
            int64_t bs[4], ss[3];
            int nd = 0;
            if (it->nmat > 1) bs[nd] = ss[nd] = it->nmat, nd++;
            bs[nd] = ss[nd] = it->rows;
            bs[nd + 1] = ss[nd + 1] = it->cols / LM_MXFP4_GROUP;
            bs[nd + 2] = LM_MXFP4_GROUP / 2;
            plan->n_tensors += 2;
            if (!S->writer) continue;
            snprintf(name, sizeof name, "%s_blocks", it->name);
            if (stw_model_declare(S->writer, name, LM_DT_U8, nd + 3, bs, err)) return -1;
            snprintf(name, sizeof name, "%s_scales", it->name);
            if (stw_model_declare(S->writer, name, LM_DT_U8, nd + 2, ss, err)) return -1;
        } else if (it->storage == STORE_MLX_AFFINE) {
            int64_t ws[3], ss[3];
            int nd = 0;
            if (it->nmat > 1) ws[nd] = ss[nd] = it->nmat, nd++;
            ws[nd] = ss[nd] = it->rows;
            ws[nd + 1] = mlxq_words_per_row(it->cols, it->bits);
            ss[nd + 1] = mlxq_groups_per_row(it->cols, it->group_size);
            nd += 2;
            plan->n_tensors += 3;
            if (!S->writer) continue;
            snprintf(name, sizeof name, "%s.weight", it->name);
            if (stw_model_declare(S->writer, name, LM_DT_U32, nd, ws, err)) return -1;
            snprintf(name, sizeof name, "%s.scales", it->name);
            if (stw_model_declare(S->writer, name, LM_DT_BF16, nd, ss, err)) return -1;
            snprintf(name, sizeof name, "%s.biases", it->name);
            if (stw_model_declare(S->writer, name, LM_DT_BF16, nd, ss, err)) return -1;
        } else {
            plan->n_tensors++;
            snprintf(name, sizeof name, it->weight_suffix ? "%s.weight" : "%s", it->name);
            if (S->writer && stw_model_declare(S->writer, name, LM_DT_BF16, it->ndim, it->shape, err))
                return -1;
        }
    }
    plan->bytes_resident = plan->bytes_total - plan->bytes_experts;
    uint64_t moe_layers = (uint64_t)s->m.layers * (uint64_t)s->m.experts;
    plan->bytes_per_expert = moe_layers ? plan->bytes_experts / moe_layers : 0;
    plan->params_total = S->params_total;
    /* Shard count as the writer will cut them (mlx-lm's rule, see safetensors_write.h). */
    uint64_t limit = S->opt->max_shard_bytes ? S->opt->max_shard_bytes : STW_MLX_MAX_SHARD_BYTES;
    uint64_t cur = 0;
    plan->n_shards = 1;
    for (int i = 0; i < S->nitems; i++) {
        const synth_item *it = &S->items[i];
        uint64_t parts[3];
        int np = item_parts(it, parts);
        for (int k = 0; k < np; k++) {
            if (cur > 0 && cur + parts[k] > limit) {
                plan->n_shards++;
                cur = 0;
            }
            cur += parts[k];
        }
    }
    return 0;
}

/* ---- values ------------------------------------------------------------------------------- */

static void make_common(const lm_synth_options *o, int H, float *m) {
    rng r;
    rng_seed(&r, o->seed, hash_str("synth.common_direction"), 0);
    for (int i = 0; i < H; i++) m[i] = rng_gauss(&r);
}

/* Per-expert routing parameters (s_e, b_e) of one layer's router. */
static void router_params(const synth *S, int layer, int e, float *scale, float *bias) {
    const lm_synth_options *o = S->opt;
    rng r;
    rng_seed(&r, o->seed, hash_str("synth.router_params"), ((uint64_t)layer << 32) | (uint64_t)e);
    *scale = 1.0f;
    *bias = 0.0f;
    if (o->routing == LM_SYNTH_REALISTIC) {
        float z = rng_gauss(&r);
        *scale = expf(REALISTIC_SCALE * z);
        *bias = REALISTIC_BIAS * z;
    } else if (o->routing == LM_SYNTH_COLLAPSED) {
        /* The dominant experts: the top_k smallest of a seeded hash over experts. */
        uint64_t key = o->seed ^ hash_str("synth.collapsed") ^ ((uint64_t)layer << 20);
        uint64_t x = key + (uint64_t)e, mine = splitmix64(&x);
        int below = 0;
        for (int k = 0; k < S->spec.m.experts; k++) {
            uint64_t y = key + (uint64_t)k, h = splitmix64(&y);
            below += h < mine || (h == mine && k < e);
        }
        if (below < S->spec.m.top_k) *bias = COLLAPSED_BIAS;
    }
}

/* Fills rows [r0, r0+n) of matrix `mat` of item `it` into f (n * cols floats). */
static void gen_rows(const synth *S, const synth_item *it, int mat, int64_t r0, int64_t n, float *f) {
    const int64_t C = it->cols;
    const uint64_t nh = hash_str(it->name);
    const int H = S->spec.m.hidden;
    for (int64_t i = 0; i < n; i++) {
        int64_t row = r0 + i;
        float *dst = f + i * C;
        rng r;
        rng_seed(&r, S->opt->seed ^ nh, (uint64_t)mat, (uint64_t)row);
        switch (it->init) {
        case INIT_LINEAR: {
            int64_t j = 0;
            for (; j + 1 < C; j += 2) {
                float a, b;
                rng_normal2(&r, &a, &b);
                dst[j] = it->std * a;
                dst[j + 1] = it->std * b;
            }
            if (j < C) dst[j] = it->std * rng_normal(&r);
            break;
        }
        case INIT_EMBED:
            for (int64_t j = 0; j < C; j++) dst[j] = rng_normal(&r) + EMBED_COMMON * S->common[j];
            break;
        case INIT_NORM:
            for (int64_t j = 0; j < C; j++) dst[j] = 1.0f + NORM_NOISE * rng_normal(&r);
            break;
        case INIT_ONES:
            for (int64_t j = 0; j < C; j++) dst[j] = 1.0f;
            break;
        case INIT_ALOG:
            for (int64_t j = 0; j < C; j++) dst[j] = logf(1.0f + 15.0f * rng_uniform(&r));
            break;
        case INIT_ROUTER: {
            /* w_e = s_e u_e / sqrt(H) + b_e m / (H * EMBED_COMMON), u_e orthogonal to m. */
            float se, be;
            router_params(S, it->layer, (int)row, &se, &be);
            double dot = 0, mm = 0;
            for (int64_t j = 0; j < C; j++) {
                dst[j] = rng_normal(&r);
                dot += (double)dst[j] * S->common[j];
                mm += (double)S->common[j] * S->common[j];
            }
            float proj = (float)(dot / mm), k = se / sqrtf((float)H);
            float kb = be / ((float)H * EMBED_COMMON);
            for (int64_t j = 0; j < C; j++)
                dst[j] = k * (dst[j] - proj * S->common[j]) + kb * S->common[j];
            break;
        }
        }
    }
}

int lm_synth_common_direction(const lm_synth_options *o, float *m, char *err) {
    synth_spec s;
    if (make_spec(o, &s, err) != 0) return -1;
    make_common(o, s.m.hidden, m);
    return 0;
}

int lm_synth_router_floats(const lm_synth_options *o, int layer, float *w, char *err) {
    synth S;
    memset(&S, 0, sizeof S);
    S.opt = o;
    if (make_spec(o, &S.spec, err) != 0) return -1;
    if (layer < 0 || layer >= S.spec.m.layers) return lm_errf(err, "layer %d out of range", layer);
    S.common = malloc(sizeof(float) * (size_t)S.spec.m.hidden);
    if (!S.common) return lm_errf(err, "out of memory");
    make_common(o, S.spec.m.hidden, S.common);
    synth_item it;
    memset(&it, 0, sizeof it);
    snprintf(it.name, sizeof it.name, "model.layers.%d.%s.%s", layer, S.spec.fam->names->moe_blocks[0],
             S.spec.fam->names->router);
    it.init = INIT_ROUTER;
    it.layer = layer;
    it.nmat = 1;
    it.rows = S.spec.m.experts;
    it.cols = S.spec.m.hidden;
    gen_rows(&S, &it, 0, 0, it.rows, w);
    free(S.common);
    return 0;
}

/* ---- production ---------------------------------------------------------------------------- */

typedef struct {
    int item, mat;
    int64_t r0, n;
} unit;

typedef struct {
    synth *S;
    const unit *units;
    int nunits;
    atomic_int next;
    atomic_int failed;
    pthread_mutex_t lock; /* the writer and err */
    char *err;
} batch_ctx;

typedef struct {
    float *f;
    uint32_t *packed;
    uint16_t *scales, *biases;
} worker_buf;

/* MLX affine quantization (mlx_quant.h) of rows [rows, cols] into packed words and BF16
 * scales/biases, specialised for 4 and 8 bits: the same per-group scale, edge and bias
 * rules, but values are divided by multiplying with the reciprocal and rounded half up
 * (mlxq_quantize is exact to MLX and ~10x slower; a random model needs the format, not
 * MLX's last-bit rounding). Inputs are finite by construction. */
static inline __attribute__((always_inline)) void quantize_rows(const float *w, int64_t rows,
                                                                int64_t cols, const int bits, int gs,
                                                                uint32_t *packed, uint16_t *scales,
                                                                uint16_t *biases) {
    const float n_bins = (float)((1 << bits) - 1);
    const int64_t groups = cols / gs, words = cols * bits / 32;
    const int per_word = 32 / bits;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *x = w + r * cols + g * gs;
            float lo = x[0], hi = x[0];
            for (int j = 1; j < gs; j++) {
                lo = x[j] < lo ? x[j] : lo;
                hi = x[j] > hi ? x[j] : hi;
            }
            if (hi < 0.0f) hi = 0.0f; /* the GPU kernels' running max starts at 0 */
            float scale = (hi - lo) / n_bins;
            if (scale < 1e-7f) scale = 1e-7f;
            int side = fabsf(lo) > fabsf(hi);
            if (!side) scale = -scale;
            float edge = side ? lo : hi;
            float t = edge / scale;
            float q0 = (float)(int64_t)(t + (t < 0 ? -0.5f : 0.5f));
            float bias = 0.0f;
            if (q0 != 0.0f) {
                scale = edge / q0;
                bias = edge;
            }
            scales[r * groups + g] = lm_f32_to_bf16(scale);
            biases[r * groups + g] = lm_f32_to_bf16(bias);
            const float inv = 1.0f / scale;
            uint32_t *out = packed + r * words + g * gs / per_word;
            for (int k = 0; k < gs / per_word; k++) {
                uint32_t word = 0;
                for (int j = 0; j < per_word; j++) {
                    float v = (x[k * per_word + j] - bias) * inv;
                    v = v < 0.0f ? 0.0f : (v > n_bins ? n_bins : v);
                    word |= (uint32_t)(v + 0.5f) << (bits * j);
                }
                out[k] = word;
            }
        }
    }
}

/* MLX affine quantization (mlx_quant.h) of rows [rows, cols] into packed words and BF16
 * scales/biases, for 4 and 8 bits: the same per-group scale, edge and bias rules as
 * MLX's GPU kernel, but values are divided by multiplying with the reciprocal and
 * rounded half up (mlxq_quantize is exact to MLX and ~10x slower; a random model needs
 * the format, not MLX's last-bit rounding). Inputs are finite by construction. */
static void quantize_fast(const float *w, int64_t rows, int64_t cols, int bits, int gs,
                          uint32_t *packed, uint16_t *scales, uint16_t *biases) {
    if (bits == 4) quantize_rows(w, rows, cols, 4, gs, packed, scales, biases);
    else quantize_rows(w, rows, cols, 8, gs, packed, scales, biases);
}

/* The e2m1 code (mxfp4.h) nearest to |v| <= 6, sign in bit 3: every midpoint between
 * levels (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) is a multiple of 1/4, so the code of
 * |v| is a table entry indexed by floor(4 |v|). */
static inline uint8_t e2m1_code(float v) {
    static const uint8_t by_quarter[25] = {0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7};
    int k = (int)(fabsf(v) * 4.0f);
    uint8_t c = by_quarter[k > 24 ? 24 : k];
    return (uint8_t)(c | (v < 0.0f && c ? 8 : 0));
}

/* MXFP4 in the split layout (mxfp4.h) of rows [rows, cols], as OpenAI's checkpoints
 * scale it: per 32 values the smallest power of two 2^(E - 127) that brings the
 * largest magnitude within e2m1's 6, then each value to its nearest code. */
static void quantize_mxfp4(const float *w, int64_t rows, int64_t cols, uint8_t *codes, uint8_t *scales) {
    const int64_t groups = cols / LM_MXFP4_GROUP;
    for (int64_t g = 0; g < rows * groups; g++) {
        const float *x = w + g * LM_MXFP4_GROUP;
        float amax = 0.0f;
        for (int j = 0; j < LM_MXFP4_GROUP; j++) amax = fmaxf(amax, fabsf(x[j]));
        int e = 0; /* amax / 6 = m * 2^e, m in [0.5, 1): 2^e is the scale unless m == 0.5 */
        float m = frexpf(amax / 6.0f, &e);
        if (m == 0.5f) e--;
        int E = amax > 0.0f ? e + 127 : 127;
        E = E < 1 ? 1 : E > 254 ? 254 : E;
        scales[g] = (uint8_t)E;
        const float inv = 1.0f / lm_e8m0_to_f32((uint8_t)E);
        for (int j = 0; j < LM_MXFP4_GROUP / 2; j++)
            codes[g * 16 + j] = (uint8_t)(e2m1_code(x[2 * j] * inv) | e2m1_code(x[2 * j + 1] * inv) << 4);
    }
}

static int run_unit(batch_ctx *B, const unit *u, worker_buf *wb, char *err) {
    synth *S = B->S;
    const synth_item *it = &S->items[u->item];
    gen_rows(S, it, u->mat, u->r0, u->n, wb->f);
    const uint64_t row_index = (uint64_t)u->mat * (uint64_t)it->rows + (uint64_t)u->r0;
    int rc = 0;
    if (it->storage == STORE_MXFP4) {
        uint8_t *codes = (uint8_t *)wb->packed, *sc = (uint8_t *)wb->scales;
        quantize_mxfp4(wb->f, u->n, it->cols, codes, sc);
        const uint64_t crow = (uint64_t)it->cols / 2, srow = (uint64_t)it->cols / LM_MXFP4_GROUP;
        char name[192];
        pthread_mutex_lock(&B->lock);
        snprintf(name, sizeof name, "%s_blocks", it->name);
        rc = stw_model_write_at(S->writer, name, row_index * crow, codes, (size_t)((uint64_t)u->n * crow), err);
        snprintf(name, sizeof name, "%s_scales", it->name);
        if (rc == 0)
            rc = stw_model_write_at(S->writer, name, row_index * srow, sc, (size_t)((uint64_t)u->n * srow), err);
        pthread_mutex_unlock(&B->lock);
    } else if (it->storage == STORE_MLX_AFFINE) {
        quantize_fast(wb->f, u->n, it->cols, it->bits, it->group_size, wb->packed, wb->scales,
                      wb->biases);
        uint64_t wrow = (uint64_t)mlxq_words_per_row(it->cols, it->bits) * 4;
        uint64_t srow = (uint64_t)mlxq_groups_per_row(it->cols, it->group_size) * 2;
        char name[192];
        pthread_mutex_lock(&B->lock);
        snprintf(name, sizeof name, "%s.weight", it->name);
        rc = stw_model_write_at(S->writer, name, row_index * wrow, wb->packed,
                                (size_t)((uint64_t)u->n * wrow), err);
        snprintf(name, sizeof name, "%s.scales", it->name);
        if (rc == 0)
            rc = stw_model_write_at(S->writer, name, row_index * srow, wb->scales,
                                    (size_t)((uint64_t)u->n * srow), err);
        snprintf(name, sizeof name, "%s.biases", it->name);
        if (rc == 0)
            rc = stw_model_write_at(S->writer, name, row_index * srow, wb->biases,
                                    (size_t)((uint64_t)u->n * srow), err);
        pthread_mutex_unlock(&B->lock);
    } else {
        size_t total = (size_t)(u->n * it->cols);
        for (size_t j = 0; j < total; j++) wb->scales[j] = lm_f32_to_bf16(wb->f[j]);
        char name[192];
        snprintf(name, sizeof name, it->weight_suffix ? "%s.weight" : "%s", it->name);
        pthread_mutex_lock(&B->lock);
        rc = stw_model_write_at(S->writer, name, row_index * (uint64_t)it->cols * 2, wb->scales,
                                total * 2, err);
        pthread_mutex_unlock(&B->lock);
    }
    return rc;
}

static void *worker_main(void *arg) {
    batch_ctx *B = arg;
    char err[LM_ERR_LEN] = "";
    worker_buf wb = {0};
    /* Units hold at most SYNTH_UNIT_FLOATS values, or one row if a row is longer. */
    int64_t maxc = 0;
    for (int i = 0; i < B->nunits; i++) {
        const synth_item *it = &B->S->items[B->units[i].item];
        int64_t c = B->units[i].n * it->cols;
        if (c > maxc) maxc = c;
    }
    wb.f = lm_malloc((size_t)maxc * sizeof(float), "synth values", err);
    wb.packed = lm_malloc((size_t)maxc + 64, "synth packed", err); /* <= 8 bits a value */
    wb.scales = lm_malloc((size_t)maxc * 2 + 64, "synth scales", err);
    wb.biases = lm_malloc((size_t)maxc / 16 + 64, "synth biases", err);
    int ok = wb.f && wb.packed && wb.scales && wb.biases;
    while (ok && !atomic_load(&B->failed)) {
        int i = atomic_fetch_add(&B->next, 1);
        if (i >= B->nunits) break;
        if (run_unit(B, &B->units[i], &wb, err) != 0) ok = 0;
    }
    if (!ok) {
        pthread_mutex_lock(&B->lock);
        if (!atomic_load(&B->failed)) snprintf(B->err, LM_ERR_LEN, "%s", err);
        atomic_store(&B->failed, 1);
        pthread_mutex_unlock(&B->lock);
    }
    free(wb.f);
    free(wb.packed);
    free(wb.scales);
    free(wb.biases);
    return NULL;
}

/* Generates and writes every item of batch b [first, end) with nthreads workers. */
static int run_batch(synth *S, int first, int end, int nthreads, char *err) {
    int nunits = 0;
    size_t cap = 0;
    unit *units = NULL;
    for (int i = first; i < end; i++) {
        const synth_item *it = &S->items[i];
        int64_t step = SYNTH_UNIT_FLOATS / it->cols;
        if (step < 1) step = 1;
        for (int m = 0; m < it->nmat; m++)
            for (int64_t r = 0; r < it->rows; r += step) {
                if (LM_GROW(units, cap, (size_t)nunits + 1) != 0) {
                    free(units);
                    return lm_errf(err, "out of memory");
                }
                units[nunits++] = (unit){i, m, r, it->rows - r < step ? it->rows - r : step};
            }
    }
    batch_ctx B;
    memset(&B, 0, sizeof B);
    B.S = S;
    B.units = units;
    B.nunits = nunits;
    B.err = err;
    atomic_init(&B.next, 0);
    atomic_init(&B.failed, 0);
    pthread_mutex_init(&B.lock, NULL);
    pthread_t th[MAX_SYNTH_THREADS];
    int started = 0;
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&th[started], NULL, worker_main, &B) != 0) break;
        started++;
    }
    worker_main(&B);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&B.lock);
    free(units);
    return atomic_load(&B.failed) ? -1 : 0;
}

/* ---- config files -------------------------------------------------------------------------- */

static int sorted_key_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static json_t *eos_json(const synth_spec *s) {
    if (s->m.eos2 < 0) return json_integer(s->m.eos);
    json_t *a = json_array();
    json_array_append_new(a, json_integer(s->m.eos));
    json_array_append_new(a, json_integer(s->m.eos2));
    return a;
}

/* c with its top-level keys sorted, as mlx-lm's save_config (c is consumed). */
static json_t *sort_keys(json_t *c) {
    size_t n = json_object_size(c);
    const char **keys = calloc(n ? n : 1, sizeof *keys);
    json_t *sorted = json_object();
    if (!keys || !sorted) {
        free(keys);
        json_decref(sorted);
        json_decref(c);
        return NULL;
    }
    size_t k = 0;
    const char *key;
    json_t *v;
    json_object_foreach(c, key, v) keys[k++] = key;
    qsort(keys, n, sizeof *keys, sorted_key_cmp);
    for (size_t i = 0; i < n; i++) json_object_set(sorted, keys[i], json_object_get(c, keys[i]));
    free(keys);
    json_decref(c);
    return sorted;
}

static json_t *build_config(const synth *S) {
    const synth_spec *s = &S->spec;
    json_t *c = json_object();
    json_t *arch = json_array();
    json_array_append_new(arch, json_string(s->fam->hf_architecture));
    json_object_set_new(c, "architectures", arch);
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    json_object_set_new(c, "bos_token_id", json_integer(s->m.bos));
    /* As convert: eos_token_id taken from generation_config.json (a list for Qwen). */
    json_object_set_new(c, "eos_token_id", eos_json(s));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer(s->m.hidden));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "intermediate_size", json_integer(s->m.intermediate));
    json_object_set_new(c, "max_position_embeddings", json_integer(s->m.max_position));
    json_object_set_new(c, "model_type", json_string(s->fam->model_type));
    json_object_set_new(c, "num_attention_heads", json_integer(s->m.heads));
    json_object_set_new(c, "num_experts_per_tok", json_integer(s->m.top_k));
    json_object_set_new(c, "num_hidden_layers", json_integer(s->m.layers));
    json_object_set_new(c, "num_key_value_heads", json_integer(s->m.kv_heads));
    json_object_set_new(c, "output_router_logits", json_false());
    json_object_set_new(c, "rms_norm_eps", json_real(s->m.rms_eps));
    json_object_set_new(c, "rope_theta", json_real(s->m.rope_theta));
    json_object_set_new(c, "tie_word_embeddings", json_false());
    json_object_set_new(c, "torch_dtype", json_string("bfloat16"));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "vocab_size", json_integer(s->m.vocab));
    if (s->fam->synth_config) s->fam->synth_config(c, &s->m);
    if (s->fam->synth_layout == LM_SYNTH_HF_MXFP4) { /* as OpenAI's released config.json */
        static const char *const keep[] = {"model.layers.*.self_attn", "model.layers.*.mlp.router",
                                           "model.embed_tokens", "lm_head"};
        json_t *q = json_object(), *not_conv = json_array();
        for (size_t i = 0; i < sizeof keep / sizeof *keep; i++) json_array_append_new(not_conv, json_string(keep[i]));
        json_object_set_new(q, "modules_to_not_convert", not_conv);
        json_object_set_new(q, "quant_method", json_string("mxfp4"));
        json_object_set_new(c, "quantization_config", q);
        return sort_keys(c);
    }
    json_t *q = json_object();
    json_object_set_new(q, "group_size", json_integer(S->opt->group_size));
    json_object_set_new(q, "bits", json_integer(S->opt->bits));
    json_object_set_new(q, "mode", json_string("affine"));
    for (int i = 0; i < S->nitems; i++) {
        const synth_item *it = &S->items[i];
        if (!it->record_override) continue;
        json_t *o = json_object();
        json_object_set_new(o, "group_size", json_integer(it->group_size));
        json_object_set_new(o, "bits", json_integer(it->bits));
        json_object_set_new(q, it->name, o);
    }
    json_object_set(c, "quantization", q);
    json_object_set_new(c, "quantization_config", json_deep_copy(q));
    json_decref(q);
    return sort_keys(c);
}

static int write_json(const char *dir, const char *file, json_t *j, int indent, int newline, char *err) {
    if (!j) return lm_errf(err, "out of memory building %s", file);
    char *text = pyjson_dumps(j, indent, err);
    json_decref(j);
    if (!text) return -1;
    size_t n = strlen(text);
    char *t2 = realloc(text, n + 2);
    if (!t2) {
        free(text);
        return lm_errf(err, "out of memory");
    }
    text = t2;
    if (newline) text[n++] = '\n';
    text[n] = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int rc = lm_write_file_atomic(path, text, n, err);
    free(text);
    return rc;
}

static int write_configs(const synth *S, const char *dir, char *err) {
    if (write_json(dir, "config.json", build_config(S), 4, 0, err)) return -1;
    const synth_spec *s = &S->spec;
    json_t *g = json_object();
    json_object_set_new(g, "bos_token_id", json_integer(s->m.bos));
    json_object_set_new(g, "do_sample", json_true());
    json_object_set_new(g, "eos_token_id", eos_json(s));
    if (s->fam->synth_generation) s->fam->synth_generation(g, &s->m);
    json_object_set_new(g, "transformers_version", json_string("4.51.0"));
    return write_json(dir, "generation_config.json", g, 2, 1, err);
}

/* ---- top level -------------------------------------------------------------------------------- */

static void free_synth(synth *S) {
    stw_model_free(S->writer);
    free(S->items);
    free(S->common);
    memset(S, 0, sizeof *S);
}

static int plan_only(synth *S, const lm_synth_options *o, lm_synth_plan *plan, char *err) {
    memset(S, 0, sizeof *S);
    S->opt = o;
    if (make_spec(o, &S->spec, err) != 0) return -1;
    if (plan_items(S, err) != 0) return -1;
    return declare_all(S, plan, err);
}

int lm_synth_plan_model(const lm_synth_options *o, lm_synth_plan *plan, char *err) {
    synth S;
    int rc = plan_only(&S, o, plan, err);
    free_synth(&S);
    return rc;
}

/* Parent directory of a path ("." when it has none). */
static void fmt_eta(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e7) s = 0;
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%dh%02dm", t / 3600, t / 60 % 60);
    else snprintf(buf, cap, "%dm%02ds", t / 60, t % 60);
}

static int check_space(const lm_synth_options *o, const char *parent, uint64_t need, char *err) {
    uint64_t avail = o->assume_free_bytes;
    if (!avail) {
        struct statvfs sv;
        if (statvfs(parent, &sv) != 0) return lm_errf(err, "cannot check free space of %s", parent);
        avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    }
    if (avail < need)
        return lm_errf(err, "not enough disk space in %s: needs %.2f GB, %.2f GB free", parent,
                       (double)need / 1e9, (double)avail / 1e9);
    return 0;
}

int lm_synth_write(const char *out_arg, const lm_synth_options *o, lm_synth_plan *plan_out, char *err) {
    lm_synth_options defaults;
    if (!o) {
        lm_synth_options_init(&defaults);
        o = &defaults;
    }
    if (!out_arg || !*out_arg) return lm_errf(err, "no output directory");
    synth S;
    lm_synth_plan plan;
    char *out = strdup(out_arg), *tmp = NULL, *parent = NULL;
    int tmp_made = 0, rc = -1;
    if (!out) return lm_errf(err, "out of memory");
    size_t ol = strlen(out);
    while (ol > 1 && out[ol - 1] == '/') out[--ol] = '\0';
    if (plan_only(&S, o, &plan, err) != 0) goto done;
    if (plan_out) *plan_out = plan;
    if (lm_out_dir_check(out, o->force, err) != 0) goto done;
    parent = lm_path_parent(out);
    if (!parent) {
        lm_errf(err, "out of memory");
        goto done;
    }
    /* Headers and JSON files are small; 1 MiB per shard covers them. */
    uint64_t need = plan.bytes_total + (uint64_t)(plan.n_shards + 1) * (1u << 20);
    if (check_space(o, parent, need, err) != 0) goto done;
    int nthreads = o->threads > 0 ? o->threads : (lm_cpu_count() < 2 ? 1 : 2);
    if (nthreads > MAX_SYNTH_THREADS) nthreads = MAX_SYNTH_THREADS;
    if (!o->quiet) {
        char storage[48];
        if (S.spec.fam->synth_layout == LM_SYNTH_HF_MXFP4) snprintf(storage, sizeof storage, "MXFP4 experts, BF16 rest");
        else snprintf(storage, sizeof storage, "%d-bit group %d", o->bits, o->group_size);
        lm_log(LAZYMOE_LOG_INFO, "synth: %s (%s) -> %s: %d layers, %d experts top-%d, %s, routing %s",
               o->preset, S.spec.fam->model_type, out, S.spec.m.layers, S.spec.m.experts, S.spec.m.top_k, storage,
               o->routing == LM_SYNTH_UNIFORM ? "uniform" : o->routing == LM_SYNTH_COLLAPSED ? "collapsed" : "realistic");
        lm_log(LAZYMOE_LOG_INFO, "synth: %.2f GB in %d shard(s), %d tensors, %.2f MB per expert, %d thread(s)",
               (double)plan.bytes_total / 1e9, plan.n_shards, plan.n_tensors, (double)plan.bytes_per_expert / 1e6,
               nthreads);
    }
    if (!(tmp = lm_dir_temp_create(out, err))) goto done;
    tmp_made = 1;
    S.common = lm_malloc(sizeof(float) * (size_t)S.spec.m.hidden, "common direction", err);
    if (!S.common) goto done;
    make_common(o, S.spec.m.hidden, S.common);
    if (stw_model_create(&S.writer, tmp, o->max_shard_bytes, err) != 0) goto done;
    if (S.spec.fam->synth_layout == LM_SYNTH_HF_MXFP4) stw_model_set_format(S.writer, "pt");
    if (declare_all(&S, &plan, err) != 0) goto done;
    if (stw_model_start(S.writer, err) != 0) goto done;
    double t0 = lm_now();
    uint64_t done_bytes = 0;
    for (int i = 0; i < S.nitems;) {
        int j = i;
        uint64_t bytes = 0;
        while (j < S.nitems && S.items[j].batch == S.items[i].batch) bytes += item_bytes(&S.items[j++]);
        double tb = lm_now();
        if (run_batch(&S, i, j, nthreads, err) != 0) goto done;
        done_bytes += bytes;
        if (!o->quiet) {
            double now = lm_now(), rate = (double)done_bytes / (now - t0 + 1e-9);
            char eta[32];
            fmt_eta((double)(plan.bytes_total - done_bytes) / rate, eta, sizeof eta);
            int b = S.items[i].batch;
            char what[48];
            if (b == 0) snprintf(what, sizeof what, "embeddings");
            else if (b <= S.spec.m.layers) snprintf(what, sizeof what, "layer %d/%d", b, S.spec.m.layers);
            else snprintf(what, sizeof what, "norm + lm_head");
            lm_log(LAZYMOE_LOG_INFO, "synth: %s: %.1f MB at %.0f MB/s; total %.2f/%.2f GB, %.0f MB/s, ETA %s",
                   what, (double)bytes / 1e6, (double)bytes / 1e6 / (now - tb + 1e-9),
                   (double)done_bytes / 1e9, (double)plan.bytes_total / 1e9, rate / 1e6, eta);
        }
        i = j;
    }
    if (stw_model_commit(S.writer, S.params_total, err) != 0) goto done;
    if (write_configs(&S, tmp, err) != 0) goto done;
    if (lm_dir_replace(tmp, out, err) != 0) goto done;
    tmp_made = 0;
    if (!o->quiet) {
        double dt = lm_now() - t0;
        lm_log(LAZYMOE_LOG_INFO, "synth: done: %s, %.2f GB in %.1f s (%.0f MB/s)", out,
               (double)plan.bytes_total / 1e9, dt, (double)plan.bytes_total / 1e6 / (dt + 1e-9));
    }
    rc = 0;
done:
    free_synth(&S); /* removes uncommitted shards */
    if (tmp_made) lm_remove_tree(tmp, NULL);
    free(out);
    free(tmp);
    free(parent);
    return rc;
}

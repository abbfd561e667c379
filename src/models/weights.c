/* Loading a model's tensors and binding them to lm_weights.
 *
 * Every tensor is checked against the shape the config implies before it is
 * read, so a wrong or mismatched file gives an error naming the tensor, not a
 * crash later. Matrices keep their stored precision (F32/F16/BF16, or MLX affine
 * U32 + scales + biases); vectors (norms, biases) are widened to f32.
 */
#include "models/model.h"

#include "common/buf.h"
#include "common/error.h"
#include "formats/archive_prefetch.h"
#include "models/family.h"
#include "models/gguf_model.h"
#include "platform/platform.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    lm_weights *w;
    char *err;
    /* Added to zero-centred RMSNorm weights (qwen3_next): 1 for Hugging Face files,
     * 0 for MLX files, whose converter already stored 1 + w. */
    float norm_offset;
    /* Where the text model's tensors are: "model." in causal-LM files; multimodal
     * wrappers keep it under "model.language_model." (transformers) or
     * "language_model.model." (MLX), with their lm_head beside it. The loader asks for
     * "model.X" and "lm_head.X" names; lookup() rewrites them. */
    const char *prefix, *head_prefix;
    /* Whole tensors are carved out of large chunks (huge pages): one 4 KiB page
     * fault per page of a gigabyte of small tensors costs more than reading them. */
    char *arena;
    size_t arena_left;
} loader;

static void *track(loader *L, void *p) {
    lm_weights *w = L->w;
    if (!p) return NULL;
    if (LM_GROW(w->buffers, w->cap_buffers, (size_t)w->n_buffers + 1) != 0) {
        lm_free_aligned(p);
        lm_errf(L->err, "out of memory");
        return NULL;
    }
    w->buffers[w->n_buffers++] = p;
    return p;
}

void *lm_weights_keep(lm_weights *w, void *buf, char *err) {
    loader L = {w, err, 0.0f, "model.", "lm_head", NULL, 0};
    return track(&L, buf);
}

/* The tensor the loader calls `name` (see loader.prefix). */
static const st_tensor *lookup(loader *L, const char *name) {
    char buf[600];
    if (!strncmp(name, "model.", 6) && strcmp(L->prefix, "model.") != 0) {
        snprintf(buf, sizeof buf, "%s%s", L->prefix, name + 6);
        name = buf;
    } else if (!strncmp(name, "lm_head", 7) && strcmp(L->head_prefix, "lm_head") != 0) {
        snprintf(buf, sizeof buf, "%s%s", L->head_prefix, name + 7);
        name = buf;
    }
    return st_find(L->w->archive, name);
}

static const st_tensor *findf(loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const st_tensor *findf(loader *L, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return lookup(L, name);
}

#define ARENA_CHUNK (64u << 20)

/* n bytes, 64-byte aligned, from the loader's current chunk (a new one when it is
 * full); a tensor of a quarter chunk or more gets a buffer of its own (huge pages too). */
static void *arena_take(loader *L, size_t n, const char *what) {
    size_t need = (n + 63) & ~(size_t)63;
    if (need < n) {
        lm_errf(L->err, "tensor %s: %zu bytes is too large", what, n);
        return NULL;
    }
    if (need >= ARENA_CHUNK / 4) return track(L, lm_malloc_aligned(n, what, L->err));
    if (need > L->arena_left) {
        char *chunk = track(L, lm_malloc_aligned(ARENA_CHUNK, "resident weights", L->err));
        if (!chunk) return NULL;
        L->arena = chunk;
        L->arena_left = ARENA_CHUNK;
    }
    void *p = L->arena;
    L->arena += need;
    L->arena_left -= need;
    return p;
}

/* Reads a whole tensor into an aligned buffer that lives as long as the weights. */
static void *read_tensor(loader *L, const st_tensor *t) {
    void *buf = arena_take(L, t->nbytes, t->name);
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
    char label[ST_LABEL_LEN];
    return lm_errf(L->err, "tensor %s has shape [%s] but the config implies [%s]", st_label(t, label, sizeof label),
                   got, exp);
}

/* A vector of n floats named NAME, widened to f32. */
static float *load_vec(loader *L, const char *name, int n, int required) {
    const st_tensor *t = lookup(L, name);
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

/* An MLX "mxfp4" matrix or stack (mlx.core.quantize mode "mxfp4"): PATH.weight U32
 * [.., rows, cols / 8] holds 8 e2m1 codes per word, lowest bits first, i.e. byte j
 * holds values 2j (low nibble) and 2j + 1 (high): the bytes of Hugging Face's
 * MXFP4 _blocks (mlx-lm's gpt-oss sanitize views those as uint32); PATH.scales U8
 * [.., rows, cols / 32] e8m0; no biases. Bound as LM_DT_MXFP4_SPLIT. The config's mode
 * says mxfp4 (cfg_mx), or the module has no entry saying otherwise and the tensors can
 * only be mxfp4 (U8 scales and no biases: affine scales are floats). */
static int check_mlx_mxfp4(loader *L, const char *path, int n_stack, int rows, int cols, const st_tensor *t,
                           const st_tensor *ts, const st_tensor *tb, int cfg_mx, lm_mat *tmpl, const st_tensor *tq[3]) {
    const lm_config *c = &L->w->cfg;
    if (!cfg_mx)
        for (int i = 0; i < c->n_quant_overrides; i++)
            if (!strcmp(c->quant_overrides[i].path, path))
                return lm_errf(L->err, "'%s' has mxfp4 tensors (U8 scales, no biases) but config.json quantizes it "
                                       "in affine mode", path);
    if (!ts) return lm_errf(L->err, "tensor '%s' is U32 (mxfp4) but %s.scales is missing", t->name, path);
    if (tb) return lm_errf(L->err, "config.json says mxfp4 for '%s' but it has %s.biases (affine)", path, path);
    if (ts->dtype != LM_DT_U8) return lm_errf(L->err, "mxfp4 scales '%s' must be U8 (e8m0)", ts->name);
    if (cols % 32) return lm_errf(L->err, "'%s': %d inputs are not whole mxfp4 groups of 32", path, cols);
    int nd = n_stack ? 3 : 2, i = 0;
    int64_t ws[3], ss[3];
    if (n_stack) ws[i] = ss[i] = n_stack, i++;
    ws[i] = ss[i] = rows;
    ws[i + 1] = cols / 8;
    ss[i + 1] = cols / 32;
    if (check_shape(L, t, nd, ws) || check_shape(L, ts, nd, ss)) return -1;
    *tmpl = (lm_mat){.dtype = LM_DT_MXFP4_SPLIT, .rows = rows, .cols = cols};
    tq[1] = ts;
    return 0;
}

/* Validates a matrix (n_stack == 0) or a stack of n_stack matrices [n_stack, rows,
 * cols] at module path `path` (tensors path.weight [+ .scales, .biases]) without
 * reading it: fills *tmpl (dtype, shape, quantization; no data) and the tensors
 * (tq[0] weight, tq[1] scales, tq[2] biases; the last two NULL for float). */
static int check_mat_stack(loader *L, const char *path, int n_stack, int rows, int cols, lm_mat *tmpl,
                           const st_tensor *tq[3]) {
    lm_weights *w = L->w;
    const st_tensor *t = findf(L, "%s.weight", path);
    if (!t) return lm_errf(L->err, "missing tensor '%s.weight'", path);
    int nd = n_stack ? 3 : 2;
    tq[0] = t;
    tq[1] = tq[2] = NULL;
    if (t->dtype == LM_DT_U32) {
        const st_tensor *ts = findf(L, "%s.scales", path), *tb = findf(L, "%s.biases", path);
        int mx_bits, mx_gs, mx_cfg;
        lm_config_module_quant(&w->cfg, path, &mx_bits, &mx_gs, &mx_cfg);
        if (mx_cfg || (ts && !tb && ts->dtype == LM_DT_U8))
            return check_mlx_mxfp4(L, path, n_stack, rows, cols, t, ts, tb, mx_cfg, tmpl, tq);
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
        lm_config_module_quant(&w->cfg, path, &cfg_bits, &cfg_gs, NULL);
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
        *tmpl = (lm_mat){.dtype = LM_DT_U32, .rows = rows, .cols = cols, .bits = bits, .group_size = gs,
                         .qdtype = ts->dtype};
        tq[1] = ts;
        tq[2] = tb;
        return 0;
    }
    if (lm_dtype_is_block(t->dtype)) {
        /* a ggml block type (GGUF): rows of cols / block_elems self-contained blocks */
        int64_t ws[3];
        int i = 0;
        if (n_stack) ws[i++] = n_stack;
        ws[i] = rows;
        ws[i + 1] = cols;
        if (check_shape(L, t, nd, ws)) return -1;
        char label[ST_LABEL_LEN];
        if (!lm_dtype_row_bytes(t->dtype, (uint64_t)cols))
            return lm_errf(L->err, "tensor %s (%s): %d inputs are not whole blocks of %d",
                           st_label(t, label, sizeof label), lm_dtype_name(t->dtype), cols,
                           lm_dtype_block_elems(t->dtype));
        *tmpl = (lm_mat){.dtype = t->dtype, .rows = rows, .cols = cols};
        return 0;
    }
    if (!lm_dtype_is_float(t->dtype) || t->dtype == LM_DT_F64) {
        char label[ST_LABEL_LEN];
        return lm_errf(L->err, "tensor %s has dtype %s; expected F32, F16, BF16, MLX U32 or a ggml block type",
                       st_label(t, label, sizeof label), lm_dtype_name(t->dtype));
    }
    int64_t ws[3];
    int i = 0;
    if (n_stack) ws[i++] = n_stack;
    ws[i] = rows;
    ws[i + 1] = cols;
    if (check_shape(L, t, nd, ws)) return -1;
    if (w->float_dtype == LM_DT_INVALID) w->float_dtype = t->dtype;
    *tmpl = (lm_mat){.dtype = t->dtype, .rows = rows, .cols = cols};
    return 0;
}

/* Reads a checked matrix or stack and fills mats[0..max(1,n_stack)-1] with views. */
static int load_mat_stack(loader *L, const char *path, int n_stack, int rows, int cols, lm_mat *mats) {
    lm_mat tmpl;
    const st_tensor *tq[3];
    if (check_mat_stack(L, path, n_stack, rows, cols, &tmpl, tq)) return -1;
    int count = n_stack ? n_stack : 1;
    const char *d = read_tensor(L, tq[0]);
    if (!d) return -1;
    const char *sc = NULL, *bi = NULL;
    if (tq[1] && (!(sc = read_tensor(L, tq[1])) || (tq[2] && !(bi = read_tensor(L, tq[2]))))) return -1;
    size_t wstride = tq[0]->nbytes / (size_t)count, sstride = tq[1] ? tq[1]->nbytes / (size_t)count : 0;
    for (int e = 0; e < count; e++) {
        mats[e] = tmpl;
        mats[e].data = d + (size_t)e * wstride;
        if (tq[1]) mats[e].scales = sc + (size_t)e * sstride;
        if (tq[2]) mats[e].biases = bi + (size_t)e * sstride; /* MLX affine */
    }
    return 0;
}

static int load_mat(loader *L, const char *path, int rows, int cols, lm_mat *m) {
    return load_mat_stack(L, path, 0, rows, cols, m);
}

/* An RMSNorm weight; zero-centred families get norm_offset added (see loader). */
static float *load_norm(loader *L, const char *name, int n) {
    float *v = load_vec(L, name, n, 1);
    if (v && L->w->cfg.zero_centred_norms)
        for (int i = 0; i < n; i++) v[i] += L->norm_offset;
    return v;
}

/* mlx-lm's sanitize, which stacks per-expert tensors into switch_mlp, also adds 1 to
 * qwen3_next's zero-centred norms and moves the depthwise conv1d kernel from
 * [C, 1, K] to [C, K, 1]: either sign says the file was converted. Both must agree. */
static int detect_norm_offset(loader *L) {
    const st_archive *a = L->w->archive;
    int stacked = 0, conv_hf = 0, conv_mlx = 0;
    for (int i = 0; i < a->ntensors; i++) {
        const st_tensor *t = &a->tensors[i];
        if (strstr(t->name, ".switch_mlp.")) stacked = 1;
        if (strstr(t->name, ".conv1d.weight") && t->ndim == 3) {
            conv_hf |= t->shape[1] == 1 && t->shape[2] > 1;
            conv_mlx |= t->shape[1] > 1 && t->shape[2] == 1;
        }
    }
    if (conv_hf && (conv_mlx || stacked))
        return lm_errf(L->err, "the file mixes Hugging Face ([C, 1, K] conv1d) and MLX-converted tensors; "
                               "convert it again from the original checkpoint");
    L->norm_offset = stacked || conv_mlx ? 0.0f : 1.0f;
    return 0;
}

/* A float tensor of n values (shape already checked) read and widened to f32, kept
 * with the loader's allocations. */
static float *read_f32(loader *L, const st_tensor *t, const char *name, size_t n) {
    if (!lm_dtype_is_float(t->dtype)) {
        lm_errf(L->err, "tensor '%s' has dtype %s; expected a float type", name, lm_dtype_name(t->dtype));
        return NULL;
    }
    void *raw = lm_malloc(t->nbytes, name, L->err);
    if (!raw) return NULL;
    float *v = track(L, lm_malloc_aligned(sizeof(float) * n, name, L->err));
    if (!v || st_read(L->w->archive, t, raw, L->err) != 0) {
        free(raw);
        return NULL;
    }
    lm_convert_to_f32(v, raw, t->dtype, n);
    free(raw);
    return v;
}

/* The depthwise conv1d kernel as f32 [C][K], from [C, 1, K] (HF), [C, K, 1] (MLX) or
 * [C, K] (GGUF ssm_conv1d, ne {K, C}): all store channel-major, tap-minor, so the
 * bytes are in the same order. */
static float *load_conv(loader *L, const char *name, int C, int K) {
    const st_tensor *t = lookup(L, name);
    if (!t) {
        lm_errf(L->err, "missing tensor '%s'", name);
        return NULL;
    }
    int64_t hf[3] = {C, 1, K}, mlx[3] = {C, K, 1}, flat[2] = {C, K};
    if (check_shape(L, t, 3, hf) != 0 && check_shape(L, t, 3, mlx) != 0 && check_shape(L, t, 2, flat) != 0) {
        lm_errf(L->err, "tensor '%s' has the wrong shape; the config implies [%d, 1, %d], [%d, %d, 1] or [%d, %d]",
                name, C, K, C, K, C, K);
        return NULL;
    }
    return read_f32(L, t, name, (size_t)C * (size_t)K);
}

/* A Gated DeltaNet layer. The projections come fused per key head (qwen3_next:
 * in_proj_qkvz, in_proj_ba), apart (qwen3_5_moe: in_proj_qkv, in_proj_z, in_proj_b,
 * in_proj_a), or as llama.cpp's qwen3next files hold them (in_proj_qkv and in_proj_z
 * apart, in_proj_ba fused): whichever the file has. The decay rate A is -exp(A_log)
 * from Hugging Face files, or stored as it is (GGUF ssm_a, bound as linear_attn.A). */
static int load_linear_attn(loader *L, int l, lm_linear_attn *la) {
    const lm_config *c = &L->w->cfg;
    int H = c->hidden_size, nk = c->lin_k_heads, nv = c->lin_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    int key_dim = nk * dk, value_dim = nv * dv, conv_dim = 2 * key_dim + value_dim;
    char p[512];
#define LA(what) (snprintf(p, sizeof p, "model.layers.%d.linear_attn.%s", l, what), p)
    int sep_qkv = c->lin_separate_proj || findf(L, "model.layers.%d.linear_attn.in_proj_qkv.weight", l);
    int sep_ba = c->lin_separate_proj || findf(L, "model.layers.%d.linear_attn.in_proj_b.weight", l);
    if (sep_qkv) {
        if (load_mat(L, LA("in_proj_qkv"), conv_dim, H, &la->in_qkvz) ||
            load_mat(L, LA("in_proj_z"), value_dim, H, &la->in_z))
            return -1;
    } else if (load_mat(L, LA("in_proj_qkvz"), 2 * key_dim + 2 * value_dim, H, &la->in_qkvz)) {
        return -1;
    }
    if (sep_ba) {
        if (load_mat(L, LA("in_proj_b"), nv, H, &la->in_ba) || load_mat(L, LA("in_proj_a"), nv, H, &la->in_a))
            return -1;
    } else if (load_mat(L, LA("in_proj_ba"), 2 * nv, H, &la->in_ba)) {
        return -1;
    }
    if (c->lin_v_tiled && (!sep_qkv || !sep_ba))
        return lm_errf(L->err, "layer %d: value heads in tiled order need separate q/k/v, z, b and a projections", l);
    if (load_mat(L, LA("out_proj"), H, value_dim, &la->out)) return -1;
    if (!(la->conv = load_conv(L, LA("conv1d.weight"), conv_dim, c->conv_kernel))) return -1;
    if (findf(L, "model.layers.%d.linear_attn.A", l)) {
        if (!(la->A = load_vec(L, LA("A"), nv, 1))) return -1;
        for (int h = 0; h < nv; h++)
            if (!(la->A[h] <= 0))
                return lm_errf(L->err, "tensor '%s' holds %g at %d; a decay rate -exp(A_log) is not positive", p,
                               (double)la->A[h], h);
    } else {
        if (!(la->A = load_vec(L, LA("A_log"), nv, 1))) return -1;
        for (int h = 0; h < nv; h++) la->A[h] = -expf(la->A[h]);
    }
    if (!(la->dt_bias = load_vec(L, LA("dt_bias"), nv, 1)) || !(la->norm = load_vec(L, LA("norm.weight"), dv, 1)))
        return -1;
#undef LA
    return 0;
}

/* ---- experts: description and reading -------------------------------------------- */

static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }

/* Appends a part whose bytes for expert e are at t->offset + e * stride (stride = 0:
 * a per-expert tensor, filled for one expert by src_set). Returns the part index. */
static int src_add(loader *L, lm_expert_source *s, const st_tensor *t, int E, int per_expert_tensors) {
    if (s->nparts == LM_EXPERT_MAX_PARTS) return lm_errf(L->err, "too many tensors per expert");
    int p = s->nparts++;
    uint64_t len = per_expert_tensors ? t->nbytes : t->nbytes / (uint64_t)E;
    s->part_len[p] = len;
    s->part_align[p] = (uint8_t)lm_dtype_size(t->dtype);
    s->part_off[p] = p ? align64(s->part_off[p - 1] + s->part_len[p - 1]) : 0;
    s->slot_bytes = align64(s->part_off[p] + len);
    if (!per_expert_tensors)
        for (int e = 0; e < E; e++) {
            s->file[e * LM_EXPERT_MAX_PARTS + p] = t->file;
            s->off[e * LM_EXPERT_MAX_PARTS + p] = t->offset + (uint64_t)e * len;
        }
    return p;
}

/* Adds the (weight, scales, biases) parts of matrix m for a stacked tensor set. */
static int src_add_mat(loader *L, lm_expert_source *s, int m, const lm_mat *tmpl, const st_tensor *tq[3], int E,
                       int per_expert) {
    s->tmpl[m] = *tmpl;
    for (int k = 0; k < 3; k++) {
        if (!tq[k]) continue;
        int p = src_add(L, s, tq[k], E, per_expert);
        if (p < 0) return -1;
        s->field_part[m][k] = p;
        s->field_delta[m][k] = 0;
    }
    return 0;
}

/* Gate and up (matrices 0 and 1) of a stacked set under PATH_PREFIX (BLOCK.switch_mlp):
 * gate_proj and up_proj apart, or gate_up_proj [E, 2I, H] as llama.cpp's converter
 * writes it with --fuse-gate-up-exps, each expert's I gate rows then its I up rows. The
 * fused stack is one part per tensor (one read) whose second half is the up matrix. */
static int src_add_gate_up(loader *L, lm_expert_source *s, const char *prefix, int E, int I, int H, int *fused) {
    char path[384];
    lm_mat tmpl;
    const st_tensor *tq[3];
    snprintf(path, sizeof path, "%s.gate_up_proj", prefix);
    *fused = findf(L, "%s.weight", path) != NULL;
    if (!*fused) {
        static const char *const proj[2] = {"gate_proj", "up_proj"};
        for (int m = 0; m < 2; m++) {
            snprintf(path, sizeof path, "%s.%s", prefix, proj[m]);
            if (check_mat_stack(L, path, E, I, H, &tmpl, tq) || src_add_mat(L, s, m, &tmpl, tq, E, 0)) return -1;
        }
        return 0;
    }
    if (findf(L, "%s.gate_proj.weight", prefix) || findf(L, "%s.up_proj.weight", prefix))
        return lm_errf(L->err, "'%s.weight' and separate gate_proj / up_proj tensors are both present", path);
    if (check_mat_stack(L, path, E, 2 * I, H, &tmpl, tq) || src_add_mat(L, s, 0, &tmpl, tq, E, 0)) return -1;
    s->tmpl[0].rows = I;
    s->tmpl[1] = s->tmpl[0];
    for (int k = 0; k < 3; k++) {
        if (!tq[k]) continue;
        int p = s->field_part[0][k];
        s->field_part[1][k] = p;
        s->field_delta[1][k] = s->part_len[p] / 2; /* I of the 2I rows of equal size */
    }
    return 0;
}

lm_expert lm_expert_view_parts(const lm_expert_source *src, const char *const part[LM_EXPERT_MAX_PARTS]) {
    lm_expert ex;
    lm_mat *mats[3] = {&ex.gate, &ex.up, &ex.down};
    for (int m = 0; m < 3; m++) {
        *mats[m] = src->tmpl[m];
        mats[m]->data = part[src->field_part[m][0]] + src->field_delta[m][0];
        if (src->tmpl[m].dtype == LM_DT_U32 || src->tmpl[m].dtype == LM_DT_MXFP4_SPLIT)
            mats[m]->scales = part[src->field_part[m][1]] + src->field_delta[m][1];
        if (src->tmpl[m].dtype == LM_DT_U32)
            mats[m]->biases = part[src->field_part[m][2]] + src->field_delta[m][2];
    }
    return ex;
}

/* A float tensor [rows, cols] named `name`, widened to f32 (gpt-oss's expert biases). */
static float *load_rows_f32(loader *L, const char *name, int rows, int cols) {
    const st_tensor *t = st_find(L->w->archive, name);
    if (!t) {
        lm_errf(L->err, "missing tensor '%s'", name);
        return NULL;
    }
    int64_t want[2] = {rows, cols};
    if (check_shape(L, t, 2, want)) return NULL;
    return read_f32(L, t, name, (size_t)rows * (size_t)cols);
}

/* One MXFP4 stack of the released gpt-oss files: NAME_blocks uint8 [E, out, in/32, 16]
 * and NAME_scales uint8 [E, out, in/32] as the matrix m of every expert. */
static int gpt_oss_mxfp4(loader *L, lm_expert_source *s, const char *name, int m, int E, int out, int in) {
    const st_tensor *tb = findf(L, "%s_blocks", name), *ts = findf(L, "%s_scales", name);
    if (!tb || !ts) return lm_errf(L->err, "missing tensor '%s_%s'", name, tb ? "scales" : "blocks");
    if (in % 32) return lm_errf(L->err, "'%s_blocks': %d inputs are not a whole number of MXFP4 groups of 32", name, in);
    int64_t wb[4] = {E, out, in / 32, 16}, ws[3] = {E, out, in / 32};
    if (check_shape(L, tb, 4, wb) || check_shape(L, ts, 3, ws)) return -1;
    if (tb->dtype != LM_DT_U8 || ts->dtype != LM_DT_U8)
        return lm_errf(L->err, "MXFP4 tensors '%s_blocks' and '%s_scales' must be U8", name, name);
    int pb = src_add(L, s, tb, E, 0), ps = src_add(L, s, ts, E, 0);
    if (pb < 0 || ps < 0) return -1;
    s->tmpl[m] = (lm_mat){.dtype = LM_DT_MXFP4_SPLIT, .rows = out, .cols = in};
    s->field_part[m][0] = pb;
    s->field_part[m][1] = ps;
    return 0;
}

/* gpt-oss experts stacked per projection under PREFIX: as llama.cpp's GGUF files hold
 * them (gguf_model.c names them BLOCK.switch_mlp.*) or as mlx-lm's sanitize writes them
 * (BLOCK.experts.*: the even and odd rows of gate_up, MXFP4 as mlx "mxfp4", affine or
 * floats): gate, up and down stacked apart ([E, I, H], [E, I, H], [E, H, I]; MXFP4
 * blocks, mlx mxfp4 / affine or floats) with biases gate [E, I], up [E, I], down
 * [E, H], or gate and up as one
 * gate_up [E, 2I, H] with biases [E, 2I] (src_add_gate_up). The gate and up products
 * run apart (lm_moe_block.fused_gate_up 0); expert e's biases are kept as
 * expert_gate_up_bias + e * 2I = its gate bias, then its up bias. */
static int gpt_oss_stacked_experts(loader *L, const char *prefix, lm_layer *ly) {
    lm_weights *w = L->w;
    const lm_config *c = &w->cfg;
    int E = c->n_experts, I = c->moe_intermediate_size, H = c->hidden_size;
    lm_expert_source *s = &ly->src;
    w->expert_layout = LM_EXPERTS_STACKED;
    char path[320], name[352];
    lm_mat tmpl;
    const st_tensor *tq[3];
    int fused;
    snprintf(path, sizeof path, "%s.down_proj", prefix);
    if (src_add_gate_up(L, s, prefix, E, I, H, &fused) || check_mat_stack(L, path, E, H, I, &tmpl, tq) ||
        src_add_mat(L, s, 2, &tmpl, tq, E, 0))
        return -1;
    snprintf(name, sizeof name, "%s.bias", path);
    if (!(ly->expert_down_bias = load_rows_f32(L, name, E, H))) return -1; /* owned by the loader (track) */
    if (fused) { /* ffn_gate_up_exps.bias [E, 2I]: each expert's gate biases, then its up biases */
        snprintf(name, sizeof name, "%s.gate_up_proj.bias", prefix);
        return (ly->expert_gate_up_bias = load_rows_f32(L, name, E, 2 * I)) ? 0 : -1;
    }
    float *b[2];
    static const char *const proj[2] = {"gate_proj", "up_proj"};
    for (int m = 0; m < 2; m++) {
        snprintf(name, sizeof name, "%s.%s.bias", prefix, proj[m]);
        if (!(b[m] = load_rows_f32(L, name, E, I))) return -1;
    }
    float *gu = track(L, lm_malloc_aligned(sizeof(float) * 2 * (size_t)E * (size_t)I, "expert biases", L->err));
    if (!gu) return -1;
    for (int e = 0; e < E; e++) {
        memcpy(gu + (size_t)e * 2 * (size_t)I, b[0] + (size_t)e * (size_t)I, sizeof(float) * (size_t)I);
        memcpy(gu + ((size_t)e * 2 + 1) * (size_t)I, b[1] + (size_t)e * (size_t)I, sizeof(float) * (size_t)I);
    }
    ly->expert_gate_up_bias = gu;
    return 0;
}

/* gpt-oss experts: gate_up [2I, H] (rows alternate gate and up) as each expert's gate
 * view (forward.c: LM_ACT_SWIGLU_CLAMPED), down [H, I], and their biases (resident,
 * f32). Released files hold MXFP4 (gpt_oss_mxfp4); Hugging Face float files hold
 * gate_up_proj [E, H, 2I] and down_proj [E, I, H], x @ W, bound as transposed
 * matrices (lm_mat.col_major); [E, 2I, H] / [E, H, I] are read as plain rows. */
static int describe_gpt_oss_experts(loader *L, const char *block, lm_layer *ly) {
    lm_weights *w = L->w;
    const lm_config *c = &w->cfg;
    int E = c->n_experts, I = c->moe_intermediate_size, H = c->hidden_size;
    lm_expert_source *s = &ly->src;
    char gu[320], dn[320], name[352];
    snprintf(gu, sizeof gu, "%s.experts.gate_up_proj", block);
    snprintf(dn, sizeof dn, "%s.experts.down_proj", block);
    char stack[300];
    snprintf(stack, sizeof stack, "%s.switch_mlp", block); /* GGUF (gguf_model.c's names) */
    if (findf(L, "%s.gate_proj.weight", stack) || findf(L, "%s.gate_up_proj.weight", stack))
        return gpt_oss_stacked_experts(L, stack, ly);
    snprintf(stack, sizeof stack, "%s.experts", block); /* MLX: mlx-lm's SwitchGLU is mlp.experts */
    if (findf(L, "%s.gate_proj.weight", stack)) return gpt_oss_stacked_experts(L, stack, ly);
    w->expert_layout = LM_EXPERTS_FUSED;
    if (findf(L, "%s_blocks", gu)) {
        if (gpt_oss_mxfp4(L, s, gu, 0, E, 2 * I, H) || gpt_oss_mxfp4(L, s, dn, 2, E, H, I)) return -1;
    } else {
        const st_tensor *tg = st_find(w->archive, gu), *td = st_find(w->archive, dn);
        if (!tg || !td)
            return lm_errf(L->err, "missing tensor '%s'%s", tg ? dn : gu,
                           " (gpt-oss experts: gate_up_proj and down_proj, or their _blocks/_scales)");
        if (!lm_dtype_is_float(tg->dtype) || tg->dtype == LM_DT_F64 || td->dtype != tg->dtype)
            return lm_errf(L->err, "experts of '%s' must be F32, F16 or BF16 (or MXFP4 _blocks/_scales)", block);
        int64_t tr[3] = {E, H, 2 * (int64_t)I}, rm[3] = {E, 2 * (int64_t)I, H};
        int col_major = 1;
        if (check_shape(L, tg, 3, tr) != 0) {
            if (check_shape(L, tg, 3, rm) != 0)
                return lm_errf(L->err, "tensor '%s' should be [%d, %d, %d] (or [%d, %d, %d])", gu, E, H, 2 * I, E,
                               2 * I, H);
            col_major = 0;
        }
        int64_t wd[3] = {E, col_major ? I : H, col_major ? H : I};
        if (check_shape(L, td, 3, wd)) return -1;
        if (w->float_dtype == LM_DT_INVALID) w->float_dtype = tg->dtype;
        int p0 = src_add(L, s, tg, E, 0), p1 = src_add(L, s, td, E, 0);
        if (p0 < 0 || p1 < 0) return -1;
        s->tmpl[0] = (lm_mat){.dtype = tg->dtype, .rows = 2 * I, .cols = H, .col_major = col_major};
        s->tmpl[2] = (lm_mat){.dtype = td->dtype, .rows = H, .cols = I, .col_major = col_major};
        s->field_part[0][0] = p0;
        s->field_part[2][0] = p1;
    }
    s->tmpl[1] = (lm_mat){.dtype = s->tmpl[0].dtype}; /* unused: the gate view holds gate and up */
    snprintf(name, sizeof name, "%s_bias", gu);
    if (!(ly->expert_gate_up_bias = load_rows_f32(L, name, E, 2 * I))) return -1;
    snprintf(name, sizeof name, "%s_bias", dn);
    if (!(ly->expert_down_bias = load_rows_f32(L, name, E, H))) return -1;
    return 0;
}

lm_expert lm_expert_view(const lm_expert_source *src, const void *slot) {
    const char *part[LM_EXPERT_MAX_PARTS] = {0};
    for (int p = 0; p < src->nparts; p++) part[p] = (const char *)slot + src->part_off[p];
    return lm_expert_view_parts(src, part);
}

/* Describes the experts of MoE layer l under module `block` in layer.src. */
static int describe_experts(loader *L, int l, const char *block, lm_layer *ly) {
    lm_weights *w = L->w;
    const lm_config *c = &w->cfg;
    const lm_tensor_names *n = c->family->names;
    int E = c->n_experts, I = c->moe_intermediate_size, H = c->hidden_size;
    lm_expert_source *s = &ly->src;
    memset(s, 0, sizeof *s);
    s->file = track(L, lm_malloc_aligned(sizeof(int32_t) * (size_t)E * LM_EXPERT_MAX_PARTS, "expert index", L->err));
    s->off = track(L, lm_malloc_aligned(sizeof(uint64_t) * (size_t)E * LM_EXPERT_MAX_PARTS, "expert index", L->err));
    if (!s->file || !s->off) return -1;
    char path[512];
    lm_mat tmpl;
    const st_tensor *tq[3];
    if (c->swiglu_clamped) return describe_gpt_oss_experts(L, block, ly);
    if (findf(L, "%s.switch_mlp.gate_proj.weight", block) || findf(L, "%s.switch_mlp.gate_up_proj.weight", block)) {
        w->expert_layout = LM_EXPERTS_STACKED;
        char prefix[300];
        int fused;
        snprintf(prefix, sizeof prefix, "%s.switch_mlp", block);
        snprintf(path, sizeof path, "%s.down_proj", prefix);
        return src_add_gate_up(L, s, prefix, E, I, H, &fused) || check_mat_stack(L, path, E, H, I, &tmpl, tq) ||
                       src_add_mat(L, s, 2, &tmpl, tq, E, 0)
                   ? -1
                   : 0;
    }
    const st_tensor *gu = findf(L, "%s.experts.gate_up_proj", block);
    if (gu) {
        /* transformers 5 fused layout: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]. */
        w->expert_layout = LM_EXPERTS_FUSED;
        const st_tensor *dn = findf(L, "%s.experts.down_proj", block);
        if (!dn) return lm_errf(L->err, "missing tensor '%s.experts.down_proj'", block);
        int64_t sgu[3] = {E, 2 * (int64_t)I, H}, sdn[3] = {E, H, I};
        if (check_shape(L, gu, 3, sgu) || check_shape(L, dn, 3, sdn)) return -1;
        if (!lm_dtype_is_float(gu->dtype) || gu->dtype == LM_DT_F64 || dn->dtype != gu->dtype)
            return lm_errf(L->err, "experts of '%s' must be F32, F16 or BF16", block);
        if (w->float_dtype == LM_DT_INVALID) w->float_dtype = gu->dtype;
        int p0 = src_add(L, s, gu, E, 0), p1 = src_add(L, s, dn, E, 0);
        if (p0 < 0 || p1 < 0) return -1;
        s->tmpl[0] = (lm_mat){.dtype = gu->dtype, .rows = I, .cols = H};
        s->tmpl[1] = s->tmpl[0];
        s->tmpl[2] = (lm_mat){.dtype = dn->dtype, .rows = H, .cols = I};
        s->field_part[0][0] = p0;
        s->field_part[1][0] = p0;
        s->field_delta[1][0] = (uint64_t)I * (uint64_t)H * lm_dtype_size(gu->dtype);
        s->field_part[2][0] = p1;
        return 0;
    }
    w->expert_layout = LM_EXPERTS_SEPARATE;
    const char *const *alias[3] = {n->expert_gate, n->expert_up, n->expert_down};
    for (int e = 0; e < E; e++) {
        int part = 0;
        for (int m = 0; m < 3; m++) {
            int found = 0;
            for (int a = 0; a < 3 && alias[m][a] && !found; a++) {
                snprintf(path, sizeof path, "%s.experts.%d.%s", block, e, alias[m][a]);
                if (findf(L, "%s.weight", path)) found = 1;
            }
            if (!found)
                return lm_errf(L->err, "layer %d: no expert weights found under '%s' (looked for switch_mlp, "
                               "experts.gate_up_proj and experts.%d.%s)", l, block, e, alias[m][0]);
            int rows = m == 2 ? H : I, cols = m == 2 ? I : H;
            if (check_mat_stack(L, path, 0, rows, cols, &tmpl, tq)) return -1;
            if (e == 0 && src_add_mat(L, s, m, &tmpl, tq, E, 1)) return -1;
            if (e > 0 && (tmpl.dtype != s->tmpl[m].dtype || tmpl.bits != s->tmpl[m].bits ||
                          tmpl.group_size != s->tmpl[m].group_size))
                return lm_errf(L->err, "'%s' is stored differently from expert 0's", path);
            for (int k = 0; k < 3; k++) {
                if (!tq[k]) continue;
                if (tq[k]->nbytes != s->part_len[part])
                    return lm_errf(L->err, "'%s' differs in size from expert 0's", tq[k]->name);
                s->file[e * LM_EXPERT_MAX_PARTS + part] = tq[k]->file;
                s->off[e * LM_EXPERT_MAX_PARTS + part] = tq[k]->offset;
                part++;
            }
        }
    }
    return 0;
}

static int load_experts(loader *L, int l, const char *block, lm_layer *ly) { return describe_experts(L, l, block, ly); }

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
#define NORM(dst, n, ...)                                                                 \
    do {                                                                                  \
        snprintf(p, sizeof p, __VA_ARGS__);                                               \
        if (!(dst = load_norm(L, p, n))) return -1;                                       \
    } while (0)
    NORM(ly->attn_norm, H, "model.layers.%d.input_layernorm.weight", l);
    NORM(ly->ffn_norm, H, "model.layers.%d.post_attention_layernorm.weight", l);
    ly->is_linear = lm_config_layer_is_linear(c, l);
    if (ly->is_linear) {
        if (load_linear_attn(L, l, &ly->lin)) return -1;
        goto mlp;
    }
    MAT(ly->q, c->attn_output_gate ? 2 * nq : nq, H, "model.layers.%d.self_attn.q_proj", l);
    MAT(ly->k, nkv, H, "model.layers.%d.self_attn.k_proj", l);
    MAT(ly->v, nkv, H, "model.layers.%d.self_attn.v_proj", l);
    MAT(ly->o, H, nq, "model.layers.%d.self_attn.o_proj", l);
    if (c->attention_bias) {
        VEC(ly->q_bias, 1, nq, "model.layers.%d.self_attn.q_proj.bias", l);
        VEC(ly->k_bias, 1, nkv, "model.layers.%d.self_attn.k_proj.bias", l);
        VEC(ly->v_bias, 1, nkv, "model.layers.%d.self_attn.v_proj.bias", l);
        VEC(ly->o_bias, 0, H, "model.layers.%d.self_attn.o_proj.bias", l);
    }
    if (c->attn_sinks) VEC(ly->sinks, 1, c->n_heads, "model.layers.%d.self_attn.sinks", l);
    if (c->qk_norm == LM_QK_NORM_PER_HEAD) {
        NORM(ly->q_norm, hd, "model.layers.%d.self_attn.q_norm.weight", l);
        NORM(ly->k_norm, hd, "model.layers.%d.self_attn.k_norm.weight", l);
    } else if (c->qk_norm == LM_QK_NORM_FULL) {
        NORM(ly->q_norm, nq, "model.layers.%d.self_attn.q_norm.weight", l);
        NORM(ly->k_norm, nkv, "model.layers.%d.self_attn.k_norm.weight", l);
    }
mlp:
    ly->is_moe = lm_config_layer_is_moe(c, l);
    if (!ly->is_moe) {
        int F = c->intermediate_size;
        MAT(ly->mlp_gate, F, H, "model.layers.%d.mlp.gate_proj", l);
        MAT(ly->mlp_up, F, H, "model.layers.%d.mlp.up_proj", l);
        MAT(ly->mlp_down, H, F, "model.layers.%d.mlp.down_proj", l);
        return 0;
    }
    const lm_tensor_names *n = c->family->names;
    char block[256] = "";
    for (int i = 0; i < 3 && n->moe_blocks[i]; i++) {
        snprintf(block, sizeof block, "model.layers.%d.%s", l, n->moe_blocks[i]);
        if (findf(L, "%s.%s.weight", block, n->router)) break;
        block[0] = 0;
    }
    if (!block[0])
        return lm_errf(L->err, "layer %d is a MoE layer but has no router (model.layers.%d.%s.%s.weight)", l, l,
                       n->moe_blocks[0], n->router);
    MAT(ly->router, c->n_experts, H, "%s.%s", block, n->router);
    if (c->router_topk_softmax) VEC(ly->router_bias, 1, c->n_experts, "%s.%s.bias", block, n->router);
    int SI = c->shared_expert_intermediate_size;
    if (SI > 0) {
        MAT(ly->shared_gate, SI, H, "%s.%s.gate_proj", block, n->shared_expert);
        MAT(ly->shared_up, SI, H, "%s.%s.up_proj", block, n->shared_expert);
        MAT(ly->shared_down, H, SI, "%s.%s.down_proj", block, n->shared_expert);
        if (c->shared_expert_gated) MAT(ly->shared_expert_gate, 1, H, "%s.%s", block, n->shared_expert_gate);
    }
    if (c->router_sigmoid) {
        for (int i = 0; i < 2 && n->correction_bias[i] && !ly->router_correction; i++) {
            snprintf(p, sizeof p, "%s.%s", block, n->correction_bias[i]);
            ly->router_correction = load_vec(L, p, c->n_experts, 0);
            if (!ly->router_correction && L->err && L->err[0]) return -1;
        }
        if (!ly->router_correction)
            return lm_errf(L->err, "layer %d: missing tensor '%s.%s' (the sigmoid router's correction bias)", l,
                           block, n->correction_bias[0]);
    }
    return load_experts(L, l, block, ly);
#undef VEC
#undef MAT
#undef NORM
}

static uint64_t mat_params(const lm_mat *m) { return (uint64_t)m->rows * (uint64_t)m->cols; }

static void account(lm_weights *w) {
    const lm_config *c = &w->cfg;
    uint64_t H = (uint64_t)c->hidden_size, V = (uint64_t)c->vocab_size;
    uint64_t resident_params = V * H * (c->tie_word_embeddings ? 1 : 2) + H;
    uint64_t bytes = lm_mat_bytes(&w->embed) + (c->tie_word_embeddings ? 0 : lm_mat_bytes(&w->lm_head));
    w->params_expert = 3 * H * (uint64_t)c->moe_intermediate_size;
    uint64_t active = 0, experts_total = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *ly = &w->layers[l];
        resident_params += 2 * H;
        const lm_mat *mats[] = {&ly->q,          &ly->k,           &ly->v,           &ly->o,
                                &ly->lin.in_qkvz, &ly->lin.in_ba,  &ly->lin.out,     &ly->shared_gate,
                                &ly->shared_up,  &ly->shared_down, &ly->shared_expert_gate, &ly->lin.in_z,
                                &ly->lin.in_a};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
            resident_params += mat_params(mats[i]);
            bytes += lm_mat_bytes(mats[i]);
        }
        if (ly->is_linear) /* conv kernel, A_log, dt_bias, gated norm */
            resident_params += (uint64_t)(2 * c->lin_k_heads * c->lin_k_dim + c->lin_v_heads * c->lin_v_dim) *
                                   (uint64_t)c->conv_kernel +
                               2 * (uint64_t)c->lin_v_heads + (uint64_t)c->lin_v_dim;
        if (ly->is_moe) {
            resident_params += (uint64_t)c->n_experts * H;
            bytes += lm_mat_bytes(&ly->router);
            active += (uint64_t)c->top_k * w->params_expert;
            experts_total += (uint64_t)c->n_experts * w->params_expert;
            uint64_t eb = 0; /* bytes on disk: weights, scales and biases */
            for (int p = 0; p < ly->src.nparts; p++) eb += ly->src.part_len[p];
            if (eb > w->bytes_per_expert) w->bytes_per_expert = eb;
            w->bytes_experts += eb * (uint64_t)c->n_experts;
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

/* A config.json with fewer layers than the weights would run the first N layers and
 * silently ignore the rest: any tensor of a layer past num_hidden_layers is an error,
 * except the multi-token-prediction layers the config declares (never read). */
static int check_layer_count(const st_archive *a, const char *prefix, const lm_config *c, char *err) {
    size_t pl = strlen(prefix);
    for (int i = 0; i < a->ntensors; i++) {
        const char *name = a->tensors[i].name;
        if (strncmp(name, prefix, pl) != 0 || strncmp(name + pl, "layers.", 7) != 0) continue;
        const char *p = name + pl + 7;
        char *end;
        long l = strtol(p, &end, 10);
        if (end != p && *end == '.' && l >= c->n_layers && l >= (long)c->n_layers + c->n_nextn_layers)
            return lm_errf(err, "the weights hold layer %ld ('%s') but config.json num_hidden_layers is %d", l, name,
                           c->n_layers);
    }
    return 0;
}

/* What the files hold that the forward pass never reads, for `info`: multi-token-
 * prediction layers (glm4_moe's layers past the last, qwen3_5_moe's mtp.layers.N) and a
 * vision tower (model.visual.*). Names only; no byte of them is read. */
static void count_unread(lm_weights *w, const char *prefix) {
    const st_archive *a = w->archive;
    size_t pl = strlen(prefix);
    int seen[64] = {0};
    for (int i = 0; i < a->ntensors; i++) {
        const char *name = a->tensors[i].name, *p = NULL;
        if (!strncmp(name, prefix, pl) && !strncmp(name + pl, "layers.", 7)) p = name + pl + 7;
        else if (!strncmp(name, "mtp.layers.", 11)) p = name + 11;
        if (!strncmp(name, "model.visual.", 13)) w->has_vision_tower = 1;
        if (!p) continue;
        long l = strtol(p, NULL, 10);
        if (p == name + 11) l += w->cfg.n_layers; /* mtp.layers.N */
        long k = l - w->cfg.n_layers;
        if (k >= 0 && k < 64 && !seen[k]) {
            seen[k] = 1;
            w->n_mtp_layers++;
        }
    }
}

/* Where the text model's tensors are (loader.prefix). */
static void find_prefix(loader *L) {
    L->prefix = "model.";
    L->head_prefix = "lm_head";
    if (st_find(L->w->archive, "model.language_model.embed_tokens.weight")) {
        L->prefix = "model.language_model.";
    } else if (st_find(L->w->archive, "language_model.model.embed_tokens.weight")) {
        L->prefix = "language_model.model.";
        L->head_prefix = "language_model.lm_head";
    }
}

/* The tensors the loader reads whole: not the experts (the expert store reads those,
 * lazily or at --resident), not a vision tower or multi-token-prediction layers. */
static int resident_tensor(const st_tensor *t) {
    return !strstr(t->name, ".switch_mlp.") && !strstr(t->name, ".experts.") && strncmp(t->name, "mtp.", 4) != 0 &&
           !strstr(t->name, "visual.");
}

/* Below this much the loader's own reads finish before readers would help. */
#define RESIDENT_PREFETCH_MIN_BYTES (128ull << 20)
#define RESIDENT_PREFETCH_THREADS 4

int lm_weights_load(lm_weights *w, const char *dir, lm_progress_fn progress, void *pctx, char *err) {
    memset(w, 0, sizeof *w);
    st_prefetch *ahead = NULL;
    loader L = {w, err, 0.0f, "model.", "lm_head", NULL, 0};
    if (gguf_is_path(dir)) {
        /* a GGUF file: config from its metadata, tensors under Hugging Face names */
        gguf_archive *g = NULL;
        if (gguf_open(&g, dir, err) != 0) return -1;
        int rc = lm_gguf_config(&w->cfg, g, err);
        if (rc == 0) rc = lm_gguf_archive(g, &w->cfg, &w->archive, err);
        gguf_close(g);
        if (rc != 0) goto fail;
    } else {
        if (lm_config_load(&w->cfg, dir, err) != 0) return -1;
        if (st_open(&w->archive, dir, err) != 0) goto fail;
    }
    find_prefix(&L);
    if (check_layer_count(w->archive, L.prefix, &w->cfg, err) != 0) goto fail;
    ahead = st_prefetch_start(w->archive, resident_tensor, RESIDENT_PREFETCH_THREADS, RESIDENT_PREFETCH_MIN_BYTES);
    count_unread(w, L.prefix);
    /* GGUF files hold zero-centred norms with the 1 added (llama.cpp's converter) */
    if (w->cfg.zero_centred_norms && !gguf_is_path(dir) && detect_norm_offset(&L) != 0) goto fail;
    const lm_config *c = &w->cfg;
    int H = c->hidden_size;
    w->layers = track(&L, lm_malloc_aligned(sizeof(lm_layer) * (size_t)c->n_layers, "layers", err));
    if (!w->layers) goto fail;
    memset(w->layers, 0, sizeof(lm_layer) * (size_t)c->n_layers);
    if (load_mat(&L, "model.embed_tokens", c->vocab_size, H, &w->embed)) goto fail;
    w->final_norm = load_norm(&L, "model.norm.weight", H);
    if (!w->final_norm) goto fail;
    if (c->tie_word_embeddings && !lookup(&L, "lm_head.weight")) {
        w->lm_head = w->embed;
    } else if (load_mat(&L, "lm_head", c->vocab_size, H, &w->lm_head)) {
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        if (load_layer(&L, l) != 0) goto fail;
        if (progress) progress(pctx, "loading weights", (double)(l + 1) / c->n_layers);
    }
    int half = c->rope_dim / 2;
    w->rope_inv_freq = track(&L, lm_malloc_aligned(sizeof(float) * (size_t)half, "rope", err));
    if (!w->rope_inv_freq) goto fail;
    lm_rope_params(c, w->rope_inv_freq, &w->rope_scale);
    account(w);
    st_prefetch_stop(ahead);
    for (int i = 0; i < w->archive->nfiles; i++) lm_file_drop_cache(w->archive->files[i].fd);
    return 0;
fail:
    st_prefetch_stop(ahead);
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

#include "convert/gguf_export.h"

#include "common/buf.h"
#include "common/error.h"
#include "formats/gguf_write.h"
#include "models/family.h"
#include "models/model.h"
#include "platform/platform.h"
#include "text/tokenizer_gguf.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { GGML_F32 = 0, GGML_F16 = 1, GGML_Q8_0 = 8, GGML_BF16 = 30, GGML_MXFP4 = 39 };

typedef struct {
    gguf_writer *w;
    const lm_weights *lw;
    lm_dtype type;
    char *err;
    int llama; /* permute q/k rows for ggml's RoPE */
    int placeholder_vocab;
    int fuse_gate_up; /* LM_GGUF_FUSE_GATE_UP */
    int gpt_oss;
    int glm; /* glm4moe: post_attention_norm, exp_probs_b, shared experts, dense leading layers */
    int mtp; /* glm4moe's multi-token-prediction layers kept (LM_GGUF_KEEP_MTP): how many */
    int qwen_linear; /* qwen3next / qwen35moe: Gated DeltaNet layers, shared expert gate */
    int v_tiled;     /* qwen35moe: value heads written in llama.cpp's tiled order */
} exporter;

static uint32_t ggml_of(lm_dtype t) {
    return t == LM_DT_F16 ? GGML_F16 : t == LM_DT_BF16 ? GGML_BF16 : t == LM_DT_Q8_0 ? GGML_Q8_0 : GGML_F32;
}

/* One row as Q8_0 blocks, the way ggml's reference quantizer does it: per 32 values
 * d = max|x| / 127 (stored as f16), q = round(x / d). */
static void quantize_q8_0(uint8_t *dst, const float *x, int n) {
    for (int b = 0; b < n / 32; b++, dst += 34) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = lm_f32_to_f16(d);
        dst[0] = (uint8_t)(h & 0xff);
        dst[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < 32; j++) dst[2 + j] = (uint8_t)(int8_t)roundf(x[b * 32 + j] * id);
    }
}

/* Appends n f32 values converted to `type` at dst (element offset i). */
static void store(void *dst, size_t i, const float *v, size_t n, lm_dtype type) {
    for (size_t k = 0; k < n; k++) {
        if (type == LM_DT_F32) ((float *)dst)[i + k] = v[k];
        else if (type == LM_DT_F16) ((uint16_t *)dst)[i + k] = lm_f32_to_f16(v[k]);
        else ((uint16_t *)dst)[i + k] = lm_f32_to_bf16(v[k]);
    }
}

/* Row r of the stored matrix goes to row dest_row(r): llama.cpp's q/k permutation puts
 * Hugging Face row j*d/2 + i of a head of d rows at 2i + j. */
static int dest_row(int r, int head_dim) {
    if (!head_dim) return r;
    int h = r / head_dim, w = r % head_dim, half = head_dim / 2;
    int j = w / half, i = w % half;
    return h * head_dim + 2 * i + j;
}

/* Writes `count` stacked matrices (count 1: one matrix) as one tensor; every `group`
 * consecutive matrices (1, or 2 for a fused gate_up) are one entry of the stack. */
static int put_mats(exporter *x, const char *name, const lm_mat *const *mats, int count, int group, lm_dtype type,
                    int permute) {
    if (count < 1 || !mats[0]) return lm_errf(x->err, "%s: no matrix to write", name);
    int rows = mats[0]->rows, cols = mats[0]->cols;
    if (type == LM_DT_Q8_0 && cols % 32) type = LM_DT_F32; /* as llama.cpp: rows that are not whole blocks stay float */
    size_t es = lm_dtype_size(type);
    size_t row_bytes = type == LM_DT_Q8_0 ? (size_t)cols / 32 * 34 : (size_t)cols * es;
    uint64_t nbytes = (uint64_t)rows * row_bytes * (uint64_t)count;
    void *buf = lm_malloc((size_t)nbytes, name, x->err);
    float *row = lm_malloc(sizeof(float) * (size_t)cols, name, x->err);
    if (!buf || !row) {
        free(buf);
        free(row);
        return -1;
    }
    int hd = permute ? x->lw->cfg.head_dim : 0;
    for (int e = 0; e < count; e++)
        for (int r = 0; r < rows; r++) {
            lm_mat_row_f32(mats[e], r, row);
            size_t dr = (size_t)e * (size_t)rows + (size_t)dest_row(r, hd);
            if (type == LM_DT_Q8_0) quantize_q8_0((uint8_t *)buf + dr * row_bytes, row, cols);
            else store(buf, dr * (size_t)cols, row, (size_t)cols, type);
        }
    free(row);
    int64_t ne[3] = {cols, (int64_t)rows * group, count / group};
    return gguf_w_tensor(x->w, name, ggml_of(type), count > 1 ? 3 : 2, ne, buf, nbytes, 1) == 0
               ? 0
               : lm_errf(x->err, "out of memory");
}

static int put_mat(exporter *x, const char *name, const lm_mat *m, lm_dtype type, int permute) {
    const lm_mat *one[1] = {m};
    return put_mats(x, name, one, 1, 1, type, permute);
}

static int put_vec(exporter *x, const char *name, const float *v, int n, int permute) {
    float *buf = lm_malloc(sizeof(float) * (size_t)n, name, x->err);
    if (!buf) return -1;
    int hd = permute ? x->lw->cfg.head_dim : 0;
    for (int i = 0; i < n; i++) buf[dest_row(i, hd)] = v[i];
    int64_t ne[1] = {n};
    return gguf_w_tensor(x->w, name, GGML_F32, 1, ne, buf, sizeof(float) * (uint64_t)n, 1) == 0
               ? 0
               : lm_errf(x->err, "out of memory");
}

/* Reads the experts of layer l from the files: *slots (free with lm_free_aligned) holds
 * them, m[e * 3 + k] views expert e's gate, up and down. */
static int read_experts(exporter *x, int l, char **slots_out, lm_mat *m) {
    const lm_expert_source *s = &x->lw->layers[l].src;
    int E = x->lw->cfg.n_experts;
    char *slots = lm_malloc_aligned((size_t)s->slot_bytes * (size_t)E, "experts", x->err);
    *slots_out = slots;
    if (!slots) return -1;
    for (int e = 0; e < E; e++) {
        char *slot = slots + (size_t)e * s->slot_bytes;
        for (int p = 0; p < s->nparts; p++) {
            int idx = e * LM_EXPERT_MAX_PARTS + p;
            const st_file *f = &x->lw->archive->files[s->file[idx]];
            if (lm_pread_full(f->fd, slot + s->part_off[p], (size_t)s->part_len[p], s->off[idx], x->err) != 0) {
                lm_err_prefix(x->err, "%s: layer %d expert %d", f->path, l, e);
                return -1;
            }
        }
        lm_expert ex = lm_expert_view(s, slot);
        m[e * 3 + 0] = ex.gate;
        m[e * 3 + 1] = ex.up;
        m[e * 3 + 2] = ex.down;
    }
    return 0;
}

/* The experts of layer l, read from the files and stacked per projection (gate and up
 * as one ffn_gate_up_exps with fuse_gate_up: each expert's gate rows, then its up rows). */
static int put_experts(exporter *x, int l) {
    int E = x->lw->cfg.n_experts;
    char *slots = NULL;
    lm_mat *m = calloc((size_t)E * 3, sizeof(lm_mat));
    const lm_mat **ptr = calloc((size_t)E * 2, sizeof(lm_mat *));
    int rc = -1;
    if (!m || !ptr) {
        lm_errf(x->err, "out of memory");
        goto done;
    }
    if (read_experts(x, l, &slots, m)) goto done;
    static const char *const names[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    /* fused: k = 1 writes gate and up (matrices 0 and 1 of each expert) as one tensor */
    for (int k = x->fuse_gate_up ? 1 : 0; k < 3; k++) {
        int group = x->fuse_gate_up && k == 1 ? 2 : 1;
        for (int e = 0; e < E; e++)
            for (int g = 0; g < group; g++) ptr[e * group + g] = &m[e * 3 + k - (group - 1) + g];
        char name[96];
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, group == 2 ? "ffn_gate_up_exps" : names[k]);
        if (put_mats(x, name, ptr, E * group, group, x->type, 0)) goto done;
    }
    rc = 0;
done:
    lm_free_aligned(slots);
    free(m);
    free(ptr);
    return rc;
}

/* Row r of an MXFP4 matrix (split or ggml layout) as ggml blocks: per 32 values the
 * e8m0 byte, then 16 bytes with value j in the low nibble and value j + 16 in the high
 * one. The split layout keeps values 2k, 2k + 1 in byte k: only the nibbles move. */
static void mxfp4_row_blocks(const lm_mat *m, int r, uint8_t *dst) {
    int groups = m->cols / 32;
    if (m->dtype == LM_DT_MXFP4) {
        memcpy(dst, (const uint8_t *)m->data + (size_t)r * (size_t)groups * 17, (size_t)groups * 17);
        return;
    }
    const uint8_t *codes = (const uint8_t *)m->data + (size_t)r * (size_t)(m->cols / 2);
    const uint8_t *scales = (const uint8_t *)m->scales + (size_t)r * (size_t)groups;
    for (int g = 0; g < groups; g++, dst += 17) {
        const uint8_t *c = codes + g * 16;
        dst[0] = scales[g];
        for (int j = 0; j < 16; j++) {
            int lo = (c[j / 2] >> (4 * (j & 1))) & 15, hi = (c[8 + j / 2] >> (4 * (j & 1))) & 15;
            dst[1 + j] = (uint8_t)(lo | hi << 4);
        }
    }
}

/* gpt-oss experts as llama.cpp's converter writes them: ffn_gate_exps and ffn_up_exps
 * [E, I, H] (the even and odd rows of Hugging Face's gate_up), ffn_down_exps [E, H, I],
 * MXFP4 as ggml MXFP4 blocks bit for bit (float experts in the chosen type), and F32
 * biases ffn_{gate,up,down}_exps.bias [E, I], [E, I], [E, H]; with fuse_gate_up (the
 * converter's --fuse-gate-up-exps) gate and up as one ffn_gate_up_exps [E, 2I, H] and
 * its bias [E, 2I], each expert's gate rows then its up rows. A GGUF source (gate and
 * up apart or fused, weights.c gpt_oss_stacked_experts) is written back alike. */
static int put_gpt_oss_experts(exporter *x, int l) {
    const lm_config *c = &x->lw->cfg;
    const lm_layer *ly = &x->lw->layers[l];
    int E = c->n_experts, I = c->moe_intermediate_size, H = c->hidden_size;
    int hf_fused = x->lw->expert_layout == LM_EXPERTS_FUSED; /* gate and up interleaved in one matrix */
    char *slots = NULL;
    lm_mat *m = calloc((size_t)E * 3, sizeof(lm_mat));
    float *row = lm_malloc(sizeof(float) * (size_t)(H > I ? H : I), "row", x->err);
    int rc = -1;
    if (!m || !row) {
        if (row) lm_errf(x->err, "out of memory");
        goto done;
    }
    if (read_experts(x, l, &slots, m)) goto done;
    static const char *const names[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    char name[96];
    /* output tensor t holds projections k0 .. k0 + parts - 1 (gate 0, up 1, down 2) */
    int fuse = x->fuse_gate_up != 0;
    for (int t = 0; t < 3 - fuse; t++) {
        int k0 = fuse && t == 1 ? 2 : t, parts = fuse && t == 0 ? 2 : 1;
        const char *tname = parts == 2 ? "ffn_gate_up_exps" : names[k0];
        int rows = k0 == 2 ? H : I, cols = k0 == 2 ? I : H, out_rows = rows * parts;
        lm_dtype st = m[k0 == 2 ? 2 : hf_fused ? 0 : k0].dtype;
        int mx = st == LM_DT_MXFP4 || st == LM_DT_MXFP4_SPLIT;
        lm_dtype type = mx ? LM_DT_MXFP4 : x->type;
        if (type == LM_DT_Q8_0 && cols % 32) type = LM_DT_F32;
        size_t row_bytes = mx ? (size_t)cols / 32 * 17
                              : type == LM_DT_Q8_0 ? (size_t)cols / 32 * 34 : (size_t)cols * lm_dtype_size(type);
        uint64_t nbytes = (uint64_t)row_bytes * (uint64_t)out_rows * (uint64_t)E;
        uint8_t *buf = lm_malloc((size_t)nbytes, tname, x->err);
        float *b = buf ? lm_malloc(sizeof(float) * (size_t)out_rows * (size_t)E, "bias", x->err) : NULL;
        if (!b) {
            free(buf);
            goto done;
        }
        for (int e = 0; e < E; e++)
            for (int ro = 0; ro < out_rows; ro++) {
                /* projection k's row r: which matrix of expert e holds it, and at which row */
                int k = k0 + ro / rows, r = ro % rows;
                int src_k = k == 2 ? 2 : hf_fused ? 0 : k, sr = hf_fused && k < 2 ? 2 * r + k : r;
                const lm_mat *src = &m[e * 3 + src_k];
                uint8_t *dst = buf + ((size_t)e * (size_t)out_rows + (size_t)ro) * row_bytes;
                /* biases: Hugging Face interleaves gate and up; a GGUF source keeps them apart */
                b[(size_t)e * (size_t)out_rows + (size_t)ro] =
                    k == 2      ? ly->expert_down_bias[(size_t)e * (size_t)H + (size_t)r]
                    : hf_fused ? ly->expert_gate_up_bias[(size_t)e * 2 * (size_t)I + 2 * (size_t)r + (size_t)k]
                               : ly->expert_gate_up_bias[(size_t)e * 2 * (size_t)I + (size_t)k * (size_t)I + (size_t)r];
                if (mx) {
                    mxfp4_row_blocks(src, sr, dst);
                    continue;
                }
                lm_mat_row_f32(src, sr, row);
                if (type == LM_DT_Q8_0) quantize_q8_0(dst, row, cols);
                else store(dst, 0, row, (size_t)cols, type);
            }
        int64_t ne[3] = {cols, out_rows, E}, bne[2] = {out_rows, E};
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, tname);
        if (gguf_w_tensor(x->w, name, mx ? GGML_MXFP4 : ggml_of(type), 3, ne, buf, nbytes, 1) != 0) {
            free(b);
            lm_errf(x->err, "out of memory");
            goto done;
        }
        snprintf(name, sizeof name, "blk.%d.%s.bias", l, tname);
        if (gguf_w_tensor(x->w, name, GGML_F32, 2, bne, b, sizeof(float) * (uint64_t)out_rows * (uint64_t)E, 1) != 0) {
            lm_errf(x->err, "out of memory");
            goto done;
        }
    }
    rc = 0;
done:
    lm_free_aligned(slots);
    free(m);
    free(row);
    return rc;
}

/* ---- Gated DeltaNet layers (qwen3next, qwen35moe) ----
 * Row r of a written tensor comes from row src_row[r] of matrix srcs[src_mat[r]] of the
 * loaded layer; with col_src, column j of it from column col_src[j]. Value heads are
 * named in Hugging Face's grouped order (head h = key head h / (nv / nk)) and mapped to
 * where the source keeps them (its grouped order, or the tiled order of a qwen35moe
 * GGUF source) and to where llama.cpp wants them: qwen35moe's converter reorders them
 * to the tiled order, value head j of key head g at j nk + g (ggml's broadcast). */
typedef struct {
    int nk, nv, dk, dv, r, key_dim, cd, per_k;
    int src_tiled;         /* the source keeps value heads tiled */
    int src_sep, src_sepba; /* the source has in_proj_qkv / in_z apart, in_b / in_a apart */
} lin_shape;

static lin_shape lin_shape_of(const exporter *x, const lm_linear_attn *la) {
    const lm_config *c = &x->lw->cfg;
    lin_shape s = {c->lin_k_heads, c->lin_v_heads, c->lin_k_dim, c->lin_v_dim, c->lin_v_heads / c->lin_k_heads, 0, 0,
                   0, c->lin_v_tiled, la->in_z.rows > 0, la->in_a.rows > 0};
    s.key_dim = s.nk * s.dk;
    s.cd = 2 * s.key_dim + s.nv * s.dv;
    s.per_k = 2 * s.dk + 2 * s.r * s.dv;
    return s;
}

/* where the source keeps grouped value head h; which grouped head the output's head
 * o is */
static int src_head(const lin_shape *s, int h) { return s->src_tiled ? (h % s->r) * s->nk + h / s->r : h; }
static int out_head(const exporter *x, const lin_shape *s, int o) {
    return x->v_tiled ? (o % s->nk) * s->r + o / s->nk : o;
}

/* Source row of q/k/v channel ch (conv order, value heads grouped) and of z row i. */
static int qkv_src_row(const lin_shape *s, int ch) {
    if (ch < 2 * s->key_dim) {
        int kpart = ch >= s->key_dim, w = ch % s->key_dim;
        return s->src_sep ? ch : (w / s->dk) * s->per_k + kpart * s->dk + w % s->dk;
    }
    int i = ch - 2 * s->key_dim, h = src_head(s, i / s->dv), e = i % s->dv;
    return s->src_sep ? 2 * s->key_dim + h * s->dv + e : (h / s->r) * s->per_k + 2 * s->dk + (h % s->r) * s->dv + e;
}
static int z_src_row(const lin_shape *s, int i, int *mat) {
    int h = src_head(s, i / s->dv), e = i % s->dv;
    *mat = s->src_sep ? 1 : 0;
    return s->src_sep ? h * s->dv + e : (h / s->r) * s->per_k + 2 * s->dk + s->r * s->dv + (h % s->r) * s->dv + e;
}
/* b (which 0) or a (1) of grouped head h: matrix (2 in_ba, 3 in_a) and row */
static int ba_src_row(const lin_shape *s, int h, int which, int *mat) {
    h = src_head(s, h);
    *mat = s->src_sepba && which ? 3 : 2;
    return s->src_sepba ? h : (h / s->r) * 2 * s->r + which * s->r + h % s->r;
}

/* Writes rows x cols as described above (type as put_mats: Q8_0 falls back to F32 for
 * rows that are not whole blocks). */
static int put_mapped(exporter *x, const char *name, const lm_mat *const *srcs, const int *src_mat, const int *src_row,
                      int rows, int cols, const int *col_src, lm_dtype type) {
    if (type == LM_DT_Q8_0 && cols % 32) type = LM_DT_F32;
    size_t row_bytes = type == LM_DT_Q8_0 ? (size_t)cols / 32 * 34 : (size_t)cols * lm_dtype_size(type);
    uint64_t nbytes = (uint64_t)rows * row_bytes;
    int src_cols = srcs[src_mat[0]]->cols;
    uint8_t *buf = lm_malloc((size_t)nbytes, name, x->err);
    float *row = lm_malloc(sizeof(float) * (size_t)(src_cols > cols ? src_cols : cols), name, x->err),
          *out = lm_malloc(sizeof(float) * (size_t)cols, name, x->err);
    int rc = -1;
    if (!buf || !row || !out) goto done;
    for (int r = 0; r < rows; r++) {
        const lm_mat *m = srcs[src_mat[r]];
        lm_mat_row_f32(m, src_row[r], row);
        for (int j = 0; j < cols; j++) out[j] = row[col_src ? col_src[j] : j];
        if (type == LM_DT_Q8_0) quantize_q8_0(buf + (size_t)r * row_bytes, out, cols);
        else store(buf + (size_t)r * row_bytes, 0, out, (size_t)cols, type);
    }
    int64_t ne[2] = {cols, rows};
    rc = gguf_w_tensor(x->w, name, ggml_of(type), 2, ne, buf, nbytes, 1) == 0 ? 0 : lm_errf(x->err, "out of memory");
    buf = NULL; /* the writer owns it, written or not */
done:
    free(buf);
    free(row);
    free(out);
    return rc;
}

/* One Gated DeltaNet layer the way llama.cpp's converter writes it: attn_qkv [q | k | v]
 * and attn_gate (z) split from Hugging Face's in_proj_qkvz (per key head q, k, v, z),
 * ssm_ba kept fused (qwen3next) or ssm_beta / ssm_alpha apart (qwen35moe),
 * ssm_conv1d [C, K], ssm_a = -exp(A_log) (no suffix), ssm_dt.bias, ssm_norm, ssm_out;
 * qwen35moe's value heads in the tiled order throughout (rows of attn_qkv's v part,
 * attn_gate, ssm_beta, ssm_alpha, conv channels, ssm_a, ssm_dt, columns of ssm_out). */
static int put_linear_layer(exporter *x, int l) {
    const lm_linear_attn *la = &x->lw->layers[l].lin;
    lin_shape s = lin_shape_of(x, la);
    const lm_mat *srcs[4] = {&la->in_qkvz, &la->in_z, &la->in_ba, &la->in_a};
    int vd = s.nv * s.dv, n = s.cd > 2 * s.nv ? s.cd : 2 * s.nv;
    if (la->out.rows > n) n = la->out.rows;
    int K = x->lw->cfg.conv_kernel;
    int *mat = calloc((size_t)n, sizeof(int)), *row = calloc((size_t)n, sizeof(int)),
        *col = calloc((size_t)vd, sizeof(int));
    /* every channel of vec is written below; the writer takes it over (lm_malloc, like put_mats' buffers) */
    float *vec = lm_malloc(sizeof(float) * (size_t)s.cd * (size_t)K, "ssm_conv1d", x->err),
          *vec2 = calloc((size_t)s.nv, sizeof(float));
    char nm[96];
    int rc = -1;
    if (!mat || !row || !col || !vec || !vec2) {
        lm_errf(x->err, "out of memory");
        goto done;
    }
#define LNAME(part) (snprintf(nm, sizeof nm, "blk.%d.%s", l, part), nm)
    /* conv channel ch of the output holds grouped channel chan(ch) */
    for (int ch = 0; ch < s.cd; ch++) {
        int g = ch;
        if (ch >= 2 * s.key_dim) {
            int i = ch - 2 * s.key_dim;
            g = 2 * s.key_dim + out_head(x, &s, i / s.dv) * s.dv + i % s.dv;
        }
        mat[ch] = 0;
        row[ch] = qkv_src_row(&s, g);
        /* the loaded kernel is in the source's conv channel order, [q | k | v] with the
         * value heads as the source keeps them (fused projections included) */
        int src_ch = g < 2 * s.key_dim ? g
                                       : 2 * s.key_dim + src_head(&s, (g - 2 * s.key_dim) / s.dv) * s.dv +
                                             (g - 2 * s.key_dim) % s.dv;
        memcpy(vec + (size_t)ch * (size_t)K, la->conv + (size_t)src_ch * (size_t)K, sizeof(float) * (size_t)K);
    }
    if (put_mapped(x, LNAME("attn_qkv.weight"), srcs, mat, row, s.cd, srcs[0]->cols, NULL, x->type)) goto done;
    for (int i = 0; i < vd; i++) row[i] = z_src_row(&s, out_head(x, &s, i / s.dv) * s.dv + i % s.dv, &mat[i]);
    if (put_mapped(x, LNAME("attn_gate.weight"), srcs, mat, row, vd, srcs[0]->cols, NULL, x->type)) goto done;
    if (x->v_tiled) { /* qwen35moe: ssm_beta, ssm_alpha [nv, H] */
        for (int which = 0; which < 2; which++) {
            for (int o = 0; o < s.nv; o++) row[o] = ba_src_row(&s, out_head(x, &s, o), which, &mat[o]);
            if (put_mapped(x, LNAME(which ? "ssm_alpha.weight" : "ssm_beta.weight"), srcs, mat, row, s.nv,
                           srcs[2]->cols, NULL, x->type))
                goto done;
        }
    } else { /* qwen3next: ssm_ba [2 nv, H], per key head its r b then its r a */
        for (int i = 0; i < 2 * s.nv; i++) {
            int g = i / (2 * s.r), w = i % (2 * s.r);
            row[i] = ba_src_row(&s, g * s.r + w % s.r, w >= s.r, &mat[i]);
        }
        if (put_mapped(x, LNAME("ssm_ba.weight"), srcs, mat, row, 2 * s.nv, srcs[2]->cols, NULL, x->type)) goto done;
    }
    int64_t cne[2] = {K, s.cd};
    int conv_rc = gguf_w_tensor(x->w, LNAME("ssm_conv1d.weight"), GGML_F32, 2, cne, vec,
                                sizeof(float) * (uint64_t)s.cd * (uint64_t)K, 1);
    vec = NULL; /* the writer owns it, written or not */
    if (conv_rc != 0) {
        lm_errf(x->err, "out of memory");
        goto done;
    }
    for (int o = 0; o < s.nv; o++) vec2[o] = la->A[src_head(&s, out_head(x, &s, o))];
    if (put_vec(x, LNAME("ssm_a"), vec2, s.nv, 0)) goto done;
    for (int o = 0; o < s.nv; o++) vec2[o] = la->dt_bias[src_head(&s, out_head(x, &s, o))];
    if (put_vec(x, LNAME("ssm_dt.bias"), vec2, s.nv, 0) || put_vec(x, LNAME("ssm_norm.weight"), la->norm, s.dv, 0))
        goto done;
    const lm_mat *out[1] = {&la->out};
    for (int i = 0; i < vd; i++) col[i] = src_head(&s, out_head(x, &s, i / s.dv)) * s.dv + i % s.dv;
    for (int r = 0; r < la->out.rows; r++) mat[r] = 0, row[r] = r;
    if (put_mapped(x, LNAME("ssm_out.weight"), out, mat, row, la->out.rows, vd, col, x->type)) goto done;
#undef LNAME
    rc = 0;
done:
    free(mat);
    free(row);
    free(col);
    free(vec);
    free(vec2);
    return rc;
}

static int put_layer(exporter *x, int l) {
    const lm_config *c = &x->lw->cfg;
    const lm_layer *ly = &x->lw->layers[l];
    char n[96];
    int H = c->hidden_size, nq = c->n_heads * c->head_dim, nkv = c->n_kv_heads * c->head_dim;
#define NAME(part) (snprintf(n, sizeof n, "blk.%d.%s", l, part), n)
    if (put_vec(x, NAME("attn_norm.weight"), ly->attn_norm, H, 0) ||
        put_vec(x, NAME(x->gpt_oss || x->glm || x->qwen_linear ? "post_attention_norm.weight" : "ffn_norm.weight"),
                ly->ffn_norm, H, 0))
        return -1;
    if (ly->is_linear) {
        if (put_linear_layer(x, l)) return -1;
        goto ffn;
    }
    if (put_mat(x, NAME("attn_q.weight"), &ly->q, x->type, x->llama) ||
        put_mat(x, NAME("attn_k.weight"), &ly->k, x->type, x->llama) ||
        put_mat(x, NAME("attn_v.weight"), &ly->v, x->type, 0) ||
        put_mat(x, NAME("attn_output.weight"), &ly->o, x->type, 0))
        return -1;
    if (ly->q_bias && (put_vec(x, NAME("attn_q.bias"), ly->q_bias, nq, x->llama) ||
                       put_vec(x, NAME("attn_k.bias"), ly->k_bias, nkv, x->llama) ||
                       put_vec(x, NAME("attn_v.bias"), ly->v_bias, nkv, 0)))
        return -1;
    if (ly->o_bias && put_vec(x, NAME("attn_output.bias"), ly->o_bias, H, 0)) return -1;
    if (ly->sinks && put_vec(x, NAME("attn_sinks.weight"), ly->sinks, c->n_heads, 0)) return -1;
    if (ly->q_norm) {
        int qn = c->qk_norm == LM_QK_NORM_FULL ? nq : c->head_dim, kn = c->qk_norm == LM_QK_NORM_FULL ? nkv : c->head_dim;
        if (put_vec(x, NAME("attn_q_norm.weight"), ly->q_norm, qn, 0) ||
            put_vec(x, NAME("attn_k_norm.weight"), ly->k_norm, kn, 0))
            return -1;
    }
ffn:
    if (!ly->is_moe)
        return put_mat(x, NAME("ffn_gate.weight"), &ly->mlp_gate, x->type, 0) ||
                       put_mat(x, NAME("ffn_up.weight"), &ly->mlp_up, x->type, 0) ||
                       put_mat(x, NAME("ffn_down.weight"), &ly->mlp_down, x->type, 0)
                   ? -1
                   : 0;
    /* llama.cpp keeps the router in F32 */
    if (put_mat(x, NAME("ffn_gate_inp.weight"), &ly->router, LM_DT_F32, 0)) return -1;
    if (ly->router_bias && put_vec(x, NAME("ffn_gate_inp.bias"), ly->router_bias, c->n_experts, 0)) return -1;
    if (ly->router_correction && put_vec(x, NAME("exp_probs_b.bias"), ly->router_correction, c->n_experts, 0))
        return -1;
    if (ly->shared_gate.rows && (put_mat(x, NAME("ffn_gate_shexp.weight"), &ly->shared_gate, x->type, 0) ||
                                 put_mat(x, NAME("ffn_up_shexp.weight"), &ly->shared_up, x->type, 0) ||
                                 put_mat(x, NAME("ffn_down_shexp.weight"), &ly->shared_down, x->type, 0)))
        return -1;
    /* the shared expert's sigmoid gate [1, H], F32 like the router */
    if (ly->shared_expert_gate.rows &&
        put_mat(x, NAME("ffn_gate_inp_shexp.weight"), &ly->shared_expert_gate, LM_DT_F32, 0))
        return -1;
#undef NAME
    return x->gpt_oss ? put_gpt_oss_experts(x, l) : put_experts(x, l);
}

/* glm4moe's multi-token-prediction layers (those past num_hidden_layers), copied as
 * they are under llama.cpp's names (LM_GGUF_KEEP_MTP): Hugging Face name inside the
 * layer -> GGUF name inside blk.N. */
static const struct {
    const char *hf, *gguf;
} mtp_names[] = {
    {"eh_proj.weight", "nextn.eh_proj.weight"},
    {"enorm.weight", "nextn.enorm.weight"},
    {"hnorm.weight", "nextn.hnorm.weight"},
    {"embed_tokens.weight", "nextn.embed_tokens.weight"},
    {"shared_head.head.weight", "nextn.shared_head_head.weight"},
    {"shared_head.norm.weight", "nextn.shared_head_norm.weight"},
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "post_attention_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"mlp.gate.weight", "ffn_gate_inp.weight"},
    {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
    {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"},
};

static int put_mtp_layers(exporter *x) {
    const st_archive *a = x->lw->archive;
    int L = x->lw->cfg.n_layers;
    for (int i = 0; i < a->ntensors; i++) {
        const st_tensor *t = &a->tensors[i];
        if (strncmp(t->name, "model.layers.", 13) != 0) continue;
        char *end;
        long l = strtol(t->name + 13, &end, 10);
        if (end == t->name + 13 || *end != '.' || l < L) continue;
        const char *gname = NULL;
        for (size_t k = 0; k < sizeof mtp_names / sizeof mtp_names[0] && !gname; k++)
            if (strcmp(end + 1, mtp_names[k].hf) == 0) gname = mtp_names[k].gguf;
        if (!gname)
            return lm_errf(x->err, "multi-token-prediction tensor '%s' cannot be written to GGUF yet", t->name);
        if (t->dtype != LM_DT_F32 && t->dtype != LM_DT_F16 && t->dtype != LM_DT_BF16)
            return lm_errf(x->err, "multi-token-prediction tensor '%s' is not F32, F16 or BF16", t->name);
        void *buf = lm_malloc((size_t)t->nbytes, t->name, x->err);
        if (!buf) return -1;
        const st_file *f = &a->files[t->file];
        if (lm_pread_full(f->fd, buf, (size_t)t->nbytes, t->offset, x->err) != 0) {
            free(buf);
            return lm_err_prefix(x->err, "%s: %s", f->path, t->name);
        }
        int64_t ne[4] = {0};
        for (int d = 0; d < t->ndim && d < 4; d++) ne[d] = t->shape[t->ndim - 1 - d];
        char name[128];
        snprintf(name, sizeof name, "blk.%ld.%s", l, gname);
        if (gguf_w_tensor(x->w, name, ggml_of(t->dtype), t->ndim, ne, buf, t->nbytes, 1) != 0)
            return lm_errf(x->err, "out of memory");
    }
    return 0;
}

/* ---- metadata ---- */

/* No tokenizer.json: the model runs on token ids only (llama.cpp's "no_vocab"). */
static int put_no_vocab(exporter *x) { return gguf_w_str(x->w, "tokenizer.ggml.model", "no_vocab") ? lm_errf(x->err, "out of memory") : 0; }

/* A stand-in byte-level vocabulary for checks with llama.cpp, whose evaluation needs a
 * tokenizer even when only ids are fed: GPT-2's 256 byte symbols (bytes_to_unicode),
 * then "<|tN|>" for the other ids, no merges. */
static int put_placeholder_vocab(exporter *x) {
    int V = x->lw->cfg.vocab_size;
    char (*s)[16] = calloc((size_t)V, 16);
    const char **toks = calloc((size_t)V, sizeof *toks);
    int32_t *types = calloc((size_t)V, sizeof *types);
    if (!s || !toks || !types) {
        free(s);
        free(toks);
        free(types);
        return lm_errf(x->err, "out of memory");
    }
    int extra = 0;
    for (int b = 0; b < 256 && b < V; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        unsigned cp = printable ? (unsigned)b : 256u + (unsigned)extra++;
        if (cp < 0x80) s[b][0] = (char)cp;
        else {
            s[b][0] = (char)(0xc0 | (cp >> 6));
            s[b][1] = (char)(0x80 | (cp & 0x3f));
        }
    }
    for (int i = 0; i < V; i++) {
        if (i >= 256) snprintf(s[i], 16, "<|t%d|>", i);
        toks[i] = s[i];
        types[i] = 1;
    }
    gguf_w_str(x->w, "tokenizer.ggml.model", "gpt2");
    gguf_w_str(x->w, "tokenizer.ggml.pre", "default");
    gguf_w_arr_str(x->w, "tokenizer.ggml.tokens", toks, (uint64_t)V);
    int rc = gguf_w_arr(x->w, "tokenizer.ggml.token_type", GGUF_TYPE_I32, types, (uint64_t)V);
    gguf_w_arr_str(x->w, "tokenizer.ggml.merges", toks, 0);
    free(s);
    free(toks);
    free(types);
    return rc ? lm_errf(x->err, "out of memory") : 0;
}

static int put_tokenizer(exporter *x, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    struct stat st;
    if (stat(path, &st) != 0) return x->placeholder_vocab ? put_placeholder_vocab(x) : put_no_vocab(x);
    json_error_t je;
    json_t *tj = json_load_file(path, 0, &je), *cj = NULL;
    if (!tj) return lm_errf(x->err, "%s: line %d: %s", path, je.line, je.text);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (stat(path, &st) == 0 && !(cj = json_load_file(path, JSON_DECODE_INT_AS_REAL, &je))) {
        json_decref(tj);
        return lm_errf(x->err, "%s: line %d: %s", path, je.line, je.text);
    }
    int rc = -1;
    const char **toks = NULL;
    int32_t *types = NULL;
    const char **merges = NULL;
    char **merge_buf = NULL;
    size_t n_merges = 0;
    json_t *model = json_object_get(tj, "model"), *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab) || strcmp(json_string_value(json_object_get(model, "type")) ? json_string_value(json_object_get(model, "type")) : "", "BPE") != 0) {
        lm_errf(x->err, "%s/tokenizer.json: only BPE tokenizers can be written to GGUF", dir);
        goto done;
    }
    /* the pre-tokenizer: Split(regex) + ByteLevel, or a regex ByteLevel (GPT-2) */
    json_t *pt = json_object_get(tj, "pre_tokenizer");
    const char *regex = NULL;
    json_t *items = json_object_get(pt, "pretokenizers");
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        json_t *pat = json_object_get(json_object_get(it, "pattern"), "Regex");
        if (json_is_string(pat)) regex = json_string_value(pat);
    }
    const char *pre = regex ? lm_gguf_pre_name(regex, json_is_true(json_object_get(model, "ignore_merges")),
                                               x->lw->cfg.model_type)
                            : NULL;
    if (!regex && json_is_true(json_object_get(pt, "use_regex"))) pre = "gpt-2";
    if (!pre) {
        lm_errf(x->err, "%s/tokenizer.json: its pre-tokenizer matches none of llama.cpp's names lazymoe knows", dir);
        goto done;
    }
    int V = x->lw->cfg.vocab_size;
    toks = calloc((size_t)V, sizeof *toks);
    types = calloc((size_t)V, sizeof *types);
    char (*pads)[24] = calloc((size_t)V, 24);
    if (!toks || !types || !pads) {
        free(pads);
        lm_errf(x->err, "out of memory");
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_integer_value(val);
        if (id >= 0 && id < V) {
            toks[id] = key;
            types[id] = 1;
        }
    }
    json_array_foreach(json_object_get(tj, "added_tokens"), i, it) {
        json_int_t id = json_integer_value(json_object_get(it, "id"));
        const char *content = json_string_value(json_object_get(it, "content"));
        if (id >= 0 && id < V && content) {
            toks[id] = content;
            types[id] = json_is_true(json_object_get(it, "special")) ? 3 : 4;
        }
    }
    for (int k = 0; k < V; k++)
        if (!toks[k]) {
            snprintf(pads[k], 24, "[PAD%d]", k);
            toks[k] = pads[k];
            types[k] = 5;
        }
    json_t *mj = json_object_get(model, "merges");
    n_merges = json_array_size(mj);
    merges = calloc(n_merges + 1, sizeof *merges);
    merge_buf = calloc(n_merges + 1, sizeof *merge_buf);
    if (!merges || !merge_buf) {
        free(pads);
        lm_errf(x->err, "out of memory");
        goto done;
    }
    json_array_foreach(mj, i, it) {
        if (json_is_string(it)) {
            merges[i] = json_string_value(it);
        } else {
            const char *a = json_string_value(json_array_get(it, 0)), *b = json_string_value(json_array_get(it, 1));
            size_t la = a ? strlen(a) : 0, lb = b ? strlen(b) : 0;
            merge_buf[i] = malloc(la + lb + 2);
            if (!merge_buf[i] || !a || !b) {
                free(pads);
                lm_errf(x->err, "tokenizer.json: merges[%zu] is not a pair of strings", i);
                goto done;
            }
            snprintf(merge_buf[i], la + lb + 2, "%s %s", a, b);
            merges[i] = merge_buf[i];
        }
    }
    gguf_writer *w = x->w;
    gguf_w_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_w_str(w, "tokenizer.ggml.pre", pre);
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, (uint64_t)V);
    gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_I32, types, (uint64_t)V);
    gguf_w_arr_str(w, "tokenizer.ggml.merges", merges, n_merges);
    free(pads);
    /* special ids from tokenizer_config.json (a string or {"content": ...}) */
    static const struct {
        const char *cfg, *key;
    } specials[] = {{"bos_token", "tokenizer.ggml.bos_token_id"},
                    {"eos_token", "tokenizer.ggml.eos_token_id"},
                    {"pad_token", "tokenizer.ggml.padding_token_id"},
                    {"unk_token", "tokenizer.ggml.unknown_token_id"}};
    for (size_t k = 0; k < sizeof specials / sizeof specials[0]; k++) {
        json_t *v = json_object_get(cj, specials[k].cfg);
        if (json_is_object(v)) v = json_object_get(v, "content");
        if (!json_is_string(v)) continue;
        for (int id = 0; id < V; id++)
            if (types[id] != 5 && strcmp(toks[id], json_string_value(v)) == 0) {
                gguf_w_u32(w, specials[k].key, (uint32_t)id);
                break;
            }
    }
    /* GLM's ends of turn (generation_config.json lists them with <|endoftext|>), as
     * llama.cpp's converter writes them (_set_vocab_glm): eot <|user|>, eom
     * <|observation|>; without them neither llama.cpp nor lazymoe stops at a turn's end */
    static const struct {
        const char *text, *key;
    } glm_ends[] = {{"<|user|>", "tokenizer.ggml.eot_token_id"}, {"<|observation|>", "tokenizer.ggml.eom_token_id"}};
    for (size_t k = 0; x->glm && k < sizeof glm_ends / sizeof glm_ends[0]; k++)
        for (int id = 0; id < V; id++)
            if (types[id] != 5 && strcmp(toks[id], glm_ends[k].text) == 0) {
                gguf_w_u32(w, glm_ends[k].key, (uint32_t)id);
                break;
            }
    json_t *ab = json_object_get(cj, "add_bos_token");
    gguf_w_bool(w, "tokenizer.ggml.add_bos_token", json_is_true(ab));
    /* the chat template: chat_template.jinja, else tokenizer_config.json's string */
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        lm_strbuf b = {0};
        int r = lm_strbuf_read_stream(&b, f, 16u << 20);
        fclose(f);
        if (r == LM_READ_OK) gguf_w_str(w, "tokenizer.chat_template", b.data ? b.data : "");
        lm_strbuf_free(&b);
        if (r != LM_READ_OK) {
            lm_errf(x->err, "cannot read %s", path);
            goto done;
        }
    } else if (json_is_string(json_object_get(cj, "chat_template"))) {
        gguf_w_str(w, "tokenizer.chat_template", json_string_value(json_object_get(cj, "chat_template")));
    }
    rc = 0;
done:
    for (size_t k = 0; merge_buf && k < n_merges; k++) free(merge_buf[k]);
    free(merge_buf);
    free(merges);
    free(toks);
    free(types);
    json_decref(tj);
    json_decref(cj);
    return rc;
}

static void put_config(exporter *x, const char *arch) {
    const lm_config *c = &x->lw->cfg;
    gguf_writer *w = x->w;
    char k[128];
#define KEY(s) (snprintf(k, sizeof k, "%s.%s", arch, s), k)
    gguf_w_str(w, "general.architecture", arch);
    gguf_w_str(w, "general.name", "lazymoe export");
    gguf_w_u32(w, "general.file_type", x->type == LM_DT_F32 ? 0 : x->type == LM_DT_F16 ? 1 : x->type == LM_DT_Q8_0 ? 7 : 32);
    gguf_w_u32(w, KEY("block_count"), (uint32_t)(c->n_layers + x->mtp)); /* llama.cpp counts MTP layers */
    if (x->mtp) gguf_w_u32(w, KEY("nextn_predict_layers"), (uint32_t)x->mtp);
    gguf_w_u32(w, KEY("context_length"), (uint32_t)c->max_position_embeddings);
    gguf_w_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size);
    /* mixtral: feed_forward_length is the experts' width */
    gguf_w_u32(w, KEY("feed_forward_length"),
               (uint32_t)(c->family->experts_use_intermediate_size ? c->moe_intermediate_size : c->intermediate_size));
    gguf_w_u32(w, KEY("expert_feed_forward_length"), (uint32_t)c->moe_intermediate_size);
    gguf_w_u32(w, KEY("attention.head_count"), (uint32_t)c->n_heads);
    gguf_w_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_heads);
    gguf_w_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim);
    gguf_w_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim);
    gguf_w_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->rms_norm_eps);
    gguf_w_f32(w, KEY("rope.freq_base"), (float)c->rope_theta);
    gguf_w_u32(w, KEY("rope.dimension_count"), (uint32_t)c->rope_dim);
    if (c->rope_type == LM_ROPE_LINEAR) {
        gguf_w_str(w, KEY("rope.scaling.type"), "linear");
        gguf_w_f32(w, KEY("rope.scaling.factor"), (float)c->rope_factor);
    }
    if (c->rope_type == LM_ROPE_YARN) { /* gguf_model.c put_yarn reads these back */
        gguf_w_str(w, KEY("rope.scaling.type"), "yarn");
        gguf_w_f32(w, KEY("rope.scaling.factor"), (float)c->rope_factor);
        gguf_w_u32(w, KEY("rope.scaling.original_context_length"), (uint32_t)c->rope_orig_max_pos);
        gguf_w_f32(w, KEY("rope.scaling.yarn_beta_fast"), (float)c->rope_beta_fast);
        gguf_w_f32(w, KEY("rope.scaling.yarn_beta_slow"), (float)c->rope_beta_slow);
        if (c->rope_truncate != !x->gpt_oss) gguf_w_bool(w, KEY("rope.scaling.yarn_truncate"), c->rope_truncate);
    }
    if (x->glm) { /* the keys llama.cpp's converter writes for glm4moe (gguf_model.c put_glm4_moe) */
        gguf_w_u32(w, KEY("leading_dense_block_count"), (uint32_t)c->first_k_dense);
        gguf_w_u32(w, KEY("expert_shared_count"),
                   (uint32_t)(c->moe_intermediate_size ? c->shared_expert_intermediate_size / c->moe_intermediate_size : 0));
        gguf_w_f32(w, KEY("expert_weights_scale"), c->routed_scaling_factor);
        if (c->n_group > 1) {
            gguf_w_u32(w, KEY("expert_group_count"), (uint32_t)c->n_group);
            gguf_w_u32(w, KEY("expert_group_used_count"), (uint32_t)c->topk_group);
        }
    }
    if (x->qwen_linear) { /* the keys llama.cpp's converter writes for qwen3next / qwen35moe */
        gguf_w_u32(w, KEY("expert_shared_feed_forward_length"), (uint32_t)c->shared_expert_intermediate_size);
        gguf_w_u32(w, KEY("ssm.conv_kernel"), (uint32_t)c->conv_kernel);
        gguf_w_u32(w, KEY("ssm.state_size"), (uint32_t)c->lin_k_dim);
        gguf_w_u32(w, KEY("ssm.group_count"), (uint32_t)c->lin_k_heads);
        gguf_w_u32(w, KEY("ssm.time_step_rank"), (uint32_t)c->lin_v_heads);
        gguf_w_u32(w, KEY("ssm.inner_size"), (uint32_t)(c->lin_v_heads * c->lin_v_dim));
        uint8_t *rec = calloc((size_t)c->n_layers + 1, 1);
        for (int l = 0; rec && l < c->n_layers; l++) rec[l] = (uint8_t)lm_config_layer_is_linear(c, l);
        if (rec) gguf_w_arr(w, KEY("attention.recurrent_layers"), GGUF_TYPE_BOOL, rec, (uint64_t)c->n_layers);
        free(rec);
        if (x->v_tiled) {
            /* interleaved MRoPE sections that give every rotated pair of a text position a
             * stream (what transformers' default [11, 11, 10] is for 32 pairs) */
            int32_t sec[4] = {0};
            for (int s3 = 0; s3 < 3; s3++) sec[s3] = (c->rope_dim / 2 - s3 + 2) / 3;
            gguf_w_arr(w, KEY("rope.dimension_sections"), GGUF_TYPE_I32, sec, 4);
        }
    }
    if (c->router_sigmoid) gguf_w_u32(w, KEY("expert_gating_func"), 2); /* llama.cpp's sigmoid */
    gguf_w_u32(w, KEY("expert_count"), (uint32_t)c->n_experts);
    gguf_w_u32(w, KEY("expert_used_count"), (uint32_t)c->top_k);
    if (!x->gpt_oss) gguf_w_bool(w, KEY("expert_weights_norm"), c->norm_topk_prob);
    gguf_w_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size);
    if (c->clip_qkv > 0) gguf_w_f32(w, KEY("attention.clamp_kqv"), c->clip_qkv);
    if (c->sliding_window > 0 || x->gpt_oss)
        gguf_w_u32(w, KEY("attention.sliding_window"), (uint32_t)c->sliding_window);
    /* gpt-oss's sliding layers: llama.cpp's default is a period of 2 (even layers
     * slide); another pattern is written as its period, or one bool per layer */
    if (x->gpt_oss && c->sliding_window > 0) {
        int period = 0;
        for (int p = 1; p <= c->n_layers + 1 && !period; p++) {
            int fits = 1;
            for (int l = 0; l < c->n_layers; l++)
                fits &= (lm_config_layer_window(c, l) > 0) == (l % p < p - 1);
            if (fits) period = p;
        }
        if (period > 0 && period != 2) gguf_w_u32(w, KEY("attention.sliding_window_pattern"), (uint32_t)period);
        if (period == 0 && c->n_layers > 0) {
            uint8_t *v = calloc((size_t)c->n_layers, 1);
            for (int l = 0; v && l < c->n_layers; l++) v[l] = lm_config_layer_window(c, l) > 0;
            if (v) gguf_w_arr(w, KEY("attention.sliding_window_pattern"), GGUF_TYPE_BOOL, v, (uint64_t)c->n_layers);
            free(v);
        }
    }
#undef KEY
}

/* What llama.cpp cannot express, refused rather than written wrong: its gpt-oss graph
 * fixes the SwiGLU limit at 7, and its YaRN's attention factor is 0.1 ln(factor) + 1. */
static int check_llamacpp_fits(const lm_config *c, int gpt_oss, char *err) {
    if (gpt_oss && c->swiglu_limit != 7.0f)
        return lm_errf(err, "gpt-oss swiglu_limit %g cannot be written to GGUF (llama.cpp fixes it at 7)",
                       (double)c->swiglu_limit);
    if (c->rope_type == LM_ROPE_YARN) {
        double want = c->rope_factor <= 1 ? 1.0 : 0.1 * log(c->rope_factor) + 1.0;
        if (fabs(c->rope_attn_factor - want) > 1e-12 * want)
            return lm_errf(err, "a YaRN attention_factor of %g (not 0.1 ln(factor) + 1) cannot be written to GGUF",
                           c->rope_attn_factor);
    }
    return 0;
}

int lm_gguf_export(const char *dir, const char *out, lm_dtype type, int flags, char *err) {
    if (type != LM_DT_F32 && type != LM_DT_F16 && type != LM_DT_BF16 && type != LM_DT_Q8_0)
        return lm_errf(err, "GGUF export writes F32, F16, BF16 or Q8_0 matrices");
    lm_weights lw;
    if (lm_weights_load(&lw, dir, NULL, NULL, err) != 0) return -1;
    const lm_config *c = &lw.cfg;
    exporter x = {gguf_w_new(), &lw, type, err, 0, (flags & LM_GGUF_PLACEHOLDER_VOCAB) != 0,
                  (flags & LM_GGUF_FUSE_GATE_UP) != 0, 0};
    int rc = -1;
    if (!x.w) {
        lm_errf(err, "out of memory");
        goto done;
    }
    const char *arch = c->family->gguf_arch;
    x.glm = strcmp(c->model_type, "glm4_moe") == 0;
    x.qwen_linear = c->family->parse_config == lm_family_qwen3_next_parse_config;
    x.v_tiled = x.qwen_linear && strcmp(arch ? arch : "", "qwen35moe") == 0;
    if (!arch || (c->layer_linear && !x.qwen_linear) ||
        (c->shared_expert_intermediate_size && !x.glm && !x.qwen_linear) || (c->attn_output_gate && !x.qwen_linear) ||
        (c->router_sigmoid && !x.glm && strcmp(c->model_type, "minimax_m2") != 0)) {
        lm_errf(err, "%s models cannot be written to GGUF yet", c->model_type);
        goto done;
    }
    for (int l = 0; l < c->n_layers; l++)
        if (!lw.layers[l].is_moe && strcmp(arch, "qwen3moe") != 0 && !x.glm && !x.qwen_linear) {
            lm_errf(err, "dense layers of %s models cannot be written to GGUF yet", c->model_type);
            goto done;
        }
    if (flags & LM_GGUF_KEEP_MTP) x.mtp = c->n_nextn_layers;
    x.llama = strcmp(arch, "llama") == 0;
    x.gpt_oss = strcmp(c->model_type, "gpt_oss") == 0;
    if (check_llamacpp_fits(c, x.gpt_oss, err)) goto done;
    /* llama.cpp's qwen3next graph always renormalises the top-k weights */
    if (x.qwen_linear && !x.v_tiled && !c->norm_topk_prob) {
        lm_errf(err, "qwen3_next with norm_topk_prob false cannot be written to GGUF (llama.cpp always renormalises)");
        goto done;
    }
    put_config(&x, arch);
    if (put_tokenizer(&x, dir)) goto done;
    if (put_mat(&x, "token_embd.weight", &lw.embed, type, 0) || put_vec(&x, "output_norm.weight", lw.final_norm,
                                                                          c->hidden_size, 0))
        goto done;
    if (!c->tie_word_embeddings && put_mat(&x, "output.weight", &lw.lm_head, type, 0)) goto done;
    for (int l = 0; l < c->n_layers; l++)
        if (put_layer(&x, l)) goto done;
    if (x.mtp && put_mtp_layers(&x)) goto done;
    rc = gguf_w_save(x.w, out, err);
done:
    gguf_w_free(x.w);
    lm_weights_free(&lw);
    return rc;
}

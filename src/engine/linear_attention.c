/* Gated DeltaNet linear attention (qwen3_next), following transformers'
 * Qwen3NextGatedDeltaNet (modeling_qwen3_next.py):
 *
 *   qkvz = h.W_qkvz, ba = h.W_ba              split per key head (see lm_linear_attn)
 *   x = [q | k | v] over all heads             conv_dim channels per token
 *   x = silu(causal depthwise conv(x))         K taps; the last K-1 inputs are the conv state
 *   q, k = l2norm(q), l2norm(k); q /= sqrt(dk)
 *   beta = sigmoid(b); g = A * softplus(a + dt_bias), A = -exp(A_log)   per value head
 *   per value head (key head = head / (nv / nk), or head % nk with lin_v_tiled), state S [dv][dk]:
 *     S = exp(g) S;  S += beta (v - S k) k^T;  o = S q            (the gated delta rule)
 *   o = rmsnorm(o) * norm_weight * silu(z)     per value head
 *   out = o.W_out
 *
 * Decode (one token) runs the rule step by step. Longer ranges use its chunked form
 * (transformers' torch_chunk_gated_delta_rule, 64 tokens per chunk): inside a chunk the
 * sequential dependency is solved as a unit-lower-triangular system, so the work is
 * small dense products; across chunks the state carries over. Both forms compute the
 * same function up to float rounding (tests/test_qwen3_next.c measures how close).
 *
 * Cost: the recurrence is plain single-threaded C on the host (no backend op yet:
 * its arrays are backend buffers read directly, which only a host-memory backend
 * allows; a device backend needs this block as an operation). Per token and
 * value head, decode does ~3 dk dv multiply-adds (Qwen3-Coder-Next: 32 heads x 49k per
 * linear layer, small beside the projections); prefill ~2x that plus O(chunk) terms.
 * The projections go through the backend like every other matmul.
 *
 * The state is stored [dv][dk] per head (transposed from transformers' [dk][dv]) so
 * every inner loop runs over contiguous memory.
 */
#include "engine/linear_attention.h"

#include "common/error.h"
#include "engine/engine.h"
#include "platform/platform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int pos;      /* position the copy belongs to; -1 = empty */
    uint64_t age; /* when it was taken (larger = newer) */
    float *conv;  /* [n_lin][conv_floats] */
    float *rec;   /* [n_lin][rec_floats] */
} snapshot;

#define LINEAR_BUFS (15 + 2 * LM_LINEAR_SNAPSHOTS)

struct lm_linear_state {
    lm_backend *be;
    int n_layers, n_lin;
    int *index;                /* [n_layers]: linear layer number, -1 for others */
    int K, nk, nv, dk, dv, conv_dim, qkvz_dim;
    size_t conv_floats;        /* (K-1) * conv_dim */
    size_t rec_floats;         /* nv * dv * dk */
    float *conv, *rec;         /* live states, [n_lin][...] */
    int live_pos;              /* position the live states belong to; -1 = unknown (a failed pass) */
    snapshot snap[LM_LINEAR_SNAPSHOTS];
    int pending, pending_pos;  /* snapshot slot being taken, or -1 */
    uint64_t clock;
    int chunk, recurrent_only;
    /* scratch for cap tokens */
    int cap;
    float *qkvz, *ba, *ext, *xc, *g, *beta, *core;
    float *kb, *wb, *ub, *A, *qk, *gc;
    lm_buf bufs[LINEAR_BUFS]; /* what every array above lives in */
};

/* Shapes of the state for config c (no arrays). */
static void set_shapes(lm_linear_state *st, const lm_config *c, int cap_tokens) {
    st->n_layers = c->n_layers;
    st->n_lin = c->n_linear_layers;
    st->K = c->conv_kernel;
    st->nk = c->lin_k_heads;
    st->nv = c->lin_v_heads;
    st->dk = c->lin_k_dim;
    st->dv = c->lin_v_dim;
    st->conv_dim = 2 * st->nk * st->dk + st->nv * st->dv;
    st->qkvz_dim = 2 * st->nk * st->dk + 2 * st->nv * st->dv;
    st->conv_floats = (size_t)(st->K - 1) * (size_t)st->conv_dim;
    st->rec_floats = (size_t)st->nv * (size_t)st->dv * (size_t)st->dk;
    st->cap = cap_tokens;
}

/* Every array of the state and its size in floats (at least 1, so each is a real buffer). */
typedef struct {
    float **p;
    size_t floats;
} linear_entry;

static int linear_table(lm_linear_state *st, linear_entry *e) {
    size_t n = (size_t)st->n_lin, t = (size_t)st->cap, C = LM_LINEAR_CHUNK;
    size_t value_dim = (size_t)st->nv * (size_t)st->dv;
    const linear_entry want[] = {
        {&st->conv, n * st->conv_floats},
        {&st->rec, n * st->rec_floats},
        {&st->qkvz, t * (size_t)st->qkvz_dim},
        {&st->ba, t * 2 * (size_t)st->nv},
        {&st->ext, (t + (size_t)st->K - 1) * (size_t)st->conv_dim},
        {&st->xc, t * (size_t)st->conv_dim},
        {&st->g, t * (size_t)st->nv},
        {&st->beta, t * (size_t)st->nv},
        {&st->core, t * value_dim},
        {&st->kb, C * (size_t)st->dk},
        {&st->wb, C * (size_t)st->dk},
        {&st->ub, C * (size_t)st->dv},
        {&st->A, C * C},
        {&st->qk, C * C},
        {&st->gc, C},
    };
    int k = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) e[k++] = want[i];
    for (int i = 0; i < LM_LINEAR_SNAPSHOTS; i++) {
        e[k++] = (linear_entry){&st->snap[i].conv, n * st->conv_floats};
        e[k++] = (linear_entry){&st->snap[i].rec, n * st->rec_floats};
    }
    for (int i = 0; i < k; i++)
        if (!e[i].floats) e[i].floats = 1;
    return k;
}

uint64_t lm_linear_bytes(const lm_config *c, int cap_tokens) {
    if (c->n_linear_layers == 0) return 0;
    lm_linear_state st;
    memset(&st, 0, sizeof st);
    set_shapes(&st, c, cap_tokens);
    linear_entry e[LINEAR_BUFS];
    int n = linear_table(&st, e);
    uint64_t b = 0;
    for (int i = 0; i < n; i++) b += sizeof(float) * (uint64_t)e[i].floats;
    return b;
}

uint64_t lm_linear_held_bytes(const lm_linear_state *st) {
    uint64_t b = 0;
    for (int i = 0; st && i < LINEAR_BUFS; i++) b += st->bufs[i].bytes;
    return b;
}

void lm_linear_free(lm_linear_state *st) {
    if (!st) return;
    for (int i = 0; i < LINEAR_BUFS; i++) lm_backend_release(st->be, &st->bufs[i]);
    free(st->index);
    free(st);
}

int lm_linear_create(lm_linear_state **out, lm_backend *be, const lm_config *c, int cap_tokens, char *err) {
    *out = NULL;
    if (!be->ops->host_memory)
        return lm_errf(err, "linear attention runs on the host; the %s backend's memory is not host memory",
                       be->ops->name);
    lm_linear_state *st = calloc(1, sizeof *st);
    if (!st || !(st->index = malloc(sizeof(int) * (size_t)c->n_layers))) {
        free(st);
        return lm_errf(err, "out of memory");
    }
    st->be = be;
    set_shapes(st, c, cap_tokens);
    int n_lin = 0;
    for (int l = 0; l < c->n_layers; l++) st->index[l] = lm_config_layer_is_linear(c, l) ? n_lin++ : -1;
    st->n_lin = n_lin;
    st->chunk = LM_LINEAR_CHUNK;
    st->pending = -1;
    linear_entry e[LINEAR_BUFS];
    int n = linear_table(st, e);
    for (int i = 0; i < n; i++) {
        if (lm_backend_alloc(be, &st->bufs[i], sizeof(float) * e[i].floats, "linear attention", err) != 0) {
            lm_linear_free(st);
            return -1;
        }
        *e[i].p = st->bufs[i].ptr;
    }
    for (int i = 0; i < LM_LINEAR_SNAPSHOTS; i++) st->snap[i].pos = -1;
    memset(st->conv, 0, sizeof(float) * (size_t)st->n_lin * st->conv_floats);
    memset(st->rec, 0, sizeof(float) * (size_t)st->n_lin * st->rec_floats);
    st->live_pos = 0;
    *out = st;
    return 0;
}

void lm_linear_set_chunk(lm_linear_state *st, int chunk, int recurrent_only) {
    st->chunk = chunk < 1 ? 1 : chunk > LM_LINEAR_CHUNK ? LM_LINEAR_CHUNK : chunk;
    st->recurrent_only = recurrent_only;
}

/* ---- snapshots -------------------------------------------------------------------- */

static void take_now(lm_linear_state *st, int slot, int pos) {
    size_t n = (size_t)st->n_lin;
    memcpy(st->snap[slot].conv, st->conv, sizeof(float) * n * st->conv_floats);
    memcpy(st->snap[slot].rec, st->rec, sizeof(float) * n * st->rec_floats);
    st->snap[slot].pos = pos;
    st->snap[slot].age = ++st->clock;
}

void lm_linear_request_snapshot(lm_linear_state *st, int n_past, int pos) {
    st->pending = -1;
    for (int i = 0; i < LM_LINEAR_SNAPSHOTS; i++)
        if (st->snap[i].pos == pos) {
            st->snap[i].age = ++st->clock; /* already there */
            return;
        }
    if (pos < n_past || (pos == n_past && st->live_pos != n_past)) return; /* cannot be taken */
    /* An empty slot, else the oldest. */
    int slot = 0;
    for (int i = 0; i < LM_LINEAR_SNAPSHOTS; i++) {
        if (st->snap[i].pos < 0) {
            slot = i;
            break;
        }
        if (st->snap[i].age < st->snap[slot].age) slot = i;
    }
    st->snap[slot].pos = -1;
    if (pos == n_past) {
        take_now(st, slot, pos);
        return;
    }
    st->pending = slot;
    st->pending_pos = pos;
}

void lm_linear_end_chunk(lm_linear_state *st, int n_past, int T) {
    st->live_pos = n_past + T;
    if (st->pending >= 0 && st->pending_pos >= n_past && st->pending_pos <= n_past + T) {
        st->snap[st->pending].pos = st->pending_pos;
        st->snap[st->pending].age = ++st->clock;
        st->pending = -1;
    }
}

int lm_linear_restorable(const lm_linear_state *st, int n_past, int want) {
    int best = 0;
    if (st->live_pos == n_past && n_past <= want) best = n_past;
    for (int i = 0; i < LM_LINEAR_SNAPSHOTS; i++)
        if (st->snap[i].pos > best && st->snap[i].pos <= want) best = st->snap[i].pos;
    return best;
}

void lm_linear_restore(lm_linear_state *st, int n_past, int pos) {
    st->pending = -1;
    for (int i = 0; i < LM_LINEAR_SNAPSHOTS; i++)
        if (st->snap[i].pos > pos) st->snap[i].pos = -1;
    if (st->live_pos == n_past && pos == n_past) return;
    size_t n = (size_t)st->n_lin;
    if (pos == 0) {
        memset(st->conv, 0, sizeof(float) * n * st->conv_floats);
        memset(st->rec, 0, sizeof(float) * n * st->rec_floats);
        st->live_pos = 0;
        return;
    }
    for (int i = 0; i < LM_LINEAR_SNAPSHOTS; i++)
        if (st->snap[i].pos == pos) {
            memcpy(st->conv, st->snap[i].conv, sizeof(float) * n * st->conv_floats);
            memcpy(st->rec, st->snap[i].rec, sizeof(float) * n * st->rec_floats);
            st->live_pos = pos;
            return;
        }
    st->live_pos = -1; /* not reached: callers restore only what lm_linear_restorable offered */
}

/* ---- the gated delta rule ------------------------------------------------------------ */

static float dot(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Inputs of one value head over a range of tokens: row t of q/k at q + t*qk_stride,
 * of v at v + t*v_stride, g/beta at t*gb_stride, output row t at out + t*out_stride. */
typedef struct {
    const float *q, *k, *v, *g, *beta;
    float *out;
    size_t qk_stride, v_stride, gb_stride, out_stride;
} head_io;

/* One token at a time, as transformers' torch_recurrent_gated_delta_rule. */
static void recurrent_head(float *S, const head_io *io, int n, int dk, int dv) {
    for (int t = 0; t < n; t++) {
        const float *q = io->q + (size_t)t * io->qk_stride, *k = io->k + (size_t)t * io->qk_stride;
        const float *v = io->v + (size_t)t * io->v_stride;
        float decay = expf(io->g[(size_t)t * io->gb_stride]), beta = io->beta[(size_t)t * io->gb_stride];
        float *out = io->out + (size_t)t * io->out_stride;
        for (int i = 0; i < dv; i++) {
            float *row = S + (size_t)i * (size_t)dk;
            float kv = 0;
            for (int j = 0; j < dk; j++) {
                row[j] *= decay;
                kv += row[j] * k[j];
            }
            float delta = (v[i] - kv) * beta, o = 0;
            for (int j = 0; j < dk; j++) {
                row[j] += k[j] * delta;
                o += row[j] * q[j];
            }
            out[i] = o;
        }
    }
}

/* The chunked form, as transformers' torch_chunk_gated_delta_rule, chunk by chunk. With
 * G the cumulative log-decay inside a chunk of L tokens and b the betas:
 *   A[i][j] = -b_i (k_i.k_j) exp(G_i - G_j) for j < i;  T = (I - A')^-1 by forward substitution
 *   U = T (b v);  W = T (b k exp(G))
 *   v'_i = U_i - W_i S;  o_i = exp(G_i) q_i S + sum_{j<=i} (q_i.k_j) exp(G_i - G_j) v'_j
 *   S = exp(G_L) S + sum_i exp(G_L - G_i) k_i v'_i^T */
static void chunked_head(lm_linear_state *st, float *S, const head_io *io, int n, int dk, int dv) {
    float *kb = st->kb, *W = st->wb, *U = st->ub, *A = st->A, *QK = st->qk, *G = st->gc;
    const int C = st->chunk;
    for (int c0 = 0; c0 < n; c0 += C) {
        int L = n - c0 < C ? n - c0 : C;
#define QROW(i) (io->q + (size_t)(c0 + (i)) * io->qk_stride)
#define KROW(i) (io->k + (size_t)(c0 + (i)) * io->qk_stride)
#define VROW(i) (io->v + (size_t)(c0 + (i)) * io->v_stride)
#define GB(p, i) (io->p[(size_t)(c0 + (i)) * io->gb_stride])
        float acc = 0;
        for (int i = 0; i < L; i++) {
            acc += GB(g, i);
            G[i] = acc;
        }
        for (int i = 0; i < L; i++) {
            const float *k = KROW(i);
            float b = GB(beta, i);
            for (int j = 0; j < dk; j++) kb[(size_t)i * (size_t)dk + (size_t)j] = k[j] * b;
        }
        /* A (strictly lower) then the forward substitution, row by row: row i uses the
         * finished rows above it and its own entries right of j, not yet overwritten. */
        for (int i = 0; i < L; i++)
            for (int j = 0; j < i; j++)
                A[i * C + j] = -dot(kb + (size_t)i * (size_t)dk, KROW(j), dk) * expf(G[i] - G[j]);
        for (int i = 1; i < L; i++)
            for (int j = 0; j < i; j++) {
                float s = A[i * C + j];
                for (int m = j + 1; m < i; m++) s += A[i * C + m] * A[m * C + j];
                A[i * C + j] = s;
            }
        /* U = T (b v), W = T (b k exp(G)); T = I + A, computed bottom-up in place. */
        for (int i = 0; i < L; i++) {
            const float *v = VROW(i);
            float b = GB(beta, i), e = expf(G[i]);
            for (int j = 0; j < dv; j++) U[(size_t)i * (size_t)dv + (size_t)j] = v[j] * b;
            for (int j = 0; j < dk; j++) W[(size_t)i * (size_t)dk + (size_t)j] = kb[(size_t)i * (size_t)dk + (size_t)j] * e;
        }
        for (int i = L - 1; i > 0; i--) {
            float *ui = U + (size_t)i * (size_t)dv, *wi = W + (size_t)i * (size_t)dk;
            for (int j = 0; j < i; j++) {
                float a = A[i * C + j];
                const float *uj = U + (size_t)j * (size_t)dv, *wj = W + (size_t)j * (size_t)dk;
                for (int x = 0; x < dv; x++) ui[x] += a * uj[x];
                for (int x = 0; x < dk; x++) wi[x] += a * wj[x];
            }
        }
        /* v' = U - W S (into U); QK with the decay mask, diagonal included. */
        for (int i = 0; i < L; i++) {
            float *ui = U + (size_t)i * (size_t)dv;
            const float *wi = W + (size_t)i * (size_t)dk;
            for (int x = 0; x < dv; x++) ui[x] -= dot(wi, S + (size_t)x * (size_t)dk, dk);
            for (int j = 0; j <= i; j++) QK[i * C + j] = dot(QROW(i), KROW(j), dk) * expf(G[i] - G[j]);
        }
        for (int i = 0; i < L; i++) {
            const float *q = QROW(i);
            float e = expf(G[i]);
            float *out = io->out + (size_t)(c0 + i) * io->out_stride;
            for (int x = 0; x < dv; x++) out[x] = e * dot(q, S + (size_t)x * (size_t)dk, dk);
            for (int j = 0; j <= i; j++) {
                float a = QK[i * C + j];
                const float *vj = U + (size_t)j * (size_t)dv;
                for (int x = 0; x < dv; x++) out[x] += a * vj[x];
            }
        }
        /* S = exp(G_L) S + sum_i exp(G_L - G_i) k_i v'_i^T; kb now holds the decayed keys. */
        float gl = G[L - 1], el = expf(gl);
        for (int i = 0; i < L; i++) {
            const float *k = KROW(i);
            float e = expf(gl - G[i]);
            for (int j = 0; j < dk; j++) kb[(size_t)i * (size_t)dk + (size_t)j] = k[j] * e;
        }
        for (int x = 0; x < dv; x++) {
            float *row = S + (size_t)x * (size_t)dk;
            for (int j = 0; j < dk; j++) row[j] *= el;
            for (int i = 0; i < L; i++) {
                float u = U[(size_t)i * (size_t)dv + (size_t)x];
                const float *ki = kb + (size_t)i * (size_t)dk;
                for (int j = 0; j < dk; j++) row[j] += u * ki[j];
            }
        }
#undef QROW
#undef KROW
#undef VROW
#undef GB
    }
}

static void run_range(lm_linear_state *st, float *S, const head_io *io, int n) {
    if (n <= 0) return;
    if (n == 1 || st->recurrent_only) recurrent_head(S, io, n, st->dk, st->dv);
    else chunked_head(st, S, io, n, st->dk, st->dv);
}

static head_io offset_io(const head_io *io, int t0) {
    head_io r = *io;
    r.q += (size_t)t0 * io->qk_stride;
    r.k += (size_t)t0 * io->qk_stride;
    r.v += (size_t)t0 * io->v_stride;
    r.g += (size_t)t0 * io->gb_stride;
    r.beta += (size_t)t0 * io->gb_stride;
    r.out += (size_t)t0 * io->out_stride;
    return r;
}

static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); } /* torch's threshold 20 */

static void l2normalize(float *x, int n, float scale) {
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float inv = scale / sqrtf(ss + 1e-6f);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

int lm_linear_block(lazymoe_session *s, int l, int T, char *err) {
    lm_linear_state *st = s->lin;
    const lm_config *c = &s->m->w.cfg;
    const lm_linear_attn *la = &s->m->w.layers[l].lin;
    lm_backend *be = s->m->be;
    lm_scratch *S = &s->s;
    int li = st->index[l];
    if (li < 0 || T > st->cap) return lm_errf(err, "layer %d: not a linear-attention layer or chunk too long", l);
    const int K = st->K, nk = st->nk, nv = st->nv, dk = st->dk, dv = st->dv, r = nv / nk, cd = st->conv_dim;
    const int key_dim = nk * dk, per_k = 2 * dk + 2 * r * dv;
    float *conv_state = st->conv + (size_t)li * st->conv_floats;
    float *rec = st->rec + (size_t)li * st->rec_floats;
    /* A snapshot requested inside this chunk splits the recurrence at `split`. */
    int split = -1;
    if (st->pending >= 0 && st->pending_pos >= s->n_past && st->pending_pos <= s->n_past + T)
        split = st->pending_pos - s->n_past;
    snapshot *snap = split >= 0 ? &st->snap[st->pending] : NULL;
    st->live_pos = -1; /* until lm_linear_end_chunk: a failure midway leaves layers apart */

    /* Fused projections (qwen3_next): per token [per key head: q, k, r v, r z] and
     * [per key head: r b, r a]. Separate ones (qwen3_5_moe): qkvz holds [T][q | k | v]
     * then [T][z], ba holds [T][b] then [T][a]. llama.cpp's qwen3next files: q/k/v and
     * z apart, b and a fused (sep without sep_ba). */
    const int sep = la->in_z.rows > 0, sep_ba = la->in_a.rows > 0;
    const float *zsep = st->qkvz + (size_t)T * (size_t)cd, *asep = st->ba + (size_t)T * (size_t)nv;
    if (sep) {
        const lm_matmul_item items[4] = {{st->qkvz, &la->in_qkvz, S->h, T},
                                         {st->qkvz + (size_t)T * (size_t)cd, &la->in_z, S->h, T},
                                         {st->ba, &la->in_ba, S->h, T},
                                         {st->ba + (size_t)T * (size_t)nv, &la->in_a, S->h, T}};
        if (be->ops->matmul_batch(be, items, sep_ba ? 4 : 3) != 0)
            return lm_errf(err, "layer %d: %s", l, lm_backend_error(be));
    } else if (be->ops->matmul(be, st->qkvz, &la->in_qkvz, S->h, T) != 0 ||
               be->ops->matmul(be, st->ba, &la->in_ba, S->h, T) != 0) {
        return lm_errf(err, "layer %d: %s", l, lm_backend_error(be));
    }

    /* Convolution input: the K-1 remembered rows, then [q | k | v] of each new token. */
    float *ext = st->ext;
    memcpy(ext, conv_state, sizeof(float) * st->conv_floats);
    for (int t = 0; t < T && sep; t++)
        memcpy(ext + (size_t)(K - 1 + t) * (size_t)cd, st->qkvz + (size_t)t * (size_t)cd, sizeof(float) * (size_t)cd);
    for (int t = 0; t < T && !sep; t++) {
        const float *src = st->qkvz + (size_t)t * (size_t)st->qkvz_dim;
        float *row = ext + (size_t)(K - 1 + t) * (size_t)cd;
        for (int g = 0; g < nk; g++) {
            const float *blk = src + (size_t)g * (size_t)per_k;
            memcpy(row + (size_t)g * (size_t)dk, blk, sizeof(float) * (size_t)dk);
            memcpy(row + (size_t)key_dim + (size_t)g * (size_t)dk, blk + dk, sizeof(float) * (size_t)dk);
            memcpy(row + 2 * (size_t)key_dim + (size_t)g * (size_t)r * (size_t)dv, blk + 2 * dk,
                   sizeof(float) * (size_t)r * (size_t)dv);
        }
    }
    for (int t = 0; t < T; t++) {
        float *y = st->xc + (size_t)t * (size_t)cd;
        for (int ch = 0; ch < cd; ch++) {
            const float *w = la->conv + (size_t)ch * (size_t)K;
            float acc = 0;
            for (int j = 0; j < K; j++) acc += w[j] * ext[(size_t)(t + j) * (size_t)cd + (size_t)ch];
            y[ch] = acc / (1.0f + expf(-acc));
        }
    }
    if (snap) memcpy(snap->conv + (size_t)li * st->conv_floats, ext + (size_t)split * (size_t)cd,
                     sizeof(float) * st->conv_floats);
    memcpy(conv_state, ext + (size_t)T * (size_t)cd, sizeof(float) * st->conv_floats);

    /* Normalised q, k; per value head decay (log) and write strength. */
    float qscale = 1.0f / sqrtf((float)dk);
    for (int t = 0; t < T; t++) {
        float *y = st->xc + (size_t)t * (size_t)cd;
        for (int g = 0; g < nk; g++) {
            l2normalize(y + (size_t)g * (size_t)dk, dk, qscale);
            l2normalize(y + (size_t)key_dim + (size_t)g * (size_t)dk, dk, 1.0f);
        }
        const float *ba = st->ba + (size_t)t * 2 * (size_t)nv;
        for (int h = 0; h < nv; h++) {
            int g = h / r, j = h % r;
            float b = sep_ba ? st->ba[(size_t)t * (size_t)nv + (size_t)h] : ba[g * 2 * r + j];
            float a = sep_ba ? asep[(size_t)t * (size_t)nv + (size_t)h] : ba[g * 2 * r + r + j];
            st->beta[(size_t)t * (size_t)nv + (size_t)h] = 1.0f / (1.0f + expf(-b));
            st->g[(size_t)t * (size_t)nv + (size_t)h] = la->A[h] * softplus(a + la->dt_bias[h]);
        }
    }

    for (int h = 0; h < nv; h++) {
        int g = c->lin_v_tiled ? h % nk : h / r; /* the key head value head h reads */
        float *Sh = rec + (size_t)h * (size_t)dv * (size_t)dk;
        head_io io = {.q = st->xc + (size_t)g * (size_t)dk,
                      .k = st->xc + (size_t)key_dim + (size_t)g * (size_t)dk,
                      .v = st->xc + 2 * (size_t)key_dim + (size_t)h * (size_t)dv,
                      .g = st->g + h,
                      .beta = st->beta + h,
                      .out = st->core + (size_t)h * (size_t)dv,
                      .qk_stride = (size_t)cd,
                      .v_stride = (size_t)cd,
                      .gb_stride = (size_t)nv,
                      .out_stride = (size_t)nv * (size_t)dv};
        if (snap) {
            run_range(st, Sh, &io, split);
            memcpy(snap->rec + (size_t)li * st->rec_floats + (size_t)h * (size_t)dv * (size_t)dk, Sh,
                   sizeof(float) * (size_t)dv * (size_t)dk);
            head_io rest = offset_io(&io, split);
            run_range(st, Sh, &rest, T - split);
        } else {
            run_range(st, Sh, &io, T);
        }
    }

    /* Gated RMSNorm per value head: rmsnorm(o) * weight * silu(z). */
    if (be->ops->rmsnorm(be, st->core, st->core, la->norm, T * nv, dv, c->rms_norm_eps) != 0)
        return lm_errf(err, "layer %d: %s", l, lm_backend_error(be));
    for (int t = 0; t < T; t++) {
        const float *src = st->qkvz + (size_t)t * (size_t)st->qkvz_dim;
        for (int h = 0; h < nv; h++) {
            const float *z = sep ? zsep + ((size_t)t * (size_t)nv + (size_t)h) * (size_t)dv
                                 : src + (size_t)(h / r) * (size_t)per_k + 2 * (size_t)dk + (size_t)r * (size_t)dv +
                                       (size_t)(h % r) * (size_t)dv;
            float *o = st->core + ((size_t)t * (size_t)nv + (size_t)h) * (size_t)dv;
            for (int i = 0; i < dv; i++) o[i] *= z[i] / (1.0f + expf(-z[i]));
        }
    }
    if (be->ops->matmul(be, S->proj, &la->out, st->core, T) != 0)
        return lm_errf(err, "layer %d: %s", l, lm_backend_error(be));
    return 0;
}

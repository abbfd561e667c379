/* Session state files: a session's tokens and KV cache on disk, so that a prompt
 * evaluated once (an agent's 30k-token system prompt and tools) need not be evaluated
 * again by a later request, a later process or a restarted server.
 *
 * Layout (little-endian, this machine's):
 *   "LMKVST1\n"            magic and version
 *   u64 model_id           the model's identity (config.json and weight files)
 *   u64 compute            what produced the numbers: backend, kernel table, KV and
 *                          activation precision, shapes. Restored state must give the
 *                          logits recomputing would, so another computation's file is
 *                          foreign even for the same model.
 *   u32 n, u32 0           positions held
 *   i32 tokens[n]
 *   per attention layer: K values, K scales, V values, V scales for n positions
 *                        (the caches' own layout: positions outermost, so a prefix)
 *   u64 checksum           FNV-1a of everything before it
 * Written to a temporary name and renamed, so a reader never sees half a file. A file
 * that is truncated, corrupt or foreign is an error for the caller to log and skip. */
#include "engine/engine.h"

#include "common/error.h"
#include "common/hash.h"
#include "platform/fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char magic[8] = {'L', 'M', 'K', 'V', 'S', 'T', '1', '\n'};
enum { STAGE_BYTES = 1 << 20 };

static uint64_t compute_signature(const lazymoe_model *m) {
    const lm_config *c = &m->w.cfg;
    char sig[256];
    snprintf(sig, sizeof sig, "%s|%s|kv%d|act%d|L%d|kv%d|hd%d", m->be->ops->name, lm_backend_cpu_kernels(m->be),
             (int)m->kv_dtype, m->opt.act_bits, c->n_layers, c->n_kv_heads, c->head_dim);
    return lm_fnv1a(LM_FNV1A_INIT, sig, strlen(sig));
}

typedef struct {
    FILE *f;
    uint64_t sum;
    const char *path;
    char *err;
} stream;

static int put(stream *w, const void *p, size_t n) {
    w->sum = lm_fnv1a(w->sum, p, n);
    if (fwrite(p, 1, n, w->f) != n) return lm_errf(w->err, "%s: write failed (disk full?)", w->path);
    return 0;
}

static int get(stream *r, void *p, size_t n) {
    if (fread(p, 1, n, r->f) != n) return lm_errf(r->err, "%s: truncated", r->path);
    r->sum = lm_fnv1a(r->sum, p, n);
    return 0;
}

/* What lm_session_save writes, in the order it writes it. */
uint64_t lm_session_file_bytes(const lazymoe_model *m, int n) {
    const lm_config *c = &m->w.cfg;
    uint64_t total = sizeof magic + 2 * sizeof(uint64_t) + 2 * sizeof(uint32_t) + sizeof(int32_t) * (uint64_t)n;
    size_t bytes[4];
    lm_kv_layer_bytes(c, n, m->kv_dtype, bytes);
    for (int l = 0; l < c->n_layers; l++)
        if (!lm_config_layer_is_linear(c, l)) total += (uint64_t)bytes[0] + bytes[1] + bytes[2] + bytes[3];
    return total + sizeof(uint64_t); /* the checksum */
}

int lm_session_save(const lazymoe_session *s, int n, const char *path, char *err) {
    const lazymoe_model *m = s->m;
    const lm_config *c = &m->w.cfg;
    if (s->lin) return lm_errf(err, "sessions of models with linear attention cannot be saved yet");
    if (n <= 0 || n > s->n_past) return lm_errf(err, "cannot save %d positions of a session holding %d", n, s->n_past);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    stream w = {.f = fopen(tmp, "wb"), .sum = LM_FNV1A_INIT, .path = tmp, .err = err};
    if (!w.f) return lm_errf(err, "%s: cannot create", tmp);
    char *stage = malloc(STAGE_BYTES);
    uint64_t head[2] = {m->model_id, compute_signature(m)};
    uint32_t count[2] = {(uint32_t)n, 0};
    int rc = stage ? 0 : lm_errf(err, "out of memory");
    if (!rc) rc = put(&w, magic, sizeof magic);
    if (!rc) rc = put(&w, head, sizeof head);
    if (!rc) rc = put(&w, count, sizeof count);
    if (!rc) rc = put(&w, s->tokens, sizeof(int32_t) * (size_t)n);
    size_t bytes[4];
    lm_kv_layer_bytes(c, n, m->kv_dtype, bytes);
    for (int l = 0; !rc && l < c->n_layers; l++) {
        if (lm_config_layer_is_linear(c, l)) continue;
        for (int i = 0; !rc && i < 4; i++)
            for (size_t off = 0; !rc && off < bytes[i]; off += STAGE_BYTES) {
                size_t k = bytes[i] - off < STAGE_BYTES ? bytes[i] - off : STAGE_BYTES;
                const char *src = (const char *)s->kv_bufs[(size_t)l * 4 + (size_t)i].ptr + off;
                if (m->be->ops->download(m->be, stage, src, k) != 0)
                    rc = lm_errf(err, "reading the KV cache: %s", lm_backend_error(m->be));
                else
                    rc = put(&w, stage, k);
            }
    }
    uint64_t sum = w.sum;
    if (!rc && fwrite(&sum, sizeof sum, 1, w.f) != 1) rc = lm_errf(err, "%s: write failed (disk full?)", tmp);
    if (fflush(w.f) != 0 && !rc) rc = lm_errf(err, "%s: write failed (disk full?)", tmp);
    if (fclose(w.f) != 0 && !rc) rc = lm_errf(err, "%s: write failed (disk full?)", tmp);
    free(stage);
    if (!rc) rc = lm_rename(tmp, path, err);
    if (rc) unlink(tmp);
    return rc;
}

/* Opens a file and checks its header against the model; *n = positions it holds. */
static int open_checked(const lazymoe_model *m, const char *path, stream *r, uint32_t *n, char *err) {
    r->f = fopen(path, "rb");
    r->sum = LM_FNV1A_INIT;
    r->path = path;
    r->err = err;
    if (!r->f) return lm_errf(err, "%s: cannot open", path);
    char mg[8];
    uint64_t head[2];
    uint32_t count[2];
    int rc = get(r, mg, sizeof mg);
    if (!rc && memcmp(mg, magic, sizeof magic) != 0) rc = lm_errf(err, "%s: not a lazymoe session state file", path);
    if (!rc) rc = get(r, head, sizeof head);
    if (!rc && (head[0] != m->model_id || head[1] != compute_signature(m)))
        rc = lm_errf(err, "%s: made by another model or computation", path);
    if (!rc) rc = get(r, count, sizeof count);
    if (!rc && (count[0] == 0 || count[0] > (uint32_t)m->max_context || count[1] != 0))
        rc = lm_errf(err, "%s: holds %u positions, this model's context is %d", path, count[0], m->max_context);
    if (rc) {
        fclose(r->f);
        r->f = NULL;
        return -1;
    }
    *n = count[0];
    return 0;
}

int lm_session_file_tokens(const lazymoe_model *m, const char *path, int32_t **tokens, int *n, char *err) {
    stream r;
    uint32_t count;
    *tokens = NULL;
    *n = 0;
    if (m->w.cfg.n_linear_layers) return lm_errf(err, "sessions of models with linear attention are not stored");
    if (open_checked(m, path, &r, &count, err) != 0) return -1;
    int32_t *t = malloc(sizeof(int32_t) * count);
    int rc = t ? get(&r, t, sizeof(int32_t) * count) : lm_errf(err, "out of memory");
    for (uint32_t i = 0; !rc && i < count; i++)
        if (t[i] < 0 || t[i] >= m->w.cfg.vocab_size) rc = lm_errf(err, "%s: token id %d outside the vocabulary", path, t[i]);
    fclose(r.f);
    if (rc) {
        free(t);
        return -1;
    }
    *tokens = t;
    *n = (int)count;
    return 0;
}

int lm_session_load(lazymoe_session *s, const char *path, char *err) { return lm_session_load_prefix(s, path, 0, err); }

/* Reads len bytes of the stream into dst, through the staging buffer when dst is NULL
 * (bytes that only count towards the checksum) or when the backend holds the cache. */
static int get_kv(stream *r, lazymoe_session *s, char *dst, size_t len, char *stage, char *err) {
    for (size_t off = 0; off < len; off += STAGE_BYTES) {
        size_t k = len - off < STAGE_BYTES ? len - off : STAGE_BYTES;
        if (get(r, stage, k) != 0) return -1;
        if (dst && s->m->be->ops->upload(s->m->be, dst + off, stage, k) != 0)
            return lm_errf(err, "restoring the KV cache: %s", lm_backend_error(s->m->be));
    }
    return 0;
}

int lm_session_load_prefix(lazymoe_session *s, const char *path, int keep, char *err) {
    lazymoe_model *m = s->m;
    const lm_config *c = &m->w.cfg;
    if (s->lin) return lm_errf(err, "sessions of models with linear attention cannot be restored yet");
    stream r;
    uint32_t n;
    if (open_checked(m, path, &r, &n, err) != 0) return -1;
    /* Only the first `keep` positions take room in the session: the rest of the file is
     * read for its checksum only, so a stored conversation longer than the prefix a
     * request shares with it costs no KV beyond that prefix (the session's growth
     * limit, its share of the KV budget, holds while restoring too). */
    uint32_t k = keep > 0 && (uint32_t)keep < n ? (uint32_t)keep : n;
    /* The session is emptied first: a failure below leaves it empty, never half-filled. */
    s->n_past = 0;
    int rc = s->cap_ctx < (int)k ? lm_kv_cache_grow(s, (int)k, err) : 0;
    char *stage = rc ? NULL : malloc(STAGE_BYTES);
    int32_t *ids = rc ? NULL : malloc(sizeof(int32_t) * n);
    if (!rc && (!stage || !ids)) rc = lm_errf(err, "out of memory");
    if (!rc) rc = get(&r, ids, sizeof(int32_t) * n);
    for (uint32_t i = 0; !rc && i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size) rc = lm_errf(err, "%s: token id %d outside the vocabulary", path, ids[i]);
    if (!rc) memcpy(s->tokens, ids, sizeof(int32_t) * k);
    size_t bytes[4], kept[4];
    lm_kv_layer_bytes(c, (int)n, m->kv_dtype, bytes);
    lm_kv_layer_bytes(c, (int)k, m->kv_dtype, kept); /* position-major: k positions are a prefix */
    for (int l = 0; !rc && l < c->n_layers; l++) {
        if (lm_config_layer_is_linear(c, l)) continue;
        for (int i = 0; !rc && i < 4; i++) {
            char *dst = s->kv_bufs[(size_t)l * 4 + (size_t)i].ptr;
            rc = get_kv(&r, s, dst, kept[i], stage, err);
            if (!rc) rc = get_kv(&r, s, NULL, bytes[i] - kept[i], stage, err);
        }
    }
    uint64_t want = r.sum, sum = 0;
    if (!rc && fread(&sum, sizeof sum, 1, r.f) != 1) rc = lm_errf(err, "%s: truncated", path);
    if (!rc && sum != want) rc = lm_errf(err, "%s: checksum mismatch (corrupt file)", path);
    if (!rc && fgetc(r.f) != EOF) rc = lm_errf(err, "%s: unexpected bytes after the checksum", path);
    fclose(r.f);
    free(stage);
    free(ids);
    if (!rc) s->n_past = (int)k;
    return rc;
}

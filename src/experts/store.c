/* The expert store. See store.h for the contract.
 *
 * Cache slot layout: direct I/O (O_DIRECT) reads whole LM_DIRECT_ALIGN blocks into
 * aligned memory. So each part p owns a region of the slot starting at an aligned
 * offset, region[p], long enough for the aligned span of the part in any expert: the
 * part of expert e, at file offset o, sits at region[p] + o % LM_DIRECT_ALIGN,
 * congruent to its file offset, and the span's blocks are read straight into the
 * region; the bytes read before and after the part land in the region's own padding,
 * never in another part. No bounce buffer, no copy. The one exception: a part whose
 * file offset is not a multiple of its element size (a safetensors file allows it;
 * the writers we know align tensors) would then be misaligned in memory; it is moved
 * down to the element boundary inside its region after the read. Without direct I/O
 * (tmpfs refuses O_DIRECT) the same positions are filled through the page cache.
 *
 * Requests: every part, or each piece of at most `chunk` bytes of a longer one, is
 * one request, so the cache's reader threads fetch the parts of all missing experts
 * of a layer in parallel.
 */
#include "experts/store.h"

#include "common/error.h"
#include "common/log.h"
#include "platform/platform.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct lm_expert_store {
    lm_weights *w;
    lm_io io;
    int *direct_fd; /* per archive file, -1 if none */
};

static ssize_t default_read(void *ctx, const lm_read_target *t, int fd, void *buf, size_t len, uint64_t offset) {
    (void)ctx;
    (void)t;
    return pread(fd, buf, len, (off_t)offset);
}

int lm_store_open(lm_expert_store **out, lm_weights *w, int direct_io, const lm_io *io, char *err) {
    *out = NULL;
    lm_expert_store *st = calloc(1, sizeof *st);
    if (!st) return lm_errf(err, "out of memory opening the expert store");
    st->w = w;
    st->io.read = io && io->read ? io->read : default_read;
    st->io.ctx = io && io->read ? io->ctx : NULL;
    st->direct_fd = malloc(sizeof(int) * (size_t)(w->archive->nfiles > 0 ? w->archive->nfiles : 1));
    if (!st->direct_fd) {
        free(st);
        return lm_errf(err, "out of memory opening the expert store");
    }
    int warned = 0;
    for (int i = 0; i < w->archive->nfiles; i++) {
        st->direct_fd[i] = -1;
        if (!direct_io) continue;
        char e2[LM_ERR_LEN];
        st->direct_fd[i] = lm_file_open_direct(w->archive->files[i].path, e2);
        if (st->direct_fd[i] < 0 && !warned) {
            lm_log(LAZYMOE_LOG_WARN, "lazymoe: %s; using buffered reads (the page cache will hold experts too)", e2);
            warned = 1;
        }
    }
    *out = st;
    return 0;
}

void lm_store_close(lm_expert_store *st) {
    if (!st) return;
    for (int i = 0; i < st->w->archive->nfiles; i++) lm_file_close(st->direct_fd[i]);
    free(st->direct_fd);
    free(st);
}

const lm_weights *lm_store_weights(const lm_expert_store *st) { return st->w; }

/* ---- one read --------------------------------------------------------------------- */

/* Reads exactly len bytes at offset through the read function, continuing short
 * reads and retrying EINTR. */
static int read_full(const lm_expert_store *st, const lm_read_target *t, int fd, char *dst, uint64_t len,
                     uint64_t offset, char *err) {
    uint64_t done = 0;
    while (done < len) {
        uint64_t want = len - done > (1u << 30) ? (1u << 30) : len - done;
        ssize_t got = st->io.read(st->io.ctx, t, fd, dst + done, (size_t)want, offset + done);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            return lm_errf(err, "read error at offset %llu: %s", (unsigned long long)(offset + done), strerror(errno));
        if (got == 0)
            return lm_errf(err, "short read: got %llu of %llu bytes at offset %llu (the file is shorter than expected)",
                           (unsigned long long)done, (unsigned long long)len, (unsigned long long)offset);
        done += (uint64_t)got;
    }
    return 0;
}

/* Reads the aligned span [a, a + span) of a direct-I/O fd into dst, of which the first
 * `need` bytes must arrive (the rest is padding that may lie past the end of the file).
 * A short read that stops inside a block before `need` is finished through the page
 * cache (buffered_fd): direct reads must start on a block boundary. */
static int read_direct(const lm_expert_store *st, const lm_read_target *t, int dfd, int buffered_fd, char *dst,
                       uint64_t a, uint64_t span, uint64_t need, char *err) {
    uint64_t done = 0;
    while (done < need) {
        ssize_t got = st->io.read(st->io.ctx, t, dfd, dst + done, span - done, a + done);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return lm_errf(err, "read error at offset %llu: %s", (unsigned long long)(a + done), strerror(errno));
        if (got == 0)
            return lm_errf(err, "short read: got %llu of %llu bytes at offset %llu (the file is shorter than expected)",
                           (unsigned long long)done, (unsigned long long)need, (unsigned long long)a);
        done += (uint64_t)got;
        if (done < need && done % LM_DIRECT_ALIGN) {
            lm_read_target bt = *t;
            bt.direct = 0;
            return read_full(st, &bt, buffered_fd, dst + done, need - done, a + done, err);
        }
    }
    return 0;
}

/* Prefixes a failed read's message with the file, layer and expert, and says how
 * often it was tried. */
static int read_failed(const char *path, int l, int e, char *err) {
    size_t n = strlen(err);
    if (n + 16 < LM_ERR_LEN) snprintf(err + n, LM_ERR_LEN - n, " (%d tries)", LM_STORE_READ_TRIES);
    return lm_err_prefix(err, "%s: layer %d expert %d", path, l, e);
}

/* ---- resident experts ------------------------------------------------------------- */

int lm_store_read_expert(const lm_expert_store *st, int l, int e, void *slot, char *err) {
    const lm_expert_source *s = &st->w->layers[l].src;
    for (int p = 0; p < s->nparts; p++) {
        int i = e * LM_EXPERT_MAX_PARTS + p;
        const st_file *f = &st->w->archive->files[s->file[i]];
        lm_read_target t = {f->path, l, e, p, 0};
        int rc = -1;
        for (int k = 0; k < LM_STORE_READ_TRIES && rc != 0; k++)
            rc = read_full(st, &t, f->fd, (char *)slot + s->part_off[p], s->part_len[p], s->off[i], err);
        if (rc != 0) return read_failed(f->path, l, e, err);
    }
    return 0;
}

/* One buffer of E resident slots for layer l, read expert by expert. */
static int load_layer_resident(lm_expert_store *st, int l, char *err) {
    lm_weights *w = st->w;
    lm_layer *ly = &w->layers[l];
    int E = w->cfg.n_experts;
    lm_expert *views = lm_weights_keep(w, lm_malloc_aligned(sizeof(lm_expert) * (size_t)E, "expert table", err), err);
    char *slots = lm_weights_keep(w, lm_malloc_aligned(ly->src.slot_bytes * (size_t)E, "experts", err), err);
    if (!views || !slots) return -1;
    for (int e = 0; e < E; e++) {
        char *slot = slots + ly->src.slot_bytes * (size_t)e;
        if (lm_store_read_expert(st, l, e, slot, err)) return -1;
        views[e] = lm_expert_view(&ly->src, slot);
    }
    ly->experts = views; /* only once every expert is read: a failed load leaves the layer lazy */
    return 0;
}

int lm_store_load_resident(lm_expert_store *st, lm_progress_fn progress, void *pctx, char *err) {
    lm_weights *w = st->w;
    for (int l = 0; l < w->cfg.n_layers; l++) {
        if (!w->layers[l].is_moe || w->layers[l].experts) continue;
        if (load_layer_resident(st, l, err) != 0) return -1;
        if (progress) progress(pctx, "loading experts", (double)(l + 1) / w->cfg.n_layers);
    }
    for (int i = 0; i < w->archive->nfiles; i++) lm_file_drop_cache(w->archive->files[i].fd);
    return 0;
}

/* ---- cache slots ------------------------------------------------------------------ */

static uint64_t align_up(uint64_t x) { return (x + LM_DIRECT_ALIGN - 1) & ~(uint64_t)(LM_DIRECT_ALIGN - 1); }

uint64_t lm_store_slot_layout(const lm_expert_source *s, int n_experts, uint64_t region[LM_EXPERT_MAX_PARTS]) {
    uint64_t at = 0;
    for (int p = 0; p < s->nparts; p++) {
        uint64_t need = 0; /* the longest aligned span of this part over all experts */
        for (int e = 0; e < n_experts; e++) {
            uint64_t span = align_up(s->off[e * LM_EXPERT_MAX_PARTS + p] % LM_DIRECT_ALIGN + s->part_len[p]);
            if (span > need) need = span;
        }
        region[p] = at;
        at += need;
    }
    return at;
}

uint64_t lm_store_part_shift(const lm_expert_source *s, int e, int p) {
    uint64_t shift = s->off[e * LM_EXPERT_MAX_PARTS + p] % LM_DIRECT_ALIGN;
    uint64_t elem = s->part_align[p] ? s->part_align[p] : 1;
    return shift - shift % elem;
}

/* The pieces are of equal size, in whole blocks (lm_store_read_request): a span one
 * block longer than 3 chunks is 4 pieces of ~3/4 chunk, not 3 chunks and one block.
 * A part that is moved after the read is one request (the move needs all of it). */
int lm_store_part_requests(const lm_expert_source *s, int e, int p, uint64_t chunk) {
    uint64_t shift = s->off[e * LM_EXPERT_MAX_PARTS + p] % LM_DIRECT_ALIGN;
    if (lm_store_part_shift(s, e, p) != shift) return 1;
    uint64_t n = (align_up(shift + s->part_len[p]) + chunk - 1) / chunk;
    return n > 0 ? (int)n : 1;
}

int lm_store_expert_requests(const lm_expert_source *s, int e, uint64_t chunk) {
    int n = 0;
    for (int p = 0; p < s->nparts; p++) n += lm_store_part_requests(s, e, p, chunk);
    return n;
}

/* One attempt of a request (see lm_store_read_request). */
static int read_request_once(const lm_expert_store *st, const lm_read_target *t, int bfd, int dfd, char *region,
                             uint64_t off, uint64_t len, uint64_t at, int n, int k, uint64_t *bytes, char *err) {
    uint64_t shift = off % LM_DIRECT_ALIGN, base = off - shift;
    if (at != shift) { /* the whole part, then the move (see the top) */
        *bytes = len;
        if (dfd < 0) return read_full(st, t, bfd, region + at, len, off, err);
        if (read_direct(st, t, dfd, bfd, region, base, align_up(shift + len), shift + len, err) != 0) return -1;
        memmove(region + at, region + shift, len);
        return 0;
    }
    /* Piece [c0, c1) of the aligned span (blocks k*B/n to (k+1)*B/n of its B blocks);
     * the part's bytes in it are [d0, d1). */
    uint64_t span = align_up(shift + len), blocks = span / LM_DIRECT_ALIGN;
    uint64_t c0 = blocks * (uint64_t)k / (uint64_t)n * LM_DIRECT_ALIGN;
    uint64_t c1 = blocks * (uint64_t)(k + 1) / (uint64_t)n * LM_DIRECT_ALIGN;
    uint64_t d0 = c0 > shift ? c0 : shift, d1 = c1 < shift + len ? c1 : shift + len;
    *bytes = d1 > d0 ? d1 - d0 : 0;
    if (dfd < 0) return read_full(st, t, bfd, region + d0, *bytes, base + d0, err);
    return read_direct(st, t, dfd, bfd, region + c0, base + c0, c1 - c0, d1 > c0 ? d1 - c0 : 0, err);
}

int lm_store_read_request(const lm_expert_store *st, int l, int e, int p, int k, uint64_t chunk, char *slot,
                          const uint64_t region[LM_EXPERT_MAX_PARTS], uint64_t *bytes, int *direct, char *err) {
    const lm_expert_source *s = &st->w->layers[l].src;
    int idx = e * LM_EXPERT_MAX_PARTS + p;
    const st_file *f = &st->w->archive->files[s->file[idx]];
    int dfd = st->direct_fd[s->file[idx]];
    lm_read_target t = {f->path, l, e, p, dfd >= 0};
    *direct = dfd >= 0;
    int n = lm_store_part_requests(s, e, p, chunk), rc = -1;
    for (int i = 0; i < LM_STORE_READ_TRIES && rc != 0; i++)
        rc = read_request_once(st, &t, f->fd, dfd, slot + region[p], s->off[idx], s->part_len[p],
                               lm_store_part_shift(s, e, p), n, k, bytes, err);
    return rc == 0 ? 0 : read_failed(f->path, l, e, err);
}

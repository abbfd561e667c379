/* Resident tensors read into the page cache ahead of the loader. See archive_prefetch.h. */
#include "formats/archive_prefetch.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define PIECE_BYTES (4u << 20) /* one pread: large enough for the disk, small enough to stop soon */
#define MERGE_GAP (256u << 10) /* ranges this close are read as one (the gap is small tensors' headers or norms) */
#define MAX_THREADS 16

typedef struct {
    int fd;
    uint64_t offset, len;
} piece;

struct st_prefetch {
    piece *pieces;
    size_t n;
    atomic_size_t next;
    atomic_int stop;
    atomic_uint_fast64_t bytes;
    pthread_t tid[MAX_THREADS];
    int nthreads;
};

typedef struct {
    int file;
    uint64_t offset, len;
} range;

static int cmp_range(const void *a, const void *b) {
    const range *x = a, *y = b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    return x->offset < y->offset ? -1 : (x->offset > y->offset);
}

static void *reader(void *arg) {
    st_prefetch *p = arg;
    char *buf = malloc(PIECE_BYTES);
    if (!buf) return NULL;
    while (!atomic_load(&p->stop)) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n) break;
        ssize_t got = pread(p->pieces[i].fd, buf, p->pieces[i].len, (off_t)p->pieces[i].offset);
        if (got > 0) atomic_fetch_add(&p->bytes, (uint64_t)got);
    }
    free(buf);
    return NULL;
}

/* The wanted tensors' byte ranges, sorted, merged where close, cut into pieces. */
static int make_pieces(st_prefetch *p, const st_archive *a, st_prefetch_filter want, uint64_t *total) {
    range *r = malloc(sizeof *r * (size_t)(a->ntensors > 0 ? a->ntensors : 1));
    if (!r) return -1;
    size_t nr = 0;
    *total = 0;
    for (int i = 0; i < a->ntensors; i++) {
        const st_tensor *t = &a->tensors[i];
        if (t->nbytes == 0 || !want(t)) continue;
        r[nr++] = (range){t->file, t->offset, t->nbytes};
        *total += t->nbytes;
    }
    qsort(r, nr, sizeof *r, cmp_range);
    size_t m = 0;
    for (size_t i = 0; i < nr; i++) {
        range *last = m ? &r[m - 1] : NULL;
        if (last && last->file == r[i].file && r[i].offset <= last->offset + last->len + MERGE_GAP) {
            uint64_t end = r[i].offset + r[i].len;
            if (end > last->offset + last->len) last->len = end - last->offset;
        } else {
            r[m++] = r[i];
        }
    }
    size_t np = 0;
    for (size_t i = 0; i < m; i++) np += (size_t)((r[i].len + PIECE_BYTES - 1) / PIECE_BYTES);
    p->pieces = malloc(sizeof *p->pieces * (np ? np : 1));
    if (!p->pieces) {
        free(r);
        return -1;
    }
    for (size_t i = 0; i < m; i++)
        for (uint64_t at = 0; at < r[i].len; at += PIECE_BYTES) {
            uint64_t len = r[i].len - at < PIECE_BYTES ? r[i].len - at : PIECE_BYTES;
            p->pieces[p->n++] = (piece){a->files[r[i].file].fd, r[i].offset + at, len};
        }
    free(r);
    return 0;
}

st_prefetch *st_prefetch_start(const st_archive *a, st_prefetch_filter want, int threads, uint64_t min_bytes) {
    if (threads < 1) return NULL;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    st_prefetch *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    uint64_t total = 0;
    if (make_pieces(p, a, want, &total) != 0 || total == 0 || total < min_bytes) {
        free(p->pieces);
        free(p);
        return NULL;
    }
    atomic_init(&p->next, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->bytes, 0);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&p->tid[i], NULL, reader, p) != 0) break;
        p->nthreads++;
    }
    if (p->nthreads == 0) {
        free(p->pieces);
        free(p);
        return NULL;
    }
    return p;
}

static uint64_t end(st_prefetch *p, int stop) {
    if (!p) return 0;
    if (stop) atomic_store(&p->stop, 1);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->tid[i], NULL);
    uint64_t bytes = atomic_load(&p->bytes);
    free(p->pieces);
    free(p);
    return bytes;
}

uint64_t st_prefetch_stop(st_prefetch *p) { return end(p, 1); }

uint64_t st_prefetch_wait(st_prefetch *p) { return end(p, 0); }

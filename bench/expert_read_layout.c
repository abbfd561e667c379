/* How fast can experts be read from this disk?
 *
 * Default mode: one expert as the 9 separate byte ranges of an MLX file
 * (gate/up/down x weight/scales/biases, each in its own stacked tensor) or as one
 * contiguous extent (a packed store)? Same bytes, same random experts, O_DIRECT, N
 * reader threads (queue depth N), each reading whole experts one after another.
 *
 * --batch M: what the expert cache does on a decode step. M distinct random experts
 * of one random layer are missed at once; their parts (split into equal aligned
 * requests of at most --chunk KiB, 0 = one request per part) go to one queue served by
 * N reader threads that read each request straight into its place in an aligned slot,
 * as the cache does; the step ends when every request is done, then the next layer's misses
 * are queued. Reports MB/s and the mean time per step. Parts start `--shift` bytes past
 * a block boundary, as tensors in a safetensors file do (default 8, so each part's
 * aligned span is one block longer than the part). --bounce reads as the cache did
 * before it read into its slots: each request into the reader's own aligned buffer,
 * then a memcpy of the part's bytes into the slot.
 *
 * build: cc -O2 -o build/expert_read_layout bench/expert_read_layout.c -lpthread
 * run:   build/expert_read_layout FILE [GB=2] [THREADS=8] [SECONDS=6]
 *                                [--batch M [--chunk KIB] [--shift B] [--bounce]]
 * Shapes are Qwen3-30B-A3B's at 4 bits, group 64: a 768x2048 projection is
 * 786432 bytes of weights + 2 x 49152 of scales/biases (bf16); 2.65 MB per expert.
 * The scratch file is created (non-zero data) if shorter than asked; delete it after.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

#define EXPERTS 128
#define ALIGN 4096ull
#define MAX_BATCH 64
#define MAX_REQ 4096
static const uint64_t PART[9] = {786432, 49152, 49152, 786432, 49152, 49152, 786432, 49152, 49152};
static uint64_t expert_bytes, layer_bytes;
static int fd, layers, packed;
static atomic_uint_fast64_t bytes_done, experts_done;
static volatile int stop;

static uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) & ~(ALIGN - 1); }

static int read_range(char *buf, uint64_t off, uint64_t len) {
    uint64_t a = off & ~(ALIGN - 1), end = align_up(off + len);
    return pread(fd, buf, end - a, (off_t)a) >= (ssize_t)(off + len - a) ? 0 : -1;
}

static void *reader(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg * 7919u + 1;
    char *buf;
    if (posix_memalign((void **)&buf, ALIGN, 4 << 20)) return NULL;
    while (!stop) {
        int l = rand_r(&seed) % layers, e = rand_r(&seed) % EXPERTS;
        uint64_t base = (uint64_t)l * layer_bytes;
        if (packed) {
            if (read_range(buf, base + (uint64_t)e * expert_bytes, expert_bytes)) break;
        } else {
            uint64_t t = base; /* tensor p holds every expert's part p */
            for (int p = 0; p < 9; p++) {
                if (read_range(buf, t + (uint64_t)e * PART[p], PART[p])) goto out;
                t += EXPERTS * PART[p];
            }
        }
        atomic_fetch_add(&bytes_done, expert_bytes);
        atomic_fetch_add(&experts_done, 1);
    }
out:
    free(buf);
    return NULL;
}

/* ---- --batch: the cache's read pattern ------------------------------------------- */

typedef struct {
    uint64_t file_off; /* aligned */
    uint64_t len;      /* aligned */
    char *dst;         /* aligned */
    uint64_t skip;     /* --bounce: bytes before the part in the span (not copied) */
    uint64_t keep;     /* --bounce: the part's bytes in the span */
} request;

static request reqs[MAX_REQ];
static int n_req, next_req, req_left, read_failed, bounce;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_work = PTHREAD_COND_INITIALIZER, cv_done = PTHREAD_COND_INITIALIZER;

static void *batch_reader(void *arg) {
    (void)arg;
    char *buf = NULL;
    if (bounce && posix_memalign((void **)&buf, ALIGN, 4 << 20)) return NULL;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!stop && next_req >= n_req) pthread_cond_wait(&cv_work, &mu);
        if (stop) break;
        request r = reqs[next_req++];
        pthread_mutex_unlock(&mu);
        ssize_t got = pread(fd, bounce ? buf : r.dst, r.len, (off_t)r.file_off);
        if (bounce && got == (ssize_t)r.len) memcpy(r.dst, buf + r.skip, r.keep);
        pthread_mutex_lock(&mu);
        if (got != (ssize_t)r.len) read_failed = 1;
        if (--req_left == 0) pthread_cond_signal(&cv_done);
    }
    pthread_mutex_unlock(&mu);
    free(buf);
    return NULL;
}

/* Queues the requests of M distinct random experts of one random layer, each read into
 * its own slot (each part in a region as long as its aligned span). */
static void queue_batch(int m, uint64_t chunk, uint64_t shift, char *slots, uint64_t slot_bytes, unsigned *seed) {
    int l = rand_r(seed) % layers, picked[MAX_BATCH];
    n_req = 0;
    for (int i = 0; i < m; i++) {
        int e, dup;
        do {
            e = rand_r(seed) % EXPERTS;
            dup = 0;
            for (int j = 0; j < i; j++) dup |= picked[j] == e;
        } while (dup);
        picked[i] = e;
        uint64_t t = (uint64_t)l * layer_bytes + shift, region = 0;
        for (int p = 0; p < 9; p++) {
            uint64_t off = t + (uint64_t)e * PART[p];
            uint64_t a = off & ~(ALIGN - 1), span = align_up(off + PART[p]) - a;
            /* n pieces of equal size in whole blocks, each at most chunk, as the cache splits */
            uint64_t blocks = span / ALIGN, n = chunk ? (span + chunk - 1) / chunk : 1;
            for (uint64_t k = 0; k < n; k++) {
                uint64_t at = blocks * k / n * ALIGN;
                request *r = &reqs[n_req++];
                r->file_off = a + at;
                r->len = blocks * (k + 1) / n * ALIGN - at;
                r->dst = slots + (uint64_t)i * slot_bytes + region + at;
                r->skip = at == 0 ? off - a : 0;
                r->keep = (at + r->len < off - a + PART[p] ? at + r->len : off - a + PART[p]) - (at + r->skip);
                if (bounce) r->dst = slots + (uint64_t)i * slot_bytes + region + at + r->skip;
            }
            region += align_up(shift % ALIGN + PART[p]);
            t += EXPERTS * PART[p];
        }
    }
}

static int run_batches(int threads, double secs, int m, uint64_t chunk, uint64_t shift) {
    uint64_t slot_bytes = 0;
    for (int p = 0; p < 9; p++) slot_bytes += align_up(shift % ALIGN + PART[p]);
    char *slots;
    if (posix_memalign((void **)&slots, ALIGN, slot_bytes * (uint64_t)m)) return 1;
    memset(slots, 0, slot_bytes * (uint64_t)m);
    pthread_t th[256];
    stop = 0;
    next_req = n_req = 0;
    for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, batch_reader, NULL);
    unsigned seed = 12345;
    uint64_t steps = 0, bytes = 0;
    double t0 = now();
    while (now() - t0 < secs && !read_failed) {
        pthread_mutex_lock(&mu);
        queue_batch(m, chunk, shift, slots, slot_bytes, &seed);
        next_req = 0;
        req_left = n_req;
        /* Wake as many readers as there are requests, as the cache does. */
        if (n_req >= threads) pthread_cond_broadcast(&cv_work);
        else
            for (int i = 0; i < n_req; i++) pthread_cond_signal(&cv_work);
        while (req_left > 0) pthread_cond_wait(&cv_done, &mu);
        pthread_mutex_unlock(&mu);
        steps++;
        bytes += (uint64_t)m * expert_bytes;
    }
    double dt = now() - t0;
    pthread_mutex_lock(&mu);
    stop = 1;
    pthread_cond_broadcast(&cv_work);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    free(slots);
    if (read_failed) {
        fprintf(stderr, "a read failed\n");
        return 1;
    }
    printf("batch %2d experts  chunk %4llu KiB  threads %3d%s  %8.1f MB/s  %7.2f ms per step  (%llu requests per step)\n",
           m, (unsigned long long)(chunk >> 10), threads, bounce ? " bounce" : "", bytes / dt / 1e6,
           1e3 * dt / (double)steps, (unsigned long long)n_req);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [GB] [THREADS] [SECONDS] [--batch M [--chunk KIB] [--shift B] [--bounce]]\n",
                argv[0]);
        return 1;
    }
    int batch = 0, pos = 0;
    uint64_t chunk = 0, shift = 8;
    double gb = 2, secs = 6;
    int threads = 8;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--chunk") && i + 1 < argc) chunk = (uint64_t)atoll(argv[++i]) << 10;
        else if (!strcmp(argv[i], "--shift") && i + 1 < argc) shift = (uint64_t)atoll(argv[++i]);
        else if (!strcmp(argv[i], "--bounce")) bounce = 1;
        else if (pos == 0) gb = atof(argv[i]), pos++;
        else if (pos == 1) threads = atoi(argv[i]), pos++;
        else if (pos == 2) secs = atof(argv[i]), pos++;
    }
    if (threads < 1 || threads > 256 || batch < 0 || batch > MAX_BATCH || chunk % ALIGN) {
        fprintf(stderr, "threads 1..256, batch 0..%d, chunk a multiple of 4 KiB\n", MAX_BATCH);
        return 1;
    }
    for (int p = 0; p < 9; p++) expert_bytes += PART[p];
    layer_bytes = expert_bytes * EXPERTS;
    layers = (int)(gb * 1e9 / (double)layer_bytes);
    if (layers < 1) layers = 1;
    uint64_t size = layer_bytes * (uint64_t)layers + 2 * ALIGN; /* room for the shift */
    int wfd = open(argv[1], O_WRONLY | O_CREAT, 0644);
    off_t cur = lseek(wfd, 0, SEEK_END);
    if (cur < (off_t)size) { /* fill with non-zero data once */
        char *blk = malloc(1 << 20);
        for (int i = 0; i < 1 << 20; i++) blk[i] = (char)(i * 31 + 7);
        for (uint64_t o = (uint64_t)cur; o < size; o += 1 << 20)
            if (pwrite(wfd, blk, 1 << 20, (off_t)o) < 0) return 1;
        free(blk);
        fsync(wfd);
    }
    close(wfd);
    fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror("open O_DIRECT");
        return 1;
    }
    if (batch) {
        int rc = run_batches(threads, secs, batch, chunk, shift);
        close(fd);
        return rc;
    }
    printf("file %.2f GB, %d layers x %d experts of %.2f MB, %d threads\n", size / 1e9, layers, EXPERTS,
           expert_bytes / 1e6, threads);
    for (int round = 0; round < 2; round++)
        for (packed = 0; packed <= 1; packed++) {
            atomic_store(&bytes_done, 0);
            atomic_store(&experts_done, 0);
            stop = 0;
            pthread_t th[256];
            double t0 = now();
            for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, reader, (void *)(uintptr_t)(i + 1 + 100 * round));
            usleep((useconds_t)(secs * 1e6));
            stop = 1;
            for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
            double dt = now() - t0;
            printf("%-26s %8.1f MB/s  %7.1f experts/s\n", packed ? "one extent per expert" : "9 ranges per expert (MLX)",
                   atomic_load(&bytes_done) / dt / 1e6, atomic_load(&experts_done) / dt);
        }
    close(fd);
    return 0;
}

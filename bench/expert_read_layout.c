/* How fast can one expert be read: as the 9 separate byte ranges of an MLX file
 * (gate/up/down x weight/scales/biases, each in its own stacked tensor) or as one
 * contiguous extent (a packed store)? Same bytes, same random experts, O_DIRECT,
 * N reader threads (queue depth N), on a scratch file of the given size.
 *
 * build: cc -O2 -o build/expert_read_layout bench/expert_read_layout.c -lpthread
 * run:   build/expert_read_layout FILE [GB=2] [THREADS=8] [SECONDS=6]
 * Shapes are Qwen3-30B-A3B's at 4 bits, group 64: a 768x2048 projection is
 * 786432 bytes of weights + 2 x 49152 of scales/biases (bf16); 1.77 MB per expert.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPERTS 128
static const uint64_t PART[9] = {786432, 49152, 49152, 786432, 49152, 49152, 786432, 49152, 49152};
static uint64_t expert_bytes, layer_bytes;
static int fd, layers, packed;
static atomic_uint_fast64_t bytes_done, experts_done;
static volatile int stop;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int read_range(char *buf, uint64_t off, uint64_t len) {
    uint64_t a = off & ~4095ull, end = (off + len + 4095) & ~4095ull;
    return pread(fd, buf, end - a, (off_t)a) >= (ssize_t)(off + len - a) ? 0 : -1;
}

static void *reader(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg * 7919u + 1;
    char *buf;
    if (posix_memalign((void **)&buf, 4096, 4 << 20)) return NULL;
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

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [GB] [THREADS] [SECONDS]\n", argv[0]);
        return 1;
    }
    double gb = argc > 2 ? atof(argv[2]) : 2;
    int threads = argc > 3 ? atoi(argv[3]) : 8;
    double secs = argc > 4 ? atof(argv[4]) : 6;
    for (int p = 0; p < 9; p++) expert_bytes += PART[p];
    layer_bytes = expert_bytes * EXPERTS;
    layers = (int)(gb * 1e9 / (double)layer_bytes);
    if (layers < 1) layers = 1;
    uint64_t size = layer_bytes * (uint64_t)layers;
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

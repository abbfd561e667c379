/* Fixed worker pool; see threadpool.h.
 *
 * Decode runs a pool job per matrix (about 20 per layer), each tens to hundreds of
 * microseconds, so handing work over must cost far less than that:
 *  - a worker that finished spins briefly on the generation counter before sleeping
 *    on the condition variable, and the caller spins briefly before sleeping on the
 *    completion count: back-to-back jobs never enter the kernel;
 *  - a job is complete when all its tasks are done, not when every worker has
 *    checked in: on a shared machine a worker that the OS has descheduled would
 *    otherwise hold every job up for a whole time slice. The caller takes tasks too,
 *    so a job finishes even if no worker shows up.
 * Tasks are claimed from a 64-bit ticket (generation << 32 | next task). A worker
 * that wakes up late for an old job finds the ticket on a newer generation and
 * claims nothing; the caller closes the ticket before rewriting the job fields, so
 * a late reader of half-rewritten fields never gets a task either.
 */
#include "kernels/cpu/threadpool.h"

#include "common/error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* ~0.1 ms of pause instructions on current x86 and ARM cores. */
#define SPIN_ROUNDS 4000
#define TICKET_CLOSED 0xffffffffu

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

struct lm_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    uint32_t last_generation; /* caller's own count */
    /* Current job (atomics: a late worker may read them while they change). */
    _Atomic(lm_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_int n_tasks;
    atomic_uint_least64_t ticket; /* generation << 32 | next task index */
    atomic_int done;              /* tasks finished in the current generation */
    atomic_uint generation;       /* what idle workers wait on */
    atomic_int stop;
    int started; /* workers running (under mu): lm_pool_create waits for all */
};

/* Next task index of generation g, or -1 when g is over or not current. */
static int claim(lm_pool *p, uint32_t g, int n_tasks) {
    uint64_t t = atomic_load(&p->ticket);
    for (;;) {
        if ((uint32_t)(t >> 32) != g) return -1;
        uint32_t idx = (uint32_t)t;
        if (idx == TICKET_CLOSED || idx >= (uint32_t)n_tasks) return -1;
        if (atomic_compare_exchange_weak(&p->ticket, &t, t + 1)) return (int)idx;
    }
}

static void work(lm_pool *p, uint32_t g, lm_task_fn fn, void *ctx, int n_tasks) {
    int idx;
    while ((idx = claim(p, g, n_tasks)) >= 0) {
        fn(ctx, idx);
        if (atomic_fetch_add(&p->done, 1) + 1 == n_tasks) {
            /* Last task: wake the caller if it went to sleep (signalled under the
             * mutex, so a caller about to wait cannot miss it). */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *worker_main(void *arg) {
    lm_pool *p = arg;
    uint32_t seen = 0;
    pthread_mutex_lock(&p->mu);
    p->started++;
    pthread_cond_broadcast(&p->done_cv);
    pthread_mutex_unlock(&p->mu);
    for (;;) {
        uint32_t g = atomic_load(&p->generation);
        for (int spin = 0; g == seen && spin < SPIN_ROUNDS && !atomic_load(&p->stop); spin++) {
            cpu_relax();
            g = atomic_load(&p->generation);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while (!atomic_load(&p->stop) && (g = atomic_load(&p->generation)) == seen)
                pthread_cond_wait(&p->start_cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = g;
        work(p, g, atomic_load(&p->fn), atomic_load(&p->ctx), atomic_load(&p->n_tasks));
    }
    return NULL;
}

int lm_pool_create(lm_pool **out, int n_threads, char *err) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    lm_pool *p = calloc(1, sizeof *p);
    if (!p) return lm_errf(err, "out of memory");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->fn, NULL);
    atomic_init(&p->ctx, NULL);
    atomic_init(&p->n_tasks, 0);
    atomic_init(&p->ticket, (uint64_t)TICKET_CLOSED);
    atomic_init(&p->done, 0);
    atomic_init(&p->generation, 0);
    atomic_init(&p->stop, 0);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        return lm_errf(err, "out of memory");
    }
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
            p->n_threads = i;
            lm_pool_free(p);
            return lm_errf(err, "cannot start worker thread %d", i);
        }
    }
    /* Every worker is running before the pool is used: a thread's start-up (the C
     * library's and sanitizers' own allocations) then never falls into a decode step. */
    pthread_mutex_lock(&p->mu);
    while (p->started < n_threads - 1) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    *out = p;
    return 0;
}

void lm_pool_free(lm_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p->threads);
    free(p);
}

int lm_pool_size(const lm_pool *p) { return p->n_threads; }

void lm_pool_run(lm_pool *p, int n_tasks, lm_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t);
        return;
    }
    uint32_t g = ++p->last_generation;
    if (g == 0 || g == TICKET_CLOSED) g = p->last_generation = 1; /* 0: never run; wraps after 4e9 jobs */
    /* Close the ticket before the fields change (late workers claim nothing). */
    atomic_store(&p->ticket, ((uint64_t)g << 32) | TICKET_CLOSED);
    atomic_store(&p->fn, fn);
    atomic_store(&p->ctx, ctx);
    atomic_store(&p->n_tasks, n_tasks);
    atomic_store(&p->done, 0);
    atomic_store(&p->ticket, (uint64_t)g << 32);
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->generation, g);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    work(p, g, fn, ctx, n_tasks);
    for (int spin = 0; spin < SPIN_ROUNDS && atomic_load(&p->done) < n_tasks; spin++) cpu_relax();
    if (atomic_load(&p->done) < n_tasks) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->done) < n_tasks) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

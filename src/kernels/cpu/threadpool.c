/* Fixed worker pool; see threadpool.h.
 *
 * Decode runs a pool job per matrix (about 30 per layer), each a few hundred
 * microseconds, so handing work over must cost far less than that: a worker that
 * finished a job spins briefly on the job counter before sleeping on the
 * condition variable, and the caller spins briefly for the last worker before
 * sleeping. Jobs that follow each other closely then never touch the kernel;
 * an idle pool sleeps after about SPIN_ROUNDS pauses and costs nothing.
 */
#include "kernels/cpu/threadpool.h"

#include "common/error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* ~0.1 ms of pause instructions on current x86 and ARM cores. */
#define SPIN_ROUNDS 4000

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
    /* Current job: written by the caller, then published by incrementing
     * generation (release); workers read it after seeing the new generation. */
    lm_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next_task;
    atomic_int generation;
    atomic_int pending; /* workers that have not finished the current job */
    atomic_int stop;
};

static void drain(lm_pool *p, lm_task_fn fn, void *ctx, int n_tasks) {
    for (;;) {
        int t = atomic_fetch_add(&p->next_task, 1);
        if (t >= n_tasks) break;
        fn(ctx, t);
    }
}

static void *worker_main(void *arg) {
    lm_pool *p = arg;
    int seen = 0;
    for (;;) {
        int g = atomic_load_explicit(&p->generation, memory_order_acquire);
        for (int spin = 0; g == seen && spin < SPIN_ROUNDS && !atomic_load(&p->stop); spin++) {
            cpu_relax();
            g = atomic_load_explicit(&p->generation, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while (!atomic_load(&p->stop) && (g = atomic_load(&p->generation)) == seen)
                pthread_cond_wait(&p->start_cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = g;
        drain(p, p->fn, p->ctx, p->n_tasks);
        if (atomic_fetch_sub(&p->pending, 1) == 1) {
            /* Last one out: wake the caller if it went to sleep (signalled under
             * the mutex, so a caller about to wait cannot miss it). */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
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
    atomic_init(&p->next_task, 0);
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
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
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next_task, 0);
    atomic_store(&p->pending, p->n_threads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    drain(p, fn, ctx, n_tasks);
    for (int spin = 0; spin < SPIN_ROUNDS && atomic_load(&p->pending) > 0; spin++) cpu_relax();
    if (atomic_load(&p->pending) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

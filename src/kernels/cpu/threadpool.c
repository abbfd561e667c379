#include "kernels/cpu/threadpool.h"

#include "common/error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct lm_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    /* Current job, published under mu with a new generation number. */
    lm_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next_task;
    int generation;
    int busy_workers;
    int stop;
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
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        lm_task_fn fn = p->fn;
        void *ctx = p->ctx;
        int n = p->n_tasks;
        pthread_mutex_unlock(&p->mu);
        drain(p, fn, ctx, n);
        pthread_mutex_lock(&p->mu);
        if (--p->busy_workers == 0) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
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
    p->stop = 1;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next_task, 0);
    p->busy_workers = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    drain(p, fn, ctx, n_tasks);
    pthread_mutex_lock(&p->mu);
    while (p->busy_workers > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

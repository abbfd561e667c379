/* A fixed pool of worker threads for data-parallel loops.
 *
 * Threads are created once; lm_pool_run hands out task indices [0, n_tasks)
 * through an atomic counter and the calling thread works too, so a pool of
 * size 1 runs everything inline. No allocation or thread creation per call.
 * One lm_pool_run at a time per pool (callers serialise).
 */
#ifndef LAZYMOE_THREADPOOL_H
#define LAZYMOE_THREADPOOL_H

typedef struct lm_pool lm_pool;
typedef void (*lm_task_fn)(void *ctx, int task);

int lm_pool_create(lm_pool **out, int n_threads, char *err);
void lm_pool_free(lm_pool *p);
int lm_pool_size(const lm_pool *p);
void lm_pool_run(lm_pool *p, int n_tasks, lm_task_fn fn, void *ctx);

#endif

/* Per-call-site op timing; see op_timing.h. */
#include "engine/op_timing.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int lm_op_timing;

#define SITES 256

typedef struct {
    const char *site;
    double s;
    long calls;
} site_time;
static site_time sites[SITES];
static int n_sites;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;

double lm_op_timing_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void print_sites(void) {
    pthread_mutex_lock(&mu);
    double total = 0;
    for (int i = 0; i < n_sites; i++) total += sites[i].s;
    fprintf(stderr, "op timing: %.3f s in %d call sites\n", total, n_sites);
    for (int done = 0; done < n_sites; done++) { /* largest first */
        int b = done;
        for (int i = done + 1; i < n_sites; i++)
            if (sites[i].s > sites[b].s) b = i;
        if (b != done) {
            site_time t = sites[b];
            sites[b] = sites[done];
            sites[done] = t;
        }
        fprintf(stderr, "op timing: %9.3f ms %5.1f%% %8ld calls %9.2f us each  %s\n", 1e3 * sites[done].s,
                total > 0 ? 100.0 * sites[done].s / total : 0.0, sites[done].calls,
                1e6 * sites[done].s / (double)sites[done].calls, sites[done].site);
    }
    pthread_mutex_unlock(&mu);
}

static void init_once(void) {
    const char *v = getenv("LAZYMOE_OP_TIMING");
    if (v && *v && strcmp(v, "0") != 0) {
        lm_op_timing = 1;
        atexit(print_sites);
    }
}

void lm_op_timing_init(void) { pthread_once(&once, init_once); }

void lm_op_timing_add(const char *site, double t0) {
    double dt = lm_op_timing_now() - t0;
    pthread_mutex_lock(&mu);
    int k = 0;
    while (k < n_sites && sites[k].site != site && strcmp(sites[k].site, site) != 0) k++;
    if (k == n_sites && n_sites < SITES) {
        sites[k].site = site;
        sites[k].s = 0;
        sites[k].calls = 0;
        n_sites++;
    }
    if (k < n_sites) {
        sites[k].s += dt;
        sites[k].calls++;
    }
    pthread_mutex_unlock(&mu);
}

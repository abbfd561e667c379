/* The split of a step's misses between the CPU and the upload (miss_split.h). */
#include "experts/miss_split.h"

#include <stdlib.h>
#include <string.h>

static double expert_seconds(const lm_miss_costs *c, int rows) {
    return c->cpu_expert + (double)(rows > 1 ? rows - 1 : 0) * c->cpu_row;
}

double lm_miss_cpu_seconds(const lm_miss_costs *c, const int *rows, int n) {
    if (n <= 0) return 0;
    double t = c->cpu_fixed;
    for (int i = 0; i < n; i++) t += expert_seconds(c, rows[i]);
    return t;
}

int lm_miss_split(const lm_miss_costs *c, const int *rows, int n, int max_cpu_rows, uint8_t *on_cpu, int *order) {
    /* fewest rows first; a stable insertion sort keeps the callers' order among equals
     * (n is at most a layer's experts) */
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && rows[order[j - 1]] > rows[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    memset(on_cpu, 0, (size_t)(n > 0 ? n : 0));
    double best = (double)n * c->upload, cpu = c->cpu_fixed;
    int best_k = 0, taken_rows = 0;
    for (int k = 1; k <= n; k++) {
        int r = rows[order[k - 1]];
        taken_rows += r;
        if (taken_rows > max_cpu_rows) break;
        cpu += expert_seconds(c, r);
        if (cpu >= best) break; /* the CPU side only grows from here */
        double up = (double)(n - k) * c->upload, t = cpu > up ? cpu : up;
        if (t < best) {
            best = t;
            best_k = k;
        }
    }
    for (int k = 0; k < best_k; k++) on_cpu[order[k]] = 1;
    return best_k;
}

int lm_miss_costs_parse(const char *text, lm_miss_costs *c) {
    double v[4];
    const char *p = text;
    for (int i = 0; i < 4; i++) {
        char *end = NULL;
        v[i] = strtod(p, &end);
        if (end == p || !(v[i] >= 0 && v[i] < 1e9)) return -1;
        if (*end != (i < 3 ? ',' : '\0')) return -1;
        p = end + 1;
    }
    c->upload = v[0] * 1e-6;
    c->cpu_fixed = v[1] * 1e-6;
    c->cpu_expert = v[2] * 1e-6;
    c->cpu_row = v[3] * 1e-6;
    return 0;
}

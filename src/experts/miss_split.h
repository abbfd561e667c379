/* Where a step's missed experts are computed when a device run has two ways
 * (--cpu-experts auto; issue 18): uploaded into device slots over the bus and then
 * computed by the device, or computed by the CPU from resident host memory while
 * the device works. The two ways run at once -- the uploads on the device's copy
 * queue, the CPU on its own threads -- so a layer's misses cost about the longer of
 * the two, and the best split balances them:
 *
 *   CPU side     cpu_fixed + sum over its experts of (cpu_expert + (rows - 1) cpu_row)
 *   upload side  (misses it takes) x upload
 *
 * cpu_fixed is the round trip the CPU's share adds to a layer (its tokens' rows down
 * to the host, the outputs back up); cpu_expert is one expert's weights through the
 * CPU for one row (memory-bound), cpu_row each further row (compute-bound). The CPU
 * takes the experts with the fewest rows first: they cost it least, while an upload
 * costs the same whatever the rows. Ties go to the upload, which also teaches the
 * device cache (a computed-on-the-CPU expert leaves the cache as it was).
 *
 * Pure arithmetic: the engine measures the costs (experts/miss_split.c has none of
 * the timing) and asks per step; tests/test_policy.c works examples by hand. */
#ifndef LAZYMOE_MISS_SPLIT_H
#define LAZYMOE_MISS_SPLIT_H

#include <stdint.h>

typedef struct {
    double upload;     /* seconds to upload one expert */
    double cpu_fixed;  /* seconds a layer's CPU share adds whatever its size */
    double cpu_expert; /* seconds of one expert on the CPU for one row */
    double cpu_row;    /* seconds of each further row of an expert on the CPU */
} lm_miss_costs;

/* Seconds of the CPU's share: its experts' rows[0..n). */
double lm_miss_cpu_seconds(const lm_miss_costs *c, const int *rows, int n);

/* Splits misses 0..n-1 (expert i with rows[i] >= 1 rows) between the CPU
 * (on_cpu[i] = 1) and the upload (0), taking at most max_cpu_rows rows to the CPU,
 * for the shortest max(CPU side, upload side) -- the fewest experts to the CPU among
 * equal ones. order: scratch of n ints. Returns the count on the CPU. */
int lm_miss_split(const lm_miss_costs *c, const int *rows, int n, int max_cpu_rows, uint8_t *on_cpu, int *order);

/* Reads LAZYMOE_MISS_COSTS-style text "upload,cpu_fixed,cpu_expert,cpu_row" in
 * microseconds (each >= 0) into *c. 0 = read, -1 = malformed. */
int lm_miss_costs_parse(const char *text, lm_miss_costs *c);

#endif

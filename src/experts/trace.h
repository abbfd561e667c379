/* Routing traces: the experts each token chose in each layer.
 *
 * Text format, one line per token after a header:
 *   lazymoe-routing-trace v1 layers=48 experts=128 top_k=8
 *   3 17 41 90 101 5 66 8|12 7 ...|...      (one group per layer, '|' between
 *                                           layers; dense layers give an empty group)
 * `lazymoe run --trace-routing FILE` records one; `lazymoe bench --routing-trace FILE`
 * replays one in place of the router's picks, so cache policies can be compared on
 * recorded (realistic) or synthetic (worst-case) routing.
 */
#ifndef LAZYMOE_TRACE_H
#define LAZYMOE_TRACE_H

#include <stdint.h>
#include <stdio.h>

typedef struct lm_trace lm_trace;

/* Recording. */
int lm_trace_create(lm_trace **out, const char *path, int n_layers, int n_experts, int top_k, char *err);
/* Stores the picks sel[T][K] of one layer for the current chunk. */
void lm_trace_record(lm_trace *t, int layer, const int32_t *sel, int T, int K);
/* Writes the current chunk's T tokens. */
int lm_trace_end_chunk(lm_trace *t, int T, char *err);
/* Closes the file (returns -1 if a write failed). */
int lm_trace_close(lm_trace *t, char *err);

/* Replay: loads a whole trace; picks for (token index modulo length, layer). */
typedef struct {
    int n_layers, n_experts, top_k;
    int n_tokens;
    int32_t *ids; /* [n_tokens][n_layers][top_k], -1 for dense layers */
} lm_trace_data;

int lm_trace_load(lm_trace_data *d, const char *path, char *err);
void lm_trace_data_free(lm_trace_data *d);

/* Routing statistics over tokens [skip, end), averaged over MoE layers (end < 0 or past
 * the trace: its last token). */
typedef struct {
    int tokens;
    double distinct_experts, consecutive_reuse, top16_share;
} lm_routing_stats;

int lm_trace_stats(const lm_trace_data *d, int skip, int end, lm_routing_stats *out, char *err);

#endif

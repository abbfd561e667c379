/* Per-layer gate for router lookahead reads: see lookahead_gate.h. */
#include "experts/lookahead_gate.h"

#include "common/error.h"

#include <stdlib.h>

int lm_lookahead_gate_init(lm_lookahead_gate *g, int n_layers, double threshold, char *err) {
    g->threshold = threshold;
    g->n_layers = n_layers;
    g->read = calloc((size_t)(n_layers > 0 ? n_layers : 1), sizeof *g->read);
    g->used = calloc((size_t)(n_layers > 0 ? n_layers : 1), sizeof *g->used);
    if (!g->read || !g->used) {
        lm_lookahead_gate_free(g);
        return lm_errf(err, "out of memory for the lookahead gate");
    }
    return 0;
}

void lm_lookahead_gate_free(lm_lookahead_gate *g) {
    free(g->read);
    free(g->used);
    g->read = g->used = NULL;
}

int lm_lookahead_gate_open(const lm_lookahead_gate *g, int l) {
    if (g->threshold <= 0) return 1;
    return g->read[l] >= LM_LOOKAHEAD_GATE_EVIDENCE && g->used[l] >= g->threshold * g->read[l];
}

void lm_lookahead_gate_observe(lm_lookahead_gate *g, int l, int reads, int used) {
    if (reads <= 0) return;
    g->read[l] = g->read[l] * LM_LOOKAHEAD_GATE_DECAY + reads;
    g->used[l] = g->used[l] * LM_LOOKAHEAD_GATE_DECAY + used;
}

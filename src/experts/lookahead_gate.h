/* Router lookahead, gated per layer by how often its reads get used.
 *
 * A lookahead read pays when the layer then routes to the expert it read (a miss
 * turned into a hit that was read while earlier layers computed) and costs a whole
 * expert read when it does not. How well the router lookahead predicts depends on the
 * model and on where it is made: on the project's 48-layer routing model, layer L's
 * router on layer L's input (where the engine predicts) finds 63-96% of the layer's
 * picks, but on the residual one sublayer earlier 80% of layer 1's and 16-18% of the
 * last layers' (bench/RESULTS.md, issue 20). So each
 * layer keeps a decayed count of the reads its lookahead issued (or, while the gate is
 * closed, would have issued: predicted experts that were not cached) and of those the
 * layer then used; the gate lets a layer's reads through only while that share is at
 * least the threshold. A closed layer keeps measuring, so a layer whose predictions
 * improve opens again. Pure arithmetic, no I/O: the cache and the replay share it.
 */
#ifndef LAZYMOE_LOOKAHEAD_GATE_H
#define LAZYMOE_LOOKAHEAD_GATE_H

typedef struct {
    double threshold; /* share of reads used needed to open; <= 0: always open */
    int n_layers;
    double *read, *used; /* [n_layers] decayed counts */
} lm_lookahead_gate;

/* Each observation multiplies the earlier counts by this: about the last 32 steps count. */
#define LM_LOOKAHEAD_GATE_DECAY (31.0 / 32.0)
/* Reads (decayed) a layer must have seen before its share is trusted; until then it is
 * closed and measures. */
#define LM_LOOKAHEAD_GATE_EVIDENCE 8.0

int lm_lookahead_gate_init(lm_lookahead_gate *g, int n_layers, double threshold, char *err);
void lm_lookahead_gate_free(lm_lookahead_gate *g);
/* Whether layer l's lookahead reads should be issued now. */
int lm_lookahead_gate_open(const lm_lookahead_gate *g, int l);
/* One step of layer l: `reads` experts were (or would have been) read ahead for it,
 * `used` of them were routed to. Steps with nothing to read leave the counts alone. */
void lm_lookahead_gate_observe(lm_lookahead_gate *g, int l, int reads, int used);

#endif

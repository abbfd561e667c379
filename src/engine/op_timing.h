/* LAZYMOE_OP_TIMING=1: the wall time of every backend operation the forward pass
 * issues, summed per call site (the call's text names it: q/k/v, o, the router and
 * the experts' products are told apart) and printed to stderr at exit, largest first.
 * On the CPU backend an op's wall time is its compute time (every op returns when it
 * is done), so this is where a decode step's time goes at a given thread count; on a
 * device backend it is the host's time only (LAZYMOE_CUDA_TIMING has the kernels').
 * Off, it costs one test of a global per op. */
#ifndef LAZYMOE_ENGINE_OP_TIMING_H
#define LAZYMOE_ENGINE_OP_TIMING_H

extern int lm_op_timing; /* set once by lm_op_timing_init */

/* Reads LAZYMOE_OP_TIMING (first call only); registers the exit print when set. */
void lm_op_timing_init(void);
double lm_op_timing_now(void);
/* Adds now - t0 to `site` (a string literal: compared by address, then by text). */
void lm_op_timing_add(const char *site, double t0);

#endif

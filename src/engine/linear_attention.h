/* Gated DeltaNet linear attention (qwen3_next) and its per-session state.
 *
 * A linear-attention layer keeps, instead of a KV cache, two states per session:
 * the last K-1 inputs of its causal depthwise convolution and, per value head, a
 * dv x dk matrix updated by the gated delta rule. Neither can be cut back to an
 * earlier position the way a KV cache is trimmed, so prefix reuse works from
 * snapshots: copies of every layer's states taken at requested positions while the
 * forward pass runs. A session can return to a snapshot position, to position 0, or
 * stay where it is; any other truncation re-evaluates from the nearest of those
 * (engine.c).
 */
#ifndef LAZYMOE_LINEAR_ATTENTION_H
#define LAZYMOE_LINEAR_ATTENTION_H

#include "kernels/backend.h"
#include "models/config.h"

#include <stdint.h>

struct lazymoe_session;
typedef struct lm_linear_state lm_linear_state;

/* Snapshots a session keeps (the newest positions win). */
#define LM_LINEAR_SNAPSHOTS 2
/* Tokens per chunk of the chunked delta rule during prefill (transformers' default). */
#define LM_LINEAR_CHUNK 64

/* Bytes of the states, snapshots and scratch of one session evaluating up to
 * cap_tokens tokens per forward chunk (0 for families without linear attention):
 * the sum of the table lm_linear_create allocates from. */
uint64_t lm_linear_bytes(const lm_config *c, int cap_tokens);

/* The arrays are backend buffers of `be` (read and written on the host: the
 * recurrence has no backend operation yet, so only a host-memory backend runs it). */
int lm_linear_create(lm_linear_state **out, lm_backend *be, const lm_config *c, int cap_tokens, char *err);
void lm_linear_free(lm_linear_state *st);
/* Bytes the state holds (0 for NULL). */
uint64_t lm_linear_held_bytes(const lm_linear_state *st);

/* Runs linear-attention layer l over the session's chunk: reads s->s.h [T][H],
 * writes s->s.proj [T][H], advances the layer's states. */
int lm_linear_block(struct lazymoe_session *s, int l, int T, char *err);

/* Called by lm_forward after every layer ran on tokens [n_past, n_past + T): completes
 * a snapshot requested inside that range. */
void lm_linear_end_chunk(lm_linear_state *st, int n_past, int T);

/* Asks for a snapshot of the states after `pos` tokens (>= n_past, the session's
 * position), taken when a later forward pass reaches that position, or now if the
 * session is there already. One request at a time; a newer one replaces it. */
void lm_linear_request_snapshot(lm_linear_state *st, int n_past, int pos);

/* The largest position <= want the states can return to without computing: a
 * snapshot, the current position n_past, or 0. */
int lm_linear_restorable(const lm_linear_state *st, int n_past, int want);

/* Puts the states at position pos, which lm_linear_restorable(st, n_past, ...)
 * returned; forgets snapshots beyond it (they may belong to another continuation) and
 * any pending request. */
void lm_linear_restore(lm_linear_state *st, int n_past, int pos);

/* Tests: prefill chunk length (1..LM_LINEAR_CHUNK; the chunked form is used for any
 * range longer than one token) and whether prefill uses the recurrent form instead. */
void lm_linear_set_chunk(lm_linear_state *st, int chunk, int recurrent_only);

#endif

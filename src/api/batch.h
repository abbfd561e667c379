/* Generations that decode together (lazymoe_batch, include/lazymoe.h): the turn and
 * the meeting point that lazymoe_generate_stream uses when params->batch is set.
 *
 * Design. Each generation runs in its own thread on its own session. One thread at
 * a time uses the model ("the turn"): a batch step, a prompt chunk, a truncation, or
 * a caller's lazymoe_batch_lock section. Generations in their decode phase are the
 * batch's members; a member that needs its next token's logits posts the token and
 * waits. When every member has posted and nobody holds the turn, the last one to
 * arrive (or any waiting member that sees it) takes the turn and runs all posted
 * tokens as one step (lm_session_eval_batch). A thread that wants the turn for a
 * prompt chunk yields to a step that is ready, so a long prompt is evaluated in
 * chunks between the members' steps instead of stalling them for its whole length;
 * and since the members are busy sampling right after a step, the chunk goes next.
 */
#ifndef LAZYMOE_API_BATCH_H
#define LAZYMOE_API_BATCH_H

#include "lazymoe.h"

#include <stdint.h>

/* Waits for the turn (after any ready step), then holds it. */
void lm_batch_turn_begin(lazymoe_batch *b);
void lm_batch_turn_end(lazymoe_batch *b);
/* A generation enters / leaves its decode phase. */
void lm_batch_join(lazymoe_batch *b);
void lm_batch_leave(lazymoe_batch *b);
/* A member's decode step: appends id to s and writes its logits [vocab]; returns when
 * the step that carried it has run (with that step's error, if any). */
int lm_batch_decode(lazymoe_batch *b, lazymoe_session *s, int32_t id, float *logits, char *err);

#endif

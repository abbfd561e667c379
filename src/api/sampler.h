/* Token sampling over one row of logits (see lazymoe_sampling in lazymoe.h for the
 * semantics and the order of the steps).
 *
 * A sampler is sized for a vocabulary once; sampling then allocates nothing: the
 * penalty counts, the candidate list and the heap live in buffers made at init.
 * Logits are only read; penalties are applied to the sampler's own copy.
 *
 * History: lm_sampler_note_context marks tokens of the context (repetition penalty
 * only); lm_sampler_note_generated marks a generated token (all penalties). Both
 * are forgotten by lm_sampler_reset.
 */
#ifndef LAZYMOE_SAMPLER_H
#define LAZYMOE_SAMPLER_H

#include "lazymoe.h"

#include <stdint.h>

typedef struct {
    lazymoe_sampling p;
    int vocab;
    uint64_t rng;        /* splitmix64 state, from p.seed */
    float *work;         /* [vocab] penalised logits */
    uint8_t *seen;       /* [vocab] 1 if in the context or generated */
    uint32_t *count;     /* [vocab] times generated */
    int32_t *touched;    /* [vocab] ids with seen or count set, n_touched of them */
    int n_touched;
    int32_t *cand;       /* [vocab] candidate ids, most likely first when filters are on */
    int32_t *heap;       /* [vocab] max-heap of finite ids while ranking */
    double *weight;      /* [vocab] exp((logit - max) / T) of cand[i] */
    int n_cand;
} lm_sampler;

/* Validates p (temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1, top_k >= 0,
 * repetition_penalty > 0, all finite) and allocates the buffers. */
int lm_sampler_init(lm_sampler *s, int vocab, const lazymoe_sampling *p, char *err);
void lm_sampler_free(lm_sampler *s);
/* Forgets the history and restarts the RNG from the seed. */
void lm_sampler_reset(lm_sampler *s);
void lm_sampler_note_context(lm_sampler *s, const int32_t *ids, int n);
void lm_sampler_note_generated(lm_sampler *s, int32_t id);

/* Picks the next token; -1 if no logit is finite (NaN counts as -inf). */
int32_t lm_sampler_sample(lm_sampler *s, const float *logits);

/* 1 when, for logits that are all finite, lm_sampler_sample with these (validated)
 * settings returns the first largest logit's index and draws no random number, so
 * that a caller may take that index without the sampler (lazymoe_session_eval_greedy):
 * no penalty, and temperature 0 or top_k 1. */
int lm_sampler_is_greedy(const lazymoe_sampling *p);

/* The distribution lm_sampler_sample draws from: probs[vocab], zero for filtered
 * tokens (one-hot at temperature 0). Returns the number of tokens kept (0 if no
 * logit is finite, probs then all zero). For tests and for reporting. */
int lm_sampler_probs(lm_sampler *s, const float *logits, float *probs);

/* Uniform double in [0, 1) from a splitmix64 state. */
double lm_rng_uniform(uint64_t *state);

#endif

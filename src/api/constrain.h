/* Constrained decoding in the generation loop (see constrain.c). One per generation:
 * init (NULL grammar: inactive, every call a no-op is the caller's choice), then per
 * step mask the logits, sample, accept the token; free at the end. */
#ifndef LAZYMOE_API_CONSTRAIN_H
#define LAZYMOE_API_CONSTRAIN_H

#include "lazymoe.h"
#include "text/grammar.h"
#include "text/tokenizer.h"

#include <stdint.h>

typedef struct {
    lm_gmatch *match;              /* NULL: no constraint */
    const lm_token_trie *trie;     /* the model's (borrowed) */
    const struct lm_model_text *text;
    const lm_tokenizer *tok;
    uint8_t *allowed;              /* [vocab] */
    int vocab;
} lm_constraint;

/* Builds the model's token trie on first use (once per model). */
int lm_constraint_init(lm_constraint *c, lazymoe_model *m, const lazymoe_grammar *g, char *err);
void lm_constraint_free(lm_constraint *c);
/* Sets logits of tokens that cannot come next to -inf (end-of-sequence ids: allowed
 * only when the grammar is complete). budget: tokens that may follow this one (< 0:
 * unlimited); tokens after which the shortest ending would not fit are masked too, so
 * an answer cut by max_tokens is still a whole sentence. */
int lm_constraint_mask(lm_constraint *c, float *logits, long budget, char *err);
/* Advances past a sampled (non end-of-sequence) token. */
int lm_constraint_accept(lm_constraint *c, int32_t id, char *err);

#endif

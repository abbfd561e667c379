/* The text side of a loaded model: tokenizer, chat template, generation defaults,
 * end-of-sequence ids. Loaded beside the weights by lazymoe_model_open; a model
 * without tokenizer.json still opens (ids only), and the text functions then
 * report why there is no tokenizer.
 *
 * Ownership: owned by the model; immutable after loading except the tokenizer's
 * word cache, which `lock` serializes (encode is the only writer).
 */
#ifndef LAZYMOE_API_TEXT_H
#define LAZYMOE_API_TEXT_H

#include "common/error.h"
#include "lazymoe.h"
#include "models/config.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

#include <pthread.h>

#define LM_TEXT_MAX_EOS 16

typedef struct lm_model_text {
    lm_tokenizer *tok;        /* NULL: tok_err says why */
    char tok_err[LM_ERR_LEN];
    lm_chat_template *tmpl;   /* NULL: tmpl_err says why */
    char tmpl_err[LM_ERR_LEN];
    pthread_mutex_t lock;     /* serializes lm_tokenizer_encode */
    lazymoe_sampling defaults; /* from generation_config.json */
    struct lm_token_trie *trie; /* token bytes for grammar masks; built on first use under lock */
    int n_eos;                /* config's (generation_config's when it has them) + tokenizer's eos */
    int32_t eos[LM_TEXT_MAX_EOS];
} lm_model_text;

/* Fails only for a generation_config.json that is present but not JSON, or out of memory. */
int lm_model_text_load(lm_model_text **out, const char *dir, const lm_config *cfg, char *err);
void lm_model_text_free(lm_model_text *t);

/* Parses generation_config.json text into sampling defaults (tests use this). */
int lm_generation_defaults_parse(const char *json_text, lazymoe_sampling *p, char *err);

int lm_model_text_is_eos(const lm_model_text *t, int32_t id);

#endif

/* Constrained decoding in the generation loop: the public grammar constructors, the
 * per-model token trie, and the mask applied to the logits before each draw.
 *
 * Token bytes are what the streaming detokenizer emits for a token in the middle of
 * an answer: special tokens (end-of-sequence, <|im_end|>) have none and are never
 * allowed by the mask; end-of-sequence ids are re-admitted only when the grammar is
 * complete. A token's bytes are taken as decode([ref, id]) minus decode([ref]) so that
 * decoders which strip a leading space from the first token (SentencePiece) do not
 * change them; ref is the id of "a" when the vocabulary has one, else plain decode.
 */
#include "api/constrain.h"

#include "engine/engine.h"
#include "api/text.h"
#include "platform/platform.h"
#include "text/json_schema.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lazymoe_grammar_parse(const char *text, lazymoe_grammar **out, char *err, size_t errlen) {
    char e[LM_ERR_LEN];
    *out = NULL;
    if (!text) text = "";
    if (lm_grammar_parse(text, strlen(text), out, e) == 0) return 0;
    if (err && errlen) snprintf(err, errlen, "%s", e);
    return -1;
}

int lazymoe_grammar_from_json_schema(const char *schema_json, lazymoe_grammar **out, char *err, size_t errlen) {
    char e[LM_ERR_LEN];
    json_error_t je;
    *out = NULL;
    json_t *s = json_loads(schema_json ? schema_json : "", JSON_DECODE_ANY, &je);
    int rc = -1;
    if (!s) lm_errf(e, "schema: invalid JSON: %s", je.text);
    else rc = lm_json_schema_grammar(s, "schema", out, e);
    json_decref(s);
    if (rc && err && errlen) snprintf(err, errlen, "%s", e);
    return rc;
}

void lazymoe_grammar_free(lazymoe_grammar *g) { lm_grammar_free(g); }

/* Bytes of one token as it appears inside generated text (see the top comment). */
static int token_bytes(const lm_tokenizer *tok, int32_t ref, const char *ref_bytes, size_t ref_len, int32_t id,
                       char **out, size_t *len, char *e) {
    if (ref >= 0) {
        int32_t pair[2] = {ref, id};
        if (lm_tokenizer_decode(tok, pair, 2, LM_DECODE_SKIP_SPECIAL, out, len, e)) return -1;
        if (*len >= ref_len && !memcmp(*out, ref_bytes, ref_len)) {
            memmove(*out, *out + ref_len, *len - ref_len + 1);
            *len -= ref_len;
            return 0;
        }
        free(*out);
    }
    return lm_tokenizer_decode(tok, &id, 1, LM_DECODE_SKIP_SPECIAL, out, len, e);
}

static int build_trie(const lm_tokenizer *tok, int vocab, lm_token_trie **out, char *e) {
    char **bytes = calloc((size_t)vocab, sizeof *bytes);
    size_t *lens = calloc((size_t)vocab, sizeof *lens);
    char *ref_bytes = NULL;
    size_t ref_len = 0;
    int rc = -1;
    if (!bytes || !lens) {
        lm_errf(e, "out of memory for the token trie");
        goto done;
    }
    int32_t ref = lm_tokenizer_token_to_id(tok, "a", 1);
    if (ref >= 0 && lm_tokenizer_decode(tok, &ref, 1, LM_DECODE_SKIP_SPECIAL, &ref_bytes, &ref_len, e)) goto done;
    int n_tok = (int)lm_tokenizer_n_vocab(tok);
    for (int id = 0; id < vocab && id < n_tok; id++)
        if (token_bytes(tok, ref, ref_bytes, ref_len, id, &bytes[id], &lens[id], e)) goto done;
    rc = lm_token_trie_new((const char *const *)bytes, lens, vocab, out, e);
done:
    if (bytes)
        for (int i = 0; i < vocab; i++) free(bytes[i]);
    free(bytes);
    free(lens);
    free(ref_bytes);
    return rc;
}

int lm_constraint_init(lm_constraint *c, lazymoe_model *m, const lazymoe_grammar *g, char *e) {
    memset(c, 0, sizeof *c);
    if (!g) return 0;
    lm_model_text *t = m->text;
    if (!t || !t->tok) return lm_errf(e, "constrained decoding needs the model's tokenizer");
    int vocab = m->w.cfg.vocab_size;
    pthread_mutex_lock(&t->lock);
    int rc = t->trie ? 0 : build_trie(t->tok, vocab, &t->trie, e);
    pthread_mutex_unlock(&t->lock);
    if (rc) return -1;
    c->trie = t->trie;
    c->vocab = vocab;
    if (!(c->allowed = lm_malloc((size_t)vocab, "grammar mask", e))) return -1;
    if (lm_gmatch_new(g, &c->match, e)) {
        lm_constraint_free(c);
        return -1;
    }
    c->tok = t->tok;
    c->text = t;
    return 0;
}

void lm_constraint_free(lm_constraint *c) {
    lm_gmatch_free(c->match);
    free(c->allowed);
    memset(c, 0, sizeof *c);
}

int lm_constraint_mask(lm_constraint *c, float *logits, long budget, char *e) {
    float eos_logit[LM_TEXT_MAX_EOS];
    const lm_model_text *t = c->text;
    for (int i = 0; i < t->n_eos; i++)
        eos_logit[i] = t->eos[i] >= 0 && t->eos[i] < c->vocab ? logits[t->eos[i]] : -INFINITY;
    int n = lm_gmatch_mask(c->match, c->trie, budget, c->allowed, e);
    int complete = lm_gmatch_complete(c->match), any_eos = 0;
    /* too few tokens left even for the shortest ending: the answer will be cut off
     * (finish "length"); until then, any continuation */
    if (n == 0 && !complete && budget >= 0) n = lm_gmatch_mask(c->match, c->trie, -1, c->allowed, e);
    if (n < 0) return -1;
    for (int i = 0; i < c->vocab; i++)
        if (!c->allowed[i]) logits[i] = -INFINITY;
    for (int i = 0; i < t->n_eos; i++) {
        int32_t id = t->eos[i];
        if (id < 0 || id >= c->vocab) continue;
        logits[id] = complete ? eos_logit[i] : -INFINITY;
        if (complete) {
            /* the model may rate every allowed end-of-sequence id -inf: the grammar
             * still ends the answer here, so keep one finite */
            if (!(logits[id] > -INFINITY) && !n && !any_eos) logits[id] = 0;
            any_eos = 1;
        }
    }
    if (!n && !any_eos)
        return lm_errf(e, "the grammar allows no token here and the model has no end-of-sequence token");
    return 0;
}

int lm_constraint_accept(lm_constraint *c, int32_t id, char *e) {
    size_t len;
    const char *b = lm_token_trie_bytes(c->trie, id, &len);
    int r = lm_gmatch_accept(c->match, b, len, e);
    if (r < 0) return -1;
    if (r == 0) return lm_errf(e, "internal error: the sampled token %d does not continue the grammar", (int)id);
    return 0;
}

/* Tokenizer, chat template and generation defaults of a model directory (text.h). */
#include "api/text.h"
#include "text/grammar.h"
#include "text/tokenizer_gguf.h"

#include "platform/platform.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int number(json_t *o, const char *key, double *v) {
    json_t *x = json_object_get(o, key);
    if (!json_is_number(x)) return 0;
    *v = json_number_value(x);
    return 1;
}

static int parse_defaults(json_t *g, lazymoe_sampling *p, char *err) {
    lazymoe_sampling_init(p, NULL);
    if (!json_is_object(g)) return lm_errf(err, "generation_config.json is not a JSON object");
    double v;
    /* Values outside the valid range are ignored, keeping the neutral default. */
    if (number(g, "temperature", &v) && v >= 0 && v < 1e6) p->temperature = (float)v;
    if (number(g, "top_k", &v) && v >= 0 && v < 1e9) p->top_k = (int)v;
    if (number(g, "top_p", &v) && v > 0 && v <= 1) p->top_p = (float)v;
    if (number(g, "min_p", &v) && v >= 0 && v <= 1) p->min_p = (float)v;
    if (number(g, "repetition_penalty", &v) && v > 0 && v < 1e6) p->repetition_penalty = (float)v;
    json_t *ds = json_object_get(g, "do_sample");
    if (json_is_false(ds)) p->temperature = 0;
    return 0;
}

int lm_generation_defaults_parse(const char *json_text, lazymoe_sampling *p, char *err) {
    json_error_t je;
    json_t *g = json_loads(json_text, 0, &je);
    if (!g) return lm_errf(err, "generation_config.json: %s (line %d)", je.text, je.line);
    int rc = parse_defaults(g, p, err);
    json_decref(g);
    return rc;
}

static void add_eos(lm_model_text *t, int32_t id) {
    if (id < 0 || lm_model_text_is_eos(t, id) || t->n_eos == LM_TEXT_MAX_EOS) return;
    t->eos[t->n_eos++] = id;
}

int lm_model_text_is_eos(const lm_model_text *t, int32_t id) {
    for (int i = 0; i < t->n_eos; i++)
        if (t->eos[i] == id) return 1;
    return 0;
}

/* A GGUF file carries its tokenizer and chat template in its metadata
 * (text/tokenizer_gguf.h); a file without them still runs on token ids. */
static int load_gguf_text(lm_model_text *t, lm_model_text **out, const char *path, const lm_config *cfg, char *err) {
    gguf_archive *g = NULL;
    if (gguf_open(&g, path, err) != 0) {
        lm_model_text_free(t);
        return -1;
    }
    for (int i = 0; i < cfg->n_eos; i++) add_eos(t, cfg->eos_ids[i]);
    json_t *tj = NULL, *cj = NULL;
    if (lm_gguf_tokenizer_json(g, &tj, &cj, t->tok_err) != 0) {
        lm_err_prefix(t->tok_err, "%s", path);
        snprintf(t->tmpl_err, sizeof t->tmpl_err, "%s", t->tok_err);
    } else {
        if (lm_tokenizer_load_json(tj, cj, &t->tok, t->tok_err) != 0) t->tok = NULL;
        else add_eos(t, lm_tokenizer_eos_id(t->tok));
        json_t *ct = json_object_get(cj, "chat_template");
        if (!json_is_string(ct))
            snprintf(t->tmpl_err, sizeof t->tmpl_err, "%s: no chat template (tokenizer.chat_template)", path);
        else if (lm_chat_template_from_source(json_string_value(ct), json_string_length(ct), cj, &t->tmpl,
                                              t->tmpl_err) != 0)
            t->tmpl = NULL;
    }
    json_decref(tj);
    json_decref(cj);
    gguf_close(g);
    *out = t;
    return 0;
}

int lm_model_text_load(lm_model_text **out, const char *dir, const lm_config *cfg, char *err) {
    *out = NULL;
    lm_model_text *t = calloc(1, sizeof *t);
    if (!t) return lm_errf(err, "out of memory");
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        return lm_errf(err, "cannot create a mutex");
    }
    char path[4096];
    lazymoe_sampling_init(&t->defaults, NULL);
    if (gguf_is_path(dir)) return load_gguf_text(t, out, dir, cfg, err);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (file_exists(path)) {
        json_error_t je;
        json_t *g = NULL;
        int rc;
        if (lm_refuse_special_file(path, err)) rc = -1;
        else if (!(g = json_load_file(path, 0, &je))) rc = lm_errf(err, "%s: %s", path, je.text);
        else rc = parse_defaults(g, &t->defaults, err);
        json_decref(g);
        if (rc != 0) {
            lm_model_text_free(t);
            return -1;
        }
    }
    for (int i = 0; i < cfg->n_eos; i++) add_eos(t, cfg->eos_ids[i]);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (!file_exists(path)) {
        snprintf(t->tok_err, sizeof t->tok_err, "%s has no tokenizer.json: text needs one (token ids work)", dir);
    } else if (lm_tokenizer_load(dir, &t->tok, t->tok_err) != 0) {
        t->tok = NULL;
    } else {
        add_eos(t, lm_tokenizer_eos_id(t->tok));
    }
    if (lm_chat_template_load(dir, &t->tmpl, t->tmpl_err) != 0) t->tmpl = NULL;
    *out = t;
    return 0;
}

void lm_model_text_free(lm_model_text *t) {
    if (!t) return;
    lm_tokenizer_free(t->tok);
    lm_chat_template_free(t->tmpl);
    lm_token_trie_free(t->trie);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

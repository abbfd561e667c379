/* Chat template loading and context building; see chat_template.h. */
#include "text/chat_template.h"

#include "common/buf.h"
#include "common/error.h"
#include "platform/platform.h"
#include "text/tokenizer_gguf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAMED 8

struct lm_chat_template {
    lm_jinja_template *def;             /* the default template (may be NULL if only named) */
    lm_jinja_template *tool_use;        /* "tool_use" from a named list, or NULL */
    json_t *special_tokens;             /* object: name -> string */
};

static const char *const SPECIAL_TOKENS[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};

/* Reads a whole file; NULL with *missing set when it does not exist. */
static char *read_file(const char *path, size_t *len, bool *missing, char *err) {
    *missing = false;
    if (lm_refuse_special_file(path, err)) return NULL;
    FILE *f = fopen(path, "rb");
    *missing = !f && errno == ENOENT;
    if (!f) {
        if (!*missing) lm_errf(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    lm_strbuf b = {0};
    int rc = lm_strbuf_read_stream(&b, f, (size_t)64 << 20);
    fclose(f);
    if (rc != LM_READ_OK) {
        lm_strbuf_free(&b);
        if (rc == LM_READ_TOO_LONG) lm_errf(err, "%s: file too large", path);
        else if (rc == LM_READ_ERROR) lm_errf(err, "%s: read error", path);
        else lm_errf(err, "out of memory");
        return NULL;
    }
    *len = b.len;
    return b.data;
}

static json_t *special_tokens_of(const json_t *config) {
    json_t *out = json_object();
    if (!out || !config) return out;
    for (size_t i = 0; i < sizeof SPECIAL_TOKENS / sizeof SPECIAL_TOKENS[0]; i++) {
        json_t *v = json_object_get(config, SPECIAL_TOKENS[i]);
        if (json_is_object(v)) v = json_object_get(v, "content");  /* AddedToken */
        if (json_is_string(v)) json_object_set(out, SPECIAL_TOKENS[i], v);
    }
    return out;
}

static int parse_one(const char *src, size_t len, lm_jinja_template **out, const char *what, char *err) {
    if (lm_jinja_parse(src, len, out, err)) return lm_err_prefix(err, "%s", what);
    return 0;
}

/* Parses the template(s) named by a tokenizer_config `chat_template` value. */
static int parse_config_template(lm_chat_template *t, const json_t *ct, char *err) {
    if (json_is_string(ct))
        return parse_one(json_string_value(ct), json_string_length(ct), &t->def, "chat_template", err);
    if (!json_is_array(ct)) return lm_errf(err, "chat_template must be a string or a list of {name, template}");
    size_t i;
    json_t *item;
    json_array_foreach(ct, i, item) {
        const char *name = json_string_value(json_object_get(item, "name"));
        json_t *src = json_object_get(item, "template");
        if (!name || !json_is_string(src)) return lm_errf(err, "chat_template[%zu]: needs name and template", i);
        lm_jinja_template **slot = strcmp(name, "default") == 0 ? &t->def : strcmp(name, "tool_use") == 0 ? &t->tool_use : NULL;
        if (!slot || *slot) continue;
        if (parse_one(json_string_value(src), json_string_length(src), slot, name, err)) return -1;
    }
    if (!t->def && !t->tool_use) return lm_errf(err, "no chat template named \"default\"");
    return 0;
}

int lm_chat_template_from_source(const char *src, size_t len, const json_t *tokenizer_config,
                                 lm_chat_template **out, char *err) {
    *out = NULL;
    lm_chat_template *t = calloc(1, sizeof *t);
    if (!t) return lm_errf(err, "out of memory");
    t->special_tokens = special_tokens_of(tokenizer_config);
    if (!t->special_tokens || parse_one(src, len, &t->def, "chat template", err)) {
        if (!t->special_tokens) lm_errf(err, "out of memory");
        lm_chat_template_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* A GGUF file's tokenizer.chat_template, with its special tokens. */
static int load_gguf(const char *path, lm_chat_template **out, char *err) {
    gguf_archive *g;
    if (gguf_open(&g, path, err) != 0) return -1;
    json_t *tj = NULL, *cj = NULL;
    int rc = lm_gguf_tokenizer_json(g, &tj, &cj, err);
    gguf_close(g);
    json_t *ct = rc == 0 ? json_object_get(cj, "chat_template") : NULL;
    if (rc == 0 && !json_is_string(ct)) rc = lm_errf(err, "no chat template (tokenizer.chat_template)");
    if (rc == 0) rc = lm_chat_template_from_source(json_string_value(ct), json_string_length(ct), cj, out, err);
    json_decref(tj);
    json_decref(cj);
    return rc ? lm_err_prefix(err, "%s", path) : 0;
}

int lm_chat_template_load(const char *model_dir, lm_chat_template **out, char *err) {
    *out = NULL;
    if (gguf_is_path(model_dir)) return load_gguf(model_dir, out, err);
    char path[4096];
    json_t *config = NULL;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    json_error_t jerr;
    if (lm_refuse_special_file(path, err)) return -1;
    FILE *f = fopen(path, "rb");
    if (f) {
        config = json_loadf(f, JSON_DECODE_INT_AS_REAL, &jerr);  /* model_max_length can exceed int64 */
        fclose(f);
        if (!config) return lm_errf(err, "%s: line %d: %s", path, jerr.line, jerr.text);
    }
    snprintf(path, sizeof path, "%s/chat_template.jinja", model_dir);
    size_t len = 0;
    bool missing;
    char *src = read_file(path, &len, &missing, err);
    if (!src && !missing) { json_decref(config); return -1; }
    int rc;
    if (src) {
        rc = lm_chat_template_from_source(src, len, config, out, err);
        if (rc) lm_err_prefix(err, "%s", path);
        free(src);
    } else {
        json_t *ct = config ? json_object_get(config, "chat_template") : NULL;
        if (!ct || json_is_null(ct)) {
            json_decref(config);
            return lm_errf(err, "%s: no chat template", model_dir);
        }
        lm_chat_template *t = calloc(1, sizeof *t);
        rc = t ? 0 : lm_errf(err, "out of memory");
        if (rc == 0 && !(t->special_tokens = special_tokens_of(config))) rc = lm_errf(err, "out of memory");
        if (rc == 0 && parse_config_template(t, ct, err)) rc = lm_err_prefix(err, "%s/tokenizer_config.json", model_dir);
        if (rc) lm_chat_template_free(t);
        else *out = t;
    }
    json_decref(config);
    return rc;
}

int lm_chat_template_render(const lm_chat_template *t, const lm_chat_request *req,
                            const lm_jinja_options *opts, char **out, size_t *out_len, char *err) {
    *out = NULL;
    if (!req->messages || !json_is_array(req->messages)) return lm_errf(err, "messages must be an array");
    const lm_jinja_template *tmpl = t->def;
    bool has_tools = req->tools && !json_is_null(req->tools);
    if ((has_tools && t->tool_use) || !tmpl) tmpl = t->tool_use;
    json_t *ctx = json_deep_copy(t->special_tokens);
    if (!ctx) return lm_errf(err, "out of memory");
    int rc = 0;
    if (req->kwargs && json_is_object(req->kwargs)) rc |= json_object_update(ctx, (json_t *)req->kwargs);
    rc |= json_object_set(ctx, "messages", (json_t *)req->messages);
    rc |= json_object_set_new(ctx, "tools", has_tools ? json_incref((json_t *)req->tools) : json_null());
    rc |= json_object_set_new(ctx, "documents",
                              req->documents && !json_is_null(req->documents) ? json_incref((json_t *)req->documents) : json_null());
    rc |= json_object_set_new(ctx, "add_generation_prompt", json_boolean(req->add_generation_prompt));
    if (rc) { json_decref(ctx); return lm_errf(err, "out of memory"); }
    rc = lm_jinja_render(tmpl, ctx, opts, out, out_len, err);
    json_decref(ctx);
    return rc;
}

void lm_chat_template_free(lm_chat_template *t) {
    if (!t) return;
    lm_jinja_free(t->def);
    lm_jinja_free(t->tool_use);
    json_decref(t->special_tokens);
    free(t);
}

#include "text/tokenizer_gguf.h"

#include "common/error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) and the split regexes of the
 * tokenizer.json files they stand for. A name maps to exactly one regex; several
 * names share one. */
/* the split regexes that several names share */
#define RE_QWEN2                                                                                                      \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
    "\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                                      \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"          \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_GPT4O                                                                                                       \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static const struct {
    const char *name;
    const char *regex;
    int nfc;            /* the Hugging Face tokenizer.json normalizes to NFC first */
    int ignore_merges;  /* BPE model's ignore_merges (Llama 3 family) */
    int add_bos;        /* llama.cpp's add_bos_token where the file has no key (Llama 3 family) */
    const char *family; /* the model_type whose tokenizer llama.cpp's converter gives this name */
} pre_table[] = {
    {"qwen2", RE_QWEN2, 1, 0},
    {"deepseek-r1-qwen", RE_QWEN2, 1, 0},
    {"llama-bpe", RE_LLAMA3, 0, 1, 1},
    /* GLM-4.5 / 4.6 / 4.7 (llama.cpp's chatglm4 split): Llama 3's regex without its
     * ignore_merges and default BOS; llama.cpp's converter names GLM-4.5-Air's and
     * GLM-4.7-Flash's tokenizers so (convert_hf_to_gguf_update.py) */
    {"glm4", RE_LLAMA3, 0, 0, 0, "glm4_moe"},
    {"gpt-4o", RE_GPT4O, 0, 0},
    /* llama.cpp splits it as gpt-4o (LLAMA_VOCAB_PRE_TYPE_MINIMAX_M2 shares the regex) */
    {"minimax-m2", RE_GPT4O, 0, 0, 0, "minimax_m2"},
    /* Qwen3.5 / 3.6: marks (\p{M}) join letters; no NFC (a decomposed "é" stays two
     * characters in the reference ids) */
    {"qwen35",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     0, 0},
    /* GPT-2's byte-level regex: "gpt-2" is llama.cpp's name (written by gguf_export);
     * "gpt2" is read too, as files from older lazymoe builds say; MPT and OLMo / OLMoE
     * (GPT-NeoX's vocabulary) split as GPT-2, as llama.cpp takes them */
    {"gpt-2", RE_GPT2, 0, 0},
    {"gpt2", RE_GPT2, 0, 0},
    {"mpt", RE_GPT2, 0, 0},
    {"olmo", RE_GPT2, 0, 0},
    {"default", RE_GPT2, 0, 0},
};
#define N_PRE (sizeof pre_table / sizeof pre_table[0])

const char *lm_gguf_pre_name(const char *regex, int ignore_merges, const char *model_type) {
    int best = -1, best_score = -1;
    for (size_t i = 0; i < N_PRE; i++) {
        if (strcmp(pre_table[i].regex, regex) != 0) continue;
        /* the same ids first (llama.cpp takes ignore_merges from the name), then the
         * family's own name; else the first */
        int score = 2 * (pre_table[i].ignore_merges == (ignore_merges != 0)) +
                    (model_type && pre_table[i].family && strcmp(pre_table[i].family, model_type) == 0);
        if (score > best_score) best = (int)i, best_score = score;
    }
    return best < 0 ? NULL : pre_table[best].name;
}

static int pre_index(const char *name) {
    for (size_t i = 0; i < N_PRE; i++)
        if (strcmp(pre_table[i].name, name) == 0) return (int)i;
    return -1;
}

const char *lm_gguf_pre_regex(const char *name) {
    int i = pre_index(name);
    return i < 0 ? NULL : pre_table[i].regex;
}

static json_t *str_of(gguf_str s) { return json_stringn(s.p, (size_t)s.len); }

static const gguf_kv *array_kv(const gguf_archive *g, const char *key, gguf_type t, char *err) {
    const gguf_kv *kv = gguf_find_kv(g, key);
    if (!kv) return NULL;
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != t) {
        lm_errf(err, "GGUF key '%s' is not an array of %s", key, gguf_type_name(t));
        return NULL;
    }
    return kv;
}

int lm_gguf_special_id(const gguf_archive *g, const char *name, int64_t *id, char *err) {
    *id = -1;
    const gguf_kv *toks = gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!toks || toks->type != GGUF_TYPE_ARRAY || toks->arr_type != GGUF_TYPE_STRING) return 0;
    uint64_t n = toks->arr_n;
    char key[64], e[LM_ERR_LEN], *model = NULL;
    snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", name);
    const gguf_kv *kv = gguf_find_kv(g, key);
    /* llama.cpp reads the key as u32 and refuses the file when it has another type;
     * any integer type is read here (the id is the same number) */
    if (kv && gguf_get_int(g, key, id, e) != 1)
        return lm_errf(err, "GGUF key '%s' is a %s, expected a u32 token id", key, gguf_type_name(kv->type));
    if (*id >= 0 && (uint64_t)*id < n) return 0;
    int64_t def = -1;
    if (gguf_get_str(g, "tokenizer.ggml.model", &model, e) == 1 && strcmp(model, "llama") == 0)
        def = strcmp(name, "bos") == 0 ? 1 : strcmp(name, "eos") == 0 ? 2 : strcmp(name, "unknown") == 0 ? 0 : -1;
    free(model);
    *id = def >= 0 && (uint64_t)def < n ? def : -1;
    return 0;
}

/* Token texts that llama.cpp (llama-vocab.cpp) makes control tokens whatever type the
 * file gives them: end-of-generation, end-of-turn and fill-in-the-middle markers. They
 * are then split out of text as special tokens and dropped when decoding skips those. */
static const char *const forced_control[] = {
    "</s>", "<EOT>", "<MID>", "<PAD>", "<PRE>", "<REPO>", "<SUF>", "<end_of_turn>", "<end_of_utterance>", "<eos>",
    "<fim-middle>", "<fim-pad>", "<fim-prefix>", "<fim-repo>", "<fim-suffix>", "<fim_middle>", "<fim_pad>",
    "<fim_prefix>", "<fim_suffix>", "<reponame>", "<turn|>", "<|calls|>", "<|call|>", "<|code_middle|>",
    "<|code_prefix|>", "<|code_suffix|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>", "<|eom_id|>", "<|eot_id|>",
    "<|file_sep|>", "<|fim_middle|>", "<|fim_pad|>", "<|fim_prefix|>", "<|fim_repo|>", "<|fim_suffix|>", "<|flush|>",
    "<|im_end|>", "<|middle|>", "<|prefix|>", "<|repo_name|>", "<|return|>", "<|suffix|>", "<|tool_response>",
    "<\uFF5Cend\u2581of\u2581sentence\uFF5C>", "<\uFF5Cfim\u2581begin\uFF5C>",
    "<\uFF5Cfim\u2581end\uFF5C>", "<\uFF5Cfim\u2581hole\uFF5C>", "[EOS]", "[EOT]", "[PAD]", "[e~[", "_<EOT>",
    "\u2581<MID>", "\u2581<PRE>", "\u2581<SUF>"};

static int is_forced_control(gguf_str t) {
    for (size_t k = 0; k < sizeof forced_control / sizeof forced_control[0]; k++)
        if (t.len == strlen(forced_control[k]) && memcmp(t.p, forced_control[k], t.len) == 0) return 1;
    return 0;
}

/* A SentencePiece ("llama") vocabulary: pieces with scores and token types, no merges,
 * encoded by tokenizer_spm.c as llama.cpp does. llama.cpp's defaults where a key is
 * absent: bos 1, eos 2, unknown 0 (lm_gguf_special_id), add_bos_token true,
 * add_eos_token false, add_space_prefix true. Control (3) and unknown (2) tokens are special added tokens,
 * user-defined ones (4) plain added tokens: all split out of the text before encoding
 * (llama.cpp with special tokens parsed; lazymoe always parses them). */
static int spm_json(const gguf_archive *g, const gguf_kv *toks, json_t *root, json_t *cfg, char *err) {
    uint64_t n = toks->arr_n;
    const gguf_kv *types = gguf_find_kv(g, "tokenizer.ggml.token_type"),
                  *scores = gguf_find_kv(g, "tokenizer.ggml.scores");
    if (types && (types->type != GGUF_TYPE_ARRAY || types->arr_n < n ||
                  (types->arr_type != GGUF_TYPE_I32 && types->arr_type != GGUF_TYPE_U32)))
        return lm_errf(err, "GGUF tokenizer.ggml.token_type is not an integer array as long as the tokens");
    if (scores && (scores->type != GGUF_TYPE_ARRAY || scores->arr_n < n ||
                   (scores->arr_type != GGUF_TYPE_F32 && scores->arr_type != GGUF_TYPE_I32)))
        return lm_errf(err, "GGUF tokenizer.ggml.scores is not an f32 or i32 array as long as the tokens");
    int add_prefix = 1, add_bos = 1, add_eos = 0;
    if (gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &add_prefix, err) < 0 ||
        gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos, err) < 0 ||
        gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &add_eos, err) < 0)
        return -1;
    int64_t bos, eos, unk, pad;
    if (lm_gguf_special_id(g, "bos", &bos, err) || lm_gguf_special_id(g, "eos", &eos, err) ||
        lm_gguf_special_id(g, "unknown", &unk, err) || lm_gguf_special_id(g, "padding", &pad, err))
        return -1;
    json_t *vocab = json_array(), *tt = json_array(), *added = json_array();
    json_t *model = json_pack("{s:s, s:o, s:o, s:I, s:b}", "type", "LlamaSPM", "vocab", vocab, "token_types", tt,
                              "unk_id", (json_int_t)unk, "add_space_prefix", add_prefix);
    if (!model || !added) {
        json_decref(added);
        return lm_errf(err, "out of memory");
    }
    json_object_set_new(root, "model", model);
    json_object_set_new(root, "added_tokens", added);
    /* llama.cpp's rule for Phi-3 (by general.name, as Phi-3's tokenizer_config says):
     * its added tokens swallow the whitespace after them, except <unk>, <s> and
     * <|endoftext|> */
    char *name = NULL;
    if (gguf_get_str(g, "general.name", &name, err) < 0) return -1;
    for (char *c = name; c && *c; c++) *c = (char)tolower((unsigned char)*c);
    int phi3 = name && (strstr(name, "phi-3") || strstr(name, "phi3"));
    free(name);
    char empty[40];
    for (uint64_t i = 0; i < n; i++) {
        int64_t type = types ? gguf_arr_int(types, i) : 1;
        if (type != 2 && type != 3 && is_forced_control(toks->strs[i])) type = 3;
        double score = !scores ? 0.0
                       : scores->arr_type == GGUF_TYPE_F32 ? gguf_arr_num(scores, i)
                                                           : (double)gguf_arr_int(scores, i);
        json_t *s;
        if (toks->strs[i].len == 0) { /* llama.cpp's name for an empty piece */
            snprintf(empty, sizeof empty, "[EMPTY_%llu]", (unsigned long long)i);
            s = json_string(empty);
        } else {
            s = str_of(toks->strs[i]);
        }
        if (!s) return lm_errf(err, "GGUF token %llu is not valid UTF-8", (unsigned long long)i);
        if (type == 2 || type == 3 || type == 4) {
            const char *t = json_string_value(s);
            int rstrip = phi3 && strcmp(t, "<unk>") != 0 && strcmp(t, "<s>") != 0 && strcmp(t, "<|endoftext|>") != 0;
            json_array_append_new(added, json_pack("{s:I, s:O, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i,
                                                   "content", s, "single_word", 0, "lstrip", 0, "rstrip", rstrip,
                                                   "normalized", 0, "special", type != 4));
        }
        json_array_append_new(vocab, json_pack("[o, f]", s, score));
        json_array_append_new(tt, json_integer((json_int_t)type));
    }
    json_object_set_new(root, "normalizer", json_null());
    json_object_set_new(root, "pre_tokenizer", json_null());
    json_object_set_new(root, "decoder", json_null());
    /* transformers' TemplateProcessing: "<bos> $A <eos>" as the add_*_token keys say */
    json_t *single = json_array(), *specials = json_object();
    int64_t ends[2] = {add_bos ? bos : -1, add_eos ? eos : -1};
    for (int k = 0; k < 2; k++) {
        if (k == 1) json_array_append_new(single, json_pack("{s:{s:s, s:i}}", "Sequence", "id", "A", "type_id", 0));
        if (ends[k] < 0) continue;
        json_t *bs = str_of(toks->strs[ends[k]]);
        json_array_append_new(single, json_pack("{s:{s:O, s:i}}", "SpecialToken", "id", bs, "type_id", 0));
        json_object_set_new(specials, json_string_value(bs),
                            json_pack("{s:O, s:[I], s:[O]}", "id", bs, "ids", (json_int_t)ends[k], "tokens", bs));
        json_decref(bs);
    }
    json_object_set_new(root, "post_processor",
                        json_pack("{s:s, s:o, s:[], s:o}", "type", "TemplateProcessing", "single", single, "pair",
                                  "special_tokens", specials));
    if (bos >= 0) json_object_set_new(cfg, "bos_token", str_of(toks->strs[bos]));
    if (eos >= 0) json_object_set_new(cfg, "eos_token", str_of(toks->strs[eos]));
    if (pad >= 0) json_object_set_new(cfg, "pad_token", str_of(toks->strs[pad]));
    json_object_set_new(cfg, "clean_up_tokenization_spaces", json_false());
    return 0;
}

int lm_gguf_tokenizer_json(const gguf_archive *g, json_t **tokenizer, json_t **config, char *err) {
    *tokenizer = *config = NULL;
    char *model = NULL, *pre = NULL, *tmpl = NULL;
    json_t *root = NULL, *cfg = NULL;
    int rc = -1;
    if (gguf_get_str(g, "tokenizer.ggml.model", &model, err) < 0) goto done;
    if (!model || strcmp(model, "no_vocab") == 0 || strcmp(model, "none") == 0) {
        lm_errf(err, "the GGUF file has no tokenizer (tokenizer.ggml.model %s): text needs one (token ids work)",
                model ? model : "is missing");
        goto done;
    }
    if (strcmp(model, "gpt2") != 0 && strcmp(model, "llama") != 0) {
        lm_errf(err,
                "GGUF tokenizer model '%.40s' is not supported yet (byte-level BPE \"gpt2\" and SentencePiece "
                "\"llama\" are)",
                model);
        goto done;
    }
    if (strcmp(model, "llama") == 0) {
        err[0] = 0;
        const gguf_kv *stoks = array_kv(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, err);
        if (!stoks) {
            if (!err[0]) lm_errf(err, "the GGUF file lacks tokenizer.ggml.tokens");
            goto done;
        }
        root = json_object();
        cfg = json_object();
        if (!root || !cfg) {
            lm_errf(err, "out of memory");
            goto done;
        }
        json_object_set_new(root, "version", json_string("1.0"));
        if (spm_json(g, stoks, root, cfg, err) != 0) goto done;
        if (gguf_get_str(g, "tokenizer.chat_template", &tmpl, err) < 0) goto done;
        if (tmpl) json_object_set_new(cfg, "chat_template", json_string(tmpl));
        rc = 0;
        goto done;
    }
    if (gguf_get_str(g, "tokenizer.ggml.pre", &pre, err) < 0) goto done;
    int pi = pre_index(pre ? pre : "default");
    if (pi < 0) {
        char known[256] = "";
        for (size_t i = 0, len = 0; i < N_PRE && len < sizeof known; i++)
            len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "", pre_table[i].name);
        lm_errf(err, "GGUF pre-tokenizer '%.60s' is not known to lazymoe (known: %s)", pre, known);
        goto done;
    }
    err[0] = 0;
    const gguf_kv *toks = array_kv(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, err);
    if (!toks) {
        if (!err[0]) lm_errf(err, "the GGUF file lacks tokenizer.ggml.tokens");
        goto done;
    }
    const gguf_kv *types = gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (types && (types->type != GGUF_TYPE_ARRAY || types->arr_n != toks->arr_n ||
                  (types->arr_type != GGUF_TYPE_I32 && types->arr_type != GGUF_TYPE_U32))) {
        lm_errf(err, "GGUF tokenizer.ggml.token_type is not an integer array as long as the tokens");
        goto done;
    }
    const gguf_kv *merges = array_kv(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, err);
    if (!merges && err[0]) goto done;
    uint64_t n = toks->arr_n;
    root = json_object();
    cfg = json_object();
    json_t *vocab = json_object(), *added = json_array(), *mj = json_array();
    json_t *bpe = json_pack("{s:s, s:o, s:o, s:b, s:b, s:b}", "type", "BPE", "vocab", vocab, "merges", mj,
                            "byte_fallback", 0, "fuse_unk", 0, "ignore_merges", pre_table[pi].ignore_merges);
    if (!root || !cfg || !bpe || !added) {
        json_decref(added);
        lm_errf(err, "out of memory");
        goto done;
    }
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "added_tokens", added);
    json_object_set_new(root, "model", bpe);
    for (uint64_t i = 0; i < n; i++) {
        int64_t type = types ? gguf_arr_int(types, i) : 1;
        if (type == 5) continue; /* unused: padding ids the tokenizer never had */
        json_t *s = str_of(toks->strs[i]);
        if (!s) {
            lm_errf(err, "GGUF token %llu is not valid UTF-8", (unsigned long long)i);
            goto done;
        }
        if (type == 3 || type == 4)
            json_array_append_new(added, json_pack("{s:I, s:O, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i,
                                                   "content", s, "single_word", 0, "lstrip", 0, "rstrip", 0,
                                                   "normalized", type == 4, "special", type == 3));
        if (!json_object_get(vocab, json_string_value(s))) json_object_set_new(vocab, json_string_value(s), json_integer((json_int_t)i));
        json_decref(s);
    }
    for (uint64_t i = 0; merges && i < merges->arr_n; i++) {
        json_t *s = str_of(merges->strs[i]);
        if (!s) {
            lm_errf(err, "GGUF merge %llu is not valid UTF-8", (unsigned long long)i);
            goto done;
        }
        json_array_append_new(mj, s);
    }
    json_object_set_new(root, "normalizer", pre_table[pi].nfc ? json_pack("{s:s}", "type", "NFC") : json_null());
    json_object_set_new(
        root, "pre_tokenizer",
        json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence", "pretokenizers",
                  "type", "Split", "pattern", "Regex", pre_table[pi].regex, "behavior", "Isolated", "invert", 0, "type",
                  "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0));
    json_object_set_new(root, "decoder", json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                                   "trim_offsets", 1, "use_regex", 1));
    int64_t bos, eos, pad;
    if (lm_gguf_special_id(g, "bos", &bos, err) || lm_gguf_special_id(g, "eos", &eos, err) ||
        lm_gguf_special_id(g, "padding", &pad, err))
        goto done;
    int add_bos = pre_table[pi].add_bos;
    if (gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos, err) < 0) goto done;
    if (add_bos && bos >= 0) {
        /* transformers' TemplateProcessing for "<bos> $A" */
        json_t *bs = str_of(toks->strs[bos]);
        json_t *single = json_pack("[{s:{s:O, s:i}}, {s:{s:s, s:i}}]", "SpecialToken", "id", bs, "type_id", 0,
                                   "Sequence", "id", "A", "type_id", 0);
        json_t *specials = json_object();
        if (bs && specials)
            json_object_set_new(specials, json_string_value(bs),
                                json_pack("{s:O, s:[I], s:[O]}", "id", bs, "ids", (json_int_t)bos, "tokens", bs));
        json_object_set_new(root, "post_processor",
                            json_pack("{s:s, s:o, s:[], s:o}", "type", "TemplateProcessing", "single", single, "pair",
                                      "special_tokens", specials));
        json_decref(bs);
    } else {
        json_object_set_new(root, "post_processor", json_null());
    }
    if (bos >= 0) json_object_set_new(cfg, "bos_token", str_of(toks->strs[bos]));
    if (eos >= 0) json_object_set_new(cfg, "eos_token", str_of(toks->strs[eos]));
    if (pad >= 0) json_object_set_new(cfg, "pad_token", str_of(toks->strs[pad]));
    json_object_set_new(cfg, "clean_up_tokenization_spaces", json_false());
    if (gguf_get_str(g, "tokenizer.chat_template", &tmpl, err) < 0) goto done;
    if (tmpl) json_object_set_new(cfg, "chat_template", json_string(tmpl));
    rc = 0;
done:
    free(model);
    free(pre);
    free(tmpl);
    if (rc != 0) {
        json_decref(root);
        json_decref(cfg);
        return -1;
    }
    *tokenizer = root;
    *config = cfg;
    return 0;
}

int lm_tokenizer_from_gguf(const gguf_archive *g, lm_tokenizer **out, char *err) {
    json_t *tj, *cj;
    *out = NULL;
    if (lm_gguf_tokenizer_json(g, &tj, &cj, err) != 0) return -1;
    int rc = lm_tokenizer_load_json(tj, cj, out, err);
    json_decref(tj);
    json_decref(cj);
    return rc;
}

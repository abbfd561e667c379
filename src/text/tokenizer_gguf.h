/* The tokenizer and chat template stored in a GGUF file (tokenizer.ggml.*), turned into
 * the tokenizer.json / tokenizer_config.json they were converted from, so the one
 * tokenizer implementation (tokenizer.h) serves both and gives the same ids.
 *
 * tokenizer.ggml.model "gpt2" (byte-level BPE): tokens, token_type (1 normal, 3 control
 * = special added token, 4 user-defined = added token, 5 unused = not in the vocabulary),
 * merges ("a b"), bos/eos/pad/unk ids, add_bos_token, and pre, llama.cpp's name for the
 * pre-tokenizer, mapped to its split regex (table in tokenizer_gguf.c). "llama"
 * (SentencePiece): tokens with scores and token types, encoded by tokenizer_spm.c. Other
 * models and unknown pre names are refused with an error naming them: a guessed regex
 * would silently give other ids.
 */
#ifndef LAZYMOE_TOKENIZER_GGUF_H
#define LAZYMOE_TOKENIZER_GGUF_H

#include "formats/gguf.h"
#include "text/tokenizer.h"

#include <jansson.h>

/* tokenizer.json and tokenizer_config.json (chat_template included when the file has
 * one) as new JSON objects. */
int lm_gguf_tokenizer_json(const gguf_archive *g, json_t **tokenizer, json_t **config, char *err);
/* A tokenizer from a GGUF file's metadata. */
int lm_tokenizer_from_gguf(const gguf_archive *g, lm_tokenizer **out, char *err);

/* The id llama.cpp's vocabulary loader takes for tokenizer.ggml.NAME_token_id (NAME
 * "bos", "eos", "eot", "unknown", "padding", ...) into *id: the key's value when it is a
 * token of the vocabulary; where the key is absent or out of range, the default of the
 * vocabulary's model when that is a token: SentencePiece ("llama") bos 1, eos 2,
 * unknown 0. -1: none. (llama.cpp's byte-level BPE default, bos and eos 11, is not
 * taken: a leftover of Falcon's vocabulary, "," in GPT-2's and Qwen's.) Returns 0, or
 * -1 with err naming the key, its type and the type expected when the key holds no
 * integer (llama.cpp refuses such a file too; callers add the file's name). */
int lm_gguf_special_id(const gguf_archive *g, const char *name, int64_t *id, char *err);

/* llama.cpp's pre-tokenizer name for a tokenizer.json's split regex and its BPE model's
 * ignore_merges (NULL if no name has the regex), and the regex of a name (NULL if
 * unknown). Several names share a regex: the one whose ignore_merges is the file's comes
 * first, as llama.cpp takes ignore_merges from the name (Llama 3's regex is "llama-bpe"
 * with it, "glm4" without), then the one llama.cpp's converter writes for model_type
 * (a config.json model_type, or NULL). */
const char *lm_gguf_pre_name(const char *regex, int ignore_merges, const char *model_type);
const char *lm_gguf_pre_regex(const char *name);

#endif

/* Hugging Face tokenizer (tokenizer.json) for the models lazymoe runs.
 *
 * Loads the "fast tokenizer" file format that transformers writes and reproduces
 * `tokenizer.encode(text)` / `tokenizer.decode(ids)`: added tokens, normalizers,
 * pre-tokenizers, the BPE model (byte-level as in GPT-2/Qwen/Llama-3/DeepSeek/gpt-oss, or
 * SentencePiece-style with byte fallback), post-processor and decoders. Unsupported parts of
 * a file are refused at load time with an error naming the component type.
 *
 * Text in and out is UTF-8. Invalid UTF-8 given to encode is first repaired (each invalid
 * subpart becomes U+FFFD), as Python's `bytes.decode(errors="replace")` would do before
 * the text could reach transformers at all.
 *
 * Threading: a tokenizer is read-only after load except for its word cache, which encode
 * updates; use one tokenizer per thread, or serialize calls to lm_tokenizer_encode.
 */
#ifndef LAZYMOE_TEXT_TOKENIZER_H
#define LAZYMOE_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct lm_tokenizer lm_tokenizer;

/* Loads a tokenizer from a model directory (reads tokenizer.json and, when present,
 * tokenizer_config.json beside it) or from the path of a tokenizer.json file. On success
 * *out owns the tokenizer: release it with lm_tokenizer_free. */
int lm_tokenizer_load(const char *path, lm_tokenizer **out, char err[LM_ERR_LEN]);
void lm_tokenizer_free(lm_tokenizer *tok);
/* The same from parsed tokenizer.json and tokenizer_config.json objects (config may be
 * NULL); neither is taken over. */
struct json_t;
int lm_tokenizer_load_json(struct json_t *tokenizer, struct json_t *config, lm_tokenizer **out,
                           char err[LM_ERR_LEN]);

/* Encodes len bytes of text. With add_special != 0 the post-processor's special tokens are
 * added (BOS for Llama 3), as transformers' `encode(text)` does by default. On success
 * *ids is a malloc'd array of *n_ids token ids that the caller frees (non-NULL even when
 * *n_ids is 0). */
int lm_tokenizer_encode(lm_tokenizer *tok, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n_ids, char err[LM_ERR_LEN]);
/* The same, giving up once more than max_ids ids are made (a prompt that cannot fit
 * costs no more than the limit): *n_ids > max_ids then says "too long" and the ids
 * are a prefix of the encoding (within one pre-tokenized word of the limit). */
int lm_tokenizer_encode_max(lm_tokenizer *tok, const char *text, size_t len, int add_special, size_t max_ids,
                            int32_t **ids, size_t *n_ids, char err[LM_ERR_LEN]);

enum {
    LM_DECODE_SKIP_SPECIAL = 1,   /* drop special added tokens */
    LM_DECODE_CLEANUP = 2,        /* transformers' clean_up_tokenization (" ." -> ".") */
};

/* Decodes ids to raw bytes (*out malloc'd, NUL-terminated, caller frees). The bytes are
 * what the model produced and can be invalid UTF-8 (e.g. half an emoji); pass them through
 * lm_text_to_valid_utf8 for display. Ids with no token are skipped. */
int lm_tokenizer_decode(const lm_tokenizer *tok, const int32_t *ids, size_t n_ids, int flags,
                        char **out, size_t *out_len, char err[LM_ERR_LEN]);

/* Copy of bytes with each invalid UTF-8 subpart replaced by U+FFFD (what transformers'
 * decode returns). *out is malloc'd and NUL-terminated; caller frees. */
int lm_text_to_valid_utf8(const char *bytes, size_t len, char **out, size_t *out_len,
                          char err[LM_ERR_LEN]);

/* Lookups. Token strings are the tokenizer's own spelling (byte-level "Ġthe", "▁the",
 * "<0x0A>"); returned pointers are borrowed and live as long as the tokenizer. */
int32_t lm_tokenizer_token_to_id(const lm_tokenizer *tok, const char *token, size_t len);  /* -1 if none */
const char *lm_tokenizer_id_to_token(const lm_tokenizer *tok, int32_t id, size_t *len);  /* NULL if none */
size_t lm_tokenizer_n_vocab(const lm_tokenizer *tok);   /* 1 + highest id */
int lm_tokenizer_is_special(const lm_tokenizer *tok, int32_t id);
/* Id of the added token whose content is exactly `content` (NUL-terminated), or -1. */
int32_t lm_tokenizer_special_id(const lm_tokenizer *tok, const char *content);
/* bos_token / eos_token of tokenizer_config.json (a string or {"content": ...}); -1 when
 * absent, null, or not a known token. */
int32_t lm_tokenizer_bos_id(const lm_tokenizer *tok);
int32_t lm_tokenizer_eos_id(const lm_tokenizer *tok);
/* tokenizer_config.json's clean_up_tokenization_spaces (default 1, as in transformers.js). */
int lm_tokenizer_default_cleanup(const lm_tokenizer *tok);

/* Streaming detokenizer: feed generated ids one at a time and get back only complete
 * UTF-8 text. Bytes of a character split over several tokens are held back until the
 * character is complete; bytes that can never become valid are replaced by U+FFFD at
 * once. The tokenizer must outlive the stream. */
typedef struct lm_detok lm_detok;

int lm_detok_new(const lm_tokenizer *tok, int flags, lm_detok **out, char err[LM_ERR_LEN]);
void lm_detok_free(lm_detok *d);
/* Feeds one id. *text receives the newly completed text (*len bytes, NUL-terminated,
 * possibly empty), valid until the next call on d. */
int lm_detok_push(lm_detok *d, int32_t id, const char **text, size_t *len, char err[LM_ERR_LEN]);
/* Ends the stream: returns held-back bytes with each incomplete sequence as U+FFFD, and
 * resets d for a new stream. */
int lm_detok_flush(lm_detok *d, const char **text, size_t *len, char err[LM_ERR_LEN]);

#endif

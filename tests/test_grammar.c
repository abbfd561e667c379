/* Grammar matcher, JSON Schema -> grammar converter and token masks. */
#include "harness.h"

#include "text/grammar.h"
#include "text/json_schema.h"

#include <jansson.h>
#include <stdint.h>

/* 1 accepted as a whole sentence, 0 accepted but incomplete, -1 rejected. */
static int match(const lm_grammar *g, const char *s) {
    char err[LM_ERR_LEN];
    lm_gmatch *m;
    if (lm_gmatch_new(g, &m, err)) return -2;
    int r = lm_gmatch_accept(m, s, strlen(s), err);
    int out = r == 1 ? lm_gmatch_complete(m) : r == 0 ? -1 : -2;
    lm_gmatch_free(m);
    return out;
}

/* Feeding byte by byte gives the same verdict as feeding at once. */
static int match_bytewise(const lm_grammar *g, const char *s) {
    char err[LM_ERR_LEN];
    lm_gmatch *m;
    if (lm_gmatch_new(g, &m, err)) return -2;
    int out = 0;
    for (size_t i = 0; s[i]; i++) {
        int r = lm_gmatch_accept(m, s + i, 1, err);
        if (r != 1) {
            out = r == 0 ? -1 : -2;
            break;
        }
    }
    if (out == 0) out = lm_gmatch_complete(m);
    lm_gmatch_free(m);
    return out;
}

static lm_grammar *parse(const char *text) {
    char err[LM_ERR_LEN] = "";
    lm_grammar *g = NULL;
    if (lm_grammar_parse(text, strlen(text), &g, err)) printf("# parse error: %s\n", err);
    return g;
}

static void test_literals_and_alternatives(void) {
    lm_grammar *g = parse("root ::= \"ab\" (\"c\" | \"de\") # comment\n");
    CHECK(g != NULL);
    CHECK_EQ_INT(match(g, "abc"), 1);
    CHECK_EQ_INT(match(g, "abde"), 1);
    CHECK_EQ_INT(match(g, "ab"), 0);
    CHECK_EQ_INT(match(g, "abd"), 0);
    CHECK_EQ_INT(match(g, "abx"), -1);
    CHECK_EQ_INT(match(g, "abcd"), -1);
    CHECK_EQ_INT(match(g, ""), 0);
    lm_grammar_free(g);
}

static void test_repetition(void) {
    lm_grammar *g = parse("root ::= [a-c]{2,3} x* y+ z?\nx ::= \"x\"\ny ::= \"yy\"\nz ::= \"!\"");
    CHECK(g != NULL);
    CHECK_EQ_INT(match(g, "abyy"), 1);
    CHECK_EQ_INT(match(g, "abcxxxyyyy!"), 1);
    CHECK_EQ_INT(match(g, "a"), 0);
    CHECK_EQ_INT(match(g, "abcd"), -1);
    CHECK_EQ_INT(match(g, "abcay"), -1);
    CHECK_EQ_INT(match(g, "abyyy"), 0);
    CHECK_EQ_INT(match(g, "abyy!!"), -1);
    CHECK_EQ_INT(match_bytewise(g, "abcxxxyyyy!"), 1);
    lm_grammar_free(g);
    g = parse("root ::= \"ab\"{2} [0-9]{1,}");
    CHECK(g != NULL);
    CHECK_EQ_INT(match(g, "abab1234"), 1);
    CHECK_EQ_INT(match(g, "ab1"), -1);
    lm_grammar_free(g);
}

static void test_classes_and_utf8(void) {
    lm_grammar *g = parse("root ::= [^\"\\\\\\x00-\\x1F]* \"\\u00e9\" . [\\u4e00-\\u9fff]");
    CHECK(g != NULL);
    CHECK_EQ_INT(match(g, "h\xc3\xa9llo \xc3\xa9\xf0\x9f\x98\x80\xe4\xb8\xad"), 1); /* héllo é😀中 */
    CHECK_EQ_INT(match_bytewise(g, "h\xc3\xa9llo \xc3\xa9\xf0\x9f\x98\x80\xe4\xb8\xad"), 1);
    CHECK_EQ_INT(match(g, "a\"\xc3\xa9xx"), -1);        /* the class excludes " */
    CHECK_EQ_INT(match(g, "\xc3\xa9\xc3"), 0);           /* inside a character */
    CHECK_EQ_INT(match(g, "\xc3\xa9" "a\xe4\xb8"), 0);
    CHECK_EQ_INT(match(g, "\xff"), -1);                  /* never UTF-8 */
    CHECK_EQ_INT(match(g, "\xed\xa0\x80"), -1);          /* a surrogate */
    CHECK_EQ_INT(match(g, "\xc0\xaf"), -1);              /* overlong */
    lm_grammar_free(g);
    g = parse("root ::= \"a\" [\\u4e00-\\u9fff]");
    CHECK(g != NULL);
    CHECK_EQ_INT(match(g, "a\xe5"), 0);       /* could still be U+5xxx */
    CHECK_EQ_INT(match(g, "a\xe4\xb7"), -1);  /* U+4DC0..U+4DFF is below the class */
    CHECK_EQ_INT(match(g, "a\xc3"), -1);      /* U+00C0..U+00FF is not CJK */
    lm_grammar_free(g);
}

static void test_recursion(void) {
    lm_grammar *g = parse("root ::= v\nv ::= \"[\" (v (\",\" v)*)? \"]\" | [0-9]");
    CHECK(g != NULL);
    CHECK_EQ_INT(match(g, "[[1,[2]],[],3]"), 1);
    CHECK_EQ_INT(match(g, "[[1,[2]],[],3"), 0);
    CHECK_EQ_INT(match(g, "[[1,[2]],[],3]]"), -1);
    CHECK_EQ_INT(match_bytewise(g, "[[[[[[[[[[]]]]]]]]]]"), 1);
    lm_grammar_free(g);
}

static void test_parse_errors(void) {
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"root ::= foo", "foo is used but not defined"},
        {"a ::= \"x\"", "no rule named root"},
        {"root ::= root \"x\" | \"y\"", "left-recursive"},
        {"root ::= a \"x\"\na ::= \"\" | root", "left-recursive"},
        {"root ::= (\"x\"?)*", "empty string and is repeated"},
        {"root ::= \"x\nroot2 ::= \"y\"", "grammar"},
        {"root ::= [b-a]", "out of order"},
        {"root ::= [", "unterminated"},
        {"root ::= \"a\"{3,2}", "n < m"},
        {"root ::= \"a\"**", "two repetitions"},
        {"root ::= (\"a\"", "missing )"},
        {"root ::= \"a\" )", "unbalanced"},
        {"root ::= \"a\"\nroot ::= \"b\"", "defined twice"},
        {"root ::= \"\\xZZ\"", "hex escape"},
        {"root ::= \"\\uD800\"", "scalar"},
        {"root ::= x{999999999}", "too large"},
        {"= \"a\"", "expected"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[LM_ERR_LEN] = "";
        lm_grammar *g = NULL;
        int rc = lm_grammar_parse(cases[i].text, strlen(cases[i].text), &g, err);
        CHECKF(rc == -1 && !g, "grammar %zu parsed", i);
        CHECK_STR_CONTAINS(err, cases[i].want);
    }
}

/* Tokens of a tiny vocabulary: the mask allows exactly those whose bytes can come next. */
static void test_token_mask(void) {
    static const char *const vocab[] = {"{", "}", "\"", "a", "ab", "\"a", "\":", " ", "{\"", "x", "", "\xc3", "\xa9", "\xc3\xa9", "1", "12", "}\n"};
    int n = (int)(sizeof vocab / sizeof *vocab);
    size_t lens[32];
    for (int i = 0; i < n; i++) lens[i] = strlen(vocab[i]);
    char err[LM_ERR_LEN];
    lm_token_trie *t;
    CHECK(lm_token_trie_new(vocab, lens, n, &t, err) == 0);
    lm_grammar *g = parse("root ::= \"{\" \"\\\"\" [a-b\\u00e9]+ \"\\\":\" [0-9]+ \"}\"");
    CHECK(g != NULL);
    lm_gmatch *m;
    CHECK(lm_gmatch_new(g, &m, err) == 0);
    uint8_t allowed[32];
    CHECK_EQ_INT(lm_gmatch_mask(m, t, -1, allowed, err), 2); /* "{" and "{\"" */
    CHECK(allowed[0] && allowed[8] && !allowed[10]);
    CHECK_EQ_INT(lm_gmatch_accept(m, "{\"", 2, err), 1);
    int k = lm_gmatch_mask(m, t, -1, allowed, err);
    CHECK_EQ_INT(k, 4); /* a, ab, \xc3 (start of é), é -- not \xa9, not "\":" yet */
    CHECK(allowed[3] && allowed[4] && allowed[11] && allowed[13] && !allowed[12] && !allowed[6]);
    CHECK_EQ_INT(lm_gmatch_accept(m, "\xc3", 1, err), 1);
    CHECK_EQ_INT(lm_gmatch_mask(m, t, -1, allowed, err), 1); /* only the continuation byte */
    CHECK(allowed[12]);
    CHECK_EQ_INT(lm_gmatch_accept(m, "\xa9", 1, err), 1);
    lm_gmatch_mask(m, t, -1, allowed, err);
    CHECK(allowed[6] && allowed[3] && !allowed[5]);
    CHECK_EQ_INT(lm_gmatch_accept(m, "\":12", 4, err), 1);
    CHECK(!lm_gmatch_complete(m));
    lm_gmatch_mask(m, t, -1, allowed, err);
    CHECK(allowed[1] && allowed[14] && allowed[15] && !allowed[16]); /* "}\n" goes past the end */
    CHECK_EQ_INT(lm_gmatch_accept(m, "x", 1, err), 0);              /* rejected: state kept */
    CHECK_EQ_INT(lm_gmatch_accept(m, "}", 1, err), 1);
    CHECK(lm_gmatch_complete(m));
    CHECK_EQ_INT(lm_gmatch_mask(m, t, -1, allowed, err), 0); /* only end-of-sequence remains */
    lm_gmatch_free(m);
    lm_grammar_free(g);
    lm_token_trie_free(t);
}

static lm_grammar *schema_grammar(const char *schema, char *err) {
    json_error_t je;
    json_t *s = json_loads(schema, JSON_DECODE_ANY, &je);
    if (!s) {
        snprintf(err, LM_ERR_LEN, "bad test JSON");
        return NULL;
    }
    lm_grammar *g = NULL;
    lm_json_schema_grammar(s, "schema", &g, err);
    json_decref(s);
    return g;
}

static void test_schema_objects(void) {
    char err[LM_ERR_LEN] = "";
    lm_grammar *g = schema_grammar(
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",1,null]},\"minItems\":1,\"maxItems\":2},"
        "\"ok\":{\"type\":\"boolean\"}},\"required\":[\"name\",\"tags\"]}",
        err);
    CHECKF(g != NULL, "%s", err);
    CHECK_EQ_INT(match(g, "{\"name\": \"x\", \"tags\": [\"a\"]}"), 1);
    CHECK_EQ_INT(match(g, "{\"name\":\"x\",\"age\":-12,\"tags\":[1, null],\"ok\":true}"), 1);
    CHECK_EQ_INT(match(g, "{\"name\": \"x\", \"tags\": []}"), -1);          /* minItems */
    CHECK_EQ_INT(match(g, "{\"name\": \"x\", \"tags\": [1,1,1]}"), -1);     /* maxItems */
    CHECK_EQ_INT(match(g, "{\"tags\": [1], \"name\": \"x\"}"), -1);         /* declared order */
    CHECK_EQ_INT(match(g, "{\"name\": \"x\"}"), -1);                         /* required */
    CHECK_EQ_INT(match(g, "{\"name\": \"x\", \"age\": 1.5, \"tags\": [1]}"), -1); /* integer */
    CHECK_EQ_INT(match(g, "{\"name\": \"x\", \"tags\": [\"c\"]}"), -1);     /* enum */
    CHECK_EQ_INT(match(g, "{\"name\": \"a\\\"b\\n\", \"tags\": [\"b\"]}"), 1);
    CHECK_EQ_INT(match(g, "{\"name\": \"a\nb\", \"tags\": [\"b\"]}"), -1);  /* raw control character */
    CHECK_EQ_INT(match(g, "{  \"name\": \"x\", \"tags\": [1]}"), -1);      /* bounded whitespace */
    lm_grammar_free(g);
}

static void test_schema_keywords(void) {
    char err[LM_ERR_LEN] = "";
    lm_grammar *g = schema_grammar(
        "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"number\"},"
        "\"next\":{\"anyOf\":[{\"$ref\":\"#/$defs/node\"},{\"type\":\"null\"}]}},\"required\":[\"v\",\"next\"],"
        "\"additionalProperties\":false}},\"$ref\":\"#/$defs/node\"}",
        err);
    CHECKF(g != NULL, "%s", err);
    CHECK_EQ_INT(match(g, "{\"v\": 1.5e3, \"next\": {\"v\": -0.25, \"next\": null}}"), 1);
    CHECK_EQ_INT(match(g, "{\"v\": 01, \"next\": null}"), -1);
    lm_grammar_free(g);
    g = schema_grammar("{\"type\":[\"string\",\"null\"],\"minLength\":2,\"maxLength\":3}", err);
    CHECKF(g != NULL, "%s", err);
    CHECK_EQ_INT(match(g, "\"ab\""), 1);
    CHECK_EQ_INT(match(g, "null"), 1);
    CHECK_EQ_INT(match(g, "\"a\""), -1);
    CHECK_EQ_INT(match(g, "\"abcd\""), -1);
    lm_grammar_free(g);
    g = schema_grammar("{\"const\":{\"a\":[1,\"x\"]}}", err);
    CHECKF(g != NULL, "%s", err);
    CHECK_EQ_INT(match(g, "{\"a\":[1,\"x\"]}"), 1);
    lm_grammar_free(g);
    g = schema_grammar("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", err);
    CHECKF(g != NULL, "%s", err);
    CHECK_EQ_INT(match(g, "{\"x\": 1, \"y\": 2}"), 1);
    CHECK_EQ_INT(match(g, "{\"x\": \"1\"}"), -1);
    lm_grammar_free(g);
    g = schema_grammar("{\"description\":\"anything\",\"format\":\"email\"}", err);
    CHECKF(g != NULL, "%s", err);
    CHECK_EQ_INT(match(g, "[{\"a\": [true, false, null]}, \"s\", -1e-5]"), 1);
    lm_grammar_free(g);
    g = schema_grammar("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"integer\"},"
                       "\"c\":{\"type\":\"integer\"}}}",
                       err);
    CHECKF(g != NULL, "%s", err);
    CHECK_EQ_INT(match(g, "{}"), 1);
    CHECK_EQ_INT(match(g, "{\"b\": 1}"), 1);
    CHECK_EQ_INT(match(g, "{\"a\": 1, \"c\": 2}"), 1);
    CHECK_EQ_INT(match(g, "{, \"c\": 2}"), -1);
    CHECK_EQ_INT(match(g, "{\"a\": 1,}"), -1);
    lm_grammar_free(g);
    CHECK(lm_json_object_grammar(&g, err) == 0);
    CHECK_EQ_INT(match(g, "{\"k\": {\"a\": [1, {\"b\": \"c\"}]}}"), 1);
    CHECK_EQ_INT(match(g, "[1]"), -1);
    lm_grammar_free(g);
}

static void test_schema_unsupported(void) {
    static const struct {
        const char *schema, *want;
    } cases[] = {
        {"{\"type\":\"string\",\"pattern\":\"^a\"}", "schema: \"pattern\" is not supported"},
        {"{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":0}}}", "schema.properties.n: \"minimum\""},
        {"{\"type\":\"array\",\"items\":[{\"type\":\"string\"}]}", "items (as an array)"},
        {"{\"allOf\":[{},{}]}", "allOf"},
        {"{\"not\":{}}", "\"not\""},
        {"{\"$ref\":\"http://x/y\"}", "only local references"},
        {"{\"$ref\":\"#/$defs/missing\"}", "points to nothing"},
        {"{\"type\":\"object\",\"required\":[\"x\"]}", "\"x\", which is not in \"properties\""},
        {"{\"type\":\"frob\"}", "unknown \"type\""},
        {"false", "accepts no value"},
        {"{\"enum\":[]}", "non-empty"},
        {"{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", "less than"},
        {"{\"type\":\"array\",\"maxItems\":-1}", "non-negative"},
        {"{\"anyOf\":3}", "non-empty array"},
        {"3", "must be an object or a boolean"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[LM_ERR_LEN] = "";
        lm_grammar *g = schema_grammar(cases[i].schema, err);
        CHECKF(!g, "schema %zu converted", i);
        CHECK_STR_CONTAINS(err, cases[i].want);
        lm_grammar_free(g);
    }
}

/* The mask (trie walk with its shortcuts) equals feeding every token to a fresh copy of
 * the state, at every step along a document, with a vocabulary of JSON fragments. */
static void test_mask_matches_brute_force(void) {
    static const char *const pieces[] = {
        "{", "}", "[", "]", "\"", ",", ":", " ", "\\", "\\n", "\\\"", "n", "a", "ab", "abc", "name", "\"name",
        "\":", "\": ", ", \"", "\"}", "\"]", "\",", "1", "12", "0", "-", ".", "5e", "e", "E+", "true", "false", "null",
        "tr", "ue", "\xc3", "\xa9", "\xc3\xa9", "\xe4\xb8\xad", "\xe4", "\xb8\xad", "\xf0\x9f\x98\x80", "\n", "\t",
        "low", "mid", "high", "\"mid\"", "xyz xyz", "hello world", "  ", "a\"", "\xff", "id", "tags", "meta", "level",
        "created", "active", "\"level\": \"", "}}", "]}", "\"\"", "q", "\\t", "\\u", "/", "\x01", "+", "3", "5",
    };
    int n = (int)(sizeof pieces / sizeof *pieces);
    size_t lens[128];
    for (int i = 0; i < n; i++) lens[i] = strlen(pieces[i]);
    char err[LM_ERR_LEN] = "";
    lm_token_trie *t;
    CHECK(lm_token_trie_new(pieces, lens, n, &t, err) == 0);
    lm_grammar *g = schema_grammar(
        "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"name\":{\"type\":\"string\"},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":6}},\"meta\":{\"type\":\"object\"},"
        "\"level\":{\"enum\":[\"low\",\"mid\",\"high\"]}},\"required\":[\"name\",\"level\"]}",
        err);
    CHECKF(g != NULL, "%s", err);
    const char *doc = "{\"name\": \"ab\\n\xc3\xa9\xe4\xb8\xad xyz xyz \\\"hello world\", \"tags\": [\"ab\", \"\xf0\x9f\x98\x80q\"], "
                      "\"meta\": {\"name\": [true, null, {\"a\": -12.5e+3}]}, \"level\": \"mid\"}";
    lm_gmatch *m;
    CHECK(g && lm_gmatch_new(g, &m, err) == 0);
    uint8_t allowed[128];
    size_t pos = 0, len = strlen(doc);
    int steps = 0, mismatches = 0;
    while (g && pos < len && steps < 400) {
        lm_gmatch_mask(m, t, -1, allowed, err);
        for (int id = 0; id < n; id++) {
            lm_gmatch *b;
            lm_gmatch_new(g, &b, err);
            lm_gmatch_accept(b, doc, pos, err);
            int ok = lm_gmatch_accept(b, pieces[id], lens[id], err) == 1;
            lm_gmatch_free(b);
            if (ok != allowed[id]) {
                if (!mismatches) printf("# at byte %zu token %d (%s): mask %d, feeding %d\n", pos, id, pieces[id], allowed[id], ok);
                mismatches++;
            }
        }
        /* advance by the longest allowed piece that continues the document */
        int best = -1;
        for (int id = 0; id < n; id++)
            if (allowed[id] && lens[id] <= len - pos && !memcmp(pieces[id], doc + pos, lens[id]) && (best < 0 || lens[id] > lens[best]))
                best = id;
        CHECKF(best >= 0, "no piece continues the document at byte %zu", pos);
        if (best < 0) break;
        CHECK_EQ_INT(lm_gmatch_accept(m, pieces[best], lens[best], err), 1);
        pos += lens[best];
        steps++;
    }
    CHECK_EQ_INT(mismatches, 0);
    CHECK(pos == len && lm_gmatch_complete(m));
    if (g) lm_gmatch_free(m);
    lm_grammar_free(g);
    lm_token_trie_free(t);
}

/* With a budget of b bytes after the token, only tokens that leave an ending of at most
 * b bytes are allowed; the shortest ending is counted right. */
static void test_mask_budget(void) {
    static const char *const vocab[] = {"a", "aa", "}", "a}", "]}", "]"};
    size_t lens[6];
    for (int i = 0; i < 6; i++) lens[i] = strlen(vocab[i]);
    char err[LM_ERR_LEN];
    lm_token_trie *t;
    CHECK(lm_token_trie_new(vocab, lens, 6, &t, err) == 0);
    lm_grammar *g = parse("root ::= \"{\" [a]* \"]\"? \"}\"");
    lm_gmatch *m;
    CHECK(g && lm_gmatch_new(g, &m, err) == 0);
    CHECK_EQ_INT(lm_gmatch_min_bytes(m), 2);
    CHECK_EQ_INT(lm_gmatch_accept(m, "{", 1, err), 1);
    CHECK_EQ_INT(lm_gmatch_min_bytes(m), 1);
    uint8_t allowed[6];
    CHECK_EQ_INT(lm_gmatch_mask(m, t, -1, allowed, err), 6);
    CHECK_EQ_INT(lm_gmatch_mask(m, t, 1, allowed, err), 6); /* each leaves at most one byte ("}") */
    CHECK_EQ_INT(lm_gmatch_mask(m, t, 0, allowed, err), 3); /* only those that end it: "}", "a}", "]}" */
    CHECK(allowed[2] && allowed[3] && allowed[4] && !allowed[0] && !allowed[5]);
    CHECK_EQ_INT(lm_gmatch_accept(m, "a}", 2, err), 1);
    CHECK_EQ_INT(lm_gmatch_min_bytes(m), 0);
    lm_gmatch_free(m);
    lm_grammar_free(g);
    lm_token_trie_free(t);
}

int main(void) {
    TEST_CASE("grammar_literals_and_alternatives", test_literals_and_alternatives);
    TEST_CASE("grammar_repetition", test_repetition);
    TEST_CASE("grammar_classes_and_utf8", test_classes_and_utf8);
    TEST_CASE("grammar_recursion", test_recursion);
    TEST_CASE("grammar_parse_errors", test_parse_errors);
    TEST_CASE("grammar_token_mask", test_token_mask);
    TEST_CASE("grammar_mask_matches_brute_force", test_mask_matches_brute_force);
    TEST_CASE("grammar_mask_budget", test_mask_budget);
    TEST_CASE("json_schema_objects", test_schema_objects);
    TEST_CASE("json_schema_keywords", test_schema_keywords);
    TEST_CASE("json_schema_unsupported", test_schema_unsupported);
    return th_failed_cases ? 1 : 0;
}

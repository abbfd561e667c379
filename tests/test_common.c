#include "harness.h"
#include "common/buf.h"
#include "common/dir_replace.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/str.h"
#include "common/utf8.h"
#include "platform/fs.h"
#include "platform/platform.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_errf(void) {
    char err[LM_ERR_LEN] = "";
    CHECK(lm_errf(err, "bad tensor %s", "x") == -1);
    CHECK(strcmp(err, "bad tensor x") == 0);
    lm_err_prefix(err, "file %d", 3);
    CHECK(strcmp(err, "file 3: bad tensor x") == 0);
    CHECK(lm_errf(NULL, "ignored") == -1);
}

/* ---- lm_strbuf ---------------------------------------------------------------------- */

static void test_buf_append(void) {
    lm_strbuf b = {0};
    CHECK(b.data == NULL);
    CHECK(lm_strbuf_append(&b, "", 0) == 0); /* an empty append still gives a "" string */
    CHECK(b.data && b.data[0] == 0 && b.len == 0);
    CHECK(lm_strbuf_puts(&b, "abc") == 0);
    CHECK(lm_strbuf_putc(&b, '-') == 0);
    CHECK(lm_strbuf_printf(&b, "%d/%s", 42, "x") == 0);
    CHECK(strcmp(b.data, "abc-42/x") == 0 && b.len == 8);
    /* growth across many doublings keeps every byte */
    for (int i = 0; i < 10000; i++) lm_strbuf_putc(&b, (char)('a' + i % 26));
    CHECK(b.len == 10008 && b.cap > b.len && b.data[b.len] == 0);
    CHECK(b.data[8] == 'a' && b.data[8 + 27] == 'b');
    /* appending a part of itself survives the move of the data */
    size_t before = b.len;
    lm_strbuf_append(&b, b.data, 3);
    CHECK(b.len == before + 3 && memcmp(b.data + before, "abc", 3) == 0);
    lm_strbuf_consume(&b, before);
    CHECK(strcmp(b.data, "abc") == 0);
    lm_strbuf_consume(&b, 100);
    CHECK(b.len == 0 && b.data[0] == 0);
    lm_strbuf_puts(&b, "xyz");
    lm_strbuf_reset(&b);
    CHECK(b.len == 0 && b.data[0] == 0 && !b.failed);
    lm_strbuf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
}

static void test_buf_printf_long(void) {
    lm_strbuf b = {0};
    char big[1000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK(lm_strbuf_printf(&b, "<%s>", big) == 0); /* longer than any fixed scratch */
    CHECK(b.len == 1001 && b.data[0] == '<' && b.data[1000] == '>');
    lm_strbuf_free(&b);
}

static void test_buf_limit_and_sticky(void) {
    lm_strbuf b = {.limit = 5};
    CHECK(lm_strbuf_puts(&b, "abcde") == 0);
    CHECK(lm_strbuf_putc(&b, 'f') == -1); /* one past the limit */
    CHECK(b.failed && b.len == 5 && strcmp(b.data, "abcde") == 0);
    /* sticky: nothing is appended after a failure, even what would fit */
    b.limit = 0;
    CHECK(lm_strbuf_putc(&b, 'g') == -1);
    CHECK(lm_strbuf_printf(&b, "%d", 1) == -1);
    CHECK(b.len == 5);
    lm_strbuf_free(&b);
    CHECK(!b.failed && b.limit == 0);
}

static void test_buf_overflow(void) {
    lm_strbuf b = {0};
    lm_strbuf_puts(&b, "ab");
    /* a size that wraps around size_t is refused, not allocated short */
    CHECK(lm_strbuf_reserve(&b, SIZE_MAX - 1) == -1);
    CHECK(b.failed);
    CHECK(strcmp(b.data, "ab") == 0);
    lm_strbuf_free(&b);
}

static void test_grow(void) {
    int32_t *v = NULL;
    size_t cap = 0, n = 0;
    for (int i = 0; i < 1000; i++) {
        CHECK(LM_GROW(v, cap, n + 1) == 0);
        v[n++] = i;
    }
    CHECK(cap >= 1000 && v[999] == 999 && v[0] == 0);
    size_t cap_before = cap;
    CHECK(LM_GROW(v, cap, 10) == 0 && cap == cap_before); /* enough already: nothing moves */
    int32_t *keep = v;
    /* element count * size overflowing size_t: refused, array and capacity untouched */
    CHECK(LM_GROW(v, cap, SIZE_MAX / 2) == -1);
    CHECK(v == keep && cap == cap_before && v[999] == 999);
    CHECK(LM_GROW(v, cap, SIZE_MAX / sizeof *v + 1) == -1);
    CHECK(v == keep && cap == cap_before);
    free(v);
    int16_t *w = NULL;
    CHECK(LM_RESIZE(w, 5) == 0 && w != NULL); /* exactly n elements, for parallel arrays */
    w[4] = 7;
    CHECK(LM_RESIZE(w, 0) == -1 && w[4] == 7);
    CHECK(LM_RESIZE(w, SIZE_MAX / 2 + 1) == -1 && w[4] == 7); /* n * 2 bytes overflows */
    free(w);
    CHECK(lm_grow_cap(0, 1, 4) == 16);
    CHECK(lm_grow_cap(16, 17, 4) == 32);
    CHECK(lm_grow_cap(40, 30, 4) == 40);
    CHECK(lm_grow_cap(0, SIZE_MAX, 2) == 0);
    CHECK(lm_grow_cap(SIZE_MAX / 8 + 1, SIZE_MAX / 8 + 2, 4) == SIZE_MAX / 4); /* doubling clamps at the max */
}

static void test_buf_read_stream(void) {
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f) return;
    for (int i = 0; i < 100000; i++) fputc('0' + i % 10, f);
    rewind(f);
    lm_strbuf b = {0};
    CHECK(lm_strbuf_read_stream(&b, f, 0) == LM_READ_OK);
    CHECK(b.len == 100000 && b.data[99999] == '9' && b.data[100000] == 0);
    lm_strbuf_free(&b);
    rewind(f);
    CHECK(lm_strbuf_read_stream(&b, f, 99999) == LM_READ_TOO_LONG);
    lm_strbuf_free(&b);
    rewind(f);
    CHECK(lm_strbuf_read_stream(&b, f, 100000) == LM_READ_OK); /* exactly the limit is fine */
    lm_strbuf_free(&b);
    fclose(f);
    f = tmpfile();
    if (!f) return;
    CHECK(lm_strbuf_read_stream(&b, f, 0) == LM_READ_OK); /* empty stream: "" */
    CHECK(b.data && b.len == 0 && b.data[0] == 0);
    lm_strbuf_free(&b);
    fclose(f);
}

/* ---- UTF-8 ----------------------------------------------------------------------- */

/* Decodes s whole with flags; writes the code points (0xFFFD per invalid subpart) into
 * cps and returns how many. */
static size_t decode_all(const char *s, size_t n, int flags, uint32_t *cps) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, k = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = lm_utf8_decode(u + i, n - i, &cp, flags);
        if (!len) {
            CHECK(cp == 0xFFFD);
            int incomplete;
            len = lm_utf8_bad_run_flags(u + i, n - i, &incomplete, flags);
        }
        cps[k++] = cp;
        i += len;
    }
    return k;
}

static void test_utf8_valid_sequences(void) {
    struct { const char *s; uint32_t cp; size_t len; } ok[] = {
        {"\x00", 0, 1}, {"A", 0x41, 1}, {"\x7F", 0x7F, 1},
        {"\xC2\x80", 0x80, 2}, {"\xDF\xBF", 0x7FF, 2},
        {"\xE0\xA0\x80", 0x800, 3}, {"\xED\x9F\xBF", 0xD7FF, 3}, {"\xEE\x80\x80", 0xE000, 3},
        {"\xEF\xBF\xBF", 0xFFFF, 3}, {"\xF0\x90\x80\x80", 0x10000, 4},
        {"\xF0\x9F\x98\x80", 0x1F600, 4}, {"\xF4\x8F\xBF\xBF", 0x10FFFF, 4},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint32_t cp = 0;
        size_t len = lm_utf8_next((const unsigned char *)ok[i].s, ok[i].len, &cp);
        CHECKF(len == ok[i].len && cp == ok[i].cp, "case %zu: len %zu cp %x", i, len, (unsigned)cp);
        char out[4];
        CHECK(lm_utf8_put(ok[i].cp, out) == ok[i].len && memcmp(out, ok[i].s, ok[i].len) == 0);
    }
    char out[4];
    CHECK(lm_utf8_put(0x110000, out) == 3 && memcmp(out, "\xEF\xBF\xBD", 3) == 0); /* beyond Unicode */
    CHECK(lm_utf8_put(0xD800, out) == 3 && memcmp(out, "\xED\xA0\x80", 3) == 0);   /* surrogates as 3 bytes */
}

static void test_utf8_invalid_sequences(void) {
    /* Each case: bytes, their length, and the maximal subparts (one U+FFFD each) the
     * strict decoder must see; valid code points between them as themselves. */
    struct { const char *s; size_t n; size_t ncp; uint32_t cps[6]; } bad[] = {
        {"\x80", 1, 1, {0xFFFD}},                               /* lone continuation */
        {"\xBF\x41", 2, 2, {0xFFFD, 0x41}},
        {"\xC0\x80", 2, 2, {0xFFFD, 0xFFFD}},                   /* overlong NUL */
        {"\xC1\xBF", 2, 2, {0xFFFD, 0xFFFD}},                   /* overlong 2-byte */
        {"\xE0\x80\x80", 3, 3, {0xFFFD, 0xFFFD, 0xFFFD}},       /* overlong 3-byte */
        {"\xE0\x9F\xBF", 3, 3, {0xFFFD, 0xFFFD, 0xFFFD}},
        {"\xF0\x80\x80\x80", 4, 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}}, /* overlong 4-byte */
        {"\xF0\x8F\xBF\xBF", 4, 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}},
        {"\xED\xA0\x80", 3, 3, {0xFFFD, 0xFFFD, 0xFFFD}},       /* high surrogate */
        {"\xED\xBF\xBF", 3, 3, {0xFFFD, 0xFFFD, 0xFFFD}},       /* low surrogate */
        {"\xF4\x90\x80\x80", 4, 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}}, /* U+110000 */
        {"\xF5\x80\x80\x80", 4, 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}}, /* impossible leads */
        {"\xF8\x88\x80\x80\x80", 5, 5, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}},
        {"\xFE\xFF", 2, 2, {0xFFFD, 0xFFFD}},
        {"\xC3", 1, 1, {0xFFFD}},                               /* truncated at the end */
        {"\xE4\xBD", 2, 1, {0xFFFD}},
        {"\xF0\x9F\x98", 3, 1, {0xFFFD}},
        {"\xE4\x41", 2, 2, {0xFFFD, 0x41}},                     /* interrupted */
        {"\xE4\xBD\x41", 3, 2, {0xFFFD, 0x41}},
        {"\xF0\x9F\x98\x41", 4, 2, {0xFFFD, 0x41}},
        {"\xC3\xA9\xC3", 3, 2, {0xE9, 0xFFFD}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint32_t cps[16];
        size_t k = decode_all(bad[i].s, bad[i].n, 0, cps);
        int same = k == bad[i].ncp;
        for (size_t j = 0; same && j < k; j++) same = cps[j] == bad[i].cps[j];
        CHECKF(same, "case %zu: %zu code points, first %x", i, k, (unsigned)cps[0]);
        CHECKF(!lm_utf8_valid(bad[i].s, bad[i].n), "case %zu counted valid", i);
    }
    /* incomplete: only a valid prefix cut short by the end of input */
    int inc;
    CHECK(lm_utf8_bad_run((const unsigned char *)"\xF0\x9F\x98", 3, &inc) == 3 && inc == 1);
    CHECK(lm_utf8_bad_run((const unsigned char *)"\xF0\x9F\x41", 3, &inc) == 2 && inc == 0);
    CHECK(lm_utf8_bad_run((const unsigned char *)"\xED\xA0", 2, &inc) == 1 && inc == 0);
    CHECK(lm_utf8_complete_prefix((const unsigned char *)"ab\xF0\x9F\x98", 5) == 2);
    CHECK(lm_utf8_complete_prefix((const unsigned char *)"ab\xF0\x9F\x98\x80", 6) == 6);
    CHECK(lm_utf8_complete_prefix((const unsigned char *)"ab\xFF", 3) == 3); /* invalid, not pending */
    char *out;
    size_t n;
    CHECK(lm_utf8_sanitize("a\xC0\x80z", 4, &out, &n) == 0);
    CHECK(n == 8 && memcmp(out, "a\xEF\xBF\xBD\xEF\xBF\xBDz", 8) == 0);
    free(out);
}

static void test_utf8_surrogates_flag(void) {
    /* With LM_UTF8_SURROGATES an encoded surrogate is a code point; nothing else changes. */
    uint32_t cps[8];
    size_t k = decode_all("\xED\xA0\x80\xED\xBF\xBF", 6, LM_UTF8_SURROGATES, cps);
    CHECK(k == 2 && cps[0] == 0xD800 && cps[1] == 0xDFFF);
    k = decode_all("\xC0\x80", 2, LM_UTF8_SURROGATES, cps);
    CHECK(k == 2 && cps[0] == 0xFFFD && cps[1] == 0xFFFD);
    k = decode_all("\xF4\x90\x80\x80", 4, LM_UTF8_SURROGATES, cps);
    CHECK(k == 4 && cps[0] == 0xFFFD);
    k = decode_all("\xED\xA0", 2, LM_UTF8_SURROGATES, cps); /* truncated surrogate: one subpart */
    CHECK(k == 1 && cps[0] == 0xFFFD);
    uint32_t cp;
    CHECK(lm_utf8_decode((const unsigned char *)"\xED\xA0\x80", 3, &cp, 0) == 0 && cp == 0xFFFD);
}

/* ---- directory replace ------------------------------------------------------------- */

static char test_root[256];

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static int file_is(const char *path, const char *text) {
    char got[64] = "";
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(got, 1, sizeof got - 1, f);
    fclose(f);
    got[n] = 0;
    return strcmp(got, text) == 0;
}

static void test_dir_replace_missing_target(void) {
    char out[512], path[600], err[LM_ERR_LEN];
    snprintf(out, sizeof out, "%s/new", test_root);
    CHECK(lm_out_dir_check(out, 0, err) == 0);
    char *tmp = lm_dir_temp_create(out, err);
    CHECK(tmp != NULL);
    if (!tmp) return;
    CHECK(lm_path_type(tmp) == LM_PATH_DIR && lm_dir_is_empty(tmp, err) == 1);
    snprintf(path, sizeof path, "%s/a.txt", tmp);
    CHECK(write_text(path, "fresh") == 0);
    CHECK(lm_dir_replace(tmp, out, err) == 0);
    CHECK(lm_path_type(tmp) == LM_PATH_MISSING);
    snprintf(path, sizeof path, "%s/a.txt", out);
    CHECK(file_is(path, "fresh"));
    free(tmp);
}

static void test_dir_replace_existing_target(void) {
    char out[512], path[600], err[LM_ERR_LEN];
    snprintf(out, sizeof out, "%s/old", test_root);
    CHECK(lm_mkdir(out, err) == 0);
    CHECK(lm_out_dir_check(out, 0, err) == 0); /* empty: fine without force */
    snprintf(path, sizeof path, "%s/stale.txt", out);
    CHECK(write_text(path, "stale") == 0);
    CHECK(lm_out_dir_check(out, 0, err) == -1);
    CHECK_STR_CONTAINS(err, "not empty (use --force");
    CHECK(lm_out_dir_check(out, 1, err) == 0);
    char *tmp = lm_dir_temp_create(out, err);
    CHECK(tmp != NULL);
    if (!tmp) return;
    snprintf(path, sizeof path, "%s/a.txt", tmp);
    CHECK(write_text(path, "new") == 0);
    CHECK(lm_dir_replace(tmp, out, err) == 0);
    snprintf(path, sizeof path, "%s/a.txt", out);
    CHECK(file_is(path, "new"));
    snprintf(path, sizeof path, "%s/stale.txt", out);
    CHECK(lm_path_type(path) == LM_PATH_MISSING); /* the old directory is gone, not merged */
    snprintf(path, sizeof path, "%s.lazymoe-old-%ld", out, (long)getpid());
    CHECK(lm_path_type(path) == LM_PATH_MISSING);
    free(tmp);
    /* a file in the way is refused */
    snprintf(path, sizeof path, "%s/file", test_root);
    CHECK(write_text(path, "x") == 0);
    CHECK(lm_out_dir_check(path, 1, err) == -1);
    CHECK_STR_CONTAINS(err, "is not a directory");
}

static void test_dir_replace_rename_fails(void) {
    /* The rename of tmp to out fails when out lies inside tmp (a directory cannot move
     * into itself): the old out must come back untouched and tmp stay for cleanup. */
    char tmp[512], out[600], path[700], err[LM_ERR_LEN];
    snprintf(tmp, sizeof tmp, "%s/t", test_root);
    snprintf(out, sizeof out, "%s/o", tmp);
    CHECK(lm_mkdir(tmp, err) == 0 && lm_mkdir(out, err) == 0);
    snprintf(path, sizeof path, "%s/keep.txt", out);
    CHECK(write_text(path, "keep") == 0);
    CHECK(lm_dir_replace(tmp, out, err) == -1);
    CHECK_STR_CONTAINS(err, "cannot rename");
    CHECK(file_is(path, "keep"));
    CHECK(lm_path_type(tmp) == LM_PATH_DIR);
    snprintf(path, sizeof path, "%s.lazymoe-old-%ld", out, (long)getpid());
    CHECK(lm_path_type(path) == LM_PATH_MISSING);
    /* and with no out at all: an error, nothing created */
    CHECK(lm_remove_tree(out, err) == 0);
    CHECK(lm_dir_replace(tmp, out, err) == -1);
    CHECK(lm_path_type(out) == LM_PATH_MISSING && lm_path_type(tmp) == LM_PATH_DIR);
    /* a missing tmp is an error too */
    snprintf(path, sizeof path, "%s/none", test_root);
    CHECK(lm_dir_replace(path, out, err) == -1);
}

/* lm_fnv1a against the published FNV-1a 64-bit test vectors (Fowler, Noll, Vo), and
 * fed in pieces it equals one call over the whole. */
static void test_fnv1a(void) {
    CHECK(lm_fnv1a(LM_FNV1A_INIT, "", 0) == 0xcbf29ce484222325ull);
    CHECK(lm_fnv1a(LM_FNV1A_INIT, "a", 1) == 0xaf63dc4c8601ec8cull);
    CHECK(lm_fnv1a(LM_FNV1A_INIT, "foobar", 6) == 0x85944171f73967e8ull);
    CHECK(lm_fnv1a(lm_fnv1a(LM_FNV1A_INIT, "foo", 3), "bar", 3) == 0x85944171f73967e8ull);
}

static void test_hex_digit(void) {
    CHECK(lm_hex_digit('0') == 0 && lm_hex_digit('9') == 9 && lm_hex_digit('a') == 10 && lm_hex_digit('F') == 15);
    CHECK(lm_hex_digit('g') == -1 && lm_hex_digit('G') == -1 && lm_hex_digit('/') == -1 && lm_hex_digit(':') == -1);
    CHECK(lm_hex_digit('@') == -1 && lm_hex_digit('`') == -1 && lm_hex_digit(0) == -1 && lm_hex_digit((char)0xE0) == -1);
}

/* lm_mkdir_parents: makes every missing level, accepts what exists (also through a
 * symbolic link), and names the component it could not make. */
static void test_mkdir_parents(void) {
    char dir[600], path[700], err[LM_ERR_LEN];
    snprintf(dir, sizeof dir, "%s/p/q//r/", test_root);
    CHECK(lm_mkdir_parents(dir, err) == 0);
    snprintf(path, sizeof path, "%s/p/q/r", test_root);
    CHECK(lm_path_type(path) == LM_PATH_DIR);
    CHECK(lm_mkdir_parents(path, err) == 0); /* exists: fine */
    snprintf(dir, sizeof dir, "%s/link", test_root);
    CHECK(symlink(path, dir) == 0);
    snprintf(path, sizeof path, "%s/link/s", test_root);
    CHECK(lm_mkdir_parents(dir, err) == 0 && lm_mkdir_parents(path, err) == 0);
    snprintf(path, sizeof path, "%s/p/q/r/s", test_root);
    CHECK(lm_path_type(path) == LM_PATH_DIR);
    /* a regular file in the way: named in the error */
    snprintf(path, sizeof path, "%s/p/file", test_root);
    CHECK(write_text(path, "x") == 0);
    snprintf(dir, sizeof dir, "%s/p/file/sub/deeper", test_root);
    err[0] = 0;
    CHECK(lm_mkdir_parents(dir, err) == -1);
    CHECKF(strstr(err, "cannot create directory") && strstr(err, "/p/file: "), "%s", err);
    CHECK(lm_mkdir_parents(path, err) == -1); /* the file itself is no directory */
    CHECK(lm_mkdir_parents("", err) == -1);
}

/* lm_user_cache_dir follows the XDG rule: an absolute XDG_CACHE_HOME, else
 * $HOME/.cache; neither set is an error. */
static void test_user_cache_dir(void) {
    char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char *saved_xdg = xdg ? strdup(xdg) : NULL, *saved_home = home ? strdup(home) : NULL;
    char out[64], err[LM_ERR_LEN];
    setenv("XDG_CACHE_HOME", "/x/cache", 1);
    setenv("HOME", "/h", 1);
    CHECK(lm_user_cache_dir(out, sizeof out, err) == 0 && !strcmp(out, "/x/cache/lazymoe"));
    setenv("XDG_CACHE_HOME", "relative", 1); /* not absolute: ignored, as the spec says */
    CHECK(lm_user_cache_dir(out, sizeof out, err) == 0 && !strcmp(out, "/h/.cache/lazymoe"));
    unsetenv("XDG_CACHE_HOME");
    CHECK(lm_user_cache_dir(out, sizeof out, err) == 0 && !strcmp(out, "/h/.cache/lazymoe"));
    CHECK(lm_user_cache_dir(out, 10, err) == -1 && strstr(err, "too long"));
    unsetenv("HOME");
    CHECK(lm_user_cache_dir(out, sizeof out, err) == -1 && strstr(err, "HOME"));
    if (saved_xdg) setenv("XDG_CACHE_HOME", saved_xdg, 1);
    if (saved_home) setenv("HOME", saved_home, 1);
    free(saved_xdg);
    free(saved_home);
}

static void test_path_parent(void) {
    char *p;
    CHECK((p = lm_path_parent("a/b/c")) && strcmp(p, "a/b") == 0);
    free(p);
    CHECK((p = lm_path_parent("/a")) && strcmp(p, "/") == 0);
    free(p);
    CHECK((p = lm_path_parent("a")) && strcmp(p, ".") == 0);
    free(p);
}

int main(void) {
    TEST_CASE("errf_and_prefix", test_errf);
    TEST_CASE("buf_append", test_buf_append);
    TEST_CASE("buf_printf_long", test_buf_printf_long);
    TEST_CASE("buf_limit_and_sticky", test_buf_limit_and_sticky);
    TEST_CASE("buf_overflow", test_buf_overflow);
    TEST_CASE("grow", test_grow);
    TEST_CASE("buf_read_stream", test_buf_read_stream);
    TEST_CASE("utf8_valid_sequences", test_utf8_valid_sequences);
    TEST_CASE("utf8_invalid_sequences", test_utf8_invalid_sequences);
    TEST_CASE("utf8_surrogates_flag", test_utf8_surrogates_flag);
    TEST_CASE("fnv1a_test_vectors", test_fnv1a);
    TEST_CASE("hex_digit", test_hex_digit);
    const char *t = getenv("TMPDIR");
    snprintf(test_root, sizeof test_root, "%s/lazymoe-test-common-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(test_root)) {
        printf("FAIL dir_replace: cannot create a temporary directory\n");
        return 1;
    }
    TEST_CASE("dir_replace_missing_target", test_dir_replace_missing_target);
    TEST_CASE("dir_replace_existing_target", test_dir_replace_existing_target);
    TEST_CASE("dir_replace_rename_fails", test_dir_replace_rename_fails);
    TEST_CASE("path_parent", test_path_parent);
    TEST_CASE("mkdir_parents", test_mkdir_parents);
    TEST_CASE("user_cache_dir", test_user_cache_dir);
    lm_remove_tree(test_root, NULL);
    TEST_EXIT();
}

/* GGUF reader: well-formed files (single and split, every KV type, nested arrays),
 * and hostile ones that must give a clear error naming the file or tensor instead of
 * crashing. Files are built with the writer (formats/gguf_write.h) and then damaged. */
#include "harness.h"

#include "common/error.h"
#include "formats/gguf.h"
#include "formats/gguf_write.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static const float A[6] = {1, 2, 3, 4, 5, 6};
static uint8_t Q8[2 * 34]; /* two Q8_0 blocks: one row of 64 */

/* A small valid model-like file: every scalar KV type, a string array, an int array,
 * a nested array, an F32 [2 x 3] matrix and a Q8_0 row. */
static gguf_writer *good_writer(void) {
    gguf_writer *w = gguf_w_new();
    gguf_w_str(w, "general.architecture", "qwen3moe");
    gguf_w_u32(w, "qwen3moe.block_count", 2);
    gguf_w_i32(w, "i32", -5);
    gguf_w_u64(w, "u64", 1ull << 40);
    gguf_w_f32(w, "f32", 0.5f);
    gguf_w_bool(w, "flag", 1);
    uint8_t raw_i8[5] = {GGUF_TYPE_I8, 0, 0, 0, 0xfe}; /* -2 */
    gguf_w_raw(w, "i8", raw_i8, 5);
    uint8_t raw_f64[12] = {GGUF_TYPE_F64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f}; /* 1.5 */
    gguf_w_raw(w, "f64", raw_f64, 12);
    const char *toks[3] = {"a", "", "\xc4\xa0the"};
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, 3);
    int32_t ids[3] = {7, -1, 9};
    gguf_w_arr(w, "ids", GGUF_TYPE_I32, ids, 3);
    /* array of 2 arrays of u16: [[1, 2], []] */
    uint8_t nested[] = {GGUF_TYPE_ARRAY, 0, 0, 0, GGUF_TYPE_ARRAY, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
                        GGUF_TYPE_U16,  0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0,
                        GGUF_TYPE_U16,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    gguf_w_raw(w, "nested", nested, sizeof nested);
    int64_t ne[2] = {3, 2};
    gguf_w_tensor(w, "ta", 0, 2, ne, A, sizeof A, 0);
    int64_t ne_q[1] = {64};
    for (size_t i = 0; i < sizeof Q8; i++) Q8[i] = (uint8_t)(i * 3);
    gguf_w_tensor(w, "tq", 8, 1, ne_q, Q8, sizeof Q8, 0);
    return w;
}

static void path_of(char *p, size_t n, const char *name) { snprintf(p, n, "%s/%s", tmpdir, name); }

static void write_bytes(const char *name, const uint8_t *b, size_t n) {
    char p[512];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    if (n) fwrite(b, 1, n, f);
    fclose(f);
}

static int open_err(const char *name, char *err) {
    char p[512];
    path_of(p, sizeof p, name);
    gguf_archive *a = NULL;
    err[0] = 0;
    int rc = gguf_open(&a, p, err);
    gguf_close(a);
    return rc;
}

static void good_file(void) {
    char err[LM_ERR_LEN], p[512];
    gguf_writer *w = good_writer();
    path_of(p, sizeof p, "good.gguf");
    CHECKF(gguf_w_save(w, p, err) == 0, "%s", err);
    gguf_w_free(w);
    gguf_archive *a = NULL;
    CHECKF(gguf_open(&a, p, err) == 0, "%s", err);
    if (!a) return;
    CHECK(a->nfiles == 1 && a->files[0].version == 3 && a->files[0].alignment == 32);
    int64_t v = 0;
    double d = 0;
    int b = 0;
    char *s = NULL;
    CHECK(gguf_get_int(a, "qwen3moe.block_count", &v, err) == 1 && v == 2);
    CHECK(gguf_get_int(a, "i32", &v, err) == 1 && v == -5);
    CHECK(gguf_get_int(a, "i8", &v, err) == 1 && v == -2);
    CHECK(gguf_get_int(a, "u64", &v, err) == 1 && v == (1ll << 40));
    CHECK(gguf_get_num(a, "f32", &d, err) == 1 && d == 0.5);
    CHECK(gguf_get_num(a, "f64", &d, err) == 1 && d == 1.5);
    CHECK(gguf_get_bool(a, "flag", &b, err) == 1 && b == 1);
    CHECK(gguf_get_str(a, "general.architecture", &s, err) == 1 && s && strcmp(s, "qwen3moe") == 0);
    free(s);
    CHECK(gguf_get_int(a, "missing", &v, err) == 0);
    CHECK(gguf_get_int(a, "f32", &v, err) == -1);
    CHECK_STR_CONTAINS(err, "'f32' is a f32, expected an integer");
    CHECK(gguf_get_str(a, "flag", &s, err) == -1 && s == NULL);
    const gguf_kv *kv = gguf_find_kv(a, "tokenizer.ggml.tokens");
    CHECK(kv && kv->type == GGUF_TYPE_ARRAY && kv->arr_type == GGUF_TYPE_STRING && kv->arr_n == 3);
    if (kv && kv->strs) CHECK(kv->strs[1].len == 0 && kv->strs[2].len == 5 && memcmp(kv->strs[2].p, "\xc4\xa0the", 5) == 0);
    kv = gguf_find_kv(a, "ids");
    CHECK(kv && kv->arr_n == 3 && gguf_arr_int(kv, 1) == -1 && gguf_arr_int(kv, 2) == 9);
    kv = gguf_find_kv(a, "nested");
    CHECK(kv && kv->arr_type == GGUF_TYPE_ARRAY && kv->arr_n == 2);
    const gguf_tensor *t = gguf_find_tensor(a, "ta");
    CHECK(t && t->dtype == LM_DT_F32 && t->n_dims == 2 && t->ne[0] == 3 && t->ne[1] == 2 && t->nbytes == 24);
    CHECK(t && t->offset % 32 == 0);
    float back[6] = {0};
    CHECK(t && gguf_read_range(a, t, 0, 24, back, err) == 0 && memcmp(back, A, 24) == 0);
    CHECK(t && gguf_read_range(a, t, 20, 8, back, err) == -1);
    t = gguf_find_tensor(a, "tq");
    CHECK(t && t->dtype == LM_DT_Q8_0 && t->nbytes == sizeof Q8 && t->offset % 32 == 0);
    uint8_t qb[sizeof Q8];
    CHECK(t && gguf_read_range(a, t, 0, sizeof qb, qb, err) == 0 && memcmp(qb, Q8, sizeof qb) == 0);
    CHECK(gguf_find_tensor(a, "nope") == NULL);
    gguf_close(a);
    /* a larger alignment is written as general.alignment and honoured */
    w = good_writer();
    gguf_w_set_alignment(w, 256);
    path_of(p, sizeof p, "align.gguf");
    CHECKF(gguf_w_save(w, p, err) == 0, "%s", err);
    gguf_w_free(w);
    CHECKF(gguf_open(&a, p, err) == 0, "%s", err);
    if (a) {
        CHECK(a->files[0].alignment == 256 && a->files[0].data_start % 256 == 0);
        for (int i = 0; i < a->ntensors; i++) CHECK(a->tensors[i].offset % 256 == 0);
    }
    gguf_close(a);
}

/* Finds tensor `name`'s info in a file buffer and returns the position of its n_dims. */
static size_t info_pos(const uint8_t *b, size_t n, const char *name) {
    size_t k = strlen(name);
    for (size_t i = 8; i + 8 + k <= n; i++) {
        uint64_t len = 0;
        for (int j = 7; j >= 0; j--) len = len << 8 | b[i + (size_t)j];
        if (len == k && memcmp(b + i + 8, name, k) == 0 && i + 8 + k + 4 <= n && b[i + 8 + k] <= 4 &&
            b[i + 8 + k + 1] == 0)
            return i + 8 + k;
    }
    return 0;
}

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Patches tensor `name`: its type (type >= 0) and/or its offset (off >= 0). */
static void patch(uint8_t *b, size_t n, const char *name, int64_t type, int64_t off) {
    size_t p = info_pos(b, n, name);
    uint32_t nd = b[p];
    size_t tp = p + 4 + 8 * nd;
    if (type >= 0) put_le(b + tp, (uint64_t)type, 4);
    if (off >= 0) put_le(b + tp + 4, (uint64_t)off, 8);
}

static void hostile_files(void) {
    char err[LM_ERR_LEN];
    uint8_t *base = NULL;
    size_t n = 0;
    gguf_writer *w = good_writer();
    CHECKF(gguf_w_to_buffer(w, &base, &n, err) == 0, "%s", err);
    gguf_w_free(w);
    if (!base) return;
    uint8_t *b = malloc(n);
#define CASE(label, code, want)                                                                   \
    do {                                                                                          \
        memcpy(b, base, n);                                                                       \
        size_t len = n;                                                                           \
        code;                                                                                     \
        write_bytes("h.gguf", b, len);                                                            \
        CHECKF(open_err("h.gguf", err) == -1, "%s: opened", label);                               \
        CHECKF(strstr(err, want) != NULL, "%s: \"%s\" lacks \"%s\"", label, err, want);           \
        CHECKF(strstr(err, "h.gguf") != NULL, "%s: \"%s\" does not name the file", label, err);   \
    } while (0)
    CASE("magic", b[0] = 'X', "not a GGUF file");
    CASE("v1", put_le(b + 4, 1, 4), "version 1 is not supported");
    CASE("v9", put_le(b + 4, 9, 4), "GGUF version 9 is not supported");
    CASE("big-endian", put_le(b + 4, 3u << 24, 4), "big-endian");
    CASE("tensor count", put_le(b + 8, 1ull << 40, 8), "do not fit in the file");
    CASE("kv count", put_le(b + 16, 1ull << 33, 8), "do not fit in the file");
    CASE("unknown type", patch(b, len, "tq", 99, -1), "tensor 'tq' has ggml type 99");
    CASE("unknown type 2", patch(b, len, "ta", 4, -1), "tensor 'ta' has ggml type 4");
    CASE("misaligned", patch(b, len, "tq", -1, 40), "tensor 'tq': offset 40 is not a multiple of the alignment 32");
    CASE("overlap", patch(b, len, "tq", -1, 0), "tensors 'ta' and 'tq' overlap");
    CASE("past end", patch(b, len, "tq", -1, 1 << 20), "tensor 'tq'");
    CASE("truncated data", len -= 10, "tensor 'tq' (Q8_0, 68 bytes at data offset 32) ends past the end of the file");
    CASE("block size", (b[info_pos(b, len, "tq") + 4] = 63), "not a multiple of Q8_0's block of 32");
    CASE("dims", (b[info_pos(b, len, "tq")] = 5), "tensor 'tq' has 5 dimensions");
    CASE("duplicate tensor", (b[info_pos(b, len, "tq") - 1] = 'a'), "tensor 'ta' appears twice");
    CASE("empty tensor name", put_le(b + info_pos(b, len, "tq") - 10, 0, 8), "tensor 2 of 2 has an empty");
    CASE("empty file", len = 0, "the header is truncated");
    /* a KV string length pointing far past the end */
    CASE("string length", put_le(b + 24, 1ull << 50, 8), "the header is truncated");
    free(b);
    /* every truncation of the file fails cleanly, names the file, and names what it cuts:
     * the KV (by number for its key, by key for its type and value), the tensor info (by
     * number for its name, by name for the rest) or the tensor whose data runs past the
     * end */
    static const char *const keys[] = {"general.architecture", "qwen3moe.block_count", "i32", "u64", "f32", "flag",
                                       "i8", "f64", "tokenizer.ggml.tokens", "ids", "nested"};
    enum { NK = sizeof keys / sizeof keys[0] };
    size_t key_at[NK + 1], from = 24;
    for (int k = 0; k < NK; k++) { /* where KV k's key (u64 length, bytes) starts */
        size_t kl = strlen(keys[k]);
        key_at[k] = 0;
        for (size_t i = from; !key_at[k] && i + 8 + kl <= n; i++)
            if (base[i] == kl && !memcmp(base + i + 1, "\0\0\0\0\0\0\0", 7) && !memcmp(base + i + 8, keys[k], kl))
                key_at[k] = i;
        CHECKF(key_at[k], "KV '%s' not found", keys[k]);
        from = key_at[k] + 8 + kl;
    }
    static const char *const tensors[] = {"ta", "tq"};
    size_t name_at[2], info_end[2];
    for (int t = 0; t < 2; t++) {
        size_t p = info_pos(base, n, tensors[t]);
        name_at[t] = p - 8 - strlen(tensors[t]);
        info_end[t] = p + 4 + 8 * base[p] + 4 + 8;
    }
    key_at[NK] = name_at[0];
    gguf_archive *full = NULL;
    write_bytes("t.gguf", base, n);
    char full_path[512];
    path_of(full_path, sizeof full_path, "t.gguf");
    CHECKF(gguf_open(&full, full_path, err) == 0, "%s", err);
    uint64_t data_start = full ? full->files[0].data_start : n;
    gguf_close(full);
    int all_fail = 1, named = 1, said = 1;
    for (size_t len = 0; len < n; len++) {
        write_bytes("t.gguf", base, len);
        if (open_err("t.gguf", err) != -1) all_fail = 0;
        if (!strstr(err, "t.gguf")) named = 0;
        char want[128] = "";
        for (int k = 0; k < NK; k++) {
            size_t kl = strlen(keys[k]);
            if (len >= key_at[k] && len < key_at[k] + 8 + kl)
                snprintf(want, sizeof want, "the key of KV %d of %d", k + 1, (int)NK);
            else if (len >= key_at[k] + 8 + kl && len < key_at[k] + 12 + kl)
                snprintf(want, sizeof want, "the type of KV '%s'", keys[k]);
            else if (len >= key_at[k] + 12 + kl && len < key_at[k + 1])
                snprintf(want, sizeof want, "'%s'", keys[k]); /* "the value of 'K'", "KV 'K': array ..." */
        }
        for (int t = 0; t < 2; t++) {
            size_t p = name_at[t] + 8 + strlen(tensors[t]);
            if (len >= name_at[t] && len < p) snprintf(want, sizeof want, "the name of tensor %d of 2", t + 1);
            else if (len >= p && len < info_end[t]) snprintf(want, sizeof want, "tensor '%s'", tensors[t]);
        }
        if (len >= 24 && ((len - 24) / 14 < NK || (len - 24) / 25 < 2)) /* too short for the counts */
            snprintf(want, sizeof want, "the header's counts (2 tensors, %d KVs) do not fit", (int)NK);
        if (len >= data_start) /* ta: 24 bytes at 0; tq: 68 at 32 */
            snprintf(want, sizeof want, "tensor '%s'", len - data_start < 24 ? "ta" : "tq");
        if (want[0] && !strstr(err, want)) {
            if (said) printf("# length %zu: \"%s\" lacks \"%s\"\n", len, err, want);
            said = 0;
        }
    }
    CHECK(all_fail && named && said);
    /* a file that shrinks once open: reading a tensor names the file and the tensor */
    write_bytes("t.gguf", base, n);
    CHECKF(gguf_open(&full, full_path, err) == 0, "%s", err);
    if (full) {
        CHECK(truncate(full_path, (off_t)data_start + 40) == 0);
        const gguf_tensor *t = gguf_find_tensor(full, "tq");
        uint8_t q[sizeof Q8];
        CHECK(t && gguf_read_range(full, t, 0, sizeof q, q, err) == -1);
        CHECKF(strstr(err, "t.gguf: tensor 'tq'") && strstr(err, "shorter than expected"), "%s", err);
        float back[6];
        t = gguf_find_tensor(full, "ta");
        CHECKF(t && gguf_read_range(full, t, 0, sizeof back, back, err) == 0, "%s", err);
    }
    gguf_close(full);
    free(base);
}

static void hostile_kvs(void) {
    char err[LM_ERR_LEN];
    struct {
        const char *label;
        const uint8_t *raw;
        size_t n;
        const char *want;
    } cases[] = {
        {"unknown kv type", (const uint8_t *)"\x0d\x00\x00\x00", 4, "unknown value type 13"},
        {"unknown array type", (const uint8_t *)"\x09\x00\x00\x00\x20\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00", 16,
         "array of unknown element type 32"},
        {"huge array", (const uint8_t *)"\x09\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00", 16,
         "does not fit in the file"},
        {"deep nesting",
         (const uint8_t *)"\x09\x00\x00\x00\x09\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                          "\x09\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                          "\x09\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                          "\x09\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                          "\x09\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",
         64, "nested deeper"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gguf_writer *w = gguf_w_new();
        gguf_w_raw(w, "bad.key", cases[i].raw, cases[i].n);
        gguf_w_u32(w, "after", 1);
        uint8_t *b = NULL;
        size_t n = 0;
        CHECK(gguf_w_to_buffer(w, &b, &n, err) == 0);
        gguf_w_free(w);
        write_bytes("kv.gguf", b, n);
        free(b);
        CHECKF(open_err("kv.gguf", err) == -1, "%s opened", cases[i].label);
        CHECKF(strstr(err, cases[i].want) != NULL, "%s: \"%s\" lacks \"%s\"", cases[i].label, err, cases[i].want);
    }
    /* duplicate keys, bad alignment */
    gguf_writer *w = gguf_w_new();
    gguf_w_u32(w, "k", 1);
    gguf_w_u32(w, "k", 2);
    char p[512];
    path_of(p, sizeof p, "dup.gguf");
    CHECK(gguf_w_save(w, p, err) == 0);
    gguf_w_free(w);
    CHECK(open_err("dup.gguf", err) == -1);
    CHECK_STR_CONTAINS(err, "KV 'k' appears twice");
    w = gguf_w_new();
    gguf_w_u32(w, "general.alignment", 48);
    path_of(p, sizeof p, "al.gguf");
    CHECK(gguf_w_save(w, p, err) == 0);
    gguf_w_free(w);
    CHECK(open_err("al.gguf", err) == -1);
    CHECK_STR_CONTAINS(err, "general.alignment must be a u32 power of two");
}

/* Writes part k (1-based) of a split model holding tensor `name`. */
static void write_part(const char *prefix, int k, int count, const char *name, int no, int total) {
    gguf_writer *w = gguf_w_new();
    if (k == 1) gguf_w_str(w, "general.architecture", "qwen3moe");
    gguf_w_u32(w, "split.no", (uint32_t)no);
    gguf_w_u32(w, "split.count", (uint32_t)count);
    gguf_w_i32(w, "split.tensors.count", total);
    int64_t ne[2] = {3, 2};
    gguf_w_tensor(w, name, 0, 2, ne, A, sizeof A, 0);
    char p[512], e[LM_ERR_LEN];
    snprintf(p, sizeof p, "%s/%s-%05d-of-%05d.gguf", tmpdir, prefix, k, count);
    if (gguf_w_save(w, p, e) != 0) printf("# %s\n", e);
    gguf_w_free(w);
}

static void split_files(void) {
    char err[LM_ERR_LEN], p[512];
    write_part("m", 1, 3, "t1", 0, 3);
    write_part("m", 2, 3, "t2", 1, 3);
    write_part("m", 3, 3, "t3", 2, 3);
    snprintf(p, sizeof p, "%s/m-00001-of-00003.gguf", tmpdir);
    gguf_archive *a = NULL;
    CHECKF(gguf_open(&a, p, err) == 0, "%s", err);
    if (a) {
        CHECK(a->nfiles == 3 && a->ntensors == 3);
        const gguf_tensor *t = gguf_find_tensor(a, "t3");
        float back[6];
        CHECK(t && t->file == 2 && gguf_read_range(a, t, 0, 24, back, err) == 0 && back[5] == 6);
        CHECK(gguf_find_kv(a, "general.architecture") != NULL);
    }
    gguf_close(a);
    /* opening a later part opens them all too */
    snprintf(p, sizeof p, "%s/m-00002-of-00003.gguf", tmpdir);
    CHECKF(gguf_open(&a, p, err) == 0 && a->ntensors == 3, "%s", err);
    gguf_close(a);
    a = NULL;
    /* a missing part */
    snprintf(p, sizeof p, "%s/m-00003-of-00003.gguf", tmpdir);
    unlink(p);
    CHECK(open_err("m-00001-of-00003.gguf", err) == -1);
    CHECK_STR_CONTAINS(err, "m-00003-of-00003.gguf");
    /* a part whose split.no is wrong */
    write_part("m", 3, 3, "t3", 1, 3);
    CHECK(open_err("m-00001-of-00003.gguf", err) == -1);
    CHECK_STR_CONTAINS(err, "say it is not part 3 of 3");
    /* the same tensor in two parts */
    write_part("m", 3, 3, "t2", 2, 3);
    CHECK(open_err("m-00001-of-00003.gguf", err) == -1);
    CHECK_STR_CONTAINS(err, "tensor 't2' appears twice");
    /* the wrong split.tensors.count */
    write_part("m", 3, 3, "t3", 2, 3);
    write_part("m", 1, 3, "t1", 0, 4);
    CHECK(open_err("m-00001-of-00003.gguf", err) == -1);
    CHECK_STR_CONTAINS(err, "split.tensors.count says 4 tensors but the 3 parts hold 3");
    /* a part renamed so its siblings cannot be found */
    write_part("m", 1, 3, "t1", 0, 3);
    char q[512];
    snprintf(p, sizeof p, "%s/m-00001-of-00003.gguf", tmpdir);
    snprintf(q, sizeof q, "%s/renamed.gguf", tmpdir);
    if (rename(p, q) != 0) CHECK(0);
    CHECK(open_err("renamed.gguf", err) == -1);
    CHECK_STR_CONTAINS(err, "part 1 of a model split into 3 files");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lazymoe-test-gguf-%d", (int)getpid());
    mkdir(tmpdir, 0755);
    TEST_CASE("gguf_good_file", good_file);
    TEST_CASE("gguf_hostile_files", hostile_files);
    TEST_CASE("gguf_hostile_kvs", hostile_kvs);
    TEST_CASE("gguf_split_files", split_files);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    TEST_EXIT();
}

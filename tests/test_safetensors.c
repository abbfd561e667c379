/* safetensors reader: well-formed files, and hostile ones that must give a clear
 * error naming the file or tensor instead of crashing. */
#include "harness.h"

#include "common/error.h"
#include "formats/archive_prefetch.h"
#include "formats/safetensors.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

/* Writes header JSON + `data_len` bytes of data (pattern) to tmpdir/name. */
static void write_st(const char *name, const char *json, size_t data_len, int64_t len_override) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    uint64_t n = len_override >= 0 ? (uint64_t)len_override : strlen(json);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(json, 1, strlen(json), f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i * 7 + 1), f);
    fclose(f);
}

static int open_err(const char *name, char *err) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    st_archive *a = NULL;
    int rc = st_open(&a, path, err);
    st_close(a);
    return rc;
}

static void good_file(void) {
    write_st("good.safetensors",
             "{\"__metadata__\":{\"format\":\"mlx\"},\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[16,28]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
             28, -1);
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/good.safetensors", tmpdir);
    st_archive *a = NULL;
    CHECKF(st_open(&a, path, err) == 0, "%s", err);
    if (!a) return;
    CHECK(a->ntensors == 2 && a->files[0].is_mlx);
    const st_tensor *t = st_find(a, "b");
    CHECK(t && t->dtype == LM_DT_BF16 && t->ndim == 2 && t->shape[1] == 3 && t->nbytes == 12);
    unsigned char buf[16];
    CHECK(st_read(a, st_find(a, "a"), buf, err) == 0 && buf[0] == 1 && buf[1] == 8);
    CHECK(st_read_range(a, t, 10, 4, buf, err) == -1); /* past the tensor */
    CHECK(st_find(a, "missing") == NULL);
    st_close(a);
}

static void hostile_files(void) {
    char err[LM_ERR_LEN];
    struct {
        const char *name, *json;
        size_t data;
        int64_t len;
        const char *expect;
    } cases[] = {
        {"trunc.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, -1, "truncated"},
        {"overlap.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
         16, -1, "overlap"},
        {"size.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,16]}}", 16, -1, "needs 20 bytes"},
        {"dtype.safetensors", "{\"a\":{\"dtype\":\"Q9\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, -1, "unknown dtype"},
        {"neg.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 16, -1, "non-negative"},
        {"rev.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,0]}}", 16, -1, "bad data_offsets"},
        {"notobj.safetensors", "[1,2,3]", 0, -1, "not a JSON object"},
        {"badjson.safetensors", "{\"a\":", 0, -1, "not valid JSON"},
        {"dup.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, -1, "not valid JSON"},
        {"hlen.safetensors", "{}", 0, 1000000, "header length"},
        {"overflow.safetensors",
         "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", 16, -1, "overflows"},
        {"dims.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, -1,
         "dimensions"},
        {"noshape.safetensors", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, -1, "missing shape"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_st(cases[i].name, cases[i].json, cases[i].data, cases[i].len);
        err[0] = 0;
        CHECKF(open_err(cases[i].name, err) == -1, "%s opened", cases[i].name);
        CHECKF(strstr(err, cases[i].expect) != NULL, "%s: error \"%s\" lacks \"%s\"", cases[i].name, err,
               cases[i].expect);
        CHECKF(strstr(err, cases[i].name) != NULL, "%s: error \"%s\" does not name the file", cases[i].name, err);
    }
    /* Too short to hold the length prefix. */
    char path[512];
    snprintf(path, sizeof path, "%s/tiny.safetensors", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    CHECK(open_err("tiny.safetensors", err) == -1 && strstr(err, "not a safetensors file"));
}

static void sharded_index(void) {
    char dir[512], path[600], err[LM_ERR_LEN];
    snprintf(dir, sizeof dir, "%s/sharded", tmpdir);
    mkdir(dir, 0755);
    snprintf(tmpdir + strlen(tmpdir), sizeof tmpdir - strlen(tmpdir), "/sharded");
    write_st("s1.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1);
    write_st("s2.safetensors", "{\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1);
    tmpdir[strlen(tmpdir) - strlen("/sharded")] = 0;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"metadata\":{},\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s2.safetensors\"}}", f);
    fclose(f);
    st_archive *a = NULL;
    CHECKF(st_open(&a, dir, err) == 0, "%s", err);
    CHECK(a && a->ntensors == 2 && a->nfiles == 2 && st_find(a, "y") && st_find(a, "y")->file == 1);
    st_close(a);
    /* Index pointing at the wrong shard, a missing tensor, and a path escape. */
    const char *bad[][2] = {
        {"{\"weight_map\":{\"x\":\"s2.safetensors\",\"y\":\"s1.safetensors\"}}", "but the index says"},
        {"{\"weight_map\":{\"x\":\"s1.safetensors\",\"z\":\"s2.safetensors\"}}", "missing from s2.safetensors"},
        {"{\"weight_map\":{\"x\":\"../s1.safetensors\"}}", "not a plain file name"},
        {"{\"weight_map\":{\"x\":\"nope.safetensors\"}}", "cannot open"},
        {"{\"weight_map\":[]}", "missing weight_map"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        f = fopen(path, "w");
        fputs(bad[i][0], f);
        fclose(f);
        a = NULL;
        err[0] = 0;
        CHECKF(st_open(&a, dir, err) == -1, "bad index %zu opened", i);
        CHECKF(strstr(err, bad[i][1]) != NULL, "index %zu: \"%s\" lacks \"%s\"", i, err, bad[i][1]);
        st_close(a);
    }
}

static int not_expert(const st_tensor *t) { return strstr(t->name, "experts") == NULL; }
static int nothing(const st_tensor *t) {
    (void)t;
    return 0;
}

/* The resident prefetch reads exactly the wanted tensors' ranges (adjacent ones merged,
 * far ones apart), in pieces, and can be stopped at once. */
static void resident_prefetch(void) {
    const uint64_t M = 1u << 20, big = 9 * M;
    char json[512];
    snprintf(json, sizeof json,
             "{\"big\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[0,%llu]},"
             "\"n1\":{\"dtype\":\"U8\",\"shape\":[64],\"data_offsets\":[%llu,%llu]},"
             "\"l.experts.e\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]},"
             "\"tail\":{\"dtype\":\"U8\",\"shape\":[64],\"data_offsets\":[%llu,%llu]}}",
             (unsigned long long)big, (unsigned long long)big, (unsigned long long)big,
             (unsigned long long)(big + 64), (unsigned long long)M, (unsigned long long)(big + 64),
             (unsigned long long)(big + 64 + M), (unsigned long long)(big + 64 + M),
             (unsigned long long)(big + 128 + M));
    write_st("prefetch.safetensors", json, (size_t)(big + 128 + M), -1);
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/prefetch.safetensors", tmpdir);
    st_archive *a = NULL;
    CHECKF(st_open(&a, path, err) == 0, "%s", err);
    if (!a) return;
    st_prefetch *p = st_prefetch_start(a, not_expert, 3, 0);
    CHECK(p != NULL);
    uint64_t got = st_prefetch_wait(p);
    CHECKF(got == big + 128, "read %llu bytes, want %llu", (unsigned long long)got, (unsigned long long)(big + 128));
    CHECK(st_prefetch_start(a, not_expert, 3, big + 129) == NULL); /* below the threshold */
    CHECK(st_prefetch_start(a, nothing, 3, 0) == NULL);
    CHECK(st_prefetch_start(a, not_expert, 0, 0) == NULL);
    p = st_prefetch_start(a, not_expert, 2, 0);
    CHECK(p != NULL);
    CHECK(st_prefetch_stop(p) <= big + 128);
    CHECK(st_prefetch_stop(NULL) == 0);
    st_close(a);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lazymoe-test-st-%d", (int)getpid());
    mkdir(tmpdir, 0755);
    TEST_CASE("safetensors_good_file", good_file);
    TEST_CASE("safetensors_hostile_files", hostile_files);
    TEST_CASE("safetensors_sharded_index", sharded_index);
    TEST_CASE("safetensors_resident_prefetch", resident_prefetch);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    TEST_EXIT();
}

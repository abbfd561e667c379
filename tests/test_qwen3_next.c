/* qwen3_next (Gated DeltaNet linear attention): the two forms of the recurrence
 * against transformers and each other, and prefix reuse through state snapshots.
 *
 * The reference is the golden fixture made by transformers 5.17 (tools/make_golden.py):
 * greedy_logits.npy holds the logits of one uncached pass over the prompt and its 20
 * greedy tokens (57 positions, inside one 64-token chunk of transformers' chunked rule).
 */
#include "harness.h"

#include "common/error.h"
#include "engine/engine.h"
#include "engine/linear_attention.h"
#include "formats/npy.h"

#include <stdint.h>
#include <unistd.h>

#define FIXTURE LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/qwen3_next_f32"
#define TEXTGEN LAZYMOE_SOURCE_DIR "/tests/fixtures/textgen"
#define MAXTOK 64

/* The fixture's weights with the 320-token tokenizer of tests/fixtures/textgen, which
 * generation needs (it detokenizes as it goes). */
static char model_dir[64];

static int32_t seq[MAXTOK]; /* prompt + greedy continuation, as transformers produced them */
static int n_prompt, n_seq;
static float *ref;          /* greedy_logits.npy [n_seq][V] */
static size_t V;

static int read_ids(const char *path, int32_t *ids, int max) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0;
    long v;
    while (n < max && fscanf(f, "%ld%*[, ]", &v) == 1) ids[n++] = (int32_t)v;
    fclose(f);
    return n;
}

static int load_reference(void) {
    char err[LM_ERR_LEN];
    n_prompt = read_ids(FIXTURE "/input_ids.txt", seq, MAXTOK);
    n_seq = n_prompt + read_ids(FIXTURE "/greedy.txt", seq + n_prompt, MAXTOK - n_prompt);
    size_t shape[4];
    int nd;
    if (lm_npy_read_f32(FIXTURE "/greedy_logits.npy", &ref, shape, &nd, err) != 0) {
        printf("# %s\n", err);
        return -1;
    }
    V = shape[1];
    return nd == 2 && shape[0] == (size_t)n_seq ? 0 : -1;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= md)) md = d;
        if (fabs(b[i]) > mr) mr = fabs(b[i]);
    }
    return md / (mr > 0 ? mr : 1);
}

static lazymoe_model *open_model(int capacity) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = 2;
    o.no_warm_start = 1;
    o.expert_capacity = capacity;
    /* f32 KV: these tests compare the linear-attention forms and transformers; the f16
     * cache's own rounding is measured in test_golden (golden_kv_*). */
    o.kv_bits = 32;
    lazymoe_model *m = NULL;
    char err[LM_ERR_LEN];
    if (lazymoe_model_open(&m, model_dir, &o, err, sizeof err) != 0) CHECKF(0, "%s", err);
    return m;
}

/* Logits of every position of seq[0..n) evaluated in pieces of `piece` tokens
 * (0: one call), with the given prefill chunk / recurrent-only setting. */
static int eval_all(lazymoe_model *m, int n, int piece, int chunk, int recurrent_only, float *out) {
    char err[LM_ERR_LEN];
    lazymoe_session *s;
    if (lazymoe_session_create(&s, m, err, sizeof err) != 0) return -1;
    lm_linear_set_chunk(s->lin, chunk, recurrent_only);
    int rc = 0;
    for (int done = 0; rc == 0 && done < n;) {
        int k = piece > 0 && n - done > piece ? piece : n - done;
        rc = lazymoe_session_eval(s, seq + done, k, out + (size_t)done * V, 1, err, sizeof err);
        done += k;
    }
    if (rc) printf("# eval: %s\n", err);
    lazymoe_session_free(s);
    return rc;
}

/* Chunked prefill at several chunk lengths, the recurrent form over a whole call, and
 * token-by-token decode all match transformers; chunked and recurrent agree closely. */
static void forms_match_transformers(void) {
    lazymoe_model *m = open_model(-1);
    if (!m || load_reference() != 0) {
        CHECK(0);
        lazymoe_model_close(m);
        return;
    }
    size_t N = (size_t)n_seq * V;
    float *chunked = malloc(sizeof(float) * N), *rec = malloc(sizeof(float) * N), *tmp = malloc(sizeof(float) * N);
    CHECK(eval_all(m, n_seq, 0, LM_LINEAR_CHUNK, 0, chunked) == 0);
    double d = rel_diff(chunked, ref, N);
    printf("# one call, chunks of %d: vs transformers %.3g\n", LM_LINEAR_CHUNK, d);
    CHECKF(d <= 1e-4, "chunked prefill vs transformers: %.3g", d);
    CHECK(eval_all(m, n_seq, 1, LM_LINEAR_CHUNK, 0, rec) == 0);
    d = rel_diff(rec, ref, N);
    printf("# token by token (decode): vs transformers %.3g\n", d);
    CHECKF(d <= 1e-4, "decode vs transformers: %.3g", d);
    d = rel_diff(chunked, rec, N);
    printf("# chunked prefill vs decode: %.3g\n", d);
    CHECKF(d <= 1e-5, "chunked prefill vs token-by-token decode: %.3g > 1e-5", d);
    static const int chunks[] = {1, 5, 16};
    for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++) {
        CHECK(eval_all(m, n_seq, 0, chunks[i], 0, tmp) == 0);
        d = rel_diff(tmp, ref, N);
        printf("# one call, chunks of %d: vs transformers %.3g, vs decode %.3g\n", chunks[i], d, rel_diff(tmp, rec, N));
        CHECKF(d <= 1e-4 && rel_diff(tmp, rec, N) <= 1e-5, "chunk %d: %.3g", chunks[i], d);
    }
    CHECK(eval_all(m, n_seq, 0, LM_LINEAR_CHUNK, 1, tmp) == 0);
    d = rel_diff(tmp, rec, N);
    printf("# one call, recurrent form: vs decode %.3g\n", d);
    CHECKF(d == 0, "the recurrent form over one call differs from decode: %.3g", d);
    /* Prefill in uneven pieces: each piece starts from the state the last one left. */
    CHECK(eval_all(m, n_seq, 7, 4, 0, tmp) == 0);
    d = rel_diff(tmp, ref, N);
    printf("# pieces of 7, chunks of 4: vs transformers %.3g\n", d);
    CHECKF(d <= 1e-4, "pieces: %.3g", d);
    free(chunked), free(rec), free(tmp);
    lazymoe_model_close(m);
}

/* A long sequence (several forward chunks of 256 and prefill chunks of 64, with a
 * partial last one): chunked prefill and token-by-token decode stay together. */
static void long_sequence_forms_agree(void) {
    lazymoe_model *m = open_model(-1);
    if (!m) return;
    char err[LM_ERR_LEN];
    enum { N = 500 }; /* the fixture's maximum is 512 positions */
    int32_t *ids = malloc(sizeof(int32_t) * N);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = (int32_t)((x >> 8) % 320u);
    }
    size_t Vm = (size_t)m->w.cfg.vocab_size;
    float *a = malloc(sizeof(float) * N * Vm), *b = malloc(sizeof(float) * Vm);
    lazymoe_session *s1, *s2;
    CHECK(lazymoe_session_create(&s1, m, err, sizeof err) == 0 && lazymoe_session_create(&s2, m, err, sizeof err) == 0);
    CHECKF(lazymoe_session_eval(s1, ids, N, a, 1, err, sizeof err) == 0, "%s", err);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        CHECK(lazymoe_session_eval(s2, ids + i, 1, b, 0, err, sizeof err) == 0);
        double d = rel_diff(b, a + (size_t)i * Vm, Vm);
        if (d > worst) worst = d;
    }
    printf("# %d tokens, chunked prefill vs decode: worst position %.3g\n", N, worst);
    CHECKF(worst <= 2e-5, "chunked vs recurrent over %d tokens: %.3g", N, worst);
    free(ids), free(a), free(b);
    lazymoe_session_free(s1), lazymoe_session_free(s2);
    lazymoe_model_close(m);
}

typedef struct {
    int32_t ids[32];
    int n;
} collected;

static int on_piece(void *ctx, const char *piece, size_t len) {
    (void)ctx, (void)piece, (void)len;
    return 0;
}

/* Generates greedily after prompt; returns the generated ids (read back from the session). */
static int gen(lazymoe_session *s, const int32_t *prompt, int n, int max_tokens, collected *out,
               lazymoe_gen_stats *st) {
    char err[LM_ERR_LEN];
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, s->m);
    p.prompt_ids = prompt;
    p.n_prompt_ids = n;
    p.max_tokens = max_tokens;
    p.sampling.temperature = 0;
    p.ignore_eos = 1;
    if (lazymoe_generate_stream(s, NULL, &p, on_piece, NULL, st, err, sizeof err) != 0) {
        printf("# generate: %s\n", err);
        return -1;
    }
    /* The generated tokens the session evaluated follow the prompt. */
    out->n = lazymoe_session_length(s) - n;
    memcpy(out->ids, lazymoe_session_tokens(s) + n, sizeof(int32_t) * (size_t)out->n);
    return 0;
}

/* The logits a fresh session computes for ids[0..n) evaluated in the given pieces
 * (the same calls a session with reuse made), last position only. */
static void fresh_logits(lazymoe_model *m, const int32_t *ids, const int *cuts, int n_cuts, float *out) {
    char err[LM_ERR_LEN];
    lazymoe_session *s;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    for (int i = 0; i + 1 < n_cuts; i++)
        CHECKF(lazymoe_session_eval(s, ids + cuts[i], cuts[i + 1] - cuts[i], out, 0, err, sizeof err) == 0, "%s", err);
    lazymoe_session_free(s);
}

/* Prefix reuse across generate calls: the session goes back only to a snapshot (or
 * the start), and what it computes then is bit for bit what a fresh session computes
 * with the same evaluations; a prefix that does not reach a snapshot is recomputed. */
static void prefix_reuse_snapshots(void) {
    lazymoe_model *m = open_model(-1);
    if (!m || (!ref && load_reference() != 0)) {
        CHECK(0);
        lazymoe_model_close(m);
        return;
    }
    char err[LM_ERR_LEN];
    lazymoe_session *s;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    collected g1, g2;
    lazymoe_gen_stats st;
    const int n1 = n_prompt;
    float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);

    /* 1. First request: greedy ids equal transformers'. */
    CHECK(gen(s, seq, n1, 5, &g1, &st) == 0);
    CHECK_EQ_INT(st.cached_tokens, 0);
    CHECK(g1.n == 4 && memcmp(g1.ids, seq + n1, sizeof(int32_t) * 4) == 0);

    /* 2. The same prompt again: back to the snapshot before its last token. */
    CHECK(gen(s, seq, n1, 5, &g2, &st) == 0);
    CHECK_EQ_INT(st.cached_tokens, n1 - 1);
    CHECK(g2.n == 4 && memcmp(g2.ids, g1.ids, sizeof(int32_t) * 4) == 0);

    /* 3. A prompt extending everything the session holds: the live states continue. */
    int32_t p3[MAXTOK];
    int n3 = n1 + 4 + 3;
    memcpy(p3, seq, sizeof(int32_t) * (size_t)n1);
    memcpy(p3 + n1, g2.ids, sizeof(int32_t) * 4);
    p3[n1 + 4] = 11, p3[n1 + 5] = 12, p3[n1 + 6] = 13;
    CHECK(gen(s, p3, n3, 1, &g2, &st) == 0);
    CHECK_EQ_INT(st.cached_tokens, n1 + 4);

    /* 4. A prompt that shares the first prompt and then differs: the snapshot at n1 - 1
     * is the furthest reusable point; the result is bit-identical to a fresh session
     * evaluating [0, n1-1) then the rest, and matches transformers' ids. */
    int32_t p4[MAXTOK];
    int n4 = n1 + 6;
    memcpy(p4, seq, sizeof(int32_t) * (size_t)n1);
    for (int i = n1; i < n4; i++) p4[i] = (int32_t)(i * 7 % 300);
    CHECK(gen(s, p4, n4, 1, &g2, &st) == 0);
    CHECK_EQ_INT(st.cached_tokens, n1 - 1);
    /* Its last logits, again: back to the snapshot taken before p4's last token. */
    CHECK(lazymoe_session_truncate(s, n4 - 1, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, p4 + n4 - 1, 1, a, 0, err, sizeof err) == 0);
    int cuts[] = {0, n1 - 1, n4 - 1, n4};
    fresh_logits(m, p4, cuts, 4, b);
    CHECKF(memcmp(a, b, sizeof(float) * V) == 0, "reused session differs from a fresh one: %.3g", rel_diff(a, b, V));

    /* 5. A prompt diverging before any snapshot: everything is computed again. */
    int32_t p5[MAXTOK];
    memcpy(p5, seq, sizeof(int32_t) * 20);
    p5[20] = 1, p5[21] = 2;
    CHECK(gen(s, p5, 22, 1, &g2, &st) == 0);
    CHECK_EQ_INT(st.cached_tokens, 0);

    free(a), free(b);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
}

/* lazymoe_session_truncate to a position without a snapshot re-evaluates the held
 * tokens: the session continues exactly like a fresh one fed the same pieces. */
static void truncate_recomputes(void) {
    lazymoe_model *m = open_model(-1);
    if (!m || (!ref && load_reference() != 0)) {
        CHECK(0);
        lazymoe_model_close(m);
        return;
    }
    char err[LM_ERR_LEN];
    float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);
    lazymoe_session *s;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, seq, n_prompt, a, 0, err, sizeof err) == 0);
    CHECK(lazymoe_session_truncate(s, 20, err, sizeof err) == 0);
    CHECK_EQ_INT(lazymoe_session_length(s), 20);
    CHECK(lazymoe_session_eval(s, seq + 20, n_prompt - 20, a, 0, err, sizeof err) == 0);
    int cuts[] = {0, 20, n_prompt};
    fresh_logits(m, seq, cuts, 3, b);
    CHECK(memcmp(a, b, sizeof(float) * V) == 0);
    /* The last prompt position against transformers. */
    double d = rel_diff(a, ref + (size_t)(n_prompt - 1) * V, V);
    CHECKF(d <= 1e-4, "after truncate: %.3g", d);
    /* Truncating to 0 and to the current length. */
    CHECK(lazymoe_session_truncate(s, n_prompt, err, sizeof err) == 0);
    CHECK(lazymoe_session_truncate(s, 0, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, seq, n_prompt, b, 0, err, sizeof err) == 0);
    CHECK(rel_diff(b, ref + (size_t)(n_prompt - 1) * V, V) <= 1e-4);
    CHECK(lazymoe_session_truncate(s, n_prompt + 1, err, sizeof err) == -1);
    free(a), free(b);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
}

/* Lazy experts (tiny caches, shared expert computed while misses load) give the
 * resident run's logits bit for bit, through the snapshot path too. */
static void lazy_bit_identical(void) {
    if (!ref && load_reference() != 0) {
        CHECK(0);
        return;
    }
    size_t N = (size_t)n_seq * V;
    float *res = malloc(sizeof(float) * N), *lz = malloc(sizeof(float) * N);
    lazymoe_model *m = open_model(-1);
    CHECK(m && eval_all(m, n_seq, 9, LM_LINEAR_CHUNK, 0, res) == 0);
    lazymoe_model_close(m);
    for (int cap = 1; cap <= 8; cap *= 2) {
        m = open_model(cap);
        CHECK(m && m->cache != NULL);
        CHECK(m && eval_all(m, n_seq, 9, LM_LINEAR_CHUNK, 0, lz) == 0);
        CHECKF(memcmp(res, lz, sizeof(float) * N) == 0, "capacity %d differs from resident", cap);
        lazymoe_model_close(m);
    }
    free(res), free(lz);
}

/* An evaluation that fails midway (an expert of the last layer cannot be read) has
 * already advanced the earlier layers' recurrent states; the next evaluation rebuilds
 * them from the held tokens, so the session continues exactly like an undisturbed one. */
static void failed_pass_is_rebuilt(void) {
    char dir[128], cmd[1024], err[LM_ERR_LEN];
    snprintf(dir, sizeof dir, "%s-broken", model_dir);
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s && cp " FIXTURE "/config.json " FIXTURE "/model.safetensors %s/",
             dir, dir, dir);
    CHECK(system(cmd) == 0);
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = 2;
    o.no_warm_start = 1;
    o.expert_capacity = 1;
    o.kv_bits = 32; /* as open_model */
    lazymoe_model *m = NULL, *mr = open_model(-1);
    CHECKF(lazymoe_model_open(&m, dir, &o, err, sizeof err) == 0, "%s", err);
    if (!m || !mr || (!ref && load_reference() != 0)) {
        lazymoe_model_close(m), lazymoe_model_close(mr);
        CHECK(0);
        return;
    }
    /* Cut the file where the last layer's experts begin (earlier layers' lie before). */
    const int last = m->w.cfg.n_layers - 1;
    uint64_t cut = UINT64_MAX, before = 0;
    for (int l = 0; l <= last; l++)
        for (int i = 0; i < m->w.cfg.n_experts * LM_EXPERT_MAX_PARTS; i++) {
            if (i % LM_EXPERT_MAX_PARTS >= m->w.layers[l].src.nparts) continue;
            uint64_t off = m->w.layers[l].src.off[i];
            if (l == last && off < cut) cut = off;
            if (l < last && off > before) before = off;
        }
    CHECK(before < cut);
    float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);
    lazymoe_session *s, *r;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0 && lazymoe_session_create(&r, mr, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, seq, 10, a, 0, err, sizeof err) == 0);
    snprintf(cmd, sizeof cmd, "truncate -s %llu %s/model.safetensors", (unsigned long long)cut, dir);
    CHECK(system(cmd) == 0);
    CHECK(lazymoe_session_eval(s, seq + 10, 10, a, 0, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(err, "layer 3 expert");
    CHECK_EQ_INT(lazymoe_session_length(s), 10);
    snprintf(cmd, sizeof cmd, "cp " FIXTURE "/model.safetensors %s/model.safetensors", dir); /* same inode */
    CHECK(system(cmd) == 0);
    CHECKF(lazymoe_session_eval(s, seq + 10, 10, a, 0, err, sizeof err) == 0, "%s", err);
    CHECK(lazymoe_session_eval(r, seq, 10, b, 0, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(r, seq + 10, 10, b, 0, err, sizeof err) == 0);
    CHECKF(memcmp(a, b, sizeof(float) * V) == 0, "after a failed pass: %.3g", rel_diff(a, b, V));
    free(a), free(b);
    lazymoe_session_free(s), lazymoe_session_free(r);
    lazymoe_model_close(m), lazymoe_model_close(mr);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("# cleanup failed\n");
}

int main(void) {
    snprintf(model_dir, sizeof model_dir, "/tmp/lazymoe-test-qwen3-next-%d", (int)getpid());
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && for f in config.json generation_config.json model.safetensors; do ln -s " FIXTURE
             "/$f %s/$f; done && ln -s " TEXTGEN "/tokenizer.json " TEXTGEN "/tokenizer_config.json %s/",
             model_dir, model_dir, model_dir);
    if (system(cmd) != 0) printf("# could not prepare %s\n", model_dir);
    TEST_CASE("qwen3_next_prefill_and_decode_match_transformers", forms_match_transformers);
    TEST_CASE("qwen3_next_long_sequence_forms_agree", long_sequence_forms_agree);
    TEST_CASE("qwen3_next_prefix_reuse_snapshots", prefix_reuse_snapshots);
    TEST_CASE("qwen3_next_truncate_recomputes", truncate_recomputes);
    TEST_CASE("qwen3_next_lazy_bit_identical", lazy_bit_identical);
    TEST_CASE("qwen3_next_failed_pass_is_rebuilt", failed_pass_is_rebuilt);
    free(ref);
    snprintf(cmd, sizeof cmd, "rm -rf %s", model_dir);
    if (system(cmd) != 0) printf("# cleanup failed\n");
    TEST_EXIT();
}

/* Lazy experts: results bit-identical to the fully resident model at any cache
 * capacity, on every architecture and storage format; counters; read errors;
 * eviction policies; routing traces. */
#include "harness.h"

#include "common/error.h"
#include "convert/convert.h"
#include "experts/policy.h"
#include "experts/trace.h"
#include "engine/engine.h"
#include "lazymoe.h"
#include "platform/platform.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/"
static char tmp[256];

typedef struct {
    float *logits; /* [n][V] */
    int32_t gen[16];
    lazymoe_expert_stats st;
    size_t V;
} run_result;

/* Logits of ids over the prompt, then 12 greedy tokens, at a given capacity. */
static int warm_runs; /* 1: let runs use the popularity history (warm start) */
static int lookahead_n; /* router lookahead of the runs (0 = off) */
static double lookahead_gate_runs; /* its gate (0: every prediction read) */
static uint64_t chunk_bytes; /* largest read request of the runs (0 = default) */
static int pin_n;            /* experts pinned per layer (0 = none) */
/* Called on the model of a run before it closes (NULL = none). */
static void (*inspect_model)(const lazymoe_model *m);
static int act_bits_runs; /* activation bits of the runs (0 = default f32) */

static int run(const char *dir, int capacity, int buffered, const int32_t *ids, int n, run_result *r, char *err) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.no_warm_start = !warm_runs;
    o.n_threads = 2;
    o.expert_capacity = capacity;
    o.buffered_io = buffered;
    o.io_threads = 3;
    o.lookahead = lookahead_n;
    o.lookahead_gate = lookahead_gate_runs;
    o.io_chunk_bytes = chunk_bytes;
    o.pin_experts = pin_n;
    o.act_bits = act_bits_runs;
    lazymoe_model *m;
    if (lazymoe_model_open(&m, dir, &o, err, LM_ERR_LEN) != 0) return -1;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    r->V = (size_t)info.vocab_size;
    r->logits = malloc(sizeof(float) * (size_t)n * r->V);
    float *lg = malloc(sizeof(float) * r->V);
    lazymoe_session *s;
    int rc = lazymoe_session_create(&s, m, err, LM_ERR_LEN);
    if (rc == 0) rc = lazymoe_session_eval(s, ids, n, r->logits, 1, err, LM_ERR_LEN);
    if (rc == 0) memcpy(lg, r->logits + (size_t)(n - 1) * r->V, sizeof(float) * r->V);
    for (int g = 0; rc == 0 && g < 12; g++) {
        int best = 0;
        for (size_t i = 1; i < r->V; i++)
            if (lg[i] > lg[best]) best = (int)i;
        r->gen[g] = best;
        rc = lazymoe_session_eval(s, &r->gen[g], 1, lg, 0, err, LM_ERR_LEN);
    }
    lazymoe_model_get_expert_stats(m, -1, &r->st);
    if (inspect_model) inspect_model(m);
    free(lg);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return rc;
}

static const int32_t IDS[] = {5, 17, 2, 99, 41, 7, 63, 11, 250, 3, 77, 140, 9, 31, 200, 18};
#define NIDS 16

static void same_at_capacities(const char *dir, int n_experts, int top_k) {
    char err[LM_ERR_LEN];
    run_result ref = {0};
    CHECKF(run(dir, -1, 0, IDS, NIDS, &ref, err) == 0, "resident %s: %s", dir, err);
    CHECK(ref.st.resident && ref.st.misses == 0);
    int caps[] = {1, top_k, n_experts - 1, n_experts};
    for (int i = 0; i < 4; i++) {
        for (int buffered = 0; buffered < 2; buffered++) {
            if (buffered && i != 1) continue;
            run_result r = {0};
            CHECKF(run(dir, caps[i], buffered, IDS, NIDS, &r, err) == 0, "capacity %d: %s", caps[i], err);
            if (!r.logits || !ref.logits) continue;
            CHECKF(!r.st.resident && r.st.capacity == caps[i], "capacity %d not applied", caps[i]);
            CHECKF(memcmp(r.logits, ref.logits, sizeof(float) * NIDS * ref.V) == 0,
                   "%s: capacity %d logits differ from resident", dir, caps[i]);
            CHECKF(memcmp(r.gen, ref.gen, sizeof r.gen) == 0, "%s: capacity %d greedy ids differ", dir, caps[i]);
            CHECKF(r.st.misses > 0 && r.st.bytes_read > 0, "capacity %d read nothing", caps[i]);
            if (caps[i] < top_k) CHECKF(r.st.misses > r.st.hits, "capacity %d: most routes should miss", caps[i]);
            printf("# %s capacity %d%s: hits %llu misses %llu bytes %llu\n", strrchr(dir, '/') + 1, caps[i],
                   buffered ? " buffered" : "", (unsigned long long)r.st.hits, (unsigned long long)r.st.misses,
                   (unsigned long long)r.st.bytes_read);
            free(r.logits);
        }
    }
    free(ref.logits);
}

static void qwen3_moe(void) { same_at_capacities(GOLDEN "qwen3_moe_f32", 8, 2); }
static void qwen3_moe_bf16_tied(void) { same_at_capacities(GOLDEN "qwen3_moe_tied_bf16", 6, 3); }
static void qwen3_moe_sharded(void) { same_at_capacities(GOLDEN "qwen3_moe_sharded_f32", 4, 2); }
static void mixtral(void) { same_at_capacities(GOLDEN "mixtral_f32", 4, 2); }
static void mixtral_bf16(void) { same_at_capacities(GOLDEN "mixtral_bf16", 8, 2); }
static void olmoe(void) { same_at_capacities(GOLDEN "olmoe_f32", 8, 2); }
static void olmoe_clip(void) { same_at_capacities(GOLDEN "olmoe_clip_bf16", 6, 3); }
/* The shipped 4-bit demo model: trained routing, 32 experts, top-4. */
static void demo_coder(void) { same_at_capacities(LAZYMOE_SOURCE_DIR "/models/demo-coder", 32, 4); }
static void qwen3_next(void) { same_at_capacities(GOLDEN "qwen3_next_f32", 8, 2); }
/* gpt_oss (tests/fixtures/gpt_oss): transposed bf16 experts, and MXFP4 slices read
 * lazily (capacities 1, top-k, all but one, all). */
static void gpt_oss(void) { same_at_capacities(LAZYMOE_SOURCE_DIR "/tests/fixtures/gpt_oss/float", 4, 2); }
static void gpt_oss_mxfp4(void) { same_at_capacities(LAZYMOE_SOURCE_DIR "/tests/fixtures/gpt_oss/mxfp4", 4, 2); }
/* issue 16 families: sigmoid routers (glm4_moe with groups), shared experts, the
 * vision-language wrapper's prefix. */
static void minimax_m2(void) { same_at_capacities(GOLDEN "minimax_m2_mqa_f32", 16, 4); }
static void glm4_moe(void) { same_at_capacities(GOLDEN "glm4_moe_f32", 16, 4); }
static void qwen3_5_moe(void) { same_at_capacities(GOLDEN "qwen3_5_moe_from_next_f32", 8, 2); }
/* Int8 activations (--act-bits 8) keep lazy == resident too. */
static void demo_coder_act8(void) {
    act_bits_runs = 8;
    same_at_capacities(LAZYMOE_SOURCE_DIR "/models/demo-coder", 32, 4);
    act_bits_runs = 0;
}

/* Router lookahead only changes what is read when: with it on, at capacities where
 * most routes miss, results stay bit-identical to resident on every family, and the
 * speculative reads really happen. The second half also runs with a warm start, whose
 * background reads the lookahead's must overtake (promotion to demand reads). */
static void lookahead_bit_identical(void) {
    const char *dirs[] = {LAZYMOE_SOURCE_DIR "/models/demo-coder", GOLDEN "mixtral_f32", GOLDEN "qwen3_next_f32",
                          GOLDEN "olmoe_f32"};
    int caps[] = {4, 2, 2, 3};
    char err[LM_ERR_LEN], xdg[600];
    for (int pass = 0; pass < 2; pass++) {
        snprintf(xdg, sizeof xdg, "%s/xdg-lookahead-%d", tmp, pass);
        setenv("XDG_CACHE_HOME", xdg, 1);
        warm_runs = pass;
        /* The warm pass splits every part into 4 KiB requests: a speculative read is
         * cancelled only while all of its requests are unstarted. */
        chunk_bytes = pass ? 4096 : 0;
        for (int d = 0; d < 4; d++) {
            run_result ref = {0};
            lookahead_n = 0;
            CHECKF(run(dirs[d], -1, 0, IDS, NIDS, &ref, err) == 0, "resident %s: %s", dirs[d], err);
            for (int la = 2; la <= 8; la *= 2) {
                lookahead_n = la;
                run_result r = {0};
                /* On the warm pass, run twice: the second run starts from the first's history. */
                for (int rep = 0; rep <= pass; rep++) {
                    free(r.logits);
                    memset(&r, 0, sizeof r);
                    CHECKF(run(dirs[d], caps[d], 0, IDS, NIDS, &r, err) == 0, "lookahead %d: %s", la, err);
                }
                CHECKF(r.logits && ref.logits && memcmp(r.logits, ref.logits, sizeof(float) * NIDS * ref.V) == 0,
                       "%s lookahead %d: logits differ from resident", dirs[d], la);
                CHECKF(memcmp(r.gen, ref.gen, sizeof r.gen) == 0, "%s lookahead %d: greedy ids differ", dirs[d], la);
                CHECKF(r.st.prefetched > 0 && r.st.prefetch_used <= r.st.prefetched,
                       "%s lookahead %d: prefetched %llu used %llu", dirs[d], la,
                       (unsigned long long)r.st.prefetched, (unsigned long long)r.st.prefetch_used);
                printf("# %s lookahead %d%s: hits %llu misses %llu, read early %llu, used %llu, cancelled %llu\n",
                       strrchr(dirs[d], '/') + 1, la, pass ? " warm" : "", (unsigned long long)r.st.hits,
                       (unsigned long long)r.st.misses, (unsigned long long)r.st.prefetched,
                       (unsigned long long)r.st.prefetch_used, (unsigned long long)r.st.prefetch_cancelled);
                free(r.logits);
            }
            /* With the default gate (layers open and close as their reads are used or not),
             * the same logits and ids. */
            lookahead_n = 8;
            lookahead_gate_runs = LAZYMOE_LOOKAHEAD_GATE;
            run_result g = {0};
            CHECKF(run(dirs[d], caps[d], 0, IDS, NIDS, &g, err) == 0, "gated lookahead: %s", err);
            CHECKF(g.logits && ref.logits && memcmp(g.logits, ref.logits, sizeof(float) * NIDS * ref.V) == 0,
                   "%s gated lookahead: logits differ from resident", dirs[d]);
            CHECKF(memcmp(g.gen, ref.gen, sizeof g.gen) == 0, "%s gated lookahead: greedy ids differ", dirs[d]);
            lookahead_gate_runs = 0;
            free(g.logits);
            free(ref.logits);
        }
    }
    lookahead_n = 0;
    warm_runs = 0;
    chunk_bytes = 0;
    snprintf(xdg, sizeof xdg, "%s/xdg-default", tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
}

/* MLX quantized layout (9 byte ranges per expert). */
static void quantized_mlx(void) {
    const char *names[4] = {"qwen3_moe_f32", "mixtral_f32", "olmoe_clip_bf16", "qwen3_next_f32"};
    int E[4] = {8, 4, 6, 8}, K[4] = {2, 2, 3, 2};
    for (int i = 0; i < 4; i++) {
        char src[512], out[512], err[LM_ERR_LEN];
        snprintf(src, sizeof src, GOLDEN "%s", names[i]);
        snprintf(out, sizeof out, "%s/%s_q4", tmp, names[i]);
        lm_convert_options o;
        lm_convert_options_init(&o);
        o.bits = 4;
        o.group_size = 32;
        o.quiet = 1;
        o.force = 1;
        CHECKF(lm_convert(src, out, &o, err) == 0, "%s", err);
        same_at_capacities(out, E[i], K[i]);
    }
}

/* issue 16 families converted at 8 and 4 bits (the router at 8 bits where mlx-lm says
 * so; the wrapper's vision tower and MTP tensors dropped): the conversions load, run,
 * and stay bit-identical lazy vs resident. */
static void quantized_new_families(void) {
    const char *names[4] = {"minimax_m2_f32", "glm4_moe_f32", "glm4_moe_qknorm_f32", "qwen3_5_moe_from_next_f32"};
    int E[4] = {8, 16, 8, 8}, K[4] = {2, 4, 3, 2};
    for (int i = 0; i < 4; i++)
        for (int bits = 8; bits >= 4; bits -= 4) {
            char src[512], out[512], err[LM_ERR_LEN];
            snprintf(src, sizeof src, GOLDEN "%s", names[i]);
            snprintf(out, sizeof out, "%s/%s_q%d", tmp, names[i], bits);
            lm_convert_options o;
            lm_convert_options_init(&o);
            o.bits = bits;
            o.group_size = 32;
            o.quiet = 1;
            o.force = 1;
            CHECKF(lm_convert(src, out, &o, err) == 0, "%s: %s", names[i], err);
            same_at_capacities(out, E[i], K[i]);
        }
}

/* Rewrites the safetensors file at path with `pad` spaces after its JSON header (a
 * header may end in spaces), so every tensor lies `pad` bytes further into the file. */
static int pad_header(const char *path, int pad) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)size + (size_t)pad);
    int ok = buf && fread(buf, 1, (size_t)size, f) == (size_t)size && size >= 8;
    fclose(f);
    if (!ok) {
        free(buf);
        return -1;
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
    memmove(buf + 8 + hlen + pad, buf + 8 + hlen, (size_t)size - 8 - hlen);
    memset(buf + 8 + hlen, ' ', (size_t)pad);
    hlen += (uint64_t)pad;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    f = fopen(path, "wb");
    ok = f && fwrite(buf, 1, (size_t)size + (size_t)pad, f) == (size_t)size + (size_t)pad;
    if (f && fclose(f) != 0) ok = 0;
    free(buf);
    return ok ? 0 : -1;
}

/* Copies model directory src to dst with every tensor moved `pad` bytes further into
 * its file. */
static int shifted_copy(const char *src, const char *dst, int pad) {
    char cmd[2600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dst, src, dst);
    if (system(cmd) != 0) return -1;
    DIR *d = opendir(dst);
    if (!d) return -1;
    int rc = 0;
    const struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 12 || strcmp(de->d_name + n - 12, ".safetensors") != 0) continue;
        char p[1100];
        snprintf(p, sizeof p, "%s/%s", dst, de->d_name);
        rc = pad_header(p, pad);
    }
    closedir(d);
    return rc;
}

/* A directory where O_DIRECT works (the system's /tmp may be a tmpfs, which refuses
 * it; the build tree is on a disk), or NULL. */
static const char *direct_io_dir(void) {
    static char dir[512];
    const char *cands[2] = {tmp, LAZYMOE_SOURCE_DIR "/build"};
    for (int i = 0; i < 2; i++) {
        char probe[700], err[LM_ERR_LEN];
        snprintf(dir, sizeof dir, "%s/direct-io-%d", cands[i], (int)getpid());
        mkdir(dir, 0755);
        snprintf(probe, sizeof probe, "%s/probe", dir);
        FILE *f = fopen(probe, "wb");
        if (f) {
            static char zeros[4096];
            fwrite(zeros, 1, sizeof zeros, f);
            fclose(f);
        }
        int fd = lm_file_open_direct(probe, err);
        unlink(probe);
        if (fd >= 0) {
            lm_file_close(fd);
            return dir;
        }
        rmdir(dir);
    }
    return NULL;
}

/* Direct reads land in the cache slots in place, each part at its file offset modulo
 * the block size: parts at every offset -- odd ones (moved to an element boundary
 * after the read), 2- and 4-byte aligned ones, parts whose aligned span runs past
 * the end of the file (the sharded fixture's first file ends with an expert) -- give
 * exactly the resident model's results, with direct I/O really used, and so does the
 * buffered fallback; whole parts (these are at most 10 KiB) or split into 4 KiB
 * requests. */
static void odd_offsets_direct_io(void) {
    const char *base = direct_io_dir();
    CHECKF(base != NULL, "no directory found where O_DIRECT works (tried %s and the build tree)", tmp);
    if (!base) return;
    char err[LM_ERR_LEN], q4[600];
    snprintf(q4, sizeof q4, "%s/qwen3_moe_q4", base);
    lm_convert_options co;
    lm_convert_options_init(&co);
    co.bits = 4;
    co.group_size = 32;
    co.quiet = 1;
    co.force = 1;
    CHECKF(lm_convert(GOLDEN "qwen3_moe_f32", q4, &co, err) == 0, "%s", err);
    struct {
        const char *src;
        int top_k, pad;
    } cases[] = {
        {GOLDEN "olmoe_f32", 2, 1},          {GOLDEN "olmoe_f32", 2, 4},  {GOLDEN "mixtral_bf16", 2, 3},
        {GOLDEN "mixtral_bf16", 2, 2},       {GOLDEN "qwen3_moe_sharded_f32", 2, 1},
        {GOLDEN "qwen3_moe_sharded_f32", 2, 4088}, {q4, 2, 1},           {q4, 2, 2},
        {q4, 2, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dst[700];
        snprintf(dst, sizeof dst, "%s/shifted-%zu", base, i);
        CHECKF(shifted_copy(cases[i].src, dst, cases[i].pad) == 0, "cannot write %s", dst);
        run_result ref = {0};
        CHECKF(run(cases[i].src, -1, 0, IDS, NIDS, &ref, err) == 0, "resident %s: %s", cases[i].src, err);
        for (int variant = 0; variant < 4; variant++) {
            int buffered = variant & 1;
            chunk_bytes = variant & 2 ? 4096 : 0;
            int caps[2] = {1, cases[i].top_k};
            for (int k = 0; k < 2; k++) {
                run_result r = {0};
                CHECKF(run(dst, caps[k], buffered, IDS, NIDS, &r, err) == 0, "%s: %s", dst, err);
                CHECKF(r.logits && ref.logits && memcmp(r.logits, ref.logits, sizeof(float) * NIDS * ref.V) == 0,
                       "%s shifted by %d, capacity %d%s%s: logits differ from resident", cases[i].src, cases[i].pad,
                       caps[k], buffered ? " buffered" : "", chunk_bytes ? " 4 KiB requests" : "");
                CHECKF(memcmp(r.gen, ref.gen, sizeof r.gen) == 0, "%s shifted by %d: greedy ids differ", cases[i].src,
                       cases[i].pad);
                CHECKF(r.st.misses > 0 && r.st.direct_bytes_read == (buffered ? 0 : r.st.bytes_read),
                       "%s: %llu of %llu bytes read directly", dst, (unsigned long long)r.st.direct_bytes_read,
                       (unsigned long long)r.st.bytes_read);
                free(r.logits);
            }
        }
        free(ref.logits);
    }
    chunk_bytes = 0;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    CHECK(system(cmd) == 0);
}

/* A prompt longer than one prefill chunk needs more experts than a 1-slot cache
 * holds: the layer runs in waves, each expert read once per chunk. */
static void long_prompt_waves(void) {
    int32_t ids[300];
    for (int i = 0; i < 300; i++) ids[i] = (i * 37 + 11) % 512;
    char err[LM_ERR_LEN];
    run_result a = {0}, b = {0};
    CHECKF(run(GOLDEN "qwen3_moe_long_f32", -1, 0, ids, 300, &a, err) == 0, "%s", err);
    CHECKF(run(GOLDEN "qwen3_moe_long_f32", 1, 0, ids, 300, &b, err) == 0, "%s", err);
    CHECK(a.logits && b.logits && memcmp(a.logits, b.logits, sizeof(float) * 300 * a.V) == 0);
    CHECK(memcmp(a.gen, b.gen, sizeof a.gen) == 0);
    /* 2 layers x 2 chunks (256 + 44 tokens) x at most 16 experts each, then 12 tokens
     * x 4 picks: every read is a distinct (chunk, expert) or a decode miss. */
    CHECKF(b.st.misses <= 2 * (2 * 16 + 12 * 4), "misses %llu", (unsigned long long)b.st.misses);
    free(a.logits);
    free(b.logits);
}

/* A file that really shrinks under a running model: a clear error naming the file,
 * layer and expert; no crash. (tests/test_store.c injects faults at every read.) */
static void read_error(void) {
    char dir[512], cmd[1200], err[LM_ERR_LEN] = "";
    snprintf(dir, sizeof dir, "%s/shrink", tmp);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r " GOLDEN "olmoe_f32 %s", dir, dir);
    CHECK(system(cmd) == 0);
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.expert_capacity = 2;
    lazymoe_model *m;
    CHECKF(lazymoe_model_open(&m, dir, &o, err, sizeof err) == 0, "%s", err);
    if (!m) return;
    snprintf(cmd, sizeof cmd, "truncate -s 4096 %s/model.safetensors", dir);
    CHECK(system(cmd) == 0);
    lazymoe_session *s;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, IDS, 4, NULL, 0, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(err, "model.safetensors: layer 0 expert");
    CHECK_STR_CONTAINS(err, ": short read: got ");
    CHECK_STR_CONTAINS(err, "shorter than expected");
    CHECK(lazymoe_session_length(s) == 0);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
}

static void memory_budget(void) {
    char err[LM_ERR_LEN];
    lazymoe_options o;
    lazymoe_options_init(&o);
    lazymoe_model *m = NULL;
    o.memory_budget = 1 << 20; /* far below resident weights + KV cache */
    CHECK(lazymoe_model_open(&m, GOLDEN "olmoe_f32", &o, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(err, "is too small: this model needs at least");
    o.memory_budget = 8ull << 30; /* plenty: everything resident */
    CHECKF(lazymoe_model_open(&m, GOLDEN "olmoe_f32", &o, err, sizeof err) == 0, "%s", err);
    lazymoe_expert_stats st;
    lazymoe_model_get_expert_stats(m, -1, &st);
    CHECK(st.resident && st.planned_bytes <= st.memory_budget);
    lazymoe_model_close(m);
    /* Between the two: room for the fixed part plus a few experts per layer. The
     * plan must pick a capacity in [top_k, E) and stay within the budget. */
    o.max_context = 64;
    o.io_threads = 1;
    o.memory_budget = 0;
    /* What one more slot per layer costs, from two plans at fixed capacities (a cache
     * slot holds an expert plus the padding that lets direct reads land in place). */
    uint64_t at[2];
    for (int k = 0; k < 2; k++) {
        o.expert_capacity = 3 + k;
        CHECKF(lazymoe_model_open(&m, GOLDEN "olmoe_f32", &o, err, sizeof err) == 0, "%s", err);
        if (!m) return;
        lazymoe_model_get_expert_stats(m, -1, &st);
        at[k] = st.planned_bytes;
        lazymoe_model_close(m);
    }
    o.expert_capacity = 0;
    /* One olmoe_f32 expert is 3 x 64 x 40 f32 = 30720 bytes, in 2 MoE layers. */
    CHECKF(at[1] - at[0] >= 2 * 30720 && at[1] - at[0] <= 2 * (30720 + 3 * 2 * 4096), "one slot per layer costs %llu",
           (unsigned long long)(at[1] - at[0]));
    /* Between the two: the plan for 3 slots and half of a fourth (too little for all 8
     * experts resident). The plan must pick capacity 3 and stay within the budget. */
    o.memory_budget = at[0] + (at[1] - at[0]) / 2;
    CHECKF(lazymoe_model_open(&m, GOLDEN "olmoe_f32", &o, err, sizeof err) == 0, "%s", err);
    if (m) {
        lazymoe_model_get_expert_stats(m, -1, &st);
        CHECKF(!st.resident && st.capacity == 3 && st.planned_bytes == at[0] && st.planned_bytes <= st.memory_budget,
               "capacity %d planned %llu budget %llu", st.capacity, (unsigned long long)st.planned_bytes,
               (unsigned long long)st.memory_budget);
        lazymoe_model_close(m);
    }
    o.memory_budget = 1 << 20;
    o.expert_capacity = 4;
    CHECK(lazymoe_model_open(&m, GOLDEN "olmoe_f32", &o, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(err, "too small for the requested expert capacity");
}

static void policies(void) {
    char err[LM_ERR_LEN];
    lm_usage u;
    for (int p = 0; p < LM_EVICT_COUNT; p++) {
        CHECK(lm_usage_init(&u, 8, err) == 0);
        int32_t slots[3] = {0, 1, 2};
        uint8_t busy[3] = {0, 0, 0};
        /* expert 0 used often long ago, 1 once recently, 2 once long ago */
        for (uint64_t t = 1; t <= 20; t++) lm_usage_touch(&u, (lm_evict_policy)p, 0, t);
        lm_usage_touch(&u, (lm_evict_policy)p, 2, 21);
        lm_usage_touch(&u, (lm_evict_policy)p, 1, 300);
        int v = lm_policy_victim((lm_evict_policy)p, &u, slots, busy, 3, 301);
        if (p == LM_EVICT_LRU) CHECKF(v == 0, "lru evicted slot %d", v);
        else CHECKF(v == 2, "%s evicted slot %d", lm_policy_name((lm_evict_policy)p), v);
        busy[2] = 1;
        v = lm_policy_victim((lm_evict_policy)p, &u, slots, busy, 3, 301);
        CHECK(v != 2);
        busy[0] = busy[1] = 1;
        CHECK(lm_policy_victim((lm_evict_policy)p, &u, slots, busy, 3, 301) == -1);
        slots[1] = -1;
        busy[1] = 0;
        CHECK(lm_policy_victim((lm_evict_policy)p, &u, slots, busy, 3, 301) == 1);
        lm_usage_free(&u);
    }
    CHECK(lm_policy_parse("lcp") == LM_EVICT_LCP && lm_policy_parse("nope") == -1);
}

static void trace_round_trip(void) {
    char path[512], err[LM_ERR_LEN];
    snprintf(path, sizeof path, "%s/trace.txt", tmp);
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.trace_routing = path;
    o.expert_capacity = 3;
    lazymoe_model *m;
    CHECKF(lazymoe_model_open(&m, GOLDEN "qwen3_moe_f32", &o, err, sizeof err) == 0, "%s", err);
    lazymoe_session *s;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, IDS, 5, NULL, 0, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, IDS + 5, 1, NULL, 0, err, sizeof err) == 0);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    lm_trace_data d;
    CHECKF(lm_trace_load(&d, path, err) == 0, "%s", err);
    CHECK(d.n_layers == 3 && d.n_experts == 8 && d.top_k == 2 && d.n_tokens == 6);
    /* layer 1 of qwen3_moe_f32 is dense: no picks there; layers 0 and 2 have 2. */
    for (int t = 0; t < d.n_tokens; t++) {
        const int32_t *tok = d.ids + (size_t)t * 3 * 2;
        CHECK(tok[0] >= 0 && tok[1] > tok[0] && tok[2] == -1 && tok[3] == -1 && tok[4] >= 0 && tok[5] > tok[4]);
    }
    lm_trace_data_free(&d);
    FILE *f = fopen(path, "w");
    fputs("lazymoe-routing-trace v1 layers=2 experts=4 top_k=2\n1 9|0 1\n", f);
    fclose(f);
    CHECK(lm_trace_load(&d, path, err) == -1);
    CHECK_STR_CONTAINS(err, "bad expert list");
}

/* The second run of a model fills the cache slots its first evaluation left empty
 * with the experts the first run used most, read in the background; results stay
 * bit-identical; a damaged history file is ignored. */
static void warm_start(void) {
    char xdg[512], err[LM_ERR_LEN];
    snprintf(xdg, sizeof xdg, "%s/xdg", tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
    run_result ref = {0}, cold = {0}, warm = {0};
    warm_runs = 1;
    CHECK(run(GOLDEN "olmoe_f32", -1, 0, IDS, 1, &ref, err) == 0);
    CHECKF(run(GOLDEN "olmoe_f32", 3, 0, IDS, 1, &cold, err) == 0, "%s", err);
    CHECKF(run(GOLDEN "olmoe_f32", 3, 0, IDS, 1, &warm, err) == 0, "%s", err);
    CHECK(cold.st.warm_start_experts == 0);
    /* the first evaluation (1 token, top-2) takes 2 of each MoE layer's 3 slots: the
     * warm start, which waits for it, fills the third with the hottest expert not
     * cached (the history of 13 tokens has more than 2 per layer) */
    CHECKF(warm.st.warm_start_experts == 2 * 1, "warm start queued %d experts", warm.st.warm_start_experts);
    printf("# cold: %llu hits %llu misses; warm: %llu hits %llu misses\n", (unsigned long long)cold.st.hits,
           (unsigned long long)cold.st.misses, (unsigned long long)warm.st.hits, (unsigned long long)warm.st.misses);
    /* The background reads really happened (3 slots x 2 layers of 30720 bytes on
     * top of the demand misses). Whether they save misses depends on how stable the
     * routing is: on this random model it is a wash (see the printed counts). */
    CHECKF(warm.st.bytes_read >= (warm.st.misses + 2) * 30720, "warm start read %llu bytes",
           (unsigned long long)warm.st.bytes_read);
    CHECK(warm.logits && ref.logits && memcmp(warm.logits, ref.logits, sizeof(float) * 1 * ref.V) == 0);
    CHECK(memcmp(warm.gen, ref.gen, sizeof ref.gen) == 0);
    /* Damage the history: ignored (a cold start), never misread. */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "for f in %s/lazymoe/popularity-*.bin; do printf 'XXXX' | dd of=$f bs=1 seek=30 conv=notrunc 2>/dev/null; done", xdg);
    CHECK(system(cmd) == 0);
    run_result damaged = {0};
    CHECK(run(GOLDEN "olmoe_f32", 3, 0, IDS, 1, &damaged, err) == 0);
    CHECK(damaged.st.warm_start_experts == 0);
    CHECK(damaged.logits && memcmp(damaged.logits, ref.logits, sizeof(float) * 1 * ref.V) == 0);
    free(ref.logits), free(cold.logits), free(warm.logits), free(damaged.logits);
    warm_runs = 0;
    snprintf(xdg, sizeof xdg, "%s/xdg-default", tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
}

/* Per MoE layer of the last inspected run: the pinned experts, and how often the
 * cache read each expert. */
#define PIN_MAX_LAYERS 16
#define PIN_MAX_EXPERTS 64
static int pinned_of[PIN_MAX_LAYERS][PIN_MAX_EXPERTS];
static uint32_t reads_of[PIN_MAX_LAYERS][PIN_MAX_EXPERTS];

static void record_pins(const lazymoe_model *m) {
    memset(pinned_of, 0, sizeof pinned_of);
    memset(reads_of, 0, sizeof reads_of);
    for (int l = 0; l < m->w.cfg.n_layers && l < PIN_MAX_LAYERS; l++)
        for (int e = 0; m->w.layers[l].is_moe && e < m->w.cfg.n_experts && e < PIN_MAX_EXPERTS; e++) {
            pinned_of[l][e] = lm_cache_is_pinned(m->cache, l, e);
            reads_of[l][e] = lm_cache_expert_reads(m->cache, l, e);
        }
}

/* Pinning the most popular experts: at a tiny capacity (top_k + pins) results stay
 * bit-identical to resident, each layer pins exactly N experts -- its most routed
 * ones in the history -- and reads each of them exactly once: never evicted. The
 * same run without pins reads some of those experts again (so the check can fail).
 * Without a history nothing is pinned; too many pins for the capacity is an error. */
static void pinning(void) {
    const char *dir = LAZYMOE_SOURCE_DIR "/models/demo-coder";
    const int top_k = 4, n_layers = 8, pin = 3;
    char err[LM_ERR_LEN], xdg[512];
    snprintf(xdg, sizeof xdg, "%s/xdg-pin", tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
    run_result ref = {0}, r = {0};
    CHECKF(run(dir, -1, 0, IDS, NIDS, &ref, err) == 0, "resident: %s", err);
    /* First run: no history yet, so nothing is pinned; it records one. */
    warm_runs = 1;
    pin_n = pin;
    CHECKF(run(dir, top_k + pin, 0, IDS, NIDS, &r, err) == 0, "%s", err);
    CHECKF(r.st.pinned_experts == 0, "pinned %d experts without a history", r.st.pinned_experts);
    free(r.logits);
    /* The history the next run pins from. */
    lazymoe_model *m = NULL;
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.expert_capacity = top_k + pin;
    CHECKF(lazymoe_model_open(&m, dir, &o, err, sizeof err) == 0, "%s", err);
    if (!m) return;
    float hist[PIN_MAX_LAYERS][PIN_MAX_EXPERTS];
    CHECK(m->history.uses != NULL && m->w.cfg.n_layers == n_layers && m->w.cfg.n_experts <= PIN_MAX_EXPERTS);
    for (int l = 0; l < n_layers && m->history.uses; l++)
        for (int e = 0; e < m->w.cfg.n_experts; e++) hist[l][e] = m->history.uses[(size_t)l * (size_t)m->w.cfg.n_experts + (size_t)e];
    int n_experts = m->w.cfg.n_experts;
    lazymoe_model_close(m);
    /* Pinned run. The history now holds two runs: pins come from it as it was at open. */
    memset(&r, 0, sizeof r);
    inspect_model = record_pins;
    CHECKF(run(dir, top_k + pin, 0, IDS, NIDS, &r, err) == 0, "%s", err);
    CHECKF(r.logits && ref.logits && memcmp(r.logits, ref.logits, sizeof(float) * NIDS * ref.V) == 0,
           "pinned run: logits differ from resident");
    CHECK(memcmp(r.gen, ref.gen, sizeof r.gen) == 0);
    CHECKF(r.st.pinned_experts == n_layers * pin, "pinned %d experts", r.st.pinned_experts);
    int pinned_hot[PIN_MAX_LAYERS][PIN_MAX_EXPERTS];
    memcpy(pinned_hot, pinned_of, sizeof pinned_hot);
    for (int l = 0; l < n_layers; l++) {
        int n = 0;
        float least_pinned = 1e30f, most_unpinned = -1;
        for (int e = 0; e < n_experts; e++) {
            if (!pinned_of[l][e]) {
                if (hist[l][e] > most_unpinned) most_unpinned = hist[l][e];
                continue;
            }
            n++;
            if (hist[l][e] < least_pinned) least_pinned = hist[l][e];
            CHECKF(reads_of[l][e] == 1, "layer %d: pinned expert %d was read %u times", l, e, reads_of[l][e]);
        }
        CHECKF(n == pin, "layer %d pinned %d experts", l, n);
        CHECKF(least_pinned >= most_unpinned, "layer %d: pinned an expert used %g times, left one used %g", l,
               least_pinned, most_unpinned);
    }
    free(r.logits);
    /* Without pins, at the same capacity, the hot experts are evicted and read again. */
    pin_n = 0;
    memset(&r, 0, sizeof r);
    CHECKF(run(dir, top_k + pin, 0, IDS, NIDS, &r, err) == 0, "%s", err);
    int reread = 0;
    for (int l = 0; l < n_layers; l++)
        for (int e = 0; e < n_experts; e++) reread += pinned_hot[l][e] && reads_of[l][e] > 1;
    CHECKF(reread > 0, "no hot expert was read twice without pinning: the pinned run proves nothing");
    printf("# without pins, %d of the %d hot experts were read more than once\n", reread, n_layers * pin);
    free(r.logits);
    inspect_model = NULL;
    /* Too many pins for the capacity: refused, naming both numbers. */
    pin_n = 2;
    memset(&r, 0, sizeof r);
    CHECK(run(dir, top_k + 1, 0, IDS, NIDS, &r, err) == -1);
    CHECK_STR_CONTAINS(err, "--pin 2 leaves 3 of the 5 cache slots");
    CHECK_STR_CONTAINS(err, "the 4 a token needs");
    free(r.logits);
    pin_n = 0;
    warm_runs = 0;
    free(ref.logits);
    snprintf(xdg, sizeof xdg, "%s/xdg-default", tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/lazymoe-test-lazy-%d", (int)getpid());
    mkdir(tmp, 0755);
    /* Keep the popularity history of these runs out of the user's cache. */
    char xdg[300];
    snprintf(xdg, sizeof xdg, "%s/xdg-default", tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
    TEST_CASE("lazy_qwen3_moe_bit_identical", qwen3_moe);
    TEST_CASE("lazy_qwen3_moe_bf16_tied_bit_identical", qwen3_moe_bf16_tied);
    TEST_CASE("lazy_qwen3_moe_sharded_bit_identical", qwen3_moe_sharded);
    TEST_CASE("lazy_mixtral_bit_identical", mixtral);
    TEST_CASE("lazy_gpt_oss_bit_identical", gpt_oss);
    TEST_CASE("lazy_gpt_oss_mxfp4_bit_identical", gpt_oss_mxfp4);
    TEST_CASE("lazy_mixtral_bf16_bit_identical", mixtral_bf16);
    TEST_CASE("lazy_olmoe_bit_identical", olmoe);
    TEST_CASE("lazy_olmoe_clip_bf16_bit_identical", olmoe_clip);
    TEST_CASE("lazy_qwen3_next_bit_identical", qwen3_next);
    TEST_CASE("lazy_minimax_m2_bit_identical", minimax_m2);
    TEST_CASE("lazy_glm4_moe_bit_identical", glm4_moe);
    TEST_CASE("lazy_qwen3_5_moe_bit_identical", qwen3_5_moe);
    TEST_CASE("lazy_mlx_4bit_bit_identical", quantized_mlx);
    TEST_CASE("lazy_new_families_mlx_8bit_4bit_bit_identical", quantized_new_families);
    TEST_CASE("lazy_demo_coder_bit_identical", demo_coder);
    TEST_CASE("lazy_demo_coder_int8_activations_bit_identical", demo_coder_act8);
    TEST_CASE("lazy_lookahead_bit_identical", lookahead_bit_identical);
    TEST_CASE("lazy_odd_offsets_direct_io", odd_offsets_direct_io);
    TEST_CASE("lazy_long_prompt_waves", long_prompt_waves);
    TEST_CASE("lazy_read_error_is_reported", read_error);
    TEST_CASE("memory_budget_plans_and_refuses", memory_budget);
    TEST_CASE("eviction_policies", policies);
    TEST_CASE("routing_trace_round_trip", trace_round_trip);
    TEST_CASE("warm_start_from_popularity_history", warm_start);
    TEST_CASE("pinning_popular_experts", pinning);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0) printf("# cleanup failed\n");
    TEST_EXIT();
}

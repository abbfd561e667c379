/* Engine behaviour beyond the golden numbers: config variants, determinism,
 * incremental decoding, and errors for broken or mismatched model directories. */
#include "harness.h"

#include "common/error.h"
#include "lazymoe.h"
#include "engine/engine.h"
#include "models/config.h"

#include <sys/stat.h>
#include <unistd.h>

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/"
static char tmp[256];

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    if (system(cmd) != 0) printf("# command failed: %s\n", cmd);
}

/* Copies fixture NAME to tmp/DST and applies a sed expression to its config.json. */
static void variant(const char *name, const char *dst, const char *sed_expr) {
    char d[512], cmd[2048];
    snprintf(d, sizeof d, "%s/%s", tmp, dst);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '" GOLDEN "%s' '%s'", d, name, d);
    if (system(cmd) != 0) printf("# copy failed: %s\n", cmd);
    if (sed_expr) {
        snprintf(cmd, sizeof cmd, "sed -i -e '%s' %s/config.json", sed_expr, d);
        if (system(cmd) != 0) printf("# sed failed\n");
    }
}

static int open_dir(const char *dir, lazymoe_model **m, int threads, char *err) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = threads;
    return lazymoe_model_open(m, dir, &o, err, LM_ERR_LEN);
}

static float *logits_of(const char *dir, const int32_t *ids, int n, int threads, int *vocab) {
    lazymoe_model *m;
    char err[LM_ERR_LEN];
    if (open_dir(dir, &m, threads, err) != 0) {
        printf("# %s\n", err);
        return NULL;
    }
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    *vocab = info.vocab_size;
    float *out = malloc(sizeof(float) * (size_t)n * (size_t)info.vocab_size);
    lazymoe_session *s;
    if (lazymoe_session_create(&s, m, err, sizeof err) != 0 || lazymoe_session_eval(s, ids, n, out, 1, err, sizeof err) != 0) {
        printf("# %s\n", err);
        free(out);
        out = NULL;
    }
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return out;
}

static const int32_t IDS[] = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38};
#define NIDS 10

static void rope_theta_old_style(void) {
    /* transformers 5 writes rope_parameters; older configs carry top-level rope_theta. */
    variant("qwen3_moe_f32", "old_rope", "s/\"rope_parameters\": {/\"rope_theta\": 10000.0, \"unused_rope\": {/");
    variant("qwen3_moe_f32", "other_theta", "s/\"rope_theta\": 10000.0/\"rope_theta\": 500.0/");
    int v1, v2, v3;
    char d[512];
    float *a = logits_of(GOLDEN "qwen3_moe_f32", IDS, NIDS, 2, &v1);
    snprintf(d, sizeof d, "%s/old_rope", tmp);
    float *b = logits_of(d, IDS, NIDS, 2, &v2);
    snprintf(d, sizeof d, "%s/other_theta", tmp);
    float *c = logits_of(d, IDS, NIDS, 2, &v3);
    CHECK(a && b && c);
    if (a && b && c) {
        CHECK(memcmp(a, b, sizeof(float) * NIDS * (size_t)v1) == 0);
        CHECK(memcmp(a, c, sizeof(float) * NIDS * (size_t)v1) != 0); /* theta is really used */
    }
    free(a), free(b), free(c);
}

static void threads_bit_identical(void) {
    int v;
    float *a = logits_of(GOLDEN "olmoe_f32", IDS, NIDS, 1, &v);
    float *b = logits_of(GOLDEN "olmoe_f32", IDS, NIDS, 2, &v);
    float *c = logits_of(GOLDEN "olmoe_f32", IDS, NIDS, 3, &v);
    CHECK(a && b && c && !memcmp(a, b, sizeof(float) * NIDS * (size_t)v) && !memcmp(a, c, sizeof(float) * NIDS * (size_t)v));
    free(a), free(b), free(c);
}

/* Token-by-token through the KV cache equals one batched pass, bit for bit; and
 * truncating the session then re-evaluating reproduces the same logits. */
static void incremental_equals_batched(void) {
    lazymoe_model *m;
    char err[LM_ERR_LEN];
    CHECK(open_dir(GOLDEN "mixtral_f32", &m, 2, err) == 0);
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    size_t V = (size_t)info.vocab_size;
    float *all = malloc(sizeof(float) * NIDS * V), *one = malloc(sizeof(float) * V);
    lazymoe_session *s;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, IDS, NIDS, all, 1, err, sizeof err) == 0);
    CHECK(lazymoe_session_length(s) == NIDS);
    CHECK(lazymoe_session_truncate(s, 0, err, sizeof err) == 0);
    for (int i = 0; i < NIDS; i++) {
        CHECK(lazymoe_session_eval(s, &IDS[i], 1, one, 0, err, sizeof err) == 0);
        CHECKF(memcmp(one, all + (size_t)i * V, sizeof(float) * V) == 0, "position %d differs", i);
    }
    CHECK(lazymoe_session_truncate(s, 4, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, &IDS[4], 3, all, 0, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, &IDS[7], 1, one, 0, err, sizeof err) == 0);
    lazymoe_session_truncate(s, 0, err, sizeof err);
    float *ref = malloc(sizeof(float) * NIDS * V);
    CHECK(lazymoe_session_eval(s, IDS, 8, ref, 1, err, sizeof err) == 0);
    CHECK(memcmp(one, ref + 7 * V, sizeof(float) * V) == 0);
    CHECK(lazymoe_session_truncate(s, 9, err, sizeof err) == -1 && strstr(err, "cannot truncate"));
    int32_t bad = (int32_t)V;
    CHECK(lazymoe_session_eval(s, &bad, 1, one, 0, err, sizeof err) == -1 && strstr(err, "outside the vocabulary"));
    CHECK(lazymoe_session_length(s) == 8); /* a rejected token changes nothing */
    free(all), free(one), free(ref);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
}

static void context_limit(void) {
    lazymoe_model *m;
    char err[LM_ERR_LEN];
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.max_context = 8;
    CHECK(lazymoe_model_open(&m, GOLDEN "olmoe_f32", &o, err, sizeof err) == 0);
    lazymoe_session *s;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, IDS, NIDS, NULL, 0, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(err, "exceeds the maximum of 8");
    CHECK(lazymoe_session_eval(s, IDS, 8, NULL, 0, err, sizeof err) == 0);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
}

static void expect_open_error(const char *dir, const char *needle) {
    lazymoe_model *m = NULL;
    char err[LM_ERR_LEN] = "";
    CHECKF(open_dir(dir, &m, 1, err) == -1, "%s opened", dir);
    CHECKF(strstr(err, needle) != NULL, "error \"%s\" lacks \"%s\"", err, needle);
    lazymoe_model_close(m);
}

static void broken_models(void) {
    char d[512];
    variant("olmoe_f32", "unsupported", "s/\"model_type\": \"olmoe\"/\"model_type\": \"llama4\"/");
    snprintf(d, sizeof d, "%s/unsupported", tmp);
    expect_open_error(d, "model_type 'llama4' is not supported (supported: qwen3_moe, mixtral, olmoe, qwen3_next, gpt_oss, minimax_m2, glm4_moe, qwen3_5_moe)");
    variant("olmoe_f32", "wrong_shape", "s/\"intermediate_size\": 40/\"intermediate_size\": 48/");
    snprintf(d, sizeof d, "%s/wrong_shape", tmp);
    expect_open_error(d, "the config implies");
    variant("olmoe_f32", "no_layers", "s/\"num_hidden_layers\": 2,//");
    snprintf(d, sizeof d, "%s/no_layers", tmp);
    expect_open_error(d, "missing 'num_hidden_layers'");
    variant("olmoe_f32", "more_layers", "s/\"num_hidden_layers\": 2/\"num_hidden_layers\": 3/");
    snprintf(d, sizeof d, "%s/more_layers", tmp);
    expect_open_error(d, "missing tensor 'model.layers.2.");
    variant("olmoe_f32", "truncated", NULL);
    snprintf(d, sizeof d, "%s/truncated", tmp);
    sh("truncate -s 100000 '%s/%s'", d, "model.safetensors");
    expect_open_error(d, "truncated");
    variant("olmoe_f32", "badjson", "s/{/[/");
    snprintf(d, sizeof d, "%s/badjson", tmp);
    expect_open_error(d, "config.json");
    expect_open_error("/nonexistent/model", "cannot read");
    variant("olmoe_f32", "topk", "s/\"num_experts_per_tok\": 2/\"num_experts_per_tok\": 9/");
    snprintf(d, sizeof d, "%s/topk", tmp);
    expect_open_error(d, "exceeds the number of experts");
    variant("olmoe_f32", "rope", "s/\"rope_type\": \"default\"/\"rope_type\": \"dynamic\"/");
    snprintf(d, sizeof d, "%s/rope", tmp);
    expect_open_error(d, "RoPE type 'dynamic' is not supported");
}

static void config_aliases(void) {
    const char *base =
        "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 4,"
        " \"num_attention_heads\": 2, \"intermediate_size\": 16, \"moe_intermediate_size\": 4, %s"
        " \"num_experts_per_tok\": 2, \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3], \"eos_token_id\": [1, 2]}";
    char text[1024], err[LM_ERR_LEN];
    lm_config c;
    snprintf(text, sizeof text, base, "\"num_local_experts\": 4,");
    CHECKF(lm_config_parse(&c, text, NULL, err) == 0, "%s", err);
    CHECK(c.n_experts == 4 && c.n_kv_heads == 2 && c.head_dim == 4 && c.n_eos == 2);
    /* decoder_sparse_step 2: layers 1 and 3 sparse; mlp_only_layers removes 3. */
    CHECK(!lm_config_layer_is_moe(&c, 0) && lm_config_layer_is_moe(&c, 1) && !lm_config_layer_is_moe(&c, 2) &&
          !lm_config_layer_is_moe(&c, 3));
    lm_config_free(&c);
    snprintf(text, sizeof text, base, "\"num_experts\": 6,");
    CHECK(lm_config_parse(&c, text, "{\"eos_token_id\": 7}", err) == 0 && c.n_experts == 6 && c.n_eos == 1 &&
          c.eos_ids[0] == 7);
    lm_config_free(&c);
    snprintf(text, sizeof text, base, "\"num_experts\": \"6\",");
    CHECK(lm_config_parse(&c, text, NULL, err) == -1 && strstr(err, "'num_experts' must be an integer"));
    snprintf(text, sizeof text, base, "");
    CHECK(lm_config_parse(&c, text, NULL, err) == -1 && strstr(err, "missing 'num_experts'"));
}

/* A forward chunk's tokens: the CPU's and a GPU's defaults, and LAZYMOE_CHUNK_TOKENS
 * within 8..4096 (anything else is ignored with a warning). */
static void chunk_tokens_setting(void) {
    unsetenv("LAZYMOE_CHUNK_TOKENS");
    CHECK(lm_chunk_tokens(1) == LM_CHUNK_TOKENS);
    CHECK(lm_chunk_tokens(0) == LM_DEVICE_CHUNK_TOKENS);
    const char *bad[] = {"7", "4097", "12x", "-40", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("LAZYMOE_CHUNK_TOKENS", bad[i], 1);
        CHECKF(lm_chunk_tokens(1) == LM_CHUNK_TOKENS && lm_chunk_tokens(0) == LM_DEVICE_CHUNK_TOKENS, "\"%s\"", bad[i]);
    }
    setenv("LAZYMOE_CHUNK_TOKENS", "40", 1);
    CHECK(lm_chunk_tokens(1) == 40 && lm_chunk_tokens(0) == 40);
    unsetenv("LAZYMOE_CHUNK_TOKENS");
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/lazymoe-test-engine-%d", (int)getpid());
    mkdir(tmp, 0755);
    TEST_CASE("config_aliases_and_sparse_layers", config_aliases);
    TEST_CASE("rope_theta_old_and_new_config_styles", rope_theta_old_style);
    TEST_CASE("thread_count_bit_identical", threads_bit_identical);
    TEST_CASE("incremental_equals_batched", incremental_equals_batched);
    TEST_CASE("context_limit", context_limit);
    TEST_CASE("chunk_tokens_setting", chunk_tokens_setting);
    TEST_CASE("broken_model_directories", broken_models);
    sh("rm -rf '%s'%s", tmp, "");
    TEST_EXIT();
}

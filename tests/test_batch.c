/* Batches (lazymoe_batch): several sessions decoded in one forward pass give each
 * session exactly the logits it gets alone -- bit for bit, on every block kind
 * (attention with windows, sinks, biases, q/k norms, output gates; linear attention;
 * dense and MoE layers, shared experts), resident and with lazy experts, with
 * prompts of different lengths and sequences leaving the batch early -- and
 * generations in threads that share a batch produce the text they produce alone. */
#include "harness.h"

#include "common/error.h"
#include "lazymoe.h"

#include <pthread.h>

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/"
#define DEMO LAZYMOE_SOURCE_DIR "/models/demo-coder"

static lazymoe_model *open_model(const char *dir, int capacity, int act_bits, char *err) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.no_warm_start = 1;
    o.n_threads = 2;
    o.expert_capacity = capacity;
    o.act_bits = act_bits;
    lazymoe_model *m = NULL;
    if (lazymoe_model_open(&m, dir, &o, err, LM_ERR_LEN) != 0) return NULL;
    return m;
}

#define NSEQ 3
#define STEPS 8
/* Sequence i has a prompt of plen[i] tokens and decodes steps[i] tokens: sequence 0
 * leaves the batch after 3 steps, so later steps run 2 rows. */
static const int plen[NSEQ] = {5, 13, 9};
static const int steps[NSEQ] = {3, STEPS, STEPS};

static int argmax(const float *x, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Alone: each sequence's prompt, then its greedy steps one token at a time; records
 * the logits of every step [NSEQ][STEPS + 1][V]. */
static int run_alone(lazymoe_model *m, const int32_t *prompts, int V, float *ref, char *err) {
    int rc = 0;
    for (int i = 0; rc == 0 && i < NSEQ; i++) {
        lazymoe_session *s;
        if (lazymoe_session_create(&s, m, err, LM_ERR_LEN) != 0) return -1;
        float *lg = ref + (size_t)i * (STEPS + 1) * (size_t)V;
        rc = lazymoe_session_eval(s, prompts + i * 16, plen[i], lg, 0, err, LM_ERR_LEN);
        for (int g = 0; rc == 0 && g < steps[i]; g++) {
            int32_t t = argmax(lg + (size_t)g * (size_t)V, V);
            rc = lazymoe_session_eval(s, &t, 1, lg + (size_t)(g + 1) * (size_t)V, 0, err, LM_ERR_LEN);
        }
        lazymoe_session_free(s);
    }
    return rc;
}

/* Together: the same prompts (each alone), then batch steps over the sequences still
 * decoding; checks every step's logits against the solo run's. */
static void batch_equals_alone(const char *dir, int capacity, int act_bits) {
    char err[LM_ERR_LEN] = "";
    lazymoe_model *m = open_model(dir, -1, act_bits, err);
    CHECKF(m != NULL, "%s: %s", dir, err);
    if (!m) return;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    int V = info.vocab_size;
    int32_t prompts[NSEQ * 16];
    for (int i = 0; i < NSEQ * 16; i++) prompts[i] = (int32_t)((i * 37 + 11) % (V < 300 ? V : 300));
    float *ref = calloc((size_t)NSEQ * (STEPS + 1) * (size_t)V, sizeof(float));
    CHECKF(run_alone(m, prompts, V, ref, err) == 0, "%s alone: %s", dir, err);
    if (capacity >= 0) { /* the batch runs with lazy experts, the reference was resident */
        lazymoe_model_close(m);
        m = open_model(dir, capacity, act_bits, err);
        CHECKF(m != NULL, "%s capacity %d: %s", dir, capacity, err);
        if (!m) {
            free(ref);
            return;
        }
    }
    lazymoe_batch *b = NULL;
    CHECKF(lazymoe_batch_create(&b, m, 4, err, sizeof err) == 0, "%s", err);
    lazymoe_session *s[NSEQ] = {0};
    float *lg = malloc(sizeof(float) * NSEQ * (size_t)V), *first = malloc(sizeof(float) * (size_t)V);
    int rc = b ? 0 : -1;
    for (int i = 0; rc == 0 && i < NSEQ; i++) {
        rc = lazymoe_session_create(&s[i], m, err, sizeof err);
        if (rc == 0) rc = lazymoe_session_eval(s[i], prompts + i * 16, plen[i], first, 0, err, sizeof err);
        if (rc == 0)
            CHECKF(!memcmp(first, ref + (size_t)i * (STEPS + 1) * (size_t)V, sizeof(float) * (size_t)V),
                   "%s: prompt logits of sequence %d differ", dir, i);
    }
    int rows_seen[NSEQ + 1] = {0};
    for (int g = 0; rc == 0 && g < STEPS; g++) {
        lazymoe_session *step[NSEQ];
        int32_t ids[NSEQ];
        int who[NSEQ], n = 0;
        for (int i = NSEQ - 1; i >= 0; i--) { /* rows in another order than the sessions' */
            if (g >= steps[i]) continue;
            step[n] = s[i];
            who[n] = i;
            ids[n++] = argmax(ref + ((size_t)i * (STEPS + 1) + (size_t)g) * (size_t)V, V);
        }
        rows_seen[n]++;
        rc = lazymoe_batch_eval(b, step, ids, n, lg, err, sizeof err);
        for (int r = 0; rc == 0 && r < n; r++) {
            const float *want = ref + ((size_t)who[r] * (STEPS + 1) + (size_t)g + 1) * (size_t)V;
            CHECKF(!memcmp(lg + (size_t)r * (size_t)V, want, sizeof(float) * (size_t)V),
                   "%s capacity %d: step %d of sequence %d (%d rows) differs from alone", dir, capacity, g, who[r], n);
            CHECK_EQ_INT(lazymoe_session_length(s[who[r]]), plen[who[r]] + g + 1);
            CHECK_EQ_INT(lazymoe_session_tokens(s[who[r]])[plen[who[r]] + g], ids[r]);
        }
    }
    CHECKF(rc == 0, "%s: %s", dir, err);
    CHECK(rows_seen[3] == 3 && rows_seen[2] == STEPS - 3); /* both batch sizes really ran */
    unsigned long long st, tok;
    lazymoe_batch_counters(b, &st, &tok);
    CHECK(st == STEPS && tok == 3 * 3 + 2 * (STEPS - 3));
    for (int i = 0; i < NSEQ; i++) lazymoe_session_free(s[i]);
    lazymoe_batch_free(b);
    free(lg), free(first), free(ref);
    lazymoe_model_close(m);
}

static void demo_coder(void) { batch_equals_alone(DEMO, -1, 0); }          /* 4-bit, int8 activations */
static void demo_coder_f32_act(void) { batch_equals_alone(DEMO, -1, 32); } /* f32 activations */
static void demo_coder_lazy(void) { batch_equals_alone(DEMO, 4, 0); }      /* 4 slots for top-4 x 3 rows */
static void qwen3_moe(void) { batch_equals_alone(GOLDEN "qwen3_moe_f32", -1, 0); }
static void qwen3_moe_lazy(void) { batch_equals_alone(GOLDEN "qwen3_moe_f32", 2, 0); }
static void qwen3_next_linear(void) { batch_equals_alone(GOLDEN "qwen3_next_f32", -1, 0); }
static void qwen3_next_lazy(void) { batch_equals_alone(GOLDEN "qwen3_next_f32", 3, 0); }
static void qwen3_5_moe_gated(void) { batch_equals_alone(GOLDEN "qwen3_5_moe_from_next_f32", -1, 0); }
static void mixtral_window(void) { batch_equals_alone(GOLDEN "mixtral_window_f32", -1, 0); }
static void olmoe_clip(void) { batch_equals_alone(GOLDEN "olmoe_clip_bf16", 2, 0); }
static void gpt_oss_sinks(void) { batch_equals_alone(LAZYMOE_SOURCE_DIR "/tests/fixtures/gpt_oss/mxfp4", -1, 0); }

static void glm4_moe_sigmoid(void) { batch_equals_alone(GOLDEN "glm4_moe_qknorm_f32", 3, 0); }
static void minimax_m2_mqa(void) { batch_equals_alone(GOLDEN "minimax_m2_mqa_f32", -1, 0); }

static void bad_steps_refused(void) {
    char err[LM_ERR_LEN] = "";
    lazymoe_model *m = open_model(GOLDEN "qwen3_moe_f32", -1, 0, err);
    CHECKF(m != NULL, "%s", err);
    if (!m) return;
    lazymoe_batch *b = NULL;
    lazymoe_session *s[3] = {0};
    CHECK(lazymoe_batch_create(&b, m, 2, err, sizeof err) == 0);
    for (int i = 0; i < 3; i++) CHECK(lazymoe_session_create(&s[i], m, err, sizeof err) == 0);
    int32_t ids[3] = {1, 2, 3};
    CHECK(lazymoe_batch_eval(b, s, ids, 3, NULL, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "1..2 sessions");
    lazymoe_session *twice[2] = {s[0], s[0]};
    CHECK(lazymoe_batch_eval(b, twice, ids, 2, NULL, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "twice");
    int32_t bad[2] = {1, 1 << 30};
    CHECK(lazymoe_batch_eval(b, s, bad, 2, NULL, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "outside the vocabulary");
    CHECK_EQ_INT(lazymoe_session_length(s[0]), 0); /* nothing advanced */
    CHECK(lazymoe_batch_eval(b, s, ids, 2, NULL, err, sizeof err) == 0);
    CHECK_EQ_INT(lazymoe_session_length(s[0]), 1);
    CHECK_EQ_INT(lazymoe_session_length(s[1]), 1);
    lazymoe_batch *big = NULL;
    CHECK(lazymoe_batch_create(&big, m, 0, err, sizeof err) != 0 && big == NULL);
    for (int i = 0; i < 3; i++) lazymoe_session_free(s[i]);
    lazymoe_batch_free(b);
    lazymoe_model_close(m);
}

/* ---- generations in threads sharing a batch ---------------------------------------------- */

typedef struct {
    lazymoe_model *m;
    lazymoe_batch *batch;
    const char *prompt;
    int max_tokens;
    uint64_t seed;
    char *text;
    lazymoe_gen_stats st;
    int rc;
    char err[LM_ERR_LEN];
} gen_job;

static void *gen_thread(void *arg) {
    gen_job *j = arg;
    lazymoe_session *s = NULL;
    j->rc = lazymoe_session_create(&s, j->m, j->err, sizeof j->err);
    if (j->rc) return NULL;
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, j->m);
    p.max_tokens = j->max_tokens;
    p.sampling.temperature = 0.8f;
    p.sampling.top_p = 0.95f;
    p.sampling.seed = j->seed;
    p.ignore_eos = 1;
    p.batch = j->batch;
    j->rc = lazymoe_generate(s, j->prompt, &p, &j->text, &j->st, j->err, sizeof j->err);
    lazymoe_session_free(s);
    return NULL;
}

/* Four sampled generations (different prompts, lengths, seeds; one with a prompt long
 * enough for several prefill chunks while the others decode) run in threads sharing
 * a batch: each text equals the one generated alone, and the batch really ran steps
 * of more than one row. */
static void threads_share_a_batch(void) {
    char err[LM_ERR_LEN] = "";
    lazymoe_model *m = open_model(DEMO, 8, 0, err);
    CHECKF(m != NULL, "%s", err);
    if (!m) return;
    static char longp[8000];
    longp[0] = 0;
    for (int i = 0; i < 120; i++) strcat(longp, "def add(a, b):\n    return a + b\n");
    const char *prompts[4] = {"def fib(n):", "# Sort a list in Python\n", longp, "class Stack:\n    def push(self, x):"};
    int max_tokens[4] = {24, 40, 12, 32};
    gen_job alone[4], together[4];
    for (int i = 0; i < 4; i++) {
        alone[i] = (gen_job){.m = m, .prompt = prompts[i], .max_tokens = max_tokens[i], .seed = 100 + (uint64_t)i};
        gen_thread(&alone[i]);
        CHECKF(alone[i].rc == 0, "alone %d: %s", i, alone[i].err);
    }
    lazymoe_batch *b = NULL;
    CHECK(lazymoe_batch_create(&b, m, 4, err, sizeof err) == 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        together[i] = alone[i];
        together[i].text = NULL;
        together[i].batch = b;
        pthread_create(&th[i], NULL, gen_thread, &together[i]);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) {
        CHECKF(together[i].rc == 0, "together %d: %s", i, together[i].err);
        CHECKF(alone[i].text && together[i].text && !strcmp(alone[i].text, together[i].text),
               "generation %d differs in a batch:\n  alone:    %s\n  together: %s", i, th_str(alone[i].text),
               th_str(together[i].text));
        CHECK_EQ_INT(together[i].st.generated_tokens, max_tokens[i]);
        free(alone[i].text);
        free(together[i].text);
    }
    unsigned long long st = 0, tok = 0;
    lazymoe_batch_counters(b, &st, &tok);
    printf("# 4 threads: %llu steps, %llu tokens (%.2f rows a step)\n", st, tok, st ? (double)tok / (double)st : 0.0);
    CHECK(tok > st); /* some steps carried several sequences */
    CHECK(tok == 24 + 40 + 12 + 32 - 4); /* every decode token, each sequence's first comes from its prompt */
    lazymoe_batch_free(b);
    lazymoe_model_close(m);
}

int main(void) {
    TEST_CASE("batch_demo_coder_equals_alone", demo_coder);
    TEST_CASE("batch_demo_coder_f32_activations_equals_alone", demo_coder_f32_act);
    TEST_CASE("batch_demo_coder_lazy_equals_resident_alone", demo_coder_lazy);
    TEST_CASE("batch_qwen3_moe_equals_alone", qwen3_moe);
    TEST_CASE("batch_qwen3_moe_lazy_equals_resident_alone", qwen3_moe_lazy);
    TEST_CASE("batch_qwen3_next_linear_attention_equals_alone", qwen3_next_linear);
    TEST_CASE("batch_qwen3_next_lazy_equals_resident_alone", qwen3_next_lazy);
    TEST_CASE("batch_qwen3_5_moe_output_gate_equals_alone", qwen3_5_moe_gated);
    TEST_CASE("batch_mixtral_window_equals_alone", mixtral_window);
    TEST_CASE("batch_olmoe_clip_lazy_equals_alone", olmoe_clip);
    TEST_CASE("batch_gpt_oss_sinks_equals_alone", gpt_oss_sinks);
    TEST_CASE("batch_glm4_moe_sigmoid_router_lazy_equals_alone", glm4_moe_sigmoid);
    TEST_CASE("batch_minimax_m2_mqa_equals_alone", minimax_m2_mqa);
    TEST_CASE("batch_bad_steps_refused", bad_steps_refused);
    TEST_CASE("batch_threads_generate_as_alone", threads_share_a_batch);
    return th_failed_cases ? 1 : 0;
}

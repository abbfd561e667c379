/* Sampler: distributions against hand-computed values, penalties, determinism,
 * filter edge cases, degenerate logits, generation_config defaults. */
#include "api/sampler.h"
#include "api/text.h"
#include "harness.h"

static lazymoe_sampling params(float temp) {
    lazymoe_sampling p;
    lazymoe_sampling_init(&p, NULL);
    p.temperature = temp;
    return p;
}

/* probs of the sampler for logits[n] with p; returns kept count, -2 on init failure. */
static int dist(const lazymoe_sampling *p, const float *logits, int n, float *probs) {
    lm_sampler s;
    char err[LM_ERR_LEN];
    if (lm_sampler_init(&s, n, p, err) != 0) return -2;
    int k = lm_sampler_probs(&s, logits, probs);
    lm_sampler_free(&s);
    return k;
}

static int close_to(const float *a, const double *b, int n) {
    for (int i = 0; i < n; i++)
        if (fabs((double)a[i] - b[i]) > 1e-6) return 0;
    return 1;
}

static void test_greedy(void) {
    float l[6] = {1, 3, NAN, 3, -INFINITY, 2};
    lazymoe_sampling p = params(0);
    lm_sampler s;
    char err[LM_ERR_LEN];
    CHECK(lm_sampler_init(&s, 6, &p, err) == 0);
    CHECK_EQ_INT(lm_sampler_sample(&s, l), 1); /* tie 1/3: lowest id; NaN ignored */
    float pr[6];
    CHECK_EQ_INT(lm_sampler_probs(&s, l, pr), 1);
    CHECK(pr[1] == 1.0f && pr[3] == 0.0f);
    lm_sampler_free(&s);
}

static void test_temperature(void) {
    float l[3] = {1, 2, 3}, pr[3];
    lazymoe_sampling p = params(1);
    double z = exp(1) + exp(2) + exp(3);
    double want[3] = {exp(1) / z, exp(2) / z, exp(3) / z};
    CHECK_EQ_INT(dist(&p, l, 3, pr), 3);
    CHECK(close_to(pr, want, 3));
    p.temperature = 0.5f; /* logits / 0.5 */
    z = exp(2) + exp(4) + exp(6);
    double want2[3] = {exp(2) / z, exp(4) / z, exp(6) / z};
    CHECK_EQ_INT(dist(&p, l, 3, pr), 3);
    CHECK(close_to(pr, want2, 3));
}

/* probabilities 0.5, 0.3, 0.2 (and a fourth at 0) in shuffled positions */
static void probs532(float *l) {
    l[0] = logf(0.2f);
    l[1] = logf(0.5f);
    l[2] = -INFINITY;
    l[3] = logf(0.3f);
}

static void test_top_k(void) {
    float l[4], pr[4];
    probs532(l);
    lazymoe_sampling p = params(1);
    p.top_k = 2;
    CHECK_EQ_INT(dist(&p, l, 4, pr), 2);
    double want[4] = {0, 0.625, 0, 0.375};
    CHECK(close_to(pr, want, 4));
    p.top_k = 10; /* larger than the finite tokens: no filtering */
    CHECK_EQ_INT(dist(&p, l, 4, pr), 3);
    p.top_k = 1;
    CHECK_EQ_INT(dist(&p, l, 4, pr), 1);
    CHECK(pr[1] == 1.0f);
}

static void test_top_p(void) {
    float l[4], pr[4];
    probs532(l);
    lazymoe_sampling p = params(1);
    p.top_p = 0.4f; /* the most likely alone already reaches 0.4 */
    CHECK_EQ_INT(dist(&p, l, 4, pr), 1);
    p.top_p = 0.6f; /* 0.5 < 0.6: the second is kept */
    CHECK_EQ_INT(dist(&p, l, 4, pr), 2);
    double want[4] = {0, 0.625, 0, 0.375};
    CHECK(close_to(pr, want, 4));
    p.top_p = 0.79f;
    CHECK_EQ_INT(dist(&p, l, 4, pr), 2);
    p.top_p = 0.81f;
    CHECK_EQ_INT(dist(&p, l, 4, pr), 3);
    p.top_p = 1e-9f; /* always keeps one */
    CHECK_EQ_INT(dist(&p, l, 4, pr), 1);
    /* top-p's mass is taken within the top-k set (transformers' order): in the top-2
     * set the first has 0.625 >= 0.6, so it is alone. */
    p.top_k = 2;
    p.top_p = 0.6f;
    CHECK_EQ_INT(dist(&p, l, 4, pr), 1);
}

static void test_min_p(void) {
    float l[4], pr[4];
    probs532(l);
    lazymoe_sampling p = params(1);
    p.min_p = 0.5f; /* keep p >= 0.25 */
    CHECK_EQ_INT(dist(&p, l, 4, pr), 2);
    p.min_p = 0.35f; /* keep p >= 0.175 */
    CHECK_EQ_INT(dist(&p, l, 4, pr), 3);
    p.min_p = 1.0f; /* only the maximum */
    CHECK_EQ_INT(dist(&p, l, 4, pr), 1);
    CHECK(pr[1] == 1.0f);
    /* min-p is relative to the most likely token at the temperature used:
     * T = 0.5 squares the ratios: 0.36 and 0.16 of the top. */
    p.temperature = 0.5f;
    p.min_p = 0.3f;
    CHECK_EQ_INT(dist(&p, l, 4, pr), 2);
}

static void test_penalties(void) {
    float l[3] = {2, -2, 1}, pr[3];
    lazymoe_sampling p = params(1);
    p.repetition_penalty = 2;
    lm_sampler s;
    char err[LM_ERR_LEN];
    CHECK(lm_sampler_init(&s, 3, &p, err) == 0);
    int32_t ctx[2] = {0, 1};
    lm_sampler_note_context(&s, ctx, 2); /* -> {1, -4, 1} */
    lm_sampler_probs(&s, l, pr);
    double z = exp(1) + exp(-4) + exp(1);
    double want[3] = {exp(1) / z, exp(-4) / z, exp(1) / z};
    CHECK(close_to(pr, want, 3));
    lm_sampler_free(&s);

    /* presence / frequency count generated tokens only, not the context */
    p = params(1);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    CHECK(lm_sampler_init(&s, 3, &p, err) == 0);
    lm_sampler_note_context(&s, ctx, 2);
    lm_sampler_note_generated(&s, 2);
    lm_sampler_note_generated(&s, 2); /* logit 2: 1 - 0.5 - 2 x 0.25 = 0 */
    lm_sampler_probs(&s, l, pr);
    z = exp(2) + exp(-2) + exp(0);
    double want2[3] = {exp(2) / z, exp(-2) / z, exp(0) / z};
    CHECK(close_to(pr, want2, 3));
    lm_sampler_reset(&s); /* history forgotten */
    lm_sampler_probs(&s, l, pr);
    z = exp(2) + exp(-2) + exp(1);
    double want3[3] = {exp(2) / z, exp(-2) / z, exp(1) / z};
    CHECK(close_to(pr, want3, 3));
    lm_sampler_free(&s);

    /* greedy sees the penalties too */
    p = params(0);
    p.repetition_penalty = 4;
    CHECK(lm_sampler_init(&s, 3, &p, err) == 0);
    lm_sampler_note_context(&s, ctx, 1); /* 2 -> 0.5 < 1 */
    CHECK_EQ_INT(lm_sampler_sample(&s, l), 2);
    lm_sampler_free(&s);
}

static void test_determinism(void) {
    enum { V = 50, N = 20000 };
    float l[V];
    for (int i = 0; i < V; i++) l[i] = (float)sin(i * 1.7) * 2;
    lazymoe_sampling p = params(0.8f);
    p.top_k = 30;
    p.top_p = 0.9f;
    p.min_p = 0.02f;
    p.seed = 42;
    lm_sampler a, b;
    char err[LM_ERR_LEN];
    CHECK(lm_sampler_init(&a, V, &p, err) == 0);
    CHECK(lm_sampler_init(&b, V, &p, err) == 0);
    int same = 1;
    static int seq[200];
    for (int i = 0; i < 200; i++) {
        seq[i] = lm_sampler_sample(&a, l);
        same &= seq[i] == lm_sampler_sample(&b, l);
    }
    CHECK(same);
    lm_sampler_reset(&a); /* restarts the RNG */
    for (int i = 0; i < 200; i++) same &= seq[i] == lm_sampler_sample(&a, l);
    CHECK(same);
    lm_sampler_free(&b);
    p.seed = 43;
    CHECK(lm_sampler_init(&b, V, &p, err) == 0);
    int differ = 0;
    for (int i = 0; i < 200; i++) differ |= seq[i] != lm_sampler_sample(&b, l);
    CHECK(differ);
    lm_sampler_free(&b);
    /* empirical frequencies follow the distribution */
    float pr[V];
    lm_sampler_probs(&a, l, pr);
    static int hist[V];
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < N; i++) hist[lm_sampler_sample(&a, l)]++;
    double worst = 0;
    for (int i = 0; i < V; i++) {
        double d = fabs((double)hist[i] / N - pr[i]);
        if (d > worst) worst = d;
        if (pr[i] == 0) CHECK(hist[i] == 0);
    }
    CHECKF(worst < 0.015, "frequency off by %.4f", worst);
    lm_sampler_free(&a);
}

static void test_degenerate(void) {
    float l[4] = {-INFINITY, -INFINITY, NAN, -INFINITY}, pr[4];
    lazymoe_sampling p = params(1);
    lm_sampler s;
    char err[LM_ERR_LEN];
    CHECK(lm_sampler_init(&s, 4, &p, err) == 0);
    CHECK_EQ_INT(lm_sampler_sample(&s, l), -1);
    CHECK_EQ_INT(lm_sampler_probs(&s, l, pr), 0);
    CHECK(pr[0] == 0 && pr[3] == 0);
    lm_sampler_free(&s);
    p.temperature = 0;
    CHECK(lm_sampler_init(&s, 4, &p, err) == 0);
    CHECK_EQ_INT(lm_sampler_sample(&s, l), -1);
    /* one finite token is always the answer, whatever the filters */
    l[3] = -1e30f;
    CHECK_EQ_INT(lm_sampler_sample(&s, l), 3);
    lm_sampler_free(&s);
    p.temperature = 1e-6f; /* tiny temperature: everything but the top underflows */
    p.top_p = 0.5f;
    float l2[3] = {0, 1, 0.999f};
    CHECK_EQ_INT(dist(&p, l2, 3, pr), 1);
    CHECK(pr[1] == 1.0f);
    /* huge logits do not overflow */
    p = params(1);
    float l3[2] = {1e30f, 1e30f};
    CHECK_EQ_INT(dist(&p, l3, 2, pr), 2);
    CHECK(fabsf(pr[0] - 0.5f) < 1e-6f);
}

static void test_invalid(void) {
    float l[1] = {0}, pr[1];
    lazymoe_sampling p = params(-1);
    CHECK_EQ_INT(dist(&p, l, 1, pr), -2);
    p = params(NAN);
    CHECK_EQ_INT(dist(&p, l, 1, pr), -2);
    p = params(1);
    p.top_p = 0;
    CHECK_EQ_INT(dist(&p, l, 1, pr), -2);
    p = params(1);
    p.min_p = 1.5f;
    CHECK_EQ_INT(dist(&p, l, 1, pr), -2);
    p = params(1);
    p.repetition_penalty = 0;
    CHECK_EQ_INT(dist(&p, l, 1, pr), -2);
    p = params(1);
    p.top_k = -1;
    CHECK_EQ_INT(dist(&p, l, 1, pr), -2);
}

static void test_generation_defaults(void) {
    lazymoe_sampling p;
    char err[LM_ERR_LEN];
    CHECK(lm_generation_defaults_parse("{\"do_sample\": true, \"temperature\": 0.6, \"top_k\": 20, \"top_p\": 0.95,"
                                       " \"repetition_penalty\": 1.05, \"eos_token_id\": [1, 2]}",
                                       &p, err) == 0);
    CHECK(fabsf(p.temperature - 0.6f) < 1e-7f && p.top_k == 20 && fabsf(p.top_p - 0.95f) < 1e-7f);
    CHECK(fabsf(p.repetition_penalty - 1.05f) < 1e-7f && p.min_p == 0 && p.presence_penalty == 0);
    CHECK(lm_generation_defaults_parse("{\"do_sample\": false, \"temperature\": 0.6}", &p, err) == 0);
    CHECK(p.temperature == 0);
    CHECK(lm_generation_defaults_parse("{\"top_p\": 7, \"temperature\": -1}", &p, err) == 0);
    CHECK(p.top_p == 1 && p.temperature == 0); /* out-of-range values keep the defaults */
    CHECK(lm_generation_defaults_parse("[1]", &p, err) != 0);
    CHECK(lm_generation_defaults_parse("{", &p, err) != 0);
}

/* top_k over a vocabulary with many ties and NaNs: the kept set is the first k of all
 * finite tokens sorted by logit (higher first) then id (lower first), and within it the
 * distribution is the softmax of those k -- for k taken by one ranking pass (k <= 256) and
 * by the heap (k > 256) alike. */
static int by_logit_then_id(const void *a, const void *b, void *ctx) {
    const float *l = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (l[x] != l[y]) return l[x] > l[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

static void test_top_k_large(void) {
    enum { V = 5000 };
    static float l[V], pr[V];
    static int32_t order[V];
    uint64_t st = 3;
    int n = 0;
    for (int i = 0; i < V; i++) {
        l[i] = i % 97 == 0 ? NAN : (float)(int)(lm_rng_uniform(&st) * 40) / 8.0f; /* 40 values: ties */
        if (!isnan(l[i])) order[n++] = i;
    }
    qsort_r(order, (size_t)n, sizeof order[0], by_logit_then_id, l);
    int ks[] = {1, 37, 256, 257, 300, 4000};
    for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++) {
        lazymoe_sampling p = params(0.8f);
        p.top_k = ks[c];
        int k = ks[c] < n ? ks[c] : n;
        CHECK_EQ_INT(dist(&p, l, V, pr), k);
        double z = 0;
        for (int i = 0; i < k; i++) z += exp(((double)l[order[i]] - (double)l[order[0]]) / 0.8);
        int ok = 1;
        for (int i = 0; i < k; i++) {
            double want = exp(((double)l[order[i]] - (double)l[order[0]]) / 0.8) / z;
            ok &= fabs((double)pr[order[i]] - want) <= 1e-6 && pr[order[i]] > 0;
        }
        for (int i = k; i < n; i++) ok &= pr[order[i]] == 0.0f;
        CHECK(ok);
    }
}

/* lm_sampler_is_greedy: exactly the settings under which sample returns the first
 * largest of finite logits without drawing a random number (the RNG state unchanged),
 * checked over rows with many ties; and not for settings that may pick another. */
static void test_is_greedy(void) {
    enum { V = 3000 };
    static float l[V];
    lazymoe_sampling yes[4], no[6];
    for (int i = 0; i < 4; i++) yes[i] = params(0);
    yes[1].top_k = 7;
    yes[2].temperature = 0.8f, yes[2].top_k = 1;
    yes[3].temperature = 2.0f, yes[3].top_k = 1, yes[3].top_p = 0.3f, yes[3].min_p = 0.5f;
    for (int i = 0; i < 6; i++) no[i] = params(0.8f);
    no[1].top_k = 2;
    no[2].temperature = 0, no[2].repetition_penalty = 1.1f;
    no[3].temperature = 0, no[3].presence_penalty = 0.5f;
    no[4].top_k = 1, no[4].frequency_penalty = 0.2f;
    no[5].top_p = 0.01f; /* often one token, but not by rule */
    for (int i = 0; i < 4; i++) CHECKF(lm_sampler_is_greedy(&yes[i]), "setting %d", i);
    for (int i = 0; i < 6; i++) CHECKF(!lm_sampler_is_greedy(&no[i]), "setting %d", i);
    uint64_t st = 11;
    for (int row = 0; row < 20; row++) {
        for (int i = 0; i < V; i++) l[i] = (float)(int)(lm_rng_uniform(&st) * 30) / 4.0f - 3.0f; /* 30 values */
        int32_t first = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > l[first]) first = i;
        for (int i = 0; i < 4; i++) {
            lm_sampler s;
            char err[LM_ERR_LEN];
            yes[i].seed = (uint64_t)row;
            CHECK(lm_sampler_init(&s, V, &yes[i], err) == 0);
            uint64_t rng = s.rng;
            CHECKF(lm_sampler_sample(&s, l) == first, "row %d setting %d", row, i);
            CHECK(s.rng == rng);
            lm_sampler_free(&s);
        }
    }
}

int main(void) {
    TEST_CASE("sampler_greedy_ties_nan", test_greedy);
    TEST_CASE("sampler_is_greedy_means_first_largest_without_a_draw", test_is_greedy);
    TEST_CASE("sampler_temperature", test_temperature);
    TEST_CASE("sampler_top_k", test_top_k);
    TEST_CASE("sampler_top_k_large_vocabulary_ties_nan", test_top_k_large);
    TEST_CASE("sampler_top_p", test_top_p);
    TEST_CASE("sampler_min_p", test_min_p);
    TEST_CASE("sampler_penalties", test_penalties);
    TEST_CASE("sampler_seeded_determinism_and_frequencies", test_determinism);
    TEST_CASE("sampler_degenerate_logits", test_degenerate);
    TEST_CASE("sampler_invalid_params", test_invalid);
    TEST_CASE("sampler_generation_config_defaults", test_generation_defaults);
    TEST_EXIT();
}

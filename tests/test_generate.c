/* Text generation through the public API on a tiny model with a real tokenizer
 * (tests/fixtures/textgen: the golden qwen3_moe_f32 weights, a 320-token byte-level
 * BPE tokenizer, a ChatML template). The weights are random, so the text is
 * gibberish full of split UTF-8 sequences: exactly what the mechanisms must survive. */
#include "harness.h"
#include "nan_model.h"

#include "engine/engine.h"
#include "lazymoe.h"

#include <math.h>
#include <unistd.h>

#define MODEL_DIR LAZYMOE_SOURCE_DIR "/tests/fixtures/textgen"
#define DEMO_DIR LAZYMOE_SOURCE_DIR "/models/demo-coder"

static lazymoe_model *M;
static char err[512];

static lazymoe_session *new_session(void) {
    lazymoe_session *s = NULL;
    if (lazymoe_session_create(&s, M, err, sizeof err) != 0) printf("# %s\n", err);
    return s;
}

/* The model's vocabulary size: the length of one position's logits. */
static int vocab_size(void) {
    lazymoe_model_info info;
    lazymoe_model_get_info(M, &info);
    return info.vocab_size;
}

static int valid_utf8(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return 0;
        if (k == 2 && c < 0xC2) return 0;
        for (size_t j = 1; j < k; j++)
            if ((p[i + j] & 0xC0) != 0x80) return 0;
        if (k == 3 && ((c == 0xE0 && p[i + 1] < 0xA0) || (c == 0xED && p[i + 1] >= 0xA0))) return 0;
        if (k == 4 && ((c == 0xF0 && p[i + 1] < 0x90) || c > 0xF4 || (c == 0xF4 && p[i + 1] >= 0x90))) return 0;
        i += k;
    }
    return 1;
}

/* The greedy ids the token-id path (`run --ids`) produces: argmax, lowest id on ties. */
static int greedy_ids(const int32_t *prompt, int n, int gen, int32_t *out) {
    lazymoe_session *s = new_session();
    const int V = vocab_size();
    float *logits = malloc(sizeof(float) * (size_t)V);
    int ok = s && logits && lazymoe_session_eval(s, prompt, n, logits, 0, err, sizeof err) == 0;
    for (int g = 0; ok && g < gen; g++) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        out[g] = best;
        ok = lazymoe_session_eval(s, &out[g], 1, logits, 0, err, sizeof err) == 0;
    }
    free(logits);
    lazymoe_session_free(s);
    return ok;
}

static void test_tokenize_roundtrip(void) {
    const char *text = "hello world, h\xc3\xa9llo \xf0\x9f\x98\x80 <|im_start|>user";
    int32_t *ids = NULL;
    int n = 0;
    CHECK(lazymoe_tokenize(M, text, strlen(text), 1, &ids, &n, err, sizeof err) == 0);
    CHECK(n > 5 && n < (int)strlen(text));
    int special = 0;
    for (int i = 0; i < n; i++) special |= ids[i] == 318;
    CHECK(special); /* written special tokens become their ids */
    char *back = NULL, *skipped = NULL;
    CHECK(lazymoe_detokenize(M, ids, n, 0, &back, err, sizeof err) == 0);
    CHECK(back && !strcmp(back, text));
    CHECK(lazymoe_detokenize(M, ids, n, 1, &skipped, err, sizeof err) == 0);
    CHECK(skipped && !strcmp(skipped, "hello world, h\xc3\xa9llo \xf0\x9f\x98\x80 user"));
    int32_t half[2] = {0xF0, 0x9F}; /* half an emoji: replaced, valid UTF-8 */
    char *broken = NULL;
    CHECK(lazymoe_detokenize(M, half, 2, 1, &broken, err, sizeof err) == 0);
    CHECK(broken && valid_utf8((const unsigned char *)broken, strlen(broken)) && strstr(broken, "\xef\xbf\xbd"));
    lazymoe_free(ids);
    lazymoe_free(back);
    lazymoe_free(skipped);
    lazymoe_free(broken);
}

static void test_chat_format(void) {
    char *text = NULL;
    CHECK(lazymoe_chat_format(M, "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"}]",
                              NULL, 1, "{\"enable_thinking\": false}", &text, err, sizeof err) == 0);
    CHECK(text && !strcmp(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                "<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    lazymoe_free(text);
    text = NULL;
    CHECK(lazymoe_chat_format(M, "{\"role\":\"user\"}", NULL, 1, NULL, &text, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "messages must be a JSON array");
    CHECK(lazymoe_chat_format(M, "[", NULL, 1, NULL, &text, err, sizeof err) != 0);
    CHECK(!text);
}

/* Greedy text equals the decode of the greedy ids of the id path. */
static void test_greedy_matches_ids(void) {
    const char *prompt = "hello world, the experts";
    int32_t *ids = NULL;
    int n = 0;
    CHECK(lazymoe_tokenize(M, prompt, strlen(prompt), 1, &ids, &n, err, sizeof err) == 0);
    int32_t gen[40];
    CHECK(greedy_ids(ids, n, 40, gen));
    char *want = NULL, *got = NULL;
    CHECK(lazymoe_detokenize(M, gen, 40, 1, &want, err, sizeof err) == 0);
    lazymoe_session *s = new_session();
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, M);
    p.sampling.temperature = 0;
    p.max_tokens = 40;
    p.ignore_eos = 1;
    lazymoe_gen_stats st;
    CHECK(lazymoe_generate(s, prompt, &p, &got, &st, err, sizeof err) == 0);
    CHECKF(got && want && !strcmp(got, want), "text '%s' vs decode of ids '%s'", th_str(got), th_str(want));
    CHECK_EQ_INT(st.prompt_tokens, n);
    CHECK_EQ_INT(st.cached_tokens, 0);
    CHECK_EQ_INT(st.generated_tokens, 40);
    CHECK_EQ_INT(st.finish_reason, LAZYMOE_FINISH_LENGTH);
    CHECK(st.expert_hit_rate == -1 && st.expert_bytes_read == 0 && st.peak_rss_bytes > 0);
    CHECK(st.prefill_tok_per_s > 0 && st.decode_tok_per_s > 0);
    /* the session holds prompt + generated ids except the last (not evaluated) */
    CHECK_EQ_INT(lazymoe_session_length(s), n + 39);
    const int32_t *held = lazymoe_session_tokens(s);
    CHECK(!memcmp(held, ids, sizeof(int32_t) * (size_t)n) && !memcmp(held + n, gen, sizeof(int32_t) * 39));
    /* the same from ids */
    char *got2 = NULL;
    lazymoe_session *s2 = new_session();
    p.prompt_ids = ids;
    p.n_prompt_ids = n;
    CHECK(lazymoe_generate(s2, NULL, &p, &got2, NULL, err, sizeof err) == 0);
    CHECK(got2 && want && !strcmp(got2, want));
    lazymoe_session_free(s);
    lazymoe_session_free(s2);
    lazymoe_free(ids);
    lazymoe_free(want);
    lazymoe_free(got);
    lazymoe_free(got2);
}

typedef struct {
    char text[8192];
    size_t len;
    int pieces, invalid;
    size_t ends[512]; /* offsets where pieces end */
    int stop_after;   /* return 1 after this many pieces (0 = never) */
} pieces;

static int on_piece(void *ctx, const char *piece, size_t len) {
    pieces *p = ctx;
    if (!valid_utf8((const unsigned char *)piece, len) || piece[len] != 0 || len == 0) p->invalid++;
    if (p->len + len < sizeof p->text) {
        memcpy(p->text + p->len, piece, len);
        p->len += len;
        p->text[p->len] = 0;
    }
    if (p->pieces < 512) p->ends[p->pieces] = p->len;
    p->pieces++;
    return p->stop_after && p->pieces >= p->stop_after;
}

static void sampled_params(lazymoe_gen_params *p, uint64_t seed, int n) {
    lazymoe_gen_params_init(p, M);
    p->sampling.temperature = 1.0f;
    p->sampling.seed = seed;
    p->max_tokens = n;
    p->ignore_eos = 1;
}

/* Streaming: every piece valid UTF-8; pieces concatenate to the one-shot text. */
static void test_stream_equals_oneshot(void) {
    for (uint64_t seed = 1; seed <= 3; seed++) {
        lazymoe_gen_params p;
        sampled_params(&p, seed, 80);
        static pieces pc;
        memset(&pc, 0, sizeof pc);
        lazymoe_session *a = new_session(), *b = new_session();
        char *one = NULL;
        CHECK(lazymoe_generate_stream(a, "the quick", &p, on_piece, &pc, NULL, err, sizeof err) == 0);
        CHECK(lazymoe_generate(b, "the quick", &p, &one, NULL, err, sizeof err) == 0);
        CHECK_EQ_INT(pc.invalid, 0);
        CHECK(pc.pieces > 10);
        CHECK(one && !strcmp(one, pc.text));
        CHECK(one && valid_utf8((const unsigned char *)one, strlen(one)));
        lazymoe_free(one);
        lazymoe_session_free(a);
        lazymoe_session_free(b);
    }
}

/* Length of the first UTF-8 character starting at p. */
static size_t char_len(const char *p) {
    unsigned c = (unsigned char)*p;
    return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
}

static void test_stop_strings(void) {
    lazymoe_gen_params p;
    sampled_params(&p, 7, 80);
    static pieces full;
    memset(&full, 0, sizeof full);
    lazymoe_session *s = new_session();
    CHECK(lazymoe_generate_stream(s, "the quick", &p, on_piece, &full, NULL, err, sizeof err) == 0);
    /* A stop string spanning the boundary between two pieces: the last character of
     * piece i and the first of piece i + 1. */
    int tried = 0;
    for (int i = 2; i + 1 < full.pieces && i < 500 && tried < 4; i++) {
        size_t b = full.ends[i];
        if (b == 0 || b >= full.len) continue;
        size_t start = b - 1;
        while (start > 0 && ((unsigned char)full.text[start] & 0xC0) == 0x80) start--;
        char stop[16];
        size_t sl = (b - start) + char_len(full.text + b);
        if (sl >= sizeof stop) continue;
        memcpy(stop, full.text + start, sl);
        stop[sl] = 0;
        const char *first = strstr(full.text, stop);
        size_t want_len = (size_t)(first - full.text);
        const char *stops[2] = {"\x01never", stop};
        lazymoe_gen_params q = p;
        q.stop = stops;
        q.n_stop = 2;
        static pieces got;
        memset(&got, 0, sizeof got);
        lazymoe_gen_stats st;
        CHECK(lazymoe_generate_stream(s, "the quick", &q, on_piece, &got, &st, err, sizeof err) == 0);
        CHECKF(got.len == want_len && !memcmp(got.text, full.text, want_len), "stop '%s': got %zu bytes, want %zu",
               stop, got.len, want_len);
        CHECK(!strstr(got.text, stop));
        CHECK_EQ_INT(got.invalid, 0);
        CHECK_EQ_INT(st.finish_reason, LAZYMOE_FINISH_STOP);
        char *one = NULL;
        CHECK(lazymoe_generate(s, "the quick", &q, &one, NULL, err, sizeof err) == 0);
        CHECK(one && strlen(one) == want_len && !memcmp(one, full.text, want_len));
        lazymoe_free(one);
        tried++;
    }
    CHECK(tried >= 2);
    /* A stop string that never appears changes nothing; the earliest of several wins. */
    const char *none[1] = {"\x02\x03"};
    lazymoe_gen_params q = p;
    q.stop = none;
    q.n_stop = 1;
    char *one = NULL;
    CHECK(lazymoe_generate(s, "the quick", &q, &one, NULL, err, sizeof err) == 0);
    CHECK(one && !strcmp(one, full.text));
    lazymoe_free(one);
    lazymoe_session_free(s);
}

/* Prefix reuse: only the new suffix is evaluated, and the result is what a fresh
 * session computes. */
static void test_prefix_reuse(void) {
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, M);
    p.sampling.temperature = 0;
    p.max_tokens = 12;
    p.ignore_eos = 1;
    lazymoe_session *a = new_session(), *b = new_session();
    lazymoe_gen_stats st;
    char *t1 = NULL, *t2 = NULL, *t3 = NULL;
    const char *turn1 = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n";
    CHECK(lazymoe_generate(a, turn1, &p, &t1, &st, err, sizeof err) == 0);
    int n1 = st.prompt_tokens;
    CHECK_EQ_INT(st.cached_tokens, 0);
    /* The next turn repeats the conversation and adds to it. */
    char turn2[1024];
    snprintf(turn2, sizeof turn2, "%s%s<|im_end|>\n<|im_start|>user\nthe quick brown fox<|im_end|>\n"
                                  "<|im_start|>assistant\n", turn1, t1 ? t1 : "");
    CHECK(lazymoe_generate(a, turn2, &p, &t2, &st, err, sizeof err) == 0);
    CHECKF(st.cached_tokens >= n1, "cached %d of %d, first prompt %d", st.cached_tokens, st.prompt_tokens, n1);
    CHECK(st.cached_tokens < st.prompt_tokens);
    int32_t *ids = NULL;
    int n2 = 0;
    CHECK(lazymoe_tokenize(M, turn2, strlen(turn2), 1, &ids, &n2, err, sizeof err) == 0);
    CHECK_EQ_INT(st.prompt_tokens, n2);
    /* A fresh session gives the same answer and the same held tokens. */
    CHECK(lazymoe_generate(b, turn2, &p, &t3, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.cached_tokens, 0);
    CHECK(t2 && t3 && !strcmp(t2, t3));
    CHECK_EQ_INT(lazymoe_session_length(a), lazymoe_session_length(b));
    CHECK(!memcmp(lazymoe_session_tokens(a), lazymoe_session_tokens(b),
                  sizeof(int32_t) * (size_t)lazymoe_session_length(b)));
    /* ... and the same logits for a probe token. */
    const int V = vocab_size();
    float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
    int32_t probe = 104;
    CHECK(la && lb && lazymoe_session_eval(a, &probe, 1, la, 0, err, sizeof err) == 0 &&
          lazymoe_session_eval(b, &probe, 1, lb, 0, err, sizeof err) == 0);
    double worst = 0;
    for (int i = 0; la && lb && i < V; i++)
        if (fabs((double)la[i] - lb[i]) > worst) worst = fabs((double)la[i] - lb[i]);
    CHECKF(worst < 1e-4, "logits differ by %g", worst);
    free(la);
    free(lb);
    lazymoe_free(ids);
    lazymoe_free(t1);
    lazymoe_free(t2);
    lazymoe_free(t3);
    lazymoe_session_free(a);
    lazymoe_session_free(b);
}

static void test_same_prompt_cached(void) {
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, M);
    p.sampling.temperature = 0;
    p.max_tokens = 5;
    p.ignore_eos = 1;
    lazymoe_session *s = new_session();
    lazymoe_gen_stats st;
    char *a = NULL, *b = NULL;
    CHECK(lazymoe_generate(s, "hello world", &p, &a, &st, err, sizeof err) == 0);
    int n = st.prompt_tokens;
    CHECK(lazymoe_generate(s, "hello world", &p, &b, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.cached_tokens, n - 1); /* the last prompt token is evaluated again */
    CHECK(a && b && !strcmp(a, b));
    lazymoe_free(a);
    lazymoe_free(b);
    lazymoe_session_free(s);
}

/* EOS ids (generation_config's 319 and 317) end the answer and are not part of it. */
static void test_eos(void) {
    int found = 0;
    for (uint64_t seed = 1; seed <= 60 && !found; seed++) {
        lazymoe_gen_params p;
        sampled_params(&p, seed, 60);
        p.sampling.temperature = 3.0f;
        lazymoe_session *s = new_session();
        lazymoe_gen_stats st;
        char *text = NULL;
        if (lazymoe_generate(s, "hi", &p, &text, &st, err, sizeof err) != 0) break;
        const int32_t *t = lazymoe_session_tokens(s);
        int n = lazymoe_session_length(s), eos_at = -1;
        for (int i = st.prompt_tokens; i < n && eos_at < 0; i++)
            if (t[i] == 317 || t[i] == 319) eos_at = i - st.prompt_tokens;
        lazymoe_free(text);
        if (eos_at >= 0) {
            found = 1;
            p.ignore_eos = 0;
            CHECK(lazymoe_generate(s, "hi", &p, &text, &st, err, sizeof err) == 0);
            CHECK_EQ_INT(st.finish_reason, LAZYMOE_FINISH_STOP);
            CHECK_EQ_INT(st.generated_tokens, eos_at + 1);
            lazymoe_free(text);
        }
        lazymoe_session_free(s);
    }
    CHECK(found);
}

static void test_cancel_and_limits(void) {
    lazymoe_gen_params p;
    sampled_params(&p, 3, 50);
    static pieces pc;
    memset(&pc, 0, sizeof pc);
    pc.stop_after = 3;
    lazymoe_session *s = new_session();
    lazymoe_gen_stats st;
    CHECK(lazymoe_generate_stream(s, "the", &p, on_piece, &pc, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.finish_reason, LAZYMOE_FINISH_CANCELLED);
    CHECK_EQ_INT(pc.pieces, 3);
    volatile sig_atomic_t flag = 1;
    p.cancel = &flag;
    char *text = NULL;
    CHECK(lazymoe_generate(s, "the", &p, &text, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.finish_reason, LAZYMOE_FINISH_CANCELLED);
    CHECK(text && !*text);
    lazymoe_free(text);
    p.cancel = NULL;
    /* errors */
    text = NULL;
    CHECK(lazymoe_generate(s, "", &p, &text, &st, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "empty");
    int32_t bad = 5000;
    p.prompt_ids = &bad;
    p.n_prompt_ids = 1;
    CHECK(lazymoe_generate(s, NULL, &p, &text, &st, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "outside the vocabulary");
    CHECK(!text);
    lazymoe_session_free(s);
}

static void test_context_limits(void) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.max_context = 16;
    lazymoe_model *small = NULL;
    CHECK(lazymoe_model_open(&small, MODEL_DIR, &o, err, sizeof err) == 0);
    if (!small) return;
    lazymoe_session *s = NULL;
    CHECK(lazymoe_session_create(&s, small, err, sizeof err) == 0);
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, small);
    p.ignore_eos = 1;
    p.max_tokens = 0; /* until the context is full */
    lazymoe_gen_stats st;
    char *text = NULL;
    CHECK(lazymoe_generate(s, "hello", &p, &text, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.finish_reason, LAZYMOE_FINISH_LENGTH);
    CHECK_EQ_INT(st.prompt_tokens + st.generated_tokens, 17); /* 16 held + the last, not evaluated */
    lazymoe_free(text);
    text = NULL;
    CHECK(lazymoe_generate(s, "the quick brown fox jumps over the lazy dog and more words than fit", &p, &text,
                           &st, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "prompt is too long");
    lazymoe_session_free(s);
    lazymoe_model_close(small);
}

/* forced_text (tests only): the answer is the given text, the session holds exactly
 * prompt + its tokens (the model evaluated them), stop strings and max_tokens still
 * apply, and stats name the stop string that ended the answer. */
static void test_forced_text(void) {
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, M);
    p.forced_text = "<think>plan</think>h\xc3\xa9llo <tool_call>{\"a\": 1}</tool_call>";
    lazymoe_session *s = new_session();
    lazymoe_gen_stats st;
    char *t = NULL;
    const char *prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    CHECK(lazymoe_generate(s, prompt, &p, &t, &st, err, sizeof err) == 0);
    CHECKF(t && !strcmp(t, p.forced_text), "%s", t ? t : "(null)");
    int32_t *fids = NULL, *pids = NULL;
    int nf = 0, np = 0;
    CHECK(lazymoe_tokenize(M, p.forced_text, strlen(p.forced_text), 0, &fids, &nf, err, sizeof err) == 0);
    CHECK(lazymoe_tokenize(M, prompt, strlen(prompt), 1, &pids, &np, err, sizeof err) == 0);
    CHECK_EQ_INT(st.generated_tokens, nf);
    CHECK(st.finish_reason == LAZYMOE_FINISH_STOP && st.stop_index == -1);
    /* every forced token but the last was evaluated (the last one's logits are not needed) */
    CHECK_EQ_INT(lazymoe_session_length(s), np + nf - 1);
    CHECK(fids && !memcmp(lazymoe_session_tokens(s) + np, fids, sizeof(int32_t) * (size_t)(nf - 1)));
    lazymoe_free(t);
    /* A stop string inside the forced text ends it there and is reported by index. */
    const char *stops[2] = {"zzz", "<tool_call>"};
    p.stop = stops;
    p.n_stop = 2;
    CHECK(lazymoe_generate(s, prompt, &p, &t, &st, err, sizeof err) == 0);
    CHECKF(t && !strcmp(t, "<think>plan</think>h\xc3\xa9llo "), "%s", t ? t : "(null)");
    CHECK(st.finish_reason == LAZYMOE_FINISH_STOP && st.stop_index == 1);
    lazymoe_free(t);
    /* max_tokens cuts it short. */
    p.n_stop = 0;
    p.max_tokens = 3;
    CHECK(lazymoe_generate(s, prompt, &p, &t, &st, err, sizeof err) == 0);
    CHECK(st.finish_reason == LAZYMOE_FINISH_LENGTH && st.generated_tokens == 3);
    lazymoe_free(t);
    lazymoe_free(fids);
    lazymoe_free(pids);
    lazymoe_session_free(s);
}

/* kv_cache_tokens: the memory plan reserves KV for that many positions (a server
 * keeping several conversations), and session capacity grows by doubling. */
static void test_kv_cache_tokens_planned(void) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.max_context = 256;
    o.no_warm_start = 1;
    o.kv_bits = 32; /* 4 bytes per value below */
    lazymoe_model *a = NULL, *b = NULL;
    o.memory_budget = 1ull << 30;
    CHECK(lazymoe_model_open(&a, MODEL_DIR, &o, err, sizeof err) == 0);
    o.kv_cache_tokens = 1024;
    CHECK(lazymoe_model_open(&b, MODEL_DIR, &o, err, sizeof err) == 0);
    if (a && b) {
        lazymoe_expert_stats sa, sb;
        lazymoe_model_info info;
        lazymoe_model_get_expert_stats(a, -1, &sa);
        lazymoe_model_get_expert_stats(b, -1, &sb);
        lazymoe_model_get_info(a, &info);
        /* K and V of every layer, and the token id the session holds for the position */
        uint64_t per_token = (uint64_t)info.n_layers * 2 * (uint64_t)info.n_kv_heads * (uint64_t)info.head_dim * 4 + 4;
        CHECKF(sb.planned_bytes - sa.planned_bytes == per_token * (1024 - 256), "planned %llu vs %llu",
               (unsigned long long)sb.planned_bytes, (unsigned long long)sa.planned_bytes);
        lazymoe_session *s = NULL;
        CHECK(lazymoe_session_create(&s, a, err, sizeof err) == 0);
        CHECK_EQ_INT(lazymoe_session_capacity(s), 0);
        int32_t ids[3] = {3, 14, 15};
        CHECK(lazymoe_session_eval(s, ids, 3, NULL, 0, err, sizeof err) == 0);
        CHECK(lazymoe_session_capacity(s) >= 3 && lazymoe_session_capacity(s) <= 256);
        lazymoe_session_free(s);
    }
    lazymoe_model_close(a);
    lazymoe_model_close(b);
}

static void test_no_tokenizer(void) {
    lazymoe_model *m = NULL;
    CHECK(lazymoe_model_open(&m, LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/olmoe_f32", NULL, err, sizeof err) == 0);
    if (!m) return;
    int32_t *ids = NULL;
    int n;
    CHECK(lazymoe_tokenize(m, "x", 1, 1, &ids, &n, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "no tokenizer.json");
    lazymoe_session *s = NULL;
    CHECK(lazymoe_session_create(&s, m, err, sizeof err) == 0);
    char *text = NULL;
    CHECK(lazymoe_generate(s, "x", NULL, &text, NULL, err, sizeof err) != 0);
    CHECK_STR_CONTAINS(err, "no tokenizer.json");
    lazymoe_session_free(s);
    lazymoe_model_close(m);
}

/* on_token: the reported log-probabilities are the log-softmax of the logits the
 * plain eval path computes for the same tokens (independent walk, naive double
 * arithmetic), the alternatives are the n most likely in order, and the callback
 * sees every generated token once, before its text. */
typedef struct {
    int n;
    int32_t ids[32];
    float lp[32];
    int n_top[32];
    int32_t top[32][5];
    float top_lp[32][5];
    size_t bytes_total;
    int bad_bytes;
} lp_log;

static int on_token_log(void *ctx, const lazymoe_token_info *info) {
    lp_log *l = ctx;
    if (l->n >= 32) return 1;
    l->ids[l->n] = info->token.id;
    l->lp[l->n] = info->token.logprob;
    l->n_top[l->n] = info->n_top;
    for (int i = 0; i < info->n_top && i < 5; i++) {
        l->top[l->n][i] = info->top[i].id;
        l->top_lp[l->n][i] = info->top[i].logprob;
        if (!info->top[i].bytes) l->bad_bytes++;
    }
    if (!info->token.bytes) l->bad_bytes++;
    l->bytes_total += info->token.n_bytes;
    l->n++;
    return 0;
}

static void test_logprobs(void) {
    const char *prompt = "hello world, the experts";
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, M);
    p.sampling.temperature = 0.9f;
    p.sampling.top_k = 20;
    p.sampling.seed = 7;
    p.max_tokens = 24;
    p.ignore_eos = 1;
    p.add_special = 1;
    lp_log l = {0};
    p.on_token = on_token_log;
    p.token_ctx = &l;
    p.n_top_logprobs = 5;
    lazymoe_session *s = new_session();
    char *text = NULL;
    lazymoe_gen_stats st;
    CHECK(lazymoe_generate(s, prompt, &p, &text, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(l.n, st.generated_tokens);
    CHECK_EQ_INT(l.bad_bytes, 0);
    char *again = NULL; /* the reported ids are the answer's */
    CHECK(lazymoe_detokenize(M, l.ids, l.n, 1, &again, err, sizeof err) == 0);
    CHECK(text && again && !strcmp(text, again));
    CHECK(l.bytes_total > 0);
    lazymoe_free(again);
    int32_t *ids = NULL;
    int n = 0;
    CHECK(lazymoe_tokenize(M, prompt, strlen(prompt), 1, &ids, &n, err, sizeof err) == 0);
    const int V = vocab_size();
    float *logits = malloc(sizeof(float) * (size_t)V);
    lazymoe_session *w = new_session();
    int ok = logits && w && lazymoe_session_eval(w, ids, n, logits, 0, err, sizeof err) == 0;
    double worst = 0;
    int order_bad = 0;
    for (int g = 0; ok && g < l.n; g++) {
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < V; i++)
            if (logits[i] > mx) mx = logits[i];
        for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
        double lse = mx + log(sum);
        double d = fabs(((double)logits[l.ids[g]] - lse) - (double)l.lp[g]);
        if (d > worst) worst = d;
        /* the alternatives: the 5 largest logits, most likely first, ties by lower id */
        if (l.n_top[g] != 5) order_bad++;
        for (int k = 0; k < 5 && k < l.n_top[g]; k++) {
            int32_t t = l.top[g][k];
            int rank = 0;
            for (int i = 0; i < V; i++)
                if (logits[i] > logits[t] || (logits[i] == logits[t] && i < t)) rank++;
            if (rank != k) order_bad++;
            d = fabs(((double)logits[t] - lse) - (double)l.top_lp[g][k]);
            if (d > worst) worst = d;
        }
        ok = lazymoe_session_eval(w, &l.ids[g], 1, logits, 0, err, sizeof err) == 0;
    }
    CHECK(ok);
    CHECKF(worst < 1e-5, "largest log-probability difference %g", worst);
    CHECK_EQ_INT(order_bad, 0);
    /* the same draw without the callback: reporting changes nothing */
    lazymoe_session *s2 = new_session();
    p.on_token = NULL;
    char *text2 = NULL;
    CHECK(lazymoe_generate(s2, prompt, &p, &text2, NULL, err, sizeof err) == 0);
    CHECK(text && text2 && !strcmp(text, text2));
    /* bad n_top is an error, a non-zero return cancels */
    p.on_token = on_token_log;
    p.n_top_logprobs = LAZYMOE_MAX_TOP_LOGPROBS + 1;
    char *t3 = NULL;
    CHECK(lazymoe_generate(s2, prompt, &p, &t3, NULL, err, sizeof err) != 0);
    CHECK(strstr(err, "n_top_logprobs") != NULL);
    lp_log full = {.n = 30};
    p.n_top_logprobs = 0;
    p.token_ctx = &full;
    CHECK(lazymoe_generate(s2, prompt, &p, &t3, &st, err, sizeof err) == 0);
    CHECK_EQ_INT(st.finish_reason, LAZYMOE_FINISH_CANCELLED);
    lazymoe_free(t3);
    lazymoe_free(text);
    lazymoe_free(text2);
    lazymoe_free(ids);
    free(logits);
    lazymoe_session_free(s);
    lazymoe_session_free(s2);
    lazymoe_session_free(w);
}

/* lazymoe_tokenize_max stops counting past the limit and gives a prefix of the
 * full encoding; under the limit it is the full encoding. */
static void test_tokenize_max(void) {
    size_t len = 200000;
    char *text = malloc(len + 1);
    CHECK(text != NULL);
    if (!text) return;
    for (size_t i = 0; i < len; i++) text[i] = "ab cd\nxyz. "[i % 12];
    text[len] = 0;
    int32_t *all = NULL, *some = NULL;
    int n_all = 0, n_some = 0;
    CHECK(lazymoe_tokenize(M, text, len, 0, &all, &n_all, err, sizeof err) == 0);
    CHECK(n_all > 1000);
    CHECK(lazymoe_tokenize_max(M, text, len, 0, 1000, &some, &n_some, err, sizeof err) == 0);
    CHECKF(n_some > 1000 && n_some < 1100, "counted %d ids with a limit of 1000", n_some);
    CHECK(all && some && !memcmp(all, some, sizeof(int32_t) * 1000));
    lazymoe_free(some);
    some = NULL;
    CHECK(lazymoe_tokenize_max(M, text, len, 0, n_all, &some, &n_some, err, sizeof err) == 0);
    CHECK(n_some == n_all && some && !memcmp(all, some, sizeof(int32_t) * (size_t)n_all));
    lazymoe_free(some);
    CHECK(lazymoe_tokenize_max(M, text, len, 0, -1, &some, &n_some, err, sizeof err) != 0);
    lazymoe_free(all);
    free(text);
}

/* lazymoe_session_fit releases capacity beyond what is held, and a fitted session
 * goes on exactly as an unfitted one (the KV prefix is kept). */
static void test_session_fit(void) {
    const char *prompt = "hello world, the experts and the rest of the words";
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, M);
    p.sampling.temperature = 0;
    p.max_tokens = 300;
    p.ignore_eos = 1;
    lazymoe_session *a = new_session(), *b = new_session();
    char *ta = NULL, *tb = NULL;
    CHECK(lazymoe_generate(a, prompt, &p, &ta, NULL, err, sizeof err) == 0);
    CHECK(lazymoe_generate(b, prompt, &p, &tb, NULL, err, sizeof err) == 0);
    int len = lazymoe_session_length(a);
    CHECKF(lazymoe_session_capacity(a) == 512 && len > 256 && len < 512, "capacity %d, length %d",
           lazymoe_session_capacity(a), len);
    CHECK(lazymoe_session_fit(a, err, sizeof err) == 0);
    CHECK_EQ_INT(lazymoe_session_capacity(a), 512 > len ? (len + 255) / 256 * 256 : 512);
    CHECK_EQ_INT(lazymoe_session_length(a), len);
    /* both continue the same conversation */
    char *full = malloc(strlen(prompt) + strlen(ta ? ta : "") + 16);
    if (full) sprintf(full, "%s%s more", prompt, ta ? ta : "");
    char *ca = NULL, *cb = NULL;
    p.max_tokens = 40;
    CHECK(full && lazymoe_generate(a, full, &p, &ca, NULL, err, sizeof err) == 0);
    CHECK(full && lazymoe_generate(b, full, &p, &cb, NULL, err, sizeof err) == 0);
    CHECK(ca && cb && !strcmp(ca, cb));
    free(full);
    lazymoe_free(ta);
    lazymoe_free(tb);
    lazymoe_free(ca);
    lazymoe_free(cb);
    lazymoe_session_free(a);
    lazymoe_session_free(b);
}

/* A saved session restores into a new one that computes exactly what the original
 * does next (logits bit for bit); foreign, truncated and corrupt files are errors that
 * leave the session empty. */
static void test_session_file(void) {
    const char *prompt = "hello world, the experts and the rest of the words we say";
    int32_t *ids = NULL;
    int n = 0;
    CHECK(lazymoe_tokenize(M, prompt, strlen(prompt), 1, &ids, &n, err, sizeof err) == 0);
    size_t V = (size_t)vocab_size();
    float *la = malloc(sizeof(float) * V * 3), *lb = malloc(sizeof(float) * V * 3);
    lazymoe_session *a = new_session(), *b = new_session();
    char path[256];
    snprintf(path, sizeof path, "/tmp/lazymoe-test-session-%d.lmkv", (int)getpid());
    CHECK(la && lb && lazymoe_session_eval(a, ids, n, NULL, 0, err, sizeof err) == 0);
    CHECK(lazymoe_session_save(a, n - 2, path, err, sizeof err) == 0);
    CHECK(lazymoe_session_load(b, path, err, sizeof err) == 0);
    CHECK_EQ_INT(lazymoe_session_length(b), n - 2);
    int32_t *held = NULL;
    int nh = 0;
    CHECK(lazymoe_session_file_tokens(M, path, &held, &nh, err, sizeof err) == 0);
    CHECK(nh == n - 2 && held && !memcmp(held, ids, sizeof(int32_t) * (size_t)nh));
    lazymoe_free(held);
    /* the original, cut back to the saved positions, and the restored one continue alike */
    CHECK(lazymoe_session_truncate(a, n - 2, err, sizeof err) == 0);
    int32_t more[3] = {ids[n - 2], ids[n - 1], ids[0]};
    CHECK(lazymoe_session_eval(a, more, 3, la, 1, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(b, more, 3, lb, 1, err, sizeof err) == 0);
    CHECK(la && lb && !memcmp(la, lb, sizeof(float) * V * 3));
    /* damage: one flipped byte, a truncated copy, a wrong magic */
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 200, SEEK_SET);
        int ch = fgetc(f);
        fseek(f, 200, SEEK_SET);
        fputc(ch ^ 1, f);
        fclose(f);
    }
    lazymoe_session *c = new_session();
    CHECK(lazymoe_session_load(c, path, err, sizeof err) != 0);
    CHECKF(strstr(err, "checksum") || strstr(err, "vocabulary"), "error: %s", err);
    CHECK_EQ_INT(lazymoe_session_length(c), 0);
    CHECK(truncate(path, 100) == 0);
    CHECK(lazymoe_session_load(c, path, err, sizeof err) != 0 && strstr(err, "truncated"));
    f = fopen(path, "wb");
    if (f) {
        fputs("not a session file at all, just text", f);
        fclose(f);
    }
    CHECK(lazymoe_session_load(c, path, err, sizeof err) != 0 && strstr(err, "not a lazymoe session"));
    CHECK(lazymoe_session_save(a, 0, path, err, sizeof err) != 0);
    unlink(path);
    lazymoe_session_free(a);
    lazymoe_session_free(b);
    lazymoe_session_free(c);
    free(la);
    free(lb);
    lazymoe_free(ids);
}

/* Restoring only a stored session's first positions (what a request that shares part of
 * a stored conversation needs): the KV room taken is that prefix's, the continuation is
 * what the original computes after being cut back to it, and the rest of the file is
 * still checked (a flipped byte past the prefix is an error). */
static void test_session_file_prefix(void) {
    const char *prompt = "hello world, the experts and the rest of the words we say, and then some more words";
    int32_t *ids = NULL;
    int n = 0;
    CHECK(lazymoe_tokenize(M, prompt, strlen(prompt), 1, &ids, &n, err, sizeof err) == 0);
    size_t V = (size_t)vocab_size();
    float *la = malloc(sizeof(float) * V * 2), *lb = malloc(sizeof(float) * V * 2);
    lazymoe_session *a = new_session(), *b = new_session(), *c = new_session();
    char path[256];
    snprintf(path, sizeof path, "/tmp/lazymoe-test-prefix-%d.lmkv", (int)getpid());
    const int keep = 5;
    CHECK(n > keep + 4 && la && lb);
    CHECK(lazymoe_session_eval(a, ids, n, NULL, 0, err, sizeof err) == 0);
    CHECK(lazymoe_session_save(a, n, path, err, sizeof err) == 0);
    CHECK(lazymoe_session_load_prefix(b, path, keep, err, sizeof err) == 0);
    CHECK_EQ_INT(lazymoe_session_length(b), keep);
    CHECKF(lazymoe_session_capacity(b) < n, "restoring %d of %d positions took room for %d", keep, n,
           lazymoe_session_capacity(b));
    CHECK(lazymoe_session_truncate(a, keep, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(a, ids + keep, 2, la, 1, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(b, ids + keep, 2, lb, 1, err, sizeof err) == 0);
    CHECK(!memcmp(la, lb, sizeof(float) * V * 2));
    /* a prefix longer than the file restores the whole file */
    CHECK(lazymoe_session_load_prefix(c, path, n + 50, err, sizeof err) == 0);
    CHECK_EQ_INT(lazymoe_session_length(c), n);
    /* damage after the prefix's bytes: still refused, the session left empty */
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, -16, SEEK_END);
        int ch = fgetc(f);
        fseek(f, -16, SEEK_END);
        fputc(ch ^ 1, f);
        fclose(f);
    }
    CHECK(lazymoe_session_load_prefix(c, path, keep, err, sizeof err) != 0);
    CHECKF(strstr(err, "checksum") != NULL, "error: %s", err);
    CHECK_EQ_INT(lazymoe_session_length(c), 0);
    unlink(path);
    lazymoe_session_free(a);
    lazymoe_session_free(b);
    lazymoe_session_free(c);
    free(la);
    free(lb);
    lazymoe_free(ids);
}

/* ---- greedy evaluation (lazymoe_session_eval_greedy) ------------------------------------ */

/* The first of the largest logits: the greedy pick the id path makes. */
static int32_t argmax(const float *v, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* Token by token, lazymoe_session_eval_greedy picks the argmax of the logits
 * lazymoe_session_eval gives for the same tokens: a prompt of two chunks (300 ids),
 * then `steps` decode steps fed the pick, each session holding the same tokens. */
static void greedy_equals_argmax_on(lazymoe_model *m, int steps) {
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    int V = info.vocab_size;
    enum { PROMPT = 300 };
    int32_t prompt[PROMPT];
    for (int i = 0; i < PROMPT; i++) prompt[i] = (int32_t)((i * 37 + 11) % V);
    lazymoe_session *a = NULL, *b = NULL;
    float *logits = malloc(sizeof(float) * (size_t)V);
    CHECK(logits && lazymoe_session_create(&a, m, err, sizeof err) == 0 && lazymoe_session_create(&b, m, err, sizeof err) == 0);
    if (!logits || !a || !b) goto out;
    int32_t next = -1;
    CHECKF(lazymoe_session_eval(a, prompt, PROMPT, logits, 0, err, sizeof err) == 0, "%s", err);
    CHECKF(lazymoe_session_eval_greedy(b, prompt, PROMPT, &next, err, sizeof err) == 0, "%s", err);
    int distinct = 0;
    for (int g = 0; g < steps; g++) {
        int32_t want = argmax(logits, V);
        CHECKF(next == want, "step %d: greedy evaluation picked %d, the logits' argmax is %d", g, next, want);
        distinct += g > 0 && want != prompt[0];
        CHECKF(lazymoe_session_eval(a, &want, 1, logits, 0, err, sizeof err) == 0, "%s", err);
        CHECKF(lazymoe_session_eval_greedy(b, &want, 1, &next, err, sizeof err) == 0, "%s", err);
    }
    CHECK(distinct > 0); /* the picks are not all one token */
    CHECK_EQ_INT(lazymoe_session_length(b), PROMPT + steps);
    CHECK(!memcmp(lazymoe_session_tokens(a), lazymoe_session_tokens(b), sizeof(int32_t) * (size_t)(PROMPT + steps)));
out:
    free(logits);
    lazymoe_session_free(a);
    lazymoe_session_free(b);
}

static void test_eval_greedy_equals_argmax(void) {
    greedy_equals_argmax_on(M, 60);
    /* the demo model: MLX 4-bit weights, int8 activations, 4160 tokens */
    lazymoe_model *demo = NULL;
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = 2;
    o.no_warm_start = 1;
    CHECKF(lazymoe_model_open(&demo, DEMO_DIR, &o, err, sizeof err) == 0, "%s", err);
    if (demo) greedy_equals_argmax_on(demo, 40);
    lazymoe_model_close(demo);
}

/* Both evaluations fail alike, with the same message: no tokens, an id outside the
 * vocabulary, and logits that are not finite (a model whose lm_head row 7 is NaN). */
static void test_eval_greedy_errors(void) {
    char e1[512], e2[512];
    int32_t next = -1, bad = 100000, ok[3] = {5, 6, 7};
    lazymoe_session *a = new_session(), *b = new_session();
    float *logits = malloc(sizeof(float) * (size_t)vocab_size());
    CHECK(lazymoe_session_eval(a, ok, 0, logits, 0, e1, sizeof e1) != 0);
    CHECK(lazymoe_session_eval_greedy(b, ok, 0, &next, e2, sizeof e2) != 0);
    CHECKF(!strcmp(e1, e2), "'%s' vs '%s'", e1, e2);
    CHECK(lazymoe_session_eval(a, &bad, 1, logits, 0, e1, sizeof e1) != 0);
    CHECK(lazymoe_session_eval_greedy(b, &bad, 1, &next, e2, sizeof e2) != 0);
    CHECKF(!strcmp(e1, e2) && strstr(e1, "outside the vocabulary"), "'%s' vs '%s'", e1, e2);
    lazymoe_session_free(a);
    lazymoe_session_free(b);
    char dir[256];
    lazymoe_model *nm = NULL;
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = 2;
    o.no_warm_start = 1;
    CHECK(nan_model_make(MODEL_DIR, 7, dir) == 0);
    CHECKF(lazymoe_model_open(&nm, dir, &o, err, sizeof err) == 0, "%s", err);
    if (nm) {
        a = b = NULL;
        CHECK(lazymoe_session_create(&a, nm, err, sizeof err) == 0 && lazymoe_session_create(&b, nm, err, sizeof err) == 0);
        CHECK(a && b && lazymoe_session_eval(a, ok, 3, logits, 0, e1, sizeof e1) != 0);
        CHECK(a && b && lazymoe_session_eval_greedy(b, ok, 3, &next, e2, sizeof e2) != 0);
        CHECKF(!strcmp(e1, e2) && strstr(e1, "non-finite logit (nan) at position 2"), "'%s' vs '%s'", e1, e2);
        lazymoe_session_free(a);
        lazymoe_session_free(b);
        /* generation: greedy (the session picks) and with log-probabilities (the
         * sampler over the logits) stop with that same error */
        lazymoe_gen_params p;
        lazymoe_gen_params_init(&p, nm);
        p.sampling.temperature = 0;
        p.max_tokens = 4;
        char *text = NULL;
        a = b = NULL;
        CHECK(lazymoe_session_create(&a, nm, err, sizeof err) == 0 && lazymoe_session_create(&b, nm, err, sizeof err) == 0);
        CHECK(a && lazymoe_generate(a, "hello", &p, &text, NULL, e1, sizeof e1) != 0);
        lp_log l = {0};
        p.on_token = on_token_log;
        p.token_ctx = &l;
        CHECK(b && lazymoe_generate(b, "hello", &p, &text, NULL, e2, sizeof e2) != 0);
        CHECKF(!strcmp(e1, e2) && strstr(e1, "non-finite logit (nan)"), "'%s' vs '%s'", e1, e2);
        lazymoe_session_free(a);
        lazymoe_session_free(b);
    }
    lazymoe_model_close(nm);
    nan_model_remove(dir);
    free(logits);
}

/* Greedy settings take the session's pick (lazymoe_session_eval_greedy): on the CPU it
 * computes the logits into the session's scratch (s->s.logits_host), which the
 * sampler's path never writes, so that array filled with NaN before and holding the
 * last step's logits after -- their argmax the last token generated -- shows the path
 * was taken. Temperature 0, and top_k 1 at temperature 0.8, give the id path's text. */
static void test_generate_greedy_path(void) {
    const char *prompt = "hello world, the experts";
    int32_t *ids = NULL;
    int n = 0, V = vocab_size();
    CHECK(lazymoe_tokenize(M, prompt, strlen(prompt), 1, &ids, &n, err, sizeof err) == 0);
    int32_t gen[30];
    CHECK(greedy_ids(ids, n, 30, gen));
    char *want = NULL;
    CHECK(lazymoe_detokenize(M, gen, 30, 1, &want, err, sizeof err) == 0);
    for (int variant = 0; variant < 2; variant++) {
        lazymoe_session *s = new_session();
        if (!s) break;
        for (int i = 0; i < V; i++) s->s.logits_host[i] = NAN;
        lazymoe_gen_params p;
        lazymoe_gen_params_init(&p, M);
        p.sampling.temperature = variant ? 0.8f : 0.0f;
        p.sampling.top_k = variant ? 1 : 0;
        p.sampling.seed = 5;
        p.max_tokens = 30;
        p.ignore_eos = 1;
        char *got = NULL;
        CHECK(lazymoe_generate(s, prompt, &p, &got, NULL, err, sizeof err) == 0);
        CHECKF(got && want && !strcmp(got, want), "variant %d: '%s' vs '%s'", variant, th_str(got), th_str(want));
        int finite = 1;
        for (int i = 0; i < V; i++) finite &= isfinite(s->s.logits_host[i]) != 0;
        CHECKF(finite, "variant %d: the greedy path did not compute the logits into the session", variant);
        /* the last evaluation was of token 29's predecessor: its pick is token 29 */
        CHECK_EQ_INT(argmax(s->s.logits_host, V), gen[29]);
        lazymoe_free(got);
        lazymoe_session_free(s);
    }
    /* a setting the sampler draws for (top_k 2) leaves the session's array alone */
    lazymoe_session *s = new_session();
    if (s) {
        for (int i = 0; i < V; i++) s->s.logits_host[i] = NAN;
        lazymoe_gen_params p;
        lazymoe_gen_params_init(&p, M);
        p.sampling.temperature = 0.8f;
        p.sampling.top_k = 2;
        p.max_tokens = 5;
        p.ignore_eos = 1;
        char *got = NULL;
        CHECK(lazymoe_generate(s, prompt, &p, &got, NULL, err, sizeof err) == 0);
        CHECK(isnan(s->s.logits_host[0]) && isnan(s->s.logits_host[V - 1]));
        lazymoe_free(got);
        lazymoe_session_free(s);
    }
    lazymoe_free(ids);
    lazymoe_free(want);
}

int main(void) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = 2;
    if (lazymoe_model_open(&M, MODEL_DIR, &o, err, sizeof err) != 0) {
        printf("FAIL generate_open_model: %s\n", err);
        return 1;
    }
    TEST_CASE("generate_tokenize_roundtrip", test_tokenize_roundtrip);
    TEST_CASE("generate_chat_format", test_chat_format);
    TEST_CASE("generate_greedy_text_equals_id_path", test_greedy_matches_ids);
    TEST_CASE("generate_stream_equals_oneshot_valid_utf8", test_stream_equals_oneshot);
    TEST_CASE("generate_stop_strings_across_pieces", test_stop_strings);
    TEST_CASE("generate_prefix_reuse", test_prefix_reuse);
    TEST_CASE("generate_same_prompt_cached", test_same_prompt_cached);
    TEST_CASE("generate_eos_stops", test_eos);
    TEST_CASE("generate_cancel_and_errors", test_cancel_and_limits);
    TEST_CASE("generate_context_limits", test_context_limits);
    TEST_CASE("generate_no_tokenizer", test_no_tokenizer);
    TEST_CASE("generate_forced_text", test_forced_text);
    TEST_CASE("generate_kv_cache_tokens_planned", test_kv_cache_tokens_planned);
    TEST_CASE("generate_logprobs_match_log_softmax", test_logprobs);
    TEST_CASE("generate_tokenize_max_stops_counting", test_tokenize_max);
    TEST_CASE("generate_session_fit_keeps_the_conversation", test_session_fit);
    TEST_CASE("generate_session_file_restores_exactly", test_session_file);
    TEST_CASE("generate_session_file_prefix_restore", test_session_file_prefix);
    TEST_CASE("generate_eval_greedy_equals_argmax_of_logits", test_eval_greedy_equals_argmax);
    TEST_CASE("generate_eval_greedy_same_errors", test_eval_greedy_errors);
    TEST_CASE("generate_greedy_settings_take_the_sessions_pick", test_generate_greedy_path);
    lazymoe_model_close(M);
    TEST_EXIT();
}

/* lazymoe logits | run | info: the commands that evaluate a model on token ids. */
#include "cli/cli.h"
#include "cli/commands.h"
#include "cli/textgen.h"
#include "common/buf.h"
#include "formats/npy.h"
#include "lazymoe.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    cli_model_args cm; /* MODEL and the model options */
    const char *ids_arg;
    const char *out;
    int n_gen;
    double temp;
    int seed;
    int print_ids;
    int ignore_eos;
    int json;
    const char *prompt; /* text commands: the second positional argument */
    const char *text_file; /* perplexity: the text scored */
    int window;            /* perplexity: tokens per window */
    cli_textgen *text;     /* text commands: their options; NULL for the others */
} model_args;

/* The options of logits, run, perplexity and info (after the text options, for text
 * commands); see cli_arg_fn. */
static int model_arg(void *ctx, const char *s, const char *v) {
    model_args *a = ctx;
    const cli_option opts[] = {
        {"--ids", .str = &a->ids_arg, .what = "a value"},
        {"--out", .str = &a->out, .what = "a file name"},
        {"-o", .str = &a->out, .what = "a file name"},
        {"-n", .num = &a->n_gen, .lo = 0, .hi = 1 << 30},
        {"--max-tokens", .num = &a->n_gen, .lo = 0, .hi = 1 << 30},
        {"--seed", .num = &a->seed, .lo = 0, .hi = 0x7fffffff},
        {"--text", .str = &a->text_file, .what = "a file name"},
        {"--window", .num = &a->window, .lo = 2, .hi = 1 << 20},
        {"--print-ids", .flag = &a->print_ids, .lo = 1},
        {"--ignore-eos", .flag = &a->ignore_eos, .lo = 1},
        {"--json", .flag = &a->json, .lo = 1},
    };
    int r = a->text ? cli_textgen_option(a->text, s, v) : 0;
    if (!r) r = CLI_OPTIONS(s, v, opts);
    if (r) return r;
    if (!strcmp(s, "--temp") || !strcmp(s, "--temperature")) {
        char *end;
        a->temp = v ? strtod(v, &end) : -1;
        if (!v || *end || !(a->temp >= 0) || !isfinite(a->temp)) return cli_fail("%s expects a number >= 0", s), -1;
        return 2;
    }
    if (a->text && !a->prompt && (s[0] != '-' || !s[1])) {
        a->prompt = s; /* the positional argument after MODEL */
        return 1;
    }
    return 0;
}

/* text: NULL, or the text-generation options (their flags and a prompt argument). */
static int parse_args(int argc, char **argv, model_args *a, const char *usage, cli_textgen *text) {
    memset(a, 0, sizeof *a);
    a->n_gen = 32;
    a->text = text;
    return cli_parse_model_args(argc, argv, usage, &a->cm, model_arg, a);
}

static lazymoe_model *open_model(const model_args *a) { return cli_open_model(&a->cm, NULL, 0); }

/* What logits and run --ids evaluate: the --ids prompt, the model and a session. */
typedef struct {
    int32_t *ids;
    int n;
    lazymoe_model *m;
    lazymoe_model_info info;
    lazymoe_session *s;
} ids_eval;

static void ids_eval_close(ids_eval *r) {
    free(r->ids);
    lazymoe_session_free(r->s);
    lazymoe_model_close(r->m);
}

/* 0, or 1 after printing why (nothing is left open then). */
static int ids_eval_open(ids_eval *r, const model_args *a) {
    char err[512];
    memset(r, 0, sizeof *r);
    if ((r->n = cli_parse_ids(a->ids_arg, &r->ids)) < 0) return 1;
    if ((r->m = open_model(a))) {
        lazymoe_model_get_info(r->m, &r->info);
        if (lazymoe_session_create(&r->s, r->m, err, sizeof err) == 0) return 0;
        cli_fail("%s", err);
    }
    ids_eval_close(r);
    return 1;
}

#define MEMORY_OPTIONS                                                                              \
    "memory:  --memory SIZE      budget for the whole process (default: 85% of available memory)\n"     \
    "         --capacity N       experts cached per MoE layer (default: from the budget)\n"             \
    "         --pin N            keep each layer's N most used experts (popularity of earlier runs)\n"  \
    "                            cached for good; N of the capacity, the rest must hold top_k\n"     \
    "                            (cuda with experts resident in RAM: in GPU memory)\n"               \
    "         --resident         keep every expert in memory\n"                                        \
    "         --io-threads N     concurrent expert reads (default 8)\n"                                \
    "         --io-chunk SIZE    longest single read; longer tensors are split (default 2M)\n"      \
    "         --eviction P       lru | lcp | lfru | lrfu | stale (default lcp)\n"                                 \
    "         --buffered-io      read experts through the page cache instead of O_DIRECT\n"           \
    "         --trace-routing F  record each token's experts per layer to F\n"                       \
    "         --no-warm-start    neither use nor update the expert popularity history\n"               \
    "         --lookahead N      read each decode token's N likeliest experts of a layer before its\n" \
    "                            attention runs (router lookahead; default: top_k with the cpu\n"   \
    "                            backend and experts of 1 MiB or more, else 0 = off)\n"            \
    "         --lookahead-gate X read a layer's predictions only while at least X of them are then\n"  \
    "                            routed to (default 0.5; 0 = always)\n"                              \
    "         --kv-bits N        KV cache precision: 16 (default), 32, or 8 (int8, smallest)\n"     \
    "         --act-bits N       activations in quantized matmuls: 8 (default on the CPU: int8,\n"   \
    "                            fast, small stated error) or 32 (f32, the reference numerics;\n"  \
    "                            default on cuda, where 8 takes int8 in prefill's products of\n"  \
    "                            MLX 4-bit and GGUF Q4_0/Q8_0/Q4_K/Q5_K/Q6_K weights)\n"             \
    "         --backend NAME     cpu (default) or cuda (a build made with make CUDA=1; GPU from\n"  \
    "                            LAZYMOE_CUDA_DEVICE, default 0)\n"                                \
    "         --gpu-memory SIZE  cuda: GPU memory for weights, KV cache and the experts kept there\n" \
    "                            (the rest come from host memory; default: what is free)\n"           \
    "         --cpu-experts N    cuda: steps of up to N tokens compute the experts not in GPU memory\n" \
    "                            on the CPU instead of uploading them (needs them resident in RAM);\n" \
    "                            auto: each step splits its misses between the CPU and the upload,\n" \
    "                            both at once, by their costs measured at load (-v shows them)\n"

static const char logits_usage[] =
    "usage: lazymoe logits MODEL --ids 3,14,15 --out FILE.npy [--threads N] [memory options]\n"
    "Writes float32 logits [number of ids, vocab] of one forward pass over the ids.\n" MEMORY_OPTIONS;

int cmd_logits(int argc, char **argv) {
    model_args a;
    int rc = parse_args(argc, argv, &a, logits_usage, NULL);
    if (rc) return rc == 2 ? 0 : rc;
    if (!a.ids_arg || !a.out) return cli_fail("logits needs --ids and --out\n%s", logits_usage);
    ids_eval r;
    if (ids_eval_open(&r, &a) != 0) return 1;
    char err[512];
    int V = r.info.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)r.n * (size_t)V);
    rc = 1;
    if (!logits) cli_fail("out of memory for %d x %d logits", r.n, V);
    else if (lazymoe_session_eval(r.s, r.ids, r.n, logits, 1, err, sizeof err) != 0)
        cli_fail("%s", err);
    else {
        size_t shape[2] = {(size_t)r.n, (size_t)V};
        if (lm_npy_write_f32(a.out, logits, shape, 2, err) != 0) cli_fail("%s", err);
        else rc = 0;
    }
    free(logits);
    ids_eval_close(&r);
    return rc;
}

static const char perplexity_usage[] =
    "usage: lazymoe perplexity MODEL --text FILE [--window N] [--json] [memory options]\n"
    "Scores a text file: it is tokenized (no special tokens added; special tokens written in the\n"
    "text count) and cut into windows of N tokens (default 1024, at most the context); within\n"
    "each window every token after the first is predicted from the ones before it.\n"
    "Prints exp(mean negative log-likelihood) over all predicted tokens.\n" MEMORY_OPTIONS;

/* Negative log-likelihood of token `next` under logits[V], in double precision. */
static double token_nll(const float *logits, int V, int next) {
    float mx = logits[0];
    for (int i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    if (!(sum >= 1.0)) return INFINITY; /* the largest logit alone gives 1: only NaN logits get here */
    return log(sum) - ((double)logits[next] - mx);
}

int cmd_perplexity(int argc, char **argv) {
    model_args a;
    int rc = parse_args(argc, argv, &a, perplexity_usage, NULL);
    if (rc) return rc == 2 ? 0 : rc;
    if (!a.text_file) return cli_fail("perplexity needs --text FILE\n%s", perplexity_usage);
    FILE *f = fopen(a.text_file, "rb");
    if (!f) return cli_fail("cannot open %s: %s", a.text_file, strerror(errno));
    lm_strbuf file = {0};
    int read_rc = lm_strbuf_read_stream(&file, f, 0);
    fclose(f);
    if (read_rc != LM_READ_OK) {
        lm_strbuf_free(&file);
        return cli_fail("cannot read %s", a.text_file);
    }
    char *text = file.data;
    size_t len = file.len;
    lazymoe_model *m = open_model(&a);
    if (!m) {
        free(text);
        return 1;
    }
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    char err[512];
    int32_t *ids = NULL;
    int n = 0;
    int W = a.window ? a.window : 1024;
    if (W > info.max_context) W = info.max_context;
    /* Logits come back a chunk at a time: a whole window of a 150k vocabulary would not fit. */
    enum { CHUNK = 64 };
    float *logits = malloc(sizeof(float) * CHUNK * (size_t)info.vocab_size);
    lazymoe_session *s = NULL;
    rc = 1;
    if (lazymoe_tokenize(m, text, len, 0, &ids, &n, err, sizeof err) != 0) cli_fail("%s", err);
    else if (n < 2) cli_fail("%s has %d token(s): nothing to predict", a.text_file, n);
    else if (!logits) cli_fail("out of memory");
    else if (lazymoe_session_create(&s, m, err, sizeof err) != 0) cli_fail("%s", err);
    else {
        double nll = 0;
        long scored = 0;
        int failed = 0;
        for (int w0 = 0; w0 + 1 < n && !failed; w0 += W) {
            int wn = n - w0 < W ? n - w0 : W;
            if (lazymoe_session_truncate(s, 0, err, sizeof err) != 0) failed = 1;
            for (int c0 = 0; c0 < wn - 1 && !failed; c0 += CHUNK) {
                /* Positions c0..c0+cn-1 predict tokens c0+1..c0+cn of the window. */
                int cn = wn - 1 - c0 < CHUNK ? wn - 1 - c0 : CHUNK;
                if (lazymoe_session_eval(s, ids + w0 + c0, cn, logits, 1, err, sizeof err) != 0) {
                    failed = 1;
                    break;
                }
                for (int t = 0; t < cn; t++)
                    nll += token_nll(logits + (size_t)t * (size_t)info.vocab_size, info.vocab_size,
                                     ids[w0 + c0 + t + 1]);
                scored += cn;
            }
            if (!a.json)
                fprintf(stderr, "\rlazymoe: %ld / %d tokens scored, running perplexity %.4f", scored, n,
                        exp(nll / (double)scored));
        }
        if (!a.json) fputc('\n', stderr);
        if (failed) cli_fail("%s", err);
        else {
            double ppl = exp(nll / (double)scored);
            if (a.json)
                printf("{\"perplexity\": %.6f, \"tokens\": %d, \"scored\": %ld, \"window\": %d}\n", ppl, n,
                       scored, W);
            else
                printf("perplexity %.4f over %ld predicted tokens (%d tokens, windows of %d)\n", ppl, scored,
                       n, W);
            rc = 0;
        }
    }
    lazymoe_free(ids);
    free(logits);
    free(text);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    return rc;
}

/* splitmix64: small, seedable, good enough for sampling. */
static double next_uniform(unsigned long long *state) {
    unsigned long long z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static int pick_token(const float *logits, int V, double temp, unsigned long long *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temp <= 0) return best;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((logits[i] - logits[best]) / temp);
    double r = next_uniform(rng) * sum, acc = 0;
    for (int i = 0; i < V; i++) {
        acc += exp((logits[i] - logits[best]) / temp);
        if (acc >= r) return i;
    }
    return best;
}

static const char run_usage[] =
    "usage: lazymoe run MODEL \"prompt\" [text options] [memory options]   (prompt \"-\": read stdin)\n"
    "Streams the answer to stdout and a statistics line to stderr. MODEL is a directory or a\n"
    "Hugging Face repo id in the local Hugging Face cache.\n"
    "   or: lazymoe run MODEL --ids 3,14,15 [-n 32] [--temp 0] [--seed S] [--print-ids] [--ignore-eos]\n"
    "                  [--threads N] [--ctx N] [-v]\n"
    "Generates up to -n tokens after the prompt ids through the KV cache (greedy at --temp 0),\n"
    "stopping after an end-of-sequence id unless --ignore-eos.\n" CLI_TEXTGEN_OPTIONS MEMORY_OPTIONS;

static const char chat_usage[] =
    "usage: lazymoe chat MODEL [text options] [memory options]\n"
    "Interactive conversation (stdin may be a pipe); the context is kept between turns.\n"
    "Commands: /reset, /stats, /exit. Ctrl-C stops an answer; twice at the prompt, exits.\n" CLI_TEXTGEN_OPTIONS
        MEMORY_OPTIONS;

/* The text commands: run with a prompt, and chat. */
static int run_text(int argc, char **argv, int repl) {
    model_args a;
    cli_textgen t;
    cli_textgen_init(&t);
    char *stdin_prompt = NULL;
    int rc = parse_args(argc, argv, &a, repl ? chat_usage : run_usage, &t);
    if (rc) {
        cli_textgen_free(&t);
        return rc == 2 ? 0 : rc;
    }
    if (repl && a.prompt) rc = cli_fail("unexpected argument \"%s\" (chat reads its prompts from stdin)", a.prompt);
    else if (!repl && !a.prompt) rc = cli_fail("run needs a prompt: lazymoe run MODEL \"text\" (or --ids 1,2,3)");
    else if (!repl && !strcmp(a.prompt, "-") && !(a.prompt = stdin_prompt = cli_read_stdin()))
        rc = cli_fail("cannot read the prompt from stdin");
    lazymoe_model *m = rc ? NULL : open_model(&a);
    if (!rc) rc = !m ? 1 : repl ? cli_chat(m, &t, a.ignore_eos) : cli_run_text(m, a.prompt, &t, a.ignore_eos);
    lazymoe_model_close(m);
    free(stdin_prompt);
    cli_textgen_free(&t);
    return rc;
}

int cmd_chat(int argc, char **argv) { return run_text(argc, argv, 1); }

int cmd_run(int argc, char **argv) {
    model_args a;
    int ids_mode = 0;
    for (int i = 1; i < argc; i++) ids_mode |= !strcmp(argv[i], "--ids");
    if (!ids_mode) return run_text(argc, argv, 0);
    int rc = parse_args(argc, argv, &a, run_usage, NULL);
    if (rc) return rc == 2 ? 0 : rc;
    if (!a.ids_arg)
        return cli_fail("run needs the prompt as token ids (--ids 3,14,15); text prompts need the tokenizer");
    ids_eval r;
    if (ids_eval_open(&r, &a) != 0) return 1;
    const lazymoe_model_info info = r.info;
    char err[512];
    float *logits = malloc(sizeof(float) * (size_t)info.vocab_size);
    unsigned long long rng = (unsigned long long)a.seed;
    rc = 1;
    if (!logits) {
        cli_fail("out of memory");
    } else if (lazymoe_session_eval(r.s, r.ids, r.n, logits, 0, err, sizeof err) != 0) {
        cli_fail("%s", err);
    } else {
        rc = 0;
        for (int g = 0; g < a.n_gen; g++) {
            int32_t tok = pick_token(logits, info.vocab_size, a.temp, &rng);
            printf("%s%d", g ? " " : "", tok);
            fflush(stdout);
            int eos = 0;
            for (int e = 0; e < info.n_eos; e++) eos |= tok == info.eos_ids[e];
            if (eos && !a.ignore_eos) break;
            if (g + 1 == a.n_gen) break;
            if (lazymoe_session_eval(r.s, &tok, 1, logits, 0, err, sizeof err) != 0) {
                printf("\n");
                cli_fail("%s", err);
                rc = 1;
                break;
            }
        }
        if (rc == 0) printf("\n");
    }
    (void)a.print_ids; /* ids are the only output until text decoding exists */
    free(logits);
    ids_eval_close(&r);
    return rc;
}

static void human_bytes(char *buf, size_t n, unsigned long long b) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) v /= 1024, u++;
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", v, unit[u]);
}

static const char info_usage[] = "usage: lazymoe info MODEL [--json]\n";

int cmd_info(int argc, char **argv) {
    model_args a;
    int rc = parse_args(argc, argv, &a, info_usage, NULL);
    if (rc) return rc == 2 ? 0 : rc;
    a.cm.opt.n_threads = 1;
    /* Describing a model needs no expert in memory: a one-slot cache reads nothing
     * until a token is evaluated (--resident still loads them all, to time it). */
    if (a.cm.opt.expert_capacity == 0) a.cm.opt.expert_capacity = 1;
    a.cm.opt.no_warm_start = 1;
    lazymoe_model *m = open_model(&a);
    if (!m) return 1;
    lazymoe_model_info i;
    lazymoe_model_get_info(m, &i);
    if (a.json) {
        printf("{\"model_type\": \"%s\", \"layers\": %d, \"moe_layers\": %d, \"experts\": %d, \"top_k\": %d, "
               "\"hidden_size\": %d, \"vocab_size\": %d, \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, "
               "\"params_total\": %llu, \"params_active\": %llu, \"params_per_expert\": %llu, "
               "\"bytes_resident\": %llu, \"bytes_per_expert\": %llu, \"bytes_experts\": %llu, "
               "\"quant_bits\": %d, \"quant_group_size\": %d, \"quant_mode\": \"%s\", \"weight_dtype\": \"%s\", "
               "\"expert_layout\": \"%s\", "
               "\"expert_read_ranges\": %d, \"skipped_mtp_layers\": %d, \"skipped_vision_tower\": %s, "
               "\"tensor_types\": \"%s\"}\n",
               i.model_type, i.n_layers, i.n_moe_layers, i.n_experts, i.top_k, i.hidden_size, i.vocab_size,
               i.n_heads, i.n_kv_heads, i.head_dim, (unsigned long long)i.params_total,
               (unsigned long long)i.params_active, (unsigned long long)i.params_expert,
               (unsigned long long)i.bytes_resident, (unsigned long long)i.bytes_per_expert,
               (unsigned long long)i.bytes_experts, i.quant_bits, i.quant_group_size, i.quant_mode, i.weight_dtype,
               i.expert_layout,
               i.expert_read_ranges, i.skipped_mtp_layers, i.skipped_vision_tower ? "true" : "false", i.tensor_types);
    } else {
        char r[32], pe[32], ex[32];
        human_bytes(r, sizeof r, i.bytes_resident);
        human_bytes(pe, sizeof pe, i.bytes_per_expert);
        human_bytes(ex, sizeof ex, i.bytes_experts);
        printf("model          %s\n", a.cm.model);
        printf("architecture   %s\n", i.model_type);
        printf("layers         %d (%d MoE, %d dense)\n", i.n_layers, i.n_moe_layers, i.n_layers - i.n_moe_layers);
        printf("experts        %d per MoE layer, top-%d per token\n", i.n_experts, i.top_k);
        printf("hidden size    %d; %d heads, %d KV heads, head dim %d; vocab %d\n", i.hidden_size, i.n_heads,
               i.n_kv_heads, i.head_dim, i.vocab_size);
        printf("context        %d tokens (model maximum %d)\n", i.max_context, i.model_max_context);
        printf("parameters     %.3f B total, %.3f B active per token, %.3f M per expert\n",
               (double)i.params_total / 1e9, (double)i.params_active / 1e9, (double)i.params_expert / 1e6);
        printf("resident       %s (non-expert weights as stored)\n", r);
        printf("experts        %s each, %s in total\n", pe, ex);
        printf("disk cost      %d byte ranges per expert read (%s layout)\n", i.expert_read_ranges, i.expert_layout);
        if (i.quant_bits)
            printf("quantization   MLX %s %d-bit, group size %d (float weights %s)\n", i.quant_mode, i.quant_bits,
                   i.quant_group_size, i.weight_dtype);
        else if (i.block_weights)
            printf("quantization   ggml blocks; tensors per type: %s\n", i.tensor_types);
        else
            printf("quantization   none (%s)\n", i.weight_dtype);
        if (i.skipped_mtp_layers)
            printf("skipped        %d multi-token-prediction layer%s in the files (not part of the forward pass, "
                   "never read)\n", i.skipped_mtp_layers, i.skipped_mtp_layers > 1 ? "s" : "");
        if (i.skipped_vision_tower)
            printf("skipped        the vision tower (model.visual.*): text only, never read\n");
        lazymoe_expert_stats st;
        lazymoe_model_get_expert_stats(m, -1, &st);
        if (st.gpu_capacity) {
            human_bytes(r, sizeof r, st.gpu_resident_bytes);
            human_bytes(pe, sizeof pe, st.gpu_expert_bytes);
            human_bytes(ex, sizeof ex, st.gpu_budget);
            printf("gpu placement  %d of %d experts per MoE layer in GPU memory (%s)%s; weights, KV cache and "
                   "scratch %s; budget %s\n",
                   st.gpu_capacity, i.n_experts, pe,
                   st.gpu_capacity < i.n_experts ? ", the others uploaded from host memory when routed to" : "", r, ex);
        }
    }
    lazymoe_model_close(m);
    return 0;
}

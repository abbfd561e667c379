/* lazymoe bench: prefill and decode speed, expert cache behaviour, memory, and the
 * routing the run actually saw. */
#include "cli/cli.h"
#include "cli/commands.h"
#include "lazymoe.h"
#include "platform/platform.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char bench_usage[] =
    "usage: lazymoe bench MODEL [--prompt-tokens 128] [--gen-tokens 32] [--seed S] [--json]\n"
    "                    [--memory SIZE] [--capacity N] [--pin N] [--resident] [--io-threads N] [--io-chunk SIZE]\n"
    "                    [--eviction P] [--buffered-io] [--no-warm-start] [--routing-trace FILE]\n"
    "                    [--trace-routing FILE] [--lookahead N] [--threads N] [--ctx N] [--kv-bits 8|16|32]\n"
    "                    [--act-bits 8|32] [--lookahead-trace FILE] [--repeat N]\n"
    "Prefills a random prompt, then decodes greedily; reports tok/s, expert cache hit rate, bytes read,\n"
    "read bandwidth, peak RSS and the routing statistics of the run. --repeat N runs N - 1 more times\n"
    "after it, each in a fresh session with a new random prompt, and adds their mean and standard\n"
    "deviation (llama-bench's way: its runs follow an untimed warmup). --routing-trace replays a recorded\n"
    "trace in place of the router's picks (cache policy studies; the text is then meaningless);\n"
    "--lookahead-trace gives --lookahead its recorded predictions for that trace.\n";

typedef struct {
    int prompt, gen, json, seed, repeat;
    const char *replay; /* --routing-trace */
    const char *replay_pred; /* --lookahead-trace */
} bench_args;

static int bench_arg(void *ctx, const char *s, const char *v) {
    bench_args *b = ctx;
    const cli_option opts[] = {
        {"--prompt-tokens", .num = &b->prompt, .lo = 1, .hi = 1 << 20},
        {"--gen-tokens", .num = &b->gen, .lo = 0, .hi = 1 << 20},
        {"--seed", .num = &b->seed, .lo = 0, .hi = 0x7fffffff},
        {"--repeat", .num = &b->repeat, .lo = 1, .hi = 1000},
        {"--routing-trace", .str = &b->replay, .what = "a file"},
        {"--lookahead-trace", .str = &b->replay_pred, .what = "a file"},
        {"--json", .flag = &b->json, .lo = 1},
    };
    return CLI_OPTIONS(s, v, opts);
}

/* One timed run in a fresh session: prefill ids, then decode gen tokens greedily into
 * out_ids. mid (if not NULL) gets the expert counters between the two. */
static int bench_run(lazymoe_model *m, const int32_t *ids, int prompt, int gen, int32_t *out_ids, double *t_prefill,
                     double *t_decode, lazymoe_expert_stats *mid, char *err, size_t errlen) {
    lazymoe_session *s = NULL;
    if (lazymoe_session_create(&s, m, err, errlen) != 0) return -1;
    int rc = -1;
    double t0 = lm_now();
    /* Greedy decoding: the session picks each token (the first largest logit), on a
     * GPU without bringing the logits to the host. */
    int32_t next = 0;
    if (lazymoe_session_eval_greedy(s, ids, prompt, &next, err, errlen) != 0) goto done;
    *t_prefill = lm_now() - t0;
    if (mid) lazymoe_model_get_expert_stats(m, -1, mid);
    t0 = lm_now();
    for (int g = 0; g < gen; g++) {
        out_ids[g] = next;
        if (lazymoe_session_eval_greedy(s, &out_ids[g], 1, &next, err, errlen) != 0) goto done;
    }
    *t_decode = lm_now() - t0;
    rc = 0;
done:
    lazymoe_session_free(s);
    return rc;
}

/* A random prompt of n ids below vocab (rand(), seeded by --seed). */
static void random_prompt(int32_t *ids, int n, int vocab) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((unsigned)rand() % (unsigned)vocab);
}

/* Mean and sample standard deviation of v[0..n). */
static void mean_sd(const double *v, int n, double *mean, double *sd) {
    double sum = 0, sq = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    *mean = n ? sum / n : 0;
    for (int i = 0; i < n; i++) sq += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(sq / (n - 1)) : 0;
}

int cmd_bench(int argc, char **argv) {
    bench_args ba = {.prompt = 128, .gen = 32, .seed = 1, .repeat = 1};
    cli_model_args a;
    int prc = cli_parse_model_args(argc, argv, bench_usage, &a, bench_arg, &ba);
    if (prc) return prc == 2 ? 0 : prc;
    if (ba.replay) a.opt.replay_routing = ba.replay;
    if (ba.replay_pred) a.opt.replay_lookahead = ba.replay_pred;
    const char *model = a.model;
    int prompt = ba.prompt, gen = ba.gen, json = ba.json;
    unsigned seed = (unsigned)ba.seed;
    /* The routing statistics come from a trace of this run, in a fresh private file
     * (mkstemp: no predictable name in a shared /tmp), removed on every way out. */
    char tmp_trace[4096] = "";
    if (!a.opt.trace_routing) {
        const char *dir = getenv("TMPDIR");
        if (!dir || !*dir) dir = "/tmp";
        snprintf(tmp_trace, sizeof tmp_trace, "%s/lazymoe-bench-trace-XXXXXX", dir);
        int fd = mkstemp(tmp_trace);
        if (fd < 0)
            return cli_fail("cannot create the routing trace in %s: %s (set TMPDIR to a writable directory)", dir,
                            strerror(errno));
        close(fd);
        a.opt.trace_routing = tmp_trace;
    }
    const char *trace_out = a.opt.trace_routing;
    if (!a.opt.max_context) a.opt.max_context = prompt + gen + 1;
    char err[512];
    lazymoe_model *m;
    double t_load = lm_now();
    if (!(m = cli_open_model(&a, NULL, 0))) {
        if (tmp_trace[0]) unlink(tmp_trace);
        return 1;
    }
    t_load = lm_now() - t_load;
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)prompt);
    int32_t *out_ids = calloc((size_t)gen + 1, sizeof(int32_t)), *more_ids = calloc((size_t)gen + 1, sizeof(int32_t));
    int repeats = ba.repeat - 1;
    double *rep_prefill = calloc((size_t)repeats + 1, sizeof(double)), *rep_decode = calloc((size_t)repeats + 1, sizeof(double));
    srand(seed);
    int rc = 1;
    lazymoe_expert_stats st0, st1, st2, st_end;
    double t_prefill = 0, t_decode = 0;
    if (!ids || !out_ids || !more_ids || !rep_prefill || !rep_decode) {
        snprintf(err, sizeof err, "out of memory");
        goto done;
    }
    random_prompt(ids, prompt, info.vocab_size);
    lazymoe_model_get_expert_stats(m, -1, &st0);
    if (bench_run(m, ids, prompt, gen, out_ids, &t_prefill, &t_decode, &st1, err, sizeof err) != 0) goto done;
    lazymoe_model_get_expert_stats(m, -1, &st2);
    for (int r = 0; r < repeats; r++) {
        double tp = 0, td = 0;
        if (!(r % 4) || r == repeats - 1) fprintf(stderr, "bench: repeat %d of %d\n", r + 1, repeats);
        random_prompt(ids, prompt, info.vocab_size);
        if (bench_run(m, ids, prompt, gen, more_ids, &tp, &td, NULL, err, sizeof err) != 0) goto done;
        rep_prefill[r] = tp > 0 ? prompt / tp : 0;
        rep_decode[r] = td > 0 && gen ? gen / td : 0;
    }
    /* the counters are the first run's; the peaks, the most any run reached */
    lazymoe_model_get_expert_stats(m, -1, &st_end);
    st2.peak_rss_bytes = st_end.peak_rss_bytes;
    st2.gpu_peak_bytes = st_end.gpu_peak_bytes;
    rc = 0;
done:
    if (rc) cli_fail("%s", err);
    lazymoe_model_close(m); /* flushes the trace */
    free(ids);
    free(more_ids);
    if (rc) {
        if (tmp_trace[0]) unlink(tmp_trace);
        free(out_ids);
        free(rep_prefill), free(rep_decode);
        return rc;
    }
    double rp_mean, rp_sd, rd_mean, rd_sd;
    mean_sd(rep_prefill, repeats, &rp_mean, &rp_sd);
    mean_sd(rep_decode, repeats, &rd_mean, &rd_sd);
    free(rep_prefill), free(rep_decode);
    /* routing over the first run's tokens (the repeats' follow it in the trace) */
    lazymoe_routing_summary rs_all = {0}, rs_dec = {0};
    int have_routing = lazymoe_routing_summarize_range(trace_out, 0, prompt + gen, &rs_all, err, sizeof err) == 0;
    if (gen > 1) lazymoe_routing_summarize_range(trace_out, prompt, prompt + gen, &rs_dec, err, sizeof err);
    if (tmp_trace[0]) unlink(tmp_trace);
    uint64_t dec_hits = st2.hits - st1.hits, dec_miss = st2.misses - st1.misses;
    uint64_t dec_bytes = st2.bytes_read - st1.bytes_read;
    uint64_t all_hits = st2.hits - st0.hits, all_miss = st2.misses - st0.misses;
    double hit_rate = dec_hits + dec_miss ? (double)dec_hits / (double)(dec_hits + dec_miss) : 1.0;
    double prefill_tps = t_prefill > 0 ? prompt / t_prefill : 0;
    double decode_tps = t_decode > 0 && gen ? gen / t_decode : 0;
    /* read_seconds is summed over the reader threads: per thread, the time spent reading. */
    double read_bw = st2.read_seconds > 0 && st2.io_threads > 0
                         ? (double)st2.bytes_read / (st2.read_seconds / st2.io_threads) : 0;
    double miss_bw = t_decode > 0 ? (double)dec_bytes / t_decode : 0;
    if (json) {
        printf("{\"model\": \"%s\", \"prompt_tokens\": %d, \"gen_tokens\": %d, \"load_s\": %.3f, "
               "\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, \"hit_rate\": %.4f, \"hit_rate_all\": %.4f, "
               "\"bytes_read\": %llu, \"decode_bytes_read\": %llu, \"decode_miss_bandwidth\": %.0f, "
               "\"read_bandwidth\": %.0f, \"wait_s\": %.3f, \"peak_rss_bytes\": %llu, \"memory_budget\": %llu, "
               "\"planned_bytes\": %llu, \"prefetched\": %llu, \"prefetch_used\": %llu, "
               "\"prefetch_cancelled\": %llu, \"resident\": %s, \"capacity\": %d, \"pinned_experts\": %d, "
               "\"io_threads\": %d, \"direct_bytes_read\": %llu, \"experts\": %d, \"top_k\": %d, \"act_bits\": %d, "
               "\"routing\": {\"distinct_experts\": %.2f, \"consecutive_reuse\": %.4f, \"top16_share\": %.4f, "
               "\"decode_distinct_experts\": %.2f, \"decode_consecutive_reuse\": %.4f, \"decode_top16_share\": %.4f}",
               model, prompt, gen, t_load, prefill_tps, decode_tps, hit_rate,
               all_hits + all_miss ? (double)all_hits / (double)(all_hits + all_miss) : 1.0,
               (unsigned long long)st2.bytes_read, (unsigned long long)dec_bytes, miss_bw, read_bw, st2.wait_seconds,
               (unsigned long long)st2.peak_rss_bytes, (unsigned long long)st2.memory_budget,
               (unsigned long long)st2.planned_bytes, (unsigned long long)st2.prefetched,
               (unsigned long long)st2.prefetch_used, (unsigned long long)st2.prefetch_cancelled,
               st2.resident ? "true" : "false", st2.capacity, st2.pinned_experts, st2.io_threads,
               (unsigned long long)st2.direct_bytes_read, info.n_experts,
               info.top_k, info.act_bits, rs_all.distinct_experts, rs_all.consecutive_reuse, rs_all.top16_share,
               rs_dec.distinct_experts, rs_dec.consecutive_reuse, rs_dec.top16_share);
        if (st2.gpu_capacity)
            printf(", \"gpu\": {\"capacity\": %d, \"experts_resident\": %d, \"hits\": %llu, \"uploads\": %llu, "
                   "\"upload_bytes\": %llu, \"decode_upload_bytes\": %llu, \"cpu_computed_experts\": %llu, "
                   "\"budget\": %llu, \"resident_bytes\": %llu, \"expert_bytes\": %llu, \"vram_peak_bytes\": %llu, "
                   "\"total_bytes\": %llu, \"pinned_host_bytes\": %llu}",
                   st2.gpu_capacity, st2.gpu_experts, (unsigned long long)st2.gpu_hits,
                   (unsigned long long)st2.gpu_uploads, (unsigned long long)st2.gpu_upload_bytes,
                   (unsigned long long)(st2.gpu_upload_bytes - st1.gpu_upload_bytes),
                   (unsigned long long)st2.cpu_computed_experts, (unsigned long long)st2.gpu_budget,
                   (unsigned long long)st2.gpu_resident_bytes, (unsigned long long)st2.gpu_expert_bytes,
                   (unsigned long long)st2.gpu_peak_bytes, (unsigned long long)st2.gpu_total_bytes,
                   (unsigned long long)st2.gpu_pinned_bytes);
        if (st2.gpu_capacity && st2.miss_costs_us[0] > 0)
            printf(", \"miss_costs_us\": {\"upload\": %.2f, \"cpu_fixed\": %.2f, \"cpu_expert\": %.2f, \"cpu_row\": %.3f}",
                   st2.miss_costs_us[0], st2.miss_costs_us[1], st2.miss_costs_us[2], st2.miss_costs_us[3]);
        if (repeats)
            printf(", \"repeats\": %d, \"prefill_tok_s_repeats\": %.3f, \"prefill_tok_s_repeats_sd\": %.3f, "
                   "\"decode_tok_s_repeats\": %.3f, \"decode_tok_s_repeats_sd\": %.3f",
                   repeats, rp_mean, rp_sd, rd_mean, rd_sd);
        /* The generated ids, so runs under different budgets can be compared. */
        printf(", \"generated_ids\": [");
        for (int g = 0; g < gen; g++) printf(g ? ", %d" : "%d", out_ids[g]);
        printf("]}\n");
    } else {
        printf("model        %s (%s, %d layers, %d experts, top-%d)\n", model, info.model_type, info.n_layers,
               info.n_experts, info.top_k);
        printf("experts      %s, capacity %d per layer; plan %.2f GB of budget %.2f GB\n",
               st2.resident ? "resident" : "cached", st2.capacity, (double)st2.planned_bytes / 1e9,
               (double)st2.memory_budget / 1e9);
        if (st2.pinned_experts) printf("pinned       %d experts over all layers\n", st2.pinned_experts);
        printf("load         %.2f s\n", t_load);
        printf("prefill      %d tokens in %.2f s: %.2f tok/s\n", prompt, t_prefill, prefill_tps);
        printf("decode       %d tokens in %.2f s: %.2f tok/s\n", gen, t_decode, decode_tps);
        if (repeats)
            printf("repeats      %d more runs, each a fresh session and prompt: prefill %.2f +- %.2f tok/s, "
                   "decode %.2f +- %.2f tok/s\n",
                   repeats, rp_mean, rp_sd, rd_mean, rd_sd);
        printf("expert cache decode hit rate %.1f%% (%llu hits, %llu misses); all %.1f%%\n", 100 * hit_rate,
               (unsigned long long)dec_hits, (unsigned long long)dec_miss,
               all_hits + all_miss ? 100.0 * (double)all_hits / (double)(all_hits + all_miss) : 100.0);
        printf("reads        %.1f MB total, %.1f MB in decode (%.1f MB/s of decode time); blocked %.2f s\n",
               (double)st2.bytes_read / 1e6, (double)dec_bytes / 1e6, miss_bw / 1e6, st2.wait_seconds);
        if (st2.prefetched)
            printf("lookahead    %llu experts read early, %llu of them used, %llu cancelled unread\n",
                   (unsigned long long)st2.prefetched, (unsigned long long)st2.prefetch_used,
                   (unsigned long long)st2.prefetch_cancelled);
        printf("peak RSS     %.2f GB\n", (double)st2.peak_rss_bytes / 1e9);
        if (st2.gpu_capacity)
            printf("gpu          %d of %d experts per layer in GPU memory (%d there now); %llu hits, %llu uploads "
                   "(%.1f MB, %.1f MB in decode); %llu computed on the CPU; peak %.2f GB of budget %.2f GB\n",
                   st2.gpu_capacity, info.n_experts, st2.gpu_experts, (unsigned long long)st2.gpu_hits,
                   (unsigned long long)st2.gpu_uploads, (double)st2.gpu_upload_bytes / 1e6,
                   (double)(st2.gpu_upload_bytes - st1.gpu_upload_bytes) / 1e6,
                   (unsigned long long)st2.cpu_computed_experts, (double)st2.gpu_peak_bytes / 1e9,
                   (double)st2.gpu_budget / 1e9);
        if (st2.gpu_capacity && st2.miss_costs_us[0] > 0)
            printf("misses       split by cost (--cpu-experts auto): an upload %.1f us; on the CPU %.1f us a layer, "
                   "%.1f us an expert, %.2f us a further row\n",
                   st2.miss_costs_us[0], st2.miss_costs_us[1], st2.miss_costs_us[2], st2.miss_costs_us[3]);
        if (have_routing)
            printf("routing      %.1f distinct experts per layer, %.1f%% reused by the next token, top-16 share %.1f%%"
                   " (decode: %.1f distinct, %.1f%% reuse)\n",
                   rs_all.distinct_experts, 100 * rs_all.consecutive_reuse, 100 * rs_all.top16_share,
                   rs_dec.distinct_experts, 100 * rs_dec.consecutive_reuse);
    }
    free(out_ids);
    return 0;
}

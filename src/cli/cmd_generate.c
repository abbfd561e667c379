/* Text generation from the command line: `lazymoe run MODEL "prompt"` and the
 * `lazymoe chat MODEL` REPL. Uses only the public API (lazymoe.h); model options
 * and opening are shared with the id-based commands in cmd_model.c.
 */
#include "cli/textgen.h"

#include "cli/cli.h"
#include "common/buf.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void cli_textgen_init(cli_textgen *t) {
    memset(t, 0, sizeof *t);
    t->max_tokens = 512;
}

void cli_textgen_free(cli_textgen *t) {
    free(t->stop);
    t->stop = NULL;
    t->n_stop = 0;
}

static int parse_float(const char *opt, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || end == v || *end || !isfinite(x) || x < lo || x > hi) {
        cli_fail("%s expects a number in [%g, %g], got \"%s\"", opt, lo, hi, v ? v : "(nothing)");
        return -1;
    }
    *out = x;
    return 0;
}

int cli_textgen_option(void *ctx, const char *s, const char *v) {
    cli_textgen *t = ctx;
    double x;
    long n;
    struct { const char *name; float *dst; int *set; double lo, hi; } fl[] = {
        {"--temp", &t->samp.temperature, &t->set_temp, 0, 1e6},
        {"--temperature", &t->samp.temperature, &t->set_temp, 0, 1e6},
        {"--top-p", &t->samp.top_p, &t->set_top_p, 1e-9, 1},
        {"--min-p", &t->samp.min_p, &t->set_min_p, 0, 1},
        {"--repeat-penalty", &t->samp.repetition_penalty, &t->set_rep, 1e-6, 1e6},
        {"--presence-penalty", &t->samp.presence_penalty, &t->set_presence, -1e6, 1e6},
        {"--frequency-penalty", &t->samp.frequency_penalty, &t->set_frequency, -1e6, 1e6},
    };
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        if (!strcmp(s, fl[i].name)) {
            if (parse_float(s, v, fl[i].lo, fl[i].hi, &x) != 0) return -1;
            *fl[i].dst = (float)x;
            *fl[i].set = 1;
            return 2;
        }
    if (!strcmp(s, "--top-k")) {
        if ((n = cli_parse_long(s, v, 0, 1 << 30)) < 0) return -1;
        t->samp.top_k = (int)n;
        t->set_top_k = 1;
        return 2;
    }
    if (!strcmp(s, "-n") || !strcmp(s, "--max-tokens")) {
        if ((n = cli_parse_long(s, v, 0, 1 << 30)) < 0) return -1;
        t->max_tokens = (int)n;
        return 2;
    }
    if (!strcmp(s, "--seed")) {
        if ((n = cli_parse_long(s, v, 0, 0x7fffffff)) < 0) return -1;
        t->samp.seed = (uint64_t)n;
        t->set_seed = 1;
        return 2;
    }
    if (!strcmp(s, "--stop")) {
        if (!v || !*v) return cli_fail("--stop needs a non-empty string"), -1;
        const char **ns = realloc(t->stop, sizeof *ns * (size_t)(t->n_stop + 1));
        if (!ns) return cli_fail("out of memory"), -1;
        t->stop = ns;
        t->stop[t->n_stop++] = v;
        return 2;
    }
    if (!strcmp(s, "--system")) {
        if (!v) return cli_fail("--system needs a text"), -1;
        t->system = v;
        return 2;
    }
    if (!strcmp(s, "--chat")) return t->chat = 1, 1;
    if (!strcmp(s, "--no-think")) return t->no_think = 1, 1;
    if (!strcmp(s, "--no-stats")) return t->no_stats = 1, 1;
    if (!strcmp(s, "--echo")) return t->echo = 1, 1;
    return 0;
}

/* Sampling: the model's generation_config defaults, then the flags given. */
static void make_params(const cli_textgen *t, lazymoe_model *m, lazymoe_gen_params *p, int ignore_eos) {
    lazymoe_gen_params_init(p, m);
    lazymoe_sampling *s = &p->sampling;
    if (t->set_temp) s->temperature = t->samp.temperature;
    if (t->set_top_p) s->top_p = t->samp.top_p;
    if (t->set_top_k) s->top_k = t->samp.top_k;
    if (t->set_min_p) s->min_p = t->samp.min_p;
    if (t->set_rep) s->repetition_penalty = t->samp.repetition_penalty;
    if (t->set_presence) s->presence_penalty = t->samp.presence_penalty;
    if (t->set_frequency) s->frequency_penalty = t->samp.frequency_penalty;
    s->seed = t->set_seed ? t->samp.seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    p->max_tokens = t->max_tokens;
    p->stop = t->stop;
    p->n_stop = t->n_stop;
    p->ignore_eos = ignore_eos;
}

static void fmt_mem(char *buf, size_t n, uint64_t b) {
    if (b >= (1ull << 30)) snprintf(buf, n, "%.2f GiB", (double)b / (double)(1ull << 30));
    else snprintf(buf, n, "%.1f MiB", (double)b / (double)(1ull << 20));
}

static void print_stats(FILE *f, const lazymoe_gen_stats *st) {
    static const char *why[] = {"none", "stop", "length", "cancelled"};
    char mem[32], rd[32];
    fmt_mem(mem, sizeof mem, st->peak_rss_bytes);
    fprintf(f, "prompt %d tokens (%d cached), %.1f tok/s prefill | %d tokens, %.1f tok/s decode | peak memory %s",
            st->prompt_tokens, st->cached_tokens, st->prefill_tok_per_s, st->generated_tokens, st->decode_tok_per_s,
            mem);
    if (st->expert_hit_rate >= 0) {
        fmt_mem(rd, sizeof rd, st->expert_bytes_read);
        fprintf(f, " | expert hit rate %.1f%%, %s read", st->expert_hit_rate * 100, rd);
    } else {
        fprintf(f, " | experts resident");
    }
    unsigned r = (unsigned)st->finish_reason;
    fprintf(f, " | finish %s\n", r < 4 ? why[r] : "?");
}

typedef struct {
    lm_strbuf text; /* the answer so far (chat history) */
    char last;
} out_ctx;

static int on_piece(void *vctx, const char *piece, size_t len) {
    out_ctx *o = vctx;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    if (len) o->last = piece[len - 1];
    return lm_strbuf_append(&o->text, piece, len) != 0;
}

/* messages + generation prompt -> text, with enable_thinking false for --no-think. */
static char *render(lazymoe_model *m, json_t *messages, const cli_textgen *t) {
    char err[512], *text = NULL;
    char *mj = json_dumps(messages, JSON_COMPACT);
    if (!mj) {
        cli_fail("out of memory");
        return NULL;
    }
    int rc = lazymoe_chat_format(m, mj, NULL, 1, t->no_think ? "{\"enable_thinking\": false}" : NULL, &text, err,
                                 sizeof err);
    free(mj);
    if (rc != 0) {
        cli_fail("%s", err);
        return NULL;
    }
    return text;
}

static int add_message(json_t *messages, const char *role, const char *content) {
    json_t *msg = json_pack("{s:s, s:s}", "role", role, "content", content ? content : "");
    return msg && json_array_append_new(messages, msg) == 0 ? 0 : -1;
}

int cli_run_text(lazymoe_model *m, const char *prompt, cli_textgen *t, int ignore_eos) {
    char err[512];
    lazymoe_session *s = NULL;
    char *rendered = NULL;
    json_t *messages = NULL;
    out_ctx o = {0};
    int rc = 1;
    if (t->chat) {
        messages = json_array();
        if (!messages || (t->system && add_message(messages, "system", t->system) != 0) ||
            add_message(messages, "user", prompt) != 0) {
            cli_fail("out of memory");
            goto done;
        }
        if (!(rendered = render(m, messages, t))) goto done;
    } else if (t->system || t->no_think) {
        cli_fail("--system and --no-think apply to --chat prompts");
        goto done;
    }
    lazymoe_gen_params p;
    make_params(t, m, &p, ignore_eos);
    p.add_special = !t->chat; /* a chat template writes its own special tokens */
    lazymoe_gen_stats st;
    if (t->echo) {
        fputs(prompt, stdout);
        fflush(stdout);
    }
    if (lazymoe_session_create(&s, m, err, sizeof err) != 0 ||
        lazymoe_generate_stream(s, rendered ? rendered : prompt, &p, on_piece, &o, &st, err, sizeof err) != 0) {
        if (o.text.len && o.last != '\n') printf("\n");
        cli_fail("%s", err);
        goto done;
    }
    if (o.text.len && o.last != '\n') printf("\n");
    fflush(stdout);
    if (!t->no_stats) {
        fprintf(stderr, "lazymoe: ");
        print_stats(stderr, &st);
    }
    rc = 0;
done:
    lm_strbuf_free(&o.text);
    lazymoe_free(rendered);
    json_decref(messages);
    lazymoe_session_free(s);
    return rc;
}

/* ---- chat REPL ------------------------------------------------------------------ */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static const char chat_help[] =
    "commands: /reset (new conversation), /stats (last answer's numbers), /exit (or Ctrl-D);\n"
    "Ctrl-C stops an answer; twice at the prompt, exits.\n";

int cli_chat(lazymoe_model *m, cli_textgen *t, int ignore_eos) {
    char err[512];
    lazymoe_session *s = NULL;
    json_t *messages = json_array();
    char *line = NULL;
    size_t line_cap = 0;
    int rc = 1, tty = isatty(0), have_stats = 0, interrupts_at_prompt = 0;
    lazymoe_gen_stats last;
    memset(&last, 0, sizeof last);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: Ctrl-C interrupts a read at the prompt */
    sigaction(SIGINT, &sa, &old);
    if (!messages || (t->system && add_message(messages, "system", t->system) != 0)) {
        cli_fail("out of memory");
        goto done;
    }
    if (lazymoe_session_create(&s, m, err, sizeof err) != 0) {
        cli_fail("%s", err);
        goto done;
    }
    if (tty) fprintf(stderr, "%s", chat_help);
    for (;;) {
        if (tty) {
            printf("> ");
            fflush(stdout);
        }
        interrupted = 0;
        errno = 0;
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) {
            if (interrupted || errno == EINTR) {
                clearerr(stdin);
                if (++interrupts_at_prompt >= 2) break;
                printf("\n(Ctrl-C again to exit, or /exit)\n");
                continue;
            }
            if (tty) printf("\n");
            break;
        }
        interrupts_at_prompt = 0;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/help")) {
            printf("%s", chat_help);
            continue;
        }
        if (!strcmp(line, "/reset")) {
            while (json_array_size(messages) > (t->system ? 1u : 0u))
                json_array_remove(messages, json_array_size(messages) - 1);
            lazymoe_session_truncate(s, 0, NULL, 0);
            have_stats = 0;
            printf("(conversation cleared)\n");
            fflush(stdout);
            continue;
        }
        if (!strcmp(line, "/stats")) {
            printf("context %d tokens", lazymoe_session_length(s));
            if (have_stats) {
                printf("; last answer: ");
                print_stats(stdout, &last);
            } else {
                printf("\n");
            }
            fflush(stdout);
            continue;
        }
        if (line[0] == '/') {
            printf("unknown command %s\n%s", line, chat_help);
            continue;
        }
        if (add_message(messages, "user", line) != 0) {
            fprintf(stderr, "lazymoe: the input is not valid UTF-8 text\n");
            continue;
        }
        char *prompt = render(m, messages, t);
        if (!prompt) goto done;
        lazymoe_gen_params p;
        make_params(t, m, &p, ignore_eos);
        p.add_special = 0;
        p.cancel = &interrupted;
        out_ctx o = {0};
        int grc = lazymoe_generate_stream(s, prompt, &p, on_piece, &o, &last, err, sizeof err);
        lazymoe_free(prompt);
        if (o.text.len && o.last != '\n') printf("\n");
        if (last.finish_reason == LAZYMOE_FINISH_CANCELLED) printf("(stopped)\n");
        fflush(stdout);
        if (grc != 0) {
            /* The turn failed (e.g. the context is full): drop it and carry on. */
            json_array_remove(messages, json_array_size(messages) - 1);
            fprintf(stderr, "lazymoe: %s\n", err);
            lm_strbuf_free(&o.text);
            continue;
        }
        have_stats = 1;
        int bad = add_message(messages, "assistant", o.text.data ? o.text.data : "");
        lm_strbuf_free(&o.text);
        if (bad) {
            cli_fail("out of memory");
            goto done;
        }
    }
    rc = 0;
done:
    sigaction(SIGINT, &old, NULL);
    free(line);
    json_decref(messages);
    lazymoe_session_free(s);
    return rc;
}

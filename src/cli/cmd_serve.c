/* lazymoe serve MODEL: the OpenAI / Anthropic compatible HTTP server (src/server). */
#include "cli/cli.h"
#include "cli/commands.h"
#include "lazymoe.h"
#include "server/server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char serve_usage[] =
    "usage: lazymoe serve MODEL [options]\n"
    "Serves the model over HTTP: POST /v1/chat/completions (OpenAI), POST /v1/messages and\n"
    "/v1/messages/count_tokens (Anthropic), GET /v1/models, GET /health.\n"
    "\n"
    "  --host ADDR             address to listen on (default 127.0.0.1: this machine only)\n"
    "  --port N                port (default 8080; 0 = any free port, printed at start)\n"
    "  --api-key KEY           require this key (x-api-key or Authorization: Bearer);\n"
    "                          default: $LAZYMOE_API_KEY if set, else no key\n"
    "  --name NAME             model name in /v1/models and replies (default: the directory name)\n"
    "  --max-tokens N          generated tokens per request at most (default: no cap of the\n"
    "                          server's: the client's max_tokens, else the rest of the context)\n"
    "  --max-input-tokens N    refuse longer prompts (default: the context size, --ctx)\n"
    "  --max-body SIZE         refuse larger request bodies with 413 (default 32M)\n"
    "  --max-connections N     connections open at once (default 64); past it, and past 3/4 of it\n"
    "                          from one address, the longest idle connection is closed\n"
    "  --header-timeout S      seconds a connection may take to send a request's headers, also\n"
    "                          between requests (default 15); a body gets 120 s after them\n"
    "  --keepalive S           a stream without output for S seconds (a long prefill) gets a\n"
    "                          keep-alive: an SSE comment, and on Anthropic streams an empty\n"
    "                          delta, which Claude Code's 300 s stall timer counts (default 15)\n"
    "  --parallel N            requests generating at once (default 4): their tokens are decoded\n"
    "                          together, each step reading every routed expert once for all of\n"
    "                          them; each answer is the one the request gets alone. A request\n"
    "                          waits while the running ones hold its KV room (--cache-tokens)\n"
    "  --cache-slots N         conversations kept in the prompt cache (default 4, at least --parallel)\n"
    "  --cache-tokens N        KV positions those conversations may hold together; the memory\n"
    "                          plan reserves them (default: --ctx, i.e. one full context)\n"
    "  --prompt-cache-dir DIR  where evaluated long prompts are kept across sessions and restarts\n"
    "                          (default $XDG_CACHE_HOME/lazymoe/prompt-cache, else ~/.cache/...)\n"
    "  --prompt-cache-size SIZE  disk the stored prompts may take (default 8G; 0 = off)\n"
    "  --allow-forced-output   FOR TESTS ONLY: accept the request field \"lazymoe_forced_output\",\n"
    "                          which makes the model's answer that text (off by default)\n"
    "  --ctx N                 context size in tokens (default: the model's maximum, or what a\n"
    "                          quarter of the memory left after the resident weights holds)\n"
    "  --threads N             compute threads (default: all cores)\n"
    "  -v, --verbose           model loading progress\n"
    "memory:  --memory SIZE, --capacity N, --pin N, --resident, --io-threads N, --io-chunk SIZE,\n"
    "         --eviction P, --buffered-io, --trace-routing F, --no-warm-start, --lookahead N,\n"
    "         --kv-bits N, --act-bits N\n"
    "         (see lazymoe run --help)\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static const char *base_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    static char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(n - b), path + b);
    return name;
}

typedef struct {
    srv_options so;
    const char *name;   /* --name */
    int header_timeout; /* --header-timeout; 0 = the server's default */
    int keepalive;      /* --keepalive; 0 = the server's default */
} serve_args;

static int serve_arg(void *ctx, const char *s, const char *v) {
    serve_args *sa = ctx;
    srv_options *so = &sa->so;
    const cli_option opts[] = {
        {"--host", .str = &so->host, .what = "an address", .nonempty = 1},
        {"--port", .num = &so->port, .lo = 0, .hi = 65535},
        {"--api-key", .str = &so->api_key, .what = "a key", .nonempty = 1},
        {"--name", .str = &sa->name, .what = "a name", .nonempty = 1},
        {"--max-tokens", .num = &so->max_tokens, .lo = 1, .hi = 1 << 30},
        {"--max-input-tokens", .num = &so->max_input_tokens, .lo = 1, .hi = 1 << 30},
        {"--max-connections", .num = &so->max_connections, .lo = 1, .hi = 4096},
        {"--header-timeout", .num = &sa->header_timeout, .lo = 1, .hi = 3600},
        {"--keepalive", .num = &sa->keepalive, .lo = 1, .hi = 3600},
        {"--parallel", .num = &so->parallel, .lo = 1, .hi = 64},
        {"--cache-slots", .num = &so->cache_slots, .lo = 1, .hi = 256},
        {"--cache-tokens", .num = &so->cache_tokens, .lo = 1, .hi = 1 << 30},
        {"--allow-forced-output", .flag = &so->allow_forced_output, .lo = 1},
        {"--prompt-cache-dir", .str = &so->prompt_cache_dir, .what = "a directory", .nonempty = 1},
    };
    int r = CLI_OPTIONS(s, v, opts);
    if (r || (strcmp(s, "--max-body") != 0 && strcmp(s, "--prompt-cache-size") != 0)) return r;
    if (!strcmp(s, "--prompt-cache-size") && v && !strcmp(v, "0")) { /* off */
        so->prompt_cache_size = 0;
        return 2;
    }
    long long b = cli_parse_size(s, v);
    if (b < 0) return -1;
    if (!strcmp(s, "--max-body")) so->max_body = (size_t)b;
    else so->prompt_cache_size = (unsigned long long)b;
    return 2;
}

int cmd_serve(int argc, char **argv) {
    serve_args args = {.name = NULL};
    srv_options_init(&args.so);
    args.so.api_key = getenv("LAZYMOE_API_KEY");
    if (args.so.api_key && !*args.so.api_key) args.so.api_key = NULL;
    cli_model_args a;
    int prc = cli_parse_model_args(argc, argv, serve_usage, &a, serve_arg, &args);
    if (prc) return prc == 2 ? 0 : prc;
    srv_options so = args.so;
    if (args.header_timeout) so.header_timeout_s = (double)args.header_timeout;
    if (args.keepalive) so.keepalive_s = (double)args.keepalive;
    const char *model = a.model, *name = args.name;
    a.opt.kv_cache_tokens = so.cache_tokens;
    a.opt.parallel = so.parallel;
    a.opt.sessions = so.cache_slots > so.parallel ? so.cache_slots : so.parallel; /* the plan counts their scratch */
    char err[512], path[4096];
    lazymoe_model *m = cli_open_model(&a, path, sizeof path);
    if (!m) return 1;
    /* A repo id names the model better than its snapshot directory. */
    so.model_name = name ? name : (strcmp(path, model) != 0 ? model : base_name(path));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc = srv_run(m, &so, &stop_requested, err, sizeof err);
    lazymoe_model_close(m);
    if (rc != 0) return cli_fail("%s", err);
    return 0;
}

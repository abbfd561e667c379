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
    "  --max-tokens N          generated tokens per request at most, and the default (4096)\n"
    "  --max-input-tokens N    refuse longer prompts (default: the context size, --ctx)\n"
    "  --max-body SIZE         refuse larger request bodies with 413 (default 32M)\n"
    "  --max-connections N     connections open at once (default 64); past it, and past 3/4 of it\n"
    "                          from one address, the longest idle connection is closed\n"
    "  --header-timeout S      seconds a connection may take to send a request's headers, also\n"
    "                          between requests (default 15); a body gets 120 s after them\n"
    "  --cache-slots N         conversations kept in the prompt cache (default 4)\n"
    "  --cache-tokens N        KV positions those conversations may hold together; the memory\n"
    "                          plan reserves them (default: --ctx, i.e. one full context)\n"
    "  --allow-forced-output   FOR TESTS ONLY: accept the request field \"lazymoe_forced_output\",\n"
    "                          which makes the model's answer that text (off by default)\n"
    "  --ctx N                 context size in tokens (default: min(model maximum, 8192))\n"
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

int cmd_serve(int argc, char **argv) {
    lazymoe_options opt;
    lazymoe_options_init(&opt);
    srv_options so;
    srv_options_init(&so);
    so.api_key = getenv("LAZYMOE_API_KEY");
    if (so.api_key && !*so.api_key) so.api_key = NULL;
    const char *model = NULL, *name = NULL;
    long x;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r = cli_model_option(s, v, &opt);
        if (r < 0) return 1;
        if (r) {
            i += r - 1;
            continue;
        }
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            printf("%s", serve_usage);
            return 0;
        } else if (!strcmp(s, "--host")) {
            if (!v || !*v) return cli_fail("--host needs an address");
            so.host = v, i++;
        } else if (!strcmp(s, "--port")) {
            if ((x = cli_parse_long(s, v, 0, 65535)) < 0) return 1;
            so.port = (int)x, i++;
        } else if (!strcmp(s, "--api-key")) {
            if (!v || !*v) return cli_fail("--api-key needs a key");
            so.api_key = v, i++;
        } else if (!strcmp(s, "--name")) {
            if (!v || !*v) return cli_fail("--name needs a name");
            name = v, i++;
        } else if (!strcmp(s, "--max-tokens")) {
            if ((x = cli_parse_long(s, v, 1, 1 << 30)) < 0) return 1;
            so.max_tokens = (int)x, i++;
        } else if (!strcmp(s, "--max-input-tokens")) {
            if ((x = cli_parse_long(s, v, 1, 1 << 30)) < 0) return 1;
            so.max_input_tokens = (int)x, i++;
        } else if (!strcmp(s, "--max-body")) {
            long long b = cli_parse_size(s, v);
            if (b < 0) return 1;
            so.max_body = (size_t)b, i++;
        } else if (!strcmp(s, "--max-connections")) {
            if ((x = cli_parse_long(s, v, 1, 4096)) < 0) return 1;
            so.max_connections = (int)x, i++;
        } else if (!strcmp(s, "--header-timeout")) {
            if ((x = cli_parse_long(s, v, 1, 3600)) < 0) return 1;
            so.header_timeout_s = (double)x, i++;
        } else if (!strcmp(s, "--cache-slots")) {
            if ((x = cli_parse_long(s, v, 1, 256)) < 0) return 1;
            so.cache_slots = (int)x, i++;
        } else if (!strcmp(s, "--cache-tokens")) {
            if ((x = cli_parse_long(s, v, 1, 1 << 30)) < 0) return 1;
            so.cache_tokens = (int)x, i++;
        } else if (!strcmp(s, "--allow-forced-output")) {
            so.allow_forced_output = 1;
        } else if (!strcmp(s, "-v") || !strcmp(s, "--verbose")) {
            opt.verbose = 1;
        } else if (s[0] == '-' && s[1]) {
            return cli_fail("unknown option %s (see lazymoe serve --help)", s);
        } else if (!model) {
            model = s;
        } else {
            return cli_fail("unexpected argument \"%s\"", s);
        }
    }
    if (!model) return cli_fail("no model given\n%s", serve_usage);
    opt.kv_cache_tokens = so.cache_tokens;
    char err[512], path[4096];
    lazymoe_model *m = NULL;
    if (lazymoe_resolve_model(model, path, sizeof path, err, sizeof err) != 0 ||
        lazymoe_model_open(&m, path, &opt, err, sizeof err) != 0)
        return cli_fail("%s", err);
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

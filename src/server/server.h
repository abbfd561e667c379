/* The HTTP server behind `lazymoe serve`: OpenAI chat completions and Anthropic
 * messages over one loaded model.
 *
 * Threads: libmicrohttpd runs one thread per connection; those threads parse and
 * validate requests, render and tokenize prompts (the model's text functions are
 * thread-safe) and answer what needs no generation (/health, /v1/models,
 * count_tokens, every error). Generation requests become jobs in a FIFO served
 * by `parallel` worker threads, one job each; the workers share the sessions (the
 * prompt cache) under the engine lock, and their decode steps meet in one batch
 * (lazymoe_batch): each step evaluates every running request's next token in one
 * forward pass, and a new request's prompt is evaluated in chunks between those
 * steps. Each answer is the one the request gets alone. The connection thread then
 * relays what its worker produces and watches its socket: a client that goes away
 * cancels its own job, queued or running (its worker and KV room are freed).
 */
#ifndef LAZYMOE_SERVER_H
#define LAZYMOE_SERVER_H

#include "lazymoe.h"

#include <signal.h>
#include <stddef.h>

typedef struct {
    const char *host;        /* address to bind; default 127.0.0.1 */
    int port;                /* 0 = any free port (the one chosen is logged) */
    const char *api_key;     /* NULL = no authentication */
    const char *model_name;  /* name reported by /v1/models and in replies */
    int max_tokens;          /* cap on generated tokens per request; 0 = none (the client's
                                limit, or the rest of the context) */
    int max_input_tokens;    /* prompts longer are refused; 0 = the context size */
    size_t max_body;         /* request bodies larger are refused with 413 */
    int parallel;            /* requests generating at once, decoded together (default 4) */
    int cache_slots;         /* conversations kept in the prompt cache (at least parallel) */
    int cache_tokens;        /* KV positions the kept conversations may hold together */
    int allow_forced_output; /* tests only: accept "lazymoe_forced_output" */
    int max_connections;     /* open at once; idle ones are shed first (conns.h) */
    double header_timeout_s; /* a request's headers must arrive within this (default 15 s) */
    double body_timeout_s;   /* and its body within this after them (default 120 s) */
    double keepalive_s;      /* a stream without output this long gets a keep-alive (default 15 s) */
    /* The persistent prompt cache (disk_cache.h): a directory (NULL = the default,
     * $XDG_CACHE_HOME/lazymoe/prompt-cache or ~/.cache/lazymoe/prompt-cache) and the
     * bytes its files may take (0 = off). */
    const char *prompt_cache_dir;
    unsigned long long prompt_cache_size;
} srv_options;

void srv_options_init(srv_options *o);

/* Serves until *stop becomes non-zero (e.g. from a signal handler). Logs
 * "lazymoe: listening on http://HOST:PORT" once ready, then one line per request,
 * through the log callback (lazymoe_set_log; the CLI's prints them on stderr).
 * Returns 0, or -1 with err (e.g. the port is taken). */
int srv_run(lazymoe_model *m, const srv_options *o, const volatile sig_atomic_t *stop, char *err, size_t errlen);

#endif

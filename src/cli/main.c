/* lazymoe command-line tool: dispatches to the subcommands in src/cli/cmd_*.c. */
#include "cli/cli.h"
#include "cli/commands.h"
#include "lazymoe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
    {"run", cmd_run, "generate from a prompt"},
    {"chat", cmd_chat, "talk with a model (multi-turn, the context kept between turns)"},
    {"serve", cmd_serve, "OpenAI / Anthropic compatible HTTP server"},
    {"logits", cmd_logits, "write the logits of a forward pass as .npy"},
    {"perplexity", cmd_perplexity, "score a text file: perplexity over fixed windows"},
    {"info", cmd_info, "describe a model: architecture, parameters, bytes"},
    {"bench", cmd_bench, "measure prefill/decode speed, expert cache and memory"},
    {"convert", cmd_convert, "quantize a Hugging Face checkpoint into the MLX layout"},
    {"tokenize", cmd_tokenize, "tokenize JSONL text with a model's tokenizer.json"},
    {"template", cmd_template, "render chat templates for JSONL conversations"},
    {"synth", cmd_synth, "write a random-weight MLX model at a real model's shapes"},
    {"replay", cmd_replay, "expert-cache hit rates of each eviction policy on a routing trace"},
};

static void usage(FILE *f) {
    fprintf(f, "lazymoe %s: Mixture-of-Experts inference, exact, with experts streamed from disk\n\n", LAZYMOE_VERSION);
    fprintf(f, "usage: lazymoe COMMAND [options]   (lazymoe COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

/* The library's messages, on stderr as they always were: one line per message
 * written whole (one write, so the server's threads never interleave lines), and
 * progress meters as the terminal text they are. */
static void log_to_stderr(void *ctx, lazymoe_log_level level, const char *msg) {
    (void)ctx;
    if (level == LAZYMOE_LOG_PROGRESS) {
        fputs(msg, stderr);
        return;
    }
    size_t n = strlen(msg);
    char *line = malloc(n + 2);
    if (!line) {
        fprintf(stderr, "%s\n", msg);
        return;
    }
    memcpy(line, msg, n);
    line[n] = '\n';
    line[n + 1] = 0;
    fputs(line, stderr);
    free(line);
}

int main(int argc, char **argv) {
    lazymoe_set_log(log_to_stderr, NULL);
    if (argc >= 3 && !strcmp(argv[1], "help")) { /* lazymoe help COMMAND = lazymoe COMMAND --help */
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
            if (!strcmp(argv[2], commands[i].name)) {
                char *args[] = {argv[2], "--help", NULL};
                return commands[i].fn(2, args);
            }
        fprintf(stderr, "lazymoe: no help for unknown command '%s'\n\n", argv[2]);
        usage(stderr);
        return 1;
    }
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("lazymoe %s\n", LAZYMOE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "lazymoe: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 1;
}

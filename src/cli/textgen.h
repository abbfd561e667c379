/* Text generation commands (cmd_generate.c): the options they add to the model
 * options of cmd_model.c, `run MODEL "prompt"` and `chat MODEL`. */
#ifndef LAZYMOE_CLI_TEXTGEN_H
#define LAZYMOE_CLI_TEXTGEN_H

#include "lazymoe.h"

typedef struct {
    lazymoe_sampling samp; /* values of the sampling flags given */
    int set_temp, set_top_p, set_top_k, set_min_p, set_rep, set_presence, set_frequency, set_seed;
    int max_tokens;        /* -n */
    const char **stop;     /* --stop values (borrowed from argv), n_stop of them */
    int n_stop;
    int chat;              /* --chat: apply the chat template to the prompt */
    int no_think;          /* --no-think: enable_thinking false */
    int no_stats;
    int echo;              /* --echo: print the prompt before the answer */
    const char *system;    /* --system */
} cli_textgen;

void cli_textgen_init(cli_textgen *t);
void cli_textgen_free(cli_textgen *t);
/* Option hook for the model argument parser: 0 = not a text option, 1 = a flag,
 * 2 = a flag and its value consumed, -1 = invalid (message printed). */
int cli_textgen_option(void *ctx, const char *opt, const char *val);

#define CLI_TEXTGEN_OPTIONS                                                                             \
    "text:    -n N               tokens to generate at most (default 512; 0 = until EOS)\n"             \
    "         --temp T           temperature, 0 = greedy (default: generation_config.json, else 0)\n"   \
    "         --top-k K  --top-p P  --min-p P\n"                                                        \
    "         --repeat-penalty R  --presence-penalty P  --frequency-penalty F\n"                        \
    "         --seed S           sampling seed (default: random)\n"                                     \
    "         --stop STR         end the answer before STR (repeatable)\n"                              \
    "         --chat             apply the chat template; --system TEXT, --no-think\n"                  \
    "         --no-stats         no statistics line on stderr\n"                                       \
    "         --echo             print the prompt (not a chat template's rendering) before the answer\n"

/* Streams the answer to `prompt` to stdout, then a statistics line to stderr. */
int cli_run_text(lazymoe_model *m, const char *prompt, cli_textgen *t, int ignore_eos);
/* Interactive chat on stdin/stdout. */
int cli_chat(lazymoe_model *m, cli_textgen *t, int ignore_eos);

#endif

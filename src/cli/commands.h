/* CLI subcommands. Each takes the arguments after its name (argv[0] is the subcommand)
 * and returns the process exit status; only main() calls exit(). */
#ifndef LAZYMOE_COMMANDS_H
#define LAZYMOE_COMMANDS_H

/* lazymoe convert HF_DIR OUT_DIR [--bits N] [--group-size N] [--dtype bf16|f16|f32] ... */
int cmd_convert(int argc, char **argv);

#endif

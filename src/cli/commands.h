/* Subcommands of the lazymoe CLI; each takes argv with argv[0] = its own name. */
#ifndef LAZYMOE_COMMANDS_H
#define LAZYMOE_COMMANDS_H

int cmd_logits(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_info(int argc, char **argv);

#endif

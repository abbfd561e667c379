/* CLI subcommands; each takes argv with argv[0] = the subcommand name and returns the
 * process exit status. */
#ifndef LAZYMOE_CLI_COMMANDS_H
#define LAZYMOE_CLI_COMMANDS_H

int cmd_tokenize(int argc, char **argv);

#endif

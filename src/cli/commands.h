/* Subcommands of the lazymoe CLI: each takes the arguments after its name
 * (argv[0] is the subcommand) and returns the process exit status. */
#ifndef LAZYMOE_CLI_COMMANDS_H
#define LAZYMOE_CLI_COMMANDS_H

int cmd_template(int argc, char **argv);

#endif

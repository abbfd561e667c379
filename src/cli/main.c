/* Placeholder CLI entry: dispatches the subcommands built so far. */
#include "cli/commands.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "template") == 0) return cmd_template(argc - 1, argv + 1);
    fprintf(stderr, "lazymoe: nothing here yet\n");
    return 1;
}

/* Placeholder CLI entry (the lead's real CLI replaces this): dispatches subcommands. */
#include "cli/commands.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "convert") == 0) return cmd_convert(argc - 1, argv + 1);
    fprintf(stderr, "usage: lazymoe convert HF_DIR OUT_DIR [options]\n");
    return 1;
}

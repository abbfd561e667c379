#include <stdio.h>
#include <string.h>

#include "cli/commands.h"

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    fprintf(stderr, "lazymoe: nothing here yet\n");
    return 1;
}

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "lazymoe: nothing here yet\n");
    return 1;
}

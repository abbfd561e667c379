/* Prints the prompt token ids `lazymoe bench --seed S --prompt-tokens P` draws for a model
 * of vocabulary V (src/cli/cmd_bench.c: srand(S), then rand() % V per token), so another
 * engine can be fed the identical prompt. usage: bench_prompt_ids P V [S=1] */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PROMPT_TOKENS VOCAB [SEED=1]\n", argv[0]);
        return 2;
    }
    int prompt = atoi(argv[1]);
    unsigned vocab = (unsigned)strtoul(argv[2], NULL, 10);
    srand(argc > 3 ? (unsigned)strtoul(argv[3], NULL, 10) : 1u);
    for (int i = 0; i < prompt; i++) printf(i ? " %u" : "%u", (unsigned)rand() % vocab);
    printf("\n");
    return 0;
}

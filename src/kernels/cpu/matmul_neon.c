/* ARM NEON matrix kernels: placeholder until the NEON step. */
#include "kernels/cpu/cpu_kernels.h"

static int unavailable(void) { return 0; }
const lm_cpu_kernels lm_cpu_kernels_neon = {"neon", "an AArch64 CPU with NEON", unavailable, NULL, NULL, NULL};

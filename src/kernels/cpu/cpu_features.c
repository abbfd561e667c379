/* Which SIMD instruction sets this CPU and OS run (CPUID and XGETBV on x86-64,
 * the auxiliary vector on AArch64 Linux). Read directly rather than through
 * __builtin_cpu_supports, whose feature names vary between compilers.
 * Features can be hidden (LAZYMOE_CPU_HIDE, lm_cpu_features_hide) so that the
 * kernels a CPU would not pick -- the int8 paths without VNNI or SDOT -- can be
 * tested and measured on a CPU that has the instructions. */
#include "kernels/cpu/cpu_kernels.h"

#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>

static unsigned detect(void) {
    unsigned a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1;
    if (!osxsave) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    int os_avx = (xcr0_lo & 0x6u) == 0x6u;              /* XMM and YMM state saved */
    int os_avx512 = os_avx && (xcr0_lo & 0xe0u) == 0xe0u; /* opmask and ZMM state too */
    if (!os_avx) return 0;
    if ((c >> 12) & 1) f |= LM_CPU_FMA;
    if ((c >> 29) & 1) f |= LM_CPU_F16C;
    unsigned a7, b7, c7, d7;
    if (__get_cpuid_count(7, 0, &a7, &b7, &c7, &d7)) {
        if ((b7 >> 5) & 1) f |= LM_CPU_AVX2;
        if (os_avx512) {
            if ((b7 >> 16) & 1) f |= LM_CPU_AVX512F;
            if ((b7 >> 17) & 1) f |= LM_CPU_AVX512DQ;
            if ((b7 >> 30) & 1) f |= LM_CPU_AVX512BW;
            if ((b7 >> 31) & 1) f |= LM_CPU_AVX512VL;
            if ((c7 >> 1) & 1) f |= LM_CPU_AVX512VBMI;
            if ((c7 >> 11) & 1) f |= LM_CPU_AVX512VNNI;
        }
        unsigned a71, b71, c71, d71;
        if (a7 >= 1 && __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71) && ((a71 >> 4) & 1)) f |= LM_CPU_AVXVNNI;
    }
    return f;
}

#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif

static unsigned detect(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    unsigned f = 0;
    if (hw & HWCAP_ASIMD) f |= LM_CPU_NEON;
    if (hw & HWCAP_ASIMDDP) f |= LM_CPU_DOTPROD;
    return f;
}

#elif defined(__aarch64__)
/* NEON is part of AArch64 (Apple Silicon included); a build for a target with the
 * dot-product instructions (Apple's arm64 compilers target the M1) may use them. */
static unsigned detect(void) {
#if defined(__ARM_FEATURE_DOTPROD)
    return LM_CPU_NEON | LM_CPU_DOTPROD;
#else
    return LM_CPU_NEON;
#endif
}

#else
static unsigned detect(void) { return 0; }
#endif

static const struct {
    const char *name;
    unsigned bit;
} feature_names[] = {
    {"avx2", LM_CPU_AVX2},         {"fma", LM_CPU_FMA},           {"f16c", LM_CPU_F16C},
    {"avx512f", LM_CPU_AVX512F},   {"avx512bw", LM_CPU_AVX512BW}, {"avx512vl", LM_CPU_AVX512VL},
    {"avx512dq", LM_CPU_AVX512DQ}, {"avx512vbmi", LM_CPU_AVX512VBMI}, {"neon", LM_CPU_NEON},
    {"dotprod", LM_CPU_DOTPROD},   {"avx512vnni", LM_CPU_AVX512VNNI}, {"avxvnni", LM_CPU_AVXVNNI},
};

/* The features LAZYMOE_CPU_HIDE names (comma-separated); an unknown name is
 * reported through the log callback and hides nothing. */
static unsigned hidden_by_env(void) {
    const char *s = getenv("LAZYMOE_CPU_HIDE");
    unsigned mask = 0;
    while (s && *s) {
        size_t len = strcspn(s, ",");
        size_t i = 0, n = sizeof feature_names / sizeof feature_names[0];
        while (i < n && !(strlen(feature_names[i].name) == len && !strncmp(s, feature_names[i].name, len))) i++;
        if (i < n) mask |= feature_names[i].bit;
        else if (len)
            lm_log(LAZYMOE_LOG_WARN, "lazymoe: LAZYMOE_CPU_HIDE: unknown feature '%.*s' ignored (known: avx2, fma, "
                   "f16c, avx512f, avx512bw, avx512vl, avx512dq, avx512vbmi, avx512vnni, avxvnni, neon, dotprod)",
                   (int)len, s);
        s += len;
        if (*s == ',') s++;
    }
    return mask;
}

static volatile unsigned hidden; /* lm_cpu_features_hide */

unsigned lm_cpu_features(void) {
    /* Idempotent, so concurrent first calls are harmless. */
    static volatile unsigned cached; /* 0 = not detected yet; bit 31 marks "detected" */
    if (!cached) cached = (detect() & ~hidden_by_env()) | 0x80000000u;
    return cached & 0x7fffffffu & ~hidden;
}

unsigned lm_cpu_features_hide(unsigned mask) {
    unsigned old = hidden;
    hidden = mask;
    return old;
}

/* Minimal test harness shared by the C test programs.
 *
 * Each test program calls TEST_CASE(name, fn) for every case; a case fails when a
 * CHECK inside it fails. The program prints one line per case ("ok NAME" or
 * "FAIL NAME: reason") and exits non-zero if any case failed. tests/run.sh
 * aggregates those lines into the final "N passed, N failed" summary.
 */
#ifndef LAZYMOE_TEST_HARNESS_H
#define LAZYMOE_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int th_failed_cases;
static int th_case_failed;
static const char *th_case_name;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            if (!th_case_failed)                                                     \
                printf("FAIL %s: %s:%d: CHECK(%s)\n", th_case_name, __FILE__,       \
                       __LINE__, #cond);                                             \
            th_case_failed = 1;                                                      \
        }                                                                            \
    } while (0)

#define CHECKF(cond, ...)                                                            \
    do {                                                                             \
        if (!(cond)) {                                                               \
            if (!th_case_failed) {                                                   \
                printf("FAIL %s: %s:%d: ", th_case_name, __FILE__, __LINE__);        \
                printf(__VA_ARGS__);                                                 \
                printf("\n");                                                        \
            }                                                                        \
            th_case_failed = 1;                                                      \
        }                                                                            \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                           \
    CHECKF((long long)(a) == (long long)(b), "%s == %s (%lld vs %lld)", #a, #b,      \
           (long long)(a), (long long)(b))

static inline const char *th_str(const char *s) { return s ? s : "(null)"; }
#define CHECK_STR_CONTAINS(hay, needle)                                              \
    CHECKF(th_str(hay) != NULL && strstr(th_str(hay), (needle)) != NULL,             \
           "expected \"%s\" to contain \"%s\"", th_str(hay), (needle))

#define TEST_CASE(name, fn)                                                          \
    do {                                                                             \
        th_case_name = (name);                                                       \
        th_case_failed = 0;                                                          \
        fn();                                                                        \
        if (th_case_failed)                                                          \
            th_failed_cases++;                                                       \
        else                                                                         \
            printf("ok %s\n", th_case_name);                                         \
        fflush(stdout);                                                              \
    } while (0)

#define TEST_EXIT() return th_failed_cases ? 1 : 0

/* Directory of the source tree, so tests find fixtures wherever they run from. */
#ifndef LAZYMOE_SOURCE_DIR
#define LAZYMOE_SOURCE_DIR "."
#endif

#endif

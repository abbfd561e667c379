#!/usr/bin/env bash
# Static analysis must stay clean: cppcheck and clang-tidy (clang-analyzer + bugprone),
# the layering of src/ holds (nothing below the API layer uses it), and the bench/
# programs compile.
set -u
cd "$(dirname "$0")/../.."
fail=0
SRCS=$(find src -name '*.c' | sort)
if out=$(cppcheck -j "$(nproc)" --enable=warning,performance,portability --inline-suppr --error-exitcode=1 -q \
        -Iinclude -Isrc -D_GNU_SOURCE --std=c11 $SRCS 2>&1); then
    echo "ok lint_cppcheck"
else
    echo "FAIL lint_cppcheck: $(echo "$out" | head -5 | tr '\n' ' ')"; fail=1
fi
# valist.Uninitialized: clang 14 reports every va_start/vsnprintf pair in error.c (false positive).
# sizeof-expression flags every `sizeof *p` where p points to pointers; branch-clone is style.
CHECKS='-*,clang-analyzer-*,-clang-analyzer-valist.Uninitialized,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-narrowing-conversions,-bugprone-implicit-widening-of-multiplication-result,-bugprone-reserved-identifier,-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling,-bugprone-assignment-in-if-condition,-bugprone-sizeof-expression,-bugprone-branch-clone'
# One clang-tidy per file, as many at once as there are cores.
out=$(printf '%s\n' $SRCS | xargs -P "$(nproc)" -I{} clang-tidy -quiet --checks="$CHECKS" {} -- -std=c11 -D_GNU_SOURCE -Iinclude -Isrc 2>&1 | grep -E 'warning:|error:')
if [ -z "$out" ]; then echo "ok lint_clang_tidy"; else echo "FAIL lint_clang_tidy: $(echo "$out" | head -8 | tr '\n' ' ')"; fail=1; fi
# Layering: the public API layer (src/api/) sits on the engine; the engine and
# everything below it neither include its headers nor call its functions (only the
# CLI and the server, which are above it, may). The call check reads the objects of
# the sanitizer build when it is there.
up=$(grep -ln '#include "api/' $SRCS $(find src -name '*.h') | grep -v '^src/\(api\|cli\|server\)/')
calls=""
if [ -d build/asan/src/api ]; then
    api_syms=$(nm -g --defined-only build/asan/src/api/*.o | awk 'NF == 3 {print $3}' | sort -u)
    for c in $(printf '%s\n' $SRCS | grep -v '^src/\(api\|cli\|server\)/'); do
        o=build/asan/${c%.c}.o
        [ -f "$o" ] || continue
        hit=$(comm -12 <(echo "$api_syms") <(nm -u "$o" | awk '{print $NF}' | sort -u) | tr '\n' ' ')
        [ -n "$hit" ] && calls="$calls $c calls $hit;"
    done
fi
if [ -z "$up" ] && [ -z "$calls" ]; then echo "ok lint_layering"
else echo "FAIL lint_layering: below src/api/ but using it:" $up $calls; fail=1; fi
# The benchmark programs are built by hand (each file's header says how), so nothing
# else compiles them: check that they still do, with the project's warnings.
bad=""
for f in bench/*.c; do
    cc -fsyntax-only -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -Isrc "$f" 2>/dev/null || bad="$bad $f"
done
if [ -z "$bad" ]; then echo "ok lint_bench_compiles"; else echo "FAIL lint_bench_compiles:$bad"; fail=1; fi
exit $fail

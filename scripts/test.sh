#!/usr/bin/env bash
# The test command (CI runs exactly this): install dependencies, then build and run every test twice:
# once optimised (Release), once with AddressSanitizer + UndefinedBehaviorSanitizer, which also replays the fuzz
# corpora.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
export CTEST_OUTPUT_ON_FAILURE=1
JOBS=${JOBS:-$(nproc)}

echo "== release build + tests"
scripts/build.sh build
ctest --test-dir build -j "$JOBS" --timeout 900

echo "== asan+ubsan build + tests"
# -O1 -g1 (line tables for the sanitizers' stack traces): compiles in half the time of -O2 -g (measured on
# src/tools/validate.cpp: 50 s against 104 s of CPU), which keeps the whole CI run well inside its budget.
scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" \
  -DEDGEVLM_SANITIZE=ON -DEDGEVLM_BENCH=OFF -DEDGEVLM_CUDA=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -j "$JOBS" --timeout 1800

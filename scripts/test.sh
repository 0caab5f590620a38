#!/usr/bin/env bash
# The test command: set up from nothing (apt, pip), build from scratch, make the reference fixtures
# with diffusers/transformers, run every test, then a 30-second fuzz smoke per target (scripts/fuzz.sh).
# Extra arguments go to ctest (e.g. -R Tokenizer).
#   scripts/test.sh --sanitize [ctest args]   the unit tests under ASan + UBSan instead (build-asan/;
#                                              full-size and CUDA checks left out), no fuzz smoke
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sanitize" ]; then
  shift
  export TAIYI_BUILD=${TAIYI_BUILD:-build-asan}
  bash scripts/build.sh -DTAIYI_WERROR=ON -DTAIYI_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTAIYI_FULL_TESTS=OFF
  # libtorch is not instrumented: its allocations at exit are not ours to report (detect_leaks=0), and it
  # keeps an alternate signal stack ASan must not replace (use_sigaltstack=0).
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:use_sigaltstack=0:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  ctest --test-dir "$TAIYI_BUILD" --output-on-failure -j "$(nproc)" -LE 'cuda|full' "$@"
  exit 0
fi
bash scripts/build.sh -DTAIYI_WERROR=ON
BUILD=${TAIYI_BUILD:-build}
# Everything but the CUDA label (which needs a GPU: scripts/gpu_check.sh runs it there).
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" -LE cuda "$@"
# The fuzz targets (tests/fuzz), 30 s each, seeded from the fixtures the tests just made; a crash fails.
TAIYI_FIXTURES="$BUILD/fixtures" bash scripts/fuzz.sh 30

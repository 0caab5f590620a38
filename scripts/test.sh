#!/usr/bin/env bash
# The test command: set up from nothing (apt, pip), build from scratch, make the reference fixtures
# with diffusers/transformers, and run every test. Extra arguments go to ctest (e.g. -R Tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh -DTAIYI_WERROR=ON
BUILD=${TAIYI_BUILD:-build}
# Everything but the CUDA label (which needs a GPU: scripts/gpu_check.sh runs it there).
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" -LE cuda "$@"

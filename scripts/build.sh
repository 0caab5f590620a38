#!/usr/bin/env bash
# Set up (scripts/setup.sh), configure and build taiyi into ${TAIYI_BUILD:-build}.
# Extra arguments go to cmake's configure step (e.g. -DTAIYI_WERROR=ON).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
TAIYI_VENV=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}
BUILD=${TAIYI_BUILD:-build}
PY="$TAIYI_VENV/bin/python"
TORCH_CMAKE=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/taiyi/ccache}
# ccache caches translation units built with a precompiled header only with these.
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
# --log-level=ERROR: libtorch's CMake config warns that the profiler library kineto is missing from the
# wheel (taiyi does not use it); configure errors still show.
cmake --log-level=ERROR -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" \
  -DTAIYI_PYTHON="$PY" -Wno-dev "$@" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"

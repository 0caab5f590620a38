#!/usr/bin/env bash
# The one GPU check, one command, for the lent H100/H200 machine (torch in /opt/torch/.venv, cmake,
# ninja, no network), within a global deadline (TAIYI_GPU_DEADLINE, default 420 s = 7 minutes), every
# stage under its own timeout:
#
#   scripts/gpu_check.sh --prepare        here, with network: fills .deps/ (ignored by git, <= 50 MiB)
#                                         with the Debian C++ header packages (dpkg -x) and the Python
#                                         wheels that machine lacks (diffusers, transformers 4.57, ...)
#   scripts/gpu_check.sh                  there (the device tool, carry [".deps"]):
#     env     (<= 30 s) nvidia-smi, versions, and `from diffusers import StableDiffusionPipeline` with
#             the carried wheels first on the path (transformers 5.x there can break diffusers 0.37)
#     in the background meanwhile: the tiny fixtures (tools/make_fixtures.py, CPU) then diffusers'
#             images on the GPU (tests/reference/pipeline.py --device cuda), and the full-size random
#             pipeline (the real Taiyi configs) for the timings
#     build   taiyi and its tests against that machine's torch, into build-gpu/ (ninja, all cores)
#     tests   ctest -L cuda: the CUDA parity suite (tests/test_cuda.cpp, CudaScheduler)
#     vs      scripts/bench_vs_diffusers.py: fp16 and fp32, 512x512, 50 PNDM steps, CFG 7.5, batch 1,
#             one diffusers process per precision
#     bench   taiyi bench: fp16, fp32, bf16 at batch 1 and 4, 512x512
#   Logs and JSON stream into $OUT (default ./gpu-out), 8 files at most: env.txt build.log tests.log
#   vs_diffusers.log vs_diffusers.json bench.log bench.json summary.txt.
#
#   TAIYI_GPU_DRY=1 scripts/gpu_check.sh  here, without a GPU: every stage but the CUDA work (the
#             build, the fixtures, the test listing; CUDA commands printed), to catch script errors
#             before device time is spent.
#
# Knobs: TAIYI_GPU_PYTHON (default /opt/torch/.venv/bin/python), TAIYI_GPU_DEADLINE (420),
# TAIYI_GPU_SLOWDOWN (stage limits and deadline multiplied by it; 8 in dry mode, for 2 cores),
# TAIYI_BENCH_REPEAT (2), TAIYI_BENCH_STEPS (50), TAIYI_BENCH_SIZE (512).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.deps
# Versions as in scripts/setup.sh (transformers 4.57 keeps the slow tokenizers diffusers' pipeline
# loads; it needs tokenizers <= 0.23.0 and huggingface-hub < 1.0, newer than the GPU image's).
WHEELS=(diffusers==0.37.1 transformers==4.57.3 huggingface-hub==0.36.0 tokenizers==0.22.2 accelerate==1.12.0
        importlib-metadata==8.7.0)
DEBS=(libcli11-dev nlohmann-json3-dev libstb-dev libgtest-dev)

prepare() {
  rm -rf "$DEPS"
  mkdir -p "$DEPS/debs" "$DEPS/wheels"
  (cd "$DEPS/debs" && apt-get download "${DEBS[@]}")
  for f in "$DEPS"/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
  rm -rf "$DEPS/debs" "$DEPS/usr/share/doc"
  # The GPU machine's Python is CPython 3.12 on x86-64 Linux.
  local pip_py=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}/bin/python
  [ -x "$pip_py" ] || pip_py=python3
  "$pip_py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEPS/wheels" "${WHEELS[@]}"
  for f in usr/share/cmake/CLI11/CLI11Config.cmake usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake \
           usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake usr/include/stb/stb_image_write.h; do
    [ -f "$DEPS/$f" ] || { echo "gpu_check: --prepare: $DEPS/$f missing" >&2; exit 1; }
  done
  echo "gpu_check: prepared $DEPS ($(du -sh "$DEPS" | cut -f1)): $(ls "$DEPS/wheels" | tr '\n' ' ')" >&2
  echo "gpu_check: on the GPU machine: run bash scripts/gpu_check.sh with carry [\".deps\"]" >&2
}

if [ "${1:-}" = "--prepare" ]; then
  prepare
  exit 0
fi

DRY=${TAIYI_GPU_DRY:-0}
[ -d "$DEPS/wheels" ] && [ -d "$DEPS/usr/include" ] ||
  { echo "gpu_check: $DEPS is missing: run scripts/gpu_check.sh --prepare where there is network, and carry .deps" >&2; exit 1; }
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
PY=${TAIYI_GPU_PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
[ "$DRY" = 1 ] && PY=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}/bin/python  # here: the project's own venv
BUILD=$ROOT/build-gpu
FIXTURES=$BUILD/fixtures       # the tiny fixtures ctest uses (CMake's TAIYI_FIXTURES)
BENCH_FIXTURES=$BUILD/bench-fixtures
REPEAT=${TAIYI_BENCH_REPEAT:-2}
STEPS=${TAIYI_BENCH_STEPS:-50}
SIZE=${TAIYI_BENCH_SIZE:-512}
# Dry runs here have 2 cores, not 16: their stage limits (and deadline) are scaled by this.
SLOWDOWN=${TAIYI_GPU_SLOWDOWN:-1}
[ "$DRY" = 1 ] && SLOWDOWN=${TAIYI_GPU_SLOWDOWN:-8}
DEADLINE=$(( $(date +%s) + ${TAIYI_GPU_DEADLINE:-420} * SLOWDOWN ))
export PYTHONUNBUFFERED=1
T0=$(date +%s)
FAILED=()
: > "$OUT/summary.txt"
stamp() { echo "gpu_check: [$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/summary.txt" >&2; }
# Runs a stage under min(its own limit, what is left of the deadline); a failure is recorded, not fatal.
stage() {
  local name=$1 limit=$(( $2 * SLOWDOWN )) left rc=0
  shift 2
  left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then stamp "$name: SKIPPED, the deadline is reached"; FAILED+=("$name (deadline)"); return 0; fi
  stamp "$name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if [ "$rc" = 0 ]; then stamp "$name: ok"; else stamp "$name: FAILED (exit $rc)"; FAILED+=("$name"); fi
}
# CUDA work: run it, or in dry mode print it.
cuda() { if [ "$DRY" = 1 ]; then echo "gpu_check: dry: would run: $*"; else "$@"; fi; }

# The carried wheels take precedence over the image's packages (PYTHONPATH comes before site-packages).
SITE=/tmp/taiyi-gpu-site
if [ "$DRY" != 1 ]; then
  [ -d "$SITE/diffusers" ] || "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "$DEPS"/wheels/*.whl
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi

env_check() {
  date -u
  cuda nvidia-smi || true
  "$PY" - <<'EOF'
import sys, torch, transformers
from diffusers import StableDiffusionPipeline  # noqa: F401 (transformers 5.x can break this import)
import diffusers
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "diffusers", diffusers.__version__, "transformers", transformers.__version__)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
EOF
  echo "nproc $(nproc)"; free -g | head -2; c++ --version | head -1; cmake --version | head -1
}

fixtures() {
  "$PY" tools/make_fixtures.py "$FIXTURES" >"$BUILD/fixtures.log" 2>&1 &&
    cuda "$PY" tests/reference/pipeline.py "$FIXTURES" --device cuda >>"$BUILD/fixtures.log" 2>&1
}

full_pipeline() {
  [ -f "$BENCH_FIXTURES/full-clip/model_index.json" ] && return 0
  "$PY" scripts/bench_vs_diffusers.py --make-full-clip "$BENCH_FIXTURES" >"$BUILD/full-pipeline.log" 2>&1
}

build() {
  local torch_cmake generator=()
  torch_cmake=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
  command -v ninja >/dev/null && generator=(-G Ninja)
  if command -v nvcc >/dev/null; then export CUDACXX=${CUDACXX:-$(command -v nvcc)}; fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  # Headers and CMake package files from the unpacked Debian packages (relocatable configs).
  cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -Wno-dev \
    "-DCMAKE_PREFIX_PATH=$torch_cmake;$DEPS/usr" -DCMAKE_INCLUDE_PATH="$DEPS/usr/include" \
    -DCLI11_DIR="$DEPS/usr/share/cmake/CLI11" -Dnlohmann_json_DIR="$DEPS/usr/share/cmake/nlohmann_json" \
    -DGTest_DIR="$DEPS/usr/lib/x86_64-linux-gnu/cmake/GTest" -DTAIYI_TESTS=ON -DTAIYI_PYTHON="$PY" \
    -DTAIYI_FULL_TESTS=OFF && cmake --build "$BUILD" -j "$(nproc)"
}

vs() {
  cuda "$PY" scripts/bench_vs_diffusers.py --taiyi "$BUILD/taiyi" --fixtures "$BENCH_FIXTURES" --device cuda \
    --precisions fp16,fp32 --size "$SIZE" --steps "$STEPS" --cfg-scale 7.5 --warmup 1 --repeat "$REPEAT" --one-process \
    --out "$BUILD/vs-diffusers" && cuda cp "$BUILD/vs-diffusers/vs_diffusers.json" "$OUT/"
}

bench() {
  cuda "$BUILD/taiyi" bench --model "$BENCH_FIXTURES/full-clip" --device cuda --precision fp16,fp32,bf16 \
    --batch-size 1,4 --resolution "$SIZE" --steps "$STEPS" --warmup 1 --repeat "$REPEAT" --json "$OUT/bench.json"
}

mkdir -p "$BUILD"
# Functions run by `timeout` need a shell: export what they use.
export -f env_check fixtures full_pipeline build vs bench cuda
export PY DRY BUILD FIXTURES BENCH_FIXTURES DEPS SIZE STEPS REPEAT OUT
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/taiyi/ccache}
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
stage env 30 bash -c env_check > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >&2
fixtures & FIXTURES_PID=$!
full_pipeline & FULL_PID=$!
stage build 240 bash -c build > "$OUT/build.log" 2>&1
tail -n 5 "$OUT/build.log" >&2
# The background jobs are this shell's children: wait for them here, then the stage only checks logs.
stage fixtures-wait 120 bash -c "while kill -0 $FIXTURES_PID 2>/dev/null; do sleep 1; done" >/dev/null 2>&1
wait "$FIXTURES_PID" || { stamp "fixtures FAILED"; tail -n 20 "$BUILD/fixtures.log" >&2; FAILED+=(fixtures); }
# The listing must hold the suite (a build that stopped early lists none): then run it.
list_and_run_cuda_tests() {
  local listed
  listed=$(ctest --test-dir "$BUILD" -N -L cuda | tee /dev/stderr | grep -c 'Test *#.*Cuda') || true
  [ "$listed" -ge 9 ] || { echo "gpu_check: only $listed CUDA tests listed (expected 9 or more)"; return 1; }
  cuda ctest --test-dir "$BUILD" --output-on-failure -j 4 -L cuda
}
export -f list_and_run_cuda_tests
stage tests 120 bash -c list_and_run_cuda_tests > "$OUT/tests.log" 2>&1
grep -E "tests passed|Failed|FAILED|PSNR|within|Total Tests" "$OUT/tests.log" | tail -n 40 >> "$OUT/summary.txt" || true
stage full-wait 120 bash -c "while kill -0 $FULL_PID 2>/dev/null; do sleep 1; done" >/dev/null 2>&1
wait "$FULL_PID" || { stamp "full-size pipeline FAILED"; tail -n 20 "$BUILD/full-pipeline.log" >&2; FAILED+=(full-pipeline); }
stage vs 150 bash -c vs > "$OUT/vs_diffusers.log" 2>&1
grep -E "^\[|taiyi/diffusers|image|dry" "$OUT/vs_diffusers.log" | grep -v '^gpu_check: \[' >> "$OUT/summary.txt" || true
stage bench 90 bash -c bench > "$OUT/bench.log" 2>&1
grep -v '^gpu_check: \[' "$OUT/bench.log" | tail -n 12 >> "$OUT/summary.txt" || true
kill "$FIXTURES_PID" "$FULL_PID" 2>/dev/null || true
if [ ${#FAILED[@]} -gt 0 ]; then
  stamp "FAILED: ${FAILED[*]} (outputs in $OUT)"
  exit 1
fi
stamp "all done; outputs in $OUT"

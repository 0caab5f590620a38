#!/usr/bin/env bash
# The one GPU check, one command, for the lent H100/H200 machine (torch 2.11+cu130 in /opt/torch/.venv,
# cmake, ninja, no network): 15 minutes of device time in all (machine start included), 10 minutes a
# command. Every stage runs under its own limit and under a global deadline (TAIYI_GPU_DEADLINE, 510 s);
# a stage that fails or times out is recorded and the next one runs; summary.txt is always written.
#
#   scripts/gpu_check.sh --prepare        here, with network: fills .deps/ (ignored by git, 42 MiB) with
#                                         the Debian C++ header packages (dpkg -x, 5.5 MiB), the Python wheels
#                                         that machine lacks (diffusers, transformers 4.57, peft, ..., 21 MiB),
#                                         taiyi and taiyi_tests built here against the same torch wheel
#                                         (2.11+cu130, the venv of scripts/setup.sh), stripped, with
#                                         libcudart.so.13 (8 MiB), and the pipeline and sampler references
#                                         (7 MiB)
#   scripts/gpu_check.sh                  there (the device tool, carry [".deps"], timeout_s 570)
#
# The plan, in order of value, with the expected time of each stage on an H100 (limit in brackets):
#     device start and transfer of ~45 MiB                          60-120 s  (before the command)
#   1 wheels       pip install of the carried wheels               ~10 s   [60]
#   2 env          nvidia-smi, versions, the diffusers import       ~15 s   [45]
#     background from here: fixtures (the six reference modules the CUDA suite reads, CPU, the carried
#     pipeline and sampler references used; then diffusers' images and fp16 VAE decode on the GPU,
#     ~50-80 s; without the carried references add 60-200 s) and the full-size random pipeline (the real
#     Taiyi configs, ~60-90 s)
#   3 binaries     the carried binaries if they start and match     ~2 s    [30]
#                  the sources and torch; else build (ninja)        150-240 s [240]
#   4 fixtures-wait                                                 0-60 s  [150]
#   5 tests        taiyi_tests --gtest_filter='Cuda*' -V-like log   45-75 s [150]
#   6 full-wait                                                     0-10 s  [90]
#   7 vs-fp16      taiyi vs diffusers fp16, 512x512, 50 PNDM steps  60-80 s [150]
#   8 bench-fp16   taiyi bench fp16, batch 1 and 4, 20 steps        25-35 s [75]
#   9 vs-fp32      taiyi vs diffusers fp32, same settings           80-110 s [150]
#  10 bench-more   taiyi bench bf16 and fp32, batch 1, 20 steps     30-40 s [75]
#   Total with carried binaries ~330-470 s (device time ~7-10 min of 15); with the on-device build the
#   deadline cuts the last stages (bench-more, then vs-fp32) rather than the first ones.
#   Outputs in $OUT (default ./gpu-out), 8 files, every JSON written into $OUT as it grows (a stage cut
#   by its limit keeps what it measured): summary.txt env.txt build.log tests.log measure.log
#   vs_diffusers.json bench.json bench_more.json.
#
#   TAIYI_GPU_DRY=1 scripts/gpu_check.sh  here, without a GPU: every stage, the GPU work replaced by CPU
#             stand-ins (CPU module tests for the CUDA suite, bench_vs_diffusers.py --cpu, taiyi bench on
#             the CPU, all tiny) or printed, to catch script errors before device time is spent.
#   TAIYI_GPU_SIMULATE_TIMEOUT=<stage>    that stage (or the job a wait stage waits for) hangs after its
#             work and is cut after TAIYI_GPU_SIMULATE_AFTER s (30): checks that the summary and every
#             figure measured before it are kept and that the later stages still run.
#
# Knobs: TAIYI_GPU_PYTHON (default /opt/torch/.venv/bin/python), TAIYI_GPU_DEADLINE (510),
# TAIYI_GPU_SLOWDOWN (stage limits and deadline multiplied by it; 8 in dry mode, for 2 cores),
# TAIYI_GPU_STAGES (comma list: run only these stages, e.g. tests,vs-fp16), TAIYI_GPU_BUILD=1 (build there
# even if binaries are carried), TAIYI_BENCH_REPEAT (2), TAIYI_VS_STEPS (50), TAIYI_BENCH_STEPS (20),
# TAIYI_BENCH_SIZE (512).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
DEPS=$ROOT/.deps
# Versions as in scripts/setup.sh (transformers 4.57 keeps the slow tokenizers diffusers' pipeline
# loads; it needs tokenizers <= 0.23.0 and huggingface-hub < 1.0, older than the GPU image's; diffusers
# imports peft when it is installed, and the image's peft targets transformers 5).
WHEELS=(diffusers==0.37.1 transformers==4.57.3 huggingface-hub==0.36.0 tokenizers==0.22.2 accelerate==1.12.0
        importlib-metadata==8.7.0 peft==0.18.0)
# libcpp-httplib0.11 and libbrotli1: the shared libraries taiyi serve links (the carried binaries need them).
DEBS=(libcli11-dev nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev libcpp-httplib-dev libcpp-httplib0.11 libbrotli1 libbrotli-dev
      libgtest-dev)
# The reference modules the CUDA suite reads (tests/test_cuda.cpp, CudaScheduler, CudaSamplers).
export TAIYI_REFERENCE_ONLY=pipeline,samplers,scheduler,text_encoder,unet,vae
CUDA_TESTS_MIN=10  # Cuda* tests the binary must list (8 in tests/test_cuda.cpp, CudaScheduler, CudaSamplers)

# A hash of what the binaries are built from: --prepare records it, the check compares it.
source_hash() {
  (cd "$ROOT" && find CMakeLists.txt src include tests -type f \( -name '*.cpp' -o -name '*.h' -o -name 'CMakeLists.txt' \
     -o -name '*.cmake' \) | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}

prepare_binaries() {
  local venv=${TAIYI_VENV:-$HOME/.cache/taiyi/venv} build=${TAIYI_BUILD:-build} cuda
  cuda=$("$venv/bin/python" -c 'import torch; print(torch.version.cuda or "")')
  case "$cuda" in
    13.*) ;;
    *) echo "gpu_check: --prepare: $venv's torch is not a CUDA 13 build ($cuda): no binaries carried," \
            "the GPU machine builds" >&2; return 0 ;;
  esac
  TAIYI_BUILD=$build bash scripts/build.sh || { echo "gpu_check: --prepare: build failed" >&2; return 1; }
  mkdir -p "$DEPS/bin" "$DEPS/lib"
  strip -o "$DEPS/bin/taiyi" "$build/taiyi" && strip -o "$DEPS/bin/taiyi_tests" "$build/tests/taiyi_tests" || return 1
  # libcudart.so.13 is the one library outside torch/lib they need: the GPU machine's own comes first.
  local cudart
  cudart=$(ldd "$build/taiyi" | awk '/libcudart.so/ {print $3}')
  [ -n "$cudart" ] && cp -L "$cudart" "$DEPS/lib/"
  local listed
  listed=$("$DEPS/bin/taiyi_tests" --gtest_list_tests --gtest_filter='Cuda*' | grep -c '^  ') || true
  if [ "$listed" -lt "$CUDA_TESTS_MIN" ]; then
    echo "gpu_check: --prepare: $build's test binary lists $listed Cuda tests (TAIYI_ONLY build?): not carried" >&2
    rm -rf "${DEPS:?}/bin" "${DEPS:?}/lib"
    return 1
  fi
  source_hash > "$DEPS/bin/SOURCE"
  "$venv/bin/python" -c 'import torch; print(torch.__version__)' > "$DEPS/bin/TORCH"
  echo "gpu_check: --prepare: carried binaries $(du -sh "$DEPS/bin" | cut -f1) (torch $(cat "$DEPS/bin/TORCH"))" >&2
}

# The references that take longest to make (pipeline: diffusers' images in three precisions, 11 min on
# 2 cores here; samplers), made here in build-gpu/fixtures (incrementally; a dry run fills it too) and
# carried with a hash of the tiny pipelines they were made from (8 MiB; the whole folder is 170 MiB). There,
# make_fixtures.py builds the tiny pipelines (seeded, seconds); if they hash the same, the carried
# references are copied in and its stamps (scripts' bytes, torch, diffusers and transformers versions)
# find them current; else it makes them there. Made here, the sampler references also use the pinned numpy
# (2.3.5, which taiyi's schedulers emulate; the GPU image has 2.5.2).
CARRIED_REFS=(ref/pipeline.safetensors ref/pipeline_cases.json ref/pipeline_samplers.safetensors
              ref/pipeline_sampler_cases.json ref/.pipeline.stamp ref/samplers.safetensors ref/sampler_cases.json
              ref/.samplers.stamp tiny-clip-old-scheduler)
pipelines_hash() {
  (cd "$1" && find tiny-clip tiny-bert -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}

prepare_fixtures() {
  local venv=${TAIYI_VENV:-$HOME/.cache/taiyi/venv} item
  mkdir -p build-gpu
  "$venv/bin/python" tools/make_fixtures.py build-gpu/fixtures || return 1
  mkdir -p "$DEPS/fixtures/ref"
  for item in "${CARRIED_REFS[@]}"; do cp -a "build-gpu/fixtures/$item" "$DEPS/fixtures/$item" || return 1; done
  pipelines_hash build-gpu/fixtures > "$DEPS/fixtures/PIPELINES"
  echo "gpu_check: --prepare: carried references $(du -sh "$DEPS/fixtures" | cut -f1)" >&2
}

prepare() {
  rm -rf "$DEPS"
  mkdir -p "$DEPS/debs" "$DEPS/wheels"
  (cd "$DEPS/debs" && apt-get download "${DEBS[@]}") || exit 1
  for f in "$DEPS"/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
  rm -rf "$DEPS/debs" "$DEPS/usr/share/doc"
  # The GPU machine's Python is CPython 3.12 on x86-64 Linux.
  local pip_py=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}/bin/python
  [ -x "$pip_py" ] || pip_py=python3
  "$pip_py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEPS/wheels" "${WHEELS[@]}" || exit 1
  for f in usr/share/cmake/CLI11/CLI11Config.cmake usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake \
           usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake usr/include/stb/stb_image_write.h \
           usr/lib/x86_64-linux-gnu/libjpeg.a; do
    [ -f "$DEPS/$f" ] || { echo "gpu_check: --prepare: $DEPS/$f missing" >&2; exit 1; }
  done
  [ "${TAIYI_GPU_PREPARE_BINARIES:-1}" = 1 ] && { prepare_binaries || exit 1; }
  [ "${TAIYI_GPU_PREPARE_FIXTURES:-1}" = 1 ] && { prepare_fixtures || exit 1; }
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
FIXTURES=$BUILD/fixtures       # the tiny fixtures (CMake's TAIYI_FIXTURES for build-gpu)
BENCH_FIXTURES=$BUILD/bench-fixtures
REPEAT=${TAIYI_BENCH_REPEAT:-2}
VS_STEPS=${TAIYI_VS_STEPS:-50}
BENCH_STEPS=${TAIYI_BENCH_STEPS:-20}
SIZE=${TAIYI_BENCH_SIZE:-512}
SIMULATE=${TAIYI_GPU_SIMULATE_TIMEOUT:-}
SIMULATE_AFTER=${TAIYI_GPU_SIMULATE_AFTER:-30}
ONLY=${TAIYI_GPU_STAGES:-}
# Dry runs here have 2 cores, not 16: their stage limits (and deadline) are scaled by this.
SLOWDOWN=${TAIYI_GPU_SLOWDOWN:-1}
[ "$DRY" = 1 ] && SLOWDOWN=${TAIYI_GPU_SLOWDOWN:-8}
DEADLINE=$(( $(date +%s) + ${TAIYI_GPU_DEADLINE:-510} * SLOWDOWN ))
export PYTHONUNBUFFERED=1
T0=$(date +%s)
FAILED=()
JOBS=()  # background jobs (each a `timeout` leading its own process group)
: > "$OUT/summary.txt"
: > "$OUT/measure.log"
stamp() { echo "gpu_check: [$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/summary.txt" >&2; }
# TAIYI_GPU_STAGES selects stages; the wheels and the binaries (or their build) always come first.
selected() { [ -z "$ONLY" ] || [[ ",$ONLY,wheels,binaries,build," == *",$1,"* ]]; }
left() { echo $(( DEADLINE - $(date +%s) )); }

# The summary's last lines, whatever ends the script (a failed expansion under set -u, a signal).
finish() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${JOBS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  if [ ${#FAILED[@]} -gt 0 ]; then
    stamp "FAILED: ${FAILED[*]} (outputs in $OUT)"
    rc=1
  elif [ "$rc" != 0 ]; then
    stamp "ended early (exit $rc; outputs in $OUT)"
  else
    stamp "all done; outputs in $OUT"
  fi
  ls -l "$OUT" >> "$OUT/summary.txt" 2>/dev/null
  exit "$rc"
}
trap finish EXIT
trap 'stamp "interrupted"; FAILED+=(interrupted); exit 1' INT TERM

# Runs a stage under min(its own limit, what is left of the deadline); a failure or a timeout is
# recorded, never fatal. `timeout` leads the stage's process group, so a timeout ends the whole stage.
stage() {
  local name=$1 limit=$(( $2 * SLOWDOWN )) rc=0
  shift 2
  selected "$name" || { stamp "$name: not selected (TAIYI_GPU_STAGES)"; return 0; }
  if [ "$name" = "$SIMULATE" ]; then
    limit=$SIMULATE_AFTER
    set -- bash -c '"$@"; echo "gpu_check: simulated hang"; sleep 3600' hang "$@"
  fi
  [ "$(left)" -lt "$limit" ] && limit=$(left)
  if [ "$limit" -le 5 ]; then stamp "$name: SKIPPED, the deadline is reached"; FAILED+=("$name (deadline)"); return 0; fi
  stamp "$name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  case "$rc" in
    0) stamp "$name: ok" ;;
    124|137) stamp "$name: TIMED OUT after ${limit} s"; FAILED+=("$name (timeout)") ;;
    *) stamp "$name: FAILED (exit $rc)"; FAILED+=("$name") ;;
  esac
}

# A background job: its own `timeout` bounds it by the deadline and, killed, ends its whole group.
start_job() {  # name log function -> sets JOB_PID
  local name=$1 log=$2 fn=$3 cmd
  cmd="$fn"
  [ "$name" = "$SIMULATE" ] && cmd="$fn; echo 'gpu_check: simulated hang'; sleep 3600"
  timeout --kill-after=10 "$(left)" bash -c "$cmd" > "$log" 2>&1 &
  JOB_PID=$!
  JOBS+=("$JOB_PID")
}

# Waits for a background job within min(limit, deadline), in this shell (no bare `wait` on a live job):
# a job still running then is killed and the wait recorded as timed out.
wait_job() {  # stage-name limit pid job-name log
  local name=$1 limit=$(( $2 * SLOWDOWN )) pid=$3 job=$4 log=$5 rc=0 end
  [ "$job" = "$SIMULATE" ] && limit=$SIMULATE_AFTER
  [ "$(left)" -lt "$limit" ] && limit=$(left)
  [ "$limit" -lt 0 ] && limit=0
  stamp "$name (limit ${limit} s)"
  end=$(( $(date +%s) + limit ))
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 15); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    stamp "$name: TIMED OUT after ${limit} s: $job killed"; FAILED+=("$name (timeout)")
    tail -n 20 "$log" >&2
    return 0
  fi
  wait "$pid" || rc=$?
  if [ "$rc" = 0 ]; then stamp "$name: ok ($job done)"
  else stamp "$name: $job FAILED (exit $rc)"; FAILED+=("$job"); tail -n 20 "$log" | tee -a "$OUT/summary.txt" >&2; fi
}

# CUDA work: run it, or in dry mode print it.
cuda() { if [ "$DRY" = 1 ]; then echo "gpu_check: dry: would run: $*"; else "$@"; fi; }

# The carried wheels take precedence over the image's packages (PYTHONPATH comes before site-packages).
SITE=/tmp/taiyi-gpu-site
[ "$DRY" = 1 ] && SITE=/tmp/taiyi-gpu-site-dry
wheels() {
  [ -d "$SITE/diffusers" ] && [ -d "$SITE/peft" ] && { echo "gpu_check: $SITE already holds the wheels"; return 0; }
  rm -rf "$SITE"
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$DEPS"/wheels/*.whl
}

env_check() {
  date -u
  cuda nvidia-smi || true
  "$PY" - <<'EOF'
import sys, torch, transformers
from diffusers import StableDiffusionPipeline  # noqa: F401 (transformers 5.x can break this import)
import diffusers, peft
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "diffusers", diffusers.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "from", diffusers.__file__)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
EOF
  echo "nproc $(nproc)"; free -g | head -2; c++ --version | head -1; cmake --version | head -1
}

# The six reference modules only (TAIYI_REFERENCE_ONLY), once (from the carried ones when current): the
# tests run the gtest binary, not ctest, whose make_fixtures set-up would run the generator again. Then
# diffusers on the GPU.
fixtures() {
  if [ -f "$DEPS/fixtures/PIPELINES" ] && [ ! -f "$FIXTURES/ref/.pipeline.stamp" ]; then
    "$PY" tools/make_fixtures.py "$FIXTURES" --pipelines-only || return 1
    if [ "$(pipelines_hash "$FIXTURES")" = "$(cat "$DEPS/fixtures/PIPELINES")" ]; then
      echo "gpu_check: the tiny pipelines hash as the carried references': using them"
      cp -a "$DEPS/fixtures/ref/." "$FIXTURES/ref/" && cp -a "$DEPS/fixtures/tiny-clip-old-scheduler" "$FIXTURES/"
    else
      echo "gpu_check: the tiny pipelines differ from the carried references': making the references here"
    fi
  fi
  "$PY" tools/make_fixtures.py "$FIXTURES" &&
    cuda "$PY" tests/reference/pipeline.py "$FIXTURES" --device cuda &&
    cuda "$PY" tests/reference/vae.py "$FIXTURES" --device cuda
}

full_pipeline() {
  [ -f "$BENCH_FIXTURES/full-clip/model_index.json" ] && { echo "full-clip already made"; return 0; }
  if [ "$DRY" = 1 ] && [ "${TAIYI_GPU_DRY_FULL:-0}" != 1 ]; then
    echo "gpu_check: dry: would make $BENCH_FIXTURES/full-clip (TAIYI_GPU_DRY_FULL=1 makes it, ~4 GB)"; return 0
  fi
  "$PY" scripts/bench_vs_diffusers.py --make-full-clip "$BENCH_FIXTURES"
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

# The carried binaries when they start and were built from these sources against this torch (their paths
# go to $BUILD/binaries: the stage runs in a child shell); else the build stage makes them here.
binaries() {
  local why=""
  if [ "${TAIYI_GPU_BUILD:-0}" = 1 ]; then why="TAIYI_GPU_BUILD=1"
  elif [ ! -x "$DEPS/bin/taiyi" ] || [ ! -x "$DEPS/bin/taiyi_tests" ]; then why="none carried"
  elif [ "$(cat "$DEPS/bin/SOURCE")" != "$(source_hash)" ]; then why="built from other sources"
  elif [ "$(cat "$DEPS/bin/TORCH")" != "$("$PY" -c 'import torch; print(torch.__version__)')" ]; then
    why="built against torch $(cat "$DEPS/bin/TORCH")"
  elif ! "$DEPS/bin/taiyi" --version; then why="taiyi does not start"
  elif [ "$("$DEPS/bin/taiyi_tests" --gtest_list_tests --gtest_filter='Cuda*' | grep -c '^  ')" -lt "$CUDA_TESTS_MIN" ]; then
    why="taiyi_tests does not start or lists too few Cuda tests"
  fi
  if [ -z "$why" ]; then
    echo "gpu_check: using the carried binaries ($DEPS/bin, torch $(cat "$DEPS/bin/TORCH"))"
    printf '%s\n%s\n' "$DEPS/bin/taiyi" "$DEPS/bin/taiyi_tests" > "$BUILD/binaries"
    return 0
  fi
  echo "gpu_check: not using carried binaries: $why; the build stage builds them here"
}

# The CUDA suite through the gtest binary (every test's printed figures kept: max abs diff, PSNR, bench).
cuda_tests() {
  local listed
  listed=$("$TESTS" --gtest_list_tests --gtest_filter='Cuda*' | tee /dev/stderr | grep -c '^  ') || true
  [ "$listed" -ge "$CUDA_TESTS_MIN" ] || { echo "gpu_check: only $listed Cuda tests listed (expected $CUDA_TESTS_MIN)"; return 1; }
  if [ "$DRY" = 1 ]; then  # CPU stand-in: the module tests that read the same references print their figures
    echo "gpu_check: dry: would run: $TESTS --gtest_filter='Cuda*'; running the CPU module tests instead"
    "$TESTS" --gtest_color=no --gtest_filter='VAE.Tiny*:UNet.Tiny*'
  else
    "$TESTS" --gtest_color=no --gtest_filter='Cuda*'
  fi
}

# taiyi against diffusers for one precision; the report grows in $OUT as each measurement ends.
vs() {  # precision
  local append=()
  [ "$1" != fp16 ] && append=(--append)
  if [ "$DRY" = 1 ]; then  # CPU stand-in: the tiny pipeline, 64x64, 2 steps
    "$PY" scripts/bench_vs_diffusers.py --cpu --taiyi "$TAIYI" --fixtures "$FIXTURES" --precisions "$1" --size 64 \
      --steps 2 --warmup 0 --repeat 1 --out "$BUILD/vs-diffusers-$1" --json "$OUT/vs_diffusers.json" "${append[@]}"
    return
  fi
  "$PY" scripts/bench_vs_diffusers.py --taiyi "$TAIYI" --fixtures "$BENCH_FIXTURES" --device cuda --precisions "$1" \
    --size "$SIZE" --steps "$VS_STEPS" --cfg-scale 7.5 --warmup 1 --repeat "$REPEAT" --one-process \
    --out "$BUILD/vs-diffusers-$1" --json "$OUT/vs_diffusers.json" "${append[@]}"
}

# taiyi bench; its --json is rewritten after each configuration.
bench() {  # precisions batch-sizes json
  if [ "$DRY" = 1 ]; then  # CPU stand-in: the tiny pipeline
    "$TAIYI" bench --model "$FIXTURES/tiny-clip" --device cpu --precision "$1" --batch-size "$2" --resolution 64 \
      --steps 2 --warmup 0 --repeat 1 --json "$3"
    return
  fi
  "$TAIYI" bench --model "$BENCH_FIXTURES/full-clip" --device cuda --precision "$1" --batch-size "$2" \
    --resolution "$SIZE" --steps "$BENCH_STEPS" --warmup 1 --repeat "$REPEAT" --json "$3"
}

mkdir -p "$BUILD"
rm -f "$BUILD/binaries"
# Functions run by `timeout` need a shell: export what they use.
export -f wheels env_check fixtures full_pipeline build binaries source_hash pipelines_hash cuda_tests vs bench cuda
export PY DRY BUILD FIXTURES BENCH_FIXTURES DEPS SIZE VS_STEPS BENCH_STEPS REPEAT OUT SITE ROOT CUDA_TESTS_MIN
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/taiyi/ccache}
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
# The carried binaries find libtorch in this Python's torch, then CUDA's runtime beside it, then .deps/lib.
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=$TORCH_LIB:$TORCH_LIB/../../nvidia/cu13/lib:$DEPS/lib:$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cpp-httplib's pkg-config file, relocated to the unpacked package (its prefix is /usr).
export PKG_CONFIG_PATH=$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export PKG_CONFIG_SYSROOT_DIR=$DEPS

stage wheels 60 bash -c wheels > "$OUT/env.txt" 2>&1
[ -d "$SITE/diffusers" ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
stage env 45 bash -c env_check >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >&2
FIXTURES_PID="" FULL_PID=""
if selected fixtures-wait || selected tests; then start_job fixtures "$BUILD/fixtures.log" fixtures; FIXTURES_PID=$JOB_PID; fi
if selected full-wait || selected vs-fp16 || selected bench-fp16 || selected vs-fp32 || selected bench-more; then
  start_job full-pipeline "$BUILD/full-pipeline.log" full_pipeline; FULL_PID=$JOB_PID
fi
stage binaries 30 bash -c binaries > "$OUT/build.log" 2>&1
if ! [ -s "$BUILD/binaries" ]; then
  stage build 240 bash -c build >> "$OUT/build.log" 2>&1
  [ -x "$BUILD/taiyi" ] && [ -x "$BUILD/tests/taiyi_tests" ] &&
    printf '%s\n%s\n' "$BUILD/taiyi" "$BUILD/tests/taiyi_tests" > "$BUILD/binaries"
fi
tail -n 5 "$OUT/build.log" >&2
TAIYI=$(sed -n 1p "$BUILD/binaries" 2>/dev/null)
TESTS=$(sed -n 2p "$BUILD/binaries" 2>/dev/null)
[ -n "$TAIYI" ] && stamp "binaries: $TAIYI, $TESTS" || { stamp "no binaries: the tests and measurements cannot run"; TAIYI=/nonexistent TESTS=/nonexistent; }
# The tests find the binary and the sources through these (the compiled-in paths are the build machine's).
export TAIYI TESTS TAIYI_BINARY=$TAIYI TAIYI_SOURCE_DIR=$ROOT TAIYI_FIXTURES=$FIXTURES

[ -n "$FIXTURES_PID" ] && selected fixtures-wait && wait_job fixtures-wait 150 "$FIXTURES_PID" fixtures "$BUILD/fixtures.log"
stage tests 150 bash -c cuda_tests > "$OUT/tests.log" 2>&1
grep -E "max abs diff|PSNR|within|cuda bench|^\[ +(PASSED|FAILED|OK) |tests? ran|listed|dry" "$OUT/tests.log" |
  tail -n 60 >> "$OUT/summary.txt"
[ -n "$FULL_PID" ] && selected full-wait && wait_job full-wait 90 "$FULL_PID" full-pipeline "$BUILD/full-pipeline.log"
stage vs-fp16 150 bash -c "vs fp16" >> "$OUT/measure.log" 2>&1
stage bench-fp16 75 bash -c "bench fp16 1,4 '$OUT/bench.json'" >> "$OUT/measure.log" 2>&1
stage vs-fp32 150 bash -c "vs fp32" >> "$OUT/measure.log" 2>&1
stage bench-more 75 bash -c "bench bf16,fp32 1 '$OUT/bench_more.json'" >> "$OUT/measure.log" 2>&1
# The measured figures into the summary: the vs tables and the bench rows (also in the JSON files).
grep -E "^\[|taiyi/diffusers|taiyi vs diffusers|images|simulated|would run" "$OUT/measure.log" |
  grep -v '^gpu_check: \[' | tail -n 60 >> "$OUT/summary.txt"
for f in bench.json bench_more.json; do
  [ -f "$OUT/$f" ] && "$PY" - "$OUT/$f" >> "$OUT/summary.txt" 2>/dev/null <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc.get("results", []):
    print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {r.get('precision')} batch {r.get('batch_size')}: "
          f"{r.get('run_s', 0):.3f} s per run, {r.get('it_per_s', 0):.2f} it/s, peak GPU {r.get('peak_gpu_mb') or 0:.0f} MB")
EOF
done
[ -f "$OUT/vs_diffusers.json" ] && "$PY" - "$OUT/vs_diffusers.json" >> "$OUT/summary.txt" 2>/dev/null <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
for p, r in doc.get("results", {}).items():
    q = r.get("ratios", {})
    print(f"vs_diffusers.json: {p}: " + ("INCOMPLETE " if r.get("incomplete") else "") +
          f"generate taiyi/diffusers {q.get('generate_s')}, first image {q.get('first_image_s')}, "
          f"peak GPU {q.get('peak_gpu_mb')}, image {r.get('image', {}).get('psnr_db')} dB")
EOF
exit 0

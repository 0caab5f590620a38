#!/usr/bin/env bash
# The GPU benchmark in one command, for a machine with a CUDA GPU, PyTorch in /opt/torch/.venv,
# CMake and a C++ compiler, and no network (the lent H100/H200 machine):
#
#   scripts/gpu_bench.sh --prepare        here, with network: fills .deps/ (ignored by git) with the
#                                         Debian C++ header packages (dpkg -x) and the Python wheels
#                                         that machine lacks (diffusers, transformers 4.57, ...)
#   scripts/gpu_bench.sh [STAGE...]       there (the device tool: carry ".deps"); stages, in order:
#       build   taiyi and its tests against that machine's torch, into build-gpu/
#       tests   the CUDA-labelled tests (ctest -L cuda; `scripts/test.sh` leaves them out), which
#               first make the tiny fixtures and references (TAIYI_GPU_TESTS=all: every test but
#               the full-size ones)
#       vs      scripts/bench_vs_diffusers.py: fp16 and fp32, 512x512, 50 PNDM steps, CFG 7.5,
#               batch 1, on the full-size random pipeline (the real Taiyi configs)
#       bench   taiyi bench: fp16 and fp32, batch 1 and 4, 512x512, 50 steps
#     default: build tests vs bench. Logs and JSON go to $OUT (default ./gpu-out): env.txt,
#     build.log, tests.log, vs_diffusers.log, vs_diffusers.json, bench.log, bench.json, images.tar
#     (the device tool brings back at most 8 files). A stage list runs just those, e.g. `build vs`,
#     for calls that must each stay under the tool's 10 minutes (build-gpu/ stays while warm).
#
# Knobs: TAIYI_GPU_PYTHON (default /opt/torch/.venv/bin/python), TAIYI_BENCH_REPEAT (3),
# TAIYI_BENCH_BATCHES (1,4), TAIYI_BENCH_STEPS (50), TAIYI_BENCH_SIZE (512).
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
    [ -f "$DEPS/$f" ] || { echo "gpu_bench: --prepare: $DEPS/$f missing" >&2; exit 1; }
  done
  echo "gpu_bench: prepared $DEPS ($(du -sh "$DEPS" | cut -f1)): $(ls "$DEPS/wheels" | tr '\n' ' ')" >&2
  echo "gpu_bench: on the GPU machine: run bash scripts/gpu_bench.sh with carry [\".deps\"]" >&2
}

if [ "${1:-}" = "--prepare" ]; then
  prepare
  exit 0
fi

[ -d "$DEPS/wheels" ] && [ -d "$DEPS/usr/include" ] ||
  { echo "gpu_bench: $DEPS is missing: run scripts/gpu_bench.sh --prepare where there is network, and carry .deps" >&2; exit 1; }
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
PY=${TAIYI_GPU_PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
BUILD=$ROOT/build-gpu
FIXTURES=$BUILD/bench-fixtures
REPEAT=${TAIYI_BENCH_REPEAT:-3}
STEPS=${TAIYI_BENCH_STEPS:-50}
SIZE=${TAIYI_BENCH_SIZE:-512}
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(build tests vs bench)
export PYTHONUNBUFFERED=1
T0=$(date +%s)
TESTS_FAILED=0
stamp() { echo "gpu_bench: [$(( $(date +%s) - T0 )) s] $*" >&2; }

# The carried wheels take precedence over the image's packages (PYTHONPATH comes before site-packages).
SITE=/tmp/taiyi-gpu-site
if [ ! -d "$SITE/diffusers" ]; then
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$DEPS"/wheels/*.whl
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}

{
  date -u
  nvidia-smi || true
  "$PY" - <<'EOF'
import sys, torch, diffusers, transformers, huggingface_hub, tokenizers
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "diffusers", diffusers.__version__, "transformers", transformers.__version__,
      "huggingface_hub", huggingface_hub.__version__, "tokenizers", tokenizers.__version__)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
EOF
  echo "nproc $(nproc)"; free -g | head -2; c++ --version | head -1; cmake --version | head -1
} > "$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt" >&2; exit 1; }
cat "$OUT/env.txt" >&2

build() {
  stamp "build"
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
    -DTAIYI_FULL_TESTS=OFF
  cmake --build "$BUILD" -j "$(nproc)"
  stamp "build done"
}

vs() {
  stamp "taiyi vs diffusers"
  "$PY" scripts/bench_vs_diffusers.py --taiyi "$BUILD/taiyi" --fixtures "$FIXTURES" --device cuda \
    --precisions fp16,fp32 --size "$SIZE" --steps "$STEPS" --cfg-scale 7.5 --repeat "$REPEAT" \
    --out "$BUILD/vs-diffusers" 2>&1 | tee "$OUT/vs_diffusers.log"
  cp "$BUILD/vs-diffusers/vs_diffusers.json" "$OUT/"
  tar -C "$BUILD/vs-diffusers" -cf "$OUT/images.tar" $(cd "$BUILD/vs-diffusers" && ls ./*.png)
  stamp "vs done"
}

bench() {
  stamp "taiyi bench"
  [ -f "$FIXTURES/full-clip/model_index.json" ] ||
    "$PY" scripts/bench_vs_diffusers.py --make-full-clip "$FIXTURES"
  "$BUILD/taiyi" bench --model "$FIXTURES/full-clip" --device cuda --precision fp16,fp32 \
    --batch-size "${TAIYI_BENCH_BATCHES:-1,4}" --resolution "$SIZE" --steps "$STEPS" --warmup 1 --repeat "$REPEAT" \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
  stamp "bench done"
}

tests() {
  stamp "tests"
  [ -x "$BUILD/tests/taiyi_tests" ] || { echo "gpu_bench: no $BUILD/tests/taiyi_tests: run the build stage" >&2; exit 1; }
  local select=(-L cuda)
  [ "${TAIYI_GPU_TESTS:-cuda}" = all ] && select=(-LE full)
  # The fixtures (make_fixtures, a setup test) come first; its references run on this machine's CPU.
  # A failure is reported at the end; the benchmarks still run.
  if ! ctest --test-dir "$BUILD" --output-on-failure -j 4 "${select[@]}" 2>&1 | tee "$OUT/tests.log"; then
    TESTS_FAILED=1
  fi
  stamp "tests done"
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    build) build 2>&1 | tee "$OUT/build.log" | tail -n 30 ;;
    vs) vs ;;
    bench) bench ;;
    tests) tests ;;
    *) echo "gpu_bench: unknown stage '$stage' (build, vs, bench, tests, or --prepare)" >&2; exit 2 ;;
  esac
done
stamp "all done; outputs in $OUT"
if [ "$TESTS_FAILED" = 1 ]; then
  echo "gpu_bench: tests FAILED (see $OUT/tests.log)" >&2
  exit 1
fi

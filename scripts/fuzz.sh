#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz: the parsers of outside input, with ASan + UBSan, no libtorch)
# with clang into ${TAIYI_FUZZ_BUILD:-build-fuzz} and runs each for SECONDS (default 30), one after the
# other, from seeds made of the test fixtures (tools/fuzz_seeds.py; ${TAIYI_FIXTURES:-build/fixtures},
# which scripts/test.sh makes) and the kept crash inputs (tests/data/fuzz/<target>/). The corpus grows
# in build-fuzz/corpus/<target> across runs. Prints a line per target: executions, coverage, corpus;
# a crash leaves its input in build-fuzz/artifacts/<target>/ and fails the script (add the input to
# tests/data/fuzz/<target>/ with the fix: the unit tests replay it).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
shift || true
BUILD=${TAIYI_FUZZ_BUILD:-build-fuzz}
FIXTURES=${TAIYI_FIXTURES:-build/fixtures}
ALL=(safetensors_header config_json clip_tokenizer bert_tokenizer prompt_syntax prompt_file image lora_keys embedding torch_zip torch_pickle
  ldm_keys base64)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

if [ ! -f "$FIXTURES/tiny-clip/tokenizer/vocab.json" ] || [ ! -f "$FIXTURES/tiny-bert/tokenizer/vocab.txt" ]; then
  echo "fuzz: no fixtures in $FIXTURES (the tokenizer targets load theirs): run scripts/test.sh first, or set TAIYI_FIXTURES" >&2
  exit 2
fi
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/taiyi/ccache}
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
CC=clang CXX=clang++ cmake -S tests/fuzz -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"
rm -rf "$BUILD/seeds"
python3 tools/fuzz_seeds.py "$FIXTURES" "$BUILD/seeds"

export TAIYI_FIXTURES="$FIXTURES"
# Leaks are reported too (detect_leaks); a crash stops the target at once.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
printf "%-20s %10s %8s %8s %12s %s\n" target executions cov ft corpus result
for t in "${TARGETS[@]}"; do
  corpus="$BUILD/corpus/$t" artifacts="$BUILD/artifacts/$t/" log="$BUILD/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$BUILD/logs" "$BUILD/seeds/$t"
  inputs=("$corpus" "$BUILD/seeds/$t")
  [ -d "tests/data/fuzz/$t" ] && inputs+=("tests/data/fuzz/$t")
  # Each input at most 64 KiB and 10 s, 2 GB of memory in all: over any of these is a finding.
  set +e
  "$BUILD/fuzz_$t" -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="$artifacts" "${inputs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  stats=$(grep -E '^#[0-9]+' "$log" | tail -1)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$stats")
  ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$stats")
  corp=$(sed -nE 's/.*corp: ([0-9]+\/[0-9a-zA-Z]+).*/\1/p' <<<"$stats")
  if [ $rc -eq 0 ]; then result=ok; else result="FAILED (rc $rc, see $log; input in $artifacts)"; failed+=("$t"); fi
  printf "%-20s %10s %8s %8s %12s %s\n" "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) found a problem: ${failed[*]}" >&2
  for t in "${failed[@]}"; do grep -m3 -E 'ERROR|runtime error|SUMMARY' "$BUILD/logs/$t.log" >&2 || true; done
  exit 1
fi

#!/usr/bin/env bash
# The working-memory estimate that taiyi validates each batch against (Pipeline::working_memory) next to
# the peak memory a run really takes, on the CPU: one image, one step, at each size, one run after the
# other. The growth of the peak over the smallest size's (the weights and libtorch) is what the estimate
# must cover.
#   scripts/memory_estimate.sh [MODEL] [SIZES...]     default: build/fixtures/full-clip (the real configs), 64 256 384 512
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-build/fixtures/full-clip}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(64 256 384 512)
BIN=${TAIYI_BIN:-build/taiyi}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf "%-10s %14s %16s %18s\n" size "peak RSS (GB)" "growth (GB)" "estimate (GB)"
base=""
for s in "${SIZES[@]}"; do
  /usr/bin/time -f "%M" -o "$out/rss" "$BIN" "a cat" --model "$MODEL" --steps 1 -W "$s" -H "$s" --seed 1 --device cpu \
    -o "$out/$s.png" 2>"$out/err" >/dev/null
  rss_kb=$(tail -1 "$out/rss")
  estimate=$(sed -nE 's/.*needs about ([0-9.]+) GB of working memory.*/\1/p' "$out/err")
  rss=$(awk -v k="$rss_kb" 'BEGIN{printf "%.2f", k/1048576*1.073741824}')
  [ -n "$base" ] || base=$rss
  growth=$(awk -v a="$rss" -v b="$base" 'BEGIN{printf "%.2f", a-b}')
  printf "%-10s %14s %16s %18s\n" "${s}x${s}" "$rss" "$growth" "${estimate:-?}"
done

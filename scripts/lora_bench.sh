#!/usr/bin/env bash
# What LoRAs cost, measured on the full-size random-weight model of the fixtures (make_fixtures.py --full
# writes full-clip/ and loras/full-rank32.safetensors, a rank-32 LoRA of every attention, feed-forward and
# projection weight of the UNet). Runs, alternating, REPEAT times each (medians printed):
#   plain        a prompt file of 6 lines without LoRA
#   alternating  the same 6 lines alternating <lora:full-rank32:0.9>, none, <lora:full-rank32:0.5>
#                (taiyi groups them into 3 sets: 2 merges, and un-merging between)
# Figures: wall time, maximum resident memory (/usr/bin/time), and taiyi's own LoRA time per merge.
# The images are 64x64 with 1 step, so that the LoRA work is not hidden behind denoising.
#   scripts/lora_bench.sh [FIXTURES (default build/fixtures)] [REPEAT (default 3)] [taiyi args...]
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=${1:-build/fixtures}
REPEAT=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
TAIYI=${TAIYI:-build/taiyi}
for need in "$FIXTURES/full-clip/model_index.json" "$FIXTURES/loras/full-rank32.safetensors" "$TAIYI"; do
  [[ -e $need ]] || { echo "lora_bench.sh: $need is missing (build, then tools/make_fixtures.py $FIXTURES --full)" >&2; exit 2; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
prompts=("a lighthouse" "一只猫" "a boat at dusk" "山水画" "a red chair" "星空")
tags=("<lora:full-rank32:0.9>" "" "<lora:full-rank32:0.5>")
: > "$WORK/plain.txt"
: > "$WORK/alternating.txt"
for i in "${!prompts[@]}"; do
  echo "${prompts[$i]}" >> "$WORK/plain.txt"
  echo "${prompts[$i]} ${tags[$((i % 3))]}" >> "$WORK/alternating.txt"
done
run() {  # kind, round, taiyi args -> "wall_s rss_mb lora_s merges"
  local kind=$1 out="$WORK/out-$1-$2"
  shift 2
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$TAIYI" --prompts "$WORK/$kind.txt" -o "$out/" --model "$FIXTURES/full-clip" \
    --lora-dir "$FIXTURES/loras" --steps 1 -W 64 -H 64 --seed 1 --device cpu "$@" 2> "$WORK/log" || { cat "$WORK/log" >&2; exit 1; }
  read -r wall rss < "$WORK/time"
  local lora merges
  lora=$(sed -n 's/.*merged \([0-9]*\) time(s), \([0-9.]*\)s in all.*/\2/p' "$WORK/log")
  merges=$(sed -n 's/.*merged \([0-9]*\) time(s).*/\1/p' "$WORK/log")
  echo "$wall $((rss / 1024)) ${lora:-0} ${merges:-0}"
}
results="$WORK/results"
for round in $(seq 1 "$REPEAT"); do
  for kind in plain alternating; do
    echo "$kind $(run "$kind" "$round" "$@")" >> "$results"
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for kind in ("plain", "alternating"):
    r = [list(map(float, row[1:])) for row in rows if row[0] == kind]
    wall, rss, lora, merges = (statistics.median(c) for c in zip(*r))
    per = f", LoRA {lora:.2f} s for {merges:.0f} merges ({lora / merges:.2f} s each, un-merging included)" if merges else ""
    print(f"{kind:12s} median of {len(r)}: wall {wall:.2f} s, max RSS {rss:.0f} MB{per}")
PY

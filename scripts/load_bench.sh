#!/usr/bin/env bash
# Load time and peak memory of one model in several forms, side by side (issue 26: the full-size random
# pipeline as a .bin folder, a single .safetensors, a .ckpt, and the folder `taiyi convert` made):
#
#   scripts/load_bench.sh [-n RUNS] [--precision P] FORM...       FORM: a model path, or PATH@PRECISION
#
# Each run is a separate process: `taiyi -m FORM "prompt" -W 64 -H 64 --steps 1 --precision P`, so every
# weight is read once (mapped weights are faulted in by the first UNet and VAE calls, not by the load).
# Per form, the medians over RUNS (default 3) of: taiyi's own "load" time, the process's wall time (load +
# one small image) and its peak RSS (/usr/bin/time). The first run of a form may read from disk, the others
# from the page cache: the medians are warm-cache figures.
set -euo pipefail
cd "$(dirname "$0")/.."
TAIYI=${TAIYI:-build/taiyi}
RUNS=3
PRECISION=fp32
FORMS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) RUNS=$2; shift 2 ;;
    --precision) PRECISION=$2; shift 2 ;;
    *) FORMS+=("$1"); shift ;;
  esac
done
[ ${#FORMS[@]} -gt 0 ] || { echo "usage: $0 [-n RUNS] [--precision P] FORM[@PRECISION]..." >&2; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
printf "%-60s %-9s %8s %8s %9s\n" form precision load_s wall_s peak_GiB
for form in "${FORMS[@]}"; do
  model=${form%@*}
  precision=$PRECISION
  [ "$form" != "$model" ] && precision=${form##*@}
  : >"$TMP/load"; : >"$TMP/wall"; : >"$TMP/rss"
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f "%e %M" -o "$TMP/time" "$TAIYI" -m "$model" "a photo of a cat" -W 64 -H 64 --steps 1 \
      --precision "$precision" --device cpu -o "$TMP/x.png" --overwrite 2>"$TMP/err" >/dev/null ||
      { cat "$TMP/err" >&2; exit 1; }
    sed -n 's/.* load \([0-9.]*\)s,.*/\1/p' "$TMP/err" >>"$TMP/load"
    awk '{print $1}' "$TMP/time" >>"$TMP/wall"
    awk '{print $2 / 1024 / 1024}' "$TMP/time" >>"$TMP/rss"
  done
  printf "%-60s %-9s %8.2f %8.2f %9.2f\n" "$model" "$precision" "$(median <"$TMP/load")" "$(median <"$TMP/wall")" \
    "$(median <"$TMP/rss")"
done

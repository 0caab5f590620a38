#!/usr/bin/env bash
# Peak RSS and time of a VAE decode with and without tiling (--vae-tiling on / off), on the CPU, random
# weights: `taiyi bench --decode-only`, one process per run, so that each peak is its own. The growth of
# the peak over a 64x64 decode (the weights and libtorch) is what Pipeline::working_memory must cover; the
# estimate column is its VAE part (the memory check's message at --vae-tiling off, else computed the same way).
#   scripts/vae_tiling_bench.sh [MODEL] [SIZES...]   default MODEL: build/fixtures/full-clip (the real configs);
#                                                     default SIZES: 1024 2048
# Without full-clip, a folder is made from build/fixtures/tiny-clip with the SD 1.x VAE config
# (vae/config.json of Taiyi / SD 1.5): only the VAE runs, so the tiny UNet and text encoder do not matter.
# An untiled size whose estimate exceeds the free memory is skipped (the memory check would refuse it), unless
# TAIYI_BENCH_UNTILED=1 (the estimate is conservative: the untiled peak measured is about 2/3 of it).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-build/fixtures/full-clip}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1024 2048)
BIN=${TAIYI_BIN:-build/taiyi}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if [ ! -d "$MODEL" ]; then
  tiny=${TAIYI_FIXTURES:-build/fixtures}/tiny-clip
  [ -d "$tiny" ] || { echo "vae_tiling_bench: neither $MODEL nor $tiny exists (tools/make_fixtures.py makes them)" >&2; exit 1; }
  mkdir -p "$out/model"
  cp -r "$tiny"/. "$out/model/"
  cat >"$out/model/vae/config.json" <<'EOF'
{"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
 "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
 "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
 "sample_size": 512, "scaling_factor": 0.18215,
 "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}
EOF
  MODEL=$out/model
  echo "vae_tiling_bench: $MODEL: tiny-clip with the SD 1.x VAE config" >&2
fi
available_gb=$(awk '/MemAvailable/ {printf "%.1f", $2 * 1024 / 1e9}' /proc/meminfo)

run() {  # size tiling -> "rss_gb decode_s"
  /usr/bin/time -f "%M" -o "$out/rss" "$BIN" bench --model "$MODEL" --random-weights --device cpu --precision fp32 \
    --decode-only --warmup 0 --repeat 1 --resolution "$1" --vae-tiling "$2" --json "$out/bench.json" \
    >/dev/null 2>"$out/err" || { echo "? ?"; return; }
  awk -v k="$(tail -1 "$out/rss")" 'BEGIN{printf "%.2f ", k * 1024 / 1e9}'
  sed -nE 's/.*"decode_s": ([0-9.e+-]+).*/\1/p' "$out/bench.json" | head -1
}

printf "%-10s %-7s %14s %12s %10s\n" size tiling "peak RSS (GB)" "growth (GB)" "decode s"
read -r base _ < <(run 64 off)
printf "%-10s %-7s %14s %12s %10s\n" 64x64 off "$base" 0 -
for s in "${SIZES[@]}"; do
  for tiling in on off; do
    if [ "$tiling" = off ]; then
      # The untiled decode's estimate (4 bytes x 6 live copies x 256 values a pixel for SD 1.x) against the free memory.
      need=$(awk -v s="$s" 'BEGIN{printf "%.1f", 4 * 6 * 256 * s * s / 1e9}')
      if [ "${TAIYI_BENCH_UNTILED:-0}" != 1 ] && awk -v n="$need" -v a="$available_gb" 'BEGIN{exit !(n > a)}'; then
        printf "%-10s %-7s %14s %12s %10s\n" "${s}x${s}" off "skipped: needs about $need GB, $available_gb GB free" "" ""
        continue
      fi
    fi
    read -r rss secs < <(run "$s" "$tiling")
    growth=$(awk -v a="$rss" -v b="$base" 'BEGIN{printf "%.2f", a - b}')
    printf "%-10s %-7s %14s %12s %10s\n" "${s}x${s}" "$tiling" "$rss" "$growth" "$secs"
  done
done

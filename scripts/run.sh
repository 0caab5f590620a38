#!/usr/bin/env bash
# The main job from nothing: set up, build, and generate one image.
#   bash scripts/run.sh ["prompt"] [more taiyi options]
# Uses the model in $TAIYI_MODEL (default ~/.cache/taiyi/models/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1)
# when it exists; otherwise a tiny random-weight pipeline made by the test harness, whose picture is
# noise: see the README ("Getting the real model") for the real weights (a hub snapshot, or a single
# .ckpt / .safetensors file, used as downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
TAIYI_VENV=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}
BUILD=${TAIYI_BUILD:-build}
MODEL=${TAIYI_MODEL:-$HOME/.cache/taiyi/models/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1}
# A diffusers folder, or a single-file checkpoint used as downloaded.
if [ ! -f "$MODEL/model_index.json" ] && [ ! -f "$MODEL" ]; then
  MODEL="$BUILD/demo-model/tiny-clip"
  if [ ! -f "$MODEL/model_index.json" ]; then
    "$TAIYI_VENV/bin/python" tools/make_fixtures.py "$BUILD/demo-model" --pipelines-only 2>/dev/null
  fi
  echo "run: no real model found (set TAIYI_MODEL or see README 'Getting the real model');" >&2
  echo "run: using the bundled tiny random-weight model: the picture will be noise." >&2
  # A quick first run: 128x128, "Euler a" in 12 steps (12 UNet calls, a second or two on 2 cores) instead of
  # the folder's PLMS in 50 (51 calls); options given after the prompt still win.
  set -- "${1:-小桥流水人家，Van Gogh style}" -W 128 -H 128 --sampler "Euler a" --steps 12 "${@:2}"
else
  set -- "${1:-小桥流水人家，Van Gogh style}" "${@:2}"
fi
exec "$BUILD/taiyi" --model "$MODEL" -o "${TAIYI_OUTPUT:-out.png}" --overwrite "$@"

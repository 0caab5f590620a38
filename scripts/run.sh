#!/usr/bin/env bash
# The main job from nothing: set up, build, and generate one image.
#   bash scripts/run.sh ["prompt"] [more taiyi options]
# Uses the model in $TAIYI_MODEL (default ~/.cache/taiyi/models/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1)
# when it exists; otherwise a tiny random-weight pipeline made by the test harness, whose picture is
# noise: see the README ("Getting the real model") for converting the real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
TAIYI_VENV=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}
BUILD=${TAIYI_BUILD:-build}
MODEL=${TAIYI_MODEL:-$HOME/.cache/taiyi/models/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1}
if [ ! -f "$MODEL/model_index.json" ]; then
  MODEL="$BUILD/demo-model/tiny-clip"
  if [ ! -f "$MODEL/model_index.json" ]; then
    "$TAIYI_VENV/bin/python" tools/make_fixtures.py "$BUILD/demo-model" --pipelines-only 2>/dev/null
  fi
  echo "run: no real model found (set TAIYI_MODEL or see README 'Getting the real model');" >&2
  echo "run: using the bundled tiny random-weight model: the picture will be noise." >&2
  set -- "${1:-小桥流水人家，Van Gogh style}" -W 256 -H 256 "${@:2}"
else
  set -- "${1:-小桥流水人家，Van Gogh style}" "${@:2}"
fi
exec "$BUILD/taiyi" --model "$MODEL" -o "${TAIYI_OUTPUT:-out.png}" --overwrite "$@"

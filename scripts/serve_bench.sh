#!/usr/bin/env bash
# The overhead of `taiyi serve` per image against the CLI on the same model, and the cost of live previews
# per step (issue 27). Runs scripts/serve_bench.py (Python driver; medians of alternating runs):
#
#   scripts/serve_bench.sh [-m MODEL] [--steps K] [--size PX] [--runs N] [--preview-steps K] [--device D] [--taesd W]
#
# MODEL defaults to the tiny fixture model (build/fixtures/tiny-clip): its generation is a few ms, so the
# server's own cost stands out. TAIYI (default build/taiyi) is the binary; OMP_NUM_THREADS defaults to 1
# on CPU, as in the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export TAIYI_BINARY=${TAIYI:-build/taiyi}
export TAIYI_FIXTURES=${TAIYI_FIXTURES:-build/fixtures}
PY=${TAIYI_PYTHON:-$HOME/.cache/taiyi/venv/bin/python}
MODEL=$TAIYI_FIXTURES/tiny-clip
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -m|--model) MODEL=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
# The servers run in a temporary folder: every path absolute.
export TAIYI_BINARY=$(realpath "$TAIYI_BINARY") TAIYI_FIXTURES=$(realpath "$TAIYI_FIXTURES")
exec "$PY" scripts/serve_bench.py --model "$(realpath "$MODEL")" "${ARGS[@]}"

#!/usr/bin/env bash
# Idempotent set-up of everything taiyi needs on Debian 12:
#   - Debian packages: compilers (clang for the fuzz targets), CMake, ccache and the C++ libraries (CLI11,
#     nlohmann_json, stb, libjpeg-turbo);
#   - a Python virtualenv outside the checkout (default ~/.cache/taiyi/venv, override with TAIYI_VENV)
#     holding pinned torch (its bundled libtorch is what CMake links), diffusers, transformers, safetensors,
#     numpy, scipy (diffusers' LMSDiscreteScheduler needs it), Pillow (the img2img references) and peft
#     (diffusers' load_lora_weights needs it; 0.18 works with these pins):
#     the converter and the reference fixtures run in it; the taiyi binary never does.
# Prints nothing but progress; re-running it when everything is present takes about a second.
set -euo pipefail

TAIYI_VENV=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}
# One set of versions for everyone: torch 2.11 is the version on the GPU machine, so one libtorch API.
# transformers 4.57 keeps the slow CLIPTokenizer/BertTokenizer that diffusers' pipeline loads
# (transformers 5 replaced them); diffusers 0.37.1 is the newest release that accepts it.
PY_PINS=(torch==2.11.0 diffusers==0.37.1 transformers==4.57.3 safetensors==0.7.0 numpy==2.3.5
         huggingface-hub==0.36.0 accelerate==1.12.0 scipy==1.16.3 pillow==13.0.0
         peft==0.18.0
         playwright==1.65.3)  # tests/server/test_page.py drives Debian's chromium with it
APT_PKGS=(build-essential cmake ninja-build ccache pkg-config python3-venv python3-pip
          libcli11-dev nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev libcpp-httplib-dev libgtest-dev
          clang libclang-rt-14-dev  # clang and its libFuzzer/ASan runtimes: scripts/fuzz.sh
          chromium fonts-wqy-microhei)  # the web page's browser test, and CJK glyphs for its screenshot

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$TAIYI_VENV/.taiyi-pins"
PY_PINS+=(webuiapi==0.9.17)  # the real web UI API client of tests/server/test_webuiapi.py
want="${PY_PINS[*]}"
if [ ! -x "$TAIYI_VENV/bin/python" ]; then
  echo "setup: creating virtualenv $TAIYI_VENV" >&2
  mkdir -p "$(dirname "$TAIYI_VENV")"
  python3 -m venv "$TAIYI_VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into $TAIYI_VENV (torch is large: a few minutes)" >&2
  "$TAIYI_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$TAIYI_VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PINS[@]}"
  echo "$want" > "$stamp"
fi
echo "setup: ok (venv $TAIYI_VENV)" >&2

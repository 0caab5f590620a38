#!/usr/bin/env bash
# Shows that reading a .ckpt costs its model weights in memory, not the file's size (issue 26): writes, into
# a temporary folder, a Lightning-like checkpoint (torch.save) holding a small model state dict and about
# OPTIMIZER_GB of optimizer state in a few big tensors, reads it with read_torch_checkpoint (a small program
# built here from src/loaders/torch_{checkpoint,pickle,zip}.cpp against the venv's libtorch), touches every
# weight (a float64 sum, compared with Python's), and prints peak RSS against the weights' size. The file is
# deleted afterwards.
#   scripts/checkpoint_memory.sh [OPTIMIZER_GB (8)] [WEIGHTS_MB (256)]
set -euo pipefail
cd "$(dirname "$0")/.."
OPTIMIZER_GB=${1:-8}
WEIGHTS_MB=${2:-256}
PY=${TAIYI_VENV:-$HOME/.cache/taiyi/venv}/bin/python
TORCH=$("$PY" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/taiyi-ckpt-memory.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/read.cpp" <<'EOF'
// Reads a checkpoint with read_torch_checkpoint, sums every tensor (reading all its bytes), prints peak RSS.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>

#include <torch/torch.h>

#include "taiyi/loaders/torch_checkpoint.h"
#include "taiyi/utils/error.h"

static double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

int main(int, char** argv) {
  torch::ones({1}).sum();  // libtorch's own start-up memory, before the checkpoint
  const double baseline = peak_rss_mb();
  const auto start = std::chrono::steady_clock::now();
  try {
    const taiyi::TorchCheckpoint ckpt = taiyi::read_torch_checkpoint(argv[1]);
    double sum = 0, bytes = 0;
    for (const auto& [name, tensor] : ckpt.tensors) {
      sum += tensor.to(torch::kDouble).sum().item<double>();
      bytes += static_cast<double>(tensor.nbytes());
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("tensors %zu, skipped %zu keys, weights %.1f MB, sum %.6e, read and summed in %.2f s\n",
                ckpt.tensors.size(), ckpt.skipped.size(), bytes / 1048576.0, sum, seconds);
    std::printf("peak RSS %.1f MB (libtorch alone %.1f MB)\n", peak_rss_mb(), baseline);
  } catch (const taiyi::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
EOF

echo "checkpoint_memory: building the reader" >&2
nice -n 10 g++ -std=c++17 -O2 -Iinclude -isystem "$TORCH/include" -isystem "$TORCH/include/torch/csrc/api/include" \
  "$WORK/read.cpp" src/loaders/torch_checkpoint.cpp src/loaders/torch_pickle.cpp src/loaders/torch_zip.cpp src/utils/error.cpp \
  -o "$WORK/read" -L"$TORCH/lib" -Wl,-rpath,"$TORCH/lib" -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 -Wl,--as-needed

echo "checkpoint_memory: writing $WORK/padded.ckpt" >&2
"$PY" - "$WORK/padded.ckpt" "$OPTIMIZER_GB" "$WEIGHTS_MB" <<'EOF'
import sys

import torch

path, optimizer_gb, weights_mb = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
g = torch.Generator().manual_seed(0)
n = int(weights_mb * 2**20 / 4 / 8)
state_dict = {f"model.diffusion_model.block{i}.weight": torch.randn(n, generator=g) for i in range(8)}
# Optimizer state: a few 1 GiB tensors. torch.empty pages are never written, so this script stays small too.
big = [torch.empty(2**28) for _ in range(int(optimizer_gb))]
ckpt = {"epoch": 10, "global_step": 10000, "state_dict": state_dict,
        "optimizer_states": [{"state": {i: {"exp_avg": t} for i, t in enumerate(big)}, "param_groups": [{"lr": 1e-4}]}]}
torch.save(ckpt, path)
print(f"python: weights sum {sum(t.double().sum().item() for t in state_dict.values()):.6e}")
EOF
ls -l "$WORK/padded.ckpt" | awk '{printf "file %.1f MB\n", $5 / 1048576}'
/usr/bin/time -f "time: max RSS %M KB, %e s elapsed" "$WORK/read" "$WORK/padded.ckpt"

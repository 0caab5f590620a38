// Devices, precisions and CUDA's numerics flags in one place, so that every CUDA-only call
// (allocator statistics, cache release, device properties) runs after CUDA is initialised:
// resolve_device() initialises the device it returns, and the helpers below take that device.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

namespace taiyi {

// Resolves "auto"/"cpu"/"cuda"/"cuda:N" to a device; Error when CUDA is asked for and absent. A CUDA
// device comes back initialised (context and caching allocator), so CUDA-only calls may follow.
torch::Device resolve_device(const std::string& device);
// Resolves "auto" (fp16 on CUDA, fp32 on CPU) / "fp16" / "fp32" / "bf16" for a device; Error for bf16 on
// a GPU older than Ampere, which has no bf16 tensor cores.
torch::Dtype resolve_precision(const std::string& precision, const torch::Device& device);
std::string precision_name(torch::Dtype dtype);  // "fp16", "fp32", "bf16"
// bf16 on the CPU always; on CUDA from compute capability 8.0 (Ampere).
bool supports_bf16(const torch::Device& device);

// How fp32 math may round on CUDA. PyTorch's defaults, which diffusers runs with, are kDefault:
// cuDNN convolutions may use TF32, matmuls may not (torch.backends.cudnn.allow_tf32 = True,
// torch.backends.cuda.matmul.allow_tf32 = False).
enum class Tf32Mode { kDefault, kOn /* matmuls too (--tf32) */, kOff /* strict IEEE fp32 (--no-tf32) */ };

struct Numerics {  // what is in force on a device, for the outputs' records
  bool tf32_matmul = false;
  bool tf32_conv = false;
  bool cudnn_benchmark = false;
  bool cuda = false;
  std::string describe() const;  // e.g. "TF32 conv, IEEE matmul"; "" on the CPU
  nlohmann::json to_json() const;
};

// Sets PyTorch's global TF32 and cuDNN-benchmark flags for a CUDA device (nothing on the CPU) and
// returns what is then in force. cuDNN's benchmark mode is PyTorch's default (off) unless asked for:
// its autotuning costs more than it saves on a one-image run.
Numerics apply_numerics(const torch::Device& device, Tf32Mode tf32, bool cudnn_benchmark);
// The TF32 part of apply_numerics, which needs no GPU: sets PyTorch's process-global TF32 flags for CUDA
// matmuls (cuBLAS) and cuDNN (convolutions and RNNs), legacy and new API alike, so that every getter of
// at::Context agrees and none throws.
void set_tf32_flags(Tf32Mode tf32);

// "cuda:0 (NVIDIA H200)" or "cpu (2 threads)".
std::string describe_device(const torch::Device& device);

// The CUDA caching allocator's peak statistics and cache (nothing on the CPU; the device must have
// come from resolve_device).
// Waits for the device's queued work (CUDA; nothing on the CPU), so that a stage's time is its own.
void synchronize(const torch::Device& device);
// Seconds of wall time since `start` (stage timings).
double seconds_since(std::chrono::steady_clock::time_point start);

void reset_gpu_peak(const torch::Device& device);
std::pair<double, double> gpu_peak_mb(const torch::Device& device);  // {allocated, reserved} since reset
void release_gpu_cache(const torch::Device& device);

// Bytes a run may still allocate on a device: on CUDA the driver's free memory plus what the caching
// allocator holds unused; on the CPU the least of MemAvailable, what an address-space limit (ulimit -v)
// leaves and what a cgroup memory limit leaves. nullopt when it cannot be told.
std::optional<uint64_t> available_memory(const torch::Device& device);

}  // namespace taiyi

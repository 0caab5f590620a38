// Devices, precisions and CUDA numerics flags; see include/taiyi/utils/device.h.
#include "taiyi/utils/device.h"

#include <sys/resource.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "taiyi/utils/error.h"

// libtorch wheels built with CUDA ship these headers; a CPU-only libtorch does not, and then there
// is no GPU to ask.
#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#define TAIYI_HAS_CUDA_HEADERS 1
#else
#define TAIYI_HAS_CUDA_HEADERS 0
#endif

namespace taiyi {

namespace {

// The allocator's statistics, cache and device properties need CUDA initialised on the device:
// resetPeakStats on a fresh process throws "Invalid device argument ... did you call init?". One
// small allocation initialises the context and the caching allocator there.
void initialise_cuda(const torch::Device& device) {
  torch::empty({1}, torch::TensorOptions().device(device));
  torch::cuda::synchronize(device.index());
}

}  // namespace

torch::Device resolve_device(const std::string& device) {
  if (device == "auto") {
    if (!torch::cuda::is_available()) return torch::kCPU;
    torch::Device cuda(torch::kCUDA, 0);
    initialise_cuda(cuda);
    return cuda;
  }
  if (device == "cpu") return torch::kCPU;
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw Error("--device " + device + ": CUDA was requested but no CUDA GPU is available (use --device cpu)");
    int index = 0;
    if (device.size() > 5) {
      try {
        size_t used = 0;
        index = std::stoi(device.substr(5), &used);
        if (used != device.size() - 5 || index < 0) throw std::invalid_argument("index");
      } catch (const std::exception&) {
        throw Error("--device " + device + ": expected cuda:N with N a GPU index");
      }
    }
    if (index >= static_cast<int>(torch::cuda::device_count()))
      throw Error("--device " + device + ": only " + std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
    torch::Device cuda(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
    initialise_cuda(cuda);
    return cuda;
  }
  throw Error("--device " + device + ": expected auto, cpu, cuda or cuda:N");
}

torch::Dtype resolve_precision(const std::string& precision, const torch::Device& device) {
  if (precision == "auto") return device.is_cuda() ? torch::kHalf : torch::kFloat;
  if (precision == "fp16") return torch::kHalf;
  if (precision == "fp32") return torch::kFloat;
  if (precision == "bf16") {
    if (!supports_bf16(device))
      throw Error("--precision bf16: " + describe_device(device) +
                  " has no bf16 support; it needs Ampere (compute capability 8.0) or newer: use fp16");
    return torch::kBFloat16;
  }
  throw Error("--precision " + precision + ": expected auto, fp16, fp32 or bf16");
}

bool supports_bf16(const torch::Device& device) {
#if TAIYI_HAS_CUDA_HEADERS
  if (device.is_cuda()) {
    cudaDeviceProp properties{};
    return cudaGetDeviceProperties(&properties, device.index()) != cudaSuccess || properties.major >= 8;
  }
#endif
  (void)device;
  return true;
}

std::string precision_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kHalf: return "fp16";
    case torch::kBFloat16: return "bf16";
    case torch::kFloat: return "fp32";
    default: return c10::toString(dtype);
  }
}

std::string Numerics::describe() const {
  if (!cuda) return "";
  std::string s = tf32_matmul ? "TF32 matmul" : "IEEE matmul";
  s += tf32_conv ? ", TF32 conv" : ", IEEE conv";
  if (cudnn_benchmark) s += ", cuDNN benchmark";
  return s;
}

nlohmann::json Numerics::to_json() const {
  return {{"tf32_matmul", tf32_matmul}, {"tf32_conv", tf32_conv}, {"cudnn_benchmark", cudnn_benchmark}};
}

void set_tf32_flags(Tf32Mode tf32) {
  auto& context = at::globalContext();
  // The setters behind torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32: in
  // libtorch 2.11 each writes both the legacy flag and the fp32_precision map. Setting only the map
  // (setFloat32Precision) leaves them disagreeing, and the legacy getters then throw ("mix of legacy
  // and new APIs"): allowTF32CuBLAS() and float32MatmulPrecision() after TF32 matmuls, allowTF32CuDNN()
  // after IEEE convolutions (conv changed, rnn not). setAllowTF32CuBLAS rather than
  // setFloat32MatmulPrecision("high"), which also sets oneDNN's CPU matmuls to TF32.
  context.setAllowTF32CuBLAS(tf32 == Tf32Mode::kOn);
  context.setAllowTF32CuDNN(tf32 != Tf32Mode::kOff);
}

Numerics apply_numerics(const torch::Device& device, Tf32Mode tf32, bool cudnn_benchmark) {
  Numerics n;
  if (!device.is_cuda()) return n;
  set_tf32_flags(tf32);
  auto& context = at::globalContext();
  context.setBenchmarkCuDNN(cudnn_benchmark);
  n.cuda = true;
  // The per-operation precisions, which is what libtorch's GEMMs and convolutions consult.
  using at::Float32Backend;
  using at::Float32Op;
  using at::Float32Precision;
  n.tf32_matmul = context.float32Precision(Float32Backend::CUDA, Float32Op::MATMUL) == Float32Precision::TF32;
  n.tf32_conv = context.float32Precision(Float32Backend::CUDA, Float32Op::CONV) == Float32Precision::TF32;
  n.cudnn_benchmark = context.benchmarkCuDNN();
  return n;
}

std::string describe_device(const torch::Device& device) {
#if TAIYI_HAS_CUDA_HEADERS
  if (device.is_cuda()) {
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, device.index()) == cudaSuccess)
      return "cuda:" + std::to_string(device.index()) + " (" + properties.name + ")";
  }
#endif
  if (device.is_cuda()) return "cuda:" + std::to_string(device.index());
  return "cpu (" + std::to_string(at::get_num_threads()) + " threads)";
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void reset_gpu_peak(const torch::Device& device) {
#if TAIYI_HAS_CUDA_HEADERS
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#else
  (void)device;
#endif
}

std::pair<double, double> gpu_peak_mb(const torch::Device& device) {
#if TAIYI_HAS_CUDA_HEADERS
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return {stats.allocated_bytes[aggregate].peak / 1048576.0, stats.reserved_bytes[aggregate].peak / 1048576.0};
  }
#else
  (void)device;
#endif
  return {0.0, 0.0};
}

void release_gpu_cache(const torch::Device& device) {
#if TAIYI_HAS_CUDA_HEADERS
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#else
  (void)device;
#endif
}

namespace {

// A "<key>: <n> kB" line of a /proc file, in bytes; nullopt when absent.
std::optional<uint64_t> proc_kb(const char* file, const char* key) {
  std::ifstream in(file);
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) != 0) continue;
    std::istringstream fields(line.substr(prefix.size()));
    uint64_t kb = 0;
    if (fields >> kb) return kb * 1024;
  }
  return std::nullopt;
}

// A cgroup v2 file holding a number ("max": no limit).
std::optional<uint64_t> cgroup_value(const std::string& file) {
  std::ifstream in(file);
  std::string text;
  if (!(in >> text) || text == "max") return std::nullopt;
  try {
    return std::stoull(text);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

std::optional<uint64_t> available_memory(const torch::Device& device) {
#if TAIYI_HAS_CUDA_HEADERS
  if (device.is_cuda()) {
    size_t free = 0, total = 0;
    {
      // cudaMemGetInfo reports the current device, which need not be this one (cuda:N).
      const c10::cuda::CUDAGuard guard(device.index());
      if (cudaMemGetInfo(&free, &total) != cudaSuccess) return std::nullopt;
    }
    // What the caching allocator holds but does not use is available to it too.
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const int64_t cached = stats.reserved_bytes[aggregate].current - stats.allocated_bytes[aggregate].current;
    return static_cast<uint64_t>(free) + static_cast<uint64_t>(std::max<int64_t>(cached, 0));
  }
#endif
  if (!device.is_cpu()) return std::nullopt;
  std::optional<uint64_t> available = proc_kb("/proc/meminfo", "MemAvailable");
  auto lower = [&](uint64_t bound) { available = available ? std::min(*available, bound) : bound; };
  // An address-space limit (ulimit -v) binds before the machine's memory does.
  struct rlimit limit {};
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    const uint64_t used = proc_kb("/proc/self/status", "VmSize").value_or(0);
    lower(limit.rlim_cur > used ? limit.rlim_cur - used : 0);
  }
  // A container's memory limit (cgroup v2).
  if (auto max = cgroup_value("/sys/fs/cgroup/memory.max")) {
    const uint64_t current = cgroup_value("/sys/fs/cgroup/memory.current").value_or(0);
    lower(*max > current ? *max - current : 0);
  }
  return available;
}

}  // namespace taiyi

// Upsample2D's layout guards (diffusers 0.37.1 upsampling.py Upsample2D.forward): a channels_last
// batch of 64 or more is made NCHW before the nearest-neighbour upsampling, as diffusers does; below
// that, and on NCHW input, the result is the plain upsample-then-conv bit for bit. (The other guard,
// more than 2^31 output elements, needs gigabytes and is left to reading.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "taiyi/models/resnet.h"

namespace {

constexpr int64_t kChannels = 4;

// An Upsample2D with seeded random weights (parameters are created uninitialised).
taiyi::nn::Upsample2D random_upsampler() {
  taiyi::nn::Upsample2D up(kChannels, kChannels);
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  for (auto& p : up->named_parameters()) p.value().copy_(torch::randn(p.value().sizes()));
  return up;
}

// The op sequence without any guard: nearest-neighbour upsampling, then the 3x3 conv (padding 1).
torch::Tensor plain(taiyi::nn::Upsample2D& up, const torch::Tensor& x, std::optional<std::vector<int64_t>> size) {
  const auto parameters = up->named_parameters();
  const torch::Tensor h = size ? at::upsample_nearest2d(x, *size)
                               : at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}, 2.0, 2.0);
  return torch::conv2d(h, parameters["conv.weight"], parameters["conv.bias"], {1, 1}, {1, 1});
}

TEST(Upsample2D, NchwInputIsTheUnguardedComputationBitForBit) {
  c10::InferenceMode guard;
  auto up = random_upsampler();
  for (int64_t batch : {2, 64}) {
    const torch::Tensor x = torch::randn({batch, kChannels, 5, 7});
    EXPECT_TRUE(torch::equal(up(x), plain(up, x, std::nullopt))) << "batch " << batch;
    const std::vector<int64_t> size = {9, 14};  // the UNet's output_size for odd skip sizes
    EXPECT_TRUE(torch::equal(up(x, size), plain(up, x, size))) << "batch " << batch << ", output_size";
  }
}

TEST(Upsample2D, ChannelsLastBatchOf64IsMadeNchwAsDiffusersDoes) {
  c10::InferenceMode guard;
  auto up = random_upsampler();
  const torch::Tensor small = torch::randn({2, kChannels, 5, 7}).contiguous(at::MemoryFormat::ChannelsLast);
  const torch::Tensor out_small = up(small);
  EXPECT_TRUE(out_small.is_contiguous(at::MemoryFormat::ChannelsLast)) << "below 64 the layout is kept";
  EXPECT_TRUE(torch::equal(out_small, plain(up, small, std::nullopt)));

  const torch::Tensor large = torch::randn({64, kChannels, 5, 7}).contiguous(at::MemoryFormat::ChannelsLast);
  const torch::Tensor out_large = up(large);
  EXPECT_TRUE(out_large.is_contiguous()) << "a channels_last batch of 64 is upsampled as NCHW";
  EXPECT_TRUE(torch::equal(out_large, plain(up, large.contiguous(), std::nullopt)));
}

}  // namespace

// ResnetBlock2D, Downsample2D and Upsample2D; see include/taiyi/models/resnet.h. Each forward
// mirrors the diffusers 0.37.1 code named in its comment, op for op, so that float32 results agree
// to rounding.
#include "taiyi/models/resnet.h"

#include <algorithm>

namespace taiyi::nn {

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options_(o) {
  norm1 = register_module("norm1", GroupNorm(o.groups, o.in_channels, o.eps));
  conv1 = register_module("conv1", Conv2d(o.in_channels, o.out_channels, 3, 1, 1));
  if (o.temb_channels > 0) time_emb_proj = register_module("time_emb_proj", Linear(o.temb_channels, o.out_channels));
  norm2 = register_module("norm2", GroupNorm(o.groups, o.out_channels, o.eps));
  conv2 = register_module("conv2", Conv2d(o.out_channels, o.out_channels, 3, 1, 1));
  if (o.in_channels != o.out_channels)
    conv_shortcut = register_module("conv_shortcut", Conv2d(o.in_channels, o.out_channels, 1, 1, 0));
}

// diffusers resnet.py ResnetBlock2D.forward, time_embedding_norm == "default".
torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  torch::Tensor h = activate(options_.activation, norm1(x));
  h = conv1(h);
  if (time_emb_proj && temb.defined()) {
    torch::Tensor t = time_emb_proj(activate(options_.activation, temb));  // [B, out]
    h = h + t.unsqueeze(-1).unsqueeze(-1);
  }
  h = activate(options_.activation, norm2(h));
  h = conv2(h);
  torch::Tensor shortcut = conv_shortcut ? conv_shortcut(x) : x;
  // Dividing by 1.0 is exact, so this matches diffusers whatever the factor.
  return (shortcut + h) / options_.output_scale_factor;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding) : padding_(padding) {
  conv = register_module("conv", Conv2d(channels, out_channels, 3, 2, padding));
}

// diffusers downsampling.py Downsample2D.forward (use_conv=True).
torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  if (padding_ == 0) return conv(torch::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv = register_module("conv", Conv2d(channels, out_channels, 3, 1, 1));
}

// diffusers upsampling.py Upsample2D.forward (use_conv=True, interpolate=True): F.interpolate with
// scale_factor=2.0 passes the scale to the kernel; with size= it passes none.
torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x, std::optional<std::vector<int64_t>> output_size) {
  torch::Tensor h = x;
  // diffusers' guards for channels_last input (img2img's init image, --channels-last): CUDA's
  // upsample_nearest_nhwc kernel fails with a batch of 64 or more (diffusers#984) and with more than
  // 2^31 output elements (pytorch#141831, estimated as diffusers does: numel times the largest scale),
  // so diffusers makes the input NCHW there; taiyi too, so that the layout the convolution sees, and with
  // it the rounding, stay diffusers'. contiguous() returns a contiguous tensor itself: on NCHW input
  // nothing changes.
  if (h.size(0) >= 64) h = h.contiguous();
  double scale = 2.0;
  if (output_size)
    scale = std::max(static_cast<double>((*output_size)[0]) / static_cast<double>(h.size(2)),
                     static_cast<double>((*output_size)[1]) / static_cast<double>(h.size(3)));
  if (static_cast<double>(h.numel()) * scale > 2147483648.0) h = h.contiguous();
  if (output_size) {
    h = at::upsample_nearest2d(h, *output_size);
  } else {
    h = at::upsample_nearest2d(h, {h.size(2) * 2, h.size(3) * 2}, 2.0, 2.0);
  }
  return conv(h);
}

}  // namespace taiyi::nn

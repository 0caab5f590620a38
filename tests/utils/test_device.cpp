// The CUDA numerics flags without a GPU: for each Tf32Mode, set_tf32_flags (the TF32 part of
// apply_numerics) leaves at::Context in a state that every getter of libtorch 2.11 reads back without
// throwing, legacy (allowTF32CuBLAS, allowTF32CuDNN, float32MatmulPrecision) and new
// (float32Precision per backend and operation) alike, with the TF32 choices the mode names.
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "taiyi/utils/device.h"

namespace {

using at::Float32Backend;
using at::Float32MatmulPrecision;
using at::Float32Op;
using at::Float32Precision;

// Every (backend, operation) key of at::Context's fp32_precision map in 2.11; the "all" keys first, so
// that restoring in this order brings back the fallbacks before the operations that fall back to them.
// (GENERIC has only ALL: float32Precision(GENERIC, CONV) throws "Invalid (backend, op) pair".)
const std::vector<std::pair<Float32Backend, Float32Op>> kPrecisionKeys = {
    {Float32Backend::GENERIC, Float32Op::ALL}, {Float32Backend::CUDA, Float32Op::ALL},
    {Float32Backend::MKLDNN, Float32Op::ALL},  {Float32Backend::CUDA, Float32Op::CONV},
    {Float32Backend::CUDA, Float32Op::RNN},    {Float32Backend::CUDA, Float32Op::MATMUL},
    {Float32Backend::MKLDNN, Float32Op::CONV}, {Float32Backend::MKLDNN, Float32Op::RNN},
    {Float32Backend::MKLDNN, Float32Op::MATMUL},
};

// What every getter says; reading it fails the test if one throws (the "mix of legacy and new APIs"
// check of 2.11's allowTF32CuBLAS, allowTF32CuDNN and float32MatmulPrecision).
struct Tf32State {
  bool cublas = false;
  bool cudnn = false;
  bool cudnn_conv = false;
  bool cudnn_rnn = false;
  bool onednn = false;
  Float32MatmulPrecision matmul_precision = Float32MatmulPrecision::HIGHEST;
  std::vector<Float32Precision> precisions;  // one per kPrecisionKeys

  static Tf32State read() {
    const auto& context = at::globalContext();
    Tf32State s;
    s.cublas = context.allowTF32CuBLAS();
    s.cudnn = context.allowTF32CuDNN();
    s.cudnn_conv = context.allowTF32CuDNN(Float32Op::CONV);
    s.cudnn_rnn = context.allowTF32CuDNN(Float32Op::RNN);
    s.onednn = context.allowTF32OneDNN();
    s.matmul_precision = context.float32MatmulPrecision();
    for (const auto& [backend, op] : kPrecisionKeys) s.precisions.push_back(context.float32Precision(backend, op));
    return s;
  }
  Float32Precision precision(Float32Backend backend, Float32Op op) const {
    for (size_t i = 0; i < precisions.size(); ++i)  // empty when read() threw (a failure already)
      if (kPrecisionKeys[i] == std::make_pair(backend, op)) return precisions[i];
    return Float32Precision::NONE;
  }
  bool operator==(const Tf32State& o) const {
    return cublas == o.cublas && cudnn == o.cudnn && cudnn_conv == o.cudnn_conv && cudnn_rnn == o.cudnn_rnn &&
           onednn == o.onednn && matmul_precision == o.matmul_precision && precisions == o.precisions;
  }
};

// The flags are process-global and the other tests of this binary share them: each test puts back
// what it found (legacy flags first, as their setters also write the map; then the map, key by key).
// oneDNN's own TF32 flag is only read: its setter warns on builds without Intel GPU (XPU) support.
class Numerics : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_THROW(saved_ = Tf32State::read()) << "the TF32 flags were inconsistent before the test";
  }
  void TearDown() override {
    auto& context = at::globalContext();
    const char* matmul = saved_.matmul_precision == Float32MatmulPrecision::HIGHEST ? "highest"
                         : saved_.matmul_precision == Float32MatmulPrecision::HIGH  ? "high"
                                                                                     : "medium";
    context.setFloat32MatmulPrecision(matmul);
    context.setAllowTF32CuDNN(saved_.cudnn);
    for (size_t i = 0; i < kPrecisionKeys.size(); ++i)
      context.setFloat32Precision(kPrecisionKeys[i].first, kPrecisionKeys[i].second, saved_.precisions[i]);
    Tf32State restored;
    ASSERT_NO_THROW(restored = Tf32State::read());
    EXPECT_TRUE(restored == saved_) << "the TF32 flags were not restored";
  }

  // Sets a mode and reads every getter back; the oneDNN (CPU) flags must stay as they were.
  Tf32State set_and_read(taiyi::Tf32Mode mode) {
    taiyi::set_tf32_flags(mode);
    Tf32State s;
    try {
      s = Tf32State::read();
    } catch (const c10::Error& e) {
      ADD_FAILURE() << "a getter of at::Context threw after set_tf32_flags(" << static_cast<int>(mode)
                    << "): " << e.what_without_backtrace();
      return s;
    }
    for (Float32Op op : {Float32Op::ALL, Float32Op::CONV, Float32Op::RNN, Float32Op::MATMUL})
      EXPECT_EQ(s.precision(Float32Backend::MKLDNN, op), saved_.precision(Float32Backend::MKLDNN, op));
    EXPECT_EQ(s.onednn, saved_.onednn);
    return s;
  }

  Tf32State saved_;
};

bool tf32(const Tf32State& s, Float32Op op) { return s.precision(Float32Backend::CUDA, op) == Float32Precision::TF32; }

// PyTorch's (and diffusers') defaults: TF32 convolutions, IEEE matmuls.
TEST_F(Numerics, DefaultModeIsTf32ConvolutionsAndIeeeMatmuls) {
  const Tf32State s = set_and_read(taiyi::Tf32Mode::kDefault);
  EXPECT_FALSE(s.cublas);
  EXPECT_EQ(s.matmul_precision, Float32MatmulPrecision::HIGHEST);
  EXPECT_FALSE(tf32(s, Float32Op::MATMUL));
  EXPECT_TRUE(s.cudnn);
  EXPECT_TRUE(s.cudnn_conv);
  EXPECT_TRUE(s.cudnn_rnn);
  EXPECT_TRUE(tf32(s, Float32Op::CONV));
  EXPECT_TRUE(tf32(s, Float32Op::RNN));
}

// --tf32: matmuls too. Setting only the new map made allowTF32CuBLAS() and float32MatmulPrecision() throw.
TEST_F(Numerics, OnModeIsTf32Everywhere) {
  const Tf32State s = set_and_read(taiyi::Tf32Mode::kOn);
  EXPECT_TRUE(s.cublas);
  EXPECT_EQ(s.matmul_precision, Float32MatmulPrecision::HIGH);
  EXPECT_TRUE(tf32(s, Float32Op::MATMUL));
  EXPECT_TRUE(s.cudnn);
  EXPECT_TRUE(s.cudnn_conv);
  EXPECT_TRUE(s.cudnn_rnn);
  EXPECT_TRUE(tf32(s, Float32Op::CONV));
  EXPECT_TRUE(tf32(s, Float32Op::RNN));
}

// --no-tf32: strict IEEE fp32. Setting only the map's conv entry made allowTF32CuDNN() throw (rnn differed).
TEST_F(Numerics, OffModeIsIeeeEverywhere) {
  const Tf32State s = set_and_read(taiyi::Tf32Mode::kOff);
  EXPECT_FALSE(s.cublas);
  EXPECT_EQ(s.matmul_precision, Float32MatmulPrecision::HIGHEST);
  EXPECT_FALSE(tf32(s, Float32Op::MATMUL));
  EXPECT_FALSE(s.cudnn);
  EXPECT_FALSE(s.cudnn_conv);
  EXPECT_FALSE(s.cudnn_rnn);
  EXPECT_FALSE(tf32(s, Float32Op::CONV));
  EXPECT_FALSE(tf32(s, Float32Op::RNN));
}

// Modes in turn, as a process that loads pipelines with different options does: each ends consistent.
TEST_F(Numerics, ModesInTurnStayConsistent) {
  for (auto mode : {taiyi::Tf32Mode::kOn, taiyi::Tf32Mode::kOff, taiyi::Tf32Mode::kDefault, taiyi::Tf32Mode::kOn,
                    taiyi::Tf32Mode::kDefault}) {
    const Tf32State s = set_and_read(mode);
    EXPECT_EQ(s.cublas, mode == taiyi::Tf32Mode::kOn);
    EXPECT_EQ(s.cudnn, mode != taiyi::Tf32Mode::kOff);
  }
}

// On the CPU apply_numerics changes nothing and reports nothing.
TEST_F(Numerics, CpuDeviceLeavesTheFlagsAlone) {
  taiyi::set_tf32_flags(taiyi::Tf32Mode::kOff);
  const Tf32State before = Tf32State::read();
  const bool benchmark = at::globalContext().benchmarkCuDNN();
  const taiyi::Numerics n = taiyi::apply_numerics(torch::kCPU, taiyi::Tf32Mode::kOn, !benchmark);
  EXPECT_FALSE(n.cuda);
  EXPECT_EQ(n.describe(), "");
  EXPECT_TRUE(Tf32State::read() == before);
  EXPECT_EQ(at::globalContext().benchmarkCuDNN(), benchmark);
}

}  // namespace

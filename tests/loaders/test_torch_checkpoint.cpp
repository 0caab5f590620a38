// PyTorch checkpoints (src/loaders/torch_checkpoint.cpp, torch_zip.cpp, torch_pickle.cpp) against
// tests/reference/checkpoint.py: every tensor bit-identical to torch.load's, with its stride and storage
// offset; the exploit files never run; each hostile file a one-line Error naming the file and the problem.
#include <chrono>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "taiyi/loaders/safetensors.h"
#include "taiyi/loaders/torch_checkpoint.h"
#include "taiyi/utils/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::expect_error_naming;
using taiyi::test::fixture;

namespace {

nlohmann::json expected() {
  std::ifstream in(fixture("checkpoint/expected.json"));
  return nlohmann::json::parse(in);
}

std::string dtype_name(torch::Dtype dtype) {
  std::string name = c10::toString(dtype);  // "Float", "Half", "BFloat16", ...
  static const std::map<std::string, std::string> python = {
      {"Float", "float32"}, {"Half", "float16"}, {"BFloat16", "bfloat16"}, {"Double", "float64"}, {"Int", "int32"},
      {"Long", "int64"},    {"Short", "int16"},  {"Char", "int8"},         {"Byte", "uint8"},     {"Bool", "bool"}};
  return python.count(name) ? python.at(name) : name;
}

// The values as the reference stores them: float32/16/bfloat16 as they are, float64 as its bits, the
// others as int64; compared bit for bit (floats through an integer view of the same width).
void expect_bit_identical(const std::string& name, const torch::Tensor& actual, const torch::Tensor& expected) {
  torch::Tensor a = actual.contiguous();
  ASSERT_EQ(a.sizes(), expected.sizes()) << name;
  if (a.scalar_type() == torch::kDouble) a = a.view(torch::kLong);
  else if (!a.is_floating_point()) a = a.to(torch::kLong);
  ASSERT_EQ(a.scalar_type(), expected.scalar_type()) << name;
  const torch::Dtype bits = a.element_size() == 8 ? torch::kLong : a.element_size() == 4 ? torch::kInt : torch::kShort;
  EXPECT_TRUE(torch::equal(a.view(bits), expected.contiguous().view(bits))) << name << ": values differ from torch.load's";
}

void check_against_reference(const std::string& file) {
  SCOPED_TRACE(file);
  const nlohmann::json want = expected().at(file);
  const taiyi::TorchCheckpoint ckpt = taiyi::read_torch_checkpoint(fixture("checkpoint/" + file));
  const taiyi::SafetensorsFile values(fixture("checkpoint/" + fs::path(file).stem().string() + ".expected.safetensors"));
  ASSERT_EQ(ckpt.tensors.size(), want.at("tensors").size());
  std::map<int, std::pair<const torch::Tensor*, int64_t>> first_of_storage;  // storage group -> (tensor, offset)
  for (size_t i = 0; i < ckpt.tensors.size(); ++i) {
    const auto& [name, tensor] = ckpt.tensors[i];
    const nlohmann::json& w = want.at("tensors")[i];
    ASSERT_EQ(name, w.at("name").get<std::string>());
    EXPECT_EQ(dtype_name(tensor.scalar_type()), w.at("dtype").get<std::string>()) << name;
    EXPECT_EQ(tensor.sizes().vec(), w.at("shape").get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(tensor.strides().vec(), w.at("stride").get<std::vector<int64_t>>()) << name;
    expect_bit_identical(name, tensor, values.tensor(name));
    // Tensors of one storage view the same bytes, their storage offsets apart (no copy).
    const int group = w.at("storage").get<int>();
    const int64_t offset = w.at("storage_offset").get<int64_t>();
    auto [it, first] = first_of_storage.emplace(group, std::make_pair(&tensor, offset));
    if (!first && tensor.numel() > 0) {
      const auto distance = static_cast<const char*>(tensor.data_ptr()) - static_cast<const char*>(it->second.first->data_ptr());
      EXPECT_EQ(distance, (offset - it->second.second) * tensor.element_size()) << name << " shares its storage";
    }
  }
  EXPECT_EQ(ckpt.skipped, want.at("skipped").get<std::vector<std::string>>());
  EXPECT_EQ(ckpt.placeholders, want.at("placeholders").get<std::vector<std::string>>());
}

}  // namespace

TEST(TorchCheckpoint, WeightsBinEveryDtypeAndView) { check_against_reference("weights.bin"); }

// FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL, ...: torch.save(..., pickle_protocol=4 or 5).
TEST(TorchCheckpoint, PickleProtocols4And5) {
  check_against_reference("weights_protocol4.bin");
  check_against_reference("weights_protocol5.bin");
}

// Callbacks, hyper-parameters and optimizer state are passed over: their classes become placeholders.
TEST(TorchCheckpoint, LightningCheckpointGivesItsStateDict) { check_against_reference("lightning.ckpt"); }

TEST(TorchCheckpoint, NestedStateDict) { check_against_reference("nested.ckpt"); }

TEST(TorchCheckpoint, ViewsAreCopyOnWrite) {
  const fs::path path = fixture("checkpoint/weights.bin");
  {
    taiyi::TorchCheckpoint ckpt = taiyi::read_torch_checkpoint(path);
    ckpt.tensors[0].second.fill_(7.0f);
  }
  const taiyi::TorchCheckpoint again = taiyi::read_torch_checkpoint(path);
  const taiyi::SafetensorsFile values(fixture("checkpoint/weights.expected.safetensors"));
  expect_bit_identical("float32", again.tensors[0].second, values.tensor("float32"));
}

// Each file would run code under Python's unpickler (the harness proved it); the reader never does.
TEST(TorchCheckpoint, ExploitsNeverRun) {
  const nlohmann::json want = expected();
  for (const char* file : {"exploit_os_system.ckpt", "exploit_eval.ckpt", "exploit_exec.ckpt"}) {
    SCOPED_TRACE(file);
    const fs::path marker = want.at(file).at("marker").get<std::string>();
    ASSERT_FALSE(fs::exists(marker));
    if (std::string(file) == "exploit_exec.ckpt") {
      expect_error_naming([&] { taiyi::read_torch_checkpoint(fixture(std::string("checkpoint/") + file)); },
                          {file, "holds no state dict", "an object of '__builtin__.exec'"});
    } else {
      const taiyi::TorchCheckpoint ckpt = taiyi::read_torch_checkpoint(fixture(std::string("checkpoint/") + file));
      ASSERT_EQ(ckpt.tensors.size(), 1u);
      EXPECT_EQ(ckpt.tensors[0].first, "weight");
      EXPECT_EQ(ckpt.skipped, std::vector<std::string>{"payload"});
      EXPECT_EQ(ckpt.placeholders.size(), 1u);
      EXPECT_EQ(ckpt.placeholders.at(0), std::string(file) == "exploit_eval.ckpt" ? "__builtin__.eval" : "posix.system");
    }
    EXPECT_FALSE(fs::exists(marker)) << "the payload ran";
  }
  // getattr(__import__("os"), "system")(command): every call gives a placeholder; no tensors, one skipped key.
  const fs::path marker = want.at("exploit_reduce_chain.ckpt").at("marker").get<std::string>();
  const taiyi::TorchCheckpoint chain = taiyi::read_torch_checkpoint(fixture("checkpoint/exploit_reduce_chain.ckpt"));
  EXPECT_TRUE(chain.tensors.empty());
  EXPECT_EQ(chain.skipped, std::vector<std::string>{"chain"});
  EXPECT_EQ(chain.placeholders, (std::vector<std::string>{"__builtin__.getattr", "__builtin__.__import__"}));
  EXPECT_FALSE(fs::exists(marker)) << "the payload ran";
}

TEST(TorchCheckpoint, HostileFilesAreOneLineErrors) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"bad_unknown_opcode.ckpt", {"archive/data.pkl", "pickle byte 5", "unknown pickle opcode 0xff"}},
      {"bad_truncated_pickle.ckpt", {"ends without STOP", "truncated"}},
      {"bad_memo_unset.ckpt", {"pickle byte 2", "memo slot 7 is read before it is set"}},
      {"bad_huge_length.ckpt", {"a string of 4611686018427387904 bytes runs past the end of the pickle"}},
      {"bad_recursion_lists.ckpt", {"nested more than 1000 levels"}},
      {"bad_recursion_marks.ckpt", {"more than 10000 open MARKs"}},
      {"bad_stop_non_empty_stack.ckpt", {"STOP with 2 objects"}},
      {"bad_storage_larger_than_record.ckpt", {"tensor 'w'", "600 elements of FloatStorage", "holds 24 bytes"}},
      {"bad_view_past_storage.ckpt", {"offset 2, last element 7", "past the end of its storage of 6 elements"}},
      {"bad_view_overflow.ckpt", {"shape and stride overflow"}},
      {"bad_missing_record.ckpt", {"tensor 'w'", "'archive/data/0' is missing"}},
      {"bad_compressed_record.ckpt", {"'archive/data/0' is compressed", "torch.save(torch.load(f), f2)", "safetensors"}},
      {"bad_big_endian.ckpt", {"byte order 'big'"}},
      {"bad_overlapping_records.ckpt", {"zip entries 'archive/data/0' and 'archive/version' overlap"}},
      {"bad_lying_size.ckpt", {"'archive/data/0'", "local header declares other sizes"}},
      {"bad_record_outside_archive.ckpt", {"'archive/data/0'", "no local header at byte"}},
      {"bad_zip64_past_end.ckpt", {"zip64 end record at byte 1000000000000 lies past the end"}},
      {"bad_not_zip.ckpt", {"not a PyTorch checkpoint"}},
      {"bad_legacy.pt", {"legacy (pre-1.6, non-zip) torch.save file", "PyTorch >= 1.6", "safetensors"}},
  };
  for (const auto& [file, needles] : cases) {
    SCOPED_TRACE(file);
    std::vector<std::string> all = needles;
    all.insert(all.begin(), file);
    const auto start = std::chrono::steady_clock::now();
    expect_error_naming([&] { taiyi::read_torch_checkpoint(fixture("checkpoint/" + file)); }, all);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 1.0);
    try {
      taiyi::read_torch_checkpoint(fixture("checkpoint/" + file));
    } catch (const taiyi::Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
}

TEST(TorchCheckpoint, DetectsTheFormat) {
  using taiyi::WeightsFormat;
  EXPECT_EQ(taiyi::detect_weights_format(fixture("checkpoint/weights.bin")), WeightsFormat::TorchZip);
  EXPECT_EQ(taiyi::detect_weights_format(fixture("checkpoint/bad_legacy.pt")), WeightsFormat::TorchLegacy);
  EXPECT_EQ(taiyi::detect_weights_format(fixture("checkpoint/bad_not_zip.ckpt")), WeightsFormat::Unknown);
  EXPECT_EQ(taiyi::detect_weights_format(fixture("checkpoint/weights.expected.safetensors")), WeightsFormat::Safetensors);
  expect_error_naming([&] { taiyi::read_torch_checkpoint(fixture("checkpoint/weights.expected.safetensors")); },
                      {"weights.expected.safetensors", "a safetensors file, not a torch.save checkpoint"});
}

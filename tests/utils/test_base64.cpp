// Base64 against Python's base64 module (tests/reference/b64.py, ref/base64.json): every encoding equals
// base64.b64encode, every decoding equals base64.b64decode's bytes or its error message.
#include <fstream>

#include "taiyi/utils/base64.h"
#include "test_util.h"

namespace {

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

nlohmann::json cases() {
  std::ifstream in(taiyi::test::fixture("ref/base64.json"));
  return nlohmann::json::parse(in);
}

}  // namespace

TEST(Base64, EncodesAsPython) {
  const nlohmann::json all = cases();
  ASSERT_GE(all["encode"].size(), 200u);
  for (const auto& c : all["encode"]) {
    const std::string bytes = from_hex(c["bytes"].get<std::string>());
    EXPECT_EQ(taiyi::base64_encode(bytes), c["text"].get<std::string>()) << "bytes " << c["bytes"];
    EXPECT_EQ(taiyi::base64_decode(taiyi::base64_encode(bytes)), bytes);
  }
}

TEST(Base64, DecodesAsPython) {
  const nlohmann::json all = cases();
  ASSERT_GE(all["decode"].size(), 250u);
  size_t errors = 0;
  for (const auto& c : all["decode"]) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE("text " + c["text"].dump());
    if (c.contains("error")) {
      ++errors;
      try {
        const std::string bytes = taiyi::base64_decode(text);
        ADD_FAILURE() << "decoded to " << bytes.size() << " bytes; Python: " << c["error"];
      } catch (const taiyi::Error& e) {
        EXPECT_EQ(std::string(e.what()), "base64: " + c["error"].get<std::string>());
      }
    } else {
      const std::string bytes = taiyi::base64_decode(text);
      EXPECT_EQ(bytes, from_hex(c["bytes"].get<std::string>()));
      EXPECT_LE(bytes.size() * 4, text.size() * 3);
    }
  }
  EXPECT_GE(errors, 30u);  // the refusals are tested too, of each kind
}

// File hashes through the cache (the web UI's cache.json): the same digest as hashing the file, reused
// while size and time hold, recomputed when the file changes, and a broken cache is no error.
#include <fstream>

#include "taiyi/utils/sha256.h"
#include "test_util.h"

namespace fs = std::filesystem;

TEST(Sha256Cache, ReusesWhileTheFileIsUnchanged) {
  const fs::path dir = taiyi::test::temp_dir("hashes");
  const fs::path file = dir / "model.safetensors", cache = dir / "cache" / "hashes.json";
  std::ofstream(file) << "weights";
  EXPECT_EQ(taiyi::cached_sha256_file(file, cache), taiyi::sha256_file(file));
  EXPECT_EQ(taiyi::sha256_file(file), taiyi::sha256_hex("weights"));
  ASSERT_TRUE(fs::exists(cache));
  {  // a forged entry for the same size and time is what the cache answers: it was used, not recomputed
    std::ifstream in(cache);
    nlohmann::json json = nlohmann::json::parse(in);
    const std::string key = fs::absolute(file).lexically_normal().string();
    ASSERT_TRUE(json.contains(key));
    json[key]["sha256"] = std::string(64, 'a');
    std::ofstream(cache) << json.dump();
  }
  EXPECT_EQ(taiyi::cached_sha256_file(file, cache), std::string(64, 'a'));
  std::ofstream(file) << "other weights";  // another size: recomputed
  EXPECT_EQ(taiyi::cached_sha256_file(file, cache), taiyi::sha256_file(file));
  std::ofstream(cache) << "{not json";
  EXPECT_EQ(taiyi::cached_sha256_file(file, cache), taiyi::sha256_file(file));
  fs::remove_all(dir);
}

// Batch runs that are killed, resumed, starved of disk or fed hostile lines (issue 14), on the real
// binary and the tiny pipeline: whatever happens, each output is whole or absent, a resumed run ends
// with exactly the files of an uninterrupted one, and one bad line costs only itself.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "test_util.h"

namespace fs = std::filesystem;
using taiyi::test::run_taiyi;

namespace {

std::vector<std::string> settings(const fs::path& prompts, const fs::path& out) {
  return {"--prompts", prompts.string(), "-o", out.string() + "/", "--steps", "3", "-W", "64", "-H", "64",
          "--device", "cpu", "-q", "--sidecar", "--seed", "5", "--model", taiyi::test::fixture("tiny-clip").string()};
}

fs::path write_prompts(const fs::path& dir, int lines) {
  fs::path prompts = dir / "prompts.txt";
  std::ofstream out(prompts);
  for (int i = 0; i < lines; ++i) out << "小桥流水人家 " << i << ", painting\n";
  return prompts;
}

std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    files[entry.path().filename().string()] = bytes.str();
  }
  return files;
}

// Starts taiyi with `args` (output to /dev/null), returns its pid.
pid_t spawn_taiyi(const std::vector<std::string>& args) {
  const std::string binary = taiyi::test::taiyi_binary();  // before fork: the child only execs
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_RDWR);
    dup2(null, 0), dup2(null, 1), dup2(null, 2);
    std::vector<char*> argv{const_cast<char*>(binary.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

// Killed with SIGKILL at random instants (loading, denoising, between the temporary file and its
// rename), resumed each time: the final folder equals an uninterrupted run's, byte for byte, and holds
// no temporary file.
TEST(CrashSafety, KilledAndResumedRunsEqualAnUninterruptedOne) {
  const fs::path dir = taiyi::test::temp_dir("crash-kill");
  const fs::path prompts = write_prompts(dir, 10);
  // The same output folder for both runs (the sidecars record the path): the reference moves aside.
  auto reference_run = run_taiyi(settings(prompts, dir / "out"));
  ASSERT_EQ(reference_run.exit_code, 0) << reference_run.err;
  const auto reference = files_of(dir / "out");
  ASSERT_EQ(reference.size(), 20u);  // 10 images and their sidecars
  fs::remove_all(dir / "out");

  // Children must stay ours to reap: under ctest SIGCHLD may come in ignored (then waitpid cannot see the kill).
  std::signal(SIGCHLD, SIG_DFL);
  std::mt19937 rng(14);  // fixed: a failure reproduces
  std::uniform_real_distribution<double> instant(0.0, 1.0);
  std::vector<std::string> args = settings(prompts, dir / "out");
  args.push_back("--resume");
  auto images_done = [&] {
    size_t n = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir / "out", ec))
      n += entry.path().extension() == ".png" && entry.path().filename().string()[0] != '.';
    return n;
  };
  fs::create_directories(dir / "out");
  int kills = 0;
  for (int attempt = 0; attempt < 20 && kills < 5; ++attempt) {
    const size_t done = images_done();
    if (done == 10) break;
    // Killed after a random number of this run's images (0: during the load or the first image) plus a random
    // part of the next one: paced by the run's own progress, whatever the machine's load.
    const size_t wait_for = std::uniform_int_distribution<size_t>(0, std::min<size_t>(10 - done - 1, 2))(rng);
    const auto extra = std::chrono::duration<double, std::milli>(instant(rng) * 60);
    const pid_t pid = spawn_taiyi(args);
    ASSERT_GT(pid, 0);
    int status = 0;
    bool exited = false;
    while (images_done() < done + wait_for && !exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      exited = waitpid(pid, &status, WNOHANG) == pid;
    }
    if (!exited) {
      std::this_thread::sleep_for(extra);
      ::kill(pid, SIGKILL);
      ASSERT_EQ(waitpid(pid, &status, 0), pid) << std::strerror(errno);
    }
    kills += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL ? 1 : 0;
  }
  EXPECT_GE(kills, 3) << "most runs should have been killed mid-way";
  auto finished = run_taiyi(args);
  ASSERT_EQ(finished.exit_code, 0) << finished.err;
  EXPECT_EQ(files_of(dir / "out"), reference);  // same names, same bytes; no ".*.taiyi-*.tmp" left
  fs::remove_all(dir);
}

// A file system that fills up mid-run (a 64 KiB tmpfs in a private mount namespace): each failed image
// is a clear error naming its file, nothing partial is left, and the images written before are intact.
TEST(CrashSafety, FullDiskFailsCleanlyAndKeepsEarlierImages) {
  const fs::path dir = taiyi::test::temp_dir("crash-disk");
  const fs::path prompts = write_prompts(dir, 8);
  const fs::path small = dir / "out";  // the tmpfs is mounted here, where the reference was written
  auto reference_run = run_taiyi(settings(prompts, small));
  ASSERT_EQ(reference_run.exit_code, 0) << reference_run.err;
  const auto reference = files_of(small);
  fs::remove_all(small);
  fs::create_directories(small);
  std::string command = "mount -t tmpfs -o size=64k tmpfs '" + small.string() + "' && '" + taiyi::test::taiyi_binary() + "'";
  for (const std::string& a : settings(prompts, small)) command += " '" + a + "'";
  command += " 2>'" + (dir / "err").string() + "'; echo \\$? >'" + (dir / "rc").string() + "'; cp -a '" + small.string() +
             "/.' '" + (dir / "copy").string() + "/'";
  fs::create_directories(dir / "copy");
  // unshare -r: root in a new user namespace, which may mount a tmpfs in its own mount namespace.
  const int status = std::system(("unshare -rm sh -c \"" + command + "\"").c_str());
  ASSERT_EQ(status, 0) << "unshare -rm (a private tmpfs) is needed for this test: " << command;
  std::ifstream rc_file(dir / "rc"), err_file(dir / "err");
  int rc = -1;
  rc_file >> rc;
  std::stringstream err;
  err << err_file.rdbuf();
  EXPECT_EQ(rc, 1) << err.str();  // some lines failed, the others were written
  EXPECT_NE(err.str().find("No space left on device"), std::string::npos) << err.str();
  EXPECT_NE(err.str().find((small / "0000").string()), std::string::npos) << "the error names the file: " << err.str();
  const auto written = files_of(dir / "copy");
  size_t images = 0;
  for (const auto& [name, bytes] : written) {
    ASSERT_TRUE(reference.count(name)) << "unexpected file " << name << " (a temporary or partial file)";
    EXPECT_EQ(bytes, reference.at(name)) << name << " differs from the uninterrupted run's";
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".png") == 0) {
      ++images;
      std::string side = name.substr(0, name.size() - 4) + ".json";
      EXPECT_TRUE(written.count(side)) << name << " without its sidecar";
    } else {
      EXPECT_TRUE(written.count(name.substr(0, name.size() - 5) + ".png")) << name << ": a sidecar without its image";
    }
  }
  EXPECT_GE(images, 1u) << "the first images fit";
  EXPECT_LT(images, 8u) << "the disk should have filled up";
  fs::remove_all(dir);
}

// A hostile prompt file: lines asking for an absurd size, a million-deep JSON nesting, a megabyte prompt
// and an output name that cannot be expanded. Each is that line's error, fast and without allocating; the good lines run.
TEST(CrashSafety, HostileLinesFailAloneAndFast) {
  const fs::path dir = taiyi::test::temp_dir("crash-hostile");
  const fs::path prompts = dir / "p.jsonl";
  {
    std::ofstream out(prompts);
    out << "{\"prompt\": \"good one\", \"seed\": 1}\n";
    out << "{\"prompt\": \"huge\", \"width\": 16384, \"height\": 16384}\n";
    out << "{\"prompt\": \"too wide\", \"width\": 1048576, \"height\": 64}\n";
    out << "{\"prompt\": " << std::string(100000, '[') << std::string(100000, ']') << "}\n";
    out << "{\"prompt\": \"" << std::string(1000000, 'x') << "\"}\n";
    out << "{\"prompt\": \"bad name\", \"output\": \"{nope}.png\"}\n";
    out << "{\"prompt\": \"good two\", \"seed\": 2}\n";
  }
  auto args = settings(prompts, dir / "out");
  args.erase(std::find(args.begin(), args.end(), "-q"));  // the progress lines too must survive the bad lines
  args.push_back("--batch-size");
  args.push_back("4");
  auto r = run_taiyi(args);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(fs::exists(dir / "out" / "00001-0.png")) << r.err;
  EXPECT_TRUE(fs::exists(dir / "out" / "00007-0.png")) << r.err;
  EXPECT_NE(r.err.find("line 2: 16384x16384, 1 image(s) at once: needs about"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("line 3: width 1048576: at most 16384 pixels"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("p.jsonl:4: JSON nested more than 64 levels"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("line 5: prompt: 1000000 bytes is over the 65536"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("line 6: output name '{nope}.png': unknown placeholder {nope}"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("5 failed"), std::string::npos) << r.err;
  EXPECT_LT(r.err.size(), 4000u) << "messages quote briefly";
  fs::remove_all(dir);
}

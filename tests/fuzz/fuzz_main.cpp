// One libFuzzer binary per target (tests/fuzz/CMakeLists.txt compiles this with TAIYI_FUZZ_TARGET).
#include <cstdio>
#include <cstdlib>

#include "fuzz_targets.h"

#ifndef TAIYI_FUZZ_TARGET
#error "TAIYI_FUZZ_TARGET names the target"
#endif

static const taiyi::fuzz::Target* target = nullptr;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  target = taiyi::fuzz::find_target(TAIYI_FUZZ_TARGET);
  if (!target) {
    std::fprintf(stderr, "no fuzz target %s\n", TAIYI_FUZZ_TARGET);
    std::abort();
  }
  taiyi::fuzz::initialize();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  target->run(data, size);
  return 0;
}

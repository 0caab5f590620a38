// The bodies of taiyi's fuzz targets (tests/fuzz): one function per parser of outside input, each
// feeding the bytes to the parser as a file would and accepting an Error (a clear message) as the
// only way to refuse them. Anything else escapes: a crash, a sanitizer report, another exception, or
// a broken invariant (std::logic_error). The same functions run the kept crash inputs in the unit
// tests (tests/test_fuzz_regressions.cpp), so that every crash found stays fixed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace taiyi::fuzz {

struct Target {
  const char* name;
  void (*run)(const uint8_t* data, size_t size);
};

// safetensors_header, config_json, clip_tokenizer, bert_tokenizer, prompt_syntax, prompt_file, image,
// lora_keys, embedding, torch_zip, torch_pickle, ldm_keys, base64.
const std::vector<Target>& targets();
const Target* find_target(const std::string& name);

// The tokenizer targets load a tokenizer folder once: $TAIYI_FUZZ_CLIP_TOKENIZER / $TAIYI_FUZZ_BERT_TOKENIZER,
// else <fixtures>/tiny-clip/tokenizer and tiny-bert/tokenizer under $TAIYI_FIXTURES.
void initialize();

}  // namespace taiyi::fuzz

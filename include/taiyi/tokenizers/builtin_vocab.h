// The tokenizer vocabularies built into the taiyi binary (src/tokenizers/data/, see its README), for the
// models that come without a tokenizer folder (single-file checkpoints: taiyi/loaders/single_file_configs.h).
//
//   taiyi::TokenizerFiles files;
//   taiyi::derive_clip_vocab(taiyi::builtin_clip_bpe(), files);  // vocab.json + merges.txt of CLIP ViT-L/14
//
// The bytes are those of the files, embedded at build time (no generated source); they live as long as
// the program. No torch here.
#pragma once

#include <string_view>

namespace taiyi {

// OpenAI CLIP's bpe_simple_vocab_16e6.txt (MIT), uncompressed: a "#version" line, then 262144 merges.
std::string_view builtin_clip_bpe();
// The vocab.txt of bert-base-chinese (Apache-2.0), 21128 lines, which Taiyi-Chinese-v0.1's tokenizer uses.
std::string_view builtin_bert_vocab();

}  // namespace taiyi

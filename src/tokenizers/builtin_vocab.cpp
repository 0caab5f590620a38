// The vocabularies of src/tokenizers/data/ in the binary; see include/taiyi/tokenizers/builtin_vocab.h.
// The assembler's .incbin copies each file into a read-only section: no multi-megabyte generated C++
// array, so this compiles instantly. CMake passes the files' paths (TAIYI_CLIP_BPE_FILE,
// TAIYI_BERT_VOCAB_FILE), makes this object depend on them, and passes their SHA-256 too
// (TAIYI_VOCAB_DATA_SHA256), so that a compiler cache does not hand back an object with old data.
// GNU assembler syntax for ELF (Linux, gcc or clang).
#include "taiyi/tokenizers/builtin_vocab.h"

#if !defined(TAIYI_CLIP_BPE_FILE) || !defined(TAIYI_BERT_VOCAB_FILE) || !defined(TAIYI_VOCAB_DATA_SHA256)
#error "src/tokenizers/data/builtin_vocab.cmake passes the vocabulary files' paths and hashes"
#endif

// Each file between two labels, with a NUL after it (the end label comes before it). The comment line
// puts the files' hash into the preprocessed source.
#define TAIYI_INCBIN(name, file)                                   \
  __asm__("# vocabulary sha256 " TAIYI_VOCAB_DATA_SHA256 "\n"      \
          ".pushsection .rodata.taiyi_" #name ", \"a\", @progbits\n" \
          ".balign 16\n"                                           \
          "taiyi_" #name "_begin:\n"                               \
          ".incbin \"" file "\"\n"                                 \
          "taiyi_" #name "_end:\n"                                 \
          ".byte 0\n"                                              \
          ".popsection\n")

TAIYI_INCBIN(clip_bpe, TAIYI_CLIP_BPE_FILE);
TAIYI_INCBIN(bert_vocab, TAIYI_BERT_VOCAB_FILE);

extern "C" {
extern const char taiyi_clip_bpe_begin[], taiyi_clip_bpe_end[];
extern const char taiyi_bert_vocab_begin[], taiyi_bert_vocab_end[];
}

namespace taiyi {

std::string_view builtin_clip_bpe() {
  return {taiyi_clip_bpe_begin, static_cast<size_t>(taiyi_clip_bpe_end - taiyi_clip_bpe_begin)};
}

std::string_view builtin_bert_vocab() {
  return {taiyi_bert_vocab_begin, static_cast<size_t>(taiyi_bert_vocab_end - taiyi_bert_vocab_begin)};
}

}  // namespace taiyi

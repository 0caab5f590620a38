// The page of src/server/data/ in the binary; see include/taiyi/server/web_page.h. Embedded as
// src/tokenizers/builtin_vocab.cpp embeds the vocabularies: the assembler's .incbin copies the file into a
// read-only section. src/server/data/web_page.cmake passes its path (TAIYI_WEB_PAGE_FILE), makes this
// object depend on it, and passes its SHA-256 (TAIYI_WEB_PAGE_SHA256) so that a compiler cache does not
// hand back an object holding an old page. GNU assembler syntax for ELF (Linux, gcc or clang).
#include "taiyi/server/web_page.h"

#include <cstddef>

#if !defined(TAIYI_WEB_PAGE_FILE) || !defined(TAIYI_WEB_PAGE_SHA256)
#error "src/server/data/web_page.cmake passes the page's path and hash"
#endif

// The file between two labels; the comment line puts its hash into the preprocessed source.
__asm__("# web page sha256 " TAIYI_WEB_PAGE_SHA256 "\n"
        ".pushsection .rodata.taiyi_web_page, \"a\", @progbits\n"
        ".balign 16\n"
        "taiyi_web_page_begin:\n"
        ".incbin \"" TAIYI_WEB_PAGE_FILE "\"\n"
        "taiyi_web_page_end:\n"
        ".byte 0\n"
        ".popsection\n");

extern "C" {
extern const char taiyi_web_page_begin[], taiyi_web_page_end[];
}

namespace taiyi {

std::string_view web_page_html() {
  return {taiyi_web_page_begin, static_cast<size_t>(taiyi_web_page_end - taiyi_web_page_begin)};
}

}  // namespace taiyi

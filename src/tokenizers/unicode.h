// Characters as Python sees them, for the slow tokenizers: unicodedata 14.0 (categories, NFC, NFD),
// str.lower, str.isspace / str.split and the regex module's classes under IGNORECASE, answered from
// the tables of tools/gen_unicode_tables.py (src/tokenizers/unicode_tables.inc); UTF-8 to and from
// code points. Private to src/tokenizers/. Plain C++: no torch here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace taiyi::tokenizers {

// =============================================================================================
// Unicode facts, as Python sees them
// =============================================================================================

// Property bits of kProperties (tools/gen_unicode_tables.py).
constexpr uint16_t kControl = 1 << 0;            // category C*
constexpr uint16_t kSpaceSeparator = 1 << 1;     // category Zs
constexpr uint16_t kPunctuation = 1 << 2;        // category P*
constexpr uint16_t kNonspacingMark = 1 << 3;     // category Mn
constexpr uint16_t kPythonSpace = 1 << 4;        // str.isspace()
constexpr uint16_t kRegexLetter = 1 << 5;        // regex [\p{L}], IGNORECASE
constexpr uint16_t kRegexNumber = 1 << 6;        // regex [\p{N}], IGNORECASE
constexpr uint16_t kRegexOther = 1 << 7;         // regex [^\s\p{L}\p{N}], IGNORECASE
constexpr uint16_t kCased = 1 << 8;              // Cased, not Case_Ignorable
constexpr uint16_t kCaseIgnorable = 1 << 9;      // Case_Ignorable

uint16_t properties(char32_t c);
bool has(char32_t c, uint16_t bit);

// Python's str.lower().
std::u32string python_lower(const std::u32string& s);
// unicodedata.normalize("NFD", s): full decomposition, then canonical ordering of mark runs.
std::u32string nfd(const std::u32string& s);
// unicodedata.normalize("NFC", s): NFD, then canonical composition of unblocked pairs.
std::u32string nfc(const std::u32string& s);

// Whether `got` is one of the case variants (other than itself) that IGNORECASE lets match the
// character `literal` of the CLIP pattern's literals (e.g. U+017F LONG S for 's').
bool is_literal_case_variant(char32_t literal, char32_t got);

// =============================================================================================
// UTF-8
// =============================================================================================

// Invalid bytes become U+FFFD, which BasicTokenizer then drops (a Python str cannot hold them).
std::u32string decode_utf8(const std::string& text);
void append_utf8(char32_t c, std::string& out);
std::string encode_utf8(const std::u32string& s);

// =============================================================================================
// Python str helpers
// =============================================================================================

bool is_python_space(char32_t c);
// str.split() with no argument.
std::vector<std::u32string> python_split(const std::u32string& s);
std::u32string python_lstrip(const std::u32string& s);
std::u32string python_rstrip(const std::u32string& s);
std::u32string join_with_spaces(const std::vector<std::u32string>& words);

}  // namespace taiyi::tokenizers

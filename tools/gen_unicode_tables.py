#!/usr/bin/env python3
"""Writes src/tokenizers/unicode_tables.inc: the Unicode facts that transformers' slow CLIPTokenizer and
BertTokenizer get from Python (unicodedata, str.lower, str.isspace) and from the `regex` module
(the CLIP pre-tokenisation pattern), as compact range tables for src/tokenizers/unicode.cpp.

    ~/.cache/taiyi/venv/bin/python tools/gen_unicode_tables.py [src/tokenizers/unicode_tables.inc]

Run it with the project's virtualenv Python: its unicodedata (and its regex module, which carries
its own Unicode database) is what transformers uses. Every table is computed by asking Python
itself about every code point, so the C++ side reproduces Python's answers, quirks included.
"""
import sys
import unicodedata
from pathlib import Path

import regex

ROOT = Path(__file__).resolve().parent.parent
MAX_CP = 0x110000
SURROGATES = range(0xD800, 0xE000)

# Property bits (keep in sync with the constants in src/tokenizers/unicode.h).
BIT_CONTROL = 1 << 0  # unicodedata.category() starts with "C" (transformers' _is_control, before its \t\n\r rule)
BIT_SPACE_SEPARATOR = 1 << 1  # category Zs (transformers' _is_whitespace)
BIT_PUNCTUATION = 1 << 2  # category starts with "P" (transformers' _is_punctuation)
BIT_NONSPACING_MARK = 1 << 3  # category Mn (dropped by _run_strip_accents)
BIT_PYTHON_SPACE = 1 << 4  # str.isspace(): where str.split() splits
BIT_REGEX_LETTER = 1 << 5  # regex [\p{L}] under IGNORECASE
BIT_REGEX_NUMBER = 1 << 6  # regex [\p{N}] under IGNORECASE
BIT_REGEX_OTHER = 1 << 7  # regex [^\s\p{L}\p{N}] under IGNORECASE
BIT_CASED = 1 << 8  # Cased and not Case_Ignorable (str.lower()'s final-sigma rule)
BIT_CASE_IGNORABLE = 1 << 9  # Case_Ignorable (final-sigma rule)

CLIP_FLAGS = regex.IGNORECASE  # tokenization_clip.py compiles its pattern with re.IGNORECASE
# The literal parts of the CLIP pattern: under IGNORECASE a letter also matches its case variants
# (e.g. 's' matches U+017F LATIN SMALL LETTER LONG S).
CLIP_LITERAL_CHARS = sorted(set("<|startoftext|><|endoftext|>'s't're've'm'll'd"))


def sigma_class(c: str) -> int:
    """Cased / Case_Ignorable as CPython's str.lower() uses them for U+03A3 (Final_Sigma), found by
    asking lower() itself: 'A' c 'Σ' ends in final sigma iff c is case-ignorable or cased; 'AΣ' c
    iff c is case-ignorable or not cased. When c is case-ignorable its cased-ness never matters."""
    before = ("A" + c + "\u03a3").lower()[-1] == "\u03c2"
    after = ("A\u03a3" + c).lower()[1] == "\u03c2"
    if before and after:
        return BIT_CASE_IGNORABLE
    if before:
        return BIT_CASED
    return 0


def properties(cp: int) -> int:
    if cp in SURROGATES:
        return BIT_CONTROL  # category Cs; never seen after UTF-8 decoding
    c = chr(cp)
    cat = unicodedata.category(c)
    bits = 0
    if cat.startswith("C"):
        bits |= BIT_CONTROL
    if cat == "Zs":
        bits |= BIT_SPACE_SEPARATOR
    if cat.startswith("P"):
        bits |= BIT_PUNCTUATION
    if cat == "Mn":
        bits |= BIT_NONSPACING_MARK
    if c.isspace():
        bits |= BIT_PYTHON_SPACE
    if regex.fullmatch(r"[\p{L}]", c, CLIP_FLAGS):
        bits |= BIT_REGEX_LETTER
    if regex.fullmatch(r"[\p{N}]", c, CLIP_FLAGS):
        bits |= BIT_REGEX_NUMBER
    if regex.fullmatch(r"[^\s\p{L}\p{N}]", c, CLIP_FLAGS):
        bits |= BIT_REGEX_OTHER
    bits |= sigma_class(c)
    return bits


def property_ranges():
    ranges = []  # (first, bits): bits hold from first up to the next entry's first - 1
    previous = None
    for cp in range(MAX_CP):
        bits = properties(cp)
        if bits != previous:
            ranges.append((cp, bits))
            previous = bits
    return ranges


def lowercase_tables():
    """str.lower() of each code point alone: single-code-point results as runs (first, last,
    stride, delta), multi-code-point results (U+0130 -> i + U+0307) listed apart."""
    single = []
    multi = []
    for cp in range(MAX_CP):
        if cp in SURROGATES:
            continue
        lower = chr(cp).lower()
        if lower == chr(cp):
            continue
        if len(lower) == 1:
            single.append((cp, ord(lower) - cp))
        else:
            multi.append((cp, [ord(x) for x in lower]))
    runs = []  # [first, last, stride, delta]
    for cp, delta in single:
        if runs:
            first, last, stride, d = runs[-1]
            if d == delta and (first == last and cp - last in (1, 2) or cp - last == stride):
                runs[-1] = [first, cp, cp - last, d]
                continue
        runs.append([cp, cp, 1, delta])
    return runs, multi


def decomposition_tables():
    """Full canonical decompositions (NFD of the code point alone; Hangul syllables are left to
    the algorithm), canonical combining classes as runs and the primary composites for NFC."""
    decompositions = []
    for cp in range(MAX_CP):
        if cp in SURROGATES or 0xAC00 <= cp <= 0xD7A3:
            continue
        nfd = unicodedata.normalize("NFD", chr(cp))
        if nfd != chr(cp):
            decompositions.append((cp, [ord(x) for x in nfd]))
    ccc_runs = []
    for cp in range(MAX_CP):
        ccc = 0 if cp in SURROGATES else unicodedata.combining(chr(cp))
        if ccc == 0:
            continue
        if ccc_runs and ccc_runs[-1][1] == cp - 1 and ccc_runs[-1][2] == ccc:
            ccc_runs[-1][1] = cp
        else:
            ccc_runs.append([cp, cp, ccc])
    compositions = []
    for cp in range(MAX_CP):
        if cp in SURROGATES or 0xAC00 <= cp <= 0xD7A3:
            continue
        mapping = unicodedata.decomposition(chr(cp))
        if not mapping or mapping.startswith("<"):
            continue
        parts = [int(x, 16) for x in mapping.split()]
        # A primary composite: a two-code-point canonical mapping that NFC keeps (composition
        # exclusions and non-starter decompositions normalise to something else).
        if len(parts) == 2 and unicodedata.normalize("NFC", chr(cp)) == chr(cp):
            compositions.append((parts[0], parts[1], cp))
    compositions.sort()
    return decompositions, ccc_runs, compositions


def literal_case_variants():
    variants = []
    for ch in CLIP_LITERAL_CHARS:
        pattern = regex.escape(ch)
        for cp in range(MAX_CP):
            if cp in SURROGATES or chr(cp) == ch:
                continue
            if regex.fullmatch(pattern, chr(cp), CLIP_FLAGS):
                variants.append((ord(ch), cp))
    return variants


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src" / "tokenizers" / "unicode_tables.inc"
    props = property_ranges()
    lower_runs, lower_multi = lowercase_tables()
    decompositions, ccc_runs, compositions = decomposition_tables()
    variants = literal_case_variants()

    lines = [
        "// Generated by tools/gen_unicode_tables.py: do not edit. Included by src/tokenizers/unicode.cpp only.",
        f"// Python {sys.version.split()[0]}, unicodedata {unicodedata.unidata_version}, regex {regex.__version__}.",
        "// The Unicode facts the slow transformers tokenizers get from Python and the regex module.",
        "",
        "namespace unicode_tables {",
        "",
        "// (first code point, property bits): the bits hold up to the next entry's first code point.",
        "constexpr PropertyRange kProperties[] = {",
    ]
    lines += wrap(f"{{0x{cp:X},0x{bits:X}}}" for cp, bits in props)
    lines += ["};", "", "// str.lower(): code points first..last in steps of stride map to cp + delta.",
              "constexpr LowercaseRun kLowercaseRuns[] = {"]
    lines += wrap(f"{{0x{a:X},0x{b:X},{s},{d}}}" for a, b, s, d in lower_runs)
    lines += ["};", "", "// str.lower() results longer than one code point.",
              "constexpr MultiLowercase kLowercaseMulti[] = {"]
    lines += wrap(f"{{0x{cp:X},{{{','.join(f'0x{x:X}' for x in seq)}}},{len(seq)}}}" for cp, seq in lower_multi)
    lines += ["};", "", "// Canonical combining classes: (first, last, class).",
              "constexpr CombiningRun kCombiningClasses[] = {"]
    lines += wrap(f"{{0x{a:X},0x{b:X},{c}}}" for a, b, c in ccc_runs)
    offsets = []
    data = []
    for cp, seq in decompositions:
        offsets.append((cp, len(data), len(seq)))
        data += seq
    lines += ["};", "", "// Full canonical decompositions (NFD of one code point, Hangul excluded):",
              "// (code point, offset into kDecompositionData, length).",
              "constexpr Decomposition kDecompositions[] = {"]
    lines += wrap(f"{{0x{cp:X},{o},{n}}}" for cp, o, n in offsets)
    lines += ["};", "constexpr char32_t kDecompositionData[] = {"]
    lines += wrap(f"0x{x:X}" for x in data)
    lines += ["};", "", "// Primary composites for NFC, sorted: (first, second, composite).",
              "constexpr Composition kCompositions[] = {"]
    lines += wrap(f"{{0x{a:X},0x{b:X},0x{c:X}}}" for a, b, c in compositions)
    lines += ["};", "", "// Code points the regex module matches to an ASCII literal of the CLIP pattern under",
              "// IGNORECASE: (literal, variant).",
              "constexpr LiteralVariant kLiteralCaseVariants[] = {"]
    lines += wrap(f"{{0x{a:X},0x{b:X}}}" for a, b in variants)
    lines += ["};", "", "}  // namespace unicode_tables", ""]
    out.write_text("\n".join(lines))
    print(f"{out}: {out.stat().st_size} bytes; {len(props)} property ranges, {len(lower_runs)} lowercase runs, "
          f"{len(decompositions)} decompositions, {len(compositions)} compositions, {len(variants)} literal variants",
          file=sys.stderr)


def wrap(items, width=110):
    lines, line = [], "  "
    for item in items:
        if len(line) + len(item) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = "  "
        line += item + ","
    if line.strip():
        lines.append(line.rstrip())
    return lines


if __name__ == "__main__":
    main()

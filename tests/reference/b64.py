"""Base64 (src/utils/base64.cpp) against Python's own base64 module: what the HTTP API's images go through.

Named b64.py, not base64.py: a module of that name here would shadow the standard library's.

ref/base64.json   {"encode": [{"bytes": hex, "text": base64.b64encode(bytes)}],
                   "decode": [{"text": str, "bytes": hex} or {"text": str, "error": message}]}
The decode cases are base64.b64decode(text) (validate=False, the default): valid encodings; with noise
characters, whitespace and line breaks inserted; padding missing, doubled or extra; '=' in the middle;
data after the padding; a leftover of one data character; non-ASCII text; the empty string.
"""
import base64
import binascii
import json
import random
from pathlib import Path

NOISE = " \t\r\n!#$%&*-.:;<>?@[]^_`{|}~\x00\x7f\x01"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def decode_case(text):
    try:
        return {"text": text, "bytes": base64.b64decode(text).hex()}
    except (binascii.Error, ValueError) as e:
        return {"text": text, "error": str(e)}


def mangled(rng, text):
    """One random mangling of a valid encoding."""
    kind = rng.randrange(8)
    pos = rng.randint(0, len(text))
    if kind == 0:  # noise characters anywhere
        for _ in range(rng.randint(1, 6)):
            pos = rng.randint(0, len(text))
            text = text[:pos] + rng.choice(NOISE) + text[pos:]
        return text
    if kind == 1:  # line breaks every 76 characters, as MIME writes it
        return "\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + "\n"
    if kind == 2:  # padding removed
        return text.rstrip("=")
    if kind == 3:  # extra padding at the end
        return text + "=" * rng.randint(1, 4)
    if kind == 4:  # '=' in the middle
        return text[:pos] + "=" * rng.randint(1, 3) + text[pos:]
    if kind == 5:  # data after the padding
        return text + "".join(rng.choice(ALPHABET + "=") for _ in range(rng.randint(1, 9)))
    if kind == 6:  # characters dropped: leftovers of 1, 2 or 3
        return text[:pos] + text[pos + rng.randint(1, 3):]
    return "".join(rng.choice(ALPHABET + "=" + NOISE) for _ in range(rng.randint(0, 24)))  # random text


HAND = ["", "=", "==", "====", "a", "ab", "abc", "abcd", "abcde", "YQ", "YQ=", "YQ==", "YQ===", "YWI", "YWI=",
        "Y===", "=YQ==", "ab=cdef=xy==", "ab=cdef=", "ab==cd", "abcd=efgh", "YQ==YQ==", "ab=c=", "a=b=c=d",
        "Zm9v\nYmFy\n", " Zm9vYg == ", "Zm9v!YmE=", "\u00e9", "Zm9v\u00e9", "Zm9v\u4e2d\u6587", "\x00\x00",
        "////", "++++", "-_-_", "AAAAAAA", "AAAAA"]


def make(out: Path, full: bool):
    rng = random.Random(27)
    encode, decode = [], [decode_case(t) for t in HAND]
    for i in range(240):
        n = i if i < 40 else rng.randint(0, 300)
        data = bytes(rng.randrange(256) for _ in range(n))
        text = base64.b64encode(data).decode()
        encode.append({"bytes": data.hex(), "text": text})
        decode.append(decode_case(text if i % 3 == 0 else mangled(rng, text)))
    decode += [decode_case(mangled(rng, "Zm9vYmFy")[:rng.randint(0, 12)] + "\u4e2d") for _ in range(5)]
    (out / "ref").mkdir(parents=True, exist_ok=True)
    (out / "ref" / "base64.json").write_text(json.dumps({"encode": encode, "decode": decode}, ensure_ascii=False))

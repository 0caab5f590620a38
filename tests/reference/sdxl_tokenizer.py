"""Goldens for the SDXL tokenizers (src/tokenizers/, tests/tokenizers/test_tokenizer_sdxl.cpp) and SDXL
textual-inversion files (src/loaders/textual_inversion*.cpp, tests/loaders/test_textual_inversion.cpp).

The tokenizers are transformers' slow CLIPTokenizer, loaded with from_pretrained as diffusers'
StableDiffusionXLPipeline loads them, from the fixture pipelines of tests/reference/sdxl.py: tiny-taiyi-xl
(Taiyi-XL's old-style folders: 8067 added tokens from added_tokens.json, model_max_length 512) and tiny-sdxl
(plain CLIP 77; tokenizer_2 pads with "!", id 0), plus one folder written here, taiyi-xl-multichar: Taiyi-XL's
tokenizer with a few multi-character added tokens, for the trie's longest match among 8000 single ones.

ref/sdxl_tokenizer.json
  "texts": [text, ...]
  "sets": {"<folder>/<tokenizer>": {"dir", "model_max_length", "pad_token_id", "vocab_size" (len(tokenizer)),
           "encode": [ids, ...]      tokenizer(text, padding="max_length", max_length=model_max_length, truncation=True)
           "content": [ids, ...]     tokenizer(text, add_special_tokens=False, truncation=False), as the web UI
                                     tokenizes prompt fragments
           "tokens": [[str], ...]    convert_ids_to_tokens of "content"
           "commas": [[bool], ...]   per content id: does it end a comma, for the web UI's chunking rule (comma_flags)}}
ref/sdxl_embeddings/*.safetensors  SDXL textual-inversion files ({"clip_l": [n, 32], "clip_g": [n, 48]}, the
                                   web UI's and diffusers' SDXL format, sized for the tiny encoders) and an SD1
                                   one ({"emb_params": [n, 32]}).
ref/sdxl_embeddings.json  per SDXL file: n, and after diffusers' two load_textual_inversion calls on tiny-sdxl
                          (clip_l into text_encoder / tokenizer, clip_g into text_encoder_2 / tokenizer_2, token =
                          the file's stem), each tokenizer's ids for a prompt using the token (as encode_prompt
                          tokenizes it: maybe_convert_prompt, then padding to 77) and len(tokenizer).
ref/sdxl_embeddings.safetensors  "<stem>.clip_l" / ".clip_g" (the file's values) and "<stem>.prompt_embeds" /
                                 ".pooled_prompt_embeds" (encode_prompt on that prompt, no guidance).
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import sdxl  # noqa: E402  (tests/reference/sdxl.py: the fixture pipelines)

# taiyi's chunking rule: the web UI's comma token ",</w>", and the full-width and ideographic commas, which
# are one added token each in Taiyi-XL's vocabulary and several byte-level tokens otherwise.
COMMAS = (",", "，", "、")
MULTICHAR = {"——": 57475, "水墨画": 57476, "水墨": 57477, "<lora>": 57478, "ab": 57479}

TEXTS = [
    "飞流直下三千尺，疑是银河落九天。",
    "一只穿着宇航服的哈士奇在月球上行走，背景是地球，高清，细节丰富，电影灯光，8k",
    "小桥流水人家",
    "一只猫 in the garden, 油画风格",
    "masterpiece, best quality, 古风少女，长发，汉服, highly detailed",
    "Van Gogh的星空，Starry Night",
    "abc你好def",
    "hello，world。HELLO！",
    "🐱 猫咪 😺🌸",
    "👨‍👩‍👧‍👦一家人🇨🇳",
    "，。！？：；（）【】《》“”",
    "‘引号’「直角」『双』〈单〉〔括〕…—–",
    "（不是括号）、【也不是】",
    "龘",
    "龘靐齉",
    "𠀀𪜀 㐀",
    "ABC DEF 大写 XYZ",
    "ＡＢＣ＃１２３＠ｘ",
    "CAFÉ Crème brûlée 北京",
    "  前后  空格  ",
    "\t制表\t符\n换行\r\n回车",
    "全角\u3000空格\u00a0不换行",
    "零宽\u200b字符\ufeff",
    "hello!! wow! ! 你好!",
    "<|endoftext|>文字<|startoftext|>",
    "don't 我's it's",
    "2023年12月31日 3.14",
    "水墨画 龙，——水墨",
    "ab abc <lora> 水墨画画",
    "a，b、c,d ，、,",
    "",
    "一只猫" * 200,
    ("masterpiece, 古风 " * 40)[:600],
    "猫" * 510,
    "猫" * 511,
]


def comma_flags(tokenizer, ids):
    """Per content id: does it end a comma. An added token (split out before BPE) is one when it is a comma
    itself; a byte-level word when it is ",</w>" or its text ends in a full-width or ideographic comma (flagged
    at its last token), as tests/reference/prompts.py's comma_flags has it for tokenizers without added tokens."""
    added = set(tokenizer.added_tokens_decoder)
    flags, word = [], []
    for i, t in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if i in added:
            flags.append(t in COMMAS)
            word = []
            continue
        word.append(t)
        flags.append(t == ",</w>")
        if t.endswith("</w>"):
            text = bytearray(tokenizer.byte_decoder[c] for c in "".join(word)[:-4]).decode("utf-8", "replace")
            if text.endswith(COMMAS[1:]):
                flags[-1] = True
            word = []
    return flags


def tokenizer_set(tokenizer, folder):
    out = dict(dir=folder, model_max_length=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id,
               vocab_size=len(tokenizer), encode=[], content=[], tokens=[], commas=[])
    for text in TEXTS:
        out["encode"].append(tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                                       truncation=True).input_ids)
        content = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        out["content"].append(content)
        out["tokens"].append(tokenizer.convert_ids_to_tokens(content))
        out["commas"].append(comma_flags(tokenizer, content))
    return out


def write_multichar_folder(out: Path) -> Path:
    folder = out / "ref" / "sdxl_tokenizer" / "taiyi-xl-multichar"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(out / "tiny-taiyi-xl" / "tokenizer", folder)
    added = json.loads((folder / "added_tokens.json").read_text("utf-8"))
    added.update(MULTICHAR)
    (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False) + "\n", "utf-8")
    return folder


def make_tokenizer_goldens(out: Path):
    from transformers import CLIPTokenizer

    sets = {}
    for model in ("tiny-taiyi-xl", "tiny-sdxl"):
        for sub in ("tokenizer", "tokenizer_2"):
            sets[f"{model}/{sub}"] = tokenizer_set(CLIPTokenizer.from_pretrained(out / model / sub), f"{model}/{sub}")
    multichar = write_multichar_folder(out)
    sets["taiyi-xl-multichar"] = tokenizer_set(CLIPTokenizer.from_pretrained(multichar),
                                               str(multichar.relative_to(out)))
    golden = dict(texts=TEXTS, sets=sets)
    (out / "ref" / "sdxl_tokenizer.json").write_text(json.dumps(golden, ensure_ascii=False) + "\n", "utf-8")


# SDXL embedding files: (stem, vectors); the prompt that uses each.
EMBEDDINGS = [("xl-style", 1), ("xl-three", 3)]
EMBEDDING_PROMPT = "a photo in {} style, 水墨"


def make_embedding_goldens(out: Path):
    folder = out / "ref" / "sdxl_embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(29)
    tensors, cases = {}, {}
    for stem, n in EMBEDDINGS:
        data = {"clip_l": torch.randn(n, 32, generator=g), "clip_g": torch.randn(n, 48, generator=g)}
        save_file(data, str(folder / f"{stem}.safetensors"))
        pipe = sdxl.load_sdxl(out / "tiny-sdxl")
        pipe.load_textual_inversion(data["clip_l"], token=stem, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(data["clip_g"], token=stem, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        prompt = EMBEDDING_PROMPT.format(stem)
        # encode_prompt's maybe_convert_prompt first: a multi-vector token stands for NAME NAME_1 ...
        ids = [tok(pipe.maybe_convert_prompt(prompt, tok), padding="max_length", max_length=tok.model_max_length,
                   truncation=True).input_ids for tok in (pipe.tokenizer, pipe.tokenizer_2)]
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
        cases[stem] = dict(vectors=n, prompt=prompt, ids_1=ids[0], ids_2=ids[1],
                           vocab_size_1=len(pipe.tokenizer), vocab_size_2=len(pipe.tokenizer_2))
        tensors.update({f"{stem}.clip_l": data["clip_l"], f"{stem}.clip_g": data["clip_g"],
                        f"{stem}.prompt_embeds": embeds[0].contiguous(),
                        f"{stem}.pooled_prompt_embeds": pooled[0].contiguous()})
    # An SD 1 file (the web UI's emb_params) for the model-mismatch error.
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, str(folder / "sd1-style.safetensors"))
    save_file(tensors, str(out / "ref" / "sdxl_embeddings.safetensors"))
    (out / "ref" / "sdxl_embeddings.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n", "utf-8")


def make(out: Path, full: bool):
    make_tokenizer_goldens(out)
    make_embedding_goldens(out)

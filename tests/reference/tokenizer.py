"""Goldens for the tokenizers (src/tokenizers/tokenization_clip.cpp, tokenization_bert.cpp): transformers' slow CLIPTokenizer and BertTokenizer,
loaded with from_pretrained from the fixture pipelines' tokenizer folders as diffusers loads them, and
called as StableDiffusionPipeline calls them:
tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).

ref/tokenizer_prompts.json   {"clip": [prompt, ...], "bert": [...], "variants": [...], "tokens": {...}}
ref/tokenizer.safetensors    "<set>.ids" [N, model_max_length] and "<set>.content_tokens" [N] (the
                             content ids before truncation) for the sets clip, bert and each variant.
ref/tokenizer-variants/<name>/  extra tokenizer folders written in other styles (the hub's older
                             configs, SD 2's pad "!", special-token flags, BERT options); each variant
                             is run on the first VARIANT_PROMPTS prompts of its family.
Ids are stored as float32 (exact: every id is below 2^24) because taiyi's safetensors reader takes
float tensors only; the test converts them back to int64.

The prompts are made here, deterministically (fixed seed): hand-written cases (Chinese, English,
mixed, full-width punctuation, emoji with ZWJ and skin tones, NFC and NFD accents, Greek final sigma,
Cyrillic, Arabic, Hangul and conjoining jamo, kana, CJK compatibility ideographs, digits, whitespace
runs, control characters, literal special tokens, full-width Latin, Turkish İ, ligatures, combining
marks, far-too-long text, the empty string), random mixtures of those fragments, and sweeps over the
code points where Python's Unicode answers change (category, case mapping, decomposition, combining
class), so that the C++ tables are checked near every boundary.
"""
import json
import random
import shutil
import unicodedata
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 20240531
RANDOM_PROMPTS = 460
VARIANT_PROMPTS = 200
TOKENS_SHOWN = 40  # prompts whose token strings are recorded (Encoding.tokens)

CHINESE = ["小桥流水人家", "飞流直下三千尺，疑是银河落九天。", "一只可爱的猫咪坐在窗台上", "赛博朋克风格的城市夜景",
           "中国山水画", "古风少女，高清，4k", "梵高风格的星空", "清明上河图", "水墨画 龙", "春眠不觉晓！处处闻啼鸟；",
           "铁马冰河入梦来", "日照香炉生紫烟", "𠀀𠀁𪜀", "㐀㐁", "〇", "我爱北京天安门"]
ENGLISH = ["a photo of an astronaut riding a horse on mars", "Portrait of a woman, highly detailed, trending on artstation",
           "don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "WE'RE", "O'Neil's", "''s",
           "a cat's toy", "rock'n'roll", "hello world!!!", "8k uhd, dslr, soft lighting, high quality, film grain",
           "state-of-the-art", "e-mail: test@example.com", "C++ & Python", "$100 (USD) ~ #1 ^_^ `code`", "...", "A.I."]
PUNCTUATION = ["，", "。", "！", "；", "：", "？", "（", "）", "【", "】", "《", "》", "“", "”", "、", "…", "——", "「」",
               "﹏", "〜", "·", "¿", "¡", "«»", "‰", "§", "¶", "†", "\"", "'", "!?", "„", "‹›"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇨🇳", "🐱", "✨", "👩🏿‍💻", "🧑‍🚀", "☕", "⚡️", "©", "®", "™", "🀄", "🈶"]
ACCENTED = ["café", "Crème brûlée", "naïve", "Ångström", "Über", "señor", "façade", "Dvořák", "Ærøskøbing", "Łódź",
            "Việt Nam", "Ørsted", "smörgåsbord", "ÉCOLE", "Ça"]
ACCENTED_NFD = [unicodedata.normalize("NFD", s) for s in ACCENTED]
SCRIPTS = ["Οδυσσεύς", "ΟΔΟΣ", "ΟΔΟΣ.", "Σίσυφος", "ΣΣ", "Σ", "ΑΣ'Σ", "αβγ ΑΒΓ", "ΣΑ", "Σ̈Α", "ΑΣ̈", "Москва", "ПРИВЕТ мир",
           "Ёлка", "مرحبا بالعالم", "١٢٣", "안녕하세요", "한국어", "\u1100\u1161\u11a8", "\u1112\u1161\u11ab",
           "こんにちは", "カタカナ", "ｶﾀｶﾅ", "ひらがな・カタカナ", "שלום", "नमस्ते", "ภาษาไทย", "ᏣᎳᎩ", "Ꭰ"]
CJK_COMPAT = ["\uf900\uf901", "豈更車", "\ufa0e\ufa0f", "\U0002F800\U0002F801", "\uf91f", "\ufa6a"]
DIGITS = ["1234567890", "２０２３年", "٣٤٥", "①②③", "Ⅻ", "½", "3.14159", "10,000", "²³", "𝟙𝟚", "0x1F"]
WHITESPACE = ["  ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2028", "\u2029", "\u2003", "\u202f", " \t \n ", "\x0b",
              "\x0c", "\x1c", "\x85", "\u1680", "\u205f"]
CONTROL = ["\x00", "\x07", "\u200b", "\ufeff", "\ufffd", "\x7f", "\x1f", "\u00ad", "\u200d", "\u200e", "\u2060",
           "\U000E0041", "\ue000", "\U000F0000", "\u0378", "\U0001FFFE", "\x9f"]
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|EndOfText|>", "<|endoftext|", "<|endoftext|><|startoftext|>",
            "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[cls]", "[Mask]", "[CLS][SEP]", "x[SEP]y", "!", "!!",
            "<|ſtartoftext|>", "it'ſ", "'ſ", "'K", "'Ｓ"]
FULL_WIDTH = ["ＡＢＣ ａｂｃ", "Ｈｅｌｌｏ，Ｗｏｒｌｄ！", "ＤＯＮ＇Ｔ", "１２３"]
TURKISH = ["İstanbul", "ıi", "DİYARBAKIR", "İ", "i̇", "IĞDIR"]
LIGATURES = ["ﬁnance", "ﬂower", "ﬀ", "ǅ", "ǲ", "ß", "ẞ", "ŉ", "Ǆ", "ﬆ"]
COMBINING = ["e\u0301", "a\u0308\u0301", "\u0301start", "q\u0307\u0323", "\u0345", "ᾳ", "ᾼ", "A\u030a", "\u212b", "\u1e9b\u0323",
             "\u0041\u0316\u0300", "o\u0328\u0304", "\u0300\u0300\u0300", "a\u20dd", "x\u034f\u0301", "\u0f73", "\u0344",
             "\u0958", "\u2126", "\u00c5\u0300"]
POOLS = [CHINESE, ENGLISH, PUNCTUATION, EMOJI, ACCENTED, ACCENTED_NFD, SCRIPTS, CJK_COMPAT, DIGITS, WHITESPACE,
         CONTROL, SPECIALS, FULL_WIDTH, TURKISH, LIGATURES, COMBINING]
SEPARATORS = [" ", "", ", ", "，", "\t", "  ", "\n", "。", " | "]
# Blocks that random characters are drawn from.
RANDOM_BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x3040, 0x30FF),
                 (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1100, 0x11FF), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF),
                 (0x2000, 0x206F), (0x1E00, 0x1EFF), (0xF900, 0xFAFF), (0x0, 0x1F)]


# First in the list, so that every variant folder sees them: the added and special tokens in context.
SPECIAL_CONTEXTS = [
    "hello<|endoftext|>world", "hello <|endoftext|> world", " <|startoftext|>hi<|endoftext|> ", "x<|endoftext|>",
    "!<|endoftext|>", "<|endoftext|>!", "wow!!! really!", "a!b", "! ! !", "<|ENDOFTEXT|> yes", "<|endoftext|><|endoftext|>",
    "a<|sks|>b", "a <|sks|> b", "<|sks|>dog", "a dog<|sks|>", "<|sks|><|sks|>", "photo of <|sks|> dog", "x<|sks|> y",
    "[CLS] 你好 [SEP] 世界 [MASK]", "你好[SEP]世界", "[UNK][UNK]", "[cls] [Sep]", "a[PAD]b", "[MASK]ed",
    "Hello world", "Hello, [foo] bar", "[foo][foo] HELLO Hello.", "Héllo [FOO]",
]


def handwritten():
    prompts = ["", " ", "a", "A", "小", "。", "\x00", "<|endoftext|>", "[CLS]"] + SPECIAL_CONTEXTS
    for pool in POOLS:
        prompts += pool
    prompts += [
        "小桥流水人家, a painting in the style of 清明上河图",
        "一只猫，坐在月亮上。A cat sitting on the moon!",
        "油画：山水（宋代）【高清】《千里江山图》",
        "masterpiece, best quality, 1girl, 汉服, 长发",
        "Café ｃａｆé CAFÉ", "naïve naı̈ve", "ΟΔΟΣ ΟΔΟΣ. ΣΑ Σ", "İstanbul'da", "ﬁ ﬂ ﬃ",
        "\x00\x07abc\u200b\ufeffdef\ufffd\x7f", "tab\tnew\nline\r\nend", "a\u3000b\u00a0c",
        "   leading and trailing   ", "multiple     spaces", "\n\n\n", "\t\t",
        "👨‍👩‍👧‍👦👍🏽🏳️‍🌈", "emoji 😀 in text 🐱", "한국어 텍스트", "日本語のテキスト", "Привет, мир!",
        "e\u0301e\u0301e\u0301", "\uf900\uf901\uf902 compat", "123 456 7890", "3.14 2,000 1e10",
        "it's don't won't they'll i'd we've you're", "IT'S DON'T", "'s 't 're 've 'm 'll 'd",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "a" * 101, "猫" * 101, "x" * 300, "ab" * 200,
        # Long words of varied letters: the C++ BPE merges with a heap, not Python's quadratic loop.
        "".join("etaoinshrdlucmfwyp"[(i * 7 + i // 13) % 18] for i in range(3000)),
        "".join("thequickbrownfoxjumps"[(i * i + 3 * i) % 21] for i in range(1500)),
    ]
    # Far over both limits (77 and 512).
    prompts += ["一只可爱的猫咪坐在窗台上，" * 60, "a photo of an astronaut riding a horse on mars, " * 60,
                "小桥流水人家 small bridge " * 80, " ".join(str(i) for i in range(800)),
                "".join(chr(0x4E00 + i) for i in range(1200)), "😀" * 300, "ΟΔΟΣ " * 200]
    return prompts


def random_prompts(rng: random.Random, count: int):
    prompts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.8:
                part = rng.choice(rng.choice(POOLS))
                if rng.random() < 0.15:
                    part = part.upper()
            else:
                lo, hi = rng.choice(RANDOM_BLOCKS)
                part = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))
            parts.append(part)
        text = ""
        for i, part in enumerate(parts):
            text += (rng.choice(SEPARATORS) if i else "") + part
        if rng.random() < 0.1:
            text = unicodedata.normalize(rng.choice(["NFD", "NFC", "NFKD"]), text)
        prompts.append(text)
    return prompts


def interesting_code_points():
    """The code points around which Python's answers change: the first and last of every run of
    equal (category, combining class, isspace, has lower-case mapping, has decomposition), and every
    code point that lower-cases or decomposes."""
    points = set()
    previous = None
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        lower = c.lower()
        decomposed = unicodedata.normalize("NFD", c)
        key = (unicodedata.category(c), unicodedata.combining(c), c.isspace(), lower != c, decomposed != c)
        if lower != c or (decomposed != c and not 0xAC00 <= cp <= 0xD7A3):
            points.add(cp)
        if key != previous:
            points.add(cp)
            if cp > 0 and not 0xD800 <= cp - 1 < 0xE000:
                points.add(cp - 1)
            previous = key
    # A sample of Hangul syllables and unassigned / private-use planes.
    points.update(range(0xAC00, 0xD7A4, 97))
    points.update([0xD7A3, 0x10FFFF, 0xF0000, 0x100000, 0x10FFFD, 0xE0001, 0xE007F])
    return sorted(points)


def packed(tokenizer, pieces, budget):
    """Pieces joined into prompts of at most `budget` content tokens each (no truncation)."""
    prompts, current, used = [], "", 0
    for piece in pieces:
        n = len(tokenizer.tokenize(piece))
        if current and used + n > budget:
            prompts.append(current)
            current, used = "", 0
        current += piece
        used += n
    if current:
        prompts.append(current)
    return prompts


def sweep_prompts(tokenizer, family: str):
    points = interesting_code_points()
    if family == "clip":
        # "z<c>5 ": shows whether c is a letter (joins z), a number, other, space or dropped.
        pieces = [f"z{chr(cp)}5 " for cp in points]
        # NFD forms, to check NFC composition.
        pieces += [f"z{unicodedata.normalize('NFD', chr(cp))}5 " for cp in points
                   if unicodedata.normalize("NFD", chr(cp)) != chr(cp)]
        # Final sigma around each case-ignorable or cased candidate.
        pieces += [f"A{chr(cp)}Σ ΑΣ{chr(cp)} " for cp in points[::3]]
        return packed(tokenizer, pieces, tokenizer.model_max_length - 2)
    pieces = [f"{chr(cp)} a{chr(cp)}b " for cp in points]
    pieces += [f"{unicodedata.normalize('NFD', chr(cp))} " for cp in points
               if unicodedata.normalize("NFD", chr(cp)) != chr(cp)]
    return packed(tokenizer, pieces, tokenizer.model_max_length - 2)


def encode(tokenizer, prompts):
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    content = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    return torch.tensor(ids, dtype=torch.float32), torch.tensor(content, dtype=torch.float32)


def write_json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", "utf-8")


def make_variants(out: Path):
    """Tokenizer folders in the other styles taiyi must read as transformers does."""
    variants_dir = out / "ref" / "tokenizer-variants"
    if variants_dir.exists():
        shutil.rmtree(variants_dir)
    clip_src = out / "tiny-clip" / "tokenizer"
    bert_src = out / "tiny-bert" / "tokenizer"

    def added(content, **flags):
        return dict({"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False,
                     "__type": "AddedToken"}, **flags)

    def strip_type(token):
        return {k: v for k, v in token.items() if k != "__type"}

    variants = []

    def variant(name, family, src, files, config):
        folder = variants_dir / name
        folder.mkdir(parents=True)
        for f in files:
            shutil.copy(src / f, folder / f)
        for file_name, data in config.items():
            write_json(folder / file_name, data)
        variants.append({"name": name, "family": family, "dir": f"ref/tokenizer-variants/{name}"})

    clip_files = ["vocab.json", "merges.txt"]
    # openai/clip-vit-large-patch14 as SD v1.4 ships it: no added_tokens_decoder, AddedToken dicts.
    variant("clip-hub", "clip", clip_src, clip_files, {
        "tokenizer_config.json": {
            "unk_token": added("<|endoftext|>"), "bos_token": added("<|startoftext|>"),
            "eos_token": added("<|endoftext|>"), "pad_token": "<|endoftext|>", "add_prefix_space": False,
            "errors": "replace", "do_lower_case": True, "name_or_path": "openai/clip-vit-large-patch14",
            "model_max_length": 77, "special_tokens_map_file": "./special_tokens_map.json",
            "tokenizer_class": "CLIPTokenizer"},
        "special_tokens_map.json": {
            "bos_token": strip_type(added("<|startoftext|>")), "eos_token": strip_type(added("<|endoftext|>")),
            "pad_token": "<|endoftext|>", "unk_token": strip_type(added("<|endoftext|>"))}})
    # stabilityai/stable-diffusion-2: pad "!", which then is split out of the text as an added token.
    variant("clip-sd2", "clip", clip_src, clip_files, {
        "tokenizer_config.json": {
            "add_prefix_space": False, "bos_token": added("<|startoftext|>"), "do_lower_case": True,
            "eos_token": added("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
            "name_or_path": "openai/clip-vit-large-patch14", "pad_token": "!",
            "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
            "unk_token": added("<|endoftext|>")},
        "special_tokens_map.json": {
            "bos_token": strip_type(added("<|startoftext|>")), "eos_token": strip_type(added("<|endoftext|>")),
            "pad_token": "!", "unk_token": strip_type(added("<|endoftext|>"))}})
    # Special-token flags, an extra special token, left truncation and padding, a shorter length.
    clip_config = json.loads((clip_src / "tokenizer_config.json").read_text("utf-8"))
    clip_config["added_tokens_decoder"]["49407"].update(lstrip=True, rstrip=True)
    clip_config["added_tokens_decoder"]["49408"] = {"content": "<|sks|>", "lstrip": False, "normalized": False,
                                                    "rstrip": False, "single_word": True, "special": True}
    clip_config.update(additional_special_tokens=["<|sks|>"], truncation_side="left", padding_side="left",
                       model_max_length=40)
    variant("clip-flags", "clip", clip_src, clip_files, {"tokenizer_config.json": clip_config})

    bert_files = ["vocab.txt"]
    bert_config = json.loads((bert_src / "tokenizer_config.json").read_text("utf-8"))
    options = dict(bert_config, do_lower_case=False, strip_accents=True, tokenize_chinese_chars=False,
                   never_split=["Hello", "[foo]"], model_max_length=64)
    variant("bert-options", "bert", bert_src, bert_files, {"tokenizer_config.json": options})
    accents = dict(bert_config, do_lower_case=True, strip_accents=False, model_max_length=96)
    variant("bert-keep-accents", "bert", bert_src, bert_files, {"tokenizer_config.json": accents})
    no_basic = dict(bert_config, do_basic_tokenize=False, model_max_length=48)
    variant("bert-no-basic", "bert", bert_src, bert_files, {"tokenizer_config.json": no_basic})
    # The older layout: no added_tokens_decoder, special tokens from special_tokens_map.json only.
    legacy = {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}
    variant("bert-legacy", "bert", bert_src, bert_files, {
        "tokenizer_config.json": legacy,
        "special_tokens_map.json": {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                    "cls_token": "[CLS]", "mask_token": "[MASK]"}})
    # No tokenizer_config.json at all (constructor defaults; taiyi assumes length 512).
    variant("bert-bare", "bert", bert_src, bert_files, {})
    return variants


def make(out: Path, full: bool):
    from transformers import BertTokenizer, CLIPTokenizer

    rng = random.Random(SEED)
    clip = CLIPTokenizer.from_pretrained(out / "tiny-clip" / "tokenizer")
    bert = BertTokenizer.from_pretrained(out / "tiny-bert" / "tokenizer")
    common = handwritten() + random_prompts(rng, RANDOM_PROMPTS)
    prompts = {"clip": common + sweep_prompts(clip, "clip"), "bert": common + sweep_prompts(bert, "bert")}

    tensors = {}
    tokens = {}
    for family, tokenizer in (("clip", clip), ("bert", bert)):
        ids, content = encode(tokenizer, prompts[family])
        tensors[f"{family}.ids"] = ids
        tensors[f"{family}.content_tokens"] = content
        tokens[family] = [tokenizer.convert_ids_to_tokens(row) for row in ids[:TOKENS_SHOWN].long().tolist()]

    variants = make_variants(out)
    for v in variants:
        tokenizer_class = CLIPTokenizer if v["family"] == "clip" else BertTokenizer
        tokenizer = tokenizer_class.from_pretrained(out / v["dir"])
        v["prompts"] = VARIANT_PROMPTS
        v["model_max_length"] = tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else None
        if v["model_max_length"] is None:  # no tokenizer_config.json: taiyi pads to the encoder's 512
            tokenizer.model_max_length = 512
        ids, content = encode(tokenizer, prompts[v["family"]][:VARIANT_PROMPTS])
        tensors[f"{v['name']}.ids"] = ids
        tensors[f"{v['name']}.content_tokens"] = content

    write_json(out / "ref" / "tokenizer_prompts.json", {"clip": prompts["clip"], "bert": prompts["bert"],
                                                        "variants": variants, "tokens": tokens})
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(out / "ref" / "tokenizer.safetensors"))

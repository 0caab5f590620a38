"""Long and weighted prompts (src/pipelines/prompt_parser.cpp, Pipeline::encode_prompt) on the tiny pipelines, fp32, CPU.

diffusers truncates prompts at the tokenizer's length and has no emphasis syntax, so for them the reference
is the AUTOMATIC1111 web UI's published algorithm (modules/prompt_parser.py parse_prompt_attention,
modules/sd_hijack_clip.py tokenize_line / process_tokens), written again here in Python from its
description, on top of transformers' tokenizers and text models and diffusers' StableDiffusionPipeline:

- parsing: "(a)" x1.1, "[a]" /1.1, "(a:w)", escapes, unbalanced brackets, equal weights merged; BREAK a
  break wherever it stands (the web UI turns a BREAK inside brackets into the word, taiyi does not);
  weights as ASCII digits (the web UI's \\d also takes other scripts' digits);
- chunks of model_max_length - 2 tokens, each fragment tokenized on its own (add_special_tokens=False),
  a full chunk cut after its last comma within 20 tokens (",</w>", and here a word ending in "，" or
  "、"; for BERT the tokens ",", "，", "、"), BREAK ending a chunk; each chunk laid out as the tokenizer
  pads a prompt (BOS + content + EOS + padding);
- each chunk through the text model (clip skip N: diffusers' hidden_states[-N] + final_layer_norm), a
  weighted chunk multiplied by its weights and rescaled to its unweighted mean, chunks concatenated;
  the shorter of prompt and negative prompt padded with the encoding of "" (the web UI's pad_cond);
- the image: StableDiffusionPipeline(prompt_embeds=..., negative_prompt_embeds=...).

ref/prompt_parser_cases.json   [{"prompt", "fragments": [[text, weight, is_break], ...]} or {"prompt", "error"}]
ref/prompt_chunk_cases.json    [{"model", "prompt", "chunks": [{"ids", "weights", "cut"}]}]
ref/prompt_cases.json, ref/prompts.safetensors   end-to-end cases: "<case>.prompt_embeds",
                               "<case>.negative_prompt_embeds" [1, L*k, D] and "<case>.images" [N, H, W, 3]
ref/prompt_full_cases.json, ref/prompts_full.safetensors   FULL_CASES on full-clip / full-bert (--full only):
                               "<case>.prompt_embeds"
"""
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

COMMA_BACKTRACK = 20
ROUND, SQUARE = 1.1, 1 / 1.1

# One alternation, tried in order at each position, as the web UI's re_attention.
ATTENTION = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.0-9]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse(prompt):
    """[[text, weight, is_break], ...] as src/pipelines/prompt_parser.cpp's parse_prompt_attention."""
    out, round_open, square_open = [], [], []

    def scale(start, factor):
        for item in out[start:]:
            if not item[2]:
                item[1] *= factor

    for m in ATTENTION.finditer(prompt):
        text, number = m.group(0), m.group(1)
        if text.startswith("\\"):
            out.append([text[1:], 1.0, False])
        elif text == "(":
            round_open.append(len(out))
        elif text == "[":
            square_open.append(len(out))
        elif number is not None and round_open:
            scale(round_open.pop(), float(number))  # ValueError for "1.2.3", as in the web UI
        elif text == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif text == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(BREAK.split(text)):
                if i:
                    out.append(["", 1.0, True])
                out.append([part, 1.0, False])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    if not out:
        out = [["", 1.0, False]]
    merged = []
    for item in out:
        if merged and not item[2] and not merged[-1][2] and merged[-1][1] == item[1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged


def comma_flags(tokenizer, ids):
    """Per token: does it end a comma."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if not hasattr(tokenizer, "byte_decoder"):  # BERT: punctuation is a token of its own
        return [t in (",", "，", "、") for t in tokens]
    flags, word = [], []
    for t in tokens:
        word.append(t)
        flags.append(t == ",</w>")
        if t.endswith("</w>"):
            text = bytearray(tokenizer.byte_decoder[c] for c in "".join(word)[:-4]).decode("utf-8", "replace")
            if text.endswith(("，", "、")):
                flags[-1] = True
            word = []
    return flags


def layout(tokenizer, content, weights):
    """The tokenizer's own padding of content ids (BOS + content + EOS + pad, on its padding side)."""
    length = tokenizer.model_max_length
    ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id] + content
    ids.append(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id)
    w = [1.0] + weights + [1.0]
    pad = length - len(ids)
    if tokenizer.padding_side == "left":
        return [tokenizer.pad_token_id] * pad + ids, [1.0] * pad + w
    return ids + [tokenizer.pad_token_id] * pad, w + [1.0] * pad


def chunks_of(tokenizer, prompt):
    """[{"ids", "weights", "cut"}] as src/pipelines/prompt_parser.cpp's tokenize_prompt."""
    size = tokenizer.model_max_length - 2
    chunks, ids, weights, last_comma = [], [], [], None

    def close(cut):
        nonlocal ids, weights, last_comma
        full_ids, full_weights = layout(tokenizer, ids, weights)
        chunks.append(dict(ids=full_ids, weights=full_weights, cut=cut))
        ids, weights, last_comma = [], [], None

    for text, weight, is_break in parse(prompt):
        if is_break:
            close("BREAK")
            continue
        fragment = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        for token, comma in zip(fragment, comma_flags(tokenizer, fragment)):
            if comma:
                last_comma = len(ids)
            elif len(ids) == size and last_comma is not None and len(ids) - last_comma <= COMMA_BACKTRACK:
                keep = last_comma + 1
                moved_ids, moved_weights = ids[keep:], weights[keep:]
                ids, weights = ids[:keep], weights[:keep]
                close("comma")
                ids, weights = moved_ids, moved_weights
            if len(ids) == size:
                close("full")
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close("end")
    return chunks


def encode_chunk(text_encoder, ids, clip_skip):
    input_ids = torch.tensor([ids])
    if clip_skip == 1:
        return text_encoder(input_ids)[0]
    # StableDiffusionPipeline.encode_prompt with clip_skip = N - 1.
    hidden = text_encoder(input_ids, output_hidden_states=True)[-1][-clip_skip]
    return text_encoder.text_model.final_layer_norm(hidden)


def embed(pipe, prompt, clip_skip):
    parts = []
    for chunk in chunks_of(pipe.tokenizer, prompt):
        z = encode_chunk(pipe.text_encoder, chunk["ids"], clip_skip)
        if any(w != 1.0 for w in chunk["weights"]):
            multipliers = torch.tensor(chunk["weights"], dtype=torch.float32).reshape(1, -1, 1)
            original_mean = z.mean()
            z = z * multipliers
            z = z * (original_mean / z.mean())
        parts.append(z)
    return torch.cat(parts, dim=1)


def pad_to(pipe, z, length, clip_skip):
    if z.shape[1] == length:
        return z
    empty = embed(pipe, "", clip_skip)
    return torch.cat([z, empty.repeat(1, (length - z.shape[1]) // empty.shape[1], 1)], dim=1)


# The 99-token prompt: two chunks, the first cut after "，" (the full-width comma).
LONG_ZH = "一只穿着宇航服的哈士奇在月球上行走，背景是地球，高清，细节丰富，电影灯光，8k"
LONG_EN = ("a quiet village by a river, stone bridge, willow trees, morning mist, soft light, oil painting, "
           "highly detailed, masterpiece, best quality, warm colors, reflections on the water, a small boat, "
           "fishermen, distant mountains, clouds, birds in the sky, lanterns, red roofs, cobblestone street, "
           "children playing, cherry blossoms, spring, golden hour, cinematic lighting, 8k, sharp focus")


def case(name, model, prompt, negative_prompt="", clip_skip=1, cfg_scale=7.5, seed=11, count=1):
    return dict(name=name, model=model, prompt=prompt, negative_prompt=negative_prompt, clip_skip=clip_skip,
                cfg_scale=cfg_scale, seed=seed, count=count, steps=6, width=64, height=64)


CASES = [
    # Chunked, no weights: the issue's reference, transformers' text model per chunk.
    case("clip_long_zh", "tiny-clip", LONG_ZH, "模糊"),
    case("clip_long_en", "tiny-clip", LONG_EN, "blurry, lowres", seed=12),
    case("clip_break", "tiny-clip", "a castle on a hill BREAK 夕阳，油画", seed=13),
    case("clip_negative_longer", "tiny-clip", "小桥流水", LONG_EN, seed=14),
    case("clip_long_no_cfg", "tiny-clip", LONG_ZH, cfg_scale=1.0, seed=15),
    # Weights.
    case("clip_weighted", "tiny-clip", "a (castle:1.3) on a [hill], ((sunset)), 水彩", "(blurry:1.4), [[text]]", seed=16),
    case("clip_weighted_long", "tiny-clip", "(" + LONG_ZH + ":1.2), [" + LONG_EN + "]", seed=17, count=2),
    case("bert_weighted", "tiny-bert", "一座(古老的:1.3)桥，[薄雾]，((水彩画))", "(模糊:1.2)", seed=18),
    case("bert_break", "tiny-bert", "江南水乡 BREAK (烟雨:1.1)", seed=19),
    # Clip skip: diffusers' clip_skip = N - 1, here for prompt and negative prompt alike.
    case("clip_skip2", "tiny-clip", "a lighthouse at dusk, 水彩", "模糊", clip_skip=2, seed=20),
    case("clip_skip3_weighted_long", "tiny-clip", "(" + LONG_EN + ":0.9)", "(lowres:1.2)", clip_skip=3, seed=21),
]

# The real configs (random weights): the text encoders only.
FULL_CASES = [
    dict(name="full_clip_long_weighted", model="full-clip", prompt="(" + LONG_ZH + ":1.2), [" + LONG_EN + "]", clip_skip=1),
    dict(name="full_clip_skip2_long", model="full-clip", prompt=LONG_EN + " BREAK ((夕阳))", clip_skip=2),
    dict(name="full_bert_long_weighted", model="full-bert", prompt="(江南水乡:1.3)，" * 110 + "[烟雨]", clip_skip=1),
]

PARSER_PROMPTS = [
    # The web UI's documented examples (parse_prompt_attention's doctests).
    "normal text", "an (important) word", "(unbalanced", "\\(literal\\]", "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    # Chinese, full-width punctuation (not syntax), emoji.
    "小桥流水人家，（不是括号）、【也不是】", "(小桥流水:1.3)，[人家]，((古道西风))", "一只猫 🐱 (可爱的😺:1.2) [🌸🌸]",
    "(masterpiece:1.2), best quality, [blurry], ((细节丰富))",
    # Weights with spaces and signs; colons as text.
    "(a: 1.5 )", "(a:+2)", "(a:-0.5) b", "(a:.5)", "(a:1.)", "time: 12:30 (x:y)", ": a:b", "(a:1.5",
    "(a:1.2.3)", "(a:.)",
    # Escapes, stray brackets.
    "a \\\\ b \\x \\( \\)", "]] ) [[ ((", "((a) [b)] c", "[[[a]]]", "(a[b(c)d]e)", "",
    # BREAK.
    "a BREAK b", "BREAK a", "a BREAK", "a BREAK BREAK b", "BREAKfast BREAK_x xBREAK", "小桥BREAK流水", "小桥 BREAK 流水",
    "(inside BREAK brackets)", "a\tBREAK\n b", "a break b",
]


def chunk_prompts():
    commas_at = lambda n, comma: " ".join(["cat"] * n) + comma + " " + " ".join(["dog"] * 30)
    return [
        ("tiny-clip", LONG_ZH), ("tiny-clip", LONG_EN), ("tiny-clip", LONG_EN + ", " + LONG_ZH),
        ("tiny-clip", commas_at(70, ",")), ("tiny-clip", commas_at(50, ",")), ("tiny-clip", commas_at(55, ",")),
        ("tiny-clip", commas_at(56, ",")), ("tiny-clip", commas_at(75, ",")), ("tiny-clip", commas_at(74, ",")),
        ("tiny-clip", commas_at(70, "，")), ("tiny-clip", commas_at(70, "、")), ("tiny-clip", commas_at(70, ",,")),
        ("tiny-clip", commas_at(70, "!,")), ("tiny-clip", " ".join(["cat"] * 75)), ("tiny-clip", " ".join(["cat"] * 76)),
        ("tiny-clip", " ".join(["cat"] * 151)), ("tiny-clip", "(" + LONG_EN + ":1.1) BREAK [" + LONG_ZH + "]"),
        ("tiny-clip", "BREAK"), ("tiny-clip", ""), ("tiny-clip", "a (cat)s dog"), ("tiny-clip", "🐱" * 40),
        ("tiny-bert", LONG_ZH), ("tiny-bert", "江南" * 300), ("tiny-bert", "江南，" * 200),
        ("tiny-bert", "(小桥:1.2)流水 BREAK [人家]"), ("tiny-bert", "a, b、c，d"),
    ]


def parser_cases():
    cases = []
    for prompt in PARSER_PROMPTS:
        try:
            cases.append(dict(prompt=prompt, fragments=parse(prompt)))
        except ValueError as e:
            cases.append(dict(prompt=prompt, error=str(e)))
    return cases


def run(out: Path, c):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out / c["model"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        positive = embed(pipe, c["prompt"], c["clip_skip"])
        negative = embed(pipe, c["negative_prompt"], c["clip_skip"])
        if c["cfg_scale"] > 1:
            length = max(positive.shape[1], negative.shape[1])
            positive = pad_to(pipe, positive, length, c["clip_skip"])
            negative = pad_to(pipe, negative, length, c["clip_skip"])
        generators = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(c["count"])]
        result = pipe(prompt_embeds=positive, negative_prompt_embeds=negative if c["cfg_scale"] > 1 else None,
                      num_inference_steps=c["steps"],
                      guidance_scale=c["cfg_scale"], height=c["height"], width=c["width"],
                      num_images_per_prompt=c["count"], generator=generators, output_type="np")
    images = (result.images.astype(np.float32) * 255).round().astype("uint8")
    return {f"{c['name']}.prompt_embeds": positive.contiguous(),
            f"{c['name']}.negative_prompt_embeds": negative.contiguous(),
            f"{c['name']}.images": torch.from_numpy(images.astype(np.float32)).contiguous()}


def make(out: Path, full: bool):
    from transformers import BertTokenizer, CLIPTokenizer

    ref = out / "ref"
    (ref / "prompt_parser_cases.json").write_text(json.dumps(parser_cases(), ensure_ascii=False, indent=1), "utf-8")
    tokenizers = {"tiny-clip": CLIPTokenizer.from_pretrained(out / "tiny-clip", subfolder="tokenizer"),
                  "tiny-bert": BertTokenizer.from_pretrained(out / "tiny-bert", subfolder="tokenizer")}
    chunk_cases = [dict(model=model, prompt=prompt, chunks=chunks_of(tokenizers[model], prompt))
                   for model, prompt in chunk_prompts()]
    (ref / "prompt_chunk_cases.json").write_text(json.dumps(chunk_cases, ensure_ascii=False), "utf-8")
    tensors = {}
    for c in CASES:
        c["chunks"] = len(chunks_of(tokenizers[c["model"]], c["prompt"]))
        tensors.update(run(out, c))
    save_file(tensors, ref / "prompts.safetensors")
    (ref / "prompt_cases.json").write_text(json.dumps(CASES, ensure_ascii=False, indent=1), "utf-8")
    if full:
        make_full(out)


def make_full(out: Path):
    from types import SimpleNamespace

    from transformers import BertModel, BertTokenizer, CLIPTextModel, CLIPTokenizer

    tensors = {}
    for c in FULL_CASES:
        clip = c["model"] == "full-clip"
        folder = out / c["model"]
        encoder = (CLIPTextModel if clip else BertModel).from_pretrained(folder, subfolder="text_encoder").eval()
        tokenizer = (CLIPTokenizer if clip else BertTokenizer).from_pretrained(folder, subfolder="tokenizer")
        with torch.inference_mode():
            z = embed(SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder), c["prompt"], c["clip_skip"])
        c["chunks"] = len(chunks_of(tokenizer, c["prompt"]))
        tensors[f"{c['name']}.prompt_embeds"] = z.contiguous()
    save_file(tensors, out / "ref" / "prompts_full.safetensors")
    (out / "ref" / "prompt_full_cases.json").write_text(json.dumps(FULL_CASES, ensure_ascii=False, indent=1), "utf-8")

#!/usr/bin/env python3
"""Seed corpora for the fuzz targets (tests/fuzz), from the test fixtures where they are present, plus a
few hand-made cases. Standard library only (scripts/fuzz.sh runs it with the system Python).

    fuzz_seeds.py FIXTURES OUT      writes OUT/<target>/<name> for every target

Safetensors seeds are the fixtures' files shrunk to at most 64 KiB: each kept tensor keeps its name
and shape when its data fits, else becomes [1] (so that placing and validation run to the end)."""
import base64
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path

MAX_SEED = 64 * 1024
DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}


def write(out: Path, target: str, name: str, data: bytes):
    folder = out / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


def shrink_safetensors(path: Path, budget=MAX_SEED) -> bytes:
    raw = path.read_bytes() if path.stat().st_size <= budget else None
    if raw is not None:
        return raw
    with path.open("rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data_start = 8 + n
        meta = header.pop("__metadata__", None)
        new_header, blobs, cursor = {}, [], 0
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            size = end - begin
            if cursor + size > budget // 2:
                info = dict(info, shape=[1])
                size = DTYPE_SIZE[info["dtype"]]
                f.seek(data_start + begin)
                blob = f.read(size)
            else:
                f.seek(data_start + begin)
                blob = f.read(size)
            new_header[name] = dict(dtype=info["dtype"], shape=info["shape"], data_offsets=[cursor, cursor + size])
            blobs.append(blob)
            cursor += size
            if len(new_header) >= 200:
                break
        if meta is not None:
            new_header["__metadata__"] = meta
        return safetensors_bytes(new_header, b"".join(blobs))


def png(width, height, channels=3, bit_depth=8) -> bytes:
    color = {1: 0, 3: 2, 4: 6}[channels]
    row = bytes(range(width * channels * bit_depth // 8))[: width * channels * bit_depth // 8]
    raw = b"".join(b"\0" + row for _ in range(height))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PROMPTS = [
    "小桥流水人家，Van Gogh style",
    "a (red:1.3) [cat] on a ((mat)), masterpiece BREAK night sky, \\(escaped\\)",
    "<lora:style:0.8> <lora:face:1:0.5> portrait, <lyco:x:te=0.3:unet=0.7>",
    "飞流直下三千尺，疑是银河落九天，(水墨画:1.2)，高清，壁纸",
    "[[[a]]] (b:-0.5) (c:1e3) ((( unbalanced",
    "embedding_token, cyber_punk, 4k, artstation " * 5,
]


def main():
    fixtures, out = Path(sys.argv[1]), Path(sys.argv[2])
    # safetensors_header / lora_keys / embedding
    for path in sorted(fixtures.glob("*/*/*.safetensors")) + sorted(fixtures.glob("loras/*.safetensors")):
        seed = shrink_safetensors(path)
        name = f"{path.parent.parent.name}-{path.parent.name}-{path.stem}"
        target = "lora_keys" if path.parent.name == "loras" else "safetensors_header"
        write(out, target, name, seed)
        if path.parent.name == "loras":
            write(out, "embedding", name, seed)
            write(out, "safetensors_header", name, seed)
        if path.parent.name == "sdxl_embeddings":  # clip_l / clip_g files
            write(out, "embedding", name, seed)
    ok = safetensors_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"format": "pt"}},
                           struct.pack("<2f", 1, 2))
    write(out, "safetensors_header", "hand-ok", ok)
    write(out, "embedding", "hand-emb", safetensors_bytes({"emb_params": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}},
                                                          bytes(32)))
    write(out, "lora_keys", "hand-kohya", safetensors_bytes({
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": {"dtype": "F32", "shape": [4, 32, 1, 1], "data_offsets": [0, 512]},
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": {"dtype": "F32", "shape": [32, 4, 1, 1], "data_offsets": [512, 1024]},
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": {"dtype": "F32", "shape": [], "data_offsets": [1024, 1028]},
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": {"dtype": "F16", "shape": [2, 24], "data_offsets": [1028, 1124]},
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": {"dtype": "F16", "shape": [96, 2], "data_offsets": [1124, 1508]},
    }, bytes(1508)))
    write(out, "lora_keys", "hand-ldm", safetensors_bytes({  # LDM block names, and one module named twice
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": {"dtype": "F32", "shape": [4, 32, 1, 1], "data_offsets": [0, 512]},
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": {"dtype": "F32", "shape": [32, 4, 1, 1], "data_offsets": [512, 1024]},
        "lora_unet_input_blocks_1_1_proj_in.alpha": {"dtype": "F32", "shape": [], "data_offsets": [1024, 1028]},
        "lora_unet_input_blocks_2_0_op.lora_down.weight": {"dtype": "F32", "shape": [1, 32, 3, 3], "data_offsets": [1028, 2180]},
        "lora_unet_input_blocks_2_0_op.lora_up.weight": {"dtype": "F32", "shape": [32, 1, 1, 1], "data_offsets": [2180, 2308]},
        "lora_unet_output_blocks_1_1_conv.lora_down.weight": {"dtype": "F32", "shape": [1, 32, 3, 3], "data_offsets": [2308, 3460]},
        "lora_unet_middle_block_1_proj_in.lora_up.weight": {"dtype": "F32", "shape": [32, 1], "data_offsets": [3460, 3588]},
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": {"dtype": "F32", "shape": [4, 32], "data_offsets": [3588, 4100]},
    }, bytes(4100)))
    write(out, "lora_keys", "hand-peft", safetensors_bytes({
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": {"dtype": "F32", "shape": [4, 24], "data_offsets": [0, 384]},
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": {"dtype": "F32", "shape": [32, 4], "data_offsets": [384, 896]},
        "__metadata__": {"lora_adapter_metadata": json.dumps({"unet": {"r": 4, "lora_alpha": 8, "alpha_pattern": {"to_k": 2}}})},
    }, bytes(896)))
    # config_json: every config of the fixtures, and their model_index.json
    for path in sorted(fixtures.glob("*/model_index.json")) + sorted(fixtures.glob("*/*/*config.json")):
        if path.stat().st_size <= MAX_SEED:
            write(out, "config_json", f"{path.parent.parent.name}-{path.parent.name}-{path.name}", path.read_bytes())
    write(out, "config_json", "hand-unet", json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4,
        "block_out_channels": [32, 64], "attention_head_dim": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "norm_eps": 1e-5, "center_input_sample": False}).encode())
    write(out, "config_json", "hand-index", json.dumps({"_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"]}).encode())
    # tokenizers and prompt syntax
    for i, p in enumerate(PROMPTS):
        for target in ("clip_tokenizer", "bert_tokenizer", "prompt_syntax"):
            write(out, target, f"hand-{i}", p.encode())
    # prompt files: the first byte chooses JSONL (odd) or "by content" (even)
    text = "\n".join(["# comment", "", PROMPTS[0], "  " + PROMPTS[1] + "  \r"]) + "\n"
    write(out, "prompt_file", "hand-text", b"\0" + text.encode())
    jsonl = "\n".join([json.dumps({"prompt": PROMPTS[0], "seed": 7, "steps": 20, "width": 512, "height": 768,
                                   "negative_prompt": "blurry", "sampler": "Euler a", "output": "a.png"}, ensure_ascii=False),
                       json.dumps({"prompt": "x", "cfg_scale": 7.5, "init_image": "i.png", "strength": 0.6, "mask": "m.png",
                                   "clip_skip": 2, "schedule": "karras"}),
                       '{"prompt": 3}', '{"bad json', '{"prompt": "y", "unknown": 1}'])
    write(out, "prompt_file", "hand-jsonl", b"\1" + jsonl.encode())
    write(out, "prompt_file", "hand-bom", b"\0\xef\xbb\xbf" + jsonl.encode())
    # images: the first byte chooses RGB (odd) or L (even)
    for name, data in [("rgb8", png(8, 6)), ("gray8", png(5, 7, 1)), ("rgba8", png(4, 4, 4)), ("gray16", png(3, 3, 1, 16))]:
        write(out, "image", f"hand-{name}-rgb", b"\1" + data)
        write(out, "image", f"hand-{name}-l", b"\0" + data)
    for path in sorted(fixtures.glob("**/*.png")) + sorted(fixtures.glob("**/*.jpg")):
        if path.stat().st_size <= MAX_SEED:
            write(out, "image", f"{path.parent.name}-{path.name}", b"\1" + path.read_bytes())
    # torch_zip: the checkpoint fixtures (torch.save files and the hostile ones); torch_pickle: their data.pkl
    for path in sorted(fixtures.glob("checkpoint/*.ckpt")) + sorted(fixtures.glob("checkpoint/*.bin")) + \
            sorted(fixtures.glob("checkpoint/*.pt")):
        if path.stat().st_size <= MAX_SEED:
            write(out, "torch_zip", path.name, path.read_bytes())
        try:
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    if name.endswith("/data.pkl") and z.getinfo(name).file_size <= MAX_SEED:
                        write(out, "torch_pickle", path.name, z.read(name))
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
            pass
    write(out, "torch_pickle", "hand-protocol4", b"\x80\x04\x95\x1a\0\0\0\0\0\0\0}\x94(\x8c\x01a\x94K\x01\x8c\x01b\x94]\x94(G?\xf0\0\0\0\0\0\0\x88eu.")
    # ldm_keys: the key lists of the single-file fixtures (tests/reference/single_file.py, sdxl_single_file.py), as
    # "<name> <d0>,<d1>..." lines after an options byte (extract_ema, layers_per_block 2, 4 VAE blocks).
    for path in sorted(fixtures.glob("single_file/*.json")) + sorted(fixtures.glob("sdxl_single_file/*.json")):
        record = json.loads(path.read_text())
        for ema in (0, 1):
            lines = "\n".join(f"{name} {','.join(map(str, shape))}" for name, shape in record["keys"])
            seed = bytes([ema | 2 << 1 | 3 << 3]) + lines.encode()
            write(out, "ldm_keys", f"{path.stem}-{ema}", seed[:MAX_SEED])
    write(out, "ldm_keys", "hand-blocks", b"\x05" + "\n".join([
        "model.diffusion_model.input_blocks.0.0.weight 8,9,3,3", "model.diffusion_model.input_blocks.1.0.op.weight 8,8,3,3",
        "model.diffusion_model.middle_block.3.proj.weight 4", "model.diffusion_model.output_blocks.2.1.conv.weight 8,8,3,3",
        "model.diffusion_model.output_blocks.2.2.conv.bias 8", "model_ema.diffusion_modelinput_blocks00weight 8,9,3,3",
        "first_stage_model.encoder.mid.attn_1.q.weight 4,4,1,1", "vae.decoder.up.0.attn.proj_attn.weight 4,4,1",
        "cond_stage_model.transformer.embeddings.token_embedding.weight 10,4",
        "cond_stage_model.transformer.bert.encoder.layer.0.LayerNorm.gamma 4",
        "encoder.mid_block.attentions.0.query.weight 4,4"]).encode())
    # base64: encodings as the HTTP API receives them (a PNG's, with line breaks, unpadded, padded mid-way)
    encoded = base64.b64encode(png(4, 3)).decode()
    for name, text in [("png", encoded), ("mime", base64.encodebytes(png(2, 2)).decode()), ("unpadded", "YWI"),
                       ("mid-pad", "ab=cdef=xy=="), ("data-url", "data:image/png;base64," + encoded), ("one-left", "abcde")]:
        write(out, "base64", f"hand-{name}", text.encode())


if __name__ == "__main__":
    main()

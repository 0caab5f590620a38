"""SDXL-family pipelines (issue: Taiyi-XL and SDXL) shrunk to random tiny models, in the hub's diffusers
layout, and the module-level references of diffusers' StableDiffusionXLPipeline on them.

    tiny-sdxl/       the SDXL base configs shrunk: CLIP-L-like text_encoder (32 wide, 3 layers, quick_gelu),
                     OpenCLIP-like text_encoder_2 (48 wide, 3 layers, gelu, projection 40), plain CLIP
                     tokenizers (77; tokenizer_2 pads with "!" as SDXL's does), a UNet with
                     transformer_layers_per_block [1, 1, 2] and odd head counts, EulerDiscreteScheduler.
    tiny-taiyi-xl/   the same shaped like Taiyi-XL: both encoders' vocabularies 57475 and 512 positions,
                     tokenizers with 8067 added tokens (added_tokens.json: CJK punctuation and common
                     characters, ids from 49408) and model_max_length 512, as IDEA ships them.

    full-taiyi-xl/   (--full) Taiyi-XL's real configs (SDXL base UNet and VAE, both encoders 57475 / 512) with
                     random weights stored in fp16 (7 GB; the single file IDEA ships is fp16 too), for the full-size
                     checks and the benchmarks. ref/sdxl_full.safetensors: its UNet in fp32 on one 64x64 input.

ref/sdxl.safetensors: per prompt case, encode_prompt's four outputs (with clip skip where asked); the UNet's
output on one input with text_embeds and time_ids; the tokenizers' ids. ref/sdxl_cases.json: the cases.
"""
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SDXL_UNET_FULL = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
# Two encoders of different widths (32 + 48 = 80), odd head counts, 1 and 2 transformer layers.
SDXL_UNET_TINY = dict(SDXL_UNET_FULL, sample_size=8, block_out_channels=(32, 48, 80), norm_num_groups=8,
                      attention_head_dim=(1, 3, 5), transformer_layers_per_block=(1, 1, 2), cross_attention_dim=80,
                      addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 40)
CLIP_L_FULL = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                   bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_G_FULL = dict(CLIP_L_FULL, hidden_size=1280, intermediate_size=5120, projection_dim=1280, num_hidden_layers=32,
                   num_attention_heads=20, hidden_act="gelu")
CLIP_L_TINY = dict(CLIP_L_FULL, hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=3,
                   num_attention_heads=4)
CLIP_G_TINY = dict(CLIP_G_FULL, hidden_size=48, intermediate_size=53, projection_dim=40, num_hidden_layers=3,
                   num_attention_heads=4)
TAIYI_XL_TEXT = dict(vocab_size=57475, max_position_embeddings=512)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                sample_size=1024, act_fn="silu", block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                scaling_factor=0.13025, force_upcast=True)
SDXL_VAE_TINY = dict(SDXL_VAE, layers_per_block=1, norm_num_groups=4, sample_size=64, block_out_channels=(8, 16, 16, 16))
EULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
             interpolation_type="linear", prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
             use_karras_sigmas=False)
# Keys the hub's SDXL scheduler_config.json also carries, which EulerDiscreteScheduler does not take.
EULER_HUB_EXTRA = dict(sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True, clip_sample=False)
TAIYI_XL_ADDED = 57475 - 49408
# CJK punctuation first (Taiyi-XL's table starts "–", ..., "、", "。", "《", ...), then characters.
CJK_PUNCTUATION = "–—‘’“”…、。〈〉《》「」『』【】〔〕（）！，．：；？～￥％＃＆＊＋－／＜＝＞＠［］＿｛｜｝"


def taiyi_xl_added_tokens(vocab_data: Path):
    """8067 whole-character tokens: the punctuation above, then bert-base-chinese's single CJK characters in
    its order (Taiyi-XL's own list is not downloadable here; its shape is what matters: ids 49408..57474)."""
    chars = [c for c in CJK_PUNCTUATION]
    for line in (vocab_data / "bert-base-chinese-vocab.txt").read_text("utf-8").splitlines():
        if len(line) == 1 and 0x4E00 <= ord(line) <= 0x9FFF and line not in chars:
            chars.append(line)
    chars = chars[:TAIYI_XL_ADDED]
    assert len(chars) == TAIYI_XL_ADDED
    return {c: 49408 + i for i, c in enumerate(chars)}


def write_taiyi_xl_tokenizer(folder: Path, clip_vocab: Path, added: dict):
    """The files of Taiyi-XL's tokenizer folders: CLIP's vocab.json and merges.txt, added_tokens.json,
    and an old-style tokenizer_config.json (no added_tokens_decoder) with model_max_length 512."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(clip_vocab / name, folder / name)

    def token(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}

    config = {"add_prefix_space": False, "bos_token": token("<|startoftext|>"), "do_lower_case": True,
              "eos_token": token("<|endoftext|>"), "errors": "replace", "model_max_length": 512,
              "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": token("<|endoftext|>")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    specials = {"bos_token": token("<|startoftext|>"), "eos_token": token("<|endoftext|>"),
                "pad_token": "<|endoftext|>", "unk_token": token("<|endoftext|>")}
    for value in specials.values():
        if isinstance(value, dict):
            value.pop("__type")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", "utf-8")
    (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False) + "\n", "utf-8")


def jitter(module, generator):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)


def random_fp16(name: str, shape, generator):
    """Random values that keep activations in range: weights N(0, 1/fan_in), norm scales 1 + N(0, 0.1),
    biases N(0, 0.02); fp16, as the hub's and IDEA's files store them."""
    values = torch.empty(shape, dtype=torch.float32)
    if len(shape) >= 2:
        values.normal_(0, (values.numel() / shape[0]) ** -0.5, generator=generator)
    elif name.endswith("bias"):
        values.normal_(0, 0.02, generator=generator)
    else:
        values.normal_(1, 0.1, generator=generator)
    return values.half()


def save_random_weights(module, folder: Path, file_name: str, generator):
    """Writes a meta-device module's state dict as a safetensors file of random fp16 values, one tensor at a
    time, so that building the 3.5 B-parameter pipeline holds one tensor in memory, not the pipeline (and
    not the copy safetensors' save_file makes): the fixture must be made within CI's 24 GB."""
    shapes = {name: list(t.shape) for name, t in module.state_dict().items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / file_name, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for name, shape in shapes.items():
            f.write(random_fp16(name, shape, generator).numpy().tobytes())


def save_full_component(module, folder: Path, generator):
    """A full-size component on the meta device saved as save_pretrained(torch_dtype=float16) would: config
    and random fp16 weights."""
    if hasattr(module, "save_config"):  # diffusers
        module.save_config(folder)
        save_random_weights(module, folder, "diffusion_pytorch_model.safetensors", generator)
    else:  # transformers
        module.config.architectures = [type(module).__name__]
        module.config.dtype = torch.float16
        module.config.save_pretrained(folder)
        save_random_weights(module, folder, "model.safetensors", generator)


def build_sdxl(out: Path, name: str, size: str, taiyi: bool, vocab_data: Path):
    """Saves an SDXL pipeline folder out/name (skipped when it exists)."""
    import shutil

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = out / name
    if (folder / "model_index.json").exists():
        return folder
    tiny = size == "tiny"
    assert tiny or taiyi, "the full-size fixture is Taiyi-XL's"
    clip_vocab = out / "clip-vocab"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    extra = TAIYI_XL_TEXT if taiyi else {}
    # Full size: the modules made on the meta device and written by save_full_component (torch's default
    # initialisers take most of an hour for 3.5 B parameters on 2 busy cores).
    with torch.device("cpu" if tiny else "meta"):
        te1 = CLIPTextModel(CLIPTextConfig(**dict(CLIP_L_TINY if tiny else CLIP_L_FULL, **extra)))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**dict(CLIP_G_TINY if tiny else CLIP_G_FULL, **extra)))
        unet = UNet2DConditionModel(**(SDXL_UNET_TINY if tiny else SDXL_UNET_FULL))
        vae = AutoencoderKL(**(SDXL_VAE_TINY if tiny else SDXL_VAE))
    for m in (te1, te2, unet, vae):
        m.eval()
        if tiny:
            jitter(m, gen)
    tmp = out / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if taiyi:
        added = taiyi_xl_added_tokens(vocab_data)
        for sub in ("tokenizer", "tokenizer_2"):
            write_taiyi_xl_tokenizer(tmp / sub, clip_vocab, added)
        tok1 = CLIPTokenizer.from_pretrained(tmp / "tokenizer")
        tok2 = CLIPTokenizer.from_pretrained(tmp / "tokenizer_2")
        assert len(tok1) == 57475 and tok1.model_max_length == 512
    else:
        tok1 = CLIPTokenizer(str(clip_vocab / "vocab.json"), str(clip_vocab / "merges.txt"), pad_token="<|endoftext|>",
                             model_max_length=77)
        tok2 = CLIPTokenizer(str(clip_vocab / "vocab.json"), str(clip_vocab / "merges.txt"), pad_token="!",
                             model_max_length=77)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                     unet=unet, scheduler=EulerDiscreteScheduler(**EULER))
    if taiyi:
        # save_pretrained would rewrite the tokenizers in the newer format: keep IDEA's files.
        for component in ("vae", "text_encoder", "text_encoder_2", "unet"):
            if tiny:
                getattr(pipe, component).save_pretrained(tmp / component)
            else:
                save_full_component(getattr(pipe, component), tmp / component, gen)
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        pipe.save_config(tmp)
    else:
        pipe.save_pretrained(tmp)
    sched = tmp / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(dict(json.loads(sched.read_text()), **EULER_HUB_EXTRA), indent=2) + "\n")
    tmp.rename(folder)
    return folder


def load_sdxl(folder: Path, cls=None, dtype=torch.float32):
    from diffusers import StableDiffusionXLPipeline

    cls = cls or StableDiffusionXLPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# encode_prompt cases: (name, model, prompt, negative prompt or None, clip_skip or None).
ENCODE_CASES = [
    ("sdxl_en", "tiny-sdxl", "a lighthouse at dusk, watercolor", "blurry", None),
    ("sdxl_zh_zero_negative", "tiny-sdxl", "小桥流水人家，Van Gogh style", None, None),
    ("sdxl_clip_skip", "tiny-sdxl", "a red bicycle leaning on a wall", "low quality", 1),
    ("taiyi_zh", "tiny-taiyi-xl", "飞流直下三千尺，疑是银河落九天，瀑布，插画", "广告, ，, ！, 。, ；, 资讯, 新闻, 水印", None),
    ("taiyi_mixed", "tiny-taiyi-xl", "一只穿着宇航服的哈士奇 in space, 油画风格", "", None),
    ("taiyi_en_clip_skip", "tiny-taiyi-xl", "a cat sitting on a red chair, oil painting", None, 1),
]


def make_full(out: Path, vocab_data: Path):
    """full-taiyi-xl and its UNet's output in fp32 (the fp16 weights upcast, as from_pretrained(torch_dtype=
    float32) loads them) on a 64x64 input: batch 2, the 2048-wide context of 512 tokens, text_embeds, time_ids."""
    from diffusers import UNet2DConditionModel

    build_sdxl(out, "full-taiyi-xl", "full", True, vocab_data)
    unet = UNet2DConditionModel.from_pretrained(out / "full-taiyi-xl" / "unet", torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(9)
    inputs = dict(sample=torch.randn(2, 4, 8, 8, generator=g), context=torch.randn(2, 512, 2048, generator=g),
                  text_embeds=torch.randn(2, 1280, generator=g),
                  time_ids=torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2), timestep=torch.tensor(751.0))
    with torch.no_grad():
        inputs["out"] = unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["context"],
                             added_cond_kwargs={"text_embeds": inputs["text_embeds"],
                                                "time_ids": inputs["time_ids"]}).sample
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(out / "ref" / "sdxl_full.safetensors"))


def make(out: Path, full: bool):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from make_fixtures import VOCAB_DATA

    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name, taiyi in (("tiny-sdxl", False), ("tiny-taiyi-xl", True)):
        build_sdxl(out, name, "tiny", taiyi, VOCAB_DATA)
    tensors, cases = {}, []
    pipes = {}
    with torch.no_grad():
        for name, model, prompt, negative, clip_skip in ENCODE_CASES:
            pipe = pipes.get(model) or pipes.setdefault(model, load_sdxl(out / model))
            embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
                prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=negative, clip_skip=clip_skip)
            for key, value in (("prompt_embeds", embeds), ("negative_prompt_embeds", negative_embeds),
                               ("pooled_prompt_embeds", pooled), ("negative_pooled_prompt_embeds", negative_pooled)):
                tensors[f"{name}.{key}"] = value.contiguous()
            for i, tok in enumerate((pipe.tokenizer, pipe.tokenizer_2)):
                ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
                tensors[f"{name}.ids_{i + 1}"] = torch.tensor(ids, dtype=torch.int64)
            cases.append(dict(name=name, model=model, prompt=prompt, negative_prompt=negative, clip_skip=clip_skip))
        # The UNet on one input: batch 2, 8x12 latents, text_embeds and time_ids as the pipeline makes them.
        for model in ("tiny-sdxl",):
            pipe = pipes[model]
            g = torch.Generator().manual_seed(5)
            sample = torch.randn(2, 4, 8, 12, generator=g)
            context = torch.randn(2, 77, 80, generator=g)
            text_embeds = torch.randn(2, 40, generator=g)
            time_ids = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0], [80.0, 40.0, 3.0, 5.0, 64.0, 96.0]])
            timestep = torch.tensor(437)
            noise_pred = pipe.unet(sample, timestep, encoder_hidden_states=context,
                                   added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
            for key, value in (("sample", sample), ("context", context), ("text_embeds", text_embeds),
                               ("time_ids", time_ids), ("timestep", timestep.float()), ("out", noise_pred)):
                tensors[f"unet.{key}"] = value.contiguous()
    save_file(tensors, str(out / "ref" / "sdxl.safetensors"))
    (out / "ref" / "sdxl_cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=2) + "\n", "utf-8")
    if full:
        # A fresh process: the harness's heap still holds what the full SD pipelines left, and the fp32 UNet
        # alone is 10.3 GB.
        subprocess.run([sys.executable, __file__, str(out)], check=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from make_fixtures import VOCAB_DATA

    make_full(Path(sys.argv[1]), VOCAB_DATA)

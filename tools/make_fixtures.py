#!/usr/bin/env python3
"""Reference-parity harness: builds random-weight Stable Diffusion pipelines with diffusers and
transformers themselves, save_pretrained()s them (the diffusers layout users get from the hub), and
records what the reference computes, as safetensors, for the C++ tests.

    make_fixtures.py OUT            tiny pipelines (CLIP and BERT text encoders) + references
    make_fixtures.py OUT --full     also the real Taiyi configs with random weights (about 4 GB each)

Layout of OUT:
    tiny-clip/, tiny-bert/          pipelines shrunk from the real Taiyi-Chinese-EN / Chinese configs
    full-clip/, full-bert/          (--full) the real configs, random weights
    ref/<name>.safetensors          reference outputs, written by tests/reference/*.py (one file each)
    VERSION                         FIXTURE_VERSION below; the C++ tests refuse other versions

Every tests/reference/*.py module with a function make(out: Path, full: bool) is run after the
pipelines exist, in name order. Seeds are fixed, so the goldens come out the same each run.
"""
import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

FIXTURE_VERSION = 1
ROOT = Path(__file__).resolve().parent.parent
# The vocabularies that taiyi builds in (src/tokenizers/data/README.md): the fixtures' tokenizers use them too.
VOCAB_DATA = Path(os.environ.get("TAIYI_VOCAB_DATA", ROOT / "src" / "tokenizers" / "data"))


def bytes_to_unicode():
    """The byte -> printable-character table of GPT-2 / CLIP (transformers' tokenization_clip.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_vocab(bpe_gz: Path, out_dir: Path):
    """Derive the hub's vocab.json / merges.txt from OpenAI's bpe_simple_vocab_16e6.txt.gz, as
    openai/clip-vit-large-patch14 did: 256 byte symbols, the same with </w>, one per merge, then the two
    specials (49408 entries, 48894 merges). taiyi's derive_clip_vocab does the same."""
    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", "utf-8")


# The real Taiyi configs (spec §2, §5) and their shrunk versions: same block types and options,
# tiny widths, so the tiny models take every code path the real ones do.
UNET_FULL = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
UNET_TINY = dict(UNET_FULL, sample_size=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 block_out_channels=(32, 64, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2)
VAE_FULL = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                sample_size=512, act_fn="silu", block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
VAE_TINY = dict(VAE_FULL, layers_per_block=1, norm_num_groups=4, sample_size=64, block_out_channels=(8, 16, 16, 16))
CLIP_FULL = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_TINY = dict(CLIP_FULL, hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                 num_attention_heads=4)
BERT_FULL = dict(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
                 layer_norm_eps=1e-12, pad_token_id=0, position_embedding_type="absolute")
BERT_TINY = dict(BERT_FULL, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
TINY_CROSS_DIM = 32
# Spec §4: the Taiyi scheduler config.
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None)


def jitter_constant_parameters(module, generator):
    """Default init leaves norm weights at 1 and biases at 0: make them random too, so that a
    mis-wired weight or bias cannot go unnoticed by the parity tests."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)


def build_pipeline(family: str, size: str, tokenizer_dir: Path):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertConfig, BertModel, BertTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tiny = size == "tiny"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if family == "clip":
        text_encoder = CLIPTextModel(CLIPTextConfig(**(CLIP_TINY if tiny else CLIP_FULL)))
        tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"),
                                  pad_token="<|endoftext|>", model_max_length=77)
    else:
        text_encoder = BertModel(BertConfig(**(BERT_TINY if tiny else BERT_FULL)))
        tokenizer = BertTokenizer(str(VOCAB_DATA / "bert-base-chinese-vocab.txt"), model_max_length=512)
    unet = UNet2DConditionModel(**(UNET_TINY if tiny else UNET_FULL))
    vae = AutoencoderKL(**(VAE_TINY if tiny else VAE_FULL))
    for m in (text_encoder, unet, vae):
        m.eval()
        if tiny:
            jitter_constant_parameters(m, gen)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def save_full_bert_sharing_image_side(out: Path, tokenizer_dir: Path):
    """full-bert: the real Chinese-v0.1 text encoder and tokenizer; its UNet, VAE and scheduler are
    full-clip's (the same SD v1 configs), linked rather than saved again (3.7 GB less disk and time)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    t0 = time.time()
    folder = out / "full-bert"
    tmp = out / "full-bert.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.manual_seed(0)
    BertModel(BertConfig(**BERT_FULL)).eval().save_pretrained(tmp / "text_encoder")
    BertTokenizer(str(VOCAB_DATA / "bert-base-chinese-vocab.txt"), model_max_length=512).save_pretrained(tmp / "tokenizer")
    shutil.copyfile(VOCAB_DATA / "bert-base-chinese-vocab.txt", tmp / "tokenizer" / "vocab.txt")
    index = json.loads((out / "full-clip" / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "BertModel"]
    index["tokenizer"] = ["transformers", "BertTokenizer"]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    for component in ("unet", "vae", "scheduler"):
        (tmp / component).symlink_to(Path("..") / "full-clip" / component)
    tmp.rename(folder)
    print(f"make_fixtures: full-bert: {time.time() - t0:.1f} s", file=sys.stderr)


def memory_report():
    """The harness's resident memory now, its peak so far and its children's peak: CI has 24 GB, and the
    full-size fixtures come close, so each step says where it stands."""
    import resource

    rss_kb = next((int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmRSS:")), 0)
    peaks = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return f"RSS {rss_kb / 2**20:.1f} GB (peak {peaks[0] / 2**20:.1f} GB, children's peak {peaks[1] / 2**20:.1f} GB)"


def release_memory():
    """Gives the heap's free pages back to the system after a step: a full-size step frees gigabytes of
    tensors, which glibc keeps for reuse otherwise, and the SDXL step's child process needs them."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def run_reference_modules(out: Path, full: bool):
    # TAIYI_REFERENCE_ONLY=unet,vae runs only those modules (development).
    only = [n for n in os.environ.get("TAIYI_REFERENCE_ONLY", "").split(",") if n]
    for path in sorted((ROOT / "tests" / "reference").glob("*.py")):
        if only and path.stem not in only:
            continue
        spec = importlib.util.spec_from_file_location(f"reference_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "make"):
            continue
        # Goldens are remade only when their script, this harness or the library versions change.
        import diffusers
        import transformers
        key = hashlib.sha256(path.read_bytes() + Path(__file__).read_bytes() + repr(
            (full, torch.__version__, diffusers.__version__, transformers.__version__)).encode()).hexdigest()
        stamp = out / "ref" / f".{path.stem}.stamp"
        if stamp.exists() and stamp.read_text() == key:
            continue
        t0 = time.time()
        module.make(out, full)
        stamp.write_text(key)
        release_memory()
        print(f"make_fixtures: reference {path.stem}: {time.time() - t0:.1f} s, {memory_report()}", file=sys.stderr,
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--full", action="store_true", help="also build the full-size random pipelines")
    ap.add_argument("--pipelines-only", action="store_true", help="skip tests/reference/*.py")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "ref").mkdir(exist_ok=True)
    clip_vocab = out / "clip-vocab"
    if not (clip_vocab / "merges.txt").exists():
        write_clip_vocab(VOCAB_DATA / "bpe_simple_vocab_16e6.txt.gz", clip_vocab)
    sizes = ["tiny"] + (["full"] if args.full else [])
    for size in sizes:
        for family in ("clip", "bert"):
            folder = out / f"{size}-{family}"
            if (folder / "model_index.json").exists():
                continue
            if size == "full" and family == "bert":
                save_full_bert_sharing_image_side(out, clip_vocab)
                continue
            t0 = time.time()
            pipe = build_pipeline(family, size, clip_vocab)
            final, folder = folder, out / f"{size}-{family}.tmp"  # renamed when complete
            shutil.rmtree(folder, ignore_errors=True)
            pipe.save_pretrained(folder)
            # The hub's Taiyi scheduler config also carries clip_sample=false (spec §4), a key
            # PNDMScheduler does not take but DDIMScheduler.from_config inherits.
            sched = folder / "scheduler" / "scheduler_config.json"
            if family == "bert":
                # The hub ships the original vocab.txt; save_pretrained would drop its duplicate lines
                # (bert-base-chinese has some), which shifts ids. Keep the file users have.
                shutil.copyfile(VOCAB_DATA / "bert-base-chinese-vocab.txt", folder / "tokenizer" / "vocab.txt")
            sched.write_text(json.dumps(dict(json.loads(sched.read_text()), clip_sample=False), indent=2) + "\n")
            folder.rename(final)
            del pipe
            release_memory()
            print(f"make_fixtures: {final.name}: {time.time() - t0:.1f} s, {memory_report()}", file=sys.stderr, flush=True)
    if not args.pipelines_only:
        run_reference_modules(out, args.full)
    (out / "VERSION").write_text(f"{FIXTURE_VERSION}\n")


if __name__ == "__main__":
    main()

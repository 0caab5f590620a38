"""Goldens for tests/loaders/test_single_file_configs.cpp: what diffusers 0.37.1 and transformers 4.57 make of
taiyi's built-in configs (src/loaders/single_file_configs.cpp: the hub's stable-diffusion-v1-5 and
Taiyi-Chinese-v0.1 files), against the real configs that tools/make_fixtures.py builds its full-size
pipelines from (UNET_FULL, VAE_FULL, SCHEDULER, CLIP_FULL, BERT_FULL). Models are built on the meta
device: configs only, no weights. Runs in a second.

ref/single_file_configs.json   {"<name>": {"file": the built-in JSON as the source holds it,
                                            "differences": {key: [from the built-in file, from make_fixtures]}}}
    names: unet, vae, scheduler, clip_text_encoder, bert_text_encoder; differences lists every key, the
    defaults the library fills in included, whose value differs.
"""
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE = ROOT / "src" / "loaders" / "single_file_configs.cpp"


def builtin_files():
    """The R"json(...)json" literals of the source, by constant name (kUNetConfig, ...)."""
    text = SOURCE.read_text("utf-8")
    return {name: json.loads(body) for name, body in
            re.findall(r'constexpr const char\* (k\w+) = R"json\((.*?)\)json";', text, re.S)}


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def differences(derived: dict, reference: dict):
    keys = sorted(k for k in set(derived) | set(reference) if not k.startswith("_"))
    return {k: [plain(derived.get(k)), plain(reference.get(k))] for k in keys
            if plain(derived.get(k)) != plain(reference.get(k))}


def make(out: Path, full: bool):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import BertConfig, CLIPTextConfig

    sys.path.insert(0, str(ROOT / "tools"))
    import make_fixtures as mf

    files = builtin_files()
    record = {}

    def add(name, file_key, derived, reference):
        record[name] = {"file": files[file_key], "differences": differences(derived, reference)}

    with torch.device("meta"):
        add("unet", "kUNetConfig", dict(UNet2DConditionModel.from_config(files["kUNetConfig"]).config),
            dict(UNet2DConditionModel(**mf.UNET_FULL).config))
        add("vae", "kVaeConfig", dict(AutoencoderKL.from_config(files["kVaeConfig"]).config),
            dict(AutoencoderKL(**mf.VAE_FULL).config))
    # make_fixtures.py appends clip_sample=false to the file it saves, as the hub's file has it.
    add("scheduler", "kSchedulerConfig", dict(PNDMScheduler.from_config(files["kSchedulerConfig"]).config),
        dict(PNDMScheduler(**mf.SCHEDULER).config, clip_sample=False))
    add("clip_text_encoder", "kClipTextConfig", CLIPTextConfig(**files["kClipTextConfig"]).to_dict(),
        CLIPTextConfig(**mf.CLIP_FULL).to_dict())
    add("bert_text_encoder", "kBertTextConfig", BertConfig(**files["kBertTextConfig"]).to_dict(),
        BertConfig(**mf.BERT_FULL).to_dict())
    (out / "ref" / "single_file_configs.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")

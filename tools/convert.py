#!/usr/bin/env python3
"""Convert a Taiyi Stable Diffusion model into the folder taiyi reads, with diffusers' own loaders.

Users run `taiyi convert` (C++, no Python); this script stays as the reference that tests/test_convert.py
compares `taiyi convert` with (same tensors bit for bit, same config values).

    convert.py SOURCE OUT [--dtype fp16|fp32|keep] [--force]
    convert.py MODEL.ckpt OUT --config-dir DIFFUSERS_FOLDER [--text-encoder clip|bert] [--extract-ema]
    convert.py EMBEDDING.pt OUT.safetensors --embedding

--embedding converts a textual-inversion file that taiyi does not unpickle (.pt / .bin) into one it reads:
the web UI's .pt ({"string_to_param": {"*": vectors}, "name": ...}) becomes {"emb_params": vectors}, whose
token is OUT's file stem as in the web UI; diffusers' learned_embeds.bin ({token: vectors}) keeps its
token. The pickle is read with torch's weights-only unpickler (nothing in it runs).

SOURCE is either
  - a diffusers folder (model_index.json; .bin or .safetensors weights, sharded or not, any dtype),
    e.g. the hub snapshot of IDEA-CCNL/Taiyi-Stable-Diffusion-1B-Chinese-EN-v0.1, or
  - one original-layout checkpoint (.ckpt / .safetensors, as the webui loads): UNet and VAE go through
    diffusers' own single-file loading (from_single_file with config=--config-dir), the CLIP text
    encoder through diffusers' create_diffusers_clip_model_from_ldm, a BERT text encoder (which
    diffusers cannot take from a single file) from its cond_stage_model.transformer.* tensors.
    Nothing is downloaded: --config-dir must be a diffusers folder of the same model (configs and
    tokenizer are enough, the hub repo without its weights).

OUT receives exactly what taiyi reads: model_index.json (limited to the components taiyi uses),
tokenizer/ and scheduler/ files copied, and text_encoder/, unet/, vae/ each with config.json (written
by diffusers/transformers from the loaded model, so every default is explicit) and one .safetensors
file with today's diffusers/transformers key names (legacy names such as the old VAE attention
query/key/value/proj_attn are renamed by the loaders).

Every tensor written is read back and compared bitwise with the source tensor cast to the output
dtype; the tokenizer written must give the same ids as the source one. The conversion happens in a
temporary sibling folder that is renamed to OUT at the end: a failed run leaves nothing behind.
Expected failures (bad path, unrecognised layout, truncated or corrupt weights, not enough disk
space, existing output) print one line and exit with status 2.
"""
import argparse
import errno
import gc
import hashlib
import json
import os
import pickle
import resource
import shutil
import struct
import sys
import time
import zipfile
from pathlib import Path

EXIT_USAGE = 2

# torch is imported by import_libraries() once the cheap argument checks have passed, so that a
# wrong path fails in a fraction of a second.
torch = None

# What taiyi implements, per component (see include/taiyi/*.h).
MODEL_CLASSES = {
    "text_encoder": {"CLIPTextModel", "BertModel"},
    "unet": {"UNet2DConditionModel"},
    "vae": {"AutoencoderKL"},
}
TOKENIZER_FILES = {"CLIPTokenizer": ["vocab.json", "merges.txt"], "BertTokenizer": ["vocab.txt"]}
TEXT_ENCODER_FOR_TOKENIZER = {"CLIPTokenizer": "CLIPTextModel", "BertTokenizer": "BertModel"}
TEXT_ENCODER_NAMES = {"clip": "CLIPTextModel", "bert": "BertModel"}
SAFETY_COMPONENTS = ("safety_checker", "feature_extractor")

# Original (CompVis/webui) checkpoint prefixes.
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."
LDM_CLIP_KEY = LDM_TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"
LDM_BERT_KEY = LDM_TEXT_PREFIX + "embeddings.word_embeddings.weight"

SINGLE_FILE_SUFFIXES = {".ckpt", ".safetensors", ".pt", ".pth", ".bin"}
DTYPE_NAMES = {"fp16": "float16", "fp32": "float32"}


class ConvertError(Exception):
    """An expected failure: reported as one line, exit status 2, no traceback."""


def log(msg=""):
    print(msg, flush=True)


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class MemoryPeak:
    """Anonymous memory (RssAnon), sampled when a model is loaded and when it has been written.
    ru_maxrss also counts the pages of memory-mapped weight files that were read, which the
    kernel can drop at any time; this is the part that is really held."""

    def __init__(self):
        self.peak = 0

    def sample(self):
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        except OSError:
            pass


memory = MemoryPeak()


class Timer:
    """Wall time per phase, reported at the end."""

    def __init__(self):
        self.start = time.monotonic()
        self.phases = {}

    def add(self, phase, seconds):
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def report(self):
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items())
        total = time.monotonic() - self.start
        # ru_maxrss is in KiB on Linux; it counts the mapped weight-file pages that were touched too.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        anon = f" (anonymous memory {human_bytes(memory.peak)}; the rest is mapped weight files)" if memory.peak else ""
        log(f"time: {parts}; total {total:.1f} s; peak RSS {human_bytes(peak)}{anon}")


# ----------------------------------------------------------------------------------------------
# Reading source tensors without loading them all: the reference the written files are checked
# against, and the first place a truncated or corrupt file is caught.


class TensorFiles:
    """Tensors of one or more weight files, read lazily (safetensors via safe_open, .bin/.ckpt via
    torch.load(mmap=True))."""

    def __init__(self, files, as_mapped_tensors=False):
        self.files = [Path(f) for f in files]
        self._where = {}  # name -> (kind, handle)
        self.ignored_globals = set()
        for path in self.files:
            check_not_lfs_pointer(path)
            if path.suffix == ".safetensors" and not as_mapped_tensors:
                handle = open_safetensors(path)
                for name in handle.keys():
                    self._where[name] = ("st", handle)
            elif path.suffix == ".safetensors":
                for name, value in mmap_safetensors(path).items():
                    self._where[name] = ("pt", value)
            else:
                state = torch_load_lazily(path, self.ignored_globals)
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        self._where[name] = ("pt", value)

    def names(self):
        return list(self._where)

    def __contains__(self, name):
        return name in self._where

    def tensor(self, name):
        kind, handle = self._where[name]
        return handle.get_tensor(name) if kind == "st" else handle

    def dtype(self, name):
        kind, handle = self._where[name]
        if kind == "pt":
            return handle.dtype
        return SAFETENSORS_DTYPES[handle.get_slice(name).get_dtype()]

    def numel(self, name):
        kind, handle = self._where[name]
        if kind == "pt":
            return handle.numel()
        n = 1
        for d in handle.get_slice(name).get_shape():
            n *= d
        return n


class TensorDict:
    """The same interface over tensors already in a dict (single-file checkpoints, after diffusers'
    key mapping)."""

    def __init__(self, tensors):
        self._tensors = tensors

    def names(self):
        return list(self._tensors)

    def __contains__(self, name):
        return name in self._tensors

    def tensor(self, name):
        return self._tensors[name]

    def dtype(self, name):
        return self._tensors[name].dtype

    def numel(self, name):
        return self._tensors[name].numel()


def check_not_lfs_pointer(path):
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise ConvertError(f"{path} is a git-lfs pointer, not the weights: run `git lfs pull` in the clone "
                           "(or download with huggingface-cli)")


def open_safetensors(path):
    from safetensors import safe_open
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # SafetensorError has no stable import path
        raise ConvertError(f"cannot read {path}: truncated or corrupt safetensors file ({first_line(e)})")


def mmap_safetensors(path):
    """All tensors of a safetensors file as tensors over one private memory map (as torch.load's
    mmap=True does for .ckpt): a single checkpoint of many GB is read only where it is used.
    safe_open validates the file first."""
    with open_safetensors(path) as handle:
        names = list(handle.keys())
    with open(path, "rb") as f:
        header_size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_size))
    size = path.stat().st_size
    storage = torch.UntypedStorage.from_file(str(path), False, size)
    base = 8 + header_size
    tensors = {}
    for name in names:
        info = header[name]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        data = torch.empty(0, dtype=torch.uint8).set_(storage, base + start, (end - start,))
        if (base + start) % dtype_size(dtype):
            data = data.clone()  # unaligned (not written by the safetensors library): copy this one
        tensors[name] = data.view(dtype).reshape(info["shape"])
    return tensors


class _IgnoredObject:
    """Stands for any non-tensor object of a pickled checkpoint (Lightning hyper-parameters,
    callbacks, numpy scalars...): it accepts whatever the pickle hands it and runs no code."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _IgnoredObject()


def _ignoring_pickle_module(ignored):
    """A pickle module for torch.load(weights_only=False) that resolves only torch's weights-only
    allowlist and replaces every other global by _IgnoredObject: as safe as weights_only=True, but
    a checkpoint holding training state beside its tensors still loads."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = _get_allowed_globals()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            ignored.add(full)
            return type(name, (_IgnoredObject,), {})

    class Module:
        pass

    module = Module()
    module.Unpickler = Unpickler
    module.load = pickle.load
    module.__name__ = "taiyi_ignoring_pickle"
    return module


def torch_load_lazily(path, ignored_globals):
    """torch.load of a .bin/.ckpt, memory-mapped when it is a zip archive (torch >= 1.6 files)."""
    mmap = zipfile.is_zipfile(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            if "weights_only" not in str(e) and "Unsupported global" not in str(e):
                raise
            # Training checkpoints pickle more than tensors; take the tensors, skip the rest.
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap,
                               pickle_module=_ignoring_pickle_module(ignored_globals))
    except ConvertError:
        raise
    except Exception as e:
        raise ConvertError(f"cannot read {path}: truncated or corrupt weight file ({first_line(e)})")
    while isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConvertError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


# ----------------------------------------------------------------------------------------------
# Writing: a streaming safetensors writer, so that a component never needs a second in-memory copy
# (safetensors.torch.save_file builds bytes for every tensor first). The layout follows the
# safetensors reference: u64 header size, JSON header padded with spaces to 8 bytes, tensors sorted
# by alignment then name so that each one starts on a multiple of its element size. The official
# reader checks every file afterwards (verify_written).


def write_safetensors(path, entries, metadata):
    """entries: list of (name, dtype, shape, produce) where produce() returns the tensor to write.
    Returns (sha256 hex of the whole file, size in bytes)."""
    order = sorted(entries, key=lambda e: (-dtype_size(e[1]), e[0]))
    header, offset = {}, 0
    for name, dtype, shape, _ in order:
        nbytes = dtype_size(dtype) * prod(shape)
        header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = metadata
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(header_bytes)), header_bytes):
            f.write(chunk)
            digest.update(chunk)
        for name, dtype, shape, produce in order:
            tensor = produce()
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise AssertionError(f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, declared {dtype} {shape}")
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(data)
            digest.update(data)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest(), 8 + len(header_bytes) + offset


def prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def dtype_size(dtype):
    return torch.empty((), dtype=dtype).element_size()


def same_bits(a, b):
    """Exact equality, NaN-safe: same dtype, shape and bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


# ----------------------------------------------------------------------------------------------
# Sources


def find_weight_files(component_dir, library):
    """The weight files from_pretrained would read in component_dir, as (files, variant,
    use_safetensors): safetensors before .bin, unsharded before sharded, no variant before one."""
    if library == "diffusers":
        stems = {"safetensors": "diffusion_pytorch_model", "bin": "diffusion_pytorch_model"}
    else:
        stems = {"safetensors": "model", "bin": "pytorch_model"}
    variants = [None] + sorted({p.name.split(".")[-2] for p in component_dir.glob("*.*.safetensors")} |
                               {p.name.split(".")[-2] for p in component_dir.glob("*.*.bin")})
    for variant in variants:
        for ext in ("safetensors", "bin"):
            name = stems[ext] + (f".{variant}" if variant else "") + f".{ext}"
            if (component_dir / name).is_file():
                return [component_dir / name], variant, ext == "safetensors"
            index = component_dir / f"{name}.index.json"
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except Exception as e:
                    raise ConvertError(f"cannot read shard index {index}: {first_line(e)}")
                files = [component_dir / f for f in sorted(set(weight_map.values()))]
                for f in files:
                    if not f.is_file():
                        raise ConvertError(f"{index} names {f.name}, which is missing")
                return files, variant, ext == "safetensors"
    raise ConvertError(f"{component_dir} holds no weights ({stems['safetensors']}.safetensors or "
                       f"{stems['bin']}.bin, possibly sharded)")


def read_model_index(folder):
    path = folder / "model_index.json"
    try:
        index = json.loads(path.read_text())
    except Exception as e:
        raise ConvertError(f"cannot read {path}: {first_line(e)}")
    missing = [c for c in ("text_encoder", "tokenizer", "unet", "vae", "scheduler")
               if not (isinstance(index.get(c), list) and len(index[c]) == 2 and index[c][1])]
    if missing:
        raise ConvertError(f"{path} names no {', '.join(missing)}: not a Stable Diffusion pipeline folder")
    for component, classes in MODEL_CLASSES.items():
        if index[component][1] not in classes:
            raise ConvertError(f"{path}: {component} is {index[component][1]}; taiyi supports {', '.join(sorted(classes))}")
    tokenizer = index["tokenizer"][1]
    if tokenizer not in TOKENIZER_FILES:
        raise ConvertError(f"{path}: tokenizer is {tokenizer}; taiyi supports {', '.join(TOKENIZER_FILES)}")
    if TEXT_ENCODER_FOR_TOKENIZER[tokenizer] != index["text_encoder"][1]:
        raise ConvertError(f"{path}: tokenizer {tokenizer} does not go with text encoder {index['text_encoder'][1]}")
    for name in TOKENIZER_FILES[tokenizer] + ["tokenizer_config.json"]:
        if not (folder / "tokenizer" / name).is_file():
            raise ConvertError(f"{folder / 'tokenizer' / name} is missing ({tokenizer} needs it)")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise ConvertError(f"{folder / 'scheduler' / 'scheduler_config.json'} is missing")
    return index


def model_class(library, class_name):
    import importlib
    if class_name == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        return StableDiffusionSafetyChecker
    return getattr(importlib.import_module(library), class_name)


def is_diffusers_model(cls):
    from diffusers import ModelMixin
    return issubclass(cls, ModelMixin)


class DiffusersSource:
    """A diffusers pipeline folder; models are loaded with from_pretrained."""

    kind = "diffusers folder"

    def __init__(self, root):
        self.root = root
        self.index = read_model_index(root)
        self._files = {}

    def component_path(self, component):
        return self.root / component

    def describe(self):
        kinds = set()
        for component in self.model_components():
            files, _, _ = self.weight_files(component)
            kinds |= {f.suffix for f in files}
        return f"{self.kind}, {'/'.join(sorted(kinds))} weights"

    def model_components(self):
        return list(MODEL_CLASSES)

    def config_folder(self):
        return self.root

    def weight_files(self, component):
        if component not in self._files:
            library = "diffusers" if is_diffusers_model(model_class(*self.index[component])) else "transformers"
            self._files[component] = find_weight_files(self.root / component, library)
        return self._files[component]

    def open_tensors(self, component):
        files, _, _ = self.weight_files(component)
        return TensorFiles(files)

    def load(self, component, dtype):
        cls = model_class(*self.index[component])
        _, variant, use_safetensors = self.weight_files(component)
        kwargs = dict(subfolder=component, variant=variant, use_safetensors=use_safetensors,
                      low_cpu_mem_usage=True, local_files_only=True)
        if is_diffusers_model(cls):
            kwargs["torch_dtype"] = dtype
        else:
            kwargs["dtype"] = dtype
        return cls.from_pretrained(str(self.root), **kwargs)

    def source_names(self, model, tensors):
        """model key -> source key, with the loaders' own legacy renames."""
        names = tensors.names()
        if is_diffusers_model(type(model)):
            # diffusers renames the old VAE attention names (query/key/value/proj_attn) on load.
            mapping = {n: n for n in names}
            model._fix_state_dict_keys_on_load(mapping)
            return mapping
        return transformers_key_mapping(model, names)


def transformers_key_mapping(model, names):
    """model key -> checkpoint key as transformers' from_pretrained maps them (gamma/beta, a
    base-model prefix added or removed)."""
    prefix = model.base_model_prefix
    has_prefix = bool(prefix) and any(n.startswith(prefix) for n in names)
    expects_prefix = bool(prefix) and hasattr(model, prefix)
    renaming = model._get_key_renaming_mapping(
        names, loading_base_model_from_task_state_dict=has_prefix and not expects_prefix,
        loading_task_model_from_base_state_dict=not has_prefix and expects_prefix)
    return {new: old for old, new in renaming.items()}


class SingleFileSource:
    """One original-layout checkpoint plus a diffusers folder for configs and tokenizer."""

    kind = "single-file checkpoint"

    def __init__(self, path, config_dir, text_encoder, extract_ema):
        self.path = path
        self.config_dir = config_dir
        self.extract_ema = extract_ema
        self.index = read_model_index(config_dir)
        self.raw = TensorFiles([path], as_mapped_tensors=True)
        names = set(self.raw.names())
        if not any(n.startswith(LDM_UNET_PREFIX) for n in names):
            raise ConvertError(f"unrecognised layout: {path} has no {LDM_UNET_PREFIX}* tensors, so it is not an "
                               "original-layout Stable Diffusion checkpoint")
        if not any(n.startswith(LDM_VAE_PREFIX) for n in names):
            raise ConvertError(f"{path} has no {LDM_VAE_PREFIX}* (VAE) tensors")
        found = "CLIPTextModel" if LDM_CLIP_KEY in names else "BertModel" if LDM_BERT_KEY in names else None
        if found is None:
            raise ConvertError(f"{path} has no text encoder: neither {LDM_CLIP_KEY} (CLIP) nor {LDM_BERT_KEY} (BERT)")
        if text_encoder and TEXT_ENCODER_NAMES[text_encoder] != found:
            raise ConvertError(f"--text-encoder {text_encoder}, but {path} holds a {found}")
        configured = self.index["text_encoder"][1]
        if configured != found:
            raise ConvertError(f"{path} holds a {found} text encoder but --config-dir {config_dir} is for a {configured} "
                               "model: use the config folder of the same model")
        self.checkpoint = {n: self.raw.tensor(n) for n in self.raw.names()}
        self.has_ema = sum(n.startswith("model_ema.") for n in names) > 100
        if extract_ema and not self.has_ema:
            raise ConvertError(f"--extract-ema, but {path} holds no EMA weights (model_ema.*)")

    def component_path(self, component):
        return self.path

    def describe(self):
        extra = ""
        if self.has_ema:
            extra = ", EMA weights " + ("extracted" if self.extract_ema else "present, not used (--extract-ema uses them)")
        if self.raw.ignored_globals:
            extra += f", {len(self.raw.ignored_globals)} non-tensor object types skipped"
        return f"{self.kind} {self.path.suffix}, configs from {self.config_dir}{extra}"

    def model_components(self):
        return list(MODEL_CLASSES)

    def config_folder(self):
        return self.config_dir

    def open_tensors(self, component):
        """The source tensors under diffusers/transformers names, mapped by diffusers' own
        single-file conversion functions."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                         convert_ldm_vae_checkpoint)
        if component == "unet":
            config = UNet2DConditionModel.load_config(str(self.config_dir), subfolder="unet")
            return TensorDict(convert_ldm_unet_checkpoint(self.checkpoint, config, extract_ema=self.extract_ema))
        if component == "vae":
            config = AutoencoderKL.load_config(str(self.config_dir), subfolder="vae")
            return TensorDict(convert_ldm_vae_checkpoint(self.checkpoint, config))
        if self.index["text_encoder"][1] == "CLIPTextModel":
            return TensorDict(convert_ldm_clip_checkpoint(self.checkpoint))
        return TensorDict({n[len(LDM_TEXT_PREFIX):]: t for n, t in self.checkpoint.items() if n.startswith(LDM_TEXT_PREFIX)})

    def load(self, component, dtype):
        cls = model_class(*self.index[component])
        if component in ("unet", "vae"):
            kwargs = {"extract_ema": self.extract_ema} if component == "unet" else {}
            return cls.from_single_file(self.checkpoint, config=str(self.config_dir), subfolder=component,
                                        torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=True, **kwargs)
        if cls.__name__ == "CLIPTextModel":
            from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
            return create_diffusers_clip_model_from_ldm(cls, self.checkpoint, subfolder="text_encoder",
                                                        config=str(self.config_dir), torch_dtype=dtype,
                                                        local_files_only=True)
        return self._load_bert(cls, dtype)

    def _load_bert(self, cls, dtype):
        # diffusers' single-file loader would take a BertModel's weights from the config folder, not
        # from the checkpoint; load the checkpoint's cond_stage_model.transformer.* ourselves.
        from accelerate import init_empty_weights
        config = cls.config_class.from_pretrained(str(self.config_dir), subfolder="text_encoder", local_files_only=True)
        with init_empty_weights():
            model = cls(config)
        tensors = self.open_tensors("text_encoder")
        mapping = transformers_key_mapping(model, tensors.names())
        state = {}
        for key, param in model.state_dict().items():
            if key in mapping:
                value = tensors.tensor(mapping[key])
                state[key] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
        model.load_state_dict(state, strict=False, assign=True)  # missing keys are reported by the caller
        if dtype is not None:
            model.config.dtype = dtype
        return model.eval()

    def source_names(self, model, tensors):
        if is_diffusers_model(type(model)):
            return {n: n for n in tensors.names()}
        return transformers_key_mapping(model, tensors.names())


# ----------------------------------------------------------------------------------------------
# Conversion


def target_dtypes(tensors, mode):
    """(dtype to load the model in, function source name -> dtype to write)."""
    if mode != "keep":
        dtype = getattr(torch, DTYPE_NAMES[mode])
        return dtype, lambda name: dtype if tensors.dtype(name).is_floating_point else tensors.dtype(name)
    floats = {tensors.dtype(n) for n in tensors.names() if tensors.dtype(n).is_floating_point}
    # One float dtype: load in it. Mixed: load in float32 (holds fp16 and bf16 exactly), write each
    # tensor back in its own dtype.
    load_dtype = floats.pop() if len(floats) == 1 else torch.float32
    return load_dtype, tensors.dtype


def expected_bytes(tensors, mode):
    _, write_dtype = target_dtypes(tensors, mode)
    return sum(tensors.numel(n) * dtype_size(write_dtype(n)) for n in tensors.names())


def convert_model(source, component, out_dir, mode, timer):
    """Load one model, write config.json + safetensors, read the file back and compare every
    tensor with the source tensor cast to the output dtype. Returns a report line."""
    t0 = time.monotonic()
    tensors = source.open_tensors(component)
    load_dtype, write_dtype = target_dtypes(tensors, mode)
    try:
        model = source.load(component, load_dtype)
    except ConvertError:
        raise
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as e:
        raise ConvertError(f"loading {component} from {source.component_path(component)} failed: {first_line(e)}")
    state = model.state_dict()
    memory.sample()
    timer.add("load", time.monotonic() - t0)

    # Every tensor must come from the source: the loaders leave missing ones random or on the
    # meta device with at most a warning.
    source_of = source.source_names(model, tensors)
    missing = [k for k in state if k not in source_of or source_of[k] not in tensors]
    if missing:
        raise ConvertError(f"{component}: {len(missing)} tensors are not in the source (e.g. {missing[0]}); "
                           "the checkpoint does not match the model config")
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise ConvertError(f"{component}: {meta[0]} was not loaded")
    used = set(source_of[k] for k in state)
    unused = [n for n in tensors.names() if n not in used and not n.endswith("position_ids")]
    if unused:
        log(f"  note: {component}: {len(unused)} source tensors not used by {type(model).__name__} "
            f"(e.g. {unused[0]}); diffusers ignores them too")

    t0 = time.monotonic()
    out = out_dir / component
    out.mkdir()
    if is_diffusers_model(type(model)):
        model.save_config(str(out))
        # save_config records where the model was loaded from: a local path, of no use to anyone.
        config_path = out / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("_name_or_path", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        weights = out / "diffusion_pytorch_model.safetensors"
    else:
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(str(out))
        weights = out / "model.safetensors"
    entries = []
    for key, value in state.items():
        dtype = write_dtype(source_of[key])
        entries.append((key, dtype, tuple(value.shape), lambda v=value, d=dtype: v.to(d)))
    try:
        sha, size = write_safetensors(weights, entries, {"format": "pt"})
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ConvertError(f"no space left on device while writing {weights}")
        raise
    names = {key: source_of[key] for key in state}
    memory.sample()
    del model, state, entries
    gc.collect()
    timer.add("write", time.monotonic() - t0)

    t0 = time.monotonic()
    params = verify_written(weights, names, tensors, write_dtype)
    timer.add("verify", time.monotonic() - t0)
    dtypes = sorted({str(write_dtype(n)).replace("torch.", "") for n in names.values()})
    return (f"  {component:<14} {len(names):>5} tensors {params:>13,} params {size:>15,} bytes  "
            f"{'/'.join(dtypes):<8} sha256 {sha}  {weights.name}")


def verify_written(path, names, tensors, write_dtype):
    """Read the file back with the official safetensors reader: exactly the model's tensor names,
    each bitwise equal to its source tensor cast to the output dtype (which checks the loading and
    the writing at once). names: written name -> source name. Returns the element count."""
    from safetensors import safe_open
    params = 0
    with safe_open(str(path), framework="pt") as f:
        written_names = set(f.keys())
        if written_names != set(names):
            raise AssertionError(f"{path}: written names differ from the model's: {sorted(written_names ^ set(names))[:3]}")
        for key, source_name in names.items():
            written = f.get_tensor(key)
            expected = tensors.tensor(source_name).to(write_dtype(source_name))
            if not same_bits(written, expected):
                raise AssertionError(f"{path}: {key} differs from the source tensor {source_name} cast to {expected.dtype}")
            params += written.numel()
    return params


def copy_files(src, dst):
    dst.mkdir()
    for item in sorted(src.iterdir()):
        if item.is_file():
            shutil.copy2(item, dst / item.name)


def check_tokenizer(source_dir, out_dir, class_name):
    """The copied tokenizer must load and give the same ids as the source one."""
    import transformers
    cls = getattr(transformers, class_name)
    prompts = ["a photo of an astronaut riding a horse on mars", "小桥流水人家，古道西风瘦马。", ""]
    before = cls.from_pretrained(str(source_dir / "tokenizer"), local_files_only=True)
    after = cls.from_pretrained(str(out_dir / "tokenizer"), local_files_only=True)
    for prompt in prompts:
        if before(prompt).input_ids != after(prompt).input_ids:
            raise AssertionError(f"tokenizer written to {out_dir} gives other ids for {prompt!r}")
    if before.model_max_length != after.model_max_length:
        raise AssertionError("tokenizer model_max_length changed")


def write_model_index(source_index, out_dir, keep_safety_checker):
    index = {k: source_index[k] for k in ("_class_name", "_diffusers_version") if k in source_index}
    for component in ("text_encoder", "tokenizer", "unet", "vae", "scheduler"):
        index[component] = source_index[component]
    if keep_safety_checker:
        for component in SAFETY_COMPONENTS:
            index[component] = source_index[component]
        if "requires_safety_checker" in source_index:
            index["requires_safety_checker"] = source_index["requires_safety_checker"]
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Arguments and the output folder


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="convert.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="diffusers folder, or an original-layout .ckpt/.safetensors file")
    ap.add_argument("out", type=Path, help="output folder (must not exist or be empty, unless --force)")
    ap.add_argument("--dtype", choices=["fp16", "fp32", "keep"], default="keep",
                    help="dtype of the written weights: fp16 halves disk and load time (rounds the weights), "
                         "fp32 or keep are exact (default: keep the source's)")
    ap.add_argument("--config-dir", type=Path,
                    help="single-file input only: a diffusers folder of the same model to take model_index, "
                         "configs, tokenizer and scheduler from (weights not needed)")
    ap.add_argument("--text-encoder", choices=sorted(TEXT_ENCODER_NAMES),
                    help="single-file input only: the text encoder the checkpoint must hold "
                         "(default: whatever it holds, checked against --config-dir)")
    ap.add_argument("--extract-ema", action="store_true",
                    help="single-file input only: take the UNet from the checkpoint's EMA weights (as diffusers' "
                         "extract_ema); default: the non-EMA weights, as diffusers' from_single_file")
    ap.add_argument("--keep-safety-checker", action="store_true",
                    help="also convert safety_checker/ and copy feature_extractor/ (taiyi does not use them)")
    ap.add_argument("--embedding", action="store_true",
                    help="SOURCE is a textual-inversion .pt/.bin file, OUT the .safetensors file to write")
    ap.add_argument("--force", action="store_true",
                    help="replace an existing non-empty output folder (it must hold a model_index.json)")
    return ap.parse_args(argv)


def check_paths(args):
    """Checks that need no torch: fail fast and cheaply."""
    src, out = args.source, args.out
    if not src.exists():
        raise ConvertError(f"input {src} does not exist")
    single_file = src.is_file()
    if single_file:
        if src.suffix not in SINGLE_FILE_SUFFIXES:
            raise ConvertError(f"unrecognised layout: {src} is a file but not a checkpoint "
                               f"({', '.join(sorted(SINGLE_FILE_SUFFIXES))})")
        if args.config_dir is None:
            raise ConvertError(f"{src} is a single-file checkpoint: pass --config-dir, a diffusers folder of the same "
                               "model (its configs and tokenizer; see tools/CONVERT.md)")
        if not (args.config_dir / "model_index.json").is_file():
            raise ConvertError(f"--config-dir {args.config_dir} is not a diffusers folder (no model_index.json)")
    else:
        if not (src / "model_index.json").is_file():
            hint = ""
            checkpoints = sorted(p.name for p in src.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES)
            if checkpoints:
                hint = f"; to convert a single checkpoint pass the file itself (e.g. {src / checkpoints[0]})"
            raise ConvertError(f"unrecognised layout: {src} has no model_index.json, so it is not a diffusers "
                               f"pipeline folder{hint}")
        for flag, value in (("--config-dir", args.config_dir), ("--text-encoder", args.text_encoder),
                            ("--extract-ema", args.extract_ema)):
            if value:
                raise ConvertError(f"{flag} is for single-file checkpoints; {src} is a diffusers folder")

    out_abs, src_abs = out.resolve(), src.resolve()
    if out_abs == src_abs or src_abs.is_relative_to(out_abs) or out_abs.is_relative_to(src_abs):
        raise ConvertError(f"output {out} overlaps the input {src}")
    if args.config_dir and (args.config_dir.resolve().is_relative_to(out_abs)):
        raise ConvertError(f"output {out} contains --config-dir {args.config_dir}")
    if out.exists():
        if not out.is_dir():
            raise ConvertError(f"output {out} exists and is not a folder")
        if any(out.iterdir()):
            if not args.force:
                raise ConvertError(f"output folder {out} is not empty: pass --force to replace it")
            if not (out / "model_index.json").is_file():
                raise ConvertError(f"output folder {out} is not empty and holds no model_index.json: "
                                   "refusing to replace it, even with --force")
    return single_file


def check_free_space(folder, needed):
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConvertError(f"not enough disk space in {folder}: the output needs about {human_bytes(needed)}, "
                           f"{human_bytes(free)} free")


def convert_embedding(args):
    """A textual-inversion pickle to safetensors (see the module docstring)."""
    src, out = args.source, args.out
    if not src.is_file():
        raise ConvertError(f"input {src} does not exist")
    if out.suffix != ".safetensors":
        raise ConvertError(f"--embedding: the output {out} must be a .safetensors file")
    if out.exists() and not args.force:
        raise ConvertError(f"output {out} exists (--force replaces it)")
    import_libraries()
    if src.suffix == ".safetensors":
        raise ConvertError(f"{src} is already a safetensors file: taiyi reads it as it is")
    state = torch_load_lazily(src, set())
    if "string_to_param" in state:  # the web UI's textual_inversion.py save format
        params = state["string_to_param"]
        if not isinstance(params, dict) or "*" not in params or not torch.is_tensor(params["*"]):
            raise ConvertError(f"{src}: 'string_to_param' holds no '*' tensor")
        tensors = {"emb_params": params["*"]}
    elif "emb_params" in state and torch.is_tensor(state["emb_params"]):
        tensors = {"emb_params": state["emb_params"]}
    else:
        found = {k: v for k, v in state.items() if torch.is_tensor(v)}
        if len(found) != 1:
            raise ConvertError(f"{src}: not a textual-inversion embedding (expected 'string_to_param' or one "
                               f"{{token: vectors}} tensor, found {len(found)} tensors)")
        tensors = found
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
    for name, t in tensors.items():
        if t.dim() not in (1, 2) or t.numel() == 0:
            raise ConvertError(f"{src}: '{name}' has shape {tuple(t.shape)}; an embedding is [dim] or [vectors, dim]")
    tmp = out.with_name(out.name + ".tmp")
    entries = [(k, torch.float32, tuple(v.shape), (lambda v=v: v)) for k, v in tensors.items()]
    write_safetensors(tmp, entries, {"format": "pt", "source": src.name})
    os.replace(tmp, out)
    log(f"wrote {out} ({', '.join(f'{k} {list(v.shape)}' for k, v in tensors.items())})")


def convert(args):
    if args.embedding:
        return convert_embedding(args)
    timer = Timer()
    memory.peak = 0
    single_file = check_paths(args)
    import_libraries()

    t0 = time.monotonic()
    if single_file:
        source = SingleFileSource(args.source, args.config_dir, args.text_encoder, args.extract_ema)
    else:
        source = DiffusersSource(args.source)
    config_dir = source.config_folder()
    owners = {component: source for component in source.model_components()}
    if args.keep_safety_checker:
        for component in SAFETY_COMPONENTS:
            entry = source.index.get(component)
            if not (isinstance(entry, list) and entry[1] and (config_dir / component).is_dir()):
                raise ConvertError(f"--keep-safety-checker: {config_dir} has no {component}")
        # Original checkpoints hold no safety checker: it comes from the diffusers folder.
        owners["safety_checker"] = source if not single_file else DiffusersSource(config_dir)
    # Open every weight file once before writing anything: truncated files fail here, and the
    # headers give the output size for the disk-space check.
    needed = 0
    for component, owner in owners.items():
        needed += expected_bytes(owner.open_tensors(component), args.dtype)
    small = sum(p.stat().st_size for c in ("tokenizer", "scheduler", "feature_extractor")
                for p in (config_dir / c).glob("*") if p.is_file())
    timer.add("open", time.monotonic() - t0)

    out = args.out
    log(f"convert.py: {args.source} ({source.describe()})")
    log(f"        -> {out} (dtype {args.dtype}, weights about {human_bytes(needed)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(out.parent, needed + small + max(needed // 100, 16 << 20))

    tmp = out.parent / f".{out.name}.convert-tmp-{os.getpid()}"
    done = False
    try:
        tmp.mkdir()
        for component, owner in owners.items():
            log(convert_model(owner, component, tmp, args.dtype, timer))
        t0 = time.monotonic()
        copy_files(config_dir / "tokenizer", tmp / "tokenizer")
        copy_files(config_dir / "scheduler", tmp / "scheduler")
        if args.keep_safety_checker:
            copy_files(config_dir / "feature_extractor", tmp / "feature_extractor")
        write_model_index(source.index, tmp, args.keep_safety_checker)
        check_tokenizer(config_dir, tmp, source.index["tokenizer"][1])
        timer.add("verify", time.monotonic() - t0)
        replace_folder(tmp, out)
        done = True
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ConvertError(f"no space left on device while writing into {out.parent}")
        raise
    finally:
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"verified: every tensor read back equals the source cast to the output dtype (bitwise); "
        f"tokenizer gives the same ids")
    log(f"wrote {out}")
    timer.report()


def replace_folder(tmp, out):
    """Rename tmp to out; an existing out (allowed by --force) is moved aside first and deleted last."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.convert-old-{os.getpid()}"
            out.rename(old)
        else:
            out.rmdir()
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


def quiet_libraries():
    # The converter reports what it checked itself; the libraries' warnings about unused keys or
    # the disabled safety checker would only confuse.
    import diffusers
    import transformers
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def import_libraries():
    global torch
    try:
        import diffusers  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        raise ConvertError(f"{first_line(e)}: run it with the project's virtualenv "
                           "(~/.cache/taiyi/venv/bin/python tools/convert.py, see scripts/setup.sh)")
    init_tables()
    quiet_libraries()


def init_tables():
    global SAFETENSORS_DTYPES, SAFETENSORS_NAMES
    SAFETENSORS_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                         torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                         torch.uint8: "U8", torch.bool: "BOOL"}
    SAFETENSORS_DTYPES = {v: k for k, v in SAFETENSORS_NAMES.items()}


def main(argv=None):
    # Offline by design: nothing here may reach the hub.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY"):
        os.environ.setdefault(var, "1")
    args = parse_args(argv)
    try:
        convert(args)
    except ConvertError as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("convert.py: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Tests of `taiyi convert` (C++) against tools/convert.py (Python, diffusers' own loaders), and of
tools/convert.py itself, which stays as the reference these tests compare with. Run on the tiny random
pipelines of the fixture harness:

    TAIYI_FIXTURES=DIR ~/.cache/taiyi/venv/bin/python tests/test_convert.py     (DIR from tools/make_fixtures.py)

From out/tiny-clip and out/tiny-bert the test makes the inputs users hold: a diffusers folder with
.bin weights (save_pretrained(safe_serialization=False); the CLIP one with the legacy VAE attention
names of 2022 checkpoints, a position_ids buffer in the BERT one, and a safety checker), and
original-layout single-file checkpoints (.safetensors, and a .ckpt carrying training state and EMA
weights) written with the inverse of diffusers' own single-file key mapping. Each is converted with
the real command line, then:
  - the converted folder loads in diffusers' StableDiffusionPipeline and gives the same image
    (uint8, 64x48, 5 steps, fixed seed) as the original pipeline;
  - fp16 weights take half the bytes of fp32 ones and equal the original weights cast to fp16;
  - expected failures exit with status 2, name the problem, print no traceback and leave no output;
  - with TAIYI_BINARY set (ctest sets it), `taiyi info` reads the converted folders without a problem;
  - `taiyi convert` on the same inputs writes the same tensors, bit for bit, and configs with the same
    values (diffusers' / transformers' init arguments) as tools/convert.py; its folders load in diffusers
    with the original weights and give the original image; bf16 is the originals cast; its errors are one
    line with exit status 2.
Missing fixtures fail the test.
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
CONVERT = ROOT / "tools" / "convert.py"
sys.path.insert(0, str(CONVERT.parent))
import convert  # noqa: E402

# The tiny models gain nothing from threads, and on a busy machine OpenMP spinning makes them 30x
# slower.
torch.set_num_threads(1)
FAMILIES = ("clip", "bert")
PROMPTS = {"clip": "a photo of an astronaut riding a horse", "bert": "小桥流水人家，古道西风瘦马"}
EXIT_USAGE = 2


def fixture_dir():
    value = os.environ.get("TAIYI_FIXTURES")
    if not value:
        raise RuntimeError("TAIYI_FIXTURES is not set: make the fixtures with tools/make_fixtures.py DIR "
                           "and run TAIYI_FIXTURES=DIR python tests/test_convert.py")
    folder = Path(value)
    for family in FAMILIES:
        if not (folder / f"tiny-{family}" / "model_index.json").is_file():
            raise RuntimeError(f"{folder}/tiny-{family} is missing: regenerate with tools/make_fixtures.py {folder}")
    return folder


def run_convert(*args):
    """convert.py's main() in this process (importing torch once per test run, not per conversion);
    test_command_line runs the real command."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = convert.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            returncode = e.code
    return types.SimpleNamespace(returncode=returncode, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def run_command(*args):
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args)], capture_output=True, text=True)


def generate(folder, **load_kwargs):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False,
                                                   **load_kwargs)
    pipe.set_progress_bar_config(disable=True)
    family = "bert" if pipe.text_encoder.__class__.__name__ == "BertModel" else "clip"
    image = pipe(PROMPTS[family], height=64, width=48, num_inference_steps=5,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    return (image * 255).round().astype(np.uint8)


WEIGHT_FILES = (("text_encoder", "model.safetensors"), ("unet", "diffusion_pytorch_model.safetensors"),
                ("vae", "diffusion_pytorch_model.safetensors"))


def run_taiyi(*args):
    """The taiyi binary ($TAIYI_BINARY, which ctest sets)."""
    binary = os.environ.get("TAIYI_BINARY")
    if not binary:
        raise RuntimeError("TAIYI_BINARY must name the taiyi binary (ctest sets it)")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True)


def weight_files(folder):
    return sorted(Path(folder).glob("*/*.safetensors"))


# The inverse of diffusers' single-file mapping: tests/reference/ldm_layout.py.
sys.path.insert(0, str(ROOT / "tests" / "reference"))
from ldm_layout import LEGACY_VAE_ATTENTION, original_checkpoint  # noqa: E402


def tiny_safety_checker():
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor
    torch.manual_seed(3)
    config = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2),
                        vision_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8),
                        projection_dim=8)
    return StableDiffusionSafetyChecker(config).eval(), CLIPImageProcessor(crop_size=32, size=32)


class ConvertTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from diffusers import StableDiffusionPipeline
        cls.fixtures = fixture_dir()
        cls.tmp = Path(tempfile.mkdtemp(prefix="taiyi-convert-test-"))
        cls.outputs = {}
        cls.original_images = {}
        for family in FAMILIES:
            folder = cls.fixtures / f"tiny-{family}"
            cls.original_images[family] = generate(folder)
            # The hub layout: .bin weights.
            pipe = StableDiffusionPipeline.from_pretrained(str(folder))
            bin_folder = cls.tmp / f"{family}-bin"
            if family == "clip":
                checker, processor = tiny_safety_checker()
                pipe.register_modules(safety_checker=checker, feature_extractor=processor)
            pipe.save_pretrained(bin_folder, safe_serialization=False)
            if family == "clip":
                # Taiyi-era (diffusers 0.6) VAE attention names, which diffusers renames on load.
                path = bin_folder / "vae" / "diffusion_pytorch_model.bin"
                state = torch.load(path, weights_only=True)
                for key in [k for k in state if ".attentions." in k]:
                    for new, old in LEGACY_VAE_ATTENTION.items():
                        if f".{new}." in key:
                            state[key.replace(f".{new}.", f".{old}.")] = state.pop(key)
                torch.save(state, path)
            else:
                # Old transformers checkpoints carry the position_ids buffer.
                path = bin_folder / "text_encoder" / "pytorch_model.bin"
                state = torch.load(path, weights_only=True)
                state["embeddings.position_ids"] = torch.arange(512)[None]
                torch.save(state, path)
            # Configs and tokenizer only, as `huggingface-cli download --include "*.json" "*.txt"`.
            configs = cls.tmp / f"{family}-configs"
            for item in folder.rglob("*"):
                if item.is_file() and item.suffix in (".json", ".txt"):
                    (configs / item.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(item, configs / item.relative_to(folder))
            save_file(original_checkpoint(folder), cls.tmp / f"{family}.safetensors")
        # A webui/Lightning .ckpt: training state beside the tensors, and EMA weights (negated here,
        # so that using them by mistake shows).
        original = original_checkpoint(cls.fixtures / "tiny-clip")
        ema = {"model_ema." + k[len("model."):].replace(".", ""): -v
               for k, v in original.items() if k.startswith("model.diffusion_model.")}
        torch.save({"state_dict": {**original, **ema}, "global_step": 1000,
                    "hyper_parameters": argparse.Namespace(lr=1e-5)}, cls.tmp / "clip.ckpt")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def convert(self, name, *args):
        """Convert once per name; later calls reuse the output."""
        if name not in self.outputs:
            out = self.tmp / "out" / name
            result = run_convert(*args, out)
            self.assertEqual(result.returncode, 0, f"convert.py {args} failed:\n{result.stdout}\n{result.stderr}")
            self.assertIn("verified", result.stdout)
            self.outputs[name] = out
        return self.outputs[name]

    def assert_same_image(self, family, folder):
        image = generate(folder)
        self.assertEqual(image.shape, (64, 48, 3))
        self.assertTrue(np.array_equal(image, self.original_images[family]),
                        f"{folder}: image differs from the original pipeline's "
                        f"(max |diff| {np.abs(image.astype(int) - self.original_images[family]).max()})")

    def assert_taiyi_layout(self, folder, keep_safety_checker=False):
        index = json.loads((folder / "model_index.json").read_text())
        expected = {"text_encoder", "tokenizer", "unet", "vae", "scheduler"}
        if keep_safety_checker:
            expected |= {"safety_checker", "feature_extractor"}
        self.assertEqual({k for k in index if not k.startswith("_") and k != "requires_safety_checker"}, expected)
        for component, name in (("text_encoder", "model.safetensors"), ("unet", "diffusion_pytorch_model.safetensors"),
                                ("vae", "diffusion_pytorch_model.safetensors")):
            self.assertTrue((folder / component / "config.json").is_file())
            self.assertTrue((folder / component / name).is_file())
            self.assertEqual(list((folder / component).glob("*.bin")), [])
        self.assertTrue((folder / "scheduler" / "scheduler_config.json").is_file())
        self.assertEqual((folder / "safety_checker").exists(), keep_safety_checker)
        # No temporary folder left beside the output.
        self.assertEqual([p.name for p in folder.parent.iterdir() if ".convert-" in p.name], [])

    # -- conversions that must give the original image ------------------------------------------

    def test_bin_folder_converts_to_same_image(self):
        for family in FAMILIES:
            with self.subTest(family=family):
                out = self.convert(f"{family}-bin-fp32", self.tmp / f"{family}-bin", "--dtype", "fp32")
                self.assert_taiyi_layout(out)
                self.assert_same_image(family, out)

    def test_legacy_vae_attention_names_are_renamed(self):
        out = self.convert("clip-bin-fp32", self.tmp / "clip-bin", "--dtype", "fp32")
        with safe_open(str(out / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as f:
            names = set(f.keys())
        self.assertIn("decoder.mid_block.attentions.0.to_q.weight", names)
        self.assertIn("encoder.mid_block.attentions.0.to_out.0.bias", names)
        self.assertFalse([n for n in names if ".query." in n or ".proj_attn." in n])

    def test_single_file_safetensors_converts_to_same_image(self):
        for family in FAMILIES:
            with self.subTest(family=family):
                out = self.convert(f"{family}-single", self.tmp / f"{family}.safetensors",
                                   "--config-dir", self.tmp / f"{family}-configs", "--text-encoder", family)
                self.assert_taiyi_layout(out)
                self.assert_same_image(family, out)

    def test_ckpt_with_training_state_converts_to_same_image(self):
        out = self.convert("clip-ckpt", self.tmp / "clip.ckpt", "--config-dir", self.tmp / "clip-configs")
        self.assert_same_image("clip", out)

    def test_extract_ema_takes_the_ema_weights(self):
        out = self.convert("clip-ckpt-ema", self.tmp / "clip.ckpt", "--config-dir", self.tmp / "clip-configs",
                           "--extract-ema")
        converted = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
        original = load_file(self.fixtures / "tiny-clip" / "unet" / "diffusion_pytorch_model.safetensors")
        self.assertEqual(set(converted), set(original))
        for key in original:
            self.assertTrue(torch.equal(converted[key], -original[key]), key)

    def test_fp16_weights_are_half_the_bytes_and_equal_the_cast_originals(self):
        fp32 = self.convert("clip-bin-fp32", self.tmp / "clip-bin", "--dtype", "fp32")
        fp16 = self.convert("clip-bin-fp16", self.tmp / "clip-bin", "--dtype", "fp16", "--keep-safety-checker")
        self.assert_taiyi_layout(fp16, keep_safety_checker=True)
        bytes32 = sum(p.stat().st_size for p in weight_files(fp32))
        bytes16 = sum(p.stat().st_size for p in weight_files(fp16) if p.parent.name != "safety_checker")
        self.assertAlmostEqual(bytes16 / bytes32, 0.5, delta=0.005, msg=f"fp16 {bytes16} B vs fp32 {bytes32} B")
        original = self.fixtures / "tiny-clip"
        for component, name in (("text_encoder", "model.safetensors"), ("unet", "diffusion_pytorch_model.safetensors"),
                                ("vae", "diffusion_pytorch_model.safetensors")):
            converted = load_file(fp16 / component / name)
            source = load_file(original / component / name)
            self.assertEqual(set(converted), set(source), component)
            for key, tensor in source.items():
                self.assertEqual(converted[key].dtype, torch.float16, key)
                self.assertTrue(torch.equal(converted[key], tensor.half()), f"{component}: {key}")
        # The same image as diffusers running the original weights in fp16.
        image = generate(fp16, torch_dtype=torch.float16)
        expected = generate(original, torch_dtype=torch.float16)
        self.assertTrue(np.array_equal(image, expected), "fp16 conversion: image differs from diffusers' fp16 run")

    def test_command_line(self):
        # The real command: exit status 0 and a report; an existing model folder replaced by --force.
        out = self.tmp / "out" / "forced"
        out.mkdir(parents=True)
        (out / "model_index.json").write_text("{}")
        (out / "stale.txt").write_text("old")
        result = run_command(self.fixtures / "tiny-bert", out, "--force")
        self.assertEqual(result.returncode, 0, result.stderr)
        for part in ("text_encoder", "unet", "vae", "sha256", "verified", "peak RSS"):
            self.assertIn(part, result.stdout)
        self.assertFalse((out / "stale.txt").exists())
        self.assert_taiyi_layout(out)
        # An expected failure: status 2, one line, no traceback.
        result = run_command(self.tmp / "no-such-model", self.tmp / "out" / "never")
        self.assertEqual(result.returncode, EXIT_USAGE)
        self.assertEqual(result.stderr.strip().splitlines(),
                         [f"convert.py: error: input {self.tmp / 'no-such-model'} does not exist"])
        self.assertFalse((self.tmp / "out" / "never").exists())

    def test_taiyi_reads_the_converted_folders(self):
        self.assertTrue(os.environ.get("TAIYI_BINARY"), "TAIYI_BINARY must name the taiyi binary (ctest sets it)")
        outputs = [self.convert("clip-bin-fp32", self.tmp / "clip-bin", "--dtype", "fp32"),
                   self.convert("clip-bin-fp16", self.tmp / "clip-bin", "--dtype", "fp16", "--keep-safety-checker"),
                   self.convert("bert-single", self.tmp / "bert.safetensors", "--config-dir", self.tmp / "bert-configs",
                                "--text-encoder", "bert")]
        for out in outputs:
            result = subprocess.run([os.environ["TAIYI_BINARY"], "info", "--model", str(out)],
                                    capture_output=True, text=True)
            self.assertEqual(result.returncode, 0, f"taiyi info --model {out}:\n{result.stdout}\n{result.stderr}")
            self.assertEqual(result.stdout.count("weights match"), 3, result.stdout)
        # The converted folders give, in taiyi, the image the original gives in diffusers (fp32 on CPU).
        for family, out in (("clip", outputs[0]), ("bert", outputs[2])):
            png = self.tmp / f"taiyi-{family}.png"
            result = subprocess.run([os.environ["TAIYI_BINARY"], PROMPTS[family], "--model", str(out), "--steps", "5",
                                     "-W", "48", "-H", "64", "--seed", "0", "--device", "cpu", "-o", str(png),
                                     "--overwrite", "-q"], capture_output=True, text=True)
            self.assertEqual(result.returncode, 0, result.stderr)
            from PIL import Image
            image = np.asarray(Image.open(png).convert("RGB"))
            diff = np.abs(image.astype(int) - self.original_images[family].astype(int))
            self.assertLessEqual(diff.max(), 1, f"{family}: taiyi on the converted folder vs diffusers on the original")
            self.assertGreaterEqual((diff == 0).mean(), 0.999)

    # -- taiyi convert (C++) against this reference ---------------------------------------------------

    def taiyi_convert(self, name, source, *options):
        """`taiyi convert SOURCE OUT OPTIONS...` once per name, with the real binary."""
        out = self.tmp / "taiyi" / name
        if not out.exists():
            result = run_taiyi("convert", source, out, *options)
            self.assertEqual(result.returncode, 0, f"taiyi convert {source} {options}:\n{result.stdout}\n{result.stderr}")
            self.assertEqual(result.stdout.count("verified"), 3, result.stdout)
            self.assertEqual([p.name for p in out.parent.iterdir() if ".convert-" in p.name], [])
        return out

    def assert_same_weights(self, folder, reference):
        for component, name in WEIGHT_FILES:
            ours, theirs = load_file(folder / component / name), load_file(reference / component / name)
            self.assertEqual(set(ours), set(theirs), f"{folder.name}: {component}")
            for key, tensor in theirs.items():
                self.assertTrue(convert.same_bits(ours[key], tensor), f"{folder.name}: {component}: {key}")

    def assert_same_configs(self, folder, reference):
        import diffusers
        from transformers import AutoConfig
        for component in ("unet", "vae", "scheduler"):
            config = json.loads((reference / component / ("scheduler_config.json" if component == "scheduler"
                                                          else "config.json")).read_text())
            cls = getattr(diffusers, config["_class_name"])
            ours, theirs = (cls.extract_init_dict(cls.load_config(f / component))[0] for f in (folder, reference))
            self.assertEqual(ours, theirs, f"{folder.name}: {component}")
        ignored = {"_name_or_path", "transformers_version"}
        ours, theirs = ({k: v for k, v in AutoConfig.from_pretrained(f / "text_encoder").to_dict().items() if k not in ignored}
                        for f in (folder, reference))
        self.assertEqual(ours, theirs, f"{folder.name}: text_encoder")

    def test_taiyi_convert_equals_the_reference_converter(self):
        # (name, source, taiyi's options, tools/convert.py's extra options)
        cases = [("clip-bin-fp32", self.tmp / "clip-bin", ["--dtype", "fp32"], []),
                 ("bert-bin-fp32", self.tmp / "bert-bin", ["--dtype", "fp32"], []),
                 ("clip-bin-fp16", self.tmp / "clip-bin", ["--dtype", "fp16"], ["--keep-safety-checker"]),
                 ("bert-single", self.tmp / "bert.safetensors", ["--config-dir", self.tmp / "bert-configs"],
                  ["--text-encoder", "bert"]),
                 ("clip-ckpt-ema", self.tmp / "clip.ckpt", ["--config-dir", self.tmp / "clip-configs", "--extract-ema"], [])]
        for name, source, options, reference_only in cases:
            with self.subTest(name=name):
                reference = self.convert(name, source, *options, *reference_only)
                folder = self.taiyi_convert(name, source, *options)
                self.assert_same_weights(folder, reference)
                self.assert_same_configs(folder, reference)
                for file in (reference / "tokenizer").iterdir():
                    self.assertEqual((folder / "tokenizer" / file.name).read_bytes(), file.read_bytes(), file.name)

    def test_taiyi_converted_folders_load_in_diffusers(self):
        from diffusers import StableDiffusionPipeline
        folder = self.taiyi_convert("clip-bin-fp32", self.tmp / "clip-bin", "--dtype", "fp32")
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
        original = self.fixtures / "tiny-clip"
        for component, name in WEIGHT_FILES:
            expected = load_file(original / component / name)
            loaded = getattr(pipe, component).state_dict()
            self.assertEqual(set(loaded), set(expected), component)
            for key, tensor in expected.items():
                self.assertTrue(torch.equal(loaded[key], tensor), f"{component}: {key}")
        self.assert_same_image("clip", folder)
        self.assert_same_image("bert", self.taiyi_convert("bert-single", self.tmp / "bert.safetensors",
                                                          "--config-dir", self.tmp / "bert-configs"))
        # bf16 (which tools/convert.py does not write): the originals cast, tensor by tensor.
        bf16 = self.taiyi_convert("clip-bf16", original, "--dtype", "bf16")
        for component, name in WEIGHT_FILES:
            converted, source = load_file(bf16 / component / name), load_file(original / component / name)
            self.assertEqual(set(converted), set(source), component)
            for key, tensor in source.items():
                self.assertTrue(convert.same_bits(converted[key], tensor.to(torch.bfloat16)), f"{component}: {key}")

    def test_taiyi_convert_errors_are_one_line(self):
        busy = self.failure_out("taiyi-busy")
        busy.mkdir()
        (busy / "keep.txt").write_text("mine")
        not_a_model = self.tmp / "notes.txt"
        not_a_model.write_text("hello")
        for args, parts in (([self.fixtures / "tiny-clip", busy], [busy, "not empty"]),
                            ([not_a_model, self.failure_out("taiyi-not-a-model")], [not_a_model]),
                            ([self.fixtures / "tiny-clip", self.failure_out("taiyi-dtype"), "--dtype", "fp8"],
                             ["--dtype", "fp8"])):
            result = run_taiyi("convert", *args)
            self.assertEqual(result.returncode, EXIT_USAGE, f"{args}: {result.stderr}")
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertTrue(lines[0].startswith("taiyi: error: "), lines[0])
            for part in parts:
                self.assertIn(str(part), lines[0])
            self.assertEqual(sorted(p.name for p in args[1].parent.iterdir()), ["out"] if args[1] == busy else [])
        self.assertEqual((busy / "keep.txt").read_text(), "mine")

    # -- expected failures -------------------------------------------------------------------------

    def assert_fails(self, args, out, *message_parts):
        result = run_convert(*args, out)
        self.assertEqual(result.returncode, EXIT_USAGE, f"{args}: rc {result.returncode}\n{result.stderr}")
        self.assertNotIn("Traceback", result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, f"expected a one-line error, got:\n{result.stderr}")
        for part in message_parts:
            self.assertIn(str(part), lines[0])
        self.assertEqual([p.name for p in out.parent.iterdir() if ".convert-" in p.name], [])
        return lines[0]

    def failure_out(self, name):
        parent = self.tmp / "fail" / name
        parent.mkdir(parents=True)
        return parent / "out"

    def test_embedding_pickles_become_safetensors(self):
        from safetensors.torch import load_file
        vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
        # As the web UI's textual_inversion.py saves one (a dict of tensors, strings and ints).
        webui = self.tmp / "webui-embedding.pt"
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "style",
                    "step": 1000, "sd_checkpoint": "a1b2c3", "sd_checkpoint_name": "taiyi"}, webui)
        out = self.tmp / "my-style.safetensors"
        result = run_convert(webui, out, "--embedding")
        self.assertEqual(result.returncode, 0, result.stderr)
        written = load_file(out)
        self.assertEqual(list(written), ["emb_params"])
        self.assertTrue(torch.equal(written["emb_params"], vectors))
        diffusers_bin = self.tmp / "learned_embeds.bin"
        torch.save({"<cat-toy>": vectors[0]}, diffusers_bin)
        out = self.tmp / "cat-toy.safetensors"
        self.assertEqual(run_convert(diffusers_bin, out, "--embedding").returncode, 0)
        self.assertTrue(torch.equal(load_file(out)["<cat-toy>"], vectors[0]))
        # Not an embedding: one line, nothing written.
        bad = self.tmp / "two.bin"
        torch.save({"a": vectors, "b": vectors}, bad)
        result = run_convert(bad, self.tmp / "two.safetensors", "--embedding")
        self.assertEqual(result.returncode, 2)
        self.assertIn("not a textual-inversion embedding", result.stderr)
        self.assertFalse((self.tmp / "two.safetensors").exists())

    def test_wrong_input_path(self):
        out = self.failure_out("wrong-path")
        self.assert_fails([self.tmp / "no-such-model"], out, self.tmp / "no-such-model", "does not exist")
        self.assertFalse(out.exists())

    def test_non_empty_output_needs_force(self):
        out = self.failure_out("non-empty")
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        self.assert_fails([self.fixtures / "tiny-clip"], out, out, "not empty", "--force")
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["keep.txt"])
        # --force replaces only model folders: never an unrelated one.
        self.assert_fails([self.fixtures / "tiny-clip", "--force"], out, out, "no model_index.json")
        self.assertEqual((out / "keep.txt").read_text(), "mine")

    def test_truncated_bin(self):
        source = self.tmp / "truncated-bin"
        shutil.copytree(self.tmp / "clip-bin", source)
        weights = source / "unet" / "diffusion_pytorch_model.bin"
        os.truncate(weights, weights.stat().st_size // 2)
        out = self.failure_out("truncated-bin")
        self.assert_fails([source], out, weights, "truncated or corrupt")
        self.assertFalse(out.exists())

    def test_truncated_safetensors(self):
        source = self.tmp / "truncated-safetensors"
        shutil.copytree(self.fixtures / "tiny-bert", source)
        weights = source / "vae" / "diffusion_pytorch_model.safetensors"
        os.truncate(weights, weights.stat().st_size - 100)
        out = self.failure_out("truncated-safetensors")
        self.assert_fails([source], out, weights, "truncated or corrupt")
        self.assertFalse(out.exists())

    def test_truncated_single_file(self):
        checkpoint = self.tmp / "truncated.safetensors"
        data = (self.tmp / "clip.safetensors").read_bytes()
        checkpoint.write_bytes(data[: len(data) * 2 // 3])
        out = self.failure_out("truncated-single")
        self.assert_fails([checkpoint, "--config-dir", self.tmp / "clip-configs"], out, checkpoint,
                          "truncated or corrupt")
        self.assertFalse(out.exists())

    def test_unrecognised_layout_folder(self):
        source = self.tmp / "not-a-pipeline"
        (source / "unet").mkdir(parents=True)
        (source / "unet" / "config.json").write_text("{}")
        out = self.failure_out("layout")
        self.assert_fails([source], out, source, "unrecognised layout", "model_index.json")
        self.assertFalse(out.exists())

    def test_single_file_needs_config_dir(self):
        out = self.failure_out("no-config-dir")
        self.assert_fails([self.tmp / "clip.safetensors"], out, "--config-dir")
        self.assertFalse(out.exists())

    def test_single_file_text_encoder_mismatch(self):
        out = self.failure_out("mismatch")
        self.assert_fails([self.tmp / "bert.safetensors", "--config-dir", self.tmp / "clip-configs"], out,
                          "BertModel", "CLIPTextModel")
        self.assertFalse(out.exists())


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""PyTorch checkpoint references (src/loaders/torch_zip.cpp, torch_pickle.cpp, torch_checkpoint.cpp): real
torch.save files, their tensors as torch.load reads them, and hostile files made by editing bytes. All
files are a few KB.

checkpoint/weights.bin          OrderedDict of every storage dtype, non-contiguous views (a transpose, a slice
                                with a storage offset, a column), two tensors sharing one storage, an
                                nn.Parameter, a 0-d and an empty tensor (what pytorch_model.bin holds)
checkpoint/weights_protocol4.bin, weights_protocol5.bin
                                the same, pickled with protocols 4 and 5
checkpoint/lightning.ckpt       a Lightning-like dict: epoch, global_step, state_dict, optimizer_states with
                                tensors, lr_schedulers, callbacks holding an object of a class the reader cannot
                                know (module taiyi_test_callbacks, made up here), hyper_parameters (argparse.Namespace)
checkpoint/nested.ckpt          {"state_dict": {"state_dict": {...}}, "epoch": 1}
checkpoint/exploit_*.ckpt       pickles that run os.system / builtins.eval / builtins.exec (or a reduce chain,
                                getattr(__import__("os"), "system")(...)) when Python unpickles
                                them (each writes its marker file; the harness proves it with pickle.loads in a
                                subprocess, then deletes the marker); the reader must never create it
checkpoint/bad_*.ckpt|.pt       hostile and unsupported files (see BAD below)
checkpoint/expected.json        per good file: the tensors (name, dtype, shape, stride, storage_offset, storage
                                group), skipped keys, placeholder globals; per exploit file: its marker path
checkpoint/<stem>.expected.safetensors
                                each tensor's values, contiguous: float32/16/bfloat16 in their dtype, every other
                                dtype as int64 (float64 as its bits, .view(torch.int64))
"""
import argparse
import collections
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

KNOWN_GLOBALS = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                 "torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2",
                 "collections.OrderedDict", "torch.Size", "torch.device", "torch.UntypedStorage"} | {
    f"torch.{t}Storage" for t in ("Float", "Half", "BFloat16", "Double", "Int", "Long", "Short", "Char", "Byte", "Bool")}


# A class no reader can import: Lightning's callbacks and web UI extensions pickle such objects.
callbacks = types.ModuleType("taiyi_test_callbacks")


class TinyCallback:
    def __init__(self):
        self.best_score = torch.tensor(0.25)  # a tensor inside an unknown object: never followed
        self.monitor = "val/loss"


TinyCallback.__module__ = callbacks.__name__
callbacks.TinyCallback = TinyCallback
sys.modules[callbacks.__name__] = callbacks


class Exploit:
    """An object whose unpickling calls `function(argument)` (os.system, builtins.eval, builtins.exec)."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return (self.function, (self.argument,))


def weights(generator):
    g = generator
    base = torch.randn(4, 6, generator=g)
    shared = torch.randn(2, 5, generator=g)
    sd = collections.OrderedDict()
    sd["float32"] = torch.randn(3, 4, generator=g)
    sd["float16"] = torch.randn(5, generator=g).half()
    sd["bfloat16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["float64"] = torch.randn(3, generator=g).double()
    sd["int32"] = torch.randint(-2**31, 2**31 - 1, (4,), generator=g, dtype=torch.int32)
    sd["int64"] = torch.randint(-2**62, 2**62, (3,), generator=g, dtype=torch.int64)
    sd["int16"] = torch.randint(-2**15, 2**15 - 1, (2, 2), generator=g, dtype=torch.int16)
    sd["int8"] = torch.randint(-128, 127, (5,), generator=g, dtype=torch.int8)
    sd["uint8"] = torch.randint(0, 255, (6,), generator=g, dtype=torch.uint8)
    sd["bool"] = torch.rand(7, generator=g) > 0.5
    sd["transposed"] = base.t()                 # stride (1, 6)
    sd["row_slice"] = base[1:3]                 # storage offset 6
    sd["column"] = base[:, 2]                   # offset 2, stride 6
    sd["shared_a"] = shared[0]                  # the same storage as shared_b
    sd["shared_b"] = shared[1]
    sd["parameter"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 3)
    return sd


def lightning(generator):
    g = generator
    state = collections.OrderedDict()
    state["model.diffusion_model.conv_in.weight"] = torch.randn(4, 4, 3, 3, generator=g)
    state["model.diffusion_model.conv_in.bias"] = torch.randn(4, generator=g)
    state["first_stage_model.decoder.conv_out.weight"] = torch.randn(3, 4, 1, 1, generator=g).half()
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(8).unsqueeze(0)
    adam = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.randn(4, 4, 3, 3, generator=g),
                          "exp_avg_sq": torch.rand(4, 4, 3, 3, generator=g)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": [0]}]}
    return {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.9.0", "state_dict": state,
            "optimizer_states": [adam], "lr_schedulers": [{"last_epoch": 3, "base_lrs": [1e-4], "_step_count": 4}],
            "callbacks": {"TinyCallback{'monitor': 'val/loss'}": TinyCallback()},
            "hyper_parameters": {"config": argparse.Namespace(base_learning_rate=1e-4, scale_factor=0.18215),
                                 "ckpt_path": None, "ratios": [1.0, 0.5], "flag": True}}


def expected_state_dict(obj):
    """diffusers' load_single_file_checkpoint rule, and the keys passed over, as the reader reports them."""
    skipped = []
    while isinstance(obj, dict) and "state_dict" in obj:
        skipped += [k if isinstance(k, str) else "?" for k in obj if k != "state_dict"]
        obj = obj["state_dict"]
    tensors = {}
    for k, v in obj.items():
        if isinstance(k, str) and type(v) in (torch.Tensor, torch.nn.Parameter):
            tensors[k] = v
        else:
            skipped.append(k if isinstance(k, str) else "?")
    return tensors, skipped


class Inert:
    """What the recording unpickler below gives for every global: takes any call, item or state."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def placeholders(pkl: bytes):
    """The globals the pickle names other than the known ones, first seen first: the names Python's own
    unpickler asks find_class for (it resolves none of them here, so nothing runs)."""
    seen = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            full = f"{module}.{name}"
            if full not in KNOWN_GLOBALS and full not in seen:
                seen.append(full)
            return Inert

        def persistent_load(self, pid):
            return None

    Recorder(io.BytesIO(pkl)).load()
    return seen


def describe(path: Path, obj, out: Path):
    tensors, skipped = expected_state_dict(obj)
    groups, records, values = {}, [], {}
    for name, t in tensors.items():
        group = groups.setdefault(t.untyped_storage().data_ptr(), len(groups))
        records.append(dict(name=name, dtype=str(t.dtype).replace("torch.", ""), shape=list(t.shape),
                            stride=list(t.stride()), storage_offset=t.storage_offset(), storage=group))
        v = t.detach().contiguous()
        if v.dtype == torch.float64:
            v = v.view(torch.int64)
        elif v.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            v = v.to(torch.int64)
        values[name] = v.clone()
    save_file(values, out / f"{path.stem}.expected.safetensors")
    with zipfile.ZipFile(path) as z:
        pkl = next(z.read(n) for n in z.namelist() if n.endswith("/data.pkl"))
    return dict(tensors=records, skipped=skipped, placeholders=placeholders(pkl))


def torch_zip(path: Path, pkl: bytes, records=None, compress=None, top="archive", byteorder="little"):
    """A torch.save-shaped archive written by zipfile (sizes in the local headers, unlike torch.save's miniz)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{top}/data.pkl", pkl)
        z.writestr(f"{top}/byteorder", byteorder)
        for key, data in (records or {}).items():
            z.writestr(f"{top}/data/{key}", data, compress_type=compress or zipfile.ZIP_STORED)
        z.writestr(f"{top}/version", "3\n")


def fake_tensor_pickle(storage_numel, offset, size, stride, dtype="FloatStorage"):
    """data.pkl of {"w": tensor} with a storage and view declared as given (to lie about them)."""
    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (Storage(), offset, size, stride, False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", getattr(torch, dtype), "0", "cpu", storage_numel) if isinstance(obj, Storage) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(collections.OrderedDict(w=Tensor()))
    return buffer.getvalue()


def entry_offsets(data: bytes, name: str):
    """(central header offset, local header offset) of an entry of a zip."""
    central = data.index(b"PK\x01\x02")
    while True:
        n, e, c = struct.unpack("<HHH", data[central + 28:central + 34])
        if data[central + 46:central + 46 + n] == name.encode():
            return central, struct.unpack("<I", data[central + 42:central + 46])[0]
        central = central + 46 + n + e + c


def patch(data: bytes, at: int, fmt: str, *values) -> bytes:
    raw = struct.pack(fmt, *values)
    return data[:at] + raw + data[at + len(raw):]


def bad_files(good_pkl: bytes, out: Path):
    """name -> bytes of each hostile or unsupported file."""
    record = bytes(range(24))  # 6 float32 values
    ok_pkl = fake_tensor_pickle(6, 0, (2, 3), (3, 1))
    files = {}

    def archive(pkl, records=None, **kw):
        path = out / "tmp.zip"
        torch_zip(path, pkl, records if records is not None else {"0": record}, **kw)
        data = path.read_bytes()
        path.unlink()
        return data

    files["bad_unknown_opcode.ckpt"] = archive(b"\x80\x02}q\x00\xff.")
    files["bad_truncated_pickle.ckpt"] = archive(good_pkl[: len(good_pkl) // 2])
    files["bad_memo_unset.ckpt"] = archive(b"\x80\x02h\x07.")
    files["bad_huge_length.ckpt"] = archive(b"\x80\x02\x8d" + struct.pack("<Q", 2**62) + b"abc.")
    files["bad_recursion_lists.ckpt"] = archive(b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b".")
    files["bad_recursion_marks.ckpt"] = archive(b"\x80\x02" + b"(" * 12000 + b"t" * 12000 + b".")
    files["bad_stop_non_empty_stack.ckpt"] = archive(b"\x80\x02}N.")
    files["bad_storage_larger_than_record.ckpt"] = archive(fake_tensor_pickle(600, 0, (2, 3), (3, 1)))
    files["bad_view_past_storage.ckpt"] = archive(fake_tensor_pickle(6, 2, (2, 3), (3, 1)))
    files["bad_view_overflow.ckpt"] = archive(fake_tensor_pickle(6, 0, (2, 2**62), (2**62, 4)))
    files["bad_missing_record.ckpt"] = archive(ok_pkl, records={})
    files["bad_compressed_record.ckpt"] = archive(ok_pkl, compress=zipfile.ZIP_DEFLATED)
    files["bad_big_endian.ckpt"] = archive(ok_pkl, byteorder="big")
    good = archive(ok_pkl)
    central, local = entry_offsets(good, "archive/data/0")
    # The record's size grown by 10 bytes in both headers: it runs over the next entry's local header.
    grown = patch(patch(good, central + 20, "<II", 34, 34), local + 18, "<II", 34, 34)
    files["bad_overlapping_records.ckpt"] = grown
    # The central directory says 30 bytes, the local header 24: lying sizes.
    files["bad_lying_size.ckpt"] = patch(good, central + 20, "<II", 30, 30)
    # The record's local header placed past the end of the file.
    files["bad_record_outside_archive.ckpt"] = patch(good, central + 42, "<I", len(good) + 1000)
    # A zip64 locator pointing past the end, with the end record's entry count saying "see zip64".
    end = good.rindex(b"PK\x05\x06")
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, 10**12, 1)
    files["bad_zip64_past_end.ckpt"] = patch(good[:end] + locator + good[end:], end + 20 + 8, "<HH", 0xFFFF, 0xFFFF)
    files["bad_not_zip.ckpt"] = b"this is not a checkpoint, just text\n" * 4
    buffer = io.BytesIO()
    torch.save(collections.OrderedDict(w=torch.arange(6.0)), buffer, _use_new_zipfile_serialization=False)
    files["bad_legacy.pt"] = buffer.getvalue()
    return files


def write_exploits(out: Path, generator):
    """Files that run code under Python's unpickler; returns {file: {"marker": path}}. The harness checks that
    each really does (the same pickle aimed at another marker, run by pickle in a subprocess), so that the C++
    test's "no marker" means something."""
    weight = torch.randn(2, 2, generator=generator)
    payloads = {"exploit_os_system.ckpt": lambda m: Exploit(os.system, f"echo pwned > '{m}'"),
                "exploit_eval.ckpt": lambda m: Exploit(eval, f"open({str(m)!r}, 'w').write('pwned')"),
                "exploit_exec.ckpt": lambda m: Exploit(exec, f"open({str(m)!r}, 'w').write('pwned')")}
    # The payload comes first, so that Python runs it before it meets a tensor; exec's is the top object.
    wrap = {"exploit_exec.ckpt": lambda p: p}
    exploits = {}
    for name, payload in payloads.items():
        obj = wrap.get(name, lambda p: collections.OrderedDict(payload=p, weight=weight))
        marker, proof = out / f"{Path(name).stem}.marker", out / "proof.marker"
        torch.save(obj(payload(marker)), out / name)
        torch.save(obj(payload(proof)), out / "proof.ckpt")
        pkl = zipfile.ZipFile(out / "proof.ckpt").read("proof/data.pkl")
        script = ("import io, pickle, sys\n"
                  "class U(pickle.Unpickler):\n    def persistent_load(self, pid): return None\n"
                  "try: U(io.BytesIO(sys.stdin.buffer.read())).load()\nexcept Exception: pass\n")
        subprocess.run([sys.executable, "-c", script], input=pkl, check=False, capture_output=True)
        assert proof.exists(), f"{name}: the exploit does not run under Python's unpickler"
        proof.unlink()
        (out / "proof.ckpt").unlink()
        marker.unlink(missing_ok=True)
        exploits[name] = dict(marker=str(marker))
    # A reduce chain by hand: {"chain": getattr(__import__("os"), "system")(command)}.
    for name in ["exploit_reduce_chain.ckpt"]:
        marker, proof = out / f"{Path(name).stem}.marker", out / "proof.marker"
        text = lambda t: b"X" + struct.pack("<I", len(t.encode())) + t.encode()
        chain = lambda m: (b"\x80\x02}" + text("chain") + b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(" + text("os") +
                           b"tR" + text("system") + b"tR(" + text(f"echo pwned > '{m}'") + b"tRs.")
        torch_zip(out / name, chain(marker))
        subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                       input=chain(proof), check=False, capture_output=True)
        assert proof.exists(), f"{name}: the exploit does not run under Python's unpickler"
        proof.unlink()
        exploits[name] = dict(marker=str(marker))
    return exploits


def make(out: Path, full: bool):
    folder = out / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(26)
    expected = {}
    sd = weights(generator)
    # weights_protocol{4,5}.bin: the same dict with pickle's newer opcodes (FRAME, MEMOIZE, STACK_GLOBAL, ...).
    for name, obj, protocol in [("weights.bin", sd, 2), ("weights_protocol4.bin", sd, 4), ("weights_protocol5.bin", sd, 5),
                                ("lightning.ckpt", lightning(generator), 2)]:
        torch.save(obj, folder / name, pickle_protocol=protocol)
        expected[name] = describe(folder / name, torch.load(folder / name, weights_only=False), folder)
    nested = {"state_dict": {"state_dict": collections.OrderedDict(a=torch.randn(3, generator=generator)), "step": 2},
              "epoch": 1}
    torch.save(nested, folder / "nested.ckpt")
    expected["nested.ckpt"] = describe(folder / "nested.ckpt", torch.load(folder / "nested.ckpt"), folder)
    expected.update(write_exploits(folder, generator))
    good_pkl = zipfile.ZipFile(folder / "weights.bin").read("weights/data.pkl")
    for name, data in bad_files(good_pkl, folder).items():
        (folder / name).write_bytes(data)
    (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="write the checkpoint references into FIXTURES/checkpoint")
    ap.add_argument("fixtures", type=Path)
    make(ap.parse_args().fixtures, False)

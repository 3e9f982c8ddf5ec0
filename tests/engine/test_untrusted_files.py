"""Bounded work before trust: a model file is measured (zip sizes, pickle opcodes, tensor extents, metadata sizes)
before anything it asks for is built, so a hostile file of a few hundred bytes is refused in one line, in
milliseconds and megabytes, instead of costing gigabytes or hours. The bombs run in a child process whose
address space is capped, so that a regression fails the test instead of exhausting the machine."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from sslkit.engine import checkpoint as ckpt, foreign
from sslkit.engine.modelinfo import model_info
from sslkit.errors import UsageError
from sslkit.models.backbones import create_backbone

ROOT = Path(__file__).resolve().parents[2]


class Calls:
    """Pickles as a call of ``func(*args)``: what a hostile file asks the unpickler to run."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---------------------------------------------------------------- hand-written pickles (protocol 2 opcodes)

def memo_put(i: int) -> bytes:
    return pickle.BINPUT + bytes([i])


def memo_get(i: int) -> bytes:
    return pickle.BINGET + bytes([i])


def text(s: str) -> bytes:
    return pickle.BINUNICODE + struct.pack("<I", len(s)) + s.encode()


def global_(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def shared_lists(depth: int) -> bytes:
    """A list of two references to a list of two references to ... to 7: 2**depth leaves in ~7 bytes a level."""
    ops = (pickle.EMPTY_LIST + pickle.MARK) * depth + pickle.BININT1 + b"\x07"
    for level in range(depth):
        ops += memo_put(level) + memo_get(level) + pickle.APPENDS
    return ops


def shared_tuples(depth: int) -> bytes:
    """(x, x) of (x, x) of ... of 7: hashing it (a dict key) visits 2**depth leaves."""
    ops = pickle.BININT1 + b"\x07"
    for level in range(depth):
        ops += memo_put(level) + memo_get(level) + pickle.TUPLE2
    return ops


def one_entry_dict(key_ops: bytes, value_ops: bytes) -> bytes:
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + key_ops + value_ops + pickle.SETITEM + pickle.STOP


def call(func_ops: bytes, arg_ops: bytes) -> bytes:
    return func_ops + arg_ops + pickle.TUPLE1 + pickle.REDUCE


def torch_file_with_pickle(path: Path, pickle_bytes: bytes) -> Path:
    """A torch.save zip whose data.pkl is ``pickle_bytes``."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in records.items():
            archive.writestr(name, pickle_bytes if name.endswith("/data.pkl") else blob)
    return path


def zip_bomb(path: Path, floats: int = 2**26) -> Path:
    """torch.save of 256 MiB of zeros, re-zipped with its records deflated: a file of a few hundred KB."""
    plain = path.with_suffix(".plain")
    torch.save({"weight": torch.zeros(floats)}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        for record in source.infolist():
            with source.open(record) as src, bomb.open(record.filename, "w", force_zip64=True) as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
    plain.unlink()
    return path


def vit_like(pos_embed: torch.Tensor, patch_weight: torch.Tensor) -> dict:
    return {"cls_token": torch.zeros(1, 1, 192), "pos_embed": pos_embed, "patch_embed.proj.weight": patch_weight}


# ---------------------------------------------------------------- the bounded child

CHILD = """
import json, resource, sys, time
from sslkit.engine.modelinfo import model_info
from sslkit.errors import UsageError

def resident_mb(field):  # VmRSS now, or VmHWM: the peak since the last reset
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) // 1024

size_now = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size_now + (1536 << 20), resource.RLIM_INFINITY))
for case in json.loads(sys.argv[1]):
    with open("/proc/self/clear_refs", "w") as reset:
        reset.write("5")  # the peak starts again from what the process holds now
    before, start = resident_mb("VmRSS:"), time.perf_counter()
    try:
        info = model_info(case["path"], arch=case.get("arch"))
        outcome = "read"
    except UsageError as error:
        outcome, info = "refused: " + str(error), {}
    except BaseException as error:
        outcome, info = f"crash: {type(error).__name__}: {str(error)[:200]}", {}
    print(json.dumps({"name": case["name"], "outcome": outcome, "args": info.get("args"),
                      "seconds": time.perf_counter() - start, "grew_mb": resident_mb("VmHWM:") - before}), flush=True)
"""


def hostile_files(root: Path) -> list[dict]:
    """Each hostile file (with the --arch a reader would give, where the danger needs one), and a legitimate
    DINO training file read in the same bounds."""
    teacher = {f"backbone.{k}": v for k, v in create_backbone("vit_tiny_patch16_224", 32).state_dict().items()}
    files = {
        "bytes of a length": lambda p: torch.save({"args": Calls(bytes, 10**10)}, p),
        "bytearray of a length": lambda p: torch.save({"args": Calls(bytearray, 10**10)}, p),
        "bytearray of a length, legacy format": lambda p: torch.save(
            {"args": Calls(bytearray, 10**10)}, p, _use_new_zipfile_serialization=False),
        "tensor of a length": lambda p: torch.save({"model": Calls(torch.Tensor, 10**10)}, p),
        "str of shared lists": lambda p: torch_file_with_pickle(p, one_entry_dict(
            text("args"), call(global_("builtins", "str"), shared_lists(40)))),
        "tensor of shared lists": lambda p: torch_file_with_pickle(p, one_entry_dict(
            text("model"), call(global_("torch", "Tensor"), shared_lists(40)))),
        "dict keyed by shared tuples": lambda p: torch_file_with_pickle(p, one_entry_dict(
            shared_tuples(40), pickle.BININT1 + b"\x01")),
        "settings holding themselves": lambda p: torch_file_with_pickle(p, one_entry_dict(
            text("args"), pickle.EMPTY_LIST + memo_put(0) + memo_get(0) + pickle.APPEND)),
        "zip bomb": zip_bomb,
        "position embedding of a stride trick": lambda p: torch.save(
            vit_like(torch.zeros(1, 1, 192).expand(1, 10**8, 192), torch.zeros(192, 3, 16, 16)), p),
        "patch of 10000 pixels": lambda p: torch.save(
            vit_like(torch.zeros(1, 197, 192), torch.zeros(1, 1, 1, 10_000)), p),
        "dino training file": lambda p: torch.save(
            {"teacher": teacher, "student": teacher, "epoch": 3,
             "args": argparse.Namespace(arch="vit_tiny", lr=5e-4, local_crops_scale=(0.05, 0.4))}, p),
    }
    cases = []
    for i, (name, write) in enumerate(files.items()):
        path = root / f"{i:02d}.pth"
        write(path)
        arch = "vit_tiny_patch16_224" if "position embedding" in name or "patch" in name else None
        cases.append({"name": name, "path": str(path), "arch": arch})
    return cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    if not Path("/proc/self/statm").exists():
        pytest.skip("the address-space cap reads /proc (Linux)")
    cases = hostile_files(tmp_path_factory.mktemp("hostile"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["name"]: r for r in map(json.loads, done.stdout.splitlines())}
    for case in cases:
        results[case["name"]].update(path=case["path"], bytes=Path(case["path"]).stat().st_size)
    return results


REFUSALS = [
    ("bytes of a length", ["its pickle calls bytes(int)", "never an int (a length)"]),
    ("bytearray of a length", ["its pickle calls builtins.bytearray of a size", "refuses the file unread"]),
    ("bytearray of a length, legacy format", ["its pickle calls builtins.bytearray of a size"]),
    ("tensor of a length", ["its pickle calls torch.Tensor of a size", "refuses the file unread"]),
    ("str of shared lists", ["its pickle shares values", "more than 10,000,000", "refuses it unread"]),
    ("tensor of shared lists", ["its pickle shares values", "more than 10,000,000"]),
    ("dict keyed by shared tuples", ["its pickle shares values", "more than 10,000,000"]),
    ("settings holding themselves", ["its settings unfold to more than 100,000 values or 64 levels"]),
    ("zip bomb", ["its zip records inflate to 268,", "(a zip bomb?)", "refuses it unread"]),
    ("position embedding of a stride trick", ["tensor pos_embed of shape [1, 100000000, 192]", "dense weights only"]),
    ("patch of 10000 pixels", ["its position embedding's image side 140000 is not a plausible image size",
                               "from 1 to 8192"]),
]


@pytest.mark.parametrize("name, phrases", REFUSALS, ids=[name for name, _ in REFUSALS])
def test_a_hostile_model_file_is_refused_in_one_line_in_milliseconds_and_megabytes(outcomes, name, phrases):
    result = outcomes[name]
    assert result["outcome"].startswith("refused: "), result
    message = result["outcome"][len("refused: "):]
    assert "\n" not in message and message.startswith(f"{result['path']}: "), message
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    assert result["seconds"] < 1.0, result
    assert result["grew_mb"] < 200, result


def test_the_bombs_are_small_files(outcomes):
    """What makes them bombs: each is far smaller than what it asks for (10 GB, 2**40 values, 256 MiB); the
    pickles are tens of bytes, the rest is torch's zip framing (about 1 KB)."""
    sizes = {name: outcomes[name]["bytes"] for name, _ in REFUSALS}
    assert max(sizes.values()) < 1_000_000, sizes
    assert sizes["bytes of a length"] < 2_000 and sizes["bytearray of a length, legacy format"] < 400, sizes
    assert sizes["str of shared lists"] < 2_000 and sizes["dict keyed by shared tuples"] < 2_000, sizes


def test_a_dino_training_file_still_reads_in_the_same_bounds(outcomes):
    result = outcomes["dino training file"]
    assert result["outcome"] == "read", result
    assert result["args"] == {"arch": "vit_tiny", "lr": 5e-4, "local_crops_scale": [0.05, 0.4]}
    assert result["grew_mb"] < 500 and result["seconds"] < 10, result


# ---------------------------------------------------------------- in this process: cases harmless if they regress

@pytest.mark.parametrize("func, args, phrase", [
    (str, ([1, 2],), "str(list)"), (int, ({"a": 1},), "int(dict)"), (bytes, (16,), "bytes(int)"),
    (tuple, (7,), "tuple(int)"), (float, ("1" * (2**20 + 1),), "float(str)"), (list, ([1], [2]), "list(list, list)"),
])
def test_a_bounded_builtin_refuses_arguments_that_are_not_its_own_size(tmp_path, func, args, phrase):
    torch.save({"args": Calls(func, *args)}, tmp_path / "call.pth")
    with pytest.raises(UsageError, match="its pickle calls") as refusal:
        foreign.read_torch_file(tmp_path / "call.pth")
    assert phrase in str(refusal.value) and "sslkit refuses the file" in str(refusal.value)


def test_builtins_that_real_checkpoints_pickle_still_read(tmp_path):
    settings = {"names": frozenset({"a", "b"}), "seen": {1, 2}, "raw": b"\x00\x01", "dtype": int,
                "size": Calls(int, "224"), "pair": Calls(tuple, [1, 2]), "label": Calls(str, b"cat", "ascii")}
    torch.save({"model": {"w": torch.ones(2)}, "hyper_parameters": settings}, tmp_path / "ok.ckpt")
    data = foreign.read_torch_file(tmp_path / "ok.ckpt")
    assert data["hyper_parameters"]["size"] == 224 and data["hyper_parameters"]["pair"] == (1, 2)
    assert foreign.settings(data, tmp_path / "ok.ckpt") == {
        "names": ["a", "b"], "seen": [1, 2], "raw": "2 bytes", "dtype": "<class 'int'>", "size": 224,
        "pair": [1, 2], "label": "cat"}


def test_a_legacy_format_file_is_scanned_and_still_reads(tmp_path):
    state = {"conv.weight": torch.randn(4, 3, 3, 3)}
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(foreign.read_torch_file(tmp_path / "old.pth")["conv.weight"], state["conv.weight"])


def test_a_zip_with_two_records_of_one_name_is_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "twice.pth")
    with zipfile.ZipFile(tmp_path / "twice.pth", "a") as archive:  # torch's reader ignores the case of names
        archive.writestr(archive.namelist()[0].upper(), b"\x80\x02}.")
    with pytest.raises(UsageError, match="two records of one name"):
        foreign.read_torch_file(tmp_path / "twice.pth")


def test_a_re_zipped_checkpoint_of_real_weights_still_reads(tmp_path):
    """Deflate shrinks real weights little, far within ZIP_INFLATION: only records of zeros-like data are bombs."""
    weights = {"w": torch.randn(256, 256)}
    torch.save(weights, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as source, \
            zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
    assert torch.equal(foreign.read_torch_file(tmp_path / "deflated.pth")["w"], weights["w"])


@pytest.mark.parametrize("value", ["2000000", "0", "-5", "224px", "1e3", "²²⁴", "9" * 100])
def test_an_implausible_metadata_img_size_is_refused_before_any_model_is_built(tmp_path, value):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "m.safetensors"), metadata={"format": "pt", "img_size": value})
    for read in (lambda p: model_info(p, arch="test_vit"), lambda p: ckpt.load_backbone(p, arch="test_vit")):
        with pytest.raises(UsageError, match="is not a plausible image size") as refusal:
            read(str(tmp_path / "m.safetensors"))
        assert f"metadata img_size {value[:40]} is not" in str(refusal.value)


def test_a_named_pipe_is_not_a_model_file(tmp_path):
    os.mkfifo(tmp_path / "model.pth")
    with pytest.raises(UsageError, match="is not a regular file"):
        ckpt.model_path(str(tmp_path / "model.pth"))
    with pytest.raises(UsageError, match="is not a regular file"):  # callers that pass a path of their own
        foreign.read_torch_file(tmp_path / "model.pth")

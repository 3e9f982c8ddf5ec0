"""Hostile MODEL files through the real command line: for every command that takes MODEL, a file that asks for
absurd work (an image size of 2,000,000, a zip bomb, a pickled call with a length, a named pipe) is one line on
stderr and exit 2, in seconds. The bombs whose regression would exhaust memory are in
tests/engine/test_untrusted_files.py, under an address-space cap."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from tests.cli.conftest import assert_usage_error
from tests.conftest import make_folder
from sslkit.engine import releases
from sslkit.errors import UsageError
from tests.engine.test_releases import released_file
from tests.engine.test_untrusted_files import Calls, zip_bomb

IMPLAUSIBLE = "metadata img_size 2000000 is not a plausible image size (a whole number of pixels from 1 to 8192)"


@pytest.fixture(scope="module")
def files(tmp_path_factory, sslkit_cli):
    root = tmp_path_factory.mktemp("hostile")
    make_folder(root / "images", classes=2, per_class=3, size=32)
    backbone = {"pos_embed": torch.zeros(1, 5, 64), "patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}
    save_file({f"model.backbone.{k}": v for k, v in backbone.items()}, str(root / "run.safetensors"), metadata={
        "format": "sslkit/1", "method": "dino", "arch": "test_vit", "img_size": "2000000", "step": "5",
        "backbones": '{"teacher": "backbone"}'})
    save_file(backbone, str(root / "export.safetensors"), metadata={"format": "pt", "arch": "test_vit",
                                                                    "img_size": "2000000"})
    zip_bomb(root / "bomb.pth")
    torch.save({"model": {}, "args": Calls(str, [1, 2])}, root / "str_of_a_list.pth")
    sslkit_cli.run("info", "--help")  # the fork server's imports, done before anything is timed
    return root


def timed(sslkit_cli, *args):
    start = time.perf_counter()
    result = sslkit_cli.run(*args)
    return result, time.perf_counter() - start


def model_commands(root, model) -> list[tuple]:
    return [("info", model), ("export", model, "--out", root / "out.safetensors"),
            ("probe", "knn", model, "--train", root / "images", "--val", root / "images", "--k", "2",
             "--workers", "0", "--json", root / "out.json")]


@pytest.mark.parametrize("kind", ["run.safetensors", "export.safetensors"])
@pytest.mark.parametrize("command", ["info", "export", "probe knn"])
def test_an_image_size_of_two_million_in_metadata_is_one_line_and_exit_2(sslkit_cli, files, kind, command):
    args = next(c for c in model_commands(files, files / kind) if " ".join(map(str, c)).startswith(command))
    result, seconds = timed(sslkit_cli, *args)
    assert_usage_error(result, f"{files / kind}: {IMPLAUSIBLE}")
    assert seconds < 10, seconds
    assert not (files / "out.safetensors").exists() and not (files / "out.json").exists()


def test_a_zip_bomb_is_refused_before_it_inflates(sslkit_cli, files):
    assert (files / "bomb.pth").stat().st_size < 1_000_000  # 256 MiB of zeros inside
    for args in model_commands(files, files / "bomb.pth"):
        result, seconds = timed(sslkit_cli, *args)
        assert_usage_error(result, f"{files / 'bomb.pth'}: its zip records inflate to 268,", "(a zip bomb?)")
        assert seconds < 10, seconds


def test_a_pickled_builtin_call_outside_its_bounds_is_refused(sslkit_cli, files):
    for args in model_commands(files, files / "str_of_a_list.pth"):
        result = sslkit_cli.run(*args)
        assert_usage_error(result, "its pickle calls str(list)", "sslkit refuses the file")


def run_with_deadline(sslkit_cli, pipe, *args, seconds: float = 20):
    """``sslkit_cli.run(*args)`` and whether it overran ``seconds``. Then a writer opens ``pipe`` and closes it
    at once, which frees a reader blocked on it: a regression fails the test instead of hanging it."""
    box = {}
    worker = threading.Thread(target=lambda: box.update(result=sslkit_cli.run(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    overran = worker.is_alive()
    for _ in range(120):
        if not worker.is_alive():
            break
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # nobody has the pipe open to read (yet)
            pass
        worker.join(0.5)
    else:
        pytest.fail(f"sslkit {' '.join(map(str, args))} still runs a minute after its pipe was closed")
    return box["result"], overran


@pytest.mark.parametrize("name", ["model.pth", "model.safetensors", "model.ckpt"])
def test_a_named_pipe_as_model_is_refused_at_once(sslkit_cli, files, tmp_path, name):
    pipe = tmp_path / name
    os.mkfifo(pipe)
    for args in model_commands(files, pipe):
        result, overran = run_with_deadline(sslkit_cli, pipe, *args)
        assert not overran, f"sslkit {' '.join(map(str, args))} waited on a named pipe"
        assert_usage_error(result, f"{pipe} is not a regular file (a pipe, socket or device)")


def test_a_file_that_is_almost_a_release_is_refused_in_one_line(sslkit_cli, tmp_path):
    layout, _ = released_file("vit_small_patch14_dinov2", 28)
    v3, _ = released_file("vit_small_patch16_dinov3", 32)
    cases = {
        "truncated": ({**layout, "blocks.3.attn.qkv.weight": layout["blocks.3.attn.qkv.weight"][:1000]},
                      "(DINOv2 ViT-S/14) does not fit the backbone (wrong shape: blocks.3.attn.qkv.weight)"),
        "last-block": ({k: v for k, v in layout.items() if not k.startswith("blocks.11.")},
                       "has the layout of DINOv2 ViT-S/14 but 11 blocks, where DINOv2 ViT-S/14 has 12"),
        "middle-block": ({k: v for k, v in layout.items() if not k.startswith("blocks.5.")}, "no tensors of block 5"),
        "patch16": ({**layout, "patch_embed.proj.weight": torch.zeros(384, 3, 16, 16)},
                    "DINOv2's layout with 16 x 16 patches; DINOv2's released models (timm's *_dinov2) have 14 x 14"),
        "registers": ({**layout, "register_tokens": torch.zeros(1, 3, 384)}, "register_tokens of shape [1, 3, 384]"),
        "grid": ({**layout, "pos_embed": layout["pos_embed"][:, :3]}, "pos_embed [1, 3, 384] is not [1, 1 + side^2"),
        "key-bias": ({k: v for k, v in v3.items() if k != "blocks.0.attn.qkv.bias_mask"},
                     "blocks.0.attn.qkv.bias has a key bias that no bias_mask zeroes"),
    }
    for case, (state, message) in cases.items():
        torch.save(state, tmp_path / f"{case}.pth")
        assert_usage_error(sslkit_cli.run("probe", "knn", tmp_path / f"{case}.pth", "--train", tmp_path,
                                          "--val", tmp_path), message)
    with pytest.raises(UsageError, match="DINOv3's ViTs are ViT-S/16"):
        releases.recognise({**v3, "patch_embed.proj.weight": torch.zeros(512, 3, 16, 16)}, "x")

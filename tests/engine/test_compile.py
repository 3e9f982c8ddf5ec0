"""--compile: every method's training step is captured by torch.compile without falling back to eager, is
captured once (no recompilation from step to step, DINO's two crop sizes included), and trains exactly as
eager does. The graphs run through the aot_eager backend: the same capture as the default inductor backend,
without its C++ / Triton code generation, which costs minutes on a CPU."""

import functools
import json

import pytest
import torch
from torch._dynamo.utils import counters

import sslkit
from tests.conftest import TINY_BYOL, make_folder

TINY = {
    "byol": TINY_BYOL,
    "dino": dict(arch="test_vit", img_size=32, out_dim=64, local_crops_number=2, batch_size=8, workers=0,
                 device="cpu", precision="fp32"),
    "mae": dict(arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2, batch_size=8,
                workers=0, device="cpu", precision="fp32"),
}


def losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


# the training step; on a CPU the colour augmentation stays eager (it picks the images each operation changes,
# data-dependent shapes), on a GPU it is one more graph per view size (BYOL: one, DINO: global and local)
GRAPHS = {"byol": 1, "dino": 1, "mae": 1}


@pytest.mark.parametrize("method", ["byol", "dino", "mae"])
def test_compiled_step_is_captured_once_and_trains_as_eager(method, tmp_path, monkeypatch, capsys):
    images = make_folder(tmp_path / "images", per_class=8)
    settings = dict(TINY[method], epochs=2, log_every=1, **({"augment_on": "device"} if method != "mae" else {}))
    sslkit.pretrain(method, images, tmp_path / "eager", **settings)
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    sslkit.pretrain(method, images, tmp_path / "compiled", **settings, compile=True)
    assert "torch.compile failed" not in capsys.readouterr().err
    assert counters["frames"]["ok"] == counters["frames"]["total"] == GRAPHS[method]
    assert counters["stats"]["unique_graphs"] == GRAPHS[method]  # captured once for all 4 steps
    assert not counters["graph_break"]
    assert losses(tmp_path / "compiled") == losses(tmp_path / "eager")

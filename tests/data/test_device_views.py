"""The store path end to end: training runs on views made on the device from the decoded store."""

from __future__ import annotations

import json

import pytest
import torch

import sslkit
from sslkit.engine import checkpoint as ckpt
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.byol import BYOL
from sslkit.methods.dino import DINO
from tests.conftest import TINY_BYOL, interrupt_at, make_folder

STORE = dict(TINY_BYOL, data_path="store")
TINY_DINO = dict(arch="test_vit", img_size=32, out_dim=64, local_crops_number=2, batch_size=8, workers=0,
                 device="cpu", precision="fp32", data_path="store")


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


def weights(run) -> dict[str, torch.Tensor]:
    return ckpt.read_tensors(run / "checkpoints" / "last.safetensors", "model.")


def same_weights(a, b) -> bool:
    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_pretraining_on_the_store_records_its_decision_and_trains(image_folder, tmp_path):
    sslkit.pretrain("byol", image_folder, tmp_path / "store", **dict(STORE, epochs=2, log_every=1))
    decided = json.loads((tmp_path / "store" / "config.json").read_text())["decided"]
    assert decided["data_path"] == "store" and decided["data_path_reason"] == "--data-path store"
    assert decided["store"] == {"short_side": 32, "height": 32, "width": 32, "images": 24, "bytes": 24 * 3 * 32 * 32,
                                "place": "ram"}
    assert decided["precision"] == "fp32"
    sslkit.pretrain("byol", image_folder, tmp_path / "loader",
                    **dict(TINY_BYOL, epochs=2, log_every=1, data_path="loader"))
    on_store, on_loader = losses(tmp_path / "store"), losses(tmp_path / "loader")
    assert on_store.keys() == on_loader.keys() == set(range(1, 7))
    assert all(0 < loss < 8 for loss in on_store.values())  # 2 - 2 cos per view, two views: in [0, 8]
    assert on_store != on_loader  # other random numbers, the same distributions


@pytest.mark.parametrize("method, settings, stop_after", [
    (BYOL, STORE, 1), (BYOL, STORE, 2), (DINO, TINY_DINO, 1)], ids=["byol-mid-epoch", "byol-end-of-epoch", "dino"])
def test_a_resumed_run_on_the_store_equals_an_uninterrupted_one(tmp_path, method, settings, stop_after):
    data = make_folder(tmp_path / "data", per_class=12)
    name = method.name
    sslkit.pretrain(name, data, tmp_path / "straight", **dict(settings, epochs=2, log_every=1))
    with interrupt_at(method, step=stop_after), pytest.raises(Interrupted):
        sslkit.pretrain(name, data, tmp_path / "resumed", **dict(settings, epochs=2, log_every=1))
    # resumed with the defaults: the run keeps the path it recorded
    sslkit.pretrain(name, data, tmp_path / "resumed", resume=True, device="cpu", precision="fp32", workers=0)
    decided = json.loads((tmp_path / "resumed" / "config.json").read_text())["decided"]
    assert decided["data_path"] == "store" and decided["data_path_reason"] == "as recorded when the run started"
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    assert same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_a_store_run_does_not_depend_on_the_worker_count(image_folder, tmp_path):
    for workers in (0, 3):
        sslkit.pretrain("byol", image_folder, tmp_path / f"w{workers}", **dict(STORE, epochs=1, workers=workers))
    assert same_weights(tmp_path / "w0", tmp_path / "w3")


def test_the_second_run_reads_the_store_from_its_cache(image_folder, tmp_path, monkeypatch):
    sslkit.pretrain("byol", image_folder, tmp_path / "first", **dict(STORE, epochs=1))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the store was decoded again")

    monkeypatch.setattr("sslkit.data.store._build", no_decoding)
    sslkit.pretrain("byol", image_folder, tmp_path / "second", **dict(STORE, epochs=1))
    assert same_weights(tmp_path / "first", tmp_path / "second")


def test_auto_takes_the_store_when_it_fits_and_the_loader_when_not(image_folder, tmp_path, monkeypatch):
    sslkit.pretrain("byol", image_folder, tmp_path / "fits", **dict(TINY_BYOL, epochs=1))
    decided = json.loads((tmp_path / "fits" / "config.json").read_text())["decided"]
    assert decided["data_path"] == "store" and decided["data_path_reason"].startswith("it fits in half the")
    monkeypatch.setattr("sslkit.data.datapath.memory_budget", lambda place, device: (1000, "half the RAM (1 kB)"))
    sslkit.pretrain("byol", image_folder, tmp_path / "too-big", **dict(TINY_BYOL, epochs=1))
    decided = json.loads((tmp_path / "too-big" / "config.json").read_text())["decided"]
    assert decided["data_path"] == "loader" and "store" not in decided
    assert decided["data_path_reason"] == "the decoded store needs 0.1 MB, more than half the RAM (1 kB)"


def test_a_store_over_the_memory_budget_is_refused_in_one_line(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr("sslkit.data.datapath.memory_budget", lambda place, device: (1000, "half the RAM (1 kB)"))
    with pytest.raises(UsageError) as refused:
        sslkit.pretrain("byol", image_folder, tmp_path / "run", **dict(STORE, epochs=1))
    message = str(refused.value)
    assert "\n" not in message and "the decoded store needs" in message and "more than half the RAM" in message
    assert "--store-size" in message and not (tmp_path / "run" / "checkpoints").exists()


def test_randaugment_needs_the_loader(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    with pytest.raises(UsageError, match="RandAugment"):
        sslkit.finetune("timm:test_resnet", data, data, tmp_path / "ft", img_size=32, epochs=1, batch_size=4,
                        workers=0, device="cpu", precision="fp32", data_path="store", recipe="mae")


def test_fine_tuning_and_the_augmented_linear_probe_run_on_the_store(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    common = dict(img_size=32, epochs=2, batch_size=4, workers=0, device="cpu", precision="fp32", data_path="store")
    tuned = sslkit.finetune("timm:test_resnet", data, data, tmp_path / "ft", randaug="none", **common)
    decided = json.loads((tmp_path / "ft" / "config.json").read_text())["decided"]
    assert decided["data_path"] == "store" and decided["store"]["images"] == 12
    assert len(tuned["top1_per_epoch"]) == 2
    probed = sslkit.probe_linear("timm:test_resnet", data, data, augment=True, out=str(tmp_path / "lin"),
                                 cache=False, **common)
    assert json.loads((tmp_path / "lin" / "config.json").read_text())["decided"]["data_path"] == "store"
    assert 0 <= probed["top1"] <= 100

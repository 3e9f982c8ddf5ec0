"""--logger tensorboard: the scalars of metrics.jsonl, read back with TensorBoard's own event reader."""

from __future__ import annotations

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sslkit
from sslkit.engine.tensorboard import check_available
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.byol import BYOL
from tests.conftest import TINY_BYOL, interrupt_at, make_folder


def events(run) -> dict[str, dict[int, float]]:
    reader = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    reader.Reload()
    return {tag: {e.step: e.value for e in reader.Scalars(tag)} for tag in reader.Tags()["scalars"]}


def logged(run, kind: str) -> dict[str, dict[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    chosen = {"train": lambda r: "loss" in r, "epoch": lambda r: "epoch_loss" in r,
              "eval": lambda r: "loss" not in r and "epoch_loss" not in r}[kind]
    values: dict[str, dict[int, float]] = {}
    for record in filter(chosen, records):
        for key, value in record.items():
            if key not in ("step", "epoch", "time"):
                values.setdefault(f"{kind}/{key}", {})[record["step"]] = value
    return values


def test_tensorboard_holds_the_scalars_of_metrics_jsonl(tmp_path):
    data = make_folder(tmp_path / "data", per_class=12)
    run = tmp_path / "run"
    sslkit.pretrain("byol", data, run, logger="tensorboard", eval_train=str(data), eval_val=str(data),
                    **dict(TINY_BYOL, epochs=2, log_every=1))
    written = events(run)
    expected = {**logged(run, "train"), **logged(run, "epoch"), **logged(run, "eval")}
    assert {"train/loss", "train/lr", "train/weight_decay", "train/tau", "train/img_per_s", "train/data_wait",
            "epoch/epoch_loss", "eval/knn_top1", "eval/knn_top5"} <= set(written)
    assert set(written) == set(expected)
    for tag, values in expected.items():
        assert written[tag].keys() == values.keys(), tag
        assert all(written[tag][step] == pytest.approx(value, rel=1e-6) for step, value in values.items()), tag


def test_a_resumed_run_replaces_the_events_of_the_steps_it_trains_again(tmp_path):
    data = make_folder(tmp_path / "data", per_class=12)
    run = tmp_path / "run"
    settings = dict(TINY_BYOL, epochs=2, log_every=1, logger="tensorboard")
    with interrupt_at(BYOL, step=3), pytest.raises(Interrupted):
        sslkit.pretrain("byol", data, run, **settings)
    sslkit.pretrain("byol", data, run, resume=True, device="cpu", workers=0)
    written = events(run)["train/loss"]
    assert written == pytest.approx(logged(run, "train")["train/loss"], rel=1e-6)
    assert sorted(written) == [1, 2, 3, 4, 5, 6]


def test_without_tensorboard_installed_the_logger_is_one_usage_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an import then raises: ImportError
    with pytest.raises(UsageError) as missing:
        check_available()
    assert "pip install 'sslkit[tensorboard]'" in str(missing.value) and "\n" not in str(missing.value)
    data = make_folder(tmp_path / "data", per_class=6)
    with pytest.raises(UsageError, match="needs TensorBoard"):
        sslkit.pretrain("byol", data, tmp_path / "run", logger="tensorboard", **dict(TINY_BYOL, epochs=1))
    assert not (tmp_path / "run").exists()

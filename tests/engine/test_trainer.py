import json

import pytest
import torch

import sslkit
from sslkit.engine import checkpoint as ckpt
from sslkit.errors import Interrupted, TrainingFailed, UsageError
from sslkit.methods.byol import BYOL
from tests.conftest import TINY_BYOL, interrupt_at, make_folder


def losses(run) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def model_state(run) -> dict[str, torch.Tensor]:
    return ckpt.read_tensors(run / "checkpoints" / "last.safetensors", "model.")


@pytest.mark.parametrize("stop_after", [1, 2], ids=["mid-epoch", "end-of-epoch"])
def test_resumed_run_equals_uninterrupted_run(image_folder, tmp_path, stop_after):
    settings = dict(TINY_BYOL, epochs=2, log_every=1)  # 24 images, batch 8: 3 steps per epoch
    sslkit.pretrain("byol", image_folder, tmp_path / "straight", **settings)

    with interrupt_at(BYOL, step=stop_after), pytest.raises(Interrupted) as stopped:
        sslkit.pretrain("byol", image_folder, tmp_path / "resumed", **settings)
    assert stopped.value.exit_code == 130
    saved = ckpt.read_metadata(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert saved["step"] == str(stop_after + 1)
    sslkit.pretrain("byol", image_folder, tmp_path / "resumed", resume=True, **settings)

    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    assert len(losses(tmp_path / "straight")) == 6
    straight, resumed = model_state(tmp_path / "straight"), model_state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_same_seed_same_run_and_other_seed_other_run(image_folder, tmp_path):
    settings = dict(TINY_BYOL, epochs=1, log_every=1)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        sslkit.pretrain("byol", image_folder, tmp_path / name, seed=seed, **settings)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(image_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = BYOL.training_step

    def exploding(self, batch):
        out = original(self, batch)
        if self.exploded:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BYOL, "training_step", exploding)
    monkeypatch.setattr(BYOL, "exploded", False, raising=False)
    monkeypatch.setattr(BYOL, "after_optimizer_step", lambda self, p: setattr(BYOL, "exploded", p.step >= 3) or {})
    with pytest.raises(TrainingFailed, match=r"NaN or infinite at step 5 \(epoch 2\)") as failure:
        sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=3, log_every=10))
    assert "last good checkpoint" in str(failure.value)
    assert ckpt.read_metadata(run / "checkpoints" / "last.safetensors")["step"] == "3"


def test_gradient_accumulation_splits_the_batch(image_folder, tmp_path):
    result = sslkit.pretrain("byol", image_folder, tmp_path / "run", accum_steps=2, **dict(TINY_BYOL, epochs=1))
    assert result["steps"] == 3  # 24 images, batch 8: accumulation does not change the steps per epoch


def test_usage_errors_name_the_problem(image_folder, tmp_path):
    with pytest.raises(UsageError, match="larger than the data set"):
        sslkit.pretrain("byol", image_folder, tmp_path / "a", **dict(TINY_BYOL, batch_size=64))
    with pytest.raises(UsageError, match="not divisible"):
        sslkit.pretrain("byol", image_folder, tmp_path / "b", **dict(TINY_BYOL, accum_steps=3))
    with pytest.raises(UsageError, match="unknown architecture 'resnet1000'"):
        sslkit.pretrain("byol", image_folder, tmp_path / "c", **dict(TINY_BYOL, arch="resnet1000"))
    with pytest.raises(UsageError, match="--epochs must be positive"):
        sslkit.pretrain("byol", image_folder, tmp_path / "d", **dict(TINY_BYOL, epochs=0))


def test_a_finished_run_is_not_overwritten_and_resume_refuses_other_settings(image_folder, tmp_path):
    run = tmp_path / "run"
    sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=1))
    with pytest.raises(UsageError, match="already holds a run"):
        sslkit.pretrain("byol", image_folder, run, **dict(TINY_BYOL, epochs=1))
    with pytest.raises(UsageError, match="lr=0.5"):
        sslkit.pretrain("byol", image_folder, run, resume=True, lr=0.5)


def test_online_knn_is_logged_every_n_epochs_and_scores_what_probe_knn_loads(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, per_class=12)
    run = tmp_path / "run"
    sslkit.pretrain("byol", data, run, eval_train=str(data), eval_val=str(data), eval_every=2,
                    **dict(TINY_BYOL, epochs=3))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    online = [r for r in records if "knn_top1" in r]
    assert [r["epoch"] for r in online] == [2, 3]  # every 2 epochs, and after the last
    offline = sslkit.probe_knn(str(run), data, data, k=[20], workers=0, device="cpu", cache=False)
    assert online[-1]["knn_top1"] == offline["top1"] and online[-1]["knn_top5"] == offline["top5"]
    assert (run / "curves.png").is_file()


def test_evaluation_leaves_the_training_networks_in_training_mode(image_folder, tmp_path, monkeypatch):
    modes = []
    original = BYOL.training_step

    def recording(self, batch):
        modes.append((self.backbone.training, self.projector.training))
        return original(self, batch)

    monkeypatch.setattr(BYOL, "training_step", recording)
    sslkit.pretrain("byol", image_folder, tmp_path / "run", eval_train=str(image_folder), eval_val=str(image_folder),
                    **dict(TINY_BYOL, epochs=2))
    assert len(modes) == 6 and all(backbone and projector for backbone, projector in modes)


def test_online_knn_needs_both_folders(image_folder, tmp_path):
    with pytest.raises(UsageError, match="needs both --eval-train"):
        sslkit.pretrain("byol", image_folder, tmp_path / "run", eval_train=str(image_folder), **TINY_BYOL)

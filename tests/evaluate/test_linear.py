import json

import pytest
import timm
import torch

import sslkit
from sslkit.config import TrainConfig
from sslkit.data.folders import ImageFolder
from sslkit.data.views import eval_transform
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.trainer import Trainer
from sslkit.errors import UsageError
from sslkit.evaluate import features as feats
from sslkit.evaluate.features import FeatureSet, extract_features
from sslkit.evaluate.linear import LinearProbe
from sslkit.models.backbones import FeatureExtractor
from tests.conftest import make_folder


def train(probe, dataset, out, epochs=1, lr=0.1, batch_size=8, optimizer="sgd"):
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, min_lr=0.0, warmup_epochs=0, weight_decay=0.0,
                         optimizer=optimizer, clip_grad=0.0, clip_per_param=False, device="cpu", workers=0)
    return Trainer(probe, dataset, config, out, {"method": "linear"}).fit()


def blobs(n_per_class=30, classes=4, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = 5 * torch.eye(classes, dim)[labels] + torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_a_linear_head_reaches_100_percent_on_a_linearly_separable_set(tmp_path):
    features, labels = blobs()
    torch.manual_seed(0)
    probe = LinearProbe(16, 4, [0.5], "dino")
    train(probe, FeatureSet(features, labels), tmp_path / "run", epochs=10, batch_size=16)
    val_features, val_labels = blobs(10, seed=1)
    scores = probe.eval().score(val_features, val_labels)
    assert scores[0]["top1"] == 100.0 and scores[0]["loss"] < 0.1


def test_heads_with_different_lrs_train_as_if_each_were_alone(tmp_path):
    features, labels = blobs()
    torch.manual_seed(0)
    pair = LinearProbe(16, 4, [0.01, 0.3], "dino")
    alone = LinearProbe(16, 4, [0.3], "dino")
    alone.heads[0].load_state_dict(pair.heads[1].state_dict())
    train(pair, FeatureSet(features, labels), tmp_path / "pair", epochs=2, lr=0.01)
    train(alone, FeatureSet(features, labels), tmp_path / "alone", epochs=2, lr=0.3)
    torch.testing.assert_close(pair.heads[1].weight, alone.heads[0].weight)
    assert not torch.allclose(pair.heads[0].weight, alone.heads[0].weight)


def test_cached_features_train_the_same_head_as_features_computed_on_the_fly(tmp_path):
    folder = make_folder(tmp_path / "images", classes=2, per_class=8)
    dataset = ImageFolder(folder, eval_transform(32), labelled=True)
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    features, labels = extract_features(backbone, dataset, 16, 0, torch.device("cpu"), None, "train")
    torch.manual_seed(1)
    cached = LinearProbe(features.shape[1], 2, [0.1], "dino")
    on_the_fly = LinearProbe(features.shape[1], 2, [0.1], "dino", extractor=FeatureExtractor(backbone))
    on_the_fly.load_state_dict(cached.state_dict())
    train(cached, FeatureSet(features, labels), tmp_path / "cached")
    train(on_the_fly, dataset, tmp_path / "fly")
    assert not torch.allclose(cached.heads[0].weight, LinearProbe(features.shape[1], 2, [0.1], "dino").heads[0].weight)
    torch.testing.assert_close(cached.heads[0].weight, on_the_fly.heads[0].weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached.heads[0].bias, on_the_fly.heads[0].bias, atol=1e-5, rtol=1e-4)
    # the frozen backbone moves with the probe but is neither trained nor saved
    assert all(k.startswith("heads.") for k in on_the_fly.state_dict())


def test_the_mae_recipe_normalises_features_with_batchnorm_without_affine():
    probe = LinearProbe(8, 3, [0.1], "mae")
    assert isinstance(probe.norm, torch.nn.BatchNorm1d) and not probe.norm.affine and probe.norm.eps == 1e-6
    assert isinstance(LinearProbe(8, 3, [0.1], "dino").norm, torch.nn.Identity)
    groups = probe.param_groups()
    assert [g["lars_exclude"] for g in groups] == [False, True]  # LARS trust ratio on the weight, not the bias
    assert all(g["wd_scale"] == 0.0 for g in groups)


@pytest.fixture
def labelled(tmp_path):
    return (make_folder(tmp_path / "train", classes=3, per_class=10),
            make_folder(tmp_path / "val", classes=3, per_class=4, seed=1))


def test_probe_linear_reports_every_head_keeps_the_best_checkpoint_and_reuses_cached_features(labelled, tmp_path,
                                                                                             monkeypatch):
    train_dir, val_dir = labelled
    settings = dict(img_size=32, epochs=3, batch_size=8, lr=[0.01, 1.0], device="cpu", workers=0)
    result = sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, out=str(tmp_path / "run"), **settings)
    assert [h["lr"] for h in result["heads"]] == [0.01, 1.0]
    assert all(len(h["top1_per_epoch"]) == len(h["top5_per_epoch"]) == 3 for h in result["heads"])
    choice = result["lr_choice"]  # 5-fold cross-validation on train: 2 of each class's 10 images held out per fold
    assert choice["lrs"] == [0.01, 1.0] and (choice["num_fit"], choice["num_held_out"], choice["folds"]) == (24, 30, 5)
    chosen = next(h for h in result["heads"] if h["lr"] == choice["lr"])
    assert result["lr"] == chosen["lr"] and result["top1"] == chosen["last"]["top1"]
    assert result["best_top1"] == max(max(h["top1_per_epoch"]) for h in result["heads"])
    run = tmp_path / "run"
    assert (run / "curves.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "val_top1" in r]
    assert [r["epoch"] for r in scored] == [1, 2, 3] and "val_top1/lr=0.01" in scored[0]
    best = ckpt.read_metadata(run / "checkpoints" / "best.safetensors")
    assert json.loads(best["best"])["epoch"] == result["best_epoch"]

    monkeypatch.setattr(feats, "extract_features", lambda *a, **k: pytest.fail("features were recomputed"))
    again = sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, **settings)
    assert again["heads"] == result["heads"]


def test_probe_linear_refuses_an_existing_run_and_feature_options_a_conv_net_lacks(labelled, tmp_path):
    train_dir, val_dir = labelled
    settings = dict(img_size=32, epochs=1, batch_size=8, device="cpu", workers=0)
    sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, out=str(tmp_path / "run"), **settings)
    with pytest.raises(UsageError, match="already holds a run"):
        sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, out=str(tmp_path / "run"), **settings)
    with pytest.raises(UsageError, match="need a vision transformer"):
        sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, n_last_blocks=4, **settings)
    with pytest.raises(UsageError, match="--recipe must be one of dino, mae"):
        sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, recipe="simclr", **settings)


def test_probe_linear_sweeps_the_recipes_grid_and_chooses_on_held_out_training_labels(labelled, tmp_path):
    from sslkit.evaluate.linear import LR_GRIDS, lr_grid

    train_dir, val_dir = labelled
    other_val = make_folder(tmp_path / "other_val", classes=3, per_class=4, seed=7)
    settings = dict(img_size=32, epochs=3, batch_size=8, device="cpu", workers=0, precision="fp32")
    result = sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, **settings)
    assert lr_grid("dino", 512) == [2 * lr for lr in LR_GRIDS["dino"]]
    grid = lr_grid("dino", 8)
    assert [h["lr"] for h in result["heads"]] == grid and result["lr_choice"]["lrs"] == grid
    choice = result["lr_choice"]
    scores = list(zip(choice["held_out_top1"], [-loss for loss in choice["held_out_loss"]]))
    assert result["lr"] == choice["lr"] == grid[scores.index(max(scores))]  # best top-1, then lowest loss
    # the choice never sees --val: another val folder, the same choice
    again = sslkit.probe_linear("timm:test_resnet", train_dir, other_val, **settings)
    assert again["lr_choice"] == result["lr_choice"]
    fixed = sslkit.probe_linear("timm:test_resnet", train_dir, val_dir, lr=[0.05], **settings)
    assert fixed["lr"] == 0.05 and fixed["lr_choice"] is None and len(fixed["heads"]) == 1


def test_the_lr_choice_takes_the_best_held_out_top1_and_breaks_a_tie_by_the_lower_loss():
    from sslkit.evaluate.lr_choice import LrChoice

    assert LrChoice((0.01, 0.1, 1.0), (50.0, 60.0, 60.0), (1.2, 1.1, 0.9), 8, 2, 1).lr == 1.0
    assert LrChoice((0.01, 0.1), (70.0, 60.0), (2.0, 0.5), 8, 2, 1).lr == 0.01
    assert LrChoice((0.01, 0.1), (60.0, 60.0), (0.7, 0.7), 8, 2, 1).lr == 0.01  # a full tie: the smaller lr
    assert "the grid's largest" in LrChoice((0.01, 0.1, 1.0), (50.0, 60.0, 60.0), (1.2, 1.1, 0.9), 8, 2, 1).at_an_edge()
    assert "the grid's smallest" in LrChoice((0.01, 0.1), (70.0, 60.0), (2.0, 0.5), 8, 2, 1).at_an_edge()
    assert LrChoice((0.01, 0.1, 1.0), (50.0, 70.0, 60.0), (1.2, 1.1, 0.9), 8, 2, 1).at_an_edge() is None

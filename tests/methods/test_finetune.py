import json
import math
import random

import numpy as np
import pytest
import timm
import torch

import sslkit
from sslkit.config import FinetuneConfig
from sslkit.data.folders import ImageFolder, balanced_subset
from sslkit.data.views import finetune_view
from sslkit.engine import checkpoint as ckpt
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.finetune import Finetune, layer_id, soft_cross_entropy
from tests.conftest import interrupt_at, make_folder


def test_layer_ids_follow_mae():
    assert [layer_id(n, 12) for n in ("cls_token", "pos_embed", "patch_embed.proj.weight")] == [0, 0, 0]
    assert layer_id("blocks.0.norm1.weight", 12) == 1 and layer_id("blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("norm.weight", 12) == 13 and layer_id("head.weight", 12) == 13


def test_layer_decay_scales_each_layers_lr_by_its_distance_from_the_head():
    backbone = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    depth = len(backbone.blocks)
    options = FinetuneConfig(model="timm:test_vit", train="", val="", out="")
    method = Finetune(backbone, 3, options, 0.5, "test_vit", 32, ["a", "b", "c"])
    scale_of = {id(p): g["lr_scale"] for g in method.param_groups() for p in g["params"]}
    wd_of = {id(p): g["wd_scale"] for g in method.param_groups() for p in g["params"]}
    assert scale_of[id(backbone.patch_embed.proj.weight)] == 0.5 ** (depth + 1)
    assert scale_of[id(backbone.cls_token)] == 0.5 ** (depth + 1)
    for i, block in enumerate(backbone.blocks):
        assert scale_of[id(block.attn.qkv.weight)] == 0.5 ** (depth - i)
    assert scale_of[id(backbone.norm.weight)] == scale_of[id(method.head.weight)] == 1.0
    ratio = scale_of[id(backbone.blocks[0].mlp.fc1.weight)] / scale_of[id(backbone.blocks[1].mlp.fc1.weight)]
    assert ratio == 0.5
    assert wd_of[id(method.head.weight)] == 1.0 and wd_of[id(method.head.bias)] == 0.0
    assert wd_of[id(backbone.blocks[0].norm1.weight)] == 0.0 and wd_of[id(backbone.cls_token)] == 0.0
    assert sum(len(g["params"]) for g in method.param_groups()) == len(list(method.parameters()))


def test_soft_cross_entropy_matches_a_hand_computed_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax: 1/4, 3/4
    loss = soft_cross_entropy(logits, torch.tensor([[0.5, 0.5]]))
    assert loss.item() == pytest.approx(0.5 * math.log(16 / 3))


def test_fraction_subsets_are_class_balanced_and_deterministic_per_seed():
    labels = [0] * 100 + [1] * 50 + [2] * 7
    subset = balanced_subset(labels, 0.1, seed=0)
    counts = [sum(labels[i] == c for i in subset) for c in range(3)]
    assert counts == [10, 5, 1]  # every class keeps at least one image
    assert subset == sorted(subset) and len(set(subset)) == len(subset)
    assert balanced_subset(labels, 0.1, seed=0) == subset
    assert balanced_subset(labels, 0.1, seed=1) != subset
    assert balanced_subset(labels, 1.0, seed=0) == list(range(len(labels)))


def test_a_samples_randaugment_is_fixed_by_its_seed(tmp_path):
    folder = make_folder(tmp_path / "images", per_class=2)
    dataset = ImageFolder(folder, finetune_view(32, "rand-m9-mstd0.5-inc1"), labelled=True)
    first, _ = dataset[(0, 123)]
    random.seed(99)
    np.random.seed(99)
    again, _ = dataset[(0, 123)]
    other, _ = dataset[(0, 124)]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_randaugment_at_full_magnitude_never_fails(tmp_path):
    folder = make_folder(tmp_path / "images", classes=1, per_class=1)
    dataset = ImageFolder(folder, finetune_view(32, "rand-n3-m10-mstd0-inc1"), labelled=True)
    for seed in range(60):  # 3 of 15 ops per image: posterize-increasing comes up many times
        assert dataset[(0, seed)][0].shape == (3, 32, 32)


@pytest.fixture
def labelled(tmp_path):
    return make_folder(tmp_path / "train", classes=3, per_class=8), make_folder(tmp_path / "val", classes=3, per_class=4, seed=1)


TINY = dict(img_size=32, epochs=2, batch_size=4, device="cpu", workers=0, log_every=1)


def test_finetune_trains_a_fraction_keeps_the_best_checkpoint_and_gives_a_loadable_backbone(labelled, tmp_path):
    train_dir, val_dir = labelled
    run = tmp_path / "run"
    result = sslkit.finetune("timm:test_vit", train_dir, val_dir, run, fraction=0.5, **TINY)
    assert result["num_train"] == 12 and result["num_classes"] == 3 and len(result["top1_per_epoch"]) == 2
    assert result["best_top1"] == max(result["top1_per_epoch"])
    best = ckpt.read_metadata(run / "checkpoints" / "best.safetensors")
    assert json.loads(best["best"])["epoch"] == result["best_epoch"]
    assert json.loads(best["classes"]) == ["class0", "class1", "class2"]
    assert (run / "curves.png").is_file()
    knn = sslkit.probe_knn(str(run), train_dir, val_dir, k=[3], workers=0, device="cpu")
    assert knn["description"].startswith("finetune test_vit")


def test_resumed_finetune_equals_an_uninterrupted_one(labelled, tmp_path):
    train_dir, val_dir = labelled  # mixup / cutmix (numpy), RandAugment (random, numpy), erasing (random, torch)
    sslkit.finetune("timm:test_vit", train_dir, val_dir, tmp_path / "straight", **TINY)
    with interrupt_at(Finetune, step=2), pytest.raises(Interrupted):
        sslkit.finetune("timm:test_vit", train_dir, val_dir, tmp_path / "resumed", **TINY)
    sslkit.finetune("timm:test_vit", train_dir, val_dir, tmp_path / "resumed", resume=True, **TINY)
    straight = ckpt.read_tensors(tmp_path / "straight" / "checkpoints" / "last.safetensors", "model.")
    resumed = ckpt.read_tensors(tmp_path / "resumed" / "checkpoints" / "last.safetensors", "model.")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_finetune_usage_errors_name_the_problem(labelled, tmp_path):
    train_dir, val_dir = labelled
    with pytest.raises(UsageError, match="even --batch-size"):
        sslkit.finetune("timm:test_vit", train_dir, val_dir, tmp_path / "a", **{**TINY, "batch_size": 5})
    with pytest.raises(UsageError, match="--layer-decay needs a vision transformer"):
        sslkit.finetune("timm:test_resnet", train_dir, val_dir, tmp_path / "b", layer_decay=0.65, **TINY)
    with pytest.raises(UsageError, match=r"--fraction must lie in \(0, 1\]"):
        sslkit.finetune("timm:test_vit", train_dir, val_dir, tmp_path / "c", fraction=0.0, **TINY)

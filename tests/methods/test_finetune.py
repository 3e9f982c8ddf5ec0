import json
import math
import random

import numpy as np
import pytest
import timm
import torch

import sslkit
from sslkit.data.folders import ImageFolder, balanced_subset
from sslkit.data.views import finetune_view
from sslkit.engine import checkpoint as ckpt
from sslkit.errors import Interrupted, UsageError
from sslkit.evaluate.settings import FinetuneConfig
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
    return (make_folder(tmp_path / "train", classes=3, per_class=8),
            make_folder(tmp_path / "val", classes=3, per_class=4, seed=1))


TINY = dict(img_size=32, epochs=2, batch_size=4, device="cpu", workers=0, log_every=1, recipe="mae")


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


def test_the_semi_supervised_recipe_is_byols_and_simclrs():
    from sslkit.methods import finetune as ft

    assert ft.SEMI_SUPERVISED_LRS == (0.005, 0.01, 0.02, 0.05, 0.1)  # BYOL appendix C.1's grid
    train = ft.train_settings("semi-supervised", {}, 16, None, 300, 10)
    # SGD with Nesterov momentum 0.9, no weight decay, no warm-up (SimCLR B.5); the lr left to be chosen
    assert (train.optimizer, train.nesterov, train.momentum, train.weight_decay) == ("sgd", True, 0.9, 0.0)
    assert (train.warmup_epochs, train.min_lr, train.clip_grad, train.lr, train.batch_size) == (0.0, 0.0, 0.0, None, 16)
    # SimCLR: 60 epochs on ImageNet's 1 % (12,811 images), 30 on its 10 % (128,116)
    assert ft.train_settings("semi-supervised", {}, 1024, None, 12_811, 1000).epochs == 60
    assert ft.train_settings("semi-supervised", {}, 1024, None, 128_116, 1000).epochs == 30
    assert ft.recipe_options("semi-supervised") == {"drop_path": 0.0, "smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0,
                                                    "randaug": "none", "reprob": 0.0, "layer_decay": 1.0}
    given = ft.train_settings("semi-supervised", {"lr": 0.3, "epochs": 7}, 16, None, 300, 10)
    assert (given.lr, given.epochs) == (0.3, 7)
    assert ft.train_settings("semi-supervised", {}, 32, 0.4, 300, 10).lr == pytest.approx(0.4 * 32 / 256)
    mae = ft.train_settings("mae", {}, 512, 5e-4, 1_281_167, 1000)
    assert ((mae.optimizer, mae.weight_decay, mae.epochs, mae.warmup_epochs, mae.min_lr)
            == ("adamw", 0.05, 100, 5.0, 1e-6))
    assert mae.lr == pytest.approx(1e-3) and tuple(mae.betas) == (0.9, 0.999) and not mae.nesterov
    assert ft.recipe_options("mae") == {}


def test_auto_picks_the_recipe_by_the_number_of_labelled_images():
    from sslkit.methods.finetune import choose_recipe

    assert choose_recipe("auto", 300)[0] == "semi-supervised"
    assert choose_recipe("auto", 128_116)[0] == "semi-supervised"  # ImageNet's 10 %, as BYOL fine-tunes it
    assert choose_recipe("auto", 1_281_167)[0] == "mae"  # all of ImageNet, as MAE does
    assert (choose_recipe("mae", 300) == ("mae", "as --recipe asks")
            and choose_recipe("semi-supervised", 10**7)[0] == "semi-supervised")
    assert "300 labelled images" in choose_recipe("auto", 300)[1]


def test_held_out_folds_are_class_balanced_cover_every_item_once_and_never_empty_a_class():
    from sslkit.data.folders import held_out_folds

    labels = [0] * 10 + [1] * 5 + [2] * 1 + [3] * 2
    folds = held_out_folds(labels, 5, seed=0)
    for fit, held in folds:
        assert sorted(fit + held) == list(range(len(labels))) and not set(fit) & set(held)
        assert all(any(labels[i] == c for i in fit) for c in range(4))  # every class keeps an image to train on
    fit, held = folds[0]  # what fine-tuning holds out: a fifth of each class
    assert [sum(labels[i] == c for i in held) for c in range(4)] == [2, 1, 0, 1]
    assert [[sum(labels[i] == 0 for i in h) for _, h in folds]] == [[2, 2, 2, 2, 2]]
    held_once = sorted(i for _, held in folds for i in held)
    assert held_once == [i for i in range(len(labels)) if labels[i] != 2]  # every item once; never a class's only one
    assert held_out_folds(labels, 5, seed=0) == folds and held_out_folds(labels, 5, seed=1) != folds
    assert held_out_folds([0, 1, 2], 5, seed=0)[0] == ([0, 1, 2], [])


SEMI = dict(img_size=32, epochs=2, batch_size=4, device="cpu", workers=0, log_every=1, precision="fp32")


def test_auto_fine_tunes_few_labels_semi_supervised_with_the_lr_chosen_on_held_out_training_labels(labelled, tmp_path):
    train_dir, val_dir = labelled
    other_val = make_folder(tmp_path / "other_val", classes=3, per_class=4, seed=9)
    result = sslkit.finetune("timm:test_resnet", train_dir, val_dir, tmp_path / "run", **SEMI)
    assert result["recipe"] == "semi-supervised" and "24 labelled images" in result["recipe_reason"]
    choice = result["lr_choice"]
    assert choice["lrs"] == [0.005, 0.01, 0.02, 0.05, 0.1] and (choice["num_fit"], choice["num_held_out"]) == (18, 6)
    assert choice["folds"] == 1
    scores = list(zip(choice["held_out_top1"], [-loss for loss in choice["held_out_loss"]]))
    assert result["lr"] == choice["lr"] == choice["lrs"][scores.index(max(scores))]  # best top-1, then lowest loss
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["train"]["lr"] == choice["lr"] and config["train"]["optimizer"] == "sgd"
            and config["train"]["nesterov"])
    assert config["finetune"]["recipe"] == "semi-supervised" and config["finetune"]["mixup"] == 0.0
    assert config["decided"]["lr_choice"] == choice and result["num_train"] == 24
    # --val chooses nothing: another val folder, the same choice and the same trained weights
    again = sslkit.finetune("timm:test_resnet", train_dir, other_val, tmp_path / "again", **SEMI)
    assert again["lr_choice"] == choice
    first = ckpt.read_tensors(tmp_path / "run" / "checkpoints" / "last.safetensors", "model.")
    second = ckpt.read_tensors(tmp_path / "again" / "checkpoints" / "last.safetensors", "model.")
    assert all(torch.equal(first[k], second[k]) for k in first)
    # a pretrained model (this run) and the random-init baseline go through the same procedure
    pretrained = sslkit.finetune(str(tmp_path / "run"), train_dir, val_dir, tmp_path / "from-run", **SEMI)
    same = ("lrs", "num_fit", "num_held_out", "folds")
    assert {k: pretrained["lr_choice"][k] for k in same} == {k: choice[k] for k in same}
    assert pretrained["recipe"] == "semi-supervised" and pretrained["epochs"] == result["epochs"]
    fixed = sslkit.finetune("timm:test_resnet", train_dir, val_dir, tmp_path / "fixed", lr=0.03, **SEMI)
    assert fixed["lr"] == 0.03 and fixed["lr_choice"] is None


def test_a_resumed_semi_supervised_run_keeps_its_chosen_lr_and_equals_an_uninterrupted_one(labelled, tmp_path,
                                                                                        monkeypatch):
    train_dir, val_dir = labelled
    straight = sslkit.finetune("timm:test_resnet", train_dir, val_dir, tmp_path / "straight", **SEMI)
    # the lr runs take 8 steps each (18 images, batch 4, 2 epochs); the run itself 12: step 10 is the run's
    with interrupt_at(Finetune, step=10), pytest.raises(Interrupted):
        sslkit.finetune("timm:test_resnet", train_dir, val_dir, tmp_path / "resumed", **SEMI)
    from sslkit.methods import finetune_run

    monkeypatch.setattr(finetune_run, "choose_finetune_lr", lambda *a, **k: pytest.fail("the lr was chosen again"))
    resumed = sslkit.finetune("timm:test_resnet", train_dir, val_dir, tmp_path / "resumed", resume=True, **SEMI)
    assert resumed["lr"] == straight["lr"] and resumed["lr_choice"] == straight["lr_choice"]
    a = ckpt.read_tensors(tmp_path / "straight" / "checkpoints" / "last.safetensors", "model.")
    b = ckpt.read_tensors(tmp_path / "resumed" / "checkpoints" / "last.safetensors", "model.")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

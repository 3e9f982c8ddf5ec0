"""pretrain --continue-from: a new run starts from imported weights, heads and decoder included when they fit."""

import json

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from typer.testing import CliRunner

import sslkit
from sslkit.cli import app
from sslkit.methods.byol import BYOLConfig
from sslkit.methods.dino import DINOConfig
from sslkit.methods.mae import MAEConfig
from sslkit.engine import checkpoint as ckpt, foreign
from sslkit.engine.warmstart import read_weights, warm_start
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.byol import BYOL
from sslkit.methods.dino import DINO
from sslkit.methods.mae import MAE, sincos_2d
from sslkit.models.posembed import dino_resample_pos_embed
from tests.conftest import TINY_BYOL, interrupt_at
from tests.engine.test_interop import dino_training_checkpoint

runner = CliRunner()
# the head dino_training_checkpoint saves, and the settings a preset would fill in
DINO_HEAD = dict(hidden_dim=32, bottleneck_dim=8, local_crops_number=2, momentum_teacher=0.996, teacher_temp=0.04,
                 warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=0)


def equal_state(module: torch.nn.Module, state: dict, skip: tuple = ()) -> bool:
    own = module.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if k not in skip) and set(own) >= set(state)


def test_dino_training_checkpoint_continues_dino_with_heads_centre_and_a_resampled_position_embedding(tmp_path):
    path = tmp_path / "checkpoint.pth"
    student, teacher, head, teacher_head = dino_training_checkpoint(path, arch="test_vit", out_dim=16, img_size=64)
    model = DINO(DINOConfig(arch="test_vit", img_size=32, out_dim=16, **DINO_HEAD))
    report = warm_start(model, read_weights(str(path), arch="test_vit"))
    assert set(report["loaded"]) == {"backbone", "teacher", "head", "teacher_head", "center"}
    assert report["fresh"] == [] and report["not_fitting"] == [] and report["licence"] == foreign.DINO_LICENCE
    assert equal_state(model.backbone, student.state_dict(), skip=("pos_embed",))
    assert equal_state(model.teacher, teacher.state_dict(), skip=("pos_embed",))
    # 64 px (4 x 4 patches) in the file, 32 px (2 x 2) in the run: resampled as DINO resamples its own weights
    expected = dino_resample_pos_embed(student.state_dict()["pos_embed"], (2, 2))
    assert torch.equal(model.backbone.pos_embed, expected)
    timms = resample_abs_pos_embed(student.state_dict()["pos_embed"], new_size=[2, 2], num_prefix_tokens=1)
    assert not torch.allclose(model.backbone.pos_embed, timms, atol=1e-4)
    assert equal_state(model.head, {k[len("head."):]: v for k, v in head.items()})
    assert equal_state(model.teacher_head, {k[len("head."):]: v for k, v in teacher_head.items()})
    saved = torch.load(path, weights_only=False)
    assert torch.equal(model.center, saved["dino_loss"]["center"])


def test_heads_that_do_not_fit_the_run_start_afresh_and_are_reported(tmp_path):
    path = tmp_path / "checkpoint.pth"
    dino_training_checkpoint(path, arch="test_vit", out_dim=16, img_size=32)
    torch.manual_seed(5)
    model = DINO(DINOConfig(arch="test_vit", img_size=32, out_dim=32, **DINO_HEAD))
    fresh_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = warm_start(model, read_weights(str(path), arch="test_vit"))
    assert set(report["not_fitting"]) == {"head", "teacher_head", "center"}
    assert set(report["loaded"]) == {"backbone", "teacher"}
    assert equal_state(model.head, fresh_head)  # all or nothing: the MLP that would fit is not loaded alone


def test_mae_full_file_brings_its_decoder_and_the_run_keeps_its_sincos_embeddings(tmp_path):
    torch.manual_seed(1)
    official = MAE(MAEConfig(arch="test_vit", img_size=64, decoder_dim=32, decoder_depth=2, decoder_heads=2))
    state = {k.removeprefix("backbone."): v.clone() for k, v in official.state_dict().items()}
    torch.save({"model": state}, tmp_path / "mae_visualize_test.pth")
    model = MAE(MAEConfig(arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=2, decoder_heads=2))
    report = warm_start(model, read_weights(str(tmp_path / "mae_visualize_test.pth"), arch="test_vit"))
    assert set(report["loaded"]) == {"backbone", "decoder_embed", "mask_token", "decoder_blocks", "decoder_norm",
                                     "decoder_pred"}
    assert report["licence"] == foreign.MAE_LICENCE
    fixed = ("backbone.pos_embed", "decoder_pos_embed")
    assert equal_state(model, official.state_dict(), skip=fixed)
    assert torch.equal(model.backbone.pos_embed, sincos_2d(model.backbone.num_features, (2, 2)))
    assert torch.equal(model.decoder_pos_embed, sincos_2d(32, (2, 2)))


@pytest.mark.parametrize("key, network", [("teacher", "target_backbone"), ("student", "backbone")])
def test_another_methods_run_initialises_both_backbones_from_the_chosen_network(tmp_path, image_folder, key,
                                                                                 network):
    sslkit.pretrain("byol", image_folder, tmp_path / "byol", **TINY_BYOL, epochs=1)
    byol = BYOL(BYOLConfig(arch="test_resnet", img_size=32, projector_hidden_dim=64, projector_dim=32,
                           predictor_hidden_dim=64))
    byol.load_state_dict(ckpt.read_tensors(tmp_path / "byol/checkpoints/last.safetensors", "model."))
    model = DINO(DINOConfig(arch="test_resnet", img_size=32, out_dim=16, **DINO_HEAD))
    report = warm_start(model, read_weights(str(tmp_path / "byol"), key))
    assert set(report["fresh"]) == {"head", "teacher_head", "center"}
    chosen = getattr(byol, network).state_dict()
    assert equal_state(model.backbone, chosen) and equal_state(model.teacher, chosen)


def test_a_backbone_that_does_not_fit_is_refused_unless_partial_loads_are_allowed(tmp_path, capsys):
    path = tmp_path / "checkpoint.pth"
    dino_training_checkpoint(path, arch="test_vit", out_dim=16, img_size=32)
    saved = torch.load(path, weights_only=False)
    del saved["teacher"]["backbone.blocks.0.mlp.fc1.weight"]
    torch.save(saved, path)
    model = DINO(DINOConfig(arch="test_vit", img_size=32, out_dim=16, **DINO_HEAD))
    with pytest.raises(UsageError, match="missing: blocks.0.mlp.fc1.weight"):
        warm_start(model, read_weights(str(path), arch="test_vit"))
    warm_start(model, read_weights(str(path), arch="test_vit"), allow_partial=True)
    assert "--allow-partial" in capsys.readouterr().err


def test_continued_run_records_its_source_and_resumes_without_it(tmp_path, image_folder):
    """A continued run, interrupted and resumed after its source is gone, ends bit for bit where the same run
    uninterrupted ends; its config and checkpoints say where it started."""
    settings = dict(TINY_BYOL, epochs=2)
    sslkit.pretrain("byol", image_folder, tmp_path / "source", **dict(settings, epochs=1))
    sslkit.pretrain("byol", image_folder, tmp_path / "whole", continue_from=str(tmp_path / "source"), **settings)
    with interrupt_at(BYOL, step=2), pytest.raises(Interrupted):
        sslkit.pretrain("byol", image_folder, tmp_path / "cut", continue_from=str(tmp_path / "source"), **settings)
    source = tmp_path / "source" / "checkpoints" / "last.safetensors"
    source.rename(tmp_path / "elsewhere.safetensors")
    sslkit.pretrain("byol", image_folder, tmp_path / "cut", resume=True)
    whole = ckpt.read_tensors(tmp_path / "whole" / "checkpoints" / "last.safetensors", "model.")
    resumed = ckpt.read_tensors(tmp_path / "cut" / "checkpoints" / "last.safetensors", "model.")
    assert set(whole) == set(resumed) and all(torch.equal(whole[k], resumed[k]) for k in whole)
    sslkit.pretrain("byol", image_folder, tmp_path / "scratch", **settings)
    scratch = ckpt.read_tensors(tmp_path / "scratch" / "checkpoints" / "last.safetensors", "model.")
    assert not torch.equal(scratch["backbone.conv1.0.weight"], whole["backbone.conv1.0.weight"])
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["continue"] == {"continue_from": str(tmp_path / "source"), "checkpoint_key": "teacher",
                                  "allow_partial": False}
    metadata = ckpt.read_metadata(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert metadata["continued_from"] == str(source)


def test_cli_continue_from_an_mae_release_carries_its_licence_to_the_export(tmp_path, image_folder):
    torch.manual_seed(1)
    official = MAE(MAEConfig(arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2))
    state = {k.removeprefix("backbone."): v.clone() for k, v in official.state_dict().items()}
    torch.save({"model": state}, tmp_path / "mae_pretrain_full.pth")
    result = runner.invoke(app, [
        "pretrain", "mae", str(image_folder), "--out", str(tmp_path / "run"), "--continue-from",
        str(tmp_path / "mae_pretrain_full.pth"), "--arch", "test_vit", "--img-size", "32", "--decoder-dim", "32",
        "--decoder-depth", "1", "--decoder-heads", "2", "--epochs", "1", "--batch-size", "8", "--workers", "0",
        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "continuing from" in result.output and "CC-BY-NC-4.0" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "mae.safetensors")])
    assert result.exit_code == 0, result.output
    assert ckpt.raw_metadata(tmp_path / "mae.safetensors")["licence"] == foreign.MAE_LICENCE
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "mine.safetensors"),
                                 "--licence", "CC-BY-NC-4.0 (fine-tuned on our photos)"])
    assert ckpt.raw_metadata(tmp_path / "mine.safetensors")["licence"] == "CC-BY-NC-4.0 (fine-tuned on our photos)"

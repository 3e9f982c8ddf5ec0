import argparse
import json

import torch
from typer.testing import CliRunner

from sslkit.cli import app
from sslkit.engine.modelinfo import model_info
from sslkit.models.backbones import create_backbone
from tests.engine.test_export import _run_checkpoint

runner = CliRunner()


def _dino_training_file(tmp_path, drop: str | None = None):
    """A .pth saved the way DINO's main_dino.py saves: DDP and backbone prefixes, heads, a pickled Namespace."""
    vit = create_backbone("vit_tiny_patch16_224", 32)
    student = {f"module.backbone.{k}": v for k, v in vit.state_dict().items() if k != drop}
    student["module.head.last_layer.weight_g"] = torch.ones(8, 1)
    teacher = {k.removeprefix("module."): v for k, v in student.items()}
    args = argparse.Namespace(arch="vit_tiny", patch_size=16, out_dim=8, lr=0.0005)
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 7, "args": args}, path)
    return path


def test_info_of_an_sslkit_checkpoint(tmp_path):
    source, _ = _run_checkpoint(tmp_path, "test_vit", 64)
    info = model_info(str(source))
    assert info["kind"] == "sslkit checkpoint" and info["method"] == "dino" and info["step"] == 5
    assert info["backbones"] == ["student", "teacher"] and info["backbone"] == "teacher"
    assert info["arch"] == "test_vit" and info["img_size"] == 64 and info["patch_size"] == 16
    assert info["keys"]["fits"] and info["keys"]["matched"] == info["keys"]["expected"]
    assert info["parameters"] == sum(p.numel() for p in create_backbone("test_vit", 64).parameters())


def test_info_of_a_dino_training_file_infers_the_vit_and_reads_its_args(tmp_path):
    info = model_info(str(_dino_training_file(tmp_path)))
    assert info["kind"].startswith("DINO training checkpoint") and info["epoch"] == 7
    assert info["args"] == {"arch": "vit_tiny", "patch_size": 16, "out_dim": 8, "lr": 0.0005}
    assert info["arch"] == "vit_tiny_patch16_224" and info["img_size"] == 32 and info["keys"]["fits"]


def test_info_reports_a_partial_backbone_instead_of_refusing_it(tmp_path):
    path = _dino_training_file(tmp_path, drop="blocks.0.attn.qkv.weight")
    info = model_info(str(path))
    assert not info["keys"]["fits"] and info["keys"]["missing"] == ["blocks.0.attn.qkv.weight"]
    assert info["keys"]["matched"] == info["keys"]["expected"] - 1
    out = tmp_path / "info.json"
    result = runner.invoke(app, ["info", str(path), "--json", str(out), "--config"])
    assert result.exit_code == 0, result.output
    assert "missing: blocks.0.attn.qkv.weight" in result.output and '"out_dim": 8' in result.output
    assert json.loads(out.read_text())["keys"]["missing"] == ["blocks.0.attn.qkv.weight"]


def test_info_says_when_the_architecture_cannot_be_told(tmp_path):
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "odd.pth")
    info = model_info(str(tmp_path / "odd.pth"))
    assert info["kind"] == "PyTorch state dict" and "arch" not in info and "--arch" in info["arch_error"]
    result = runner.invoke(app, ["info", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and result.stderr.startswith("error: model not found")
    result = runner.invoke(app, ["info", "timm:test_vit", "--checkpoint-key", "ema"])
    assert result.exit_code == 2 and "--checkpoint-key must be one of" in result.stderr

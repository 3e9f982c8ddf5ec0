import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sslkit import api
from sslkit.cli import app
from sslkit.engine import checkpoint as ckpt
from sslkit.models.backbones import create_backbone

runner = CliRunner()


def _run_checkpoint(tmp_path, arch: str, img_size: int):
    """An sslkit checkpoint as a DINO run writes it: teacher and student backbones plus a head."""
    torch.manual_seed(0)
    teacher, student = create_backbone(arch, img_size), create_backbone(arch, img_size)
    tensors = {f"model.teacher.{k}": v for k, v in teacher.state_dict().items()}
    tensors.update({f"model.student.{k}": v for k, v in student.state_dict().items()})
    tensors["model.head.weight"] = torch.ones(3, 3)
    path = tmp_path / "last.safetensors"
    ckpt.save_checkpoint(path, tensors, {"method": "dino", "arch": arch, "img_size": str(img_size), "step": "5",
                                          "backbones": json.dumps({"teacher": "teacher", "student": "student"})})
    return path, teacher


def test_timm_export_loads_into_timm_strictly_and_gives_the_same_features(tmp_path):
    source, teacher = _run_checkpoint(tmp_path, "test_vit", 64)
    out = tmp_path / "export.safetensors"
    result = api.export(str(source), out)
    assert result["arch"] == "test_vit" and result["img_size"] == "64" and result["patch_size"] == "16"
    assert result["method"] == "dino" and result["step"] == "5" and result["pooling"] == "token"
    assert set(load_file(out)) == set(teacher.state_dict())  # the teacher alone: no head, no student
    model = timm.create_model("test_vit", pretrained=True, num_classes=0, img_size=64,
                              pretrained_cfg_overlay=dict(file=str(out))).eval()
    strict = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=64)
    strict.load_state_dict(load_file(out), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), teacher.eval()(x))
        assert torch.equal(strict.eval()(x), teacher(x))


@pytest.mark.parametrize("fmt", ["timm", "sslkit"])
def test_exports_load_back_as_models_bit_for_bit(tmp_path, fmt):
    source, _ = _run_checkpoint(tmp_path, "test_resnet", 32)
    out = tmp_path / f"{fmt}.safetensors"
    api.export(str(source), out, format=fmt, checkpoint_key="student")
    original = ckpt.load_backbone(str(source), "student").module.state_dict()
    loaded = ckpt.load_backbone(str(out))
    assert loaded.arch == "test_resnet" and loaded.img_size == 32  # the trained size travels in the metadata
    assert original.keys() == loaded.module.state_dict().keys()
    assert all(torch.equal(original[k], v) for k, v in loaded.module.state_dict().items())


def test_export_cli_prints_the_timm_line_and_refuses_bad_requests(tmp_path):
    source, _ = _run_checkpoint(tmp_path, "test_vit", 64)
    result = runner.invoke(app, ["export", str(source), "--out", str(tmp_path / "e.safetensors")])
    assert result.exit_code == 0, result.output
    assert 'timm.create_model("test_vit", pretrained=True, num_classes=0, img_size=64' in result.output
    for args, message in ((["pixels:4", "--out", str(tmp_path / "p.safetensors")], "has no weights to export"),
                          ([str(source), "--out", str(tmp_path / "e.pt")], "--out must name a .safetensors"),
                          ([str(source), "--out", str(tmp_path / "f.safetensors"), "--format", "onnx"],
                           "--format must be")):
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1

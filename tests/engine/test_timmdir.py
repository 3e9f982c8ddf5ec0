"""sslkit export --format timm-dir: the Hugging Face / timm model folder, which timm loads with local-dir:, and
which every sslkit command takes as MODEL."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import sslkit
from sslkit.engine import checkpoint as ckpt, timmdir
from sslkit.errors import UsageError
from sslkit.models.backbones import FeatureExtractor
from tests.conftest import TINY_BYOL, make_folder
from tests.engine.test_releases import released_file


@pytest.fixture(scope="module")
def byol_run(tmp_path_factory):
    """A BYOL run with its online k-NN, as a user makes it."""
    root = tmp_path_factory.mktemp("timmdir")
    make_folder(root / "train", per_class=6, size=36)
    make_folder(root / "val", per_class=3, size=36, seed=1)
    sslkit.pretrain("byol", root / "train", root / "run", **dict(TINY_BYOL, epochs=2, eval_train=str(root / "train"),
                                                                  eval_val=str(root / "val"), eval_every=1))
    return root


def timm_features(folder, images: torch.Tensor) -> torch.Tensor:
    """Features of the folder as timm builds it, standardised by its config's mean and std, as timm would."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config(model=model)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((images.float() / 255 - mean) / std)


def test_a_run_exported_as_a_timm_folder_loads_in_timm_with_its_features_and_card(byol_run, tmp_path):
    out = tmp_path / "byol-r18"
    result = sslkit.export(byol_run / "run", out, format="timm-dir")
    assert result["timm"] == f'timm.create_model("local-dir:{out}", pretrained=True)'
    assert sorted(p.name for p in out.iterdir()) == [".sslkit-output.json", "README.md", "config.json",
                                                     "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_features"] == 96
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_pct"] == 0.875
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406] and "license" not in config["pretrained_cfg"]
    assert config["sslkit"]["method"] == "byol" and config["sslkit"]["step"] == "2"
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    ours = ckpt.load_backbone(str(byol_run / "run"))
    assert torch.allclose(timm_features(out, images), FeatureExtractor(ours.module)(images), rtol=0, atol=1e-6)
    card = (out / "README.md").read_text()
    knn = [r for r in map(json.loads, (byol_run / "run" / "metrics.jsonl").read_text().splitlines())
           if "knn_top1" in r][-1]
    assert "library_name: timm" in card and "| method | byol |" in card and "| images | 12 |" in card
    assert "| epochs | 2 |" in card and f"top-1 {knn['knn_top1']:.1f} %" in card and "epoch 2" in card


@pytest.mark.parametrize("spec", ["{out}", "local-dir:{out}"])
def test_a_timm_folder_is_a_model_for_the_commands(byol_run, tmp_path, spec):
    out = tmp_path / "export"
    sslkit.export(byol_run / "run", out, format="timm-dir")
    model = spec.format(out=out)
    loaded = ckpt.load_backbone(model)
    run = ckpt.load_backbone(str(byol_run / "run"))
    assert (loaded.arch, loaded.img_size, loaded.method) == ("test_resnet", 32, "byol")
    assert all(torch.equal(v, run.module.state_dict()[k]) for k, v in loaded.module.state_dict().items())
    info = sslkit.info(model)
    assert info["kind"].startswith("timm model folder") and info["img_size"] == 32 and info["keys"]["fits"]
    knn = sslkit.probe_knn(model, train=byol_run / "train", val=byol_run / "val", device="cpu", workers=0)
    assert knn["top1"] == sslkit.probe_knn(str(byol_run / "run"), train=byol_run / "train", val=byol_run / "val",
                                           device="cpu", workers=0)["top1"]


def test_a_dinov2_release_exported_as_a_folder_keeps_its_provenance_and_timm_rebuilds_it(tmp_path):
    layout, model = released_file("vit_small_patch14_reg4_dinov2", 56)
    torch.save(layout, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    out = tmp_path / "dinov2"
    sslkit.export(str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), out, format="timm-dir")
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["license"] == "apache-2.0" and config["model_args"]["img_size"] == [56, 56]
    assert config["sslkit"]["release"] == "DINOv2 ViT-S/14 with 4 registers"
    assert "license: apache-2.0" in (out / "README.md").read_text()
    images = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    assert torch.allclose(timm_features(out, images), FeatureExtractor(model)(images), rtol=0, atol=1e-5)
    loaded = ckpt.load_backbone(str(out))
    assert loaded.release == "DINOv2 ViT-S/14 with 4 registers" and loaded.licence.startswith("Apache-2.0")


def test_dinov3_folders_keep_the_cls_pooling_timms_eva_would_not_default_to(tmp_path):
    layout, model = released_file("vit_small_patch16_dinov3", 32)
    torch.save(layout, tmp_path / "dinov3.pth")
    sslkit.export(str(tmp_path / "dinov3.pth"), tmp_path / "d3", format="timm-dir", img_size=32)
    assert json.loads((tmp_path / "d3" / "config.json").read_text())["model_args"]["global_pool"] == "token"
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(timm_features(tmp_path / "d3", images), FeatureExtractor(model)(images), atol=1e-5)
    line = sslkit.export(str(tmp_path / "dinov3.pth"), tmp_path / "d3.safetensors")["timm"]
    assert 'global_pool="token"' in line and "img_size=256" in line


def test_a_folder_holding_other_files_or_the_input_is_refused_before_anything_is_written(byol_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(UsageError, match="holds files sslkit did not write there"):
        sslkit.export(byol_run / "run", mine, format="timm-dir")
    (mine / "model.safetensors").write_text("not ours")
    with pytest.raises(UsageError, match="model.safetensors exists and sslkit did not write it"):
        sslkit.export(byol_run / "run", mine, format="timm-dir", force=True)
    assert (mine / "model.safetensors").read_text() == "not ours" and (mine / "notes.txt").read_text() == "my notes"
    out = tmp_path / "out"
    sslkit.export(byol_run / "run", out, format="timm-dir")
    sslkit.export(byol_run / "run", out, format="timm-dir")  # its own earlier export is replaced
    with pytest.raises(UsageError, match="would replace the input"):
        sslkit.export(str(out), out, format="timm-dir")
    with pytest.raises(UsageError, match="timm-dir writes a folder"):
        sslkit.export(byol_run / "run", tmp_path / "x.safetensors", format="timm-dir")


@pytest.mark.parametrize("config, message", [
    ({"architecture": "no_such_model"}, "is not a timm model"),
    ({"architecture": "test_vit", "model_args": {"embed_dim": 4096}}, "model_args embed_dim would build another"),
    ({"architecture": "test_vit", "model_args": {"img_size": 10 ** 7}}, "is not a plausible image size"),
    ({"architecture": "test_vit", "pretrained_cfg": {"mean": [0.5], "std": [1, 1, 1]}}, "mean and std"),
    ([1, 2, 3], "is not a JSON object"),
])
def test_a_hostile_folder_config_is_one_line(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=message):
        ckpt.load_backbone(str(tmp_path))
    (tmp_path / "config.json").write_text("[" * 100_000)
    with pytest.raises(UsageError, match="is not readable JSON"):
        timmdir.read_folder(tmp_path)


def test_a_folders_provenance_is_shown_as_one_printable_line(byol_run, tmp_path):
    out = tmp_path / "export"
    sslkit.export(byol_run / "run", out, format="timm-dir")
    config = json.loads((out / "config.json").read_text())
    config["sslkit"]["release"] = "evil\x1b[2J\nrelease"
    (out / "config.json").write_text(json.dumps(config))
    loaded = ckpt.load_backbone(str(out))
    assert loaded.release == "evil\\x1b[2J\\nrelease" and "\x1b" not in loaded.description

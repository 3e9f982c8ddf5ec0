"""Every official weight format, built in memory under its exact key names and saved the way its tool saves it,
loads as MODEL and gives the tensors it was saved with; files that pickle code are refused unexecuted."""

import argparse
import sys
import types

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from typer.testing import CliRunner

from sslkit import api
from sslkit.cli import app
from sslkit.engine import checkpoint as ckpt, foreign
from sslkit.errors import UsageError
from sslkit.models.backbones import create_backbone
from tests.conftest import make_folder

runner = CliRunner()


def seeded(arch: str, img_size: int = 224, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone(arch, img_size, **options).eval()


def same_tensors(module: torch.nn.Module, state: dict) -> bool:
    own = module.state_dict()
    return set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in own)


def dino_training_checkpoint(path, arch: str = "vit_tiny_patch16_224", out_dim: int = 16, img_size: int = 224):
    """main_dino.py's save_dict: a DDP student (module.), a plain teacher, both with backbone. / head. prefixes,
    the optimizer, the epoch, the DINOLoss centre and the pickled argparse Namespace."""
    student, teacher = seeded(arch, img_size, 0), seeded(arch, img_size, 1)
    head = {"head.mlp.0.weight": torch.randn(32, student.num_features), "head.mlp.0.bias": torch.randn(32),
            "head.mlp.2.weight": torch.randn(32, 32), "head.mlp.2.bias": torch.randn(32),
            "head.mlp.4.weight": torch.randn(8, 32), "head.mlp.4.bias": torch.randn(8),
            "head.last_layer.weight_g": torch.ones(out_dim, 1), "head.last_layer.weight_v": torch.randn(out_dim, 8)}
    teacher_head = {k: v + 1 for k, v in head.items()}
    args = argparse.Namespace(arch="vit_tiny", patch_size=16, out_dim=out_dim, norm_last_layer=True, lr=0.0005)
    torch.save({
        "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **teacher_head},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100, "args": args, "dino_loss": {"center": torch.randn(1, out_dim)},
    }, path)
    return student, teacher, head, teacher_head


# ---------------------------------------------------------------- DINO

def test_official_dino_vit_s16_backbone_loads_without_arch_and_drives_knn_and_attention(tmp_path):
    vit = seeded("vit_small_patch16_224")
    torch.save(vit.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")  # DINO's backbone-only release
    loaded = ckpt.load_backbone(str(tmp_path / "dino_deitsmall16_pretrain.pth"))
    assert (loaded.arch, loaded.img_size) == ("vit_small_patch16_224", 224)
    assert same_tensors(loaded.module, vit.state_dict())
    make_folder(tmp_path / "train", per_class=4, size=32)
    make_folder(tmp_path / "val", per_class=2, size=32, seed=1)
    model = str(tmp_path / "dino_deitsmall16_pretrain.pth")
    result = runner.invoke(app, ["probe", "knn", model, "--train", str(tmp_path / "train"), "--val",
                                 str(tmp_path / "val"), "--img-size", "32", "--k", "3", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["attention", model, str(tmp_path / "val" / "class0"), "--out", str(tmp_path / "a"),
                                 "--img-size", "32", "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "a" / "c0_000").iterdir())[:3] == [
        "attn-head0.png", "attn-head1.png", "attn-head2.png"]  # ViT-S: 6 heads


def test_official_dino_resnet50_backbone_loads_in_torchvision_names(tmp_path):
    reference = torchvision.models.resnet50()
    reference.fc = torch.nn.Identity()  # DINO's ResNet-50 release has no classifier
    torch.save(reference.state_dict(), tmp_path / "dino_resnet50_pretrain.pth")
    loaded = ckpt.load_backbone(str(tmp_path / "dino_resnet50_pretrain.pth"))
    assert loaded.arch == "resnet50"
    assert same_tensors(loaded.module, reference.state_dict())


@pytest.mark.parametrize("key", ["teacher", "student"])
def test_dino_training_checkpoint_gives_the_chosen_network_without_heads(tmp_path, key):
    student, teacher, _, _ = dino_training_checkpoint(tmp_path / "checkpoint.pth")
    loaded = ckpt.load_backbone(str(tmp_path / "checkpoint.pth"), key)
    assert loaded.arch == "vit_tiny_patch16_224"
    assert same_tensors(loaded.module, (teacher if key == "teacher" else student).state_dict())
    assert loaded.licence == foreign.DINO_LICENCE


# ---------------------------------------------------------------- MAE

def test_mae_encoder_and_full_files_give_the_encoder(tmp_path):
    encoder = seeded("vit_tiny_patch16_224")
    decoder = {"mask_token": torch.randn(1, 1, 32), "decoder_embed.weight": torch.randn(32, 192),
               "decoder_embed.bias": torch.randn(32), "decoder_pos_embed": torch.randn(1, 197, 32),
               "decoder_norm.weight": torch.randn(32), "decoder_pred.weight": torch.randn(768, 32)}
    torch.save({"model": encoder.state_dict()}, tmp_path / "mae_pretrain_vit_tiny.pth")
    torch.save({"model": {**encoder.state_dict(), **decoder}}, tmp_path / "mae_visualize_vit_tiny.pth")
    for name in ("mae_pretrain_vit_tiny.pth", "mae_visualize_vit_tiny.pth"):
        loaded = ckpt.load_backbone(str(tmp_path / name))
        assert same_tensors(loaded.module, encoder.state_dict())
    assert ckpt.load_backbone(str(tmp_path / "mae_visualize_vit_tiny.pth")).licence == foreign.MAE_LICENCE


def test_mae_finetuned_file_keeps_its_fc_norm_and_average_pools(tmp_path):
    """main_finetune.py's global-pool ViT: fc_norm after the mean patch token, no final norm, a classifier."""
    finetuned = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, global_pool="avg")
    state = finetuned.state_dict()
    assert "fc_norm.weight" in state and "norm.weight" not in state
    args = argparse.Namespace(model="vit_tiny_patch16", global_pool=True, mixup=0.8, nb_classes=10)
    torch.save({"model": state, "args": args, "epoch": 99}, tmp_path / "mae_finetuned_vit_tiny.pth")
    loaded = ckpt.load_backbone(str(tmp_path / "mae_finetuned_vit_tiny.pth"))
    assert loaded.module.global_pool == "avg"
    assert same_tensors(loaded.module, {k: v for k, v in state.items() if not k.startswith("head.")})
    x = torch.randn(2, 3, 224, 224)
    finetuned.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), finetuned.forward_head(finetuned.forward_features(x), pre_logits=True))
    out = tmp_path / "export.safetensors"  # and it exports for timm with the pooling it needs
    result = api.export(str(tmp_path / "mae_finetuned_vit_tiny.pth"), out)
    assert result["pooling"] == "avg"
    timm_model = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, global_pool="avg",
                                   pretrained_cfg_overlay=dict(file=str(out))).eval()
    with torch.no_grad():
        assert torch.equal(timm_model(x), loaded.module(x))
    api.export(str(tmp_path / "mae_finetuned_vit_tiny.pth"), tmp_path / "folder", format="timm-dir")
    folder = ckpt.load_backbone(str(tmp_path / "folder"))  # its config's global_pool and the file's fc_norm agree
    with torch.no_grad():
        assert folder.module.global_pool == "avg" and torch.equal(folder.module(x), loaded.module(x))


# ---------------------------------------------------------------- timm and torchvision

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weight_files_load_with_their_classifier_dropped(tmp_path, suffix):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path), metadata={"format": "pt"})  # as timm / Hugging Face ship them
    else:
        torch.save(model.state_dict(), path)
    loaded = ckpt.load_backbone(str(path))
    assert loaded.arch == "vit_tiny_patch16_224"
    assert same_tensors(loaded.module, {k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    assert loaded.licence is None


# ---------------------------------------------------------------- Lightning (lightly, solo-learn)

class FakeConfigModules:
    """Stand-ins for omegaconf's classes, importable under omegaconf's module names, so a test can pickle a
    solo-learn style checkpoint (an OmegaConf DictConfig in hyper_parameters) without omegaconf."""

    def __init__(self, monkeypatch):
        for module_name, class_name in (("omegaconf.dictconfig", "DictConfig"), ("omegaconf.nodes", "AnyNode")):
            module = types.ModuleType(module_name)
            cls = type(class_name, (), {"__module__": module_name})
            setattr(module, class_name, cls)
            monkeypatch.setitem(sys.modules, module_name, module)
            setattr(self, class_name, cls)
        monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))

    def config(self, values: dict):
        node = self.DictConfig()
        node.__dict__.update(_content={k: self._leaf(v) for k, v in values.items()}, _metadata=None)
        return node

    def _leaf(self, value):
        if isinstance(value, dict):
            return self.config(value)
        leaf = self.AnyNode()
        leaf.__dict__.update(_val=value)
        return leaf


def test_solo_learn_checkpoint_gives_the_momentum_or_online_backbone_and_reads_its_config(tmp_path, monkeypatch):
    online, momentum = torchvision.models.resnet18(), torchvision.models.resnet18()
    for network in (online, momentum):
        network.fc = torch.nn.Identity()
    state_dict = {**{f"backbone.{k}": v for k, v in online.state_dict().items()},
                  **{f"momentum_backbone.{k}": v for k, v in momentum.state_dict().items()},
                  "projector.0.weight": torch.randn(8, 512), "classifier.weight": torch.randn(10, 512)}
    fake = FakeConfigModules(monkeypatch)
    hyper = {"cfg": fake.config({"method": "byol", "optimizer": {"lr": 0.5}})}
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.6", "state_dict": state_dict,
                "hyper_parameters": hyper, "optimizer_states": []}, tmp_path / "byol.ckpt")
    path = str(tmp_path / "byol.ckpt")
    assert same_tensors(ckpt.load_backbone(path, "teacher").module, momentum.state_dict())
    assert same_tensors(ckpt.load_backbone(path, "student").module, online.state_dict())
    result = runner.invoke(app, ["info", path, "--json", str(tmp_path / "info.json")])
    assert result.exit_code == 0, result.output
    info = __import__("json").loads((tmp_path / "info.json").read_text())
    assert info["kind"].startswith("Lightning checkpoint") and info["arch"] == "resnet18"
    assert info["args"] == {"cfg": {"method": "byol", "optimizer": {"lr": 0.5}}}
    assert (info["step"], info["epoch"]) == (120, 3)


def test_lightly_sequential_resnet_is_named_as_torchvision_names_it(tmp_path):
    """lightly's examples: backbone = nn.Sequential(*list(resnet.children())[:-1])."""
    resnet = torchvision.models.resnet18().eval()
    backbone = torch.nn.Sequential(*list(resnet.children())[:-1]).eval()
    state_dict = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                  "projection_head.layers.0.weight": torch.randn(8, 512)}
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.6.6", "state_dict": state_dict},
               tmp_path / "lightly.ckpt")
    loaded = ckpt.load_backbone(str(tmp_path / "lightly.ckpt"))
    assert loaded.arch == "resnet18"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.module.eval()(x), backbone(x).flatten(1), atol=1e-5)


def test_lightly_vit_wrapper_prefix_is_removed(tmp_path):
    vit = seeded("vit_tiny_patch16_224")
    state_dict = {f"backbone.vit.{k}": v for k, v in vit.state_dict().items()}
    state_dict["decoder.decoder_embed.weight"] = torch.randn(4, 192)
    torch.save({"global_step": 5, "state_dict": state_dict}, tmp_path / "mae.ckpt")
    assert same_tensors(ckpt.load_backbone(str(tmp_path / "mae.ckpt")).module, vit.state_dict())


# ---------------------------------------------------------------- what is refused

class RunsCode:
    """What a malicious file pickles: unpickling it would call exec with the file's own code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


class UnknownClass:
    pass


@pytest.mark.parametrize("payload, named", [(RunsCode, "builtins.exec"), (UnknownClass, "UnknownClass")])
@pytest.mark.parametrize("suffix", [".pth", ".ckpt"])
def test_a_file_that_pickles_code_is_refused_without_running_it(tmp_path, payload, named, suffix):
    marker = tmp_path / "code-ran"
    extra = payload(marker) if payload is RunsCode else payload()
    vit = seeded("vit_tiny_patch16_224")
    path = tmp_path / f"checkpoint{suffix}"
    torch.save({"model": vit.state_dict(), "args": argparse.Namespace(lr=1.0), "extra": extra}, path)
    for command in (["info", str(path)], ["export", str(path), "--out", str(tmp_path / "x.safetensors")],
                    ["pretrain", "mae", str(tmp_path), "--out", str(tmp_path.parent / f"{tmp_path.name}-run"),
                     "--continue-from", str(path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert named in result.output and "does not unpickle code" in result.output
        assert "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path.parent / f"{tmp_path.name}-run").exists()
    with pytest.raises(UsageError):
        foreign.read_torch_file(path)
    assert not marker.exists()
    if payload is RunsCode:  # the same file unpickled the unsafe way does run its code: the test can fail
        torch.load(path, weights_only=False)
        assert marker.read_text() == "ran"


def test_random_bytes_and_truncated_files_are_usage_errors(tmp_path):
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 4)
    vit = seeded("vit_tiny_patch16_224")
    torch.save(vit.state_dict(), tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:5000])
    for name in ("noise.pth", "cut.pth"):
        with pytest.raises(UsageError, match="cannot read"):
            ckpt.load_backbone(str(tmp_path / name))


def test_allow_partial_loads_what_fits_and_says_what_did_not(tmp_path, capsys):
    vit = seeded("vit_tiny_patch16_224")
    state = {k: v for k, v in vit.state_dict().items() if k != "blocks.0.attn.qkv.weight"}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UsageError, match="missing: blocks.0.attn.qkv.weight.*--allow-partial"):
        ckpt.load_backbone(str(tmp_path / "partial.pth"))
    loaded = ckpt.load_backbone(str(tmp_path / "partial.pth"), allow_partial=True)
    assert "149 of 150 backbone tensors loaded" in capsys.readouterr().err
    own = loaded.module.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "unrelated.pth")
    with pytest.raises(UsageError, match="no tensor of .* fits"):
        ckpt.load_backbone(str(tmp_path / "unrelated.pth"), arch="vit_tiny_patch16_224", allow_partial=True)

"""The released DINOv2 and DINOv3 files as MODEL: recognised by their layout, built as timm's architectures,
the features of the timm model the weights came from, through every command; near misses in one line."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch.nn import functional as F

import sslkit
from sslkit.data.views import local_crop_size
from sslkit.engine import checkpoint as ckpt, releases
from sslkit.engine.checkpoint import load_backbone
from sslkit.models.backbones import FeatureExtractor
from sslkit.models.posembed import dino_resample_pos_embed
from tests.conftest import make_folder
from tests.engine.release_files import dinov2_layout, dinov3_layout, layer_scaled

# (timm architecture, the release's file layout, satellite) for every released ViT the issue names
RELEASES = [
    *((f"vit_{size}_patch14{reg}_dinov2", "DINOv2", False) for size in ("small", "base", "large", "giant")
      for reg in ("", "_reg4")),
    ("vit_small_patch16_dinov3", "DINOv3", False), ("vit_small_patch16_dinov3_qkvb", "DINOv3", False),
    ("vit_small_plus_patch16_dinov3", "DINOv3", False), ("vit_base_patch16_dinov3", "DINOv3", False),
    ("vit_large_patch16_dinov3", "DINOv3", False), ("vit_large_patch16_dinov3_qkvb", "DINOv3", True),
    ("vit_huge_plus_patch16_dinov3", "DINOv3", False),
]


def released_file(arch: str, img_size: int, seed: int = 0, satellite: bool = False) -> tuple[dict, torch.nn.Module]:
    """The file of a random-init ``arch`` in its release's layout, and that timm model."""
    model = layer_scaled(arch, img_size, seed)
    return (dinov3_layout(model, satellite) if "dinov3" in arch else dinov2_layout(model)), model


@pytest.mark.parametrize("arch, family, satellite", RELEASES, ids=[a for a, _, s in RELEASES])
def test_every_released_layout_names_its_timm_architecture_and_converts_to_its_exact_keys(arch, family, satellite):
    """On the meta device: a ViT-g is checked without its 4.5 GB."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=518 if family == "DINOv2" else 256)
        layout = dinov3_layout(model, satellite) if family == "DINOv3" else dinov2_layout(model)
    for name in [k for k in layout if k.endswith(".attn.qkv.bias") and family == "DINOv3"]:  # values are read
        width = layout[name].shape[0] // 3
        used = torch.ones(width) if arch.endswith("_qkvb") else torch.zeros(width)
        layout[name], layout[name + "_mask"] = torch.cat([used, torch.zeros(width), used]), torch.ones(3 * width)
        layout[name + "_mask"][width:2 * width] = 0
    release = releases.recognise(layout, "file.pth")
    assert (release.family, release.arch) == (family, arch)
    assert release.tag == ("sat493m" if satellite else "lvd142m" if family == "DINOv2" else "lvd1689m")
    assert release.licence.startswith("Apache-2.0" if family == "DINOv2" else "DINOv3 License")
    assert ckpt.key_report(model, releases.to_timm(layout, release)) == {"missing": [], "unexpected": [],
                                                                         "wrong shape": []}
    assert releases.released_family(model.state_dict()) is None  # timm's own layout is not the release's
    assert releases.timm_arch(model.state_dict()) == arch  # and is named from its own keys


@pytest.mark.parametrize("arch, size", [("vit_small_patch14_dinov2", 56), ("vit_small_patch14_reg4_dinov2", 56),
                                        ("vit_small_patch16_dinov3", 64), ("vit_small_patch16_dinov3_qkvb", 64),
                                        ("vit_small_plus_patch16_dinov3", 64)])
def test_a_loaded_release_gives_the_features_of_the_timm_model_it_came_from(tmp_path, arch, size):
    layout, model = released_file(arch, size)
    torch.save(layout, tmp_path / "release.pth")
    loaded = load_backbone(str(tmp_path / "release.pth"))
    assert loaded.arch == arch and loaded.img_size == (size if "dinov2" in arch else 256)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    ours, theirs = FeatureExtractor(loaded.module), FeatureExtractor(model)
    assert torch.allclose(ours(images), theirs(images), rtol=0, atol=1e-5)  # the CLS token, DINOv3's included
    with torch.no_grad():
        x = theirs.normalize(images)
        assert torch.allclose(loaded.module.forward_features(x), model.forward_features(x), rtol=0, atol=1e-5)


def test_dinov3_satellite_weights_take_their_own_mean_and_std_from_timms_config(tmp_path):
    layout, _ = released_file("vit_small_patch16_dinov3", 64)
    layout["local_cls_norm.weight"] = torch.ones(384)  # a ViT-S never has it: only SAT-493M's ViT-L is told apart
    torch.save(layout, tmp_path / "s.pth")
    assert load_backbone(str(tmp_path / "s.pth")).module.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    release = releases.Release("DINOv3", "vit_large_patch16_dinov3", "sat493m", "", "", None)
    assert release.cfg["mean"] == (0.43, 0.411, 0.296) and release.cfg["std"] == (0.213, 0.156, 0.143)


def dinov2s_formula_with_registers(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINOv2's interpolate_pos_encoding with interpolate_antialias=True and interpolate_offset=0 (its reg4
    models): the patch positions as an image, bicubic and antialiased to the exact grid, in fp32."""
    side = int(patches.shape[1] ** 0.5)
    square = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    return F.interpolate(square, size=grid, mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, -1, 384)


@pytest.mark.parametrize("registers", [False, True])
def test_dinov2_position_embeddings_are_resampled_for_other_sizes_as_dinov2_does(tmp_path, registers):
    arch = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    layout, model = released_file(arch, 84)  # a 6 x 6 grid
    torch.save(layout, tmp_path / "release.pth")
    loaded = load_backbone(str(tmp_path / "release.pth"), img_size=56)  # 4 x 4
    trained = model.pos_embed.detach()
    if registers:  # timm keeps the patches' positions alone (no_embed_class): antialiased, no offset
        expected = dinov2s_formula_with_registers(trained, (4, 4))
        other = dino_resample_pos_embed(trained, (4, 4), 0)
    else:  # the CLS position first: bicubic by (4 + 0.1) / 6, not antialiased, as DINO
        expected = dino_resample_pos_embed(trained, (4, 4), 1)
        other = torch.cat([trained[:, :1], dinov2s_formula_with_registers(trained[:, 1:], (4, 4))], dim=1)
    assert loaded.pos_resample == ("timm" if registers else "dino")
    assert torch.allclose(loaded.module.pos_embed, expected, rtol=0, atol=1e-6)
    assert (loaded.module.pos_embed - other).abs().max() > 1e-3  # the other way would show


def test_dinos_local_crops_follow_the_patch_size():
    assert local_crop_size(224) == 96 and local_crop_size(224, 14) == 98  # DINOv2's own local crops
    assert local_crop_size(64) == 32 and local_crop_size(64, 14) == 28


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Real-size ViT-S files as released (DINOv2 ViT-S/14 with registers at 518 px, DINOv3 ViT-S/16) and a small
    labelled folder."""
    root = tmp_path_factory.mktemp("released")
    files = {}
    for name, arch, size in (("dinov2_vits14_reg4_pretrain.pth", "vit_small_patch14_reg4_dinov2", 518),
                             ("dinov3_vits16_pretrain_lvd1689m.pth", "vit_small_patch16_dinov3_qkvb", 64)):
        layout, _ = released_file(arch, size)
        torch.save(layout, root / name)
        files[name] = arch
    make_folder(root / "train", per_class=4, size=36)
    make_folder(root / "val", per_class=2, size=36, seed=1)
    return root, files


@pytest.mark.parametrize("name", ["dinov2_vits14_reg4_pretrain.pth", "dinov3_vits16_pretrain_lvd1689m.pth"])
def test_a_real_size_release_goes_through_every_command_that_takes_a_model(released, tmp_path, name):
    root, archs = released
    arch, path, data = archs[name], str(root / name), dict(train=root / "train", val=root / "val")
    size = 28 if name.startswith("dinov2") else 32
    run = dict(img_size=size, device="cpu", precision="fp32", workers=0)
    info = sslkit.info(path)
    assert info["release"].startswith("DINOv2 ViT-S/14 with 4" if size == 28 else "DINOv3 ViT-S/16")
    assert info["keys"]["fits"] and info["arch"] == arch and info["prefix_tokens"] == 5
    assert info["img_size"] == (518 if size == 28 else 256) and info["mean"] == [0.485, 0.456, 0.406]
    knn = sslkit.probe_knn(path, **data, **run)
    assert info["release"] in knn["description"] and 0 <= knn["top1"] <= 100
    assert len(sslkit.probe_linear(path, **data, **run, epochs=1, lr=[0.1])["heads"]) == 1
    embedded = sslkit.embed(path, root / "train", tmp_path / "e.safetensors", **run)
    assert embedded["num_images"] == 8 and embedded["dim"] == 384
    copies = sslkit.copydetect(path, database=root / "train", queries=root / "val", **run)
    assert copies["num_database"] == 8
    tuned = sslkit.finetune(path, **data, out=tmp_path / "ft", epochs=1, lr=0.01, batch_size=4, **run)
    assert arch in tuned["description"] and len(tuned["top1_per_epoch"]) == 1
    maps = sslkit.attention(path, [root / "val" / "class0"], tmp_path / "maps", img_size=size, device="cpu")
    assert maps["images"][0]["grid"] == [2, 2]
    exported = sslkit.export(path, tmp_path / "e.safetensors", img_size=size)
    assert exported["release"] == info["release"] and exported["licence"] == info["licence"]
    continued = sslkit.pretrain("dino", root / "train", tmp_path / "dino", continue_from=path, epochs=1,
                                batch_size=4, local_crops_number=2, out_dim=32, **run)
    assert json.loads((tmp_path / "dino" / "config.json").read_text())["continue"]["continue_from"] == path
    metadata = ckpt.raw_metadata(continued["checkpoint"])
    assert metadata["arch"] == arch and metadata["licence"] == info["licence"]

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sslkit
from sslkit.engine.foreign import infer_vit_arch
from sslkit.errors import UsageError
from sslkit.models.backbones import Normalize, create_backbone
from sslkit.visualize.attention import (central_mass, cls_attention, heat_map, last_block_attention, prepare_image,
                                       threshold_mask)


def tiny_vit():
    torch.manual_seed(0)
    return create_backbone("test_vit", 32, dynamic_img_size=True).eval()


def test_attention_rows_sum_to_one_over_cls_and_patches_and_reproduce_the_block_output():
    vit = tiny_vit()
    images = torch.randn(2, 3, 48, 32)
    outputs = {}
    vit.blocks[-1].attn.register_forward_hook(lambda module, args, out: outputs.update(out=out))
    probs = last_block_attention(vit, images)
    assert probs.shape == (2, 2, 1 + 3 * 2, 1 + 3 * 2)  # 2 heads, CLS + a 3 x 2 patch grid
    assert torch.allclose(probs.sum(dim=-1), torch.ones(2, 2, 7), atol=1e-6)
    # the recomputed weights are the ones timm's fused kernel applied: they rebuild the block's attention output
    attn, x = vit.blocks[-1].attn, None
    vit.blocks[-1].attn.register_forward_pre_hook(lambda module, args: outputs.update(x=args[0]))
    vit.forward_features(images)
    x = outputs["x"]
    v = attn.qkv(x).reshape(2, 7, 3, 2, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
    rebuilt = attn.proj((probs @ v).transpose(1, 2).reshape(2, 7, -1))
    assert torch.allclose(rebuilt, outputs["out"], atol=1e-5)
    maps = cls_attention(probs, prefix_tokens=1, grid=(3, 2))
    assert maps.shape == (2, 2, 3, 2)
    assert torch.allclose(maps.sum(dim=(-2, -1)), 1 - probs[:, :, 0, 0], atol=1e-6)


def test_threshold_mask_keeps_sixty_percent_of_the_mass_with_the_fewest_patches():
    maps = torch.tensor([[0.05, 0.5], [0.15, 0.2], [0.1, 0.0]])[None]
    assert threshold_mask(maps, 0.6)[0].tolist() == [[False, True], [False, True], [False, False]]
    torch.manual_seed(0)
    for values in torch.rand(20, 4, 5):
        mask = threshold_mask(values[None], 0.6)[0]
        kept = values[mask].sort().values
        share = values[mask].sum() / values.sum()
        assert share >= 0.6
        assert (kept[1:].sum() / values.sum()) < 0.6  # dropping the weakest kept patch falls short


def test_central_mass_is_a_quarter_for_uniform_maps_and_one_for_central_ones():
    for grid in [(4, 4), (6, 6), (3, 5), (1, 1)]:
        assert central_mass(torch.ones(grid)).item() == pytest.approx(0.25)
    centred = torch.zeros(4, 4)
    centred[1:3, 1:3] = 1
    assert central_mass(centred).item() == pytest.approx(1.0)


def test_png_sizes_and_files_per_image(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    result = sslkit.attention("timm:test_vit", [tmp_path / "wide.png"], tmp_path / "out", img_size=48, threshold=0.6)
    folder = tmp_path / "out" / "wide"
    # short side 70 -> 48, long side 100 -> 69, cropped to multiples of 16: 64 x 48
    names = {p.name for p in folder.iterdir()}
    assert names == {"img.png", "attn-head0.png", "attn-head1.png", "attn-mean.png", "overlay.png",
                     "mask-th0.6-head0.png", "mask-th0.6-head1.png", "mask-th0.6-mean.png"}
    assert all(Image.open(folder / name).size == (64, 48) for name in names)
    assert result["images"][0]["grid"] == [3, 4] and result["images"][0]["size"] == [48, 64]
    assert json.loads((tmp_path / "out" / "attention.json").read_text())["images"][0]["heads"] == 2


def official_dino_checkpoint(path, drop: str | None = None):
    """A full DINO checkpoint layout: teacher / student dicts with module. / backbone. / head. prefixes."""
    vit = tiny_vit()
    state = {f"backbone.{k}": v for k, v in vit.state_dict().items() if k != drop}
    state["head.last_layer.weight_g"] = torch.ones(4, 1)
    torch.save({"teacher": state, "student": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    return vit


def test_official_dino_pth_loads_under_timm_names_and_gives_that_models_maps(tmp_path):
    vit = official_dino_checkpoint(tmp_path / "checkpoint.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    result = sslkit.attention(str(tmp_path / "checkpoint.pth"), [tmp_path / "noise.png"], tmp_path / "a",
                              img_size=64, arch="test_vit")
    image = prepare_image(Image.open(tmp_path / "noise.png"), 64, 16)
    expected = cls_attention(last_block_attention(vit, Normalize()(image[None])), 1, (4, 4))[0].mean(dim=0)
    assert result["images"][0]["grid"] == [4, 4]
    assert result["images"][0]["central_mass"] == pytest.approx(central_mass(expected).item(), abs=1e-4)
    drawn = np.asarray(Image.open(tmp_path / "a" / "noise" / "attn-mean.png"))
    assert np.abs(drawn.astype(int) - heat_map(expected, 16).astype(int)).max() <= 1
    torch.manual_seed(1)
    other = create_backbone("test_vit", 64).eval()
    unrelated = cls_attention(last_block_attention(other, Normalize()(image[None])), 1, (4, 4))[0].mean(dim=0)
    assert np.abs(drawn.astype(int) - heat_map(unrelated, 16).astype(int)).max() > 10


def test_partial_weight_load_is_refused(tmp_path):
    official_dino_checkpoint(tmp_path / "partial.pth", drop="blocks.0.attn.qkv.weight")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(UsageError, match="missing: blocks.0.attn.qkv.weight"):
        sslkit.attention(str(tmp_path / "partial.pth"), [tmp_path / "x.png"], tmp_path / "a", arch="test_vit")


def vit_keys(width: int, patch: int, depth: int = 12) -> dict:
    blocks = {f"blocks.{i}.norm1.weight": torch.zeros(width) for i in range(depth)}
    return {"patch_embed.proj.weight": torch.zeros(width, 3, patch, patch), **blocks}


def test_vit_architecture_is_inferred_from_width_patch_and_depth():
    assert infer_vit_arch(vit_keys(384, 8), "x") == "vit_small_patch8_224"
    assert infer_vit_arch(vit_keys(768, 16), "x") == "vit_base_patch16_224"
    assert infer_vit_arch(vit_keys(1280, 14, depth=32), "x") == "vit_huge_patch14_224"
    with pytest.raises(UsageError, match="with 6 blocks, not vit_small_patch16_224's 12"):
        infer_vit_arch(vit_keys(384, 16, depth=6), "x")
    with pytest.raises(UsageError, match="--arch"):
        infer_vit_arch({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "x")


def test_conv_net_has_no_attention_maps(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(UsageError, match="not a vision transformer"):
        sslkit.attention("timm:test_resnet", [tmp_path / "x.png"], tmp_path / "a")

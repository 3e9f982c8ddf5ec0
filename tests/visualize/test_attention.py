import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.layers import resample_abs_pos_embed
from typer.testing import CliRunner

import sslkit
from sslkit.cli import app
from sslkit.engine import foreign
from sslkit.engine.checkpoint import LoadedBackbone, load_backbone
from sslkit.engine.foreign import infer_vit_arch
from sslkit.errors import UsageError
from sslkit.models.backbones import Normalize, create_backbone
from sslkit.visualize.attention import (central_mass, choose_pos_resample, cls_attention, dino_resample_pos_embed,
                                       heat_map, last_block_attention, prepare_image, threshold_mask)


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
    # official DINO weights: the position embedding resampled (2 x 2 -> 4 x 4) the way DINO does
    expected = cls_attention(last_block_attention(vit, Normalize()(image[None]), "dino"), 1, (4, 4))[0].mean(dim=0)
    assert result["pos_resample"] == "dino" and result["images"][0]["grid"] == [4, 4]
    assert result["images"][0]["central_mass"] == pytest.approx(central_mass(expected).item(), abs=1e-4)
    drawn = np.asarray(Image.open(tmp_path / "a" / "noise" / "attn-mean.png"))
    assert np.abs(drawn.astype(int) - heat_map(expected, 16).astype(int)).max() <= 1
    torch.manual_seed(1)
    other = create_backbone("test_vit", 64).eval()
    unrelated = cls_attention(last_block_attention(other, Normalize()(image[None])), 1, (4, 4))[0].mean(dim=0)
    assert np.abs(drawn.astype(int) - heat_map(unrelated, 16).astype(int)).max() > 10


def dinos_formula(pos_embed, h0, w0):
    """DINO's interpolate_pos_encoding written out: the patch embeddings as a sqrt(N) x sqrt(N) image, bicubic
    with the scale factors (h0 + 0.1) / sqrt(N), (w0 + 0.1) / sqrt(N), after the CLS embedding."""
    side = int((pos_embed.shape[1] - 1) ** 0.5)
    patches = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode="bicubic")
    assert patches.shape[-2:] == (h0, w0)
    return torch.cat([pos_embed[:, :1], patches.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)


@pytest.mark.parametrize("grid", [(14, 21), (21, 14), (5, 9)])
def test_dino_resampling_equals_dinos_formula_on_non_square_grids_and_differs_from_timms(grid):
    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)
    resampled = dino_resample_pos_embed(pos_embed, grid)
    assert resampled.shape == (1, 1 + grid[0] * grid[1], 8)
    assert torch.allclose(resampled, dinos_formula(pos_embed, *grid), rtol=0, atol=1e-6)
    assert torch.equal(resampled[:, 0], pos_embed[:, 0])
    timms = resample_abs_pos_embed(pos_embed, list(grid), num_prefix_tokens=1)
    assert (resampled - timms).abs().max() > 0.05
    assert dino_resample_pos_embed(pos_embed, (14, 14)) is pos_embed  # the trained grid: as DINO, untouched


def test_dino_path_runs_timms_forward_with_dinos_position_embedding():
    vit = tiny_vit()  # trained grid 2 x 2
    with torch.no_grad():
        vit.pos_embed.mul_(50)  # make positions matter, so that the two resamplings visibly part
    weights = {k: v.clone() for k, v in vit.state_dict().items()}
    images = torch.randn(2, 3, 48, 32)  # a 3 x 2 grid
    # the same weights in a ViT built for 3 x 2, holding DINO's resampled embedding: timm's own forward
    fixed = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=(48, 32)).eval()
    fixed.load_state_dict({**vit.state_dict(), "pos_embed": dinos_formula(vit.pos_embed, 3, 2)})
    dino = last_block_attention(vit, images, "dino")
    assert torch.allclose(dino, last_block_attention(fixed, images), atol=1e-5)
    assert (dino - last_block_attention(vit, images, "timm")).abs().max() > 1e-4  # float noise is ~1e-7
    square = torch.randn(2, 3, 32, 32)  # the trained grid: both are the backbone's plain forward
    assert torch.allclose(last_block_attention(vit, square, "dino"), last_block_attention(vit, square), atol=1e-6)
    assert all(torch.equal(v, weights[k]) for k, v in vit.state_dict().items())  # the weights are left alone


def test_default_resampling_is_dino_for_official_dino_weights_only(tmp_path):
    official_dino_checkpoint(tmp_path / "checkpoint.pth")
    torch.save(tiny_vit().state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")  # a backbone-only release
    torch.save(tiny_vit().state_dict(), tmp_path / "my_vit.pth")
    torch.save(tiny_vit().state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")  # resamples its own way
    for fmt in ("timm", "sslkit"):  # exports of DINO's weights keep their licence
        sslkit.export(str(tmp_path / "checkpoint.pth"), tmp_path / f"{fmt}.safetensors", format=fmt, arch="test_vit")
    for name, expected in [("checkpoint.pth", "dino"), ("dino_deitsmall16_pretrain.pth", "dino"),
                           ("timm.safetensors", "dino"), ("sslkit.safetensors", "dino"),
                           ("my_vit.pth", "timm"), ("dinov2_vits14_pretrain.pth", "timm")]:
        loaded = load_backbone(str(tmp_path / name), arch="test_vit", dynamic=True)
        assert choose_pos_resample(loaded) == expected, name
        assert choose_pos_resample(loaded, "timm") == "timm"
    assert choose_pos_resample(load_backbone("timm:test_vit", dynamic=True)) == "timm"
    # an sslkit run warm-started from DINO's weights carries their licence, but sslkit trained it: timm
    run = LoadedBackbone(tiny_vit(), "test_vit", 32, "dino test_vit (teacher), step 9",
                         "run/checkpoints/last.safetensors", "dino", "9", foreign.DINO_LICENCE)
    assert choose_pos_resample(run) == "timm" and choose_pos_resample(run, "dino") == "dino"
    with pytest.raises(UsageError, match="--pos-resample must be one of dino, timm, not 'bogus'"):
        choose_pos_resample(run, "bogus")


def test_timm_model_defaults_to_timms_resampling_and_the_two_differ_on_a_wide_image(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    results = {}
    for choice in ("dino", "timm", None):
        torch.manual_seed(0)  # the same random init each time
        results[choice] = sslkit.attention("timm:test_vit", [tmp_path / "wide.png"], tmp_path / f"out-{choice}",
                                           img_size=32, pos_resample=choice)
    assert results[None]["pos_resample"] == "timm" and results[None]["images"] == [
        {**row, "out": str(tmp_path / "out-None" / "wide")} for row in results["timm"]["images"]]
    assert results["dino"]["pos_resample"] == "dino" and results["dino"]["images"][0]["grid"] == [2, 3]
    drawn = {c: np.asarray(Image.open(tmp_path / f"out-{c}" / "wide" / "attn-head0.png")) for c in ("dino", "timm")}
    assert not np.array_equal(drawn["dino"], drawn["timm"])


def test_bogus_pos_resample_exits_2_with_one_error_line(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    result = CliRunner().invoke(app, ["attention", "timm:test_vit", str(tmp_path / "x.png"), "--out",
                                      str(tmp_path / "a"), "--pos-resample", "bogus"])
    assert result.exit_code == 2
    assert result.stderr == "error: --pos-resample must be one of dino, timm, not 'bogus'\n"
    assert not (tmp_path / "a").exists()


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


def layer_scaled(arch: str, img_size: int, seed: int = 0) -> torch.nn.Module:
    """A random-init timm model of any input size whose layer scales are far from their 1e-5 init, so that every
    block counts."""
    torch.manual_seed(seed)
    model = create_backbone(arch, img_size, dynamic_img_size=True).eval()
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.endswith(("gamma", "gamma_1", "gamma_2")):
                value.uniform_(0.5, 1.5)
    return model


def last_block_input(model, images) -> dict:
    """What the last block's attention is called with (its tokens, and the RoPE of a DINOv3)."""
    seen = {}
    handle = model.blocks[-1].attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(x=args[0], rope=kwargs.get("rope")), with_kwargs=True)
    model.forward_features(images)
    handle.remove()
    return seen


def test_attention_of_dinov2_with_registers_is_the_blocks_own_and_its_maps_leave_the_registers_out():
    model = layer_scaled("vit_small_patch14_reg4_dinov2", 56)  # 4 x 4 patches, CLS + 4 registers
    images = torch.randn(1, 3, 56, 70)  # a 4 x 5 grid
    attn = model.blocks[-1].attn
    x = last_block_input(model, images)["x"]
    q, k, _ = attn.qkv(x).reshape(1, 25, 3, 6, 64).permute(2, 0, 3, 1, 4)
    direct = (q @ k.transpose(-2, -1) * 64 ** -0.5).softmax(dim=-1)
    probs = last_block_attention(model, images)
    assert probs.shape == (1, 6, 25, 25) and torch.allclose(probs, direct, atol=1e-5)
    assert attn.fused_attn  # the fused kernel is back for every later forward
    maps = cls_attention(probs, model.num_prefix_tokens, (4, 5))
    assert maps.shape == (1, 6, 4, 5)
    assert torch.allclose(maps.flatten(2), direct[:, :, 0, 5:], atol=1e-5)  # patches only, registers left out


def test_attention_of_dinov3_applies_rope_to_the_patch_queries_and_keys_as_the_model_does():
    from timm.layers import apply_rot_embed_cat

    model = layer_scaled("vit_small_patch16_dinov3_qkvb", 64)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_bias.normal_()  # released q / v biases are not zero
    images = torch.randn(1, 3, 64, 96)  # a 4 x 6 grid, CLS + 4 storage tokens first
    attn, prefix = model.blocks[-1].attn, model.num_prefix_tokens
    seen = last_block_input(model, images)
    bias = torch.cat([attn.q_bias, attn.k_bias, attn.v_bias])
    q, k, _ = F.linear(seen["x"], attn.qkv.weight, bias).reshape(1, 29, 3, 6, 64).permute(2, 0, 3, 1, 4)

    def rotated(t):
        return torch.cat([t[:, :, :prefix], apply_rot_embed_cat(t[:, :, prefix:], seen["rope"], half=True)], dim=2)

    direct = (rotated(q) @ rotated(k).transpose(-2, -1) * 64 ** -0.5).softmax(dim=-1)
    without_rope = (q @ k.transpose(-2, -1) * 64 ** -0.5).softmax(dim=-1)
    probs = last_block_attention(model, images)
    assert torch.allclose(probs, direct, atol=1e-5)
    assert (probs - without_rope).abs().max() > 1e-3  # RoPE changes the weights: leaving it out would show
    maps = cls_attention(probs, prefix, (4, 6))
    assert torch.allclose(maps.flatten(2), direct[:, :, 0, 5:], atol=1e-5)

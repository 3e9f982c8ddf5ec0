import numpy as np
import pytest
import torch
from PIL import Image

import sslkit
from sslkit.methods.mae import MAEConfig
from sslkit.errors import UsageError
from sslkit.methods.mae import MAE, normalize_patches, patchify
from sslkit.visualize.reconstruct import load_mae, reconstruct, strip, strip_size

TINY = dict(arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def tiny_model(norm_pix: bool = True) -> MAE:
    torch.manual_seed(0)
    return MAE(MAEConfig(**TINY, norm_pix_loss=norm_pix)).eval()


def photo(size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(1)
    return torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8))


def official_state(model: MAE) -> dict:
    """The model's tensors under facebookresearch/mae's names: encoder keys bare, decoder keys as they are."""
    return {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items()}


def test_norm_pix_predictions_are_drawn_with_each_true_patch_mean_and_std(monkeypatch):
    model, image = tiny_model(norm_pix=True), photo()
    x = model.normalize(image[None])
    perfect = normalize_patches(patchify(x, 16))  # what a perfect norm-pix model predicts
    monkeypatch.setattr(model, "decode", lambda latent, restore: perfect)
    shown = reconstruct(model, image, mask_ratio=0.75, seed=0)
    original = shown["original"].astype(int)
    assert np.abs(shown["reconstruction"].astype(int) - original).max() <= 1
    assert shown["loss"] == pytest.approx(0.0, abs=1e-9)
    masked_patch = (shown["mask"] == 1).nonzero()[0].item()  # grey where masked, the photo where visible
    row, col = divmod(masked_patch, 2)
    assert (shown["masked"][row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] == 128).all()
    visible_patch = (shown["mask"] == 0).nonzero()[0].item()
    row, col = divmod(visible_patch, 2)
    tile = np.s_[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16]
    assert np.abs(shown["pasted"][tile].astype(int) - original[tile]).max() <= 1


def test_same_seed_same_mask_and_picture_other_seed_other_mask():
    model, image = tiny_model(), photo(64)
    model.set_grid(64)
    first, again, other = (reconstruct(model, image, 0.75, seed) for seed in (3, 3, 4))
    assert torch.equal(first["mask"], again["mask"]) and np.array_equal(first["pasted"], again["pasted"])
    assert first["mask"].sum() == 12 and not torch.equal(first["mask"], other["mask"])


def test_strip_png_size_and_panel_enlargement(tmp_path):
    panels = [np.zeros((32, 32, 3), np.uint8)] * 4
    picture = strip(panels, ["a", "b", "c", "d"], "footer")
    assert picture.size == strip_size(32) == (4 * 192 + 3 * 4, 192 + 40)
    assert strip_size(224) == (4 * 224 + 12, 264)


def test_official_checkpoint_with_decoder_loads_strictly_and_reconstructs_identically(tmp_path):
    torch.manual_seed(0)
    options = MAEConfig(arch="vit_base_patch16_224", img_size=32, decoder_dim=64, decoder_depth=1,
                        decoder_heads=2, norm_pix_loss=False)
    model = MAE(options).eval()
    model.set_grid(224)
    path = tmp_path / "mae_visualize_vit_base.pth"
    torch.save({"model": official_state(model)}, path)
    loaded, description = load_mae(str(path))
    assert description == "mae_visualize_vit_base.pth (vit_base_patch16_224)"
    assert loaded.options.norm_pix_loss is False and loaded.options.img_size == 224
    assert (loaded.options.decoder_dim, loaded.options.decoder_depth) == (64, 1)
    image = photo(224)
    assert reconstruct(loaded, image, 0.75, 0)["loss"] == reconstruct(model, image, 0.75, 0)["loss"]
    encoder_only = {k: v for k, v in official_state(model).items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain_vit_base.pth")
    with pytest.raises(UsageError, match="encoder without its decoder; reconstructions need .*_full.pth"):
        load_mae(str(tmp_path / "mae_pretrain_vit_base.pth"))


def test_reconstruct_command_api_writes_strips_and_losses(tmp_path, image_folder):
    run = tmp_path / "run"
    sslkit.pretrain("mae", image_folder, run, epochs=1, batch_size=8, workers=0, device="cpu", **TINY)
    summary = sslkit.reconstruct(str(run), [image_folder / "class0"], tmp_path / "out", seed=1, img_size=64)
    assert len(summary["images"]) == 12 and summary["img_size"] == 64 and summary["norm_pix_loss"] is True
    assert all(r["masked_patches"] == 12 for r in summary["images"])
    assert Image.open(summary["images"][0]["out"]).size == strip_size(64)
    assert (tmp_path / "out" / "reconstruct.json").is_file()
    with pytest.raises(UsageError, match="reconstructions need"):
        sslkit.reconstruct("timm:test_vit", [image_folder], tmp_path / "out2")

import json
import math

import pytest
import torch

import sslkit
from sslkit.config import TrainConfig
from sslkit.engine import checkpoint as ckpt
from sslkit.errors import Interrupted, UsageError
from sslkit.methods.mae import (
    MAE, MAEConfig, decoder_preset, masked_mse, patchify, random_masking, resolve, sincos_1d, sincos_2d, unpatchify,
)
from tests.conftest import interrupt_at

TINY = MAEConfig(arch="test_vit", img_size=64, decoder_dim=32, decoder_depth=2, decoder_heads=2)


def tiny_mae(**changes) -> MAE:
    torch.manual_seed(0)
    return MAE(MAEConfig(**{**TINY.__dict__, **changes}))


def test_mask_keeps_int_l_times_one_minus_r_patches_and_restore_inverts_the_shuffle():
    torch.manual_seed(0)
    visible, mask, restore = random_masking(batch=5, length=196, mask_ratio=0.75)
    assert visible.shape == (5, 49) and mask.shape == (5, 196)
    assert mask.sum(dim=1).tolist() == [147.0] * 5  # int(196 * 0.25) = 49 kept
    for row in range(5):
        assert set(visible[row].tolist()) == set((mask[row] == 0).nonzero().flatten().tolist())
    # restore is the inverse of the shuffle: visible patch i sits at shuffled position i, masked ones after them
    assert torch.equal(restore.sort(dim=1).values, torch.arange(196).expand(5, -1))
    assert torch.equal(restore.gather(1, visible), torch.arange(49).expand(5, -1))
    assert bool((restore[mask == 1] >= 49).all())
    assert len({tuple(v.tolist()) for v in visible}) == 5  # a different mask per sample


def test_mask_ratio_rounds_the_kept_count_down_as_mae_does():
    visible, mask, _ = random_masking(batch=2, length=10, mask_ratio=0.75)  # int(2.5) = 2 kept
    assert visible.shape == (2, 2) and mask.sum().item() == 16


def test_patchify_layout_and_unpatchify_round_trip_bit_for_bit():
    images = torch.randn(2, 3, 32, 48)
    patches = patchify(images, 16)
    assert patches.shape == (2, 6, 16 * 16 * 3)
    # patch 4 is row 1, column 1; its pixels in (row, column, channel) order
    assert torch.equal(patches[1, 4, :3], images[1, :, 16, 16])
    assert torch.equal(patches[1, 4, 3:6], images[1, :, 16, 17])
    assert torch.equal(patches[0, 2, 16 * 3], images[0, 0, 1, 32])
    assert torch.equal(unpatchify(patches, 16, (2, 3)), images)


def test_norm_pix_target_uses_each_patch_mean_and_unbiased_variance():
    target = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]]])  # (B=1, L=2, 4 values)
    mask = torch.tensor([[1.0, 1.0]])
    # patch 0: mean 3, unbiased variance (4 + 1 + 0 + 9) / 3 = 14/3; patch 1: mean 2, variance 16/3
    normalised = [[(v - 3) / math.sqrt(14 / 3 + 1e-6) for v in (1, 2, 3, 6)],
                  [(v - 2) / math.sqrt(16 / 3 + 1e-6) for v in (0, 0, 4, 4)]]
    prediction = torch.zeros(1, 2, 4)
    expected = sum(sum(v * v for v in row) / 4 for row in normalised) / 2
    assert masked_mse(prediction, target, mask, norm_pix=True).item() == pytest.approx(expected, rel=1e-6)
    assert masked_mse(prediction, target, mask, norm_pix=False).item() == pytest.approx((50 / 4 + 32 / 4) / 2)


def test_loss_ignores_the_predictions_of_visible_patches():
    torch.manual_seed(0)
    prediction, target = torch.randn(2, 8, 12), torch.randn(2, 8, 12)
    _, mask, _ = random_masking(2, 8, 0.75)
    loss = masked_mse(prediction, target, mask, norm_pix=True)
    changed = prediction + 100 * (1 - mask)[..., None]  # only the visible patches' predictions move
    assert masked_mse(changed, target, mask, norm_pix=True).item() == pytest.approx(loss.item(), rel=1e-6)
    moved_masked = prediction + 0.1 * mask[..., None]
    assert masked_mse(moved_masked, target, mask, norm_pix=True).item() != pytest.approx(loss.item(), rel=1e-6)


def test_encoder_blocks_receive_only_the_cls_token_and_the_visible_patches():
    model = tiny_mae()
    seen = []
    for block in (model.backbone.blocks[0], model.backbone.blocks[-1]):
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    decoder_seen = []
    model.decoder_blocks[0].register_forward_pre_hook(lambda module, args: decoder_seen.append(args[0].shape[1]))
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    model.training_step((images, None)).loss.backward()
    assert seen == [1 + 4, 1 + 4]  # 16 patches at 64 px / 16, int(16 * 0.25) = 4 visible
    assert decoder_seen == [1 + 16]  # the decoder sees every position


def test_sincos_position_embedding_values():
    table = sincos_1d(4, torch.tensor([0, 1, 2]))  # frequencies 1 and 1/100
    expected = [[0, 0, 1, 1], [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
                [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)]]
    assert table.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]
    grid = sincos_2d(8, (2, 3))
    assert grid.shape == (1, 7, 8) and grid[0, 0].abs().sum() == 0  # CLS row is zero
    # token 5 = row 1, column 2: first half encodes the column, second half the row
    column_2, row_1 = sincos_1d(4, torch.tensor([2])), sincos_1d(4, torch.tensor([1]))
    assert torch.allclose(grid[0, 1 + 5], torch.cat([column_2, row_1], dim=1)[0].float())


def test_position_embeddings_are_fixed_and_only_trainable_tensors_reach_the_optimizer():
    model = tiny_mae()
    assert not model.backbone.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.backbone.pos_embed, sincos_2d(64, (4, 4)))
    grouped = {id(p) for group in model.param_groups() for p in group["params"]}
    assert id(model.backbone.pos_embed) not in grouped and id(model.mask_token) in grouped
    decay, no_decay = model.param_groups()
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert decay["wd_scale"] == 1.0 and no_decay["wd_scale"] == 0.0


def test_init_is_xavier_uniform_with_zero_biases_as_in_the_paper():
    model = tiny_mae()
    weight = model.decoder_embed.weight  # (32, 64): xavier bound sqrt(6 / (64 + 32))
    bound = math.sqrt(6 / (64 + 32))
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert model.decoder_embed.bias.abs().sum() == 0 and model.backbone.blocks[0].attn.qkv.bias.abs().sum() == 0
    proj = model.backbone.patch_embed.proj.weight  # flattened (64, 3*16*16)
    proj_bound = math.sqrt(6 / (64 + 3 * 16 * 16))
    assert proj.abs().max() <= proj_bound and proj.abs().max() > 0.9 * proj_bound
    assert 0.01 < model.mask_token.std() < 0.03


def test_resolve_follows_the_paper_recipe_and_scales_warmup_and_decoder():
    train, options = resolve(TrainConfig(epochs=800, batch_size=4096), MAEConfig(), 1_281_167)
    assert train.lr == pytest.approx(1.5e-4 * 16) and train.betas == (0.9, 0.95) and train.weight_decay == 0.05
    assert train.warmup_epochs == 40 and train.min_lr == 0.0 and train.optimizer == "adamw" and train.clip_grad == 0
    assert (options.decoder_dim, options.decoder_depth, options.decoder_heads) == (512, 8, 16)
    tiny = MAEConfig(arch="vit_tiny_patch16_224")
    train, options = resolve(TrainConfig(epochs=100, batch_size=64, lr=1e-3), tiny, 3000)
    assert train.lr == 1e-3 and train.warmup_epochs == 10
    assert (options.decoder_dim, options.decoder_depth, options.decoder_heads) == (96, 4, 3)
    assert decoder_preset(384) == dict(decoder_dim=192, decoder_depth=4, decoder_heads=6)
    _, options = resolve(TrainConfig(), MAEConfig(arch="vit_tiny_patch16_224", decoder_dim=128), 10)
    assert (options.decoder_dim, options.decoder_depth, options.decoder_heads) == (128, 4, 4)
    assert decoder_preset(1024) == dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)


@pytest.mark.parametrize("changes, message", [
    (dict(mask_ratio=1.0), "--mask-ratio must lie strictly between 0 and 1"),
    (dict(decoder_dim=30, decoder_heads=4), "--decoder-dim 30 is not divisible by --decoder-heads 4"),
    (dict(arch="test_resnet"), "MAE needs a plain ViT with a class token"),
    (dict(img_size=32, mask_ratio=0.8), "--mask-ratio 0.8 leaves none of the 4 patches visible"),
    (dict(img_size=40), "--img-size 40 is not a multiple of the patch size 16"),
])
def test_bad_settings_are_usage_errors(changes, message):
    with pytest.raises(UsageError, match=message):
        train, options = resolve(TrainConfig(), MAEConfig(**{**TINY.__dict__, **changes}), 10)
        MAE(options)


def test_pretraining_lowers_the_loss_and_the_checkpoint_serves_knn(tmp_path, image_folder):
    run = tmp_path / "run"
    sslkit.pretrain("mae", image_folder, run, arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=1,
                    decoder_heads=2, epochs=12, batch_size=8, lr=3e-3, warmup_epochs=1, workers=0, device="cpu",
                    log_every=1, norm_pix_loss=False)
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6
    metadata = ckpt.read_metadata(run / "checkpoints" / "last.safetensors")
    assert metadata["method"] == "mae" and metadata["patch_size"] == "16"
    loaded = ckpt.load_backbone(str(run))  # the encoder, whatever checkpoint key is asked for
    assert loaded.description.startswith("mae test_vit (encoder)")
    assert torch.equal(loaded.module.pos_embed, sincos_2d(64, (2, 2)))



def test_resumed_mae_run_equals_uninterrupted_run(image_folder, tmp_path):
    settings = dict(arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2, epochs=2,
                    batch_size=8, workers=0, device="cpu", log_every=1)
    sslkit.pretrain("mae", image_folder, tmp_path / "straight", **settings)
    with interrupt_at(MAE, step=1), pytest.raises(Interrupted):
        sslkit.pretrain("mae", image_folder, tmp_path / "resumed", **settings)
    sslkit.pretrain("mae", image_folder, tmp_path / "resumed", resume=True, **settings)
    losses = [[json.loads(line).get("loss") for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("straight", "resumed")]
    assert losses[0] == losses[1] and len([v for v in losses[0] if v is not None]) == 6
    straight = ckpt.read_tensors(tmp_path / "straight" / "checkpoints" / "last.safetensors", "model.")
    resumed = ckpt.read_tensors(tmp_path / "resumed" / "checkpoints" / "last.safetensors", "model.")
    assert straight.keys() == resumed.keys() and "mask_token" in straight
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

"""What only a GPU can check: mixed precision, the GradScaler, and CPU/GPU agreement. Skipped without CUDA."""

import json

import numpy as np
import pytest
import torch

import sslkit
from sslkit.methods.mae import MAEConfig
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.device import choose_precision
from sslkit.methods.mae import MAE, masked_mse, patchify, random_masking
from tests.conftest import TINY_BYOL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = {
    "byol": TINY_BYOL,
    "dino": dict(arch="test_vit", img_size=32, out_dim=64, local_crops_number=2, batch_size=8, workers=0),
    "mae": dict(arch="test_vit", img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2, batch_size=8,
                workers=0),
}


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["byol", "dino", "mae"])
def test_each_method_trains_in_bf16_on_the_gpu_and_its_checkpoint_serves_the_cpu(method, image_folder, tmp_path):
    run = tmp_path / method
    settings = {**TINY[method], "device": "cuda", "precision": "auto", "epochs": 2, "log_every": 1}
    sslkit.pretrain(method, image_folder, run, **settings)
    losses = [r["loss"] for r in records(run) if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert choose_precision("auto", torch.device("cuda")).name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    loaded = ckpt.load_backbone(str(run))
    features = loaded.module.eval()(torch.rand(2, 3, 32, 32))
    assert features.device.type == "cpu" and torch.isfinite(features).all()


def test_fp16_uses_the_grad_scaler_and_saves_its_state(image_folder, tmp_path):
    run = tmp_path / "mae"
    sslkit.pretrain("mae", image_folder, run, **TINY["mae"], device="cuda", precision="fp16", epochs=1)
    metadata = ckpt.read_metadata(run / "checkpoints" / "last.safetensors")
    state = json.loads(metadata["state"])["scaler"]
    assert "scale" in json.dumps(state)  # an enabled GradScaler stores its scale; a disabled one stores nothing
    assert all(np.isfinite(r["loss"]) for r in records(run) if "loss" in r)


def test_mae_loss_on_the_gpu_matches_the_cpu_in_fp32():
    torch.manual_seed(0)
    model = MAE(MAEConfig(arch="test_vit", img_size=64, decoder_dim=32, decoder_depth=2, decoder_heads=2))
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    visible, mask, restore = random_masking(4, 16, 0.75)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: the two devices should agree to rounding
    try:
        losses = []
        for device in ("cpu", "cuda"):
            model.to(device)
            x = model.normalize(images.to(device))
            prediction = model.decode(model.encode(x, visible.to(device)), restore.to(device))
            losses.append(masked_mse(prediction, patchify(x, 16), mask.to(device), True).item())
    finally:
        torch.set_float32_matmul_precision(previous)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_reconstruct_masks_the_same_patches_on_gpu_and_cpu(image_folder, tmp_path):
    run = tmp_path / "mae"
    sslkit.pretrain("mae", image_folder, run, **TINY["mae"], device="cpu", epochs=1)
    results = [sslkit.reconstruct(str(run), [image_folder / "class0"], tmp_path / device, seed=5, device=device)
               for device in ("cpu", "cuda")]
    for cpu, gpu in zip(results[0]["images"], results[1]["images"]):
        assert gpu["masked_mse"] == pytest.approx(cpu["masked_mse"], rel=1e-3)


def test_colour_augmentations_on_the_gpu_match_the_cpu_and_train(image_folder, tmp_path):
    from sslkit.data import photometric as ph

    torch.manual_seed(0)
    uint8 = torch.randint(0, 256, (16, 3, 48, 48), dtype=torch.uint8)
    draw = ph.DrawPhotometric(blur_p=0.5, solarize_p=0.2, kernel_size=5, sigma=(0.1, 2.0))
    params = torch.stack([draw(image).params for image in uint8])
    cpu = ph.apply_photometric(uint8, params, 5)
    gpu = ph.apply_photometric(uint8.cuda(), params.cuda(), 5).cpu()
    assert (cpu.int() - gpu.int()).abs().max() <= 1
    run = tmp_path / "dino"
    sslkit.pretrain("dino", image_folder, run, **TINY["dino"], device="cuda", epochs=1, log_every=1,
                    augment_on="device")
    assert all(np.isfinite(r["loss"]) for r in records(run) if "loss" in r)


def test_views_made_from_the_store_on_the_gpu_match_the_cpus():
    from sslkit.data.device_views import make_views
    from sslkit.data.views import dino_plan

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 40, 56), dtype=torch.uint8, generator=generator)
    sizes = torch.tensor([[40, 56], [40, 40], [32, 56], [40, 48], [24, 30], [40, 56]])
    transposed = torch.tensor([False, True, False, True, False, False])
    seeds = torch.randint(0, 2**62, (6,), generator=generator)
    views = dino_plan(32, (0.4, 1.0), 2, (0.05, 0.4), 16)
    on_cpu = make_views(images, sizes, transposed, seeds, views)
    on_gpu = make_views(images.cuda(), sizes.cuda(), transposed.cuda(), seeds.cuda(), views)
    for cpu, gpu in zip(on_cpu, on_gpu):
        difference = (cpu.float() - gpu.cpu().float()).abs()
        assert difference.mean() < 0.5 and difference.max() <= 8  # TF32 products and rounding, same crops


@pytest.mark.parametrize("store_on, place", [("auto", "device"), ("pinned", "pinned"), ("ram", "ram")])
def test_auto_takes_the_store_on_the_gpu_wherever_it_is_kept(image_folder, tmp_path, store_on, place):
    run = tmp_path / "run"
    sslkit.pretrain("byol", image_folder, run, **{**TINY_BYOL, "device": "cuda", "precision": "auto", "epochs": 1,
                                                  "log_every": 1, "store_on": store_on})
    decided = json.loads((run / "config.json").read_text())["decided"]
    assert decided["data_path"] == "store" and decided["store"]["place"] == place
    losses = [r["loss"] for r in records(run) if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))

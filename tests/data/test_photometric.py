"""--augment-on device: each colour operation on the device equals torchvision's, image by image, and the
parameters drawn on the CPU follow the same distribution as torchvision's transforms."""

import json

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import sslkit
from sslkit.data import photometric as ph
from sslkit.data.folders import ImageFolder
from sslkit.data.views import MultiCrop, blur_kernel_size, byol_views
from sslkit.errors import UsageError
from tests.conftest import TINY_BYOL, make_folder


def images(count: int = 3, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def each(op, x: torch.Tensor, values) -> torch.Tensor:
    return torch.stack([op(image, float(value)) for image, value in zip(x, values)])


@pytest.mark.parametrize("ours, theirs, values", [
    (ph.adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4]),
    (ph.adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.4]),
    (ph.adjust_saturation, TF.adjust_saturation, [0.8, 1.0, 1.2]),
    (ph.adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.07]),
])
def test_each_jitter_operation_equals_torchvision_with_a_factor_per_image(ours, theirs, values):
    x = images()
    x[0, :, :2, :2] = 0.5  # grey pixels: hue undefined, must stay grey
    expected = each(theirs, x, values)
    assert torch.allclose(ours(x.clone(), torch.tensor(values)), expected, atol=1e-5)


def test_blur_equals_torchvision_with_a_sigma_per_image_and_sigma_0_is_no_blur():
    x = images(size=16)
    sigmas = [0.3, 0.0, 1.7]
    blurred = ph.gaussian_blur(x, torch.tensor(sigmas), 7)
    assert torch.allclose(blurred[0], TF.gaussian_blur(x[0], [7, 7], [0.3, 0.3]), atol=1e-6)
    assert torch.allclose(blurred[2], TF.gaussian_blur(x[2], [7, 7], [1.7, 1.7]), atol=1e-6)
    assert torch.equal(blurred[1], x[1])


def test_grayscale_and_solarize_equal_torchvision():
    x = images(count=1)
    assert torch.allclose(ph.grayscale(x).expand_as(x), TF.rgb_to_grayscale(x, 3), atol=1e-6)
    uint8 = (x * 255).round().to(torch.uint8)
    params = neutral(1)
    params[0, ph.SOLARIZE] = 1
    assert torch.equal(ph.apply_photometric(uint8, params, 3), TF.solarize(uint8, 128))


def neutral(count: int) -> torch.Tensor:
    params = torch.zeros(count, ph.NUM_PARAMS)
    params[:, :4] = torch.tensor(ph.NEUTRAL)
    params[:, ph.ORDER] = torch.arange(4.0)
    params[:, ph.KERNEL] = 3
    return params


def test_neutral_parameters_leave_the_images_unchanged():
    uint8 = torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8)
    assert torch.equal(ph.apply_photometric(uint8, neutral(4), 3), uint8)


def test_each_image_gets_its_own_jitter_order_then_grayscale_and_blur():
    x = images(count=2, size=16)
    uint8 = (x * 255).round().to(torch.uint8)
    factors = [(1.3, 0.7, 1.2, 0.08), (0.7, 1.35, 0.85, -0.06)]
    orders = [(3, 1, 0, 2), (0, 2, 3, 1)]
    params = neutral(2)
    params[:, :4] = torch.tensor(factors)
    params[:, ph.ORDER] = torch.tensor(orders, dtype=torch.float)
    params[1, ph.GRAY] = 1
    params[1, ph.SIGMA] = 0.9
    params[:, ph.KERNEL] = 5
    out = ph.apply_photometric(uint8, params, 5)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(2):
        expected = uint8[i].float() / 255
        for op in orders[i]:
            expected = ops[op](expected, factors[i][op])
        if i == 1:
            expected = TF.gaussian_blur(TF.rgb_to_grayscale(expected, 3), [5, 5], [0.9, 0.9])
        expected = (expected * 255).round()
        assert (out[i].float() - expected).abs().max() <= 1  # rounding once, not per operation


def test_the_cpus_jitter_of_only_the_chosen_operations_equals_the_masked_jitter_of_all_sixteen():
    """On a CPU each image runs only the operation it chose at each position; the GPU's masked version runs
    all four there, three of them neutral. They agree to float rounding (a neutral hue turn is a round trip)."""
    x = images(count=64, size=16, seed=1)
    params = ph.colour_params(torch.rand(64, 13, generator=torch.Generator().manual_seed(2)), 0.5, 0.2, 3, (0.1, 2))
    assert 0 < int((params[:, :4] != torch.tensor(ph.NEUTRAL)).any(1).sum()) < 64  # some jittered, some not
    picked, masked = ph._jitter_picked(x, params), ph._jitter_masked(x, params)
    assert torch.allclose(picked, masked, atol=1e-5) and not torch.equal(picked, masked)
    unjittered = ~(params[:, :4] != torch.tensor(ph.NEUTRAL)).any(1)
    assert torch.equal(picked[unjittered], x[unjittered])


def test_parameters_follow_torchvisions_distributions_and_the_sample_seed():
    draw = ph.DrawPhotometric(blur_p=0.5, solarize_p=0.2, kernel_size=7, sigma=(0.1, 2.0))
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    rows = []
    for seed in range(3000):
        torch.manual_seed(seed)
        view = draw(image)
        rows.append(view.params)
        assert view.image is image
    params = torch.stack(rows)
    jittered = (params[:, :4] != torch.tensor(ph.NEUTRAL)).any(1)
    assert abs(jittered.float().mean() - 0.8) < 0.03
    for column, (low, high) in zip(range(4), [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        values = params[jittered, column]
        assert low <= values.min() and values.max() <= high and values.max() - values.min() > 0.9 * (high - low)
    assert torch.equal(params[:, ph.ORDER].sort(1).values, torch.arange(4.0).expand(3000, 4))
    assert len({tuple(o.tolist()) for o in params[jittered, ph.ORDER]}) == 24  # every order occurs
    assert abs(params[:, ph.GRAY].mean() - 0.2) < 0.03
    blurred = params[:, ph.SIGMA] > 0
    assert abs(blurred.float().mean() - 0.5) < 0.03
    assert 0.1 <= params[blurred, ph.SIGMA].min() and params[blurred, ph.SIGMA].max() <= 2.0
    assert abs(params[:, ph.SOLARIZE].mean() - 0.2) < 0.03
    assert torch.all(params[:, ph.KERNEL] == 7)
    torch.manual_seed(5)
    assert torch.equal(draw(image).params, rows[5])


def test_views_on_device_carry_the_same_crops_and_blur_settings(tmp_path):
    root = make_folder(tmp_path / "d", per_class=2, size=48)
    byol = ImageFolder(root, transform=byol_views(32, on_device=True))
    (first, second), _ = byol[(0, 7)]
    assert first.image.shape == (3, 32, 32) and first.image.dtype == torch.uint8
    assert first.params[ph.SIGMA] > 0 and first.params[ph.SOLARIZE] == 0  # T: blur always, never solarize
    assert first.params[ph.KERNEL] == blur_kernel_size(32)
    dino = ImageFolder(root, transform=MultiCrop(64, (0.4, 1.0), 2, (0.05, 0.4), on_device=True))
    crops, _ = dino[(0, 7)]
    assert [c.image.shape[-1] for c in crops] == [64, 64, 32, 32]
    assert {int(c.params[ph.KERNEL]) for c in crops} == {blur_kernel_size(64)}  # local crops: global resolution


def test_finish_views_moves_the_batch_and_applies_each_views_parameters():
    uint8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    params = neutral(2)
    params[1, ph.GRAY] = 1
    batch = [[ph.DeviceView(uint8, params), ph.DeviceView(uint8, neutral(2))], torch.tensor([4, 5])]
    (first, second), labels = ph.finish_views(batch, torch.device("cpu"))
    assert torch.equal(first[0], uint8[0]) and torch.equal(second, uint8) and labels.tolist() == [4, 5]
    assert torch.equal(first[1][0], first[1][1])  # grey: equal channels


@pytest.mark.parametrize("method, settings", [
    ("byol", TINY_BYOL),
    ("dino", dict(arch="test_vit", img_size=32, local_crops_number=2, out_dim=64, batch_size=8, workers=0,
                  device="cpu", precision="fp32")),
])
def test_training_with_augmentations_on_the_device(method, settings, tmp_path):
    root = make_folder(tmp_path / "d", per_class=8)
    out = tmp_path / "run"
    sslkit.pretrain(method, root, out, epochs=2, log_every=1, augment_on="device", **settings)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(0 < loss < 100 for loss in losses)
    assert json.loads((out / "config.json").read_text())[method]["augment_on"] == "device"
    # where the augmentations run may change when resuming; it changes how the run runs, not what it learns
    sslkit.pretrain(method, root, out, resume=True, epochs=2, augment_on="cpu")


def test_augment_on_names_the_choices(tmp_path):
    root = make_folder(tmp_path / "d", per_class=8)
    with pytest.raises(UsageError, match="augment"):
        sslkit.pretrain("byol", root, tmp_path / "run", epochs=1, augment_on="gpu", **TINY_BYOL)

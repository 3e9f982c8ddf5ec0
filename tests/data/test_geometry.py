"""Device-side crops and flips: torchvision's distributions and Pillow's pixels, per sample, for a whole batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from sslkit.data import geometry
from sslkit.data.device_views import make_views
from sslkit.data.views import byol_plan, crop_flip, dino_plan

BICUBIC = TF.InterpolationMode.BICUBIC


def seeds(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2**62, (count,), generator=torch.Generator().manual_seed(seed))


def test_uniforms_are_uniform_independent_and_a_function_of_the_seed_only():
    s = seeds(50_000)
    u = geometry.uniforms(s, view=0)
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    counts = torch.histc(u[:, :8], bins=10, min=0, max=1) / u[:, :8].numel()
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.003)
    other_view = geometry.uniforms(s, view=1)
    pairs = [(u[:, 0], u[:, 1]), (u[:, 0], other_view[:, 0]), (u[:, 3], u[:, 4])]
    for a, b in pairs:
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.02
    assert torch.equal(geometry.uniforms(s[17:40], view=0), u[17:40])  # any batch split: the same numbers
    assert torch.equal(geometry.uniforms(s, view=0), u)


def test_uniforms_differ_for_neighbouring_seeds():
    u = geometry.uniforms(torch.arange(1000), view=0)
    assert abs(float(torch.corrcoef(torch.stack([u[:-1, 0], u[1:, 0]]))[0, 1])) < 0.1
    assert len(torch.unique(u[:, 0])) == 1000


def torchvision_boxes(height: int, width: int, scale, count: int) -> np.ndarray:
    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    return np.array([T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(count)])


def device_boxes(height: int, width: int, scale, count: int) -> np.ndarray:
    numbers = geometry.uniforms(seeds(count, seed=1), view=0)
    sizes = torch.full((count,), height), torch.full((count,), width)
    return torch.stack(geometry.crop_boxes(numbers, *sizes, scale), 1).numpy()


@pytest.mark.parametrize("height, width, scale", [(90, 160, (0.08, 1.0)), (120, 120, (0.4, 1.0)),
                                                  (200, 60, (0.05, 0.4))])
def test_crop_boxes_follow_torchvision_get_params(height, width, scale):
    count = 20_000
    for boxes in (torchvision_boxes(height, width, scale, count), device_boxes(height, width, scale, count)):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    ours, theirs = device_boxes(height, width, scale, count), torchvision_boxes(height, width, scale, count)

    def summary(boxes):
        top, left, h, w = boxes.T.astype(float)
        area, log_ratio = h * w / (height * width), np.log(w / h)
        centre_y, centre_x = (top + h / 2) / height, (left + w / 2) / width
        return [np.quantile(values, q) for values in (area, log_ratio, centre_y, centre_x) for q in (0.1, 0.5, 0.9)]

    # same algorithm, other random numbers: quantiles agree within sampling noise (~0.01 at 20k draws)
    assert np.allclose(summary(ours), summary(theirs), atol=0.025)
    fallback_share = lambda boxes: np.mean((boxes[:, 0] == (height - boxes[:, 2]) // 2)  # noqa: E731
                                           & (boxes[:, 1] == (width - boxes[:, 3]) // 2))
    assert abs(fallback_share(ours) - fallback_share(theirs)) < 0.01


def test_crop_boxes_fall_back_to_torchvisions_centre_crop():
    # no box of area >= 0.9 with aspect ratio <= 4/3 fits a 50 x 200 image: every try fails
    ours = device_boxes(50, 200, (0.9, 1.0), 50)
    theirs = torchvision_boxes(50, 200, (0.9, 1.0), 50)
    assert (ours == theirs).all() and tuple(ours[0]) == (0, 66, 50, 67)
    tall = device_boxes(300, 40, (0.95, 1.0), 5)
    assert tuple(tall[0]) == tuple(torchvision_boxes(300, 40, (0.95, 1.0), 1)[0])


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """Smooth structure with some detail: gradients, blobs and a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    pixels = np.stack([128 + 100 * np.sin(6 * x + 3 * c) * np.cos(5 * y - c) for c in range(3)], -1)
    pixels += rng.normal(0, 12, pixels.shape)
    for _ in range(6):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 15)
        pixels[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def canvas_of(image: Image.Image, canvas: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A one-image store: the image (transposed when portrait) on a zero canvas of (H, W)."""
    pixels = TF.pil_to_tensor(image)
    transposed = pixels.shape[1] > pixels.shape[2]
    if transposed:
        pixels = pixels.transpose(1, 2)
    board = torch.zeros(1, 3, *canvas, dtype=torch.uint8)
    board[0, :, : pixels.shape[1], : pixels.shape[2]] = pixels
    return board, torch.tensor([pixels.shape[1:]]), torch.tensor([transposed])


def crop_of(board, sizes, transposed, box, size: int, flip: bool) -> torch.Tensor:
    """``resized_crops`` of one box in the image's own coordinates."""
    top, left, h, w = (torch.tensor([v]) for v in box)
    t, mirror = transposed, torch.tensor([flip])
    rows = geometry.resample_weights(torch.where(t, left, top), torch.where(t, w, h), size, board.shape[2], mirror & t)
    cols = geometry.resample_weights(torch.where(t, top, left), torch.where(t, h, w), size, board.shape[3], mirror & ~t)
    return geometry.resized_crops(board, rows[:, None], cols[:, None], t)[0, 0]


@pytest.mark.parametrize("image_size, box, size", [
    ((120, 160), (10, 20, 100, 120), 48),  # shrinking: the antialiased filter
    ((120, 160), (30, 40, 24, 30), 64),  # enlarging a small box
    ((160, 100), (5, 10, 150, 80), 56),  # a portrait image, stored transposed
    ((90, 90), (0, 0, 90, 90), 90),  # the whole image at its own size: unchanged
])
@pytest.mark.parametrize("flip", [False, True])
def test_a_device_crop_equals_torchvisions_resized_crop_of_the_same_box(image_size, box, size, flip):
    image = photo(*image_size)
    board, sizes, transposed = canvas_of(image, canvas=(max(image_size) // 2 * 2, max(image_size) + 8))
    ours = crop_of(board, sizes, transposed, box, size, flip).float()
    reference = TF.resized_crop(image, *box, [size, size], interpolation=BICUBIC, antialias=True)
    if flip:
        reference = TF.horizontal_flip(reference)
    theirs = TF.pil_to_tensor(reference).float()
    assert ours.shape == theirs.shape == (3, size, size)
    assert (ours - theirs).abs().mean() < 0.6  # Pillow rounds to uint8 between its two passes
    assert (ours - theirs).abs().max() <= 4
    if box == (0, 0, 90, 90) and size == 90:
        assert torch.equal(ours, theirs)


def store_batch(count: int = 6):
    images = [photo(48 + 8 * (i % 3), 64 - 8 * (i % 2), seed=i) for i in range(count)]
    boards = [canvas_of(image, canvas=(64, 72)) for image in images]
    return (torch.cat([b[0] for b in boards]), torch.cat([b[1] for b in boards]), torch.cat([b[2] for b in boards]))


@pytest.mark.parametrize("views", [byol_plan(32), dino_plan(32, (0.4, 1.0), 3, (0.05, 0.4), 16), (crop_flip(24),)])
def test_views_are_the_same_on_any_batch_split(views):
    board, sizes, transposed = store_batch()
    s = seeds(6, seed=3)
    whole = make_views(board, sizes, transposed, s, views)
    halves = [make_views(board[part], sizes[part], transposed[part], s[part], views)
              for part in (slice(0, 2), slice(2, 6))]
    assert len(whole) == len(views)
    for index, view in enumerate(views):
        assert whole[index].shape == (6, 3, view.size, view.size) and whole[index].dtype == torch.uint8
        assert torch.equal(whole[index], torch.cat([halves[0][index], halves[1][index]]))
    again = make_views(board, sizes, transposed, s, views)
    assert all(torch.equal(a, b) for a, b in zip(whole, again))
    other = make_views(board, sizes, transposed, seeds(6, seed=4), views)
    assert not torch.equal(whole[0], other[0])


def test_views_of_a_sample_differ_and_colour_is_applied_per_image():
    board, sizes, transposed = store_batch()
    first, second = make_views(board, sizes, transposed, seeds(6), byol_plan(32))
    assert not torch.equal(first, second)
    plain = make_views(board, sizes, transposed, seeds(6), (crop_flip(32),))[0]
    # the same crops without colour: BYOL's view 1 blurs every image, so it is smoother than a plain crop
    roughness = lambda x: (x[..., 1:].float() - x[..., :-1].float()).abs().mean()  # noqa: E731
    assert roughness(first) < roughness(plain)


def test_flip_share_is_one_half():
    flips = geometry.flips(geometry.uniforms(seeds(20_000), view=0))
    assert math.isclose(flips.float().mean().item(), 0.5, abs_tol=0.015)

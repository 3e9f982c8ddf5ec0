"""BYOL's and DINO's colour augmentations on the training device (``--augment-on device``).

The CPU workers then only decode, crop and flip; each view also carries its random parameters, drawn there
from the sample's seed like every other augmentation (``DrawPhotometric``). The device applies them to the
whole uint8 batch at once, each image with its own parameters (``finish_views``): colour jitter (in a random
order per image, as torchvision's ColorJitter), grayscale, Gaussian blur and solarization. Each operation
equals torchvision's on float images (tested); only the rounding to uint8 happens once instead of per
operation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sslkit.data.transfer import to_device

# one row of parameters per image: the four jitter factors, the order of the four jitter operations (each
# applied at its position, the others then neutral), grayscale, blur sigma (0: none), blur kernel, solarize
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
ORDER = slice(4, 8)
GRAY, SIGMA, KERNEL, SOLARIZE = range(8, 12)
NUM_PARAMS = 12
NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # factors that leave an image unchanged


class DeviceView(NamedTuple):
    """A cropped and flipped uint8 view and the colour parameters still to apply to it on the device."""

    image: torch.Tensor
    params: torch.Tensor


class DrawPhotometric:
    """The CPU half: draws what torchvision's ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, RandomGrayscale(0.2),
    GaussianBlur with p ``blur_p`` and RandomSolarize(128) with p ``solarize_p`` would, and returns the view
    with those parameters instead of applying them."""

    def __init__(self, blur_p: float, solarize_p: float, kernel_size: int, sigma: tuple[float, float]):
        self.blur_p, self.solarize_p, self.sigma = blur_p, solarize_p, sigma
        self.unchanged = torch.zeros(NUM_PARAMS)  # neutral factors in their default order, no other operation
        self.unchanged[:4] = torch.tensor(NEUTRAL)
        self.unchanged[ORDER] = torch.arange(4.0)
        self.unchanged[KERNEL] = kernel_size

    def __call__(self, image: torch.Tensor) -> DeviceView:
        params = self.unchanged.clone()
        if torch.rand(()) < 0.8:
            params[BRIGHTNESS] = _uniform(0.6, 1.4)
            params[CONTRAST] = _uniform(0.6, 1.4)
            params[SATURATION] = _uniform(0.8, 1.2)
            params[HUE] = _uniform(-0.1, 0.1)
            params[ORDER] = torch.randperm(4).float()
        params[GRAY] = float(torch.rand(()) < 0.2)
        if torch.rand(()) < self.blur_p:
            params[SIGMA] = _uniform(*self.sigma)
        params[SOLARIZE] = float(torch.rand(()) < self.solarize_p)
        return DeviceView(image, params)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def colour_params(numbers: torch.Tensor, blur_p: float, solarize_p: float, kernel_size: int,
                  sigma: tuple[float, float]) -> torch.Tensor:
    """What ``DrawPhotometric`` draws, for a whole batch at once from (B, 13) uniform numbers in [0, 1) (the
    decoded store's views, sslkit.data.geometry.uniforms): (B, NUM_PARAMS) on the numbers' device."""
    u = numbers
    jitter = u[:, 0] < 0.8
    drawn = torch.stack([0.6 + 0.8 * u[:, 1], 0.6 + 0.8 * u[:, 2], 0.8 + 0.4 * u[:, 3], -0.1 + 0.2 * u[:, 4]], 1)
    neutral = torch.ones_like(drawn)  # made on the device: a copy from the host would wait for the GPU
    neutral[:, HUE] = NEUTRAL[HUE]
    order = u[:, 5:9].argsort(dim=1).to(torch.float32)  # a uniformly random permutation of the 4 operations
    in_order = torch.arange(4.0, device=u.device).expand_as(order)
    blurred = u[:, 10] < blur_p
    return torch.cat([
        torch.where(jitter[:, None], drawn, neutral),
        torch.where(jitter[:, None], order, in_order),
        (u[:, 9:10] < 0.2).to(torch.float32),
        torch.where(blurred, sigma[0] + (sigma[1] - sigma[0]) * u[:, 11], torch.zeros_like(u[:, 11]))[:, None],
        torch.full_like(u[:, :1], kernel_size),
        (u[:, 12:13] < solarize_p).to(torch.float32),
    ], dim=1)


def apply_photometric(images: torch.Tensor, params: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) images and their (B, NUM_PARAMS) parameters -> augmented uint8 images."""
    x = images.float() / 255
    # picking images gives data-dependent shapes: a GPU would wait for them, torch.compile would recompile
    by_image = x.device.type == "cpu" and not torch.compiler.is_compiling()
    x = (_jitter_picked if by_image else _jitter_masked)(x, params)
    x = torch.where(_per_image(params[:, GRAY]) > 0, grayscale(x).expand_as(x), x)
    x = gaussian_blur(x, params[:, SIGMA], kernel_size)
    x = torch.where((_per_image(params[:, SOLARIZE]) > 0) & (x >= 128 / 255), 1 - x, x)
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def _jitter_masked(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The colour jitter without a host sync (for GPUs): at each position every image runs all four
    operations, the three it did not choose there with neutral factors."""
    factors = params[:, :4]
    neutral = torch.ones_like(factors)  # made on the device: no host-to-device copy per batch
    neutral[:, HUE] = 0
    # (B, position, operation): whether the image applies that operation at that position of its order
    chosen = params[:, ORDER, None] == torch.arange(4, device=x.device)
    for position in range(4):
        step = torch.where(chosen[:, position], factors, neutral)
        for operation, adjust in enumerate(JITTER):
            x = adjust(x, step[:, operation])
    return x


def _jitter_picked(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The colour jitter on a CPU: at each position each image runs only the operation it chose there, and
    only with a factor that changes it (4 operations per jittered image instead of 16; on a GPU picking the
    images would wait for the device)."""
    x = x.clone()
    factors = params[:, :4]
    changes = factors != torch.tensor(NEUTRAL, dtype=factors.dtype)
    for position in range(4):
        for operation, adjust in enumerate(JITTER):
            picked = ((params[:, ORDER.start + position] == operation) & changes[:, operation]).nonzero()[:, 0]
            if len(picked):
                x[picked] = adjust(x[picked], factors[picked, operation])
    return x


def finish_views(batch, device: torch.device, apply=apply_photometric):
    """``batch`` on ``device``, each ``DeviceView`` in it replaced by its augmented uint8 images."""
    if isinstance(batch, DeviceView):
        kernel = int(batch.params[0, KERNEL])  # read on the CPU, before the transfer: no device sync
        images, params = to_device(batch.image, device), to_device(batch.params, device)
        with torch.no_grad():
            return apply(images, params, kernel)
    if isinstance(batch, (list, tuple)):
        return type(batch)(finish_views(item, device, apply) for item in batch)
    return to_device(batch, device)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = _per_image(factor)
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]), keeping HSV's value and saturation."""
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    chroma = value - x.min(1).values
    safe_chroma = torch.where(chroma == 0, torch.ones_like(chroma), chroma)  # grey: any hue, chroma 0
    rc, gc, bc = (value - r) / safe_chroma, (value - g) / safe_chroma, (value - b) / safe_chroma
    is_r = value == r
    is_g = (value == g) & ~is_r
    hue = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))  # in sixths of a turn
    hue = hue + 6.0 * shift.view(-1, 1, 1)

    def channel(offset: float) -> torch.Tensor:
        # HSV to RGB in closed form: each channel is the value, less the chroma where the hue is far from
        # that channel's own (red 0, green 2, blue 4 sixths), without the six-sector lookup table
        k = torch.remainder(offset + hue, 6.0)
        return value - chroma * torch.minimum(k, 4.0 - k).clamp(0, 1)

    return torch.stack([channel(5.0), channel(3.0), channel(1.0)], 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with each image's own sigma (0: unchanged), reflect padding, as torchvision."""
    batch, channels, height, width = x.shape
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma)).view(-1, 1)
    weights = torch.exp(-0.5 * (offsets / safe_sigma) ** 2)
    # taps far out in a narrow kernel underflow to subnormal floats, which slow a CPU's convolution down by
    # 10-30x; they weigh less than 1e-20 of the centre, so they become 0
    weights = torch.where(weights < 1e-20, torch.zeros_like(weights), weights)
    weights = torch.where(sigma.view(-1, 1) > 0, weights, (offsets == 0).to(x.dtype))  # identity kernel
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (B*C, k)
    planes = x.reshape(1, batch * channels, height, width)
    planes = F.pad(planes, (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, weights.view(-1, 1, kernel_size, 1), groups=batch * channels)
    planes = F.conv2d(planes, weights.view(-1, 1, 1, kernel_size), groups=batch * channels)
    return planes.view(batch, channels, height, width)


JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # by index: BRIGHTNESS ... HUE

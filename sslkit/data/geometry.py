"""Random resized crops and flips of a whole batch on the training device, each image with its own parameters.

The decoded store (sslkit.data.store) keeps every image as uint8 on a fixed canvas; here a batch of them
becomes a batch of views with no per-image work on the CPU:

- ``uniforms``: each sample's random numbers, hashed from its seed (the sampler's per-sample seed), the view
  and a counter. They are the same on any device, batch split, worker count or resume.
- ``crop_boxes``: torchvision's ``RandomResizedCrop.get_params`` (area fraction in ``scale``, log-uniform
  aspect ratio, 10 tries, centre-crop fallback), for every image at once.
- ``resample_weights`` / ``resized_crops``: crop, resize and flip as two matrix products per image (rows,
  then columns), with Pillow's antialiased bicubic filter (a = -0.5, widened by the shrink factor), so a view
  equals Pillow's ``resize`` of the same box up to rounding.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
TRIES = 10  # torchvision's attempts at a box inside the image before the centre-crop fallback
# where each view's random numbers are used: the crop's tries, position and flip, then its colour
AREA, RATIO = slice(0, TRIES), slice(TRIES, 2 * TRIES)
TOP, LEFT, FLIP = 2 * TRIES, 2 * TRIES + 1, 2 * TRIES + 2
COLOUR = 2 * TRIES + 3
NUMBERS_PER_VIEW = COLOUR + 16


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant`` modulo 2**32 for int64 ``x`` in [0, 2**32), in two halves so nothing overflows."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with good avalanche (Wellons' "lowbias32"), on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seeds: torch.Tensor, view: int, count: int = NUMBERS_PER_VIEW) -> torch.Tensor:
    """(B, count) float32 numbers uniform in [0, 1), a function of each sample's seed (int64, >= 0), the view
    index and the position only."""
    low, high = seeds & MASK32, (seeds >> 32) & MASK32
    key = hash32(low ^ hash32(high ^ 0x5BD1E995))
    key = hash32(key ^ _mul32(torch.full_like(key, view + 1), 0x9E3779B9))
    counters = torch.arange(count, device=seeds.device, dtype=torch.int64)
    bits = hash32(hash32(key[:, None] ^ counters) ^ 0x68E31DA4)
    return (bits >> 8).to(torch.float32) / 2**24  # 24 bits: exact in float32, never 1.0


def crop_boxes(numbers: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor, scale: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[torch.Tensor, ...]:
    """``(top, left, height, width)`` (int64, B each) of RandomResizedCrop boxes in images of the given sizes,
    drawn from ``numbers`` (B, NUMBERS_PER_VIEW) as torchvision's get_params draws them."""
    height, width = heights.to(torch.float64)[:, None], widths.to(torch.float64)[:, None]
    u = numbers.to(torch.float64)
    target_area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, AREA])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u[:, RATIO])
    w = torch.sqrt(target_area * aspect).round()  # round half to even, as Python's round()
    h = torch.sqrt(target_area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    top = torch.floor(u[:, TOP] * (height - h + 1))
    left = torch.floor(u[:, LEFT] * (width - w + 1))
    # no try fitted: the largest centred box whose aspect ratio lies in ``ratio``
    in_ratio = width / height
    fallback_w = torch.where(in_ratio > ratio[1], (height * ratio[1]).round(), width)
    fallback_h = torch.where(in_ratio < ratio[0], (width / ratio[0]).round(), height)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return top.long(), left.long(), h.long(), w.long()


def flips(numbers: torch.Tensor) -> torch.Tensor:
    """Which images RandomHorizontalFlip (p 0.5) mirrors."""
    return numbers[:, FLIP] < 0.5


def bicubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with Pillow's a = -0.5 (torch's antialiased bicubic uses it too)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(start: torch.Tensor, length: torch.Tensor, out_size: int, in_size: int,
                     mirror: torch.Tensor | None = None) -> torch.Tensor:
    """(B, out_size, in_size) weights resampling the pixels ``[start, start + length)`` of an axis of
    ``in_size`` pixels to ``out_size``: Pillow's antialiased bicubic (the filter stretched by the shrink factor
    when shrinking), normalised over the taps inside the box. ``mirror`` reverses the output (a flip)."""
    start, length = start.to(torch.float32)[:, None, None], length.to(torch.float32)[:, None, None]
    step = length / out_size  # input pixels per output pixel
    stretch = step.clamp(min=1.0)
    outputs = torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :, None]
    if mirror is not None:
        outputs = torch.where(mirror[:, None, None], out_size - 1 - outputs, outputs)
    centres = start + (outputs + 0.5) * step
    pixels = torch.arange(in_size, device=start.device, dtype=torch.float32)[None, None, :]
    weights = bicubic((pixels + 0.5 - centres) / stretch)
    weights = weights * ((pixels >= start) & (pixels < start + length))
    return weights / weights.sum(dim=-1, keepdim=True)


def resized_crops(canvas: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                  transposed: torch.Tensor) -> torch.Tensor:
    """Views of a uint8 canvas batch (B, 3, H, W): ``rows`` (B, V, out, H) and ``columns`` (B, V, out, W)
    resampling weights per image and view; images stored ``transposed`` are turned back. Returns uint8
    (B, V, 3, out, out)."""
    batch, views, out, height = rows.shape
    width = canvas.shape[-1]
    # (B, H, 3 * W): the rows' product is then one matrix product per image for all views and channels
    pixels = canvas.permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
    x = torch.bmm(rows.reshape(batch, views * out, height), pixels.view(batch, height, 3 * width))
    x = torch.matmul(x.view(batch, views, out * 3, width), columns.transpose(-1, -2))  # (B, V, out * 3, out)
    x = x.view(batch, views, out, 3, out).permute(0, 1, 3, 2, 4)
    x = torch.where(transposed.view(batch, 1, 1, 1, 1), x.transpose(-1, -2), x)
    return x.round().clamp_(0, 255).to(torch.uint8)

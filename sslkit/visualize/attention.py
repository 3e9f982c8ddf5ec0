"""Self-attention maps of a ViT's last block: the CLS query over the patch keys, per head (DINO's
visualize_attention), drawn as PNG heat maps, overlays and threshold masks.

The attention is recomputed from the last block's own qkv projection (a forward pre-hook captures its
input), so timm's fused attention kernel, which never materialises the attention matrix, stays untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

# viridis at ten evenly spaced points (matplotlib's default colour map), interpolated to 256 entries
_VIRIDIS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37),
], dtype=np.float64)
COLORMAP = np.stack(
    [np.interp(np.linspace(0, 9, 256), np.arange(10), _VIRIDIS[:, c]) for c in range(3)], axis=1
).round().astype(np.uint8)


@torch.no_grad()
def last_block_attention(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` of the last block for normalised ``images``: (B, heads, tokens, tokens)."""
    attn = backbone.blocks[-1].attn
    captured = {}
    handle = attn.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    try:
        backbone.forward_features(images)
    finally:
        handle.remove()
    x = captured["x"]
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)


def cls_attention(attention: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """The CLS query's weights over the patch tokens only (CLS and registers dropped): (B, heads, h, w)."""
    return attention[:, :, 0, prefix_tokens:].reshape(*attention.shape[:2], *grid)


def threshold_mask(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per map, the fewest patches that hold at least ``threshold`` of its attention mass (DINO's --threshold)."""
    flat = maps.flatten(-2)
    values, order = flat.sort(dim=-1, descending=True)
    share = values / values.sum(dim=-1, keepdim=True)
    before = share.cumsum(dim=-1) - share  # mass of the larger patches ahead of each one
    keep_sorted = before < threshold
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(maps.shape)


def central_mass(maps: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside the central box (the middle half of the width and of the height).

    Patches straddling the box count by the fraction of their area inside it, so a uniform map gives exactly
    0.25 on any grid.
    """
    h, w = maps.shape[-2:]
    inside = _overlap(h)[:, None] * _overlap(w)[None, :]
    return (maps * inside.to(maps)).sum(dim=(-2, -1)) / maps.sum(dim=(-2, -1))


def _overlap(cells: int) -> torch.Tensor:
    """For each of ``cells`` equal cells of [0, 1], the fraction of it inside [0.25, 0.75]."""
    edges = torch.arange(cells + 1, dtype=torch.float64) / cells
    return ((edges[1:].clamp(0.25, 0.75) - edges[:-1].clamp(0.25, 0.75)) * cells).float()


def prepare_image(image: Image.Image, img_size: int, patch: int) -> torch.Tensor:
    """Resize the short side to ``img_size``, centre-crop each side down to a multiple of the patch: uint8 CHW."""
    tensor = TF.pil_to_tensor(image)
    tensor = TF.resize(tensor, img_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    h, w = tensor.shape[-2:]
    return TF.center_crop(tensor, [max(patch, h - h % patch), max(patch, w - w % patch)])


def heat_map(values: torch.Tensor, patch: int) -> np.ndarray:
    """A (h, w) map scaled to its own range, coloured, each patch blown up to patch x patch pixels: uint8 RGB."""
    values = values.float()
    scaled = (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12)
    rgb = COLORMAP[(scaled * 255).round().to(torch.uint8).numpy()]
    return rgb.repeat(patch, axis=0).repeat(patch, axis=1)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    return (image * (1 - alpha) + heat * alpha).round().astype(np.uint8)


def masked(image: np.ndarray, mask: torch.Tensor, patch: int) -> np.ndarray:
    """The image where the mask is set; elsewhere darkened to a quarter."""
    pixels = mask.numpy().repeat(patch, axis=0).repeat(patch, axis=1)[..., None]
    return np.where(pixels, image, image // 4).astype(np.uint8)


def picture_names(heads: int, threshold: float | None) -> list[str]:
    """The PNGs written per image, in the order :func:`pictures` draws them."""
    names = ["img.png", *(f"attn-head{h}.png" for h in range(heads)), "attn-mean.png", "overlay.png"]
    if threshold is not None:
        names += [*(f"mask-th{threshold:g}-head{h}.png" for h in range(heads)), f"mask-th{threshold:g}-mean.png"]
    return names


def pictures(pixels: np.ndarray, maps: torch.Tensor, patch: int, threshold: float | None) -> list[np.ndarray]:
    """One image's pictures: the input, each head's map and their mean as heat maps, the mean over the input,
    and with ``threshold`` the masks of each head and of the mean."""
    mean = maps.mean(dim=0)
    heat = heat_map(mean, patch)
    drawn = [pixels, *(heat_map(values, patch) for values in maps), heat, overlay(pixels, heat)]
    if threshold is not None:
        drawn += [masked(pixels, mask, patch) for mask in threshold_mask(torch.cat([maps, mean[None]]), threshold)]
    return drawn


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")

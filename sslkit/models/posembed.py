"""A ViT's learned position embedding on a patch grid other than the one it was trained on.

Two resamplings, each what a family of released weights was trained and evaluated with:

- ``timm``: antialiased bicubic to the exact grid (timm's ``resample_abs_pos_embed``). DINOv2's models with
  registers resample the same way (``interpolate_antialias=True, interpolate_offset=0``).
- ``dino``: bicubic by the scale factors ``(h + 0.1) / side``, without antialiasing: DINO's and DINOv2's
  (without registers) ``interpolate_pos_encoding``.

Models with rotary position embeddings (DINOv3) have no table to resample.
"""

from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn
from torch.nn import functional as F

from sslkit.errors import UsageError

RESAMPLINGS = ("dino", "timm")


def dino_resample_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int],
                            num_prefix_tokens: int = 1) -> torch.Tensor:
    """A position embedding (1, prefix + N, D) trained on a square grid of N patches, for a ``grid_hw`` grid as
    DINO's ``interpolate_pos_encoding`` resamples it.

    The patch part, as a sqrt(N) x sqrt(N) image of D channels, is resized bicubically by the scale factors
    ``(h + 0.1) / sqrt(N)`` and ``(w + 0.1) / sqrt(N)`` (DINO adds 0.1 so that floating point error cannot round
    the output size down; the factors, not the sizes, place the samples), without antialiasing and with
    ``align_corners=False``, in fp32; the prefix (CLS) embeddings are kept. The trained grid itself is left
    unchanged.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise UsageError(f"DINO's resampling needs a square trained grid, not {patches.shape[1]} patches")
    h, w = grid_hw
    if (h, w) == (side, side):
        return pos_embed
    square = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(square, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
    if resized.shape[-2:] != (h, w):
        raise UsageError(f"DINO's resampling gave a {tuple(resized.shape[-2:])} grid, not {(h, w)}")
    resized = resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)
    return torch.cat([prefix, resized], dim=1)


def embedded_prefix(module: nn.Module) -> int:
    """How many prefix tokens (CLS, registers) a timm ViT's position embedding covers: none for models built
    with ``no_embed_class`` (DeiT-3, DINOv2 with registers), all of them otherwise."""
    return 0 if getattr(module, "no_embed_class", False) else module.num_prefix_tokens


def resampled(module: nn.Module, pos_embed: torch.Tensor, grid_hw: tuple[int, int], how: str) -> torch.Tensor:
    """``pos_embed``, a position embedding of ``module``'s layout trained on a square grid, for ``grid_hw``."""
    prefix = embedded_prefix(module)
    if how == "dino":
        return dino_resample_pos_embed(pos_embed, grid_hw, prefix)
    return resample_abs_pos_embed(pos_embed, new_size=list(grid_hw), num_prefix_tokens=prefix, verbose=False)


def set_img_size(module: nn.Module, img_size: int, how: str = "timm") -> None:
    """Build the timm ViT ``module`` for ``img_size`` pixels (its patch grid, RoPE grid, position embedding), the
    position embedding resampled ``how``. The weights are otherwise untouched."""
    trained = getattr(module, "pos_embed", None)
    trained = trained.detach().clone() if trained is not None else None
    module.set_input_size(img_size=img_size)  # timm's own resampling, and the grid everything else follows
    if how == "dino" and trained is not None:
        with torch.no_grad():
            module.pos_embed.copy_(resampled(module, trained, tuple(module.patch_embed.grid_size), "dino"))

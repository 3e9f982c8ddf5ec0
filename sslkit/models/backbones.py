"""Backbones: any timm model by name, never downloading weights, and the pooled features they give.

Built with ``num_classes=0`` a timm model's forward returns the pooled embedding: the final-norm CLS token
for ViTs, global average pooling for conv nets. Every evaluation takes its features from here.
"""

from __future__ import annotations

import difflib
from functools import lru_cache

import timm
import torch
from torch import nn

from sslkit.errors import UsageError


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """uint8 images -> float, scaled to [0, 1] and standardised with the channel mean and std."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale - self.shift


def create_backbone(arch: str, img_size: int | None = None, **vit_options) -> nn.Module:
    """A randomly initialised timm model ``arch`` without classifier.

    ViTs are built for ``img_size`` with ``vit_options`` (e.g. ``drop_path_rate``, ``dynamic_img_size``);
    conv nets take any input size and are built without them.
    """
    if not timm.is_model(arch):
        raise UsageError(f"unknown architecture '{arch}'{_suggest(arch)}")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size, **vit_options)
    except TypeError:  # no img_size argument: not a ViT
        return timm.create_model(arch, pretrained=False, num_classes=0)


@lru_cache(maxsize=1)
def _all_models() -> tuple[str, ...]:
    return tuple(timm.list_models())


def _suggest(arch: str) -> str:
    close = difflib.get_close_matches(arch, _all_models(), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"


def is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed")


def patch_size(model: nn.Module) -> int | None:
    if not is_vit(model):
        return None
    size = model.patch_embed.patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def feature_dim(model: nn.Module) -> int:
    return int(model.num_features)


def prefers_channels_last(model: nn.Module) -> bool:
    """Conv nets run faster in NHWC (cuDNN, and oneDNN on the CPU: +20% for BYOL ResNet-18); ViTs gain nothing."""
    return not is_vit(model) and any(isinstance(m, nn.Conv2d) for m in model.modules())


class FeatureExtractor(nn.Module):
    """A frozen backbone as a function from uint8 image batches to pooled embeddings (fp32)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.normalize = Normalize()
        self.channels_last = prefers_channels_last(backbone)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).float()

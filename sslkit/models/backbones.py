"""Backbones: any timm model by name, never downloading weights, and the pooled features they give.

Built with ``num_classes=0`` a timm model's forward returns the pooled embedding: the final-norm CLS token
for ViTs, global average pooling for conv nets. Every evaluation takes its features from here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
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

    @classmethod
    def of(cls, model: nn.Module) -> "Normalize":
        """The standardisation ``model`` expects (:func:`normalization`)."""
        return cls(*normalization(model))


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The channel mean and std a backbone's inputs are standardised with: ImageNet's for everything sslkit
    builds and trains, the released weights' own where they differ (DINOv3's satellite models), kept where timm
    keeps them, in the model's ``pretrained_cfg`` (see :func:`set_normalization`)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def set_normalization(model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
    """Record the mean and std ``model``'s inputs are standardised with, where timm's data config reads them."""
    if hasattr(model, "pretrained_cfg"):
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": tuple(mean), "std": tuple(std)}


def create_backbone(arch: str, img_size: int | None = None, **vit_options) -> nn.Module:
    """A randomly initialised timm model ``arch`` without classifier, its inputs standardised with ImageNet's
    mean and std (:func:`normalization`).

    ViTs are built for ``img_size`` with ``vit_options`` (e.g. ``drop_path_rate``, ``dynamic_img_size``) over
    sslkit's defaults for the architecture (:func:`arch_defaults`); conv nets take any input size and are built
    without them.
    """
    if not timm.is_model(arch):
        raise UsageError(f"unknown architecture '{arch}'{_suggest(arch)}")
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size,
                                  **{**arch_defaults(arch), **vit_options})
    except TypeError:  # no img_size argument: not a ViT
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    set_normalization(model)
    return model


def arch_defaults(arch: str) -> dict:
    """Options an architecture is built with unless told otherwise: DINOv3's ViTs pool their features as DINOv3
    does, by the CLS token (timm's Eva defaults to the mean patch token)."""
    return {"global_pool": "token"} if arch.endswith(("_dinov3", "_dinov3_qkvb")) else {}


@lru_cache(maxsize=1)
def _all_models() -> tuple[str, ...]:
    return tuple(timm.list_models())


def _suggest(arch: str) -> str:
    close = difflib.get_close_matches(arch, _all_models(), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"


class Thumbnail(nn.Module):
    """``pixels:N``: the image itself, area-averaged to N x N and flattened (3 N^2 features, standardised).

    No learning at all: the floor any encoder's features must clear on k-NN or copy detection.
    """

    def __init__(self, side: int):
        super().__init__()
        self.side = side
        self.num_features = 3 * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, self.side).flatten(1)


def create_thumbnail(spec: str) -> Thumbnail:
    side = spec[len("pixels:"):] or "16"
    if not side.isdigit() or int(side) < 1:
        raise UsageError(f"'{spec}': write pixels:N with N the thumbnail side, e.g. pixels:16")
    return Thumbnail(int(side))


def gem(x: torch.Tensor, p: float, dim, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over ``dim``: (mean x^p)^(1/p) of the values clamped at ``eps`` (DINO's
    copy-detection descriptor clamps the same way). p = 1 is average pooling of non-negative values; large p
    tends to max pooling. Computed in fp32."""
    return x.float().clamp(min=eps).pow(p).mean(dim=dim).pow(1.0 / p)


def has_weights(model: nn.Module) -> bool:
    """False for ``pixels:`` thumbnails, which have nothing to train or export."""
    return any(True for _ in model.parameters())


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


POOLS = ("default", "token", "avg", "gem")
TOKENS = ("cls", "mean", "cls+mean", "patch")  # --tokens: which final-norm tokens, by name (patch: embed only)


@dataclass(frozen=True)
class FeatureRecipe:
    """Which features of a frozen backbone an evaluation uses.

    ``pool``: the model's own pooled embedding (``default``: CLS token for ViTs, average pool for conv nets),
    the CLS ``token``, the ``avg`` of the patch tokens, or ``gem``: DINO's copy-detection descriptor, the CLS
    token concatenated with the GeM (power ``gem_p``) of the patch tokens for ViTs, the GeM of the last
    feature map for conv nets. ViTs only: ``n_last_blocks`` concatenates the
    (final-norm) CLS tokens of the last N blocks and ``avgpool_patchtokens`` adds the last block's average
    patch token, as DINO's eval_linear.py does.

    ``tokens`` names the ViT tokens instead of ``pool``: ``cls``, the ``mean`` patch token (the
    ``num_prefix_tokens`` CLS, registers and DINOv3 storage tokens left out), ``cls+mean`` concatenated CLS
    first (DINOv2's linear evaluation; with ``n_last_blocks`` the CLS tokens of the last N blocks, then the
    last block's mean), or every ``patch`` token as an h x w grid. It reads the same tokens as ``pool`` does
    (``cls`` gives what ``pool="token"`` gives), so the two are never combined.
    """

    pool: str = "default"
    n_last_blocks: int = 1
    avgpool_patchtokens: bool = False
    gem_p: float = 4.0
    tokens: str | None = None

    def check(self, backbone: nn.Module) -> None:
        if self.pool not in POOLS:
            raise UsageError(f"--pool must be one of {', '.join(POOLS)}, not '{self.pool}'")
        if isinstance(backbone, Thumbnail):
            if self.pool != "default" or not self.plain or self.tokens:
                raise UsageError("pixels: thumbnails are their own features; they take no --pool, --tokens or block "
                                 "options")
            return
        if self.tokens is not None:
            self._check_tokens(backbone)
        if self.pool == "gem" and not (self.plain and self.gem_p > 0):
            raise UsageError("--pool gem takes a positive GeM power and no --n-last-blocks / --avgpool-patchtokens")
        if self.n_last_blocks < 1:
            raise UsageError(f"--n-last-blocks must be positive, not {self.n_last_blocks}")
        if is_vit(backbone):
            if self.n_last_blocks > len(backbone.blocks):
                raise UsageError(f"--n-last-blocks {self.n_last_blocks}: the model has {len(backbone.blocks)} blocks")
        elif self.pool == "token" or self.n_last_blocks > 1 or self.avgpool_patchtokens:
            raise UsageError("--pool token, --n-last-blocks and --avgpool-patchtokens need a vision transformer; "
                             "conv nets give their average-pooled last feature map")

    def _check_tokens(self, backbone: nn.Module) -> None:
        """--tokens names the features by itself: --pool and --avgpool-patchtokens would name them twice."""
        tokens = self.tokens
        if tokens not in TOKENS:
            raise UsageError(f"--tokens must be one of {', '.join(TOKENS)}, not '{tokens}'")
        if self.pool != "default":
            raise UsageError(f"--tokens {tokens} and --pool {self.pool} both choose the features; give one of them")
        if self.avgpool_patchtokens:
            raise UsageError(f"--tokens {tokens} and --avgpool-patchtokens both choose the features; give one of them "
                             "(--tokens cls+mean concatenates CLS and mean patch token, DINOv2's way)")
        if self.n_last_blocks > 1 and tokens in ("mean", "patch"):
            raise UsageError(f"--tokens {tokens} takes the last block's patch tokens; --n-last-blocks counts CLS "
                             "tokens (--tokens cls or cls+mean)")
        if not (is_vit(backbone) and hasattr(backbone, "num_prefix_tokens")):
            raise UsageError(f"--tokens {tokens} needs a vision transformer; conv nets give their average-pooled "
                             "last feature map (--pool default)")
        if "cls" in tokens and getattr(backbone, "cls_token", None) is None:
            raise UsageError(f"--tokens {tokens}: the model has no CLS token; take --tokens mean")

    @property
    def plain(self) -> bool:
        return self.n_last_blocks == 1 and not self.avgpool_patchtokens

    @property
    def parts(self) -> tuple[bool, bool]:
        """Whether the features hold the CLS token(s) and the mean patch token (ViTs, all but gem and patch)."""
        if self.tokens:
            return self.tokens != "mean", self.tokens != "cls"
        if self.plain:
            return self.pool != "avg", self.pool == "avg"
        return True, self.avgpool_patchtokens  # the CLS tokens of the last blocks, whatever the pool

    def describe(self) -> str:
        if self.pool == "gem":
            return f"GeM (p={self.gem_p:g}) pool, after the CLS token for ViTs"
        if self.tokens == "patch":
            return "patch tokens"
        cls = "CLS token" if self.n_last_blocks == 1 else f"CLS of the last {self.n_last_blocks} blocks"
        if self.tokens:
            with_cls, with_mean = self.parts
            return " + ".join([cls] * with_cls + ["mean patch token"] * with_mean)
        parts = [f"{self.pool} pool" if self.n_last_blocks == 1 else cls]
        if self.avgpool_patchtokens:
            parts.append("average patch token")
        return " + ".join(parts)


def recipe_features(backbone: nn.Module, x: torch.Tensor, recipe: FeatureRecipe) -> torch.Tensor:
    """The features ``recipe`` names for the normalised image batch ``x``: N x D, or N x h x w x D for the
    patch tokens."""
    if recipe.pool == "gem":
        features = backbone.forward_features(x)  # ViT: final-norm tokens, prefix first; conv net: N C H W
        if not is_vit(backbone):
            return gem(features, recipe.gem_p, dim=(2, 3))
        patches = gem(features[:, backbone.num_prefix_tokens:], recipe.gem_p, dim=1)
        return torch.cat([features[:, 0].float(), patches], dim=-1)
    if not is_vit(backbone) or (recipe.plain and recipe.pool == "default" and not recipe.tokens):
        return backbone(x)
    if recipe.plain:
        tokens = backbone.forward_features(x)  # final-norm tokens, prefix first
        cls, patches = tokens[:, 0], tokens[:, backbone.num_prefix_tokens:]
        if recipe.tokens == "patch":
            side = patch_size(backbone)
            return patches.unflatten(1, (x.shape[-2] // side, x.shape[-1] // side))
    else:
        blocks = backbone.forward_intermediates(x, indices=recipe.n_last_blocks, norm=True, output_fmt="NLC",
                                               intermediates_only=True, return_prefix_tokens=True)
        cls, patches = torch.cat([prefix[:, 0] for _, prefix in blocks], dim=-1), blocks[-1][0]
    with_cls, with_mean = recipe.parts
    if recipe.avgpool_patchtokens and recipe.n_last_blocks == 1:
        # DINO interleaves CLS and average (stack, flatten): kept so its heads fit; DINOv2 concatenates
        return torch.stack([cls, patches.mean(dim=1)], dim=-1).flatten(1)
    return torch.cat([cls] * with_cls + [patches.mean(dim=1)] * with_mean, dim=-1)


class FeatureExtractor(nn.Module):
    """A frozen backbone as a function from uint8 image batches to features (fp32), by ``recipe``."""

    def __init__(self, backbone: nn.Module, recipe: FeatureRecipe | None = None, freeze: bool = True):
        super().__init__()
        # freeze=False for a network still in training (online k-NN): the caller runs it in eval mode, no grad
        self.backbone = backbone.eval().requires_grad_(False) if freeze else backbone
        self.recipe = recipe or FeatureRecipe()
        self.recipe.check(backbone)
        self.normalize = Normalize.of(backbone)
        self.channels_last = prefers_channels_last(backbone)
        if self.channels_last and freeze:
            self.backbone.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return recipe_features(self.backbone, x, self.recipe).float()

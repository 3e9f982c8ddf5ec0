"""The released DINOv2 and DINOv3 backbones, recognised by their key layout, built as timm's own architectures
and converted by timm's own checkpoint filters (the ones timm's pretrained weights load through): sslkit keeps
no key table of its own.

The layouts (facebookresearch/dinov2 and /dinov3, their module definitions):

- DINOv2, ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``: a plain state dict with ``cls_token``, ``pos_embed``
  over the CLS and 37 x 37 patches (518 px), ``mask_token`` (iBOT's), layer scales ``blocks.N.ls1.gamma`` and
  ``ls2.gamma``, registers apart in ``register_tokens``; ViT-g's SwiGLU as ``mlp.w12`` / ``mlp.w3``.
- DINOv3, ``dinov3_vit*16*_pretrain_*.pth``: rotary position embeddings (``rope_embed.periods``, no table),
  ``storage_tokens``, one ``qkv.bias`` with a ``bias_mask`` that zeroes its key third, ``ls1.gamma``, SwiGLU
  ``mlp.w1`` / ``w2`` / ``w3`` for S+ and H+, and for the satellite ViT-L an unused ``local_cls_norm``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from sslkit.errors import UsageError

DINOV2_LICENCE = "Apache-2.0 (DINOv2 weights, facebookresearch/dinov2)"
DINOV3_LICENCE = ("DINOv3 License (DINOv3 weights, facebookresearch/dinov3; not an open-source licence: read its "
                  "terms before sharing or selling what you build on them)")

# width -> timm's size name, depth and whether its MLP is a SwiGLU (DINOv2); (width, SwiGLU) -> name, depth (DINOv3)
DINOV2_SIZES = {384: ("small", 12, False), 768: ("base", 12, False), 1024: ("large", 24, False),
                1536: ("giant", 40, True)}
DINOV3_SIZES = {(384, False): ("small", 12), (384, True): ("small_plus", 12), (768, False): ("base", 12),
                (1024, False): ("large", 24), (1280, True): ("huge_plus", 32)}
SHORT_NAMES = {"small": "S", "small_plus": "S+", "base": "B", "large": "L", "giant": "g", "huge_plus": "H+"}
PATCH = {"DINOv2": 14, "DINOv3": 16}
REGISTERS = 4  # the released models with registers have 4 (DINOv2's reg4, DINOv3's storage tokens)


@dataclass(frozen=True)
class Release:
    """A DINOv2 or DINOv3 release: its timm architecture and pretrained tag, and what follows from them."""

    family: str  # DINOv2 or DINOv3
    arch: str  # timm's model, e.g. vit_small_patch14_reg4_dinov2
    tag: str  # timm's tag of these weights: lvd142m, lvd1689m, sat493m
    name: str  # e.g. "DINOv2 ViT-S/14 with 4 registers"
    licence: str
    pos_resample: str | None  # how the family resamples its position embedding (posembed.py); None: RoPE

    @property
    def cfg(self) -> dict:
        """timm's pretrained config of these weights: input size, mean and std, crop, licence."""
        return timm.models.get_pretrained_cfg(f"{self.arch}.{self.tag}").to_dict()


def released_family(state: dict[str, torch.Tensor]) -> str | None:
    """DINOv2 or DINOv3 when ``state`` (prefixes stripped) has that release's own layout, else None. timm's
    layout of the same models (``reg_token``, ``gamma_1``, no ``mask_token``) is not theirs: see timm_arch."""
    if "storage_tokens" in state or "rope_embed.periods" in state:
        return "DINOv3"
    if "mask_token" in state and "blocks.0.ls1.gamma" in state:
        return "DINOv2"
    return None


def recognise(state: dict[str, torch.Tensor], path: Path | str) -> Release | None:
    """The release whose layout ``state`` has, or None for any other state dict. A file that has a release's
    layout but fits none of its models (another patch size, a missing block, an unknown width) is refused in
    one line naming what does not fit."""
    family = released_family(state)
    if family is None:
        return None
    width, depth = _patch_embed(state, path, family)[0], _depth(state, path, family)
    if family == "DINOv2":
        return _dinov2(state, path, width, depth)
    return _dinov3(state, path, width, depth)


def _patch_embed(state: dict, path, family: str) -> tuple[int, int]:
    weight, patch = state.get("patch_embed.proj.weight"), PATCH[family]
    if weight is None or weight.ndim != 4 or weight.shape[1] != 3:
        shape = "none" if weight is None else list(weight.shape)
        raise UsageError(f"{path} has {family}'s layout but its patch_embed.proj.weight ({shape}) is not a ViT's "
                         "patch embedding of RGB images")
    if tuple(weight.shape[-2:]) != (patch, patch):
        raise UsageError(f"{path} has {family}'s layout with {weight.shape[-2]} x {weight.shape[-1]} patches; "
                         f"{family}'s released models (timm's *_{family.lower()}) have {patch} x {patch}")
    return weight.shape[0], patch


def _depth(state: dict, path, family: str) -> int:
    """The number of blocks, refused when one in the middle is missing."""
    indices = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    missing = sorted(set(range(max(indices, default=-1) + 1)) - indices)
    if missing:
        raise UsageError(f"{path} has {family}'s layout but no tensors of block{'s' * (len(missing) > 1)} "
                         f"{', '.join(map(str, missing[:5]))}")
    return len(indices)


def _check_depth(path, name: str, depth: int, expected: int) -> None:
    if depth != expected:
        raise UsageError(f"{path} has the layout of {name} but {depth} blocks, where {name} has {expected}")


def _dinov2(state: dict, path, width: int, depth: int) -> Release:
    if width not in DINOV2_SIZES:
        raise UsageError(f"{path} has DINOv2's layout {width} wide; DINOv2's models are 384 (ViT-S/14), 768 (B), "
                         "1024 (L) and 1536 (g) wide")
    size, standard_depth, _ = DINOV2_SIZES[width]
    registers = _tokens(state, "register_tokens", path, width)
    name = f"DINOv2 ViT-{SHORT_NAMES[size]}/14" + (f" with {registers} registers" if registers else "")
    _check_depth(path, name, depth, standard_depth)
    _square_pos_embed(state, path, width)
    arch = f"vit_{size}_patch14{'_reg4' if registers else ''}_dinov2"
    # DINOv2's interpolate_pos_encoding: offset 0.1 without antialias, or with registers antialias and no offset
    return Release("DINOv2", arch, "lvd142m", name, DINOV2_LICENCE, "timm" if registers else "dino")


def _dinov3(state: dict, path, width: int, depth: int) -> Release:
    swiglu = "blocks.0.mlp.w1.weight" in state
    if (width, swiglu) not in DINOV3_SIZES:
        raise UsageError(f"{path} has DINOv3's layout {width} wide with a {'SwiGLU' if swiglu else 'plain'} MLP; "
                         "DINOv3's ViTs are ViT-S/16 (384, plain), S+ (384, SwiGLU), B (768), L (1024) and H+ "
                         "(1280, SwiGLU)")
    size, standard_depth = DINOV3_SIZES[(width, swiglu)]
    name = f"DINOv3 ViT-{SHORT_NAMES[size]}/16"
    _check_depth(path, name, depth, standard_depth)
    if _tokens(state, "storage_tokens", path, width) != REGISTERS:
        raise UsageError(f"{path} has DINOv3's layout without its {REGISTERS} storage tokens")
    q_and_v_bias = _attention_biases(state, path)
    satellite = size == "large" and "local_cls_norm.weight" in state  # only SAT-493M's ViT-L has it
    arch = f"vit_{size}_patch16_dinov3" + ("_qkvb" if q_and_v_bias else "")
    name += " (SAT-493M satellite images)" if satellite else ""
    return Release("DINOv3", arch, "sat493m" if satellite else "lvd1689m", name, DINOV3_LICENCE, None)


def _tokens(state: dict, key: str, path, width: int) -> int:
    """How many tokens ``key`` (registers, storage tokens) holds: 0 or REGISTERS."""
    tokens = state.get(key)
    if tokens is None:
        return 0
    if tokens.ndim != 3 or tokens.shape[0] != 1 or tokens.shape[2] != width or tokens.shape[1] not in (0, REGISTERS):
        raise UsageError(f"{path}: {key} of shape {list(tokens.shape)}; the released models have "
                         f"[1, {REGISTERS}, {width}]")
    return tokens.shape[1]


def _square_pos_embed(state: dict, path, width: int) -> int:
    """The side of the patch grid DINOv2's ``pos_embed`` (CLS first) was made for, refused unless square:
    timm's filter would otherwise resample it without a word."""
    pos_embed = state.get("pos_embed")
    side = math.isqrt(pos_embed.shape[1] - 1) if pos_embed is not None and pos_embed.ndim == 3 else 0
    if side == 0 or pos_embed.shape[0] != 1 or pos_embed.shape[2] != width or pos_embed.shape[1] != 1 + side * side:
        shape = "none" if pos_embed is None else list(pos_embed.shape)
        raise UsageError(f"{path}: pos_embed {shape} is not [1, 1 + side^2, {width}], DINOv2's CLS and square grid")
    return side


def _attention_biases(state: dict, path) -> bool:
    """Whether the qkv biases of the queries or values are used (timm's ``_qkvb`` models take them; the others
    have none, as the distilled DINOv3 ViTs' are zero). A key bias that its ``bias_mask`` does not zero is
    refused: timm's DINOv3 models, like DINOv3's, fix it at 0."""
    used = False
    for name in (k for k in state if k.endswith(".attn.qkv.bias")):
        bias = state[name]
        if bias.ndim != 1 or bias.numel() % 3:
            return True  # a tensor of the wrong shape: the strict load reports it under timm's name
        q, k, v = bias.float().chunk(3)
        mask = state.get(name + "_mask")
        masked = mask is not None and mask.shape == bias.shape and bool((mask.float().chunk(3)[1] == 0).all())
        if not masked and bool(k.any()):
            raise UsageError(f"{path}: {name} has a key bias that no bias_mask zeroes; DINOv3's models (and timm's) "
                             "fix it at 0")
        used = used or bool(q.any()) or bool(v.any())
    return used


def native_img_size(release: Release, state: dict[str, torch.Tensor], path: Path | str = "the file") -> int:
    """The image side a release's weights are for: DINOv2's from its position embedding (518 px), DINOv3's
    (RoPE, any size) from timm's config (256 px)."""
    if release.family == "DINOv2":
        return _square_pos_embed(state, path, state["pos_embed"].shape[2]) * PATCH["DINOv2"]
    return int(release.cfg["input_size"][-1])


def to_timm(state: dict[str, torch.Tensor], release: Release) -> dict[str, torch.Tensor]:
    """``state`` in the names and layout of timm's ``release.arch``, by the checkpoint filter of the timm module
    that defines it, run against the model built on the meta device (no memory), at the file's own grid so
    that the filter resamples nothing."""
    if release.family == "DINOv3" and not release.arch.endswith("_qkvb"):  # zeros, which the bias-free model is
        state = {k: v for k, v in state.items() if not k.endswith(".attn.qkv.bias")}
    with torch.device("meta"):
        model = timm.create_model(release.arch, pretrained=False, num_classes=0,
                                  img_size=native_img_size(release, state))
    checkpoint_filter = sys.modules[type(model).__module__].checkpoint_filter_fn
    return checkpoint_filter(dict(state), model)


def timm_arch(state: dict[str, torch.Tensor]) -> str | None:
    """timm's DINOv2 or DINOv3 architecture of a state dict already in timm's names (timm's own weight files):
    DINOv2 by its layer scales and 14-pixel patches, DINOv3 by its Eva layout (``gamma_1``, registers, no
    position table) and 16-pixel patches; None for anything else."""
    weight = state.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        return None
    width, patch = weight.shape[0], weight.shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if patch == 14 and "blocks.0.ls1.gamma" in state and width in DINOV2_SIZES:
        size, standard_depth, _ = DINOV2_SIZES[width]
        registers = "_reg4" if "reg_token" in state else ""
        return f"vit_{size}_patch14{registers}_dinov2" if depth == standard_depth else None
    swiglu = "blocks.0.mlp.fc1_g.weight" in state
    if patch == 16 and "blocks.0.gamma_1" in state and "pos_embed" not in state and (width, swiglu) in DINOV3_SIZES:
        size, standard_depth = DINOV3_SIZES[(width, swiglu)]
        biases = "_qkvb" if "blocks.0.attn.q_bias" in state else ""
        return f"vit_{size}_patch16_dinov3{biases}" if depth == standard_depth else None
    return None

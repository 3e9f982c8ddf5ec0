"""Self-attention maps of a ViT's last block: the CLS query over the patch keys, per head (DINO's
visualize_attention), drawn as PNG heat maps, overlays and threshold masks.

The weights are read from the last block's own attention (:func:`last_block_forward`), so registers, DINOv3's
storage tokens and its RoPE are handled as the model handles them; the maps leave the prefix tokens out. The same
forward gives the final-norm patch tokens that ``--pca`` colours (sslkit.visualize.pca).

On a patch grid other than the trained one the position embedding is resampled either as timm does it
(antialiased bicubic to the exact grid) or as DINO's own code does (:func:`dino_resample_pos_embed`); the
weights are never changed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from sslkit import console
from sslkit.data.folders import decoded
from sslkit.engine.checkpoint import LoadedBackbone, load_backbone
from sslkit.engine.device import resolve_device
from sslkit.errors import UsageError
from sslkit.files import OutputFolder, unique_names
from sslkit.models.backbones import FeatureExtractor, is_vit, patch_size
from sslkit.models.posembed import RESAMPLINGS, dino_resample_pos_embed
from sslkit.settings import choice
from sslkit.visualize.pca import foreground_picture, patch_pca, pca_picture
from sslkit.visualize.settings import AttentionConfig

# viridis at ten evenly spaced points (matplotlib's default colour map), interpolated to 256 entries
_VIRIDIS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37),
], dtype=np.float64)
COLORMAP = np.stack(
    [np.interp(np.linspace(0, 9, 256), np.arange(10), _VIRIDIS[:, c]) for c in range(3)], axis=1
).round().astype(np.uint8)
PCA_PICTURES = ("pca.png", "pca-foreground.png")  # with --pca, per image


@torch.no_grad()
def last_block_forward(backbone: nn.Module, images: torch.Tensor,
                       pos_resample: str = "timm") -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of normalised ``images``: the last block's ``softmax(q k^T / sqrt(d))``, (B, heads, tokens,
    tokens), and the tokens after the final norm, (B, tokens, dim), prefix tokens first.

    The weights are the block's own: for this one forward its attention takes timm's unfused path, and a hook
    reads the probabilities where they leave the softmax (its ``attn_drop``, the identity in eval mode). So
    whatever the model does to q and k before (RoPE on the patch tokens of DINOv3, q/k norms, split q/v biases)
    is in them, and timm's fused kernel stays untouched in every other block.

    ``pos_resample`` says how the position embedding meets a patch grid other than the trained one: ``timm``
    (the backbone's own forward) or ``dino`` (:func:`dino_embed`)."""
    choice("pos_resample", pos_resample, RESAMPLINGS)
    attn = backbone.blocks[-1].attn
    if not hasattr(attn, "fused_attn") or not isinstance(getattr(attn, "attn_drop", None), nn.Module):
        raise UsageError(f"sslkit cannot read the attention weights of {type(attn).__name__} (not a timm ViT "
                         "attention)")
    captured = {}
    handle = attn.attn_drop.register_forward_hook(lambda module, args, out: captured.update(probs=out))
    fused, attn.fused_attn = attn.fused_attn, False
    try:
        if pos_resample == "dino":  # what forward_features does after its embedding
            tokens = backbone.norm(backbone.blocks(dino_embed(backbone, images)))
        else:
            tokens = backbone.forward_features(images)
    finally:
        attn.fused_attn = fused
        handle.remove()
    return captured["probs"].float(), tokens


def last_block_attention(backbone: nn.Module, images: torch.Tensor, pos_resample: str = "timm") -> torch.Tensor:
    """The last block's attention weights of :func:`last_block_forward`: (B, heads, tokens, tokens)."""
    return last_block_forward(backbone, images, pos_resample)[0]


def dino_embed(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tokens a timm ViT feeds its first block for ``images``, with the position embedding resampled by
    :func:`dino_resample_pos_embed` rather than by timm: what ``forward_features`` does before its blocks."""
    patch = patch_size(backbone)
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    tokens = backbone.patch_embed(images).reshape(len(images), grid[0] * grid[1], -1)  # NHWC when dynamic
    prefix = [t.expand(len(images), -1, -1) for t in (backbone.cls_token, backbone.reg_token) if t is not None]
    if backbone.no_embed_class:  # DeiT-3 style: the embedding covers the patches only
        tokens = torch.cat([*prefix, tokens + dino_resample_pos_embed(backbone.pos_embed, grid, 0)], dim=1)
    else:
        pos_embed = dino_resample_pos_embed(backbone.pos_embed, grid, backbone.num_prefix_tokens)
        tokens = torch.cat([*prefix, tokens], dim=1) + pos_embed
    return backbone.norm_pre(backbone.patch_drop(backbone.pos_drop(tokens)))


def choose_pos_resample(loaded: LoadedBackbone, requested: str | None = None) -> str:
    """``requested`` (dino or timm), or by default the way the weights were trained (``loaded.pos_resample``,
    sslkit.engine.checkpoint.pos_resample): dino for official DINO weights and DINOv2's without registers, local
    crops included; timm for everything else, DINOv2's with registers and sslkit runs included."""
    if requested is None:
        return loaded.pos_resample
    choice("pos_resample", requested, RESAMPLINGS)
    if requested == "dino" and getattr(loaded.module, "pos_embed", None) is None:
        raise UsageError(f"{loaded.source} has no learned position embedding; --pos-resample dino does not apply")
    return requested


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


def picture_names(heads: int, threshold: float | None, pca: bool = False) -> list[str]:
    """The PNGs written per image: those :func:`pictures` draws, in its order, then with ``pca`` the PCA's."""
    names = ["img.png", *(f"attn-head{h}.png" for h in range(heads)), "attn-mean.png", "overlay.png"]
    if threshold is not None:
        names += [*(f"mask-th{threshold:g}-head{h}.png" for h in range(heads)), f"mask-th{threshold:g}-mean.png"]
    return names + (list(PCA_PICTURES) if pca else [])


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


def compact_patch_features(tokens: torch.Tensor, prefix_tokens: int, image: Path) -> torch.Tensor:
    """One image's patch tokens (prefix tokens left out) as float16 on the CPU, 2 bytes a value, for the joint
    PCA that needs every image's before it can draw any."""
    features = tokens[prefix_tokens:].to(torch.float16).cpu()
    if not torch.isfinite(features).all():
        raise UsageError(f"the patch features of {image} are not finite in float16 (beyond 65504 or NaN), so "
                         "--pca cannot use them")
    return features


def write_pca_pictures(out: OutputFolder, folders: list[str], features: list[torch.Tensor],
                       grids: list[tuple[int, int]], patch: int, results: list[dict]) -> dict:
    """``pca.png`` and ``pca-foreground.png`` in each of ``folders`` (sslkit.visualize.pca), fitted jointly over
    all images; each image's row of ``results`` gets its number of foreground patches. Returns the PCA's
    settings and explained variances for attention.json."""
    fitted = patch_pca(features, grids)
    for folder, grid, colours, foreground, row in zip(folders, grids, fitted.colours, fitted.foreground, results):
        out.write(f"{folder}/pca.png", partial(save_png, pca_picture(colours, grid, patch)))
        out.write(f"{folder}/pca-foreground.png", partial(save_png, foreground_picture(foreground, grid, patch)))
        row["pca_foreground_patches"] = int(foreground.sum())
    return {"features": "the final-norm patch tokens (prefix tokens left out), kept in float16",
            "fitted_on_images": len(features), **fitted.summary}


def write_attention_maps(model: str, files: list[Path], out: str | Path, options: AttentionConfig) -> dict:
    """The pictures of every image of ``files`` under ``out/<name>/`` and the summary, also written to
    ``out/attention.json`` (see sslkit.api.attention)."""
    img_size, threshold, pca = options.img_size, options.threshold, options.pca
    names = dict(zip(files, unique_names(files)))
    out = OutputFolder(out, "attention", options.force)
    out.claim([f"{names[path]}/{png}" for path in files for png in picture_names(0, threshold, pca)]
              + ["attention.json"], files)  # what does not depend on the model, before it is loaded
    loaded = load_backbone(model, options.checkpoint_key, arch=options.arch, dynamic=True,
                           allow_partial=options.allow_partial)
    if not is_vit(loaded.module):
        raise UsageError(f"{model} is a {loaded.arch}, not a vision transformer: it has no attention maps")
    pos_resample = choose_pos_resample(loaded, options.pos_resample)
    torch_device = resolve_device(options.device)
    extractor = FeatureExtractor(loaded.module).to(torch_device)
    patch, prefix = patch_size(loaded.module), loaded.module.num_prefix_tokens
    heads = loaded.module.blocks[-1].attn.num_heads
    out.claim([f"{names[path]}/{png}" for path in files for png in picture_names(heads, threshold, pca)], files)
    results, folders, patch_features, grids = [], [], [], []
    for path, picture in console.track(decoded(files), len(files), "attention maps"):
        image = prepare_image(picture, img_size, patch)
        grid = (image.shape[-2] // patch, image.shape[-1] // patch)
        probs, tokens = last_block_forward(extractor.backbone, extractor.normalize(image[None].to(torch_device)),
                                           pos_resample)
        maps = cls_attention(probs, prefix, grid)[0].cpu()  # (heads, h, w)
        drawn = pictures(image.permute(1, 2, 0).numpy(), maps, patch, threshold)
        for png, array in zip(picture_names(heads, threshold), drawn):
            out.write(f"{names[path]}/{png}", partial(save_png, array))
        results.append({"image": str(path), "out": str(out.root / names[path]), "size": list(image.shape[-2:]),
                        "grid": list(grid), "heads": len(maps),
                        "central_mass": round(float(central_mass(maps.mean(dim=0))), 4)})
        if pca:
            folders.append(names[path])
            patch_features.append(compact_patch_features(tokens[0], prefix, path))
            grids.append(grid)
    summary = {
        "model": model, "description": loaded.description, "img_size": img_size, "patch_size": patch,
        "pos_resample": pos_resample, "threshold": threshold, "images": results,
        "mean_central_mass": round(sum(r["central_mass"] for r in results) / len(results), 4),
    }
    if pca:
        summary["pca"] = write_pca_pictures(out, folders, patch_features, grids, patch, results)
    out.write_json("attention.json", summary)
    return summary

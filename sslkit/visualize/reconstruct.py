"""MAE reconstructions: load an MAE with its decoder, mask an image, and draw the four-panel strip.

Panels: original | masked input (masked patches grey) | reconstruction | reconstruction with the visible
patches pasted back. Models trained with ``norm_pix_loss`` predict each patch standardised by its own mean
and variance; to draw them, the prediction is de-normalised with the *true* patch's statistics (which leaks
those two numbers per patch into the picture; the strip says so).
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw, ImageFont

from sslkit import config as cfg, console
from sslkit.data.folders import decoded
from sslkit.engine import checkpoint as ckpt, foreign, releases, timmdir
from sslkit.engine.device import resolve_device
from sslkit.errors import UsageError
from sslkit.files import OutputFolder, unique_names
from sslkit.methods.mae import HEAD_DIM, MAE, MAEConfig, patchify, unpatchify
from sslkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from sslkit.visualize.settings import ReconstructConfig

GREY = 128
PANEL_MIN = 192  # small images are enlarged (nearest, by a whole factor) so the panels stay readable
DECODER_FILES = "an sslkit MAE run, or an official mae_visualize_vit_*.pth or mae_pretrain_vit_*_full.pth"


def load_mae(spec: str, norm_pix: bool | None = None) -> tuple[MAE, str]:
    """An MAE with its decoder from a run directory, an sslkit MAE ``.safetensors`` or an official MAE ``.pth``.

    ``norm_pix``: whether the model predicts per-patch-normalised pixels (default: an sslkit run's setting; for
    ``.pth`` files, false for the pixel-loss ``visualize`` checkpoints and true otherwise).
    """
    if timmdir.folder_of(spec) is not None:
        raise UsageError(f"{spec} is a timm model folder, a backbone without MAE's decoder; reconstructions need "
                         f"{DECODER_FILES}")
    path = Path(spec)
    if path.is_dir():
        path = path / "checkpoints" / "last.safetensors"
    if not path.is_file():
        raise UsageError(f"model not found: {spec} (reconstructions need {DECODER_FILES})")
    if path.suffix in foreign.SUFFIXES:
        return _load_official(path, norm_pix)
    metadata = ckpt.read_metadata(path)
    if metadata.get("method") != "mae":
        raise UsageError(f"{spec} is a {metadata.get('method')} checkpoint; reconstructions need {DECODER_FILES}")
    options = cfg.build(MAEConfig, json.loads(metadata["config"])["mae"])
    if norm_pix is not None:
        options = dataclasses.replace(options, norm_pix_loss=norm_pix)
    model = MAE(options)
    ckpt.load_weights(model, ckpt.read_tensors(path, "model."), path)
    return model, f"mae {options.arch}, step {metadata.get('step', '?')}"


def _load_official(path: Path, norm_pix: bool | None) -> tuple[MAE, str]:
    data = foreign.read_torch_file(path)
    family = releases.released_family(data)
    if family is not None:
        raise UsageError(f"{path} is a {family} release, a backbone without MAE's decoder; reconstructions need "
                         f"{DECODER_FILES}")
    state = foreign.mae_state(data)
    if "decoder_embed.weight" not in state:
        raise UsageError(f"{path} holds an MAE encoder without its decoder; reconstructions need {DECODER_FILES}")
    encoder = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    decoder_dim = state["decoder_embed.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks."))
    if norm_pix is None:
        norm_pix = "visualize" not in path.name
    options = MAEConfig(arch=foreign.infer_vit_arch(encoder, path), img_size=foreign.native_img_size(encoder),
                        norm_pix_loss=norm_pix, decoder_dim=decoder_dim, decoder_depth=depth,
                        decoder_heads=max(1, decoder_dim // HEAD_DIM))  # heads are not stored: MAE's 32-d heads
    model = MAE(options)
    ckpt.load_weights(model, state, path)
    return model, f"{path.name} ({options.arch})"


def write_reconstructions(model: str, files: list[Path], out: str | Path, options: ReconstructConfig) -> dict:
    """The strip of every image of ``files`` as ``out/<name>.png`` and the summary, also written to
    ``out/reconstruct.json`` (see sslkit.api.reconstruct)."""
    names, seed = dict(zip(files, unique_names(files))), options.seed
    out = OutputFolder(out, "reconstruct", options.force)
    out.claim([f"{names[path]}.png" for path in files] + ["reconstruct.json"], files)
    mae, description = load_mae(model, options.norm_pix_loss)
    mask_ratio = mae.options.mask_ratio if options.mask_ratio is None else options.mask_ratio
    img_size = options.img_size or mae.options.img_size
    mae.set_grid(img_size)  # fixed sin-cos position embeddings: exact at any multiple of the patch size
    mae.check_mask_ratio(mask_ratio)
    mae = mae.to(resolve_device(options.device)).eval()
    norm_pix = mae.options.norm_pix_loss
    labels = ["original", f"masked {mask_ratio:.0%}", "reconstruction", "reconstruction + visible"]
    footer = "norm-pix model: predictions shown with each true patch's mean and std" if norm_pix else \
        "pixel-loss model: predictions shown as predicted"
    results = []
    for path, picture in console.track(decoded(files), len(files), "reconstructions"):
        shown = reconstruct(mae, prepare_image(picture, img_size), mask_ratio, seed)
        panels = [shown[k] for k in ("original", "masked", "reconstruction", "pasted")]
        target = out.write(f"{names[path]}.png", partial(strip(panels, labels, footer).save, format="PNG"))
        results.append({"image": str(path), "out": str(target), "masked_patches": int(shown["mask"].sum()),
                        "masked_mse": round(shown["loss"], 6)})
    summary = {
        "model": model, "description": description, "img_size": img_size, "patch_size": mae.patch,
        "mask_ratio": mask_ratio, "seed": seed, "norm_pix_loss": norm_pix, "images": results,
        "mean_masked_mse": round(sum(r["masked_mse"] for r in results) / len(results), 6),
    }
    out.write_json("reconstruct.json", summary)
    return summary


def prepare_image(image: Image.Image, img_size: int) -> torch.Tensor:
    """uint8 (3, S, S): short side resized to ``img_size`` (bicubic), centre crop."""
    tensor = TF.pil_to_tensor(image)
    tensor = TF.resize(tensor, img_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(tensor, img_size)


@torch.no_grad()
def reconstruct(model: MAE, image: torch.Tensor, mask_ratio: float, seed: int) -> dict:
    """Mask ``image`` (uint8 (3, S, S)) with the seed's noise and reconstruct it.

    Returns uint8 HWC arrays ``original``, ``masked``, ``reconstruction``, ``pasted``, the ``mask`` (L,) and the
    masked-patch ``loss`` (the training loss: against normalised patches for norm-pix models).
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same seed masks the same patches on any device
    loss, prediction, mask, x = model.forward_masked(image[None].to(device), mask_ratio, generator)
    prediction, mask = prediction.float().cpu(), mask.cpu()
    if model.options.norm_pix_loss:  # back to normalised pixels with each true patch's mean and std
        target = patchify(x.float(), model.patch).cpu()
        prediction = prediction * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    # to 0-255 pixel values; a patch's values run (row, column, channel), so the channel statistics repeat
    mean, std = (torch.tensor(values).repeat(model.patch**2) for values in (IMAGENET_MEAN, IMAGENET_STD))
    predicted = (prediction * std + mean) * 255
    original, hidden = patchify(image[None].float(), model.patch), mask[..., None]
    panels = {"masked": original * (1 - hidden) + GREY * hidden, "reconstruction": predicted,
              "pasted": original * (1 - hidden) + predicted * hidden}
    images = {name: _to_uint8(unpatchify(p, model.patch, model.grid)) for name, p in panels.items()}
    return {"original": image.permute(1, 2, 0).numpy(), **images, "mask": mask[0], "loss": float(loss)}


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return pixels[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def strip(panels: list[np.ndarray], labels: list[str], footer: str) -> Image.Image:
    """Panels side by side (enlarged to >= 192 px by a whole factor), labels above, a footer line below."""
    side = panels[0].shape[0]
    scale = max(1, math.ceil(PANEL_MIN / side))
    panel, gap, band = side * scale, 4, 20
    canvas = Image.new("RGB", (len(panels) * panel + (len(panels) - 1) * gap, panel + 2 * band), "white")
    draw, font = ImageDraw.Draw(canvas), _font()
    for i, (array, label) in enumerate(zip(panels, labels)):
        left = i * (panel + gap)
        canvas.paste(Image.fromarray(array).resize((panel, panel), Image.NEAREST), (left, band))
        draw.text((left + 2, 3), label, fill="black", font=font)
    draw.text((2, band + panel + 3), footer, fill="black", font=font)
    return canvas


def strip_size(img_size: int, panels: int = 4) -> tuple[int, int]:
    """(width, height) of the PNG that :func:`strip` draws for ``img_size`` images."""
    panel = img_size * max(1, math.ceil(PANEL_MIN / img_size))
    return panels * panel + (panels - 1) * 4, panel + 40


def _font():
    try:
        return ImageFont.load_default(size=13)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()

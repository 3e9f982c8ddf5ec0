"""sslkit reconstruct MODEL IMAGE... --out DIR: MAE masked-patch reconstructions as PNG strips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import Device, JsonOut, OutputForce, Quiet, examples, handle_errors, write_json


def reconstruct(
    model: Annotated[str, typer.Argument(
        help="An MAE with its decoder: a run directory, an sslkit MAE .safetensors, or an official "
             "mae_visualize_vit_*.pth / mae_pretrain_vit_*_full.pth.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder: one PNG strip per image, and reconstruct.json.")],
    mask_ratio: Annotated[Optional[float], typer.Option(
        help="Share of patches hidden from the encoder (default: the model's, 0.75).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random mask: the same seed hides the same patches.")] = 0,
    img_size: Annotated[Optional[int], typer.Option(
        help="Side the images are resized and centre-cropped to (default: the model's training size; any multiple of "
             "the patch size).")] = None,
    norm_pix_loss: Annotated[Optional[bool], typer.Option(
        "--norm-pix-loss/--no-norm-pix-loss",
        help="Whether the model predicts per-patch-normalised pixels (default: from the run; for .pth files off for "
             "mae_visualize_* and on otherwise).")] = None,
    device: Device = None,
    force: OutputForce = False,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """MAE reconstructions: original | masked | reconstruction | reconstruction with the visible patches."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        results = api.reconstruct(model, images, out, mask_ratio=mask_ratio, seed=seed, img_size=img_size,
                                  norm_pix=norm_pix_loss, device=device or "auto", force=force)
        write_json(json_path, results)
        if not quiet:
            _show(results)


HELP = (
    "Masked-patch reconstructions of an MAE (He et al. 2022): for each image a PNG strip with the original, the "
    "masked input (hidden patches grey), the decoder's reconstruction, and the reconstruction with the visible "
    "patches pasted back.\n\n"
    "Prints and writes (reconstruct.json, --json) the masked-patch MSE per image: the training loss, so against "
    "per-patch-normalised pixels for norm-pix models. Those models' predictions are drawn with each true "
    "patch's mean and std (the strip says so); the official mae_visualize_* files are pixel-loss models."
)
EPILOG = examples(
    "sslkit reconstruct runs/mae photos/ --out recon/",
    "sslkit reconstruct runs/mae photos/cat.jpg --out recon/ --mask-ratio 0.5 --seed 3",
    "sslkit reconstruct mae_visualize_vit_large.pth val/ --out recon/ --img-size 224 --json recon.json",
)


def _show(results: dict) -> None:
    console.stdout.print(
        f"reconstructions by {results['description']}, mask ratio {results['mask_ratio']:g}, seed {results['seed']}, "
        f"written to {Path(results['images'][0]['out']).parent}",
        soft_wrap=True, markup=False,
    )
    table = Table()
    for column in ("image", "masked patches", "masked-patch MSE"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for row in results["images"]:
        table.add_row(Path(row["image"]).name, str(row["masked_patches"]), f"{row['masked_mse']:.4f}")
    console.stdout.print(table)
    target = "per-patch-normalised pixels" if results["norm_pix_loss"] else "normalised pixels"
    console.stdout.print(f"mean masked-patch MSE: {results['mean_masked_mse']:.4f} (against {target})")

"""sslkit reconstruct MODEL IMAGE... --out DIR: MAE masked-patch reconstructions as PNG strips."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from sslkit import console
from sslkit.cli.common import examples, images_command
from sslkit.visualize.settings import ReconstructConfig

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


reconstruct = images_command(
    "reconstruct", ReconstructConfig,
    "An MAE with its decoder: a run directory, an sslkit MAE .safetensors, or an official mae_visualize_vit_*.pth / "
    "mae_pretrain_vit_*_full.pth.",
    "Output folder: one PNG strip per image, and reconstruct.json.", _show)

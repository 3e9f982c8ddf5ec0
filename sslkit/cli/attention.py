"""sslkit attention MODEL IMAGE... --out DIR: last-block self-attention maps of a ViT as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import AllowPartial, Device, JsonOut, OutputForce, Quiet, examples, handle_errors, write_json


def attention(
    model: Annotated[str, typer.Argument(
        help="A ViT: a run directory, an sslkit .safetensors, an official DINO / MAE .pth, or timm:ARCH.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder: one sub-folder of PNGs per image, and attention.json.")],
    img_size: Annotated[int, typer.Option(
        help="Short side the images are resized to before cropping to multiples of the patch size.")] = 480,
    threshold: Annotated[Optional[float], typer.Option(
        help="Also draw the masks keeping this share of the attention mass (DINO uses 0.6).")] = None,
    checkpoint_key: Annotated[str, typer.Option(help="teacher (the EMA network, default) or student.")] = "teacher",
    arch: Annotated[Optional[str], typer.Option(
        help="timm name of a .pth file's model (inferred for ViT-S/B/L).")] = None,
    pos_resample: Annotated[Optional[str], typer.Option(
        help="How the position embedding is resampled to an image's patch grid: dino (bicubic with DINO's +0.1 "
             "scale factors, as DINO's visualize_attention.py does) or timm (antialiased bicubic to the exact "
             "grid). Default: dino for official DINO weights, which were trained with it, timm otherwise. The "
             "maps of non-square images differ a lot between the two.")] = None,
    allow_partial: AllowPartial = False,
    device: Device = None,
    force: OutputForce = False,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Self-attention of the CLS token over the patches in the last block, per head, as PNG heat maps."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        results = api.attention(model, images, out, img_size=img_size, threshold=threshold,
                                checkpoint_key=checkpoint_key, arch=arch, pos_resample=pos_resample,
                                allow_partial=allow_partial, device=device or "auto", force=force)
        write_json(json_path, results)
        if not quiet:
            _show(results)


HELP = (
    "Self-attention maps of a vision transformer (DINO's visualize_attention): for each image, the last "
    "block's attention of the CLS query over the patch tokens, per head and averaged over heads.\n\n"
    "Writes per image img.png (the resized input), attn-head{j}.png, attn-mean.png and overlay.png (heat map "
    "over the image), and with --threshold the masks that keep that share of the attention mass. "
    "attention.json gives each map's share of attention in the central quarter of the image (0.25 for a "
    "uniform map). Works with sslkit DINO and MAE checkpoints and with official DINO backbone .pth files."
)
EPILOG = examples(
    "sslkit attention runs/dino photos/cat.jpg --out attn/",
    "sslkit attention dino_deitsmall8_pretrain.pth val/ --out attn/ --threshold 0.6 --img-size 480",
    "sslkit attention dino_deitsmall16_pretrain.pth wide.jpg --out attn-timm/ --pos-resample timm",
    "sslkit attention timm:vit_small_patch16_224 photos/ --out attn-random/ --json random.json",
)


def _show(results: dict) -> None:
    console.stdout.print(
        f"attention of {results['description']}, patch {results['patch_size']}, position embedding resampled "
        f"as {results['pos_resample']} does, written to "
        f"{Path(results['images'][0]['out']).parent}",
        soft_wrap=True, markup=False,
    )
    table = Table()
    for column in ("image", "size", "patches", "heads", "central mass %"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for row in results["images"]:
        table.add_row(Path(row["image"]).name, "x".join(map(str, row["size"])), "x".join(map(str, row["grid"])),
                      str(row["heads"]), f"{100 * row['central_mass']:.1f}")
    console.stdout.print(table)
    console.stdout.print(f"mean central mass: {100 * results['mean_central_mass']:.1f} % (uniform: 25 %)")

"""sslkit attention MODEL IMAGE... --out DIR: last-block self-attention maps of a ViT as PNGs."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from sslkit import console
from sslkit.cli.common import examples, images_command
from sslkit.visualize.settings import AttentionConfig

HELP = (
    "Self-attention maps of a vision transformer (DINO's visualize_attention): for each image, the last "
    "block's attention of the CLS query over the patch tokens, per head and averaged over heads.\n\n"
    "Writes per image img.png (the resized input), attn-head{j}.png, attn-mean.png and overlay.png (heat map "
    "over the image), and with --threshold the masks that keep that share of the attention mass. "
    "attention.json gives each map's share of attention in the central quarter of the image (0.25 for a "
    "uniform map). Works with sslkit DINO and MAE checkpoints and with official DINO backbone .pth files.\n\n"
    "With --pca, also pca.png per image (DINOv2's figure 1): a first PCA of the final-norm patch features "
    "of all images together splits the foreground from the background (pca-foreground.png), and the first "
    "three components of a second PCA over the foreground patches of all images are red, green and blue, so "
    "that alike parts get alike colours in every image. Give the images of one run together: the colours "
    "depend on all of them."
)
EPILOG = examples(
    "sslkit attention runs/dino photos/cat.jpg --out attn/",
    "sslkit attention dino_deitsmall8_pretrain.pth val/ --out attn/ --threshold 0.6 --img-size 480",
    "sslkit attention dino_deitsmall16_pretrain.pth wide.jpg --out attn-timm/ --pos-resample timm",
    "sslkit attention dinov2_vits14_reg4_pretrain.pth horses/ --out pca/ --pca --img-size 448",
    "sslkit attention timm:vit_small_patch16_224 photos/ --out attn-random/ --json random.json",
)


def _show(results: dict) -> None:
    console.stdout.print(
        f"attention of {results['description']}, patch {results['patch_size']}, position embedding resampled "
        f"as {results['pos_resample']} does, written to "
        f"{Path(results['images'][0]['out']).parent}",
        soft_wrap=True, markup=False,
    )
    pca = "pca" in results
    table = Table()
    for column in ("image", "size", "patches", "heads", "central mass %", *(["PCA foreground"] if pca else [])):
        table.add_column(column, justify="left" if column == "image" else "right")
    for row in results["images"]:
        foreground = [str(row["pca_foreground_patches"])] if pca else []
        table.add_row(Path(row["image"]).name, "x".join(map(str, row["size"])), "x".join(map(str, row["grid"])),
                      str(row["heads"]), f"{100 * row['central_mass']:.1f}", *foreground)
    console.stdout.print(table)
    console.stdout.print(f"mean central mass: {100 * results['mean_central_mass']:.1f} % (uniform: 25 %)")
    if pca:
        shares = ", ".join(f"{100 * share:.1f}" for share in results["pca"]["explained_variance"])
        console.stdout.print(f"PCA colours (pca.png): red, green, blue explain {shares} % of the foreground "
                             "patches' variance", soft_wrap=True, markup=False)


attention = images_command(
    "attention", AttentionConfig,
    "A ViT: a run directory, an sslkit .safetensors, an official DINO / MAE .pth, or timm:ARCH.",
    "Output folder: one sub-folder of PNGs per image, and attention.json.", _show)

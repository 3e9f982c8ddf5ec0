"""Figure of `sslkit attention --pca` outputs: one column per image; the input, then for each folder the
foreground the first PCA kept and the PCA colours.

    python docs/examples/pca_figure.py OUT.png pca-mae/ pca-random/ --labels "MAE ViT-Ti" "random init"

Each folder is an `sslkit attention --pca --out` folder; the images shown are those present in all of them.
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

CELL, PAD, LABEL = 160, 4, 14


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--max-images", type=int, default=6)
    args = parser.parse_args()
    labels = args.labels or [f.name for f in args.folders]
    names = sorted(set.intersection(*({p.name for p in f.iterdir() if p.is_dir()} for f in args.folders)))
    names = names[: args.max_images]
    rows = [("image", args.folders[0], "img.png")]
    for folder, label in zip(args.folders, labels):
        rows += [(f"{label}: foreground (first PCA > 0)", folder, "pca-foreground.png"),
                 (f"{label}: PCA colours", folder, "pca.png")]
    sheet = Image.new("RGB", (len(names) * (CELL + PAD), len(rows) * (LABEL + CELL + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, folder, png) in enumerate(rows):
        top = row * (LABEL + CELL + PAD)
        draw.text((2, top + 1), label, fill="black")
        for column, name in enumerate(names):
            tile = Image.open(folder / name / png).convert("RGB").resize((CELL, CELL), Image.NEAREST)
            sheet.paste(tile, (column * (CELL + PAD), top + LABEL))
    sheet.save(args.out, optimize=True)


if __name__ == "__main__":
    main()

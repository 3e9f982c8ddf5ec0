"""Side-by-side figure of `sslkit attention` outputs: per image, the input, then each model's overlay.

    python docs/examples/attention_figure.py OUT.png attn-dino/ attn-random/ --labels DINO "random init"

Each folder is an `sslkit attention --out` folder; the images shown are those present in all of them.
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

CELL, PAD, LABEL = 128, 4, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--max-images", type=int, default=6)
    parser.add_argument("--map", default="overlay.png", help="which PNG of each image folder to show")
    args = parser.parse_args()
    labels = args.labels or [f.name for f in args.folders]
    names = sorted(set.intersection(*({p.name for p in f.iterdir() if p.is_dir()} for f in args.folders)))
    names = names[: args.max_images]
    columns = 1 + len(args.folders)
    sheet = Image.new("RGB", (columns * (CELL + PAD), LABEL + len(names) * (CELL + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(["image", *labels]):
        draw.text((column * (CELL + PAD) + 2, 2), label, fill="black")
    for row, name in enumerate(names):
        tiles = [args.folders[0] / name / "img.png", *(f / name / args.map for f in args.folders)]
        for column, path in enumerate(tiles):
            tile = Image.open(path).convert("RGB").resize((CELL, CELL), Image.NEAREST)
            sheet.paste(tile, (column * (CELL + PAD), LABEL + row * (CELL + PAD)))
    sheet.save(args.out)


if __name__ == "__main__":
    main()

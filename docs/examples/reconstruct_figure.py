"""Stack `sslkit reconstruct` strips into one figure, optionally with a second model's strips below each.

    python docs/examples/reconstruct_figure.py OUT.png recon-a/ [recon-b/] --max-images 4

Each folder is an `sslkit reconstruct --out` folder; the images shown are those present in all of them, in
name order, one strip per image and folder (the strips already carry their labels and footers).
"""

import argparse
from pathlib import Path

from PIL import Image

GAP = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--max-images", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.75, help="resize the figure by this factor")
    args = parser.parse_args()
    names = sorted(set.intersection(*({p.name for p in f.glob("*.png")} for f in args.folders)))[: args.max_images]
    strips = [Image.open(folder / name).convert("RGB") for name in names for folder in args.folders]
    width = max(s.width for s in strips)
    sheet = Image.new("RGB", (width, sum(s.height for s in strips) + GAP * (len(strips) - 1)), "white")
    top = 0
    for strip in strips:
        sheet.paste(strip, (0, top))
        top += strip.height + GAP
    if args.scale != 1:
        sheet = sheet.resize((round(sheet.width * args.scale), round(sheet.height * args.scale)), Image.LANCZOS)
    sheet.save(args.out)


if __name__ == "__main__":
    main()

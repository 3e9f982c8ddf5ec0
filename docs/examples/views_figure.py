"""Draw BYOL's two view distributions for a few images: python docs/examples/views_figure.py FOLDER OUT.png.

Each row: the centre crop, then three draws of view T (always blurred) and three of T' (rarely blurred,
sometimes solarised), exactly as `sslkit pretrain byol` produces them at --img-size.
"""

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from sslkit.data.folders import ImageFolder
from sslkit.data.views import byol_plan, cpu_view, eval_transform


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    size, pad, top = args.img_size, 6, 22
    view_t, view_t2 = (cpu_view(view) for view in byol_plan(size))  # T: blur always; T': blur 0.1, solarize 0.2
    images = ImageFolder(args.folder)
    columns = 1 + 2 * args.draws
    sheet = Image.new("RGB", (columns * (size + pad) + pad, top + len(images) * (size + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    titles = ["image"] + ["view T"] * args.draws + ["view T'"] * args.draws
    for column, title in enumerate(titles):
        draw.text((pad + column * (size + pad), 5), title, fill="black")
    torch.manual_seed(1)
    for row in range(len(images)):
        image, _ = images[row]
        tiles = [eval_transform(size)(image)] + [view_t(image) for _ in range(args.draws)]
        tiles += [view_t2(image) for _ in range(args.draws)]
        for column, tile in enumerate(tiles):
            tile_image = Image.fromarray(tile.permute(1, 2, 0).numpy())
            sheet.paste(tile_image, (pad + column * (size + pad), top + row * (size + pad)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)


if __name__ == "__main__":
    main()

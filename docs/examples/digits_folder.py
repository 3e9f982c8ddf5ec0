"""Write scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) as an image folder.

    python docs/examples/digits_folder.py OUT   ->   OUT/train/<digit>/*.png, OUT/val/<digit>/*.png

Images are upscaled to 32x32 (bicubic) and split 80/20 per class with a fixed seed. Nothing is downloaded.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(out: Path) -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    val = np.zeros(len(digits.target), dtype=bool)
    for label in range(10):
        members = np.flatnonzero(digits.target == label)
        val[rng.choice(members, size=len(members) // 5, replace=False)] = True
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = out / ("val" if val[i] else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((255 - pixels * 255 / 16).astype(np.uint8))  # dark ink on white paper
        image.resize((32, 32), Image.BICUBIC).convert("RGB").save(folder / f"{i:04d}.png")
    print(f"{out}: {(~val).sum()} train and {val.sum()} val images of 10 digits")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "digits"))

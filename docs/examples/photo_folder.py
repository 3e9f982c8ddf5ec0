"""Write scikit-learn's two bundled photos (a temple in China, a flower; 640 x 427) as demo inputs.

    python docs/examples/photo_folder.py OUT   ->   OUT/crops/*.png (training crops), OUT/photos/*.jpg

The crops are random squares of 96-427 px from the left three quarters of each photo, resized to 96 px, with
a fixed seed: what `make demo` pretrains MAE on. The two whole photos are what it then reconstructs and draws
attention maps of; their right quarters were never seen in training. Nothing is downloaded.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

CROPS_PER_PHOTO = 160


def main(out: Path) -> None:
    photos = load_sample_images()
    rng = np.random.default_rng(0)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    for path, pixels in zip(photos.filenames, photos.images):
        name = Path(path).stem
        photo = Image.fromarray(pixels)
        photo.save(out / "photos" / f"{name}.jpg", quality=95)
        height, width = pixels.shape[:2]
        seen = int(width * 0.75)
        for i in range(CROPS_PER_PHOTO):
            side = int(rng.integers(96, height + 1))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, max(1, seen - side) + 1))
            crop = photo.crop((left, top, left + side, top + side)).resize((96, 96), Image.BICUBIC)
            crop.save(out / "crops" / f"{name}_{i:03d}.png")
    print(f"{out}: {2 * CROPS_PER_PHOTO} training crops and 2 photos")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "photos"))

"""Datasets over folders of images: labelled (one sub-folder per class) or not (every image, recursively).

Images are read with Pillow and converted to RGB. Files that cannot be opened are left out when the folder
is listed, with one warning that counts them; a file that fails later while decoding is replaced by the
next image so that a long run never dies on one bad file.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from sslkit import console
from sslkit.errors import UsageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        ImageOps.exif_transpose(image, in_place=True)  # photos stored rotated carry an EXIF orientation
        return image.convert("RGB")


class ImageFolder(Dataset):
    """Images under ``root``; with ``labelled`` each immediate sub-folder is a class.

    An item is an index, or ``(index, seed)``: the seed fixes the random augmentation of that sample, so a
    run's data is the same whatever the number of workers and whether or not it was resumed mid-epoch.
    Returns ``(transform(image), label)`` with label -1 for unlabelled folders.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, labelled: bool = False):
        self.root = Path(root)
        self.transform = transform
        files, labels, self.classes = _scan(self.root, labelled)
        keep = _readable(files)
        self.files = [f for f, ok in zip(files, keep) if ok]
        self.labels = [y for y, ok in zip(labels, keep) if ok]
        if not self.files:
            raise UsageError(f"no readable images in {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self._load(index)
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with _seeded(seed):
                    image = self.transform(image)
        return image, self.labels[index]

    def labels_in(self, reference: "ImageFolder") -> torch.Tensor:
        """This folder's labels as indices of ``reference``'s classes, matched by folder name (val -> train)."""
        unknown = sorted(set(self.classes) - set(reference.classes))
        if unknown:
            raise UsageError(f"classes of {self.root} missing from {reference.root}: {', '.join(unknown[:5])}")
        index = {name: i for i, name in enumerate(reference.classes)}
        return torch.tensor([index[self.classes[y]] for y in self.labels])

    def keep(self, indices: list[int]) -> None:
        """Restrict the data set to the items at ``indices`` (e.g. a labelled fraction)."""
        self.files = [self.files[i] for i in indices]
        self.labels = [self.labels[i] for i in indices]

    def _load(self, index: int) -> Image.Image:
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                return load_rgb(path)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                print(f"warning: skipping unreadable image {path}: {error}", file=sys.stderr)
        raise UsageError(f"no image in {self.root} can be decoded")


@contextmanager
def _seeded(seed: int):
    """torch, random and numpy seeded for one sample's augmentation (timm's RandAugment draws from all three),
    their previous states restored afterwards."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def balanced_subset(labels: list[int], fraction: float, seed: int) -> list[int]:
    """A seeded, class-balanced subset: ``fraction`` of each class's items (at least one), in data set order."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    chosen = []
    for label in sorted(by_class):
        items = by_class[label]
        count = max(1, round(fraction * len(items)))
        order = torch.randperm(len(items), generator=generator)[:count]
        chosen += [items[i] for i in order.tolist()]
    return sorted(chosen)


def _scan(root: Path, labelled: bool) -> tuple[list[Path], list[int], list[str]]:
    if not root.exists():
        raise UsageError(f"folder not found: {root}")
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    if not labelled:
        files = images_under(root)
        if not files:
            raise UsageError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files, [-1] * len(files), []
    files, labels, classes = [], [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        found = images_under(class_dir)
        if found:
            labels += [len(classes)] * len(found)
            classes.append(class_dir.name)
            files += found
    if not classes:
        raise UsageError(f"no class sub-folders with images in {root} (expected {root}/<class>/<image>)")
    return files, labels, classes


def images_under(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs.sort()
        found += [Path(directory, n) for n in sorted(names) if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def _readable(files: list[Path]) -> list[bool]:
    """Whether each file opens as an image (header only: cheap enough for a million files)."""
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        keep = list(pool.map(_opens, files, chunksize=256))
    bad = [f for f, ok in zip(files, keep) if not ok]
    if bad:
        names = ", ".join(str(f) for f in bad[:3]) + (", ..." if len(bad) > 3 else "")
        console.warn(f"skipped {len(bad)} unreadable image file(s): {names}")
    return keep


def _opens(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return image.width > 0 and image.height > 0
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return False

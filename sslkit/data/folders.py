"""Datasets over folders of images: labelled (one sub-folder per class) or not (every image, recursively).

Images are read with Pillow and converted to RGB. Files that cannot be opened are left out when the folder
is listed, with one warning that counts them (and one for folders that cannot be read); a file that fails
later while decoding is replaced by the next image so that a long run never dies on one bad file.
"""

from __future__ import annotations

import copy
import os
import random
import stat
from collections.abc import Callable, Iterable, Iterator
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
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scaled to 8 bits, not clipped at 255
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
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
        problems = _problems(files)
        self.files = [f for f, p in zip(files, problems) if p is None]
        self.labels = [y for y, p in zip(labels, problems) if p is None]
        bad = [(f, p) for f, p in zip(files, problems) if p]
        if not self.files:
            raise UsageError(f"no readable images in {self.root}: {_listed(bad)}")
        if bad:
            console.warn(f"skipped {len(bad)} unreadable image file(s): {_listed(bad)}")

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

    def subset(self, indices: list[int]) -> "ImageFolder":
        """A copy holding only the items at ``indices``; this folder is unchanged."""
        part = copy.copy(self)
        part.keep(indices)
        return part

    def _load(self, index: int) -> Image.Image:
        for offset in range(len(self.files)):
            image = load_or_skip(self.files[(index + offset) % len(self.files)])
            if image is not None:
                return image
        raise UsageError(f"no image in {self.root} can be decoded")


def load_or_skip(path: Path) -> Image.Image | None:
    """``load_rgb(path)``, or None with a warning (once per file and process, not once per epoch) when the
    file fails to decode, for whatever reason: Pillow raises SyntaxError, struct.error, IndexError, ... as
    well as OSError for some broken files."""
    try:
        return load_rgb(path)
    except Exception as error:
        if path not in _WARNED:
            _WARNED.add(path)
            console.warn(f"skipping an image that fails to decode, {shown(path)}: {_why(error)}")
        return None


def decoded(files: Iterable[Path]) -> Iterator[tuple[Path, Image.Image]]:
    """``(path, RGB image)`` for each of ``files`` that decodes, in order; the others are skipped with
    ``load_or_skip``'s warning. Raises UsageError at the end when none of them decodes."""
    files = list(files)
    count = 0
    for path in files:
        image = load_or_skip(path)
        if image is not None:
            count += 1
            yield path, image
    if count == 0:
        raise UsageError(f"none of the {len(files)} images can be decoded")


_WARNED: set[Path] = set()


def shown(path: Path | str) -> str:
    """A path printable on any terminal as one line: bytes that are not UTF-8 (legal in Linux file names) and
    control characters (a newline, ANSI escapes) as escapes."""
    return console.printable(str(path))


def _why(error: Exception) -> str:
    return shown(str(error) or type(error).__name__)


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


def held_out_folds(labels: list[int], folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """A seeded, class-balanced split into ``folds`` (fit, held out) pairs for cross-validation: each class's
    items are shuffled and dealt to the folds in turn, so every item is held out exactly once and each fold holds
    out about 1 / ``folds`` of every class; a class with a single item is never held out. Lists in data set order."""
    generator = torch.Generator().manual_seed(seed + 7919)  # not the draw balanced_subset made with the same seed
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    fold_of = [-1] * len(labels)
    for label in sorted(by_class):
        items = by_class[label]
        if len(items) > 1:
            for position, i in enumerate(torch.randperm(len(items), generator=generator).tolist()):
                fold_of[items[i]] = position % folds
    return [([i for i, f in enumerate(fold_of) if f != fold], [i for i, f in enumerate(fold_of) if f == fold])
            for fold in range(folds)]


def _scan(root: Path, labelled: bool) -> tuple[list[Path], list[int], list[str]]:
    try:
        is_folder = stat.S_ISDIR(os.stat(root).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"folder not found: {root}") from None
    except OSError as error:  # e.g. a parent folder that may not be searched
        raise UsageError(f"cannot read {shown(root)} ({error.strerror})") from None
    if not is_folder:
        raise UsageError(f"not a folder: {root}")
    if not labelled:
        files = images_under(root)
        if not files:
            raise UsageError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files, [-1] * len(files), []
    try:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as error:
        raise UsageError(f"cannot read {shown(root)} ({error.strerror})") from None
    files, labels, classes, unreadable = [], [], [], []
    for class_dir in class_dirs:
        found, bad_folders = _walk(class_dir)
        unreadable += bad_folders
        if found:
            labels += [len(classes)] * len(found)
            classes.append(class_dir.name)
            files += found
    _warn_unreadable_folders(unreadable)
    if not classes:
        raise UsageError(f"no class sub-folders with images in {root} (expected {root}/<class>/<image>)")
    return files, labels, classes


def images_under(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively and sorted; symbolic links are followed, each real folder
    is read once (a link back up the tree is no endless loop), and only regular files count (a named pipe
    called x.png would block the reader). Sub-folders that cannot be read are left out with one warning;
    ``folder`` itself unreadable is a UsageError."""
    found, unreadable = _walk(folder)
    if unreadable and unreadable[0][0] == Path(folder):  # the walk reads the top folder first
        raise UsageError(f"cannot read {shown(folder)} ({unreadable[0][1]})")
    _warn_unreadable_folders(unreadable)
    return found


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, in order) under named folders."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = images_under(item)
            if not found:
                raise UsageError(f"no images in {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise UsageError(f"image not found: {item}")
    if not files:
        raise UsageError("no images given")
    return files


def _walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files under ``folder`` and the folders that could not be read, with why."""
    found, seen, unreadable = [], set(), []

    def note(error: OSError) -> None:
        unreadable.append((Path(error.filename), error.strerror or str(error)))

    for directory, subdirs, names in os.walk(folder, onerror=note, followlinks=True):
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            subdirs.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory, name)
            if path.suffix.lower() in IMAGE_EXTENSIONS and _regular_or_unreadable(path):
                found.append(path)
    return found, unreadable


def _regular_or_unreadable(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling link, a name too long for the OS: kept, to be counted as unreadable
        return True


def _warn_unreadable_folders(unreadable: list[tuple[Path, str]]) -> None:
    if unreadable:
        console.warn(f"skipped {len(unreadable)} unreadable folder(s): {_listed(unreadable)}")


def _problems(files: list[Path]) -> list[str | None]:
    """Why each file is not a whole image (None: it is), from its header and its last bytes: cheap enough
    for a million files."""
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(_problem, files, chunksize=256))


def _listed(bad: list[tuple[Path, str]], shown_at_most: int = 3) -> str:
    named = "; ".join(f"{shown(f)} ({p})" for f, p in bad[:shown_at_most])
    return named + (f"; and {len(bad) - shown_at_most} more" if len(bad) > shown_at_most else "")


def _problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None."""
    try:
        with Image.open(path) as image:
            if image.width < 1 or image.height < 1:
                return "no pixels"
            image_format = image.format
        return None if _complete(path, image_format) else "truncated"
    except Image.DecompressionBombError as error:  # Pillow's limit, left as the user set it
        return f"over Pillow's decompression-bomb limit: {str(error).split(', could be')[0]}"
    except UnidentifiedImageError:
        return "not an image" if path.stat().st_size else "empty file"
    except OSError as error:  # permissions, a dangling link
        return error.strerror or _why(error)
    except Exception as error:  # ValueError, and SyntaxError, struct.error, ... from some broken headers
        return _why(error)


def _complete(path: Path, image_format: str | None) -> bool:
    """JPEG and PNG files end with their end marker; a file cut short (an interrupted copy) does not."""
    end = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(image_format or "")
    if end is None:
        return True
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 1024))
        return end in handle.read()

"""The decoded store: a data set decoded once into uint8 images on one fixed canvas, cached on disk, mapped on reuse.

Training then crops, flips and colours on the device with no per-image CPU work (sslkit.data.geometry). Every
image is kept landscape (a portrait one is stored transposed, with a flag), its short side scaled to the store's
``short_side`` (never upscaled) and its long side to at most the canvas width; the rest of the canvas is zero.

The cache holds two files per store: ``<key>.npy`` (the canvas, memory-mapped) and ``<key>.json`` (sizes, flags,
labels, files), written in that order, the .json last: its presence marks a complete store. The key hashes the
files' paths, sizes and modification times, the labels and the geometry, so an edited data set is decoded again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from time import sleep

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import ExifTags, Image, ImageOps

from sslkit import console
from sslkit.data import folders
from sslkit.errors import UsageError, WriteFailed
from sslkit.files import fsync_dir, process_alive, write_atomic, write_failed

FORMAT = "sslkit-store/1"
STORE_ENV = "SSLKIT_STORE_DIR"
WAIT_SECONDS = 0.5  # how often a local rank other than 0 looks for the store rank 0 builds
DISK_MARGIN = 64 << 20  # free space left over after a store is written: the metadata, and the disk never full
_TEMPORARY = re.compile(r"[0-9a-f]{32}\.(npy|json)\.(?P<host>.+)\.(?P<pid>\d+)\.tmp")


@dataclass(frozen=True)
class StorePlan:
    """What a store of a data set will be, from the files' headers only: its canvas, its size, its cache key."""

    count: int
    height: int
    width: int
    short_side: int
    nbytes: int
    key: str


@dataclass
class Store:
    """Decoded images on one canvas: image i is ``images[i, :, :h, :w]`` with ``(h, w) = sizes[i]`` (h <= w), the
    rest zero; ``transposed[i]`` says it was portrait and is stored turned. ``location``: "ram" (the memory
    map), "pinned" or a device ("cuda:0")."""

    images: torch.Tensor
    sizes: torch.Tensor
    transposed: torch.Tensor
    labels: torch.Tensor
    short_side: int
    location: str
    path: Path | None

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def placed(self, location: str, device: torch.device | None = None) -> Store:
        """The same store with its images in ``location``: "ram" (on the CPU as they are), "pinned" (a pinned
        copy; an ordinary in-memory copy where there is no CUDA) or "device" (all tensors on ``device``)."""
        if location == "ram":
            return replace(self, images=self.images.cpu(), sizes=self.sizes.cpu(), transposed=self.transposed.cpu(),
                           labels=self.labels.cpu(), location="ram")
        if location == "pinned":
            images = self.images.cpu()
            images = images.pin_memory() if torch.cuda.is_available() else images.clone()
            return replace(self, images=images, sizes=self.sizes.cpu(), transposed=self.transposed.cpu(),
                           labels=self.labels.cpu(), location="pinned")
        if location == "device" and device is not None:
            return replace(self, images=self.images.to(device), sizes=self.sizes.to(device),
                           transposed=self.transposed.to(device), labels=self.labels.to(device),
                           location=device_name(device))
        raise ValueError(f"no store location {location!r} (with device {device}); use ram, pinned or device")


def default_store_dir() -> Path:
    return Path(os.environ.get(STORE_ENV) or Path.home() / ".cache" / "sslkit" / "stores")


def gigabytes(n: int) -> str:
    """``n`` bytes for a message: "1.4 GB" (decimal units); megabytes below 0.1 GB, so a small store is not 0.0."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def stored_size(short: int, long: int, short_side: int, width: int) -> tuple[int, int]:
    """(h, w) of an image with these sides on the canvas: short side ``short_side`` unless the image is smaller
    (never upscaled), long side at most ``width``."""
    scale = min(1.0, short_side / short, width / long)
    return max(1, round(short * scale)), min(width, max(1, round(long * scale)))


def canvas_size(sides: list[tuple[int, int]], short_side: int) -> tuple[int, int]:
    """(H, W) of the canvas for images of these (short, long) sides: H the largest stored short side; W the
    99th percentile of the stored widths at full short side, rounded up to a multiple of 8, at least H and at
    most ``2 * short_side`` (the few wider images are shrunk to fit)."""
    height = min(short_side, max(short for short, _ in sides))
    widths = [round(long * min(1.0, short_side / short)) for short, long in sides]
    width = 8 * math.ceil(max(float(np.percentile(widths, 99)), height) / 8)
    return height, min(width, 2 * short_side)


def plan_store(dataset, short_side: int) -> StorePlan:
    """The store of ``dataset`` (an sslkit ImageFolder) at ``short_side``, planned from the files' headers and
    status only, in a thread pool: cheap enough to decide whether it fits before decoding anything."""
    if short_side < 1:
        raise UsageError(f"the store's short side must be at least 1 pixel, not {short_side}")
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        headers = list(pool.map(_header, dataset.files, chunksize=256))
    sides = [sides for sides, _ in headers if sides is not None]
    if not sides:
        raise UsageError(f"no image in {dataset.root} can be decoded")
    height, width = canvas_size(sides, short_side)
    identity = {"format": FORMAT, "short_side": short_side, "height": height, "width": width,
                "files": [entry for _, entry in headers], "labels": list(dataset.labels)}
    key = hashlib.sha256(json.dumps(identity).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    count = len(dataset.files)
    return StorePlan(count, height, width, short_side, count * 3 * height * width, key)


def _header(path: Path) -> tuple[tuple[int, int] | None, tuple[str, int, int]]:
    """(short, long) sides from the image's header (None when it cannot be read: it is replaced when decoding),
    and the (resolved path, size, mtime_ns) that key the cache."""
    try:
        info = path.stat()
        entry = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    except OSError:
        entry = (str(path), -1, -1)
    try:
        with Image.open(path) as image:
            return tuple(sorted(image.size)), entry
    except Exception:  # whatever Pillow raises for a broken header: decoding warns about it later
        return None, entry


def open_store(dataset, plan: StorePlan, cache_dir: Path | None = None, workers: int = 4) -> Store:
    """The store of ``dataset`` planned by ``plan_store``, memory-mapped from ``cache_dir`` (default
    ``default_store_dir()``), decoded there first by ``workers`` threads when missing or unusable. Under
    torchrun only local rank 0 decodes; the other local ranks wait for its store."""
    cache_dir = Path(cache_dir or default_store_dir())
    if plan.count != len(dataset.files):
        raise ValueError(f"the plan is for {plan.count} images, the data set has {len(dataset.files)}")
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return _wait_for_store(dataset, plan, cache_dir)
    store = _reusable(dataset, plan, cache_dir)
    if store is None:
        _build(dataset, plan, cache_dir, workers)
        store = _cached(dataset, plan, cache_dir)
        if store is None:  # its metadata deleted as soon as written: someone clearing the cache
            raise WriteFailed(f"the store {_paths(cache_dir, plan.key)[1]} vanished as it was written")
        console.info(f"decoded {plan.count} images into the store {store.path} ({gigabytes(plan.nbytes)})")
    return store


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.npy", cache_dir / f"{key}.json"


def _reusable(dataset, plan: StorePlan, cache_dir: Path) -> Store | None:
    """The cached store, or None (with a warning when an entry was there but cannot be trusted)."""
    try:
        store = _cached(dataset, plan, cache_dir)
    except Exception as error:
        console.warn(f"decoding the store again: its cache entry {_paths(cache_dir, plan.key)[1]} is unusable "
                     f"({console.printable(str(error) or type(error).__name__)})")
        return None
    if store is not None:
        console.info(f"store: {plan.count} images read from the cache ({store.path})")
    return store


def _wait_for_store(dataset, plan: StorePlan, cache_dir: Path) -> Store:
    """The store local rank 0 builds, once its metadata is there and it reads back whole (an entry rank 0 is
    replacing may fail for a moment: it is tried again, quietly)."""
    while True:
        try:
            store = _cached(dataset, plan, cache_dir)
        except Exception:
            store = None
        if store is not None:
            return store
        sleep(WAIT_SECONDS)


def _cached(dataset, plan: StorePlan, cache_dir: Path) -> Store | None:
    """The store in the cache, memory-mapped copy-on-write (writable, nothing copied); None when there is no
    complete entry (no .json); ValueError (or whatever reading raises) when the entry does not match."""
    array_path, meta_path = _paths(cache_dir, plan.key)
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    expected = {"format": FORMAT, "key": plan.key, "count": plan.count, "short_side": plan.short_side,
                "height": plan.height, "width": plan.width}
    if {name: meta.get(name) for name in expected} != expected or meta.get("labels") != list(dataset.labels):
        raise ValueError("its metadata does not match the data set")
    sizes = torch.tensor(meta["sizes"], dtype=torch.int64).reshape(plan.count, 2)
    transposed = torch.tensor(meta["transposed"], dtype=torch.bool).reshape(plan.count)
    if (sizes < 1).any() or (sizes[:, 0] > sizes[:, 1]).any() or (sizes[:, 0] > plan.height).any() \
            or (sizes[:, 1] > plan.width).any():
        raise ValueError("image sizes outside the canvas")
    images = np.load(array_path, mmap_mode="c", allow_pickle=False)
    if images.shape != (plan.count, 3, plan.height, plan.width) or images.dtype != np.uint8:
        raise ValueError(f"the images are {images.dtype} {images.shape}, not the planned canvas")
    return Store(torch.from_numpy(images), sizes, transposed, torch.tensor(meta["labels"], dtype=torch.int64),
                 plan.short_side, "ram", array_path)


def _build(dataset, plan: StorePlan, cache_dir: Path, workers: int) -> None:
    """Decode ``dataset`` into ``cache_dir``: the canvas into a temporary file, synced and renamed, then the
    metadata. A failure or Ctrl-C leaves no temporary file behind."""
    array_path, meta_path = _paths(cache_dir, plan.key)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write the store in {cache_dir} ({error.strerror or error}); give "
                         "--store-dir a folder that can be written") from None
    _remove_stale_temporaries(cache_dir)
    _check_disk_space(cache_dir, plan.nbytes)
    tmp = array_path.with_name(array_path.name + _temporary_suffix())
    try:
        canvas = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(plan.count, 3, plan.height, plan.width))
        _reserve(tmp, cache_dir, plan.nbytes)
        sizes, transposed = _decode_all(canvas, dataset, plan, workers)
        canvas.flush()
        del canvas
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, array_path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_failed(array_path, error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(cache_dir)
    _write_metadata(meta_path, dataset, plan, sizes, transposed)


def _write_metadata(path: Path, dataset, plan: StorePlan, sizes: list, transposed: list) -> None:
    meta = {"format": FORMAT, "key": plan.key, "count": plan.count, "short_side": plan.short_side,
            "height": plan.height, "width": plan.width, "sizes": sizes, "transposed": transposed,
            "labels": list(dataset.labels), "root": str(dataset.root), "files": [str(f) for f in dataset.files]}
    text = json.dumps(meta, separators=(",", ":"))
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"),
                 _temporary_suffix())


def _temporary_suffix() -> str:
    """Unique to this process, also among hosts sharing the cache folder: ``.<host>.<pid>.tmp``."""
    return f".{socket.gethostname()}.{os.getpid()}.tmp"


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Delete what builds on this host that died (killed, out of memory) left: a canvas can be many GB."""
    host = socket.gethostname()
    for path in cache_dir.iterdir():
        match = _TEMPORARY.fullmatch(path.name)
        if match and match["host"] == host and not process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)


def check_room(plan: StorePlan, cache_dir: Path | None = None) -> None:
    """A UsageError now, before a run starts, when the store is not in the cache yet and the disk there cannot
    hold it."""
    cache_dir = Path(cache_dir or default_store_dir())
    if _paths(cache_dir, plan.key)[1].is_file():
        return
    existing = cache_dir
    while not existing.exists() and existing != existing.parent:  # the folder is made when the store is built
        existing = existing.parent
    _check_disk_space(existing, plan.nbytes)


def _check_disk_space(cache_dir: Path, nbytes: int) -> None:
    free = shutil.disk_usage(cache_dir).free
    if free < nbytes + DISK_MARGIN:
        raise _no_room(cache_dir, nbytes, free)


def _no_room(cache_dir: Path, nbytes: int, free: int) -> UsageError:
    return UsageError(f"the decoded store needs {gigabytes(nbytes + DISK_MARGIN)} in {cache_dir}, which has "
                      f"{gigabytes(free)} free; give --store-dir a folder on a larger disk, or a smaller --store-size")


def _reserve(path: Path, cache_dir: Path, nbytes: int) -> None:
    """Allocate the whole file now: a disk that fills while a memory map is written kills the process (SIGBUS)
    instead of raising an error."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            if error.errno == errno.ENOSPC:  # other errors (a file system without it) leave the file sparse
                raise _no_room(cache_dir, nbytes, shutil.disk_usage(cache_dir).free) from None


def _decode_all(canvas: np.ndarray, dataset, plan: StorePlan, workers: int) -> tuple[list, list]:
    """Decode every image into ``canvas`` with ``workers`` threads (Pillow releases the GIL while decoding and
    resizing); an image that fails is replaced by the next one that decodes, as ImageFolder does. Returns the
    sizes [h, w] and transposed flags per image."""
    files = dataset.files

    def fill(index: int) -> tuple[int, int, bool] | None:
        return _fill(canvas, index, files[index], plan.short_side, plan.width)

    label = f"decoding {len(files)} images into the store ({gigabytes(plan.nbytes)})"
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(console.track(_in_order(pool, fill, len(files)), len(files), label))
    good = [i for i, result in enumerate(results) if result is not None]
    if not good:
        raise UsageError(f"no image in {dataset.root} can be decoded")
    for index in range(len(results)):
        if results[index] is None:
            source = next((i for i in good if i > index), good[0])  # the next that decodes, cyclically
            canvas[index] = canvas[source]
            results[index] = results[source]
    return [[h, w] for h, w, _ in results], [turned for _, _, turned in results]


def _in_order(pool: ThreadPoolExecutor, function: Callable, count: int, block: int = 1024) -> Iterator:
    """``function(i)`` for i in range(count), run in ``pool`` and yielded in order, with at most two blocks of
    work queued (a million futures at once would take gigabytes)."""
    pending = [pool.submit(function, i) for i in range(min(block, count))]
    start = len(pending)
    while pending:
        queued = [pool.submit(function, i) for i in range(start, min(start + block, count))]
        start += len(queued)
        try:
            for future in pending:
                yield future.result()
        except BaseException:  # an error, Ctrl-C, or the consumer gone: the queued work is dropped
            for future in pending + queued:
                future.cancel()
            raise
        pending = queued


def _fill(canvas: np.ndarray, index: int, path: Path, short_side: int, width: int) -> tuple[int, int, bool] | None:
    """Decode ``path`` into ``canvas[index]``; its stored (h, w) and whether it is transposed, or None when it
    fails to decode (with load_or_skip's warning)."""
    decoded = _decode(path, short_side, width)
    if decoded is None:
        return None
    image, (height, width), portrait = decoded
    size = (height, width) if portrait else (width, height)  # Pillow's (width, height), before turning
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(image)  # (rows, columns, 3)
    canvas[index, :, :height, :width] = pixels.transpose(2, 1, 0) if portrait else pixels.transpose(2, 0, 1)
    return height, width, portrait


def _decode(path: Path, short_side: int, width: int) -> tuple[Image.Image, tuple[int, int], bool] | None:
    """The image at ``path`` as ``folders.load_rgb`` reads it, its stored (h, w) and whether it is portrait
    (taller than wide); None when it fails to decode. A JPEG is decoded at a reduced scale where it is at least
    twice the stored size (Pillow's draft: 1/2, 1/4 or 1/8), which saves most of the work on large photos."""
    try:
        with Image.open(path) as image:
            if image.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with a second frame
                target = stored_size(*sorted(image.size), short_side, width)
                # the orientation of the full-size image: a drafted one may round to a square
                turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
                portrait = (image.width > image.height) if turned else (image.height > image.width)
                # at least twice the stored size: the antialiased resize then does the rest, within a grey level
                # or two of decoding in full (the 1/8 scale that would still fit is blurred and no faster)
                rows, columns = 2 * target[0], 2 * target[1]
                image.draft("RGB", (columns, rows) if image.width >= image.height else (rows, columns))
                ImageOps.exif_transpose(image, in_place=True)
                return image.convert("RGB"), target, portrait
    except Exception:
        pass  # load_or_skip below meets the same error and warns about it, once per file
    image = folders.load_or_skip(path)
    if image is None:
        return None
    return image, stored_size(*sorted(image.size), short_side, width), image.height > image.width


def memory_budget(location: str, device: torch.device | None = None) -> tuple[int, str]:
    """The bytes a store may take in ``location`` ("ram", "pinned" or "device", a CUDA device), and how that was
    decided, for messages: half the available RAM, or half the device's free memory."""
    if location in ("ram", "pinned"):
        available, what = _available_ram()
        return available // 2, f"half the {what} ({gigabytes(available // 2)} of {gigabytes(available)})"
    if location == "device" and device is not None:
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2, f"half the free memory of {device_name(device)} ({gigabytes(free // 2)} of {gigabytes(free)})"
    raise ValueError(f"no memory budget for {location!r} (device {device})")


def _available_ram() -> tuple[int, str]:
    """MemAvailable (free memory plus what the kernel can reclaim, e.g. the page cache), or else all the RAM."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM"


def device_name(device: torch.device | str) -> str:
    """"cuda:0" for ``cuda`` (the current device) as for ``cuda:0``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)

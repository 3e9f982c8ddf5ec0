"""A Copydays-"strong"-like copy-detection benchmark made from any folder of images.

Layout of the output folder::

    database/000017.jpg        originals (the longer side at most --max-size)
    queries/000017_1.jpg       strong copies of each original (2 to 4 attacks each)
    distractors/d000004.jpg    more database images that no query copies (optional)
    whiten/w000009.jpg         images to learn the PCA whitening on (optional)
    ground_truth.csv           query,original,attacks
    benchmark.json             how it was made

Images are drawn from the source with the seed, and each copy is made from its own seed, so the same source
and seed give the same bytes, whatever the number of worker processes. The folder appears complete or not
at all: it is built beside the target and renamed into place.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from sslkit import __version__, console, files
from sslkit.data.attacks import ATTACKS, strong_copy
from sslkit.data.folders import ImageFolder, load_or_skip
from sslkit.errors import UsageError
from sslkit.evaluate.settings import BenchmarkConfig, check_attacks


def make_benchmark(source: str | Path, out: str | Path, options: BenchmarkConfig, workers: int = 0,
                   force: bool = False) -> dict:
    """Build the benchmark from the images under ``source`` into ``out``; returns its summary."""
    check_attacks(options, len(ATTACKS))
    out = Path(out)
    _check_out(Path(source), out, force)
    _remove_stale_partials(out)
    files = list(ImageFolder(source).files)
    random.Random(options.seed).shuffle(files)
    extra = options.distractors + options.whiten
    originals = options.originals if options.originals is not None else min(150, len(files) - extra)
    if originals < 1 or originals + extra > len(files):
        raise UsageError(f"{source} has {len(files)} readable images; {originals} originals + {options.distractors} "
                         f"distractors + {options.whiten} whitening images need {originals + extra}")
    jobs = [("original", i, files[i]) for i in range(originals)]
    jobs += [("distractor", i, files[originals + i]) for i in range(options.distractors)]
    jobs += [("whiten", i, files[originals + options.distractors + i]) for i in range(options.whiten)]
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for folder in ("database", "queries") + (("distractors",) if options.distractors else ()) + \
                      (("whiten",) if options.whiten else ()):
            (partial / folder).mkdir(parents=True)
        rows = []
        for made in _run(jobs, partial, options, workers):
            rows += made
        _write_ground_truth(partial / "ground_truth.csv", rows)
        summary = {"source": str(source), "out": str(out), **asdict(options), "originals": originals,
                   "num_queries": len(rows), "attacks": sorted(ATTACKS), "sslkit_version": __version__}
        (partial / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
        _replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary


BENCHMARK_ENTRIES = {"database", "queries", "distractors", "whiten", "ground_truth.csv", "benchmark.json"}


def _check_out(source: Path, out: Path, force: bool) -> None:
    """OUT is new, or empty, or (with --force) an earlier benchmark; never SRC, inside it, or around it."""
    files.check_output_folder(out, "OUT")
    src, target = source.resolve(), out.resolve()
    if target == src or src in target.parents or target in src.parents:
        raise UsageError(f"OUT {out} and SRC {source} overlap; the benchmark goes into a folder of its own")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_benchmark(out):
        raise UsageError(f"{out} holds files that are not an sslkit benchmark; choose another folder (--force "
                         "replaces an earlier benchmark only)")
    if not force:
        raise UsageError(f"{out} already holds a benchmark; choose another folder or pass --force to replace it")


def is_benchmark(folder: Path) -> bool:
    """What make-benchmark wrote: its benchmark.json, and nothing but the benchmark's own entries."""
    try:
        summary = json.loads((folder / "benchmark.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "sslkit_version" in summary and \
        all(entry.name in BENCHMARK_ENTRIES for entry in folder.iterdir())


def _remove_stale_partials(out: Path) -> None:
    """Folders of an earlier make-benchmark into ``out`` that was killed before it finished."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not files.process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _run(jobs: list, root: Path, options: BenchmarkConfig, workers: int):
    """Each job's ground-truth rows, in job order, made in ``workers`` processes (0: in this one)."""
    tasks = [(kind, index, path, root, options) for kind, index, path in jobs]
    if workers <= 0:
        yield from console.track(map(_make, tasks), len(tasks), "benchmark images")
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from console.track(pool.map(_make, tasks, chunksize=8), len(tasks), "benchmark images")


def _make(task) -> list[list[str]]:
    kind, index, path, root, options = task
    image = load_or_skip(path)
    if image is None:  # an image that passed the listing check but does not decode: left out, with a warning
        return []
    image = _shrink(image, options.max_size)
    if kind != "original":
        folder, prefix = ("distractors", "d") if kind == "distractor" else ("whiten", "w")
        _save(image, root / folder / f"{prefix}{index:06d}.jpg", options.quality)
        return []
    name = f"{index:06d}"
    _save(image, root / "database" / f"{name}.jpg", options.quality)
    rows = []
    for copy in range(1, options.copies + 1):
        rng = random.Random(f"{options.seed}/{index}/{copy}")
        attacked, names = strong_copy(image, rng, options.min_attacks, options.max_attacks)
        query = f"{name}_{copy}.jpg"
        _save(attacked, root / "queries" / query, options.quality)
        rows.append([query, f"{name}.jpg", ";".join(names)])
    return rows


def _shrink(image: Image.Image, max_size: int) -> Image.Image:
    if max_size and max(image.size) > max_size:
        scale = max_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _save(image: Image.Image, path: Path, quality: int) -> None:
    image.save(path, format="JPEG", quality=quality)


def _write_ground_truth(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "original", "attacks"])
        writer.writerows(rows)


def _replace(partial: Path, out: Path) -> None:
    """Move the finished folder into place; an existing ``out`` (with --force) is removed only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()

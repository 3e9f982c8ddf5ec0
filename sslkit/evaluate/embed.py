"""Every image's frozen features written to one file, for the user's own search, clustering or labelling.

The features are exactly those ``probe knn`` computes and caches (the same model loading, feature recipe,
evaluation transform and cache), in the order of the image files. Three formats:

- ``.safetensors``: tensor ``embeddings`` (float32, N x D), with labels a tensor ``labels`` (int64); metadata
  ``format`` ("sslkit-embeddings/1"), ``files`` (JSON list of names relative to DATA), ``classes``, the model.
- ``.npy``: the N x D float32 array; ``<stem>.txt`` one file name per line, with labels ``<stem>.labels.txt``
  one class name per line.
- ``.csv``: ``filename[,label],0,1,...,D-1``, one row per image, floats as ``%.9g`` (exact for float32).

A crash never leaves a half file under the real name, and an existing output is replaced only with ``force``
and only when it is recognisably an earlier output of this command: never an input or a file sslkit did not write.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sslkit import __version__, config as cfg, console
from sslkit.data.folders import IMAGE_EXTENSIONS, ImageFolder, shown
from sslkit.errors import UsageError
from sslkit.evaluate.features import FrozenFeatures
from sslkit.evaluate.settings import EMBED_FORMATS as FORMATS, EmbedConfig
from sslkit.files import check_output_file, write_atomic, write_text
from sslkit.settings import choice

FORMAT_TAG = "sslkit-embeddings/1"
CSV_ROWS_PER_CHUNK = 1024  # rows converted to Python floats at a time: no second N x D copy


def embed(model: str, data: str | Path, out: str | Path, **settings) -> dict:
    """Write the frozen features of every image under ``data`` (recursively) to ``out``; returns a summary
    (``num_images``, ``dim``, ``files`` written, the model, ``seconds``).

    ``settings`` are the command-line options by their Python names (``img_size``, ``pool``, ``labels``,
    ``format``, ... of sslkit.evaluate.settings.EmbedConfig); ``None`` values are ignored. ``force`` replaces an earlier
    output of this command.
    """
    start = time.perf_counter()
    options = embed_options(model, data, out, settings)
    fmt = output_format(Path(options.out), options.format)
    targets = output_paths(Path(options.out), fmt, options.labels)
    check_targets(targets, fmt, options.force)
    dataset = ImageFolder(options.data, labelled=options.labels)  # listed before the model loads: errors first
    names = relative_names(dataset)
    if fmt == "npy":
        check_one_line(names + dataset.classes)
    features, labels, frozen = _features(options, dataset)
    metadata = _metadata(options, frozen, names, dataset.classes)
    WRITERS[fmt](targets, features, labels if options.labels else None, names, dataset.classes, metadata)
    return {
        "model": options.model, "description": frozen.loaded.description, "arch": frozen.loaded.arch,
        "img_size": frozen.loaded.img_size, "features": frozen.recipe.describe(), "data": options.data,
        "num_images": len(names), "dim": int(features.shape[1]), "format": fmt, "out": str(targets[0]),
        "files": [str(path) for path in targets], "classes": dataset.classes if options.labels else None,
        "seconds": round(time.perf_counter() - start, 3),
    }


def embed_options(model: str, data: str | Path, out: str | Path, settings: dict) -> EmbedConfig:
    """The settings, each a field of EmbedConfig, which checks them as the probes' settings check theirs (types,
    ranges, choices)."""
    values = {k: v for k, v in settings.items() if v is not None}
    cfg.check_known(values, EmbedConfig)
    return EmbedConfig(model=str(model), data=str(data), out=str(out), **values)


def _features(options: EmbedConfig, dataset: ImageFolder):
    """``probe knn``'s (cached) features of ``dataset``, its labels, and the frozen model they came from."""
    frozen = FrozenFeatures(options, default_blocks=1)
    dataset.transform = frozen.transform
    features, labels = frozen.features(dataset, "embed")
    return features.contiguous(), labels, frozen


def _metadata(options: EmbedConfig, frozen, names: list[str], classes: list[str]) -> dict[str, str]:
    """What the safetensors file records, as strings; also the summary's model fields."""
    loaded = frozen.loaded
    return {
        "format": FORMAT_TAG, "sslkit_version": __version__,
        "model": console.printable(options.model), "description": console.printable(loaded.description),
        "arch": loaded.arch, "img_size": str(loaded.img_size), "features": frozen.recipe.describe(),
        "recipe": json.dumps(dataclasses.asdict(frozen.recipe)), "data": console.printable(options.data),
        "files": json.dumps(names), **({"classes": json.dumps(classes)} if options.labels else {}),
    }


def output_format(out: Path, given: str | None) -> str:
    """The format ``--format`` names, else the one the extension of ``out`` names."""
    extension = out.suffix.lower().lstrip(".")
    if given is None:
        if extension not in FORMATS:
            raise UsageError(f"cannot tell the format of --out {out} from its extension; name a .safetensors, .npy "
                             "or .csv file, or give --format")
        return extension
    choice("format", given, FORMATS)
    if extension in FORMATS and extension != given:
        raise UsageError(f"--out {out} names a .{extension} file but --format is {given}; make them agree")
    if out.suffix.lower() in IMAGE_EXTENSIONS:
        raise UsageError(f"--out {out} has an image's extension; name the embeddings file .{given}")
    return given


def output_paths(out: Path, fmt: str, labels: bool) -> list[Path]:
    """The files written: the embeddings first, then (``npy``) the file names and the labels beside it."""
    if fmt != "npy":
        return [out]
    paths = [out, out.with_suffix(".txt")] + ([out.with_suffix(".labels.txt")] if labels else [])
    if len(set(paths)) < len(paths):
        raise UsageError(f"--out {out}: the file names go to {paths[1]}; name the array file .npy")
    return paths


def check_targets(targets: list[Path], fmt: str, force: bool) -> None:
    """Refuse, before any work, an output that cannot be written, or one that exists: without ``force``
    always, with it unless it is recognisably an earlier output of ``sslkit embed``."""
    for path in targets:
        check_output_file(path, "--out" if path == targets[0] else f"--out {targets[0]}: its file")
    existing = [path for path in targets if path.exists() or path.is_symlink()]
    if existing and not force:
        raise UsageError(f"{existing[0]} exists; add --force to replace an earlier output of sslkit embed, or "
                         "choose another --out")
    rows = _rows_of_ours(targets[0], fmt) if targets[0].exists() else None
    for path in existing:
        if path.is_symlink() or rows is None or (path != targets[0] and _line_count(path) != rows):
            raise UsageError(f"--force replaces only an earlier output of sslkit embed, and {path} is not one "
                             "(or not a complete one): move it or choose another --out")


def _rows_of_ours(path: Path, fmt: str) -> int | None:
    """The number of embeddings in ``path`` when it is an output of this command in ``fmt``, else None."""
    try:
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                ours = (handle.metadata() or {}).get("format") == FORMAT_TAG
                return handle.get_slice("embeddings").get_shape()[0] if ours else None
        if fmt == "npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return len(array) if array.ndim == 2 and array.dtype == np.float32 else None
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            header = next(csv.reader(handle))
            return sum(1 for _ in csv.reader(handle)) if _csv_header_ours(header) else None
    except Exception:  # anything that cannot be read as our output is not ours
        return None


def _csv_header_ours(header: list[str]) -> bool:
    columns = header[2:] if header[1:2] == ["label"] else header[1:]
    return header[:1] == ["filename"] and columns == [str(i) for i in range(len(columns))] and bool(columns)


def _line_count(path: Path) -> int | None:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return None


def relative_names(dataset: ImageFolder) -> list[str]:
    """Each image's path relative to the data folder, with POSIX separators, in the order of the features."""
    return [path.relative_to(dataset.root).as_posix() for path in dataset.files]


def check_one_line(names: list[str]) -> None:
    """A .txt list holds one name per line: a name holding a line break (legal on Linux) cannot be written."""
    for name in names:
        if name.splitlines() != [name]:
            raise UsageError(f"{shown(name)} holds a line break, which a one-name-per-line .txt file cannot hold; "
                             "write --format csv or safetensors instead")


def write_safetensors(targets: list[Path], features: torch.Tensor, labels: torch.Tensor | None, names: list[str],
                      classes: list[str], metadata: dict[str, str]) -> None:
    """``embeddings`` (and ``labels``) with the metadata, in one safetensors file."""
    tensors = {"embeddings": features, **({"labels": labels.to(torch.int64)} if labels is not None else {})}
    write_atomic(targets[0], lambda tmp: _write_safetensors_file(tmp, tensors, metadata))


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def _write_safetensors_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The safetensors layout (8-byte little-endian header length, JSON header padded to 8 bytes, the tensors'
    bytes in header order) written tensor by tensor: safetensors' save_file first copies every tensor into one
    bytes object, a second N x D copy."""
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps({**header, "__metadata__": metadata}, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for tensor in tensors.values():
            _little_endian(tensor).tofile(handle)


def _little_endian(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.contiguous().numpy()
    return array if sys.byteorder == "little" else array.astype(array.dtype.newbyteorder("<"))


def write_npy(targets: list[Path], features: torch.Tensor, labels: torch.Tensor | None, names: list[str],
              classes: list[str], metadata: dict[str, str]) -> None:
    """The array as .npy, the file names (and class names) one per line beside it; the array last, so that
    an array on disk always has its lists."""
    write_text(targets[1], "".join(f"{name}\n" for name in names))
    if labels is not None:
        write_text(targets[2], "".join(f"{classes[i]}\n" for i in labels.tolist()))
    # np.save hands a contiguous array straight to the file (ndarray.tofile): no copy
    write_atomic(targets[0], lambda tmp: _save_npy(tmp, features))


def _save_npy(path: Path, features: torch.Tensor) -> None:
    with open(path, "wb") as handle:
        np.save(handle, features.numpy(), allow_pickle=False)


def write_csv(targets: list[Path], features: torch.Tensor, labels: torch.Tensor | None, names: list[str],
              classes: list[str], metadata: dict[str, str]) -> None:
    """One row per image: its file name, its class name with labels, then its D values."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", *(["label"] if labels is not None else []),
                             *map(str, range(features.shape[1]))])
            for start in range(0, len(features), CSV_ROWS_PER_CHUNK):
                for row, values in enumerate(features[start : start + CSV_ROWS_PER_CHUNK].tolist(), start):
                    writer.writerow([names[row], *label_column[row], *(f"{value:.9g}" for value in values)])

    label_column = [[classes[i]] for i in labels.tolist()] if labels is not None else [[]] * len(names)

    write_atomic(targets[0], write)


WRITERS = {"safetensors": write_safetensors, "npy": write_npy, "csv": write_csv}

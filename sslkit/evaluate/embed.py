"""Every image's frozen features written to one file, for the user's own search, clustering or labelling.

The features are exactly those ``probe knn`` computes and caches (the same model loading, feature recipe,
evaluation transform and cache), in the order of the image files. Three formats:

- ``.safetensors``: tensor ``embeddings`` (float32, N x D), with labels a tensor ``labels`` (int64); metadata
  ``format`` ("sslkit-embeddings/1"), ``files`` (JSON list of names relative to DATA), ``classes``, the model.
- ``.npy``: the N x D float32 array; ``<stem>.txt`` one file name per line, with labels ``<stem>.labels.txt``
  one class name per line.
- ``.csv``: ``filename[,label],0,1,...,D-1``, one row per image, floats as ``%.9g`` (exact for float32).

With ``tokens="patch"`` every image's grid of patch tokens is written instead (safetensors tensor ``patches`` or
the .npy array, N x h x w x D float32), streamed: each batch goes to the file as it comes out of the network,
after a header written first (N, h, w and D are known before the first batch), so memory holds one batch
however many images there are. Patch tokens are not cached, and a CSV cannot hold them.

A crash never leaves a half file under the real name, and an existing output is replaced only with ``force``
and only when it is recognisably an earlier output of this command: never an input or a file sslkit did not write.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import struct
import sys
import time
from collections.abc import Iterable
from contextlib import closing
from operator import itemgetter
from pathlib import Path

import numpy as np
import torch

from sslkit import __version__, config as cfg, console
from sslkit.data.folders import IMAGE_EXTENSIONS, ImageFolder, shown
from sslkit.errors import UsageError
from sslkit.evaluate.features import FrozenFeatures
from sslkit.evaluate.settings import EMBED_FORMATS as FORMATS, EmbedConfig
from sslkit.files import check_output_file, write_atomic, write_text
from sslkit.models.backbones import feature_dim, patch_size
from sslkit.settings import choice

FORMAT_TAG = "sslkit-embeddings/1"
CSV_ROWS_PER_CHUNK = 1024  # rows converted to Python floats at a time: no second N x D copy


def embed(model: str, data: str | Path, out: str | Path, **settings) -> dict:
    """Write the frozen features of every image under ``data`` (recursively) to ``out``; returns a summary
    (``num_images``, ``dim``, ``files`` written, the model, ``seconds``; ``grid`` with patch tokens).

    ``settings`` are the command-line options by their Python names (``img_size``, ``pool``, ``tokens``,
    ``labels``, ``format``, ... of sslkit.evaluate.settings.EmbedConfig); ``None`` values are ignored. ``force``
    replaces an earlier output of this command. ``tokens="patch"`` streams every image's h x w grid of patch
    tokens to the file (.safetensors or .npy) as they are computed, holding one batch at a time.
    """
    start = time.perf_counter()
    options = embed_options(model, data, out, settings)
    fmt = output_format(Path(options.out), options.format)
    if options.tokens == "patch" and fmt == "csv":
        raise UsageError("--tokens patch writes an N x h x w x D array, which a CSV cannot hold; write .safetensors "
                         "or .npy")
    targets = output_paths(Path(options.out), fmt, options.labels)
    check_targets(targets, fmt, options.force)
    dataset = ImageFolder(options.data, labelled=options.labels)  # listed before the model loads: errors first
    names = relative_names(dataset)
    if fmt == "npy":
        check_one_line(names + dataset.classes)
    frozen = FrozenFeatures(options, default_blocks=1)
    dataset.transform = frozen.transform
    write = _write_patches if options.tokens == "patch" else _write_pooled
    shape = write(frozen, dataset, names, (fmt, targets), _metadata(options, frozen, names, dataset.classes))
    return {
        "model": options.model, "description": frozen.loaded.description, "arch": frozen.loaded.arch,
        "img_size": frozen.loaded.img_size, "features": frozen.recipe.describe(), "data": options.data,
        "num_images": len(names), "dim": shape[-1], **({"grid": list(shape[1:3])} if len(shape) == 4 else {}),
        "format": fmt, "out": str(targets[0]), "files": [str(path) for path in targets],
        "classes": dataset.classes if options.labels else None, "seconds": round(time.perf_counter() - start, 3),
    }


def embed_options(model: str, data: str | Path, out: str | Path, settings: dict) -> EmbedConfig:
    """The settings, each a field of EmbedConfig, which checks them as the probes' settings check theirs (types,
    ranges, choices)."""
    values = {k: v for k, v in settings.items() if v is not None}
    cfg.check_known(values, EmbedConfig)
    return EmbedConfig(model=str(model), data=str(data), out=str(out), **values)


def _write_pooled(frozen: FrozenFeatures, dataset: ImageFolder, names: list[str], output: tuple[str, list[Path]],
                  metadata: dict[str, str]) -> tuple[int, ...]:
    """``probe knn``'s (cached) N x D features of ``dataset`` in the ``(format, files)`` of ``output``; returns
    their shape."""
    fmt, targets = output
    features, labels = frozen.features(dataset, "embed")
    labels = labels if frozen.options.labels else None
    WRITERS[fmt](targets, features.contiguous(), labels, names, dataset.classes, metadata)
    return tuple(features.shape)


def _write_patches(frozen: FrozenFeatures, dataset: ImageFolder, names: list[str], output: tuple[str, list[Path]],
                   metadata: dict[str, str]) -> tuple[int, ...]:
    """Every image's grid of patch tokens, streamed to the ``(format, files)`` of ``output`` batch by batch
    (never cached); returns the shape written, N x h x w x D."""
    fmt, targets = output
    shape = patch_shape(frozen, len(dataset))
    metadata = {**metadata, "grid": json.dumps(list(shape[1:3]))}
    labels = torch.tensor(dataset.labels, dtype=torch.int64) if frozen.options.labels else None
    with closing(frozen.batches(dataset, "embed")) as batches:
        # map() keeps no reference to the features it hands on, so the writer holds the only one
        PATCH_WRITERS[fmt](targets, shape, map(itemgetter(0), batches), labels, names, dataset.classes, metadata)
    return shape


def patch_shape(frozen: FrozenFeatures, count: int) -> tuple[int, int, int, int]:
    """N x h x w x D of the patch tokens: the grid of the centre crop at the model's image size."""
    side = frozen.loaded.img_size // patch_size(frozen.loaded.module)
    return count, side, side, feature_dim(frozen.loaded.module)


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
                name = "patches" if "patches" in handle.keys() else "embeddings"
                return handle.get_slice(name).get_shape()[0] if ours else None
        if fmt == "npy":  # N x D embeddings, or N x h x w x D patch tokens
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return len(array) if array.ndim in (2, 4) and array.dtype == np.float32 else None
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
    """The safetensors layout written tensor by tensor: safetensors' save_file first copies every tensor into one
    bytes object, a second N x D copy."""
    layout = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}
    with open(path, "wb") as handle:
        handle.write(_safetensors_header(layout, metadata))
        for tensor in tensors.values():
            _little_endian(tensor).tofile(handle)


def _safetensors_header(layout: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """What precedes the tensors' bytes in a safetensors file: the 8-byte little-endian length of the JSON header,
    then the header (each tensor's dtype, shape and byte range, in ``layout``'s order), padded to 8 bytes. It needs
    only the shapes, so it can be written before the first value is known."""
    header, offset = {}, 0
    for name, (dtype, shape) in layout.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps({**header, "__metadata__": metadata}, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def _little_endian(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.contiguous().numpy()
    return array if sys.byteorder == "little" else array.astype(array.dtype.newbyteorder("<"))


def write_npy(targets: list[Path], features: torch.Tensor, labels: torch.Tensor | None, names: list[str],
              classes: list[str], metadata: dict[str, str]) -> None:
    """The array as .npy, the file names (and class names) one per line beside it; the array last, so that
    an array on disk always has its lists."""
    _write_lists(targets, labels, names, classes)
    # np.save hands a contiguous array straight to the file (ndarray.tofile): no copy
    write_atomic(targets[0], lambda tmp: _save_npy(tmp, features))


def _write_lists(targets: list[Path], labels: torch.Tensor | None, names: list[str], classes: list[str]) -> None:
    write_text(targets[1], "".join(f"{name}\n" for name in names))
    if labels is not None:
        write_text(targets[2], "".join(f"{classes[i]}\n" for i in labels.tolist()))


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


def stream_safetensors(targets: list[Path], shape: tuple[int, ...], batches: Iterable[torch.Tensor],
                       labels: torch.Tensor | None, names: list[str], classes: list[str],
                       metadata: dict[str, str]) -> None:
    """Tensor ``patches`` (float32, ``shape``) filled from ``batches`` as they come, then ``labels``, with the
    metadata: the header goes first, since it needs only the shapes."""
    layout = {"patches": (torch.float32, shape), **({"labels": (torch.int64, (shape[0],))} if labels is not None
                                                     else {})}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(_safetensors_header(layout, metadata))
            stream_rows(handle, batches, shape)
            if labels is not None:
                _little_endian(labels).tofile(handle)

    write_atomic(targets[0], write)


def stream_npy(targets: list[Path], shape: tuple[int, ...], batches: Iterable[torch.Tensor],
               labels: torch.Tensor | None, names: list[str], classes: list[str], metadata: dict[str, str]) -> None:
    """A float32 ``shape`` .npy array filled from ``batches`` as they come, after its header; the lists first,
    as for the embeddings."""
    _write_lists(targets, labels, names, classes)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
            stream_rows(handle, batches, shape)

    write_atomic(targets[0], write)


def stream_rows(handle, batches: Iterable[torch.Tensor], shape: tuple[int, ...]) -> None:
    """Each float32 batch of rows of the ``shape`` array appended to ``handle`` as it comes, and let go before
    the next is asked for. A batch that does not fit, or too few rows, is an error (the file is then removed)."""
    written = 0
    for batch in batches:
        if tuple(batch.shape[1:]) != shape[1:] or batch.dtype != torch.float32 or written + len(batch) > shape[0]:
            raise RuntimeError(f"a {batch.dtype} batch of shape {tuple(batch.shape)} after {written} rows does not "
                               f"fit the {shape} array being written")
        _little_endian(batch).tofile(handle)
        written += len(batch)
        del batch  # the only reference: gone while the next batch is computed
    if written != shape[0]:
        raise RuntimeError(f"{written} of the {shape[0]} rows of the {shape} array came")


PATCH_WRITERS = {"safetensors": stream_safetensors, "npy": stream_npy}

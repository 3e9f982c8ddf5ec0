"""sslkit embed MODEL DATA --out FILE: every image's frozen features in one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit import console
from sslkit.cli.common import (AllowPartial, Device, JsonOut, Precision, Quiet, Workers, examples, handle_errors,
                               writable_file, write_json)
from sslkit.cli.probe import (FEATURES, Arch, AvgpoolPatchtokens, BatchSize, Cache, CacheDir,
                              CheckpointKey, ImgSize, Model, Pool, Seed)
from sslkit.errors import UsageError

OUTPUT = "Output"

HELP = (
    "Write the frozen features of every image under DATA (recursively) to one file, for your own search, "
    "clustering or labelling: the embeddings probe knn computes, with the same model, feature options, centre "
    "crop and feature cache.\n\n"
    "The format comes from the extension of --out or from --format: .safetensors (tensor embeddings, float32 "
    "N x D; metadata files, the names relative to DATA, and the model), .npy (the array, with the file names one "
    "per line in <stem>.txt) or .csv (filename,0,1,...,D-1, one row per image). --labels reads DATA as one "
    "sub-folder per class and writes the labels too. Rows follow the file names in sorted order.\n\n"
    "Features are cached as the probes cache them: embed --labels of a folder a probe has read recomputes "
    "nothing, and neither does a second embed of the same folder (in another format, say)."
)
EPILOG = examples(
    "sslkit embed runs/dino images/ --out embeddings.safetensors",
    "sslkit embed runs/byol data/train --out train.csv --labels --img-size 64",
    "sslkit embed timm:resnet18 images/ --out baseline.npy --img-size 64 --device cpu",
)


Data = Annotated[Path, typer.Argument(
    help="Folder of images, read recursively (with --labels: one sub-folder per class).")]
Out = Annotated[Path, typer.Option(
    "--out", "-o", help="The file to write (atomically): .safetensors, .npy or .csv.", callback=writable_file,
    rich_help_panel=OUTPUT)]
Format = Annotated[Optional[str], typer.Option(
    "--format", help="safetensors, npy or csv (default: from the extension of --out).", rich_help_panel=OUTPUT)]
Labels = Annotated[bool, typer.Option(
    "--labels", help="DATA holds one sub-folder per class: write each image's class too (.npy: in "
                     "<stem>.labels.txt).", rich_help_panel=OUTPUT)]
Force = Annotated[bool, typer.Option(
    "--force", help="Replace an earlier output of sslkit embed; any other file is never overwritten.",
    rich_help_panel=OUTPUT)]
NLastBlocks = Annotated[Optional[int], typer.Option(
    help="ViTs: concatenate the CLS tokens of the last N blocks (default 1, as probe knn).", rich_help_panel=FEATURES)]
GemP = Annotated[Optional[float], typer.Option(
    help="Power of --pool gem (default 4; 1 is average pooling).", rich_help_panel=FEATURES)]


def embed(
    model: Model,
    data: Data,
    out: Out,
    format: Format = None,
    labels: Labels = False,
    force: Force = False,
    checkpoint_key: CheckpointKey = None,
    seed: Seed = None,
    arch: Arch = None,
    allow_partial: AllowPartial = False,
    img_size: ImgSize = None,
    batch_size: BatchSize = None,
    pool: Pool = None,
    n_last_blocks: NLastBlocks = None,
    avgpool_patchtokens: AvgpoolPatchtokens = None,
    gem_p: GemP = None,
    cache_dir: CacheDir = None,
    cache: Cache = None,
    workers: Workers = None,
    device: Device = None,
    precision: Precision = None,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Write every image's embedding to a file."""
    with handle_errors(quiet):
        from sslkit.evaluate import embed as embedding  # imports torch: only once a command runs

        _check_json_apart(json_path, embedding.output_paths(out, embedding.output_format(out, format), labels))
        result = embedding.embed(
            model, data, out, force=force, format=format, labels=labels, checkpoint_key=checkpoint_key, seed=seed,
            arch=arch, allow_partial=allow_partial, img_size=img_size, batch_size=batch_size, pool=pool,
            n_last_blocks=n_last_blocks, avgpool_patchtokens=avgpool_patchtokens, gem_p=gem_p,
            cache_dir=str(cache_dir) if cache_dir else None, cache=cache, workers=workers, device=device,
            precision=precision,
        )
        write_json(json_path, result)
        console.info(_summary(result))


def _check_json_apart(json_path: Path | None, targets: list[Path]) -> None:
    """--json must not name one of the embedding files: one would overwrite the other."""
    if json_path is not None and any(os.path.realpath(json_path) == os.path.realpath(p) for p in targets):
        raise UsageError(f"--json {json_path} is a file the embeddings go to; give it another name")


def _summary(result: dict) -> str:
    """``wrote N embeddings of dimension D to FILE in S.S s``, naming the lists beside a .npy file."""
    line = (f"wrote {result['num_images']} embeddings of dimension {result['dim']} to {result['out']} "
            f"in {result['seconds']:.1f} s")
    beside = result["files"][1:]
    if beside:
        line += f" (file names in {beside[0]}" + (f", labels in {beside[1]})" if len(beside) > 1 else ")")
    return line

"""sslkit embed MODEL DATA --out FILE: every image's frozen features in one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from sslkit import console
from sslkit.cli.common import JSON_OPTION, MODEL_HELP, QUIET_OPTION, examples, handle_errors, report, writable_file
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.config import HW
from sslkit.errors import UsageError
from sslkit.evaluate.settings import EMBED_HELP, FEATURES, OUTPUT, EmbedConfig

HELP = (
    "Write the frozen features of every image under DATA (recursively) to one file, for your own search, "
    "clustering or labelling: the embeddings probe knn computes, with the same model, feature options, centre "
    "crop and feature cache.\n\n"
    "The format comes from the extension of --out or from --format: .safetensors (tensor embeddings, float32 "
    "N x D; metadata files, the names relative to DATA, and the model), .npy (the array, with the file names one "
    "per line in <stem>.txt) or .csv (filename,0,1,...,D-1, one row per image). --labels reads DATA as one "
    "sub-folder per class and writes the labels too. Rows follow the file names in sorted order.\n\n"
    "ViTs: --tokens cls, mean or cls+mean names the pooled tokens; --tokens patch writes every image's grid of "
    "patch tokens (N x h x w x D, tensor patches in .safetensors, or .npy), streamed to the file as they are "
    "computed, so memory stays bounded.\n\n"
    "Features are cached as the probes cache them: embed --labels of a folder a probe has read recomputes "
    "nothing, and neither does a second embed of the same folder (in another format, say)."
)
EPILOG = examples(
    "sslkit embed runs/dino images/ --out embeddings.safetensors",
    "sslkit embed runs/byol data/train --out train.csv --labels --img-size 64",
    "sslkit embed timm:resnet18 images/ --out baseline.npy --img-size 64 --device cpu",
    "sslkit embed runs/dino-vit images/ --out patches.safetensors --tokens patch",
)


def _embed(model: str, data: Path, out: Path, json_path: Optional[Path], quiet: bool, **values):
    """Write every image's embedding to a file."""
    with handle_errors(quiet):
        from sslkit.evaluate import embed as embedding  # imports torch: only once a command runs

        settings = given_settings(values, EmbedConfig)
        fmt = embedding.output_format(out, settings.get("format"))
        _check_json_apart(json_path, embedding.output_paths(out, fmt, settings.get("labels", False)))
        report(embedding.embed(model, data, out, **settings), json_path, quiet, _show)


embed = command([argument("model", str, MODEL_HELP),
                 argument("data", Path, "Folder of images, read recursively (with --labels: one sub-folder per "
                                        "class)."),
                 option("out", Path, "--out", "-o", default=Parameter.empty, callback=writable_file,
                        help="The file to write (atomically): .safetensors, .npy or .csv.", rich_help_panel=OUTPUT),
                 JSON_OPTION, QUIET_OPTION, *settings_options(EmbedConfig, help=EMBED_HELP, panel={"gem_p": FEATURES})],
                _embed, first=(OUTPUT, None, FEATURES), last=(HW,))


def _check_json_apart(json_path: Path | None, targets: list[Path]) -> None:
    """--json must not name one of the embedding files: one would overwrite the other."""
    if json_path is not None and any(os.path.realpath(json_path) == os.path.realpath(p) for p in targets):
        raise UsageError(f"--json {json_path} is a file the embeddings go to; give it another name")


def _show(result: dict) -> None:
    """``wrote N embeddings of dimension D to FILE in S.S s`` (``wrote N x h x w patch tokens ...`` with --tokens
    patch), naming the lists beside a .npy file."""
    grid = result.get("grid")
    what = f"{result['num_images']} x {grid[0]} x {grid[1]} patch tokens" if grid else \
        f"{result['num_images']} embeddings"
    line = f"wrote {what} of dimension {result['dim']} to {result['out']} in {result['seconds']:.1f} s"
    beside = result["files"][1:]
    if beside:
        line += f" (file names in {beside[0]}" + (f", labels in {beside[1]})" if len(beside) > 1 else ")")
    console.info(line)

"""sslkit export MODEL --out FILE.safetensors: the backbone alone, ready for timm or for sslkit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit import console
from sslkit.cli.common import AllowPartial, JsonOut, Quiet, examples, handle_errors, writable_file, write_json
from sslkit.cli.probe import Arch, Model


def export(
    model: Model,
    out: Annotated[Path, typer.Option("--out", "-o", help="The .safetensors file to write (atomically).",
                                      callback=writable_file)],
    format: Annotated[str, typer.Option(
        "--format",
        help="timm (a plain state dict in timm names, default) or sslkit (an sslkit checkpoint of the "
             "backbone alone).")] = "timm",
    checkpoint_key: Annotated[str, typer.Option(help="teacher (the EMA network, default) or student.")] = "teacher",
    arch: Arch = None,
    allow_partial: AllowPartial = False,
    licence: Annotated[Optional[str], typer.Option(
        help="The weights' licence, written to the metadata (default: the imported weights' when known, e.g. MAE's "
             "CC-BY-NC-4.0).")] = None,
    img_size: Annotated[Optional[int], typer.Option(
        help="ViTs: resample the position embedding for this image size (default: the trained size).")] = None,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Export a backbone."""
    with handle_errors(quiet):
        from sslkit import api

        result = api.export(model, out, format=format, checkpoint_key=checkpoint_key, arch=arch,
                            img_size=img_size, allow_partial=allow_partial, licence=licence)
        write_json(json_path, result)
        if not quiet:
            console.stdout.print(
                f"{result['out']}: {result['description']}, {result['parameters']:,} parameters, "
                f"{result['img_size']} px, {result['format']} format", markup=False, soft_wrap=True)
            if result.get("licence"):
                console.stdout.print(f"licence: {result['licence']}", markup=False, soft_wrap=True)
            if format == "timm":
                console.stdout.print(
                    f"timm.create_model(\"{result['arch']}\", pretrained=True, num_classes=0, "
                    + (f"img_size={result['img_size']}, " if result["patch_size"] else "")
                    + (f"global_pool=\"{result['pooling']}\", " if result["patch_size"] and result["pooling"] != "token"
                       else "")  # MAE's fine-tuned ViTs average-pool through fc_norm
                    + f"pretrained_cfg_overlay=dict(file=\"{result['out']}\"))", markup=False, soft_wrap=True)


HELP = (
    "Write a model's backbone (the EMA teacher by default) to a .safetensors file, without heads, optimizer or "
    "training state.\n\n"
    "--format timm writes a plain state dict in timm names, with metadata (arch, img_size, patch_size, mean / "
    "std, pooling, method, step, source, and the licence of imported weights): timm.create_model(ARCH, "
    "pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=FILE)) loads it (pass img_size= for a ViT "
    "trained at another size), and "
    "every sslkit command takes it as MODEL. --format sslkit writes an sslkit checkpoint of the backbone alone."
)
EPILOG = examples(
    "sslkit export runs/dino --out dino-vit-small.safetensors",
    "sslkit export runs/byol --out byol-r18.safetensors --checkpoint-key student",
    "sslkit export runs/mae --out mae-encoder.safetensors --format sslkit",
)

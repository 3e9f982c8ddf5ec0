"""sslkit export MODEL --out FILE.safetensors: the backbone alone, ready for timm or for sslkit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from sslkit import console
from sslkit.cli.common import JSON_OPTION, MODEL_HELP, QUIET_OPTION, examples, handle_errors, report, writable_file
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.engine.settings import ExportConfig


def _export(model: str, out: Path, json_path: Optional[Path], quiet: bool, **values):
    """Export a backbone."""
    with handle_errors(quiet):
        from sslkit import api

        report(api.export(model, out, **given_settings(values, ExportConfig)), json_path, quiet, _show)


def _show(result: dict) -> None:
    console.stdout.print(
        f"{result['out']}: {result['description']}, {result['parameters']:,} parameters, "
        f"{result['img_size']} px, {result['format']} format", markup=False, soft_wrap=True)
    if result.get("licence"):
        console.stdout.print(f"licence: {result['licence']}", markup=False, soft_wrap=True)
    if result["format"] == "timm":
        console.stdout.print(
            f"timm.create_model(\"{result['arch']}\", pretrained=True, num_classes=0, "
            + (f"img_size={result['img_size']}, " if result["patch_size"] else "")
            + (f"global_pool=\"{result['pooling']}\", " if result["patch_size"] and result["pooling"] != "token"
               else "")  # MAE's fine-tuned ViTs average-pool through fc_norm
            + f"pretrained_cfg_overlay=dict(file=\"{result['out']}\"))", markup=False, soft_wrap=True)


export = command([argument("model", str, MODEL_HELP),
                  option("out", Path, "--out", "-o", default=Parameter.empty, callback=writable_file,
                         help="The .safetensors file to write (atomically)."),
                  *settings_options(ExportConfig), JSON_OPTION, QUIET_OPTION], _export)


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

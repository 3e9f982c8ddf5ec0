"""sslkit export MODEL --out FILE.safetensors: the backbone alone, ready for timm or for sslkit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sslkit import console, files
from sslkit.cli.common import JSON_OPTION, MODEL_HELP, QUIET_OPTION, examples, handle_errors, report, writable_file
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.engine.settings import ExportConfig
from sslkit.errors import UsageError


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
    if result.get("timm"):
        console.stdout.print(result["timm"], markup=False, soft_wrap=True)


def _writable_out(path: Path | None) -> Path | None:
    """--out: a file to write, or (--format timm-dir) a folder, new or existing; refused while the command line
    is read when nothing could be written there."""
    if path is not None and path.is_dir():
        try:
            files.check_output_folder(path, "--out")
        except UsageError as error:
            raise typer.BadParameter(str(error).strip()) from None
        return path
    return writable_file(path)


export = command([argument("model", str, MODEL_HELP),
                  option("out", Path, "--out", "-o", default=Parameter.empty, callback=_writable_out,
                         help="The .safetensors file to write (atomically), or with --format timm-dir the "
                              "folder."),
                  *settings_options(ExportConfig), JSON_OPTION, QUIET_OPTION], _export)


HELP = (
    "Write a model's backbone (the EMA teacher by default) to a .safetensors file, without heads, optimizer or "
    "training state.\n\n"
    "--format timm writes a plain state dict in timm names, with metadata (arch, img_size, patch_size, mean / "
    "std, pooling, method, step, source, and the licence of imported weights): timm.create_model(ARCH, "
    "pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=FILE)) loads it (pass img_size= for a ViT "
    "trained at another size), and "
    "every sslkit command takes it as MODEL. --format sslkit writes an sslkit checkpoint of the backbone alone.\n\n"
    "--format timm-dir writes the Hugging Face / timm model folder --out: config.json (architecture, input size, "
    "mean / std, num_features), model.safetensors and a README.md model card (method, data size, epochs, the "
    "run's k-NN). timm.create_model(\"local-dir:DIR\", pretrained=True) loads it, hf upload publishes it as it "
    "is, and every sslkit command takes the folder (or local-dir:DIR) as MODEL."
)
EPILOG = examples(
    "sslkit export runs/dino --out dino-vit-small.safetensors",
    "sslkit export runs/byol --out byol-r18.safetensors --checkpoint-key student",
    "sslkit export runs/mae --out mae-encoder.safetensors --format sslkit",
    "sslkit export runs/dino --out dino-vit-small/ --format timm-dir",
    "sslkit export dinov2_vits14_reg4_pretrain.pth --out dinov2-s14-reg4/ --format timm-dir --img-size 224",
)

"""sslkit info MODEL: what a checkpoint or weights file holds, and whether its backbone fits."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import JsonOut, Quiet, examples, handle_errors, write_json
from sslkit.cli.probe import Arch, CheckpointKey, Model

SHOWN = ("file", "kind", "method", "arch", "img_size", "patch_size", "parameters", "backbones", "backbone", "step",
         "epoch", "precision", "licence", "tensors", "bytes", "arch_error")


def info(
    model: Model,
    checkpoint_key: CheckpointKey = None,
    arch: Arch = None,
    config: bool = typer.Option(False, "--config", help="Also print the run's resolved settings (a .pth file's args, "
                                                        "a Lightning file's hyper-parameters)."),
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    """Describe a model file."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        result = api.info(model, checkpoint_key or "teacher", arch)
        write_json(json_path, result)
        if quiet:
            return
        table = Table(show_header=False)
        for name in SHOWN:
            if result.get(name) is not None:
                value = result[name]
                shown = f"{value:,}" if isinstance(value, int) and name in ("parameters", "bytes") else value
                table.add_row(name, ", ".join(value) if isinstance(value, list) else str(shown))
        console.stdout.print(table)
        keys = result.get("keys")
        if keys:
            if keys["fits"]:
                console.stdout.print(f"backbone: all {keys['expected']} tensors of {result['arch']} present, "
                                     "shapes match")
            else:
                console.stdout.print(f"backbone: {keys['matched']} of {keys['expected']} tensors of {result['arch']} "
                                     "fit", markup=False)
                for name in ("missing", "unexpected", "wrong shape"):
                    if keys[name]:
                        more = f" and {len(keys[name]) - 5} more" if len(keys[name]) > 5 else ""
                        console.stdout.print(f"  {name}: {', '.join(keys[name][:5])}{more}", markup=False)
        settings = result.get("config") or result.get("args")
        if config and settings:
            console.stdout.print_json(json.dumps(settings))


HELP = (
    "Describe a model file without using it: its kind (sslkit run or checkpoint, sslkit export, DINO / MAE "
    ".pth, Lightning .ckpt, state dict), method, architecture (inferred for ViTs and ResNets), image and patch "
    "size, parameters, training step and epoch, the licence of official weights, and whether its backbone "
    "tensors fit the architecture (missing, unexpected and wrongly shaped keys are listed, not refused). --json "
    "writes everything, including the resolved settings."
)
EPILOG = examples(
    "sslkit info runs/dino",
    "sslkit info dino_deitsmall16_pretrain.pth --json info.json",
    "sslkit info runs/byol --config",
)

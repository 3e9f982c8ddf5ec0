"""sslkit info MODEL: what a checkpoint or weights file holds, and whether its backbone fits."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Optional

from rich.table import Table

from sslkit import console
from sslkit.cli.common import JSON_OPTION, MODEL_HELP, QUIET_OPTION, examples, handle_errors, report
from sslkit.cli.generate import argument, command, given_settings, option, settings_options
from sslkit.engine.settings import InfoConfig

SHOWN = ("file", "kind", "release", "method", "arch", "img_size", "patch_size", "tokens", "positions", "mean", "std",
         "parameters", "backbones", "backbone", "step", "epoch", "precision", "licence", "tensors", "bytes",
         "arch_error")


def _info(model: str, config: bool, json_path: Optional[Path], quiet: bool, **values):
    """Describe a model file."""
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        report(api.info(model, **given_settings(values, InfoConfig)), json_path, quiet,
               partial(_show, with_settings=config))


def _show(result: dict, with_settings: bool) -> None:
    table = Table(show_header=False)
    for name in SHOWN:
        if result.get(name) is not None:
            value = result[name]
            shown = f"{value:,}" if isinstance(value, int) and name in ("parameters", "bytes") else value
            table.add_row(name, ", ".join(map(str, value)) if isinstance(value, list) else str(shown))
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
    if with_settings and settings:
        console.stdout.print_json(json.dumps(settings))


info = command([argument("model", str, MODEL_HELP), *settings_options(InfoConfig),
                option("config", bool, "--config", default=False, help="Also print the run's resolved settings (a "
                       ".pth file's args, a Lightning file's hyper-parameters)."), JSON_OPTION, QUIET_OPTION], _info)


HELP = (
    "Describe a model file without using it: its kind (sslkit run or checkpoint, sslkit export, DINO / MAE "
    ".pth, a DINOv2 / DINOv3 release, Lightning .ckpt, state dict), method, architecture (inferred for ViTs and "
    "ResNets), native image and patch size, tokens (CLS, registers, patch grid) and position encoding, input "
    "mean / std, parameters, training step and epoch, the licence of official weights, and whether its backbone "
    "tensors fit the architecture (missing, unexpected and wrongly shaped keys are listed, not refused). --json "
    "writes everything, including the resolved settings."
)
EPILOG = examples(
    "sslkit info runs/dino",
    "sslkit info dino_deitsmall16_pretrain.pth --json info.json",
    "sslkit info dinov2_vits14_reg4_pretrain.pth",
    "sslkit info runs/byol --config",
)

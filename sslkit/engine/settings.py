"""The settings of the commands on one model file, export and info, apart from the code (it imports torch),
so that the command line is built without it."""

from __future__ import annotations

from dataclasses import dataclass

from sslkit.config import KEYS, allow_partial_setting
from sslkit.settings import Settings, one_of, pixels, setting

@dataclass(frozen=True)
class ExportConfig(Settings):
    """sslkit export: a backbone written as a safetensors file (sslkit.engine.export.export_backbone)."""

    format: str = setting("timm", "timm (a plain state dict in timm names, default), sslkit (an sslkit checkpoint of "
                                  "the backbone alone) or timm-dir (a Hugging Face / timm model folder: config.json, "
                                  "model.safetensors and a README.md model card).", flags=("--format",),
                          cli_default=True)
    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student.", check=one_of(*KEYS),
                                  cli_default=True)
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViTs).")
    allow_partial: bool = allow_partial_setting()
    licence: str | None = setting(None, "The weights' licence, written to the metadata (default: the imported "
                                        "weights' when known, e.g. MAE's CC-BY-NC-4.0).")
    img_size: int | None = setting(None, "ViTs: resample the position embedding for this image size (default: the "
                                         "trained size).", check=pixels)
    force: bool = setting(False, "--format timm-dir: write into an --out folder that holds files sslkit did not write "
                                 "there; they are never overwritten (sslkit refuses instead).", flags=("--force",))


@dataclass(frozen=True)
class InfoConfig(Settings):
    """sslkit info: what a model file holds (sslkit.engine.modelinfo)."""

    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student (the online one).",
                                  check=one_of(*KEYS))
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViTs).")

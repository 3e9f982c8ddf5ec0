"""``sslkit export``: a backbone alone, as a safetensors file in timm names, as an sslkit checkpoint, or as the
Hugging Face / timm model folder (sslkit.engine.timmdir), with what it is and where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sslkit import __version__
from sslkit.engine import timmdir
from sslkit.engine.checkpoint import (FORMAT, LoadedBackbone, metadata_json, raw_metadata, save_checkpoint,
                                      save_safetensors, write_safetensors)
from sslkit.engine.progress import read_records
from sslkit.errors import UsageError
from sslkit.files import OutputFolder
from sslkit.models.backbones import has_weights, is_vit, normalization, patch_size


EXPORT_FORMATS = ("timm", "sslkit", "timm-dir")


def export_backbone(loaded: LoadedBackbone, out: Path, fmt: str = "timm", licence: str | None = None,
                    force: bool = False) -> dict[str, str]:
    """Write ``loaded``'s backbone to ``out``, atomically; returns the metadata written with it.

    ``timm``: a plain state dict in timm names, which ``timm.create_model(arch, pretrained=True,
    pretrained_cfg_overlay=dict(file=out), num_classes=0)`` loads (and every sslkit command takes as MODEL);
    ``sslkit``: an sslkit checkpoint holding the backbone alone; ``timm-dir``: the Hugging Face / timm folder
    ``out`` (config.json, model.safetensors, README.md: sslkit.engine.timmdir), which
    ``timm.create_model("local-dir:OUT", pretrained=True)`` loads; ``force`` writes beside files sslkit did not
    write there (never over them). ``licence`` states the weights' licence; by default that of the imported
    weights when known, "unknown" for other imported files, none for weights sslkit trained from scratch.
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not '{fmt}'")
    if not has_weights(loaded.module):
        raise UsageError(f"{loaded.source} has no weights to export")
    metadata = export_metadata(loaded, licence)
    state = loaded.module.state_dict()
    if fmt == "timm":
        save_safetensors(out, state, {"format": "pt", **metadata})  # "pt": the Hugging Face convention
    elif fmt == "sslkit":
        save_checkpoint(out, {f"model.backbone.{k}": v for k, v in state.items()},
                        {**metadata, "backbones": json.dumps({"backbone": "backbone"})})
    else:
        _write_timm_folder(loaded, Path(out), state, metadata, force)
    return metadata


def timm_call(loaded: LoadedBackbone, out: Path, fmt: str) -> str | None:
    """The Python line that builds an export in timm (none for the sslkit format). A ViT's size and pooling are
    spelled out: timm's defaults for the architecture may be others (DINOv3's Eva average-pools)."""
    if fmt == "timm-dir":
        return f'timm.create_model("local-dir:{out}", pretrained=True)'
    if fmt != "timm":
        return None
    module, options = loaded.module, ""
    if is_vit(module):
        options = f'img_size={loaded.img_size}, global_pool="{getattr(module, "global_pool", "token")}", '
    return (f'timm.create_model("{loaded.arch}", pretrained=True, num_classes=0, {options}'
            f'pretrained_cfg_overlay=dict(file="{out}"))')


def export_metadata(loaded: LoadedBackbone, licence: str | None = None) -> dict[str, str]:
    """What an export records of the backbone and where it came from, as safetensors metadata strings."""
    module = loaded.module
    imported = not loaded.method and not loaded.source.startswith("timm:")
    licence = licence or loaded.licence or ("unknown: check the terms of the weights' source" if imported else None)
    mean, std = normalization(module)
    return {
        "arch": loaded.arch, "img_size": str(loaded.img_size), "patch_size": str(patch_size(module) or ""),
        "mean": json.dumps(mean), "std": json.dumps(std),
        "pooling": str(getattr(module, "global_pool", "token")) if is_vit(module) else "avg",
        "method": loaded.method or "none",
        "step": loaded.step, "source": loaded.source, "sslkit_version": __version__,
        "pos_resample": loaded.pos_resample, **({"release": loaded.release} if loaded.release else {}),
        **({"licence": licence} if licence else {}),
    }


def _write_timm_folder(loaded: LoadedBackbone, out: Path, state: dict[str, torch.Tensor], metadata: dict[str, str],
                       force: bool) -> None:
    """config.json (timm's), model.safetensors (with the export's metadata, so the file alone is a MODEL too)
    and README.md, the model card; weights first, so that a folder with a config always has its weights."""
    provenance = {k: metadata[k] for k in ("method", "step", "source", "licence", "release", "pos_resample")
                  if metadata.get(k)}
    config = timmdir.timm_config(loaded.module, loaded.img_size, *normalization(loaded.module),
                                 metadata.get("licence"), provenance)
    card = timmdir.model_card(config, _run_summary(loaded.source))
    folder = OutputFolder(out, "export", force)
    folder.claim([timmdir.WEIGHTS, timmdir.CONFIG, timmdir.CARD], [Path(loaded.source)])
    folder.write(timmdir.WEIGHTS, lambda tmp: write_safetensors(state, tmp, {"format": "pt", **metadata}))
    folder.write_json(timmdir.CONFIG, config)
    folder.write(timmdir.CARD, lambda tmp: tmp.write_text(card, encoding="utf-8"))


def _run_summary(source: str) -> dict:
    """The run an sslkit checkpoint belongs to, for the model card: its config (the checkpoint's own) and the
    metrics.jsonl beside its checkpoints folder; {} for every other file."""
    path = Path(source)
    if path.suffix != ".safetensors" or not path.is_file() or raw_metadata(path).get("format") != FORMAT:
        return {}
    metadata = raw_metadata(path)
    config = metadata_json(metadata, "config", path)
    metrics = path.parent.parent / "metrics.jsonl"
    records = read_records(metrics) if path.parent.name == "checkpoints" and metrics.is_file() else []
    return timmdir.run_summary(config if isinstance(config, dict) else {}, metadata.get("continued_from"), records)

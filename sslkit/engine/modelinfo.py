"""What a MODEL file holds, without loading it into anything: its kind, the method and architecture, the
training progress and settings, and how its backbone tensors fit the architecture (``sslkit info``)."""

from __future__ import annotations

from pathlib import Path

import torch

from sslkit.engine import checkpoint as ckpt, foreign, timmdir
from sslkit.errors import UsageError
from sslkit.models.backbones import create_backbone, is_vit, normalization, patch_size, set_normalization


def model_info(spec: str, checkpoint_key: str = "teacher", arch: str | None = None) -> dict:
    """A description of ``spec`` (any MODEL argument) as a JSON-ready dict; a backbone that does not fit its
    architecture is reported (``keys``), not refused."""
    if checkpoint_key not in ("teacher", "student"):
        raise UsageError(f"--checkpoint-key must be one of teacher, student, not '{checkpoint_key}'")
    if spec.startswith(("timm:", "pixels:")):
        loaded = ckpt.load_backbone(spec, checkpoint_key, arch=arch)
        module = loaded.module
        return {"model": spec, "kind": "random init" if spec.startswith("timm:") else "pixel thumbnail",
                "arch": loaded.arch, "img_size": loaded.img_size, "patch_size": patch_size(module),
                "parameters": _count(module), "keys": _fits(module, module.state_dict())}
    folder = timmdir.folder_of(spec)
    if folder is not None:
        info, found, metadata = _timm_folder(folder)
    else:
        path = ckpt.model_path(spec)
        info = {"file": str(path), "bytes": path.stat().st_size}
        reader = _torch_file if path.suffix in foreign.SUFFIXES else _safetensors_file
        found, metadata = reader(path, checkpoint_key, info)
    info = {"model": spec, **info}
    state, release = found.state, found.release
    if release is not None:
        info.update(kind=f"{release.family} release ({info['kind']})", release=release.name, licence=release.licence)
    elif metadata.get("release"):
        info["release"] = metadata["release"]
    path = Path(info["weights"] if "weights" in info else info["file"])
    arch = arch or metadata.get("arch") or (release.arch if release else _infer(state, path, info))
    if arch is None:
        return info
    if "img_size" in metadata:
        size = foreign.plausible_img_size(metadata["img_size"], path)
    else:
        size = foreign.native_img_size(state, path, arch)
    with torch.device("meta"):  # shapes only: a ViT-g is described without 4.5 GB of weights
        module = create_backbone(arch, size, **{**foreign.vit_options(state), **metadata.get("model_args", {})})
    if release is not None:
        set_normalization(module, release.cfg["mean"], release.cfg["std"])
    ckpt.set_exported_normalization(module, metadata, path)
    mean, std = normalization(module)
    info.update(arch=arch, img_size=size, patch_size=patch_size(module), vit=is_vit(module),
                parameters=_count(module), mean=list(mean), std=list(std), keys=_fits(module, state))
    if is_vit(module):
        info.update(_tokens(module, release, ckpt.pos_resample(release, info.get("licence"), path, metadata)))
    return info


def _timm_folder(folder: Path) -> tuple[dict, foreign.Backbone, dict]:
    described, found = ckpt.read_timm_folder(folder)
    metadata = {**ckpt.timm_folder_metadata(described), "arch": described.arch, "model_args": described.model_args}
    info = {"file": str(folder), "weights": str(described.weights), "bytes": described.weights.stat().st_size,
            "kind": f"timm model folder (config.json, {described.weights.name})", "method": metadata.get("method"),
            "step": _number(metadata.get("step")), "licence": metadata.get("licence")}
    return info, found, metadata


def _torch_file(path: Path, checkpoint_key: str, info: dict) -> tuple[foreign.Backbone, dict]:
    data = foreign.read_torch_file(path)
    info.update(_torch_kind(data, path))
    return foreign.backbone(data, checkpoint_key, path), {}


def _safetensors_file(path: Path, checkpoint_key: str, info: dict) -> tuple[foreign.Backbone, dict]:
    metadata = ckpt.raw_metadata(path)
    if metadata.get("format") == ckpt.FORMAT:
        key, state = ckpt.sslkit_backbone(path, metadata, checkpoint_key)
        info.update(kind="sslkit checkpoint", method=metadata.get("method"),
                    backbones=sorted(ckpt.metadata_json(metadata, "backbones", path) or {}),
                    backbone=key, step=_number(metadata.get("step")), epoch=_number(metadata.get("epoch")),
                    precision=metadata.get("precision"), config=ckpt.metadata_json(metadata, "config", path),
                    licence=metadata.get("licence"), tensors=len(ckpt.read_tensors(path)))
        return foreign.Backbone(state), metadata
    exported = "sslkit_version" in metadata
    info.update(kind="sslkit export (timm names)" if exported else "safetensors state dict",
                method=metadata.get("method"), step=_number(metadata.get("step")), licence=metadata.get("licence"))
    return foreign.backbone(ckpt.read_tensors(path), checkpoint_key, path), metadata


def _tokens(module, release, pos_resample: str) -> dict:
    """A ViT's tokens at its native size (the CLS, registers or DINOv3's storage tokens, the patch grid) and how
    positions are encoded: a learned table (resampled for other sizes as the weights were trained) or RoPE."""
    grid = list(module.patch_embed.grid_size)
    registers = module.num_prefix_tokens - int(getattr(module, "cls_token", None) is not None)
    kind = "storage tokens" if release is not None and release.family == "DINOv3" else "registers"
    tokens = f"CLS + {registers} {kind} + {grid[0]} x {grid[1]} patches" if registers else \
        f"CLS + {grid[0]} x {grid[1]} patches"
    if getattr(module, "pos_embed", None) is None:
        return {"prefix_tokens": module.num_prefix_tokens, "patch_grid": grid, "tokens": tokens,
                "positions": "rotary (RoPE): any multiple of the patch size, nothing to resample"}
    positions = f"learned {grid[0]} x {grid[1]} table; other sizes: {RESAMPLED[pos_resample]}"
    return {"prefix_tokens": module.num_prefix_tokens, "patch_grid": grid, "tokens": tokens, "positions": positions,
            "pos_resample": pos_resample}


RESAMPLED = {"dino": "bicubic by (grid + 0.1) / trained grid, not antialiased (DINO's, DINOv2's)",
             "timm": "antialiased bicubic to the exact grid (timm's, DINOv2's with registers)"}


def _torch_kind(data: dict, path) -> dict:
    entries = sorted(k for k, v in data.items() if isinstance(k, str) and not isinstance(v, torch.Tensor))
    info = {"kind": foreign.describe(data), "licence": foreign.licence(data), "entries": entries[:20]}
    settings = foreign.settings(data, path)
    if settings is not None:
        info["args"] = settings
    for key in ("epoch", "global_step"):
        if isinstance(data.get(key), int):
            info[key.replace("global_", "")] = data[key]
    return info


def _infer(state: dict, path, info: dict) -> str | None:
    try:
        return foreign.infer_arch(state, path)
    except UsageError as error:
        info["arch_error"] = str(error)
        return None


def _fits(module, state: dict) -> dict:
    report = ckpt.key_report(module, state)
    matched = len(state) - len(report["unexpected"]) - len(report["wrong shape"])
    return {"matched": matched, "expected": len(module.state_dict()), **report, "fits": not any(report.values())}


def _count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _number(value: str | None):
    """A metadata count as an int; anything else (a hostile "²" or a million digits) as the string it is."""
    return int(value) if value is not None and value.isascii() and value.isdigit() and len(value) < 19 else value

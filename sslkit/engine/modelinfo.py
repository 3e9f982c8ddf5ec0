"""What a MODEL file holds, without loading it into anything: its kind, the method and architecture, the
training progress and settings, and how its backbone tensors fit the architecture (``sslkit info``)."""

from __future__ import annotations

import torch

from sslkit.engine import checkpoint as ckpt, foreign
from sslkit.errors import UsageError
from sslkit.models.backbones import create_backbone, is_vit, patch_size


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
    path = ckpt.model_path(spec)
    info: dict = {"model": spec, "file": str(path), "bytes": path.stat().st_size}
    if path.suffix in foreign.SUFFIXES:
        data = foreign.read_torch_file(path)
        info.update(_torch_kind(data, path))
        state, metadata = foreign.backbone_state(data, checkpoint_key, path), {}
    else:
        metadata = ckpt.raw_metadata(path)
        if metadata.get("format") == ckpt.FORMAT:
            key, state = ckpt.sslkit_backbone(path, metadata, checkpoint_key)
            info.update(kind="sslkit checkpoint", method=metadata.get("method"),
                        backbones=sorted(ckpt.metadata_json(metadata, "backbones", path) or {}),
                        backbone=key, step=_number(metadata.get("step")), epoch=_number(metadata.get("epoch")),
                        precision=metadata.get("precision"), config=ckpt.metadata_json(metadata, "config", path),
                        licence=metadata.get("licence"), tensors=len(ckpt.read_tensors(path)))
        else:
            state = foreign.backbone_state(ckpt.read_tensors(path), checkpoint_key, path)
            exported = "sslkit_version" in metadata
            info.update(kind="sslkit export (timm names)" if exported else "safetensors state dict",
                        method=metadata.get("method"), step=_number(metadata.get("step")),
                        licence=metadata.get("licence"))
    arch = arch or metadata.get("arch") or _infer(state, path, info)
    if arch is None:
        return info
    if "img_size" in metadata:
        size = foreign.plausible_img_size(metadata["img_size"], path)
    else:
        size = foreign.native_img_size(state, path)
    module = create_backbone(arch, size, **foreign.vit_options(state))
    info.update(arch=arch, img_size=size, patch_size=patch_size(module), vit=is_vit(module),
                parameters=_count(module), keys=_fits(module, state))
    return info


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

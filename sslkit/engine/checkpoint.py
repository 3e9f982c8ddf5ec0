"""sslkit checkpoints: one safetensors file per save, written atomically, with string metadata.

Tensors: ``model.<name>`` for the method's state (online and EMA networks, heads), ``optim.*``, ``scaler.*``
and ``rng.*`` for the training state. Non-tensor parts of that state (hyper-parameters, counters, the Python
RNG) travel as a JSON skeleton in the metadata. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from sslkit import __version__
from sslkit.errors import UsageError
from sslkit.models.backbones import create_backbone, is_vit

FORMAT = "sslkit/1"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``path`` so that a crash at any moment leaves either the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"format": FORMAT, "sslkit_version": __version__, **metadata}
    save_file(_storable(tensors), str(tmp), metadata=meta)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors, none sharing memory with another (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if key in seen:
            tensor = tensor.clone()
        elif key is not None:
            seen.add(key)
        out[name] = tensor
    return out


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metadata(path: Path) -> dict[str, str]:
    with _open(path) as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise UsageError(f"{path} is a safetensors file but not an sslkit checkpoint (no format={FORMAT} metadata)")
    return metadata


def read_tensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix removed."""
    with _open(path) as handle:
        return {k[len(prefix):]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}


def _open(path: Path):
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as error:
        raise UsageError(f"{path} is not a readable safetensors file ({error})") from None


def pack(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON skeleton of ``obj`` (nested dicts, lists, numbers, strings) with its tensors moved to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        int_keys = all(isinstance(k, int) for k in obj)
        items = {str(k): pack(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {"__intdict__" if int_keys and obj else "__dict__": items}
    if isinstance(obj, (list, tuple)):
        items = [pack(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": items}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if not isinstance(skeleton, dict):
        return skeleton
    (kind, value), = skeleton.items()
    if kind == "__tensor__":
        return tensors[value]
    if kind == "__dict__":
        return {k: unpack(v, tensors) for k, v in value.items()}
    if kind == "__intdict__":
        return {int(k): unpack(v, tensors) for k, v in value.items()}
    items = [unpack(v, tensors) for v in value]
    return tuple(items) if kind == "__tuple__" else items


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class LoadedBackbone:
    module: nn.Module
    arch: str
    img_size: int
    description: str


def load_backbone(spec: str, checkpoint_key: str = "teacher", img_size: int | None = None) -> LoadedBackbone:
    """The backbone that ``MODEL`` names: a run directory, an sslkit ``.safetensors`` or ``timm:ARCH``.

    ``checkpoint_key`` picks the EMA teacher / target ("teacher") or the online student ("student") of
    methods that train both. ``img_size`` (default: the size the model was trained at) resizes a ViT's
    position embedding.
    """
    if spec.startswith("timm:"):
        arch = spec[len("timm:"):]
        size = img_size or 224
        return LoadedBackbone(create_backbone(arch, size), arch, size, f"{arch}, random init")
    path = Path(spec)
    if path.is_dir():
        path = path / "checkpoints" / "last.safetensors"
        if not path.is_file():
            raise UsageError(f"{spec} is a folder without checkpoints/last.safetensors (not an sslkit run)")
    elif not path.exists():
        raise UsageError(f"model not found: {spec} (give a run directory, a .safetensors checkpoint or timm:ARCH)")
    elif path.suffix != ".safetensors":
        raise UsageError(f"{spec}: only sslkit .safetensors checkpoints, run directories and timm:ARCH are accepted")
    metadata = read_metadata(path)
    prefixes = json.loads(metadata.get("backbones", "{}"))
    if checkpoint_key not in prefixes:
        raise UsageError(f"{path} has no '{checkpoint_key}' backbone; it has: {', '.join(prefixes) or 'none'}")
    arch, trained_size = metadata["arch"], int(metadata["img_size"])
    module = create_backbone(arch, trained_size)
    state = read_tensors(path, f"model.{prefixes[checkpoint_key]}.")
    _load_strict(module, state, path)
    if img_size and img_size != trained_size and is_vit(module):
        module.set_input_size(img_size=img_size)  # resamples the position embedding
    description = f"{metadata['method']} {arch} ({checkpoint_key}), step {metadata.get('step', '?')}"
    return LoadedBackbone(module, arch, img_size or trained_size, description)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{name}: {_few(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if keys]
        raise UsageError(f"{path} does not fit the backbone ({'; '.join(parts)})")
    module.load_state_dict(state, strict=True)


def _few(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more

"""sslkit checkpoints: one safetensors file per save, written atomically, with string metadata.

Tensors: ``model.<name>`` for the method's state (online and EMA networks, heads), ``optim.*``, ``scaler.*``
and ``rng.*`` for the training state. Non-tensor parts of that state (hyper-parameters, counters, the Python
RNG) travel as a JSON skeleton in the metadata. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from sslkit import __version__
from sslkit.errors import UsageError
from sslkit.models.backbones import (IMAGENET_MEAN, IMAGENET_STD, create_backbone, create_thumbnail, has_weights,
                                     is_vit, patch_size)

FORMAT = "sslkit/1"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``path`` so that a crash at any moment leaves either the old file or the new one, never a mix."""
    save_safetensors(path, tensors, {"format": FORMAT, "sslkit_version": __version__, **metadata})


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Any safetensors file, written atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_storable(tensors), str(tmp), metadata=metadata)
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


def raw_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata, whoever wrote it."""
    with _open(path) as handle:
        return handle.metadata() or {}


def read_metadata(path: Path) -> dict[str, str]:
    metadata = raw_metadata(path)
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
    source: str  # the file the weights came from, or timm:ARCH
    method: str = ""  # the sslkit method that trained it ("" for foreign files and random inits)
    step: str = ""


FOREIGN_SUFFIXES = (".pth", ".pt", ".bin", ".tar")


def load_backbone(spec: str, checkpoint_key: str = "teacher", img_size: int | None = None, *,
                  arch: str | None = None, dynamic: bool = False, drop_path_rate: float = 0.0) -> LoadedBackbone:
    """The backbone that ``MODEL`` names: a run directory, an sslkit ``.safetensors``, an official DINO / MAE
    ``.pth``, ``timm:ARCH`` or ``pixels:N`` (an N x N thumbnail of the image: the no-learning baseline).

    ``checkpoint_key`` picks the EMA teacher / target ("teacher") or the online student ("student") of
    methods that train both. ``img_size`` (default: the size the model was trained at; 224 for ``timm:`` and
    ``.pth``) resizes a ViT's position embedding; with ``dynamic`` a ViT takes any input size (its position
    embedding resampled per call). ``arch`` names the timm model of a ``.pth`` file (inferred for ViTs).
    ``drop_path_rate`` is for fine-tuning a ViT.
    """
    vit_options = {"dynamic_img_size": True} if dynamic else {}
    if drop_path_rate:
        vit_options["drop_path_rate"] = drop_path_rate
    if spec.startswith("pixels:"):
        thumbnail = create_thumbnail(spec)
        side = thumbnail.side
        return LoadedBackbone(thumbnail, spec, img_size or 224, f"{side}x{side} pixel thumbnail (no learning)", spec)
    if spec.startswith("timm:"):
        arch = spec[len("timm:"):]
        size = img_size or 224
        return LoadedBackbone(create_backbone(arch, size, **vit_options), arch, size, f"{arch}, random init", spec)
    path = model_path(spec)
    if path.suffix in FOREIGN_SUFFIXES:
        state = backbone_state(read_torch_file(path), checkpoint_key, path)
        return _load_foreign(state, path, img_size, arch, vit_options)
    metadata = raw_metadata(path)
    if metadata.get("format") != FORMAT:  # a plain state dict in timm names (`sslkit export`, timm's own files)
        state = backbone_state(read_tensors(path), checkpoint_key, path)
        exported_size = int(metadata["img_size"]) if metadata.get("img_size", "").isdigit() else None
        return _load_foreign(state, path, img_size or exported_size, arch or metadata.get("arch"), vit_options)
    checkpoint_key, state = sslkit_backbone(path, metadata, checkpoint_key)
    arch, trained_size = metadata["arch"], int(metadata["img_size"])
    module = create_backbone(arch, trained_size, **vit_options)
    load_strict(module, state, path)
    if img_size and img_size != trained_size and is_vit(module) and not dynamic:
        module.set_input_size(img_size=img_size)  # resamples the position embedding
    step = metadata.get("step", "?")
    description = f"{metadata['method']} {arch} ({checkpoint_key}), step {step}"
    return LoadedBackbone(module, arch, img_size or trained_size, description, str(path), metadata["method"], step)


def sslkit_backbone(path: Path, metadata: dict[str, str], checkpoint_key: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The key and tensors of the backbone ``checkpoint_key`` names in an sslkit checkpoint; a checkpoint with
    one network (MAE's encoder, an export) gives that one, whatever the key."""
    prefixes = json.loads(metadata.get("backbones", "{}"))
    if len(prefixes) == 1:
        checkpoint_key = next(iter(prefixes))
    if checkpoint_key not in prefixes:
        raise UsageError(f"{path} has no '{checkpoint_key}' backbone; it has: {', '.join(prefixes) or 'none'}")
    return checkpoint_key, read_tensors(path, f"model.{prefixes[checkpoint_key]}.")


def model_path(spec: str) -> Path:
    """The file a MODEL argument names: a run directory's last checkpoint, or the file itself."""
    path = Path(spec)
    if path.is_dir():
        path = path / "checkpoints" / "last.safetensors"
        if not path.is_file():
            raise UsageError(f"{spec} is a folder without checkpoints/last.safetensors (not an sslkit run)")
    elif not path.exists():
        raise UsageError(f"model not found: {spec} (give a run directory, a .safetensors or .pth file, or timm:ARCH)")
    if path.suffix not in FOREIGN_SUFFIXES and path.suffix != ".safetensors":
        raise UsageError(f"{spec}: expected a run directory, an sslkit .safetensors, a .pth file or timm:ARCH")
    return path


def infer_arch(state: dict[str, torch.Tensor], path: Path) -> str:
    """The timm name of a backbone state dict: ResNets and ViTs are recognised from their keys and shapes."""
    return infer_resnet_arch(state, path) if "layer1.0.conv1.weight" in state else infer_vit_arch(state, path)


def _load_foreign(state: dict[str, torch.Tensor], path: Path, img_size: int | None, arch: str | None,
                  vit_options: dict) -> LoadedBackbone:
    """A backbone state dict in timm names: an official DINO / MAE checkpoint's, a timm file's or an export's."""
    arch = arch or infer_arch(state, path)
    native = native_img_size(state)
    module = create_backbone(arch, native, **vit_options)
    load_strict(module, state, path)
    if img_size and img_size != native and is_vit(module) and "dynamic_img_size" not in vit_options:
        module.set_input_size(img_size=img_size)
    return LoadedBackbone(module, arch, img_size or native, f"{path.name} ({arch})", str(path))


def native_img_size(state: dict[str, torch.Tensor]) -> int:
    """The image side a ViT state dict's position embedding was made for (224 for conv nets)."""
    if "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        return 224
    prefix = int("cls_token" in state) + (state["reg_token"].shape[1] if "reg_token" in state else 0)
    side = math.isqrt(state["pos_embed"].shape[1] - prefix)
    return side * state["patch_embed.proj.weight"].shape[-1]


def read_torch_file(path: Path) -> dict:
    """A ``torch.save`` file, never unpickling arbitrary objects: tensors and containers only, plus the
    ``argparse.Namespace`` that DINO's and MAE's full checkpoints hold under ``args``."""
    import argparse

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors name the refused class; anything else is an unreadable file
        raise UsageError(f"cannot read {path} as a weights-only PyTorch file ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} does not hold a state dict")
    return data


def backbone_state(data: dict, checkpoint_key: str, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors: from the ``teacher`` / ``student`` / ``model`` / ``state_dict`` entry when the file
    has one, with DDP's ``module.`` and DINO's ``backbone.`` prefixes stripped and heads / decoders dropped."""
    for key in (checkpoint_key, "model", "state_dict"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    state = {}
    for name, value in data.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "backbone."):
            name = name.removeprefix(prefix)
        if name.startswith(("head.", "decoder", "mask_token", "fc.", "fc_norm.")):
            continue  # projection heads, MAE's decoder, classifiers: not part of the backbone
        state[name] = value
    if not state:
        raise UsageError(f"{path} holds no tensors under '{checkpoint_key}', 'model' or 'state_dict'")
    return state


VIT_WIDTHS = {192: "tiny", 384: "small", 768: "base", 1024: "large"}


def infer_vit_arch(state: dict[str, torch.Tensor], path: Path) -> str:
    """The timm name of the ViT a state dict fits (DINO and MAE release ViT-S/B/L with patch 8, 14 or 16)."""
    weight = state.get("patch_embed.proj.weight")
    if weight is None or weight.shape[0] not in VIT_WIDTHS:
        raise UsageError(f"cannot tell the architecture of {path}; name it with --arch (a timm model name)")
    arch = f"vit_{VIT_WIDTHS[weight.shape[0]]}_patch{weight.shape[-1]}_224"
    if not timm.is_model(arch):
        raise UsageError(f"{path} looks like {arch}, which timm does not have; name the model with --arch")
    return arch


RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
           ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


def infer_resnet_arch(state: dict[str, torch.Tensor], path: Path) -> str:
    """The timm name of a ResNet state dict in torchvision / timm names (DINO's ResNet-50, torchvision's files),
    from its blocks per stage, their kind (bottleneck or basic) and their width."""
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4))
    bottleneck = "layer1.0.conv3.weight" in state
    arch = RESNETS.get((blocks, bottleneck))
    if arch in ("resnet50", "resnet101") and state["layer1.0.conv1.weight"].shape[0] == 128:
        arch = f"wide_{arch}_2"  # twice the bottleneck width
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise UsageError(f"{path} is a ResNet with {blocks} {kind} blocks per stage that sslkit cannot name; "
                         "give --arch (a timm model name)")
    return arch


def key_report(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """How a state dict fits a module: its ``missing``, ``unexpected`` and ``wrong shape`` keys, sorted."""
    expected = module.state_dict()
    return {
        "missing": sorted(set(expected) - set(state)),
        "unexpected": sorted(set(state) - set(expected)),
        "wrong shape": sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape),
    }


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    report = key_report(module, state)
    if any(report.values()):
        parts = [f"{name}: {_few(keys)}" for name, keys in report.items() if keys]
        raise UsageError(f"{path} does not fit the backbone ({'; '.join(parts)})")
    module.load_state_dict(state, strict=True)


def _few(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


EXPORT_FORMATS = ("timm", "sslkit")


def export_backbone(loaded: LoadedBackbone, out: Path, fmt: str = "timm") -> dict[str, str]:
    """Write ``loaded``'s backbone to ``out``, atomically; returns the metadata written with it.

    ``timm``: a plain state dict in timm names, which ``timm.create_model(arch, pretrained=True,
    pretrained_cfg_overlay=dict(file=out), num_classes=0)`` loads (and every sslkit command takes as MODEL);
    ``sslkit``: an sslkit checkpoint holding the backbone alone.
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not '{fmt}'")
    if not has_weights(loaded.module):
        raise UsageError(f"{loaded.source} has no weights to export")
    module = loaded.module
    metadata = {
        "arch": loaded.arch, "img_size": str(loaded.img_size), "patch_size": str(patch_size(module) or ""),
        "mean": json.dumps(IMAGENET_MEAN), "std": json.dumps(IMAGENET_STD),
        "pooling": "token" if is_vit(module) else "avg", "method": loaded.method or "none",
        "step": loaded.step, "source": loaded.source, "sslkit_version": __version__,
    }
    state = module.state_dict()
    if fmt == "timm":
        save_safetensors(out, state, {"format": "pt", **metadata})  # "pt": the Hugging Face convention
    else:
        save_checkpoint(out, {f"model.backbone.{k}": v for k, v in state.items()},
                        {**metadata, "backbones": json.dumps({"backbone": "backbone"})})
    return metadata

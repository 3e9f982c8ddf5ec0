"""sslkit checkpoints: one safetensors file per save, written atomically, with string metadata.

Tensors: ``model.<name>`` for the method's state (online and EMA networks, heads), ``optim.*``, ``scaler.*``
and ``rng.*`` for the training state. Non-tensor parts of that state (hyper-parameters, counters, the Python
RNG) travel as a JSON skeleton in the metadata. Nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from sslkit import __version__, console
from sslkit.engine import foreign, timmdir
from sslkit.engine.releases import Release
from sslkit.errors import UsageError
from sslkit.files import write_atomic
from sslkit.models.backbones import create_backbone, create_thumbnail, is_vit, set_normalization
from sslkit.models.posembed import RESAMPLINGS, set_img_size

FORMAT = "sslkit/1"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``path`` so that a crash at any moment leaves either the old file or the new one, never a mix."""
    save_safetensors(path, tensors, {"format": FORMAT, "sslkit_version": __version__, **metadata})


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                     tmp_suffix: str = ".tmp") -> None:
    """Any safetensors file, written atomically (temporary file, fsync, rename)."""
    write_atomic(path, lambda tmp: write_safetensors(tensors, tmp, metadata), tmp_suffix)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``tensors`` and ``metadata`` as the safetensors file ``path`` (not atomic: see save_safetensors)."""
    try:
        save_file(_storable(tensors), str(path), metadata=metadata)
    except SafetensorError as error:  # the Rust writer's I/O errors
        raise OSError(str(error)) from None


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
    licence: str | None = None  # of imported weights, when known
    release: str = ""  # the DINOv2 / DINOv3 release the weights are, e.g. "DINOv2 ViT-S/14 with 4 registers"
    pos_resample: str = "timm"  # how its position embedding meets other patch grids: as the weights were trained


def load_backbone(spec: str, checkpoint_key: str = "teacher", img_size: int | None = None, *,
                  arch: str | None = None, dynamic: bool = False, drop_path_rate: float = 0.0,
                  allow_partial: bool = False) -> LoadedBackbone:
    """The backbone that ``MODEL`` names: a run directory, an sslkit ``.safetensors``, another tool's weight
    file (``engine/foreign.py``), ``timm:ARCH`` or ``pixels:N`` (an N x N thumbnail of the image: the
    no-learning baseline).

    ``checkpoint_key`` picks the EMA teacher / target ("teacher") or the online student ("student") of
    methods that train both. ``img_size`` (default: the size the model was trained at; 224 for ``timm:``)
    resizes a ViT's position embedding; with ``dynamic`` a ViT takes any input size (its position embedding
    resampled per call). ``arch`` names the timm model of a foreign file (inferred for ViTs and ResNets).
    ``drop_path_rate`` is for fine-tuning a ViT. The load is strict unless ``allow_partial``.
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
    folder = timmdir.folder_of(spec)
    if folder is not None:
        return _load_timm_folder(folder, img_size, arch, vit_options, allow_partial)
    path = model_path(spec)
    if path.suffix in foreign.SUFFIXES:
        data = foreign.read_torch_file(path)
        found = foreign.backbone(data, checkpoint_key, path)
        return _load_foreign(found, path, img_size, arch, vit_options, allow_partial, foreign.licence(data), {})
    metadata = raw_metadata(path)
    if metadata.get("format") != FORMAT:  # a plain state dict in timm names (`sslkit export`, timm's own files)
        found = foreign.backbone(read_tensors(path), checkpoint_key, path)
        exported_size = foreign.plausible_img_size(metadata["img_size"], path) if "img_size" in metadata else None
        return _load_foreign(found, path, img_size or exported_size, arch or metadata.get("arch"), vit_options,
                             allow_partial, metadata.get("licence"), metadata)
    missing = [key for key in ("arch", "img_size", "method") if key not in metadata]
    if missing:
        raise UsageError(f"{path} is an sslkit checkpoint without its {', '.join(missing)} metadata")
    if arch and arch != metadata["arch"]:
        raise UsageError(f"--arch {arch} does not match {path}, an sslkit checkpoint of {metadata['arch']}; "
                         "drop --arch (sslkit files name their architecture)")
    arch, trained_size = metadata["arch"], foreign.plausible_img_size(metadata["img_size"], path)
    checkpoint_key, state = sslkit_backbone(path, metadata, checkpoint_key)
    module = create_backbone(arch, trained_size, **vit_options)
    load_weights(module, state, path, allow_partial)
    imported = metadata["method"] == "none"  # an export of imported weights: they keep their own ways
    how = pos_resample(None, metadata.get("licence") if imported else None, path, metadata)
    if img_size and img_size != trained_size and is_vit(module) and not dynamic:
        set_img_size(module, img_size, how)
    set_exported_normalization(module, metadata, path)
    step = metadata.get("step", "?")
    description = f"{metadata['method']} {arch} ({checkpoint_key}), step {step}"
    return LoadedBackbone(module, arch, img_size or trained_size, description, str(path), metadata["method"], step,
                          metadata.get("licence"), metadata.get("release", ""), how)


def sslkit_backbone(path: Path, metadata: dict[str, str], checkpoint_key: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The key and tensors of the backbone ``checkpoint_key`` names in an sslkit checkpoint."""
    checkpoint_key, network = backbone_network(path, metadata, checkpoint_key)
    return checkpoint_key, read_tensors(path, f"model.{network}.")


def backbone_network(path: Path, metadata: dict[str, str], checkpoint_key: str) -> tuple[str, str]:
    """The key and the network name (its ``model.<name>.`` prefix) of the backbone ``checkpoint_key`` names; a
    checkpoint with one network (MAE's encoder, an export) gives that one, whatever the key."""
    networks = metadata_json(metadata, "backbones", path) or {}
    if not isinstance(networks, dict) or not all(isinstance(v, str) for v in networks.values()):
        raise UsageError(f"{path}: metadata backbones is not a map of backbone names to network names")
    if len(networks) == 1:
        checkpoint_key = next(iter(networks))
    if checkpoint_key not in networks:
        raise UsageError(f"{path} has no '{checkpoint_key}' backbone; it has: {', '.join(networks) or 'none'}")
    return checkpoint_key, networks[checkpoint_key]


def metadata_json(metadata: dict[str, str], key: str, path: Path):
    """The JSON value of metadata ``key`` (None when absent), refused in one line when it is not JSON."""
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise UsageError(f"{path}: metadata {key} is not valid JSON") from None


def model_path(spec: str) -> Path:
    """The file a MODEL argument names: a run directory's last checkpoint, or the file itself, which must be a
    regular file (after links): reading a named pipe or a device would wait or never end."""
    path = Path(spec)
    if path.is_dir():
        path = path / "checkpoints" / "last.safetensors"
        if not path.is_file():
            raise UsageError(f"{spec} is a folder without checkpoints/last.safetensors (not an sslkit run)")
    elif not path.exists():
        raise UsageError(f"model not found: {spec} (give a run directory, a .safetensors or .pth file, or timm:ARCH)")
    elif not path.is_file():
        raise UsageError(f"{spec} is not a regular file (a pipe, socket or device); give a run directory, a "
                         ".safetensors or .pth file, or timm:ARCH")
    if path.suffix not in foreign.SUFFIXES and path.suffix != ".safetensors":
        raise UsageError(f"{spec}: expected a run directory, a .safetensors, .pth or .ckpt file, or timm:ARCH")
    return path


def _load_foreign(found: foreign.Backbone, path: Path, img_size: int | None, arch: str | None, vit_options: dict,
                  allow_partial: bool, licence: str | None, metadata: dict[str, str]) -> LoadedBackbone:
    """A backbone state dict in timm names: an official DINO / MAE checkpoint's, a released DINOv2 / DINOv3
    file's (converted by timm's filter), a timm file's or an export's."""
    state, release = found.state, found.release
    arch = arch or (release.arch if release else foreign.infer_arch(state, path))
    native = foreign.native_img_size(state, path, arch)
    module = create_backbone(arch, native, **{**foreign.vit_options(state), **vit_options})
    load_weights(module, state, path, allow_partial, f"{path} ({release.name})" if release else None)
    licence = release.licence if release else licence
    how = pos_resample(release, licence, path, metadata)
    if img_size and img_size != native and is_vit(module) and not vit_options.get("dynamic_img_size"):
        set_img_size(module, img_size, how)
    if release:
        set_normalization(module, release.cfg["mean"], release.cfg["std"])
    set_exported_normalization(module, metadata, path)
    name = release.name if release else console.printable(metadata.get("release", ""))
    description = f"{path.name} ({name + ', ' if name else ''}{arch})"
    return LoadedBackbone(module, arch, img_size or native, description, str(path), licence=licence, release=name,
                          pos_resample=how)


def read_timm_folder(folder: Path) -> tuple[timmdir.TimmFolder, foreign.Backbone]:
    """A timm model folder's checked config and its backbone (classifier dropped)."""
    described = timmdir.read_folder(folder)
    weights = described.weights
    data = read_tensors(weights) if weights.suffix == ".safetensors" else foreign.read_torch_file(weights)
    return described, foreign.backbone(data, "teacher", weights)


def timm_folder_metadata(described: timmdir.TimmFolder) -> dict[str, str]:
    """A folder's config in the terms of an export's metadata: its size, mean / std and sslkit's provenance."""
    return {**described.provenance, "mean": json.dumps(described.mean), "std": json.dumps(described.std),
            **({"img_size": str(described.img_size)} if described.img_size else {})}


def _load_timm_folder(folder: Path, img_size: int | None, arch: str | None, vit_options: dict,
                      allow_partial: bool) -> LoadedBackbone:
    """A Hugging Face / timm model folder (``sslkit export --format timm-dir``, ``timm``'s ``save_for_hf``)."""
    described, found = read_timm_folder(folder)
    if arch and arch != described.arch:
        raise UsageError(f"--arch {arch} does not match {folder}, whose config.json names {described.arch}; drop "
                         "--arch")
    metadata = timm_folder_metadata(described)
    loaded = _load_foreign(found, described.weights, img_size or described.img_size, described.arch,
                           {**described.model_args, **vit_options}, allow_partial, metadata.get("licence"), metadata)
    method = metadata.get("method", "")
    loaded.method, loaded.step = ("" if method == "none" else method), metadata.get("step", "")
    loaded.description = f"{folder.name}/ ({loaded.release + ', ' if loaded.release else ''}{described.arch})"
    return loaded


def pos_resample(release: Release | None, licence: str | None, path: Path, metadata: dict[str, str]) -> str:
    """How imported weights' position embedding is resampled to other patch grids: as they were trained.

    An export records it (``pos_resample``); DINOv2's releases resample as DINOv2 does (posembed.py); official
    DINO weights (a training checkpoint, an export of one, which keeps its licence, or a backbone-only file under
    its release name ``dino_*.pth``) as DINO does; everything else, sslkit runs included, as timm does."""
    if metadata.get("pos_resample") in RESAMPLINGS:
        return metadata["pos_resample"]
    if release is not None:
        return release.pos_resample or "timm"
    official_dino = path.suffix in foreign.SUFFIXES and path.name.lower().startswith("dino_")
    return "dino" if licence == foreign.DINO_LICENCE or official_dino else "timm"


def set_exported_normalization(module: nn.Module, metadata: dict[str, str], path: Path) -> None:
    """The mean and std an export records (``sslkit export`` writes them), checked: three positive stds."""
    if "mean" not in metadata and "std" not in metadata:
        return
    values = [metadata_json(metadata, key, path) for key in ("mean", "std")]
    if not all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in values) \
            or not all(x > 0 for x in values[1]):
        raise UsageError(f"{path}: metadata mean and std are not three numbers each (and positive stds)")
    set_normalization(module, *values)


def key_report(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """How a state dict fits a module: its ``missing``, ``unexpected`` and ``wrong shape`` keys, sorted."""
    expected = module.state_dict()
    return {
        "missing": sorted(set(expected) - set(state)),
        "unexpected": sorted(set(state) - set(expected)),
        "wrong shape": sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape),
    }


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path, allow_partial: bool = False,
                 label: str | None = None) -> None:
    """Load ``state`` into ``module``: every tensor must fit, unless ``allow_partial``, which loads those that
    fit (at least one), leaves the rest as built and says so. ``label`` names the file in messages (default
    its path)."""
    report = key_report(module, state)
    if not any(report.values()):
        module.load_state_dict(state, strict=True)
        return
    summary = "; ".join(f"{name}: {_few(keys)}" for name, keys in report.items() if keys)
    label = label or str(path)
    if not allow_partial:
        raise UsageError(f"{label} does not fit the backbone ({summary}); --allow-partial loads what fits")
    fitting = {k: v for k, v in state.items() if k not in report["unexpected"] and k not in report["wrong shape"]}
    if not fitting:
        raise UsageError(f"no tensor of {label} fits the backbone ({summary})")
    console.warn(f"--allow-partial: {len(fitting)} of {len(module.state_dict())} backbone tensors loaded from "
                 f"{path.name}, the rest left as initialised ({summary})")
    module.load_state_dict(fitting, strict=False)


def _few(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more

"""Weight files written by other tools: official DINO and MAE checkpoints, timm and torchvision state dicts,
Lightning checkpoints (lightly, solo-learn). They are read without running any code they pickle and turned
into backbone state dicts in timm names, with the architecture told from the keys and shapes."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from sslkit.settings import MAX_IMG_SIZE
from sslkit.engine import releases
from sslkit.engine.picklescan import check_torch_file
from sslkit.engine.releases import Release
from sslkit.errors import UsageError

SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")


class ConfigValue:
    """What a pickled configuration object (an OmegaConf node, as solo-learn's checkpoints hold) becomes:
    inert data. None of the original class's code runs; its pickled state lands in ``__dict__``."""

    def __new__(cls, *args, **kwargs):
        value = super().__new__(cls)
        value.args = args
        return value


def _plain_dict(*args) -> dict:
    """``collections.defaultdict(factory)`` read as a plain dict (the factory is a name, never called)."""
    return {}


MAX_SCALAR = 1 << 20  # characters, bytes or bits a pickled str() / int() / bytes() call may take


class Refused(Exception):
    """A pickled call that a bounded stand-in of a builtin refuses (see :class:`Builtin`)."""


class Builtin:
    """A builtin type as the unpickler may call it: with arguments whose cost is their own size only. The raw
    type would take ``bytes(10**10)`` (10 GB of zeros from a 400-byte file) or ``str()`` of a container whose
    items share one another 2**30 times. Shown as the type itself when a file stores the type as a value."""

    def __init__(self, kind: type, takes: tuple[type, ...], most: int, rule: str):
        self.kind, self.takes, self.most, self.rule = kind, takes, most, rule

    def __call__(self, *args):
        if len(args) > self.most or not all(isinstance(a, self.takes) and _small(a) for a in args):
            given = ", ".join(type(a).__name__ for a in args[:4])
            raise Refused(f"{self.kind.__name__}({given}), but sslkit's {self.kind.__name__} takes {self.rule}")
        return self.kind(*args)

    def __repr__(self) -> str:
        return repr(self.kind)


def _small(value) -> bool:
    if isinstance(value, int):
        return value.bit_length() <= MAX_SCALAR
    return not isinstance(value, (str, bytes)) or len(value) <= MAX_SCALAR


_SCALARS = (str, bytes, int, float)  # bool is an int
_CONTAINERS = (list, tuple, set, frozenset, dict)  # already built, so copying one costs its own size
# builtins.set, bytearray and complex are torch's own defaults, which it resolves before these: the pickle scan
# (_check_call) bounds them
_SCALAR_RULE = f"only a str, bytes, int or float of at most {MAX_SCALAR:,} characters (or bits)"
_BUILTINS = {
    **{f"builtins.{t.__name__}": Builtin(t, _SCALARS, 3, _SCALAR_RULE) for t in (int, float, str, bool)},
    **{f"builtins.{t.__name__}": Builtin(t, _CONTAINERS, 1, "only a container already read, or nothing")
       for t in (dict, list, tuple, frozenset)},
    "builtins.bytes": Builtin(bytes, (str, bytes, list, tuple), 3,  # bytes(n) is n zero bytes
                              "a str, bytes or list, never an int (a length)"),
}
_ATTRIBUTE_DICTS = ("lightning.fabric.utilities.data.AttributeDict",
                    "pytorch_lightning.utilities.parsing.AttributeDict")


def _stand_in(name: str):
    """What the unpickler may build for the global ``name``, or None when the file is refused: the argparse
    Namespace of DINO's and MAE's checkpoints, bounded builtins, and configuration objects as inert data."""
    if name == "argparse.Namespace":
        return argparse.Namespace
    if name in _BUILTINS:
        return _BUILTINS[name]
    if name in _ATTRIBUTE_DICTS:
        return dict
    if name == "collections.defaultdict":
        return _plain_dict
    if name.startswith("omegaconf.") or name == "typing.Any":
        return ConfigValue
    return None


def read_torch_file(path: Path) -> dict:
    """A ``torch.save`` file read with ``torch.load(weights_only=True)``: tensors and containers, plus the
    stand-ins of :func:`_stand_in`. A file that pickles anything else (a function, a class of unknown code), or
    whose reading would cost far more than its size (:func:`check_torch_file`), is refused before any of it is
    unpickled."""
    check_torch_file(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip-format file: the weights-only unpickler alone decides
        names = []
    refused = [name for name in names if _stand_in(name) is None]
    if refused:
        raise UsageError(f"{path} pickles {_names(refused)}; sslkit does not unpickle code (it could run anything), "
                         "so save the state dict alone with torch.save(model.state_dict(), ...)")
    allowed = [argparse.Namespace, *((_stand_in(name), name) for name in names)]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Refused as error:
        raise UsageError(f"{path}: its pickle calls {error}, so sslkit refuses the file") from None
    except Exception as error:  # pickle errors name the refused class; anything else is an unreadable file
        raise UsageError(f"cannot read {path} as a weights-only PyTorch file ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} does not hold a state dict")
    return data


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def plausible_img_size(value, path, what: str = "metadata img_size") -> int:
    """``value`` (an int, or a string of digits) as an image side in pixels, refused unless it is positive and
    at most MAX_IMG_SIZE: a model is built at its trained size before anything else is checked, and a side of
    2,000,000 asks for terabytes."""
    size = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10 else value
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMG_SIZE:
        raise UsageError(f"{path}: {what} {value!s:.40} is not a plausible image size (a whole number of pixels "
                         f"from 1 to {MAX_IMG_SIZE})")
    return size


MAX_SETTINGS, MAX_DEPTH = 100_000, 64  # values and levels of a file's settings that `sslkit info` shows


def plain(value, path: Path):
    """A JSON-ready copy of unpickled settings (dicts, Namespaces, configuration objects). A few bytes of
    shared references describe a settings tree of 2**40 values, or a cycle: past MAX_SETTINGS values or
    MAX_DEPTH levels the file is refused."""
    left = MAX_SETTINGS

    def copy(value, depth: int):
        nonlocal left
        left -= 1
        if left < 0 or depth > MAX_DEPTH:
            raise UsageError(f"{path}: its settings unfold to more than {MAX_SETTINGS:,} values or {MAX_DEPTH} "
                             "levels (shared or circular references); sslkit does not show them")
        if isinstance(value, ConfigValue):
            fields = vars(value)
            return copy(fields.get("_content", fields.get("_val")), depth + 1)
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, dict):
            return {_key(k, copy, depth): copy(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [copy(v, depth + 1) for v in value]
        if isinstance(value, (set, frozenset)):
            return sorted((copy(v, depth + 1) for v in value), key=str)
        return _leaf(value)

    return copy(value, 0)


def _key(key, copy, depth: int) -> str:
    return key if isinstance(key, str) else str(copy(key, depth + 1))


def _leaf(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {list(value.shape)}"
    if isinstance(value, (complex, type, Builtin, torch.dtype, torch.device, torch.layout)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value):,} bytes"
    return f"<{type(value).__name__}>"  # a storage or the like: its text could be the whole file


# ---------------------------------------------------------------- what a file holds

def is_lightning(data: dict) -> bool:
    return "pytorch-lightning_version" in data or ("state_dict" in data and "global_step" in data)


def is_dino_training(data: dict) -> bool:
    return isinstance(data.get("teacher"), dict) and isinstance(data.get("student"), dict)


def is_mae(data: dict) -> bool:
    """An official MAE file: a ``model`` dict with MAE's decoder, or MAE's training arguments."""
    model = data.get("model")
    return isinstance(model, dict) and ("decoder_embed.weight" in model or hasattr(data.get("args"), "mask_ratio"))


def describe(data: dict) -> str:
    if is_dino_training(data):
        return "DINO training checkpoint (teacher and student)"
    if is_lightning(data):
        return f"Lightning checkpoint (pytorch-lightning {data.get('pytorch-lightning_version', '?')})"
    if is_mae(data):
        return "MAE checkpoint with its decoder" if "decoder_embed.weight" in data["model"] else "MAE checkpoint"
    if isinstance(data.get("model"), dict):
        return "checkpoint with a 'model' dict (MAE / DeiT style)"
    if isinstance(data.get("state_dict"), dict):
        return "checkpoint with a 'state_dict' dict"
    return "PyTorch state dict"


def settings(data: dict, path: Path) -> dict | None:
    """The training settings a file carries: DINO's / MAE's ``args``, Lightning's ``hyper_parameters``."""
    for key in ("args", "hyper_parameters"):
        if key in data and data[key] is not None:
            return plain(data[key], path)
    return None


# Licences of the official releases' weights; None where a file does not say whose weights it holds.
DINO_LICENCE = "Apache-2.0 (DINO weights, facebookresearch/dino)"
MAE_LICENCE = "CC-BY-NC-4.0 (MAE weights, facebookresearch/mae: non-commercial use only)"


def licence(data: dict) -> str | None:
    if is_dino_training(data):
        return DINO_LICENCE
    if is_mae(data):
        return MAE_LICENCE
    return None


# ---------------------------------------------------------------- the backbone

LIGHTNING_TEACHERS = ("momentum_backbone.", "backbone_momentum.", "teacher_backbone.", "target_backbone.")
LIGHTNING_STUDENTS = ("backbone.", "student_backbone.", "online_backbone.", "encoder.")
NOT_BACKBONE = ("head.", "decoder", "mask_token", "fc.")  # heads, MAE's decoder, classifiers
# lightly's examples wrap a torchvision ResNet as nn.Sequential(*children[:-1]): its indices, named again
RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


@dataclass(frozen=True)
class Backbone:
    """A file's backbone: its tensors in timm names, and the DINOv2 / DINOv3 release they are when the file has
    a release's own layout."""

    state: dict[str, torch.Tensor]
    release: Release | None = None


def backbone(data: dict, checkpoint_key: str, path: Path) -> Backbone:
    """The backbone's tensors in timm names: from the ``teacher`` / ``student`` / ``model`` / ``state_dict``
    entry when the file has one (for Lightning files the momentum or online backbone), with DDP's ``module.``
    and DINO's ``backbone.`` prefixes stripped and heads, decoders and classifiers dropped. A released DINOv2 or
    DINOv3 file is converted to its timm model's names by timm's own filter (sslkit.engine.releases)."""
    if is_lightning(data):
        return Backbone(_lightning_backbone(data["state_dict"], checkpoint_key, path))
    for key in (checkpoint_key, "model", "state_dict"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    state = {}
    for name, value in _tensors(data, path).items():
        for prefix in ("module.", "backbone."):
            name = name.removeprefix(prefix)
        state[name] = value
    release = releases.recognise(state, path)
    if release is not None:
        return Backbone(releases.to_timm(state, release), release)
    state = _without_heads(state)
    if not state:
        raise UsageError(f"{path} holds no tensors under '{checkpoint_key}', 'model' or 'state_dict'")
    return Backbone(state)


def backbone_state(data: dict, checkpoint_key: str, path: Path) -> dict[str, torch.Tensor]:
    """:func:`backbone`'s tensors."""
    return backbone(data, checkpoint_key, path).state


def _tensors(data: dict, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``data`` under string names, each refused unless the file stores all its elements."""
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    for name, tensor in tensors.items():
        if not _dense(tensor):
            raise UsageError(f"{path}: tensor {name} of shape {list(tensor.shape)} is not stored element by "
                             "element (sparse, meta or a stride trick); sslkit reads dense weights only")
    return tensors


def _dense(tensor: torch.Tensor) -> bool:
    """Whether the file holds every element of ``tensor``: a stride of 0 gives a few stored bytes any shape,
    and code that trusts shapes (building a model, resampling a position embedding) would allocate it."""
    if tensor.layout != torch.strided or tensor.is_meta or tensor.is_nested:
        return False
    return tensor.numel() * tensor.element_size() <= tensor.untyped_storage().nbytes()


def _without_heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in state.items() if not name.startswith(NOT_BACKBONE)}


def _lightning_backbone(state_dict: dict, checkpoint_key: str, path: Path) -> dict[str, torch.Tensor]:
    """A Lightning module's backbone: the momentum (EMA) one for ``teacher`` when it has one, else the online
    one. lightly's ``vit.`` wrapper and Sequential-wrapped ResNets are named as timm names them."""
    prefixes = LIGHTNING_TEACHERS + LIGHTNING_STUDENTS if checkpoint_key == "teacher" else LIGHTNING_STUDENTS
    state_dict = _tensors(state_dict, path)
    for prefix in prefixes:
        state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if state:
            break
    else:
        found = sorted({k.split(".")[0] for k in state_dict})
        raise UsageError(f"{path} is a Lightning checkpoint without a backbone sslkit knows (it has: "
                         f"{_names(found, 6)}); save the backbone's state_dict() and pass that file")
    if all(k.startswith("vit.") for k in state):
        state = {k[len("vit."):]: v for k, v in state.items()}
    if "0.weight" in state and "4.0.conv1.weight" in state:
        state = {_resnet_name(k): v for k, v in state.items()}
    return _without_heads(state)


MAE_DECODER = ("decoder_", "mask_token")


def mae_state(data: dict, path: Path | str = "the MAE file") -> dict[str, torch.Tensor]:
    """An official MAE file's ``model`` dict in the names of sslkit's MAE: the encoder under ``backbone.``,
    the decoder and mask token as they are."""
    state = data["model"] if isinstance(data.get("model"), dict) else data
    state = {k.removeprefix("module."): v for k, v in _tensors(state, path).items()}
    return {(k if k.startswith(MAE_DECODER) else f"backbone.{k}"): v for k, v in state.items()}


def _resnet_name(key: str) -> str:
    index, _, rest = key.partition(".")
    return f"{RESNET_CHILDREN.get(index, index)}.{rest}"


def vit_options(state: dict[str, torch.Tensor]) -> dict:
    """timm options a ViT state dict needs beyond its name: MAE's fine-tuned models pool the patch tokens
    through ``fc_norm`` and have no final ``norm``."""
    if "fc_norm.weight" in state and "norm.weight" not in state:
        return {"global_pool": "avg"}
    return {}


def native_img_size(state: dict[str, torch.Tensor], path: Path | str = "the model file",
                    arch: str | None = None) -> int:
    """The image side a ViT state dict's position embedding was made for, refused unless it is a square grid of
    a plausible size (:func:`plausible_img_size`). Without a position table (conv nets, RoPE ViTs such as
    DINOv3) the input size of timm's config for ``arch``, else 224."""
    if "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        return _config_img_size(arch) if arch and "patch_embed.proj.weight" in state else 224
    pos_embed, weight, reg = state["pos_embed"], state["patch_embed.proj.weight"], state.get("reg_token")
    if pos_embed.ndim != 3 or weight.ndim != 4:
        raise UsageError(f"{path}: pos_embed {list(pos_embed.shape)} and patch_embed.proj.weight "
                         f"{list(weight.shape)} are not the shapes of a ViT's")
    prefix = int("cls_token" in state) + (reg.shape[1] if reg is not None and reg.ndim == 3 else 0)
    positions = pos_embed.shape[1]
    for covered in (prefix, 0):  # the CLS and register positions, unless the table covers the patches alone
        side = math.isqrt(max(positions - covered, 0))
        if side and side * side == positions - covered:
            return plausible_img_size(side * weight.shape[-1], path, "its position embedding's image side")
    raise UsageError(f"{path}: pos_embed holds {positions} positions, which are not {prefix} prefix tokens and a "
                     "square grid of patches")


def _config_img_size(arch: str) -> int:
    cfg = timm.models.get_pretrained_cfg(arch) if timm.is_model(arch) else None
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


# ---------------------------------------------------------------- the architecture

def infer_arch(state: dict[str, torch.Tensor], path: Path) -> str:
    """The timm name of a backbone state dict: ResNets and ViTs are recognised from their keys and shapes."""
    return infer_resnet_arch(state, path) if "layer1.0.conv1.weight" in state else infer_vit_arch(state, path)


VIT_SIZES = {192: ("tiny", 12), 384: ("small", 12), 768: ("base", 12), 1024: ("large", 24), 1280: ("huge", 32)}


def infer_vit_arch(state: dict[str, torch.Tensor], path: Path) -> str:
    """The timm name of the ViT a state dict fits, from its width, depth and patch size (DINO and MAE release
    ViT-S/B/L/H with patch 8, 14 or 16). The heads are not stored; timm's model of that width sets them."""
    released = releases.timm_arch(state)  # timm's own DINOv2 / DINOv3 files
    if released is not None:
        return released
    weight = state.get("patch_embed.proj.weight")
    if weight is None or weight.shape[0] not in VIT_SIZES:
        raise UsageError(f"cannot tell the architecture of {path}; name it with --arch (a timm model name)")
    name, standard_depth = VIT_SIZES[weight.shape[0]]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    arch = f"vit_{name}_patch{weight.shape[-1]}_224"
    if depth != standard_depth:
        raise UsageError(f"{path} is a ViT of width {weight.shape[0]} with {depth} blocks, not {arch}'s "
                         f"{standard_depth}; name the model with --arch")
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

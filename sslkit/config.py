"""Settings of every command as dataclasses, loaded from TOML/JSON files and dumped as the resolved config.

Precedence, lowest first: dataclass defaults, the method's presets (filled where a field is None), a
``--config`` file, then the options given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslkit import console
from sslkit.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("lars", "adamw", "sgd")


@dataclass
class TrainConfig:
    """Engine settings shared by every training command. ``None`` means "the method's preset"."""

    epochs: int = 100
    batch_size: int = 256  # images per optimizer step (all accumulation steps together)
    lr: float | None = None  # peak learning rate; None: the method's base lr x batch_size / 256
    min_lr: float | None = None  # lr at the end of the cosine; None: the method's (0 for BYOL)
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    weight_decay_end: float | None = None  # None: constant weight decay
    optimizer: str | None = None
    momentum: float = 0.9  # SGD and LARS
    nesterov: bool = False  # SGD: Nesterov momentum (the semi-supervised fine-tuning recipe)
    betas: tuple[float, float] | None = None  # AdamW; None: the method's ((0.9, 0.999), MAE (0.9, 0.95))
    clip_grad: float | None = None  # gradient-norm clipping; 0 disables; None: the method's
    clip_per_param: bool | None = None  # clip each parameter's gradient norm separately (DINO), not the global one
    accum_steps: int = 1
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    workers: int | None = None  # None: chosen for the machine
    data_path: str = "auto"  # store | loader | auto (sslkit.data.datapath)
    store_size: int | None = None  # short side of the decoded store's images; None: the crop size
    store_on: str = "auto"  # device | pinned | ram | auto
    store_dir: str | None = None  # None: $SSLKIT_STORE_DIR or ~/.cache/sslkit/stores
    logger: str = "jsonl"  # tensorboard: RUN/tensorboard/ too (sslkit.engine.tensorboard)
    save_every: int = 1  # epochs
    log_every: int = 10  # optimizer steps
    eval_train: str | None = None  # online k-NN during pretraining: labelled memory ...
    eval_val: str | None = None  # ... and labelled queries
    eval_every: int = 1  # epochs
    eval_k: int = 20
    force: bool = False  # start over in a non-empty run directory
    keep: int = 1  # periodic checkpoints kept: last.safetensors, plus epoch-NNNN.safetensors when > 1


# Fields that may change when a run is resumed: they change how it runs, not what it computes.
OPERATIONAL_FIELDS = {"device", "precision", "compile", "workers", "save_every", "log_every", "eval_train", "eval_val",
                      "eval_every", "eval_k", "force", "keep", "augment_on", "data_path", "store_on", "store_dir",
                      "logger"}
AUGMENT_ON = ("cpu", "device")


@dataclass
class BYOLConfig:
    arch: str = "resnet50"
    img_size: int = 224
    projector_hidden_dim: int = 4096
    projector_dim: int = 256
    predictor_hidden_dim: int = 4096
    tau_base: float | None = None  # None: the official preset for the run length
    augment_on: str = "cpu"  # device: colour augmentations on the training device (sslkit.data.photometric)


@dataclass
class DINOConfig:
    """DINO's settings under their official names (facebookresearch/dino main_dino.py); None: the preset's."""

    arch: str = "vit_small_patch16_224"
    img_size: int = 224  # global crops; local crops are scaled with it (96 px at 224)
    preset: str = "auto"  # auto: scaled to the data set and run length; imagenet: the official values
    out_dim: int | None = None
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    momentum_teacher: float | None = None
    teacher_temp: float | None = None
    warmup_teacher_temp: float | None = None
    warmup_teacher_temp_epochs: int | None = None
    student_temp: float = 0.1
    center_momentum: float = 0.9
    freeze_last_layer: int = 1  # epochs
    drop_path_rate: float = 0.1  # student ViT only
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 8
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crop_size: int | None = None  # None: img_size x 96/224, a multiple of 16
    augment_on: str = "cpu"


@dataclass
class MAEConfig:
    """MAE's settings (He et al. 2022); decoder fields None: sized from the encoder (docs/mae.md)."""

    arch: str = "vit_base_patch16_224"
    img_size: int = 224
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_dim: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    blr: float = 1.5e-4  # lr = blr x batch / 256 unless --lr is given
    crop_scale: tuple[float, float] = (0.2, 1.0)


@dataclass
class ContinueConfig:
    """pretrain --continue-from: the weights a new run starts from (not --resume: step 0, fresh schedules)."""

    continue_from: str | None = None  # a run directory or weights file
    checkpoint_key: str = "teacher"  # the file's network that initialises backbones of another method
    allow_partial: bool = False


@dataclass
class PretrainConfig:
    method: str
    data: str
    out: str
    train: TrainConfig = field(default_factory=TrainConfig)
    options: Any = None  # the method's own dataclass, e.g. BYOLConfig
    start: ContinueConfig = field(default_factory=ContinueConfig)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "data": self.data,
            "out": self.out,
            "train": dataclasses.asdict(self.train),
            self.method: dataclasses.asdict(self.options),
            **({"continue": dataclasses.asdict(self.start)} if self.start.continue_from else {}),
        }


@dataclass
class FrozenConfig:
    """An evaluation of frozen features: the model, the labelled folders and how features are taken."""

    model: str
    train: str
    val: str
    img_size: int | None = None
    batch_size: int = 256
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    checkpoint_key: str = "teacher"
    seed: int = 0  # fixes the weights of a timm: random-init baseline (and a probe's head)
    arch: str | None = None  # timm name of a .pth file's model (inferred for ViTs)
    allow_partial: bool = False  # load the backbone tensors that fit, leave the rest as initialised
    pool: str = "default"  # default (the model's own) | token | avg
    n_last_blocks: int | None = None  # ViTs: CLS tokens of the last N blocks; None: the command's default
    avgpool_patchtokens: bool = False
    gem_p: float = 4.0  # power of --pool gem
    cache_dir: str | None = None  # None: $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features
    cache: bool = True
    fraction: float = 1.0  # class-balanced share of --train (drawn as finetune --fraction draws it, by --seed)


@dataclass
class KNNConfig(FrozenConfig):
    k: list[int] = field(default_factory=lambda: [20])
    temperature: float = 0.07


LINEAR_RECIPES = ("dino", "mae")


@dataclass
class LinearConfig(FrozenConfig):
    """A linear classifier on frozen features: DINO's eval_linear (default) or MAE's main_linprobe recipe."""

    recipe: str = "dino"
    epochs: int = 100
    lr: list[float] | None = None  # peak lr of each head; None: the recipe's base lr x batch / 256
    augment: bool = False  # RandomResizedCrop + flip per epoch (no feature cache for the training set)
    data_path: str = "auto"  # --augment: where its crops are made (TrainConfig's fields of the same names)
    store_size: int | None = None
    store_on: str = "auto"
    store_dir: str | None = None
    logger: str = "jsonl"
    out: str | None = None  # run directory (checkpoints, metrics, curves); None: a temporary one
    save_every: int = 10
    force: bool = False  # start over in a non-empty --out


@dataclass
class CopyDetectConfig:
    """Copy detection (DINO's eval_copy_detection): descriptors of --database (+ --distractors), searched by
    each query. The feature fields mean what they mean for FrozenConfig."""

    model: str
    database: str
    queries: str
    distractors: str | None = None  # more database images, never copies of a query
    whiten: str | None = None  # folder the PCA whitening is learned on; None: no whitening
    whiten_power: float = 0.5
    ground_truth: str | None = None  # CSV / TSV file, copydays or prefix:N; None: matches only, no scores
    top_k: int = 10
    gem_p: float = 4.0
    pool: str = "gem"  # DINO's CLS + GeM descriptor; default / token / avg as the probes take them
    min_score: float | None = None  # --matches keeps only pairs scoring at least this
    matches: str | None = None  # CSV of the ranked matches
    img_size: int = 320
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    checkpoint_key: str = "teacher"
    seed: int = 0
    arch: str | None = None
    allow_partial: bool = False
    cache_dir: str | None = None
    cache: bool = True
    n_last_blocks: int = 1
    avgpool_patchtokens: bool = False


@dataclass
class BenchmarkConfig:
    """copydetect make-benchmark: how many images of each kind, and how the copies are made."""

    originals: int | None = None  # None: up to 150 (Copydays has 157), fewer when the source is small
    copies: int = 2  # strong copies per original (Copydays "strong": 229 for 157 originals)
    distractors: int = 0
    whiten: int = 0
    max_size: int = 512  # longer side of every written image; 0 keeps the source size
    min_attacks: int = 2
    max_attacks: int = 4
    quality: int = 90  # JPEG quality of the written files (the attacks' own JPEG is separate)
    seed: int = 0


@dataclass
class FinetuneConfig:
    """Full fine-tuning with labels: MAE's main_finetune.py recipe (anchors.md 2.2); None: chosen for the model."""

    model: str
    train: str
    val: str
    out: str
    fraction: float = 1.0  # class-balanced share of --train's labelled images (BYOL's 1% / 10% tables)
    recipe: str = "auto"  # semi-supervised | mae | auto (by the number of labelled images: methods/finetune.py)
    blr: float = 5e-4  # lr = blr x batch / 256 unless --lr is given
    layer_decay: float | None = None  # None: 0.65 for ViTs (0.75 from 24 blocks), 1 (off) for conv nets
    drop_path: float = 0.1
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    randaug: str = "rand-m9-mstd0.5-inc1"  # timm's RandAugment spec; "none" turns it off
    reprob: float = 0.25  # random erasing
    pool: str = "default"  # default | token | avg (ViTs)
    img_size: int | None = None
    checkpoint_key: str = "teacher"
    arch: str | None = None
    allow_partial: bool = False


def with_defaults(settings, **defaults):
    """A copy of the dataclass ``settings`` with each field that is None set from ``defaults``."""
    return dataclasses.replace(settings, **{k: v for k, v in defaults.items() if getattr(settings, k) is None})


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def build(cls, values: dict[str, Any]):
    """An instance of the dataclass ``cls`` from the entries of ``values`` that name its fields, each checked
    against the field's type (numbers finite)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        if name in fields:
            _check_type(name, fields[name].type, value, "")
    chosen = {k: _coerce(cls, k, v) for k, v in values.items() if k in fields}
    return cls(**chosen)


def _check_type(name: str, annotation: str, value: Any, source: str) -> None:
    """``value`` fits the field type ``annotation`` (a string under ``from __future__ import annotations``:
    'int', 'float | None', 'tuple[float, float] | None', 'list[int]', ...)."""
    kinds = [kind.strip() for kind in str(annotation).split("|")]
    if (value is None and "None" in kinds) or any(_fits(kind, value) for kind in kinds if kind != "None"):
        return
    expected = " or ".join(_KIND_NAMES.get(kind.split("[")[0], kind) for kind in kinds if kind != "None")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    where = f"{name} = {shown} in {source}" if source else f"--{name.replace('_', '-')} {shown}"
    raise UsageError(f"{where} is not {expected}")


_KIND_NAMES = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string",
               "tuple": "a list of numbers", "list": "a list"}


def _fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith(("tuple[", "list[")):
        inner = [part.strip() for part in kind[kind.index("[") + 1 : -1].split(",")]
        if not isinstance(value, (list, tuple)) or (kind.startswith("tuple") and len(value) != len(inner)):
            return False
        return all(_fits(inner[0], item) for item in value)
    return True  # nested settings and Any: checked where they are built


def _coerce(cls, name: str, value: Any) -> Any:
    if name in ("betas", "global_crops_scale", "local_crops_scale", "crop_scale") and value is not None:
        return tuple(float(b) for b in value)
    return value


def check_known(values: dict[str, Any], *classes, source: str | Path | None = None) -> None:
    """Every setting in ``values`` is a field of one of ``classes`` and fits its type; ``source``: the file
    the values come from, named in the message."""
    fields = {f.name: f for c in reversed(classes) for f in dataclasses.fields(c)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f" in {source}" if source else ""
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}{where}; known: {', '.join(sorted(fields))}")
    for name, value in values.items():
        _check_type(name, fields[name].type, value, str(source or ""))


def load_file(path: str | Path) -> dict[str, Any]:
    """Flat settings from a TOML or JSON file; a run's nested config.json is flattened."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = _toml_loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as error:
        raise UsageError(f"cannot read config file {path} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text") from None
    except RecursionError:
        raise UsageError(f"config file {path} is nested too deeply to be a settings file") from None
    except ValueError as error:
        raise UsageError(f"cannot parse config file {path}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of settings")
    ignored = sorted(k for k, v in _merged(data).items() if k in ONE_SHOT and v)
    if ignored:
        console.warn(f"ignoring {', '.join(ignored)} in {path}: --force, --resume and --dry-run act once and "
                     "are taken from the command line only")
    return flatten(data)


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Settings sections (``train``, ``byol``, ...) merged into one flat mapping. A run's record of what it
    decided (``decided``: the precision ``auto`` resolved to) is not a setting and stays out, and so do the
    one-shot actions (``force``, ``resume``, ``dry_run``): a file never repeats them."""
    return {k: v for k, v in _merged(data).items() if k not in ONE_SHOT}


def _merged(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "decided":
            continue
        if isinstance(value, dict):
            flat.update(value)
        elif key not in ("method", "data", "out"):
            flat[key] = value
    return flat


ONE_SHOT = {"force", "resume", "dry_run"}


def recorded(run_config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as its config.json records them: without the one-shot actions, which a file never
    repeats."""
    return {key: {k: v for k, v in value.items() if k not in ONE_SHOT} if isinstance(value, dict) else value
            for key, value in run_config.items()}


def resumed_settings(out: Path, given: dict, method: str) -> dict:
    """The run's saved settings; given settings may only change how it runs (device, workers, ...)."""
    config_file = out / "config.json"
    if not config_file.is_file():
        raise UsageError(f"--resume: {out} is not an sslkit run (no config.json)")
    try:
        recorded = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"--resume: cannot read {config_file} ({error})") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("method"), str):
        raise UsageError(f"--resume: {config_file} is not the config of an sslkit run")
    if recorded["method"] != method:
        raise UsageError(f"--resume: {out} is a {recorded['method']} run, not a {method} run")
    saved = flatten(recorded)
    conflicts = [k for k, v in given.items() if k not in OPERATIONAL_FIELDS and _differs(v, saved.get(k))]
    if conflicts:
        shown = ", ".join(f"{k}={given[k]!r} (run has {saved.get(k)!r})" for k in conflicts)
        raise UsageError(f"--resume continues the run as it was configured; drop or fix: {shown}")
    return {**saved, **{k: v for k, v in given.items() if k in OPERATIONAL_FIELDS}}


def _differs(given, saved) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(saved, (list, tuple)):
        return list(given) != list(saved)
    return given != saved


def _toml_loads(text: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised only on Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, not '{value}'")
    return value


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "positive"
        raise UsageError(f"--{name.replace('_', '-')} must be {bound}, not {value}")


MIN_IMG_SIZE, MAX_IMG_SIZE = 16, 8192  # pixels: the smallest input a patch-16 ViT or a ResNet takes; memory


def check_fields(settings) -> None:
    """Every field of the dataclass instance ``settings`` fits its declared type (numbers finite)."""
    for f in dataclasses.fields(settings):
        _check_type(f.name, f.type, getattr(settings, f.name), "")


def check_img_size(name: str, value: int | None) -> None:
    _positive(name, value)
    if value is not None and not MIN_IMG_SIZE <= value <= MAX_IMG_SIZE:
        raise UsageError(f"--{name.replace('_', '-')} must lie in {MIN_IMG_SIZE}..{MAX_IMG_SIZE} pixels, not {value}")


def check_seed(value: int) -> None:
    if not 0 <= value < 2**32:  # numpy's seeds (timm's mixup, RandAugment) are 32-bit
        raise UsageError(f"--seed must lie in 0..{2**32 - 1}, not {value}")


def _unit_interval(name: str, value: float | None, closed: bool = True) -> None:
    if value is not None and not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise UsageError(f"--{name.replace('_', '-')} must lie in [0, 1{']' if closed else ')'}, not {value}")


def validate_train(train: TrainConfig) -> None:
    check_fields(train)
    check_seed(train.seed)
    _unit_interval("momentum", train.momentum, closed=False)
    for beta in train.betas or ():
        _unit_interval("betas", beta, closed=False)
    choice("device", train.device, DEVICES)
    choice("precision", train.precision, PRECISIONS)
    choice("optimizer", train.optimizer, OPTIMIZERS)
    check_data_path(train)
    for name in ("epochs", "batch_size", "accum_steps", "save_every", "log_every", "lr", "eval_every", "eval_k", "keep"):
        _positive(name, getattr(train, name))
    if (train.eval_train is None) != (train.eval_val is None):
        raise UsageError("online k-NN needs both --eval-train (the labelled memory) and --eval-val (the queries)")
    for name in ("min_lr", "warmup_epochs", "weight_decay", "weight_decay_end", "clip_grad", "workers"):
        _positive(name, getattr(train, name), allow_zero=True)


def validate_frozen(options: FrozenConfig) -> None:
    check_fields(options)
    check_seed(options.seed)
    check_img_size("img_size", options.img_size)
    choice("device", options.device, DEVICES)
    choice("precision", options.precision, PRECISIONS)
    choice("checkpoint_key", options.checkpoint_key, ("teacher", "student"))
    for name in ("batch_size", "n_last_blocks"):
        _positive(name, getattr(options, name))
    _positive("workers", options.workers, allow_zero=True)


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise UsageError(f"--fraction must lie in (0, 1], not {fraction}")


def validate_knn(options: KNNConfig) -> None:
    validate_frozen(options)
    check_fraction(options.fraction)
    for k in options.k:
        _positive("k", k)
    _positive("temperature", options.temperature)


def validate_copydetect(options: CopyDetectConfig) -> None:
    validate_frozen(options)
    choice("pool", options.pool, ("gem", "default", "token", "avg"))
    for name in ("top_k", "whiten_power", "gem_p"):
        _positive(name, getattr(options, name))
    if options.min_score is not None and not -1 <= options.min_score <= 1:
        raise UsageError(f"--min-score is a cosine similarity in [-1, 1], not {options.min_score}")


def validate_benchmark(options: BenchmarkConfig, attacks: int) -> None:
    check_fields(options)
    check_seed(options.seed)
    for name in ("originals", "copies", "min_attacks"):
        _positive(name, getattr(options, name))
    for name in ("distractors", "whiten", "max_size"):
        _positive(name, getattr(options, name), allow_zero=True)
    if not options.min_attacks <= options.max_attacks <= attacks:
        raise UsageError(f"--min-attacks / --max-attacks must satisfy 1 <= min <= max <= {attacks}")
    if not 1 <= options.quality <= 100:
        raise UsageError(f"--quality must lie in 1..100, not {options.quality}")


def check_data_path(settings) -> None:
    """The input pipeline's settings of a TrainConfig or LinearConfig (sslkit.data.datapath)."""
    choice("data_path", settings.data_path, ("auto", "store", "loader"))
    choice("store_on", settings.store_on, ("auto", "device", "pinned", "ram"))
    choice("logger", settings.logger, ("jsonl", "tensorboard"))
    check_img_size("store_size", settings.store_size)


def validate_linear(options: LinearConfig) -> None:
    validate_frozen(options)
    check_fraction(options.fraction)
    check_data_path(options)
    choice("recipe", options.recipe, LINEAR_RECIPES)
    for name in ("epochs", "save_every"):
        _positive(name, getattr(options, name))
    for lr in options.lr or []:
        _positive("lr", lr)


def validate_finetune(options: FinetuneConfig) -> None:
    check_fields(options)
    check_img_size("img_size", options.img_size)
    choice("checkpoint_key", options.checkpoint_key, ("teacher", "student"))
    choice("pool", options.pool, ("default", "token", "avg"))
    choice("recipe", options.recipe, ("auto", "semi-supervised", "mae"))
    check_fraction(options.fraction)
    for name in ("blr", "layer_decay"):
        _positive(name, getattr(options, name))
    for name in ("drop_path", "smoothing", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "reprob"):
        _positive(name, getattr(options, name), allow_zero=True)
    for name in ("drop_path", "smoothing", "mixup_prob", "mixup_switch_prob", "reprob", "layer_decay"):
        value = getattr(options, name)
        if value is not None and value > 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at most 1, not {value}")


def validate_byol(options: BYOLConfig) -> None:
    check_fields(options)
    check_img_size("img_size", options.img_size)
    choice("augment_on", options.augment_on, AUGMENT_ON)
    for name in ("projector_hidden_dim", "projector_dim", "predictor_hidden_dim"):
        _positive(name, getattr(options, name))
    if options.tau_base is not None and not 0 <= options.tau_base <= 1:
        raise UsageError(f"--tau-base must lie between 0 and 1, not {options.tau_base}")


def validate_dino(options: DINOConfig) -> None:
    check_fields(options)
    check_img_size("img_size", options.img_size)
    check_img_size("local_crop_size", options.local_crop_size)
    choice("preset", options.preset, ("auto", "imagenet"))
    choice("augment_on", options.augment_on, AUGMENT_ON)
    for name in ("out_dim", "hidden_dim", "bottleneck_dim", "teacher_temp", "warmup_teacher_temp",
                 "student_temp"):
        _positive(name, getattr(options, name))
    for name in ("warmup_teacher_temp_epochs", "freeze_last_layer", "local_crops_number", "drop_path_rate"):
        _positive(name, getattr(options, name), allow_zero=True)
    for name in ("momentum_teacher", "center_momentum"):
        value = getattr(options, name)
        if value is not None and not 0 <= value <= 1:
            raise UsageError(f"--{name.replace('_', '-')} must lie between 0 and 1, not {value}")
    for name in ("global_crops_scale", "local_crops_scale"):
        low, high = getattr(options, name)
        if not 0 < low <= high <= 1:
            raise UsageError(f"--{name.replace('_', '-')} must be two numbers with 0 < MIN <= MAX <= 1")


def validate_mae(options: MAEConfig) -> None:
    check_fields(options)
    check_img_size("img_size", options.img_size)
    for name in ("decoder_dim", "decoder_depth", "decoder_heads", "blr"):
        _positive(name, getattr(options, name))
    if not 0 < options.mask_ratio < 1:
        raise UsageError(f"--mask-ratio must lie strictly between 0 and 1, not {options.mask_ratio}")
    if options.decoder_dim and options.decoder_heads and options.decoder_dim % options.decoder_heads:
        raise UsageError(f"--decoder-dim {options.decoder_dim} is not divisible by --decoder-heads {options.decoder_heads}")
    low, high = options.crop_scale
    if not 0 < low <= high <= 1:
        raise UsageError("--crop-scale must be two numbers with 0 < MIN <= MAX <= 1")

"""Settings of every command as dataclasses, loaded from TOML/JSON files and dumped as the resolved config.

Precedence, lowest first: dataclass defaults, the method's presets (filled where a field is None), a
``--config`` file, then the options given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslkit import console
from sslkit.errors import UsageError
from sslkit.settings import (Settings, choice, as_text, at_least_zero, below_1, check_type, each,
                             one_of, pixels, positive, seed_range, setting, share, typed_fields)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("lars", "adamw", "sgd")
AUGMENT_ON = ("cpu", "device")
KEYS = ("teacher", "student")

RUN, HW, OPT, DATA, EVAL = "Run", "Hardware", "Optimisation", "Input pipeline", "Online k-NN"


# Settings several commands share, each declared once here (a fresh field per class that takes it).
def device_setting():
    return setting("auto", "auto (CUDA when present), cpu or cuda.", panel=HW, check=one_of(*DEVICES))


def precision_setting():
    return setting("auto", "auto (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPUs; decided once per "
                           "run, recorded, and kept by --resume; the run's first lines say which and why), bf16, "
                           "fp16 or fp32.", panel=HW, check=one_of(*PRECISIONS))


def workers_setting():
    return setting(None, "Data-loading processes (default: CPU cores - 1, at most 8).", panel=HW,
                   check=at_least_zero)


def allow_partial_setting():
    return setting(False, "Experts: load the backbone tensors that fit and leave the rest as initialised (a "
                          "warning lists them) instead of refusing a file that does not fit the architecture.",
                   flags=("--allow-partial",))


def keep_setting():
    return setting(1, "Periodic checkpoints to keep: besides checkpoints/last.safetensors, the newest K as "
                      "epoch-NNNN.safetensors (default {default}: the last only).", panel=RUN, check=positive)


def force_setting():
    return setting(False, "Start over in an --out that holds a run: the earlier run's checkpoints, metrics and "
                          "config are set aside, deleted once the new run has written its first checkpoint and put "
                          "back if it fails before; files sslkit did not write are never touched.", panel=RUN,
                   flags=("--force",))


@dataclass(frozen=True)
class InputPipeline(Settings):
    """Where training batches come from (sslkit.data.datapath), and where the run's scalars go."""

    data_path: str = setting(
        "auto", "Where batches come from. store: the images decoded once into uint8 (a cache file, memory-mapped), "
                "kept on the GPU or in RAM, and cropped, flipped and coloured on the training device, with no CPU "
                "work per image. loader: worker processes decode and augment every image each epoch. auto "
                "(default): the store when it fits in memory (on the GPU, else in RAM), the loader otherwise and "
                "for RandAugment; decided once per run, recorded and kept by --resume.",
        panel=DATA, check=one_of("auto", "store", "loader"))
    store_size: int | None = setting(
        None, "Short side in pixels of the images in the decoded store (default: the crop size; never enlarged). "
              "Smaller stores fit more data in memory; crops from them are upsampled more.", panel=DATA,
        check=pixels)
    store_on: str = setting(
        "auto", "Where the decoded store lives: auto (default: the GPU when it fits half its free memory, else "
                "RAM), device, pinned (page-locked RAM, faster copies to the GPU) or ram.", panel=DATA,
        check=one_of("auto", "device", "pinned", "ram"))
    store_dir: str | None = setting(
        None, "Folder of the decoded stores' cache files (default $SSLKIT_STORE_DIR or ~/.cache/sslkit/stores); a "
              "fast local disk helps the first epoch.", panel=DATA)
    logger: str = setting(
        "jsonl", "Where the run's scalars go besides metrics.jsonl: jsonl (default: only there) or tensorboard "
                 "(also RUN/tensorboard/, for `tensorboard --logdir RUN`; needs pip install "
                 "'sslkit[tensorboard]').", panel=RUN, check=one_of("jsonl", "tensorboard"))


@dataclass(frozen=True)
class TrainConfig(InputPipeline):
    """Engine settings shared by every training command. ``None`` means "the method's preset"."""

    epochs: int = setting(100, "Passes over the data (default {default}).", panel=RUN, check=positive)
    batch_size: int = setting(256, "Images per optimizer step (default {default}); the default lr scales with it.",
                              panel=RUN, check=positive)  # all accumulation steps together
    lr: float | None = setting(None, "Peak learning rate (default: the method's base lr x batch/256).", panel=OPT,
                               check=positive)
    min_lr: float | None = setting(None, "Learning rate at the end of the cosine decay (default 0).", panel=OPT,
                                   check=at_least_zero)
    warmup_epochs: float | None = setting(None, "Epochs of linear lr warm-up (default: the method's).", panel=OPT,
                                          check=at_least_zero)
    weight_decay: float | None = setting(None, "Weight decay on weights (never on biases and norms).", panel=OPT,
                                         check=at_least_zero)
    weight_decay_end: float | None = setting(None, "Weight decay at the end of a cosine schedule (default: "
                                                   "constant).", panel=OPT, check=at_least_zero)
    optimizer: str | None = setting(None, "lars, adamw or sgd (default: the method's).", panel=OPT,
                                    check=one_of(*OPTIMIZERS))
    momentum: float = setting(0.9, "Momentum of SGD and LARS (default {default}).", panel=OPT, check=below_1)
    nesterov: bool = setting(False)  # SGD: Nesterov momentum (the semi-supervised fine-tuning recipe)
    betas: tuple[float, float] | None = setting(None, check=each(below_1))  # AdamW; None: the method's
    clip_grad: float | None = setting(None, "Clip the gradient norm to this (0: off; default: the method's).",
                                      panel=OPT, check=at_least_zero)
    clip_per_param: bool | None = setting(None)  # clip each parameter's gradient norm separately (DINO)
    accum_steps: int = setting(1, "Split each batch into this many passes (same result, less memory).", panel=OPT,
                               check=positive)
    device: str = device_setting()
    precision: str = precision_setting()
    workers: int | None = workers_setting()
    compile: bool = setting(False, "torch.compile the training step (faster on GPU after a slow first step).",
                            panel=HW)
    seed: int = setting(0, "Seed of weights, data order and augmentation (default {default}).", panel=RUN,
                        check=seed_range)
    force: bool = force_setting()
    keep: int = keep_setting()
    save_every: int = setting(1, "Write the checkpoint every N epochs (default {default}; always at the end).",
                              panel=RUN, check=positive)
    log_every: int = setting(10, "Log to metrics.jsonl every N steps (default {default}).", panel=RUN,
                             check=positive)  # optimizer steps
    eval_train: str | None = setting(None, "Labelled folder (one sub-folder per class): the k-NN memory scored "
                                           "during training.", panel=EVAL, cli=Path, parse=as_text)
    eval_val: str | None = setting(None, "Labelled folder of k-NN queries; knn_top1 / knn_top5 go to metrics.jsonl "
                                         "and the progress line.", panel=EVAL, cli=Path, parse=as_text)
    eval_every: int = setting(1, "Run the k-NN every N epochs (default {default}; always after the last).",
                              panel=EVAL, check=positive)
    eval_k: int = setting(20, "Neighbours that vote (default {default}, T = 0.07).", panel=EVAL, check=positive)

    def check(self) -> None:
        if (self.eval_train is None) != (self.eval_val is None):
            raise UsageError("online k-NN needs both --eval-train (the labelled memory) and --eval-val (the queries)")


# Fields that may change when a run is resumed: they change how it runs, not what it computes.
OPERATIONAL_FIELDS = {"device", "precision", "compile", "workers", "save_every", "log_every", "eval_train", "eval_val",
                      "eval_every", "eval_k", "force", "keep", "augment_on", "data_path", "store_on", "store_dir",
                      "logger"}

ARCH_HELP = "Any timm model name, e.g. resnet18, resnet50, vit_small_patch16_224."
IMG_SIZE_HELP = "Side of the training crops in pixels (default {default})."
AUGMENT_ON_HELP = ("Where the colour augmentations run: cpu (default), or device: jitter, grayscale, blur and "
                   "solarization on the training GPU, per image, so the CPU workers only decode, crop and flip. For "
                   "machines whose CPU cannot feed the GPU (watch data_wait in metrics.jsonl).")


@dataclass(frozen=True)
class ContinueConfig(Settings):
    """pretrain --continue-from: the weights a new run starts from (not --resume: step 0, fresh schedules)."""

    continue_from: str | None = setting(
        None, "Start a new run from these weights: a run, an sslkit or timm .safetensors, an official DINO / MAE "
              ".pth, a Lightning .ckpt. Heads, centre and decoder come along when the file is this method's; --arch "
              "defaults to the file's. Not --resume (step 0, fresh schedules).", panel=RUN)
    checkpoint_key: str = setting(
        "teacher", "With --continue-from: the file's teacher (default) or student network initialises the "
                   "backbones when the file is another method's.", panel=RUN, check=one_of(*KEYS))
    allow_partial: bool = allow_partial_setting()


@dataclass(frozen=True)
class PretrainConfig:
    method: str
    data: str
    out: str
    train: TrainConfig = field(default_factory=TrainConfig)
    options: Any = None  # the method's own settings, e.g. sslkit.methods.byol.BYOLConfig
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


FEATURES = "Features"
LABELLED = "Labelled folder: one sub-folder per class."


@dataclass(frozen=True)
class FrozenConfig(Settings):
    """An evaluation of frozen features: the model, the labelled folders and how features are taken."""

    model: str = field(kw_only=True)
    train: str = field(kw_only=True)
    val: str = field(kw_only=True)
    img_size: int | None = setting(None, "Side of the centre crop (default: the model's training size; 224 for "
                                         "timm:).", check=pixels)
    batch_size: int = setting(256, "Images per forward pass (default {default}).", check=positive)
    workers: int | None = workers_setting()
    device: str = device_setting()
    precision: str = precision_setting()
    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student (the online one).",
                                  check=one_of(*KEYS))
    seed: int = setting(0, "Seed of the weights of a timm: random-init baseline and of the --fraction drawn "
                           "(default {default}).", check=seed_range)
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViTs).")
    allow_partial: bool = allow_partial_setting()
    pool: str = setting("default", "default (CLS token for ViTs, average pool for conv nets), token, avg (mean "
                                   "patch token) or gem (CLS + GeM p=4 of the patch tokens, copy detection's "
                                   "descriptor).", panel=FEATURES)
    n_last_blocks: int | None = setting(None, "ViTs: concatenate the CLS tokens of the last N blocks (DINO's "
                                              "eval_linear).", panel=FEATURES, check=positive)
    avgpool_patchtokens: bool = setting(False, "ViTs: append the average patch token of the last block (DINO's "
                                               "recipe for ViT-B).", panel=FEATURES)
    gem_p: float = setting(4.0)  # power of --pool gem
    cache_dir: str | None = setting(None, "Feature cache (default $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features).",
                                    panel=FEATURES, cli=Path, parse=as_text)
    cache: bool = setting(True, "Read and write cached features (default on).", panel=FEATURES)
    fraction: float = setting(1.0, "Share of each class of --train to use, e.g. 0.01 or 0.1 (default 1): the same "
                                   "images finetune --fraction with the same --seed trains on.", check=share)


@dataclass(frozen=True)
class KNNConfig(FrozenConfig):
    k: list[int] = setting(help="Neighbours that vote (repeat to report several; default 20).",
                           flags=("--k", "--nb-knn"), check=each(positive), factory=lambda: [20])
    temperature: float = setting(0.07, "T in the vote weight exp(cos / T) (default {default}).", check=positive)


LINEAR_RECIPES = ("dino", "mae")


@dataclass(frozen=True)
class LinearConfig(FrozenConfig, InputPipeline):
    """A linear classifier on frozen features: DINO's eval_linear (default) or MAE's main_linprobe recipe. The
    input pipeline's settings are --augment's: where its crops are made."""

    recipe: str = setting("dino", "dino (SGD, default) or mae (BatchNorm + LARS).", check=one_of(*LINEAR_RECIPES))
    epochs: int = setting(100, "Passes over the training set (default {default}).", check=positive)
    lr: list[float] | None = setting(None, "Peak learning rate of a head; repeat for one head each, chosen on "
                                           "held-out training labels (default: the recipe's grid x batch/256); one "
                                           "fixes it.", check=each(positive))
    augment: bool = setting(False, "Train on random resized crops + flips of the images, recomputing features "
                                   "(slower, no cache).")
    out: str | None = setting(None, "Run directory for checkpoints (best and last), metrics.jsonl and curves.png "
                                    "(default: none kept).", flags=("--out", "-o"), cli=Path, parse=as_text)
    save_every: int = setting(10, check=positive)
    force: bool = setting(False, "Start over in a non-empty --out (the earlier run's checkpoints, metrics and config "
                                 "are deleted).", flags=("--force",))


# How the linear probe's --help reads where its fields mean more than the k-NN's.
LINEAR_HELP = {
    "batch_size": "Images per step and per forward pass (default 256; small labelled sets step with a smaller "
                  "batch, about 10 steps per epoch).",
    "seed": "Seed of the heads, the data order, the held-out slice, the --fraction and a timm: baseline's weights "
            "(default 0).",
    "n_last_blocks": "ViTs: concatenate the CLS tokens of the last N blocks (default 4 with --recipe dino, 1 with "
                     "mae).",
}


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
    kinds = {f.name: kind for f, kind in typed_fields(cls)}
    for name, value in values.items():
        if name in kinds:
            check_type(name, kinds[name], value)
    return cls(**{k: v for k, v in values.items() if k in kinds})


def check_known(values: dict[str, Any], *classes, source: str | Path | None = None) -> None:
    """Every setting in ``values`` is a field of one of ``classes`` and fits its type; ``source``: the file
    the values come from, named in the message."""
    kinds = {f.name: kind for c in reversed(classes) for f, kind in typed_fields(c)}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        where = f" in {source}" if source else ""
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}{where}; known: {', '.join(sorted(kinds))}")
    for name, value in values.items():
        check_type(name, kinds[name], value, str(source or ""))


def settings_for(config_file: str | Path | None, given: dict[str, Any], *classes) -> dict[str, Any]:
    """The flat settings of a command: ``config_file``'s (TOML or JSON), overridden by those ``given`` that are
    not None, each a field of one of ``classes`` and of its type."""
    values = load_file(config_file) if config_file else {}
    check_known(values, *classes, source=config_file)
    values.update({k: v for k, v in given.items() if v is not None})
    check_known(values, *classes)
    return values


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


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is not None:
        (at_least_zero if allow_zero else positive)(name, value)


def check_fields(settings) -> None:
    """Every field of the dataclass instance ``settings`` fits its declared type (numbers finite)."""
    for f, kind in typed_fields(type(settings)):
        check_type(f.name, kind, getattr(settings, f.name))


def check_img_size(name: str, value: int | None) -> None:
    if value is not None:
        pixels(name, value)


def check_seed(value: int) -> None:
    seed_range("seed", value)


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

"""The settings every training command shares (TrainConfig, the input pipeline, --continue-from, and the
declarations several commands reuse), settings files and their precedence, and --resume's settings. A method's
own settings live in its file (sslkit.methods.*), the evaluations' in sslkit.evaluate.settings, the pictures'
in sslkit.visualize.settings, export's and info's in sslkit.engine.settings.

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
from sslkit.settings import (Settings, as_text, at_least_zero, below_1, check_type, each,
                             one_of, pixels, positive, seed_range, setting, typed_fields)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("lars", "adamw", "sgd")
AUGMENT_ON = ("cpu", "device")
KEYS = ("teacher", "student")

RUN, HW, OPT, DATA, EVAL = "Run", "Hardware", "Optimisation", "Input pipeline", "Online k-NN"


# Settings several commands each declared once here (a fresh field per class that takes it).
def device_setting():
    return setting("auto", "auto (CUDA when present), cpu or cuda.", panel=HW, check=one_of(*DEVICES))


def precision_setting():
    return setting("auto", "auto (bf16 on GPUs that support it, fp16 on older GPUs, bf16 on CPUs with AMX, fp32 on "
                           "other CPUs; decided once per run, recorded, and kept by --resume; the run's first lines "
                           "say which and why), bf16, fp16 or fp32.", panel=HW, check=one_of(*PRECISIONS))


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


def augment_on_setting():
    """--augment-on, for the methods with colour augmentations (BYOL, DINO)."""
    return setting("cpu", AUGMENT_ON_HELP, panel=HW, check=one_of(*AUGMENT_ON))


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


def with_defaults(settings, **defaults):
    """A copy of the dataclass ``settings`` with each field that is None set from ``defaults``."""
    return dataclasses.replace(settings, **{k: v for k, v in defaults.items() if getattr(settings, k) is None})


def build(cls, values: dict[str, Any]):
    """An instance of the settings class ``cls`` from the entries of ``values`` that name its fields (it checks
    them itself)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


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
    """Settings sections (``train``, ``byol``, ...) merged into one flat mapping. A run's records of what it
    decided (``decided``: the precision ``auto`` resolved to) and found (``num_images``) are not settings and
    stay out, and so do the one-shot actions (``force``, ``resume``, ``dry_run``): a file never repeats them."""
    return {k: v for k, v in _merged(data).items() if k not in ONE_SHOT}


def _merged(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in RECORDS:
            continue
        if isinstance(value, dict):
            flat.update(value)
        elif key not in ("method", "data", "out"):
            flat[key] = value
    return flat


ONE_SHOT = {"force", "resume", "dry_run"}
RECORDS = ("decided", "num_images")  # what a run's config.json records of the run, beside its settings


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

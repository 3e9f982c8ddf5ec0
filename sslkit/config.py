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
from sslkit.settings import (Settings, as_text, at_least_zero, at_most_one, below_1, check_type, each,
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


COPY_DATA = "Data"  # copydetect's folders and ground truth
COPY_POOLS = ("gem", "default", "token", "avg")


def _cosine(name: str, value: float) -> None:
    if not -1 <= value <= 1:
        raise UsageError(f"--{name.replace('_', '-')} is a cosine similarity in [-1, 1], not {value}")


@dataclass(frozen=True)
class CopyDetectConfig(Settings):
    """Copy detection (DINO's eval_copy_detection): descriptors of --database (+ --distractors), searched by
    each query. The feature fields mean what they mean for FrozenConfig."""

    model: str = field(kw_only=True)
    database: str = field(kw_only=True)  # the originals
    queries: str = field(kw_only=True)  # the copies
    distractors: str | None = setting(None, "Folder of more database images that are copies of nothing.",
                                      panel=COPY_DATA, cli=Path, parse=as_text)
    whiten: str | None = setting(
        None, "Folder to learn the PCA whitening on: images like the database's, none of them queries (DINO: 20k web "
              "photos). Usually worth several mAP points.", panel=COPY_DATA, cli=Path, parse=as_text)
    ground_truth: str | None = setting(
        None, "CSV / TSV of query,original[,original...] (or with a header: query, original, attacks); copydays (a "
              "query and its original share the first 4 characters of their names) or prefix:N. Without it, matches "
              "only.", panel=COPY_DATA)
    top_k: int = setting(10, "Matches kept per query; the scores use this list (DINO's evaluation: 20). Default "
                             "{default}.", check=positive)
    matches: str | None = setting(None, "Write the ranked matches as CSV: query,match,score,rank[,copy].", cli=Path,
                                  parse=as_text)
    min_score: float | None = setting(None, "--matches keeps only pairs with at least this cosine similarity (e.g. "
                                            "0.9 to list near-duplicates).", check=_cosine)
    whiten_power: float = setting(0.5, "Whitening power: 0.5 whitens fully (default), smaller values only flatten "
                                       "the spectrum.", panel=FEATURES, check=positive)
    gem_p: float = setting(4.0, "Power of the GeM pooling of the patch tokens (default 4; 1 is average pooling).",
                           panel=FEATURES, check=positive)
    pool: str = setting("gem", "gem (DINO's CLS + GeM descriptor, default), or default / token / avg as the probes "
                               "take them.", panel=FEATURES, check=one_of(*COPY_POOLS))
    img_size: int = setting(320, "Images are resized to this square (default {default}, DINO's; a multiple of a "
                                 "ViT's patch size).", panel=FEATURES, check=pixels)
    batch_size: int = setting(64, "Images per forward pass (default {default}).", check=positive)
    workers: int | None = workers_setting()
    device: str = device_setting()
    precision: str = precision_setting()
    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student (the online one).",
                                  check=one_of(*KEYS))
    seed: int = setting(0, "Seed of the weights of a timm: random-init baseline and of the --fraction drawn "
                           "(default {default}).", check=seed_range)
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViTs).")
    allow_partial: bool = allow_partial_setting()
    cache_dir: str | None = setting(None, "Feature cache (default $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features).",
                                    panel=FEATURES, cli=Path, parse=as_text)
    cache: bool = setting(True, "Read and write cached features (default on).", panel=FEATURES)
    n_last_blocks: int = setting(1, check=positive)
    avgpool_patchtokens: bool = setting(False)


def _jpeg_quality(name: str, value: int) -> None:
    if not 1 <= value <= 100:
        raise UsageError(f"--{name.replace('_', '-')} must lie in 1..100, not {value}")


@dataclass(frozen=True)
class BenchmarkConfig(Settings):
    """copydetect make-benchmark: how many images of each kind, and how the copies are made (check_attacks relates
    the attacks per copy to the attacks there are)."""

    originals: int | None = setting(None, "Originals in the database (default: 150, or fewer if SRC is small).",
                                    check=positive)  # Copydays has 157
    copies: int = setting(2, "Strong copies (queries) per original (default {default}).",
                          check=positive)  # Copydays "strong": 229 for 157 originals
    distractors: int = setting(0, "Extra database images that no query copies (default {default}).",
                               check=at_least_zero)
    whiten: int = setting(0, "Images set aside to learn the whitening on (default {default}).", check=at_least_zero)
    max_size: int = setting(512, "Longer side of the written images (default {default}; 0 keeps the source size).",
                            check=at_least_zero)
    min_attacks: int = setting(2, "Fewest attacks per copy (default {default}).", check=positive)
    max_attacks: int = setting(4, "Most attacks per copy (default {default}).")
    quality: int = setting(90, "JPEG quality of the written files (default {default}).",
                           check=_jpeg_quality)  # the attacks' own JPEG is separate
    seed: int = setting(0, "Which images and attacks are drawn (default {default}).", check=seed_range)


def check_attacks(options: BenchmarkConfig, attacks: int) -> None:
    """The attacks per copy lie in 1..``attacks`` (sslkit.data.attacks, which imports torch, has the count)."""
    if not options.min_attacks <= options.max_attacks <= attacks:
        raise UsageError(f"--min-attacks / --max-attacks must satisfy 1 <= min <= max <= {attacks}")


OUTPUT = "Output"
EMBED_FORMATS = ("safetensors", "npy", "csv")


@dataclass(frozen=True)
class EmbedConfig(Settings):
    """What ``sslkit embed`` reads: the fields ``FrozenFeatures`` takes (those of FrozenConfig), and where the
    embeddings go."""

    model: str = field(kw_only=True)
    data: str = field(kw_only=True)
    out: str = field(kw_only=True)
    format: str | None = setting(None, "safetensors, npy or csv (default: from the extension of --out).",
                                 panel=OUTPUT, check=one_of(*EMBED_FORMATS))
    labels: bool = setting(False, "DATA holds one sub-folder per class: write each image's class too (.npy: in "
                                  "<stem>.labels.txt).", panel=OUTPUT, flags=("--labels",))
    force: bool = setting(False, "Replace an earlier output of sslkit embed; any other file is never overwritten.",
                          panel=OUTPUT, flags=("--force",))
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
    n_last_blocks: int | None = setting(None, "ViTs: concatenate the CLS tokens of the last N blocks (default 1, "
                                              "as probe knn).", panel=FEATURES, check=positive)
    avgpool_patchtokens: bool = setting(False, "ViTs: append the average patch token of the last block (DINO's "
                                               "recipe for ViT-B).", panel=FEATURES)
    gem_p: float = setting(4.0, "Power of --pool gem (default 4; 1 is average pooling).", panel=FEATURES,
                           check=positive)
    cache_dir: str | None = setting(None, "Feature cache (default $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features).",
                                    panel=FEATURES, cli=Path, parse=as_text)
    cache: bool = setting(True, "Read and write cached features (default on).", panel=FEATURES)


REGULARISATION = "Regularisation"
PROBABILITY = (at_least_zero, at_most_one)  # the messages say which end was crossed


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """Full fine-tuning with labels: MAE's main_finetune.py recipe (anchors.md 2.2), or for few labels the
    semi-supervised one (methods/finetune.py); None: chosen for the model."""

    model: str = field(kw_only=True)
    train: str = field(kw_only=True)
    val: str = field(kw_only=True)
    out: str = field(kw_only=True)
    fraction: float = setting(1.0, "Share of each class of --train to train on, e.g. 0.01 or 0.1 (default 1).",
                              panel=RUN, check=share)  # class-balanced (BYOL's 1% / 10% tables)
    recipe: str = setting(
        "auto", "auto (default: semi-supervised up to 200,000 labelled images, mae above), semi-supervised (BYOL / "
                "SimCLR: SGD Nesterov, crops and flips, lr chosen on held-out training labels) or mae (MAE's "
                "fine-tuning recipe).", panel=RUN, check=one_of("auto", "semi-supervised", "mae"))
    blr: float = setting(5e-4, "Base lr: lr = blr x batch/256 (mae default 5e-4; semi-supervised: chosen on "
                               "held-out labels unless given).", panel=OPT, check=positive)
    layer_decay: float | None = setting(None, "Layer-wise lr decay for ViTs (mae default 0.65, 0.75 from 24 "
                                              "blocks; semi-supervised 1: off).", panel=OPT,
                                        check=(positive, at_most_one))
    drop_path: float = setting(0.1, "Stochastic depth of ViT blocks (default: mae 0.1, semi-supervised 0).",
                               panel=REGULARISATION, check=PROBABILITY)
    smoothing: float = setting(0.1, "Label smoothing (default: mae 0.1, semi-supervised 0).", panel=REGULARISATION,
                               check=PROBABILITY)
    mixup: float = setting(0.8, "Mixup alpha (default: mae 0.8, semi-supervised 0; 0 with --cutmix 0 turns mixing "
                                "off).", panel=REGULARISATION, check=at_least_zero)
    cutmix: float = setting(1.0, "CutMix alpha (default: mae 1.0, semi-supervised 0).", panel=REGULARISATION,
                            check=at_least_zero)
    mixup_prob: float = setting(1.0, "Share of batches mixed (default 1).", panel=REGULARISATION, check=PROBABILITY)
    mixup_switch_prob: float = setting(0.5, "Chance a mixed batch uses cutmix rather than mixup (default 0.5).",
                                       panel=REGULARISATION, check=PROBABILITY)
    randaug: str = setting("rand-m9-mstd0.5-inc1", "timm RandAugment spec (default: mae rand-m9-mstd0.5-inc1, "
                                                   "semi-supervised none: off).", panel=REGULARISATION)
    reprob: float = setting(0.25, "Random erasing probability (default: mae 0.25, semi-supervised 0).",
                            panel=REGULARISATION, check=PROBABILITY)
    pool: str = setting("default", "ViTs: default (CLS token), token or avg (mean patch token) feeds the head.",
                        panel=RUN, check=one_of("default", "token", "avg"))
    img_size: int | None = setting(None, "Side of the crops (default: the model's training size; 224 for timm:).",
                                   panel=RUN, check=pixels)
    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student.", panel=RUN,
                                  check=one_of(*KEYS))
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViTs).", panel=RUN)
    allow_partial: bool = allow_partial_setting()


# How finetune's --help reads where its TrainConfig fields mean more than pretraining's.
FINETUNE_TRAIN_HELP = {
    "epochs": "Passes over the (fraction of the) training set (default: semi-supervised 60 under 20 images per "
              "class, else 30; mae 100).",
    "batch_size": "Images per step (default 256; smaller for small labelled sets).",
    "lr": "Peak lr, overriding --blr; fixes it (semi-supervised: no runs to choose it).",
    "min_lr": "lr at the end of the cosine (default: semi-supervised 0, mae 1e-6).",
    "warmup_epochs": "Epochs of linear warm-up (default: semi-supervised 0; mae 5, a tenth of runs under 50 epochs).",
    "weight_decay": "Weight decay (default: semi-supervised 0, mae 0.05 with AdamW).",
    "clip_grad": "Clip the global gradient norm (default 0: off).",
    "accum_steps": "Split each batch into this many passes.",
    "compile": "torch.compile the training step.",
    "seed": "Seed of the head, the fraction, the held-out slice, the data order, augmentation and a timm: "
            "baseline's weights (default 0).",
    "save_every": "Write the last checkpoint every N epochs (default 1).",
    "eval_every": "Score --val every N epochs and after the last (default: 1, or fewer when --val is over twice "
                  "the training images, so scoring costs at most about what training does).",
    "log_every": "Log every N steps (default 10).",
}


# ---------------------------------------------------------------- pictures and files of one model


def output_force_setting():
    return setting(False, "Write into an --out that holds files sslkit did not write there; they are never "
                          "overwritten (sslkit refuses instead).", flags=("--force",))


def _open_unit_interval(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"--{name.replace('_', '-')} must lie between 0 and 1, not {value}")


POS_RESAMPLINGS = ("dino", "timm")


@dataclass(frozen=True)
class AttentionConfig(Settings):
    """sslkit attention: the last block's CLS attention maps of a ViT (sslkit.visualize.attention)."""

    img_size: int = setting(480, "Short side the images are resized to before cropping to multiples of the patch "
                                 "size.", check=pixels, cli_default=True)
    threshold: float | None = setting(None, "Also draw the masks keeping this share of the attention mass (DINO "
                                            "uses 0.6).", check=_open_unit_interval)
    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student.", check=one_of(*KEYS),
                                  cli_default=True)
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViT-S/B/L).")
    pos_resample: str | None = setting(
        None, "How the position embedding is resampled to an image's patch grid: dino (bicubic with DINO's +0.1 "
              "scale factors, as DINO's visualize_attention.py does) or timm (antialiased bicubic to the exact "
              "grid). Default: dino for official DINO weights, which were trained with it, timm otherwise. The maps "
              "of non-square images differ a lot between the two.", check=one_of(*POS_RESAMPLINGS))
    allow_partial: bool = allow_partial_setting()
    device: str = device_setting()
    force: bool = output_force_setting()


@dataclass(frozen=True)
class ReconstructConfig(Settings):
    """sslkit reconstruct: an MAE's masked-patch reconstructions (sslkit.visualize.reconstruct)."""

    mask_ratio: float | None = setting(None, "Share of patches hidden from the encoder (default: the model's, "
                                             "0.75).")
    seed: int = setting(0, "Seed of the random mask: the same seed hides the same patches.", check=seed_range,
                        cli_default=True)
    img_size: int | None = setting(None, "Side the images are resized and centre-cropped to (default: the model's "
                                         "training size; any multiple of the patch size).", check=pixels)
    norm_pix_loss: bool | None = setting(
        None, "Whether the model predicts per-patch-normalised pixels (default: from the run; for .pth files off for "
              "mae_visualize_* and on otherwise).")
    device: str = device_setting()
    force: bool = output_force_setting()


@dataclass(frozen=True)
class ExportConfig(Settings):
    """sslkit export: a backbone written as a safetensors file (sslkit.engine.checkpoint.export_backbone)."""

    format: str = setting("timm", "timm (a plain state dict in timm names, default) or sslkit (an sslkit checkpoint "
                                  "of the backbone alone).", flags=("--format",), cli_default=True)
    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student.", check=one_of(*KEYS),
                                  cli_default=True)
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViTs).")
    allow_partial: bool = allow_partial_setting()
    licence: str | None = setting(None, "The weights' licence, written to the metadata (default: the imported "
                                        "weights' when known, e.g. MAE's CC-BY-NC-4.0).")
    img_size: int | None = setting(None, "ViTs: resample the position embedding for this image size (default: the "
                                         "trained size).", check=pixels)


@dataclass(frozen=True)
class InfoConfig(Settings):
    """sslkit info: what a model file holds (sslkit.engine.modelinfo)."""

    checkpoint_key: str = setting("teacher", "teacher (the EMA network, default) or student (the online one).",
                                  check=one_of(*KEYS))
    arch: str | None = setting(None, "timm name of a .pth file's model (inferred for ViTs).")


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


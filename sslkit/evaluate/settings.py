"""The settings of the evaluations: probe knn / linear, finetune, copydetect and its benchmark, embed.

They live apart from the code that runs them, which imports torch, so that the command line is built (and
``--help`` answers) without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sslkit.config import (KEYS, OPT, RUN, InputPipeline, allow_partial_setting, device_setting, precision_setting,
                           workers_setting)
from sslkit.errors import UsageError
from sslkit.settings import (Settings, as_text, at_least_zero, at_most_one, each, one_of, pixels, positive,
                             seed_range, setting, share)

FEATURES = "Features"
LABELLED = "Labelled folder: one sub-folder per class."


@dataclass(frozen=True)
class FeatureSettings(Settings):
    """How a model's features are taken (sslkit.evaluate.features.FrozenFeatures): the model file, the forward
    passes, the pooling and the cache."""

    model: str = field(kw_only=True)
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
    tokens: str | None = setting(None)  # on the command line of the probes and embed, which name their choices
    pool: str = setting("default", "default (CLS token for ViTs, average pool for conv nets), token, avg (mean "
                                   "patch token) or gem (CLS + GeM p=4 of the patch tokens, copy detection's "
                                   "descriptor).", panel=FEATURES)
    n_last_blocks: int | None = setting(None, "ViTs: concatenate the CLS tokens of the last N blocks (DINO's "
                                              "eval_linear).", panel=FEATURES, check=positive)
    avgpool_patchtokens: bool = setting(False, "ViTs: append the average patch token of the last block (DINO's "
                                               "recipe for ViT-B).", panel=FEATURES)
    gem_p: float = setting(4.0, check=positive)  # power of --pool gem
    cache_dir: str | None = setting(None, "Feature cache (default $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features).",
                                    panel=FEATURES, cli=Path, parse=as_text)
    cache: bool = setting(True, "Read and write cached features (default on).", panel=FEATURES)


POOLED_TOKENS = ("cls", "mean", "cls+mean")  # --tokens of the probes; embed also writes every patch token
EMBED_TOKENS = (*POOLED_TOKENS, "patch")
TOKENS_HELP = ("ViTs, instead of --pool: cls (the CLS token), mean (the mean patch token, registers left out) or "
               "cls+mean (the two concatenated, DINOv2's linear evaluation).")


@dataclass(frozen=True)
class FrozenConfig(FeatureSettings):
    """An evaluation of frozen features on labelled folders."""

    train: str = field(kw_only=True)
    val: str = field(kw_only=True)
    tokens: str | None = setting(None, TOKENS_HELP, panel=FEATURES, check=one_of(*POOLED_TOKENS))
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
    "tokens": "ViTs, instead of --pool: cls (the CLS tokens of the last --n-last-blocks), mean (the mean patch "
              "token, registers left out) or cls+mean (the two concatenated: DINOv2's linear evaluation).",
}


COPY_DATA = "Data"  # copydetect's folders and ground truth
COPY_POOLS = ("gem", "default", "token", "avg")


def _cosine(name: str, value: float) -> None:
    if not -1 <= value <= 1:
        raise UsageError(f"--{name.replace('_', '-')} is a cosine similarity in [-1, 1], not {value}")


@dataclass(frozen=True)
class CopyDetectConfig(FeatureSettings):
    """Copy detection (DINO's eval_copy_detection): descriptors of --database (+ --distractors), searched by
    each query; the descriptor is DINO's (CLS + GeM of the patch tokens) at 320 px unless asked otherwise."""

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
class EmbedConfig(FeatureSettings):
    """What ``sslkit embed`` reads: how features are taken, and where the embeddings go."""

    data: str = field(kw_only=True)
    out: str = field(kw_only=True)
    format: str | None = setting(None, "safetensors, npy or csv (default: from the extension of --out).",
                                 panel=OUTPUT, check=one_of(*EMBED_FORMATS))
    tokens: str | None = setting(
        None, "ViTs, instead of --pool: cls (the CLS token), mean (the mean patch token, registers left out), "
              "cls+mean (the two concatenated, DINOv2's way) or patch (every patch token: N x h x w x D, written "
              "as it is computed, never cached; .safetensors or .npy).", panel=FEATURES, check=one_of(*EMBED_TOKENS))
    labels: bool = setting(False, "DATA holds one sub-folder per class: write each image's class too (.npy: in "
                                  "<stem>.labels.txt).", panel=OUTPUT, flags=("--labels",))
    force: bool = setting(False, "Replace an earlier output of sslkit embed; any other file is never overwritten.",
                          panel=OUTPUT, flags=("--force",))


# How embed's --help reads where its fields mean more than the probes'.
EMBED_HELP = {
    "n_last_blocks": "ViTs: concatenate the CLS tokens of the last N blocks (default 1, as probe knn).",
    "gem_p": "Power of --pool gem (default 4; 1 is average pooling).",
}


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

"""Linear probe: linear classifiers on frozen features, trained by the engine like any other method.

Recipes (anchors.md 2.1 and 2.2):
  dino  eval_linear.py: Linear initialised N(0, 0.01) with zero bias; SGD momentum 0.9, no weight decay,
        lr 1e-3 x batch / 256, cosine to 0, 100 epochs.
  mae   main_linprobe.py: BatchNorm1d without affine (eps 1e-6) before the Linear (trunc-normal std 0.01);
        LARS, no weight decay, lr 0.1 x batch / 256, 10 warm-up epochs, cosine to 0, 90 epochs.

Several heads with different learning rates train in one pass (one parameter group each, scaled to its own
lr): the features are computed once for all of them, and the summed loss gives each head its own gradient.
With several, the lr is chosen by cross-validation on the training labels first (sslkit.evaluate.lr_choice).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import console
from sslkit.config import TrainConfig
from sslkit.data.datapath import training_data
from sslkit.data.folders import ImageFolder, held_out_folds
from sslkit.data.views import crop_flip, crop_flip_view
from sslkit.engine import dryrun
from sslkit.engine.method import StepOutput
from sslkit.engine.rng import seed_everything
from sslkit.engine.evaluation import EvalContext, Evaluation
from sslkit.engine.trainer import Trainer
from sslkit.evaluate.features import FeatureSet, FrozenFeatures
from sslkit.evaluate.lr_choice import FOLDS, LrChoice, fits_the_slice
from sslkit.evaluate.settings import LinearConfig
from sslkit.methods.finetune import auto_batch
from sslkit.models.backbones import FeatureExtractor
from sslkit.visualize.curves import curves_drawn


@dataclass(frozen=True)
class Recipe:
    base_lr: float  # x batch / 256
    optimizer: str
    warmup_epochs: float
    epochs: int
    batch_norm: bool


RECIPES = {
    "dino": Recipe(base_lr=1e-3, optimizer="sgd", warmup_epochs=0, epochs=100, batch_norm=False),
    "mae": Recipe(base_lr=0.1, optimizer="lars", warmup_epochs=10, epochs=90, batch_norm=True),
}

# The lrs tried without --lr (x batch / 256), one head each, chosen on held-out training labels
# (sslkit.evaluate.lr_choice). DINOv2's eval grid runs 1e-5 to 0.1; the features of a random-init ResNet-18 at
# 64 px want 1-3 with SGD (docs/probe.md), so the dino grid reaches 30. The mae recipe's BatchNorm puts every
# model's features on one scale (1-10 there); its grid spans 0.01 to 30.
LR_GRIDS = {
    "dino": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    "mae": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
}


def lr_grid(recipe: str, batch_size: int) -> list[float]:
    return [lr * batch_size / 256 for lr in LR_GRIDS[recipe]]


class LinearProbe(nn.Module):
    """Linear heads on features; ``extractor`` (a frozen FeatureExtractor) when the batches hold images."""

    name = "linear"
    channels_last = False

    def __init__(self, dim: int, num_classes: int, lrs: list[float], recipe: str, extractor: nn.Module | None = None,
                 metadata: dict[str, str] | None = None):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if RECIPES[recipe].batch_norm else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in lrs)
        for head in self.heads:
            if recipe == "mae":
                nn.init.trunc_normal_(head.weight, std=0.01)
            else:
                nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        self.lrs = list(lrs)
        self.backbone = nn.Identity()  # nothing here is a backbone worth exporting
        self._frozen = [extractor] if extractor is not None else []  # neither trained nor saved, see _apply
        self._metadata = metadata or {}

    def _apply(self, fn, recurse=True):
        # .to(device) must move the frozen extractor too, while state_dict() leaves it out of checkpoints
        for extractor in self._frozen:
            extractor._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of every head for a batch of features: (heads, batch, classes)."""
        z = self.norm(features.float())
        return torch.stack([head(z) for head in self.heads])

    def training_step(self, batch) -> StepOutput:
        inputs, labels = batch
        if self._frozen:  # image batches (--augment): features of this epoch's random crops
            with torch.no_grad():
                inputs = self._frozen[0](inputs)
        logits = self(inputs).float()
        losses = torch.stack([F.cross_entropy(head_logits, labels) for head_logits in logits])
        return StepOutput(loss=losses.sum(), logs={"mean_head_loss": losses.mean().detach()})

    @torch.no_grad()
    def score(self, features: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> list[dict[str, float]]:
        """Top-1 / top-5 accuracy (percent) and loss of each head on precomputed ``features``."""
        hits = torch.zeros(len(self.heads), 2, device=features.device)
        loss = torch.zeros(len(self.heads), device=features.device)
        top_n = min(5, self.heads[0].out_features)
        for start in range(0, len(features), chunk):
            logits = self(features[start : start + chunk]).float()
            target = labels[start : start + chunk]
            predicted = logits.topk(top_n, dim=-1).indices
            correct = predicted == target[None, :, None]
            hits[:, 0] += correct[..., 0].sum(dim=1)
            hits[:, 1] += correct.any(dim=-1).sum(dim=1)
            loss += F.cross_entropy(logits.flatten(0, 1), target.repeat(len(self.heads)), reduction="none").view(
                len(self.heads), -1).sum(dim=1)
        hits, loss = (100.0 * hits / len(features)).tolist(), (loss / len(features)).tolist()
        return [{"top1": round(h[0], 2), "top5": round(h[1], 2), "loss": round(x, 5)} for h, x in zip(hits, loss)]

    # ------------------------------------------------------------------ what the engine uses
    def param_groups(self) -> list[dict]:
        groups = []
        for lr, head in zip(self.lrs, self.heads):
            scale = lr / self.lrs[0]
            groups.append({"params": [head.weight], "wd_scale": 0.0, "lars_exclude": False, "lr_scale": scale})
            groups.append({"params": [head.bias], "wd_scale": 0.0, "lars_exclude": True, "lr_scale": scale})
        return groups

    def checkpoint_metadata(self) -> dict[str, str]:
        return {**self._metadata, "backbones": json.dumps({}), "head_lrs": json.dumps(self.lrs)}


# ---------------------------------------------------------------- the probe's run
def run_linear_probe(options: LinearConfig, *, batch_given: bool = False, dry_run: bool = False) -> dict:
    """``probe linear`` with the checked ``options`` (see sslkit.api.probe_linear): the summary, or with
    ``dry_run`` the plan. ``batch_given``: --batch-size was given; without it a small labelled set gets a smaller
    step batch (the forward passes keep theirs)."""
    refusal = None
    if options.out:
        inputs = (Path(options.train), Path(options.val))
        refusal = dryrun.checked_new_run(Path(options.out), options.force, inputs, dry_run)
    frozen = FrozenFeatures(options, default_blocks=4 if options.recipe == "dino" else 1)
    train_set, val_set, val_labels = frozen.labelled_sets()
    batch = options.batch_size if batch_given else min(options.batch_size, auto_batch(len(train_set)))
    lrs = options.lr or lr_grid(options.recipe, batch)
    train_cfg = linear_train_config(options, RECIPES[options.recipe], lrs, frozen.workers, batch)
    if dry_run:
        return linear_plan(options, frozen, train_set, train_cfg, lrs, refusal)
    val_features, _ = frozen.features(val_set, "val")
    dataset, extractor, decided = _training_set(frozen, train_set, train_cfg)
    choice = None
    if len(lrs) > 1:  # the held-out folds are scored on centre-crop features, which the plain probe trains on
        centre = (dataset.features, dataset.labels) if extractor is None else frozen.features(train_set, "train")
        choice = choose_linear_lr(frozen, options, train_set, train_cfg, lrs, centre)
    seed_everything(options.seed)
    probe = LinearProbe(val_features.shape[1], len(train_set.classes), lrs, options.recipe, extractor, metadata={
        "arch": frozen.loaded.arch, "img_size": str(frozen.loaded.img_size), "probed_model": options.model,
        "features": frozen.recipe.describe(), "classes": json.dumps(train_set.classes)})
    history, fit = _train_heads(probe, dataset, train_cfg, options, decided, (val_features, val_labels),
                                frozen.device)
    heads = [head_summary(lr, [epoch[i] for epoch in history]) for i, lr in enumerate(lrs)]
    return {**frozen.summary(train_set, val_set), "feature_dim": int(val_features.shape[1]),
            **_results(options, batch, heads, lrs, choice, fit)}


def _training_set(frozen: FrozenFeatures, train_set: ImageFolder, train_cfg: TrainConfig):
    """What the heads train on: the cached centre-crop features, or with --augment random crops of the images
    (features recomputed per epoch by the returned extractor: nothing to cache); and the data path's record."""
    if frozen.options.augment:
        dataset, decided = augmented(frozen, train_set, train_cfg)
        return dataset, FeatureExtractor(frozen.loaded.module, frozen.recipe), decided
    return FeatureSet(*frozen.features(train_set, "train")), None, {}


def _train_heads(probe: LinearProbe, dataset, train_cfg: TrainConfig, options: LinearConfig, decided: dict,
                 val: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[list[list[dict]], dict]:
    """Train every head, scoring each on the ``val`` features and labels after every epoch: the scores per epoch
    and head, and the trainer's result. The features move to the run's ``device`` once, not per epoch."""
    history: list[list[dict]] = []
    val_x, val_y = val[0].to(device), val[1].to(device)

    def score(_: EvalContext) -> dict[str, float]:
        heads = probe.score(val_x, val_y)
        history.append(heads)
        best = max(heads, key=lambda h: h["top1"])
        scores = {"val_top1": best["top1"], "val_top5": best["top5"], "val_loss": best["loss"]}
        if len(heads) > 1:
            scores.update({f"val_top1/lr={lr:g}": h["top1"] for lr, h in zip(probe.lrs, heads)})
        return scores

    with run_dir(options.out) as out, curves_drawn(out) if options.out else nullcontext():
        fit = Trainer(probe, dataset, train_cfg, out, linear_run_config(options, train_cfg, decided),
                      Evaluation(score, best="val_top1")).fit()
    return history, fit


def _results(options: LinearConfig, batch: int, heads: list[dict], lrs: list[float], choice: LrChoice | None,
             fit: dict) -> dict:
    """The chosen head's last-epoch accuracy and the best of any head and epoch (chosen on val: optimistic)."""
    chosen = heads[lrs.index(choice.lr)] if choice else heads[0]
    best = max(heads, key=lambda h: h["best"]["top1"])
    checkpoint = Path(options.out) / "checkpoints" / "best.safetensors" if options.out and fit.get("best") else None
    return {
        "recipe": options.recipe,
        "augment": options.augment,
        "epochs": options.epochs,
        "batch_size": batch,
        "lr": chosen["lr"],
        "lr_choice": choice.record() if choice else None,
        "top1": chosen["last"]["top1"],
        "top5": chosen["last"]["top5"],
        "best_top1": best["best"]["top1"],
        "best_lr": best["lr"],
        "best_epoch": best["best"]["epoch"],
        "heads": heads,
        "out": options.out,
        **({"best_checkpoint": str(checkpoint)} if checkpoint else {}),
    }


def choose_linear_lr(frozen: FrozenFeatures, options: LinearConfig, train_set: ImageFolder, train_cfg: TrainConfig,
                     lrs: list[float], centre: tuple[torch.Tensor, torch.Tensor]) -> LrChoice | None:
    """Cross-validate one head per lr over the folds of ``train_set``, whose centre-crop features and labels are
    ``centre`` (None: nothing can be held out, and the head that ends best on val is reported)."""
    folds = [(fit, held) for fit, held in held_out_folds(train_set.labels, FOLDS, options.seed) if held]
    if not folds:
        console.warn("no class has two labelled images, so none can be held out to choose the lr: the head "
                     "reported is the one best on --val (optimistic)")
        return None
    fits_the_slice(train_cfg.batch_size, min(len(fit) for fit, _ in folds), len(train_set))
    trial = dataclasses.replace(train_cfg, save_every=train_cfg.epochs, force=False, logger="jsonl")
    correct, loss = torch.zeros(len(lrs)), torch.zeros(len(lrs))
    console.info(f"choosing the lr: {len(lrs)} heads, {len(folds)}-fold cross-validation on {len(train_set)} "
                 "training images")
    for number, (fit, held) in enumerate(folds, 1):
        scored = _fold_scores(frozen, train_set, trial, lrs, centre, (fit, held), f"fold {number} of {len(folds)}")
        correct += torch.tensor([h["top1"] for h in scored]) * len(held) / 100
        loss += torch.tensor([h["loss"] for h in scored]) * len(held)
    total = sum(len(held) for _, held in folds)
    top1 = tuple(round(100 * c / total, 2) for c in correct.tolist())
    choice = LrChoice(tuple(lrs), top1, tuple(round(x / total, 5) for x in loss.tolist()), len(folds[0][0]), total,
                      len(folds))
    console.info(choice.describe())
    if choice.at_an_edge():
        console.warn(choice.at_an_edge())
    return choice


def _fold_scores(frozen: FrozenFeatures, train_set: ImageFolder, trial: TrainConfig, lrs: list[float],
                 centre: tuple[torch.Tensor, torch.Tensor], fold: tuple[list[int], list[int]],
                 name: str) -> list[dict]:
    """Every head trained on the ``fold``'s first indices and scored on its held-out ones."""
    options, (fit, held), (features, labels) = frozen.options, fold, centre
    if options.augment:
        dataset, decided = augmented(frozen, train_set.subset(fit), trial)
        extractor = FeatureExtractor(frozen.loaded.module, frozen.recipe)
    else:
        dataset, decided, extractor = FeatureSet(features[fit], labels[fit]), {}, None
    seed_everything(options.seed)
    probe = LinearProbe(features.shape[1], len(train_set.classes), lrs, options.recipe, extractor)
    held_x, held_y = features[held].to(frozen.device), labels[held].to(frozen.device)
    scored: list[dict] = []

    def score(_: EvalContext) -> dict[str, float]:
        scored[:] = probe.score(held_x, held_y)
        return {"held_out_top1": max(h["top1"] for h in scored)}

    console.info(f"{name}: {len(fit)} images to train on, {len(held)} held out")
    with tempfile.TemporaryDirectory(prefix="sslkit-lr-") as tmp:
        Trainer(probe, dataset, trial, Path(tmp), linear_run_config(options, trial, decided),
                Evaluation(score, every=trial.epochs)).fit()
    return scored


def linear_train_config(options: LinearConfig, recipe: Recipe, lrs: list[float], workers: int,
                        batch: int) -> TrainConfig:
    """The engine settings of a linear probe: the recipe's optimizer and schedule, the first head's lr."""
    return TrainConfig(
        epochs=options.epochs, batch_size=batch, lr=lrs[0], min_lr=0.0, weight_decay=0.0,
        warmup_epochs=recipe.warmup_epochs * options.epochs / recipe.epochs, optimizer=recipe.optimizer,
        clip_grad=0.0, clip_per_param=False, device=options.device, precision=options.precision, seed=options.seed,
        workers=workers if options.augment else 0, save_every=options.save_every, force=options.force,
        data_path=options.data_path, store_size=options.store_size, store_on=options.store_on,
        store_dir=options.store_dir, logger=options.logger,
    )


def linear_run_config(options: LinearConfig, train_cfg: TrainConfig, decided: dict) -> dict:
    return {"method": "linear", "model": options.model, "linear": dataclasses.asdict(options),
            "train": dataclasses.asdict(train_cfg), **({"decided": decided} if decided else {})}


def augmented(frozen: FrozenFeatures, train_set: ImageFolder, train_cfg: TrainConfig) -> tuple[object, dict]:
    """probe linear --augment: the training images as random resized crops + flips, and the data path's record."""
    size = frozen.loaded.img_size
    return training_data(train_set, (crop_flip(size),), crop_flip_view(size), train_cfg, frozen.device)


def linear_plan(options: LinearConfig, frozen: FrozenFeatures, train_set: ImageFolder, train_cfg: TrainConfig,
                lrs: list[float], refusal: str | None) -> dict:
    """probe linear --dry-run: the heads' schedules over the training set; no feature computed."""
    dataset, decided = augmented(frozen, train_set, train_cfg) if options.augment else (train_set, {})
    notes = [] if options.lr else [f"lrs: the {options.recipe} recipe's grid x batch {train_cfg.batch_size} / 256"]
    if len(lrs) > 1:
        notes.append(f"{len(lrs)} heads, peak lr {', '.join(f'{lr:g}' for lr in lrs)}: the schedules show the first's"
                     "; the others' are scaled to their own peak")
        notes.append(f"the lr is chosen by {FOLDS}-fold cross-validation on the training labels (the heads train on "
                     f"four fifths, {FOLDS} times), then every head trains on all of them")
    out = Path(options.out) if options.out else None
    return dryrun.plan("probe linear", train_cfg, linear_run_config(options, train_cfg, decided), len(dataset), out,
                       batchnorm=RECIPES[options.recipe].batch_norm, refusal=refusal, notes=tuple(notes))


def head_summary(lr: float, per_epoch: list[dict]) -> dict:
    """One head's accuracy in the last epoch, in its best epoch (on val) and per epoch."""
    best_epoch = max(range(len(per_epoch)), key=lambda e: per_epoch[e]["top1"])
    return {
        "lr": lr,
        "last": {"top1": per_epoch[-1]["top1"], "top5": per_epoch[-1]["top5"]},
        "best": {"top1": per_epoch[best_epoch]["top1"], "top5": per_epoch[best_epoch]["top5"],
                 "epoch": best_epoch + 1},
        "top1_per_epoch": [e["top1"] for e in per_epoch],
        "top5_per_epoch": [e["top5"] for e in per_epoch],
    }


@contextmanager
def run_dir(out: str | None):
    """``out``, or a temporary directory removed afterwards when no run directory was asked for."""
    if out:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="sslkit-probe-") as tmp:
        yield Path(tmp)

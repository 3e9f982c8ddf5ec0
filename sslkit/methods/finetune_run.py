"""A fine-tuning run: the labelled set and its recipe, the lr chosen on held-out training labels when the
recipe asks for it (sslkit.evaluate.lr_choice), then the run itself scored on --val after each epoch; or, for
a dry run, its plan. The recipes and the model are in sslkit.methods.finetune."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from sslkit import config as cfg, console
from sslkit.config import TrainConfig
from sslkit.data.datapath import refuse_store, training_data
from sslkit.data.folders import ImageFolder, balanced_subset, held_out_folds
from sslkit.data.loader import default_workers, make_loader
from sslkit.data.views import crop_flip, eval_transform, finetune_view
from sslkit.engine import dryrun, rundir
from sslkit.engine.checkpoint import load_backbone
from sslkit.engine.device import resolve_device
from sslkit.engine.evaluation import EvalContext, Evaluation
from sslkit.engine.progress import read_records
from sslkit.engine.rng import seed_everything
from sslkit.engine.trainer import Trainer
from sslkit.errors import UsageError
from sslkit.evaluate.lr_choice import FOLDS, LrChoice, fits_the_slice
from sslkit.evaluate.settings import FinetuneConfig
from sslkit.methods.finetune import (MAE, SEMI_SUPERVISED_LRS, Finetune, choose_recipe, default_layer_decay,
                                     resolve)
from sslkit.models.backbones import has_weights, is_vit
from sslkit.visualize.curves import curves_drawn


def run_finetuning(paths: dict, values: dict, *, resume: bool = False, dry_run: bool = False) -> dict:
    """Fine-tune with the flat settings ``values`` (command-line names, None left out); ``paths``: ``model``,
    ``train``, ``val`` and ``out``. Returns the summary (see sslkit.api.finetune), or with ``dry_run`` the plan."""
    out = Path(paths["out"])
    values, refusal = _checked_settings(paths, values, resume, dry_run)
    seed = values.get("seed", 0)
    train_set, labelled_total = _labelled_train_set(paths["train"], values.get("fraction", 1.0), seed)
    recipe, why = choose_recipe(values.get("recipe", "auto"), len(train_set))
    train_cfg, options = resolve(values, {**values, **paths, "recipe": recipe}, len(train_set), len(train_set.classes))
    run = FinetuneRun(options, seed)
    refuse_store(train_cfg.data_path, run.cpu_only)  # before any run starts
    notes = [f"{recipe} recipe: {why}"] + ([] if "batch_size" in values else
                                           [f"batch {train_cfg.batch_size}: chosen for {len(train_set)} images"])
    console.info(f"fine-tuning {run.loaded.description} on {len(train_set)} of {labelled_total} labelled images "
                 f"({options.fraction:g}), {len(train_set.classes)} classes, {run.img_size} px, "
                 f"{'; '.join(notes)}")
    lrs = SEMI_SUPERVISED_LRS if train_cfg.lr is None else ()
    if dry_run:
        return _plan(run, train_set, train_cfg, lrs, notes, out, resume, refusal)
    choice = choose_finetune_lr(run, train_set, train_cfg, lrs, seed) if lrs else None
    if choice is not None:
        train_cfg = dataclasses.replace(train_cfg, lr=choice.lr)
    saved = rundir.decided(out) if resume else None
    method, source, decided = run.parts(train_set, train_cfg, saved=saved, fresh=choice is not None)
    chosen = {"recipe": recipe, "recipe_reason": why, **({"lr_choice": choice.record()} if choice else {})}
    decided = {**(saved or {}), **decided, **({} if resume else chosen)}
    val_set = ImageFolder(options.val, eval_transform(run.img_size), labelled=True)
    train_cfg = _eval_every(train_cfg, values, len(train_set), len(val_set))
    score = classification_scores(method, make_loader(val_set, 256, run.workers(train_cfg), run.device(train_cfg)),
                                  val_set.labels_in(train_set))
    with curves_drawn(out):
        fit = Trainer(method, source, train_cfg, out, run.config(train_cfg, decided),
                      Evaluation(score, every=train_cfg.eval_every, best="val_top1")).fit(resume=resume)
    return {
        "model": options.model, "description": run.loaded.description, "out": str(out), "img_size": run.img_size,
        "fraction": options.fraction, "num_train": len(train_set), "num_val": len(val_set),
        "num_classes": len(train_set.classes), "recipe": decided.get("recipe", recipe),
        "recipe_reason": decided.get("recipe_reason", why), "epochs": train_cfg.epochs,
        "batch_size": train_cfg.batch_size, "lr": train_cfg.lr, "lr_choice": decided.get("lr_choice"),
        "layer_decay": run.layer_decay, **val_history(out, fit["best"]),
    }


def _checked_settings(paths: dict, values: dict, resume: bool, dry_run: bool) -> tuple[dict, str | None]:
    """``values`` checked, merged with a resumed run's own, and why a dry run's ``out`` could not be used."""
    out, refusal = Path(paths["out"]), None
    if resume:
        values = {"recipe": MAE, **cfg.resumed_settings(out, values, "finetune")}  # runs before --recipe were MAE's
    else:
        refusal = dryrun.checked_new_run(out, values.get("force", False), (Path(paths["train"]), Path(paths["val"])),
                                         dry_run)
    cfg.check_known(values, TrainConfig, FinetuneConfig)
    cfg.build(FinetuneConfig, {**values, **paths})  # it checks itself: a bad value stops here, before any work
    return values, refusal


def _labelled_train_set(folder: str, fraction: float, seed: int) -> tuple[ImageFolder, int]:
    """The class-balanced ``fraction`` of the labelled images under ``folder``, and how many there are in all."""
    train_set = ImageFolder(folder, labelled=True)
    labelled_total = len(train_set)
    if fraction < 1:
        train_set.keep(balanced_subset(train_set.labels, fraction, seed))
    return train_set, labelled_total


def _plan(run: FinetuneRun, train_set: ImageFolder, train_cfg: TrainConfig, lrs: tuple[float, ...], notes: list[str],
          out: Path, resume: bool, refusal: str | None) -> dict:
    """finetune --dry-run: the run's schedules (with the middle lr of the grid when the lr is to be chosen)."""
    if lrs:
        notes.append(f"lr: chosen from {', '.join(f'{lr:g}' for lr in lrs)} on held-out training images "
                     f"({len(lrs)} runs before this one); the schedules show lr {lrs[len(lrs) // 2]:g}")
    if run.options.layer_decay is None:
        notes.append(f"layer decay {run.layer_decay:g}")
    train_cfg = dataclasses.replace(train_cfg, lr=train_cfg.lr or lrs[len(lrs) // 2])
    method, source, decided = run.parts(train_set, train_cfg, saved=rundir.decided(out) if resume else None)
    return dryrun.plan("finetune", train_cfg, run.config(train_cfg, decided), len(source), out, method,
                       refusal=refusal, saved=dryrun.saved_metadata(out) if resume else None, notes=tuple(notes))


def _eval_every(train_cfg: TrainConfig, values: dict, num_train: int, num_val: int) -> TrainConfig:
    """Without --eval-every, val is scored every few epochs when it is large: it costs at most about what training
    does."""
    if "eval_every" in values:
        return train_cfg
    train_cfg = dataclasses.replace(train_cfg, eval_every=max(1, math.ceil(num_val / (2 * num_train))))
    if train_cfg.eval_every > 1:
        console.info(f"--val is scored every {train_cfg.eval_every} epochs and after the last "
                     f"({num_val} val images against {num_train} to train on; --eval-every 1: each)")
    return train_cfg


class FinetuneRun:
    """What every training run of one ``finetune`` call shares: the options and a fresh copy of the model each."""

    def __init__(self, options: FinetuneConfig, seed: int):
        self.options, self.seed = options, seed
        self.loaded = self._load()
        self.img_size = self.loaded.img_size
        self.layer_decay = options.layer_decay or default_layer_decay(self.loaded.module)
        if self.layer_decay != 1 and not is_vit(self.loaded.module):
            raise UsageError("--layer-decay needs a vision transformer (layer ids are its blocks); use 1 for conv nets")

    def _load(self):
        """The model as the run starts from it; a timm: baseline's random weights are the same every time."""
        options = self.options
        seed_everything(self.seed)
        loaded = load_backbone(options.model, options.checkpoint_key, options.img_size, arch=options.arch,
                               drop_path_rate=options.drop_path, allow_partial=options.allow_partial)
        if not has_weights(loaded.module):
            raise UsageError(f"{options.model} has no weights to fine-tune")
        if options.pool != "default":
            if not is_vit(loaded.module):
                raise UsageError("--pool token / avg choose a ViT's pooling; conv nets average-pool")
            loaded.module.reset_classifier(0, global_pool=options.pool)
        return loaded

    def parts(self, train_set: ImageFolder, train_cfg: TrainConfig, saved: dict | None = None, fresh: bool = False):
        """The method (the model with a new head), its training data and the data path's record."""
        loaded = self._load() if fresh else self.loaded
        backbone = loaded.module.train().requires_grad_(True)
        method = Finetune(backbone, len(train_set.classes), self.options, self.layer_decay, loaded.arch,
                          self.img_size, train_set.classes)
        view = randaug_view(self.img_size, self.options.randaug)
        source, decided = training_data(train_set, (crop_flip(self.img_size),), view, train_cfg,
                                        self.device(train_cfg), self.cpu_only, saved=saved)
        return method, source, decided

    @property
    def cpu_only(self) -> str | None:
        """Why the views need the loader (RandAugment), or None."""
        if self.options.randaug.lower() == "none":
            return None
        return "RandAugment runs on the CPU only (--randaug none: off)"

    def config(self, train_cfg: TrainConfig, decided: dict) -> dict:
        return {"method": "finetune", "finetune": dataclasses.asdict(self.options),
                "train": dataclasses.asdict(train_cfg), "decided": decided}

    @staticmethod
    def device(train_cfg: TrainConfig) -> torch.device:
        return resolve_device(train_cfg.device)

    @staticmethod
    def workers(train_cfg: TrainConfig) -> int:
        return default_workers() if train_cfg.workers is None else train_cfg.workers


def choose_finetune_lr(run: FinetuneRun, train_set: ImageFolder, train_cfg: TrainConfig, lrs: tuple[float, ...],
                       seed: int) -> LrChoice:
    """Fine-tune once per lr of ``lrs`` on most of ``train_set`` and score each on the held-out rest."""
    fit_indices, held_indices = held_out_folds(train_set.labels, FOLDS, seed)[0]
    if not held_indices:
        lr = lrs[len(lrs) // 2]
        console.warn(f"no class has two labelled images, so none can be held out to choose the lr: lr {lr:g}, the "
                     f"middle of the grid (give --lr to set it)")
        return LrChoice((lr,), (0.0,), (0.0,), len(train_set), 0, 0)
    fits_the_slice(train_cfg.batch_size, len(fit_indices), len(train_set))
    fit_set, held_set = train_set.subset(fit_indices), train_set.subset(held_indices)
    held_set.transform = eval_transform(run.img_size)
    held_loader = make_loader(held_set, 256, run.workers(train_cfg), run.device(train_cfg))
    held_labels = torch.tensor(held_set.labels)
    sweep_cfg = dataclasses.replace(train_cfg, save_every=train_cfg.epochs, keep=1, force=False, logger="jsonl")
    scores = []
    for number, lr in enumerate(lrs, 1):
        console.info(f"choosing the lr, run {number} of {len(lrs)}: lr {lr:g} on {len(fit_set)} training images, "
                     f"scored on {len(held_set)} held out")
        held_out = _trial(run, fit_set, dataclasses.replace(sweep_cfg, lr=lr), held_loader, held_labels)
        scores.append((held_out["val_top1"], held_out["val_loss"]))
    choice = LrChoice(tuple(lrs), tuple(s[0] for s in scores), tuple(s[1] for s in scores), len(fit_set),
                      len(held_set), 1)
    console.info(choice.describe())
    if choice.at_an_edge():
        console.warn(choice.at_an_edge())
    return choice


def _trial(run: FinetuneRun, fit_set: ImageFolder, trial: TrainConfig, held_loader, held_labels: torch.Tensor) -> dict:
    """One lr trial, fine-tuned from a fresh copy of the model in a temporary directory: its held-out scores."""
    method, source, decided = run.parts(fit_set, trial, fresh=True)
    score = classification_scores(method, held_loader, held_labels)
    held_out = []

    def score_held_out(context: EvalContext) -> dict[str, float]:
        held_out.append(score(context))
        return held_out[-1]

    with tempfile.TemporaryDirectory(prefix="sslkit-lr-") as tmp:
        Trainer(method, source, trial, Path(tmp), run.config(trial, decided),
                Evaluation(score_held_out, every=trial.epochs)).fit()
    return held_out[-1]


def val_history(out: Path, best: dict) -> dict:
    """Last and best val accuracy and the per-epoch curves, from the run's metrics.jsonl."""
    records = read_records(out / "metrics.jsonl")
    scored = [r for r in records if "val_top1" in r]
    return {
        "top1": scored[-1]["val_top1"], "top5": scored[-1]["val_top5"],
        "best_top1": best["value"], "best_epoch": best["epoch"],
        "best_top5": next(r["val_top5"] for r in scored if r["epoch"] == best["epoch"]),
        "best_checkpoint": str(out / "checkpoints" / "best.safetensors"),
        "top1_per_epoch": [r["val_top1"] for r in scored],
        "top5_per_epoch": [r["val_top5"] for r in scored],
    }


def randaug_view(img_size: int, randaug: str):
    """The fine-tuning view with the RandAugment spec ``randaug`` ("none": off); a bad spec is a usage error."""
    try:
        return finetune_view(img_size, None if randaug.lower() == "none" else randaug)
    except (AssertionError, KeyError, ValueError, IndexError) as error:
        raise UsageError(f"--randaug '{randaug}' is not a timm RandAugment spec such as rand-m9-mstd0.5-inc1 "
                         f"({type(error).__name__}: {error})") from None


def classification_scores(model, loader, labels: torch.Tensor):
    """A function giving val top-1 / top-5 (percent) and loss of ``model`` over ``loader`` (run by the trainer,
    on the run's device and under its precision: ``context``)."""

    def score(context: EvalContext) -> dict[str, float]:
        device = context.device
        hits, loss, seen = torch.zeros(2, device=device), torch.zeros((), device=device), 0
        for images, _ in loader:
            target = labels[seen : seen + len(images)].to(device)
            seen += len(images)
            logits = model(images.to(device, non_blocking=True)).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices == target[:, None]
            hits += torch.stack([top[:, 0].sum(), top.any(dim=1).sum()])
            loss += F.cross_entropy(logits, target, reduction="sum")
        top1, top5 = (100.0 * hits / seen).tolist()
        return {"val_top1": round(top1, 2), "val_top5": round(top5, 2), "val_loss": round(loss.item() / seen, 5)}

    return score

"""The Python API: the same verbs as the command line, for notebooks and scripts.

    import sslkit
    sslkit.pretrain("byol", "images/", out="runs/byol", arch="resnet18", img_size=64, epochs=10)
    sslkit.probe_knn("runs/byol", train="labelled/train", val="labelled/val", k=[10, 20])
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from sslkit import config as cfg, console
from sslkit.config import ContinueConfig, KNNConfig, LinearConfig, TrainConfig
from sslkit.data.datapath import refuse_store, training_data
from sslkit.data.folders import ImageFolder, decoded, images_under
from sslkit.data.loader import default_workers, make_loader
from sslkit.data.views import crop_flip, crop_flip_view, eval_transform
from sslkit.engine import dryrun, rundir
from sslkit.engine.checkpoint import load_backbone
from sslkit.engine.device import choose_precision, resolve_device
from sslkit.engine.progress import read_records
from sslkit.engine.rng import seed_everything
from sslkit.engine.trainer import Evaluation, Trainer
from sslkit.errors import UsageError
from sslkit.evaluate.features import FeatureSet, cached_features, default_cache_dir, model_fingerprint
from sslkit.evaluate.knn import knn_classify
from sslkit.files import OutputFolder
from sslkit.methods import METHODS
from sslkit.methods.pretrain import run_pretraining
from sslkit.models.backbones import FeatureExtractor, FeatureRecipe, has_weights, is_vit, patch_size
from sslkit.visualize.curves import curves_drawn


def pretrain(method: str, data: str | Path, out: str | Path, *, config: str | Path | None = None,
             resume: bool = False, dry_run: bool = False, **settings) -> dict:
    """Pretrain ``method`` on the images under ``data``; the run (config, metrics, checkpoints) goes to ``out``.

    ``settings`` are the command-line options by their Python names (``epochs``, ``batch_size``, ``arch``,
    ...); ``None`` values are ignored. With ``resume`` the run continues from ``out``'s last checkpoint. With
    ``dry_run`` nothing trains: returns the plan (sslkit.engine.dryrun.plan: the resolved settings and every
    schedule per logged step), drawn to ``out/schedules.png`` when ``out`` is new or empty.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    classes = (TrainConfig, ContinueConfig, spec.config)
    values = cfg.load_file(config) if config else {}
    cfg.check_known(values, *classes, source=config)
    values.update({k: v for k, v in settings.items() if v is not None})
    cfg.check_known(values, *classes)
    return run_pretraining(method, Path(data), Path(out), values, resume=resume, dry_run=dry_run)


def probe_knn(model: str, train: str | Path, val: str | Path, **settings) -> dict:
    """Weighted k-NN accuracy of ``model``'s frozen features: ``train`` is the labelled memory, ``val`` the test set.

    Returns ``{"top1": .., "top5": .., "k": {k: {"top1": .., "top5": ..}}, ...}`` (percent; the top level is
    for the first k).
    """
    options = KNNConfig(model=str(model), train=str(train), val=str(val),
                        **{k: v for k, v in settings.items() if v is not None})
    cfg.validate_knn(options)
    frozen = FrozenFeatures(options, default_blocks=1)
    train_set, val_set, val_labels = frozen.labelled_sets()
    train_features, train_labels = frozen.features(train_set, "train")
    val_features, _ = frozen.features(val_set, "val")
    normalize = torch.nn.functional.normalize
    results = knn_classify(normalize(train_features, dim=1), train_labels, normalize(val_features, dim=1), val_labels,
                           options.k, options.temperature, len(train_set.classes), frozen.device)
    first = results[options.k[0]]
    return {
        **frozen.summary(train_set, val_set),
        "temperature": options.temperature,
        "top1": first["top1"],
        "top5": first["top5"],
        "k": {str(k): v for k, v in results.items()},
    }


def probe_linear(model: str, train: str | Path, val: str | Path, *, dry_run: bool = False, **settings) -> dict:
    """Linear classifiers on ``model``'s frozen features, trained on ``train`` and scored on ``val`` every epoch.

    ``lr`` may list several learning rates (default: the recipe's grid, sslkit.evaluate.linear.LR_GRIDS): one
    head each, trained together. The lr is chosen by cross-validation on ``train`` first (the heads trained
    on four fifths and scored on the fifth held out, five times; ``lr_choice``), then every head trains on all
    of ``train``. Returns the summary with ``top1`` /
    ``top5`` (last epoch, on ``val``) of the chosen head, ``best_top1`` over all heads and epochs (chosen on
    ``val``: optimistic), and per head its accuracy per epoch. With ``out`` the probe is a run directory
    (checkpoints, metrics, curves). With ``dry_run`` no feature is computed: returns the plan (see
    :func:`pretrain`).
    """
    from sslkit.evaluate.linear import RECIPES, LinearProbe, lr_grid

    options = LinearConfig(model=str(model), train=str(train), val=str(val),
                           **{k: v for k, v in settings.items() if v is not None})
    cfg.validate_linear(options)
    recipe = RECIPES[options.recipe]
    refusal = None
    if options.out:
        refusal = dryrun.checked_new_run(Path(options.out), options.force, (Path(train), Path(val)), dry_run)
    frozen = FrozenFeatures(options, default_blocks=4 if options.recipe == "dino" else 1)
    train_set, val_set, val_labels = frozen.labelled_sets()
    # without --batch-size a small labelled set gets a smaller step batch (the forward passes keep theirs)
    batch = options.batch_size if settings.get("batch_size") else min(options.batch_size, _auto_batch(len(train_set)))
    lrs = options.lr or lr_grid(options.recipe, batch)
    train_cfg = _linear_train_config(options, recipe, lrs, frozen.workers, batch)
    if dry_run:
        return _linear_plan(options, frozen, train_set, train_cfg, lrs, refusal)
    val_features, _ = frozen.features(val_set, "val")
    decided = {}
    if options.augment:  # features recomputed per epoch from random crops: nothing to cache
        dataset, decided = _augmented(frozen, train_set, train_cfg)
        extractor = FeatureExtractor(frozen.loaded.module, frozen.recipe)
    else:
        dataset, extractor = FeatureSet(*frozen.features(train_set, "train")), None
    choice = None
    if len(lrs) > 1:  # the held-out folds are scored on centre-crop features, which the plain probe trains on
        centre = (dataset.features, dataset.labels) if extractor is None else frozen.features(train_set, "train")
        choice = _choose_linear_lr(frozen, options, train_set, train_cfg, lrs, centre)
    seed_everything(options.seed)
    probe = LinearProbe(val_features.shape[1], len(train_set.classes), lrs, options.recipe, extractor, metadata={
        "arch": frozen.loaded.arch, "img_size": str(frozen.loaded.img_size), "probed_model": options.model,
        "features": frozen.recipe.describe(), "classes": json.dumps(train_set.classes)})
    history: list[list[dict]] = []
    val_x, val_y = val_features.to(frozen.device), val_labels.to(frozen.device)

    def score() -> dict[str, float]:
        heads = probe.score(val_x, val_y)
        history.append(heads)
        best = max(heads, key=lambda h: h["top1"])
        scores = {"val_top1": best["top1"], "val_top5": best["top5"], "val_loss": best["loss"]}
        if len(heads) > 1:
            scores.update({f"val_top1/lr={lr:g}": h["top1"] for lr, h in zip(lrs, heads)})
        return scores

    with _run_dir(options.out) as out, curves_drawn(out) if options.out else nullcontext():
        fit = Trainer(probe, dataset, train_cfg, out, _linear_run_config(options, train_cfg, decided),
                      Evaluation(score, best="val_top1")).fit()
    heads = [_head_summary(lr, [epoch[i] for epoch in history]) for i, lr in enumerate(lrs)]
    chosen = heads[lrs.index(choice.lr)] if choice else heads[0]
    best = max(heads, key=lambda h: h["best"]["top1"])
    return {
        **frozen.summary(train_set, val_set),
        "feature_dim": int(val_features.shape[1]),
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
        **({"best_checkpoint": str(Path(options.out) / "checkpoints" / "best.safetensors")} if options.out and fit.get("best") else {}),
    }


def _choose_linear_lr(frozen: "FrozenFeatures", options: LinearConfig, train_set: ImageFolder,
                      train_cfg: TrainConfig, lrs: list[float], centre: tuple[torch.Tensor, torch.Tensor]):
    """Cross-validate one head per lr over the folds of ``train_set``, whose centre-crop features and labels are
    ``centre`` (None: nothing can be held out, and the head that ends best on val is reported)."""
    from sslkit.data.folders import held_out_folds
    from sslkit.evaluate.linear import LinearProbe
    from sslkit.evaluate.lr_choice import FOLDS, LrChoice

    folds = [(fit, held) for fit, held in held_out_folds(train_set.labels, FOLDS, options.seed) if held]
    if not folds:
        console.warn("no class has two labelled images, so none can be held out to choose the lr: the head "
                     "reported is the one best on --val (optimistic)")
        return None
    _fits_the_slice(train_cfg.batch_size, min(len(fit) for fit, _ in folds), len(train_set))
    features, labels = centre
    trial = dataclasses.replace(train_cfg, save_every=train_cfg.epochs, force=False, logger="jsonl")
    correct, loss = torch.zeros(len(lrs)), torch.zeros(len(lrs))
    console.info(f"choosing the lr: {len(lrs)} heads, {len(folds)}-fold cross-validation on {len(train_set)} "
                 "training images")
    for number, (fit, held) in enumerate(folds, 1):
        if options.augment:
            dataset, decided = _augmented(frozen, train_set.subset(fit), trial)
            extractor = FeatureExtractor(frozen.loaded.module, frozen.recipe)
        else:
            dataset, decided, extractor = FeatureSet(features[fit], labels[fit]), {}, None
        seed_everything(options.seed)
        probe = LinearProbe(features.shape[1], len(train_set.classes), lrs, options.recipe, extractor)
        held_x, held_y = features[held].to(frozen.device), labels[held].to(frozen.device)
        scored: list[dict] = []

        def score() -> dict[str, float]:
            scored[:] = probe.score(held_x, held_y)
            return {"held_out_top1": max(h["top1"] for h in scored)}

        console.info(f"fold {number} of {len(folds)}: {len(fit)} images to train on, {len(held)} held out")
        with tempfile.TemporaryDirectory(prefix="sslkit-lr-") as tmp:
            Trainer(probe, dataset, trial, Path(tmp), _linear_run_config(options, trial, decided),
                    Evaluation(score, every=trial.epochs)).fit()
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


def _fits_the_slice(batch: int, fit: int, total: int) -> None:
    if batch > fit:
        raise UsageError(f"--batch-size {batch} is larger than the {fit} training images the lr is chosen with "
                         f"({fit} of {total}; the rest held out): give a smaller --batch-size, or one --lr")


def _linear_train_config(options: LinearConfig, recipe, lrs: list[float], workers: int, batch: int) -> TrainConfig:
    """The engine settings of a linear probe: the recipe's optimizer and schedule, the first head's lr."""
    return TrainConfig(
        epochs=options.epochs, batch_size=batch, lr=lrs[0], min_lr=0.0, weight_decay=0.0,
        warmup_epochs=recipe.warmup_epochs * options.epochs / recipe.epochs, optimizer=recipe.optimizer,
        clip_grad=0.0, clip_per_param=False, device=options.device, precision=options.precision, seed=options.seed,
        workers=workers if options.augment else 0, save_every=options.save_every, force=options.force,
        data_path=options.data_path, store_size=options.store_size, store_on=options.store_on,
        store_dir=options.store_dir, logger=options.logger,
    )


def _linear_run_config(options: LinearConfig, train_cfg: TrainConfig, decided: dict) -> dict:
    return {"method": "linear", "model": options.model, "linear": dataclasses.asdict(options),
            "train": dataclasses.asdict(train_cfg), **({"decided": decided} if decided else {})}


def _augmented(frozen: "FrozenFeatures", train_set: ImageFolder, train_cfg: TrainConfig) -> tuple[object, dict]:
    """probe linear --augment: the training images as random resized crops + flips, and the data path's record."""
    size = frozen.loaded.img_size
    return training_data(train_set, (crop_flip(size),), crop_flip_view(size), train_cfg, frozen.device)


def _linear_plan(options: LinearConfig, frozen: "FrozenFeatures", train_set: ImageFolder, train_cfg: TrainConfig,
                 lrs: list[float], refusal: str | None) -> dict:
    """probe linear --dry-run: the heads' schedules over the training set; no feature computed."""
    from sslkit.evaluate.linear import RECIPES
    from sslkit.evaluate.lr_choice import FOLDS

    recipe = RECIPES[options.recipe]
    dataset, decided = _augmented(frozen, train_set, train_cfg) if options.augment else (train_set, {})
    notes = [] if options.lr else [f"lrs: the {options.recipe} recipe's grid x batch {train_cfg.batch_size} / 256"]
    if len(lrs) > 1:
        notes.append(f"{len(lrs)} heads, peak lr {', '.join(f'{lr:g}' for lr in lrs)}: the schedules show the first's"
                     "; the others' are scaled to their own peak")
        notes.append(f"the lr is chosen by {FOLDS}-fold cross-validation on the training labels (the heads train on "
                     f"four fifths, {FOLDS} times), then every head trains on all of them")
    out = Path(options.out) if options.out else None
    return dryrun.plan("probe linear", train_cfg, _linear_run_config(options, train_cfg, decided), len(dataset), out,
                       batchnorm=recipe.batch_norm, refusal=refusal, notes=tuple(notes))


def _head_summary(lr: float, per_epoch: list[dict]) -> dict:
    best_epoch = max(range(len(per_epoch)), key=lambda e: per_epoch[e]["top1"])
    return {
        "lr": lr,
        "last": {"top1": per_epoch[-1]["top1"], "top5": per_epoch[-1]["top5"]},
        "best": {"top1": per_epoch[best_epoch]["top1"], "top5": per_epoch[best_epoch]["top5"], "epoch": best_epoch + 1},
        "top1_per_epoch": [e["top1"] for e in per_epoch],
        "top5_per_epoch": [e["top5"] for e in per_epoch],
    }


@contextmanager
def _run_dir(out: str | None):
    """``out``, or a temporary directory removed afterwards when no run directory was asked for."""
    if out:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="sslkit-probe-") as tmp:
        yield Path(tmp)


FINETUNE_TRAIN_FIELDS = ("epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "clip_grad",
                         "accum_steps", "device", "precision", "compile", "seed", "workers", "save_every", "log_every",
                         "force", "keep", "data_path", "store_size", "store_on", "store_dir", "logger", "optimizer",
                         "momentum", "nesterov", "betas", "eval_every")


def finetune(model: str, train: str | Path, val: str | Path, out: str | Path, *, resume: bool = False,
             dry_run: bool = False, **settings) -> dict:
    """Fine-tune ``model`` (or train ``timm:ARCH`` from scratch) on the labelled ``train`` folder, scoring ``val``
    after every epoch; ``out`` gets the run (checkpoints ``last`` and ``best`` by val top-1, metrics, curves).

    ``settings`` are the command-line options by their Python names (``fraction``, ``epochs``, ``recipe``,
    ...). ``recipe="auto"`` takes the semi-supervised recipe for up to 200,000 labelled images, whose lr is
    chosen on a held-out slice of ``train`` unless ``lr`` or ``blr`` is given, and MAE's above. Returns the
    best and last val accuracy and, when the lr was chosen, the choice (``lr_choice``); with ``dry_run``, the
    plan instead (see :func:`pretrain`).
    """
    from sslkit.config import FinetuneConfig
    from sslkit.data.folders import balanced_subset
    from sslkit.methods import finetune as ft

    values = {k: v for k, v in settings.items() if v is not None}
    out, refusal = Path(out), None
    if resume:
        values = {"recipe": ft.MAE, **cfg.resumed_settings(out, values, "finetune")}  # runs before --recipe were MAE's
    else:
        refusal = dryrun.checked_new_run(out, values.get("force", False), (Path(train), Path(val)), dry_run)
    cfg.check_known(values, TrainConfig, FinetuneConfig)
    paths = {"model": str(model), "train": str(train), "val": str(val), "out": str(out)}
    cfg.validate_finetune(cfg.build(FinetuneConfig, {**values, **paths}))
    seed = values.get("seed", 0)
    train_set = ImageFolder(paths["train"], labelled=True)
    labelled_total = len(train_set)
    if values.get("fraction", 1.0) < 1:
        train_set.keep(balanced_subset(train_set.labels, values["fraction"], seed))
    recipe, why = ft.choose_recipe(values.get("recipe", "auto"), len(train_set))
    options = cfg.build(FinetuneConfig, {**ft.recipe_options(recipe), **values, **paths, "recipe": recipe})
    cfg.validate_finetune(options)
    batch_size = values.get("batch_size") or _auto_batch(len(train_set))
    blr = values.get("blr", options.blr if recipe == ft.MAE else None)
    given_train = {k: values[k] for k in FINETUNE_TRAIN_FIELDS if k in values}
    train_cfg = ft.train_settings(recipe, given_train, batch_size, blr, len(train_set), len(train_set.classes))
    if (options.mixup > 0 or options.cutmix > 0) and (batch_size // train_cfg.accum_steps) % 2:
        raise UsageError(f"mixup / cutmix pair each image with another: use an even --batch-size (not {batch_size})")
    run = _FinetuneRun(options, seed)
    refuse_store(train_cfg.data_path, run.cpu_only)  # before any run starts
    notes = [f"{recipe} recipe: {why}"] + ([] if "batch_size" in values else
                                           [f"batch {batch_size}: chosen for {len(train_set)} images"])
    console.info(f"fine-tuning {run.loaded.description} on {len(train_set)} of {labelled_total} labelled images "
                 f"({options.fraction:g}), {len(train_set.classes)} classes, {run.img_size} px, "
                 f"{'; '.join(notes)}")
    lrs = ft.SEMI_SUPERVISED_LRS if train_cfg.lr is None else ()
    if dry_run:
        if lrs:
            notes.append(f"lr: chosen from {', '.join(f'{lr:g}' for lr in lrs)} on held-out training images "
                         f"({len(lrs)} runs before this one); the schedules show lr {lrs[len(lrs) // 2]:g}")
        if options.layer_decay is None:
            notes.append(f"layer decay {run.layer_decay:g}")
        train_cfg = dataclasses.replace(train_cfg, lr=train_cfg.lr or lrs[len(lrs) // 2])
        cfg.validate_train(train_cfg)
        method, source, decided = run.parts(train_set, train_cfg, saved=rundir.decided(out) if resume else None)
        run_config = run.config(train_cfg, decided)
        return dryrun.plan("finetune", train_cfg, run_config, len(source), out, method, refusal=refusal,
                           saved=dryrun.saved_metadata(out) if resume else None, notes=tuple(notes))
    choice = _choose_finetune_lr(run, train_set, train_cfg, lrs, seed) if lrs else None
    if choice is not None:
        train_cfg = dataclasses.replace(train_cfg, lr=choice.lr)
    cfg.validate_train(train_cfg)
    saved = rundir.decided(out) if resume else None
    method, source, decided = run.parts(train_set, train_cfg, saved=saved, fresh=choice is not None)
    chosen = {"recipe": recipe, "recipe_reason": why}
    if choice is not None:
        chosen["lr_choice"] = choice.record()
    decided = {**(saved or {}), **decided, **({} if resume else chosen)}
    val_set = ImageFolder(options.val, eval_transform(run.img_size), labelled=True)
    if "eval_every" not in values:  # scoring val costs at most about what training does
        train_cfg = dataclasses.replace(train_cfg, eval_every=max(1, math.ceil(len(val_set) / (2 * len(train_set)))))
        if train_cfg.eval_every > 1:
            console.info(f"--val is scored every {train_cfg.eval_every} epochs and after the last "
                         f"({len(val_set)} val images against {len(train_set)} to train on; --eval-every 1: each)")
    val_loader = make_loader(val_set, 256, run.workers(train_cfg), run.device(train_cfg))
    score = _classification_scores(method, val_loader, val_set.labels_in(train_set))
    with curves_drawn(out):
        fit = Trainer(method, source, train_cfg, out, run.config(train_cfg, decided),
                      Evaluation(score, every=train_cfg.eval_every, best="val_top1")).fit(resume=resume)
    return {
        "model": options.model, "description": run.loaded.description, "out": str(out), "img_size": run.img_size,
        "fraction": options.fraction, "num_train": len(train_set), "num_val": len(val_set),
        "num_classes": len(train_set.classes), "recipe": decided.get("recipe", recipe),
        "recipe_reason": decided.get("recipe_reason", why), "epochs": train_cfg.epochs, "batch_size": batch_size,
        "lr": train_cfg.lr, "lr_choice": decided.get("lr_choice"), "layer_decay": run.layer_decay,
        **_val_history(out, fit["best"]),
    }


class _FinetuneRun:
    """What every training run of one ``finetune`` call shares: the options and a fresh copy of the model each."""

    def __init__(self, options, seed: int):
        from sslkit.methods.finetune import default_layer_decay

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
        from sslkit.data.views import finetune_view
        from sslkit.methods.finetune import Finetune

        loaded = self._load() if fresh else self.loaded
        backbone = loaded.module.train().requires_grad_(True)
        method = Finetune(backbone, len(train_set.classes), self.options, self.layer_decay, loaded.arch,
                          self.img_size, train_set.classes)
        view = _finetune_view(finetune_view, self.img_size, self.options.randaug)
        source, decided = training_data(train_set, (crop_flip(self.img_size),), view, train_cfg,
                                        self.device(train_cfg), self.cpu_only, saved=saved)
        return method, source, decided

    @property
    def cpu_only(self) -> str | None:
        """Why the views need the loader (RandAugment), or None."""
        return None if self.options.randaug.lower() == "none" else "RandAugment runs on the CPU only (--randaug none: off)"

    def config(self, train_cfg: TrainConfig, decided: dict) -> dict:
        return {"method": "finetune", "finetune": dataclasses.asdict(self.options),
                "train": dataclasses.asdict(train_cfg), "decided": decided}

    @staticmethod
    def device(train_cfg: TrainConfig) -> torch.device:
        return resolve_device(train_cfg.device)

    @staticmethod
    def workers(train_cfg: TrainConfig) -> int:
        return default_workers() if train_cfg.workers is None else train_cfg.workers


def _choose_finetune_lr(run: _FinetuneRun, train_set: ImageFolder, train_cfg: TrainConfig, lrs: tuple[float, ...],
                        seed: int):
    """Fine-tune once per lr of ``lrs`` on most of ``train_set`` and score each on the held-out rest."""
    from sslkit.data.folders import held_out_folds
    from sslkit.evaluate.lr_choice import FOLDS, LrChoice

    fit_indices, held_indices = held_out_folds(train_set.labels, FOLDS, seed)[0]
    if not held_indices:
        lr = lrs[len(lrs) // 2]
        console.warn(f"no class has two labelled images, so none can be held out to choose the lr: lr {lr:g}, the "
                     f"middle of the grid (give --lr to set it)")
        return LrChoice((lr,), (0.0,), (0.0,), len(train_set), 0, 0)
    _fits_the_slice(train_cfg.batch_size, len(fit_indices), len(train_set))
    fit_set, held_set = train_set.subset(fit_indices), train_set.subset(held_indices)
    held_set.transform = eval_transform(run.img_size)
    held_loader = make_loader(held_set, 256, run.workers(train_cfg), run.device(train_cfg))
    held_labels = torch.tensor(held_set.labels)
    sweep_cfg = dataclasses.replace(train_cfg, save_every=train_cfg.epochs, keep=1, force=False, logger="jsonl")
    scores = []
    for number, lr in enumerate(lrs, 1):
        console.info(f"choosing the lr, run {number} of {len(lrs)}: lr {lr:g} on {len(fit_set)} training images, "
                     f"scored on {len(held_set)} held out")
        trial = dataclasses.replace(sweep_cfg, lr=lr)
        method, source, decided = run.parts(fit_set, trial, fresh=True)
        score = _classification_scores(method, held_loader, held_labels)
        held_out = []

        def score_held_out() -> dict[str, float]:
            held_out.append(score())
            return held_out[-1]

        with tempfile.TemporaryDirectory(prefix="sslkit-lr-") as tmp:
            Trainer(method, source, trial, Path(tmp), run.config(trial, decided),
                    Evaluation(score_held_out, every=trial.epochs)).fit()
        scores.append((held_out[-1]["val_top1"], held_out[-1]["val_loss"]))
    choice = LrChoice(tuple(lrs), tuple(s[0] for s in scores), tuple(s[1] for s in scores), len(fit_set),
                      len(held_set), 1)
    console.info(choice.describe())
    if choice.at_an_edge():
        console.warn(choice.at_an_edge())
    return choice


def _val_history(out: Path, best: dict) -> dict:
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


def _finetune_view(build, img_size: int, randaug: str):
    try:
        return build(img_size, None if randaug.lower() == "none" else randaug)
    except (AssertionError, KeyError, ValueError, IndexError) as error:
        raise UsageError(f"--randaug '{randaug}' is not a timm RandAugment spec such as rand-m9-mstd0.5-inc1 "
                         f"({type(error).__name__}: {error})") from None


def _auto_batch(num_images: int) -> int:
    """256, or for small labelled sets the largest power of two that still gives about 10 steps per epoch."""
    batch = 256
    while batch > 8 and batch * 10 > num_images:
        batch //= 2
    return batch


def _classification_scores(model, loader, labels: torch.Tensor):
    """A function giving val top-1 / top-5 (percent) and loss of ``model`` over ``loader`` (run by the trainer,
    under the run's precision)."""

    def score() -> dict[str, float]:
        device = next(model.parameters()).device
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


class FrozenFeatures:
    """The frozen model of an evaluation, its feature recipe and the (cached) features it gives per folder.

    ``options``: a FrozenConfig, or any settings with its feature fields (CopyDetectConfig).
    """

    def __init__(self, options, default_blocks: int, transform=eval_transform):
        self.options = options
        self.device = resolve_device(options.device)
        self.amp_dtype = choose_precision(options.precision, self.device).dtype
        seed_everything(options.seed)
        self.loaded = load_backbone(options.model, options.checkpoint_key, options.img_size, arch=options.arch,
                                    allow_partial=options.allow_partial)
        patch = patch_size(self.loaded.module)
        if patch and self.loaded.img_size % patch:
            raise UsageError(f"--img-size {self.loaded.img_size} is not a multiple of the model's patch size {patch}")
        blocks = options.n_last_blocks or (default_blocks if is_vit(self.loaded.module) else 1)
        self.recipe = FeatureRecipe(options.pool, blocks, options.avgpool_patchtokens, options.gem_p)
        self.recipe.check(self.loaded.module)
        self.transform = transform(self.loaded.img_size)
        self.workers = default_workers() if options.workers is None else options.workers
        cache_dir = (Path(options.cache_dir) if options.cache_dir else default_cache_dir()) if options.cache else None
        self.cache_dir = cache_dir
        partial = "|partial" if options.allow_partial else ""  # what is not loaded depends on the seed
        self.model_id = model_fingerprint(self.loaded.source, f"{options.checkpoint_key}|{self.loaded.arch}|"
                                          f"{self.loaded.img_size}|seed{options.seed}{partial}")

    def labelled_sets(self) -> tuple[ImageFolder, ImageFolder, torch.Tensor]:
        """The train folder (the --fraction of it), val (evaluation transform) and val's labels as train class
        indices."""
        from sslkit.data.folders import balanced_subset

        train_set = ImageFolder(self.options.train, self.transform, labelled=True)
        if self.options.fraction < 1:  # the images finetune --fraction with the same --seed trains on
            train_set.keep(balanced_subset(train_set.labels, self.options.fraction, self.options.seed))
        val_set = ImageFolder(self.options.val, self.transform, labelled=True)
        return train_set, val_set, val_set.labels_in(train_set)

    def features(self, dataset: ImageFolder, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        return cached_features(self.cache_dir, self.model_id, self.recipe, self.transform, dataset, label=label,
                               backbone=self.loaded.module, batch_size=self.options.batch_size, workers=self.workers,
                               device=self.device, amp_dtype=self.amp_dtype)

    def summary(self, train_set: ImageFolder, val_set: ImageFolder) -> dict:
        return {
            "model": self.options.model,
            "description": self.loaded.description,
            "features": self.recipe.describe(),
            "img_size": self.loaded.img_size,
            "num_train": len(train_set),
            "fraction": self.options.fraction,
            "num_val": len(val_set),
            "num_classes": len(train_set.classes),
        }


def copydetect(model: str, database: str | Path, queries: str | Path, **settings) -> dict:
    """Copy detection (DINO's protocol): each image of ``queries`` searches ``database`` (plus ``distractors``) by
    the cosine similarity of descriptors (CLS + GeM-pooled patch tokens, whitened when ``whiten`` names a folder).

    With ``ground_truth`` (a CSV / TSV file, ``copydays`` or ``prefix:N``) returns mAP (trapezoidal AP, as the
    Holidays / Copydays evaluation), micro-AP and recall@1 / @10, in percent; ``matches`` writes the ranked
    matches as CSV. Times and peak memory are in ``seconds`` and ``peak_memory_mb``.
    """
    from sslkit.config import CopyDetectConfig
    from sslkit.data.views import square_transform
    from sslkit.evaluate.copydetect import GroundTruth, Whitening, comparable, write_matches
    from sslkit.evaluate.retrieval import ranking_scores, search

    options = CopyDetectConfig(model=str(model), database=str(database), queries=str(queries),
                               **{k: v for k, v in settings.items() if v is not None})
    cfg.validate_copydetect(options)
    pixels = options.model.startswith("pixels:")
    if pixels:
        options.pool = "default"  # a thumbnail is its own descriptor
    frozen = FrozenFeatures(options, default_blocks=1, transform=square_transform)
    folders = {"database": options.database, "distractors": options.distractors, "whiten": options.whiten,
               "queries": options.queries}
    sets = {name: ImageFolder(folder, frozen.transform) for name, folder in folders.items() if folder}
    database_files = sets["database"].files + (sets["distractors"].files if "distractors" in sets else [])
    truth = GroundTruth.load(options.ground_truth, Path(options.queries), sets["queries"].files,
                             Path(options.database), sets["database"].files) if options.ground_truth else None
    seconds, features = {}, {}
    for name, dataset in sets.items():
        start = time.perf_counter()
        features[name] = frozen.features(dataset, name)[0]
        seconds[name] = round(time.perf_counter() - start, 3)
    whitening = None
    if options.whiten:
        learn_from = features.pop("whiten")
        if len(learn_from) < learn_from.shape[1]:
            console.warn(f"whitening {learn_from.shape[1]}-d descriptors from only {len(learn_from)} images: the "
                         "smallest directions are guessed; give --whiten several times more images than dimensions")
        whitening = Whitening.fit(learn_from, options.whiten_power).to(frozen.device)  # once, not per chunk
    start = time.perf_counter()
    databases = [features["database"]] + ([features["distractors"]] if options.distractors else [])
    queries = comparable(features["queries"].to(frozen.device), whitening)
    scores, indices = search(queries, databases, options.top_k,
                             prepare=lambda chunk: comparable(chunk, whitening), device=frozen.device)
    seconds["search"] = round(time.perf_counter() - start, 3)
    recall_at = sorted({1, min(10, options.top_k)})
    ranked = ranking_scores(scores, indices, truth.positives, recall_at) if truth else None
    database_seconds = seconds["database"] + seconds.get("distractors", 0.0) + seconds["search"]
    results = {
        "model": options.model, "description": frozen.loaded.description,
        "descriptor": "pixels" if pixels else frozen.recipe.describe(),
        "dim": int(features["queries"].shape[1]), "img_size": frozen.loaded.img_size,
        "num_queries": len(sets["queries"]), "num_database": len(sets["database"]),
        "num_distractors": len(sets["distractors"]) if options.distractors else 0,
        "whitening": {"folder": options.whiten, "images": len(sets["whiten"]), "power": options.whiten_power}
        if options.whiten else None,
        "top_k": options.top_k, "ground_truth": options.ground_truth,
        **(_copy_scores(ranked, truth) if truth else {}),
        "examples": _copy_examples(scores, indices, ranked, truth, sets["queries"].files, database_files),
        "seconds": seconds, "per_1000_database_s": round(1000 * database_seconds / len(database_files), 3),
        "peak_memory_mb": _peak_memory(frozen.device), "matches": options.matches,
    }
    if options.matches:
        write_matches(Path(options.matches), sets["queries"].files, database_files, scores, indices, truth,
                      options.min_score)
    return results


def make_copy_benchmark(source: str | Path, out: str | Path, *, workers: int | None = None, force: bool = False,
                        **settings) -> dict:
    """A Copydays-"strong"-like benchmark from the images under ``source``, written to ``out``: originals in
    ``database/``, strong copies in ``queries/``, optional ``distractors/`` and ``whiten/``, and
    ``ground_truth.csv``. ``settings``: ``originals``, ``copies``, ``distractors``, ``whiten``, ``max_size``,
    ``min_attacks``, ``max_attacks``, ``quality``, ``seed``. The same seed gives the same bytes."""
    from sslkit.config import BenchmarkConfig
    from sslkit.data.copybench import make_benchmark

    options = BenchmarkConfig(**{k: v for k, v in settings.items() if v is not None})
    return make_benchmark(source, out, options, default_workers() if workers is None else workers, force)


def _copy_scores(ranked: dict, truth) -> dict:
    """mAP, micro-AP, recall@1 / @10 (percent), and mAP per group of queries (e.g. per attack)."""
    percent = {name: round(100 * value, 2) for name, value in ranked.items() if name != "ap"}
    groups = {}
    for q, names in enumerate(truth.groups or []):
        for name in names:
            if ranked["ap"][q] is not None:
                groups.setdefault(name, []).append(ranked["ap"][q])
    return {
        **percent, "queries_with_copies": sum(1 for p in truth.positives if p),
        "groups": {name: {"map": round(100 * sum(ap) / len(ap), 2), "queries": len(ap)}
                   for name, ap in sorted(groups.items())},
        "ap": [None if ap is None else round(ap, 4) for ap in ranked["ap"]],
    }


def _copy_examples(scores: torch.Tensor, indices: torch.Tensor, ranked: dict | None, truth, queries: list[Path],
                   database: list[Path], count: int = 10) -> list[dict]:
    """The first queries' best matches; with a ground truth, the queries whose copy ranks worst."""
    order = list(range(len(queries)))
    if truth:
        ap = ranked["ap"]
        order = sorted((q for q in order if ap[q] is not None), key=lambda q: (ap[q], q))
    examples = []
    for q in order[:count]:
        example = {"query": str(queries[q]), "match": str(database[indices[q, 0]]),
                   "score": round(scores[q, 0].item(), 4)}
        if truth:
            example["copy"] = int(indices[q, 0]) in truth.positives[q]
            example["originals"] = [str(database[i]) for i in sorted(truth.positives[q])]
        examples.append(example)
    return examples


def _peak_memory(device: torch.device) -> dict:
    """Peak resident memory (MB) of this process and of its largest child (data-loading worker); CUDA's peak."""
    import resource

    peaks = {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if device.type == "cuda":
        peaks["cuda"] = torch.cuda.max_memory_allocated(device) / 2**20
    return {name: round(value, 1) for name, value in peaks.items()}


def export(model: str, out: str | Path, *, format: str = "timm", checkpoint_key: str = "teacher",
           arch: str | None = None, img_size: int | None = None, allow_partial: bool = False,
           licence: str | None = None) -> dict:
    """Write ``model``'s backbone to the safetensors file ``out``: in timm names (``format="timm"``), which
    ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=out), num_classes=0)`` loads, or
    as an sslkit checkpoint of the backbone alone (``"sslkit"``). Returns what was written."""
    from sslkit.engine.checkpoint import export_backbone

    cfg.choice("checkpoint_key", checkpoint_key, ("teacher", "student"))
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out must name a .safetensors file, not {out}")
    loaded = load_backbone(str(model), checkpoint_key, img_size, arch=arch, allow_partial=allow_partial)
    metadata = export_backbone(loaded, out, format, licence)
    parameters = sum(p.numel() for p in loaded.module.parameters())
    return {"model": str(model), "description": loaded.description, "out": str(out), "format": format,
            "parameters": parameters, **metadata}


def attention(model: str, images: list[str | Path], out: str | Path, *, img_size: int = 480,
              threshold: float | None = None, checkpoint_key: str = "teacher", arch: str | None = None,
              pos_resample: str | None = None, allow_partial: bool = False, device: str = "auto",
              force: bool = False) -> dict:
    """Last-block CLS self-attention maps of a ViT for each image (files, or folders searched recursively).

    Writes, per image, ``out/<name>/``: ``img.png`` (the resized input), ``attn-head{j}.png``, ``attn-mean.png``,
    ``overlay.png`` and with ``threshold`` ``mask-th{t}-head{j}.png`` / ``mask-th{t}-mean.png``; returns (and
    writes to ``out/attention.json``) per image its size, patch grid and share of attention in the central region.
    ``out`` may hold an earlier output of this command; with ``force`` other files too, never overwritten.
    ``pos_resample`` (dino or timm) says how the position embedding is resampled to each image's patch grid;
    by default dino for official DINO weights, timm otherwise.
    """
    from sslkit.visualize import attention as viz

    cfg.choice("device", device, cfg.DEVICES)
    cfg.choice("checkpoint_key", checkpoint_key, ("teacher", "student"))
    if pos_resample is not None:
        cfg.choice("pos_resample", pos_resample, viz.POS_RESAMPLINGS)
    cfg.check_img_size("img_size", img_size)
    if threshold is not None and not 0 < threshold < 1:
        raise UsageError(f"--threshold must lie between 0 and 1, not {threshold}")
    files = image_files(images)
    names = dict(zip(files, unique_names(files)))
    out = OutputFolder(out, "attention", force)
    out.claim([f"{names[path]}/{png}" for path in files for png in viz.picture_names(0, threshold)]
              + ["attention.json"], files)  # what does not depend on the model, before it is loaded
    loaded = load_backbone(str(model), checkpoint_key, arch=arch, dynamic=True, allow_partial=allow_partial)
    if not is_vit(loaded.module):
        raise UsageError(f"{model} is a {loaded.arch}, not a vision transformer: it has no attention maps")
    pos_resample = viz.choose_pos_resample(loaded, pos_resample)
    torch_device = resolve_device(device)
    extractor = FeatureExtractor(loaded.module).to(torch_device)
    patch, prefix = patch_size(loaded.module), loaded.module.num_prefix_tokens
    pngs = viz.picture_names(loaded.module.blocks[-1].attn.num_heads, threshold)
    out.claim([f"{names[path]}/{png}" for path in files for png in pngs], files)
    results = []
    for path, picture in console.track(decoded(files), len(files), "attention maps"):
        image = viz.prepare_image(picture, img_size, patch)
        grid = (image.shape[-2] // patch, image.shape[-1] // patch)
        probs = viz.last_block_attention(extractor.backbone, extractor.normalize(image[None].to(torch_device)),
                                         pos_resample)
        maps = viz.cls_attention(probs, prefix, grid)[0].cpu()  # (heads, h, w)
        for png, array in zip(pngs, viz.pictures(image.permute(1, 2, 0).numpy(), maps, patch, threshold)):
            out.write(f"{names[path]}/{png}", partial(viz.save_png, array))
        results.append({"image": str(path), "out": str(out.root / names[path]), "size": list(image.shape[-2:]), "grid": list(grid),
                        "heads": len(maps), "central_mass": round(float(viz.central_mass(maps.mean(dim=0))), 4)})
    summary = {
        "model": str(model), "description": loaded.description, "img_size": img_size, "patch_size": patch,
        "pos_resample": pos_resample, "threshold": threshold, "images": results,
        "mean_central_mass": round(sum(r["central_mass"] for r in results) / len(results), 4),
    }
    out.write("attention.json", partial(_write_summary, summary))
    return summary


def reconstruct(model: str, images: list[str | Path], out: str | Path, *, mask_ratio: float | None = None,
                seed: int = 0, img_size: int | None = None, norm_pix: bool | None = None,
                device: str = "auto", force: bool = False) -> dict:
    """MAE reconstructions: per image ``out/<name>.png``, a strip original | masked | reconstruction |
    reconstruction with the visible patches; returns (and writes to ``out/reconstruct.json``) each image's
    masked-patch loss. The same ``seed`` masks the same patches. ``out`` may hold an earlier output of this
    command; with ``force`` other files too, never overwritten.
    """
    from sslkit.visualize import reconstruct as viz

    cfg.choice("device", device, cfg.DEVICES)
    cfg.check_img_size("img_size", img_size)
    cfg.check_seed(seed)
    files = image_files(images)
    names = dict(zip(files, unique_names(files)))
    out = OutputFolder(out, "reconstruct", force)
    out.claim([f"{names[path]}.png" for path in files] + ["reconstruct.json"], files)
    mae, description = viz.load_mae(str(model), norm_pix)
    mask_ratio = mae.options.mask_ratio if mask_ratio is None else mask_ratio
    img_size = img_size or mae.options.img_size
    mae.set_grid(img_size)  # fixed sin-cos position embeddings: exact at any multiple of the patch size
    mae.check_mask_ratio(mask_ratio)
    mae = mae.to(resolve_device(device)).eval()
    norm_pix = mae.options.norm_pix_loss
    labels = ["original", f"masked {mask_ratio:.0%}", "reconstruction", "reconstruction + visible"]
    footer = "norm-pix model: predictions shown with each true patch's mean and std" if norm_pix else \
        "pixel-loss model: predictions shown as predicted"
    results = []
    for path, picture in console.track(decoded(files), len(files), "reconstructions"):
        shown = viz.reconstruct(mae, viz.prepare_image(picture, img_size), mask_ratio, seed)
        panels = [shown[k] for k in ("original", "masked", "reconstruction", "pasted")]
        strip = viz.strip(panels, labels, footer)
        target = out.write(f"{names[path]}.png", partial(strip.save, format="PNG"))
        results.append({"image": str(path), "out": str(target), "masked_patches": int(shown["mask"].sum()),
                        "masked_mse": round(shown["loss"], 6)})
    summary = {
        "model": str(model), "description": description, "img_size": img_size, "patch_size": mae.patch,
        "mask_ratio": mask_ratio, "seed": seed, "norm_pix_loss": norm_pix, "images": results,
        "mean_masked_mse": round(sum(r["masked_mse"] for r in results) / len(results), 6),
    }
    out.write("reconstruct.json", partial(_write_summary, summary))
    return summary


def _write_summary(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, in order) under named folders."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = images_under(item)
            if not found:
                raise UsageError(f"no images in {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise UsageError(f"image not found: {item}")
    if not files:
        raise UsageError("no images given")
    return files


def unique_names(files: list[Path]) -> list[str]:
    """An output folder name per image: its file stem, numbered when stems repeat."""
    names, seen = [], {}
    for path in files:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}-{count + 1}")
    return names

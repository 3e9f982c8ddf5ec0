"""Pretraining a method: its settings resolved against the data, its model built (or warm-started), and the
trainer run, or, for a dry run, the plan of the run."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from sslkit import config as cfg
from sslkit.config import ContinueConfig, PretrainConfig, TrainConfig
from sslkit.data.datapath import training_data
from sslkit.data.folders import ImageFolder
from sslkit.data.loader import default_workers
from sslkit.engine import dryrun, rundir
from sslkit.engine.device import resolve_device
from sslkit.engine.rng import seed_everything
from sslkit.engine.trainer import Trainer
from sslkit.engine.warmstart import announce, read_weights, warm_start
from sslkit.methods import METHODS
from sslkit.visualize.curves import curves_drawn


def run_pretraining(method: str, data: Path, out: Path, values: dict, *, resume: bool, dry_run: bool) -> dict:
    """Pretrain ``method`` with the checked flat settings ``values`` (files and command line merged)."""
    refusal = None
    spec = METHODS[method]
    if resume:
        values = cfg.resumed_settings(out, values, method)
    else:
        inputs = [Path(data), *(Path(values[k]) for k in ("eval_train", "eval_val") if values.get(k))]
        refusal = dryrun.checked_new_run(out, values.get("force", False), tuple(inputs), dry_run)
    start = cfg.build(ContinueConfig, values)
    weights = None
    if start.continue_from and not resume:  # a resumed run restores its own checkpoint instead
        weights = read_weights(start.continue_from, start.checkpoint_key, values.get("arch"))
        values.setdefault("arch", weights.arch)
    dataset = ImageFolder(data)
    train, options = spec.resolve(cfg.build(TrainConfig, values), cfg.build(spec.config, values), len(dataset))
    seed_everything(train.seed)
    with torch.device("meta") if dry_run else nullcontext():  # a plan needs the model's views, not its weights
        model = spec.build(options)
    provenance = _continue(model, weights, start.allow_partial) if weights else {}
    source, decided = training_data(dataset, model.train_views, model.train_transform, train,
                                    resolve_device(train.device), saved=rundir.decided(out) if resume else None)
    run_config = {**PretrainConfig(method, str(data), str(out), train, options, start).to_dict(),
                  "num_images": len(dataset), "decided": decided}
    if dry_run:
        return dryrun.plan(f"pretrain {method}", train, run_config, len(source), out, model,
                           saved=dryrun.saved_metadata(out) if resume else None, refusal=refusal)
    evaluation = None
    if train.eval_train:
        from sslkit.evaluate.online import online_knn

        workers = default_workers() if train.workers is None else train.workers
        evaluation = online_knn(model, train.eval_train, train.eval_val, options.img_size, train.eval_every,
                                train.eval_k, workers)
    with curves_drawn(out):
        return Trainer(model, source, train, out, run_config, evaluation, provenance).fit(resume=resume)


def _continue(model, weights, allow_partial: bool) -> dict[str, str]:
    """--continue-from: the weights into the new run's model (a dry run's model on the meta device: only checked
    to fit), said in a few lines; returns their provenance for the checkpoints."""
    with warnings.catch_warnings():
        # loading into meta tensors is a no-op, which torch warns about for every tensor
        warnings.filterwarnings("ignore", message=".*non-meta parameter in the checkpoint to a meta parameter")
        report = warm_start(model, weights, allow_partial)
    announce(report)
    return {"continued_from": report["source"], **({"licence": weights.licence} if weights.licence else {})}

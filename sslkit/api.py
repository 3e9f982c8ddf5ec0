"""The Python API: the same verbs as the command line, for notebooks and scripts.

    import sslkit
    sslkit.pretrain("byol", "images/", out="runs/byol", arch="resnet18", img_size=64, epochs=10)
    sslkit.probe_knn("runs/byol", train="labelled/train", val="labelled/val", k=[10, 20])
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from sslkit import config as cfg
from sslkit.config import KNNConfig, PretrainConfig, TrainConfig
from sslkit.data.folders import ImageFolder
from sslkit.data.loader import default_workers
from sslkit.data.views import eval_transform
from sslkit.engine.checkpoint import load_backbone
from sslkit.engine.trainer import Trainer, resolve_device, resolve_precision
from sslkit.errors import UsageError
from sslkit.evaluate.features import extract_features
from sslkit.evaluate.knn import knn_classify
from sslkit.methods import METHODS


def pretrain(method: str, data: str | Path, out: str | Path, *, config: str | Path | None = None,
             resume: bool = False, **settings) -> dict:
    """Pretrain ``method`` on the images under ``data``; the run (config, metrics, checkpoints) goes to ``out``.

    ``settings`` are the command-line options by their Python names (``epochs``, ``batch_size``, ``arch``,
    ...); ``None`` values are ignored. With ``resume`` the run continues from ``out``'s last checkpoint.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    values = cfg.load_file(config) if config else {}
    values.update({k: v for k, v in settings.items() if v is not None})
    cfg.check_known(values, TrainConfig, spec.config)
    out = Path(out)
    if resume:
        values = _resume_settings(out, values)
    elif (out / "checkpoints" / "last.safetensors").exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume or choose another --out")
    train, options = spec.resolve(cfg.build(TrainConfig, values), cfg.build(spec.config, values))
    cfg.validate_train(train)
    _seed_everything(train.seed)
    model = spec.build(options)
    dataset = ImageFolder(data, transform=model.train_transform)
    run_config = PretrainConfig(method, str(data), str(out), train, options).to_dict()
    return Trainer(model, dataset, train, out, run_config).fit(resume=resume)


def _resume_settings(out: Path, given: dict) -> dict:
    """The run's saved settings; given settings may only change how it runs (device, workers, ...)."""
    config_file = out / "config.json"
    if not config_file.is_file():
        raise UsageError(f"--resume: {out} is not an sslkit run (no config.json)")
    saved = cfg.flatten(json.loads(config_file.read_text()))
    conflicts = [k for k, v in given.items() if k not in cfg.OPERATIONAL_FIELDS and _differs(v, saved.get(k))]
    if conflicts:
        shown = ", ".join(f"{k}={given[k]!r} (run has {saved.get(k)!r})" for k in conflicts)
        raise UsageError(f"--resume continues the run as it was configured; drop or fix: {shown}")
    return {**saved, **{k: v for k, v in given.items() if k in cfg.OPERATIONAL_FIELDS}}


def _differs(given, saved) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(saved, (list, tuple)):
        return list(given) != list(saved)
    return given != saved


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def probe_knn(model: str, train: str | Path, val: str | Path, **settings) -> dict:
    """Weighted k-NN accuracy of ``model``'s frozen features: ``train`` is the labelled memory, ``val`` the test set.

    Returns ``{"top1": .., "top5": .., "k": {k: {"top1": .., "top5": ..}}, ...}`` (percent; the top level is
    for the first k).
    """
    options = KNNConfig(model=str(model), train=str(train), val=str(val),
                        **{k: v for k, v in settings.items() if v is not None})
    cfg.validate_knn(options)
    device = resolve_device(options.device)
    _, amp_dtype = resolve_precision(options.precision, device)
    _seed_everything(options.seed)
    loaded = load_backbone(options.model, options.checkpoint_key, options.img_size)
    transform = eval_transform(loaded.img_size)
    train_set = ImageFolder(options.train, transform, labelled=True)
    val_set = ImageFolder(options.val, transform, labelled=True)
    val_labels = _to_train_classes(val_set, train_set)
    workers = default_workers() if options.workers is None else options.workers
    extract = dict(batch_size=options.batch_size, workers=workers, device=device, amp_dtype=amp_dtype)
    train_features, train_labels = extract_features(loaded.module, train_set, label="train", **extract)
    val_features, _ = extract_features(loaded.module, val_set, label="val", **extract)
    results = knn_classify(train_features, train_labels, val_features, val_labels, options.k,
                           options.temperature, len(train_set.classes), device)
    first = results[options.k[0]]
    return {
        "model": options.model,
        "description": loaded.description,
        "img_size": loaded.img_size,
        "temperature": options.temperature,
        "num_train": len(train_set),
        "num_val": len(val_set),
        "num_classes": len(train_set.classes),
        "top1": first["top1"],
        "top5": first["top5"],
        "k": {str(k): v for k, v in results.items()},
    }


def _to_train_classes(val_set: ImageFolder, train_set: ImageFolder) -> torch.Tensor:
    """Validation labels as indices of the training classes (matched by folder name)."""
    unknown = sorted(set(val_set.classes) - set(train_set.classes))
    if unknown:
        raise UsageError(f"validation classes missing from the training folder: {', '.join(unknown[:5])}")
    index = {name: i for i, name in enumerate(train_set.classes)}
    return torch.tensor([index[val_set.classes[y]] for y in val_set.labels])

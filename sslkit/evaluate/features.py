"""Features of a frozen backbone over a whole data set: batched, mixed precision, with progress, cached.

The cache holds one safetensors file per (model weights, feature recipe, transform, list of files): a second
probe of the same model on the same folders (k-NN, linear, several learning rates, ...) reads the features
instead of running the network again. The key hashes the model file's bytes, so retraining a run into the
same directory never returns stale features; the image files are keyed by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset, Subset

from sslkit import console
from sslkit.data.folders import ImageFolder, balanced_subset
from sslkit.data.loader import default_workers, make_loader
from sslkit.data.views import eval_transform
from sslkit.engine import distributed
from sslkit.engine.checkpoint import load_backbone, save_safetensors
from sslkit.engine.device import choose_precision, resolve_device
from sslkit.engine.rng import seed_everything
from sslkit.errors import UsageError
from sslkit.models.backbones import FeatureExtractor, FeatureRecipe, is_vit, patch_size

CACHE_ENV = "SSLKIT_CACHE_DIR"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sslkit" / "features")


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    label: str,
    recipe: FeatureRecipe | None = None,
    show_progress: bool = True,
    freeze: bool = True,
    shard: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 features (on the CPU, N x D, not normalised) and labels of every image of ``dataset``, in order.

    ``freeze`` puts the backbone in eval mode without gradients for good; False leaves a network that is still
    training as it is (the caller switches it to eval mode for the duration). With ``shard`` and torchrun,
    every process (each must call this) runs its share of the images and all get the whole result.
    """
    total, processes = len(dataset), distributed.context().world_size
    if shard and processes > 1 and total >= processes:
        own, own_labels = extract_features(backbone, Subset(dataset, distributed.shard_indices(total)), batch_size,
                                           workers, device, amp_dtype, label, recipe, show_progress, freeze)
        return distributed.gather_strided(own, total, device), distributed.gather_strided(own_labels, total, device)
    features, labels, filled = None, torch.empty(len(dataset), dtype=torch.long), 0
    for batch, targets in feature_batches(backbone, dataset, batch_size, workers, device, amp_dtype, label, recipe,
                                          show_progress, freeze):
        if features is None:
            features = torch.empty(len(dataset), batch.shape[1])
        features[filled : filled + len(batch)] = batch
        labels[filled : filled + len(batch)] = targets
        filled += len(batch)
    return features, labels


def feature_batches(backbone: nn.Module, dataset, batch_size: int, workers: int, device: torch.device,
                    amp_dtype: torch.dtype | None, label: str, recipe: FeatureRecipe | None = None,
                    show_progress: bool = True, freeze: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(features, labels)`` of one batch of ``dataset`` at a time, in order, the features fp32 on the CPU.

    Nothing is kept from one batch to the next, so a consumer that writes each batch away (embed --tokens
    patch) holds one batch at a time however large the data set. Autocast is entered per batch, never across
    a ``yield``, where it would also hold for the consumer's code.
    """
    extractor = FeatureExtractor(backbone, recipe, freeze).to(device)
    loader = make_loader(dataset, batch_size, workers, device, shuffle=False)

    def features_of(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            return extractor(images.to(device, non_blocking=True)).cpu()

    with _bar(label, len(dataset), show_progress) as (bar, task):
        for images, targets in loader:
            yield features_of(images), targets  # not bound here: the consumer holds the only reference
            bar.update(task, advance=len(targets))


def cached_features(cache_dir: Path | None, model_id: str, recipe: FeatureRecipe, transform, dataset,
                    **extract) -> tuple[torch.Tensor, torch.Tensor]:
    """``extract_features`` of ``dataset`` (an sslkit ImageFolder), read from ``cache_dir`` when it holds them.

    ``model_id`` identifies the weights (see ``model_fingerprint``); ``transform`` is the evaluation transform,
    keyed by its description. ``cache_dir`` None computes without caching.
    """
    if cache_dir is None:
        return extract_features(dataset=dataset, recipe=recipe, **extract)
    files = [(str(f.resolve()), *_stat(f)) for f in dataset.files]
    key = {"model": model_id, "recipe": repr(recipe), "transform": repr(transform), "files": files,
           "labels": dataset.labels, "precision": str(extract.get("amp_dtype"))}
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{digest}.safetensors"
    if path.is_file():
        try:
            cached = load_file(path)
            console.info(f"features {extract.get('label', '')}: read from the cache ({path})")
            return cached["features"], cached["labels"]
        except Exception:  # an unreadable cache entry is recomputed, never trusted
            console.warn(f"ignoring an unreadable feature cache file {path}")
    features, labels = extract_features(dataset=dataset, recipe=recipe, **extract)
    metadata = {"model": model_id, "recipe": repr(recipe), "transform": repr(transform), "root": str(dataset.root),
                "files": json.dumps([f[0] for f in files])}
    save_safetensors(path, {"features": features.contiguous(), "labels": labels}, metadata, f".{os.getpid()}.tmp")
    return features, labels


def model_fingerprint(source: str, extra: str = "") -> str:
    """What identifies a model's weights: the SHA-256 of its file, or the spec of a ``timm:`` random init."""
    path = Path(source)
    if not path.is_file():
        return f"{source}|{extra}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}|{extra}"


class FeatureSet(Dataset):
    """Precomputed features as a training set: items ``(feature, label)``, indexed like an ImageFolder."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item  # (index, augmentation seed): nothing to augment
        return self.features[index], self.labels[index]


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
        blocks = _blocks(options.n_last_blocks, default_blocks, options.tokens, self.loaded.module)
        self.recipe = FeatureRecipe(options.pool, blocks, options.avgpool_patchtokens, options.gem_p, options.tokens)
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
        train_set = ImageFolder(self.options.train, self.transform, labelled=True)
        if self.options.fraction < 1:  # the images finetune --fraction with the same --seed trains on
            train_set.keep(balanced_subset(train_set.labels, self.options.fraction, self.options.seed))
        val_set = ImageFolder(self.options.val, self.transform, labelled=True)
        return train_set, val_set, val_set.labels_in(train_set)

    def features(self, dataset: ImageFolder, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        return cached_features(self.cache_dir, self.model_id, self.recipe, self.transform, dataset, label=label,
                               backbone=self.loaded.module, batch_size=self.options.batch_size, workers=self.workers,
                               device=self.device, amp_dtype=self.amp_dtype)

    def batches(self, dataset: ImageFolder, label: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The features one batch at a time (``feature_batches``), never cached: embed --tokens patch."""
        return feature_batches(self.loaded.module, dataset, self.options.batch_size, self.workers, self.device,
                               self.amp_dtype, label, self.recipe)

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


def _blocks(given: int | None, default: int, tokens: str | None, backbone: nn.Module) -> int:
    """The blocks whose CLS tokens the features take: as given, else the evaluation's default for ViTs (DINO's
    linear probe: 4). --tokens mean and patch take the last block's patch tokens alone."""
    if given:
        return given
    return default if is_vit(backbone) and tokens not in ("mean", "patch") else 1


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


class _bar:
    def __init__(self, label: str, total: int, show: bool):
        self.progress = Progress(
            TextColumn(f"features {label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console.stderr, disable=console.is_quiet() or not show, transient=True,
        )
        self.task = self.progress.add_task(label, total=total)

    def __enter__(self):
        self.progress.start()
        return self.progress, self.task

    def __exit__(self, *exc):
        self.progress.stop()

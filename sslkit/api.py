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

from sslkit import config as cfg, console
from sslkit.config import KNNConfig, PretrainConfig, TrainConfig
from sslkit.data.folders import ImageFolder, images_under, load_rgb
from sslkit.data.loader import default_workers
from sslkit.data.views import eval_transform
from sslkit.engine.checkpoint import load_backbone
from sslkit.engine.trainer import Trainer, resolve_device, resolve_precision
from sslkit.errors import UsageError
from sslkit.evaluate.features import extract_features
from sslkit.evaluate.knn import knn_classify
from sslkit.methods import METHODS
from sslkit.models.backbones import FeatureExtractor, is_vit, patch_size


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
    dataset = ImageFolder(data)
    train, options = spec.resolve(cfg.build(TrainConfig, values), cfg.build(spec.config, values), len(dataset))
    cfg.validate_train(train)
    _seed_everything(train.seed)
    model = spec.build(options)
    dataset.transform = model.train_transform
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
    loaded = load_backbone(options.model, options.checkpoint_key, options.img_size, arch=options.arch)
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


def attention(model: str, images: list[str | Path], out: str | Path, *, img_size: int = 480,
              threshold: float | None = None, checkpoint_key: str = "teacher", arch: str | None = None,
              device: str = "auto") -> dict:
    """Last-block CLS self-attention maps of a ViT for each image (files, or folders searched recursively).

    Writes, per image, ``out/<name>/``: ``img.png`` (the resized input), ``attn-head{j}.png``, ``attn-mean.png``,
    ``overlay.png`` and with ``threshold`` ``mask-th{t}-head{j}.png`` / ``mask-th{t}-mean.png``; returns (and
    writes to ``out/attention.json``) per image its size, patch grid and share of attention in the central region.
    """
    from sslkit.visualize import attention as viz

    cfg.choice("device", device, cfg.DEVICES)
    cfg.choice("checkpoint_key", checkpoint_key, ("teacher", "student"))
    if img_size <= 0:
        raise UsageError(f"--img-size must be positive, not {img_size}")
    if threshold is not None and not 0 < threshold < 1:
        raise UsageError(f"--threshold must lie between 0 and 1, not {threshold}")
    files = image_files(images)
    loaded = load_backbone(str(model), checkpoint_key, arch=arch, dynamic=True)
    if not is_vit(loaded.module):
        raise UsageError(f"{model} is a {loaded.arch}, not a vision transformer: it has no attention maps")
    torch_device = resolve_device(device)
    extractor = FeatureExtractor(loaded.module).to(torch_device)
    patch, prefix = patch_size(loaded.module), loaded.module.num_prefix_tokens
    out = Path(out)
    results = []
    for path, name in console.track(zip(files, unique_names(files)), len(files), "attention maps"):
        image = viz.prepare_image(load_rgb(path), img_size, patch)
        grid = (image.shape[-2] // patch, image.shape[-1] // patch)
        probs = viz.last_block_attention(extractor.backbone, extractor.normalize(image[None].to(torch_device)))
        maps = viz.cls_attention(probs, prefix, grid)[0].cpu()  # (heads, h, w)
        mean = maps.mean(dim=0)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        pixels = image.permute(1, 2, 0).numpy()
        viz.save_png(pixels, folder / "img.png")
        for head, values in enumerate(maps):
            viz.save_png(viz.heat_map(values, patch), folder / f"attn-head{head}.png")
        viz.save_png(viz.heat_map(mean, patch), folder / "attn-mean.png")
        viz.save_png(viz.overlay(pixels, viz.heat_map(mean, patch)), folder / "overlay.png")
        if threshold is not None:
            masks = viz.threshold_mask(torch.cat([maps, mean[None]]), threshold)
            for head, mask in enumerate(masks[:-1]):
                viz.save_png(viz.masked(pixels, mask, patch), folder / f"mask-th{threshold:g}-head{head}.png")
            viz.save_png(viz.masked(pixels, masks[-1], patch), folder / f"mask-th{threshold:g}-mean.png")
        results.append({"image": str(path), "out": str(folder), "size": list(image.shape[-2:]), "grid": list(grid),
                        "heads": len(maps), "central_mass": round(float(viz.central_mass(mean)), 4)})
    summary = {
        "model": str(model), "description": loaded.description, "img_size": img_size, "patch_size": patch,
        "threshold": threshold, "images": results,
        "mean_central_mass": round(sum(r["central_mass"] for r in results) / len(results), 4),
    }
    (out / "attention.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def reconstruct(model: str, images: list[str | Path], out: str | Path, *, mask_ratio: float | None = None,
                seed: int = 0, img_size: int | None = None, norm_pix: bool | None = None,
                device: str = "auto") -> dict:
    """MAE reconstructions: per image ``out/<name>.png``, a strip original | masked | reconstruction |
    reconstruction with the visible patches; returns (and writes to ``out/reconstruct.json``) each image's
    masked-patch loss. The same ``seed`` masks the same patches.
    """
    from sslkit.visualize import reconstruct as viz

    cfg.choice("device", device, cfg.DEVICES)
    if img_size is not None and img_size <= 0:
        raise UsageError(f"--img-size must be positive, not {img_size}")
    files = image_files(images)
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, name in console.track(zip(files, unique_names(files)), len(files), "reconstructions"):
        shown = viz.reconstruct(mae, viz.prepare_image(load_rgb(path), img_size), mask_ratio, seed)
        panels = [shown[k] for k in ("original", "masked", "reconstruction", "pasted")]
        target = out / f"{name}.png"
        viz.strip(panels, labels, footer).save(target)
        results.append({"image": str(path), "out": str(target), "masked_patches": int(shown["mask"].sum()),
                        "masked_mse": round(shown["loss"], 6)})
    summary = {
        "model": str(model), "description": description, "img_size": img_size, "patch_size": mae.patch,
        "mask_ratio": mask_ratio, "seed": seed, "norm_pix_loss": norm_pix, "images": results,
        "mean_masked_mse": round(sum(r["masked_mse"] for r in results) / len(results), 6),
    }
    (out / "reconstruct.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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

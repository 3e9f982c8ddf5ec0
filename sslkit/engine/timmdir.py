"""The Hugging Face / timm model folder: ``config.json`` (timm's own, written by timm's ``save_config_for_hf``),
``model.safetensors`` and a ``README.md`` model card. ``timm.create_model("local-dir:DIR", pretrained=True)``
loads such a folder, ``hf upload`` publishes it as it is, and every sslkit command takes it (or
``local-dir:DIR``) as MODEL.

sslkit's own provenance (method, step, source, licence, release, position-embedding resampling) travels under
the ``sslkit`` key of ``config.json``, which timm ignores. A folder is read with the same distrust as any
other file: its JSON is bounded, only the timm arguments sslkit itself passes are accepted, and its weights
are safetensors (or a weights-only ``pytorch_model.bin``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch

from sslkit import __version__, console
from sslkit.engine import foreign
from sslkit.errors import UsageError
from sslkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
TORCH_WEIGHTS = "pytorch_model.bin"
PREFIX = "local-dir:"
MAX_CONFIG_BYTES = 1 << 20
POOLS = ("token", "avg", "avgmax", "max", "map", "")
# the timm arguments sslkit passes when it builds a backbone: anything else would build another model
MODEL_ARGS = ("num_classes", "img_size", "global_pool", "in_chans", "dynamic_img_size")
HF_LICENCES = {"Apache-2.0": "apache-2.0", "CC-BY-NC-4.0": "cc-by-nc-4.0", "DINOv3 License": "dinov3-license"}


def folder_of(spec: str) -> Path | None:
    """The folder ``spec`` names when it is a timm model folder (``local-dir:DIR``, or a folder holding
    config.json and no sslkit run's checkpoints), else None."""
    path = Path(spec[len(PREFIX):] if spec.startswith(PREFIX) else spec)
    found = path.is_dir() and (path / CONFIG).is_file() and not (path / "checkpoints").exists()
    if spec.startswith(PREFIX) and not found:
        raise UsageError(f"{spec}: {path} is not a timm model folder (config.json and {WEIGHTS})")
    return path if found else None


@dataclass
class TimmFolder:
    """What a model folder holds, checked."""

    folder: Path
    weights: Path  # model.safetensors or pytorch_model.bin
    arch: str
    model_args: dict  # the timm arguments to build it with (sslkit passes num_classes=0 itself)
    img_size: int | None  # the size it was exported for (model_args, else pretrained_cfg's input_size)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: dict = field(default_factory=dict)  # config.json's sslkit section


def read_folder(folder: Path) -> TimmFolder:
    """``folder``'s config, checked, and where its weights are."""
    config = _config(folder)
    arch = config.get("architecture")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise UsageError(f"{folder / CONFIG}: architecture {str(arch)[:60]!r} is not a timm model")
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise UsageError(f"{folder / CONFIG}: model_args is not an object")
    unknown = sorted(set(args) - set(MODEL_ARGS))
    if unknown:
        raise UsageError(f"{folder / CONFIG}: model_args {', '.join(unknown[:5])} would build another model than "
                         f"sslkit builds (it passes {', '.join(MODEL_ARGS)})")
    pretrained = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    input_size = pretrained.get("input_size")
    img_size = _img_size(args.get("img_size") or (input_size[1:] if isinstance(input_size, list) else None), folder)
    if args.get("in_chans", 3) != 3 or args.get("global_pool", "token") not in POOLS \
            or not isinstance(args.get("dynamic_img_size", False), bool):
        raise UsageError(f"{folder / CONFIG}: model_args in_chans, global_pool or dynamic_img_size is not one sslkit "
                         "takes (3 channels, a timm pooling, true or false)")
    mean, std = pretrained.get("mean", IMAGENET_MEAN), pretrained.get("std", IMAGENET_STD)
    if not _three_numbers(mean) or not _three_numbers(std) or min(std) <= 0:
        raise UsageError(f"{folder / CONFIG}: pretrained_cfg mean and std are not three numbers each")
    weights = folder / WEIGHTS if (folder / WEIGHTS).is_file() else folder / TORCH_WEIGHTS
    if not weights.is_file():
        raise UsageError(f"{folder} holds no {WEIGHTS} (nor {TORCH_WEIGHTS})")
    kept = {k: v for k, v in args.items() if k in ("global_pool", "dynamic_img_size")}
    provenance = config.get("sslkit") if isinstance(config.get("sslkit"), dict) else {}
    # shown on the terminal (a description, a licence): one printable line each, never an escape sequence
    shown = {k: console.printable(str(v))[:1000] for k, v in provenance.items() if isinstance(v, (str, int, float))}
    return TimmFolder(folder, weights, arch, kept, img_size, tuple(mean), tuple(std), shown)


def _config(folder: Path) -> dict:
    path = folder / CONFIG
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UsageError(f"{path} is larger than {MAX_CONFIG_BYTES // 1024} KB: not a model config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise UsageError(f"{path} is not readable JSON ({str(error).splitlines()[0][:80]})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a JSON object")
    return config


def _img_size(value, folder: Path) -> int | None:
    if value is None:
        return None
    sides = value if isinstance(value, list) else [value]
    if len(sides) not in (1, 2) or len(set(map(str, sides))) != 1:
        raise UsageError(f"{folder / CONFIG}: its image size {str(value)[:40]} is not one square size")
    return foreign.plausible_img_size(sides[0], folder / CONFIG, "its image size")


def _three_numbers(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and \
        all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


# ---------------------------------------------------------------- writing


def hf_licence(licence: str | None) -> str | None:
    """The Hugging Face licence id of a licence sslkit records, None when it is not one of them."""
    for name, tag in HF_LICENCES.items():
        if licence and licence.startswith(name):
            return tag
    return None


def timm_config(module: torch.nn.Module, img_size: int, mean, std, licence: str | None, provenance: dict) -> dict:
    """timm's config.json for ``module`` (timm's ``save_config_for_hf``: architecture, model_args,
    num_features, pretrained_cfg), with sslkit's input size, centre crop, mean / std and licence in place of the
    defaults of a timm tag these weights are not, and sslkit's provenance under ``sslkit``."""
    from timm.models._hub import save_config_for_hf

    with tempfile.TemporaryDirectory() as scratch:
        save_config_for_hf(module, str(Path(scratch) / CONFIG))
        config = json.loads((Path(scratch) / CONFIG).read_text(encoding="utf-8"))
    pretrained = config["pretrained_cfg"]
    for key in ("tag", "license", "hf_hub_id", "url"):
        pretrained.pop(key, None)
    # sslkit's evaluation transform: resize the short side to img_size * 256/224 (bicubic), centre-crop img_size
    pretrained.update(input_size=[3, img_size, img_size], crop_pct=0.875, crop_mode="center",
                      interpolation="bicubic", mean=list(mean), std=list(std))
    if hf_licence(licence):
        pretrained["license"] = hf_licence(licence)
    config["sslkit"] = {**provenance, "sslkit_version": __version__}
    return config


def model_card(config: dict, run: dict) -> str:
    """README.md: a Hugging Face model card (YAML front matter for the Hub) saying what the weights are, how
    they were trained (method, data size, epochs, from the run) and what the run measured (its k-NN)."""
    sslkit, arch = config["sslkit"], config["architecture"]
    licence = hf_licence(sslkit.get("licence"))
    front = ["---", "library_name: timm", "pipeline_tag: image-feature-extraction",
             "tags: [image-feature-extraction, timm, sslkit, self-supervised]"]
    if licence in ("apache-2.0", "cc-by-nc-4.0"):
        front.append(f"license: {licence}")
    elif licence:
        front += ["license: other", f"license_name: {licence}"]
    method = sslkit.get("method", "none")
    trained = f"pretrained with sslkit's `{method}`" if method != "none" else "imported by sslkit"
    lines = [*front, "---", "", f"# {arch}", "",
             f"A {config['num_features']}-dimensional image feature extractor, {trained}."]
    if sslkit.get("release"):
        lines.append(f"The weights are the released {sslkit['release']}.")
    lines += ["", "## Use", "", "```python", "import timm", "",
              'model = timm.create_model("local-dir:THIS_FOLDER", pretrained=True)  # or "hf-hub:USER/NAME"',
              "model.eval()", "config = timm.data.resolve_data_config(model=model)",
              "transform = timm.data.create_transform(**config)  # then features = model(transform(image)[None])",
              "```", "", "With sslkit: `sslkit probe knn THIS_FOLDER --train DIR --val DIR`.", "",
              "## Training", "", "| | |", "|---|---|"]
    rows = {"method": method, "images": run.get("num_images"), "epochs": run.get("epochs"),
            "steps": sslkit.get("step") or None, "image size": config["pretrained_cfg"]["input_size"][-1],
            "data": run.get("data"), "started from": run.get("continued_from"), "source": sslkit.get("source")}
    lines += [f"| {name} | {value} |" for name, value in rows.items() if value not in (None, "")]
    if run.get("knn"):
        knn = run["knn"]
        lines += ["", "## Evaluation", "",
                  f"k-NN (k = {knn['k']}, weighted vote, cosine) of the frozen features on `{knn['val']}` with "
                  f"`{knn['train']}` as memory, measured during the run at epoch {knn['epoch']}: top-1 "
                  f"{knn['top1']:.1f} %, top-5 {knn['top5']:.1f} %."]
    lines += ["", "## Licence", "", sslkit.get("licence") or "Not recorded: check the terms of the weights' source.",
              "", f"Written by sslkit {__version__}.", ""]
    return "\n".join(lines)


def run_summary(config: dict, continued_from: str | None, records: list[dict]) -> dict:
    """What the card says of the run the weights came from: its data, size and epochs (the run's ``config``),
    where it started, and the last k-NN it measured (its metrics ``records``)."""
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    summary = {"data": config.get("data"), "num_images": config.get("num_images"), "epochs": train.get("epochs"),
               "continued_from": continued_from}
    knn = [record for record in records if "knn_top1" in record]
    if knn and train.get("eval_val"):
        last = knn[-1]
        summary["knn"] = {"k": train.get("eval_k", 20), "train": train.get("eval_train"), "val": train["eval_val"],
                          "epoch": last.get("epoch"), "top1": last["knn_top1"], "top5": last.get("knn_top5", 0.0)}
    return summary

"""``pretrain --continue-from MODEL``: a new run that starts from imported weights.

Unlike ``--resume`` (the same run, with its optimizer, schedules and step) the run starts at step 0 with
fresh schedules. Backbones always come from the file (strictly, unless ``allow_partial``); heads, centre and
decoder come along when the file is the same method's (an sslkit run, DINO's training checkpoint, MAE's
``_full`` / ``visualize`` files) and fit the run's settings. Everything else starts as initialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sslkit import console
from sslkit.engine import checkpoint as ckpt, foreign, timmdir
from sslkit.errors import UsageError
from sslkit.models.backbones import is_vit
from sslkit.models.posembed import resampled


@dataclass
class Weights:
    """What a file offers a new run: backbones in timm names and the method's other tensors in its names."""

    source: Path
    arch: str
    chosen: dict[str, torch.Tensor]  # the backbone --checkpoint-key picks
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    method: str | None = None  # the method ``extras`` belong to
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    licence: str | None = None
    pos_resample: str = "timm"  # how the weights' position embedding meets the run's grid: as they were trained


def read_weights(spec: str, checkpoint_key: str = "teacher", arch: str | None = None) -> Weights:
    """The weights of ``spec``: an sslkit run or checkpoint, an export, or another tool's file."""
    if spec.startswith(("timm:", "pixels:")):
        raise UsageError(f"--continue-from takes a weights file or a run directory, not {spec}")
    folder = timmdir.folder_of(spec)
    if folder is not None:  # a Hugging Face / timm model folder: a backbone alone
        described, found = ckpt.read_timm_folder(folder)
        metadata, state = ckpt.timm_folder_metadata(described), found.state
        return Weights(described.weights, arch or described.arch, state, state, state,
                       licence=metadata.get("licence"),
                       pos_resample=ckpt.pos_resample(found.release, metadata.get("licence"), folder, metadata))
    path = ckpt.model_path(spec)
    if path.suffix in foreign.SUFFIXES:
        return _foreign_weights(path, checkpoint_key, arch)
    metadata = ckpt.raw_metadata(path)
    if metadata.get("format") != ckpt.FORMAT:  # an export in timm names, timm's own file, a release as safetensors
        found = foreign.backbone(ckpt.read_tensors(path), checkpoint_key, path)
        state, release = found.state, found.release
        licence = release.licence if release else metadata.get("licence")
        arch = arch or metadata.get("arch") or (release.arch if release else foreign.infer_arch(state, path))
        return Weights(path, arch, state, state, state, licence=licence,
                       pos_resample=ckpt.pos_resample(release, licence, path, metadata))
    model = ckpt.read_tensors(path, "model.")  # once: the backbones are slices of it

    def backbone(key: str) -> dict[str, torch.Tensor]:
        prefix = ckpt.backbone_network(path, metadata, key)[1] + "."
        return {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}

    imported = metadata.get("method") == "none"  # an export of imported weights keeps their resampling
    how = ckpt.pos_resample(None, metadata.get("licence") if imported else None, path, metadata)
    return Weights(path, arch or metadata["arch"], backbone(checkpoint_key), backbone("student"),
                   backbone("teacher"), metadata["method"], model, metadata.get("licence"), how)


def _foreign_weights(path: Path, checkpoint_key: str, arch: str | None) -> Weights:
    data = foreign.read_torch_file(path)
    found = foreign.backbone(data, checkpoint_key, path)
    chosen, release = found.state, found.release
    licence = release.licence if release else foreign.licence(data)
    weights = Weights(path, arch or (release.arch if release else foreign.infer_arch(chosen, path)), chosen, chosen,
                      chosen, licence=licence, pos_resample=ckpt.pos_resample(release, licence, path, {}))
    if foreign.is_dino_training(data):
        weights.student = foreign.backbone_state(data, "student", path)
        weights.teacher = foreign.backbone_state(data, "teacher", path)
        weights.method = "dino"
        for name, prefix in (("student", "head"), ("teacher", "teacher_head")):
            heads = {k.removeprefix("module."): v for k, v in data[name].items()}
            weights.extras.update({prefix + k[len("head"):]: v for k, v in heads.items() if k.startswith("head.")})
        center = data.get("dino_loss", {}).get("center") if isinstance(data.get("dino_loss"), dict) else None
        if isinstance(center, torch.Tensor):
            weights.extras["center"] = center
    elif foreign.is_mae(data):
        weights.method = "mae"
        weights.extras = {k: v for k, v in foreign.mae_state(data).items() if k.startswith(foreign.MAE_DECODER)}
    return weights


def warm_start(method: nn.Module, weights: Weights, allow_partial: bool = False) -> dict:
    """Load ``weights`` into ``method`` (a method module just built); returns what was loaded and what not."""
    backbones = method.backbones  # role (teacher, student, encoder) -> attr
    same_method = weights.method == method.name
    target = method.state_dict()
    fixed = {name: target[name].clone() for name in method.fixed_tensors}
    for role, attr in backbones.items():
        state = weights.chosen
        if same_method:
            state = weights.teacher if role == "teacher" else weights.student
        load_backbone_into(getattr(method, attr), state, weights.source, allow_partial, weights.pos_resample)
    with torch.no_grad():
        for name, value in fixed.items():  # functions of the run's patch grid, whatever the file holds
            target[name].copy_(value)
    groups: dict[str, list[str]] = {}
    for name in target:
        if name not in fixed:
            groups.setdefault(name.split(".")[0], []).append(name)
    report = {"source": str(weights.source), "loaded": sorted(set(backbones.values())), "fresh": [],
              "not_fitting": []}
    extras = weights.extras if same_method else {}
    for group, names in groups.items():
        if group in backbones.values():
            continue
        offered = [name for name in names if name in extras]
        if not offered:
            report["fresh"].append(group)
        elif len(offered) == len(names) and all(extras[n].shape == target[n].shape for n in names):
            with torch.no_grad():
                for name in names:
                    target[name].copy_(extras[name])
            report["loaded"].append(group)
        else:
            report["not_fitting"].append(group)
    if weights.licence:
        report["licence"] = weights.licence
    return report


def load_backbone_into(module: nn.Module, state: dict[str, torch.Tensor], source: Path, allow_partial: bool,
                       pos_resample: str = "timm") -> None:
    """A backbone state dict into a run's backbone, a ViT's position embedding resampled to the run's grid the
    way the weights were trained (:func:`sslkit.engine.checkpoint.pos_resample`)."""
    own = module.state_dict()
    if is_vit(module) and "pos_embed" in state and "pos_embed" in own and \
            state["pos_embed"].shape != own["pos_embed"].shape:
        grid = tuple(module.patch_embed.grid_size)
        state = {**state, "pos_embed": resampled(module, state["pos_embed"], grid, pos_resample)}
    ckpt.load_weights(module, state, source, allow_partial)


def announce(report: dict) -> None:
    console.info(f"continuing from {report['source']}: loaded {', '.join(report['loaded'])}"
                 + (f"; initialised afresh: {', '.join(report['fresh'])}" if report["fresh"] else ""))
    if report["not_fitting"]:
        console.warn(f"--continue-from: {', '.join(report['not_fitting'])} of {report['source']} do not fit this "
                     "run's settings (e.g. another --out-dim or decoder size) and start afresh")
    if report.get("licence"):
        console.info(f"the imported weights are under {report['licence']}; the run's checkpoints carry it")

"""What the engine needs from a method (BYOL, DINO, MAE, a supervised head): a protocol, no base class.

The trainer, the dry run, warm starts (--continue-from), the online k-NN and checkpoints use exactly the
members of ``Method``; the hooks in ``HOOKS`` are optional: a method defines only those it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

from sslkit.models.backbones import patch_size


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, fp32, still attached to the graph
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, averaged per log window


@dataclass
class Progress:
    step: int  # index of the current optimizer step, from 0
    total_steps: int
    epoch: int
    steps_per_epoch: int


class Method(Protocol):
    name: str  # its registry name, recorded in config.json and every checkpoint
    options: Any  # its frozen settings; pretraining methods' have ``arch`` and ``img_size``
    backbone: nn.Module  # the online / student backbone: what the online k-NN scores
    backbones: Mapping[str, str]  # role (teacher, student, encoder) -> its submodule, for files and warm starts
    channels_last: bool  # run the network (and its inputs) in NHWC
    fixed_tensors: tuple[str, ...]  # state --continue-from leaves as built (e.g. MAE's fixed position embeddings)
    train_views: tuple  # its views of an image (sslkit.data.views.View): what the decoded store crops on device
    train_transform: Callable  # the loader's per-image transform of the same views

    def training_step(self, batch: Any) -> StepOutput:
        """Loss of one (micro-)batch already on the device (uint8 images, labels)."""

    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimizer, with ``wd_scale`` and ``lars_exclude`` keys."""


class Hooks(Protocol):
    """The optional members; the engine calls them through ``hook``."""

    def start_step(self, progress: Progress) -> None:
        """Before the forward passes of an optimizer step (per-epoch schedules such as DINO's teacher temperature)."""

    def before_optimizer_step(self, progress: Progress) -> None:
        """After backward and clipping, before the optimizer (e.g. drop the gradients of a frozen layer)."""

    def after_optimizer_step(self, progress: Progress) -> dict[str, float]:
        """Per-step updates after the optimizer (EMA teachers, centres); returns values to log."""

    def scheduled(self, progress: Progress) -> dict[str, float]:
        """The method's scheduled values at this step (EMA momentum, teacher temperature), without side effects:
        what ``after_optimizer_step`` logs, and what ``--dry-run`` plots."""

    def checkpoint_metadata(self) -> dict[str, str]:
        """What its checkpoints record beyond ``metadata``'s default (a supervised head's classes, ...)."""


HOOKS = ("start_step", "before_optimizer_step", "after_optimizer_step", "scheduled", "checkpoint_metadata")


def hook(method, name: str) -> Callable:
    """The method's hook ``name``, or one that does nothing (and returns nothing to log)."""
    assert name in HOOKS, name
    return getattr(method, name, None) or _nothing


def _nothing(*args) -> dict:
    return {}


def metadata(method) -> dict[str, str]:
    """A checkpoint's description of the method's network: arch, img_size, patch_size and ``backbones`` (JSON:
    safetensors metadata are strings), then what the method's own ``checkpoint_metadata`` adds or replaces."""
    described = {}
    options = getattr(method, "options", None)
    if hasattr(options, "arch"):
        described = {"arch": options.arch, "img_size": str(options.img_size),
                     "patch_size": str(patch_size(method.backbone) or "")}
    if getattr(method, "backbones", None):
        described["backbones"] = json.dumps(dict(method.backbones))
    return {**described, **hook(method, "checkpoint_metadata")()}

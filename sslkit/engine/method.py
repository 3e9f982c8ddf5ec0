"""What the trainer needs from a method (BYOL, DINO, MAE, a supervised head): a small protocol, no base class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


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
    name: str
    backbone: nn.Module  # the online / student backbone
    channels_last: bool  # run the network (and its inputs) in NHWC

    def training_step(self, batch: Any) -> StepOutput:
        """Loss of one (micro-)batch already on the device (uint8 images, labels)."""

    def start_step(self, progress: Progress) -> None:
        """Before the forward passes of an optimizer step (per-epoch schedules such as DINO's teacher temperature)."""

    def before_optimizer_step(self, progress: Progress) -> None:
        """After backward and clipping, before the optimizer (e.g. drop the gradients of a frozen layer)."""

    def after_optimizer_step(self, progress: Progress) -> dict[str, float]:
        """Per-step updates after the optimizer (EMA teachers, centres); returns values to log."""

    def scheduled(self, progress: Progress) -> dict[str, float]:
        """The method's scheduled values at this step (EMA momentum, teacher temperature), without side effects:
        what ``after_optimizer_step`` logs, and what ``--dry-run`` plots."""

    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimizer, with ``wd_scale`` and ``lars_exclude`` keys."""

    def checkpoint_metadata(self) -> dict[str, str]:
        """arch, img_size, patch_size and ``backbones`` (JSON: which state prefix is teacher / student)."""

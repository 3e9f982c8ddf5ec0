"""Evaluations during training (online k-NN, a probe's or fine-tuning's val accuracy), in the trainer's context.

The trainer resolves the device and the precision once per run; an evaluation gets both (``EvalContext``), so
it scores the model where, and in the precision in which, the run trains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sslkit.engine.device import Precision


@dataclass(frozen=True)
class EvalContext:
    """What the trainer resolved for the run: the device its model is on and the precision it computes in."""

    device: torch.device
    precision: Precision

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32), for code that opens its own autocast (``extract_features``)."""
        return self.precision.dtype

    def autocast(self):
        """The run's autocast on its device (a no-op in fp32)."""
        return self.precision.autocast(self.device)


@dataclass
class Evaluation:
    """Scores computed after every ``every`` epochs and after the last: online k-NN, a probe's val accuracy.

    ``score(context)`` runs with the model in eval mode, without gradients and under the run's autocast, and
    gets the run's ``EvalContext``. With
    ``best`` (a key of the scores), ``checkpoints/best.safetensors`` keeps the state at which that score was
    highest. With torchrun, a ``sharded`` score runs in every process (it shares out the work and returns the
    same scores in all); otherwise the first process scores while the others wait.
    """

    score: Callable[..., dict[str, float]]
    every: int = 1
    best: str | None = None
    sharded: bool = False

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether it runs after ``epoch`` (0-based) of a run of ``epochs``."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs

    def run(self, model: nn.Module, context: EvalContext) -> dict[str, float]:
        """The scores, with ``model`` in eval mode meanwhile (each module's own mode is restored afterwards)."""
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.no_grad(), context.autocast():
                return self.score(context)
        finally:
            for module, training in modes:
                module.training = training

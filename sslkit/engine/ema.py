"""Exponential moving average of one set of parameters into another (EMA teachers and targets)."""

from collections.abc import Sequence

import torch


@torch.no_grad()
def ema_update(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, as one multi-tensor kernel."""
    torch._foreach_lerp_(list(target), list(online), 1.0 - momentum)

"""Gradient clipping (``--clip-grad``): of the global norm, or of each parameter's own norm as DINO does."""

from __future__ import annotations

import torch


def clip_gradients(params: list[torch.Tensor], max_norm: float, per_param: bool) -> None:
    """Clip the gradients of ``params`` (those that have one) to ``max_norm``, without a host sync."""
    params = [p for p in params if p.grad is not None]
    if per_param:
        clip_each_norm([p.grad for p in params], max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


@torch.no_grad()
def clip_each_norm(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scale each gradient whose own norm exceeds ``max_norm`` down to it (DINO's clip_gradients), sync-free."""
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scales.unbind()))

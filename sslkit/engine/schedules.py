"""Schedules as pure functions of the optimizer step, evaluated every step (lr, weight decay, EMA momentum)."""

import math


def cosine(step: float, total_steps: float, start: float, end: float) -> float:
    """Half-cycle cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (held there after)."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


def warmup_cosine(step: float, total_steps: float, warmup_steps: float, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine down to ``final``."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


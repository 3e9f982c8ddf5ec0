"""Schedules as pure functions of the optimizer step, evaluated every step (lr, weight decay, EMA momentum), and
the time axis they run on (steps per epoch, total steps). The trainer and the dry run both use these, so a
plan shows exactly the numbers its run will log."""

import math

from sslkit.errors import UsageError


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



def step_plan(cfg, num_images: int, world_size: int = 1, batchnorm: bool = False) -> tuple[int, int]:
    """The time axis of a run of the TrainConfig ``cfg`` over ``num_images``: (steps per epoch, total steps).

    Full batches only (the sampler drops the rest). Refuses a batch that the processes and accumulation passes
    cannot share evenly, one larger than the data, and BatchNorm passes of fewer than 2 images.
    """
    shares = world_size * cfg.accum_steps
    if cfg.batch_size % shares:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by --accum-steps {cfg.accum_steps}"
                         + (f" x {world_size} processes" if world_size > 1 else ""))
    steps_per_epoch = num_images // cfg.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the data set ({num_images} images)")
    micro_batch = cfg.batch_size // shares
    if batchnorm and micro_batch < 2:
        raise UsageError(f"BatchNorm needs at least 2 images per pass; --batch-size {cfg.batch_size} gives "
                         f"{micro_batch}" + (" per process and pass" if shares > 1 else ""))
    return steps_per_epoch, cfg.epochs * steps_per_epoch


def step_values(cfg, step: int, total_steps: int, steps_per_epoch: int) -> tuple[float, float]:
    """(lr, weight decay) of optimizer step ``step`` (from 0) of the TrainConfig ``cfg``: the trainer sets them
    before that step and logs them under ``"step": step + 1``; the dry run shows the same numbers."""
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    lr = warmup_cosine(step, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
    weight_decay = cfg.weight_decay
    if cfg.weight_decay_end is not None:
        weight_decay = cosine(step, total_steps, cfg.weight_decay, cfg.weight_decay_end)
    return lr, weight_decay


def resumed_step(metadata: dict[str, str], steps_per_epoch: int) -> int:
    """The optimizer step a resumed run continues from, read from its checkpoint's ``metadata``; refuses data or
    a batch size that would give the schedules another time axis."""
    if int(metadata.get("steps_per_epoch", steps_per_epoch)) != steps_per_epoch:
        raise UsageError(
            f"--resume: the run had {metadata['steps_per_epoch']} steps per epoch, this data and batch size "
            f"give {steps_per_epoch}; resume with the same data set and --batch-size"
        )
    return int(metadata["step"])

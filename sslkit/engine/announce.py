"""The line a training run starts with: what it trains, on how many images, with which settings, where."""

from __future__ import annotations

from sslkit.config import TrainConfig


def run_line(method: str, images: int, steps_per_epoch: int, cfg: TrainConfig, world: int, device: str,
             precision: str, workers: int | None) -> str:
    """``workers``: the loader's worker processes (per process with torchrun); None: batches made on the device."""
    per_process = world > 1
    batch = f"batch {cfg.batch_size}"
    if per_process:
        batch += f" = {world} processes x {cfg.batch_size // world}"
    if cfg.accum_steps > 1:
        batch += f" ({cfg.accum_steps} passes of {cfg.batch_size // world // cfg.accum_steps})"
    data = f"{workers} workers" if workers is not None else "batches made on the device"
    return (f"{method} | {images} images, {steps_per_epoch} steps/epoch x {cfg.epochs} epochs, {batch}"
            f" | {cfg.optimizer} lr {cfg.lr:.3g} wd {cfg.weight_decay:.3g}, warm-up {cfg.warmup_epochs:.3g} epochs"
            f" | {device} {precision}, {data}" + (" per process" if per_process else ""))

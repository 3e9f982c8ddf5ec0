"""--dry-run: what a training command would do, computed as its run computes it, without training.

The command resolves its settings as usual (presets, lr scaled with the batch, warm-up, the data set's size,
the data path) and hands them to :func:`plan` instead of the trainer. The plan evaluates every schedule at
every optimizer step with the functions the run uses itself (``engine.schedules.step_values`` and the method's
``scheduled``), so its value at logged step s is the one metrics.jsonl will hold under ``"step": s``: that of
optimizer step s - 1. It draws ``RUN/schedules.png`` only into a new or empty folder, or one holding nothing
but an earlier plan: a dry run never touches a run, nor anyone's files.
"""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Callable

from sslkit.config import TrainConfig
from sslkit.data.datapath import describe as describe_data_path
from sslkit.data.loader import default_workers
from sslkit.engine import checkpoint as ckpt, distributed, rundir
from sslkit.engine.device import resolve_device, run_precision
from sslkit.engine.method import Progress, hook
from sslkit.engine.schedules import resumed_step, step_plan, step_values
from sslkit.errors import UsageError, WriteFailed
from sslkit.visualize.schedules import PLAN_NAME, write_schedules

MAX_STEPS = 20_000  # evaluated one by one; longer runs are sampled, keeping every value a schedule turns at


def refusal(check: Callable[[], None]) -> str | None:
    """What ``check`` (the real run's check of its --out) would stop the run with; None when it passes."""
    try:
        check()
    except UsageError as error:
        return str(error)
    return None


def checked_new_run(out: Path, force: bool, inputs: tuple[Path, ...], dry_run: bool) -> str | None:
    """rundir.check_new_run; a dry run gets the reason it would refuse, to report, instead of the error."""
    check = partial(rundir.check_new_run, out, force, inputs)
    if dry_run:
        return refusal(check)
    check()
    return None


def saved_metadata(out: Path) -> dict[str, str]:
    """The metadata of the checkpoint a resumed run continues from (step, precision, steps per epoch)."""
    path = Path(out) / "checkpoints" / "last.safetensors"
    if not path.exists():
        raise UsageError(f"--resume: no checkpoint in {out} (looked for {path})")
    return ckpt.read_metadata(path)


def plan(command: str, cfg: TrainConfig, run_config: dict, num_images: int, out: Path | None, method=None, *,
         batchnorm: bool | None = None, saved: dict[str, str] | None = None, refusal: str | None = None,
         notes: tuple[str, ...] = ()) -> dict:
    """The plan of a run of ``cfg`` over ``num_images`` (``method``: the built method, on the meta device for
    pretraining; ``batchnorm``: whether it has BatchNorm, when no method is given; ``saved``: a resumed run's
    checkpoint metadata; ``refusal``: why the run itself would not start). Draws ``out/schedules.png`` where
    it may; returns the resolved settings, the per-step schedules and their start / peak / end."""
    device = resolve_device(cfg.device)
    precision, _ = run_precision(cfg.precision, device, saved)
    decided = {**run_config.get("decided", {}), **precision.record()}
    batchnorm = _has_batchnorm(method) if batchnorm is None else batchnorm
    steps_per_epoch, total = step_plan(cfg, num_images, int(os.environ.get("WORLD_SIZE", "1")), batchnorm)
    start = resumed_step(saved, steps_per_epoch) if saved else 0
    arrays = schedule_arrays(cfg, steps_per_epoch, total, method)
    frozen = frozen_epochs(method, cfg.epochs, steps_per_epoch, total)
    facts = [f"device {device.type}, precision {precision.name}: {precision.reason}"]
    if "data_path" in decided:
        facts.append(describe_data_path(decided, default_workers() if cfg.workers is None else cfg.workers))
    if saved:
        facts.append(f"resumes after step {start} of {total}, in epoch {start // steps_per_epoch + 1}" if start < total
                     else f"the run has done all its {total} steps: --resume trains nothing more")
    title = f"{command}: {total} steps ({steps_per_epoch} per epoch x {cfg.epochs} epochs), batch {cfg.batch_size}"
    picture, not_written = _picture(out, arrays, steps_per_epoch, title, len(frozen) * steps_per_epoch, start)
    return {
        "dry_run": True, "command": command, "out": str(out) if out else None, "num_images": num_images,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "steps_per_epoch": steps_per_epoch,
        "total_steps": total, "start_step": start, "settings": {**run_config, "decided": decided},
        "schedules": arrays, "summary": summarize(arrays), "last_layer_frozen_epochs": frozen,
        "at_resume": values_at(cfg, start, total, steps_per_epoch, method) if 0 < start < total else None,
        "notes": [*facts, *notes], "refusal": refusal, "picture": picture, "not_written": not_written,
    }


def values_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int, method=None) -> dict[str, float]:
    """What the run logs under ``"step": step + 1``: the values optimizer step ``step`` (from 0) uses."""
    progress = Progress(step, total, step // steps_per_epoch, steps_per_epoch)
    lr, weight_decay = step_values(cfg, step, total, steps_per_epoch)
    scheduled = hook(method, "scheduled")(progress) if method is not None else {}  # BYOL's tau, DINO's temperature
    return {"lr": lr, "weight_decay": weight_decay, **scheduled}


def schedule_arrays(cfg: TrainConfig, steps_per_epoch: int, total: int, method=None) -> dict[str, list]:
    """Per evaluated step: ``step`` (as logged, from 1), ``epoch`` (from 1) and each schedule's value."""
    arrays: dict[str, list] = {}
    for step in evaluated_steps(total, steps_per_epoch, cfg.warmup_epochs * steps_per_epoch):
        row = {"step": step + 1, "epoch": step // steps_per_epoch + 1,
               **values_at(cfg, step, total, steps_per_epoch, method)}
        for name, value in row.items():
            arrays.setdefault(name, []).append(value)
    return arrays


def evaluated_steps(total: int, steps_per_epoch: int, warmup_steps: float) -> list[int]:
    """Every optimizer step up to MAX_STEPS; beyond, an even sample plus the first and last step, the steps
    around the end of the warm-up (the lr's peak) and each epoch's first step (per-epoch schedules change there)."""
    if total <= MAX_STEPS:
        return list(range(total))
    keep = set(range(0, total, math.ceil(total / MAX_STEPS))) | set(range(0, total, steps_per_epoch))
    keep |= {step for step in (math.floor(warmup_steps), math.ceil(warmup_steps), total - 1) if 0 <= step < total}
    return sorted(keep)


def summarize(arrays: dict[str, list]) -> dict[str, dict[str, float]]:
    """Each schedule's start, peak (largest value) and end."""
    return {name: {"start": arrays[name][0], "peak": max(arrays[name]), "end": arrays[name][-1]}
            for name in arrays if name not in ("step", "epoch")}


def frozen_epochs(method, epochs: int, steps_per_epoch: int, total: int) -> list[int]:
    """The epochs (from 1) in which DINO's last layer gets no update; none for other methods."""
    frozen = getattr(method, "last_layer_frozen", None)
    if frozen is None:
        return []
    return [e + 1 for e in range(epochs) if frozen(Progress(e * steps_per_epoch, total, e, steps_per_epoch))]


def picture_refusal(out: Path | None) -> str | None:
    """Why the plan's picture may not go into ``out``; None when it may: ``out`` is new, empty, or holds
    nothing but an earlier plan."""
    if out is None:
        return "no --out was given"
    if out.is_symlink() and not out.exists():
        return f"{out} is a broken symbolic link"
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} is a file"
    if all(rundir.is_plan(p) for p in out.iterdir()):
        return None
    return f"{out} holds {'a run' if rundir.is_run(out) else 'other files'}"


def _picture(out: Path | None, arrays: dict[str, list], steps_per_epoch: int, title: str, frozen_steps: int,
             start: int) -> tuple[str | None, str | None]:
    """(the picture's path, None) when drawn; (None, why not) otherwise."""
    reason = picture_refusal(out)
    if reason is None and not distributed.first_process():
        reason = "another process draws it"
    if reason is not None:
        return None, reason
    try:
        return str(write_schedules(arrays, steps_per_epoch, title, out / PLAN_NAME, frozen_steps, start)), None
    except WriteFailed as error:
        return None, str(error)


def _has_batchnorm(method) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return method is not None and any(isinstance(m, _BatchNorm) for m in method.modules())

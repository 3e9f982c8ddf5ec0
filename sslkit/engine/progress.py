"""What a run shows and records: the rich progress line on stderr and metrics.jsonl in the run directory."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sslkit import console, files
from sslkit.errors import WriteFailed


class ProgressDisplay:
    """epoch, step, loss, lr, images/s and ETA, refreshed a few times a second; silent with --quiet."""

    def __init__(self, total_steps: int, done_steps: int, epochs: int):
        self.epochs = epochs
        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console.stderr,
            disable=console.is_quiet(),
        )
        self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, epoch=f"?/{epochs}", stats="")
        self.scores = ""

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def advance(self, epoch: int) -> None:
        self.bar.update(self.task, advance=1, epoch=f"{epoch + 1}/{self.epochs}")

    def show(self, values: dict) -> None:
        parts = [f"loss {values['loss']:.4f}", f"lr {values['lr']:.2e}", f"{values['img_per_s']:.0f} img/s"]
        if values.get("data_wait", 0) > 0.2:
            parts.append(f"data wait {values['data_wait']:.0%}")
        self.bar.update(self.task, stats="  ".join(parts + ([self.scores] if self.scores else [])))

    def show_scores(self, scores: dict) -> None:
        """The latest evaluation (accuracies), kept on the progress line until the next one."""
        self.scores = "  ".join(f"{k.replace('_top1', '')} {v:.1f}%" for k, v in scores.items() if k.endswith("top1"))


class MetricsLog:
    """Appends one JSON object per logged step or epoch to ``metrics.jsonl``, and hands each record to the
    ``sinks`` too (sslkit.engine.tensorboard)."""

    def __init__(self, path: Path, enabled: bool = True, sinks: tuple = ()):
        self.path, self.enabled = path, enabled  # with torchrun only the first process writes
        self.sinks = sinks if enabled else ()
        self.start = time.time()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {**record, "time": round(time.time() - self.start, 3)}
        self._append(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def _append(self, line: str) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as error:  # a full disk: no torn line stays behind to break a later --resume
            try:
                os.truncate(self.path, size)
            except OSError:
                pass
            raise WriteFailed(f"cannot write {self.path} ({error.strerror or error}); the last checkpoint is "
                              "intact: free some space and continue with --resume") from None

    def truncate_after(self, step: int) -> None:
        """Drop records of steps beyond ``step`` (written after the checkpoint a resumed run starts from), and
        any line that is not a whole record (a write cut short), with a notice."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines() if line]
        records = [_record(line) for line in lines]
        torn = sum(record is None for record in records)
        if torn:
            console.warn(f"{self.path}: dropped {torn} line(s) that are not whole records (a write cut short)")
        kept = [line for line, record in zip(lines, records) if record is not None and record.get("step", 0) <= step]
        files.write_text(self.path, "".join(line + "\n" for line in kept))


def read_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``, one JSON object per line; blank and unparseable lines are skipped."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [record for record in map(_record, lines) if record is not None]


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux

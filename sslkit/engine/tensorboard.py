"""``--logger tensorboard``: the scalars of metrics.jsonl, also as TensorBoard event files in ``RUN/tensorboard``.

TensorBoard is an optional dependency (``pip install 'sslkit[tensorboard]'``), imported only when asked for.
Each record becomes scalars at its step, tagged by what the record is: ``train/<key>`` for the log windows
(loss, lr, weight_decay, tau / momentum, teacher_temp, teacher_entropy, img_per_s, data_wait, peak_mem_mb),
``epoch/<key>`` for the end-of-epoch summaries and ``eval/<key>`` for evaluations (online k-NN, probe and
fine-tuning accuracies). A resumed run drops the events of the steps it trains again (TensorBoard's
``purge_step``), as it drops their lines from metrics.jsonl.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from sslkit.errors import UsageError

LOGGERS = ("jsonl", "tensorboard")
SKIPPED = {"step", "epoch", "time"}


def check_available() -> None:
    """A one-line UsageError now, before training, when TensorBoard is not installed."""
    try:
        importlib.import_module("tensorboard")
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        raise UsageError("--logger tensorboard needs TensorBoard: pip install 'sslkit[tensorboard]' "
                         "(or pip install tensorboard)") from None


def metric_sinks(logger: str, out: Path) -> tuple:
    """Where a run's metrics go besides metrics.jsonl (``--logger``): a TensorBoardLog in ``out/tensorboard``."""
    if logger != "tensorboard":
        return ()
    check_available()
    return (TensorBoardLog(out / "tensorboard"),)


def tag(record: dict, key: str) -> str:
    if "epoch_loss" in record:
        return f"epoch/{key}"
    return f"train/{key}" if "loss" in record else f"eval/{key}"


class TensorBoardLog:
    """Writes each metrics record as scalars; opened at the first record, whose step starts this process's
    share of the run (events from an interrupted run at or after it are purged)."""

    def __init__(self, folder: Path):
        self.folder, self.writer = Path(folder), None

    def write(self, record: dict) -> None:
        step = int(record["step"])
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder), purge_step=step)
        for key, value in record.items():
            if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(record, key), value, step)
        self.writer.flush()  # at log steps only: a killed run keeps what it logged

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

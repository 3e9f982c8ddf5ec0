"""Training curves: draw a run's ``metrics.jsonl`` as one PNG of side-by-side panels.

Panels, each only when the log has data for it:
  loss           per-window ``loss`` (thin) and ``epoch_loss`` (markers) against step
  learning rate  ``lr`` against step
  accuracy (%)   every key containing ``top1`` (knn_top1, val_top1, val_top1/lr=0.1, ...) against epoch

matplotlib is imported only when a picture is drawn, with the Agg backend, so no window ever opens.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sslkit import console
from sslkit.engine import distributed
from sslkit.engine.progress import read_records
from sslkit.errors import Interrupted
from sslkit.files import write_atomic

PANEL_SIZE = (4.2, 3.2)  # inches per panel; at DPI 100 a panel is 420 x 320 px
DPI = 100
LOG_RATIO = 50  # the loss axis is logarithmic when max/min of the (all positive) values exceeds this


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None for anything else (strings, booleans, NaN, null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(records: list[dict[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of ``key`` against ``x`` over the records that have both as numbers."""
    xs, ys = [], []
    for record in records:
        px, py = number(record.get(x)), number(record.get(key))
        if px is not None and py is not None:
            xs.append(px)
            ys.append(py)
    return xs, ys


def accuracy_keys(records: list[dict[str, Any]]) -> list[str]:
    """Every key whose name contains ``top1``, in order of first appearance."""
    keys: dict[str, None] = {}
    for record in records:
        keys.update((key, None) for key in record if "top1" in key)
    return list(keys)


def panels(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What to draw: per panel a title, an x label and its lines as (label, xs, ys, style)."""
    thin, marked = {"linewidth": 1.0}, {"linewidth": 2.0, "marker": "o", "markersize": 4}
    loss = [("per log window", *series(records, "loss", "step"), thin),
            ("epoch mean", *series(records, "epoch_loss", "step"), marked)]
    lr = [("lr", *series(records, "lr", "step"), thin)]
    accuracy = [(key, *series(records, key, "epoch"), marked) for key in accuracy_keys(records)]
    candidates = [("loss", "step", loss), ("learning rate", "step", lr), ("accuracy (%)", "epoch", accuracy)]
    chosen = []
    for title, xlabel, lines in candidates:
        lines = [line for line in lines if line[1]]
        if lines:
            chosen.append({"title": title, "xlabel": xlabel, "lines": lines})
    return chosen


def draw(chosen: list[dict[str, Any]], title: str, out: Path) -> None:
    """Draw the panels side by side into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(chosen), figsize=(PANEL_SIZE[0] * len(chosen), PANEL_SIZE[1]),
                             dpi=DPI, squeeze=False)
    try:
        for ax, panel in zip(axes[0], chosen):
            for label, xs, ys, style in panel["lines"]:
                ax.plot(xs, ys, label=label, **style)
            values = [y for _, _, ys, _ in panel["lines"] for y in ys]
            if panel["title"] == "loss" and min(values) > 0 and max(values) / min(values) > LOG_RATIO:
                ax.set_yscale("log")
            if len(panel["lines"]) >= 2:
                ax.legend(fontsize="small")
            elif panel["title"] == "accuracy (%)":
                ax.set_ylabel(panel["lines"][0][0])  # the one key's name, in place of a legend
            ax.set_title(panel["title"])
            ax.set_xlabel(panel["xlabel"])
            ax.grid(True, alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def write_curves(run_dir: Path, out: Path | None = None) -> Path | None:
    """Draw ``run_dir/metrics.jsonl`` to ``out`` (default ``run_dir/curves.png``) and return its path.

    Returns None, writing nothing, when the log is missing or holds nothing to plot.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    chosen = panels(read_records(metrics))
    if not chosen:
        return None
    out = Path(out) if out is not None else run_dir / "curves.png"
    write_atomic(out, lambda tmp: draw(chosen, run_dir.resolve().name, tmp), tmp_suffix=".tmp.png")
    return out


@contextmanager
def curves_drawn(run_dir: Path):
    """Draw the run's curves.png when the training inside the block ends, or is interrupted (a resumable run
    shows how far it got); only in the first process, and never at the cost of the run's result."""
    try:
        yield
    except Interrupted:
        _draw_quietly(run_dir)
        raise
    _draw_quietly(run_dir)


def _draw_quietly(run_dir: Path) -> None:
    if not distributed.first_process():
        return
    try:
        write_curves(run_dir)
    except Exception as error:
        console.warn(f"could not draw the training curves: {type(error).__name__}: {error}")

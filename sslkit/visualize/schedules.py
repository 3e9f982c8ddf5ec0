"""A dry run's picture of a planned run: each schedule over the optimizer steps, as ``RUN/schedules.png``.

One panel per schedule the run has (learning rate, weight decay, BYOL's tau or DINO's teacher momentum, DINO's
teacher temperature), the logged step on the x axis and the epochs on a second axis above; DINO's epochs with
the last layer frozen are shaded, and a resumed run's saved step is marked. The PNG carries a text chunk that
names it a plan, so that a run directory can tell it from a file of the user's of the same name.

matplotlib is imported only when a picture is drawn, with the Agg backend, as for the training curves.
"""

from __future__ import annotations

from pathlib import Path

from sslkit import __version__
from sslkit.files import write_atomic
from sslkit.visualize.curves import DPI, PANEL_SIZE

PLAN_NAME = "schedules.png"
PLAN_KEY = "sslkit-plan"  # the PNG text chunk that marks a dry run's picture
TITLES = {"lr": "learning rate", "weight_decay": "weight decay", "tau": "target EMA tau",
          "momentum": "teacher EMA momentum", "teacher_temp": "teacher temperature"}
EPOCH_LINES = 30  # a faint line at every epoch boundary for runs of up to this many epochs


def schedule_names(arrays: dict[str, list]) -> list[str]:
    """The schedules in ``arrays`` that get a panel, in panel order."""
    return [name for name in TITLES if name in arrays]


def is_plan_picture(path: Path) -> bool:
    """Whether ``path`` is a picture a dry run drew (its PNG text chunk says so); reads the header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and PLAN_KEY in image.info
    except Exception:  # whatever Pillow raises for a file that is not a readable image: not ours
        return False


def write_schedules(arrays: dict[str, list], steps_per_epoch: int, title: str, out: Path, frozen_steps: int = 0,
                    start_step: int = 0) -> Path:
    """Draw the schedules of ``arrays`` (``step`` and one list per schedule) into the PNG ``out``, atomically."""
    write_atomic(out, lambda tmp: _draw(arrays, steps_per_epoch, title, tmp, frozen_steps, start_step),
                 tmp_suffix=".tmp.png")
    return out


def _draw(arrays: dict[str, list], steps_per_epoch: int, title: str, out: Path, frozen_steps: int,
          start_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = schedule_names(arrays)
    fig, axes = plt.subplots(1, len(names), figsize=(PANEL_SIZE[0] * len(names), PANEL_SIZE[1] + 0.4), dpi=DPI,
                             squeeze=False)
    try:
        for ax, name in zip(axes[0], names):
            ax.plot(arrays["step"], arrays[name], linewidth=1.5)
            _mark(ax, arrays["step"][-1], steps_per_epoch, frozen_steps, start_step)
            ax.set_title(TITLES[name])
            ax.set_xlabel("optimizer step")
            ax.grid(True, alpha=0.3)
            epochs = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch,
                                                           lambda e: e * steps_per_epoch))
            epochs.set_xlabel("epoch", fontsize="small")
        if frozen_steps or start_step:
            axes[0][0].legend(fontsize="small")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, format="png", dpi=DPI, metadata={PLAN_KEY: f"sslkit {__version__} --dry-run"})
    finally:
        plt.close(fig)


def _mark(ax, last_step: int, steps_per_epoch: int, frozen_steps: int, start_step: int) -> None:
    """Epoch boundaries, the steps with DINO's last layer frozen, and where a resumed run goes on."""
    epochs = round(last_step / steps_per_epoch)
    if epochs <= EPOCH_LINES:
        for epoch in range(1, epochs):
            ax.axvline(epoch * steps_per_epoch, color="grey", linewidth=0.5, alpha=0.4)
    if frozen_steps:
        ax.axvspan(0, frozen_steps, color="tab:orange", alpha=0.15, label="last layer frozen")
    if start_step:
        ax.axvline(start_step, color="tab:red", linestyle="--", linewidth=1.0, label=f"resumes after step {start_step}")

"""Choosing a learning rate honestly: on labelled images held out of the training set, never on --val.

The training labels are dealt class by class into 5 folds (sslkit.data.folders.held_out_folds). Each lr of a
grid trains on four folds and is scored on the fifth: once for fine-tuning (a fifth of the labels held out),
and for the linear probe, whose heads train in seconds on cached features, once per fold (cross-validation:
every training image is held out once, so a few hundred labels give a choice with a few points of noise rather
than ten). The best lr is then trained on all the training labels, and only that run counts on --val. A
pretrained model and its random-init baseline go through the same steps, so a comparison between them is not
a comparison of how well each one's lr happened to suit it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sslkit.errors import UsageError

FOLDS = 5


def fits_the_slice(batch: int, fit: int, total: int) -> None:
    """A usage error when a step's ``batch`` is larger than the ``fit`` training images (of ``total``) an lr trial
    trains on."""
    if batch > fit:
        raise UsageError(f"--batch-size {batch} is larger than the {fit} training images the lr is chosen with "
                         f"({fit} of {total}; the rest held out): give a smaller --batch-size, or one --lr")


@dataclass(frozen=True)
class LrChoice:
    lrs: tuple[float, ...]
    held_out_top1: tuple[float, ...]  # per lr, percent of all the held-out images (over every fold scored)
    held_out_loss: tuple[float, ...]  # per lr, mean cross-entropy on them: breaks ties of top-1
    num_fit: int  # images each trial trained on (of the first fold)
    num_held_out: int  # held-out images scored, over every fold
    folds: int  # folds scored: 1 (a fifth held out) or FOLDS (cross-validation)

    @property
    def lr(self) -> float:
        """The lr with the best held-out top-1; of a tie (likely with a few dozen held out), the lowest loss."""
        best = max(range(len(self.lrs)), key=lambda i: (self.held_out_top1[i], -self.held_out_loss[i]))
        return self.lrs[best]

    def record(self) -> dict:
        return {"lr": self.lr, "lrs": list(self.lrs), "held_out_top1": list(self.held_out_top1),
                "held_out_loss": list(self.held_out_loss), "num_fit": self.num_fit, "num_held_out": self.num_held_out,
                "folds": self.folds}

    def at_an_edge(self) -> str | None:
        """A note when the chosen lr is the grid's largest or smallest: the best may lie beyond it."""
        if len(self.lrs) < 2 or self.lr not in (min(self.lrs), max(self.lrs)):
            return None
        side = "largest" if self.lr == max(self.lrs) else "smallest"
        return f"the chosen lr {self.lr:g} is the grid's {side}: one beyond it may do better (give --lr values)"

    def describe(self) -> str:
        scores = ", ".join(f"{lr:g}: {top1:.1f} %" for lr, top1 in zip(self.lrs, self.held_out_top1))
        how = (f"{self.folds}-fold cross-validation on the {self.num_held_out} training images" if self.folds > 1
               else f"{self.num_held_out} held-out training images (trained on the other {self.num_fit})")
        return f"lr {self.lr:g} chosen by {how}; held-out top-1 {scores}"

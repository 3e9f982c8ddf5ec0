"""Val top-1 per epoch of fine-tuning runs on one chart (docs/images/finetune-fraction10.png).

    python docs/examples/finetune_figure.py OUT.png "label=RUN_DIR" "label=RUN_DIR" ...

Runs given in pairs (pretrained, then from scratch) share a colour; scratch runs are dashed.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def val_curve(run: Path) -> tuple[list[int], list[float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    scored = [r for r in records if "val_top1" in r]
    return [r["epoch"] for r in scored], [r["val_top1"] for r in scored]


def main(out: str, *runs: str) -> None:
    figure, axis = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for i, spec in enumerate(runs):
        label, run = spec.split("=", 1)
        epochs, top1 = val_curve(Path(run))
        axis.plot(epochs, top1, color=f"C{i // 2}", linestyle="-" if i % 2 == 0 else "--", label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("val top-1 (%)")
    axis.set_title("fine-tuning on 10% of the labels (30 images per class)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The seed's 1 % / 10 % table for any run and labelled folder: what pretraining buys with few labels.

For each --fraction of --train (class-balanced, seeded as `sslkit finetune --fraction` draws it), with every
command at its default options:

  k-NN        `sslkit probe knn RUN --fraction F`: the fraction is the memory
  linear      `sslkit probe linear MODEL --fraction F`: the lr chosen on held-out training labels
  fine-tuned  `sslkit finetune MODEL --fraction F`: --recipe auto, the lr chosen on held-out training labels

for the pretrained run and for the same architecture from random init (timm:ARCH, at the run's image size;
"from scratch" for fine-tuning). --val is always scored in full and chooses nothing.

    python benchmarks/few_labels.py runs/byol --train data/train --val data/val --out runs/few-labels
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sslkit
from sslkit.engine.checkpoint import load_backbone
from sslkit.files import OutputFolder

COLUMNS = (("knn", "pretrained"), ("linear", "random init"), ("linear", "pretrained"),
           ("finetune", "random init"), ("finetune", "pretrained"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the pretrained run (or checkpoint)")
    parser.add_argument("--train", required=True, help="labelled folder the fractions are drawn from")
    parser.add_argument("--val", required=True, help="labelled folder scored in full")
    parser.add_argument("--out", required=True, type=Path, help="folder for the fine-tuning runs and results.json")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-finetune", action="store_true",
                        help="the k-NN and linear columns only (minutes, not hours)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the random-init columns (e.g. already measured for the same architecture and size)")
    args = parser.parse_args()

    loaded = load_backbone(args.run)
    baseline, size = f"timm:{loaded.arch}", loaded.img_size
    common = dict(seed=args.seed, workers=args.workers)
    # beside files of yours, never over them: results.json only if this script wrote it; the fine-tuning runs
    # go to their own sub-folders, where --force sets aside only an earlier sslkit run
    output = OutputFolder(args.out, "few_labels", force=True)
    output.claim(["results.json"], [Path(args.train), Path(args.val)])
    rows = []
    for fraction in args.fractions:
        row = {"fraction": fraction}
        start = time.perf_counter()
        knn = sslkit.probe_knn(args.run, args.train, args.val, fraction=fraction, **common)
        row["num_train"], row[("knn", "pretrained")] = knn["num_train"], knn["top1"]
        models = (("random init", baseline, {"img_size": size}), ("pretrained", args.run, {}))
        for name, model, extra in models[1:] if args.no_baseline else models:
            linear = sslkit.probe_linear(model, args.train, args.val, fraction=fraction, **common, **extra)
            row[("linear", name)] = linear["top1"]
            row[f"linear lr, {name}"] = linear["lr"]
            if args.no_finetune:
                continue
            tag = "scratch" if name == "random init" else "pretrained"
            tuned = sslkit.finetune(model, args.train, args.val, args.out / f"{tag}-{fraction:g}", fraction=fraction,
                                    force=True, **common, **extra)
            row[("finetune", name)] = tuned["top1"]
            row[f"finetune lr, {name}"] = tuned["lr"]
            row["finetune recipe"], row["finetune epochs"] = tuned["recipe"], tuned["epochs"]
        row["seconds"] = round(time.perf_counter() - start)
        rows.append(row)
        _write(rows, args, output)
    print(_table(rows, args.run, baseline))


def _write(rows: list[dict], args, output: OutputFolder) -> None:
    records = [{(" / ".join(k) if isinstance(k, tuple) else k): v for k, v in row.items()} for row in rows]
    text = json.dumps({"run": args.run, "train": args.train, "val": args.val, "rows": records}, indent=2) + "\n"
    output.write("results.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _table(rows: list[dict], run: str, baseline: str) -> str:
    header = ["labels", "images"] + [f"{kind}: {name}" for kind, name in COLUMNS]
    lines = [f"val top-1 %, last epoch; pretrained = {run}, random init = {baseline}",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row['fraction']:.0%}", str(row["num_train"])]
        cells += [f"{row[c]:.1f}" if c in row else "-" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

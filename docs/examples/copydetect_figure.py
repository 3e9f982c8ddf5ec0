"""Originals and their strong copies from a `sslkit copydetect make-benchmark` folder, with the attacks named
(docs/images/copydetect-attacks.png).

    python docs/examples/copydetect_figure.py BENCH OUT.png [--originals 4] [--matches MATCHES.csv]

With --matches (from `sslkit copydetect ... --matches`), each copy's caption also says where its original ranked.
"""

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bench", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--originals", type=int, default=4)
    parser.add_argument("--matches", type=Path)
    args = parser.parse_args()
    rows = list(csv.DictReader((args.bench / "ground_truth.csv").open()))
    originals = list(dict.fromkeys(r["original"] for r in rows))[: args.originals]
    copies = {o: [r for r in rows if r["original"] == o] for o in originals}
    ranks = _ranks(args.matches) if args.matches else {}
    columns = 1 + max(len(c) for c in copies.values())
    figure, axes = plt.subplots(len(originals), columns, figsize=(2.2 * columns, 2.4 * len(originals)), dpi=100,
                                squeeze=False)
    for row, original in zip(axes, originals):
        row[0].imshow(Image.open(args.bench / "database" / original))
        row[0].set_title("original", fontsize=9)
        for axis, copy in zip(row[1:], copies[original]):
            axis.imshow(Image.open(args.bench / "queries" / copy["query"]))
            caption = copy["attacks"].replace(";", " + ")
            if copy["query"] in ranks:
                found = ranks[copy["query"]].get(original)
                caption += f"\noriginal ranked {found}" if found else "\noriginal not in top-k"
            axis.set_title(caption, fontsize=8)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(args.out)
    Image.open(args.out).convert("RGB").quantize(colors=256).save(args.out, optimize=True)  # a quarter of the bytes


def _ranks(path: Path) -> dict[str, dict[str, int]]:
    ranks: dict[str, dict[str, int]] = {}
    for r in csv.DictReader(path.open()):
        ranks.setdefault(Path(r["query"]).name, {})[Path(r["match"]).name] = int(r["rank"])
    return ranks


if __name__ == "__main__":
    main()

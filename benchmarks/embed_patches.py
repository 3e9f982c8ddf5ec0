"""sslkit embed --tokens patch against --tokens cls: images/s, and peak memory that must not grow with the images.

    python benchmarks/embed_patches.py                                  # 1,000 and 250 images, 224 px, ViT-S/14
    python benchmarks/embed_patches.py --images 200 50 --repeats 2 --json patches.json

Each run is a fresh process (this script with --child) that embeds the first N images of --data (copied to a
temporary folder; JPEGs, sorted) with a randomly initialised timm:ARCH (random weights run as fast as trained
ones), no feature cache, and reports the seconds sslkit.embed took (model creation and loader start-up
included) and its peak resident memory from getrusage: the process's own (where the features are) and the
largest of its loader workers (decoding). The runs take turns (cls, patch, cls, patch, ...), so a busy moment on
a shared machine hits both alike; the table gives the median images/s over --repeats and the largest peak.

With patch tokens the file holds N x h x w x D float32 (ViT-S/14 at 224 px: 16 x 16 x 384, 393 KB an image), so a
writer that kept them in memory would grow by that much per image; the streamed one holds a batch at a time,
and its peak is the same at 250 images as at 1,000 (compare the rows; --batch-size is below both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette_160" / "train"


def copy_images(data: Path, count: int, folder: Path) -> Path:
    """The first ``count`` JPEGs under ``data`` (sorted, recursively), copied with their sub-folders."""
    files = sorted(data.rglob("*.jpg"))[:count]
    if len(files) < count:
        raise SystemExit(f"{data} holds {len(files)} JPEGs, fewer than {count}")
    for path in files:
        target = folder / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return folder


def resident_mb() -> float:
    """The process's resident memory now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> None:
    """One embed in this fresh process; prints its seconds and memory as one JSON line."""
    from sslkit import console
    from sslkit.evaluate.embed import embed  # imports torch and timm

    console.set_quiet(True)
    before = resident_mb()  # torch, timm and sslkit imported: what every run starts from
    start = time.perf_counter()
    summary = embed(f"timm:{spec['arch']}", spec["folder"], spec["out"], tokens=spec["tokens"],
                           img_size=spec["img_size"], batch_size=spec["batch_size"], workers=spec["workers"],
                           device=spec["device"], precision=spec["precision"], cache=False)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds, "rss_before_mb": before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "file_mb": Path(spec["out"]).stat().st_size / 2**20, "dim": summary["dim"], "grid": summary.get("grid"),
    }))


def run_child(spec: dict) -> dict:
    """``child(spec)`` in a fresh process: its own peak memory, never an earlier run's."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {spec['tokens']} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args, count: int, tmp: Path) -> list[dict]:
    """The rows of ``count`` images: one per --tokens, over --repeats runs taking turns."""
    folder = copy_images(args.data, count, tmp / f"images-{count}")
    runs: dict[str, list[dict]] = {tokens: [] for tokens in args.tokens}
    for repeat in range(args.repeats):
        for tokens in args.tokens:
            out = tmp / f"out-{count}-{tokens}.safetensors"
            spec = {"arch": args.arch, "folder": str(folder), "out": str(out), "tokens": tokens,
                    "img_size": args.img_size, "batch_size": args.batch_size, "workers": args.workers,
                    "device": args.device, "precision": args.precision}
            runs[tokens].append(run_child(spec))
            out.unlink()  # 393 MB for 1,000 images of patch tokens
            print(f"{count} images, {tokens}, repeat {repeat + 1}: {runs[tokens][-1]['seconds']:.1f} s", flush=True)
    shutil.rmtree(folder)
    return [summarise(count, tokens, results) for tokens, results in runs.items()]


def summarise(count: int, tokens: str, results: list[dict]) -> dict:
    return {
        "images": count, "tokens": tokens,
        "images_per_s": round(statistics.median(count / r["seconds"] for r in results), 2),
        "seconds": [round(r["seconds"], 2) for r in results],
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results)),
        "rss_before_mb": round(max(r["rss_before_mb"] for r in results)),
        "worker_peak_rss_mb": round(max(r["worker_peak_rss_mb"] for r in results)),
        "file_mb": round(results[0]["file_mb"], 1), "dim": results[0]["dim"], "grid": results[0]["grid"],
    }


def show(rows: list[dict]) -> None:
    print(f"{'images':>7} {'tokens':>8} {'images/s':>9} {'peak RSS MB':>12} {'before embed':>13} "
          f"{'worker peak':>12} {'file MB':>8}")
    for row in rows:
        print(f"{row['images']:>7} {row['tokens']:>8} {row['images_per_s']:>9.2f} {row['peak_rss_mb']:>12} "
              f"{row['rss_before_mb']:>13} {row['worker_peak_rss_mb']:>12} {row['file_mb']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 250])
    parser.add_argument("--tokens", nargs="+", default=["cls", "patch"])
    parser.add_argument("--arch", default="vit_small_patch14_dinov2")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for count in args.images for row in measure(args, count, Path(tmp))]
    show(rows)
    if args.json:
        machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items() if k != "child"},
                                         "machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Data pipeline throughput: how many images/s each input path decodes and augments, without any training.

    python benchmarks/pipeline.py --data ../shared/data/imagenette_96/train --img-size 64
    python benchmarks/pipeline.py --method dino --img-size 224 --workers 1 2 4 --batches 20 --repeats 3
    python benchmarks/pipeline.py --path store --data ../shared/data/imagenette_160/train --img-size 160

For each method's views (BYOL: 2 views; DINO: 2 global + `--local-crops-number` local crops; MAE: one crop),
each worker count and each place the colour augmentations run (`--augment-on cpu` / `device`), a fresh loader
delivers `--batches` batches after a first one (worker start-up, left out); the table gives the median
images/s over `--repeats` runs. With `device` the CPU only decodes, crops and flips, and the last column gives
what the training device then spends on the colour operations of one batch (CUDA when present, else this CPU).
Compare with the training step's images/s (benchmarks/throughput.py): a pipeline slower than the step starves
the GPU (metrics.jsonl's data_wait says the same during a run).

`--path store` times the decoded store instead (sslkit.data.store, built once into a temporary folder, not
timed): every view of the method made for whole batches on the training device (CUDA when present, else this
CPU, in this one process), colour included; "workers" does not apply there.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sslkit.methods.dino import DINOConfig
from sslkit.data.folders import ImageFolder
from sslkit.data.loader import EpochSampler, make_loader
from sslkit.data.photometric import finish_views
from sslkit.data.device_views import StoreViews
from sslkit.data.store import open_store, plan_store
from sslkit.data.views import byol_plan, cpu_views, crop_flip, dino_plan

from throughput import prepare_images


def plan(method: str, img_size: int, local_crops: int):
    """The method's views at its default crop scales: what both paths make."""
    if method == "byol":
        return byol_plan(img_size)
    if method == "dino":
        dino = DINOConfig()
        return dino_plan(img_size, dino.global_crops_scale, local_crops, dino.local_crops_scale)
    return (crop_flip(img_size, (0.2, 1.0)),)


def views(method: str, img_size: int, local_crops: int, on_device: bool):
    """The loader path's transform of the same views."""
    return cpu_views(plan(method, img_size, local_crops), on_device)


def store_speed(source: StoreViews, batch_size: int, batches: int, seed: int, device: torch.device) -> float:
    sampler = EpochSampler(len(source), (batches + 1) * batch_size, seed)
    iterator = iter(source.loader(sampler, batch_size, device))
    next(iterator)  # first batch: the store moves to the device, kernels warm up
    _synchronize(device)
    start = time.perf_counter()
    for _ in iterator:
        pass
    _synchronize(device)
    return batches * batch_size / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_speed(dataset, batch_size: int, batches: int, workers: int, seed: int) -> tuple[float, list]:
    sampler = EpochSampler(len(dataset), (batches + 1) * batch_size, seed)
    loader = make_loader(dataset, batch_size, workers, torch.device("cpu"), sampler=sampler)
    iterator = iter(loader)
    kept = [next(iterator)]  # worker start-up
    start = time.perf_counter()
    kept += list(iterator)
    return batches * batch_size / (time.perf_counter() - start), kept[:2]


def device_seconds(batches: list, device: torch.device, repeats: int = 5) -> float:
    """Median seconds the device spends on the colour operations of one batch."""
    times = []
    for _ in range(repeats):
        for batch in batches:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            finish_views(batch, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times[len(batches):])  # the first pass warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", nargs="+", default=["byol", "dino"], choices=["byol", "dino", "mae"])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--local-crops-number", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--augment-on", nargs="+", default=["cpu", "device"], choices=["cpu", "device"])
    parser.add_argument("--path", nargs="+", default=["loader", "store"], choices=["loader", "store"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, help="image folder to draw from (default: generated noise JPEGs)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{'method':6} {'path':6} {'augment-on':10} {'workers':>7} {'images/s':>9}  runs{'':14} "
          f"device ms/batch ({device.type})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        prepare_images(folder, (args.batches + 1) * args.batch_size, args.data, int(args.img_size * 1.5))
        for method in args.method:
            if "loader" in args.path:
                loader_rows(args, folder, method, device)
            if "store" in args.path:
                dataset = ImageFolder(folder)
                store = open_store(dataset, plan_store(dataset, args.img_size), Path(tmp) / "stores", workers=4)
                source = StoreViews(store, plan(method, args.img_size, args.local_crops_number),
                                    "device" if device.type == "cuda" else "ram")
                speeds = [store_speed(source, args.batch_size, args.batches, seed, device)
                          for seed in range(args.repeats)]
                shown = ", ".join(f"{s:.0f}" for s in speeds)
                median = statistics.median(speeds)
                print(f"{method:6} {'store':6} {device.type:10} {'-':>7} {median:9.0f}  ({shown:16})")


def loader_rows(args, folder: Path, method: str, device: torch.device) -> None:
    for place in args.augment_on if method != "mae" else ["cpu"]:
        dataset = ImageFolder(folder, views(method, args.img_size, args.local_crops_number, place == "device"))
        for workers in args.workers:
            runs = [loader_speed(dataset, args.batch_size, args.batches, workers, seed) for seed in range(args.repeats)]
            speeds = [speed for speed, _ in runs]
            on_device = f"{1000 * device_seconds(runs[0][1], device):.1f}" if place == "device" else "-"
            shown = ", ".join(f"{s:.0f}" for s in speeds)
            print(f"{method:6} {'loader':6} {place:10} {workers:7d} {statistics.median(speeds):9.0f}  ({shown:16}) "
                  f"{on_device}")

if __name__ == "__main__":
    main()

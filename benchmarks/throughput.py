"""Training throughput of `sslkit pretrain`: images/s and peak memory of real training steps.

    python benchmarks/throughput.py --method byol --arch resnet18 --img-size 64 --batch-size 64
    python benchmarks/throughput.py --data ../shared/data/imagenette_96/train --steps 40 --repeats 3
    python benchmarks/throughput.py --set projector_hidden_dim=1024 --set predictor_hidden_dim=1024

Each repeat is a fresh one-epoch run through the real engine (loader, workers, augmentation, optimizer, EMA)
on `--steps` batches: images from `--data` (symlinked, first files in order) or generated noise JPEGs. The
images/s of every `--log-every` window after the first (warm-up) are collected; the script prints their
median per repeat and the median over repeats, with the peak memory (CUDA: allocated; CPU: main-process RSS)
and the share of time the step waited for the loader (near 0: the data pipeline keeps up).

It also counts the model FLOPs of one training step per image (forward and backward of every network the
method runs: student, teacher, heads, decoder; PyTorch's FlopCounterMode, matrix products and convolutions)
and prints the achieved TFLOP/s. On CUDA it divides by the GPU's dense bf16 peak (a table of common GPUs, or
`--peak-tflops`) for the model FLOPs utilisation (MFU); on a CPU it does so when `--peak-tflops` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

import sslkit
from sslkit import config as cfg
from sslkit.data.folders import IMAGE_EXTENSIONS, ImageFolder
from sslkit.methods import METHODS

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a name fragment of the device
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A10G": 70.0,
                    "L40S": 362.0, "L4": 121.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def prepare_images(folder: Path, count: int, source: Path | None, size: int) -> None:
    folder.mkdir(parents=True)
    if source is not None:
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:count]
        if len(files) < count:
            raise SystemExit(f"{source} has {len(files)} images, {count} needed")
        for i, path in enumerate(files):
            (folder / f"{i:06d}{path.suffix}").symlink_to(path.resolve())
        return
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg")


def one_run(args, data: Path, out: Path) -> tuple[float, float, float]:
    settings = dict(arch=args.arch, img_size=args.img_size, batch_size=args.batch_size, epochs=1,
                    workers=args.workers, device=args.device, precision=args.precision, log_every=args.log_every,
                    compile=args.compile, optimizer=args.optimizer, data_path=args.data_path)
    settings.update(args.set)
    sslkit.pretrain(args.method, data, out, **{k: v for k, v in settings.items() if v is not None})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "loss" in r][1:]
    return (statistics.median(r["img_per_s"] for r in windows), max(r["peak_mem_mb"] for r in windows),
            statistics.median(r["data_wait"] for r in windows))


def flops_per_image(args, data: Path, images: int = 2) -> float:
    """Model FLOPs of one training step (forward + backward) per image, counted on a batch of ``images``."""
    spec = METHODS[args.method]
    values = {"arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size, **dict(args.set)}
    images_in_data = len(list(data.iterdir()))
    _, options = spec.resolve(cfg.build(cfg.TrainConfig, values), cfg.build(spec.config, values), images_in_data)
    model = spec.build(options)
    dataset = ImageFolder(data, model.train_transform)
    batch = default_collate([dataset[(i, i)] for i in range(images)])
    # the math attention: PyTorch's fused CPU attention kernel escapes the counter, its matrix products do not
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.training_step(batch).loss.backward()
    return counter.get_total_flops() / images


def peak_tflops(device: str | None, given: float | None) -> float | None:
    if given or not torch.cuda.is_available() or device == "cpu":
        return given
    name = torch.cuda.get_device_name()
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS.items() if fragment in name), None)


def setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="byol")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, help="image folder to draw from (default: generated noise)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--data-path", choices=["auto", "store", "loader"],
                        help="the input pipeline (default: the run's own choice, auto)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--device")
    parser.add_argument("--precision")
    parser.add_argument("--optimizer")
    parser.add_argument("--compile", action="store_true", default=None)
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s for MFU (default: looked up on CUDA)")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help="any other pretrain setting, e.g. projector_hidden_dim=1024 (value read as JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("SSLKIT_STORE_DIR", str(Path(tmp) / "stores"))  # a decoded store goes with the run
        data = Path(tmp) / "images"
        prepare_images(data, args.steps * args.batch_size, args.data, int(args.img_size * 1.5))
        runs = [one_run(args, data, Path(tmp) / f"run{i}") for i in range(args.repeats)]
        flops = flops_per_image(args, data)
    speeds = [speed for speed, _, _ in runs]
    speed = statistics.median(speeds)
    achieved = flops * speed / 1e12
    peak = peak_tflops(args.device, args.peak_tflops)
    print(
        f"{args.method} {args.arch} {args.img_size}px batch {args.batch_size}, data path {args.data_path or 'auto'}: "
        f"median {speed:.1f} images/s over {args.repeats} runs "
        f"({', '.join(f'{s:.1f}' for s in speeds)}), peak memory {max(m for _, m, _ in runs):.0f} MB, "
        f"waiting for data {100 * statistics.median(w for _, _, w in runs):.0f}% of the time"
    )
    print(f"{flops / 1e9:.2f} GFLOP per image per step, {achieved:.3f} TFLOP/s achieved"
          + (f", MFU {100 * achieved / peak:.1f}% of {peak:g} TFLOP/s" if peak else ""))
    if args.json:
        figures = {"method": args.method, "arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size,
                   "data_path": args.data_path or "auto", "images_per_s": speed, "runs": speeds,
                   "peak_memory_mb": max(m for _, m, _ in runs), "data_wait": statistics.median(w for _, _, w in runs),
                   "gflop_per_image": flops / 1e9, "tflops": achieved, "mfu": achieved / peak if peak else None}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

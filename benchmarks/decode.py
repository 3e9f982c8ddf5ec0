"""JPEG decoding for the loader: Pillow in the workers, or bytes from the workers and one batched decode_jpeg.

    python benchmarks/decode.py --images 512 --repeats 3
    python benchmarks/decode.py --data ../shared/data/imagenette_96/train --size 64 --workers 1 2 4
    python benchmarks/decode.py --device cuda --batch-size 256 --json decode.json

Every path delivers uint8 batches of `--size` x `--size` images (short side resized, bicubic with antialias,
centre crop) on `--device`, from the first `--images` JPEGs under `--data` (recursive, sorted):
  pil               workers open with Pillow, resize and crop (what sslkit's loader does)
  bytes+decode_jpeg workers only read the files; the main process decodes the batch with
                    torchvision.io.decode_jpeg(list, device=...) (CUDA: nvjpeg, batched; CPU: libjpeg-turbo,
                    one image after another in the main thread), then resizes and crops on the device
  decode_jpeg/wkr   workers decode with torchvision.io.decode_jpeg on the CPU, resize and crop like the above
  decode-only       decode_jpeg(list, device=...) of one batch in the main process, nothing else
Tensor resizing is F.interpolate(bicubic, antialias): on uint8 on a CPU (its vectorised kernel), on floats on
CUDA; it matches Pillow's BICUBIC to 1-2 levels. An image whose short side already is `--size` is not resized.
Each loader is started and delivers one batch (worker start-up, CUDA and nvjpeg set-up, left out); a repeat is
then one pass over the images, timed to the last batch on the device (synchronised on CUDA), the paths taking
turns so that a busy moment on a shared machine hits all alike. The table gives the median images/s over
`--repeats`. All files are read once first, so the page cache holds them: decoding speed, not disk speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_jpeg, read_file

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette_160" / "train"


def resize_crop(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 (3, H, W) images, on any device, to one (N, 3, size, size) uint8 batch; same-size images together."""
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape[1:]), []).append(image)
    out = []
    for (h, w), group in groups.items():
        if group[0].device.type == "cpu":  # numpy, one thread: torch.stack runs one parallel region per image,
            # each of which can wait ms for its second thread on a busy 2-core CPU (2 s for 256 images, seen)
            batch = torch.from_numpy(np.stack([image.permute(1, 2, 0).numpy() for image in group]))
            batch = batch.permute(0, 3, 1, 2)
        else:
            batch = torch.stack(group)
        if min(h, w) != size:  # short side to size, the long side as torchvision's resize computes it
            shape = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
            if batch.device.type == "cpu":  # uint8 directly: the CPU's vectorised uint8 kernel, 2-3x float's speed
                batch = F.interpolate(batch, size=shape, mode="bicubic", antialias=True)
            else:  # CUDA interpolates floats only
                batch = F.interpolate(batch.float(), size=shape, mode="bicubic", antialias=True)
                batch = batch.round_().clamp_(0, 255).to(torch.uint8)
        top, left = (batch.shape[2] - size) // 2, (batch.shape[3] - size) // 2
        out.append(batch[:, :, top:top + size, left:left + size])
    return (out[0] if len(out) == 1 else torch.cat(out)).contiguous()  # NCHW, as the Pillow path delivers it


class Images(Dataset):
    def __init__(self, files: list[Path], mode: str, size: int):
        self.files, self.mode, self.size = files, mode, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        if self.mode == "bytes":
            return read_file(str(path))
        if self.mode == "pil":
            with Image.open(path) as image:
                image = image.convert("RGB")
            if min(image.size) != self.size:
                image = TF.resize(image, self.size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            return TF.pil_to_tensor(TF.center_crop(image, self.size))
        return resize_crop([decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)], self.size)[0]


class Count(Sampler):
    """The first `count` indices, in order; `count` may change between passes."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(range(self.count))


def packed(items: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """A batch of file bytes as one tensor and the lengths: one shared-memory block, not one per file."""
    return torch.cat(items), [len(item) for item in items]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(files, path: str, workers: int, args, device: torch.device):
    """A started, warmed-up loader for ``path``: returns a function that times one pass (images/s)."""
    mode = {"pil": "pil", "bytes+decode_jpeg": "bytes", "decode_jpeg/wkr": "decode"}[path]
    sampler = Count(args.batch_size)
    loader = DataLoader(Images(files, mode, args.size), batch_size=args.batch_size, sampler=sampler,
                        num_workers=workers, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None,
                        pin_memory=device.type == "cuda" and mode != "bytes",
                        collate_fn=packed if mode == "bytes" else None)

    def one_pass() -> float:
        start = time.perf_counter()
        for batch in loader:
            if mode == "bytes":
                flat, lengths = batch
                resize_crop(decode_jpeg(list(flat.split(lengths)), mode=ImageReadMode.RGB, device=device), args.size)
            else:
                batch.to(device, non_blocking=True)
        sync(device)
        return sampler.count / (time.perf_counter() - start)

    one_pass()  # warm-up: one batch
    sampler.count = len(files)
    return one_pass


def decode_only_rates(data: list[torch.Tensor], args, device: torch.device) -> list[float]:
    decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # warm-up
    rates = []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        sync(device)
        rates.append(len(data) / (time.perf_counter() - start))
    return rates


def machine(device: torch.device) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cpus_usable": usable, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0],
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image folder, searched recursively")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=160, help="short side after resizing, and the crop's side")
    parser.add_argument("--json", type=Path, help="write the figures and the machine facts to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    files = sorted(p for p in args.data.resolve().rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:args.images]
    if len(files) < args.images:
        raise SystemExit(f"{args.data} has {len(files)} JPEG files, {args.images} needed")
    data = [read_file(str(p)) for p in files]  # also fills the page cache
    facts = machine(device)
    print(f"{len(files)} JPEGs from {args.data}, batch {args.batch_size}, size {args.size}; "
          f"{facts['cpus_usable']} CPUs ({facts['cpu']}), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, device {facts['device_name']}")
    print(f"{'path':18} {'workers':>7} {'device':8} {'images/s':>9}  runs")
    results = []

    def report(path: str, workers, rates: list[float]) -> None:
        median = statistics.median(rates)
        results.append({"path": path, "workers": workers, "device": str(device), "images_per_s": median,
                        "runs": rates})
        shown = ", ".join(f"{r:.0f}" for r in rates)
        print(f"{path:18} {'-' if workers is None else workers:>7} {str(device):8} {median:9.0f}  ({shown})",
              flush=True)

    report("decode-only", None, decode_only_rates(data[:args.batch_size], args, device))
    passes = {(path, workers): timed_pass(files, path, workers, args, device)
              for path in ("pil", "bytes+decode_jpeg", "decode_jpeg/wkr") for workers in args.workers}
    rates = {key: [] for key in passes}
    for _ in range(args.repeats):  # interleaved: a busy moment on a shared machine hits every path alike
        for key, one_pass in passes.items():
            rates[key].append(one_pass())
    for (path, workers), runs in rates.items():
        report(path, workers, runs)
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"machine": facts, "args": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

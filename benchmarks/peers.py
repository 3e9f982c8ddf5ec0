"""sslkit / lightly: training images/s of the same method and setup, and their ratio.

    python benchmarks/peers.py --data ../shared/data/imagenette_96/train --peer-python ../peer-venv/bin/python
    python benchmarks/peers.py --data DIR --methods byol dino --repeats 5 --steps 40

For each method the two sides run in turn, `--repeats` times, each run a fresh process:

- sslkit through `benchmarks/throughput.py`: the real engine with its default settings (loader, workers,
  augmentation, optimizer, EMA);
- the peer through `benchmarks/peers_byol.py`, `peers_dino.py` and `peers_mae.py`: lightly's components,
  put together as lightly's examples do.

Both read images from `--data` at the same image size, batch and worker count, and both leave out their first
timed window as warm-up. The script prints each side's median images/s over the repeats and the ratio
(above 1: sslkit is faster). lightly is an optional, benchmark-only dependency: `--peer-python` is the Python
of an environment that has it (default: this one).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# method -> (sslkit throughput.py arguments, peer script, peer arguments): the setups of issue 8's check
SETUPS = {
    "byol": (["--method", "byol", "--arch", "resnet18"], "peers_byol.py", ["--arch", "resnet18"]),
    "dino": (["--method", "dino", "--arch", "vit_tiny_patch16_224", "--set", "local_crops_number=6"],
             "peers_dino.py", ["--arch", "vit_tiny_patch16_224", "--local-crops-number", "6", "--local-size", "32"]),
    "mae": (["--method", "mae", "--arch", "vit_tiny_patch16_224"], "peers_mae.py", ["--arch", "vit_tiny_patch16_224"]),
}
OURS = re.compile(r"median ([\d.]+) images/s")
THEIRS = re.compile(r"median images/s = ([\d.]+)")


def images_per_second(command: list[str], pattern: re.Pattern) -> float:
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    found = pattern.findall(result.stdout + result.stderr)
    if result.returncode or not found:
        raise SystemExit(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="image folder both sides read")
    parser.add_argument("--methods", nargs="+", choices=sorted(SETUPS), default=["byol", "dino", "mae"])
    parser.add_argument("--peer-python", default=sys.executable, help="a Python with lightly installed")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25, help="timed steps per run")
    parser.add_argument("--log-every", type=int, default=5, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    common = ["--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
              "--log-every", str(args.log_every)]
    rows = []
    for method in args.methods:
        ours_args, peer_script, peer_args = SETUPS[method]
        ours_command = [sys.executable, str(HERE / "throughput.py"), *ours_args, *common, "--data", str(args.data),
                        "--steps", str(args.steps), "--repeats", "1"]
        peer_command = [args.peer_python, str(HERE / peer_script), *peer_args, *common, "--data", str(args.data),
                        "--max-steps", str(args.steps)]
        ours, theirs = [], []
        for repeat in range(args.repeats):
            ours.append(images_per_second(ours_command, OURS))
            theirs.append(images_per_second(peer_command, THEIRS))
            print(f"{method} repeat {repeat + 1}: sslkit {ours[-1]:.1f}, lightly {theirs[-1]:.1f} images/s", flush=True)
        rows.append((method, statistics.median(ours), statistics.median(theirs)))
    print(f"\n{'method':<6} {'sslkit img/s':>13} {'lightly img/s':>14} {'ratio':>6}   "
          f"({args.img_size} px, batch {args.batch_size}, {args.workers} workers, medians of {args.repeats})")
    for method, ours, theirs in rows:
        print(f"{method:<6} {ours:>13.1f} {theirs:>14.1f} {ours / theirs:>6.2f}")


if __name__ == "__main__":
    main()

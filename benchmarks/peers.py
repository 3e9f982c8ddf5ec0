"""sslkit / lightly: training speed of the same method and setup, and their ratio.

    python benchmarks/peers.py --data ../shared/data/imagenette_160/train --peer-python ../peer-venv/bin/python
    python benchmarks/peers.py --data DIR --methods byol dino --repeats 5 --steps 40
    python benchmarks/peers.py --data DIR_OF_1000_IMAGES --methods byol --epochs 2

For each method the two sides run in turn, `--repeats` times, each run a fresh process:

- sslkit through `benchmarks/throughput.py`: the real engine (store or loader as `auto` picks, augmentation,
  optimizer, EMA);
- the peer through `benchmarks/peers_byol.py`, `peers_dino.py` and `peers_mae.py`: lightly's components,
  put together as lightly's examples do.

Both read images from `--data` at the same image size, batch and worker count, and both leave out their first
timed window as warm-up. The script prints each side's median images/s over the repeats and the ratio (above
1: sslkit is faster). With `--epochs N` each run is instead a whole training process, `sslkit pretrain` on
the command line against the peer script, N epochs over every image in `--data`, timed from start to exit
(start-up, decoding the store, checkpoints included); the ratio is then lightly's seconds over sslkit's.

Each method has two sslkit rows against the same lightly runs:

- defaults: sslkit as a user gets it (paper-sized heads, the method's optimizer, `--precision auto`);
- equal: sslkit with lightly's example's head widths and optimizer (EQUAL below), so that the two differ
  only in their code; the gap between the rows is what sslkit's defaults cost.

`--precision fp32` runs sslkit in fp32 (what `auto` takes on a CPU without AMX). lightly is an optional,
benchmark-only dependency: `--peer-python` is the Python of an environment that has it (default: this one).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# method -> (sslkit settings, peer script, peer arguments): the setups of issue 8's check
SETUPS = {
    "byol": ({"arch": "resnet18"}, "peers_byol.py", ["--arch", "resnet18"]),
    "dino": ({"arch": "vit_tiny_patch16_224", "local_crops_number": 6},
             "peers_dino.py", ["--arch", "vit_tiny_patch16_224", "--local-crops-number", "6", "--local-size", "32"]),
    "mae": ({"arch": "vit_tiny_patch16_224"}, "peers_mae.py", ["--arch", "vit_tiny_patch16_224"]),
}
# lightly's examples' head widths and optimizers, as sslkit settings (peers_byol.py, peers_dino.py, peers_mae.py)
EQUAL = {
    "byol": {"projector_hidden_dim": 1024, "predictor_hidden_dim": 1024, "optimizer": "sgd", "lr": 0.06,
             "momentum": 0.0, "weight_decay": 0.0},
    "dino": {"hidden_dim": 512, "bottleneck_dim": 64, "out_dim": 2048, "optimizer": "adamw", "lr": 1e-3,
             "weight_decay": 0.0, "weight_decay_end": 0.0, "drop_path_rate": 0.0},
    "mae": {"decoder_depth": 1, "decoder_dim": 512, "decoder_heads": 16, "optimizer": "adamw", "lr": 1.5e-4,
            "weight_decay": 0.01},
}
OURS = re.compile(r"median ([\d.]+) images/s")
THEIRS = re.compile(r"median images/s = ([\d.]+)")


def measured(command: list[str], pattern: re.Pattern | None, env: dict | None = None) -> float:
    """The run's median images/s (``pattern``), or with ``pattern`` None its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env=env)
    wall = time.perf_counter() - start
    found = pattern.findall(result.stdout + result.stderr) if pattern else [wall]
    if result.returncode or not found:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    return float(found[-1])


def toml(settings: dict) -> str:
    return "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in settings.items())


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
    parser.add_argument("--epochs", type=int, help="whole runs of this many epochs, timed start to exit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", help="sslkit's --precision (default: its own, auto)")
    parser.add_argument("--rows", nargs="+", choices=["defaults", "equal"], default=["defaults", "equal"])
    args = parser.parse_args()
    common = {"img_size": args.img_size, "batch_size": args.batch_size, "workers": args.workers,
              **({"precision": args.precision} if args.precision else {})}
    shared = ["--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            ours_settings, peer_script, peer_args = SETUPS[method]
            ours = {row: [] for row in args.rows}
            theirs = []
            peer = [args.peer_python, str(HERE / peer_script), *peer_args, *shared, "--data", str(args.data)]
            for repeat in range(args.repeats):
                for row in args.rows:
                    settings = {**ours_settings, **common, **(EQUAL[method] if row == "equal" else {})}
                    ours[row].append(sslkit_run(method, settings, args, Path(tmp) / f"{method}-{row}-{repeat}"))
                if args.epochs:
                    theirs.append(measured([*peer, "--epochs", str(args.epochs), "--log-every", "1000"], None))
                else:
                    theirs.append(measured([*peer, "--max-steps", str(args.steps), "--log-every",
                                            str(args.log_every)], THEIRS))
                print(f"{method} repeat {repeat + 1}: " + ", ".join(f"sslkit {row} {ours[row][-1]:.1f}" for row in ours)
                      + f", lightly {theirs[-1]:.1f} " + ("s" if args.epochs else "images/s"), flush=True)
            for row, runs in ours.items():
                table.append((method, row, runs, theirs))
    unit = f"s for {args.epochs} epochs" if args.epochs else "images/s"
    print(f"\n{'method':<6} {'sslkit':<8} {'sslkit':>9} {'lightly':>9} {'ratio':>6}   ({unit}; {args.img_size} px, "
          f"batch {args.batch_size}, {args.workers} workers, medians of {args.repeats}; ratio above 1: sslkit faster)")
    for method, row, runs, peer_runs in table:
        ours, theirs = statistics.median(runs), statistics.median(peer_runs)
        ratio = theirs / ours if args.epochs else ours / theirs
        print(f"{method:<6} {row:<8} {ours:>9.1f} {theirs:>9.1f} {ratio:>6.2f}   sslkit {[round(v, 1) for v in runs]}, "
              f"lightly {[round(v, 1) for v in peer_runs]}")


def sslkit_run(method: str, settings: dict, args, scratch: Path) -> float:
    """One sslkit run: images/s from benchmarks/throughput.py, or with --epochs the seconds of a whole
    `sslkit pretrain` process (its settings in a --config file, its decoded store made afresh)."""
    if not args.epochs:
        flags = ("arch", "img_size", "batch_size", "workers", "precision")  # throughput.py's own options
        options = [arg for key, value in settings.items() for arg in
                   ((f"--{key.replace('_', '-')}", str(value)) if key in flags else ("--set", f"{key}={value}"))]
        return measured([sys.executable, str(HERE / "throughput.py"), "--method", method, "--data", str(args.data),
                         "--steps", str(args.steps), "--log-every", str(args.log_every), "--repeats", "1", *options],
                        OURS)
    scratch.mkdir(parents=True)
    config = scratch / "settings.toml"
    config.write_text(toml({**settings, "epochs": args.epochs}))
    env = {**os.environ, "SSLKIT_STORE_DIR": str(scratch / "stores")}
    return measured([sys.executable, "-m", "sslkit", "pretrain", method, str(args.data), "--out", str(scratch / "run"),
                     "--config", str(config), "--quiet"], None, env)


if __name__ == "__main__":
    main()

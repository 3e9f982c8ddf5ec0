"""Where one training step's time goes: per phase, sslkit's engine against lightly's example on this CPU.

    python benchmarks/step_profile.py --method byol --data ../shared/data/imagenette_160/train
    python benchmarks/step_profile.py --method byol --precision fp32 --equal --data DIR
    python benchmarks/step_profile.py --method dino --arch vit_tiny_patch16_224 --precision bf16 --ops 15 --data DIR

Each side runs `--steps` training steps on batches of `--batch-size` images from `--data` at `--img-size` px,
in one process, and the script prints the median milliseconds per step of each phase over the steps after
the first two (warm-up), and their sum as images/s:

- views: making the batch's views in this process. sslkit: the decoded store's views (the path `auto`
  takes on a CPU); lightly: its transform on each image (in a run its loader workers do this beside the
  step, on the same cores).
- each network's forward (the method's top-level modules called as modules, timed by forward hooks); rest
  of forward: the loss, and what runs outside those calls (MAE's encoder, which runs its blocks itself);
  backward; optimizer; ema: the teacher's update.

sslkit's side is its engine's step as the trainer runs it, at the method's defaults resolved for the run
(`--set KEY=VALUE` changes one), in `--precision` (default auto: what a run would choose here). The lightly
side (BYOL only, needs `lightly`: run with a Python that has it) is benchmarks/peers_byol.py's model, SGD
and loss, in fp32 as its example. `--equal` gives sslkit lightly's example's head widths and optimizer (BYOL:
1024 wide, plain SGD at 0.06; benchmarks/peers.py's EQUAL); with `--precision fp32` as well, the two sides
differ only in their code. `--ops N` adds torch.profiler's N costliest operators of sslkit's last step.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from sslkit import config as cfg
from sslkit.data.device_views import StoreViews
from sslkit.data.folders import ImageFolder
from sslkit.data.loader import EpochSampler
from sslkit.data.store import open_store, plan_store
from sslkit.engine.device import choose_precision
from sslkit.engine.method import Progress, hook
from sslkit.engine.optim import build_optimizer
from sslkit.methods import METHODS

from peers import EQUAL
from throughput import prepare_images, setting

HERE = Path(__file__).resolve().parent


class Phases:
    """Seconds per named phase, one list entry per step."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def new_step(self) -> None:
        self.steps.append(collections.defaultdict(float))

    def add(self, name: str, seconds: float) -> None:
        self.steps[-1][name] += seconds

    def time(self, name: str, work):
        start = time.perf_counter()
        result = work()
        self.add(name, time.perf_counter() - start)
        return result

    def time_forwards(self, modules: dict[str, torch.nn.Module]) -> None:
        """Each module's forward passes, by forward hooks, under its name."""
        for name, module in modules.items():
            starts = []
            module.register_forward_pre_hook(lambda *_, starts=starts: starts.append(time.perf_counter()))
            module.register_forward_hook(
                lambda *_, name=name, starts=starts: self.add(f"forward {name}", time.perf_counter() - starts.pop()))

    def medians(self, skip: int = 2) -> dict[str, float]:
        kept = self.steps[skip:]
        return {name: statistics.median(step.get(name, 0.0) for step in kept) for name in kept[0]}


def sslkit_side(args, data: Path, phases: Phases, ops: int) -> str:
    spec = METHODS[args.method]
    values = {"arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size, "epochs": args.epochs,
              **(EQUAL[args.method] if args.equal else {}), **dict(args.set)}
    values = {k: v for k, v in values.items() if k in cfg.TrainConfig.__dataclass_fields__
              or k in spec.config.__dataclass_fields__}
    train, options = spec.resolve(cfg.build(cfg.TrainConfig, values), cfg.build(spec.config, values), 10_000)
    torch.manual_seed(0)
    method = spec.build(options)
    device = torch.device("cpu")
    if method.channels_last:
        method.to(memory_format=torch.channels_last)
    precision = choose_precision(args.precision, device)
    optimizer = build_optimizer(train.optimizer, method.param_groups(), train.lr, train.momentum, train.betas, device,
                                train.nesterov)
    dataset = ImageFolder(data)
    with tempfile.TemporaryDirectory() as stores:
        store = open_store(dataset, plan_store(dataset, args.img_size), Path(stores), workers=2)
        sampler = EpochSampler(len(dataset), args.steps * args.batch_size, 0, args.batch_size, 0, 1)
        sampler.set_epoch(0)
        batches = iter(StoreViews(store, method.train_views).loader(sampler, args.batch_size, device))
        phases.time_forwards({name: module for name, module in method.named_children()
                              if any(True for _ in module.parameters())})
        steps_per_epoch = args.steps

        def step(k: int) -> None:
            phases.new_step()
            batch = phases.time("views", lambda: next(batches))
            progress = Progress(k, args.epochs * steps_per_epoch, 0, steps_per_epoch)
            hook(method, "start_step")(progress)
            start = time.perf_counter()
            with precision.autocast(device):
                loss = method.training_step(batch).loss.float()
            networks = sum(v for name, v in phases.steps[-1].items() if name.startswith("forward "))
            phases.add("rest of forward", time.perf_counter() - start - networks)
            phases.time("backward", loss.backward)
            hook(method, "before_optimizer_step")(progress)
            phases.time("optimizer", optimizer.step)
            optimizer.zero_grad(set_to_none=True)
            phases.time("ema", lambda: hook(method, "after_optimizer_step")(progress))

        for k in range(args.steps - 1):
            step(k)
        if ops:
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                step(args.steps - 1)
            print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=ops))
        else:
            step(args.steps - 1)
    widths = {k: getattr(options, k) for k in ("projector_hidden_dim", "predictor_hidden_dim", "out_dim",
                                                "decoder_depth", "decoder_dim") if hasattr(options, k)}
    return f"sslkit {args.method} {precision.name}, {train.optimizer}, {widths}"


def lightly_side(args, data: Path, phases: Phases) -> str:
    sys.path.insert(0, str(HERE))
    import timm
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import update_momentum
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from peers_byol import BYOL, ImageFiles

    torch.manual_seed(0)
    backbone = timm.create_model(args.arch, pretrained=False, num_classes=0)
    model = BYOL(backbone, backbone.num_features)
    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=args.img_size, gaussian_blur=0.0),
                              view_2_transform=BYOLView2Transform(input_size=args.img_size, gaussian_blur=0.0))
    dataset = ImageFiles(data, transform)
    criterion, optimizer = NegativeCosineSimilarity(), torch.optim.SGD(model.parameters(), lr=0.06)
    phases.time_forwards({name: module for name, module in model.named_children()})
    for k in range(args.steps):
        phases.new_step()
        indices = range(k * args.batch_size, (k + 1) * args.batch_size)
        x0, x1 = phases.time("views", lambda: torch.utils.data.default_collate([dataset[i] for i in indices]))

        def ema():
            update_momentum(model.backbone, model.backbone_momentum, m=0.99)
            update_momentum(model.projection_head, model.projection_head_momentum, m=0.99)

        phases.time("ema", ema)
        start = time.perf_counter()
        p0, z0, p1, z1 = model(x0), model.forward_momentum(x0), model(x1), model.forward_momentum(x1)
        loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        networks = sum(v for name, v in phases.steps[-1].items() if name.startswith("forward "))
        phases.add("rest of forward", time.perf_counter() - start - networks)
        phases.time("backward", loss.backward)
        phases.time("optimizer", optimizer.step)
        optimizer.zero_grad()
    return "lightly byol fp32, sgd, 1024-wide heads (its example)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(METHODS), default="byol")
    parser.add_argument("--arch", default=None, help="default: resnet18 for BYOL, vit_tiny_patch16_224 otherwise")
    parser.add_argument("--data", type=Path, help="image folder to draw from (default: generated noise)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=100, help="the run length the defaults are resolved for")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--equal", action="store_true", help="sslkit with lightly's head widths and optimizer")
    parser.add_argument("--sides", nargs="+", choices=["sslkit", "lightly"], default=["sslkit", "lightly"])
    parser.add_argument("--ops", type=int, default=0, help="also list sslkit's N costliest operators")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    args.arch = args.arch or ("resnet18" if args.method == "byol" else "vit_tiny_patch16_224")
    sides = [s for s in args.sides if s == "sslkit" or args.method == "byol"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images"
        prepare_images(data, args.steps * args.batch_size, args.data, int(args.img_size * 1.5))
        for side in sides:
            phases = Phases()
            label = sslkit_side(args, data, phases, args.ops) if side == "sslkit" else lightly_side(args, data, phases)
            results[label] = phases.medians()
    names = list(dict.fromkeys(name for phases in results.values() for name in phases))
    labels = list(results)
    print(f"\n{args.method} {args.arch} {args.img_size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}: "
          f"ms per step, median of {args.steps - 2} steps")
    for i, label in enumerate(labels):
        print(f"  [{i}] {label}")
    print(f"{'phase':<34}" + "".join(f"{f'[{i}]':>10}" for i in range(len(labels))))
    for name in names:
        print(f"{name:<34}" + "".join(f"{1000 * results[label].get(name, 0.0):>10.1f}" for label in labels))
    totals = [sum(results[label].values()) for label in labels]
    print(f"{'total':<34}" + "".join(f"{1000 * t:>10.1f}" for t in totals))
    print(f"{'images/s':<34}" + "".join(f"{args.batch_size / t:>10.1f}" for t in totals))


if __name__ == "__main__":
    main()

"""What MAE's masking saves: one training step with the encoder on the visible patches only, against the same
model whose encoder runs on every patch (the paper's "mask tokens in the encoder" cost, Table 2).

    python benchmarks/mae_masking.py --arch vit_tiny_patch16_224 --img-size 64 --batch-size 64
    python benchmarks/mae_masking.py --arch vit_base_patch16_224 --img-size 224 --batch-size 128 --device cuda

A step is forward, backward and the AdamW update on a fixed uint8 batch already on the device (no data
loading, which is the same for both). Both variants alternate, `--steps` timed steps after `--warmup` each,
repeated `--repeats` times; the script prints the median seconds per step, images/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sslkit.config import TrainConfig
from sslkit.engine.optim import build_optimizer
from sslkit.engine.device import choose_precision, resolve_device
from sslkit.methods import mae
from sslkit.methods.mae import MAEConfig


def all_token_loss(model: mae.MAE, images: torch.Tensor) -> torch.Tensor:
    """The same loss with the encoder on all L patches (as many tokens as with mask tokens in the encoder)."""
    x = model.normalize(images)
    batch, length = x.shape[0], model.num_patches
    _, mask, _ = mae.random_masking(batch, length, model.options.mask_ratio, x.device)
    every = torch.arange(length, device=x.device).expand(batch, -1)
    prediction = model.decode(model.encode(x, every), every)
    return mae.masked_mse(prediction, mae.patchify(x, model.patch), mask, model.options.norm_pix_loss)


def step_time(model, optimizer, images, loss_fn, amp_dtype, device) -> float:
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = loss_fn(model, images)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_tiny_patch16_224")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--decoder-dim", type=int)
    parser.add_argument("--decoder-depth", type=int)
    parser.add_argument("--decoder-heads", type=int)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    amp_dtype = choose_precision(args.precision, device).dtype
    options = MAEConfig(arch=args.arch, img_size=args.img_size, mask_ratio=args.mask_ratio,
                        decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
                        decoder_heads=args.decoder_heads)
    train, options = mae.resolve(TrainConfig(epochs=1, batch_size=args.batch_size), options, 1)
    torch.manual_seed(0)
    model = mae.MAE(options).to(device)
    optimizer = build_optimizer("adamw", model.param_groups(), 1e-4, 0.9, train.betas, device)
    images = torch.randint(0, 256, (args.batch_size, 3, args.img_size, args.img_size), dtype=torch.uint8, device=device)
    variants = {"visible only": lambda m, x: m.forward_masked(x)[0], "all tokens": all_token_loss}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, loss_fn in variants.items():
            for i in range(args.warmup + args.steps):
                seconds = step_time(model, optimizer, images, loss_fn, amp_dtype, device)
                if i >= args.warmup:
                    times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["all tokens"] / median["visible only"]
    for name, seconds in median.items():
        print(f"{name:>12}: {seconds * 1000:.1f} ms/step, {args.batch_size / seconds:.1f} images/s")
    print(f"{args.arch} {args.img_size}px batch {args.batch_size} mask {args.mask_ratio} decoder "
          f"{options.decoder_depth}x{options.decoder_dim} on {device.type}: masking speeds the step up {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"ms_per_step": {k: v * 1000 for k, v in median.items()}, "speedup": ratio,
                       "arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size,
                       "decoder": [options.decoder_depth, options.decoder_dim], "device": device.type}, handle)


if __name__ == "__main__":
    main()

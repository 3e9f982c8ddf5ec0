"""Peer reference: BYOL built from LightlySSL (`lightly`) components.

What it measures
    Training throughput (images/s, fp32, data loading included) and final
    training loss of BYOL written the way lightly's own example
    `examples/pytorch/byol.py` does it: BYOLProjectionHead(D, 1024, 256),
    BYOLPredictionHead(256, 1024, 256), NegativeCosineSimilarity with the
    symmetric loss 0.5 * (crit(p0, z1) + crit(p1, z0)), BYOLTransform built
    from BYOLView1Transform / BYOLView2Transform, momentum
    cosine_schedule(epoch, epochs, 0.996, 1) applied with update_momentum,
    plain SGD lr=0.06, shuffle + drop_last. D is the timm backbone's
    num_features. As in the example, Gaussian blur is off (the example turns
    it off for CIFAR-10); --blur restores lightly's default. Note lightly's
    cosine_schedule gives momentum 1.0 in the last epoch (and for --epochs 1).
    Torch thread settings are left at torch's defaults.

    Timing: wall clock per window of --log-every steps (data loading included),
    printed as images/s; at the end the median over all windows but the first
    (warm-up) and the mean loss of the last epoch.

How to run (needs `lightly`, e.g. a venv that shares this repo's torch):
    python benchmarks/peers_byol.py --data /path/to/images --arch resnet18 \
        --img-size 64 --batch-size 64 --workers 2 --max-steps 40 --log-every 5
    python benchmarks/peers_byol.py --data DIR --epochs 10 --save out/byol.safetensors

--save writes the online backbone's state_dict to FILE and the momentum
backbone's to FILE with ".momentum" before the suffix (x.momentum.safetensors).
"""

import argparse
import copy
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import (BYOLTransform, BYOLView1Transform,
                                              BYOLView2Transform)
from lightly.utils.scheduler import cosine_schedule

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class ImageFiles(torch.utils.data.Dataset):
    """All images under a folder (recursive); labels are ignored."""

    def __init__(self, root, transform):
        self.files = sorted(p for p in Path(root).rglob("*")
                            if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise SystemExit(f"no images found under {root}")
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


class BYOL(nn.Module):
    """Same structure as lightly's examples/pytorch/byol.py."""

    def __init__(self, backbone, feat_dim):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feat_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        y = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(y)
        return self.prediction_head(z)

    def forward_momentum(self, x):
        y = self.backbone_momentum(x).flatten(start_dim=1)
        z = self.projection_head_momentum(y)
        return z.detach()


def save_backbones(model, path, meta):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mom_path = path.with_name(path.stem + ".momentum" + path.suffix)
    for module, dest in ((model.backbone, path), (model.backbone_momentum, mom_path)):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(dest), metadata=meta)
        print(f"saved {dest}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="image folder (recursive)")
    ap.add_argument("--arch", default="resnet18", help="timm model name")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--save", default=None, help="FILE.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blur", action="store_true",
                    help="keep lightly's default Gaussian blur (example disables it)")
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    backbone = timm.create_model(args.arch, pretrained=False, num_classes=0)
    model = BYOL(backbone, backbone.num_features).to(device)

    blur = {} if args.blur else {"gaussian_blur": 0.0}
    transform = BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=args.img_size, **blur),
        view_2_transform=BYOLView2Transform(input_size=args.img_size, **blur),
    )
    dataset = ImageFiles(args.data, transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)

    print(f"peer byol (lightly): arch={args.arch} feat={backbone.num_features} "
          f"img={args.img_size} bs={args.batch_size} workers={args.workers} "
          f"images={len(dataset)} steps/epoch={len(loader)} device={device} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")

    step, rates, epoch_losses = 0, [], []
    t_start = t_win = time.perf_counter()
    done = False
    for epoch in range(args.epochs):
        momentum_val = cosine_schedule(epoch, args.epochs, 0.996, 1)
        losses = []
        for x0, x1 in loader:
            update_momentum(model.backbone, model.backbone_momentum, m=momentum_val)
            update_momentum(model.projection_head, model.projection_head_momentum,
                            m=momentum_val)
            x0, x1 = x0.to(device), x1.to(device)
            p0 = model(x0)
            z0 = model.forward_momentum(x0)
            p1 = model(x1)
            z1 = model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % args.log_every == 0:
                now = time.perf_counter()
                rate = args.log_every * args.batch_size / (now - t_win)
                rates.append(rate)
                t_win = now
                print(f"epoch {epoch} step {step}: loss {losses[-1]:.4f} "
                      f"m {momentum_val:.4f} {rate:.1f} images/s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
            if args.max_steps and step >= args.max_steps:
                done = True
                break
        epoch_losses.append(sum(losses) / max(len(losses), 1))
        print(f"epoch {epoch} done: mean loss {epoch_losses[-1]:.4f} "
              f"({len(losses)} steps, {time.perf_counter() - t_start:.1f}s elapsed)",
              flush=True)
        if done:
            break

    total = time.perf_counter() - t_start
    timed = rates[1:]
    if timed:
        print(f"peer byol: median images/s = {statistics.median(timed):.1f} "
              f"over {len(timed)} windows (first window excluded as warm-up)")
    else:
        print("peer byol: too few windows for a median (need at least 2)")
    print(f"peer byol: final mean loss (last epoch) = {epoch_losses[-1]:.4f}; "
          f"{step} steps in {total:.1f}s")
    if args.save:
        meta = {"source": "lightly BYOL peer", "arch": args.arch,
                "img_size": str(args.img_size), "epochs": str(args.epochs),
                "steps": str(step), "final_loss": f"{epoch_losses[-1]:.6f}"}
        save_backbones(model, args.save, meta)


if __name__ == "__main__":
    main()

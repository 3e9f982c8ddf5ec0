"""Peer reference: DINO built from LightlySSL (`lightly`) components.

What it measures
    Training throughput (images/s, fp32, data loading included) and final
    training loss of DINO written the way lightly's own example
    `examples/pytorch/dino.py` does it: student = backbone +
    DINOProjectionHead(D, 512, 64, --out-dim, freeze_last_layer=1), teacher =
    deepcopy of the backbone + a separately built DINOProjectionHead(D, 512,
    64, --out-dim) (as in the example it is a fresh instance, not a copy of the
    student head, so it starts from its own random init), both teacher parts
    frozen with deactivate_requires_grad. DINOLoss(output_dim=--out-dim,
    warmup_teacher_temp_epochs=5) called with epoch=epoch; teacher momentum
    cosine_schedule(epoch, epochs, --momentum, 1) applied with update_momentum
    before each step's forward; student_head.cancel_last_layer_gradients(epoch)
    after backward; Adam lr=--lr (0.001); shuffle + drop_last. The teacher
    sees the 2 global views, the student all 2 + --local-crops-number views.
    D is the timm backbone's num_features (timm with num_classes=0 returns
    the pooled feature, so the example's .flatten(start_dim=1) is a no-op).

    Augmentation is lightly's DINOTransform with only the sizes changed:
    global_crop_size=--img-size (example default 224), local_crop_size=
    --local-size (default 96), n_local_views=--local-crops-number. Everything
    else keeps lightly's defaults: global crop scale (0.4, 1), local (0.05,
    0.4), bicubic RandomResizedCrop, flip 0.5, color jitter p=0.8 strength
    0.5, grayscale 0.2, Gaussian blur probabilities (1.0, 0.1, 0.5) for
    (global 0, global 1, locals) with sigmas (0.1, 2), solarization 0.2 on
    global view 1 only, ImageNet normalization. Unlike peers_byol.py blur is
    left on, since lightly's DINO example does not turn it off.

    Notes: DINOLoss's defaults warmup_teacher_temp = teacher_temp = 0.04, so
    the 5-epoch teacher-temperature warm-up is flat at 0.04; student_temp 0.1,
    center momentum 0.9. lightly's cosine_schedule gives momentum 1.0 in the
    last epoch (and for --epochs 1). With freeze_last_layer=1 the student's
    last layer gets no updates in epoch 0, so a --max-steps run inside the
    first epoch never trains it. ViT backbones are built with
    img_size=--img-size and dynamic_img_size=True so the smaller local crops
    pass through (position embeddings interpolated). Torch thread settings are
    left at torch's defaults.

    Timing: wall clock per window of --log-every steps (data loading included),
    printed as images/s (images = batch size, not views); at the end the
    median over all windows but the first (warm-up) and the mean loss of the
    last epoch.

How to run (needs `lightly`, e.g. a venv that shares this repo's torch):
    python benchmarks/peers_dino.py --data /path/to/images --arch resnet18 \
        --img-size 64 --local-size 32 --batch-size 64 --workers 2 \
        --max-steps 40 --log-every 5
    python benchmarks/peers_dino.py --data DIR --arch vit_tiny_patch16_224 \
        --epochs 10 --save out/dino.safetensors

--save writes the teacher backbone's state_dict to FILE and the student
backbone's to FILE with ".student" before the suffix (x.student.safetensors).
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

from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.dino_transform import DINOTransform
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


class DINO(nn.Module):
    """Same structure as lightly's examples/pytorch/dino.py."""

    def __init__(self, backbone, input_dim, out_dim):
        super().__init__()
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(input_dim, 512, 64, out_dim,
                                               freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(input_dim, 512, 64, out_dim)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x):
        y = self.student_backbone(x).flatten(start_dim=1)
        z = self.student_head(y)
        return z

    def forward_teacher(self, x):
        y = self.teacher_backbone(x).flatten(start_dim=1)
        z = self.teacher_head(y)
        return z


def make_backbone(arch, img_size):
    kwargs = {}
    if arch.startswith(("vit", "deit", "eva")):
        # Local crops are smaller than global ones: let timm interpolate.
        kwargs = {"img_size": img_size, "dynamic_img_size": True}
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def save_backbones(model, path, meta):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    student_path = path.with_name(path.stem + ".student" + path.suffix)
    for module, dest in ((model.teacher_backbone, path),
                         (model.student_backbone, student_path)):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(dest), metadata=meta)
        print(f"saved {dest}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="image folder (recursive)")
    ap.add_argument("--arch", default="resnet18", help="timm model name")
    ap.add_argument("--img-size", type=int, default=64, help="global crop size")
    ap.add_argument("--local-size", type=int, default=32, help="local crop size")
    ap.add_argument("--local-crops-number", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--out-dim", type=int, default=2048)
    ap.add_argument("--momentum", type=float, default=0.996,
                    help="teacher momentum at epoch 0 (cosine to 1)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--save", default=None, help="FILE.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    backbone = make_backbone(args.arch, args.img_size)
    model = DINO(backbone, backbone.num_features, args.out_dim).to(device)

    transform = DINOTransform(
        global_crop_size=args.img_size,
        local_crop_size=args.local_size,
        n_local_views=args.local_crops_number,
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
    # The loss holds the teacher center buffer: move it to the device too.
    criterion = DINOLoss(output_dim=args.out_dim,
                         warmup_teacher_temp_epochs=5).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    print(f"peer dino (lightly): arch={args.arch} feat={backbone.num_features} "
          f"img={args.img_size} local={args.local_size}x{args.local_crops_number} "
          f"out_dim={args.out_dim} bs={args.batch_size} workers={args.workers} "
          f"images={len(dataset)} steps/epoch={len(loader)} device={device} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")

    step, rates, epoch_losses = 0, [], []
    t_start = t_win = time.perf_counter()
    done = False
    for epoch in range(args.epochs):
        momentum_val = cosine_schedule(epoch, args.epochs, args.momentum, 1)
        losses = []
        for views in loader:
            update_momentum(model.student_backbone, model.teacher_backbone,
                            m=momentum_val)
            update_momentum(model.student_head, model.teacher_head, m=momentum_val)
            views = [view.to(device) for view in views]
            global_views = views[:2]
            teacher_out = [model.forward_teacher(view) for view in global_views]
            student_out = [model.forward(view) for view in views]
            loss = criterion(teacher_out, student_out, epoch=epoch)
            loss.backward()
            # Only the student head's last layer is frozen (first epoch).
            model.student_head.cancel_last_layer_gradients(current_epoch=epoch)
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
        print(f"peer dino: median images/s = {statistics.median(timed):.1f} "
              f"over {len(timed)} windows (first window excluded as warm-up)")
    else:
        print("peer dino: too few windows for a median (need at least 2)")
    print(f"peer dino: final mean loss (last epoch) = {epoch_losses[-1]:.4f}; "
          f"{step} steps in {total:.1f}s")
    if args.save:
        meta = {"source": "lightly DINO peer", "arch": args.arch,
                "img_size": str(args.img_size), "local_size": str(args.local_size),
                "local_crops_number": str(args.local_crops_number),
                "out_dim": str(args.out_dim), "epochs": str(args.epochs),
                "steps": str(step), "final_loss": f"{epoch_losses[-1]:.6f}"}
        save_backbones(model, args.save, meta)


if __name__ == "__main__":
    main()

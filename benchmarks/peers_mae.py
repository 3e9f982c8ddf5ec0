"""Peer reference: MAE (He et al. 2022) built from LightlySSL (`lightly`) components.

What it measures
    Training throughput (images/s, fp32, data loading included) and final
    training loss of MAE written the way lightly's own example
    `examples/pytorch/mae.py` does it: backbone =
    MaskedVisionTransformerTIMM(vit) around a timm ViT (--arch, pretrained=
    False, img_size=--img-size, num_classes=0); decoder =
    MAEDecoderTIMM(num_patches, patch_size, embed_dim=ViT width,
    decoder_embed_dim=--decoder-dim, decoder_depth=--decoder-depth,
    decoder_num_heads=--decoder-heads, mlp_ratio=4, no dropout). Each step
    draws utils.random_token_mask((B, 1 + N), --mask-ratio) on the device
    (the class token is never masked; int(N * (1 - ratio)) patches are kept),
    the encoder runs on the class token + kept patches only
    (backbone.encode(idx_keep=...)), decoder.embed maps them to the decoder
    width, they are scattered with utils.set_at_index into a full-length
    sequence of decoder.mask_token (utils.repeat_token), decoder.decode runs
    all 1 + N tokens, and decoder.predict is applied to the masked positions
    only (utils.get_at_index). Target = utils.patchify(images) at idx_mask - 1
    (the example's class-token shift), loss = nn.MSELoss() (mean over every
    pixel of every masked patch). AdamW(model.parameters(), lr=--lr), shuffle
    + drop_last, exactly the example's loop (zero_grad after step).

    Example defaults kept here: mask ratio 0.75, decoder 512 wide, 1 block,
    16 heads, mlp_ratio 4; AdamW lr 1.5e-4 constant (not scaled by batch
    size, no warm-up, no schedule) with torch's default betas (0.9, 0.999) and
    weight_decay 0.01 on every parameter. The example itself trains
    vit_base_patch32_224 at 224 px, batch 256, 8 workers, 10 epochs; here
    the ViT, image size, batch size and epochs are options (defaults
    vit_tiny_patch16_224, 64 px, 64, 1 epoch).

    Augmentation is lightly's MAETransform(input_size=--img-size) with its
    defaults otherwise: RandomResizedCrop scale (0.2, 1) bicubic, horizontal
    flip 0.5, ToTensor, ImageNet normalization. The reconstruction target is
    therefore the ImageNet-normalized pixels of the crop. The dataset is
    lightly's LightlyDataset(--data) (the folder the example suggests as an
    alternative to VOC): flat folder or one level of class subfolders, labels
    ignored.

    --all-tokens: the encoder runs on all 1 + N tokens (no token dropped),
    with the masked patches replaced by the backbone's own learnable mask
    token (backbone.encode(idx_mask=...), the same call lightly's SimMIM
    example uses); the encoder outputs at the kept positions then go to the
    decoder exactly as above, so decoder, target and loss are unchanged and
    no pixel of a masked patch reaches the model. Only the encoder's sequence
    length (and the extra mask-token parameter that now receives gradients)
    differs. Feeding the unmasked image instead would leak the targets.

    --synthetic: no data at all. One fixed batch torch.randn(B, 3, S, S) is
    created once on the device and every step is forward (with a fresh random
    mask) + backward + AdamW step on it, so the window times are the step cost
    alone; --max-steps steps (50 if not given), --epochs is ignored.

    Notes on lightly 1.6.0 vs the MAE paper: lightly's loss has no
    norm_pix_loss (the paper's best setting standardizes each target patch by
    its own mean/variance; here the raw normalized pixels are regressed). The
    paper's pre-training recipe is AdamW base lr 1.5e-4 x batch/256, betas
    (0.9, 0.95), weight decay 0.05, cosine decay with 40 warm-up epochs, and
    an 8-block decoder; the example uses none of these (see above).
    MaskedVisionTransformerTIMM re-initializes the timm ViT: patch embedding
    xavier_uniform on the flattened kernel, class token N(0, 0.02), every
    Linear xavier_uniform with zero bias, LayerNorm (1, 0), and it overwrites
    the ViT's positional embedding with a fixed (requires_grad=False) 2D
    sine-cosine table; the decoder's positional embedding is the same kind of
    fixed table and its mask token is N(0, 0.02). In lightly 1.6.0
    MAEDecoderTIMM is deprecated (FutureWarning, removed in 1.7.0, silenced
    here) in favour of MaskedVisionTransformerDecoderTIMM plus separate
    embed/prediction Linear layers, which is what the newer Lightning example
    uses; the computation is the same. The target's idx_mask - 1 assumes
    exactly one prefix (class) token, which is checked. Torch thread settings
    are left at torch's defaults.

    Timing: wall clock per window of --log-every steps (data loading included
    unless --synthetic; each step ends with loss.item(), and on CUDA the clock
    is read after a synchronize), printed as images/s and s/step; at the end
    the median over all windows but the first (warm-up) and the mean loss of
    the last epoch (--synthetic: of all steps).

How to run (needs `lightly`, e.g. a venv that shares this repo's torch):
    python benchmarks/peers_mae.py --data ../shared/data/imagenette_96/train \
        --img-size 64 --batch-size 64 --workers 2 --max-steps 40 --log-every 5
    python benchmarks/peers_mae.py --data DIR --synthetic --max-steps 60 \
        --log-every 10 --json out/mae_peer.json
    python benchmarks/peers_mae.py --data DIR --all-tokens --max-steps 40

--json FILE writes the options, the per-window rates and the summary
numbers (median images/s and s/step, final loss, steps, seconds).
"""

import argparse
import json
import random
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

import lightly
from lightly.data import LightlyDataset
from lightly.models import utils
from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
from lightly.transforms import MAETransform


class MAE(nn.Module):
    """Same structure as lightly's examples/pytorch/mae.py."""

    def __init__(self, vit, decoder_dim, decoder_depth, decoder_heads, mask_ratio,
                 all_tokens=False):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.all_tokens = all_tokens
        self.patch_size = vit.patch_embed.patch_size[0]

        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        with warnings.catch_warnings():
            # Deprecated in 1.6.0 but still what the PyTorch example uses.
            warnings.filterwarnings("ignore", message="MAEDecoderTIMM is deprecated",
                                    category=FutureWarning)
            self.decoder = MAEDecoderTIMM(
                num_patches=vit.patch_embed.num_patches,
                patch_size=self.patch_size,
                embed_dim=vit.embed_dim,
                decoder_embed_dim=decoder_dim,
                decoder_depth=decoder_depth,
                decoder_num_heads=decoder_heads,
                mlp_ratio=4.0,
                proj_drop_rate=0.0,
                attn_drop_rate=0.0,
            )

    def forward_encoder(self, images, idx_keep=None, idx_mask=None):
        if self.all_tokens:
            # Full-length sequence, masked patches replaced by the encoder's
            # mask token; keep the outputs at the visible positions.
            x = self.backbone.encode(images=images, idx_mask=idx_mask)
            return utils.get_at_index(x, idx_keep)
        return self.backbone.encode(images=images, idx_keep=idx_keep)

    def forward_decoder(self, x_encoded, idx_keep, idx_mask):
        # build decoder input
        batch_size = x_encoded.shape[0]
        x_decode = self.decoder.embed(x_encoded)
        x_masked = utils.repeat_token(
            self.decoder.mask_token, (batch_size, self.sequence_length)
        )
        x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))

        # decoder forward pass
        x_decoded = self.decoder.decode(x_masked)

        # predict pixel values for masked tokens
        x_pred = utils.get_at_index(x_decoded, idx_mask)
        x_pred = self.decoder.predict(x_pred)
        return x_pred

    def forward(self, images):
        batch_size = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(
            size=(batch_size, self.sequence_length),
            mask_ratio=self.mask_ratio,
            device=images.device,
        )
        x_encoded = self.forward_encoder(images=images, idx_keep=idx_keep,
                                         idx_mask=idx_mask)
        x_pred = self.forward_decoder(
            x_encoded=x_encoded, idx_keep=idx_keep, idx_mask=idx_mask
        )

        # get image patches for masked tokens
        patches = utils.patchify(images, self.patch_size)
        # must adjust idx_mask for missing class token
        target = utils.get_at_index(patches, idx_mask - 1)
        return x_pred, target


def make_vit(arch, img_size):
    vit = timm.create_model(arch, pretrained=False, img_size=img_size, num_classes=0)
    if getattr(vit, "num_prefix_tokens", None) != 1 or getattr(vit, "cls_token", None) is None:
        raise SystemExit(f"{arch}: the example's target indexing (idx_mask - 1) needs "
                         f"exactly one class token and no register tokens")
    return vit


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None,
                    help="image folder: flat or one level of class subfolders "
                         "(not needed with --synthetic)")
    ap.add_argument("--arch", default="vit_tiny_patch16_224", help="timm ViT name")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--decoder-dim", type=int, default=512)
    ap.add_argument("--decoder-depth", type=int, default=1)
    ap.add_argument("--decoder-heads", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-4,
                    help="AdamW learning rate (constant, as in the example)")
    ap.add_argument("--weight-decay", type=float, default=0.01,
                    help="AdamW weight decay (the example uses torch's default 0.01)")
    ap.add_argument("--beta2", type=float, default=0.999,
                    help="AdamW beta2 (example: torch default 0.999; paper: 0.95)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", action="store_true",
                    help="time steps on one fixed random batch on the device, no data")
    ap.add_argument("--all-tokens", action="store_true",
                    help="encoder sees all tokens (masked ones as mask tokens)")
    ap.add_argument("--json", default=None, help="write the numbers to FILE")
    args = ap.parse_args()
    if not args.synthetic and not args.data:
        ap.error("--data is required unless --synthetic is given")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    vit = make_vit(args.arch, args.img_size)
    model = MAE(vit, args.decoder_dim, args.decoder_depth, args.decoder_heads,
                args.mask_ratio, all_tokens=args.all_tokens).to(device)
    criterion = nn.MSELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  betas=(0.9, args.beta2),
                                  weight_decay=args.weight_decay)

    n_patches = vit.patch_embed.num_patches
    n_keep = int(n_patches * (1 - args.mask_ratio))
    enc_tokens = model.sequence_length if args.all_tokens else 1 + n_keep
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    if args.synthetic:
        loader = None
        steps_total = args.max_steps or 50
        gen = torch.Generator(device=device).manual_seed(args.seed)
        fixed = torch.randn(args.batch_size, 3, args.img_size, args.img_size,
                            generator=gen, device=device)
        data_desc = f"synthetic batch steps={steps_total}"
    else:
        transform = MAETransform(input_size=args.img_size)
        dataset = LightlyDataset(input_dir=args.data, transform=transform)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            generator=torch.Generator().manual_seed(args.seed),
        )
        data_desc = (f"workers={args.workers} images={len(dataset)} "
                     f"steps/epoch={len(loader)}")

    print(f"peer mae (lightly): arch={args.arch} width={vit.embed_dim} "
          f"img={args.img_size} patches={n_patches} mask={args.mask_ratio} "
          f"enc_tokens={enc_tokens}{' (all-tokens)' if args.all_tokens else ''} "
          f"dec_tokens={model.sequence_length} decoder={args.decoder_depth}x"
          f"{args.decoder_dim}/{args.decoder_heads}h params={n_params / 1e6:.2f}M "
          f"bs={args.batch_size} lr={args.lr:g} {data_desc} device={device} "
          f"torch={torch.__version__} lightly={lightly.__version__} "
          f"threads={torch.get_num_threads()}", flush=True)

    def batches():
        """Yields (epoch, images on device); stops at --epochs / --max-steps."""
        if args.synthetic:
            for _ in range(steps_total):
                yield 0, fixed
            return
        for epoch in range(args.epochs):
            for batch in loader:
                views = batch[0]
                yield epoch, views[0].to(device)  # views contains only a single view

    step, rates, secs, epoch_losses, losses = 0, [], [], [], []
    current_epoch = 0
    sync(device)
    t_start = t_win = time.perf_counter()
    model.train()
    for epoch, images in batches():
        if epoch != current_epoch:
            epoch_losses.append(sum(losses) / max(len(losses), 1))
            print(f"epoch {current_epoch} done: mean loss {epoch_losses[-1]:.4f} "
                  f"({len(losses)} steps, {time.perf_counter() - t_start:.1f}s elapsed)",
                  flush=True)
            current_epoch, losses = epoch, []
        predictions, targets = model(images)
        loss = criterion(predictions, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            sync(device)
            now = time.perf_counter()
            dt = now - t_win
            rates.append(args.log_every * args.batch_size / dt)
            secs.append(dt / args.log_every)
            t_win = now
            print(f"epoch {epoch} step {step}: loss {losses[-1]:.4f} "
                  f"{rates[-1]:.1f} images/s {secs[-1]:.4f} s/step", flush=True)
        if args.max_steps and step >= args.max_steps:
            break
    epoch_losses.append(sum(losses) / max(len(losses), 1))
    total = time.perf_counter() - t_start
    if not args.synthetic:
        print(f"epoch {current_epoch} done: mean loss {epoch_losses[-1]:.4f} "
              f"({len(losses)} steps, {total:.1f}s elapsed)", flush=True)

    timed_rates, timed_secs = rates[1:], secs[1:]
    med_rate = statistics.median(timed_rates) if timed_rates else None
    med_secs = statistics.median(timed_secs) if timed_secs else None
    mode = "synthetic" if args.synthetic else "data"
    if med_rate is not None:
        print(f"peer mae ({mode}): median images/s = {med_rate:.1f} "
              f"({med_secs:.4f} s/step) over {len(timed_rates)} windows "
              f"(first window excluded as warm-up)")
    else:
        print(f"peer mae ({mode}): too few windows for a median (need at least 2)")
    which = "all steps" if args.synthetic else "last epoch"
    print(f"peer mae ({mode}): final mean loss ({which}) = {epoch_losses[-1]:.4f}; "
          f"{step} steps in {total:.1f}s")

    if args.json:
        record = {
            "peer": "mae (lightly)",
            "mode": mode,
            "options": vars(args),
            "device": device,
            "torch": torch.__version__,
            "lightly": lightly.__version__,
            "timm": timm.__version__,
            "threads": torch.get_num_threads(),
            "params": n_params,
            "patches": n_patches,
            "encoder_tokens": enc_tokens,
            "decoder_tokens": model.sequence_length,
            "window_images_per_s": rates,
            "window_s_per_step": secs,
            "median_images_per_s": med_rate,
            "median_s_per_step": med_secs,
            "windows_used": len(timed_rates),
            "final_loss": epoch_losses[-1],
            "steps": step,
            "total_s": total,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

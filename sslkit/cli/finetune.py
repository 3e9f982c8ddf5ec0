"""sslkit finetune MODEL --train DIR --val DIR --out RUN: supervised fine-tuning (or training from scratch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sslkit import console
from sslkit.cli.common import (HW, OPT, RUN, AllowPartial, DataPath, Device, DryRun, Force, JsonOut, Keep, Logger,
                               Precision, Quiet, StoreDir, StoreOn, StoreSize, Workers, examples, handle_errors,
                               show_plan, write_json)

AUG = "Regularisation"

HELP = (
    "Fine-tune a pretrained encoder with a linear head on labelled images, scoring --val after every epoch and "
    "keeping the best checkpoint (checkpoints/best.safetensors) by val top-1. MODEL timm:ARCH trains from "
    "scratch: the baseline a pretrained encoder should beat.\n\n"
    "--recipe auto (default) picks by the number of labelled images and prints its choice. Up to 200,000: the "
    "semi-supervised recipe of BYOL and SimCLR: SGD with Nesterov momentum 0.9, no weight decay or other "
    "regularisation, random resized crops and flips only, cosine to 0, 60 epochs under 20 images per class "
    "(SimCLR's 1 %) and 30 above (its 10 %); the lr is chosen from BYOL's grid 0.005-0.1: one run per lr on 80 % "
    "of --train, scored on the other 20 %, then the best lr on all of it. --val never chooses anything. Above "
    "200,000: MAE's recipe: AdamW (weight decay 0.05), lr 5e-4 x batch/256, 5 warm-up epochs then cosine to "
    "1e-6, layer-wise lr decay 0.65 for ViTs, drop path 0.1, label smoothing 0.1, mixup 0.8 / cutmix 1.0, "
    "RandAugment rand-m9-mstd0.5-inc1 and random erasing 0.25. Any option given overrides the recipe's value; "
    "--lr or --blr fixes the lr (no runs to choose it).\n\n"
    "--fraction 0.01 or 0.1 keeps that share of each class of --train (seeded), as in BYOL's semi-supervised "
    "tables. Without --batch-size, small labelled sets get a smaller batch (about 10 steps per epoch)."
)
EPILOG = examples(
    "sslkit finetune runs/mae --train data/train --val data/val --out runs/mae-ft --epochs 50",
    "sslkit finetune runs/byol --train data/train --val data/val --out runs/byol-ft10 --fraction 0.1",
    "sslkit finetune runs/byol --train data/train --val data/val --out runs/byol-ft10-lr --fraction 0.1 --lr 0.02",
    "sslkit finetune timm:resnet18 --train data/train --val data/val --out runs/scratch10 --fraction 0.1 --img-size 64",
    "sslkit finetune runs/mae --train data/train --val data/val --out runs/mae-ft --resume",
)


def finetune(
    model: Annotated[str, typer.Argument(
        help="A run directory, an sslkit .safetensors, an official DINO / MAE .pth, or timm:ARCH (from scratch).")],
    train: Annotated[Path, typer.Option(help="Labelled folder (one sub-folder per class) to train on.")],
    val: Annotated[Path, typer.Option(help="Labelled folder scored after every epoch.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run directory: config.json, metrics.jsonl, curves.png, checkpoints/ (last and best).")],
    recipe: Annotated[Optional[str], typer.Option(
        help="auto (default: semi-supervised up to 200,000 labelled images, mae above), semi-supervised (BYOL / "
             "SimCLR: SGD Nesterov, crops and flips, lr chosen on held-out training labels) or mae (MAE's fine-tuning "
             "recipe).", rich_help_panel=RUN)] = None,
    fraction: Annotated[Optional[float], typer.Option(
        help="Share of each class of --train to train on, e.g. 0.01 or 0.1 (default 1).", rich_help_panel=RUN)] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help="Passes over the (fraction of the) training set (default: semi-supervised 60 under 20 images per class, "
             "else 30; mae 100).", rich_help_panel=RUN)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Images per step (default 256; smaller for small labelled sets).", rich_help_panel=RUN)] = None,
    img_size: Annotated[Optional[int], typer.Option(
        help="Side of the crops (default: the model's training size; 224 for timm:).", rich_help_panel=RUN)] = None,
    blr: Annotated[Optional[float], typer.Option(
        help="Base lr: lr = blr x batch/256 (mae default 5e-4; semi-supervised: chosen on held-out labels unless "
             "given).", rich_help_panel=OPT)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Peak lr, overriding --blr; fixes it (semi-supervised: no runs to choose it).",
        rich_help_panel=OPT)] = None,
    min_lr: Annotated[Optional[float], typer.Option(
        help="lr at the end of the cosine (default: semi-supervised 0, mae 1e-6).", rich_help_panel=OPT)] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(
        help="Epochs of linear warm-up (default: semi-supervised 0; mae 5, a tenth of runs under 50 epochs).",
        rich_help_panel=OPT)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        help="Weight decay (default: semi-supervised 0, mae 0.05 with AdamW).", rich_help_panel=OPT)] = None,
    layer_decay: Annotated[Optional[float], typer.Option(
        help="Layer-wise lr decay for ViTs (mae default 0.65, 0.75 from 24 blocks; semi-supervised 1: off).",
        rich_help_panel=OPT)] = None,
    clip_grad: Annotated[Optional[float], typer.Option(
        help="Clip the global gradient norm (default 0: off).", rich_help_panel=OPT)] = None,
    accum_steps: Annotated[Optional[int], typer.Option(
        help="Split each batch into this many passes.", rich_help_panel=OPT)] = None,
    drop_path: Annotated[Optional[float], typer.Option(
        help="Stochastic depth of ViT blocks (default: mae 0.1, semi-supervised 0).", rich_help_panel=AUG)] = None,
    smoothing: Annotated[Optional[float], typer.Option(
        help="Label smoothing (default: mae 0.1, semi-supervised 0).", rich_help_panel=AUG)] = None,
    mixup: Annotated[Optional[float], typer.Option(
        help="Mixup alpha (default: mae 0.8, semi-supervised 0; 0 with --cutmix 0 turns mixing off).",
        rich_help_panel=AUG)] = None,
    cutmix: Annotated[Optional[float], typer.Option(
        help="CutMix alpha (default: mae 1.0, semi-supervised 0).", rich_help_panel=AUG)] = None,
    mixup_prob: Annotated[Optional[float], typer.Option(
        help="Share of batches mixed (default 1).", rich_help_panel=AUG)] = None,
    mixup_switch_prob: Annotated[Optional[float], typer.Option(
        help="Chance a mixed batch uses cutmix rather than mixup (default 0.5).", rich_help_panel=AUG)] = None,
    randaug: Annotated[Optional[str], typer.Option(
        help="timm RandAugment spec (default: mae rand-m9-mstd0.5-inc1, semi-supervised none: off).",
        rich_help_panel=AUG)] = None,
    reprob: Annotated[Optional[float], typer.Option(
        help="Random erasing probability (default: mae 0.25, semi-supervised 0).", rich_help_panel=AUG)] = None,
    pool: Annotated[Optional[str], typer.Option(
        help="ViTs: default (CLS token), token or avg (mean patch token) feeds the head.", rich_help_panel=RUN)] = None,
    checkpoint_key: Annotated[Optional[str], typer.Option(
        help="teacher (the EMA network, default) or student.", rich_help_panel=RUN)] = None,
    arch: Annotated[Optional[str], typer.Option(
        help="timm name of a .pth file's model (inferred for ViTs).", rich_help_panel=RUN)] = None,
    allow_partial: AllowPartial = False,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of the head, the fraction, the held-out slice, the data order, augmentation and a timm: baseline's "
             "weights (default 0).", rich_help_panel=RUN)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last checkpoint.", rich_help_panel=RUN)] = False,
    dry_run: DryRun = False,
    force: Force = False,
    keep: Keep = None,
    save_every: Annotated[Optional[int], typer.Option(
        help="Write the last checkpoint every N epochs (default 1).", rich_help_panel=RUN)] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        help="Score --val every N epochs and after the last (default: 1, or fewer when --val is over twice the "
             "training images, so scoring costs at most about what training does).", rich_help_panel=RUN)] = None,
    log_every: Annotated[Optional[int], typer.Option(
        help="Log every N steps (default 10).", rich_help_panel=RUN)] = None,
    logger: Logger = None,
    device: Device = None,
    precision: Precision = None,
    workers: Workers = None,
    data_path: DataPath = None,
    store_size: StoreSize = None,
    store_on: StoreOn = None,
    store_dir: StoreDir = None,
    compile: Annotated[Optional[bool], typer.Option(
        "--compile/--no-compile", help="torch.compile the training step.", rich_help_panel=HW)] = None,
    json_path: JsonOut = None,
    quiet: Quiet = False,
):
    with handle_errors(quiet):
        from sslkit import api

        results = api.finetune(
            model, train, val, out, resume=resume, dry_run=dry_run, recipe=recipe, fraction=fraction, epochs=epochs,
            batch_size=batch_size,
            img_size=img_size, blr=blr, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
            layer_decay=layer_decay, clip_grad=clip_grad, accum_steps=accum_steps, drop_path=drop_path,
            smoothing=smoothing, mixup=mixup, cutmix=cutmix, mixup_prob=mixup_prob,
            mixup_switch_prob=mixup_switch_prob, randaug=randaug, reprob=reprob, pool=pool,
            checkpoint_key=checkpoint_key, arch=arch, allow_partial=allow_partial, seed=seed,
            save_every=save_every, eval_every=eval_every,
            log_every=log_every, logger=logger, force=force or None, keep=keep, device=device, precision=precision,
            workers=workers,
            data_path=data_path, store_size=store_size, store_on=store_on, store_dir=store_dir, compile=compile,
        )
        write_json(json_path, results)  # with --dry-run: the plan
        if quiet:
            return
        if dry_run:
            show_plan(results)
        else:
            _show(results)


def _show(results: dict) -> None:
    console.stdout.print(
        f"fine-tuned {results['description']} on {results['num_train']} images ({results['fraction']:g} of the "
        f"labels), {results['num_classes']} classes, {results['img_size']} px, {results['epochs']} epochs, "
        f"{results['recipe']} recipe, lr {results['lr']:g}", soft_wrap=True, markup=False,
    )
    choice = results.get("lr_choice")
    if choice and choice["num_held_out"]:
        scores = ", ".join(f"{lr:g}: {top1:.1f}" for lr, top1 in zip(choice["lrs"], choice["held_out_top1"]))
        console.stdout.print(f"lr chosen on {choice['num_held_out']} held-out training images (top-1 % {scores})",
                             soft_wrap=True, markup=False)
    table = Table()
    for column in ("", "val top-1 %", "val top-5 %", "epoch"):
        table.add_column(column, justify="right")
    table.add_row("last", f"{results['top1']:.2f}", f"{results['top5']:.2f}", str(results["epochs"]))
    table.add_row("best", f"{results['best_top1']:.2f}", f"{results['best_top5']:.2f}", str(results["best_epoch"]))
    console.stdout.print(table)
    console.stdout.print(f"best checkpoint: {results['best_checkpoint']}", soft_wrap=True, markup=False)

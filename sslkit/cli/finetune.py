"""sslkit finetune MODEL --train DIR --val DIR --out RUN: supervised fine-tuning (or training from scratch), its
options generated from FinetuneConfig and the TrainConfig fields it takes (sslkit.config)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.table import Table

from sslkit import console
from sslkit.cli.common import DRY_RUN_HELP, JSON_OPTION, QUIET_OPTION, examples, handle_errors, report
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.config import DATA, HW, OPT, RUN, TrainConfig
from sslkit.evaluate.settings import FINETUNE_TRAIN_HELP, FinetuneConfig

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

# TrainConfig fields finetune does not take from the command line: its recipes set them, or they are pretraining's
# (the online k-NN). --eval-every is finetune's val scoring: in the Run panel.
NOT_SHOWN = ("weight_decay_end", "optimizer", "momentum", "eval_train", "eval_val", "eval_k")

PARAMETERS = (
    argument("model", str,
             "A run directory, an sslkit .safetensors, an official DINO / MAE .pth, or timm:ARCH (from scratch)."),
    option("train", Path, default=Parameter.empty, help="Labelled folder (one sub-folder per class) to train on."),
    option("val", Path, default=Parameter.empty, help="Labelled folder scored after every epoch."),
    option("out", Path, "--out", "-o", default=Parameter.empty,
           help="Run directory: config.json, metrics.jsonl, curves.png, checkpoints/ (last and best)."),
    option("resume", bool, "--resume", default=False, help="Continue the run in --out from its last checkpoint.",
           rich_help_panel=RUN),
    option("dry_run", bool, "--dry-run", default=False, help=DRY_RUN_HELP, rich_help_panel=RUN),
    JSON_OPTION,
    QUIET_OPTION,
)


def _finetune(model: str, train: Path, val: Path, out: Path, resume: bool, dry_run: bool, json_path: Optional[Path],
              quiet: bool, **values):
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        results = api.finetune(model, train, val, out, resume=resume, dry_run=dry_run,
                               **given_settings(values, FinetuneConfig, TrainConfig))
        report(results, json_path, quiet, _show, dry_run)  # with --dry-run: the plan


finetune = command([*PARAMETERS, *settings_options(FinetuneConfig),
                    *settings_options(TrainConfig, skip=NOT_SHOWN, help=FINETUNE_TRAIN_HELP,
                                      panel={"eval_every": RUN})],
                   _finetune, first=(None, RUN, OPT), last=(HW, DATA))


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

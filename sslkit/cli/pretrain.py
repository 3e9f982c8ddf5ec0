"""sslkit pretrain METHOD DATA --out RUN: self-supervised pretraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.cli.common import HW, OPT, RUN, Device, Precision, Quiet, Workers, examples, handle_errors

app = typer.Typer(no_args_is_help=True, help="Pretrain an image encoder without labels.")

Data = Annotated[Path, typer.Argument(help="Folder of images (searched recursively; class sub-folders are ignored).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run directory: config.json, metrics.jsonl, checkpoints/.")]
Arch = Annotated[Optional[str], typer.Option(help="Any timm model name, e.g. resnet18, resnet50, vit_small_patch16_224.", rich_help_panel=RUN)]
ImgSize = Annotated[Optional[int], typer.Option(help="Side of the training crops in pixels (default 224).", rich_help_panel=RUN)]
BatchSize = Annotated[Optional[int], typer.Option(help="Images per optimizer step (default 256); the default lr scales with it.", rich_help_panel=RUN)]
Epochs = Annotated[Optional[int], typer.Option(help="Passes over the data (default 100).", rich_help_panel=RUN)]
Lr = Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the method's base lr x batch/256).", rich_help_panel=OPT)]
MinLr = Annotated[Optional[float], typer.Option(help="Learning rate at the end of the cosine decay (default 0).", rich_help_panel=OPT)]
Warmup = Annotated[Optional[float], typer.Option(help="Epochs of linear lr warm-up (default: the method's).", rich_help_panel=OPT)]
WeightDecay = Annotated[Optional[float], typer.Option(help="Weight decay on weights (never on biases and norms).", rich_help_panel=OPT)]
WeightDecayEnd = Annotated[Optional[float], typer.Option(help="Weight decay at the end of a cosine schedule (default: constant).", rich_help_panel=OPT)]
Optimizer = Annotated[Optional[str], typer.Option(help="lars, adamw or sgd (default: the method's).", rich_help_panel=OPT)]
Momentum = Annotated[Optional[float], typer.Option(help="Momentum of SGD and LARS (default 0.9).", rich_help_panel=OPT)]
ClipGrad = Annotated[Optional[float], typer.Option(help="Clip the global gradient norm to this (default 0: off).", rich_help_panel=OPT)]
AccumSteps = Annotated[Optional[int], typer.Option(help="Split each batch into this many passes (same result, less memory).", rich_help_panel=OPT)]
Compile = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the training step (faster on GPU after a slow first step).", rich_help_panel=HW)]
Seed = Annotated[Optional[int], typer.Option(help="Seed of weights, data order and augmentation (default 0).", rich_help_panel=RUN)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.", rich_help_panel=RUN)]
Config = Annotated[Optional[Path], typer.Option(help="Settings file (TOML or JSON, e.g. a run's config.json); options given here win.", rich_help_panel=RUN)]
SaveEvery = Annotated[Optional[int], typer.Option(help="Write the checkpoint every N epochs (default 1; always at the end).", rich_help_panel=RUN)]
LogEvery = Annotated[Optional[int], typer.Option(help="Log to metrics.jsonl every N steps (default 10).", rich_help_panel=RUN)]

BYOL_PANEL = "BYOL"


@app.command(
    help=(
        "BYOL (Grill et al. 2020): an online network predicts what an EMA target network makes of another view "
        "of the same image.\n\n"
        "Defaults follow the paper and DeepMind's code: ResNet-50 at 224 px, projector and predictor 4096-256, "
        "LARS with lr 0.2 x batch/256 (0.45 for runs of up to 100 epochs), weight decay 1.5e-6 off biases and "
        "BatchNorm, 10 warm-up epochs then cosine, target EMA momentum from tau_base to 1. For batches under "
        "~256, --optimizer adamw (lr 1e-3 x batch/256, weight decay 1e-4) is the alternative."
    ),
    epilog=examples(
        "sslkit pretrain byol photos/ --out runs/byol --arch resnet18 --img-size 64 --epochs 10 --batch-size 64",
        "sslkit pretrain byol photos/ --out runs/byol --resume",
        "sslkit pretrain byol /data/imagenet/train --out runs/r50 --epochs 300 --batch-size 4096 --accum-steps 8",
    )
)
def byol(
    data: Data,
    out: Out,
    arch: Arch = None,
    img_size: ImgSize = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    min_lr: MinLr = None,
    warmup_epochs: Warmup = None,
    weight_decay: WeightDecay = None,
    weight_decay_end: WeightDecayEnd = None,
    optimizer: Optimizer = None,
    momentum: Momentum = None,
    clip_grad: ClipGrad = None,
    accum_steps: AccumSteps = None,
    tau_base: Annotated[Optional[float], typer.Option(help="Start of the target EMA momentum, cosine to 1 (default: the official preset for the run length: 0.97 up to 40 epochs, 0.99 up to 300, 0.996 beyond). Lower it if the loss stalls on a short run.", rich_help_panel=BYOL_PANEL)] = None,
    projector_hidden_dim: Annotated[Optional[int], typer.Option(help="Hidden width of projector and predictor MLPs (default 4096).", rich_help_panel=BYOL_PANEL)] = None,
    projector_dim: Annotated[Optional[int], typer.Option(help="Output width of projector and predictor (default 256).", rich_help_panel=BYOL_PANEL)] = None,
    predictor_hidden_dim: Annotated[Optional[int], typer.Option(help="Hidden width of the predictor (default 4096).", rich_help_panel=BYOL_PANEL)] = None,
    device: Device = None,
    precision: Precision = None,
    workers: Workers = None,
    compile: Compile = None,
    seed: Seed = None,
    resume: Resume = False,
    config: Config = None,
    save_every: SaveEvery = None,
    log_every: LogEvery = None,
    quiet: Quiet = False,
):
    """BYOL (Grill et al. 2020): an online network predicts an EMA target's projection of another view."""
    settings = dict(
        arch=arch, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr,
        warmup_epochs=warmup_epochs, weight_decay=weight_decay, weight_decay_end=weight_decay_end,
        optimizer=optimizer, momentum=momentum, clip_grad=clip_grad, accum_steps=accum_steps, tau_base=tau_base,
        projector_hidden_dim=projector_hidden_dim, projector_dim=projector_dim,
        predictor_hidden_dim=predictor_hidden_dim, device=device, precision=precision, workers=workers,
        compile=compile, seed=seed, save_every=save_every, log_every=log_every,
    )
    with handle_errors(quiet):
        from sslkit import api  # imports torch: only once a command runs

        result = api.pretrain("byol", data, out, config=config, resume=resume, **settings)
        if not quiet:
            typer.echo(f"checkpoint: {result['checkpoint']}")
